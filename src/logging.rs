//! One line per event with a local timestamp, to stdout or appended to `-logfile`.
//!
//! Lines are handed to a writer thread through a bounded queue, so a slow or hung disk
//! (or a stalled journald pipe) never stops the loop that checks the servers: the daemon
//! has one runtime thread, and a failover must not wait for a log line. The queue is
//! lossy: when it is full the line is dropped rather than the loop blocked, and the next
//! line that gets through is preceded by one saying how many were dropped. A queue that
//! holds [`QUEUED_LINES`] lines is only full when the disk has stopped taking writes, and
//! then an operator needs the failover more than the lines. The lines lost are also
//! tallied ([`DropTally`]) for the status pages, since the log is the one place that
//! cannot be trusted to say so.
//!
//! The file is opened in append mode (so logrotate's `copytruncate` leaves no hole of NUL
//! bytes) and can be reopened on SIGHUP (for logrotate's default rename-then-signal).
//! tracing-appender cannot reopen a file, hence this small writer under its queue.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::time::ChronoLocal;

/// Lines waiting for the writer thread at most. The daemon writes a few lines a minute
/// and a few dozen around a failover; the queue's slots are allocated up front, so a
/// larger one would cost resident memory for nothing.
pub const QUEUED_LINES: usize = 1024;

/// The Go tool's timestamp format, so existing log readers keep working.
const TIME_FORMAT: &str = "%Y/%m/%d %H:%M:%S";

/// The log file, shared between the writer thread and whoever reopens it.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    /// A write failed and nothing was written since (said once on stderr).
    failing: Arc<AtomicBool>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
            failing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Start writing to a new file at the same path (after logrotate renamed the old one).
    /// Lines still queued when it is called go to the new file.
    pub fn reopen(&self) -> io::Result<()> {
        let f = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = f;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf);
        // The writer thread has nowhere else to say it: stderr reaches the journal or
        // the terminal, once when writes start failing and once when they work again.
        match &r {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => eprintln!(
                "rebouncer: cannot write to log file {}: {e}; log lines are lost until it works again (disk full? permissions?)",
                self.path.display()
            ),
            Ok(_) if self.failing.swap(false, Ordering::Relaxed) => eprintln!(
                "rebouncer: writing to log file {} again",
                self.path.display()
            ),
            _ => {}
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// Log lines dropped since start, and when the last of them was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedLines {
    pub lines: u64,
    /// When the queue writer noticed the last drop: right after the write that was
    /// dropped.
    pub last: Option<SystemTime>,
}

/// The count of dropped log lines, kept by the queue and read by the status pages when
/// they are rendered: drops happen when the loop is busiest, and they must show without
/// waiting for the loop to publish a new view.
#[derive(Clone, Debug, Default)]
pub struct DropTally(Arc<Mutex<DroppedLines>>);

impl DropTally {
    pub fn read(&self) -> DroppedLines {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `lines` have been dropped in all so far; stamped now when that is more than known.
    pub fn record(&self, lines: u64) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines > t.lines {
            t.lines = lines;
            t.last = Some(SystemTime::now());
        }
    }
}

#[cfg(test)]
impl DropTally {
    /// A tally that says `d`, for the pages' tests.
    pub fn saying(d: DroppedLines) -> DropTally {
        DropTally(Arc::new(Mutex::new(d)))
    }
}

/// The tally of the process's log, the one [`init`] counts into; every view starts with it.
pub fn tally() -> DropTally {
    static TALLY: LazyLock<DropTally> = LazyLock::new(DropTally::default);
    TALLY.clone()
}

/// The subscriber's end of the queue: hands lines to the writer thread without waiting,
/// and says how many were dropped when the queue had been full.
#[derive(Clone)]
pub struct QueueWriter {
    queue: NonBlocking,
    dropped: ErrorCounter,
    books: Arc<Mutex<Dropped>>,
    tally: DropTally,
}

/// The queue counts every entry it drops, the notes about dropped lines included.
#[derive(Debug, Default)]
struct Dropped {
    /// Log lines dropped that a note in the log has already counted.
    said: usize,
    /// Notes dropped themselves (they are not log lines lost).
    notes: usize,
}

