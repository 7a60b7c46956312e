//! The clients: non-blocking WebSocket connections on a mio poll per thread, each checked by
//! its [`Verify`]; with `--chaos`, dropped and resumed from their cursor again and again.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::cpu::thread_cpu_now;
use super::verify::{check_frame, Scanner, Verify};
use super::workload::{new_histogram, ACK_EVERY, CHAOS_FRACTION, CHAOS_INTERVAL};
use crate::record::unix_ns;
use floodgate_wsclient::{self as client, FrameReader, Kind};

pub(super) struct ClientConn {
    pub(super) stream: TcpStream,
    pub(super) reader: FrameReader,
    pub(super) v: Verify,
    /// The user's token, for reconnecting.
    pub(super) token: String,
}

/// What `--chaos` needs to drop and resume connections.
#[derive(Clone, Copy)]
pub(super) struct Chaos {
    pub(super) addr: std::net::SocketAddr,
    pub(super) read_chunk: usize,
    /// xorshift state for picking victims.
    pub(super) seed: u64,
}

impl ClientConn {
    pub(super) fn new(
        user: u32,
        stream: TcpStream,
        reader: FrameReader,
        token: String,
        expected: u64,
        producers: usize,
    ) -> Self {
        ClientConn {
            stream,
            reader,
            v: Verify {
                user,
                expected,
                received: 0,
                last_seq: 0,
                last_n: vec![0; producers],
                misrouted: 0,
                order_errors: 0,
                duplicates: 0,
                bytes: 0,
                closed: false,
                epoch: None,
                awaiting_hello: true,
                resumes: 0,
                gaps: 0,
                gap_events: 0,
                after_gap: false,
                unacked: 0,
                acks_sent: 0,
                redelivering: 0,
                redelivered: 0,
            },
            token,
        }
    }
}

pub(super) struct ClientResult {
    pub(super) hist: Histogram<u64>,
    pub(super) received: u64,
    pub(super) misrouted: u64,
    pub(super) order_errors: u64,
    pub(super) duplicates: u64,
    pub(super) bytes: u64,
    pub(super) lost: u64,
    pub(super) last_rx_ns: u64,
    pub(super) cpu: f64,
    pub(super) resumes: u64,
    pub(super) gaps: u64,
    pub(super) redelivered: u64,
    pub(super) acks_sent: u64,
}

/// Upgrades a non-blocking client connection to `path` with `token`; the reader starts with
/// whatever arrived with the 101 and reads `read_chunk` bytes at a time.
pub(super) fn open_ws(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    read_chunk: usize,
) -> io::Result<(TcpStream, FrameReader)> {
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (stream, early) = client::connect(addr, path, &auth, Duration::from_secs(5))?;
    stream.set_nonblocking(true)?;
    Ok((
        TcpStream::from_std(stream),
        FrameReader::new(early, read_chunk),
    ))
}

/// Drops connection `i`'s socket mid-stream and reconnects with its cursor. Returns false if
/// the reconnect failed (the connection then counts as closed).
pub(super) fn resume(poll: &Poll, c: &mut ClientConn, i: usize, chaos: &Chaos) -> bool {
    let _ = poll.registry().deregister(&mut c.stream);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let path = match &c.v.epoch {
        Some(e) => format!(
            "/ws?since={}&epoch={}",
            c.v.last_seq,
            std::str::from_utf8(e).unwrap_or("0")
        ),
        None => "/ws?since=0".to_owned(),
    };
    let Ok((stream, reader)) = open_ws(chaos.addr, &path, &c.token, chaos.read_chunk) else {
        return false;
    };
    c.stream = stream;
    c.reader = reader;
    if poll
        .registry()
        .register(&mut c.stream, Token(i), Interest::READABLE)
        .is_err()
    {
        return false;
    }
    c.v.awaiting_hello = true;
    c.v.resumes += 1;
    true
}

