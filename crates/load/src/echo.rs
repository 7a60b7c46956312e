//! `echo`: messages at an open-loop rate, each reply matched to its message by id.
//!
//! Each worker owns a share of the connections and the same share of the rate, on its own
//! schedule. Message `j` of a worker is due at `time_of(j)`; it goes to the worker's connection
//! `j % n` as `{"id":<j>,"t":<intended unix ns>,"pad":".."}`. A server that echoes text
//! messages verbatim and in order per connection (as RFC 6455 echo servers do) sends it back;
//! replies are matched by `id` against the connection's queue of messages in flight.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token};

use super::drive::{self, Run, StopRule};
use super::pointer::Pointer;
use super::report::LoadReport;
use super::schedule::RateProfile;
use super::wsconn::WsConn;
use super::{share_of, Control, ErrKind, LoadOptions, Ticker};
use crate::unix_ns;

/// Messages in flight per connection at most; past it the oldest counts as missing.
const MAX_IN_FLIGHT: usize = 1 << 16;
/// After sending stops, how long replies are waited for.
const DRAIN: Duration = Duration::from_secs(2);
/// The most messages one pass of the loop sends before it flushes, reads replies and looks at
/// the clock and the stop again: a generator far behind its schedule would otherwise stay in
/// its send loop (and grow its buffers) for as long as it is behind.
const PASS_MAX: usize = 1024;

/// A message in flight: its id, when it was due, when it left.
#[derive(Clone, Copy)]
struct InFlight {
    id: u64,
    intended: u64,
    sent: u64,
}

/// Builds the text of message `id`, padded to about `bytes`.
pub(crate) fn message(out: &mut Vec<u8>, id: u64, intended: u64, bytes: usize) {
    out.clear();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b",\"t\":");
    out.extend_from_slice(itoa::Buffer::new().format(intended).as_bytes());
    out.extend_from_slice(b",\"pad\":\"");
    let pad = bytes.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Matches a reply with `id` against the connection's queue: earlier messages still queued
/// never got theirs (missing). Returns the message, or `None` if nothing sent matches.
fn match_reply(queue: &mut VecDeque<InFlight>, id: u64, missing: &mut u64) -> Option<InFlight> {
    if !queue.iter().any(|m| m.id == id) {
        return None;
    }
    while let Some(m) = queue.pop_front() {
        if m.id == id {
            return Some(m);
        }
        *missing += 1;
    }
    None
}

struct Worker {
    conns: Vec<WsConn>,
    queues: Vec<VecDeque<InFlight>>,
    profile: RateProfile,
    /// Messages this worker sends at most.
    limit: u64,
    bytes: usize,
    id_ptr: Pointer,
}

