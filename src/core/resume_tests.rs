//! Resume, history and the replay seam, on a virtual clock.

use super::testing::{self, numbered as record, user};
use super::*;
use floodgate_wsclient::{FrameReader, Kind};

fn cfg(f: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    testing::config(|c| {
        c.epoch_seed = 7;
        f(c)
    })
}

/// What a client saw, frame by frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Hello { epoch: u64, last_seq: u64 },
    Event(u64),
    Gap { reason: String, from: u64, to: u64 },
    Redelivery(u64),
}

fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a serde_json::Value {
    v.get(k).unwrap_or_else(|| panic!("no `{k}` in {v}"))
}

fn decode(payload: &[u8]) -> Seen {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(payload)));
    let v = &v;
    let hex = |k: &str| u64::from_str_radix(field(v, k).as_str().unwrap(), 16).unwrap();
    if let Some(seq) = v.get("seq") {
        return Seen::Event(seq.as_u64().unwrap());
    }
    match field(v, "type").as_str().unwrap() {
        "hello" => Seen::Hello {
            epoch: hex("epoch"),
            last_seq: field(v, "last_seq").as_u64().unwrap(),
        },
        "gap" => Seen::Gap {
            reason: field(v, "reason").as_str().unwrap().to_owned(),
            from: field(v, "from").as_u64().unwrap(),
            to: field(v, "to").as_u64().unwrap(),
        },
        "redelivery" => Seen::Redelivery(field(v, "count").as_u64().unwrap()),
        other => panic!("unexpected frame type {other}"),
    }
}

/// One pass's worth of work after routing: replays pumped, due connections written in full.
/// Returns what `id` received.
fn pass(core: &mut Core, id: ConnId, now: Instant) -> Vec<Seen> {
    core.pump_replays(now, &mut durable::NoCold);
    testing::writable(core, now, true);
    let frames = testing::write_all(core, id);
    frames
        .iter()
        .map(|(k, p)| {
            assert_eq!(*k, Kind::Text);
            decode(p)
        })
        .collect()
}

/// Passes until `id` has nothing more to replay or write.
fn drain(core: &mut Core, id: ConnId, now: Instant) -> Vec<Seen> {
    let mut all = Vec::new();
    loop {
        let got = pass(core, id, now);
        if got.is_empty() && !core.replay_ready() {
            return all;
        }
        all.extend(got);
    }
}

/// Connects as `u` with the cursor `(epoch, since)`.
fn resume(core: &mut Core, u: &str, since: u64, epoch: Option<u64>, now: Instant) -> ConnId {
    testing::connect(core, user(u), Some(Cursor { since, epoch }), now)
}

/// Connects as `u` (live only) and writes the `hello`, so what follows is events.
fn connected(core: &mut Core, u: &str, now: Instant) -> ConnId {
    let id = core.adopt(user(u), b"", b"", None, now).unwrap();
    let hello_len = core.conn(id).out().len();
    core.on_written(id, hello_len);
    id
}

/// The epoch of `u`'s stream, learned the way a client does (from `hello`), then disconnected.
fn learn_epoch(core: &mut Core, u: &str, now: Instant) -> u64 {
    let probe = core.adopt(user(u), b"", b"", None, now).unwrap();
    let (epoch, _) = hello(&drain(core, probe, now));
    core.remove(probe);
    epoch
}

fn events(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Event(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn hello(seen: &[Seen]) -> (u64, u64) {
    match seen.first() {
        Some(Seen::Hello { epoch, last_seq }) => (*epoch, *last_seq),
        other => panic!("first frame is not hello: {other:?}"),
    }
}

#[test]
fn every_connection_starts_with_hello_carrying_the_cursor() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    for i in 1..=3 {
        core.route(&record("a", i), t0, 0);
    }
    let id = core.adopt(user("a"), b"", b"", None, t0).unwrap();
    let seen = drain(&mut core, id, t0);
    let (epoch, last) = hello(&seen);
    assert_eq!(last, 3);
    assert_ne!(epoch, 0);
    assert_eq!(seen.len(), 1, "no cursor: live only, no replay");
}

#[test]
fn resume_replays_what_was_missed_then_goes_live_without_duplicate_or_gap() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let a = core.adopt(user("a"), b"", b"", None, t0).unwrap();
    for i in 1..=5 {
        core.route(&record("a", i), t0, 0);
    }
    let first = drain(&mut core, a, t0);
    let (epoch, _) = hello(&first);
    assert_eq!(events(&first), [1, 2, 3, 4, 5]);
    // The client saw up to 3 (4 and 5 were lost with the socket), and reconnects; events keep
    // coming between the reconnect and the first pass.
    core.remove(a);
    for i in 6..=8 {
        core.route(&record("a", i), t0, 0);
    }
    let b = resume(&mut core, "a", 3, Some(epoch), t0);
    core.route(&record("a", 9), t0, 0);
    let mut seen = drain(&mut core, b, t0);
    core.route(&record("a", 10), t0, 0);
    seen.extend(drain(&mut core, b, t0));
    assert_eq!(hello(&seen), (epoch, 8));
    assert_eq!(events(&seen), (4..=10).collect::<Vec<_>>());
    assert_eq!(core.stats.resumes, 1);
    assert_eq!(core.stats.events_replayed, 6, "4..=9 came from history");
    assert_eq!(core.stats.gaps, 0);
}

