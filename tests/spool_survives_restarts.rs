//! The spool over real sockets: a gateway started again on the same `spool_dir` keeps every
//! stream's epoch and `seq` and replays from disk what memory no longer holds; a torn tail is
//! cut at start; a corrupted record refuses the start with an error naming the file and
//! offset, unless `spool_repair` is set, which starts with new epochs (announced as gaps).
mod util;

use std::time::Duration;

use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn emit_n(gw: &floodgate::Gateway, user: &str, from: u64, to: u64) {
    let mut em = gw.emitter();
    for i in from..=to {
        let data = json!({ "i": i });
        util::emit_retrying(&mut em, user, floodgate::Event::custom("tick", &data));
    }
}

/// Reads frames until the event with `seq == last` arrives; returns every frame read.
fn read_through(ws: &mut util::Client, last: u64) -> Vec<Value> {
    util::read_frames(ws, 1, T, |v| v["seq"].as_u64() == Some(last))
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|v| v["seq"].as_u64()).collect()
}

fn builder(dir: &std::path::Path) -> floodgate::GatewayBuilder {
    // A small memory history, so replays after a restart must come from the spool.
    util::builder().spool_dir(dir).history_max_events(16)
}

/// Byte offset of record `n` (0-based) in a segment file (format: u32 length, u32 CRC, body).
fn record_offset(seg: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    at
}

/// The segment holding `user`'s records: the only non-empty one (one user per test).
fn user_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut with_data: Vec<_> = util::segments(dir)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(with_data.len(), 1, "one user writes one segment here");
    with_data.remove(0)
}

