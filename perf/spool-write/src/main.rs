//! Puts 384 MiB (what `floodgate bench` spools for 2M events) into 64 MiB segment files, BATCH
//! bytes at a time (53,248: about one reactor pass of spool records on the peers workload;
//! `floodgate bench`'s passes are about 850 KB), in one of eight ways, and prints the time per
//! 200-byte record (the size of one spooled event in `floodgate bench`):
//!
//! - `write`: write(2) to a new file (what the spool did before 2026-12-01);
//! - `falloc-write`: the same, into a file fallocated to the segment size first;
//! - `keep-size-write`: the same, fallocated with FALLOC_FL_KEEP_SIZE, so the file's length
//!   stays that of its data and appends land in blocks already reserved (what the spool does);
//! - `mmap`: a new file fallocated and mapped, each page faulted in by the copy into it;
//! - `mmap-populate`: the same, with MADV_POPULATE_WRITE 4 MiB ahead of the copy;
//! - `write-cached`: write(2) over the files of the run before, whose pages are cached;
//! - `mmap-cached`: those files mapped (MAP_POPULATE) and copied into;
//! - `direct`: write(2) with O_DIRECT into a fallocated file, bypassing the page cache (the
//!   device's own copy, on a virtual machine the host's, is not on this thread).
//!
//! Prints wall time and this thread's CPU time (user + system), each per record: on a machine
//! whose cores are all busy, CPU time is what a spool costs the gateway.
//!
//! Usage: `spool-write MODE DIR [BATCH]` (BATCH bytes per write, default 53,248; a multiple of
//! 4096 for `direct`). The `-cached` modes need a run of another mode on DIR first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

const TOTAL: usize = 384 << 20;
const SEGMENT: usize = 64 << 20;
const RECORD: f64 = 200.0;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: spool-write MODE DIR [BATCH] (MODE: write, falloc-write, keep-size-write, mmap, mmap-populate, write-cached, mmap-cached, direct)");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let batch_len: usize = args
        .next()
        .map_or(53_248, |b| b.parse().expect("BATCH is a number"));
    let cached = mode.ends_with("-cached");
    if !cached {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir).expect("the directory");
    let batch = Aligned::new(batch_len);
    let batch = batch.bytes();
    let (start, cpu0) = (Instant::now(), cpu_ns());
    let mut written = 0;
    for n in 0.. {
        if written + batch.len() > TOTAL {
            break;
        }
        let path = dir.join(format!("{n}.seg"));
        let mut options = OpenOptions::new();
        if mode == "direct" {
            options.custom_flags(libc_o_direct());
        }
        let file = options
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("a segment");
        if cached && file.metadata().expect("metadata").len() < SEGMENT as u64 / 2 {
            eprintln!(
                "{}: run another mode on this directory first",
                path.display()
            );
            std::process::exit(2);
        }
        let room = SEGMENT.min(TOTAL - written);
        let fill = match mode.as_str() {
            "write" | "write-cached" => by_write(file, room, batch),
            "falloc-write" | "direct" => {
                allocate(&file);
                by_write(file, room, batch)
            }
            "keep-size-write" => {
                rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::KEEP_SIZE,
                    0,
                    SEGMENT as u64,
                )
                .expect("fallocate");
                by_write(file, room, batch)
            }
            "mmap" | "mmap-populate" | "mmap-cached" => {
                if !cached {
                    allocate(&file);
                }
                by_map(&file, room, batch, mode.as_str())
            }
            _ => {
                eprintln!("unknown mode {mode}");
                std::process::exit(2);
            }
        };
        written += fill;
    }
    let (took, cpu) = (start.elapsed(), cpu_ns() - cpu0);
    let records = written as f64 / RECORD;
    println!(
        "{mode} (batch {batch_len}): wall {:.1} ns, cpu {:.1} ns per {RECORD} B record",
        took.as_nanos() as f64 / records,
        cpu as f64 / records
    );
}

/// This process's CPU time, user and system, in nanoseconds.
fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// O_DIRECT, for `OpenOptionsExt::custom_flags`.
fn libc_o_direct() -> i32 {
    rustix::fs::OFlags::DIRECT.bits() as i32
}

/// A buffer aligned to 4096 bytes, as O_DIRECT needs: a Vec of page-sized blocks.
struct Aligned {
    blocks: Vec<Block>,
    len: usize,
}

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; 4096]);

impl Aligned {
    fn new(len: usize) -> Aligned {
        Aligned {
            blocks: vec![Block([0x5a; 4096]); len.div_ceil(4096)],
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        let all = self.blocks.as_slice();
        // SAFETY: `Block` is 4096 plain bytes with no padding (size == align == 4096), so the
        // blocks are one contiguous run of initialised bytes, of which `len` are used.
        unsafe { std::slice::from_raw_parts(all.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Reserves the whole segment, as a mapped spool must (a store into a hole on a full disk is
/// a SIGBUS).
fn allocate(file: &File) {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, SEGMENT as u64)
        .expect("fallocate");
}

fn by_write(mut file: File, room: usize, batch: &[u8]) -> usize {
    let mut at = 0;
    while at + batch.len() <= room {
        file.write_all(batch).expect("write");
        at += batch.len();
    }
    at
}

fn by_map(file: &File, room: usize, batch: &[u8], mode: &str) -> usize {
    let mut options = memmap2::MmapOptions::new();
    options.len(SEGMENT);
    if mode == "mmap-cached" {
        options.populate();
    }
    // SAFETY: the file is this program's own, fallocated (or left by the run before) to at least
    // SEGMENT bytes, and nothing truncates it while it is mapped, so every page of the mapping
    // is backed by the file.
    let mut map = unsafe { options.map_mut(file) }.expect("mmap");
    let (mut at, mut populated) = (0, 0);
    while at + batch.len() <= room {
        if mode == "mmap-populate" && at + batch.len() > populated {
            let len = (4 << 20).min(SEGMENT - populated);
            map.advise_range(memmap2::Advice::PopulateWrite, populated, len)
                .expect("MADV_POPULATE_WRITE");
            populated += len;
        }
        map[at..at + batch.len()].copy_from_slice(batch);
        at += batch.len();
    }
    at
}
