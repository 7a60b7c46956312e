//! The spool against real files: recovery, corruption, retention, fsync failures.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::core::durable::{self, SpoolRecord, FLAG_ACK, KIND_ACK, KIND_EVENT};

fn cfg(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes: 4096,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        fsync: FsyncPolicy::Never,
        repair: false,
        max_unacked: 16,
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("floodgate-spool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// Records for `user`: events `from..=to` of epoch 9 (every third needs an ack).
fn events(user: &[u8], from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in from..=to {
        let frame = format!("{{\"seq\":{seq},\"type\":\"x\"}}");
        let r = SpoolRecord {
            kind: KIND_EVENT,
            flags: if seq % 3 == 0 { FLAG_ACK } else { 0 },
            user,
            epoch: 9,
            seq,
            ts: seq,
            frame: &[],
        };
        durable::encode(&mut out, &r, &[frame.as_bytes()]);
    }
    out
}

fn seqs(spool: &mut Spool, user: &[u8]) -> Vec<u64> {
    let mut got = Vec::new();
    let mut pos = spool.start();
    while let Some(next) = spool
        .scan(pos, 1000, user, &mut |_, r| {
            assert_eq!(r.user, user, "other users are skipped");
            got.push(r.seq);
            true
        })
        .unwrap()
    {
        pos = next;
    }
    got
}

#[test]
fn a_reopened_spool_recovers_streams_and_scans_across_segments() {
    let dir = tmp("reopen");
    let c = cfg(&dir);
    let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert!(rec.streams.is_empty());
    for chunk in 0..20 {
        let from = chunk * 10 + 1;
        s.write(&events(b"alice", from, from + 9), Instant::now())
            .unwrap();
    }
    assert!(s.segments.len() > 2, "rolled into several segments");
    drop(s);
    let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    let alice = &rec.streams[&b"alice"[..]];
    assert_eq!((alice.epoch, alice.last_seq), (9, 200));
    assert_eq!(alice.unacked.len(), 16, "bounded by max_unacked");
    assert_eq!(alice.unacked.back().unwrap().0, 198);
    assert_eq!(seqs(&mut s, b"alice"), (1..=200).collect::<Vec<_>>());
    // Scans resume from the checkpoint at or before a seq.
    let from = alice.index.scan_from(150, s.start()).unwrap();
    let mut first = None;
    s.scan(from, 1 << 20, b"alice", &mut |_, r| {
        first = Some(r.seq);
        false
    })
    .unwrap();
    assert!(first.unwrap() <= 150 && first.unwrap() > 100);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_scan_reads_a_record_larger_than_one_read_whole() {
    let dir = tmp("big");
    let (mut s, _) = Spool::open(&cfg(&dir), 0, 1, 512).unwrap();
    let big = vec![b'z'; 100_000];
    let mut bytes = events(b"u", 1, 2);
    let r = SpoolRecord {
        kind: KIND_EVENT,
        flags: 0,
        user: b"u",
        epoch: 9,
        seq: 3,
        ts: 0,
        frame: &[],
    };
    durable::encode(&mut bytes, &r, &[&big]);
    bytes.extend_from_slice(&events(b"u", 4, 5));
    s.write(&bytes, Instant::now()).unwrap();
    let mut frames = Vec::new();
    let mut pos = s.start();
    while let Some(next) = s
        .scan(pos, 1, b"u", &mut |_, r| {
            frames.push((r.seq, r.frame.len()));
            true
        })
        .unwrap()
    {
        pos = next;
    }
    assert_eq!(
        frames.iter().map(|f| f.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(frames[2].1, 100_000);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn acks_on_disk_settle_unacked_events() {
    let dir = tmp("acks");
    let c = cfg(&dir);
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    let mut bytes = events(b"bob", 1, 9);
    let ack = SpoolRecord {
        kind: KIND_ACK,
        flags: 0,
        user: b"bob",
        epoch: 9,
        seq: 6,
        ts: 0,
        frame: &[],
    };
    durable::encode(&mut bytes, &ack, &[]);
    s.write(&bytes, Instant::now()).unwrap();
    drop(s);
    let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    let unacked: Vec<u64> = rec.streams[&b"bob"[..]]
        .unacked
        .iter()
        .map(|u| u.0)
        .collect();
    assert_eq!(unacked, vec![9]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_spool_is_private_to_its_user() {
    use std::os::unix::fs::MetadataExt;
    let dir = tmp("private");
    let (mut s, _) = Spool::open(&cfg(&dir), 0, 1, 512).unwrap();
    s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    let shard = dir.join("shard-0");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&shard), 0o700);
    assert_eq!(mode(&dir.join("meta")), 0o600);
    assert_eq!(mode(&segment_path(&shard, 0)), 0o600);
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_whole_last_record_with_a_bad_checksum_is_corruption_not_a_torn_tail() {
    let dir = tmp("whole-bad-last");
    let c = cfg(&dir);
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    s.write(&events(b"u", 1, 5), Instant::now()).unwrap();
    drop(s);
    // A byte flips in the body of the last record (all of its bytes are there).
    let seg = segment_path(&dir.join("shard-0"), 0);
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 3] ^= 0x40;
    fs::write(&seg, &data).unwrap();
    // Cutting it as torn would keep the epoch and let event 5's seq be used again for
    // another event, which a client holding the old event 5 would never get.
    let err = Spool::open(&c, 0, 1, 512).err().expect("refuses to start");
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    let (_, rec) = Spool::open(
        &SpoolConfig {
            repair: true,
            ..c.clone()
        },
        0,
        1,
        512,
    )
    .unwrap();
    assert!(rec.repaired_bytes > 0);
    assert_eq!(rec.discarded_streams, 1, "the stream starts a new epoch");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_tail_is_cut_and_a_flipped_byte_refuses_the_start() {
    let dir = tmp("torn");
    let c = cfg(&dir);
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    s.write(&events(b"u", 1, 5), Instant::now()).unwrap();
    let seg = segment_path(&dir.join("shard-0"), 0);
    drop(s);
    // Torn: half of a sixth record.
    let extra = events(b"u", 6, 6);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&extra[..extra.len() / 2]).unwrap();
    drop(f);
    let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert_eq!(rec.torn_bytes, (extra.len() / 2) as u64);
    assert_eq!(rec.streams[&b"u"[..]].last_seq, 5);
    s.write(&events(b"u", 6, 7), Instant::now())
        .expect("appends after the cut");
    assert_eq!(seqs(&mut s, b"u"), (1..=7).collect::<Vec<_>>());
    drop(s);
    // Flip a byte inside the second record: the records after it are intact, so this is
    // damage, not a torn write.
    let mut data = fs::read(&seg).unwrap();
    let second = durable::decode(&data).unwrap().1;
    data[second + 12] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    let err = Spool::open(&c, 0, 1, 512).err().expect("refuses to start");
    assert!(
        matches!(err, SpoolError::Corrupt { offset, .. } if offset == second as u64),
        "{err}"
    );
    assert!(err.to_string().contains("spool_repair"), "{err}");
    // With repair, it starts and keeps the valid prefix on disk, but the stream starts a
    // new epoch: records clients may have had are gone, so `seq` numbers would repeat.
    let (mut s, rec) = Spool::open(
        &SpoolConfig {
            repair: true,
            ..c.clone()
        },
        0,
        1,
        512,
    )
    .unwrap();
    assert!(rec.repaired_bytes > 0);
    assert!(rec.streams.is_empty());
    assert_eq!(rec.discarded_streams, 1);
    assert_eq!(seqs(&mut s, b"u"), vec![1]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_shard_count_is_refused_with_a_clear_error() {
    let dir = tmp("shards");
    Spool::open(&cfg(&dir), 0, 2, 512).unwrap();
    let err = Spool::open(&cfg(&dir), 0, 3, 512).err().unwrap();
    assert!(err.to_string().contains("written with 2 shards"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retention_deletes_the_oldest_segments_by_size() {
    let dir = tmp("retention");
    let c = SpoolConfig {
        max_bytes: 8192,
        ..cfg(&dir)
    };
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    for chunk in 0..40 {
        s.write(
            &events(b"r", chunk * 10 + 1, chunk * 10 + 10),
            Instant::now(),
        )
        .unwrap();
        s.tick(Instant::now());
        assert!(s.stats.bytes <= 8192 + 4096 + 1024, "{}", s.stats.bytes);
    }
    assert!(s.stats.segments_deleted > 0);
    let got = seqs(&mut s, b"r");
    assert_eq!(*got.last().unwrap(), 400);
    assert!(got[0] > 1, "the oldest are gone");
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "what is left is contiguous"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_fsync_gives_new_epochs_at_the_next_start() {
    let dir = tmp("unhealthy");
    let c = cfg(&dir);
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
    // What a failed fdatasync does: the pages may never reach the disk.
    s.fsync_failed(&io::Error::other("EIO"));
    drop(s);
    let (s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert!(rec.streams.is_empty(), "continuity cannot be proven");
    assert_eq!(rec.discarded_streams, 1);
    drop(s);
    // That start wrote a new marker: the one after it keeps its streams again.
    let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert_eq!(rec.discarded_streams, 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_interval_fsync_runs_on_the_syncer_thread_and_its_failure_is_reported() {
    let dir = tmp("syncer");
    let c = SpoolConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(1)),
        ..cfg(&dir)
    };
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    assert!(s.syncer.is_some());
    let t0 = Instant::now();
    s.write(&events(b"u", 1, 3), t0).unwrap();
    s.tick(t0 + Duration::from_millis(5));
    assert_eq!(s.stats.fsyncs, 1, "handed to the syncer");
    // A failure seen by the syncer reaches the spool on its next tick.
    let failed = s.syncer.as_ref().unwrap().failed.clone();
    failed.store(true, Ordering::Release);
    s.tick(t0 + Duration::from_millis(6));
    assert_eq!(s.stats.write_errors, 1);
    assert!(
        s.healthy_marker.is_none(),
        "the next start gives new epochs"
    );
    s.close();
    assert!(s.syncer.is_none(), "closed and joined");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn after_a_reboot_only_fsync_always_keeps_the_streams() {
    let dir = tmp("reboot");
    for (fsync, kept) in [(FsyncPolicy::Never, false), (FsyncPolicy::Always, true)] {
        let _ = fs::remove_dir_all(&dir);
        let c = SpoolConfig { fsync, ..cfg(&dir) };
        let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
        s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
        drop(s);
        // What a reboot looks like: the marker names another boot.
        let shard = dir.join("shard-0");
        let marker = shard.join(format!("healthy-{}", boot_id()));
        fs::rename(&marker, shard.join("healthy-0123456789abcdef")).unwrap();
        let (_, rec) = Spool::open(&c, 0, 1, 512).unwrap();
        assert_eq!(rec.streams.contains_key(&b"u"[..]), kept, "{fsync}");
        assert_eq!(rec.discarded_streams, usize::from(!kept), "{fsync}");
        // Event 3 needs an ack and has none: a discarded stream hands it over to be sent
        // again in the new epoch rather than letting it vanish.
        let carried: Vec<usize> = rec.carried.iter().map(|(_, f)| f.len()).collect();
        assert_eq!(carried, if kept { vec![] } else { vec![1] }, "{fsync}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_new_segment_reserves_its_whole_size_and_holds_only_what_was_written() {
    use std::os::unix::fs::MetadataExt;
    let dir = tmp("reserve");
    let mut c = cfg(&dir);
    c.segment_bytes = 1 << 20;
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    let batch = events(b"u", 1, 3);
    s.write(&batch, Instant::now()).unwrap();
    let meta = fs::metadata(segment_path(&dir.join("shard-0"), 0)).unwrap();
    assert_eq!(meta.len(), batch.len() as u64, "the file is its records");
    assert!(
        meta.blocks() * 512 >= c.segment_bytes,
        "the disk holds the whole segment for it: {} bytes",
        meta.blocks() * 512
    );
    drop(s);
    let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert_eq!((rec.torn_bytes, rec.streams[&b"u"[..]].last_seq), (0, 3));
    assert_eq!(seqs(&mut s, b"u"), vec![1, 2, 3]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_write_takes_nothing_and_the_retry_goes_to_a_new_segment() {
    let dir = tmp("failed-write");
    let c = cfg(&dir);
    let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
    s.write(&events(b"u", 1, 3), Instant::now()).unwrap();
    let head = s.head;
    // The file cannot take more (as with a full disk, or a file size limit): make the
    // open handle read-only so the next write fails.
    let seg = segment_path(&dir.join("shard-0"), 0);
    s.file = Some(File::open(&seg).unwrap());
    let batch = events(b"u", 4, 6);
    assert!(s.write(&batch, Instant::now()).is_err());
    assert_eq!(s.head, head, "nothing was taken");
    assert_eq!(s.stats.write_errors, 1);
    s.write(&batch, Instant::now())
        .expect("the retry starts a new segment");
    assert_eq!(s.segments.len(), 2);
    assert_eq!(s.segments[1].start, head, "no hole in the positions");
    assert_eq!(seqs(&mut s, b"u"), (1..=6).collect::<Vec<_>>());
    drop(s);
    // A first segment with a bad tail that the next one starts right after is a write
    // that failed and could not be cut back: recovery cuts it, it does not refuse.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&batch[..batch.len() - 3]).unwrap();
    drop(f);
    let (mut s, rec) = Spool::open(&c, 0, 1, 512).unwrap();
    assert_eq!(rec.torn_bytes, (batch.len() - 3) as u64);
    assert_eq!(rec.streams[&b"u"[..]].last_seq, 6);
    assert_eq!(seqs(&mut s, b"u"), (1..=6).collect::<Vec<_>>());
    fs::remove_dir_all(&dir).unwrap();
}

mod damage {
    //! Random damage to a segment: the start either recovers a prefix of the stream, in
    //! order, or refuses with `Corrupt`, and never panics or invents a record.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Damage {
        /// Cut the file to this fraction of its length (per mille).
        Truncate(u16),
        /// Flip these bits of the byte at this fraction of the length (per mille).
        Flip(u16, u8),
        /// Append these bytes.
        Append(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (0u16..1000).prop_map(Damage::Truncate),
            (0u16..1000, 1u8..=255).prop_map(|(at, bits)| Damage::Flip(at, bits)),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 200,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_damaged_segment_recovers_a_prefix_or_refuses(d in damage(), n in 1u64..40) {
            let dir = tmp(&format!("damage-{n}-{}", rand_suffix(&d)));
            let c = cfg(&dir);
            let (mut s, _) = Spool::open(&c, 0, 1, 512).unwrap();
            s.write(&events(b"u", 1, n), Instant::now()).unwrap();
            drop(s);
            let seg = segment_path(&dir.join("shard-0"), 0);
            let mut data = fs::read(&seg).unwrap();
            let flipped_mid_file = match &d {
                Damage::Truncate(k) => {
                    data.truncate(data.len() * *k as usize / 1000);
                    false
                }
                Damage::Flip(at, bits) => {
                    let i = data.len() * *at as usize / 1000;
                    data[i] ^= bits;
                    true
                }
                Damage::Append(extra) => {
                    data.extend_from_slice(extra);
                    false
                }
            };
            fs::write(&seg, &data).unwrap();
            match Spool::open(&c, 0, 1, 512) {
                Ok((mut s, rec)) => {
                    let got = seqs(&mut s, b"u");
                    let last = rec.streams.get(&b"u"[..]).map_or(0, |r| r.last_seq);
                    prop_assert_eq!(&got, &(1..=last).collect::<Vec<_>>(), "a prefix, in order");
                    prop_assert!(last <= n);
                    if flipped_mid_file {
                        // Only the damaged record itself may go, and only if it was the
                        // last one (a flip that leaves a valid record changes nothing).
                        prop_assert!(last >= n - 1, "a flip cut {} records", n - last);
                    }
                    if matches!(d, Damage::Append(_)) {
                        prop_assert_eq!(last, n, "appended garbage costs nothing");
                    }
                }
                Err(SpoolError::Corrupt { .. }) => {
                    prop_assert!(flipped_mid_file, "only damage in the middle is refused");
                }
                Err(e) => prop_assert!(false, "unexpected error: {e}"),
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// Distinct directories for cases that run one after another in one process.
    fn rand_suffix(d: &Damage) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        // Relaxed: only uniqueness matters.
        format!(
            "{}-{}",
            N.fetch_add(1, Ordering::Relaxed),
            matches!(d, Damage::Flip(..))
        )
    }
}

#[test]
fn fsync_policies_parse() {
    assert_eq!(
        "always".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Always
    );
    assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
    assert_eq!(
        "250ms".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(250))
    );
    assert!("0s".parse::<FsyncPolicy>().is_err());
    assert!("sometimes"
        .parse::<FsyncPolicy>()
        .unwrap_err()
        .contains("always"));
}
