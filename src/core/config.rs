//! What the core is configured with: built by the gateway from its settings (the core never
//! sees the gateway's `Config`), or by a test directly.

use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

use super::batch::BatchPolicy;
use super::breaker::BreakerPolicy;
use super::history::HistoryLimits;

/// The parts of the configuration the core needs.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub batch: BatchPolicy,
    pub max_outbound_bytes: usize,
    pub max_connections_per_user: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    pub max_offline_users: usize,
    pub ws: WebSocketConfig,
    /// Per-user history limits.
    pub history: HistoryLimits,
    /// Bytes of the shard's history log: its whole memory for history.
    pub history_budget: usize,
    /// Mixed into every stream epoch this shard creates (random per process).
    pub epoch_seed: u64,
    /// Per-connection circuit breakers. Their `high_water` is always half of
    /// `max_outbound_bytes`: [`Core::new`](super::Core::new) sets it.
    pub breaker: BreakerPolicy,
    /// Encode every routed event (and every ack) into `Core::spool_out` for the spool.
    pub spool: bool,
    /// Spool bytes between two checkpoints of a user's cold index.
    pub spool_checkpoint_bytes: u64,
    /// An event that needs an ack and gets none this long after routing is dead-lettered.
    pub ack_timeout: Duration,
    /// Unacked events kept per user; past this the oldest is dead-lettered.
    pub ack_max_pending: usize,
    /// Streams are sequenced by Redis (the Redis engine): events come with their `seq`, and a
    /// user's stream state is asked of Redis before the node's first `hello` for it.
    pub redis: bool,
}

impl Default for CoreConfig {
    /// The documented defaults (`serve --help`, the builder's docs, docs/LIMITS.md) for one shard;
    /// `config` checks that its own defaults give the same.
    fn default() -> Self {
        let mut ws = WebSocketConfig::default();
        ws.read_buffer_size = 1024;
        ws.write_buffer_size = 0;
        ws.max_frame_size = Some(64 << 10);
        ws.max_message_size = Some(1 << 20);
        let max_outbound_bytes = 8 << 20;
        CoreConfig {
            batch: BatchPolicy {
                max_events: 1024,
                max_delay: Duration::ZERO,
            },
            max_outbound_bytes,
            max_connections_per_user: 64,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_offline_users: 1_000_000,
            ws,
            history: HistoryLimits {
                max_events: 1024,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(600),
            },
            history_budget: 64 << 20,
            epoch_seed: 0,
            breaker: BreakerPolicy {
                high_water: max_outbound_bytes / 2,
                trip_after: Duration::from_secs(1),
                cooldown: Duration::from_secs(30),
            },
            spool: false,
            spool_checkpoint_bytes: checkpoint_spacing(64 << 20),
            ack_timeout: Duration::from_secs(600),
            ack_max_pending: 1024,
            redis: false,
        }
    }
}

/// Spool bytes between two checkpoints of a user's cold index for segments of `segment_bytes`:
/// a resume older than the dense index scans at most about this much of other users' records.
pub(crate) fn checkpoint_spacing(segment_bytes: u64) -> u64 {
    (segment_bytes / 4).clamp(4096, 1 << 20)
}
