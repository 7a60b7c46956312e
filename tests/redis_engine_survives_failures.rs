//! The Redis engine under the failures docs/SCALING.md promises about, with real processes:
//! a gateway node killed with SIGKILL mid-run (its clients resume on another node and lose
//! nothing), `redis-server` killed and restarted mid-run (with persistence: every event; without:
//! every event before it, an explicit `epoch_changed` gap, then every event after), and a node
//! started while Redis is out of reach (it says so on /healthz, holds emits back, and delivers
//! them once Redis is up).

mod util;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;
use util::redis_server::{free_port, RedisServer};
use util::Serve;

const KEY: &str = "ingest-key-for-tests-0123456789";

fn node(redis_url: &str) -> Serve {
    node_with(redis_url, &[])
}

/// A node with more flags.
fn node_with(redis_url: &str, more: &[&str]) -> Serve {
    let mut args = vec![
        "--ingest-api-key",
        KEY,
        "--engine",
        "redis",
        "--redis-url",
        redis_url,
    ];
    args.extend_from_slice(more);
    Serve::start("", &args, &[])
}

/// Publishes `user`'s events with data `{"k": k}` for each `k` of `ks` on `addr`, one per
/// request on one keep-alive connection (one ingest connection: events keep their order, as
/// those of one emitter do), each sent again until the node accepts it (it refuses with `full`
/// while it holds events back for a Redis out of reach). Returns how many were refused.
fn publish_all(addr: SocketAddr, user: &str, ks: std::ops::Range<u64>, pace: Duration) -> u64 {
    publish_typed(addr, user, "tool_completed", ks, pace)
}

/// [`publish_all`] with events of type `kind`.
fn publish_typed(
    addr: SocketAddr,
    user: &str,
    kind: &str,
    ks: std::ops::Range<u64>,
    pace: Duration,
) -> u64 {
    use std::io::{BufRead, BufReader, Read, Write};
    let connect = || BufReader::new(std::net::TcpStream::connect(addr).unwrap());
    let mut conn = connect();
    let mut refused = 0;
    for k in ks {
        let body = json!([{"user": user, "type": kind, "data": {"k": k}}]).to_string();
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "event {k} never accepted");
            conn.get_mut().write_all(request.as_bytes()).unwrap();
            let (mut status, mut len) = (String::new(), 0usize);
            conn.read_line(&mut status).unwrap();
            loop {
                let mut line = String::new();
                conn.read_line(&mut line).unwrap();
                if line.trim_end().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut answer = vec![0u8; len];
            conn.read_exact(&mut answer).unwrap();
            let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
            if status.starts_with("HTTP/1.1 200") && answer["accepted"] == 1 {
                break;
            }
            refused += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(pace);
    }
    refused
}

/// What a client saw: each event's `k`, each gap's reason and the epoch after it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Saw {
    Event { epoch: String, seq: u64, k: u64 },
    Gap(String),
}

/// A client of `user` that follows the stream from its cursor: when its connection breaks it
/// connects again (to `nodes[next]`, in turn) with `?since=<seq>&epoch=<epoch>`.
struct Follower {
    user: &'static str,
    epoch: String,
    seq: u64,
    saw: Vec<Saw>,
    ws: Option<util::Client>,
    reconnects: u64,
}

impl Follower {
    fn start(addr: SocketAddr, user: &'static str) -> Follower {
        let (ws, hello) = util::connect_to(addr, "/ws", &util::token(user));
        Follower {
            user,
            epoch: hello["epoch"].as_str().unwrap().to_owned(),
            seq: hello["last_seq"].as_u64().unwrap(),
            saw: Vec::new(),
            ws: Some(ws),
            reconnects: 0,
        }
    }

    fn events(&self) -> usize {
        self.saw
            .iter()
            .filter(|s| matches!(s, Saw::Event { .. }))
            .count()
    }

