//! Counters. Each reactor shard keeps plain counters ([`Stats`]) and publishes them once per pass
//! into its own cache-padded block of atomics ([`Published`]); readers (the `/metrics` endpoint,
//! [`Gateway::metrics`](crate::Gateway::metrics), the bench) sum the blocks. No atomic
//! read-modify-write happens per event.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

pub use crate::core::stats::Stats;
use crate::core::stats::{BATCH_BOUNDS, LATENCY_BOUNDS_US};

/// The published copy of one shard's [`Stats`]: one atomic per value.
pub(crate) struct Published(Box<[AtomicU64]>);

impl Default for Published {
    fn default() -> Self {
        Published((0..Stats::LEN).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Published {
    /// Copies `s` in. Relaxed: each value is independent and monotonic (or a gauge); readers
    /// need no ordering between them.
    pub(crate) fn publish(&self, s: &Stats) {
        for (a, v) in self.0.iter().zip(s.values()) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Adds the published values to `into`. Relaxed: see `publish`.
    pub(crate) fn add_to(&self, into: &mut Stats) {
        for (v, a) in into.values_mut().zip(self.0.iter()) {
            *v += a.load(Ordering::Relaxed);
        }
    }
}

/// A point-in-time sum of every shard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The summed counters.
    pub stats: Stats,
    /// Events refused by emitters because a ring was full ([`EmitError::Full`](crate::EmitError)).
    pub events_rejected_full: u64,
    /// The ingest endpoints (`/api/publish`, `/api/ingest`).
    pub ingest: IngestStats,
    /// The Redis engine's threads (all zero on the local engine).
    pub redis: RedisStats,
}

impl MetricsSnapshot {
    /// Average event frames per socket write that carried any.
    pub fn frames_per_write(&self) -> f64 {
        let writes: u64 = self.stats.batch_buckets.iter().sum();
        if writes == 0 {
            0.0
        } else {
            self.stats.frames_written as f64 / writes as f64
        }
    }

    /// Renders the Prometheus text exposition format (version 0.0.4): every family of
    /// `FAMILIES` and `HISTOGRAMS` (src/metrics.rs; listed in docs/METRICS.md), each with its
    /// `HELP` and `TYPE`.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(8192);
        for f in FAMILIES {
            let _ = writeln!(
                out,
                "# HELP floodgate_{0} {1}\n# TYPE floodgate_{0} {2}",
                f.name,
                f.help,
                f.kind.as_str()
            );
            for s in f.series {
                let _ = writeln!(out, "floodgate_{}{} {}", f.name, s.labels, (s.value)(self));
            }
        }
        for h in HISTOGRAMS {
            let _ = writeln!(
                out,
                "# HELP floodgate_{0} {1}\n# TYPE floodgate_{0} histogram",
                h.name, h.help
            );
            let buckets = (h.buckets)(&self.stats);
            let mut cum = 0;
            for (bound, n) in h.bounds.iter().zip(buckets) {
                cum += n;
                let le = *bound as f64 / h.scale;
                let _ = writeln!(out, "floodgate_{}_bucket{{le=\"{le}\"}} {cum}", h.name);
            }
            cum += buckets[h.bounds.len()];
            let _ = writeln!(out, "floodgate_{}_bucket{{le=\"+Inf\"}} {cum}", h.name);
            let _ = writeln!(out, "floodgate_{}_sum {}", h.name, (h.sum)(&self.stats));
            let _ = writeln!(out, "floodgate_{}_count {cum}", h.name);
        }
        out
    }
}

/// The type of a family of counters or gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One series of a family: its labels and the value it shows.
struct Series {
    /// The value's path in [`MetricsSnapshot`] (`stats.events_delivered`), for docs and tests.
    #[cfg_attr(not(test), allow(dead_code))]
    field: &'static str,
    /// `{reason="auth"}`, or empty.
    labels: &'static str,
    value: fn(&MetricsSnapshot) -> u64,
}

/// One metric family of `/metrics`.
struct Family {
    /// Without the `floodgate_` prefix.
    name: &'static str,
    kind: Kind,
    help: &'static str,
    series: &'static [Series],
}

/// A histogram family: its buckets (cumulated when rendered), its sum and its count.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    /// Upper bounds, each rendered in `le` as `bound / scale`; there is one bucket more than
    /// bounds (+Inf).
    bounds: &'static [u64],
    scale: f64,
    buckets: fn(&Stats) -> &[u64],
    /// The field holding the sum, for docs and tests.
    #[cfg_attr(not(test), allow(dead_code))]
    sum_field: &'static str,
    sum: fn(&Stats) -> f64,
}

/// A series of `MetricsSnapshot::stats.$field`, with optional labels.
macro_rules! stat {
    ($field:ident) => {
        stat!($field, "")
    };
    ($field:ident, $labels:literal) => {
        Series {
            field: concat!("stats.", stringify!($field)),
            labels: $labels,
            value: |m| m.stats.$field,
        }
    };
}

/// A series of a field of [`MetricsSnapshot`] outside `stats` (`ingest.batches`).
macro_rules! snap {
    ($($path:ident).+, $labels:literal) => {
        Series {
            field: stringify!($($path).+),
            labels: $labels,
            value: |m| m.$($path).+,
        }
    };
}

/// Every counter and gauge family of `/metrics`: the one description of each metric, from
/// which `to_prometheus` renders and docs/METRICS.md is generated (tests keep both, and
/// [`Stats`], in step).
const FAMILIES: &[Family] = &[
    Family {
        name: "connections",
        kind: Kind::Gauge,
        help: "Open WebSocket connections.",
        series: &[stat!(connections_open)],
    },
    Family {
        name: "connections_accepted_total",
        kind: Kind::Counter,
        help: "WebSocket upgrades completed.",
        series: &[stat!(connections_accepted)],
    },
    Family {
        name: "connections_rejected_total",
        kind: Kind::Counter,
        help: "Requests refused before upgrade, by reason.",
        series: &[stat!(rejected_auth, "{reason=\"auth\"}"), stat!(rejected_limit, "{reason=\"limit\"}"), stat!(rejected_origin, "{reason=\"origin\"}"), stat!(rejected_bad_request, "{reason=\"bad_request\"}")],
    },
    Family {
        name: "auth_renewed_total",
        kind: Kind::Counter,
        help: "In-band auth messages whose fresh token renewed a connection.",
        series: &[stat!(reauthenticated)],
    },
    Family {
        name: "accept_errors_total",
        kind: Kind::Counter,
        help: "Failed accept calls: out of file descriptors (the waiting connection gets 503), or other.",
        series: &[stat!(accept_fd_exhausted, "{reason=\"fd_exhausted\"}"), stat!(accept_errors, "{reason=\"other\"}")],
    },
    Family {
        name: "connections_closed_total",
        kind: Kind::Counter,
        help: "Connections closed by the server for misbehaviour, by reason.",
        series: &[stat!(closed_slow_consumer, "{reason=\"slow_consumer\"}"), stat!(closed_token_expired, "{reason=\"token_expired\"}"), stat!(closed_disconnected, "{reason=\"disconnected\"}"), stat!(closed_auth_refused, "{reason=\"auth_refused\"}"), stat!(closed_pong_timeout, "{reason=\"pong_timeout\"}")],
    },
    Family {
        name: "events_emitted_total",
        kind: Kind::Counter,
        help: "Events taken from emitter rings by reactors.",
        series: &[stat!(events_received)],
    },
    Family {
        name: "events_delivered_total",
        kind: Kind::Counter,
        help: "Event frames fully written to a socket.",
        series: &[stat!(events_delivered)],
    },
    Family {
        name: "events_dropped_total",
        kind: Kind::Counter,
        help: "Events not delivered, by reason.",
        series: &[stat!(events_dropped, "{reason=\"connection\"}"), snap!(events_rejected_full, "{reason=\"ring_full\"}")],
    },
    Family {
        name: "events_without_connection_total",
        kind: Kind::Counter,
        help: "Events emitted while their user had no open connection (kept in history and the spool for a resume, not dropped).",
        series: &[stat!(events_no_listener)],
    },
    Family {
        name: "bytes_written_total",
        kind: Kind::Counter,
        help: "Bytes written to sockets.",
        series: &[stat!(bytes_written)],
    },
    Family {
        name: "write_syscalls_total",
        kind: Kind::Counter,
        help: "write(2) calls on sockets.",
        series: &[stat!(write_syscalls)],
    },
    Family {
        name: "write_incomplete_total",
        kind: Kind::Counter,
        help: "write(2) calls that did not take the whole buffer, by outcome.",
        series: &[stat!(write_blocked, "{outcome=\"eagain\"}"), stat!(write_partial, "{outcome=\"partial\"}")],
    },
    Family {
        name: "client_messages_total",
        kind: Kind::Counter,
        help: "Data messages received from clients.",
        series: &[stat!(client_messages)],
    },
    Family {
        name: "resumes_total",
        kind: Kind::Counter,
        help: "Connections that asked to resume from a cursor.",
        series: &[stat!(resumes)],
    },
    Family {
        name: "resume_gaps_total",
        kind: Kind::Counter,
        help: "gap frames sent to resuming clients (events that could not be replayed).",
        series: &[stat!(gaps)],
    },
    Family {
        name: "events_replayed_total",
        kind: Kind::Counter,
        help: "Event frames replayed from history to resuming connections.",
        series: &[stat!(events_replayed)],
    },
    Family {
        name: "history_bytes",
        kind: Kind::Gauge,
        help: "Bytes of memory held by the event history log (at most history_total_bytes).",
        series: &[stat!(history_bytes)],
    },
    Family {
        name: "breaker_transitions_total",
        kind: Kind::Counter,
        help: "Connection circuit breaker transitions, by the state entered.",
        series: &[stat!(breaker_opened, "{to=\"open\"}"), stat!(breaker_half_opened, "{to=\"half_open\"}"), stat!(breaker_closed, "{to=\"closed\"}")],
    },
    Family {
        name: "breaker_trips_total",
        kind: Kind::Counter,
        help: "Connection circuit breakers opened, by cause.",
        series: &[stat!(breaker_trips_backlog, "{cause=\"backlog\"}"), stat!(breaker_trips_missed_pong, "{cause=\"missed_pong\"}"), stat!(breaker_trips_write_error, "{cause=\"write_error\"}")],
    },
    Family {
        name: "breakers_open",
        kind: Kind::Gauge,
        help: "Connections whose circuit breaker is open.",
        series: &[stat!(breakers_open)],
    },
    Family {
        name: "events_diverted_total",
        kind: Kind::Counter,
        help: "Queued events dropped from memory when a breaker opened (kept in history for replay).",
        series: &[stat!(events_diverted)],
    },
    Family {
        name: "events_coalesced_total",
        kind: Kind::Counter,
        help: "agent_thinking events merged into the frame before them for a connection that was behind.",
        series: &[stat!(events_coalesced)],
    },
    Family {
        name: "events_replayed_from_spool_total",
        kind: Kind::Counter,
        help: "Event frames replayed from the spool (older than in-memory history).",
        series: &[stat!(events_replayed_cold)],
    },
    Family {
        name: "streams_recovered",
        kind: Kind::Gauge,
        help: "User streams (epoch and seq) recovered from the spool at start.",
        series: &[stat!(streams_recovered)],
    },
    Family {
        name: "streams_discarded_at_start",
        kind: Kind::Gauge,
        help: "Streams the spool held but could not vouch for at start (they got new epochs).",
        series: &[stat!(streams_discarded_at_start)],
    },
    Family {
        name: "events_carried_to_new_epoch",
        kind: Kind::Gauge,
        help: "Unacked events of those streams sent again at start as new events of the new epoch.",
        series: &[stat!(events_carried_to_new_epoch)],
    },
    Family {
        name: "spool_bytes_cut_at_start",
        kind: Kind::Gauge,
        help: "Bytes the spool cut at start: torn tails, and corrupted records with spool_repair.",
        series: &[stat!(spool_bytes_cut_at_start)],
    },
    Family {
        name: "spool_bytes_written_total",
        kind: Kind::Counter,
        help: "Bytes written to the spool.",
        series: &[stat!(spool_bytes_written)],
    },
    Family {
        name: "spool_errors_total",
        kind: Kind::Counter,
        help: "Spool operations that failed, by operation.",
        series: &[stat!(spool_write_errors, "{op=\"write\"}"), stat!(spool_read_errors, "{op=\"read\"}"), stat!(dead_letter_write_errors, "{op=\"dead_letter\"}")],
    },
    Family {
        name: "spool_stalled",
        kind: Kind::Gauge,
        help: "Shards whose spool cannot write now: they hold back new events (no client sees an event the spool does not have) and retry.",
        series: &[stat!(spool_stalled)],
    },
    Family {
        name: "spool_fsyncs_total",
        kind: Kind::Counter,
        help: "fdatasync calls on spool segments.",
        series: &[stat!(spool_fsyncs)],
    },
    Family {
        name: "spool_segments_deleted_total",
        kind: Kind::Counter,
        help: "Spool segments deleted by retention (size or age).",
        series: &[stat!(spool_segments_deleted)],
    },
    Family {
        name: "spool_bytes",
        kind: Kind::Gauge,
        help: "Bytes held in spool segments.",
        series: &[stat!(spool_bytes)],
    },
    Family {
        name: "acks_received_total",
        kind: Kind::Counter,
        help: "Ack messages received from clients.",
        series: &[stat!(acks_received)],
    },
    Family {
        name: "events_acked_total",
        kind: Kind::Counter,
        help: "Events that needed an ack and got one.",
        series: &[stat!(events_acked)],
    },
    Family {
        name: "events_redelivered_total",
        kind: Kind::Counter,
        help: "Unacked events sent again to a connection that started.",
        series: &[stat!(events_redelivered)],
    },
    Family {
        name: "events_dead_lettered_total",
        kind: Kind::Counter,
        help: "Unacked events written to the dead-letter file (ack timeout, overflow, dropped stream).",
        series: &[stat!(events_dead_lettered)],
    },
    Family {
        name: "redis_up",
        kind: Kind::Gauge,
        help: "Redis engine: 1 while the node's thread reaches Redis (publisher: its last round trip succeeded; reader: it reads the log), by thread; 0 on the local engine.",
        series: &[snap!(redis.publisher_up, "{thread=\"publisher\"}"), snap!(redis.reader_up, "{thread=\"reader\"}")],
    },
    Family {
        name: "redis_batches_sequenced_total",
        kind: Kind::Counter,
        help: "Redis engine: batches of this node's events Redis sequenced (one round trip each).",
        series: &[snap!(redis.batches_sequenced, "")],
    },
    Family {
        name: "redis_events_sequenced_total",
        kind: Kind::Counter,
        help: "Redis engine: this node's events Redis sequenced.",
        series: &[snap!(redis.events_sequenced, "")],
    },
    Family {
        name: "redis_failures_total",
        kind: Kind::Counter,
        help: "Redis engine: round trips or connections that failed, by thread (each is retried with backoff; events wait in the rings, emit returns Full once they fill).",
        series: &[snap!(redis.publisher_failures, "{thread=\"publisher\"}"), snap!(redis.reader_failures, "{thread=\"reader\"}")],
    },
    Family {
        name: "redis_log_events_read_total",
        kind: Kind::Counter,
        help: "Redis engine: events of every node read from the log and routed here.",
        series: &[snap!(redis.events_read, "")],
    },
    Family {
        name: "redis_log_entries_skipped_total",
        kind: Kind::Counter,
        help: "Redis engine: log entries that were not valid batches (skipped).",
        series: &[snap!(redis.bad_entries, "")],
    },
    Family {
        name: "redis_log_continuity_lost_total",
        kind: Kind::Counter,
        help: "Redis engine: times entries of the log were missed (trimmed before they were read, or lost with Redis); streams with connections are checked against Redis again and holes are sent as gaps.",
        series: &[snap!(redis.continuity_lost, "")],
    },
    Family {
        name: "redis_syncs_total",
        kind: Kind::Counter,
        help: "Redis engine: stream states read from Redis for a user's first connection on this node.",
        series: &[stat!(sync_requests)],
    },
    Family {
        name: "redis_events_undeliverable_total",
        kind: Kind::Counter,
        help: "Redis engine: events read from the log that no shard ring could take (larger than this node's rings allow).",
        series: &[snap!(redis.undeliverable, "")],
    },
    Family {
        name: "events_duplicate_total",
        kind: Kind::Counter,
        help: "Redis engine: events that reached a shard again (a seq already routed), dropped.",
        series: &[stat!(events_duplicate)],
    },
    Family {
        name: "stream_holes_total",
        kind: Kind::Counter,
        help: "Redis engine: holes in a stream this node missed, each sent to its connections as a gap (reason missed).",
        series: &[stat!(stream_holes)],
    },
    Family {
        name: "redis_acks_from_other_nodes_total",
        kind: Kind::Counter,
        help: "Redis engine: client acks made on other nodes that settled events here (read from the log).",
        series: &[stat!(acks_from_other_nodes)],
    },
    Family {
        name: "redis_history_events_read_total",
        kind: Kind::Counter,
        help: "Redis engine: older events read from Redis for connections that resume on a node that never received them (into history, or for that connection alone).",
        series: &[stat!(events_from_redis_history)],
    },
    Family {
        name: "redis_resumes_from_redis_total",
        kind: Kind::Counter,
        help: "Redis engine: resumes that began before this node's history and got the events between from Redis.",
        series: &[stat!(resumed_from_redis)],
    },
    Family {
        name: "redis_unacked_left_to_origin_total",
        kind: Kind::Counter,
        help: "Redis engine: unacked events of other nodes given up here (timeout, overflow, dropped stream), left to the node that emitted them to dead-letter.",
        series: &[stat!(unacked_left_to_origin)],
    },
    Family {
        name: "connections_closed_sync_timeout_total",
        kind: Kind::Counter,
        help: "Redis engine: connections closed with 1013 because Redis did not give their stream's state within 10 s.",
        series: &[stat!(closed_sync_timeout)],
    },
    Family {
        name: "client_messages_ignored_total",
        kind: Kind::Counter,
        help: "Text messages from clients on /ws that were not an ack.",
        series: &[stat!(client_messages_ignored)],
    },
    Family {
        name: "ingest_events_total",
        kind: Kind::Counter,
        help: "Events received on the ingest endpoints, by outcome (rejected: refused one by one, see the answer's codes).",
        series: &[snap!(ingest.events_accepted, "{outcome=\"accepted\"}"), snap!(ingest.events_rejected, "{outcome=\"rejected\"}"), snap!(ingest.duplicates, "{outcome=\"duplicate\"}")],
    },
    Family {
        name: "ingest_batches_total",
        kind: Kind::Counter,
        help: "Batches received on the ingest endpoints, by outcome.",
        series: &[snap!(ingest.batches, "{outcome=\"answered\"}"), snap!(ingest.batches_refused, "{outcome=\"refused\"}"), snap!(ingest.rate_limited, "{outcome=\"rate_limited\"}")],
    },
    Family {
        name: "ingest_connections",
        kind: Kind::Gauge,
        help: "Open ingest connections (POST keep-alive and /api/ingest sockets).",
        series: &[snap!(ingest.connections, "")],
    },
    Family {
        name: "ingest_connections_closed_idle_total",
        kind: Kind::Counter,
        help: "Ingest connections closed after ingest_idle_timeout without a byte from the publisher.",
        series: &[snap!(ingest.closed_idle, "")],
    },
    Family {
        name: "reactor_passes_total",
        kind: Kind::Counter,
        help: "Reactor loop passes.",
        series: &[stat!(passes)],
    },
];

/// The histogram families of `/metrics`.
const HISTOGRAMS: &[HistogramFamily] = &[
    HistogramFamily {
        name: "batch_frames",
        help: "Event frames per socket write.",
        bounds: &BATCH_BOUNDS,
        scale: 1.0,
        buckets: |s| &s.batch_buckets,
        sum_field: "stats.frames_written",
        sum: |s| s.frames_written as f64,
    },
    HistogramFamily {
        name: "queue_latency_seconds",
        help: "Emit to queued-for-write latency.",
        bounds: &LATENCY_BOUNDS_US,
        scale: 1e6,
        buckets: |s| &s.latency_buckets,
        sum_field: "stats.latency_sum_ns",
        sum: |s| s.latency_sum_ns as f64 / 1e9,
    },
];

/// docs/METRICS.md as generated from [`FAMILIES`] and [`HISTOGRAMS`] (a test compares it
/// with the committed file).
#[cfg(test)]
fn metrics_reference() -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# Metrics\n\n\
         Every series of `GET /metrics` (Prometheus text format 0.0.4) and the field of\n\
         `floodgate::MetricsSnapshot` (`Gateway::metrics()`) that holds the same value.\n\
         Generated from `src/metrics.rs` (`FAMILIES`, `HISTOGRAMS`): a test fails when this file\n\
         is out of step; `FLOODGATE_UPDATE_METRICS_DOC=1 cargo test --lib metrics` rewrites it.\n\n\
         | series | type | Rust (`MetricsSnapshot`) | meaning |\n\
         | --- | --- | --- | --- |\n",
    );
    for f in FAMILIES {
        for s in f.series {
            let _ = writeln!(
                out,
                "| `floodgate_{}{}` | {} | `{}` | {} |",
                f.name,
                s.labels,
                f.kind.as_str(),
                s.field,
                f.help
            );
        }
    }
    for h in HISTOGRAMS {
        let _ = writeln!(
            out,
            "| `floodgate_{0}_bucket`, `_sum`, `_count` | histogram | buckets, sum `{1}` | {2} |",
            h.name, h.sum_field, h.help
        );
    }
    out
}

