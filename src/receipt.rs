//! Delivery receipts: what became of one emitted event, read by the emitting application
//! without a lock.
//!
//! [`Emitter::emit_tracked`](crate::Emitter::emit_tracked) takes a slot from a fixed table,
//! sends its number with the event through the ring, and returns a [`Receipt`]. The event's
//! shard writes into the slot as the event moves on: routed (with its `seq`), spooled, written
//! in full to N connections, acked by a client, or dead-lettered. Dropping the `Receipt` frees
//! the slot; a generation number in the slot keeps a late update for the old event from
//! reaching the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Slot word layout: generation in the high 32 bits, flags in bits 16..32, connections the
/// event was written to in the low 16 bits (saturating).
const ROUTED: u64 = 1 << 16;
const SPOOLED: u64 = 1 << 17;
const ACKED: u64 = 1 << 19;
const DEAD_LETTERED: u64 = 1 << 20;
const WRITTEN_MASK: u64 = 0xffff;

/// What is known about one tracked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReceiptStatus {
    /// The event's `seq` once its shard routed it.
    pub seq: Option<u64>,
    /// The event is in the spool file (and synced, with `spool_fsync = always`): it survives a
    /// crash of the process and is replayed after a restart.
    pub spooled: bool,
    /// Connections of the user the event was completely written to (as sockets took it; a
    /// resumed connection that replays it counts again).
    pub written_to: u16,
    /// A client acked it (cumulative `{"ack":N}` with `N >= seq`).
    pub acked: bool,
    /// It needed an ack and none came within `ack_timeout`: it was written to the dead-letter
    /// file.
    pub dead_lettered: bool,
}

/// A handle on one tracked event's status, from
/// [`Emitter::emit_tracked`](crate::Emitter::emit_tracked) (which has an example with a spool).
/// Freed when dropped.
///
/// ```
/// # fn main() -> Result<(), floodgate::Error> {
/// let gw = floodgate::Gateway::builder()
///     .bind("127.0.0.1:0")
///     .jwt_hs256_secret("a-secret-of-at-least-thirty-two-bytes!")
///     .build()?;
/// let mut em = gw.emitter();
/// let receipt = em.emit_tracked("user-1", floodgate::Event::agent_started("run-1"))?;
/// let status = receipt.wait_until(std::time::Duration::from_secs(5), |s| s.seq.is_some());
/// assert_eq!(status.seq, Some(1), "routed: it has its seq");
/// assert!(!status.spooled, "no spool configured");
/// assert!(!status.acked, "agent_started needs no ack");
/// # Ok(()) }
/// ```
pub struct Receipt {
    board: Arc<ReceiptBoard>,
    slot: u32,
    gen: u32,
}

impl Receipt {
    /// The event's status now.
    pub fn status(&self) -> ReceiptStatus {
        // Acquire: pairs with the Release in `ReceiptBoard::update`, so a word with ROUTED set
        // comes with the `seq` stored before it.
        let w = self.board.slots[self.slot as usize]
            .word
            .load(Ordering::Acquire);
        if (w >> 32) as u32 != self.gen {
            return ReceiptStatus::default();
        }
        let seq = (w & ROUTED != 0).then(|| {
            // Relaxed: ordered by the Acquire load of the word above.
            self.board.slots[self.slot as usize]
                .seq
                .load(Ordering::Relaxed)
        });
        ReceiptStatus {
            seq,
            spooled: w & SPOOLED != 0,
            written_to: (w & WRITTEN_MASK) as u16,
            acked: w & ACKED != 0,
            dead_lettered: w & DEAD_LETTERED != 0,
        }
    }

    /// Waits (sleeping briefly between looks) until `done(status)` holds or `timeout` passes;
    /// returns the last status seen.
    pub fn wait_until(
        &self,
        timeout: std::time::Duration,
        mut done: impl FnMut(&ReceiptStatus) -> bool,
    ) -> ReceiptStatus {
        let deadline = std::time::Instant::now() + timeout;
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let s = self.status();
            if done(&s) || std::time::Instant::now() >= deadline {
                return s;
            }
            if backoff.is_completed() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            } else {
                backoff.snooze();
            }
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.board.release(self.slot, self.gen);
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("slot", &self.slot)
            .field("status", &self.status())
            .finish()
    }
}

struct Slot {
    word: AtomicU64,
    seq: AtomicU64,
}

/// The table of receipt slots, shared by emitters and shards.
pub(crate) struct ReceiptBoard {
    slots: Box<[Slot]>,
    free: ArrayQueue<u32>,
}