#[test]
fn a_restarted_gateway_keeps_the_epoch_and_replays_what_memory_lost_from_disk() {
    let dir = util::temp_dir("restart");
    let gw = builder(&dir).build().unwrap();
    let token = util::token("sam");
    let (mut ws, hello) = util::connect_to(gw.local_addr(), "/ws", &token);
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    emit_n(&gw, "sam", 1, 500);
    assert_eq!(
        seqs(&read_through(&mut ws, 500)),
        (1..=500).collect::<Vec<_>>()
    );
    drop(ws);
    gw.shutdown().unwrap();

    let gw = builder(&dir).build().unwrap();
    let (mut ws, hello) = util::connect_to(
        gw.local_addr(),
        &format!("/ws?since=100&epoch={epoch}"),
        &token,
    );
    assert_eq!(
        hello["epoch"],
        epoch.as_str(),
        "the epoch survives the restart"
    );
    assert_eq!(hello["last_seq"], 500);
    let frames = read_through(&mut ws, 500);
    assert!(
        frames.iter().all(|f| f["type"] != "gap"),
        "no gap: {frames:?}"
    );
    assert_eq!(seqs(&frames), (101..=500).collect::<Vec<_>>());
    // The stream goes on where it was.
    emit_n(&gw, "sam", 501, 501);
    assert_eq!(seqs(&read_through(&mut ws, 501)), [501]);
    let m = gw.metrics().stats;
    assert!(m.streams_recovered >= 1);
    assert!(
        m.events_replayed_cold >= 400 - 16,
        "replayed from the spool: {}",
        m.events_replayed_cold
    );
    drop(ws);
    gw.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_tail_is_cut_and_a_corrupted_record_refuses_the_start_unless_repaired() {
    let dir = util::temp_dir("corrupt");
    let token = util::token("tess");
    let gw = builder(&dir).build().unwrap();
    let (ws, hello) = util::connect_to(gw.local_addr(), "/ws", &token);
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    emit_n(&gw, "tess", 1, 100);
    util::eventually(T, "100 events spooled", || {
        gw.metrics().stats.events_delivered >= 100
    });
    drop(ws);
    gw.shutdown().unwrap();
    let seg = user_segment(&dir);

    // Torn: a record header that promises more bytes than follow (an interrupted write).
    let mut data = std::fs::read(&seg).unwrap();
    let whole = data.len();
    data.extend_from_slice(&200u32.to_le_bytes());
    data.extend_from_slice(&[0xab; 40]);
    std::fs::write(&seg, &data).unwrap();
    let gw = builder(&dir)
        .build()
        .expect("a torn tail is cut, not refused");
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, whole);
    util::eventually(T, "the cut is on the metrics", || {
        gw.metrics().stats.spool_bytes_cut_at_start == 44
    });
    let (mut ws, hello) = util::connect_to(
        gw.local_addr(),
        &format!("/ws?since=0&epoch={epoch}"),
        &token,
    );
    assert_eq!(hello["epoch"], epoch.as_str());
    assert_eq!(
        seqs(&read_through(&mut ws, 100)),
        (1..=100).collect::<Vec<_>>()
    );
    drop(ws);
    gw.shutdown().unwrap();

    // Corrupted: one flipped byte inside record 10, with intact records after it.
    let mut data = std::fs::read(&seg).unwrap();
    let at = record_offset(&data, 9);
    data[at + 20] ^= 0x04;
    std::fs::write(&seg, &data).unwrap();
    let err = builder(&dir)
        .build()
        .expect_err("corruption refuses the start");
    assert!(err.is_fatal());
    let text = err.to_string();
    assert!(
        matches!(err, floodgate::Error::Spool(floodgate::SpoolError::Corrupt { offset, .. }) if offset == at as u64),
        "{text}"
    );
    assert!(
        text.contains(&seg.display().to_string()) && text.contains("spool_repair"),
        "the error names the file and the way out: {text}"
    );

    // Repaired: it starts; the stream cannot prove continuity any more, so a resume with the
    // old cursor is told so, explicitly.
    let gw = builder(&dir).spool_repair(true).build().unwrap();
    let (mut ws, hello) = util::connect_to(
        gw.local_addr(),
        &format!("/ws?since=50&epoch={epoch}"),
        &token,
    );
    assert_ne!(
        hello["epoch"],
        epoch.as_str(),
        "a repair starts a new epoch"
    );
    util::eventually(T, "the new epoch is on the metrics", || {
        gw.metrics().stats.streams_discarded_at_start == 1
    });
    let gap = util::read_frames(&mut ws, 1, T, |_| true).remove(0);
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "epoch_changed");
    assert_eq!(gap["previous_seq"], 50);
    drop(ws);
    gw.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spool_written_with_another_shard_count_is_refused_with_a_clear_error() {
    let dir = util::temp_dir("shards");
    builder(&dir).build().unwrap().shutdown().unwrap();
    let err = builder(&dir).shards(3).build().expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("written with 2 shards") && text.contains("shards = 2"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flipped_byte_in_the_last_record_refuses_the_start_and_a_repair_keeps_the_unacked_events() {
    let dir = util::temp_dir("last-record");
    let gw = builder(&dir).build().unwrap();
    let token = util::token("ivy");
    let (mut ws, hello) = util::connect_to(gw.local_addr(), "/ws", &token);
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    // Two events that need an ack (never acked), then one that does not.
    let mut em = gw.emitter();
    for i in 1..=2 {
        let data = json!({ "i": i });
        util::emit_retrying(
            &mut em,
            "ivy",
            floodgate::Event::agent_completed("r", &data),
        );
    }
    emit_n(&gw, "ivy", 3, 3);
    read_through(&mut ws, 3);
    drop(ws);
    drop(em);
    gw.shutdown().unwrap();
    // kill -9 could not do this (it cuts a record short); a flipped bit on disk can: the last
    // record is whole but its checksum fails.
    let seg = user_segment(&dir);
    let mut data = std::fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let err = builder(&dir).build().expect_err("refuses to start");
    assert!(matches!(err, floodgate::Error::Spool(_)), "{err}");
    assert!(err.to_string().contains("corrupted"), "{err}");
    // With repair: a new epoch (seq 3 could otherwise be reused for another event), and the
    // two unacked events come again as events of the new stream, still needing an ack.
    let gw = builder(&dir).spool_repair(true).build().unwrap();
    let (mut ws, hello) = util::connect_to(gw.local_addr(), "/ws", &token);
    assert_ne!(hello["epoch"].as_str().unwrap(), epoch);
    let frames = util::read_events(&mut ws, 2, T);
    assert_eq!(seqs(&frames), [1, 2]);
    for f in &frames {
        assert_eq!(f["type"], "agent_completed");
        assert_eq!(f["ack"], true);
    }
    // (Counters are published at the end of the reactor pass that wrote the frames.)
    util::eventually(Duration::from_secs(5), "counted", || {
        gw.metrics().stats.events_carried_to_new_epoch == 2
    });
    drop(ws);
    gw.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
