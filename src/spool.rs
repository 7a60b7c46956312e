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

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::core::durable::{
    self, Bad, ColdTier, RecoveredStream, Recovery, SpoolRecord, FLAG_ACK, FLAG_EXPIRED, KIND_ACK,
    KIND_EVENT,
};

/// When the spool calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every write, before the same events reach any socket: what a client has seen
    /// survives a power loss. Costs one `fdatasync` per reactor pass that routed events.
    Always,
    /// At most this long after a write. A crash of the process loses nothing written (the page
    /// cache has it); a power loss may lose the last interval.
    Interval(Duration),
    /// Never; the OS writes back when it likes. A process crash still loses nothing written.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => humantime::parse_duration(other)
                .ok()
                .filter(|d| !d.is_zero())
                .map(FsyncPolicy::Interval)
                .ok_or_else(|| {
                    format!("`{other}`: expected `always`, `never` or an interval such as `100ms`")
                }),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The spool settings (validated by the config).
#[derive(Debug, Clone)]
pub(crate) struct SpoolConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub fsync: FsyncPolicy,
    /// Truncate at a corrupted record instead of refusing to start.
    pub repair: bool,
    /// Unacked events recovered per user at most.
    pub max_unacked: usize,
}

/// Why the spool could not be opened. Every variant is fatal for `build`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file or directory could not be created, read or written.
    #[error("spool `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The spool was written by a gateway with another shard count.
    #[error("spool `{path}` was written with {found} shards but the gateway has {want}: set `shards = {found}` or use a new spool_dir")]
    ShardCount {
        /// The spool directory.
        path: PathBuf,
        /// Shards recorded in its meta file.
        found: usize,
        /// Shards configured now.
        want: usize,
    },
    /// A record in the middle of a segment fails its CRC or is malformed. Nothing after it in
    /// that segment can be trusted; start with `spool_repair = true` to cut the segment there
    /// (the lost range is announced to resuming clients as a `gap`).
    #[error("spool segment `{path}` is corrupted at byte {offset} ({after} bytes follow); refusing to start: set spool_repair = true to cut it there")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the bad record in the file.
        offset: u64,
        /// Bytes after it that would be dropped.
        after: u64,
    },
    /// The meta file is not one this version wrote.
    #[error("spool `{path}`: unrecognised meta file (expected `floodgate-spool 1`)")]
    Meta {
        /// The meta file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

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

/// Bytes `read_at` reads at once: the record asked for and, often, the user's next ones.
const READ_WINDOW: usize = 32 * 1024;

/// Creates `dir` and its missing parents with mode 0700: what the spool holds is every user's
/// events, for this user's eyes only. (An existing directory keeps its mode.)
fn private_dir_all(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) a file with mode 0600.
fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_else(|_| "unknown".into())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.seg"))
}

/// Checks or writes `<dir>/meta` for `shards`.
fn check_meta(dir: &Path, shards: usize) -> Result<(), SpoolError> {
    private_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("meta");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines();
            if lines.next() != Some("floodgate-spool 1") {
                return Err(SpoolError::Meta { path });
            }
            let found = lines
                .next()
                .and_then(|l| l.strip_prefix("shards "))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| SpoolError::Meta { path: path.clone() })?;
            if found != shards {
                return Err(SpoolError::ShardCount {
                    path: dir.to_owned(),
                    found,
                    want: shards,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => private_file(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    format!("floodgate-spool 1\nshards {shards}\n").as_bytes(),
                )
            })
            .map_err(io_err(&path)),
        Err(e) => Err(io_err(&path)(e)),
    }
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

