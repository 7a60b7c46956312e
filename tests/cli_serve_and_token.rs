//! The command line: `serve` on defaults generates a dev secret, `token` signs for it, a client
//! connects with that token, SIGTERM stops the server cleanly; bad settings exit 2 naming them.
mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

#[test]
fn serve_token_connect_and_terminate() {
    let state = std::env::temp_dir().join(format!("floodgate-cli-test-{}", std::process::id()));
    let mut server = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("XDG_STATE_HOME", &state)
        .env_remove("FLOODGATE_JWT_HS256_SECRET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(rest) = line.split("ws://").nth(1) {
            break rest
                .split('/')
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
    };
    let out = Command::new(BIN)
        .args(["token", "--user", "cli-user", "--ttl", "10m"])
        .env("XDG_STATE_HOME", &state)
        .env_remove("FLOODGATE_JWT_HS256_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let ws = util::try_connect(addr, "/ws", Some(&token));
    assert!(ws.is_ok(), "the minted token is accepted");
    drop(ws);
    let bad = util::try_connect(addr, "/ws", Some(&util::token("cli-user")));
    assert!(bad.is_err(), "a token for another secret is not");
    // SIGTERM by PID: the server shuts down and exits 0.
    // SAFETY: kill(2) with our own child's PID and a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn invalid_settings_exit_2_naming_the_setting() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--max-batch-events",
            "1",
            "--max-batch-delay",
            "5ms",
        ])
        .env(
            "FLOODGATE_JWT_HS256_SECRET",
            "cli-test-secret-cli-test-secret-cli!",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_batch_delay"), "{err}");

    let out = Command::new(BIN)
        .args(["bench", "--connections", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connections"));

    let out = Command::new(BIN)
        .args(["bench", "--server", "raw-tcp", "--spool", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`spool`"));

    let out = Command::new(BIN)
        .args(["bench", "--spool-fsync", "always"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--spool-fsync needs --spool");

    let out = Command::new(BIN)
        .args(["serve", "--spool-fsync", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("always"));

    let cfg = std::env::temp_dir().join(format!("floodgate-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg, "max_batch_size = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_batch_size"),
        "unknown keys are named"
    );
    let _ = std::fs::remove_file(cfg);
}
