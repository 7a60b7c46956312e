//! Catching a connection up: what it missed goes to it from the spool (through the
//! [`ColdTier`] seam) while the range is older than memory, then from memory history; `gap`
//! frames name what neither holds; unacked events are redelivered in `seq` order. A breaker
//! that opens diverts a connection into the same replay ([`divert`]). `Core::pump_replays`
//! drives it once per pass within a shared read budget.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::breaker::Cause;
use super::coalesce;
use super::conn::{Conn, ConnId, ConnKind, Cursor};
use super::durable::{self, ColdTier, KIND_EVENT};
use super::frame;
use super::stats::Stats;
use super::stream::{Unacked, UserState};

/// A replaying connection is refilled from history when its unsent bytes drop below this...
pub(super) const REPLAY_LOW_WATER: usize = 64 * 1024;

/// ...up to about this many bytes.
pub(super) const REPLAY_CHUNK: usize = 256 * 1024;

/// Spool bytes one connection's scan (a replay older than its user's dense index) reads per
/// pass at most, so one deep resume cannot stall a shard...
pub(super) const COLD_SCAN_BUDGET: usize = 1 << 20;

/// ...and bytes all cold replays of a shard read per pass (by position or by scan).
pub(super) const COLD_PASS_BUDGET: usize = 4 << 20;

/// The breaker of `c` (connection `id`) just opened while event `next` was to be queued (by
/// default the first event not queued yet): drop the unsent events from memory (a frame
/// already partly written stays, so the byte stream remains valid) and make the connection
/// resume from the first of them, out of history, once the breaker half-opens.
pub(super) fn divert(
    c: &mut Conn,
    id: ConnId,
    next: Option<u64>,
    stats: &mut Stats,
    replaying: &mut Vec<ConnId>,
) {
    let next = next.unwrap_or_else(|| c.phase.replay_next().unwrap_or(c.last_queued_seq + 1));
    let (_, done) =
        frame::complete_prefix(&c.out[c.raw_head..], c.written.saturating_sub(c.raw_head));
    let mut keep = c.raw_head + done;
    if c.written > keep {
        keep += frame::frame_len(&c.out[keep..]).expect("a partly written frame has its header");
    }
    let dropped = frame::count_event_frames(&c.out[keep..]);
    // Resume from the first dropped event (a `gap` frame among the dropped ones is announced
    // again by the replay; a coalesced frame stands for several), or from `next` when none
    // was queued.
    let from = match frame::first_event_seq(&c.out[keep..]) {
        Some(seq) => {
            let payload = frame::payload(&c.out[keep..]).unwrap_or_default();
            coalesce::first_covered(payload, seq)
        }
        None => next,
    };
    c.tail_thinking = None;
    debug_assert!(from <= c.last_queued_seq + 1);
    c.out.truncate(keep);
    c.unwritten_frames -= dropped;
    c.pending = c.pending.saturating_sub(dropped as usize);
    c.last_queued_seq = from - 1;
    c.phase.replay_from(from);
    if !replaying.contains(&id) {
        replaying.push(id);
    }
    stats.events_diverted += dropped;
    stats.breaker_opened += 1;
    stats.breakers_open += 1;
    match c.breaker.cause() {
        Cause::Backlog => stats.breaker_trips_backlog += 1,
        Cause::MissedPong => stats.breaker_trips_missed_pong += 1,
        Cause::WriteError => stats.breaker_trips_write_error += 1,
    }
}

/// Queues a `gap` frame: events `from..=to` of stream `epoch` cannot be delivered (an empty
/// range when `to < from`). `previous` is the client's cursor when its epoch is not this one.
pub(super) fn append_gap(
    out: &mut BytesMut,
    reason: &str,
    epoch: u64,
    from: u64,
    to: u64,
    previous: Option<Cursor>,
) {
    use std::fmt::Write as _;
    let mut msg = String::with_capacity(160);
    let _ = write!(
        msg,
        "{{\"type\":\"gap\",\"reason\":\"{reason}\",\"epoch\":\"{epoch:016x}\",\"from\":{from},\"to\":{to}"
    );
    if let Some(p) = previous {
        let _ = write!(msg, ",\"previous_seq\":{}", p.since);
        if let Some(e) = p.epoch {
            let _ = write!(msg, ",\"previous_epoch\":\"{e:016x}\"");
        }
    }
    msg.push('}');
    frame::append_text(out, msg.as_bytes());
}

