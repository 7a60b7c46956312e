//! The fan-out workload on an embedded floodgate gateway (one reactor shard) with one producer
//! thread: users `u0..u{N-1}`, one connection each (clients bring a JWT for their user, signed
//! with `FLOODGATE_JWT_HS256_SECRET`). floodgate writes `seq` and `ts` itself; the event's data
//! is the padding. Defaults otherwise, so resume history is kept (1024 events per user);
//! `FLOODGATE_HISTORY=0` turns it off (as the other peers keep none). For experiments only
//! (perf/2026-12-01-hot-path.md): `FLOODGATE_RING_CAPACITY=<bytes>` sets the ring's size.

use std::time::Duration;

fn main() {
    let w = floodgate_peers::Workload::from_args();
    let secret = std::env::var("FLOODGATE_JWT_HS256_SECRET").expect("FLOODGATE_JWT_HS256_SECRET");
    let mut b = floodgate::Gateway::builder()
        .bind(format!("127.0.0.1:{}", w.port))
        .jwt_hs256_secret(secret)
        .shards(1)
        .max_connections_per_user(4);
    if let Ok(bytes) = std::env::var("FLOODGATE_RING_CAPACITY") {
        let bytes: usize = bytes.parse().expect("FLOODGATE_RING_CAPACITY is a number");
        b = b.ring_capacity(bytes).max_event_bytes(bytes / 8);
    }
    if std::env::var("FLOODGATE_HISTORY").as_deref() == Ok("0") {
        // Without history a breaker has nothing to refill from: slow clients are closed.
        b = b.history_max_events(0).breaker_cooldown(Duration::ZERO);
    }
    let gw = b.build().expect("gateway");
    floodgate_peers::ready("floodgate", w.port);
    while gw.metrics().stats.connections_open < w.connections as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let users: Vec<String> = (0..w.connections).map(|i| format!("u{i}")).collect();
    // floodgate's frames also carry `"run_id":"r"` (13 bytes): the pad is shorter by as much,
    // so the frames are as long as the other peers'.
    let pad = w.pad();
    // The event's data as an application would type it: a struct, serialized on emit.
    #[derive(serde::Serialize)]
    struct Data<'a> {
        pad: &'a str,
    }
    let data = Data {
        pad: &pad[..pad.len().saturating_sub(13).max(1)],
    };
    let mut em = gw.emitter();
    for k in 0..w.events {
        let user = &users[(k % w.connections as u64) as usize];
        let ev = floodgate::Event::agent_thinking("r", &data);
        // The clock is read only once the ring is full (reading it for every event would cost
        // this producer as much as floodgate's own timestamp, work the other peers don't do).
        let mut full_since = None;
        while let Err(e) = em.emit(user, ev) {
            match e {
                floodgate::EmitError::Full(_) => std::thread::yield_now(),
                other => panic!("emit: {other}"),
            }
            let since = *full_since.get_or_insert_with(std::time::Instant::now);
            assert!(since.elapsed() < Duration::from_secs(60), "stuck");
        }
    }
    std::thread::sleep(Duration::from_secs(3600));
}
