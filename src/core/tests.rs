//! The core on a virtual clock: no sockets, no real time.

use super::conn::Lifecycle;
use super::testing::{self, user, writable, write_all as take_out};
use super::*;
use floodgate_wsclient::{client_frame, Kind};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn cfg(f: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    testing::config(f)
}

fn record(user: &str, body: &str) -> Vec<u8> {
    testing::record(user, body.as_bytes())
}

/// Adopts a connection and clears its initial write, as the reactor does on adoption.
fn open(core: &mut Core, kind: ConnKind, now: Instant) -> ConnId {
    let id = testing::connect(core, kind, None, now);
    writable(core, now, false);
    take_out(core, id);
    id
}

fn text(s: &str) -> (Kind, Vec<u8>) {
    (Kind::Text, s.as_bytes().to_vec())
}

#[test]
fn routes_by_user_with_gapless_seq_to_every_connection() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let a1 = open(&mut core, user("a"), t0);
    let a2 = open(&mut core, user("a"), t0);
    let b = open(&mut core, user("b"), t0);
    for i in 0..3 {
        core.route(&record("a", &format!("\"i\":{i}}}")), t0, 0);
    }
    core.route(&record("b", "\"i\":9}"), t0, 0);
    core.route(&record("nobody", "\"i\":0}"), t0, 0);
    let due = writable(&mut core, t0, true);
    assert_eq!(due, vec![a1, a2, b]);
    for id in [a1, a2] {
        let frames = take_out(&mut core, id);
        assert_eq!(
            frames,
            [
                text("{\"seq\":1,\"i\":0}"),
                text("{\"seq\":2,\"i\":1}"),
                text("{\"seq\":3,\"i\":2}")
            ]
        );
    }
    assert_eq!(take_out(&mut core, b), vec![text("{\"seq\":1,\"i\":9}")]);
    assert_eq!(core.stats.events_no_listener, 1);
    assert_eq!(
        core.last_seq(b"nobody"),
        1,
        "seq advances even with nobody listening"
    );
    assert_eq!(core.stats.events_delivered, 7);
}

#[test]
fn batches_wait_for_delay_or_count() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.batch.max_events = 4;
        c.batch.max_delay = 2 * MS;
    }));
    let id = open(&mut core, user("a"), t0);
    core.route(&record("a", "}"), t0, 0);
    assert!(
        writable(&mut core, t0, true).is_empty(),
        "held by the delay"
    );
    assert_eq!(core.next_batch_deadline(), Some(t0 + 2 * MS));
    assert!(writable(&mut core, t0 + MS, true).is_empty());
    assert_eq!(
        writable(&mut core, t0 + 2 * MS, true),
        vec![id],
        "due by age"
    );
    take_out(&mut core, id);
    for _ in 0..4 {
        core.route(&record("a", "}"), t0 + 3 * MS, 0);
    }
    assert_eq!(
        writable(&mut core, t0 + 3 * MS, false),
        vec![id],
        "due by count, even mid-pass"
    );
    assert_eq!(take_out(&mut core, id).len(), 4);
    assert_eq!(core.stats.batch_buckets.iter().sum::<u64>(), 2);
}

#[test]
fn zero_delay_flushes_every_pass() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = open(&mut core, user("a"), t0);
    core.route(&record("a", "}"), t0, 0);
    assert!(writable(&mut core, t0, false).is_empty());
    assert_eq!(writable(&mut core, t0, true), vec![id]);
    assert_eq!(core.next_batch_deadline(), None);
}

#[test]
fn blocked_sockets_are_not_retried_until_writable() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = open(&mut core, user("a"), t0);
    core.route(&record("a", "}"), t0, 0);
    core.on_write_blocked(id);
    assert!(writable(&mut core, t0, true).is_empty());
    core.on_writable(id);
    assert_eq!(writable(&mut core, t0, true), vec![id]);
}

