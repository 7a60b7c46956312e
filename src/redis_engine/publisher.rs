//! The node's publisher: the thread that takes what this node's emitters emit and has Redis
//! sequence it (`floodgate-redis-pub`). On the Redis engine an emitter's rings lead here rather
//! than to the shards; the shards get every node's events back through the subscription.
//!
//! It drains every ring into one batch (up to [`MAX_BATCH_EVENTS`] events or
//! [`MAX_BATCH_BYTES`]), submits it in one round trip, and drains again: while a round trip is
//! in flight, events wait in the rings, so the busier the node the larger its batches.
//!
//! Nothing is dropped. A batch is copied out of the rings before it is submitted and kept until
//! Redis answers for it; a failed round trip is retried with the same batch number on a new
//! connection, and the sequencing script runs each numbered batch at most once. The wait before
//! the retry grows (with jitter) only while no connection can be made; a round trip cut on a
//! connection that was made waits the first wait, so a burst of cuts does not stall the node. While Redis does not answer, the rings fill
//! and `emit` returns `Full`: emits are held back, never lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use crossbeam_utils::sync::Parker;

use super::backoff::Backoff;
use super::sequencer::{Pending, Sequencer};
use super::wire;
use crate::receipt::{Progress, ReceiptBoard};
use crate::record::{Record, REC_ACKED};
use crate::ring::Consumer;

/// Events in one batch, at most.
pub(crate) const MAX_BATCH_EVENTS: usize = 1024;

/// Bytes of event bodies in one batch, at most (a batch holds at least one event, however
/// large).
pub(crate) const MAX_BATCH_BYTES: usize = 1 << 20;

/// How long the thread sleeps with nothing to do before it looks again (emitters wake it).
const IDLE: Duration = Duration::from_millis(100);

/// How often the thread looks whether the node's log reader has its starting point.
const READER_WAIT: Duration = Duration::from_millis(5);

/// A round trip to Redis, at most (connecting or waiting for an answer).
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the publisher has done, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct PublisherStats {
    /// Batches Redis answered for.
    pub batches: AtomicU64,
    /// Events Redis sequenced.
    pub events: AtomicU64,
    /// Round trips that failed (each is retried).
    pub failures: AtomicU64,
    /// Whether the last round trip succeeded (false until the first one).
    pub connected: AtomicBool,
}

/// The copy of one batch: record bytes, kept until Redis answers for them.
#[derive(Default)]
struct Batch {
    /// The records, one after another.
    bytes: Vec<u8>,
    /// Where each record is in `bytes`.
    spans: Vec<(usize, usize)>,
    body_bytes: usize,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.spans.len() >= MAX_BATCH_EVENTS || self.body_bytes >= MAX_BATCH_BYTES
    }

    fn push(&mut self, record: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(record);
        self.spans.push((start, self.bytes.len()));
        self.body_bytes += Record::parse(record).body.len();
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.body_bytes = 0;
    }
}

/// How a round trip ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Redis answered for the batch.
    Answered,
    /// No connection could be made.
    Unreachable,
    /// A connection was made (or kept) but the round trip failed on it.
    Cut,
}

/// The wait before the batch is tried again after `outcome`. Only a Redis that cannot be
/// reached makes the waits grow: a round trip cut on a connection that was made (a connection
/// killed, a failover) is tried again after the first wait, so a burst of cuts does not stall
/// the node for seconds.
fn wait_after(backoff: &mut Backoff, outcome: Outcome) -> Duration {
    debug_assert_ne!(outcome, Outcome::Answered);
    if outcome == Outcome::Cut {
        backoff.reset();
    }
    backoff.next_wait()
}

/// The publisher's state; [`Publisher::run`] is the thread's body.
pub(crate) struct Publisher {
    sequencer: Sequencer,
    client: redis::Client,
    conn: Option<redis::Connection>,
    /// New emitters' rings.
    rings: Receiver<Consumer>,
    consumers: Vec<Consumer>,
    parker: Parker,
    /// The sleep flag emitters check before they wake the thread (`crate::park`): set just
    /// before it parks with nothing to do, so an idle node's first event is not left waiting.
    sleep: Arc<crate::park::Parker>,
    /// Set once this node's log reader knows where in the log it starts: no batch goes to
    /// Redis before, so every event this node emits is read back into its own shards.
    reader_placed: Arc<AtomicBool>,
    receipts: Arc<ReceiptBoard>,
    stats: Arc<PublisherStats>,
    batch: Batch,
    /// The number of the batch in `batch` (or of the next one).
    number: u64,
    /// Epochs of streams this node starts.
    epoch_seed: u64,
    backoff: Backoff,
}

/// What feeds the publisher and wakes it.
pub(crate) struct Inputs {
    /// New emitters' rings.
    pub rings: Receiver<Consumer>,
    /// The thread's parker; emitters wake it through `sleep`.
    pub parker: Parker,
    /// The sleep flag emitters check (`crate::park`), whose wake unparks `parker`.
    pub sleep: Arc<crate::park::Parker>,
    /// Set once the node's log reader has its starting point.
    pub reader_placed: Arc<AtomicBool>,
}

