//! What each client checks in every frame: its own user, gapless `seq`, each producer's
//! counter, `hello`, `gap` and `redelivery` frames, and (every 64th frame) a full parse that must
//! agree with the fast scan.

use hdrhistogram::Histogram;

use super::workload::TYPES;

/// What one client has seen.
pub(super) struct Verify {
    pub(super) user: u32,
    pub(super) expected: u64,
    pub(super) received: u64,
    pub(super) last_seq: u64,
    pub(super) last_n: Vec<u64>,
    pub(super) misrouted: u64,
    pub(super) order_errors: u64,
    pub(super) duplicates: u64,
    pub(super) bytes: u64,
    pub(super) closed: bool,
    /// The stream's epoch, from the first `hello` (16 hex digits).
    pub(super) epoch: Option<[u8; 16]>,
    /// The next text frame must be `hello` (set on every connect).
    pub(super) awaiting_hello: bool,
    /// Reconnections made.
    pub(super) resumes: u64,
    /// `gap` frames received, and the events they said were lost.
    pub(super) gaps: u64,
    pub(super) gap_events: u64,
    /// After a gap, producers' counters may jump: `n` then only has to increase.
    pub(super) after_gap: bool,
    /// Events that asked for an ack since the last ack sent.
    pub(super) unacked: u32,
    pub(super) acks_sent: u64,
    /// Frames still to come of an announced `redelivery`, and how many came in all.
    pub(super) redelivering: u64,
    pub(super) redelivered: u64,
}

impl Verify {
    pub(super) fn done(&self) -> bool {
        self.closed || self.received + self.gap_events >= self.expected
    }
}

