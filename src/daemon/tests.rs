//! The loop over time, on a fake cluster and a fake PgBouncer, on tokio's paused clock:
//! every rule of the loop (rounds, back-off, re-checks, drift, the state file at start)
//! is exercised here without a process; the integration tests cover the real I/O.

use std::sync::{Arc, Mutex};

use tokio::time::sleep;

use super::*;
use crate::conninfo::Env;
use crate::fake_bouncer::FakeBouncer;
use crate::state::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Is {
    Master(u32),
    Standby(u32),
    /// Refuses connections at once.
    Down,
    /// Accepts, never answers.
    Hung,
}

#[derive(Debug)]
struct Server {
    is: Is,
    /// New connections are refused (pg_hba.conf, too many clients), kept ones live on.
    refuses_new: bool,
    /// Connection attempts (a fork and a log line each on a real server).
    attempts: usize,
    /// Bumped to close kept sessions (a restart).
    generation: u64,
    /// Probes alive for it (monitors running).
    probes: usize,
}

type Shared = Arc<Mutex<Server>>;

struct FakeProbe {
    server: Shared,
    connected: Option<u64>,
    timeout: Duration,
}

impl FakeProbe {
    fn answer(is: Is) -> Observation {
        let on = |t| {
            Some(Timeline {
                timeline: t,
                system: Some(42),
            })
        };
        match is {
            Is::Master(t) => Observation::up(NodeState::Master, on(t)),
            Is::Standby(t) => Observation::up(NodeState::Standby, on(t)),
            Is::Down | Is::Hung => unreachable!(),
        }
    }
    async fn connect(&mut self) -> Result<Is, Observation> {
        let (is, refused) = {
            let mut s = self.server.lock().unwrap();
            s.attempts += 1;
            (s.is, s.refuses_new)
        };
        match is {
            Is::Hung => {
                sleep(self.timeout).await;
                Err(Observation::hung("no answer (timeout)".into()))
            }
            Is::Down => Err(Observation::down("connection refused".into())),
            _ if refused => Err(Observation::down("pg_hba.conf rejects connection".into())),
            is => Ok(is),
        }
    }
}

impl Drop for FakeProbe {
    fn drop(&mut self) {
        self.server.lock().unwrap().probes -= 1;
    }
}

impl Probe for FakeProbe {
    async fn check(&mut self) -> Observation {
        let (is, generation) = {
            let s = self.server.lock().unwrap();
            (s.is, s.generation)
        };
        if self.connected == Some(generation) {
            match is {
                Is::Hung => {
                    sleep(self.timeout).await;
                    self.connected = None;
                    return Observation::hung("no answer (timeout)".into());
                }
                Is::Down => self.connected = None,
                is => return FakeProbe::answer(is),
            }
        }
        match self.connect().await {
            Ok(is) => {
                self.connected = Some(generation);
                FakeProbe::answer(is)
            }
            Err(obs) => {
                self.connected = None;
                obs
            }
        }
    }
    async fn check_fresh(&mut self) -> Observation {
        match self.connect().await {
            Ok(is) => FakeProbe::answer(is),
            Err(obs) => obs,
        }
    }
    fn keeps_connections(&self) -> bool {
        true
    }
}

struct World {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    servers: Vec<Shared>,
    /// Every fake server by name, as the probe factory finds them (a reload may add
    /// one: [`World::add_server`]).
    cluster: Arc<Mutex<Vec<(String, Shared)>>>,
    /// The names probes were made for, in order (one per monitor started).
    made: Arc<Mutex<Vec<String>>>,
    bouncer: FakeBouncer,
    status: watch::Receiver<Snapshot>,
    stop: watch::Sender<bool>,
    reloads: mpsc::UnboundedSender<Reload>,
    task: tokio::task::JoinHandle<()>,
}

const PORT: u16 = 5430;

/// A cluster of servers in the given states, a PgBouncer whose symlink points at
/// `linked`'s file, and the daemon running with `interval` 2 s and `timeout` 2 s.
async fn world(start: &[Is], linked: usize, state: State) -> World {
    world_with(start, linked, state, "").await
}

fn new_server(is: Is) -> Shared {
    Arc::new(Mutex::new(Server {
        is,
        refuses_new: false,
        attempts: 0,
        generation: 0,
        probes: 0,
    }))
}

/// `pg<i>`'s node file and its line in `[servers]`.
fn node_file_and_line(root: &std::path::Path, i: usize) -> String {
    std::fs::write(
        root.join(format!("nodes/pg{i}.ini")),
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={} dbname=appdb\n[pgbouncer]\nlisten_port = 6432\n",
            PORT + i as u16
        ),
    )
    .unwrap();
    format!(
        "pg{i}=host=127.0.0.1 port={} dbname=postgres user=postgres sslmode=disable\n",
        PORT + i as u16
    )
}

/// The text of rebouncer.ini with these `[global]` lines and `[servers]` lines.
fn ini_text(root: &std::path::Path, global: &str, servers_ini: &str) -> String {
    format!(
        "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer sslmode=disable\n\
         symlink={0}/pgbouncer.ini\nconfigdir={0}/nodes\ninterval=2\ntimeout=2\nstate_file={0}/rebouncer.state\n{global}\
         [servers]\n{servers_ini}",
        root.display()
    )
}

fn test_env() -> Env {
    Env {
        os_user: Some("postgres".into()),
        ..Env::default()
    }
}

/// [`world`] with more `[global]` lines.
async fn world_with(start: &[Is], linked: usize, state: State, global: &str) -> World {
    world_running(start, linked, state, global, "pgbouncer.ini").await
}

