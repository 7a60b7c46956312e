//! Events published by another process (`POST /api/publish`, the `/api/ingest` WebSocket)
//! reach the user's connections like emitted ones, each refused event is named with its index,
//! and the endpoints are bounded: the key, the body size, the batch size and the rate.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const KEY: &str = "ingest-key-for-tests-0123456789";

/// A keep-alive HTTP/1.1 connection to the publish endpoint.
struct Publisher {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Publisher {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Publisher {
            reader: BufReader::new(s),
            addr,
        }
    }

    /// Sends one request and reads its response: status, headers (lower-case names) and body.
    fn post(&mut self, key: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let code: u16 = status
            .split(' ')
            .nth(1)
            .expect("a status line")
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).unwrap();
        (code, headers, String::from_utf8(body).unwrap())
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn published_events_reach_their_users_in_order_and_bad_ones_are_named() {
    let gw = util::builder().ingest_api_key(KEY).build().unwrap();
    let addr = gw.local_addr();
    let mut alice = util::connect(addr, &util::token("alice"));
    let mut bob = util::connect(addr, &util::token("bob"));

    let mut p = Publisher::connect(addr);
    let batch = json!([
        {"user": "alice", "type": "agent_started", "run_id": "r1"},
        {"user": "bob", "type": "tool_executing", "run_id": "r2", "data": {"tool": "grep"}},
        {"user": "", "type": "agent_thinking"},
        {"user": "alice", "type": "not a valid name"},
        {"user": "alice", "type": "agent_thinking", "data": {"delta": "hm"}, "extra": 1},
        {"user": "alice", "type": "my.custom", "data": [1, 2, 3], "thread_id": "t1"},
    ]);
    let (code, _, body) = p.post(KEY, &batch.to_string());
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"], 3, "{answer}");
    let codes: Vec<(u64, &str)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (2, "invalid_user"),
            (3, "invalid_type"),
            (4, "invalid_event")
        ]
    );
    assert!(
        answer["errors"][2]["message"]
            .as_str()
            .unwrap()
            .contains("extra"),
        "the message names the unknown member: {answer}"
    );

    // The same keep-alive connection takes the next batch.
    let (code, _, body) = p.post(
        KEY,
        r#"[{"user":"alice","type":"agent_completed","run_id":"r1","data":{"answer":42}}]"#,
    );
    assert_eq!(code, 200, "{body}");

    let a = util::read_events(&mut alice, 3, Duration::from_secs(10));
    let types: Vec<&str> = a.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["agent_started", "my.custom", "agent_completed"]);
    let seqs: Vec<u64> = a.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(a[1]["data"], json!([1, 2, 3]));
    assert_eq!(a[1]["thread_id"], "t1");
    assert_eq!(
        a[2]["ack"], true,
        "agent_completed asks for an ack as when emitted"
    );
    let b = util::read_events(&mut bob, 1, Duration::from_secs(10));
    assert_eq!(b[0]["data"], json!({"tool": "grep"}));
    assert_eq!(b[0]["run_id"], "r2");

    let m = gw.metrics();
    assert_eq!(m.ingest.events_accepted, 4);
    assert_eq!(m.ingest.events_rejected, 3);
    assert_eq!(m.ingest.batches, 2);
    let report = gw.shutdown().unwrap();
    assert_eq!(report.undelivered, 0);
}

