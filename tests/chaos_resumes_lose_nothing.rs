//! Chaos: 64 users and 1M events from a producer thread, while every 100 ms the clients drop a
//! random 10% of their connections mid-stream and reconnect with their last cursor. At the end
//! every client has every event of its user exactly once, in order, and none of another user's.
//!
//! This drives `floodgate bench --chaos` (real sockets; its clients check every frame: `seq`,
//! target user, per-producer order, the `hello` on each connect, and any `gap`).

#[test]
fn dropping_ten_percent_of_connections_every_100ms_loses_nothing() {
    // 1M events at 100k/s: about 10 s, so about 100 rounds of drops. History keeps every
    // event of every user (16 384 each), so no resume may need a gap.
    let r = floodgate::__bench::run_chaos(64, 1_000_000, 100_000, 16_384);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    eprintln!(
        "chaos: received {} of {} events, {} resumes, {} replayed, lost {}, duplicates {}, gaps {}, misrouted {}, out of order {}",
        n("received"),
        n("events"),
        n("resumes"),
        n("replayed"),
        n("lost"),
        n("duplicates"),
        n("gaps"),
        n("misrouted"),
        n("order_errors"),
    );
    assert_eq!(n("received"), 1_000_000, "{r}");
    assert_eq!(n("lost"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("gaps"), 0, "{r}");
    assert_eq!(n("misrouted"), 0, "{r}");
    assert_eq!(n("order_errors"), 0, "{r}");
    assert!(
        n("resumes") >= 300,
        "the driver really dropped connections: {r}"
    );
    assert!(
        n("replayed") > 0,
        "resumed connections were replayed to: {r}"
    );
}
