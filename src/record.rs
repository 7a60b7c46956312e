//! The ring record: how an event travels from an emitter to its shard. A leaf: it depends on
//! nothing above it, and the emitter (which writes records), the core (which parses them),
//! the delivery board and the acceptor (which place users by [`shard_of`]) all import it.
//!
//! # Layout
//! `ts` (u64 LE, unix ns), `flags` (u8: [`REC_ACK`] the event needs an ack, [`REC_TICKET`] a
//! receipt ticket follows the user id, [`REC_SEQ`] the stream's `epoch` and the event's `seq`
//! follow, [`REC_SYNC`], [`REC_ACKED`] and [`REC_LOST`] a notice rather than an event),
//! `user_len` (u8), the user id bytes, the ticket (8 bytes, only with [`REC_TICKET`]), `epoch`
//! and `seq` (u64 LE each, only with [`REC_SEQ`]), then the frame body (see [`crate::Event`]).
//!
//! On the local engine emitters write events without `seq`: the shard gives the next one. On
//! the Redis engine (`crate::redis_engine`) Redis gave it, and the node's subscriber writes
//! each event with [`REC_SEQ`], and the notices:
//! - [`REC_SYNC`] (with `epoch` and `seq`): Redis had `user`'s stream at `epoch`, `seq` when
//!   the subscriber reached this point of the log (the answer to a shard's sync request);
//! - [`REC_ACKED`] (with `epoch` and `seq`): a client on some node acked `user`'s events
//!   through `seq`;
//! - [`REC_LOST`] (no user): the subscriber may have missed part of the log.

use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::receipt::Ticket;

/// Ring bytes a record needs beyond its body, at most: ring header (8), `ts` (8), `flags` (1),
/// `user_len` (1), a 255-byte user id, a receipt ticket (8) or `epoch` and `seq` (16; never
/// both) and 8-byte alignment padding.
pub(crate) const RECORD_OVERHEAD: usize = 8 + 8 + 1 + 1 + MAX_USER_LEN + 16 + 8;

/// Record flag: the event needs a client ack.
pub(crate) const REC_ACK: u8 = 1;
/// Record flag: a receipt ticket follows the user id.
pub(crate) const REC_TICKET: u8 = 2;
/// Record flag: the stream's `epoch` and the event's `seq` follow (the Redis engine).
pub(crate) const REC_SEQ: u8 = 4;
/// Record flag: a notice that Redis had the user's stream at `epoch`, `seq` (with [`REC_SEQ`]).
pub(crate) const REC_SYNC: u8 = 8;
/// Record flag: a notice that a client acked the user's events through `seq` (with [`REC_SEQ`]).
pub(crate) const REC_ACKED: u8 = 16;
/// Record flag: a notice that the subscriber may have missed part of the log (no user).
pub(crate) const REC_LOST: u8 = 32;
/// Record flag (with [`REC_SEQ`]): this node emitted the event, so it is the one that
/// dead-letters it if no client acks it in time (every node keeps it for redelivery).
pub(crate) const REC_OWN: u8 = 64;
/// Record flag (with [`REC_SEQ`]): an older event of the user's stream, read from Redis for a
/// connection that resumes on a node that never received it; it goes to history only, before
/// the [`REC_SYNC`] that follows it.
pub(crate) const REC_HIST: u8 = 128;
/// The flags of records only the Redis engine writes.
pub(crate) const REC_REDIS: u8 = REC_SEQ | REC_SYNC | REC_ACKED | REC_LOST | REC_HIST;

/// Redis engine: what a shard asks of the node's log reader for `user`: the stream's state
/// (answered with a [`REC_SYNC`] record), and first the events `from..` that the shard needs
/// but never received (as [`REC_HIST`] records; `from` 0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncRequest {
    pub user: Box<[u8]>,
    pub from: u64,
    /// `None`: the last events up to the stream's point, for a stream the shard has nothing
    /// of (they become its history). `Some(to)`: the first events of `from..=to`, for a
    /// connection that resumes before the shard's history (they go to that connection only).
    pub to: Option<u64>,
}

