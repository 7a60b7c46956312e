//! The durable spool: the disk tier behind in-memory history. One directory per shard holding
//! append-only segment files of CRC-checked records (format in [`crate::core::durable`]).
//!
//! This module does file I/O and nothing else: the core decides what to spool (it encodes the
//! records), the reactor calls [`Spool::write`] with them once per batch of routed events,
//! *before* any socket write of the same pass, so no client ever sees an event the spool does
//! not have. Replays read it back through [`ColdTier`].
//!
//! Layout of `spool_dir`:
//! - `meta`: `floodgate-spool 1` and the shard count it was written with (users are placed on
//!   shards by hash, so a different count cannot reuse the spool);
//! - `shard-<k>/<start>.seg`: segments, named by the logical position of their first byte
//!   (20 digits). Positions only grow; a write that failed leaves a hole between segments.
//! - `shard-<k>/healthy-<boot id>`: present while every write of this run has succeeded. A run
//!   that lost a write removes it, and the next start gives every stream of that shard a new
//!   epoch, since it can no longer prove that `(epoch, seq)` names one event.

mod files;
mod read;
mod recover;
mod settings;
mod sync;

use files::{boot_id, private_dir_all, private_file, segment_path, sync_dir, unix_secs};
use recover::{check_meta, holds_a_record, record_complete, record_reaches_end, recover_segment};
use settings::io_err;
pub(crate) use settings::SpoolConfig;
pub use settings::{FsyncPolicy, SpoolError};
use sync::Syncer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::core::durable::{Bad, ColdTier, Recovery};

#[derive(Debug)]
struct Segment {
    start: u64,
    len: u64,
    /// Unix seconds of the last write (the file's mtime after a restart).
    last_write: u64,
}

/// Counters the reactor copies into its stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SpoolStats {
    pub bytes_written: u64,
    pub write_errors: u64,
    pub fsyncs: u64,
    pub segments_deleted: u64,
    pub bytes: u64,
}

/// One shard's spool.
pub(crate) struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    file: Option<File>,
    /// Logical position after the last byte written.
    head: u64,
    /// Start a new segment at the next write (after a failed one).
    roll: bool,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
    unsynced: bool,
    last_sync: Instant,
    healthy_marker: Option<PathBuf>,
    /// A read handle on one segment (scans mostly stay in one).
    reader: Option<(u64, File)>,
    /// The thread that syncs for `fsync = <interval>`.
    syncer: Option<Syncer>,
    scan_buf: Vec<u8>,
    /// What `read_at` read last: bytes of one segment from logical position `win_pos` on.
    win: Vec<u8>,
    win_pos: u64,
    pub stats: SpoolStats,
}