/// Counters of the ingest endpoints, summed into [`MetricsSnapshot::ingest`]. Touched
/// once per batch, never per event.
#[derive(Default)]
pub(crate) struct IngestCounters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    pub batches_refused: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connections: AtomicU64,
    pub closed_idle: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A copy of the ingest counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IngestStats {
    /// Events accepted by the emitter from publishers.
    pub events_accepted: u64,
    /// Events of accepted batches that were refused one by one (see their `code`).
    pub events_rejected: u64,
    /// Batches answered (accepted in whole or in part).
    pub batches: u64,
    /// Batches refused whole: malformed, too large, too many events.
    pub batches_refused: u64,
    /// Batches refused by the rate limit.
    pub rate_limited: u64,
    /// Ingest connections open now.
    pub connections: u64,
    /// Ingest connections closed after `ingest_idle_timeout` without a byte.
    pub closed_idle: u64,
    /// Events answered `duplicate` (their idempotency key was accepted lately).
    pub duplicates: u64,
}

impl IngestCounters {
    pub(crate) fn snapshot(&self) -> IngestStats {
        // Relaxed: independent statistics.
        IngestStats {
            events_accepted: self.accepted.load(Ordering::Relaxed),
            events_rejected: self.rejected.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batches_refused: self.batches_refused.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            closed_idle: self.closed_idle.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// A copy of the Redis engine's counters (see the `floodgate_redis_*` series).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// 1 while the publisher's last round trip succeeded.
    pub publisher_up: u64,
    /// Batches of this node's events Redis sequenced.
    pub batches_sequenced: u64,
    /// This node's events Redis sequenced.
    pub events_sequenced: u64,
    /// The publisher's failed round trips.
    pub publisher_failures: u64,
    /// 1 while the reader is connected to Redis.
    pub reader_up: u64,
    /// Events read from the log.
    pub events_read: u64,
    /// Log entries that were not valid batches.
    pub bad_entries: u64,
    /// Times entries of the log were missed.
    pub continuity_lost: u64,
    /// The reader's failed connections or round trips.
    pub reader_failures: u64,
    /// Events read that no shard ring could take.
    pub undeliverable: u64,
}

impl RedisStats {
    /// Whether the node reaches Redis now (for `/healthz`): its reader is connected and its
    /// publisher's last round trip, if any failed, succeeded since.
    pub fn reachable(&self) -> bool {
        self.reader_up == 1 && (self.publisher_up == 1 || self.publisher_failures == 0)
    }
}

/// Reads the Redis engine's counters (set by the gateway on that engine).
pub(crate) type RedisSource = Box<dyn Fn() -> RedisStats + Send + Sync>;

/// The per-shard published blocks of one gateway.
pub(crate) struct Registry {
    pub shards: Box<[CachePadded<Published>]>,
    /// Emit calls refused with `Full`. Touched only on that (cold) path.
    pub rejected_full: AtomicU64,
    /// The ingest endpoints' counters (touched once per batch).
    pub ingest: IngestCounters,
    /// The Redis engine's counters, on that engine.
    pub redis: std::sync::OnceLock<RedisSource>,
}

impl Registry {
    pub(crate) fn new(shards: usize) -> Self {
        Registry {
            shards: (0..shards)
                .map(|_| CachePadded::new(Published::default()))
                .collect(),
            rejected_full: AtomicU64::new(0),
            ingest: Default::default(),
            redis: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut snap = MetricsSnapshot::default();
        for s in self.shards.iter() {
            s.add_to(&mut snap.stats);
        }
        // Relaxed: an independent counter.
        snap.events_rejected_full = self.rejected_full.load(Ordering::Relaxed);
        snap.ingest = self.ingest.snapshot();
        snap.redis = self.redis.get().map(|read| read()).unwrap_or_default();
        snap
    }

    /// Each shard's published counters, in shard order (for the dashboard).
    pub(crate) fn per_shard(&self) -> Vec<Stats> {
        self.shards
            .iter()
            .map(|s| {
                let mut stats = Stats::default();
                s.add_to(&mut stats);
                stats
            })
            .collect()
    }

    /// On the Redis engine, why the node is not healthy (it cannot reach Redis); `None` when
    /// it is, and always on the local engine.
    pub(crate) fn unhealthy(&self) -> Option<String> {
        let r = (self.redis.get()?)();
        (!r.reachable()).then(|| {
            format!(
                "redis unreachable: publisher {}, log reader {}\n",
                if r.publisher_up == 1 || r.publisher_failures == 0 {
                    "ok"
                } else {
                    "failing"
                },
                if r.reader_up == 1 {
                    "ok"
                } else {
                    "disconnected"
                }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter of `Stats` is shown by exactly one series or histogram sum, and every
    /// series shows a field that exists: the description and the counters cannot drift apart.
    #[test]
    fn every_counter_has_exactly_one_series_and_every_series_a_counter() {
        let mut shown: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.series.iter().map(|s| s.field))
            .chain(HISTOGRAMS.iter().map(|h| h.sum_field))
            .filter_map(|f| f.strip_prefix("stats."))
            .collect();
        shown.sort_unstable();
        let mut fields: Vec<&str> = Stats::FIELDS
            .iter()
            .copied()
            .chain(["latency_sum_ns"])
            .collect();
        fields.sort_unstable();
        assert_eq!(shown, fields);
        let mut series: Vec<String> = FAMILIES
            .iter()
            .flat_map(|f| {
                f.series
                    .iter()
                    .map(move |s| format!("{}{}", f.name, s.labels))
            })
            .collect();
        let n = series.len();
        series.sort();
        series.dedup();
        assert_eq!(series.len(), n, "no two series share a name and labels");
    }

    /// Each series shows its own field's value: with every value distinct, each line of the
    /// rendering holds the value of the field the description names.
    #[test]
    fn each_series_shows_the_value_of_its_field() {
        let mut snap = MetricsSnapshot::default();
        for (i, v) in snap.stats.values_mut().enumerate() {
            *v = 1000 + i as u64;
        }
        snap.events_rejected_full = 7001;
        snap.ingest = IngestStats {
            events_accepted: 7002,
            events_rejected: 7003,
            batches: 7004,
            batches_refused: 7005,
            rate_limited: 7006,
            connections: 7007,
            closed_idle: 7008,
            duplicates: 7009,
        };
        snap.redis = RedisStats {
            publisher_up: 1,
            batches_sequenced: 7010,
            events_sequenced: 7011,
            publisher_failures: 7012,
            reader_up: 1,
            events_read: 7013,
            bad_entries: 7014,
            continuity_lost: 7015,
            reader_failures: 7016,
            undeliverable: 7017,
        };
        let text = snap.to_prometheus();
        let debug = format!("{snap:?}");
        for f in FAMILIES {
            for s in f.series {
                let v = (s.value)(&snap);
                let line = format!("floodgate_{}{} {v}\n", f.name, s.labels);
                assert!(text.contains(&line), "{line} in\n{text}");
                // The value is the named field's: `field: value` appears in the Debug output.
                let name = s.field.rsplit('.').next().unwrap();
                assert!(
                    debug.contains(&format!("{name}: {v},"))
                        || debug.contains(&format!("{name}: {v} ")),
                    "{} is not {v} in {debug}",
                    s.field
                );
            }
        }
        for h in HISTOGRAMS {
            assert!(text.contains(&format!("# TYPE floodgate_{} histogram\n", h.name)));
            assert!(
                text.contains(&format!("floodgate_{}_sum ", h.name)),
                "{text}"
            );
            assert!(
                text.contains(&format!("floodgate_{}_count ", h.name)),
                "{text}"
            );
        }
    }

    /// docs/METRICS.md is the description as generated (FLOODGATE_UPDATE_METRICS_DOC=1
    /// rewrites it).
    #[test]
    fn the_metrics_reference_in_docs_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md");
        let want = metrics_reference();
        if std::env::var_os("FLOODGATE_UPDATE_METRICS_DOC").is_some() {
            std::fs::write(&path, &want).expect("write docs/METRICS.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/METRICS.md is out of step with src/metrics.rs; run \
             FLOODGATE_UPDATE_METRICS_DOC=1 cargo test --lib metrics"
        );
    }

    #[test]
    fn breaker_transitions_show_in_the_prometheus_text() {
        use crate::core::testing;
        use std::time::{Duration, Instant};
        const S: Duration = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut core = testing::core(testing::config(|c| {
            c.max_outbound_bytes = 8000;
            c.breaker.trip_after = S;
            c.breaker.cooldown = 5 * S;
            c.history.max_events = 10_000;
        }));
        let id = testing::connect(&mut core, testing::user("a"), None, t0);
        testing::write_all(&mut core, id); // the hello
        for i in 1..=100 {
            // An event of about 120 bytes on the wire: 100 of them are over the high water.
            let body = format!("\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(100));
            core.route(&testing::record("a", body.as_bytes()), t0, 0);
        }
        let snap = MetricsSnapshot {
            stats: core.stats.clone(),
            ..Default::default()
        };
        let text = snap.to_prometheus();
        assert!(
            text.contains("floodgate_breaker_transitions_total{to=\"open\"} 1"),
            "{text}"
        );
        assert!(text.contains("floodgate_breakers_open 1"), "{text}");
    }

    #[test]
    fn publish_and_sum_across_shards() {
        let reg = Registry::new(2);
        let mut a = Stats {
            events_received: 3,
            frames_written: 10,
            ..Default::default()
        };
        a.record_batch(10);
        a.record_latency_ns(30_000);
        reg.shards[0].publish(&a);
        let mut b = Stats {
            events_received: 4,
            frames_written: 2,
            ..Default::default()
        };
        b.record_batch(2);
        reg.shards[1].publish(&b);
        let snap = reg.snapshot();
        assert_eq!(snap.stats.events_received, 7);
        assert_eq!(snap.frames_per_write(), 6.0);
        let text = snap.to_prometheus();
        assert!(
            text.contains("floodgate_events_emitted_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("floodgate_queue_latency_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("floodgate_batch_frames_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
    }
}
