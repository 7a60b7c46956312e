//! The sequencing script against a real `redis-server`.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;
use crate::redis_engine::testing::{keep, LogReader, RedisServer, StreamEntry};
use crate::redis_engine::wire;

/// Runs of `cmd` so far that did not fail (`commandstats` calls less failed calls: an EVALSHA
/// that finds no script, before the script is loaded, is a failed call).
fn runs(conn: &mut redis::Connection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let Some(stats) = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
    else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        stats
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    field("calls") - field("failed_calls")
}

#[test]
fn batches_from_two_nodes_give_each_user_one_gapless_sequence_published_in_order() {
    let Some(server) = RedisServer::start("seq-two-nodes") else {
        return;
    };
    const NODES: usize = 2;
    const BATCHES: usize = 50;
    const PER_BATCH: usize = 200;
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    // A reader of the log, as every node's subscriber is.
    let mut log = LogReader::new(&server, "fg");
    let start = Arc::new(Barrier::new(NODES));
    let nodes: Vec<_> = (0..NODES)
        .map(|node| {
            let (users, start, mut conn) =
                (users.clone(), start.clone(), server.connect().unwrap());
            std::thread::spawn(move || {
                let mut seq = Sequencer::new("fg", node as u64, keep(100_000));
                let mut assigned = Vec::new();
                start.wait();
                for b in 0..BATCHES {
                    let bodies: Vec<(String, String)> = (0..PER_BATCH)
                        .map(|i| {
                            let user = users[(b * PER_BATCH + i * 3 + node) % users.len()].clone();
                            (user, format!("\"n\":{node},\"b\":{b},\"i\":{i}}}"))
                        })
                        .collect();
                    let events: Vec<Pending<'_>> = bodies
                        .iter()
                        .map(|(u, body)| Pending {
                            ack: None,
                            user: u.as_bytes(),
                            ts: 42,
                            needs_ack: false,
                            body: body.as_bytes(),
                        })
                        .collect();
                    let got = seq
                        .submit(&mut conn, b as u64, 0x1000 + node as u64, &events)
                        .unwrap();
                    for ((u, body), a) in bodies.iter().zip(got) {
                        assigned.push((u.clone(), a, body.clone()));
                    }
                }
                assigned
            })
        })
        .collect();
    let assigned: Vec<(String, Assigned, String)> =
        nodes.into_iter().flat_map(|n| n.join().unwrap()).collect();

    // Each user's seqs are exactly 1..=n, once each, and one epoch (the first node's to
    // reach the user) holds for all of them.
    let mut by_user: BTreeMap<&str, Vec<&(String, Assigned, String)>> = BTreeMap::new();
    for a in &assigned {
        by_user.entry(&a.0).or_default().push(a);
    }
    assert_eq!(by_user.len(), users.len());
    for (user, mut got) in by_user {
        got.sort_by_key(|a| a.1.seq);
        let seqs: Vec<u64> = got.iter().map(|a| a.1.seq).collect();
        assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "{user}");
        let epoch = got[0].1.epoch;
        assert!(epoch == 0x1000 || epoch == 0x1001, "{user}: {epoch:x}");
        assert!(got.iter().all(|a| a.1.epoch == epoch), "{user}: one epoch");
    }

    // The log has every event once, each user's in seq order, with the body and the
    // seq the submitter was told.
    let told: BTreeMap<(String, u64), &str> = assigned
        .iter()
        .map(|(u, a, body)| ((u.clone(), a.seq), body.as_str()))
        .collect();
    let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen < assigned.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "every batch is in the log"
        );
        for msg in log.read(Duration::from_millis(100)) {
            for e in wire::decode(&msg).expect("a valid batch") {
                let prev = last.insert(e.user.to_vec(), e.seq).unwrap_or(0);
                assert_eq!(e.seq, prev + 1, "in order, no gap");
                let user = String::from_utf8(e.user.to_vec()).unwrap();
                assert_eq!(told[&(user, e.seq)].as_bytes(), e.body);
                assert_eq!(e.ts, 42);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, NODES * BATCHES * PER_BATCH);

    // One script run per batch, whatever its size: 200 events per round trip.
    let mut conn = server.connect().unwrap();
    let ran = runs(&mut conn, "evalsha") + runs(&mut conn, "eval");
    assert_eq!(ran, (NODES * BATCHES) as u64, "one script run per batch");
}

