//! [`Gateway`] and its one builder.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::auth::Verifier;
use crate::config::{Config, JwtKey, Settings};
use crate::core::Boards;
use crate::emitter::{Emitter, EmitterShared, ShardLink};
use crate::error::{ConfigError, Error};
use crate::metrics::{MetricsSnapshot, Registry};
use crate::reactor::{self, Cmd, Common, ReactorConfig, Shard, ShardHandle, ShardReport};

/// Opens each shard's spool (recovering what it holds) and the dead-letter file.
fn open_durable(
    cfg: &Config,
    shards: usize,
    checkpoint_spacing: u64,
) -> Result<Vec<crate::reactor::Durable>, Error> {
    let mut out: Vec<crate::reactor::Durable> = (0..shards).map(|_| Default::default()).collect();
    if let Some(dir) = &cfg.spool_dir {
        let scfg = crate::spool::SpoolConfig {
            dir: dir.clone(),
            segment_bytes: cfg.spool_segment_bytes,
            max_bytes: cfg.spool_max_bytes,
            max_age: cfg.spool_max_age,
            fsync: cfg.spool_fsync,
            repair: cfg.spool_repair,
            max_unacked: cfg.ack_max_pending,
        };
        for (i, d) in out.iter_mut().enumerate() {
            d.spool = Some(crate::spool::Spool::open(
                &scfg,
                i,
                shards,
                checkpoint_spacing,
            )?);
        }
    }
    if let Some(path) = cfg.dead_letter_path() {
        for d in out.iter_mut() {
            // 0600: dead letters are users' events.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    let msg = format!("dead-letter file `{}`: {e}", path.display());
                    Error::Io(std::io::Error::new(e.kind(), msg))
                })?;
            d.dead_letters = Some(f);
        }
    }
    Ok(out)
}

/// A running gateway: a listening socket, one reactor thread per shard, and the rings from its
/// emitters. Build one with [`Gateway::builder`]; stop it with [`Gateway::shutdown`] (dropping
/// it does the same, ignoring the report).
///
/// ```
/// # fn main() -> Result<(), floodgate::Error> {
/// let gw = floodgate::Gateway::builder()
///     .bind("127.0.0.1:0") // any free port; see local_addr()
///     .jwt_hs256_secret("a-secret-of-at-least-thirty-two-bytes!")
///     .build()?;
/// println!("clients connect to ws://{}/ws with a JWT", gw.local_addr());
/// let mut em = gw.emitter(); // one per producing thread
/// em.agent_started("user-1", "run-1")?;
/// let report = gw.shutdown()?; // everything emitted is routed first
/// assert_eq!(report.metrics.stats.events_received, 1);
/// assert_eq!(report.undelivered, 0);
/// # Ok(()) }
/// ```
pub struct Gateway {
    /// What its emitters share.
    emitters: Arc<EmitterShared>,
    /// The Redis engine's publisher and log reader.
    #[cfg(feature = "redis")]
    redis: Option<crate::redis_engine::node::Node>,
    /// The shards, by index.
    shards: Box<[ShardHandle]>,
    /// The ingest endpoints' connection threads.
    ingest: Arc<crate::ingest::Hub>,
    threads: Vec<JoinHandle<ShardReport>>,
    local_addr: SocketAddr,
    /// The thread that reads a JWKS again (stopped and joined when the gateway is dropped).
    _jwks: Option<crate::jwks::Refresher>,
    /// TLS on the port, for [`Gateway::reload_tls`].
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::ServerTls>>,
}

/// What [`Gateway::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Events still in rings when shutdown began, routed before the connections were closed.
    pub drained_from_rings: u64,
    /// Events accepted by `emit` that did not reach a socket: queued on a connection that did
    /// not drain within `shutdown_timeout`, or whose connection was already closing. Zero when
    /// every client read everything.
    pub undelivered: u64,
    /// Events that needed an ack and had none when the gateway stopped without a spool:
    /// written to the dead-letter file (reason `shutdown`). With a spool they are kept for the
    /// next start instead, and this is zero.
    pub unacked_dead_lettered: u64,
    /// Counters at the end.
    pub metrics: MetricsSnapshot,
}

