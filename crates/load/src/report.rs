//! Merging the workers' intervals, and what a run reports: the text summary, the versioned
//! JSON, the HDR interval log and the plot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use serde::Serialize;

use super::record::{percentile_us, LatencyUs, Recorder};
use super::threshold::{Measured, Metric, Unit};
use super::{exit, ErrKind, Errors, LoadOptions, Scenario, Tick};

/// The JSON schema name and version; later versions add members, never rename them.
pub const SCHEMA: &str = "floodgate.load/1";

/// The schema of each `--intervals` line.
pub const INTERVAL_SCHEMA: &str = "floodgate.load.interval/1";

/// The most points the plot's series keeps; past it, neighbouring points are merged, so memory
/// stays bounded however long the run.
const MAX_POINTS: usize = 2048;

/// One interval (or, after merging, several) of the run, for the plot.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Seconds since the start, at the interval's end.
    pub t: f64,
    /// Units completed per second in the interval.
    pub rate: f64,
    /// Corrected p99 latency in the interval, in microseconds (0 without latency).
    pub p99_us: f64,
    /// Corrected median latency in the interval, in microseconds (0 without latency).
    pub p50_us: f64,
    /// The largest corrected latency in the interval, in microseconds (0 without latency).
    pub max_us: f64,
    /// Length of the interval in seconds.
    #[serde(skip)]
    pub len: f64,
}

/// Merges workers' ticks into totals, interval by interval.
pub(crate) struct Aggregate {
    interval: Duration,
    /// Per worker: the last interval reported (-1 before the first), `None` once it sent its
    /// last tick.
    progress: Vec<Option<i64>>,
    pending: BTreeMap<u64, Tick>,
    pub total: Recorder,
    pub errors: Errors,
    pub done: u64,
    pub sent: u64,
    pub bytes: u64,
    pub other_frames: u64,
    pub scheduled: u64,
    pub last_done_ns: u64,
    pub series: Vec<Point>,
    hdr: Option<HdrLog>,
    /// `--intervals`: one JSON line per closed interval.
    intervals: Option<Box<dyn Write + Send>>,
    /// When interval 0 began (unix ns; 0 in unit tests, where intervals are not timed).
    pub start_ns: u64,
    /// Thresholds that abort the run when they fail (checked as each interval closes).
    abort_on: Vec<super::threshold::Threshold>,
    /// Why the run was aborted, once a threshold with `:abort` failed.
    pub aborted: Option<String>,
    /// The last finished interval's rate and p99 (for the progress line).
    pub last_rate: f64,
    pub last_p99_us: f64,
}

impl Aggregate {
    pub(crate) fn new(
        workers: usize,
        interval: Duration,
        hdr_log: Option<&Path>,
        opts: &LoadOptions,
    ) -> Result<Aggregate, String> {
        let hdr = hdr_log.map(|p| HdrLog::create(p, opts)).transpose()?;
        let intervals: Option<Box<dyn Write + Send>> = match &opts.intervals {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
            Some(p) => {
                Some(Box::new(BufWriter::new(File::create(p).map_err(|e| {
                    format!("--intervals `{}`: {e}", p.display())
                })?)))
            }
        };
        Ok(Aggregate {
            interval,
            progress: vec![Some(-1); workers],
            pending: BTreeMap::new(),
            total: Recorder::default(),
            errors: Errors::default(),
            done: 0,
            sent: 0,
            bytes: 0,
            other_frames: 0,
            scheduled: 0,
            last_done_ns: 0,
            series: Vec::new(),
            hdr,
            intervals,
            abort_on: opts
                .thresholds
                .iter()
                .filter(|t| t.abort.is_some())
                .cloned()
                .collect(),
            aborted: None,
            start_ns: 0,
            last_rate: 0.0,
            last_p99_us: 0.0,
        })
    }

    /// Takes one worker's tick; closes every interval all live workers have passed.
    pub(crate) fn add(&mut self, t: Tick) {
        let worker = t.worker;
        self.progress[worker] = if t.last { None } else { Some(t.index as i64) };
        self.scheduled += t.scheduled;
        match self.pending.get_mut(&t.index) {
            Some(m) => merge(m, &t),
            None => {
                self.pending.insert(t.index, t);
            }
        }
        // A worker sends interval k once it is past it: intervals up to the slowest live
        // worker's last are complete.
        let floor = self.progress.iter().flatten().min().copied();
        while let Some((&k, _)) = self.pending.first_key_value() {
            if floor.is_some_and(|f| k as i64 > f) {
                break;
            }
            // Every worker finished and this is the last interval left: the run's last.
            let last = floor.is_none() && self.pending.len() == 1;
            let t = self.pending.remove(&k).expect("present");
            self.close(t, last);
        }
    }

    /// Closes whatever is left (every worker finished).
    pub(crate) fn finish(&mut self) {
        while let Some((_, t)) = self.pending.pop_first() {
            let last = self.pending.is_empty();
            self.close(t, last);
        }
        if let Some(h) = &mut self.hdr {
            h.flush();
        }
        if let Some(w) = &mut self.intervals {
            let _ = w.flush();
        }
    }

