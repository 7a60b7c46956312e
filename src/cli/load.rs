//! `floodgate load`: the command line of the load harness (one subcommand per scenario, and
//! `run` for a file of named scenarios) and how its options become [`floodgate_load::LoadOptions`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Args, Debug)]
pub(super) struct LoadCmd {
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
    /// Run the named scenarios of a TOML file at once, each with its own connections,
    /// schedule and thresholds (as k6's scenarios).
    ///
    /// Each `[scenarios.NAME]` table names its `scenario` (subscribe, echo, publish, connect)
    /// and takes that scenario's options by their flag names (`connections = 64`,
    /// `rate = "ramp:1000..5000/10s"`, `threshold = ["p99<5ms"]`, `gapless = true`). A string
    /// may hold `${VAR}`, taken from the environment (keep secrets out of the file). The exit
    /// code is the worst of the scenarios' (4, then 1, then 3).
    ///
    /// Example (examples/load/ holds more):
    ///   [scenarios.feed]
    ///   scenario = "subscribe"
    ///   url = "ws://127.0.0.1:9000/feed?c={conn}"
    ///   connections = 4
    ///   send-on-open = ['{"subscribe":"room-{conn}"}']
    ///   await-reply = '"subscribed"'
    ///   seq-field = "/seq"
    ///   events = 1200
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
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

/// `floodgate load run FILE`.
#[derive(Args, Debug)]
struct RunArgs {
    /// The TOML file of scenarios (at most 1 MiB and 64 scenarios).
    file: PathBuf,
    /// Run only these scenarios (repeatable).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Check the file (every scenario's options, as the run would) and exit: 0 when it is
    /// good, 2 with the reason.
    #[arg(long)]
    check: bool,
    /// Print one JSON object, `{"schema":"floodgate.load.run/1","scenarios":{NAME: report}}`.
    #[arg(long)]
    json: bool,
}

/// Parses one scenario's arguments as `floodgate load <scenario> ...` would.
#[derive(clap::Parser, Debug)]
#[command(name = "floodgate load")]
struct OneScenario {
    #[command(subcommand)]
    scenario: LoadScenario,
}

/// The largest scenario file read, and the most scenarios in it.
const MAX_RUN_FILE: u64 = 1 << 20;
const MAX_SCENARIOS: usize = 64;

/// A scenario table as the arguments of `floodgate load <scenario>`.
fn scenario_args(name: &str, table: &toml::Table) -> Result<Vec<String>, String> {
    let bad = |why: String| format!("scenario `{name}`: {why}");
    let scenario = match table.get("scenario") {
        Some(toml::Value::String(s)) if s != "run" => s.clone(),
        _ => {
            return Err(bad(
                "needs `scenario` = \"subscribe\", \"echo\", \"publish\" or \"connect\"".into(),
            ))
        }
    };
    let mut args = vec!["floodgate load".to_owned(), scenario];
    for (key, value) in table {
        if key == "scenario" {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let one = |v: &toml::Value| -> Result<Option<String>, String> {
            Ok(match v {
                toml::Value::String(s) => {
                    Some(expand_env(s).map_err(|e| bad(format!("{key}: {e}")))?)
                }
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                toml::Value::Boolean(_) => None,
                other => {
                    return Err(bad(format!(
                        "{key}: a {} is not an option value",
                        other.type_str()
                    )))
                }
            })
        };
        match value {
            toml::Value::Boolean(true) => args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    let v = one(item)?.ok_or_else(|| bad(format!("{key}: a list of booleans")))?;
                    args.push(flag.clone());
                    args.push(v);
                }
            }
            v => {
                args.push(flag);
                args.push(one(v)?.expect("not a boolean"));
            }
        }
    }
    Ok(args)
}

