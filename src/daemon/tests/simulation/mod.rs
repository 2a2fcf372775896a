//! The whole loop (monitors, decision, switch, pause, state file, start-up) driven
//! through random histories on the paused clock: promotions, stops, hangs, refused
//! logins, old primaries coming back on their old timelines, standbys reporting newer
//! timelines, PgBouncer restarted or down, admin commands that fail or take effect and
//! never answer, and rebouncer killed and started again over its state file and the
//! PgBouncer it left. The simulation keeps its own books of what rebouncer was told (every
//! probe's answer) and what PgBouncer went through (every command), and checks the rules
//! an operator relies on as they happen:
//!
//! a. PgBouncer is never moved to a master on a lower timeline than the highest a master
//!    showed this rebouncer or its state file remembers;
//! b. never moved while two masters share the highest timeline;
//! c. a database rebouncer paused is resumed within `pause_timeout` plus one round of
//!    the command that paused it, the round counted from when the console works again
//!    and rebouncer runs; a hold that keeps a database paused which an earlier pause left
//!    paused (a `RESUME` that failed) gets no new `pause_timeout`, unless it is a later
//!    rebouncer's (the state file says what is paused, not since when): that one counts
//!    from its start;
//! d. when rebouncer is killed, every database it left paused is listed in its state
//!    file (and rule c, which runs across the restart, sees that the next start resumes
//!    it);
//! e. once every fault is healed, PgBouncer's `server_login_retry` is back to its
//!    configured value (unless a login or a `SET` was made to fail: that waits for
//!    PgBouncer's next `RELOAD`, and rebouncer says so).
//!
//! `cargo test --lib simulation` runs a few hundred histories; the ignored
//! `simulation_benchmark` runs many more and prints how many and how long:
//! `cargo test --release --lib simulation_benchmark -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tokio::time::sleep;

use super::world::*;
use crate::admin::{AdminError, Row};
use crate::daemon::*;
use crate::fake_bouncer::{FakeBouncer, FakeSession};
use crate::state::State;

mod seams;
use seams::*;

const NODES: usize = 3;
const INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(2);
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one round can take: its checks bounded by `timeout`, then `interval`.
const ROUND: Duration = Duration::from_secs(4);
/// How long rebouncer waits before asking again for a PgBouncer that did not answer at
/// start.
const START_RETRY: Duration = Duration::from_secs(5);

/// The admin commands a fault can hit, by the prefix the console sees.
const COMMANDS: [&str; 7] = ["LOGIN", "PAUSE", "RESUME", "KILL", "RELOAD", "SET", "SHOW"];

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Time passes (milliseconds).
    Wait(u16),
    /// A running standby is promoted onto the next timeline after its own.
    Promote(usize),
    /// Stopped: refuses connections.
    Stop(usize),
    /// Started again as it was (an old primary comes back on its old timeline).
    Start(usize),
    /// Accepts connections, answers nothing.
    Hang(usize),
    Wake(usize),
    /// Answers on the kept session, refuses new logins (or accepts them again).
    RefuseLogins(usize, bool),
    /// Rewound and restarted as a standby of the newest timeline.
    Rewind(usize),
    /// A standby reports a timeline beyond every master's.
    StandbyAhead(usize),
    /// PgBouncer restarted: sessions closed, pauses and `SET`s forgotten.
    BouncerRestart,
    /// PgBouncer stopped (logins refused) or started again.
    BouncerUp(bool),
    /// Commands starting with `COMMANDS[i]` fail without effect.
    Fail(usize),
    /// Commands starting with `COMMANDS[i]` take effect and are never answered.
    Hush(usize),
    /// Every injected fault ends.
    Heal,
    /// rebouncer killed (SIGKILL) and started again at once.
    Restart,
}

/// One server as the simulation knows it (its probes see only what `Is` says).
#[derive(Clone, Copy, Debug)]
struct Truth {
    master: bool,
    timeline: u32,
    running: bool,
    hung: bool,
}

impl Truth {
    fn is(&self) -> Is {
        match self {
            Truth { running: false, .. } => Is::Down,
            Truth { hung: true, .. } => Is::Hung,
            Truth {
                master: true,
                timeline,
                ..
            } => Is::Master(*timeline),
            Truth { timeline, .. } => Is::Standby(*timeline),
        }
    }
}

