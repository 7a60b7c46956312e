//! `subscribe`: hold connections and measure what they receive. Also the receiving half of
//! `publish`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token};

use super::drive::{self, Run, StopRule};
use super::pointer::Pointer;
use super::report::{Aggregate, LoadReport};
use super::wsconn::WsConn;
use super::{share, Control, ErrKind, LoadOptions, Tick, Ticker, TsUnit};
use crate::emitter::unix_ns;

/// How received frames are read.
#[derive(Clone)]
pub(crate) struct RecvCfg {
    pub seq: Option<Pointer>,
    pub gapless: bool,
    /// The intended send time (or the server's timestamp).
    pub intended: Option<Pointer>,
    /// The actual send time, when frames carry it (publish).
    pub sent: Option<Pointer>,
    pub unit: TsUnit,
    /// Events expected in all: a connection the server closes after that is no error.
    pub target: Option<u64>,
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
    if let Some(ptr) = &cfg.seq {
        match ptr.u64_in(p) {
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
    if let Some(ip) = &cfg.intended {
        if let Some(intended) = cfg.unit.read_ns(ip, p) {
            match cfg.sent.as_ref().and_then(|sp| cfg.unit.read_ns(sp, p)) {
                Some(sent) => tick.rec.reply(intended, sent, now_ns),
                None => tick.rec.latency(now_ns.saturating_sub(intended)),
            }
        }
    }
}

/// A worker: receives on its connections until stopped or every connection closed.
pub(crate) fn receive_loop(
    mut conns: Vec<WsConn>,
    cfg: RecvCfg,
    mut ticker: Ticker,
    control: Arc<Control>,
) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, c) in conns.iter_mut().enumerate() {
        c.register(poll.registry(), Token(i))?;
    }
    let mut states: Vec<SeqState> = conns.iter().map(|_| SeqState { last: None }).collect();
    let mut events = Events::with_capacity(1024);
    let mut open = conns.len();
    // Frames that arrived before the workers started are read at once (edge-triggered).
    let mut first = true;
    while open > 0 && !control.stopped() {
        let now = unix_ns();
        ticker.advance(now);
        let wait = ticker.next_boundary().saturating_sub(now).min(50_000_000);
        poll.poll(&mut events, Some(Duration::from_nanos(wait)))?;
        let ready: Vec<usize> = if first {
            first = false;
            (0..conns.len()).collect()
        } else {
            events.iter().map(|e| e.token().0).collect()
        };
        for i in ready {
            let c = &mut conns[i];
            if c.closed {
                continue;
            }
            let now_ns = unix_ns();
            ticker.advance(now_ns);
            let tick = &mut ticker.tick;
            let before = tick.done;
            let state = &mut states[i];
            let result = c.read(|p| on_frame(&cfg, state, p, now_ns, tick));
            let _ = c.flush();
            let got = tick.done - before;
            // Relaxed: a progress counter.
            control.done.fetch_add(got, Ordering::Relaxed);
            match result {
                Ok(end) => {
                    tick.bytes += end.bytes;
                    if end.closed {
                        open -= 1;
                        // Relaxed: progress counter; a close racing the last events of other
                        // connections may be counted, which errs on the side of reporting.
                        let all_in = cfg
                            .target
                            .is_some_and(|t| control.done.load(Ordering::Relaxed) >= t);
                        if !control.stopped() && !all_in {
                            tick.errors.add(ErrKind::Closed, 1);
                        }
                    }
                }
                Err(_) => {
                    c.closed = true;
                    open -= 1;
                    tick.errors.add(ErrKind::Protocol, 1);
                }
            }
        }
    }
    for c in conns.iter_mut() {
        c.close();
    }
    ticker.finish(0);
    Ok(())
}

/// Where receiving workers report: the first worker index, the interval clock, the channel and
/// the shared control.
pub(crate) struct Reporting<'a> {
    pub first_worker: usize,
    pub start_ns: u64,
    pub interval: Duration,
    pub tx: &'a crossbeam_channel::Sender<Tick>,
    pub control: &'a Arc<Control>,
}

/// Starts receiving workers for `conns` (split over `threads`).
pub(crate) fn spawn_receivers(
    conns: Vec<(usize, WsConn)>,
    threads: usize,
    cfg: &RecvCfg,
    r: Reporting<'_>,
) -> Result<Vec<drive::Worker>, String> {
    let Reporting {
        first_worker,
        start_ns,
        interval,
        tx,
        control,
    } = r;
    let threads = threads.clamp(1, conns.len().max(1));
    let mut shares: Vec<Vec<WsConn>> = (0..threads).map(|_| Vec::new()).collect();
    let n = conns.len();
    let mut conns: Vec<Option<WsConn>> = conns.into_iter().map(|(_, c)| Some(c)).collect();
    for (k, s) in shares.iter_mut().enumerate() {
        for i in share(n, threads, k) {
            s.push(conns[i].take().expect("each index once"));
        }
    }
    shares
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let ticker = Ticker::new(first_worker + k, start_ns, interval, tx.clone());
            let (cfg, control) = (cfg.clone(), control.clone());
            drive::spawn(format!("load-recv-{k}"), move || {
                receive_loop(s, cfg, ticker, control)
            })
        })
        .collect()
}

pub(super) fn run(opts: &LoadOptions) -> Result<LoadReport, String> {
    let (conns, setup_errors) = drive::open_all(opts, &opts.url, 0..opts.connections, "")?;
    let control = Control::new();
    let start_ns = unix_ns();
    control.start_ns.store(start_ns, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = RecvCfg {
        seq: opts.seq.clone(),
        gapless: opts.gapless,
        intended: opts.latency_field.clone(),
        sent: None,
        unit: opts.ts_unit,
        target: opts.events,
    };
    let workers = opts.threads.clamp(1, conns.len());
    let agg = Aggregate::new(workers, opts.interval, opts.hdr_log.as_deref(), opts)?;
    let reporting = Reporting {
        first_worker: 0,
        start_ns,
        interval: opts.interval,
        tx: &tx,
        control: &control,
    };
    let handles = spawn_receivers(conns, workers, &cfg, reporting)?;
    drop(tx);
    let run = Run {
        opts,
        control,
        agg,
        rx,
        start_ns,
        setup_errors,
    };
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
            seq: Some(Pointer::parse("/seq").unwrap()),
            gapless: true,
            intended: Some(Pointer::parse("/ts").unwrap()),
            sent: None,
            unit: TsUnit::Ns,
            target: None,
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
