//! End to end over loopback: an embedded gateway, 64 real WebSocket clients, 200k events; and
//! a client that reconnects after missing 100k events, replayed from memory history or from
//! the spool over a real socket. `floodgate bench` is the full-size version of the first.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use floodgate::__bench::run_bench;

fn end_to_end(c: &mut Criterion) {
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10);
    const EVENTS: u64 = 200_000;
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("fanout_64_conns_200k_events", |b| {
        b.iter(|| {
            let r = run_bench(64, EVENTS);
            assert!(r, "bench lost or misrouted events");
        })
    });
    g.finish();
}

fn replay_over_a_socket(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay_over_a_socket");
    g.sample_size(10);
    let spool_dir = std::env::temp_dir();
    for (name, spool) in [("memory", None), ("spool", Some(spool_dir.as_path()))] {
        let mut rb = SocketReplayBench::new(100_000, spool);
        g.throughput(Throughput::Elements(rb.events()));
        g.bench_function(format!("replay_100k_missed_events_from_{name}"), |b| {
            b.iter(|| assert_eq!(rb.replay_all(), 100_000))
        });
    }
    g.finish();
}

/// A gateway holding `events` events of one user that nobody received, for measuring
/// what a reconnecting client's replay costs end to end, over a real socket.
pub struct SocketReplayBench {
    gw: Option<floodgate::Gateway>,
    token: String,
    epoch: String,
    events: u64,
    spool: Option<std::path::PathBuf>,
}

impl SocketReplayBench {
    /// Emits `events` events with a ~150-byte body to user `r`, kept in memory history or
    /// (with `spool`) only in a spool under that directory (no memory history).
    pub fn new(events: u64, spool: Option<&std::path::Path>) -> Self {
        let secret = [7u8; 32];
        let spool = spool.map(|d| d.join(format!("replay-{}", std::process::id())));
        let mut b = floodgate::Gateway::builder()
            .bind("127.0.0.1:0")
            .jwt_hs256_secret(secret)
            .shards(1)
            .ring_capacity(64 << 20);
        b = match &spool {
            Some(dir) => b.spool_dir(dir).history_max_events(0),
            None => b
                .history_max_events(events as usize)
                .history_max_bytes(1 << 30)
                .history_total_bytes(1 << 30),
        };
        let gw = b.build().expect("gateway");
        let token = floodgate::mint_hs256(&secret, "r", std::time::Duration::from_secs(3600))
            .expect("token");
        let (stream, early) = floodgate_wsclient::connect(
            gw.local_addr(),
            "/ws",
            &format!("Authorization: Bearer {token}\r\n"),
            std::time::Duration::from_secs(5),
        )
        .expect("connect");
        let mut reader = floodgate_wsclient::FrameReader::new(early, 64 << 10);
        let mut epoch = None;
        let mut s = stream;
        loop {
            reader
                .frames(|kind, p| {
                    if kind == floodgate_wsclient::Kind::Text {
                        let v: serde_json::Value = serde_json::from_slice(p).expect("json");
                        epoch = v["epoch"].as_str().map(str::to_owned);
                    }
                })
                .expect("frames");
            if epoch.is_some() {
                break;
            }
            reader.fill(&mut s).expect("hello");
        }
        drop(s);
        let mut em = gw.emitter();
        let data = serde_json::json!({ "text": "x".repeat(100) });
        for _ in 0..events {
            while em
                .emit("r", floodgate::Event::custom("missed", &data))
                .is_err()
            {
                std::thread::yield_now();
            }
        }
        while gw.metrics().stats.events_received < events {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        SocketReplayBench {
            gw: Some(gw),
            token,
            epoch: epoch.expect("epoch"),
            events,
            spool,
        }
    }

    /// Connects with `since=0` and reads until every event arrived; returns the count.
    pub fn replay_all(&mut self) -> u64 {
        let gw = self.gw.as_ref().expect("running");
        let (mut s, early) = floodgate_wsclient::connect(
            gw.local_addr(),
            &format!("/ws?since=0&epoch={}", self.epoch),
            &format!("Authorization: Bearer {}\r\n", self.token),
            std::time::Duration::from_secs(5),
        )
        .expect("connect");
        let mut reader = floodgate_wsclient::FrameReader::new(early, 256 << 10);
        let mut got = 0u64;
        loop {
            reader
                .frames(|_, p| got += u64::from(p.starts_with(b"{\"seq\":")))
                .expect("frames");
            if got >= self.events {
                return got;
            }
            reader.fill(&mut s).expect("read");
        }
    }

    /// Events a replay sends.
    pub fn events(&self) -> u64 {
        self.events
    }
}

impl Drop for SocketReplayBench {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            let _ = gw.shutdown();
        }
        if let Some(dir) = &self.spool {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

criterion_group!(benches, end_to_end, replay_over_a_socket);
criterion_main!(benches);
