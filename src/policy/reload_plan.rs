//! What a configuration re-read on SIGHUP changes, worked out before anything changes:
//! a reload applies whole or not at all. The settings that cannot change while running
//! keep their running values and are listed as not applied.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, Server};

/// A reload checked against the running configuration, not applied yet.
#[derive(Debug)]
pub struct ReloadPlan {
    /// The configuration as it will run.
    pub new: Config,
    /// What changes, one phrase each, for the log and the status pages.
    pub changes: Vec<String>,
    /// Changes that need a restart; the running values stay.
    pub not_applied: Vec<String>,
    /// `timeout` or `keep_connections` changed: settings of every monitor.
    pub restart_all: bool,
    /// The admin console's connection string changed.
    pub new_console: bool,
    /// Servers no longer configured.
    pub removed: Vec<String>,
    /// Node files of a kept `configdir` that must be readable before the plan applies
    /// (server name, file).
    pub must_read: Vec<(String, PathBuf)>,
    /// etcd mode: settings of the watch changed; the running watch is stopped and one
    /// with the new settings started.
    pub new_watch: bool,
}

/// The etcd mode cannot be turned on or off by a reload: the checks, the connections
/// kept and the schedule of the rounds are all the mode's. Refused whole, with the file
/// and line to look at.
fn mode_switch(old: &Config, new: &Config) -> Result<(), String> {
    let file = new.file.display();
    match (&old.etcd, &new.etcd) {
        (None, Some(m)) => Err(format!(
            "{file}:{}: etcd_endpoints is set, but rebouncer runs in polling mode: turning the etcd mode on takes a restart (systemctl restart rebouncer); nothing of this reload is applied",
            m.line
        )),
        (Some(_), None) => Err(format!(
            "{file}: etcd_endpoints is gone, but rebouncer follows Patroni's leader key in etcd: turning the etcd mode off takes a restart (systemctl restart rebouncer); nothing of this reload is applied"
        )),
        _ => Ok(()),
    }
}

