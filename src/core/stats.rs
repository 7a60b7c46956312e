//! The core's counters: plain integers written only by the shard's own thread. The reactor
//! publishes them once per pass (see `metrics::Published`); nothing here is atomic.

/// Upper bounds (microseconds) of the emit-to-queued latency buckets; the last bucket is +Inf.
pub(crate) const LATENCY_BOUNDS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];
const LAT_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;
/// Upper bounds of the frames-per-write buckets; the last bucket is +Inf.
pub(crate) const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 256, 1024];
const BATCH_BUCKETS: usize = BATCH_BOUNDS.len() + 1;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// One shard's counters, written only by that shard's thread.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
            /// Histogram of emit-to-queued latency (see `LATENCY_BOUNDS_US`).
            pub latency_buckets: [u64; LAT_BUCKETS],
            /// Sum of the emit-to-queued latencies in `latency_buckets`, in nanoseconds.
            pub latency_sum_ns: u64,
            /// Histogram of event frames per socket write (see `BATCH_BOUNDS`).
            pub batch_buckets: [u64; BATCH_BUCKETS],
        }

        impl Stats {
            /// Counters and histogram buckets in one flat list: counters in declaration order,
            /// then the latency sum, the latency buckets and the batch buckets.
            pub(crate) const LEN: usize = Self::FIELDS.len() + 1 + LAT_BUCKETS + BATCH_BUCKETS;

            /// The names of the counters (not the histograms), in declaration order.
            pub(crate) const FIELDS: &[&str] = &[$( stringify!($name) ),*];

            /// Every value in the order of [`Stats::LEN`].
            pub(crate) fn values(&self) -> impl Iterator<Item = u64> + '_ {
                [$( self.$name ),*]
                    .into_iter()
                    .chain([self.latency_sum_ns])
                    .chain(self.latency_buckets.iter().copied())
                    .chain(self.batch_buckets.iter().copied())
            }

            /// Every value, mutably, in the order of [`Stats::LEN`].
            pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut u64> + '_ {
                [$( &mut self.$name ),*]
                    .into_iter()
                    .chain([&mut self.latency_sum_ns])
                    .chain(self.latency_buckets.iter_mut())
                    .chain(self.batch_buckets.iter_mut())
            }
        }
    };
}