/// A writer thread for `out` and the queue to it, counting the lines it drops into
/// `tally`. Lines still queued are written when the guard is dropped (waiting a second at
/// most), so keep it until the process ends.
pub fn queue<W: Write + Send + 'static>(
    out: W,
    lines: usize,
    tally: DropTally,
) -> (QueueWriter, WorkerGuard) {
    let (queue, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(true)
        .thread_name("rebouncer-log")
        .finish(out);
    let dropped = queue.error_counter();
    let writer = QueueWriter {
        queue,
        dropped,
        books: Arc::default(),
        tally,
    };
    (writer, guard)
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = self.dropped.dropped_lines();
        let lines = dropped.saturating_sub(books.notes);
        if lines > books.said {
            let note = format!(
                "{}  WARN {} log line(s) dropped here: the log could not be written as fast as they came (a slow, hung or full disk?)\n",
                chrono::Local::now().format(TIME_FORMAT),
                lines - books.said
            );
            self.queue.write_all(note.as_bytes())?;
            if self.dropped.dropped_lines() == dropped {
                books.said = lines;
            } else {
                // Still full: the next line tries again.
                books.notes += 1;
            }
        }
        let written = self.queue.write(buf);
        // Under the books' lock, so no other writer's note is counted as a line.
        let lines = self.dropped.dropped_lines().saturating_sub(books.notes);
        self.tally.record(lines as u64);
        written
    }
    fn flush(&mut self) -> io::Result<()> {
        self.queue.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;
    fn make_writer(&'a self) -> QueueWriter {
        self.clone()
    }
}

/// What [`init`] set up: the log file for SIGHUP, and the writer thread's guard, which
/// writes out the lines still queued when it is dropped.
pub struct Logging {
    pub file: Option<LogFile>,
    _guard: WorkerGuard,
}

/// Install the global subscriber.
pub fn init(logfile: Option<&Path>) -> io::Result<Logging> {
    let builder = tracing_subscriber::fmt()
        .with_timer(ChronoLocal::new(TIME_FORMAT.to_string()))
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    match logfile {
        Some(path) => {
            let file = LogFile::open(path)?;
            let (writer, guard) = queue(file.clone(), QUEUED_LINES, tally());
            builder.with_ansi(false).with_writer(writer).init();
            Ok(Logging {
                file: Some(file),
                _guard: guard,
            })
        }
        None => {
            // Colour only for a person at a terminal, never into a pipe or journald.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let (writer, guard) = queue(io::stdout(), QUEUED_LINES, tally());
            builder.with_ansi(ansi).with_writer(writer).init();
            Ok(Logging {
                file: None,
                _guard: guard,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn after_a_rename_reopen_writes_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rebouncer.log");
        let rotated = dir.path().join("rebouncer.log.1");
        let file = LogFile::open(&path).unwrap();
        let (mut w, guard) = queue(file.clone(), 16, DropTally::default());
        w.write_all(b"one\n").unwrap();
        wait_until("the first line written", || read(&path) == "one\n");
        // logrotate's `create`: rename, then SIGHUP. Until the reopen, lines follow the
        // open file to its new name.
        std::fs::rename(&path, &rotated).unwrap();
        w.write_all(b"two\n").unwrap();
        wait_until("the second line in the renamed file", || {
            read(&rotated) == "one\ntwo\n"
        });
        assert!(!path.exists());
        file.reopen().unwrap();
        w.write_all(b"three\n").unwrap();
        drop(guard);
        assert_eq!(read(&path), "three\n");
        assert_eq!(read(&rotated), "one\ntwo\n");
    }

    #[test]
    fn lines_still_queued_are_written_when_the_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rebouncer.log");
        let (mut w, guard) = queue(LogFile::open(&path).unwrap(), 1000, DropTally::default());
        // One write per line, as the subscriber does.
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let text = read(&path);
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("line 999\n"));
    }

    /// A disk that stops taking writes until `release` is unlocked.
    #[derive(Clone)]
    struct Stuck {
        release: Arc<Mutex<()>>,
        writing: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writing.store(true, Ordering::SeqCst);
            let _wait = self.release.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_lines_without_waiting_and_says_how_many() {
        let stuck = Stuck {
            release: Arc::new(Mutex::new(())),
            writing: Arc::new(AtomicBool::new(false)),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let hold = stuck.release.lock().unwrap();
        let tally = DropTally::default();
        let (mut w, guard) = queue(stuck.clone(), 4, tally.clone());
        // The writer thread takes the first line and hangs on it; four more fill the
        // queue; the rest are dropped, and writing them does not wait.
        w.write_all(b"first\n").unwrap();
        wait_until("the writer thread hangs on the first line", || {
            stuck.writing.load(Ordering::SeqCst)
        });
        for _ in 0..4 {
            w.write_all(b"queued\n").unwrap();
        }
        assert_eq!(w.dropped.dropped_lines(), 0);
        assert_eq!(tally.read(), DroppedLines::default());
        let before = SystemTime::now();
        let t = Instant::now();
        for _ in 0..100 {
            w.write_all(b"lost\n").unwrap();
        }
        eprintln!("100 lines into a full queue took {:?}", t.elapsed());
        let dropped = w.dropped.dropped_lines();
        assert_eq!(dropped - w.books.lock().unwrap().notes, 100);
        let seen = tally.read();
        assert_eq!(seen.lines, 100);
        assert!(seen.last.is_some_and(|l| l >= before), "{seen:?}");
        drop(hold);
        wait_until("the queue drains", || {
            String::from_utf8_lossy(&stuck.got.lock().unwrap())
                .lines()
                .count()
                == 5
        });
        w.write_all(b"after\n").unwrap();
        drop(guard);
        let got = String::from_utf8(stuck.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(
            lines[..5],
            ["first", "queued", "queued", "queued", "queued"]
        );
        assert!(
            lines[5].contains("  WARN 100 log line(s) dropped here: "),
            "{got}"
        );
        assert_eq!(lines[6..], ["after"], "{got}");
        assert_eq!(w.books.lock().unwrap().said, 100);
        // The note said so in the log; the tally still counts the lines, not the notes.
        assert_eq!(tally.read().lines, 100);
    }

    #[test]
    fn a_log_file_nobody_reads_drops_lines_and_the_tally_says_as_many_as_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("rebouncer.log");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // The reading end stays open but unread: once the pipe's buffer is full, the
        // writer thread hangs in write(2) as on a hung disk. Opening either end of a FIFO
        // waits for the other.
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || File::open(fifo).unwrap())
        };
        let file = LogFile::open(&fifo).unwrap();
        let mut reader = reader.join().unwrap();
        let tally = DropTally::default();
        let (mut w, guard) = queue(file, 4, tally.clone());
        let line = format!("{}\n", "x".repeat(4095));
        let sent = 1000;
        for _ in 0..sent {
            w.write_all(line.as_bytes()).unwrap();
        }
        // A Linux pipe holds 64 KiB (16 of these lines), the writer thread has one in its
        // hands and the queue four: every other line was dropped.
        let lost = tally.read();
        assert!(lost.lines >= sent - 16 - 1 - 4, "{lost:?}");
        assert!(lost.last.is_some(), "{lost:?}");
        let got = Arc::new(Mutex::new(Vec::new()));
        let drain = {
            let got = got.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; 65536];
                loop {
                    match std::io::Read::read(&mut reader, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
            })
        };
        // Lines that got into the queue, and perhaps a note that did in between.
        let through = (sent - lost.lines) as usize;
        let full_lines = |text: &str| text.lines().filter(|l| l.starts_with('x')).count();
        wait_until("the queue drains into the pipe", || {
            full_lines(&String::from_utf8_lossy(&got.lock().unwrap())) == through
        });
        w.write_all(b"after\n").unwrap();
        drop(guard);
        drain.join().unwrap();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().last(), Some("after"));
        let noted: u64 = text
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("  WARN ")?;
                rest.strip_suffix(
                    " log line(s) dropped here: the log could not be written as fast as they came (a slow, hung or full disk?)",
                )?
                .parse::<u64>()
                .ok()
            })
            .sum();
        assert_eq!(noted, lost.lines, "{}", text.replace(&line, ""));
        assert_eq!(tally.read(), lost);
    }
}
