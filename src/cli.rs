//! The `floodgate` command line. Not a stable API: the binary is its only user.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench::{self, BenchOptions};
use crate::config::Settings;
use crate::error::Error;
use crate::gateway::Gateway;

/// floodgate: per-user events from application threads onto WebSocket connections.
#[derive(Parser, Debug)]
#[command(name = "floodgate", version, about, long_about = None, after_help = LOG_HELP)]
struct Cli {
    /// Log lines as `text` (colour only when stderr is a terminal and NO_COLOR is unset) or
    /// `json` (one object per line: timestamp, level, target, fields)
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `--help` says about logs (`floodgate --help` and `floodgate serve --help` end with it).
const LOG_HELP: &str = "Logs go to stderr. Which ones: FLOODGATE_LOG, else RUST_LOG, else `info` \
(a tracing filter such as `debug`, `floodgate=debug` or `warn,floodgate::reactor=debug`). At \
`info`, each refused handshake is one line (reason, status, peer; at most 20 a second per \
shard, then a count of those left out); at `debug`, each connection's start (user, peer) and \
end (user, close code). --log-format json writes one JSON object per line.";

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The log filter: `FLOODGATE_LOG`, else `RUST_LOG`, else `info`. A filter that does not
/// parse is an error that names its variable.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, String> {
    for var in ["FLOODGATE_LOG", "RUST_LOG"] {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => {
                return tracing_subscriber::EnvFilter::try_new(&v)
                    .map_err(|e| format!("invalid environment variable `{var}` = `{v}`: {e}"));
            }
            _ => {}
        }
    }
    Ok("info".into())
}

/// The log format chosen, for [`notice`].
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// A line `floodgate serve` always writes to stderr, whatever the log filter (where it
/// listens, that it stops): plain text, or in `--log-format json` an object like the logs'.
fn notice(msg: &str) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => {
            let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            eprintln!(
                "{}",
                serde_json::json!({
                    "timestamp": ts.to_string(),
                    "level": "INFO",
                    "target": "floodgate",
                    "message": msg,
                })
            );
        }
        _ => eprintln!("floodgate: {msg}"),
    }
}

/// Sends log lines to stderr in `format`.
fn init_logs(format: LogFormat) -> Result<(), String> {
    let _ = LOG_FORMAT.set(format);
    let filter = log_filter()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colour only for a person at a terminal: never in a file or a pipe, never with
        // NO_COLOR set (https://no-color.org).
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .try_init(),
    };
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a standalone gateway until SIGINT/SIGTERM.
    ///
    /// Settings come from built-in defaults, then --config FILE (TOML, keys as below with `_`),
    /// then FLOODGATE_* environment variables, then flags. With no JWT key configured, a dev
    /// secret is generated, saved for `floodgate token`, and printed.
    #[command(after_help = LOG_HELP)]
    Serve(Box<ServeArgs>),
    /// Mint a development JWT (HS256) for a user.
    Token(TokenArgs),
    /// Benchmark an embedded gateway with real WebSocket clients over loopback, verifying that
    /// every client receives exactly its own events, in order.
    Bench(BenchArgs),
    /// Load-test any WebSocket server (ours or anyone's) and report honest latency and
    /// throughput.
    ///
    /// Scenarios: `subscribe` holds connections and measures the events they receive (rate,
    /// per-connection order, loss and duplicates from a sequence field, latency from a
    /// timestamp field); `echo` sends messages at an open-loop rate and matches each reply by
    /// id; `publish` drives a floodgate gateway's ingest socket at an open-loop rate while
    /// subscribed connections measure end-to-end latency; `connect` opens connections at an
    /// open-loop rate, measures the handshake, and holds or churns them.
    ///
    /// Generated messages are stamped with their intended send time: latency is reported from
    /// it (corrected for coordinated omission) and from the actual send (uncorrected), and the
    /// run fails as overloaded if the generator could not keep its schedule.
    ///
    /// Exit codes: 0 every threshold passed; 1 a threshold failed (without an `errors`
    /// threshold, any error fails the run); 2 usage or configuration error; 3 the generator
    /// was overloaded (the rate asked for was not offered) and no threshold failed; 4 the run
    /// could not complete (connections failed, the server went away, expected events stopped
    /// arriving). When several hold, the first of 4, 1, 3 is the exit code, and the report
    /// names them all (`failed` in --json).
    ///
    /// `floodgate load <SCENARIO> --help` shows the options of one scenario.
    ///
    /// Examples:
    ///   floodgate load subscribe --url ws://127.0.0.1:8080/ws --connections 64 --jwt-secret $S --events 2000000 --seq-field /seq --gapless --latency-field /ts
    ///   floodgate load echo --url ws://127.0.0.1:8080/echo --connections 100 --rate 50000 --duration 30s --threshold 'p99<2ms'
    ///   floodgate load publish --url ws://127.0.0.1:8080/ws --connections 100 --jwt-secret $S --api-key $K --rate ramp:1000..100000/20s --duration 30s
    ///   floodgate load connect --url ws://127.0.0.1:8080/ws --connections 10000 --jwt-secret $S --rate 2000 --hold 5s
    #[command(verbatim_doc_comment)]
    Load(LoadCmd),
    /// Performance regression gate for CI: measure, compare with perf/baseline.json, print a
    /// markdown table, exit 1 on a regression beyond a metric's limit.
    ///
    /// Suites: `instructions` (instructions per operation of the hot paths under valgrind's
    /// callgrind: deterministic on shared runners; limit +3%), `criterion` (the ring, encode
    /// and route benches; wall clock: reported against +25% but not gating) and `e2e`
    /// (`floodgate bench` throughput of this binary over --baseline-bin, run alternately in
    /// one job; limit -10%). Run from the
    /// repository root (it builds benches with cargo). scripts/perf-gate builds the baseline
    /// commit's binary and calls this.
    ///
    /// Exit codes: 0 no regression; 1 a metric regressed beyond its limit; 2 usage or setup
    /// error (no valgrind, no baseline, a build failed).
    #[command(name = "perf-gate", verbatim_doc_comment)]
    PerfGate(GateArgs),
}

