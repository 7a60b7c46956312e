//! Acked delivery, redelivery, dead letters and receipts, on a virtual clock.

use super::durable::{FLAG_EXPIRED, KIND_ACK};
use super::testing::{self, ack, user};
use super::*;
use crate::receipt::ReceiptStatus;

const S: Duration = Duration::from_secs(1);

fn cfg(f: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    testing::config(|c| {
        c.ping_interval = Duration::ZERO;
        c.epoch_seed = 3;
        f(c)
    })
}

/// A ring record for `user`'s event `i`, needing an ack if `ack`, with a receipt `ticket`.
fn rec(user: &str, i: u64, ack: bool, ticket: Option<Ticket>) -> Vec<u8> {
    testing::record_with(user, format!("\"i\":{i}}}").as_bytes(), ack, ticket)
}

/// What a client sees, decoded: protocol frames by type, events by seq.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Hello(u64),
    Redelivery(u64),
    Event(u64),
    Gap(u64, u64),
}

/// Writes everything `id` has queued (as a socket taking it all would) and decodes it.
fn take(core: &mut Core, id: ConnId, now: Instant, cold: &mut testing::MemCold) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        cold.absorb(core);
        core.pump_replays(now, cold);
        testing::writable(core, now, true);
        let frames = testing::write_all(core, id);
        if frames.is_empty() {
            return seen;
        }
        for v in testing::json(&frames) {
            seen.push(match (v["seq"].as_u64(), v["type"].as_str()) {
                (Some(s), _) => Seen::Event(s),
                (None, Some("hello")) => Seen::Hello(v["last_seq"].as_u64().unwrap()),
                (None, Some("redelivery")) => Seen::Redelivery(v["count"].as_u64().unwrap()),
                (None, Some("gap")) => {
                    Seen::Gap(v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap())
                }
                _ => panic!("unexpected frame {v}"),
            });
        }
    }
}

fn connect(core: &mut Core, u: &str, cursor: Option<Cursor>, now: Instant) -> ConnId {
    testing::connect(core, user(u), cursor, now)
}

#[test]
fn an_ack_settles_events_and_a_new_connection_gets_the_unacked_ones_again() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let mut core = testing::core(cfg(|_| {}));
    let a = connect(&mut core, "a", None, t0);
    for i in 1..=5 {
        core.route(&rec("a", i, i % 2 == 0, None), t0, 0);
    }
    assert_eq!(
        take(&mut core, a, t0, &mut cold),
        [0, 1, 2, 3, 4, 5].map(|s| if s == 0 {
            Seen::Hello(0)
        } else {
            Seen::Event(s)
        })
    );
    // Events 2 and 4 need an ack; the client acks 3 (cumulative: settles 2).
    ack(&mut core, a, 3, t0);
    assert_eq!(core.stats.events_acked, 1);
    // Another tab of the same user: after hello, event 4 again, announced.
    let b = connect(&mut core, "a", None, t0);
    assert_eq!(
        take(&mut core, b, t0, &mut cold),
        [Seen::Hello(5), Seen::Redelivery(1), Seen::Event(4)]
    );
    // An ack past the stream's end is taken as an ack of everything so far.
    ack(&mut core, b, 99, t0);
    let c = connect(&mut core, "a", None, t0);
    assert_eq!(take(&mut core, c, t0, &mut cold), [Seen::Hello(5)]);
    assert_eq!(core.stats.events_redelivered, 1);
    assert_eq!(core.stats.acks_received, 2);
}

#[test]
fn a_resume_redelivers_unacked_events_its_cursor_already_passed_then_replays() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let mut core = testing::core(cfg(|_| {}));
    let a = connect(&mut core, "a", None, t0);
    for i in 1..=6 {
        core.route(&rec("a", i, i == 3, None), t0, 0);
    }
    take(&mut core, a, t0, &mut cold);
    let epoch = core.users[&b"a"[..]].epoch;
    core.remove(a);
    // The client processed up to 4 but never acked 3.
    let cursor = Cursor {
        since: 4,
        epoch: Some(epoch),
    };
    let r = connect(&mut core, "a", Some(cursor), t0);
    assert_eq!(
        take(&mut core, r, t0, &mut cold),
        [
            Seen::Hello(6),
            Seen::Redelivery(1),
            Seen::Event(3),
            Seen::Event(5),
            Seen::Event(6)
        ]
    );
    // The redelivered frame is not counted as a delivered (or dropped) event: only 5 and 6.
    assert_eq!(core.stats.events_replayed, 2);
}

