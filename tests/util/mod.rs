//! Shared helpers for the integration tests: a gateway on 127.0.0.1:0, tokens signed by the
//! `jsonwebtoken` crate directly (not by floodgate), and tungstenite clients (an independent
//! WebSocket implementation) to talk to it.
#![allow(dead_code)]

#[path = "../../src/redis_engine/server.rs"]
pub mod redis_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

/// A builder with the test secret, an ephemeral port and a short close timeout (test clients
/// often stop reading before the server's close frame arrives).
pub fn builder() -> floodgate::GatewayBuilder {
    floodgate::Gateway::builder()
        .bind("127.0.0.1:0")
        .jwt_hs256_secret(SECRET)
        .shards(2)
        .close_timeout(std::time::Duration::from_millis(500))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs arbitrary claims with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    sign(
        &serde_json::json!({"sub": user, "exp": now_secs() + 3600}),
        SECRET,
    )
}

pub type Client = WebSocket<TcpStream>;

/// Emits `ev` to `user`, retrying while the ring is full; panics on any other error.
pub fn emit_retrying<D: serde::Serialize + ?Sized>(
    em: &mut floodgate::Emitter,
    user: &str,
    ev: floodgate::Event<'_, D>,
) {
    loop {
        match em.emit(user, ev) {
            Ok(()) => return,
            Err(floodgate::EmitError::Full(_)) => std::thread::yield_now(),
            Err(e) => panic!("emit to {user} failed: {e}"),
        }
    }
}

/// Connects to `/ws` with the token in the Authorization header and reads the `hello` frame
/// every event stream starts with.
pub fn connect(addr: SocketAddr, token: &str) -> Client {
    connect_to(addr, "/ws", token).0
}

/// Connects to `path` (with its query, such as a resume cursor) and returns the client and its
/// `hello` frame.
pub fn connect_to(addr: SocketAddr, path: &str, token: &str) -> (Client, Value) {
    let mut ws = try_connect(addr, path, Some(token)).expect("upgrade accepted");
    let hello = read_frames(&mut ws, 1, Duration::from_secs(10), |_| true).remove(0);
    assert_eq!(hello["type"], "hello", "the first frame is hello: {hello}");
    (ws, hello)
}

/// Connects to `path` (query included), with an optional bearer token.
pub fn try_connect(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, _resp)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake interrupted")
        }
    }
}

/// Reads event frames (those with a `seq`) as JSON until `n` have arrived, skipping the
/// server's protocol frames (`hello`, `gap`); panics after `timeout`.
pub fn read_events(ws: &mut Client, n: usize, timeout: Duration) -> Vec<Value> {
    let mut frames = read_frames(ws, n, timeout, |v| v.get("seq").is_some());
    frames.retain(|v| v.get("seq").is_some());
    frames
}

/// Reads text frames as JSON until `n` of those `counts` accepts have arrived (returning every
/// text frame read); panics after `timeout`.
pub fn read_frames(
    ws: &mut Client,
    n: usize,
    timeout: Duration,
    counts: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    let mut counted = 0;
    while counted < n {
        assert!(
            Instant::now() < deadline,
            "timed out with {counted} of {n} frames"
        );
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("frame is JSON");
                counted += usize::from(counts(&v));
                out.push(v);
            }
            Ok(_) => {}
            Err(e) => panic!("read failed after {counted} of {n} frames: {e}"),
        }
    }
    out
}

/// Sends a raw HTTP request and returns the whole response (the server closes after it).
pub fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An upgrade request for `/ws` with extra header lines.
pub fn upgrade_request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Names of this process's threads that belong to floodgate's reactors.
pub fn reactor_threads() -> Vec<String> {
    threads_named("floodgate-react")
}

/// Names of this process's threads that start with `prefix`.
pub fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with(prefix))
        .collect()
}

/// Waits until `cond` holds or panics after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh, empty directory for one test (under the system temp dir, removed first if an
/// earlier run left it).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("floodgate-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts this test binary again as a child process that runs only the ignored test `name`
/// (a child role of some test), with `envs`, piped stdin and stdout.
pub fn spawn_child(name: &str, envs: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start the child test process")
}