#[derive(Args, Debug)]
struct GateArgs {
    /// The baseline file (versioned JSON, committed).
    #[arg(long, default_value = "perf/baseline.json")]
    baseline: PathBuf,
    /// Suites to run (repeatable) [default: instructions and criterion, plus e2e when
    /// --baseline-bin is given].
    #[arg(long, value_enum)]
    suite: Vec<floodgate_perf_gate::Suite>,
    /// A floodgate binary built from the baseline commit, for the e2e suite.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// Runs of each binary in the e2e suite.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Where to write the markdown table (for a CI system to post).
    #[arg(long, default_value = "target/perf-gate.md")]
    report: PathBuf,
    /// Record this run's numbers as the new baseline (with the machine description and commit)
    /// instead of comparing.
    #[arg(long)]
    update_baseline: bool,
    /// Cargo features for building the instructions harness (the self test uses
    /// gate-selftest-slowdown).
    #[arg(long)]
    features: Option<String>,
}

#[derive(Args, Debug)]
struct LoadCmd {
    #[command(subcommand)]
    scenario: LoadScenario,
}

/// `floodgate load <SCENARIO>`: each scenario's own options beside the common ones.
#[derive(clap::Subcommand, Debug)]
enum LoadScenario {
    /// Hold connections and measure the events they receive: rate, per-connection order, loss
    /// and duplicates from a sequence field, latency from a timestamp field.
    ///
    /// Example:
    ///   floodgate load subscribe --url ws://127.0.0.1:8080/ws --connections 64 --jwt-secret $S --events 2000000 --seq-field /seq --gapless --latency-field /ts
    #[command(verbatim_doc_comment)]
    Subscribe {
        #[command(flatten)]
        common: Box<LoadCommon>,
        #[command(flatten)]
        recv: RecvArgs,
    },
    /// Send messages at an open-loop rate and match each echoed reply by id; latency counts
    /// from each message's intended send time.
    ///
    /// Example:
    ///   floodgate load echo --url ws://127.0.0.1:8080/echo --connections 100 --rate 50000 --duration 30s --threshold 'p99<2ms'
    #[command(verbatim_doc_comment)]
    Echo {
        #[command(flatten)]
        common: Box<LoadCommon>,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Publish through a floodgate gateway's ingest socket at an open-loop rate while
    /// subscribed connections (one user each) measure end-to-end latency and check that every
    /// event arrives once, in order.
    ///
    /// Example:
    ///   floodgate load publish --url ws://127.0.0.1:8080/ws --connections 100 --jwt-secret $S --api-key $K --rate ramp:1000..100000/20s --duration 30s
    #[command(verbatim_doc_comment)]
    Publish {
        #[command(flatten)]
        common: Box<LoadCommon>,
        #[command(flatten)]
        gen: GenArgs,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Open connections at an open-loop rate, measure the handshake, and hold or churn them.
    ///
    /// Example:
    ///   floodgate load connect --url ws://127.0.0.1:8080/ws --connections 10000 --jwt-secret $S --rate 2000 --hold 5s
    #[command(verbatim_doc_comment)]
    Connect {
        #[command(flatten)]
        common: Box<LoadCommon>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// The options every scenario takes.
#[derive(Args, Debug)]
struct LoadCommon {
    /// Where to connect: ws://host:port/path?query, or wss:// for TLS. The path and query may hold `{conn}` (the
    /// connection index), `{user}` (its user) and `{token}` (its token; otherwise tokens go in
    /// an `Authorization: Bearer` header). For publish: the gateway's /ws, where subscribers
    /// connect.
    #[arg(long)]
    url: String,
    /// A header for every upgrade request, repeatable: 'NAME:VALUE'. The value may hold
    /// `{conn}`, `{user}` and `{token}`; a header with `{token}` or an `Authorization` header
    /// of your own replaces the `Authorization: Bearer` one.
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = floodgate_load::Header::parse)]
    headers: Vec<floodgate_load::Header>,
    /// A subprotocol to offer (`Sec-WebSocket-Protocol`), repeatable; the server must choose
    /// one of those offered, as browsers require.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// A text message each connection sends once it is up, before it is measured (a subscribe,
    /// say), repeatable, sent in order. It may hold `{conn}`, `{user}`, `{token}`, `{seq}`
    /// (its number on the connection, from 1), `{ts_ns}` and `{uuid}`.
    #[arg(long = "send-on-open", value_name = "TEMPLATE")]
    send_on_open: Vec<String>,
    /// Hold each connection out of the measured phase until a reply containing this text
    /// arrives (templated as --send-on-open; within the handshake timeout, 10 s). Frames
    /// before it are not counted.
    #[arg(long, value_name = "TEXT")]
    await_reply: Option<String>,
    /// Connections to open (for publish: subscribers, one user each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// wss://: also trust the CA certificates in this PEM file (besides the Mozilla roots),
    /// for a test server with its own CA.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Connections opened per second while setting up (subscribe, echo, publish); default: as
    /// fast as they complete.
    #[arg(long, value_name = "PER_SEC")]
    connect_rate: Option<f64>,
    /// `{user}` of connection i is this prefix followed by i.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Mint each connection's token: an HS256 JWT with this secret and `sub` = its user.
    #[arg(
        long,
        env = "FLOODGATE_JWT_HS256_SECRET",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    jwt_secret: Option<String>,
    /// Lifetime of minted tokens.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    jwt_ttl: Duration,
    /// Read tokens from this file, one per line; connection i takes line i mod lines.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Source addresses to spread connections over, each with its own ephemeral ports: a list
    /// (127.0.0.2,127.0.0.3) or a range (127.0.0.1-127.0.0.8).
    #[arg(long, value_name = "ADDRS")]
    source_addr: Option<String>,
    /// Worker threads (for publish: receiving threads); default: the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Stop after this long (for publish: publish for this long, then wait for delivery).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many events received (subscribe), replies (echo) or events published
    /// (publish). With --duration too, whichever comes first.
    #[arg(long)]
    events: Option<u64>,
    /// Give up (exit 4) when nothing arrives for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A pass/fail condition, repeatable: p50 .. p99.99, max, mean (latency with a unit:
    /// 'p99<2ms'), rate (per second: 'rate>500000'), errors (a fraction: 'errors<0.001'), or
    /// any number of the --json report by its JSON pointer ('/generator/late<100',
    /// '/uncorrected_latency_us/p99<5ms': names ending in _us take a unit).
    #[arg(long, value_name = "EXPR", value_parser = floodgate_load::Threshold::parse)]
    threshold: Vec<floodgate_load::Threshold>,
    /// Print one JSON object (schema floodgate.load/1) instead of the text summary.
    #[arg(long)]
    json: bool,
    /// Write an HdrHistogram interval log of the corrected latency (one histogram per interval,
    /// in nanoseconds, untagged) to FILE and, for echo, publish and connect, the uncorrected
    /// latency beside it (run.hlog -> run.uncorrected.hlog): each file reads as it is meant in
    /// HdrHistogram's tools (HistogramLogProcessor, the Python and Go readers) and merges
    /// across runs.
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    /// Write one JSON object per interval as the run goes (schema floodgate.load.interval/1:
    /// events, rate, sent, errors, p50/p99/max latency), to this file or, with `-`, to
    /// standard output (before the --json report, if both go there).
    #[arg(long, value_name = "FILE|-")]
    intervals: Option<PathBuf>,
    /// Write the thresholds, the generator's schedule and the run's completion as JUnit XML
    /// test cases (for a CI system's test report), after the run.
    #[arg(long, value_name = "FILE.xml")]
    junit: Option<PathBuf>,
    /// Draw the run into this file, SVG or (ending in .png) PNG, repeatable: a title with the
    /// command, the target rate and the verdict; latency by percentile; latency per interval
    /// (p50, p99, max: where a ramp breaks); throughput per interval. Legends say what the
    /// latency counts from in this scenario.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Vec<PathBuf>,
    /// Length of a reporting interval (progress, HDR log, plot).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// What subscribe checks in the frames it receives.
#[derive(Args, Debug)]
struct RecvArgs {
    /// JSON pointer to a sequence number in received frames (e.g. /seq): checked per
    /// connection to be strictly increasing; frames without it are not counted as events.
    #[arg(long, value_name = "POINTER", value_parser = floodgate_load::Pointer::parse)]
    seq_field: Option<floodgate_load::Pointer>,
    /// With --seq-field: the sequence must go up by exactly one; skipped numbers count as lost.
    #[arg(long)]
    gapless: bool,
    /// JSON pointer to a timestamp in received frames (e.g. /ts) to measure latency from
    /// (subscribe). The sender's clock must be this machine's, or synchronised with it.
    #[arg(long, value_name = "POINTER", value_parser = floodgate_load::Pointer::parse)]
    latency_field: Option<floodgate_load::Pointer>,
    /// Unit of --latency-field since the Unix epoch.
    #[arg(long, value_enum, default_value_t = floodgate_load::TsUnit::Auto)]
    ts_unit: floodgate_load::TsUnit,
}

/// The open-loop generator of echo and publish.
#[derive(Args, Debug)]
struct GenArgs {
    /// Open-loop rate, per second in total: a number (50000), a ramp
    /// (ramp:1000..50000/30s) or steps (steps:10000,20000,40000/10s). echo: messages;
    /// publish: events.
    #[arg(long, value_parser = floodgate_load::RateProfile::parse)]
    rate: floodgate_load::RateProfile,
    #[command(flatten)]
    lag: LagArgs,
    /// Bytes of each message (echo) or of each event (publish).
    #[arg(long, default_value_t = 150)]
    message_bytes: usize,
}

/// When the generator counts as overloaded.
#[derive(Args, Debug)]
struct LagArgs {
    /// A message that leaves later than this behind its schedule is late. The generator
    /// counts as overloaded (exit 3) when more messages are late than one stall of 20 times
    /// this (200 ms on the default) makes late at the peak rate, or when more than this much
    /// of the schedule was never sent. One scheduler hiccup on a busy machine is forgiven; a
    /// generator that cannot keep its rate falls further behind and is not.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    max_lag: Duration,
}

/// The publish scenario's ingest side.
#[derive(Args, Debug)]
struct PublishArgs {
    /// publish: events per ingest batch at most (events due at the same moment share one).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// publish: ingest connections, each with its own share of the rate.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// publish: the ingest socket [default: --url's scheme and host with /api/ingest].
    #[arg(long)]
    ingest_url: Option<String>,
    /// publish: the gateway's ingest_api_key.
    #[arg(long, env = "FLOODGATE_INGEST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// The connect scenario's schedule.
#[derive(Args, Debug)]
struct ConnectArgs {
    /// Connections opened per second (open loop: ramp:.. and steps:.. as for echo); default:
    /// back to back.
    #[arg(long, value_parser = floodgate_load::RateProfile::parse)]
    rate: Option<floodgate_load::RateProfile>,
    #[command(flatten)]
    lag: LagArgs,
    /// connect: hold each connection this long, then close it (churn); default: to the end.
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file with settings (same names as the flags, with `_` for `-`).
    #[arg(long, env = "FLOODGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    user: String,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// HS256 secret; defaults to the config file's, then the saved dev secret of `serve`.
    #[arg(long, env = "FLOODGATE_JWT_HS256_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// TOML config file to read `jwt_hs256_secret` from.
    #[arg(long, env = "FLOODGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// What the clients connect to: `floodgate` (an embedded gateway) or `raw-tcp` (no gateway:
    /// each producer writes each event's frame to its user's socket itself, one write per
    /// event; the floor to compare a gateway run with, measured in the same session).
    #[arg(long, value_enum, default_value_t = bench::ServerKind::Floodgate)]
    server: bench::ServerKind,
    /// WebSocket clients, one user each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Events to emit in total, round-robin over the users.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Producer threads, each with its own emitter.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Approximate size of each event frame in bytes.
    #[arg(long, default_value_t = 150)]
    payload_bytes: usize,
    /// Events per second in total, open loop (latency measured from each event's scheduled
    /// time); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Reactor shards of the embedded gateway.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Client threads receiving and verifying.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// The gateway's max_batch_events.
    #[arg(long, default_value_t = 1024)]
    max_batch_events: usize,
    /// The gateway's max_batch_delay (e.g. 0, 500us, 2ms).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    max_batch_delay: Duration,
    /// The gateway's ring_capacity (bytes per emitter and shard, a power of two).
    #[arg(long, default_value_t = 1 << 20)]
    ring_capacity: usize,
    /// The gateway's history_max_events: events kept per user for resume (0 = none). The bench
    /// sizes history_max_bytes and history_total_bytes so that this count is what limits it.
    /// Default: 1024; with --chaos and no --spool, every event of the run (a resume must find
    /// what its client missed, and an unthrottled producer outruns any smaller history; the
    /// gateway then holds about events x (payload-bytes + 64) bytes of history).
    #[arg(long)]
    history_max_events: Option<usize>,
    /// Every 100 ms, drop a random 10% of the connections mid-stream and reconnect them with
    /// their cursor (`?since=&epoch=`); the report adds resumes, replayed events and gaps, and
    /// every event must still arrive exactly once, in order.
    #[arg(long)]
    chaos: bool,
    /// Keep every event in a durable spool under this directory (segment files are written
    /// before any client sees an event). The run uses a new subdirectory and removes it at the
    /// end. Without it, history is in memory only.
    #[arg(long, value_name = "DIR")]
    spool: Option<std::path::PathBuf>,
    /// With --spool: when it calls fdatasync (`always`, `never`, or an interval such as `100ms`).
    #[arg(
        long,
        value_name = "always|never|INTERVAL",
        default_value = "100ms",
        requires = "spool"
    )]
    spool_fsync: crate::spool::FsyncPolicy,
    /// Where the embedded gateway sequences events: `local` (this process) or `redis` (through
    /// one Redis, as a node of several would; the report adds Redis round trips, events per
    /// round trip and Redis CPU). With `redis` and no --redis-url, the bench starts a
    /// `redis-server` of its own on 127.0.0.1 (installed: apt install redis-server) and stops
    /// it at the end.
    #[arg(long, default_value = "local", value_name = "local|redis")]
    engine: crate::config::Engine,
    /// With --engine redis: the Redis to use (keys under a prefix of the run's own, left for
    /// Redis's retention to trim) instead of one the bench starts.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Print one JSON line instead of the text report.
    #[arg(long)]
    json: bool,
}

/// When a bad value came from an environment variable rather than the command line, the
/// message naming the variable (clap's names the flag, which the user never typed).
fn from_env(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let typed = std::env::args()
        .skip(1)
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if typed {
        return None;
    }
    fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| env_of(c, long)))
    }
    let var = env_of(&<Cli as clap::CommandFactory>::command(), long)?;
    std::env::var_os(&var)?;
    let value = e
        .get(ContextKind::InvalidValue)
        .map(|v| format!(" = `{v}`"))
        .unwrap_or_default();
    // clap's first line ends with the parser's reason after the flag.
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let why = first.rsplit_once("': ").map_or(first, |(_, why)| why);
    Some(format!(
        "invalid environment variable `{var}`{value}: {why} (it sets {flag}; see `floodgate \
         serve --help`)"
    ))
}

