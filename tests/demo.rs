//! The README's first command (`bash contrib/demo.sh`) runs this: a narrated walk through
//! a failover and an old primary coming back (a stale primary) on a real local cluster, with the same fixture as the
//! integration tests. Ignored by `cargo test`; run it with
//! `cargo test --release --test demo -- --ignored --nocapture`.
//!
//! It asserts what it narrates (a demo that claims something false should fail), but its
//! purpose is the printed story, not coverage: tests/failover.rs covers the same ground.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_until};

/// Far above what each step takes, far below "something is wrong".
const STEP: Duration = Duration::from_secs(20);
/// The demo's polling interval: the default-ish 30 s, to show that a failover is followed
/// without waiting for it.
const INTERVAL: u64 = 30;
const TIMEOUT: u64 = 3;

struct Narrator {
    t0: Instant,
}

impl Narrator {
    fn say(&self, msg: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        let mut lines = msg.lines();
        println!("[{t:>5.1}s] {}", lines.next().unwrap_or(""));
        for l in lines {
            println!("         {l}");
        }
    }
    fn step(&self, title: &str) {
        println!();
        self.say(&format!("== {title}"));
    }
    /// Prints `text` indented under the previous line.
    fn show(&self, text: &str) {
        for l in text.trim_end().lines() {
            println!("           | {l}");
        }
    }
}

fn page(d: &Daemon, path: &str) -> String {
    d.http_get(path).unwrap_or_else(|e| format!("<{e}>"))
}

/// Prints the daemon log lines written since `*cursor` (a byte offset), then moves it.
fn show_new_log(n: &Narrator, d: &Daemon, cursor: &mut usize) {
    let log = d.log();
    let new = log.get(*cursor..).unwrap_or("");
    if !new.trim().is_empty() {
        n.show(new);
    }
    *cursor = log.len();
}

fn link_text(c: &Cluster) -> String {
    let rel = |p: &std::path::Path| {
        p.strip_prefix(c.root())
            .map(|r| format!("<dir>/{}", r.display()))
            .unwrap_or_else(|_| p.display().to_string())
    };
    format!("{} -> {}", rel(&c.symlink()), rel(&c.symlink_target()))
}

fn name(node: Option<usize>) -> String {
    node.map_or_else(|| "nowhere".into(), |i| format!("pg{i}"))
}

/// One write attempt by the client thread.
struct Write {
    /// When it ended.
    at: Instant,
    took: Duration,
    result: Result<usize, String>,
}

