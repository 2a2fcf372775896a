//! Clients held in PgBouncer: the failover pause, its end, and the databases a
//! switch or an earlier run left paused or not yet KILLed. The rules of when are in
//! [`crate::policy::pause`]; this performs them on the admin console.

use super::*;

/// A `PAUSE` that has not completed by then is abandoned: it waits for running
/// transactions, and every client arriving meanwhile waits too (together with `timeout`,
/// whichever is shorter).
const PAUSE_BOUND: Duration = Duration::from_secs(2);

/// How a hold ends when no switch ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// The lost master answers as master again: plain RESUME, clients go on where they were.
    MasterBack,
    /// No single master in time, split brain, only a stale primary, a refused master:
    /// clients get PgBouncer's errors as they would have without the pause.
    GiveUp,
    /// rebouncer stops: RESUME, and PgBouncer deals with the clients as without rebouncer.
    Shutdown,
}

/// How a hold ended, for its log line's level and for the pages: a pause whose RESUME
/// failed still holds clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HoldEnded {
    Switched,
    /// Resumed without a switch: the held clients get PgBouncer's errors.
    Released,
    ResumeFailed,
}

impl<C: Console> Daemon<C> {
    /// Databases a previous run killed and did not resume (it was killed in between)
    /// wait for a `RESUME` that nobody else will send. Only what the state file lists: a
    /// pause an operator made is theirs to end.
    pub(super) async fn finish_what_the_last_run_left(&mut self) {
        let kill_pending = &self.state.state().kill_pending;
        if !kill_pending.is_empty() {
            warn!(
                "the state file lists database(s) {} as moved to a new server but not yet KILLed: a rebouncer stopped \
                 between its RELOAD and its KILL may have left their clients on the old server; sending KILL and RESUME now",
                kill_pending.join(", ")
            );
            self.retry_kill_pending().await;
        }
        if !self.state.state().resume_pending.is_empty() {
            self.put_back_login_retry().await;
            self.resume_pending(
                "left paused by a rebouncer stopped between its PAUSE or KILL and the RESUME",
            )
            .await;
        }
    }

    /// A rebouncer killed between lowering `server_login_retry` to 0 for a `RESUME` and
    /// setting it back leaves PgBouncer at 0 until its next `RELOAD`, and the `RESUME` it
    /// owed may have taken effect already, so nothing else would set it back. Only called
    /// while the state file lists a held database: a 0 then is most likely rebouncer's.
    async fn put_back_login_retry(&self) {
        let Ok(s) = self.console.session().await else {
            return;
        };
        let Ok(Some(now)) = admin::setting(&s, "server_login_retry").await else {
            return;
        };
        if now.trim().parse::<f64>() != Ok(0.0) {
            return;
        }
        let file = std::fs::read_to_string(&self.cfg.symlink).unwrap_or_default();
        let configured = configured_login_retry(&file);
        if configured == "0" {
            return;
        }
        match s
            .command(&format!("SET server_login_retry = '{configured}'"))
            .await
        {
            Ok(_) => warn!(
                "PgBouncer's server_login_retry was 0, as a rebouncer stopped in the middle of ending a pause leaves it; \
                 set back to {configured} from {}",
                self.cfg.symlink.display()
            ),
            Err(e) => warn!(
                "PgBouncer's server_login_retry is 0, as a rebouncer stopped in the middle of ending a pause leaves it, \
                 and could not be set back to {configured}: {e}; PgBouncer retries failed server logins without delay \
                 until its next RELOAD (or run SET server_login_retry = '{configured}' on its admin console)"
            ),
        }
    }

    /// PgBouncer settings that defeat `pause_on_failover`, said once at start.
    pub(super) async fn check_pause_settings(&self) {
        if !self.cfg.pause_on_failover {
            return;
        }
        let Ok(s) = self.console.session().await else {
            return;
        };
        let secs = |v: Option<String>| v.and_then(|v| v.trim().parse::<f64>().ok());
        let wait = secs(
            admin::setting(&s, "query_wait_timeout")
                .await
                .ok()
                .flatten(),
        );
        let limit = self.cfg.pause_timeout.as_secs_f64();
        if let Some(w) = wait.filter(|w| *w > 0.0 && *w <= limit) {
            warn!(
                "PgBouncer's query_wait_timeout ({w} s) is not above pause_timeout ({limit} s): clients held through a failover get query_wait_timeout errors before the pause ends; raise it or lower pause_timeout"
            );
        }
        if let Ok(Some(mode)) = admin::setting(&s, "pool_mode").await
            && mode == "session"
        {
            warn!(
                "PgBouncer's pool_mode is session: a failover PAUSE waits until every connected client disconnects, so it will usually be given up after {} ms and clients not held; pause_on_failover works with transaction pooling",
                self.cfg.timeout.min(PAUSE_BOUND).as_millis()
            );
        }
    }

