//! Events that need an ack (by default `agent_completed`) over real sockets: they carry
//! `"ack":true`, are sent again to every connection of the user that starts until a client
//! acks them with `{"ack":<seq>}`, and go to the dead-letter file when nobody does in time.
//! Emitters follow each tracked event through its `Receipt`.
mod util;

use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

const T: Duration = Duration::from_secs(20);

fn send_ack(ws: &mut util::Client, seq: u64) {
    ws.send(Message::text(json!({ "ack": seq }).to_string()))
        .unwrap();
    ws.flush().unwrap();
}

#[test]
fn an_unacked_agent_completed_is_sent_again_to_each_new_connection_until_acked() {
    let gw = util::builder().build().unwrap();
    let addr = gw.local_addr();
    let token = util::token("ada");
    let (mut ws, hello) = util::connect_to(addr, "/ws", &token);
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let mut em = gw.emitter();
    let answer = json!({ "answer": 42 });
    em.agent_started("ada", "r1").unwrap();
    em.agent_completed("ada", "r1", &answer).unwrap();
    em.emit("ada", floodgate::Event::custom("note", &answer))
        .unwrap();
    let events = util::read_events(&mut ws, 3, T);
    assert_eq!(events[1]["type"], "agent_completed");
    assert_eq!(events[1]["ack"], true, "the client can tell it must ack");
    assert!(events[0].get("ack").is_none() && events[2].get("ack").is_none());
    drop(ws); // gone without acking

    // Resuming after 3: agent_completed (seq 2) comes again first, announced.
    let (mut ws, _) = util::connect_to(addr, &format!("/ws?since=3&epoch={epoch}"), &token);
    let frames = util::read_frames(&mut ws, 2, T, |_| true);
    assert_eq!(frames[0]["type"], "redelivery");
    assert_eq!(frames[0]["count"], 1);
    assert_eq!(frames[1]["seq"], 2);
    assert_eq!(frames[1]["data"]["answer"], 42);
    send_ack(&mut ws, 2);
    util::eventually(T, "the ack counted", || {
        gw.metrics().stats.events_acked == 1
    });
    drop(ws);

    // Acked: a new connection gets hello and then live events only.
    let (mut ws, _) = util::connect_to(addr, "/ws", &token);
    em.agent_started("ada", "r2").unwrap();
    let frames = util::read_frames(&mut ws, 1, T, |_| true);
    assert_eq!(
        frames[0]["seq"], 4,
        "no redelivery after the ack: {frames:?}"
    );
    let m = gw.metrics();
    assert_eq!(m.stats.events_redelivered, 1);
    assert_eq!(m.stats.acks_received, 1);
    drop(ws);
    gw.shutdown().unwrap();
}

