//! Latency arithmetic: what one message's times add to the histograms, and the summaries.
//!
//! Three times per message: when it was due (`intended`, from the open-loop schedule), when it
//! actually left (`sent`) and when its reply or delivery arrived (`received`). Then
//! - corrected latency = received - intended (what a user waiting on the schedule saw:
//!   coordinated omission corrected, as in wrk2);
//! - uncorrected latency = received - sent (what most tools report);
//! - generator lag = sent - intended (how far the generator fell behind its own schedule).
//!
//! All in nanoseconds in HdrHistograms with 3 significant digits from 1 ns to 1 hour.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds (1 ns to 1 hour, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

/// The three histograms a message feeds.
#[derive(Clone)]
pub struct Recorder {
    /// Latency from when each message was due (coordinated omission corrected).
    pub corrected: Histogram<u64>,
    /// Latency from when each message was actually sent.
    pub uncorrected: Histogram<u64>,
    /// How far behind its schedule each message was sent.
    pub lag: Histogram<u64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("corrected", &self.corrected.len())
            .field("uncorrected", &self.uncorrected.len())
            .field("lag", &self.lag.len())
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            corrected: histogram(),
            uncorrected: histogram(),
            lag: histogram(),
        }
    }
}

impl Recorder {
    /// Records a whole message at once: [`sent`](Self::sent) and [`reply`](Self::reply).
    #[cfg(test)]
    pub fn message(&mut self, intended: u64, sent: u64, received: u64) {
        self.reply(intended, sent, received);
        self.sent(intended, sent);
    }

    /// Records a reply or delivery (corrected and uncorrected); the lag was recorded when the
    /// message left ([`sent`](Self::sent)). Times are nanoseconds on one clock; a reply that
    /// seems to arrive before it was sent (a clock step) counts as 1 ns rather than vanishing.
    pub fn reply(&mut self, intended: u64, sent: u64, received: u64) {
        self.corrected
            .saturating_record(received.saturating_sub(intended).max(1));
        self.uncorrected
            .saturating_record(received.saturating_sub(sent).max(1));
    }

    /// Records how late a message left against its schedule.
    pub fn sent(&mut self, intended: u64, sent: u64) {
        self.lag
            .saturating_record(sent.saturating_sub(intended).max(1));
    }

    /// Records a latency known only one way (a server's own timestamp).
    pub fn latency(&mut self, ns: u64) {
        self.corrected.saturating_record(ns.max(1));
    }

    /// Adds `other` into this one.
    pub fn add(&mut self, other: &Recorder) {
        self.corrected.add(&other.corrected).expect("same bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("same bounds");
        self.lag.add(&other.lag).expect("same bounds");
    }

    /// Empties every histogram (keeping their memory).
    pub fn reset(&mut self) {
        self.corrected.reset();
        self.uncorrected.reset();
        self.lag.reset();
    }
}

/// Percentiles of a latency histogram in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Values recorded.
    pub count: u64,
}

impl LatencyUs {
    /// The percentiles of `h`, whose values are nanoseconds.
    pub fn of(h: &Histogram<u64>) -> LatencyUs {
        if h.is_empty() {
            return LatencyUs::default();
        }
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1e3;
        LatencyUs {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: h.max() as f64 / 1e3,
            mean: h.mean() / 1e3,
            count: h.len(),
        }
    }

    /// (percentile x 1000, value) pairs, for thresholds.
    pub fn table(&self) -> Vec<(u32, f64)> {
        vec![
            (50_000, self.p50),
            (90_000, self.p90),
            (99_000, self.p99),
            (99_900, self.p999),
            (99_990, self.p9999),
            (100_000, self.max),
        ]
    }
}

/// Any percentile of a histogram, in microseconds (for thresholds on uncommon percentiles).
pub fn percentile_us(h: &Histogram<u64>, p_times_1000: u32) -> f64 {
    h.value_at_quantile(f64::from(p_times_1000) / 100_000.0) as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic schedule: 1000 messages/s for 10 s, served in 1 ms, except that the server
    /// stalls from t = 2 s to t = 3 s. A generator blocked by the stall sends everything due
    /// in that second at 3 s. Uncorrected latency hides the stall; corrected latency shows the
    /// tenth of the run that waited, and the lag says the generator fell behind.
    #[test]
    fn corrected_latency_counts_from_the_schedule_and_uncorrected_from_the_send() {
        const MS: u64 = 1_000_000;
        let mut r = Recorder::default();
        for j in 0..10_000u64 {
            let intended = j * MS; // 1000/s
            let sent = if (2000 * MS..3000 * MS).contains(&intended) {
                3000 * MS
            } else {
                intended
            };
            r.message(intended, sent, sent + MS);
        }
        let c = LatencyUs::of(&r.corrected);
        let u = LatencyUs::of(&r.uncorrected);
        let lag = LatencyUs::of(&r.lag);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        // 9000 messages took 1 ms; the 1000 stalled ones 2 ms .. 1001 ms (uniformly).
        assert!(near(c.p50, 1000.0), "{c:?}");
        assert!(near(c.p90, 1000.0), "{c:?}");
        // p99 is rank 9900: the 900th stalled message from the shortest, 1 ms + 900 ms.
        assert!(near(c.p99, 901_000.0), "{c:?}");
        assert!(near(c.p999, 991_000.0), "{c:?}");
        assert!(near(c.max, 1_001_000.0), "{c:?}");
        // Uncorrected: every message 1 ms after it left.
        assert!(near(u.p99, 1000.0) && near(u.max, 1000.0), "{u:?}");
        // The generator was up to 1 s late for a tenth of the messages.
        assert!(near(lag.p90, 0.001), "{lag:?}");
        assert!(near(lag.p99, 900_000.0), "{lag:?}");
        assert!(near(lag.max, 1_000_000.0), "{lag:?}");
        assert_eq!(c.count, 10_000);
    }

    #[test]
    fn replies_from_a_stepped_clock_count_as_one_nanosecond() {
        let mut r = Recorder::default();
        r.message(100, 50, 10);
        assert_eq!(r.corrected.max(), 1);
        assert_eq!(r.lag.max(), 1);
        let mut total = Recorder::default();
        total.add(&r);
        assert_eq!(total.corrected.len(), 1);
        total.reset();
        assert!(total.corrected.is_empty());
    }
}
