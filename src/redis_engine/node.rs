//! A gateway node on the Redis engine: its publisher thread (what this node's emitters emit,
//! sequenced through Redis) and its subscriber thread (every node's sequenced events, read from
//! the log and pushed into this node's shard rings as an emitter would), started and stopped
//! together. The gateway builds one with [`Node::start`]; neither thread ever runs on a
//! reactor, so no reactor waits on Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use crossbeam_utils::sync::Parker as ThreadParker;
use crossbeam_utils::Backoff as Spin;

use super::publisher::{Inputs, Publisher, PublisherStats};
use super::sequencer::{Keys, Sequencer};
use super::subscriber::{Deliver, Subscriber, SubscriberStats};
use super::wire::WireEvent;
use crate::park::Parker;
use crate::receipt::ReceiptBoard;
use crate::record::{
    encode_sequenced, shard_of, REC_ACK, REC_ACKED, REC_HIST, REC_LOST, REC_OWN, REC_SYNC,
};
use crate::ring::{self, Consumer, Producer, PushError};

/// What a node needs from the gateway.
pub(crate) struct NodeConfig {
    /// The Redis URL (validated by the config).
    pub url: String,
    /// The deployment's key prefix.
    pub prefix: String,
    /// Bytes of each ring from the subscriber to a shard.
    pub ring_capacity: usize,
    /// What Redis keeps of the log and the users' indexes.
    pub retention: super::sequencer::Retention,
}

/// One shard as the subscriber reaches it: where its new ring goes, and how to wake it.
pub(crate) struct ShardInbox {
    pub rings: Sender<Consumer>,
    pub parker: Arc<Parker>,
}

/// The counters of a node's two threads.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    pub publisher: Arc<PublisherStats>,
    pub subscriber: Arc<SubscriberStats>,
    /// Events read from the log that no shard ring could take (larger than a ring allows, or
    /// the shard was gone).
    pub undeliverable: AtomicU64,
}

impl NodeStats {
    /// The counters as `/metrics` shows them.
    pub(crate) fn snapshot(&self) -> crate::metrics::RedisStats {
        // Relaxed: independent statistics.
        let (p, s) = (&self.publisher, &self.subscriber);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::metrics::RedisStats {
            publisher_up: u64::from(p.connected.load(Ordering::Relaxed)),
            batches_sequenced: get(&p.batches),
            events_sequenced: get(&p.events),
            publisher_failures: get(&p.failures),
            reader_up: u64::from(s.connected.load(Ordering::Relaxed)),
            events_read: get(&s.events),
            bad_entries: get(&s.bad_messages),
            continuity_lost: get(&s.continuity_lost),
            reader_failures: get(&s.failures),
            undeliverable: get(&self.undeliverable),
        }
    }
}

/// A running node: its two threads.
pub(crate) struct Node {
    stop_publisher: Arc<AtomicBool>,
    stop_subscriber: Arc<AtomicBool>,
    publisher: Option<JoinHandle<usize>>,
    publisher_wake: Arc<Parker>,
    subscriber: Option<JoinHandle<()>>,
    pub stats: Arc<NodeStats>,
}

/// What [`Node::start`] hands the gateway besides the node.
pub(crate) struct NodeLinks {
    /// Where emitters' rings go (the publisher), and how to wake it.
    pub emit_rings: Sender<Consumer>,
    pub emit_parker: Arc<Parker>,
    /// Where shards send the users whose stream state they need (and from which `seq` they
    /// need its events).
    pub sync_requests: Sender<crate::record::SyncRequest>,
}

impl Node {
    /// Starts the publisher and the subscriber threads. The subscriber makes one ring to each
    /// of `shards` now.
    pub(crate) fn start(
        cfg: &NodeConfig,
        shards: &[ShardInbox],
        receipts: Arc<ReceiptBoard>,
    ) -> std::io::Result<(Node, NodeLinks)> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(std::io::Error::other)?;
        let node_id = getrandom::u64().map_err(std::io::Error::other)?;
        let stats = Arc::new(NodeStats::default());

        let (emit_rings, rings_rx) = crossbeam_channel::unbounded();
        let parker = ThreadParker::new();
        let unparker = parker.unparker().clone();
        let publisher_wake = Arc::new(Parker::new(move || unparker.unpark()));
        let sequencer = Sequencer::new(&cfg.prefix, node_id, cfg.retention);
        let publisher = Publisher::new(
            sequencer,
            client.clone(),
            Inputs {
                rings: rings_rx,
                parker,
                sleep: publisher_wake.clone(),
                reader_placed: stats.subscriber.placed.clone(),
            },
            receipts,
            stats.publisher.clone(),
        );
        let stop_publisher = Arc::new(AtomicBool::new(false));
        let stop = stop_publisher.clone();
        let publisher = std::thread::Builder::new()
            .name("floodgate-redis-pub".into())
            .spawn(move || publisher.run(&stop))?;

