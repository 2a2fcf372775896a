//! `rebouncer -check`: validate the configuration and every node file, try PgBouncer's
//! admin console and each server once, print one line each, like `nginx -t`. The exit
//! status says only whether the configuration is valid: a server that is down right now
//! is no reason to refuse a restart.

use std::path::Path;
use std::process::ExitCode;

use crate::admin::{self, Bouncer};
use crate::config;
use crate::conninfo::Env;
use crate::probe::Monitor;
use crate::switch;

pub async fn run(path: &Path) -> ExitCode {
    let cwd = match std::env::current_dir() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rebouncer: cannot determine the working directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match config::load(path, &cwd, &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "config {}: valid ({} servers, interval {} s, timeout {} s)",
        path.display(),
        cfg.servers.len(),
        cfg.interval.as_secs(),
        cfg.timeout.as_secs()
    );
    for w in &cfg.warnings {
        println!("warning: {w}");
    }
    let pointed = switch::link_target(&cfg.symlink);
    println!(
        "symlink {}: {}",
        cfg.symlink.display(),
        pointed.map_or("does not exist yet".to_string(), |t| format!(
            "points at {}",
            t.display()
        ))
    );
    let dir = cfg.symlink.parent().unwrap_or(Path::new("."));
    match switch::try_link_beside(&cfg.symlink) {
        Ok(()) => println!("symlink directory {}: writable", dir.display()),
        Err(e) => println!(
            "symlink directory {}: NOT writable ({e}): every switch would fail; make it writable for the user rebouncer runs as",
            dir.display()
        ),
    }
    let bouncer = Bouncer::new(cfg.pgbouncer.clone(), cfg.timeout);
    match admin::ping(&bouncer).await {
        Ok(v) => println!(
            "pgbouncer ({}): answers, {v}",
            admin::Console::endpoint(&bouncer)
        ),
        Err(e) => println!("pgbouncer: not usable: {e}"),
    }
    // All at the same time, so a hung server costs one timeout, not one each.
    let mut set = tokio::task::JoinSet::new();
    for (id, s) in cfg.servers.iter().enumerate() {
        let mut m = Monitor::new(id, s.target.clone(), cfg.timeout, false, None);
        set.spawn(async move { (id, m.check_fresh().await) });
    }
    let mut results: Vec<_> = set.join_all().await;
    results.sort_by_key(|(id, _)| *id);
    for (id, obs) in results {
        let s = &cfg.servers[id];
        let timeline = match (obs.timeline, &obs.timeline_note) {
            (Some(t), _) => format!(", timeline {}", t.timeline),
            (None, Some(note)) => format!("; {note}"),
            (None, None) => String::new(),
        };
        match obs.error {
            None => println!(
                "{} ({}): {}{timeline}",
                s.name, s.target.endpoint, obs.state
            ),
            Some(e) => println!("{}: down: {e}", s.name),
        }
    }
    ExitCode::SUCCESS
}
