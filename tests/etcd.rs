//! The etcd client against a real etcd 3.4: Patroni's leader key written, deleted,
//! changed while etcd was away, compacted away, and etcd gone silent.

mod common;

use common::etcd::{Etcd, EtcdCluster};
use rebouncer::etcd::{Event, Member, Settings, watch_leader};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const LEADER: &str = "/service/main/leader";

fn settings(e: &Etcd) -> Settings {
    let mut s = Settings::new(&e.endpoint(), "/service", "main").unwrap();
    s.timeout = Duration::from_secs(1);
    s.check_interval = Duration::from_millis(500);
    s
}

fn member_record(port: u16) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1/patroni","state":"running","role":"primary"}}"#
    )
}

/// The next event, whichever it is.
async fn next_event(rx: &mut Receiver<Event>, within: Duration) -> Event {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the watch task ended"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// The next event about the key or etcd's reachability; where the watch is placed
/// ([`Event::Endpoint`]) is passed over.
async fn next(rx: &mut Receiver<Event>, within: Duration) -> Event {
    let end = tokio::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match next_event(rx, left).await {
            Event::Endpoint(_) => {}
            e => return e,
        }
    }
}

/// The next event is the leader `name` as of `revision` (within 5 s).
async fn expect_leader(rx: &mut Receiver<Event>, name: &str, revision: i64) {
    assert_eq!(
        next(rx, Duration::from_secs(5)).await,
        leader(name, revision)
    );
}

/// The next event is the key deleted as of `revision` (within 5 s); `what` for the message.
async fn expect_no_leader(rx: &mut Receiver<Event>, revision: i64, what: &str) {
    assert_eq!(
        next(rx, Duration::from_secs(5)).await,
        Event::Leader {
            member: None,
            revision
        },
        "{what}"
    );
}

fn leader(name: &str, revision: i64) -> Event {
    Event::Leader {
        member: Some(Member {
            name: name.into(),
            conn_url: None,
        }),
        revision,
    }
}

#[tokio::test]
async fn put_and_delete_of_the_leader_key_are_seen_through_the_watch() {
    let e = Etcd::start();
    e.put("/service/main/members/m1", &member_record(5433));
    let r1 = e.put(LEADER, "m1");
    let (mut rx, _task) = watch_leader(settings(&e)).unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        Event::Leader {
            member: Some(Member {
                name: "m1".into(),
                conn_url: Some("postgres://127.0.0.1:5433/postgres".into()),
            }),
            revision: r1,
        },
        "the key as it is at the start, with the member's conn_url"
    );
    let r2 = e.put(LEADER, "m2");
    expect_leader(&mut rx, "m2", r2).await;
    let r3 = e.delete(LEADER);
    expect_no_leader(&mut rx, r3, "a deleted key is no leader").await;
    // An unrelated key does not wake the watch; the next change of ours comes next.
    e.put("/service/main/members/m3", &member_record(5434));
    let r4 = e.put(LEADER, "m3");
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        Event::Leader {
            member: Some(Member {
                name: "m3".into(),
                conn_url: Some("postgres://127.0.0.1:5434/postgres".into()),
            }),
            revision: r4,
        }
    );
}

#[tokio::test]
async fn changes_made_before_the_client_reconnects_are_replayed_in_order() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    let mut s = settings(&e);
    // A fixed, long back-off: the changes below are made after etcd is back and before
    // the client returns.
    s.backoff_min = Duration::from_secs(2);
    s.backoff_max = Duration::from_secs(2);
    let (mut rx, _task) = watch_leader(s).unwrap();
    expect_leader(&mut rx, "m1", r1).await;

    e.stop();
    match next(&mut rx, Duration::from_secs(5)).await {
        Event::Unreachable { reason } => assert!(reason.contains("etcd"), "{reason}"),
        other => panic!("expected Unreachable after etcd stopped, got {other:?}"),
    }
    e.start_again();
    let r2 = e.put(LEADER, "m2");
    let r3 = e.put(LEADER, "m3");
    // Both changes, oldest first: the watch resumed at the last revision it had seen + 1
    // rather than reading only the latest value.
    assert_eq!(
        next(&mut rx, Duration::from_secs(15)).await,
        leader("m2", r2)
    );
    expect_leader(&mut rx, "m3", r3).await;
    // And it keeps watching.
    let r4 = e.delete(LEADER);
    expect_no_leader(&mut rx, r4, "").await;
}

