//! One task per server: it checks its server when the loop asks, and reports back.

use super::*;

/// With kept connections, each server is also checked with a new connection this often,
/// so a server that no longer accepts logins shows as such.
const FRESH_CHECK_EVERY: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    Check,
    Fresh,
}

pub(super) struct Report {
    /// The monitor's key (see [`Node::key`]), not an index: the list of nodes may have
    /// been rebuilt by a reload since the check was asked for.
    pub(super) key: MonitorKey,
    pub(super) obs: Observation,
    /// How long the check took, fresh re-check included.
    pub(super) took: Duration,
}

/// One server's monitor: checks when asked, reports back. Runs until the daemon drops its
/// request channel.
pub(super) async fn run_monitor<P: Probe>(
    key: MonitorKey,
    mut probe: P,
    mut requests: mpsc::UnboundedReceiver<Request>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut last_fresh = Instant::now();
    while let Some(req) = requests.recv().await {
        let due = last_fresh.elapsed() >= FRESH_CHECK_EVERY;
        let started = Instant::now();
        let mut obs = probe.check().await;
        if probe.keeps_connections()
            && (req == Request::Fresh || due)
            && obs.state != NodeState::Down
        {
            last_fresh = Instant::now();
            let fresh = probe.check_fresh().await;
            obs.fresh = Some(match fresh.state {
                NodeState::Down => Err(fresh
                    .error
                    .unwrap_or_else(|| "new connection failed".to_string())),
                _ => Ok(()),
            });
        }
        let took = started.elapsed();
        if reports.send(Report { key, obs, took }).is_err() {
            break;
        }
    }
}