/// Environment variables with the `FLOODGATE_` prefix that are not settings.
const OTHER_ENV: [&str; 1] = ["FLOODGATE_LOG"];

/// Every `FLOODGATE_*` variable some command reads, from the command line's definition.
fn known_env_names() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out: Vec<String> = OTHER_ENV.iter().map(|s| s.to_string()).collect();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

/// A `FLOODGATE_*` variable that no command reads is a mistake (a misspelt setting would
/// otherwise be silently ignored, where the config file refuses unknown keys). Variables
/// beginning `FLOODGATE_TEST_` belong to the test suite and are let through.
fn check_env_names(names: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let known = known_env_names();
    for name in names {
        let name = name.to_string_lossy();
        if !name.starts_with("FLOODGATE_")
            || name.starts_with("FLOODGATE_TEST_")
            || known.iter().any(|k| *k == name)
        {
            continue;
        }
        let nearest = known
            .iter()
            .min_by_key(|k| strsim::levenshtein(k, &name))
            .filter(|k| strsim::levenshtein(k, &name) <= 3);
        return Err(match nearest {
            Some(k) => format!("unknown environment variable `{name}`; did you mean `{k}`?"),
            None => format!(
                "unknown environment variable `{name}` (`floodgate serve --help` lists the \
                 FLOODGATE_* variables)"
            ),
        });
    }
    Ok(())
}

