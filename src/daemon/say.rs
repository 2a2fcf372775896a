//! What the loop logs about a decision, a failing switch and the state file: the words.
//! When each lasting condition is said (once when it starts, as a reminder now and then,
//! once when it ends) is the policy's (`policy/machine/reminders.rs`).

use super::*;

impl<C: Console> Daemon<C> {
    /// Log what the policy says is due of the verdict's lasting conditions.
    pub(super) fn log_decision(&self, lasting: Lasting) {
        let names = |ids: &[NodeId]| -> Vec<String> {
            ids.iter().map(|i| self.nodes[*i].name.clone()).collect()
        };
        for say in lasting.cluster {
            self.log_condition(say);
        }

        let active = self.active_name();
        for say in lasting.stale {
            match say {
                Say::Started(_) => {
                    for s in &lasting.stale_found {
                        let name = &self.nodes[s.node].name;
                        view::record_event(
                            &self.status,
                            Kind::StalePrimaryStart,
                            Some(name),
                            format!(
                                "stale primary: {name} answers as master on timeline {}, but {}; never routed to",
                                s.timeline,
                                self.fence_text(s)
                            ),
                        );
                        let what = match s.standby {
                            None => "an old primary that was not rewound",
                            Some(_) => {
                                "an old primary, or a standby ahead of the primary: a promoted clone \
                                 restarted as a standby, or one following a shared archive; the fence \
                                 lifts when that standby no longer reports the newer timeline"
                            }
                        };
                        error!(
                            "stale primary: {} answers as master on timeline {}, but {} ({what}); \
                             refusing to route to it, PgBouncer stays pointed at {active}. \
                             Stop it, or rewind it (pg_rewind) and start it as a standby",
                            self.nodes[s.node].name,
                            s.timeline,
                            self.fence_text(s)
                        );
                    }
                }
                Say::Reminder { key, lasted, .. } => error!(
                    "stale primary {} still running after {} s; never routed to, PgBouncer stays pointed at {active}",
                    names(&key).join(", "),
                    lasted.as_secs()
                ),
                Say::Ended { key, lasted } => {
                    let key = names(&key);
                    let text = format!(
                        "stale primary {} no longer answers as master (after {} s)",
                        key.join(", "),
                        lasted.as_secs()
                    );
                    info!("{text}");
                    for name in &key {
                        view::record_event(
                            &self.status,
                            Kind::StalePrimaryEnd,
                            Some(name),
                            text.clone(),
                        );
                    }
                }
            }
        }

        for say in lasting.refusal {
            match say {
                Say::Started(r) => {
                    let text = self.refusal_text(&r.refusal);
                    error!("{text}");
                    view::record_event(&self.status, Kind::RefusalStart, None, text);
                }
                Say::Reminder { key, lasted, .. } => {
                    error!(
                        "still, after {} s: {}",
                        lasted.as_secs(),
                        self.refusal_text(&key.refusal)
                    )
                }
                Say::Ended { lasted, .. } => {
                    let text =
                        format!("the refusal to switch is over after {} s", lasted.as_secs());
                    info!("{text}");
                    view::record_event(&self.status, Kind::RefusalEnd, None, text);
                }
            }
        }
    }

    /// What makes a stale primary stale: the remembered timeline, or a standby's.
    fn fence_text(&self, s: &Stale) -> String {
        match s.standby {
            Some(b) => format!(
                "standby {} reports timeline {}",
                self.nodes[b].name, s.highest
            ),
            None => format!("the cluster has reached timeline {}", s.highest),
        }
    }

    pub(super) fn refusal_text(&self, r: &Refusal) -> String {
        let active = self.active_name();
        match r {
            Refusal::LinkedSilentSinceStart { master, linked } => {
                let (m, l) = (&self.nodes[*master].name, &self.nodes[*linked].name);
                format!(
                    "waiting for {l}: rebouncer started with no remembered timeline and PgBouncer points at {l}, \
                     which has only timed out since; it may be the real primary, hung, and {m} an old primary \
                     that came back, which nothing here can tell apart yet. Not moving PgBouncer to {m} until \
                     {l} answers or refuses connections; if {l} is gone for good, stop it or take it out of \
                     the configuration"
                )
            }
            Refusal::RefusesNewLogins(m) => {
                let n = &self.nodes[*m];
                format!(
                    "{} is the only master but refuses new connections ({}); not pointing PgBouncer at it, \
                     which could not log in either; PgBouncer stays pointed at {active}",
                    n.name,
                    self.policy.nodes()[*m]
                        .refuses_new
                        .as_deref()
                        .unwrap_or("new connection failed")
                )
            }
            Refusal::Unresolved {
                master,
                unreachable,
            } => {
                let others: Vec<&str> = unreachable
                    .iter()
                    .map(|i| self.nodes[*i].name.as_str())
                    .collect();
                format!(
                    "split brain not resolved: {} is the only master answering, but {} stopped answering instead of \
                     coming back as a standby and may still be the real primary; refusing to switch to {}, PgBouncer \
                     stays pointed at {active}. Once {} is stopped for good, start it as a standby or restart rebouncer",
                    self.nodes[*master].name,
                    others.join(", "),
                    self.nodes[*master].name,
                    others.join(", ")
                )
            }
        }
    }

