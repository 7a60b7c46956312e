//! When a connection's queued frames are written: the batching policy, as a pure function of
//! the pending count, the time the oldest pending frame was queued, and `now`.

use std::time::{Duration, Instant};

/// `max_batch_events` and `max_batch_delay`, validated together by the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchPolicy {
    /// Write as soon as this many event frames are pending (at least 1).
    pub max_events: usize,
    /// Write once the oldest pending frame is this old; zero means "at the end of the pass".
    pub max_delay: Duration,
}

impl BatchPolicy {
    /// True when a connection that has `pending` frames, the oldest queued at `since`, must be
    /// written now. `pass_end` is true when the reactor has drained its rings for this pass.
    #[inline]
    pub(crate) fn due(&self, pending: usize, since: Instant, now: Instant, pass_end: bool) -> bool {
        pending >= self.max_events
            || (pass_end
                && (self.max_delay.is_zero()
                    || now.saturating_duration_since(since) >= self.max_delay))
    }

    /// When a connection whose oldest pending frame was queued at `since` becomes due by age.
    pub(crate) fn deadline(&self, since: Instant) -> Instant {
        since + self.max_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn zero_delay_flushes_at_every_pass_end() {
        let p = BatchPolicy {
            max_events: 64,
            max_delay: Duration::ZERO,
        };
        let t0 = Instant::now();
        assert!(!p.due(1, t0, t0, false));
        assert!(p.due(1, t0, t0, true));
        assert!(p.due(64, t0, t0, false), "count limit applies mid-pass");
    }

    #[test]
    fn delay_holds_frames_until_age_or_count() {
        let p = BatchPolicy {
            max_events: 8,
            max_delay: 2 * MS,
        };
        let t0 = Instant::now();
        assert!(!p.due(3, t0, t0 + MS, true));
        assert!(p.due(3, t0, t0 + 2 * MS, true));
        assert!(p.due(8, t0, t0, false));
        assert_eq!(p.deadline(t0), t0 + 2 * MS);
    }
}
