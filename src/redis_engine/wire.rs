//! The batch message the sequencing script appends to the log: every event of one submitted
//! batch, with the `epoch` and `seq` Redis gave it, in the order Redis gave them, and the acks
//! the node's clients sent. Every node reads these from the log, so this is a parser of bytes
//! from outside the process: each
//! length is bounded and checked before it is used, and a bad message is an error, never a
//! panic or an allocation its length field asks for.
//!
//! The users of a batch come first, each with its stream's epoch and the `seq` of its first
//! event in the batch; each event then names its user by number, and its `seq` is the next of
//! that user's. So the script that writes it does work per user, none per event: the events
//! section is the bytes the node sent, unchanged.
//!
//! # Format (version 3, little-endian)
//!
//! ```text
//! u8   version   3
//! u16  users     1 to MAX_BATCH, in the order of their first entry
//! users times:
//!   u8        user_len   1 to 255
//!   [u8]      user       no two alike
//!   [u8; 16]  epoch      lowercase hex of the user's stream epoch (zeros if first_seq is 0)
//!   u64       first_seq  the seq of the user's first event in the batch; 0 if the user has
//!                        only acks in it
//! u16  count     entries that follow, 1 to MAX_BATCH
//! count times:
//!   u16       user       its number: at most one more than the highest number before it
//!   u64       ts         unix ns of the emit (of the ack)
//!   u8        flags      0: an event; 1: an event that needs a client ack; 2: an ack
//!   u32       body_len   at most MAX_BODY; 16 for an ack
//!   [u8]      body       an event: the frame body after `seq`, as an emitter encodes it;
//!                        an ack: the epoch (u64) and the seq (u64) a client acked through
//! ```
//!
//! An event takes its user's next `seq`; an ack takes none. Every user has an entry, so a
//! message has one way to be written: [`encode`] writes the same bytes as `sequencer.lua` (for
//! tests and fuzzing).

use std::collections::HashSet;

/// Events in one batch, at most (and users).
pub(crate) const MAX_BATCH: usize = 4096;

/// The largest event body a message may carry.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// The format version this build reads and writes.
pub(crate) const VERSION: u8 = 3;

/// Entry flags: the event needs a client ack.
const NEEDS_ACK: u8 = 1;
/// Entry flags: an ack, not an event.
const ACK: u8 = 2;

/// One entry of a batch message (borrows the message): an event, with the `epoch` and `seq`
/// Redis gave it, or (`ack`) a client's ack through `seq` of stream `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireEvent<'a> {
    pub user: &'a [u8],
    pub epoch: u64,
    pub seq: u64,
    pub ts: u64,
    pub needs_ack: bool,
    /// An ack (`body` is empty).
    pub ack: bool,
    pub body: &'a [u8],
}

/// Why a message is not a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The first byte names a version this build does not read.
    #[error("batch message of version {0}, this build reads version 3")]
    Version(u8),
    /// A count, length or field is out of its bounds.
    #[error("malformed batch message at byte {0}")]
    Malformed(usize),
    /// The message ends inside an event, or bytes follow the last one.
    #[error("batch message of the wrong length (at byte {0})")]
    Length(usize),
}

/// A user of a batch as the message lists it.
struct User<'a> {
    id: &'a [u8],
    epoch: u64,
    /// The seq of the user's next event in the batch.
    next: u64,
}