#[test]
fn evicted_history_is_reported_as_an_explicit_gap() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.history.max_events = 4));
    let epoch = learn_epoch(&mut core, "a", t0);
    for i in 1..=10 {
        core.route(&record("a", i), t0, 0);
    }
    let id = resume(&mut core, "a", 2, Some(epoch), t0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(
        seen[1],
        Seen::Gap {
            reason: "history_evicted".into(),
            from: 3,
            to: 6
        }
    );
    assert_eq!(events(&seen), [7, 8, 9, 10]);
    assert_eq!(core.stats.gaps, 1);
}

#[test]
fn history_past_its_age_is_gone_and_said_so() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.history.max_age = Duration::from_secs(60)));
    let epoch = learn_epoch(&mut core, "a", t0);
    core.route(&record("a", 1), t0, 0);
    core.route(&record("a", 2), t0 + Duration::from_secs(50), 0);
    let later = t0 + Duration::from_secs(70);
    core.tick(later);
    let cursor = Cursor {
        since: 0,
        epoch: Some(epoch),
    };
    let id = core
        .adopt(user("a"), b"", b"", Some(cursor), later)
        .unwrap();
    let seen = drain(&mut core, id, later);
    assert_eq!(
        seen[1],
        Seen::Gap {
            reason: "history_evicted".into(),
            from: 1,
            to: 1
        }
    );
    assert_eq!(events(&seen), [2]);
}

#[test]
fn a_cursor_from_another_epoch_gets_a_gap_and_the_retained_stream() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    for i in 1..=3 {
        core.route(&record("a", i), t0, 0);
    }
    let id = resume(&mut core, "a", 40, Some(12345), t0);
    let seen = drain(&mut core, id, t0);
    assert!(matches!(&seen[1], Seen::Gap { reason, from: 1, to: 0 } if reason == "epoch_changed"));
    assert_eq!(
        events(&seen),
        [1, 2, 3],
        "everything retained of the new epoch"
    );
}

#[test]
fn a_cursor_ahead_of_the_stream_is_reported_and_live_continues() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let probe = core.adopt(user("a"), b"", b"", None, t0).unwrap();
    let (epoch, _) = hello(&drain(&mut core, probe, t0));
    core.route(&record("a", 1), t0, 0);
    let id = resume(&mut core, "a", 9, Some(epoch), t0);
    core.route(&record("a", 2), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert!(matches!(&seen[1], Seen::Gap { reason, from: 2, to: 9 } if reason == "cursor_ahead"));
    assert_eq!(events(&seen), [2]);
}

#[test]
fn evicted_offline_streams_get_a_new_epoch() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| c.max_offline_users = 1));
    let a = core.adopt(user("a"), b"", b"", None, t0).unwrap();
    let (epoch, _) = hello(&drain(&mut core, a, t0));
    core.route(&record("a", 1), t0, 0);
    core.remove(a);
    core.route(&record("b", 1), t0, 0); // two offline users: "a" is dropped
    let id = resume(&mut core, "a", 1, Some(epoch), t0);
    let seen = drain(&mut core, id, t0);
    let (new_epoch, last) = hello(&seen);
    assert_ne!(new_epoch, epoch);
    assert_eq!(last, 0);
    assert!(matches!(&seen[1], Seen::Gap { reason, .. } if reason == "epoch_changed"));
}

