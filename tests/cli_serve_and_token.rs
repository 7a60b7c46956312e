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

/// `serve` and `token` with no HOME and no XDG_STATE_HOME, temp files under `tmp`.
fn no_home(cmd: &mut Command, tmp: &std::path::Path) {
    cmd.env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("FLOODGATE_JWT_HS256_SECRET")
        .env("TMPDIR", tmp);
}

#[test]
fn the_dev_secret_lives_only_in_a_private_directory_and_planted_ones_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = util::temp_dir("devsecret-cli");
    let uid = std::fs::metadata(&tmp).unwrap().uid();
    let dir = tmp.join(format!("floodgate-{uid}"));
    // First start: a private directory and file are made.
    let mut serve = Command::new(BIN);
    serve.args(["serve", "--bind", "127.0.0.1:0"]);
    no_home(&mut serve, &tmp);
    let mut child = serve.stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("listening on")));
    let _ = child.kill();
    let _ = child.wait();
    let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("dev-secret")), 0o600);
    let mut token = Command::new(BIN);
    token.args(["token", "--user", "u"]);
    no_home(&mut token, &tmp);
    let out = util::output_within(&mut token, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let refused = |why: &str| {
        let mut serve = Command::new(BIN);
        serve.args(["serve", "--bind", "127.0.0.1:0"]);
        no_home(&mut serve, &tmp);
        let out = util::output_within(&mut serve, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{why}: {err}");
        assert!(
            err.contains("dev secret") && err.contains(why),
            "{why}: {err}"
        );
        let mut token = Command::new(BIN);
        token.args(["token", "--user", "u"]);
        no_home(&mut token, &tmp);
        let out = util::output_within(&mut token, Duration::from_secs(20));
        assert!(!out.status.success(), "token refuses too ({why})");
    };
    // Another local user could read the secret: refused, not used.
    std::fs::set_permissions(
        dir.join("dev-secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    refused("group or others");
    // A symlink planted where the secret goes (to make the gateway use or overwrite a file it
    // points to) is never followed.
    std::fs::remove_file(dir.join("dev-secret")).unwrap();
    let victim = tmp.join("victim");
    std::fs::write(&victim, "x".repeat(40)).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("dev-secret")).unwrap();
    refused("symlink");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "x".repeat(40));
    // A directory made by someone else (here: world-writable) is refused.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("group or others");
    let _ = std::fs::remove_dir_all(&tmp);
}
