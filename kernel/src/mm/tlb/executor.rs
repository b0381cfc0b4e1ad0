//! The flush executor: the one path that completes a [`TlbFlush`] — barrier, CPU TLBIs, every
//! secondary TLB, completion — and only then frees the table frames the change unlinked; with
//! its statistics and errors.

use alloc::{string::String, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::mm::{
    addr::PhysAddr,
    asid::{AsidAllocator, AsidContext, KERNEL_ASID},
    frame::FrameSource,
    tlb::{
        cpu_plan::{TlbFeatures, TlbScope, TlbiOp, plan},
        secondary::{NotifyReport, SecondaryTlbError, SecondaryTlbMode, SecondaryTlbs},
        token::{Deferred, FlushDone, Parts, TlbFlush},
    },
};

/// The CPU side of TLB maintenance. The target implementation
/// (`arch::CpuTlb` on `target_os = "none"`) issues the instructions; host tests record
/// the calls.
pub trait TlbMaintenance: Send + Sync {
    /// The CPU's TLB features.
    fn features(&self) -> TlbFeatures;
    /// `DSB ISHST`: prior page-table stores complete for every walker.
    fn dsb_ishst(&self);
    /// One TLBI instruction.
    fn tlbi(&self, op: TlbiOp);
    /// `DSB ISH`: prior TLBIs complete on every CPU of the Inner Shareable domain.
    fn dsb_ish(&self);
    /// `ISB`: this CPU's later instructions see the result.
    fn isb(&self);
    /// `DSB ISHST; TLBI VMALLE1IS; DSB ISH; ISB`: drop every EL1&0 entry on every CPU (ASID
    /// rollover). Secondary TLBs are not affected, which is why shared ASIDs are pinned.
    fn flush_all_cpu_tlbs(&self);
    /// Writes TTBR0_EL1 (table base and ASID together, so they change atomically) then `ISB`.
    ///
    /// # Safety
    ///
    /// `value` must name a live, well-formed stage-1 table whose mappings the running code may
    /// use, with an ASID that no other live table uses in the current generation, and the TLB
    /// must hold no stale entries for that ASID.
    unsafe fn write_ttbr0(&self, value: u64);
}

/// Per-address-space flush statistics.
#[derive(Debug, Default)]
pub struct FlushStats {
    page_flushes: AtomicU64,
    range_flushes: AtomicU64,
    all_flushes: AtomicU64,
    barrier_only: AtomicU64,
    upgrade_flushes: AtomicU64,
    cpu_tlbis: AtomicU64,
    secondary_notifications: AtomicU64,
    secondary_skipped: AtomicU64,
    secondary_failures: AtomicU64,
    frames_freed: AtomicU64,
    deferred_released: AtomicU64,
    batches: AtomicU64,
    nested_batches: AtomicU64,
}

/// A copy of [`FlushStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStatsSnapshot {
    /// Flushes of one page.
    pub page_flushes: u64,
    /// Flushes of a multi-page range.
    pub range_flushes: u64,
    /// Flushes of the whole address space.
    pub all_flushes: u64,
    /// Completions that needed only a barrier.
    pub barrier_only: u64,
    /// Flushes that only upgraded permissions.
    pub upgrade_flushes: u64,
    /// CPU TLBI instructions issued.
    pub cpu_tlbis: u64,
    /// Secondary TLB invalidations performed (one per registered TLB per flush).
    pub secondary_notifications: u64,
    /// Secondary TLB invalidations skipped because of the notifier mode.
    pub secondary_skipped: u64,
    /// Secondary TLB invalidations that failed.
    pub secondary_failures: u64,
    /// Table frames freed after their flush.
    pub frames_freed: u64,
    /// Deferred work items (data-frame releases) run after their flush.
    pub deferred_released: u64,
    /// Batches ended.
    pub batches: u64,
    /// Batches that ended while another batch of the address space was in flight, and so
    /// flushed their whole range ([`FlushCause::NestedBatch`](super::FlushCause)).
    pub nested_batches: u64,
}

impl FlushStatsSnapshot {
    /// What was counted between `before` and this snapshot.
    pub fn since(&self, before: &FlushStatsSnapshot) -> FlushStatsSnapshot {
        FlushStatsSnapshot {
            page_flushes: self.page_flushes - before.page_flushes,
            range_flushes: self.range_flushes - before.range_flushes,
            all_flushes: self.all_flushes - before.all_flushes,
            barrier_only: self.barrier_only - before.barrier_only,
            upgrade_flushes: self.upgrade_flushes - before.upgrade_flushes,
            cpu_tlbis: self.cpu_tlbis - before.cpu_tlbis,
            secondary_notifications: self.secondary_notifications - before.secondary_notifications,
            secondary_skipped: self.secondary_skipped - before.secondary_skipped,
            secondary_failures: self.secondary_failures - before.secondary_failures,
            frames_freed: self.frames_freed - before.frames_freed,
            deferred_released: self.deferred_released - before.deferred_released,
            batches: self.batches - before.batches,
            nested_batches: self.nested_batches - before.nested_batches,
        }
    }
}

