//! `floodgate bench`: an embedded gateway on 127.0.0.1, real WebSocket clients over loopback,
//! producer threads emitting realistic agent events, and a verified, honest report.
//!
//! Producer `p` of `P` emits events `k = p, p + P, ...` below `E`; event `k` goes to user
//! `u{k % C}`. Each event's data carries its target (`to`), its producer (`p`), that producer's
//! per-user counter (`n`) and, with `--rate`, the time it was scheduled (`sched`). Each client
//! checks every frame: gapless `seq` from 1, `to` equal to its own user, `n` increasing by one
//! per producer, and latency from `sched` (open loop, so coordinated omission is corrected) or
//! from `ts`. Every 64th frame is also fully parsed with simd-json and cross-checked.
//!
//! `--server raw-tcp` swaps the gateway for [`raw`]: the floor that writes each event to its
//! socket from the producer's thread, with everything else unchanged.

mod raw;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::error::EmitError;
use crate::event::{Event, EventType};
use crate::gateway::Gateway;
use crate::record::unix_ns;
use floodgate_wsclient::{self as client, FrameReader, Kind};

/// Which server the clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// An embedded floodgate gateway.
    Floodgate,
    /// No gateway: each producer writes each event's frame to its user's socket itself, one
    /// write per event (the floor for a server that writes events as they are emitted).
    RawTcp,
}

impl ServerKind {
    fn as_str(self) -> &'static str {
        match self {
            ServerKind::Floodgate => "floodgate",
            ServerKind::RawTcp => "raw-tcp",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub server: ServerKind,
    pub connections: usize,
    pub events: u64,
    pub producers: usize,
    pub payload_bytes: usize,
    /// Events per second in total; 0 = as fast as possible.
    pub rate: u64,
    pub shards: usize,
    pub client_threads: usize,
    pub max_batch_events: usize,
    pub max_batch_delay: Duration,
    /// Bytes of each emitter-to-shard ring.
    pub ring_capacity: usize,
    /// The gateway's `history_max_events` (0 = no resume history).
    pub history_max_events: usize,
    /// Every [`CHAOS_INTERVAL`], drop a random [`CHAOS_FRACTION`] of the connections mid-stream
    /// and reconnect them with their last cursor (`?since=&epoch=`).
    pub chaos: bool,
    /// Keep every event in a durable spool in this directory (`None` = memory history only).
    pub spool_dir: Option<std::path::PathBuf>,
    /// The spool's fsync policy.
    pub spool_fsync: crate::spool::FsyncPolicy,
    /// Give up when no event arrives for this long.
    pub stall_timeout: Duration,
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            server: ServerKind::Floodgate,
            connections: 64,
            events: 2_000_000,
            producers: 1,
            payload_bytes: 150,
            rate: 0,
            shards: 1,
            client_threads: 1,
            max_batch_events: 1024,
            max_batch_delay: Duration::ZERO,
            ring_capacity: 1 << 20,
            history_max_events: 1024,
            chaos: false,
            spool_dir: None,
            spool_fsync: crate::spool::FsyncPolicy::Interval(Duration::from_millis(100)),
            stall_timeout: Duration::from_secs(10),
            progress: true,
        }
    }
}

/// With `chaos`: how often connections are dropped and resumed...
pub const CHAOS_INTERVAL: Duration = Duration::from_millis(100);
/// ...and which share of them each time.
pub const CHAOS_FRACTION: f64 = 0.10;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The result. Field names are a stable interface (`--json`): later versions add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `floodgate` or `raw-tcp` (see [`ServerKind`]).
    pub server: &'static str,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
    pub events: u64,
    pub received: u64,
    pub lost: u64,
    pub misrouted: u64,
    pub order_errors: u64,
    pub duplicates: u64,
    pub frames_per_write: f64,
    pub latency_us: Latency,
    /// Whether latency is measured from the scheduled send time (open loop) or the emit time.
    pub latency_from: &'static str,
    /// With `--rate`: how late events left the generator against their schedule. This lag is
    /// part of `latency_us` (which counts from the schedule); it is reported apart so a slow
    /// generator is never mistaken for a slow server. `null` without `--rate`.
    pub schedule_lag_us: Option<Latency>,
    pub elapsed_sec: f64,
    pub cpu_seconds: f64,
    pub reactor_cpu_seconds: f64,
    pub producer_cpu_seconds: f64,
    pub client_cpu_seconds: f64,
    pub reactor_passes: u64,
    pub connections: usize,
    pub producers: usize,
    pub shards: usize,
    pub rate: u64,
    pub payload_bytes: usize,
    pub ring_full_retries: u64,
    pub write_syscalls: u64,
    pub write_blocked: u64,
    pub write_partial: u64,
    pub bytes_received: u64,
    /// Reconnections with a cursor made by the clients (`--chaos`).
    pub resumes: u64,
    /// Events the gateway replayed from history to resuming connections.
    pub replayed: u64,
    /// `gap` frames received: events a resuming client was told it cannot get (they count as
    /// lost).
    pub gaps: u64,
    /// Unacked events (`agent_completed`) sent again to a resuming client, which it had
    /// already received: at-least-once redelivery, de-duplicated by `seq`, not `duplicates`.
    pub redelivered: u64,
    /// `{"ack":N}` messages the clients sent (every [`ACK_EVERY`] events that asked for one).
    pub acks_sent: u64,
    /// Whether the gateway kept a durable spool, the bytes it wrote to it, and the events
    /// replayed from it (part of `replayed`: older than memory history).
    pub spool: bool,
    pub spool_bytes_written: u64,
    pub replayed_from_spool: u64,
}

