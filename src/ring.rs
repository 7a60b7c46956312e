//! A bounded, lock-free, single-producer/single-consumer ring of variable-length byte records.
//!
//! One ring connects one [`Emitter`](crate::Emitter) to one reactor shard. The producer copies a
//! record (a few gathered slices) into the ring; the consumer drains every record that is visible
//! in one pass and publishes its new read index once per pass, so the two threads touch each
//! other's cache lines once per batch rather than once per record.
//!
//! # Layout
//! The buffer is `capacity` bytes (a power of two). A record occupies an 8-byte header (`len` as
//! a little-endian `u32`, then four reserved bytes) followed by `len` payload bytes, padded to a
//! multiple of 8. A record never straddles the end of the buffer: when it does not fit in the bytes
//! left before the end, the producer writes a header whose `len` is [`WRAP`] there and starts the
//! record at offset 0.
//!
//! # Shutdown
//! The consumer can [`close`](Consumer::close_and_drain) the ring: it sets `closed`, drains what is
//! visible, then sets `drained`. A producer that sees `closed` after publishing a record waits for
//! `drained` and then knows exactly whether its record was consumed; if not, the push fails with
//! [`PushError::Closed`] and the caller still owns its event. Nothing accepted is lost silently.

use std::cell::Cell;
use std::marker::PhantomData;

use crossbeam_utils::CachePadded;

#[cfg(loom)]
use loom::sync::{
    atomic::{fence, AtomicBool, AtomicU64, Ordering},
    Arc,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{fence, AtomicBool, AtomicU64, Ordering},
    Arc,
};

/// Size of a record header in bytes.
const HEADER: usize = 8;
/// Records start at multiples of this.
const ALIGN: usize = 8;
/// Header `len` value that means "skip to the start of the buffer".
const WRAP: u32 = u32::MAX;
/// The smallest capacity accepted by [`channel`].
pub const MIN_CAPACITY: usize = 64;

/// Why a push did not happen. The caller keeps its data in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Not enough free space right now; retry after the consumer catches up.
    Full,
    /// The record can never fit (larger than [`Producer::max_record`]).
    TooLarge,
    /// The consumer has shut down; the record was not consumed and never will be.
    Closed,
}

/// State shared by the two ends.
struct Shared {
    /// Total bytes ever published by the producer (monotonic; position is `head & mask`).
    /// Written only by the producer. Invariant: `tail <= head <= tail + capacity`.
    head: CachePadded<AtomicU64>,
    /// Total bytes ever released by the consumer. Written only by the consumer.
    tail: CachePadded<AtomicU64>,
    /// Set by the consumer when it stops reading for good.
    closed: AtomicBool,
    /// Set by the consumer after its final drain, once `tail` will never move again.
    drained: AtomicBool,
    /// Set when the producer is dropped: once the ring is empty, the consumer may discard it.
    producer_gone: AtomicBool,
    /// The bytes. Producer writes only `[head, tail + capacity)`, consumer reads only
    /// `[tail, head)`; the index protocol above keeps those ranges disjoint.
    buf: Storage,
    /// `capacity - 1`.
    mask: u64,
}

/// Creates a ring of `capacity` bytes (rounded up to a power of two, at least `MIN_CAPACITY`).
pub fn channel(capacity: usize) -> (Producer, Consumer) {
    let capacity = capacity.max(MIN_CAPACITY).next_power_of_two();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicU64::new(0)),
        tail: CachePadded::new(AtomicU64::new(0)),
        closed: AtomicBool::new(false),
        drained: AtomicBool::new(false),
        producer_gone: AtomicBool::new(false),
        buf: Storage::new(capacity),
        mask: capacity as u64 - 1,
    });
    (
        Producer {
            shared: shared.clone(),
            head: 0,
            cached_tail: 0,
            _not_sync: PhantomData,
        },
        Consumer {
            shared,
            tail: 0,
            _not_sync: PhantomData,
        },
    )
}

