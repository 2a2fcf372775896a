//! The daemon in etcd mode against a real etcd (leader key and member records written by
//! the test, no Patroni), a real PostgreSQL primary and standby and a real PgBouncer:
//! SIGHUP with changed etcd settings stops the running watch and starts one with the new
//! settings, turning the mode off by a reload is refused whole; a leader whose member
//! record advertises another address than its server's connection string is reported.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{Cluster, Opts};

const SHORT: Duration = Duration::from_secs(20);

fn metric(d: &common::Daemon, series: &str) -> Option<String> {
    let text = d.http_get("/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

fn etcd_json(d: &common::Daemon) -> serde_json::Value {
    let doc = d.http_get("/?format=json").expect("/ answers");
    let j: serde_json::Value = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    j["etcd"].clone()
}

fn etcd_keys(endpoint: &str, scope: &str) -> String {
    format!(
        "etcd_endpoints={endpoint}\netcd_scope={scope}\netcd_timeout=0.5\netcd_check_interval=0.5"
    )
}

#[test]
fn a_reload_restarts_the_watch_with_new_etcd_settings_and_refuses_turning_the_mode_off() {
    let etcd = Etcd::start();
    etcd.put("/service/main/leader", "pg1");
    let c = Cluster::start(Opts::default().standbys(1));
    // First an endpoint where nothing listens: etcd unreachable, nothing switched.
    let nowhere = format!("http://127.0.0.1:{}", common::alloc_port());
    let cfg = c.write_rebouncer_config(2, 2, &etcd_keys(&nowhere, "main"));
    let mut d = c.daemon(&cfg);
    d.wait_for(
        SHORT,
        "etcd reported unreachable, the servers checked",
        |d| {
            metric(d, "rebouncer_etcd_watch_lost_total").as_deref() == Some("1")
                && metric(d, "rebouncer_etcd_connected").as_deref() == Some("0")
                && metric(d, "rebouncer_rounds_total").is_some_and(|r| r != "0")
        },
    );
    // pg1 answers as the one master, but without the key it is not switched to.
    assert_eq!(
        metric(&d, r#"rebouncer_node_state{node="pg1",state="master"}"#).as_deref(),
        Some("1")
    );
    assert_ne!(c.bouncer_target_node(), Some(1), "switched without the key");
    let e = etcd_json(&d);
    assert_eq!(e["endpoints"], serde_json::json!([nowhere]));
    assert_eq!(e["endpoint"], serde_json::Value::Null, "no watch in place");

    // The right endpoint: the new watch hears pg1 and PgBouncer is routed there.
    let pid = d.pid();
    c.write_rebouncer_config(2, 2, &etcd_keys(&etcd.endpoint(), "main"));
    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "PgBouncer on pg1 through the new watch", |d| {
        c.bouncer_target_node() == Some(1)
            && metric(d, "rebouncer_etcd_connected").as_deref() == Some("1")
    });
    let log = d.log();
    assert!(
        log.contains(&format!(
            "etcd_endpoints {nowhere} -> {}; the watch of Patroni's leader key restarted with the new etcd settings",
            etcd.endpoint()
        )),
        "{log}"
    );
    // Shown once the watch is in place, a moment after the key was read.
    d.wait_for(SHORT, "the endpoint in use shown", |d| {
        etcd_json(d)["endpoint"] == etcd.endpoint()
    });
    let e = etcd_json(&d);
    assert_eq!(e["endpoints"], serde_json::json!([etcd.endpoint()]));
    assert_eq!((&e["leader"], &e["server"]), (&"pg1".into(), &"pg1".into()));
    // What was learnt of the old watch is kept: it was lost once.
    assert_eq!(e["watch_lost"], 1);

    // Another scope, whose leader key does not exist: Patroni has no leader there, so
    // nothing is switched and PgBouncer stays on pg1.
    c.write_rebouncer_config(2, 2, &etcd_keys(&etcd.endpoint(), "other"));
    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "/nagios to say Patroni reports no leader", |d| {
        d.nagios().contains("Patroni reports no leader")
    });
    let e = etcd_json(&d);
    assert_eq!(e["key"], "/service/other/leader");
    assert_eq!(
        (&e["heard"], &e["leader"]),
        (&true.into(), &serde_json::Value::Null)
    );
    assert_eq!(c.bouncer_target_node(), Some(1));

    // The mode turned off: refused whole, the watch of the other scope goes on.
    c.write_rebouncer_config(1, 2, "");
    common::signal(&pid.to_string(), "HUP").unwrap();
    d.wait_for(SHORT, "the reload refused", |d| {
        metric(d, "rebouncer_config_last_reload_successful").as_deref() == Some("0")
    });
    let log = d.log();
    assert!(
        log.contains("configuration reload refused, the running configuration stays: ")
            && log.contains("etcd_endpoints is gone, but rebouncer follows Patroni's leader key in etcd: turning the etcd mode off takes a restart"),
        "{log}"
    );
    assert_eq!(etcd_json(&d)["key"], "/service/other/leader");
    // Still following the key of the running configuration: its leader appears, and
    // PgBouncer, already on it, stays.
    etcd.put("/service/other/leader", "pg1");
    d.wait_for(SHORT, "the leader of scope other heard", |d| {
        etcd_json(d)["leader"] == "pg1"
    });
    assert!(d.is_running());
}

fn member_record(port: u16) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2"}}"#
    )
}