/// Reads a whole message: its events in order.
pub(crate) fn decode(msg: &[u8]) -> Result<Vec<WireEvent<'_>>, WireError> {
    let mut r = Reader { buf: msg, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let n_users = usize::from(r.u16()?);
    // A user takes at least 26 bytes and an event 15: counts the message cannot hold are
    // refused before anything is allocated for them.
    if !(1..=MAX_BATCH).contains(&n_users) {
        return Err(WireError::Malformed(1));
    }
    if n_users > msg.len() / 26 {
        return Err(WireError::Length(msg.len()));
    }
    let mut users = Vec::with_capacity(n_users);
    let mut ids = HashSet::with_capacity(n_users);
    for _ in 0..n_users {
        let len_at = r.at;
        let len = usize::from(r.u8()?);
        if len == 0 {
            return Err(WireError::Malformed(len_at));
        }
        let id = r.take(len)?;
        if !ids.insert(id) {
            return Err(WireError::Malformed(len_at));
        }
        let epoch_at = r.at;
        let epoch = parse_hex(r.take(16)?).ok_or(WireError::Malformed(epoch_at))?;
        let first = r.u64()?;
        if first == 0 && epoch != 0 {
            // A user with only acks has no stream position here: zeros, one way to write it.
            return Err(WireError::Malformed(epoch_at));
        }
        users.push(User {
            id,
            epoch,
            next: first,
        });
    }
    let count_at = r.at;
    let count = usize::from(r.u16()?);
    if !(1..=MAX_BATCH).contains(&count) {
        return Err(WireError::Malformed(count_at));
    }
    if count > (msg.len() - r.at) / 15 {
        return Err(WireError::Length(msg.len()));
    }
    let mut out = Vec::with_capacity(count);
    let mut seen_users = 0;
    let mut with_events = vec![false; users.len()];
    for _ in 0..count {
        let user_at = r.at;
        let u = usize::from(r.u16()?);
        if u > seen_users || u >= users.len() {
            return Err(WireError::Malformed(user_at));
        }
        seen_users = seen_users.max(u + 1);
        let ts = r.u64()?;
        let flags_at = r.at;
        let flags = r.u8()?;
        if flags > ACK {
            return Err(WireError::Malformed(flags_at));
        }
        let len_at = r.at;
        let body_len = r.u32()? as usize;
        if body_len > MAX_BODY || (flags == ACK && body_len != 16) {
            return Err(WireError::Malformed(len_at));
        }
        let body = r.take(body_len)?;
        let user = &mut users[u];
        if flags == ACK {
            let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
            out.push(WireEvent {
                user: user.id,
                epoch: word(0),
                seq: word(8),
                ts,
                needs_ack: false,
                ack: true,
                body: &[],
            });
            continue;
        }
        if user.next == 0 {
            // An event of a user listed with only acks.
            return Err(WireError::Malformed(user_at));
        }
        with_events[u] = true;
        let seq = user.next;
        user.next = seq.checked_add(1).ok_or(WireError::Malformed(user_at))?;
        out.push(WireEvent {
            user: user.id,
            epoch: user.epoch,
            seq,
            ts,
            needs_ack: flags == NEEDS_ACK,
            ack: false,
            body,
        });
    }
    if seen_users != users.len() {
        // A user without an entry.
        return Err(WireError::Malformed(count_at));
    }
    if users
        .iter()
        .zip(&with_events)
        .any(|(u, e)| !e && u.next != 0)
    {
        // A user listed with a first seq and no event.
        return Err(WireError::Malformed(count_at));
    }
    if r.at != msg.len() {
        return Err(WireError::Length(r.at));
    }
    Ok(out)
}

/// Writes `events` as one message (what the script appends for them). A user's events in
/// the batch must have one epoch and consecutive seqs, as Redis gives them.
pub(crate) fn encode(out: &mut Vec<u8>, events: &[WireEvent<'_>]) {
    assert!(
        (1..=MAX_BATCH).contains(&events.len()),
        "1 to MAX_BATCH events"
    );
    // Per user, in order of first entry: its id and its first event's epoch and seq (zeros
    // for a user with only acks).
    let mut users: Vec<(&[u8], u64, u64)> = Vec::new();
    let mut number: std::collections::HashMap<&[u8], u16> = std::collections::HashMap::new();
    let numbers: Vec<u16> = events
        .iter()
        .map(|e| {
            let n = *number.entry(e.user).or_insert_with(|| {
                users.push((e.user, 0, 0));
                (users.len() - 1) as u16
            });
            let u = &mut users[usize::from(n)];
            if !e.ack && u.2 == 0 {
                (u.1, u.2) = (e.epoch, e.seq);
            }
            n
        })
        .collect();
    out.push(VERSION);
    out.extend_from_slice(&(users.len() as u16).to_le_bytes());
    for &(id, epoch, first) in &users {
        let len = u8::try_from(id.len()).expect("user ids are at most 255 bytes");
        out.push(len);
        out.extend_from_slice(id);
        out.extend_from_slice(&epoch_hex(epoch));
        out.extend_from_slice(&first.to_le_bytes());
    }
    out.extend_from_slice(&(events.len() as u16).to_le_bytes());
    for (e, n) in events.iter().zip(numbers) {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&e.ts.to_le_bytes());
        if e.ack {
            out.push(ACK);
            out.extend_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.seq.to_le_bytes());
        } else {
            out.push(u8::from(e.needs_ack));
            out.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
            out.extend_from_slice(e.body);
        }
    }
}

