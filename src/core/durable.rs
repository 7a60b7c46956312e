//! The durable tier's side of the core: the spool record format, the [`ColdTier`] the core
//! replays from, and each user's sparse index into it.
//!
//! The core never touches a file. While routing it appends encoded records to a buffer
//! (`Core::spool_out`); the reactor hands that buffer to [`crate::spool`], which writes it to
//! the current segment file before any socket write of the same pass. Positions are *logical*:
//! the byte offset of a record in the shard's whole spool, which the core counts itself, since
//! the spool writes exactly the bytes it was given, in order.
//!
//! # Record format (version 1)
//!
//! ```text
//! u32 LE  len      bytes of the body that follows the 8-byte header
//! u32 LE  crc      CRC-32C (Castagnoli; the SSE4.2 instruction where there is one) of the body
//! body:
//!   u8    kind     1 = event, 2 = ack
//!   u8    flags    event: bit 0 = needs a client ack; ack: bit 1 = dead-lettered, not acked
//!   u8    user_len
//!   [u8]  user
//!   u64   epoch    of the user's stream
//!   u64   seq      the event's seq; for an ack, the acked seq (cumulative)
//!   u64   ts       unix ns: the emit time of an event (0 for an ack)
//!   [u8]  frame    events only: the WebSocket frame exactly as written to sockets
//! ```

use std::collections::{HashMap, VecDeque};
use std::io;

/// Bytes before a record's body.
pub(crate) const HEADER: usize = 8;
/// Bytes of a body before the user id.
const BODY_FIXED: usize = 3;
/// Bytes of a body after the user id, before the frame.
const BODY_TAIL: usize = 24;
/// The largest body a record may declare (a guard against a corrupted length).
pub(crate) const MAX_BODY: usize = 64 << 20;

/// Record kinds.
pub(crate) const KIND_EVENT: u8 = 1;
pub(crate) const KIND_ACK: u8 = 2;
/// Event flag: the event needs a client ack.
pub(crate) const FLAG_ACK: u8 = 1;
/// Ack flag: the events up to `seq` were dead-lettered (no ack came), not acked.
pub(crate) const FLAG_EXPIRED: u8 = 2;

/// A decoded record body (borrows the bytes it was read from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpoolRecord<'a> {
    pub kind: u8,
    pub flags: u8,
    pub user: &'a [u8],
    pub epoch: u64,
    pub seq: u64,
    pub ts: u64,
    /// Empty for acks.
    pub frame: &'a [u8],
}

/// Appends one record to `out`; `frame` is given in parts (prefix and body) so routing copies
/// each byte once. Returns the record's length.
pub(crate) fn encode(out: &mut Vec<u8>, rec: &SpoolRecord<'_>, frame_parts: &[&[u8]]) -> usize {
    let frame_len: usize = frame_parts.iter().map(|p| p.len()).sum();
    let body_len = BODY_FIXED + rec.user.len() + BODY_TAIL + frame_len;
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[rec.kind, rec.flags, rec.user.len() as u8]);
    out.extend_from_slice(rec.user);
    out.extend_from_slice(&rec.epoch.to_le_bytes());
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.ts.to_le_bytes());
    for p in frame_parts {
        out.extend_from_slice(p);
    }
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes than the header or the declared body: the end of what was written.
    Truncated,
    /// The declared length is impossible, the CRC does not match, or the body is malformed.
    Corrupt,
}

/// The body of the record at the start of `buf` and the CRC its header declares, once the
/// length is plausible and the whole body is there.
fn framed(buf: &[u8]) -> Result<(&[u8], u32), Bad> {
    let Some(head) = buf.get(..HEADER) else {
        return Err(Bad::Truncated);
    };
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if !(BODY_FIXED + 1 + BODY_TAIL..=MAX_BODY).contains(&len) {
        // A zero length is what a preallocated or torn tail looks like.
        return Err(if len == 0 {
            Bad::Truncated
        } else {
            Bad::Corrupt
        });
    }
    let body = buf.get(HEADER..HEADER + len).ok_or(Bad::Truncated)?;
    Ok((body, crc))
}

