//! `floodgate load` run as a user runs it (the binary, real sockets, a real gateway): each
//! scenario measures what it should, thresholds and an overloaded generator give their own exit
//! codes, errors on the wire are counted, and the JSON, HDR log and plot are written.

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const KEY: &str = "load-test-ingest-key-0123456789";

fn load(args: &[&str]) -> (i32, Option<Value>, String) {
    let out = util::output_within(
        Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("load")
            .args(args),
        Duration::from_secs(60),
    );
    let code = out.status.code().expect("exited");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim()).ok();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (code, json, format!("{stdout}\n{stderr}"))
}

/// A gateway with its echo endpoint on, and that endpoint's URL.
fn echo_gateway() -> (floodgate::Gateway, String) {
    let gw = util::builder().echo(true).build().unwrap();
    let url = format!("ws://{}/echo", gw.local_addr());
    (gw, url)
}

fn secret() -> String {
    String::from_utf8(util::SECRET.to_vec()).unwrap()
}

#[test]
fn echo_passes_its_thresholds_and_reports_both_latencies() {
    let (_gw, url) = echo_gateway();
    let (code, json, out) = load(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "4",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--threshold",
        "p99<5s",
        "--threshold",
        "rate>500",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let r = json.expect("JSON on stdout");
    assert_eq!(r["schema"], "floodgate.load/1");
    assert_eq!(r["verdict"], "pass");
    let replies = r["events"].as_u64().unwrap();
    assert!(
        (1500..=2100).contains(&replies),
        "about 2000 replies: {replies}"
    );
    for k in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(r["latency_us"][k].as_f64().unwrap() > 0.0, "{k}");
        assert!(r["uncorrected_latency_us"][k].is_number(), "{k}");
    }
    // Corrected latency counts from the intended time, so it is never below the uncorrected.
    assert!(r["latency_us"]["p50"].as_f64() >= r["uncorrected_latency_us"]["p50"].as_f64());
    assert_eq!(r["generator"]["overloaded"], false);
    assert_eq!(r["errors_total"], 0);
}

