//! The sans-IO core of a reactor shard: routing, sequencing, batching, keepalive and the
//! WebSocket protocol state of every connection. It never touches a socket or a clock: bytes and
//! `now` come in as arguments, bytes to write and decisions go out. The reactor
//! ([`crate::reactor`]) drives it with real sockets; the tests drive it with a virtual clock.

pub(crate) mod batch;
pub(crate) mod breaker;
pub(crate) mod coalesce;
mod config;
mod conn;
pub(crate) mod durable;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod history;
pub(crate) mod keepalive;
mod replay;
pub(crate) mod stats;
mod stream;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message};

use crate::delivery::DeliveryBoard;
use crate::receipt::{Progress, ReceiptBoard, Ticket};
pub(crate) use crate::record::SyncRequest;
use crate::record::{Record, REC_ACKED, REC_HIST, REC_LOST, REC_OWN, REC_REDIS, REC_SYNC};
pub(crate) use batch::BatchPolicy;
pub(crate) use breaker::BreakerPolicy;
use breaker::{Cause, Transition};
pub(crate) use config::{checkpoint_spacing, CoreConfig};
use conn::{
    coalesce_thinking, parse_ack, parse_auth, send_close, Io, Phase, CURSOR_MESSAGE_TIMEOUT,
};
pub(crate) use conn::{Conn, ConnId, ConnKind, Cursor, Start};
use durable::{ColdTier, SpoolRecord, FLAG_ACK, KIND_EVENT};
pub(crate) use history::HistoryLimits;
use history::{HistoryClock, Log};
use keepalive::{Keepalive, Liveness};
use replay::{
    append_gap, cold_replay, divert, redeliver_unacked, Backfill, COLD_PASS_BUDGET, REPLAY_CHUNK,
    REPLAY_LOW_WATER,
};
use stats::Stats;
use stream::{
    epoch_for, expire_unacked, spool_settle, Expiry, FramePool, Tracked, Unacked, UserState,
    MAX_TRACKED, TRACK_FOR,
};

/// Close code for a slow consumer: its outbound buffer went over `max_outbound_bytes`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a connection that did not answer a ping within `pong_timeout`.
pub const CLOSE_PONG_TIMEOUT: u16 = 4010;
/// Close code for a connection whose token expired without a fresh one sent in-band.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code for a connection whose in-band `auth` message was refused (an invalid token,
/// or one for another user).
pub const CLOSE_AUTH_REFUSED: u16 = 4003;
/// Close code for every connection of a user the application disconnected
/// (`Gateway::disconnect_user`, `POST /api/disconnect`).
pub const CLOSE_DISCONNECTED: u16 = 4002;
/// Close code sent to every connection on shutdown.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code (`Try Again Later`) for a connection whose stream state Redis did not give
/// within [`SYNC_TIMEOUT`] (the Redis engine).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// How long a user's first connection on a node waits for Redis to give the stream's state
/// (the Redis engine) before it is closed with [`CLOSE_TRY_AGAIN`].
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A closing connection may hold this much past `max_outbound_bytes` (its close frame and the
/// replies tungstenite still owes) before it is dropped without waiting for the handshake.
const CLOSING_SLACK: usize = 64 * 1024;
/// Buffers bigger than this are released when they drain, so a burst does not pin memory.
const SHRINK_ABOVE: usize = 256 * 1024;
/// How often `tick` evicts history past its age in every stream.
const HISTORY_SWEEP: Duration = Duration::from_secs(1);

/// Why an upgrade was refused by the user's home shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdoptError {
    /// The user already has `max_connections_per_user` open connections.
    UserLimit,
}

/// The tables a shard shares with emitters, made by the gateway and handed to every shard's
/// [`Core::new`]: users' delivery states and the receipt slots of tracked events.
#[derive(Clone)]
pub(crate) struct Boards {
    /// Where users' delivery states are published for emitters.
    pub delivery: Arc<DeliveryBoard>,
    /// Receipt slots of tracked events.
    pub receipts: Arc<ReceiptBoard>,
}

impl Boards {
    /// Empty boards with `receipt_capacity` receipt slots.
    pub(crate) fn new(receipt_capacity: usize) -> Boards {
        Boards {
            delivery: Arc::new(DeliveryBoard::new()),
            receipts: Arc::new(ReceiptBoard::new(receipt_capacity)),
        }
    }
}

/// The state machine of one reactor shard.
pub(crate) struct Core {
    cfg: CoreConfig,
    /// The tables shared with emitters.
    boards: Boards,
    /// In-band `auth` messages waiting for the reactor to verify their token (the core does
    /// no cryptography): at most one per connection, the latest.
    auth_requests: Vec<(ConnId, String)>,
    users: HashMap<Box<[u8]>, UserState, foldhash::fast::RandomState>,
    /// Users with at least one connection.
    online_users: usize,
    conns: Slab<Conn>,
    /// Connections with pending event frames, in the order their oldest frame was queued.
    dirty: Vec<ConnId>,
    /// Connections with something to write that must not wait for batching (handshake
    /// response, control frames, echo replies, or a full batch).
    urgent: Vec<ConnId>,
    /// Connections replaying history.
    replaying: Vec<ConnId>,
    /// Stream states created so far (makes epochs unique).
    streams_created: u64,
    /// The frames that users' histories point into.
    log: Log,
    /// Compact timestamps for history entries.
    clock: HistoryClock,
    /// When `tick` next evicts history that is past its age.
    next_history_sweep: Instant,
    /// Spool records encoded since the reactor last took them (see [`durable`]).
    pub spool_out: Vec<u8>,
    /// Logical spool position of the next record.
    spool_pos: u64,
    /// Tickets of tracked events in `spool_out`.
    spool_tickets: Vec<Ticket>,
    /// Dead-letter lines (JSON, one per event) for the reactor to append to the file.
    pub dead_out: Vec<u8>,
    /// Tracked events across users (skips receipt work when zero).
    tracked_count: usize,
    /// Buffers of acked events' frames, reused for the next events that need an ack.
    frame_pool: FramePool,
    /// Redis engine: users whose stream state the reactor must ask of Redis (through the
    /// subscriber, which answers in this shard's ring with a `REC_SYNC` record), each with the
    /// first `seq` its waiting connection resumes from (0: none), which Redis also sends
    /// (`REC_HIST` records) since this node never received it.
    pub sync_requests: Vec<SyncRequest>,
    /// Redis engine: what connections resuming before this shard's history got from Redis
    /// so far (they wait for the sync that follows), and those frames' bytes in all.
    backfills: HashMap<ConnId, Backfill>,
    backfill_bytes: usize,
    /// Redis engine: acks of this node's clients, `(user, epoch, through)`, for the reactor
    /// to pass on to every node (through the publisher and the log).
    pub acks_out: Vec<(Box<[u8]>, u64, u64)>,
    /// Counters, published by the reactor once per pass.
    pub stats: Stats,
}

