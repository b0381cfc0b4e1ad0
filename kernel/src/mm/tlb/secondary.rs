//! Secondary TLBs: the registration list of non-CPU TLBs (the SMMU's) that cache translations
//! from the CPU's own page tables and never see the CPU's TLBI instructions, and the notifier
//! mode that decides which flushes they are told about.
//!
//! # Why
//!
//! An address space shared with a device through the SMMU (SVA) is walked by two MMUs. The CPU's
//! TLBs are kept coherent by broadcast `TLBI … IS`; the SMMU's is not (QEMU's SMMUv3 has no
//! broadcast TLB maintenance, and Linux runs real SMMUs with `CR2.PTM = 1` too). Every flush path
//! therefore calls [`SecondaryTlbs::notify`] (from the flush [executor](super::executor)) at the same point as its CPU TLBI — after the
//! `DSB ISHST` that published the page-table stores, before the final `DSB ISH` — and returns only
//! once every secondary TLB has completed its invalidation (for the SMMU: TLBI commands +
//! `CMD_SYNC` consumed). This is the Linux ≥ 6.6 design (`mmu_notifier_arch_invalidate_
//! secondary_tlbs()` called from the arm64 TLB flush primitives).
//!
//! # Modes
//!
//! A global [`SecondaryTlbMode`], set at boot from the `secondary_tlb=` boot argument
//! ([`crate::bootargs::BootConfig`]), exists so tests
//! and demos can run negative controls:
//!
//! - `sync` (default, correct): every flush is also sent to every secondary TLB.
//! - `legacy`: reproduces the pre-6.6 Linux bug exactly — secondary TLBs are *not* told about
//!   flushes that only upgraded permissions of valid entries (RO→RW in place, the write-fault
//!   path), and are told about everything else. A device then keeps faulting on its stale
//!   read-only entry.
//! - `off`: secondary TLBs are never told.
//!
//! Three more modes each reproduce one *ordering* bug of a batched or deferred flush path, the
//! ones the Linux thread behind the 6.6 fix worried about; every other flush is told as in
//! `sync`, so each mode breaks exactly one path:
//!
//! - `gather-late`: a batch ([`AddressSpace::batch`](crate::mm::address_space::AddressSpace::batch))
//!   frees its frames and runs its deferred work *before* the secondary TLBs are told, at the
//!   very end: a freed frame can be reused while a device still reaches it.
//! - `nested-unaware`: the flush a batch makes because another batch of the same address space
//!   is in flight ([`FlushCause::NestedBatch`]) reaches the CPU TLBs in full, but the secondary
//!   TLBs hear only of what the batch cleared itself: the nested batch returns while the device
//!   still holds translations the other batch cleared.
//! - `move-late`: a move's ([`FlushCause::Move`]) invalidation of the old range reaches the
//!   secondary TLBs only with the next invalidation of the address space that reaches them,
//!   after the move returned: a device write through the old address lands in the moved page.
//!   It applies to [`AddressSpace::move_range`](crate::mm::address_space::AddressSpace::move_range);
//!   a move inside a batch is flushed as the batch (cause `Batch`), which the mode leaves alone.

use alloc::{string::String, sync::Arc, vec::Vec};
use core::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
};

use spin::Mutex;

use crate::mm::tlb::{
    range::FlushRange,
    token::{FlushCause, LeafHint},
};

/// A TLB outside the CPU that caches translations from shared page tables.
///
/// Implementations are called with page-table locks held and possibly on several CPUs at once:
/// they must not sleep, must not call back into the address space, and must be internally
/// synchronised.
pub trait SecondaryTlb: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &str;

    /// Invalidates every entry for `asid` that translates an address in `range`
    /// ([`FlushRange::All`]: every entry of `asid`), including cached walks, and returns only
    /// once the invalidation is complete.
    ///
    /// # Errors
    ///
    /// [`SecondaryTlbError`] if the invalidation could not be completed; the caller then treats
    /// the page-table change as not yet safe (frames stay allocated).
    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    ) -> Result<(), SecondaryTlbError>;

    /// [`SecondaryTlb::invalidate`], with what the page-table change knows about the entries
    /// it changed; a TLB that can invalidate less with it overrides this (the default ignores
    /// the hint).
    ///
    /// # Errors
    ///
    /// As [`SecondaryTlb::invalidate`].
    fn invalidate_hinted(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
        hint: LeafHint,
    ) -> Result<(), SecondaryTlbError> {
        let _ = hint;
        self.invalidate(asid, range, cause)
    }
}