/// Decodes the record at the start of `buf`: the record and its total length.
pub(crate) fn decode(buf: &[u8]) -> Result<(SpoolRecord<'_>, usize), Bad> {
    let (body, crc) = framed(buf)?;
    if crc32c::crc32c(body) != crc {
        return Err(Bad::Corrupt);
    }
    let ulen = body[2] as usize;
    if ulen == 0 || BODY_FIXED + ulen + BODY_TAIL > body.len() {
        return Err(Bad::Corrupt);
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let t = BODY_FIXED + ulen;
    let rec = SpoolRecord {
        kind: body[0],
        flags: body[1],
        user: &body[BODY_FIXED..t],
        epoch: u64_at(t),
        seq: u64_at(t + 8),
        ts: u64_at(t + 16),
        frame: &body[t + BODY_TAIL..],
    };
    if !matches!(rec.kind, KIND_EVENT | KIND_ACK) {
        return Err(Bad::Corrupt);
    }
    Ok((rec, HEADER + body.len()))
}

/// Like [`decode`], for a scan that wants only `user`'s records: another user's record is
/// skipped (returned as `None` with its length) without checking its CRC, which is most of
/// what a scan reads. Its length field is still checked, so the walk stays on record bounds.
pub(crate) fn decode_for<'a>(
    buf: &'a [u8],
    user: &[u8],
) -> Result<(Option<SpoolRecord<'a>>, usize), Bad> {
    let (body, _) = framed(buf)?;
    let ulen = body[2] as usize;
    if body.get(BODY_FIXED..BODY_FIXED + ulen) != Some(user) {
        return Ok((None, HEADER + body.len()));
    }
    decode(buf).map(|(r, n)| (Some(r), n))
}

/// Where the core's cold replays read from: the spool's durable records, by logical position.
/// The reactor passes the real spool; tests pass an in-memory one.
pub(crate) trait ColdTier {
    /// The oldest position still retained.
    fn start(&self) -> u64;
    /// Calls `visit(position, record)` for `user`'s records from `pos` on (or from the first
    /// retained one after it), in order, until `visit` returns false, about `budget` bytes were
    /// read, or the durable end is reached. Other users' records are skipped. Returns the
    /// position after the last record read, or `None` when the end of what is durable was
    /// reached.
    fn scan(
        &mut self,
        pos: u64,
        budget: usize,
        user: &[u8],
        visit: &mut dyn FnMut(u64, &SpoolRecord<'_>) -> bool,
    ) -> io::Result<Option<u64>>;
    /// The record at `pos` if it is `user`'s (`None` when `pos` is no longer retained, or the
    /// record there is another user's). Reading a user's records by position this way costs
    /// what those records weigh, whatever other users wrote between them.
    fn read_at(&mut self, pos: u64, user: &[u8]) -> io::Result<Option<SpoolRecord<'_>>>;
}

/// A cold tier that holds nothing (no spool configured).
pub(crate) struct NoCold;

impl ColdTier for NoCold {
    fn start(&self) -> u64 {
        0
    }
    fn scan(
        &mut self,
        _: u64,
        _: usize,
        _: &[u8],
        _: &mut dyn FnMut(u64, &SpoolRecord<'_>) -> bool,
    ) -> io::Result<Option<u64>> {
        Ok(None)
    }
    fn read_at(&mut self, _: u64, _: &[u8]) -> io::Result<Option<SpoolRecord<'_>>> {
        Ok(None)
    }
}

/// A cold tier in memory, for tests: the bytes the core spooled, from position 0, with an
/// adjustable start (as if retention deleted what lies before it).
/// One user's stream as found on disk.
#[derive(Debug, Default)]
pub(crate) struct RecoveredStream {
    pub epoch: u64,
    pub last_seq: u64,
    pub index: ColdIndex,
    /// The highest `seq` a client acked.
    pub acked: u64,
    /// Events that need an ack and have none: `(seq, frame)`, oldest first.
    pub unacked: VecDeque<(u64, Vec<u8>)>,
}

/// What a spool found when it opened (`Spool::open`), for [`Core::restore`](crate::core::Core::restore).
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub streams: HashMap<Box<[u8]>, RecoveredStream>,
    /// Logical position of the next record.
    pub head: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
    /// Bytes cut at a corrupted record (only with `repair`).
    pub repaired_bytes: u64,
    /// Streams whose epoch could not be kept (a failed fsync in the last run, a repair, or a
    /// restart of the machine without `fsync = always`).
    pub discarded_streams: usize,
    /// The unacked events of those streams, `(user, frames)`, oldest first: the core sends
    /// them again as new events of the user's new stream, so none vanishes.
    pub carried: Vec<Carried>,
}