#[test]
fn without_a_breaker_a_slow_consumer_is_closed_with_4008_and_memory_is_capped() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.max_outbound_bytes = 2200;
        c.breaker.cooldown = Duration::ZERO;
    }));
    let id = open(&mut core, user("a"), t0);
    let body = format!("\"x\":\"{}\"}}", "z".repeat(1000));
    for _ in 0..10 {
        core.route(&record("a", &body), t0, 0);
    }
    assert!(
        core.conn(id).out().len() < 2200 + 64,
        "buffer stays under the cap plus a close frame"
    );
    assert_eq!(core.stats.closed_slow_consumer, 1);
    assert_eq!(core.stats.events_dropped, 9 - 1);
    let frames = take_out(&mut core, id);
    assert_eq!(frames.iter().filter(|(k, _)| *k == Kind::Text).count(), 2);
    let (kind, payload) = frames.last().unwrap();
    assert_eq!(*kind, Kind::Close);
    assert_eq!(&payload[..2], &CLOSE_SLOW_CONSUMER.to_be_bytes());
    // No reply from the client: dropped at the close deadline.
    core.tick(t0 + 6 * S);
    assert!(core.conn(id).is_done());
}

#[test]
fn keepalive_pings_then_closes_silent_connections() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.ping_interval = 25 * S;
        c.pong_timeout = 10 * S;
        c.breaker.cooldown = Duration::ZERO; // no breaker: a missed pong closes at once
    }));
    let quiet = open(&mut core, user("q"), t0);
    let talky = open(&mut core, user("t"), t0);
    take_out(&mut core, quiet);
    take_out(&mut core, talky);
    core.tick(t0 + 24 * S);
    assert!(writable(&mut core, t0 + 24 * S, true).is_empty());
    core.tick(t0 + 25 * S);
    assert_eq!(writable(&mut core, t0 + 25 * S, true).len(), 2);
    assert_eq!(take_out(&mut core, quiet)[0].0, Kind::Ping);
    assert_eq!(take_out(&mut core, talky)[0].0, Kind::Ping);
    core.on_input(talky, &client_frame(Kind::Pong, b""), t0 + 26 * S);
    core.tick(t0 + 35 * S);
    assert_eq!(core.stats.closed_pong_timeout, 1);
    let frames = take_out(&mut core, quiet);
    assert_eq!(frames[0].0, Kind::Close);
    assert_eq!(&frames[0].1[..2], &CLOSE_PONG_TIMEOUT.to_be_bytes());
    assert!(
        take_out(&mut core, talky).is_empty(),
        "the answering connection is left alone"
    );
}

#[test]
fn a_missed_pong_opens_the_breaker_and_a_connection_still_silent_after_the_cooldown_is_closed() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.ping_interval = 25 * S;
        c.pong_timeout = 10 * S;
        c.breaker.cooldown = 30 * S;
    }));
    let late = open(&mut core, user("late"), t0);
    let gone = open(&mut core, user("gone"), t0);
    core.tick(t0 + 25 * S);
    for id in [late, gone] {
        assert_eq!(take_out(&mut core, id)[0].0, Kind::Ping);
    }
    core.tick(t0 + 35 * S);
    assert_eq!(core.stats.breaker_trips_missed_pong, 2);
    assert_eq!(core.stats.closed_pong_timeout, 0, "not closed yet");
    // While open, events are not queued on them (history keeps them).
    core.route(&record("late", "\"i\":1}"), t0 + 36 * S, 0);
    assert!(core.conn(late).out().is_empty());
    // One answers late; the other never does.
    core.on_input(late, &client_frame(Kind::Pong, b""), t0 + 40 * S);
    core.tick(t0 + 65 * S);
    assert_eq!(core.stats.closed_pong_timeout, 1);
    let frames = take_out(&mut core, gone);
    assert_eq!(frames[0].0, Kind::Close);
    assert_eq!(&frames[0].1[..2], &CLOSE_PONG_TIMEOUT.to_be_bytes());
    // The late one half-opened and is refilled from history.
    core.pump_replays(t0 + 65 * S, &mut durable::NoCold);
    let frames = take_out(&mut core, late);
    assert_eq!(
        frames.last(),
        Some(&text("{\"seq\":1,\"i\":1}")),
        "{frames:?}"
    );
    assert!(frames.iter().all(|f| f.0 != Kind::Close), "kept open");
    assert_eq!(core.stats.breaker_half_opened, 1);
}