impl Core {
    /// A shard's core. `now` starts its timers (the core never reads the clock).
    pub(crate) fn new(mut cfg: CoreConfig, boards: Boards, now: Instant) -> Self {
        cfg.breaker.high_water = cfg.max_outbound_bytes / 2;
        let log_bytes = if cfg.history.max_events == 0 {
            0
        } else {
            cfg.history_budget
        };
        Core {
            cfg,
            boards,
            auth_requests: Vec::new(),
            users: HashMap::default(),
            online_users: 0,
            conns: Slab::new(),
            dirty: Vec::new(),
            urgent: Vec::new(),
            replaying: Vec::new(),
            streams_created: 0,
            log: Log::new(log_bytes),
            clock: HistoryClock::default(),
            next_history_sweep: now,
            spool_out: Vec::new(),
            spool_pos: 0,
            spool_tickets: Vec::new(),
            dead_out: Vec::new(),
            tracked_count: 0,
            frame_pool: FramePool::default(),
            sync_requests: Vec::new(),
            backfills: HashMap::default(),
            backfill_bytes: 0,
            acks_out: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Takes over the streams a spool recovered (epochs, last `seq`s, cold indexes, unacked
    /// events) and continues the spool's positions at `head`.
    pub(crate) fn restore(&mut self, rec: durable::Recovery, now: Instant) {
        self.spool_pos = rec.head;
        self.stats.spool_bytes_cut_at_start = rec.torn_bytes + rec.repaired_bytes;
        self.stats.streams_discarded_at_start = rec.discarded_streams as u64;
        for (user, r) in rec.streams {
            let mut u = UserState::new(r.epoch);
            u.seq = r.last_seq;
            u.cold = r.index;
            u.acked = r.acked;
            u.unacked = r
                .unacked
                .into_iter()
                .map(|(seq, frame)| Unacked {
                    seq,
                    // The wait for an ack starts again with the new process.
                    deadline: now + self.cfg.ack_timeout,
                    frame,
                    own: true,
                })
                .collect();
            self.users.insert(user, u);
        }
        self.stats.streams_recovered = self.users.len() as u64;
        // Streams that had to start a new epoch lose their `seq` numbers, never their unacked
        // events: each is routed again, as a new event of the new stream that needs an ack.
        let mut record = Vec::new();
        for (user, frames) in rec.carried {
            for f in frames {
                let Some(body) = frame::payload(&f).and_then(frame::body_after_seq) else {
                    tracing::error!(
                        "spool: an unacked event's frame cannot be read; not carried over"
                    );
                    continue;
                };
                record.clear();
                crate::record::encode(&mut record, 0, true, &user, None, body);
                self.route(&record, now, 0);
                self.stats.events_carried_to_new_epoch += 1;
            }
        }
    }

    /// The reactor wrote `spool_out` to the spool: mark the receipts that waited on it.
    pub(crate) fn on_spooled(&mut self) {
        for t in self.spool_tickets.drain(..) {
            self.boards.receipts.update(t, Progress::Spooled);
        }
        self.spool_out.clear();
    }

    /// The spool deleted segments: it now starts at `start`.
    pub(crate) fn on_spool_trimmed(&mut self, start: u64) {
        for u in self.users.values_mut() {
            u.cold.trim(start);
        }
    }

    /// Closes every connection of `user` with 4002; returns how many.
    pub(crate) fn disconnect_user(&mut self, user: &[u8], now: Instant) -> usize {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.kind, ConnKind::User(u) if **u == *user))
            .filter(|(_, c)| c.state.is_open())
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            let c = &mut self.conns[id];
            c.close(
                CLOSE_DISCONNECTED,
                "disconnected by the server",
                now,
                self.cfg.close_timeout,
            );
            list_urgent(&mut self.urgent, c, id);
        }
        self.stats.closed_disconnected += ids.len() as u64;
        ids.len()
    }

    /// Sets when connection `id`'s token expires (`None`: never).
    pub(crate) fn set_expiry(&mut self, id: ConnId, at: Option<Instant>) {
        if let Some(c) = self.conns.get_mut(id) {
            c.expires = at;
        }
    }

    /// In-band `auth` messages received since the last call, for the reactor to verify and
    /// answer with [`Core::on_reauth`].
    pub(crate) fn take_auth_requests(&mut self) -> Vec<(ConnId, String)> {
        std::mem::take(&mut self.auth_requests)
    }

    /// The outcome of verifying connection `id`'s in-band token: the token's user and when it
    /// expires, or why it was refused. A valid token of the same user renews the connection
    /// (answered `{"type":"auth","ok":true}`); anything else closes it with 4003.
    pub(crate) fn on_reauth(
        &mut self,
        id: ConnId,
        verified: Result<(Box<[u8]>, Option<Instant>), &str>,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if !c.state.is_open() {
            return;
        }
        let ConnKind::User(user) = &c.kind else {
            return;
        };
        let refusal = match verified {
            Ok((u, at)) if u == *user => {
                c.expires = at;
                self.stats.reauthenticated += 1;
                frame::append_text(&mut c.out, br#"{"type":"auth","ok":true}"#);
                list_urgent(&mut self.urgent, c, id);
                return;
            }
            Ok(_) => "auth refused: the token is for another user".to_owned(),
            Err(why) => format!("auth refused: {why}"),
        };
        self.stats.closed_auth_refused += 1;
        c.close(CLOSE_AUTH_REFUSED, &refusal, now, self.cfg.close_timeout);
        list_urgent(&mut self.urgent, c, id);
    }

    /// Number of open connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The connection `id`. Panics if it does not exist (a reactor bug).
    pub(crate) fn conn(&self, id: ConnId) -> &Conn {
        &self.conns[id]
    }

    /// Redis engine: `id` waits for its stream's state, and nothing is written to it yet (not
    /// even its 101).
    pub(crate) fn waits_for_stream(&self, id: ConnId) -> bool {
        self.conns[id].phase.sync_cursor().is_some()
    }

    /// Every connection id.
    pub(crate) fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.iter().map(|(id, _)| id).collect()
    }

    /// The last `seq` assigned to `user` on this shard (0 if none).
    #[cfg(test)]
    pub(crate) fn last_seq(&self, user: &[u8]) -> u64 {
        self.users.get(user).map_or(0, |u| u.seq)
    }

    /// Adds an upgraded connection. `response` (the 101) is queued first, so it is written before
    /// any event; then, for a user stream, the `hello` frame with the stream's cursor and, if
    /// the client gave a `cursor`, a `gap` frame where continuity cannot be proven and the
    /// replay of retained history. `early` holds WebSocket bytes the client sent right after
    /// its request head. Once this returns, every event routed to the user reaches the
    /// connection, after whatever it replays: no duplicate, no gap.
    pub(crate) fn adopt(
        &mut self,
        kind: ConnKind,
        response: &[u8],
        early: &[u8],
        cursor: Option<Cursor>,
        now: Instant,
    ) -> Result<ConnId, AdoptError> {
        let start = cursor.map_or(Start::Live, Start::Resume);
        self.adopt_start(kind, response, early, start, now)
    }

    /// [`adopt`](Self::adopt) with any [`Start`], including waiting for a cursor message.
    pub(crate) fn adopt_start(
        &mut self,
        kind: ConnKind,
        response: &[u8],
        early: &[u8],
        start: Start,
        now: Instant,
    ) -> Result<ConnId, AdoptError> {
        if let ConnKind::User(user) = &kind {
            let count = self.users.get(user).map_or(0, |u| u.conns.len());
            if count >= self.cfg.max_connections_per_user {
                self.stats.rejected_limit += 1;
                return Err(AdoptError::UserLimit);
            }
        }
        let is_user = matches!(kind, ConnKind::User(_));
        let keepalive = Keepalive::new(self.cfg.ping_interval, self.cfg.pong_timeout, now);
        let id = self
            .conns
            .insert(Conn::new(kind, self.cfg.ws, response, keepalive, now));
        if is_user {
            match start {
                Start::Live => self.register(id, None, now),
                Start::Resume(cursor) => self.register(id, Some(cursor), now),
                Start::AwaitCursor => {
                    self.conns[id].phase = Phase::AwaitingCursor {
                        until: now + CURSOR_MESSAGE_TIMEOUT,
                    };
                }
            }
        }
        self.stats.connections_accepted += 1;
        self.stats.connections_open = self.conns.len() as u64;
        list_urgent(&mut self.urgent, &mut self.conns[id], id);
        if !early.is_empty() {
            self.on_input(id, early, now);
        }
        Ok(id)
    }

