//! What every scenario does the same way: opening connections at the connect rate, and the
//! main thread's loop that merges ticks, shows progress and decides when to stop.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::net::{open, Connected, UrlTemplate};
use super::report::Aggregate;
use super::wsconn::WsConn;
use super::{Control, ErrKind, Errors, LoadOptions, Tick, Ticker};
use crate::unix_ns;

/// The read buffer per connection: 64 KiB, less with many connections (64 MiB in all at most,
/// 4 KiB each at least).
pub(crate) fn read_chunk(connections: usize) -> usize {
    ((64usize << 20) / connections.max(1)).clamp(4 << 10, 64 << 10)
}

/// Opens and upgrades connection `conn` of `url`, with its user's token. `Err` says which kind
/// of error it was and why.
pub(crate) fn open_one(
    opts: &LoadOptions,
    url: &UrlTemplate,
    conn: usize,
    extra_headers: &str,
) -> Result<(Connected, Vec<u8>), (ErrKind, String)> {
    let user = opts.user(conn);
    let token = opts
        .tokens
        .for_conn(conn, &user)
        .map_err(|e| (ErrKind::HandshakeRefused, e))?;
    let target = url.target_for(conn, &user, token.as_deref());
    let mut headers = extra_headers.to_owned();
    for h in &opts.headers {
        let mut value = h
            .value
            .replace("{conn}", &conn.to_string())
            .replace("{user}", &user);
        if let Some(t) = &token {
            value = value.replace("{token}", t);
        }
        headers.push_str(&format!("{}: {value}\r\n", h.name));
    }
    if !opts.subprotocols.is_empty() {
        headers.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            opts.subprotocols.join(", ")
        ));
    }
    if let (Some(t), false, false) = (&token, url.has_token_slot(), opts.headers_carry_auth()) {
        headers.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let opened = open(
        url,
        &opts.sources,
        conn,
        &target,
        &headers,
        opts.tls.as_ref(),
        opts.handshake_timeout,
    )
    .map_err(|e| {
        let refused = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<floodgate_wsclient::Refused>());
        let kind = if refused.is_some() || e.kind() == io::ErrorKind::InvalidData {
            ErrKind::HandshakeRefused
        } else {
            ErrKind::ConnectFailed
        };
        let advice = refused.map_or("", |r| refusal_advice(r.status, token.is_some(), opts));
        (kind, format!("{} {target}: {e}{advice}", url.addr))
    })?;
    if opts.session.is_empty() {
        return Ok(opened);
    }
    // The opening exchange, blocking, each read bounded so the overall timeout is kept.
    let (mut c, early) = opened;
    let fail = |why: String| {
        (
            ErrKind::HandshakeRefused,
            format!("{} {target}: {why}", url.addr),
        )
    };
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| fail(e.to_string()))?;
    let vars = crate::session::Vars {
        conn,
        user: &user,
        token: token.as_deref(),
    };
    let early = opts
        .session
        .open(&mut c, early, &vars, opts.handshake_timeout)
        .map_err(fail)?;
    c.set_read_timeout(None).map_err(|e| fail(e.to_string()))?;
    Ok((c, early))
}

/// What to do about an upgrade refused with `status`, when it is about credentials.
fn refusal_advice(status: u16, had_token: bool, opts: &LoadOptions) -> &'static str {
    match status {
        401 if !had_token && !opts.headers_carry_auth() => {
            "; the server wants credentials: mint a token per connection with --jwt-secret \
             (HS256, the server's secret), read tokens from --token-file, or send your own \
             with --header 'Authorization: Bearer <token>'"
        }
        401 => {
            "; the server refused the credentials sent: is --jwt-secret the server's key, \
             and are the tokens of --token-file valid and unexpired?"
        }
        403 => "; forbidden: the server may check Origin (--header 'Origin: https://...')",
        _ => "",
    }
}

