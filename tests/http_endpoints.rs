//! Plain HTTP on the same port: health, Prometheus metrics, and clear refusals for everything
//! that is not a valid upgrade.
mod util;

#[test]
fn health_metrics_and_refusals() {
    let gw = util::builder().build().unwrap();
    let addr = gw.local_addr();
    let get = |path: &str| util::http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));

    let health = get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.ends_with("ok\n"));

    let mut em = gw.emitter();
    let mut ws = util::connect(addr, &util::token("m"));
    for _ in 0..10 {
        em.agent_started("m", "r").unwrap();
    }
    util::read_events(&mut ws, 10, std::time::Duration::from_secs(5));
    util::eventually(
        std::time::Duration::from_secs(5),
        "delivery counted",
        || gw.metrics().stats.events_delivered == 10,
    );
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    for needle in [
        "floodgate_connections 1\n",
        "floodgate_events_emitted_total 10\n",
        "floodgate_events_delivered_total 10\n",
        "floodgate_events_dropped_total{reason=\"connection\"} 0\n",
        "floodgate_events_without_connection_total 0\n",
        "floodgate_bytes_written_total ",
        "floodgate_write_syscalls_total ",
        "floodgate_batch_frames_bucket{le=\"+Inf\"} ",
        "floodgate_queue_latency_seconds_bucket{le=\"0.001\"} ",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }

    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    assert!(
        get("/echo").starts_with("HTTP/1.1 404"),
        "echo is off by default"
    );
    assert!(
        get("/ws").starts_with("HTTP/1.1 426"),
        "plain GET /ws needs an upgrade"
    );
    let post = util::http(
        addr,
        "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let v8 = util::upgrade_request("/ws", "").replace("Version: 13", "Version: 8");
    let resp = util::http(addr, &v8);
    assert!(
        resp.starts_with("HTTP/1.1 426") && resp.contains("Sec-WebSocket-Version: 13"),
        "{resp}"
    );
    assert!(util::http(addr, "\x16\x03\x01 garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(util::http(addr, &huge).starts_with("HTTP/1.1 431"));
    gw.shutdown().unwrap();
}

#[test]
fn an_idle_half_request_times_out() {
    let gw = util::builder()
        .handshake_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let resp = util::http(gw.local_addr(), "GET /ws HTTP/1.1\r\nHost:");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    gw.shutdown().unwrap();
}
