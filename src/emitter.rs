//! The producer side: [`Emitter`], one per producing thread.
//!
//! Each event becomes one ring record (the layout is in [`crate::record`]).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use crossbeam_channel::Sender;

use crate::core::Boards;
use crate::error::EmitError;
use crate::event::{Event, EventType, NoData};
use crate::metrics::Registry;
use crate::park::Parker;
use crate::receipt::{Receipt, Ticket};
use crate::record::{shard_of, UnixClock, MAX_USER_LEN};
use crate::ring::{self, Consumer, Producer, PushError};

/// How an emitter reaches one reactor shard.
pub(crate) struct ShardLink {
    /// Where a new emitter's ring goes.
    pub rings: Sender<Consumer>,
    /// Wakes the shard when it sleeps.
    pub parker: Arc<Parker>,
}

/// What every emitter of a gateway shares, made by the gateway.
pub(crate) struct EmitterShared {
    /// The shards, by index.
    pub shards: Box<[ShardLink]>,
    /// Counts emits refused with `Full`.
    pub registry: Arc<Registry>,
    pub ring_capacity: usize,
    pub max_event_bytes: usize,
    /// Users' delivery states and the receipt slots, shared with the shards.
    pub boards: Boards,
    /// The calibrated counter clock each emitter stamps events with.
    pub clock: quanta::Clock,
}

/// Emits events for users. Create one per producing thread with
/// [`Gateway::emitter`](crate::Gateway::emitter): it is `Send` but neither `Sync` nor `Clone`,
/// because it owns the producer end of one single-producer ring per reactor shard.
///
/// Emitting never blocks, never takes a lock, makes no syscall (unless the target reactor is
/// parked, when it wakes it once) and, once its buffer has grown to the largest event, allocates
/// nothing.
pub struct Emitter {
    /// One ring per shard, indexed by shard.
    producers: Box<[Producer]>,
    shared: Arc<EmitterShared>,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
    /// Stamps each event's `ts`.
    clock: UnixClock,
    _not_sync: PhantomData<Cell<()>>,
}

impl Emitter {
    pub(crate) fn new(shared: Arc<EmitterShared>) -> Emitter {
        let producers = shared
            .shards
            .iter()
            .map(|shard| {
                let (p, c) = ring::channel(shared.ring_capacity);
                // If the shard is gone the consumer is dropped, which closes the ring: pushes
                // then fail with `Closed`.
                let _ = shard.rings.send(c);
                shard.parker.wake();
                p
            })
            .collect();
        Emitter {
            producers,
            clock: UnixClock::new(shared.clock.clone()),
            shared,
            scratch: Vec::with_capacity(1024),
            _not_sync: PhantomData,
        }
    }