struct Sim {
    _dir: tempfile::TempDir,
    root: PathBuf,
    truth: [Truth; NODES],
    servers: Vec<super::world::Shared>,
    newest: u32,
    bouncer: FakeBouncer,
    books: BooksRef,
    pausing: bool,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

fn start_daemon(
    root: &Path,
    global: &str,
    bouncer: &FakeBouncer,
    books: &BooksRef,
    servers: &[super::world::Shared],
) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let mut servers_ini = String::new();
    for i in 1..=NODES {
        servers_ini += &node_file_and_line(root, i);
    }
    std::fs::write(
        root.join("rebouncer.ini"),
        ini_text(root, global, &servers_ini),
    )
    .unwrap();
    let cfg = config::load(&root.join("rebouncer.ini"), root, &test_env()).unwrap();
    let file = StateFile::load(&cfg.state_file).expect("the state file a run left is read");
    let probes = {
        let servers = servers.to_vec();
        let books = books.clone();
        move |_key: MonitorKey, server: &config::Server, cfg: &Config| {
            let node: usize = server.name[2..].parse::<usize>().unwrap() - 1;
            let shared = servers[node].clone();
            shared.lock().unwrap().probes += 1;
            SimProbe {
                inner: FakeProbe {
                    server: shared,
                    connected: None,
                    timeout: cfg.timeout,
                },
                node,
                books: books.clone(),
            }
        }
    };
    let names: Vec<String> = cfg.servers.iter().map(|s| s.name.clone()).collect();
    let (status_tx, _status) = watch::channel(Snapshot::new(&names, cfg.interval, "sim".into()));
    let (stop, stop_rx) = watch::channel(false);
    let (lost_tx, lost) = mpsc::unbounded_channel();
    let console = SimConsole {
        bouncer: bouncer.clone(),
        books: books.clone(),
    };
    let daemon = Daemon::with_parts(cfg, console, probes, lost, file, status_tx, stop_rx);
    let task = tokio::spawn(async move {
        let _keep = lost_tx;
        daemon.run().await
    });
    (task, stop)
}

impl Sim {
    fn new(pausing: bool) -> Sim {
        // In memory where there is a tmpfs: every state-file write is fsynced, and a disk
        // makes those the whole cost of a history.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("nodes")).unwrap();
        for i in 1..=NODES {
            node_file_and_line(&root, i);
        }
        std::os::unix::fs::symlink(root.join("nodes/pg1.ini"), root.join("pgbouncer.ini")).unwrap();
        let truth = [0, 1, 2].map(|i| Truth {
            master: i == 0,
            timeline: 1,
            running: true,
            hung: false,
        });
        let servers: Vec<_> = truth.iter().map(|t| new_server(t.is())).collect();
        let bouncer = FakeBouncer::new(root.join("pgbouncer.ini"));
        let books = Arc::new(Mutex::new(Books {
            run: 0,
            answers: Vec::new(),
            faults: Vec::new(),
            down: false,
            unreliable_until: Instant::now(),
            state_file: root.join("rebouncer.state"),
            symlink: root.join("pgbouncer.ini"),
            root: root.clone(),
            violations: Vec::new(),
            paused_since: None,
            run_started: Instant::now(),
            moves: 0,
            pauses: 0,
            kills_mid_pause: 0,
        }));
        let global = Sim::global(pausing);
        let (task, stop) = start_daemon(&root, &global, &bouncer, &books, &servers);
        Sim {
            _dir: dir,
            root,
            truth,
            servers,
            newest: 1,
            bouncer,
            books,
            pausing,
            task,
            stop,
        }
    }

    fn global(pausing: bool) -> String {
        if pausing {
            format!(
                "pause_on_failover=on\npause_timeout={}\n",
                PAUSE_TIMEOUT.as_secs()
            )
        } else {
            String::new()
        }
    }

    fn publish(&mut self, i: usize) {
        let mut s = self.servers[i].lock().unwrap();
        let is = self.truth[i].is();
        if matches!(is, Is::Down) || matches!(s.is, Is::Down) {
            s.generation += 1;
        }
        s.is = is;
    }

    /// The console or rebouncer cannot be counted on now.
    fn unreliable(&self) {
        self.books.lock().unwrap().unreliable_until = Instant::now();
    }