impl Publisher {
    /// A publisher sequencing through `sequencer` on the Redis at `client`, taking what
    /// `inputs` bring.
    pub(crate) fn new(
        sequencer: Sequencer,
        client: redis::Client,
        inputs: Inputs,
        receipts: Arc<ReceiptBoard>,
        stats: Arc<PublisherStats>,
    ) -> Publisher {
        let mut backoff = Backoff::new();
        Publisher {
            sequencer,
            client,
            conn: None,
            rings: inputs.rings,
            consumers: Vec::new(),
            parker: inputs.parker,
            sleep: inputs.sleep,
            reader_placed: inputs.reader_placed,
            receipts,
            stats,
            batch: Batch::default(),
            number: 1,
            epoch_seed: backoff.random(),
            backoff,
        }
    }

    /// Runs until `stop` is set and every ring is drained and sequenced (or, with Redis
    /// unreachable, until `stop` is set: what is left is then counted by the caller as not
    /// sequenced, never silently dropped).
    pub(crate) fn run(mut self, stop: &AtomicBool) -> usize {
        loop {
            self.take_rings();
            if self.batch.spans.is_empty() {
                self.fill();
            }
            if self.batch.spans.is_empty() {
                if stop.load(Ordering::Acquire) {
                    self.take_rings();
                    self.fill();
                    if self.batch.spans.is_empty() {
                        return 0;
                    }
                } else {
                    // Park protocol (`crate::park`): announce, look again, then sleep.
                    self.sleep.announce_sleep();
                    self.take_rings();
                    self.fill();
                    if self.batch.spans.is_empty() {
                        self.parker.park_timeout(IDLE);
                    }
                    self.sleep.awake();
                    continue;
                }
            }
            // Acquire: pairs with the reader's Release once it has its starting point.
            if !self.reader_placed.load(Ordering::Acquire) {
                if stop.load(Ordering::Acquire) {
                    return self.batch.spans.len() + self.pending();
                }
                self.parker.park_timeout(READER_WAIT);
                continue;
            }
            let outcome = self.submit();
            if outcome != Outcome::Answered {
                if stop.load(Ordering::Acquire) {
                    return self.batch.spans.len() + self.pending();
                }
                let wait = wait_after(&mut self.backoff, outcome);
                self.parker.park_timeout(wait);
            }
        }
    }

    /// Records still in the rings.
    fn pending(&mut self) -> usize {
        self.consumers
            .iter_mut()
            .map(|c| c.drain(usize::MAX, |_| {}))
            .sum()
    }

    fn take_rings(&mut self) {
        while let Ok(c) = self.rings.try_recv() {
            self.consumers.push(c);
        }
        // A ring whose emitter is gone and which is empty is done with.
        self.consumers.retain(|c| !c.is_finished());
    }

    /// Copies records from the rings into the batch, taking turns so that one busy emitter
    /// does not starve the others.
    fn fill(&mut self) {
        let per_ring = (MAX_BATCH_EVENTS / self.consumers.len().max(1)).max(1);
        loop {
            let mut took = 0;
            for c in &mut self.consumers {
                if self.batch.is_full() {
                    return;
                }
                let room = per_ring.min(MAX_BATCH_EVENTS - self.batch.spans.len());
                let batch = &mut self.batch;
                took += c.drain(room, |r| batch.push(r));
            }
            if took == 0 || self.batch.is_full() {
                return;
            }
        }
    }

    /// One round trip for the batch.
    fn submit(&mut self) -> Outcome {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match self.client.get_connection_with_timeout(ROUND_TRIP_TIMEOUT) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(ROUND_TRIP_TIMEOUT));
                    let _ = c.set_write_timeout(Some(ROUND_TRIP_TIMEOUT));
                    c
                }
                Err(e) => {
                    self.failed(&e);
                    return Outcome::Unreachable;
                }
            },
        };
        let mut conn = conn;
        let events: Vec<Pending<'_>> = self
            .batch
            .spans
            .iter()
            .map(|&(a, b)| {
                let r = Record::parse(&self.batch.bytes[a..b]);
                Pending {
                    user: r.user,
                    ts: r.ts_unix_ns,
                    needs_ack: r.needs_ack,
                    body: r.body,
                    // A shard passes a client's ack on to every node.
                    ack: r.sequenced.filter(|_| r.flags & REC_ACKED != 0),
                }
            })
            .collect();
        debug_assert!(events.len() <= wire::MAX_BATCH);
        let epoch = self.epoch_seed ^ self.number;
        match self
            .sequencer
            .submit(&mut conn, self.number, epoch, &events)
        {
            Ok(assigned) => {
                for (&(a, b), given) in self.batch.spans.iter().zip(&assigned) {
                    if let Some(t) = Record::parse(&self.batch.bytes[a..b]).ticket {
                        self.receipts.update(t, Progress::Routed(given.seq));
                    }
                }
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                let acks = events.iter().filter(|e| e.ack.is_some()).count();
                self.stats
                    .events
                    .fetch_add((assigned.len() - acks) as u64, Ordering::Relaxed);
                if !self.stats.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis: sequencing events");
                }
                self.conn = Some(conn);
                self.batch.clear();
                self.number += 1;
                self.backoff.reset();
                Outcome::Answered
            }
            Err(e) => {
                self.failed(&e);
                Outcome::Cut
            }
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if self.stats.connected.swap(false, Ordering::Relaxed) || self.backoff.is_first() {
            tracing::warn!(error = %e, "redis: a batch could not be sequenced; holding events back and retrying");
        }
    }
}

#[cfg(test)]
mod tests;
