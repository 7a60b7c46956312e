//! After `shutdown` (and after dropping a gateway without it) no reactor thread, and no spool
//! sync thread, is left. This file holds a single test so that no other gateway's threads share
//! the process.
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

    // With a spool (fsync every 100 ms), each shard also has a sync thread.
    let dir = util::temp_dir("threads");
    let gw = util::builder().shards(2).spool_dir(&dir).build().unwrap();
    // A thread names itself as it starts: wait for the names to show.
    util::eventually(
        Duration::from_secs(5),
        "two reactor and two sync threads",
        || util::reactor_threads().len() == 2 && util::threads_named("floodgate-sync").len() == 2,
    );
    drop(gw);
    assert!(
        util::threads_named("floodgate-").is_empty(),
        "left after drop: {:?}",
        util::threads_named("floodgate-")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
