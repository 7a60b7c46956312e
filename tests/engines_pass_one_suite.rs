//! One suite, both engines: order, exactly once, isolation between users, resume, gaps and
//! acks, checked with real `floodgate serve` processes and independent WebSocket clients, on
//! the local engine (one process) and on the Redis engine (three processes sharing one
//! `redis-server` the test starts). On the Redis engine each user has a connection on every
//! node, events are published on every node, every connection must see the same stream, and
//! an ack made on one node counts on all of them.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use util::redis_server::RedisServer;
use util::Serve;

const KEY: &str = "ingest-key-for-tests-0123456789";

/// The gateways of one run, and the Redis they share (on the Redis engine).
struct Cluster {
    nodes: Vec<Serve>,
    _redis: Option<RedisServer>,
}

fn local() -> Cluster {
    let node = Serve::start("", &["--ingest-api-key", KEY, "--shards", "2"], &[]);
    Cluster {
        nodes: vec![node],
        _redis: None,
    }
}

fn redis(name: &str, nodes: usize) -> Option<Cluster> {
    let redis = RedisServer::start(name)?;
    let url = redis.url();
    let args = [
        "--ingest-api-key",
        KEY,
        "--shards",
        "2",
        "--engine",
        "redis",
        "--redis-url",
        &url,
    ];
    let nodes = (0..nodes).map(|_| Serve::start("", &args, &[])).collect();
    Some(Cluster {
        nodes,
        _redis: Some(redis),
    })
}

/// Publishes `events` on `addr` in one request; every one must be accepted.
fn publish(addr: SocketAddr, events: &Value) {
    let body = events.to_string();
    let resp = util::http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let answer: Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(answer["rejected"], 0, "{answer}");
}

/// `(node, k)` of an event the suite published, checking it is `user`'s.
fn origin(e: &Value, user: &str) -> (u64, u64) {
    assert_eq!(e["data"]["u"], user, "an event of another user: {e}");
    (
        e["data"]["node"].as_u64().unwrap(),
        e["data"]["k"].as_u64().unwrap(),
    )
}