    async fn step(&mut self, step: Step) {
        if !matches!(step, Step::Wait(_)) {
            // The world changes once rebouncer has finished what it does at this instant:
            // a promotion in the middle of a switch would be judged by rules a and b as
            // if rebouncer had seen it before deciding.
            sleep(Duration::from_millis(1)).await;
        }
        match step {
            Step::Wait(ms) => {
                let end = Instant::now() + Duration::from_millis(ms.into());
                while Instant::now() < end {
                    let left = end - Instant::now();
                    sleep(left.min(Duration::from_millis(500))).await;
                    self.look();
                }
            }
            Step::Promote(i) => {
                let t = &mut self.truth[i];
                if t.running && !t.master {
                    t.master = true;
                    t.timeline += 1;
                    self.newest = self.newest.max(t.timeline);
                }
                self.publish(i);
            }
            Step::Stop(i) => {
                self.truth[i].running = false;
                self.publish(i);
            }
            Step::Start(i) => {
                self.truth[i].running = true;
                self.truth[i].hung = false;
                self.publish(i);
            }
            Step::Hang(i) => {
                self.truth[i].hung = self.truth[i].running;
                self.publish(i);
            }
            Step::Wake(i) => {
                self.truth[i].hung = false;
                self.publish(i);
            }
            Step::RefuseLogins(i, on) => self.servers[i].lock().unwrap().refuses_new = on,
            Step::Rewind(i) => {
                self.truth[i] = Truth {
                    master: false,
                    timeline: self.newest,
                    running: true,
                    hung: false,
                };
                self.publish(i);
            }
            Step::StandbyAhead(i) => {
                if !self.truth[i].master {
                    self.newest += 1;
                    self.truth[i].timeline = self.newest;
                    self.publish(i);
                }
            }
            Step::BouncerRestart => {
                self.bouncer.restart();
                self.unreliable();
            }
            Step::BouncerUp(up) => {
                self.bouncer.set_up(up);
                self.books.lock().unwrap().down = !up;
                self.unreliable();
            }
            Step::Fail(c) | Step::Hush(c) => {
                let hush = matches!(step, Step::Hush(_));
                let mut b = self.books.lock().unwrap();
                b.faults.retain(|f| f.0 != COMMANDS[c]);
                b.faults.push((COMMANDS[c], hush));
                b.unreliable_until = Instant::now();
            }
            Step::Heal => self.heal(),
            Step::Restart => self.restart().await,
        }
        self.look();
    }

    fn heal(&mut self) {
        let mut b = self.books.lock().unwrap();
        b.faults.clear();
        b.down = false;
        b.unreliable_until = Instant::now();
        self.bouncer.set_up(true);
    }

    /// Rebouncer killed at this instant and started again over what it left.
    async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let paused = self.bouncer.paused();
        let state = StateFile::load(&self.root.join("rebouncer.state"))
            .expect("the state file a killed rebouncer left is read")
            .state()
            .clone();
        // Rule d: what is left paused is on disk for the next start.
        let unlisted: Vec<&String> = paused
            .iter()
            .filter(|d| !state.resume_pending.contains(d))
            .collect();
        if !unlisted.is_empty() {
            self.books.lock().unwrap().violations.push(format!(
                "d: rebouncer killed with {unlisted:?} paused in PgBouncer, not listed in its state file \
                 (held: {:?})",
                state.resume_pending
            ));
        }
        if !paused.is_empty() {
            self.books.lock().unwrap().kills_mid_pause += 1;
        }
        {
            let mut b = self.books.lock().unwrap();
            b.run += 1;
            b.run_started = Instant::now();
            b.unreliable_until = Instant::now();
        }
        let global = Sim::global(self.pausing);
        let (task, stop) = start_daemon(
            &self.root,
            &global,
            &self.bouncer,
            &self.books,
            &self.servers,
        );
        self.task = task;
        self.stop = stop;
    }

    /// Rules c and d, as PgBouncer is now.
    fn look(&mut self) {
        let now = Instant::now();
        let mut b = self.books.lock().unwrap();
        if !b.faults.is_empty() || b.down {
            b.unreliable_until = now;
        }
        let from_unreliable = b.unreliable_until + START_RETRY.max(INTERVAL) + TIMEOUT;
        let paused = self.bouncer.paused();
        if paused.is_empty() {
            b.paused_since = None;
        } else {
            let since = *b.paused_since.get_or_insert(now);
            let deadline = (since + PAUSE_TIMEOUT + ROUND).max(from_unreliable);
            if now > deadline && !b.violations.iter().any(|v| v.starts_with("c:")) {
                let answered_for = (now - b.unreliable_until).as_secs_f64();
                b.violations.push(format!(
                    "c: {paused:?} paused in PgBouncer since {:.1} s ago, beyond pause_timeout ({} s) plus a \
                     round; the console has answered for {:.1} s",
                    (now - since).as_secs_f64(),
                    PAUSE_TIMEOUT.as_secs(),
                    answered_for
                ));
            }
        }
    }

    /// Rule e holds only where rebouncer's `SET` back can work: a login or a `SET` made to
    /// fail leaves `server_login_retry` at 0 until PgBouncer's next `RELOAD`, and rebouncer
    /// says so in its log.
    fn sets_could_fail(&self, steps: &[Step]) -> bool {
        steps.iter().any(|s| {
            matches!(
                s,
                Step::Fail(0) | Step::Hush(0) | Step::Fail(5) | Step::BouncerUp(false)
            )
        })
    }

    /// Every fault healed; then long enough for any pause to end.
    async fn settle(&mut self) {
        self.heal();
        self.step(Step::Wait(
            (PAUSE_TIMEOUT + ROUND + START_RETRY + ROUND).as_millis() as u16,
        ))
        .await;
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn step() -> impl Strategy<Value = Step> {
    let node = 0..NODES;
    let command = 0..COMMANDS.len();
    prop_oneof![
        12 => (50u16..3000).prop_map(Step::Wait),
        4 => node.clone().prop_map(Step::Promote),
        4 => node.clone().prop_map(Step::Stop),
        3 => node.clone().prop_map(Step::Start),
        1 => node.clone().prop_map(Step::Hang),
        1 => node.clone().prop_map(Step::Wake),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, on)| Step::RefuseLogins(i, on)),
        2 => node.clone().prop_map(Step::Rewind),
        1 => node.prop_map(Step::StandbyAhead),
        1 => Just(Step::BouncerRestart),
        1 => any::<bool>().prop_map(Step::BouncerUp),
        1 => command.clone().prop_map(Step::Fail),
        1 => command.prop_map(Step::Hush),
        3 => Just(Step::Heal),
        2 => Just(Step::Restart),
    ]
}

