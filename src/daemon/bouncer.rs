//! PgBouncer's side: the switch, and the check that it runs where rebouncer put it
//! (drift). The link and node files are read off the runtime thread.

use super::*;
use crate::policy::drift;

impl<C: Console> Daemon<C> {
    /// Compare the routes PgBouncer uses with `node`'s file. The admin session is kept:
    /// when PgBouncer closes it (`restarted`), it was restarted and may run another file.
    pub(super) async fn compare_routes(&mut self, node: NodeId, restarted: bool) -> Routes {
        if restarted {
            info!(
                "PgBouncer closed rebouncer's admin session (restarted?); checking where it routes now"
            );
            self.watch_session = None;
        }
        if self.watch_session.is_none() {
            match self.console.session().await {
                Ok(s) => self.watch_session = Some(s),
                Err(e) => {
                    warn!("cannot check where PgBouncer routes: {e}");
                    return Routes::Unknown;
                }
            }
        }
        let Some(session) = &self.watch_session else {
            return Routes::Unknown;
        };
        let databases = match admin::databases(session).await {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot check where PgBouncer routes: {e}");
                self.watch_session = None;
                return Routes::Unknown;
            }
        };
        self.note_paused(&databases);
        let node_file = self.cfg.servers[node].node_file.clone();
        let file =
            match tokio::task::spawn_blocking(move || config::read_node_file(&node_file)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    warn!("cannot check where PgBouncer routes: {e}");
                    return Routes::Unknown;
                }
                Err(_) => return Routes::Unknown,
            };
        if let Some(what) = drift::routes_differ(&file, &databases) {
            return Routes::Differ(what);
        }
        self.last_confirmed = Some(databases);
        Routes::Same
    }

    /// Say that PgBouncer is not where rebouncer put it (`was`): the symlink names
    /// `behind`'s file or `target`, or the routes differ as `routes` says.
    pub(super) fn drifted(
        &mut self,
        was: Option<NodeId>,
        behind: Option<NodeId>,
        target: Option<std::path::PathBuf>,
        routes: Option<String>,
    ) {
        let active = match was {
            Some(n) => self.nodes[n].name.clone(),
            None => "no node's config".to_string(),
        };
        let what = routes.unwrap_or_else(|| {
            let now_at = match behind {
                Some(n) => format!("{}'s config", self.nodes[n].name),
                None => match target {
                    Some(t) => format!("{}, no node's config", t.display()),
                    None => "nothing (it is missing or not a symlink)".to_string(),
                },
            };
            format!(
                "the symlink {} now points at {now_at}, not at {active}'s config where rebouncer put it",
                self.cfg.symlink.display(),
            )
        });
        view::record_event(
            &self.status,
            Kind::Drift,
            None,
            format!("PgBouncer drifted: {what}; rebouncer had pointed it at {active}"),
        );
        error!(
            "PgBouncer drifted: {what}; rebouncer had pointed it at {active}, and will switch it back to the master now"
        );
        self.drift = Some(Drift {
            what,
            since: SystemTime::now(),
        });
    }

    pub(super) fn note_paused(&mut self, databases: &[Database]) {
        let held = &self.state.state().resume_pending;
        let paused: Vec<PausedDatabase> = databases
            .iter()
            .filter(|d| d.paused)
            .map(|d| PausedDatabase {
                name: d.name.clone(),
                by_rebouncer: held.contains(&d.name),
            })
            .collect();
        if paused != self.paused {
            for p in paused.iter().filter(|p| !p.by_rebouncer) {
                if !self.paused.contains(p) {
                    view::record_event(
                        &self.status,
                        Kind::Paused,
                        None,
                        format!(
                            "database {} is paused in PgBouncer, not by rebouncer",
                            p.name
                        ),
                    );
                    warn!(
                        "database {} is paused in PgBouncer, not by rebouncer (an operator's PAUSE?); its clients wait until someone sends RESUME {} on the admin console",
                        p.name, p.name
                    );
                }
            }
            self.paused = paused;
        }
    }

    /// Point PgBouncer at `to` and confirm it; `held`: the databases of the pause under
    /// way, resumed by the switch.
    pub(super) async fn switch(
        &mut self,
        to: NodeId,
        from: Option<NodeId>,
        reason: SwitchReason,
        held: Option<Vec<String>>,
    ) -> Switched {
        let name = self.nodes[to].name.clone();
        let node_file = self.cfg.servers[to].node_file.clone();
        match from {
            Some(f) if f == to => info!(
                "master is {name}, and PgBouncer's config already points at it; reloading PgBouncer to confirm"
            ),
            Some(f) => info!(
                "master changed from {} to {name}; switching PgBouncer",
                self.nodes[f].name
            ),
            None => info!("master is {name}; pointing PgBouncer at it"),
        }
        // The need arose when the new master was first seen as one, or the drift found.
        let needed_since = self
            .drift
            .as_ref()
            .map(|d| d.since)
            .or(self.nodes[to].since);
        let started = Instant::now();
        let waiting = match &held {
            Some(databases) => self.waiting_clients(databases).await,
            None => None,
        };
        let held_paused = held.clone().unwrap_or_default();
        let plan = SwitchPlan {
            symlink: &self.cfg.symlink,
            node_file: &node_file,
            last_confirmed: self.last_confirmed.as_deref(),
            paused: &held_paused,
        };
        let result = switch::run(&self.console, &mut self.state, plan).await;
        match result {
            Ok(done) => {
                self.not_taken = None;
                let ms = started.elapsed().as_millis();
                let reset = if done.kills.killed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; connections to the old server dropped for database(s) {}",
                        done.kills.killed.join(", ")
                    )
                };
                info!(
                    "PgBouncer now points at {name} ({}), confirmed by SHOW DATABASES in {ms} ms{reset}",
                    node_file.display()
                );
                view::record_switch(
                    &self.status,
                    view::SwitchDone {
                        reason,
                        to: &name,
                        from: from.map(|f| self.nodes[f].name.as_str()),
                        relinked: done.relinked,
                        needed_since,
                        step: started.elapsed(),
                    },
                );
                for w in done.link_warning.iter().chain(&done.kills.warnings) {
                    warn!("{w}");
                }
                if !done.kills.resumed.is_empty() && held.is_none() {
                    info!(
                        "resumed database(s) {}, left paused by an earlier attempt",
                        done.kills.resumed.join(", ")
                    );
                }
                self.last_confirmed = Some(done.confirmed);
                if let Some(d) = self.drift.take() {
                    info!("PgBouncer is back on {name} after drifting ({})", d.what);
                }
                self.last_switch = done.relinked.then(SystemTime::now).or(self.last_switch);
                self.switch_failure = None;
                Switched::Done {
                    to,
                    started: started.into_std(),
                    waiting,
                    resume_failed: !done.kills.resume_pending.is_empty(),
                }
            }
            Err(e) => {
                let not_taken = matches!(e, switch::SwitchError::NotApplied { .. });
                // Shown only while it is what the last attempt found.
                self.not_taken = match not_taken {
                    true => Some(self.what_pgbouncer_runs().await),
                    false => None,
                };
                let error = e.to_string();
                let reason = counters::failure_reason(&e);
                self.status
                    .send_modify(|s| s.counters.switch_failed(reason));
                // The link may or may not have moved; believe only what it says now.
                let behind = self.node_behind_symlink().await;
                let since = self
                    .switch_failure
                    .as_ref()
                    .filter(|f| f.wanted == name)
                    .map_or_else(SystemTime::now, |f| f.since);
                self.switch_failure = Some(SwitchFailure {
                    wanted: name.clone(),
                    error: error.clone(),
                    since,
                });
                Switched::Failed {
                    to,
                    error,
                    started: started.into_std(),
                    not_taken,
                    behind,
                }
            }
        }
    }

    /// Which file PgBouncer runs (it says so in `SHOW CONFIG`) and which the symlink names.
    pub(super) async fn what_pgbouncer_runs(&self) -> NotTaken {
        let runs = match self.console.session().await {
            Ok(s) => admin::setting(&s, "conffile").await.ok().flatten(),
            Err(_) => None,
        };
        let names = self.read_symlink().await.1;
        NotTaken {
            runs,
            symlink: self.cfg.symlink.display().to_string(),
            names: names.map(|n| n.display().to_string()),
        }
    }

    /// The node whose config file the symlink points at now, if any.
    pub(super) async fn node_behind_symlink(&self) -> Option<NodeId> {
        self.read_symlink().await.0
    }

    /// Where the symlink points now and whose node file that is, read off the runtime
    /// thread (a `read_link` and a `canonicalize` per node file, each may block on a slow
    /// disk).
    pub(super) async fn read_symlink(&self) -> (Option<NodeId>, Option<std::path::PathBuf>) {
        let symlink = self.cfg.symlink.clone();
        let files: Vec<std::path::PathBuf> = self
            .cfg
            .servers
            .iter()
            .map(|s| s.node_file.clone())
            .collect();
        tokio::task::spawn_blocking(move || {
            let target = switch::link_target(&symlink);
            let node = target
                .as_ref()
                .and_then(|t| files.iter().position(|f| switch::same_file(f, t)));
            (node, target)
        })
        .await
        .unwrap_or((None, None))
    }
}
