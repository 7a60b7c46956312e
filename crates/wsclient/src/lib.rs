//! A lean WebSocket client for floodgate's bench and load harness: a blocking RFC 6455
//! handshake, then frames decoded straight out of a read buffer (a header parser of its own,
//! checked against tungstenite's), so receiving a frame allocates nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Opens a TCP connection to `addr` and upgrades it with `GET target`. `extra_headers` is
/// inserted verbatim (each line ending in `\r\n`). Returns the stream (blocking mode) and any
/// bytes the server sent after its 101 response.
pub fn connect(
    addr: SocketAddr,
    target: &str,
    extra_headers: &str,
    timeout: Duration,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    let early = upgrade(
        &mut stream,
        &addr.to_string(),
        target,
        extra_headers,
        timeout,
    )?;
    Ok((stream, early))
}

/// Why an upgrade failed, as the `io::Error` payload: the HTTP status the server answered with
/// (0 when the response was not HTTP) and the first line of the body that came with it.
#[derive(Debug)]
pub struct Refused {
    /// The status code.
    pub status: u16,
    /// The first line of the response body read with the head (at most 200 characters,
    /// control characters dropped), often the server's reason; may be empty.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade refused: HTTP {}", self.status)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// The first line of `body`, bounded and printable.
fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// The subprotocols offered in `headers` (`Sec-WebSocket-Protocol: a, b`).
fn offered_protocols(headers: &str) -> Vec<&str> {
    headers
        .split("\r\n")
        .filter_map(|h| h.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|(_, v)| v.split(',').map(str::trim))
        .filter(|p| !p.is_empty())
        .collect()
}

impl std::error::Error for Refused {}

/// Sends the upgrade request for `target` on a connected `stream` (blocking, each read bounded
/// by `timeout`) and checks the 101 and its `Sec-WebSocket-Accept`. Returns any bytes the
/// server sent after the response. A non-101 answer is an error whose payload is [`Refused`].
pub fn upgrade(
    stream: &mut TcpStream,
    host: &str,
    target: &str,
    extra_headers: &str,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    let early = upgrade_on(stream, host, target, extra_headers)?;
    stream.set_read_timeout(None)?;
    Ok(early)
}

/// [`upgrade`] over any blocking stream (a TLS session, say); the caller bounds its reads.
pub fn upgrade_on(
    stream: &mut (impl Read + Write),
    host: &str,
    target: &str,
    extra_headers: &str,
) -> io::Result<Vec<u8>> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    let key = base64_16(&nonce);
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed during handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                if resp.code != Some(101) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        Refused {
                            status: resp.code.unwrap_or(0),
                            reason: first_line(&buf[head..]),
                        },
                    ));
                }
                // As browsers do: a subprotocol offered must be the one the server chose.
                let offered = offered_protocols(extra_headers);
                let chosen = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
                match (&chosen, offered.is_empty()) {
                    (None, true) => {}
                    (Some(p), false) if offered.contains(&p.as_str()) => {}
                    (None, false) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the server chose none of the subprotocols offered ({})",
                                offered.join(", ")
                            ),
                        ))
                    }
                    (Some(p), _) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the server chose subprotocol `{p}`, which was not offered"),
                        ))
                    }
                }
                let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let ok = resp.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("sec-websocket-accept")
                        && h.value == expected.as_bytes()
                });
                if !ok {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad Sec-WebSocket-Accept",
                    ));
                }
                return Ok(buf[head..].to_vec());
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad handshake response",
                ))
            }
        }
    }
}

fn base64_16(bytes: &[u8; 16]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A frame as seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text frame (opcode 1).
    Text,
    /// A binary frame (opcode 2).
    Binary,
    /// A continuation of a fragmented message (opcode 0).
    Continuation,
    /// A ping (opcode 9).
    Ping,
    /// A pong (opcode 10).
    Pong,
    /// A close frame (opcode 8).
    Close,
}

/// Decodes server frames from bytes read off a socket.
pub struct FrameReader {
    /// Storage; only `start..end` holds unread bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes offered to each read, and the step the buffer grows by.
    chunk: usize,
}