impl FlushStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> FlushStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FlushStatsSnapshot {
            page_flushes: r(&self.page_flushes),
            range_flushes: r(&self.range_flushes),
            all_flushes: r(&self.all_flushes),
            barrier_only: r(&self.barrier_only),
            upgrade_flushes: r(&self.upgrade_flushes),
            cpu_tlbis: r(&self.cpu_tlbis),
            secondary_notifications: r(&self.secondary_notifications),
            secondary_skipped: r(&self.secondary_skipped),
            secondary_failures: r(&self.secondary_failures),
            frames_freed: r(&self.frames_freed),
            deferred_released: r(&self.deferred_released),
            batches: r(&self.batches),
            nested_batches: r(&self.nested_batches),
        }
    }

    /// Counts one ended batch, nested or not.
    pub fn count_batch(&self, nested: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        if nested {
            self.nested_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn add_secondary(&self, report: &NotifyReport) {
        self.secondary_notifications
            .fetch_add(report.notified, Ordering::Relaxed);
        self.secondary_skipped
            .fetch_add(report.skipped, Ordering::Relaxed);
        self.secondary_failures
            .fetch_add(report.failures, Ordering::Relaxed);
    }
}

/// Why a flush did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushError {
    /// A secondary TLB failed to invalidate. The CPU side was done; the token's table frames
    /// were leaked (a secondary walker may still cache them) and no [`FlushDone`] was issued.
    Secondary {
        /// Name of the first failing secondary TLB.
        name: String,
        /// Its error.
        error: SecondaryTlbError,
        /// How many failed in total.
        failures: u64,
    },
    /// The token was produced by another page table than the one being flushed.
    WrongAddressSpace,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Secondary {
                name,
                error,
                failures,
            } => {
                write!(
                    f,
                    "secondary TLB {name} failed to invalidate: {error} ({failures} failed)"
                )
            }
            FlushError::WrongAddressSpace => f.write_str("flush token from another page table"),
        }
    }
}

impl core::error::Error for FlushError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            FlushError::Secondary { error, .. } => Some(error),
            FlushError::WrongAddressSpace => None,
        }
    }
}

/// Which entries a flush targets, as given to [`execute`].
#[derive(Clone, Copy)]
pub enum TargetScope<'a> {
    /// One fixed ASID.
    Asid(u16),
    /// The ASID of a live address space, read only *after* the `DSB ISHST` that publishes the
    /// page-table stores. A CPU that concurrently re-tags the context with a new ASID (after a
    /// rollover) then either is seen here with the new value, or walks the tables only after
    /// the stores are complete — so no entry from before the change survives under either ASID.
    /// (Linux orders `dsb(ishst)` before `ASID(mm)` in its flush primitives for the same reason.)
    Context(&'a AsidAllocator, &'a AsidContext),
    /// All ASIDs (kernel TTBR1 tables).
    Global,
}

impl fmt::Debug for TargetScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetScope::Asid(a) => write!(f, "Asid({a})"),
            TargetScope::Context(al, c) => write!(f, "Context({:?})", al.asid_of(c)),
            TargetScope::Global => f.write_str("Global"),
        }
    }
}

impl TargetScope<'_> {
    fn resolve(self) -> TlbScope {
        match self {
            TargetScope::Asid(a) => TlbScope::Asid(a),
            TargetScope::Context(al, c) => TlbScope::Asid(al.asid_of(c).unwrap_or(KERNEL_ASID)),
            TargetScope::Global => TlbScope::Global,
        }
    }
}

/// Where and how to perform a flush.
pub struct FlushTarget<'a> {
    /// The CPU executor.
    pub tlb: &'a dyn TlbMaintenance,
    /// Which entries.
    pub scope: TargetScope<'a>,
    /// Secondary TLBs sharing these tables (only consulted for an ASID scope).
    pub secondaries: Option<&'a SecondaryTlbs>,
    /// Where freed table frames go.
    pub frames: &'a dyn FrameSource,
    /// Counters to update.
    pub stats: Option<&'a FlushStats>,
}

