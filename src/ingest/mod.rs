//! Ingest: events from other processes, through the same [`Emitter`] path as the application's
//! own threads.
//!
//! - `POST /api/publish` takes a JSON array of events per request (HTTP/1.1, keep-alive).
//! - `/api/ingest` is a WebSocket whose text messages are batches, each answered with the
//!   per-event outcome; one connection carries many batches, for high rates.
//!
//! Both need the API key (`Authorization: Bearer <ingest_api_key>`) and are bounded: body
//! and message size (`ingest_max_body_bytes`), events per batch (`ingest_max_batch_events`),
//! events per second across the gateway (`ingest_max_events_per_sec`, refused batches are
//! answered with 429 / `rate_limited` and nothing of them is emitted) and connections
//! (`ingest_max_connections`).
//!
//! A reactor reads and checks the first request head, then hands the socket to a thread of
//! its own here (`floodgate-ingest-<n>`), which owns one [`Emitter`]. Ingest is the
//! out-of-process equivalent of a producing thread: a blocking thread per publisher is what
//! the application's threads are too, and the reactors never block on a publisher. When a
//! ring is full the thread waits (up to [`FULL_WAIT`]) without reading more, so a publisher
//! faster than delivery is slowed by TCP itself.

pub(crate) mod batch;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::config::ApiKey;
use crate::core::handshake::{self, Endpoint, KeyCheck};
use crate::emitter::{Emitter, EmitterShared};
use crate::error::EmitError;
use crate::metrics::IngestCounters;
use crate::reactor::{self, Blocking, Handoff, ShardHandle};

use self::batch::{BatchError, RateLimit, Rejection};

/// How long an ingest thread waits for room in a full ring before answering `full` for the
/// rest of the batch.
pub(crate) const FULL_WAIT: Duration = Duration::from_secs(1);
/// How often a blocked read wakes to see whether the gateway is stopping.
const POLL: Duration = Duration::from_millis(100);
/// How long shutdown waits for ingest threads to close by themselves.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The ingest limits (validated with the rest of the configuration).
#[derive(Debug, Clone)]
pub(crate) struct IngestConfig {
    /// `None`: ingest is off and both endpoints answer 404.
    pub api_key: Option<ApiKey>,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub max_events_per_sec: u64,
    pub max_connections: usize,
    /// A connection that sends nothing this long is closed.
    pub idle_timeout: Duration,
    /// How long an accepted idempotency key is remembered...
    pub dedupe_window: Duration,
    /// ...and how many at most.
    pub dedupe_capacity: usize,
}

impl IngestConfig {
    pub(crate) fn from_config(cfg: &crate::config::Config) -> Self {
        IngestConfig {
            api_key: cfg.ingest_api_key.clone(),
            max_body_bytes: cfg.ingest_max_body_bytes,
            max_batch_events: cfg.ingest_max_batch_events,
            max_events_per_sec: cfg.ingest_max_events_per_sec,
            max_connections: cfg.ingest_max_connections,
            idle_timeout: cfg.ingest_idle_timeout,
            dedupe_window: cfg.ingest_dedupe_window,
            dedupe_capacity: cfg.ingest_dedupe_capacity,
        }
    }
}

/// The reactor hands the ingest endpoints' connections to the hub.
impl Handoff for Arc<Hub> {
    fn check_key(&self, bearer: Option<&str>) -> KeyCheck {
        Hub::check_key(self, bearer)
    }

    fn take(&self, stream: Blocking, buf: Vec<u8>, endpoint: Endpoint) {
        self.start(stream, buf, endpoint);
    }
}

/// A running ingest connection: a clone of its socket (to wake it at shutdown) and its thread.
struct Running {
    socket: TcpStream,
    thread: JoinHandle<()>,
}

/// What every ingest thread shares, and the list of those threads.
pub(crate) struct Hub {
    cfg: IngestConfig,
    /// What its emitters share.
    emitters: Arc<EmitterShared>,
    /// The shards, for `/api/disconnect`.
    shards: Box<[ShardHandle]>,
    rate: RateLimit,
    /// The rate limit's clock starts here.
    epoch: Instant,
    closing: AtomicBool,
    running: Mutex<Vec<Running>>,
    /// Emitters of connections that ended, for the next ones: an emitter is a ring per shard,
    /// too much to build and tear down for every one-shot `POST`. At most
    /// `ingest_max_connections` ever exist.
    idle_emitters: Mutex<Vec<Emitter>>,
    next_id: AtomicUsize,
    /// Idempotency keys accepted within `ingest_dedupe_window` (locked once per event that
    /// carries a key; the ingest threads are the edge, not the emit path).
    dedupe: Mutex<batch::Dedupe>,
}