counters! {
    /// Open WebSocket connections (gauge).
    connections_open,
    /// WebSocket upgrades completed.
    connections_accepted,
    /// Requests refused with 401.
    rejected_auth,
    /// Requests refused for a connection limit (503 total, 429 per user).
    rejected_limit,
    /// Handshakes refused for their `Origin` (not in `allowed_origins`).
    rejected_origin,
    /// `accept` calls that failed for want of file descriptors (EMFILE, ENFILE).
    accept_fd_exhausted,
    /// `accept` calls that failed for another reason (about one connection).
    accept_errors,
    /// Requests refused as malformed, wrong method, wrong path or timed out.
    rejected_bad_request,
    /// Connections closed as slow consumers (4008).
    closed_slow_consumer,
    /// Connections closed because the application disconnected their user (4002).
    closed_disconnected,
    /// Connections closed because their token expired (4001).
    closed_token_expired,
    /// Connections closed because an in-band `auth` message was refused (4003).
    closed_auth_refused,
    /// In-band `auth` messages that renewed a connection's token.
    reauthenticated,
    /// Connections closed for not answering a ping (4010).
    closed_pong_timeout,
    /// Events taken from the rings.
    events_received,
    /// Event frames fully written to a socket.
    events_delivered,
    /// Event frames for a user with no open connection (nobody to deliver to).
    events_no_listener,
    /// Event frames dropped: connection over its outbound cap, closing, or gone with frames unsent.
    events_dropped,
    /// Bytes written to sockets.
    bytes_written,
    /// `write` calls on sockets.
    write_syscalls,
    /// `write` calls refused with EAGAIN (socket buffer full: the client is behind).
    write_blocked,
    /// `write` calls that took only part of the buffer.
    write_partial,
    /// Event frames handed to `write` calls that wrote something (for frames per write).
    frames_written,
    /// Messages received from clients (ignored on `/ws` in protocol v1).
    client_messages,
    /// Reactor passes.
    passes,
    /// Connections that came with a resume cursor (`since`).
    resumes,
    /// `gap` frames sent: events a resuming client cannot get.
    gaps,
    /// Event frames copied from history to resuming connections.
    events_replayed,
    /// Bytes of memory held by the history log (gauge).
    history_bytes,
    /// Connection breakers that opened (the connection fell behind).
    breaker_opened,
    /// Breakers that half-opened after their cool-down.
    breaker_half_opened,
    /// Breakers that closed again (the connection caught up).
    breaker_closed,
    /// Breakers open now (gauge).
    breakers_open,
    /// Breakers opened because the connection fell behind.
    breaker_trips_backlog,
    /// Breakers opened because a ping went unanswered for `pong_timeout`.
    breaker_trips_missed_pong,
    /// Breakers opened because a socket write failed for want of kernel memory.
    breaker_trips_write_error,
    /// Queued events taken out of memory when a breaker opened (they stay in history).
    events_diverted,
    /// `agent_thinking` events merged into the frame before them on a connection that was
    /// behind (the frame says how many it holds).
    events_coalesced,
    /// Event frames replayed from the spool (part of `events_replayed`).
    events_replayed_cold,
    /// Spool reads that failed during a replay (the client got a gap).
    spool_read_errors,
    /// User streams recovered from the spool at start.
    streams_recovered,
    /// Streams the spool found at start but could not keep (new epochs: a failed fsync, a
    /// repair, a reboot without `fsync = always`).
    streams_discarded_at_start,
    /// Unacked events of those streams routed again at start as new events of the new epoch.
    events_carried_to_new_epoch,
    /// Bytes the spool cut at start: torn tails, and with `spool_repair` corrupted records.
    spool_bytes_cut_at_start,
    /// Bytes written to the spool.
    spool_bytes_written,
    /// Spool writes (or fsyncs) that failed; their events are in memory only.
    spool_write_errors,
    /// 1 while the spool cannot write and new events are held back (gauge).
    spool_stalled,
    /// `fdatasync` calls on spool segments.
    spool_fsyncs,
    /// Spool segments deleted by retention.
    spool_segments_deleted,
    /// Bytes in the spool's segments (gauge).
    spool_bytes,
    /// Text messages from clients on `/ws` that were not an ack.
    client_messages_ignored,
    /// Ack messages received.
    acks_received,
    /// Events that needed an ack and got one.
    events_acked,
    /// Unacked events sent again to a connection that started.
    events_redelivered,
    /// Unacked events written to the dead-letter file (timeout, overflow, dropped stream).
    events_dead_lettered,
    /// Dead-letter lines that could not be written to the file (logged instead).
    dead_letter_write_errors,
    /// Redis engine: events that reached the shard again (a `seq` already routed), dropped.
    events_duplicate,
    /// Redis engine: holes in a stream the node missed (each announced with a `gap`).
    stream_holes,
    /// Redis engine: stream states asked of Redis (a user's first connection, a resume before
    /// the shard's history, continuity lost).
    sync_requests,
    /// Redis engine: connections closed (1013) because Redis did not give their stream's
    /// state in time.
    closed_sync_timeout,
    /// Redis engine: unacked events of other nodes given up here (timeout, overflow, dropped
    /// stream) and left to the node that emitted them to dead-letter.
    unacked_left_to_origin,
    /// Redis engine: acks from clients on other nodes applied here.
    acks_from_other_nodes,
    /// Redis engine: older events read from Redis for a connection that resumes on a node that
    /// never received them (into history, or for that connection alone).
    events_from_redis_history,
    /// Redis engine: resumes that got events from Redis because they began before this
    /// shard's history.
    resumed_from_redis,
}

impl Stats {
    /// Records one emit-to-queued latency.
    #[inline]
    pub(crate) fn record_latency_ns(&mut self, ns: u64) {
        self.latency_sum_ns = self.latency_sum_ns.wrapping_add(ns);
        let us = ns / 1_000;
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LAT_BUCKETS - 1);
        self.latency_buckets[i] += 1;
    }

    /// Records one socket write that carried `frames` event frames.
    #[inline]
    pub(crate) fn record_batch(&mut self, frames: u64) {
        let i = BATCH_BOUNDS
            .iter()
            .position(|b| frames <= *b)
            .unwrap_or(BATCH_BUCKETS - 1);
        self.batch_buckets[i] += 1;
    }
}
