//! floodgate: per-user events from application threads onto WebSocket connections.
//!
//! ```no_run
//! # fn main() -> Result<(), floodgate::Error> {
//! let gw = floodgate::Gateway::builder()
//!     .bind("127.0.0.1:8080")
//!     .jwt_hs256_secret("a-secret-of-at-least-thirty-two-bytes!")
//!     .build()?;
//! let mut em = gw.emitter(); // one per producing thread
//! em.agent_started("user-1", "run-1").expect("ring has room");
//! let data = serde_json::json!({"delta": "Looking at the logs"});
//! em.agent_thinking("user-1", "run-1", &data).expect("ring has room");
//! let report = gw.shutdown()?; // close 1001 to every client, flush, join threads
//! assert_eq!(report.undelivered, 0);
//! # Ok(()) }
//! ```
//!
//! An [`Emitter`] is `Send` but not `Sync` and not `Clone`: each producing thread owns one.
//!
//! ```compile_fail
//! fn needs_sync<T: Sync>() {}
//! needs_sync::<floodgate::Emitter>();
//! ```
//! ```compile_fail
//! fn needs_clone<T: Clone>() {}
//! needs_clone::<floodgate::Emitter>();
//! ```
//!
//! See `ARCHITECTURE.md` for how it works and `docs/PROTOCOL.md` for the wire protocol.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod auth;
mod bench;
mod client;
mod config;
mod core;
mod delivery;
mod devsecret;
mod emitter;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzz;
/// The `floodgate perf-gate` regression gate (used by the binary; not a stable API).
#[doc(hidden)]
pub mod gate;
mod gateway;
mod ingest;
mod json;
/// The `floodgate load` harness (used by the binary and the tests; not a stable API).
#[doc(hidden)]
pub mod load;
mod metrics;
mod park;
mod reactor;
mod receipt;
mod record;
mod ring;
mod spool;

/// The `floodgate` command line (used by the binary; not a stable API).
#[doc(hidden)]
pub mod cli;

pub use crate::auth::mint_hs256;
pub use crate::config::{Settings, MIN_HS256_SECRET};
pub use crate::core::{
    CLOSE_AUTH_REFUSED, CLOSE_DISCONNECTED, CLOSE_GOING_AWAY, CLOSE_PONG_TIMEOUT,
    CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED,
};
pub use crate::delivery::Delivery;
pub use crate::emitter::Emitter;
pub use crate::error::{ConfigError, EmitError, Error};
pub use crate::event::{Event, EventType, NoData, MAX_TYPE_LEN, RESERVED_TYPES};
pub use crate::gateway::{Gateway, GatewayBuilder, ShutdownReport};
pub use crate::metrics::IngestStats;
pub use crate::metrics::{MetricsSnapshot, Stats};
pub use crate::receipt::{Receipt, ReceiptStatus};
pub use crate::record::MAX_USER_LEN;
pub use crate::spool::{FsyncPolicy, SpoolError};

