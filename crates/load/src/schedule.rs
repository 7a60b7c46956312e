//! Open-loop schedules: when the `j`-th message of a run is due, for a constant, ramped or
//! stepped rate. Pure arithmetic on seconds since the start, so it is tested without a clock.
//!
//! A generator sends message `j` at `time_of(j)` whatever happened to earlier ones (open loop),
//! and stamps it with that intended time. Latency counted from the intended time includes any
//! delay the server caused the generator itself (coordinated omission corrected, as in wrk2).

use std::time::Duration;

/// A rate over time, in messages per second. After a ramp or the last step, the final rate
/// holds until the run ends.
#[derive(Debug, Clone, PartialEq)]
pub enum RateProfile {
    /// `N`: the same rate throughout.
    Constant(f64),
    /// `ramp:A..B/D`: linearly from `A` to `B` over `D`, then `B`.
    Ramp {
        /// The rate at the start.
        from: f64,
        /// The rate at the end of the ramp, and after it.
        to: f64,
        /// How long the ramp lasts.
        over: Duration,
    },
    /// `steps:A,B,C/D`: each rate held for `D`, then the last one.
    Steps {
        /// The rates, in order.
        rates: Vec<f64>,
        /// How long each is held.
        each: Duration,
    },
}

impl RateProfile {
    /// Parses `50000`, `ramp:1000..50000/30s` or `steps:10000,20000,40000/10s`.
    pub fn parse(text: &str) -> Result<RateProfile, String> {
        let rate = |s: &str| -> Result<f64, String> {
            let v: f64 = s
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("`{s}` is not a rate (messages per second)"))?;
            if v.is_finite() && v > 0.0 && v <= 1e9 {
                Ok(v)
            } else {
                Err(format!(
                    "rate `{s}` must be more than 0 and at most 1e9 per second"
                ))
            }
        };
        let dur = |s: &str| -> Result<Duration, String> {
            let d = humantime::parse_duration(s.trim())
                .map_err(|e| format!("`{s}` is not a duration (e.g. 30s): {e}"))?;
            if d.is_zero() {
                Err("the duration must be more than 0".into())
            } else {
                Ok(d)
            }
        };
        if let Some(rest) = text.strip_prefix("ramp:") {
            let (range, over) = rest
                .split_once('/')
                .ok_or("a ramp is `ramp:FROM..TO/DURATION`, e.g. ramp:1000..50000/30s")?;
            let (from, to) = range
                .split_once("..")
                .ok_or("a ramp is `ramp:FROM..TO/DURATION`, e.g. ramp:1000..50000/30s")?;
            return Ok(RateProfile::Ramp {
                from: rate(from)?,
                to: rate(to)?,
                over: dur(over)?,
            });
        }
        if let Some(rest) = text.strip_prefix("steps:") {
            let (list, each) = rest
                .split_once('/')
                .ok_or("steps are `steps:R1,R2,.../DURATION`, e.g. steps:10000,20000/10s")?;
            let rates = list.split(',').map(rate).collect::<Result<Vec<_>, _>>()?;
            return Ok(RateProfile::Steps {
                rates,
                each: dur(each)?,
            });
        }
        rate(text).map(RateProfile::Constant)
    }

    /// The same profile with every rate multiplied by `k` (a share of the generator).
    pub fn scaled(&self, k: f64) -> RateProfile {
        match self {
            RateProfile::Constant(r) => RateProfile::Constant(r * k),
            RateProfile::Ramp { from, to, over } => RateProfile::Ramp {
                from: from * k,
                to: to * k,
                over: *over,
            },
            RateProfile::Steps { rates, each } => RateProfile::Steps {
                rates: rates.iter().map(|r| r * k).collect(),
                each: *each,
            },
        }
    }

    /// The rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self {
            RateProfile::Constant(r) => *r,
            RateProfile::Ramp { from, to, over } => {
                let d = over.as_secs_f64();
                if t >= d {
                    *to
                } else {
                    from + (to - from) * t.max(0.0) / d
                }
            }
            RateProfile::Steps { rates, each } => {
                let i = (t.max(0.0) / each.as_secs_f64()) as usize;
                rates[i.min(rates.len() - 1)]
            }
        }
    }

    /// Messages due in the first `t` seconds (the integral of the rate).
    pub fn count_by(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        match self {
            RateProfile::Constant(r) => r * t,
            RateProfile::Ramp { from, to, over } => {
                let d = over.as_secs_f64();
                let tt = t.min(d);
                let ramp = from * tt + (to - from) * tt * tt / (2.0 * d);
                ramp + to * (t - tt)
            }
            RateProfile::Steps { rates, each } => {
                let e = each.as_secs_f64();
                let mut n = 0.0;
                for (i, r) in rates.iter().enumerate() {
                    let start = i as f64 * e;
                    if t <= start {
                        break;
                    }
                    let end = if i + 1 == rates.len() {
                        t
                    } else {
                        (start + e).min(t)
                    };
                    n += r * (end - start);
                }
                n
            }
        }
    }

    /// When message `j` (from 0) is due, in seconds since the start: the time by which `j`
    /// messages have been due, so message 0 leaves at once.
    pub fn time_of(&self, j: u64) -> f64 {
        let n = j as f64;
        match self {
            RateProfile::Constant(r) => n / r,
            RateProfile::Ramp { from, to, over } => {
                let d = over.as_secs_f64();
                let full = (from + to) / 2.0 * d;
                if n >= full {
                    return d + (n - full) / to;
                }
                // Solve from*t + (to-from)/(2d) t^2 = n for t in [0, d].
                let a = (to - from) / (2.0 * d);
                if a.abs() < 1e-12 {
                    return n / from;
                }
                let disc = from * from + 4.0 * a * n;
                // Written to avoid cancellation when `a` is small.
                2.0 * n / (from + disc.max(0.0).sqrt())
            }
            RateProfile::Steps { rates, each } => {
                let e = each.as_secs_f64();
                let mut left = n;
                for (i, r) in rates.iter().enumerate() {
                    let cap = r * e;
                    if i + 1 == rates.len() || left < cap {
                        return i as f64 * e + left / r;
                    }
                    left -= cap;
                }
                unreachable!("the last step takes the rest")
            }
        }
    }

    /// The highest rate anywhere in the profile.
    pub fn peak(&self) -> f64 {
        match self {
            RateProfile::Constant(r) => *r,
            RateProfile::Ramp { from, to, .. } => from.max(*to),
            RateProfile::Steps { rates, .. } => rates.iter().cloned().fold(0.0, f64::max),
        }
    }
}