/// Runs the command line and returns the process exit code: 0 success, 1 a failed run (lost
/// or misrouted events), 2 usage or configuration errors.
pub fn main() -> ExitCode {
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => match from_env(&e) {
            Some(msg) => {
                eprintln!("floodgate: {msg}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    if let Err(msg) = check_env_names(std::env::vars_os().map(|(k, _)| k)) {
        eprintln!("floodgate: {msg}");
        return ExitCode::from(2);
    }
    if let Err(msg) = init_logs(cli.log_format) {
        eprintln!("floodgate: {msg}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Token(a) => token(a),
        Command::Bench(a) => run_bench(a),
        Command::Load(a) => return run_load(a),
        Command::PerfGate(a) => return run_gate(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("floodgate: {e}");
            ExitCode::from(2)
        }
    }
}

fn layered(config: Option<&Path>, flags: Settings) -> Result<Settings, Error> {
    let file = match config {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    Ok(file.overlay(flags))
}

fn serve(a: ServeArgs) -> Result<ExitCode, Error> {
    let mut settings = layered(a.config.as_deref(), a.settings)?;
    if !settings.has_jwt_key() {
        let secret = crate::devsecret::load_or_create()?;
        notice(&format!(
            "no JWT key configured; using the dev secret saved in {}\n  \
             secret: {secret}\n  mint a token: floodgate token --user u1",
            crate::devsecret::path().display()
        ));
        settings.jwt_hs256_secret = Some(secret);
    }
    let ingest = settings.ingest_api_key.is_some();
    let gw = Gateway::builder().settings(settings).build()?;
    let (ws, http) = if gw.serves_tls() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    notice(&format!(
        "listening on {ws}://{}/ws  (health: /healthz, metrics: /metrics)",
        gw.local_addr()
    ));
    if ingest {
        notice(&format!(
            "ingest on {http}://{0}/api/publish and {ws}://{0}/api/ingest (Authorization: Bearer <ingest_api_key>)",
            gw.local_addr()
        ));
    }
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    // SIGHUP: load the TLS certificate and key again (new connections get them).
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            match gw.reload_tls() {
                Ok(()) if gw.serves_tls() => notice("SIGHUP: TLS certificate and key loaded again"),
                Ok(()) => notice("SIGHUP: no TLS configured; nothing to load"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS files not loaded; the certificate in use stays")
                }
            }
        }
    }
    notice("shutting down");
    let report = gw.shutdown()?;
    notice(&format!(
        "stopped; {} events drained from rings at shutdown, {} undelivered",
        report.drained_from_rings, report.undelivered
    ));
    Ok(ExitCode::SUCCESS)
}

fn token(a: TokenArgs) -> Result<ExitCode, Error> {
    let secret = match a.secret {
        Some(s) => s,
        None => {
            let from_file = match &a.config {
                Some(p) => Settings::from_toml_file(p)?.jwt_hs256_secret,
                None => None,
            };
            match from_file {
                Some(s) => s,
                None => crate::devsecret::load()?.ok_or_else(|| {
                    Error::Config(crate::error::ConfigError::new(
                        "jwt_hs256_secret",
                        format!(
                            "no secret given (--secret, FLOODGATE_JWT_HS256_SECRET or --config) and \
                             no dev secret saved at {} (run `floodgate serve` once)",
                            crate::devsecret::path().display()
                        ),
                    ))
                })?,
            }
        }
    };
    if secret.len() < crate::config::MIN_HS256_SECRET {
        return Err(crate::error::ConfigError::new(
            "jwt_hs256_secret",
            format!("must be at least {} bytes", crate::config::MIN_HS256_SECRET),
        )
        .into());
    }
    if a.user.is_empty() || a.user.len() > crate::record::MAX_USER_LEN {
        return Err(crate::error::ConfigError::new("user", "must be 1 to 255 bytes").into());
    }
    println!(
        "{}",
        crate::auth::mint_hs256(secret.as_bytes(), &a.user, a.ttl)?
    );
    Ok(ExitCode::SUCCESS)
}

fn run_bench(a: BenchArgs) -> Result<ExitCode, Error> {
    let opts = BenchOptions {
        server: a.server,
        connections: a.connections,
        events: a.events,
        producers: a.producers,
        payload_bytes: a.payload_bytes,
        rate: a.rate,
        shards: a.shards,
        client_threads: a.client_threads,
        max_batch_events: a.max_batch_events,
        max_batch_delay: a.max_batch_delay,
        ring_capacity: a.ring_capacity,
        history_max_events: a
            .history_max_events
            .unwrap_or(if a.chaos && a.spool.is_none() {
                usize::try_from(a.events.div_ceil(a.connections.max(1) as u64))
                    .unwrap_or(usize::MAX)
                    .min(1 << 20)
            } else {
                1024
            }),
        chaos: a.chaos,
        spool_dir: a.spool.clone(),
        spool_fsync: a.spool_fsync,
        engine: a.engine,
        redis_url: a.redis_url.clone(),
        progress: !a.json,
        ..BenchOptions::default()
    };
    let report = bench::run(&opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.to_text());
    }
    if report.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "floodgate bench: FAILED: events were lost, misrouted, duplicated or out of order"
        );
        Ok(ExitCode::from(1))
    }
}

