//! One load connection after its handshake: a non-blocking socket on a worker's mio poll, the
//! frame reader, and the bytes waiting to be written (messages, pongs, the close).

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::net::Connected;

use floodgate_wsclient::{encode_masked, FrameReader, Kind};

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

/// A non-blocking socket, plain or in a TLS session.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket, to register with a poll.
    pub(crate) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }

    /// TLS records encrypted and not yet written to the socket.
    fn tls_pending(&self) -> bool {
        matches!(self, Stream::Tls(s) if s.conn.wants_write())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            // rustls takes plaintext until its buffer is full, then 0: the socket is behind.
            Stream::Tls(s) => match s.write(buf)? {
                0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(s) => {
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut s.sock)?;
                }
                Ok(())
            }
        }
    }
}

pub(crate) struct WsConn {
    pub stream: Stream,
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
    pub(crate) fn new(stream: Connected, early: Vec<u8>, read_chunk: usize) -> io::Result<WsConn> {
        let stream = match stream {
            Connected::Plain(s) => {
                s.set_nonblocking(true)?;
                Stream::Plain(TcpStream::from_std(s))
            }
            Connected::Tls(t) => {
                let rustls::StreamOwned { conn, sock } = *t;
                sock.set_nonblocking(true)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(
                    conn,
                    TcpStream::from_std(sock),
                )))
            }
        };
        let seed = getrandom::u64().map_err(io::Error::other)? | 1;
        Ok(WsConn {
            stream,
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
            self.stream.socket(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.stream.socket());
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

    /// Bytes queued and not yet written (at least 1 while TLS records wait for the socket).
    pub(crate) fn pending(&self) -> usize {
        (self.out.len() - self.out_at).max(usize::from(self.stream.tls_pending()))
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
        match self.stream.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
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
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
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
            // A short read drains a plain socket; TLS may hold more records: read on to
            // WouldBlock.
            if short && !close && matches!(self.stream, Stream::Plain(_)) {
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
