//! `subscribe`: hold connections and measure what they receive. Also the receiving half of
//! `publish`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token};

use super::drive::{self, Run, StopRule};
use super::pointer::{u64_of, Fields};
use super::report::LoadReport;
use super::wsconn::WsConn;
use super::{Control, ErrKind, LoadOptions, Tick, Ticker, TsUnit};
use crate::unix_ns;

/// How received frames are read.
#[derive(Clone)]
pub(crate) struct RecvCfg {
    /// The sequence number, the intended send time (or the server's timestamp) and the
    /// actual send time (when frames carry it: publish), read in one pass.
    pub fields: Fields<3>,
    pub gapless: bool,
    pub unit: TsUnit,
    /// Events expected in all: a connection the server closes after that is no error.
    pub target: Option<u64>,
    /// `--send-every`: the period and the message (a template).
    pub every: Option<(Duration, String)>,
}

/// One connection's periodic message (`--send-every`): its template's values and when it is
/// next due.
pub(crate) struct Periodic {
    conn: usize,
    user: String,
    token: Option<String>,
    seq: u64,
    next_ns: u64,
}

/// Per-connection sequence state.
struct SeqState {
    last: Option<u64>,
}

/// Checks one frame's sequence number against the connection's last; returns whether the
/// frame counts as an event (not a duplicate or out of order).
fn check_seq(state: &mut SeqState, seq: u64, gapless: bool, tick: &mut Tick) -> bool {
    let ok = match state.last {
        None => true,
        Some(last) if seq == last => {
            tick.errors.add(ErrKind::Duplicate, 1);
            false
        }
        Some(last) if seq < last => {
            tick.errors.add(ErrKind::OutOfOrder, 1);
            false
        }
        Some(last) => {
            if gapless && seq > last + 1 {
                tick.errors.add(ErrKind::Lost, seq - last - 1);
            }
            true
        }
    };
    if ok {
        state.last = Some(seq);
    }
    ok
}

/// Handles one data frame received at `now_ns`.
fn on_frame(cfg: &RecvCfg, state: &mut SeqState, p: &[u8], now_ns: u64, tick: &mut Tick) {
    let [seq, intended, sent] = cfg.fields.raw(p);
    if cfg.fields.has(0) {
        match seq.and_then(u64_of) {
            Some(seq) => {
                if !check_seq(state, seq, cfg.gapless, tick) {
                    return;
                }
            }
            None => {
                tick.other_frames += 1;
                return;
            }
        }
    }
    tick.done += 1;
    tick.last_done_ns = now_ns;
    if let Some(intended) = intended.and_then(|raw| cfg.unit.raw_ns(raw)) {
        match sent.and_then(|raw| cfg.unit.raw_ns(raw)) {
            Some(sent) => tick.rec.reply(intended, sent, now_ns),
            None => tick.rec.latency(now_ns.saturating_sub(intended)),
        }
    }
}

/// A worker: receives on its connections until stopped or every connection closed, and sends
/// each its `--send-every` message when due (`periodic`, one per connection, or empty).
pub(crate) fn receive_loop(
    mut conns: Vec<WsConn>,
    cfg: RecvCfg,
    mut ticker: Ticker,
    control: Arc<Control>,
    mut periodic: Vec<Periodic>,
) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        c.register(poll.registry(), Token(i))?;
    }
    let mut states: Vec<SeqState> = conns.iter().map(|_| SeqState { last: None }).collect();
    let mut events = Events::with_capacity(1024);
    let n = conns.len();
    let mut open = n;
    // Reads connection `i` (all it has), counting what it got; true if it just closed.
    let mut serve = |conns: &mut [WsConn], i: usize, ticker: &mut Ticker| -> bool {
        let c = &mut conns[i];
        if c.closed {
            return false;
        }
        let now_ns = unix_ns();
        ticker.advance(now_ns);
        let tick = &mut ticker.tick;
        let before = tick.done;
        let state = &mut states[i];
        let result = c.read(|p| on_frame(&cfg, state, p, now_ns, tick));
        let _ = c.flush();
        // Relaxed: a progress counter.
        control
            .done
            .fetch_add(tick.done - before, Ordering::Relaxed);
        match result {
            Ok(end) => {
                tick.bytes += end.bytes;
                if end.closed {
                    // Relaxed: progress counter; a close racing the last events of other
                    // connections may be counted, which errs on the side of reporting.
                    let all_in = cfg
                        .target
                        .is_some_and(|t| control.done.load(Ordering::Relaxed) >= t);
                    if !control.stopped() && !all_in {
                        tick.errors.add(ErrKind::Closed, 1);
                    }
                }
                end.closed
            }
            Err(_) => {
                c.closed = true;
                tick.errors.add(ErrKind::Protocol, 1);
                true
            }
        }
    };
    // Frames that arrived before the worker started are read at once (edge-triggered: no
    // event would announce them).
    for i in 0..n {
        open -= usize::from(serve(&mut conns, i, &mut ticker));
    }
    while open > 0 && !control.stopped() {
        let now = unix_ns();
        ticker.advance(now);
        let mut next_send = u64::MAX;
        if let Some((every, template)) = &cfg.every {
            for (c, p) in conns.iter_mut().zip(periodic.iter_mut()) {
                if c.closed {
                    continue;
                }
                if p.next_ns <= now {
                    p.seq += 1;
                    let vars = crate::session::Vars {
                        conn: p.conn,
                        user: &p.user,
                        token: p.token.as_deref(),
                    };
                    c.queue_text(crate::session::fill(template, &vars, p.seq).as_bytes());
                    if c.flush().is_err() {
                        c.closed = true;
                    }
                    ticker.tick.sent += 1;
                    // Relaxed: a progress counter.
                    control.sent.fetch_add(1, Ordering::Relaxed);
                    // Due again one period after it was due, not after it was sent: a late
                    // pass does not drift the schedule.
                    p.next_ns =
                        p.next_ns.max(now - every.as_nanos() as u64) + every.as_nanos() as u64;
                }
                next_send = next_send.min(p.next_ns);
            }
        }
        let wait = ticker
            .next_boundary()
            .min(next_send)
            .saturating_sub(now)
            .min(50_000_000);
        poll.poll(&mut events, Some(Duration::from_nanos(wait)))?;
        for ev in events.iter() {
            open -= usize::from(serve(&mut conns, ev.token().0, &mut ticker));
        }
    }
    for c in conns.iter_mut() {
        c.close();
    }
    ticker.finish(0);
    Ok(())
}