    /// Closes interval `t`; `last` when it is the run's last, which ends early: its rate
    /// counts up to its last completion, not over the whole interval (an empty last interval
    /// is not drawn at all, rather than as a drop to zero).
    fn close(&mut self, t: Tick, last: bool) {
        let full = self.interval.as_secs_f64();
        let begin = self.start_ns + t.index * self.interval.as_nanos() as u64;
        let len = if last && self.start_ns > 0 && t.last_done_ns > begin {
            ((t.last_done_ns - begin) as f64 / 1e9).min(full)
        } else {
            full
        };
        let drawn = !(last && t.done == 0 && t.index > 0);
        let p99 = if t.rec.corrected.is_empty() {
            0.0
        } else {
            percentile_us(&t.rec.corrected, 99_000)
        };
        self.last_rate = t.done as f64 / len;
        self.last_p99_us = p99;
        if let Some(h) = &mut self.hdr {
            h.write(&t, self.interval);
        }
        self.total.add(&t.rec);
        self.errors.merge(&t.errors);
        self.done += t.done;
        self.sent += t.sent;
        self.bytes += t.bytes;
        self.other_frames += t.other_frames;
        self.last_done_ns = self.last_done_ns.max(t.last_done_ns);
        let elapsed = t.index as f64 * full + len;
        self.check_aborts(elapsed);
        if let Some(w) = &mut self.intervals {
            let latency = (!t.rec.corrected.is_empty()).then(|| {
                serde_json::json!({
                    "p50": percentile_us(&t.rec.corrected, 50_000),
                    "p99": p99,
                    "max": t.rec.corrected.max() as f64 / 1e3,
                })
            });
            let line = serde_json::json!({
                "schema": INTERVAL_SCHEMA,
                "index": t.index,
                "t_sec": t.index as f64 * full + len,
                "interval_sec": len,
                "events": t.done,
                "events_per_sec": self.last_rate,
                "sent": t.sent,
                "errors": t.errors.total(),
                "latency_us": latency,
                "last": last,
            });
            let _ = writeln!(w, "{line}");
        }
        if !drawn {
            return;
        }
        let (p50, max) = if t.rec.corrected.is_empty() {
            (0.0, 0.0)
        } else {
            (
                percentile_us(&t.rec.corrected, 50_000),
                t.rec.corrected.max() as f64 / 1e3,
            )
        };
        self.series.push(Point {
            t: t.index as f64 * full + len,
            rate: self.last_rate,
            p99_us: p99,
            p50_us: p50,
            max_us: max,
            len,
        });
        if self.series.len() > MAX_POINTS {
            self.series = self
                .series
                .chunks(2)
                .map(|c| {
                    let len: f64 = c.iter().map(|p| p.len).sum();
                    Point {
                        t: c[c.len() - 1].t,
                        rate: c.iter().map(|p| p.rate * p.len).sum::<f64>() / len,
                        // Merged points keep the worse of each.
                        p99_us: c.iter().map(|p| p.p99_us).fold(0.0, f64::max),
                        p50_us: c.iter().map(|p| p.p50_us).fold(0.0, f64::max),
                        max_us: c.iter().map(|p| p.max_us).fold(0.0, f64::max),
                        len,
                    }
                })
                .collect();
        }
    }
}

impl Aggregate {
    /// Checks the `:abort` thresholds on the run so far, `elapsed` seconds in; the first that
    /// fails (past its delay) sets `aborted`.
    fn check_aborts(&mut self, elapsed: f64) {
        if self.aborted.is_some() {
            return;
        }
        let lat = &self.total.corrected;
        let errors = self.errors.total();
        for t in &self.abort_on {
            if elapsed < t.abort.unwrap_or_default().as_secs_f64() {
                continue;
            }
            let value = match t.metric {
                Metric::Percentile(p) if !lat.is_empty() => Some(percentile_us(lat, p)),
                Metric::Max if !lat.is_empty() => Some(lat.max() as f64 / 1e3),
                Metric::Mean if !lat.is_empty() => Some(lat.mean() / 1e3),
                Metric::Rate => Some(self.done as f64 / elapsed.max(1e-9)),
                Metric::Errors => Some(errors as f64 / (self.done + errors).max(1) as f64),
                _ => None,
            };
            if let Some(v) = value.filter(|v| !t.passes(*v)) {
                self.aborted = Some(format!(
                    "threshold {} failed {elapsed:.1} s in (measured {}): the run was stopped",
                    t.text,
                    t.unit().show(v)
                ));
                return;
            }
        }
    }
}

fn merge(into: &mut Tick, t: &Tick) {
    into.rec.add(&t.rec);
    into.done += t.done;
    into.sent += t.sent;
    into.bytes += t.bytes;
    into.other_frames += t.other_frames;
    into.errors.merge(&t.errors);
    into.last_done_ns = into.last_done_ns.max(t.last_done_ns);
}

/// The HdrHistogram interval logs (the format of HdrHistogram's `HistogramLogProcessor`, so
/// logs of several runs merge with the standard tools). Values are nanoseconds. One histogram
/// per file and no tags, so every reader reads each file as it is meant: `--hdr-log FILE` holds
/// the corrected latency (from the intended send time, or the frame's timestamp), and for
/// generating scenarios `FILE` with `.uncorrected` before its extension holds the latency from
/// the actual send ([`uncorrected_path`]).
struct HdrLog {
    corrected: OneLog,
    uncorrected: Option<OneLog>,
}

