//! A client that stops reading while 1M events are emitted to it costs the gateway bounded
//! memory: the process's resident set grows by less than `history_total_bytes` plus
//! `max_outbound_bytes` plus a fixed allowance, while another user keeps receiving everything.
//! When the stalled client reads again, it gets the rest of its stream: every event still in
//! history, in order, and a `gap` frame for each range that history no longer holds.
mod util;

use std::time::Duration;

use serde_json::Value;

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[test]
fn a_million_events_to_a_stalled_client_cost_bounded_memory() {
    const EVENTS: u64 = 1_000_000;
    const HISTORY: usize = 32 << 20;
    const OUTBOUND: usize = 4 << 20;
    const ALLOWANCE: u64 = 48 << 20; // rings, client buffers, allocator slack
    let gw = util::builder()
        .shards(1)
        .history_total_bytes(HISTORY)
        .max_outbound_bytes(OUTBOUND)
        .breaker_cooldown(Duration::from_secs(1))
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let mut stalled = util::connect(addr, &util::token("stalled"));
    let mut healthy = util::connect(addr, &util::token("healthy"));
    let before = rss();
    let fast_events = EVENTS / 100;
    let reader = std::thread::spawn(move || {
        let got = util::read_events(&mut healthy, fast_events as usize, Duration::from_secs(120));
        got.last().map(|v| v["seq"].as_u64().unwrap())
    });
    let mut em = gw.emitter();
    let data = "d".repeat(100);
    let mut peak = before;
    for i in 0..EVENTS {
        util::emit_retrying(&mut em, "stalled", floodgate::Event::custom("bulk", &data));
        if i % 100 == 0 {
            util::emit_retrying(&mut em, "healthy", floodgate::Event::custom("tick", &i));
        }
        if i % 50_000 == 0 {
            peak = peak.max(rss());
        }
    }
    util::eventually(Duration::from_secs(60), "every event routed", || {
        gw.metrics().stats.events_received == EVENTS + fast_events
    });
    peak = peak.max(rss());
    let grew = peak.saturating_sub(before);
    let bound = (HISTORY + OUTBOUND) as u64 + ALLOWANCE;
    eprintln!(
        "RSS grew by {} MiB (bound {} MiB); breaker opened {} times, {} events diverted",
        grew >> 20,
        bound >> 20,
        gw.metrics().stats.breaker_opened,
        gw.metrics().stats.events_diverted
    );
    assert!(grew < bound, "RSS grew by {grew} bytes, bound {bound}");
    assert_eq!(
        reader.join().unwrap(),
        Some(fast_events),
        "the other user got everything"
    );
    assert!(gw.metrics().stats.breaker_opened >= 1);

    // Reading again: the rest of the stream, holes announced.
    let frames = util::read_frames(&mut stalled, 1, Duration::from_secs(120), |v: &Value| {
        v["seq"] == EVENTS
    });
    let mut last = 0u64;
    let mut gaps = 0;
    for f in &frames {
        if f["type"] == "gap" {
            assert_eq!(
                f["from"].as_u64(),
                Some(last + 1),
                "a gap starts where we are: {f}"
            );
            last = f["to"].as_u64().unwrap();
            gaps += 1;
        } else if let Some(seq) = f["seq"].as_u64() {
            assert_eq!(seq, last + 1, "in order, every hole announced");
            last = seq;
        }
    }
    assert_eq!(last, EVENTS);
    assert!(
        gaps >= 1,
        "1M events do not fit the default history: a gap was announced"
    );
    gw.shutdown().unwrap();
}