/// The client: a new connection through PgBouncer per write, until `stop`.
fn client(c: &Cluster, stop: &AtomicBool, writes: &Mutex<Vec<Write>>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let t = Instant::now();
        let result = c.bouncer_write(&format!("demo write {i}"));
        writes.lock().unwrap().push(Write {
            at: Instant::now(),
            took: t.elapsed(),
            result,
        });
        // Pacing only (a client that writes ~20 times a second), not synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// First line of a psql error, without the "psql: error: connection to server ... failed:"
/// noise, for the summary.
fn short_error(e: &str) -> String {
    let l = e.lines().next().unwrap_or("").trim();
    let l = l.rsplit_once("failed: ").map_or(l, |(_, r)| r);
    l.trim_start_matches("ERROR:").trim().to_string()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Logins of rebouncer's own monitoring connections in node i's server log
/// (`log_connections=on`; the fixture's psql sessions say `rebouncer-fixture`).
#[test]
#[ignore = "the narrated demo: run with --ignored --nocapture (contrib/demo.sh does)"]
fn demo() {
    let n = Narrator { t0: Instant::now() };
    println!();
    n.say(&format!(
        "rebouncer demo: a real PostgreSQL cluster and a real PgBouncer on this machine:\n{}.",
        common::versions_under_test()
    ));

    // --- 1. the cluster ---------------------------------------------------------------
    n.step("1. Creating the cluster");
    n.say(
        "initdb, a primary pg1 and two streaming standbys pg2, pg3 (pg_basebackup),\n\
         and a PgBouncer whose config file is a symlink to one precooked config per node",
    );
    let c = Cluster::start_default();
    n.say(&format!(
        "cluster ready in {:.1} s under {}  (<dir> below)",
        c.startup.as_secs_f64(),
        c.root().display()
    ));
    for i in 1..=c.len() {
        let role = if i == 1 { "primary" } else { "standby" };
        n.show(&format!("pg{i}: {role}, port {}", c.port(i)));
    }
    n.show(&format!("PgBouncer: port {}", c.bouncer_port()));

    n.step("2. PgBouncer starts out pointed at a standby");
    n.show(&link_text(&c));
    match c.bouncer_write("before rebouncer") {
        Ok(node) => panic!("a write through PgBouncer landed on pg{node}, expected a standby"),
        Err(e) => n.say(&format!(
            "a write through PgBouncer fails: {}",
            short_error(&e)
        )),
    }

    // --- 2. the daemon ----------------------------------------------------------------
    n.step("3. Starting rebouncer");
    let cfg = c.write_rebouncer_config(INTERVAL, TIMEOUT, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&c.root().display().to_string(), "<dir>");
    n.say("its config (the Go rebouncer's format):");
    n.show(&text);
    let started = Instant::now();
    let mut d = c.daemon(&cfg);
    let mut cursor = 0;
    d.wait_for(STEP, "rebouncer to point PgBouncer at pg1", |d| {
        c.symlink_node() == Some(1) && page(d, "/nagios").starts_with("OK")
    });
    assert_eq!(c.bouncer_target_node(), Some(1));
    n.say(&format!(
        "rebouncer found the primary and pointed PgBouncer at it {} ms after it started\n\
         (interval is {INTERVAL} s; the first round does not wait for it)",
        ms(started.elapsed())
    ));
    n.show(&link_text(&c));
    n.say("its log:");
    show_new_log(&n, &d, &mut cursor);
    n.say("GET /nodes");
    n.show(&page(&d, "/nodes"));
    n.say("GET /nagios");
    n.show(&page(&d, "/nagios"));

    // --- 3. failover ------------------------------------------------------------------
    let stop = AtomicBool::new(false);
    let writes: Mutex<Vec<Write>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let client_thread = s.spawn(|| client(&c, &stop, &writes));
        let stop_client = || stop.store(true, Ordering::Relaxed);
        // Whatever happens below, the client thread stops (a panic would otherwise hang
        // the scope).
        let guard = scopeguard(stop_client);

        n.step("4. A client writes through PgBouncer, a new connection per write");
        wait_until(STEP, "5 client writes on pg1", || {
            writes
                .lock()
                .unwrap()
                .iter()
                .filter(|w| w.result == Ok(1))
                .count()
                >= 5
        });
        n.say(&format!(
            "{} writes so far, all on pg1",
            writes.lock().unwrap().len()
        ));

        n.step("5. Failover: the primary stops, pg2 is promoted");
        n.say("pg_ctl stop -m fast pg1");
        let stopped_at = Instant::now();
        c.stop_fast(1);
        n.say(&format!(
            "pg1 stopped ({} ms); no master now. pg_ctl promote pg2",
            ms(stopped_at.elapsed())
        ));
        let promote_at = Instant::now();
        c.promote(2);
        let promoted_at = Instant::now();
        n.say(&format!(
            "pg2 promoted (pg_ctl promote -w took {} ms)",
            ms(promoted_at - promote_at)
        ));

        let mut switched_at = None;
        wait_until(STEP, "the symlink to point at pg2", || {
            let moved = c.symlink_node() == Some(2);
            if moved && switched_at.is_none() {
                switched_at = Some(Instant::now());
            }
            moved
        });
        let switched_at = switched_at.unwrap();
        d.wait_for(STEP, "PgBouncer to send clients to pg2", |_| {
            c.bouncer_target_node() == Some(2)
        });
        let when = if switched_at <= promoted_at {
            "before pg_ctl promote even returned".to_string()
        } else {
            format!("{} ms after it returned", ms(switched_at - promoted_at))
        };
        n.say(&format!(
            "rebouncer switched PgBouncer after {} ms (counted from the start of the promotion; {when})\n\
             not after the {INTERVAL} s interval: the closed monitoring connection to pg1 started a\n\
             round at once, and rounds come every 0.1 s until there is one master again",
            ms(switched_at - promote_at),
        ));
        n.show(&link_text(&c));
        n.say(&format!(
            "PgBouncer's SHOW DATABASES: postgres -> port {} = {}",
            c.bouncer_target_port().unwrap_or(0),
            name(c.bouncer_target_node())
        ));

        wait_until(STEP, "a client write on pg2", || {
            writes.lock().unwrap().iter().any(|w| w.result == Ok(2))
        });
        {
            let w = writes.lock().unwrap();
            let first_pg2 = w.iter().position(|w| w.result == Ok(2)).unwrap();
            let last_pg1 = w[..first_pg2]
                .iter()
                .rposition(|w| w.result == Ok(1))
                .expect("a write on pg1 before");
            let failed = &w[last_pg1 + 1..first_pg2];
            assert!(failed.iter().all(|w| w.result.is_err()));
            n.say(&format!(
                "client writes resumed on pg2 after {}, {} ms after the promotion started\n\
                 ({} ms without a successful write, from the last write on pg1 to the first on pg2)",
                plural(failed.len(), "failed attempt", "failed attempts"),
                ms(w[first_pg2].at.saturating_duration_since(promote_at)),
                ms(w[first_pg2].at - w[last_pg1].at),
            ));
            // Distinct errors, with how often and how long the attempts took.
            let mut errors: Vec<(String, usize, Duration)> = Vec::new();
            for f in failed {
                let e = short_error(f.result.as_ref().unwrap_err());
                match errors.iter_mut().find(|(m, _, _)| *m == e) {
                    Some((_, k, longest)) => {
                        *k += 1;
                        *longest = (*longest).max(f.took);
                    }
                    None => errors.push((e, 1, f.took)),
                }
            }
            if !errors.is_empty() {
                n.say("what the client saw meanwhile:");
                for (e, k, longest) in errors {
                    n.show(&format!(
                        "{k} x {e}  (the longest attempt took {} ms)",
                        ms(longest)
                    ));
                }
            }
        }

        d.wait_for(STEP, "/nagios to show pg1 down", |d| {
            page(d, "/nagios").starts_with("WARNING")
        });
        n.say("GET /nodes");
        n.show(&page(&d, "/nodes"));
        n.say("GET /nagios");
        n.show(&page(&d, "/nagios"));
        n.say("rebouncer's log:");
        show_new_log(&n, &d, &mut cursor);

        // --- 4. the old primary comes back ------------------------------------------
        n.step("6. The old primary comes back: a stale primary");
        n.say(
            "pg_ctl start pg1: it still thinks it is the primary (as after a reboot of a\n\
             machine that was only unreachable), so there are two masters now; but pg1 is\n\
             still on timeline 1, and pg2's promotion started timeline 2",
        );
        let pg1_back = Instant::now();
        c.start_node(1);
        let direct = c
            .query_db(
                1,
                "appdb",
                "INSERT INTO t(node) VALUES ('direct to pg1') RETURNING 'accepted'",
            )
            .unwrap_or_else(|e| e);
        n.say(&format!(
            "pg1 is up and takes writes from anyone who connects to it directly: {direct}"
        ));
        n.say(&format!(
            "rebouncer sees it at its next check of pg1 (a server that keeps failing is retried\n\
             less and less often, up to every interval, {INTERVAL} s)"
        ));
        // Detection of a returning server waits for the next round: up to one interval.
        d.wait_for(
            Duration::from_secs(INTERVAL + TIMEOUT + 15),
            "stale primary on /nagios",
            |d| page(d, "/nagios").starts_with("CRITICAL: stale primary pg1"),
        );
        let detected = Instant::now();
        n.say(&format!(
            "/nagios names pg1 a stale primary {} ms after it came back:",
            ms(pg1_back.elapsed())
        ));
        n.show(&page(&d, "/nagios"));
        n.say("rebouncer's log:");
        show_new_log(&n, &d, &mut cursor);

        n.say("a few seconds later, nothing has moved:");
        let logins_before = (c.monitor_logins(1), c.monitor_logins(2));
        let pause = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let logins = (
            c.monitor_logins(1) - logins_before.0,
            c.monitor_logins(2) - logins_before.1,
        );
        let pause = pause.elapsed();
        n.show(&link_text(&c));
        let target = c.bouncer_target_node();
        n.show(&format!("PgBouncer's SHOW DATABASES: {}", name(target)));
        assert_eq!(c.symlink_node(), Some(2));
        assert_eq!(target, Some(2));
        {
            let w = writes.lock().unwrap();
            let since: Vec<&Write> = w.iter().filter(|w| w.at > pg1_back).collect();
            let on2 = since.iter().filter(|w| w.result == Ok(2)).count();
            let elsewhere = since
                .iter()
                .filter(|w| matches!(w.result, Ok(x) if x != 2))
                .count();
            let failed = since.iter().filter(|w| w.result.is_err()).count();
            n.show(&format!(
                "client writes since pg1 came back: {on2} on pg2, {elsewhere} elsewhere, {failed} failed"
            ));
            assert!(on2 > 0);
            assert_eq!(elsewhere, 0, "a write landed on the old primary");
        }
        n.show(&format!(
            "GET /nodes: {}",
            page(&d, "/nodes").trim().replace('\n', ", ")
        ));
        n.show(&format!(
            "new monitoring connections in these {:.1} s (none needed: the timelines settle it,\n\
             no re-check of the masters on new connections): {} to pg1, {} to pg2",
            pause.as_secs_f64(),
            logins.0,
            logins.1
        ));
        let log = d.log();
        let loud = log
            .matches("stale primary: pg1 answers as master on timeline 1")
            .count();
        n.say(&format!(
            "the stale primary was logged {} in {:.1} s: once when it started, then once a minute",
            plural(loud, "time", "times"),
            detected.elapsed().as_secs_f64()
        ));

        n.step("7. The operator stops the old primary");
        n.say("pg_ctl stop -m fast pg1");
        c.stop_fast(1);
        d.wait_for(STEP, "/nagios to leave CRITICAL", |d| {
            page(d, "/nagios").starts_with("WARNING")
        });
        n.say("GET /nagios");
        n.show(&page(&d, "/nagios"));
        n.say(
            "WARNING, not OK, because pg1 is down; rebuilding it as a standby of pg2\n\
             (pg_rewind or pg_basebackup) is the operator's job, and brings /nagios back to OK",
        );
        n.say("rebouncer's log:");
        show_new_log(&n, &d, &mut cursor);

        drop(guard);
        client_thread.join().unwrap();
    });

    // --- summary ----------------------------------------------------------------------
    n.step("Summary");
    let w = writes.into_inner().unwrap();
    let on = |node| w.iter().filter(|w| w.result == Ok(node)).count();
    let failed = w.iter().filter(|w| w.result.is_err()).count();
    n.say(&format!(
        "client: {} writes through PgBouncer, a new connection each: {} on pg1 before the failover,\n\
         {} on pg2 after it, {failed} failed; none reached pg1 after it came back as a second master",
        w.len(),
        on(1),
        on(2)
    ));
    n.say(&format!(
        "PgBouncer points at {} ({})",
        name(c.bouncer_target_node()),
        link_text(&c)
    ));
    n.say(&format!("/nagios: {}", page(&d, "/nagios").trim()));
    n.say("stopping rebouncer and the cluster");
    let st = d.stop();
    assert!(st.success(), "rebouncer exited with {st}");
    drop(c);
    n.say("done: everything stopped and removed");
}

/// Runs `f` when dropped (also when unwinding from a panic).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
