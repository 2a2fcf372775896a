//! The [`Cluster`]: a fresh temporary directory with a PostgreSQL primary, its standbys
//! and a PgBouncer, started together and torn down together.
//!
//! Everything is torn down by `Drop` (also when a test panics): every postmaster gets
//! SIGCONT (it and its children) then SIGQUIT (= `pg_ctl stop -m immediate`, all at
//! once) and is waited for (SIGKILL after 10 s), PgBouncer gets SIGKILL, any leftover
//! process whose command line mentions the directory is SIGKILLed, the directory is
//! removed. `REBOUNCER_KEEP_TMP=1` keeps the directory (processes are still stopped; a
//! `KEEP` file marks it) and prints its path. Directories left by a test process that was
//! itself killed (`rebouncer-it-<pid>-*`, pid no longer alive, no `KEEP`) are swept,
//! with their processes, at the first `Cluster::start` of the next test process; that
//! includes the per-process template data directory (see `template()`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::certs::{Tls, make_cert};
use super::clients::tcp_conninfo;
use super::postgres::{
    is_postmaster_of, panic_text, read_postmaster_pid, start_pg_retry, template,
};
use super::process::{
    alloc_port, children_of, chown_server, command_as, env_flag, pg_bin, pgrep_f, pid_alive,
    poll_until, run_ok, run_timeout, server_user, signal, signal_many, tail,
};

pub const DIR_PREFIX: &str = "rebouncer-it-";

/// Where cluster directories go: `$REBOUNCER_TEST_TMPDIR` if set; else `/dev/shm` when it
/// is a writable tmpfs with at least 1 GiB free (file creation on this VM's ext4 costs
/// ~1.5 ms per file, and a cluster is ~4000 files: 3.3 s vs 0.7 s per cluster); else
/// `std::env::temp_dir()` (`$TMPDIR` or /tmp). Must be traversable by the server user.
pub fn base_dir() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(d) = std::env::var("REBOUNCER_TEST_TMPDIR") {
            return PathBuf::from(d);
        }
        let shm = Path::new("/dev/shm");
        let avail_kib = run_timeout(
            Command::new("df").arg("-Pk").arg(shm),
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
        let writable = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(shm)
            .is_ok();
        if avail_kib >= 1 << 20 && writable {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

/// Removes directories of earlier test processes that died without tearing down
/// (`rebouncer-it-<pid>-*` whose pid is gone, no `KEEP` file), killing what still runs
/// from them. Once per process.
pub fn sweep_stale() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mut dirs = vec![
            base_dir().to_path_buf(),
            std::env::temp_dir(),
            PathBuf::from("/dev/shm"),
        ];
        dirs.dedup();
        for e in dirs
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            if pid == std::process::id()
                || Path::new(&format!("/proc/{pid}")).exists()
                || path.join("KEEP").exists()
            {
                continue;
            }
            let procs = pgrep_f(&path.to_string_lossy());
            for p in &procs {
                let _ = signal(&p.to_string(), "CONT");
                let _ = signal(&p.to_string(), "KILL");
            }
            let _ = fs::remove_dir_all(&path);
            eprintln!(
                "[fixture] swept stale {} ({} processes killed)",
                path.display(),
                procs.len()
            );
        }
    });
}

/// Where the managed symlink points when the cluster starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `<tmp>/nodes/pg<n>.ini`
    Node(usize),
    /// `<tmp>/initial.ini`: a complete PgBouncer config with an empty `[databases]`
    /// section, outside the node directory (no node is "active").
    Dummy,
}

#[derive(Clone, Debug)]
pub struct Opts {
    /// Number of streaming standbys (default 2: pg2, pg3).
    pub standbys: usize,
    /// Primary (and so every standby, which copies its settings) gets `ssl=on` with a
    /// self-signed cert for CN=localhost, SAN DNS:localhost, IP:127.0.0.1.
    pub tls: bool,
    /// Initial symlink target. Default: `Link::Node(2)` (a standby, so the daemon must
    /// switch at start-up), `Link::Dummy` when there is no standby.
    pub link: Link,
    /// Start PgBouncer (default true). When false it is configured but not running
    /// ("PgBouncer down at start-up"); call `bouncer_start()` later.
    pub bouncer: bool,
    /// PgBouncer pool_mode (default "session").
    pub pool_mode: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            standbys: 2,
            tls: false,
            link: Link::Node(2),
            bouncer: true,
            pool_mode: "session",
        }
    }
}

impl Opts {
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        if n == 0 && self.link == Link::Node(2) {
            self.link = Link::Dummy;
        }
        self
    }
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    pub fn link(mut self, l: Link) -> Self {
        self.link = l;
        self
    }
    pub fn bouncer(mut self, start: bool) -> Self {
        self.bouncer = start;
        self
    }
    pub fn pool_mode(mut self, m: &'static str) -> Self {
        self.pool_mode = m;
        self
    }
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
}