impl SyncRequest {
    /// The state of `user`'s stream, with the last events from `from` on (`to` `None`).
    pub(crate) fn newest(user: &[u8], from: u64) -> SyncRequest {
        SyncRequest {
            user: user.into(),
            from,
            to: None,
        }
    }
}

/// The longest user id, in bytes.
pub const MAX_USER_LEN: usize = 255;

/// A hash of a user id that is stable within the process (a fixed seed), for placing users on
/// shards and in the delivery table.
pub(crate) fn user_hash(user: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x9e37_79b9_7f4a_7c15).hash_one(user)
}

/// The shard that owns `user`'s connections and sequence. Emitters and the acceptor must agree.
pub(crate) fn shard_of(user: &[u8], shards: usize) -> usize {
    if shards == 1 {
        return 0;
    }
    (user_hash(user) % shards as u64) as usize
}

/// The fixed part of a record before the user id: `ts`, `flags`, `user_len`.
pub(crate) fn head(ts_unix_ns: u64, needs_ack: bool, ticket: bool, user_len: u8) -> [u8; 10] {
    let mut head = [0u8; 10];
    head[..8].copy_from_slice(&ts_unix_ns.to_le_bytes());
    head[8] = if needs_ack { REC_ACK } else { 0 } | if ticket { REC_TICKET } else { 0 };
    head[9] = user_len;
    head
}

