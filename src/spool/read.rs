//! Reading a spool back for replays ([`ColdTier`]): one user's record by position, or a scan
//! from a checkpoint.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::files::segment_path;
use super::Spool;
use crate::core::durable::{self, Bad, ColdTier, SpoolRecord};

/// Bytes `read_at` reads at once: the record asked for and, often, the user's next ones.
pub(super) const READ_WINDOW: usize = 32 * 1024;

/// Bytes `scan` reads at once (a record larger than this is read whole).
const SCAN_STEP: usize = 64 * 1024;

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
            // In steps, so a scan that its visitor stops early has read little past that
            // point (a replay pass takes 256 KiB of frames; reading the whole 1 MiB budget at
            // once read about four times what it used, all of it again next pass).
            let want = ((seg_len - off) as usize).min(SCAN_STEP);
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
