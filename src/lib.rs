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
mod emitter;
mod error;
mod event;
mod gateway;
mod metrics;
mod reactor;
mod ring;

/// The `floodgate` command line (used by the binary; not a stable API).
#[doc(hidden)]
pub mod cli;

pub use crate::auth::mint_hs256;
pub use crate::config::{Settings, MIN_HS256_SECRET};
pub use crate::core::{CLOSE_GOING_AWAY, CLOSE_PONG_TIMEOUT, CLOSE_SLOW_CONSUMER};
pub use crate::emitter::{Emitter, MAX_USER_LEN};
pub use crate::error::{ConfigError, EmitError, Error};
pub use crate::event::{Event, EventType, NoData, MAX_TYPE_LEN};
pub use crate::gateway::{Gateway, GatewayBuilder, ShutdownReport};
pub use crate::metrics::{MetricsSnapshot, Stats};

/// Internals exposed only for benchmarks and loom/miri harnesses; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::ring::{channel, Consumer, Producer, PushError};
}
