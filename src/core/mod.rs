//! The sans-IO core of a reactor shard: routing, sequencing, batching, keepalive and the
//! WebSocket protocol state of every connection. It never touches a socket or a clock: bytes and
//! `now` come in as arguments, bytes to write and decisions go out. The reactor
//! ([`crate::reactor`]) drives it with real sockets; the tests drive it with a virtual clock.

pub(crate) mod batch;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod keepalive;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::metrics::Stats;
use batch::BatchPolicy;
use keepalive::{Keepalive, Liveness};

/// Close code for a slow consumer: its outbound buffer went over `max_outbound_bytes`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code for a connection that did not answer a ping within `pong_timeout`.
pub const CLOSE_PONG_TIMEOUT: u16 = 4010;
/// Close code sent to every connection on shutdown.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Buffers bigger than this are released when they drain, so a burst does not pin memory.
const SHRINK_ABOVE: usize = 256 * 1024;

/// Index of a connection in its shard.
pub(crate) type ConnId = usize;

/// The parts of the configuration the core needs.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub batch: BatchPolicy,
    pub max_outbound_bytes: usize,
    pub max_connections_per_user: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    pub max_offline_users: usize,
    pub ws: WebSocketConfig,
}

impl CoreConfig {
    pub(crate) fn from_config(c: &crate::config::Config) -> Self {
        let mut ws = WebSocketConfig::default();
        ws.read_buffer_size = c.read_buffer_size;
        ws.write_buffer_size = 0;
        ws.max_frame_size = Some(c.max_frame_size);
        ws.max_message_size = Some(c.max_message_size);
        CoreConfig {
            batch: BatchPolicy {
                max_events: c.max_batch_events,
                max_delay: c.max_batch_delay,
            },
            max_outbound_bytes: c.max_outbound_bytes,
            max_connections_per_user: c.max_connections_per_user,
            ping_interval: c.ping_interval,
            pong_timeout: c.pong_timeout,
            close_timeout: c.close_timeout,
            max_offline_users: c.max_offline_users,
            ws,
        }
    }
}

/// What a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// An authenticated event stream for this user id.
    User(Box<[u8]>),
    /// The conformance echo endpoint.
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame (or answered one); the socket is dropped when the client's close
    /// arrives and our buffer is flushed, or at the deadline.
    Closing {
        deadline: Instant,
    },
    /// Nothing more to do once the buffer is flushed.
    Finished,
}

/// One connection's protocol state and outbound buffer.
pub(crate) struct Conn {
    kind: ConnKind,
    ws: WebSocketContext,
    /// Bytes queued for the socket, starting at a frame boundary of what is still unsent.
    out: BytesMut,
    /// Event frames in `out` that have not been completely written.
    unwritten_frames: u64,
    /// Event frames queued since the last write decision (for batching).
    pending: usize,
    /// When the oldest of `pending` was queued.
    pending_since: Instant,
    /// Listed in `Core::dirty`.
    dirty: bool,
    /// Listed in `Core::urgent`.
    urgent: bool,
    /// The socket refused bytes (would block); nothing is written until it reports writable.
    blocked: bool,
    state: State,
    keepalive: Keepalive,
}

impl Conn {
    /// Bytes waiting for the socket.
    pub(crate) fn out(&self) -> &[u8] {
        &self.out
    }

    /// True when the socket can be dropped: closed and nothing left to write.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Finished && self.out.is_empty()
    }
}

/// A user's stream on this shard.
#[derive(Debug, Default)]
struct UserState {
    /// The last sequence number assigned (0 = none yet).
    seq: u64,
    conns: Vec<ConnId>,
}

/// Why an upgrade was refused by the user's home shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdoptError {
    /// The user already has `max_connections_per_user` open connections.
    UserLimit,
}

/// Adapter that lets tungstenite read from bytes we already took off the socket and write into
/// the connection's outbound buffer. It never touches the socket.
struct Io<'a> {
    input: &'a [u8],
    out: &'a mut BytesMut,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A parsed ring record (see [`crate::emitter`] for the layout).
pub(crate) struct Record<'a> {
    pub ts_unix_ns: u64,
    pub user: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Splits a ring record. The emitter is the only writer, so a malformed record is a bug.
    pub(crate) fn parse(rec: &'a [u8]) -> Record<'a> {
        let ts_unix_ns = u64::from_le_bytes(rec[..8].try_into().expect("record header"));
        let ulen = rec[8] as usize;
        Record {
            ts_unix_ns,
            user: &rec[9..9 + ulen],
            body: &rec[9 + ulen..],
        }
    }
}

/// The state machine of one reactor shard.
pub(crate) struct Core {
    cfg: CoreConfig,
    users: HashMap<Box<[u8]>, UserState, foldhash::fast::RandomState>,
    /// Users with at least one connection.
    online_users: usize,
    conns: Slab<Conn>,
    /// Connections with pending event frames, in the order their oldest frame was queued.
    dirty: Vec<ConnId>,
    /// Connections with something to write that must not wait for batching (handshake
    /// response, control frames, echo replies, or a full batch).
    urgent: Vec<ConnId>,
    /// Counters, published by the reactor once per pass.
    pub stats: Stats,
}

