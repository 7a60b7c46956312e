//! `connect`: connections opened at an open-loop rate (or back to back), each handshake
//! measured from its intended start (corrected) and its actual start; each connection is then
//! held idle (answering pings) for `--hold`, or to the end of the run, and closed.
//!
//! A worker keeps the schedule and holds the connections; the handshakes themselves (TCP,
//! TLS, the upgrade: blocking steps) run on a pool of [`OPENERS`] opener threads per worker, so
//! one slow handshake delays no other attempt. An attempt that waits for a free opener starts
//! late, and that lateness is the generator lag it reports.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token, Waker};

use super::drive::{self, open_one, read_chunk, Run, StopRule};
use super::net::Connected;
use super::report::LoadReport;
use super::schedule::RateProfile;
use super::wsconn::WsConn;
use super::{Control, ErrKind, LoadOptions, Ticker};
use crate::unix_ns;

/// Handshakes in flight at once per worker.
pub(crate) const OPENERS: usize = 16;
/// The token of the worker's waker (openers wake it with a result).
const WAKER: Token = Token(usize::MAX);

/// An attempt to open connection `conn`, due at `due` (unix ns).
struct Job {
    conn: usize,
    due: u64,
}

/// What an opener did with a job.
struct Done {
    due: u64,
    began: u64,
    finished: u64,
    result: Result<(Connected, Vec<u8>), ErrKind>,
}

