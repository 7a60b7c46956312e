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
#[cfg(feature = "cli")]
mod bench;
mod config;
mod core;
mod dashboard;
mod delivery;
#[cfg(feature = "cli")]
mod devsecret;
mod emitter;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzz;
mod gateway;
mod ingest;
mod json;
mod jwks;
mod metrics;
mod park;
mod reactor;
mod receipt;
mod record;
#[cfg(feature = "redis")]
mod redis_engine;
mod ring;
mod spool;
#[cfg(feature = "tls")]
mod tls;

/// The `floodgate` command line (used by the binary; not a stable API).
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

/// The README's Rust code blocks, compiled (and run unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::auth::mint_hs256;
pub use crate::config::{Engine, Settings, MIN_HS256_SECRET};
pub use crate::core::{
    CLOSE_AUTH_REFUSED, CLOSE_DISCONNECTED, CLOSE_GOING_AWAY, CLOSE_PONG_TIMEOUT,
    CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED,
};
pub use crate::delivery::Delivery;
pub use crate::emitter::Emitter;
pub use crate::error::{ConfigError, EmitError, EmitErrorKind, Error};
pub use crate::event::{Event, EventType, NoData, MAX_TYPE_LEN, RESERVED_TYPES};
pub use crate::gateway::{Gateway, GatewayBuilder, ShutdownReport};
pub use crate::metrics::IngestStats;
pub use crate::metrics::{MetricsSnapshot, RedisStats, Stats};
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

    /// Runs a quiet `floodgate bench --chaos` at `rate` events/s (0 = as fast as possible),
    /// with a spool under `spool` if given, and returns its report as JSON (the fields of
    /// `floodgate bench --json`).
    #[cfg(feature = "cli")]
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
    #[cfg(feature = "cli")]
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

    /// Like [`record`], for an event that needs an ack when `ack` is set.
    pub fn record_flags(user: &str, body: &[u8], ack: bool) -> Vec<u8> {
        let mut r = Vec::with_capacity(10 + user.len() + body.len());
        crate::record::encode(&mut r, 0, ack, user.as_bytes(), None, body);
        r
    }
}
