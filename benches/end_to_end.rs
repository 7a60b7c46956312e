//! End to end over loopback: an embedded gateway, 64 real WebSocket clients, 200k events; and
//! a client that reconnects after missing 100k events, replayed from memory history or from
//! the spool over a real socket. `floodgate bench` is the full-size version of the first.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use floodgate::__bench::{run_bench, SocketReplayBench};

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

criterion_group!(benches, end_to_end, replay_over_a_socket);
criterion_main!(benches);
