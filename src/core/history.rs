//! Recent event frames, kept so that a reconnecting client can resume from its cursor.
//!
//! Two parts:
//! - [`Log`]: one append-only ring of frame bytes per shard, shared by all its users. Frames are
//!   stored exactly as written to sockets (header, `{"seq":N,` prefix and body), so a replay is
//!   a copy. Appends are sequential whatever the user, which keeps the cost of keeping history
//!   to one streaming copy per event, and the ring's size is the shard's whole memory budget
//!   for history: when it wraps, the oldest frames of every user are overwritten.
//! - [`History`]: one user's index into the log, contiguous in `seq` (the entry at index `i`
//!   holds `first_seq + i`), with per-user limits on count, bytes and age. Eviction is from the
//!   front only, so what a user has retained is always a suffix of its stream.
//!
//! Pure data: `now` comes in as an argument, nothing here touches a clock or a socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;

/// Per-user retention limits (validated by the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    /// Frames kept per user; 0 disables history.
    pub max_events: usize,
    /// Bytes of frames kept per user.
    pub max_bytes: usize,
    /// Frames older than this are evicted.
    pub max_age: Duration,
}

/// A shard's ring of frame bytes. Positions are absolute (they only grow); the frame at
/// position `p` is still readable while `p >= tail`.
#[derive(Debug)]
pub(crate) struct Log {
    /// Frame bytes; grows on demand up to `cap`, then is overwritten in place. Invariant: every
    /// frame lies whole within `buf` (a frame that would cross the end starts again at 0).
    buf: Vec<u8>,
    cap: usize,
    /// Position of the next append.
    head: u64,
    /// Where in `buf` the next append goes: `head % cap`, kept so that an append divides by
    /// nothing.
    head_phys: usize,
    /// Oldest position not yet overwritten.
    tail: u64,
}

impl Log {
    /// A log of at most `cap` bytes (0 keeps nothing).
    pub(crate) fn new(cap: usize) -> Log {
        Log {
            buf: Vec::new(),
            cap,
            head: 0,
            head_phys: 0,
            tail: 0,
        }
    }

    /// Bytes of memory the log holds.
    pub(crate) fn resident(&self) -> usize {
        self.buf.len()
    }

    /// Oldest position still readable.
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// Appends one frame made of `parts`; returns its position, or `None` if it cannot be kept
    /// (larger than the log).
    pub(crate) fn append(&mut self, parts: &[&[u8]]) -> Option<u64> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 || len > self.cap {
            return None;
        }
        let mut phys = self.head_phys;
        debug_assert_eq!(phys as u64, self.head % self.cap as u64);
        if phys + len > self.cap {
            // Would cross the end: skip the rest of this lap (never referenced).
            self.head += (self.cap - phys) as u64;
            phys = 0;
        }
        let start = self.head;
        self.head += len as u64;
        self.head_phys = if phys + len == self.cap {
            0
        } else {
            phys + len
        };
        self.tail = self.tail.max(self.head.saturating_sub(self.cap as u64));
        if phys + len > self.buf.len() {
            self.buf.truncate(phys);
        }
        let mut at = phys;
        for part in parts {
            if at == self.buf.len() {
                self.buf.extend_from_slice(part);
            } else {
                self.buf[at..at + part.len()].copy_from_slice(part);
            }
            at += part.len();
        }
        debug_assert!(self.buf.len() <= self.cap);
        Some(start)
    }

    /// The frame of `len` bytes at `pos`, unless it was overwritten.
    pub(crate) fn get(&self, pos: u64, len: usize) -> Option<&[u8]> {
        if pos < self.tail || pos + len as u64 > self.head {
            return None;
        }
        let phys = (pos % self.cap as u64) as usize;
        self.buf.get(phys..phys + len)
    }
}

