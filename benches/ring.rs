//! Ring throughput: push+pop on one thread, and a producer and consumer on two threads.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use floodgate::__bench::channel;

const RECORD: [u8; 160] = [7u8; 160];

fn same_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let (mut p, mut cons) = channel(1 << 20);
    g.bench_function("push_pop_160B", |b| {
        b.iter(|| {
            p.push(&[&RECORD]).unwrap();
            cons.drain(1, |r| {
                std::hint::black_box(r);
            });
        })
    });
    g.throughput(Throughput::Elements(1024));
    g.bench_function("push_1024_then_drain_160B", |b| {
        b.iter(|| {
            for _ in 0..1024 {
                p.push(&[&RECORD]).unwrap();
            }
            cons.drain(usize::MAX, |r| {
                std::hint::black_box(r);
            });
        })
    });
    g.finish();
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_cross_thread");
    const N: u64 = 200_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.bench_function("spsc_200k_160B", |b| {
        b.iter_batched(
            || channel(1 << 20),
            |(mut p, mut cons)| {
                let t = std::thread::spawn(move || {
                    let backoff = crossbeam_utils::Backoff::new();
                    for _ in 0..N {
                        while p.push(&[&RECORD]).is_err() {
                            backoff.snooze();
                        }
                    }
                });
                let mut got = 0u64;
                while got < N {
                    got += cons.drain(usize::MAX, |r| {
                        std::hint::black_box(r);
                    }) as u64;
                }
                t.join().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, same_thread, cross_thread);
criterion_main!(benches);