/// What a valid new configuration changes, and the configuration as it will run:
/// the settings that cannot change live keep their running values. Refused (why, in one
/// line) when it turns the etcd mode on or off.
pub fn plan(old: &Config, mut new: Config) -> Result<ReloadPlan, String> {
    mode_switch(old, &new)?;
    let mut not_applied = Vec::new();
    let mut must_read = Vec::new();
    if new.symlink != old.symlink {
        not_applied.push(format!(
            "symlink (the file says {}, rebouncer keeps {})",
            new.symlink.display(),
            old.symlink.display()
        ));
        new.symlink = old.symlink.clone();
    }
    if new.state_file != old.state_file {
        not_applied.push(format!(
            "state_file (the file says {}, rebouncer keeps {})",
            new.state_file.display(),
            old.state_file.display()
        ));
        new.state_file = old.state_file.clone();
    }
    if new.configdir != old.configdir {
        not_applied.push(format!(
            "configdir (the file says {}, rebouncer keeps {})",
            new.configdir.display(),
            old.configdir.display()
        ));
        // The node files the switch will use are the kept directory's: they must be
        // there and valid, as at start.
        for s in &mut new.servers {
            s.node_file = old.configdir.join(format!("{}.ini", s.name));
            must_read.push((s.name.clone(), s.node_file.clone()));
        }
        new.configdir = old.configdir.clone();
    }

    let mut changes = Vec::new();
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    let mut setting = |name: &str, was: String, now: String| {
        if was != now {
            changes.push(format!("{name} {was} -> {now}"));
        }
    };
    setting("interval", secs(old.interval), secs(new.interval));
    setting("timeout", secs(old.timeout), secs(new.timeout));
    setting(
        "fast_interval",
        secs(old.fast_interval),
        secs(new.fast_interval),
    );
    setting(
        "keep_connections",
        old.keep_connections.to_string(),
        new.keep_connections.to_string(),
    );
    setting(
        "pause_on_failover",
        old.pause_on_failover.to_string(),
        new.pause_on_failover.to_string(),
    );
    setting(
        "pause_timeout",
        secs(old.pause_timeout),
        secs(new.pause_timeout),
    );
    let new_console = new.pgbouncer_conninfo != old.pgbouncer_conninfo;
    if new_console {
        changes.push(format!(
            "pgbouncer {} -> {}",
            old.pgbouncer.endpoint, new.pgbouncer.endpoint
        ));
    }
    // Both are settings of every monitor (and of its connections).
    let restart_all = new.timeout != old.timeout || new.keep_connections != old.keep_connections;
    let named = |list: &[Server], name: &str| list.iter().position(|s| s.name == name);
    let added: Vec<String> = new
        .servers
        .iter()
        .filter(|s| named(&old.servers, &s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    let removed: Vec<String> = old
        .servers
        .iter()
        .filter(|s| named(&new.servers, &s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    let reconnected: Vec<String> = new
        .servers
        .iter()
        .filter(|s| {
            named(&old.servers, &s.name).is_some_and(|i| old.servers[i].conninfo != s.conninfo)
        })
        .map(|s| s.name.clone())
        .collect();
    let order = |list: &[Server]| list.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let reordered =
        added.is_empty() && removed.is_empty() && order(&old.servers) != order(&new.servers);
    if !added.is_empty() {
        changes.push(format!("server(s) {} added", added.join(", ")));
    }
    if !removed.is_empty() {
        changes.push(format!("server(s) {} removed", removed.join(", ")));
    }
    if !reconnected.is_empty() {
        changes.push(format!(
            "connection string of {} changed (monitor restarted)",
            reconnected.join(", ")
        ));
    }
    if reordered {
        changes.push("servers reordered".to_string());
    }
    if restart_all && !new.servers.is_empty() {
        changes.push("every monitor restarted (timeout or keep_connections)".to_string());
    }
    let etcd = match (&old.etcd, &new.etcd) {
        (Some(was), Some(now)) => now.changes_from(was),
        _ => Vec::new(),
    };
    let new_watch = !etcd.is_empty();
    changes.extend(etcd);
    if new_watch {
        changes.push(
            "the watch of Patroni's leader key restarted with the new etcd settings".to_string(),
        );
    }
    Ok(ReloadPlan {
        new,
        changes,
        not_applied,
        restart_all,
        new_console,
        removed,
        must_read,
        new_watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::Env;

    fn load(dir: &std::path::Path, global: &str, servers: &[(&str, u16)]) -> Config {
        std::fs::create_dir_all(dir.join("nodes")).unwrap();
        let mut lines = String::new();
        for (name, port) in servers {
            std::fs::write(
                dir.join(format!("nodes/{name}.ini")),
                format!(
                    "[databases]\nappdb = host=127.0.0.1 port={port} dbname=appdb\n[pgbouncer]\nlisten_port = 6432\n"
                ),
            )
            .unwrap();
            lines += &format!("{name}=host=127.0.0.1 port={port} dbname=postgres user=postgres\n");
        }
        let ini = dir.join("rebouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[global]\npgbouncer=host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer\n\
                 symlink={0}/pgbouncer.ini\nconfigdir={0}/nodes\nstate_file={0}/rebouncer.state\n{global}\
                 [servers]\n{lines}",
                dir.display()
            ),
        )
        .unwrap();
        let env = Env {
            os_user: Some("postgres".into()),
            ..Env::default()
        };
        crate::config::load(&ini, dir, &env).unwrap()
    }

    #[test]
    fn added_removed_and_changed_servers_are_named() {
        let d = tempfile::tempdir().unwrap();
        let old = load(d.path(), "", &[("pg1", 5431), ("pg2", 5432), ("pg3", 5433)]);
        let new = load(d.path(), "", &[("pg1", 5431), ("pg2", 6000), ("pg4", 5434)]);
        let p = plan(&old, new).unwrap();
        assert_eq!(
            p.changes,
            [
                "server(s) pg4 added",
                "server(s) pg3 removed",
                "connection string of pg2 changed (monitor restarted)"
            ]
        );
        assert_eq!(p.removed, ["pg3"]);
        assert!(!p.restart_all && !p.new_console && p.must_read.is_empty());
    }

    #[test]
    fn a_new_timeout_restarts_every_monitor_and_a_reorder_is_said() {
        let d = tempfile::tempdir().unwrap();
        let old = load(d.path(), "", &[("pg1", 5431), ("pg2", 5432)]);
        let new = load(d.path(), "timeout=4\n", &[("pg2", 5432), ("pg1", 5431)]);
        let p = plan(&old, new).unwrap();
        assert!(p.restart_all);
        assert!(
            p.changes.contains(&"servers reordered".to_string()),
            "{:?}",
            p.changes
        );
        assert!(
            p.changes.iter().any(|c| c.starts_with("timeout ")),
            "{:?}",
            p.changes
        );
        assert!(
            p.changes
                .contains(&"every monitor restarted (timeout or keep_connections)".to_string()),
            "{:?}",
            p.changes
        );
    }

    #[test]
    fn a_removal_alone_is_not_called_a_reorder() {
        let d = tempfile::tempdir().unwrap();
        let old = load(d.path(), "", &[("pg1", 5431), ("pg2", 5432), ("pg3", 5433)]);
        let new = load(d.path(), "", &[("pg1", 5431), ("pg2", 5432)]);
        assert_eq!(plan(&old, new).unwrap().changes, ["server(s) pg3 removed"]);
    }

    #[test]
    fn settings_that_need_a_restart_keep_their_running_values() {
        let d = tempfile::tempdir().unwrap();
        let old = load(d.path(), "", &[("pg1", 5431)]);
        let other = tempfile::tempdir().unwrap();
        let new = load(other.path(), "", &[("pg1", 5431)]);
        let p = plan(&old, new).unwrap();
        assert_eq!(p.new.symlink, old.symlink);
        assert_eq!(p.new.configdir, old.configdir);
        assert_eq!(p.new.state_file, old.state_file);
        assert_eq!(p.not_applied.len(), 3, "{:?}", p.not_applied);
        assert_eq!(
            p.must_read,
            [("pg1".to_string(), old.configdir.join("pg1.ini"))],
            "the kept directory's node file must be readable"
        );
    }

    const ETCD: &str = "etcd_endpoints=http://10.0.0.1:2379\netcd_scope=main\n";

    #[test]
    fn changed_etcd_settings_start_a_new_watch_and_name_what_changed() {
        let d = tempfile::tempdir().unwrap();
        let servers = [("pg1", 5431), ("pg2", 5432)];
        let old = load(d.path(), ETCD, &servers);
        let same = load(d.path(), ETCD, &servers);
        let p = plan(&old, same).unwrap();
        assert!(!p.new_watch, "{:?}", p.changes);
        assert!(p.changes.is_empty(), "{:?}", p.changes);

        let new = load(
            d.path(),
            "etcd_endpoints=http://10.0.0.2:2379,http://10.0.0.3:2379\netcd_scope=other\n\
             etcd_members=pg-a:pg1\netcd_user=rb\netcd_password=s3cret\netcd_timeout=1\n",
            &servers,
        );
        let p = plan(&old, new).unwrap();
        assert!(p.new_watch);
        assert_eq!(
            p.changes,
            [
                "etcd_endpoints http://10.0.0.1:2379 -> http://10.0.0.2:2379,http://10.0.0.3:2379",
                "etcd_scope main -> other",
                "etcd_members (same names) -> pg-a:pg1",
                "etcd_user (none) -> rb",
                "etcd_timeout 2 s -> 1 s",
                "the watch of Patroni's leader key restarted with the new etcd settings",
            ]
        );
        assert!(p.new.etcd.is_some());
        // Neither the monitors nor the console are touched by it.
        assert!(!p.restart_all && !p.new_console);

        // A new password alone is a change, named without its value.
        let with_user = |pw: &str| {
            load(
                d.path(),
                &format!("{ETCD}etcd_user=rb\netcd_password={pw}\n"),
                &servers,
            )
        };
        let p = plan(&with_user("one"), with_user("two")).unwrap();
        assert!(p.new_watch);
        assert_eq!(p.changes[0], "etcd_password changed");
        assert!(
            !p.changes.iter().any(|c| c.contains("two")),
            "{:?}",
            p.changes
        );
    }

    #[test]
    fn turning_the_etcd_mode_on_or_off_is_refused_with_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let servers = [("pg1", 5431)];
        let polling = load(d.path(), "", &servers);
        let etcd = load(d.path(), &format!("interval=5\n{ETCD}"), &servers);
        let file = d.path().join("rebouncer.ini").display().to_string();
        let e = plan(&polling, etcd).unwrap_err();
        // [global] is line 1, then pgbouncer, symlink, configdir, state_file, interval.
        assert!(
            e.starts_with(&format!(
                "{file}:7: etcd_endpoints is set, but rebouncer runs in polling mode: turning the etcd mode on takes a restart"
            )),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let etcd = load(d.path(), ETCD, &servers);
        let polling = load(d.path(), "", &servers);
        let e = plan(&etcd, polling).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{file}: etcd_endpoints is gone, but rebouncer follows Patroni's leader key in etcd: turning the etcd mode off takes a restart"
            )),
            "{e}"
        );
    }
}