/// [`world_with`], PgBouncer started with `file` as its config file: another link to
/// `linked`'s node file than rebouncer's symlink, unless it is `pgbouncer.ini`.
async fn world_running(
    start: &[Is],
    linked: usize,
    state: State,
    global: &str,
    bouncer_file: &str,
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("nodes")).unwrap();
    let mut servers_ini = String::new();
    for i in 1..=start.len() {
        servers_ini += &node_file_and_line(&root, i);
    }
    std::os::unix::fs::symlink(
        root.join(format!("nodes/pg{linked}.ini")),
        root.join("pgbouncer.ini"),
    )
    .unwrap();
    std::fs::write(
        root.join("rebouncer.ini"),
        ini_text(&root, global, &servers_ini),
    )
    .unwrap();
    let cfg = config::load(&root.join("rebouncer.ini"), &root, &test_env()).unwrap();
    let mut file = StateFile::load(&cfg.state_file).unwrap();
    file.update(|s| *s = state).await.unwrap();

    if bouncer_file != "pgbouncer.ini" {
        std::os::unix::fs::symlink(
            root.join(format!("nodes/pg{linked}.ini")),
            root.join(bouncer_file),
        )
        .unwrap();
    }
    let bouncer = FakeBouncer::new(root.join(bouncer_file));
    let servers: Vec<Shared> = start.iter().map(|is| new_server(*is)).collect();
    let cluster = Arc::new(Mutex::new(
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("pg{}", i + 1), s.clone()))
            .collect::<Vec<_>>(),
    ));
    let made = Arc::new(Mutex::new(Vec::new()));
    let probes = {
        let cluster = cluster.clone();
        let made = made.clone();
        move |_key: MonitorKey, server: &config::Server, cfg: &Config| {
            let shared = cluster
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| *n == server.name)
                .map(|(_, s)| s.clone())
                .expect("a fake server for every configured one");
            shared.lock().unwrap().probes += 1;
            made.lock().unwrap().push(server.name.clone());
            FakeProbe {
                server: shared,
                connected: None,
                timeout: cfg.timeout,
            }
        }
    };
    let names: Vec<String> = cfg.servers.iter().map(|s| s.name.clone()).collect();
    let (status_tx, status) = watch::channel(Snapshot::new(&names, cfg.interval, "fake".into()));
    let (stop, stop_rx) = watch::channel(false);
    let (_lost_tx, lost) = mpsc::unbounded_channel();
    let (reloads, reload_rx) = mpsc::unbounded_channel();
    let daemon = Daemon::with_parts(cfg, bouncer.clone(), probes, lost, file, status_tx, stop_rx)
        .reloads(reload_rx);
    let task = tokio::spawn(async move {
        let _keep = _lost_tx;
        daemon.run().await
    });
    World {
        _dir: dir,
        root,
        servers,
        cluster,
        made,
        bouncer,
        status,
        stop,
        reloads,
        task,
    }
}