/// An epoch as Redis keeps it: 16 lowercase hex digits.
pub(crate) fn epoch_hex(epoch: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        let nibble = (epoch >> (60 - 4 * i)) & 0xf;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    out
}

/// 16 lowercase hex digits as a u64.
pub(crate) fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Length(self.at))?;
        let bytes = self
            .buf
            .get(self.at..end)
            .ok_or(WireError::Length(self.at))?;
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(user: &'static [u8], seq: u64, body: &'static [u8]) -> WireEvent<'static> {
        WireEvent {
            user,
            epoch: 0x0123_4567_89ab_cdef,
            seq,
            ts: 1_700_000_000_000_000_000 + seq,
            needs_ack: seq % 2 == 0,
            ack: false,
            body,
        }
    }

    fn ack(user: &'static [u8], epoch: u64, seq: u64) -> WireEvent<'static> {
        WireEvent {
            user,
            epoch,
            seq,
            ts: 9,
            needs_ack: false,
            ack: true,
            body: b"",
        }
    }

    #[test]
    fn a_message_reads_back_as_written() {
        let events = [
            event(b"alice", 1, b"\"type\":\"x\"}"),
            ack(b"carol", 0xe, 40),
            event(b"bob", 7, b""),
            ack(b"alice", 0xf, 3),
            event(b"alice", 2, b"{}"),
        ];
        let mut msg = Vec::new();
        encode(&mut msg, &events);
        assert_eq!(decode(&msg).unwrap(), events);
    }

    #[test]
    fn acks_take_no_seq_and_users_with_only_acks_have_no_position() {
        let mut msg = Vec::new();
        encode(&mut msg, &[ack(b"al", 5, 9)]);
        // version, users (2), al: len 1, id 2, epoch 16 (at 6), first 8 (at 22), count (2) at
        // 30, the ack: user (2), ts 8, flags at 42, length at 43, body at 47.
        assert_eq!(decode(&msg).unwrap(), [ack(b"al", 5, 9)]);
        let bad = |at: usize, bytes: &[u8]| {
            let mut m = msg.clone();
            m[at..at + bytes.len()].copy_from_slice(bytes);
            decode(&m).map(|_| ())
        };
        assert_eq!(
            bad(6, b"1"),
            Err(WireError::Malformed(6)),
            "an epoch and no seq"
        );
        assert_eq!(
            bad(22, &[1]),
            Err(WireError::Malformed(30)),
            "a seq and no event"
        );
        assert_eq!(
            bad(42, &[0]),
            Err(WireError::Malformed(32)),
            "an event of an ack-only user"
        );
        assert_eq!(
            bad(43, &[15]),
            Err(WireError::Malformed(43)),
            "an ack is 16 bytes"
        );
    }

    #[test]
    fn bad_messages_are_errors_that_say_where() {
        let mut msg = Vec::new();
        encode(&mut msg, &[event(b"alice", 1, b"{}")]);
        // version, users (2), alice: len 1, id 5, epoch 16, first 8, then count (2) at 33,
        // the event: user (2) at 35, ts 8, flags at 45, body length at 46.
        assert_eq!(decode(&[]), Err(WireError::Length(0)));
        assert_eq!(decode(&[2, 1, 0]), Err(WireError::Version(2)));
        assert_eq!(decode(&[3, 0, 0]), Err(WireError::Malformed(1)));
        // Counts far beyond what the bytes hold are refused before any allocation.
        assert_eq!(decode(&[3, 0xff, 0x0f]), Err(WireError::Length(3)));
        for cut in 1..msg.len() {
            assert!(decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Length(msg.len())));
        let bad = |at: usize, bytes: &[u8]| {
            let mut m = msg.clone();
            m[at..at + bytes.len()].copy_from_slice(bytes);
            decode(&m).map(|_| ())
        };
        assert_eq!(bad(9, b"A"), Err(WireError::Malformed(9)), "upper-case hex");
        assert_eq!(
            bad(25, &0u64.to_le_bytes()),
            Err(WireError::Malformed(9)),
            "seq 0 (only acks) with an epoch"
        );
        assert_eq!(
            bad(35, &[1, 0]),
            Err(WireError::Malformed(35)),
            "no such user"
        );
        assert_eq!(bad(45, &[3]), Err(WireError::Malformed(45)), "flags");
        let too_long = (MAX_BODY as u32 + 1).to_le_bytes();
        assert_eq!(bad(46, &too_long), Err(WireError::Malformed(46)));
        // Two users, the second without an event; and one user listed twice.
        let raw = |users: &[&[u8]], events: u16| {
            let mut m = vec![VERSION];
            m.extend_from_slice(&(users.len() as u16).to_le_bytes());
            for u in users {
                m.push(u.len() as u8);
                m.extend_from_slice(u);
                m.extend_from_slice(&epoch_hex(1));
                m.extend_from_slice(&1u64.to_le_bytes());
            }
            m.extend_from_slice(&events.to_le_bytes());
            for i in 0..events {
                m.extend_from_slice(&i.to_le_bytes());
                m.extend_from_slice(&[0; 9]);
                m.extend_from_slice(&0u32.to_le_bytes());
            }
            m
        };
        assert_eq!(decode(&raw(&[b"ab", b"cd"], 2)).unwrap().len(), 2);
        let count_at = 1 + 2 + 2 * 27;
        let one_event = raw(&[b"ab", b"cd"], 1);
        assert_eq!(decode(&one_event), Err(WireError::Malformed(count_at)));
        assert_eq!(
            decode(&raw(&[b"ab", b"ab"], 2)),
            Err(WireError::Malformed(1 + 2 + 27))
        );
    }

    #[test]
    fn the_fuzz_corpus_seeds_are_messages_of_this_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/redis_batch");
        for seed in [
            "one_event",
            "long_user_high_seq",
            "two_users_interleaved_with_ack",
            "acks_and_an_ack_only_user",
        ] {
            let msg = std::fs::read(dir.join(seed)).unwrap();
            let events = decode(&msg).unwrap_or_else(|e| panic!("{seed}: {e}"));
            let mut again = Vec::new();
            encode(&mut again, &events);
            assert_eq!(again, msg, "{seed}");
        }
    }

    #[test]
    fn epochs_are_sixteen_lowercase_hex_digits() {
        for e in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_hex(&epoch_hex(e)), Some(e));
            assert_eq!(epoch_hex(e), format!("{e:016x}").as_bytes());
        }
        assert_eq!(parse_hex(b"123"), None);
        assert_eq!(parse_hex(b"000000000000000g"), None);
    }

    proptest! {
        #[test]
        fn any_batch_reads_back(
            picks in prop::collection::vec((0usize..5, any::<u64>(), 0u8..3,
                prop::collection::vec(any::<u8>(), 0..300)), 1..40),
            ids in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=255), 5),
            firsts in prop::collection::vec(1u64..u64::MAX / 2, 5),
            epochs in prop::collection::vec(any::<u64>(), 5),
        ) {
            // Users with distinct ids; each user's events get consecutive seqs.
            let mut ids = ids;
            for (i, id) in ids.iter_mut().enumerate() {
                id[0] = i as u8;
            }
            let mut next = firsts.clone();
            let events: Vec<WireEvent<'_>> = picks
                .iter()
                .map(|(u, ts, kind, body)| {
                    if *kind == 2 {
                        // An ack: its own cursor, no seq taken.
                        return WireEvent { user: &ids[*u], epoch: *ts ^ 1, seq: *ts, ts: *ts,
                            needs_ack: false, ack: true, body: &[] };
                    }
                    let seq = next[*u];
                    next[*u] += 1;
                    WireEvent { user: &ids[*u], epoch: epochs[*u], seq, ts: *ts,
                        needs_ack: *kind == 1, ack: false, body }
                })
                .collect();
            let mut msg = Vec::new();
            encode(&mut msg, &events);
            prop_assert_eq!(decode(&msg).unwrap(), events);
        }
    }
}
