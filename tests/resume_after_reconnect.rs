//! A client that drops its connection and reconnects with `?since=<seq>&epoch=<epoch>` gets
//! every event it missed, then live ones, with no duplicate and no gap, while producers keep
//! emitting; where history cannot cover the hole it gets an explicit `gap` frame.
mod util;

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn emit_blocking(em: &mut floodgate::Emitter, user: &str, i: u64) {
    let data = json!({ "i": i });
    util::emit_retrying(em, user, floodgate::Event::custom("tick", &data));
}

/// Reads frames until an event with `seq >= until` arrived; returns every frame read.
fn read_until(ws: &mut util::Client, until: u64) -> Vec<Value> {
    util::read_frames(ws, 1, T, |v| v["seq"].as_u64().is_some_and(|s| s >= until))
}

fn epoch_of(hello: &Value) -> String {
    hello["epoch"]
        .as_str()
        .expect("epoch is a string")
        .to_owned()
}

#[test]
fn reconnecting_with_the_cursor_misses_nothing_while_producers_emit() {
    const TOTAL: u64 = 30_000;
    let gw = Arc::new(
        util::builder()
            .history_max_events(TOTAL as usize)
            .history_max_bytes(16 << 20)
            .history_total_bytes(64 << 20)
            .build()
            .unwrap(),
    );
    let addr = gw.local_addr();
    let token = util::token("rita");
    let (mut ws, hello) = util::connect_to(addr, "/ws", &token);
    let epoch = epoch_of(&hello);
    assert_eq!(hello["last_seq"], 0);

    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let mut em = gw.emitter();
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 1..=TOTAL {
                emit_blocking(&mut em, "rita", i);
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    loop {
        // Read a while, then drop the socket without a close handshake, mid-stream.
        let target = seen.last().copied().unwrap_or(0) + 2_000;
        for f in read_until(&mut ws, target.min(TOTAL)) {
            assert_ne!(f["type"], "gap", "history covers everything here: {f}");
            if let Some(s) = f["seq"].as_u64() {
                seen.push(s);
            }
        }
        if *seen.last().unwrap() >= TOTAL {
            break;
        }
        ws.get_ref().shutdown(Shutdown::Both).unwrap();
        drop(ws);
        reconnects += 1;
        let last = *seen.last().unwrap();
        let path = format!("/ws?since={last}&epoch={epoch}");
        let (next, hello) = util::connect_to(addr, &path, &token);
        assert_eq!(epoch_of(&hello), epoch, "same stream");
        assert!(hello["last_seq"].as_u64().unwrap() >= last);
        ws = next;
    }
    producer.join().unwrap();
    assert!(done.load(Ordering::Relaxed));
    assert!(reconnects >= 5, "the test reconnected ({reconnects} times)");
    let want: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(seen.len(), want.len(), "no duplicate, no gap");
    assert_eq!(seen, want, "in order");
    let stats = gw.metrics().stats;
    assert_eq!(stats.resumes, reconnects);
    assert!(stats.events_replayed > 0, "some events came from history");
    assert_eq!(stats.gaps, 0);
    let metrics = util::http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        metrics.contains(&format!("floodgate_resumes_total {reconnects}")),
        "{metrics}"
    );
}

#[test]
fn a_hole_history_cannot_cover_is_announced_by_a_gap_frame() {
    let gw = util::builder().history_max_events(16).build().unwrap();
    let addr = gw.local_addr();
    let token = util::token("gus");
    let (ws, hello) = util::connect_to(addr, "/ws", &token);
    let epoch = epoch_of(&hello);
    drop(ws);
    let mut em = gw.emitter();
    for i in 1..=100 {
        emit_blocking(&mut em, "gus", i);
    }
    util::eventually(Duration::from_secs(5), "events routed", || {
        gw.metrics().stats.events_received == 100
    });
    let (mut ws, hello) = util::connect_to(addr, &format!("/ws?since=10&epoch={epoch}"), &token);
    assert_eq!(hello["last_seq"], 100);
    let frames = read_until(&mut ws, 100);
    assert_eq!(frames[0]["type"], "gap");
    assert_eq!(frames[0]["reason"], "history_evicted");
    assert_eq!(
        (frames[0]["from"].as_u64(), frames[0]["to"].as_u64()),
        (Some(11), Some(84))
    );
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (85..=100).collect::<Vec<_>>());
    // A cursor from another epoch is told so, and gets what is retained of this one.
    let (mut ws, _) = util::connect_to(addr, "/ws?since=5&epoch=00000000000000ff", &token);
    let frames = read_until(&mut ws, 100);
    assert_eq!(frames[0]["type"], "gap");
    assert_eq!(frames[0]["reason"], "epoch_changed");
    assert_eq!(frames[0]["previous_epoch"], "00000000000000ff");
    assert_eq!(frames[1]["seq"], 85);
    gw.shutdown().unwrap();
}