/// The run's options, and whether to print JSON.
fn load_options(cmd: LoadScenario) -> Result<(floodgate_load::LoadOptions, bool), String> {
    use floodgate_load::{LoadOptions, Scenario, Sources, Tokens, UrlTemplate};
    let (scenario, a, recv, gen, publish, connect) = match cmd {
        LoadScenario::Subscribe { common, recv } => {
            (Scenario::Subscribe, common, Some(recv), None, None, None)
        }
        LoadScenario::Echo { common, gen } => (Scenario::Echo, common, None, Some(gen), None, None),
        LoadScenario::Publish {
            common,
            gen,
            publish,
        } => (
            Scenario::Publish,
            common,
            None,
            Some(gen),
            Some(publish),
            None,
        ),
        LoadScenario::Connect { common, connect } => {
            (Scenario::Connect, common, None, None, None, Some(connect))
        }
    };
    let url = UrlTemplate::parse(&a.url)?;
    let ingest_url = match &publish {
        Some(PublishArgs {
            ingest_url: Some(u),
            ..
        }) => Some(UrlTemplate::parse(u)?),
        // The subscribers' host and scheme: a TLS gateway serves its ingest over TLS too.
        Some(_) => Some(UrlTemplate::parse(&format!(
            "{}://{}/api/ingest",
            if url.tls { "wss" } else { "ws" },
            url.host
        ))?),
        None => None,
    };
    let tokens = match (&a.jwt_secret, &a.token_file) {
        (Some(s), _) => {
            if s.len() < crate::config::MIN_HS256_SECRET {
                return Err(format!(
                    "--jwt-secret must be at least {} bytes",
                    crate::config::MIN_HS256_SECRET
                ));
            }
            Tokens::Mint {
                secret: s.as_bytes().to_vec(),
                ttl: a.jwt_ttl,
            }
        }
        (None, Some(f)) => Tokens::from_file(f)?,
        (None, None) => Tokens::None,
    };
    let wss = url.tls || ingest_url.as_ref().is_some_and(|u| u.tls);
    let tls = if wss {
        Some(floodgate_load::tls_client_config(a.ca_file.as_deref())?)
    } else {
        None
    };
    let a = *a;
    let mut o = LoadOptions::new(scenario, url);
    o.tls = tls;
    o.connections = a.connections;
    o.connect_rate = a.connect_rate;
    o.user_prefix = a.user_prefix;
    o.tokens = tokens;
    o.headers = a.headers;
    o.subprotocols = a.subprotocols;
    o.session = floodgate_load::Session {
        on_open: a.send_on_open,
        await_reply: a.await_reply,
    };
    o.sources = a
        .source_addr
        .as_deref()
        .map(Sources::parse)
        .transpose()?
        .unwrap_or_default();
    o.threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    o.duration = a.duration;
    o.events = a.events;
    if let Some(r) = recv {
        o.seq = r.seq_field;
        o.gapless = r.gapless;
        o.latency_field = r.latency_field;
        o.ts_unit = r.ts_unit;
    }
    if let Some(g) = gen {
        o.rate = Some(g.rate);
        o.max_lag = g.lag.max_lag;
        o.message_bytes = g.message_bytes;
    }
    if let Some(p) = publish {
        o.batch = p.batch;
        o.publishers = p.publishers;
        o.api_key = p.api_key;
    }
    o.ingest_url = ingest_url;
    if let Some(c) = connect {
        o.rate = c.rate;
        o.max_lag = c.lag.max_lag;
        o.hold = c.hold;
    }
    o.idle_timeout = a.idle_timeout;
    o.thresholds = a.threshold;
    o.progress = !a.quiet && !a.json;
    o.hdr_log = a.hdr_log;
    o.intervals = a.intervals;
    o.junit = a.junit;
    o.plot = a.plot;
    o.interval = a.interval;
    o.validate()?;
    Ok((o, a.json))
}

