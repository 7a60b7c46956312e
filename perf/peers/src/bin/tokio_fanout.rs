//! The fan-out workload on tokio-tungstenite, written the way its users would: one task per
//! connection owning the sink, fed by a bounded channel, writing with `feed` + `flush` so many
//! frames share one write; the producer is a task on the same single-threaded runtime.

use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let w = floodgate_peers::Workload::from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(serve(w));
}

async fn serve(w: floodgate_peers::Workload) {
    let listener = TcpListener::bind(("127.0.0.1", w.port)).await.expect("bind");
    floodgate_peers::ready("tokio-tungstenite", w.port);
    let mut senders = Vec::with_capacity(w.connections);
    let mut writers = Vec::new();
    while senders.len() < w.connections {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let ws = tokio_tungstenite::accept_async(tcp).await.expect("handshake");
        let (tx, mut rx) = mpsc::channel::<Message>(1024);
        senders.push(tx);
        writers.push(tokio::spawn(async move {
            let (mut sink, _stream) = futures_util::StreamExt::split(ws);
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
            // The connection stays open (as the other peers' do) until the client closes it.
            std::future::pending::<()>().await;
        }));
    }
    let pad = w.pad();
    let mut seqs = vec![0u64; w.connections];
    let mut text = String::with_capacity(256);
    for k in 0..w.events {
        let c = (k % w.connections as u64) as usize;
        seqs[c] += 1;
        text.clear();
        floodgate_peers::frame(&mut text, seqs[c], floodgate_peers::unix_ns(), &pad);
        if senders[c].send(Message::text(text.clone())).await.is_err() {
            break;
        }
    }
    drop(senders);
    for h in writers {
        let _ = h.await;
    }
    // Stay up until the clients have read everything and closed.
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
}
