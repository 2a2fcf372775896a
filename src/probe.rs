//! Ask one server what it is: master, standby or down, always within a deadline.
//!
//! A monitoring connection is kept open across rounds (one query, one round trip per
//! check, no forked backend per round), and rebuilt only when it broke, failed or timed
//! out. Two facts shape this file (measured, see CRATES.md sections 0 and 5):
//! tokio-postgres's `connect_timeout` bounds only the socket connect, so a server whose
//! processes are stopped (TCP accepts, nothing answers) hangs the handshake forever unless
//! the whole check runs under our own deadline; and a connection task left behind after a
//! timeout lives on, holding the socket, until it is aborted.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::conninfo::Target;
use crate::decide::{NodeId, NodeState};

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
}

impl Observation {
    fn up(state: NodeState) -> Observation {
        Observation {
            state,
            error: None,
            hung: false,
        }
    }
    fn down(error: String) -> Observation {
        Observation {
            state: NodeState::Down,
            error: Some(error),
            hung: false,
        }
    }
    fn hung(error: String) -> Observation {
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

/// Watches one server.
pub struct Monitor {
    node: NodeId,
    target: Target,
    timeout: Duration,
    keep: bool,
    kept: Option<Kept>,
    lost: Option<UnboundedSender<ConnectionLost>>,
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
        let obs = match result {
            Ok(Ok(state)) => Observation::up(state),
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
        obs
    }

    async fn check_inner(&mut self) -> Result<NodeState, String> {
        if let Some(k) = &self.kept {
            if !k.client.is_closed() {
                match query_state(&k.client).await {
                    Ok(s) => return Ok(s),
                    Err(_) if k.client.is_closed() => {} // broke under us: reconnect below
                    Err(e) => return Err(format!("{}: {e}", self.target.endpoint)),
                }
            }
            self.kept = None;
        }
        let kept = self.open().await?;
        let state = query_state(&kept.client)
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
    pub async fn check_fresh(&self) -> Observation {
        let timeout = self.timeout;
        let work = async {
            let kept = self.open_unwatched().await?;
            query_state(&kept.client)
                .await
                .map_err(|e| format!("{}: {e}", self.target.endpoint))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(state)) => Observation::up(state),
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

/// One round trip on the simple protocol: `t` means in recovery (standby).
async fn query_state(client: &Client) -> Result<NodeState, String> {
    let messages = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .map_err(|e| crate::conninfo::error_chain(&e))?;
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            return match row.get(0) {
                Some("t") => Ok(NodeState::Standby),
                Some("f") => Ok(NodeState::Master),
                other => Err(format!(
                    "unexpected answer {other:?} to SELECT pg_is_in_recovery()"
                )),
            };
        }
    }
    Err("SELECT pg_is_in_recovery() returned no row".into())
}