    fn log_condition(&self, say: Say<Condition>) {
        let active = self.active_name();
        let names = |ids: &[NodeId]| -> Vec<String> {
            ids.iter().map(|i| self.nodes[*i].name.clone()).collect()
        };
        let event = match &say {
            Say::Started(Condition::NoMaster) => Some((
                Kind::NoMasterStart,
                "no master: no server answers as master (stale primaries aside)".to_string(),
            )),
            Say::Started(Condition::SplitBrain(m)) => Some((
                Kind::SplitBrainStart,
                format!("split brain: {} all answer as master", names(m).join(", ")),
            )),
            Say::Ended { key, lasted } => Some(match key {
                Condition::NoMaster => (
                    Kind::NoMasterEnd,
                    format!("no master is over after {} s", lasted.as_secs()),
                ),
                Condition::SplitBrain(m) => (
                    Kind::SplitBrainEnd,
                    format!(
                        "split brain ({}) is over after {} s",
                        names(m).join(", "),
                        lasted.as_secs()
                    ),
                ),
            }),
            Say::Reminder { .. } => None,
        };
        if let Some((kind, text)) = event {
            view::record_event(&self.status, kind, None, text);
        }
        match say {
            Say::Started(Condition::NoMaster) => warn!(
                "no master: no server answers as master (stale primaries aside); not touching PgBouncer, which stays pointed at {active}"
            ),
            Say::Started(Condition::SplitBrain(m)) => error!(
                "split brain: {} all answer as master (on the same timeline, or one that cannot be read); refusing to switch, PgBouncer stays pointed at {active}. \
                 Find the real primary and stop or demote the other",
                names(&m).join(", ")
            ),
            Say::Reminder {
                key,
                lasted,
                rounds,
            } => {
                let what = match key {
                    Condition::NoMaster => "no master".to_string(),
                    Condition::SplitBrain(m) => format!("split brain ({})", names(&m).join(", ")),
                };
                error!(
                    "{what} for {} s now ({rounds} rounds since the last reminder); PgBouncer stays pointed at {active}",
                    lasted.as_secs()
                )
            }
            Say::Ended { key, lasted } => {
                let what = match key {
                    Condition::NoMaster => "no master".to_string(),
                    Condition::SplitBrain(m) => format!("split brain ({})", names(&m).join(", ")),
                };
                info!("{what} is over after {} s", lasted.as_secs())
            }
        }
    }

    /// Log a switch that failed: its first failure, or a reminder that it still fails.
    pub(super) fn say_switch_failing(&self, say: Say<SwitchError>) {
        match say {
            Say::Started(SwitchError { to, error }) => {
                let name = &self.nodes[to].name;
                let text = match &self.not_taken {
                    Some(n) => format!(
                        "switch to {name} failed: {error}; {}; retrying less and less often, up to every {} s, \
                         until PgBouncer runs the symlink (restart it with the symlink as its config file)",
                        n.describe(),
                        self.cfg.interval.as_secs()
                    ),
                    // The policy believes what the link names since the failure.
                    None => format!(
                        "switch to {name} failed: {error}; the symlink points at {}; retrying every round",
                        self.active_name()
                    ),
                };
                error!("{text}");
                view::record_event(&self.status, Kind::SwitchFailed, Some(name), text);
            }
            Say::Reminder {
                key: SwitchError { to, error },
                lasted,
                rounds,
            } => error!(
                "switch to {} still failing after {} s ({rounds} attempts since the last reminder): {error}",
                self.nodes[to].name,
                lasted.as_secs()
            ),
            Say::Ended { .. } => {}
        }
    }

    /// Log how the state file stands: a failure once, then a reminder now and then, and
    /// once more when a write works again.
    pub(super) fn say_state_file(&mut self, said: Vec<Said>) {
        let pausing = self.cfg.pause_on_failover;
        let path = self.state.path().display().to_string();
        for said in said {
            match said {
                Said::Failing(e) if pausing => warn!(
                    "{e}; pause_on_failover is off until the state file can be written (retried every round): \
                     clients are not held during a failover"
                ),
                Said::Failing(e) => warn!("{e}; retried every round"),
                Said::StillFailing {
                    error,
                    lasted,
                    attempts,
                } => warn!(
                    "state file still cannot be written after {} s ({attempts} attempts since the last reminder): {error}",
                    lasted.as_secs()
                ),
                Said::Written { lasted } if pausing => info!(
                    "state file {path} written again after failing for {} s; pause_on_failover is on again",
                    lasted.as_secs()
                ),
                Said::Written { lasted } => info!(
                    "state file {path} written again after failing for {} s",
                    lasted.as_secs()
                ),
            }
        }
    }
}