#[test]
fn a_leader_advertising_another_address_than_its_server_is_reported_once() {
    let etcd = Etcd::start();
    let c = Cluster::start(Opts::default().standbys(1));
    // pg1's record names pg2's port: a map that would be wrong.
    let wrong = c.port(2);
    etcd.put("/service/main/members/pg1", &member_record(wrong));
    etcd.put("/service/main/leader", "pg1");
    let cfg = c.write_rebouncer_config(2, 2, &etcd_keys(&etcd.endpoint(), "main"));
    let mut d = c.daemon(&cfg);
    let said = format!(
        "Patroni member pg1 advertises 127.0.0.1:{wrong} (conn_url in its member record), but its server pg1 in [servers] \
         connects to 127.0.0.1:{}: check etcd_members",
        c.port(1)
    );
    d.wait_for(SHORT, "/nagios to name both addresses", |d| {
        d.nagios().starts_with("WARNING") && d.nagios().contains(&said)
    });
    // The servers still decide: pg1 is the leader and the master, PgBouncer goes there.
    d.wait_for(SHORT, "PgBouncer on pg1", |_| {
        c.bouncer_target_node() == Some(1)
    });
    assert_eq!(
        metric(&d, "rebouncer_etcd_leader_address_mismatch").as_deref(),
        Some("1")
    );
    let e = etcd_json(&d);
    assert!(
        e["address_mismatch"]
            .as_str()
            .is_some_and(|m| m.starts_with(&said)),
        "{e}"
    );

    // The same leader heard again (a new revision of the key): said once only.
    etcd.put("/service/main/leader", "pg1");
    d.wait_for(SHORT, "the key's new revision heard", |d| {
        etcd_json(d)["revision"]
            .as_i64()
            .is_some_and(|r| r >= etcd.revision())
    });
    // The record fixed: the next report of the leader finds them matching.
    etcd.put("/service/main/members/pg1", &member_record(c.port(1)));
    etcd.put("/service/main/leader", "pg1");
    d.wait_for(SHORT, "the mismatch gone", |d| {
        metric(d, "rebouncer_etcd_leader_address_mismatch").as_deref() == Some("0")
    });
    d.wait_for(SHORT, "/nagios OK", |d| d.nagios().starts_with("OK"));
    let log = d.log();
    assert_eq!(log.matches(&said).count(), 1, "{log}");
    assert!(
        log.contains(
            "Patroni member pg1's advertised address matches its server's connection string now"
        ),
        "{log}"
    );
}