/// Appends a whole record to `out` (the emitter writes the same bytes into its ring in parts,
/// without this copy). `user` is at most [`MAX_USER_LEN`] bytes.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    ts_unix_ns: u64,
    needs_ack: bool,
    user: &[u8],
    ticket: Option<Ticket>,
    body: &[u8],
) {
    let user_len = u8::try_from(user.len()).expect("user ids are at most 255 bytes");
    out.extend_from_slice(&head(ts_unix_ns, needs_ack, ticket.is_some(), user_len));
    out.extend_from_slice(user);
    if let Some(t) = ticket {
        out.extend_from_slice(&t.to_bytes());
    }
    out.extend_from_slice(body);
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
/// Appends a record that carries `epoch` and `seq` (the Redis engine's): an event when `flags`
/// is [`REC_SEQ`] (with [`REC_ACK`] if it needs an ack), else a notice ([`REC_SYNC`],
/// [`REC_ACKED`] or [`REC_LOST`], with an empty `body`).
pub(crate) fn encode_sequenced(
    out: &mut Vec<u8>,
    ts_unix_ns: u64,
    flags: u8,
    user: &[u8],
    epoch: u64,
    seq: u64,
    body: &[u8],
) {
    debug_assert!(flags & REC_TICKET == 0, "no ticket crosses nodes");
    let user_len = u8::try_from(user.len()).expect("user ids are at most 255 bytes");
    out.extend_from_slice(&ts_unix_ns.to_le_bytes());
    out.extend_from_slice(&[flags | REC_SEQ, user_len]);
    out.extend_from_slice(user);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// A parsed ring record.
pub(crate) struct Record<'a> {
    pub ts_unix_ns: u64,
    /// The flags byte as written.
    pub flags: u8,
    pub needs_ack: bool,
    pub ticket: Option<Ticket>,
    pub user: &'a [u8],
    /// `(epoch, seq)`, with [`REC_SEQ`].
    pub sequenced: Option<(u64, u64)>,
    pub body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Splits a ring record. The emitter is the only writer, so a malformed record is a bug.
    pub(crate) fn parse(rec: &'a [u8]) -> Record<'a> {
        let ts_unix_ns = u64::from_le_bytes(rec[..8].try_into().expect("record header"));
        let flags = rec[8];
        let ulen = rec[9] as usize;
        let mut at = 10 + ulen;
        let ticket = (flags & REC_TICKET != 0).then(|| {
            at += 8;
            Ticket::from_bytes(rec[at - 8..at].try_into().expect("ticket"))
        });
        let sequenced = (flags & REC_SEQ != 0).then(|| {
            at += 16;
            let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("u64"));
            (word(at - 16), word(at - 8))
        });
        Record {
            ts_unix_ns,
            flags,
            needs_ack: flags & REC_ACK != 0,
            ticket,
            user: &rec[10..10 + ulen],
            sequenced,
            body: &rec[at..],
        }
    }
}

/// Unix time in nanoseconds from the system clock (vDSO `clock_gettime`, no syscall): the
/// reactor's clock once per pass, and the anchor of [`UnixClock`], which stamps events.
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unix time in nanoseconds for a thread that stamps every event it emits: the CPU's time
/// stamp counter (through `quanta`: 9.6 ns a read on this project's VMs, against 35.9 ns for
/// `clock_gettime`; perf/2026-12-01-hot-path.md), anchored to the system clock again every
/// millisecond. It follows the system clock (NTP adjustments included) to within the counter's
/// drift over one millisecond, far below a microsecond; where there is no usable counter,
/// `quanta` falls back to the system's monotonic clock.
#[derive(Debug, Clone)]
pub(crate) struct UnixClock {
    clock: quanta::Clock,
    /// The counter at the last anchoring, and the system clock then.
    anchor_raw: u64,
    anchor_ns: u64,
}

impl UnixClock {
    /// How long a reading goes by the counter alone before the system clock is read again.
    const REANCHOR_NS: u64 = 1_000_000;

    /// A clock for one emitter. `clock` is calibrated once per process (about 40 ms, on the
    /// first `quanta::Clock::new`), which the gateway does when it is built.
    pub(crate) fn new(clock: quanta::Clock) -> UnixClock {
        let anchor_raw = clock.raw();
        UnixClock {
            clock,
            anchor_raw,
            anchor_ns: unix_ns(),
        }
    }

    /// Nanoseconds since the Unix epoch, now.
    #[inline]
    pub(crate) fn now_ns(&mut self) -> u64 {
        let raw = self.clock.raw();
        // 0 if the counter reads earlier than the anchor (another core's counter): anchored again.
        let since = self.clock.delta_as_nanos(self.anchor_raw, raw);
        if since > 0 && since < Self::REANCHOR_NS {
            return self.anchor_ns + since;
        }
        self.anchor_raw = raw;
        self.anchor_ns = unix_ns();
        self.anchor_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_clock_keeps_to_the_system_clock() {
        let mut c = UnixClock::new(quanta::Clock::new());
        let mut last = 0;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        let mut readings = 0u64;
        while std::time::Instant::now() < until {
            let before = unix_ns();
            let t = c.now_ns();
            let after = unix_ns();
            // Within 50 us of the system clock read around it: the counter's drift over
            // one millisecond between anchors is far smaller.
            assert!(
                t + 50_000 >= before && t <= after + 50_000,
                "{t} not within [{before}, {after}] +- 50 us"
            );
            assert!(t + 50_000 >= last, "ran back by more than 50 us");
            last = t;
            readings += 1;
        }
        assert!(readings > 1000, "only {readings} readings in 30 ms");
    }

    #[test]
    fn a_record_parses_back_to_what_was_encoded() {
        let mut out = Vec::new();
        encode(&mut out, 42, true, b"alice", None, b"\"type\":\"x\"}");
        let r = Record::parse(&out);
        assert_eq!(
            (r.ts_unix_ns, r.needs_ack, r.ticket.is_none()),
            (42, true, true)
        );
        assert_eq!((r.user, r.body), (&b"alice"[..], &b"\"type\":\"x\"}"[..]));
        assert_eq!((r.flags, r.sequenced), (REC_ACK, None));
        out.clear();
        encode_sequenced(&mut out, 7, REC_ACK, b"bob", 0xfeed, 12, b"{}");
        let r = Record::parse(&out);
        assert_eq!(
            (r.ts_unix_ns, r.needs_ack, r.ticket.is_none()),
            (7, true, true)
        );
        assert_eq!(
            (r.user, r.sequenced, r.body),
            (&b"bob"[..], Some((0xfeed, 12)), &b"{}"[..])
        );
        assert_eq!(shard_of(b"alice", 1), 0);
        assert!(shard_of(b"alice", 7) < 7);
    }
}
