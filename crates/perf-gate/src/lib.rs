//! `floodgate perf-gate`: a performance regression gate for CI.
//!
//! Three suites, each a set of named metrics compared with `perf/baseline.json`:
//! - `instructions`: instructions per operation of the hot paths, counted by valgrind's
//!   callgrind running `benches/instructions.rs` (the same count on every run of the same
//!   binary, however busy the machine is). Limit: +3 %.
//! - `criterion`: the criterion benches (ring, encode, route) in nanoseconds. Wall clock on a
//!   shared machine: reported against a +25 % limit but not gating (two runs of the same code
//!   here differed by up to 67 %, perf/2026-11-22-gate.md).
//! - `e2e`: `floodgate bench` throughput of this build against a baseline build, run
//!   alternately in the same job so the figure is a ratio, not an absolute. Limit: -10 %.
//!
//! The comparison ([`compare`]) and the table ([`markdown`]) are pure and tested; the
//! runners shell out to cargo, valgrind and the binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The baseline file's schema name and version.
pub const SCHEMA: &str = "floodgate.perf-baseline/1";

/// A suite of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Instructions per operation (callgrind).
    Instructions,
    /// Criterion estimates (nanoseconds; reported, not gating).
    Criterion,
    /// `floodgate bench` throughput against a baseline build.
    E2e,
}

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Lower values are better (time, instructions).
    Lower,
    /// Higher values are better (throughput).
    Higher,
}

/// One metric's recorded value and how far it may move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// A change worse than this, in per cent, fails the gate.
    pub limit_pct: f64,
    /// Which direction is better.
    pub better: Better,
    /// Whether a change beyond the limit fails the gate (`false`: it is only reported).
    #[serde(default = "gating_default")]
    pub gating: bool,
}

fn gating_default() -> bool {
    true
}

/// `perf/baseline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// [`SCHEMA`].
    pub schema: String,
    /// When and from which commit the numbers were recorded.
    pub recorded: String,
    /// The commit the baseline was recorded at.
    pub commit: String,
    /// What they were recorded on (instruction counts can depend on the CPU's features).
    pub machine: BTreeMap<String, String>,
    /// The metrics by name.
    pub metrics: BTreeMap<String, Metric>,
}

impl Baseline {
    /// Reads and checks a baseline file.
    pub fn load(path: &Path) -> Result<Baseline, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "baseline `{}`: {e} (record one with --update-baseline)",
                path.display()
            )
        })?;
        let b: Baseline = serde_json::from_str(&text)
            .map_err(|e| format!("baseline `{}`: {e}", path.display()))?;
        if b.schema != SCHEMA {
            return Err(format!(
                "baseline `{}` has schema `{}`; this gate reads `{SCHEMA}`",
                path.display(),
                b.schema
            ));
        }
        Ok(b)
    }
}

/// A measured value with its unit and direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Which direction is better.
    pub better: Better,
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limit.
    Ok,
    /// Worse than its limit allows.
    Regression,
    /// Better than the baseline by more than the limit: worth recording a new baseline.
    Improved,
    /// Worse than the limit on a metric that does not gate (only reported).
    Slower,
    /// Measured, not in the baseline (does not fail the gate).
    New,
    /// In the baseline, not measured in this run (its suite was not run).
    NotRun,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The metric's name.
    pub metric: String,
    /// The baseline value, if the baseline has it.
    pub baseline: Option<f64>,
    /// The value measured now, if measured.
    pub now: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// Per cent, positive = larger.
    pub change_pct: Option<f64>,
    /// The allowed change in per cent, if any.
    pub limit_pct: Option<f64>,
    /// Which direction is better.
    pub better: Better,
    /// The outcome.
    pub verdict: Verdict,
}