const fn padded(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// The writing end. `Send`, not `Sync`, not `Clone`.
pub struct Producer {
    shared: Arc<Shared>,
    /// Local copy of `shared.head`: only this end writes it.
    head: u64,
    /// Last value of `shared.tail` we loaded; refreshed only when the ring looks full.
    cached_tail: u64,
    _not_sync: PhantomData<Cell<()>>,
}

impl Producer {
    /// Capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.mask as usize + 1
    }

    /// The largest record payload a push can ever accept: a quarter of the capacity, so a record
    /// plus a wrap-around skip always fits into an otherwise empty ring.
    pub fn max_record(&self) -> usize {
        self.capacity() / 4 - HEADER
    }

    /// Copies the concatenation of `parts` into the ring as one record and publishes it.
    ///
    /// Never blocks, never allocates. On `Err` nothing was published and the caller keeps its data.
    pub fn push(&mut self, parts: &[&[u8]]) -> Result<(), PushError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_record() {
            return Err(PushError::TooLarge);
        }
        // Relaxed is enough for the fast path: a stale `false` is caught by the check after the
        // fence below.
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(PushError::Closed);
        }
        let cap = self.capacity() as u64;
        let rec = (HEADER + padded(len)) as u64;
        let pos = self.head & self.shared.mask;
        let to_end = cap - pos;
        let need = if rec <= to_end { rec } else { to_end + rec };
        if self.head + need - self.cached_tail > cap {
            // Acquire: pairs with the consumer's Release store of `tail`, so its reads of the
            // bytes we are about to overwrite happened before our writes.
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            if self.head + need - self.cached_tail > cap {
                return Err(PushError::Full);
            }
        }
        let mut at = self.head;
        if rec > to_end {
            debug_assert!(to_end >= HEADER as u64, "positions are 8-aligned");
            // SAFETY: `[head, head + to_end)` is free space (checked against `tail` above: the
            // consumer has released it and reads only `[tail, head)`), and only this producer
            // writes; it is published by the `head` store below.
            unsafe { self.shared.buf.write(pos as usize, &header(WRAP)) };
            at += to_end;
        }
        let start = (at & self.shared.mask) as usize;
        debug_assert_eq!(start % ALIGN, 0);
        debug_assert!(
            start + rec as usize <= cap as usize,
            "a record never straddles the end"
        );
        // The bytes below are published by the `head` store at the end, not before.
        // SAFETY: `[at, at + rec)` is free space (`head + need - tail <= capacity`, checked above
        // against an Acquire `tail`); the consumer reads only `[tail, head)`; one producer writes.
        unsafe { self.shared.buf.write(start, &header(len as u32)) };
        let mut off = start + HEADER;
        for part in parts {
            // SAFETY: as for the header: `off..off + part.len()` lies inside the same record.
            unsafe { self.shared.buf.write(off, part) };
            off += part.len();
        }
        let new_head = at + rec;
        debug_assert!(new_head - self.cached_tail <= cap);
        // Release: publishes the bytes to the consumer's Acquire load of `head`.
        self.shared.head.store(new_head, Ordering::Release);
        // SeqCst fence: the store above and every load after it (of `closed` here, and of the
        // reactor's `sleeping` flag in `Parker::unpark`, which callers do right after `push`)
        // take part in store-fence-load handshakes with the consumer, which does the mirror image
        // (store `closed` or `sleeping`, fence, load `head`). With a SeqCst fence on each side,
        // at least one side sees the other's store. (Fences rather than SeqCst accesses: same
        // cost on x86, and loom models fences exactly.)
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence above.
        if self.shared.closed.load(Ordering::Relaxed) {
            // The consumer is closing. Wait until its final drain is over, then see whether it
            // took our record. This wait happens only during shutdown and is bounded by one drain.
            let backoff = crossbeam_utils::Backoff::new();
            // Acquire: pairs with the Release store of `drained`, making the final `tail` visible.
            while !self.shared.drained.load(Ordering::Acquire) {
                backoff.snooze();
                #[cfg(loom)]
                loom::thread::yield_now();
            }
            // Acquire: see above; `tail` is final now.
            if self.shared.tail.load(Ordering::Acquire) < new_head {
                return Err(PushError::Closed);
            }
        }
        self.head = new_head;
        Ok(())
    }

    /// True once the consumer has closed the ring.
    pub fn is_closed(&self) -> bool {
        // Relaxed: advisory only; `push` does the authoritative check.
        self.shared.closed.load(Ordering::Relaxed)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Release: everything we published happens-before the consumer seeing us gone.
        self.shared.producer_gone.store(true, Ordering::Release);
    }
}

fn header(len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h
}

/// The reading end. `Send`, not `Sync`, not `Clone`.
pub struct Consumer {
    shared: Arc<Shared>,
    /// Local copy of `shared.tail`: only this end writes it.
    tail: u64,
    _not_sync: PhantomData<Cell<()>>,
}