/// A user and the frames of its unacked events, oldest first (see [`Recovery::carried`]).
pub(crate) type Carried = (Box<[u8]>, Vec<Vec<u8>>);

/// Checkpoints kept per user before they are thinned.
const MAX_CHECKPOINTS: usize = 64;
/// Positions of a user's most recent events kept one by one (8 bytes each, so at most 32 KiB
/// per user; and never more than one per record the spool retains, each of which is at least
/// 50 bytes).
pub(crate) const DENSE_POSITIONS: usize = 4096;

/// One user's index into the spool, in two parts:
///
/// - **dense**: the position of each of the user's last [`DENSE_POSITIONS`] events, so a replay
///   of a recent range (where nearly every resume lands) reads that user's records and nothing
///   else, however many other users' records lie between them;
/// - **sparse**: `(seq, position)` checkpoints, increasing in both, for older ranges. A replay
///   from an older `seq` scans forward from the last checkpoint at or before it. At most
///   [`MAX_CHECKPOINTS`]; when full, every other one of the older half is dropped, so recent
///   ranges stay dense and older ones get sparser. Scans get longer; nothing becomes
///   unreachable.
#[derive(Debug, Default, Clone)]
pub(crate) struct ColdIndex {
    points: VecDeque<(u64, u64)>,
    /// `recent[i]` is the position of the event `recent_first + i`. Invariant: the seqs are
    /// contiguous and the positions increase; at most [`DENSE_POSITIONS`] entries.
    recent: VecDeque<u64>,
    recent_first: u64,
}