impl Core {
    pub(crate) fn new(cfg: CoreConfig) -> Self {
        Core {
            cfg,
            users: HashMap::default(),
            online_users: 0,
            conns: Slab::new(),
            dirty: Vec::new(),
            urgent: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Number of open connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The connection `id`. Panics if it does not exist (a reactor bug).
    pub(crate) fn conn(&self, id: ConnId) -> &Conn {
        &self.conns[id]
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
    /// any event; `early` holds WebSocket bytes the client sent right after its request head.
    /// Once this returns, every event routed to the user is queued on the connection.
    pub(crate) fn adopt(
        &mut self,
        kind: ConnKind,
        response: &[u8],
        early: &[u8],
        now: Instant,
    ) -> Result<ConnId, AdoptError> {
        if let ConnKind::User(user) = &kind {
            let count = self.users.get(user).map_or(0, |u| u.conns.len());
            if count >= self.cfg.max_connections_per_user {
                self.stats.rejected_limit += 1;
                return Err(AdoptError::UserLimit);
            }
        }
        let mut out = BytesMut::with_capacity(response.len().max(4096));
        out.extend_from_slice(response);
        let id = self.conns.insert(Conn {
            kind: kind.clone(),
            ws: WebSocketContext::new(Role::Server, Some(self.cfg.ws)),
            out,
            unwritten_frames: 0,
            pending: 0,
            pending_since: now,
            dirty: false,
            urgent: false,
            blocked: false,
            state: State::Open,
            keepalive: Keepalive::new(self.cfg.ping_interval, self.cfg.pong_timeout, now),
        });
        if let ConnKind::User(user) = kind {
            let u = self.users.entry(user).or_default();
            if u.conns.is_empty() {
                self.online_users += 1;
            }
            u.conns.push(id);
        }
        self.stats.connections_accepted += 1;
        self.stats.connections_open = self.conns.len() as u64;
        list_urgent(&mut self.urgent, &mut self.conns[id], id);
        if !early.is_empty() {
            self.on_input(id, early, now);
        }
        Ok(id)
    }

    /// Routes one ring record: assigns the user's next `seq` and queues the frame on each of the
    /// user's open connections. `now_unix_ns` is the pass's wall-clock time, for latency.
    #[inline]
    pub(crate) fn route(&mut self, record: &[u8], now: Instant, now_unix_ns: u64) {
        let rec = Record::parse(record);
        self.stats.events_received += 1;
        self.stats
            .record_latency_ns(now_unix_ns.saturating_sub(rec.ts_unix_ns));
        let user = match self.users.get_mut(rec.user) {
            Some(u) => u,
            None => {
                self.evict_offline_users();
                self.users.entry(rec.user.into()).or_default()
            }
        };
        user.seq += 1;
        if user.conns.is_empty() {
            self.stats.events_no_listener += 1;
            return;
        }
        let (prefix, n) = frame::event_prefix(user.seq, rec.body.len());
        let frame_len = n + rec.body.len();
        for &id in &user.conns {
            let c = &mut self.conns[id];
            if c.state != State::Open {
                self.stats.events_dropped += 1;
                continue;
            }
            if c.out.len() + frame_len > self.cfg.max_outbound_bytes {
                // Slow consumer: stop queueing, tell it why, and let it go.
                self.stats.events_dropped += 1;
                self.stats.closed_slow_consumer += 1;
                close_conn(
                    c,
                    CLOSE_SLOW_CONSUMER,
                    "slow consumer",
                    now,
                    self.cfg.close_timeout,
                );
                list_urgent(&mut self.urgent, c, id);
                continue;
            }
            frame::append_event(&mut c.out, &prefix[..n], rec.body);
            c.unwritten_frames += 1;
            c.pending += 1;
            if !c.dirty {
                c.dirty = true;
                c.pending_since = now;
                self.dirty.push(id);
            }
            if c.pending == self.cfg.batch.max_events {
                list_urgent(&mut self.urgent, c, id);
            }
        }
    }

    /// Drops the sequence counters of users without connections when there are too many.
    fn evict_offline_users(&mut self) {
        if self.users.len() - self.online_users >= self.cfg.max_offline_users {
            self.users.retain(|_, u| !u.conns.is_empty());
        }
    }

    /// Feeds bytes read from the socket of `id` into its WebSocket state. Replies (pongs, close
    /// acknowledgements, echoes) are queued in its outbound buffer.
    pub(crate) fn on_input(&mut self, id: ConnId, input: &[u8], now: Instant) {
        let close_timeout = self.cfg.close_timeout;
        let c = &mut self.conns[id];
        let before = c.out.len();
        let mut io = Io {
            input,
            out: &mut c.out,
        };
        loop {
            match c.ws.read(&mut io) {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    self.stats.client_messages += 1;
                    if c.kind == ConnKind::Echo && c.state == State::Open {
                        // Echo replies go through tungstenite so fragmentation rules hold.
                        if c.ws.write(&mut io, msg).is_err() {
                            c.state = State::Finished;
                            break;
                        }
                    }
                }
                Ok(Message::Pong(_)) => c.keepalive.on_pong(now),
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply (or this completes our own close).
                    if c.state == State::Open {
                        c.state = State::Closing {
                            deadline: now + close_timeout,
                        };
                    }
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    c.state = State::Finished;
                    break;
                }
                Err(e) => {
                    let (code, why) = match &e {
                        WsError::Capacity(_) => (1009, "message too big"),
                        WsError::Utf8(_) => (1007, "invalid UTF-8"),
                        _ => (1002, "protocol error"),
                    };
                    let ctx_ok = c.ws.can_write();
                    if ctx_ok {
                        let _ = c.ws.close(
                            &mut io,
                            Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: why.into(),
                            }),
                        );
                        c.state = State::Closing {
                            deadline: now + close_timeout,
                        };
                    } else {
                        c.state = State::Finished;
                    }
                    break;
                }
            }
        }
        // Pongs and close replies may still sit in tungstenite's own buffer.
        let _ = c.ws.flush(&mut io);
        // Something to write, or a finished close handshake: the reactor must look at it now.
        if c.out.len() != before || c.state == State::Finished {
            list_urgent(&mut self.urgent, c, id);
        }
    }

    /// Collects the connections to write now into `out`: urgent ones always, batched ones by
    /// the batch policy (`pass_end`: the rings are drained for this pass).
    pub(crate) fn take_writable(&mut self, now: Instant, pass_end: bool, out: &mut Vec<ConnId>) {
        for id in self.urgent.drain(..) {
            if let Some(c) = self.conns.get_mut(id) {
                c.urgent = false;
                // A blocked socket is written when it reports writable; trying now would only
                // cost a syscall that returns EAGAIN.
                if !c.blocked {
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
        debug_assert!(n <= c.out.len());
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
        if n < c.out.len() {
            self.stats.write_partial += 1;
        }
        c.out.advance(n);
        if c.out.is_empty() {
            self.stats.events_delivered += c.unwritten_frames;
            c.unwritten_frames = 0;
            if c.out.capacity() > SHRINK_ABOVE {
                c.out = BytesMut::new();
            }
        } else {
            // Recount exactly what is left; only on partial writes.
            let left = frame::count_text_frames(&c.out);
            self.stats.events_delivered += c.unwritten_frames - left;
            c.unwritten_frames = left;
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
        for (id, c) in self.conns.iter_mut() {
            match c.state {
                State::Open => match c.keepalive.poll(now) {
                    Liveness::Idle => continue,
                    Liveness::SendPing => {
                        let mut io = Io {
                            input: &[],
                            out: &mut c.out,
                        };
                        let _ = c.ws.write(&mut io, Message::Ping(Default::default()));
                        let _ = c.ws.flush(&mut io);
                    }
                    Liveness::TimedOut => {
                        self.stats.closed_pong_timeout += 1;
                        close_conn(
                            c,
                            CLOSE_PONG_TIMEOUT,
                            "pong timeout",
                            now,
                            self.cfg.close_timeout,
                        );
                    }
                },
                State::Closing { deadline } if now >= deadline => {
                    c.state = State::Finished;
                    // Whatever is unsent will never be: drop it so the reactor can close now.
                    self.stats.events_dropped += frame::count_text_frames(&c.out);
                    c.out.clear();
                    c.unwritten_frames = 0;
                }
                _ => continue,
            }
            list_urgent(&mut self.urgent, c, id);
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
            if c.state == State::Open {
                close_conn(c, code, reason, now, timeout);
            }
            list_urgent(&mut self.urgent, c, id);
        }
    }

    /// Removes `id` (its socket is gone or done). Returns the event frames that were still
    /// unsent, which are counted as dropped.
    pub(crate) fn remove(&mut self, id: ConnId) -> u64 {
        let c = self.conns.remove(id);
        let unsent = frame::count_text_frames(&c.out);
        self.stats.events_dropped += unsent;
        if let ConnKind::User(user) = &c.kind {
            if let Some(u) = self.users.get_mut(user) {
                u.conns.retain(|&x| x != id);
                if u.conns.is_empty() {
                    self.online_users -= 1;
                }
            }
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

/// Queues a close frame with `code` and moves the connection to `Closing`.
fn close_conn(c: &mut Conn, code: u16, reason: &str, now: Instant, timeout: Duration) {
    let mut io = Io {
        input: &[],
        out: &mut c.out,
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    if c.ws.close(&mut io, Some(frame)).is_ok() {
        c.state = State::Closing {
            deadline: now + timeout,
        };
    } else {
        c.state = State::Finished;
    }
}

#[cfg(test)]
mod tests;