/// Clients ack after this many events that asked for an ack (and when they are done).
pub const ACK_EVERY: u32 = 16;

impl BenchReport {
    /// True when every event arrived exactly once, in order, at the right client.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.misrouted == 0
            && self.order_errors == 0
            && self.duplicates == 0
            && self.gaps == 0
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let mut out = format!(
            "floodgate bench ({}): {} events to {} connections, {} producer(s), {} shard(s), rate {}\n\
             delivered      {:>12.0} events/s   {:.1} MB/s   ({} events in {:.3} s)\n\
             latency (us)   p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}   (from {} time)\n\
             correctness    lost {}  misrouted {}  out-of-order {}  duplicates {}\n\
             batching       {:.1} frames per write syscall ({} writes)\n\
             cpu            {:.2} s process: reactor {:.2}, producers {:.2}, clients {:.2}; {} reactor passes; ring-full retries {}\n",
            self.server,
            self.events,
            self.connections,
            self.producers,
            self.shards,
            if self.rate == 0 { "max".to_string() } else { format!("{}/s", self.rate) },
            self.events_per_sec,
            self.mb_per_sec,
            self.received,
            self.elapsed_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.latency_from,
            self.lost,
            self.misrouted,
            self.order_errors,
            self.duplicates,
            self.frames_per_write,
            self.write_syscalls,
            self.cpu_seconds,
            self.reactor_cpu_seconds,
            self.producer_cpu_seconds,
            self.client_cpu_seconds,
            self.reactor_passes,
            self.ring_full_retries,
        );
        if self.resumes > 0 {
            out.push_str(&format!(
                "chaos          {} resumes, {} events replayed, {} gaps, {} unacked events redelivered\n",
                self.resumes, self.replayed, self.gaps, self.redelivered
            ));
        }
        if self.spool {
            out.push_str(&format!(
                "spool          {:.1} MB written; {} events replayed from it; {} acks sent by clients\n",
                self.spool_bytes_written as f64 / 1e6,
                self.replayed_from_spool,
                self.acks_sent
            ));
        }
        if let Some(g) = &self.schedule_lag_us {
            out.push_str(&format!(
                "generator lag  p50 {:.0}  p99 {:.0}  max {:.0} us behind schedule (included in latency)\n",
                g.p50, g.p99, g.max
            ));
        }
        out
    }
}

/// The data of every bench event. Field order is fixed (serde follows declaration order), which
/// the client's fast scanner relies on; the simd-json cross-check does not.
#[derive(Serialize)]
struct Payload<'a> {
    to: u32,
    p: u32,
    n: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sched: Option<u64>,
    text: &'a str,
}

const TYPES: [EventType<'static>; 5] = [
    EventType::AgentStarted,
    EventType::AgentThinking,
    EventType::ToolExecuting,
    EventType::ToolCompleted,
    EventType::AgentCompleted,
];