#[test]
fn a_transient_write_error_opens_the_breaker_instead_of_dropping_the_connection() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.breaker.cooldown = 30 * S;
        c.ping_interval = Duration::ZERO;
    }));
    let id = open(&mut core, user("w"), t0);
    for i in 1..=3 {
        core.route(&record("w", &format!("\"i\":{i}}}")), t0, 0);
    }
    assert!(core.on_write_error(id, t0), "kept");
    assert!(core.conn(id).out().is_empty(), "the backlog left memory");
    assert_eq!(core.stats.breaker_trips_write_error, 1);
    assert_eq!(core.stats.events_diverted, 3);
    core.tick(t0 + 30 * S);
    core.pump_replays(t0 + 30 * S, &mut durable::NoCold);
    assert_eq!(
        take_out(&mut core, id).len(),
        3,
        "refilled after the cool-down"
    );
    // Without breakers, the connection is dropped as before.
    let mut core = testing::core(cfg(|c| c.breaker.cooldown = Duration::ZERO));
    let id = open(&mut core, user("w"), t0);
    assert!(!core.on_write_error(id, t0));
}

#[test]
fn client_close_is_answered_and_the_connection_finishes() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = open(&mut core, user("a"), t0);
    core.on_input(id, &client_frame(Kind::Close, &1000u16.to_be_bytes()), t0);
    let frames = take_out(&mut core, id);
    assert_eq!(frames[0].0, Kind::Close, "close echoed");
    assert!(core.conn(id).is_done());
    core.route(&record("a", "}"), t0, 0);
    assert_eq!(core.stats.events_dropped, 1, "no events after close");
    core.remove(id);
    assert_eq!(core.connection_count(), 0);
}

#[test]
fn protocol_errors_close_with_the_right_code() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = core.adopt(ConnKind::Echo, b"", b"", None, t0).unwrap();
    // An unmasked client frame is a protocol error (1002).
    core.on_input(id, &[0x81, 0x01, b'x'], t0);
    let frames = take_out(&mut core, id);
    assert_eq!(frames[0].0, Kind::Close);
    assert_eq!(&frames[0].1[..2], &1002u16.to_be_bytes());
}

#[test]
fn echo_connections_echo_and_answer_pings() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = core
        .adopt(ConnKind::Echo, b"HTTP/1.1 101 ...\r\n\r\n", b"", None, t0)
        .unwrap();
    assert!(
        core.conn(id).out().starts_with(b"HTTP/1.1 101"),
        "the 101 goes first"
    );
    core.on_written(id, core.conn(id).out().len());
    let mut input = client_frame(Kind::Text, b"hello");
    input.extend(client_frame(Kind::Ping, b"p"));
    // Split at every byte boundary to exercise partial frames.
    for chunk in input.chunks(3) {
        core.on_input(id, chunk, t0);
    }
    let frames = take_out(&mut core, id);
    assert_eq!(frames, vec![text("hello"), (Kind::Pong, b"p".to_vec())]);
}

#[test]
fn per_user_connection_limit() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.max_connections_per_user = 2));
    core.adopt(user("a"), b"", b"", None, t0).unwrap();
    core.adopt(user("a"), b"", b"", None, t0).unwrap();
    assert_eq!(
        core.adopt(user("a"), b"", b"", None, t0),
        Err(AdoptError::UserLimit)
    );
    core.adopt(user("b"), b"", b"", None, t0).unwrap();
}

#[test]
fn offline_users_are_bounded() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.max_offline_users = 10));
    core.adopt(user("online"), b"", b"", None, t0).unwrap();
    core.route(&record("online", "}"), t0, 0);
    for i in 0..100 {
        core.route(&record(&format!("off{i}"), "}"), t0, 0);
    }
    assert!(
        core.users.len() <= 11,
        "at most 10 offline users kept ({})",
        core.users.len()
    );
    assert_eq!(
        core.last_seq(b"online"),
        1,
        "online users are never evicted"
    );
}

#[test]
fn shutdown_close_goes_after_queued_events() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = open(&mut core, user("a"), t0);
    core.route(&record("a", "\"k\":1}"), t0, 0);
    core.close_all(CLOSE_GOING_AWAY, "bye", t0);
    let frames = take_out(&mut core, id);
    assert_eq!(frames[0], text("{\"seq\":1,\"k\":1}"));
    assert_eq!(frames[1].0, Kind::Close);
    assert_eq!(&frames[1].1[..2], &1001u16.to_be_bytes());
}