/// Compares measured values with the baseline's.
pub fn compare(baseline: &Baseline, now: &BTreeMap<String, Measured>) -> Vec<Row> {
    let mut names: Vec<&String> = baseline.metrics.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let b = baseline.metrics.get(name);
            let n = now.get(name);
            match (b, n) {
                (Some(b), Some(n)) => {
                    let change = if b.value == 0.0 {
                        0.0
                    } else {
                        (n.value - b.value) / b.value * 100.0
                    };
                    let worse = match b.better {
                        Better::Lower => change,
                        Better::Higher => -change,
                    };
                    let verdict = if worse > b.limit_pct && b.gating {
                        Verdict::Regression
                    } else if worse > b.limit_pct {
                        Verdict::Slower
                    } else if -worse > b.limit_pct {
                        Verdict::Improved
                    } else {
                        Verdict::Ok
                    };
                    Row {
                        metric: name.clone(),
                        baseline: Some(b.value),
                        now: Some(n.value),
                        unit: b.unit.clone(),
                        change_pct: Some(change),
                        limit_pct: Some(b.limit_pct),
                        better: b.better,
                        verdict,
                    }
                }
                (Some(b), None) => Row {
                    metric: name.clone(),
                    baseline: Some(b.value),
                    now: None,
                    unit: b.unit.clone(),
                    change_pct: None,
                    limit_pct: Some(b.limit_pct),
                    better: b.better,
                    verdict: Verdict::NotRun,
                },
                (None, Some(n)) => Row {
                    metric: name.clone(),
                    baseline: None,
                    now: Some(n.value),
                    unit: n.unit.to_owned(),
                    change_pct: None,
                    limit_pct: None,
                    better: n.better,
                    verdict: Verdict::New,
                },
                (None, None) => unreachable!("the name came from one of the two"),
            }
        })
        .collect()
}

/// Whether any row fails the gate.
pub fn failed(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.verdict == Verdict::Regression)
}

/// The comparison as a markdown table, for a CI system to post.
pub fn markdown(rows: &[Row], notes: &[String]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verdict = if failed(rows) {
        "FAILED: a metric regressed beyond its limit"
    } else {
        "passed"
    };
    let _ = writeln!(out, "### floodgate perf gate: {verdict}\n");
    let _ = writeln!(
        out,
        "| metric | baseline | now | change | limit | verdict |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- |");
    let num = |v: Option<f64>, unit: &str| match v {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
        None => "-".into(),
    };
    for r in rows {
        let limit = r.limit_pct.map_or("-".into(), |l| match r.better {
            Better::Lower => format!("+{l:.0}%"),
            Better::Higher => format!("-{l:.0}%"),
        });
        let change = r.change_pct.map_or("-".into(), |c| format!("{c:+.2}%"));
        let v = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Regression => "**REGRESSION**",
            Verdict::Improved => "improved (update the baseline)",
            Verdict::Slower => "slower (reported, not gating)",
            Verdict::New => "new (not in baseline)",
            Verdict::NotRun => "not run",
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {change} | {limit} | {v} |",
            r.metric,
            num(r.baseline, &r.unit),
            num(r.now, &r.unit),
        );
    }
    for n in notes {
        let _ = writeln!(out, "\n{n}");
    }
    out
}

/// A baseline holding `now`, keeping the limits of metrics `old` already had; a new metric
/// gets its suite's limit from `cfg`.
pub fn updated(
    old: Option<&Baseline>,
    now: &BTreeMap<String, Measured>,
    commit: &str,
    machine: BTreeMap<String, String>,
    cfg: &GateConfig,
) -> Baseline {
    let mut metrics = old.map(|b| b.metrics.clone()).unwrap_or_default();
    for (name, m) in now {
        let (limit, gating) = metrics
            .get(name)
            .map_or_else(|| cfg.limit_of(name), |x| (x.limit_pct, x.gating));
        metrics.insert(
            name.clone(),
            Metric {
                value: m.value,
                unit: m.unit.to_owned(),
                limit_pct: limit,
                better: m.better,
                gating,
            },
        );
    }
    Baseline {
        schema: SCHEMA.into(),
        recorded: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit: commit.to_owned(),
        machine,
        metrics,
    }
}

/// What the gate runs on: CPU, cores, compiler, valgrind, kernel.
pub fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |s| s.trim().to_owned());
    m.insert("cpu".into(), model);
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            ["avx2", "avx512f", "sse4_2", "bmi2"]
                .into_iter()
                .filter(|f| l.split_whitespace().any(|w| w == *f))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    m.insert("cpu_flags".into(), flags);
    for (key, cmd, arg) in [
        ("rustc", "rustc", "-V"),
        ("valgrind", "valgrind", "--version"),
        ("kernel", "uname", "-r"),
    ] {
        let v = Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        m.insert(key.into(), v);
    }
    m
}

/// `perf-gate.toml`: what the gate measures in a repository, so any Rust project can adopt it.
/// Every table is optional; a suite without its table is not run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The baseline file, relative to the repository root.
    #[serde(default = "default_baseline")]
    pub baseline: PathBuf,
    /// Where the markdown table is written.
    #[serde(default = "default_report")]
    pub report: PathBuf,
    /// Instructions per operation under callgrind (deterministic on shared machines).
    pub instructions: Option<InstructionsConfig>,
    /// Criterion benches (wall clock).
    pub criterion: Option<CriterionConfig>,
    /// A command run alternately with this build's binary and the baseline's.
    pub e2e: Option<E2eConfig>,
}