impl Consumer {
    /// Calls `f` with each visible record, oldest first, up to `max_records`, then releases their
    /// space with a single store. Returns how many records were passed to `f`.
    ///
    /// The slice handed to `f` is only valid during the call.
    pub fn drain(&mut self, max_records: usize, mut f: impl FnMut(&[u8])) -> usize {
        // Acquire: pairs with the producer's store of `head`, so the record bytes are visible.
        let head = self.shared.head.load(Ordering::Acquire);
        let mut t = self.tail;
        let mut n = 0;
        debug_assert!(head >= t && head - t <= self.shared.mask + 1);
        while t < head && n < max_records {
            let pos = (t & self.shared.mask) as usize;
            // SAFETY: `t < head`, loaded with Acquire: the producer published this record's
            // header, and it writes only outside `[tail, head)`, which includes this range.
            let len = unsafe { self.shared.buf.read_u32(pos) };
            if len == WRAP {
                t += self.shared.mask + 1 - pos as u64;
                continue;
            }
            let len = len as usize;
            debug_assert!(pos + HEADER + len <= self.shared.mask as usize + 1);
            // SAFETY: the record `[t, t + HEADER + len)` is published (`t < head`, Acquire) and
            // not yet released (`tail` is stored only after this loop), so the producer leaves
            // it alone while `f` reads it.
            unsafe { self.shared.buf.read(pos + HEADER, len, &mut f) };
            t += (HEADER + padded(len)) as u64;
            n += 1;
        }
        debug_assert!(t <= head);
        if t != self.tail {
            self.tail = t;
            // Release: our reads of the consumed bytes happen-before the producer reuses them.
            self.shared.tail.store(t, Ordering::Release);
        }
        n
    }

    /// True when a record is visible. For the reactor's park protocol the caller must issue a
    /// SeqCst fence between storing its `sleeping` flag and calling this (see `park::Parker`).
    pub fn has_pending(&self) -> bool {
        // Acquire: as in `drain`; the ordering against `sleeping` comes from the caller's fence.
        self.shared.head.load(Ordering::Acquire) != self.tail
    }

    /// True when the producer is gone and everything it published has been drained: the ring can
    /// be discarded.
    pub fn is_finished(&self) -> bool {
        // Acquire: pairs with the producer's Release in `drop`, so its final `head` is visible.
        self.shared.producer_gone.load(Ordering::Acquire)
            && self.shared.head.load(Ordering::Acquire) == self.tail
    }