pub struct Cluster {
    pub tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    pub bouncer_port: u16,
    pub bouncer: Mutex<Option<Child>>,
    pub tls: Option<Tls>,
    pub opts: Opts,
    pub daemons: AtomicUsize,
    /// Time Cluster::start took.
    pub startup: Duration,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Cluster {
    /// Starts a cluster with default options (1 primary, 2 standbys, PgBouncer → pg2).
    pub fn start_default() -> Cluster {
        Cluster::start(Opts::default())
    }

    pub fn start(opts: Opts) -> Cluster {
        let t0 = Instant::now();
        sweep_stale();
        let tpl = template();
        let trace = |what: &str| {
            if env_flag("REBOUNCER_FIXTURE_TRACE") {
                eprintln!("[fixture] {:>8.3?} {what}", t0.elapsed());
            }
        };
        trace("template ready");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(base_dir())
            .expect("create temp dir");
        let root = tmp.path().to_path_buf();
        chown_server(&root);
        let mut c = Cluster {
            tmp: Some(tmp),
            root: root.clone(),
            nodes: Vec::new(),
            bouncer_port: 0,
            bouncer: Mutex::new(None),
            tls: None,
            opts: opts.clone(),
            daemons: AtomicUsize::new(0),
            startup: Duration::ZERO,
        };
        if env_flag("REBOUNCER_KEEP_TMP") {
            let _ = fs::write(root.join("KEEP"), "");
            eprintln!("[fixture] cluster dir (kept): {}", root.display());
        }
        // From here on a panic drops `c`, which tears down whatever was started.
        if opts.tls {
            c.tls = Some(make_cert(&root));
        }
        let user = server_user();

        // Primary: copy of the template.
        let d1 = root.join("pg1");
        run_ok(
            Command::new("cp").arg("-a").arg(tpl).arg(&d1),
            Duration::from_secs(60),
        );
        let log1 = root.join("pg1.log");
        trace("copied template");
        let p1 = start_pg_retry(&d1, &log1, &root, "pg1", &root, c.tls.as_ref());
        trace("pg1 started");
        c.nodes.push(Node {
            name: "pg1".into(),
            port: p1,
            data: d1,
            log: log1,
        });

        // Standbys: base backups in parallel.
        let tls = c.tls.clone();
        let standbys: Vec<Node> = std::thread::scope(|s| {
            let hs: Vec<_> = (2..=opts.standbys + 1)
                .map(|i| {
                    let root = root.clone();
                    let tls = tls.clone();
                    s.spawn(move || {
                        let name = format!("pg{i}");
                        let data = root.join(&name);
                        run_ok(
                            command_as(pg_bin("pg_basebackup"), user, &root)
                                .args(["-h", "127.0.0.1", "-p", &p1.to_string(), "-U", "postgres"])
                                .args(["-R", "-c", "fast", "-X", "stream", "-N", "-w", "-D"])
                                .arg(&data),
                            Duration::from_secs(120),
                        );
                        trace(&format!("{name} base backup done"));
                        let log = root.join(format!("{name}.log"));
                        let port = start_pg_retry(&data, &log, &root, &name, &root, tls.as_ref());
                        trace(&format!("{name} started"));
                        Node {
                            name,
                            port,
                            data,
                            log,
                        }
                    })
                })
                .collect();
            // Join all before propagating a panic, so every started node is registered.
            let rs: Vec<_> = hs.into_iter().map(|h| h.join()).collect();
            let mut ok = Vec::new();
            let mut err = None;
            for r in rs {
                match r {
                    Ok(n) => ok.push(n),
                    Err(e) => err = Some(panic_text(e)),
                }
            }
            if let Some(e) = err {
                c.nodes.append(&mut ok);
                panic!("standby creation failed: {e}");
            }
            ok
        });
        c.nodes.extend(standbys);
        if opts.standbys > 0 {
            let want = opts.standbys.to_string();
            c.wait_until(
                Duration::from_secs(30),
                "all standbys streaming from pg1",
                |c| {
                    c.query(
                        1,
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    )
                    .as_deref()
                        == Ok(want.as_str())
                },
            );
        }

        trace("standbys streaming");
        // PgBouncer.
        fs::create_dir(c.configdir()).unwrap();
        fs::write(root.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let target = match opts.link {
            Link::Node(n) => {
                assert!(n >= 1 && n <= c.nodes.len(), "Opts.link: no node {n}");
                c.node_file(n)
            }
            Link::Dummy => c.dummy_file(),
        };
        std::os::unix::fs::symlink(&target, c.symlink()).unwrap();
        let mut started = false;
        for attempt in 0..4 {
            c.bouncer_port = alloc_port();
            c.write_bouncer_files();
            if !opts.bouncer {
                break;
            }
            match c.try_bouncer_start() {
                Ok(()) => {
                    started = true;
                    break;
                }
                Err(e) if e.contains("Address already in use") && attempt < 3 => {
                    eprintln!(
                        "[fixture] pgbouncer: port {} taken, retrying",
                        c.bouncer_port
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(started || !opts.bouncer, "pgbouncer did not start");
        trace("pgbouncer started");
        c.startup = t0.elapsed();
        c
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of PostgreSQL instances (primary + standbys).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &Node {
        assert!(
            i >= 1 && i <= self.nodes.len(),
            "node numbers are 1-based (pg1..pg{}), got {i}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    /// `pg<i>`
    pub fn name(&self, i: usize) -> String {
        format!("pg{i}")
    }

    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node(i).data.clone()
    }

    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .map(|p| p + 1)
    }

    /// libpq string for the daemon's `[servers]`:
    /// `host=127.0.0.1 port=N dbname=postgres user=postgres sslmode=disable`.
    pub fn conninfo(&self, i: usize) -> String {
        tcp_conninfo(self.port(i), "postgres")
    }

    /// libpq string with TLS: `host=127.0.0.1 port=N dbname=postgres user=postgres
    /// sslmode=<mode>` plus `sslrootcert=<cert>` for verify-ca/verify-full.
    pub fn conninfo_ssl(&self, i: usize, sslmode: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} dbname=postgres user=postgres sslmode={sslmode}",
            self.port(i)
        );
        if sslmode.starts_with("verify") {
            s += &format!(
                " sslrootcert={}",
                self.cert_path()
                    .expect("cluster started without tls")
                    .display()
            );
        }
        s
    }

    /// The self-signed server certificate (PEM), usable as `sslrootcert`; None without tls.
    pub fn cert_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.cert.clone())
    }

    /// Writes `name` under the temp dir (readable by everyone) and returns its path.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Polls `f(self)` (see [`wait_until`]); on timeout the panic message also carries
    /// the PgBouncer log tail.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Cluster) -> bool) {
        if !poll_until(timeout, || f(self)) {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n--- pgbouncer.log ---\n{}",
                tail(&self.bouncer_log_path(), 10)
            );
        }
    }

    pub fn teardown(&mut self) {
        let pms: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| read_postmaster_pid(&n.data).filter(|p| is_postmaster_of(*p, &n.data)))
            .collect();
        quit_postmasters(&pms);
        self.bouncer_kill();
        sweep_and_remove(&self.root, self.tmp.take());
    }
}