impl Hub {
    pub(crate) fn new(
        cfg: IngestConfig,
        emitters: Arc<EmitterShared>,
        shards: Box<[ShardHandle]>,
    ) -> Hub {
        let dedupe = Mutex::new(batch::Dedupe::new(cfg.dedupe_window, cfg.dedupe_capacity));
        Hub {
            rate: RateLimit::new(cfg.max_events_per_sec, cfg.max_batch_events),
            cfg,
            emitters,
            shards,
            epoch: Instant::now(),
            closing: AtomicBool::new(false),
            running: Mutex::new(Vec::new()),
            idle_emitters: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            dedupe,
        }
    }

    /// An emitter for a new connection's thread: one a finished connection left, or a new one.
    /// (The mutex hands it from one thread to the next, so its rings keep one producer.)
    fn take_emitter(&self) -> Emitter {
        let idle = self
            .idle_emitters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        idle.unwrap_or_else(|| Emitter::new(self.emitters.clone()))
    }

    fn give_back(&self, emitter: Emitter) {
        self.idle_emitters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(emitter);
    }

    fn counters(&self) -> &IngestCounters {
        &self.emitters.registry.ingest
    }

    /// Checks `Authorization: Bearer <key>` against `ingest_api_key` in constant time.
    pub(crate) fn check_key(&self, bearer: Option<&str>) -> KeyCheck {
        let Some(ApiKey(key)) = &self.cfg.api_key else {
            return KeyCheck::Disabled;
        };
        let Some(given) = bearer else {
            return KeyCheck::Invalid;
        };
        let (a, b) = (key.as_bytes(), given.as_bytes());
        let diff = a
            .iter()
            .zip(b)
            .fold(u8::from(a.len() != b.len()), |d, (x, y)| d | (x ^ y));
        if diff == 0 {
            KeyCheck::Valid
        } else {
            KeyCheck::Invalid
        }
    }

    /// Takes over an accepted connection whose first request (already in `buf`, with anything
    /// after it) asked for `endpoint` with a valid key. Refuses with 503 at
    /// `ingest_max_connections` or while stopping.
    pub(crate) fn start(self: &Arc<Self>, mut stream: Blocking, buf: Vec<u8>, endpoint: Endpoint) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|r| !r.thread.is_finished());
        let refuse = if self.closing.load(Ordering::Acquire) {
            Some("shutting down\n")
        } else if running.len() >= self.cfg.max_connections {
            Some("ingest connection limit reached (ingest_max_connections)\n")
        } else {
            None
        };
        if let Some(why) = refuse {
            // This runs on the reactor's thread: the short answer goes into the socket's
            // buffer, and a peer that takes nothing cannot hold the reactor longer than this.
            let _ = stream.socket().set_nonblocking(false);
            let _ = stream.socket().set_write_timeout(Some(POLL));
            let _ = stream.write_all(&handshake::error(503, "Service Unavailable", why));
            stream.close();
            return;
        }
        let Ok(socket) = stream.socket().try_clone() else {
            return;
        };
        let hub = self.clone();
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("floodgate-ingest-{n}"))
            .stack_size(batch::STACK_BYTES)
            .spawn(move || {
                // Relaxed: a gauge.
                hub.counters().connections.fetch_add(1, Ordering::Relaxed);
                let socket = stream.socket();
                let _ = socket.set_nonblocking(false);
                let _ = socket.set_nodelay(true);
                let _ = socket.set_read_timeout(Some(POLL));
                let mut conn = Conn {
                    emitter: hub.take_emitter(),
                    hub: &hub,
                    rejections: Vec::new(),
                };
                let mut stream = stream;
                // A bug triggered by one publisher's input ends that connection, logged, and
                // frees its slot and emitter; it takes nothing else down.
                let served =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match endpoint {
                        Endpoint::Publish => conn.serve_http(&mut stream, buf),
                        Endpoint::Socket => conn.serve_socket(&mut stream, buf),
                    }));
                let ended = served.unwrap_or_else(|_| {
                    tracing::error!("an ingest connection's thread panicked; connection closed");
                    Err(io::Error::other("panicked"))
                });
                // The hub keeps a clone of the socket (to shut it down at shutdown), so
                // dropping ours would not close the connection: close it here.
                stream.close();
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "ingest connection ended");
                }
                hub.give_back(conn.emitter);
                hub.counters().connections.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(thread) => running.push(Running { socket, thread }),
            Err(e) => tracing::warn!(error = %e, "could not start an ingest thread"),
        }
    }

    /// Stops every ingest connection and joins its thread. Each notices within [`POLL`],
    /// finishes the batch in hand and closes (1001 on a socket); one still blocked after
    /// [`STOP_WAIT`] (writing to a publisher that does not read) has its socket shut down.
    /// Events they emitted are in the rings, which the reactors (stopped after this) drain.
    pub(crate) fn shutdown(&self) {
        // Release: a thread started after this sees `closing` in `start`.
        self.closing.store(true, Ordering::Release);
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline && running.iter().any(|r| !r.thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in running {
            if !r.thread.is_finished() {
                let _ = r.socket.shutdown(std::net::Shutdown::Both);
            }
            let _ = r.thread.join();
        }
    }

    fn stopping(&self) -> bool {
        // Acquire: pairs with the Release in `shutdown`.
        self.closing.load(Ordering::Acquire)
    }
}