impl World {
    fn set(&self, node: usize, is: Is) {
        let mut s = self.servers[node - 1].lock().unwrap();
        if matches!(is, Is::Down) || matches!(s.is, Is::Down) {
            s.generation += 1;
        }
        s.is = is;
    }
    fn refuse_new(&self, node: usize, on: bool) {
        self.servers[node - 1].lock().unwrap().refuses_new = on;
    }
    fn attempts(&self, node: usize) -> usize {
        self.servers[node - 1].lock().unwrap().attempts
    }
    /// The node PgBouncer routes `appdb` to.
    fn routed(&self) -> Option<usize> {
        let port = self.bouncer.databases().first()?.route.port;
        Some((port - PORT) as usize)
    }
    fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }
    fn nagios(&self) -> String {
        crate::pages::nagios::render(&self.snapshot(), SystemTime::now())
    }
    /// Advance the paused clock in steps of 50 ms, checking `ok` at every step.
    async fn during(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            sleep(Duration::from_millis(50)).await;
            assert!(
                ok(self),
                "{what}, at {:?}: {}",
                end - Instant::now(),
                self.nagios()
            );
        }
    }
    async fn until(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
        let end = Instant::now() + d;
        while !ok(self) {
            assert!(
                Instant::now() < end,
                "{what} not within {d:?}: {}",
                self.nagios()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
    /// A new fake server `pg<i>` with its node file; its line for `[servers]`.
    fn add_server(&self, i: usize, is: Is) -> String {
        self.cluster
            .lock()
            .unwrap()
            .push((format!("pg{i}"), new_server(is)));
        node_file_and_line(&self.root, i)
    }
    /// The `[servers]` lines of these existing servers (node files rewritten as made).
    fn lines(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|i| node_file_and_line(&self.root, *i))
            .collect()
    }
    fn server(&self, name: &str) -> Shared {
        let c = self.cluster.lock().unwrap();
        c.iter().find(|(n, _)| n == name).unwrap().1.clone()
    }
    /// Monitors running for the server.
    fn probes(&self, name: &str) -> usize {
        self.server(name).lock().unwrap().probes
    }
    /// Monitors ever started for the server.
    fn made(&self, name: &str) -> usize {
        self.made
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
    fn names(&self) -> Vec<String> {
        self.snapshot()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }
    /// Write rebouncer.ini, load it as SIGHUP does, hand it to the daemon and wait
    /// until it is applied or refused.
    async fn reload_text(&self, text: &str) {
        std::fs::write(self.root.join("rebouncer.ini"), text).unwrap();
        let config = config::load(&self.root.join("rebouncer.ini"), &self.root, &test_env());
        let (done, applied) = oneshot::channel();
        self.reloads
            .send(Reload {
                config,
                done: Some(done),
            })
            .unwrap_or_else(|_| panic!("daemon gone"));
        applied.await.unwrap();
    }
    async fn reload(&self, global: &str, servers_ini: &str) {
        self.reload_text(&ini_text(&self.root, global, servers_ini))
            .await;
    }
}

use Is::{Down, Hung, Master, Standby};
const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn a_promotion_is_followed_within_a_fast_round() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 2, State::default()).await;
    w.until(S(1), |w| w.routed() == Some(1), "initial switch to pg1")
        .await;
    w.until(S(1), |w| w.nagios().starts_with("OK"), "settled")
        .await;
    w.set(1, Down);
    sleep(S(1)).await;
    w.set(2, Master(2));
    let promoted = Instant::now();
    w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    // Rounds come every `interval` (2 s) while settled, then fast once pg1 is gone.
    assert!(promoted.elapsed() <= S(2) + Duration::from_millis(200));
    assert_eq!(
        w.bouncer.paused(),
        Vec::<String>::new(),
        "KILL was followed by RESUME"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failover_is_counted_and_kept_in_the_event_history() {
    let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
        .await;
    let s = w.snapshot();
    let reason = |r: SwitchReason| {
        let i = SwitchReason::ALL.iter().position(|x| *x == r).unwrap();
        s.counters.switches[i]
    };
    assert_eq!(
        reason(SwitchReason::Failover),
        2,
        "pg2 at start, then pg1... {:?}",
        s.counters
    );
    assert!(s.counters.rounds >= 2);
    assert!(s.counters.last_switch.is_some());
    assert!(s.nodes[0].counters.failures >= 1);
    assert!(s.nodes[1].counters.last_success.is_some());
    let kinds: Vec<(Kind, Option<&str>)> = s
        .events
        .iter()
        .map(|e| (e.kind, e.node.as_deref()))
        .collect();
    let at = |k: (Kind, Option<&str>)| kinds.iter().position(|x| *x == k);
    let down = at((Kind::State, Some("pg1"))).unwrap();
    let switched = kinds
        .iter()
        .rposition(|x| *x == (Kind::Switch, Some("pg2")))
        .unwrap();
    assert!(down < switched, "{kinds:?}");
    let text = &s.events.iter().nth(switched).unwrap().text;
    assert!(
        text.starts_with("PgBouncer now points at pg2 (failover from pg1)"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_primary_is_never_switched_to_while_the_new_primary_hangs() {
    // The old primary returns, then the new one hangs: pg1 fails over to pg2; pg1 comes
    // back unchanged (timeline 1); then pg2 hangs for 15 s.
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.set(1, Down);
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
        .await;
    w.set(1, Master(1));
    w.until(
        S(4),
        |w| !w.snapshot().stale().is_empty(),
        "pg1 seen as stale",
    )
    .await;
    assert!(
        w.nagios()
            .starts_with("CRITICAL: stale primary pg1 (timeline 1, the cluster is on 2)"),
        "{}",
        w.nagios()
    );
    w.set(2, Hung);
    w.during(
        S(15),
        |w| w.routed() == Some(2),
        "PgBouncer must stay off the stale pg1",
    )
    .await;
    assert!(w.nagios().contains("stale primary pg1"), "{}", w.nagios());
    w.set(2, Master(2));
    w.during(S(5), |w| w.routed() == Some(2), "and after pg2 recovers")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_returning_stale_primary_never_shows_as_a_split_brain() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.set(1, Down);
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
        .await;
    // Every version of the view published from here on, as a page reader sees it.
    let mut rx = w.status.clone();
    rx.borrow_and_update();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let log = shown.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let view = rx.borrow_and_update().clone();
            let metrics = crate::pages::metrics::render(&view);
            let split = metrics
                .lines()
                .find_map(|l| l.strip_prefix("rebouncer_split_brain "))
                .map(str::to_string);
            // Every server shown as master is in the verdict: the master, a master
            // of the split brain or a stale primary.
            let in_verdict: Vec<&str> = view
                .master()
                .into_iter()
                .chain(view.split_brain())
                .chain(view.stale().iter().map(|s| s.name))
                .collect();
            let unjudged: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| n.state == Some(NodeState::Master))
                .filter(|n| !in_verdict.contains(&n.name.as_str()))
                .map(|n| n.name.clone())
                .collect();
            log.lock().unwrap().push((
                crate::pages::nagios::render(&view, SystemTime::now()),
                split,
                unjudged,
            ));
        }
    });
    // pg3 hangs as pg1 comes back: the round that finds pg1 waits for pg3 until its
    // deadline, long after pg1's answer came in.
    w.set(3, Hung);
    w.set(1, Master(1));
    w.until(
        S(6),
        |w| !w.snapshot().stale().is_empty(),
        "pg1 seen as stale",
    )
    .await;
    w.during(S(3), |_| true, "a few more rounds").await;
    watcher.abort();
    let shown = shown.lock().unwrap().clone();
    assert!(
        shown
            .iter()
            .any(|(n, _, _)| n.starts_with("CRITICAL: stale primary pg1")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .all(|(n, split, unjudged)| !n.contains("split brain")
                && split.as_deref() == Some("0")
                && unjudged.is_empty()),
        "{shown:#?}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_remembered_timeline_protects_after_a_restart() {
    // The daemon restarts while pg2 (timeline 2) is down and the old pg1 is back:
    // only the state file knows that pg1 is behind.
    let mut state = State::default();
    state.raise(Some(42), 2);
    let w = world(&[Master(1), Down, Standby(1)], 2, state).await;
    w.during(
        S(10),
        |w| w.routed() == Some(2),
        "no switch to the stale pg1",
    )
    .await;
    assert_eq!(w.snapshot().stale().len(), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_split_brain_master_refusing_new_logins_does_not_make_the_other_a_target() {
    // A split brain without timelines to help: both masters on timeline 2; pg2, the
    // true primary PgBouncer is on, refuses new logins. Nothing may move.
    let w = world(&[Standby(2), Master(2), Standby(2)], 2, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(2), "pg2").await;
    w.set(1, Master(2));
    w.until(
        S(3),
        |w| w.nagios().starts_with("CRITICAL: split brain"),
        "split brain",
    )
    .await;
    w.refuse_new(2, true);
    w.during(
        S(20),
        |w| w.routed() == Some(2),
        "PgBouncer must stay on pg2",
    )
    .await;
    // pg2 then stops answering altogether: pg1 alone is still not evidence.
    w.set(2, Down);
    w.during(S(10), |w| w.routed() == Some(2), "still on pg2")
        .await;
    assert!(
        w.nagios().contains("split brain not resolved"),
        "{}",
        w.nagios()
    );
    // pg2 comes back as a standby (demoted): now pg1 is the primary.
    w.refuse_new(2, false);
    w.set(2, Standby(2));
    w.until(S(3), |w| w.routed() == Some(1), "pg1 once pg2 is demoted")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusing_server_is_asked_less_and_less_often() {
    // No master for 20 s and a standby whose pg_hba.conf rejects the
    // monitoring login. Fast rounds (0.1 s) would try it 200 times.
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(2), |w| w.routed() == Some(1), "pg1").await;
    w.set(1, Down);
    w.set(2, Standby(1));
    w.refuse_new(2, true);
    w.set(2, Down); // closes the kept session; Down now, refusing afterwards
    w.set(2, Standby(1));
    let before = w.attempts(2);
    sleep(S(20)).await;
    let attempts = w.attempts(2) - before;
    // 0.1, 0.2, 0.4, 0.8, 1.6, then every 2 s (interval): about 14 in 20 s.
    assert!((8..=20).contains(&attempts), "{attempts} attempts in 20 s");
    // Something else changes (a promotion elsewhere would): it is asked at once again.
    w.refuse_new(2, false);
    w.set(1, Standby(1));
    w.until(
        S(3),
        |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
        "pg2 re-checked",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_symlink_changed_by_hand_is_switched_back() {
    // PgBouncer moved to a standby by hand (the link changed and a RELOAD sent).
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    crate::switch::replace_symlink(&w.root.join("pgbouncer.ini"), &w.root.join("nodes/pg2.ini"))
        .unwrap();
    w.bouncer
        .session()
        .await
        .unwrap()
        .command("RELOAD")
        .await
        .unwrap();
    assert_eq!(w.routed(), Some(2));
    w.until(S(3), |w| w.routed() == Some(1), "back on pg1")
        .await;
    w.until(S(1), |w| w.snapshot().drift.is_none(), "drift cleared")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn routes_changed_behind_the_symlink_are_found_after_a_pgbouncer_restart() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    sleep(S(1)).await;
    // PgBouncer restarts on pg2's config (started by hand with another file, say);
    // the symlink itself still points at pg1's.
    let link = w.root.join("pgbouncer.ini");
    crate::switch::replace_symlink(&link, &w.root.join("nodes/pg2.ini")).unwrap();
    w.bouncer.restart();
    crate::switch::replace_symlink(&link, &w.root.join("nodes/pg1.ini")).unwrap();
    assert_eq!(w.routed(), Some(2));
    // Found at the next round (every 2 s here) because the admin session closed, not
    // only at the periodic comparison (every 3 rounds), and switched back.
    w.until(
        Duration::from_millis(2500),
        |w| w.routed() == Some(1),
        "back on pg1 after the restart",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn databases_a_killed_rebouncer_left_paused_are_resumed_at_start_and_no_others() {
    let state = State {
        resume_pending: vec!["appdb".into()],
        ..State::default()
    };
    let w = world(&[Master(1), Standby(1)], 1, state).await;
    // What a SIGKILL between KILL and RESUME leaves behind.
    w.bouncer.pause_by_hand("appdb");
    w.until(S(2), |w| w.bouncer.paused().is_empty(), "appdb resumed")
        .await;
    let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
    assert!(file.state().resume_pending.is_empty(), "{:?}", file.state());
    // An operator's own pause is left alone, and shown.
    w.bouncer.pause_by_hand("appdb");
    w.until(S(10), |w| !w.snapshot().paused.is_empty(), "pause shown")
        .await;
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused in PgBouncer (not by rebouncer"),
        "{}",
        w.nagios()
    );
    sleep(S(10)).await;
    assert_eq!(w.bouncer.paused(), vec!["appdb".to_string()]);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn databases_a_killed_rebouncer_moved_but_did_not_kill_are_killed_at_start() {
    // What a SIGKILL between a switch's RELOAD and its KILL leaves behind: PgBouncer
    // already routes to the new master, but session clients may still be on the old
    // server. The next rebouncer KILLs (and RESUMEs) them once, and only them.
    let state = State {
        resume_pending: vec!["appdb".into()],
        kill_pending: vec!["appdb".into()],
        ..State::default()
    };
    let w = world(&[Master(1), Standby(1)], 1, state).await;
    w.until(
        S(2),
        |w| w.bouncer.count("KILL appdb") == 1 && w.bouncer.paused().is_empty(),
        "appdb killed and resumed at start",
    )
    .await;
    let log = w.bouncer.log();
    let k = log.iter().position(|c| c == "KILL appdb").unwrap();
    assert_eq!(log[k + 1], "RESUME appdb", "{log:?}");
    let file = StateFile::load(&w.root.join("rebouncer.state")).unwrap();
    assert!(file.state().kill_pending.is_empty(), "{:?}", file.state());
    assert!(file.state().resume_pending.is_empty(), "{:?}", file.state());
    sleep(S(10)).await;
    assert_eq!(w.bouncer.count("KILL"), 1, "{:?}", w.bouncer.log());
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kill_that_fails_is_shown_kept_on_disk_and_retried_until_it_works() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.bouncer.fail("KILL", Some("permission denied"));
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "switched to pg2")
        .await;
    w.until(
        S(3),
        |w| {
            w.nagios()
                .starts_with("WARNING: database(s) appdb moved to pg2, KILL pending")
        },
        "the failed KILL on /nagios",
    )
    .await;
    let file = || {
        StateFile::load(&w.root.join("rebouncer.state"))
            .unwrap()
            .state()
            .clone()
    };
    assert_eq!(
        file().kill_pending,
        ["appdb"],
        "a restarted rebouncer would KILL it"
    );
    let tries = w.bouncer.count("KILL");
    sleep(S(5)).await;
    assert!(w.bouncer.count("KILL") > tries, "retried every round");
    w.bouncer.fail("KILL", None);
    w.until(
        S(5),
        |w| !w.nagios().contains("KILL pending"),
        "the KILL through, /nagios back to the cluster's state",
    )
    .await;
    assert!(file().kill_pending.is_empty(), "{:?}", file());
    assert!(w.bouncer.paused().is_empty());
    w.stop().await;
}

const PAUSING: &str = "pause_on_failover=on\npause_timeout=10\n";

#[tokio::test(start_paused = true)]
async fn a_kill_still_failing_does_not_end_a_pause() {
    let w = world_with(
        &[Master(1), Standby(1), Standby(1)],
        1,
        State::default(),
        PAUSING,
    )
    .await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.bouncer.fail("KILL", Some("permission denied"));
    w.set(1, Down);
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(
        S(3),
        |w| w.routed() == Some(2) && w.nagios().contains("KILL pending"),
        "switched to pg2 with its KILL pending",
    )
    .await;
    // pg2 is lost in turn: clients are held, and the failing KILL's retry must not
    // RESUME them.
    w.set(2, Down);
    w.until(S(3), |w| w.bouncer.paused() == ["appdb"], "appdb paused")
        .await;
    w.during(
        S(4),
        |w| w.bouncer.paused() == ["appdb"],
        "held while there is no master",
    )
    .await;
    w.bouncer.fail("KILL", None);
    w.set(3, Master(3));
    w.until(
        S(3),
        |w| w.routed() == Some(3) && w.bouncer.paused().is_empty(),
        "switched to pg3 and resumed",
    )
    .await;
    w.until(
        S(5),
        |w| !w.nagios().contains("KILL pending"),
        "the old KILL through once the pause is over",
    )
    .await;
    w.stop().await;
}

fn held_in_file(w: &World) -> Vec<String> {
    StateFile::load(&w.root.join("rebouncer.state"))
        .unwrap()
        .state()
        .resume_pending
        .clone()
}

fn last_hold_outcome(w: &World) -> Option<String> {
    w.snapshot()
        .failover_pause
        .and_then(|h| h.ended)
        .map(|end| end.outcome)
}

/// Settled on pg1 with pausing on, then pg1 goes down: PgBouncer is paused.
async fn paused_after_pg1_is_lost(w: &World) {
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.bouncer.watch_file(w.root.join("rebouncer.state"));
    w.set(1, Down);
    w.until(
        S(2),
        |w| w.bouncer.paused() == ["appdb"],
        "appdb paused once pg1 is down",
    )
    .await;
    assert_eq!(held_in_file(w), ["appdb"], "recorded before PAUSE");
    assert_eq!(
        w.bouncer
            .file_at("PAUSE")
            .as_deref()
            .map(|f| f.contains("held appdb")),
        Some(true),
        "the state file listed appdb when PAUSE arrived"
    );
}

#[tokio::test(start_paused = true)]
async fn clients_are_held_while_there_is_no_master_and_released_by_the_switch() {
    let w = world_with(
        &[Master(1), Standby(1), Standby(1)],
        1,
        State::default(),
        PAUSING,
    )
    .await;
    paused_after_pg1_is_lost(&w).await;
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused by rebouncer for 0 s"),
        "{}",
        w.nagios()
    );
    // The HA manager takes 3 s to promote: clients keep waiting, nothing moves.
    w.during(
        S(3),
        |w| w.bouncer.paused() == ["appdb"] && w.routed() == Some(1),
        "held on pg1's config while there is no master",
    )
    .await;
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(
        S(1),
        |w| w.routed() == Some(2) && w.bouncer.paused().is_empty(),
        "switched to pg2 and resumed",
    )
    .await;
    // The waiting clients are what the pause was for: KILL would drop them.
    assert_eq!(w.bouncer.count("KILL"), 0, "{:?}", w.bouncer.log());
    assert!(held_in_file(&w).is_empty());
    assert_eq!(last_hold_outcome(&w).as_deref(), Some("switched to pg2"));
    assert!(
        w.nagios()
            .starts_with("WARNING: 1 server down (pg1); 1 master (pg2)"),
        "{}",
        w.nagios()
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_shortens_pause_timeout_applies_to_the_pause_under_way() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    w.reload("pause_on_failover=on\npause_timeout=3\n", &w.lines(&[1, 2]))
        .await;
    w.until(
        S(4),
        |w| w.bouncer.paused().is_empty(),
        "released at the new pause_timeout, not the old 10 s",
    )
    .await;
    assert!(
        last_hold_outcome(&w).is_some_and(|o| o.contains("pause_timeout (3 s)")),
        "{:?}",
        last_hold_outcome(&w)
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_master_within_pause_timeout_clients_are_released_to_their_errors() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    let paused = Instant::now();
    w.until(S(11), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    let held = paused.elapsed();
    assert!(
        held >= Duration::from_millis(9800) && held <= Duration::from_millis(10300),
        "held {held:?}"
    );
    assert_eq!(w.routed(), Some(1));
    assert!(held_in_file(&w).is_empty());
    assert!(
        last_hold_outcome(&w)
            .is_some_and(|o| o.contains("no master appeared within pause_timeout (10 s)")),
        "{:?}",
        w.snapshot().failover_pause
    );
    assert!(
        w.nagios().starts_with("CRITICAL: no master"),
        "{}",
        w.nagios()
    );
    // The same loss is not paused for again.
    w.during(S(5), |w| w.bouncer.paused().is_empty(), "no second pause")
        .await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    // A promotion later is still followed.
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_split_brain_while_paused_releases_the_clients_without_a_switch() {
    let w = world_with(
        &[Master(1), Standby(1), Standby(1)],
        1,
        State::default(),
        PAUSING,
    )
    .await;
    paused_after_pg1_is_lost(&w).await;
    w.set(2, Master(2));
    w.set(3, Master(2));
    w.until(S(1), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert_eq!(w.routed(), Some(1));
    assert!(
        last_hold_outcome(&w).is_some_and(|o| o.contains("split brain (pg2, pg3)")),
        "{:?}",
        w.snapshot().failover_pause
    );
    w.during(S(5), |w| w.routed() == Some(1), "no switch in split brain")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_a_stale_primary_while_paused_releases_the_clients_without_a_switch() {
    let mut state = State::default();
    state.raise(Some(42), 2);
    let w = world_with(&[Master(2), Standby(2), Standby(2)], 1, state, PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    // An old primary, restored from a backup on timeline 1, starts as a master.
    w.set(3, Master(1));
    w.until(S(2), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert_eq!(w.routed(), Some(1));
    assert!(
        last_hold_outcome(&w).is_some_and(|o| o.contains("only a stale primary (pg3)")),
        "{:?}",
        w.snapshot().failover_pause
    );
    w.during(S(5), |w| w.routed() == Some(1), "never to the stale pg3")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_master_that_comes_back_ends_the_pause_without_a_switch() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    w.set(1, Master(1));
    w.until(S(1), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert_eq!(w.routed(), Some(1));
    assert!(
        last_hold_outcome(&w).is_some_and(|o| o.contains("pg1 answers as master again")),
        "{:?}",
        w.snapshot().failover_pause
    );
    // A second loss pauses again.
    w.set(1, Down);
    w.until(S(2), |w| w.bouncer.paused() == ["appdb"], "paused again")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_hangs_is_given_up_and_resumed() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    // A real PAUSE waits for running transactions; this one never completes.
    w.bouncer.hang("PAUSE", true);
    w.set(1, Down);
    w.until(S(2), |w| w.bouncer.count("PAUSE") == 1, "PAUSE sent")
        .await;
    let sent = Instant::now();
    w.until(S(3), |w| w.bouncer.paused().is_empty(), "resumed")
        .await;
    assert!(
        sent.elapsed() <= Duration::from_millis(2100),
        "{:?}",
        sent.elapsed()
    );
    assert!(held_in_file(&w).is_empty());
    // Going on without a pause: the promotion is followed as before.
    w.bouncer.hang("PAUSE", false);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutting_down_while_paused_resumes_first() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    let bouncer = w.bouncer.clone();
    let root = w.root.clone();
    let dir = w.root.clone();
    w.stop().await;
    assert!(bouncer.paused().is_empty(), "{:?}", bouncer.log());
    let file = StateFile::load(&root.join("rebouncer.state")).unwrap();
    assert!(
        file.state().resume_pending.is_empty(),
        "{:?} in {}",
        file.state(),
        dir.display()
    );
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_fails_at_the_end_of_a_pause_is_retried_every_round() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    // The admin console breaks just as the hold ends.
    w.bouncer.fail_after("RESUME", "connection closed", 0, 4);
    w.set(1, Master(1));
    w.until(
        S(5),
        |w| w.bouncer.paused().is_empty(),
        "resumed in the end",
    )
    .await;
    assert!(held_in_file(&w).is_empty());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn clients_still_held_after_pause_timeout_because_resume_fails_are_critical() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    paused_after_pg1_is_lost(&w).await;
    w.bouncer.fail("RESUME", Some("connection closed"));
    w.set(2, Master(2));
    w.until(S(2), |w| w.routed() == Some(2), "switched to pg2")
        .await;
    assert_eq!(w.bouncer.paused(), ["appdb"]);
    assert!(
        w.nagios()
            .starts_with("WARNING: database(s) appdb paused by rebouncer"),
        "{}",
        w.nagios()
    );
    // The status pages run on the wall clock, which the paused test clock does not move.
    let later = crate::pages::nagios::render(&w.snapshot(), SystemTime::now() + S(11));
    assert!(
        later.starts_with("CRITICAL: database(s) appdb paused by rebouncer for 11 s"),
        "{later}"
    );
    w.bouncer.fail("RESUME", None);
    w.until(
        S(3),
        |w| w.bouncer.paused().is_empty(),
        "resumed in the end",
    )
    .await;
    w.until(
        S(1),
        |w| !w.nagios().contains("paused by rebouncer"),
        "no longer shown as paused",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_pause_without_a_record_of_it_in_the_state_file() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    // The state file cannot be replaced any more (here: a directory took its name).
    let file = w.root.join("rebouncer.state");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    w.set(1, Down);
    sleep(S(3)).await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2 as without pausing")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_pausing_off_nothing_is_ever_paused() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
    w.set(1, Down);
    sleep(S(5)).await;
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2").await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_that_cannot_be_written_is_a_warning_not_a_stop() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled")
        .await;
    // A directory now stands where the file was: the next timeline change cannot be
    // written, and rebouncer goes on with it in memory.
    let path = w.root.join("rebouncer.state");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("x"), "").unwrap();
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(
        S(4),
        |w| w.routed() == Some(2),
        "failover followed all the same",
    )
    .await;
    w.until(
        S(1),
        |w| w.snapshot().state_error.is_some(),
        "write error shown",
    )
    .await;
    let root = crate::pages::text::root(&w.snapshot(), SystemTime::now());
    assert!(
        root.contains("State file: cannot write state file"),
        "{root}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_that_could_not_be_written_is_written_once_it_can_be() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let path = w.root.join("rebouncer.state");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("x"), "").unwrap();
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
        .await;
    w.until(
        S(1),
        |w| w.snapshot().state_error.is_some(),
        "write error shown",
    )
    .await;
    w.set(1, Standby(2));
    // Nothing changes from now on; the operator fixes the file system.
    sleep(S(3)).await;
    std::fs::remove_dir_all(&path).unwrap();
    w.until(
        S(3),
        |w| w.snapshot().state_error.is_none(),
        "written at a later round",
    )
    .await;
    let on_disk = StateFile::load(&path).unwrap();
    assert_eq!(on_disk.state().timelines.highest(Some(42)), Some(2));
    w.until(S(1), |w| w.nagios().starts_with("OK"), "OK again")
        .await;
    w.stop().await;
}

/// A new master whose kept session answers while new logins are refused (pg_hba.conf,
/// max_connections) is not given PgBouncer, which could not log in either.
#[tokio::test(start_paused = true)]
async fn a_failover_target_that_refuses_new_logins_is_not_switched_to() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.refuse_new(2, true);
    w.set(1, Down);
    w.set(2, Master(2));
    w.during(S(4), |w| w.routed() == Some(1), "PgBouncer kept off pg2")
        .await;
    let nagios = w.nagios();
    assert!(nagios.contains("refuses new connections"), "{nagios}");
    w.refuse_new(2, false);
    w.until(
        S(6),
        |w| w.routed() == Some(2),
        "pg2 once it accepts logins",
    )
    .await;
    w.stop().await;
}

/// PgBouncer was started with another file than the symlink: every RELOAD re-reads
/// that file, so the switch is never confirmed. The RELOADs come less and less often,
/// up to one per `interval`, and /nagios names both files.
#[tokio::test(start_paused = true)]
async fn a_switch_pgbouncer_does_not_take_backs_off_up_to_interval() {
    let w = world_running(
        &[Master(1), Standby(1)],
        1,
        State::default(),
        "",
        "other.ini",
    )
    .await;
    settled_on_pg1(&w).await;
    w.set(1, Down);
    w.set(2, Master(2));
    let first = w.bouncer.count("RELOAD");
    let mut reloads_at = Vec::new();
    let end = Instant::now() + S(14);
    while Instant::now() < end {
        let n = w.bouncer.count("RELOAD");
        if n > first + reloads_at.len() {
            reloads_at.push(Instant::now());
        }
        sleep(Duration::from_millis(50)).await;
    }
    let gaps: Vec<Duration> = reloads_at.windows(2).map(|p| p[1] - p[0]).collect();
    let interval = S(2);
    assert!(gaps.len() >= 4, "still retried: {gaps:?}");
    assert!(gaps[0] >= pacing::SWITCH_RETRY_MIN, "{gaps:?}");
    for g in &gaps[1..] {
        assert!(*g >= interval, "backed off to interval: {gaps:?}");
        assert!(*g < interval + S(1), "not beyond interval: {gaps:?}");
    }
    assert_eq!(w.routed(), Some(1), "PgBouncer still runs other.ini");
    let nagios = w.nagios();
    let link = w.root.join("pgbouncer.ini");
    let names = w.root.join("nodes/pg2.ini");
    assert!(
        nagios.contains(&format!(
            "the symlink {} names {}",
            link.display(),
            names.display()
        )),
        "{nagios}"
    );
    assert!(nagios.contains("PgBouncer runs"), "{nagios}");
    w.stop().await;
}

/// With the state file unwritable, a pause could not be recorded: none is made, the
/// pages say pausing is off, and nothing that was never paused is "resumed".
#[tokio::test(start_paused = true)]
async fn an_unwritable_state_file_turns_pausing_off_and_says_so() {
    let w = world_with(&[Master(1), Standby(1)], 1, State::default(), PAUSING).await;
    settled_on_pg1(&w).await;
    let file = w.root.join("rebouncer.state");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    w.set(1, Down);
    sleep(S(3)).await;
    assert_eq!(w.bouncer.count("PAUSE"), 0, "{:?}", w.bouncer.log());
    assert_eq!(w.bouncer.count("RESUME"), 0, "{:?}", w.bouncer.log());
    let root = crate::pages::text::root(&w.snapshot(), SystemTime::now());
    assert!(
        root.contains("Pausing: off until the state file can be written"),
        "{root}"
    );
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "pg2 as without pausing")
        .await;
    w.set(1, Standby(2));
    w.until(
        S(3),
        |w| {
            w.nagios()
                .contains("pause_on_failover is off until the state file can be written")
        },
        "/nagios says pausing is off",
    )
    .await;
    w.stop().await;
}

// Configuration reloads (SIGHUP).

async fn settled_on_pg1(w: &World) {
    w.until(S(3), |w| w.routed() == Some(1), "pg1").await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_servers_and_keeps_the_active_node_and_other_monitors() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let reloads_before = w.bouncer.count("RELOAD");
    let switches_before = w.snapshot().counters.switches;
    let pg4 = w.add_server(4, Standby(1));
    w.reload("", &(w.lines(&[1, 2]) + &pg4)).await;
    assert_eq!(w.names(), ["pg1", "pg2", "pg4"]);
    assert_eq!(
        w.probes("pg3"),
        0,
        "pg3's monitor stopped, its connection closed"
    );
    assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "kept monitors");
    assert_eq!((w.made("pg4"), w.probes("pg4")), (1, 1));
    w.until(
        S(1),
        |w| w.snapshot().nodes[2].state == Some(NodeState::Standby),
        "pg4 checked",
    )
    .await;
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
    assert_eq!(s.counters.reloads_ok, 1);
    assert_eq!(s.counters.switches, switches_before, "no switch");
    assert_eq!(
        w.bouncer.count("RELOAD"),
        reloads_before,
        "PgBouncer untouched"
    );
    let r = s.reload.clone().unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.changes, ["server(s) pg4 added", "server(s) pg3 removed"]);
    assert!(
        s.events
            .iter()
            .any(|e| e.kind == Kind::ConfigReload && e.text.contains("pg4 added")),
    );
    assert!(
        w.nagios().starts_with("OK: 1 master (pg1"),
        "{}",
        w.nagios()
    );
    w.during(S(6), |w| w.routed() == Some(1), "stays on pg1")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_reload_that_reorders_servers_a_failover_still_goes_to_the_right_node() {
    let w = world(&[Master(1), Standby(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.reload("", &w.lines(&[3, 2, 1])).await;
    assert_eq!(w.names(), ["pg3", "pg2", "pg1"]);
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg1"), true));
    assert_eq!(w.made("pg1") + w.made("pg2") + w.made("pg3"), 3);
    w.during(S(4), |w| w.routed() == Some(1), "stays on pg1")
        .await;
    w.set(1, Down);
    w.set(3, Master(2));
    w.until(S(4), |w| w.routed() == Some(3), "failover to pg3")
        .await;
    assert_eq!(w.snapshot().active.as_deref(), Some("pg3"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_connection_string_restarts_that_monitor_only() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let changed = w.lines(&[1, 2]).replace(
        "pg2=host=127.0.0.1 port=5432 dbname=postgres",
        "pg2=host=127.0.0.1 port=5432 application_name=x dbname=postgres",
    );
    assert!(changed.contains("application_name=x"), "{changed}");
    w.reload("", &changed).await;
    assert_eq!((w.made("pg1"), w.probes("pg1")), (1, 1));
    assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1), "pg2 restarted");
    let r = w.snapshot().reload.unwrap();
    assert_eq!(
        r.changes,
        ["connection string of pg2 changed (monitor restarted)"]
    );
    w.until(
        S(1),
        |w| w.snapshot().nodes[1].state == Some(NodeState::Standby),
        "pg2 checked again",
    )
    .await;
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn removing_the_active_node_unconfirms_and_the_next_master_is_switched_to() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    w.reload("", &w.lines(&[2])).await;
    assert_eq!(w.probes("pg1"), 0);
    let s = w.snapshot();
    assert_eq!(w.names(), ["pg2"]);
    assert_eq!((s.active, s.confirmed), (None, false));
    // pg2 is a standby: no master among the configured servers, nothing switched.
    w.during(
        S(4),
        |w| w.routed() == Some(1),
        "no switch without a master",
    )
    .await;
    w.set(2, Master(2));
    w.until(S(4), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    let s = w.snapshot();
    assert_eq!((s.active.as_deref(), s.confirmed), (Some("pg2"), true));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_config_is_refused_and_the_running_one_stays() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("interval=2", "interval=soon");
    w.reload_text(&text).await;
    let s = w.snapshot();
    let r = s.reload.clone().unwrap();
    let e = r.error.unwrap();
    assert!(
        e.starts_with("config error: ") && e.contains("interval"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    assert_eq!((s.counters.reloads_ok, s.counters.reloads_failed), (0, 1));
    assert_eq!(w.names(), ["pg1", "pg2"]);
    assert_eq!(s.interval, S(2));
    assert!(s.events.iter().any(|e| e.kind == Kind::ConfigReloadFailed));
    let root = crate::pages::text::root(&s, SystemTime::now());
    assert!(root.contains("Last config reload: "), "{root}");
    assert!(root.contains("FAILED, the running configuration stays: config error"));
    let metrics = crate::pages::metrics::render(&s);
    assert!(metrics.contains("rebouncer_config_reloads_total{result=\"failed\"} 1"));
    assert!(metrics.contains("rebouncer_config_last_reload_successful 0"));
    // A server whose node file is missing: refused as at start, nothing half-applied.
    let text = ini_text(
        &w.root,
        "",
        &(w.lines(&[1, 2]) + "pg9=host=127.0.0.1 port=5439 dbname=postgres sslmode=disable\n"),
    );
    w.reload_text(&text).await;
    let s = w.snapshot();
    assert!(
        s.reload
            .unwrap()
            .error
            .unwrap()
            .contains("pg9.ini does not exist")
    );
    assert_eq!(w.names(), ["pg1", "pg2"]);
    // Still running and switching as before; /nagios warns that the file on disk is
    // broken (the next start would stop on it).
    w.during(
        S(4),
        |w| {
            w.routed() == Some(1)
                && w.nagios().starts_with("WARNING: configuration reload at ")
                && w.nagios().contains("pg9.ini does not exist")
        },
        "still running",
    )
    .await;
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(S(3), |w| w.routed() == Some(2), "a failover still followed")
        .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn settings_change_live_and_a_new_symlink_is_not_applied() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    std::fs::create_dir(w.root.join("elsewhere")).unwrap();
    let text = ini_text(&w.root, "fast_interval=0.5\n", &w.lines(&[1, 2]))
        .replace("interval=2\n", "interval=10\n")
        .replace(
            &format!("symlink={}/pgbouncer.ini", w.root.display()),
            &format!("symlink={}/elsewhere/pgbouncer.ini", w.root.display()),
        );
    w.reload_text(&text).await;
    let s = w.snapshot();
    let r = s.reload.clone().unwrap();
    assert_eq!(r.error, None);
    assert_eq!(
        r.changes,
        ["interval 2 s -> 10 s", "fast_interval 0.1 s -> 0.5 s"]
    );
    assert_eq!(r.not_applied.len(), 1, "{:?}", r.not_applied);
    assert!(r.not_applied[0].starts_with("symlink (the file says "));
    assert_eq!(s.interval, S(10));
    assert_eq!((w.made("pg1"), w.made("pg2")), (1, 1), "monitors kept");
    let root = crate::pages::text::root(&s, SystemTime::now());
    assert!(root.contains("Config reload NOT applied (needs a restart): symlink"));
    // Rounds now every 10 s: pg1's attempts grow by about one per round.
    let before = w.snapshot().counters.rounds;
    sleep(S(31)).await;
    let rounds = w.snapshot().counters.rounds - before;
    assert!((3..=4).contains(&rounds), "{rounds} rounds in 31 s");
    // The old symlink is still the one switched.
    w.set(1, Down);
    w.set(2, Master(2));
    w.until(
        S(12),
        |w| w.routed() == Some(2),
        "failover to pg2 through the kept symlink",
    )
    .await;
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_change_restarts_every_monitor_and_keeps_what_is_known() {
    let w = world(&[Master(1), Standby(1)], 1, State::default()).await;
    settled_on_pg1(&w).await;
    let text = ini_text(&w.root, "", &w.lines(&[1, 2])).replace("timeout=2\n", "timeout=3\n");
    w.reload_text(&text).await;
    assert_eq!((w.made("pg1"), w.probes("pg1")), (2, 1));
    assert_eq!((w.made("pg2"), w.probes("pg2")), (2, 1));
    // Known states stay until the new monitors answer: no "starting up" gap.
    assert!(w.nagios().starts_with("OK"), "{}", w.nagios());
    let r = w.snapshot().reload.unwrap();
    assert_eq!(
        r.changes,
        [
            "timeout 2 s -> 3 s",
            "every monitor restarted (timeout or keep_connections)"
        ]
    );
    w.during(S(5), |w| w.nagios().starts_with("OK"), "still settled")
        .await;
    assert_eq!(w.snapshot().active.as_deref(), Some("pg1"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_for_a_server_the_reload_removes_ends_at_once() {
    let w = world_with(
        &[Master(1), Standby(1), Standby(1)],
        1,
        State::default(),
        PAUSING,
    )
    .await;
    paused_after_pg1_is_lost(&w).await;
    w.reload(PAUSING, &w.lines(&[2, 3])).await;
    assert!(w.bouncer.paused().is_empty(), "resumed");
    assert!(held_in_file(&w).is_empty());
    let outcome = last_hold_outcome(&w).unwrap();
    assert!(
        outcome.contains("pg1 was removed from the configuration"),
        "{outcome}"
    );
    // No new pause (no active node known), and the next master is switched to.
    w.during(S(3), |w| w.bouncer.paused().is_empty(), "no pause again")
        .await;
    w.set(2, Master(2));
    w.set(3, Standby(2));
    w.until(S(3), |w| w.routed() == Some(2), "switch to pg2")
        .await;
    assert_eq!(w.bouncer.count("PAUSE"), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_while_pgbouncer_is_awaited_applies_before_the_first_round() {
    let w = world(&[Master(1), Standby(1)], 2, State::default()).await;
    w.bouncer.set_up(false);
    sleep(S(6)).await;
    assert!(w.nagios().starts_with("CRITICAL: waiting for PgBouncer"));
    let pg3 = w.add_server(3, Standby(1));
    w.reload("", &(w.lines(&[1, 2]) + &pg3)).await;
    assert_eq!(w.names(), ["pg1", "pg2", "pg3"]);
    assert_eq!(w.snapshot().counters.reloads_ok, 1);
    w.bouncer.set_up(true);
    w.until(
        S(7),
        |w| w.routed() == Some(1),
        "switch to pg1 once PgBouncer answers",
    )
    .await;
    w.until(
        S(3),
        |w| {
            w.nagios()
                .starts_with("OK: 1 master (pg1, PgBouncer points at it), 2 standbys")
        },
        "pg3 checked",
    )
    .await;
    w.stop().await;
}
