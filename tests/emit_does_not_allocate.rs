//! The emit path allocates nothing per event in steady state, proved with a counting allocator
//! that counts only on the emitting thread.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are thread-local plain cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
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

#[derive(serde::Serialize)]
struct Delta<'a> {
    delta: &'a str,
    step: u32,
}

#[test]
fn steady_state_emit_allocates_nothing() {
    let gw = floodgate::Gateway::builder()
        .bind("127.0.0.1:0")
        .jwt_hs256_secret("test-secret-test-secret-test-secret!")
        .shards(2)
        .ring_capacity(1 << 24)
        .build()
        .unwrap();
    let mut em = gw.emitter();
    let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    let value = serde_json::json!({"tool": "search", "args": {"q": "rust", "k": 3}});
    let emit_all = |em: &mut floodgate::Emitter| {
        for i in 0..2_000u32 {
            let user = &users[i as usize % users.len()];
            let d = Delta {
                delta: "thinking about it",
                step: i,
            };
            em.agent_thinking(user, "run-1", &d).unwrap();
            em.tool_executing(user, "run-1", &value).unwrap();
            em.agent_started(user, "run-2").unwrap();
        }
    };
    // Warm-up grows the encoding buffer to its working size.
    emit_all(&mut em);
    let n = allocations_during(|| emit_all(&mut em));
    assert_eq!(n, 0, "emit allocated {n} times for 6000 events");
    // The counter itself works: an allocation on this thread is seen.
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);
    gw.shutdown().unwrap();
}
