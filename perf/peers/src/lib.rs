//! The workload every peer serves, so they are compared on the same work: once `connections`
//! WebSocket clients are connected, `events` events go out round-robin (event `k` to connection
//! `k % connections`), each a JSON text frame of about `payload_bytes` bytes:
//! `{"seq":S,"type":"agent_thinking","ts":T,"data":{"pad":"xx.."}}`, where `seq` counts from 1
//! per connection and `ts` is the unix time in nanoseconds when the event was produced.
//! floodgate's own frames have the same members (it writes `seq`, `type`, `ts` and `data`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Command-line arguments shared by every peer: `--port P --connections N --events E
/// [--payload-bytes B]`.
#[derive(Debug, Clone)]
pub struct Workload {
    pub port: u16,
    pub connections: usize,
    pub events: u64,
    pub payload_bytes: usize,
}

impl Workload {
    /// Parses the process arguments; exits with a usage message on error.
    pub fn from_args() -> Workload {
        let mut w = Workload {
            port: 0,
            connections: 64,
            events: 2_000_000,
            payload_bytes: 150,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let v = args.get(i + 1).cloned().unwrap_or_default();
            match args[i].as_str() {
                "--port" => w.port = v.parse().unwrap_or_else(|_| usage()),
                "--connections" => w.connections = v.parse().unwrap_or_else(|_| usage()),
                "--events" => w.events = v.parse().unwrap_or_else(|_| usage()),
                "--payload-bytes" => w.payload_bytes = v.parse().unwrap_or_else(|_| usage()),
                _ => usage(),
            }
            i += 2;
        }
        if w.port == 0 || w.connections == 0 {
            usage();
        }
        w
    }

    /// Events for connection `c`.
    pub fn share(&self, c: usize) -> u64 {
        let n = self.connections as u64;
        self.events / n + u64::from((c as u64) < self.events % n)
    }

    /// The padding that makes a frame about `payload_bytes` long.
    pub fn pad(&self) -> String {
        "x".repeat(self.payload_bytes.saturating_sub(80).max(1))
    }
}

fn usage() -> ! {
    eprintln!("usage: PEER --port P [--connections N] [--events E] [--payload-bytes B]");
    std::process::exit(2)
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Appends the frame text for event `seq` to `out`.
pub fn frame(out: &mut String, seq: u64, ts: u64, pad: &str) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "{{\"seq\":{seq},\"type\":\"agent_thinking\",\"ts\":{ts},\"data\":{{\"pad\":\"{pad}\"}}}}"
    );
}

/// Prints the line the compare script waits for.
pub fn ready(name: &str, port: u16) {
    println!("{name} listening on 127.0.0.1:{port}");
}
