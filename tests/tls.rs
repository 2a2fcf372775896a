//! Connection strings as Go-era configs wrote them, against a TLS-enabled PostgreSQL with
//! a self-signed certificate made by the test, and against PgBouncer without TLS.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, Link, Opts};

fn check(c: &Cluster, pgbouncer: &str, servers: &[(String, String)]) -> String {
    let mut text = c.rebouncer_config_text(1, 2, "", servers);
    text = text.replacen(&c.pgbouncer_conninfo(), pgbouncer, 1);
    let cfg = c.write_file("check.ini", &text);
    let out = Command::new(common::rebouncer_bin())
        .arg("-check")
        .arg(format!("-config={}", cfg.display()))
        .current_dir(c.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sslmode_require_connects_encrypted_to_a_self_signed_server() {
    let c = Cluster::start(Opts::default().standbys(1).tls(true).link(Link::Node(2)));
    let servers = vec![
        ("pg1".to_string(), c.conninfo_ssl(1, "require")),
        ("pg2".to_string(), c.conninfo_ssl(2, "require")),
    ];
    let cfg = c.write_rebouncer_config_with(1, 2, "", &servers);
    let mut d = c.daemon(&cfg);
    d.wait_for(Duration::from_secs(20), "switch to pg1 over TLS", |d| {
        d.http_get("/nodes").unwrap_or_default() == "pg1: master\npg2: standby\n"
            && c.symlink_node() == Some(1)
    });
    // The daemon's kept monitoring session really is encrypted.
    let ssl = c
        .query(
            1,
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'rebouncer'",
        )
        .unwrap();
    assert_eq!(
        ssl.trim(),
        "t",
        "rebouncer's session to pg1 is not encrypted"
    );
}

#[test]
fn verify_full_refuses_a_wrong_host_name_and_verify_ca_accepts_it() {
    let c = Cluster::start(Opts::default().standbys(0).tls(true));
    let cert = c.cert_path().expect("TLS cluster has a certificate");
    let port = c.port(1);
    let with = |mode: &str, host: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={port} dbname=postgres user=postgres sslmode={mode} sslrootcert={}",
            cert.display()
        )
    };
    let servers = vec![
        (
            "full_wrong".to_string(),
            with("verify-full", "wrong.example"),
        ),
        ("full_right".to_string(), with("verify-full", "localhost")),
        ("ca_wrong".to_string(), with("verify-ca", "wrong.example")),
    ];
    for (name, _) in &servers {
        std::fs::copy(c.node_file(1), c.configdir().join(format!("{name}.ini"))).unwrap();
    }
    let out = check(&c, &c.pgbouncer_conninfo(), &servers);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in {out}"))
            .to_string()
    };
    let wrong = line("full_wrong");
    assert!(wrong.contains("down"), "{wrong}");
    assert!(
        wrong.to_lowercase().contains("hostname") || wrong.contains("certificate verify failed"),
        "{wrong}"
    );
    assert!(
        line("full_right").ends_with(": master, timeline 1"),
        "{out}"
    );
    assert!(line("ca_wrong").ends_with(": master, timeline 1"), "{out}");
}

#[test]
fn tls_required_by_default_against_pgbouncer_says_to_add_sslmode_disable() {
    let c = Cluster::start(Opts::default().standbys(0));
    let no_sslmode = format!(
        "host=127.0.0.1 port={} dbname=pgbouncer user=postgres",
        c.bouncer_port()
    );
    let out = check(&c, &no_sslmode, &c.servers());
    assert!(out.contains("sslmode=disable"), "{out}");
}
