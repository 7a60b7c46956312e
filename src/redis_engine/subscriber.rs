//! The node's subscriber: the thread that reads every node's sequenced batches from the log in
//! Redis (`floodgate-redis-sub`) and hands their events, in order, to what delivers them
//! ([`Deliver`]: on the gateway, a push into the user's shard ring, as an emitter's).
//!
//! It reads the log (`XREAD BLOCK` from the last entry it read), not a pub/sub channel: a cut
//! connection loses nothing, since the next read starts where the last one ended. Each entry
//! names the one before it, so an entry the subscriber could not read (trimmed away while it
//! was cut off, or lost with a Redis that restarted without persistence) is noticed, and
//! [`Deliver::continuity_lost`] says so before the next event.
//!
//! Between reads it answers the shards' sync requests: where a user's stream stood at the
//! point of the log it has read through ([`Deliver::sync`]), so a shard that never saw the
//! user's events can say `hello` with Redis's epoch and last `seq`, and take every later event
//! from the log.
//!
//! An entry that is not a valid batch (anyone who can write to the log can add one) is counted
//! and skipped, never a reason to stop. A lost connection is made again with a backoff and
//! jitter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use redis::Value;

use super::backoff::Backoff;
use super::sequencer::{self, Keys, LogId};
use super::wire::{self, WireEvent};

/// How long one read waits for a new entry: sync requests wait at most this long (plus a
/// round trip), and the stop flag is looked at this often.
const BLOCK: Duration = Duration::from_millis(20);

/// Events a resume may get from Redis on a node that never received them, at most (the
/// newest; history keeps no more than `history_max_events` of them anyway).
pub(crate) const HISTORY_MAX: u64 = 4096;

/// Log entries one read returns at most (each a batch of up to 1024 events).
const READ_COUNT: usize = 64;

/// Connecting to Redis, or one round trip, at most.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) use crate::record::SyncRequest;

/// Where the subscriber's events go.
pub(crate) trait Deliver {
    /// The next entry of a batch (an event, or a client's ack); every event of a user comes
    /// in `seq` order. `own`: this node submitted the batch.
    fn event(&mut self, e: &WireEvent<'_>, own: bool);
    /// Entries of the log were not read (they were trimmed or lost): events between the last
    /// one delivered and the next may be missing.
    fn continuity_lost(&mut self);
    /// `user`'s stream stood at `epoch`, `seq` once the log was read through what was
    /// delivered so far: the answer to a sync request.
    fn sync(&mut self, user: &[u8], epoch: u64, seq: u64);
    /// An older event of a user whose sync asked for events from a `seq` on (before that
    /// sync's answer, in `seq` order).
    fn history(&mut self, e: &WireEvent<'_>);
    /// The end of what one read of the log brought (up to 64 batches): a moment to wake the
    /// consumers once rather than per event.
    fn flush(&mut self) {}
}

/// What the subscriber has done, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct SubscriberStats {
    /// Batches read.
    pub messages: AtomicU64,
    /// Their events.
    pub events: AtomicU64,
    /// Log entries that were not valid batches (skipped).
    pub bad_messages: AtomicU64,
    /// Times entries of the log were missed (trimmed before they were read, or lost).
    pub continuity_lost: AtomicU64,
    /// Sync requests answered.
    pub syncs: AtomicU64,
    /// Connections or round trips that failed.
    pub failures: AtomicU64,
    /// Whether the last round trip succeeded.
    pub connected: AtomicBool,
    /// Set (for good) once the reader knows where in the log it starts: the node's publisher
    /// sends nothing before, so the node reads back every event it emits.
    pub placed: Arc<AtomicBool>,
}

/// The subscriber's state; [`Subscriber::run`] is the thread's body.
pub(crate) struct Subscriber {
    client: redis::Client,
    keys: Keys,
    /// This node's id as its log entries carry it (16 hex digits).
    node_id: [u8; 16],
    /// Users whose stream state a shard asks for.
    requests: Receiver<SyncRequest>,
    /// Where the epochs of streams a sync makes come from: each sync offers a new one (a
    /// stream that Redis lost and that starts again must never get its old epoch back, or its
    /// new events would pass for ones already delivered).
    epoch_seed: u64,
    /// Syncs made so far (numbers the epochs offered).
    syncs: u64,
    stats: Arc<SubscriberStats>,
    backoff: Backoff,
    /// The last log entry read, once known.
    position: Option<LogId>,
    /// The generation of the log `position` is in, once known: a log with another one is a
    /// new log (Redis lost the one read), whatever its ids.
    generation: Option<Vec<u8>>,
    /// Sync requests taken but not answered yet (answered once a connection is up).
    pending: Vec<SyncRequest>,
}

impl Subscriber {
    /// A subscriber to the log of the deployment `keys` on the Redis at `client`, answering the
    /// sync requests that come on `requests`.
    pub(crate) fn new(
        client: redis::Client,
        keys: Keys,
        node_id: u64,
        requests: Receiver<SyncRequest>,
        epoch_seed: u64,
        stats: Arc<SubscriberStats>,
    ) -> Self {
        Subscriber {
            client,
            keys,
            node_id: super::wire::epoch_hex(node_id),
            requests,
            epoch_seed,
            syncs: 0,
            stats,
            backoff: Backoff::new(),
            position: None,
            generation: None,
            pending: Vec::new(),
        }
    }