impl std::fmt::Display for RateProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateProfile::Constant(r) => write!(f, "{r}/s"),
            RateProfile::Ramp { from, to, over } => {
                write!(
                    f,
                    "ramp {from}/s to {to}/s over {}",
                    humantime::format_duration(*over)
                )
            }
            RateProfile::Steps { rates, each } => {
                let list: Vec<String> = rates.iter().map(|r| format!("{r}")).collect();
                write!(
                    f,
                    "steps {}/s, {} each",
                    list.join(", "),
                    humantime::format_duration(*each)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_refuse_nonsense() {
        assert_eq!(
            RateProfile::parse("50000"),
            Ok(RateProfile::Constant(50000.0))
        );
        assert_eq!(
            RateProfile::parse("1_000"),
            Ok(RateProfile::Constant(1000.0))
        );
        assert_eq!(
            RateProfile::parse("ramp:1000..5000/30s"),
            Ok(RateProfile::Ramp {
                from: 1000.0,
                to: 5000.0,
                over: Duration::from_secs(30)
            })
        );
        assert_eq!(
            RateProfile::parse("steps:10,20,40/2s"),
            Ok(RateProfile::Steps {
                rates: vec![10.0, 20.0, 40.0],
                each: Duration::from_secs(2)
            })
        );
        for bad in [
            "0",
            "-5",
            "fast",
            "ramp:1..2",
            "ramp:1/3s",
            "steps:/1s",
            "steps:1,x/1s",
            "ramp:1..2/0s",
        ] {
            assert!(RateProfile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_of_inverts_count_by() {
        let profiles = [
            RateProfile::Constant(1000.0),
            RateProfile::parse("ramp:100..10000/5s").unwrap(),
            RateProfile::parse("ramp:8000..200/2s").unwrap(),
            RateProfile::parse("steps:100,1000,50/1s").unwrap(),
        ];
        for p in &profiles {
            for j in [0u64, 1, 7, 99, 100, 1234, 5000, 20_000, 60_000] {
                let t = p.time_of(j);
                let back = p.count_by(t);
                assert!(
                    (back - j as f64).abs() < 1e-6 * (j as f64).max(1.0),
                    "{p}: j={j} t={t} back={back}"
                );
            }
            // Monotonic: a later message is never due earlier.
            let mut last = -1.0;
            for j in 0..5000 {
                let t = p.time_of(j);
                assert!(t >= last, "{p}: {j}");
                last = t;
            }
        }
    }

    #[test]
    fn a_constant_rate_spaces_messages_evenly_and_ramps_accelerate() {
        let p = RateProfile::Constant(4.0);
        assert_eq!(p.time_of(0), 0.0);
        assert_eq!(p.time_of(1), 0.25);
        assert_eq!(p.time_of(8), 2.0);
        let ramp = RateProfile::parse("ramp:10..30/10s").unwrap();
        // 200 messages are due over the ramp (the mean rate 20/s for 10 s), then 30/s.
        assert!((ramp.count_by(10.0) - 200.0).abs() < 1e-9);
        assert!((ramp.time_of(230) - 11.0).abs() < 1e-9);
        assert_eq!(ramp.rate_at(5.0), 20.0);
        let steps = RateProfile::parse("steps:10,20/1s").unwrap();
        assert!((steps.time_of(10) - 1.0).abs() < 1e-12);
        assert!(
            (steps.time_of(50) - 3.0).abs() < 1e-12,
            "30 by 2 s, then 20/s holds after the last step"
        );
        assert_eq!(steps.scaled(0.5).peak(), 10.0);
    }
}