#[test]
fn malformed_cursors_are_refused_before_the_upgrade() {
    let gw = util::builder().build().unwrap();
    let addr = gw.local_addr();
    let auth = format!("Authorization: Bearer {}\r\n", util::token("m"));
    for (target, why) in [
        ("/ws?since=12", "`since` needs `epoch`"),
        ("/ws?since=-1&epoch=ab", "`since` must be"),
        ("/ws?since=3&epoch=xyz", "`epoch` must be"),
        ("/ws?epoch=ab", "`epoch` needs `since`"),
        ("/ws?resume=message&since=0", "not both"),
        ("/ws?resume=later", "`resume` must be `message`"),
    ] {
        let resp = util::http(addr, &util::upgrade_request(target, &auth));
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
        assert!(resp.contains(why), "{target}: {resp}");
    }
    // Without a valid token the answer is 401 whatever the cursor says.
    let resp = util::http(addr, &util::upgrade_request("/ws?since=12", ""));
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    gw.shutdown().unwrap();
}

#[test]
fn the_cursor_can_come_as_the_first_message_instead_of_the_query() {
    let gw = util::builder().build().unwrap();
    let addr = gw.local_addr();
    let token = util::token("fay");
    let (ws, hello) = util::connect_to(addr, "/ws", &token);
    let epoch = epoch_of(&hello);
    drop(ws);
    let mut em = gw.emitter();
    for i in 1..=20 {
        emit_blocking(&mut em, "fay", i);
    }
    util::eventually(T, "events routed", || {
        gw.metrics().stats.events_received == 20
    });
    // `resume=message`: nothing arrives until the client says where it stopped.
    let mut ws = util::try_connect(addr, "/ws?resume=message", Some(&token)).unwrap();
    let cursor = json!({ "since": 12, "epoch": epoch }).to_string();
    ws.send(tungstenite::Message::text(cursor)).unwrap();
    let frames = read_until(&mut ws, 20);
    assert_eq!(frames[0]["type"], "hello");
    assert_eq!(frames[0]["epoch"], epoch.as_str());
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
    emit_blocking(&mut em, "fay", 21);
    assert_eq!(read_until(&mut ws, 21).last().unwrap()["seq"], 21);
    gw.shutdown().unwrap();
}

#[test]
fn a_new_gateway_process_state_means_a_new_epoch_and_an_explicit_gap() {
    // History is in memory: a gateway started again has none of the old stream, and says so.
    let token = util::token("ivy");
    let gw = util::builder().build().unwrap();
    let (ws, hello) = util::connect_to(gw.local_addr(), "/ws", &token);
    let old_epoch = epoch_of(&hello);
    let mut em = gw.emitter();
    for i in 1..=3 {
        emit_blocking(&mut em, "ivy", i);
    }
    drop((ws, em));
    gw.shutdown().unwrap();

    let gw = util::builder().build().unwrap();
    let path = format!("/ws?since=3&epoch={old_epoch}");
    let (mut ws, hello) = util::connect_to(gw.local_addr(), &path, &token);
    assert_ne!(epoch_of(&hello), old_epoch, "a new run of seq numbers");
    assert_eq!(hello["last_seq"], 0);
    let mut em = gw.emitter();
    emit_blocking(&mut em, "ivy", 1);
    let frames = read_until(&mut ws, 1);
    assert_eq!(frames[0]["type"], "gap");
    assert_eq!(frames[0]["reason"], "epoch_changed");
    assert_eq!(frames[0]["previous_seq"], 3);
    assert_eq!(frames[1]["seq"], 1, "then the new stream from its start");
    gw.shutdown().unwrap();
}
