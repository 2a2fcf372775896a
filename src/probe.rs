//! Ask one server what it is: master, standby or down, always within a deadline.
//!
//! A monitoring connection is kept open across rounds (one query, one round trip per
//! check, no forked backend per round), and rebuilt only when it broke, failed or timed
//! out. Two facts shape this file (docs/postgresql.md, "Timeouts and hung servers"):
//! tokio-postgres's `connect_timeout` bounds only the socket connect, so a server whose
//! processes are stopped (TCP accepts, nothing answers) hangs the handshake forever unless
//! the whole check runs under our own deadline; and a connection task left behind after a
//! timeout lives on, holding the socket, until it is aborted.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::conninfo::Target;
use crate::decide::{NodeId, NodeState, Timeline};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub state: NodeState,
    /// Why the server counts as down, for the log and the status page.
    pub error: Option<String>,
    /// The check ran out of time: the server accepts connections but does not answer
    /// (a hung host or stopped processes). The daemon does not hold later rounds up
    /// waiting for such a server again.
    pub hung: bool,
    /// The server's timeline (a master's current one, a standby's received or replayed
    /// one) and the cluster's identity, where the monitoring role may read them.
    pub timeline: Option<Timeline>,
    /// Why the timeline or the cluster identity cannot be read on this server (a role
    /// without the privilege), so the operator knows it is checked by the older rules.
    pub timeline_note: Option<String>,
    /// The outcome of a check on a new connection made together with this one (before a
    /// split-brain verdict, and every few minutes): `Some(Err)` when the server answers on
    /// the kept session but refuses new logins. `None` when no such check was made.
    pub fresh: Option<Result<(), String>>,
}

impl Observation {
    pub fn up(state: NodeState, timeline: Option<Timeline>) -> Observation {
        Observation {
            state,
            error: None,
            hung: false,
            timeline,
            timeline_note: None,
            fresh: None,
        }
    }
    pub fn down(error: String) -> Observation {
        Observation {
            state: NodeState::Down,
            error: Some(error),
            hung: false,
            timeline: None,
            timeline_note: None,
            fresh: None,
        }
    }
    pub fn hung(error: String) -> Observation {
        Observation {
            hung: true,
            ..Observation::down(error)
        }
    }
}

/// Sent when a kept monitoring connection ends on its own (server shut down, crashed,
/// restarted, backend terminated): the daemon starts a round at once instead of waiting
/// for the next tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLost {
    pub node: NodeId,
}

struct Kept {
    client: Client,
    task: AbortHandle,
}

impl Drop for Kept {
    fn drop(&mut self) {
        // Without this the connection task waits for an answer that may never come.
        self.task.abort();
    }
}

/// How one server is asked. The daemon's loop only sees this trait, so its behaviour over
/// time is unit-tested with a fake cluster; [`Monitor`] is the real one.
pub trait Probe: Send + 'static {
    /// Check, on the kept connection where there is one.
    fn check(&mut self) -> impl Future<Output = Observation> + Send;
    /// Check on a new connection, leaving the kept one alone.
    fn check_fresh(&mut self) -> impl Future<Output = Observation> + Send;
    fn keeps_connections(&self) -> bool;
}

/// How much the monitoring role may read. Learnt from the server's answers: a role
/// without the privilege gets SQLSTATE 42501, and the next simpler query is used from
/// then on, so a locked-down role costs one failed query, not one per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Timeline and cluster identity.
    Full,
    /// The timeline of a master, the received timeline of a standby; no identity.
    TimelineOnly,
    /// `pg_is_in_recovery()` alone, as the Go tool asked.
    RecoveryOnly,
}

/// One round trip; every column but the first may be NULL. The timeline of a master is
/// the first 8 hex digits of its current WAL file name: `pg_control_checkpoint()` would
/// lag behind a fast promotion until the next checkpoint. On a standby, the timeline it
/// receives (or last restarted on) says which history it follows.
const QUERY_FULL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END, \
    (SELECT received_tli FROM pg_stat_wal_receiver), \
    CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) END, \
    (SELECT system_identifier FROM pg_control_system())";
const QUERY_TIMELINE: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END, \
    (SELECT received_tli FROM pg_stat_wal_receiver), NULL, NULL";
const QUERY_RECOVERY: &str = "SELECT pg_is_in_recovery(), NULL, NULL, NULL, NULL";

