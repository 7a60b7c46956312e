//! The I/O driver: one mio reactor thread per shard. This is the only module that imports mio
//! or owns sockets; every decision is delegated to the sans-IO [`Core`].
//!
//! One pass: poll (parked only after checking every ring, see [`Parker`]), read sockets into the
//! core, take commands (new rings, handed-off connections, shutdown), drain every ring in
//! bounded chunks into the core, write each connection the core says is due with one `write`
//! (looping only on a partial write), then run timers every [`TICK`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::auth::{AuthError, Verifier};
use crate::core::durable::NoCold;
use crate::core::durable::Recovery;
use crate::core::handshake::{self, Decision, Endpoint, KeyCheck, Refusal};
use crate::core::{Boards, ConnId, ConnKind, Core, CoreConfig, Start, CLOSE_GOING_AWAY};
use crate::dashboard;
use crate::metrics::Registry;
use crate::park::Parker;
use crate::record::{shard_of, unix_ns};
use crate::ring::Consumer;
use crate::spool::Spool;

/// Timer resolution for pings, pong and close timeouts and handshake deadlines.
const TICK: Duration = Duration::from_millis(100);
/// How often a spool that failed to write is tried again.
const SPOOL_RETRY: Duration = Duration::from_millis(100);
/// Records taken from one ring before the reactor looks at full batches again.
const DRAIN_CHUNK: usize = 1024;
/// Records taken from one ring per pass at most, so one busy producer cannot starve sockets.
const DRAIN_BUDGET: usize = 16 * 1024;
/// Reads from one socket per pass at most (the rest waits for the next pass).
const READS_PER_PASS: usize = 8;
/// Connections in the HTTP phase per shard at most; more are refused at accept.
const MAX_HANDSHAKES: usize = 4096;

const WAKER: Token = Token(usize::MAX - 1);
const LISTENER: Token = Token(usize::MAX - 2);
/// Tokens at or above this (and below LISTENER) are handshakes; below are connections.
const HANDSHAKE_BASE: usize = 1 << 40;

/// A message to a shard.
pub(crate) enum Cmd {
    /// An authenticated connection whose user lives on this shard.
    Adopt {
        stream: Stream,
        kind: ConnKind,
        response: Vec<u8>,
        early: Vec<u8>,
        start: Start,
        /// Unix second from which the connection's token is no longer valid.
        expires: Option<u64>,
        /// The peer's address (its slot in `Common::per_ip`).
        ip: IpAddr,
    },
    /// Close every connection of this user (4002).
    Disconnect(Box<[u8]>),
    /// Deliver what was accepted, close every connection with 1001, and stop.
    Shutdown,
}

/// How to reach a shard from other threads.
#[derive(Clone)]
pub(crate) struct ShardHandle {
    pub parker: Arc<Parker>,
    tx: Sender<Cmd>,
}

impl ShardHandle {
    /// Sends `cmd` and wakes the shard (if it is gone, the command is dropped).
    pub(crate) fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
        self.parker.wake();
    }
}

/// What a shard reports when it stops.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardReport {
    /// Events accepted before shutdown that did not reach a socket: queued on a connection that
    /// did not drain before it closed, or dropped for a connection that was already closing.
    pub undelivered: u64,
    /// Records drained from rings during shutdown.
    pub drained_at_shutdown: u64,
    /// Unacked events written to the dead-letter file at shutdown (no spool keeps them).
    pub unacked_dead_lettered: u64,
}

/// Settings the reactor itself needs (the core has the rest).
#[derive(Clone)]
pub(crate) struct ReactorConfig {
    /// Which optional endpoints (`/echo`, `/dashboard`) are on.
    pub optional: handshake::Optional,
    /// Handshakes in progress from one address at most.
    pub max_pending_per_ip: usize,
    /// Open connections from one address at most (0: no limit).
    pub max_connections_per_ip: usize,
    /// Browser origins allowed to open WebSockets.
    pub origins: handshake::OriginPolicy,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub core: CoreConfig,
    /// The tables every shard shares with emitters.
    pub boards: Boards,
}

/// Where the reactor hands the connections that ask for the ingest endpoints (`/api/publish`,
/// `/api/ingest`, `/api/disconnect`), which are served by blocking threads of their own.
pub(crate) trait Handoff: Send + Sync {
    /// Checks a request's API key (`Authorization: Bearer <key>`).
    fn check_key(&self, bearer: Option<&str>) -> KeyCheck;
    /// Takes over `stream`, whose bytes read so far (plaintext, under TLS) are `buf`.
    fn take(&self, stream: Blocking, buf: Vec<u8>, endpoint: Endpoint);
}

/// Sends `user`'s home shard the order to close every connection of `user` (4002).
pub(crate) fn disconnect(shards: &[ShardHandle], user: &[u8]) {
    let home = shard_of(user, shards.len());
    shards[home].send(Cmd::Disconnect(user.into()));
}

/// State every shard shares.
pub(crate) struct Common {
    pub peers: Box<[ShardHandle]>,
    pub verifier: Verifier,
    /// TLS on the port (`tls_cert_file`): each accepted connection starts a session.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub registry: Arc<Registry>,
    /// Open connections across all shards (for `max_connections`).
    pub open: AtomicUsize,
    /// The ingest endpoints, which take over connections that ask for them.
    pub ingest: Box<dyn Handoff>,
    /// Open connections per peer address (for `max_connections_per_ip`).
    pub per_ip: PerIp,
    /// The Redis engine: where users whose stream state a shard needs are sent (the node's
    /// log reader answers in the shard's ring).
    pub sync_requests: Option<crossbeam_channel::Sender<crate::record::SyncRequest>>,
}

