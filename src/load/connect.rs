//! `connect`: connections opened at an open-loop rate (or back to back), each handshake
//! measured from its intended start (corrected) and its actual start; each connection is then
//! held idle (answering pings) for `--hold`, or to the end of the run, and closed.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token};

use super::drive::{self, open_one, read_chunk, StopRule};
use super::report::{Aggregate, LoadReport, Outcome};
use super::schedule::RateProfile;
use super::wsconn::WsConn;
use super::{Control, LoadOptions, Ticker};
use crate::emitter::unix_ns;

struct Worker {
    /// Connection indices this worker opens.
    indices: Vec<usize>,
    /// `None`: back to back (closed loop).
    profile: Option<RateProfile>,
    hold: Option<Duration>,
    deadline_ns: u64,
}

impl Worker {
    fn run(
        self,
        opts: LoadOptions,
        mut ticker: Ticker,
        control: Arc<Control>,
        start_ns: u64,
    ) -> std::io::Result<()> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(256);
        // Held connections by token, and when each is closed (`u64::MAX`: at the end).
        let mut held: Vec<Option<(WsConn, u64)>> = Vec::new();
        let mut expiry: VecDeque<(u64, usize)> = VecDeque::new();
        let chunk = read_chunk(opts.connections).min(4096);
        let mut j = 0usize;
        let mut scheduled = 0u64;
        let mut opening = true;
        loop {
            let now = unix_ns();
            ticker.advance(now);
            if opening && (j >= self.indices.len() || now >= self.deadline_ns || control.stopped())
            {
                opening = false;
                scheduled = match &self.profile {
                    Some(p) => (p.count_by((now - start_ns) as f64 / 1e9).ceil() as u64)
                        .min(self.indices.len() as u64),
                    None => j as u64,
                };
            }
            // Close connections whose hold is over.
            while expiry.front().is_some_and(|(at, _)| *at <= now) {
                let (_, tok) = expiry.pop_front().expect("checked");
                if let Some((mut c, _)) = held[tok].take() {
                    c.deregister(poll.registry());
                    c.close();
                }
            }
            let live = held.iter().filter(|h| h.is_some()).count();
            if !opening && (live == 0 || control.stopped() || now >= self.deadline_ns) {
                break;
            }
            let mut next_due = u64::MAX;
            if opening {
                let due = match &self.profile {
                    Some(p) => start_ns + (p.time_of(j as u64) * 1e9) as u64,
                    None => now,
                };
                if due <= now {
                    let conn = self.indices[j];
                    j += 1;
                    let began = unix_ns();
                    ticker.tick.rec.sent(due, began);
                    ticker.tick.sent += 1;
                    control.sent.fetch_add(1, Ordering::Relaxed);
                    match open_one(&opts, &opts.url, conn, "") {
                        Ok((stream, early)) => {
                            let done = unix_ns();
                            ticker.advance(done);
                            let tick = &mut ticker.tick;
                            tick.rec.reply(due, began, done);
                            tick.done += 1;
                            tick.last_done_ns = done;
                            control.done.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut c) = WsConn::new(stream, early, chunk) {
                                let tok = held.len();
                                c.register(poll.registry(), Token(tok))?;
                                let close_at =
                                    self.hold.map_or(u64::MAX, |h| done + h.as_nanos() as u64);
                                held.push(Some((c, close_at)));
                                if close_at != u64::MAX {
                                    expiry.push_back((close_at, tok));
                                }
                            }
                        }
                        Err((kind, _why)) => ticker.tick.errors.add(kind, 1),
                    }
                    continue;
                }
                next_due = due;
            }
            let wake = next_due
                .min(ticker.next_boundary())
                .min(expiry.front().map_or(u64::MAX, |e| e.0))
                .min(self.deadline_ns);
            let wait = wake.saturating_sub(unix_ns()).min(50_000_000);
            poll.poll(&mut events, Some(Duration::from_nanos(wait)))?;
            for ev in events.iter() {
                let tok = ev.token().0;
                let Some((c, _)) = held[tok].as_mut() else {
                    continue;
                };
                let r = c.read(|_| {});
                let closed = match r {
                    Ok(end) => {
                        ticker.tick.bytes += end.bytes;
                        end.closed
                    }
                    Err(_) => true,
                };
                if closed {
                    if !control.stopped() {
                        ticker.tick.errors.add(super::ErrKind::Closed, 1);
                    }
                    if let Some((mut c, _)) = held[tok].take() {
                        c.deregister(poll.registry());
                    }
                }
            }
        }
        for (c, _) in held.iter_mut().flatten() {
            c.close();
        }
        ticker.finish(scheduled);
        Ok(())
    }
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let control = Control::new();
    let threads = opts.threads.clamp(1, opts.connections);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut agg = Aggregate::new(threads, opts.interval, opts.hdr_log.as_deref(), opts)?;
    let start_ns = unix_ns();
    let deadline_ns = opts
        .duration
        .map_or(u64::MAX, |d| start_ns + d.as_nanos() as u64);
    let mut handles = Vec::new();
    for k in 0..threads {
        let w = Worker {
            indices: super::share(opts.connections, threads, k).collect(),
            profile: opts.rate.as_ref().map(|r| r.scaled(1.0 / threads as f64)),
            hold: opts.hold,
            deadline_ns,
        };
        let ticker = Ticker::new(k, start_ns, opts.interval, tx.clone());
        let (control, o) = (control.clone(), opts.clone());
        handles.push(drive::spawn(format!("load-connect-{k}"), move || {
            w.run(o, ticker, control, start_ns)
        })?);
    }
    drop(tx);
    // The workers end by themselves: when every connection was opened and its hold is over,
    // or at --duration.
    let rule = StopRule {
        target: None,
        dynamic_target: None,
        duration: opts.duration,
        idle: opts
            .idle_timeout
            .max(opts.hold.unwrap_or_default() + Duration::from_secs(1)),
        unit: "connections",
    };
    let (end_ns, incomplete) =
        drive::run_to_end(rx, &control, &mut agg, &rule, opts.progress, handles);
    Ok(LoadReport::build(Outcome {
        opts,
        agg: &agg,
        start_ns,
        end_ns,
        latency_from: "schedule",
        rate_text: Some(
            opts.rate
                .as_ref()
                .map_or("back to back (closed loop)".into(), |r| r.to_string()),
        ),
        incomplete,
    }))
}