impl Spool {
    /// Opens (or creates) shard `shard`'s spool and recovers what it holds: torn tails are
    /// cut, a corrupted record refuses the start unless `repair` is set, and each user's
    /// stream (epoch, last seq, checkpoints, unacked events) is rebuilt.
    pub(crate) fn open(
        cfg: &SpoolConfig,
        shard: usize,
        shards: usize,
        checkpoint_spacing: u64,
    ) -> Result<(Spool, Recovery), SpoolError> {
        check_meta(&cfg.dir, shards)?;
        let dir = cfg.dir.join(format!("shard-{shard}"));
        private_dir_all(&dir).map_err(io_err(&dir))?;
        let boot = boot_id();
        let mut markers = Vec::new();
        let mut starts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(b) = name.strip_prefix("healthy-") {
                markers.push(b.to_owned());
            } else if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                starts.push(n);
            }
        }
        starts.sort_unstable();
        // Continuity holds if the last run lost no write and what it wrote survived: a process
        // crash keeps the page cache (same boot); a reboot keeps only what was synced.
        let continuity = starts.is_empty()
            || markers.contains(&boot)
            || (cfg.fsync == FsyncPolicy::Always && !markers.is_empty());
        let mut rec = Recovery::default();
        let mut segments = VecDeque::new();
        let last = starts.len().saturating_sub(1);
        for (i, &start) in starts.iter().enumerate() {
            let path = segment_path(&dir, start);
            let mut data = fs::read(&path).map_err(io_err(&path))?;
            // Positions are contiguous: a segment ends where the next begins. Bytes past that
            // are a write that failed and could not be cut back (the writer then started the
            // next segment at this one's valid end): cut them.
            let mut cut_to = None;
            if let Some(&next) = starts.get(i + 1) {
                let expected = next.saturating_sub(start) as usize;
                if data.len() > expected {
                    tracing::warn!(file = %path.display(), bytes = data.len() - expected, "spool: cutting the tail of a failed write");
                    rec.torn_bytes += (data.len() - expected) as u64;
                    data.truncate(expected);
                    cut_to = Some(expected as u64);
                }
            }
            let (valid, bad) = recover_segment(&data, start, cfg, checkpoint_spacing, &mut rec);
            if let Some(kind) = bad {
                let after = data.len() as u64 - valid;
                // An interrupted last write is cut; damage anywhere else refuses the start. A
                // record whose bytes are all there but whose checksum fails is damage too: a
                // killed process leaves a record cut short, never a whole one with wrong bytes.
                // (Only after a reboot, where the page cache may have lost any page, is it taken
                // for a torn write: every stream then starts a new epoch anyway.)
                let rest = &data[valid as usize..];
                let torn = i == last
                    && (kind == Bad::Truncated
                        || (record_reaches_end(rest) && (!record_complete(rest) || !continuity)))
                    && !holds_a_record(rest);
                if torn {
                    tracing::warn!(file = %path.display(), bytes = after, "spool: cutting a torn tail");
                    rec.torn_bytes += after;
                } else if cfg.repair {
                    tracing::error!(file = %path.display(), offset = valid, bytes = after, "spool: cutting at a corrupted record (spool_repair)");
                    rec.repaired_bytes += after;
                } else {
                    return Err(SpoolError::Corrupt {
                        path,
                        offset: valid,
                        after,
                    });
                }
                cut_to = Some(valid);
            }
            if let Some(len) = cut_to {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            let mtime = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            rec.head = start + valid;
            segments.push_back(Segment {
                start,
                len: valid,
                last_write: mtime,
            });
        }
        // A repair drops records that clients may have received: `seq` numbers would repeat.
        let continuity = continuity && rec.repaired_bytes == 0;
        if !continuity {
            rec.discarded_streams = rec.streams.len();
            tracing::warn!(
                dir = %dir.display(),
                streams = rec.discarded_streams,
                "spool: a failed fsync in the last run, a restart of the machine without \
                 fsync = always, or a repair: continuity cannot be proven, so every stream of \
                 this shard starts a new epoch"
            );
            rec.carried = rec
                .streams
                .drain()
                .filter(|(_, s)| !s.unacked.is_empty())
                .map(|(user, s)| (user, s.unacked.into_iter().map(|(_, f)| f).collect()))
                .collect();
            rec.carried.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        for b in markers {
            let _ = fs::remove_file(dir.join(format!("healthy-{b}")));
        }
        let marker = dir.join(format!("healthy-{boot}"));
        private_file(&marker).map_err(io_err(&marker))?;
        sync_dir(&dir).map_err(io_err(&dir))?;
        let syncer = match cfg.fsync {
            FsyncPolicy::Interval(_) => Some(Syncer::start(shard).map_err(io_err(&dir))?),
            _ => None,
        };
        let mut spool = Spool {
            dir,
            cfg: cfg.clone(),
            segments,
            file: None,
            head: rec.head,
            roll: false,
            failing: false,
            unsynced: false,
            last_sync: Instant::now(),
            syncer,
            healthy_marker: Some(marker),
            reader: None,
            scan_buf: Vec::new(),
            win: Vec::new(),
            win_pos: 0,
            stats: SpoolStats::default(),
        };
        spool.stats.bytes = spool.segments.iter().map(|s| s.len).sum();
        if let Some(seg) = spool.segments.back() {
            if seg.len < spool.cfg.segment_bytes {
                let path = segment_path(&spool.dir, seg.start);
                spool.file = Some(
                    OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(io_err(&path))?,
                );
            }
        }
        Ok((spool, rec))
    }

    /// Appends `bytes`: whole records, encoded by the core at positions from the spool's head
    /// on. `Ok` when they are in the file (and synced, with `fsync = always`). On an error
    /// nothing was taken: the segment is cut back to its last whole record, and the caller
    /// keeps the bytes, holds back the events they carry, and tries again later. The next try
    /// starts a new segment, which gets past a file that cannot grow any more.
    pub(crate) fn write(&mut self, bytes: &[u8], now: Instant) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let result = self.append(bytes).and_then(|()| match self.cfg.fsync {
            FsyncPolicy::Always => self.sync_or_cut(bytes.len()),
            _ => Ok(()),
        });
        if let Err(e) = result {
            self.stats.write_errors += 1;
            self.roll = true;
            if !self.failing {
                self.failing = true;
                tracing::error!(dir = %self.dir.display(), error = %e, "spool write failed: holding back new events until it succeeds (retrying)");
            }
            return Err(e);
        }
        if self.failing {
            self.failing = false;
            tracing::info!(dir = %self.dir.display(), "spool writes again");
        }
        self.head += bytes.len() as u64;
        self.stats.bytes_written += bytes.len() as u64;
        self.stats.bytes += bytes.len() as u64;
        if let FsyncPolicy::Interval(d) = self.cfg.fsync {
            self.unsynced = true;
            if now >= self.last_sync + d {
                self.interval_sync(now);
            }
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.len >= self.cfg.segment_bytes);
        let empty_at_head = self
            .segments
            .back()
            .is_some_and(|s| s.len == 0 && s.start == self.head);
        if self.file.is_some() && empty_at_head {
            // A segment started by a try that failed: use it.
            self.roll = false;
        } else if self.file.is_none() || self.roll || full {
            if let Some(f) = self.file.take() {
                if self.cfg.fsync != FsyncPolicy::Never {
                    if let Err(e) = f.sync_data() {
                        self.fsync_failed(&e);
                    }
                }
            }
            let path = segment_path(&self.dir, self.head);
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            if let Err(e) = reserve(&f, self.cfg.segment_bytes) {
                // No room for a whole segment: this try fails before taking anything, and
                // the next one creates the segment again.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            if self.cfg.fsync != FsyncPolicy::Never {
                sync_dir(&self.dir)?;
            }
            self.segments.push_back(Segment {
                start: self.head,
                len: 0,
                last_write: unix_secs(),
            });
            self.file = Some(f);
            self.roll = false;
        }
        let f = self.file.as_mut().expect("opened above");
        let seg = self.segments.back_mut().expect("pushed above");
        debug_assert_eq!(
            seg.start + seg.len,
            self.head,
            "records are written in order"
        );
        if let Err(e) = f.write_all(bytes) {
            // Cut back to the last whole record so the segment stays readable. If even that
            // fails, the next segment starts at this one's valid end, which is how recovery
            // tells such a tail from damage.
            if f.set_len(seg.len).is_err() {
                self.file = None;
            }
            return Err(e);
        }
        seg.len += bytes.len() as u64;
        seg.last_write = unix_secs();
        Ok(())
    }

    /// `fsync = always`: syncs the write of `len` bytes just made, or cuts it off again.
    fn sync_or_cut(&mut self, len: usize) -> io::Result<()> {
        let f = self.file.as_ref().expect("just written");
        self.stats.fsyncs += 1;
        if let Err(e) = f.sync_data() {
            let seg = self.segments.back_mut().expect("just written");
            seg.len -= len as u64;
            if f.set_len(seg.len).is_err() {
                self.file = None;
            }
            return Err(e);
        }
        Ok(())
    }

    /// `fsync = <interval>`: has what was written since the last sync synced by the syncer
    /// thread, so an `fdatasync` on a busy disk never stalls the reactor. If the syncer is
    /// still busy with the last one, this one waits for the next interval.
    fn interval_sync(&mut self, now: Instant) {
        self.last_sync = now;
        if !std::mem::take(&mut self.unsynced) {
            return;
        }
        let Some(f) = self.file.as_ref() else {
            return;
        };
        let handed = match (&self.syncer, f.try_clone()) {
            (Some(s), Ok(dup)) => s.tx.as_ref().is_some_and(|tx| tx.try_send(dup).is_ok()),
            (None, Ok(dup)) => {
                if let Err(e) = dup.sync_data() {
                    self.fsync_failed(&e);
                }
                true
            }
            (_, Err(e)) => {
                self.fsync_failed(&e);
                true
            }
        };
        if handed {
            self.stats.fsyncs += 1;
        } else {
            self.unsynced = true;
        }
    }

    /// Reports a failure of the syncer thread's last `fdatasync`, if any.
    fn check_syncer(&mut self) {
        // Acquire: pairs with the syncer's Release store; the error it logged comes first.
        let failed = self
            .syncer
            .as_ref()
            .is_some_and(|s| s.failed.swap(false, Ordering::Acquire));
        if failed {
            self.fsync_failed(&io::Error::other("background fdatasync failed"));
        }
    }

    /// Written data may not reach the disk (the kernel can drop the pages of a failed sync).
    /// Clients may already have those events, so after a reboot the spool could not prove
    /// continuity: the healthy marker goes, and the next start gives new epochs.
    fn fsync_failed(&mut self, e: &io::Error) {
        self.stats.write_errors += 1;
        if let Some(marker) = self.healthy_marker.take() {
            // Removing a file needs no free space, so this works on a full disk.
            let _ = fs::remove_file(&marker);
            tracing::error!(dir = %self.dir.display(), error = %e, "spool fsync failed: the next start gives this shard's streams new epochs");
        }
    }

    /// Timers: the interval fsync and retention (size and age). Returns the new start when
    /// segments were deleted.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<u64> {
        self.check_syncer();
        if let FsyncPolicy::Interval(d) = self.cfg.fsync {
            if self.unsynced && now >= self.last_sync + d {
                self.interval_sync(now);
            }
        }
        let now_s = unix_secs();
        let max_age = self.cfg.max_age.as_secs();
        let mut deleted = false;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let over = self.stats.bytes > self.cfg.max_bytes
                || now_s.saturating_sub(oldest.last_write) > max_age;
            if !over {
                break;
            }
            let seg = self.segments.pop_front().expect("len > 1");
            let path = segment_path(&self.dir, seg.start);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "spool: cannot delete a segment");
            }
            if self.reader.as_ref().is_some_and(|(s, _)| *s == seg.start) {
                self.reader = None;
            }
            self.stats.bytes -= seg.len;
            self.stats.segments_deleted += 1;
            deleted = true;
        }
        deleted.then(|| self.start())
    }

    /// Syncs what was written (on shutdown), after the syncer thread finished.
    pub(crate) fn close(&mut self) {
        self.syncer = None; // joins it
        self.check_syncer();
        self.unsynced = true;
        self.interval_sync(Instant::now());
    }
}

