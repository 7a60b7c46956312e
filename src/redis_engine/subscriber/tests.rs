//! The subscriber against a real `redis-server`: batches from the sequencing script come out
//! in order, a bad message is skipped, and a lost subscription comes back and says so.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::redis_engine::sequencer::{Pending, Sequencer};
use crate::redis_engine::testing::RedisServer;

/// An event as a test's `Deliver` saw it: user, seq and body.
type Got = (String, u64, String);

/// What a test's `Deliver` saw: each event, and each continuity loss as a `None`, in order.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Option<Got>>>>);

impl Deliver for Seen {
    fn event(&mut self, e: &WireEvent<'_>) {
        let user = String::from_utf8(e.user.to_vec()).unwrap();
        let body = String::from_utf8(e.body.to_vec()).unwrap();
        self.0.lock().unwrap().push(Some((user, e.seq, body)));
    }

    fn continuity_lost(&mut self) {
        self.0.lock().unwrap().push(None);
    }
}

impl Seen {
    fn events(&self) -> usize {
        self.0.lock().unwrap().iter().flatten().count()
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.events() < n {
            assert!(Instant::now() < deadline, "{} of {n} events", self.events());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

struct Running {
    seen: Seen,
    stats: Arc<SubscriberStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn start(port: u16) -> Running {
    let (seen, stats, stop) = (
        Seen::default(),
        Arc::new(SubscriberStats::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut sub = Subscriber::new(client, b"s:events", stats.clone());
    let (mut out, s) = (seen.clone(), stop.clone());
    let thread = Some(std::thread::spawn(move || sub.run(&s, &mut out)));
    Running {
        seen,
        stats,
        stop,
        thread,
    }
}

impl Running {
    fn wait_subscribed(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stats.subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "not subscribed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Sequences `n` events for `users` (round robin) through the script, one batch.
fn sequence(
    conn: &mut redis::Connection,
    seq: &mut Sequencer,
    batch: u64,
    users: &[&str],
    n: usize,
) {
    let bodies: Vec<String> = (0..n)
        .map(|i| format!("\"b\":{batch},\"i\":{i}}}"))
        .collect();
    let events: Vec<Pending<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Pending {
            user: users[i % users.len()].as_bytes(),
            ts: 1,
            needs_ack: false,
            body: b.as_bytes(),
        })
        .collect();
    seq.submit(conn, batch, 5, &events).unwrap();
}

#[test]
fn batches_come_out_in_order_and_a_bad_message_is_skipped() {
    let Some(server) = RedisServer::start("sub-order") else {
        return;
    };
    let mut run = start(server.port);
    run.wait_subscribed();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, 1000, 1000);
    sequence(&mut conn, &mut seq, 1, &["a", "b"], 100);
    // Anyone who can publish on the channel can send anything.
    let _: u64 = redis::cmd("PUBLISH")
        .arg("s:events")
        .arg(&b"\x02\xff\xffnot a batch"[..])
        .query(&mut conn)
        .unwrap();
    sequence(&mut conn, &mut seq, 2, &["a", "b", "c"], 90);
    run.seen.wait_for(190);
    run.stop();
    let seen = run.seen.0.lock().unwrap().clone();
    assert!(seen.iter().all(Option::is_some), "no continuity lost");
    for user in ["a", "b", "c"] {
        let seqs: Vec<u64> = seen
            .iter()
            .flatten()
            .filter(|(u, _, _)| u == user)
            .map(|(_, s, _)| *s)
            .collect();
        let n = seqs.len() as u64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{user}");
    }
    assert_eq!(
        seen[100].as_ref().unwrap().2,
        "\"b\":2,\"i\":0}",
        "the second batch follows the first; the bad message between them is skipped"
    );
    assert_eq!(run.stats.bad_messages.load(Ordering::Relaxed), 1);
    assert_eq!(run.stats.messages.load(Ordering::Relaxed), 2);
    assert_eq!(run.stats.events.load(Ordering::Relaxed), 190);
}

#[test]
fn a_lost_subscription_comes_back_and_says_what_it_may_have_missed() {
    let Some(server) = RedisServer::start("sub-lost") else {
        return;
    };
    let mut run = start(server.port);
    run.wait_subscribed();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, 1000, 1000);
    sequence(&mut conn, &mut seq, 1, &["a"], 10);
    run.seen.wait_for(10);
    // The subscription is cut (as a restart of Redis or a network fault would).
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut conn)
        .unwrap();
    assert_eq!(killed, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while run.stats.resubscribed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "subscribed again");
        std::thread::sleep(Duration::from_millis(5));
    }
    sequence(&mut conn, &mut seq, 2, &["a"], 10);
    run.seen.wait_for(20);
    run.stop();
    let seen = run.seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 21);
    assert!(
        seen[10].is_none(),
        "the loss is said before what follows it"
    );
    assert_eq!(seen[11].as_ref().unwrap().1, 11);
    assert!(run.stats.failures.load(Ordering::Relaxed) >= 1);
}

#[test]
fn redis_away_at_first_is_waited_for() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = start(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.stats.failures.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "it kept trying");
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(server) = RedisServer::start_on("sub-late", port) else {
        run.stop();
        return;
    };
    run.wait_subscribed();
    let mut conn = server.connect().unwrap();
    sequence(&mut conn, &mut Sequencer::new("s", 1, 10, 10), 1, &["a"], 3);
    run.seen.wait_for(3);
    run.stop();
    let seen = run.seen.0.lock().unwrap().clone();
    assert!(
        seen.iter().all(Option::is_some),
        "a first subscription is no loss"
    );
}
