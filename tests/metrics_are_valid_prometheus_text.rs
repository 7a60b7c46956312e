//! `GET /metrics` is read by Prometheus's own parser (the `prometheus_client` Python package, the
//! reference implementation; scripts/setup installs it): every family has its `HELP` and
//! `TYPE`, every histogram its buckets, `_sum` and `_count`, and the values are the gateway's.
mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Parses `text` with `prometheus_client.parser` and returns, per family, its type, its help
/// and its samples as `[name, labels, value]`.
fn parse_with_prometheus_client(text: &str) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {
        "type": f.type,
        "help": f.documentation,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn sample(
    families: &serde_json::Value,
    family: &str,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .find(|s| s[0] == name && label.is_none_or(|(k, v)| s[1][k] == v))
        .unwrap_or_else(|| panic!("no sample {name} {label:?} in {family}"))[2]
        .as_f64()
        .unwrap()
}

#[test]
fn prometheus_parses_every_family_with_help_type_and_histogram_sums() {
    if !util::python_module("prometheus_client") {
        return;
    }
    let gw = util::builder().build().unwrap();
    let addr = gw.local_addr();
    let mut em = gw.emitter();
    let mut ws = util::connect(addr, &util::token("p"));
    for _ in 0..25 {
        em.agent_started("p", "r").unwrap();
    }
    util::read_events(&mut ws, 25, Duration::from_secs(5));
    util::eventually(Duration::from_secs(5), "delivery counted", || {
        gw.metrics().stats.events_delivered == 25
    });
    let resp = util::http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let families = parse_with_prometheus_client(body);
    let families_obj = families.as_object().unwrap();
    assert!(families_obj.len() >= 40, "{} families", families_obj.len());
    for (name, f) in families_obj {
        assert!(name.starts_with("floodgate_"), "{name}");
        let kind = f["type"].as_str().unwrap();
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind),
            "{name} is typed {kind}: its TYPE line is missing or wrong"
        );
        assert!(
            !f["help"].as_str().unwrap().is_empty(),
            "{name} has no HELP"
        );
        assert!(
            !f["samples"].as_array().unwrap().is_empty(),
            "{name} has no sample"
        );
    }
    // The parser's family names drop `_total`; its sample names keep it.
    assert_eq!(
        sample(
            &families,
            "floodgate_events_delivered",
            "floodgate_events_delivered_total",
            None
        ),
        25.0
    );
    assert_eq!(
        sample(
            &families,
            "floodgate_connections_rejected",
            "floodgate_connections_rejected_total",
            Some(("reason", "auth"))
        ),
        0.0
    );
    for hist in ["floodgate_batch_frames", "floodgate_queue_latency_seconds"] {
        assert_eq!(families[hist]["type"], "histogram");
        let count = sample(&families, hist, &format!("{hist}_count"), None);
        let inf = sample(
            &families,
            hist,
            &format!("{hist}_bucket"),
            Some(("le", "+Inf")),
        );
        let sum = sample(&families, hist, &format!("{hist}_sum"), None);
        assert_eq!(count, inf, "{hist}: _count is the +Inf bucket");
        assert!(count >= 1.0, "{hist} observed something");
        assert!(sum > 0.0, "{hist}_sum is {sum}");
    }
    assert_eq!(
        sample(
            &families,
            "floodgate_batch_frames",
            "floodgate_batch_frames_sum",
            None
        ),
        25.0,
        "frames written in all"
    );
    gw.shutdown().unwrap();
}
