//! Opening a spool: the meta file, and each segment's records checked up to a torn tail or a
//! corruption, rebuilding every stream they hold.

use std::fs;
use std::io;
use std::path::Path;

use super::files::{private_dir_all, private_file};
use super::settings::{io_err, SpoolConfig, SpoolError};
use crate::core::durable::{
    self, Bad, RecoveredStream, Recovery, FLAG_ACK, FLAG_EXPIRED, KIND_ACK, KIND_EVENT,
};

/// Checks or writes `<dir>/meta` for `shards`.
pub(super) fn check_meta(dir: &Path, shards: usize) -> Result<(), SpoolError> {
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

/// Whether the bad record at the start of `rest` claims to run to the end of the file or past
/// it: what an interrupted last write looks like, as opposed to damage in the middle.
pub(super) fn record_reaches_end(rest: &[u8]) -> bool {
    match rest.get(..4) {
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            durable::HEADER + len >= rest.len()
        }
        None => true,
    }
}

/// Whether every byte that the record at the start of `rest` declares is there.
pub(super) fn record_complete(rest: &[u8]) -> bool {
    rest.get(..4).is_some_and(|len| {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        durable::HEADER.saturating_add(len) <= rest.len()
    })
}

/// The most a torn tail can span: more than one write of the reactor ever takes.
pub(super) const MAX_TORN: usize = 16 << 20;

/// Whether a valid record starts anywhere after the first byte of `rest` (the bad bytes at the
/// end of a segment). An interrupted write leaves none; damage in the middle (a corrupted
/// length field, say) leaves the records after it, which must not be cut silently.
pub(super) fn holds_a_record(rest: &[u8]) -> bool {
    if rest.len() > MAX_TORN {
        return true;
    }
    (1..rest.len()).any(|at| durable::decode(&rest[at..]).is_ok())
}

/// Decodes the records of one segment into `rec`; returns the length of its valid prefix and
/// why the rest (if any) is bad.
pub(super) fn recover_segment(
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
