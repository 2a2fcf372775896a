//! SIGHUP in etcd mode: changed etcd settings stop the running watch and start one with
//! the new settings; turning the mode off by a reload is refused whole. A real etcd
//! (leader key written by the test, no Patroni) in front of a real PostgreSQL primary and
//! standby and a real PgBouncer.

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
    assert_eq!(etcd_json(&d)["endpoints"], serde_json::json!([nowhere]));

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
