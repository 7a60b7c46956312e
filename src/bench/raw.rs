//! `floodgate bench --server raw-tcp`: the floor under the gateway.
//!
//! The same clients, producers, schedule and verification as a gateway run, but no gateway:
//! each producer encodes the event exactly as the gateway would (same body, same frame) and
//! writes it straight to the user's server-side socket with one blocking `write` per event.
//! No ring, no reactor, no cross-thread hand-off and no batching. Whatever this mode cannot
//! do on a machine (a rate, a latency), no server that writes each event when it is emitted can
//! do there either; comparing the two in one session prices the gateway's own work.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::auth::Verifier;
use crate::config::JwtKey;
use crate::core::{frame, handshake};
use crate::event::Event;
use crate::record::unix_ns;

/// One user's server side: its socket, its next `seq` and reused encode buffers.
struct Slot {
    stream: Option<TcpStream>,
    seq: u64,
    /// Write syscalls made to this socket.
    writes: u64,
    body: Vec<u8>,
    frame: Vec<u8>,
}

/// The raw server: a listener that answers upgrades, then per-user sockets the producers write.
pub(super) struct RawServer {
    addr: SocketAddr,
    slots: Arc<Vec<Mutex<Slot>>>,
    acceptor: Option<JoinHandle<io::Result<()>>>,
}

impl RawServer {
    /// Listens on 127.0.0.1 and accepts `users` upgrades (user `u{i}` into slot `i`) in the
    /// background, verifying each token as the gateway would.
    pub(super) fn start(users: usize, secret: &[u8]) -> Result<RawServer, crate::error::Error> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let verifier = Verifier::new(&JwtKey::Hs256(secret.to_vec()), Duration::ZERO)?;
        let slots: Arc<Vec<Mutex<Slot>>> = Arc::new(
            (0..users)
                .map(|_| {
                    Mutex::new(Slot {
                        stream: None,
                        seq: 0,
                        writes: 0,
                        body: Vec::with_capacity(1024),
                        frame: Vec::with_capacity(1024),
                    })
                })
                .collect(),
        );
        let shared = slots.clone();
        let acceptor = std::thread::Builder::new()
            .name("bench-raw-accept".into())
            .spawn(move || {
                for _ in 0..users {
                    let (stream, _) = listener.accept()?;
                    let (i, stream) = upgrade(stream, &verifier)?;
                    let slot = shared
                        .get(i)
                        .ok_or_else(|| io::Error::other("unknown user"))?;
                    slot.lock().unwrap_or_else(PoisonError::into_inner).stream = Some(stream);
                }
                Ok(())
            })?;
        Ok(RawServer {
            addr,
            slots,
            acceptor: Some(acceptor),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until every client has been upgraded.
    pub(super) fn wait_accepted(&mut self) -> Result<(), crate::error::Error> {
        if let Some(h) = self.acceptor.take() {
            h.join()
                .map_err(|_| io::Error::other("raw acceptor panicked"))??;
        }
        Ok(())
    }

    /// A producer's handle.
    pub(super) fn sink(&self) -> RawSink {
        RawSink {
            slots: self.slots.clone(),
        }
    }

    /// Write syscalls made so far.
    pub(super) fn writes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).writes)
            .sum()
    }

    /// Sends every client a close frame (1001) and closes the sockets.
    pub(super) fn close(&self) {
        for slot in self.slots.iter() {
            let mut s = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mut stream) = s.stream.take() {
                let _ = stream.write_all(&[0x88, 0x02, 0x03, 0xe9]);
            }
        }
    }
}

/// Reads one upgrade request, checks its token and answers 101. Returns the user's index.
fn upgrade(mut stream: TcpStream, verifier: &Verifier) -> io::Result<(usize, TcpStream)> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let req = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(bad("client closed during the handshake"));
        }
        head.extend_from_slice(&buf[..n]);
        match handshake::parse(&head) {
            Ok(Some(req)) => break req,
            Ok(None) => continue,
            Err(_) => return Err(bad("malformed upgrade request")),
        }
    };
    let key = req.upgrade_key.ok_or_else(|| bad("not an upgrade"))?;
    let user = verifier
        .verify(req.token.as_deref())
        .map_err(|e| bad(e.as_str()))?;
    let index = std::str::from_utf8(&user)
        .ok()
        .and_then(|u| u.strip_prefix('u'))
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| bad("bench users are u<index>"))?;
    stream.set_nodelay(true)?;
    // The same opening as the gateway's: the 101, then a `hello` (this floor keeps no history,
    // so the epoch is a constant and the stream starts at 0).
    let mut out = bytes::BytesMut::from(&handshake::switching_protocols(&key)[..]);
    frame::append_text(
        &mut out,
        b"{\"type\":\"hello\",\"epoch\":\"0000000000000001\",\"last_seq\":0}",
    );
    stream.write_all(&out)?;
    Ok((index, stream))
}

/// A producer's way into the raw server.
pub(super) struct RawSink {
    slots: Arc<Vec<Mutex<Slot>>>,
}

impl RawSink {
    /// Encodes `ev` as the gateway would and writes its frame to user `user`'s socket.
    /// The per-user lock is only there so that several producers can share a user; with one
    /// producer it is never contended.
    pub(super) fn send<D: serde::Serialize + ?Sized>(
        &mut self,
        user: usize,
        ev: Event<'_, D>,
    ) -> io::Result<()> {
        let mut s = self.slots[user]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Slot {
            stream,
            seq,
            writes,
            body,
            frame,
        } = &mut *s;
        body.clear();
        ev.encode_body(unix_ns(), body)
            .map_err(|()| io::Error::other("event data did not serialize"))?;
        *seq += 1;
        let (prefix, n) = frame::event_prefix(*seq, body.len());
        frame.clear();
        frame.extend_from_slice(&prefix[..n]);
        frame.extend_from_slice(body);
        let stream = stream
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        stream.write_all(frame)?;
        *writes += 1;
        Ok(())
    }
}
