//! A connection's circuit breaker, as a pure state machine on a caller-supplied clock.
//!
//! - **Closed**: events are queued on the connection as usual.
//! - **Open**: the connection failed ([`Cause`]): it fell behind (its unsent bytes stayed over
//!   the high-water mark for `trip_after`, or would have passed `max_outbound_bytes`), it did
//!   not answer a ping within `pong_timeout`, or a write to its socket failed for want of
//!   kernel memory. Its queued events are dropped from memory and later ones are not queued.
//!   The user's history (and spool) keeps them, and the connection resumes from there. It
//!   stays open for `cooldown`.
//! - **Half-open**: after the cool-down, the connection is refilled from history a chunk at a
//!   time. A chunk written in full closes the breaker. Falling behind again re-opens it.
//!
//! Health is a 0 to 100 score: 100 when healthy, 25 points less for each consecutive trip, and
//! 5 points back for each batch written in full while closed.

use std::time::{Duration, Instant};

/// `breaker_trip_after` and `breaker_cooldown`, validated by the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerPolicy {
    /// Unsent bytes above this (half of `max_outbound_bytes`) count as falling behind.
    pub high_water: usize,
    /// How long a connection may stay above `high_water` before the breaker opens.
    pub trip_after: Duration,
    /// How long the breaker stays open; zero disables the breaker (slow consumers are closed
    /// with 4008 instead).
    pub cooldown: Duration,
}

impl BreakerPolicy {
    /// Whether connections have a breaker at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.cooldown.is_zero()
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Unsent bytes over the high-water mark for `trip_after`, or past the cap.
    Backlog,
    /// No pong within `pong_timeout`.
    MissedPong,
    /// A socket write failed with a transient error (ENOBUFS, ENOMEM).
    WriteError,
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    HalfOpened,
    Closed,
}

/// One connection's breaker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    state: BreakerState,
    /// Since when the unsent bytes have been above the high-water mark (None: below).
    over_since: Option<Instant>,
    /// Trips since the breaker last closed.
    consecutive: u32,
    /// Trips in all (the connection's failure count).
    trips: u32,
    /// Why it last opened.
    cause: Cause,
    health: u8,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            over_since: None,
            consecutive: 0,
            trips: 0,
            cause: Cause::Backlog,
            health: 100,
        }
    }
}

