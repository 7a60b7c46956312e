//! The fan-out workload on tokio-tungstenite (one thread: a current-thread runtime), written
//! the two ways its users would. Pick with the environment variable `TOKIO_MODE`:
//!
//! - `send_all` (default): each connection's task produces its own share of the events as a
//!   stream and hands it to `SinkExt::send_all`, which feeds frames until the socket pushes
//!   back and flushes then: tungstenite's 128 KiB write buffer decides the batches.
//! - `channel`: one producer task emits every event round-robin into per-connection bounded
//!   channels (the shape of a gateway: one application producer, many sockets), and each
//!   connection's task writes what its channel holds with `feed`, then `flush`. Tokio's
//!   cooperative budget makes the producer yield every 128 sends, so each flush carries about
//!   two frames: this is what that straightforward design delivers.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let w = floodgate_peers::Workload::from_args();
    let mode = std::env::var("TOKIO_MODE").unwrap_or_else(|_| "send_all".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match mode.as_str() {
        "send_all" => rt.block_on(send_all(w)),
        "channel" => rt.block_on(channel(w)),
        other => panic!("TOKIO_MODE must be send_all or channel, not {other}"),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts `n` WebSocket connections.
async fn accept_all(w: &floodgate_peers::Workload) -> Vec<Ws> {
    let listener = TcpListener::bind(("127.0.0.1", w.port)).await.expect("bind");
    floodgate_peers::ready("tokio-tungstenite", w.port);
    let mut all = Vec::with_capacity(w.connections);
    while all.len() < w.connections {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        all.push(tokio_tungstenite::accept_async(tcp).await.expect("handshake"));
    }
    all
}

async fn send_all(w: floodgate_peers::Workload) {
    let conns = accept_all(&w).await;
    let pad = std::sync::Arc::new(w.pad());
    let mut tasks = Vec::new();
    for (c, ws) in conns.into_iter().enumerate() {
        let n = w.share(c);
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, _stream) = ws.split();
            let mut events = futures_util::stream::iter(1..=n).map(|seq| {
                let mut text = String::with_capacity(160);
                floodgate_peers::frame(&mut text, seq, floodgate_peers::unix_ns(), &pad);
                Ok(Message::text(text))
            });
            let _ = sink.send_all(&mut events).await;
            // Stays open until the client closes.
            std::future::pending::<()>().await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn channel(w: floodgate_peers::Workload) {
    let conns = accept_all(&w).await;
    let mut senders = Vec::with_capacity(w.connections);
    for ws in conns {
        let (tx, mut rx) = mpsc::channel::<Message>(1024);
        senders.push(tx);
        tokio::spawn(async move {
            let (mut sink, _stream) = ws.split();
            while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(m) = rx.try_recv() {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
    }
    let pad = w.pad();
    let mut seqs = vec![0u64; w.connections];
    for k in 0..w.events {
        let c = (k % w.connections as u64) as usize;
        seqs[c] += 1;
        let mut text = String::with_capacity(160);
        floodgate_peers::frame(&mut text, seqs[c], floodgate_peers::unix_ns(), &pad);
        if senders[c].send(Message::text(text)).await.is_err() {
            break;
        }
    }
    std::future::pending::<()>().await;
}