/// A history: whether pausing is on, then the steps.
fn history(len: usize) -> impl Strategy<Value = (bool, Vec<Step>)> {
    (
        proptest::bool::weighted(0.8),
        proptest::collection::vec(step(), 1..len),
    )
}

/// Figures of one history: steps, then what [`Books`] counts.
type Figures = [u64; 4];

/// Run one history on a fresh runtime with a paused clock; the violations, or figures.
fn run(pausing: bool, steps: &[Step]) -> Result<Figures, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sim = Sim::new(pausing);
        for s in steps {
            sim.step(*s).await;
        }
        sim.settle().await;
        if !sim.bouncer.paused().is_empty() {
            sim.books.lock().unwrap().violations.push(format!(
                "c: {:?} still paused with every fault healed",
                sim.bouncer.paused()
            ));
        }
        let retry = sim.bouncer.server_login_retry();
        if retry != crate::fake_bouncer::DEFAULT_LOGIN_RETRY && !sim.sets_could_fail(steps) {
            sim.books.lock().unwrap().violations.push(format!(
                "e: server_login_retry is {retry} with every fault healed, not the configured {}",
                crate::fake_bouncer::DEFAULT_LOGIN_RETRY
            ));
        }
        let books = sim.books.clone();
        sim.stop().await;
        let b = books.lock().unwrap();
        if b.violations.is_empty() {
            Ok([steps.len() as u64, b.moves, b.pauses, b.kills_mid_pause])
        } else {
            Err(b.violations.join("\n"))
        }
    })
}

