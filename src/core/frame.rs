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

/// Counts the complete-or-partial text frames in `buf`, a server-to-client byte stream that
/// starts at a frame boundary. Used to report how many events were still unsent when a
/// connection went away. Control frames are not counted.
pub(crate) fn count_text_frames(buf: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut n = 0;
    while at + 2 <= buf.len() {
        let opcode = buf[at] & 0x0f;
        let (len, hdr) = match buf[at + 1] & 0x7f {
            126 if at + 4 <= buf.len() => {
                (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
            }
            127 if at + 10 <= buf.len() => (
                u64::from_be_bytes(buf[at + 2..at + 10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => {
                // Header itself cut short: still one frame not delivered.
                n += u64::from(opcode == 1);
                break;
            }
            l => (l as usize, 2),
        };
        n += u64::from(opcode == 1);
        at = at.saturating_add(hdr).saturating_add(len);
    }
    n
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
    fn counts_frames_including_a_partial_tail() {
        let mut buf = frame(1, b"\"a\":1}");
        buf.extend_from_slice(&[0x89, 0]); // a ping: not counted
        buf.extend_from_slice(&frame(2, &vec![b'y'; 300]));
        let full = buf.len();
        assert_eq!(count_text_frames(&buf), 2);
        assert_eq!(count_text_frames(&buf[..full - 5]), 2);
        let second = buf.len() - 300 - 4 - 9;
        assert_eq!(count_text_frames(&buf[second..]), 1);
        assert_eq!(count_text_frames(&buf[second..second + 3]), 1);
        assert_eq!(count_text_frames(&[]), 0);
    }
}
