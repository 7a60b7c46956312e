//! Server-to-client event frames, written straight into a connection's outbound buffer.
//!
//! An event frame is an unmasked, final text frame (RFC 6455 section 5.2) whose payload is
//! `{"seq":N,` followed by the event body encoded on the emitting thread (see
//! [`Event`](crate::Event)). Control frames (ping, pong, close) go through tungstenite's
//! `WebSocketContext` instead; both write whole frames into the same buffer, so they never
//! interleave.

use bytes::{BufMut, BytesMut};

/// Opcode of a final text frame.
const FIN_TEXT: u8 = 0x81;

/// Builds the frame header and the `{"seq":N,` prefix for a body of `body_len` bytes.
/// Returns the bytes in a stack buffer and their length (at most 10 + 28).
pub(crate) fn event_prefix(seq: u64, body_len: usize) -> ([u8; 40], usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(seq).as_bytes();
    let payload_len = 7 + digits.len() + 1 + body_len;
    let mut out = [0u8; 40];
    let mut n = 0;
    out[0] = FIN_TEXT;
    if payload_len <= 125 {
        out[1] = payload_len as u8;
        n += 2;
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        n += 4;
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        n += 10;
    }
    out[n..n + 7].copy_from_slice(b"{\"seq\":");
    n += 7;
    out[n..n + digits.len()].copy_from_slice(digits);
    n += digits.len();
    out[n] = b',';
    (out, n + 1)
}

/// Appends one complete event frame (prefix from [`event_prefix`], then `body`) to `out`.
#[inline]
pub(crate) fn append_event(out: &mut BytesMut, prefix: &[u8], body: &[u8]) {
    out.reserve(prefix.len() + body.len());
    out.put_slice(prefix);
    out.put_slice(body);
}

/// The payload prefix of every event frame (and of no other frame the server sends).
const EVENT_PREFIX: &[u8] = b"{\"seq\":";

/// Parses the frame header at the start of `buf`: returns (header bytes, payload bytes, is an
/// event frame), or `None` if the header is cut short.
fn header(buf: &[u8]) -> Option<(usize, usize, bool)> {
    let b0 = *buf.first()?;
    let (len, hdr) = match buf.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        l => (l as usize, 2),
    };
    // An event payload starts with EVENT_PREFIX; a cut-short payload is judged by what is here.
    let event = b0 & 0x0f == 1
        && len >= EVENT_PREFIX.len()
        && buf.get(hdr..).is_some_and(|p| {
            let k = p.len().min(EVENT_PREFIX.len());
            p[..k] == EVENT_PREFIX[..k]
        });
    Some((hdr, len, event))
}

/// The length (header and payload) of the frame at the start of `buf`, if its header is there.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    header(buf).map(|(hdr, len, _)| hdr + len)
}

/// Counts the event frames in `buf`, a server-to-client byte stream that starts at a frame
/// boundary; a frame cut short at the end counts. Control frames and the server's own
/// protocol frames (`hello`, `gap`) are not events and are not counted.
pub(crate) fn count_event_frames(buf: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut n = 0;
    while at < buf.len() {
        let Some((hdr, len, event)) = header(&buf[at..]) else {
            // Header itself cut short: the frame is still not delivered. Only an event frame
            // can be told apart by its payload, which is not here; count text frames.
            n += u64::from(buf[at] & 0x0f == 1);
            break;
        };
        n += u64::from(event);
        at = at.saturating_add(hdr).saturating_add(len);
    }
    n
}

/// Of `buf` (starting at a frame boundary), the frames that lie entirely within its first
/// `written` bytes: returns how many of them are event frames and how many bytes they span.
pub(crate) fn complete_prefix(buf: &[u8], written: usize) -> (u64, usize) {
    let mut at = 0usize;
    let mut events = 0;
    while let Some((hdr, len, event)) = buf.get(at..).and_then(header) {
        let end = at.saturating_add(hdr).saturating_add(len);
        if end > written {
            break;
        }
        events += u64::from(event);
        at = end;
    }
    (events, at)
}

/// The payload of the whole frame at the start of `buf`.
pub(crate) fn payload(buf: &[u8]) -> Option<&[u8]> {
    let (hdr, len, _) = header(buf)?;
    buf.get(hdr..hdr.checked_add(len)?)
}

/// The body of an event frame's payload `{"seq":N,<body>`: what the emitter encoded.
pub(crate) fn body_after_seq(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest[digits..].strip_prefix(b",")
}

/// The `seq` of the last event frame among the frames in `buf` (which starts at a frame
/// boundary and holds whole frames).
pub(crate) fn last_event_seq(buf: &[u8]) -> Option<u64> {
    event_seqs(buf).last()
}

/// The `seq` of the first event frame in `buf` (which starts at a frame boundary).
pub(crate) fn first_event_seq(buf: &[u8]) -> Option<u64> {
    event_seqs(buf).next()
}