impl Access {
    fn query(self) -> &'static str {
        match self {
            Access::Full => QUERY_FULL,
            Access::TimelineOnly => QUERY_TIMELINE,
            Access::RecoveryOnly => QUERY_RECOVERY,
        }
    }
    fn lower(self) -> Option<Access> {
        match self {
            Access::Full => Some(Access::TimelineOnly),
            Access::TimelineOnly => Some(Access::RecoveryOnly),
            Access::RecoveryOnly => None,
        }
    }
    /// What the operator is told while this is all the role may read.
    fn note(self) -> Option<&'static str> {
        match self {
            Access::Full => None,
            Access::TimelineOnly => Some(
                "the monitoring role may not read pg_control_system(), so the cluster's identity is unknown; \
                 timelines are compared as if every server belonged to one cluster",
            ),
            Access::RecoveryOnly => Some(
                "the monitoring role may not read this server's timeline, so a stale old primary cannot be told \
                 from the real one here; only the split-brain rule protects (grant pg_monitor to the role)",
            ),
        }
    }
}

/// Watches one server.
pub struct Monitor {
    node: NodeId,
    target: Target,
    timeout: Duration,
    keep: bool,
    kept: Option<Kept>,
    lost: Option<UnboundedSender<ConnectionLost>>,
    access: Access,
}

impl Monitor {
    /// `keep = false` opens a new connection for every check, as the Go tool did.
    /// `lost` is told when a kept connection ends by itself.
    pub fn new(
        node: NodeId,
        mut target: Target,
        timeout: Duration,
        keep: bool,
        lost: Option<UnboundedSender<ConnectionLost>>,
    ) -> Monitor {
        if target.config.get_application_name().is_none() {
            // So a DBA looking at pg_stat_activity knows whose session this is.
            target.config.application_name("rebouncer");
        }
        Monitor {
            node,
            target,
            timeout,
            keep,
            kept: None,
            lost,
            access: Access::Full,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.target.endpoint
    }

    /// Close the kept connection; the next check opens a new one.
    pub fn forget_connection(&mut self) {
        self.kept = None;
    }

    pub fn keeps_connections(&self) -> bool {
        self.keep
    }

    /// Check the server, reusing the kept connection when there is one. A kept connection
    /// that turns out broken is replaced once within the same deadline, so a restarted
    /// but healthy server is not reported down.
    pub async fn check(&mut self) -> Observation {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, self.check_inner()).await;
        let mut obs = match result {
            Ok(Ok((state, timeline))) => Observation::up(state, timeline),
            Ok(Err(e)) => Observation::down(e),
            Err(_) => Observation::hung(format!(
                "{}: no answer within {} s (timeout)",
                self.target.endpoint,
                timeout.as_secs_f32()
            )),
        };
        if obs.state == NodeState::Down || !self.keep {
            self.kept = None;
        }
        obs.timeline_note = self.access.note().map(str::to_string);
        obs
    }

    async fn check_inner(&mut self) -> Result<(NodeState, Option<Timeline>), String> {
        if let Some(k) = self.kept.take()
            && !k.client.is_closed()
        {
            match query_state(&k.client, &mut self.access).await {
                Ok(s) => {
                    self.kept = Some(k);
                    return Ok(s);
                }
                Err(_) if k.client.is_closed() => {} // broke under us: reconnect below
                Err(e) => {
                    self.kept = Some(k);
                    return Err(format!("{}: {e}", self.target.endpoint));
                }
            }
        }
        let kept = self.open().await?;
        let state = query_state(&kept.client, &mut self.access)
            .await
            .map_err(|e| format!("{}: {e}", self.target.endpoint))?;
        self.kept = Some(kept);
        Ok(state)
    }

    async fn open(&self) -> Result<Kept, String> {
        let (client, handle) = self.target.connect().await.map_err(|e| e.to_string())?;
        let task = handle.abort_handle();
        let node = self.node;
        if let Some(tx) = self.lost.clone().filter(|_| self.keep) {
            tokio::spawn(async move {
                // An aborted task is our own doing; only a connection that ended by
                // itself is news.
                if let Ok(_ended) = handle.await {
                    let _ = tx.send(ConnectionLost { node });
                }
            });
        }
        Ok(Kept { client, task })
    }

    /// Check with a new connection, leaving the kept one alone. A kept session can hide a
    /// server whose postmaster no longer accepts anyone (patroni/patroni#1371); before
    /// trusting a master in a split-brain round, rebouncer asks this way.
    pub async fn check_fresh(&mut self) -> Observation {
        let timeout = self.timeout;
        let mut access = self.access;
        let work = async {
            let kept = self.open_unwatched().await?;
            query_state(&kept.client, &mut access)
                .await
                .map_err(|e| format!("{}: {e}", self.target.endpoint))
        };
        let result = tokio::time::timeout(timeout, work).await;
        self.access = access;
        match result {
            Ok(Ok((state, timeline))) => Observation {
                timeline_note: self.access.note().map(str::to_string),
                ..Observation::up(state, timeline)
            },
            Ok(Err(e)) => Observation::down(format!("new connection failed: {e}")),
            Err(_) => Observation::hung(format!(
                "{}: a new connection got no answer within {} s (timeout)",
                self.target.endpoint,
                timeout.as_secs_f32()
            )),
        }
    }

