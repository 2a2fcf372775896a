//! Flags, wiring and signals. The logic lives in the library modules.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use rebouncer::cli::{self, Options};
use rebouncer::config::{self, Config};
use rebouncer::conninfo::Env;
use rebouncer::daemon::{Daemon, Reload};
use rebouncer::events::Kind;
use rebouncer::logging::{self, LogFile};
use rebouncer::notify::{self, Notifier};
use rebouncer::state::StateFile;
use rebouncer::view::Snapshot;
use rebouncer::{check, http};

/// How long a shutdown waits for HTTP clients still being served.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rebouncer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.check {
        return runtime.block_on(check::run(&opts.config));
    }
    runtime.block_on(run(opts))
}

fn load_config(path: &Path) -> Result<Config, config::ConfigError> {
    let cwd = std::env::current_dir().map_err(|e| {
        config::ConfigError(format!(
            "config error: cannot determine the working directory to resolve relative paths: {e}"
        ))
    })?;
    config::load(path, &cwd, &Env::from_process())
}

/// Report a fatal start-up error both on stderr (the terminal or the journal) and in the
/// log file, since an init script may send stderr nowhere.
fn fatal(logged: bool, msg: &str) -> ExitCode {
    if logged {
        error!("{msg}");
    }
    eprintln!("rebouncer: {msg}");
    ExitCode::FAILURE
}

async fn run(opts: Options) -> ExitCode {
    // Kept to the end of `run`: dropping it writes out the lines still queued.
    let logging = match logging::init(opts.logfile.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            let path = opts.logfile.as_deref().unwrap_or(Path::new("")).display();
            return fatal(
                false,
                &format!(
                    "cannot open log file {path}: {e} (check -logfile and the directory's permissions)"
                ),
            );
        }
    };
    let to_log = logging.file.is_some();
    let cfg = match load_config(&opts.config) {
        Ok(c) => c,
        Err(e) => return fatal(to_log, &e.to_string()),
    };
    for w in &cfg.warnings {
        warn!("{w}");
    }

    // The state file holds the timelines that tell an old primary from the real one: a
    // corrupt one is a reason to stop, not to forget them silently.
    let state = match StateFile::load(&cfg.state_file) {
        Ok(s) => s,
        Err(e) => return fatal(to_log, &e.to_string()),
    };

    let names: Vec<String> = cfg.servers.iter().map(|s| s.name.clone()).collect();
    let (status_tx, status_rx) = watch::channel(Snapshot::new(
        &names,
        cfg.interval,
        cfg.pgbouncer.endpoint.clone(),
    ));
    status_tx.send_modify(|s| {
        s.config_warnings = cfg.warnings.clone();
        let at = s.started;
        s.events.push(
            at,
            Kind::Started,
            None,
            format!(
                "rebouncer {} started with config {}",
                env!("CARGO_PKG_VERSION"),
                opts.config.display()
            ),
        );
        for w in &cfg.warnings {
            s.events.push(at, Kind::ConfigWarning, None, w.clone());
        }
    });
    // A bad $NOTIFY_SOCKET costs systemd's readiness, not the daemon: it still runs (and
    // systemd, waiting for READY=1, says why the start timed out; the log says this).
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            warn!("NOTIFY_SOCKET is set but unusable, not telling systemd anything: {e}");
            None
        }
    };
    let listener = match http::bind(&opts.http).await {
        Ok(l) => l,
        Err(e) => return fatal(to_log, &e.to_string()),
    };
    let pidfile = match opts.pidfile.as_deref().map(PidFile::create).transpose() {
        Ok(p) => p,
        Err(e) => return fatal(to_log, &e),
    };
    let listening = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        "rebouncer {} starting: config {}, {} servers, status pages at http://{listening}/",
        env!("CARGO_PKG_VERSION"),
        opts.config.display(),
        names.len()
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(http::serve(
        listener,
        http::router(status_rx),
        shutdown_rx.clone(),
        HTTP_SHUTDOWN_GRACE,
    ));
    // A second socket for RELOADING=1/READY=1 around a reload: the first one belongs to
    // the task that tells systemd about the snapshot.
    let reloader = Reloader {
        path: opts.config.clone(),
        daemon: reload_tx,
        notifier: notifier
            .as_ref()
            .and_then(|n| Notifier::new(n.name()).ok())
            .map(Arc::new),
        status: status_tx.subscribe(),
    };
    let signals = match spawn_signal_handler(shutdown_tx, logging.file.clone(), reloader) {
        Ok(h) => h,
        Err(e) => return fatal(to_log, &format!("cannot install signal handlers: {e}")),
    };
    let notifying =
        notifier.map(|n| tokio::spawn(notify::run(n, status_tx.subscribe(), shutdown_rx.clone())));

    Daemon::new(cfg, state, status_tx, shutdown_rx)
        .reloads(reload_rx)
        .run()
        .await;

    signals.abort();
    if let Some(n) = notifying {
        // It sends STOPPING=1 on the shutdown signal, or when the daemon is gone.
        let _ = n.await;
    }
    // The server stops on the same signal and bounds its own grace; a client that sent
    // half a request is cut off at the end of it.
    match server.await {
        Ok(0) => {}
        Ok(n) => warn!(
            "status web server: {n} connection(s) still open after {HTTP_SHUTDOWN_GRACE:?}; closed them"
        ),
        Err(e) => warn!("status web server failed: {e}"),
    }
    drop(pidfile);
    info!("rebouncer stopped");
    ExitCode::SUCCESS
}