pub(super) fn client_loop(
    mut conns: Vec<ClientConn>,
    received: &AtomicU64,
    stall: Duration,
    mut chaos: Option<Chaos>,
) -> ClientResult {
    let mut hist = new_histogram();
    let mut poll = Poll::new().expect("poll");
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.stream, Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(1024);
    let mut remaining = conns.iter().filter(|c| !c.v.done()).count();
    let mut last_progress = Instant::now();
    let mut last_rx_ns = 0;
    let mut sample = 0u32;
    let mut scratch = Vec::new();
    let scanner = Scanner;
    let mut ready: Vec<usize> = (0..conns.len()).collect(); // early bytes may hold frames
    let mut next_chaos = Instant::now() + CHAOS_INTERVAL;
    while remaining > 0 {
        if let Some(ch) = chaos.as_mut().filter(|_| Instant::now() >= next_chaos) {
            next_chaos += CHAOS_INTERVAL;
            let live: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].v.done()).collect();
            let victims = ((live.len() as f64 * CHAOS_FRACTION).ceil() as usize).min(live.len());
            for k in 0..victims {
                // xorshift64: a different victim set every time, reproducible from the seed.
                ch.seed ^= ch.seed << 13;
                ch.seed ^= ch.seed >> 7;
                ch.seed ^= ch.seed << 17;
                let i = live[(ch.seed as usize).wrapping_add(k) % live.len()];
                if !resume(&poll, &mut conns[i], i, ch) {
                    conns[i].v.closed = true;
                    remaining -= 1;
                }
                ready.push(i); // the first bytes may have come with the handshake
            }
        }
        if ready.is_empty() {
            let timeout = if chaos.is_some() {
                next_chaos.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(100)
            };
            if poll.poll(&mut events, Some(timeout)).is_err() {
                continue;
            }
            ready.extend(events.iter().map(|e| e.token().0));
        }
        if ready.is_empty() {
            if last_progress.elapsed() > stall {
                break;
            }
            continue;
        }
        for i in std::mem::take(&mut ready) {
            let ClientConn {
                stream,
                reader,
                v: c,
                ..
            } = &mut conns[i];
            if c.done() {
                continue;
            }
            loop {
                let drained = match reader.fill(stream) {
                    Ok((0, _)) => {
                        c.closed = true;
                        break;
                    }
                    Ok((_, short)) => short,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.closed = true;
                        break;
                    }
                };
                let now_ns = unix_ns();
                let before = c.received + c.gap_events;
                let mut pongs = Vec::new();
                let res = reader.frames(|kind, payload| match kind {
                    Kind::Text => {
                        c.bytes += payload.len() as u64;
                        check_frame(
                            c,
                            &scanner,
                            payload,
                            now_ns,
                            &mut hist,
                            &mut sample,
                            &mut scratch,
                        );
                    }
                    Kind::Ping => pongs.push(client::client_frame(Kind::Pong, payload)),
                    Kind::Close => c.closed = true,
                    _ => c.order_errors += 1,
                });
                for p in pongs {
                    let _ = stream.write_all(&p);
                }
                if c.unacked >= ACK_EVERY || (c.unacked > 0 && c.done()) {
                    // Cumulative: everything up to the last event seen.
                    let ack = format!("{{\"ack\":{}}}", c.last_seq);
                    let _ = stream.write_all(&client::client_frame(Kind::Text, ack.as_bytes()));
                    c.unacked = 0;
                    c.acks_sent += 1;
                }
                if res.is_err() {
                    c.closed = true;
                }
                if c.received + c.gap_events > before {
                    received.fetch_add(c.received + c.gap_events - before, Ordering::Relaxed);
                    last_rx_ns = now_ns;
                    last_progress = Instant::now();
                }
                if drained || c.done() {
                    break;
                }
            }
            if c.done() {
                remaining -= 1;
            }
        }
        if last_progress.elapsed() > stall {
            break;
        }
    }
    let mut r = ClientResult {
        hist,
        received: 0,
        misrouted: 0,
        order_errors: 0,
        duplicates: 0,
        bytes: 0,
        lost: 0,
        last_rx_ns,
        cpu: thread_cpu_now(),
        resumes: 0,
        gaps: 0,
        redelivered: 0,
        acks_sent: 0,
    };
    for c in conns.iter().map(|c| &c.v) {
        r.received += c.received;
        r.misrouted += c.misrouted;
        r.order_errors += c.order_errors;
        r.duplicates += c.duplicates;
        r.bytes += c.bytes;
        r.lost += c.expected.saturating_sub(c.received);
        r.resumes += c.resumes;
        r.gaps += c.gaps;
        r.redelivered += c.redelivered;
        r.acks_sent += c.acks_sent;
    }
    r
}
