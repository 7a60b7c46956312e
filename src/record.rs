//! The ring record: how an event travels from an emitter to its shard. A leaf: it depends on
//! nothing above it, and the emitter (which writes records), the core (which parses them),
//! the delivery board and the acceptor (which place users by [`shard_of`]) all import it.
//!
//! # Layout
//! `ts` (u64 LE, unix ns), `flags` (u8: [`REC_ACK`] the event needs an ack, [`REC_TICKET`] a
//! receipt ticket follows the user id), `user_len` (u8), the user id bytes, the ticket (8
//! bytes, only with [`REC_TICKET`]), then the frame body (see [`crate::Event`]).

use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::receipt::Ticket;

/// Ring bytes a record needs beyond its body, at most: ring header (8), `ts` (8), `flags` (1),
/// `user_len` (1), a 255-byte user id, a receipt ticket (8) and 8-byte alignment padding.
pub(crate) const RECORD_OVERHEAD: usize = 8 + 8 + 1 + 1 + MAX_USER_LEN + 8 + 8;

/// Record flag: the event needs a client ack.
pub(crate) const REC_ACK: u8 = 1;
/// Record flag: a receipt ticket follows the user id.
pub(crate) const REC_TICKET: u8 = 2;

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

/// A parsed ring record.
pub(crate) struct Record<'a> {
    pub ts_unix_ns: u64,
    pub needs_ack: bool,
    pub ticket: Option<Ticket>,
    pub user: &'a [u8],
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
        Record {
            ts_unix_ns,
            needs_ack: flags & REC_ACK != 0,
            ticket,
            user: &rec[10..10 + ulen],
            body: &rec[at..],
        }
    }
}

/// Unix time in nanoseconds, the clock of a record's `ts` (vDSO `clock_gettime`, no syscall).
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(shard_of(b"alice", 1), 0);
        assert!(shard_of(b"alice", 7) < 7);
    }
}
