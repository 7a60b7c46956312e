//! The thread that calls `fdatasync` for `spool_fsync = <interval>`, so a slow disk never
//! stalls the shard's thread.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A thread that calls `fdatasync` for the interval policy, off the reactor thread.
pub(super) struct Syncer {
    /// Closed (taken) to stop the thread.
    pub(super) tx: Option<crossbeam_channel::Sender<File>>,
    /// Set when an `fdatasync` failed; the spool takes it on its next tick.
    pub(super) failed: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn start(shard: usize) -> io::Result<Syncer> {
        // One request in flight at most: a sync covers everything written before it.
        let (tx, rx) = crossbeam_channel::bounded::<File>(1);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name(format!("floodgate-sync-{shard}"))
            .spawn(move || {
                for f in rx {
                    if let Err(e) = f.sync_data() {
                        tracing::error!(error = %e, "spool fdatasync failed");
                        // Release: see `Spool::check_syncer`.
                        flag.store(true, Ordering::Release);
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            failed,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its last sync is done.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
