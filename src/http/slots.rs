//! The connection slots: which connection holds one and what it is doing, and, when
//! every slot is held, which one gives its slot to a newcomer.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tracing::debug;

/// A slot for a connection just accepted while every slot was held: the connection that
/// has waited longest for a request is asked to give its slot away, one at a time (it
/// may get a request just then and keep it; then the next is asked). None on shutdown.
pub(super) async fn make_room(
    slots: &Arc<Semaphore>,
    waiting: &Waiting,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(s) = slots.clone().try_acquire_owned() {
            return Some(s);
        }
        waiting.ask_one_to_give_way(Instant::now());
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            _ = waiting.until_one_can_give_way() => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

/// What a connection is doing, as far as giving its slot away goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// No complete request head yet (nothing, part of one, or idle after an answer),
    /// since then.
    Waiting(Instant),
    /// A request is being answered: it keeps its slot.
    Busy,
    /// Asked to close and give its slot to a new connection.
    GivingWay,
}

/// Which connection gives way: none while one is already doing so (one newcomer needs
/// one slot), else the one that has waited longest for a request. Busy ones never do.
fn who_gives_way(conns: &[(u64, Activity)]) -> Option<u64> {
    if conns.iter().any(|(_, a)| *a == Activity::GivingWay) {
        return None;
    }
    conns
        .iter()
        .filter_map(|(id, a)| match a {
            Activity::Waiting(since) => Some((*since, *id)),
            _ => None,
        })
        .min()
        .map(|(_, id)| id)
}

/// The connections holding a slot and what each is doing.
#[derive(Default)]
pub(super) struct Waiting {
    conns: Mutex<Conns>,
    /// Woken when the answer of [`who_gives_way`] may have changed.
    changed: Notify,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    list: Vec<(u64, Activity)>,
    /// Each connection's call to close, by id.
    calls: Vec<(u64, Arc<Notify>)>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, id: u64, activity: Activity) {
        let mut c = self.lock();
        if let Some(e) = c.list.iter_mut().find(|(i, _)| *i == id) {
            e.1 = activity;
        }
        drop(c);
        self.changed.notify_waiters();
    }

    fn ask_one_to_give_way(&self, now: Instant) {
        let mut c = self.lock();
        let Some(id) = who_gives_way(&c.list) else {
            return;
        };
        if let Some(e) = c.list.iter_mut().find(|(i, _)| *i == id) {
            if let Activity::Waiting(since) = e.1 {
                debug!(
                    "status connection waited {:?} for a request; closing it for a new one",
                    now.saturating_duration_since(since)
                );
            }
            e.1 = Activity::GivingWay;
        }
        if let Some((_, call)) = c.calls.iter().find(|(i, _)| *i == id) {
            call.notify_one();
        }
    }

    /// Returns once some connection could be asked to give way.
    pub(super) async fn until_one_can_give_way(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if who_gives_way(&self.lock().list).is_some() {
                return;
            }
            changed.await;
        }
    }
}

/// A connection's slot and its entry among the [`Waiting`]; both are given back on drop.
pub(super) struct Held {
    pub(super) id: u64,
    pub(super) waiting: Arc<Waiting>,
    pub(super) call: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
}

impl Held {
    pub(super) fn new(waiting: &Arc<Waiting>, slot: OwnedSemaphorePermit) -> Held {
        let call = Arc::new(Notify::new());
        let mut c = waiting.lock();
        let id = c.next_id;
        c.next_id += 1;
        c.list.push((id, Activity::Waiting(Instant::now())));
        c.calls.push((id, call.clone()));
        drop(c);
        waiting.changed.notify_waiters();
        Held {
            id,
            waiting: waiting.clone(),
            call,
            _slot: slot,
        }
    }

    /// Still asked to give way (no request has arrived since it was asked)?
    pub(super) fn gives_way(&self) -> bool {
        self.waiting
            .lock()
            .list
            .iter()
            .any(|(i, a)| *i == self.id && *a == Activity::GivingWay)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.waiting.lock();
        c.list.retain(|(i, _)| *i != self.id);
        c.calls.retain(|(i, _)| *i != self.id);
        drop(c);
        self.waiting.changed.notify_waiters();
    }
}

/// Marks a connection busy for as long as it lives: from a complete request head to the
/// answer handed to hyper (the pages are in memory, so it is written out at once).
pub(super) struct Answering {
    id: u64,
    waiting: Arc<Waiting>,
}

impl Answering {
    pub(super) fn new(id: u64, waiting: Arc<Waiting>) -> Answering {
        waiting.set(id, Activity::Busy);
        Answering { id, waiting }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.waiting.set(self.id, Activity::Waiting(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::server::Limits;
    use crate::http::testing::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn at_the_cap_new_connections_wait_until_a_request_in_progress_ends() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            age: Duration::from_secs(60),
            ..SMALL
        };
        let (addr, _tx, _server) = start(limits).await;
        // Both slots answer a request (which takes a second), so neither gives way.
        let slow = || exchange(addr, "GET /slow HTTP/1.0\r\n\r\n", Duration::from_secs(10));
        let (a, b) = (tokio::spawn(slow()), tokio::spawn(slow()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The third connects (the kernel queues it) but is not served meanwhile.
        let waiting = tokio::spawn(exchange(
            addr,
            "GET /nodes HTTP/1.0\r\n\r\n",
            Duration::from_secs(10),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the cap");
        for slow in [a, b] {
            assert!(slow.await.unwrap().unwrap().ends_with("\r\n\r\nslow\n"));
        }
        let answer = waiting.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\npg1: master\n"), "{answer}");
    }

    /// True once the server has closed `s` (within `limit`), false if it is still open.
    async fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_waiting_longest_gives_way_to_the_newest() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            age: Duration::from_secs(60),
            ..SMALL
        };
        let (addr, _tx, _server) = start(limits).await;
        // `answered` connects first but then gets an answer and idles on keep-alive: it
        // has waited for its next request for less time than `idle` for its first.
        let mut answered = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // Half a request counts as waiting too, and it is the one that waited longest.
        idle.write_all(b"GET /nodes HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        answered
            .write_all(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = answered.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"pg1: master\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;

        let fresh = exchange(addr, "GET /nodes HTTP/1.0\r\n\r\n", Duration::from_secs(5));
        let fresh = fresh.await.expect("a fresh request at the cap is answered");
        assert!(fresh.ends_with("\r\n\r\npg1: master\n"), "{fresh}");
        assert!(closed_by_server(&mut idle, Duration::from_secs(2)).await);
        assert!(!closed_by_server(&mut answered, Duration::from_millis(300)).await);
        // The one that stayed still works.
        answered
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = answered.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"overview\n"));
    }

    #[test]
    fn the_connection_waiting_longest_gives_way_one_at_a_time_never_a_busy_one() {
        use Activity::*;
        let t = Instant::now();
        let s = |ms| Waiting(t + Duration::from_millis(ms));
        assert_eq!(who_gives_way(&[]), None);
        assert_eq!(who_gives_way(&[(1, Busy), (2, Busy)]), None);
        assert_eq!(who_gives_way(&[(1, s(30)), (2, Busy), (3, s(10))]), Some(3));
        assert_eq!(who_gives_way(&[(1, Busy), (2, s(10))]), Some(2));
        // Equal waits: the older connection (lower id) goes first.
        assert_eq!(who_gives_way(&[(5, s(10)), (4, s(10))]), Some(4));
        // One already on its way out makes room for the one newcomer there is.
        assert_eq!(who_gives_way(&[(1, s(0)), (2, GivingWay)]), None);
    }
}
