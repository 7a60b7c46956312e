//! `floodgate load`: a load generator and honest meter for any WebSocket server.
//!
//! Scenarios ([`Scenario`]): `subscribe` holds connections and measures what arrives,
//! `echo` sends at an open-loop rate and matches each reply, `publish` drives a floodgate
//! gateway's ingest while subscribed connections measure end-to-end latency, `connect`
//! measures connection setup and churn.
//!
//! Threads: worker threads each own a share of the connections on a mio poll (and, for the
//! generating scenarios, a share of the rate on their own open-loop schedule). Every
//! `interval` each worker sends a `Tick` (its histograms and counts for that interval) to
//! the main thread, which merges them (`report::Aggregate`), writes the HDR interval log,
//! keeps the (bounded) series for the plot and shows progress. Memory does not grow with the
//! length of a run.

mod connect;
mod drive;
mod echo;
pub mod fuzz;
mod net;
mod plot;
mod pointer;
mod publish;
mod record;
mod report;
mod schedule;
mod session;
mod subscribe;
mod threshold;
mod tls;
mod wsconn;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::net::{Sources, Tokens, UrlTemplate};
pub use self::pointer::{f64_of, u64_of, Fields, Pointer};
pub use self::record::{LatencyUs, Recorder};
pub use self::report::{LoadReport, Verdict, STALL_GRACE};
pub use self::schedule::RateProfile;
pub use self::session::Session;
pub use self::threshold::Threshold;
pub use self::tls::client_config as tls_client_config;

/// Unix time in nanoseconds: the clock of send times, schedules and the `ts` of events read.
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Exit codes of `floodgate load`, distinct per outcome.
pub mod exit {
    /// Every threshold passed (and no error occurred, unless an `errors` threshold allows some).
    pub const PASS: u8 = 0;
    /// A threshold failed.
    pub const THRESHOLD_FAILED: u8 = 1;
    /// Bad flags or configuration (clap's own usage errors use 2 as well).
    pub const USAGE: u8 = 2;
    /// The generator could not keep its schedule: the rate asked for was not offered, so the
    /// figures do not describe that rate.
    pub const OVERLOADED: u8 = 3;
    /// The run could not be completed: connections failed, the server went away, or the
    /// expected events stopped arriving.
    pub const RUN_FAILED: u8 = 4;
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Hold connections and measure the events they receive.
    Subscribe,
    /// Send messages at an open-loop rate and match each echoed reply by id.
    Echo,
    /// Publish through a floodgate gateway's ingest socket at an open-loop rate while
    /// subscribed connections measure end-to-end latency.
    Publish,
    /// Open connections at an open-loop rate and measure the handshake; hold or churn them.
    Connect,
}

/// The unit of a timestamp read from frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TsUnit {
    /// Guess from the magnitude (seconds, milliseconds, microseconds or nanoseconds since
    /// the Unix epoch).
    Auto,
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl TsUnit {
    /// This unit, or for `Auto` the one the magnitude of `v` suggests.
    fn resolve(self, v: f64) -> TsUnit {
        match self {
            TsUnit::Auto if v > 1e17 => TsUnit::Ns,
            TsUnit::Auto if v > 1e14 => TsUnit::Us,
            TsUnit::Auto if v > 1e11 => TsUnit::Ms,
            TsUnit::Auto => TsUnit::S,
            u => u,
        }
    }

    fn scale(self) -> u64 {
        match self {
            TsUnit::S => 1_000_000_000,
            TsUnit::Ms => 1_000_000,
            TsUnit::Us => 1_000,
            _ => 1,
        }
    }

    /// Nanoseconds since the epoch for a timestamp `v` in this unit.
    pub fn to_ns(self, v: f64) -> u64 {
        (v * self.resolve(v).scale() as f64) as u64
    }

    /// The same for an integer timestamp, exactly (f64 cannot hold nanoseconds since 1970).
    pub fn int_to_ns(self, v: u64) -> u64 {
        v.saturating_mul(self.resolve(v as f64).scale())
    }

    /// A raw JSON timestamp in this unit as nanoseconds since the epoch.
    pub(crate) fn raw_ns(self, raw: &[u8]) -> Option<u64> {
        match u64_of(raw) {
            Some(v) => Some(self.int_to_ns(v)),
            None => f64_of(raw).map(|v| self.to_ns(v)),
        }
    }
}