/// `${VAR}` in `s`, from the environment; a variable not set is an error naming it.
fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| format!("`{s}`: `${{` without its `}}`"))?;
        let var = &rest[at + 2..at + end];
        let value = std::env::var(var).map_err(|_| format!("${{{var}}} is not set"))?;
        out.push_str(&value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the file and turns each scenario into its options, in the file's order.
fn run_file_options(
    a: &RunArgs,
) -> Result<Vec<(String, floodgate_load::LoadOptions, bool)>, String> {
    let bytes = crate::config::read_small_file(&a.file, MAX_RUN_FILE)
        .map_err(|e| format!("{}: {e}", a.file.display()))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| format!("{}: {e}", a.file.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", a.file.display()))?;
    for key in doc.keys() {
        if key != "scenarios" {
            return Err(format!(
                "{}: unknown table `{key}` (only [scenarios.NAME])",
                a.file.display()
            ));
        }
    }
    let Some(toml::Value::Table(scenarios)) = doc.get("scenarios") else {
        return Err(format!("{}: no [scenarios.NAME] table", a.file.display()));
    };
    if scenarios.len() > MAX_SCENARIOS {
        return Err(format!(
            "{}: more than {MAX_SCENARIOS} scenarios",
            a.file.display()
        ));
    }
    for only in &a.only {
        if !scenarios.contains_key(only) {
            return Err(format!(
                "--only {only}: no such scenario in {}",
                a.file.display()
            ));
        }
    }
    let mut out = Vec::new();
    for (name, table) in scenarios {
        if !a.only.is_empty() && !a.only.contains(name) {
            continue;
        }
        let toml::Value::Table(table) = table else {
            return Err(format!("scenarios.{name} is not a table"));
        };
        let args = scenario_args(name, table)?;
        let parsed = <OneScenario as clap::Parser>::try_parse_from(&args)
            .map_err(|e| format!("scenario `{name}`: {}", e.to_string().trim_end()))?;
        let (mut opts, json) =
            load_options(parsed.scenario).map_err(|e| format!("scenario `{name}`: {e}"))?;
        // Several runs share the terminal: no progress bars.
        opts.progress = false;
        opts.command = format!("floodgate load run {} ({name})", a.file.display());
        out.push((name.clone(), opts, json));
    }
    Ok(out)
}

/// `floodgate load run FILE`: every scenario at once, each on threads of its own.
fn run_file(a: RunArgs) -> ExitCode {
    let scenarios = match run_file_options(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floodgate load run: {e}");
            return ExitCode::from(floodgate_load::exit::USAGE);
        }
    };
    if a.check {
        eprintln!(
            "floodgate load run: {} scenarios in {} are valid",
            scenarios.len(),
            a.file.display()
        );
        return ExitCode::SUCCESS;
    }
    let results: Vec<(
        String,
        Result<floodgate_load::LoadReport, floodgate_load::RunError>,
    )> = std::thread::scope(|s| {
        let running: Vec<_> = scenarios
            .iter()
            .map(|(name, opts, _)| (name.clone(), s.spawn(move || floodgate_load::run(opts))))
            .collect();
        running
            .into_iter()
            .map(|(name, h)| (name, h.join().expect("a scenario's run does not panic")))
            .collect()
    });
    let codes: Vec<u8> = results
        .iter()
        .map(|(_, r)| match r {
            Ok(report) => report.exit_code,
            Err(e) => e.exit_code(),
        })
        .collect();
    let worst = [
        floodgate_load::exit::RUN_FAILED,
        floodgate_load::exit::USAGE,
        floodgate_load::exit::THRESHOLD_FAILED,
        floodgate_load::exit::OVERLOADED,
    ]
    .into_iter()
    .find(|c| codes.contains(c))
    .unwrap_or(floodgate_load::exit::PASS);
    if a.json {
        let mut map = serde_json::Map::new();
        for (name, r) in &results {
            let v = match r {
                Ok(report) => serde_json::to_value(report).expect("report serializes"),
                Err(e) => serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code()}),
            };
            map.insert(name.clone(), v);
        }
        println!(
            "{}",
            serde_json::json!({"schema": "floodgate.load.run/1", "scenarios": map, "exit_code": worst})
        );
    } else {
        for (name, r) in &results {
            println!("== scenario {name}");
            match r {
                Ok(report) => print!("{}", report.to_text()),
                Err(e) => println!("failed to run: {e} (exit {})", e.exit_code()),
            }
        }
        println!("== exit {worst} (the worst of the scenarios')");
    }
    ExitCode::from(worst)
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
    /// '/uncorrected_latency_us/p99<5ms': names ending in _us take a unit). A suffix
    /// `:abort` (or `:abort=10s`, not before 10 s into the run) stops the run as soon as the
    /// threshold fails on what was measured so far, checked at every interval's end.
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
    /// Each connection sends --send-message this often while it is measured (a heartbeat, a
    /// client's own messages), the connections' first sends spread over one period.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    send_every: Option<Duration>,
    /// The message --send-every sends (a template: `{conn}`, `{user}`, `{token}`, `{seq}`
    /// counting from 1 per connection, `{ts_ns}`, `{uuid}`).
    #[arg(long, value_name = "TEMPLATE")]
    send_message: Option<String>,
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
        LoadScenario::Run(_) => return Err("a scenario file cannot run another (`run`)".into()),
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
        every: None,
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
        o.session.every = match (r.send_every, r.send_message) {
            (Some(every), Some(m)) if every >= Duration::from_millis(1) => Some((every, m)),
            (Some(_), Some(_)) => return Err("--send-every must be at least 1ms".into()),
            (None, None) => None,
            _ => return Err("--send-every and --send-message go together".into()),
        };
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

pub(super) fn run_load(cmd: LoadCmd) -> ExitCode {
    if let LoadScenario::Run(a) = cmd.scenario {
        return run_file(a);
    }
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