#[tokio::test]
async fn an_unchanged_key_is_reported_again_when_etcd_returns() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    let (mut rx, _task) = watch_leader(settings(&e)).unwrap();
    expect_leader(&mut rx, "m1", r1).await;
    e.stop();
    assert!(matches!(
        next(&mut rx, Duration::from_secs(5)).await,
        Event::Unreachable { .. }
    ));
    e.start_again();
    // Nothing changed: the same leader, as of the store's revision now.
    match next(&mut rx, Duration::from_secs(15)).await {
        Event::Leader {
            member: Some(m),
            revision,
        } => {
            assert_eq!(m.name, "m1");
            assert!(revision >= r1, "revision {revision} < {r1}");
        }
        other => panic!("expected the unchanged leader again, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_compacted_history_reads_the_key_again() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    e.put(LEADER, "m2");
    let r3 = e.put(LEADER, "m3");
    e.compact(r3);
    let mut s = settings(&e);
    // Resuming from a revision the history no longer has.
    s.start_revision = Some(r1);
    let (mut rx, _task) = watch_leader(s).unwrap();
    match next(&mut rx, Duration::from_secs(5)).await {
        Event::Leader {
            member: Some(m),
            revision,
        } => {
            assert_eq!(m.name, "m3", "after the compaction, the key as it is now");
            assert!(revision >= r3);
        }
        other => panic!("expected the current leader after the compaction, got {other:?}"),
    }
    // The watch goes on from the read.
    let r4 = e.put(LEADER, "m1");
    expect_leader(&mut rx, "m1", r4).await;
}

#[tokio::test]
async fn a_watch_from_a_remembered_revision_replays_what_followed() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    let r2 = e.put(LEADER, "m2");
    let r3 = e.delete(LEADER);
    let mut s = settings(&e);
    s.start_revision = Some(r1 + 1);
    let (mut rx, _task) = watch_leader(s).unwrap();
    expect_leader(&mut rx, "m2", r2).await;
    expect_no_leader(&mut rx, r3, "").await;
}

#[tokio::test]
async fn a_silent_etcd_is_reported_unreachable() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    let (mut rx, _task) = watch_leader(settings(&e)).unwrap();
    expect_leader(&mut rx, "m1", r1).await;
    // A change seen proves the watch is in place before etcd goes silent.
    let r2 = e.put(LEADER, "m2");
    expect_leader(&mut rx, "m2", r2).await;
    // Stopped processes keep every connection open and answer nothing: what a partition
    // looks like from here. The periodic read (every 0.5 s, 1 s limit) notices.
    e.freeze();
    let t = std::time::Instant::now();
    let ev = next(&mut rx, Duration::from_secs(5)).await;
    let noticed = t.elapsed();
    e.thaw();
    match ev {
        Event::Unreachable { reason } => {
            assert!(reason.contains("did not answer"), "{reason}");
            eprintln!("silent etcd noticed after {noticed:.2?}: {reason}");
        }
        other => panic!("expected Unreachable while etcd is stopped, got {other:?}"),
    }
    match next(&mut rx, Duration::from_secs(15)).await {
        Event::Leader {
            member: Some(m), ..
        } => assert_eq!(m.name, "m2"),
        other => panic!("expected the leader again after etcd resumed, got {other:?}"),
    }
}

#[tokio::test]
async fn with_authentication_the_user_and_password_are_used() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    e.enable_auth("root", "s3cret");
    let mut s = settings(&e);
    s.user = Some(("root".into(), "s3cret".into()));
    let (mut rx, _task) = watch_leader(s).unwrap();
    expect_leader(&mut rx, "m1", r1).await;

    let mut s = settings(&e);
    s.user = Some(("root".into(), "wrong".into()));
    let (mut rx, _task) = watch_leader(s).unwrap();
    match next(&mut rx, Duration::from_secs(5)).await {
        Event::Unreachable { reason } => assert!(
            reason.contains("authentication failed") && reason.contains("etcd_password"),
            "{reason}"
        ),
        other => panic!("expected a refused login, got {other:?}"),
    }
}