#[test]
fn unacked_events_past_the_timeout_are_dead_lettered_and_not_sent_again() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let mut core = testing::core(cfg(|c| {
        c.ack_timeout = 30 * S;
        c.spool = true;
    }));
    core.route(&rec("a", 1, true, None), t0, 0);
    core.route(&rec("a", 2, true, None), t0 + 20 * S, 0);
    cold.absorb(&mut core);
    core.tick(t0 + 31 * S);
    let lines = String::from_utf8(std::mem::take(&mut core.dead_out)).unwrap();
    let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line["user"], "a");
    assert_eq!(line["seq"], 1);
    assert_eq!(line["reason"], "ack_timeout");
    assert_eq!(line["event"]["i"], 1, "the event as it was sent: {line}");
    assert_eq!(core.stats.events_dead_lettered, 1);
    // The spool learns it is settled, so a restart does not bring it back.
    let (settle, _) = durable::decode(&core.spool_out).unwrap();
    assert_eq!(
        (settle.kind, settle.flags, settle.seq),
        (KIND_ACK, FLAG_EXPIRED, 1)
    );
    // Only event 2 is still waiting for its ack.
    let a = connect(&mut core, "a", None, t0 + 31 * S);
    assert_eq!(
        take(&mut core, a, t0 + 31 * S, &mut cold),
        [Seen::Hello(2), Seen::Redelivery(1), Seen::Event(2)]
    );
}

#[test]
fn past_ack_max_pending_the_oldest_unacked_event_is_dead_lettered() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.ack_max_pending = 2));
    for i in 1..=3 {
        core.route(&rec("a", i, true, None), t0, 0);
    }
    let lines = String::from_utf8(std::mem::take(&mut core.dead_out)).unwrap();
    assert_eq!(lines.lines().count(), 1);
    assert!(
        lines.contains("\"seq\":1,\"reason\":\"unacked_overflow\""),
        "{lines}"
    );
    assert_eq!(core.users[&b"a"[..]].unacked.len(), 2);
}

#[test]
fn a_dropped_offline_stream_dead_letters_its_unacked_events() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.max_offline_users = 1;
        c.spool = true;
    }));
    core.route(&rec("a", 1, true, None), t0, 0);
    // A second offline user: the first's stream is dropped, its unacked event with it.
    core.route(&rec("b", 1, false, None), t0, 0);
    let lines = String::from_utf8(std::mem::take(&mut core.dead_out)).unwrap();
    assert!(lines.contains("\"reason\":\"stream_dropped\""), "{lines}");
    assert_eq!(core.stats.events_dead_lettered, 1);
    // The spool records it as settled, so a restart does not send it again.
    let mut at = 0;
    let mut settled = false;
    while at < core.spool_out.len() {
        let (r, len) = durable::decode(&core.spool_out[at..]).unwrap();
        settled |= (r.kind, r.flags, r.user, r.seq) == (KIND_ACK, FLAG_EXPIRED, &b"a"[..], 1);
        at += len;
    }
    assert!(settled, "an expired-settle record for a's event 1");
}