#[test]
fn the_log_keeps_each_batch_and_each_user_finds_its_events_by_seq() {
    let Some(server) = RedisServer::start("seq-log") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    // The log keeps 40 000 bytes of messages (each batch's is 2 600 and some): about 15.
    let mut seq = Sequencer::new(
        "t",
        1,
        Retention {
            max_bytes: 40_000,
            ..keep(5)
        },
    );
    // 300 batches: enough for trimming the index, which is approximate (whole nodes of 100
    // entries).
    for round in 0..300u64 {
        // Alice's events and Bob's, interleaved; every third of Alice's needs an ack.
        let events: Vec<Pending<'_>> = (0..100)
            .map(|i| Pending {
                ack: None,
                user: if i % 4 == 0 {
                    &b"bob"[..]
                } else {
                    &b"alice"[..]
                },
                ts: round,
                needs_ack: i % 3 == 1,
                body: b"\"type\":\"x\"}",
            })
            .collect();
        let got = seq.submit(&mut conn, round, 7 + round, &events).unwrap();
        assert!(got.iter().all(|a| a.epoch == 7), "the first epoch stays");
        assert_eq!(got[99].seq, 75 * (round + 1), "alice's last");
        assert_eq!(got[96].seq, 25 * (round + 1), "bob's last");
    }
    // By bytes: as many of the newest batches as fit, and `p:size` says exactly how many bytes.
    let log: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(&seq.keys().log[..])
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let sizes: Vec<usize> = log.iter().map(|(_, f)| f[0].1.len()).collect();
    let held: usize = sizes.iter().sum();
    let size: usize = redis::cmd("GET")
        .arg(&seq.keys().size[..])
        .query(&mut conn)
        .unwrap();
    assert_eq!(size, held, "the size key matches the log");
    let listed: usize = redis::cmd("LLEN")
        .arg(&seq.keys().sizes[..])
        .query(&mut conn)
        .unwrap();
    assert_eq!(listed, log.len(), "one size per entry kept");
    assert!(held <= 40_000, "{held} bytes kept");
    assert!(
        held + sizes[0] > 40_000,
        "no more trimmed than needed: {held}"
    );
    assert_eq!(log.len(), 40_000 / sizes[0], "{sizes:?}");
    // Alice's index: one entry per batch, by the batch's first seq of hers.
    let index: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(seq.keys().user(b"alice", b'i'))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert!((5..=150).contains(&index.len()), "{}", index.len());
    let (first_id, fields) = index.last().unwrap();
    assert_eq!(first_id, "22426-0", "the last batch's first seq of alice's");
    // That entry names the batch in the log, which holds her 75 events of that batch.
    let log_id = String::from_utf8(fields[0].1.clone()).unwrap();
    let entry: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(&seq.keys().log[..])
        .arg(&log_id)
        .arg(&log_id)
        .query(&mut conn)
        .unwrap();
    let message = &entry[0].1[0].1;
    let alice: Vec<_> = wire::decode(message)
        .unwrap()
        .into_iter()
        .filter(|e| e.user == b"alice")
        .collect();
    assert_eq!(alice.len(), 75);
    assert_eq!(alice[0].seq, 22426);
    assert_eq!(alice[74].seq, 22500);
    assert!(alice.iter().all(|e| e.ts == 299 && e.epoch == 7));
    let meta: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(seq.keys().user(b"alice", b'm'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(meta["seq"], "22500");
    assert_eq!(meta["epoch"], "0000000000000007");
}

#[test]
fn a_batch_submitted_again_runs_once_and_gets_its_first_answer() {
    let Some(server) = RedisServer::start("seq-retry") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    let mut log = LogReader::new(&server, "r");
    let mut seq = Sequencer::new("r", 5, keep(1000));
    let events = |user: &'static [u8]| {
        (0..3)
            .map(|_| Pending {
                ack: None,
                user,
                ts: 1,
                needs_ack: false,
                body: b"{}",
            })
            .collect::<Vec<_>>()
    };
    let first = seq.submit(&mut conn, 1, 0xe, &events(b"u")).unwrap();
    // Its answer was lost with the connection: the node submits batch 1 again.
    let again = seq.submit(&mut conn, 1, 0xe, &events(b"u")).unwrap();
    assert_eq!(again, first, "the first run's answer, not a second run");
    let next = seq.submit(&mut conn, 2, 0xe, &events(b"u")).unwrap();
    assert_eq!(next.iter().map(|a| a.seq).collect::<Vec<_>>(), [4, 5, 6]);
    // Another node's batch 1 is its own.
    let mut other = Sequencer::new("r", 6, keep(1000));
    let theirs = other.submit(&mut conn, 1, 0xe, &events(b"u")).unwrap();
    assert_eq!(theirs.iter().map(|a| a.seq).collect::<Vec<_>>(), [7, 8, 9]);
    // Three batches in the log, not four.
    let mut published = Vec::new();
    for msg in log.read(Duration::from_millis(100)) {
        for e in wire::decode(&msg).unwrap() {
            published.push(e.seq);
        }
    }
    assert_eq!(published, (1..=9).collect::<Vec<_>>());
    let len: u64 = redis::cmd("XLEN")
        .arg(&seq.keys().log[..])
        .query(&mut conn)
        .unwrap();
    assert_eq!(len, 3, "three batches stored, not four");
}

#[test]
fn acks_ride_along_take_no_seq_and_leave_no_index_entry() {
    let Some(server) = RedisServer::start("seq-acks") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    let mut log = LogReader::new(&server, "k");
    let mut seq = Sequencer::new("k", 3, keep(1000));
    let event = |user: &'static [u8]| Pending {
        ack: None,
        user,
        ts: 1,
        needs_ack: true,
        body: b"{}",
    };
    let ack = |user: &'static [u8], epoch: u64, through: u64| Pending {
        ack: Some((epoch, through)),
        user,
        ts: 2,
        needs_ack: false,
        body: b"",
    };
    let got = seq
        .submit(&mut conn, 1, 0xa, &[event(b"u"), event(b"u")])
        .unwrap();
    assert_eq!(got[1], Assigned { epoch: 0xa, seq: 2 });
    // The same user's ack between two events, and a user with only an ack.
    let got = seq
        .submit(
            &mut conn,
            2,
            0xb,
            &[
                event(b"u"),
                ack(b"u", 0xa, 2),
                ack(b"w", 0x77, 9),
                event(b"u"),
            ],
        )
        .unwrap();
    let seqs: Vec<u64> = got.iter().map(|a| a.seq).collect();
    assert_eq!(
        seqs,
        [3, 2, 9, 4],
        "events take 3 and 4; acks keep their cursor"
    );
    let mut entries = Vec::new();
    for msg in log.read(Duration::from_millis(100)) {
        entries.extend(
            wire::decode(&msg)
                .unwrap()
                .into_iter()
                .map(|e| (e.user.to_vec(), e.ack, e.epoch, e.seq)),
        );
    }
    assert_eq!(
        entries,
        [
            (b"u".to_vec(), false, 0xa, 1),
            (b"u".to_vec(), false, 0xa, 2),
            (b"u".to_vec(), false, 0xa, 3),
            (b"u".to_vec(), true, 0xa, 2),
            (b"w".to_vec(), true, 0x77, 9),
            (b"u".to_vec(), false, 0xa, 4),
        ]
    );
    let w_keys: u64 = redis::cmd("EXISTS")
        .arg(seq.keys().user(b"w", b'm'))
        .arg(seq.keys().user(b"w", b'i'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(w_keys, 0, "an ack makes no stream");
    // The stream knows its last event that needs an ack and its highest ack, so a node that
    // never received the events can tell which to read for redelivery; an ack of another
    // epoch (an older run of the stream) changes nothing.
    seq.submit(&mut conn, 3, 0xc, &[ack(b"u", 0xdead, 4)])
        .unwrap();
    let s = sync(&mut conn, seq.keys(), b"u", LogId(u64::MAX, 0), 0xd).unwrap();
    assert_eq!(
        s,
        Synced {
            at: Assigned { epoch: 0xa, seq: 4 },
            need: 4,
            acked: 2
        }
    );
    assert_eq!(s.first_unacked(), Some(3));
    seq.submit(&mut conn, 4, 0xc, &[ack(b"u", 0xa, 4)]).unwrap();
    let s = sync(&mut conn, seq.keys(), b"u", LogId(u64::MAX, 0), 0xd).unwrap();
    assert_eq!((s.acked, s.first_unacked()), (4, None));
}

#[test]
fn the_log_drops_batches_older_than_its_age_and_an_idle_users_index_expires() {
    let Some(server) = RedisServer::start("seq-age") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    let age = Duration::from_millis(300);
    let mut seq = Sequencer::new(
        "a",
        1,
        Retention {
            max_age: age,
            ..keep(1000)
        },
    );
    let event = |user: &'static [u8]| Pending {
        ack: None,
        user,
        ts: 1,
        needs_ack: false,
        body: b"\"type\":\"x\"}",
    };
    for b in 0..10 {
        seq.submit(&mut conn, b, 9, &[event(b"old")]).unwrap();
    }
    let xlen = |conn: &mut redis::Connection| -> u64 {
        redis::cmd("XLEN").arg("a:log").query(conn).unwrap()
    };
    assert_eq!(xlen(&mut conn), 10, "young batches stay");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(seq.keys().user(b"old", b'i'))
        .query(&mut conn)
        .unwrap();
    assert!(
        (1..=300).contains(&ttl),
        "the index lives as long as the log keeps it: {ttl}"
    );
    std::thread::sleep(age + Duration::from_millis(100));
    seq.submit(&mut conn, 10, 9, &[event(b"new")]).unwrap();
    assert_eq!(
        xlen(&mut conn),
        1,
        "only the batch just appended is young enough"
    );
    let size: usize = redis::cmd("GET")
        .arg(&seq.keys().size[..])
        .query(&mut conn)
        .unwrap();
    let log: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("a:log")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(size, log[0].1[0].1.len());
    let exists: u64 = redis::cmd("EXISTS")
        .arg(seq.keys().user(b"old", b'i'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 0, "the idle user's index expired with its batches");
    // A user who keeps emitting keeps the index, however long.
    for b in 0..10 {
        seq.submit(&mut conn, 100 + b, 9, &[event(b"busy")])
            .unwrap();
        std::thread::sleep(age / 3);
    }
    let entries: u64 = redis::cmd("XLEN")
        .arg(seq.keys().user(b"busy", b'i'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(entries, 10, "an index entry per batch, none expired");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(seq.keys().user(b"busy", b'i'))
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 0, "it still expires once the user stops: {ttl}");
    // The stream itself (epoch, seq) stays: its next event goes on from 10.
    let got = seq.submit(&mut conn, 11, 77, &[event(b"old")]).unwrap();
    assert_eq!(got[0], Assigned { epoch: 9, seq: 11 });
}
