//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): a few `KEY=value` lines in
//! one datagram to the unix socket named by `$NOTIFY_SOCKET`. Without that variable
//! nothing is sent and nothing changes.
//!
//! The few lines the protocol needs, rather than a crate: the libsystemd bindings pull in
//! a C library, and the small pure-Rust crates do what these 60 lines do. The std socket
//! is used rather than tokio's, whose `send_to` takes a path only, while systemd may hand
//! out an abstract address (`@name`); one datagram of a hundred bytes to a local socket
//! does not block (and the socket is non-blocking besides: a message that does not fit
//! is dropped, as losing a STATUS line is harmless).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::pages::nagios;
use crate::view::{Phase, Snapshot};

pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for messages.
    name: String,
    /// `WatchdogSec=` as systemd passes it (`$WATCHDOG_USEC`), when it is for us.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `Ok(None)` when it is not set (not started by systemd with
    /// `Type=notify`).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                let mut n = Notifier::new(&v.to_string_lossy())?;
                n.watchdog = watchdog_from(
                    std::env::var("WATCHDOG_USEC").ok().as_deref(),
                    std::env::var("WATCHDOG_PID").ok().as_deref(),
                    std::process::id(),
                );
                Ok(Some(n))
            }
        }
    }

    pub fn new(name: &str) -> io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => abstract_addr(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            name: name.to_string(),
            watchdog: None,
        })
    }

    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The watchdog period, unless it is unset, unparsable, zero, or meant for another
/// process (`$WATCHDOG_PID`, as sd_watchdog_enabled(3) checks).
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(me)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// A one-line summary of the snapshot for `STATUS=`: what `/nagios` says, as that is
/// what an operator looking at `systemctl status` wants to know.
pub fn summary(s: &Snapshot, now: SystemTime) -> String {
    nagios::render(s, now).replace('\n', " ")
}

/// Ready once the first round has run, whatever it found. Also while PgBouncer's admin
/// console does not answer yet: that wait can last, it is shown on the status pages,
/// and a unit stuck in "activating" would be failed by systemd after its start timeout
/// and restarted in a loop, when PgBouncer may legitimately start later.
pub fn is_ready(s: &Snapshot) -> bool {
    s.counters.rounds > 0 || matches!(s.phase, Phase::WaitingForPgBouncer { .. })
}