    pub(super) async fn resume_pending(&mut self, why: &str) {
        match switch::resume_pending(&self.console, &mut self.state).await {
            Ok(done) => {
                if !done.resumed.is_empty() {
                    info!(
                        "resumed database(s) {} in PgBouncer, {why}; their clients are let through again",
                        done.resumed.join(", ")
                    );
                }
                if let Some(w) = done.warning {
                    warn!("{w}");
                }
            }
            Err(e) => warn!("{e}"),
        }
    }

    /// `KILL` (and `RESUME`) the databases the state file lists as kill pending:
    /// their clients may still be on the old server. Retried every round until it works.
    pub(super) async fn retry_kill_pending(&mut self) {
        let listed = self.state.state().kill_pending.join(", ");
        match switch::retry_kill_pending(&self.console, &mut self.state).await {
            Ok(r) => {
                if !r.killed.is_empty() {
                    info!(
                        "connections to the old server dropped for database(s) {} (KILL retried)",
                        r.killed.join(", ")
                    );
                }
                for w in &r.warnings {
                    warn!("{w}");
                }
            }
            Err(e) => warn!("cannot retry KILL of database(s) {listed}: {e}; retrying next round"),
        }
    }

    /// What to say and do when a hold ends without a switch.
    pub(super) fn release_text(&self, hold: &Hold, release: &Release) -> (String, Ending) {
        let timeout = self.cfg.pause_timeout.as_secs();
        match release {
            Release::End(HoldEnd::MasterBack) => (
                format!("{} answers as master again", self.nodes[hold.lost].name),
                Ending::MasterBack,
            ),
            Release::End(HoldEnd::Verdict(v)) => (self.no_hold_text(v), Ending::GiveUp),
            Release::End(HoldEnd::TimedOut) => (
                format!("no master appeared within pause_timeout ({timeout} s)"),
                Ending::GiveUp,
            ),
            Release::NoSwitch(to) => (
                format!(
                    "no switch to {} succeeded within pause_timeout ({timeout} s)",
                    self.nodes[*to].name
                ),
                Ending::GiveUp,
            ),
            Release::Removed(lost) => (
                format!(
                    "{} was removed from the configuration",
                    self.nodes[*lost].name
                ),
                Ending::GiveUp,
            ),
            Release::Shutdown => ("rebouncer is shutting down".to_string(), Ending::Shutdown),
        }
    }

