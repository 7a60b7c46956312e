//! Sequencing through Redis: a batch of emitted events, from any node, gets each user's next
//! `seq` (and the stream's `epoch`), is appended to each user's Redis stream, and is published
//! to every node as one message, all in one script run and one round trip
//! (`sequencer.lua`). Redis runs scripts one at a time, so two nodes' batches never interleave:
//! no two events of a user share a `seq`, none is skipped, and every subscriber sees a user's
//! events in `seq` order.
//!
//! Keys, for a key prefix `p` and a user `u` (binary-safe; `{u}` is a hash tag, so one
//! user's keys stay together should the keys ever be spread over Redis Cluster slots; the
//! script itself writes many users' keys, so it needs one Redis):
//! - `p:{u}:m`: a hash, `epoch` (16 hex digits, set by the first event of the stream) and `seq`
//!   (the last one given);
//! - `p:{u}:l`: a stream, entry id `<seq>-0`, fields `t` (ts, 8 bytes LE), `f` (flags, 1 byte)
//!   and `b` (the body), trimmed to about the last `keep` entries.

use redis::{ConnectionLike, RedisResult, Script};

use super::wire::{epoch_hex, parse_hex};

/// The script, loaded once per connection (EVALSHA; EVAL the first time a server lacks it).
const SCRIPT: &str = include_str!("sequencer.lua");

/// One event to sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending<'a> {
    pub user: &'a [u8],
    pub ts: u64,
    pub needs_ack: bool,
    pub body: &'a [u8],
}

/// What Redis gave an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assigned {
    pub epoch: u64,
    pub seq: u64,
}

/// How long Redis remembers a node's last batch: a batch submitted again later than this
/// after its first run (a node cut off from Redis that long) could run twice.
pub(crate) const NODE_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One node's sequencing: the keys, the channel and the script of its deployment (the key
/// prefix), and the node's own batch numbers.
pub(crate) struct Sequencer {
    script: Script,
    prefix: Vec<u8>,
    channel: Vec<u8>,
    /// `p:node:<id>`: the number and the answer of this node's last batch that ran.
    node_key: Vec<u8>,
    keep: u64,
}

impl Sequencer {
    /// Node `node` (unique among the nodes on one Redis: a random id per process) sequencing
    /// keys under `prefix`, keeping about the last `keep` events of each user's stream.
    pub(crate) fn new(prefix: &str, node: u64, keep: u64) -> Sequencer {
        Sequencer {
            script: Script::new(SCRIPT),
            prefix: prefix.as_bytes().to_vec(),
            channel: format!("{prefix}:events").into_bytes(),
            node_key: format!("{prefix}:node:{node:016x}").into_bytes(),
            keep: keep.max(1),
        }
    }

    /// The channel every batch is published on.
    pub(crate) fn channel(&self) -> &[u8] {
        &self.channel
    }

    /// `user`'s key with `suffix` (`m` or `l`).
    pub(crate) fn key(&self, user: &[u8], suffix: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + user.len() + 5);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(b":{");
        k.extend_from_slice(user);
        k.extend_from_slice(b"}:");
        k.push(suffix);
        k
    }

    /// Sequences, stores and publishes `events` (1 to `wire::MAX_BATCH`), this node's batch
    /// number `batch`, in one round trip. A stream that does not exist yet starts with
    /// `new_epoch`. On an error Redis may or may not have run it: submit the same batch with
    /// the same number again, and it runs at most once (the answer of its run comes back).
    /// Numbers must differ from one batch to the next.
    pub(crate) fn submit(
        &self,
        conn: &mut dyn ConnectionLike,
        batch: u64,
        new_epoch: u64,
        events: &[Pending<'_>],
    ) -> RedisResult<Vec<Assigned>> {
        debug_assert!((1..=super::wire::MAX_BATCH).contains(&events.len()));
        let mut call = self.script.prepare_invoke();
        call.key(&self.node_key[..])
            .arg(&self.channel[..])
            .arg(self.keep)
            .arg(&epoch_hex(new_epoch)[..])
            .arg(batch)
            .arg(NODE_MEMORY.as_secs());
        for e in events {
            call.key(self.key(e.user, b'm'))
                .key(self.key(e.user, b'l'))
                .arg(e.user)
                .arg(&e.ts.to_le_bytes()[..])
                .arg(&[u8::from(e.needs_ack)][..])
                .arg(e.body);
        }
        let reply: Vec<(u64, Vec<u8>)> = call.invoke(conn)?;
        if reply.len() != events.len() {
            return Err(protocol_error(
                "the script answered for another number of events",
            ));
        }
        reply
            .into_iter()
            .map(|(seq, epoch)| {
                let epoch = parse_hex(&epoch)
                    .ok_or_else(|| protocol_error("an epoch that is not 16 hex digits"))?;
                Ok(Assigned { epoch, seq })
            })
            .collect()
    }
}

fn protocol_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

#[cfg(test)]
mod tests;
