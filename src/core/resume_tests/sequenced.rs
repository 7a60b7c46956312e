//! The core on the Redis engine, on a virtual clock: events come with the `seq` Redis gave,
//! repeats are dropped, holes and new epochs are said with `gap`, and a user's first connection
//! waits for Redis to give its stream's state.

use super::*;
use crate::record::{encode_sequenced, SyncRequest, REC_LOST, REC_SYNC};

const E: u64 = 0xe0e0;

fn redis_core() -> Core {
    testing::core(cfg(|c| c.redis = true))
}

/// The event `seq` of `user`'s stream `epoch`, as the subscriber writes it.
fn sequenced(user: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut r = Vec::new();
    let body = format!("\"i\":{seq}}}");
    encode_sequenced(&mut r, 0, 0, user.as_bytes(), epoch, seq, body.as_bytes());
    r
}

/// Redis's answer to a sync request: `user`'s stream is at `epoch`, `seq`.
fn sync(user: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut r = Vec::new();
    encode_sequenced(&mut r, 0, REC_SYNC, user.as_bytes(), epoch, seq, b"");
    r
}

fn lost() -> Vec<u8> {
    let mut r = Vec::new();
    encode_sequenced(&mut r, 0, REC_LOST, b"", 0, 0, b"");
    r
}

fn gap(reason: &str, from: u64, to: u64) -> Seen {
    Seen::Gap {
        reason: reason.into(),
        from,
        to,
    }
}

#[test]
fn events_keep_the_seq_redis_gave_and_a_repeat_is_dropped() {
    let t0 = Instant::now();
    let mut core = redis_core();
    for seq in [1, 2, 3, 2, 3, 4] {
        core.route(&sequenced("a", E, seq), t0, 0);
    }
    assert_eq!(core.stats.events_duplicate, 2);
    assert_eq!(core.stats.events_received, 4);
    // The node saw the stream's events since its first one: it can say hello at once, and
    // replay from its history.
    let id = resume(&mut core, "a", 1, Some(E), t0);
    assert!(core.sync_requests.is_empty(), "nothing to ask Redis");
    let seen = drain(&mut core, id, t0);
    assert_eq!(hello(&seen), (E, 4));
    assert_eq!(events(&seen), [2, 3, 4]);
    core.route(&sequenced("a", E, 5), t0, 0);
    assert_eq!(events(&drain(&mut core, id, t0)), [5]);
}

#[test]
fn a_first_connection_waits_for_redis_then_hears_its_stream() {
    let t0 = Instant::now();
    let mut core = redis_core();
    let live = testing::connect(&mut core, user("b"), None, t0);
    let resuming = resume(&mut core, "b", 5, Some(E), t0);
    assert_eq!(
        core.sync_requests,
        vec![SyncRequest::newest(b"b", 0)],
        "asked once"
    );
    // Not even the 101 goes out: a client that saw its 101 must get every event emitted
    // after that, and only Redis's answer says where the stream stood.
    assert!(core.waits_for_stream(live) && core.waits_for_stream(resuming));
    assert!(testing::writable(&mut core, t0, true).is_empty());
    assert!(
        drain(&mut core, live, t0).is_empty(),
        "no hello before Redis answers"
    );
    // Events that were in the log before the subscriber took the request come first...
    core.route(&sequenced("b", E, 6), t0, 0);
    core.route(&sequenced("b", E, 7), t0, 0);
    assert!(drain(&mut core, resuming, t0).is_empty());
    // ...then the answer: the stream as of that point of the log.
    core.route(&sync("b", E, 7), t0, 0);
    assert!(!core.waits_for_stream(live));
    assert_eq!(
        testing::writable(&mut core, t0, true).len(),
        2,
        "both go out now"
    );
    let seen = drain(&mut core, live, t0);
    assert_eq!(
        seen,
        [Seen::Hello {
            epoch: E,
            last_seq: 7
        }]
    );
    let seen = drain(&mut core, resuming, t0);
    assert_eq!(hello(&seen), (E, 7));
    assert_eq!(events(&seen), [6, 7], "replayed from what the node kept");
    core.route(&sequenced("b", E, 8), t0, 0);
    assert_eq!(events(&drain(&mut core, live, t0)), [8]);
    assert_eq!(events(&drain(&mut core, resuming, t0)), [8]);
    assert_eq!(core.stats.sync_requests, 1);
}

