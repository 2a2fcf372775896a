//! The decision driven through random histories of a three-server cluster: promotions,
//! stops, hangs, refused logins, old primaries coming back on their old timelines,
//! standbys reporting newer timelines, failed switches, and rebouncer restarted with what
//! its state file says (through the file's text). After every step, the rules an operator
//! relies on are checked against the simulation's own books, not against the decision's
//! memory:
//!
//! 1. never a switch to a master on a lower timeline than the highest timeline a master
//!    has shown rebouncer (remembered across restarts by the state file);
//! 2. never a switch while two masters share the highest timeline;
//! 3. a restart from the state file never forgets a fence: every master that was stale
//!    by the remembered timeline before the restart is still stale after it.
//!
//! `cargo test --test simulation` runs a few thousand histories; the ignored
//! `a_million_steps` runs one million steps and prints how many and how long:
//! `cargo test --test simulation -- --ignored --nocapture` (add `--release` for speed).

use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use rebouncer::decide::{self, Action, Believed, Memory, NodeState, Seen, Timelines};
use rebouncer::state::State;

const NODES: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// rebouncer checks every server and decides.
    Round,
    /// A running standby is promoted onto the next timeline after its own: two standbys
    /// of one primary promoted both land on the same one.
    Promote(usize),
    /// Stopped: refuses connections.
    Stop(usize),
    /// Started again as it was (an old primary comes back on its old timeline).
    Start(usize),
    /// Accepts connections but answers nothing (SIGSTOP, a hung host).
    Hang(usize),
    Wake(usize),
    /// Answers on the kept session, refuses new logins (or accepts them again).
    RefuseLogins(usize, bool),
    /// Rewound and restarted as a standby of the newest timeline.
    Rewind(usize),
    /// A standby reports a timeline beyond every master's (a promoted clone restarted as
    /// a standby, a shared archive followed with recovery_target_timeline=latest).
    StandbyAhead(usize),
    /// The next switch fails: the link is moved but PgBouncer's answer is not confirmed.
    SwitchFails,
    /// rebouncer killed and started again with its state file.
    Restart,
}

#[derive(Clone, Copy, Debug)]
struct Server {
    state: NodeState,
    timeline: u32,
    running: bool,
    hung: bool,
    refuses_new: bool,
}

struct World {
    servers: [Server; NODES],
    /// The highest timeline any server ever had.
    newest: u32,
    believed: Believed,
    memory: Memory,
    /// The state file's text, written after every round as the daemon does.
    file: String,
    /// The highest timeline a master has shown rebouncer, kept by the simulation itself.
    master_seen: Option<u32>,
    switch_fails: bool,
    rounds: u64,
}

impl World {
    fn new(linked: Option<usize>) -> World {
        let server = |state| Server {
            state,
            timeline: 1,
            running: true,
            hung: false,
            refuses_new: false,
        };
        let believed = Believed {
            active: linked,
            confirmed: false,
        };
        World {
            servers: [
                server(NodeState::Master),
                server(NodeState::Standby),
                server(NodeState::Standby),
            ],
            newest: 1,
            believed,
            memory: Memory::at_start(Timelines::default(), linked),
            file: State::default().render(),
            master_seen: None,
            switch_fails: false,
            rounds: 0,
        }
    }

    fn observed(&self) -> Vec<Seen> {
        self.servers
            .iter()
            .map(|s| {
                if !s.running {
                    Seen::new(NodeState::Down)
                } else if s.hung {
                    Seen::silent()
                } else {
                    let mut seen = Seen::on(s.state, s.timeline);
                    seen.refuses_new = s.refuses_new && s.state == NodeState::Master;
                    seen
                }
            })
            .collect()
    }

    fn restore(&self) -> Memory {
        let state = State::parse(Path::new("rebouncer.state"), &self.file)
            .expect("the state file's own text parses");
        Memory::at_start(state.timelines, self.believed.active)
    }

    fn step(&mut self, step: Step) -> Result<(), String> {
        match step {
            Step::Round => self.round()?,
            Step::Promote(i) => {
                let s = &mut self.servers[i];
                if s.running && s.state == NodeState::Standby {
                    s.state = NodeState::Master;
                    s.timeline += 1;
                    self.newest = self.newest.max(s.timeline);
                }
            }
            Step::Stop(i) => self.servers[i].running = false,
            Step::Start(i) => {
                let s = &mut self.servers[i];
                s.running = true;
                s.hung = false;
            }
            Step::Hang(i) => self.servers[i].hung = self.servers[i].running,
            Step::Wake(i) => self.servers[i].hung = false,
            Step::RefuseLogins(i, on) => self.servers[i].refuses_new = on,
            Step::Rewind(i) => {
                let s = &mut self.servers[i];
                s.state = NodeState::Standby;
                s.timeline = self.newest;
                s.running = true;
                s.hung = false;
            }
            Step::StandbyAhead(i) => {
                let s = &mut self.servers[i];
                if s.state == NodeState::Standby {
                    self.newest += 1;
                    s.timeline = self.newest;
                }
            }
            Step::SwitchFails => self.switch_fails = true,
            Step::Restart => self.restart()?,
        }
        Ok(())
    }

