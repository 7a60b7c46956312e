//! Sequencing through Redis: a batch of emitted events, from any node, gets each user's next
//! `seq` (and the stream's `epoch`) and is appended to the log, which every node reads, as one
//! message, all in one script run and one round trip (`sequencer.lua`). Redis runs scripts one
//! at a time, so two nodes' batches never interleave: no two events of a user share a `seq`,
//! none is skipped, and every node's subscriber sees a user's events in `seq` order.
//!
//! Redis's work is per batch and per user of the batch, never per event (a stream entry per
//! event cost about 5 µs of Redis CPU each: perf/2026-12-01-redis-sequencing.md). Keys, for a
//! key prefix `p` and a user `u` (binary-safe; `{u}` is a hash tag, so one user's keys stay
//! together should the keys ever be spread over Redis Cluster slots; the script itself writes
//! many users' keys, so it needs one Redis):
//! - `p:log`: a stream, one entry per batch, field `m` the message, field `v` the id of the
//!   entry before it (so a reader can tell it missed none), trimmed by bytes and age
//!   ([`Retention`]) as batches are appended;
//! - `p:size`: the bytes of the messages the log holds, and `p:sizes`: a list of `<id> <bytes>`
//!   per entry, oldest first (what trimming reads, rather than the entries);
//! - `p:last`: the id of the log's last entry;
//! - `p:gen`: the log's generation (16 hex digits, set when the log starts);
//! - `p:{u}:m`: a hash, `epoch` (16 hex digits, set by the first event of the stream) and `seq`
//!   (the last one given);
//! - `p:{u}:i`: a stream, the user's index into the log: entry id `<first seq>-0` per batch
//!   that has events of the user, field `b` the log entry's id, trimmed to about the last
//!   [`Retention::index_entries`] and gone [`Retention::max_age`] after the user's last batch. A resume reads the entries from its cursor on, then those batches, and keeps
//!   the user's events.

use std::collections::HashMap;

use redis::{ConnectionLike, RedisResult, Script};

use super::wire::{epoch_hex, parse_hex};

/// The script, loaded once per connection (EVALSHA; EVAL the first time a server lacks it).
const SCRIPT: &str = include_str!("sequencer.lua");

/// The sync script: a user's stream as of a point in the log.
const SYNC_SCRIPT: &str = include_str!("sync.lua");

/// The names of one deployment's keys (its prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Vec<u8>,
    /// `p:log`.
    pub log: Vec<u8>,
    /// `p:last`.
    pub last: Vec<u8>,
    /// `p:gen`: the log's generation, set when it starts.
    pub generation: Vec<u8>,
    /// `p:size`: the bytes of the messages in the log.
    pub size: Vec<u8>,
    /// `p:sizes`: a list, `<id> <bytes>` per log entry, oldest first.
    pub sizes: Vec<u8>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.as_bytes().to_vec(),
            log: format!("{prefix}:log").into_bytes(),
            last: format!("{prefix}:last").into_bytes(),
            generation: format!("{prefix}:gen").into_bytes(),
            size: format!("{prefix}:size").into_bytes(),
            sizes: format!("{prefix}:sizes").into_bytes(),
        }
    }

    /// `user`'s key with `suffix` (`m` or `i`).
    pub(crate) fn user(&self, user: &[u8], suffix: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + user.len() + 5);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(b":{");
        k.extend_from_slice(user);
        k.extend_from_slice(b"}:");
        k.push(suffix);
        k
    }
}

/// A log entry id, `<ms>-<n>`: ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct LogId(pub u64, pub u64);