/// This process's command line as a shell would take it, with secrets masked: the values of
/// `--jwt-secret` and `--api-key`, and of `--header`s that carry credentials.
fn masked_command() -> String {
    masked(std::env::args())
}

fn masked(args: impl Iterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut hide_next = false;
    for (i, a) in args.enumerate() {
        let shown = if i == 0 {
            "floodgate".to_owned()
        } else if hide_next {
            hide_next = false;
            "***".to_owned()
        } else if let Some((flag, _)) = a
            .split_once('=')
            .filter(|(f, _)| matches!(*f, "--jwt-secret" | "--api-key"))
        {
            format!("{flag}=***")
        } else if matches!(a.as_str(), "--jwt-secret" | "--api-key") {
            hide_next = true;
            a
        } else if out.last().is_some_and(|p| p == "--header")
            && ["authorization", "cookie", "key", "token", "secret"]
                .iter()
                .any(|s| a.to_ascii_lowercase().contains(s))
        {
            let name = a.split_once(':').map_or("", |(n, _)| n);
            format!("{name}: ***")
        } else {
            a
        };
        let quoted = if shown.is_empty()
            || shown.contains(|c: char| c.is_whitespace() || "'\"$&|;<>(){}*?!`\\".contains(c))
        {
            format!("'{}'", shown.replace('\'', "'\\''"))
        } else {
            shown
        };
        out.push(quoted);
    }
    out.join(" ")
}