/// Immediate shutdown of every postmaster in `pms` at once (what `pg_ctl stop -m
/// immediate` does: SIGQUIT), after SIGCONT to it and its children in case a test left
/// them stopped; SIGKILL after 10 s.
pub fn quit_postmasters(pms: &[u32]) {
    for pid in pms {
        let kids: Vec<String> = children_of(*pid).iter().map(|k| k.to_string()).collect();
        let _ = signal_many(&kids, "CONT");
        let _ = signal(&pid.to_string(), "CONT");
        let _ = signal(&pid.to_string(), "QUIT");
    }
    if !poll_until(Duration::from_secs(10), || {
        pms.iter().all(|p| !pid_alive(*p))
    }) {
        for pid in pms {
            let _ = signal(&pid.to_string(), "KILL");
        }
    }
}

/// The last of a fixture's teardown. Safety net: anything whose command line mentions
/// `root` (postmasters not yet registered when a start-up panicked, a daemon still
/// running, ...) is SIGKILLed; then the directory is removed, or kept with
/// `REBOUNCER_KEEP_TMP=1`.
pub fn sweep_and_remove(root: &Path, tmp: Option<tempfile::TempDir>) {
    let pat = root.to_string_lossy().into_owned();
    for _ in 0..3 {
        let left = pgrep_f(&pat);
        if left.is_empty() {
            break;
        }
        for p in &left {
            let _ = signal(&p.to_string(), "CONT");
            let _ = signal(&p.to_string(), "KILL");
        }
        poll_until(Duration::from_secs(3), || {
            left.iter().all(|p| !pid_alive(*p))
        });
    }
    let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
    if let Some(tmp) = tmp {
        if env_flag("REBOUNCER_KEEP_TMP") {
            eprintln!("[fixture] kept {}", tmp.keep().display());
        } else if let Err(e) = tmp.close() {
            eprintln!("[fixture] removing {}: {e}", root.display());
        }
    }
}
