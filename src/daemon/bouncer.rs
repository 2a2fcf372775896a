//! PgBouncer's side: the switch, and the check that it runs where rebouncer put it
//! (drift). The link and node files are read off the runtime thread.

use super::*;
use crate::policy::drift;

impl<C: Console> Daemon<C> {
    /// PgBouncer must be where rebouncer put it. The symlink is read every round; the
    /// routes PgBouncer uses are compared with the active node's file every few rounds,
    /// and at once when PgBouncer closed the admin session (a restart). Any difference
    /// unconfirms the active node, and the decision then switches back through the
    /// normal, confirmed switch.
    pub(super) async fn check_drift(&mut self) {
        let Some(active) = self.believed.active.filter(|_| self.believed.confirmed) else {
            return;
        };
        let (behind, target) = self.read_symlink().await;
        if behind != Some(active) {
            let now_at = match behind {
                Some(n) => format!("{}'s config", self.nodes[n].name),
                None => match target {
                    Some(t) => format!("{}, no node's config", t.display()),
                    None => "nothing (it is missing or not a symlink)".to_string(),
                },
            };
            let what = format!(
                "the symlink {} now points at {now_at}, not at {}'s config where rebouncer put it",
                self.cfg.symlink.display(),
                self.nodes[active].name
            );
            self.drifted(what, behind);
            return;
        }

        let restarted = self.watch_session.as_ref().is_some_and(|s| s.is_closed());
        if !self.drift_cadence.round(restarted) {
            return;
        }
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
                    return;
                }
            }
        }
        let Some(session) = &self.watch_session else {
            return;
        };
        let databases = match admin::databases(session).await {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot check where PgBouncer routes: {e}");
                self.watch_session = None;
                return;
            }
        };
        self.note_paused(&databases);
        let node_file = self.cfg.servers[active].node_file.clone();
        let node =
            match tokio::task::spawn_blocking(move || config::read_node_file(&node_file)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    warn!("cannot check where PgBouncer routes: {e}");
                    return;
                }
                Err(_) => return,
            };
        if let Some(what) = drift::routes_differ(&node, &databases) {
            self.drifted(what, behind);
            return;
        }
        self.last_confirmed = Some(databases);
    }

    pub(super) fn drifted(&mut self, what: String, behind: Option<NodeId>) {
        let active = self.active_name();
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
        self.believed = Believed {
            active: behind,
            confirmed: false,
        };
        self.unsettled = true;
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

    pub(super) async fn switch(&mut self, to: NodeId) {
        let name = self.nodes[to].name.clone();
        let node_file = self.cfg.servers[to].node_file.clone();
        let from = self.believed.active;
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
        let reason = match from {
            _ if self.drift.is_some() => SwitchReason::Drift,
            None => SwitchReason::Initial,
            Some(f) if f == to => SwitchReason::Confirm,
            Some(_) => SwitchReason::Failover,
        };
        // The need arose when the new master was first seen as one, or the drift found.
        let needed_since = self
            .drift
            .as_ref()
            .map(|d| d.since)
            .or(self.nodes[to].since);
        let started = Instant::now();
        let waiting = match &self.hold {
            Some(h) => self.waiting_clients(&h.databases).await,
            None => None,
        };
        let held_paused = self
            .hold
            .as_ref()
            .map(|h| h.databases.clone())
            .unwrap_or_default();
        let plan = SwitchPlan {
            symlink: &self.cfg.symlink,
            node_file: &node_file,
            last_confirmed: self.last_confirmed.as_deref(),
            paused: &held_paused,
        };
        let result = switch::run(&self.console, &mut self.state, plan).await;
        match result {
            Ok(done) => {
                self.pacing
                    .attempted(to, started.into_std(), pacing::Outcome::Done);
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
                if !done.kills.resumed.is_empty() && self.hold.is_none() {
                    info!(
                        "resumed database(s) {}, left paused by an earlier attempt",
                        done.kills.resumed.join(", ")
                    );
                }
                self.last_confirmed = Some(done.confirmed);
                self.loss_handled = false;
                if let Some(h) = self.hold.take() {
                    let outcome = format!("switched to {name}");
                    if done.kills.resume_pending.is_empty() {
                        self.log_hold_end(h, &outcome, waiting);
                    } else {
                        // The warning above says which RESUME failed; the round retries it.
                        self.log_hold_end(h, &format!("{outcome}, but RESUME failed"), waiting);
                    }
                }
                self.believed = Believed {
                    active: Some(to),
                    confirmed: true,
                };
                if let Some(d) = self.drift.take() {
                    info!("PgBouncer is back on {name} after drifting ({})", d.what);
                }
                // Check the routes at the next round: that also opens the admin session
                // whose closing tells of a PgBouncer restart.
                self.drift_cadence.soon();
                self.last_switch = done.relinked.then(SystemTime::now).or(self.last_switch);
                self.switch_failure = None;
                for say in self.switch_errors.observe(None, Instant::now().into_std()) {
                    if let Say::Ended { lasted, .. } = say {
                        info!(
                            "switch to {name} succeeded after failing for {} s",
                            lasted.as_secs()
                        );
                    }
                }
            }
            Err(e) => {
                let not_taken = matches!(e, switch::SwitchError::NotApplied { .. });
                let outcome = if not_taken {
                    pacing::Outcome::NotTaken
                } else {
                    pacing::Outcome::Failed
                };
                self.pacing.attempted(to, started.into_std(), outcome);
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
                self.believed = Believed {
                    active: self.node_behind_symlink().await,
                    confirmed: false,
                };
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
                let key = format!("{name}: {error}");
                for say in self
                    .switch_errors
                    .observe(Some(key), Instant::now().into_std())
                {
                    match say {
                        Say::Started(_) => {
                            let text = match &self.not_taken {
                                Some(n) => format!(
                                    "switch to {name} failed: {error}; {}; retrying less and less often, up to every {} s, \
                                     until PgBouncer runs the symlink (restart it with the symlink as its config file)",
                                    n.describe(),
                                    self.cfg.interval.as_secs()
                                ),
                                None => format!(
                                    "switch to {name} failed: {error}; the symlink points at {}; retrying every round",
                                    self.active_name()
                                ),
                            };
                            error!("{text}");
                            view::record_event(&self.status, Kind::SwitchFailed, Some(&name), text);
                        }
                        Say::Reminder { lasted, rounds, .. } => error!(
                            "switch to {name} still failing after {} s ({rounds} attempts since the last reminder): {error}",
                            lasted.as_secs()
                        ),
                        Say::Ended { .. } => {}
                    }
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