/// Reads lines from `out` until one holds `prefix`; returns what follows it on that line.
/// (The test harness prints `test NAME ... ` without a newline before a child's first line.)
pub fn read_line_starting(out: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before printing `{prefix}`"
        );
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].trim().to_owned();
        }
    }
}

/// Every `.seg` file under `dir`, oldest first within each shard.
pub fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        if shard.path().is_dir() {
            for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "seg") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether python3 with `websockets` is here. Where it must be (`FLOODGATE_TEST_REQUIRE_PYTHON`, set
/// by scripts/test), its absence fails the test; elsewhere the caller skips, saying so.
pub fn python_websockets() -> bool {
    python_module("websockets")
}

/// Whether python3 can import `module`; where it must (`FLOODGATE_TEST_REQUIRE_PYTHON`, set by
/// scripts/test, which installs it) its absence fails the test instead of skipping it.
#[allow(dead_code)]
pub fn python_module(module: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("FLOODGATE_TEST_REQUIRE_PYTHON").is_none(),
            "python3 with `{module}` is required here (scripts/test installs it)"
        );
        eprintln!("skipped: python3 `{module}` not installed (scripts/test installs it)");
    }
    ok
}

/// Runs `cmd` to its end and returns its output, but kills it and fails the test if it takes
/// longer than `limit` (a hung child must fail the suite, not stall it).
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    // Read both pipes on threads, so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A `floodgate serve` process of the test's own, on 127.0.0.1:0, signing with [`SECRET`].
/// Its stderr is read on a thread (kept for [`Serve::log`]); dropping it kills it by PID.
pub struct Serve {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    /// Starts `floodgate serve --bind 127.0.0.1:0 ARGS` through `sh -c` with `shell_prefix`
    /// before it (for example `ulimit -n 256;`), with `envs` (an empty value removes the
    /// variable, such as the test secret when another key is configured).
    pub fn start(shell_prefix: &str, args: &[&str], envs: &[(&str, &str)]) -> Serve {
        use std::io::BufRead;
        let bin = env!("CARGO_BIN_EXE_floodgate");
        let script = format!("{shell_prefix} exec \"$0\" serve --bind 127.0.0.1:0 \"$@\"");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(bin)
            .args(args)
            .env(
                "FLOODGATE_JWT_HS256_SECRET",
                std::str::from_utf8(SECRET).unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("start floodgate serve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let keep = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in lines.by_ref().map_while(Result::ok) {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|r| r.split("://").nth(1));
                if let Some(rest) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                    }
                }
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("an address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "floodgate serve printed no address: {}",
                    log.lock().unwrap()
                );
            }
        };
        Serve { child, addr, log }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// `GET /metrics`, the value of the sample that starts with `name` (summed over labels).
    pub fn metric(&self, name: &str) -> u64 {
        let text = http(
            self.addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the process it holds (one the test started, by its PID) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tests/clients/<script>` with `args` under python3: a server of the test's that
/// prints `port N` when it listens. Returns it (killed when dropped) and its port.
#[allow(dead_code)]
pub fn python_server(script: &str, args: &[&std::ffi::OsStr]) -> (KillOnDrop, String) {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let server = KillOnDrop(child);
    let port = read_line_starting(&mut std::io::BufReader::new(stdout), "port ");
    (server, port)
}

/// A CA made by openssl in `dir`, and a server certificate for 127.0.0.1 and localhost that
/// it signs: `(ca.pem, cert.pem, key.pem)`.
pub fn test_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::process::{Command, Stdio};
    // A CA of its own, and a server certificate it signs (webpki refuses a CA certificate
    // used as the server's own).
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("leaf.csr"),
    );
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let mut a: Vec<&std::ffi::OsStr> = vec![
        os("req"),
        os("-x509"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=floodgate test CA"),
    ];
    a.extend(ec.iter().map(|s| os(s)));
    a.extend([
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&a);
    let mut a: Vec<&std::ffi::OsStr> = vec![os("req"), os("-subj"), os("/CN=localhost")];
    a.extend(ec.iter().map(|s| os(s)));
    a.extend([os("-keyout"), key.as_os_str(), os("-out"), csr.as_os_str()]);
    openssl(&a);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-days"),
        os("1"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}
