//! The JSON pages (`/?format=json`, `/nodes?format=json`, `/events`): the view's types
//! as serde writes them, arranged into one document each. Field names and order are a
//! contract with monitoring; the README shows an example of each.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::events::{CAPACITY, Events};
use crate::json_format::{self, to_document};
use crate::pages::nagios;
use crate::policy::leader::LeaderView;
use crate::view::{
    Drift, Level, NodeStatus, PausedDatabase, Phase, RoundStats, Snapshot, StalePrimary,
    SwitchFailure,
};

/// `/nodes` as JSON: every node in file order, the unchecked ones with `"state": null`.
/// In etcd mode the leader key too: which of these servers Patroni says leads is what a
/// script reading the list wants next to it.
#[derive(Serialize)]
struct NodesPage<'a> {
    nodes: &'a [NodeStatus],
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<EtcdPage<'a>>,
}

pub fn nodes(s: &Snapshot, now: SystemTime) -> String {
    to_document(&NodesPage {
        nodes: &s.nodes,
        etcd: s.etcd.as_ref().map(|v| EtcdPage::of(v, now)),
    })
}

/// The etcd mode (present only in it, so the polling mode's documents stay as they
/// were): Patroni's leader key as last heard and the watch that follows it.
#[derive(Serialize)]
struct EtcdPage<'a> {
    /// `<namespace>/<scope>/leader`.
    key: &'a str,
    endpoints: &'a [String],
    /// The one of `endpoints` the watch is in place on; null while it is on none.
    endpoint: Option<&'a str>,
    /// The watch is in place (the key heard, etcd not lost since).
    connected: bool,
    /// The key was heard at least once; with `leader: null` it means Patroni has no leader.
    heard: bool,
    /// The member the key names, and the `[servers]` entry it maps to.
    leader: Option<&'a str>,
    server: Option<&'a str>,
    revision: Option<i64>,
    /// When the key last changed, as rebouncer saw it.
    #[serde(serialize_with = "json_format::opt_time")]
    changed: Option<SystemTime>,
    /// When the watch last reported anything; the key is not rewritten while its leader
    /// holds it, so a settled cluster has an old one.
    #[serde(serialize_with = "json_format::opt_time")]
    last_event: Option<SystemTime>,
    #[serde(serialize_with = "json_format::opt_seconds")]
    last_event_age_seconds: Option<Duration>,
    #[serde(serialize_with = "json_format::opt_time")]
    unreachable_since: Option<SystemTime>,
    /// Why etcd was last lost, kept after it answers again.
    last_error: Option<&'a str>,
    #[serde(serialize_with = "json_format::opt_time")]
    last_error_time: Option<SystemTime>,
    watch_lost: u64,
    /// Why nothing is switched, while something is held.
    held: Option<&'a str>,
    /// The leader's member record advertises another address than its server's
    /// connection string: the words for it.
    address_mismatch: Option<&'a str>,
}

impl<'a> EtcdPage<'a> {
    fn of(v: &'a LeaderView, now: SystemTime) -> EtcdPage<'a> {
        EtcdPage {
            key: &v.key,
            endpoints: &v.endpoints,
            endpoint: v.endpoint.as_deref(),
            connected: v.connected(),
            heard: v.heard,
            leader: v.leader.as_deref(),
            server: v.server.as_deref(),
            revision: v.revision,
            changed: v.changed,
            last_event: v.last_event,
            last_event_age_seconds: v
                .last_event
                .map(|t| now.duration_since(t).unwrap_or_default()),
            unreachable_since: v.unreachable.as_ref().map(|(t, _)| *t),
            last_error: v.last_error.as_ref().map(|(_, e)| e.as_str()),
            last_error_time: v.last_error.as_ref().map(|(t, _)| *t),
            watch_lost: v.watch_lost,
            held: v.held.as_deref(),
            address_mismatch: v.address_mismatch.as_deref(),
        }
    }
}

/// `/events`: every event kept, oldest first.
#[derive(Serialize)]
struct EventsPage<'a> {
    capacity: usize,
    #[serde(serialize_with = "all_events")]
    events: &'a Events,
}