impl FrameReader {
    /// A reader that starts with the bytes `initial` (read past the handshake) and reads up to
    /// `chunk` bytes at a time. The buffer is allocated and zero-filled here, so its pages are
    /// touched before any measurement, not on the first event.
    pub fn new(initial: Vec<u8>, chunk: usize) -> Self {
        let chunk = chunk.max(1024);
        let mut buf = initial;
        let end = buf.len();
        buf.resize(end + chunk, 0);
        FrameReader {
            buf,
            start: 0,
            end,
            chunk,
        }
    }

    /// Reads once from `src` into the buffer. Returns the bytes read (0 = EOF) and whether the
    /// read was short (filled less than the space offered). On a stream socket a short read
    /// means the receive queue was empty when it returned, so under edge-triggered polling
    /// the caller may wait for the next readiness event instead of reading again to see
    /// `WouldBlock` (epoll(7), "Level-triggered and edge-triggered").
    pub fn fill(&mut self, src: &mut impl Read) -> io::Result<(usize, bool)> {
        if self.start > 0 && self.start * 2 >= self.end {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < self.chunk / 2 {
            // Grows (zero-filled once) only while a frame larger than the buffer is pending;
            // steady state reuses the same bytes without clearing.
            self.buf.resize(self.buf.len() + self.chunk, 0);
        }
        let space = self.buf.len() - self.end;
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok((n, n < space))
    }

    /// The next complete frame buffered, copied out, if there is one (for a session's opening
    /// exchange, not the measured path).
    pub fn next_frame(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        let Some((kind, at, len)) = server_header(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        let at = self.start + at;
        if self.end - at < len {
            return Ok(None);
        }
        let payload = self.buf[at..at + len].to_vec();
        self.start = at + len;
        Ok(Some((kind, payload)))
    }

    /// The bytes buffered and not yet taken as frames.
    pub fn into_unread(self) -> Vec<u8> {
        self.buf[self.start..self.end].to_vec()
    }

    /// Calls `f` for every complete frame buffered. A masked or malformed server frame is an
    /// error (RFC 6455 5.1: servers never mask).
    pub fn frames(&mut self, mut f: impl FnMut(Kind, &[u8])) -> io::Result<()> {
        loop {
            let Some((kind, at, len)) = server_header(&self.buf[self.start..self.end])? else {
                return Ok(());
            };
            let at = self.start + at;
            if self.end - at < len {
                return Ok(());
            }
            f(kind, &self.buf[at..at + len]);
            self.start = at + len;
        }
    }
}

/// The longest frame payload the reader takes (64 MiB): a server announcing more is refused
/// before the reader's buffer grows toward it.
pub const MAX_FRAME: u64 = 64 << 20;

/// Malformed input, saying why.
fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// The header of a server frame at the start of `b` (RFC 6455 5.2): its kind, where its
/// payload starts and how long the payload is; `None` while the header is incomplete.
/// Errors on what a server must never send: a mask, reserved bits or opcodes, or a control
/// frame longer than 125 bytes or fragmented (5.5); and on a payload over [`MAX_FRAME`] (which
/// also refuses a length with its top bit set).
fn server_header(b: &[u8]) -> io::Result<Option<(Kind, usize, usize)>> {
    let bad = |why: &str| Err(invalid(why));
    let (first, second) = match b {
        [first, second, ..] => (*first, *second),
        _ => return Ok(None),
    };
    if second & 0x80 != 0 || first & 0x70 != 0 {
        return bad("masked or reserved-bit frame from server");
    }
    let kind = match first & 0x0f {
        0 => Kind::Continuation,
        1 => Kind::Text,
        2 => Kind::Binary,
        8 => Kind::Close,
        9 => Kind::Ping,
        10 => Kind::Pong,
        _ => return bad("reserved opcode"),
    };
    let (at, len) = match second & 0x7f {
        126 => match b.get(2..4) {
            Some(n) => (4, u64::from(u16::from_be_bytes([n[0], n[1]]))),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(n) => (10, u64::from_be_bytes(n.try_into().expect("eight bytes"))),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if first & 0x08 != 0 && (len > 125 || first & 0x80 == 0) {
        return bad("control frame longer than 125 bytes or fragmented");
    }
    if len > MAX_FRAME {
        return Err(invalid(&format!(
            "a frame of {len} bytes, over the {MAX_FRAME} this client takes"
        )));
    }
    let len = len as usize; // at most MAX_FRAME
    Ok(Some((kind, at, len)))
}

/// A masked client frame (pong or close) ready to write.
pub fn client_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut frame = match kind {
        Kind::Pong => Frame::pong(payload.to_vec()),
        Kind::Ping => Frame::ping(payload.to_vec()),
        Kind::Close => Frame::from_payload(
            FrameHeader {
                opcode: OpCode::Control(Control::Close),
                ..FrameHeader::default()
            },
            payload.to_vec().into(),
        ),
        _ => Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true),
    };
    let mut mask = [0u8; 4];
    let _ = getrandom::fill(&mut mask);
    frame.header_mut().mask = Some(mask);
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame.format(&mut out).expect("writing to a Vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn base64_matches_rfc_example_nonce() {
        assert_eq!(base64_16(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    /// What tungstenite's header parser makes of `b`, in `server_header`'s terms (its parse
    /// accepts what a server must not send; those are filtered as `frames` did with it).
    fn tungstenite_header(b: &[u8]) -> Result<Option<(Kind, usize, usize)>, ()> {
        let mut cur = Cursor::new(b);
        let (hdr, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => return Err(()),
        };
        if hdr.mask.is_some() || hdr.rsv1 || hdr.rsv2 || hdr.rsv3 || len > MAX_FRAME {
            return Err(());
        }
        let kind = match hdr.opcode {
            OpCode::Data(Data::Text) => Kind::Text,
            OpCode::Data(Data::Binary) => Kind::Binary,
            OpCode::Data(Data::Continue) => Kind::Continuation,
            OpCode::Control(c) => {
                if len > 125 || !hdr.is_final {
                    return Err(());
                }
                match c {
                    Control::Ping => Kind::Ping,
                    Control::Pong => Kind::Pong,
                    Control::Close => Kind::Close,
                    _ => return Err(()),
                }
            }
            _ => return Err(()),
        };
        Ok(Some((kind, cur.position() as usize, len as usize)))
    }

    #[test]
    fn headers_decode_as_tungstenite_decodes_them() {
        // Every first and second byte, and extended lengths around their limits; each case
        // padded so that both parsers see a whole header (tungstenite waits for mask bytes
        // where ours refuses the mask bit at once).
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                cases.push(vec![first, second]);
            }
        }
        for first in [0x81u8, 0x82, 0x01, 0x89, 0x88, 0x8a, 0x09] {
            for len in [
                0u64,
                125,
                126,
                127,
                65_535,
                65_536,
                1 << 40,
                (1 << 63) - 1,
                1 << 63,
                u64::MAX,
            ] {
                let mut full = vec![first, 127];
                full.extend_from_slice(&len.to_be_bytes());
                cases.push(full);
                let mut short = vec![first, 126];
                short.extend_from_slice(&(len as u16).to_be_bytes());
                cases.push(short);
            }
        }
        for mut b in cases {
            b.resize(14, 0);
            let ours = server_header(&b).map_err(|_| ());
            assert_eq!(ours, tungstenite_header(&b), "header {b:02x?}");
            // Cut short of its payload's start, a good header is incomplete, never wrong.
            if let Ok(Some((_, at, _))) = ours {
                for cut in 0..at {
                    assert!(
                        matches!(server_header(&b[..cut]), Ok(None)),
                        "{b:02x?} cut at {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_bytes_arrive() {
        let mut r = FrameReader::new(Vec::new(), 1024);
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        r.fill(&mut &head[..]).unwrap();
        let e = r.frames(|_, _| panic!("no frame")).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
        // At the limit it waits for the bytes (nothing buffered beyond the header).
        let mut r = FrameReader::new(Vec::new(), 1024);
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&MAX_FRAME.to_be_bytes());
        r.fill(&mut &head[..]).unwrap();
        r.frames(|_, _| panic!("not complete")).unwrap();
    }

    #[test]
    fn reader_yields_whole_frames_across_fills() {
        let mut bytes = Vec::new();
        // A text frame (unmasked, as a server sends it), then an empty ping.
        let text = b"{\"seq\":1,\"a\"";
        bytes.extend_from_slice(&[0x81, text.len() as u8]);
        bytes.extend_from_slice(text);
        bytes.extend_from_slice(&[0x89, 0x00]);
        let mut r = FrameReader::new(Vec::new(), 1024);
        let mut seen = Vec::new();
        for piece in bytes.chunks(3) {
            r.fill(&mut &piece[..]).unwrap();
            r.frames(|k, p| seen.push((k, p.to_vec()))).unwrap();
        }
        assert_eq!(
            seen,
            vec![
                (Kind::Text, b"{\"seq\":1,\"a\"".to_vec()),
                (Kind::Ping, vec![])
            ]
        );
    }
}

/// Appends a final, masked client frame with `opcode` (1 text, 2 binary, 8 close, 9 ping,
/// 10 pong) carrying `payload` to `out`, masked with `mask` (RFC 6455 5.3: the client picks a
/// fresh unpredictable key per frame). Allocates only if `out` must grow.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod masked_tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn masked_frames_decode_with_tungstenite() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, 1, &payload, [1, 2, 3, 250]);
            let mut cur = Cursor::new(&out[..]);
            let (hdr, n) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(n as usize, len);
            assert_eq!(hdr.mask, Some([1, 2, 3, 250]));
            let at = cur.position() as usize;
            let mut body = out[at..].to_vec();
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= [1, 2, 3, 250][i & 3];
            }
            assert_eq!(body, payload);
        }
    }

    /// A server's side of one upgrade: answers the request written to it with `answer(key)`.
    struct Server<F: Fn(&str) -> String> {
        written: Vec<u8>,
        answered: Option<Cursor<Vec<u8>>>,
        answer: F,
    }

    impl<F: Fn(&str) -> String> Read for Server<F> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.answered.is_none() {
                let req = String::from_utf8_lossy(&self.written).into_owned();
                let key = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .expect("a key")
                    .trim()
                    .to_owned();
                self.answered = Some(Cursor::new((self.answer)(&key).into_bytes()));
            }
            self.answered.as_mut().unwrap().read(buf)
        }
    }