    /// Makes `id` one of its user's connections and starts its stream: `hello`, then the
    /// replay from `cursor` if any. From here on every event routed to the user reaches it.
    fn register(&mut self, id: ConnId, cursor: Option<Cursor>, now: Instant) {
        let c = &mut self.conns[id];
        if c.phase.is_awaiting_cursor() {
            c.phase.go_live();
        }
        let ConnKind::User(user) = &c.kind else {
            return;
        };
        // Created here if new (or dropped while a `resume=message` connection waited).
        let user = user.clone();
        let u = self.stream(user.clone());
        let first_conn = u.conns.is_empty();
        u.conns.push(id);
        let (synced, ask) = (u.synced, u.syncs_pending == 0);
        self.online_users += usize::from(first_conn);
        let request = if !synced {
            // Redis engine: this node cannot vouch for the stream's epoch and last `seq` yet.
            // The node never saw this stream: what the cursor misses comes from Redis.
            let from = match cursor {
                Some(c) if first_conn => c.since + 1,
                _ => 0,
            };
            ask.then(|| SyncRequest::newest(&user, from))
        } else if let Some(from) = self.backfill_from(&user, cursor, now) {
            // Redis engine: the cursor is before this node's history, but Redis may still
            // have what lies between; it comes to this connection alone.
            self.backfills.insert(id, Backfill::new(from));
            let to = self.users[&user].retained_from() - 1;
            Some(SyncRequest {
                user: user.clone(),
                from,
                to: Some(to),
            })
        } else {
            self.start_stream(id, cursor, None, now);
            self.publish_delivery(&user);
            list_urgent(&mut self.urgent, &mut self.conns[id], id);
            return;
        };
        self.conns[id].phase = Phase::AwaitingSync {
            cursor,
            until: now + SYNC_TIMEOUT,
        };
        if let Some(request) = request {
            let u = self.users.get_mut(&user).expect("made above");
            u.syncs_pending = u.syncs_pending.saturating_add(1);
            self.stats.sync_requests += 1;
            self.sync_requests.push(request);
        }
        self.publish_delivery(&user);
        list_urgent(&mut self.urgent, &mut self.conns[id], id);
    }

    /// Redis engine: where a resume from `cursor` needs events from Redis, because this
    /// shard's history (memory, or spool) no longer reaches back to it: the first `seq` it
    /// needs, if Redis may have it (the same run of the stream).
    fn backfill_from(&mut self, user: &[u8], cursor: Option<Cursor>, now: Instant) -> Option<u64> {
        let cur = cursor.filter(|_| self.cfg.redis)?;
        let u = self.users.get_mut(user)?;
        u.history
            .evict(self.clock.ms(now), &self.cfg.history, self.log.tail());
        let same_run = cur.since == 0 || cur.epoch == Some(u.epoch);
        (same_run && cur.since < u.seq && cur.since + 1 < u.retained_from())
            .then_some(cur.since + 1)
    }

    /// The state of `user`'s stream, created (with a new epoch) if there is none.
    fn stream(&mut self, user: Box<[u8]>) -> &mut UserState {
        if !self.users.contains_key(&user) {
            self.evict_offline_users();
            self.streams_created += 1;
            let epoch = epoch_for(self.cfg.epoch_seed, self.streams_created);
            let mut u = UserState::new(epoch);
            // Redis engine: the epoch and seq are Redis's to give.
            u.synced = !self.cfg.redis;
            self.users.insert(user.clone(), u);
        }
        self.users.get_mut(&user).expect("just inserted")
    }

    /// Publishes `user`'s delivery state (connections, open breakers, lowest health).
    fn publish_delivery(&self, user: &[u8]) {
        let Some(u) = self.users.get(user) else {
            return;
        };
        let mut d = crate::delivery::Delivery {
            connections: u.conns.len().min(255) as u8,
            breakers_open: 0,
            health: 100,
            breaker_trips: 0,
        };
        for &id in &u.conns {
            let b = &self.conns[id].breaker;
            d.breakers_open = d.breakers_open.saturating_add(u8::from(b.is_open()));
            d.health = d.health.min(b.health());
            d.breaker_trips = d.breaker_trips.saturating_add(b.trips().min(255) as u8);
        }
        self.boards.delivery.publish(user, d);
    }

    /// Queues `hello` on the new connection `id` and works out what it must replay.
    fn start_stream(
        &mut self,
        id: ConnId,
        cursor: Option<Cursor>,
        backfill: Option<Backfill>,
        now: Instant,
    ) {
        let ConnKind::User(user) = &self.conns[id].kind else {
            return;
        };
        let u = self.users.get_mut(user).expect("adopted user has a stream");
        u.history
            .evict(self.clock.ms(now), &self.cfg.history, self.log.tail());
        let (epoch, last, first) = (u.epoch, u.seq, u.retained_from());
        let c = &mut self.conns[id];
        c.last_queued_seq = last;
        c.delivered_through = last;
        let mut msg = Vec::with_capacity(96);
        msg.extend_from_slice(b"{\"type\":\"hello\",\"epoch\":\"");
        msg.extend_from_slice(format!("{epoch:016x}\",\"last_seq\":{last}}}").as_bytes());
        frame::append_text(&mut c.out, &msg);
        let Some(mut cur) = cursor else {
            redeliver_unacked(c, &u.unacked, 0..last + 1, &mut self.stats);
            return;
        };
        // Unacked events before what the connection gets have gone out already, from here on.
        let mut floor = 0;
        if let Some(b) = backfill.filter(|b| b.through >= b.first && b.through < last) {
            // Redis engine: what Redis had between the cursor and this node's history, sent
            // after the unacked events before it and before the rest of the resume.
            redeliver_unacked(c, &u.unacked, 0..b.first, &mut self.stats);
            c.out.extend_from_slice(&b.frames);
            c.raw_head = c.out.len();
            self.stats.resumed_from_redis += 1;
            cur.since = b.through;
            cur.epoch = Some(epoch);
            floor = b.through + 1;
        }
        self.stats.resumes += 1;
        let (from, gap) = if cur.since != 0 && cur.epoch != Some(epoch) {
            // Another run of this user's stream: nothing of the old one can be vouched for,
            // and of this one only what is retained.
            (first, Some(("epoch_changed", 1, first - 1, Some(cur))))
        } else if cur.since > last {
            (last + 1, Some(("cursor_ahead", last + 1, cur.since, None)))
        } else if cur.since + 1 < first {
            (
                first,
                Some(("history_evicted", cur.since + 1, first - 1, None)),
            )
        } else {
            (cur.since + 1, None)
        };
        c.delivered_through = from.saturating_sub(1).min(last);
        match gap {
            None => redeliver_unacked(c, &u.unacked, floor..from, &mut self.stats),
            Some((reason, lost_from, lost_to, previous)) => {
                // Unacked events before the hole were seen (or skipped) by the client; those
                // inside it were not lost: they go in order between the pieces of the gap, so
                // a `gap` names only what is really gone.
                redeliver_unacked(c, &u.unacked, floor..lost_from, &mut self.stats);
                let mut at = lost_from;
                let mut pieces = 0;
                for e in u
                    .unacked
                    .iter()
                    .filter(|e| (lost_from.max(floor)..=lost_to).contains(&e.seq))
                {
                    if e.seq > at {
                        append_gap(&mut c.out, reason, epoch, at, e.seq - 1, previous);
                        self.stats.gaps += 1;
                        pieces += 1;
                    }
                    c.out.extend_from_slice(&e.frame);
                    self.stats.events_redelivered += 1;
                    at = e.seq + 1;
                }
                if at <= lost_to || (pieces == 0 && at == lost_from) {
                    // (Always one `gap`: an `epoch_changed` one is sent even for an empty
                    // range, for the previous cursor it carries.)
                    append_gap(&mut c.out, reason, epoch, at, lost_to, previous);
                    self.stats.gaps += 1;
                }
                c.raw_head = c.out.len();
            }
        }
        if from <= last {
            c.phase.replay_from(from);
            self.replaying.push(id);
        }
    }

