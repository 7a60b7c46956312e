//! Every fuzz target (`floodgate::fuzz::TARGETS`: each parser that sees bytes from outside, and
//! `floodgate_load::fuzz::server_frames`, the load client's reading of a server's frames) on
//! stable: the corpus in `fuzz/corpus/<target>/` (seeds and every input a fuzzer ever found a
//! bug with), then random mutations of it for `FLOODGATE_TEST_FUZZ_SECONDS` per target
//! (default 1; `scripts/fuzz` gives 60 where libFuzzer is missing). An input that panics is
//! saved under `target/fuzz-failures/` and named in the failure. The seed is printed;
//! `FLOODGATE_TEST_FUZZ_SEED` replays a run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// xorshift64*: reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that tend to matter to these parsers.
const DICT: &[&[u8]] = &[
    b"[[[[[[[[",
    b"]]]]",
    b"{\"",
    b"\":",
    b"\r\n",
    b"\r\n\r\n",
    b"\\u0000",
    b"\\\"",
    b"18446744073709551616",
    b"-1",
    b"1e999",
    b"\xff\xfe",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Origin: null\r\n",
    b"\"kty\":\"EC\",\"crv\":\"P-256\"",
    b"\"kid\":\"a\"",
    b"\"use\":\"enc\"",
    b"\x81\x7f\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x88\x80\x00\x00\x00\x00",
    b"\"type\":\"auth\"",
    b"idempotency_key",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    if !seeds.is_empty() {
        out.extend_from_slice(&seeds[rng.below(seeds.len())]);
    }
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let t = DICT[rng.below(DICT.len())];
                out.splice(at..at, t.iter().copied());
            }
            4 if !out.is_empty() => {
                // Repeat a slice (deep nesting, long headers, many frames).
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let piece = out[start..end].to_vec();
                for _ in 0..1 + rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out.truncate(1 << 16);
}

fn run(target: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{target}-{:016x}", fxhash(input)));
        std::fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {target} panicked on an input saved at {} (add it to fuzz/corpus/{target}/ once fixed)",
            path.display()
        );
    }
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Stack for the targets: the gateway's own threads parse with deep recursion allowed only up
/// to the documented depths, which a debug build needs more stack for than a test thread's
/// 2 MiB (ingest threads have 16 MiB).
const STACK: usize = 64 << 20;

#[test]
fn every_target_survives_its_corpus_and_random_mutations_of_it() {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(fuzz_all)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn fuzz_all() {
    let secs: f64 = std::env::var("FLOODGATE_TEST_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = std::env::var("FLOODGATE_TEST_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fuzz seed {seed} ({secs} s per target)");
    let tmp = std::env::temp_dir().join(format!("floodgate-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::env::set_var("FLOODGATE_TEST_FUZZ_DIR", &tmp);
    // The gateway's parsers, and the load client's parser of what a measured server sends.
    let load_targets: [(&str, floodgate::fuzz::Target); 1] =
        [("server_frames", floodgate_load::fuzz::server_frames)];
    for (name, f) in floodgate::fuzz::TARGETS.iter().copied().chain(load_targets) {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seed");
        for s in &seeds {
            run(name, f, s);
        }
        let mut rng = Rng(seed ^ fxhash(name.as_bytes()));
        let mut input = Vec::new();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut execs = 0u64;
        while Instant::now() < deadline {
            mutate(&mut rng, &seeds, &mut input);
            run(name, f, &input);
            execs += 1;
        }
        eprintln!(
            "fuzz {name}: {} corpus inputs, {execs} random executions",
            seeds.len()
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