/// Everything a run needs, validated by [`LoadOptions::validate`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// What the run does.
    pub scenario: Scenario,
    /// Where connections go (for `publish`: the subscribers).
    pub url: UrlTemplate,
    /// Connections held (for `publish`: subscribers).
    pub connections: usize,
    /// Connections opened per second while setting up (`None`: as fast as they complete).
    pub connect_rate: Option<f64>,
    /// `{user}` is this prefix and the connection index.
    pub user_prefix: String,
    /// Where each connection's token comes from.
    pub tokens: Tokens,
    /// Headers sent with each upgrade request (`--header`); values may hold `{conn}`,
    /// `{user}` and `{token}`.
    pub headers: Vec<Header>,
    /// Subprotocols offered (`Sec-WebSocket-Protocol`); the server must choose one of them.
    pub subprotocols: Vec<String>,
    /// Messages each connection sends once up, and the reply it waits for before it is
    /// measured.
    pub session: Session,
    /// Source addresses the connections are spread over.
    pub sources: Sources,
    /// TLS for `wss://` URLs.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Worker threads.
    pub threads: usize,
    /// How long the measured phase lasts (`None`: until `events`).
    pub duration: Option<Duration>,
    /// Stop after this many events (received, replies, published or connections).
    pub events: Option<u64>,
    /// The open-loop rate (echo and publish: messages or events per second; connect:
    /// connections per second).
    pub rate: Option<RateProfile>,
    /// A message sent later than this behind its schedule is late; more late messages than
    /// one stall of [`STALL_GRACE`] times this makes at the peak rate, and the generator is
    /// overloaded.
    pub max_lag: Duration,
    /// Sequence numbers in received frames, checked per connection.
    pub seq: Option<Pointer>,
    /// Sequence numbers must go up by exactly one (else: strictly increasing).
    pub gapless: bool,
    /// A timestamp in received frames to measure latency from.
    pub latency_field: Option<Pointer>,
    /// The unit of `latency_field`.
    pub ts_unit: TsUnit,
    /// Bytes of each message sent (echo) or event data (publish).
    pub message_bytes: usize,
    /// Events per ingest batch at most (publish).
    pub batch: usize,
    /// Ingest connections (publish).
    pub publishers: usize,
    /// The ingest socket (publish).
    pub ingest_url: Option<UrlTemplate>,
    /// The ingest API key (publish).
    pub api_key: Option<String>,
    /// How long each connection is held (connect); `None`: until the end.
    pub hold: Option<Duration>,
    /// Give up when nothing arrives for this long.
    pub idle_timeout: Duration,
    /// How long one WebSocket handshake may take.
    pub handshake_timeout: Duration,
    /// Pass/fail conditions on the report.
    pub thresholds: Vec<Threshold>,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// Write an HdrHistogram interval log here.
    pub hdr_log: Option<PathBuf>,
    /// Write one JSON object per closed interval here (`-`: standard output), as the run goes.
    pub intervals: Option<PathBuf>,
    /// Write the thresholds and verdicts as JUnit XML here, after the run.
    pub junit: Option<PathBuf>,
    /// Draw the run into these files (SVG, or PNG for `.png`).
    pub plot: Vec<PathBuf>,
    /// Length of a reporting interval (progress, HDR log, plot).
    pub interval: Duration,
    /// The command line, secrets masked, for the report and the plot's title.
    pub command: String,
}

