//! `publish`: publishers drive a floodgate gateway's ingest socket (`/api/ingest`) at an
//! open-loop rate while subscribed connections (one user each, on `/ws`) measure end-to-end
//! latency: from each event's intended publish time to its arrival, and from its actual send.
//!
//! Event `k` goes to user `k % connections`. Its data carries `t` (intended unix ns) and `s`
//! (actual send), which subscribers read back; the gateway's per-user `seq` must be gapless.
//! When publishing ends, subscribers keep reading until every event the gateway accepted has
//! arrived (or nothing arrives for `--idle-timeout`; the rest count as missing).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token};

use super::drive::{self, Run, StopRule};
use super::net::open;
use super::pointer::{Fields, Pointer};
use super::report::LoadReport;
use super::schedule::RateProfile;
use super::subscribe::{spawn_receivers, RecvCfg};
use super::wsconn::WsConn;
use super::{share_of, Control, ErrKind, LoadOptions, Ticker, TsUnit};
use crate::unix_ns;

/// After publishing stops, how long a publisher waits for its last answers.
const DRAIN: Duration = Duration::from_secs(5);
/// The most batches one pass of the loop sends before it reads answers and looks at the clock
/// and the stop again (a generator far behind would otherwise stay in its send loop).
const PASS_MAX_BATCHES: usize = 64;

/// What publishers report back when they finish.
struct Totals {
    accepted: AtomicU64,
    running: AtomicUsize,
    /// Set to the accepted total once every publisher finished (`u64::MAX` until then).
    target: Arc<AtomicU64>,
}

struct Publisher {
    conn: WsConn,
    /// This publisher's index and the number of publishers: it publishes events
    /// `k = index, index + count, ...`.
    index: u64,
    count: u64,
    users: u64,
    /// `{"user":"<prefix>`: each event's opening, up to its user's number (the subscribers'
    /// users are `--user-prefix` followed by their index).
    opening: Vec<u8>,
    profile: RateProfile,
    limit: u64,
    batch: usize,
    bytes: usize,
    deadline_ns: u64,
}

/// `{"user":"<prefix>` with `prefix` escaped as JSON.
fn opening(prefix: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(prefix).expect("a string serializes");
    let mut out = b"{\"user\":".to_vec();
    out.extend_from_slice(&quoted.as_bytes()[..quoted.len() - 1]);
    out
}

/// Appends event `k`'s JSON to a batch: for user `user` (after `opening`, see [`opening`]).
fn event(out: &mut Vec<u8>, opening: &[u8], user: u64, intended: u64, pad: usize) {
    out.extend_from_slice(opening);
    out.extend_from_slice(itoa::Buffer::new().format(user).as_bytes());
    out.extend_from_slice(b"\",\"type\":\"agent_thinking\",\"data\":{\"t\":");
    out.extend_from_slice(itoa::Buffer::new().format(intended).as_bytes());
    // The actual send time is written over these 19 zeros just before the batch leaves.
    out.extend_from_slice(b",\"s\":0000000000000000000,\"pad\":\"");
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}}");
}

/// Writes `sent` over every `"s":` placeholder of a batch (19 digits, zero-padded).
fn stamp(batch: &mut [u8], sent: u64) {
    let digits = format!("{sent:019}");
    let mut at = 0;
    while let Some(i) = memchr::memmem::find(&batch[at..], b"\"s\":") {
        let start = at + i + 4;
        batch[start..start + 19].copy_from_slice(digits.as_bytes());
        at = start + 19;
    }
}

