//! A client with a valid token receives exactly its user's events, in order, with gapless `seq`
//! from 1 and the documented members.
mod util;

use std::time::Duration;

use floodgate::{Event, EventType};
use serde_json::json;

#[test]
fn a_client_receives_its_events_in_order_with_gapless_seq() {
    let gw = util::builder().build().unwrap();
    let mut ws = util::connect(gw.local_addr(), &util::token("alice"));
    let mut em = gw.emitter();
    em.agent_started("alice", "run-1").unwrap();
    let thinking = json!({"delta": "Reading the \"logs\"\n"});
    em.agent_thinking("alice", "run-1", &thinking).unwrap();
    let tool = json!({"tool": "search", "args": {"q": "mio"}});
    em.emit(
        "alice",
        Event::with(EventType::ToolExecuting, "run-1", &tool).thread("th-7"),
    )
    .unwrap();
    em.tool_completed("alice", "run-1", &json!({"hits": 3}))
        .unwrap();
    em.agent_completed("alice", "run-1", &json!({"answer": 42}))
        .unwrap();
    em.emit("alice", Event::custom("progress", &json!({"pct": 50})))
        .unwrap();
    for i in 0..500u32 {
        em.emit("alice", Event::custom("tick", &i)).unwrap();
    }

    let events = util::read_events(&mut ws, 506, Duration::from_secs(10));
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["seq"], i as u64 + 1, "seq is gapless from 1: {ev}");
        assert!(
            ev["ts"].as_u64().unwrap() > 1_600_000_000_000_000_000,
            "ts is unix ns"
        );
    }
    let types: Vec<&str> = events[..6]
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_completed",
            "progress"
        ]
    );
    assert_eq!(events[0]["run_id"], "run-1");
    assert!(
        events[0].get("data").is_none(),
        "agent_started without data has no data member"
    );
    assert_eq!(events[1]["data"]["delta"], "Reading the \"logs\"\n");
    assert_eq!(events[2]["thread_id"], "th-7");
    assert_eq!(events[2]["data"]["args"]["q"], "mio");
    assert!(events[5].get("run_id").is_none());
    for (i, ev) in events[6..].iter().enumerate() {
        assert_eq!(ev["type"], "tick");
        assert_eq!(ev["data"], i as u64, "per-emitter order is kept");
    }
    gw.shutdown().unwrap();
}

#[test]
fn events_for_a_user_arriving_after_the_upgrade_are_never_missed() {
    // The 101 is written only after the connection is routed on its shard, so an event emitted
    // right after the client sees the upgrade must arrive. Repeat to catch races.
    let gw = util::builder().shards(4).build().unwrap();
    let mut em = gw.emitter();
    for round in 0..50 {
        let user = format!("race-{round}");
        let mut ws = util::connect(gw.local_addr(), &util::token(&user));
        em.agent_started(&user, "r").unwrap();
        let ev = util::read_events(&mut ws, 1, Duration::from_secs(5));
        assert_eq!(ev[0]["type"], "agent_started");
        assert_eq!(ev[0]["seq"], 1);
    }
    gw.shutdown().unwrap();
}
