//! With breakers disabled (`breaker_cooldown = 0`), a client that stops reading is closed with
//! 4008 once its outbound buffer passes `max_outbound_bytes`; the gateway's memory for it stays
//! bounded and other users are unaffected. (With breakers, see
//! `slow_consumer_trips_its_breaker.rs`.)
mod util;

use std::time::Duration;

use tungstenite::Message;

#[test]
fn a_stalled_client_is_closed_and_others_keep_receiving() {
    let gw = util::builder()
        .shards(1)
        .max_outbound_bytes(256 * 1024)
        .breaker_cooldown(Duration::ZERO)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let mut stalled = util::connect(addr, &util::token("slow"));
    let mut healthy = util::connect(addr, &util::token("fast"));
    let mut em = gw.emitter();
    let pad = "y".repeat(4000);
    let mut sent_fast = 0usize;
    // Emit until the server gives up on the stalled client (bounded: 20k events x 4 kB = 80 MB).
    for i in 0..20_000 {
        util::emit_retrying(&mut em, "slow", floodgate::Event::custom("bulk", &pad));
        if i % 10 == 0 {
            util::emit_retrying(&mut em, "fast", floodgate::Event::custom("tick", &i));
            sent_fast += 1;
        }
        if gw.metrics().stats.closed_slow_consumer == 1 {
            break;
        }
    }
    assert_eq!(
        gw.metrics().stats.closed_slow_consumer,
        1,
        "the stalled client was closed"
    );
    assert!(
        gw.metrics().stats.events_dropped >= 1,
        "its dropped events are counted"
    );

    // The healthy client got every one of its events.
    let got = util::read_events(&mut healthy, sent_fast, Duration::from_secs(10));
    assert_eq!(got.last().unwrap()["seq"], sent_fast as u64);

    // The stalled client, reading at last, finds its events then the 4008 close.
    let mut code = None;
    stalled
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        match stalled.read() {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(floodgate::CLOSE_SLOW_CONSUMER));
    gw.shutdown().unwrap();
}
