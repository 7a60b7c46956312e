//! Ping/pong liveness of one connection, on a caller-supplied clock.

use std::time::{Duration, Instant};

/// What the connection must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Nothing.
    Idle,
    /// Send a ping now.
    SendPing,
    /// The last ping went unanswered for `pong_timeout`: close the connection.
    TimedOut,
}

/// Sends a ping every `interval` and expects any pong within `timeout` of it.
#[derive(Debug, Clone)]
pub(crate) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    /// When the next ping is due (None: pings disabled).
    next_ping: Option<Instant>,
    /// When the unanswered ping was sent.
    awaiting_since: Option<Instant>,
}

impl Keepalive {
    /// Starts the clock at `now`. An `interval` of zero disables pings.
    pub(crate) fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Keepalive {
            interval,
            timeout,
            next_ping: (!interval.is_zero()).then(|| now + interval),
            awaiting_since: None,
        }
    }

    /// Advances to `now`. Returns `SendPing` at most once per interval.
    pub(crate) fn poll(&mut self, now: Instant) -> Liveness {
        if let Some(sent) = self.awaiting_since {
            if now.saturating_duration_since(sent) >= self.timeout {
                return Liveness::TimedOut;
            }
            return Liveness::Idle;
        }
        match self.next_ping {
            Some(due) if now >= due => {
                self.awaiting_since = Some(now);
                self.next_ping = Some(now + self.interval);
                Liveness::SendPing
            }
            _ => Liveness::Idle,
        }
    }

    /// True while a ping is unanswered.
    pub(crate) fn awaiting_pong(&self) -> bool {
        self.awaiting_since.is_some()
    }

    /// Any pong counts as the answer (RFC 6455 allows unsolicited pongs; we do not match data).
    pub(crate) fn on_pong(&mut self, _now: Instant) {
        self.awaiting_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_on_interval_and_times_out_without_pong() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(25 * S, 10 * S, t0);
        assert_eq!(k.poll(t0 + 24 * S), Liveness::Idle);
        assert_eq!(k.poll(t0 + 25 * S), Liveness::SendPing);
        assert_eq!(k.poll(t0 + 26 * S), Liveness::Idle, "one ping per interval");
        assert_eq!(k.poll(t0 + 35 * S), Liveness::TimedOut);
    }

    #[test]
    fn pong_resets_the_wait() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(25 * S, 10 * S, t0);
        assert_eq!(k.poll(t0 + 25 * S), Liveness::SendPing);
        k.on_pong(t0 + 26 * S);
        assert_eq!(k.poll(t0 + 40 * S), Liveness::Idle);
        assert_eq!(k.poll(t0 + 50 * S), Liveness::SendPing);
    }

    #[test]
    fn zero_interval_never_pings() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Duration::ZERO, 10 * S, t0);
        assert_eq!(k.poll(t0 + 1000 * S), Liveness::Idle);
    }
}
