//! Connection limits: per user (HTTP 429) and in total (HTTP 503), with slots released on close.
mod util;

use std::time::Duration;

fn status(resp: Result<util::Client, tungstenite::Error>) -> u16 {
    match resp {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn per_user_and_total_limits_are_enforced_and_released() {
    let gw = util::builder()
        .max_connections(3)
        .max_connections_per_user(2)
        .build()
        .unwrap();
    let addr = gw.local_addr();
    let t = util::token("lim");
    let a = util::connect(addr, &t);
    let _b = util::connect(addr, &t);
    assert_eq!(status(util::try_connect(addr, "/ws", Some(&t))), 429);
    let _c = util::connect(addr, &util::token("other"));
    assert_eq!(
        status(util::try_connect(addr, "/ws", Some(&util::token("third")))),
        503
    );
    drop(a);
    util::eventually(Duration::from_secs(5), "slot released", || {
        gw.metrics().stats.connections_open == 2
    });
    assert_eq!(status(util::try_connect(addr, "/ws", Some(&t))), 101);
    gw.shutdown().unwrap();
}
