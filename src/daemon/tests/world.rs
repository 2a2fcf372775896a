//! The harness: a fake cluster (each server a shared state its probes read), the fake
//! PgBouncer, and the daemon running over them on the paused clock.

use std::sync::{Arc, Mutex};

use tokio::time::sleep;

use crate::conninfo::Env;
use crate::daemon::*;
use crate::fake_bouncer::FakeBouncer;
use crate::state::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Is {
    Master(u32),
    Standby(u32),
    /// Refuses connections at once.
    Down,
    /// Accepts, never answers.
    Hung,
}

#[derive(Debug)]
pub(super) struct Server {
    pub(super) is: Is,
    /// New connections are refused (pg_hba.conf, too many clients), kept ones live on.
    pub(super) refuses_new: bool,
    /// Connection attempts (a fork and a log line each on a real server).
    pub(super) attempts: usize,
    /// Bumped to close kept sessions (a restart).
    pub(super) generation: u64,
    /// Probes alive for it (monitors running).
    pub(super) probes: usize,
}

pub(super) type Shared = Arc<Mutex<Server>>;

pub(super) struct FakeProbe {
    pub(super) server: Shared,
    pub(super) connected: Option<u64>,
    pub(super) timeout: Duration,
}

impl FakeProbe {
    pub(super) fn answer(is: Is) -> Observation {
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
    pub(super) async fn connect(&mut self) -> Result<Is, Observation> {
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

pub(super) struct World {
    pub(super) _dir: tempfile::TempDir,
    pub(super) root: std::path::PathBuf,
    pub(super) servers: Vec<Shared>,
    /// Every fake server by name, as the probe factory finds them (a reload may add
    /// one: [`World::add_server`]).
    pub(super) cluster: Arc<Mutex<Vec<(String, Shared)>>>,
    /// The names probes were made for, in order (one per monitor started).
    pub(super) made: Arc<Mutex<Vec<String>>>,
    pub(super) bouncer: FakeBouncer,
    pub(super) status: watch::Receiver<Snapshot>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) reloads: mpsc::UnboundedSender<Reload>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) const PORT: u16 = 5430;

/// A cluster of servers in the given states, a PgBouncer whose symlink points at
/// `linked`'s file, and the daemon running with `interval` 2 s and `timeout` 2 s.
pub(super) async fn world(start: &[Is], linked: usize, state: State) -> World {
    world_with(start, linked, state, "").await
}

pub(super) fn new_server(is: Is) -> Shared {
    Arc::new(Mutex::new(Server {
        is,
        refuses_new: false,
        attempts: 0,
        generation: 0,
        probes: 0,
    }))
}

/// `pg<i>`'s node file and its line in `[servers]`.
pub(super) fn node_file_and_line(root: &std::path::Path, i: usize) -> String {
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
pub(super) fn ini_text(root: &std::path::Path, global: &str, servers_ini: &str) -> String {
    format!(
        "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer sslmode=disable\n\
         symlink={0}/pgbouncer.ini\nconfigdir={0}/nodes\ninterval=2\ntimeout=2\nstate_file={0}/rebouncer.state\n{global}\
         [servers]\n{servers_ini}",
        root.display()
    )
}

pub(super) fn test_env() -> Env {
    Env {
        os_user: Some("postgres".into()),
        ..Env::default()
    }
}

/// [`world`] with more `[global]` lines.
pub(super) async fn world_with(start: &[Is], linked: usize, state: State, global: &str) -> World {
    world_running(start, linked, state, global, "pgbouncer.ini").await
}

/// [`world_with`], PgBouncer started with `file` as its config file: another link to
/// `linked`'s node file than rebouncer's symlink, unless it is `pgbouncer.ini`.
pub(super) async fn world_running(
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
    pub(super) fn set(&self, node: usize, is: Is) {
        let mut s = self.servers[node - 1].lock().unwrap();
        if matches!(is, Is::Down) || matches!(s.is, Is::Down) {
            s.generation += 1;
        }
        s.is = is;
    }
    pub(super) fn refuse_new(&self, node: usize, on: bool) {
        self.servers[node - 1].lock().unwrap().refuses_new = on;
    }
    pub(super) fn attempts(&self, node: usize) -> usize {
        self.servers[node - 1].lock().unwrap().attempts
    }
    /// The node PgBouncer routes `appdb` to.
    pub(super) fn routed(&self) -> Option<usize> {
        let port = self.bouncer.databases().first()?.route.port;
        Some((port - PORT) as usize)
    }
    pub(super) fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }
    pub(super) fn nagios(&self) -> String {
        crate::pages::nagios::render(&self.snapshot(), SystemTime::now())
    }
    /// Advance the paused clock in steps of 50 ms, checking `ok` at every step.
    pub(super) async fn during(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
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
    pub(super) async fn until(&self, d: Duration, mut ok: impl FnMut(&World) -> bool, what: &str) {
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
    pub(super) async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
    /// A new fake server `pg<i>` with its node file; its line for `[servers]`.
    pub(super) fn add_server(&self, i: usize, is: Is) -> String {
        self.cluster
            .lock()
            .unwrap()
            .push((format!("pg{i}"), new_server(is)));
        node_file_and_line(&self.root, i)
    }
    /// The `[servers]` lines of these existing servers (node files rewritten as made).
    pub(super) fn lines(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|i| node_file_and_line(&self.root, *i))
            .collect()
    }
    pub(super) fn server(&self, name: &str) -> Shared {
        let c = self.cluster.lock().unwrap();
        c.iter().find(|(n, _)| n == name).unwrap().1.clone()
    }
    /// Monitors running for the server.
    pub(super) fn probes(&self, name: &str) -> usize {
        self.server(name).lock().unwrap().probes
    }
    /// Monitors ever started for the server.
    pub(super) fn made(&self, name: &str) -> usize {
        self.made
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
    pub(super) fn names(&self) -> Vec<String> {
        self.snapshot()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }
    /// Write rebouncer.ini, load it as SIGHUP does, hand it to the daemon and wait
    /// until it is applied or refused.
    pub(super) async fn reload_text(&self, text: &str) {
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
    pub(super) async fn reload(&self, global: &str, servers_ini: &str) {
        self.reload_text(&ini_text(&self.root, global, servers_ini))
            .await;
    }
    /// pg1 goes down and pg2 is promoted (timeline 2), every other server following it
    /// as a standby; returns once PgBouncer is on pg2.
    pub(super) async fn fail_over_to_pg2(&self) {
        self.set(1, Down);
        self.set(2, Master(2));
        for node in 3..=self.servers.len() {
            self.set(node, Standby(2));
        }
        self.until(S(4), |w| w.routed() == Some(2), "failover to pg2")
            .await;
    }
    /// A directory takes the state file's name: no write can replace it any more.
    pub(super) fn block_state_file(&self) -> std::path::PathBuf {
        let path = self.root.join("rebouncer.state");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        path
    }
}

pub(super) use Is::{Down, Hung, Master, Standby};
pub(super) const S: fn(u64) -> Duration = Duration::from_secs;

pub(super) const PAUSING: &str = "pause_on_failover=on\npause_timeout=10\n";

/// A cluster of `start` with PgBouncer on pg1 and [`PAUSING`] on.
pub(super) async fn pausing(start: &[Is]) -> World {
    world_with(start, 1, State::default(), PAUSING).await
}

/// A [`pausing`] world settled on pg1, then pg1 lost: PgBouncer is paused.
pub(super) async fn paused_without_pg1(start: &[Is]) -> World {
    let w = pausing(start).await;
    paused_after_pg1_is_lost(&w).await;
    w
}

pub(super) async fn settled_on_pg1(w: &World) {
    w.until(S(3), |w| w.routed() == Some(1), "pg1").await;
    w.until(S(3), |w| w.nagios().starts_with("OK"), "settled on pg1")
        .await;
}

pub(super) fn held_in_file(w: &World) -> Vec<String> {
    StateFile::load(&w.root.join("rebouncer.state"))
        .unwrap()
        .state()
        .resume_pending
        .clone()
}

pub(super) fn last_hold_outcome(w: &World) -> Option<String> {
    w.snapshot()
        .failover_pause
        .and_then(|h| h.ended)
        .map(|end| end.outcome)
}

/// Settled on pg1 with pausing on, then pg1 goes down: PgBouncer is paused.
pub(super) async fn paused_after_pg1_is_lost(w: &World) {
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