/// Removes a directory tree when dropped (the bench's own spool).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the bench. Errors are setup failures; a run that lost events still returns a report.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, crate::error::Error> {
    validate(opts)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| crate::error::Error::Io(io::Error::other(e)))?;
    // Room for `history_max_events` of every user: the log is sized so that only the per-user
    // count limit applies.
    let history_user_bytes = opts.history_max_events * (opts.payload_bytes + 64);
    // A fresh spool for this run (a spool that exists already would continue its streams).
    let spool_dir = opts
        .spool_dir
        .as_ref()
        .map(|d| d.join(format!("bench-{}-{}", std::process::id(), unix_ns())));
    let _cleanup = spool_dir.clone().map(RemoveOnDrop);
    let mut server = match opts.server {
        ServerKind::Floodgate => Server::Gateway({
            let mut b = Gateway::builder();
            if let Some(dir) = &spool_dir {
                b = b
                    .spool_dir(dir)
                    .spool_fsync(opts.spool_fsync)
                    // Retention is not what this measures: keep the whole run.
                    .spool_max_bytes(u64::MAX / 4);
            }
            b.bind("127.0.0.1:0")
                .jwt_hs256_secret(secret)
                .shards(opts.shards)
                .max_batch_events(opts.max_batch_events)
                .max_batch_delay(opts.max_batch_delay)
                .ring_capacity(opts.ring_capacity)
                .history_max_events(opts.history_max_events)
                // Without history (and no spool), a breaker has nothing to divert to: slow
                // clients are closed instead, as the gateway requires.
                .breaker_cooldown(if opts.history_max_events == 0 && spool_dir.is_none() {
                    Duration::ZERO
                } else {
                    Duration::from_secs(30)
                })
                .history_max_bytes(history_user_bytes.max(1 << 20))
                .history_total_bytes((history_user_bytes * opts.connections).max(64 << 20))
                .max_event_bytes((opts.ring_capacity / 4 - 512).min(64 << 10))
                .max_connections_per_user(4)
                // What the run needs (reconnects included), not the server default, so the
                // nofile check at start judges this run.
                .max_connections((opts.connections * 4).max(64))
                .build()?
        }),
        ServerKind::RawTcp => Server::Raw(raw::RawServer::start(opts.connections, &secret)?),
    };
    let addr = match &server {
        Server::Gateway(gw) => gw.local_addr(),
        Server::Raw(raw) => raw.local_addr(),
    };

    // Expected events per user.
    let c = opts.connections as u64;
    let expected: Vec<u64> = (0..c)
        .map(|i| opts.events / c + u64::from(i < opts.events % c))
        .collect();

    // Connect every client before any event is emitted (a client that saw its 101 receives
    // every event emitted after it).
    let mut clients = Vec::with_capacity(opts.connections);
    // Each client's read buffer: 64 KiB reads, less when there are many clients (64 MiB in all
    // at most, 16 KiB each at least).
    let read_chunk = ((64usize << 20) / opts.connections).clamp(16 << 10, 64 << 10);
    for (i, &expect) in expected.iter().enumerate() {
        let token = crate::auth::mint_hs256(&secret, &format!("u{i}"), Duration::from_secs(3600))?;
        let (stream, reader) = open_ws(addr, "/ws", &token, read_chunk)?;
        clients.push(ClientConn::new(
            i as u32,
            stream,
            reader,
            token,
            expect,
            opts.producers,
        ));
    }

    if let Server::Raw(raw) = &mut server {
        raw.wait_accepted()?;
    }

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start_ns = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_seconds();
    let reactor_cpu0 = reactor_cpu_seconds();

    // Client threads, each with a share of the connections.
    let threads = opts.client_threads.clamp(1, opts.connections);
    let mut shares: Vec<Vec<ClientConn>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, cl) in clients.into_iter().enumerate() {
        shares[i % threads].push(cl);
    }
    let stall = opts.stall_timeout;
    let chaos = opts.chaos.then_some(Chaos {
        addr,
        read_chunk,
        seed: unix_ns(),
    });
    let client_handles: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let received = received.clone();
            std::thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn(move || {
                    let chaos = chaos.map(|c| Chaos {
                        seed: c.seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        ..c
                    });
                    client_loop(share, &received, stall, chaos)
                })
        })
        .collect::<Result<_, _>>()?;

    // Producers.
    let t0 = Instant::now();
    start_ns.store(unix_ns(), Ordering::Relaxed);
    let full_retries = Arc::new(AtomicU64::new(0));
    let producer_handles: Vec<_> = (0..opts.producers)
        .map(|p| {
            let mut sink = match &server {
                Server::Gateway(gw) => Sink::Emitter(gw.emitter()),
                Server::Raw(raw) => Sink::Raw(raw.sink()),
            };
            let (opts, stop, full_retries) = (opts.clone(), stop.clone(), full_retries.clone());
            std::thread::Builder::new()
                .name(format!("bench-producer-{p}"))
                .spawn(move || produce(&mut sink, p, &opts, t0, &stop, &full_retries))
        })
        .collect::<Result<_, _>>()?;

    // Progress until every client is done (or stalled).
    let total: u64 = expected.iter().sum();
    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} events  {per_sec}  [{elapsed}]",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut results = Vec::new();
    let mut pending = client_handles;
    while !pending.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(bar) = &bar {
            bar.set_position(received.load(Ordering::Relaxed));
        }
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        pending = rest;
        for h in done {
            results.push(h.join().map_err(|_| {
                crate::error::Error::ReactorPanicked("bench client panicked".into())
            })?);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    stop.store(true, Ordering::Relaxed);
    let mut producer_cpu = 0.0;
    let mut lag = new_histogram();
    for h in producer_handles {
        let (cpu, h) = h
            .join()
            .map_err(|_| crate::error::Error::ReactorPanicked("bench producer panicked".into()))?;
        producer_cpu += cpu;
        lag.add(&h).expect("same bounds");
    }
    // Producer and client threads have exited; their CPU was sampled by themselves.
    let cpu = process_cpu_seconds() - cpu0;
    let reactor_cpu = reactor_cpu_seconds() - reactor_cpu0;
    let s = match server {
        Server::Gateway(gw) => {
            let s = gw.metrics().stats;
            gw.shutdown()?;
            s
        }
        Server::Raw(raw) => {
            raw.close();
            let w = raw.writes();
            crate::metrics::Stats {
                write_syscalls: w,
                frames_written: w,
                ..Default::default()
            }
        }
    };
    let (passes, write_syscalls, frames_written) = (s.passes, s.write_syscalls, s.frames_written);
    let (write_blocked, write_partial) = (s.write_blocked, s.write_partial);

    let mut hist = new_histogram();
    let (mut got, mut misrouted, mut order_errors, mut duplicates, mut bytes, mut lost) =
        (0, 0, 0, 0, 0, 0);
    let mut last_rx_ns = 0;
    let mut client_cpu = 0.0;
    let (resumes, gaps, redelivered, acks_sent) = (
        results.iter().map(|r| r.resumes).sum(),
        results.iter().map(|r| r.gaps).sum(),
        results.iter().map(|r| r.redelivered).sum(),
        results.iter().map(|r| r.acks_sent).sum(),
    );
    for r in &results {
        client_cpu += r.cpu;
        hist.add(&r.hist).expect("same bounds");
        got += r.received;
        misrouted += r.misrouted;
        order_errors += r.order_errors;
        duplicates += r.duplicates;
        bytes += r.bytes;
        lost += r.lost;
        last_rx_ns = last_rx_ns.max(r.last_rx_ns);
    }
    let elapsed = if last_rx_ns > 0 {
        (last_rx_ns.saturating_sub(start_ns.load(Ordering::Relaxed))) as f64 / 1e9
    } else {
        t0.elapsed().as_secs_f64()
    };
    let percentiles = |h: &Histogram<u64>| {
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1e3;
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1e3,
        }
    };
    Ok(BenchReport {
        server: opts.server.as_str(),
        events_per_sec: got as f64 / elapsed.max(1e-9),
        mb_per_sec: bytes as f64 / 1e6 / elapsed.max(1e-9),
        events: opts.events,
        received: got,
        lost,
        misrouted,
        order_errors,
        duplicates,
        frames_per_write: if write_syscalls == 0 {
            0.0
        } else {
            frames_written as f64 / write_syscalls as f64
        },
        latency_us: percentiles(&hist),
        schedule_lag_us: (opts.rate > 0).then(|| percentiles(&lag)),
        latency_from: if opts.rate > 0 { "scheduled" } else { "emit" },
        elapsed_sec: elapsed,
        cpu_seconds: cpu,
        reactor_cpu_seconds: reactor_cpu,
        producer_cpu_seconds: producer_cpu,
        client_cpu_seconds: client_cpu,
        reactor_passes: passes,
        connections: opts.connections,
        producers: opts.producers,
        shards: opts.shards,
        rate: opts.rate,
        payload_bytes: opts.payload_bytes,
        ring_full_retries: full_retries.load(Ordering::Relaxed),
        write_syscalls,
        write_blocked,
        write_partial,
        bytes_received: bytes,
        resumes,
        replayed: s.events_replayed,
        gaps,
        redelivered,
        acks_sent,
        spool: opts.spool_dir.is_some(),
        spool_bytes_written: s.spool_bytes_written,
        replayed_from_spool: s.events_replayed_cold,
    })
}