fn all_events<S: Serializer>(events: &&Events, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(events.iter())
}

pub fn events(s: &Snapshot) -> String {
    to_document(&EventsPage {
        capacity: CAPACITY,
        events: &s.events,
    })
}

/// `/` as JSON: what the overview says, for scripts.
#[derive(Serialize)]
struct RootPage<'a> {
    version: &'static str,
    #[serde(serialize_with = "json_format::time")]
    time: SystemTime,
    #[serde(serialize_with = "json_format::time")]
    started: SystemTime,
    phase: &'static str,
    phase_error: Option<&'a str>,
    interval_seconds: u64,
    level: Level,
    status: String,
    active: Option<&'a str>,
    confirmed: bool,
    #[serde(serialize_with = "json_format::opt_time")]
    last_switch: Option<SystemTime>,
    conditions: Conditions<'a>,
    last_round: Option<RoundStats>,
    config_warnings: &'a [String],
    last_reload: Option<LastReload<'a>>,
    log: LogPage,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<EtcdPage<'a>>,
    nodes: &'a [NodeStatus],
    #[serde(serialize_with = "recent_events")]
    recent_events: &'a Snapshot,
}

fn recent_events<S: Serializer>(snapshot: &&Snapshot, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(snapshot.recent_events())
}

/// What is wrong, or could be, each condition on its own.
#[derive(Serialize)]
struct Conditions<'a> {
    no_master: bool,
    split_brain: Vec<&'a str>,
    stale_primaries: Vec<StalePrimary<'a>>,
    switch_failure: Option<&'a SwitchFailure>,
    refusal: Option<&'a str>,
    drift: Option<&'a Drift>,
    paused: &'a [PausedDatabase],
    /// Databases whose `RESUME` is pending; the key is `held`, the name monitoring reads.
    #[serde(rename = "held")]
    resume_pending: &'a [String],
    /// Databases whose `KILL` is pending; the key is `unreset`, the name monitoring reads.
    #[serde(rename = "unreset")]
    kill_pending: &'a [String],
    refusing_new_connections: Vec<&'a str>,
    state_file_error: Option<&'a str>,
}

#[derive(Serialize)]
struct LastReload<'a> {
    #[serde(serialize_with = "json_format::time")]
    time: SystemTime,
    ok: bool,
    error: Option<&'a str>,
    changes: &'a [String],
    not_applied: &'a [String],
}

/// Log lines dropped since start (the log's queue was full), and when the last was.
#[derive(Serialize)]
struct LogPage {
    lines_dropped: u64,
    #[serde(serialize_with = "json_format::opt_time")]
    last_dropped: Option<SystemTime>,
}

