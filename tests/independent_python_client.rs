//! A client nobody here wrote (Python's `websockets` library) connects with a token, receives its
//! events in order, and completes the close handshake.
mod util;

use std::process::Command;
use std::time::Duration;

use serde_json::json;

#[test]
fn python_websockets_client_receives_its_events() {
    if !util::python_websockets() {
        return;
    }
    let gw = util::builder().build().unwrap();
    let script = format!("{}/tests/clients/ws_client.py", env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("python3")
        .args([
            &script,
            &format!("ws://{}/ws", gw.local_addr()),
            &util::token("py"),
            "100",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Emit once the client is connected (it announces that on stderr-free stdout line 1).
    util::eventually(Duration::from_secs(15), "python client connected", || {
        gw.metrics().stats.connections_open == 1
    });
    let mut em = gw.emitter();
    for i in 0..100 {
        em.emit("py", floodgate::Event::custom("py.test", &json!({"i": i})))
            .unwrap();
    }
    em.emit(
        "other",
        floodgate::Event::custom("py.test", &json!({"i": -1})),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK 100 events, seq 1..100 in order"),
        "{stdout}"
    );
    gw.shutdown().unwrap();
}