#[test]
fn the_ingest_socket_answers_every_batch_by_id() {
    let gw = util::builder().ingest_api_key(KEY).build().unwrap();
    let addr = gw.local_addr();
    let mut carol = util::connect(addr, &util::token("carol"));

    let mut req = format!("ws://{addr}/api/ingest")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {KEY}").parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) = tungstenite::client::client(req, stream).expect("upgrade");
    let total = 50u64;
    for b in 0..10u64 {
        let events: Vec<Value> = (0..5)
            .map(|i| json!({"user": "carol", "type": "agent_thinking", "data": {"n": b * 5 + i}}))
            .collect();
        let msg = json!({"id": b, "events": events});
        ws.send(Message::text(msg.to_string())).unwrap();
    }
    // A bare array is accepted too, and a malformed batch is refused whole.
    ws.send(Message::text(
        r#"[{"user":"carol","type":"agent_completed"}]"#,
    ))
    .unwrap();
    ws.send(Message::text(r#"{"id":"x","events":{}}"#)).unwrap();
    let mut answers = Vec::new();
    while answers.len() < 12 {
        match ws.read().unwrap() {
            Message::Text(t) => answers.push(serde_json::from_str::<Value>(&t).unwrap()),
            _ => continue,
        }
    }
    for (b, a) in answers.iter().take(10).enumerate() {
        assert_eq!(a["id"], b as u64, "answers come in order: {a}");
        assert_eq!(a["accepted"], 5, "{a}");
    }
    assert_eq!(answers[10]["accepted"], 1);
    assert!(answers[10].get("id").is_none());
    assert_eq!(answers[11]["error"], "malformed", "{}", answers[11]);

    let got = util::read_events(&mut carol, total as usize + 1, Duration::from_secs(10));
    for (i, e) in got.iter().take(total as usize).enumerate() {
        assert_eq!(e["data"]["n"], i as u64, "in the order published");
    }
    assert_eq!(got[total as usize]["type"], "agent_completed");

    // Shutting down with the ingest socket open closes it (1001) and stops its thread.
    let report = gw.shutdown().unwrap();
    assert_eq!(report.undelivered, 0);
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
    assert!(util::threads_named("floodgate-ingest").is_empty());
}

#[test]
fn the_endpoints_are_bounded_and_need_the_key() {
    let gw = util::builder()
        .ingest_api_key(KEY)
        .ingest_max_body_bytes(4096)
        .ingest_max_batch_events(3)
        .ingest_max_events_per_sec(2)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let batch = |n: usize| {
        let events = vec![json!({"user": "dave", "type": "agent_started"}); n];
        Value::Array(events).to_string()
    };

    let mut p = Publisher::connect(addr);
    let (code, h, body) = p.post("wrong-key-wrong-key", &batch(1));
    assert_eq!(code, 401, "{body}");
    assert_eq!(header(&h, "connection"), Some("close"));

    let mut p = Publisher::connect(addr);
    let big = format!(
        r#"[{{"user":"dave","type":"x","data":"{}"}}]"#,
        "a".repeat(5000)
    );
    let (code, _, body) = p.post(KEY, &big);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("ingest_max_body_bytes"), "{body}");

    let mut p = Publisher::connect(addr);
    let (code, _, body) = p.post(KEY, &batch(4));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("too_many_events"), "{body}");
    let (code, _, body) = p.post(KEY, "{not json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");

    // 2 events/s, and a burst of a tenth of a second's worth or one batch, whichever is more
    // (here 3 events). Batches sent back to back soon get 429 with Retry-After, and nothing of
    // a refused batch is emitted.
    let three = batch(3);
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..5 {
        let (code, h, body) = p.post(KEY, &three);
        match code {
            200 => accepted += 3,
            429 => {
                limited += 1;
                assert!(header(&h, "retry-after").is_some(), "{h:?}");
                assert!(body.contains("rate_limited"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(limited >= 3, "{limited} of 5 back-to-back batches limited");
    let m = gw.metrics();
    assert_eq!(m.ingest.events_accepted, accepted);
    assert_eq!(m.ingest.rate_limited, limited);

    // GET is not a publish; a gateway without a key has no ingest at all.
    let resp = util::http(addr, "GET /api/publish HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    gw.shutdown().unwrap();
    let off = util::builder().build().unwrap();
    let resp = util::http(
        off.local_addr(),
        &format!("POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n[]"),
    );
    assert!(
        resp.starts_with("HTTP/1.1 404") && resp.contains("ingest_api_key"),
        "{resp}"
    );
}

#[test]
fn a_short_api_key_is_refused_with_the_setting_named() {
    let e = util::builder().ingest_api_key("short").build().unwrap_err();
    assert!(e.to_string().contains("ingest_api_key"), "{e}");
    let e = util::builder()
        .ingest_api_key(KEY)
        .ingest_max_events_per_sec(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("ingest_max_events_per_sec"), "{e}");
}

#[test]
fn ingest_connections_are_bounded() {
    let gw = util::builder()
        .ingest_api_key(KEY)
        .ingest_max_connections(1)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let mut first = Publisher::connect(addr);
    let (code, _, body) = first.post(KEY, r#"[{"user":"erin","type":"agent_started"}]"#);
    assert_eq!(code, 200, "{body}");
    // The first connection is still open (keep-alive): a second one is refused.
    let resp = util::http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 2\r\n\r\n[]"
        ),
    );
    assert!(
        resp.starts_with("HTTP/1.1 503") && resp.contains("ingest_max_connections"),
        "{resp}"
    );
    // Once it closes, a new publisher gets in.
    drop(first);
    util::eventually(Duration::from_secs(5), "the slot is free again", || {
        let mut p = Publisher::connect(addr);
        p.post(KEY, "[]").0 == 200
    });
    assert_eq!(gw.metrics().ingest.batches, 2);
}

#[test]
fn idle_ingest_connections_are_closed_and_free_their_slots() {
    let gw = util::builder()
        .ingest_api_key(KEY)
        .ingest_max_connections(2)
        .ingest_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let addr = gw.local_addr();
    // Both slots taken by publishers that then say nothing: a socket and a keep-alive POST.
    let mut socket = util::try_connect(addr, "/api/ingest", Some(KEY)).expect("ingest socket");
    let mut post = Publisher::connect(addr);
    assert_eq!(post.post(KEY, "[]").0, 200);
    util::eventually(
        Duration::from_secs(5),
        "both idle connections closed",
        || gw.metrics().ingest.closed_idle == 2,
    );
    // The socket was told why (1008), and the slots are free for a new publisher.
    match socket.read() {
        Ok(tungstenite::Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1008);
            assert!(f.reason.contains("ingest_idle_timeout"), "{}", f.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let mut fresh = Publisher::connect(addr);
    assert_eq!(fresh.post(KEY, "[]").0, 200);
    drop(post);
}

#[test]
fn a_retried_batch_with_idempotency_keys_makes_no_duplicates() {
    let gw = util::builder().ingest_api_key(KEY).build().unwrap();
    let addr = gw.local_addr();
    let mut frank = util::connect(addr, &util::token("frank"));
    let batch = r#"[{"user":"frank","type":"tool_completed","idempotency_key":"call-1"},
                    {"user":"frank","type":"tool_completed","idempotency_key":"call-2"}]"#;
    let mut p = Publisher::connect(addr);
    let (code, _, body) = p.post(KEY, batch);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""accepted":2"#), "{body}");
    // The publisher timed out and sends the same batch again, plus one new event.
    let retry = r#"[{"user":"frank","type":"tool_completed","idempotency_key":"call-1"},
                    {"user":"frank","type":"tool_completed","idempotency_key":"call-2"},
                    {"user":"frank","type":"tool_completed","idempotency_key":"call-3"}]"#;
    let (code, _, body) = p.post(KEY, retry);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 1, "{body}");
    let codes: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["duplicate", "duplicate"], "{body}");
    // The client got each event once: a marker sent last is the 4th event of the stream.
    let (_, _, body) = p.post(KEY, r#"[{"user":"frank","type":"marker"}]"#);
    assert!(body.contains(r#""accepted":1"#), "{body}");
    let got = util::read_events(&mut frank, 4, Duration::from_secs(10));
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(got[3]["type"], "marker", "{got:?}");
    assert_eq!(gw.metrics().ingest.duplicates, 2);
    // The same key for another user is that user's own.
    let (_, _, body) = p.post(
        KEY,
        r#"[{"user":"gina","type":"x","idempotency_key":"call-1"}]"#,
    );
    assert!(body.contains(r#""accepted":1"#), "{body}");
}
