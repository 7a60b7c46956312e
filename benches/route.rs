//! Routing and batching in the sans-IO core: assign seq, build the frame, queue it on each of the
//! user's connections, and flush at the end of a pass.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use floodgate::__bench::{record, ReplayBench, RouteBench};

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let body = {
        let mut b = br#""type":"agent_thinking","ts":1763700000000000000,"run_id":"run-0017","data":{"to":17,"p":0,"n":1,"text":"xxxxxxxxxxxxxxxxxxxxxxxx"}}"#.to_vec();
        b.truncate(b.len());
        b
    };
    for (users, history) in [(64usize, true), (1000, true), (64, false), (1000, false)] {
        let recs: Vec<Vec<u8>> = (0..users)
            .map(|i| record(&format!("u{i}"), &body))
            .collect();
        let per_pass = 4096;
        g.throughput(Throughput::Elements(per_pass as u64));
        let mut rb = RouteBench::new(users, history);
        let history = if history { "" } else { "_no_history" };
        g.bench_function(
            format!("route_and_flush_{per_pass}_events_{users}_users{history}"),
            |b| {
                b.iter(|| {
                    for i in 0..per_pass {
                        rb.route(&recs[i % users]);
                    }
                    std::hint::black_box(rb.flush());
                })
            },
        );
    }
    g.finish();
}

/// A reconnecting client that missed 100k events: history to the connection's buffer, framed
/// and "written" (the socket itself is not part of this measurement).
fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    let body = br#""type":"agent_thinking","ts":1763700000000000000,"run_id":"run-0017","data":{"to":17,"p":0,"n":1,"text":"xxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    let mut rb = ReplayBench::new(100_000, body);
    g.throughput(Throughput::Elements(rb.events()));
    g.sample_size(20);
    g.bench_function("replay_100k_missed_events", |b| {
        b.iter(|| std::hint::black_box(rb.replay_all()))
    });
    g.finish();
}

criterion_group!(benches, route, replay);
criterion_main!(benches);
