//! What `floodgate serve` logs for an operator, read from the stderr of a real process: one
//! line per refused handshake (reason, status, peer, why) within a rate, each connection's
//! start and end at debug (user, peer, close code, who closed), `--log-format json` as one
//! object per line, `RUST_LOG` honoured when `FLOODGATE_LOG` is unset, and no colour codes in
//! a pipe.

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use util::Serve;

/// The JSON lines logged so far (every line must be one).
fn json_lines(s: &Serve) -> Vec<Value> {
    s.log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until a line with `message` is logged; returns every line.
fn wait_for(s: &Serve, message: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = json_lines(s);
        if lines.iter().any(|l| l["message"] == message) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {message:?} in {lines:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bad_token(s: &Serve) {
    let err = util::try_connect(s.addr, "/ws", Some("not-a-token")).unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[test]
fn json_lines_say_why_a_handshake_was_refused_and_who_connected_and_closed() {
    let s = Serve::start(
        "",
        &["--log-format", "json"],
        &[("RUST_LOG", "debug"), ("FLOODGATE_LOG", "")],
    );
    bad_token(&s);
    let lines = wait_for(&s, "handshake refused");
    let refused = lines
        .iter()
        .find(|l| l["message"] == "handshake refused")
        .unwrap();
    assert_eq!(refused["reason"], "auth", "{refused}");
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["peer"], "127.0.0.1", "{refused}");
    assert!(!refused["why"].as_str().unwrap().is_empty(), "{refused}");
    assert_eq!(refused["level"], "INFO");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on ws://"))),
        "the banner is a JSON line too"
    );

    // A connection, closed by the client with 1000: its start and end at debug.
    let (mut ws, _) = util::connect_to(s.addr, "/ws", &util::token("lia"));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    let _ = ws.read();
    let lines = wait_for(&s, "connection closed");
    let open = lines
        .iter()
        .find(|l| l["message"] == "connection open")
        .unwrap();
    assert_eq!(
        (open["user"].as_str(), open["level"].as_str()),
        (Some("lia"), Some("DEBUG"))
    );
    let closed = lines
        .iter()
        .find(|l| l["message"] == "connection closed")
        .unwrap();
    assert_eq!(closed["user"], "lia", "{closed}");
    assert_eq!(closed["close_code"], 1000, "{closed}");
    assert_eq!(closed["closed_by"], "client", "{closed}");
    assert_eq!(closed["peer"], "127.0.0.1", "{closed}");
}

#[test]
fn a_flood_of_refused_handshakes_is_logged_within_a_rate_and_counted() {
    let s = Serve::start("", &["--log-format", "json"], &[("FLOODGATE_LOG", "info")]);
    for _ in 0..50 {
        bad_token(&s);
    }
    std::thread::sleep(Duration::from_millis(1100));
    bad_token(&s);
    let lines = wait_for(
        &s,
        "more handshakes were refused than logged (at most 20 a second per shard)",
    );
    let refused = lines
        .iter()
        .filter(|l| l["message"] == "handshake refused")
        .count();
    let left_out: u64 = lines.iter().filter_map(|l| l["left_out"].as_u64()).sum();
    // Within the first second at most 20, then the count of the rest, then the 51st.
    assert!((2..=21).contains(&refused), "{refused} lines");
    assert_eq!(
        refused as u64 + left_out,
        51,
        "every refusal logged or counted"
    );
    // At info, no connection lines.
    assert!(!lines.iter().any(|l| l["message"] == "connection open"));
}

#[test]
fn text_logs_in_a_pipe_have_no_colour_and_floodgate_log_wins_over_rust_log() {
    let s = Serve::start("", &[], &[("RUST_LOG", "debug"), ("FLOODGATE_LOG", "info")]);
    bad_token(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains("handshake refused") {
        assert!(Instant::now() < deadline, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ws, _) = util::connect_to(s.addr, "/ws", &util::token("mo"));
    drop(ws);
    std::thread::sleep(Duration::from_millis(300));
    let log = s.log();
    assert!(!log.contains('\x1b'), "colour codes in a pipe: {log:?}");
    assert!(
        log.contains("reason=\"auth\"") || log.contains("reason=auth"),
        "{log}"
    );
    assert!(
        !log.contains("connection open"),
        "FLOODGATE_LOG=info wins: {log}"
    );
}