    /// Copies retained history into replaying connections that have room, and switches those
    /// that caught up to live delivery. Call once per pass, after the rings are drained.
    pub(crate) fn pump_replays(&mut self, now: Instant, cold: &mut dyn ColdTier) {
        // Spool bytes all replays of this pass may read: a pass stays short, so live events
        // and every other connection get their turn (the list rotates when it runs out).
        let mut budget = COLD_PASS_BUDGET;
        let mut i = 0;
        while i < self.replaying.len() {
            let id = self.replaying[i];
            let c = &mut self.conns[id];
            let (ConnKind::User(user), Some(next)) = (&c.kind, c.phase.replay_next()) else {
                self.replaying.swap_remove(i);
                continue;
            };
            if c.blocked
                || c.breaker.is_open()
                || c.out.len() - c.written >= REPLAY_LOW_WATER
                || !c.state.is_open()
            {
                i += 1;
                continue;
            }
            let u = self
                .users
                .get_mut(user)
                .expect("replaying user has a stream");
            u.history
                .evict(self.clock.ms(now), &self.cfg.history, self.log.tail());
            let mut next = next;
            let mem = u.memory_from();
            if next < mem && u.cold.first_seq().is_some() {
                if budget == 0 {
                    // Out of reading for this pass: the others go first next time.
                    self.replaying.rotate_left(i);
                    return;
                }
                // Older than memory: read it from the spool.
                let more = cold_replay(c, u, next, mem, cold, &mut self.stats, &mut budget);
                list_urgent(&mut self.urgent, c, id);
                if more {
                    i += 1;
                    continue;
                }
                next = c.phase.replay_next().expect("still replaying");
            } else if next < mem {
                // The history moved past this connection while it replayed.
                append_gap(&mut c.out, "history_evicted", u.epoch, next, mem - 1, None);
                self.stats.gaps += 1;
                next = mem;
            }
            if let Some(after) = u
                .history
                .read_from(next, REPLAY_CHUNK, &self.log, &mut c.out)
            {
                let n = after - next;
                c.last_queued_seq = after - 1;
                c.unwritten_frames += n;
                c.pending += n as usize;
                self.stats.events_replayed += n;
                next = after;
            }
            list_urgent(&mut self.urgent, c, id);
            if next > u.seq {
                c.phase.go_live();
                self.replaying.swap_remove(i);
            } else {
                c.phase.replayed_to(next);
                i += 1;
            }
        }
    }

    /// True when a replaying connection could take more history now (the reactor must not
    /// park while this holds).
    pub(crate) fn replay_ready(&self) -> bool {
        self.replaying.iter().any(|&id| {
            let c = &self.conns[id];
            !c.blocked
                && !c.breaker.is_open()
                && c.out.len() - c.written < REPLAY_LOW_WATER
                && c.state.is_open()
        })
    }

    /// Routes one ring record: assigns the user's next `seq`, keeps the frame in the user's
    /// history and queues it on each of the user's open connections that is not replaying.
    /// `now_unix_ns` is the pass's wall-clock time, for latency.
    #[inline]
    pub(crate) fn route(&mut self, record: &[u8], now: Instant, now_unix_ns: u64) {
        #[cfg(feature = "gate-selftest-slowdown")]
        {
            // The perf gate's self test: work no one needs, about 15% of routing an event.
            for i in 0..100u32 {
                std::hint::black_box(i);
            }
        }
        let rec = Record::parse(record);
        if rec.flags & REC_REDIS != 0 && !self.admit_sequenced(&rec, now) {
            return;
        }
        let Core {
            cfg,
            boards,
            users,
            conns,
            dirty,
            urgent,
            log,
            clock,
            stats,
            replaying,
            spool_out,
            spool_pos,
            spool_tickets,
            dead_out,
            tracked_count,
            frame_pool,
            ..
        } = self;
        let Some(user) = users.get_mut(rec.user) else {
            // Rare: the user's first event on this shard. One hash lookup on the common path.
            self.stream(rec.user.into());
            return self.route(record, now, now_unix_ns);
        };
        stats.events_received += 1;
        if rec.flags & REC_HIST == 0 {
            stats.record_latency_ns(now_unix_ns.saturating_sub(rec.ts_unix_ns));
        }
        user.seq += 1;
        let seq = user.seq;
        let (prefix, n) = frame::event_prefix(seq, rec.body.len());
        let frame_len = n + rec.body.len();
        if cfg.spool {
            let r = SpoolRecord {
                kind: KIND_EVENT,
                flags: if rec.needs_ack { FLAG_ACK } else { 0 },
                user: rec.user,
                epoch: user.epoch,
                seq,
                ts: rec.ts_unix_ns,
                frame: &[],
            };
            let at = *spool_pos;
            *spool_pos += durable::encode(spool_out, &r, &[&prefix[..n], rec.body]) as u64;
            user.cold.note(seq, at, cfg.spool_checkpoint_bytes);
        }
        if let Some(t) = rec.ticket {
            boards.receipts.update(t, Progress::Routed(seq));
            if cfg.spool {
                spool_tickets.push(t);
            }
            if user.tracked.len() == MAX_TRACKED {
                user.tracked.pop_front();
                *tracked_count -= 1;
            }
            user.tracked.push_back(Tracked {
                seq,
                ticket: t,
                needs_ack: rec.needs_ack,
                at: now,
            });
            *tracked_count += 1;
        }
        if rec.needs_ack && cfg.ack_max_pending > 0 {
            if user.unacked.len() == cfg.ack_max_pending {
                let oldest = user.unacked.pop_front().expect("full");
                let mut x = Expiry {
                    cfg,
                    receipts: &boards.receipts,
                    stats,
                    dead_out,
                    spool_out,
                    spool_pos,
                    frame_pool,
                };
                let reason = "unacked_overflow";
                expire_unacked(&mut x, rec.user, user.epoch, &user.tracked, oldest, reason);
            }
            // A buffer an acked event gave back: no allocation once warmed up.
            let mut f = frame_pool.take();
            f.extend_from_slice(&prefix[..n]);
            f.extend_from_slice(rec.body);
            user.unacked.push_back(Unacked {
                seq,
                deadline: now + cfg.ack_timeout,
                frame: f,
                own: rec.sequenced.is_none() || rec.flags & REC_OWN != 0,
            });
        }
        if cfg.history.max_events > 0 {
            match log.append(&[&prefix[..n], rec.body]) {
                Some(pos) => {
                    let ms = clock.ms(now);
                    user.history.push(seq, pos, frame_len, ms, &cfg.history);
                }
                None => user.history.skip_to(seq),
            }
            stats.history_bytes = log.resident() as u64;
        }
        if user.conns.is_empty() {
            stats.events_no_listener += 1;
            return;
        }
        let mut tripped = false;
        for &id in &user.conns {
            let c = &mut conns[id];
            if !c.phase.is_live() {
                // Replaying: this event is in history and reaches the connection in order.
                // (Or waiting for its stream's state: it starts from history too.)
                continue;
            }
            if !c.state.is_open() {
                stats.events_dropped += 1;
                continue;
            }
            let unsent = c.out.len() - c.written;
            let hard = unsent + frame_len > cfg.max_outbound_bytes;
            if cfg.breaker.enabled() && (hard || unsent > cfg.breaker.high_water) {
                if c.breaker.on_backlog(unsent, hard, now, &cfg.breaker) == Transition::Opened {
                    // This event and the unsent ones stay in history; the connection resumes
                    // from there once the breaker half-opens.
                    divert(c, id, Some(seq), stats, replaying);
                    tripped = true;
                    continue;
                }
            } else if hard {
                // Slow consumer (no breaker): stop queueing, tell it why, and let it go.
                stats.events_dropped += 1;
                stats.closed_slow_consumer += 1;
                c.close(CLOSE_SLOW_CONSUMER, "slow consumer", now, cfg.close_timeout);
                list_urgent(urgent, c, id);
                continue;
            }
            if unsent > cfg.breaker.high_water && rec.body.starts_with(coalesce::THINKING) {
                // Behind: a thinking delta may join the one queued before it.
                if coalesce_thinking(c, seq, rec.body) {
                    stats.events_coalesced += 1;
                    continue;
                }
                let start = c.out.len();
                frame::append_event(&mut c.out, &prefix[..n], rec.body);
                c.tail_thinking = Some(coalesce::Tail {
                    start,
                    end: c.out.len(),
                });
            } else {
                frame::append_event(&mut c.out, &prefix[..n], rec.body);
            }
            c.last_queued_seq = seq;
            c.unwritten_frames += 1;
            c.pending += 1;
            if !c.dirty {
                c.dirty = true;
                c.pending_since = now;
                dirty.push(id);
            }
            if c.pending == cfg.batch.max_events {
                list_urgent(urgent, c, id);
            }
        }
        if tripped {
            self.publish_delivery(rec.user);
        }
    }