/// One interval log file.
struct OneLog {
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
}

/// Where the uncorrected histograms go beside `--hdr-log path`: `run.hlog` ->
/// `run.uncorrected.hlog`, `run` -> `run.uncorrected`.
pub fn uncorrected_path(path: &Path) -> std::path::PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.uncorrected.{}", ext.to_string_lossy()),
        None => format!("{stem}.uncorrected"),
    };
    path.with_file_name(name)
}

impl OneLog {
    fn create(path: &Path, what: &str, opts: &LoadOptions) -> Result<OneLog, String> {
        let file =
            File::create(path).map_err(|e| format!("--hdr-log `{}`: {e}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut serializer = V2DeflateSerializer::new();
        let now = SystemTime::now();
        IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "floodgate load {:?} {}: {what}, in nanoseconds",
                opts.scenario, opts.url.host
            ))
            .with_start_time(now)
            .with_base_time(now)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| format!("--hdr-log `{}`: {e}", path.display()))?;
        Ok(OneLog { out, serializer })
    }

    fn write(&mut self, h: &hdrhistogram::Histogram<u64>, start: Duration, interval: Duration) {
        let Ok(mut w) =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.serializer)
        else {
            return;
        };
        let _ = w.write_histogram(h, start, interval, None);
    }
}

impl HdrLog {
    fn create(path: &Path, opts: &LoadOptions) -> Result<HdrLog, String> {
        let generating = opts.scenario != Scenario::Subscribe;
        let corrected = OneLog::create(
            path,
            if generating {
                "latency from each message's intended send time (corrected for coordinated omission)"
            } else {
                "latency from the timestamp each frame carries"
            },
            opts,
        )?;
        let uncorrected = generating
            .then(|| {
                OneLog::create(
                    &uncorrected_path(path),
                    "latency from each message's actual send (uncorrected)",
                    opts,
                )
            })
            .transpose()?;
        Ok(HdrLog {
            corrected,
            uncorrected,
        })
    }

    fn write(&mut self, t: &Tick, interval: Duration) {
        let start = interval * t.index as u32;
        self.corrected.write(&t.rec.corrected, start, interval);
        if let Some(u) = &mut self.uncorrected {
            u.write(&t.rec.uncorrected, start, interval);
        }
    }

    fn flush(&mut self) {
        let _ = self.corrected.out.flush();
        if let Some(u) = &mut self.uncorrected {
            let _ = u.out.flush();
        }
    }
}

/// How a run ended. When several hold, the report's `verdict` is the first of: `run_failed`,
/// `threshold_failed`, `overloaded` (a failed threshold is what a gate asked about, so an
/// overload beside it does not hide it), and `failed` lists every one that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every threshold passed.
    Pass,
    /// A threshold failed.
    ThresholdFailed,
    /// The generator could not keep its schedule.
    Overloaded,
    /// The run could not complete.
    RunFailed,
}

impl Verdict {
    /// As in the JSON report: `pass`, `threshold_failed`, `overloaded`, `run_failed`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::ThresholdFailed => "threshold_failed",
            Verdict::Overloaded => "overloaded",
            Verdict::RunFailed => "run_failed",
        }
    }

    /// The process exit code for this verdict (see [`exit`](crate::exit)).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => exit::PASS,
            Verdict::ThresholdFailed => exit::THRESHOLD_FAILED,
            Verdict::Overloaded => exit::OVERLOADED,
            Verdict::RunFailed => exit::RUN_FAILED,
        }
    }
}

/// The generator's own account: how far behind its schedule it fell.
#[derive(Debug, Clone, Serialize)]
pub struct Generator {
    /// The rate asked for.
    pub rate: String,
    /// How late messages left against their intended time.
    pub lag_us: LatencyUs,
    /// Messages the schedule had due by the time sending stopped.
    pub scheduled: u64,
    pub sent: u64,
    /// Due but never sent.
    pub behind: u64,
    /// The lag above which a message counts as late (`--max-lag`).
    pub max_lag_us: f64,
    /// Messages that left later than `max_lag_us`.
    pub late: u64,
    /// Late messages forgiven: as many as one stall of `STALL_GRACE` limits makes late at the
    /// peak rate (at least one).
    pub late_allowed: u64,
    pub overloaded: bool,
}

/// How long one stall (a scheduler pause, a page fault storm, a VM steal) may hold the
/// generator back, in multiples of `--max-lag`, before the run counts as overloaded: 20, so
/// 200 ms on the default limit. A generator that cannot keep up falls further behind with
/// every message and passes this allowance however long the run is; one hiccup on a busy
/// machine does not.
pub const STALL_GRACE: u32 = 20;

/// Messages in `lag` (nanoseconds) that left more than `max_lag` behind their schedule.
fn late_messages(lag: &hdrhistogram::Histogram<u64>, max_lag: Duration) -> u64 {
    let limit = u64::try_from(max_lag.as_nanos()).unwrap_or(u64::MAX);
    if lag.is_empty() || limit >= lag.max() {
        return 0;
    }
    lag.len() - lag.count_between(0, limit)
}

/// Late messages one stall of `STALL_GRACE` limits makes at `peak` messages per second.
fn stall_allowance(peak: f64, max_lag: Duration) -> u64 {
    (peak * max_lag.saturating_mul(STALL_GRACE).as_secs_f64())
        .ceil()
        .max(1.0) as u64
}

