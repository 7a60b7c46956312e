//! How emitters wake a parked reactor without a syscall per event.
//!
//! The reactor announces that it will sleep ([`Parker::announce_sleep`]: store
//! `sleeping = true`, SeqCst fence), then checks every ring, then polls. An emitter publishes its
//! record (`Producer::push` ends with a SeqCst fence), then loads `sleeping` and, only if set,
//! clears it and wakes the poller ([`Parker::unpark`]). The two fences order the two
//! store-then-load pairs, so at least one side sees the other: no lost wake-up. Loom checks this
//! protocol (`ring::loom_tests::loom_no_lost_wakeup`).
//!
//! The wake itself (a mio `Waker` in the reactor) is handed in as a function, so this module,
//! and the emitter that uses it, know nothing of the reactor.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::CachePadded;

/// One reactor's sleep flag and the way to wake it.
pub(crate) struct Parker {
    /// Set by the reactor just before it polls with nothing to do; cleared by whoever wakes it.
    sleeping: CachePadded<AtomicBool>,
    /// Wakes the reactor's poll (a syscall: called only when `sleeping` was set, or for
    /// commands).
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Parker {
    /// A parker whose reactor is woken by `wake`.
    pub(crate) fn new(wake: impl Fn() + Send + Sync + 'static) -> Parker {
        Parker {
            sleeping: CachePadded::new(AtomicBool::new(false)),
            wake: Box::new(wake),
        }
    }

    /// Called by an emitter after publishing a record.
    #[inline]
    pub(crate) fn unpark(&self) {
        // Relaxed: ordered after the record's publication by the fence that ends
        // `Producer::push` (see the module docs). The load first keeps the common case (reactor
        // awake) to a read of a shared cache line.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            (self.wake)();
        }
    }

    /// Wakes the reactor whatever it is doing (for commands and new rings; not per event).
    pub(crate) fn wake(&self) {
        (self.wake)();
    }

    /// The reactor is about to check its rings one last time and sleep.
    pub(crate) fn announce_sleep(&self) {
        // Relaxed store + SeqCst fence: mirrors the emitter's publish, fence, check.
        self.sleeping.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// The reactor is awake again.
    pub(crate) fn awake(&self) {
        // Relaxed: only an optimisation (spares emitters a wake); a stale `true` costs one
        // spurious wake-up.
        self.sleeping.store(false, Ordering::Relaxed);
    }
}