/// Fuzz target body: `data` becomes a shard's segments (cut in two where its first two bytes
/// say), and opening the spool recovers a prefix in order or refuses; what it recovered scans.
pub(crate) fn fuzz_recovery(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("FLOODGATE_TEST_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // Relaxed: only makes names unique.
    let dir = base.join(format!(
        "floodgate-fuzz-spool-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let shard = dir.join("shard-0");
    let _ = fs::remove_dir_all(&dir);
    if private_dir_all(&shard).is_err() {
        return;
    }
    let _ = fs::write(dir.join("meta"), "floodgate-spool 1\nshards 1\n");
    let (cut, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let cut = cut.min(rest.len());
    let _ = fs::write(segment_path(&shard, 0), &rest[..cut]);
    if cut < rest.len() {
        let _ = fs::write(segment_path(&shard, cut as u64), &rest[cut..]);
    }
    for repair in [false, true] {
        let cfg = SpoolConfig {
            dir: dir.clone(),
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            fsync: FsyncPolicy::Never,
            repair,
            max_unacked: 16,
        };
        if let Ok((mut spool, rec)) = Spool::open(&cfg, 0, 1, 512) {
            assert!(rec.head <= data.len() as u64);
            for user in rec.streams.keys().take(4) {
                let mut pos = spool.start();
                loop {
                    let scanned = spool.scan(pos, 1 << 16, user, &mut |_, r| {
                        assert_eq!(r.user, &user[..], "a scan visits its user's records only");
                        true
                    });
                    match scanned {
                        Ok(Some(next)) if next > pos => pos = next,
                        _ => break,
                    }
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Reserves `bytes` of disk for a new segment without changing its length
/// (`FALLOC_FL_KEEP_SIZE`): appends then land in blocks already allocated, which costs the
/// shard's thread less per byte than having each write allocate them (perf/2026-12-01-spool-write.md),
/// and a full disk shows when a segment starts rather than in the middle of one. The file
/// still holds only what was written, so recovery reads it as before; a segment cut short
/// keeps the rest reserved until retention deletes it. A file system without `fallocate`
/// goes without.
fn reserve(file: &File, bytes: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file, FallocateFlags::KEEP_SIZE, 0, bytes) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