#[test]
fn server_close_completes_when_the_client_answers() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = open(&mut core, user("a"), t0);
    core.close_all(CLOSE_GOING_AWAY, "bye", t0);
    writable(&mut core, t0, false);
    assert_eq!(take_out(&mut core, id)[0].0, Kind::Close);
    assert!(!core.conn(id).is_done(), "waits for the client's close");
    core.on_input(
        id,
        &client_frame(Kind::Close, &1001u16.to_be_bytes()),
        t0 + MS,
    );
    assert_eq!(
        writable(&mut core, t0 + MS, false),
        vec![id],
        "the reactor is told to look"
    );
    assert!(
        core.conn(id).is_done(),
        "then drops the socket at once, not at the deadline"
    );
}

#[test]
fn oversized_messages_close_with_1009() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.ws.max_frame_size = Some(200);
        c.ws.max_message_size = Some(200);
    }));
    let id = open(&mut core, ConnKind::Echo, t0);
    core.on_input(id, &client_frame(Kind::Text, &[b'a'; 300]), t0);
    let frames = take_out(&mut core, id);
    assert_eq!(frames[0].0, Kind::Close);
    assert_eq!(&frames[0].1[..2], &1009u16.to_be_bytes());
}

/// Failing a connection (RFC 6455 7.1.7): after a protocol error the close frame goes out and
/// the socket with it, without waiting for the client's close; what the client sends after the
/// error is not read (tungstenite's reader may still hold the refused frame's header, and
/// reading on from there once tripped its debug assertion: fuzz/corpus/client_frames).
#[test]
fn a_failed_connection_reads_nothing_more_and_goes_once_its_close_is_flushed() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.ws.max_frame_size = Some(200);
        c.ws.max_message_size = Some(200);
    }));
    let id = open(&mut core, user("a"), t0);
    // Larger than the 1 KiB read buffer: tungstenite's buffer is full when it refuses the frame.
    core.on_input(id, &client_frame(Kind::Text, &[b'a'; 2000]), t0);
    // More from the client: its close, and another oversized frame. Neither is read.
    let mut more = client_frame(Kind::Close, &1000u16.to_be_bytes());
    more.extend(client_frame(Kind::Text, &[b'b'; 5000]));
    core.on_input(id, &more, t0);
    assert_eq!(core.stats.client_messages, 0);
    assert!(
        !core.conn(id).is_done(),
        "the close frame is still to be written"
    );
    let frames = take_out(&mut core, id);
    assert_eq!(frames.len(), 1, "only the close frame: {frames:?}");
    assert_eq!(&frames[0].1[..2], &1009u16.to_be_bytes());
    assert!(core.conn(id).is_done(), "flushed: the socket can go now");

    // A client that does not read its close frame is dropped at the close deadline.
    let id = open(&mut core, user("b"), t0);
    core.on_input(id, &client_frame(Kind::Text, &[b'a'; 300]), t0);
    assert!(!core.conn(id).is_done());
    core.tick(t0 + Duration::from_secs(4));
    assert!(
        !core.conn(id).is_done(),
        "before the deadline it waits for the client to read"
    );
    core.tick(t0 + Duration::from_secs(6));
    assert!(
        core.conn(id).is_done(),
        "past close_timeout its unsent bytes are dropped"
    );
}

#[test]
fn a_connection_due_twice_in_a_pass_is_written_once() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.batch.max_events = 2));
    let id = open(&mut core, user("a"), t0);
    // Two events fill the batch (urgent) and the pass end makes it due as well.
    core.route(&record("a", "}"), t0, 0);
    core.route(&record("a", "}"), t0, 0);
    core.on_input(id, &client_frame(Kind::Ping, b""), t0);
    assert_eq!(writable(&mut core, t0, true), vec![id]);
}