struct Handshake {
    stream: Stream,
    buf: Vec<u8>,
    deadline: Instant,
    /// The peer's address, for the per-address limits.
    ip: IpAddr,
}

/// Open connections per peer address, shared by the shards, for `max_connections_per_ip`
/// (touched when a connection opens or closes, never per event; not at all when the limit is
/// off).
#[derive(Default)]
pub(crate) struct PerIp(std::sync::Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// Takes a slot for `ip` if it has fewer than `max` (0: no limit, nothing counted).
    fn take(&self, ip: IpAddr, max: usize) -> bool {
        if max == 0 {
            return true;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a slot that `take` gave.
    fn give(&self, ip: IpAddr, max: usize) {
        if max == 0 {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// A shard made but not started: how to reach it, and what it owns.
pub(crate) struct Prepared {
    /// Commands and wake-ups.
    pub handle: ShardHandle,
    /// Where emitters send their new rings (then wake the shard with `handle.parker`). If the
    /// shard is gone the consumer is dropped, which closes the ring: the emitter's pushes then
    /// fail with `Closed`.
    pub rings: Sender<Consumer>,
    poll: Poll,
    cmds: Receiver<Cmd>,
    new_rings: Receiver<Consumer>,
}

/// Creates a shard's poller, waker and channels.
pub(crate) fn prepare() -> io::Result<Prepared> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, cmds) = crossbeam_channel::unbounded();
    let (rings, new_rings) = crossbeam_channel::unbounded();
    let parker = Arc::new(Parker::new(move || {
        let _ = waker.wake();
    }));
    Ok(Prepared {
        handle: ShardHandle { parker, tx },
        rings,
        poll,
        cmds,
        new_rings,
    })
}

pub(crate) struct Shard {
    index: usize,
    poll: Poll,
    rx: Receiver<Cmd>,
    /// New emitters' rings.
    new_rings: Receiver<Consumer>,
    common: Arc<Common>,
    cfg: ReactorConfig,
    core: Core,
    /// Sockets by connection id, with whether WRITABLE interest is registered (only while a
    /// write is blocked, so writable edges do not wake the reactor for nothing).
    sockets: Vec<Option<(Stream, bool, IpAddr)>>,
    rings: Vec<Consumer>,
    listener: Option<TcpListener>,
    handshakes: Slab<Handshake>,
    read_buf: Box<[u8]>,
    /// Connections to read again next pass (read budget ran out).
    reread: Vec<ConnId>,
    /// Connections whose socket failed or hit EOF.
    dead: Vec<ConnId>,
    scratch: Vec<ConnId>,
    report: ShardReport,
    shutdown_deadline: Option<Instant>,
    /// `events_dropped` when shutdown began.
    dropped_before_shutdown: u64,
    /// This shard's durable spool, if configured.
    spool: Option<Spool>,
    /// Where dead letters are appended (shared path, one handle per shard, `O_APPEND`).
    dead_letters: Option<std::fs::File>,
    /// The spool failed to write what the core encoded: until a retry succeeds, no socket is
    /// written and no ring drained, so no client sees an event the spool does not have.
    spool_stalled: bool,
    /// When a stalled spool is tried again.
    spool_retry_at: Instant,
    /// A file descriptor held in reserve (on /dev/null) by the accepting shard: when `accept`
    /// fails for want of descriptors, it is closed so one waiting connection can be accepted
    /// and refused with a 503, then opened again.
    reserve_fd: Option<std::fs::File>,
    /// `accept` ran out of file descriptors and has not succeeded since (one warning per
    /// episode); while set, the listener is tried again every tick, since connections left
    /// waiting in a full backlog raise no new readiness event.
    fd_exhausted: bool,
    /// `accept` failed for another reason that may last: try again on the next tick.
    accept_retry: bool,
    /// Handshakes in progress per peer address (accepting shard only).
    pending_by_ip: HashMap<IpAddr, usize>,
    /// Refused handshakes, logged within a rate.
    refusals: RefusalLog,
    /// Redis engine: where this shard's clients' acks go (the node's publisher).
    acks_to_redis: Option<AckLink>,
    /// Reused to encode those acks.
    ack_scratch: Vec<u8>,
}

/// A ring from a shard to the Redis engine's publisher, for the acks of the shard's clients.
pub(crate) struct AckLink {
    pub producer: crate::ring::Producer,
    pub parker: Arc<Parker>,
}

/// Refused handshakes logged per shard per second at most; the rest are counted and said in
/// one line (a flood of bad handshakes must not become a flood of log lines).
const REFUSALS_LOGGED_PER_SEC: u32 = 20;

/// The log of refused handshakes: one `info` line each, within [`REFUSALS_LOGGED_PER_SEC`].
#[derive(Default)]
struct RefusalLog {
    window_end: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    /// Logs that a handshake from `peer` was refused (`reason`: a short word for the logs'
    /// readers to filter on) with `response`, whose status and first body line say why.
    fn refused(&mut self, peer: Option<IpAddr>, reason: &'static str, response: &[u8]) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let now = Instant::now();
        if self.window_end.is_none_or(|end| now >= end) {
            if self.left_out > 0 {
                tracing::info!(
                    left_out = self.left_out,
                    "more handshakes were refused than logged (at most {REFUSALS_LOGGED_PER_SEC} a second per shard)"
                );
            }
            *self = RefusalLog {
                window_end: Some(now + Duration::from_secs(1)),
                ..RefusalLog::default()
            };
        }
        if self.logged >= REFUSALS_LOGGED_PER_SEC {
            self.left_out += 1;
            return;
        }
        self.logged += 1;
        let (status, why) = summarize(response);
        let peer = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::info!(%peer, reason, status, why, "handshake refused");
    }
}

/// The status code and the first line of the body of an HTTP response we wrote (at most 200
/// bytes of it).
fn summarize(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(&response[..response.len().min(4096)]);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let mut why: String = body
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    why.truncate(why.trim_end().len());
    (status, why)
}

/// The answer to a connection accepted only to be refused while descriptors are exhausted.
const FD_EXHAUSTED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
    Content-Length: 44\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
    the gateway is out of file descriptors now\r\n";

/// The instant of the unix second `unix_secs`, seen from `now` (past ones are `now`).
fn instant_of(unix_secs: u64, now: Instant) -> Instant {
    let now_secs = unix_ns() / 1_000_000_000;
    now + Duration::from_secs(unix_secs.saturating_sub(now_secs))
}

/// Whether an `accept` error means the process or the system is out of file descriptors.
fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// What a shard starts with besides its configuration: its spool (with what it recovered)
/// and the dead-letter file.
#[derive(Default)]
pub(crate) struct Durable {
    pub spool: Option<(Spool, Recovery)>,
    pub dead_letters: Option<std::fs::File>,
}

impl Shard {
    /// `prepared`'s shard number `index`. Its `handle` must be `common.peers[index]`.
    pub(crate) fn new(
        index: usize,
        prepared: Prepared,
        common: Arc<Common>,
        cfg: ReactorConfig,
        mut listener: Option<TcpListener>,
        durable: Durable,
    ) -> io::Result<Shard> {
        let Prepared {
            poll,
            cmds: rx,
            new_rings,
            ..
        } = prepared;
        if let Some(l) = listener.as_mut() {
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        let now = Instant::now();
        let mut core = Core::new(cfg.core.clone(), cfg.boards.clone(), now);
        let spool = durable.spool.map(|(spool, recovery)| {
            core.restore(recovery, now);
            spool
        });
        Ok(Shard {
            index,
            poll,
            rx,
            new_rings,
            core,
            common,
            cfg,
            sockets: Vec::new(),
            rings: Vec::new(),
            listener,
            handshakes: Slab::new(),
            read_buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            reread: Vec::new(),
            dead: Vec::new(),
            scratch: Vec::new(),
            report: ShardReport::default(),
            shutdown_deadline: None,
            dropped_before_shutdown: 0,
            spool,
            dead_letters: durable.dead_letters,
            spool_stalled: false,
            spool_retry_at: Instant::now(),
            reserve_fd: None,
            fd_exhausted: false,
            accept_retry: false,
            pending_by_ip: HashMap::new(),
            refusals: RefusalLog::default(),
            acks_to_redis: None,
            ack_scratch: Vec::new(),
        }
        .with_reserve_fd())
    }

    /// Redis engine: this shard's clients' acks go to every node through `link`.
    pub(crate) fn with_ack_link(mut self, link: Option<AckLink>) -> Self {
        self.acks_to_redis = link;
        self
    }

    /// Passes the acks of this pass on to the publisher; what its ring cannot take now waits
    /// for the next pass.
    fn forward_acks(&mut self) {
        let Some(link) = self.acks_to_redis.as_mut() else {
            return;
        };
        let mut sent = 0;
        for (user, epoch, through) in &self.core.acks_out {
            self.ack_scratch.clear();
            crate::record::encode_sequenced(
                &mut self.ack_scratch,
                unix_ns(),
                crate::record::REC_ACKED,
                user,
                *epoch,
                *through,
                b"",
            );
            if link.producer.push(&[&self.ack_scratch]).is_err() {
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            self.core.acks_out.drain(..sent);
            link.parker.unpark();
        }
    }

    fn with_reserve_fd(mut self) -> Self {
        if self.listener.is_some() {
            self.reserve_fd = std::fs::File::open("/dev/null").ok();
        }
        self
    }

    fn parker(&self) -> &Parker {
        &self.common.peers[self.index].parker
    }

    /// Runs until shutdown completes.
    pub(crate) fn run(mut self) -> ShardReport {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(d) = self.core.next_batch_deadline() {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            let has_work = |s: &Self| {
                !s.reread.is_empty()
                    || !s.rx.is_empty()
                    || !s.new_rings.is_empty()
                    || (!s.spool_stalled
                        && (s.core.replay_ready() || s.rings.iter().any(Consumer::has_pending)))
            };
            let mut parked = false;
            if has_work(&self) {
                timeout = Duration::ZERO;
            } else {
                // Park protocol (see `Parker`): announce, fence, re-check, then sleep.
                self.parker().announce_sleep();
                parked = true;
                if has_work(&self) {
                    timeout = Duration::ZERO;
                }
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.index, error = %e, "poll failed; shard stopping");
                    break;
                }
            }
            if parked {
                self.parker().awake();
            }
            let now = Instant::now();
            let now_ns = unix_ns();
            self.core.stats.passes += 1;

            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(now),
                    Token(t) if t >= HANDSHAKE_BASE => {
                        self.handshake_readable(t - HANDSHAKE_BASE, now)
                    }
                    Token(id) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_conn(id, now);
                        }
                        if ev.is_writable() {
                            self.core.on_writable(id);
                        }
                    }
                }
            }
            for id in std::mem::take(&mut self.reread) {
                if self.sockets.get(id).is_some_and(Option::is_some) {
                    self.read_conn(id, now);
                }
            }
            self.verify_auth_requests(now);
            while let Ok(cmd) = self.rx.try_recv() {
                self.command(cmd, now, now_ns);
            }
            self.take_new_rings(now, now_ns);
            self.drain_rings(now);
            // After the rings: history (and the spool) now hold every event routed so far.
            self.flush_spool(now);
            // A stalled spool does not have what was routed last: replays wait for it.
            match self.spool.as_mut() {
                Some(spool) if !self.spool_stalled => self.core.pump_replays(now, spool),
                Some(_) => {}
                None => self.core.pump_replays(now, &mut NoCold),
            }

            self.write_due(now, true);
            if let Some(tx) = &self.common.sync_requests {
                for request in self.core.sync_requests.drain(..) {
                    // Only fails once the reader is gone (shutdown): the connection then
                    // waits out its sync timeout.
                    let _ = tx.send(request);
                }
            }
            self.forward_acks();

            if now >= next_tick {
                next_tick = now + TICK;
                self.core.tick(now);
                self.tick_spool(now);
                self.expire_handshakes(now);
                if self.fd_exhausted || self.accept_retry {
                    self.accept_retry = false;
                    self.accept(now);
                }
                if let Some(deadline) = self.shutdown_deadline {
                    if now >= deadline {
                        for id in self.core.conn_ids() {
                            self.dead.push(id);
                        }
                    }
                }
                // Timers may have queued pings or closes.
                self.write_due(now, false);
            }
            self.reap();
            self.common.registry.shards[self.index].publish(&self.core.stats);
            if self.shutdown_deadline.is_some() && self.core.connection_count() == 0 {
                break;
            }
        }
        if self.spool.is_none() {
            // Nothing keeps unacked events past this process: they get a trace instead.
            self.report.unacked_dead_lettered = self.core.dead_letter_unacked("shutdown");
        }
        self.flush_spool(Instant::now());
        if let Some(spool) = self.spool.as_mut() {
            spool.close();
        }
        self.copy_spool_stats();
        self.common.registry.shards[self.index].publish(&self.core.stats);
        self.report.undelivered = self.core.stats.events_dropped - self.dropped_before_shutdown;
        self.report
    }

    /// Hands what the core encoded to the spool, and dead letters to their file. Runs before
    /// every socket write, so no client sees an event the spool does not have. If the spool
    /// cannot write, the shard stalls (see `spool_stalled`) and this is retried every tick.
    fn flush_spool(&mut self, now: Instant) {
        let waiting = self.spool_stalled && now < self.spool_retry_at;
        if !self.core.spool_out.is_empty() && !waiting {
            if let Some(spool) = self.spool.as_mut() {
                self.spool_stalled = spool.write(&self.core.spool_out, now).is_err();
                if self.spool_stalled {
                    self.spool_retry_at = now + SPOOL_RETRY;
                } else {
                    self.core.on_spooled();
                }
            }
        }
        if !self.core.dead_out.is_empty() {
            let lines = std::mem::take(&mut self.core.dead_out);
            let written = match self.dead_letters.as_mut() {
                Some(f) => f.write_all(&lines).is_ok(),
                None => false,
            };
            if !written {
                if self.dead_letters.is_some() {
                    self.core.stats.dead_letter_write_errors += 1;
                }
                for line in String::from_utf8_lossy(&lines).lines() {
                    tracing::warn!(target: "floodgate::dead_letter", "{line}");
                }
            }
            self.core.dead_out = lines;
            self.core.dead_out.clear();
        }
    }

    /// Spool timers (interval fsync, retention) and its counters.
    fn tick_spool(&mut self, now: Instant) {
        if let Some(start) = self.spool.as_mut().and_then(|s| s.tick(now)) {
            self.core.on_spool_trimmed(start);
        }
        self.copy_spool_stats();
    }

    fn copy_spool_stats(&mut self) {
        if let Some(spool) = self.spool.as_ref() {
            let (from, to) = (&spool.stats, &mut self.core.stats);
            to.spool_bytes_written = from.bytes_written;
            to.spool_write_errors = from.write_errors;
            to.spool_stalled = u64::from(self.spool_stalled);
            to.spool_fsyncs = from.fsyncs;
            to.spool_segments_deleted = from.segments_deleted;
            to.spool_bytes = from.bytes;
        }
    }

    fn drain_rings(&mut self, now: Instant) {
        if self.spool_stalled {
            // Events stay in the rings (emitters get `Full` when they fill up).
            return;
        }
        for i in 0..self.rings.len() {
            let mut taken = 0;
            while taken < DRAIN_BUDGET {
                // The wall clock for latency, read per chunk (a vDSO call, not a syscall): read
                // once per pass, before the pass's other work, it would be earlier than the
                // emit time of events pushed meanwhile, whose latency would count as 0.
                let now_ns = unix_ns();
                let core = &mut self.core;
                let n = self.rings[i].drain(DRAIN_CHUNK, |rec| core.route(rec, now, now_ns));
                taken += n;
                // Connections whose batch filled up are written between chunks.
                self.write_due(now, false);
                if n < DRAIN_CHUNK {
                    break;
                }
            }
        }
        self.rings.retain(|r| !r.is_finished());
    }

    /// Writes every connection the core says is due now (`pass_end`: the rings are drained).
    fn write_due(&mut self, now: Instant, pass_end: bool) {
        self.flush_spool(now);
        if self.spool_stalled {
            return;
        }
        let mut due = std::mem::take(&mut self.scratch);
        self.core.take_writable(now, pass_end, &mut due);
        for &id in &due {
            self.flush(id);
        }
        due.clear();
        self.scratch = due;
    }

    /// Takes the rings of emitters created since the last pass. After shutdown began, a new
    /// ring is drained and closed at once (its emitter then gets `Closed`).
    fn take_new_rings(&mut self, now: Instant, now_ns: u64) {
        while let Ok(c) = self.new_rings.try_recv() {
            if self.shutdown_deadline.is_some() {
                let core = &mut self.core;
                self.report.drained_at_shutdown +=
                    c.close_and_drain(|rec| core.route(rec, now, now_ns)) as u64;
            } else {
                self.rings.push(c);
            }
        }
    }

    fn command(&mut self, cmd: Cmd, now: Instant, now_ns: u64) {
        match cmd {
            Cmd::Adopt {
                stream,
                kind,
                response,
                early,
                start,
                expires,
                ip,
            } => self.adopt(stream, kind, &response, &early, start, expires, ip, now),
            Cmd::Disconnect(user) => {
                self.core.disconnect_user(&user, now);
            }
            Cmd::Shutdown => self.begin_shutdown(now, now_ns),
        }
    }

    fn begin_shutdown(&mut self, now: Instant, now_ns: u64) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(now + self.cfg.shutdown_timeout);
        self.dropped_before_shutdown = self.core.stats.events_dropped;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.pending_by_ip.clear();
        for (_, mut hs) in std::mem::take(&mut self.handshakes) {
            let _ = self.poll.registry().deregister(hs.stream.tcp());
        }
        // Everything accepted into a ring is routed before the close frames are queued.
        let core = &mut self.core;
        for ring in self.rings.drain(..) {
            self.report.drained_at_shutdown +=
                ring.close_and_drain(|rec| core.route(rec, now, now_ns)) as u64;
        }
        self.core
            .close_all(CLOSE_GOING_AWAY, "server shutting down", now);
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let ip = peer.ip();
                    let pending = self.pending_by_ip.get(&ip).copied().unwrap_or(0);
                    let refusal = if self.handshakes.len() >= MAX_HANDSHAKES {
                        Some("too many handshakes in progress\n")
                    } else if pending >= self.cfg.max_pending_per_ip {
                        Some("too many handshakes in progress from this address\n")
                    } else {
                        None
                    };
                    if let Some(why) = refusal {
                        self.core.stats.rejected_limit += 1;
                        let resp = handshake::error(503, "Service Unavailable", why);
                        self.refusals.refused(Some(ip), "limit", &resp);
                        let _ = stream.write(&resp);
                        continue; // and closed
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.handshakes.vacant_entry();
                    let token = Token(HANDSHAKE_BASE + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let Ok(stream) = wrap(&self.common, stream) else {
                        continue;
                    };
                    let key = entry.key();
                    entry.insert(Handshake {
                        stream,
                        buf: Vec::with_capacity(1024),
                        deadline: now + self.cfg.handshake_timeout,
                        ip,
                    });
                    *self.pending_by_ip.entry(ip).or_insert(0) += 1;
                    // The request may already be there (edge-triggered: no event would follow).
                    self.handshake_readable(key, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.fd_exhausted {
                        self.fd_exhausted = false;
                        tracing::info!("accept: file descriptors are available again");
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if out_of_fds(&e) => {
                    self.core.stats.accept_fd_exhausted += 1;
                    if !self.fd_exhausted {
                        self.fd_exhausted = true;
                        tracing::warn!(
                            error = %e,
                            "accept: out of file descriptors; new connections get 503 until \
                             some close (raise the nofile limit, or lower max_connections)"
                        );
                    }
                    // Free the reserve to take one waiting connection off the backlog and
                    // refuse it, rather than leave it hanging; then take the reserve back.
                    let Some(reserve) = self.reserve_fd.take() else {
                        return; // tried again on the next tick
                    };
                    drop(reserve);
                    let took_one = match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let _ = stream.write(FD_EXHAUSTED_503);
                            self.core.stats.rejected_limit += 1;
                            self.refusals.refused(
                                Some(peer.ip()),
                                "fd_exhausted",
                                FD_EXHAUSTED_503,
                            );
                            true // and closed here
                        }
                        Err(_) => false,
                    };
                    self.reserve_fd = std::fs::File::open("/dev/null").ok();
                    // accept fails with EMFILE even when nothing waits: go round again only
                    // after taking a connection off the backlog.
                    if !took_one || self.reserve_fd.is_none() {
                        return;
                    }
                }
                Err(e) => {
                    self.core.stats.accept_errors += 1;
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
                    ) {
                        // About one connection only: go on with the next.
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                    // Anything else (ENOBUFS, ENOMEM, ...): back off to the next tick.
                    tracing::warn!(error = %e, "accept failed; trying again shortly");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn handshake_readable(&mut self, key: usize, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(key) else {
            return;
        };
        let mut chunk = [0u8; 2048];
        let parsed = loop {
            match hs.stream.read(&mut chunk) {
                Ok(0) => break Err(None),
                Ok(n) => {
                    hs.buf.extend_from_slice(&chunk[..n]);
                    match handshake::parse(&hs.buf) {
                        Ok(Some(req)) => break Ok(req),
                        Ok(None) => continue,
                        Err(e) => break Err(Some(handshake::head_error(e))),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(None),
            }
        };
        let mut hs = self.take_handshake(key);
        let _ = self.poll.registry().deregister(hs.stream.tcp());
        let req = match parsed {
            Ok(req) => req,
            Err(resp) => {
                self.core.stats.rejected_bad_request += 1;
                if let Some(resp) = resp {
                    self.refusals.refused(Some(hs.ip), "bad_request", &resp);
                    let _ = hs.stream.write(&resp);
                }
                return;
            }
        };
        let verifier = &self.common.verifier;
        let ingest = &self.common.ingest;
        let mut expires = None;
        let decision = handshake::decide(
            &req,
            self.cfg.optional,
            &self.cfg.origins,
            |token| {
                verifier
                    .verify_until(token)
                    .map(|(user, until)| {
                        expires = Some(until);
                        user
                    })
                    .map_err(AuthError::as_str)
            },
            |key| ingest.check_key(key),
        );
        let (kind, response, start) = match decision {
            Decision::Upgrade {
                kind,
                response,
                start,
            } => (kind, response, start),
            Decision::Ingest(endpoint) => {
                // The ingest thread reads the request (and its body) again from the start, in
                // blocking mode; under TLS it carries on in the session the handshake began.
                self.common
                    .ingest
                    .take(hs.stream.into_blocking(), hs.buf, endpoint);
                return;
            }
            Decision::Health => {
                // 503 on the Redis engine while Redis is out of reach: a load balancer then
                // sends new clients to a node that can serve them.
                let resp = match self.common.registry.unhealthy() {
                    None => handshake::response(200, "OK", "", "text/plain", "ok\n"),
                    Some(why) => {
                        handshake::response(503, "Service Unavailable", "", "text/plain", &why)
                    }
                };
                let _ = hs.stream.write(&resp);
                return;
            }
            Decision::Metrics => {
                let body = self.common.registry.snapshot().to_prometheus();
                let resp = handshake::response(200, "OK", "", "text/plain; version=0.0.4", &body);
                let _ = hs.stream.write(&resp);
                return;
            }
            Decision::Dashboard { stats: false } => {
                let _ = hs.stream.write(dashboard::page());
                return;
            }
            Decision::Dashboard { stats: true } => {
                let registry = &self.common.registry;
                let body = dashboard::stats_json(
                    &registry.per_shard(),
                    &registry.snapshot(),
                    unix_ns() / 1_000_000,
                );
                let resp = handshake::response(
                    200,
                    "OK",
                    "Cache-Control: no-store\r\n",
                    "application/json",
                    &body,
                );
                let _ = hs.stream.write(&resp);
                return;
            }
            Decision::Respond { response, refused } => {
                let reason = match refused {
                    Some(Refusal::Auth) => {
                        self.core.stats.rejected_auth += 1;
                        Some("auth")
                    }
                    Some(Refusal::Origin) => {
                        self.core.stats.rejected_origin += 1;
                        Some("origin")
                    }
                    Some(Refusal::BadRequest) => {
                        self.core.stats.rejected_bad_request += 1;
                        Some("bad_request")
                    }
                    None => None,
                };
                if let Some(reason) = reason {
                    self.refusals.refused(Some(hs.ip), reason, &response);
                }
                let _ = hs.stream.write(&response);
                return;
            }
        };
        // Relaxed: a limit, not a synchronisation point; a brief overshoot by concurrent shards
        // is corrected by the check itself.
        if self.common.open.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.common.open.fetch_sub(1, Ordering::Relaxed);
            self.core.stats.rejected_limit += 1;
            let resp = handshake::error(503, "Service Unavailable", "connection limit reached\n");
            self.refusals.refused(Some(hs.ip), "limit", &resp);
            let _ = hs.stream.write(&resp);
            return;
        }
        if !self
            .common
            .per_ip
            .take(hs.ip, self.cfg.max_connections_per_ip)
        {
            self.common.open.fetch_sub(1, Ordering::Relaxed);
            self.core.stats.rejected_limit += 1;
            let resp = handshake::error(
                503,
                "Service Unavailable",
                "connection limit reached for this address (max_connections_per_ip)\n",
            );
            self.refusals.refused(Some(hs.ip), "limit", &resp);
            let _ = hs.stream.write(&resp);
            return;
        }
        let early = hs.buf[req.head_len..].to_vec();
        let home = match &kind {
            ConnKind::User(user) => shard_of(user, self.common.peers.len()),
            ConnKind::Echo => self.index,
        };
        if home == self.index {
            self.adopt(
                hs.stream, kind, &response, &early, start, expires, hs.ip, now,
            );
        } else {
            self.common.peers[home].send(Cmd::Adopt {
                stream: hs.stream,
                kind,
                response,
                early,
                start,
                expires,
                ip: hs.ip,
            });
        }
    }

    /// Removes handshake `key`, giving back its address's pending slot.
    fn take_handshake(&mut self, key: usize) -> Handshake {
        let hs = self.handshakes.remove(key);
        if let Some(n) = self.pending_by_ip.get_mut(&hs.ip) {
            *n -= 1;
            if *n == 0 {
                self.pending_by_ip.remove(&hs.ip);
            }
        }
        hs
    }

    /// Gives back a connection's slots: in `max_connections` and its address's.
    fn release_slot(&self, ip: IpAddr) {
        // Relaxed: see `handshake_readable`.
        self.common.open.fetch_sub(1, Ordering::Relaxed);
        self.common.per_ip.give(ip, self.cfg.max_connections_per_ip);
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now >= h.deadline)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            let mut hs = self.take_handshake(k);
            let _ = self.poll.registry().deregister(hs.stream.tcp());
            self.core.stats.rejected_bad_request += 1;
            let resp = handshake::error(408, "Request Timeout", "handshake timeout\n");
            self.refusals.refused(Some(hs.ip), "timeout", &resp);
            let _ = hs.stream.write(&resp);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        mut stream: Stream,
        kind: ConnKind,
        response: &[u8],
        early: &[u8],
        start: Start,
        expires: Option<u64>,
        ip: IpAddr,
        now: Instant,
    ) {
        if self.shutdown_deadline.is_some() {
            self.release_slot(ip);
            let resp = handshake::error(503, "Service Unavailable", "shutting down\n");
            self.refusals.refused(Some(ip), "shutting_down", &resp);
            let _ = stream.write(&resp);
            return;
        }
        let id = match self.core.adopt_start(kind, response, early, start, now) {
            Ok(id) => id,
            Err(_) => {
                // Relaxed: see `handshake_readable`.
                self.release_slot(ip);
                let resp = handshake::error(
                    429,
                    "Too Many Requests",
                    "too many connections for this user\n",
                );
                self.refusals.refused(Some(ip), "user_limit", &resp);
                let _ = stream.write(&resp);
                return;
            }
        };
        if self
            .poll
            .registry()
            .register(stream.tcp(), Token(id), Interest::READABLE)
            .is_err()
        {
            self.core.remove(id);
            self.release_slot(ip);
            return;
        }
        self.core
            .set_expiry(id, expires.map(|until| instant_of(until, now)));
        if let Some(user) = self.core.conn(id).user() {
            tracing::debug!(user = %String::from_utf8_lossy(user), peer = %ip, conn = id, "connection open");
        }
        if self.sockets.len() <= id {
            self.sockets.resize_with(id + 1, || None);
        }
        self.sockets[id] = Some((stream, false, ip));
        // Write the 101 now (unless the connection waits for its stream's state: see
        // `Core::take_writable`), and read anything that arrived before registration.
        if !self.core.waits_for_stream(id) {
            self.flush(id);
        }
        self.read_conn(id, now);
    }

    /// Verifies the tokens of in-band `auth` messages and hands the outcomes to the core.
    fn verify_auth_requests(&mut self, now: Instant) {
        for (id, token) in self.core.take_auth_requests() {
            let verified = self
                .common
                .verifier
                .verify_until(Some(&token))
                .map(|(user, until)| (user, Some(instant_of(until, now))))
                .map_err(AuthError::as_str);
            self.core.on_reauth(id, verified, now);
        }
    }

    fn read_conn(&mut self, id: ConnId, now: Instant) {
        let Some(Some((stream, _, _))) = self.sockets.get_mut(id) else {
            return;
        };
        for _ in 0..READS_PER_PASS {
            match stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.dead.push(id);
                    return;
                }
                Ok(n) => self.core.on_input(id, &self.read_buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead.push(id);
                    return;
                }
            }
        }
        self.reread.push(id);
    }

    /// Writes `id`'s queued bytes: one `write` call, more only after a partial write. A refused
    /// write registers WRITABLE interest; it is dropped again once the buffer is empty.
    fn flush(&mut self, id: ConnId) {
        let Some(Some((stream, want_writable, _))) = self.sockets.get_mut(id) else {
            return;
        };
        if self.spool_stalled {
            // Written once the spool catches up (the connection stays listed as urgent).
            return;
        }
        loop {
            let out = self.core.conn(id).out();
            if out.is_empty() {
                // TLS: what rustls holds must go out too before WRITABLE interest is dropped.
                match stream.flush_pending() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !wait_writable(&self.poll, stream, want_writable, id) {
                            self.dead.push(id);
                        }
                        return;
                    }
                    Err(_) => {
                        self.dead.push(id);
                        return;
                    }
                }
            }
            match stream.write(out) {
                Ok(n) => self.core.on_written(id, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.on_write_blocked(id);
                    if !wait_writable(&self.poll, stream, want_writable, id) {
                        self.dead.push(id);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) => {
                    // The kernel is short of buffer memory: the breaker opens (events wait in
                    // history) rather than losing the connection.
                    if !self.core.on_write_error(id, Instant::now()) {
                        self.dead.push(id);
                    }
                    return;
                }
                Err(_) => {
                    self.dead.push(id);
                    return;
                }
            }
        }
        if *want_writable {
            *want_writable = false;
            if self
                .poll
                .registry()
                .reregister(stream.tcp(), Token(id), Interest::READABLE)
                .is_err()
            {
                self.dead.push(id);
            }
        }
        if self.core.conn(id).is_done() {
            self.dead.push(id);
        }
    }

    /// Closes and forgets finished or failed connections.
    fn reap(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        self.dead.sort_unstable();
        self.dead.dedup();
        for id in std::mem::take(&mut self.dead) {
            let Some((mut stream, _, ip)) = self.sockets.get_mut(id).and_then(Option::take) else {
                continue;
            };
            let _ = self.poll.registry().deregister(stream.tcp());
            if tracing::enabled!(tracing::Level::DEBUG) {
                let c = self.core.conn(id);
                if let Some(user) = c.user() {
                    let closer = c.closer();
                    tracing::debug!(
                        user = %String::from_utf8_lossy(user),
                        peer = %ip,
                        conn = id,
                        close_code = closer.code,
                        closed_by = if closer.code == 0 { "nobody" } else if closer.by_client { "client" } else { "server" },
                        "connection closed"
                    );
                }
            }
            self.core.remove(id);
            self.release_slot(ip);
        }
    }
}

