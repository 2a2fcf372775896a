//! What a switch writes to the state file so that a rebouncer killed in the middle leaves
//! the next one enough to finish, and the steps that finish it.
//!
//! `KILL` leaves a database paused until `RESUME`, and the pause outlives the admin session
//! that made it (docs/pgbouncer.md): a rebouncer that dies between the two would hold
//! those clients forever. So before the `RELOAD` every database about to move is listed
//! as kill pending (its clients may still be on the old server) and, unless someone else
//! paused it, as resume pending (rebouncer must `RESUME` it). A database leaves the first
//! list once its `KILL` went through and the second once its `RESUME` did.
//! [`retry_kill_pending`] and [`resume_pending`] finish what an earlier attempt or an
//! earlier rebouncer left listed.
//! Only rebouncer's own: a database someone else paused (an operator's maintenance
//! `PAUSE`) is never resumed.

use std::fmt;
use std::path::PathBuf;

use crate::admin::{self, AdminError, Console, Database, quote_ident};
use crate::state::StateFile;

use super::console::{Conn, is_resumed, resume_gated};
use super::hooks::Holds;

/// What the `KILL`s and `RESUME`s of a switch (or of [`retry_kill_pending`]) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KillsAndResumes {
    /// Databases whose client and server connections were dropped (`KILL` went through).
    pub killed: Vec<String>,
    /// Databases that moved but whose `KILL` failed: their clients may stay on the old
    /// server. The state file lists them (`kill_pending`) until [`retry_kill_pending`] gets them through.
    pub kill_pending: Vec<String>,
    /// Databases an earlier attempt or an earlier rebouncer left resume pending, resumed now.
    pub resumed: Vec<String>,
    /// Databases still paused by rebouncer because `RESUME` failed; the state file lists
    /// them, and [`resume_pending`] at the next rounds resumes them.
    pub resume_pending: Vec<String>,
    /// Databases someone else had paused: `KILL`ed so that their clients leave the old
    /// server, but left paused for whoever paused them.
    pub left_paused: Vec<String>,
    /// One line each for the log (warning level): failed `KILL`/`RESUME`, the state file
    /// not written, databases left paused.
    pub warnings: Vec<String>,
}

/// Before the `RELOAD`: list the databases about to move as kill pending, and those whose
/// pause after the `KILL` will be rebouncer's to end (`ours`) as resume pending, so that a rebouncer
/// killed anywhere between the `RELOAD` and the `RESUME` leaves the next one enough to
/// finish. A warning for the log when the state file cannot be written; the switch goes on.
pub async fn record_before_reload(
    state: &mut StateFile,
    moved: &[String],
    ours: &[String],
) -> Option<String> {
    if moved.is_empty() {
        return None;
    }
    let (m, o) = (moved.to_vec(), ours.to_vec());
    let e = state
        .update(|s| {
            s.mark_kill_pending(m);
            s.mark_resume_pending(o);
        })
        .await
        .err()?;
    Some(format!(
        "{e}; the switch of database(s) {} goes ahead unrecorded: if rebouncer dies before their KILL and \
         RESUME, send KILL <db> and then RESUME <db> on the admin console by hand",
        moved.join(", ")
    ))
}

/// `KILL` (and then `RESUME`) the databases the state file lists as kill pending: their
/// clients may still be on the old server, because a switch's `KILL` failed or because a
/// rebouncer died between its `RELOAD` and its `KILL`. Also resumes whatever the state file
/// lists as resume pending. Databases PgBouncer no longer has are dropped from the list. `Err` only
/// when the admin console does not answer; nothing was sent then.
pub async fn retry_kill_pending<C: Console>(
    console: &C,
    state: &mut StateFile,
) -> Result<KillsAndResumes, AdminError> {
    let listed = state.state().kill_pending.clone();
    let session = console.session().await?;
    let now = admin::databases(&session).await?;
    let (present, gone): (Vec<String>, Vec<String>) = listed
        .into_iter()
        .partition(|db| now.iter().any(|d| d.name == *db));
    let held = state.state().resume_pending.clone();
    let mut r = kill_and_resume(
        console,
        Some(session),
        state,
        KillPlan {
            before: &held,
            moved: &present,
            now: &now,
            paused: &[],
        },
        Holds::from_env(),
    )
    .await;
    if !gone.is_empty()
        && let Err(e) = state
            .update(|s| s.kill_pending.retain(|d| !gone.contains(d)))
            .await
    {
        r.warnings.push(e.to_string());
    }
    Ok(r)
}