/// Starts receiving workers for `conns` (dealt out to `threads`), numbered from
/// `first_worker` on `run`'s clock.
pub(crate) fn spawn_receivers(
    conns: Vec<(usize, WsConn)>,
    threads: usize,
    cfg: &RecvCfg,
    first_worker: usize,
    run: &Run<'_>,
) -> Result<Vec<drive::Worker>, String> {
    let parts = threads.clamp(1, conns.len().max(1));
    let n = conns.len().max(1) as u64;
    drive::deal(conns, parts)
        .into_iter()
        .enumerate()
        .map(|(k, share)| {
            // Each connection's first periodic send, spread over one period.
            let periodic: Vec<Periodic> = match &cfg.every {
                None => Vec::new(),
                Some((every, _)) => share
                    .iter()
                    .map(|(i, _)| {
                        let user = run.opts.user(*i);
                        Ok(Periodic {
                            conn: *i,
                            token: run.opts.tokens.for_conn(*i, &user)?,
                            user,
                            seq: 0,
                            next_ns: run.start_ns + every.as_nanos() as u64 * *i as u64 / n,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            };
            let conns: Vec<WsConn> = share.into_iter().map(|(_, c)| c).collect();
            let ticker = run.ticker(first_worker + k);
            let (cfg, control) = (cfg.clone(), run.control.clone());
            drive::spawn(format!("load-recv-{k}"), move || {
                receive_loop(conns, cfg, ticker, control, periodic)
            })
        })
        .collect()
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let (conns, setup_errors) = drive::open_all(opts, &opts.url, 0..opts.connections, "")?;
    let workers = opts.threads.clamp(1, conns.len());
    let run = Run::start(opts, workers, setup_errors)?;
    let cfg = RecvCfg {
        fields: Fields::new([opts.seq.clone(), opts.latency_field.clone(), None]),
        gapless: opts.gapless,
        unit: opts.ts_unit,
        target: opts.events,
        every: opts.session.every.clone(),
    };
    let handles = spawn_receivers(conns, workers, &cfg, 0, &run)?;
    let rule = StopRule::events_or_duration(opts, "events");
    let from = if opts.latency_field.is_some() {
        "frame_timestamp"
    } else {
        "none"
    };
    Ok(run.finish(&rule, handles, from, None, |_| {}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointer::Pointer;

    #[test]
    fn sequence_checks_count_loss_duplicates_and_reordering() {
        let mut t = Tick::new(0, 0);
        let mut s = SeqState { last: None };
        let seqs = [5u64, 6, 6, 9, 8, 10];
        let counted: Vec<bool> = seqs
            .iter()
            .map(|&q| check_seq(&mut s, q, true, &mut t))
            .collect();
        assert_eq!(counted, [true, true, false, true, false, true]);
        assert_eq!(t.errors.get(ErrKind::Duplicate), 1);
        assert_eq!(t.errors.get(ErrKind::Lost), 2, "7 and 8 were skipped");
        assert_eq!(t.errors.get(ErrKind::OutOfOrder), 1);
        let mut t = Tick::new(0, 0);
        let mut s = SeqState { last: None };
        for q in [1u64, 3, 10] {
            assert!(check_seq(&mut s, q, false, &mut t));
        }
        assert_eq!(
            t.errors.total(),
            0,
            "without --gapless, increasing is enough"
        );
    }

    #[test]
    fn frames_without_the_sequence_field_are_not_events() {
        let cfg = RecvCfg {
            fields: Fields::new([
                Some(Pointer::parse("/seq").unwrap()),
                Some(Pointer::parse("/ts").unwrap()),
                None,
            ]),
            gapless: true,
            unit: TsUnit::Ns,
            target: None,
            every: None,
        };
        let mut t = Tick::new(0, 0);
        let mut s = SeqState { last: None };
        on_frame(
            &cfg,
            &mut s,
            br#"{"type":"hello","epoch":"ab"}"#,
            10_000,
            &mut t,
        );
        on_frame(
            &cfg,
            &mut s,
            br#"{"seq":1,"type":"x","ts":4000}"#,
            10_000,
            &mut t,
        );
        assert_eq!((t.done, t.other_frames), (1, 1));
        assert!(t.rec.corrected.equivalent(t.rec.corrected.max(), 6000));
    }
}