/// Tell systemd: `READY=1` with the first summary, `STATUS=` whenever the summary
/// changes, `STOPPING=1` when shutdown starts; with `WatchdogSec=`, `WATCHDOG=1`. Runs
/// until shutdown.
///
/// The watchdog is fed only when the snapshot changes, and only the daemon's main loop
/// changes it (every check it records, every round, every retry while PgBouncer is
/// awaited): a loop that is stuck stops the pings, and systemd restarts rebouncer. So
/// `WatchdogSec=` must exceed the longest the loop may legitimately be quiet: `interval`
/// plus `timeout` plus a switch, see the README.
pub async fn run(
    notifier: Notifier,
    mut snapshot: watch::Receiver<Snapshot>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready = false;
    let mut last = String::new();
    let mut failing = false;
    // At most four pings per period: the snapshot changes at every check.
    let ping_every = notifier.watchdog.map(|w| w / 4);
    let mut last_ping: Option<Instant> = None;
    loop {
        let message = {
            let s = snapshot.borrow_and_update();
            let line = summary(&s, SystemTime::now());
            if !ready && is_ready(&s) {
                ready = true;
                last = line.clone();
                Some(format!("READY=1\nSTATUS={line}"))
            } else if ready && line != last {
                last = line.clone();
                Some(format!("STATUS={line}"))
            } else {
                None
            }
        };
        if let Some(m) = message {
            send(&notifier, &m, &mut failing);
        }
        if let Some(every) = ping_every
            && last_ping.is_none_or(|t| t.elapsed() >= every)
        {
            last_ping = Some(Instant::now());
            send(&notifier, "WATCHDOG=1", &mut failing);
        }
        tokio::select! {
            changed = snapshot.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    send(&notifier, "STOPPING=1\nSTATUS=stopping", &mut failing);
}

/// A socket that stopped working is logged when it starts failing and when it works
/// again, not at every status change.
fn send(notifier: &Notifier, message: &str, failing: &mut bool) {
    match notifier.send(message) {
        Ok(()) => {
            if std::mem::take(failing) {
                info!("telling systemd ({}) works again", notifier.name());
            }
            debug!("told systemd: {message:?}");
        }
        Err(e) if !*failing => {
            *failing = true;
            warn!(
                "cannot tell systemd ({}) {:?}: {e}",
                notifier.name(),
                message.lines().next().unwrap_or("")
            );
        }
        Err(e) => debug!("still cannot tell systemd: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn path_and_abstract_sockets_receive_the_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.send("READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");

        let name = format!("rebouncer-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.send("STOPPING=1").unwrap();
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_period_is_ours_only_when_the_pid_matches() {
        let s = Some(Duration::from_secs(90));
        assert_eq!(watchdog_from(Some("90000000"), None, 7), s);
        assert_eq!(watchdog_from(Some("90000000"), Some("7"), 7), s);
        assert_eq!(watchdog_from(Some("90000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_while_the_snapshot_changes_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.watchdog = Some(Duration::from_secs(8));
        let names = vec!["pg1".to_string()];
        let (tx, rx) = watch::channel(Snapshot::new(&names, Duration::from_secs(1), "x".into()));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(n, rx, stop_rx));
        let pings = || {
            let mut buf = [0u8; 1024];
            let mut count = 0;
            while let Ok(len) = listener.recv(&mut buf) {
                count += usize::from(&buf[..len] == b"WATCHDOG=1");
            }
            count
        };
        // A live loop changes the snapshot at every check: pings every 2 s (period / 4).
        for _ in 0..100 {
            tx.send_modify(|s| s.counters.rounds += 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let live = pings();
        assert!((5..=6).contains(&live), "{live} pings in 10 s");
        // A stuck loop: nothing changes, nothing is sent.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(pings(), 0);
    }

    #[test]
    fn a_relative_name_is_refused() {
        assert!(Notifier::new("notify.sock").is_err());
    }

    #[tokio::test]
    async fn ready_after_the_first_round_status_on_change_stopping_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        // Polled, not blocking: the task under test runs on this same thread.
        listener.set_nonblocking(true).unwrap();
        let names = vec!["pg1".to_string()];
        let (tx, rx) = watch::channel(Snapshot::new(&names, Duration::from_secs(30), "x".into()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            Notifier::new(path.to_str().unwrap()).unwrap(),
            rx,
            stop_rx,
        ));
        let recv = async || {
            let mut buf = [0u8; 1024];
            for _ in 0..500 {
                match listener.recv(&mut buf) {
                    Ok(len) => return String::from_utf8_lossy(&buf[..len]).into_owned(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            panic!("no datagram within 5 s");
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_modify(|s| {
            s.nodes[0].state = Some(crate::decide::NodeState::Master);
            s.nodes[0].last_check = Some(SystemTime::now());
            s.active = Some("pg1".into());
            s.confirmed = true;
            s.counters.rounds = 1;
            s.decide(None);
        });
        assert_eq!(
            recv().await,
            "READY=1\nSTATUS=OK: 1 master (pg1, PgBouncer points at it), 0 standbys"
        );
        // The same summary again: nothing sent. Then a change.
        tx.send_modify(|s| s.counters.rounds = 2);
        tx.send_modify(|s| {
            s.nodes[0].state = Some(crate::decide::NodeState::Down);
            s.decide(None);
        });
        assert!(recv().await.starts_with("STATUS=CRITICAL: no master"));
        stop.send(true).unwrap();
        assert_eq!(recv().await, "STOPPING=1\nSTATUS=stopping");
        task.await.unwrap();
    }
}