/// What kind of failure a secondary TLB reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondaryTlbFailure {
    /// The completion wait (e.g. `CMD_SYNC`) timed out.
    Timeout,
    /// The device rejected one of the invalidation commands (e.g. SMMU `CERROR_ILL`).
    Rejected {
        /// Index of the rejected command in the device's batch.
        index: usize,
        /// Its opcode.
        opcode: u8,
    },
    /// The device is not operational.
    Unavailable,
}

impl fmt::Display for SecondaryTlbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("invalidation completion timed out"),
            Self::Rejected { index, opcode } => {
                write!(
                    f,
                    "invalidation command {index} (opcode {opcode:#04x}) rejected"
                )
            }
            Self::Unavailable => f.write_str("device unavailable"),
        }
    }
}

/// Why a secondary TLB could not invalidate: the kind of failure, and the device driver's own
/// error (kept whole, as [`core::error::Error::source`]).
#[derive(Clone, Debug)]
pub struct SecondaryTlbError {
    failure: SecondaryTlbFailure,
    source: Option<Arc<dyn core::error::Error + Send + Sync>>,
}

impl SecondaryTlbError {
    /// A failure without a driver error behind it.
    pub fn new(failure: SecondaryTlbFailure) -> Self {
        Self {
            failure,
            source: None,
        }
    }

    /// A failure caused by the driver's `source` error.
    pub fn caused_by(
        failure: SecondaryTlbFailure,
        source: impl core::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            failure,
            source: Some(Arc::new(source)),
        }
    }

    /// What kind of failure it was.
    pub fn failure(&self) -> SecondaryTlbFailure {
        self.failure
    }
}

impl fmt::Display for SecondaryTlbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(src) => write!(f, "{}: {src}", self.failure),
            None => write!(f, "{}", self.failure),
        }
    }
}

/// Equal when the failures are equal and the driver errors are the same one (both absent, or
/// clones of one error): driver errors need not be comparable themselves.
impl PartialEq for SecondaryTlbError {
    fn eq(&self, other: &Self) -> bool {
        self.failure == other.failure
            && match (&self.source, &other.source) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}
impl Eq for SecondaryTlbError {}

impl core::error::Error for SecondaryTlbError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn core::error::Error + 'static))
    }
}

/// What one [`SecondaryTlbs::notify`] did, for the executor's statistics and errors.
#[derive(Clone, Debug, Default)]
pub struct NotifyReport {
    /// Invalidations performed (successful or not).
    pub notified: u64,
    /// Invalidations skipped because of the notifier mode.
    pub skipped: u64,
    /// Invalidations that failed.
    pub failures: u64,
    /// The first failure: the TLB's name and its error.
    pub first_failure: Option<(String, SecondaryTlbError)>,
}

// ---------------------------------------------------------------------------------------------
// Mode
// ---------------------------------------------------------------------------------------------

/// How flushes are reported to secondary TLBs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SecondaryTlbMode {
    /// Every flush (correct; the default).
    Sync = 0,
    /// Every flush except permission upgrades (the pre-Linux-6.6 bug).
    Legacy = 1,
    /// None.
    Off = 2,
    /// Batches free their frames before telling secondary TLBs (an ordering bug).
    GatherLate = 3,
    /// Nested-batch flushes do not reach secondary TLBs (an ordering bug).
    NestedUnaware = 4,
    /// Moves tell secondary TLBs only after they returned (an ordering bug).
    MoveLate = 5,
}