/// A thread that calls `fdatasync` for the interval policy, off the reactor thread.
struct Syncer {
    /// Closed (taken) to stop the thread.
    tx: Option<crossbeam_channel::Sender<File>>,
    /// Set when an `fdatasync` failed; the spool takes it on its next tick.
    failed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(shard: usize) -> io::Result<Syncer> {
        // One request in flight at most: a sync covers everything written before it.
        let (tx, rx) = crossbeam_channel::bounded::<File>(1);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name(format!("floodgate-sync-{shard}"))
            .spawn(move || {
                for f in rx {
                    if let Err(e) = f.sync_data() {
                        tracing::error!(error = %e, "spool fdatasync failed");
                        // Release: see `Spool::check_syncer`.
                        flag.store(true, Ordering::Release);
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            failed,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its last sync is done.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether the bad record at the start of `rest` claims to run to the end of the file or past
/// it: what an interrupted last write looks like, as opposed to damage in the middle.
fn record_reaches_end(rest: &[u8]) -> bool {
    match rest.get(..4) {
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            durable::HEADER + len >= rest.len()
        }
        None => true,
    }
}

/// Whether every byte that the record at the start of `rest` declares is there.
fn record_complete(rest: &[u8]) -> bool {
    rest.get(..4).is_some_and(|len| {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        durable::HEADER.saturating_add(len) <= rest.len()
    })
}

/// The most a torn tail can span: more than one write of the reactor ever takes.
const MAX_TORN: usize = 16 << 20;

/// Whether a valid record starts anywhere after the first byte of `rest` (the bad bytes at the
/// end of a segment). An interrupted write leaves none; damage in the middle (a corrupted
/// length field, say) leaves the records after it, which must not be cut silently.
fn holds_a_record(rest: &[u8]) -> bool {
    if rest.len() > MAX_TORN {
        return true;
    }
    (1..rest.len()).any(|at| durable::decode(&rest[at..]).is_ok())
}

/// Decodes the records of one segment into `rec`; returns the length of its valid prefix and
/// why the rest (if any) is bad.
fn recover_segment(
    data: &[u8],
    start: u64,
    cfg: &SpoolConfig,
    spacing: u64,
    rec: &mut Recovery,
) -> (u64, Option<Bad>) {
    let mut at = 0usize;
    while at < data.len() {
        let (r, len) = match durable::decode(&data[at..]) {
            Ok(x) => x,
            Err(bad) => return (at as u64, Some(bad)),
        };
        let pos = start + at as u64;
        let s = rec.streams.entry(r.user.into()).or_default();
        if s.epoch != r.epoch {
            // A new run of this user's stream (the old one was dropped): start over.
            *s = RecoveredStream {
                epoch: r.epoch,
                ..RecoveredStream::default()
            };
        }
        match r.kind {
            KIND_EVENT => {
                s.last_seq = s.last_seq.max(r.seq);
                s.index.note(r.seq, pos, spacing);
                if r.flags & FLAG_ACK != 0 && r.seq > s.acked && cfg.max_unacked > 0 {
                    // The run that wrote this dead-lettered what went past its limit (and
                    // recorded it); a lower limit now keeps the newest.
                    if s.unacked.len() == cfg.max_unacked {
                        s.unacked.pop_front();
                    }
                    s.unacked.push_back((r.seq, r.frame.to_vec()));
                }
            }
            KIND_ACK => {
                if r.flags & FLAG_EXPIRED == 0 {
                    s.acked = s.acked.max(r.seq);
                }
                // Acked or dead-lettered: either way settled.
                while s.unacked.front().is_some_and(|u| u.0 <= r.seq) {
                    s.unacked.pop_front();
                }
            }
            _ => unreachable!("decode accepts known kinds only"),
        }
        at += len;
    }
    (at as u64, None)
}

impl ColdTier for Spool {
    fn start(&self) -> u64 {
        self.segments.front().map_or(self.head, |s| s.start)
    }

    fn read_at(&mut self, pos: u64, user: &[u8]) -> io::Result<Option<SpoolRecord<'_>>> {
        let i = self.segments.partition_point(|s| s.start + s.len <= pos);
        let Some(seg) = self.segments.get(i) else {
            return Ok(None);
        };
        if pos < seg.start {
            return Ok(None); // trimmed by retention
        }
        let (seg_start, seg_end) = (seg.start, seg.start + seg.len);
        // The record's length, if its header is in the window.
        let in_window = |win_pos: u64, win: &[u8]| -> Option<usize> {
            let off = usize::try_from(pos.checked_sub(win_pos)?).ok()?;
            let len = win.get(off..off + 4)?;
            let need = durable::HEADER + u32::from_le_bytes(len.try_into().ok()?) as usize;
            (off + need <= win.len()).then_some(off)
        };
        let off = match in_window(self.win_pos, &self.win) {
            Some(off) => off,
            None => {
                if self.reader.as_ref().is_none_or(|(s, _)| *s != seg_start) {
                    let f = File::open(segment_path(&self.dir, seg_start))?;
                    self.reader = Some((seg_start, f));
                }
                let file = &self.reader.as_ref().expect("opened above").1;
                let avail = (seg_end - pos) as usize;
                self.win.resize(avail.min(READ_WINDOW), 0);
                file.read_exact_at(&mut self.win, pos - seg_start)?;
                self.win_pos = pos;
                if in_window(pos, &self.win).is_none() {
                    // One record larger than the window: read it whole (if it fits in the
                    // segment; otherwise decoding says it is cut short).
                    let len = self
                        .win
                        .get(..4)
                        .map_or(0, |l| u32::from_le_bytes(l.try_into().expect("4 bytes")));
                    let need = (durable::HEADER + len as usize).min(avail);
                    self.win.resize(need, 0);
                    file.read_exact_at(&mut self.win, pos - seg_start)?;
                }
                0
            }
        };
        match durable::decode_for(&self.win[off..], user) {
            Ok((r, _)) => Ok(r),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spool record at {pos} is corrupt or cut short"),
            )),
        }
    }

    fn scan(
        &mut self,
        mut pos: u64,
        budget: usize,
        user: &[u8],
        visit: &mut dyn FnMut(u64, &SpoolRecord<'_>) -> bool,
    ) -> io::Result<Option<u64>> {
        let mut read = 0usize;
        loop {
            // The segment holding `pos`, or the next one after a hole.
            let i = self.segments.partition_point(|s| s.start + s.len <= pos);
            let Some(seg) = self.segments.get(i) else {
                return Ok(None);
            };
            let (seg_start, seg_len) = (seg.start, seg.len);
            pos = pos.max(seg_start);
            if read >= budget {
                return Ok(Some(pos));
            }
            if self.reader.as_ref().is_none_or(|(s, _)| *s != seg_start) {
                self.reader = Some((seg_start, File::open(segment_path(&self.dir, seg_start))?));
            }
            let file = &self.reader.as_ref().expect("opened above").1;
            let off = pos - seg_start;
            let want = ((seg_len - off) as usize).min(budget.max(64 * 1024));
            self.scan_buf.resize(want, 0);
            file.read_exact_at(&mut self.scan_buf, off)?;
            read += want;
            let mut at = 0;
            while at < want {
                match durable::decode_for(&self.scan_buf[at..], user) {
                    Ok((r, len)) => {
                        let go_on = r.is_none_or(|r| visit(pos + at as u64, &r));
                        at += len;
                        if !go_on {
                            return Ok(Some(pos + at as u64));
                        }
                    }
                    // A record cut by the read size: read again from it.
                    Err(Bad::Truncated) if at > 0 => break,
                    Err(Bad::Truncated) => {
                        // One record larger than the read: read it whole.
                        let need = self.scan_buf.get(..4).map_or(usize::MAX, |l| {
                            durable::HEADER
                                + u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize
                        });
                        if need > want && off.saturating_add(need as u64) <= seg_len {
                            self.scan_buf.resize(need, 0);
                            file.read_exact_at(&mut self.scan_buf, off)?;
                            continue;
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "spool record cut short",
                        ));
                    }
                    Err(Bad::Corrupt) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("spool record at {} is corrupt", pos + at as u64),
                        ))
                    }
                }
            }
            pos += at as u64;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_owned(),
            segment_bytes: 4096,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            fsync: FsyncPolicy::Never,
            repair: false,
            max_unacked: 16,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("floodgate-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Records for `user`: events `from..=to` of epoch 9 (every third needs an ack).
    fn events(user: &[u8], from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in from..=to {
            let frame = format!("{{\"seq\":{seq},\"type\":\"x\"}}");
            let r = SpoolRecord {
                kind: KIND_EVENT,
                flags: if seq % 3 == 0 { FLAG_ACK } else { 0 },
                user,
                epoch: 9,
                seq,
                ts: seq,
                frame: &[],
            };
            durable::encode(&mut out, &r, &[frame.as_bytes()]);
        }
        out
    }

    fn seqs(spool: &mut Spool, user: &[u8]) -> Vec<u64> {
        let mut got = Vec::new();
        let mut pos = spool.start();
        while let Some(next) = spool
            .scan(pos, 1000, user, &mut |_, r| {
                assert_eq!(r.user, user, "other users are skipped");
                got.push(r.seq);
                true
            })
            .unwrap()
        {
            pos = next;
        }
        got
    }

    #[test]
    fn a_reopened_spool_recovers_streams_and_scans_across_segments() {
        let dir = tmp("reopen");
        let c = cfg(&dir);
        let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert!(rec.streams.is_empty());
        for chunk in 0..20 {
            let from = chunk * 10 + 1;
            s.write(&events(b"alice", from, from + 9), Instant::now())
                .unwrap();
        }
        assert!(s.segments.len() > 2, "rolled into several segments");
        drop(s);
        let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        let alice = &rec.streams[&b"alice"[..]];
        assert_eq!((alice.epoch, alice.last_seq), (9, 200));
        assert_eq!(alice.unacked.len(), 16, "bounded by max_unacked");
        assert_eq!(alice.unacked.back().unwrap().0, 198);
        assert_eq!(seqs(&mut s, b"alice"), (1..=200).collect::<Vec<_>>());
        // Scans resume from the checkpoint at or before a seq.
        let from = alice.index.scan_from(150, s.start()).unwrap();
        let mut first = None;
        s.scan(from, 1 << 20, b"alice", &mut |_, r| {
            first = Some(r.seq);
            false
        })
        .unwrap();
        assert!(first.unwrap() <= 150 && first.unwrap() > 100);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_scan_reads_a_record_larger_than_one_read_whole() {
        let dir = tmp("big");
        let (mut s, _) = Spool::open(&cfg(&dir), 0, 1, 512).unwrap();
        let big = vec![b'z'; 100_000];
        let mut bytes = events(b"u", 1, 2);
        let r = SpoolRecord {
            kind: KIND_EVENT,
            flags: 0,
            user: b"u",
            epoch: 9,
            seq: 3,
            ts: 0,
            frame: &[],
        };
        durable::encode(&mut bytes, &r, &[&big]);
        bytes.extend_from_slice(&events(b"u", 4, 5));
        s.write(&bytes, Instant::now()).unwrap();
        let mut frames = Vec::new();
        let mut pos = s.start();
        while let Some(next) = s
            .scan(pos, 1, b"u", &mut |_, r| {
                frames.push((r.seq, r.frame.len()));
                true
            })
            .unwrap()
        {
            pos = next;
        }
        assert_eq!(
            frames.iter().map(|f| f.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(frames[2].1, 100_000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn acks_on_disk_settle_unacked_events() {
        let dir = tmp("acks");
        let c = cfg(&dir);
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        let mut bytes = events(b"bob", 1, 9);
        let ack = SpoolRecord {
            kind: KIND_ACK,
            flags: 0,
            user: b"bob",
            epoch: 9,
            seq: 6,
            ts: 0,
            frame: &[],
        };
        durable::encode(&mut bytes, &ack, &[]);
        s.write(&bytes, Instant::now()).unwrap();
        drop(s);
        let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        let unacked: Vec<u64> = rec.streams[&b"bob"[..]]
            .unacked
            .iter()
            .map(|u| u.0)
            .collect();
        assert_eq!(unacked, vec![9]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_spool_is_private_to_its_user() {
        use std::os::unix::fs::MetadataExt;
        let dir = tmp("private");
        let (mut s, _) = Spool::open(&cfg(&dir), 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        let shard = dir.join("shard-0");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&shard), 0o700);
        assert_eq!(mode(&dir.join("meta")), 0o600);
        assert_eq!(mode(&segment_path(&shard, 0)), 0o600);
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_whole_last_record_with_a_bad_checksum_is_corruption_not_a_torn_tail() {
        let dir = tmp("whole-bad-last");
        let c = cfg(&dir);
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 5), Instant::now()).unwrap();
        drop(s);
        // A byte flips in the body of the last record (all of its bytes are there).
        let seg = segment_path(&dir.join("shard-0"), 0);
        let mut data = fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 3] ^= 0x40;
        fs::write(&seg, &data).unwrap();
        // Cutting it as torn would keep the epoch and let event 5's seq be used again for
        // another event, which a client holding the old event 5 would never get.
        let err = Spool::open(&c, 0, 1, 512).err().expect("refuses to start");
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        let (_, rec) = Spool::open(
            &SpoolConfig {
                repair: true,
                ..c.clone()
            },
            0,
            1,
            512,
        )
        .unwrap();
        assert!(rec.repaired_bytes > 0);
        assert_eq!(rec.discarded_streams, 1, "the stream starts a new epoch");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_byte_refuses_the_start() {
        let dir = tmp("torn");
        let c = cfg(&dir);
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 5), Instant::now()).unwrap();
        let seg = segment_path(&dir.join("shard-0"), 0);
        drop(s);
        // Torn: half of a sixth record.
        let extra = events(b"u", 6, 6);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&extra[..extra.len() / 2]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert_eq!(rec.torn_bytes, (extra.len() / 2) as u64);
        assert_eq!(rec.streams[&b"u"[..]].last_seq, 5);
        s.write(&events(b"u", 6, 7), Instant::now())
            .expect("appends after the cut");
        assert_eq!(seqs(&mut s, b"u"), (1..=7).collect::<Vec<_>>());
        drop(s);
        // Flip a byte inside the second record: the records after it are intact, so this is
        // damage, not a torn write.
        let mut data = fs::read(&seg).unwrap();
        let second = durable::decode(&data).unwrap().1;
        data[second + 12] ^= 0x01;
        fs::write(&seg, &data).unwrap();
        let err = Spool::open(&c, 0, 1, 512).err().expect("refuses to start");
        assert!(
            matches!(err, SpoolError::Corrupt { offset, .. } if offset == second as u64),
            "{err}"
        );
        assert!(err.to_string().contains("spool_repair"), "{err}");
        // With repair, it starts and keeps the valid prefix on disk, but the stream starts a
        // new epoch: records clients may have had are gone, so `seq` numbers would repeat.
        let (mut s, rec) = Spool::open(
            &SpoolConfig {
                repair: true,
                ..c.clone()
            },
            0,
            1,
            512,
        )
        .unwrap();
        assert!(rec.repaired_bytes > 0);
        assert!(rec.streams.is_empty());
        assert_eq!(rec.discarded_streams, 1);
        assert_eq!(seqs(&mut s, b"u"), vec![1]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_shard_count_is_refused_with_a_clear_error() {
        let dir = tmp("shards");
        Spool::open(&cfg(&dir), 0, 2, 512).unwrap();
        let err = Spool::open(&cfg(&dir), 0, 3, 512).err().unwrap();
        assert!(err.to_string().contains("written with 2 shards"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_deletes_the_oldest_segments_by_size() {
        let dir = tmp("retention");
        let c = SpoolConfig {
            max_bytes: 8192,
            ..cfg(&dir)
        };
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        for chunk in 0..40 {
            s.write(
                &events(b"r", chunk * 10 + 1, chunk * 10 + 10),
                Instant::now(),
            )
            .unwrap();
            s.tick(Instant::now());
            assert!(s.stats.bytes <= 8192 + 4096 + 1024, "{}", s.stats.bytes);
        }
        assert!(s.stats.segments_deleted > 0);
        let got = seqs(&mut s, b"r");
        assert_eq!(*got.last().unwrap(), 400);
        assert!(got[0] > 1, "the oldest are gone");
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "what is left is contiguous"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_fsync_gives_new_epochs_at_the_next_start() {
        let dir = tmp("unhealthy");
        let c = cfg(&dir);
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
        // What a failed fdatasync does: the pages may never reach the disk.
        s.fsync_failed(&io::Error::other("EIO"));
        drop(s);
        let (s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert!(rec.streams.is_empty(), "continuity cannot be proven");
        assert_eq!(rec.discarded_streams, 1);
        drop(s);
        // That start wrote a new marker: the one after it keeps its streams again.
        let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert_eq!(rec.discarded_streams, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_interval_fsync_runs_on_the_syncer_thread_and_its_failure_is_reported() {
        let dir = tmp("syncer");
        let c = SpoolConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(1)),
            ..cfg(&dir)
        };
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        assert!(s.syncer.is_some());
        let t0 = Instant::now();
        s.write(&events(b"u", 1, 3), t0).unwrap();
        s.tick(t0 + Duration::from_millis(5));
        assert_eq!(s.stats.fsyncs, 1, "handed to the syncer");
        // A failure seen by the syncer reaches the spool on its next tick.
        let failed = s.syncer.as_ref().unwrap().failed.clone();
        failed.store(true, Ordering::Release);
        s.tick(t0 + Duration::from_millis(6));
        assert_eq!(s.stats.write_errors, 1);
        assert!(
            s.healthy_marker.is_none(),
            "the next start gives new epochs"
        );
        s.close();
        assert!(s.syncer.is_none(), "closed and joined");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn after_a_reboot_only_fsync_always_keeps_the_streams() {
        let dir = tmp("reboot");
        for (fsync, kept) in [(FsyncPolicy::Never, false), (FsyncPolicy::Always, true)] {
            let _ = fs::remove_dir_all(&dir);
            let c = SpoolConfig { fsync, ..cfg(&dir) };
            let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
            s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
            drop(s);
            // What a reboot looks like: the marker names another boot.
            let shard = dir.join("shard-0");
            let marker = shard.join(format!("healthy-{}", boot_id()));
            fs::rename(&marker, shard.join("healthy-0123456789abcdef")).unwrap();
            let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
            assert_eq!(rec.streams.contains_key(&b"u"[..]), kept, "{fsync}");
            assert_eq!(rec.discarded_streams, usize::from(!kept), "{fsync}");
            // Event 3 needs an ack and has none: a discarded stream hands it over to be sent
            // again in the new epoch rather than letting it vanish.
            let carried: Vec<usize> = rec.carried.iter().map(|(_, f)| f.len()).collect();
            assert_eq!(carried, if kept { vec![] } else { vec![1] }, "{fsync}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_takes_nothing_and_the_retry_goes_to_a_new_segment() {
        let dir = tmp("failed-write");
        let c = cfg(&dir);
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
        let head = s.head;
        // The file cannot take more (as with a full disk, or a file size limit): make the
        // open handle read-only so the next write fails.
        let seg = segment_path(&dir.join("shard-0"), 0);
        s.file = Some(File::open(&seg).unwrap());
        let batch = events(b"u", 4, 6);
        assert!(s.write(&batch, Instant::now()).is_err());
        assert_eq!(s.head, head, "nothing was taken");
        assert_eq!(s.stats.write_errors, 1);
        s.write(&batch, Instant::now())
            .expect("the retry starts a new segment");
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.segments[1].start, head, "no hole in the positions");
        assert_eq!(seqs(&mut s, b"u"), (1..=6).collect::<Vec<_>>());
        drop(s);
        // A first segment with a bad tail that the next one starts right after is a write
        // that failed and could not be cut back: recovery cuts it, it does not refuse.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&batch[..batch.len() - 3]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert_eq!(rec.torn_bytes, (batch.len() - 3) as u64);
        assert_eq!(rec.streams[&b"u"[..]].last_seq, 6);
        assert_eq!(seqs(&mut s, b"u"), (1..=6).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }

    mod damage {
        //! Random damage to a segment: the start either recovers a prefix of the stream, in
        //! order, or refuses with `Corrupt`, and never panics or invents a record.

        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Damage {
            /// Cut the file to this fraction of its length (per mille).
            Truncate(u16),
            /// Flip these bits of the byte at this fraction of the length (per mille).
            Flip(u16, u8),
            /// Append these bytes.
            Append(Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                (0u16..1000).prop_map(Damage::Truncate),
                (0u16..1000, 1u8..=255).prop_map(|(at, bits)| Damage::Flip(at, bits)),
                proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 200,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn a_damaged_segment_recovers_a_prefix_or_refuses(d in damage(), n in 1u64..40) {
                let dir = tmp(&format!("damage-{n}-{}", rand_suffix(&d)));
                let c = cfg(&dir);
                let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
                s.write(&events(b"u", 1, n), Instant::now()).unwrap();
                drop(s);
                let seg = segment_path(&dir.join("shard-0"), 0);
                let mut data = fs::read(&seg).unwrap();
                let flipped_mid_file = match &d {
                    Damage::Truncate(k) => {
                        data.truncate(data.len() * *k as usize / 1000);
                        false
                    }
                    Damage::Flip(at, bits) => {
                        let i = data.len() * *at as usize / 1000;
                        data[i] ^= bits;
                        true
                    }
                    Damage::Append(extra) => {
                        data.extend_from_slice(extra);
                        false
                    }
                };
                fs::write(&seg, &data).unwrap();
                match Spool::open(&c, 0, 1, 512) {
                    Ok((mut s, rec)) => {
                        let got = seqs(&mut s, b"u");
                        let last = rec.streams.get(&b"u"[..]).map_or(0, |r| r.last_seq);
                        prop_assert_eq!(&got, &(1..=last).collect::<Vec<_>>(), "a prefix, in order");
                        prop_assert!(last <= n);
                        if flipped_mid_file {
                            // Only the damaged record itself may go, and only if it was the
                            // last one (a flip that leaves a valid record changes nothing).
                            prop_assert!(last >= n - 1, "a flip cut {} records", n - last);
                        }
                        if matches!(d, Damage::Append(_)) {
                            prop_assert_eq!(last, n, "appended garbage costs nothing");
                        }
                    }
                    Err(SpoolError::Corrupt { .. }) => {
                        prop_assert!(flipped_mid_file, "only damage in the middle is refused");
                    }
                    Err(e) => prop_assert!(false, "unexpected error: {e}"),
                }
                fs::remove_dir_all(&dir).unwrap();
            }
        }

        /// Distinct directories for cases that run one after another in one process.
        fn rand_suffix(d: &Damage) -> String {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            // Relaxed: only uniqueness matters.
            format!(
                "{}-{}",
                N.fetch_add(1, Ordering::Relaxed),
                matches!(d, Damage::Flip(..))
            )
        }
    }

    #[test]
    fn fsync_policies_parse() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Always
        );
        assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
        assert_eq!(
            "250ms".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert!("0s".parse::<FsyncPolicy>().is_err());
        assert!("sometimes"
            .parse::<FsyncPolicy>()
            .unwrap_err()
            .contains("always"));
    }
}