/// A slot reference carried through the ring: slot number and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub slot: u32,
    pub gen: u32,
}

impl Ticket {
    pub(crate) fn to_bytes(self) -> [u8; 8] {
        ((u64::from(self.gen) << 32) | u64::from(self.slot)).to_le_bytes()
    }
    pub(crate) fn from_bytes(b: [u8; 8]) -> Ticket {
        let v = u64::from_le_bytes(b);
        Ticket {
            slot: v as u32,
            gen: (v >> 32) as u32,
        }
    }
}

/// What a shard reports about a tracked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Routed(u64),
    Spooled,
    Written,
    Acked,
    DeadLettered,
}

impl std::fmt::Debug for ReceiptBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptBoard")
            .field("capacity", &self.slots.len())
            .field("free", &self.free.len())
            .finish()
    }
}

impl ReceiptBoard {
    pub(crate) fn new(capacity: usize) -> ReceiptBoard {
        let free = ArrayQueue::new(capacity.max(1));
        for i in 0..capacity as u32 {
            let _ = free.push(i);
        }
        ReceiptBoard {
            slots: (0..capacity)
                .map(|_| Slot {
                    word: AtomicU64::new(0),
                    seq: AtomicU64::new(0),
                })
                .collect(),
            free,
        }
    }

    /// A free slot, or `None` when every slot has a live receipt.
    pub(crate) fn take(self: &Arc<Self>) -> Option<(Receipt, Ticket)> {
        let slot = self.free.pop()?;
        // Acquire: the generation written by the `release` that freed the slot.
        let gen = (self.slots[slot as usize].word.load(Ordering::Acquire) >> 32) as u32;
        let t = Ticket { slot, gen };
        Some((
            Receipt {
                board: self.clone(),
                slot,
                gen,
            },
            t,
        ))
    }

    fn release(&self, slot: u32, gen: u32) {
        // Release: a later `take` of this slot sees the new generation (and no old flags).
        self.slots[slot as usize]
            .word
            .store(u64::from(gen.wrapping_add(1)) << 32, Ordering::Release);
        let _ = self.free.push(slot);
    }

    /// Applies a shard's report to the slot, unless the receipt was dropped since.
    pub(crate) fn update(&self, t: Ticket, p: Progress) {
        let Some(s) = self.slots.get(t.slot as usize) else {
            return;
        };
        if let Progress::Routed(seq) = p {
            // Relaxed: published by the Release CAS below (only the shard writes `seq`, and a
            // reader looks at it only after seeing ROUTED).
            s.seq.store(seq, Ordering::Relaxed);
        }
        // Relaxed first load: the CAS below checks it.
        let mut w = s.word.load(Ordering::Relaxed);
        loop {
            if (w >> 32) as u32 != t.gen {
                return;
            }
            let new = match p {
                Progress::Routed(_) => w | ROUTED,
                Progress::Spooled => w | SPOOLED,
                Progress::Written if w & WRITTEN_MASK < WRITTEN_MASK => w + 1,
                Progress::Written => w,
                Progress::Acked => w | ACKED,
                Progress::DeadLettered => w | DEAD_LETTERED,
            };
            // Release on success: see `Receipt::status`. Relaxed on failure: we only retry.
            match s
                .word
                .compare_exchange_weak(w, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_sees_its_event_progress() {
        let board = Arc::new(ReceiptBoard::new(2));
        let (r, t) = board.take().unwrap();
        assert_eq!(r.status(), ReceiptStatus::default());
        board.update(t, Progress::Routed(41));
        board.update(t, Progress::Spooled);
        board.update(t, Progress::Written);
        board.update(t, Progress::Written);
        board.update(t, Progress::Acked);
        let s = r.status();
        assert_eq!(s.seq, Some(41));
        assert!(s.spooled && s.acked && !s.dead_lettered);
        assert_eq!(s.written_to, 2);
    }

    #[test]
    fn a_freed_slot_ignores_late_updates_for_its_old_event() {
        let board = Arc::new(ReceiptBoard::new(1));
        let (r, old) = board.take().unwrap();
        assert!(board.take().is_none(), "the only slot is taken");
        drop(r);
        let (r2, new) = board.take().unwrap();
        assert_eq!(old.slot, new.slot);
        assert_ne!(old.gen, new.gen);
        board.update(old, Progress::Acked);
        assert!(
            !r2.status().acked,
            "an update for the old event does not land"
        );
        board.update(new, Progress::Routed(7));
        assert_eq!(r2.status().seq, Some(7));
        assert_eq!(Ticket::from_bytes(new.to_bytes()), new);
    }
}