#[test]
fn a_long_replay_goes_out_in_bounded_chunks() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.history.max_events = 100_000;
        c.history.max_bytes = 16 << 20;
    }));
    let n = 60_000u64;
    for i in 1..=n {
        core.route(&record("a", i), t0, 0);
    }
    let id = resume(&mut core, "a", 0, None, t0);
    let mut got = Vec::new();
    let mut passes = 0;
    loop {
        core.pump_replays(t0, &mut durable::NoCold);
        let pending = core.conn(id).out().len();
        assert!(
            pending <= REPLAY_CHUNK + REPLAY_LOW_WATER + 4096,
            "{pending}"
        );
        let seen = pass(&mut core, id, t0);
        if seen.is_empty() {
            break;
        }
        got.extend(events(&seen));
        passes += 1;
        // Live events keep arriving during the replay.
        if passes <= 3 {
            core.route(&record("a", n + passes), t0, 0);
        }
    }
    assert!(passes > 3, "replayed in chunks ({passes} passes)");
    assert_eq!(got, (1..=n + 3).collect::<Vec<_>>());
}

#[test]
fn partial_writes_count_delivered_events_exactly() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = core
        .adopt(user("a"), b"HTTP/1.1 101 Switching\r\n\r\n", b"", None, t0)
        .unwrap();
    for i in 1..=5 {
        core.route(&record("a", i), t0, 0);
    }
    let mut due = Vec::new();
    core.take_writable(t0, true, &mut due);
    // Write 7 bytes at a time, as a congested socket might.
    let mut wire = Vec::new();
    while !core.conn(id).out().is_empty() {
        let out = core.conn(id).out();
        let n = out.len().min(7);
        wire.extend_from_slice(&out[..n]);
        core.on_written(id, n);
        assert!(core.stats.events_delivered <= 5);
    }
    assert_eq!(core.stats.events_delivered, 5);
    let body = &wire[wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    let mut r = FrameReader::new(body.to_vec(), 1024);
    let mut seen = Vec::new();
    r.frames(|_, p| seen.push(decode(p))).unwrap();
    assert_eq!(events(&seen), [1, 2, 3, 4, 5]);
}

#[test]
fn a_half_written_frame_counts_as_dropped_when_the_connection_goes() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|_| {}));
    let id = connected(&mut core, "a", t0);
    for i in 1..=3 {
        core.route(&record("a", i), t0, 0);
    }
    let frame = core.conn(id).out().len() / 3;
    core.on_written(id, frame + 2);
    assert_eq!(core.stats.events_delivered, 1);
    assert_eq!(core.remove(id), 2);
    assert_eq!(core.stats.events_dropped, 2);
}