fn validate(o: &BenchOptions) -> Result<(), crate::error::Error> {
    use crate::error::ConfigError;
    let bad = |s: &'static str, r: &str| Err(ConfigError::new(s, r.to_owned()).into());
    if o.connections == 0 || o.connections > 50_000 {
        return bad("connections", "must be from 1 to 50000");
    }
    if o.events == 0 {
        return bad("events", "must be at least 1");
    }
    if o.spool_dir.is_some() && o.server != ServerKind::Floodgate {
        return bad(
            "spool",
            "needs --server floodgate (the raw-tcp floor has no gateway)",
        );
    }
    if o.chaos && o.server != ServerKind::Floodgate {
        return bad(
            "chaos",
            "needs --server floodgate (the raw-tcp floor cannot resume)",
        );
    }
    if o.producers == 0 || o.producers > 64 {
        return bad("producers", "must be from 1 to 64");
    }
    if !(100..=60_000).contains(&o.payload_bytes) {
        return bad("payload-bytes", "must be from 100 to 60000");
    }
    if o.client_threads == 0 || o.client_threads > 64 {
        return bad("client-threads", "must be from 1 to 64");
    }
    Ok(())
}

/// The server side of a run.
enum Server {
    Gateway(Gateway),
    Raw(raw::RawServer),
}

/// Where a producer sends its events.
enum Sink {
    Emitter(crate::emitter::Emitter),
    Raw(raw::RawSink),
}

