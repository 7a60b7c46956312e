//! The producers: each emits its share of the events (open loop with `--rate`) into the
//! gateway's emitter or the raw-TCP floor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cpu::thread_cpu_now;
use super::raw;
use hdrhistogram::Histogram;

use super::workload::{new_histogram, Payload, TYPES};
use super::BenchOptions;
use crate::error::EmitError;
use crate::event::Event;
use crate::gateway::Gateway;
use crate::record::unix_ns;

/// The server side of a run.
pub(super) enum Server {
    Gateway(Gateway),
    Raw(raw::RawServer),
}

/// Where a producer sends its events.
pub(super) enum Sink {
    Emitter(crate::emitter::Emitter),
    Raw(raw::RawSink),
}

impl Sink {
    /// Sends one event; `Ok(false)` means the ring was full and the caller should retry.
    pub(super) fn send(&mut self, user: usize, name: &str, ev: Event<'_, Payload<'_>>) -> bool {
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
pub(super) fn produce(
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
