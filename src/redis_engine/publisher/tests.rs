//! The publisher against a real `redis-server`: batching, order, and nothing lost or doubled
//! when Redis is away or the connection is cut.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::record;
use crate::redis_engine::backoff::Backoff;
use crate::redis_engine::testing::{keep, LogReader, RedisServer, StreamEntry};
use crate::ring::{self, Producer};

/// A publisher thread for node `node` on the Redis at `port`, and its rings' producers.
struct Running {
    producers: Vec<Producer>,
    stats: Arc<PublisherStats>,
    stop: Arc<AtomicBool>,
    unparker: crossbeam_utils::sync::Unparker,
    thread: Option<JoinHandle<usize>>,
}

fn start(port: u16, node: u64, rings: usize, ring_bytes: usize) -> Running {
    start_with(port, node, rings, ring_bytes, |_| {})
}

/// As [`start`], with `backlog` pushed into the rings before the publisher thread starts.
fn start_with(
    port: u16,
    node: u64,
    rings: usize,
    ring_bytes: usize,
    backlog: impl FnOnce(&mut [Producer]),
) -> Running {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut producers: Vec<Producer> = (0..rings)
        .map(|_| {
            let (p, c) = ring::channel(ring_bytes);
            tx.send(c).unwrap();
            p
        })
        .collect();
    backlog(&mut producers);
    let parker = Parker::new();
    let unparker = parker.unparker().clone();
    let stats = Arc::new(PublisherStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let publisher = Publisher::new(
        Sequencer::new("p", node, keep(1 << 20)),
        client,
        Inputs {
            rings: rx,
            parker,
            sleep: Arc::new(crate::park::Parker::new({
                let u = unparker.clone();
                move || u.unpark()
            })),
            reader_placed: Arc::new(AtomicBool::new(true)),
        },
        Arc::new(ReceiptBoard::new(16)),
        stats.clone(),
    );
    let s = stop.clone();
    let thread = std::thread::spawn(move || publisher.run(&s));
    Running {
        producers,
        stats,
        stop,
        unparker,
        thread: Some(thread),
    }
}

/// Pushes event `k` of `user` (`body`) into `producer`; the ring must have room.
fn push(producer: &mut Producer, user: &str, k: u64, body: &str) {
    let mut rec = Vec::new();
    record::encode(&mut rec, k, false, user.as_bytes(), None, body.as_bytes());
    producer.push(&[&rec]).expect("the ring holds the backlog");
}

impl Running {
    /// Emits event `k` of `producer` for `user`, waiting out a full ring.
    fn emit(&mut self, producer: usize, user: &str, k: u64) {
        let body = format!("\"p\":{producer},\"k\":{k}}}");
        let mut rec = Vec::new();
        record::encode(&mut rec, k, false, user.as_bytes(), None, body.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.producers[producer].push(&[&rec]).is_err() {
            assert!(Instant::now() < deadline, "the ring stayed full for 30 s");
            self.unparker.unpark();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.unparker.unpark();
    }

    /// Stops the thread; what it could not sequence.
    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.unparker.unpark();
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Collects published events from `sub` until `n` are in or `limit` passes: per user, the
/// `(producer, k)` of each event in `seq` order (checking seqs are gapless per epoch).
fn collect(log: &mut LogReader, n: usize, limit: Duration) -> BTreeMap<String, Vec<(u64, u64)>> {
    let deadline = Instant::now() + limit;
    let mut got: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut count = 0;
    while count < n && Instant::now() < deadline {
        for msg in log.read(Duration::from_millis(100)) {
            for e in wire::decode(&msg).unwrap() {
                let user = String::from_utf8(e.user.to_vec()).unwrap();
                let prev = last.insert(user.clone(), (e.epoch, e.seq));
                match prev {
                    Some((epoch, seq)) if epoch == e.epoch => assert_eq!(e.seq, seq + 1, "{user}"),
                    _ => assert_eq!(e.seq, 1, "{user}: a stream starts at 1"),
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&[b"{", e.body].concat()).unwrap();
                got.entry(user)
                    .or_default()
                    .push((v["p"].as_u64().unwrap(), v["k"].as_u64().unwrap()));
                count += 1;
            }
        }
    }
    got
}

/// Every `(producer, k)` once, and each producer's events of a user in the order emitted.
fn assert_once_in_order(got: &BTreeMap<String, Vec<(u64, u64)>>, expected: usize) {
    let mut seen = std::collections::BTreeSet::new();
    for (user, events) in got {
        let mut last_k: BTreeMap<u64, u64> = BTreeMap::new();
        for &(p, k) in events {
            assert!(seen.insert((p, k)), "({p}, {k}) published twice");
            if let Some(prev) = last_k.insert(p, k) {
                assert!(k > prev, "{user}: producer {p}'s events out of order");
            }
        }
    }
    assert_eq!(seen.len(), expected, "every event published");
}

#[test]
fn a_backlog_goes_out_in_full_batches_once_each_in_emit_order() {
    let Some(server) = RedisServer::start("pub-backlog") else {
        return;
    };
    let mut log = LogReader::new(&server, "p");
    // Two emitters' backlog is in the rings when the publisher starts, so its batches are
    // as full as they can be.
    let users: Vec<String> = (0..16).map(|u| format!("user-{u}")).collect();
    let mut run = start_with(server.port, 1, 2, 4 << 20, |producers| {
        for k in 0..10_000u64 {
            for (p, producer) in producers.iter_mut().enumerate() {
                let body = format!("\"p\":{p},\"k\":{k}}}");
                push(producer, &users[(k as usize * 7 + p) % 16], k, &body);
            }
        }
    });
    let got = collect(&mut log, 20_000, Duration::from_secs(30));
    assert_eq!(run.stop(), 0);
    assert_once_in_order(&got, 20_000);
    let batches = run.stats.batches.load(Ordering::Relaxed);
    let events = run.stats.events.load(Ordering::Relaxed);
    assert_eq!(events, 20_000);
    assert_eq!(
        batches, 20,
        "{events} events in {batches} round trips of up to 1024"
    );
}

#[test]
fn redis_away_at_first_then_up_holds_every_event_back_and_loses_none() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = start(port, 2, 1, 1 << 20);
    for k in 0..500 {
        run.emit(0, "alice", k);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.stats.failures.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the publisher kept trying");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!run.stats.connected.load(Ordering::Relaxed));
    let Some(server) = RedisServer::start_on("pub-late", port) else {
        run.stop();
        return;
    };
    // Every event is sequenced once: alice's counter reaches 500, and the log holds her
    // events 1 to 500, once each, in the order emitted.
    let mut conn = server.connect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let top: Option<u64> = redis::cmd("HGET")
            .arg("p:{alice}:m")
            .arg("seq")
            .query(&mut conn)
            .unwrap();
        if top == Some(500) {
            break;
        }
        assert!(Instant::now() < deadline, "sequenced: {top:?} of 500");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("p:log")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let mut seen = Vec::new();
    for (_, fields) in &log {
        for e in wire::decode(&fields[0].1).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&[b"{", e.body].concat()).unwrap();
            seen.push((e.seq, v["k"].as_u64().unwrap()));
        }
    }
    assert_eq!(seen, (1..=500).map(|s| (s, s - 1)).collect::<Vec<_>>());
    assert_eq!(run.stop(), 0);
    assert!(run.stats.connected.load(Ordering::Relaxed));
}

/// Emits 20,000 events while another client cuts the publisher's connection every `every`;
/// checks every event is published once, in order, and returns the cuts and the retried round
/// trips.
fn under_cuts(name: &str, every: Duration) -> Option<(u64, u64)> {
    let server = RedisServer::start(name)?;
    let mut log = LogReader::new(&server, "p");
    let mut run = start(server.port, 3, 1, 1 << 20);
    // Another client cuts every other connection (the publisher's and the log reader's, which
    // reads on where it stopped):
    // some cuts land while a batch is on its way, some between the script's run and its
    // answer (the retry then gets the first run's answer), some on a connection just made.
    let cutting = Arc::new(AtomicBool::new(true));
    let killer = {
        let (cutting, mut conn) = (cutting.clone(), server.connect().unwrap());
        std::thread::spawn(move || {
            let mut cuts = 0u64;
            while cutting.load(Ordering::Relaxed) {
                let n: u64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .query(&mut conn)
                    .unwrap_or(0);
                cuts += n;
                std::thread::sleep(every);
            }
            cuts
        })
    };
    for k in 0..20_000u64 {
        run.emit(0, ["a", "b", "c"][k as usize % 3], k);
        if k % 200 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let got = collect(&mut log, 20_000, Duration::from_secs(60));
    cutting.store(false, Ordering::Relaxed);
    let cuts = killer.join().unwrap();
    assert_eq!(run.stop(), 0);
    assert_once_in_order(&got, 20_000);
    Some((cuts, run.stats.failures.load(Ordering::Relaxed)))
}

#[test]
fn connections_cut_again_and_again_lose_and_double_nothing() {
    let Some((cuts, failures)) = under_cuts("pub-cut", Duration::from_millis(20)) else {
        return;
    };
    assert!(
        cuts > 0 && failures > 0,
        "{cuts} cuts, {failures} failed round trips"
    );
    eprintln!("publisher: {cuts} connections cut every 20 ms, {failures} round trips retried, 20000 events once each");
}

#[test]
fn only_an_unreachable_redis_makes_the_waits_grow() {
    let mut b = Backoff::new();
    let first = b.next_wait();
    b.reset();
    for _ in 0..10 {
        let w = wait_after(&mut b, Outcome::Cut);
        assert!(
            w <= Duration::from_millis(50),
            "a cut waits the first wait: {w:?}"
        );
    }
    let waits: Vec<Duration> = (0..10)
        .map(|_| wait_after(&mut b, Outcome::Unreachable))
        .collect();
    assert!(
        waits[9] >= Duration::from_secs(1),
        "{waits:?} (first {first:?})"
    );
    assert!(wait_after(&mut b, Outcome::Cut) <= Duration::from_millis(50));
}

/// Not a test: the figures of perf/<date>-redis-sequencing.md (`scripts/redis-sequencing`).
/// A backlog of EVENTS (default 200,000) events of 150-byte bodies from two emitters over USERS
/// users (default 1000) goes through the publisher and one local `redis-server`; prints events
/// per second, events per round trip, and the Redis server's CPU per million events.
#[test]
#[ignore = "a measurement, run by scripts/redis-sequencing"]
fn measure_sequencing() {
    let Some(server) = RedisServer::start("pub-measure") else {
        return;
    };
    let events: u64 = std::env::var("EVENTS").map_or(200_000, |v| v.parse().unwrap());
    let n_users: u64 = std::env::var("USERS").map_or(1000, |v| v.parse().unwrap());
    let users: Vec<String> = (0..n_users).map(|u| format!("user-{u}")).collect();
    let pad = "x".repeat(120);
    let mut conn = server.connect().unwrap();
    let cpu = |conn: &mut redis::Connection| -> f64 {
        let info: String = redis::cmd("INFO").arg("cpu").query(conn).unwrap();
        info.lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_sys:")
                    .or_else(|| l.strip_prefix("used_cpu_user:"))
            })
            .map(|v| v.trim().parse::<f64>().unwrap())
            .sum()
    };
    // The backlog is in the rings when the publisher starts; Redis is idle until then.
    let cpu_before = cpu(&mut conn);
    let mut run = start_with(server.port, 9, 2, 64 << 20, |producers| {
        for k in 0..events {
            let body =
                format!("\"type\":\"agent_thinking\",\"k\":{k},\"data\":{{\"pad\":\"{pad}\"}}}}");
            push(
                &mut producers[(k % 2) as usize],
                &users[(k % n_users) as usize],
                k,
                &body,
            );
        }
    });
    let began = Instant::now();
    run.unparker.unpark();
    while run.stats.events.load(Ordering::Relaxed) < events {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "sequencing stalled"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = began.elapsed().as_secs_f64();
    let cpu_used = cpu(&mut conn) - cpu_before;
    assert_eq!(run.stop(), 0);
    let batches = run.stats.batches.load(Ordering::Relaxed);
    println!(
        "redis-sequencing: users={n_users} events={events} seconds={took:.3} events_per_sec={:.0} round_trips={batches} events_per_round_trip={:.0} redis_cpu_seconds={cpu_used:.3} redis_cpu_seconds_per_million_events={:.2}",
        events as f64 / took,
        events as f64 / batches as f64,
        cpu_used * 1e6 / events as f64
    );
}