#[test]
fn the_operators_rules_hold_through_random_histories_of_the_whole_loop() {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&history(60), |(pausing, steps)| {
        run(pausing, &steps).map_err(TestCaseError::fail)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture (and --release)"]
fn simulation_benchmark() {
    let histories: u64 = std::env::var("SIM_HISTORIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut runner = TestRunner::deterministic();
    let strategy = history(60);
    let started = std::time::Instant::now();
    let mut total = [0u64; 4];
    for _ in 0..histories {
        let (pausing, h) = strategy.new_tree(&mut runner).unwrap().current();
        let figures = run(pausing, &h).unwrap_or_else(|e| panic!("{e}\nhistory: {pausing} {h:?}"));
        for (t, f) in total.iter_mut().zip(figures) {
            *t += f;
        }
    }
    let took = started.elapsed();
    let [steps, moves, pauses, kills] = total;
    println!(
        "whole-loop simulation: {histories} histories, {steps} steps, {moves} moves of PgBouncer checked, \
         {pauses} PAUSEs, {kills} kills of rebouncer with a database paused, in {:.1} s ({:.0} histories/s)",
        took.as_secs_f64(),
        histories as f64 / took.as_secs_f64()
    );
}

/// Histories the random ones found worth keeping, run every time.
#[test]
fn chosen_histories() {
    use Step::*;
    let histories: [(&str, &[Step]); 6] = [
        (
            "rebouncer killed while its PAUSE waits for an answer",
            &[
                Wait(3000),
                Hush(1),
                Stop(0),
                Wait(1500),
                Restart,
                Wait(3000),
            ],
        ),
        (
            "rebouncer killed while the RESUME ending a pause waits for an answer",
            &[
                Wait(3000),
                Stop(0),
                Wait(3000),
                Hush(2),
                Start(0),
                Wait(2100),
                Restart,
            ],
        ),
        (
            "rebouncer killed after its RESUME took effect, with server_login_retry at 0 and no master",
            KILLED_WITH_LOGIN_RETRY_AT_0,
        ),
        (
            "the SET lowering server_login_retry takes effect and is never answered",
            &[Hush(5), Rewind(0), Wait(98), Promote(0), Wait(100)],
        ),
        (
            "a hold keeps a database paused that the RESUME ending an earlier hold left paused",
            &[
                Wait(3000),
                Stop(0),
                Wait(2000),
                Fail(2),
                Start(0),
                Wait(3000),
                Stop(0),
                Wait(2000),
                Heal,
            ],
        ),
        (
            "a hold keeps a database paused that a killed rebouncer left paused and the next could not resume",
            &[
                Wait(3000),
                Stop(0),
                Wait(2000),
                Fail(2),
                Start(0),
                Wait(3000),
                Restart,
                Wait(5000),
                Stop(0),
                Wait(2000),
                Heal,
            ],
        ),
    ];
    for (what, steps) in histories {
        if let Err(e) = run(true, steps) {
            panic!("{what}: {e}\nhistory: {steps:?}");
        }
    }
}

/// The SET lowering server_login_retry answered, the one restoring it not (pg1 hung),
/// then rebouncer killed: a chosen history, and the start of the test below.
const KILLED_WITH_LOGIN_RETRY_AT_0: &[Step] = {
    use Step::*;
    &[
        Wait(3000),
        Hang(0),
        Wait(3000),
        Hush(2),
        Wake(0),
        Wait(2100),
        Hang(0),
        Restart,
    ]
};

#[test]
fn a_server_login_retry_lowered_by_a_killed_rebouncer_is_put_back_by_the_next_start() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sim = Sim::new(true);
        let (restart, before) = KILLED_WITH_LOGIN_RETRY_AT_0.split_last().unwrap();
        for &s in before {
            sim.step(s).await;
        }
        assert_eq!(
            sim.bouncer.server_login_retry(),
            "0",
            "{:?}",
            sim.bouncer.log()
        );
        sim.step(*restart).await;
        sim.heal();
        sim.step(Step::Wait(10_000)).await;
        assert_eq!(
            sim.bouncer.server_login_retry(),
            "15",
            "{:?}",
            sim.bouncer.log()
        );
        sim.stop().await;
    });
}

/// A standby promoted onto a newer timeline answers once as master, then stops before the
/// check on a new connection that a switch to it needs; an older master comes up later.
/// The newer timeline was seen all the same, so that master is refused as stale.
#[test]
fn a_master_that_stops_before_its_target_check_still_raises_the_timeline() {
    use Step::*;
    let steps = [
        Start(1),
        Wait(324),
        StandbyAhead(1),
        Hang(2),
        Promote(1),
        Wait(2480),
        Stop(1),
        Hang(1),
        Wait(2857),
        Promote(1),
        Fail(0),
        Start(2),
        BouncerRestart,
        Promote(2),
        StandbyAhead(1),
        Promote(2),
        Wait(654),
        Wait(63),
        Wait(192),
        Wait(304),
        Wait(2434),
        Wait(182),
        Wait(1413),
        Wait(318),
        Wait(1574),
        Wait(2781),
        Wait(1323),
        Fail(5),
        Wake(0),
        Heal,
        Wait(1561),
        Wait(2809),
        Start(1),
        Heal,
        Start(2),
        Wait(2164),
        Start(0),
        Heal,
        Wait(2785),
        Wait(1045),
        Wait(2730),
        Hush(6),
        Start(2),
        Promote(1),
        BouncerRestart,
        Heal,
        Promote(1),
    ];
    if let Err(e) = run(false, &steps) {
        panic!("{e}");
    }
}
