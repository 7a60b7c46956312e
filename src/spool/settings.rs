//! What a spool is configured with, and why it can fail to open.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}