fn default_baseline() -> PathBuf {
    "perf/baseline.json".into()
}

fn default_report() -> PathBuf {
    "target/perf-gate.md".into()
}

/// `[instructions]`: a bench target (`harness = false`) run as `<exe> <path> <ops>`, once with
/// 0 ops and once with `ops`; the difference divided by `ops` is the metric
/// `instructions/<path>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionsConfig {
    /// The bench target's name (`cargo build --profile bench --bench <bench>`).
    pub bench: String,
    /// Cargo features to build it with.
    #[serde(default)]
    pub features: Option<String>,
    /// Path name -> operations per measurement.
    pub paths: BTreeMap<String, u64>,
    /// A regression beyond this many per cent fails the gate.
    #[serde(default = "three")]
    pub limit_pct: f64,
}

/// `[criterion]`: criterion benches, their mean estimates as `criterion/<id>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriterionConfig {
    /// Bench targets to run.
    pub benches: Vec<String>,
    /// Arguments after `--` (criterion's own: warm-up and measurement times).
    #[serde(default = "criterion_args")]
    pub args: Vec<String>,
    /// The regression limit in per cent.
    #[serde(default = "twenty_five")]
    pub limit_pct: f64,
    /// Whether a regression fails the gate (wall clock on shared runners: by default not).
    #[serde(default)]
    pub gating: bool,
}

/// `[e2e]`: `command` (its first word `{bin}`: this build's binary, then the baseline's) run
/// `pairs` times each, alternately; the median of the number at `metric` (a JSON pointer into
/// its standard output) over the baseline's is `e2e/<name>`, in `x baseline`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eConfig {
    /// The metric's name.
    pub name: String,
    /// This build's binary (built before the gate runs, e.g. `target/release/app`); the
    /// baseline's is given with `--baseline-bin`.
    pub binary: PathBuf,
    /// The command; `{bin}` stands for the binary under test.
    pub command: Vec<String>,
    /// A JSON pointer into the command's output.
    pub metric: String,
    /// Which way is better.
    pub better: Better,
    /// Runs of each binary.
    #[serde(default = "three_runs")]
    pub pairs: usize,
    /// The regression limit in per cent.
    #[serde(default = "ten")]
    pub limit_pct: f64,
}

fn three() -> f64 {
    3.0
}
fn ten() -> f64 {
    10.0
}
fn twenty_five() -> f64 {
    25.0
}
fn three_runs() -> usize {
    3
}
fn criterion_args() -> Vec<String> {
    ["--warm-up-time", "1", "--measurement-time", "2", "--noplot"]
        .map(String::from)
        .to_vec()
}

/// The largest `perf-gate.toml` read.
const MAX_CONFIG: u64 = 1 << 20;