#[test]
fn a_resume_from_before_what_the_node_saw_is_a_gap() {
    let t0 = Instant::now();
    let mut core = redis_core();
    let id = resume(&mut core, "c", 2, Some(E), t0);
    core.route(&sync("c", E, 9), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(hello(&seen), (E, 9));
    assert_eq!(seen[1], gap("history_evicted", 3, 9));
}

#[test]
fn a_hole_the_node_missed_is_a_gap_and_a_new_epoch_is_said() {
    let t0 = Instant::now();
    let mut core = redis_core();
    core.route(&sequenced("d", E, 1), t0, 0);
    let id = connected(&mut core, "d", t0);
    core.route(&sequenced("d", E, 2), t0, 0);
    core.route(&sequenced("d", E, 5), t0, 0);
    // Redis lost the stream: it starts again with another epoch.
    core.route(&sequenced("d", E + 1, 1), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(
        seen,
        [
            Seen::Event(2),
            gap("missed", 3, 4),
            Seen::Event(5),
            gap("epoch_changed", 1, 0),
            Seen::Event(1),
        ]
    );
    assert_eq!(core.stats.stream_holes, 1);
    // A client that connects now hears the new run.
    let id = testing::connect(&mut core, user("d"), None, t0);
    assert_eq!(hello(&drain(&mut core, id, t0)), (E + 1, 1));
}

#[test]
fn after_a_lost_stretch_of_log_streams_with_connections_are_asked_again() {
    let t0 = Instant::now();
    let mut core = redis_core();
    core.route(&sequenced("e", E, 1), t0, 0);
    core.route(&sequenced("f", E, 1), t0, 0);
    let id = connected(&mut core, "e", t0);
    core.route(&lost(), t0, 0);
    assert_eq!(
        core.sync_requests,
        vec![SyncRequest::newest(b"e", 0)],
        "f has no connection"
    );
    // Events 2 and 3 went by in the stretch the node missed; Redis says so.
    core.route(&sync("e", E, 3), t0, 0);
    core.route(&sequenced("e", E, 4), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(seen, [gap("missed", 2, 3), Seen::Event(4)]);
    // f is asked for on its next connection.
    let f = testing::connect(&mut core, user("f"), None, t0);
    assert!(drain(&mut core, f, t0).is_empty());
    assert_eq!(core.sync_requests.len(), 2);
}

#[test]
fn a_connection_redis_never_answers_for_is_closed_try_again_later() {
    let t0 = Instant::now();
    let mut core = redis_core();
    let id = testing::connect(&mut core, user("g"), None, t0);
    core.tick(t0 + SYNC_TIMEOUT - Duration::from_millis(1));
    assert!(testing::write_all(&mut core, id).is_empty());
    core.tick(t0 + SYNC_TIMEOUT);
    let frames = testing::write_all(&mut core, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, Kind::Close);
    assert_eq!(
        u16::from_be_bytes([frames[0].1[0], frames[0].1[1]]),
        CLOSE_TRY_AGAIN
    );
    assert_eq!(core.stats.closed_sync_timeout, 1);
}

/// `user`'s event `seq` that needs an ack; `own`: this node emitted it.
fn needing_ack(user: &str, seq: u64, own: bool) -> Vec<u8> {
    let mut r = Vec::new();
    let flags = crate::record::REC_ACK | if own { crate::record::REC_OWN } else { 0 };
    let body = format!("\"i\":{seq}}}");
    encode_sequenced(&mut r, 0, flags, user.as_bytes(), E, seq, body.as_bytes());
    r
}

#[test]
fn an_ack_made_on_another_node_settles_the_event_here_and_ours_go_out() {
    let t0 = Instant::now();
    let mut core = redis_core();
    for seq in 1..=3 {
        core.route(&needing_ack("h", seq, false), t0, 0);
    }
    // A client on another node acked through 2: it comes through the log.
    let mut ack = Vec::new();
    encode_sequenced(&mut ack, 0, crate::record::REC_ACKED, b"h", E, 2, b"");
    core.route(&ack, t0, 0);
    assert_eq!(core.stats.acks_from_other_nodes, 1);
    let id = testing::connect(&mut core, user("h"), None, t0);
    let frames = testing::json(&testing::write_all(&mut core, id));
    assert_eq!(frames[1]["type"], "redelivery");
    assert_eq!(frames[1]["count"], 1, "only 3 is still unacked");
    assert!(core.acks_out.is_empty());
    // This node's client acks 3: it goes out to every node.
    testing::ack(&mut core, id, 3, t0);
    assert_eq!(core.acks_out, vec![(Box::from(&b"h"[..]), E, 3)]);
}

#[test]
fn only_the_node_that_emitted_an_unacked_event_dead_letters_it() {
    let t0 = Instant::now();
    let mut core = redis_core();
    core.route(&needing_ack("i", 1, false), t0, 0);
    core.route(&needing_ack("i", 2, true), t0, 0);
    core.tick(t0 + core.cfg.ack_timeout + Duration::from_secs(2));
    let lines: Vec<&[u8]> = core
        .dead_out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{:?}",
        String::from_utf8_lossy(&core.dead_out)
    );
    let line: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
    assert_eq!(
        (line["seq"].as_u64(), line["reason"].as_str()),
        (Some(2), Some("ack_timeout"))
    );
    assert_eq!(core.stats.unacked_left_to_origin, 1);
}

#[test]
fn a_resume_on_a_node_that_never_saw_the_events_gets_them_from_redis() {
    let t0 = Instant::now();
    let mut core = redis_core();
    let id = resume(&mut core, "j", 4, Some(E), t0);
    assert_eq!(
        core.sync_requests,
        vec![SyncRequest::newest(b"j", 5)],
        "from 5 on"
    );
    // A live event the reader pushed before it took the request...
    core.route(&sequenced("j", E, 11), t0, 0);
    // ...then what Redis still has from 5 to the sync's point, then the answer.
    for seq in 5..=11 {
        let mut r = Vec::new();
        let body = format!("\"i\":{seq}}}");
        encode_sequenced(
            &mut r,
            0,
            crate::record::REC_HIST,
            b"j",
            E,
            seq,
            body.as_bytes(),
        );
        core.route(&r, t0, 0);
    }
    core.route(&sync("j", E, 11), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(hello(&seen), (E, 11));
    assert_eq!(seen.len(), 8, "no gap: {seen:?}");
    assert_eq!(events(&seen), (5..=11).collect::<Vec<_>>());
    assert_eq!(core.stats.events_from_redis_history, 7);
    // Once the stream is live, more of Redis's history is refused: it would rewrite it.
    let mut late = Vec::new();
    encode_sequenced(
        &mut late,
        0,
        crate::record::REC_HIST,
        b"j",
        E,
        3,
        b"\"i\":3}",
    );
    core.route(&late, t0, 0);
    core.route(&sequenced("j", E, 12), t0, 0);
    assert_eq!(events(&drain(&mut core, id, t0)), [12]);
}

/// `user`'s event `seq` as Redis's history read gives it (`REC_HIST`).
fn from_redis(user: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let mut r = Vec::new();
    let body = format!("\"i\":{seq}}}");
    encode_sequenced(
        &mut r,
        0,
        crate::record::REC_HIST,
        user.as_bytes(),
        epoch,
        seq,
        body.as_bytes(),
    );
    r
}

#[test]
fn a_resume_before_the_nodes_history_gets_the_missing_events_from_redis_alone() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.redis = true;
        c.history.max_events = 4;
    }));
    // The node follows k's stream from its start and has a live connection; history keeps
    // 17 to 20. Event 2 needs an ack nobody gave.
    core.route(&sequenced("k", E, 1), t0, 0);
    core.route(&needing_ack("k", 2, false), t0, 0);
    for seq in 3..=20 {
        core.route(&sequenced("k", E, seq), t0, 0);
    }
    let live = resume(&mut core, "k", 20, Some(E), t0);
    assert_eq!(hello(&drain(&mut core, live, t0)), (E, 20));
    // A second connection resumes at 3: 4 to 16 are no longer here.
    let late = resume(&mut core, "k", 3, Some(E), t0);
    assert_eq!(
        core.sync_requests,
        vec![SyncRequest {
            user: b"k"[..].into(),
            from: 4,
            to: Some(16)
        }]
    );
    assert!(
        core.waits_for_stream(late),
        "nothing, not even its 101, yet"
    );
    // Live events go on meanwhile, to the live connection only.
    core.route(&sequenced("k", E, 21), t0, 0);
    // What Redis has (one more than asked, as a read may give), then the answer.
    for seq in 4..=17 {
        core.route(&from_redis("k", E, seq), t0, 0);
    }
    core.route(&sync("k", E, 21), t0, 0);
    assert_eq!(events(&drain(&mut core, live, t0)), [21], "none of Redis's");
    let seen = drain(&mut core, late, t0);
    assert_eq!(hello(&seen), (E, 21));
    assert_eq!(seen[1], Seen::Redelivery(1), "{seen:?}");
    assert_eq!(
        events(&seen),
        [2].into_iter().chain(4..=21).collect::<Vec<_>>(),
        "the unacked one, then every event from the cursor, no gap: {seen:?}"
    );
    assert!(!seen.iter().any(|s| matches!(s, Seen::Gap { .. })));
    assert_eq!(core.stats.resumed_from_redis, 1);
    assert_eq!(core.stats.events_from_redis_history, 14);
    // Then live, like any connection.
    core.route(&sequenced("k", E, 22), t0, 0);
    assert_eq!(events(&drain(&mut core, late, t0)), [22]);
}