/// Performs `token`: barrier, CPU TLBIs, secondary TLB invalidations (synchronously, between the
/// CPU TLBI and the final `DSB ISH`), completion, and only then frees the token's table frames.
///
/// # Errors
///
/// [`FlushError::Secondary`] if a secondary TLB failed (all are still attempted; the CPU
/// sequence is always completed).
pub fn execute(token: TlbFlush, target: &FlushTarget<'_>) -> Result<FlushDone, FlushError> {
    let Parts {
        done,
        cause,
        inval,
        upgrade_only,
        barrier,
        freed,
        deferred,
        gathered,
        own,
    } = token.take();
    let Some(inval) = inval else {
        if barrier {
            // New entries only: make them visible to every walker and to this CPU.
            target.tlb.dsb_ishst();
            target.tlb.isb();
            if let Some(s) = target.stats {
                s.barrier_only.fetch_add(1, Ordering::Relaxed);
            }
        }
        release(freed, deferred, target);
        return Ok(done);
    };
    // `gather-late` reproduces an ordering bug: the batch's frames go back (and its deferred
    // work runs) before the secondary TLBs hear of the change.
    let mut pending = Some((freed, deferred));
    let free_early = gathered
        && target
            .secondaries
            .is_some_and(|l| l.effective_mode().frees_before_telling());

    if let Some(s) = target.stats {
        let c = match inval.range.page_count() {
            Some(1) => &s.page_flushes,
            Some(_) => &s.range_flushes,
            None => &s.all_flushes,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if upgrade_only {
            s.upgrade_flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    target.tlb.dsb_ishst();
    // Only now: see `TargetScope::Context`.
    let scope = target.scope.resolve();
    let mut n = 0;
    for op in plan(&inval, scope, target.tlb.features()) {
        target.tlb.tlbi(op);
        n += 1;
    }
    if let Some(s) = target.stats {
        s.cpu_tlbis.fetch_add(n, Ordering::Relaxed);
    }
    if free_early {
        target.tlb.dsb_ish();
        if let Some((freed, deferred)) = pending.take() {
            release(freed, deferred, target);
        }
    }
    let secondary = match (scope, target.secondaries) {
        (TlbScope::Asid(asid), Some(list)) => {
            // `nested-unaware` reproduces a nested batch that tells the secondary TLBs what it
            // cleared itself, never the widened range (the mode skips `NestedBatch`).
            let told = match own {
                Some((own_inval, own_cause, own_up))
                    if list.effective_mode() == SecondaryTlbMode::NestedUnaware =>
                {
                    (own_inval, own_cause, own_up)
                }
                _ => (inval, cause, upgrade_only),
            };
            let report = list.notify(asid, told.0.range, told.1, told.2, told.0.hint());
            if let Some(s) = target.stats {
                s.add_secondary(&report);
            }
            match report.first_failure {
                Some((name, error)) => Err(FlushError::Secondary {
                    name,
                    error,
                    failures: report.failures,
                }),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    };
    target.tlb.dsb_ish();
    target.tlb.isb();

    match (secondary, pending) {
        (Ok(()), Some((freed, deferred))) => {
            release(freed, deferred, target);
            Ok(done)
        }
        (Ok(()), None) => Ok(done),
        (Err(e), pending) => {
            if let Some((freed, deferred)) = pending {
                if !freed.is_empty() || !deferred.is_empty() {
                    log::error!(
                        "leaking {} table frame(s) and {} deferred release(s) after a failed \
                         secondary flush",
                        freed.len(),
                        deferred.len()
                    );
                }
                // Never run: the work would free memory a secondary walker may still reach.
                core::mem::forget(deferred);
            }
            Err(e)
        }
    }
}

/// Frees the table frames, then runs the deferred work (data frames go back after the tables
/// that pointed at them).
fn release(freed: Vec<PhysAddr>, deferred: Vec<Deferred>, target: &FlushTarget<'_>) {
    let n = freed.len() as u64;
    for pa in freed {
        target.frames.free_frame(pa);
    }
    if let Some(s) = target.stats {
        s.frames_freed.fetch_add(n, Ordering::Relaxed);
        s.deferred_released
            .fetch_add(deferred.len() as u64, Ordering::Relaxed);
    }
    for work in deferred {
        work();
    }
}

/// Completes a flush of the kernel's TTBR1 tables (global entries): `…VAA…` / `VMALLE1IS`
/// TLBIs, no secondary TLBs (Linux does not notify them for kernel mappings either).
///
/// # Errors
///
/// None in practice (no secondary TLB is involved); the `Result` mirrors [`execute`].
pub fn flush_kernel(
    token: TlbFlush,
    tlb: &dyn TlbMaintenance,
    frames: &dyn FrameSource,
) -> Result<FlushDone, FlushError> {
    execute(
        token,
        &FlushTarget {
            tlb,
            scope: TargetScope::Global,
            secondaries: None,
            frames,
            stats: None,
        },
    )
}

/// Completes a flush without any TLB maintenance or barrier, freeing its frames.
///
/// # Safety
///
/// No TLB or walker — CPU or secondary — may ever have used the changed tables: e.g. tables
/// built with the MMU off and not yet installed in any TTBR or SMMU context descriptor. The
/// caller must still issue the barriers that precede enabling the MMU.
pub unsafe fn complete_without_tlb(token: TlbFlush, frames: &dyn FrameSource) -> FlushDone {
    let Parts {
        done,
        freed,
        deferred,
        ..
    } = token.take();
    for pa in freed {
        frames.free_frame(pa);
    }
    for work in deferred {
        work();
    }
    done
}
