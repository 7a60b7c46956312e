//! `Gateway::disconnect_user` and `POST /api/disconnect` close every connection of one user
//! with 4002, and nobody else's.
mod util;

use std::time::Duration;

use tungstenite::Message;

const KEY: &str = "ingest-key-0123456789abcdef";

/// Reads until a close frame; returns its code.
fn close_code(ws: &mut util::Client) -> u16 {
    loop {
        match ws.read().expect("a close frame before the socket ends") {
            Message::Close(f) => return f.map_or(0, |f| u16::from(f.code)),
            _ => continue,
        }
    }
}

#[test]
fn every_connection_of_the_user_is_closed_with_4002_and_no_other() {
    let gw = util::builder().ingest_api_key(KEY).build().unwrap();
    let addr = gw.local_addr();
    let mut a1 = util::connect(addr, &util::token("alice"));
    let mut a2 = util::connect(addr, &util::token("alice"));
    let mut bob = util::connect(addr, &util::token("bob"));
    gw.disconnect_user("alice").unwrap();
    assert_eq!(close_code(&mut a1), floodgate::CLOSE_DISCONNECTED);
    assert_eq!(close_code(&mut a2), floodgate::CLOSE_DISCONNECTED);
    // Bob still gets his events.
    let mut em = gw.emitter();
    util::emit_retrying(&mut em, "bob", floodgate::Event::agent_started("r"));
    assert_eq!(
        util::read_events(&mut bob, 1, Duration::from_secs(10)).len(),
        1
    );

    // Over HTTP, with the ingest key only.
    let mut a3 = util::connect(addr, &util::token("alice"));
    let post = |key: &str| {
        let body = r#"{"user":"alice"}"#;
        util::http(
            addr,
            &format!(
                "POST /api/disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let resp = post("wrong-key-wrong-key-wrong-key");
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let resp = post(KEY);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""disconnected":true"#), "{resp}");
    assert_eq!(close_code(&mut a3), floodgate::CLOSE_DISCONNECTED);
    util::eventually(Duration::from_secs(5), "counted", || {
        gw.metrics().stats.closed_disconnected == 3
    });
    assert!(gw.disconnect_user("").is_err());
    drop(bob);
    gw.shutdown().unwrap();
}