mod seam {
    //! Random interleavings of emit, write, disconnect and reconnect: the client's view is
    //! always its user's stream in order, each event at most once, every hole announced by a
    //! gap frame, and complete at the end if history kept everything.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Emit(u8),
        /// The socket takes up to this many bytes.
        Write(u16),
        Disconnect,
        Reconnect,
        Tick(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..20).prop_map(Op::Emit),
            4 => (1u16..4000).prop_map(Op::Write),
            1 => Just(Op::Disconnect),
            2 => Just(Op::Reconnect),
            1 => (0u8..3).prop_map(Op::Tick),
        ]
    }

    /// The client: what it has seen, and its cursor.
    struct Client {
        epoch: Option<u64>,
        last: u64,
        /// Every event seq, in arrival order, plus announced gaps.
        log: Vec<Seen>,
        reader: Option<FrameReader>,
    }

    impl Client {
        fn receive(&mut self, bytes: &[u8]) {
            let r = self.reader.as_mut().expect("connected");
            let mut src = bytes;
            while !src.is_empty() {
                r.fill(&mut src).unwrap();
            }
            let mut frames = Vec::new();
            r.frames(|k, p| {
                if k == Kind::Text {
                    frames.push(decode(p));
                }
            })
            .unwrap();
            for f in frames {
                match &f {
                    Seen::Hello { epoch, .. } => {
                        if self.epoch != Some(*epoch) {
                            // A new stream: the cursor restarts.
                            self.epoch = Some(*epoch);
                        }
                    }
                    Seen::Event(n) => self.last = *n,
                    Seen::Gap { .. } | Seen::Redelivery(_) => {}
                }
                self.log.push(f);
            }
        }
    }

    /// Runs `ops` with `history` events of memory history per user, and a spool behind it if
    /// `spool` (an in-memory cold tier that keeps everything).
    fn run(ops: &[Op], history: usize, spool: bool) -> (Client, u64) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut core = testing::core(cfg(|c| {
            c.history.max_events = history;
            c.ping_interval = Duration::ZERO; // Tick jumps minutes; pings are tested elsewhere
            if spool {
                c.spool = true;
                c.spool_checkpoint_bytes = checkpoint_spacing(64 << 10); // checkpoints every 16 KiB
            }
        }));
        // Without a spool the core encodes nothing and never reads it.
        let mut cold = testing::MemCold::default();
        let mut emitted = 0u64;
        let mut client = Client {
            epoch: None,
            last: 0,
            log: Vec::new(),
            reader: None,
        };
        let mut first = true;
        let mut connect = |core: &mut Core, client: &mut Client, now| {
            // The first connection is live-only; later ones resume from the cursor, or ask
            // for everything retained (`since=0`) if they never learned one.
            let cursor = (!std::mem::take(&mut first)).then_some(Cursor {
                since: client.last,
                epoch: client.epoch,
            });
            client.reader = Some(FrameReader::new(Vec::new(), 1024));
            core.adopt(user("a"), b"", b"", cursor, now).unwrap()
        };
        let mut conn: Option<ConnId> = Some(connect(&mut core, &mut client, now));
        for op in ops {
            match *op {
                Op::Emit(n) => {
                    for _ in 0..n {
                        emitted += 1;
                        core.route(&record("a", emitted), now, 0);
                    }
                }
                Op::Write(max) => {
                    if let Some(id) = conn {
                        cold.absorb(&mut core);
                        core.pump_replays(now, &mut cold);
                        let out = core.conn(id).out();
                        let n = out.len().min(max as usize);
                        let bytes = out[..n].to_vec();
                        if n > 0 {
                            core.on_written(id, n);
                        }
                        client.receive(&bytes);
                    }
                }
                Op::Disconnect => {
                    if let Some(id) = conn.take() {
                        core.remove(id);
                        client.reader = None;
                    }
                }
                Op::Reconnect => {
                    if let Some(id) = conn.take() {
                        core.remove(id);
                    }
                    conn = Some(connect(&mut core, &mut client, now));
                }
                Op::Tick(s) => {
                    now += Duration::from_secs(u64::from(s) * 400);
                    core.tick(now);
                }
            }
        }
        // Finally: reconnect and read everything.
        if let Some(id) = conn.take() {
            core.remove(id);
        }
        let id = connect(&mut core, &mut client, now);
        loop {
            cold.absorb(&mut core);
            core.pump_replays(now, &mut cold);
            let bytes = core.conn(id).out().to_vec();
            if bytes.is_empty() {
                break;
            }
            core.on_written(id, bytes.len());
            client.receive(&bytes);
        }
        (client, emitted)
    }

    /// Checks the client's log: within one epoch, events strictly increase by one except
    /// across an announced gap.
    fn check(client: &Client) -> Result<(), TestCaseError> {
        let mut last: Option<u64> = None;
        let mut covered_to = 0u64;
        for s in &client.log {
            match s {
                Seen::Hello { last_seq, .. } => {
                    if last.is_some_and(|l| l > *last_seq) {
                        last = None; // a new epoch restarts numbering
                    }
                }
                Seen::Gap { from, to, .. } => covered_to = covered_to.max(*to).max(*from),
                Seen::Redelivery(_) => {}
                Seen::Event(n) => {
                    if let Some(l) = last {
                        prop_assert!(*n > l, "duplicate or reordered: {n} after {l}");
                        prop_assert!(
                            *n == l + 1 || *n <= covered_to + 1,
                            "silent hole before {n} (last {l}, gaps cover to {covered_to})"
                        );
                    }
                    last = Some(*n);
                }
            }
        }
        Ok(())
    }

    proptest! {
        // No regression files: the repository's top level is fixed, and a failure prints its
        // minimal case, which belongs in a named test above.
        #![proptest_config(ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn with_ample_history_every_event_arrives_exactly_once_in_order(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let (client, emitted) = run(&ops, 100_000, false);
            check(&client)?;
            let got = events(&client.log);
            let gaps = client.log.iter().filter(|s| matches!(s, Seen::Gap { .. })).count();
            // Age (Tick) may evict; otherwise nothing may be missing.
            if gaps == 0 {
                let mut want: Vec<u64> = (1..=emitted).collect();
                // The first connection is live-only until its first cursor exists, and sees
                // everything because it connects before any emit.
                want.dedup();
                prop_assert_eq!(got, want);
            } else {
                let only_evictions = client
                    .log
                    .iter()
                    .all(|s| !matches!(s, Seen::Gap { reason, .. } if reason != "history_evicted"));
                prop_assert!(only_evictions, "only age can cost events here: {:?}", client.log);
            }
        }

        #[test]
        fn with_little_history_holes_are_always_announced(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let (client, emitted) = run(&ops, 8, false);
            check(&client)?;
            // After the final reconnect the client has every event up to the last one emitted,
            // or was told which ones it cannot have.
            let announced = client
                .log
                .iter()
                .filter_map(|s| match s {
                    Seen::Gap { to, .. } => Some(*to),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            prop_assert_eq!(client.last.max(announced), emitted, "{:?}", client.log);
        }

        #[test]
        fn with_a_spool_behind_a_tiny_memory_every_event_arrives_exactly_once_in_order(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            // Four events of memory history: most replays read the spool, then switch to
            // memory, then to live, and age (Tick) evicts memory but not the spool.
            let (client, emitted) = run(&ops, 4, true);
            check(&client)?;
            prop_assert!(
                !client.log.iter().any(|s| matches!(s, Seen::Gap { .. })),
                "the spool holds everything: {:?}", client.log
            );
            let want: Vec<u64> = (1..=emitted).collect();
            prop_assert_eq!(events(&client.log), want);
        }
    }
}

