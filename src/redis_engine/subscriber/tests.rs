//! The subscriber against a real `redis-server`: batches from the sequencing script come out
//! in order, a foreign entry is skipped, a cut connection loses nothing, entries it could not
//! read are reported, and a sync answers as of the point of the log read so far.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::redis_engine::sequencer::{Pending, Sequencer};
use crate::redis_engine::testing::{keep, RedisServer};

/// What a test's `Deliver` saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Saw {
    /// An event: user, seq and body.
    Event(String, u64, String),
    Lost,
    /// A sync answer: user, epoch and seq.
    Sync(String, u64, u64),
    /// An older event read for a sync: user and seq.
    History(String, u64),
}

#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Saw>>>);

impl Deliver for Seen {
    fn event(&mut self, e: &WireEvent<'_>, _own: bool) {
        let user = String::from_utf8(e.user.to_vec()).unwrap();
        let body = String::from_utf8(e.body.to_vec()).unwrap();
        self.0.lock().unwrap().push(Saw::Event(user, e.seq, body));
    }

    fn continuity_lost(&mut self) {
        self.0.lock().unwrap().push(Saw::Lost);
    }

    fn history(&mut self, e: &WireEvent<'_>) {
        let user = String::from_utf8(e.user.to_vec()).unwrap();
        self.0.lock().unwrap().push(Saw::History(user, e.seq));
    }

    fn sync(&mut self, user: &[u8], epoch: u64, seq: u64) {
        let user = String::from_utf8(user.to_vec()).unwrap();
        self.0.lock().unwrap().push(Saw::Sync(user, epoch, seq));
    }
}

impl Seen {
    fn all(&self) -> Vec<Saw> {
        self.0.lock().unwrap().clone()
    }

    fn events(&self) -> usize {
        self.all()
            .iter()
            .filter(|s| matches!(s, Saw::Event(..)))
            .count()
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.events() < n {
            assert!(Instant::now() < deadline, "{} of {n} events", self.events());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The seqs delivered to `user`, in order.
    fn seqs(&self, user: &str) -> Vec<u64> {
        self.all()
            .iter()
            .filter_map(|s| match s {
                Saw::Event(u, seq, _) if u == user => Some(*seq),
                _ => None,
            })
            .collect()
    }
}

/// The seed of the epochs syncs offer.
const EPOCH_SEED: u64 = 0xabc;

fn subscriber(
    port: u16,
) -> (
    Subscriber,
    Arc<SubscriberStats>,
    crossbeam_channel::Sender<SyncRequest>,
) {
    let stats = Arc::new(SubscriberStats::default());
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let sub = Subscriber::new(client, Keys::new("s"), 1, rx, EPOCH_SEED, stats.clone());
    (sub, stats, tx)
}

struct Running {
    seen: Seen,
    stats: Arc<SubscriberStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn start(port: u16) -> Running {
    let (mut sub, stats, _requests) = subscriber(port);
    let (seen, stop) = (Seen::default(), Arc::new(AtomicBool::new(false)));
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
    fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.stats.connected.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "not connected");
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
            ack: None,
            user: users[i % users.len()].as_bytes(),
            ts: 1,
            needs_ack: false,
            body: b.as_bytes(),
        })
        .collect();
    seq.submit(conn, batch, 5, &events).unwrap();
}

#[test]
fn batches_come_out_in_order_and_a_foreign_entry_is_skipped_and_reported() {
    let Some(server) = RedisServer::start("sub-order") else {
        return;
    };
    let mut run = start(server.port);
    run.wait_connected();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    sequence(&mut conn, &mut seq, 1, &["a", "b"], 100);
    // Anyone who can write to the log can add anything.
    let _: String = redis::cmd("XADD")
        .arg("s:log")
        .arg("*")
        .arg("m")
        .arg(&b"\x02\xff\xffnot a batch"[..])
        .query(&mut conn)
        .unwrap();
    sequence(&mut conn, &mut seq, 2, &["a", "b", "c"], 90);
    run.seen.wait_for(190);
    run.stop();
    for user in ["a", "b", "c"] {
        let seqs = run.seen.seqs(user);
        let n = seqs.len() as u64;
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{user}");
    }
    let all = run.seen.all();
    // The foreign entry does not name the entry before it, nor does the next batch name it:
    // both say that the log is not what the script wrote, so streams are checked again.
    assert_eq!(all[100], Saw::Lost, "{:?}", &all[99..102]);
    assert_eq!(all[101], Saw::Lost);
    assert_eq!(
        all[102],
        Saw::Event("a".into(), 51, "\"b\":2,\"i\":0}".into()),
        "the second batch follows the first; the foreign entry between them is skipped"
    );
    assert_eq!(run.stats.bad_messages.load(Ordering::Relaxed), 1);
    assert_eq!(run.stats.messages.load(Ordering::Relaxed), 2);
    assert_eq!(run.stats.events.load(Ordering::Relaxed), 190);
}

