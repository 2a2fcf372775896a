//! A switch `KILL`s the databases that moved and then `RESUME`s them; PgBouncer holds every
//! new client of a killed database until the `RESUME`, and the pause outlives the admin
//! session that made it. A rebouncer killed in between (SIGKILL, the OOM killer, systemd's
//! stop timeout) must not leave those clients held forever: it records the databases in
//! its state file before the `KILL`, and the next rebouncer resumes what the file lists.

#[cfg(debug_assertions)]
mod common;

/// The two crash tests need a switch held open at the moment rebouncer is killed; only a
/// debug build has the hooks that hold it (src/switch/hooks.rs), so under
/// `cargo test --release` they do not exist.
#[cfg(debug_assertions)]
mod killed {
    use std::fs;
    use std::time::Duration;

    use crate::common::{Cluster, Link, Opts};

    const SHORT: Duration = Duration::from_secs(20);

    /// A hook of debug builds (src/switch/hooks.rs): how long a switch waits between its
    /// `KILL`s and its `RESUME`s.
    const HOLD_AFTER_KILL: &str = "REBOUNCER_TEST_HOLD_AFTER_KILL_MS";

    #[test]
    fn a_rebouncer_killed_between_kill_and_resume_is_cleaned_up_by_the_next_one() {
        let c = Cluster::start(Opts::default().link(Link::Node(1)));
        let cfg = c.write_rebouncer_config(1, 2, "");
        let state = c.root().join("rebouncer.state");
        let held = || fs::read_to_string(&state).unwrap_or_default();

        let mut cmd = c.daemon_cmd(&cfg);
        cmd.env.push((HOLD_AFTER_KILL.into(), "600000".into()));
        let mut d = cmd.start();
        d.wait_log(SHORT, "PgBouncer now points at pg1");
        assert_eq!(c.bouncer_write("before").unwrap(), 1);

        c.stop_fast(1);
        c.promote(2);
        d.wait_for(
            SHORT,
            "appdb and postgres KILLed by the switch to pg2, and listed as held in the state file",
            |_| {
                c.paused("appdb") == "1"
                    && c.paused("postgres") == "1"
                    && held().contains("held appdb\n")
                    && held().contains("held postgres\n")
            },
        );
        assert_eq!(c.bouncer_target_node(), Some(2));
        d.kill9();

        // Nobody resumes them now: PgBouncer holds every new client. (Probed on `postgres`
        // only: the held client makes PgBouncer start a server login that the pause closes,
        // and PgBouncer then delays that database's next logins by server_login_retry, 15 s.)
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(c.paused("appdb"), "1");
        assert!(
            c.bouncer_query_timeout("postgres", "SELECT 1", Duration::from_secs(2))
                .is_err(),
            "a killed database should hold its clients until RESUME"
        );

        let mut d = c.daemon(&cfg);
        d.wait_for(
            SHORT,
            "appdb and postgres resumed by the restarted rebouncer",
            |_| c.paused("appdb") == "0" && c.paused("postgres") == "0",
        );
        assert_eq!(c.bouncer_write("after").unwrap(), 2);
        d.wait_for(SHORT, "the state file no longer listing them", |_| {
            !held().contains("held ")
        });
    }

    /// A hook of debug builds (src/switch/hooks.rs): how long a switch waits between its
    /// confirmed `RELOAD` and its `KILL`s.
    const HOLD_AFTER_RELOAD: &str = "REBOUNCER_TEST_HOLD_AFTER_RELOAD_MS";

