//! The live dashboard (`/dashboard`, on with the `dashboard` setting): one HTML page, embedded in
//! the binary and served as it is, that polls `/dashboard/stats` once a second and draws what
//! it reads. The JSON holds each shard's counters as published (see `metrics`) and their sum;
//! rates and percentiles are worked out in the page from two readings. Nothing here names a
//! user: the dashboard shows what `/metrics` shows.

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::core::handshake;
use crate::core::stats::{Stats, LATENCY_BOUNDS_US};
use crate::metrics::MetricsSnapshot;

/// The page (HTML, CSS and script in one file; no external assets).
const PAGE: &str = include_str!("dashboard.html");

/// The whole HTTP response for `/dashboard`, built once.
pub(crate) fn page() -> &'static [u8] {
    static RESPONSE: OnceLock<Vec<u8>> = OnceLock::new();
    RESPONSE.get_or_init(|| {
        // The page runs only its own inline script and talks only to this origin; it may not
        // be framed by another site.
        let headers = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
                       style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'\r\n\
                       Cache-Control: no-store\r\n\
                       X-Content-Type-Options: nosniff\r\n";
        handshake::response(200, "OK", headers, "text/html; charset=utf-8", PAGE)
    })
}

/// The counters of one shard (or of all) that the page shows.
fn counters(s: &Stats) -> Value {
    json!({
        "connections": s.connections_open,
        "events_in": s.events_received,
        "events_out": s.events_delivered,
        "events_dropped": s.events_dropped,
        "events_without_connection": s.events_no_listener,
        "breakers_open": s.breakers_open,
        "breaker_trips": s.breaker_opened,
        "resumes": s.resumes,
        "gaps": s.gaps,
        "events_replayed": s.events_replayed,
        "events_redelivered": s.events_redelivered,
        "dead_letters": s.events_dead_lettered,
        "bytes_written": s.bytes_written,
        "latency_buckets": s.latency_buckets,
        "latency_sum_ns": s.latency_sum_ns,
    })
}

/// `/dashboard/stats`: `time_ms` (the gateway's clock), `latency_bounds_us` (the upper bounds
/// of `latency_buckets`, whose last bucket has none), `total` (every shard, plus the emitters'
/// `Full` refusals and ingest), and `shards`.
pub(crate) fn stats_json(shards: &[Stats], total: &MetricsSnapshot, time_ms: u64) -> String {
    let mut all = counters(&total.stats);
    all["rejected_full"] = total.events_rejected_full.into();
    all["ingest_accepted"] = total.ingest.events_accepted.into();
    all["ingest_rejected"] = total.ingest.events_rejected.into();
    json!({
        "time_ms": time_ms,
        "latency_bounds_us": LATENCY_BOUNDS_US,
        "total": all,
        "shards": shards.iter().map(counters).collect::<Vec<_>>(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_carries_each_shard_and_the_total() {
        let mut a = Stats {
            connections_open: 3,
            events_received: 100,
            events_delivered: 250,
            ..Default::default()
        };
        a.latency_buckets[2] = 7;
        let b = Stats {
            connections_open: 1,
            events_dead_lettered: 2,
            ..Default::default()
        };
        let mut total = MetricsSnapshot::default();
        for s in [&a, &b] {
            for (t, v) in total.stats.values_mut().zip(s.values()) {
                *t += v;
            }
        }
        total.events_rejected_full = 5;
        let v: Value = serde_json::from_str(&stats_json(&[a, b], &total, 1234)).unwrap();
        assert_eq!(v["time_ms"], 1234);
        assert_eq!(v["shards"].as_array().unwrap().len(), 2);
        assert_eq!(v["shards"][0]["connections"], 3);
        assert_eq!(v["shards"][0]["events_out"], 250);
        assert_eq!(v["shards"][0]["latency_buckets"][2], 7);
        assert_eq!(v["shards"][1]["dead_letters"], 2);
        assert_eq!(v["total"]["connections"], 4);
        assert_eq!(v["total"]["rejected_full"], 5);
        assert_eq!(
            v["latency_bounds_us"].as_array().unwrap().len() + 1,
            v["total"]["latency_buckets"].as_array().unwrap().len()
        );
    }

    #[test]
    fn the_page_is_one_self_contained_response() {
        let resp = std::str::from_utf8(page()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(resp.contains("Content-Security-Policy: default-src 'none'"));
        let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
        let declared: usize = resp
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
        assert!(body.contains("/dashboard/stats"));
        // No external assets: nothing is loaded from anywhere else.
        for outside in ["http://", "https://", "src=\"//"] {
            assert!(!body.contains(outside), "the page refers to {outside}");
        }
    }
}