/// One retained frame of a user: where it is in the log, and when it was appended (16 bytes,
/// so a user's index costs one cache line per four events).
#[derive(Debug, Clone, Copy)]
struct Entry {
    pos: u64,
    len: u32,
    /// Milliseconds on the shard's [`HistoryClock`], wrapping (ages stay far below 49 days).
    at_ms: u32,
}

/// Turns the core's `now` into compact milliseconds for [`Entry::at_ms`]. The base is the first
/// `now` it is given, so this stays a pure function of its inputs.
#[derive(Debug, Default)]
pub(crate) struct HistoryClock {
    base: Option<Instant>,
    /// The last `now` converted and its milliseconds: every event of a reactor pass has the
    /// same `now`, so the subtraction and division are done once per pass, not per event.
    last: Option<(Instant, u32)>,
}

impl HistoryClock {
    /// Milliseconds since the first call (0 for anything earlier), wrapping at 2^32.
    #[inline]
    pub(crate) fn ms(&mut self, now: Instant) -> u32 {
        match self.last {
            Some((at, ms)) if at == now => ms,
            _ => {
                let base = *self.base.get_or_insert(now);
                let ms = now.saturating_duration_since(base).as_millis() as u32;
                self.last = Some((now, ms));
                ms
            }
        }
    }
}

/// One user's retained frames, as positions in the shard's [`Log`].
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Oldest first; `entries[i]` is the frame of `first_seq + i`.
    entries: VecDeque<Entry>,
    /// `seq` of `entries[0]`; when empty, the `seq` the next pushed frame will have.
    first_seq: u64,
    /// Sum of the entries' lengths.
    bytes: usize,
}