    /// Redis engine: handles a record that Redis sequenced. A notice (`REC_SYNC`, `REC_ACKED`,
    /// `REC_LOST`) is applied here, and false returned. An event returns true when it is the
    /// next of its stream, with the stream's `seq` set to the one before it, so that `route`
    /// gives it the `seq` Redis gave; one already routed returns false (counted); one past a
    /// hole first announces the hole (see [`Core::jump`]).
    #[cold]
    fn admit_sequenced(&mut self, rec: &Record<'_>, now: Instant) -> bool {
        let Some((epoch, seq)) = rec.sequenced else {
            debug_assert!(false, "notices carry an epoch and a seq");
            return false;
        };
        if rec.flags & REC_LOST != 0 {
            self.on_continuity_lost();
            return false;
        }
        if rec.flags & REC_SYNC != 0 {
            self.on_sync(rec.user, epoch, seq, now);
            return false;
        }
        if rec.flags & REC_HIST != 0 {
            let Some(u) = self.users.get_mut(rec.user) else {
                return false;
            };
            if u.synced {
                // For connections resuming before this node's history: theirs alone.
                self.backfill(rec, epoch, seq);
                return false;
            }
            // An older event from Redis, for a connection waiting to resume: only while every
            // connection of the user still waits (none has been given anything), it goes to
            // history, the stream set to just before it.
            let conns = &self.conns;
            let waiting = u
                .conns
                .iter()
                .all(|&id| conns[id].phase.sync_cursor().is_some());
            if u.syncs_pending == 0 || !waiting || seq == 0 {
                return false;
            }
            if u.epoch != epoch || u.seq + 1 != seq {
                (u.epoch, u.seq) = (epoch, seq - 1);
                u.history.skip_to(seq - 1);
            }
            self.stats.events_from_redis_history += 1;
            return true;
        }
        if rec.flags & REC_ACKED != 0 {
            // A client acked on some node (this one too: the ack is already applied here,
            // and applying it again changes nothing).
            if self.users.get(rec.user).is_some_and(|u| u.epoch == epoch)
                && self.settle_acked(rec.user, seq).is_some()
            {
                self.stats.acks_from_other_nodes += 1;
            }
            return false;
        }
        let Some(u) = self.users.get_mut(rec.user) else {
            // The first event of the user this node sees: the subscriber reads the log in
            // order, so the stream is exactly at this event.
            let u = self.stream(rec.user.into());
            (u.epoch, u.seq, u.synced) = (epoch, seq - 1, true);
            u.history.skip_to(seq - 1);
            return true;
        };
        if u.epoch == epoch && seq <= u.seq {
            self.stats.events_duplicate += 1;
            return false;
        }
        if u.epoch != epoch || seq > u.seq + 1 {
            self.jump(rec.user, epoch, seq - 1);
        }
        true
    }

    /// Redis engine: moves `user`'s stream to `epoch` at `last` (its last `seq`): a hole the
    /// node missed, or a new run of the stream (Redis lost it). Each connection that had its
    /// `hello` is told with a `gap` frame: `missed` for a hole (a replaying connection gets a
    /// `history_evicted` one when its replay reaches it), `epoch_changed` for a new run, with
    /// the cursor the connection was at. History before the hole is dropped; on a new epoch
    /// so are the unacked events of the old one (dead-lettered, `epoch_changed`).
    fn jump(&mut self, user: &[u8], epoch: u64, last: u64) {
        let Core {
            users,
            conns,
            cfg,
            boards,
            stats,
            dead_out,
            spool_out,
            spool_pos,
            frame_pool,
            tracked_count,
            urgent,
            replaying,
            ..
        } = self;
        let u = users.get_mut(user).expect("jump on a stream that exists");
        let changed = u.epoch != epoch;
        let before = (u.epoch, u.seq);
        if changed {
            let mut x = Expiry {
                cfg,
                receipts: &boards.receipts,
                stats,
                dead_out,
                spool_out,
                spool_pos,
                frame_pool,
            };
            for e in u.unacked.drain(..) {
                expire_unacked(&mut x, user, u.epoch, &u.tracked, e, "epoch_changed");
            }
            *tracked_count -= u.tracked.len();
            u.tracked.clear();
            u.acked = 0;
            u.epoch = epoch;
        } else {
            debug_assert!(last > u.seq, "a hole moves forward");
            stats.stream_holes += 1;
        }
        u.history.skip_to(last);
        u.seq = last;
        for &id in &u.conns {
            let c = &mut conns[id];
            if c.phase.sync_cursor().is_some() || !c.state.is_open() {
                continue;
            }
            if changed {
                let previous = Cursor {
                    since: c.last_queued_seq,
                    epoch: Some(before.0),
                };
                append_gap(&mut c.out, "epoch_changed", epoch, 1, last, Some(previous));
                if c.phase.is_replaying() {
                    // Nothing of the old run is left to replay: it catches up at once.
                    c.phase.replay_from(last + 1);
                    if !replaying.contains(&id) {
                        replaying.push(id);
                    }
                }
            } else if c.phase.is_live() {
                append_gap(&mut c.out, "missed", epoch, before.1 + 1, last, None);
            } else {
                continue;
            }
            stats.gaps += 1;
            c.last_queued_seq = last;
            c.tail_thinking = None;
            list_urgent(urgent, c, id);
        }
    }

    /// Redis engine: Redis had `user`'s stream at `epoch`, `last` when the subscriber reached
    /// this point of the log. Events after it follow in the ring; connections waiting for the
    /// state start now.
    fn on_sync(&mut self, user: &[u8], epoch: u64, last: u64, now: Instant) {
        let u = self.stream(user.into());
        u.syncs_pending = u.syncs_pending.saturating_sub(1);
        if u.epoch != epoch || last > u.seq {
            self.jump(user, epoch, last);
        }
        let u = self.users.get_mut(user).expect("made above");
        u.synced = true;
        if u.syncs_pending > 0 {
            // Another answer is on its way (with events some waiting connection needs).
            return;
        }
        let waiting: Vec<(ConnId, Option<Cursor>)> = u
            .conns
            .iter()
            .filter_map(|&id| self.conns[id].phase.sync_cursor().map(|cur| (id, cur)))
            .collect();
        for (id, cursor) in waiting {
            self.conns[id].phase = Phase::Live;
            let backfill = self.backfills.remove(&id);
            if let Some(b) = &backfill {
                self.backfill_bytes -= b.frames.len();
            }
            if self.conns[id].state.is_open() {
                self.start_stream(id, cursor, backfill, now);
                list_urgent(&mut self.urgent, &mut self.conns[id], id);
            }
        }
    }