#[test]
fn what_redis_no_longer_has_is_a_gap_and_two_resumes_wait_for_both_answers() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.redis = true;
        c.history.max_events = 4;
    }));
    for seq in 1..=30 {
        core.route(&sequenced("m", E, seq), t0, 0);
    }
    let live = resume(&mut core, "m", 30, Some(E), t0);
    drain(&mut core, live, t0);
    // Two resumes before history (27 to 30): from 6 and from 11.
    let a = resume(&mut core, "m", 5, Some(E), t0);
    let b = resume(&mut core, "m", 10, Some(E), t0);
    assert_eq!(core.sync_requests.len(), 2);
    // Redis's log was trimmed: it has 9 on. The first answer comes...
    for seq in 9..=26 {
        core.route(&from_redis("m", E, seq), t0, 0);
    }
    core.route(&sync("m", E, 30), t0, 0);
    assert!(
        core.waits_for_stream(a) && core.waits_for_stream(b),
        "both wait for the second answer"
    );
    for seq in 11..=26 {
        core.route(&from_redis("m", E, seq), t0, 0);
    }
    core.route(&sync("m", E, 30), t0, 0);
    let seen = drain(&mut core, a, t0);
    assert_eq!(
        seen[1..],
        [gap("history_evicted", 6, 26)]
            .into_iter()
            .chain((27..=30).map(Seen::Event))
            .collect::<Vec<_>>(),
        "6 is gone from Redis: the prelude never starts; history from 27"
    );
    let seen = drain(&mut core, b, t0);
    assert_eq!(events(&seen), (11..=30).collect::<Vec<_>>(), "{seen:?}");
    assert!(!seen.iter().any(|s| matches!(s, Seen::Gap { .. })));
    // A closed waiting connection leaves nothing behind.
    let c = resume(&mut core, "m", 1, Some(E), t0);
    core.route(&from_redis("m", E, 2), t0, 0);
    core.remove(c);
    assert_eq!(core.backfill_bytes, 0);
    assert!(core.backfills.is_empty());
}

