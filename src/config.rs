//! Configuration: one validated [`Config`], built by [`GatewayBuilder`](crate::GatewayBuilder)
//! or from [`Settings`] layers (file, environment, flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tungstenite::protocol::WebSocketConfig;

use crate::core::{checkpoint_spacing, BatchPolicy, BreakerPolicy, CoreConfig, HistoryLimits};
use crate::error::ConfigError;
use crate::spool::FsyncPolicy;

/// Where JWT signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum JwtKey {
    /// HS256 with a shared secret.
    Hs256(Vec<u8>),
    /// RS256 with a PEM public key file.
    Rs256(PathBuf),
    /// ES256 with a PEM public key file.
    Es256(PathBuf),
    /// RS256 and ES256 keys from a JSON Web Key Set that is read again on a schedule.
    Jwks(JwksSource),
}

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwksSource {
    /// A file, read again at each refresh.
    File(PathBuf),
    /// An `https://` URL (or `http://` to a loopback address), fetched at each refresh; its
    /// certificate checked against the Mozilla roots, or only against the CA certificates in
    /// `ca_file` when set.
    Url {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Url { url, .. } => f.write_str(url),
        }
    }
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            JwtKey::Rs256(p) => write!(f, "Rs256({})", p.display()),
            JwtKey::Es256(p) => write!(f, "Es256({})", p.display()),
            JwtKey::Jwks(s) => write!(f, "Jwks({s})"),
        }
    }
}

/// Where streams are sequenced and kept: this process alone, or Redis shared by several
/// gateway nodes (docs/SCALING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// This process sequences every stream and keeps its history (and spool, if any).
    #[default]
    Local,
    /// Every node sequences through one Redis (`redis_url`): a user's connections, producers
    /// and resumes may land on any node. Needs the crate's `redis` feature.
    Redis,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Engine::Local),
            "redis" => Ok(Engine::Redis),
            other => Err(format!("`{other}`: expected `local` or `redis`")),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Local => "local",
            Engine::Redis => "redis",
        })
    }
}

impl<'de> Deserialize<'de> for Engine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Redis URL (`redis://[user:password@]host:port[/db]`); `Debug` hides a password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.split_once('@') {
            Some((_, host)) => write!(f, "RedisUrl(redis://<credentials>@{host})"),
            None => write!(f, "RedisUrl({})", self.0),
        }
    }
}

/// The smallest HS256 secret accepted, in bytes (RFC 7518 section 3.2: at least 256 bits).
pub const MIN_HS256_SECRET: usize = 32;

/// The ingest API key; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A complete, validated configuration. Obtain one through
/// [`Gateway::builder`](crate::Gateway::builder); defaults are documented on each setter.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub bind: SocketAddr,
    pub jwt: JwtKey,
    pub jwt_leeway: Duration,
    pub jwt_jwks_refresh: Duration,
    /// Required `aud` (when set).
    pub jwt_audience: Option<String>,
    /// Required `iss` (when set).
    pub jwt_issuer: Option<String>,
    /// Browser origins allowed to open WebSockets (empty: all).
    pub allowed_origins: Vec<String>,
    pub shards: usize,
    pub ring_capacity: usize,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
    pub max_batch_delay: Duration,
    pub max_outbound_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_ip: usize,
    pub max_pending_handshakes_per_ip: usize,
    pub max_frame_size: usize,
    pub max_message_size: usize,
    pub read_buffer_size: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub echo: bool,
    pub dashboard: bool,
    pub max_offline_users: usize,
    pub history_max_events: usize,
    pub history_max_bytes: usize,
    pub history_max_age: Duration,
    pub history_total_bytes: usize,
    pub breaker_trip_after: Duration,
    pub breaker_cooldown: Duration,
    pub spool_dir: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub spool_segment_bytes: u64,
    pub spool_max_bytes: u64,
    pub spool_max_age: Duration,
    pub spool_fsync: FsyncPolicy,
    pub spool_repair: bool,
    pub ack_timeout: Duration,
    pub ack_max_pending: usize,
    pub receipt_capacity: usize,
    pub dead_letter_file: Option<PathBuf>,
    pub ingest_api_key: Option<ApiKey>,
    pub ingest_max_body_bytes: usize,
    pub ingest_max_batch_events: usize,
    pub ingest_max_events_per_sec: u64,
    pub ingest_max_connections: usize,
    pub ingest_idle_timeout: Duration,
    pub ingest_dedupe_window: Duration,
    pub ingest_dedupe_capacity: usize,
    pub engine: Engine,
    /// Where the Redis engine's Redis is (required with it, refused without).
    pub redis_url: Option<RedisUrl>,
    /// The prefix of every Redis key of this deployment.
    pub redis_prefix: String,
    /// Bytes of batches the Redis log keeps at most.
    pub redis_log_max_bytes: u64,
    /// How old the Redis log's batches get at most.
    pub redis_log_max_age: Duration,
}