#[test]
fn a_cut_connection_loses_nothing_and_reads_on_where_it_stopped() {
    let Some(server) = RedisServer::start("sub-cut") else {
        return;
    };
    let mut run = start(server.port);
    run.wait_connected();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    for batch in 1..=20 {
        sequence(&mut conn, &mut seq, batch, &["a"], 10);
        if batch % 5 == 0 {
            // Cut every other connection (the subscriber's) as a network fault would.
            let _: u64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                .query(&mut conn)
                .unwrap();
        }
    }
    run.seen.wait_for(200);
    run.stop();
    assert_eq!(run.seen.seqs("a"), (1..=200).collect::<Vec<_>>());
    assert!(
        !run.seen.all().contains(&Saw::Lost),
        "the log still had every entry: nothing was missed"
    );
    assert!(
        run.stats.failures.load(Ordering::Relaxed) >= 1,
        "it was cut"
    );
}

#[test]
fn entries_trimmed_before_they_were_read_are_reported_as_lost() {
    let Some(server) = RedisServer::start("sub-trim") else {
        return;
    };
    let (mut sub, _stats, _requests) = subscriber(server.port);
    let mut out = Seen::default();
    let mut conn = server.connect().unwrap();
    let mut mine = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    sub.start(&mut mine, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 1, &["a"], 3);
    sub.read(&mut mine, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 2, &["a"], 3);
    sequence(&mut conn, &mut seq, 3, &["a"], 3);
    // Batch 2 is trimmed away before this node reads it.
    let _: u64 = redis::cmd("XTRIM")
        .arg(&["s:log", "MAXLEN", "1"])
        .query(&mut conn)
        .unwrap();
    sub.read(&mut mine, &mut out).unwrap();
    let all = out.all();
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(all[3], Saw::Lost, "said before what follows the hole");
    assert_eq!(out.seqs("a"), vec![1, 2, 3, 7, 8, 9]);
}

#[test]
fn a_log_lost_with_redis_is_reported_and_the_new_one_read_from_its_start() {
    let Some(server) = RedisServer::start("sub-flush") else {
        return;
    };
    let (mut sub, _stats, _requests) = subscriber(server.port);
    let mut out = Seen::default();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    sub.start(&mut conn, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 1, &["a"], 2);
    sub.read(&mut conn, &mut out).unwrap();
    // Redis restarts empty (no persistence): the log, its last id and the streams are gone.
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    sub.start(&mut conn, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 2, &["a"], 2);
    sub.read(&mut conn, &mut out).unwrap();
    // And again, with a batch in the new log before the node reconnects.
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    sequence(&mut conn, &mut seq, 3, &["a"], 2);
    sub.start(&mut conn, &mut out).unwrap();
    sub.read(&mut conn, &mut out).unwrap();
    let all = out.all();
    let ev = |s: u64, b: u64, i: u64| Saw::Event("a".into(), s, format!("\"b\":{b},\"i\":{i}}}"));
    assert_eq!(
        all,
        vec![
            ev(1, 1, 0),
            ev(2, 1, 1),
            Saw::Lost,
            ev(1, 2, 0),
            ev(2, 2, 1),
            Saw::Lost,
            ev(1, 3, 0),
            ev(2, 3, 1),
        ]
    );
}

