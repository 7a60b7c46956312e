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

mod client;
mod cpu;
mod produce;
mod raw;
mod verify;
mod workload;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gateway::Gateway;
use crate::record::unix_ns;
use crate::redis_engine::server as redis_server;
use client::{client_loop, open_ws, Chaos, ClientConn};
use cpu::{process_cpu_seconds, reactor_cpu_seconds};
use floodgate_load::LatencyUs;
use produce::{produce, Server, Sink};
use workload::new_histogram;

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
    /// Every [`CHAOS_INTERVAL`](workload::CHAOS_INTERVAL), drop a random [`CHAOS_FRACTION`](workload::CHAOS_FRACTION) of the connections mid-stream
    /// and reconnect them with their last cursor (`?since=&epoch=`).
    pub chaos: bool,
    /// Keep every event in a durable spool in this directory (`None` = memory history only).
    pub spool_dir: Option<std::path::PathBuf>,
    /// The spool's fsync policy.
    pub spool_fsync: crate::spool::FsyncPolicy,
    /// Give up when no event arrives for this long.
    pub stall_timeout: Duration,
    /// Where the gateway sequences events.
    pub engine: crate::config::Engine,
    /// The Redis of the Redis engine (`None`: the bench starts a `redis-server` of its own).
    pub redis_url: Option<String>,
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
            engine: crate::config::Engine::Local,
            redis_url: None,
            progress: true,
        }
    }
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
    pub latency_us: LatencyUs,
    /// Whether latency is measured from the scheduled send time (open loop) or the emit time.
    pub latency_from: &'static str,
    /// With `--rate`: how late events left the generator against their schedule. This lag is
    /// part of `latency_us` (which counts from the schedule); it is reported apart so a slow
    /// generator is never mistaken for a slow server. `null` without `--rate`.
    pub schedule_lag_us: Option<LatencyUs>,
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
    /// `{"ack":N}` messages the clients sent (every [`ACK_EVERY`](workload::ACK_EVERY) events that asked for one).
    pub acks_sent: u64,
    /// Whether the gateway kept a durable spool, the bytes it wrote to it, and the events
    /// replayed from it (part of `replayed`: older than memory history).
    pub spool: bool,
    pub spool_bytes_written: u64,
    pub replayed_from_spool: u64,
    /// `local` or `redis`: where the gateway sequenced the events.
    pub engine: &'static str,
    /// Redis engine: round trips (script runs) that sequenced the run's events.
    pub redis_round_trips: u64,
    /// Redis engine: events per round trip.
    pub events_per_round_trip: f64,
    /// Redis engine: CPU seconds the Redis server used during the run (its `INFO cpu`),
    /// and per million events.
    pub redis_cpu_seconds: f64,
    pub redis_cpu_seconds_per_million_events: f64,
}

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
        if self.engine == "redis" {
            out.push_str(&format!(
                "redis          {} round trips, {:.0} events per round trip, {:.2} s of Redis CPU ({:.2} s per million events)\n",
                self.redis_round_trips,
                self.events_per_round_trip,
                self.redis_cpu_seconds,
                self.redis_cpu_seconds_per_million_events
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
    let redis = BenchRedis::start(opts)?;
    let mut server = match opts.server {
        ServerKind::Floodgate => Server::Gateway({
            let mut b = Gateway::builder();
            if let Some(r) = &redis {
                b = b
                    .engine(crate::config::Engine::Redis)
                    .redis_url(&r.url)
                    .redis_prefix(r.prefix.clone());
            }
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
    let redis_cpu0 = redis.as_ref().map(BenchRedis::cpu_seconds).transpose()?;

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
    let redis_cpu = match (&redis, redis_cpu0) {
        (Some(r), Some(before)) => r.cpu_seconds()? - before,
        _ => 0.0,
    };
    let mut redis_stats = crate::metrics::RedisStats::default();
    let s = match server {
        Server::Gateway(gw) => {
            let m = gw.metrics();
            redis_stats = m.redis;
            gw.shutdown()?;
            m.stats
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
        latency_us: LatencyUs::of(&hist),
        schedule_lag_us: (opts.rate > 0).then(|| LatencyUs::of(&lag)),
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
        engine: if redis.is_some() { "redis" } else { "local" },
        redis_round_trips: redis_stats.batches_sequenced,
        events_per_round_trip: if redis_stats.batches_sequenced == 0 {
            0.0
        } else {
            redis_stats.events_sequenced as f64 / redis_stats.batches_sequenced as f64
        },
        redis_cpu_seconds: redis_cpu,
        redis_cpu_seconds_per_million_events: redis_cpu * 1e6 / opts.events as f64,
    })
}

/// The Redis of a `--engine redis` run: the one given, or a `redis-server` the bench started;
/// the run's keys go under a prefix of its own.
struct BenchRedis {
    url: String,
    prefix: String,
    /// The server the bench started (stopped when dropped).
    _own: Option<redis_server::RedisServer>,
}

impl BenchRedis {
    fn start(opts: &BenchOptions) -> Result<Option<BenchRedis>, crate::error::Error> {
        if opts.engine != crate::config::Engine::Redis {
            return Ok(None);
        }
        let prefix = format!("bench-{}-{}", std::process::id(), unix_ns());
        let (url, own) = match &opts.redis_url {
            Some(url) => (url.clone(), None),
            None => {
                let port = redis_server::free_port();
                let server =
                    redis_server::RedisServer::launch(&prefix, port, false).map_err(|e| {
                        crate::error::Error::Io(io::Error::new(
                            e.kind(),
                            format!(
                                "--engine redis without --redis-url starts a redis-server: {e}"
                            ),
                        ))
                    })?;
                (server.url(), Some(server))
            }
        };
        Ok(Some(BenchRedis {
            url,
            prefix,
            _own: own,
        }))
    }

    /// CPU seconds the Redis server has used (user and system, from `INFO cpu`).
    fn cpu_seconds(&self) -> Result<f64, crate::error::Error> {
        let io_err = |e: redis::RedisError| crate::error::Error::Io(io::Error::other(e));
        let mut conn = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .map_err(io_err)?;
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query(&mut conn)
            .map_err(io_err)?;
        Ok(info
            .lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_sys:")
                    .or_else(|| l.strip_prefix("used_cpu_user:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum())
    }
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
    if o.redis_url.is_some() && o.engine != crate::config::Engine::Redis {
        return bad("redis-url", "needs --engine redis");
    }
    if o.engine == crate::config::Engine::Redis {
        if o.server != ServerKind::Floodgate {
            return bad("engine", "redis needs --server floodgate");
        }
        if o.spool_dir.is_some() {
            return bad(
                "spool",
                "is the local engine's: leave it out with --engine redis",
            );
        }
    }
    Ok(())
}
