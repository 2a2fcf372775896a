//! The state file: the little rebouncer must remember across restarts.
//!
//! - The highest timeline a master reached in each cluster (by system identifier), so that
//!   an old primary that comes back after rebouncer itself restarted is still known as
//!   stale. A standby's timeline is never written here: a standby ahead of every master
//!   fences only while it reports it (see `decide`).
//! - The databases a switch sent `KILL` (or `PAUSE`) to and has not yet resumed: a rebouncer
//!   killed between the two would otherwise leave PgBouncer holding those clients forever.
//! - The databases a switch moved to a new server and has not yet `KILL`ed: a rebouncer
//!   killed between the `RELOAD` and the `KILL` would otherwise leave session clients on
//!   the old server, which may be a stale primary still taking writes.
//!
//! The file is small text, replaced atomically (a new file beside it, fsync, rename, fsync
//! of the directory), so a crash leaves either the old or the new version. Writing it can
//! fail (a drop-in upgrade may have no state directory yet): rebouncer then goes on with
//! the memory in RAM and says so on the status pages.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use crate::node::{Highest, SystemId, Timelines};

/// The default directory when neither the config nor systemd's `STATE_DIRECTORY` names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rebouncer";
/// The file name inside the state directory.
pub const STATE_FILE_NAME: &str = "rebouncer.state";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The highest timeline a master reached, per cluster identity.
    pub timelines: Timelines,
    /// Databases rebouncer paused (`KILL` or `PAUSE`) and has not resumed yet: the lines
    /// `held <db>` of the file.
    pub resume_pending: Vec<String>,
    /// Databases a switch moved whose `KILL` has not gone through yet: their clients may
    /// still be on the old server. The lines `reset <db>` of the file.
    pub kill_pending: Vec<String>,
}

impl State {
    /// Remember `timeline` for `system` if it is higher than what is known; true if it was.
    pub fn raise(&mut self, system: SystemId, timeline: u32) -> bool {
        self.timelines.raise(system, timeline)
    }

    /// Record databases rebouncer paused and must `RESUME`, each once.
    pub fn mark_resume_pending(&mut self, databases: impl IntoIterator<Item = String>) {
        for db in databases {
            if !self.resume_pending.contains(&db) {
                self.resume_pending.push(db);
            }
        }
    }

    /// Record databases whose `KILL` must still go through, each once.
    pub fn mark_kill_pending(&mut self, databases: impl IntoIterator<Item = String>) {
        for db in databases {
            if !self.kill_pending.contains(&db) {
                self.kill_pending.push(db);
            }
        }
    }

    /// The file's text. The lists are written with the words `held` and `reset`, not
    /// `resume_pending` and `kill_pending`: a rebouncer of an earlier version refuses a file
    /// with a line it does not know, and an operator who rolls back must still be able to
    /// start it on this file (docs/state-file.md).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# rebouncer state file: what rebouncer remembers across restarts.\n\
             # Written by rebouncer; read the README (\"The state file\") before editing it.\n",
        );
        for h in self.timelines.iter() {
            match h.system {
                Some(id) => out += &format!("timeline system={id} highest={}\n", h.timeline),
                None => out += &format!("timeline system=unknown highest={}\n", h.timeline),
            }
        }
        for db in &self.resume_pending {
            out += &format!("{} {db}\n", RESUME_PENDING_WORDS[0]);
        }
        for db in &self.kill_pending {
            out += &format!("{} {db}\n", KILL_PENDING_WORDS[0]);
        }
        out
    }

    /// Read the file's text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<State, StateError> {
        let mut state = State::default();
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| StateError::Corrupt {
                path: path.to_path_buf(),
                line: no + 1,
                why: why.to_string(),
            };
            // Both words of each list are read, so that a later version may write the
            // newer ones without breaking a rollback to this one.
            if let Some(db) = strip_word(line, RESUME_PENDING_WORDS) {
                state.mark_resume_pending([db.to_string()]);
            } else if let Some(db) = strip_word(line, KILL_PENDING_WORDS) {
                state.mark_kill_pending([db.to_string()]);
            } else if let Some(rest) = line.strip_prefix("timeline ") {
                let mut system = None;
                let mut highest = None;
                for word in rest.split_whitespace() {
                    match word.split_once('=') {
                        Some(("system", "unknown")) => system = Some(None),
                        Some(("system", v)) => {
                            system = Some(Some(
                                v.parse::<u64>()
                                    .map_err(|_| bad("system= is not a number"))?,
                            ))
                        }
                        Some(("highest", v)) => {
                            highest = Some(
                                v.parse::<u32>()
                                    .map_err(|_| bad("highest= is not a timeline number"))?,
                            )
                        }
                        _ => return Err(bad("expected system=<id> highest=<timeline>")),
                    }
                }
                match (system, highest) {
                    (Some(system), Some(timeline)) => {
                        state.raise(system, timeline);
                    }
                    _ => return Err(bad("expected system=<id> highest=<timeline>")),
                }
            } else {
                return Err(bad("unknown entry"));
            }
        }
        Ok(state)
    }
}

