//! One user's stream on a shard: its `seq` and epoch, its connections, its history index and
//! spool index, the events that wait for a client's ack, and the receipts still followed. An
//! unacked event leaves only by an ack or by [`expire_unacked`] (dead letter); the frames of
//! acked events go back to the shard's pool.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::CoreConfig;
use super::conn::ConnId;
use super::durable::{self, ColdIndex, SpoolRecord, FLAG_EXPIRED, KIND_ACK};
use super::frame;
use super::history::History;
use super::stats::Stats;
use crate::receipt::{Progress, ReceiptBoard, Ticket};

/// Receipts of events that need no ack are updated for this long after routing.
pub(super) const TRACK_FOR: Duration = Duration::from_secs(60);
/// Receipts tracked per user at most (the oldest stop being updated).
pub(super) const MAX_TRACKED: usize = 4096;

/// A user's stream on this shard.
#[derive(Debug)]
pub(super) struct UserState {
    /// The last sequence number assigned (0 = none yet).
    pub(super) seq: u64,
    /// Identifies this run of `seq` numbers: a new state (first use, or after its counter was
    /// dropped) gets a new epoch, so a cursor from an older run is never taken for this one.
    pub(super) epoch: u64,
    pub(super) conns: Vec<ConnId>,
    pub(super) history: History,
    /// Where this stream's events are in the spool.
    pub(super) cold: ColdIndex,
    /// The highest `seq` a client acked.
    pub(super) acked: u64,
    /// Events that need an ack and have none yet, oldest first (kept whatever history evicts).
    pub(super) unacked: VecDeque<Unacked>,
    /// Tracked events whose receipts may still change, oldest first.
    pub(super) tracked: VecDeque<Tracked>,
    /// `seq` and `epoch` are Redis's as of the subscriber's position (always, on the local
    /// engine). False for a stream the node made for a connection, and for every stream once
    /// the subscriber may have missed part of the log, until Redis answers a sync request.
    pub(super) synced: bool,
    /// Sync requests for this stream on their way to Redis (its waiting connections start
    /// once the last is answered).
    pub(super) syncs_pending: u16,
}

/// An event waiting for a client's ack.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) seq: u64,
    pub(super) deadline: Instant,
    /// The whole frame, as sent (a buffer from `Core::frame_pool`).
    pub(super) frame: Vec<u8>,
    /// This node emitted it (always, on the local engine): the node that dead-letters it
    /// if no client acks it. On the Redis engine every node keeps every unacked event (a
    /// user may reconnect anywhere), and acks reach them all through the log.
    pub(super) own: bool,
}

/// A tracked event (one with a receipt).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tracked {
    pub(super) seq: u64,
    pub(super) ticket: Ticket,
    pub(super) needs_ack: bool,
    pub(super) at: Instant,
}

impl UserState {
    pub(super) fn new(epoch: u64) -> UserState {
        UserState {
            seq: 0,
            epoch,
            conns: Vec::new(),
            history: History::default(),
            cold: ColdIndex::default(),
            acked: 0,
            unacked: VecDeque::new(),
            tracked: VecDeque::new(),
            synced: true,
            syncs_pending: 0,
        }
    }

    /// The first `seq` held in memory, or the next to come.
    pub(super) fn memory_from(&self) -> u64 {
        self.history.first_seq().unwrap_or(self.seq + 1)
    }

    /// The oldest `seq` a replay can start from: the first retained in memory or (possibly)
    /// in the spool, or the next to come.
    pub(super) fn retained_from(&self) -> u64 {
        let mem = self.memory_from();
        self.cold.first_seq().map_or(mem, |c| c.min(mem))
    }
}