    /// Redis engine: an older event of `rec.user`'s stream from Redis, for the connections
    /// resuming before this node's history: each that waits for exactly this `seq` of this
    /// run keeps its frame, within the bounds (a connection's share is the per-user history
    /// bound, all of them together the shard's history budget; what does not fit is left to
    /// the `gap` the resume then sends).
    fn backfill(&mut self, rec: &Record<'_>, epoch: u64, seq: u64) {
        let u = &self.users[rec.user];
        if u.epoch != epoch {
            return;
        }
        let (prefix, n) = frame::event_prefix(seq, rec.body.len());
        let len = n + rec.body.len();
        for id in &u.conns {
            let Some(b) = self.backfills.get_mut(id) else {
                continue;
            };
            if b.through + 1 != seq
                || b.frames.len() + len > self.cfg.history.max_bytes
                || self.backfill_bytes + len
                    > self.cfg.history_budget.max(self.cfg.history.max_bytes)
            {
                continue;
            }
            b.frames.extend_from_slice(&prefix[..n]);
            b.frames.extend_from_slice(rec.body);
            b.through = seq;
            self.backfill_bytes += len;
            self.stats.events_from_redis_history += 1;
        }
    }

    /// Redis engine: the subscriber may have missed part of the log, so no stream's state can
    /// be vouched for: each is asked of Redis again, now for users with connections here and
    /// on their next connection for the others.
    fn on_continuity_lost(&mut self) {
        for (user, u) in self.users.iter_mut() {
            u.synced = false;
            if !u.conns.is_empty() && u.syncs_pending == 0 {
                u.syncs_pending = 1;
                self.stats.sync_requests += 1;
                self.sync_requests.push(SyncRequest::newest(user, 0));
            }
        }
    }

    /// Drops the streams (counters and history) of users without connections when there are
    /// too many. Such a user's next stream has a new epoch, so a resuming client is told.
    /// Their unacked events are dead-lettered (`stream_dropped`), never dropped silently.
    fn evict_offline_users(&mut self) {
        if self.users.len() - self.online_users < self.cfg.max_offline_users {
            return;
        }
        let Core {
            users,
            cfg,
            boards,
            dead_out,
            stats,
            tracked_count,
            spool_out,
            spool_pos,
            frame_pool,
            ..
        } = self;
        let mut x = Expiry {
            cfg,
            receipts: &boards.receipts,
            stats,
            dead_out,
            spool_out,
            spool_pos,
            frame_pool,
        };
        users.retain(|user, u| {
            if !u.conns.is_empty() {
                return true;
            }
            for e in u.unacked.drain(..) {
                expire_unacked(&mut x, user, u.epoch, &u.tracked, e, "stream_dropped");
            }
            *tracked_count -= u.tracked.len();
            false
        });
    }

    /// Evicts history that is past its age in every stream (run from `tick`).
    /// Also dead-letters unacked events past `ack_timeout` and stops tracking settled receipts.
    fn expire_history(&mut self, now: Instant) {
        let (limits, tail, ms) = (self.cfg.history, self.log.tail(), self.clock.ms(now));
        let mut x = Expiry {
            cfg: &self.cfg,
            receipts: &self.boards.receipts,
            stats: &mut self.stats,
            dead_out: &mut self.dead_out,
            spool_out: &mut self.spool_out,
            spool_pos: &mut self.spool_pos,
            frame_pool: &mut self.frame_pool,
        };
        for (user, u) in self.users.iter_mut() {
            u.history.evict(ms, &limits, tail);
            while u.unacked.front().is_some_and(|e| e.deadline <= now) {
                let e = u.unacked.pop_front().expect("checked");
                expire_unacked(&mut x, user, u.epoch, &u.tracked, e, "ack_timeout");
            }
            let before = u.tracked.len();
            let oldest_unacked = u.unacked.front().map_or(u64::MAX, |e| e.seq);
            // A receipt needs no more updates once its event is settled: acked or
            // dead-lettered if it needed an ack, else old enough that no write is pending.
            while u.tracked.front().is_some_and(|t| {
                if t.needs_ack {
                    t.seq < oldest_unacked
                } else {
                    now.saturating_duration_since(t.at) > TRACK_FOR
                }
            }) {
                u.tracked.pop_front();
            }
            self.tracked_count -= before - u.tracked.len();
        }
        self.stats.history_bytes = self.log.resident() as u64;
    }

