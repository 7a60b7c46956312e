//! Routing allocates nothing per event once warmed up, with history, a spool and events that
//! need an ack: checked with a counting allocator that counts only on this test's thread (and
//! only while asked to), so the other tests of the crate are not affected.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::testing;
use super::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are thread-local
// plain cells (`try_with`, so a thread being torn down is never counted).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract, which is the same.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` through us, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
        // SAFETY: as for `dealloc`, and the caller keeps `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
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
    let mut due = Vec::with_capacity(16);
    let mut batch = |core: &mut Core| {
        for _ in 0..64 {
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
    assert_eq!(core.stats.events_received, 250 * 64 * 8);
    assert_eq!(
        core.stats.events_acked,
        250 * 64 * 4,
        "every acked event settled"
    );
    assert_eq!(
        allocated, 0,
        "allocations while routing 25,600 events after warm-up"
    );
}