impl Sink {
    /// Sends one event; `Ok(false)` means the ring was full and the caller should retry.
    fn send(&mut self, user: usize, name: &str, ev: Event<'_, Payload<'_>>) -> bool {
        match self {
            Sink::Emitter(em) => match em.emit(name, ev) {
                Ok(()) => true,
                Err(EmitError::Full(_)) => false,
                Err(e) => panic!("bench emit failed: {e}"),
            },
            Sink::Raw(raw) => {
                if let Err(e) = raw.send(user, ev) {
                    panic!("bench raw write failed: {e}");
                }
                true
            }
        }
    }
}

/// Emits this producer's share; returns its CPU seconds and, with `--rate`, how late each
/// event left the generator against its schedule (nanoseconds).
fn produce(
    sink: &mut Sink,
    p: usize,
    o: &BenchOptions,
    t0: Instant,
    stop: &AtomicBool,
    full: &AtomicU64,
) -> (f64, Histogram<u64>) {
    let mut lag = new_histogram();
    let users = o.connections as u64;
    let producers = o.producers as u64;
    let mut per_user = vec![0u64; o.connections];
    let run_ids: Vec<String> = (0..o.connections).map(|i| format!("run-{i:04}")).collect();
    let users_str: Vec<String> = (0..o.connections).map(|i| format!("u{i}")).collect();
    // Pad the text so the whole frame is about `payload_bytes`.
    let overhead = 126usize; // seq, type, ts, run_id and the data members other than text
    let text = "x".repeat(o.payload_bytes.saturating_sub(overhead).max(8));
    let interval_ns = if o.rate == 0 {
        0.0
    } else {
        1e9 * producers as f64 / o.rate as f64
    };
    let mut j = 0u64;
    let mut k = p as u64;
    while k < o.events {
        let user = (k % users) as usize;
        per_user[user] += 1;
        let sched = if o.rate > 0 {
            let due = t0 + Duration::from_nanos((j as f64 * interval_ns) as u64);
            let now = Instant::now();
            if due > now {
                // Sleep, never spin: on a small machine a spinning producer steals the CPU the
                // reactor and clients need. Sleep at least 100 us at a time (each sleep costs a
                // syscall and two context switches); events that fall due meanwhile go out back
                // to back, and their latency still counts from their scheduled time, so the
                // generator's own lateness is charged to the result, never hidden.
                std::thread::sleep((due - now).max(Duration::from_micros(100)));
            }
            let late = Instant::now().saturating_duration_since(due).as_nanos() as u64;
            lag.saturating_record(late.max(1));
            Some(unix_ns() - late)
        } else {
            None
        };
        let data = Payload {
            to: user as u32,
            p: p as u32,
            n: per_user[user],
            sched,
            text: &text,
        };
        let ev = Event::with(TYPES[(k % 5) as usize], &run_ids[user], &data);
        let backoff = crossbeam_utils::Backoff::new();
        while !sink.send(user, &users_str[user], ev) {
            full.fetch_add(1, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                return (thread_cpu_now(), lag);
            }
            if backoff.is_completed() {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                backoff.snooze();
            }
        }
        j += 1;
        k += producers;
    }
    (thread_cpu_now(), lag)
}

struct ClientConn {
    stream: TcpStream,
    reader: FrameReader,
    v: Verify,
    /// The user's token, for reconnecting.
    token: String,
}

/// What `--chaos` needs to drop and resume connections.
#[derive(Clone, Copy)]
struct Chaos {
    addr: std::net::SocketAddr,
    read_chunk: usize,
    /// xorshift state for picking victims.
    seed: u64,
}

/// What one client has seen.
struct Verify {
    user: u32,
    expected: u64,
    received: u64,
    last_seq: u64,
    last_n: Vec<u64>,
    misrouted: u64,
    order_errors: u64,
    duplicates: u64,
    bytes: u64,
    closed: bool,
    /// The stream's epoch, from the first `hello` (16 hex digits).
    epoch: Option<[u8; 16]>,
    /// The next text frame must be `hello` (set on every connect).
    awaiting_hello: bool,
    /// Reconnections made.
    resumes: u64,
    /// `gap` frames received, and the events they said were lost.
    gaps: u64,
    gap_events: u64,
    /// After a gap, producers' counters may jump: `n` then only has to increase.
    after_gap: bool,
    /// Events that asked for an ack since the last ack sent.
    unacked: u32,
    acks_sent: u64,
    /// Frames still to come of an announced `redelivery`, and how many came in all.
    redelivering: u64,
    redelivered: u64,
}

