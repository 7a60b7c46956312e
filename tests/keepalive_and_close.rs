//! The server pings; a connection that does not answer has its breaker opened (its events wait
//! in history) and, still silent after the cool-down, is closed with 4010. The server answers
//! client pings and completes the close handshake a client starts.
mod util;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::Message;

#[test]
fn answering_clients_stay_and_silent_ones_are_closed() {
    let gw = util::builder()
        .shards(1)
        .ping_interval(Duration::from_secs(1))
        .pong_timeout(Duration::from_millis(800))
        .breaker_cooldown(Duration::from_secs(1))
        .build()
        .unwrap();
    let addr = gw.local_addr();
    // A raw socket that completes the upgrade, then never reads or answers anything.
    let mut silent = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut silent,
        util::upgrade_request(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", util::token("silent")),
        )
        .as_bytes(),
    )
    .unwrap();
    // tungstenite answers pings while it reads.
    let mut live = util::connect(addr, &util::token("live"));
    live.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(4000) {
        match live.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("live connection broke: {e}"),
        }
    }
    assert!(pings >= 2, "server pinged every second ({pings})");
    let m = gw.metrics().stats;
    assert_eq!(
        m.breaker_trips_missed_pong, 1,
        "the silent client's breaker opened first"
    );
    assert_eq!(m.closed_pong_timeout, 1, "only the silent client timed out");
    // The silent socket received: 101 response, ping(s), then a close frame with 4010.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = silent.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = 4010u16.to_be_bytes();
    let close_at = buf.windows(4).position(|w| w[0] == 0x88 && w[2..4] == code);
    assert!(close_at.is_some(), "a close frame with 4010 was sent");
    gw.shutdown().unwrap();
}

#[test]
fn client_pings_are_answered_and_client_close_is_acknowledged() {
    let gw = util::builder().build().unwrap();
    let mut ws = util::connect(gw.local_addr(), &util::token("c"));
    ws.send(Message::Ping(b"hi"[..].into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hi"),
        other => panic!("expected the pong, got {other:?}"),
    }
    ws.close(None).unwrap();
    // tungstenite returns ConnectionClosed once the server's close reply arrived.
    let end = loop {
        match ws.read() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(end, tungstenite::Error::ConnectionClosed), "{end}");
    util::eventually(Duration::from_secs(5), "connection released", || {
        gw.metrics().stats.connections_open == 0
    });
    gw.shutdown().unwrap();
}