fn run_load(cmd: LoadCmd) -> ExitCode {
    let (mut opts, json) = match load_options(cmd.scenario) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floodgate load: {e}");
            return ExitCode::from(floodgate_load::exit::USAGE);
        }
    };
    opts.command = masked_command();
    match floodgate_load::run(&opts) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("floodgate load: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_gate(a: GateArgs) -> ExitCode {
    match gate(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("floodgate perf-gate: {e}");
            ExitCode::from(2)
        }
    }
}

fn gate(a: GateArgs) -> Result<ExitCode, String> {
    use floodgate_perf_gate::{self as gate, Suite};
    let repo = std::env::current_dir().map_err(|e| e.to_string())?;
    if !repo.join("benches/instructions.rs").exists() {
        return Err(
            "run it from the floodgate repository root (it builds benches/instructions.rs)".into(),
        );
    }
    let suites = if a.suite.is_empty() {
        let mut s = vec![Suite::Instructions, Suite::Criterion];
        if a.baseline_bin.is_some() {
            s.push(Suite::E2e);
        }
        s
    } else {
        a.suite.clone()
    };
    let old = if a.update_baseline && !a.baseline.exists() {
        None
    } else {
        Some(gate::Baseline::load(&a.baseline)?)
    };
    // A copy of this binary for the e2e suite, taken first: `cargo bench` in the criterion
    // suite may rebuild target/release/floodgate underneath us.
    let me = if suites.contains(&Suite::E2e) {
        let copy = repo.join("target/perf-gate/current-floodgate");
        if let Some(dir) = copy.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        std::fs::copy(&exe, &copy).map_err(|e| format!("copying {}: {e}", exe.display()))?;
        Some(copy)
    } else {
        None
    };
    let mut now = std::collections::BTreeMap::new();
    for s in &suites {
        eprintln!("floodgate perf-gate: running the {s:?} suite");
        match s {
            Suite::Instructions => {
                let harness = gate::build_harness(&repo, a.features.as_deref(), None)?;
                now.extend(gate::instructions(&harness)?);
            }
            Suite::Criterion => now.extend(gate::criterion(&repo)?),
            Suite::E2e => {
                let base = a.baseline_bin.as_deref().ok_or(
                    "the e2e suite needs --baseline-bin (scripts/perf-gate builds it from the baseline commit)",
                )?;
                let me = me.as_deref().expect("copied above");
                now.extend(gate::e2e(me, base, a.pairs)?);
            }
        }
    }
    let here = gate::machine();
    if a.update_baseline {
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        // A ratio to the baseline build is 1 by definition in the baseline itself, whether or
        // not the e2e suite ran (a baseline without it would never gate it).
        now.insert(
            "e2e/bench_throughput_ratio".into(),
            gate::Measured {
                value: 1.0,
                unit: "x baseline",
                better: gate::Better::Higher,
            },
        );
        let b = gate::updated(old.as_ref(), &now, &commit, here);
        let text = serde_json::to_string_pretty(&b).expect("serializes") + "\n";
        std::fs::write(&a.baseline, text).map_err(|e| format!("{}: {e}", a.baseline.display()))?;
        eprintln!(
            "floodgate perf-gate: recorded {} metrics in {}",
            now.len(),
            a.baseline.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let old = old.expect("loaded when comparing");
    let rows = gate::compare(&old, &now);
    let mut notes = gate::machine_notes(&old, &here);
    notes.push(format!(
        "Baseline: {} (commit {}, recorded {}).",
        a.baseline.display(),
        old.commit,
        old.recorded
    ));
    let md = gate::markdown(&rows, &notes);
    print!("{md}");
    if let Some(dir) = a.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&a.report, &md).map_err(|e| format!("{}: {e}", a.report.display()))?;
    Ok(if gate::failed(&rows) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn the_command_shown_masks_secrets() {
        let args = [
            "/usr/bin/floodgate",
            "load",
            "publish",
            "--jwt-secret",
            "s3cr3t",
            "--api-key=k3y",
            "--header",
            "X-Api-Key: key-{conn}",
            "--header",
            "Origin: https://a.example",
            "--threshold",
            "p99<2ms",
        ];
        let shown = masked(args.iter().map(|s| s.to_string()));
        assert_eq!(
            shown,
            "floodgate load publish --jwt-secret '***' '--api-key=***' --header 'X-Api-Key: ***' \
             --header 'Origin: https://a.example' --threshold 'p99<2ms'"
        );
        assert!(!shown.contains("s3cr3t") && !shown.contains("k3y"));
    }
}
