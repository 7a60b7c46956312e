//! One connection: what it is for, its WebSocket protocol state (tungstenite's
//! `WebSocketContext` over in-memory buffers, never a stream), its outbound buffer, and two
//! small state machines with their transitions:
//!
//! - [`Lifecycle`]: open, closing (a close frame is out, waiting for the client's), finished.
//! - [`Phase`]: what a user connection's stream is doing: waiting for a cursor message,
//!   replaying (from history or the spool), or live.
//!
//! The core (`mod.rs`) decides when to move them; only the methods here change them.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};

use super::breaker::Breaker;
use super::coalesce;
use super::frame;
use super::keepalive::Keepalive;

/// Index of a connection in its shard.
pub(crate) type ConnId = usize;

/// Bytes a new connection's buffer has beyond its HTTP response: the `hello` frame (about 80
/// bytes) and a little more.
const OPENING_ROOM: usize = 128;

/// How long a `resume=message` connection may take to send its cursor.
pub(super) const CURSOR_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// An authenticated event stream for this user id.
    User(Box<[u8]>),
    /// The conformance echo endpoint.
    Echo,
}

/// Where a reconnecting client says it stopped: the last `seq` it has of stream `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Last `seq` received; 0 = none (replay everything retained).
    pub since: u64,
    /// The stream epoch that `since` belongs to (required when `since` > 0).
    pub epoch: Option<u64>,
}

/// How a new connection's stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// `hello`, then live events.
    Live,
    /// `hello`, then a replay from the cursor (and any `gap`), then live events.
    Resume(Cursor),
    /// Nothing until the client's first message gives the cursor (`resume=message`); it then
    /// starts as [`Start::Resume`], or as [`Start::Live`] if no message comes in time.
    AwaitCursor,
}

/// Where a connection is in its close handshake. It only moves forward: open -> closing ->
/// finished; open -> failing -> finished (a protocol error); or open -> finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lifecycle(State, Closer);

/// Who closed a connection and with which code, for the logs: the first close frame either
/// side sent (code 0: none, the socket just ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Closer {
    pub code: u16,
    pub by_client: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame (or answered one); the socket is dropped when the client's close
    /// arrives and our buffer is flushed, or at the deadline.
    Closing {
        deadline: Instant,
    },
    /// We failed the connection (RFC 6455 7.1.7, a protocol error): a close frame is queued and
    /// the socket goes as soon as the buffer is flushed, without waiting for the client's
    /// close; or at the deadline, if the client does not read.
    Failing {
        deadline: Instant,
    },
    /// Nothing more to do once the buffer is flushed.
    Finished,
}

impl Lifecycle {
    /// A new connection's.
    pub(super) fn open() -> Lifecycle {
        Lifecycle(State::Open, Closer::default())
    }

    /// Neither closing nor finished: it gets events and control frames.
    pub(super) fn is_open(self) -> bool {
        self.0 == State::Open
    }

    /// The socket may go as soon as the buffer is flushed (finished, or failing).
    pub(super) fn ends_when_flushed(self) -> bool {
        matches!(self.0, State::Finished | State::Failing { .. })
    }

    /// Open -> closing until `deadline` (a close frame went out, or the client's was answered).
    /// A connection already closing or finished stays as it is.
    pub(super) fn begin_closing(&mut self, deadline: Instant) {
        if self.is_open() {
            self.0 = State::Closing { deadline };
        }
    }

    /// -> finished, from any state.
    pub(super) fn finish(&mut self) {
        self.0 = State::Finished;
    }

    /// -> failing until `deadline` (a protocol error was answered with a close frame), from
    /// any state but finished.
    pub(super) fn fail(&mut self, deadline: Instant) {
        if self.0 != State::Finished {
            self.0 = State::Failing { deadline };
        }
    }

    /// Notes a close frame (`by_client`: the client's); only the first one counts.
    pub(super) fn note_close(&mut self, code: u16, by_client: bool) {
        if self.1.code == 0 {
            self.1 = Closer { code, by_client };
        }
    }

    /// The first close frame, if any.
    pub(super) fn closer(self) -> Closer {
        self.1
    }

    /// Closing or failing, and its deadline has passed at `now`.
    pub(super) fn closing_expired(self, now: Instant) -> bool {
        matches!(self.0, State::Closing { deadline } | State::Failing { deadline } if now >= deadline)
    }
}

/// What a user connection's stream is doing. (An echo connection is always `Live`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `resume=message`: not yet among its user's connections (it gets nothing) until its
    /// first message gives the cursor, or `until` passes.
    AwaitingCursor { until: Instant },
    /// Redis engine: among its user's connections but given nothing (not even `hello`) until
    /// Redis gives the stream's state, or `until` passes; then started from `cursor`.
    AwaitingSync {
        cursor: Option<Cursor>,
        until: Instant,
    },
    /// Catching up: `next` is the next `seq` to copy (live events are not queued directly:
    /// history already holds them); `cold` is where a spool scan goes on, if one is under way.
    /// An open breaker puts a connection here too.
    Replaying { next: u64, cold: Option<u64> },
    /// Events are queued as they are routed.
    Live,
}