    fn round(&mut self) -> Result<(), String> {
        self.rounds += 1;
        let seen = self.observed();
        for s in seen.iter().filter(|s| s.state == NodeState::Master) {
            if let Some(t) = s.timeline {
                self.master_seen = self.master_seen.max(Some(t.timeline));
            }
        }
        let d = decide::decide(self.believed, &seen, &self.memory);
        if let Action::Switch(to) = d.action {
            let target = seen[to];
            if target.state != NodeState::Master {
                return Err(format!("switch to node{to}, which is {:?}", target.state));
            }
            let tl = target.timeline.map(|t| t.timeline);
            // 1. Never below the highest timeline a master has shown.
            if tl < self.master_seen {
                return Err(format!(
                    "switch to node{to} on timeline {tl:?}, below the highest master timeline {:?}",
                    self.master_seen
                ));
            }
            // 2. Never while two masters share the highest timeline.
            let top = seen
                .iter()
                .filter(|s| s.state == NodeState::Master)
                .filter_map(|s| s.timeline.map(|t| t.timeline))
                .max();
            let at_top = seen
                .iter()
                .filter(|s| s.state == NodeState::Master && s.timeline.map(|t| t.timeline) == top)
                .count();
            if at_top > 1 {
                return Err(format!(
                    "switch to node{to} while {at_top} masters share timeline {top:?}"
                ));
            }
            self.believed = Believed {
                active: Some(to),
                confirmed: !std::mem::take(&mut self.switch_fails),
            };
        }
        self.memory = d.memory;
        self.file = State {
            timelines: self.memory.timelines.clone(),
            ..State::default()
        }
        .render();
        Ok(())
    }

    fn restart(&mut self) -> Result<(), String> {
        let seen = self.observed();
        let before = decide::decide(self.believed, &seen, &self.memory);
        self.believed.confirmed = false;
        self.memory = self.restore();
        let after = decide::decide(self.believed, &seen, &self.memory);
        // 3. A restart never forgets a fence.
        if self.memory.timelines.highest(None) < self.master_seen {
            return Err(format!(
                "restart remembers timeline {:?}, a master showed {:?}",
                self.memory.timelines.highest(None),
                self.master_seen
            ));
        }
        for s in before.stale.iter().filter(|s| s.standby.is_none()) {
            if !after.stale.iter().any(|a| a.node == s.node) {
                return Err(format!(
                    "node{} was a stale primary (timeline {} below {}) and is not after a restart",
                    s.node, s.timeline, s.highest
                ));
            }
        }
        Ok(())
    }
}

fn step() -> impl Strategy<Value = Step> {
    let node = 0..NODES;
    prop_oneof![
        8 => Just(Step::Round),
        2 => node.clone().prop_map(Step::Promote),
        2 => node.clone().prop_map(Step::Stop),
        2 => node.clone().prop_map(Step::Start),
        2 => node.clone().prop_map(Step::Hang),
        2 => node.clone().prop_map(Step::Wake),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, on)| Step::RefuseLogins(i, on)),
        1 => node.clone().prop_map(Step::Rewind),
        1 => node.prop_map(Step::StandbyAhead),
        1 => Just(Step::SwitchFails),
        1 => Just(Step::Restart),
    ]
}

/// A history: where the symlink points at the first start, then the steps.
fn history(len: usize) -> impl Strategy<Value = (Option<usize>, Vec<Step>)> {
    (
        proptest::option::of(0..NODES),
        proptest::collection::vec(step(), 1..len),
    )
}

fn run(linked: Option<usize>, steps: &[Step]) -> Result<u64, String> {
    let mut w = World::new(linked);
    for (i, s) in steps.iter().enumerate() {
        w.step(*s).map_err(|e| format!("step {i} ({s:?}): {e}"))?;
    }
    Ok(w.rounds)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_rules_hold_through_random_histories((linked, steps) in history(80)) {
        if let Err(e) = run(linked, &steps) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
#[ignore = "a million steps: run with --ignored --nocapture"]
fn a_million_steps() {
    let mut runner = TestRunner::deterministic();
    let strategy = history(1000);
    let started = Instant::now();
    let (mut steps, mut rounds, mut histories) = (0u64, 0u64, 0u64);
    while steps < 1_000_000 {
        let (linked, h) = strategy.new_tree(&mut runner).unwrap().current();
        rounds += run(linked, &h).unwrap_or_else(|e| panic!("{e}\nhistory: {linked:?} {h:?}"));
        steps += h.len() as u64;
        histories += 1;
    }
    let took = started.elapsed();
    println!(
        "simulation: {steps} steps ({rounds} rounds) in {histories} histories, {:.2} s, {:.0} steps/s",
        took.as_secs_f64(),
        steps as f64 / took.as_secs_f64()
    );
}