/// An opener thread: takes jobs until the channel closes.
fn opener(opts: Arc<LoadOptions>, jobs: Receiver<Job>, done: Sender<Done>, waker: Arc<Waker>) {
    while let Ok(job) = jobs.recv() {
        let began = unix_ns();
        let result = open_one(&opts, &opts.url, job.conn, "").map_err(|(kind, _)| kind);
        let d = Done {
            due: job.due,
            began,
            finished: unix_ns(),
            result,
        };
        if done.send(d).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}

struct Worker {
    /// Connection indices this worker opens.
    indices: Vec<usize>,
    /// `None`: back to back (closed loop: the next attempt when an opener is free).
    profile: Option<RateProfile>,
    hold: Option<Duration>,
    deadline_ns: u64,
}

impl Worker {
    fn run(
        self,
        opts: Arc<LoadOptions>,
        mut ticker: Ticker,
        control: Arc<Control>,
        start_ns: u64,
    ) -> std::io::Result<()> {
        let mut poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let openers: Vec<_> = (0..OPENERS.min(self.indices.len()))
            .map(|i| {
                let (o, j, d, w) = (opts.clone(), job_rx.clone(), done_tx.clone(), waker.clone());
                std::thread::Builder::new()
                    .name(format!("load-open-{i}"))
                    .spawn(move || opener(o, j, d, w))
            })
            .collect::<Result<_, _>>()?;
        drop(done_tx);
        let mut events = Events::with_capacity(256);
        // Held connections by token, and when each is closed (`u64::MAX`: at the end).
        let mut held: Vec<Option<WsConn>> = Vec::new();
        let mut expiry: VecDeque<(u64, usize)> = VecDeque::new();
        let chunk = read_chunk(opts.connections).min(4096);
        let (mut dispatched, mut finished) = (0usize, 0usize);
        let mut scheduled = 0u64;
        let mut opening = true;
        loop {
            let now = unix_ns();
            ticker.advance(now);
            if opening
                && (dispatched >= self.indices.len()
                    || now >= self.deadline_ns
                    || control.stopped())
            {
                opening = false;
                scheduled = match &self.profile {
                    Some(p) => (p.count_by((now - start_ns) as f64 / 1e9).ceil() as u64)
                        .min(self.indices.len() as u64),
                    None => dispatched as u64,
                };
                // Stopped early (the deadline, or the run stops): attempts not yet started are
                // dropped, and count as behind schedule.
                if dispatched < self.indices.len() {
                    while job_rx.try_recv().is_ok() {
                        dispatched -= 1;
                    }
                }
            }
            // Hand every attempt now due to the openers.
            let mut next_due = u64::MAX;
            while opening && dispatched < self.indices.len() {
                let due = match &self.profile {
                    Some(p) => start_ns + (p.time_of(dispatched as u64) * 1e9) as u64,
                    // Back to back: keep every opener busy, no more.
                    None if dispatched - finished < OPENERS => now,
                    None => break,
                };
                if due > now {
                    next_due = due;
                    break;
                }
                let _ = job_tx.send(Job {
                    conn: self.indices[dispatched],
                    due,
                });
                dispatched += 1;
            }
            // Results of finished handshakes.
            while let Ok(d) = done_rx.try_recv() {
                finished += 1;
                ticker.advance(d.finished);
                let tick = &mut ticker.tick;
                tick.rec.sent(d.due, d.began);
                tick.sent += 1;
                control.sent.fetch_add(1, Ordering::Relaxed);
                match d.result {
                    Ok((stream, early)) => {
                        tick.rec.reply(d.due, d.began, d.finished);
                        tick.done += 1;
                        tick.last_done_ns = tick.last_done_ns.max(d.finished);
                        control.done.fetch_add(1, Ordering::Relaxed);
                        let mut c = WsConn::new(stream, early, chunk)?;
                        let tok = held.len();
                        c.register(poll.registry(), Token(tok))?;
                        held.push(Some(c));
                        if let Some(h) = self.hold {
                            expiry.push_back((d.finished + h.as_nanos() as u64, tok));
                        }
                    }
                    Err(kind) => tick.errors.add(kind, 1),
                }
            }
            // Close connections whose hold is over.
            let now = unix_ns();
            while expiry.front().is_some_and(|(at, _)| *at <= now) {
                let (_, tok) = expiry.pop_front().expect("checked");
                if let Some(mut c) = held[tok].take() {
                    c.deregister(poll.registry());
                    c.close();
                }
            }
            let in_flight = dispatched > finished;
            let live = held.iter().any(Option::is_some);
            if !opening && !in_flight && (!live || control.stopped() || now >= self.deadline_ns) {
                break;
            }
            let wake = next_due
                .min(ticker.next_boundary())
                .min(expiry.front().map_or(u64::MAX, |e| e.0))
                .min(self.deadline_ns);
            drive::wait(&mut poll, &mut events, wake, wake == next_due)?;
            for ev in events.iter() {
                let tok = ev.token();
                if tok == WAKER {
                    continue;
                }
                let Some(c) = held[tok.0].as_mut() else {
                    continue;
                };
                let closed = match c.read(|_| {}) {
                    Ok(end) => {
                        ticker.tick.bytes += end.bytes;
                        end.closed
                    }
                    Err(_) => true,
                };
                if closed {
                    if !control.stopped() {
                        ticker.tick.errors.add(ErrKind::Closed, 1);
                    }
                    if let Some(mut c) = held[tok.0].take() {
                        c.deregister(poll.registry());
                    }
                }
            }
        }
        drop(job_tx);
        for o in openers {
            let _ = o.join();
        }
        for c in held.iter_mut().flatten() {
            c.close();
        }
        ticker.finish(scheduled);
        Ok(())
    }
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let threads = opts.threads.clamp(1, opts.connections);
    let run = Run::start(opts, threads, Default::default())?;
    let start_ns = run.start_ns;
    let deadline_ns = opts
        .duration
        .map_or(u64::MAX, |d| start_ns + d.as_nanos() as u64);
    let shared = Arc::new(opts.clone());
    let mut handles = Vec::new();
    for k in 0..threads {
        let w = Worker {
            indices: super::share(opts.connections, threads, k).collect(),
            profile: opts.rate.as_ref().map(|r| r.scaled(1.0 / threads as f64)),
            hold: opts.hold,
            deadline_ns,
        };
        let (ticker, control, o) = (run.ticker(k), run.control.clone(), shared.clone());
        handles.push(drive::spawn(format!("load-connect-{k}"), move || {
            w.run(o, ticker, control, start_ns)
        })?);
    }
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
    let rate = opts
        .rate
        .as_ref()
        .map_or("back to back (closed loop)".into(), |r| r.to_string());
    Ok(run.finish(&rule, handles, "schedule", Some(rate), |_| {}))
}
