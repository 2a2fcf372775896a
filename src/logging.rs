//! One line per event with a local timestamp, to stdout or appended to `-logfile`.
//!
//! The file is opened in append mode (so logrotate's `copytruncate` leaves no hole of NUL
//! bytes) and can be reopened on SIGHUP (for logrotate's default rename-then-signal).
//! tracing-appender cannot reopen a file, hence this small writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::time::ChronoLocal;

/// The log file, shared between the subscriber and whoever reopens it.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Start writing to a new file at the same path (after logrotate renamed the old one).
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
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn timer() -> ChronoLocal {
    // The Go tool's log format, so existing log readers keep working.
    ChronoLocal::new("%Y/%m/%d %H:%M:%S".to_string())
}

/// Install the global subscriber. Returns the log file, when there is one, for SIGHUP.
pub fn init(logfile: Option<&Path>) -> io::Result<Option<LogFile>> {
    let builder = tracing_subscriber::fmt()
        .with_timer(timer())
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    match logfile {
        Some(path) => {
            let file = LogFile::open(path)?;
            let writer = file.clone();
            builder
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            Ok(Some(file))
        }
        None => {
            // Colour only for a person at a terminal, never into a pipe or journald.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_ansi(ansi).with_writer(io::stdout).init();
            Ok(None)
        }
    }
}