impl Worker {
    fn run(
        mut self,
        mut ticker: Ticker,
        control: Arc<Control>,
        start_ns: u64,
    ) -> std::io::Result<()> {
        let mut poll = Poll::new()?;
        for (i, c) in self.conns.iter_mut().enumerate() {
            c.register(poll.registry(), Token(i))?;
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = Vec::with_capacity(self.bytes + 64);
        let mut j = 0u64;
        let mut sending = true;
        let mut scheduled = 0u64;
        let mut drain_until = u64::MAX;
        let n = self.conns.len();
        loop {
            let now = unix_ns();
            ticker.advance(now);
            if sending && (control.stopped() || j >= self.limit) {
                sending = false;
                scheduled = (self.profile.count_by((now - start_ns) as f64 / 1e9).ceil() as u64)
                    .min(self.limit);
                drain_until = now + DRAIN.as_nanos() as u64;
            }
            if !sending && (now >= drain_until || self.queues.iter().all(VecDeque::is_empty)) {
                break;
            }
            // Send everything due.
            let mut next_due = u64::MAX;
            if sending {
                let mut touched = false;
                let mut this_pass = 0;
                while j < self.limit {
                    let due = start_ns + (self.profile.time_of(j) * 1e9) as u64;
                    if due > now {
                        next_due = due;
                        break;
                    }
                    if this_pass == PASS_MAX {
                        // Behind: come back at once, after flushing and reading.
                        next_due = now;
                        break;
                    }
                    this_pass += 1;
                    let k = (j % n as u64) as usize;
                    if !self.conns[k].closed {
                        message(&mut buf, j, due, self.bytes);
                        self.conns[k].queue_text(&buf);
                        let sent = unix_ns();
                        let tick = &mut ticker.tick;
                        tick.rec.sent(due, sent);
                        tick.sent += 1;
                        let q = &mut self.queues[k];
                        if q.len() == MAX_IN_FLIGHT {
                            q.pop_front();
                            tick.errors.add(ErrKind::Missing, 1);
                        }
                        q.push_back(InFlight {
                            id: j,
                            intended: due,
                            sent,
                        });
                        touched = true;
                    }
                    j += 1;
                    // Relaxed: a progress counter.
                    control.sent.fetch_add(1, Ordering::Relaxed);
                }
                if touched {
                    for c in self.conns.iter_mut().filter(|c| c.pending() > 0) {
                        if c.flush().is_err() {
                            c.closed = true;
                        }
                    }
                }
            }
            let wake = next_due.min(ticker.next_boundary()).min(drain_until);
            super::drive::wait(&mut poll, &mut events, wake, wake == next_due)?;
            for ev in events.iter() {
                let i = ev.token().0;
                let c = &mut self.conns[i];
                if c.closed {
                    continue;
                }
                if ev.is_writable() && c.pending() > 0 && c.flush().is_err() {
                    c.closed = true;
                    ticker.tick.errors.add(ErrKind::Closed, 1);
                    continue;
                }
                let now_ns = unix_ns();
                ticker.advance(now_ns);
                let tick = &mut ticker.tick;
                let q = &mut self.queues[i];
                let ptr = &self.id_ptr;
                let mut missing = 0u64;
                let mut unmatched = 0u64;
                let before = tick.done;
                let r = c.read(|p| {
                    match ptr
                        .u64_in(p)
                        .and_then(|id| match_reply(q, id, &mut missing))
                    {
                        Some(m) => {
                            tick.rec.reply(m.intended, m.sent, now_ns);
                            tick.done += 1;
                            tick.last_done_ns = now_ns;
                        }
                        None => unmatched += 1,
                    }
                });
                tick.errors.add(ErrKind::Missing, missing);
                tick.errors.add(ErrKind::Protocol, unmatched);
                control
                    .done
                    .fetch_add(tick.done - before, Ordering::Relaxed);
                match r {
                    Ok(end) => {
                        tick.bytes += end.bytes;
                        if end.closed {
                            c.closed = true;
                            tick.errors.add(ErrKind::Closed, 1);
                        }
                    }
                    Err(_) => {
                        c.closed = true;
                        tick.errors.add(ErrKind::Protocol, 1);
                    }
                }
            }
            if self.conns.iter().all(|c| c.closed) {
                break;
            }
        }
        if sending {
            scheduled = (self
                .profile
                .count_by((unix_ns() - start_ns) as f64 / 1e9)
                .ceil() as u64)
                .min(self.limit);
        }
        let unanswered: usize = self.queues.iter().map(VecDeque::len).sum();
        ticker.tick.errors.add(ErrKind::Missing, unanswered as u64);
        for c in self.conns.iter_mut() {
            c.close();
        }
        ticker.finish(scheduled);
        Ok(())
    }
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let profile = opts.rate.clone().expect("validated: echo has a rate");
    let (conns, setup_errors) = drive::open_all(opts, &opts.url, 0..opts.connections, "")?;
    let threads = opts.threads.clamp(1, conns.len());
    let run = Run::start(opts, threads, setup_errors)?;
    let conns: Vec<WsConn> = conns.into_iter().map(|(_, c)| c).collect();
    let mut handles = Vec::new();
    for (k, mine) in drive::deal(conns, threads).into_iter().enumerate() {
        let w = Worker {
            queues: mine.iter().map(|_| VecDeque::new()).collect(),
            conns: mine,
            profile: profile.scaled(1.0 / threads as f64),
            limit: share_of(opts.events, threads, k),
            bytes: opts.message_bytes,
            id_ptr: Pointer::parse("/id").expect("valid"),
        };
        let (ticker, control, start_ns) = (run.ticker(k), run.control.clone(), run.start_ns);
        handles.push(drive::spawn(format!("load-echo-{k}"), move || {
            w.run(ticker, control, start_ns)
        })?);
    }
    let rule = StopRule::events_or_duration(opts, "replies");
    Ok(run.finish(
        &rule,
        handles,
        "schedule",
        Some(profile.to_string()),
        |_| {},
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_id_and_intended_time_and_have_the_asked_size() {
        let mut b = Vec::new();
        message(&mut b, 42, 1_700_000_000_000_000_000, 100);
        assert_eq!(b.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["t"], 1_700_000_000_000_000_000u64);
        message(&mut b, 1, 2, 10);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&b).is_ok(),
            "never shorter than valid JSON"
        );
    }

    #[test]
    fn replies_match_by_id_and_skipped_ones_are_missing() {
        let mut q: VecDeque<InFlight> = (0..5)
            .map(|id| InFlight {
                id,
                intended: id,
                sent: id,
            })
            .collect();
        let mut missing = 0;
        assert_eq!(match_reply(&mut q, 0, &mut missing).map(|m| m.id), Some(0));
        assert_eq!(match_reply(&mut q, 3, &mut missing).map(|m| m.id), Some(3));
        assert_eq!(missing, 2, "1 and 2 never came back");
        assert!(match_reply(&mut q, 99, &mut missing).is_none());
        assert_eq!(q.len(), 1);
    }
}