/// One ingest connection's thread state.
struct Conn<'h> {
    emitter: Emitter,
    hub: &'h Hub,
    rejections: Vec<Rejection>,
}

/// Why a connection ended early (logged at debug level: a publisher that went away).
type Ended = io::Result<()>;

impl Conn<'_> {
    /// Emits a parsed batch and returns the answer for it.
    fn emit_batch(&mut self, body: &[u8], envelope: bool) -> Answer {
        let hub = self.hub;
        let counters = hub.counters();
        let parsed = match batch::parse(body, hub.cfg.max_batch_events, envelope) {
            Ok(b) => b,
            Err(e) => {
                counters.batches_refused.fetch_add(1, Ordering::Relaxed);
                let code = match e {
                    BatchError::Malformed(_) => "malformed",
                    BatchError::TooMany { .. } => "too_many_events",
                    BatchError::TooDeep => "too_deep",
                };
                return Answer::Refused {
                    status: 400,
                    body: batch::batch_error(None, code, &e.to_string()),
                    retry_after: None,
                };
            }
        };
        let now_ns = hub.epoch.elapsed().as_nanos() as u64;
        if let Err(wait_ns) = hub.rate.admit(parsed.items.len(), now_ns) {
            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            let ms = wait_ns.div_ceil(1_000_000);
            return Answer::Refused {
                status: 429,
                body: batch::batch_error(
                    parsed.id.as_deref(),
                    "rate_limited",
                    &format!(
                        "over ingest_max_events_per_sec ({}); nothing of this batch was \
                         emitted; retry in {ms} ms",
                        hub.cfg.max_events_per_sec
                    ),
                ),
                retry_after: Some(ms),
            };
        }
        self.rejections.clear();
        let mut accepted = 0;
        // Set while a ring is full: past it, the rest of the batch is answered `full`.
        let mut full_until: Option<Instant> = None;
        for (index, item) in parsed.items.iter().enumerate() {
            let item = match item {
                Ok(item) => item,
                Err(why) => {
                    self.rejections.push(Rejection {
                        index,
                        code: "invalid_event",
                        message: why.clone(),
                    });
                    continue;
                }
            };
            let key = item.idempotency_key.as_deref();
            if let Some(k) = key {
                if k.is_empty() || k.len() > batch::MAX_IDEMPOTENCY_KEY {
                    self.rejections.push(Rejection {
                        index,
                        code: "invalid_event",
                        message: format!(
                            "idempotency_key must be 1 to {} bytes",
                            batch::MAX_IDEMPOTENCY_KEY
                        ),
                    });
                    continue;
                }
                let mut d = hub.dedupe.lock().unwrap_or_else(|p| p.into_inner());
                if !d.claim(&item.user, k, Instant::now()) {
                    drop(d);
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    self.rejections.push(Rejection {
                        index,
                        code: "duplicate",
                        message: "an event with this idempotency_key was accepted for this \
                                  user within ingest_dedupe_window; not emitted again"
                            .into(),
                    });
                    continue;
                }
            }
            let backoff = crossbeam_utils::Backoff::new();
            loop {
                match self.emitter.emit(&item.user, item.event()) {
                    Ok(()) => {
                        accepted += 1;
                        full_until = None;
                        break;
                    }
                    Err(EmitError::Full(_))
                        if Instant::now()
                            < *full_until.get_or_insert_with(|| Instant::now() + FULL_WAIT)
                            && !hub.stopping() =>
                    {
                        if backoff.is_completed() {
                            std::thread::sleep(Duration::from_micros(100));
                        } else {
                            backoff.snooze();
                        }
                    }
                    Err(e) => {
                        if let Some(k) = key {
                            // Not emitted: a retry of it must not count as a duplicate.
                            let mut d = hub.dedupe.lock().unwrap_or_else(|p| p.into_inner());
                            d.release(&item.user, k);
                        }
                        self.rejections.push(Rejection::from_emit(index, &e));
                        break;
                    }
                }
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        counters
            .rejected
            .fetch_add(self.rejections.len() as u64, Ordering::Relaxed);
        Answer::Done(batch::outcome(
            parsed.id.as_deref(),
            accepted,
            &self.rejections,
        ))
    }

    /// `POST /api/disconnect` with `{"user":"..."}`: every connection of the user is closed
    /// (4002) on its shard's next pass.
    fn disconnect(&mut self, body: &[u8]) -> Answer {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            user: String,
        }
        let refused = |msg: &str| Answer::Refused {
            status: 400,
            body: batch::batch_error(None, "malformed", msg),
            retry_after: None,
        };
        if crate::json::too_deep(body, 4) {
            return refused("expected {\"user\":\"...\"}");
        }
        let user = match serde_json::from_slice::<Req>(body) {
            Ok(r) => r.user,
            Err(e) => return refused(&format!("expected {{\"user\":\"...\"}}: {e}")),
        };
        if user.is_empty() || user.len() > crate::record::MAX_USER_LEN {
            return refused("user must be 1 to 255 bytes");
        }
        reactor::disconnect(&self.hub.shards, user.as_bytes());
        let mut out = b"{\"user\":".to_vec();
        serde_json::to_writer(&mut out, &user).expect("a string serializes");
        out.extend_from_slice(b",\"disconnected\":true}");
        Answer::Done(out)
    }

    /// `POST /api/publish`, request after request on one keep-alive connection.
    fn serve_http(&mut self, stream: &mut Blocking, mut buf: Vec<u8>) -> Ended {
        let hub = self.hub;
        let mut idle_since = Instant::now();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            // The head.
            let head = loop {
                match parse_post_head(&buf) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(resp) => {
                        stream.write_all(&resp)?;
                        return Ok(());
                    }
                }
                match read_some(stream, &mut chunk, hub)? {
                    Some(n) => buf.extend_from_slice(&chunk[..n]),
                    None if idle_since.elapsed() > hub.cfg.idle_timeout => {
                        hub.counters().closed_idle.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    None => {}
                }
            };
            let respond = |stream: &mut Blocking,
                           status,
                           reason,
                           extra: &str,
                           body: &[u8],
                           keep| {
                let resp =
                    handshake::response_on(status, reason, extra, "application/json", body, keep);
                stream.write_all(&resp)
            };
            if let Some((status, reason, code, msg)) = head.refusal(hub) {
                let body = batch::batch_error(None, code, msg);
                respond(stream, status, reason, "", &body, false)?;
                return Ok(());
            }
            if head.content_length > hub.cfg.max_body_bytes {
                let body = batch::batch_error(
                    None,
                    "too_large",
                    &format!(
                        "the body is {} bytes; ingest_max_body_bytes is {}",
                        head.content_length, hub.cfg.max_body_bytes
                    ),
                );
                respond(stream, 413, "Payload Too Large", "", &body, false)?;
                return Ok(());
            }
            if head.expect_continue {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let end = head.head_len + head.content_length;
            let mut last_byte = Instant::now();
            while buf.len() < end {
                if let Some(n) = read_some(stream, &mut chunk, hub)? {
                    buf.extend_from_slice(&chunk[..n]);
                    last_byte = Instant::now();
                } else if last_byte.elapsed() > hub.cfg.idle_timeout {
                    return Ok(());
                }
            }
            let answer = if head.disconnect {
                self.disconnect(&buf[head.head_len..end])
            } else {
                self.emit_batch(&buf[head.head_len..end], false)
            };
            buf.drain(..end);
            idle_since = Instant::now();
            let keep = head.keep_alive && !hub.stopping();
            match answer {
                Answer::Done(body) => respond(stream, 200, "OK", "", &body, keep)?,
                Answer::Refused {
                    status,
                    body,
                    retry_after,
                } => {
                    let extra = retry_after
                        .map(|ms| format!("Retry-After: {}\r\n", ms.div_ceil(1000)))
                        .unwrap_or_default();
                    let reason = if status == 429 {
                        "Too Many Requests"
                    } else {
                        "Bad Request"
                    };
                    respond(stream, status, reason, &extra, &body, keep)?;
                }
            }
            if !keep {
                return Ok(());
            }
        }
    }

    /// `/api/ingest`: a WebSocket of batches, each answered in order.
    fn serve_socket(&mut self, stream: &mut Blocking, buf: Vec<u8>) -> Ended {
        let hub = self.hub;
        let req = match handshake::parse(&buf) {
            Ok(Some(req)) => req,
            _ => return Ok(()),
        };
        let Some(key) = req.upgrade_key.as_deref() else {
            return Ok(());
        };
        stream.write_all(&handshake::switching_protocols(key))?;
        let early = buf[req.head_len..].to_vec();
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(hub.cfg.max_body_bytes))
            .max_frame_size(Some(hub.cfg.max_body_bytes));
        let mut ws = WebSocket::from_partially_read(stream, early, Role::Server, Some(cfg));
        let mut last_seen = Instant::now();
        loop {
            if last_seen.elapsed() > hub.cfg.idle_timeout {
                let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Policy,
                    reason: "idle: nothing received for ingest_idle_timeout".into(),
                }));
                let _ = ws.flush();
                hub.counters().closed_idle.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if hub.stopping() {
                let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Away,
                    reason: "server shutting down".into(),
                }));
                let _ = ws.flush();
                return Ok(());
            }
            let msg = match ws.read() {
                Ok(m) => {
                    last_seen = Instant::now();
                    m
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                        code: tungstenite::protocol::frame::coding::CloseCode::Size,
                        reason: "batch larger than ingest_max_body_bytes".into(),
                    }));
                    let _ = ws.flush();
                    return Err(io::Error::other(e.to_string()));
                }
                Err(e) => return Err(io::Error::other(e.to_string())),
            };
            let data = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => &b[..],
                Message::Close(_) => return Ok(()),
                _ => continue,
            };
            let reply = match self.emit_batch(data, true) {
                Answer::Done(body) => body,
                Answer::Refused { body, .. } => body,
            };
            let text = String::from_utf8(reply).expect("answers are JSON text");
            if let Err(e) = ws.send(Message::text(text)) {
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
}