#[test]
fn without_history_a_resume_gets_a_gap_for_everything_it_missed() {
    let t0 = Instant::now();
    let mut core = testing::core(cfg(|c| {
        c.history.max_events = 0;
        c.breaker.cooldown = Duration::ZERO;
    }));
    let epoch = learn_epoch(&mut core, "a", t0);
    for i in 1..=5 {
        core.route(&record("a", i), t0, 0);
    }
    let id = resume(&mut core, "a", 2, Some(epoch), t0);
    core.route(&record("a", 6), t0, 0);
    let seen = drain(&mut core, id, t0);
    assert_eq!(
        seen[1],
        Seen::Gap {
            reason: "history_evicted".into(),
            from: 3,
            to: 5
        }
    );
    assert_eq!(events(&seen), [6], "live events continue");
    assert_eq!(core.stats.history_bytes, 0, "nothing is kept");
}

mod breakers {
    //! A connection that falls behind has its breaker opened: its backlog leaves memory, it is
    //! refilled from history after the cool-down, and it ends up with every event, in order.

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn core() -> Core {
        testing::core(cfg(|c| {
            c.max_outbound_bytes = 8000;
            c.breaker.trip_after = S;
            c.breaker.cooldown = 5 * S;
            c.history.max_events = 10_000;
        }))
    }

    /// An event of about 120 bytes on the wire.
    fn big(user: &str, i: u64) -> Vec<u8> {
        let body = format!("\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(100));
        testing::record(user, body.as_bytes())
    }

    #[test]
    fn a_stalled_connection_trips_diverts_half_opens_and_catches_up() {
        let t0 = Instant::now();
        let mut core = core();
        let id = connected(&mut core, "a", t0);
        // The socket takes nothing: 100 events of ~120 bytes pile up past the 8000-byte cap.
        for i in 1..=100 {
            core.route(&big("a", i), t0, 0);
            assert!(
                core.conn(id).out().len() <= 8000,
                "memory stays under the cap"
            );
        }
        assert_eq!(
            core.stats.breaker_opened, 1,
            "opened when the cap was reached"
        );
        assert_eq!(core.stats.breakers_open, 1);
        assert!(core.stats.events_diverted > 0);
        assert_eq!(core.stats.closed_slow_consumer, 0, "not closed");
        assert!(core.conn(id).out().is_empty(), "the backlog left memory");
        // While open, nothing is queued and nothing replays.
        core.route(&big("a", 101), t0 + S, 0);
        assert!(!core.replay_ready());
        assert!(drain(&mut core, id, t0 + S).is_empty());
        // After the cool-down it half-opens and is refilled from history, then goes live.
        core.tick(t0 + 5 * S);
        assert_eq!(core.stats.breaker_half_opened, 1);
        assert_eq!(core.stats.breakers_open, 0);
        let mut seen = drain(&mut core, id, t0 + 5 * S);
        core.route(&big("a", 102), t0 + 6 * S, 0);
        seen.extend(drain(&mut core, id, t0 + 6 * S));
        assert_eq!(
            events(&seen),
            (1..=102).collect::<Vec<_>>(),
            "everything, in order"
        );
        assert_eq!(
            core.stats.breaker_closed, 1,
            "closed once a refill was written in full"
        );
        assert_eq!(core.stats.events_dropped, 0);
    }

    #[test]
    fn staying_over_the_high_water_mark_trips_on_the_tick() {
        let t0 = Instant::now();
        let mut core = core();
        let id = connected(&mut core, "a", t0);
        // 40 events (~4800 bytes): over the 4000-byte high-water mark, under the cap.
        for i in 1..=40 {
            core.route(&big("a", i), t0, 0);
        }
        // A third of a frame goes out; then the socket blocks.
        core.on_written(id, 50);
        core.on_write_blocked(id);
        core.tick(t0 + S / 2);
        assert_eq!(core.stats.breaker_opened, 0, "not yet");
        core.tick(t0 + 2 * S);
        assert_eq!(core.stats.breaker_opened, 1, "over the mark for trip_after");
        // The partly written frame stays whole; the rest left memory.
        let left = core.conn(id).out().len();
        assert!(
            left > 0 && left < 200,
            "{left} bytes kept: the rest of frame 1"
        );
        // The socket recovers; the client finishes frame 1, then gets 2.. after the cool-down.
        core.on_writable(id);
        let mut wire = core.conn(id).out().to_vec();
        core.on_written(id, wire.len());
        core.tick(t0 + 8 * S);
        loop {
            core.pump_replays(t0 + 8 * S, &mut durable::NoCold);
            let bytes = core.conn(id).out().to_vec();
            if bytes.is_empty() {
                break;
            }
            core.on_written(id, bytes.len());
            wire.extend(bytes);
        }
        // Frame 1's first 50 bytes went out before the block; the history still holds frame 1
        // exactly as queued, so put them back in front to decode the whole byte stream.
        let mut reader = FrameReader::new(Vec::new(), 1 << 16);
        let u = core.users.get(&b"a"[..]).unwrap();
        let mut frame1 = BytesMut::new();
        u.history.read_from(1, 1, &core.log, &mut frame1).unwrap();
        let mut stream = frame1[..50].to_vec();
        stream.extend(wire);
        let mut src = &stream[..];
        while !src.is_empty() {
            reader.fill(&mut src).unwrap();
        }
        let mut seen = Vec::new();
        reader.frames(|_, p| seen.push(decode(p))).unwrap();
        assert_eq!(events(&seen), (1..=40).collect::<Vec<_>>());
    }
}

mod first_message {
    //! `resume=message`: the cursor comes as the client's first WebSocket message.