/// Internals exposed only for the criterion benchmarks; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::ring::{channel, Consumer, Producer, PushError};

    /// Encodes an event body as the emitter does.
    pub fn encode_body<D: serde::Serialize + ?Sized>(
        ev: &crate::Event<'_, D>,
        ts: u64,
        out: &mut Vec<u8>,
    ) {
        ev.encode_body(ts, out).expect("bench data serializes");
    }

    /// Encodes one spool record (header, CRC and `frame`) for `user`'s event `seq`, as the
    /// core does while routing with a spool.
    pub fn spool_encode(out: &mut Vec<u8>, user: &[u8], seq: u64, frame: &[u8]) -> usize {
        let rec = crate::core::durable::SpoolRecord {
            kind: crate::core::durable::KIND_EVENT,
            flags: 0,
            user,
            epoch: 1,
            seq,
            ts: 0,
            frame: &[],
        };
        crate::core::durable::encode(out, &rec, &[frame])
    }

    /// A sans-IO shard core with `users` users of one connection each, for routing benches.
    pub struct RouteBench {
        core: crate::core::Core,
        now: std::time::Instant,
    }

    impl RouteBench {
        /// Creates the core (with resume history on or off) and adopts one connection per user
        /// `u0..u{users}`.
        pub fn new(users: usize, history: bool) -> Self {
            let mut cfg =
                crate::config::Config::defaults(crate::config::JwtKey::Hs256(vec![0; 32]));
            if !history {
                cfg.history_max_events = 0;
            }
            let now = std::time::Instant::now();
            let boards = crate::core::Boards::new(cfg.receipt_capacity);
            let mut core = crate::core::Core::new(cfg.core(), boards, now);
            for i in 0..users {
                let user = format!("u{i}").into_bytes().into_boxed_slice();
                core.adopt(crate::core::ConnKind::User(user), b"", b"", None, now)
                    .expect("adopt");
            }
            RouteBench { core, now }
        }

        /// Routes one ring record (as built by [`record`]).
        pub fn route(&mut self, rec: &[u8]) {
            self.core.route(rec, self.now, 0);
        }

        /// Ends a pass: every due connection's buffer is "written" in full. Returns the frames.
        pub fn flush(&mut self) -> usize {
            let mut due = Vec::new();
            self.core.take_writable(self.now, true, &mut due);
            for &id in &due {
                let n = self.core.conn(id).out().len();
                self.core.on_written(id, n);
            }
            due.len()
        }
    }

    /// A core holding `events` events of one user in history, for measuring replay.
    pub struct ReplayBench {
        core: crate::core::Core,
        now: std::time::Instant,
        events: u64,
    }

    impl ReplayBench {
        /// Routes `events` events with `body` to a user nobody is connected as.
        pub fn new(events: u64, body: &[u8]) -> Self {
            let mut cfg =
                crate::config::Config::defaults(crate::config::JwtKey::Hs256(vec![0; 32]));
            cfg.history_max_events = events as usize;
            cfg.history_max_bytes = 1 << 30;
            cfg.history_total_bytes = 1 << 30;
            cfg.shards = 1; // the whole history budget on this one core
            let now = std::time::Instant::now();
            let boards = crate::core::Boards::new(cfg.receipt_capacity);
            let mut core = crate::core::Core::new(cfg.core(), boards, now);
            let rec = record("r", body);
            for _ in 0..events {
                core.route(&rec, now, 0);
            }
            ReplayBench { core, now, events }
        }

        /// Connects as the user with cursor `since = 0`, writes everything it replays (as a
        /// socket taking every byte would), disconnects; returns the bytes written.
        pub fn replay_all(&mut self) -> usize {
            let user = crate::core::ConnKind::User(b"r"[..].into());
            let cursor = crate::core::Cursor {
                since: 0,
                epoch: None,
            };
            let id = self
                .core
                .adopt(user, b"", b"", Some(cursor), self.now)
                .expect("adopt");
            let mut bytes = 0;
            let mut due = Vec::new();
            loop {
                self.core
                    .pump_replays(self.now, &mut crate::core::durable::NoCold);
                due.clear();
                self.core.take_writable(self.now, true, &mut due);
                let n = self.core.conn(id).out().len();
                if n == 0 {
                    break;
                }
                self.core.on_written(id, n);
                bytes += n;
            }
            self.core.remove(id);
            bytes
        }

        /// Events held.
        pub fn events(&self) -> u64 {
            self.events
        }
    }

    /// A gateway holding `events` events of one user that nobody received, for measuring
    /// what a reconnecting client's replay costs end to end, over a real socket.
    pub struct SocketReplayBench {
        gw: Option<crate::Gateway>,
        token: String,
        epoch: String,
        events: u64,
        spool: Option<std::path::PathBuf>,
    }

    impl SocketReplayBench {
        /// Emits `events` events with a ~150-byte body to user `r`, kept in memory history or
        /// (with `spool`) only in a spool under that directory (no memory history).
        pub fn new(events: u64, spool: Option<&std::path::Path>) -> Self {
            let secret = [7u8; 32];
            let spool = spool.map(|d| d.join(format!("replay-{}", std::process::id())));
            let mut b = crate::Gateway::builder()
                .bind("127.0.0.1:0")
                .jwt_hs256_secret(secret)
                .shards(1)
                .ring_capacity(64 << 20);
            b = match &spool {
                Some(dir) => b.spool_dir(dir).history_max_events(0),
                None => b
                    .history_max_events(events as usize)
                    .history_max_bytes(1 << 30)
                    .history_total_bytes(1 << 30),
            };
            let gw = b.build().expect("gateway");
            let token = crate::auth::mint_hs256(&secret, "r", std::time::Duration::from_secs(3600))
                .expect("token");
            let (stream, early) = crate::client::connect(
                gw.local_addr(),
                "/ws",
                &format!("Authorization: Bearer {token}\r\n"),
                std::time::Duration::from_secs(5),
            )
            .expect("connect");
            let mut reader = crate::client::FrameReader::new(early, 64 << 10);
            let mut epoch = None;
            let mut s = stream;
            loop {
                reader
                    .frames(|kind, p| {
                        if kind == crate::client::Kind::Text {
                            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
                            epoch = v["epoch"].as_str().map(str::to_owned);
                        }
                    })
                    .expect("frames");
                if epoch.is_some() {
                    break;
                }
                reader.fill(&mut s).expect("hello");
            }
            drop(s);
            let mut em = gw.emitter();
            let data = serde_json::json!({ "text": "x".repeat(100) });
            for _ in 0..events {
                while em.emit("r", crate::Event::custom("missed", &data)).is_err() {
                    std::thread::yield_now();
                }
            }
            while gw.metrics().stats.events_received < events {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            SocketReplayBench {
                gw: Some(gw),
                token,
                epoch: epoch.expect("epoch"),
                events,
                spool,
            }
        }

        /// Connects with `since=0` and reads until every event arrived; returns the count.
        pub fn replay_all(&mut self) -> u64 {
            let gw = self.gw.as_ref().expect("running");
            let (mut s, early) = crate::client::connect(
                gw.local_addr(),
                &format!("/ws?since=0&epoch={}", self.epoch),
                &format!("Authorization: Bearer {}\r\n", self.token),
                std::time::Duration::from_secs(5),
            )
            .expect("connect");
            let mut reader = crate::client::FrameReader::new(early, 256 << 10);
            let mut got = 0u64;
            loop {
                reader
                    .frames(|_, p| got += u64::from(p.starts_with(b"{\"seq\":")))
                    .expect("frames");
                if got >= self.events {
                    return got;
                }
                reader.fill(&mut s).expect("read");
            }
        }

        /// Events a replay sends.
        pub fn events(&self) -> u64 {
            self.events
        }
    }

    impl Drop for SocketReplayBench {
        fn drop(&mut self) {
            if let Some(gw) = self.gw.take() {
                let _ = gw.shutdown();
            }
            if let Some(dir) = &self.spool {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Runs a quiet `floodgate bench --chaos` at `rate` events/s (0 = as fast as possible),
    /// with a spool under `spool` if given, and returns its report as JSON (the fields of
    /// `floodgate bench --json`).
    pub fn run_chaos(
        connections: usize,
        events: u64,
        rate: u64,
        history_max_events: usize,
        spool: Option<std::path::PathBuf>,
    ) -> serde_json::Value {
        let opts = crate::bench::BenchOptions {
            connections,
            events,
            rate,
            history_max_events,
            spool_dir: spool,
            chaos: true,
            progress: false,
            ..Default::default()
        };
        let report = crate::bench::run(&opts).expect("bench runs");
        serde_json::to_value(&report).expect("report serializes")
    }

    /// Runs a quiet `floodgate bench` with `connections` clients and `events` events; true when
    /// every event arrived once, in order, at the right client.
    pub fn run_bench(connections: usize, events: u64) -> bool {
        let opts = crate::bench::BenchOptions {
            connections,
            events,
            progress: false,
            ..Default::default()
        };
        crate::bench::run(&opts).expect("bench runs").is_clean()
    }

    /// Builds a ring record for `user` with `body`, as the emitter lays it out.
    pub fn record(user: &str, body: &[u8]) -> Vec<u8> {
        record_flags(user, body, false)
    }

    /// The load client's per-frame work: the frame reader, then the `/seq` and `/ts` members
    /// by JSON pointer.
    pub struct ClientParse {
        reader: crate::client::FrameReader,
        seq: crate::load::Pointer,
        ts: crate::load::Pointer,
    }

    impl ClientParse {
        /// A reader whose buffer takes `bytes` at once (allocated here, not per parse).
        pub fn new(bytes: usize) -> Self {
            ClientParse {
                reader: crate::client::FrameReader::new(Vec::new(), bytes + 1024),
                seq: crate::load::Pointer::parse("/seq").expect("valid"),
                ts: crate::load::Pointer::parse("/ts").expect("valid"),
            }
        }

        /// Reads `bytes` (whole server frames) as if from a socket and decodes every frame;
        /// returns a sum of what was read, so nothing is optimised away.
        pub fn parse(&mut self, mut bytes: &[u8]) -> u64 {
            let (seq, ts) = (&self.seq, &self.ts);
            let mut sum = 0u64;
            while !bytes.is_empty() {
                self.reader.fill(&mut bytes).expect("reading a slice");
                self.reader
                    .frames(|_, p| {
                        sum = sum
                            .wrapping_add(seq.u64_in(p).unwrap_or(0))
                            .wrapping_add(ts.u64_in(p).unwrap_or(0));
                    })
                    .expect("valid frames");
            }
            sum
        }
    }

    /// Like [`record`], for an event that needs an ack when `ack` is set.
    pub fn record_flags(user: &str, body: &[u8], ack: bool) -> Vec<u8> {
        let mut r = Vec::with_capacity(10 + user.len() + body.len());
        crate::record::encode(&mut r, 0, ack, user.as_bytes(), None, body);
        r
    }
}
