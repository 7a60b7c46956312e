//! A real `redis-server` for tests: started on a free port of 127.0.0.1 with nothing saved,
//! stopped (by its PID) when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A stream entry as XRANGE answers: its id and its fields.
pub(crate) type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// A `redis-server` this test started.
pub(crate) struct RedisServer {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one, or returns `None` (saying so) where `redis-server` is not installed. Where
    /// it must be (`FLOODGATE_TEST_REQUIRE_REDIS`, set by scripts/test, which installs it), its
    /// absence fails the test instead.
    pub(crate) fn start(name: &str) -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(name, port)
    }

    /// Starts one on `port` (or `None`, as [`start`](Self::start)).
    pub(crate) fn start_on(name: &str, port: u16) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("FLOODGATE_TEST_REQUIRE_REDIS").is_none(),
                "redis-server is required here (scripts/setup installs it)"
            );
            eprintln!("skipped: redis-server is not installed (scripts/setup installs it)");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("floodgate-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = server.connect() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Some(server);
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A new connection to it.
    pub(crate) fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