impl ClientConn {
    fn new(
        user: u32,
        stream: TcpStream,
        reader: FrameReader,
        token: String,
        expected: u64,
        producers: usize,
    ) -> Self {
        ClientConn {
            stream,
            reader,
            v: Verify {
                user,
                expected,
                received: 0,
                last_seq: 0,
                last_n: vec![0; producers],
                misrouted: 0,
                order_errors: 0,
                duplicates: 0,
                bytes: 0,
                closed: false,
                epoch: None,
                awaiting_hello: true,
                resumes: 0,
                gaps: 0,
                gap_events: 0,
                after_gap: false,
                unacked: 0,
                acks_sent: 0,
                redelivering: 0,
                redelivered: 0,
            },
            token,
        }
    }
}

impl Verify {
    fn done(&self) -> bool {
        self.closed || self.received + self.gap_events >= self.expected
    }
}

struct ClientResult {
    hist: Histogram<u64>,
    received: u64,
    misrouted: u64,
    order_errors: u64,
    duplicates: u64,
    bytes: u64,
    lost: u64,
    last_rx_ns: u64,
    cpu: f64,
    resumes: u64,
    gaps: u64,
    redelivered: u64,
    acks_sent: u64,
}

/// Upgrades a non-blocking client connection to `path` with `token`; the reader starts with
/// whatever arrived with the 101 and reads `read_chunk` bytes at a time.
fn open_ws(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    read_chunk: usize,
) -> io::Result<(TcpStream, FrameReader)> {
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (stream, early) = client::connect(addr, path, &auth, Duration::from_secs(5))?;
    stream.set_nonblocking(true)?;
    Ok((
        TcpStream::from_std(stream),
        FrameReader::new(early, read_chunk),
    ))
}

/// Drops connection `i`'s socket mid-stream and reconnects with its cursor. Returns false if
/// the reconnect failed (the connection then counts as closed).
fn resume(poll: &Poll, c: &mut ClientConn, i: usize, chaos: &Chaos) -> bool {
    let _ = poll.registry().deregister(&mut c.stream);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let path = match &c.v.epoch {
        Some(e) => format!(
            "/ws?since={}&epoch={}",
            c.v.last_seq,
            std::str::from_utf8(e).unwrap_or("0")
        ),
        None => "/ws?since=0".to_owned(),
    };
    let Ok((stream, reader)) = open_ws(chaos.addr, &path, &c.token, chaos.read_chunk) else {
        return false;
    };
    c.stream = stream;
    c.reader = reader;
    if poll
        .registry()
        .register(&mut c.stream, Token(i), Interest::READABLE)
        .is_err()
    {
        return false;
    }
    c.v.awaiting_hello = true;
    c.v.resumes += 1;
    true
}

