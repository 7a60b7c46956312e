//! A `redis-server` of this process's own: started on a port of 127.0.0.1 (nothing saved
//! unless asked), killed by its PID when dropped. `floodgate bench --engine redis` starts one
//! when no `--redis-url` is given ([`RedisServer::launch`]); the integration tests (through
//! `tests/util`, which includes this file) and the library's unit tests (through
//! `testing`) start theirs with [`RedisServer::start`], which skips or fails a test where
//! `redis-server` is missing. It uses nothing but `std`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` this test started.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    /// Whether it writes an append-only file (survives a restart with its data).
    persistent: bool,
}

impl RedisServer {
    /// Starts one without persistence, or returns `None` (saying so) where `redis-server` is
    /// not installed. Where it must be (`FLOODGATE_TEST_REQUIRE_REDIS`, set by scripts/test,
    /// which installs it), its absence fails the test instead.
    pub fn start(name: &str) -> Option<RedisServer> {
        RedisServer::start_with(name, free_port(), false)
    }

    /// Starts one on `port` (or `None`, as [`start`](Self::start)).
    pub fn start_on(name: &str, port: u16) -> Option<RedisServer> {
        RedisServer::start_with(name, port, false)
    }

    /// Starts one on `port`, with an append-only file (`appendfsync always`) if `persistent`.
    pub fn start_with(name: &str, port: u16, persistent: bool) -> Option<RedisServer> {
        if !installed() {
            assert!(
                std::env::var_os("FLOODGATE_TEST_REQUIRE_REDIS").is_none(),
                "redis-server is required here (scripts/setup installs it)"
            );
            eprintln!("skipped: redis-server is not installed (scripts/setup installs it)");
            return None;
        }
        Some(RedisServer::launch(name, port, persistent).expect("redis-server starts"))
    }

    /// Starts one on `port`, with an append-only file if `persistent`, and waits until it
    /// answers; an error says why not (`redis-server` not installed, or it did not start).
    pub fn launch(name: &str, port: u16, persistent: bool) -> std::io::Result<RedisServer> {
        if !installed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "redis-server is not installed (Debian: apt install redis-server)",
            ));
        }
        let dir =
            std::env::temp_dir().join(format!("floodgate-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let child = spawn(port, &dir, persistent)?;
        let server = RedisServer {
            child,
            port,
            dir,
            persistent,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL: no chance to save anything) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory: with persistence, with its data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.dir, self.persistent).expect("redis-server starts");
        self.wait_ready().expect("redis-server answers");
    }

    /// Sends one command (arguments without spaces) and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis-server is up");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = format!("{}\r\n", args.join(" "));
        s.write_all(line.as_bytes()).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn wait_ready(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut reply)
                        .is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "redis-server did not answer within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether `redis-server` runs here.
fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn spawn(port: u16, dir: &std::path::Path, persistent: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--protected-mode", "yes"]);
    if persistent {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}