impl LoadOptions {
    /// Options for `scenario` against `url` with every other setting at its default.
    pub fn new(scenario: Scenario, url: UrlTemplate) -> Self {
        LoadOptions {
            scenario,
            url,
            connections: 1,
            connect_rate: None,
            user_prefix: "u".into(),
            tokens: Tokens::None,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            session: Session::default(),
            sources: Sources::default(),
            tls: None,
            threads: 1,
            duration: None,
            events: None,
            rate: None,
            max_lag: Duration::from_millis(10),
            seq: None,
            gapless: false,
            latency_field: None,
            ts_unit: TsUnit::Auto,
            message_bytes: 64,
            batch: 100,
            publishers: 1,
            ingest_url: None,
            api_key: None,
            hold: None,
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            thresholds: Vec::new(),
            progress: false,
            hdr_log: None,
            intervals: None,
            junit: None,
            plot: Vec::new(),
            interval: Duration::from_secs(1),
            command: String::new(),
        }
    }

    /// The user of connection `i`.
    pub fn user(&self, i: usize) -> String {
        format!("{}{i}", self.user_prefix)
    }

    /// Whether a `--header` carries the token (`{token}` in its value) or is an
    /// `Authorization` header of its own: then no `Authorization: Bearer` is added.
    pub(crate) fn headers_carry_auth(&self) -> bool {
        self.headers
            .iter()
            .any(|h| h.value.contains("{token}") || h.name.eq_ignore_ascii_case("authorization"))
    }

