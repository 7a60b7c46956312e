//! The batch message the sequencing script publishes: every event of one submitted batch,
//! with the `epoch` and `seq` Redis gave it, in the order Redis gave them. Every node reads
//! these from its subscription, so this is a parser of bytes from outside the process: each
//! length is bounded and checked before it is used, and a bad message is an error, never a
//! panic or an allocation its length field asks for.
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! u8   version   1
//! u16  count     events that follow, 1 to MAX_BATCH
//! count times:
//!   u8        user_len   1 to 255
//!   [u8]      user
//!   [u8; 16]  epoch      lowercase hex of the user's stream epoch
//!   u64       seq
//!   u64       ts         unix ns of the emit
//!   u8        flags      bit 0: the event needs a client ack
//!   u32       body_len   at most MAX_BODY
//!   [u8]      body       the frame body after `seq`, as an emitter encodes it
//! ```
//!
//! `sequencer.lua` writes it; [`encode`] writes the same bytes (for tests and fuzzing).

/// Events in one batch, at most.
pub(crate) const MAX_BATCH: usize = 4096;

/// The largest event body a message may carry.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// The format version this build reads and writes.
pub(crate) const VERSION: u8 = 1;

/// One event of a batch message (borrows the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireEvent<'a> {
    pub user: &'a [u8],
    pub epoch: u64,
    pub seq: u64,
    pub ts: u64,
    pub needs_ack: bool,
    pub body: &'a [u8],
}

/// Why a message is not a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The first byte names a version this build does not read.
    #[error("batch message of version {0}, this build reads version 1")]
    Version(u8),
    /// A count, length or field is out of its bounds.
    #[error("malformed batch message at byte {0}")]
    Malformed(usize),
    /// The message ends inside an event, or bytes follow the last one.
    #[error("batch message of the wrong length (at byte {0})")]
    Length(usize),
}

/// Reads a whole message: its events in order.
pub(crate) fn decode(msg: &[u8]) -> Result<Vec<WireEvent<'_>>, WireError> {
    let mut r = Reader { buf: msg, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let count = usize::from(r.u16()?);
    if !(1..=MAX_BATCH).contains(&count) {
        return Err(WireError::Malformed(1));
    }
    // Each event takes at least 38 bytes, so a count the message cannot hold is refused
    // before anything is allocated for it.
    if count > msg.len() / 38 {
        return Err(WireError::Length(msg.len()));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let user_len = usize::from(r.u8()?);
        if user_len == 0 {
            return Err(WireError::Malformed(r.at - 1));
        }
        let user = r.take(user_len)?;
        let epoch_at = r.at;
        let epoch = parse_hex(r.take(16)?).ok_or(WireError::Malformed(epoch_at))?;
        let seq = r.u64()?;
        let ts = r.u64()?;
        let flags_at = r.at;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(WireError::Malformed(flags_at));
        }
        let len_at = r.at;
        let body_len = r.u32()? as usize;
        if body_len > MAX_BODY {
            return Err(WireError::Malformed(len_at));
        }
        let body = r.take(body_len)?;
        out.push(WireEvent {
            user,
            epoch,
            seq,
            ts,
            needs_ack: flags == 1,
            body,
        });
    }
    if r.at != msg.len() {
        return Err(WireError::Length(r.at));
    }
    Ok(out)
}

/// Writes `events` as one message (what the script publishes for them).
pub(crate) fn encode(out: &mut Vec<u8>, events: &[WireEvent<'_>]) {
    assert!(
        (1..=MAX_BATCH).contains(&events.len()),
        "1 to MAX_BATCH events"
    );
    out.push(VERSION);
    out.extend_from_slice(&(events.len() as u16).to_le_bytes());
    for e in events {
        let user_len = u8::try_from(e.user.len()).expect("user ids are at most 255 bytes");
        out.push(user_len);
        out.extend_from_slice(e.user);
        out.extend_from_slice(&epoch_hex(e.epoch));
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.ts.to_le_bytes());
        out.push(u8::from(e.needs_ack));
        out.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
        out.extend_from_slice(e.body);
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

    fn event(user: &[u8], seq: u64, body: &[u8]) -> WireEvent<'static> {
        WireEvent {
            user: user.to_vec().leak(),
            epoch: 0x0123_4567_89ab_cdef,
            seq,
            ts: 1_700_000_000_000_000_000 + seq,
            needs_ack: seq % 2 == 0,
            body: body.to_vec().leak(),
        }
    }

    #[test]
    fn a_message_reads_back_as_written() {
        let events = [
            event(b"alice", 1, b"\"type\":\"x\"}"),
            event(b"bob", 7, b""),
        ];
        let mut msg = Vec::new();
        encode(&mut msg, &events);
        assert_eq!(decode(&msg).unwrap(), events);
    }

    #[test]
    fn bad_messages_are_errors_that_say_where() {
        let mut msg = Vec::new();
        encode(&mut msg, &[event(b"alice", 1, b"{}")]);
        assert_eq!(decode(&[]), Err(WireError::Length(0)));
        assert_eq!(decode(&[2, 1, 0]), Err(WireError::Version(2)));
        assert_eq!(decode(&[1, 0, 0]), Err(WireError::Malformed(1)));
        // A count far beyond what the bytes hold is refused before any allocation.
        assert_eq!(decode(&[1, 0xff, 0x0f]), Err(WireError::Length(3)));
        for cut in 1..msg.len() {
            assert!(decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Length(msg.len())));
        let mut upper = msg.clone();
        upper[1 + 2 + 1 + 5] = b'A'; // an upper-case hex digit in the epoch
        assert_eq!(decode(&upper), Err(WireError::Malformed(9)));
        let mut flags = msg.clone();
        flags[1 + 2 + 1 + 5 + 16 + 16] = 2;
        assert_eq!(decode(&flags), Err(WireError::Malformed(41)));
        let mut body_len = msg.clone();
        let at = 1 + 2 + 1 + 5 + 16 + 16 + 1;
        body_len[at..at + 4].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        assert_eq!(decode(&body_len), Err(WireError::Malformed(at)));
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
            events in prop::collection::vec(
                (
                    prop::collection::vec(any::<u8>(), 1..=255),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<bool>(),
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                1..20,
            )
        ) {
            let events: Vec<WireEvent<'_>> = events
                .iter()
                .map(|(user, epoch, seq, ts, needs_ack, body)| WireEvent {
                    user,
                    epoch: *epoch,
                    seq: *seq,
                    ts: *ts,
                    needs_ack: *needs_ack,
                    body,
                })
                .collect();
            let mut msg = Vec::new();
            encode(&mut msg, &events);
            prop_assert_eq!(decode(&msg).unwrap(), events);
        }
    }
}