/// One threshold's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ThresholdResult {
    pub threshold: String,
    /// The measured value, in `unit`; `null` if not measured.
    pub value: Option<f64>,
    /// `micros`, `per_sec`, `fraction` or `number`.
    pub unit: Unit,
    pub passed: bool,
}

/// The result of a run. `--json` prints it; its `schema` names the version (`floodgate.load/1`).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The report's schema and version (`floodgate.load/1`).
    pub schema: &'static str,
    /// The command that ran, with secrets (`--jwt-secret`, `--api-key`) masked; empty when
    /// the run was not started from the command line.
    pub command: String,
    /// What the run did.
    pub scenario: Scenario,
    /// Where the connections went.
    pub url: String,
    /// Connections held.
    pub connections: usize,
    /// Worker threads.
    pub threads: usize,
    /// Seconds measured: from when every connection was up to the last unit completed.
    pub elapsed_sec: f64,
    /// Units completed: events received (subscribe, publish), replies matched (echo),
    /// connections established (connect).
    pub events: u64,
    /// `events` per second of `elapsed_sec`.
    pub events_per_sec: f64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// `bytes_received` in megabytes (10^6) per second.
    pub mb_per_sec: f64,
    /// Frames without the sequence field (such as a `hello`), not counted as events.
    pub other_frames: u64,
    /// `schedule` (corrected, with uncorrected beside it), `frame_timestamp`, or `none`.
    pub latency_from: &'static str,
    /// Percentiles in microseconds; corrected when there is a schedule.
    pub latency_us: Option<LatencyUs>,
    /// From the actual send time instead of the intended one (generating scenarios).
    pub uncorrected_latency_us: Option<LatencyUs>,
    /// How well the generator kept its schedule (generating scenarios).
    pub generator: Option<Generator>,
    /// Errors of every kind.
    pub errors_total: u64,
    /// Errors by kind (only kinds that occurred).
    pub errors: BTreeMap<&'static str, u64>,
    /// errors / (events + errors).
    pub error_rate: f64,
    /// Each threshold and its outcome.
    pub thresholds: Vec<ThresholdResult>,
    /// Why the run could not complete, if it could not.
    pub incomplete: Option<String>,
    /// Which `:abort` threshold stopped the run early, and when.
    pub aborted: Option<String>,
    /// How the run ended.
    pub verdict: Verdict,
    /// Every failed verdict that holds, `verdict` first (empty when it passed).
    pub failed: Vec<Verdict>,
    /// The process exit code for `verdict`.
    pub exit_code: u8,
    /// Interval series (for the plot): seconds, rate, p99.
    #[serde(skip)]
    pub series: Vec<Point>,
    /// Corrected and uncorrected histograms (for the plot).
    #[serde(skip)]
    pub hist: Option<Recorder>,
}

/// What the scenario adds to the aggregate when building the report.
pub(crate) struct Outcome<'a> {
    pub opts: &'a LoadOptions,
    pub agg: &'a Aggregate,
    pub start_ns: u64,
    pub end_ns: u64,
    pub latency_from: &'static str,
    /// `Some` for generating scenarios.
    pub rate_text: Option<String>,
    pub incomplete: Option<String>,
}