/// The line words of the `resume_pending` list: the first is written, all are read.
const RESUME_PENDING_WORDS: &[&str] = &["held", "resume_pending"];
/// The line words of the `kill_pending` list: the first is written, all are read.
const KILL_PENDING_WORDS: &[&str] = &["reset", "kill_pending"];

/// The database a line `<word> <db>` names, for any of `words`.
fn strip_word<'a>(line: &'a str, words: &[&str]) -> Option<&'a str> {
    words.iter().find_map(|w| {
        line.strip_prefix(w)
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map(str::trim)
    })
}

#[derive(Debug)]
pub enum StateError {
    Read {
        path: PathBuf,
        error: io::Error,
    },
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
    Write {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Read { path, error } => write!(
                f,
                "cannot read state file {}: {error}; fix its permissions for the user rebouncer runs as",
                path.display()
            ),
            StateError::Corrupt { path, line, why } => write!(
                f,
                "state file {}:{line}: {why}; rebouncer writes this file itself: move it aside to start \
                 with no memory of timelines (see the README, \"The state file\")",
                path.display()
            ),
            StateError::Write { path, error } => write!(
                f,
                "cannot write state file {}: {error}; timelines and held databases are remembered only \
                 until rebouncer stops (create the directory, writable for the user rebouncer runs as, \
                 or set state_file in [global])",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// How long a write may take before it is reported as failed, until
/// [`StateFile::bound_writes`] sets another bound.
const DEFAULT_WRITE_BOUND: Duration = Duration::from_secs(5);

/// The state and where it lives.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: State,
    /// The last write failure, until a write succeeds.
    write_error: Option<String>,
    /// A write that takes longer (a hung disk, a stuck NFS mount) is reported as failed,
    /// so the loop goes on; it keeps running on its blocking thread.
    write_bound: Duration,
    /// Set while a write runs, including one that outlived its bound: no second write
    /// starts until it returns, so an old text can never land after a newer one.
    writing: Arc<AtomicBool>,
    /// When this run saw each database of `resume_pending` listed: it is recorded before
    /// the `PAUSE` or `KILL` that pauses it, so its pause began no earlier. What the file
    /// listed at start counts from the start: the file says what is paused, not since when.
    listed_since: Vec<(String, Instant)>,
}

impl StateFile {
    /// Read the file; a missing file is an empty state (first start, or a drop-in upgrade).
    pub fn load(path: &Path) -> Result<StateFile, StateError> {
        let state = match fs::read_to_string(path) {
            Ok(text) => State::parse(path, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(error) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let mut file = StateFile {
            path: path.to_path_buf(),
            state,
            write_error: None,
            write_bound: DEFAULT_WRITE_BOUND,
            writing: Arc::new(AtomicBool::new(false)),
            listed_since: Vec::new(),
        };
        file.note_listed();
        Ok(file)
    }

    /// Each database the state lists as resume pending, with when this run first saw it
    /// listed (since it was last not listed).
    pub fn listed_since(&self) -> &[(String, Instant)] {
        &self.listed_since
    }

    /// Keep [`StateFile::listed_since`] in step with `resume_pending`. On tokio's clock,
    /// which the tests pause and advance.
    fn note_listed(&mut self) {
        let now = tokio::time::Instant::now().into_std();
        let listed = &self.state.resume_pending;
        self.listed_since.retain(|(db, _)| listed.contains(db));
        for db in listed {
            if !self.listed_since.iter().any(|(d, _)| d == db) {
                self.listed_since.push((db.clone(), now));
            }
        }
    }

    /// Report a write that has not returned after `bound` as failed.
    pub fn bound_writes(&mut self, bound: Duration) {
        self.write_bound = bound;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Why the last write failed, while it does.
    pub fn write_error(&self) -> Option<&str> {
        self.write_error.as_deref()
    }

    /// Change the state and, if it changed, write it out before returning (off the async
    /// threads). The change is kept in memory even when the write fails.
    pub async fn update(&mut self, change: impl FnOnce(&mut State)) -> Result<(), StateError> {
        let mut next = self.state.clone();
        change(&mut next);
        if next == self.state && self.write_error.is_none() {
            return Ok(());
        }
        self.state = next;
        self.note_listed();
        self.write().await
    }

    /// Change the state only if the change can be written: on failure the state is what
    /// it was before. For a record that must be on disk before its action is taken (a
    /// pause that a killed rebouncer would otherwise leave behind).
    pub async fn update_or_undo(
        &mut self,
        change: impl FnOnce(&mut State),
    ) -> Result<(), StateError> {
        let before = (self.state.clone(), self.listed_since.clone());
        let result = self.update(change).await;
        if result.is_err() {
            (self.state, self.listed_since) = before;
        }
        result
    }

    /// Write the state as it is, changed or not: the retry of a write that failed.
    pub async fn rewrite(&mut self) -> Result<(), StateError> {
        self.write().await
    }

    async fn write(&mut self) -> Result<(), StateError> {
        let result = if self.writing.swap(true, Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an earlier write has not returned yet (a hung disk or file system?)",
            ))
        } else {
            let (path, text) = (self.path.clone(), self.state.render());
            let writing = self.writing.clone();
            let job = tokio::task::spawn_blocking(move || {
                let r = write_atomically(&path, &text);
                writing.store(false, Ordering::SeqCst);
                r
            });
            match tokio::time::timeout(self.write_bound, job).await {
                Ok(joined) => joined.unwrap_or_else(|e| Err(io::Error::other(e.to_string()))),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the write did not return within {} ms (a hung disk or file system?)",
                        self.write_bound.as_millis()
                    ),
                )),
            }
        };
        match result {
            Ok(()) => {
                self.write_error = None;
                Ok(())
            }
            Err(error) => {
                let e = StateError::Write {
                    path: self.path.clone(),
                    error,
                };
                self.write_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_keeps_the_highest_timeline_per_cluster() {
        let mut s = State::default();
        assert!(s.raise(Some(7), 2));
        assert!(!s.raise(Some(7), 1));
        assert!(s.raise(Some(7), 3));
        assert_eq!(s.timelines.highest(Some(7)), Some(3));
    }

    #[test]
    fn pending_resumes_and_kills_are_recorded_once_each_in_order() {
        let mut s = State::default();
        s.mark_resume_pending([
            "appdb".to_string(),
            "other".to_string(),
            "appdb".to_string(),
        ]);
        s.mark_resume_pending(["other".to_string(), "third".to_string()]);
        assert_eq!(s.resume_pending, ["appdb", "other", "third"]);
        s.mark_kill_pending(["b".to_string(), "a".to_string(), "b".to_string()]);
        assert_eq!(s.kill_pending, ["b", "a"]);
    }

    #[tokio::test]
    async fn state_survives_a_write_and_a_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rebouncer.state");
        let mut f = StateFile::load(&path).unwrap();
        assert_eq!(f.state(), &State::default());
        f.update(|s| {
            s.raise(Some(7312345678901234567), 3);
            s.raise(None, 2);
            s.resume_pending = vec!["appdb".into(), "App-DB".into()];
            s.mark_kill_pending([
                "appdb".to_string(),
                "appdb".to_string(),
                "other".to_string(),
            ]);
        })
        .await
        .unwrap();
        assert_eq!(f.write_error(), None);
        let again = StateFile::load(&path).unwrap();
        assert_eq!(again.state(), f.state());
        assert_eq!(again.state().kill_pending, ["appdb", "other"]);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_memory_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("missing-dir/rebouncer.state");
        let mut f = StateFile::load(&path).unwrap();
        let e = f
            .update(|s| s.resume_pending.push("appdb".into()))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot write state file"), "{e}");
        assert_eq!(f.state().resume_pending, vec!["appdb".to_string()]);
        assert_eq!(f.write_error(), Some(e.to_string().as_str()));
    }

    #[tokio::test(start_paused = true)]
    async fn each_held_database_is_known_since_it_was_last_listed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rebouncer.state");
        fs::write(&path, "held left\n").unwrap();
        let t0 = tokio::time::Instant::now().into_std();
        let mut f = StateFile::load(&path).unwrap();
        let since = |f: &StateFile| -> Vec<(String, Duration)> {
            f.listed_since()
                .iter()
                .map(|(db, at)| (db.clone(), at.duration_since(t0)))
                .collect()
        };
        let secs = |db: &str, s: u64| (db.to_string(), Duration::from_secs(s));
        // Left by an earlier run: known since this one started.
        assert_eq!(since(&f), [secs("left", 0)]);
        tokio::time::advance(Duration::from_secs(3)).await;
        f.update(|s| s.mark_resume_pending(["appdb".to_string(), "left".to_string()]))
            .await
            .unwrap();
        assert_eq!(since(&f), [secs("left", 0), secs("appdb", 3)]);
        tokio::time::advance(Duration::from_secs(2)).await;
        f.update(|s| s.resume_pending.retain(|db| db != "left"))
            .await
            .unwrap();
        assert_eq!(since(&f), [secs("appdb", 3)]);
        f.update(|s| s.mark_resume_pending(["left".to_string()]))
            .await
            .unwrap();
        assert_eq!(since(&f), [secs("appdb", 3), secs("left", 5)]);

        // A record undone because it could not be written was never listed.
        let mut f = StateFile::load(&d.path().join("missing-dir/rebouncer.state")).unwrap();
        assert!(
            f.update_or_undo(|s| s.mark_resume_pending(["appdb".to_string()]))
                .await
                .is_err()
        );
        assert!(f.listed_since().is_empty());
    }

    #[test]
    fn an_unreadable_state_file_is_refused_not_taken_for_a_first_start() {
        // Read as "no file yet", it would start with no fence, unnoticed.
        let d = tempfile::tempdir().unwrap();
        let e = StateFile::load(d.path()).unwrap_err().to_string();
        assert!(e.starts_with("cannot read state file"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_change_that_must_be_on_disk_is_undone() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("missing-dir/rebouncer.state");
        let mut f = StateFile::load(&path).unwrap();
        assert!(
            f.update_or_undo(|s| s.mark_resume_pending(["appdb".to_string()]))
                .await
                .is_err()
        );
        assert!(f.state().resume_pending.is_empty());
        assert!(f.write_error().is_some());
        fs::create_dir(d.path().join("missing-dir")).unwrap();
        f.rewrite().await.unwrap();
        assert!(f.write_error().is_none());
        assert!(path.exists(), "the retry writes the file");
    }

    /// Reads the FIFO a write hangs on when dropped, so that a failed assertion ends the
    /// test instead of hanging it: the runtime waits for its blocking threads to return.
    struct Unblock(PathBuf);

    impl Drop for Unblock {
        fn drop(&mut self) {
            let fifo = self.0.clone();
            let (opened, wait) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // Waits for a writer; fails at once when the write renamed the FIFO away.
                if let Ok(mut f) = fs::File::open(&fifo) {
                    let _ = opened.send(());
                    let _ = std::io::Read::read_to_end(&mut f, &mut Vec::new());
                }
            });
            // Before the temporary directory goes, and the FIFO with it: a hung writer
            // meets its reader at once.
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }

    /// A write that hangs (here: its temporary file is a FIFO nobody reads) is reported as
    /// failed once its bound passes, and no second write starts until it returns.
    #[tokio::test]
    async fn a_write_that_hangs_is_reported_like_one_that_failed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rebouncer.state");
        let tmp = d
            .path()
            .join(format!(".rebouncer.state.tmp.{}", std::process::id()));
        let made = std::process::Command::new("mkfifo")
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(made.success());
        let _unblock = Unblock(tmp.clone());
        let mut f = StateFile::load(&path).unwrap();
        f.bound_writes(Duration::from_millis(200));
        let e = f
            .update(|s| {
                s.raise(Some(1), 2);
            })
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot write state file"), "{e}");
        assert!(
            e.to_string().contains("did not return within 200 ms"),
            "{e}"
        );
        assert!(f.write_error().is_some());
        let e = f.rewrite().await.unwrap_err();
        assert!(
            e.to_string().contains("earlier write has not returned"),
            "{e}"
        );
        // Let the hung write go on: it reads the FIFO's other end, then renames.
        let reader = std::thread::spawn(move || fs::read_to_string(&tmp));
        reader.join().unwrap().unwrap();
        for _ in 0..100 {
            if f.rewrite().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(f.write_error().is_none(), "{:?}", f.write_error());
        assert_eq!(
            StateFile::load(&path)
                .unwrap()
                .state()
                .timelines
                .highest(Some(1)),
            Some(2)
        );
    }

    /// A file written by the previous version (`held`, `reset`) reads into the two lists,
    /// and is written back line for line.
    #[test]
    fn a_file_with_the_old_words_round_trips() {
        let text = "# rebouncer state file: what rebouncer remembers across restarts.\n\
                    # Written by rebouncer; read the README (\"The state file\") before editing it.\n\
                    timeline system=7312345678901234567 highest=3\n\
                    held appdb\n\
                    held other\n\
                    reset appdb\n";
        let s = State::parse(Path::new("x"), text).unwrap();
        assert_eq!(s.resume_pending, ["appdb", "other"]);
        assert_eq!(s.kill_pending, ["appdb"]);
        assert_eq!(s.timelines.highest(Some(7312345678901234567)), Some(3));
        assert_eq!(s.render(), text);
    }

    /// The newer words are read too, and written as the old ones: an earlier version,
    /// which refuses any line it does not know, can still read what this one wrote.
    #[test]
    fn a_file_with_the_new_words_is_read_and_written_with_the_old_ones() {
        let text = "timeline system=unknown highest=2\n\
                    resume_pending appdb\n\
                    kill_pending appdb\n\
                    kill_pending other\n\
                    held third\n\
                    reset other\n";
        let s = State::parse(Path::new("x"), text).unwrap();
        assert_eq!(s.resume_pending, ["appdb", "third"]);
        assert_eq!(s.kill_pending, ["appdb", "other"]);
        let out = s.render();
        assert!(
            out.contains("held appdb\nheld third\nreset appdb\nreset other\n"),
            "{out}"
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                ["timeline ", "held ", "reset "]
                    .iter()
                    .any(|w| line.starts_with(w)),
                "an earlier rebouncer would refuse the line {line:?}"
            );
        }
        assert_eq!(State::parse(Path::new("x"), &out).unwrap(), s);
    }

    #[test]
    fn a_word_must_be_followed_by_a_database() {
        let e = State::parse(Path::new("x"), "kill_pendingappdb\n").unwrap_err();
        assert!(e.to_string().contains("x:1: unknown entry"), "{e}");
    }

    #[test]
    fn a_corrupt_line_is_named() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rebouncer.state");
        fs::write(&path, "# c\ntimeline system=12 highest=x\n").unwrap();
        let e = StateFile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("rebouncer.state:2: highest= is not a timeline number"),
            "{e}"
        );
    }
}