#[test]
fn a_sync_gives_the_stream_as_of_the_log_read_so_far() {
    let Some(server) = RedisServer::start("sub-sync") else {
        return;
    };
    let (mut sub, stats, requests) = subscriber(server.port);
    let mut out = Seen::default();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    sub.start(&mut conn, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 1, &["a", "b"], 10);
    sub.read(&mut conn, &mut out).unwrap();
    // Read through batch 1; batches 2 and 3 are in the log but not read yet.
    sequence(&mut conn, &mut seq, 2, &["a"], 3);
    sequence(&mut conn, &mut seq, 3, &["a", "b"], 4);
    for user in ["a", "b", "nobody"] {
        requests
            .send(SyncRequest::newest(user.as_bytes(), 0))
            .unwrap();
    }
    sub.serve_syncs(&mut conn, &mut out).unwrap();
    let all = out.all();
    let epoch = 5; // what `sequence` gives a new stream
    let syncs: Vec<&Saw> = all.iter().filter(|s| matches!(s, Saw::Sync(..))).collect();
    assert_eq!(
        syncs,
        vec![
            &Saw::Sync("nobody".into(), mix(EPOCH_SEED, 1), 0),
            &Saw::Sync("b".into(), epoch, 5),
            &Saw::Sync("a".into(), epoch, 5),
        ],
        "a and b as batch 1 left them; a stream that did not exist starts"
    );
    assert_eq!(stats.syncs.load(Ordering::Relaxed), 3);
    // What follows the sync point arrives after it: every seq once.
    sub.read(&mut conn, &mut out).unwrap();
    assert_eq!(out.seqs("a"), (1..=10).collect::<Vec<_>>());
    assert_eq!(out.seqs("b"), (1..=7).collect::<Vec<_>>());
    // The stream the sync made keeps its epoch when its first event comes.
    sequence(&mut conn, &mut seq, 4, &["nobody"], 1);
    requests.send(SyncRequest::newest(b"nobody", 0)).unwrap();
    sub.read(&mut conn, &mut out).unwrap();
    sub.serve_syncs(&mut conn, &mut out).unwrap();
    assert_eq!(
        out.all().last(),
        Some(&Saw::Sync("nobody".into(), mix(EPOCH_SEED, 1), 1))
    );
    // Redis loses everything: the stream a sync makes again has an epoch never seen before,
    // so its events cannot pass for the old run's.
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    requests.send(SyncRequest::newest(b"nobody", 0)).unwrap();
    sub.serve_syncs(&mut conn, &mut out).unwrap();
    let Some(Saw::Sync(_, again, 0)) = out.all().last().cloned() else {
        panic!("{:?}", out.all().last());
    };
    assert_ne!(again, mix(EPOCH_SEED, 1));
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
    run.wait_connected();
    let mut conn = server.connect().unwrap();
    sequence(
        &mut conn,
        &mut Sequencer::new("s", 1, keep(10)),
        1,
        &["a"],
        3,
    );
    run.seen.wait_for(3);
    run.stop();
    assert!(
        !run.seen.all().contains(&Saw::Lost),
        "a first connection is no loss"
    );
}

#[test]
fn a_sync_from_a_seq_brings_the_events_the_node_never_received_then_the_answer() {
    let Some(server) = RedisServer::start("sub-history") else {
        return;
    };
    let (mut sub, _stats, requests) = subscriber(server.port);
    let mut out = Seen::default();
    let mut conn = server.connect().unwrap();
    let mut seq = Sequencer::new("s", 1, keep(1000));
    // Batches 1 and 2 before this node reads anything (it starts at the log's end: it never
    // receives them), 3 after it started, 4 not read yet.
    sequence(&mut conn, &mut seq, 1, &["a"], 5);
    sequence(&mut conn, &mut seq, 2, &["a", "b"], 10);
    sub.start(&mut conn, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 3, &["a"], 3);
    sub.read(&mut conn, &mut out).unwrap();
    sequence(&mut conn, &mut seq, 4, &["a"], 2);
    requests.send(SyncRequest::newest(b"a", 4)).unwrap();
    sub.serve_syncs(&mut conn, &mut out).unwrap();
    let all = out.all();
    let after_read = &all[3..];
    let history: Vec<u64> = after_read
        .iter()
        .filter_map(|s| match s {
            Saw::History(u, n) if u == "a" => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(
        history,
        (4..=13).collect::<Vec<_>>(),
        "from 4 to the sync's point, in order: {all:?}"
    );
    assert_eq!(
        after_read.last(),
        Some(&Saw::Sync("a".into(), 5, 13)),
        "the answer comes last"
    );
    // A resume before a node's history asks for a range: its first events, never past `to`.
    let mut out = Seen::default();
    requests
        .send(SyncRequest {
            user: b"a"[..].into(),
            from: 2,
            to: Some(6),
        })
        .unwrap();
    sub.serve_syncs(&mut conn, &mut out).unwrap();
    assert_eq!(
        out.all(),
        (2..=6)
            .map(|n| Saw::History("a".into(), n))
            .chain([Saw::Sync("a".into(), 5, 13)])
            .collect::<Vec<_>>()
    );
}
