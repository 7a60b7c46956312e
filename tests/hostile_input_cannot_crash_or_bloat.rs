//! Input an attacker chooses, against a real `floodgate serve` process: it is refused with a
//! clear answer, and the gateway stays up with bounded memory.
mod util;

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