    /// Reads until `n` events in all, reconnecting to the first of `nodes` that answers;
    /// panics after `limit` with the logs of `logs`.
    fn follow(&mut self, n: usize, nodes: &[SocketAddr], limit: Duration, logs: &[&Serve]) {
        let deadline = Instant::now() + limit;
        while self.events() < n {
            if Instant::now() >= deadline {
                let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
                panic!(
                    "{} of {n} events: {:?}\nlogs: {logs:#?}",
                    self.events(),
                    self.saw.last()
                );
            }
            let Some(ws) = self.ws.as_mut() else {
                self.reconnect(nodes);
                continue;
            };
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    self.take(&v);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.ws = None,
            }
        }
    }

    fn take(&mut self, v: &Value) {
        if let Some(seq) = v["seq"].as_u64() {
            assert_eq!(seq, self.seq + 1, "{}: in order, no gap unsaid", self.user);
            self.seq = seq;
            let k = v["data"]["k"].as_u64().unwrap();
            self.saw.push(Saw::Event {
                epoch: self.epoch.clone(),
                seq,
                k,
            });
        } else if v["type"] == "gap" {
            self.epoch = v["epoch"].as_str().unwrap().to_owned();
            self.seq = v["to"].as_u64().unwrap();
            self.saw
                .push(Saw::Gap(v["reason"].as_str().unwrap().to_owned()));
        }
    }

    fn reconnect(&mut self, nodes: &[SocketAddr]) {
        self.reconnects += 1;
        let path = format!("/ws?since={}&epoch={}", self.seq, self.epoch);
        for &addr in nodes {
            if let Ok(mut ws) = util::try_connect(addr, &path, Some(&util::token(self.user))) {
                if let Ok(Message::Text(t)) = ws.read() {
                    let hello: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(hello["type"], "hello");
                    self.ws = Some(ws);
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Asserts the client saw `k` 0 to `n - 1`, each once, in order, and no gap.
    fn saw_all_once_without_gap(&self, n: u64) {
        assert_eq!(
            self.ks(),
            (0..n).collect::<Vec<_>>(),
            "every event once, in order"
        );
        assert!(
            !self.saw.iter().any(|s| matches!(s, Saw::Gap(_))),
            "no gap: {:?}",
            self.saw
        );
    }

    /// The `k` of every event seen, in order.
    fn ks(&self) -> Vec<u64> {
        self.saw
            .iter()
            .filter_map(|s| match s {
                Saw::Event { k, .. } => Some(*k),
                Saw::Gap(_) => None,
            })
            .collect()
    }
}

/// A thread publishing `ks` for `user` on `addr`.
fn publishing(addr: SocketAddr, user: &'static str, ks: std::ops::Range<u64>) -> JoinHandle<u64> {
    std::thread::spawn(move || publish_all(addr, user, ks, Duration::from_micros(500)))
}

#[test]
fn a_killed_nodes_clients_resume_on_another_and_lose_nothing() {
    let Some(redis) = RedisServer::start("kill-node") else {
        return;
    };
    let mut a = node(&redis.url());
    let b = node(&redis.url());
    let mut f = Follower::start(a.addr, "kim");
    const N: u64 = 1500;
    let publisher = publishing(b.addr, "kim", 0..N);
    f.follow(300, &[a.addr], Duration::from_secs(30), &[&a, &b]);
    // SIGKILL: no shutdown, no goodbye to the client.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    f.follow(N as usize, &[b.addr], Duration::from_secs(60), &[&b]);
    assert_eq!(
        publisher.join().unwrap(),
        0,
        "node b never refused an event"
    );
    f.saw_all_once_without_gap(N);
    assert!(f.reconnects >= 1, "the client moved");
}

#[test]
fn a_redis_restart_with_persistence_loses_nothing() {
    let Some(mut redis) = RedisServer::start_with("restart-aof", free_port(), true) else {
        return;
    };
    let a = node(&redis.url());
    let b = node(&redis.url());
    let mut f = Follower::start(a.addr, "lee");
    const N: u64 = 1500;
    let publisher = publishing(b.addr, "lee", 0..N);
    f.follow(400, &[a.addr], Duration::from_secs(30), &[&a, &b]);
    redis.restart();
    f.follow(
        N as usize,
        &[a.addr, b.addr],
        Duration::from_secs(90),
        &[&a, &b],
    );
    publisher.join().unwrap();
    f.saw_all_once_without_gap(N);
    assert!(
        a.metric("floodgate_redis_failures_total") > 0,
        "node a noticed the restart"
    );
}

#[test]
fn a_redis_restart_without_persistence_is_an_explicit_new_epoch() {
    let Some(mut redis) = RedisServer::start("restart-empty") else {
        return;
    };
    let a = node(&redis.url());
    let b = node(&redis.url());
    let mut f = Follower::start(a.addr, "max");
    publish_all(b.addr, "max", 0..500, Duration::ZERO);
    f.follow(500, &[a.addr], Duration::from_secs(30), &[&a, &b]);
    let first_epoch = f.epoch.clone();
    redis.restart();
    publish_all(b.addr, "max", 500..1000, Duration::ZERO);
    f.follow(1000, &[a.addr, b.addr], Duration::from_secs(20), &[&a, &b]);
    // Everything before the restart, one gap that names the new run, everything after.
    assert_eq!(f.ks(), (0..1000).collect::<Vec<_>>());
    let gaps: Vec<usize> = (0..f.saw.len())
        .filter(|&i| matches!(f.saw[i], Saw::Gap(_)))
        .collect();
    assert_eq!(gaps.len(), 1, "{:?}", &f.saw[495..]);
    assert_eq!(f.saw[gaps[0]], Saw::Gap("epoch_changed".into()));
    assert_eq!(gaps[0], 500, "between the two runs");
    assert_ne!(f.epoch, first_epoch);
    assert!(
        matches!(&f.saw[501], Saw::Event { seq: 1, .. }),
        "{:?}",
        f.saw[501]
    );
}

#[test]
fn a_node_without_redis_says_so_holds_emits_back_and_delivers_them_once_redis_is_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let a = node(&url);
    let health = util::http(a.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("redis unreachable"), "{health}");
    // A client waits: not even its 101 while the node cannot vouch for the stream.
    let addr = a.addr;
    let client = std::thread::spawn(move || {
        let began = Instant::now();
        let mut ws = util::try_connect(addr, "/ws?since=0", Some(&util::token("ned"))).unwrap();
        let waited = began.elapsed();
        (
            waited,
            util::read_frames(&mut ws, 4, Duration::from_secs(30), |_| true),
        )
    });
    // Emits are accepted and held back (the rings have room).
    publish_all(a.addr, "ned", 0..3, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300));
    let Some(_redis) = RedisServer::start_on("late", port) else {
        return;
    };
    let (waited, frames) = client.join().unwrap();
    assert!(
        waited >= Duration::from_millis(300),
        "the 101 came after Redis: {waited:?}"
    );
    assert_eq!(frames[0]["type"], "hello", "{frames:?}");
    let ks: Vec<u64> = frames[1..]
        .iter()
        .map(|e| e["data"]["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, [0, 1, 2], "{frames:?}");
    util::eventually(Duration::from_secs(10), "healthy again", || {
        util::http(a.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200")
    });
}

#[test]
fn a_node_started_after_the_events_resumes_a_cursor_from_redis() {
    let Some(redis) = RedisServer::start("late-node") else {
        return;
    };
    let a = node(&redis.url());
    let mut f = Follower::start(a.addr, "ola");
    publish_all(a.addr, "ola", 0..600, Duration::ZERO);
    f.follow(250, &[a.addr], Duration::from_secs(30), &[&a]);
    // A rolling deploy: node a goes once Redis has every event it accepted (a kill before
    // that loses what Redis had not sequenced yet, as SCALING.md says), node b starts (it
    // never received any of these events), and the client resumes there with its cursor.
    util::eventually(
        Duration::from_secs(10),
        "node a sequenced every event",
        || a.metric("floodgate_redis_events_sequenced_total") >= 600,
    );
    drop(f.ws.take());
    drop(a);
    let b = node(&redis.url());
    f.follow(600, &[b.addr], Duration::from_secs(30), &[&b]);
    f.saw_all_once_without_gap(600);
    assert!(b.metric("floodgate_redis_history_events_read_total") >= 350);
}

#[test]
fn a_resume_before_a_nodes_history_gets_the_rest_from_redis() {
    let Some(redis) = RedisServer::start("backfill") else {
        return;
    };
    let a = node(&redis.url());
    // Node b keeps only the last 100 events of a stream in memory, and follows this user's
    // stream all along (another of the user's devices is connected there).
    let b = node_with(&redis.url(), &["--history-max-events", "100"]);
    let mut other_device = Follower::start(b.addr, "ria");
    let mut f = Follower::start(a.addr, "ria");
    publish_all(a.addr, "ria", 0..600, Duration::ZERO);
    f.follow(250, &[a.addr], Duration::from_secs(30), &[&a]);
    other_device.follow(600, &[b.addr], Duration::from_secs(30), &[&b]);
    // The client moves to b with its cursor at 250: b's memory starts at 501, Redis has
    // the rest.
    drop(f.ws.take());
    f.follow(600, &[b.addr], Duration::from_secs(30), &[&b]);
    f.saw_all_once_without_gap(600);
    assert_eq!(b.metric("floodgate_redis_resumes_from_redis_total"), 1);
    assert_eq!(b.metric("floodgate_redis_history_events_read_total"), 250);
    // The other device saw every event live, none twice.
    assert_eq!(other_device.ks(), (0..600).collect::<Vec<_>>());
}

#[test]
fn unacked_events_are_redelivered_on_a_node_that_started_after_them() {
    let Some(redis) = RedisServer::start("redeliver") else {
        return;
    };
    let a = node(&redis.url());
    let (mut ws, _) = util::connect_to(a.addr, "/ws", &util::token("una"));
    // Ten events that need an ack (agent_completed does by default); the client acks 4.
    publish_typed(a.addr, "una", "agent_completed", 0..10, Duration::ZERO);
    let got = util::read_events(&mut ws, 10, Duration::from_secs(10));
    assert!(got.iter().all(|e| e["ack"] == true), "{got:?}");
    ws.send(Message::text(r#"{"ack":4}"#)).unwrap();
    // The ack reaches Redis through the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis
        .command(&["HGET", "floodgate:{una}:m", "acked"])
        .contains("\r\n4\r\n")
    {
        assert!(Instant::now() < deadline, "the ack never reached Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A node that never received any of them: a new connection there, without a cursor,
    // gets the six unacked ones again after `hello`, as on the node that emitted them.
    let b = node(&redis.url());
    let (mut ws_b, hello) = util::connect_to(b.addr, "/ws", &util::token("una"));
    assert_eq!(hello["last_seq"], 10);
    let frames = util::read_frames(&mut ws_b, 7, Duration::from_secs(10), |_| true);
    assert_eq!(frames[0]["type"], "redelivery", "{frames:?}");
    assert_eq!(frames[0]["count"], 6, "{frames:?}");
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>());
    assert_eq!(frames[1..], got[4..], "the same frames");
    // An ack on b settles them everywhere: a's next connection gets nothing again.
    ws_b.send(Message::text(r#"{"ack":10}"#)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (mut ws_a, _) = util::connect_to(a.addr, "/ws", &util::token("una"));
    publish_typed(a.addr, "una", "tool_completed", 10..11, Duration::ZERO);
    let next = util::read_frames(&mut ws_a, 1, Duration::from_secs(10), |_| true);
    assert_eq!(next[0]["seq"], 11, "no redelivery: {next:?}");
}
