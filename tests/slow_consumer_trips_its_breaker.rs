//! A client that stops reading trips its connection's circuit breaker. Its backlog leaves the
//! gateway's memory (history keeps it), other users keep receiving, and the breaker's
//! transitions show on /metrics. When the client reads again, the breaker half-opens after the
//! cool-down, and the client gets every one of its events, in order.
mod util;

use std::time::Duration;

use serde_json::Value;

fn metric(addr: std::net::SocketAddr, line_start: &str) -> Option<u64> {
    let text = util::http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_stalled_client_is_diverted_to_history_and_catches_up_after_the_cooldown() {
    const SLOW_EVENTS: u64 = 6_000;
    let gw = util::builder()
        .shards(1)
        .max_outbound_bytes(256 * 1024)
        .breaker_trip_after(Duration::from_millis(200))
        .breaker_cooldown(Duration::from_secs(1))
        .history_max_events(SLOW_EVENTS as usize)
        .history_max_bytes(32 << 20)
        .history_total_bytes(64 << 20)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let mut stalled = util::connect(addr, &util::token("slow"));
    let mut healthy = util::connect(addr, &util::token("fast"));
    let mut em = gw.emitter();
    let pad = "y".repeat(2000);
    let mut sent_fast = 0usize;
    // 6000 x 2 kB = 12 MB for a client that reads nothing: more than the socket buffers and
    // the 256 KiB outbound cap hold.
    for i in 0..SLOW_EVENTS {
        util::emit_retrying(&mut em, "slow", floodgate::Event::custom("bulk", &pad));
        if i % 10 == 0 {
            util::emit_retrying(&mut em, "fast", floodgate::Event::custom("tick", &i));
            sent_fast += 1;
        }
    }
    util::eventually(Duration::from_secs(10), "the breaker opened", || {
        gw.metrics().stats.breaker_opened >= 1
    });
    let stats = gw.metrics().stats;
    assert_eq!(stats.closed_slow_consumer, 0, "not closed");
    assert!(stats.events_diverted > 0, "its backlog left memory");
    assert_eq!(
        metric(addr, "floodgate_breaker_transitions_total{to=\"open\"}"),
        Some(stats.breaker_opened)
    );
    assert_eq!(metric(addr, "floodgate_breakers_open"), Some(1));
    // The emitting application sees it too, without a lock.
    let d = em.delivery("slow").expect("known user");
    assert_eq!((d.connections, d.breakers_open), (1, 1));
    assert!(d.health < 100, "{d:?}");
    assert_eq!(d.breaker_trips, 1, "the failure count is published too");
    assert_eq!(em.delivery("fast").unwrap().breakers_open, 0);
    assert_eq!(em.delivery("nobody"), None);

    // The healthy client got every one of its events meanwhile.
    let got = util::read_events(&mut healthy, sent_fast, Duration::from_secs(10));
    assert_eq!(got.last().unwrap()["seq"], sent_fast as u64);

    // The stalled client reads again: everything, in order, once the breaker half-opens.
    let frames = util::read_frames(&mut stalled, 1, Duration::from_secs(30), |v: &Value| {
        v["seq"] == SLOW_EVENTS
    });
    assert!(
        frames.iter().all(|f| f["type"] != "gap"),
        "history held everything"
    );
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=SLOW_EVENTS).collect::<Vec<_>>());
    util::eventually(Duration::from_secs(5), "the breaker closed", || {
        gw.metrics().stats.breaker_closed >= 1
    });
    let stats = gw.metrics().stats;
    assert!(stats.breaker_half_opened >= 1);
    assert_eq!(stats.breakers_open, 0);
    assert_eq!(
        metric(addr, "floodgate_breaker_transitions_total{to=\"closed\"}"),
        Some(stats.breaker_closed)
    );
    assert_eq!(em.delivery("slow").unwrap().breakers_open, 0);
    gw.shutdown().unwrap();
}