/// The address a listener actually bound (for port 0).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Registers WRITABLE interest for connection `id` unless `want` says it is registered (a
/// blocked write waits for the socket); false when the poll refused.
fn wait_writable(poll: &Poll, stream: &mut Stream, want: &mut bool, id: ConnId) -> bool {
    if *want {
        return true;
    }
    *want = true;
    let interest = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .reregister(stream.tcp(), Token(id), interest)
        .is_ok()
}

/// Wraps an accepted socket: in a TLS session when the port serves TLS.
fn wrap(common: &Common, tcp: TcpStream) -> io::Result<Stream> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &common.tls {
        return Ok(Stream::Tls(Box::new(TlsStream {
            session: tls.session()?,
            tcp,
        })));
    }
    let _ = common;
    Ok(Stream::Plain(tcp))
}

/// A connection's socket, plain or under TLS (feature `tls`). Everything the reactor reads
/// from or writes to a connection goes through it; the plain side is the socket's own calls.
pub(crate) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

/// A socket and its rustls server session.
#[cfg(feature = "tls")]
pub(crate) struct TlsStream {
    tcp: TcpStream,
    session: rustls::ServerConnection,
}

impl Stream {
    /// The socket, for registering with the poll.
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(t) => t,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => &mut t.tcp,
        }
    }

    /// The same connection for a blocking thread (still in non-blocking mode: the thread
    /// sets the mode it reads in).
    fn into_blocking(self) -> Blocking {
        let std = |tcp: TcpStream| std::net::TcpStream::from(std::os::fd::OwnedFd::from(tcp));
        match self {
            Stream::Plain(t) => Blocking::Plain(std(t)),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => {
                let TlsStream { tcp, session } = *t;
                Blocking::Tls(Box::new(rustls::StreamOwned::new(session, std(tcp))))
            }
        }
    }

    /// Writes out what a TLS session holds (handshake records, encrypted data); `WouldBlock`
    /// while some remains. Nothing to do on a plain socket.
    fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.flush_pending(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    /// Plain: one `write` call. TLS: takes what the session's buffer accepts (after writing out
    /// what it held), encrypts it and writes as much as the socket takes; the rest goes out
    /// through [`Stream::flush_pending`].
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}