    /// Emits `event` to every live connection of `user`. The event is stamped with the current
    /// time; the reactor assigns its `seq`.
    ///
    /// On error the event is handed back inside [`EmitError`], and nothing was queued. A full
    /// ring (the shard is behind) is the one error worth waiting out:
    ///
    /// ```
    /// use floodgate::{EmitError, Event};
    /// # fn main() -> Result<(), floodgate::Error> {
    /// let gw = floodgate::Gateway::builder()
    ///     .bind("127.0.0.1:0")
    ///     .jwt_hs256_secret("a-secret-of-at-least-thirty-two-bytes!")
    ///     .build()?;
    /// let mut em = gw.emitter();
    /// let backoff = crossbeam_utils::Backoff::new();
    /// let mut event = Event::agent_started("run-1");
    /// loop {
    ///     match em.emit("user-1", event) {
    ///         Ok(()) => break,
    ///         Err(EmitError::Full(back)) => {
    ///             event = back; // the same event, handed back
    ///             backoff.snooze();
    ///         }
    ///         Err(other) => return Err(other.into()), // why, without the event
    ///     }
    /// }
    /// let report = gw.shutdown()?;
    /// assert_eq!(report.metrics.stats.events_received, 1, "routed, even with nobody connected");
    /// # Ok(()) }
    /// ```
    pub fn emit<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        event: Event<'a, D>,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        self.push(user, event, None)
    }

    /// Emits `event` like [`emit`](Self::emit) and returns a [`Receipt`] that tells, without a
    /// lock, what became of it: its `seq`, whether it is spooled, how many connections it was
    /// written to, whether a client acked it. Receipts come from a fixed table
    /// (`receipt_capacity`); when every slot is held by a live receipt, this returns
    /// [`EmitError::NoReceipt`] and nothing was queued. Drop receipts you no longer need.
    ///
    /// ```
    /// # fn main() -> Result<(), floodgate::Error> {
    /// let dir = std::env::temp_dir().join(format!("floodgate-doc-{}", std::process::id()));
    /// let gw = floodgate::Gateway::builder()
    ///     .bind("127.0.0.1:0")
    ///     .jwt_hs256_secret("a-secret-of-at-least-thirty-two-bytes!")
    ///     .spool_dir(&dir)
    ///     .build()?;
    /// let mut em = gw.emitter();
    /// let answer = serde_json::json!({"answer": 42});
    /// let receipt = em.emit_tracked("user-1", floodgate::Event::agent_completed("run-1", &answer))?;
    /// // Later, or from another thread: no lock is taken.
    /// let s = receipt.wait_until(std::time::Duration::from_secs(5), |s| s.spooled);
    /// assert!(s.spooled, "on disk: it survives a crash of the process");
    /// assert_eq!(s.seq, Some(1), "user-1's first event");
    /// assert_eq!(s.written_to, 0, "nobody is connected as user-1");
    /// drop(receipt); // frees its slot
    /// gw.shutdown()?;
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(()) }
    /// ```
    pub fn emit_tracked<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        event: Event<'a, D>,
    ) -> Result<Receipt, EmitError<Event<'a, D>>> {
        let Some((receipt, ticket)) = self.shared.boards.receipts.take() else {
            return Err(EmitError::NoReceipt(event));
        };
        // On error the receipt is dropped here, which frees its slot.
        self.push(user, event, Some(ticket)).map(|()| receipt)
    }

    fn push<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        event: Event<'a, D>,
        ticket: Option<Ticket>,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(EmitError::InvalidUser(event));
        }
        if !event.event_type().is_valid() {
            return Err(EmitError::InvalidType(event));
        }
        let ts = self.clock.now_ns();
        self.scratch.clear();
        if event.encode_body(ts, &mut self.scratch).is_err() {
            return Err(EmitError::Unserializable(event));
        }
        if self.scratch.len() > self.shared.max_event_bytes {
            return Err(EmitError::TooLarge(event));
        }
        let shard = shard_of(user.as_bytes(), self.producers.len());
        let head = crate::record::head(ts, event.needs_ack(), ticket.is_some(), user.len() as u8);
        let pushed = match ticket {
            None => self.producers[shard].push(&[&head, user.as_bytes(), &self.scratch]),
            Some(t) => {
                let t = t.to_bytes();
                self.producers[shard].push(&[&head, user.as_bytes(), &t, &self.scratch])
            }
        };
        match pushed {
            Ok(()) => {
                self.shared.shards[shard].parker.unpark();
                Ok(())
            }
            Err(PushError::Full) => {
                // Relaxed: an independent statistic, on the cold path only.
                self.shared
                    .registry
                    .rejected_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(EmitError::Full(event))
            }
            Err(PushError::Closed) => Err(EmitError::Closed(event)),
            Err(PushError::TooLarge) => Err(EmitError::TooLarge(event)),
        }
    }

    /// What the gateway knows about delivery to `user`, read without a lock: how many
    /// connections the user has, how many of them have an open circuit breaker (they fell
    /// behind and their events wait in history), and the lowest breaker health (0 to 100).
    /// `None` if nothing is known: the user never connected to this gateway, or another user's
    /// state took its slot in the fixed-size table. The state is published when connections
    /// come and go and when a breaker changes state.
    pub fn delivery(&self, user: &str) -> Option<crate::delivery::Delivery> {
        self.shared.boards.delivery.get(user.as_bytes())
    }

    /// Emits `agent_started` for `run_id`.
    pub fn agent_started<'a>(
        &mut self,
        user: &str,
        run_id: &'a str,
    ) -> Result<(), EmitError<Event<'a, NoData>>> {
        self.emit(user, Event::agent_started(run_id))
    }

    /// Emits `agent_thinking` for `run_id` with `data` (for example `{"delta": "..."}`).
    pub fn agent_thinking<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        run_id: &'a str,
        data: &'a D,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        self.emit(user, Event::with(EventType::AgentThinking, run_id, data))
    }

    /// Emits `tool_executing` for `run_id` with `data` (for example the tool and its arguments).
    pub fn tool_executing<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        run_id: &'a str,
        data: &'a D,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        self.emit(user, Event::with(EventType::ToolExecuting, run_id, data))
    }

    /// Emits `tool_completed` for `run_id` with `data` (for example the tool's result).
    pub fn tool_completed<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        run_id: &'a str,
        data: &'a D,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        self.emit(user, Event::with(EventType::ToolCompleted, run_id, data))
    }

    /// Emits `agent_completed` for `run_id` with `data` (for example the final answer).
    pub fn agent_completed<'a, D: Serialize + ?Sized>(
        &mut self,
        user: &str,
        run_id: &'a str,
        data: &'a D,
    ) -> Result<(), EmitError<Event<'a, D>>> {
        self.emit(user, Event::with(EventType::AgentCompleted, run_id, data))
    }
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("shards", &self.producers.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_mapping_is_stable_and_spread() {
        assert_eq!(shard_of(b"anyone", 1), 0);
        let a = shard_of(b"u1", 4);
        assert_eq!(a, shard_of(b"u1", 4));
        let used: std::collections::HashSet<_> = (0..64)
            .map(|i| shard_of(format!("u{i}").as_bytes(), 4))
            .collect();
        assert_eq!(used.len(), 4, "64 users should land on all 4 shards");
    }

    #[test]
    fn emitter_is_send_not_sync_not_clone() {
        fn assert_send<T: Send>() {}
        assert_send::<Emitter>();
        // Not Sync / not Clone are enforced by PhantomData<Cell<()>> and the absence of an impl;
        // a compile-fail check lives in the crate docs (see lib.rs).
    }
}
