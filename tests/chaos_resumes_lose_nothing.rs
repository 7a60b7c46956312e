//! Chaos: 64 users and 1M events from a producer thread, while every 100 ms the clients drop a
//! random 10% of their connections mid-stream and reconnect with their last cursor. At the end
//! every client has every event of its user exactly once, in order, and none of another user's.
//!
//! This drives `floodgate bench --chaos` (real sockets; its clients check every frame: `seq`,
//! target user, per-producer order, the `hello` on each connect, any `gap`, and that unacked
//! `agent_completed` events sent again after a reconnect are ones the client already had).

/// The two runs take turns: each drives both cores flat out, and run side by side on a 2-core
/// machine a starved gateway replays so slowly that the driver, which drops a tenth of the
/// connections every 100 ms whatever happens, keeps dropping connections in the middle of
/// their replay (seen: 62 s and a stalled client, against 4 s alone).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Prints the run's counts and checks that nothing was lost, duplicated, misrouted or
/// reordered, and that connections really were dropped and replayed to.
fn check(r: &serde_json::Value, what: &str) {
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    eprintln!(
        "chaos ({what}): received {} of {} events, {} resumes, {} replayed ({} from the spool), \
         {} unacked redelivered, lost {}, duplicates {}, gaps {}, misrouted {}, out of order {}",
        n("received"),
        n("events"),
        n("resumes"),
        n("replayed"),
        n("replayed_from_spool"),
        n("redelivered"),
        n("lost"),
        n("duplicates"),
        n("gaps"),
        n("misrouted"),
        n("order_errors"),
    );
    assert_eq!(n("received"), n("events"), "{r}");
    assert_eq!(n("lost"), 0, "{r}");
    assert_eq!(n("duplicates"), 0, "{r}");
    assert_eq!(n("gaps"), 0, "{r}");
    assert_eq!(n("misrouted"), 0, "{r}");
    assert_eq!(n("order_errors"), 0, "{r}");
    assert!(
        n("resumes") >= 100,
        "the driver really dropped connections: {r}"
    );
    assert!(
        n("replayed") > 0,
        "resumed connections were replayed to: {r}"
    );
}

#[test]
fn dropping_ten_percent_of_connections_every_100ms_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // 1M events at 100k/s: about 10 s, so about 100 rounds of drops. History keeps every
    // event of every user (16 384 each), so no resume may need a gap.
    let r = floodgate::__bench::run_chaos(64, 1_000_000, 100_000, 16_384, None);
    check(&r, "memory history");
    assert!(r["resumes"].as_u64().unwrap() >= 300, "{r}");
}

#[test]
fn with_a_spool_and_no_memory_history_resumes_replay_from_disk_and_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // No memory history at all: every resume reads what it missed from the spool.
    let dir = std::env::temp_dir().join(format!("floodgate-chaos-{}", std::process::id()));
    let r = floodgate::__bench::run_chaos(64, 400_000, 100_000, 0, Some(dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    check(&r, "spool");
    assert!(r["replayed_from_spool"].as_u64().unwrap() > 0, "{r}");
}

/// A process that keeps one core busy until dropped (killed by its PID).
struct BusyCore(std::process::Child);

impl BusyCore {
    fn start() -> BusyCore {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("start a busy loop");
        BusyCore(child)
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_one_core_kept_busy_by_another_process_both_runs_still_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Replays compete with live delivery for the one core left: a replay reads only its
    // user's records, within a per-pass budget, so it cannot spiral.
    let _busy = BusyCore::start();
    let r = floodgate::__bench::run_chaos(64, 500_000, 100_000, 16_384, None);
    check(&r, "memory history, one core busy");
    let dir = std::env::temp_dir().join(format!("floodgate-chaos-busy-{}", std::process::id()));
    let r = floodgate::__bench::run_chaos(64, 400_000, 100_000, 0, Some(dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    check(&r, "spool, one core busy");
    assert!(r["replayed_from_spool"].as_u64().unwrap() > 0, "{r}");
}
