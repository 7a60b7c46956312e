//! Routing allocates nothing per event once warmed up, with history, a spool and events that
//! need an ack: checked with allocation-counter's counting allocator, which counts only on the
//! measuring thread (and only while measuring), so the other tests of the crate are not affected.

use super::testing;
use super::*;

/// Allocations (and reallocations) made on this thread while `f` runs. Checks first that the
/// counting allocator is the one in use, so a zero can never be vacuous.
fn allocations_during(f: impl FnOnce()) -> u64 {
    let probe = allocation_counter::measure(|| drop(std::hint::black_box(vec![0u8; 64])));
    assert_eq!(probe.count_total, 1, "the counting allocator is installed");
    allocation_counter::measure(f).count_total
}

#[test]
fn routing_with_history_spool_and_acks_allocates_nothing_per_event_once_warm() {
    let mut core = testing::core(testing::config(|c| {
        c.history.max_bytes = 64 << 10;
        c.history_budget = 256 << 10; // small, so the log is full (and reused) after warm-up
        c.spool = true;
        c.ping_interval = Duration::ZERO;
    }));
    let t0 = Instant::now();
    let users = ["a", "b", "c", "d"];
    let ids: Vec<ConnId> = users
        .iter()
        .map(|u| {
            let id = testing::connect(&mut core, testing::user(u), None, t0);
            core.on_written(id, core.conn(id).out().len());
            id
        })
        .collect();
    let body = br#""type":"agent_completed","ts":1,"ack":true,"run_id":"r","data":{"x":"yyyyyyyyyyyyyyyy"}}"#;
    let records: Vec<Vec<u8>> = users
        .iter()
        .flat_map(|u| {
            [
                testing::record_with(u, body, true, None),
                testing::record(u, br#""type":"agent_thinking","ts":1}"#),
            ]
        })
        .collect();
    // One batch: route, spool (the reactor would write `spool_out`), write every connection.
    // 512 events that need an ack, settled by one ack per user: more than a pool bounded at
    // 256 buffers kept (it freed the rest, and the next batch allocated them again).
    let mut due = Vec::with_capacity(16);
    let mut batch = |core: &mut Core| {
        for _ in 0..128 {
            for r in &records {
                core.route(r, t0, 0);
            }
        }
        core.on_spooled();
        core.take_writable(t0, true, &mut due);
        for &id in &due {
            core.on_written(id, core.conn(id).out().len());
        }
        due.clear();
    };
    let ack_all = |core: &mut Core| {
        for (u, &id) in users.iter().zip(&ids) {
            let last = core.last_seq(u.as_bytes());
            testing::ack(core, id, last, t0);
        }
        core.on_spooled();
    };
    for _ in 0..200 {
        batch(&mut core);
        ack_all(&mut core);
    }
    // Warm: the log wrapped, the indexes trimmed, the pools and buffers have their sizes.
    let mut allocated = 0;
    for _ in 0..50 {
        allocated += allocations_during(|| batch(&mut core));
        ack_all(&mut core); // acks are client messages, not events: not counted
    }
    assert_eq!(core.stats.events_received, 250 * 128 * 8);
    assert_eq!(
        core.stats.events_acked,
        250 * 128 * 4,
        "every acked event settled"
    );
    assert_eq!(core.frame_pool.len(), 512, "every settled frame kept");
    assert_eq!(
        allocated, 0,
        "allocations while routing 51,200 events after warm-up"
    );
}