#[cfg(feature = "tls")]
impl TlsStream {
    fn flush_pending(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            if self.session.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext yet: take more records from the socket (`WouldBlock` goes up).
            if self.session.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            let processed = self.session.process_new_packets();
            // Handshake replies, or the alert that says why the session failed.
            match self.flush_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_pending()?;
        let n = self.session.writer().write(buf)?;
        match self.flush_pending() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

/// A connection the reactor hands to a blocking thread (the ingest endpoints' threads): the
/// socket, and under TLS the session its handshake began, with any records it holds.
pub(crate) enum Blocking {
    /// A plain socket.
    Plain(std::net::TcpStream),
    /// A socket under its rustls session.
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>>),
}

impl Blocking {
    /// The socket, for its options and for a clone that can shut it down from another thread.
    pub(crate) fn socket(&self) -> &std::net::TcpStream {
        match self {
            Blocking::Plain(t) => t,
            #[cfg(feature = "tls")]
            Blocking::Tls(t) => &t.sock,
        }
    }

    /// Ends the connection: under TLS a `close_notify` first (so the peer can tell the end
    /// from a cut), then the socket is shut down both ways.
    pub(crate) fn close(&mut self) {
        #[cfg(feature = "tls")]
        if let Blocking::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(t) => t.read(buf),
            #[cfg(feature = "tls")]
            Blocking::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(t) => t.write(buf),
            #[cfg(feature = "tls")]
            Blocking::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Blocking::Plain(t) => t.flush(),
            #[cfg(feature = "tls")]
            Blocking::Tls(t) => t.flush(),
        }
    }
}