impl History {
    /// Retained frames.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The oldest retained `seq`, if any.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        (!self.entries.is_empty()).then_some(self.first_seq)
    }

    /// Records that the frame of event `seq` (which must follow the last one pushed, if any)
    /// is in the log at `pos`. To keep this path to one store, limits are applied in bulk: the
    /// index may hold up to twice `max_events` (and twice `max_bytes`) until the next trim;
    /// [`evict`](Self::evict), which runs before every read, applies them exactly.
    pub(crate) fn push(
        &mut self,
        seq: u64,
        pos: u64,
        len: usize,
        now_ms: u32,
        limits: &HistoryLimits,
    ) {
        if self.entries.is_empty() {
            // The stream may have moved on while nothing was retained.
            self.first_seq = seq;
        }
        debug_assert_eq!(seq, self.first_seq + self.entries.len() as u64, "seq gap");
        self.entries.push_back(Entry {
            pos,
            len: len as u32,
            at_ms: now_ms,
        });
        self.bytes += len;
        if self.entries.len() > 2 * limits.max_events.max(8) || self.bytes > 2 * limits.max_bytes {
            while self.entries.len() > limits.max_events || self.bytes > limits.max_bytes {
                self.pop();
            }
        }
    }

    fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.len as usize;
            self.first_seq += 1;
        }
    }

    /// Forgets everything up to and including `seq` (its frame could not be kept).
    pub(crate) fn skip_to(&mut self, seq: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.first_seq = seq + 1;
    }

    /// Evicts frames over the count or byte limit, older than the age limit, or overwritten
    /// in the log (position before `log_tail`).
    pub(crate) fn evict(&mut self, now_ms: u32, limits: &HistoryLimits, log_tail: u64) {
        let max_age_ms = u32::try_from(limits.max_age.as_millis()).unwrap_or(u32::MAX);
        while let Some(e) = self.entries.front() {
            let over = self.entries.len() > limits.max_events
                || self.bytes > limits.max_bytes
                || e.pos < log_tail
                || now_ms.wrapping_sub(e.at_ms) > max_age_ms;
            if !over {
                break;
            }
            self.pop();
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            // An idle user keeps no index memory.
            self.entries = VecDeque::new();
        }
    }

    /// Appends to `out` the frames `from..` (as many as fit in about `max_bytes`, at least one)
    /// and returns the `seq` after the last one copied. `None` if `from` is not retained.
    pub(crate) fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
        log: &Log,
        out: &mut BytesMut,
    ) -> Option<u64> {
        let i = usize::try_from(from.checked_sub(self.first_seq)?).ok()?;
        let mut copied = 0;
        let mut next = from;
        for e in self.entries.iter().skip(i) {
            if copied > 0 && copied + e.len as usize > max_bytes {
                break;
            }
            // Entries before the log's tail were evicted by `evict`; a miss here is a bug.
            let frame = log.get(e.pos, e.len as usize)?;
            out.extend_from_slice(frame);
            copied += frame.len();
            next += 1;
        }
        (next > from).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        max_events: 4,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(60),
    };

    fn frame(seq: u64) -> Vec<u8> {
        format!("[{seq}]").into_bytes()
    }

    /// One user's stream of `n` frames in a log of `cap` bytes.
    fn filled(n: u64, limits: &HistoryLimits, cap: usize) -> (Log, History) {
        let mut log = Log::new(cap);
        let mut h = History::default();
        for seq in 1..=n {
            let f = frame(seq);
            match log.append(&[&f]) {
                Some(pos) => {
                    h.push(seq, pos, f.len(), 0, limits);
                    h.evict(0, limits, log.tail());
                }
                None => h.skip_to(seq),
            }
        }
        (log, h)
    }

    fn read(h: &History, log: &Log, from: u64, max: usize) -> Option<(Vec<u8>, u64)> {
        let mut out = BytesMut::new();
        let next = h.read_from(from, max, log, &mut out)?;
        Some((out.to_vec(), next))
    }

    #[test]
    fn keeps_the_newest_frames_within_the_count_limit() {
        let (log, h) = filled(10, &LIMITS, 1 << 20);
        assert_eq!((h.first_seq(), h.len()), (Some(7), 4));
        assert_eq!(
            read(&h, &log, 7, usize::MAX).unwrap(),
            (b"[7][8][9][10]".to_vec(), 11)
        );
        assert!(read(&h, &log, 6, usize::MAX).is_none(), "evicted");
        assert!(read(&h, &log, 11, usize::MAX).is_none(), "not yet emitted");
    }

    #[test]
    fn reads_stop_at_the_byte_budget_but_return_at_least_one_frame() {
        let (log, h) = filled(4, &LIMITS, 1 << 20);
        assert_eq!(read(&h, &log, 1, 7).unwrap(), (b"[1][2]".to_vec(), 3));
        assert_eq!(read(&h, &log, 2, 1).unwrap(), (b"[2]".to_vec(), 3));
    }

    #[test]
    fn byte_limit_evicts_oldest_first() {
        let limits = HistoryLimits {
            max_bytes: 10,
            ..LIMITS
        };
        let (log, h) = filled(5, &limits, 1 << 20);
        assert_eq!(h.first_seq(), Some(3));
        assert_eq!(read(&h, &log, 3, usize::MAX).unwrap().0, b"[3][4][5]");
    }

    #[test]
    fn age_limit_evicts_on_evict_and_the_stream_goes_on() {
        let t0 = Instant::now();
        let limits = HistoryLimits {
            max_age: Duration::from_secs(10),
            ..LIMITS
        };
        let mut log = Log::new(1 << 10);
        let mut h = History::default();
        let mut clock = HistoryClock::default();
        for (seq, secs) in [(1u64, 0u64), (2, 5), (3, 11)] {
            let pos = log.append(&[b"x"]).unwrap();
            let ms = clock.ms(t0 + Duration::from_secs(secs));
            h.push(seq, pos, 1, ms, &limits);
        }
        assert_eq!(h.first_seq(), Some(1), "push does not look at age");
        h.evict(clock.ms(t0 + Duration::from_secs(11)), &limits, log.tail());
        assert_eq!(h.first_seq(), Some(2));
        h.evict(clock.ms(t0 + Duration::from_secs(30)), &limits, log.tail());
        assert_eq!(h.first_seq(), None);
        let pos = log.append(&[b"d"]).unwrap();
        h.push(4, pos, 1, clock.ms(t0 + Duration::from_secs(31)), &limits);
        assert_eq!(read(&h, &log, 4, 100).unwrap(), (b"d".to_vec(), 5));
    }

    #[test]
    fn a_full_log_overwrites_the_oldest_frames_of_every_user() {
        let limits = HistoryLimits {
            max_events: 1000,
            ..LIMITS
        };
        // Two users share a 64-byte log; frames are 4 to 5 bytes.
        let mut log = Log::new(64);
        let (mut a, mut b) = (History::default(), History::default());
        for seq in 1..=40u64 {
            for h in [&mut a, &mut b] {
                let f = frame(seq);
                let pos = log.append(&[&f]).unwrap();
                h.push(seq, pos, f.len(), 0, &limits);
            }
            assert!(log.resident() <= 64);
        }
        for h in [&mut a, &mut b] {
            h.evict(0, &limits, log.tail());
            let first = h.first_seq().unwrap();
            assert!(first > 30, "old frames were overwritten ({first})");
            let (bytes, next) = read(h, &log, first, usize::MAX).unwrap();
            assert_eq!(next, 41);
            let want: Vec<u8> = (first..=40).flat_map(frame).collect();
            assert_eq!(bytes, want, "what is retained is intact");
        }
    }

    #[test]
    fn push_trims_in_bulk_and_evict_applies_the_limits_exactly() {
        let mut log = Log::new(1 << 20);
        let mut h = History::default();
        let limits = HistoryLimits {
            max_events: 10,
            ..LIMITS
        };
        for seq in 1..=40u64 {
            let pos = log.append(&[b"abc"]).unwrap();
            h.push(seq, pos, 3, 0, &limits);
            assert!(h.len() <= 20, "the index stays within twice the limit");
        }
        h.evict(0, &limits, log.tail());
        assert_eq!((h.first_seq(), h.len()), (Some(31), 10));
        assert_eq!(read(&h, &log, 31, usize::MAX).unwrap().1, 41);
    }

    #[test]
    fn the_clock_starts_at_its_first_reading_and_wraps() {
        let t0 = Instant::now();
        let mut c = HistoryClock::default();
        assert_eq!(c.ms(t0 + Duration::from_secs(5)), 0);
        assert_eq!(c.ms(t0 + Duration::from_secs(6)), 1000);
        assert_eq!(c.ms(t0), 0, "earlier than the base");
        let later = t0 + Duration::from_secs(5) + Duration::from_millis((1 << 32) + 7);
        assert_eq!(c.ms(later), 7, "wraps at 2^32 ms");
        assert_eq!(
            7u32.wrapping_sub(u32::MAX - 2),
            10,
            "ages across the wrap stay right"
        );
    }

    #[test]
    fn frames_never_straddle_the_end_of_the_log() {
        let mut log = Log::new(10);
        let p1 = log.append(&[b"abcdef"]).unwrap();
        let p2 = log.append(&[b"ghij", b"kl"]).unwrap(); // 6 bytes: does not fit after 6
        assert_eq!(p2, 10, "starts the next lap");
        assert_eq!(log.get(p2, 6).unwrap(), b"ghijkl");
        assert!(log.get(p1, 6).is_none(), "overwritten");
        assert!(log.append(&[&[0u8; 11]]).is_none(), "larger than the log");
        assert!(
            Log::new(0).append(&[b"a"]).is_none(),
            "a zero log keeps nothing"
        );
    }

    #[test]
    fn a_frame_that_cannot_be_kept_leaves_a_clean_suffix() {
        let (log, h) = filled(12, &LIMITS, 5);
        // Frames 1..=9 are 3 bytes ("[n]"), 10..=12 are 4; a 5-byte log keeps one at a time.
        assert_eq!(h.first_seq(), Some(12));
        assert_eq!(read(&h, &log, 12, 100).unwrap(), (b"[12]".to_vec(), 13));
    }
}