    /// Reads until `stop` is set.
    pub(crate) fn run(&mut self, stop: &AtomicBool, out: &mut impl Deliver) {
        while !stop.load(Ordering::Acquire) {
            let mut conn = match self.client.get_connection_with_timeout(TIMEOUT) {
                Ok(c) => c,
                Err(e) => {
                    self.failed(&e, stop);
                    continue;
                }
            };
            // Reads block for `BLOCK` on the server; the socket waits a little longer.
            if let Err(e) = conn.set_read_timeout(Some(TIMEOUT)) {
                self.failed(&e, stop);
                continue;
            }
            if let Err(e) = self.start(&mut conn, out) {
                self.failed(&e, stop);
                continue;
            }
            self.stats.connected.store(true, Ordering::Relaxed);
            self.backoff.reset();
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = self.serve_syncs(&mut conn, out) {
                    self.failed(&e, stop);
                    break;
                }
                if let Err(e) = self.read(&mut conn, out) {
                    self.failed(&e, stop);
                    break;
                }
            }
            if stop.load(Ordering::Acquire) {
                // Stopping: what is in the log now (this node's own last events among it)
                // still reaches the shards, if Redis answers.
                let _ = self.catch_up(&mut conn, out);
            }
        }
        self.stats.connected.store(false, Ordering::Relaxed);
    }

    /// Reads the log up to its last entry as of now (for at most `TIMEOUT`).
    fn catch_up(
        &mut self,
        conn: &mut redis::Connection,
        out: &mut impl Deliver,
    ) -> redis::RedisResult<()> {
        let Some(last) = self.log_end(conn)?.0 else {
            return Ok(());
        };
        let until = std::time::Instant::now() + TIMEOUT;
        while self.position.is_some_and(|at| at < last) && std::time::Instant::now() < until {
            self.read(conn, out)?;
        }
        Ok(())
    }

    /// The id of the log's last entry and the log's generation (none: no log yet, or one
    /// Redis lost).
    fn log_end(
        &self,
        conn: &mut redis::Connection,
    ) -> redis::RedisResult<(Option<LogId>, Option<Vec<u8>>)> {
        let (last, generation): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("MGET")
            .arg(&self.keys.last[..])
            .arg(&self.keys.generation[..])
            .query(conn)?;
        Ok((last.and_then(|l| LogId::parse(&l)), generation))
    }

    /// On a new connection: where reading goes on. The first time, from the log's end (what
    /// came before is for sync requests); after that, where it stopped, unless the log is
    /// another one (its generation differs, or it ends before that point: Redis lost the log
    /// read so far; read the new one from its start).
    fn start(
        &mut self,
        conn: &mut redis::Connection,
        out: &mut impl Deliver,
    ) -> redis::RedisResult<()> {
        let (last, generation) = self.log_end(conn)?;
        let Some(at) = self.position else {
            self.position = Some(last.unwrap_or_default());
            self.generation = generation;
            // Release: the position is set before the publisher may submit.
            self.stats.placed.store(true, Ordering::Release);
            return Ok(());
        };
        let other_log = self.generation.is_some() && generation != self.generation;
        if other_log || last.unwrap_or_default() < at {
            tracing::warn!(
                "redis: the log is not the one this node was reading: Redis lost it (a restart without persistence?)"
            );
            self.lost(out);
            self.position = Some(LogId::default());
            self.generation = generation;
        } else if generation.is_some() {
            self.generation = generation;
        }
        Ok(())
    }