/// The `seq`s of the whole event frames in `buf`, in order.
fn event_seqs(buf: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || loop {
        let (hdr, len, event) = buf.get(at..).and_then(header)?;
        let payload = buf.get(at + hdr..at + hdr + len)?;
        at += hdr + len;
        if event {
            let digits = &payload[EVENT_PREFIX.len()..];
            let end = digits.iter().position(|b| !b.is_ascii_digit())?;
            return std::str::from_utf8(&digits[..end]).ok()?.parse().ok();
        }
    })
}

/// Appends one final text frame carrying `payload` (a server protocol message such as
/// `hello` or `gap`; event frames use [`append_event`]).
pub(crate) fn append_text(out: &mut BytesMut, payload: &[u8]) {
    let len = payload.len();
    out.reserve(len + 10);
    out.put_u8(FIN_TEXT);
    if len <= 125 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::{coding::OpCode, FrameHeader};

    fn frame(seq: u64, body: &[u8]) -> BytesMut {
        let (p, n) = event_prefix(seq, body.len());
        let mut out = BytesMut::new();
        append_event(&mut out, &p[..n], body);
        out
    }

    #[test]
    fn frames_parse_with_tungstenite_at_every_length_class() {
        for body_len in [1usize, 100, 116, 117, 118, 500, 65_000, 70_000] {
            let mut body = vec![b'x'; body_len];
            body[body_len - 1] = b'}';
            let out = frame(123, &body);
            let mut cur = Cursor::new(&out[..]);
            let (hdr, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert!(hdr.is_final);
            assert_eq!(
                hdr.opcode,
                OpCode::Data(tungstenite::protocol::frame::coding::Data::Text)
            );
            assert!(hdr.mask.is_none(), "server frames are unmasked");
            let start = cur.position() as usize;
            assert_eq!(start + len as usize, out.len(), "body_len {body_len}");
            assert!(out[start..].starts_with(b"{\"seq\":123,"));
        }
    }

    #[test]
    fn counts_event_frames_including_a_partial_tail() {
        let mut buf = frame(1, b"\"a\":1}");
        buf.extend_from_slice(&[0x89, 0]); // a ping: not counted
        append_text(&mut buf, b"{\"type\":\"hello\"}"); // a protocol frame: not counted
        buf.extend_from_slice(&frame(2, &vec![b'y'; 300]));
        let full = buf.len();
        assert_eq!(count_event_frames(&buf), 2);
        assert_eq!(count_event_frames(&buf[..full - 5]), 2);
        let second = buf.len() - 300 - 4 - 9;
        assert_eq!(count_event_frames(&buf[second..]), 1);
        assert_eq!(count_event_frames(&buf[second..second + 3]), 1);
        assert_eq!(count_event_frames(&[]), 0);
    }

    #[test]
    fn complete_prefix_stops_at_the_first_frame_not_fully_written() {
        let mut buf = frame(1, b"\"a\":1}");
        let first = buf.len();
        append_text(&mut buf, &[b'h'; 200]);
        let second = buf.len();
        buf.extend_from_slice(&frame(2, b"\"b\":2}"));
        assert_eq!(complete_prefix(&buf, 0), (0, 0));
        assert_eq!(complete_prefix(&buf, first - 1), (0, 0));
        assert_eq!(complete_prefix(&buf, first), (1, first));
        assert_eq!(complete_prefix(&buf, second + 3), (1, second));
        assert_eq!(complete_prefix(&buf, buf.len()), (2, buf.len()));
    }

    #[test]
    fn the_last_event_seq_and_payloads_are_read_back() {
        let mut buf = frame(41, b"\"a\":1}");
        append_text(&mut buf, b"{\"type\":\"gap\"}");
        buf.extend_from_slice(&frame(1234, b"\"b\":2}"));
        assert_eq!(last_event_seq(&buf), Some(1234));
        assert_eq!(first_event_seq(&buf), Some(41));
        let second = frame_len(&buf).unwrap();
        assert_eq!(
            first_event_seq(&buf[second..]),
            Some(1234),
            "skips the gap frame"
        );
        assert_eq!(last_event_seq(&buf[..7]), None, "no whole event frame");
        assert_eq!(payload(&buf).unwrap(), b"{\"seq\":41,\"a\":1}");
    }

    #[test]
    fn protocol_frames_parse_with_tungstenite() {
        for len in [3usize, 125, 126, 70_000] {
            let mut out = BytesMut::new();
            append_text(&mut out, &vec![b'z'; len]);
            let mut cur = Cursor::new(&out[..]);
            let (hdr, n) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert!(hdr.is_final && hdr.mask.is_none());
            assert_eq!(n as usize, len);
            assert_eq!(cur.position() as usize + len, out.len());
        }
    }
}