    pub(super) fn no_hold_text(&self, v: &NoHold) -> String {
        let names = |ids: &[NodeId]| -> String {
            ids.iter()
                .map(|i| self.nodes[*i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match v {
            NoHold::SplitBrain(m) => {
                format!("split brain ({}): no switch until it is resolved", names(m))
            }
            NoHold::Refused(r) => self.refusal_text(r),
            NoHold::OnlyStale(n) => format!(
                "only a stale primary ({}) answers as master, never switched to",
                names(n)
            ),
        }
    }

    /// `PAUSE` the lost master's databases, recorded in the state file first; the hold,
    /// if it was made. Bounded: a `PAUSE` that does not complete in time is given up and
    /// resumed at once.
    pub(super) async fn start_hold(&mut self, lost: NodeId, why: &str) -> Option<Paused> {
        let name = self.nodes[lost].name.clone();
        let skip = |e: &dyn std::fmt::Display| {
            warn!(
                "{name} stopped being master ({why}), but its clients are not held in PgBouncer: {e}; they get errors until a new master is switched to"
            );
            None
        };
        let node_file = self.cfg.servers[lost].node_file.clone();
        let node =
            match tokio::task::spawn_blocking(move || config::read_node_file(&node_file)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return skip(&e),
                Err(e) => return skip(&e),
            };
        let now = match self.console.session().await {
            Ok(s) => admin::databases(&s).await,
            Err(e) => Err(e),
        };
        let now = match now {
            Ok(d) => d,
            Err(e) => return skip(&e),
        };
        let wanted: Vec<String> = node.databases.iter().map(|d| d.name.clone()).collect();
        let databases = pause::databases_to_hold(&wanted, &now, &self.state.state().resume_pending);
        if databases.is_empty() {
            return skip(&"none of its databases is there to pause");
        }
        // Taken before this hold lists its own databases: their pause begins with it.
        let held_since = pause::held_since(self.state.listed_since(), &now);
        let add = databases.clone();
        // Kept in memory only if on disk: a record that stayed in memory without its PAUSE
        // would be "resumed" at the next round, a RESUME of something never paused.
        let recorded = self
            .state
            .update_or_undo(|s| s.mark_resume_pending(add))
            .await;
        if let Err(e) = recorded {
            // Unrecorded, a rebouncer killed during the pause would leave them paused.
            return skip(&e);
        }
        let bound = self.cfg.timeout.min(PAUSE_BOUND);
        let started = Instant::now();
        let mut pauses = tokio::task::JoinSet::new();
        for db in &databases {
            let console = self.console.clone();
            let command = format!("PAUSE {}", admin::quote_ident(db));
            pauses.spawn(async move {
                let s = console.session().await?;
                s.command(&command).await.map(|_| ())
            });
        }
        let outcome = tokio::time::timeout(bound, async {
            while let Some(r) = pauses.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
        .await;
        // Dropping the set closes the sessions of unfinished PAUSEs: a RESUME must not be
        // sent while one still waits on its session (pgbouncer/pgbouncer#715).
        drop(pauses);
        match outcome {
            Ok(Ok(())) => {
                let timeout = self.cfg.pause_timeout;
                let wait = match held_since {
                    Some(h) if h < started.into_std() => {
                        let left = pause::hold_deadline(started.into_std(), Some(h), timeout)
                            .saturating_duration_since(Instant::now().into_std());
                        format!(
                            "clients wait at most {:.1} s more for a new master: a database rebouncer holds was \
                             paused already {:.1} s before (a RESUME that failed left it so), and pause_timeout \
                             ({} s) counts from then",
                            left.as_secs_f64(),
                            started
                                .into_std()
                                .saturating_duration_since(h)
                                .as_secs_f64(),
                            timeout.as_secs()
                        )
                    }
                    _ => format!(
                        "clients wait up to {} s (pause_timeout) for a new master",
                        timeout.as_secs()
                    ),
                };
                warn!(
                    "{name} stopped being master ({why}): PAUSE {} in PgBouncer done in {} ms; {wait}",
                    databases.join(", "),
                    started.elapsed().as_millis(),
                );
                Some(Paused {
                    databases,
                    started: started.into_std(),
                    since: SystemTime::now(),
                    held_since,
                })
            }
            Ok(Err(e)) => {
                warn!(
                    "{name} stopped being master ({why}), but PAUSE {} failed: {e}; resumed, the failover goes on without holding clients",
                    databases.join(", ")
                );
                self.resume_and_verify(&databases).await;
                None
            }
            Err(_) => {
                warn!(
                    "{name} stopped being master ({why}), but PAUSE {} did not complete within {} ms (running queries hold server connections: a hung primary, long transactions or session-pooled clients); resumed, the failover goes on without holding clients",
                    databases.join(", "),
                    bound.as_millis()
                );
                self.resume_and_verify(&databases).await;
                None
            }
        }
    }

    /// RESUME on a new session, then check with `SHOW DATABASES` that none stays paused;
    /// what does stays listed in the state file and is retried every round.
    pub(super) async fn resume_and_verify(&mut self, databases: &[String]) {
        self.resume_pending("after a PAUSE that did not complete")
            .await;
        let still: Vec<String> = match self.console.session().await {
            Ok(s) => match admin::databases(&s).await {
                Ok(now) => now
                    .iter()
                    .filter(|d| d.paused && databases.contains(&d.name))
                    .map(|d| d.name.clone())
                    .collect(),
                Err(_) => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        if !still.is_empty() {
            let again = still.clone();
            let _ = self.state.update(|s| s.mark_resume_pending(again)).await;
            warn!(
                "database(s) {} still paused in PgBouncer after RESUME; retrying every round (by hand: RESUME <db> on the admin console)",
                still.join(", ")
            );
        }
        self.publish();
    }

    /// End the hold without a switch.
    pub(super) async fn end_hold(&mut self, h: Hold, why: &str, how: Ending) {
        let waiting = self.waiting_clients(&h.databases).await;
        let result = match how {
            Ending::MasterBack => {
                switch::resume_paused(&self.console, &mut self.state, &h.databases)
                    .await
                    .map(|done| done.warning.into_iter().collect::<Vec<_>>())
                    .map_err(|e| e.to_string())
            }
            // KillPlan clients are waiting for a server that is gone; after RESUME PgBouncer
            // fails new clients at once ("server login has been failing") and the held
            // ones at query_wait_timeout. KILL would fail the held ones now, but the pool
            // it leaves has no cached server parameters, so every new client would then
            // wait for a server login instead of failing: worse for all later clients.
            Ending::GiveUp | Ending::Shutdown => {
                switch::resume_pending(&self.console, &mut self.state)
                    .await
                    .map(|done| done.warning.into_iter().collect())
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(warnings) => {
                for w in warnings {
                    warn!("{w}");
                }
                self.log_hold_end(
                    h,
                    &format!("resumed without a switch: {why}"),
                    waiting,
                    HoldEnded::Released,
                );
            }
            Err(e) => {
                error!(
                    "ending the pause ({why}) failed: {e}; clients keep waiting until RESUME gets through (retried every round)"
                );
                self.log_hold_end(
                    h,
                    &format!("RESUME failed ({why})"),
                    waiting,
                    HoldEnded::ResumeFailed,
                );
            }
        }
        self.publish();
    }

    pub(super) fn log_hold_end(
        &mut self,
        h: Hold,
        outcome: &str,
        waiting: Option<u64>,
        ended: HoldEnded,
    ) {
        let lasted = Instant::now()
            .into_std()
            .saturating_duration_since(h.started);
        // Shown until the next comparison of routes would notice.
        self.paused.retain(|p| !h.databases.contains(&p.name));
        let clients = waiting.map_or("an unknown number of".to_string(), |w| w.to_string());
        let line = format!(
            "pause of database(s) {} in PgBouncer ended after {} ms, {clients} client(s) were waiting: {outcome}",
            h.databases.join(", "),
            lasted.as_millis()
        );
        // Released without a new master, the held clients get errors: worth a warning.
        if ended == HoldEnded::Switched {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        self.last_hold = Some(FailoverPause {
            databases: h.databases,
            lost: self.nodes[h.lost].name.clone(),
            since: h.since,
            timeout: self.cfg.pause_timeout,
            ended: Some(PauseEnd {
                lasted,
                outcome: outcome.to_string(),
                waiting,
                resume_failed: ended == HoldEnded::ResumeFailed,
            }),
        });
    }

    pub(super) async fn waiting_clients(&self, databases: &[String]) -> Option<u64> {
        let s = self.console.session().await.ok()?;
        admin::waiting_clients(&s, databases).await.ok()
    }
}

/// `server_login_retry` as the `[pgbouncer]` section of a PgBouncer file sets it, or
/// PgBouncer's default (15 s). Only plain digits are taken: the value goes into a `SET`.
fn configured_login_retry(file: &str) -> String {
    let mut section = String::new();
    let mut value = None;
    for line in file.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
        } else if section == "pgbouncer"
            && let Some((key, v)) = line.split_once('=')
            && key.trim().eq_ignore_ascii_case("server_login_retry")
        {
            value = Some(v.trim().to_string());
        }
    }
    value
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| "15".into())
}

#[cfg(test)]
mod login_retry_tests {
    use super::configured_login_retry;

    #[test]
    fn the_configured_server_login_retry_is_read_from_the_pgbouncer_section() {
        let file = "[databases]\nserver_login_retry = 9\n[pgbouncer]\nlisten_port = 6432\nserver_login_retry = 3\n";
        assert_eq!(configured_login_retry(file), "3");
        assert_eq!(
            configured_login_retry("[pgbouncer]\nlisten_port = 6432\n"),
            "15"
        );
        assert_eq!(
            configured_login_retry("[pgbouncer]\nserver_login_retry = 1'; x\n"),
            "15"
        );
        assert_eq!(
            configured_login_retry("[databases]\nserver_login_retry = 9\n"),
            "15"
        );
    }
}
