//! Encoding an event body on the emitting thread (what `emit` does before the ring push), and
//! a spool record on the reactor (what routing adds when a spool is on); and the three serde
//! serializers the event's `data` could go through (serde_json, sonic-rs, simd-json), on the
//! payloads of the five agent events, to choose one (perf/2026-12-01-serializers.md).
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

/// A tool call's arguments and result, as an agent backend sends them.
#[derive(serde::Serialize)]
struct ToolCall<'a> {
    tool: &'a str,
    args: Args<'a>,
    result: Option<&'a str>,
    ms: u32,
}

#[derive(serde::Serialize)]
struct Args<'a> {
    query: &'a str,
    k: u32,
    filters: [&'a str; 3],
}

/// Each serializer writing `data` into a reused buffer, on the payloads the five agent event
/// types carry: a thinking delta (short text with a quote and a newline, so it needs escaping),
/// a struct of scalars, a nested tool call, a `serde_json::Value` (what ingest and dynamic code
/// hold), and a 2 KiB final answer.
fn serializers(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialize");
    let mut out = Vec::with_capacity(4096);
    let thinking = serde_json::json!({"delta": "Reading \"app.log\": 3 errors\n"});
    let scalars = Thinking {
        to: 17,
        p: 0,
        n: 123_456,
        text: "the agent is reading the logs now",
    };
    let tool = ToolCall {
        tool: "search",
        args: Args {
            query: "mio edge triggered readiness",
            k: 5,
            filters: ["rust", "linux", "epoll"],
        },
        result: Some("5 results, the first from docs.rs/mio"),
        ms: 38,
    };
    let value = serde_json::json!({"tool": "search", "args": {"q": "mio edge triggered", "k": 5}});
    let answer_text = "The reactor drains each ring in chunks. ".repeat(52);
    let answer = serde_json::json!({"answer": answer_text, "tokens": 512});
    macro_rules! three {
        ($name:literal, $data:expr) => {
            // The three must write the same JSON (key order and escapes may differ in bytes,
            // not in meaning) before their speed means anything.
            let a: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec($data).unwrap()).unwrap();
            let b: serde_json::Value =
                serde_json::from_slice(&sonic_rs::to_vec($data).unwrap()).unwrap();
            let c: serde_json::Value =
                serde_json::from_slice(&simd_json::serde::to_vec($data).unwrap()).unwrap();
            assert!(a == b && a == c, "{} serializes differently", $name);
            g.bench_function(concat!($name, "/serde_json"), |b| {
                b.iter(|| {
                    out.clear();
                    serde_json::to_writer(&mut out, $data).unwrap();
                    std::hint::black_box(&out);
                })
            });
            g.bench_function(concat!($name, "/sonic_rs"), |b| {
                b.iter(|| {
                    out.clear();
                    sonic_rs::to_writer(&mut out, $data).unwrap();
                    std::hint::black_box(&out);
                })
            });
            g.bench_function(concat!($name, "/simd_json"), |b| {
                b.iter(|| {
                    out.clear();
                    simd_json::serde::to_writer(&mut out, $data).unwrap();
                    std::hint::black_box(&out);
                })
            });
        };
    }
    three!("thinking_delta", &thinking);
    three!("struct_scalars", &scalars);
    three!("tool_call_nested", &tool);
    three!("json_value", &value);
    three!("answer_2KiB", &answer);
    g.finish();
}

criterion_group!(benches, encode, serializers);
criterion_main!(benches);