/// What [`resume_pending`] resumed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Databases resumed (or found not paused: PgBouncer restarted, or RESUMEd by hand).
    pub resumed: Vec<String>,
    /// The state file could not be updated afterwards; one line for the log.
    pub warning: Option<String>,
}

/// Databases rebouncer holds paused that it could not resume.
#[derive(Debug)]
pub struct ResumeError {
    /// Resumed before the failure.
    pub resumed: Vec<String>,
    /// Still paused, still listed in the state file.
    pub resume_pending: Vec<String>,
    pub state_file: PathBuf,
    pub error: AdminError,
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.resumed.is_empty() {
            write!(f, "resumed {}, but ", self.resumed.join(", "))?;
        }
        write!(
            f,
            "database(s) {} stay paused by rebouncer's KILL (listed in {}): RESUME failed: {}; \
             their new clients wait until it succeeds (retried every round; by hand: RESUME <db> on the admin console)",
            self.resume_pending.join(", "),
            self.state_file.display(),
            self.error
        )
    }
}

impl std::error::Error for ResumeError {}

/// `RESUME` every database the state file lists as resume pending: left by a rebouncer that died
/// between `KILL` and `RESUME`, or by a `RESUME` that failed. Call at start-up once the
/// admin console answers, and at every round while the state lists any. Nothing else is
/// resumed: a database someone else paused stays paused.
pub async fn resume_pending<C: Console>(
    console: &C,
    state: &mut StateFile,
) -> Result<Resumed, ResumeError> {
    resume_pending_with(console, state, &[]).await
}

/// [`resume_pending`], for a hold whose `PAUSE` of `paused` completed and whose master is
/// back: PgBouncer's cached login failure is cleared first (see `lift_login_retry` in `console.rs`).
pub async fn resume_paused<C: Console>(
    console: &C,
    state: &mut StateFile,
    paused: &[String],
) -> Result<Resumed, ResumeError> {
    resume_pending_with(console, state, paused).await
}

async fn resume_pending_with<C: Console>(
    console: &C,
    state: &mut StateFile,
    paused: &[String],
) -> Result<Resumed, ResumeError> {
    let held = state.state().resume_pending.clone();
    if held.is_empty() {
        return Ok(Resumed::default());
    }
    let mut conn = Conn {
        console,
        session: None,
    };
    let mut warnings = Vec::new();
    let (done, left, error) = resume_gated(&mut conn, &held, paused, &mut warnings).await;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let warning = forget(state, &done, &[]).await;
    match error {
        Some(error) if !left.is_empty() => Err(ResumeError {
            resumed: done,
            resume_pending: left,
            state_file: state.path().to_path_buf(),
            error,
        }),
        _ => Ok(Resumed {
            resumed: done,
            warning,
        }),
    }
}

/// What [`kill_and_resume`] works on.
pub struct KillPlan<'a> {
    /// The databases the state file listed as resume pending before this switch began: what an
    /// earlier attempt or an earlier rebouncer left paused.
    pub before: &'a [String],
    /// The databases to `KILL`.
    pub moved: &'a [String],
    /// PgBouncer's databases now.
    pub now: &'a [Database],
    /// The databases a failover `PAUSE` holds; they are resumed with PgBouncer's cached
    /// login failure cleared first.
    pub paused: &'a [String],
}