fn client_loop(
    mut conns: Vec<ClientConn>,
    received: &AtomicU64,
    stall: Duration,
    mut chaos: Option<Chaos>,
) -> ClientResult {
    let mut hist = new_histogram();
    let mut poll = Poll::new().expect("poll");
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.stream, Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(1024);
    let mut remaining = conns.iter().filter(|c| !c.v.done()).count();
    let mut last_progress = Instant::now();
    let mut last_rx_ns = 0;
    let mut sample = 0u32;
    let mut scratch = Vec::new();
    let scanner = Scanner;
    let mut ready: Vec<usize> = (0..conns.len()).collect(); // early bytes may hold frames
    let mut next_chaos = Instant::now() + CHAOS_INTERVAL;
    while remaining > 0 {
        if let Some(ch) = chaos.as_mut().filter(|_| Instant::now() >= next_chaos) {
            next_chaos += CHAOS_INTERVAL;
            let live: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].v.done()).collect();
            let victims = ((live.len() as f64 * CHAOS_FRACTION).ceil() as usize).min(live.len());
            for k in 0..victims {
                // xorshift64: a different victim set every time, reproducible from the seed.
                ch.seed ^= ch.seed << 13;
                ch.seed ^= ch.seed >> 7;
                ch.seed ^= ch.seed << 17;
                let i = live[(ch.seed as usize).wrapping_add(k) % live.len()];
                if !resume(&poll, &mut conns[i], i, ch) {
                    conns[i].v.closed = true;
                    remaining -= 1;
                }
                ready.push(i); // the first bytes may have come with the handshake
            }
        }
        if ready.is_empty() {
            let timeout = if chaos.is_some() {
                next_chaos.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(100)
            };
            if poll.poll(&mut events, Some(timeout)).is_err() {
                continue;
            }
            ready.extend(events.iter().map(|e| e.token().0));
        }
        if ready.is_empty() {
            if last_progress.elapsed() > stall {
                break;
            }
            continue;
        }
        for i in std::mem::take(&mut ready) {
            let ClientConn {
                stream,
                reader,
                v: c,
                ..
            } = &mut conns[i];
            if c.done() {
                continue;
            }
            loop {
                let drained = match reader.fill(stream) {
                    Ok((0, _)) => {
                        c.closed = true;
                        break;
                    }
                    Ok((_, short)) => short,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.closed = true;
                        break;
                    }
                };
                let now_ns = unix_ns();
                let before = c.received + c.gap_events;
                let mut pongs = Vec::new();
                let res = reader.frames(|kind, payload| match kind {
                    Kind::Text => {
                        c.bytes += payload.len() as u64;
                        check_frame(
                            c,
                            &scanner,
                            payload,
                            now_ns,
                            &mut hist,
                            &mut sample,
                            &mut scratch,
                        );
                    }
                    Kind::Ping => pongs.push(client::client_frame(Kind::Pong, payload)),
                    Kind::Close => c.closed = true,
                    _ => c.order_errors += 1,
                });
                for p in pongs {
                    let _ = stream.write_all(&p);
                }
                if c.unacked >= ACK_EVERY || (c.unacked > 0 && c.done()) {
                    // Cumulative: everything up to the last event seen.
                    let ack = format!("{{\"ack\":{}}}", c.last_seq);
                    let _ = stream.write_all(&client::client_frame(Kind::Text, ack.as_bytes()));
                    c.unacked = 0;
                    c.acks_sent += 1;
                }
                if res.is_err() {
                    c.closed = true;
                }
                if c.received + c.gap_events > before {
                    received.fetch_add(c.received + c.gap_events - before, Ordering::Relaxed);
                    last_rx_ns = now_ns;
                    last_progress = Instant::now();
                }
                if drained || c.done() {
                    break;
                }
            }
            if c.done() {
                remaining -= 1;
            }
        }
        if last_progress.elapsed() > stall {
            break;
        }
    }
    let mut r = ClientResult {
        hist,
        received: 0,
        misrouted: 0,
        order_errors: 0,
        duplicates: 0,
        bytes: 0,
        lost: 0,
        last_rx_ns,
        cpu: thread_cpu_now(),
        resumes: 0,
        gaps: 0,
        redelivered: 0,
        acks_sent: 0,
    };
    for c in conns.iter().map(|c| &c.v) {
        r.received += c.received;
        r.misrouted += c.misrouted;
        r.order_errors += c.order_errors;
        r.duplicates += c.duplicates;
        r.bytes += c.bytes;
        r.lost += c.expected.saturating_sub(c.received);
        r.resumes += c.resumes;
        r.gaps += c.gaps;
        r.redelivered += c.redelivered;
        r.acks_sent += c.acks_sent;
    }
    r
}