        let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
        let stop_subscriber = Arc::new(AtomicBool::new(false));
        let mut feed = ShardFeed::new(shards, cfg.ring_capacity, stats.clone());
        // Epochs of streams a sync makes: from a seed of this process's.
        let epoch_seed = getrandom::u64().map_err(std::io::Error::other)?;
        let mut sub = Subscriber::new(
            client,
            Keys::new(&cfg.prefix),
            node_id,
            sync_rx,
            epoch_seed,
            stats.subscriber.clone(),
        );
        let stop = stop_subscriber.clone();
        let subscriber = std::thread::Builder::new()
            .name("floodgate-redis-sub".into())
            .spawn(move || sub.run(&stop, &mut feed))?;
        Ok((
            Node {
                stop_publisher,
                stop_subscriber,
                publisher: Some(publisher),
                publisher_wake: publisher_wake.clone(),
                subscriber: Some(subscriber),
                stats,
            },
            NodeLinks {
                emit_rings,
                emit_parker: publisher_wake,
                sync_requests: sync_tx,
            },
        ))
    }

    /// Stops the publisher once it has sequenced what the emitters emitted (or at once, with
    /// Redis unreachable), then the subscriber once it has read the log as far as it went
    /// then (so this node's own last events reach its shards). Returns the events that could
    /// not be sequenced (Redis unreachable): emitted, and reaching no one.
    pub(crate) fn stop(&mut self) -> usize {
        self.stop_publisher.store(true, Ordering::Release);
        self.publisher_wake.wake();
        let unsequenced = self.publisher.take().map_or(0, |t| t.join().unwrap_or(0));
        if unsequenced > 0 {
            tracing::error!(
                events = unsequenced,
                "redis: stopping with events that could not be sequenced (Redis unreachable); they reach no one"
            );
        }
        self.stop_subscriber.store(true, Ordering::Release);
        if let Some(t) = self.subscriber.take() {
            let _ = t.join();
        }
        unsequenced
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.publisher.is_some() || self.subscriber.is_some() {
            self.stop();
        }
    }
}

/// The subscriber's [`Deliver`] on a gateway: each event, with the `seq` Redis gave it, into
/// its user's shard ring; notices likewise (a continuity loss to every shard).
pub(crate) struct ShardFeed {
    producers: Box<[Producer]>,
    parkers: Box<[Arc<Parker>]>,
    /// Shards given records since they were last woken: woken once per read of the log (a
    /// shard woken per record would start on a few and write small batches).
    unwoken: Box<[bool]>,
    scratch: Vec<u8>,
    stats: Arc<NodeStats>,
}

impl ShardFeed {
    fn new(shards: &[ShardInbox], ring_capacity: usize, stats: Arc<NodeStats>) -> ShardFeed {
        let producers = shards
            .iter()
            .map(|s| {
                let (p, c) = ring::channel(ring_capacity);
                // A shard that is gone drops the consumer: pushes then fail with `Closed`.
                let _ = s.rings.send(c);
                s.parker.wake();
                p
            })
            .collect();
        ShardFeed {
            producers,
            parkers: shards.iter().map(|s| s.parker.clone()).collect(),
            unwoken: vec![false; shards.len()].into(),
            scratch: Vec::with_capacity(1024),
            stats,
        }
    }

    /// Pushes `scratch` into shard `i`'s ring, waiting while it is full (the shard is behind:
    /// the subscriber reads no further meanwhile, so Redis keeps the rest).
    fn push(&mut self, i: usize) {
        let spin = Spin::new();
        let mut since: Option<Instant> = None;
        loop {
            match self.producers[i].push(&[&self.scratch]) {
                Ok(()) => {
                    self.unwoken[i] = true;
                    return;
                }
                Err(PushError::Full) => {
                    self.parkers[i].unpark();
                    if spin.is_completed() {
                        let began = *since.get_or_insert_with(Instant::now);
                        std::thread::sleep(Duration::from_micros(100));
                        if began.elapsed() > Duration::from_secs(10) {
                            tracing::warn!(
                                shard = i,
                                "redis: a shard has taken nothing from the subscriber for 10 s; still waiting"
                            );
                            since = Some(Instant::now());
                        }
                    } else {
                        spin.snooze();
                    }
                }
                Err(PushError::TooLarge | PushError::Closed) => {
                    if self.stats.undeliverable.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::error!(
                            shard = i,
                            "redis: an event from the log does not fit this node's ring (ring_capacity smaller than another node's max_event_bytes?) or the shard is gone; counted"
                        );
                    }
                    return;
                }
            }
        }
    }
}

impl Deliver for ShardFeed {
    fn event(&mut self, e: &WireEvent<'_>, own: bool) {
        if e.user.is_empty() || e.user.len() > crate::record::MAX_USER_LEN {
            self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.scratch.clear();
        let flags = if e.ack {
            REC_ACKED
        } else {
            (u8::from(e.needs_ack) * REC_ACK) | (u8::from(own) * REC_OWN)
        };
        encode_sequenced(
            &mut self.scratch,
            e.ts,
            flags,
            e.user,
            e.epoch,
            e.seq,
            e.body,
        );
        self.push(shard_of(e.user, self.producers.len()));
    }

    fn continuity_lost(&mut self) {
        self.scratch.clear();
        encode_sequenced(&mut self.scratch, 0, REC_LOST, b"", 0, 0, b"");
        for i in 0..self.producers.len() {
            self.push(i);
        }
    }

    fn history(&mut self, e: &WireEvent<'_>) {
        if e.user.is_empty() || e.user.len() > crate::record::MAX_USER_LEN {
            return;
        }
        self.scratch.clear();
        encode_sequenced(
            &mut self.scratch,
            e.ts,
            REC_HIST | (u8::from(e.needs_ack) * REC_ACK),
            e.user,
            e.epoch,
            e.seq,
            e.body,
        );
        self.push(shard_of(e.user, self.producers.len()));
    }

    fn sync(&mut self, user: &[u8], epoch: u64, seq: u64) {
        self.scratch.clear();
        encode_sequenced(&mut self.scratch, 0, REC_SYNC, user, epoch, seq, b"");
        self.push(shard_of(user, self.producers.len()));
    }

    fn flush(&mut self) {
        for (i, unwoken) in self.unwoken.iter_mut().enumerate() {
            if std::mem::take(unwoken) {
                self.parkers[i].unpark();
            }
        }
    }
}