    use super::*;
    use floodgate_wsclient::{client_frame, Kind};

    fn await_cursor(core: &mut Core, u: &str, now: Instant) -> ConnId {
        let id = core
            .adopt_start(user(u), b"", b"", Start::AwaitCursor, now)
            .unwrap();
        core.on_written(id, core.conn(id).out().len());
        id
    }

    #[test]
    fn nothing_is_sent_until_the_cursor_message_then_the_replay_seam_holds() {
        let t0 = Instant::now();
        let mut core = testing::core(cfg(|_| {}));
        let epoch = learn_epoch(&mut core, "a", t0);
        for i in 1..=5 {
            core.route(&record("a", i), t0, 0);
        }
        let id = await_cursor(&mut core, "a", t0);
        // Events keep coming before the client says where it stopped: none is queued yet.
        core.route(&record("a", 6), t0, 0);
        assert!(
            drain(&mut core, id, t0).is_empty(),
            "no hello, no events yet"
        );
        let msg = format!("{{\"since\":2,\"epoch\":\"{epoch:x}\"}}");
        core.on_input(id, &client_frame(Kind::Text, msg.as_bytes()), t0);
        core.route(&record("a", 7), t0, 0);
        let seen = drain(&mut core, id, t0);
        assert_eq!(hello(&seen), (epoch, 6));
        assert_eq!(events(&seen), [3, 4, 5, 6, 7], "replay, then live, no seam");
        assert_eq!(core.stats.resumes, 1);
    }

    #[test]
    fn a_bad_cursor_message_closes_with_1008_and_silence_starts_live() {
        let t0 = Instant::now();
        let mut core = testing::core(cfg(|_| {}));
        let bad = await_cursor(&mut core, "a", t0);
        core.on_input(bad, &client_frame(Kind::Text, b"{\"since\":5}"), t0);
        let mut due = Vec::new();
        core.take_writable(t0, true, &mut due);
        let out = core.conn(bad).out().to_vec();
        let mut r = FrameReader::new(out, 1024);
        let mut frames = Vec::new();
        r.frames(|k, p| frames.push((k, p.to_vec()))).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, Kind::Close);
        assert_eq!(&frames[0].1[..2], &1008u16.to_be_bytes());
        assert!(String::from_utf8_lossy(&frames[0].1).contains("epoch"));
        core.remove(bad);
        // A client that never sends its cursor gets a live stream after the timeout.
        let quiet = await_cursor(&mut core, "a", t0);
        core.route(&record("a", 1), t0, 0);
        core.tick(t0 + CURSOR_MESSAGE_TIMEOUT);
        core.route(&record("a", 2), t0, 0);
        let seen = drain(&mut core, quiet, t0 + CURSOR_MESSAGE_TIMEOUT);
        assert_eq!(hello(&seen).1, 1);
        assert_eq!(events(&seen), [2]);
        core.remove(quiet);
        assert_eq!(core.online_users, 0, "the count stays right");
    }
}