    /// Checks what clap cannot: combinations, and what each scenario needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 || self.connections > 1_000_000 {
            return Err("--connections must be from 1 to 1000000".into());
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be from 1 to 256".into());
        }
        if self.duration.is_none() && self.events.is_none() && self.scenario != Scenario::Connect {
            return Err(
                "say when to stop: --duration, --events, or both (whichever comes first)".into(),
            );
        }
        if let Some(r) = self.connect_rate {
            if r.is_nan() || r <= 0.0 {
                return Err("--connect-rate must be more than 0".into());
            }
        }
        match self.scenario {
            Scenario::Subscribe => {
                if self.rate.is_some() {
                    return Err(
                        "subscribe only receives: --rate belongs to echo, publish and connect"
                            .into(),
                    );
                }
                if self.gapless && self.seq.is_none() {
                    return Err("--gapless needs --seq-field (where the sequence number is)".into());
                }
            }
            Scenario::Echo | Scenario::Publish => {
                if self.rate.is_none() {
                    return Err(format!(
                        "{} is open loop: give --rate (e.g. 10000, ramp:1000..20000/30s)",
                        if self.scenario == Scenario::Echo {
                            "echo"
                        } else {
                            "publish"
                        }
                    ));
                }
                if !(16..=1 << 20).contains(&self.message_bytes) {
                    return Err("--message-bytes must be from 16 to 1048576".into());
                }
            }
            Scenario::Connect => {}
        }
        if self.scenario == Scenario::Publish {
            if self.api_key.is_none() {
                return Err("publish needs --api-key (the gateway's ingest_api_key)".into());
            }
            if !(1..=100_000).contains(&self.batch) {
                return Err("--batch must be from 1 to 100000".into());
            }
            if self.publishers == 0 || self.publishers > 64 {
                return Err("--publishers must be from 1 to 64".into());
            }
            if matches!(self.tokens, Tokens::None) && !self.url.has_token_slot() {
                return Err(
                    "publish subscribes to the gateway's /ws: give --jwt-secret or --token-file"
                        .into(),
                );
            }
        }
        let wss = self.url.tls || self.ingest_url.as_ref().is_some_and(|u| u.tls);
        if wss && self.tls.is_none() {
            return Err("a wss:// URL needs a TLS configuration".into());
        }
        if let Some(p) = self.subprotocols.iter().find(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c))
        }) {
            return Err(format!(
                "--subprotocol `{p}` is not a protocol name (an HTTP token)"
            ));
        }
        if self.headers_carry_auth() && self.url.has_token_slot() {
            return Err("the token goes in the URL ({token}) and in a --header: choose one".into());
        }
        if self.interval < Duration::from_millis(100) {
            return Err("--interval must be at least 100ms".into());
        }
        if self.thresholds.iter().any(Threshold::needs_latency)
            && self.scenario == Scenario::Subscribe
            && self.latency_field.is_none()
        {
            return Err(
                "a latency threshold needs latency: give --latency-field (the frame's timestamp)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What workers and the main thread share: when to stop, and running totals for progress.
pub(crate) struct Control {
    pub stop: AtomicBool,
    /// Units completed (events received, replies matched, connections made).
    pub done: AtomicU64,
    /// Messages sent by generators.
    pub sent: AtomicU64,
}

impl Control {
    pub(crate) fn new() -> Arc<Control> {
        Arc::new(Control {
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    pub(crate) fn stopped(&self) -> bool {
        // Relaxed: a flag polled in loops; nothing else is published through it.
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Kinds of errors, counted per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrKind {
    /// TCP connect failed or timed out.
    ConnectFailed,
    /// The server answered the upgrade with something other than 101.
    HandshakeRefused,
    /// The server closed (or reset) a connection before the end.
    Closed,
    /// A frame that is not valid WebSocket, or a reply that matches nothing sent.
    Protocol,
    /// Sequence numbers skipped (with `--gapless`), counted per missing event.
    Lost,
    /// A sequence number seen twice in a row.
    Duplicate,
    /// A sequence number lower than the last.
    OutOfOrder,
    /// A reply never came (echo), or published events never arrived (publish).
    Missing,
    /// Events the gateway refused one by one (publish).
    Rejected,
    /// Batches refused by the gateway's rate limit (publish).
    RateLimited,
}

impl ErrKind {
    pub(crate) const ALL: [ErrKind; 10] = [
        ErrKind::ConnectFailed,
        ErrKind::HandshakeRefused,
        ErrKind::Closed,
        ErrKind::Protocol,
        ErrKind::Lost,
        ErrKind::Duplicate,
        ErrKind::OutOfOrder,
        ErrKind::Missing,
        ErrKind::Rejected,
        ErrKind::RateLimited,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrKind::ConnectFailed => "connect_failed",
            ErrKind::HandshakeRefused => "handshake_refused",
            ErrKind::Closed => "closed_by_server",
            ErrKind::Protocol => "protocol",
            ErrKind::Lost => "lost",
            ErrKind::Duplicate => "duplicate",
            ErrKind::OutOfOrder => "out_of_order",
            ErrKind::Missing => "missing",
            ErrKind::Rejected => "rejected",
            ErrKind::RateLimited => "rate_limited",
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Errors([u64; 10]);

impl Errors {
    pub(crate) fn add(&mut self, kind: ErrKind, n: u64) {
        self.0[kind as usize] += n;
    }

    pub(crate) fn merge(&mut self, other: &Errors) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn get(&self, kind: ErrKind) -> u64 {
        self.0[kind as usize]
    }
}

/// One worker's interval: what it measured in `[start + index * interval, +interval)`.
pub(crate) struct Tick {
    pub worker: usize,
    pub index: u64,
    pub rec: Recorder,
    /// Units completed.
    pub done: u64,
    /// Messages sent.
    pub sent: u64,
    pub bytes: u64,
    /// Frames that did not carry the sequence field (protocol frames such as `hello`).
    pub other_frames: u64,
    pub errors: Errors,
    /// The worker's last tick.
    pub last: bool,
    /// For the last tick of a generator: messages its schedule had due by the time it stopped.
    pub scheduled: u64,
    /// Unix ns of the last unit completed in this interval (0 if none).
    pub last_done_ns: u64,
}

impl Tick {
    pub(crate) fn new(worker: usize, index: u64) -> Tick {
        Tick {
            worker,
            index,
            rec: Recorder::default(),
            done: 0,
            sent: 0,
            bytes: 0,
            other_frames: 0,
            errors: Errors::default(),
            last: false,
            scheduled: 0,
            last_done_ns: 0,
        }
    }
}

/// A worker's side of the interval clock: knows which interval `now` is in and hands the
/// finished one to the main thread.
pub(crate) struct Ticker {
    pub tick: Tick,
    start_ns: u64,
    interval_ns: u64,
    tx: crossbeam_channel::Sender<Tick>,
}

impl Ticker {
    pub(crate) fn new(
        worker: usize,
        start_ns: u64,
        interval: Duration,
        tx: crossbeam_channel::Sender<Tick>,
    ) -> Ticker {
        Ticker {
            tick: Tick::new(worker, 0),
            start_ns,
            interval_ns: interval.as_nanos() as u64,
            tx,
        }
    }

    /// Sends every interval that ended by `now_ns` (empty ones too, so the main thread knows
    /// this worker has passed them).
    pub(crate) fn advance(&mut self, now_ns: u64) {
        let current = now_ns.saturating_sub(self.start_ns) / self.interval_ns;
        while self.tick.index < current {
            let next = Tick::new(self.tick.worker, self.tick.index + 1);
            let done = std::mem::replace(&mut self.tick, next);
            let _ = self.tx.send(done);
        }
    }

    /// When the current interval ends (unix ns).
    pub(crate) fn next_boundary(&self) -> u64 {
        self.start_ns + (self.tick.index + 1) * self.interval_ns
    }

    /// Sends the last (partial) interval.
    pub(crate) fn finish(mut self, scheduled: u64) {
        self.tick.last = true;
        self.tick.scheduled = scheduled;
        let _ = self.tx.send(self.tick);
    }
}

/// Why a run did not produce a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The options, or the machine's limits, do not allow the run (exit 2).
    Usage(String),
    /// The run could not start: no connection could be opened (exit 4).
    Failed(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Usage(m) | RunError::Failed(m) => f.write_str(m),
        }
    }
}

impl RunError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) => exit::USAGE,
            RunError::Failed(_) => exit::RUN_FAILED,
        }
    }
}

/// Runs a load test and returns its report. Errors are setup failures; a run that went wrong
/// once started still returns a report, whose verdict says so.
pub fn run(opts: &LoadOptions) -> Result<LoadReport, RunError> {
    opts.validate().map_err(RunError::Usage)?;
    net::preflight(
        opts.connections + opts.publishers * usize::from(opts.scenario == Scenario::Publish),
        opts.url.addr,
        &opts.sources,
    )
    .map_err(RunError::Usage)?;
    let report = match opts.scenario {
        Scenario::Subscribe => subscribe::run(opts),
        Scenario::Echo => echo::run(opts),
        Scenario::Publish => publish::run(opts),
        Scenario::Connect => connect::run(opts),
    }
    .map_err(RunError::Failed)?;
    for path in &opts.plot {
        plot::draw(&report, path).map_err(RunError::Failed)?;
    }
    if let Some(path) = &opts.junit {
        std::fs::write(path, report.to_junit())
            .map_err(|e| RunError::Failed(format!("--junit `{}`: {e}", path.display())))?;
    }
    Ok(report)
}

/// Splits `0..n` into `parts` near-equal shares: the indices of share `k`.
pub(crate) fn share(n: usize, parts: usize, k: usize) -> impl Iterator<Item = usize> {
    (k..n).step_by(parts.max(1))
}

/// How many of `total` units share `k` of `parts` gets (the first `total % parts` get one
/// more); `None` (no limit) stays unlimited.
pub(crate) fn share_of(total: Option<u64>, parts: usize, k: usize) -> u64 {
    let (parts, k) = (parts.max(1) as u64, k as u64);
    total.map_or(u64::MAX, |t| t / parts + u64::from(k < t % parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_any_unit_become_nanoseconds() {
        let ns = 1_700_000_000_123_456_789u64;
        assert_eq!(TsUnit::Auto.int_to_ns(ns), ns);
        assert_eq!(
            TsUnit::Auto.int_to_ns(1_700_000_000_123),
            1_700_000_000_123_000_000
        );
        assert_eq!(
            TsUnit::Auto.to_ns(1_700_000_000_123_456.0),
            1_700_000_000_123_456_000
        );

        assert_eq!(
            TsUnit::Auto.to_ns(1_700_000_000.5),
            1_700_000_000_500_000_000
        );
        assert_eq!(TsUnit::Ms.to_ns(5.0), 5_000_000);
    }

    #[test]
    fn options_say_what_is_missing() {
        let url = UrlTemplate::parse("ws://127.0.0.1:1/").unwrap();
        let mut o = LoadOptions::new(Scenario::Echo, url.clone());
        o.duration = Some(Duration::from_secs(1));
        assert!(o.validate().unwrap_err().contains("--rate"));
        o.rate = Some(RateProfile::Constant(10.0));
        o.validate().unwrap();
        let mut s = LoadOptions::new(Scenario::Subscribe, url.clone());
        assert!(s.validate().unwrap_err().contains("--duration"));
        s.events = Some(5);
        s.gapless = true;
        assert!(s.validate().unwrap_err().contains("--seq-field"));
        let mut p = LoadOptions::new(Scenario::Publish, url);
        p.events = Some(5);
        p.rate = Some(RateProfile::Constant(10.0));
        assert!(p.validate().unwrap_err().contains("--api-key"));
        p.api_key = Some("k".repeat(16));
        assert!(p.validate().unwrap_err().contains("--jwt-secret"));
    }

    #[test]
    fn shares_cover_every_index_once() {
        let mut all: Vec<usize> = (0..3).flat_map(|k| share(10, 3, k)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let counts: Vec<u64> = (0..3).map(|k| share_of(Some(10), 3, k)).collect();
        assert_eq!(counts, [4, 3, 3]);
        assert_eq!(share_of(None, 3, 0), u64::MAX);
    }
}

/// A header sent with each upgrade request (`--header NAME:VALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name, as given.
    pub name: String,
    /// The value; `{conn}`, `{user}` and `{token}` are filled per connection.
    pub value: String,
}

impl Header {
    /// Parses `NAME:VALUE`. Refuses names that are not HTTP tokens, line breaks anywhere, and
    /// the headers the WebSocket handshake sets itself.
    pub fn parse(text: &str) -> Result<Header, String> {
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("--header `{text}` must be NAME:VALUE"))?;
        let (name, value) = (name.trim(), value.trim());
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token_char) {
            return Err(format!("--header `{text}`: `{name}` is not a header name"));
        }
        if value.contains(['\r', '\n', '\0']) {
            return Err(format!(
                "--header `{name}`: a value cannot hold a line break"
            ));
        }
        const OWN: [&str; 6] = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
        ];
        if OWN.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            return Err(format!(
                "--header `{name}` is set by the handshake itself{}",
                if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                    "; use --subprotocol"
                } else {
                    ""
                }
            ));
        }
        Ok(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod header_tests {
    use super::Header;

    #[test]
    fn headers_parse_and_refuse_what_the_handshake_owns() {
        let h = Header::parse(" X-Api-Key : key-{conn} ").unwrap();
        assert_eq!(
            (h.name.as_str(), h.value.as_str()),
            ("X-Api-Key", "key-{conn}")
        );
        assert_eq!(
            Header::parse("Origin:https://a.example").unwrap().value,
            "https://a.example"
        );
        for (bad, says) in [
            ("no-colon", "NAME:VALUE"),
            ("Bad Name: x", "not a header name"),
            (": x", "not a header name"),
            ("X-A: one\r\nX-B: two", "line break"),
            ("host: evil", "set by the handshake"),
            ("Sec-WebSocket-Key: x", "set by the handshake"),
            ("sec-websocket-protocol: a", "use --subprotocol"),
        ] {
            let e = Header::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