/// When a flush reaches the secondary TLBs, as the mode decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Now, at the flush's own moment (between the CPU TLBI and the final `DSB ISH`).
    Now,
    /// Not at all.
    Skip,
    /// Only with the next flush of the address space (`move-late`).
    Later,
}

const NO_OVERRIDE: u8 = 0xFF;

impl SecondaryTlbMode {
    /// Every mode, in boot-argument order.
    pub const ALL: [SecondaryTlbMode; 6] = [
        SecondaryTlbMode::Sync,
        SecondaryTlbMode::Legacy,
        SecondaryTlbMode::Off,
        SecondaryTlbMode::GatherLate,
        SecondaryTlbMode::NestedUnaware,
        SecondaryTlbMode::MoveLate,
    ];

    /// When a flush of `cause`, upgrade-only or not, reaches the secondary TLBs in this mode.
    pub const fn delivery(self, cause: FlushCause, upgrade_only: bool) -> Delivery {
        match (self, cause) {
            (SecondaryTlbMode::Off, _) => Delivery::Skip,
            (SecondaryTlbMode::Legacy, _) if upgrade_only => Delivery::Skip,
            (SecondaryTlbMode::NestedUnaware, FlushCause::NestedBatch) => Delivery::Skip,
            (SecondaryTlbMode::MoveLate, FlushCause::Move) => Delivery::Later,
            _ => Delivery::Now,
        }
    }

    /// Whether a flush with this `upgrade_only` flag (and an ordinary cause) is reported now.
    pub const fn should_notify(self, upgrade_only: bool) -> bool {
        matches!(
            self.delivery(FlushCause::Protect, upgrade_only),
            Delivery::Now
        )
    }

    /// Whether a batch's frames are freed before its secondary TLBs are told (`gather-late`).
    pub const fn frees_before_telling(self) -> bool {
        matches!(self, SecondaryTlbMode::GatherLate)
    }

    /// Whether this is the correct mode (every other one exists to show a bug).
    pub const fn is_correct(self) -> bool {
        matches!(self, SecondaryTlbMode::Sync)
    }

    /// The boot-argument spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SecondaryTlbMode::Sync => "sync",
            SecondaryTlbMode::Legacy => "legacy",
            SecondaryTlbMode::Off => "off",
            SecondaryTlbMode::GatherLate => "gather-late",
            SecondaryTlbMode::NestedUnaware => "nested-unaware",
            SecondaryTlbMode::MoveLate => "move-late",
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => SecondaryTlbMode::Legacy,
            2 => SecondaryTlbMode::Off,
            3 => SecondaryTlbMode::GatherLate,
            4 => SecondaryTlbMode::NestedUnaware,
            5 => SecondaryTlbMode::MoveLate,
            _ => SecondaryTlbMode::Sync,
        }
    }
}