/// Opens connections `indices` of `url` at `--connect-rate`. Failures are counted; the first
/// one's message is kept. Fails only if no connection opened at all.
pub(crate) fn open_all(
    opts: &LoadOptions,
    url: &UrlTemplate,
    indices: std::ops::Range<usize>,
    extra_headers: &str,
) -> Result<(Vec<(usize, WsConn)>, Errors), String> {
    let chunk = read_chunk(indices.len());
    let mut out = Vec::with_capacity(indices.len());
    let mut errors = Errors::default();
    let mut first_error = None;
    let t0 = Instant::now();
    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new(indices.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("connecting {pos}/{len} {per_sec}")
                .expect("valid template"),
        );
        bar
    });
    for (n, conn) in indices.clone().enumerate() {
        if let Some(rate) = opts.connect_rate {
            let due = t0 + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match open_one(opts, url, conn, extra_headers) {
            Ok((stream, early)) => match WsConn::new(stream, early, chunk) {
                Ok(c) => out.push((conn, c)),
                Err(e) => {
                    errors.add(ErrKind::ConnectFailed, 1);
                    first_error.get_or_insert(e.to_string());
                }
            },
            Err((kind, why)) => {
                errors.add(kind, 1);
                first_error.get_or_insert(why);
            }
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if out.is_empty() {
        return Err(format!(
            "no connection could be opened: {}",
            first_error.unwrap_or_default()
        ));
    }
    if let Some(why) = first_error {
        tracing::warn!(failed = errors.total(), first = %why, "some connections failed to open");
    }
    Ok((out, errors))
}

/// A worker thread of a run.
pub(crate) type Worker = std::thread::JoinHandle<io::Result<()>>;

/// Starts a worker thread named `name`.
pub(crate) fn spawn(
    name: String,
    f: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<Worker, String> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| format!("cannot start a load thread: {e}"))
}

/// Runs the main loop ([`monitor`]) until every worker has finished, then joins them. Returns
/// when the run ended (unix ns) and, if it could not complete, why.
fn run_to_end(
    rx: Receiver<Tick>,
    control: &Control,
    agg: &mut Aggregate,
    rule: &StopRule,
    progress: bool,
    workers: Vec<Worker>,
) -> (u64, Option<String>) {
    let (end_ns, mut incomplete) = monitor(rx, control, agg, rule, progress);
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                incomplete.get_or_insert(format!("a load thread failed: {e}"));
            }
            Err(_) => {
                incomplete.get_or_insert("a load thread panicked".into());
            }
        }
    }
    (end_ns, incomplete)
}

/// The main thread's side of a run: the control the workers share, the interval clock and
/// channel their ticks come in by, and the aggregate of those ticks.
pub(crate) struct Run<'a> {
    pub opts: &'a LoadOptions,
    pub control: std::sync::Arc<Control>,
    /// When measuring started (unix ns): interval 0 begins here.
    pub start_ns: u64,
    agg: Aggregate,
    tx: crossbeam_channel::Sender<Tick>,
    rx: Receiver<Tick>,
    /// Connections that failed to open before the workers started.
    setup_errors: Errors,
}

impl<'a> Run<'a> {
    /// Starts the clock for `workers` workers (each reports with a [`Ticker`] from
    /// [`ticker`](Self::ticker)).
    pub(crate) fn start(
        opts: &'a LoadOptions,
        workers: usize,
        setup_errors: Errors,
    ) -> Result<Run<'a>, String> {
        let mut agg = Aggregate::new(workers, opts.interval, opts.hdr_log.as_deref(), opts)?;
        let start_ns = unix_ns();
        agg.start_ns = start_ns;
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Run {
            opts,
            control: Control::new(),
            start_ns,
            agg,
            tx,
            rx,
            setup_errors,
        })
    }

    /// The interval clock of worker `worker`.
    pub(crate) fn ticker(&self, worker: usize) -> Ticker {
        Ticker::new(worker, self.start_ns, self.opts.interval, self.tx.clone())
    }

    /// Runs the main loop until every worker has finished (stopping them by `rule`), joins
    /// them, lets `settle` add what only the scenario knows, and builds the report.
    pub(crate) fn finish(
        mut self,
        rule: &StopRule,
        workers: Vec<Worker>,
        latency_from: &'static str,
        rate_text: Option<String>,
        settle: impl FnOnce(&mut Aggregate),
    ) -> super::report::LoadReport {
        // Only the workers' senders are left now: the channel closes when the last one ends.
        drop(self.tx);
        let progress = self.opts.progress;
        let (end_ns, incomplete) = run_to_end(
            self.rx,
            &self.control,
            &mut self.agg,
            rule,
            progress,
            workers,
        );
        settle(&mut self.agg);
        self.agg.errors.merge(&self.setup_errors);
        super::report::LoadReport::build(super::report::Outcome {
            opts: self.opts,
            agg: &self.agg,
            start_ns: self.start_ns,
            end_ns,
            latency_from,
            rate_text,
            incomplete,
        })
    }
}

/// When the main loop stops the run.
pub(crate) struct StopRule {
    /// Stop once this many units are done.
    pub target: Option<u64>,
    /// ...or this many, once it is known (`u64::MAX` until then).
    pub dynamic_target: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    pub duration: Option<Duration>,
    /// Stop (incomplete) when nothing completes for this long, once something is expected.
    pub idle: Duration,
    /// What a unit is, for messages ("events", "replies", "connections").
    pub unit: &'static str,
}