#[tokio::test]
async fn over_tls_with_a_client_certificate() {
    let e = Etcd::start_tls();
    let t = e.tls().unwrap().clone();
    let r1 = e.put(LEADER, "m1");
    let https = |with_cert: bool| {
        let mut s =
            Settings::new(&format!("https://127.0.0.1:{}", t.port), "/service", "main").unwrap();
        s.timeout = Duration::from_secs(2);
        s.ca_file = Some(t.server_cert.clone());
        if with_cert {
            s.cert_file = Some(t.client_cert.clone());
            s.key_file = Some(t.client_key.clone());
        }
        s
    };
    let (mut rx, _task) = watch_leader(https(true)).unwrap();
    expect_leader(&mut rx, "m1", r1).await;
    let r2 = e.put(LEADER, "m2");
    expect_leader(&mut rx, "m2", r2).await;

    // etcd asks for a client certificate: without one, nothing is read.
    let (mut rx, _task) = watch_leader(https(false)).unwrap();
    match next(&mut rx, Duration::from_secs(10)).await {
        Event::Unreachable { reason } => {
            assert!(reason.contains("client certificate"), "{reason}")
        }
        other => panic!("expected etcd to refuse a client without a certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dead_endpoint_listed_first_is_passed_over() {
    let e = Etcd::start();
    let r1 = e.put(LEADER, "m1");
    // A loopback port nothing listens on: every connection to it is refused.
    let dead = common::alloc_port();
    let mut s = Settings::new(
        &format!("http://127.0.0.1:{dead},{}", e.endpoint()),
        "/service",
        "main",
    )
    .unwrap();
    s.timeout = Duration::from_secs(1);
    s.check_interval = Duration::from_millis(500);
    let (mut rx, _task) = watch_leader(s).unwrap();
    // The live endpoint's answer first: one endpoint down is no outage of etcd. Then the
    // watch is in place, on the live endpoint.
    let mut before = Vec::new();
    let on = loop {
        match next_event(&mut rx, Duration::from_secs(5)).await {
            Event::Endpoint(on) => break on,
            other => before.push(other),
        }
    };
    assert_eq!(before, [leader("m1", r1)]);
    assert_eq!(on, Some(e.endpoint()));
    let r2 = e.put(LEADER, "m2");
    expect_leader(&mut rx, "m2", r2).await;
}

#[tokio::test]
async fn the_watch_moves_to_the_next_member_without_missing_a_change() {
    let c = EtcdCluster::start(3);
    // The client lists the two followers first and the Raft leader last, so that freezing
    // or stopping the member it watches never leaves the cluster without a leader.
    let mut order: Vec<&Etcd> = c.members.iter().collect();
    order.sort_by_key(|m| m.raft_leader());
    let (first, second, leader_member) = (order[0], order[1], order[2]);
    let endpoints: Vec<String> = order.iter().map(|m| m.endpoint()).collect();
    let within = Duration::from_secs(10);
    let r1 = leader_member.put(LEADER, "m1");
    let mut s = Settings::new(&endpoints.join(","), "/service", "main").unwrap();
    s.timeout = Duration::from_secs(1);
    s.check_interval = Duration::from_millis(500);
    let (mut rx, _task) = watch_leader(s).unwrap();
    expect_leader(&mut rx, "m1", r1).await;
    // A change seen proves the watch is in place on the first member.
    let r2 = second.put_retrying(LEADER, "m2", within);
    expect_leader(&mut rx, "m2", r2).await;

    // The watched member goes silent; the other two keep a quorum and take two changes
    // before the client notices (its periodic read: every 0.5 s, 1 s limit). On the next
    // member the watch resumes after the last revision it saw: both changes, in order,
    // and no outage reported.
    first.freeze();
    let r3 = leader_member.put_retrying(LEADER, "m3", within);
    let r4 = second.put_retrying(LEADER, "m1", within);
    expect_leader(&mut rx, "m3", r3).await;
    expect_leader(&mut rx, "m1", r4).await;
    first.thaw();

    // The member watched now (the second) is stopped: the connection ends at once, and
    // the watch goes on from the third.
    let r5 = leader_member.put_retrying(LEADER, "m2", within);
    expect_leader(&mut rx, "m2", r5).await;
    // The first member back in the quorum, so that the stop below leaves two.
    common::wait_until(within, "the first member answering again", || {
        first
            .get(LEADER)
            .is_ok_and(|v| v.is_some_and(|(_, r)| r == r5))
    });
    second.stop();
    let r6 = leader_member.put_retrying(LEADER, "m3", within);
    expect_leader(&mut rx, "m3", r6).await;
}