impl fmt::Display for SecondaryTlbMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A notifier mode not in [`SecondaryTlbMode::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMode;

/// Parses the boot-argument spelling ([`SecondaryTlbMode::as_str`]).
impl FromStr for SecondaryTlbMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        SecondaryTlbMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or(UnknownMode)
    }
}

static MODE: AtomicU8 = AtomicU8::new(SecondaryTlbMode::Sync as u8);

/// Sets the global mode.
pub fn set_mode(mode: SecondaryTlbMode) {
    MODE.store(mode as u8, Ordering::Release);
}

/// The global mode.
pub fn mode() -> SecondaryTlbMode {
    SecondaryTlbMode::from_u8(MODE.load(Ordering::Acquire))
}

// ---------------------------------------------------------------------------------------------
// Registration list
// ---------------------------------------------------------------------------------------------

/// Identifies one registration in a [`SecondaryTlbs`] list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SecondaryTlbHandle(u64);

struct Entry {
    handle: SecondaryTlbHandle,
    tlb: Arc<dyn SecondaryTlb>,
    /// Calls of `tlb` in progress (or about to start).
    in_flight: AtomicUsize,
    /// Set by `unregister`; no call starts after it is seen.
    removed: AtomicBool,
}

/// The secondary TLBs attached to one address space.
///
/// The list is copy-on-write: a flush takes a snapshot (one reference-count increment under a
/// short lock) and notifies without holding any lock, so any number of CPUs flush at once and
/// registration is never starved by them (a reader-writer lock would let a steady stream of
/// flushes starve `unregister`). Each registration counts its in-flight calls; [`Self::unregister`]
/// marks it removed and waits for that count to drain, so once it returns the TLB is never
/// called again.
pub struct SecondaryTlbs {
    list: Mutex<Arc<Vec<Arc<Entry>>>>,
    next_id: AtomicU64,
    mode_override: AtomicU8,
    /// Invalidations put off by the mode ([`Delivery::Later`]), one per ASID, delivered with the
    /// next one that reaches the secondary TLBs.
    owed: Mutex<Vec<(u16, FlushRange)>>,
}

impl Default for SecondaryTlbs {
    fn default() -> Self {
        Self::new()
    }
}

impl SecondaryTlbs {
    /// An empty list following the global mode.
    pub fn new() -> Self {
        Self {
            list: Mutex::new(Arc::new(Vec::new())),
            next_id: AtomicU64::new(1),
            mode_override: AtomicU8::new(NO_OVERRIDE),
            owed: Mutex::new(Vec::new()),
        }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Entry>>> {
        self.list.lock().clone()
    }

    /// Adds a secondary TLB.
    pub fn register(&self, tlb: Arc<dyn SecondaryTlb>) -> SecondaryTlbHandle {
        let handle = SecondaryTlbHandle(self.next_id.fetch_add(1, Ordering::Relaxed));
        let entry = Arc::new(Entry {
            handle,
            tlb,
            in_flight: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
        });
        let mut list = self.list.lock();
        let mut v: Vec<Arc<Entry>> = list.as_ref().clone();
        v.push(entry);
        *list = Arc::new(v);
        handle
    }

    /// Removes a registration and waits until no flush is calling it any more; returns the TLB,
    /// or `None` if the handle is unknown.
    pub fn unregister(&self, handle: SecondaryTlbHandle) -> Option<Arc<dyn SecondaryTlb>> {
        let entry = {
            let mut list = self.list.lock();
            let i = list.iter().position(|e| e.handle == handle)?;
            let mut v: Vec<Arc<Entry>> = list.as_ref().clone();
            let e = v.remove(i);
            *list = Arc::new(v);
            e
        };
        // Pairs with the SeqCst increment-then-check in `call`: a call either sees `removed`
        // and backs off, or was counted before this store and is waited for.
        entry.removed.store(true, Ordering::SeqCst);
        while entry.in_flight.load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
        }
        Some(entry.tlb.clone())
    }

    /// Number of registered TLBs.
    pub fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overrides the global mode for this list only (`None`: follow the global mode). Lets tests
    /// run side by side without sharing the global switch.
    pub fn set_mode_override(&self, mode: Option<SecondaryTlbMode>) {
        self.mode_override
            .store(mode.map_or(NO_OVERRIDE, |m| m as u8), Ordering::Release);
    }

    /// The mode in effect for this list.
    pub fn effective_mode(&self) -> SecondaryTlbMode {
        match self.mode_override.load(Ordering::Acquire) {
            NO_OVERRIDE => mode(),
            m => SecondaryTlbMode::from_u8(m),
        }
    }

    /// Calls one entry unless it is being removed; `None` if skipped.
    fn call(
        e: &Entry,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
        hint: LeafHint,
    ) -> Option<Result<(), SecondaryTlbError>> {
        e.in_flight.fetch_add(1, Ordering::SeqCst);
        let r = if e.removed.load(Ordering::SeqCst) {
            None
        } else {
            Some(e.tlb.invalidate_hinted(asid, range, cause, hint))
        };
        e.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Reports one flush to every registered TLB, synchronously, as the mode allows; every TLB
    /// is attempted even after a failure. The report says what was done and what failed.
    pub fn notify(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
        upgrade_only: bool,
        hint: LeafHint,
    ) -> NotifyReport {
        let mut report = NotifyReport::default();
        let list = self.snapshot();
        if list.is_empty() {
            return report;
        }
        match self.effective_mode().delivery(cause, upgrade_only) {
            Delivery::Now => {}
            Delivery::Skip => {
                report.skipped = list.len() as u64;
                return report;
            }
            Delivery::Later => {
                let mut owed = self.owed.lock();
                match owed.iter_mut().find(|(a, _)| *a == asid) {
                    Some((_, r)) => *r = r.hull(range),
                    None => owed.push((asid, range)),
                }
                report.skipped = list.len() as u64;
                return report;
            }
        }
        // A put-off invalidation goes out first (too late: that was the point of the mode).
        let owed = core::mem::take(&mut *self.owed.lock());
        for (owed_asid, owed_range) in owed {
            self.notify_list(
                &list,
                (owed_asid, owed_range, FlushCause::Move),
                LeafHint::UNKNOWN,
                &mut report,
            );
        }
        self.notify_list(&list, (asid, range, cause), hint, &mut report);
        report
    }

    fn notify_list(
        &self,
        list: &[Arc<Entry>],
        (asid, range, cause): (u16, FlushRange, FlushCause),
        hint: LeafHint,
        report: &mut NotifyReport,
    ) {
        for e in list.iter() {
            match Self::call(e, asid, range, cause, hint) {
                None => {}
                Some(Ok(())) => report.notified += 1,
                Some(Err(err)) => {
                    report.notified += 1;
                    report.failures += 1;
                    log::error!(
                        "secondary TLB {}: invalidate asid {asid} {range:?}: {err}",
                        e.tlb.name()
                    );
                    report
                        .first_failure
                        .get_or_insert_with(|| (String::from(e.tlb.name()), err));
                }
            }
        }
    }

    /// Whether an invalidation put off by `move-late` is still owed to the secondary TLBs.
    pub fn owes_invalidation(&self) -> bool {
        !self.owed.lock().is_empty()
    }

    /// Reports one invalidation to a single, already unregistered TLB (teardown of a
    /// registration), as the mode allows (`off` skips it; `legacy` sends it, since it is not an
    /// upgrade).
    ///
    /// # Errors
    ///
    /// The TLB's error.
    pub fn notify_one(
        &self,
        tlb: &dyn SecondaryTlb,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        if self.effective_mode().should_notify(false) {
            if range == FlushRange::All {
                // Whatever `move-late` still owes for this ASID is covered.
                self.owed.lock().retain(|(a, _)| *a != asid);
            }
            tlb.invalidate(asid, range, cause)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{thread, vec::Vec};

    use super::*;
    use crate::mm::{
        addr::VirtAddr,
        pgtable::fake::{Log, RecordingSecondary},
    };

    #[test]
    fn parse_modes() {
        for m in [
            SecondaryTlbMode::Sync,
            SecondaryTlbMode::Legacy,
            SecondaryTlbMode::Off,
        ] {
            assert_eq!(m.as_str().parse(), Ok(m));
        }
        assert_eq!("Sync".parse::<SecondaryTlbMode>(), Err(UnknownMode));
        assert_eq!("".parse::<SecondaryTlbMode>(), Err(UnknownMode));
    }

    #[test]
    fn mode_matrix() {
        use SecondaryTlbMode::*;
        assert!(Sync.should_notify(false) && Sync.should_notify(true));
        assert!(Legacy.should_notify(false) && !Legacy.should_notify(true));
        assert!(!Off.should_notify(false) && !Off.should_notify(true));
    }

    /// The only test that touches the global mode (every other test uses per-list overrides).
    #[test]
    fn global_mode_and_override() {
        set_mode(SecondaryTlbMode::Legacy);
        assert_eq!(mode(), SecondaryTlbMode::Legacy);
        let list = SecondaryTlbs::new();
        assert_eq!(list.effective_mode(), SecondaryTlbMode::Legacy);
        list.set_mode_override(Some(SecondaryTlbMode::Off));
        assert_eq!(list.effective_mode(), SecondaryTlbMode::Off);
        set_mode(SecondaryTlbMode::Sync);
        assert_eq!(list.effective_mode(), SecondaryTlbMode::Off);
        list.set_mode_override(None);
        assert_eq!(list.effective_mode(), SecondaryTlbMode::Sync);
    }

    #[test]
    fn notify_respects_mode_and_registration() {
        let log = Log::default();
        let list = SecondaryTlbs::new();
        let (mut notified, mut skipped) = (0, 0);
        let mut tally = |r: NotifyReport| {
            assert!(r.first_failure.is_none());
            notified += r.notified;
            skipped += r.skipped;
        };
        let r = FlushRange::page(VirtAddr(0x1000));
        // Nothing registered: nothing to do, even in sync mode.
        list.set_mode_override(Some(SecondaryTlbMode::Sync));
        tally(list.notify(1, r, FlushCause::Unmap, false, LeafHint::UNKNOWN));
        let a = list.register(RecordingSecondary::new("a", log.clone()));
        let _b = list.register(RecordingSecondary::new("b", log.clone()));
        assert_eq!(list.len(), 2);
        tally(list.notify(1, r, FlushCause::Protect, true, LeafHint::UNKNOWN));
        assert_eq!(
            log.take_secondary(),
            vec![
                ("a".into(), 1, r, FlushCause::Protect),
                ("b".into(), 1, r, FlushCause::Protect)
            ]
        );
        list.set_mode_override(Some(SecondaryTlbMode::Legacy));
        tally(list.notify(1, r, FlushCause::Protect, true, LeafHint::UNKNOWN));
        assert_eq!(log.take_secondary(), vec![], "legacy skips the upgrade");
        tally(list.notify(1, r, FlushCause::Unmap, false, LeafHint::UNKNOWN));
        assert_eq!(log.take_secondary().len(), 2, "legacy still sends the rest");
        list.set_mode_override(Some(SecondaryTlbMode::Off));
        tally(list.notify(
            1,
            FlushRange::All,
            FlushCause::Teardown,
            false,
            LeafHint::UNKNOWN,
        ));
        assert_eq!(log.take_secondary(), vec![]);
        assert_eq!((notified, skipped), (4, 4));
        assert!(list.unregister(a).is_some());
        assert!(list.unregister(a).is_none());
        assert_eq!(list.len(), 1);
    }

    struct Counting {
        calls: AtomicUsize,
        gone: AtomicBool,
    }

    impl SecondaryTlb for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn invalidate(
            &self,
            _: u16,
            _: FlushRange,
            _: FlushCause,
        ) -> Result<(), SecondaryTlbError> {
            assert!(
                !self.gone.load(Ordering::SeqCst),
                "called after unregistration returned"
            );
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Flushes on several threads while TLBs come and go: no call after `unregister` returns.
    #[test]
    fn concurrent_flush_and_registration() {
        let list = Arc::new(SecondaryTlbs::new());
        list.set_mode_override(Some(SecondaryTlbMode::Sync));
        let stop = Arc::new(AtomicBool::new(false));
        let flushers: Vec<_> = (0..2)
            .map(|i| {
                let (list, stop) = (list.clone(), stop.clone());
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let r = list.notify(
                            i,
                            FlushRange::page(VirtAddr(0x1000 * n)),
                            FlushCause::Unmap,
                            false,
                            LeafHint::UNKNOWN,
                        );
                        assert_eq!(r.failures, 0);
                        n = (n + 1) % 1000;
                        if n.is_multiple_of(64) {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for _ in 0..50 {
            let c = Arc::new(Counting {
                calls: AtomicUsize::new(0),
                gone: AtomicBool::new(false),
            });
            let h = list.register(c.clone());
            while c.calls.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            list.unregister(h).unwrap();
            c.gone.store(true, Ordering::SeqCst);
            total += c.calls.load(Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        for f in flushers {
            f.join().unwrap();
        }
        assert!(total >= 50);
        assert!(list.is_empty());
    }
}
