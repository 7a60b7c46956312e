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

    /// Renders the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let s = &self.stats;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP floodgate_{name} {help}\n# TYPE floodgate_{name} {kind}"
            );
            for (labels, v) in lines {
                let _ = writeln!(out, "floodgate_{name}{labels} {v}");
            }
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            &[("", s.connections_open)],
        );
        metric(
            "connections_accepted_total",
            "counter",
            "WebSocket upgrades completed.",
            &[("", s.connections_accepted)],
        );
        metric(
            "connections_rejected_total",
            "counter",
            "Requests refused before upgrade, by reason.",
            &[
                ("{reason=\"auth\"}", s.rejected_auth),
                ("{reason=\"limit\"}", s.rejected_limit),
                ("{reason=\"origin\"}", s.rejected_origin),
                ("{reason=\"bad_request\"}", s.rejected_bad_request),
            ],
        );
        metric(
            "auth_renewed_total",
            "counter",
            "In-band auth messages whose fresh token renewed a connection.",
            &[("", s.reauthenticated)],
        );
        metric(
            "accept_errors_total",
            "counter",
            "Failed accept calls: out of file descriptors (the waiting connection gets 503), or other.",
            &[
                ("{reason=\"fd_exhausted\"}", s.accept_fd_exhausted),
                ("{reason=\"other\"}", s.accept_errors),
            ],
        );
        metric(
            "connections_closed_total",
            "counter",
            "Connections closed by the server for misbehaviour, by reason.",
            &[
                ("{reason=\"slow_consumer\"}", s.closed_slow_consumer),
                ("{reason=\"token_expired\"}", s.closed_token_expired),
                ("{reason=\"disconnected\"}", s.closed_disconnected),
                ("{reason=\"auth_refused\"}", s.closed_auth_refused),
                ("{reason=\"pong_timeout\"}", s.closed_pong_timeout),
            ],
        );
        metric(
            "events_emitted_total",
            "counter",
            "Events taken from emitter rings by reactors.",
            &[("", s.events_received)],
        );
        metric(
            "events_delivered_total",
            "counter",
            "Event frames fully written to a socket.",
            &[("", s.events_delivered)],
        );
        metric(
            "events_dropped_total",
            "counter",
            "Events not delivered, by reason.",
            &[
                ("{reason=\"connection\"}", s.events_dropped),
                ("{reason=\"ring_full\"}", self.events_rejected_full),
            ],
        );
        metric(
            "events_without_connection_total",
            "counter",
            "Events emitted while their user had no open connection (kept in history and the spool for a resume, not dropped).",
            &[("", s.events_no_listener)],
        );
        metric(
            "bytes_written_total",
            "counter",
            "Bytes written to sockets.",
            &[("", s.bytes_written)],
        );
        metric(
            "write_syscalls_total",
            "counter",
            "write(2) calls on sockets.",
            &[("", s.write_syscalls)],
        );
        metric(
            "write_incomplete_total",
            "counter",
            "write(2) calls that did not take the whole buffer, by outcome.",
            &[
                ("{outcome=\"eagain\"}", s.write_blocked),
                ("{outcome=\"partial\"}", s.write_partial),
            ],
        );
        metric(
            "client_messages_total",
            "counter",
            "Data messages received from clients.",
            &[("", s.client_messages)],
        );
        metric(
            "resumes_total",
            "counter",
            "Connections that asked to resume from a cursor.",
            &[("", s.resumes)],
        );
        metric(
            "resume_gaps_total",
            "counter",
            "gap frames sent to resuming clients (events that could not be replayed).",
            &[("", s.gaps)],
        );
        metric(
            "events_replayed_total",
            "counter",
            "Event frames replayed from history to resuming connections.",
            &[("", s.events_replayed)],
        );
        metric(
            "history_bytes",
            "gauge",
            "Bytes of memory held by the event history log (at most history_total_bytes).",
            &[("", s.history_bytes)],
        );
        metric(
            "breaker_transitions_total",
            "counter",
            "Connection circuit breaker transitions, by the state entered.",
            &[
                ("{to=\"open\"}", s.breaker_opened),
                ("{to=\"half_open\"}", s.breaker_half_opened),
                ("{to=\"closed\"}", s.breaker_closed),
            ],
        );
        metric(
            "breaker_trips_total",
            "counter",
            "Connection circuit breakers opened, by cause.",
            &[
                ("{cause=\"backlog\"}", s.breaker_trips_backlog),
                ("{cause=\"missed_pong\"}", s.breaker_trips_missed_pong),
                ("{cause=\"write_error\"}", s.breaker_trips_write_error),
            ],
        );
        metric(
            "breakers_open",
            "gauge",
            "Connections whose circuit breaker is open.",
            &[("", s.breakers_open)],
        );
        metric(
            "events_diverted_total",
            "counter",
            "Queued events dropped from memory when a breaker opened (kept in history for replay).",
            &[("", s.events_diverted)],
        );
        metric(
            "events_coalesced_total",
            "counter",
            "agent_thinking events merged into the frame before them for a connection that was behind.",
            &[("", s.events_coalesced)],
        );
        metric(
            "events_replayed_from_spool_total",
            "counter",
            "Event frames replayed from the spool (older than in-memory history).",
            &[("", s.events_replayed_cold)],
        );
        metric(
            "streams_recovered",
            "gauge",
            "User streams (epoch and seq) recovered from the spool at start.",
            &[("", s.streams_recovered)],
        );
        metric(
            "streams_discarded_at_start",
            "gauge",
            "Streams the spool held but could not vouch for at start (they got new epochs).",
            &[("", s.streams_discarded_at_start)],
        );
        metric(
            "events_carried_to_new_epoch",
            "gauge",
            "Unacked events of those streams sent again at start as new events of the new epoch.",
            &[("", s.events_carried_to_new_epoch)],
        );
        metric(
            "spool_bytes_cut_at_start",
            "gauge",
            "Bytes the spool cut at start: torn tails, and corrupted records with spool_repair.",
            &[("", s.spool_bytes_cut_at_start)],
        );
        metric(
            "spool_bytes_written_total",
            "counter",
            "Bytes written to the spool.",
            &[("", s.spool_bytes_written)],
        );
        metric(
            "spool_errors_total",
            "counter",
            "Spool operations that failed, by operation.",
            &[
                ("{op=\"write\"}", s.spool_write_errors),
                ("{op=\"read\"}", s.spool_read_errors),
                ("{op=\"dead_letter\"}", s.dead_letter_write_errors),
            ],
        );
        metric(
            "spool_stalled",
            "gauge",
            "Shards whose spool cannot write now: they hold back new events (no client sees an event the spool does not have) and retry.",
            &[("", s.spool_stalled)],
        );
        metric(
            "spool_fsyncs_total",
            "counter",
            "fdatasync calls on spool segments.",
            &[("", s.spool_fsyncs)],
        );
        metric(
            "spool_segments_deleted_total",
            "counter",
            "Spool segments deleted by retention (size or age).",
            &[("", s.spool_segments_deleted)],
        );
        metric(
            "spool_bytes",
            "gauge",
            "Bytes held in spool segments.",
            &[("", s.spool_bytes)],
        );
        metric(
            "acks_received_total",
            "counter",
            "Ack messages received from clients.",
            &[("", s.acks_received)],
        );
        metric(
            "events_acked_total",
            "counter",
            "Events that needed an ack and got one.",
            &[("", s.events_acked)],
        );
        metric(
            "events_redelivered_total",
            "counter",
            "Unacked events sent again to a connection that started.",
            &[("", s.events_redelivered)],
        );
        metric(
            "events_dead_lettered_total",
            "counter",
            "Unacked events written to the dead-letter file (ack timeout, overflow, dropped stream).",
            &[("", s.events_dead_lettered)],
        );
        metric(
            "client_messages_ignored_total",
            "counter",
            "Text messages from clients on /ws that were not an ack.",
            &[("", s.client_messages_ignored)],
        );
        let i = &self.ingest;
        metric(
            "ingest_events_total",
            "counter",
            "Events received on the ingest endpoints, by outcome (rejected: refused one by one, see the answer's codes).",
            &[
                ("{outcome=\"accepted\"}", i.events_accepted),
                ("{outcome=\"rejected\"}", i.events_rejected),
                ("{outcome=\"duplicate\"}", i.duplicates),
            ],
        );
        metric(
            "ingest_batches_total",
            "counter",
            "Batches received on the ingest endpoints, by outcome.",
            &[
                ("{outcome=\"answered\"}", i.batches),
                ("{outcome=\"refused\"}", i.batches_refused),
                ("{outcome=\"rate_limited\"}", i.rate_limited),
            ],
        );
        metric(
            "ingest_connections",
            "gauge",
            "Open ingest connections (POST keep-alive and /api/ingest sockets).",
            &[("", i.connections)],
        );
        metric(
            "ingest_connections_closed_idle_total",
            "counter",
            "Ingest connections closed after ingest_idle_timeout without a byte from the publisher.",
            &[("", i.closed_idle)],
        );
        metric(
            "reactor_passes_total",
            "counter",
            "Reactor loop passes.",
            &[("", s.passes)],
        );
        let _ = writeln!(
            out,
            "# HELP floodgate_batch_frames Event frames per socket write.\n# TYPE floodgate_batch_frames histogram"
        );
        histogram(
            &mut out,
            "batch_frames",
            &BATCH_BOUNDS.map(|b| b as f64),
            &s.batch_buckets,
            s.frames_written as f64,
        );
        let _ = writeln!(
            out,
            "# HELP floodgate_queue_latency_seconds Emit to queued-for-write latency.\n# TYPE floodgate_queue_latency_seconds histogram"
        );
        histogram(
            &mut out,
            "queue_latency_seconds",
            &LATENCY_BOUNDS_US.map(|b| b as f64 / 1e6),
            &s.latency_buckets,
            f64::NAN,
        );
        out
    }
}

fn histogram(out: &mut String, name: &str, bounds: &[f64], buckets: &[u64], sum: f64) {
    use std::fmt::Write;
    let mut cum = 0;
    for (b, n) in bounds.iter().zip(buckets) {
        cum += n;
        let _ = writeln!(out, "floodgate_{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    cum += buckets[bounds.len()];
    let _ = writeln!(out, "floodgate_{name}_bucket{{le=\"+Inf\"}} {cum}");
    if !sum.is_nan() {
        let _ = writeln!(out, "floodgate_{name}_sum {sum}");
    }
    let _ = writeln!(out, "floodgate_{name}_count {cum}");
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

/// The per-shard published blocks of one gateway.
pub(crate) struct Registry {
    pub shards: Box<[CachePadded<Published>]>,
    /// Emit calls refused with `Full`. Touched only on that (cold) path.
    pub rejected_full: AtomicU64,
    /// The ingest endpoints' counters (touched once per batch).
    pub ingest: IngestCounters,
}

impl Registry {
    pub(crate) fn new(shards: usize) -> Self {
        Registry {
            shards: (0..shards)
                .map(|_| CachePadded::new(Published::default()))
                .collect(),
            rejected_full: AtomicU64::new(0),
            ingest: Default::default(),
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
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
