//! The emit path allocates nothing per event in steady state, proved with a counting allocator
//! (allocation-counter's, which counts only on the measuring thread).

/// Allocations (and reallocations) made on this thread while `f` runs. Checks first that the
/// counting allocator is the one in use, so a zero can never be vacuous.
fn allocations_during(f: impl FnOnce()) -> u64 {
    let probe = allocation_counter::measure(|| drop(std::hint::black_box(vec![0u8; 64])));
    assert_eq!(probe.count_total, 1, "the counting allocator is installed");
    allocation_counter::measure(f).count_total
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
