//! Pass/fail thresholds on a load run: `p99<2ms`, `rate>500000`, `errors<0.001`, or any number
//! in the JSON report by its pointer: `/generator/late<100`, `/uncorrected_latency_us/p99<5ms`.

use std::time::Duration;

/// What a threshold is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A latency percentile (corrected, from the intended time), times 1000: p50 = 50_000,
    /// p99.9 = 99_900.
    Percentile(Millis),
    /// The largest latency.
    Max,
    /// The mean latency.
    Mean,
    /// Events (or replies, or connections) per second.
    Rate,
    /// Errors as a share of everything attempted (0.001 = 0.1 %).
    Errors,
    /// Any number in the JSON report (`--json`), by its JSON pointer. A pointer ending in
    /// `_us` or naming a field under one (`/latency_us/p99`) is a latency in microseconds and
    /// takes a limit with a unit.
    Report(&'static str),
}

/// A percentile times 1000, so it can be compared exactly (99.99 = 99_990).
pub type Millis = u32;

/// How the value must compare with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// One threshold as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// As written on the command line.
    pub text: String,
    /// What it measures.
    pub metric: Metric,
    /// How the value is compared with `limit`.
    pub op: Op,
    /// Microseconds for latencies, per second for rate, a fraction for errors.
    pub limit: f64,
    /// `:abort` or `:abort=DELAY`: checked at the end of every interval once DELAY into the
    /// run, and the run stops at the first failure (as k6's `abortOnFail` with
    /// `delayAbortEval`). Not for report pointers, which exist only at the end.
    pub abort: Option<Duration>,
}

/// The measured values a threshold can name.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Corrected latency percentiles in microseconds: (percentile x 1000, value).
    pub percentiles_us: Vec<(Millis, f64)>,
    pub max_us: f64,
    pub mean_us: f64,
    pub rate: f64,
    pub error_rate: f64,
}

impl Threshold {
    /// Parses `p99<2ms`, `p99.9<=500us`, `max<1s`, `mean<100us`, `rate>500000`,
    /// `errors<0.001`.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let (t, abort) = match text.trim().split_once(":abort") {
            None => (text.trim(), None),
            Some((t, "")) => (t.trim_end(), Some(Duration::ZERO)),
            Some((t, rest)) => {
                let delay = rest
                    .strip_prefix('=')
                    .and_then(|d| humantime::parse_duration(d.trim()).ok())
                    .ok_or_else(|| {
                        format!("threshold `{text}`: write `:abort` or `:abort=DELAY` (e.g. :abort=10s)")
                    })?;
                (t.trim_end(), Some(delay))
            }
        };
        let (at, op, len) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|o| t.find(o).map(|i| (i, *o, o.len())))
            .ok_or_else(|| format!("threshold `{text}` needs <, <=, > or >= (e.g. p99<2ms)"))?;
        let name = t[..at].trim();
        let value = t[at + len..].trim();
        let op = match op {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        let metric = match name {
            "max" => Metric::Max,
            "mean" => Metric::Mean,
            "rate" => Metric::Rate,
            "errors" => Metric::Errors,
            p if p.starts_with('/') => {
                if p.len() > 200 || p.contains(char::is_whitespace) {
                    return Err(format!("`{p}` is not a JSON pointer into the report"));
                }
                // Leaked once per threshold given on the command line: a handful of bytes.
                Metric::Report(Box::leak(p.to_owned().into_boxed_str()))
            }
            p if p.starts_with('p') => {
                let v: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("`{name}` is not a percentile (p50, p99, p99.9 ...)"))?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(format!("percentile `{name}` must be from p0 to p100"));
                }
                Metric::Percentile((v * 1000.0).round() as Millis)
            }
            _ => {
                return Err(format!(
                    "unknown threshold metric `{name}`: use p50..p99.99, max, mean, rate, errors, \
                     or a JSON pointer into the report (/generator/late)"
                ))
            }
        };
        let limit = match metric {
            _ if Unit::of(metric) == Unit::Micros => {
                let d = humantime::parse_duration(value).map_err(|_| {
                    format!("`{value}` is not a latency with a unit (e.g. 2ms, 500us, 1s)")
                })?;
                duration_us(d)
            }
            _ => {
                let v: f64 = value
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("`{value}` is not a number"))?;
                if metric == Metric::Errors && !(0.0..=1.0).contains(&v) {
                    return Err("errors is a fraction from 0 to 1 (0.001 = 0.1%)".into());
                }
                v
            }
        };
        if abort.is_some() && matches!(metric, Metric::Report(_)) {
            return Err(format!(
                "threshold `{text}`: a report pointer is known only at the end; it cannot abort"
            ));
        }
        Ok(Threshold {
            text: text.trim().to_owned(),
            metric,
            op,
            limit,
            abort,
        })
    }

    /// The measured value this threshold names, if the run measured it (latency thresholds
    /// need a latency source).
    pub fn value(&self, m: &Measured) -> Option<f64> {
        match self.metric {
            Metric::Percentile(p) => m
                .percentiles_us
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, v)| *v),
            Metric::Max => Some(m.max_us),
            Metric::Mean => Some(m.mean_us),
            Metric::Rate => Some(m.rate),
            Metric::Errors => Some(m.error_rate),
            Metric::Report(_) => None,
        }
    }

    /// The unit of the measured value and the limit.
    pub fn unit(&self) -> Unit {
        Unit::of(self.metric)
    }

    /// Whether `value` passes.
    pub fn passes(&self, value: f64) -> bool {
        match self.op {
            Op::Lt => value < self.limit,
            Op::Le => value <= self.limit,
            Op::Gt => value > self.limit,
            Op::Ge => value >= self.limit,
        }
    }

    /// The percentile this threshold needs measured, if any (x 1000).
    pub fn percentile(&self) -> Option<Millis> {
        match self.metric {
            Metric::Percentile(p) => Some(p),
            _ => None,
        }
    }

    /// Whether it needs latency at all.
    pub fn needs_latency(&self) -> bool {
        matches!(
            self.metric,
            Metric::Percentile(_) | Metric::Max | Metric::Mean
        )
    }
}