    /// pg2 is promoted while pg1 runs on: pg1 is a stale primary, and a session client through
    /// PgBouncer is still writing to it. The switch to pg2 records appdb as to be reset before
    /// its `RELOAD`; rebouncer is killed after the `RELOAD` and before the `KILL`. PgBouncer then
    /// routes new clients to pg2, so nothing looks wrong, but the session client stays on the
    /// stale primary. The next rebouncer reads the record and `KILL`s it off.
    #[test]
    fn a_rebouncer_killed_between_reload_and_kill_has_the_next_one_kill() {
        // Already on pg1, so the start-up needs no switch that the hook would hold.
        let c = Cluster::start(Opts::default().standbys(1).link(Link::Node(1)));
        let cfg = c.write_rebouncer_config(1, 2, "");
        let state = c.root().join("rebouncer.state");
        let file = || fs::read_to_string(&state).unwrap_or_default();

        let mut cmd = c.daemon_cmd(&cfg);
        cmd.env.push((HOLD_AFTER_RELOAD.into(), "600000".into()));
        let mut d = cmd.start();
        d.wait_for(SHORT, "PgBouncer on pg1 and a write landing there", |_| {
            c.bouncer_target_node() == Some(1) && c.bouncer_write("before") == Ok(1)
        });

        assert!(!d.log().contains("after RELOAD before KILL"), "{}", d.log());
        std::thread::scope(|s| {
            // A session client on pg1 (session pooling): its server connection is pg1's until
            // it disconnects or PgBouncer drops it.
            let session = s.spawn(|| {
                let at = std::time::Instant::now();
                let r = c.bouncer_query_timeout(
                    "appdb",
                    "SELECT pg_sleep(60)",
                    Duration::from_secs(90),
                );
                (r, at.elapsed())
            });
            std::thread::sleep(Duration::from_millis(500));
            c.promote(2);
            d.wait_log(SHORT, "holding 600000 ms after RELOAD before KILL");
            assert_eq!(c.bouncer_target_node(), Some(2), "RELOAD went through");
            let listed = file();
            assert!(
                listed.contains("reset appdb\n") && listed.contains("reset postgres\n"),
                "{listed}"
            );
            d.kill9();
            std::thread::sleep(Duration::from_secs(1));
            assert!(!session.is_finished(), "the session client is still on pg1");

            let mut d = c.daemon(&cfg);
            d.wait_log(SHORT, "as moved to a new server but not yet KILLed");
            d.wait_for(SHORT, "the state file no longer listing them", |_| {
                !file().contains("reset ") && !file().contains("held ")
            });
            let (r, took) = session.join().unwrap();
            assert!(
                r.is_err() && took < Duration::from_secs(40),
                "the session on the stale pg1 should have been dropped: {r:?} after {took:?}\n{}",
                d.log()
            );
            assert_eq!(c.bouncer_write("after").unwrap(), 2);
            assert_eq!(c.bouncer_target_node(), Some(2));
        });
    }
}

/// The hooks are in the binary these tests run, and in no release binary: a daemon started
/// by an init script that keeps the caller's environment must not be slowed down by them.
/// `cargo test` checks the first half, `cargo test --release --test crash_safety` the second.
#[test]
fn test_hooks_are_compiled_into_debug_builds_only() {
    let path = env!("CARGO_BIN_EXE_rebouncer");
    let bin = std::fs::read(path).unwrap();
    const PREFIX: &[u8] = b"REBOUNCER_TEST";
    // What follows each occurrence of the prefix, one pass over the binary.
    let found: Vec<&[u8]> = (0..bin.len().saturating_sub(PREFIX.len()))
        .filter(|&i| bin[i] == b'R' && bin[i..].starts_with(PREFIX))
        .map(|i| &bin[i..bin.len().min(i + 64)])
        .collect();
    for hook in [
        "REBOUNCER_TEST_HOLD_AFTER_KILL_MS",
        "REBOUNCER_TEST_HOLD_AFTER_RELOAD_MS",
    ] {
        assert_eq!(
            found.iter().any(|f| f.starts_with(hook.as_bytes())),
            cfg!(debug_assertions),
            "{hook} in {path} (a debug build: {})",
            cfg!(debug_assertions)
        );
    }
    if !cfg!(debug_assertions) {
        assert!(
            found.is_empty(),
            "the release binary {path} names a REBOUNCER_TEST variable: {:?}",
            found
                .iter()
                .map(|f| String::from_utf8_lossy(f))
                .collect::<Vec<_>>()
        );
    }
}
