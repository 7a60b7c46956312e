//! The sequencing script against a real `redis-server`.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;
use crate::redis_engine::testing::RedisServer;
use crate::redis_engine::wire;

/// A stream entry as XRANGE answers: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

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
    // A subscriber that sees every published batch, as every node's will.
    let mut sub = server.connect().unwrap();
    let mut pubsub = sub.as_pubsub();
    let seq = Sequencer::new("fg", 99, 100_000);
    pubsub.subscribe(seq.channel()).unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Arc::new(Barrier::new(NODES));
    let nodes: Vec<_> = (0..NODES)
        .map(|node| {
            let (users, start, mut conn) =
                (users.clone(), start.clone(), server.connect().unwrap());
            std::thread::spawn(move || {
                let seq = Sequencer::new("fg", node as u64, 100_000);
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

    // The subscriber got every event once, each user's in seq order, with the body and the
    // seq the submitter was told.
    let told: BTreeMap<(String, u64), &str> = assigned
        .iter()
        .map(|(u, a, body)| ((u.clone(), a.seq), body.as_str()))
        .collect();
    let mut last: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut seen = 0;
    while seen < assigned.len() {
        let msg = pubsub.get_message().expect("every batch is published");
        for e in wire::decode(msg.get_payload_bytes()).expect("a valid batch") {
            let prev = last.insert(e.user.to_vec(), e.seq).unwrap_or(0);
            assert_eq!(e.seq, prev + 1, "in order, no gap");
            let user = String::from_utf8(e.user.to_vec()).unwrap();
            assert_eq!(told[&(user, e.seq)].as_bytes(), e.body);
            assert_eq!(e.ts, 42);
            seen += 1;
        }
    }
    assert_eq!(seen, NODES * BATCHES * PER_BATCH);

    // One script run per batch, whatever its size: 200 events per round trip.
    let mut conn = server.connect().unwrap();
    let ran = runs(&mut conn, "evalsha") + runs(&mut conn, "eval");
    assert_eq!(ran, (NODES * BATCHES) as u64, "one script run per batch");
}

#[test]
fn a_stream_keeps_its_last_events_and_its_first_epoch() {
    let Some(server) = RedisServer::start("seq-stream") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    let seq = Sequencer::new("t", 1, 100);
    for round in 0..10u64 {
        let events: Vec<Pending<'_>> = (0..100)
            .map(|_| Pending {
                user: b"alice",
                ts: round,
                needs_ack: round % 2 == 1,
                body: b"\"type\":\"x\"}",
            })
            .collect();
        let got = seq.submit(&mut conn, round, 7 + round, &events).unwrap();
        assert!(got.iter().all(|a| a.epoch == 7), "the first epoch stays");
        assert_eq!(got.last().unwrap().seq, 100 * (round + 1));
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(seq.key(b"alice", b'l'))
        .query(&mut conn)
        .unwrap();
    assert!((100..200).contains(&len), "about the last 100 kept: {len}");
    // Entries are addressed by seq, so a resume reads `XRANGE (<cursor>-0 +`.
    let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
        .arg(seq.key(b"alice", b'l'))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(last[0].0, "1000-0");
    let fields: BTreeMap<&str, &[u8]> = last[0]
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(fields["t"], 9u64.to_le_bytes());
    assert_eq!(fields["f"], [1]);
    assert_eq!(fields["b"], b"\"type\":\"x\"}");
    let meta: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(seq.key(b"alice", b'm'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(meta["seq"], "1000");
    assert_eq!(meta["epoch"], "0000000000000007");
}

#[test]
fn a_batch_submitted_again_runs_once_and_gets_its_first_answer() {
    let Some(server) = RedisServer::start("seq-retry") else {
        return;
    };
    let mut conn = server.connect().unwrap();
    let mut sub = server.connect().unwrap();
    let mut pubsub = sub.as_pubsub();
    let seq = Sequencer::new("r", 5, 1000);
    pubsub.subscribe(seq.channel()).unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let events = |user: &'static [u8]| {
        (0..3)
            .map(|_| Pending {
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
    let other = Sequencer::new("r", 6, 1000);
    let theirs = other.submit(&mut conn, 1, 0xe, &events(b"u")).unwrap();
    assert_eq!(theirs.iter().map(|a| a.seq).collect::<Vec<_>>(), [7, 8, 9]);
    // Three batches published, not four.
    let mut published = Vec::new();
    while let Ok(msg) = pubsub.get_message() {
        for e in wire::decode(msg.get_payload_bytes()).unwrap() {
            published.push(e.seq);
        }
    }
    assert_eq!(published, (1..=9).collect::<Vec<_>>());
    let len: u64 = redis::cmd("XLEN")
        .arg(seq.key(b"u", b'l'))
        .query(&mut conn)
        .unwrap();
    assert_eq!(len, 9);
}
