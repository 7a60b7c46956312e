//! Input an attacker chooses, against a real `floodgate serve` process: it is refused with a
//! clear answer, and the gateway stays up with bounded memory.
mod util;

use std::time::{Duration, Instant};

use util::Serve;

const KEY: &str = "ingest-key-0123456789abcdef";

/// POSTs `body` to `/api/publish` and returns the status line and the body of the answer.
fn publish(addr: std::net::SocketAddr, body: &str) -> (String, String) {
    let resp = util::http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let status = resp.lines().next().unwrap_or_default().to_owned();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn deeply_nested_json_is_refused_naming_the_limit_and_the_gateway_stays_up() {
    let mut serve = Serve::start("", &["--ingest-api-key", KEY], &[]);
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // About 40 KB of nesting anywhere: the whole body, an event's data, the envelope's id.
    let bodies = [
        deep(20_000),
        format!(r#"[{{"user":"u","type":"t","data":{}}}]"#, deep(18_000)),
    ];
    for body in &bodies {
        let (status, answer) = publish(serve.addr, body);
        assert!(status.contains(" 400 "), "{status} {answer}");
        assert!(
            answer.contains("too_deep") && answer.contains("64 levels"),
            "{answer}"
        );
        assert!(
            serve.alive(),
            "the gateway is still running: {}",
            serve.log()
        );
    }
    // The same over /api/ingest, in the envelope's id.
    let mut ws = util::try_connect(serve.addr, "/api/ingest", Some(KEY)).expect("ingest socket");
    let msg = format!(r#"{{"id":{},"events":[]}}"#, deep(18_000));
    ws.send(tungstenite::Message::text(msg)).unwrap();
    let answer = ws.read().expect("an answer").into_text().unwrap();
    assert!(answer.contains("too_deep"), "{answer}");
    assert!(
        serve.alive(),
        "the gateway is still running: {}",
        serve.log()
    );
    // And it still serves: a good batch is accepted.
    let (status, answer) = publish(serve.addr, r#"[{"user":"u","type":"agent_started"}]"#);
    assert!(status.contains(" 200 "), "{status} {answer}");
}

/// Opens a WebSocket on `path` over a raw socket (the handshake read, nothing after it).
fn raw_ws(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(util::upgrade_request(path, &auth).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame (mask key 0, so the payload is as given).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[test]
fn pings_and_echoes_that_are_never_read_do_not_grow_memory() {
    use std::io::Write;
    let mut serve = Serve::start("", &["--echo", "--max-outbound-bytes", "1048576"], &[]);
    let before = serve.rss_kib();
    // Three clients that send and never read: two flood pings (125-byte payloads), one
    // sends messages to /echo. Each sends 25 MB, so unbounded replies would hold 75 MB.
    let floods: Vec<_> = (0..3)
        .map(|i| {
            let addr = serve.addr;
            std::thread::spawn(move || {
                let (mut s, frame) = if i < 2 {
                    let tok = util::token(&format!("pinger{i}"));
                    (
                        raw_ws(addr, "/ws", Some(&tok)),
                        client_frame(0x9, &[b'p'; 125]),
                    )
                } else {
                    (raw_ws(addr, "/echo", None), client_frame(0x1, &[b'e'; 125]))
                };
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let batch = frame.repeat(500);
                let mut sent = 0usize;
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut why = None;
                while sent < (25 << 20) && Instant::now() < deadline {
                    if let Err(e) = s.write_all(&batch) {
                        why = Some(e.kind()); // closed as a slow consumer, or pushed back for 5 s
                        break;
                    }
                    sent += batch.len();
                }
                (sent, why)
            })
        })
        .collect();
    let sent: Vec<(usize, Option<std::io::ErrorKind>)> =
        floods.into_iter().map(|t| t.join().unwrap()).collect();
    let grown_mib = serve.rss_kib().saturating_sub(before) / 1024;
    eprintln!("sent {sent:?} bytes; the gateway's RSS grew by {grown_mib} MiB");
    assert!(serve.alive());
    assert!(grown_mib < 24, "RSS grew by {grown_mib} MiB");
    // Each flooder was cut off by the gateway (4008, then the socket dropped), or got to the
    // end because the gateway answered its pings with fewer pongs (RFC 6455 lets a pong stand
    // for the pings before it) and so never held much: either way memory stayed bounded.
    for (i, (n, why)) in sent.iter().enumerate() {
        assert!(
            *n >= 25 << 20
                || matches!(
                    why,
                    Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
                ),
            "flooder {i} stopped after {n} bytes without being cut off: {why:?}"
        );
    }
    let closed = serve.metric("floodgate_connections_closed_total{reason=\"slow_consumer\"}");
    assert!(closed >= 1, "no flooder was closed as a slow consumer");
}

#[test]
fn running_out_of_file_descriptors_refuses_with_503_and_recovers_when_they_return() {
    use std::io::{Read, Write};
    // 64 descriptors for the whole gateway process.
    // Idle handshakes hold their descriptors for the whole test.
    let serve = Serve::start("ulimit -n 64;", &["--handshake-timeout", "60s"], &[]);
    // Idle connections: some take the gateway's last descriptors as pending handshakes, the
    // rest would wait in the listen backlog (mio listens with a backlog of 1024) until it is
    // full, after which the kernel drops new connection attempts without a word.
    let idle: Vec<std::net::TcpStream> = (0..1200)
        .filter_map(|_| std::net::TcpStream::connect(serve.addr).ok())
        .collect();
    assert!(idle.len() > 1100, "{} idle connections", idle.len());
    // A client arriving now is told, not left hanging.
    let mut late = std::net::TcpStream::connect_timeout(&serve.addr, Duration::from_secs(5))
        .expect("the listener still takes connections");
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    late.write_all(util::upgrade_request("/ws", "").as_bytes())
        .unwrap();
    let mut answer = String::new();
    let _ = late.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "got {answer:?}");
    assert!(answer.contains("file descriptors"), "{answer}");
    // The idle clients leave; the gateway accepts again (no new readiness event is needed).
    drop(idle);
    drop(late);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ws = loop {
        match util::try_connect(serve.addr, "/ws", Some(&util::token("back"))) {
            Ok(ws) => break ws,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no recovery: {e}\n{}",
                    serve.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let hello = ws.read().expect("hello").into_text().unwrap();
    assert!(hello.contains("\"type\":\"hello\""), "{hello}");
    drop(ws);
    let failed = serve.metric("floodgate_accept_errors_total{reason=\"fd_exhausted\"}");
    let log = serve.log();
    let warned = log.matches("accept: out of file descriptors").count();
    eprintln!("{failed} accept calls failed for want of descriptors; {warned} warning(s)");
    assert!(failed >= 1);
    // One warning per episode, not one per failed accept (a recovery between two bursts of
    // the test's connections may make a second episode).
    assert!((1..=3).contains(&warned), "{warned} warnings:\n{log}");
    assert!(
        log.contains("nofile limit is below max_connections"),
        "{log}"
    );
}

/// A TCP connection to `to` from the local address `from` (another loopback address).
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

#[test]
fn idle_handshakes_from_one_address_cannot_lock_out_the_others() {
    use std::io::{Read, Write};
    let serve = Serve::start("", &["--handshake-timeout", "60s"], &[]);
    // 1000 connections from 127.0.0.2 that never send a request head.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let mut s = connect_from("127.0.0.2", serve.addr);
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut b = [0u8; 12];
        if s.read_exact(&mut b).is_ok() {
            assert_eq!(&b, b"HTTP/1.1 503");
            refused += 1;
        } else {
            idle.push(s);
        }
    }
    // Past 128 pending from that address, each new one is told 503 at once.
    assert!(refused >= 800, "{refused} refused, {} idle", idle.len());
    // Someone else still gets in.
    let mut ws = util::try_connect(serve.addr, "/ws", Some(&util::token("other")))
        .expect("another address is served");
    assert!(ws.read().unwrap().into_text().unwrap().contains("hello"));
    let mut late = connect_from("127.0.0.2", serve.addr);
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    late.write_all(util::upgrade_request("/ws", "").as_bytes())
        .unwrap();
    let mut answer = String::new();
    let _ = late.read_to_string(&mut answer);
    assert!(answer.contains("from this address"), "{answer}");
    drop(idle);
}

#[test]
fn connections_per_address_are_bounded_when_configured() {
    let serve = Serve::start("", &["--max-connections-per-ip", "3"], &[]);
    let tok = util::token("many");
    let open: Vec<_> = (0..3)
        .map(|_| util::try_connect(serve.addr, "/ws", Some(&tok)).expect("within the limit"))
        .collect();
    let fourth = util::try_connect(serve.addr, "/ws", Some(&tok));
    match fourth {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    while util::try_connect(serve.addr, "/ws", Some(&tok)).is_err() {
        assert!(Instant::now() < deadline, "the slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}