#[test]
fn a_receipt_follows_its_event_through_spool_write_and_ack() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let mut core = testing::core(cfg(|c| c.spool = true));
    let board = core.boards.receipts.clone();
    let a1 = connect(&mut core, "a", None, t0);
    let a2 = connect(&mut core, "a", None, t0);
    take(&mut core, a1, t0, &mut cold);
    take(&mut core, a2, t0, &mut cold);
    let (receipt, ticket) = board.take().unwrap();
    core.route(&rec("a", 1, false, None), t0, 0);
    core.route(&rec("a", 2, true, Some(ticket)), t0, 0);
    let s = receipt.status();
    assert_eq!((s.seq, s.spooled, s.written_to), (Some(2), false, 0));
    cold.absorb(&mut core);
    assert!(receipt.status().spooled, "spooled once the spool took it");
    // Connection 1 takes a first frame only (a partial write), then the rest.
    let out = core.conn(a1).out().len();
    let first = frame::frame_len(core.conn(a1).out()).unwrap();
    core.on_written(a1, first);
    assert_eq!(receipt.status().written_to, 0, "event 1 only so far");
    core.on_written(a1, out - first);
    assert_eq!(receipt.status().written_to, 1);
    take(&mut core, a2, t0, &mut cold);
    assert_eq!(receipt.status().written_to, 2);
    ack(&mut core, a2, 2, t0);
    let s = receipt.status();
    assert!(s.acked && !s.dead_lettered, "{s:?}");
    drop(receipt);
    assert_eq!(
        board.take().unwrap().0.status(),
        ReceiptStatus::default(),
        "a freed slot starts clean"
    );
}

#[test]
fn a_restored_stream_keeps_its_epoch_seq_and_unacked_events() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let mut rec_streams = crate::core::durable::Recovery::default();
    let frame = {
        let (p, n) = frame::event_prefix(7, 6);
        let mut f = p[..n].to_vec();
        f.extend_from_slice(b"\"i\":7}");
        f
    };
    let mut s = crate::core::durable::RecoveredStream {
        epoch: 0xabc,
        last_seq: 9,
        acked: 6,
        ..Default::default()
    };
    s.unacked.push_back((7, frame));
    rec_streams.streams.insert(b"a"[..].into(), s);
    rec_streams.head = 4096;
    let mut core = testing::core(cfg(|c| c.spool = true));
    core.restore(rec_streams, t0);
    let a = connect(&mut core, "a", None, t0);
    assert_eq!(
        take(&mut core, a, t0, &mut cold),
        [Seen::Hello(9), Seen::Redelivery(1), Seen::Event(7)]
    );
    core.route(&rec("a", 10, false, None), t0, 0);
    assert_eq!(take(&mut core, a, t0, &mut cold), [Seen::Event(10)]);
    assert_eq!(core.users[&b"a"[..]].epoch, 0xabc);
    assert_eq!(
        core.spool_pos,
        4096 + cold.log.len() as u64,
        "positions go on"
    );
}

#[test]
fn unacked_events_of_a_stream_that_starts_a_new_epoch_are_sent_again_in_it() {
    let t0 = Instant::now();
    let mut cold = testing::MemCold::default();
    let frame = |seq: u64| {
        let body = format!("\"type\":\"agent_completed\",\"ts\":1,\"ack\":true,\"i\":{seq}}}");
        let (p, n) = frame::event_prefix(seq, body.len());
        let mut f = p[..n].to_vec();
        f.extend_from_slice(body.as_bytes());
        f
    };
    // The spool could not vouch for the old stream (a reboot, a repair): it hands over the
    // unacked events instead of the stream.
    let rec = crate::core::durable::Recovery {
        discarded_streams: 1,
        carried: vec![(b"a"[..].into(), vec![frame(7), frame(9)])],
        head: 100,
        ..Default::default()
    };
    let mut core = testing::core(cfg(|c| c.spool = true));
    core.restore(rec, t0);
    assert_eq!(core.stats.events_carried_to_new_epoch, 2);
    assert!(!core.spool_out.is_empty(), "spooled again in the new epoch");
    let a = connect(&mut core, "a", None, t0);
    let seen = take(&mut core, a, t0, &mut cold);
    assert_eq!(
        seen,
        [
            Seen::Hello(2),
            Seen::Redelivery(2),
            Seen::Event(1),
            Seen::Event(2)
        ],
        "both unacked events, renumbered in the new stream, still waiting for an ack"
    );
    ack(&mut core, a, 2, t0);
    let b = connect(&mut core, "a", None, t0);
    assert_eq!(take(&mut core, b, t0, &mut cold), [Seen::Hello(2)]);
}
