//! When the ring to a reactor is full, `emit` refuses with `Full`, hands the very same event
//! back, counts it, and a retry later succeeds: nothing is dropped silently or queued unbounded.
mod util;

use std::time::Duration;

use floodgate::{EmitError, Event};

#[test]
fn full_ring_returns_the_event_and_retry_succeeds() {
    // A 4 KiB ring holds only a few 600-byte events; a tight loop outruns the reactor's wake-up.
    let gw = util::builder()
        .shards(1)
        .ring_capacity(4096)
        .max_event_bytes(700)
        .build()
        .unwrap();
    let mut em = gw.emitter();
    let big = "z".repeat(600);
    let (mut accepted, mut refused) = (0u64, 0u64);
    for i in 0..200_000u32 {
        let ev = Event::custom("bulk", &big).run("r");
        match em.emit("nobody-listens", ev) {
            Ok(()) => accepted += 1,
            Err(EmitError::Full(back)) => {
                refused += 1;
                assert!(
                    std::ptr::eq(back.data().unwrap(), &big),
                    "the same event is handed back"
                );
                assert_eq!(back.run_id(), Some("r"));
                let backoff = crossbeam_utils::Backoff::new();
                loop {
                    match em.emit("nobody-listens", back) {
                        Ok(()) => break accepted += 1,
                        Err(EmitError::Full(_)) => backoff.snooze(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            Err(e) => panic!("unexpected {e} at {i}"),
        }
        if refused >= 10 && i > 1000 {
            break;
        }
    }
    assert!(refused >= 1, "the ring never filled ({accepted} accepted)");
    util::eventually(
        Duration::from_secs(5),
        "every accepted event routed",
        || gw.metrics().stats.events_received == accepted,
    );
    assert!(
        gw.metrics().events_rejected_full >= refused,
        "refusals are counted"
    );
    gw.shutdown().unwrap();
}

#[test]
fn oversized_and_invalid_events_are_refused_up_front() {
    let gw = util::builder().max_event_bytes(300).build().unwrap();
    let mut em = gw.emitter();
    let big = "x".repeat(400);
    assert!(matches!(
        em.emit("u", Event::custom("big", &big)),
        Err(EmitError::TooLarge(_))
    ));
    assert!(matches!(
        em.emit("", Event::agent_started("r")),
        Err(EmitError::InvalidUser(_))
    ));
    let long_user = "u".repeat(256);
    assert!(matches!(
        em.emit(&long_user, Event::agent_started("r")),
        Err(EmitError::InvalidUser(_))
    ));
    assert!(matches!(
        em.emit("u", Event::custom("bad type", &1)),
        Err(EmitError::InvalidType(_))
    ));
    let mut bad_map = std::collections::HashMap::new();
    bad_map.insert(vec![1u8], 1); // non-string keys cannot be JSON object keys
    assert!(matches!(
        em.emit("u", Event::custom("map", &bad_map)),
        Err(EmitError::Unserializable(_))
    ));
    for e in [
        em.emit("u", Event::custom("big", &big))
            .unwrap_err()
            .is_retryable(),
        em.emit("", Event::agent_started("r"))
            .unwrap_err()
            .is_retryable(),
    ] {
        assert!(!e, "only Full is retryable");
    }
    gw.shutdown().unwrap();
}