impl Config {
    pub(crate) fn defaults(jwt: JwtKey) -> Config {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt,
            jwt_leeway: Duration::from_secs(30),
            jwt_jwks_refresh: Duration::from_secs(300),
            jwt_audience: None,
            jwt_issuer: None,
            allowed_origins: Vec::new(),
            shards: 0,
            ring_capacity: 1 << 20,
            max_event_bytes: 64 << 10,
            max_batch_events: 1024,
            max_batch_delay: Duration::ZERO,
            max_outbound_bytes: 8 << 20,
            max_connections: 100_000,
            max_connections_per_user: 64,
            max_connections_per_ip: 0,
            max_pending_handshakes_per_ip: 128,
            max_frame_size: 64 << 10,
            max_message_size: 1 << 20,
            read_buffer_size: 1024,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            echo: false,
            dashboard: false,
            max_offline_users: 1_000_000,
            history_max_events: 1024,
            history_max_bytes: 1 << 20,
            history_max_age: Duration::from_secs(600),
            history_total_bytes: 64 << 20,
            breaker_trip_after: Duration::from_secs(1),
            breaker_cooldown: Duration::from_secs(30),
            spool_dir: None,
            tls_cert_file: None,
            tls_key_file: None,
            spool_segment_bytes: 64 << 20,
            spool_max_bytes: 1 << 30,
            spool_max_age: Duration::from_secs(86400),
            spool_fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            spool_repair: false,
            ack_timeout: Duration::from_secs(600),
            ack_max_pending: 1024,
            receipt_capacity: 65536,
            dead_letter_file: None,
            ingest_api_key: None,
            ingest_max_body_bytes: 1 << 20,
            ingest_max_batch_events: 1000,
            ingest_max_events_per_sec: 1_000_000,
            ingest_max_connections: 64,
            ingest_idle_timeout: Duration::from_secs(60),
            ingest_dedupe_window: Duration::from_secs(600),
            ingest_dedupe_capacity: 100_000,
            engine: Engine::Local,
            redis_url: None,
            redis_prefix: "floodgate".into(),
            redis_log_max_bytes: 256 << 20,
            redis_log_max_age: Duration::from_secs(3600),
        }
    }

    /// The core's configuration for one of `shard_count()` shards. The delivery and receipt
    /// boards are not configuration: the gateway hands them to `Core::new`.
    pub(crate) fn core(&self) -> CoreConfig {
        let mut ws = WebSocketConfig::default();
        ws.read_buffer_size = self.read_buffer_size;
        ws.write_buffer_size = 0;
        ws.max_frame_size = Some(self.max_frame_size);
        ws.max_message_size = Some(self.max_message_size);
        CoreConfig {
            batch: BatchPolicy {
                max_events: self.max_batch_events,
                max_delay: self.max_batch_delay,
            },
            max_outbound_bytes: self.max_outbound_bytes,
            max_connections_per_user: self.max_connections_per_user,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            close_timeout: self.close_timeout,
            max_offline_users: self.max_offline_users,
            ws,
            history: HistoryLimits {
                max_events: self.history_max_events,
                max_bytes: self.history_max_bytes,
                max_age: self.history_max_age,
            },
            history_budget: self.history_total_bytes / self.shard_count().max(1),
            epoch_seed: 0,
            breaker: BreakerPolicy {
                high_water: self.max_outbound_bytes / 2,
                trip_after: self.breaker_trip_after,
                cooldown: self.breaker_cooldown,
            },
            spool: self.spool_dir.is_some(),
            spool_checkpoint_bytes: checkpoint_spacing(self.spool_segment_bytes),
            ack_timeout: self.ack_timeout,
            ack_max_pending: self.ack_max_pending,
            redis: self.engine == Engine::Redis,
        }
    }

    /// Where dead letters go: `dead_letter_file`, else `<spool_dir>/dead-letter.jsonl`.
    pub(crate) fn dead_letter_path(&self) -> Option<PathBuf> {
        self.dead_letter_file
            .clone()
            .or_else(|| self.spool_dir.as_ref().map(|d| d.join("dead-letter.jsonl")))
    }

    /// The number of reactor shards after resolving `0` to the number of cores.
    pub(crate) fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    /// Checks every setting and every pair that must agree. The first problem found is returned,
    /// naming the setting to change.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        fn err(setting: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::new(setting, reason)
        }
        if self.spool_dir.is_none() {
            // Spool settings without a spool would be silently ignored: say so instead.
            let d = Config::defaults(JwtKey::Hs256(Vec::new()));
            let set = [
                ("spool_fsync", self.spool_fsync != d.spool_fsync),
                ("spool_repair", self.spool_repair != d.spool_repair),
                (
                    "spool_segment_bytes",
                    self.spool_segment_bytes != d.spool_segment_bytes,
                ),
                ("spool_max_bytes", self.spool_max_bytes != d.spool_max_bytes),
                ("spool_max_age", self.spool_max_age != d.spool_max_age),
            ];
            if let Some((name, _)) = set.iter().find(|(_, differs)| *differs) {
                return Err(err(
                    name,
                    "has no effect without spool_dir (--spool-dir, FLOODGATE_SPOOL_DIR): set \
                     spool_dir too, or leave it out",
                ));
            }
        }
        self.validate_engine()?;
        if let JwtKey::Hs256(secret) = &self.jwt {
            if secret.len() < MIN_HS256_SECRET {
                return Err(err(
                    "jwt_hs256_secret",
                    format!(
                        "must be at least {MIN_HS256_SECRET} bytes (got {})",
                        secret.len()
                    ),
                ));
            }
        }
        if !(1..=4096).contains(&self.max_pending_handshakes_per_ip) {
            return Err(err(
                "max_pending_handshakes_per_ip",
                "must be from 1 to 4096",
            ));
        }
        if let Err(why) = crate::core::handshake::OriginPolicy::new(&self.allowed_origins) {
            return Err(err("allowed_origins", why));
        }
        for (name, v) in [
            ("jwt_audience", &self.jwt_audience),
            ("jwt_issuer", &self.jwt_issuer),
        ] {
            if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 1024) {
                return Err(err(name, "must be 1 to 1024 bytes when set"));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(err(
                    "tls_key_file",
                    "is required with tls_cert_file (the certificate's private key, PEM)",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "tls_cert_file",
                    "is required with tls_key_file (the certificate chain, PEM)",
                ))
            }
            (Some(_), Some(_)) if !cfg!(feature = "tls") => {
                return Err(err(
                    "tls_cert_file",
                    "TLS is not in this build: build floodgate with the `tls` feature (the \
                     command-line build has it)",
                ))
            }
            _ => {}
        }
        if self.jwt_leeway > Duration::from_secs(600) {
            return Err(err("jwt_leeway", "must be at most 10m"));
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&self.jwt_jwks_refresh)
        {
            return Err(err("jwt_jwks_refresh", "must be 10s to 24h"));
        }
        if let JwtKey::Jwks(JwksSource::Url { url, .. }) = &self.jwt {
            check_jwks_url(url).map_err(|why| err("jwt_jwks_url", why))?;
        }
        if self.shards > 256 {
            return Err(err("shards", "must be 0 (one per core) to 256"));
        }
        if !self.ring_capacity.is_power_of_two() || !(4096..=1 << 30).contains(&self.ring_capacity)
        {
            return Err(err(
                "ring_capacity",
                format!(
                    "must be a power of two from 4096 to 1073741824 bytes (got {})",
                    self.ring_capacity
                ),
            ));
        }
        let event_limit = self.ring_capacity / 4 - crate::record::RECORD_OVERHEAD;
        if self.max_event_bytes < 256 || self.max_event_bytes > event_limit {
            return Err(err(
                "max_event_bytes",
                format!(
                    "must be from 256 to {event_limit} bytes with ring_capacity = {} (a quarter of \
                     the ring less record overhead); got {}",
                    self.ring_capacity, self.max_event_bytes
                ),
            ));
        }
        if !(1..=65536).contains(&self.max_batch_events) {
            return Err(err("max_batch_events", "must be from 1 to 65536"));
        }
        if self.max_batch_delay > Duration::from_secs(1) {
            return Err(err(
                "max_batch_delay",
                "must be at most 1s (0 = flush every pass)",
            ));
        }
        if self.max_batch_events == 1 && !self.max_batch_delay.is_zero() {
            return Err(err(
                "max_batch_delay",
                "conflicts with max_batch_events = 1: every event is flushed at once, so a delay \
                 would never apply; set max_batch_delay = 0 or raise max_batch_events",
            ));
        }
        // One frame is the body plus the `{"seq":N,` prefix and a header: keep room for two.
        if self.max_outbound_bytes < 2 * (self.max_event_bytes + 64) {
            return Err(err(
                "max_outbound_bytes",
                format!(
                    "must be at least twice max_event_bytes + 64 ({} bytes) so any event fits",
                    2 * (self.max_event_bytes + 64)
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(err("max_connections", "must be at least 1"));
        }
        if self.max_connections_per_user == 0
            || self.max_connections_per_user > self.max_connections
        {
            return Err(err(
                "max_connections_per_user",
                "must be from 1 to max_connections",
            ));
        }
        if self.max_frame_size < 125 {
            return Err(err("max_frame_size", "must be at least 125 bytes"));
        }
        if self.max_message_size < self.max_frame_size {
            return Err(err(
                "max_message_size",
                "must be at least max_frame_size (a message is one or more frames)",
            ));
        }
        if !(1024..=1 << 20).contains(&self.read_buffer_size) {
            return Err(err(
                "read_buffer_size",
                "must be from 1024 to 1048576 bytes",
            ));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("pong_timeout", self.pong_timeout),
            ("close_timeout", self.close_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(600) {
                return Err(err(name, "must be more than 0 and at most 10m"));
            }
        }
        if !self.ping_interval.is_zero() && self.ping_interval < Duration::from_secs(1) {
            return Err(err("ping_interval", "must be 0 (no pings) or at least 1s"));
        }
        if self.max_offline_users == 0 {
            return Err(err("max_offline_users", "must be at least 1"));
        }
        if self.breaker_trip_after.is_zero() || self.breaker_trip_after > Duration::from_secs(600) {
            return Err(err(
                "breaker_trip_after",
                "must be more than 0 and at most 10m",
            ));
        }
        if self.breaker_cooldown > Duration::from_secs(3600) {
            return Err(err(
                "breaker_cooldown",
                "must be at most 1h (0 = no breaker: slow consumers are closed with 4008)",
            ));
        }
        if !self.breaker_cooldown.is_zero()
            && self.history_max_events == 0
            && self.spool_dir.is_none()
        {
            return Err(err(
                "breaker_cooldown",
                "conflicts with history_max_events = 0 without a spool_dir: an open breaker \
                 leaves events to history, so keep some history, set a spool_dir, or set \
                 breaker_cooldown = 0 (close slow consumers instead)",
            ));
        }
        if !(64 << 10..=1 << 30).contains(&self.spool_segment_bytes) {
            return Err(err(
                "spool_segment_bytes",
                "must be from 65536 to 1073741824 bytes",
            ));
        }
        if self.spool_max_bytes < 2 * self.spool_segment_bytes {
            return Err(err(
                "spool_max_bytes",
                format!(
                    "must be at least 2 x spool_segment_bytes ({} bytes): retention deletes \
                     whole segments and keeps the one being written",
                    2 * self.spool_segment_bytes
                ),
            ));
        }
        if self.spool_max_age < Duration::from_secs(1)
            || self.spool_max_age > Duration::from_secs(30 * 86400)
        {
            return Err(err("spool_max_age", "must be from 1s to 30 days"));
        }
        if let Some(dir) = &self.spool_dir {
            if dir.as_os_str().is_empty() {
                return Err(err(
                    "spool_dir",
                    "must not be empty (leave it unset for no spool)",
                ));
            }
        }
        if self.ack_timeout < Duration::from_secs(1)
            || self.ack_timeout > Duration::from_secs(7 * 86400)
        {
            return Err(err("ack_timeout", "must be from 1s to 7 days"));
        }
        if self.ack_max_pending > 1 << 16 {
            return Err(err(
                "ack_max_pending",
                "must be from 0 (events that need an ack are not kept for it) to 65536",
            ));
        }
        if !(1..=1 << 24).contains(&self.receipt_capacity) {
            return Err(err("receipt_capacity", "must be from 1 to 16777216"));
        }
        if let Some(ApiKey(key)) = &self.ingest_api_key {
            if key.len() < 16 || key.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(err(
                    "ingest_api_key",
                    "must be at least 16 printable ASCII characters without spaces (leave it \
                     unset to turn ingest off)",
                ));
            }
        }
        if !(1024..=64 << 20).contains(&self.ingest_max_body_bytes) {
            return Err(err(
                "ingest_max_body_bytes",
                "must be from 1024 to 67108864 bytes",
            ));
        }
        if !(1..=100_000).contains(&self.ingest_max_batch_events) {
            return Err(err("ingest_max_batch_events", "must be from 1 to 100000"));
        }
        if self.ingest_max_events_per_sec == 0 {
            return Err(err(
                "ingest_max_events_per_sec",
                "must be at least 1 (events per second, all ingest connections together)",
            ));
        }
        if !(1..=4096).contains(&self.ingest_max_connections) {
            return Err(err("ingest_max_connections", "must be from 1 to 4096"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.ingest_idle_timeout)
        {
            return Err(err("ingest_idle_timeout", "must be from 100ms to 1h"));
        }
        if self.ingest_dedupe_window > Duration::from_secs(86400) {
            return Err(err("ingest_dedupe_window", "must be at most 24h"));
        }
        if !(1..=10_000_000).contains(&self.ingest_dedupe_capacity) {
            return Err(err("ingest_dedupe_capacity", "must be from 1 to 10000000"));
        }
        if self.history_max_events > 1 << 20 {
            return Err(err(
                "history_max_events",
                "must be from 0 (no history: every resume reports a gap) to 1048576",
            ));
        }
        if self.history_max_events > 0 {
            if self.history_max_bytes < self.max_event_bytes + 64 {
                return Err(err(
                    "history_max_bytes",
                    format!(
                        "must be at least max_event_bytes + 64 ({} bytes) so any event can be kept",
                        self.max_event_bytes + 64
                    ),
                ));
            }
            if self.history_max_age.is_zero()
                || self.history_max_age > Duration::from_secs(7 * 86400)
            {
                return Err(err(
                    "history_max_age",
                    "must be more than 0 and at most 7 days",
                ));
            }
            let shards = self.shard_count();
            if self.history_total_bytes / shards < self.history_max_bytes {
                return Err(err(
                    "history_total_bytes",
                    format!(
                        "must be at least history_max_bytes x shards ({} bytes): each of the {shards} \
                         shards keeps a log of history_total_bytes / shards, which must hold one \
                         user's full history",
                        self.history_max_bytes.saturating_mul(shards)
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The engine settings: `redis_url` goes with `engine = "redis"` and only with it, the
    /// build must have the Redis engine, and the spool (this process's log) is the local
    /// engine's.
    fn validate_engine(&self) -> Result<(), ConfigError> {
        let err = ConfigError::new;
        let p = &self.redis_prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(err(
                "redis_prefix",
                "must be 1 to 64 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        if !(1 << 20..=1 << 40).contains(&self.redis_log_max_bytes) {
            return Err(err("redis_log_max_bytes", "must be from 1 MiB to 1 TiB"));
        }
        if self.redis_log_max_age < Duration::from_secs(1)
            || self.redis_log_max_age > Duration::from_secs(30 * 86400)
        {
            return Err(err("redis_log_max_age", "must be from 1s to 30 days"));
        }
        let d = Config::defaults(JwtKey::Hs256(Vec::new()));
        let retention_set = [
            (
                "redis_log_max_bytes",
                self.redis_log_max_bytes != d.redis_log_max_bytes,
            ),
            (
                "redis_log_max_age",
                self.redis_log_max_age != d.redis_log_max_age,
            ),
        ];
        if self.engine == Engine::Local {
            if let Some((name, _)) = retention_set.iter().find(|(_, differs)| *differs) {
                return Err(err(
                    name,
                    "has no effect with engine = \"local\": set engine = \"redis\" too, or \
                     leave it out",
                ));
            }
        }
        match (self.engine, &self.redis_url) {
            (Engine::Local, None) => return Ok(()),
            (Engine::Local, Some(_)) => {
                return Err(err(
                    "redis_url",
                    "has no effect with engine = \"local\": set engine = \"redis\" \
                     (--engine redis, FLOODGATE_ENGINE=redis) too, or leave redis_url out",
                ))
            }
            (Engine::Redis, None) => {
                return Err(err(
                    "redis_url",
                    "is required with engine = \"redis\" (--redis-url, FLOODGATE_REDIS_URL), \
                     for example redis://127.0.0.1:6379",
                ))
            }
            (Engine::Redis, Some(RedisUrl(url))) => {
                if !cfg!(feature = "redis") {
                    return Err(err(
                        "engine",
                        "\"redis\" is not in this build: build floodgate with the `redis` \
                         feature (the command-line build has it)",
                    ));
                }
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://"))
                    || url.len() > 1024
                {
                    return Err(err(
                        "redis_url",
                        "must be a redis:// URL of at most 1024 bytes, such as \
                         redis://127.0.0.1:6379 or redis://:password@host:6379/0 (TLS, \
                         rediss://, is not supported yet)",
                    ));
                }
                #[cfg(feature = "redis")]
                if let Err(e) = redis::Client::open(url.as_str()) {
                    return Err(ConfigError::new(
                        "redis_url",
                        format!("is not a usable Redis URL: {e}"),
                    ));
                }
            }
        }
        if self.spool_dir.is_some() {
            return Err(err(
                "spool_dir",
                "conflicts with engine = \"redis\": Redis keeps the streams; leave spool_dir \
                 out",
            ));
        }
        Ok(())
    }
}

/// Why `url` cannot be a JWKS URL: it must be `https://`, or `http://` to a loopback address
/// (a sidecar, a test), of at most 2048 bytes, and this build must be able to fetch it.
fn check_jwks_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("must be at most 2048 bytes".into());
    }
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| {
            url.strip_prefix(p)
                .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
        });
    if !(url.starts_with("https://") || loopback) {
        return Err(format!(
            "`{url}` must be an https:// URL (http:// only to 127.0.0.1, localhost or [::1])"
        ));
    }
    if !cfg!(feature = "jwks-url") {
        return Err(
            "fetching a JWKS is not in this build: build floodgate with the \
                    `jwks-url` feature (the command-line build has it), or use jwt_jwks_file"
                .into(),
        );
    }
    Ok(())
}

/// Calls macro `$m` with the names of every [`Settings`] field that maps one-to-one onto a
/// [`Config`] field of the same name and type (all but `bind`, the JWT keys and the optional
/// paths). The one list
/// keeps `Settings::overlay` and `GatewayBuilder::settings` from drifting apart.
macro_rules! with_plain_settings {
    ($m:ident) => {
        $m!(
            jwt_leeway,
            jwt_jwks_refresh,
            shards,
            ring_capacity,
            max_event_bytes,
            max_batch_events,
            max_batch_delay,
            max_outbound_bytes,
            max_connections,
            max_connections_per_user,
            max_connections_per_ip,
            max_pending_handshakes_per_ip,
            max_frame_size,
            max_message_size,
            read_buffer_size,
            handshake_timeout,
            ping_interval,
            pong_timeout,
            close_timeout,
            shutdown_timeout,
            echo,
            dashboard,
            max_offline_users,
            history_max_events,
            history_max_bytes,
            history_max_age,
            history_total_bytes,
            breaker_trip_after,
            breaker_cooldown,
            spool_segment_bytes,
            spool_max_bytes,
            spool_max_age,
            spool_fsync,
            spool_repair,
            ack_timeout,
            ack_max_pending,
            receipt_capacity,
            ingest_max_body_bytes,
            ingest_max_batch_events,
            ingest_max_events_per_sec,
            ingest_max_connections,
            ingest_idle_timeout,
            ingest_dedupe_window,
            ingest_dedupe_capacity,
            engine,
            redis_prefix,
            redis_log_max_bytes,
            redis_log_max_age
        )
    };
}
pub(crate) use with_plain_settings;

/// A partial configuration: one layer of settings as read from a TOML file, `FLOODGATE_*`
/// environment variables or `floodgate serve` flags. Unset fields leave the value below alone.
/// Apply with [`GatewayBuilder::settings`](crate::GatewayBuilder::settings).
///
/// Durations are written like `25s`, `1500ms` or `2m`; sizes are plain byte counts.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// Address to listen on for WebSocket and HTTP [default: 127.0.0.1:8080]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_BIND", value_name = "ADDR")
    )]
    pub bind: Option<SocketAddr>,
    /// HS256 shared secret (at least 32 bytes) that client JWTs are signed with. If no key is
    /// configured, `serve` generates a dev secret and prints it
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_JWT_HS256_SECRET",
            value_name = "SECRET",
            hide_env_values = true
        )
    )]
    pub jwt_hs256_secret: Option<String>,
    /// RS256 public key (PEM file) that client JWTs are checked against
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_RS256_PUBLIC_KEY", value_name = "PEM")
    )]
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// ES256 public key (PEM file) that client JWTs are checked against
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_ES256_PUBLIC_KEY", value_name = "PEM")
    )]
    pub jwt_es256_public_key: Option<PathBuf>,
    /// A JSON Web Key Set file (`{"keys": [...]}`) whose RS256 and ES256 keys client JWTs are
    /// checked against, by their `kid`; read again every jwt_jwks_refresh
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_JWKS_FILE", value_name = "FILE")
    )]
    pub jwt_jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set URL (https://, or http:// to a loopback address), fetched at start,
    /// every jwt_jwks_refresh, and when a token names a key id the set lacks (at most every 10 s)
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_JWKS_URL", value_name = "URL")
    )]
    pub jwt_jwks_url: Option<String>,
    /// CA certificates (PEM) that the jwt_jwks_url server's certificate must chain to, instead
    /// of the Mozilla roots (a private identity provider)
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_JWKS_CA_FILE", value_name = "PEM")
    )]
    pub jwt_jwks_ca_file: Option<PathBuf>,
    /// How often the JWKS is read again (10s to 24h) [default: 5m]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_JWT_JWKS_REFRESH", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub jwt_jwks_refresh: Option<Duration>,
    /// Clock skew tolerated on `exp` and `nbf` [default: 30s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_JWT_LEEWAY", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub jwt_leeway: Option<Duration>,
    /// Tokens must carry this `aud` (one of theirs, if a list) [default: not checked]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_AUDIENCE", value_name = "AUD")
    )]
    pub jwt_audience: Option<String>,
    /// Tokens must carry this `iss` [default: not checked]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_JWT_ISSUER", value_name = "ISS")
    )]
    pub jwt_issuer: Option<String>,
    /// Browser origins allowed to open WebSockets, comma-separated: exact
    /// (`https://app.example.com`) or any subdomain (`https://*.example.com`). A handshake
    /// from another Origin gets 403; one without an Origin header (not a browser) is let
    /// through [default: every origin]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_ALLOWED_ORIGINS",
            value_name = "ORIGINS",
            value_delimiter = ','
        )
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Reactor threads; a user's connections all live on the shard its id hashes to. 0 = one per
    /// core [default: 0]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_SHARDS", value_name = "N"))]
    pub shards: Option<usize>,
    /// Bytes of each emitter-to-shard ring (power of two) [default: 1048576]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_RING_CAPACITY", value_name = "BYTES")
    )]
    pub ring_capacity: Option<usize>,
    /// Largest encoded event accepted by `emit` [default: 65536]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_EVENT_BYTES", value_name = "BYTES")
    )]
    pub max_event_bytes: Option<usize>,
    /// A connection's pending frames are written once this many are queued [default: 1024]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_BATCH_EVENTS", value_name = "N")
    )]
    pub max_batch_events: Option<usize>,
    /// ...or once the oldest pending frame is this old; 0 = write at the end of every reactor
    /// pass [default: 0]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_MAX_BATCH_DELAY", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub max_batch_delay: Option<Duration>,
    /// Per-connection cap on unsent bytes: a connection that would pass it (or stays over half
    /// of it for breaker_trip_after) has its breaker opened, its backlog leaving memory; with
    /// breakers off it is closed with code 4008 [default: 8388608]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_OUTBOUND_BYTES", value_name = "BYTES")
    )]
    pub max_outbound_bytes: Option<usize>,
    /// Open WebSocket connections allowed in total [default: 100000]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_CONNECTIONS", value_name = "N")
    )]
    pub max_connections: Option<usize>,
    /// Open WebSocket connections allowed per user [default: 64]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_CONNECTIONS_PER_USER", value_name = "N")
    )]
    pub max_connections_per_user: Option<usize>,
    /// Open WebSocket connections from one peer address; more get HTTP 503; 0 = no limit
    /// (clients behind a proxy share its address) [default: 0]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_CONNECTIONS_PER_IP", value_name = "N")
    )]
    pub max_connections_per_ip: Option<usize>,
    /// Handshakes in progress from one peer address; more get HTTP 503 at once [default: 128]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_MAX_PENDING_HANDSHAKES_PER_IP",
            value_name = "N"
        )
    )]
    pub max_pending_handshakes_per_ip: Option<usize>,
    /// Largest inbound frame payload [default: 65536]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_FRAME_SIZE", value_name = "BYTES")
    )]
    pub max_frame_size: Option<usize>,
    /// Largest inbound message (all its frames) [default: 1048576]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_MESSAGE_SIZE", value_name = "BYTES")
    )]
    pub max_message_size: Option<usize>,
    /// Per-connection WebSocket read buffer, allocated when a connection opens; small keeps idle
    /// connections cheap (it grows for a larger frame) [default: 1024]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_READ_BUFFER_SIZE", value_name = "BYTES")
    )]
    pub read_buffer_size: Option<usize>,
    /// Time a client has to complete its HTTP upgrade request [default: 5s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    /// Interval between server pings; 0 = never ping [default: 25s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_PING_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// A connection that does not answer a ping within this time has its breaker opened, and is
    /// closed with 4010 if still silent after breaker_cooldown (at once with breakers off)
    /// [default: 10s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_PONG_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub pong_timeout: Option<Duration>,
    /// After sending a close frame, how long to wait for the client's before dropping the socket
    /// [default: 5s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_CLOSE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub close_timeout: Option<Duration>,
    /// On shutdown, how long to keep flushing queued events before giving up (and reporting what
    /// was not delivered) [default: 5s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Serve an unauthenticated echo endpoint at /echo (for protocol conformance tests)
    /// [default: false]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_ECHO", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"))]
    pub echo: Option<bool>,
    /// Serve a live dashboard at /dashboard, and its numbers as JSON at /dashboard/stats:
    /// connections, events/s in and out, queue latency percentiles, breakers, resumes, gaps and
    /// dead letters, per shard. Unauthenticated, like /metrics: counts only, no user ids
    /// [default: false]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_DASHBOARD", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"))]
    pub dashboard: Option<bool>,
    /// Users with no open connection whose sequence counters are kept; past this, counters of
    /// offline users are dropped and their `seq` restarts at 1 [default: 1000000]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_MAX_OFFLINE_USERS", value_name = "N")
    )]
    pub max_offline_users: Option<usize>,
    /// Events kept per user for clients that reconnect with `?since=`; 0 = keep none (a resume
    /// then gets a `gap` frame for everything it missed) [default: 1024]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_HISTORY_MAX_EVENTS", value_name = "N")
    )]
    pub history_max_events: Option<usize>,
    /// Bytes of event frames kept per user [default: 1048576]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_HISTORY_MAX_BYTES", value_name = "BYTES")
    )]
    pub history_max_bytes: Option<usize>,
    /// Events older than this are no longer kept for resume [default: 10m]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_HISTORY_MAX_AGE", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub history_max_age: Option<Duration>,
    /// Memory for history, all users together: each shard keeps a ring of this size divided by
    /// the shard count, and the oldest frames are overwritten when it is full [default: 67108864]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_HISTORY_TOTAL_BYTES", value_name = "BYTES")
    )]
    pub history_total_bytes: Option<usize>,
    /// A connection whose unsent bytes stay above half of max_outbound_bytes this long has its
    /// circuit breaker opened: its queued events leave memory (history keeps them) [default: 1s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_BREAKER_TRIP_AFTER", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub breaker_trip_after: Option<Duration>,
    /// How long an open breaker stays open before the connection is refilled from history;
    /// 0 = no breaker (slow consumers are closed with 4008) [default: 30s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_BREAKER_COOLDOWN", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub breaker_cooldown: Option<Duration>,
    /// The certificate chain (PEM) the port serves TLS with: clients then connect with wss://
    /// (and https:// for /healthz, /metrics, /dashboard). Loaded again on SIGHUP [default:
    /// unset, plain ws://]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_TLS_CERT_FILE", value_name = "PEM")
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of tls_cert_file; loaded again with it on SIGHUP [default: unset]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_TLS_KEY_FILE", value_name = "PEM")
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Directory of the durable spool: every event is appended to segment files there before
    /// any client sees it, replays read from it when memory history no longer has the range,
    /// and a restart keeps each user's epoch and events. Unset = history in memory only
    /// [default: unset]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_SPOOL_DIR", value_name = "DIR")
    )]
    pub spool_dir: Option<PathBuf>,
    /// Bytes per spool segment file (retention deletes whole segments) [default: 67108864]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_SPOOL_SEGMENT_BYTES", value_name = "BYTES")
    )]
    pub spool_segment_bytes: Option<u64>,
    /// Bytes of spool kept per shard; the oldest segments are deleted past it [default: 1073741824]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_SPOOL_MAX_BYTES", value_name = "BYTES")
    )]
    pub spool_max_bytes: Option<u64>,
    /// Spool segments whose last write is older than this are deleted [default: 24h]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_SPOOL_MAX_AGE", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub spool_max_age: Option<Duration>,
    /// When the spool calls fdatasync: `always` (on the reactor, before the events reach any
    /// socket; survives power loss), an interval such as `100ms` (on a thread of its own, so a
    /// slow disk never stalls delivery), or `never` (the OS decides). A crash of the process
    /// loses nothing written in any mode [default: 100ms]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_SPOOL_FSYNC",
            value_name = "always|never|INTERVAL"
        )
    )]
    pub spool_fsync: Option<FsyncPolicy>,
    /// Start even if a spool segment has a corrupted record in its middle, cutting the segment
    /// there (that shard's streams start new epochs, so resuming clients are told); without
    /// it, such a spool refuses to start [default: false]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_SPOOL_REPAIR", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"))]
    pub spool_repair: Option<bool>,
    /// An event that needs an ack (agent_completed, or any marked so) and gets none this long
    /// after it was emitted goes to the dead-letter file [default: 10m]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_ACK_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub ack_timeout: Option<Duration>,
    /// Unacked events kept per user; past this the oldest is dead-lettered. 0 = events that
    /// need an ack are delivered like others, without redelivery [default: 1024]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_ACK_MAX_PENDING", value_name = "N")
    )]
    pub ack_max_pending: Option<usize>,
    /// Receipts (Emitter::emit_tracked) alive at once at most [default: 65536]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_RECEIPT_CAPACITY", value_name = "N")
    )]
    pub receipt_capacity: Option<usize>,
    /// File that dead-lettered events are appended to, one JSON object per line [default:
    /// <spool_dir>/dead-letter.jsonl; without a spool, dead letters are logged]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_DEAD_LETTER_FILE", value_name = "FILE")
    )]
    pub dead_letter_file: Option<PathBuf>,
    /// API key that out-of-process publishers present (`Authorization: Bearer <key>`) on
    /// POST /api/publish and the /api/ingest WebSocket; at least 16 characters. Unset = both
    /// endpoints are off [default: unset]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_INGEST_API_KEY",
            value_name = "KEY",
            hide_env_values = true
        )
    )]
    pub ingest_api_key: Option<String>,
    /// Largest ingest request body or WebSocket message [default: 1048576]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_INGEST_MAX_BODY_BYTES", value_name = "BYTES")
    )]
    pub ingest_max_body_bytes: Option<usize>,
    /// Most events in one ingest batch [default: 1000]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_INGEST_MAX_BATCH_EVENTS", value_name = "N")
    )]
    pub ingest_max_batch_events: Option<usize>,
    /// Events per second accepted through ingest, all connections together; a batch over it
    /// is refused whole (HTTP 429 / `rate_limited`) [default: 1000000]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_INGEST_MAX_EVENTS_PER_SEC", value_name = "N")
    )]
    pub ingest_max_events_per_sec: Option<u64>,
    /// Open ingest connections at most (each has a thread and an emitter) [default: 64]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_INGEST_MAX_CONNECTIONS", value_name = "N")
    )]
    pub ingest_max_connections: Option<usize>,
    /// An ingest connection (a keep-alive POST connection or an /api/ingest socket) that
    /// sends nothing this long is closed, freeing its slot [default: 60s]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_INGEST_IDLE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub ingest_idle_timeout: Option<Duration>,
    /// How long an accepted event's `idempotency_key` is remembered (per user): the same key
    /// again within it is answered `duplicate` and not emitted [default: 10m]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_INGEST_DEDUPE_WINDOW", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub ingest_dedupe_window: Option<Duration>,
    /// Idempotency keys remembered at most (about 100 bytes each); past it the oldest are
    /// forgotten before their window ends [default: 100000]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_INGEST_DEDUPE_CAPACITY", value_name = "N")
    )]
    pub ingest_dedupe_capacity: Option<usize>,
    /// Where streams are sequenced and kept: `local` (this process) or `redis` (several
    /// gateway nodes share one Redis 7 at redis_url; docs/SCALING.md) [default: local]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_ENGINE", value_name = "local|redis")
    )]
    pub engine: Option<Engine>,
    /// The Redis of engine = "redis", as `redis://[user:password@]host:port[/db]` [default:
    /// unset; required with engine = "redis"]
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOODGATE_REDIS_URL",
            value_name = "URL",
            hide_env_values = true
        )
    )]
    pub redis_url: Option<String>,
    /// The prefix of every Redis key, so several deployments can share one Redis
    /// [default: floodgate]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_REDIS_PREFIX", value_name = "PREFIX")
    )]
    pub redis_prefix: Option<String>,
    /// Bytes of batches the Redis log keeps (shared by every node; resumes from Redis and
    /// readers that fall behind need them); the oldest are trimmed past it [default: 268435456]
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOODGATE_REDIS_LOG_MAX_BYTES", value_name = "BYTES")
    )]
    pub redis_log_max_bytes: Option<u64>,
    /// Batches of the Redis log older than this are trimmed (by Redis's clock, as batches are
    /// appended) [default: 1h]
    #[cfg_attr(feature = "cli", arg(long, env = "FLOODGATE_REDIS_LOG_MAX_AGE", value_parser = humantime::parse_duration, value_name = "DURATION"))]
    #[serde(default, with = "humantime_serde")]
    pub redis_log_max_age: Option<Duration>,
}