impl LogId {
    /// Parses `<ms>-<n>`.
    pub(crate) fn parse(id: &[u8]) -> Option<LogId> {
        let text = std::str::from_utf8(id).ok()?;
        let (ms, n) = text.split_once('-')?;
        Some(LogId(ms.parse().ok()?, n.parse().ok()?))
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A user's stream as a sync finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Its epoch and last seq as of the log position asked about.
    pub at: Assigned,
    /// The last seq that needs an ack (0: none), and the highest a client acked (0: none).
    pub need: u64,
    pub acked: u64,
}

impl Synced {
    /// The first seq a client may not have acked, if the stream has events that need an ack
    /// and are not acked.
    pub(crate) fn first_unacked(&self) -> Option<u64> {
        (self.need > self.acked).then_some(self.acked + 1)
    }
}

/// `user`'s stream (epoch, last seq) as it was once the log had been read through `position`;
/// a stream that does not exist yet is given `new_epoch`. One round trip (`sync.lua`).
pub(crate) fn sync(
    conn: &mut dyn ConnectionLike,
    keys: &Keys,
    user: &[u8],
    position: LogId,
    new_epoch: u64,
) -> RedisResult<Synced> {
    let (epoch, seq, need, acked): (Vec<u8>, u64, u64, u64) = Script::new(SYNC_SCRIPT)
        .key(keys.user(user, b'm'))
        .key(keys.user(user, b'i'))
        .arg(position.to_string())
        .arg(&epoch_hex(new_epoch)[..])
        .invoke(conn)?;
    let epoch =
        parse_hex(&epoch).ok_or_else(|| protocol_error("an epoch that is not 16 hex digits"))?;
    Ok(Synced {
        at: Assigned { epoch, seq },
        need,
        acked,
    })
}

/// What a batch tells the script about one of its users.
#[derive(Default)]
struct UserInBatch<'a> {
    user: &'a [u8],
    /// Its events (acks not counted).
    events: u32,
    /// The number (from 1) among them of the last that needs an ack (0: none).
    last_needing_ack: u32,
    /// The highest ack of the batch: `(epoch, through)` (through 0: none).
    acked: (u64, u64),
}

/// One event to sequence, or (`ack`) a client's ack to pass on to every node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending<'a> {
    pub user: &'a [u8],
    pub ts: u64,
    pub needs_ack: bool,
    pub body: &'a [u8],
    /// An ack through `(epoch, seq)` rather than an event: it takes no seq.
    pub ack: Option<(u64, u64)>,
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

/// What Redis keeps of the log and of each user's index (the same on every node of a
/// deployment: each node's batches trim the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Bytes of batch messages the log holds at most (the batch just appended stays, whatever
    /// its size).
    pub max_bytes: u64,
    /// How old the log's entries get at most, by Redis's clock; also how long a user's index
    /// outlives the user's last batch.
    pub max_age: std::time::Duration,
    /// Entries of each user's index kept, about (one per batch with events of the user).
    pub index_entries: u64,
}

/// One node's sequencing: the keys, the channel and the script of its deployment (the key
/// prefix), and the node's own batch numbers.
pub(crate) struct Sequencer {
    script: Script,
    keys: Keys,
    /// `p:node:<id>`: the number and the answer of this node's last batch that ran.
    node_key: Vec<u8>,
    /// The node's id (16 hex digits), which its log entries carry.
    node_id: [u8; 16],
    retention: Retention,
    /// Reused for each batch: the events and the users arguments.
    events: Vec<u8>,
    users: Vec<u8>,
}

impl Sequencer {
    /// Node `node` (unique among the nodes on one Redis: a random id per process) sequencing
    /// keys under `prefix`, with the log and the users' indexes kept as `retention` says.
    pub(crate) fn new(prefix: &str, node: u64, retention: Retention) -> Sequencer {
        Sequencer {
            script: Script::new(SCRIPT),
            keys: Keys::new(prefix),
            node_key: format!("{prefix}:node:{node:016x}").into_bytes(),
            node_id: epoch_hex(node),
            retention,
            events: Vec::new(),
            users: Vec::new(),
        }
    }