pub fn root(s: &Snapshot, now: SystemTime) -> String {
    let health = nagios::health(s, now);
    let (phase, phase_error) = match &s.phase {
        Phase::Running => ("running", None),
        Phase::WaitingForPgBouncer { error } => ("waiting_for_pgbouncer", Some(error.as_str())),
    };
    let conditions = Conditions {
        no_master: s.no_master(),
        split_brain: s.split_brain(),
        stale_primaries: s.stale(),
        switch_failure: s.switch_failure.as_ref(),
        refusal: s.refusal(),
        drift: s.drift.as_ref(),
        paused: &s.paused,
        resume_pending: &s.resume_pending,
        kill_pending: &s.kill_pending,
        refusing_new_connections: s
            .nodes
            .iter()
            .filter(|n| n.refuses_new.is_some())
            .map(|n| n.name.as_str())
            .collect(),
        state_file_error: s.state_error.as_deref(),
    };
    to_document(&RootPage {
        version: env!("CARGO_PKG_VERSION"),
        time: now,
        started: s.started,
        phase,
        phase_error,
        interval_seconds: s.interval.as_secs(),
        level: health.level,
        status: health.to_string(),
        active: s.active.as_deref(),
        confirmed: s.active.is_some() && s.confirmed,
        last_switch: s.last_switch,
        conditions,
        last_round: s.last_round,
        config_warnings: &s.config_warnings,
        last_reload: s.reload.as_ref().map(|r| LastReload {
            time: r.at,
            ok: r.error.is_none(),
            error: r.error.as_deref(),
            changes: &r.changes,
            not_applied: &r.not_applied,
        }),
        log: {
            let d = s.log_drops.read();
            LogPage {
                lines_dropped: d.lines,
                last_dropped: d.last,
            }
        },
        etcd: s.etcd.as_ref().map(|v| EtcdPage::of(v, now)),
        nodes: &s.nodes,
        recent_events: s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::NodeState::*;
    use crate::events::{Kind, SwitchTiming};
    use crate::logging::{DropTally, DroppedLines};
    use crate::view::ReloadStatus;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_748_800_000 + ms)
    }

    fn parse(doc: &str) -> Value {
        assert!(doc.ends_with("}\n"), "{doc}");
        serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"))
    }

    /// Everything the root page can show at once.
    fn rich() -> Snapshot {
        let names: Vec<String> = ["db1", "db2", "db3"].map(String::from).to_vec();
        let mut s = Snapshot::new(&names, Duration::from_secs(30), "127.0.0.1:6432".into());
        s.started = t(0);
        for (i, st) in [Master, Master, Down].into_iter().enumerate() {
            let n = &mut s.nodes[i];
            n.state = Some(st);
            n.last_check = Some(t(60_000 + i as u64));
            n.since = Some(t(1_000 * i as u64));
        }
        s.nodes[0].timeline = Some(1);
        s.nodes[1].timeline = Some(2);
        s.nodes[1].took = Some(Duration::from_micros(1234));
        s.nodes[1].refuses_new = Some("FATAL:  too many connections for role \"app\"".into());
        s.nodes[2].error = Some(
            "connection refused\n\tretry \\ later \u{1}\u{8}\u{c}\r\u{7f} é \u{2028}\u{2029}"
                .into(),
        );
        s.nodes[2].next_try = Some(Duration::from_millis(2500));
        s.nodes[2].timeline_note =
            Some("permission denied for function pg_control_checkpoint".into());
        s.active = Some("db2".into());
        s.confirmed = true;
        s.last_switch = Some(t(5_000));
        s.switch_failure = Some(SwitchFailure {
            wanted: "db2".into(),
            error: "RELOAD failed".into(),
            since: t(7_000),
        });
        s.decide(Some(2));
        s.verdict.as_mut().unwrap().refusal =
            Some("db2 is the only master but refuses new connections".into());
        s.drift = Some(Drift {
            what: "PgBouncer uses /etc/x.ini".into(),
            since: t(8_000),
        });
        s.paused = vec![
            PausedDatabase {
                name: "appdb".into(),
                by_rebouncer: true,
            },
            PausedDatabase {
                name: "other".into(),
                by_rebouncer: false,
            },
        ];
        s.resume_pending = vec!["appdb".into()];
        s.kill_pending = vec!["appdb".into(), "b".into()];
        s.state_file = "/var/lib/rebouncer/state".into();
        s.state_error = Some("cannot write the state file: Permission denied".into());
        s.config_warnings = vec!["x.ini:7: unknown key \"loglevel\"".into()];
        s.reload = Some(ReloadStatus {
            at: t(9_000),
            error: Some("bad line 3".into()),
            changes: vec!["interval 30 -> 1".into()],
            not_applied: vec!["symlink".into()],
        });
        s.last_round = Some(RoundStats {
            asked: 3,
            answered: 2,
            took: Duration::from_micros(2_500_300),
        });
        s.log_drops = DropTally::saying(DroppedLines {
            lines: 37,
            last: Some(t(30_000)),
        });
        for i in 0..11 {
            let node = if i % 2 == 0 { Some("db1") } else { None };
            s.events
                .push(t(10_000 + i), Kind::State, node, format!("event {i} \"q\""));
        }
        let timing = SwitchTiming {
            switch_seconds: 0.25,
            since_needed_seconds: 2.0,
        };
        s.events.push_timed(
            t(20_000),
            Kind::Switch,
            Some("db2"),
            "PgBouncer now points at db2".into(),
            Some(timing),
        );
        s
    }

    fn split() -> Snapshot {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut s = Snapshot::new(&names, Duration::from_secs(1), "x".into());
        s.started = t(0);
        s.log_drops = DropTally::default();
        for i in 0..2 {
            s.nodes[i].state = Some(Master);
            s.nodes[i].last_check = Some(t(500));
        }
        s.active = Some("a".into());
        s.decide(None);
        s
    }

    /// The page's bytes with the `/nagios` line blanked: it holds local times, written in
    /// whatever zone the machine is in.
    fn without_status(doc: &str) -> String {
        match doc.split_once(r#""status":""#) {
            Some((head, rest)) => {
                let tail = &rest[rest.find(r#"","active":"#).unwrap()..];
                format!("{head}\"status\":\"-{tail}")
            }
            None => doc.to_string(),
        }
    }

    /// The pages as the hand-written JSON writer wrote them, on the same snapshots, before
    /// serde took over (`testdata/json-before-serde.txt`): serde's must be the same bytes.
    #[test]
    fn the_pages_are_byte_for_byte_what_they_were_before_serde() {
        let before = include_str!("testdata/json-before-serde.txt");
        let mut sections = std::collections::BTreeMap::new();
        let mut lines = before.lines();
        while let Some(title) = lines.next() {
            let title = title.strip_prefix("== ").unwrap();
            sections.insert(title.to_string(), format!("{}\n", lines.next().unwrap()));
        }
        let mut now_docs = Vec::new();
        for (name, s) in [("rich", rich()), ("split", split())] {
            for ms in [61_000, 400_000] {
                now_docs.push((format!("{name} root {ms}"), root(&s, t(ms))));
            }
            now_docs.push((format!("{name} nodes"), nodes(&s, t(61_000))));
            now_docs.push((format!("{name} events"), events(&s)));
        }
        let mut w = Snapshot::new(&["n".to_string()], Duration::from_secs(1), "x:1".into());
        w.started = t(0);
        w.log_drops = DropTally::default();
        w.phase = Phase::WaitingForPgBouncer {
            error: "connection refused".into(),
        };
        now_docs.push(("waiting root".into(), root(&w, t(3_000))));
        let mut h = split();
        h.nodes[1].state = Some(Standby);
        h.nodes[2].state = Some(Standby);
        h.nodes[2].last_check = Some(t(500));
        h.confirmed = true;
        h.decide(None);
        now_docs.push(("healthy root".into(), root(&h, t(1_000))));
        h.nodes[0].state = Some(Down);
        h.decide(None);
        now_docs.push(("nomaster root".into(), root(&h, t(1_000))));
        assert_eq!(now_docs.len(), sections.len());
        for (title, doc) in now_docs {
            let old = sections.get(&title).unwrap_or_else(|| panic!("no {title}"));
            assert_eq!(without_status(&doc), without_status(old), "{title}");
            let (new, old) = (parse(&doc), parse(old));
            assert_eq!(new["level"], old["level"], "{title}");
        }
    }

    #[test]
    fn the_root_page_carries_the_verdict_and_the_level_as_values() {
        let s = rich();
        let j = parse(&root(&s, t(61_000)));
        assert_eq!(j["level"], "CRITICAL");
        let status = j["status"].as_str().unwrap();
        assert!(
            status.starts_with("CRITICAL: the symlink points at db2's config"),
            "{status}"
        );
        let c = &j["conditions"];
        assert_eq!(c["no_master"], false);
        assert_eq!(c["split_brain"], json!([]));
        assert_eq!(
            c["stale_primaries"],
            json!([{"name": "db1", "timeline": 1, "cluster_timeline": 2, "fenced_by_standby": null}])
        );
        assert_eq!(
            c["refusal"],
            "db2 is the only master but refuses new connections"
        );
        assert_eq!(c["held"], json!(["appdb"]));
        assert_eq!(c["unreset"], json!(["appdb", "b"]));
        assert_eq!(c["refusing_new_connections"], json!(["db2"]));
        assert_eq!(
            c["paused"],
            json!([
                {"database": "appdb", "by_rebouncer": true},
                {"database": "other", "by_rebouncer": false}
            ])
        );
        assert_eq!(
            j["last_round"],
            json!({"asked": 3, "answered": 2, "seconds": 2.5003})
        );
        assert_eq!(j["last_reload"]["ok"], false);
        assert_eq!(j["recent_events"].as_array().unwrap().len(), 10);
        assert_eq!(j["recent_events"][9]["seq"], 12);
        assert_eq!(j["recent_events"][9]["switch_seconds"], 0.25);
        assert_eq!(j["recent_events"][8].get("switch_seconds"), None);

        let s = split();
        let j = parse(&root(&s, t(600)));
        // c is not checked yet: starting up, whatever the two masters say.
        assert_eq!(j["level"], "WARNING");
        assert_eq!(j["conditions"]["split_brain"], json!(["a", "b"]));
        assert_eq!(j["conditions"]["no_master"], false);
    }

    #[test]
    fn the_root_page_counts_dropped_log_lines() {
        let j = parse(&root(&rich(), t(61_000)));
        assert_eq!(
            j["log"],
            json!({"lines_dropped": 37, "last_dropped": "2025-12-03T08:00:30.000Z"})
        );
        let j = parse(&root(&split(), t(61_000)));
        assert_eq!(j["log"], json!({"lines_dropped": 0, "last_dropped": null}));
    }

    #[test]
    fn the_nodes_page_escapes_errors_and_lists_unchecked_nodes() {
        let mut s = split();
        s.nodes[1].error = Some("FATAL:  role \"x\"\ndoes not exist".into());
        let doc = nodes(&s, t(61_000));
        let j = parse(&doc);
        let n = j["nodes"].as_array().unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[1]["last_error"], "FATAL:  role \"x\"\ndoes not exist");
        assert_eq!(n[2]["name"], "c");
        assert_eq!(n[2]["state"], Value::Null);
        assert_eq!(n[0]["state"], "master");
        assert_eq!(n[0]["last_check"], "2025-12-03T08:00:00.500Z");
        let keys: Vec<&str> = n[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "name",
            "state",
            "last_check",
            "since",
            "last_error",
            "timeline",
            "timeline_note",
            "check_seconds",
            "refuses_new_connections",
            "next_check_seconds",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn the_events_page_numbers_every_event_and_times_switches() {
        let mut s = split();
        s.events.push_timed(
            SystemTime::UNIX_EPOCH,
            Kind::Switch,
            Some("pg2"),
            "PgBouncer now points at \"pg2\"".into(),
            Some(SwitchTiming {
                switch_seconds: 0.25,
                since_needed_seconds: 1.0,
            }),
        );
        s.events.push(
            SystemTime::UNIX_EPOCH,
            Kind::SplitBrainStart,
            None,
            "x".into(),
        );
        let doc = events(&s);
        assert_eq!(
            doc,
            "{\"capacity\":200,\"events\":[{\"seq\":1,\"time\":\"1970-01-01T00:00:00.000Z\",\"kind\":\"switch\",\"node\":\"pg2\",\"text\":\"PgBouncer now points at \\\"pg2\\\"\",\"switch_seconds\":0.25,\"since_needed_seconds\":1},{\"seq\":2,\"time\":\"1970-01-01T00:00:00.000Z\",\"kind\":\"split_brain_start\",\"node\":null,\"text\":\"x\"}]}\n"
        );
        let j = parse(&doc);
        assert_eq!(j["events"][0]["kind"], "switch");
        assert_eq!(j["events"][0]["since_needed_seconds"], 1.0);
        assert_eq!(j["events"][1]["node"], Value::Null);
    }

    /// The etcd mode as the pages see it: pg2 leads (revision 41, heard 60 s after start),
    /// etcd lost once before.
    fn following() -> Snapshot {
        let mut s = split();
        s.etcd = Some(LeaderView {
            key: "/service/main/leader".into(),
            leader: Some("pg-b".into()),
            server: Some("b".into()),
            heard: true,
            revision: Some(41),
            changed: Some(t(60_000)),
            endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
            endpoint: Some("http://10.0.0.2:2379".into()),
            last_event: Some(t(90_000)),
            last_error: Some((t(80_000), "connection refused".into())),
            watch_lost: 1,
            ..LeaderView::default()
        });
        s
    }

    #[test]
    fn in_etcd_mode_the_root_and_nodes_pages_carry_the_leader_key() {
        let s = following();
        let want = json!({
            "key": "/service/main/leader",
            "endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"],
            "endpoint": "http://10.0.0.2:2379",
            "connected": true,
            "heard": true,
            "leader": "pg-b",
            "server": "b",
            "revision": 41,
            "changed": "2025-12-03T08:01:00.000Z",
            "last_event": "2025-12-03T08:01:30.000Z",
            "last_event_age_seconds": 2.5,
            "unreachable_since": null,
            "last_error": "connection refused",
            "last_error_time": "2025-12-03T08:01:20.000Z",
            "watch_lost": 1,
            "held": null,
            "address_mismatch": null
        });
        let j = parse(&root(&s, t(92_500)));
        assert_eq!(j["etcd"], want);
        let j = parse(&nodes(&s, t(92_500)));
        assert_eq!(j["etcd"], want);
        assert_eq!(j["nodes"].as_array().unwrap().len(), 3);

        // etcd lost now: not connected, since when, and why nothing is switched.
        let mut s = following();
        let v = s.etcd.as_mut().unwrap();
        v.unreachable = Some((t(95_000), "timed out".into()));
        v.last_error = v.unreachable.clone();
        v.last_event = Some(t(95_000));
        v.watch_lost = 2;
        v.held = Some("etcd unreachable: nothing is switched until it is back".into());
        v.address_mismatch = Some("Patroni member pg-b advertises 10.0.0.13:5432".into());
        v.endpoint = None;
        let j = parse(&root(&s, t(100_000)));
        let e = &j["etcd"];
        assert_eq!(e["connected"], false);
        assert_eq!(
            e["endpoint"],
            Value::Null,
            "on no endpoint while etcd is lost"
        );
        assert_eq!(e["unreachable_since"], "2025-12-03T08:01:35.000Z");
        assert_eq!(e["last_error"], "timed out");
        assert_eq!(e["watch_lost"], 2);
        assert_eq!(e["last_event_age_seconds"], 5.0);
        assert_eq!(e["leader"], "pg-b", "the last known leader stays");
        assert_eq!(
            e["held"],
            "etcd unreachable: nothing is switched until it is back"
        );
        assert_eq!(
            e["address_mismatch"],
            "Patroni member pg-b advertises 10.0.0.13:5432"
        );

        // Not heard yet: no leader, not connected.
        let mut s = split();
        s.etcd = Some(LeaderView {
            key: "/service/main/leader".into(),
            ..LeaderView::default()
        });
        let e = &parse(&root(&s, t(1_000)))["etcd"];
        assert_eq!(
            (
                &e["connected"],
                &e["heard"],
                &e["leader"],
                &e["last_event_age_seconds"],
                &e["endpoint"]
            ),
            (
                &json!(false),
                &json!(false),
                &Value::Null,
                &Value::Null,
                &Value::Null
            )
        );
    }

    #[test]
    fn in_polling_mode_there_is_no_etcd_key() {
        let s = split();
        assert_eq!(parse(&root(&s, t(1_000))).get("etcd"), None);
        assert_eq!(parse(&nodes(&s, t(1_000))).get("etcd"), None);
    }
}
