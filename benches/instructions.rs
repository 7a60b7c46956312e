//! Instruction counts of the hot paths, for `floodgate perf-gate` (which runs this under
//! valgrind's callgrind: instructions are the same run after run on a busy shared machine,
//! where wall-clock time is not).
//!
//! `instructions <path> <ops>` sets the path up, then runs `ops` operations of it. The gate runs
//! each path twice, with `ops = 0` and `ops = N`, and divides the difference by N: setup and
//! process start cancel out, leaving instructions per operation. Without arguments (as
//! `cargo test --benches` runs it) every path runs a few operations, as a smoke test.
//!
//! Paths:
//! - `ring`: push one 160-byte record into an SPSC ring and pop it;
//! - `encode`: encode one agent_thinking event body (as `emit` does);
//! - `route`: route one event to its user's connection in the sans-IO core, with resume
//!   history, and flush every 64 events (as a reactor pass does);
//! - `client_parse`: take one 146-byte server frame into the read buffer, decode it and read
//!   its `/seq` and `/ts` (as `floodgate load` does), in reads of 64 frames.
use std::hint::black_box;

use floodgate::__bench::{channel, encode_body, record, RouteBench};

const PATHS: [&str; 4] = ["ring", "encode", "route", "client_parse"];

fn run(path: &str, ops: u64) {
    match path {
        "ring" => {
            let (mut p, mut c) = channel(1 << 16);
            let rec = [7u8; 160];
            for _ in 0..ops {
                p.push(&[&rec]).expect("room");
                c.drain(1, |r| {
                    black_box(r);
                });
            }
        }
        "encode" => {
            let data = serde_json::json!({"delta": "Looking at the logs for the failing request", "step": 17});
            let ev = floodgate::Event::agent_thinking("run-0017", &data);
            let mut out = Vec::with_capacity(512);
            for i in 0..ops {
                out.clear();
                encode_body(&ev, 1_763_700_000_000_000_000 + i, &mut out);
                black_box(&out);
            }
        }
        "route" => {
            let body = br#""type":"agent_thinking","ts":1763700000000000000,"run_id":"run-0017","data":{"to":17,"p":0,"n":1,"text":"xxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
            let users = 64;
            let recs: Vec<Vec<u8>> = (0..users).map(|i| record(&format!("u{i}"), body)).collect();
            let mut rb = RouteBench::new(users, true);
            // Warm up: buffers grown and pooled before counting.
            for r in &recs {
                rb.route(r);
            }
            rb.flush();
            for i in 0..ops {
                rb.route(&recs[(i % users as u64) as usize]);
                if i % 64 == 63 {
                    black_box(rb.flush());
                }
            }
        }
        "client_parse" => {
            let frame = br#"{"seq":12345,"type":"agent_thinking","ts":1795337896774470448,"data":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
            let mut one = vec![0x81, 126];
            one.extend_from_slice(&(frame.len() as u16).to_be_bytes());
            one.extend_from_slice(frame);
            // 64 frames per read, as from a socket; `ops` is counted in frames.
            let chunk: Vec<u8> = std::iter::repeat_n(&one[..], 64)
                .flatten()
                .copied()
                .collect();
            let mut cp = ClientParse::new(chunk.len());
            for _ in 0..ops / 64 {
                black_box(cp.parse(black_box(&chunk)));
            }
        }
        other => {
            eprintln!("unknown path `{other}`; paths: {}", PATHS.join(", "));
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [path, ops] => run(path, ops.parse().expect("ops is a number")),
        _ => {
            // `cargo bench`/`cargo test --benches` run: a smoke test of every path.
            for p in PATHS {
                run(p, 100);
            }
        }
    }
}

/// The load client's per-frame work: the frame reader, then the `/seq` and `/ts` members
/// by JSON pointer, read in one pass.
pub struct ClientParse {
    reader: floodgate_wsclient::FrameReader,
    fields: floodgate_load::Fields<2>,
}

impl ClientParse {
    /// A reader whose buffer takes `bytes` at once (allocated here, not per parse).
    pub fn new(bytes: usize) -> Self {
        ClientParse {
            reader: floodgate_wsclient::FrameReader::new(Vec::new(), bytes + 1024),
            fields: floodgate_load::Fields::new(
                ["/seq", "/ts"].map(|p| Some(floodgate_load::Pointer::parse(p).expect("valid"))),
            ),
        }
    }

    /// Reads `bytes` (whole server frames) as if from a socket and decodes every frame;
    /// returns a sum of what was read, so nothing is optimised away.
    pub fn parse(&mut self, mut bytes: &[u8]) -> u64 {
        let fields = &self.fields;
        let mut sum = 0u64;
        while !bytes.is_empty() {
            self.reader.fill(&mut bytes).expect("reading a slice");
            self.reader
                .frames(|_, p| {
                    for raw in fields.raw(p) {
                        sum = sum.wrapping_add(raw.and_then(floodgate_load::u64_of).unwrap_or(0));
                    }
                })
                .expect("valid frames");
        }
        sum
    }
}