impl Breaker {
    #[cfg(test)]
    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// True while events must not be queued on the connection.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, BreakerState::Open { .. })
    }

    /// 0 (tripping again and again) to 100 (healthy).
    pub(crate) fn health(&self) -> u8 {
        self.health
    }

    /// Why the breaker last opened.
    pub(crate) fn cause(&self) -> Cause {
        self.cause
    }

    /// How many times it opened in all.
    pub(crate) fn trips(&self) -> u32 {
        self.trips
    }

    /// Opens the breaker for a failure seen outside the backlog (a missed pong, a write
    /// error). Does nothing if it is open already.
    pub(crate) fn fail(&mut self, cause: Cause, now: Instant, p: &BreakerPolicy) -> Transition {
        if self.is_open() {
            return Transition::None;
        }
        self.trip(cause, now, p)
    }

    /// Reports the connection's unsent bytes after queueing or writing. `hard` is true when
    /// the next frame would not fit under `max_outbound_bytes` at all, which trips at once.
    pub(crate) fn on_backlog(
        &mut self,
        unsent: usize,
        hard: bool,
        now: Instant,
        p: &BreakerPolicy,
    ) -> Transition {
        if self.is_open() {
            return Transition::None;
        }
        if unsent <= p.high_water && !hard {
            self.over_since = None;
            return Transition::None;
        }
        let since = *self.over_since.get_or_insert(now);
        if hard || now.saturating_duration_since(since) >= p.trip_after {
            return self.trip(Cause::Backlog, now, p);
        }
        Transition::None
    }

    /// Everything queued was written. Closes a half-open breaker; restores health.
    pub(crate) fn on_drained(&mut self) -> Transition {
        self.over_since = None;
        match self.state {
            BreakerState::HalfOpen => {
                self.state = BreakerState::Closed;
                self.consecutive = 0;
                self.health = self.health.max(50);
                Transition::Closed
            }
            BreakerState::Closed => {
                self.health = (self.health + 5).min(100);
                Transition::None
            }
            BreakerState::Open { .. } => Transition::None,
        }
    }

    /// Advances to `now`: an open breaker half-opens when its cool-down is over.
    pub(crate) fn poll(&mut self, now: Instant) -> Transition {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Transition::HalfOpened
            }
            _ => Transition::None,
        }
    }

    fn trip(&mut self, cause: Cause, now: Instant, p: &BreakerPolicy) -> Transition {
        self.state = BreakerState::Open {
            until: now + p.cooldown,
        };
        self.over_since = None;
        self.cause = cause;
        self.trips += 1;
        self.consecutive += 1;
        self.health = self.health.saturating_sub(25);
        Transition::Opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const P: BreakerPolicy = BreakerPolicy {
        high_water: 1000,
        trip_after: S,
        cooldown: Duration::from_secs(30),
    };

    #[test]
    fn opens_after_staying_over_the_high_water_mark_for_trip_after() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.on_backlog(5000, false, t0, &P), Transition::None);
        assert_eq!(b.on_backlog(5000, false, t0 + S / 2, &P), Transition::None);
        // Dipping below resets the clock.
        assert_eq!(b.on_backlog(10, false, t0 + S / 2, &P), Transition::None);
        assert_eq!(b.on_backlog(5000, false, t0 + S, &P), Transition::None);
        assert_eq!(
            b.on_backlog(5000, false, t0 + 2 * S, &P),
            Transition::Opened
        );
        assert!(b.is_open());
        assert_eq!(b.health(), 75);
    }

    #[test]
    fn a_backlog_that_cannot_fit_trips_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.on_backlog(10, true, t0, &P), Transition::Opened);
    }

    #[test]
    fn half_opens_after_the_cooldown_and_closes_when_drained() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.on_backlog(0, true, t0, &P);
        assert_eq!(b.poll(t0 + 29 * S), Transition::None);
        assert_eq!(b.on_drained(), Transition::None, "open ignores writes");
        assert_eq!(b.poll(t0 + 30 * S), Transition::HalfOpened);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.on_drained(), Transition::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.health(), 75);
        for _ in 0..10 {
            b.on_drained();
        }
        assert_eq!(b.health(), 100, "health recovers while closed");
    }

    #[test]
    fn a_missed_pong_or_a_write_error_opens_it_with_its_cause() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.fail(Cause::MissedPong, t0, &P), Transition::Opened);
        assert_eq!(b.cause(), Cause::MissedPong);
        assert_eq!(
            b.fail(Cause::WriteError, t0 + S, &P),
            Transition::None,
            "already open"
        );
        assert_eq!(b.poll(t0 + 30 * S), Transition::HalfOpened);
        assert_eq!(
            b.fail(Cause::WriteError, t0 + 31 * S, &P),
            Transition::Opened
        );
        assert_eq!(b.cause(), Cause::WriteError);
        assert_eq!((b.trips(), b.health()), (2, 50));
    }

    #[test]
    fn falling_behind_while_half_open_reopens_with_less_health() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.on_backlog(0, true, t0, &P);
        b.poll(t0 + 30 * S);
        assert_eq!(b.on_backlog(0, true, t0 + 31 * S, &P), Transition::Opened);
        assert_eq!(b.health(), 50);
        assert_eq!(b.state(), BreakerState::Open { until: t0 + 61 * S });
        for k in 0..4 {
            b.poll(t0 + (61 + k * 31) * S);
            b.on_backlog(0, true, t0 + (62 + k * 31) * S, &P);
        }
        assert_eq!(b.health(), 0, "health bottoms out at 0");
    }
}