/// Reads the unsigned integer at the start of `b`; returns it and the digits consumed.
fn uint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &d in b.iter().take(20) {
        if !d.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Reads the fields the client checks, walking the frame in the order the server writes it:
/// `{"seq":N,"type":"T","ts":N,"run_id":"R","data":{"to":N,"p":N,"n":N[,"sched":N],...}}`.
/// Type names and run ids in the bench contain no escapes, so a string ends at the next quote.
struct Scanner;

/// What the scanner read from one frame.
struct Fields {
    seq: u64,
    ts: u64,
    /// The event asked for an ack.
    ack: bool,
    to: u64,
    p: u64,
    n: u64,
    sched: Option<u64>,
}

/// Skips a JSON string whose opening quote was already consumed; returns what follows it.
fn after_string(b: &[u8]) -> Option<&[u8]> {
    memchr::memchr(b'"', b).map(|i| &b[i + 1..])
}

impl Scanner {
    /// `None` if the frame does not have the bench's layout.
    fn scan(&self, f: &[u8]) -> Option<Fields> {
        let rest = f.strip_prefix(b"{\"seq\":")?;
        let (seq, k) = uint(rest)?;
        let rest = after_string(rest[k..].strip_prefix(b",\"type\":\"")?)?;
        let rest = rest.strip_prefix(b",\"ts\":")?;
        let (ts, k) = uint(rest)?;
        let (ack, rest) = match rest[k..].strip_prefix(b",\"ack\":true") {
            Some(r) => (true, r),
            None => (false, &rest[k..]),
        };
        let rest = after_string(rest.strip_prefix(b",\"run_id\":\"")?)?;
        let rest = rest.strip_prefix(b",\"data\":{\"to\":")?;
        let (to, k) = uint(rest)?;
        let rest = rest[k..].strip_prefix(b",\"p\":")?;
        let (p, k) = uint(rest)?;
        let rest = rest[k..].strip_prefix(b",\"n\":")?;
        let (n, k) = uint(rest)?;
        let sched = rest[k..]
            .strip_prefix(b",\"sched\":")
            .and_then(uint)
            .map(|(v, _)| v);
        Some(Fields {
            seq,
            ts,
            ack,
            to,
            p,
            n,
            sched,
        })
    }
}

fn check_frame(
    c: &mut Verify,
    sc: &Scanner,
    payload: &[u8],
    now_ns: u64,
    hist: &mut Histogram<u64>,
    sample: &mut u32,
    scratch: &mut Vec<u8>,
) {
    if c.awaiting_hello {
        c.awaiting_hello = false;
        if !hello_agrees(c, payload) {
            c.order_errors += 1;
        }
        return;
    }
    if let Some(count) = redelivery_count(payload) {
        c.redelivering = count;
        return;
    }
    let Some(f) = sc.scan(payload) else {
        match gap_range(payload) {
            // Everything up to `to` is accounted for: either received or announced lost.
            Some((from, to)) if from == c.last_seq + 1 && to >= from => {
                c.gaps += 1;
                c.gap_events += to - from + 1;
                c.last_seq = to;
                c.after_gap = true;
            }
            _ => c.order_errors += 1,
        }
        return;
    };
    if c.redelivering > 0 {
        // An unacked event this client already had (it did not ack it before reconnecting).
        c.redelivering -= 1;
        c.redelivered += 1;
        if !f.ack || f.seq > c.last_seq || f.to != u64::from(c.user) {
            c.order_errors += 1;
        }
        return;
    }
    if f.seq <= c.last_seq {
        c.duplicates += 1;
        return;
    }
    c.unacked += u32::from(f.ack);
    if f.seq != c.last_seq + 1 {
        c.order_errors += 1;
    }
    c.last_seq = f.seq;
    c.received += 1;
    if f.to != u64::from(c.user) {
        c.misrouted += 1;
        return;
    }
    match c.last_n.get_mut(f.p as usize) {
        Some(last) if f.n == *last + 1 || (c.after_gap && f.n > *last) => *last = f.n,
        Some(last) => {
            c.order_errors += 1;
            *last = f.n;
        }
        None => c.order_errors += 1,
    }
    let from = f.sched.unwrap_or(f.ts);
    let _ = hist.record(now_ns.saturating_sub(from).max(1));
    *sample = sample.wrapping_add(1);
    if *sample % 64 == 0 && !full_parse_agrees(payload, f.seq, c.user, scratch) {
        c.order_errors += 1;
    }
}

/// Checks a `hello` frame: on the first connection it records the epoch; on a resume the epoch
/// must be the same (this run never drops streams) and `last_seq` at least the cursor.
fn hello_agrees(c: &mut Verify, payload: &[u8]) -> bool {
    let Some(rest) = payload.strip_prefix(b"{\"type\":\"hello\",\"epoch\":\"") else {
        return false;
    };
    let Some(epoch) = rest.get(..16).and_then(|e| <[u8; 16]>::try_from(e).ok()) else {
        return false;
    };
    let last = rest[16..]
        .strip_prefix(b"\",\"last_seq\":")
        .and_then(uint)
        .map(|(v, _)| v);
    let same = *c.epoch.get_or_insert(epoch) == epoch;
    same && last.is_some_and(|l| l >= c.last_seq)
}

/// `count` of a `redelivery` frame.
fn redelivery_count(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"type\":\"redelivery\",\"count\":")?;
    uint(rest).map(|(v, _)| v)
}

/// `from` and `to` of a `gap` frame.
fn gap_range(payload: &[u8]) -> Option<(u64, u64)> {
    if !payload.starts_with(b"{\"type\":\"gap\",") {
        return None;
    }
    let num = |key: &[u8]| {
        let at = memchr::memmem::find(payload, key)? + key.len();
        uint(&payload[at..]).map(|(v, _)| v)
    };
    Some((num(b"\"from\":")?, num(b"\"to\":")?))
}

/// Parses the whole frame with simd-json and checks it against what the scanner read.
fn full_parse_agrees(payload: &[u8], seq: u64, user: u32, scratch: &mut Vec<u8>) -> bool {
    use simd_json::prelude::*;
    scratch.clear();
    scratch.extend_from_slice(payload);
    let Ok(v) = simd_json::to_borrowed_value(scratch) else {
        return false;
    };
    let seq_ok = v.get("seq").and_then(|s| s.as_u64()) == Some(seq);
    let to_ok = v
        .get("data")
        .and_then(|d| d.get("to"))
        .and_then(|t| t.as_u64())
        == Some(u64::from(user));
    let typed = v
        .get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| TYPES.iter().any(|x| x.as_str() == t));
    seq_ok && to_ok && typed && v.get("ts").and_then(|t| t.as_u64()).is_some()
}

/// CPU seconds used so far by the calling thread.
/// A histogram of nanoseconds from 1 ns to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn thread_cpu_now() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// User + system CPU seconds of this process.
fn process_cpu_seconds() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds of this process's reactor threads, from /proc (Linux only; 0 elsewhere).
fn reactor_cpu_seconds() -> f64 {
    thread_cpu_seconds("floodgate-react")
}

/// CPU seconds of this process's threads whose name starts with `prefix` (Linux only).
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    let mut total = 0.0;
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (ticks(11) + ticks(12)) / hz;
    }
    total
}