mod spool_retention {
    //! What spool retention took is announced by a `gap` when a resume needs it, never
    //! replayed silently past.

    use super::*;

    /// Position of the `k`th record (0-based) in a spooled log.
    fn record_at(log: &[u8], k: usize) -> u64 {
        let mut at = 0;
        for _ in 0..k {
            at += durable::decode(&log[at..]).unwrap().1;
        }
        at as u64
    }

    #[test]
    fn a_resume_into_trimmed_spool_gets_a_gap_then_what_is_left() {
        let t0 = Instant::now();
        let mut core = testing::core(cfg(|c| {
            c.history.max_events = 0; // the spool is the only history
            c.spool = true;
        }));
        let epoch = learn_epoch(&mut core, "a", t0);
        let mut cold = testing::MemCold::default();
        for i in 1..=20 {
            core.route(&record("a", i), t0, 0);
        }
        cold.absorb(&mut core);
        // Retention deletes everything before event 9's record.
        cold.start = record_at(&cold.log, 8);
        core.on_spool_trimmed(cold.start);
        let id = resume(&mut core, "a", 3, Some(epoch), t0);
        let mut seen = Vec::new();
        loop {
            let before = seen.len();
            core.pump_replays(t0, &mut cold);
            let bytes = core.conn(id).out().to_vec();
            if !bytes.is_empty() {
                core.on_written(id, bytes.len());
                let mut r = FrameReader::new(bytes, 1024);
                r.frames(|_, p| seen.push(decode(p))).unwrap();
            }
            if seen.len() == before && !core.replay_ready() {
                break;
            }
        }
        assert_eq!(
            seen[1],
            Seen::Gap {
                reason: "history_evicted".into(),
                from: 4,
                to: 8
            },
            "{seen:?}"
        );
        assert_eq!(events(&seen), (9..=20).collect::<Vec<_>>());
    }
}

mod spool_replay {
    //! A replay from the spool costs what the user's own records weigh, is budgeted per pass,
    //! and a client cut again and again while it replays still catches up.

    use super::*;

    fn spool_core() -> Core {
        testing::core(cfg(|c| {
            c.history.max_events = 0; // the spool is the only history
            c.spool = true;
        }))
    }

