//! `floodgate load` speaks wss:// to an independent TLS server (Python `websockets` with a
//! certificate made here by openssl), trusting it only when given its CA.

mod util;

use std::process::Command;

#[test]
fn echo_over_wss_trusts_the_given_ca_and_only_it() {
    if !util::python_websockets() {
        return;
    }
    let dir = util::temp_dir("load-tls");
    let (ca, cert, key) = util::test_ca(&dir);
    let (server, port) =
        util::python_server("tls_echo_server.py", &[cert.as_os_str(), key.as_os_str()]);
    let url = format!("wss://127.0.0.1:{port}/");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        cmd.args([
            "load",
            "echo",
            "--url",
            &url,
            "--connections",
            "2",
            "--rate",
            "400",
            "--duration",
            "1s",
            // This test is about whom TLS trusts, not the generator's timing: one scheduler
            // stall of 10 ms on a busy CI machine must not turn the run into `overloaded`.
            "--max-lag",
            "1s",
            "--json",
        ])
        .args(extra);
        let out = util::output_within(&mut cmd, std::time::Duration::from_secs(60));
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["--ca-file", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let replies = r["events"].as_u64().unwrap();
    assert!(
        (300..=420).contains(&replies),
        "about 400 replies over TLS: {replies}"
    );
    assert_eq!(r["errors_total"], 0);
    // Without the CA, the self-signed certificate is refused: no connection opens.
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