/// Reads the unsigned integer at the start of `b`; returns it and the digits consumed.
pub(super) fn uint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &d in b.iter().take(20) {
        if !d.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Reads the fields the client checks, walking the frame in the order the server writes it:
/// `{"seq":N,"type":"T","ts":N,"run_id":"R","data":{"to":N,"p":N,"n":N[,"sched":N],...}}`.
/// Type names and run ids in the bench contain no escapes, so a string ends at the next quote.
pub(super) struct Scanner;

/// What the scanner read from one frame.
pub(super) struct Fields {
    pub(super) seq: u64,
    pub(super) ts: u64,
    /// The event asked for an ack.
    pub(super) ack: bool,
    pub(super) to: u64,
    pub(super) p: u64,
    pub(super) n: u64,
    pub(super) sched: Option<u64>,
}

/// Skips a JSON string whose opening quote was already consumed; returns what follows it.
pub(super) fn after_string(b: &[u8]) -> Option<&[u8]> {
    memchr::memchr(b'"', b).map(|i| &b[i + 1..])
}

impl Scanner {
    /// `None` if the frame does not have the bench's layout.
    pub(super) fn scan(&self, f: &[u8]) -> Option<Fields> {
        let rest = f.strip_prefix(b"{\"seq\":")?;
        let (seq, k) = uint(rest)?;
        let rest = after_string(rest[k..].strip_prefix(b",\"type\":\"")?)?;
        let rest = rest.strip_prefix(b",\"ts\":")?;
        let (ts, k) = uint(rest)?;
        let (ack, rest) = match rest[k..].strip_prefix(b",\"ack\":true") {
            Some(r) => (true, r),
            None => (false, &rest[k..]),
        };
        let rest = after_string(rest.strip_prefix(b",\"run_id\":\"")?)?;
        let rest = rest.strip_prefix(b",\"data\":{\"to\":")?;
        let (to, k) = uint(rest)?;
        let rest = rest[k..].strip_prefix(b",\"p\":")?;
        let (p, k) = uint(rest)?;
        let rest = rest[k..].strip_prefix(b",\"n\":")?;
        let (n, k) = uint(rest)?;
        let sched = rest[k..]
            .strip_prefix(b",\"sched\":")
            .and_then(uint)
            .map(|(v, _)| v);
        Some(Fields {
            seq,
            ts,
            ack,
            to,
            p,
            n,
            sched,
        })
    }
}

pub(super) fn check_frame(
    c: &mut Verify,
    sc: &Scanner,
    payload: &[u8],
    now_ns: u64,
    hist: &mut Histogram<u64>,
    sample: &mut u32,
    scratch: &mut Vec<u8>,
) {
    if c.awaiting_hello {
        c.awaiting_hello = false;
        if !hello_agrees(c, payload) {
            c.order_errors += 1;
        }
        return;
    }
    if let Some(count) = redelivery_count(payload) {
        c.redelivering = count;
        return;
    }
    let Some(f) = sc.scan(payload) else {
        match gap_range(payload) {
            // Everything up to `to` is accounted for: either received or announced lost.
            Some((from, to)) if from == c.last_seq + 1 && to >= from => {
                c.gaps += 1;
                c.gap_events += to - from + 1;
                c.last_seq = to;
                c.after_gap = true;
            }
            _ => c.order_errors += 1,
        }
        return;
    };
    if c.redelivering > 0 {
        // An unacked event this client already had (it did not ack it before reconnecting).
        c.redelivering -= 1;
        c.redelivered += 1;
        if !f.ack || f.seq > c.last_seq || f.to != u64::from(c.user) {
            c.order_errors += 1;
        }
        return;
    }
    if f.seq <= c.last_seq {
        c.duplicates += 1;
        return;
    }
    c.unacked += u32::from(f.ack);
    if f.seq != c.last_seq + 1 {
        c.order_errors += 1;
    }
    c.last_seq = f.seq;
    c.received += 1;
    if f.to != u64::from(c.user) {
        c.misrouted += 1;
        return;
    }
    match c.last_n.get_mut(f.p as usize) {
        Some(last) if f.n == *last + 1 || (c.after_gap && f.n > *last) => *last = f.n,
        Some(last) => {
            c.order_errors += 1;
            *last = f.n;
        }
        None => c.order_errors += 1,
    }
    let from = f.sched.unwrap_or(f.ts);
    let _ = hist.record(now_ns.saturating_sub(from).max(1));
    *sample = sample.wrapping_add(1);
    if *sample % 64 == 0 && !full_parse_agrees(payload, f.seq, c.user, scratch) {
        c.order_errors += 1;
    }
}

/// Checks a `hello` frame: on the first connection it records the epoch; on a resume the epoch
/// must be the same (this run never drops streams) and `last_seq` at least the cursor.
pub(super) fn hello_agrees(c: &mut Verify, payload: &[u8]) -> bool {
    let Some(rest) = payload.strip_prefix(b"{\"type\":\"hello\",\"epoch\":\"") else {
        return false;
    };
    let Some(epoch) = rest.get(..16).and_then(|e| <[u8; 16]>::try_from(e).ok()) else {
        return false;
    };
    let last = rest[16..]
        .strip_prefix(b"\",\"last_seq\":")
        .and_then(uint)
        .map(|(v, _)| v);
    let same = *c.epoch.get_or_insert(epoch) == epoch;
    same && last.is_some_and(|l| l >= c.last_seq)
}

/// `count` of a `redelivery` frame.
pub(super) fn redelivery_count(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"type\":\"redelivery\",\"count\":")?;
    uint(rest).map(|(v, _)| v)
}

/// `from` and `to` of a `gap` frame.
pub(super) fn gap_range(payload: &[u8]) -> Option<(u64, u64)> {
    if !payload.starts_with(b"{\"type\":\"gap\",") {
        return None;
    }
    let num = |key: &[u8]| {
        let at = memchr::memmem::find(payload, key)? + key.len();
        uint(&payload[at..]).map(|(v, _)| v)
    };
    Some((num(b"\"from\":")?, num(b"\"to\":")?))
}

/// Parses the whole frame with simd-json and checks it against what the scanner read.
pub(super) fn full_parse_agrees(
    payload: &[u8],
    seq: u64,
    user: u32,
    scratch: &mut Vec<u8>,
) -> bool {
    use simd_json::prelude::*;
    scratch.clear();
    scratch.extend_from_slice(payload);
    let Ok(v) = simd_json::to_borrowed_value(scratch) else {
        return false;
    };
    let seq_ok = v.get("seq").and_then(|s| s.as_u64()) == Some(seq);
    let to_ok = v
        .get("data")
        .and_then(|d| d.get("to"))
        .and_then(|t| t.as_u64())
        == Some(u64::from(user));
    let typed = v
        .get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| TYPES.iter().any(|x| x.as_str() == t));
    seq_ok && to_ok && typed && v.get("ts").and_then(|t| t.as_u64()).is_some()
}