    /// Pumps and writes `id` in full until it has nothing more; returns what it received.
    fn drain_cold(
        core: &mut Core,
        id: ConnId,
        cold: &mut testing::MemCold,
        now: Instant,
    ) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let before = seen.len();
            core.pump_replays(now, cold);
            let bytes = core.conn(id).out()[core.conn(id).written..].to_vec();
            if !bytes.is_empty() {
                core.on_written(id, bytes.len());
                let mut r = FrameReader::new(bytes, 1024);
                r.frames(|_, p| seen.push(decode(p))).unwrap();
            }
            if seen.len() == before && !core.replay_ready() {
                return seen;
            }
        }
    }

    #[test]
    fn a_replay_reads_only_its_users_records() {
        let t0 = Instant::now();
        let mut core = spool_core();
        let users: Vec<String> = (0..64).map(|i| format!("u{i}")).collect();
        let epoch = learn_epoch(&mut core, "u7", t0);
        let mut cold = testing::MemCold::default();
        for i in 1..=100 {
            for u in &users {
                core.route(&record(u, i), t0, 0);
            }
        }
        cold.absorb(&mut core);
        let id = resume(&mut core, "u7", 50, Some(epoch), t0);
        let seen = drain_cold(&mut core, id, &mut cold, t0);
        assert_eq!(events(&seen), (51..=100).collect::<Vec<_>>(), "{seen:?}");
        assert_eq!(cold.scanned, 0, "no record was scanned past");
        assert_eq!(cold.reads_at, 50, "one read per event replayed");
    }

    #[test]
    fn older_than_the_dense_index_it_scans_and_still_replays_everything() {
        let t0 = Instant::now();
        let mut core = spool_core();
        let epoch = learn_epoch(&mut core, "a", t0);
        let mut cold = testing::MemCold::default();
        let n = durable::DENSE_POSITIONS as u64 + 500;
        for i in 1..=n {
            core.route(&record("a", i), t0, 0);
            core.route(&record("b", i), t0, 0);
        }
        cold.absorb(&mut core);
        let id = resume(&mut core, "a", 10, Some(epoch), t0);
        let seen = drain_cold(&mut core, id, &mut cold, t0);
        assert_eq!(events(&seen), (11..=n).collect::<Vec<_>>());
        assert!(cold.scanned > 0, "the oldest part came from a scan");
        assert!(cold.reads_at >= durable::DENSE_POSITIONS as u64 - 1);
    }

    #[test]
    fn all_replays_of_a_pass_share_one_read_budget_and_take_turns() {
        let t0 = Instant::now();
        let mut core = spool_core();
        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let epochs: Vec<u64> = users
            .iter()
            .map(|u| learn_epoch(&mut core, u, t0))
            .collect();
        let mut cold = testing::MemCold::default();
        let pad = "x".repeat(900);
        for i in 1..=400u64 {
            for u in &users {
                let body = format!("\"i\":{i},\"pad\":\"{pad}\"}}");
                core.route(&testing::record(u, body.as_bytes()), t0, 0);
            }
        }
        cold.absorb(&mut core);
        let ids: Vec<ConnId> = users
            .iter()
            .zip(&epochs)
            .map(|(u, &e)| resume(&mut core, u, 0, Some(e), t0))
            .collect();
        let queued = |core: &Core| -> Vec<usize> {
            ids.iter().map(|&id| core.conn(id).out().len()).collect()
        };
        let before = queued(&core);
        core.pump_replays(t0, &mut cold);
        let after = queued(&core);
        let total: usize = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        assert!(total > 0);
        assert!(
            total <= COLD_PASS_BUDGET + REPLAY_CHUNK,
            "one pass queued {total} bytes of replay"
        );
        let starved: Vec<usize> = (0..ids.len()).filter(|&k| after[k] == before[k]).collect();
        assert!(!starved.is_empty(), "the budget ran out within the pass");
        // The next pass serves those that waited first.
        for &id in &ids {
            let c = core.conn(id);
            let n = c.out().len() - c.written;
            if n > 0 {
                core.on_written(id, n);
            }
        }
        core.pump_replays(t0, &mut cold);
        let third = queued(&core);
        let served: Vec<usize> = (0..ids.len()).filter(|&k| third[k] > after[k]).collect();
        assert!(!served.is_empty());
        assert!(
            served.iter().all(|k| starved.contains(k))
                || starved.iter().all(|k| served.contains(k)),
            "the connections that waited go first: waited {starved:?}, then served {served:?}"
        );
    }

    #[test]
    fn a_client_cut_again_and_again_while_it_replays_still_catches_up() {
        let t0 = Instant::now();
        let mut core = spool_core();
        let epoch = learn_epoch(&mut core, "a", t0);
        let mut cold = testing::MemCold::default();
        let mut emitted = 0u64;
        let mut emit = |core: &mut Core, cold: &mut testing::MemCold, k: u64| {
            for _ in 0..k {
                emitted += 1;
                core.route(&record("a", emitted), t0, 0);
                core.route(&record("noise", emitted), t0, 0);
            }
            cold.absorb(core);
            emitted
        };
        emit(&mut core, &mut cold, 3000);
        let mut cursor = 0u64;
        let mut rounds = 0;
        // Each life: connect with the cursor, one pass, the client reads only 8 KiB of what was
        // queued, and the connection is cut; meanwhile 20 more events arrive.
        loop {
            rounds += 1;
            assert!(
                rounds < 500,
                "no catch-up after {rounds} lives (cursor {cursor})"
            );
            let id = resume(&mut core, "a", cursor, Some(epoch), t0);
            core.pump_replays(t0, &mut cold);
            let out = core.conn(id).out().to_vec();
            let take = out.len().min(8 << 10);
            core.on_written(id, take);
            let mut seen = Vec::new();
            FrameReader::new(out[..take].to_vec(), 1024)
                .frames(|_, p| seen.push(decode(p)))
                .ok();
            core.remove(id);
            let before = cursor;
            for s in &seen {
                match s {
                    Seen::Event(n) => {
                        assert_eq!(*n, cursor + 1, "in order, once: {seen:?}");
                        cursor = *n;
                    }
                    Seen::Gap { .. } => panic!("no gap may be needed: {seen:?}"),
                    Seen::Hello { .. } | Seen::Redelivery(_) => {}
                }
            }
            let last = emit(&mut core, &mut cold, 20);
            if cursor == last - 20 || cursor == last {
                break;
            }
            assert!(
                cursor > before,
                "life {rounds} made no progress from {before}"
            );
        }
    }
}

mod sequenced;
