//! The trivial server for measuring `floodgate load` itself: after the WebSocket handshake it
//! writes pre-encoded frames of the fan-out workload, 64 KiB per `write`, as fast as the
//! sockets take them. Nothing is cheaper to serve, so what the client measures against it is
//! the client's own ceiling.

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let w = floodgate_peers::Workload::from_args();
    // Every frame is encoded before the first client connects (`ts` is the encoding time), so
    // serving is nothing but 64 KiB writes.
    let pad = w.pad();
    let mut text = String::new();
    let mut out: Vec<Vec<u8>> = (0..w.connections)
        .map(|c| Vec::with_capacity(w.share(c) as usize * (w.payload_bytes + 8)))
        .collect();
    let mut seqs = vec![0u64; w.connections];
    for k in 0..w.events {
        let c = (k % w.connections as u64) as usize;
        seqs[c] += 1;
        text.clear();
        floodgate_peers::frame(&mut text, seqs[c], floodgate_peers::unix_ns(), &pad);
        let b = &mut out[c];
        b.push(0x81);
        if text.len() < 126 {
            b.push(text.len() as u8);
        } else {
            b.push(126);
            b.extend_from_slice(&(text.len() as u16).to_be_bytes());
        }
        b.extend_from_slice(text.as_bytes());
    }
    let listener = TcpListener::bind(("127.0.0.1", w.port)).expect("bind");
    floodgate_peers::ready("blast", w.port);
    let mut socks = Vec::new();
    while socks.len() < w.connections {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|x| x == b"\r\n\r\n") {
                break String::from_utf8_lossy(&buf[..i]).into_owned();
            }
        };
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_owned())
            })
            .expect("a WebSocket upgrade");
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .expect("write");
        socks.push(s);
    }
    let mut at = vec![0usize; w.connections];
    loop {
        let mut wrote = false;
        for (c, s) in socks.iter_mut().enumerate() {
            let b = &out[c];
            if at[c] < b.len() {
                // Whole frames only, about 64 KiB at a time.
                let end = frame_boundary(b, at[c], 64 << 10);
                s.write_all(&b[at[c]..end]).expect("write");
                at[c] = end;
                wrote = true;
            }
        }
        if !wrote {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

/// The end of the last whole frame within `max` bytes of `from` (at least one frame).
fn frame_boundary(b: &[u8], from: usize, max: usize) -> usize {
    let mut i = from;
    loop {
        let len = match b[i + 1] {
            126 => 4 + u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize,
            n => 2 + n as usize,
        };
        if i + len - from > max && i > from {
            return i;
        }
        i += len;
        if i >= b.len() {
            return b.len();
        }
    }
}