#[test]
fn unacked_events_a_node_never_received_are_redelivered_on_it() {
    let t0 = Instant::now();
    let mut core = redis_core();
    // A user's first connection on this node, without a cursor: the reader brings the events
    // from the first unacked one (6: those before were acked) to the stream's point, two of
    // them still needing an ack, then the answer.
    let id = testing::connect(&mut core, user("n"), None, t0);
    assert_eq!(core.sync_requests, vec![SyncRequest::newest(b"n", 0)]);
    for seq in 6..=9 {
        let mut r = Vec::new();
        let flags = crate::record::REC_HIST
            | if seq == 6 || seq == 9 {
                crate::record::REC_ACK
            } else {
                0
            };
        let body = format!("\"i\":{seq}}}");
        encode_sequenced(&mut r, 0, flags, b"n", E, seq, body.as_bytes());
        core.route(&r, t0, 0);
    }
    core.route(&sync("n", E, 9), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(hello(&seen), (E, 9));
    assert_eq!(
        seen[1..],
        [Seen::Redelivery(2), Seen::Event(6), Seen::Event(9)]
    );
    // This node keeps them until a client acks them (here or anywhere), but it did not emit
    // them, so it leaves their dead letters to the node that did.
    core.tick(t0 + core.cfg.ack_timeout + Duration::from_secs(2));
    assert!(core.dead_out.is_empty());
    assert_eq!(core.stats.unacked_left_to_origin, 2);
}