/// The answer to one batch.
enum Answer {
    /// Emitted (some events may have been refused one by one): the outcome JSON.
    Done(Vec<u8>),
    /// Refused whole: HTTP status, error JSON, and for 429 the wait in milliseconds.
    Refused {
        status: u16,
        body: Vec<u8>,
        retry_after: Option<u64>,
    },
}

/// Reads what is available; `None` after [`POLL`] without data. EOF (or a shutdown) ends the
/// connection with an error.
fn read_some(stream: &mut Blocking, chunk: &mut [u8], hub: &Hub) -> io::Result<Option<usize>> {
    match stream.read(chunk) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            if hub.stopping() {
                Err(io::ErrorKind::ConnectionAborted.into())
            } else {
                Ok(None)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// A `POST /api/publish` request head.
struct PostHead {
    head_len: usize,
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
    path_ok: bool,
    /// `POST /api/disconnect` rather than `/api/publish`.
    disconnect: bool,
    method_ok: bool,
    /// `Transfer-Encoding` was given (chunked bodies are not accepted).
    chunked: bool,
    bearer: Option<String>,
}

impl PostHead {
    /// Why this request is refused before its body is read: status, reason, code, message.
    fn refusal(&self, hub: &Hub) -> Option<(u16, &'static str, &'static str, &'static str)> {
        if !self.path_ok {
            return Some((
                404,
                "Not Found",
                "not_found",
                "this connection serves POST /api/publish and /api/disconnect only",
            ));
        }
        if !self.method_ok {
            return Some((
                405,
                "Method Not Allowed",
                "method",
                "POST a JSON array to /api/publish",
            ));
        }
        match hub.check_key(self.bearer.as_deref()) {
            KeyCheck::Valid => {}
            KeyCheck::Disabled => {
                return Some((
                    404,
                    "Not Found",
                    "disabled",
                    "ingest is disabled (no ingest_api_key)",
                ))
            }
            KeyCheck::Invalid => {
                return Some((
                    401,
                    "Unauthorized",
                    "unauthorized",
                    "missing or wrong API key (Authorization: Bearer <ingest_api_key>)",
                ))
            }
        }
        if self.chunked {
            return Some((
                411,
                "Length Required",
                "length_required",
                "send the body with Content-Length, not chunked",
            ));
        }
        None
    }
}

/// Parses the head of a request on a publish connection. `Err` is a complete response to
/// send before closing (malformed or oversized head).
fn parse_post_head(buf: &[u8]) -> Result<Option<PostHead>, Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > handshake::MAX_HEAD_BYTES => {
            return Err(handshake::head_error(handshake::HeadError::TooLarge))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(handshake::head_error(handshake::HeadError::Malformed)),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let content_length = match header("content-length").map(str::parse::<usize>) {
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(handshake::head_error(handshake::HeadError::Malformed)),
        None => 0,
    };
    let connection = header("connection").unwrap_or("");
    let keep_alive = if req.version == Some(0) {
        connection.eq_ignore_ascii_case("keep-alive")
    } else {
        !connection.eq_ignore_ascii_case("close")
    };
    let bearer = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned())
    });
    let path = req.path.unwrap_or("/");
    Ok(Some(PostHead {
        head_len,
        content_length,
        keep_alive,
        expect_continue: header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
        path_ok: matches!(
            path.split('?').next(),
            Some("/api/publish" | "/api/disconnect")
        ),
        disconnect: path.split('?').next() == Some("/api/disconnect"),
        method_ok: req.method == Some("POST"),
        chunked: header("transfer-encoding").is_some(),
        bearer,
    }))
}