#[test]
fn a_failed_threshold_exits_1_even_when_overloaded_and_overload_alone_exits_3() {
    let (_gw, url) = echo_gateway();
    let (code, json, out) = load(&[
        "echo",
        "--url",
        &url,
        "--rate",
        "500",
        "--duration",
        "500ms",
        "--threshold",
        "p50<1ns",
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let r = json.unwrap();
    assert_eq!(r["verdict"], "threshold_failed");
    assert_eq!(r["thresholds"][0]["passed"], false);

    // Five million messages a second on one connection: no generator keeps that schedule, and
    // the run must say so rather than report a rate it did not offer. Every error allowed:
    // the overload alone decides.
    // A generator that far behind still stops on time: it flushes, reads and looks at the clock
    // every 1024 messages, instead of staying in its send loop while it is behind (a 1 s run
    // once took a minute). The bound is loose: a 1 s run plus the 2 s drain, on a slow machine.
    let overload = |threshold: &str| {
        let began = std::time::Instant::now();
        let ran = load(&[
            "echo",
            "--url",
            &url,
            "--rate",
            "5000000",
            "--duration",
            "1s",
            "--max-lag",
            "1ms",
            "--threshold",
            threshold,
            "--json",
        ]);
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "{:?}",
            began.elapsed()
        );
        ran
    };
    let (code, json, out) = overload("errors<=1");
    assert_eq!(code, 3, "{out}");
    let r = json.unwrap();
    assert_eq!(r["verdict"], "overloaded");
    assert_eq!(r["failed"], serde_json::json!(["overloaded"]));
    assert_eq!(r["generator"]["overloaded"], true);
    assert!(
        r["generator"]["sent"].as_u64() < r["generator"]["scheduled"].as_u64(),
        "{r}"
    );
    // A threshold that fails in an overloaded run is not hidden by the overload: exit 1, and
    // the report names both.
    let (code, json, out) = overload("p50<1ns");
    assert_eq!(code, 1, "{out}");
    let r = json.unwrap();
    assert_eq!(r["verdict"], "threshold_failed");
    assert_eq!(
        r["failed"],
        serde_json::json!(["threshold_failed", "overloaded"])
    );
}

#[test]
fn usage_errors_exit_2_and_unreachable_servers_exit_4() {
    let (code, _, out) = load(&["echo", "--url", "ws://127.0.0.1:9/", "--duration", "1s"]);
    assert_eq!(code, 2, "echo without --rate: {out}");
    assert!(out.contains("--rate"), "{out}");
    let (code, _, out) = load(&[
        "subscribe",
        "--url",
        "ws://127.0.0.1:9/",
        "--events",
        "1",
        "--threshold",
        "p99<",
    ]);
    assert_eq!(code, 2, "a threshold without a value: {out}");
    let (code, _, out) = load(&["subscribe", "--url", "http://x/", "--events", "1"]);
    assert_eq!(code, 2, "{out}");
    // A port nothing listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (code, _, out) = load(&["subscribe", "--url", &url, "--events", "10"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("no connection could be opened"), "{out}");
}

#[test]
fn subscribe_counts_every_event_in_order_with_latency() {
    let gw = util::builder().build().unwrap();
    let url = format!("ws://{}/ws", gw.local_addr());
    let secret = secret();
    let child = std::thread::spawn(move || {
        load(&[
            "subscribe",
            "--url",
            &url,
            "--connections",
            "4",
            "--jwt-secret",
            &secret,
            "--events",
            "4000",
            "--seq-field",
            "/seq",
            "--gapless",
            "--latency-field",
            "/ts",
            "--json",
            "--quiet",
        ])
    });
    // Every client connected (4 users), then emit 1000 events to each.
    util::eventually(Duration::from_secs(10), "4 connections", || {
        gw.metrics().stats.connections_open == 4
    });
    let mut em = gw.emitter();
    let data = serde_json::json!({"delta": "x"});
    for i in 0..4000 {
        util::emit_retrying(
            &mut em,
            &format!("u{}", i % 4),
            floodgate::Event::agent_thinking("r", &data),
        );
    }
    let (code, json, out) = child.join().unwrap();
    assert_eq!(code, 0, "{out}");
    let r = json.unwrap();
    assert_eq!(r["events"], 4000);
    assert_eq!(
        r["other_frames"], 4,
        "one hello per connection, not counted as events"
    );
    assert_eq!(r["latency_from"], "frame_timestamp");
    assert!(r["latency_us"]["max"].as_f64().unwrap() > 0.0);
    assert!(
        r["uncorrected_latency_us"].is_null(),
        "no schedule: one latency only"
    );
}

/// A server of its own: one connection, frames with seq 1, 2, 4, 4, 3 (one lost, one
/// duplicate, one out of order), then it waits.
fn skipping_server() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_owned();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        write!(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").unwrap();
        for seq in [1, 2, 4, 4, 3] {
            let p = format!("{{\"seq\":{seq}}}");
            s.write_all(&[0x81, p.len() as u8]).unwrap();
            s.write_all(p.as_bytes()).unwrap();
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    (port, h)
}

#[test]
fn loss_duplicates_and_reordering_on_the_wire_are_errors() {
    let (port, server) = skipping_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let (code, json, out) = load(&[
        "subscribe",
        "--url",
        &url,
        "--events",
        "3",
        "--seq-field",
        "/seq",
        "--gapless",
        "--idle-timeout",
        "1s",
        "--json",
    ]);
    assert_eq!(
        code, 1,
        "errors fail the run without an errors threshold: {out}"
    );
    let r = json.unwrap();
    assert_eq!(r["errors"]["lost"], 1, "{r}");
    assert_eq!(r["errors"]["duplicate"], 1, "{r}");
    assert_eq!(r["errors"]["out_of_order"], 1, "{r}");
    assert_eq!(r["events"], 3);
    server.join().unwrap();
}

#[test]
fn publish_measures_end_to_end_through_the_ingest_socket() {
    let gw = util::builder().ingest_api_key(KEY).build().unwrap();
    let url = format!("ws://{}/ws", gw.local_addr());
    let dir = util::temp_dir("load-publish");
    let hlog = dir.join("run.hlog");
    let svg = dir.join("run.svg");
    let png = dir.join("run.png");
    let (code, json, out) = load(&[
        "publish",
        "--url",
        &url,
        "--connections",
        "8",
        // The events go to the subscribers' users, whatever their prefix.
        "--user-prefix",
        "pub-",
        "--jwt-secret",
        &secret(),
        "--api-key",
        KEY,
        "--rate",
        "ramp:1000..4000/1s",
        "--duration",
        "1500ms",
        "--hdr-log",
        hlog.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
        "--interval",
        "250ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let r = json.unwrap();
    let sent = r["generator"]["sent"].as_u64().unwrap();
    // 2500 events due over the ramp's second, then 4000/s for half a second: about 4500.
    assert!((4000..=4700).contains(&sent), "{sent}");
    assert_eq!(
        r["events"].as_u64().unwrap(),
        sent,
        "every published event arrived once"
    );
    assert_eq!(r["errors_total"], 0);
    assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(gw.metrics().ingest.events_accepted, sent);
    assert_hdr_log(&hlog, sent, r["latency_us"]["p99"].as_f64().unwrap());
    // The SVG names the run (the command, secrets masked, the target rate and the verdict),
    // and holds the three charts with legends saying what the latency counts from.
    let plot = std::fs::read_to_string(&svg).unwrap();
    for part in [
        "<svg",
        "floodgate load publish: 8 connections to ws://",
        "target rate ramp 1000/s to 4000/s over 1s",
        "verdict pass (exit 0)",
        "--api-key &apos;***&apos;",
        "latency by percentile",
        "from each event&apos;s intended publish time to its delivery",
        "latency per interval",
        "throughput per interval",
    ] {
        assert!(
            plot.contains(part),
            "`{part}` not in the SVG: {}",
            &plot[..600.min(plot.len())]
        );
    }
    assert!(
        !plot.contains(KEY) && !plot.contains(&secret()),
        "no secret in the plot"
    );
    // The PNG: a real PNG of the plot's size.
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1100, 1130));
    assert!(
        bytes.len() > 50_000,
        "text and lines drawn: {} bytes",
        bytes.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads the HDR logs with HdrHistogram's Python implementation (`hdrh`, an independent reader):
/// the corrected file holds every event of the run, one untagged histogram per interval, and its
/// p99 is the report's; the uncorrected file beside it holds as many.
fn assert_hdr_log(path: &Path, events: u64, p99_us: f64) {
    let uncorrected = path.with_file_name("run.uncorrected.hlog");
    assert!(uncorrected.exists(), "{}", uncorrected.display());
    if !util::python_module("hdrh") {
        return;
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from hdrh.histogram import HdrHistogram\n\
             from hdrh.log import HistogramLogReader\n\
             for f in sys.argv[1:]:\n\
             \x20   total = HdrHistogram(1, 3600 * 10**9, 3)\n\
             \x20   r = HistogramLogReader(f, total)\n\
             \x20   n = 0\n\
             \x20   while True:\n\
             \x20       h = r.get_next_interval_histogram()\n\
             \x20       if h is None: break\n\
             \x20       total.add(h)\n\
             \x20       n += 1\n\
             \x20   print(n, total.get_total_count(), total.get_value_at_percentile(99))\n",
        )
        .arg(path)
        .arg(&uncorrected)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        assert!(row[0] >= 4.0, "an interval histogram per interval: {text}");
        assert_eq!(row[1] as u64, events, "every event in each file: {text}");
    }
    let p99_ns = rows[0][2];
    assert!(
        (p99_ns / 1e3 - p99_us).abs() <= p99_us * 0.01 + 1.0,
        "the corrected file's p99 ({p99_ns} ns) is the report's ({p99_us} us)"
    );
}

#[test]
fn connect_opens_holds_and_closes_connections_on_schedule() {
    let gw = util::builder().build().unwrap();
    let url = format!("ws://{}/ws?c={{conn}}", gw.local_addr());
    let (code, json, out) = load(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "40",
        "--jwt-secret",
        &secret(),
        "--rate",
        "400",
        "--hold",
        "200ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let r = json.unwrap();
    assert_eq!(r["events"], 40, "{r}");
    assert_eq!(r["generator"]["sent"], 40);
    assert!(r["latency_us"]["max"].as_f64().unwrap() > 0.0);
    let m = gw.metrics().stats;
    assert_eq!(m.connections_accepted, 40);
    util::eventually(
        Duration::from_secs(5),
        "every held connection closed",
        || gw.metrics().stats.connections_open == 0,
    );
}

/// `--intervals` (JSON lines as the run goes) and `--junit` (XML a CI system reads, parsed
/// here by Python's own XML parser).
#[test]
fn intervals_and_junit_are_written_for_ci() {
    let (_gw, url) = echo_gateway();
    let dir = util::temp_dir("load-ci-outputs");
    let (lines, junit) = (dir.join("intervals.jsonl"), dir.join("junit.xml"));
    let (code, json, out) = load(&[
        "echo",
        "--url",
        &url,
        "--rate",
        "1000",
        "--duration",
        "1300ms",
        "--interval",
        "250ms",
        "--threshold",
        "p99<5s",
        "--threshold",
        "rate>1000000",
        "--intervals",
        lines.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let r = json.unwrap();

    let text = std::fs::read_to_string(&lines).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(rows.len() >= 5, "{text}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["schema"], "floodgate.load.interval/1");
        assert_eq!(row["index"], i as u64, "{text}");
        assert_eq!(row["last"], i + 1 == rows.len(), "{text}");
    }
    let sum: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(
        sum,
        r["events"].as_u64().unwrap(),
        "the intervals add up to the total"
    );
    // The last interval is cut short by the end of the run: its rate counts only the time it
    // covered, so it is not a drop towards zero.
    let last = rows.last().unwrap();
    assert!(last["interval_sec"].as_f64().unwrap() <= 0.25);
    if last["events"].as_u64().unwrap() > 20 {
        assert!(last["events_per_sec"].as_f64().unwrap() > 500.0, "{last}");
    }

    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as E\n\
             r = E.parse(sys.argv[1]).getroot()\n\
             s = r.find('testsuite')\n\
             print(r.get('tests'), r.get('failures'))\n\
             for c in s.findall('testcase'):\n\
             \x20   f = c.find('failure')\n\
             \x20   print(c.get('name'), '|', 'FAIL ' + f.get('message') if f is not None else 'ok')\n",
        )
        .arg(&junit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let mut got = report.lines();
    assert_eq!(got.next(), Some("5 1"), "{report}");
    let cases: Vec<&str> = got.collect();
    assert_eq!(cases[0], "threshold p99<5s | ok", "{report}");
    assert!(
        cases[1].starts_with("threshold rate>1000000 | FAIL measured ") && cases[1].ends_with("/s"),
        "{report}"
    );
    assert!(
        cases[2].starts_with("threshold errors=0 (default"),
        "{report}"
    );
    assert_eq!(cases[3], "generator keeps 1000/s | ok", "{report}");
    assert_eq!(cases[4], "the run completes | ok", "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A threshold marked `:abort` stops a run as soon as it fails past its delay: a 20 s echo
/// whose p99 cannot be under 1 ns ends about half a second in, exit 1, saying which and when.
#[test]
fn an_abort_threshold_ends_the_run_early() {
    let (_gw, url) = echo_gateway();
    let began = std::time::Instant::now();
    let (code, json, out) = load(&[
        "echo",
        "--url",
        &url,
        "--rate",
        "500",
        "--duration",
        "20s",
        "--interval",
        "250ms",
        "--threshold",
        "p99<1ns:abort=500ms",
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    let r = json.unwrap();
    assert_eq!(r["verdict"], "threshold_failed");
    let why = r["aborted"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("threshold p99<1ns:abort=500ms failed 0.5 s in"),
        "{r}"
    );
    assert!(r["elapsed_sec"].as_f64().unwrap() < 5.0, "{r}");
}