    async fn open_unwatched(&self) -> Result<Kept, String> {
        let (client, handle) = self.target.connect().await.map_err(|e| e.to_string())?;
        Ok(Kept {
            client,
            task: handle.abort_handle(),
        })
    }
}

impl Probe for Monitor {
    async fn check(&mut self) -> Observation {
        Monitor::check(self).await
    }
    async fn check_fresh(&mut self) -> Observation {
        Monitor::check_fresh(self).await
    }
    fn keeps_connections(&self) -> bool {
        self.keep
    }
}

/// One round trip on the simple protocol. A role that may not run the query's functions
/// (SQLSTATE 42501) is asked the next simpler query at once, and from then on.
async fn query_state(
    client: &Client,
    access: &mut Access,
) -> Result<(NodeState, Option<Timeline>), String> {
    loop {
        match client.simple_query(access.query()).await {
            Ok(messages) => return parse_answer(messages),
            Err(e) => {
                let denied =
                    e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
                match access.lower() {
                    Some(lower) if denied => *access = lower,
                    _ => return Err(crate::conninfo::error_chain(&e)),
                }
            }
        }
    }
}

fn parse_answer(
    messages: Vec<SimpleQueryMessage>,
) -> Result<(NodeState, Option<Timeline>), String> {
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            let state = match row.get(0) {
                Some("t") => NodeState::Standby,
                Some("f") => NodeState::Master,
                other => {
                    return Err(format!(
                        "unexpected answer {other:?} to SELECT pg_is_in_recovery()"
                    ));
                }
            };
            let cells: Vec<Option<&str>> = (1..5).map(|i| row.get(i)).collect();
            return Ok((state, timeline_from(state, &cells)));
        }
    }
    Err("SELECT pg_is_in_recovery() returned no row".into())
}

/// The timeline from the query's columns: WAL file name (master), received timeline and
/// checkpoint timeline (standby), system identifier. `None` when nothing was readable.
fn timeline_from(state: NodeState, cells: &[Option<&str>]) -> Option<Timeline> {
    let walfile = cells.first().copied().flatten();
    let number = |i: usize| {
        cells
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| v.parse::<u32>().ok())
    };
    let timeline = match state {
        NodeState::Master => walfile.and_then(|w| u32::from_str_radix(w.get(..8)?, 16).ok()),
        _ => number(1).max(number(2)),
    }?;
    let system = cells
        .get(3)
        .copied()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    Some(Timeline { timeline, system })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masters_timeline_is_read_from_its_wal_file_name() {
        let t = timeline_from(
            NodeState::Master,
            &[
                Some("0000000A0000000000000003"),
                None,
                None,
                Some("7312345678901234567"),
            ],
        );
        assert_eq!(
            t,
            Some(Timeline {
                timeline: 10,
                system: Some(7312345678901234567)
            })
        );
    }

    #[test]
    fn a_standbys_timeline_is_the_higher_of_received_and_checkpoint() {
        let t = timeline_from(NodeState::Standby, &[None, Some("3"), Some("2"), None]);
        assert_eq!(
            t,
            Some(Timeline {
                timeline: 3,
                system: None
            })
        );
        let t = timeline_from(NodeState::Standby, &[None, None, Some("2"), None]);
        assert_eq!(
            t,
            Some(Timeline {
                timeline: 2,
                system: None
            })
        );
    }

    #[test]
    fn nothing_readable_is_no_timeline() {
        assert_eq!(
            timeline_from(NodeState::Master, &[None, None, None, None]),
            None
        );
        assert_eq!(
            timeline_from(NodeState::Standby, &[None, None, None, Some("1")]),
            None
        );
    }

    #[test]
    fn access_steps_down_to_the_go_query() {
        assert_eq!(Access::Full.lower(), Some(Access::TimelineOnly));
        assert_eq!(Access::TimelineOnly.lower(), Some(Access::RecoveryOnly));
        assert_eq!(Access::RecoveryOnly.lower(), None);
        assert!(Access::Full.note().is_none());
        assert!(
            Access::RecoveryOnly
                .note()
                .unwrap()
                .contains("stale old primary")
        );
    }
}
