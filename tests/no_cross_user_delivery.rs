//! Under concurrent load from several producer threads, every connection receives every event of
//! its own user, in order, and never an event of another user; a user's three connections each
//! receive everything.
mod util;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

const USERS: usize = 12;
const PRODUCERS: usize = 4;
const PER_PRODUCER_PER_USER: usize = 400;

#[test]
fn concurrent_producers_never_mix_users_and_fan_out_to_every_connection() {
    let gw = Arc::new(util::builder().shards(3).build().unwrap());
    let addr = gw.local_addr();
    // u0 has three connections; everyone else one.
    let mut clients: Vec<(usize, util::Client)> = Vec::new();
    for u in 0..USERS {
        let n = if u == 0 { 3 } else { 1 };
        for _ in 0..n {
            clients.push((u, util::connect(addr, &util::token(&format!("u{u}")))));
        }
    }
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let mut em = gw.emitter();
            std::thread::spawn(move || {
                for n in 0..PER_PRODUCER_PER_USER {
                    for u in 0..USERS {
                        let data = json!({"to": u, "p": p, "n": n});
                        let user = format!("u{u}");
                        let ev = floodgate::Event::custom("load", &data);
                        let backoff = crossbeam_utils::Backoff::new();
                        loop {
                            match em.emit(&user, ev) {
                                Ok(()) => break,
                                Err(e) if e.is_retryable() => backoff.snooze(),
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let expected = PRODUCERS * PER_PRODUCER_PER_USER;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(u, mut ws)| {
            std::thread::spawn(move || {
                (
                    u,
                    util::read_events(&mut ws, expected, Duration::from_secs(30)),
                )
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut per_user_conns: HashMap<usize, usize> = HashMap::new();
    for r in readers {
        let (u, events): (usize, Vec<Value>) = r.join().unwrap();
        *per_user_conns.entry(u).or_default() += 1;
        let mut next_n = [0u64; PRODUCERS];
        for (i, ev) in events.iter().enumerate() {
            assert_eq!(
                ev["data"]["to"], u as u64,
                "user u{u} got another user's event: {ev}"
            );
            assert_eq!(ev["seq"], i as u64 + 1, "gapless seq for u{u}");
            let p = ev["data"]["p"].as_u64().unwrap() as usize;
            assert_eq!(ev["data"]["n"], next_n[p], "per-producer order for u{u}");
            next_n[p] += 1;
        }
        assert!(next_n.iter().all(|&n| n == PER_PRODUCER_PER_USER as u64));
    }
    assert_eq!(per_user_conns[&0], 3);
    let m = gw.metrics();
    assert_eq!(m.stats.events_received, (USERS * expected) as u64);
    Arc::try_unwrap(gw).unwrap().shutdown().unwrap();
}
