//! End to end over loopback: an embedded gateway, 64 real WebSocket clients, 200k events.
//! `floodgate bench` is the full-size version of this measurement.
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

criterion_group!(benches, end_to_end);
criterion_main!(benches);