impl Phase {
    /// The next `seq` to replay, while replaying.
    pub(super) fn replay_next(self) -> Option<u64> {
        match self {
            Phase::Replaying { next, .. } => Some(next),
            _ => None,
        }
    }

    /// Replaying (or diverted by its breaker).
    pub(super) fn is_replaying(self) -> bool {
        matches!(self, Phase::Replaying { .. })
    }

    /// Waiting for its cursor message.
    pub(super) fn is_awaiting_cursor(self) -> bool {
        matches!(self, Phase::AwaitingCursor { .. })
    }

    /// Events are queued as they are routed.
    pub(super) fn is_live(self) -> bool {
        matches!(self, Phase::Live)
    }

    /// Waiting for Redis to give its stream's state: the cursor to start from.
    pub(super) fn sync_cursor(self) -> Option<Option<Cursor>> {
        match self {
            Phase::AwaitingSync { cursor, .. } => Some(cursor),
            _ => None,
        }
    }

    /// Waiting for its stream's state, and out of time at `now`.
    pub(super) fn sync_overdue(self, now: Instant) -> bool {
        matches!(self, Phase::AwaitingSync { until, .. } if now >= until)
    }

    /// Waiting for its cursor message, and out of time at `now`.
    pub(super) fn cursor_overdue(self, now: Instant) -> bool {
        matches!(self, Phase::AwaitingCursor { until } if now >= until)
    }

    /// -> replaying from `from`, with no spool scan under way (a new replay).
    pub(super) fn replay_from(&mut self, from: u64) {
        *self = Phase::Replaying {
            next: from,
            cold: None,
        };
    }

    /// The replay has copied up to `next` (exclusive); a spool scan under way goes on.
    pub(super) fn replayed_to(&mut self, next: u64) {
        match self {
            Phase::Replaying { next: n, .. } => *n = next,
            _ => self.replay_from(next),
        }
    }

    /// Where the spool scan of this replay goes on, if one is under way.
    pub(super) fn cold_pos(self) -> Option<u64> {
        match self {
            Phase::Replaying { cold, .. } => cold,
            _ => None,
        }
    }

    /// Sets (or ends, with `None`) the spool scan of this replay.
    pub(super) fn set_cold_pos(&mut self, pos: Option<u64>) {
        debug_assert!(self.is_replaying(), "a spool scan belongs to a replay");
        if let Phase::Replaying { cold, .. } = self {
            *cold = pos;
        }
    }

    /// -> live: the replay caught up, or the cursor wait ended.
    pub(super) fn go_live(&mut self) {
        *self = Phase::Live;
    }
}

/// One connection's protocol state and outbound buffer.
pub(crate) struct Conn {
    pub(super) kind: ConnKind,
    pub(super) ws: WebSocketContext,
    /// Bytes queued for the socket: first `raw_head` bytes of HTTP response, then whole frames.
    /// The first `written` bytes already reached the socket; whole frames are removed from the
    /// front as soon as they are written, so `out[raw_head..]` always starts at a frame boundary.
    pub(super) out: BytesMut,
    pub(super) written: usize,
    pub(super) raw_head: usize,
    pub(super) phase: Phase,
    /// `seq` of the last event frame queued in `out`.
    pub(super) last_queued_seq: u64,
    /// `seq` of the last event frame completely written (for receipts).
    pub(super) delivered_through: u64,
    /// When the connection's token (plus leeway) expires, if it does: the connection is
    /// closed with 4001 then, unless an in-band `auth` message renews it.
    pub(super) expires: Option<Instant>,
    /// The last frame in `out`, if it is an `agent_thinking` frame queued while the connection
    /// was behind (see [`coalesce`]).
    pub(super) tail_thinking: Option<coalesce::Tail>,
    pub(super) breaker: Breaker,
    /// Event frames in `out` that have not been completely written.
    pub(super) unwritten_frames: u64,
    /// Event frames queued since the last write decision (for batching).
    pub(super) pending: usize,
    /// When the oldest of `pending` was queued.
    pub(super) pending_since: Instant,
    /// Listed in `Core::dirty`.
    pub(super) dirty: bool,
    /// Listed in `Core::urgent`.
    pub(super) urgent: bool,
    /// The socket refused bytes (would block); nothing is written until it reports writable.
    pub(super) blocked: bool,
    /// A protocol error ended reading: the rest of what the client sends is dropped while the
    /// close (already queued) runs its course.
    pub(super) input_done: bool,
    pub(super) state: Lifecycle,
    pub(super) keepalive: Keepalive,
}

