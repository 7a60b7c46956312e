//! The node's subscriber: the thread that receives every node's sequenced batches from Redis
//! (`floodgate-redis-sub`) and hands their events, in order, to what delivers them ([`Deliver`]:
//! on the gateway, a push into the user's shard ring, as an emitter's).
//!
//! A message that is not a valid batch (anyone who can publish on the channel can send one) is
//! counted and skipped, never a reason to stop. A lost subscription is taken up again with a
//! backoff and jitter, and [`Deliver::continuity_lost`] says so once it is back: what was
//! published meanwhile was not received here, and only the streams in Redis can tell what it
//! was.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::wire::{self, WireEvent};

/// How long a wait for a message lasts before the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Connecting to Redis, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the subscriber's events go.
pub(crate) trait Deliver {
    /// The next event of a batch; every event of a user comes in `seq` order.
    fn event(&mut self, e: &WireEvent<'_>);
    /// The subscription was lost and is back: events published in between were not received.
    fn continuity_lost(&mut self);
}

/// What the subscriber has done, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct SubscriberStats {
    /// Batches received and read.
    pub messages: AtomicU64,
    /// Their events.
    pub events: AtomicU64,
    /// Messages that were not valid batches (skipped).
    pub bad_messages: AtomicU64,
    /// Subscriptions taken up again after a loss.
    pub resubscribed: AtomicU64,
    /// Connections or subscriptions that failed.
    pub failures: AtomicU64,
    /// Whether the subscription is up.
    pub subscribed: AtomicBool,
}

/// The subscriber's state; [`Subscriber::run`] is the thread's body.
pub(crate) struct Subscriber {
    client: redis::Client,
    channel: Vec<u8>,
    stats: Arc<SubscriberStats>,
    backoff: Backoff,
}

impl Subscriber {
    /// A subscriber to `channel` on the Redis at `client`.
    pub(crate) fn new(client: redis::Client, channel: &[u8], stats: Arc<SubscriberStats>) -> Self {
        Subscriber {
            client,
            channel: channel.to_vec(),
            stats,
            backoff: Backoff::new(),
        }
    }

    /// Receives until `stop` is set.
    pub(crate) fn run(&mut self, stop: &AtomicBool, out: &mut impl Deliver) {
        let mut was_subscribed = false;
        while !stop.load(Ordering::Acquire) {
            let mut conn = match self.client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                Ok(c) => c,
                Err(e) => {
                    self.failed(&e, stop);
                    continue;
                }
            };
            if let Err(e) = conn.set_read_timeout(Some(POLL)) {
                self.failed(&e, stop);
                continue;
            }
            let mut sub = conn.as_pubsub();
            if let Err(e) = sub.subscribe(&self.channel[..]) {
                self.failed(&e, stop);
                continue;
            }
            self.stats.subscribed.store(true, Ordering::Relaxed);
            self.backoff.reset();
            if was_subscribed {
                self.stats.resubscribed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "redis: subscribed again; events published meanwhile were missed here"
                );
                out.continuity_lost();
            }
            was_subscribed = true;
            while !stop.load(Ordering::Acquire) {
                let msg = match sub.get_message() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => {
                        self.stats.subscribed.store(false, Ordering::Relaxed);
                        self.failed(&e, stop);
                        break;
                    }
                };
                match wire::decode(msg.get_payload_bytes()) {
                    Ok(events) => {
                        self.stats.messages.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .events
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        for e in &events {
                            out.event(e);
                        }
                    }
                    Err(e) => {
                        if self.stats.bad_messages.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(error = %e, "redis: a message on the events channel is not a batch; skipped (counted from now on)");
                        }
                    }
                }
            }
        }
        self.stats.subscribed.store(false, Ordering::Relaxed);
    }

    /// Counts a failure and waits the backoff (waking early if `stop` is set).
    fn failed(&mut self, e: &redis::RedisError, stop: &AtomicBool) {
        if self.stats.failures.fetch_add(1, Ordering::Relaxed) == 0 || self.backoff.is_first() {
            tracing::warn!(error = %e, "redis: subscription lost or refused; trying again");
        }
        let wait = self.backoff.next_wait();
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10).min(wait));
        }
    }
}

#[cfg(test)]
mod tests;