impl Publisher {
    fn run(
        mut self,
        mut ticker: Ticker,
        control: Arc<Control>,
        totals: Arc<Totals>,
        start_ns: u64,
    ) -> std::io::Result<()> {
        let mut poll = Poll::new()?;
        self.conn.register(poll.registry(), Token(0))?;
        let mut events = Events::with_capacity(64);
        let mut buf = Vec::with_capacity(self.batch * (self.bytes + 96) + 64);
        // When each event of the batch being built was due.
        let mut dues: Vec<u64> = Vec::with_capacity(self.batch);
        let (mut j, mut batch_id, mut answered) = (0u64, 0u64, 0u64);
        let mut accepted = 0u64;
        let mut scheduled = 0u64;
        let mut sending = true;
        let mut drain_until = u64::MAX;
        let pad = self.bytes.saturating_sub(120);
        let answer_ptrs = (
            Pointer::parse("/accepted").expect("valid"),
            Pointer::parse("/rejected").expect("valid"),
            Pointer::parse("/error").expect("valid"),
        );
        // How many events each batch in flight holds, to count a refused one.
        let mut in_flight: std::collections::VecDeque<u64> = Default::default();
        loop {
            let now = unix_ns();
            ticker.advance(now);
            if sending && (j >= self.limit || now >= self.deadline_ns || control.stopped()) {
                sending = false;
                scheduled = (self.profile.count_by((now - start_ns) as f64 / 1e9).ceil() as u64)
                    .min(self.limit);
                drain_until = now + DRAIN.as_nanos() as u64;
            }
            if !sending && (answered == batch_id || now >= drain_until || self.conn.closed) {
                break;
            }
            let mut next_due = u64::MAX;
            if sending {
                // Everything due now, in batches of at most `batch`.
                for pass in 0.. {
                    if pass == PASS_MAX_BATCHES {
                        next_due = now;
                        break;
                    }
                    buf.clear();
                    buf.extend_from_slice(b"{\"id\":");
                    buf.extend_from_slice(itoa::Buffer::new().format(batch_id).as_bytes());
                    buf.extend_from_slice(b",\"events\":[");
                    let mut n = 0u64;
                    dues.clear();
                    while j < self.limit && (n as usize) < self.batch {
                        let due = start_ns + (self.profile.time_of(j) * 1e9) as u64;
                        if due > now {
                            next_due = due;
                            break;
                        }
                        if n > 0 {
                            buf.push(b',');
                        }
                        let k = j * self.count + self.index;
                        event(&mut buf, &self.opening, k % self.users, due, pad);
                        dues.push(due);
                        n += 1;
                        j += 1;
                    }
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(b"]}");
                    let sent = unix_ns();
                    stamp(&mut buf, sent);
                    self.conn.queue_text(&buf);
                    for &due in &dues {
                        ticker.tick.rec.sent(due, sent);
                    }
                    ticker.tick.sent += n;
                    control.sent.fetch_add(n, Ordering::Relaxed);
                    in_flight.push_back(n);
                    batch_id += 1;
                    if self.conn.flush().is_err() {
                        self.conn.closed = true;
                        break;
                    }
                    if next_due != u64::MAX {
                        break;
                    }
                }
            }
            let wake = next_due.min(ticker.next_boundary()).min(drain_until);
            super::drive::wait(&mut poll, &mut events, wake, wake == next_due)?;
            if events.is_empty() {
                continue;
            }
            if self.conn.pending() > 0 && self.conn.flush().is_err() {
                self.conn.closed = true;
            }
            let tick = &mut ticker.tick;
            let r = self.conn.read(|answer| {
                answered += 1;
                let n = in_flight.pop_front().unwrap_or(0);
                match answer_ptrs.0.u64_in(answer) {
                    Some(a) => {
                        accepted += a;
                        tick.errors
                            .add(ErrKind::Rejected, answer_ptrs.1.u64_in(answer).unwrap_or(0));
                    }
                    None => {
                        let code = answer_ptrs.2.find(answer).unwrap_or_default();
                        let kind = if code == b"\"rate_limited\"" {
                            ErrKind::RateLimited
                        } else {
                            ErrKind::Rejected
                        };
                        tick.errors.add(kind, n);
                    }
                }
            });
            match r {
                Ok(end) if end.closed => {
                    tick.errors.add(ErrKind::Closed, 1);
                }
                Ok(_) => {}
                Err(_) => {
                    self.conn.closed = true;
                    tick.errors.add(ErrKind::Protocol, 1);
                }
            }
        }
        if sending {
            scheduled = (self
                .profile
                .count_by((unix_ns() - start_ns) as f64 / 1e9)
                .ceil() as u64)
                .min(self.limit);
        }
        // Batches never answered: their events may or may not have been accepted; they are not
        // expected by the subscribers, and count as missing answers.
        let unanswered: u64 = in_flight.iter().sum();
        ticker.tick.errors.add(ErrKind::Missing, unanswered);
        self.conn.close();
        ticker.finish(scheduled);
        totals.accepted.fetch_add(accepted, Ordering::AcqRel);
        // AcqRel: the last publisher to finish reads every other's accepted count.
        if totals.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            totals
                .target
                .store(totals.accepted.load(Ordering::Acquire), Ordering::Release);
        }
        Ok(())
    }
}