impl ColdIndex {
    /// Records that the user's event `seq` is at `pos`: always in the dense part, and as a
    /// checkpoint if the last one is more than `spacing` bytes back.
    pub(crate) fn note(&mut self, seq: u64, pos: u64, spacing: u64) {
        if self.recent_first + self.recent.len() as u64 != seq {
            // Not the next seq (recovery of a stream with a hole): start the run again.
            self.recent.clear();
            self.recent_first = seq;
        }
        debug_assert!(self.recent.back().is_none_or(|&last| last < pos));
        if self.recent.len() == DENSE_POSITIONS {
            self.recent.pop_front();
            self.recent_first += 1;
        }
        self.recent.push_back(pos);
        if let Some(&(_, last)) = self.points.back() {
            if pos < last + spacing {
                return;
            }
        }
        if self.points.len() == MAX_CHECKPOINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i > MAX_CHECKPOINTS / 2 || i % 2 == 1
            });
        }
        self.points.push_back((seq, pos));
    }

    /// The oldest `seq` the spool may still hold for this user, if any. A scan may find that
    /// the first events after it were trimmed too (and says so with a gap).
    pub(crate) fn first_seq(&self) -> Option<u64> {
        match (self.points.front(), self.recent.is_empty()) {
            (Some(&(seq, _)), false) => Some(seq.min(self.recent_first)),
            (Some(&(seq, _)), true) => Some(seq),
            (None, false) => Some(self.recent_first),
            (None, true) => None,
        }
    }

    /// The position of event `seq` if the dense part holds it.
    pub(crate) fn position(&self, seq: u64) -> Option<u64> {
        let i = seq.checked_sub(self.recent_first)?;
        self.recent.get(usize::try_from(i).ok()?).copied()
    }

    /// Where to start scanning for `seq`: the last checkpoint at or before it (clamped to the
    /// spool's start), else the first checkpoint.
    pub(crate) fn scan_from(&self, seq: u64, start: u64) -> Option<u64> {
        let i = self.points.partition_point(|&(s, _)| s <= seq);
        let (_, pos) = *self.points.get(i.saturating_sub(1))?;
        Some(pos.max(start))
    }

    /// Drops what lies wholly before `start`: dense positions, and checkpoints (keeping the
    /// last one before it, which still bounds the scan).
    pub(crate) fn trim(&mut self, start: u64) {
        while self.points.len() > 1 && self.points[1].1 <= start {
            self.points.pop_front();
        }
        while self.recent.front().is_some_and(|&p| p < start) {
            self.recent.pop_front();
            self.recent_first += 1;
        }
    }

    /// Checkpoints held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(user: &'a [u8], seq: u64) -> SpoolRecord<'a> {
        SpoolRecord {
            kind: KIND_EVENT,
            flags: 0,
            user,
            epoch: 7,
            seq,
            ts: 99,
            frame: &[],
        }
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let n = encode(&mut out, &event(b"alice", 3), &[b"\x81\x05", b"hello"]);
        assert_eq!(n, out.len());
        let (rec, len) = decode(&out).unwrap();
        assert_eq!(len, n);
        assert_eq!(rec.user, b"alice");
        assert_eq!((rec.epoch, rec.seq, rec.ts), (7, 3, 99));
        assert_eq!(rec.frame, b"\x81\x05hello");
        let ack = SpoolRecord {
            kind: KIND_ACK,
            ..event(b"bob", 12)
        };
        out.clear();
        encode(&mut out, &ack, &[]);
        assert_eq!(decode(&out).unwrap().0, ack);
    }

    #[test]
    fn a_cut_record_is_truncated_and_a_flipped_byte_is_corrupt() {
        let mut out = Vec::new();
        encode(&mut out, &event(b"alice", 3), &[b"payload"]);
        for cut in 0..out.len() {
            assert_eq!(
                decode(&out[..cut]).unwrap_err(),
                Bad::Truncated,
                "cut {cut}"
            );
        }
        for i in 4..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x20;
            assert_eq!(decode(&bad).unwrap_err(), Bad::Corrupt, "byte {i}");
        }
        assert_eq!(decode(&[0u8; 64]).unwrap_err(), Bad::Truncated, "zeros");
        let mut huge = out.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge).unwrap_err(), Bad::Corrupt);
    }

    #[test]
    fn a_scan_for_one_user_skips_the_others_and_checks_its_own() {
        let mut out = Vec::new();
        let a = encode(&mut out, &event(b"alice", 1), &[b"x"]);
        encode(&mut out, &event(b"bob", 1), &[b"y"]);
        let (r, n) = decode_for(&out, b"bob").unwrap();
        assert_eq!((r, n), (None, a), "alice's record is skipped whole");
        let (r, _) = decode_for(&out[a..], b"bob").unwrap();
        assert_eq!(r.unwrap().frame, b"y");
        let mut bad = out.clone();
        bad[a + 38] ^= 1; // bob's frame byte
        assert_eq!(decode_for(&bad[a..], b"bob").unwrap_err(), Bad::Corrupt);
        assert_eq!(
            decode_for(&out[..a - 1], b"bob").unwrap_err(),
            Bad::Truncated
        );
    }

    #[test]
    fn the_index_finds_the_checkpoint_at_or_before_a_seq() {
        let mut ix = ColdIndex::default();
        for (seq, pos) in [(1, 0), (5, 100), (9, 200)] {
            ix.note(seq, pos, 50);
        }
        ix.note(10, 210, 50); // too close to the last: not kept
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.scan_from(1, 0), Some(0));
        assert_eq!(ix.scan_from(7, 0), Some(100));
        assert_eq!(ix.scan_from(12, 0), Some(200));
        assert_eq!(ix.scan_from(7, 150), Some(150), "clamped to the start");
        ix.trim(150);
        assert_eq!(
            ix.first_seq(),
            Some(5),
            "the last checkpoint before the start stays"
        );
        assert_eq!(ColdIndex::default().scan_from(1, 0), None);
    }

    #[test]
    fn a_full_index_thins_out_but_keeps_its_ends() {
        let mut ix = ColdIndex::default();
        for i in 0..1000u64 {
            ix.note(i + 1, i * 10, 10);
            assert!(ix.len() <= MAX_CHECKPOINTS);
        }
        assert_eq!(ix.scan_from(1, 0), Some(0), "the oldest stays");
        assert_eq!(ix.scan_from(1000, 0), Some(9990), "the newest stays");
        // The newest checkpoints are still one spacing apart.
        assert_eq!(ix.scan_from(999, 0), Some(9980));
    }
}