#[test]
fn an_event_nobody_acks_goes_to_the_dead_letter_file_and_its_receipt_says_so() {
    let dir = util::temp_dir("dead-letter");
    let file = dir.join("dead.jsonl");
    let gw = util::builder()
        .ack_timeout(Duration::from_secs(1))
        .dead_letter_file(&file)
        .build()
        .unwrap();
    let mut em = gw.emitter();
    let data = json!({ "invoice": 7 });
    let receipt = em
        .emit_tracked(
            "bob",
            floodgate::Event::custom("invoice", &data).require_ack(),
        )
        .unwrap();
    let status = receipt.wait_until(T, |s| s.dead_lettered);
    assert!(status.dead_lettered, "{status:?}");
    assert_eq!(status.seq, Some(1));
    assert!(!status.acked);
    // The receipt is marked as the line is queued; the file gets it in the same pass.
    util::eventually(T, "the dead letter in the file", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n'))
    });
    let text = std::fs::read_to_string(&file).unwrap();
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["user"], "bob");
    assert_eq!(line["seq"], 1);
    assert_eq!(line["reason"], "ack_timeout");
    assert_eq!(line["event"]["type"], "invoice");
    assert_eq!(line["event"]["data"]["invoice"], 7);
    util::eventually(T, "the metric", || {
        util::http(gw.local_addr(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .contains("floodgate_events_dead_lettered_total 1\n")
    });
    gw.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_receipt_counts_the_connections_written_and_the_ack() {
    let gw = util::builder().build().unwrap();
    let token = util::token("cy");
    let mut a = util::connect(gw.local_addr(), &token);
    let mut b = util::connect(gw.local_addr(), &token);
    let mut em = gw.emitter();
    let data = json!({ "done": true });
    let receipt = em
        .emit_tracked("cy", floodgate::Event::agent_completed("r", &data))
        .unwrap();
    for ws in [&mut a, &mut b] {
        util::read_events(ws, 1, T);
    }
    let s = receipt.wait_until(T, |s| s.written_to == 2);
    assert_eq!((s.seq, s.written_to, s.acked), (Some(1), 2, false));
    assert!(!s.spooled, "no spool configured");
    send_ack(&mut b, 1);
    assert!(receipt.wait_until(T, |s| s.acked).acked);
    // A receipt that is dropped frees its slot: the table never fills up with old ones.
    drop(receipt);
    for _ in 0..3 {
        em.emit_tracked("cy", floodgate::Event::agent_started("r"))
            .unwrap();
    }
    gw.shutdown().unwrap();
}

#[test]
fn when_every_receipt_slot_is_held_emit_tracked_hands_the_event_back() {
    let gw = util::builder().receipt_capacity(2).build().unwrap();
    let mut em = gw.emitter();
    let _r1 = em
        .emit_tracked("d", floodgate::Event::agent_started("r"))
        .unwrap();
    let r2 = em
        .emit_tracked("d", floodgate::Event::agent_started("r"))
        .unwrap();
    let err = em
        .emit_tracked("d", floodgate::Event::agent_started("r"))
        .unwrap_err();
    assert!(matches!(err, floodgate::EmitError::NoReceipt(_)));
    assert!(err.is_retryable());
    assert_eq!(err.into_inner().run_id(), Some("r"), "the event comes back");
    drop(r2);
    em.emit_tracked("d", floodgate::Event::agent_started("r"))
        .expect("a freed slot is used again");
    gw.shutdown().unwrap();
}

#[test]
fn at_shutdown_unacked_events_are_dead_lettered_without_a_spool_and_kept_with_one() {
    let dir = util::temp_dir("shutdown-unacked");
    let data = json!({ "final": true });
    // No spool: nothing would keep them, so they leave a trace.
    let file = dir.join("dead.jsonl");
    let gw = util::builder().dead_letter_file(&file).build().unwrap();
    gw.emitter().agent_completed("eve", "r", &data).unwrap();
    util::eventually(T, "routed", || gw.metrics().stats.events_received == 1);
    let report = gw.shutdown().unwrap();
    assert_eq!(report.unacked_dead_lettered, 1);
    let line: Value = serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
    assert_eq!(
        (line["reason"].as_str(), line["seq"].as_u64()),
        (Some("shutdown"), Some(1))
    );

    // A spool keeps them for the next start, which sends them again.
    let spool = dir.join("spool");
    let gw = util::builder().spool_dir(&spool).build().unwrap();
    gw.emitter().agent_completed("eve", "r", &data).unwrap();
    util::eventually(T, "routed", || gw.metrics().stats.events_received == 1);
    assert_eq!(gw.shutdown().unwrap().unacked_dead_lettered, 0);
    let gw = util::builder().spool_dir(&spool).build().unwrap();
    let (mut ws, hello) = util::connect_to(gw.local_addr(), "/ws", &util::token("eve"));
    assert_eq!(hello["last_seq"], 1);
    let frames = util::read_frames(&mut ws, 2, T, |_| true);
    assert_eq!(frames[0]["type"], "redelivery");
    assert_eq!(frames[1]["data"]["final"], true);
    gw.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