fn duration_us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

/// What a threshold's numbers count, for showing them with their unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Microseconds, shown as `850us`, `12.40ms` or `1.20s`.
    Micros,
    /// Per second.
    PerSec,
    /// A fraction, shown as a percentage.
    Fraction,
    /// A count or any other number, shown as it is.
    Number,
}

impl Unit {
    fn of(metric: Metric) -> Unit {
        match metric {
            Metric::Percentile(_) | Metric::Max | Metric::Mean => Unit::Micros,
            Metric::Rate => Unit::PerSec,
            Metric::Errors => Unit::Fraction,
            Metric::Report(p) if p.ends_with("_us") || p.contains("_us/") => Unit::Micros,
            Metric::Report(p) if p.ends_with("_per_sec") => Unit::PerSec,
            Metric::Report(p) if p.ends_with("_rate") => Unit::Fraction,
            Metric::Report(_) => Unit::Number,
        }
    }

    /// `v` with its unit: `12.40ms`, `512000/s`, `0.100%`, `17`.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Micros if v >= 1e6 => format!("{:.2}s", v / 1e6),
            Unit::Micros if v >= 1e3 => format!("{:.2}ms", v / 1e3),
            Unit::Micros => format!("{v:.0}us"),
            Unit::PerSec => format!("{v:.0}/s"),
            Unit::Fraction => format!("{:.3}%", v * 100.0),
            Unit::Number if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
            Unit::Number => format!("{v:.3}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_with_units() {
        let t = Threshold::parse("p99<2ms").unwrap();
        assert_eq!(t.metric, Metric::Percentile(99_000));
        assert_eq!((t.op, t.limit), (Op::Lt, 2000.0));
        let t = Threshold::parse(" p99.99 <= 500us ").unwrap();
        assert_eq!(t.metric, Metric::Percentile(99_990));
        assert_eq!((t.op, t.limit), (Op::Le, 500.0));
        let t = Threshold::parse("rate>500_000").unwrap();
        assert_eq!((t.metric, t.op, t.limit), (Metric::Rate, Op::Gt, 500_000.0));
        let t = Threshold::parse("errors<0.001").unwrap();
        assert_eq!((t.metric, t.limit), (Metric::Errors, 0.001));
        assert_eq!(Threshold::parse("max>=1s").unwrap().limit, 1e6);
        for bad in [
            "p99",
            "p99<2",
            "p101<1ms",
            "q99<1ms",
            "rate>fast",
            "errors<2",
            "<1ms",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_compare_measured_values() {
        let m = Measured {
            percentiles_us: vec![(50_000, 100.0), (99_000, 2500.0)],
            max_us: 9000.0,
            mean_us: 150.0,
            rate: 400_000.0,
            error_rate: 0.0,
        };
        let check = |s: &str| {
            let t = Threshold::parse(s).unwrap();
            t.passes(t.value(&m).unwrap())
        };
        assert!(!check("p99<2ms"));
        assert!(check("p99<3ms"));
        assert!(check("p50<=100us"));
        assert!(!check("p50<100us"));
        assert!(!check("rate>500000"));
        assert!(check("rate>=400000"));
        assert!(check("errors<0.001"));
        assert!(check("max<10ms"));
        assert!(Threshold::parse("p90<1ms").unwrap().value(&m).is_none());
    }

    #[test]
    fn abort_suffixes_parse() {
        let t = Threshold::parse("p99<50ms:abort").unwrap();
        assert_eq!((t.limit, t.abort), (50_000.0, Some(Duration::ZERO)));
        assert_eq!(t.text, "p99<50ms:abort");
        let t = Threshold::parse("errors<0.01:abort=10s").unwrap();
        assert_eq!((t.limit, t.abort), (0.01, Some(Duration::from_secs(10))));
        assert_eq!(Threshold::parse("rate>5").unwrap().abort, None);
        assert!(Threshold::parse("p99<5ms:abort=soon").is_err());
        assert!(Threshold::parse("p99<5ms:abortx").is_err());
        assert!(Threshold::parse("/generator/late<5:abort").is_err());
    }

    #[test]
    fn report_pointers_and_units() {
        let t = Threshold::parse("/generator/late<100").unwrap();
        assert_eq!(t.metric, Metric::Report("/generator/late"));
        assert_eq!((t.unit(), t.limit), (Unit::Number, 100.0));
        let t = Threshold::parse("/uncorrected_latency_us/p99<=5ms").unwrap();
        assert_eq!((t.unit(), t.limit), (Unit::Micros, 5000.0));
        assert!(
            Threshold::parse("/latency_us/p99<5").is_err(),
            "a latency needs a unit"
        );
        assert_eq!(
            Threshold::parse("/mb_per_sec>10").unwrap().unit(),
            Unit::PerSec
        );
        assert_eq!(Unit::Micros.show(12402.687), "12.40ms");
        assert_eq!(Unit::Micros.show(850.0), "850us");
        assert_eq!(Unit::PerSec.show(512000.4), "512000/s");
        assert_eq!(Unit::Fraction.show(0.001), "0.100%");
        assert_eq!(Unit::Number.show(17.0), "17");
    }
}