    /// Answers every sync request waiting, at the position read so far.
    fn serve_syncs(
        &mut self,
        conn: &mut redis::Connection,
        out: &mut impl Deliver,
    ) -> redis::RedisResult<()> {
        self.pending.extend(self.requests.try_iter());
        let at = self.position.unwrap_or_default();
        while let Some(r) = self.pending.last() {
            self.syncs += 1;
            let offer = mix(self.epoch_seed, self.syncs);
            let s = sequencer::sync(conn, &self.keys, &r.user, at, offer)?;
            let (from, to) = match r.to {
                // A stream the shard has nothing of: the last events from the cursor on, and
                // from the first unacked one on (the shard keeps those and redelivers them).
                None => {
                    let from = match s.first_unacked() {
                        Some(u) if r.from == 0 || u < r.from => u,
                        _ => r.from,
                    };
                    (from.max(s.at.seq.saturating_sub(HISTORY_MAX - 1)), s.at.seq)
                }
                // For one connection: the first events of the range.
                Some(to) => (r.from, to.min(s.at.seq).min(r.from + HISTORY_MAX - 1)),
            };
            if from > 0 && from <= to {
                read_history(conn, &self.keys, &r.user, from..=to, s, at, out)?;
            }
            out.sync(&r.user, s.at.epoch, s.at.seq);
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.pending.pop();
        }
        out.flush();
        Ok(())
    }

    /// One read of the log: waits up to `BLOCK` for entries after the position, and delivers
    /// them.
    fn read(
        &mut self,
        conn: &mut redis::Connection,
        out: &mut impl Deliver,
    ) -> redis::RedisResult<()> {
        let at = self.position.unwrap_or_default();
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.keys.log[..])
            .arg(at.to_string())
            .query(conn)?;
        for entry in entries(reply)? {
            let other_log = entry.generation.is_some()
                && self.generation.is_some()
                && entry.generation != self.generation;
            if entry.previous != self.position || other_log {
                self.lost(out);
            }
            self.position = Some(entry.id);
            if entry.generation.is_some() {
                self.generation = entry.generation;
            }
            let own = entry.node.as_deref() == Some(&self.node_id[..]);
            let Some(message) = entry.message else {
                self.bad(&"an entry without a message");
                continue;
            };
            match wire::decode(&message) {
                Ok(events) => {
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .events
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    for e in &events {
                        out.event(e, own);
                    }
                }
                Err(e) => self.bad(&e),
            }
        }
        out.flush();
        Ok(())
    }

    /// Says that entries were missed.
    fn lost(&mut self, out: &mut impl Deliver) {
        if self.stats.continuity_lost.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("redis: entries of the log were missed here (trimmed before this node read them, or lost); streams are checked against Redis again");
        }
        out.continuity_lost();
    }

    fn bad(&self, why: &dyn std::fmt::Display) {
        if self.stats.bad_messages.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %why, "redis: an entry of the log is not a batch; skipped (counted from now on)");
        }
    }

    /// Counts a failure and waits the backoff (waking early if `stop` is set).
    fn failed(&mut self, e: &redis::RedisError, stop: &AtomicBool) {
        self.stats.connected.store(false, Ordering::Relaxed);
        if self.stats.failures.fetch_add(1, Ordering::Relaxed) == 0 || self.backoff.is_first() {
            tracing::warn!(error = %e, "redis: the log's reader lost its connection or was refused; trying again");
        }
        let wait = self.backoff.next_wait();
        let until = std::time::Instant::now() + wait;
        while std::time::Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10).min(wait));
        }
    }
}

