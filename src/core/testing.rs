//! The one harness of the core's virtual-clock tests (`tests`, `resume_tests`, `ack_tests`,
//! `alloc_tests`, and the metrics tests that need a core). It builds a core from a
//! [`CoreConfig`] (never the gateway's `Config`), makes ring records as an emitter would, and
//! plays the reactor and the client around it: it "writes" a connection's buffer as a socket
//! taking every byte would and decodes the frames, sends client messages, and keeps the spool
//! in memory ([`MemCold`]). No socket, no real clock: every call takes `now`.
//!
//! Each test file keeps only what is its own: how it names what a client saw.

use std::io;
use std::time::Instant;

use super::durable::{decode, decode_for, ColdTier, SpoolRecord};
use super::{Boards, ConnId, ConnKind, Core, CoreConfig, Cursor};
use crate::receipt::Ticket;
use floodgate_wsclient::{client_frame, FrameReader, Kind};

/// Receipt slots of a test core.
const RECEIPTS: usize = 1024;

/// The core's defaults changed by `f`.
pub(crate) fn config(f: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    let mut c = CoreConfig::default();
    f(&mut c);
    c
}

/// A core with `cfg` and boards of its own.
pub(crate) fn core(cfg: CoreConfig) -> Core {
    Core::new(cfg, Boards::new(RECEIPTS), Instant::now())
}

/// A user connection's kind.
pub(crate) fn user(u: &str) -> ConnKind {
    ConnKind::User(u.as_bytes().into())
}

/// A ring record for `user` with event body `body` (the JSON after `{"seq":N,`).
pub(crate) fn record(user: &str, body: &[u8]) -> Vec<u8> {
    record_with(user, body, false, None)
}

/// A ring record for `user` with `body`, needing an ack if `ack`, with a receipt `ticket`.
pub(crate) fn record_with(user: &str, body: &[u8], ack: bool, ticket: Option<Ticket>) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + user.len() + body.len());
    crate::record::encode(&mut r, 0, ack, user.as_bytes(), ticket, body);
    r
}

/// A ring record for `user`'s `i`-th event (body `"i":i`).
pub(crate) fn numbered(user: &str, i: u64) -> Vec<u8> {
    record(user, format!("\"i\":{i}}}").as_bytes())
}

/// Opens a connection for `kind` with an optional resume cursor.
pub(crate) fn connect(
    core: &mut Core,
    kind: ConnKind,
    cursor: Option<Cursor>,
    now: Instant,
) -> ConnId {
    core.adopt(kind, b"", b"", cursor, now)
        .expect("under max_connections_per_user")
}

/// Everything queued for `id`, as a socket taking every byte would write it: marked written
/// and decoded into frames (the HTTP head of these tests is empty).
pub(crate) fn write_all(core: &mut Core, id: ConnId) -> Vec<(Kind, Vec<u8>)> {
    let bytes = core.conn(id).out().to_vec();
    if !bytes.is_empty() {
        core.on_written(id, bytes.len());
    }
    let mut r = FrameReader::new(bytes, 1024);
    let mut out = Vec::new();
    r.frames(|k, p| out.push((k, p.to_vec())))
        .expect("the core writes whole, valid frames");
    out
}

/// The connections due for a write now (`pass_end`: the reactor's pass is over).
pub(crate) fn writable(core: &mut Core, now: Instant, pass_end: bool) -> Vec<ConnId> {
    let mut v = Vec::new();
    core.take_writable(now, pass_end, &mut v);
    v
}

/// The text payloads of `frames` as JSON (any other kind of frame fails the test).
pub(crate) fn json(frames: &[(Kind, Vec<u8>)]) -> Vec<serde_json::Value> {
    frames
        .iter()
        .map(|(k, p)| {
            assert_eq!(*k, Kind::Text, "a frame that is not text");
            serde_json::from_slice(p)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(p)))
        })
        .collect()
}

/// A client sends a text message `text` on `id`.
pub(crate) fn send_text(core: &mut Core, id: ConnId, text: &str, now: Instant) {
    core.on_input(id, &client_frame(Kind::Text, text.as_bytes()), now);
}

/// A client acks every event through `n` on `id`.
pub(crate) fn ack(core: &mut Core, id: ConnId, n: u64, now: Instant) {
    send_text(core, id, &format!("{{\"ack\":{n}}}"), now);
}

/// The harness's spool: an in-memory [`ColdTier`] that keeps every record the core encoded.
#[derive(Debug, Default)]
pub(crate) struct MemCold {
    pub log: Vec<u8>,
    pub start: u64,
    /// Records that `scan` decoded the header of (any user's).
    pub scanned: u64,
    /// Records read by position.
    pub reads_at: u64,
}

impl MemCold {
    /// Takes what the core spooled (as the reactor does before any socket write).
    pub(crate) fn absorb(&mut self, core: &mut Core) {
        self.log.extend_from_slice(&core.spool_out);
        core.on_spooled();
    }
}

impl ColdTier for MemCold {
    fn start(&self) -> u64 {
        self.start
    }
    fn scan(
        &mut self,
        pos: u64,
        budget: usize,
        user: &[u8],
        visit: &mut dyn FnMut(u64, &SpoolRecord<'_>) -> bool,
    ) -> io::Result<Option<u64>> {
        // Records before `start` are gone; the first one at or after it is found by walking
        // from 0 (test logs are small).
        let mut at = 0usize;
        while (at as u64) < self.start.max(pos) {
            at += decode(&self.log[at..]).expect("whole records").1;
        }
        let mut read = 0;
        while at < self.log.len() {
            if read >= budget {
                return Ok(Some(at as u64));
            }
            let (r, len) = decode_for(&self.log[at..], user).expect("whole records");
            self.scanned += 1;
            read += len;
            let go_on = r.is_none_or(|r| visit(at as u64, &r));
            at += len;
            if !go_on {
                return Ok(Some(at as u64));
            }
        }
        Ok(None)
    }
    fn read_at(&mut self, pos: u64, user: &[u8]) -> io::Result<Option<SpoolRecord<'_>>> {
        self.reads_at += 1;
        if pos < self.start || pos as usize >= self.log.len() {
            return Ok(None);
        }
        let (r, _) = decode_for(&self.log[pos as usize..], user)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "corrupt"))?;
        Ok(r)
    }
}