/// The largest config file read.
pub(crate) const MAX_CONFIG_FILE: u64 = 1 << 20;
/// The largest JWT key file read.
pub(crate) const MAX_KEY_FILE: u64 = 64 << 10;

/// Reads a small file whole: a regular file (not a device, FIFO or directory, which could
/// never end) of at most `max` bytes, refused otherwise with a reason that says so.
pub(crate) fn read_small_file(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut data = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(data)
}

impl Settings {
    /// Reads a TOML file whose keys are the setting names above (a regular file of at most
    /// 1 MiB).
    pub fn from_toml_file(path: &std::path::Path) -> Result<Settings, crate::error::Error> {
        let bad = |reason: String| crate::error::Error::ConfigFile {
            path: path.display().to_string(),
            reason,
        };
        let data = read_small_file(path, MAX_CONFIG_FILE).map_err(|e| bad(e.to_string()))?;
        let text = String::from_utf8(data).map_err(|_| bad("not UTF-8".into()))?;
        toml::from_str(&text).map_err(|e| crate::error::Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Layers `over` on top of `self`: every field set in `over` wins.
    pub fn overlay(mut self, over: Settings) -> Settings {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            bind,
            jwt_hs256_secret,
            jwt_rs256_public_key,
            jwt_es256_public_key,
            jwt_jwks_file,
            jwt_jwks_url,
            jwt_jwks_ca_file,
            tls_cert_file,
            tls_key_file,
            spool_dir,
            dead_letter_file,
            ingest_api_key,
            redis_url,
            jwt_audience,
            jwt_issuer,
            allowed_origins
        );
        with_plain_settings!(take);
        self
    }

    /// True when any JWT key is set.
    pub fn has_jwt_key(&self) -> bool {
        self.jwt_hs256_secret.is_some()
            || self.jwt_rs256_public_key.is_some()
            || self.jwt_es256_public_key.is_some()
            || self.jwt_jwks_file.is_some()
            || self.jwt_jwks_url.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config::defaults(JwtKey::Hs256(vec![7; 32]))
    }

    #[test]
    fn the_cores_defaults_are_the_documented_ones() {
        // The core's tests run on `CoreConfig::default()`: it must be what a gateway on
        // default settings gives each of its shards (one shard: the whole history budget).
        let mut c = valid();
        c.shards = 1;
        assert_eq!(
            format!("{:?}", c.core()),
            format!("{:?}", CoreConfig::default())
        );
    }

    #[test]
    fn defaults_are_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn settings_parse_from_toml_with_durations() {
        let s: Settings = toml::from_str(
            "bind = \"127.0.0.1:9000\"\nmax_batch_delay = \"2ms\"\nping_interval = \"1m\"\necho = true\n",
        )
        .unwrap();
        assert_eq!(s.max_batch_delay, Some(Duration::from_millis(2)));
        assert_eq!(s.ping_interval, Some(Duration::from_secs(60)));
        assert_eq!(s.echo, Some(true));
        let s: Settings = toml::from_str(
            "spool_dir = \"/var/lib/fg\"\nspool_fsync = \"always\"\nack_timeout = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(s.spool_dir, Some("/var/lib/fg".into()));
        assert_eq!(s.spool_fsync, Some(FsyncPolicy::Always));
        assert_eq!(s.ack_timeout, Some(Duration::from_secs(90)));
        let e = toml::from_str::<Settings>("spool_fsync = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("always"), "{e}");
    }

    #[test]
    fn unknown_toml_keys_are_rejected() {
        let e = toml::from_str::<Settings>("max_batch_size = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_batch_size"), "{e}");
    }

    #[test]
    fn overlay_takes_set_fields_only() {
        let base = Settings {
            shards: Some(2),
            echo: Some(true),
            ..Default::default()
        };
        let top = Settings {
            shards: Some(4),
            ..Default::default()
        };
        let s = base.overlay(top);
        assert_eq!(s.shards, Some(4));
        assert_eq!(s.echo, Some(true));
    }
}
