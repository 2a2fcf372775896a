//! What ships beside the binary, run for real: the RHEL-style init script (with its
//! built-in start/stop/status, as on Debian) against the real daemon and a real cluster,
//! the Nagios plugin against a daemon in each state, and the static checks of the shell
//! scripts and the systemd unit.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Daemon};

const SHORT: Duration = Duration::from_secs(20);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` (stdin closed, 60 s limit): (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let desc = format!("{cmd:?}");
    let o = common::run_timeout(cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("$ {desc} -> {:?}\n{}{}", o.status.code(), out, err);
    (o.status.code(), out, err)
}

/// A tool a static check needs. A missing one fails the test: a check that passes
/// without having run proves nothing (`.ci/run` installs them).
fn required_program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed, so this check cannot run; install it \
             (apt-get install {package}, as .ci/run does)"
        )
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------
// Init script
// ---------------------------------------------------------------------------------------

/// The user the init script runs the daemon as: `postgres` when the test runs as root
/// (the servers' user, which owns the cluster directory and so the symlink's directory),
/// else the current user.
fn daemon_user() -> String {
    if common::is_root() {
        "postgres".into()
    } else {
        let (code, out, _) = run(Command::new("id").arg("-un"));
        assert_eq!(code, Some(0));
        out.trim().to_string()
    }
}

/// The init script's files, all under `dir`.
struct InitFiles {
    /// The built binary, or a copy the daemon's user can reach (see `common::runnable_by`).
    bin: PathBuf,
    sysconfig: PathBuf,
    pidfile: PathBuf,
    lockfile: PathBuf,
    log: PathBuf,
    listen: String,
    statedir: PathBuf,
}

/// Writes `<dir>/sysconfig` pointing the init script at the built binary, `config`, and
/// files under `dir`.
fn init_files(dir: &Path, config: &Path) -> InitFiles {
    let bin = common::runnable_by(&common::rebouncer_bin(), &common::os_user(&daemon_user()));
    let f = InitFiles {
        bin,
        sysconfig: dir.join("sysconfig"),
        pidfile: dir.join("run/rebouncer.pid"),
        lockfile: dir.join("lock/rebouncer"),
        log: dir.join("rebouncer.log"),
        listen: format!("127.0.0.1:{}", common::alloc_port()),
        statedir: dir.join("state"),
    };
    let text = format!(
        "# written by tests/contrib.rs\n\
         exec='{}'\n\
         pidfile='{}'\n\
         lockfile='{}'\n\
         REBOUNCERCONFIG='{}'\n\
         REBOUNCERLOG='{}'\n\
         REBOUNCERLISTEN='{}'\n\
         REBOUNCERUSER='{}'\n\
         statedir='{}'\n",
        f.bin.display(),
        f.pidfile.display(),
        f.lockfile.display(),
        config.display(),
        f.log.display(),
        f.listen,
        daemon_user(),
        f.statedir.display()
    );
    fs::write(&f.sysconfig, text).unwrap();
    f
}

/// `sh contrib/rebouncer.init <action>` with `SYSCONFIG=<f.sysconfig>`, without the RHEL
/// function library even where there is one (the built-in stand-ins are what is tested).
fn init(f: &InitFiles, action: &str) -> (Option<i32>, String, String) {
    run(Command::new("sh")
        .arg(repo().join("contrib/rebouncer.init"))
        .arg(action)
        .env("SYSCONFIG", &f.sysconfig)
        .env("REBOUNCER_NO_FUNCTIONS", "1")
        .current_dir("/"))
}

fn read_pid(f: &InitFiles) -> Option<u32> {
    fs::read_to_string(&f.pidfile).ok()?.trim().parse().ok()
}

/// Pids of running rebouncer binaries (by /proc/<pid>/exe) whose command line names
/// `config`: the init script's `runuser` parent is not counted.
fn daemons_with(f: &InitFiles, config: &Path) -> Vec<u32> {
    let bin = fs::canonicalize(&f.bin).unwrap();
    common::pgrep_f(&config.to_string_lossy())
        .into_iter()
        .filter(|p| fs::read_link(format!("/proc/{p}/exe")).ok().as_ref() == Some(&bin))
        .filter(|p| common::pid_alive(*p))
        .collect()
}

fn uid_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn nagios_at(addr: &str) -> String {
    match common::http_request(addr, "GET", "/nagios") {
        Ok((200, _, body)) => body,
        other => format!("{other:?}"),
    }
}

#[test]
fn init_script_starts_reports_and_stops_the_daemon() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    // Inside the cluster directory: if the test fails half-way, the fixture's teardown
    // kills the daemon (its command line names the directory).
    let dir = c.root().join("initd");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let f = init_files(&dir, &cfg);

    // start
    let t = Instant::now();
    let (code, out, _) = init(&f, "start");
    assert_eq!(code, Some(0), "start: {out}");
    // Also fails (empty output, after a 2 s wait for EOF) when something the script left
    // in the background keeps its stdout open.
    assert_eq!(out, "Starting rebouncer: OK\n");
    eprintln!("init script start took {} ms", t.elapsed().as_millis());
    let pid = read_pid(&f).expect("pid file written");
    assert!(common::pid_alive(pid));
    assert_eq!(daemons_with(&f, &cfg), vec![pid], "exactly one daemon");
    assert_eq!(
        uid_of(pid),
        Some(common::os_user(&daemon_user()).uid),
        "runs as {}",
        daemon_user()
    );
    assert!(f.lockfile.exists(), "lock file made");
    common::wait_until(SHORT, "/nagios OK via the init script's daemon", || {
        nagios_at(&f.listen).starts_with("OK: 1 master (pg1")
    });
    assert_eq!(c.symlink_node(), Some(1));
    let log = fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("PgBouncer now points at pg1"), "{log}");
    if common::is_root() {
        use std::os::unix::fs::MetadataExt;
        let uid = common::os_user(&daemon_user()).uid;
        assert_eq!(fs::metadata(&f.log).unwrap().uid(), uid, "log file owner");
        assert_eq!(
            fs::metadata(f.pidfile.parent().unwrap()).unwrap().uid(),
            uid,
            "pid file directory owner"
        );
        assert_eq!(
            fs::metadata(&f.statedir).unwrap().uid(),
            uid,
            "state directory owner"
        );
    }
    assert!(f.statedir.is_dir(), "state directory made");
    // The daemon was told where it is, as systemd's StateDirectory= tells it.
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let want = format!("STATE_DIRECTORY={}", f.statedir.display());
    assert!(
        environ.split(|b| *b == 0).any(|v| v == want.as_bytes()),
        "{want} not in the daemon's environment"
    );

    // status
    let (code, out, _) = init(&f, "status");
    assert_eq!(code, Some(0), "status: {out}");
    assert!(
        out.contains(&format!("rebouncer (pid {pid}) is running")),
        "{out}"
    );

    // start again: nothing new
    let (code, out, _) = init(&f, "start");
    assert_eq!(code, Some(0), "second start: {out}");
    assert_eq!(read_pid(&f), Some(pid));
    assert_eq!(
        daemons_with(&f, &cfg),
        vec![pid],
        "still exactly one daemon"
    );

    // reload: checked first, then SIGHUP; a broken config is refused with its error.
    let good = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, good.replace("interval=1\n", "interval=often\n")).unwrap();
    let (code, out, _) = init(&f, "reload");
    assert_eq!(code, Some(1), "reload of a broken config: {out}");
    assert!(
        out.starts_with(
            "Reloading rebouncer: failed, the running configuration stays\nconfig error: "
        ),
        "{out}"
    );
    fs::write(&cfg, &good).unwrap();
    let (code, out, _) = init(&f, "reload");
    assert_eq!(code, Some(0), "reload: {out}");
    assert_eq!(out, "Reloading rebouncer: OK\n");
    common::wait_until(SHORT, "the reload in the log", || {
        fs::read_to_string(&f.log)
            .unwrap_or_default()
            .contains("configuration reloaded from")
    });
    assert_eq!(read_pid(&f), Some(pid), "no restart");

    // stop
    let t = Instant::now();
    let (code, out, _) = init(&f, "stop");
    assert_eq!(code, Some(0), "stop: {out}");
    assert_eq!(out, "Stopping rebouncer: OK\n");
    eprintln!("init script stop took {} ms", t.elapsed().as_millis());
    assert!(!common::pid_alive(pid), "daemon {pid} still running");
    assert!(daemons_with(&f, &cfg).is_empty());
    assert!(!f.pidfile.exists(), "pid file removed");
    assert!(!f.lockfile.exists(), "lock file removed");
    let log = fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("SIGTERM received; stopping"), "{log}");
    assert!(log.contains("rebouncer stopped"), "{log}");
    // PgBouncer stays where it was.
    assert_eq!(c.bouncer_target_node(), Some(1));

    // status and stop when stopped
    let (code, out, _) = init(&f, "status");
    assert_eq!(code, Some(3), "status when stopped: {out}");
    assert!(out.contains("rebouncer is stopped"), "{out}");
    let (code, _, _) = init(&f, "stop");
    assert_eq!(code, Some(0), "stop when stopped");

    // restart from stopped starts it
    let (code, out, _) = init(&f, "restart");
    assert_eq!(code, Some(0), "restart: {out}");
    let pid2 = read_pid(&f).expect("pid file after restart");
    assert_ne!(pid2, pid);
    assert_eq!(daemons_with(&f, &cfg), vec![pid2]);
    let (code, out, _) = init(&f, "restart");
    assert_eq!(code, Some(0), "restart while running: {out}");
    let pid3 = read_pid(&f).expect("pid file after the second restart");
    assert!(!common::pid_alive(pid2));
    assert_eq!(daemons_with(&f, &cfg), vec![pid3]);
    let (code, out, _) = init(&f, "stop");
    assert_eq!(code, Some(0), "final stop: {out}");
    assert!(daemons_with(&f, &cfg).is_empty());

    let (code, out, _) = init(&f, "bogus");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("Usage:"), "{out}");
}

#[test]
fn init_script_refuses_a_broken_config_and_prints_the_error() {
    // No cluster needed: the config is refused before anything starts.
    let dir = tempfile::Builder::new()
        .prefix(&format!("rebouncer-it-{}-", std::process::id()))
        .tempdir_in(common::base_dir())
        .unwrap();
    // The daemon's user (postgres when root) must read the config.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(dir.path().join("nodes")).unwrap();
    fs::write(
        dir.path().join("nodes/db1.ini"),
        "[databases]\npostgres = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_port=6432\n",
    )
    .unwrap();
    let cfg = dir.path().join("rebouncer.ini");
    fs::write(
        &cfg,
        "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer sslmode=disable\n\
         symlink=pgbouncer.ini\nconfigdir=nodes\ninterval=abc\n\n[servers]\ndb1=host=127.0.0.1 sslmode=disable\n",
    )
    .unwrap();
    let f = init_files(dir.path(), &cfg);

    let (code, out, err) = init(&f, "start");
    assert_ne!(code, Some(0), "start with a broken config: {out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        2,
        "'Starting rebouncer: failed' and the one-line error: {out}"
    );
    assert_eq!(lines[0], "Starting rebouncer: failed");
    assert!(lines[1].contains("rebouncer.ini:5"), "{out}");
    assert!(lines[1].contains("interval"), "{out}");
    assert!(read_pid(&f).is_none(), "no pid file");
    assert!(!f.lockfile.exists(), "no lock file");
    assert!(daemons_with(&f, &cfg).is_empty(), "nothing started");

    let (code, _, _) = init(&f, "status");
    assert_eq!(code, Some(3));

    // A missing config is refused the same way.
    fs::remove_file(&cfg).unwrap();
    let (code, out, _) = init(&f, "start");
    assert_ne!(code, Some(0));
    assert!(out.contains(&cfg.display().to_string()), "{out}");
}

// ---------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------

#[test]
fn shell_scripts_pass_shellcheck() {
    let sc = required_program("shellcheck", "shellcheck");
    let (code, out, err) = run(Command::new(sc)
        .args([
            "contrib/rebouncer.init",
            "nagios/check_rebouncer",
            "contrib/demo.sh",
            ".ci/run",
            "contrib/package-test.sh",
            "contrib/ci/build-versions.sh",
            "contrib/debian/postinst",
            "contrib/debian/postrm",
            "contrib/rpm/post_install.sh",
            "contrib/rpm/pre_uninstall.sh",
        ])
        .current_dir(repo()));
    assert_eq!(code, Some(0), "shellcheck:\n{out}{err}");
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let sa = required_program("systemd-analyze", "systemd");
    // verify checks that the Exec*= binaries exist: point them at the built one.
    let unit = fs::read_to_string(repo().join("contrib/rebouncer.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/rebouncer "), "{unit}");
    let bin = common::rebouncer_bin();
    let unit = unit.replace("/usr/bin/rebouncer", &bin.to_string_lossy());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rebouncer.service");
    fs::write(&path, unit).unwrap();
    let (code, out, err) = run(Command::new(sa).arg("verify").arg(&path));
    assert_eq!(code, Some(0), "systemd-analyze verify:\n{out}{err}");
    // Exit 0 can still come with warnings; none is expected for this unit. (User=rebouncer
    // need not exist for verify: it does not resolve users.)
    let all = format!("{out}{err}");
    assert!(
        !all.contains("rebouncer.service"),
        "systemd-analyze verify warned about the unit:\n{all}"
    );
}

// ---------------------------------------------------------------------------------------
// Nagios plugin
// ---------------------------------------------------------------------------------------

/// `nagios/check_rebouncer <args>`: (exit code, stdout).
fn check(args: &[&str]) -> (Option<i32>, String) {
    let (code, out, _) = run(Command::new(repo().join("nagios/check_rebouncer")).args(args));
    (code, out)
}

/// Runs the plugin with both URL forms, with and without `-t 5`, and checks the exit code
/// and that it printed the daemon's line.
fn check_all_forms(d: &Daemon, want_code: i32, want_prefix: &str) {
    let base = format!("http://{}", d.http_addr);
    let forms = [
        vec![base.clone()],
        vec!["-t".into(), "5".into(), base.clone()],
        vec![format!("{base}/")],
        vec![format!("{base}/nagios")],
        vec!["-t".into(), "5".into(), format!("{base}/nagios")],
    ];
    for args in forms {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = check(&args);
        assert_eq!(code, Some(want_code), "check_rebouncer {args:?}: {out}");
        assert!(
            out.starts_with(want_prefix),
            "check_rebouncer {args:?}: {out:?}, want {want_prefix:?}"
        );
        assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    }
}

#[test]
fn nagios_plugin_exit_codes_follow_the_daemon_state() {
    let c = Cluster::start_default();
    let cfg = c.write_rebouncer_config(1, 2, "");
    let mut d = c.daemon(&cfg);
    d.wait_for(SHORT, "OK on /nagios", |d| d.nagios().starts_with("OK"));

    check_all_forms(
        &d,
        0,
        "OK: 1 master (pg1, PgBouncer points at it), 2 standbys",
    );

    c.stop_fast(3);
    d.wait_for(SHORT, "WARNING on /nagios", |d| {
        d.nagios().starts_with("WARNING")
    });
    check_all_forms(
        &d,
        1,
        "WARNING: 1 server down (pg3); 1 master (pg1), 1 standby",
    );

    c.stop_fast(1);
    d.wait_for(SHORT, "CRITICAL on /nagios", |d| {
        d.nagios().starts_with("CRITICAL")
    });
    check_all_forms(&d, 2, "CRITICAL: no master (1 standby, 2 down)");
}

#[test]
fn nagios_plugin_unreachable_is_critical_and_bad_usage_unknown() {
    // Nothing listens on a freshly allocated port.
    let dead = format!("http://127.0.0.1:{}", common::alloc_port());
    for url in [dead.clone(), format!("{dead}/nagios")] {
        let (code, out) = check(&["-t", "5", &url]);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.starts_with(&format!(
                "CRITICAL: cannot reach rebouncer at {dead}/nagios"
            )),
            "{out}"
        );
    }

    // A server that accepts connections and never answers: CRITICAL after -t seconds.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let t = Instant::now();
    let (code, out) = check(&["-t", "1", &url]);
    let took = t.elapsed();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.starts_with("CRITICAL: cannot reach rebouncer"), "{out}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "-t 1 took {took:?}"
    );
    drop(hung);

    for args in [
        &[][..],
        &["-t", "abc", "http://127.0.0.1:7100"][..],
        &["-t", "0", "http://127.0.0.1:7100"][..],
        &["-t"][..],
        &["-x", "http://127.0.0.1:7100"][..],
        &["http://127.0.0.1:7100", "extra"][..],
    ] {
        let (code, out) = check(args);
        assert_eq!(code, Some(3), "check_rebouncer {args:?}: {out}");
        assert!(out.starts_with("UNKNOWN: usage"), "{args:?}: {out}");
    }
}
