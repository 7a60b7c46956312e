//! Shutdown under load: every event `emit` accepted is delivered before the close (1001), none
//! is lost silently, and later emits get `Closed` with the event handed back. (That no reactor
//! thread is left running is checked in `shutdown_leaves_no_thread.rs`, alone in its process.)
mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floodgate::EmitError;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

#[test]
fn shutdown_under_load_delivers_everything_accepted() {
    const USERS: usize = 6;
    let gw = util::builder()
        .shards(2)
        .ring_capacity(1 << 16)
        .max_event_bytes(8192)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let clients: Vec<_> = (0..USERS)
        .map(|u| util::connect(addr, &util::token(&format!("s{u}"))))
        .collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                            if v["type"] == "hello" {
                                assert_eq!(n, 0, "hello comes first");
                                continue;
                            }
                            n += 1;
                            assert_eq!(v["seq"], n, "gapless until the close");
                        }
                        Ok(Message::Close(frame)) => {
                            let code = frame.map(|f| f.code);
                            assert_eq!(code, Some(CloseCode::Away), "shutdown closes with 1001");
                            // Let tungstenite answer the close.
                            while ws.read().is_ok() {}
                            return n;
                        }
                        Ok(_) => {}
                        Err(e) => panic!("connection ended without a close frame after {n}: {e}"),
                    }
                }
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let mut em = gw.emitter();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut accepted = [0u64; USERS];
                let mut i = 0usize;
                loop {
                    let u = i % USERS;
                    let user = format!("s{u}");
                    let data = json!({"p": p, "i": i});
                    match em.emit(&user, floodgate::Event::custom("load", &data)) {
                        Ok(()) => accepted[u] += 1,
                        Err(EmitError::Full(_)) => std::thread::yield_now(),
                        Err(EmitError::Closed(ev)) => {
                            assert_eq!(
                                ev.data().unwrap()["i"],
                                i,
                                "the refused event is handed back"
                            );
                            // Every later emit is refused too.
                            assert!(matches!(em.emit(&user, ev), Err(EmitError::Closed(_))));
                            return accepted;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    i += 1;
                    if stop.load(Ordering::Relaxed) && i % 64 == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let report = gw.shutdown().unwrap();
    assert_eq!(
        report.undelivered, 0,
        "every client read everything: {report:?}"
    );
    let mut accepted = [0u64; USERS];
    for p in producers {
        for (a, n) in accepted.iter_mut().zip(p.join().unwrap()) {
            *a += n;
        }
    }
    let received: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        received.as_slice(),
        &accepted[..],
        "received == accepted per user"
    );
    assert!(accepted.iter().all(|&n| n > 0));
    assert_eq!(
        report.metrics.stats.events_received,
        accepted.iter().sum::<u64>()
    );
}

#[test]
fn emitters_outliving_the_gateway_get_closed() {
    let gw = util::builder().build().unwrap();
    let mut em = gw.emitter();
    drop(gw);
    let err = em.agent_started("u", "r").unwrap_err();
    assert!(matches!(err, EmitError::Closed(_)));
    assert!(!err.is_retryable());
}

#[test]
fn a_client_that_never_reads_is_reported_not_waited_on_forever() {
    let gw = util::builder()
        .shards(1)
        .shutdown_timeout(Duration::from_millis(500))
        .close_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let ws = util::connect(gw.local_addr(), &util::token("stuck"));
    let mut em = gw.emitter();
    let big = "x".repeat(30_000);
    let mut accepted = 0;
    for _ in 0..800 {
        if em
            .emit("stuck", floodgate::Event::custom("big", &big))
            .is_ok()
        {
            accepted += 1;
        }
    }
    let t = std::time::Instant::now();
    let report = gw.shutdown().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown is bounded by shutdown_timeout"
    );
    assert!(
        report.undelivered > 0,
        "unsent events are reported: {report:?}"
    );
    assert!(report.undelivered <= accepted);
    drop(ws);
}