    /// Feeds bytes read from the socket of `id` into its WebSocket state. Replies (pongs, close
    /// acknowledgements, echoes) are queued in its outbound buffer.
    pub(crate) fn on_input(&mut self, id: ConnId, input: &[u8], now: Instant) {
        let close_timeout = self.cfg.close_timeout;
        let max_out = self.cfg.max_outbound_bytes;
        let mut ack = None;
        let mut cursor_msg = None;
        let c = &mut self.conns[id];
        if c.input_done {
            // A protocol error ended what tungstenite can read; the close is under way.
            return;
        }
        let before = c.out.len();
        let mut io = Io {
            input,
            out: &mut c.out,
        };
        loop {
            // Replies to the client's own messages (pongs, echoes) count against
            // `max_outbound_bytes` like events: a client that sends and never reads is a slow
            // consumer, closed with 4008; past the close frame, the connection is dropped.
            let unsent = io.out.len() - c.written;
            if unsent > max_out {
                if c.state.is_open() {
                    self.stats.closed_slow_consumer += 1;
                    send_close(
                        &mut c.ws,
                        &mut io,
                        &mut c.state,
                        CLOSE_SLOW_CONSUMER,
                        "slow consumer: replies to its own messages went unread",
                        now + close_timeout,
                    );
                    break;
                }
                if unsent > max_out + CLOSING_SLACK {
                    c.state.finish();
                    break;
                }
            }
            match c.ws.read(&mut io) {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    self.stats.client_messages += 1;
                    if c.phase.is_awaiting_cursor() && cursor_msg.is_none() {
                        // The first message of a `resume=message` connection: its cursor.
                        let parsed = match &msg {
                            Message::Text(t) => handshake::parse_cursor_message(t.as_bytes()),
                            _ => Err("the first message must be a text message"),
                        };
                        match parsed {
                            Ok(cur) => cursor_msg = Some(cur),
                            Err(why) => {
                                // Policy violation: this connection promised a cursor.
                                self.stats.rejected_bad_request += 1;
                                c.phase.go_live();
                                send_close(
                                    &mut c.ws,
                                    &mut io,
                                    &mut c.state,
                                    1008,
                                    why,
                                    now + close_timeout,
                                );
                                break;
                            }
                        }
                        continue;
                    }
                    if let (ConnKind::User(_), Message::Text(text)) = (&c.kind, &msg) {
                        if let Some(n) = parse_ack(text.as_bytes()) {
                            ack = Some(ack.map_or(n, |a: u64| a.max(n)));
                        } else if let Some(token) = parse_auth(text.as_bytes()) {
                            self.auth_requests.retain(|(other, _)| *other != id);
                            self.auth_requests.push((id, token));
                        } else {
                            self.stats.client_messages_ignored += 1;
                        }
                    }
                    if c.kind == ConnKind::Echo && c.state.is_open() {
                        // Echo replies go through tungstenite so fragmentation rules hold.
                        if c.ws.write(&mut io, msg).is_err() {
                            c.state.finish();
                            break;
                        }
                    }
                }
                Ok(Message::Pong(_)) => c.keepalive.on_pong(now),
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    // tungstenite queued the reply (or this completes our own close).
                    c.state
                        .note_close(frame.map_or(1005, |f| u16::from(f.code)), true);
                    c.state.begin_closing(now + close_timeout);
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    c.state.finish();
                    break;
                }
                Err(e) => {
                    let (code, why) = match &e {
                        WsError::Capacity(_) => (1009, "message too big"),
                        WsError::Utf8(_) => (1007, "invalid UTF-8"),
                        _ => (1002, "protocol error"),
                    };
                    // tungstenite's reader is not in a state to go on (it may hold the header
                    // of the frame it refused): nothing more is read from this connection.
                    c.input_done = true;
                    // RFC 6455 7.1.7, failing the connection: the close frame (if the protocol
                    // state can still send one), then the socket goes once it is flushed, without
                    // waiting for the client's close (or at the deadline if it does not read).
                    if c.ws.can_write() {
                        c.state.note_close(code, false);
                        let _ = c.ws.close(
                            &mut io,
                            Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: why.into(),
                            }),
                        );
                        c.state.fail(now + close_timeout);
                    } else {
                        c.state.finish();
                    }
                    break;
                }
            }
        }
        // Pongs and close replies may still sit in tungstenite's own buffer.
        let _ = c.ws.flush(&mut io);
        // Something to write, or a finished close handshake: the reactor must look at it now.
        if c.out.len() != before || c.state.ends_when_flushed() {
            list_urgent(&mut self.urgent, c, id);
        }
        if let Some(cur) = cursor_msg {
            self.register(id, Some(cur), now);
        }
        if let Some(n) = ack {
            self.on_ack(id, n);
        }
    }

    /// Dead-letters every unacked event of every stream with `reason` (at shutdown without a
    /// spool); returns how many.
    pub(crate) fn dead_letter_unacked(&mut self, reason: &str) -> u64 {
        let before = self.stats.events_dead_lettered;
        let mut x = Expiry {
            cfg: &self.cfg,
            receipts: &self.boards.receipts,
            stats: &mut self.stats,
            dead_out: &mut self.dead_out,
            spool_out: &mut self.spool_out,
            spool_pos: &mut self.spool_pos,
            frame_pool: &mut self.frame_pool,
        };
        for (user, u) in self.users.iter_mut() {
            for e in u.unacked.drain(..) {
                expire_unacked(&mut x, user, u.epoch, &u.tracked, e, reason);
            }
        }
        self.stats.events_dead_lettered - before
    }

    /// A client of connection `id` acked every event up to `n` (cumulative, for the user: any
    /// of its connections may ack).
    fn on_ack(&mut self, id: ConnId, n: u64) {
        let ConnKind::User(user) = &self.conns[id].kind else {
            return;
        };
        let user = user.clone();
        self.stats.acks_received += 1;
        if let Some(acked) = self.settle_acked(&user, n) {
            if self.cfg.redis {
                self.acks_out.push((user, acked.0, acked.1));
            }
        }
    }

    /// Settles `user`'s events through `n` as acked (bounded by the stream's last `seq`):
    /// unacked ones are let go, receipts updated, the spool told. Returns the stream's epoch
    /// and the new acked `seq`, or `None` when that moves nothing.
    fn settle_acked(&mut self, user: &[u8], n: u64) -> Option<(u64, u64)> {
        let u = self.users.get_mut(user)?;
        let n = n.min(u.seq);
        if n <= u.acked {
            return None;
        }
        u.acked = n;
        while u.unacked.front().is_some_and(|e| e.seq <= n) {
            let e = u.unacked.pop_front().expect("checked");
            self.frame_pool.give(e.frame);
            self.stats.events_acked += 1;
        }
        for t in u.tracked.iter().filter(|t| t.needs_ack && t.seq <= n) {
            self.boards.receipts.update(t.ticket, Progress::Acked);
        }
        if self.cfg.spool {
            self.spool_pos += spool_settle(&mut self.spool_out, user, u.epoch, n, false);
        }
        Some((u.epoch, n))
    }

    /// Collects the connections to write now into `out`: urgent ones always, batched ones by
    /// the batch policy (`pass_end`: the rings are drained for this pass).
    pub(crate) fn take_writable(&mut self, now: Instant, pass_end: bool, out: &mut Vec<ConnId>) {
        for id in self.urgent.drain(..) {
            if let Some(c) = self.conns.get_mut(id) {
                c.urgent = false;
                // A blocked socket is written when it reports writable; trying now would only
                // cost a syscall that returns EAGAIN. A connection waiting for its stream's
                // state (Redis engine) keeps even its 101 until it has it: a client that saw
                // its 101 then receives every event emitted after that, as on the local
                // engine (the state is Redis's as of a point of the log before such events).
                if !c.blocked && c.phase.sync_cursor().is_none() {
                    out.push(id);
                }
            }
        }
        if pass_end {
            let policy = self.cfg.batch;
            let conns = &mut self.conns;
            self.dirty.retain(|&id| match conns.get_mut(id) {
                Some(c) if c.blocked => true,
                Some(c) if policy.due(c.pending, c.pending_since, now, true) => {
                    // Leaves the list here, so `on_written` has nothing to search for.
                    c.dirty = false;
                    out.push(id);
                    false
                }
                Some(_) => true,
                None => false,
            });
        }
        // A connection may have been listed twice (urgent and due); write it once.
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Records that `n` bytes of `id`'s buffer reached the socket in one write call.
    pub(crate) fn on_written(&mut self, id: ConnId, n: usize) {
        let c = &mut self.conns[id];
        debug_assert!(c.written + n <= c.out.len());
        self.stats.write_syscalls += 1;
        self.stats.bytes_written += n as u64;
        if c.pending > 0 {
            self.stats.frames_written += c.pending as u64;
            self.stats.record_batch(c.pending as u64);
            c.pending = 0;
            if c.dirty {
                // Written ahead of its batch deadline (a full batch, a control frame, or a
                // writable socket): take it off the batch list. Rare, so a linear search is fine.
                c.dirty = false;
                self.dirty.retain(|&d| d != id);
            }
        }
        c.written += n;
        // Offsets into `out` move from here on.
        c.tail_thinking = None;
        if c.written == c.out.len() {
            self.stats.events_delivered += c.unwritten_frames;
            if c.unwritten_frames > 0 && self.tracked_count > 0 {
                let through = c.last_queued_seq;
                self.note_written(id, through);
            }
            let c = &mut self.conns[id];
            c.unwritten_frames = 0;
            let closed = c.breaker.on_drained() == Transition::Closed;
            c.written = 0;
            c.raw_head = 0;
            if c.out.capacity() > SHRINK_ABOVE {
                c.out = BytesMut::new();
            } else {
                c.out.clear();
            }
            if closed {
                self.stats.breaker_closed += 1;
                if let ConnKind::User(user) = &self.conns[id].kind {
                    self.publish_delivery(user);
                }
            }
            return;
        }
        // Partial write: drop the whole frames that went out, keep the rest frame-aligned.
        self.stats.write_partial += 1;
        let mut done = 0;
        if c.raw_head > 0 {
            if c.written < c.raw_head {
                return;
            }
            done = c.raw_head;
            c.raw_head = 0;
        }
        let (events, bytes) = frame::complete_prefix(&c.out[done..], c.written - done);
        let through = (events > 0 && self.tracked_count > 0)
            .then(|| frame::last_event_seq(&c.out[done..done + bytes]))
            .flatten();
        done += bytes;
        self.stats.events_delivered += events;
        c.unwritten_frames -= events;
        c.out.advance(done);
        c.written -= done;
        if let Some(through) = through {
            self.note_written(id, through);
        }
    }

    /// Connection `id` has now written every event up to `through`: count it in the receipts
    /// of the tracked events it had not written yet.
    fn note_written(&mut self, id: ConnId, through: u64) {
        let c = &mut self.conns[id];
        let (ConnKind::User(user), from) = (&c.kind, c.delivered_through) else {
            return;
        };
        if through <= from {
            return;
        }
        c.delivered_through = through;
        if let Some(u) = self.users.get(user) {
            for t in u
                .tracked
                .iter()
                .filter(|t| t.seq > from && t.seq <= through)
            {
                self.boards.receipts.update(t.ticket, Progress::Written);
            }
        }
    }

    /// Records a write attempt on `id` that the socket refused (EAGAIN): hold its bytes until
    /// [`on_writable`](Self::on_writable).
    pub(crate) fn on_write_blocked(&mut self, id: ConnId) {
        self.stats.write_syscalls += 1;
        self.stats.write_blocked += 1;
        self.conns[id].blocked = true;
    }

    /// The socket of `id` reported writable again: it is listed for writing whatever it holds.
    pub(crate) fn on_writable(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.blocked = false;
            list_urgent(&mut self.urgent, c, id);
        }
    }

    /// Advances timers: sends pings, closes connections whose pong or close handshake timed out.
    /// Connections that became writable are listed in the urgent set.
    pub(crate) fn tick(&mut self, now: Instant) {
        if now >= self.next_history_sweep {
            self.next_history_sweep = now + HISTORY_SWEEP;
            self.expire_history(now);
        }
        if self.cfg.breaker.enabled() {
            self.tick_breakers(now);
        }
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase.cursor_overdue(now) && c.state.is_open())
            .map(|(id, _)| id)
            .collect();
        for id in late {
            // No cursor came: start live, as if none had been asked for.
            self.register(id, None, now);
        }
        if self.cfg.redis {
            for (id, c) in self.conns.iter_mut() {
                if c.phase.sync_overdue(now) && c.state.is_open() {
                    self.stats.closed_sync_timeout += 1;
                    // Its 101, then the close: it may try again.
                    c.phase = Phase::Live;
                    c.close(
                        CLOSE_TRY_AGAIN,
                        "stream state unavailable (Redis): try again later",
                        now,
                        self.cfg.close_timeout,
                    );
                    list_urgent(&mut self.urgent, c, id);
                }
            }
        }
        for (id, c) in self.conns.iter_mut() {
            if c.state.is_open() && c.expires.is_some_and(|at| now >= at) {
                self.stats.closed_token_expired += 1;
                c.close(
                    CLOSE_TOKEN_EXPIRED,
                    "token expired: reconnect, or send {\"type\":\"auth\",\"token\":..} before exp",
                    now,
                    self.cfg.close_timeout,
                );
                list_urgent(&mut self.urgent, c, id);
            }
        }
        let mut tripped = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.state.is_open() {
                match c.keepalive.poll(now) {
                    Liveness::Idle => continue,
                    Liveness::SendPing => {
                        let mut io = Io {
                            input: &[],
                            out: &mut c.out,
                        };
                        let _ = c.ws.write(&mut io, Message::Ping(Default::default()));
                        let _ = c.ws.flush(&mut io);
                    }
                    Liveness::TimedOut if c.breaker.is_open() => continue,
                    Liveness::TimedOut
                        if self.cfg.breaker.enabled() && matches!(c.kind, ConnKind::User(_)) =>
                    {
                        // Maybe gone, maybe only slow: stop queueing for it (history keeps
                        // its events) and give it the cool-down to answer; a connection
                        // that still has not answered then is closed (`tick_breakers`).
                        c.breaker.fail(Cause::MissedPong, now, &self.cfg.breaker);
                        divert(c, id, None, &mut self.stats, &mut self.replaying);
                        tripped.push(id);
                        continue;
                    }
                    Liveness::TimedOut => {
                        close_silent(c, &mut self.stats, now, self.cfg.close_timeout);
                    }
                }
            } else if c.state.closing_expired(now) {
                c.state.finish();
                // Whatever is unsent will never be: drop it so the reactor can close now.
                self.stats.events_dropped += c.discard_unsent();
            } else {
                continue;
            }
            list_urgent(&mut self.urgent, c, id);
        }
        for id in tripped {
            if let ConnKind::User(user) = &self.conns[id].kind {
                self.publish_delivery(user);
            }
        }
    }

    /// A write to `id`'s socket failed with a transient error (the kernel is short of memory
    /// for socket buffers). With breakers on, the connection's breaker opens (its events wait
    /// in history) and it is kept; returns false when it must be dropped instead.
    pub(crate) fn on_write_error(&mut self, id: ConnId, now: Instant) -> bool {
        let c = &mut self.conns[id];
        if !self.cfg.breaker.enabled() || !matches!(c.kind, ConnKind::User(_)) {
            return false;
        }
        if c.breaker.fail(Cause::WriteError, now, &self.cfg.breaker) == Transition::Opened {
            divert(c, id, None, &mut self.stats, &mut self.replaying);
            if let ConnKind::User(user) = &self.conns[id].kind {
                self.publish_delivery(user);
            }
        }
        true
    }

    /// Breakers: open ones half-open after their cool-down (and start replaying); connections
    /// that stayed behind for `trip_after` without a new event arriving trip here.
    fn tick_breakers(&mut self, now: Instant) {
        let policy = self.cfg.breaker;
        let mut changed = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if !c.state.is_open() || !matches!(c.kind, ConnKind::User(_)) {
                continue;
            }
            match c.breaker.poll(now) {
                Transition::HalfOpened
                    if c.breaker.cause() == Cause::MissedPong && c.keepalive.awaiting_pong() =>
                {
                    // Still no pong after the whole cool-down: the peer is gone.
                    self.stats.breakers_open -= 1;
                    close_silent(c, &mut self.stats, now, self.cfg.close_timeout);
                    list_urgent(&mut self.urgent, c, id);
                    changed.push(id);
                    continue;
                }
                Transition::HalfOpened => {
                    self.stats.breaker_half_opened += 1;
                    self.stats.breakers_open -= 1;
                    changed.push(id);
                    continue;
                }
                _ if c.phase.is_replaying() => continue,
                _ => {}
            }
            let unsent = c.out.len() - c.written;
            if c.breaker.on_backlog(unsent, false, now, &policy) == Transition::Opened {
                divert(c, id, None, &mut self.stats, &mut self.replaying);
                changed.push(id);
            }
        }
        for id in changed {
            if let ConnKind::User(user) = &self.conns[id].kind {
                self.publish_delivery(user);
            }
        }
    }

    /// When the oldest pending batch becomes due by age (None when `max_batch_delay` is 0 or
    /// nothing is pending). Timers (`tick`) run on the reactor's fixed tick instead.
    pub(crate) fn next_batch_deadline(&self) -> Option<Instant> {
        if self.cfg.batch.max_delay.is_zero() {
            return None;
        }
        self.dirty
            .first()
            .map(|&id| self.cfg.batch.deadline(self.conns[id].pending_since))
    }

    /// Starts closing every connection with `code` (for example 1001 on shutdown).
    pub(crate) fn close_all(&mut self, code: u16, reason: &str, now: Instant) {
        let timeout = self.cfg.close_timeout;
        for (id, c) in self.conns.iter_mut() {
            if c.state.is_open() {
                c.close(code, reason, now, timeout);
            }
            list_urgent(&mut self.urgent, c, id);
        }
    }

    /// Removes `id` (its socket is gone or done). Returns the event frames that were still
    /// unsent, which are counted as dropped.
    pub(crate) fn remove(&mut self, id: ConnId) -> u64 {
        let c = self.conns.remove(id);
        if c.breaker.is_open() {
            self.stats.breakers_open -= 1;
        }
        let unsent = c.unsent_events();
        self.stats.events_dropped += unsent;
        if c.phase.is_replaying() {
            self.replaying.retain(|&r| r != id);
        }
        if let Some(b) = self.backfills.remove(&id) {
            self.backfill_bytes -= b.frames.len();
        }
        if let ConnKind::User(user) = &c.kind {
            if let Some(u) = self.users.get_mut(user) {
                // A connection still waiting for its cursor message was never listed.
                let before = u.conns.len();
                u.conns.retain(|&x| x != id);
                if before > 0 && u.conns.is_empty() {
                    self.online_users -= 1;
                }
            }
            self.publish_delivery(user);
        }
        self.stats.connections_open = self.conns.len() as u64;
        unsent
    }
}

/// Lists `c` (whose id is `id`) in `urgent` unless it already is.
fn list_urgent(urgent: &mut Vec<ConnId>, c: &mut Conn, id: ConnId) {
    if !c.urgent {
        c.urgent = true;
        urgent.push(id);
    }
}

/// Closes `c` with 4010: a ping went unanswered.
fn close_silent(c: &mut Conn, stats: &mut Stats, now: Instant, timeout: Duration) {
    stats.closed_pong_timeout += 1;
    c.close(CLOSE_PONG_TIMEOUT, "pong timeout", now, timeout);
}

#[cfg(test)]
mod ack_tests;
#[cfg(test)]
mod alloc_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