/// Fuzz target body: the `POST` head parser and its refusals.
pub(crate) fn fuzz_post_head(data: &[u8]) {
    if let Ok(Some(h)) = parse_post_head(data) {
        assert!(h.head_len <= data.len());
    }
}

/// Fuzz target body: a batch parsed, each accepted event encoded as the emitter would, the
/// answer JSON.
pub(crate) fn fuzz_batch(data: &[u8], envelope: bool) {
    match batch::parse(data, 1000, envelope) {
        Ok(b) => {
            let mut body = Vec::new();
            let mut errors = Vec::new();
            for (index, item) in b.items.iter().enumerate() {
                match item {
                    Ok(item) => {
                        body.clear();
                        let _ = item.event().encode_body(1, &mut body);
                    }
                    Err(m) => errors.push(batch::Rejection {
                        index,
                        code: "invalid_event",
                        message: m.clone(),
                    }),
                }
            }
            let out = batch::outcome(b.id.as_deref(), b.items.len() - errors.len(), &errors);
            serde_json::from_slice::<serde_json::Value>(&out).expect("the answer is JSON");
        }
        Err(e) => {
            let out = batch::batch_error(None, "malformed", &e.to_string());
            serde_json::from_slice::<serde_json::Value>(&out).expect("the answer is JSON");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_head_gives_length_keep_alive_and_key() {
        let raw = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n\
                    Content-Length: 12\r\nExpect: 100-continue\r\n\r\n[]";
        let h = parse_post_head(raw).unwrap().unwrap();
        assert_eq!(h.content_length, 12);
        assert!(h.keep_alive && h.expect_continue && h.path_ok && h.method_ok);
        assert_eq!(h.bearer.as_deref(), Some("k3y"));
        assert_eq!(&raw[h.head_len..], b"[]");
        let h = parse_post_head(b"POST /api/publish HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        assert!(parse_post_head(b"POST /api/pub").unwrap().is_none());
        assert!(parse_post_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
