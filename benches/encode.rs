//! Encoding an event body on the emitting thread (what `emit` does before the ring push), and
//! a spool record on the reactor (what routing adds when a spool is on).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use floodgate::{Event, EventType};

#[derive(serde::Serialize)]
struct Thinking<'a> {
    to: u32,
    p: u32,
    n: u64,
    text: &'a str,
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    let data = Thinking {
        to: 17,
        p: 0,
        n: 123_456,
        text: "the agent is reading the logs now",
    };
    g.bench_function("struct_data_150B", |b| {
        b.iter(|| {
            out.clear();
            let ev = Event::with(EventType::AgentThinking, "run-0017", &data);
            floodgate::__bench::encode_body(&ev, 1_763_700_000_000_000_000, &mut out);
            std::hint::black_box(&out);
        })
    });
    let value = serde_json::json!({"tool": "search", "args": {"q": "mio edge triggered", "k": 5}});
    g.bench_function("json_value_data", |b| {
        b.iter(|| {
            out.clear();
            let ev = Event::with(EventType::ToolExecuting, "run-0017", &value).thread("t-1");
            floodgate::__bench::encode_body(&ev, 1_763_700_000_000_000_000, &mut out);
            std::hint::black_box(&out);
        })
    });
    g.bench_function("no_data", |b| {
        b.iter(|| {
            out.clear();
            floodgate::__bench::encode_body(&Event::agent_started("run-0017"), 1, &mut out);
            std::hint::black_box(&out);
        })
    });
    // A 180-byte frame, as `floodgate bench` routes: header, CRC and copy.
    let frame = vec![b'x'; 180];
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("spool_record_180B", |b| {
        b.iter(|| {
            out.clear();
            floodgate::__bench::spool_encode(&mut out, b"u17", 42, &frame);
            std::hint::black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