    /// The deployment's keys.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Sequences and appends to the log `events` (1 to `wire::MAX_BATCH`), this node's batch
    /// number `batch`, in one round trip. A stream that does not exist yet starts with
    /// `new_epoch`. On an error Redis may or may not have run it: submit the same batch with
    /// the same number again, and it runs at most once (the answer of its run comes back).
    /// Numbers must differ from one batch to the next.
    pub(crate) fn submit(
        &mut self,
        conn: &mut dyn ConnectionLike,
        batch: u64,
        new_epoch: u64,
        events: &[Pending<'_>],
    ) -> RedisResult<Vec<Assigned>> {
        debug_assert!((1..=super::wire::MAX_BATCH).contains(&events.len()));
        // Users in order of first appearance, with their numbers of events; events name
        // them by number (the message's events section, which the script passes on as is).
        let mut users: Vec<UserInBatch<'_>> = Vec::new();
        let mut number: HashMap<&[u8], u16> = HashMap::new();
        let mut numbers = Vec::with_capacity(events.len());
        self.events.clear();
        for e in events {
            let n = *number.entry(e.user).or_insert_with(|| {
                users.push(UserInBatch {
                    user: e.user,
                    ..UserInBatch::default()
                });
                (users.len() - 1) as u16
            });
            numbers.push(n);
            self.events.extend_from_slice(&n.to_le_bytes());
            self.events.extend_from_slice(&e.ts.to_le_bytes());
            let u = &mut users[usize::from(n)];
            if let Some((epoch, seq)) = e.ack {
                if seq > u.acked.1 {
                    u.acked = (epoch, seq);
                }
                self.events.push(2);
                self.events.extend_from_slice(&16u32.to_le_bytes());
                self.events.extend_from_slice(&epoch.to_le_bytes());
                self.events.extend_from_slice(&seq.to_le_bytes());
                continue;
            }
            u.events += 1;
            if e.needs_ack {
                u.last_needing_ack = u.events;
            }
            self.events.push(u8::from(e.needs_ack));
            self.events
                .extend_from_slice(&(e.body.len() as u32).to_le_bytes());
            self.events.extend_from_slice(e.body);
        }
        self.users.clear();
        let mut call = self.script.prepare_invoke();
        call.key(&self.node_key[..])
            .key(&self.keys.log[..])
            .key(&self.keys.last[..])
            .key(&self.keys.generation[..])
            .key(&self.keys.size[..])
            .key(&self.keys.sizes[..]);
        for u in &users {
            self.users.push(u.user.len() as u8);
            self.users.extend_from_slice(u.user);
            self.users.extend_from_slice(&u.events.to_le_bytes());
            self.users
                .extend_from_slice(&u.last_needing_ack.to_le_bytes());
            self.users.extend_from_slice(&u.acked.1.to_le_bytes());
            self.users.extend_from_slice(&epoch_hex(u.acked.0));
            call.key(self.keys.user(u.user, b'm'))
                .key(self.keys.user(u.user, b'i'));
        }
        call.arg(self.retention.max_bytes)
            .arg(self.retention.index_entries.max(1))
            .arg(&epoch_hex(new_epoch)[..])
            .arg(batch)
            .arg(NODE_MEMORY.as_secs())
            .arg(events.len())
            .arg(&self.events[..])
            .arg(&self.users[..])
            .arg(&epoch_hex(new_epoch ^ batch.rotate_left(32))[..])
            .arg(&self.node_id[..])
            .arg(self.retention.max_age.as_millis().max(1) as u64);
        let reply: Vec<(u64, Vec<u8>)> = call.invoke(conn)?;
        if reply.len() != users.len() {
            return Err(protocol_error(
                "the script answered for another number of users",
            ));
        }
        // Per user: the seq of its next event in the batch, and its epoch.
        let mut next: Vec<Assigned> = reply
            .into_iter()
            .map(|(first, epoch)| {
                let epoch = parse_hex(&epoch)
                    .ok_or_else(|| protocol_error("an epoch that is not 16 hex digits"))?;
                Ok(Assigned { epoch, seq: first })
            })
            .collect::<RedisResult<_>>()?;
        Ok(numbers
            .into_iter()
            .zip(events)
            .map(|(n, e)| match e.ack {
                // An ack keeps its own cursor and takes no seq.
                Some((epoch, seq)) => Assigned { epoch, seq },
                None => {
                    let a = &mut next[usize::from(n)];
                    let given = *a;
                    a.seq += 1;
                    given
                }
            })
            .collect())
    }
}

fn protocol_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

#[cfg(test)]
mod tests;