    impl<F: Fn(&str) -> String> Write for Server<F> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn upgrade_against(headers: &str, answer: impl Fn(&str) -> String) -> io::Result<Vec<u8>> {
        let mut server = Server {
            written: Vec::new(),
            answered: None,
            answer,
        };
        upgrade_on(&mut server, "x", "/", headers)
    }

    fn switching(key: &str, extra: &str) -> String {
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn a_subprotocol_offered_must_be_the_one_chosen() {
        let offer = "Sec-WebSocket-Protocol: a.v1, b.v1\r\n";
        let chosen = |p: &'static str| {
            move |k: &str| switching(k, &format!("Sec-WebSocket-Protocol: {p}\r\n"))
        };
        assert!(upgrade_against(offer, chosen("b.v1")).is_ok());
        let e = upgrade_against(offer, chosen("c.v1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chose subprotocol `c.v1`, which was not offered"),
            "{e}"
        );
        let e = upgrade_against(offer, |k| switching(k, ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chose none of the subprotocols offered (a.v1, b.v1)"),
            "{e}"
        );
        let e = upgrade_against("", chosen("a.v1")).unwrap_err().to_string();
        assert!(e.contains("not offered"), "{e}");
        assert!(upgrade_against("", |k| switching(k, "")).is_ok());
    }

    #[test]
    fn a_refusal_carries_the_first_line_of_its_body() {
        let e = upgrade_against("", |_| {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 30\r\n\r\n\n  missing token\u{7}\nmore\n"
                .into()
        })
        .unwrap_err();
        let r = e.get_ref().unwrap().downcast_ref::<Refused>().unwrap();
        assert_eq!((r.status, r.reason.as_str()), (401, "missing token"));
        assert_eq!(e.to_string(), "upgrade refused: HTTP 401 (missing token)");
        let e = upgrade_against("", |_| "HTTP/1.1 503 Busy\r\n\r\n".into()).unwrap_err();
        assert_eq!(e.to_string(), "upgrade refused: HTTP 503");
    }
}