/// The databases of `moved` whose pause after the `KILL` is rebouncer's to end: all but
/// those someone else had paused already (paused, and not listed as resume pending).
pub fn paused_by_us(moved: &[String], held: &[String], now: &[Database]) -> Vec<String> {
    moved
        .iter()
        .filter(|db| held.contains(db) || !now.iter().any(|d| d.name == **db && d.paused))
        .cloned()
        .collect()
}

pub async fn kill_and_resume<C: Console>(
    console: &C,
    session: Option<C::Session>,
    state: &mut StateFile,
    plan: KillPlan<'_>,
    holds: Holds,
) -> KillsAndResumes {
    let KillPlan {
        before: pending_before,
        moved,
        now,
        paused,
    } = plan;
    let mut r = KillsAndResumes::default();
    let ours = paused_by_us(moved, pending_before, now);
    let theirs: Vec<String> = moved
        .iter()
        .filter(|db| !ours.contains(db))
        .cloned()
        .collect();
    let unrecorded: Vec<String> = ours
        .iter()
        .filter(|db| !state.state().resume_pending.contains(db))
        .cloned()
        .collect();
    if !unrecorded.is_empty() {
        let add = unrecorded.clone();
        let recorded = state.update(|s| s.mark_resume_pending(add)).await;
        if let Err(e) = recorded {
            // Clients must leave the old primary whether or not the record is on disk.
            r.warnings.push(format!(
                "{e}; KILL of database(s) {} goes ahead unrecorded: if rebouncer dies before their RESUME, \
                 RESUME them by hand on the admin console",
                unrecorded.join(", ")
            ));
        }
    }
    let mut conn = Conn { console, session };
    let mut resumed_with_kill = Vec::new();
    for db in moved {
        let kill = format!("KILL {}", quote_ident(db));
        // KILL and RESUME are pipelined on one session, so PgBouncer reads them together
        // and no client sees the database paused. A client that arrives while it is paused
        // makes PgBouncer start a server login that the pause closes at once ("closing
        // because: pause mode"); PgBouncer counts that as a failed login, and that
        // database's next logins then wait out server_login_retry (15 s by default;
        // measured with tests/crash_safety.rs's window held open: 13 s after the RESUME).
        let killed = if holds.pipelined() && ours.contains(db) {
            let resume = format!("RESUME {}", quote_ident(db));
            match conn.pair(&kill, &resume).await {
                Ok((killed, resumed)) => {
                    if is_resumed(&resumed) {
                        resumed_with_kill.push(db.clone());
                    }
                    killed
                }
                Err(e) => Err(e),
            }
        } else {
            conn.command(&kill).await
        };
        match killed {
            Ok(()) => {
                r.killed.push(db.clone());
                if theirs.contains(db) {
                    r.left_paused.push(db.clone());
                    r.warnings.push(format!(
                        "database {db} was paused by someone else, not by rebouncer: KILLed so that its clients \
                         leave the old server, but left paused; RESUME {db} on the admin console when it may go on"
                    ));
                }
            }
            Err(e) => {
                r.kill_pending.push(db.clone());
                r.warnings.push(format!(
                    "KILL of database {db} failed: {e}; its clients may stay on the old server, and new logins may \
                     wait out PgBouncer's server_login_retry; retried every round"
                ));
            }
        }
    }
    if !moved.is_empty() {
        holds.after_kill().await;
    }
    // A failed KILL may still have gone through (a lost answer), so it is resumed too:
    // "is not paused" then says it did not.
    let mut to_resume = pending_before.to_vec();
    for db in &ours {
        if !to_resume.contains(db) {
            to_resume.push(db.clone());
        }
    }
    to_resume.retain(|db| !resumed_with_kill.contains(db));
    let (mut done, left, error) =
        resume_gated(&mut conn, &to_resume, paused, &mut r.warnings).await;
    done.extend(resumed_with_kill);
    r.resumed = done
        .iter()
        .filter(|db| pending_before.contains(db))
        .cloned()
        .collect();
    r.warnings.extend(forget(state, &done, &r.killed).await);
    if let Some(e) = error.filter(|_| !left.is_empty()) {
        r.warnings.push(format!(
            "database(s) {} stay paused after KILL, RESUME failed: {e}; their new clients wait until it succeeds \
             (retried every round; by hand: RESUME <db> on the admin console)",
            left.join(", ")
        ));
    }
    r.resume_pending = left;
    r
}