impl StopRule {
    /// Stop after `--events` units or `--duration`, whichever comes first.
    pub(crate) fn events_or_duration(opts: &LoadOptions, unit: &'static str) -> StopRule {
        StopRule {
            target: opts.events,
            dynamic_target: None,
            duration: opts.duration,
            idle: opts.idle_timeout,
            unit,
        }
    }
}

/// Merges ticks until every worker has sent its last one, stopping the workers when the rule
/// says so. Returns when the run ended (unix ns) and, if it could not complete, why.
pub(crate) fn monitor(
    rx: Receiver<Tick>,
    control: &Control,
    agg: &mut Aggregate,
    rule: &StopRule,
    progress: bool,
) -> (u64, Option<String>) {
    let start = Instant::now();
    let mut last_done = 0;
    let mut last_change = Instant::now();
    let mut incomplete = None;
    let mut end_ns = 0;
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .expect("valid template"),
        );
        bar
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(t) => agg.add(t),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // A threshold with `:abort` failed: stop now (the report says which and when).
        if agg.aborted.is_some() && !control.stopped() {
            end_ns = unix_ns();
            control.stop();
        }
        // Relaxed: progress counters only.
        let done = control.done.load(Ordering::Relaxed);
        if done != last_done {
            last_done = done;
            last_change = Instant::now();
        }
        if !control.stopped() {
            // Acquire: pairs with the publisher that stores the target.
            let dynamic = rule
                .dynamic_target
                .as_ref()
                .map(|t| t.load(Ordering::Acquire))
                .filter(|&t| t != u64::MAX);
            let reached = rule.target.or(dynamic).is_some_and(|t| done >= t);
            let stop_why = if reached || rule.duration.is_some_and(|d| start.elapsed() >= d) {
                Some(None)
            } else if last_change.elapsed() >= rule.idle {
                Some(Some(format!(
                    "nothing arrived for {}: {done} {} done{}",
                    humantime::format_duration(rule.idle),
                    rule.unit,
                    rule.target.map(|t| format!(" of {t}")).unwrap_or_default()
                )))
            } else {
                None
            };
            if let Some(why) = stop_why {
                incomplete = why;
                end_ns = unix_ns();
                control.stop();
            }
        }
        if let Some(bar) = &bar {
            let sent = control.sent.load(Ordering::Relaxed);
            let sent = if sent > 0 {
                format!("  sent {sent}")
            } else {
                String::new()
            };
            bar.set_message(format!(
                "{done} {}{sent}  last interval {:.0}/s  p99 {:.0}us  errors {}",
                rule.unit,
                agg.last_rate,
                agg.last_p99_us,
                agg.errors.total()
            ));
            bar.tick();
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    agg.finish();
    if end_ns == 0 {
        end_ns = unix_ns();
    }
    if incomplete.is_none() {
        if let Some(t) = rule.target {
            if agg.done < t && rule.duration.is_none_or(|d| start.elapsed() < d) {
                incomplete = Some(format!(
                    "the connections ended with {} of {t} {} done",
                    agg.done, rule.unit
                ));
            }
        }
    }
    (end_ns, incomplete)
}

/// Waits for socket events until `wake` (unix ns), at most 50 ms. epoll's timeout has
/// millisecond resolution, so when a generator's next message is due sooner (`precise`), it
/// sleeps (nanosecond resolution, about 60 us of slack) and then only collects what is ready:
/// the schedule is kept to a fraction of a millisecond rather than rounded up to one.
pub(crate) fn wait(
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    wake: u64,
    precise: bool,
) -> io::Result<()> {
    let wait = wake.saturating_sub(unix_ns()).min(50_000_000);
    if precise && wait < 1_000_000 {
        if wait > 0 {
            std::thread::sleep(Duration::from_nanos(wait));
        }
        poll.poll(events, Some(Duration::ZERO))
    } else {
        poll.poll(events, Some(Duration::from_nanos(wait)))
    }
}

/// Deals `items` out to `parts` shares, item `i` to share `i % parts`.
pub(crate) fn deal<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.max(1);
    let mut shares: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % parts].push(item);
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dealing_gives_each_item_to_one_share_in_turn() {
        assert_eq!(
            deal((0..7).collect(), 3),
            vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]
        );
        assert_eq!(deal(vec![1, 2], 0), vec![vec![1, 2]]);
    }
}