impl GateConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<GateConfig, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| {
                format!(
                    "{}: {e} (`floodgate perf-gate init` writes one)",
                    path.display()
                )
            })?
            .len();
        if size > MAX_CONFIG {
            return Err(format!(
                "{}: larger than {MAX_CONFIG} bytes",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c: GateConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if c.instructions.is_none() && c.criterion.is_none() && c.e2e.is_none() {
            return Err(format!(
                "{}: no suite: give [instructions], [criterion] or [e2e]",
                path.display()
            ));
        }
        if let Some(i) = &c.instructions {
            if i.paths.is_empty() || i.paths.values().any(|&n| n == 0) {
                return Err(format!(
                    "{}: [instructions] paths needs at least one path with ops > 0",
                    path.display()
                ));
            }
        }
        if let Some(e) = &c.e2e {
            if e.command.first().map(String::as_str) != Some("{bin}") {
                return Err(format!(
                    "{}: [e2e] command must start with \"{{bin}}\"",
                    path.display()
                ));
            }
        }
        Ok(c)
    }

    /// The limit and gating a new metric `name` gets.
    pub fn limit_of(&self, name: &str) -> (f64, bool) {
        if name.starts_with("instructions/") {
            (
                self.instructions.as_ref().map_or(3.0, |i| i.limit_pct),
                true,
            )
        } else if name.starts_with("e2e/") {
            (self.e2e.as_ref().map_or(10.0, |e| e.limit_pct), true)
        } else {
            self.criterion
                .as_ref()
                .map_or((25.0, false), |c| (c.limit_pct, c.gating))
        }
    }
}

/// A starting `perf-gate.toml` for the repository at `repo`: its criterion benches (files under
/// `benches/` that name criterion) in `[criterion]`, and commented examples of the others.
pub fn init_config(repo: &Path) -> String {
    let mut benches: Vec<String> = std::fs::read_dir(repo.join("benches"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("criterion_main!")))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    benches.sort();
    let criterion = if benches.is_empty() {
        "# [criterion]\n# benches = [\"my_bench\"]       # criterion bench targets\n".to_owned()
    } else {
        format!(
            "[criterion]\nbenches = [{}]\n# limit_pct = 25.0\n# gating = false    # wall clock on shared runners: reported, not gating\n",
            benches
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "# floodgate perf-gate: what to measure, and how far each metric may move.\n\
         # `floodgate perf-gate --update-baseline` records the baseline; `floodgate perf-gate`\n\
         # compares with it and exits 1 on a regression beyond a limit.\n\
         baseline = \"perf/baseline.json\"\n\
         report = \"target/perf-gate.md\"\n\n\
         # Instructions per operation under valgrind's callgrind: deterministic on shared CI\n\
         # machines. A bench target with `harness = false` whose main takes `<path> <ops>` and\n\
         # does `ops` operations of `path`.\n\
         # [instructions]\n\
         # bench = \"instructions\"\n\
         # paths = {{ parse = 10000 }}\n\
         # limit_pct = 3.0\n\n\
         {criterion}\n\
         # A command run alternately with this build's binary and a baseline build's\n\
         # (--baseline-bin); the median ratio of the number at `metric` is the figure.\n\
         # [e2e]\n\
         # name = \"throughput_ratio\"\n\
         # binary = \"target/release/my-app\"\n\
         # command = [\"{{bin}}\", \"bench\", \"--json\"]\n\
         # metric = \"/events_per_sec\"\n\
         # better = \"higher\"\n\
         # limit_pct = 10.0\n"
    )
}

/// Builds bench target `bench` (with `features`, into `target_dir`) and returns its path.
pub fn build_harness(
    repo: &Path,
    bench: &str,
    features: Option<&str>,
    target_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo).args([
        "build",
        "--profile",
        "bench",
        "--bench",
        bench,
        "--message-format=json",
        "--quiet",
    ]);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    if let Some(d) = target_dir {
        cmd.arg("--target-dir").arg(d);
    }
    let out = cmd.output().map_err(|e| format!("cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building bench `{bench}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bench)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo did not report bench `{bench}`'s executable"))
}

/// Instructions `harness path ops` executes under callgrind.
fn callgrind_total(harness: &Path, path: &str, ops: u64) -> Result<u64, String> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(harness)
        .args([path, &ops.to_string()])
        .output()
        .map_err(|e| format!("valgrind: {e} (install valgrind)"))?;
    if !out.status.success() {
        return Err(format!(
            "callgrind run of `{path}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no `Collected :` line in callgrind's output:\n{err}"))
}

/// Instructions per operation of every path: (count with N ops - count with 0) / N.
pub fn instructions(
    harness: &Path,
    paths: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, Measured>, String> {
    let mut out = BTreeMap::new();
    for (path, &ops) in paths {
        let base = callgrind_total(harness, path, 0)?;
        let full = callgrind_total(harness, path, ops)?;
        let per_op = full.saturating_sub(base) as f64 / ops as f64;
        out.insert(
            format!("instructions/{path}"),
            Measured {
                value: (per_op * 100.0).round() / 100.0,
                unit: "instr/op",
                better: Better::Lower,
            },
        );
    }
    Ok(out)
}

/// Runs the criterion benches of `cfg` and reads their mean estimates.
pub fn criterion(repo: &Path, cfg: &CriterionConfig) -> Result<BTreeMap<String, Measured>, String> {
    let started = std::time::SystemTime::now();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo).args(["bench", "--quiet"]);
    for b in &cfg.benches {
        cmd.args(["--bench", b]);
    }
    let status = cmd
        .arg("--")
        .args(&cfg.args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cargo bench: {e}"))?;
    if !status.success() {
        return Err("cargo bench failed".into());
    }
    let root = repo.join("target/criterion");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started);
            if !fresh
                || p.file_name() != Some("estimates.json".as_ref())
                || !p.parent().is_some_and(|d| d.ends_with("new"))
            {
                continue;
            }
            let id = p
                .parent()
                .and_then(Path::parent)
                .and_then(|d| d.strip_prefix(&root).ok())
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            let v: serde_json::Value = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            if let Some(ns) = v["mean"]["point_estimate"].as_f64() {
                out.insert(
                    format!("criterion/{id}"),
                    Measured {
                        value: (ns * 1000.0).round() / 1000.0,
                        unit: "ns",
                        better: Better::Lower,
                    },
                );
            }
        }
    }
    if out.is_empty() {
        return Err("criterion wrote no estimates".into());
    }
    Ok(out)
}