/// The `n`th value of a sequence seeded with `seed`: distinct for every `n`, and unrelated
/// between seeds (SplitMix64's finaliser).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hands `out` the events `seqs` of `user`'s stream (as `stream` found it) that the log still
/// holds up to `position`, those a client acked no longer marked as needing an ack: the user's
/// index gives the batches, one pipelined round trip reads them.
fn read_history(
    conn: &mut redis::Connection,
    keys: &Keys,
    user: &[u8],
    seqs: std::ops::RangeInclusive<u64>,
    stream: sequencer::Synced,
    position: LogId,
    out: &mut impl Deliver,
) -> redis::RedisResult<()> {
    type Index = Vec<(String, Vec<(String, String)>)>;
    let (from, upto) = (
        *seqs.start(),
        sequencer::Assigned {
            epoch: stream.at.epoch,
            seq: *seqs.end(),
        },
    );
    let index = keys.user(user, b'i');
    // The batch holding `from` (its entry is the last that starts at or before it), then
    // every later one up to the stream's point.
    let before: Index = redis::cmd("XREVRANGE")
        .arg(&index[..])
        .arg(format!("{from}-0"))
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(conn)?;
    let after: Index = redis::cmd("XRANGE")
        .arg(&index[..])
        .arg(format!("({from}-0"))
        .arg(format!("{}-0", upto.seq))
        .query(conn)?;
    let batches: Vec<LogId> = before
        .iter()
        .chain(&after)
        .filter_map(|(_, fields)| {
            let (_, b) = fields.iter().find(|(k, _)| k == "b")?;
            LogId::parse(b.as_bytes()).filter(|id| *id <= position)
        })
        .collect();
    if batches.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for id in &batches {
        let id = id.to_string();
        pipe.cmd("XRANGE").arg(&keys.log[..]).arg(&id).arg(&id);
    }
    let replies: Vec<Value> = pipe.query(conn)?;
    for reply in replies {
        // An XRANGE reply is the list that an XREAD reply holds for its stream.
        let as_read = Value::Array(vec![Value::Array(vec![Value::Nil, reply])]);
        for entry in entries(as_read)? {
            let Some(Ok(events)) = entry.message.as_deref().map(wire::decode) else {
                continue;
            };
            let wanted = |e: &&WireEvent<'_>| {
                !e.ack
                    && e.user == user
                    && e.epoch == upto.epoch
                    && (from..=upto.seq).contains(&e.seq)
            };
            for e in events.iter().filter(wanted) {
                let acked = e.seq <= stream.acked;
                out.history(&WireEvent {
                    needs_ack: e.needs_ack && !acked,
                    ..*e
                });
            }
        }
    }
    Ok(())
}

/// One log entry as read.
pub(super) struct Entry {
    pub id: LogId,
    /// The batch message (`m`).
    pub message: Option<Vec<u8>>,
    /// The id of the entry before it (`v`).
    pub previous: Option<LogId>,
    /// The log's generation (`g`).
    pub generation: Option<Vec<u8>>,
    /// The node that submitted the batch (`n`).
    pub node: Option<Vec<u8>>,
}

/// The entries of an `XREAD` reply on one stream (nil when the wait ended without any).
pub(super) fn entries(reply: Value) -> redis::RedisResult<Vec<Entry>> {
    let bad = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "an XREAD reply of another shape",
        ))
    };
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(s) => s,
        // RESP3 servers answer with a map.
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut kv) = stream else {
            return Err(bad());
        };
        let Some(Value::Array(list)) = kv.pop() else {
            return Err(bad());
        };
        for entry in list {
            let Value::Array(parts) = entry else {
                return Err(bad());
            };
            let mut parts = parts.into_iter();
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let id = LogId::parse(&id).ok_or_else(bad)?;
            let mut e = Entry {
                id,
                message: None,
                previous: None,
                generation: None,
                node: None,
            };
            let mut fields = fields.into_iter();
            while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                (fields.next(), fields.next())
            {
                match &k[..] {
                    b"m" => e.message = Some(v),
                    b"v" => e.previous = LogId::parse(&v),
                    b"g" => e.generation = Some(v),
                    b"n" => e.node = Some(v),
                    _ => {}
                }
            }
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