/// Opens an ingest socket with the API key.
fn open_ingest(opts: &LoadOptions, index: usize) -> Result<WsConn, String> {
    let url = opts.ingest_url.as_ref().expect("set by the command line");
    let key = opts.api_key.as_deref().expect("validated");
    let headers = format!("Authorization: Bearer {key}\r\n");
    let (c, early) = open(
        url,
        &opts.sources,
        index,
        &url.target,
        &headers,
        opts.tls.as_ref(),
        opts.handshake_timeout,
    )
    .map_err(|e| format!("ingest {}{}: {e}", url.host, url.target))?;
    WsConn::new(c, early, 64 << 10).map_err(|e| e.to_string())
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let profile = opts.rate.clone().expect("validated: publish has a rate");
    let (subs, setup_errors) = drive::open_all(opts, &opts.url, 0..opts.connections, "")?;
    let publishers: Vec<WsConn> = (0..opts.publishers)
        .map(|i| open_ingest(opts, i))
        .collect::<Result<_, _>>()?;
    let receivers = opts.threads.clamp(1, subs.len());
    let run = Run::start(opts, receivers + publishers.len(), setup_errors)?;
    let cfg = RecvCfg {
        fields: Fields::new([
            Some(Pointer::parse("/seq").expect("valid")),
            Some(Pointer::parse("/data/t").expect("valid")),
            Some(Pointer::parse("/data/s").expect("valid")),
        ]),
        gapless: true,
        unit: TsUnit::Ns,
        target: None,
        every: None,
    };
    let mut handles = spawn_receivers(subs, receivers, &cfg, 0, &run)?;
    let totals = Arc::new(Totals {
        accepted: AtomicU64::new(0),
        running: AtomicUsize::new(publishers.len()),
        target: Arc::new(AtomicU64::new(u64::MAX)),
    });
    let count = publishers.len();
    let start_ns = run.start_ns;
    let deadline_ns = opts
        .duration
        .map_or(u64::MAX, |d| start_ns + d.as_nanos() as u64);
    for (i, conn) in publishers.into_iter().enumerate() {
        let p = Publisher {
            conn,
            index: i as u64,
            count: count as u64,
            users: opts.connections as u64,
            opening: opening(&opts.user_prefix),
            profile: profile.scaled(1.0 / count as f64),
            limit: share_of(opts.events, count, i),
            batch: opts.batch,
            bytes: opts.message_bytes,
            deadline_ns,
        };
        let (ticker, control, totals) = (
            run.ticker(receivers + i),
            run.control.clone(),
            totals.clone(),
        );
        handles.push(drive::spawn(format!("load-publish-{i}"), move || {
            p.run(ticker, control, totals, start_ns)
        })?);
    }
    // Stops when the subscribers have every accepted event (the target is known once the
    // publishers finish), or when nothing arrives for the idle timeout.
    let rule = StopRule {
        target: None,
        dynamic_target: Some(totals.target.clone()),
        duration: None,
        idle: opts.idle_timeout,
        unit: "events",
    };
    let report = run.finish(
        &rule,
        handles,
        "schedule",
        Some(profile.to_string()),
        |agg| {
            // Events the gateway accepted that never arrived.
            let accepted = totals.accepted.load(Ordering::Acquire);
            if agg.done < accepted {
                agg.errors.add(ErrKind::Missing, accepted - agg.done);
            }
        },
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_json_with_both_times_stamped() {
        let mut b = b"{\"id\":0,\"events\":[".to_vec();
        event(&mut b, &opening("u"), 3, 1_700_000_000_000_000_001, 10);
        b.push(b',');
        event(&mut b, &opening("n\"2-"), 4, 1_700_000_000_000_000_002, 10);
        b.extend_from_slice(b"]}");
        stamp(&mut b, 1_700_000_000_000_000_099);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["events"][0]["user"], "u3");
        assert_eq!(
            v["events"][1]["user"], "n\"2-4",
            "the subscribers' prefix, escaped"
        );
        assert_eq!(v["events"][1]["data"]["t"], 1_700_000_000_000_000_002u64);
        assert_eq!(v["events"][1]["data"]["s"], 1_700_000_000_000_000_099u64);
        assert_eq!(v["events"][0]["data"]["s"], 1_700_000_000_000_000_099u64);
    }
}
