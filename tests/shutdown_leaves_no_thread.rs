//! After `shutdown` (and after dropping a gateway without it) no reactor thread is left. This
//! file holds a single test so that no other gateway's threads share the process.
mod util;

use std::time::Duration;

#[test]
fn shutdown_and_drop_join_every_reactor_thread() {
    let gw = util::builder().shards(3).build().unwrap();
    let mut ws = util::connect(gw.local_addr(), &util::token("t"));
    let mut em = gw.emitter();
    for _ in 0..1000 {
        while em.agent_started("t", "r").is_err() {
            std::thread::yield_now();
        }
    }
    util::read_events(&mut ws, 1000, Duration::from_secs(10));
    assert_eq!(util::reactor_threads().len(), 3);
    gw.shutdown().unwrap();
    assert!(
        util::reactor_threads().is_empty(),
        "left: {:?}",
        util::reactor_threads()
    );

    let gw = util::builder().shards(2).build().unwrap();
    // A thread names itself as it starts: wait for both names to show.
    util::eventually(Duration::from_secs(5), "two reactor threads", || {
        util::reactor_threads().len() == 2
    });
    drop(gw);
    assert!(
        util::reactor_threads().is_empty(),
        "left after drop: {:?}",
        util::reactor_threads()
    );
}