/// Take resumed databases off the state file's `resume_pending` list and killed ones off
/// its `kill_pending` list, in one write; a warning if it cannot be written.
async fn forget(state: &mut StateFile, resumed: &[String], reset: &[String]) -> Option<String> {
    let listed = state.state();
    if !resumed.iter().any(|d| listed.resume_pending.contains(d))
        && !reset.iter().any(|d| listed.kill_pending.contains(d))
    {
        return None;
    }
    let (resumed_, reset_) = (resumed.to_vec(), reset.to_vec());
    match state
        .update(|s| {
            s.resume_pending.retain(|d| !resumed_.contains(d));
            s.kill_pending.retain(|d| !reset_.contains(d));
        })
        .await
    {
        Ok(()) => None,
        Err(e) => Some(format!(
            "{e}; the file still lists database(s) {} as paused or to be reset, so a restarted rebouncer would \
             send them KILL or RESUME again",
            {
                let mut all = resumed.to_vec();
                all.extend(reset.iter().filter(|d| !resumed.contains(d)).cloned());
                all.join(", ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::testing::*;

    #[tokio::test]
    async fn kill_is_recorded_in_the_state_file_before_it_is_sent_and_cleared_after_resume() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        let last = t.fake.databases();
        let db2 = t.db2.clone();
        let done = t.switch(&db2, Some(&last)).await.unwrap();

        assert!(done.relinked);
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
        assert!(done.kills.warnings.is_empty(), "{:?}", done.kills.warnings);
        assert_eq!(done.confirmed.len(), 2);
        assert!(done.confirmed.iter().all(|d| d.route.port == 5433));
        // A crash at the KILL would have left both listed, so a restart resumes them.
        let at_kill = t.fake.file_at("KILL").unwrap();
        assert!(
            at_kill.contains("held appdb\n") && at_kill.contains("held other\n"),
            "{at_kill}"
        );
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().resume_pending.is_empty());
        assert!(!t.state_on_disk().contains("held"), "{}", t.state_on_disk());
        // Each RESUME is sent right behind its KILL, before the KILL's answer.
        let log = t.fake.log();
        for db in ["appdb", "other"] {
            let k = log.iter().position(|c| *c == format!("KILL {db}")).unwrap();
            assert_eq!(log[k + 1], format!("RESUME {db}"), "{log:?}");
        }
    }

    #[tokio::test]
    async fn a_state_file_that_cannot_be_written_still_kills_and_says_so() {
        let mut t = setup();
        t.state = StateFile::load(&t.dir.path().join("missing/rebouncer.state")).unwrap();
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
        assert!(t.fake.paused().is_empty());
        let w = done.kills.warnings.join("\n");
        assert!(
            w.contains("cannot write state file")
                && w.contains("the switch of database(s) appdb, other goes ahead unrecorded"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn what_moves_is_recorded_before_the_reload_and_forgotten_after_kill_and_resume() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
        // A rebouncer killed after the RELOAD finds both: KILL what may still have
        // clients on the old server, RESUME what may still be paused.
        let at_reload = t.fake.file_at("RELOAD").unwrap_or_default();
        for line in [
            "held appdb\n",
            "held other\n",
            "reset appdb\n",
            "reset other\n",
        ] {
            assert!(at_reload.contains(line), "{line:?} missing:\n{at_reload}");
        }
        assert!(
            !t.state_on_disk().contains("held "),
            "{}",
            t.state_on_disk()
        );
        assert!(
            !t.state_on_disk().contains("reset "),
            "{}",
            t.state_on_disk()
        );
    }

    #[tokio::test]
    async fn a_switch_that_moves_nothing_records_nothing() {
        let mut t = setup();
        let db1 = t.db1.clone();
        t.fake.watch_file(t.state.path().to_path_buf());
        let done = t.switch(&db1, None).await.unwrap();
        assert!(done.kills.killed.is_empty());
        assert_eq!(
            t.fake.file_at("RELOAD").as_deref(),
            Some(""),
            "no state file written"
        );
    }

    #[tokio::test]
    async fn reset_drops_databases_pgbouncer_no_longer_has() {
        let mut t = setup();
        t.state
            .update(|s| s.mark_kill_pending(names(&["appdb", "dropped"])))
            .await
            .unwrap();
        let r = retry_kill_pending(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(r.killed, names(&["appdb"]));
        assert_eq!(t.fake.count("KILL"), 1);
        assert!(t.state.state().kill_pending.is_empty());
        assert!(t.fake.paused().is_empty());
    }

    #[tokio::test]
    async fn reset_sends_nothing_when_the_console_does_not_answer() {
        let mut t = setup();
        t.state
            .update(|s| s.mark_kill_pending(names(&["appdb"])))
            .await
            .unwrap();
        t.fake.set_up(false);
        let e = retry_kill_pending(&t.fake, &mut t.state).await.unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert_eq!(t.fake.count("KILL"), 0);
        assert!(t.state.state().resume_pending.is_empty());
        assert_eq!(
            t.state.state().kill_pending,
            names(&["appdb"]),
            "kept for the next try"
        );
    }

    #[tokio::test]
    async fn a_failed_kill_is_reported_and_retried_by_reset() {
        let mut t = setup();
        t.fake.fail_after("KILL appdb", "admin access needed", 0, 1);
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.kills.killed, names(&["other"]));
        assert_eq!(done.kills.kill_pending, names(&["appdb"]));
        assert!(
            done.kills
                .warnings
                .iter()
                .any(|w| w.starts_with("KILL of database appdb failed: ")),
            "{:?}",
            done.kills.warnings
        );
        // Its RESUME was tried anyway ("not paused": the KILL did not get through).
        assert!(t.state.state().resume_pending.is_empty());
        assert!(t.fake.paused().is_empty());
        // A restarted rebouncer would know too.
        assert!(
            t.state_on_disk().contains("reset appdb\n"),
            "{}",
            t.state_on_disk()
        );
        assert!(
            !t.state_on_disk().contains("reset other"),
            "{}",
            t.state_on_disk()
        );

        let again = retry_kill_pending(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(again.killed, names(&["appdb"]));
        assert!(again.kill_pending.is_empty());
        assert_eq!(t.fake.count("KILL appdb"), 2);
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().resume_pending.is_empty());
        assert!(t.state.state().kill_pending.is_empty());
        assert!(
            !t.state_on_disk().contains("reset "),
            "{}",
            t.state_on_disk()
        );
    }

    #[tokio::test]
    async fn a_failed_resume_stays_held_until_resume_held_gets_through() {
        let mut t = setup();
        t.fake.fail("RESUME", Some("timeout"));
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.kills.resume_pending, names(&["appdb", "other"]));
        assert!(
            done.kills
                .warnings
                .iter()
                .any(|w| w
                    .starts_with("database(s) appdb, other stay paused after KILL, RESUME failed")),
            "{:?}",
            done.kills.warnings
        );
        assert_eq!(t.fake.paused(), names(&["appdb", "other"]));
        assert!(t.state_on_disk().contains("held appdb\nheld other\n"));

        let e = resume_pending(&t.fake, &mut t.state).await.unwrap_err();
        assert_eq!(e.resume_pending, names(&["appdb", "other"]));
        assert!(
            e.to_string().starts_with(
                "database(s) appdb, other stay paused by rebouncer's KILL (listed in "
            ),
            "{e}"
        );
        t.fake.fail("RESUME", None);
        let ok = resume_pending(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(ok.resumed, names(&["appdb", "other"]));
        assert!(t.fake.paused().is_empty());
        assert!(!t.state_on_disk().contains("held"));
        // Nothing held: not even a login.
        let logins = t.fake.count("LOGIN");
        assert_eq!(
            resume_pending(&t.fake, &mut t.state).await.unwrap(),
            Resumed::default()
        );
        assert_eq!(t.fake.count("LOGIN"), logins);
    }

    #[tokio::test]
    async fn resume_held_resumes_only_what_the_state_lists() {
        let mut t = setup();
        // A rebouncer killed after `KILL appdb`; an operator paused `other` for maintenance.
        t.fake.pause_by_hand("appdb");
        t.fake.pause_by_hand("other");
        t.state
            .update(|s| s.resume_pending = names(&["appdb"]))
            .await
            .unwrap();
        let again = StateFile::load(t.state.path()).unwrap();
        let mut t2_state = again;
        let done = resume_pending(&t.fake, &mut t2_state).await.unwrap();
        assert_eq!(done.resumed, names(&["appdb"]));
        assert_eq!(t.fake.paused(), names(&["other"]));
        assert_eq!(t.fake.count("RESUME"), 1);
        assert!(t2_state.state().resume_pending.is_empty());
        assert!(!t.state_on_disk().contains("held"));
    }

    #[tokio::test]
    async fn a_held_database_gone_from_pgbouncer_is_forgotten() {
        let mut t = setup();
        t.state
            .update(|s| s.resume_pending = names(&["gone"]))
            .await
            .unwrap();
        let done = resume_pending(&t.fake, &mut t.state).await.unwrap();
        assert_eq!(done.resumed, names(&["gone"]));
        assert!(t.state.state().resume_pending.is_empty());
    }

    #[tokio::test]
    async fn a_switch_resumes_what_an_earlier_attempt_left_held() {
        let mut t = setup();
        t.fake.pause_by_hand("appdb");
        t.state
            .update(|s| s.resume_pending = names(&["appdb"]))
            .await
            .unwrap();
        // Nothing moves (the link already points at db1), but appdb is ours to resume.
        let db1 = t.db1.clone();
        let done = t.switch(&db1, None).await.unwrap();
        assert!(done.kills.killed.is_empty());
        assert_eq!(done.kills.resumed, names(&["appdb"]));
        assert!(t.fake.paused().is_empty());
        assert!(t.state.state().resume_pending.is_empty());
    }

    #[tokio::test]
    async fn a_database_someone_else_paused_is_killed_but_left_paused() {
        let mut t = setup();
        t.fake.watch_file(t.state.path().to_path_buf());
        t.fake.pause_by_hand("other");
        let db2 = t.db2.clone();
        let done = t.switch(&db2, None).await.unwrap();
        assert_eq!(done.kills.killed, names(&["appdb", "other"]));
        assert_eq!(done.kills.left_paused, names(&["other"]));
        assert_eq!(t.fake.paused(), names(&["other"]));
        assert_eq!(t.fake.count("RESUME other"), 0);
        assert!(
            done.kills.warnings[0].starts_with("database other was paused by someone else"),
            "{:?}",
            done.kills.warnings
        );
        // Not ours to resume, so not recorded: a restarted rebouncer must leave it paused.
        assert_eq!(t.fake.file_at("KILL").unwrap().matches("held ").count(), 1);
        assert!(t.fake.file_at("KILL").unwrap().contains("held appdb\n"));
        assert!(t.state.state().resume_pending.is_empty());
    }
}