    /// Closes the ring for good: later pushes fail with [`PushError::Closed`]. Records published
    /// before the producer saw the close are passed to `f` (all of them, whatever their number).
    /// Returns how many.
    pub fn close_and_drain(mut self, mut f: impl FnMut(&[u8])) -> usize {
        // Relaxed store + SeqCst fence: the mirror of the producer's `head` store, fence, `closed`
        // load. Either the producer sees `closed`, or the drain below (loading `head` after the
        // fence) sees its record.
        self.shared.closed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut n = 0;
        loop {
            let k = self.drain(usize::MAX, &mut f);
            n += k;
            if k == 0 {
                break;
            }
        }
        // Release: publishes the final `tail` to a producer waiting in `push`.
        self.shared.drained.store(true, Ordering::Release);
        n
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // A consumer dropped without `close_and_drain` still must not leave a producer waiting.
        // Relaxed + fence as in `close_and_drain`; Release publishes the final `tail`.
        self.shared.closed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.shared.drained.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------
// Storage: the only unsafe code of the gateway (see ARCHITECTURE.md, "Invariants").

#[cfg(loom)]
use storage_loom::Storage;
#[cfg(not(loom))]
use storage_std::Storage;

#[cfg(not(loom))]
mod storage_std {
    use std::ptr::NonNull;

    /// A fixed heap buffer accessed through raw pointers so the producer and the consumer can work
    /// on disjoint ranges of it at the same time without creating overlapping references.
    pub(super) struct Storage {
        /// Start of a `Box<[u8]>` of `len` initialised bytes, owned by this value.
        ptr: NonNull<u8>,
        /// Length of the allocation; never changes (the ring never allocates after construction).
        len: usize,
    }

    // SAFETY: `Storage` owns its allocation (like `Box<[u8]>`, which is Send + Sync). Concurrent
    // access is only through `write`/`read`, whose callers (the ring's index protocol) guarantee
    // that ranges written by one thread are never accessed by the other at the same time.
    unsafe impl Send for Storage {}
    // SAFETY: see `Send` above.
    unsafe impl Sync for Storage {}

    impl Storage {
        pub(super) fn new(len: usize) -> Self {
            let boxed: Box<[u8]> = vec![0u8; len].into_boxed_slice();
            let ptr = NonNull::new(Box::into_raw(boxed).cast::<u8>()).expect("Box is non-null");
            Storage { ptr, len }
        }

        /// Copies `src` to `[at, at + src.len())` (bounds are checked: out of bounds panics).
        ///
        /// # Safety
        ///
        /// No other thread may read or write any byte of that range until this returns and a
        /// Release store (the ring's `head`) has published it. The ring's index protocol gives
        /// this: the producer writes only free space, `[head, tail + capacity)`.
        pub(super) unsafe fn write(&self, at: usize, src: &[u8]) {
            assert!(
                at <= self.len && src.len() <= self.len - at,
                "ring write out of bounds"
            );
            // SAFETY: the range is in bounds (checked above) and, by the caller's contract, not
            // accessed by another thread; `src` cannot overlap our allocation because nobody
            // holds a reference into it outside `read`, which the contract excludes.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(at), src.len());
            }
        }

        /// Reads the little-endian `u32` at `at`.
        ///
        /// # Safety
        ///
        /// As for [`read`](Self::read), for `[at, at + 4)`.
        pub(super) unsafe fn read_u32(&self, at: usize) -> u32 {
            let mut out = 0;
            // SAFETY: the caller's contract is `read`'s, for these four bytes.
            unsafe {
                self.read(at, 4, |b| {
                    out = u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
            };
            out
        }

        /// Passes `[at, at + len)` to `f` (bounds are checked: out of bounds panics).
        ///
        /// # Safety
        ///
        /// No other thread may write any byte of that range until `f` returns, and its last
        /// write must happen-before this call (an Acquire load of the ring's `head` that saw the
        /// producer's Release store). The ring's index protocol gives this: the consumer reads
        /// only published, unreleased bytes, `[tail, head)`.
        pub(super) unsafe fn read<R>(
            &self,
            at: usize,
            len: usize,
            f: impl FnOnce(&[u8]) -> R,
        ) -> R {
            assert!(
                at <= self.len && len <= self.len - at,
                "ring read out of bounds"
            );
            // The bytes are initialised (zeroed at construction, then only overwritten), and the
            // producer leaves them alone until the consumer releases them after `f` returns.
            // SAFETY: in bounds (checked above), initialised, and by the caller's contract not
            // written until `f` returns; the slice does not outlive this call.
            let slice = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) };
            f(slice)
        }
    }

    impl Drop for Storage {
        fn drop(&mut self) {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: `ptr`/`len` came from `Box::into_raw` of a `Box<[u8]>` of this length in
            // `new`, and this is the only place that frees it.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}

#[cfg(loom)]
mod storage_loom {
    use loom::cell::UnsafeCell;

    /// Loom version: one tracked cell per byte, so loom reports any access to the same byte from
    /// both threads that is not ordered by the index protocol.
    pub(super) struct Storage {
        cells: Box<[UnsafeCell<u8>]>,
    }

    // SAFETY: as for the std `Storage`: the ring's index protocol keeps the two threads on
    // disjoint cells, and loom's cells verify exactly that at run time.
    unsafe impl Send for Storage {}
    // SAFETY: see `Send` above.
    unsafe impl Sync for Storage {}

    impl Storage {
        pub(super) fn new(len: usize) -> Self {
            Storage {
                cells: (0..len).map(|_| UnsafeCell::new(0)).collect(),
            }
        }

        /// As the std version: loom checks the contract.
        pub(super) unsafe fn write(&self, at: usize, src: &[u8]) {
            for (i, b) in src.iter().enumerate() {
                // SAFETY: loom checks that no other access to this cell races with this one.
                self.cells[at + i].with_mut(|p| unsafe { *p = *b });
            }
        }

        /// As the std version: loom checks the contract.
        pub(super) unsafe fn read_u32(&self, at: usize) -> u32 {
            let mut out = 0;
            // SAFETY: the caller's contract is `read`'s, for these four bytes.
            unsafe {
                self.read(at, 4, |b| {
                    out = u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
            };
            out
        }

        /// As the std version: loom checks the contract.
        pub(super) unsafe fn read<R>(
            &self,
            at: usize,
            len: usize,
            f: impl FnOnce(&[u8]) -> R,
        ) -> R {
            let copy: Vec<u8> = (at..at + len)
                // SAFETY: loom checks that no other access to this cell races with this one.
                .map(|i| self.cells[i].with(|p| unsafe { *p }))
                .collect();
            f(&copy)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn drain_all(c: &mut Consumer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        c.drain(usize::MAX, |r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn records_come_out_in_order_and_intact() {
        let (mut p, mut c) = channel(256);
        p.push(&[b"ab", b"c"]).unwrap();
        p.push(&[b""]).unwrap();
        p.push(&[b"0123456789"]).unwrap();
        assert_eq!(
            drain_all(&mut c),
            vec![b"abc".to_vec(), b"".to_vec(), b"0123456789".to_vec()]
        );
        assert!(drain_all(&mut c).is_empty());
    }

    #[test]
    fn full_ring_rejects_then_accepts_after_drain() {
        let (mut p, mut c) = channel(64);
        // 64 bytes = 4 records of 8 header + 8 payload.
        for i in 0..4u8 {
            p.push(&[&[i; 8]]).unwrap();
        }
        assert_eq!(p.push(&[&[9; 8]]), Err(PushError::Full));
        assert_eq!(c.drain(1, |r| assert_eq!(r, [0; 8])), 1);
        p.push(&[&[4; 8]]).unwrap();
        let got = drain_all(&mut c);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], vec![4; 8]);
    }

    #[test]
    fn too_large_is_rejected_up_front() {
        let (mut p, _c) = channel(64);
        assert_eq!(p.max_record(), 8);
        assert_eq!(p.push(&[&[0; 9]]), Err(PushError::TooLarge));
        p.push(&[&[0; 8]]).unwrap();
    }

    #[test]
    fn records_wrap_around_the_end_without_splitting() {
        let (mut p, mut c) = channel(256);
        let mut expect = 0u32;
        for round in 0..200u32 {
            let len = (round % 24) as usize; // varying sizes force wraps at odd places
            let payload = vec![round as u8; len];
            while let Err(e) = p.push(&[&round.to_le_bytes(), &payload]) {
                assert_eq!(e, PushError::Full);
                c.drain(usize::MAX, |r| {
                    let n = u32::from_le_bytes(r[..4].try_into().unwrap());
                    assert_eq!(n, expect);
                    assert!(r[4..].iter().all(|b| *b == n as u8));
                    assert_eq!(r.len() - 4, (n % 24) as usize);
                    expect += 1;
                });
            }
        }
        c.drain(usize::MAX, |r| {
            assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), expect);
            expect += 1;
        });
        assert_eq!(expect, 200);
    }

    #[test]
    fn close_hands_back_unconsumed_pushes() {
        let (mut p, c) = channel(256);
        p.push(&[b"accepted"]).unwrap();
        let mut seen = Vec::new();
        assert_eq!(c.close_and_drain(|r| seen.push(r.to_vec())), 1);
        assert_eq!(seen, vec![b"accepted".to_vec()]);
        assert_eq!(p.push(&[b"late"]), Err(PushError::Closed));
        assert!(p.is_closed());
    }

    #[test]
    fn finished_only_after_producer_gone_and_empty() {
        let (mut p, mut c) = channel(256);
        p.push(&[b"x"]).unwrap();
        drop(p);
        assert!(!c.is_finished());
        assert_eq!(drain_all(&mut c).len(), 1);
        assert!(c.is_finished());
    }

    #[test]
    fn cross_thread_stress_preserves_every_record_in_order() {
        const N: u64 = if cfg!(miri) { 2_000 } else { 200_000 };
        let (mut p, mut c) = channel(4096);
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let len = (i % 57) as usize;
                let pad = vec![(i % 251) as u8; len];
                let backoff = crossbeam_utils::Backoff::new();
                while let Err(e) = p.push(&[&i.to_le_bytes(), &pad]) {
                    assert_eq!(e, PushError::Full);
                    backoff.snooze();
                }
            }
        });
        let mut next = 0u64;
        while next < N {
            c.drain(64, |r| {
                let i = u64::from_le_bytes(r[..8].try_into().unwrap());
                assert_eq!(i, next, "records out of order or lost");
                assert_eq!(r.len() - 8, (i % 57) as usize);
                assert!(r[8..].iter().all(|b| *b == (i % 251) as u8), "torn record");
                next += 1;
            });
        }
        producer.join().unwrap();
        assert!(c.is_finished());
    }

    #[test]
    fn shutdown_race_never_loses_an_accepted_record() {
        // Many rounds of a producer pushing while the consumer closes: every push that returned
        // Ok must have been drained, every Closed push must not have been.
        for _ in 0..if cfg!(miri) { 3 } else { 200 } {
            let (mut p, mut c) = channel(1024);
            let producer = std::thread::spawn(move || {
                let mut ok = Vec::new();
                for i in 0u32..if cfg!(miri) { 300 } else { 10_000 } {
                    match p.push(&[&i.to_le_bytes()]) {
                        Ok(()) => ok.push(i),
                        Err(PushError::Full) => std::thread::yield_now(),
                        Err(PushError::Closed) => break,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                ok
            });
            let mut got = Vec::new();
            for _ in 0..3 {
                c.drain(usize::MAX, |r| {
                    got.push(u32::from_le_bytes(r.try_into().unwrap()))
                });
            }
            c.close_and_drain(|r| got.push(u32::from_le_bytes(r.try_into().unwrap())));
            let ok = producer.join().unwrap();
            assert_eq!(got, ok);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;

    /// A push that wraps around the end of the buffer while the consumer reads concurrently.
    /// No spinning (loom explores every interleaving of a bounded program).
    #[test]
    fn loom_push_pop_with_wrap() {
        loom::model(|| {
            let (mut p, mut c) = channel(128);
            // Move both indices to offset 96 first (three 32-byte records), so the second push
            // below must wrap.
            for _ in 0..3 {
                p.push(&[&[9; 24]]).unwrap();
            }
            assert_eq!(c.drain(usize::MAX, |_| {}), 3);
            let t = loom::thread::spawn(move || {
                // 13-byte payloads: a 24-byte record at 96..120, then a WRAP header and 0..24.
                for i in 0u8..2 {
                    p.push(&[&[i; 13]]).unwrap();
                }
            });
            let mut seen = Vec::new();
            c.drain(usize::MAX, |r| seen.push(r.to_vec()));
            t.join().unwrap();
            c.drain(usize::MAX, |r| seen.push(r.to_vec()));
            assert_eq!(seen, vec![vec![0u8; 13], vec![1u8; 13]]);
        });
    }

    #[test]
    fn loom_close_never_loses_an_accepted_record() {
        loom::model(|| {
            let (mut p, c) = channel(64);
            let t = loom::thread::spawn(move || {
                let mut ok = 0;
                for i in 0u8..2 {
                    if p.push(&[&[i]]).is_ok() {
                        ok += 1;
                    }
                }
                ok
            });
            let mut got = 0;
            c.close_and_drain(|_| got += 1);
            let ok = t.join().unwrap();
            assert_eq!(got, ok);
        });
    }

    /// The reactor's sleep protocol (see `park::Parker`): set `sleeping`, re-check the ring,
    /// then park; the producer publishes, then wakes only if `sleeping` was set. No lost wake-up:
    /// loom reports a deadlock if the consumer can park forever with a record pending.
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let (mut p, mut c) = channel(64);
            let sleeping = Arc::new(AtomicBool::new(false));
            let notify = Arc::new(loom::sync::Notify::new());
            let (s2, n2) = (sleeping.clone(), notify.clone());
            let t = loom::thread::spawn(move || {
                p.push(&[b"x"]).unwrap();
                // As `Parker::unpark`: ordered after the fence that ends `push`.
                if s2.load(Ordering::Relaxed) && s2.swap(false, Ordering::Relaxed) {
                    n2.notify();
                }
            });
            let mut got = 0;
            loop {
                got += c.drain(usize::MAX, |_| {});
                if got == 1 {
                    break;
                }
                sleeping.store(true, Ordering::Relaxed);
                loom::sync::atomic::fence(Ordering::SeqCst);
                if c.has_pending() {
                    sleeping.store(false, Ordering::Relaxed);
                    continue;
                }
                notify.wait();
                sleeping.store(false, Ordering::Relaxed);
            }
            t.join().unwrap();
        });
    }
}