impl Gateway {
    /// The one way to configure and start a gateway.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// A new emitter for one producing thread. Cheap enough to create per thread, not per event:
    /// it allocates one ring per shard (`ring_capacity` bytes each).
    pub fn emitter(&self) -> Emitter {
        Emitter::new(self.emitters.clone())
    }

    /// Closes every open connection of `user` with close code 4002 (`CLOSE_DISCONNECTED`),
    /// for example when the user is revoked. It happens on the user's shard's next pass (this
    /// call only sends the order). It does not stop the user from connecting again with a token
    /// that is still valid: revoke by also no longer issuing tokens (a connection lives only
    /// as long as its token, see `CLOSE_TOKEN_EXPIRED`). The same is available to other
    /// processes as `POST /api/disconnect` with the ingest API key.
    pub fn disconnect_user(&self, user: &str) -> Result<(), Error> {
        if user.is_empty() || user.len() > crate::record::MAX_USER_LEN {
            return Err(crate::error::ConfigError::new("user", "must be 1 to 255 bytes").into());
        }
        reactor::disconnect(&self.shards, user.as_bytes());
        Ok(())
    }

    /// The address the gateway listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the port serves TLS (`wss://`).
    pub fn serves_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Loads the TLS certificate and key files again: connections accepted from now on get
    /// the new certificate, open ones keep their session. A file that cannot be used leaves
    /// the certificate in use and is reported. Without TLS, nothing happens.
    pub fn reload_tls(&self) -> Result<(), Error> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.reload().map_err(|reason| {
                Error::Config(crate::error::ConfigError::new("tls_cert_file", reason))
            });
        }
        Ok(())
    }

    /// A sum of every shard's counters as last published (at most one reactor pass old).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.emitters.registry.snapshot()
    }

    /// Stops the gateway: stops accepting, routes every event already accepted into a ring,
    /// sends close 1001 to every client after its events, flushes for up to `shutdown_timeout`,
    /// then joins every thread. Emitters still alive get [`EmitError::Closed`](crate::EmitError)
    /// from then on.
    pub fn shutdown(mut self) -> Result<ShutdownReport, Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ShutdownReport, Error> {
        // Publishers first: what they emitted is in the rings, which the shards drain below.
        self.ingest.shutdown();
        let mut report = ShutdownReport::default();
        // On the Redis engine, what was emitted goes to Redis, and from the log (every node's
        // events) into the shards' rings, before the shards stop.
        #[cfg(feature = "redis")]
        if let Some(node) = self.redis.as_mut() {
            report.undelivered += node.stop() as u64;
        }
        for shard in self.shards.iter() {
            shard.send(Cmd::Shutdown);
        }
        let mut panic = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(r) => {
                    report.drained_from_rings += r.drained_at_shutdown;
                    report.undelivered += r.undelivered;
                    report.unacked_dead_lettered += r.unacked_dead_lettered;
                }
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    panic = Some(msg);
                }
            }
        }
        report.metrics = self.metrics();
        match panic {
            Some(msg) => Err(Error::ReactorPanicked(msg)),
            None => Ok(report),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Gateway`]. Every setter only records its value; [`build`](Self::build)
/// checks them all (and every pair that must agree) and returns the first problem as
/// [`Error::Config`], naming the setting.
///
/// ```
/// use floodgate::{Error, Gateway};
/// let secret = "a-secret-of-at-least-thirty-two-bytes!";
/// let builder = Gateway::builder()
///     .bind("127.0.0.1:0")
///     .jwt_hs256_secret(secret)
///     .max_connections_per_user(8)
///     .history_max_events(4096);
/// builder.validate().expect("a consistent configuration");
///
/// // A bad value is refused before anything starts, naming the setting to change.
/// let bad = Gateway::builder().jwt_hs256_secret(secret).max_batch_events(0);
/// match bad.build() {
///     Err(Error::Config(e)) => assert_eq!(e.setting, "max_batch_events"),
///     other => panic!("expected a config error, got {other:?}"),
/// }
/// ```
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    bind: Result<SocketAddr, String>,
    keys: Vec<(&'static str, JwtKey)>,
    /// `jwt_jwks_ca_file`, applied to a `jwt_jwks_url` key.
    jwks_ca_file: Option<PathBuf>,
    cfg: Config,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            bind: Ok(SocketAddr::from(([127, 0, 0, 1], 8080))),
            keys: Vec::new(),
            jwks_ca_file: None,
            // Replaced by the single configured key in `build`.
            cfg: Config::defaults(JwtKey::Hs256(Vec::new())),
        }
    }
}

macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.cfg.$name = value;
                self
            }
        )*
    };
}

impl GatewayBuilder {
    /// Address to listen on, as `IP:port` (port 0 picks a free one) [default `127.0.0.1:8080`].
    pub fn bind(mut self, addr: impl AsRef<str>) -> Self {
        let text = addr.as_ref();
        self.bind = text.parse().map_err(|_| text.to_owned());
        self
    }

    /// Checks client JWTs with HS256 and this shared secret (at least 32 bytes).
    /// Exactly one JWT key must be configured.
    pub fn jwt_hs256_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.keys
            .push(("jwt_hs256_secret", JwtKey::Hs256(secret.as_ref().to_vec())));
        self
    }

    /// Checks client JWTs with RS256 and the PEM public key in this file.
    pub fn jwt_rs256_public_key(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.keys
            .push(("jwt_rs256_public_key", JwtKey::Rs256(pem_file.into())));
        self
    }

    /// Checks client JWTs with ES256 and the PEM public key in this file.
    pub fn jwt_es256_public_key(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.keys
            .push(("jwt_es256_public_key", JwtKey::Es256(pem_file.into())));
        self
    }

    /// Checks client JWTs with the RS256 and ES256 keys of the JSON Web Key Set in this file
    /// (by each token's `kid`), read again every `jwt_jwks_refresh`.
    pub fn jwt_jwks_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.keys.push((
            "jwt_jwks_file",
            JwtKey::Jwks(crate::jwks::JwksSource::File(file.into())),
        ));
        self
    }

    /// Checks client JWTs with the keys of the JSON Web Key Set at this URL (`https://`, or
    /// `http://` to a loopback address; feature `jwks-url`), fetched at start, every
    /// `jwt_jwks_refresh`, and when a token names a key id the set lacks (at most every 10 s).
    pub fn jwt_jwks_url(mut self, url: impl Into<String>) -> Self {
        self.keys.push((
            "jwt_jwks_url",
            JwtKey::Jwks(crate::jwks::JwksSource::Url {
                url: url.into(),
                ca_file: None,
            }),
        ));
        self
    }

    /// Trusts only the CA certificates in this PEM file (not the Mozilla roots) for the
    /// `jwt_jwks_url` server: a private identity provider.
    pub fn jwt_jwks_ca_file(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.jwks_ca_file = Some(pem_file.into());
        self
    }

    setters! {
        /// How often a JWKS (`jwt_jwks_file`, `jwt_jwks_url`) is read again [default 5 min,
        /// 10 s to 24 h].
        jwt_jwks_refresh: Duration,
        /// Clock skew tolerated on `exp` and `nbf` [default 30 s, at most 10 min].
        jwt_leeway: Duration,
        /// Reactor threads; 0 = one per core [default 0, at most 256].
        shards: usize,
        /// Bytes of each emitter-to-shard ring, a power of two from 4 KiB to 1 GiB [default 1 MiB].
        ring_capacity: usize,
        /// Largest encoded event `emit` accepts [default 64 KiB; at most a quarter of
        /// `ring_capacity` less 297 bytes of record overhead].
        max_event_bytes: usize,
        /// Write a connection's queued frames once this many are pending [default 1024, 1 to 65536].
        max_batch_events: usize,
        /// ...or once the oldest is this old; zero writes at the end of every reactor pass
        /// [default 0, at most 1 s; must be 0 when `max_batch_events` is 1].
        max_batch_delay: Duration,
        /// Per-connection cap on unsent bytes: a connection that would pass it (or stays over
        /// half of it for `breaker_trip_after`) has its breaker opened; with breakers off it is
        /// closed as a slow consumer (4008) [default 8 MiB; at least 2 x (`max_event_bytes` +
        /// 64)].
        max_outbound_bytes: usize,
        /// Open WebSocket connections in total; more get HTTP 503 [default 100 000].
        max_connections: usize,
        /// Open WebSocket connections per user; more get HTTP 429 [default 64].
        max_connections_per_user: usize,
        /// Open WebSocket connections from one peer address; more get HTTP 503; 0 = no limit
        /// [default 0: clients behind a proxy or load balancer all share its address].
        max_connections_per_ip: usize,
        /// Handshakes in progress (accepted, request head not yet complete) from one peer
        /// address; more get HTTP 503 at once [default 128, 1 to 4096].
        max_pending_handshakes_per_ip: usize,
        /// Largest inbound frame payload [default 64 KiB, at least 125].
        max_frame_size: usize,
        /// Largest inbound message [default 1 MiB, at least `max_frame_size`].
        max_message_size: usize,
        /// Per-connection WebSocket read buffer: allocated when a connection opens, and the most
        /// read into it at once (it grows for a larger frame) [default 1 KiB, 1 KiB to 1 MiB].
        read_buffer_size: usize,
        /// Time allowed for the HTTP upgrade request [default 5 s].
        handshake_timeout: Duration,
        /// Interval between server pings; zero disables them [default 25 s, else at least 1 s].
        ping_interval: Duration,
        /// A connection whose pong is this late has its breaker opened, and is closed (4010) if
        /// still silent after `breaker_cooldown`; at once with breakers off [default 10 s].
        pong_timeout: Duration,
        /// Wait this long for the client's close frame after sending ours [default 5 s].
        close_timeout: Duration,
        /// How long `shutdown` keeps flushing before reporting what was not delivered [default 5 s].
        shutdown_timeout: Duration,
        /// Serve the unauthenticated `/echo` endpoint for conformance tests [default false].
        echo: bool,
        /// Serve the live dashboard at `/dashboard` and its JSON at `/dashboard/stats`
        /// (unauthenticated, like `/metrics`: counts only) [default false].
        dashboard: bool,
        /// Streams kept for users without connections; past this they are dropped and such a
        /// user's next stream starts at `seq` 1 with a new epoch [default 1 000 000].
        max_offline_users: usize,
        /// Events kept per user so a reconnecting client can resume; 0 keeps none
        /// [default 1024, at most 1 048 576].
        history_max_events: usize,
        /// Bytes of frames kept per user [default 1 MiB; at least `max_event_bytes` + 64].
        history_max_bytes: usize,
        /// Events older than this are not kept for resume [default 10 min, at most 7 days].
        history_max_age: Duration,
        /// Memory for history, all users together (a ring per shard of this size divided by
        /// the shards; the oldest frames are overwritten when full) [default 64 MiB; at least
        /// `history_max_bytes` x shards].
        history_total_bytes: usize,
        /// A connection whose unsent bytes stay above half of `max_outbound_bytes` this long
        /// has its circuit breaker opened [default 1 s, at most 10 min].
        breaker_trip_after: Duration,
        /// How long an open breaker stays open before the connection is refilled from
        /// history; zero disables breakers, and slow consumers are closed with 4008 instead
        /// (default 30 s, at most 1 h; needs some history: `history_max_events` above 0, or a
        /// `spool_dir`).
        breaker_cooldown: Duration,
        /// Bytes per spool segment file [default 64 MiB, 64 KiB to 1 GiB].
        spool_segment_bytes: u64,
        /// Bytes of spool kept per shard; the oldest segments are deleted past it [default
        /// 1 GiB, at least 2 x `spool_segment_bytes`].
        spool_max_bytes: u64,
        /// Spool segments last written longer ago than this are deleted [default 24 h, 1 s to
        /// 30 days].
        spool_max_age: Duration,
        /// When the spool calls `fdatasync` [default every 100 ms].
        spool_fsync: crate::spool::FsyncPolicy,
        /// Start despite a corrupted record mid-segment, cutting the segment there [default
        /// false: such a spool refuses to start with an error naming the file and offset].
        spool_repair: bool,
        /// Unacked events go to the dead-letter file this long after they were emitted
        /// [default 10 min, 1 s to 7 days].
        ack_timeout: Duration,
        /// Unacked events kept per user; past this the oldest is dead-lettered; 0 = no
        /// redelivery [default 1024, at most 65536].
        ack_max_pending: usize,
        /// Receipts alive at once at most [default 65536, 1 to 2^24].
        receipt_capacity: usize,
        /// Largest ingest request body or WebSocket message [default 1 MiB, 1 KiB to 64 MiB].
        ingest_max_body_bytes: usize,
        /// Most events in one ingest batch [default 1000, 1 to 100 000].
        ingest_max_batch_events: usize,
        /// Events per second accepted through ingest, all connections together; a batch over
        /// it is refused whole [default 1 000 000, at least 1].
        ingest_max_events_per_sec: u64,
        /// Open ingest connections at most [default 64, 1 to 4096].
        ingest_max_connections: usize,
        /// An ingest connection that sends nothing this long is closed [default 60 s, 100 ms
        /// to 1 h].
        ingest_idle_timeout: Duration,
        /// How long an accepted event's `idempotency_key` is remembered per user; the same
        /// key again within it is answered `duplicate` [default 10 min, at most 24 h].
        ingest_dedupe_window: Duration,
        /// Idempotency keys remembered at most; past it the oldest are forgotten early
        /// [default 100 000, 1 to 10 000 000].
        ingest_dedupe_capacity: usize,
        /// Where streams are sequenced and kept: this process, or one Redis shared by several
        /// gateway nodes (needs `redis_url` and the `redis` feature) [default local].
        engine: crate::config::Engine,
        /// The prefix of every Redis key: 1 to 64 characters from `A-Z a-z 0-9 _ . -`
        /// [default `floodgate`].
        redis_prefix: String,
        /// Bytes of batches the Redis log keeps at most, shared by every node; the oldest are
        /// trimmed past it [default 256 MiB, 1 MiB to 1 TiB; Redis engine only].
        redis_log_max_bytes: u64,
        /// Batches of the Redis log older than this (by Redis's clock) are trimmed as batches
        /// are appended; a user's index lives this long after the user's last event [default
        /// 1 h, 1 s to 30 days; Redis engine only].
        redis_log_max_age: Duration,
    }

    /// Turns on the ingest endpoints for out-of-process publishers (`POST /api/publish` and
    /// the `/api/ingest` WebSocket), which must present this key as
    /// `Authorization: Bearer <key>`; at least 16 printable characters [default: off].
    pub fn ingest_api_key(mut self, key: impl Into<String>) -> Self {
        self.cfg.ingest_api_key = Some(crate::config::ApiKey(key.into()));
        self
    }

    /// Keeps every event in a durable spool in `dir` (segment files, created if missing):
    /// written before any client sees it, replayed when memory history no longer has the
    /// range, and recovered at start so a restart keeps each user's epoch and events
    /// [default: no spool, history in memory only].
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cfg.spool_dir = Some(dir.into());
        self
    }

    /// Serves TLS on the port with this certificate chain and private key (PEM files; feature
    /// `tls`): clients connect with `wss://`. [`Gateway::reload_tls`] loads them again
    /// [default: plain `ws://`].
    pub fn tls(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.cfg.tls_cert_file = Some(cert_file.into());
        self.cfg.tls_key_file = Some(key_file.into());
        self
    }

    /// The Redis of [`Engine::Redis`](crate::Engine::Redis), as
    /// `redis://[user:password@]host:port[/db]` [default: unset; required with that engine,
    /// refused without it].
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.cfg.redis_url = Some(crate::config::RedisUrl(url.into()));
        self
    }

    /// Tokens must carry this `aud` claim (or a list holding it) [default: `aud` not checked].
    pub fn jwt_audience(mut self, aud: impl Into<String>) -> Self {
        self.cfg.jwt_audience = Some(aud.into());
        self
    }

    /// Tokens must carry this `iss` claim [default: `iss` not checked].
    pub fn jwt_issuer(mut self, iss: impl Into<String>) -> Self {
        self.cfg.jwt_issuer = Some(iss.into());
        self
    }

    /// Browser origins allowed to open WebSockets: exact (`https://app.example.com`) or any
    /// subdomain (`https://*.example.com`). A handshake whose `Origin` header is another gets
    /// 403; one without the header (not from a browser) is let through, since the token
    /// guards every connection [default: empty, every origin].
    pub fn allowed_origins<S: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Self {
        self.cfg.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Appends dead-lettered events to this file, one JSON object per line [default
    /// `<spool_dir>/dead-letter.jsonl`; without a spool they are logged at warn level].
    pub fn dead_letter_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.cfg.dead_letter_file = Some(file.into());
        self
    }

    /// Applies one layer of [`Settings`] (from a file, the environment or flags): each field that
    /// is set replaces the current value.
    pub fn settings(mut self, s: Settings) -> Self {
        if let Some(v) = s.bind {
            self.bind = Ok(v);
        }
        if let Some(v) = s.jwt_hs256_secret {
            self = self.jwt_hs256_secret(v);
        }
        if let Some(v) = s.jwt_rs256_public_key {
            self = self.jwt_rs256_public_key(v);
        }
        if let Some(v) = s.jwt_es256_public_key {
            self = self.jwt_es256_public_key(v);
        }
        if let Some(v) = s.jwt_jwks_file {
            self = self.jwt_jwks_file(v);
        }
        if let Some(v) = s.jwt_jwks_url {
            self = self.jwt_jwks_url(v);
        }
        if let Some(v) = s.jwt_jwks_ca_file {
            self = self.jwt_jwks_ca_file(v);
        }
        if let Some(v) = s.spool_dir {
            self.cfg.spool_dir = Some(v);
        }
        if let Some(v) = s.tls_cert_file {
            self.cfg.tls_cert_file = Some(v);
        }
        if let Some(v) = s.tls_key_file {
            self.cfg.tls_key_file = Some(v);
        }
        if let Some(v) = s.dead_letter_file {
            self.cfg.dead_letter_file = Some(v);
        }
        if let Some(v) = s.ingest_api_key {
            self = self.ingest_api_key(v);
        }
        if let Some(v) = s.redis_url {
            self = self.redis_url(v);
        }
        if let Some(v) = s.jwt_audience {
            self.cfg.jwt_audience = Some(v);
        }
        if let Some(v) = s.jwt_issuer {
            self.cfg.jwt_issuer = Some(v);
        }
        if let Some(v) = s.allowed_origins {
            self.cfg.allowed_origins = v;
        }
        macro_rules! apply {
            ($($f:ident),*) => { $( if let Some(v) = s.$f { self.cfg.$f = v; } )* };
        }
        crate::config::with_plain_settings!(apply);
        self
    }

    /// Validates the configuration without starting anything.
    pub fn validate(&self) -> Result<(), Error> {
        self.resolved().map(|_| ())
    }

    fn resolved(&self) -> Result<Config, Error> {
        let mut cfg = self.cfg.clone();
        cfg.bind = self.bind.clone().map_err(|text| {
            ConfigError::new("bind", format!("`{text}` is not an IP:port address"))
        })?;
        match self.keys.as_slice() {
            [] => {
                return Err(ConfigError::new(
                    "jwt_hs256_secret",
                    "no JWT key configured: set exactly one of jwt_hs256_secret, \
                     jwt_rs256_public_key, jwt_es256_public_key, jwt_jwks_file or jwt_jwks_url",
                )
                .into())
            }
            [(_, key)] => cfg.jwt = key.clone(),
            [(first, _), (second, _), ..] => {
                return Err(ConfigError::new(
                    second,
                    format!("conflicts with {first}: configure exactly one JWT key"),
                )
                .into())
            }
        }
        if let Some(ca) = &self.jwks_ca_file {
            match &mut cfg.jwt {
                JwtKey::Jwks(crate::jwks::JwksSource::Url { ca_file, .. }) => {
                    *ca_file = Some(ca.clone());
                }
                _ => {
                    return Err(ConfigError::new(
                        "jwt_jwks_ca_file",
                        "is only used with jwt_jwks_url: leave it out",
                    )
                    .into())
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Validates everything, binds the listener and starts the reactor threads. It also raises
    /// the process's soft `nofile` limit to its hard limit (never lowers it), as a server
    /// needs a descriptor per connection, and logs a warning when even the hard limit is
    /// below `max_connections` + 256.
    pub fn build(self) -> Result<Gateway, Error> {
        let cfg = self.resolved()?;
        let (verifier, jwks) = match &cfg.jwt {
            JwtKey::Jwks(source) => {
                let (set, woken) =
                    crate::jwks::KeySet::open(source.clone()).map_err(|reason| Error::Key {
                        path: source.to_string(),
                        reason,
                    })?;
                let refresher =
                    crate::jwks::Refresher::start(set.clone(), woken, cfg.jwt_jwks_refresh)
                        .map_err(Error::Io)?;
                (Verifier::with_key_set(set, cfg.jwt_leeway), Some(refresher))
            }
            key => (Verifier::new(key, cfg.jwt_leeway)?, None),
        };
        let verifier = verifier.with_claims(cfg.jwt_audience.as_deref(), cfg.jwt_issuer.as_deref());
        #[cfg(feature = "tls")]
        let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                crate::tls::ServerTls::open(cert, key)
                    .map_err(|reason| ConfigError::new("tls_cert_file", reason))?,
            )),
            _ => None,
        };
        raise_nofile(cfg.max_connections);
        let (listener, local_addr) = reactor::bind(cfg.bind).map_err(|source| Error::Bind {
            addr: cfg.bind,
            source,
        })?;
        let n = cfg.shard_count();
        let prepared = (0..n)
            .map(|_| reactor::prepare())
            .collect::<Result<Vec<_>, _>>()?;
        let shards: Box<[ShardHandle]> = prepared.iter().map(|p| p.handle.clone()).collect();
        let registry = Arc::new(Registry::new(n));
        let mut core = cfg.core();
        let boards = Boards::new(cfg.receipt_capacity);
        let links: Box<[ShardLink]> = prepared
            .iter()
            .map(|p| ShardLink {
                rings: p.rings.clone(),
                parker: p.handle.parker.clone(),
            })
            .collect();
        #[cfg(feature = "redis")]
        let (redis, sync_requests, links) = redis_node(&cfg, links, &registry, &boards)?;
        #[cfg(not(feature = "redis"))]
        let sync_requests = None;
        // Redis engine: a ring from each shard to the publisher for its clients' acks.
        let mut ack_links: Vec<Option<reactor::AckLink>> = (0..n)
            .map(|_| {
                let link = sync_requests.as_ref().map(|_| &links[0])?;
                let (producer, consumer) = crate::ring::channel(ACK_RING_BYTES);
                link.rings.send(consumer).ok()?;
                Some(reactor::AckLink {
                    producer,
                    parker: link.parker.clone(),
                })
            })
            .collect();
        let emitters = Arc::new(EmitterShared {
            shards: links,
            registry: registry.clone(),
            ring_capacity: cfg.ring_capacity,
            max_event_bytes: cfg.max_event_bytes,
            boards: boards.clone(),
            // Calibrates the counter once per process (about 40 ms), here rather than in the
            // application's first `emitter()` call.
            clock: quanta::Clock::new(),
        });
        let ingest = Arc::new(crate::ingest::Hub::new(
            crate::ingest::IngestConfig::from_config(&cfg),
            emitters.clone(),
            shards.clone(),
        ));
        let common = Arc::new(Common {
            per_ip: Default::default(),
            peers: shards.clone(),
            verifier,
            #[cfg(feature = "tls")]
            tls: tls.clone(),
            registry,
            open: AtomicUsize::new(0),
            ingest: Box::new(ingest.clone()),
            sync_requests,
        });
        // Epochs of this process's streams must not repeat those of an earlier run.
        core.epoch_seed = getrandom::u64().map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let rcfg = ReactorConfig {
            optional: crate::core::handshake::Optional {
                echo: cfg.echo,
                dashboard: cfg.dashboard,
            },
            max_pending_per_ip: cfg.max_pending_handshakes_per_ip,
            max_connections_per_ip: cfg.max_connections_per_ip,
            origins: crate::core::handshake::OriginPolicy::new(&cfg.allowed_origins)
                .expect("validated"),
            max_connections: cfg.max_connections,
            handshake_timeout: cfg.handshake_timeout,
            shutdown_timeout: cfg.shutdown_timeout,
            core,
            boards,
        };
        let mut durables = open_durable(&cfg, n, rcfg.core.spool_checkpoint_bytes)?;
        let mut listener = Some(listener);
        let mut threads = Vec::with_capacity(n);
        for (i, prepared) in prepared.into_iter().enumerate() {
            let durable = std::mem::take(&mut durables[i]);
            let shard = Shard::new(
                i,
                prepared,
                common.clone(),
                rcfg.clone(),
                listener.take(),
                durable,
            )?
            .with_ack_link(ack_links[i].take());
            let t = std::thread::Builder::new()
                .name(format!("floodgate-reactor-{i}"))
                .spawn(move || shard.run())?;
            threads.push(t);
        }
        Ok(Gateway {
            emitters,
            #[cfg(feature = "redis")]
            redis,
            shards,
            ingest,
            threads,
            local_addr,
            _jwks: jwks,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

/// On the Redis engine, starts the node's publisher and log reader: emitters' rings then lead
/// to the publisher instead of `shards`, and the shards get every node's events from the
/// reader. Returns the node, where shards send sync requests, and the emitters' links.
#[cfg(feature = "redis")]
#[allow(clippy::type_complexity)]
fn redis_node(
    cfg: &Config,
    shards: Box<[ShardLink]>,
    registry: &Registry,
    boards: &Boards,
) -> Result<
    (
        Option<crate::redis_engine::node::Node>,
        Option<crossbeam_channel::Sender<crate::record::SyncRequest>>,
        Box<[ShardLink]>,
    ),
    Error,
> {
    use crate::redis_engine::node::{Node, NodeConfig, ShardInbox};
    let url = match &cfg.redis_url {
        Some(url) if cfg.engine == crate::config::Engine::Redis => url,
        _ => return Ok((None, None, shards)),
    };
    let inboxes: Vec<ShardInbox> = shards
        .iter()
        .map(|l| ShardInbox {
            rings: l.rings.clone(),
            parker: l.parker.clone(),
        })
        .collect();
    let node_cfg = NodeConfig {
        url: url.0.clone(),
        prefix: cfg.redis_prefix.clone(),
        ring_capacity: cfg.ring_capacity,
        retention: crate::redis_engine::sequencer::Retention {
            max_bytes: cfg.redis_log_max_bytes,
            max_age: cfg.redis_log_max_age,
            index_entries: crate::redis_engine::subscriber::HISTORY_MAX,
        },
    };
    let (node, links) = Node::start(&node_cfg, &inboxes, boards.receipts.clone())?;
    let stats = node.stats.clone();
    if registry
        .redis
        .set(Box::new(move || stats.snapshot()))
        .is_err()
    {
        unreachable!("one node per registry");
    }
    let to_publisher: Box<[ShardLink]> = Box::new([ShardLink {
        rings: links.emit_rings,
        parker: links.emit_parker,
    }]);
    Ok((Some(node), Some(links.sync_requests), to_publisher))
}

/// Bytes of each shard's ring to the Redis engine's publisher for its clients' acks (an ack
/// record is about 40 bytes plus the user id; a full ring keeps acks for the next pass).
const ACK_RING_BYTES: usize = 64 << 10;

/// Descriptors the gateway needs besides one per connection: listener, polls, wakers, spool
/// segments, the dead-letter file, ingest sockets, and what the application holds.
const FD_HEADROOM: u64 = 256;

/// Raises the soft `nofile` limit to the hard one (only ever up: what a server should do, as
/// Go's runtime does at start), and warns when even that is short of `max_connections`: past
/// it, new connections are answered 503 until some close.
fn raise_nofile(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + FD_HEADROOM => tracing::warn!(
            nofile = limit,
            max_connections,
            "the nofile limit is below max_connections + {FD_HEADROOM}: past it, new \
             connections are refused with 503 (raise the hard limit, e.g. LimitNOFILE= in a \
             systemd unit or `ulimit -Hn`, or lower max_connections)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read or raise the nofile limit"),
    }
}
