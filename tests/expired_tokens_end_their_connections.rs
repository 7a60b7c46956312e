//! A connection lives as long as its token: at `exp` (plus the leeway) it is closed with 4001,
//! unless the client sent a fresh token for the same user in-band before then; a refused
//! in-band token closes it with 4003.
mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;

fn token_for(user: &str, ttl_secs: u64) -> String {
    util::sign(
        &json!({"sub": user, "exp": util::now_secs() + ttl_secs}),
        util::SECRET,
    )
}

/// Reads until a close frame arrives (or `limit` passes); returns its code and reason, and
/// the text frames seen before it.
fn until_close(ws: &mut util::Client, limit: Duration) -> (Option<(u16, String)>, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut texts = Vec::new();
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(f)) => {
                return (f.map(|f| (u16::from(f.code), f.reason.to_string())), texts)
            }
            Ok(Message::Text(t)) => texts.push(t.to_string()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read failed before a close frame: {e}"),
        }
    }
    (None, texts)
}

#[test]
fn an_expired_token_closes_its_connection_with_4001() {
    let gw = util::builder().jwt_leeway(Duration::ZERO).build().unwrap();
    let started = Instant::now();
    let mut ws = util::connect(gw.local_addr(), &token_for("short", 2));
    let (close, _) = until_close(&mut ws, Duration::from_secs(10));
    let (code, reason) = close.expect("closed at expiry");
    assert_eq!(code, floodgate::CLOSE_TOKEN_EXPIRED, "{reason}");
    assert!(reason.contains("token expired"), "{reason}");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(5),
        "{after:?}"
    );
    util::eventually(Duration::from_secs(5), "counted", || {
        gw.metrics().stats.closed_token_expired == 1
    });
    gw.shutdown().unwrap();
}

#[test]
fn a_fresh_token_sent_in_band_keeps_the_connection_and_another_users_token_ends_it() {
    let gw = util::builder().jwt_leeway(Duration::ZERO).build().unwrap();
    let addr = gw.local_addr();
    // Renewed before its 2 s are up: still open at 4 s, and told the renewal was taken.
    let mut ws = util::connect(addr, &token_for("renew", 2));
    let auth = json!({"type": "auth", "token": token_for("renew", 3600)}).to_string();
    ws.send(Message::text(auth)).unwrap();
    let (close, texts) = until_close(&mut ws, Duration::from_secs(4));
    assert!(close.is_none(), "closed despite a fresh token: {close:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains(r#""type":"auth","ok":true"#)),
        "{texts:?}"
    );
    // A token for another user: 4003, naming why.
    let other = json!({"type": "auth", "token": token_for("mallory", 3600)}).to_string();
    ws.send(Message::text(other)).unwrap();
    let (close, _) = until_close(&mut ws, Duration::from_secs(5));
    let (code, reason) = close.expect("closed");
    assert_eq!(code, floodgate::CLOSE_AUTH_REFUSED);
    assert!(reason.contains("another user"), "{reason}");
    // An invalid token: 4003 too.
    let mut ws = util::connect(addr, &token_for("bad", 3600));
    let bad = json!({"type": "auth", "token": "not.a.jwt"}).to_string();
    ws.send(Message::text(bad)).unwrap();
    let (close, _) = until_close(&mut ws, Duration::from_secs(5));
    assert_eq!(close.expect("closed").0, floodgate::CLOSE_AUTH_REFUSED);
    gw.shutdown().unwrap();
}