/// `cfg`'s command run with `current` and `baseline` alternately, `cfg.pairs` times each: the
/// median of its metric for `current` over the median for `baseline`.
pub fn e2e(
    current: &Path,
    baseline: &Path,
    cfg: &E2eConfig,
) -> Result<BTreeMap<String, Measured>, String> {
    let run = |bin: &Path| -> Result<f64, String> {
        let out = Command::new(bin)
            .args(&cfg.command[1..])
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed: {}",
                bin.display(),
                cfg.command[1..].join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("[e2e] the command's output is not JSON: {e}"))?;
        v.pointer(&cfg.metric)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| {
                format!(
                    "[e2e] no number at `{}` in the command's output",
                    cfg.metric
                )
            })
    };
    let (mut now, mut base) = (Vec::new(), Vec::new());
    for _ in 0..cfg.pairs.max(1) {
        base.push(run(baseline)?);
        now.push(run(current)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&mut now) / median(&mut base);
    let mut out = BTreeMap::new();
    out.insert(
        format!("e2e/{}", cfg.name),
        Measured {
            value: (ratio * 1000.0).round() / 1000.0,
            unit: "x baseline",
            better: cfg.better,
        },
    );
    Ok(out)
}

/// Notes for the report: a baseline recorded on another CPU is compared anyway, with a word.
pub fn machine_notes(baseline: &Baseline, here: &BTreeMap<String, String>) -> Vec<String> {
    ["cpu", "cpu_flags", "rustc", "valgrind"]
        .into_iter()
        .filter(|k| baseline.machine.get(*k) != here.get(*k))
        .map(|k| {
            format!(
                "Note: the baseline was recorded with {k} `{}`, this run has `{}`; instruction counts may differ for that reason alone.",
                baseline.machine.get(k).map_or("?", String::as_str),
                here.get(k).map_or("?", String::as_str)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        let mut metrics = BTreeMap::new();
        let m = |value, limit_pct, better| Metric {
            value,
            unit: "x".into(),
            limit_pct,
            better,
            gating: true,
        };
        metrics.insert("instructions/route".into(), m(1000.0, 3.0, Better::Lower));
        metrics.insert("instructions/ring".into(), m(100.0, 3.0, Better::Lower));
        metrics.insert(
            "e2e/bench_throughput_ratio".into(),
            m(1.0, 10.0, Better::Higher),
        );
        metrics.insert("criterion/old".into(), m(5.0, 25.0, Better::Lower));
        Baseline {
            schema: SCHEMA.into(),
            recorded: "2026-11-22T00:00:00Z".into(),
            commit: "abc".into(),
            machine: BTreeMap::new(),
            metrics,
        }
    }

    fn now(pairs: &[(&str, f64, Better)]) -> BTreeMap<String, Measured> {
        pairs
            .iter()
            .map(|(n, v, b)| {
                (
                    n.to_string(),
                    Measured {
                        value: *v,
                        unit: "x",
                        better: *b,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn changes_beyond_the_limit_fail_in_the_worse_direction_only() {
        let b = baseline();
        let rows = compare(
            &b,
            &now(&[
                ("instructions/route", 1031.0, Better::Lower), // +3.1 %: regression
                ("instructions/ring", 90.0, Better::Lower),    // -10 %: improved
                ("e2e/bench_throughput_ratio", 0.91, Better::Higher), // -9 %: ok
                ("instructions/new_path", 7.0, Better::Lower),
            ]),
        );
        let v: BTreeMap<&str, Verdict> = rows
            .iter()
            .map(|r| (r.metric.as_str(), r.verdict))
            .collect();
        assert_eq!(v["instructions/route"], Verdict::Regression);
        assert_eq!(v["instructions/ring"], Verdict::Improved);
        assert_eq!(v["e2e/bench_throughput_ratio"], Verdict::Ok);
        assert_eq!(v["instructions/new_path"], Verdict::New);
        assert_eq!(v["criterion/old"], Verdict::NotRun);
        assert!(failed(&rows));
        let rows = compare(
            &b,
            &now(&[("e2e/bench_throughput_ratio", 0.89, Better::Higher)]),
        );
        assert!(failed(&rows), "an 11 % slower build fails");
        let rows = compare(&b, &now(&[("instructions/route", 1029.0, Better::Lower)]));
        assert!(!failed(&rows), "+2.9 % is within +3 %");
        let mut noisy = b.clone();
        noisy.metrics.get_mut("criterion/old").unwrap().gating = false;
        let rows = compare(&noisy, &now(&[("criterion/old", 9.0, Better::Lower)]));
        assert_eq!(rows[0].verdict, Verdict::Slower);
        assert!(
            !failed(&rows),
            "a metric that does not gate is reported, never fails"
        );
    }

    #[test]
    fn the_table_has_every_column_and_says_the_verdict() {
        let b = baseline();
        let rows = compare(&b, &now(&[("instructions/route", 1100.0, Better::Lower)]));
        let md = markdown(&rows, &["Note: x".into()]);
        assert!(
            md.contains("| metric | baseline | now | change | limit | verdict |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| `instructions/route` | 1000 x | 1100 x | +10.00% | +3% | **REGRESSION** |"
            ),
            "{md}"
        );
        assert!(md.contains("FAILED"), "{md}");
        assert!(md.contains("Note: x"));
    }

    #[test]
    fn configs_are_checked_and_init_finds_criterion_benches() {
        let dir = std::env::temp_dir().join(format!("fg-gate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("benches")).unwrap();
        let path = dir.join("perf-gate.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            GateConfig::load(&path)
        };
        let c = load("[instructions]\nbench = \"i\"\npaths = { a = 10 }\n").unwrap();
        assert_eq!(c.baseline, PathBuf::from("perf/baseline.json"));
        assert_eq!(c.limit_of("instructions/a"), (3.0, true));
        assert_eq!(c.limit_of("criterion/x"), (25.0, false));
        for (bad, says) in [
            ("", "no suite"),
            ("[instructions]\nbench = \"i\"\npaths = {}\n", "at least one path"),
            ("[criterion]\nbenches = []\nunknown = 1\n", "unknown"),
            (
                "[e2e]\nname = \"x\"\nbinary = \"b\"\ncommand = [\"b\"]\nmetric = \"/m\"\nbetter = \"higher\"\n",
                "must start with",
            ),
        ] {
            let e = load(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::write(dir.join("benches/fast.rs"), "criterion_main!(b);").unwrap();
        std::fs::write(dir.join("benches/plain.rs"), "fn main() {}").unwrap();
        let init = init_config(&dir);
        assert!(init.contains("benches = [\"fast\"]"), "{init}");
        let parsed: GateConfig = toml::from_str(&init).unwrap();
        assert_eq!(parsed.criterion.unwrap().benches, ["fast"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_updated_baseline_keeps_limits_and_records_new_metrics() {
        let b = baseline();
        let mut custom = b.clone();
        custom
            .metrics
            .get_mut("instructions/route")
            .unwrap()
            .limit_pct = 5.0;
        let u = updated(
            Some(&custom),
            &now(&[
                ("instructions/route", 900.0, Better::Lower),
                ("criterion/ring/push", 12.0, Better::Lower),
            ]),
            "def",
            BTreeMap::from([("cpu".to_string(), "test".to_string())]),
            &toml::from_str::<GateConfig>("[criterion]\nbenches = [\"ring\"]\n").unwrap(),
        );
        assert_eq!(u.metrics["instructions/route"].value, 900.0);
        assert_eq!(u.metrics["instructions/route"].limit_pct, 5.0);
        assert_eq!(u.metrics["criterion/ring/push"].limit_pct, 25.0);
        assert!(
            !u.metrics["criterion/ring/push"].gating,
            "wall clock is reported, not gating"
        );
        assert!(u.metrics["instructions/route"].gating);
        assert_eq!(u.commit, "def");
        let text = serde_json::to_string(&u).unwrap();
        let back: Baseline = serde_json::from_str(&text).unwrap();
        assert_eq!(back, u);
        let notes = machine_notes(
            &u,
            &BTreeMap::from([("cpu".to_string(), "other".to_string())]),
        );
        assert!(notes.iter().any(|n| n.contains("other")), "{notes:?}");
    }
}
