//! One load connection after its handshake: a non-blocking socket on a worker's mio poll, the
//! frame reader, and the bytes waiting to be written (messages, pongs, the close).

use std::io::{self, Write};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::client::{encode_masked, FrameReader, Kind};

/// Text frame opcode.
pub(crate) const TEXT: u8 = 1;
const CLOSE: u8 = 8;
const PONG: u8 = 10;

/// What a read pass found besides data frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadEnd {
    /// The peer closed (close frame, EOF or reset).
    pub closed: bool,
    /// Bytes read.
    pub bytes: u64,
}

pub(crate) struct WsConn {
    pub stream: TcpStream,
    reader: FrameReader,
    out: Vec<u8>,
    /// Where in `out` unwritten bytes start.
    out_at: usize,
    /// xorshift state for masking keys.
    rng: u64,
    pongs: Vec<Vec<u8>>,
    pub closed: bool,
}

impl WsConn {
    /// Wraps a connected, upgraded blocking stream; `early` is what came after the 101.
    pub(crate) fn new(
        stream: std::net::TcpStream,
        early: Vec<u8>,
        read_chunk: usize,
    ) -> io::Result<WsConn> {
        stream.set_nonblocking(true)?;
        let seed = getrandom::u64().map_err(io::Error::other)? | 1;
        Ok(WsConn {
            stream: TcpStream::from_std(stream),
            reader: FrameReader::new(early, read_chunk),
            out: Vec::new(),
            out_at: 0,
            rng: seed,
            pongs: Vec::new(),
            closed: false,
        })
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn mask(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_le_bytes()
    }

    /// Queues a text message.
    pub(crate) fn queue_text(&mut self, payload: &[u8]) {
        let m = self.mask();
        encode_masked(&mut self.out, TEXT, payload, m);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.out.len() - self.out_at
    }

    /// Writes what is queued until the socket refuses more.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        } else if self.out_at > 1 << 20 {
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
        Ok(())
    }

    /// Reads everything available and calls `data` for each text or binary frame. Answers
    /// pings, and a close with a close. A malformed frame is an error.
    pub(crate) fn read(&mut self, mut data: impl FnMut(&[u8])) -> io::Result<ReadEnd> {
        let mut end = ReadEnd::default();
        // Frames already buffered first: what came with the handshake's response, or what a
        // previous pass read but the budget left.
        let mut close = false;
        let pongs = &mut self.pongs;
        self.reader.frames(|kind, payload| match kind {
            Kind::Text | Kind::Binary | Kind::Continuation => data(payload),
            Kind::Ping => pongs.push(payload.to_vec()),
            Kind::Close => close = true,
            Kind::Pong => {}
        })?;
        loop {
            if close {
                end.closed = true;
                if !self.closed {
                    let m = self.mask();
                    encode_masked(&mut self.out, CLOSE, &[], m);
                }
                break;
            }
            let (n, short) = match self.reader.fill(&mut self.stream) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    end.closed = true;
                    break;
                }
                Err(e) => return Err(e),
            };
            end.bytes += n as u64;
            let pongs = &mut self.pongs;
            self.reader.frames(|kind, payload| match kind {
                Kind::Text | Kind::Binary | Kind::Continuation => data(payload),
                Kind::Ping => pongs.push(payload.to_vec()),
                Kind::Close => close = true,
                Kind::Pong => {}
            })?;
            if n == 0 {
                end.closed = true;
                break;
            }
            if short && !close {
                break;
            }
        }
        for p in std::mem::take(&mut self.pongs) {
            let m = self.mask();
            encode_masked(&mut self.out, PONG, &p, m);
        }
        if end.closed {
            self.closed = true;
        }
        if self.pending() > 0 {
            let _ = self.flush();
        }
        Ok(end)
    }

    /// Starts a clean close (1000) from our side.
    pub(crate) fn close(&mut self) {
        if !self.closed {
            let m = self.mask();
            encode_masked(&mut self.out, CLOSE, &1000u16.to_be_bytes(), m);
            let _ = self.flush();
            self.closed = true;
        }
    }
}