impl LoadReport {
    pub(crate) fn build(o: Outcome<'_>) -> LoadReport {
        let opts = o.opts;
        let agg = o.agg;
        let end = if agg.last_done_ns > 0 {
            agg.last_done_ns
        } else {
            o.end_ns
        };
        let elapsed = (end.saturating_sub(o.start_ns) as f64 / 1e9).max(1e-9);
        let has_latency = o.latency_from != "none" && !agg.total.corrected.is_empty();
        let latency = has_latency.then(|| LatencyUs::of(&agg.total.corrected));
        let generating = o.rate_text.is_some();
        let uncorrected =
            (generating && has_latency).then(|| LatencyUs::of(&agg.total.uncorrected));
        let generator = o.rate_text.map(|rate| {
            let lag = LatencyUs::of(&agg.total.lag);
            let behind = agg.scheduled.saturating_sub(agg.sent);
            let max_lag_us = opts.max_lag.as_nanos() as f64 / 1e3;
            let peak = opts.rate.as_ref().map_or(0.0, |r| r.peak());
            let late = late_messages(&agg.total.lag, opts.max_lag);
            let late_allowed = stall_allowance(peak, opts.max_lag);
            // Overloaded: more messages left later than the limit than one stall of
            // `STALL_GRACE` limits (at the peak rate) makes late, or more than the limit's worth
            // of messages (at the peak rate) were due and never sent.
            let allowed_behind = (peak * opts.max_lag.as_secs_f64())
                .max(opts.batch as f64)
                .ceil() as u64;
            Generator {
                rate,
                overloaded: late > late_allowed || behind > allowed_behind,
                lag_us: lag,
                scheduled: agg.scheduled,
                sent: agg.sent,
                behind,
                max_lag_us,
                late,
                late_allowed,
            }
        });
        let errors_total = agg.errors.total();
        let errors: BTreeMap<&'static str, u64> = ErrKind::ALL
            .iter()
            .filter(|k| agg.errors.get(**k) > 0)
            .map(|k| (k.name(), agg.errors.get(*k)))
            .collect();
        let error_rate = errors_total as f64 / (agg.done + errors_total).max(1) as f64;
        let rate = agg.done as f64 / elapsed;
        let measured = Measured {
            percentiles_us: latency.map(|l| l.table()).unwrap_or_default(),
            max_us: latency.map_or(0.0, |l| l.max),
            mean_us: latency.map_or(0.0, |l| l.mean),
            rate,
            error_rate,
        };
        let mut thresholds: Vec<ThresholdResult> = opts
            .thresholds
            .iter()
            .map(|t| {
                let value = match t.metric {
                    Metric::Percentile(p)
                        if has_latency && !measured.percentiles_us.iter().any(|(q, _)| *q == p) =>
                    {
                        Some(percentile_us(&agg.total.corrected, p))
                    }
                    Metric::Percentile(_) | Metric::Max | Metric::Mean if !has_latency => None,
                    _ => t.value(&measured),
                };
                ThresholdResult {
                    threshold: t.text.clone(),
                    passed: value.is_some_and(|v| t.passes(v)),
                    value,
                    unit: t.unit(),
                }
            })
            .collect();
        if !opts.thresholds.iter().any(|t| t.metric == Metric::Errors) {
            // Without an errors threshold, any error fails the run.
            thresholds.push(ThresholdResult {
                threshold: "errors=0 (default; set an errors threshold to allow some)".into(),
                value: Some(errors_total as f64),
                unit: Unit::Number,
                passed: errors_total == 0,
            });
        }
        let mut report = LoadReport {
            schema: SCHEMA,
            command: opts.command.clone(),
            scenario: opts.scenario,
            url: format!("ws://{}{}", opts.url.host, opts.url.target),
            connections: opts.connections,
            threads: opts.threads,
            elapsed_sec: elapsed,
            events: agg.done,
            events_per_sec: rate,
            bytes_received: agg.bytes,
            mb_per_sec: agg.bytes as f64 / 1e6 / elapsed,
            other_frames: agg.other_frames,
            latency_from: if has_latency { o.latency_from } else { "none" },
            latency_us: latency,
            uncorrected_latency_us: uncorrected,
            generator,
            errors_total,
            errors,
            error_rate,
            thresholds,
            incomplete: o.incomplete,
            aborted: agg.aborted.clone(),
            verdict: Verdict::Pass,
            failed: Vec::new(),
            exit_code: exit::PASS,
            series: agg.series.clone(),
            hist: Some(agg.total.clone()),
        };
        report.check_report_pointers(opts);
        report.decide();
        report
    }