#[test]
fn thinking_deltas_coalesce_for_a_connection_that_is_behind_and_lifecycle_events_stay_apart() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.max_outbound_bytes = 64 << 10; // behind past 32 KiB unsent
        c.breaker.trip_after = 60 * S; // and not tripped during this test
        c.ping_interval = Duration::ZERO;
    }));
    let id = open(&mut core, user("a"), t0);
    let body = |ev: crate::event::Event<'_, serde_json::Value>| {
        let mut out = Vec::new();
        ev.encode_body(1, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let mut deltas = String::new();
    let mut lifecycle = Vec::new();
    for i in 1..=1200u64 {
        let rec = if i % 400 == 0 {
            lifecycle.push(i);
            body(crate::event::Event::tool_executing(
                "r1",
                &serde_json::json!({"tool": i}),
            ))
        } else {
            let delta = format!("d{i},");
            deltas.push_str(&delta);
            body(crate::event::Event::agent_thinking(
                "r1",
                &serde_json::json!({ "delta": delta }),
            ))
        };
        core.route(&record("a", &rec), t0, 0);
    }
    assert!(core.stats.events_coalesced > 0);
    let unsent = core.conn(id).out().len();
    assert!(unsent < 64 << 10, "stayed under the cap: {unsent}");
    // What the client reads covers every seq once, in order; the deltas join up exactly.
    let mut next = 1;
    let mut joined = String::new();
    let mut frames = 0;
    for (kind, payload) in take_out(&mut core, id) {
        assert_eq!(kind, Kind::Text);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let k = v["coalesced"].as_u64().unwrap_or(1);
        assert_eq!(seq + 1 - k, next, "frame {v} starts where the last ended");
        next = seq + 1;
        frames += 1;
        match v["type"].as_str().unwrap() {
            "agent_thinking" => joined.push_str(v["data"]["delta"].as_str().unwrap()),
            "tool_executing" => assert!(lifecycle.contains(&seq) && k == 1, "{v}"),
            other => panic!("{other}"),
        }
    }
    assert_eq!(next, 1201);
    assert_eq!(joined, deltas, "no delta lost, none twice, in order");
    assert!(frames < 1200, "fewer frames than events ({frames})");
    assert_eq!(frames + core.stats.events_coalesced, 1200);
}

#[test]
fn a_breaker_that_opens_on_coalesced_frames_replays_every_event_they_stood_for() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.max_outbound_bytes = 64 << 10;
        c.breaker.trip_after = 60 * S;
        c.ping_interval = Duration::ZERO;
    }));
    let id = open(&mut core, user("a"), t0);
    for i in 1..=800u64 {
        let mut b = Vec::new();
        let data = serde_json::json!({ "delta": format!("{i};") });
        crate::event::Event::agent_thinking("r", &data)
            .encode_body(1, &mut b)
            .unwrap();
        core.route(&record("a", std::str::from_utf8(&b).unwrap()), t0, 0);
    }
    assert!(core.stats.events_coalesced > 0);
    // The socket takes every frame before the first coalesced one, then fails: the rest,
    // starting with a frame that stands for several events, leaves memory.
    let out = core.conn(id).out().to_vec();
    let (mut at, mut seqs) = (0, Vec::new());
    loop {
        let len = frame::frame_len(&out[at..]).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(frame::payload(&out[at..]).unwrap()).unwrap();
        if v.get("coalesced").is_some() {
            break;
        }
        seqs.push(v["seq"].as_u64().unwrap());
        at += len;
    }
    core.on_written(id, at);
    assert!(core.on_write_error(id, t0));
    core.tick(t0 + 30 * S);
    core.pump_replays(t0 + 30 * S, &mut durable::NoCold);
    while !core.conn(id).out().is_empty() {
        for (_, p) in take_out(&mut core, id) {
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert!(
                v.get("coalesced").is_none(),
                "replays send events one by one"
            );
            seqs.push(v["seq"].as_u64().unwrap());
        }
        core.pump_replays(t0 + 30 * S, &mut durable::NoCold);
    }
    assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
}

#[test]
fn replies_to_a_client_that_never_reads_count_against_max_outbound_bytes() {
    let t0 = Instant::now();
    let max = 256 << 10;
    let mut core = testing::core(cfg(|c| {
        c.max_outbound_bytes = max;
    }));
    let echo = open(&mut core, ConnKind::Echo, t0);
    let ws = open(&mut core, user("a"), t0);
    let ping = client_frame(Kind::Ping, &[7; 100]);
    let msg = client_frame(Kind::Text, &[b'x'; 1000]);
    // 10 MB of pings and echoed messages, none of the replies read.
    for _ in 0..5_000 {
        for (id, frame) in [(ws, &ping), (echo, &msg)] {
            let chunk = frame.repeat(2);
            core.on_input(id, &chunk, t0);
        }
    }
    for id in [echo, ws] {
        let c = core.conn(id);
        let unsent = c.out().len() - c.written;
        assert!(
            unsent <= max + CLOSING_SLACK + 4096,
            "{unsent} bytes queued for a client that reads nothing"
        );
        assert_ne!(c.state, Lifecycle::open(), "closed as a slow consumer");
    }
    assert_eq!(core.stats.closed_slow_consumer, 2);
}