impl Conn {
    /// A new open, live connection for `kind` whose first bytes out are `response` (the 101).
    pub(super) fn new(
        kind: ConnKind,
        ws: WebSocketConfig,
        response: &[u8],
        keepalive: Keepalive,
        now: Instant,
    ) -> Conn {
        // Room for the response and the `hello` only: an idle connection keeps no more, and a
        // busy one grows to what its bursts need.
        let mut out = BytesMut::with_capacity(response.len() + OPENING_ROOM);
        out.extend_from_slice(response);
        Conn {
            kind,
            ws: WebSocketContext::new(Role::Server, Some(ws)),
            out,
            written: 0,
            raw_head: response.len(),
            phase: Phase::Live,
            last_queued_seq: 0,
            delivered_through: 0,
            expires: None,
            tail_thinking: None,
            breaker: Breaker::default(),
            unwritten_frames: 0,
            pending: 0,
            pending_since: now,
            dirty: false,
            urgent: false,
            blocked: false,
            input_done: false,
            state: Lifecycle::open(),
            keepalive,
        }
    }

    /// Bytes waiting for the socket.
    pub(crate) fn out(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// Event frames queued but not (completely) written.
    pub(super) fn unsent_events(&self) -> u64 {
        frame::count_event_frames(&self.out[self.raw_head..])
    }

    /// Drops everything unsent; returns the event frames dropped.
    pub(super) fn discard_unsent(&mut self) -> u64 {
        let n = self.unsent_events();
        self.tail_thinking = None;
        self.out.clear();
        self.written = 0;
        self.raw_head = 0;
        self.unwritten_frames = 0;
        n
    }

    /// The first close frame either side sent (for the logs).
    pub(crate) fn closer(&self) -> Closer {
        self.state.closer()
    }

    /// The user of an event stream (none for the echo endpoint).
    pub(crate) fn user(&self) -> Option<&[u8]> {
        match &self.kind {
            ConnKind::User(u) => Some(u),
            ConnKind::Echo => None,
        }
    }

    /// True when the socket can be dropped: closed (or failed) and nothing left to write.
    pub(crate) fn is_done(&self) -> bool {
        self.state.ends_when_flushed() && self.out.is_empty()
    }

    /// Queues a close frame with `code` and starts closing (until `now + timeout`).
    pub(super) fn close(&mut self, code: u16, reason: &str, now: Instant, timeout: Duration) {
        let mut io = Io {
            input: &[],
            out: &mut self.out,
        };
        send_close(
            &mut self.ws,
            &mut io,
            &mut self.state,
            code,
            reason,
            now + timeout,
        );
    }
}

/// Queues a close frame with `code` through `ws` into `io` and moves `state` to closing until
/// `deadline` (or to finished if the protocol state cannot send one any more).
pub(super) fn send_close(
    ws: &mut WebSocketContext,
    io: &mut Io<'_>,
    state: &mut Lifecycle,
    code: u16,
    reason: &str,
    deadline: Instant,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    state.note_close(code, false);
    if ws.close(io, Some(frame)).is_ok() {
        state.begin_closing(deadline);
    } else {
        state.finish();
    }
}

/// Adapter that lets tungstenite read from bytes we already took off the socket and write into
/// the connection's outbound buffer. It never touches the socket.
pub(super) struct Io<'a> {
    pub(super) input: &'a [u8],
    pub(super) out: &'a mut BytesMut,
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

// Client messages on `/ws` (besides the cursor message, see `handshake`).

/// `{"type":"auth","token":"..."}` as the token (at most [`MAX_AUTH_TOKEN`] bytes).
pub(super) fn parse_auth(text: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(rename = "type")]
        kind: String,
        token: String,
    }
    if text.len() > MAX_AUTH_TOKEN + 64 {
        return None;
    }
    serde_json::from_slice::<Msg>(text)
        .ok()
        .filter(|m| m.kind == "auth")
        .map(|m| m.token)
}

/// The longest token an in-band `auth` message may carry.
pub(super) const MAX_AUTH_TOKEN: usize = 8192;

/// `{"ack":N}` (other members ignored) as N.
pub(super) fn parse_ack(text: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Msg {
        ack: u64,
    }
    serde_json::from_slice::<Msg>(text).ok().map(|m| m.ack)
}

/// Merges the `agent_thinking` event `seq` (its `body`) into the thinking frame at the end of
/// `c.out`, if there is one it can join (see [`coalesce`]). The frame count does not change.
pub(super) fn coalesce_thinking(c: &mut Conn, seq: u64, body: &[u8]) -> bool {
    let Some(tail) = c.tail_thinking else {
        return false;
    };
    // Still the last frame, and not started on the socket.
    if tail.end != c.out.len() || tail.start < c.written {
        return false;
    }
    let Some(merged) = frame::payload(&c.out[tail.start..]).and_then(|p| coalesce::merge(p, body))
    else {
        return false;
    };
    let (prefix, n) = frame::event_prefix(seq, merged.len());
    c.out.truncate(tail.start);
    frame::append_event(&mut c.out, &prefix[..n], &merged);
    c.tail_thinking = Some(coalesce::Tail {
        start: tail.start,
        end: c.out.len(),
    });
    c.last_queued_seq = seq;
    true
}