    /// JUnit XML (the format CI systems show as test results): one test case per threshold,
    /// one for the generator keeping its schedule (generating scenarios) and one for the run
    /// completing. A case that did not pass carries a `<failure>` saying what was measured.
    pub fn to_junit(&self) -> String {
        use std::fmt::Write;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut cases: Vec<(String, Option<String>)> = self
            .thresholds
            .iter()
            .map(|t| {
                let measured = t.value.map_or("not measured".into(), |v| t.unit.show(v));
                let failure = (!t.passed).then(|| format!("measured {measured}"));
                (format!("threshold {}", t.threshold), failure)
            })
            .collect();
        if let Some(g) = &self.generator {
            let failure = g.overloaded.then(|| {
                format!(
                    "the generator was overloaded: {} of {} due sent, {} later than {}",
                    g.sent,
                    g.scheduled,
                    g.late,
                    Unit::Micros.show(g.max_lag_us)
                )
            });
            cases.push((format!("generator keeps {}", g.rate), failure));
        }
        cases.push(("the run completes".into(), self.incomplete.clone()));
        let scenario = self.scenario_name();
        let failures = cases.iter().filter(|c| c.1.is_some()).count();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"floodgate load\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            cases.len(),
            self.elapsed_sec
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"floodgate load {scenario} {}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            esc(&self.url),
            cases.len(),
            self.elapsed_sec
        );
        for (name, failure) in &cases {
            let _ = write!(
                out,
                "    <testcase classname=\"floodgate.load.{scenario}\" name=\"{}\"",
                esc(name)
            );
            match failure {
                None => out.push_str("/>\n"),
                Some(why) => {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\"/>\n    </testcase>",
                        esc(why)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }

    /// `subscribe`, `echo`, `publish` or `connect`.
    fn scenario_name(&self) -> String {
        serde_json::to_value(self.scenario)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Thresholds naming a number of the report by its JSON pointer, read from the report as
    /// `--json` prints it.
    fn check_report_pointers(&mut self, opts: &LoadOptions) {
        if !opts
            .thresholds
            .iter()
            .any(|t| matches!(t.metric, Metric::Report(_)))
        {
            return;
        }
        let json = serde_json::to_value(&*self).expect("the report serializes");
        for (t, r) in opts.thresholds.iter().zip(self.thresholds.iter_mut()) {
            if let Metric::Report(pointer) = t.metric {
                r.value = json.pointer(pointer).and_then(serde_json::Value::as_f64);
                r.passed = r.value.is_some_and(|v| t.passes(v));
            }
        }
    }

    /// Sets `verdict`, `failed` and `exit_code` from what the run found.
    fn decide(&mut self) {
        let mut failed = Vec::new();
        if self.incomplete.is_some() {
            failed.push(Verdict::RunFailed);
        }
        if self.aborted.is_some() || self.thresholds.iter().any(|t| !t.passed) {
            failed.push(Verdict::ThresholdFailed);
        }
        if self.generator.as_ref().is_some_and(|g| g.overloaded) {
            failed.push(Verdict::Overloaded);
        }
        self.verdict = failed.first().copied().unwrap_or(Verdict::Pass);
        self.exit_code = self.verdict.exit_code();
        self.failed = failed;
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let unit = match self.scenario {
            Scenario::Subscribe | Scenario::Publish => "events",
            Scenario::Echo => "replies",
            Scenario::Connect => "connections",
        };
        let _ = writeln!(
            out,
            "floodgate load {}: {} connections to {} ({} threads)",
            self.scenario_name(),
            self.connections,
            self.url,
            self.threads
        );
        let _ = writeln!(
            out,
            "throughput     {:>12.0} {unit}/s   {:.1} MB/s   ({} {unit} in {:.3} s)",
            self.events_per_sec, self.mb_per_sec, self.events, self.elapsed_sec
        );
        let lat = |name: &str, l: &LatencyUs| {
            format!(
                "{name:<15}p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}\n",
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.p999),
                us(l.p9999),
                us(l.max)
            )
        };
        match &self.latency_us {
            Some(l) => {
                out.push_str(&lat("latency", l));
                if let Some(u) = &self.uncorrected_latency_us {
                    out.push_str(&lat("uncorrected", u));
                    let _ = writeln!(
                        out,
                        "               (latency counts from each message's intended send time; uncorrected from its actual send)"
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "               (from the timestamp each frame carries)"
                    );
                }
            }
            None => {
                let _ = writeln!(out, "latency        not measured");
            }
        }
        if let Some(g) = &self.generator {
            let _ = writeln!(
                out,
                "generator      {}; lag behind schedule p50 {}  p99 {}  max {}; sent {} of {} due; \
                 {} later than {} ({} forgiven){}",
                g.rate,
                us(g.lag_us.p50),
                us(g.lag_us.p99),
                us(g.lag_us.max),
                g.sent,
                g.scheduled,
                g.late,
                us(g.max_lag_us),
                g.late_allowed,
                if g.overloaded { "  OVERLOADED" } else { "" }
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors         none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "errors         {} ({:.4}%): {}",
                self.errors_total,
                self.error_rate * 100.0,
                list.join(", ")
            );
        }
        if self.other_frames > 0 {
            let _ = writeln!(
                out,
                "other frames   {} (without the sequence field; not counted)",
                self.other_frames
            );
        }
        for t in &self.thresholds {
            let v = t.value.map_or("not measured".into(), |v| t.unit.show(v));
            let _ = writeln!(
                out,
                "threshold      {:<32} measured {:<12} {}",
                t.threshold,
                v,
                if t.passed { "pass" } else { "FAIL" }
            );
        }
        if let Some(why) = &self.incomplete {
            let _ = writeln!(out, "incomplete     {why}");
        }
        if let Some(why) = &self.aborted {
            let _ = writeln!(out, "aborted        {why}");
        }
        let also: Vec<String> = self
            .failed
            .iter()
            .skip(1)
            .map(|v| format!("{} (exit {})", v.name(), v.exit_code()))
            .collect();
        let _ = writeln!(
            out,
            "verdict        {} (exit {}){}",
            self.verdict.name(),
            self.exit_code,
            if also.is_empty() {
                String::new()
            } else {
                format!("; also {}", also.join(", "))
            }
        );
        out
    }
}

/// A latency in microseconds, shortened with a unit.
fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}ms", v / 1e3)
    } else {
        format!("{v:.0}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RateProfile, Threshold, UrlTemplate};

    fn tick(worker: usize, index: u64, done: u64, last: bool) -> Tick {
        let mut t = Tick::new(worker, index);
        t.done = done;
        t.last = last;
        t.rec.latency(1000 * (index + 1));
        t
    }

    #[test]
    fn an_abort_threshold_stops_the_run_once_past_its_delay() {
        let mut opts = LoadOptions::new(
            Scenario::Subscribe,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        // tick() records latencies of 1 us, 2 us, 3 us...: p99 passes 1.5 us in interval 1.
        opts.thresholds = vec![
            Threshold::parse("p99<1500ns:abort=3s").unwrap(),
            Threshold::parse("rate>1000").unwrap(),
        ];
        let mut a = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        a.add(tick(0, 0, 10, false));
        a.add(tick(0, 1, 10, false));
        assert_eq!(a.aborted, None, "failing since 2 s, but the delay is 3 s");
        a.add(tick(0, 2, 10, false));
        let why = a.aborted.clone().expect("aborted at 3 s");
        assert!(
            why.contains("p99<1500ns:abort=3s failed 3.0 s in (measured 3us)"),
            "{why}"
        );
        // rate>1000 fails too, but it does not abort: only the one marked does.
        a.finish();
        let r = report_with(&opts, &a, true, None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::ThresholdFailed, 1));
        assert!(r
            .to_text()
            .contains("aborted        threshold p99<1500ns:abort"));
    }

    #[test]
    fn intervals_close_once_every_live_worker_passed_them() {
        let opts = LoadOptions::new(
            Scenario::Subscribe,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        let mut a = Aggregate::new(2, Duration::from_secs(1), None, &opts).unwrap();
        a.add(tick(0, 0, 5, false));
        a.add(tick(0, 1, 5, false));
        assert!(a.series.is_empty(), "worker 1 has not reported interval 0");
        a.add(tick(1, 0, 7, false));
        assert_eq!(a.series.len(), 1);
        assert_eq!(a.series[0].rate, 12.0);
        a.add(tick(1, 1, 1, true)); // worker 1 is done
        a.add(tick(0, 2, 3, true));
        a.finish();
        assert_eq!(a.series.len(), 3);
        assert_eq!(a.done, 21);
        assert_eq!(a.total.corrected.len(), 5);
    }

    #[test]
    fn the_last_interval_counts_only_the_time_it_covered() {
        let opts = LoadOptions::new(
            Scenario::Subscribe,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        let s = 1_000_000_000u64;
        let mut a = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        a.start_ns = 100 * s;
        let mut t = tick(0, 0, 100, false);
        t.last_done_ns = 100 * s + s - 1;
        a.add(t);
        // The run ended a quarter into interval 1, its last event then.
        let mut t = tick(0, 1, 25, true);
        t.last_done_ns = 101 * s + s / 4;
        a.add(t);
        a.finish();
        let last = a.series.last().unwrap();
        assert_eq!((last.t, last.len), (1.25, 0.25));
        assert_eq!(
            last.rate, 100.0,
            "25 events in a quarter second, not a drop to 25/s"
        );

        // A last interval with nothing in it is not drawn.
        let mut a = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        a.start_ns = 100 * s;
        a.add(tick(0, 0, 100, false));
        a.add(tick(0, 1, 0, true));
        a.finish();
        assert_eq!(a.series.len(), 1);
        assert_eq!(a.done, 100);
    }

    #[test]
    fn the_series_stays_bounded() {
        let opts = LoadOptions::new(
            Scenario::Subscribe,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        let mut a = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        for i in 0..10_000 {
            a.add(tick(0, i, 10, false));
        }
        a.finish();
        assert!(a.series.len() <= MAX_POINTS, "{}", a.series.len());
        let mean: f64 = a.series.iter().map(|p| p.rate).sum::<f64>() / a.series.len() as f64;
        assert!(
            (mean - 10.0).abs() < 1e-9,
            "merged points keep the rate: {mean}"
        );
    }

    fn report_with(
        opts: &LoadOptions,
        agg: &Aggregate,
        rate: bool,
        incomplete: Option<String>,
    ) -> LoadReport {
        LoadReport::build(Outcome {
            opts,
            agg,
            start_ns: 0,
            end_ns: 1_000_000_000,
            latency_from: "schedule",
            rate_text: rate.then(|| "1000/s".into()),
            incomplete,
        })
    }

    #[test]
    fn verdicts_and_exit_codes_follow_precedence() {
        let mut opts = LoadOptions::new(
            Scenario::Echo,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        opts.rate = Some(RateProfile::Constant(1000.0));
        opts.thresholds = vec![
            Threshold::parse("p99<2ms").unwrap(),
            Threshold::parse("errors<0.01").unwrap(),
        ];
        let mut agg = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        let mut t = Tick::new(0, 0);
        for j in 0..1000u64 {
            t.rec
                .message(j * 1_000_000, j * 1_000_000 + 1000, j * 1_000_000 + 500_000);
        }
        t.done = 1000;
        t.sent = 1000;
        t.scheduled = 1000;
        t.last = true;
        t.errors.add(ErrKind::Missing, 5);
        agg.add(t);
        agg.finish();
        let r = report_with(&opts, &agg, true, None);
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.to_text());
        assert_eq!(r.exit_code, 0);
        assert!((r.latency_us.unwrap().p99 - 500.0).abs() < 1.0);
        assert!((r.uncorrected_latency_us.unwrap().p99 - 499.0).abs() < 1.0);
        assert_eq!(r.errors.get("missing"), Some(&5));

        opts.thresholds = vec![Threshold::parse("p99<100us").unwrap()];
        let r = report_with(&opts, &agg, true, None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::ThresholdFailed, 1));
        assert!(
            r.thresholds
                .iter()
                .any(|t| t.threshold.starts_with("errors=0") && !t.passed),
            "no errors threshold: any error fails"
        );

        // Overloaded as well: the failed threshold still decides, and both are reported.
        opts.max_lag = Duration::from_nanos(500);
        let r = report_with(&opts, &agg, true, None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::ThresholdFailed, 1));
        assert_eq!(r.failed, [Verdict::ThresholdFailed, Verdict::Overloaded]);
        let text = r.to_text();
        assert!(
            text.contains("threshold_failed (exit 1); also overloaded (exit 3)"),
            "{text}"
        );
        assert!(text.contains("measured"), "{text}");
        // Overloaded alone: 3.
        opts.thresholds = vec![Threshold::parse("errors<0.01").unwrap()];
        let r = report_with(&opts, &agg, true, None);
        assert_eq!((r.verdict, r.exit_code), (Verdict::Overloaded, 3));
        // A threshold on a number of the report, by pointer, shown with its unit.
        opts.max_lag = Duration::from_millis(10);
        opts.thresholds = vec![
            Threshold::parse("/generator/sent>=1000").unwrap(),
            Threshold::parse("/uncorrected_latency_us/p99<200us").unwrap(),
            Threshold::parse("p99<50ms").unwrap(),
        ];
        let r = report_with(&opts, &agg, true, None);
        let got: Vec<_> = r.thresholds.iter().map(|t| (t.value, t.passed)).collect();
        assert_eq!(got[0], (Some(1000.0), true));
        assert!(!got[1].1, "{:?}", got[1]);
        let text = r.to_text();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{name}: {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("p99<50ms"), "threshold p99<50ms measured 500us pass");
        assert!(line("/uncorrected").ends_with("us FAIL"), "{text}");
        assert_eq!(
            line("/generator/sent"),
            "threshold /generator/sent>=1000 measured 1000 pass"
        );
        let r = report_with(&opts, &agg, true, Some("server went away".into()));
        assert_eq!((r.verdict, r.exit_code), (Verdict::RunFailed, 4));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        for k in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(json["latency_us"][k].is_number(), "{k}");
        }
        assert!(json["events_per_sec"].is_number());
    }

    /// A generator at 1000/s for `n` messages, each sent `lag(j)` ns after it was due.
    fn generator_run(n: u64, max_lag: Duration, lag: impl Fn(u64) -> u64) -> Generator {
        let mut opts = LoadOptions::new(
            Scenario::Echo,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        opts.rate = Some(RateProfile::Constant(1000.0));
        opts.max_lag = max_lag;
        let mut agg = Aggregate::new(1, Duration::from_secs(1), None, &opts).unwrap();
        let mut t = Tick::new(0, 0);
        for j in 0..n {
            let due = j * 1_000_000;
            t.rec.message(due, due + lag(j), due + lag(j) + 100_000);
        }
        (t.done, t.sent, t.scheduled, t.last) = (n, n, n, true);
        agg.add(t);
        agg.finish();
        report_with(&opts, &agg, true, None).generator.unwrap()
    }

    #[test]
    fn one_stall_is_forgiven_and_a_generator_that_falls_behind_is_not() {
        let ms = 1_000_000;
        // A 29 ms stall at message 100: the 29 messages due during it leave late, the first
        // 29 ms late, 19 of them more than 10 ms. p99 is past the 10 ms limit, yet the
        // generator kept its schedule.
        let stall = |j: u64| {
            if (100..129).contains(&j) {
                (129 - j) * ms
            } else {
                50_000
            }
        };
        let g = generator_run(1000, Duration::from_millis(10), stall);
        assert!(g.lag_us.p99 > g.max_lag_us, "{g:?}");
        assert_eq!((g.late, g.late_allowed), (19, 200), "{g:?}");
        assert!(!g.overloaded, "{g:?}");

        // The same stall with a 0.1 ms limit: 29 late against the 2 that a 2 ms stall forgives.
        let g = generator_run(1000, Duration::from_micros(100), stall);
        assert_eq!((g.late, g.late_allowed), (29, 2), "{g:?}");
        assert!(g.overloaded, "{g:?}");

        // A generator 1% slower than its schedule: late by 10 us more each message, so past
        // 10 ms from message 1000 on; 1000 of 2000 late is far past one stall's 200.
        let g = generator_run(2000, Duration::from_millis(10), |j| j * 10_000);
        assert_eq!(g.late, 999, "{g:?}");
        assert!(g.overloaded, "{g:?}");

        // Nothing late at all.
        let g = generator_run(1000, Duration::from_millis(10), |_| 1_000);
        assert_eq!(g.late, 0);
        assert!(!g.overloaded);

        // A limit so large that 20 times it does not fit a Duration: nothing is late, and
        // the allowance saturates rather than panicking.
        let g = generator_run(1000, Duration::MAX / 2, |_| 1_000);
        assert_eq!(g.late, 0);
        assert!(!g.overloaded);
    }

    #[test]
    fn the_hdr_log_is_readable_by_the_hdrhistogram_reader() {
        let dir = std::env::temp_dir().join(format!("fg-hdrlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.hlog");
        let mut opts = LoadOptions::new(
            Scenario::Echo,
            UrlTemplate::parse("ws://127.0.0.1:1/").unwrap(),
        );
        opts.rate = Some(RateProfile::Constant(10.0));
        let mut agg = Aggregate::new(1, Duration::from_secs(1), Some(&path), &opts).unwrap();
        for i in 0..3 {
            let mut t = tick(0, i, 1, i == 2);
            t.rec.message(0, 10, 2000);
            agg.add(t);
        }
        agg.finish();
        drop(agg);
        // One histogram per interval in each file, untagged, so every reader takes each file
        // as it is meant.
        let read = |p: &Path| {
            let text = std::fs::read(p).unwrap();
            let mut seen = Vec::new();
            for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text)
            {
                if let hdrhistogram::serialization::interval_log::LogEntry::Interval(h) =
                    entry.unwrap()
                {
                    assert!(h.tag().is_none());
                    seen.push(h.start_timestamp());
                }
            }
            seen
        };
        assert_eq!(read(&path).len(), 3, "the corrected histograms");
        assert_eq!(
            read(&dir.join("run.uncorrected.hlog")).len(),
            3,
            "the uncorrected ones"
        );
        assert_eq!(
            uncorrected_path(Path::new("/x/run")),
            Path::new("/x/run.uncorrected")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
