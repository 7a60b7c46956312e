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

mod load;
use load::{run_load, LoadCmd};

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
    /// Performance regression gate for CI, for any Rust repository: measure what
    /// perf-gate.toml names, compare with the baseline it names, print a markdown table, exit
    /// 1 on a regression beyond a metric's limit.
    ///
    /// Suites (each a table of perf-gate.toml; `floodgate perf-gate init` writes a starting
    /// file): `instructions` (instructions per operation of a bench target under valgrind's
    /// callgrind: deterministic on shared runners), `criterion` (criterion benches: wall
    /// clock, reported and by default not gating) and `e2e` (a command run alternately with
    /// this build's binary and --baseline-bin's; the ratio of a number in its JSON output).
    /// Run it from the repository root.
    ///
    /// Adopting it: `floodgate perf-gate init`, edit perf-gate.toml, `floodgate perf-gate
    /// --update-baseline` and commit both files; CI then runs `floodgate perf-gate`.
    ///
    /// Exit codes: 0 no regression; 1 a metric regressed beyond its limit; 2 usage or setup
    /// error (no valgrind, no baseline, a build failed).
    #[command(name = "perf-gate", verbatim_doc_comment)]
    PerfGate(GateArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct GateArgs {
    #[command(subcommand)]
    action: Option<GateAction>,
    /// What to measure (TOML; see `floodgate perf-gate init`).
    #[arg(long, default_value = "perf-gate.toml", value_name = "FILE")]
    config: PathBuf,
    /// The baseline file [default: the config's `baseline`].
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Suites to run (repeatable) [default: every suite the config has, e2e only with
    /// --baseline-bin].
    #[arg(long, value_enum)]
    suite: Vec<floodgate_perf_gate::Suite>,
    /// A binary built from the baseline commit, for the e2e suite.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// Where to write the markdown table [default: the config's `report`].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Record this run's numbers as the new baseline (with the machine description and commit)
    /// instead of comparing.
    #[arg(long)]
    update_baseline: bool,
    /// Cargo features for building the instructions bench, besides the config's (the self
    /// test uses gate-selftest-slowdown).
    #[arg(long)]
    features: Option<String>,
}

#[derive(Subcommand, Debug)]
enum GateAction {
    /// Write a starting perf-gate.toml (its criterion benches found under benches/), unless
    /// one exists.
    Init,
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
    if let Some(GateAction::Init) = a.action {
        if a.config.exists() {
            return Err(format!("{} exists; not overwritten", a.config.display()));
        }
        std::fs::write(&a.config, gate::init_config(&repo))
            .map_err(|e| format!("{}: {e}", a.config.display()))?;
        eprintln!(
            "floodgate perf-gate: wrote {}; edit it, then record a baseline with --update-baseline",
            a.config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = gate::GateConfig::load(&a.config)?;
    let baseline = a.baseline.clone().unwrap_or_else(|| cfg.baseline.clone());
    let report = a.report.clone().unwrap_or_else(|| cfg.report.clone());
    let suites: Vec<Suite> = if a.suite.is_empty() {
        let mut s = Vec::new();
        if cfg.instructions.is_some() {
            s.push(Suite::Instructions);
        }
        if cfg.criterion.is_some() {
            s.push(Suite::Criterion);
        }
        if cfg.e2e.is_some() && a.baseline_bin.is_some() {
            s.push(Suite::E2e);
        }
        s
    } else {
        a.suite.clone()
    };
    let old = if a.update_baseline && !baseline.exists() {
        None
    } else {
        Some(gate::Baseline::load(&baseline)?)
    };
    // A copy of this build's binary for the e2e suite, taken first: `cargo bench` in the
    // criterion suite may rebuild it underneath us.
    let me = match (&cfg.e2e, suites.contains(&Suite::E2e)) {
        (Some(e), true) => {
            let copy = repo.join("target/perf-gate/current-bin");
            if let Some(dir) = copy.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let exe = repo.join(&e.binary);
            std::fs::copy(&exe, &copy).map_err(|e| {
                format!(
                    "[e2e] binary {}: {e} (build it before the gate)",
                    exe.display()
                )
            })?;
            Some(copy)
        }
        _ => None,
    };
    let mut now = std::collections::BTreeMap::new();
    for s in &suites {
        eprintln!("floodgate perf-gate: running the {s:?} suite");
        let missing = |t: &str| format!("--suite {s:?}: {} has no [{t}] table", a.config.display());
        match s {
            Suite::Instructions => {
                let i = cfg
                    .instructions
                    .as_ref()
                    .ok_or_else(|| missing("instructions"))?;
                let features = [i.features.as_deref(), a.features.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(",");
                let features = (!features.is_empty()).then_some(features);
                let harness = gate::build_harness(&repo, &i.bench, features.as_deref(), None)?;
                now.extend(gate::instructions(&harness, &i.paths)?);
            }
            Suite::Criterion => {
                let c = cfg.criterion.as_ref().ok_or_else(|| missing("criterion"))?;
                now.extend(gate::criterion(&repo, c)?);
            }
            Suite::E2e => {
                let e = cfg.e2e.as_ref().ok_or_else(|| missing("e2e"))?;
                let base = a.baseline_bin.as_deref().ok_or(
                    "the e2e suite needs --baseline-bin (a binary built from the baseline commit)",
                )?;
                let me = me.as_deref().ok_or("no binary under test")?;
                now.extend(gate::e2e(me, base, e)?);
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
        if let Some(e) = &cfg.e2e {
            now.insert(
                format!("e2e/{}", e.name),
                gate::Measured {
                    value: 1.0,
                    unit: "x baseline",
                    better: e.better,
                },
            );
        }
        let b = gate::updated(old.as_ref(), &now, &commit, here, &cfg);
        let text = serde_json::to_string_pretty(&b).expect("serializes") + "\n";
        if let Some(dir) = baseline.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&baseline, text).map_err(|e| format!("{}: {e}", baseline.display()))?;
        eprintln!(
            "floodgate perf-gate: recorded {} metrics in {}",
            now.len(),
            baseline.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let old = old.expect("loaded when comparing");
    let rows = gate::compare(&old, &now);
    let mut notes = gate::machine_notes(&old, &here);
    notes.push(format!(
        "Baseline: {} (commit {}, recorded {}).",
        baseline.display(),
        old.commit,
        old.recorded
    ));
    let md = gate::markdown(&rows, &notes);
    print!("{md}");
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&report, &md).map_err(|e| format!("{}: {e}", report.display()))?;
    Ok(if gate::failed(&rows) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