/// The epoch of the `n`th stream a shard creates: distinct for every `n`, and unrelated between
/// processes (the seed is random per process). SplitMix64's finaliser spreads the bits.
pub(super) fn epoch_for(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Encodes a spool record that settles `user`'s events up to `seq`: acked by a client, or
/// (`expired`) dead-lettered. Returns its length. (No time stamp: the core reads no clock,
/// and recovery needs none.)
pub(super) fn spool_settle(
    out: &mut Vec<u8>,
    user: &[u8],
    epoch: u64,
    seq: u64,
    expired: bool,
) -> u64 {
    let r = SpoolRecord {
        kind: KIND_ACK,
        flags: if expired { FLAG_EXPIRED } else { 0 },
        user,
        epoch,
        seq,
        ts: 0,
        frame: &[],
    };
    durable::encode(out, &r, &[]) as u64
}

/// Capacity kept in a [`FramePool`] at most, in bytes of all its buffers together.
pub(super) const FRAME_POOL_BYTES: usize = 1 << 20;

/// Buffers kept in a [`FramePool`] at most, however small.
pub(super) const FRAME_POOL_BUFFERS: usize = 8192;

/// Larger frame buffers are freed rather than kept.
pub(super) const POOLED_FRAME_MAX: usize = 4096;

/// Frame buffers of settled events, kept for the next events that need an ack, so neither an
/// ack nor the next event allocates once warm. Bounded by bytes ([`FRAME_POOL_BYTES`]) rather
/// than by count: one cumulative ack settles thousands of events at a time, and a pool of a
/// few hundred buffers freed most of them only to allocate them again for the next events
/// (4-5% of the shard thread in `floodgate bench`).
#[derive(Debug, Default)]
pub(super) struct FramePool {
    bufs: Vec<Vec<u8>>,
    /// The capacities of `bufs`, summed: at most `FRAME_POOL_BYTES`.
    bytes: usize,
}

impl FramePool {
    /// An empty buffer: a kept one, or a new one.
    pub(super) fn take(&mut self) -> Vec<u8> {
        match self.bufs.pop() {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    /// Keeps `frame`, cleared, or frees it when the pool is full or it is too large.
    pub(super) fn give(&mut self, mut frame: Vec<u8>) {
        let cap = frame.capacity();
        if cap == 0
            || cap > POOLED_FRAME_MAX
            || self.bytes + cap > FRAME_POOL_BYTES
            || self.bufs.len() >= FRAME_POOL_BUFFERS
        {
            return;
        }
        frame.clear();
        self.bytes += cap;
        self.bufs.push(frame);
        debug_assert!(self.bytes <= FRAME_POOL_BYTES);
    }

    /// Buffers kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.bufs.len()
    }
}

/// What settling an unacked event without an ack writes to: see [`expire_unacked`].
pub(super) struct Expiry<'a> {
    pub(super) cfg: &'a CoreConfig,
    pub(super) receipts: &'a ReceiptBoard,
    pub(super) stats: &'a mut Stats,
    pub(super) dead_out: &'a mut Vec<u8>,
    pub(super) spool_out: &'a mut Vec<u8>,
    pub(super) spool_pos: &'a mut u64,
    pub(super) frame_pool: &'a mut FramePool,
}

/// Settles `e`, an event of `user`'s stream (`epoch`, its `tracked` receipts) that needed an
/// ack and will get none (`reason`): a dead-letter line (one JSON object: user, epoch, seq,
/// reason and the event as it was sent), its receipt marked, a count, a spool record so a
/// restart does not bring it back, and its frame buffer back to the pool. The one way out for
/// an unacked event other than an ack.
pub(super) fn expire_unacked(
    x: &mut Expiry<'_>,
    user: &[u8],
    epoch: u64,
    tracked: &VecDeque<Tracked>,
    e: Unacked,
    reason: &str,
) {
    use std::io::Write as _;
    if !e.own {
        // Another node emitted it and dead-letters it (Redis engine): one line, not one
        // per node.
        x.stats.unacked_left_to_origin += 1;
        x.frame_pool.give(e.frame);
        return;
    }
    let out = &mut *x.dead_out;
    let name = String::from_utf8_lossy(user);
    let _ = write!(out, "{{\"user\":");
    let _ = serde_json::to_writer(&mut *out, &*name);
    let _ = write!(
        out,
        ",\"epoch\":\"{epoch:016x}\",\"seq\":{},\"reason\":\"{reason}\",\"event\":",
        e.seq
    );
    out.extend_from_slice(frame::payload(&e.frame).unwrap_or(b"null"));
    out.extend_from_slice(b"}\n");
    x.stats.events_dead_lettered += 1;
    if let Some(t) = tracked.iter().find(|t| t.seq == e.seq) {
        x.receipts.update(t.ticket, Progress::DeadLettered);
    }
    if x.cfg.spool {
        *x.spool_pos += spool_settle(x.spool_out, user, epoch, e.seq, true);
    }
    x.frame_pool.give(e.frame);
}