/// Re-reads the configuration on SIGHUP and hands it to the daemon's loop, which applies
/// it whole or refuses it (it is validated here exactly as at start).
struct Reloader {
    path: PathBuf,
    daemon: mpsc::UnboundedSender<Reload>,
    notifier: Option<Arc<Notifier>>,
    status: watch::Receiver<Snapshot>,
}

impl Reloader {
    async fn reload(&self) {
        info!(
            "re-reading the configuration {} (SIGHUP)",
            self.path.display()
        );
        // Told only once systemd was told READY=1 (a reload during start-up is part of it).
        let notifier = self
            .notifier
            .clone()
            .filter(|_| notify::is_ready(&self.status.borrow()));
        if let Some(n) = &notifier {
            tell(n, "RELOADING=1");
        }
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || load_config(&path))
            .await
            .unwrap_or_else(|e| {
                Err(config::ConfigError(format!(
                    "config error: cannot re-read the configuration: {e}"
                )))
            });
        let (done, applied) = oneshot::channel();
        let sent = self.daemon.send(Reload {
            config,
            done: Some(done),
        });
        if sent.is_err() {
            return; // the daemon has stopped
        }
        if let Some(n) = notifier {
            // Applied when the loop gets to it (after a round or a switch in progress),
            // while this task goes on handling signals.
            tokio::spawn(async move {
                if applied.await.is_ok() {
                    tell(&n, "READY=1");
                }
            });
        }
    }
}

fn tell(n: &Notifier, message: &str) {
    if let Err(e) = n.send(message) {
        warn!("cannot tell systemd ({}) {message:?}: {e}", n.name());
    }
}

/// SIGTERM and SIGINT ask for shutdown; SIGHUP reopens the log file (for logrotate), then
/// re-reads the configuration.
fn spawn_signal_handler(
    shutdown: watch::Sender<bool>,
    logfile: Option<LogFile>,
    reloader: Reloader,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received; stopping"); let _ = shutdown.send(true); }
                _ = int.recv() => { info!("SIGINT received; stopping"); let _ = shutdown.send(true); }
                _ = hup.recv() => {
                    match &logfile {
                        // Opening a file can block on a sick disk: not on the loop's thread.
                        Some(l) => match reopen(l.clone()).await {
                            Ok(()) => info!("SIGHUP received; log file {} reopened", l.path().display()),
                            Err(e) => eprintln!("rebouncer: cannot reopen log file {}: {e}; still writing to the file it had open (check the directory's permissions and space, then send SIGHUP again)", l.path().display()),
                        },
                        None => info!("SIGHUP received; logging to stdout, nothing to reopen"),
                    }
                    reloader.reload().await;
                }
            }
        }
    }))
}

async fn reopen(l: LogFile) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || l.reopen())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The pid file, locked for as long as the daemon runs so that a second instance with the
/// same file refuses to start, and removed on a clean exit.
struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    fn create(path: &Path) -> Result<PidFile, String> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open pid file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let other = fs::read_to_string(path).unwrap_or_default();
                return Err(format!(
                    "another rebouncer (pid {}) is running with pid file {}; stop it first or use another -pidfile",
                    other.trim(),
                    path.display()
                ));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock pid file {}: {e}", path.display()));
            }
        }
        // Truncate only once the lock is ours: the Go tool appended, keeping stale pids.
        file.set_len(0)
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