/// Replays connection `c`'s events from `next` up to `mem` (where memory history takes over)
/// out of the spool, at most a chunk per call. Returns true when it stopped at its budget
/// (its replay goes on where `c.phase` says); false when the spool part is done: the replay is
/// then at
/// `mem`, after a `gap` for whatever the spool no longer had.
pub(super) fn cold_replay(
    c: &mut Conn,
    u: &UserState,
    next: u64,
    mem: u64,
    cold: &mut dyn ColdTier,
    stats: &mut Stats,
    budget: &mut usize,
) -> bool {
    let cold_pos = c.phase.cold_pos();
    let Conn {
        kind: ConnKind::User(user),
        out,
        ..
    } = c
    else {
        unreachable!("only user connections replay");
    };
    let epoch = u.epoch;
    let mut want = next;
    let mut copied = 0usize;
    let mut n = 0u64;
    let mut reached_memory = false;
    let mut gaps = 0;
    let mut failed = None;
    let mut to_dense = false;
    // Recent events by position: the user's records and nothing else are read.
    if cold_pos.is_none() {
        while want < mem && copied < REPLAY_CHUNK && *budget > 0 {
            let Some(pos) = u.cold.position(want) else {
                break;
            };
            match cold.read_at(pos, user) {
                Ok(Some(r)) if r.kind == KIND_EVENT && r.epoch == epoch && r.seq == want => {
                    out.extend_from_slice(r.frame);
                    copied += r.frame.len();
                    *budget = budget.saturating_sub(r.frame.len() + durable::HEADER);
                    want += 1;
                    n += 1;
                }
                // Trimmed by retention, or not what the index says: the scan below decides.
                Ok(_) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    let dense_done = want >= mem || copied >= REPLAY_CHUNK || *budget == 0;
    let scanned = if let Some(e) = failed {
        Err(e)
    } else if dense_done {
        Ok(Some(0))
    } else {
        // Older than the dense index: scan from the nearest checkpoint, within the budget.
        let this_pass = COLD_SCAN_BUDGET.min(*budget);
        *budget -= this_pass;
        match cold_pos.or_else(|| u.cold.scan_from(want, cold.start())) {
            None => Ok(None),
            Some(pos) => cold.scan(pos, this_pass, user, &mut |_, r| {
                if u.cold.position(want).is_some() {
                    // Caught up with the dense index: read by position from here on.
                    to_dense = true;
                    return false;
                }
                if r.kind != KIND_EVENT || r.epoch != epoch || r.seq < want {
                    return true;
                }
                if r.seq >= mem {
                    reached_memory = true;
                    return false;
                }
                if r.seq > want {
                    // Trimmed from the spool (retention), or lost to a failed write.
                    append_gap(out, "history_evicted", epoch, want, r.seq - 1, None);
                    gaps += 1;
                }
                out.extend_from_slice(r.frame);
                want = r.seq + 1;
                n += 1;
                copied += r.frame.len();
                copied < REPLAY_CHUNK && want < mem
            }),
        }
    };
    stats.gaps += gaps;
    stats.events_replayed += n;
    stats.events_replayed_cold += n;
    if n > 0 {
        c.last_queued_seq = want - 1;
        c.unwritten_frames += n;
        c.pending += n as usize;
    }
    let more = match scanned {
        Ok(Some(_)) if dense_done => want < mem,
        Ok(_) if to_dense => {
            c.phase.set_cold_pos(None);
            want < mem
        }
        Ok(Some(pos)) if !reached_memory && want < mem => {
            c.phase.set_cold_pos(Some(pos));
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "spool read failed during a replay");
            stats.spool_read_errors += 1;
            false
        }
    };
    if !more {
        if want < mem {
            append_gap(&mut c.out, "history_evicted", epoch, want, mem - 1, None);
            stats.gaps += 1;
        }
        c.phase.set_cold_pos(None);
        want = mem;
    }
    c.phase.replayed_to(want);
    more
}

/// Queues, right after `hello`, the user's unacked events with a `seq` in `seqs` (before the
/// first event this connection gets by replay or live): a `redelivery` frame with their
/// count, then each event frame as first sent. They become part of the connection's opening bytes (like
/// the 101), so they never count as delivered or dropped events: until acked they stay kept
/// and go again to the next connection.
pub(super) fn redeliver_unacked(
    c: &mut Conn,
    unacked: &VecDeque<Unacked>,
    seqs: std::ops::Range<u64>,
    stats: &mut Stats,
) {
    let wanted = || unacked.iter().filter(|e| seqs.contains(&e.seq));
    let count = wanted().count();
    if count > 0 {
        let msg = format!("{{\"type\":\"redelivery\",\"count\":{count}}}");
        frame::append_text(&mut c.out, msg.as_bytes());
        for e in wanted() {
            c.out.extend_from_slice(&e.frame);
        }
        stats.events_redelivered += count as u64;
    }
    // Everything so far (the 101 or what is left of it, control replies, hello,
    // redeliveries) is opening bytes: a prefix of `out` that holds no event frame to count.
    c.raw_head = c.out.len();
}

/// Redis engine: the frames Redis gave a connection that resumes before its shard's history,
/// `first..=through` of its user's stream (empty while `through` is `first - 1`).
#[derive(Debug)]
pub(super) struct Backfill {
    pub first: u64,
    pub through: u64,
    pub frames: Vec<u8>,
}

impl Backfill {
    pub(super) fn new(first: u64) -> Backfill {
        debug_assert!(first > 0, "seqs start at 1");
        Backfill {
            first,
            through: first - 1,
            frames: Vec::new(),
        }
    }
}