fn suite(c: &Cluster) {
    const USERS: [&str; 2] = ["ann", "ben"];
    const ROUNDS: u64 = 5;
    const PER_USER: u64 = 20;
    let n_nodes = c.nodes.len() as u64;
    let total = ROUNDS * n_nodes * PER_USER;

    // Every user connects to every node; each node says the same epoch, before any event.
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for user in USERS {
        let mut epoch = None;
        for node in &c.nodes {
            let (ws, hello) = util::connect_to(node.addr, "/ws", &util::token(user));
            assert_eq!(hello["last_seq"], 0, "{hello}");
            let e = hello["epoch"].as_str().unwrap().to_owned();
            assert_eq!(
                *epoch.get_or_insert_with(|| e.clone()),
                e,
                "one epoch per user"
            );
            clients.push((user, ws));
        }
        epochs.push(epoch.unwrap());
    }

    // Events published on every node, interleaved.
    for round in 0..ROUNDS {
        for (i, node) in c.nodes.iter().enumerate() {
            let events: Vec<Value> = (0..PER_USER)
                .flat_map(|j| {
                    USERS.map(|u| {
                        json!({"user": u, "type": "tool_executing",
                               "data": {"u": u, "node": i, "k": round * PER_USER + j}})
                    })
                })
                .collect();
            publish(node.addr, &Value::Array(events));
        }
    }

    // Every connection of a user: every event once, seqs 1..=total, each node's in the order
    // it published them, and the very same stream on every node.
    let mut streams: Vec<(&str, Vec<(u64, u64)>)> = Vec::new();
    for (user, ws) in &mut clients {
        let events = util::read_events(ws, total as usize, Duration::from_secs(30));
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "{user}");
        let got: Vec<(u64, u64)> = events.iter().map(|e| origin(e, user)).collect();
        for node in 0..n_nodes {
            let ks: Vec<u64> = got.iter().filter(|o| o.0 == node).map(|o| o.1).collect();
            assert_eq!(
                ks,
                (0..ROUNDS * PER_USER).collect::<Vec<_>>(),
                "{user}: node {node}'s events"
            );
        }
        streams.push((user, got));
    }
    for pair in streams.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert_eq!(
                pair[0].1, pair[1].1,
                "{}: one order on every node",
                pair[0].0
            );
        }
    }

    // A resume on any node (the last) from the middle: the rest, nothing else.
    let last = c.nodes.last().unwrap().addr;
    let half = total / 2;
    let path = format!("/ws?since={half}&epoch={}", epochs[0]);
    let (mut ws, hello) = util::connect_to(last, &path, &util::token("ann"));
    assert_eq!(hello["last_seq"], total);
    let rest = util::read_events(&mut ws, (total - half) as usize, Duration::from_secs(10));
    let seqs: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (half + 1..=total).collect::<Vec<_>>());
    assert_eq!(
        streams[0].1[half as usize..],
        rest.iter().map(|e| origin(e, "ann")).collect::<Vec<_>>()[..]
    );

    // Gaps say what cannot be vouched for: a cursor ahead of the stream, another epoch.
    let ahead = format!("/ws?since={}&epoch={}", total + 5, epochs[0]);
    let (mut ws, _) = util::connect_to(c.nodes[0].addr, &ahead, &util::token("ann"));
    let gap = util::read_frames(&mut ws, 1, Duration::from_secs(10), |_| true).remove(0);
    assert_eq!(
        (gap["type"].as_str(), gap["reason"].as_str()),
        (Some("gap"), Some("cursor_ahead")),
        "{gap}"
    );
    let other = format!(
        "/ws?since=3&epoch={:016x}",
        u64::from_str_radix(&epochs[1], 16).unwrap() ^ 1
    );
    let (mut ws, _) = util::connect_to(last, &other, &util::token("ben"));
    let gap = util::read_frames(&mut ws, 1, Duration::from_secs(10), |_| true).remove(0);
    assert_eq!(gap["reason"], "epoch_changed", "{gap}");
    assert_eq!(gap["epoch"].as_str(), Some(epochs[1].as_str()));

    // Acks: of two events that need one, the acked one is not sent again on a new connection
    // to any node; the other is, on every node.
    let node = c.nodes[0].addr;
    let (mut ws, _) = util::connect_to(
        node,
        &format!("/ws?since={total}&epoch={}", epochs[0]),
        &util::token("ann"),
    );
    publish(
        node,
        &json!([
            {"user": "ann", "type": "agent_completed", "run_id": "r1", "data": {"u": "ann", "node": 0, "k": 1000}},
            {"user": "ann", "type": "agent_completed", "run_id": "r2", "data": {"u": "ann", "node": 0, "k": 1001}},
        ]),
    );
    let two = util::read_events(&mut ws, 2, Duration::from_secs(10));
    assert!(two.iter().all(|e| e["ack"] == true), "{two:?}");
    let first = two[0]["seq"].as_u64().unwrap();
    assert_eq!(first, total + 1);
    ws.send(tungstenite::Message::text(format!("{{\"ack\":{first}}}")))
        .unwrap();
    // The ack is taken before the next connection starts (the server reads it first).
    std::thread::sleep(Duration::from_millis(200));
    drop(ws);
    // On every node: the ack made on the first reached them all.
    for node in &c.nodes {
        let (mut ws, _) = util::connect_to(node.addr, "/ws", &util::token("ann"));
        let frames = util::read_frames(&mut ws, 2, Duration::from_secs(10), |_| true);
        assert_eq!(frames[0]["type"], "redelivery", "{frames:?}");
        assert_eq!(frames[0]["count"], 1, "{frames:?}");
        assert_eq!(
            frames[1]["seq"],
            total + 2,
            "only the unacked one: {frames:?}"
        );
    }

    for node in &c.nodes {
        let health = util::http(node.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    }
}

#[test]
fn the_local_engine_passes_the_suite() {
    suite(&local());
}

#[test]
fn the_redis_engine_passes_the_suite_across_three_nodes() {
    let Some(c) = redis("suite", 3) else {
        return;
    };
    suite(&c);
    // Sequencing batched: the nodes' events took fewer round trips than events.
    let sequenced: u64 = c
        .nodes
        .iter()
        .map(|n| n.metric("floodgate_redis_events_sequenced_total"))
        .sum();
    let batches: u64 = c
        .nodes
        .iter()
        .map(|n| n.metric("floodgate_redis_batches_sequenced_total"))
        .sum();
    assert_eq!(sequenced, 2 * 5 * 3 * 20 + 2);
    assert!(
        batches < sequenced,
        "{batches} round trips for {sequenced} events"
    );
}
