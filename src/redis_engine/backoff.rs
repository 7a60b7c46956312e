//! The wait between tries to reach Redis: exponential with jitter, so that nodes cut off
//! together do not come back together.

use std::time::Duration;

/// The first wait after a failure; it doubles up to [`MAX`], each wait drawn between half of it
/// and all of it, and starts again after a success.
const FIRST: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(2);

/// One thread's backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff at its first wait, its jitter seeded from the OS.
    pub(crate) fn new() -> Backoff {
        let mut seed = [0u8; 8];
        // A failing OS random source only makes the jitter predictable.
        let _ = getrandom::fill(&mut seed);
        Backoff {
            current: FIRST,
            rng: u64::from_le_bytes(seed) | 1,
        }
    }

    /// Whether the next wait is the first (no failure since the last success).
    pub(crate) fn is_first(&self) -> bool {
        self.current == FIRST
    }

    /// The wait before the next try: between half of the current backoff and all of it; the
    /// backoff then doubles, up to 2 s.
    pub(crate) fn next_wait(&mut self) -> Duration {
        // xorshift64: jitter needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.current / 2;
        let wait = half + half.mul_f64((self.rng % 1000) as f64 / 1000.0);
        self.current = (self.current * 2).min(MAX);
        wait
    }

    /// After a success: the next failure waits the first wait again.
    pub(crate) fn reset(&mut self) {
        self.current = FIRST;
    }

    /// A random u64 (for new epochs).
    pub(crate) fn random(&mut self) -> u64 {
        self.next_wait();
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_two_seconds_and_start_again_after_a_success() {
        let mut b = Backoff::new();
        let mut bound = FIRST;
        for _ in 0..10 {
            let w = b.next_wait();
            assert!(
                w >= bound / 2 && w <= bound,
                "{w:?} within [{:?}, {bound:?}]",
                bound / 2
            );
            bound = (bound * 2).min(MAX);
        }
        assert!(!b.is_first());
        b.reset();
        assert!(b.is_first());
        assert!(b.next_wait() <= FIRST);
    }
}
