//! Address spaces: a TTBR0 page table, its ASID, the secondary TLBs that share it, a fault
//! policy, and the flush path that ties them together.
//!
//! An [`AddressSpace`] is what a CPU switches to ([`AddressSpace::switch_to`]) and what the SMMU's
//! context descriptor points at ([`AddressSpace::smmu_context`], after
//! [`AddressSpace::register_secondary`] pinned the ASID). Both walk the same tables, so every
//! change goes through [`AddressSpace::flush`]: CPU TLBIs, then each registered secondary TLB,
//! then completion, then freeing the tables the change unlinked (see [`crate::mm::tlb`]).
//!
//! Table changes are serialised by a per-address-space lock; flushes of ordinary changes run
//! after it is released (several CPUs may flush at once). Break-before-make operations
//! ([`AddressSpace::remap`], [`AddressSpace::split_block`], [`AddressSpace::merge_to_block`]) run
//! their whole break → flush → make sequence under the lock, so nobody can observe or fill the
//! hole in between — secondary TLB callbacks must therefore never call back into the address
//! space.

use alloc::{sync::Arc, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use spin::{Mutex, MutexGuard, RwLock};

use crate::mm::{
    addr::{PhysAddr, VirtAddr},
    asid::{Activation, AsidAllocator, AsidContext, AsidError},
    batch::FlushBatch,
    frame::FrameSource,
    pgtable::{
        self, MAIR_EL1_VALUE, MAIR_IDX_DEVICE, MAIR_IDX_NORMAL, MapAttrs, PageTable, Perms,
        PhysMem, TG0_4K, TXSZ_48BIT, Translation, VaHalf,
    },
    tlb::{
        self, FlushDone, FlushError, FlushRange, FlushStats, FlushStatsSnapshot, FlushTarget,
        SecondaryTlb, SecondaryTlbHandle, SecondaryTlbMode, SecondaryTlbs, TargetScope, TlbFlush,
        TlbMaintenance, VaRange,
    },
};

/// The services an address space needs, shared by all of them.
#[derive(Clone)]
pub struct MmEnv {
    /// Access to table frames.
    pub mem: Arc<dyn PhysMem>,
    /// Table frame allocator.
    pub frames: Arc<dyn FrameSource>,
    /// The CPU TLB executor.
    pub tlb: Arc<dyn TlbMaintenance>,
    /// The system's ASID allocator.
    pub asids: Arc<AsidAllocator>,
}

#[cfg(target_os = "none")]
impl MmEnv {
    /// The environment of this machine: tables through the linear window, frames from the global
    /// frame allocator, the CPU's TLBI executor, and an ASID allocator as wide as the CPU allows
    /// (ID_AA64MMFR0_EL1.ASIDBits; TCR_EL1.AS must be set when that is 16) for `cpus` CPUs.
    ///
    /// # Safety
    ///
    /// The kernel's TTBR1 tables must map all RAM in the linear window (see
    /// [`LinearWindow::new`](crate::mm::pgtable::LinearWindow::new)) for as long as the
    /// environment is used.
    ///
    /// # Errors
    ///
    /// [`AsidError::TooManyCpus`] if `cpus` is 0 or too large for the ASID width.
    pub unsafe fn for_this_machine(cpus: usize) -> Result<Self, AsidError> {
        use crate::mm::{
            frame::KernelFrames,
            pgtable::LinearWindow,
            tlb::arch::{CpuTlb, cpu_asid_bits},
        };
        // SAFETY: guaranteed by the caller.
        let window = unsafe { LinearWindow::new() };
        Ok(Self {
            mem: Arc::new(window),
            frames: Arc::new(KernelFrames),
            tlb: Arc::new(CpuTlb::new()),
            asids: Arc::new(AsidAllocator::new(cpu_asid_bits(), cpus)?),
        })
    }
}

/// Why an address-space operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsError {
    /// The page-table operation was refused (nothing changed).
    Table(pgtable::Error),
    /// A flush did not complete.
    Flush(FlushError),
    /// ASID allocation or pinning failed.
    Asid(AsidError),
    /// The operation needs a pinned ASID (a registered secondary TLB).
    NotShared,
    /// Unknown secondary TLB handle.
    UnknownSecondary,
    /// The range overlaps one an open batch is changing (its flush is still pending); this is
    /// the first page of the overlap's claim.
    BatchInFlight(VirtAddr),
}

impl fmt::Display for AsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsError::Table(e) => write!(f, "page table: {e}"),
            AsError::Flush(e) => write!(f, "flush: {e}"),
            AsError::Asid(e) => write!(f, "ASID: {e}"),
            AsError::NotShared => {
                f.write_str("address space has no secondary TLB (ASID not pinned)")
            }
            AsError::UnknownSecondary => f.write_str("unknown secondary TLB handle"),
            AsError::BatchInFlight(va) => write!(
                f,
                "range overlaps the range at {va} of a batch whose flush is still pending"
            ),
        }
    }
}

impl From<pgtable::Error> for AsError {
    fn from(e: pgtable::Error) -> Self {
        AsError::Table(e)
    }
}
impl From<FlushError> for AsError {
    fn from(e: FlushError) -> Self {
        AsError::Flush(e)
    }
}
impl From<AsidError> for AsError {
    fn from(e: AsidError) -> Self {
        AsError::Asid(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// The fault status class of a stage-1 abort (ESR_ELx.{I,D}FSC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Translation fault (no valid entry).
    Translation,
    /// Access-flag fault (AF = 0).
    AccessFlag,
    /// Permission fault.
    Permission,
}

/// A decoded abort, as the exception code (or the SMMU event handler) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultKind {
    /// Fault class.
    pub class: FaultClass,
    /// Lookup level reported by the fault status code.
    pub level: u8,
    /// The access was a write (ESR WnR).
    pub write: bool,
}

impl FaultKind {
    /// The kind of a decoded CPU abort, or `None` for aborts no page-table change can resolve
    /// (address size, external aborts, alignment, TLB conflict, unknown codes).
    pub fn from_abort(abort: &crate::exception::esr::Abort) -> Option<Self> {
        use crate::exception::esr::FaultStatus;
        let (class, level) = match abort.status {
            FaultStatus::Translation(l) => (FaultClass::Translation, l),
            FaultStatus::AccessFlag(l) => (FaultClass::AccessFlag, l),
            FaultStatus::Permission(l) => (FaultClass::Permission, l),
            _ => return None,
        };
        Some(Self {
            class,
            level,
            write: abort.write,
        })
    }
}

/// What [`AddressSpace::handle_fault`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A read-only entry was made writable in place and flushed (CPU and secondary TLBs).
    Upgraded,
    /// The access flag was set.
    AccessFlagSet,
    /// The entry already allowed the access: a stale TLB entry was flushed (or, for a
    /// translation fault, the page had been mapped meanwhile). Retry.
    Spurious,
    /// Not resolved: report it.
    Unhandled,
}

impl FaultOutcome {
    /// Whether the faulting access should simply be retried.
    pub const fn is_resolved(self) -> bool {
        !matches!(self, FaultOutcome::Unhandled)
    }
}

/// A custom fault resolver.
pub trait FaultHandler: Send + Sync {
    /// Resolves (or not) a fault at `far` in `space`.
    ///
    /// # Errors
    ///
    /// Any [`AsError`] from the operations it performs.
    fn handle(
        &self,
        space: &AddressSpace,
        far: VirtAddr,
        kind: FaultKind,
    ) -> Result<FaultOutcome, AsError>;
}

/// How CPU (or device) faults in an address space are resolved.
#[derive(Clone, Default)]
pub enum FaultPolicy {
    /// Never: every fault is [`FaultOutcome::Unhandled`].
    #[default]
    Report,
    /// Write permission faults on read-only entries make the entry writable in place (a
    /// permission *upgrade*, flushed with [`FlushCause::FaultUpgrade`](tlb::FlushCause)); faults
    /// on entries that already allow the write flush the stale entry; access-flag faults set
    /// AF. This is the write-tracking pattern that exposes the secondary-TLB upgrade bug in
    /// `legacy` mode.
    UpgradeOnWrite,
    /// A custom handler.
    Handler(Arc<dyn FaultHandler>),
}

impl fmt::Debug for FaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultPolicy::Report => "Report",
            FaultPolicy::UpgradeOnWrite => "UpgradeOnWrite",
            FaultPolicy::Handler(_) => "Handler(..)",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// SMMU context parameters
// ---------------------------------------------------------------------------------------------

/// What an SMMU stage-1 context descriptor needs to share this address space (SVA, `CD.ASET = 0`
/// style: same tables, same ASID as the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuContext {
    /// CD.TTB0: the root table.
    pub ttb0: PhysAddr,
    /// CD.ASID: the pinned ASID, stable while any secondary TLB is registered.
    pub asid: u16,
    /// CD.T0SZ (16: 48-bit VA, four levels from L0).
    pub t0sz: u8,
    /// CD.TG0 encoding (`0b00` = 4 KiB).
    pub tg0: u8,
    /// CD.SH0 (`0b11` = Inner Shareable), matching the descriptors' SH.
    pub sh0: u8,
    /// CD.IR0 / CD.OR0 (`0b01` = Write-Back, Read-Allocate, Write-Allocate).
    pub irgn0: u8,
    /// See [`SmmuContext::irgn0`].
    pub orgn0: u8,
    /// CD.MAIR: the same value as MAIR_EL1.
    pub mair: u64,
    /// MAIR slot of Normal memory in the descriptors.
    pub normal_attr_index: u8,
    /// MAIR slot of Device memory in the descriptors.
    pub device_attr_index: u8,
    /// CD.EPD1: TTB1 is never used by the device.
    pub epd1: bool,
}

// ---------------------------------------------------------------------------------------------
// The address space
// ---------------------------------------------------------------------------------------------

/// What one open batch claims: the hull of the ranges it was asked to change (its flush may
/// still be pending there), and the ranges its break-before-make steps will write after it.
struct BatchClaim {
    id: u64,
    range: Option<FlushRange>,
    makes: Vec<FlushRange>,
}

/// A TTBR0 address space that CPUs run in and secondary TLBs may share.
pub struct AddressSpace {
    env: MmEnv,
    root: PhysAddr,
    table_lock: Mutex<()>,
    asid: AsidContext,
    secondaries: SecondaryTlbs,
    registrations: Mutex<Vec<SecondaryTlbHandle>>,
    policy: RwLock<FaultPolicy>,
    stats: FlushStats,
    /// Open batches and what each claims.
    batches: Mutex<Vec<BatchClaim>>,
    next_batch: AtomicU64,
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("root", &self.root)
            .field("asid", &self.asid())
            .field("secondaries", &self.secondaries.len())
            .finish()
    }
}

impl AddressSpace {
    /// A new, empty address space with an ASID of the current generation.
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (`OutOfFrames`) if no root table can be allocated.
    pub fn new(env: MmEnv) -> Result<Self, AsError> {
        let root = PageTable::new(&*env.mem, &*env.frames, VaHalf::Lower)?.root();
        let asid = AsidContext::new();
        let _ = env.asids.assign(&asid);
        Ok(Self {
            env,
            root,
            table_lock: Mutex::new(()),
            asid,
            secondaries: SecondaryTlbs::new(),
            registrations: Mutex::new(Vec::new()),
            policy: RwLock::new(FaultPolicy::Report),
            stats: FlushStats::default(),
            batches: Mutex::new(Vec::new()),
            next_batch: AtomicU64::new(1),
        })
    }

    /// The root (L0) table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The ASID currently recorded (the one in TTBR0 / the SMMU CD; re-validated on each
    /// switch, fixed while pinned).
    pub fn asid(&self) -> u16 {
        self.env.asids.asid_of(&self.asid).unwrap_or(0)
    }

    /// TTBR0_EL1 value for this address space: root PA | ASID << 48 (CnP = 0).
    pub fn ttbr0_value(&self) -> u64 {
        self.root.0 | (u64::from(self.asid()) << 48)
    }

    #[cfg(test)]
    fn root_ctx(&self) -> &AsidContext {
        &self.asid
    }

    /// The shared environment.
    pub fn env(&self) -> &MmEnv {
        &self.env
    }

    fn locked(&self) -> (MutexGuard<'_, ()>, PageTable<'_>) {
        let guard = self.table_lock.lock();
        // SAFETY: `root` was created by `PageTable::new` for the lower half with these `mem` and
        // `frames` and is only ever mutated through a view made here, under `table_lock`, which
        // the returned guard holds for as long as the view is used.
        let pt = unsafe {
            PageTable::from_root(self.root, VaHalf::Lower, &*self.env.mem, &*self.env.frames)
        };
        (guard, pt)
    }

    /// Runs one table operation under the table lock.
    pub(super) fn with_table<R>(
        &self,
        op: impl FnOnce(&mut PageTable<'_>) -> Result<R, pgtable::Error>,
    ) -> Result<R, AsError> {
        let (_g, mut pt) = self.locked();
        Ok(op(&mut pt)?)
    }

    // -- batches -------------------------------------------------------------------------------

    /// Opens a batch: changes applied now, one flush at [`FlushBatch::finish`] (see
    /// [`crate::mm::batch`]).
    pub fn batch(&self) -> FlushBatch<'_> {
        let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
        self.batches.lock().push(BatchClaim {
            id,
            range: None,
            makes: Vec::new(),
        });
        FlushBatch::new(self, id)
    }

    /// Widens batch `id`'s claim by `range` (before the change is made). With `make`, the range
    /// is also reserved for the batch's make step.
    pub(super) fn claim_batch_range(&self, id: u64, range: FlushRange, make: bool) {
        let mut open = self.batches.lock();
        if let Some(c) = open.iter_mut().find(|c| c.id == id) {
            c.range = Some(c.range.map_or(range, |r| r.hull(range)));
            if make {
                c.makes.push(range);
            }
        }
    }

    /// Whether another open batch claims part of `range`.
    pub(super) fn batch_overlaps_other(&self, id: u64, range: FlushRange) -> bool {
        self.batches
            .lock()
            .iter()
            .any(|c| c.id != id && c.range.is_some_and(|r| r.overlaps(range)))
    }

    /// The first page of a claim overlapping `range`: of any open batch (`except: None`), or of
    /// batches other than `except`; with `makes_only`, only ranges reserved for make steps.
    pub(super) fn claimed(
        &self,
        range: FlushRange,
        except: Option<u64>,
        makes_only: bool,
    ) -> Option<VirtAddr> {
        self.batches
            .lock()
            .iter()
            .filter(|c| Some(c.id) != except)
            .find_map(|c| {
                let hit = |r: &FlushRange| r.overlaps(range);
                if makes_only {
                    c.makes.iter().find(|r| hit(r)).copied()
                } else {
                    c.range.filter(|r| hit(r))
                }
            })
            .map(|r| r.start().unwrap_or(VirtAddr(0)))
    }

    /// Closes batch `id` (after its flush and its make steps).
    pub(super) fn release_batch(&self, id: u64, nested: bool) {
        self.batches.lock().retain(|c| c.id != id);
        self.stats.count_batch(nested);
    }

    /// Number of open batches.
    pub fn open_batches(&self) -> usize {
        self.batches.lock().len()
    }

    // -- table operations ----------------------------------------------------------------------

    /// See [`PageTable::map`]. The token needs only a barrier.
    ///
    /// # Errors
    ///
    /// [`AsError::Table`]; [`AsError::BatchInFlight`] if an open batch claims part of `range`
    /// (an entry of what it changed may still be cached until its flush).
    pub fn map(
        &self,
        range: VaRange,
        pa: PhysAddr,
        attrs: MapAttrs,
        prefer_blocks: bool,
    ) -> Result<TlbFlush, AsError> {
        let (_g, mut pt) = self.locked();
        if let Some(va) = self.claimed(range.into(), None, false) {
            return Err(AsError::BatchInFlight(va));
        }
        Ok(pt.map(range, pa, attrs, prefer_blocks)?)
    }

    /// Removes write permission from every writable page of `range` (holes allowed); see
    /// [`PageTable::write_protect`].
    ///
    /// # Errors
    ///
    /// [`AsError::Table`].
    pub fn write_protect(&self, range: VaRange) -> Result<TlbFlush, AsError> {
        self.with_table(|pt| pt.write_protect(range))
    }

    /// Moves the mappings of `src` to `dst` (mremap; see [`PageTable::move_range`]) and flushes
    /// the old range — CPU TLBs and every secondary TLB — before returning, with the table lock
    /// still held: once it returns, a new mapping at the old address is the only thing any TLB
    /// can reach there.
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed); [`AsError::BatchInFlight`] if an open batch claims
    /// part of the destination or reserved the source for a make step; [`AsError::Flush`]
    /// (moved, but a secondary TLB may still translate the old range: map nothing there).
    pub fn move_range(&self, src: VaRange, dst: VirtAddr) -> Result<FlushDone, AsError> {
        let (_g, mut pt) = self.locked();
        // The destination gets new entries: nothing there may still be cached (as for `map`),
        // and the source must not be waiting for another batch's make step.
        let dst_range =
            FlushRange::from(VaRange::from_pages(dst, src.pages()).map_err(pgtable::Error::from)?);
        if let Some(va) = self
            .claimed(dst_range, None, false)
            .or_else(|| self.claimed(src.into(), None, true))
        {
            return Err(AsError::BatchInFlight(va));
        }
        let token = pt.move_range(src, dst)?;
        self.flush(token)
    }

    /// Migrates the pages of `range` to the frames at `new_pa`: break (the entries become
    /// invalid), flush everywhere, `copy` (nothing can write the old frames any more), make (the
    /// entries point at the new frames), all under the table lock. A device access meanwhile
    /// takes a translation fault and is retried by its driver.
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::remap`]; `copy` does not run if the break's flush failed.
    pub fn migrate(
        &self,
        range: VaRange,
        new_pa: PhysAddr,
        copy: impl FnOnce(),
    ) -> Result<(), AsError> {
        self.bbm_with(|pt| pt.remap(range, new_pa), copy)
    }

    /// See [`PageTable::unmap`].
    ///
    /// # Errors
    ///
    /// [`AsError::Table`].
    pub fn unmap(&self, range: VaRange) -> Result<TlbFlush, AsError> {
        let (_g, mut pt) = self.locked();
        Ok(pt.unmap(range)?)
    }

    /// See [`PageTable::protect`].
    ///
    /// # Errors
    ///
    /// [`AsError::Table`].
    pub fn protect(&self, range: VaRange, perms: Perms) -> Result<TlbFlush, AsError> {
        let (_g, mut pt) = self.locked();
        Ok(pt.protect(range, perms)?)
    }

    /// See [`PageTable::grant`].
    ///
    /// # Errors
    ///
    /// [`AsError::Table`].
    pub fn grant(&self, va: VirtAddr, add: Perms) -> Result<(TlbFlush, bool), AsError> {
        let (_g, mut pt) = self.locked();
        Ok(pt.grant(va, add)?)
    }

    /// See [`PageTable::translate`].
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let (_g, pt) = self.locked();
        pt.translate(va)
    }

    /// Number of table frames in use, root included.
    pub fn table_frames(&self) -> usize {
        let (_g, pt) = self.locked();
        pt.table_frames()
    }

    /// Runs a whole break-before-make under the table lock.
    fn bbm(
        &self,
        op: impl FnOnce(&mut PageTable<'_>) -> Result<pgtable::Bbm, pgtable::Error>,
    ) -> Result<(), AsError> {
        self.bbm_with(op, || {})
    }

    /// [`Self::bbm`], running `between` after the break's flush and before the make.
    fn bbm_with(
        &self,
        op: impl FnOnce(&mut PageTable<'_>) -> Result<pgtable::Bbm, pgtable::Error>,
        between: impl FnOnce(),
    ) -> Result<(), AsError> {
        let (_g, mut pt) = self.locked();
        let (flush, make) = op(&mut pt)?.into_parts();
        let done = match self.flush(flush) {
            Ok(d) => d,
            Err(e) => {
                // The break stays: the range is left unmapped rather than made while a secondary
                // TLB may still hold the old translation.
                make.abandon(&*self.env.frames);
                return Err(e);
            }
        };
        between();
        let publish = make.make(&mut pt, &done)?;
        self.flush(publish)?;
        Ok(())
    }

    /// Moves `range` to `new_pa` with break-before-make (break, full flush, make, barrier).
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed) or [`AsError::Flush`] (the range is left unmapped).
    pub fn remap(&self, range: VaRange, new_pa: PhysAddr) -> Result<(), AsError> {
        self.bbm(|pt| pt.remap(range, new_pa))
    }

    /// Splits the block mapping `va` into pages with break-before-make.
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::remap`].
    pub fn split_block(&self, va: VirtAddr) -> Result<(), AsError> {
        self.bbm(|pt| pt.split_block(va))
    }

    /// Merges the 2 MiB region at `va` into one block with break-before-make; the level-3 table is
    /// freed after the flush.
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::remap`].
    pub fn merge_to_block(&self, va: VirtAddr, new_pa: Option<PhysAddr>) -> Result<(), AsError> {
        self.bbm(|pt| pt.merge_to_block(va, new_pa))
    }

    // -- flushing ------------------------------------------------------------------------------

    /// Completes a change of this address space: `DSB ISHST` → CPU TLBIs for this ASID → every
    /// registered secondary TLB (as the notifier mode allows; synchronous) → `DSB ISH; ISB` → the
    /// token's table frames are freed.
    ///
    /// # Errors
    ///
    /// [`AsError::Flush`]: a secondary TLB failed, or the token belongs to another table.
    pub fn flush(&self, token: TlbFlush) -> Result<FlushDone, AsError> {
        if token.origin() != self.root {
            // Dropping the token logs the mistake; its frames are leaked, never freed early.
            return Err(FlushError::WrongAddressSpace.into());
        }
        let target = FlushTarget {
            tlb: &*self.env.tlb,
            scope: TargetScope::Context(&self.env.asids, &self.asid),
            secondaries: Some(&self.secondaries),
            frames: &*self.env.frames,
            stats: Some(&self.stats),
        };
        Ok(tlb::execute(token, &target)?)
    }

    /// Flushes the whole address space (`ASIDE1IS` + every secondary TLB, [`FlushRange::All`]).
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::flush`].
    pub fn flush_all(&self) -> Result<(), AsError> {
        self.flush(TlbFlush::invalidate(
            self.root,
            tlb::FlushCause::Batch,
            tlb::Invalidation {
                range: FlushRange::All,
                leaf_only: false,
                stride: tlb::Stride::Page,
                level: None,
            },
            false,
            Vec::new(),
        ))?;
        Ok(())
    }

    /// Flush counters of this address space.
    pub fn stats(&self) -> FlushStatsSnapshot {
        self.stats.snapshot()
    }

    // -- CPUs ----------------------------------------------------------------------------------

    /// Switches the calling CPU (index `cpu`) to this address space: re-validates the ASID, flushes
    /// the CPU TLBs if an ASID rollover requires it, and writes TTBR0_EL1.
    ///
    /// # Safety
    ///
    /// Must run on CPU `cpu` without being preempted by another switch on it. The address space
    /// must stay alive (not dropped) until this CPU switches away (another `switch_to`, or
    /// [`AsidAllocator::deactivate`] after pointing TTBR0 elsewhere), and the code running must
    /// not depend on lower-half mappings of the previous TTBR0.
    pub unsafe fn switch_to(&self, cpu: usize) -> Result<Activation, AsError> {
        let act = self.env.asids.activate(cpu, &self.asid)?;
        if act.flush_cpu_tlbs {
            self.env.tlb.flush_all_cpu_tlbs();
        }
        let value = self.root.0 | (u64::from(act.asid) << 48);
        // SAFETY: the root is a live lower-half table; the ASID was just validated for this CPU
        // (unique in the current generation, TLB flushed after a rollover); the caller upholds the
        // rest of the contract.
        unsafe { self.env.tlb.write_ttbr0(value) };
        Ok(act)
    }

    /// Switches the calling CPU (index `cpu`) away from any address space: writes `empty_ttbr0`
    /// (an all-invalid table tagged with [`KERNEL_ASID`](crate::mm::asid::KERNEL_ASID)) and tells
    /// the allocator the CPU runs no context, so its ASID stops being reserved across rollovers.
    ///
    /// # Safety
    ///
    /// As for [`AddressSpace::switch_to`]; `empty_ttbr0` must name a live table that maps nothing.
    pub unsafe fn switch_to_empty(
        env: &MmEnv,
        cpu: usize,
        empty_ttbr0: u64,
    ) -> Result<(), AsError> {
        // SAFETY: the caller guarantees `empty_ttbr0` is a live, empty table; ASID 0 is never
        // handed to an address space, so no stale entry can match it.
        unsafe { env.tlb.write_ttbr0(empty_ttbr0) };
        env.asids.deactivate(cpu)?;
        Ok(())
    }

    // -- secondary TLBs ------------------------------------------------------------------------

    /// Attaches a secondary TLB: pins the ASID (so rollover never changes it), then adds it to
    /// the flush list. Register *before* installing the SMMU context descriptor.
    ///
    /// # Errors
    ///
    /// [`AsError::Asid`] (`PinLimit`).
    pub fn register_secondary(
        &self,
        tlb: Arc<dyn SecondaryTlb>,
    ) -> Result<SecondaryTlbHandle, AsError> {
        self.env.asids.pin(&self.asid)?;
        let h = self.secondaries.register(tlb);
        self.registrations.lock().push(h);
        Ok(h)
    }

    /// Detaches a secondary TLB: removes it from the flush list (waiting for in-flight flushes),
    /// invalidates its whole ASID ([`FlushCause::Release`](tlb::FlushCause)), then unpins. The
    /// caller must already have stopped the device using this address space (quiesced the CD).
    ///
    /// # Errors
    ///
    /// [`AsError::UnknownSecondary`]; [`AsError::Flush`] if the final invalidation failed (the
    /// ASID then stays pinned so it can never be recycled under a stale secondary entry).
    pub fn unregister_secondary(&self, handle: SecondaryTlbHandle) -> Result<(), AsError> {
        let tlb = self
            .secondaries
            .unregister(handle)
            .ok_or(AsError::UnknownSecondary)?;
        self.registrations.lock().retain(|h| *h != handle);
        if let Err(error) = self.secondaries.notify_one(
            &*tlb,
            self.asid(),
            FlushRange::All,
            tlb::FlushCause::Release,
        ) {
            return Err(FlushError::Secondary {
                name: tlb.name().into(),
                error,
                failures: 1,
            }
            .into());
        }
        self.env.asids.unpin(&self.asid)?;
        Ok(())
    }

    /// Whether an invalidation put off by the `move-late` mode is still owed to the secondary
    /// TLBs.
    pub fn secondary_owes(&self) -> bool {
        self.secondaries.owes_invalidation()
    }

    /// Number of registered secondary TLBs.
    pub fn secondary_count(&self) -> usize {
        self.secondaries.len()
    }

    /// Overrides the global secondary-TLB mode for this address space (`None`: follow it).
    pub fn set_secondary_mode_override(&self, mode: Option<SecondaryTlbMode>) {
        self.secondaries.set_mode_override(mode);
    }

    /// The secondary-TLB mode in effect for this address space.
    pub fn secondary_mode(&self) -> SecondaryTlbMode {
        self.secondaries.effective_mode()
    }

    /// The values an SMMU context descriptor needs to share this address space.
    ///
    /// # Errors
    ///
    /// [`AsError::NotShared`] unless a secondary TLB is registered (the ASID must be pinned).
    pub fn smmu_context(&self) -> Result<SmmuContext, AsError> {
        if !self.env.asids.is_pinned(&self.asid) {
            return Err(AsError::NotShared);
        }
        Ok(SmmuContext {
            ttb0: self.root,
            asid: self.asid(),
            t0sz: TXSZ_48BIT,
            tg0: TG0_4K,
            sh0: 0b11,
            irgn0: 0b01,
            orgn0: 0b01,
            mair: MAIR_EL1_VALUE,
            normal_attr_index: MAIR_IDX_NORMAL,
            device_attr_index: MAIR_IDX_DEVICE,
            epd1: true,
        })
    }

    // -- faults --------------------------------------------------------------------------------

    /// Sets the fault policy.
    pub fn set_fault_policy(&self, policy: FaultPolicy) {
        *self.policy.write() = policy;
    }

    /// The fault policy.
    pub fn fault_policy(&self) -> FaultPolicy {
        self.policy.read().clone()
    }

    /// Resolves a fault at `far` according to the policy.
    ///
    /// # Errors
    ///
    /// [`AsError::Flush`] if the resolving flush failed; errors of a custom handler.
    pub fn handle_fault(&self, far: VirtAddr, kind: FaultKind) -> Result<FaultOutcome, AsError> {
        let policy = self.fault_policy();
        match policy {
            FaultPolicy::Report => Ok(FaultOutcome::Unhandled),
            FaultPolicy::Handler(h) => h.handle(self, far, kind),
            FaultPolicy::UpgradeOnWrite => self.upgrade_on_write(far, kind),
        }
    }

    fn upgrade_on_write(&self, far: VirtAddr, kind: FaultKind) -> Result<FaultOutcome, AsError> {
        match kind.class {
            FaultClass::Permission if kind.write => {
                let (token, changed) = match self.grant(far, Perms::WRITE) {
                    Ok(r) => r,
                    Err(AsError::Table(
                        pgtable::Error::NotMapped(_) | pgtable::Error::InvalidAttrs(_),
                    )) => {
                        return Ok(FaultOutcome::Unhandled);
                    }
                    Err(e) => return Err(e),
                };
                self.flush(token)?;
                Ok(if changed {
                    FaultOutcome::Upgraded
                } else {
                    FaultOutcome::Spurious
                })
            }
            FaultClass::AccessFlag => {
                let (token, changed) = {
                    let (_g, mut pt) = self.locked();
                    match pt.set_access_flag(far) {
                        Ok(r) => r,
                        Err(_) => return Ok(FaultOutcome::Unhandled),
                    }
                };
                self.flush(token)?;
                Ok(if changed {
                    FaultOutcome::AccessFlagSet
                } else {
                    FaultOutcome::Spurious
                })
            }
            FaultClass::Translation if self.translate(far).is_some() => Ok(FaultOutcome::Spurious),
            _ => Ok(FaultOutcome::Unhandled),
        }
    }
}

impl Drop for AddressSpace {
    /// Tears the tables down: `ASIDE1IS` (+ secondary TLBs, normally none by now), then frees
    /// every table frame. Refuses — leaking the tables — if a secondary TLB is still registered or
    /// a CPU still runs the address space, since a walker could then read freed frames.
    fn drop(&mut self) {
        if !self.secondaries.is_empty() {
            log::error!(
                "address space {:?} dropped with secondary TLBs attached; leaking its tables",
                self.root
            );
            return;
        }
        if let Err(e) = self.env.asids.release(&self.asid) {
            log::error!(
                "address space {:?} dropped while in use ({e}); leaking its tables",
                self.root
            );
            return;
        }
        let token = {
            let (_g, pt) = self.locked();
            pt.teardown()
        };
        if let Err(e) = self.flush(token) {
            log::error!("teardown flush of {:?} failed: {e}", self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{string::String, sync::Mutex as StdMutex, thread, vec, vec::Vec};

    use super::*;
    use crate::mm::{
        pgtable::{
            MemType,
            fake::{Dma, Ev, FakeMem, Log, ModelIotlb, RecordingSecondary, fake_env},
        },
        tlb::{FlushCause, TlbiKind},
    };

    const MIB2: u64 = 2 * 1024 * 1024;

    fn va(x: u64) -> VirtAddr {
        VirtAddr(x)
    }
    fn pa(x: u64) -> PhysAddr {
        PhysAddr(x)
    }
    fn range(s: u64, len: u64) -> VaRange {
        VaRange::new(va(s), len).unwrap()
    }
    fn page(s: u64) -> FlushRange {
        FlushRange::page(va(s))
    }
    fn pages(s: u64, n: u64) -> FlushRange {
        FlushRange::pages(va(s), n).unwrap()
    }

    struct Fx {
        mem: Arc<FakeMem>,
        log: Log,
        env: MmEnv,
    }

    fn fx(asid_bits: u32, cpus: usize, range_ops: bool) -> Fx {
        let log = Log::default();
        let (mem, env) = fake_env(2048, asid_bits, cpus, range_ops, &log);
        Fx { mem, log, env }
    }

    fn space(f: &Fx, mode: SecondaryTlbMode) -> AddressSpace {
        let s = AddressSpace::new(f.env.clone()).unwrap();
        s.set_secondary_mode_override(Some(mode));
        s
    }

    const W: FaultKind = FaultKind {
        class: FaultClass::Permission,
        level: 3,
        write: true,
    };

    /// What a recording secondary TLB was told: (name, ASID, range, cause).
    type Told = Vec<(String, u16, FlushRange, FlushCause)>;

    /// One of every operation; returns the ASID, what the secondary TLB was told, and the stats.
    fn scenario(mode: SecondaryTlbMode) -> (u16, Told, FlushStatsSnapshot) {
        let f = fx(16, 2, false);
        let s = space(&f, mode);
        s.set_fault_policy(FaultPolicy::UpgradeOnWrite);
        let h = s
            .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
            .unwrap();
        let asid = s.asid();
        s.flush(
            s.map(
                range(0x40_0000, 4 * 4096),
                pa(0x8000_0000),
                MapAttrs::SHARED_RW,
                false,
            )
            .unwrap(),
        )
        .unwrap();
        s.flush(
            s.map(
                range(0x60_0000, MIB2),
                pa(0x8060_0000),
                MapAttrs::SHARED_RW,
                true,
            )
            .unwrap(),
        )
        .unwrap();
        s.flush(s.protect(range(0x40_0000, 4 * 4096), Perms::R).unwrap())
            .unwrap(); // 1 downgrade
        s.flush(s.protect(range(0x40_1000, 4096), Perms::RW).unwrap())
            .unwrap(); // 2 upgrade
        s.flush(s.unmap(range(0x40_3000, 4096)).unwrap()).unwrap(); // 3
        s.remap(range(0x40_0000, 4096), pa(0x8100_0000)).unwrap(); // 4
        s.split_block(va(0x60_0000)).unwrap(); // 5
        s.merge_to_block(va(0x60_0000), None).unwrap(); // 6
        assert_eq!(s.handle_fault(va(0x40_2010), W), Ok(FaultOutcome::Upgraded)); // 7 upgrade
        assert_eq!(s.handle_fault(va(0x40_2010), W), Ok(FaultOutcome::Spurious)); // 8 upgrade
        s.flush_all().unwrap(); // 9
        let stats = s.stats();
        let told = f.log.take_secondary();
        // Translations are right whatever the mode.
        assert_eq!(s.translate(va(0x40_0000)).unwrap().pa, pa(0x8100_0000));
        assert_eq!(s.translate(va(0x40_2000)).unwrap().attrs.perms, Perms::RW);
        assert_eq!(s.translate(va(0x40_3000)), None);
        assert_eq!(s.translate(va(0x61_0000)).unwrap().level, 2);
        s.unregister_secondary(h).unwrap();
        let release = f.log.take_secondary();
        let expect_release = if mode == SecondaryTlbMode::Off { 0 } else { 1 };
        assert_eq!(release.len(), expect_release);
        if let Some(r) = release.first() {
            assert_eq!((r.2, r.3), (FlushRange::All, FlushCause::Release));
        }
        (asid, told, stats)
    }

    #[test]
    fn each_operation_notifies_exactly_per_mode() {
        let all = |asid: u16| {
            vec![
                (pages(0x40_0000, 4), FlushCause::Protect, false),
                (page(0x40_1000), FlushCause::Protect, true),
                (page(0x40_3000), FlushCause::Unmap, false),
                (page(0x40_0000), FlushCause::Remap, false),
                (pages(0x60_0000, 512), FlushCause::SplitBlock, false),
                (pages(0x60_0000, 512), FlushCause::MergeBlock, false),
                (page(0x40_2000), FlushCause::FaultUpgrade, true),
                (page(0x40_2000), FlushCause::SpuriousFault, true),
                (FlushRange::All, FlushCause::Batch, false),
            ]
            .into_iter()
            .map(move |(r, c, up)| (("smmu".to_string(), asid, r, c), up))
        };
        let (asid, told, sync) = scenario(SecondaryTlbMode::Sync);
        assert_eq!(told, all(asid).map(|(e, _)| e).collect::<Vec<_>>());
        let (asid, told, legacy) = scenario(SecondaryTlbMode::Legacy);
        assert_eq!(
            told,
            all(asid)
                .filter(|(_, up)| !up)
                .map(|(e, _)| e)
                .collect::<Vec<_>>(),
            "legacy skips exactly the upgrades"
        );
        let (_, told, off) = scenario(SecondaryTlbMode::Off);
        assert_eq!(told, vec![]);
        // The CPU side is the same in every mode.
        assert_eq!(sync.cpu_tlbis, 12);
        assert_eq!((legacy.cpu_tlbis, off.cpu_tlbis), (12, 12));
        assert_eq!(
            (
                sync.page_flushes,
                sync.range_flushes,
                sync.all_flushes,
                sync.barrier_only,
                sync.upgrade_flushes
            ),
            (5, 3, 1, 5, 3)
        );
        assert_eq!(
            (sync.secondary_notifications, sync.secondary_skipped),
            (9, 0)
        );
        assert_eq!(
            (legacy.secondary_notifications, legacy.secondary_skipped),
            (6, 3)
        );
        assert_eq!((off.secondary_notifications, off.secondary_skipped), (0, 9));
        assert_eq!(sync.frames_freed, 1, "the merged L3 table");
    }

    #[test]
    fn secondary_is_called_between_tlbi_and_final_dsb() {
        let f = fx(16, 1, true);
        let s = space(&f, SecondaryTlbMode::Sync);
        s.register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
            .unwrap();
        s.flush(
            s.map(
                range(0x20_0000, MIB2),
                pa(0x8020_0000),
                MapAttrs::SHARED_RO,
                false,
            )
            .unwrap(),
        )
        .unwrap();
        f.log.take();
        s.flush(s.protect(range(0x20_0000, MIB2), Perms::RW).unwrap())
            .unwrap();
        let asid = s.asid();
        assert_eq!(
            f.log.take(),
            vec![
                Ev::DsbIshst,
                Ev::Tlbi(crate::mm::tlb::TlbiOp {
                    kind: TlbiKind::Rvale1is,
                    operand: crate::mm::tlb::range_operand(asid, va(0x20_0000), 1, 7)
                }),
                Ev::Secondary {
                    name: "smmu".into(),
                    asid,
                    range: pages(0x20_0000, 512),
                    cause: FlushCause::Protect
                },
                Ev::DsbIsh,
                Ev::Isb,
            ]
        );
    }

    /// The bug `legacy` reproduces: after a CPU write fault upgrades a page RO→RW in place, the
    /// device still holds the read-only entry and faults forever — unless it is told.
    #[test]
    fn model_iotlb_shows_the_upgrade_bug_only_when_not_told() {
        for (mode, write_after_upgrade, read_after_remap) in [
            (
                SecondaryTlbMode::Sync,
                Dma::Ok(0x8000_0010),
                Dma::Ok(0x9000_1010),
            ),
            (
                SecondaryTlbMode::Legacy,
                Dma::Permission,
                Dma::Ok(0x9000_1010),
            ),
            (SecondaryTlbMode::Off, Dma::Permission, Dma::Ok(0x8000_1010)),
        ] {
            let f = fx(16, 1, false);
            let s = space(&f, mode);
            s.set_fault_policy(FaultPolicy::UpgradeOnWrite);
            let iotlb = ModelIotlb::new();
            s.register_secondary(iotlb.clone()).unwrap();
            s.flush(
                s.map(
                    range(0x1000_0000, 2 * 4096),
                    pa(0x8000_0000),
                    MapAttrs::SHARED_RO,
                    false,
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(
                iotlb.access_space(&s, 0x1000_0010, false),
                Dma::Ok(0x8000_0010)
            );
            assert_eq!(
                iotlb.access_space(&s, 0x1000_1010, false),
                Dma::Ok(0x8000_1010)
            );
            // The CPU writes: permission fault, resolved by an in-place upgrade.
            assert_eq!(
                s.handle_fault(va(0x1000_0010), W),
                Ok(FaultOutcome::Upgraded)
            );
            assert_eq!(
                iotlb.access_space(&s, 0x1000_0010, true),
                write_after_upgrade,
                "{mode}"
            );
            // Break-before-make remap of the second page.
            s.remap(range(0x1000_1000, 4096), pa(0x9000_1000)).unwrap();
            assert_eq!(
                iotlb.access_space(&s, 0x1000_1010, false),
                read_after_remap,
                "{mode}"
            );
        }
    }

    #[test]
    fn switching_cpus_and_rollover() {
        let f = fx(4, 2, false);
        let shared = space(&f, SecondaryTlbMode::Sync);
        assert_eq!(shared.smmu_context(), Err(AsError::NotShared));
        shared
            .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
            .unwrap();
        let p = shared.asid();
        let spaces: Vec<AddressSpace> =
            (0..20).map(|_| space(&f, SecondaryTlbMode::Sync)).collect();
        f.log.take();
        let mut flushes = 0;
        for round in 0..3 {
            for (i, s) in spaces.iter().enumerate() {
                // SAFETY: test executor (records the TTBR0 write).
                let act = unsafe { s.switch_to(i % 2) }.unwrap();
                assert_ne!(act.asid, p, "round {round}: pinned ASID handed out");
                let ev = f.log.take();
                let ttbr = Ev::Ttbr0(s.root().0 | (u64::from(act.asid) << 48));
                if act.flush_cpu_tlbs {
                    flushes += 1;
                    assert_eq!(
                        ev,
                        vec![Ev::FlushAllCpu, ttbr],
                        "flush before the TTBR0 write"
                    );
                } else {
                    assert_eq!(ev, vec![ttbr]);
                }
                assert_eq!(s.ttbr0_value(), s.root().0 | (u64::from(s.asid()) << 48));
            }
        }
        assert!(f.env.asids.rollovers() >= 3);
        assert!(flushes >= 6, "each CPU flushes after each rollover");
        let ctx = shared.smmu_context().unwrap();
        assert_eq!(
            ctx,
            SmmuContext {
                ttb0: shared.root(),
                asid: p,
                t0sz: 16,
                tg0: 0,
                sh0: 3,
                irgn0: 1,
                orgn0: 1,
                mair: 0x04FF,
                normal_attr_index: 0,
                device_attr_index: 1,
                epd1: true
            }
        );
        for s in &spaces {
            let _ = s;
        }
        f.env.asids.deactivate(0).unwrap();
        f.env.asids.deactivate(1).unwrap();
    }

    #[test]
    fn drop_frees_tables_only_when_safe() {
        let f = fx(16, 2, false);
        let base = f.mem.allocated();
        {
            let s = space(&f, SecondaryTlbMode::Sync);
            s.flush(
                s.map(
                    range(0x20_0000, 3 * MIB2),
                    pa(0x8020_0000),
                    MapAttrs::SHARED_RW,
                    false,
                )
                .unwrap(),
            )
            .unwrap();
            let h = s
                .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                .unwrap();
            s.unregister_secondary(h).unwrap();
            assert_eq!(s.unregister_secondary(h), Err(AsError::UnknownSecondary));
            assert!(f.mem.allocated() > base);
            f.log.take();
        }
        assert_eq!(f.mem.allocated(), base, "every table frame returned");
        let ev = f.log.take();
        assert!(ev.contains(&Ev::Tlbi(crate::mm::tlb::TlbiOp {
            kind: TlbiKind::Aside1is,
            operand: ev_asid(&ev) << 48
        })));
        // Still attached to a secondary TLB: leaked, never freed under the device.
        {
            let s = space(&f, SecondaryTlbMode::Sync);
            s.register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                .unwrap();
        }
        assert_eq!(f.mem.allocated(), base + 1);
        // Still running on a CPU: leaked too.
        {
            let s = space(&f, SecondaryTlbMode::Sync);
            // SAFETY: test executor.
            let _ = unsafe { s.switch_to(1) }.unwrap();
        }
        assert_eq!(f.mem.allocated(), base + 2);
    }

    fn ev_asid(ev: &[Ev]) -> u64 {
        ev.iter()
            .find_map(|e| match e {
                Ev::Tlbi(op) if op.kind == TlbiKind::Aside1is => Some(u64::from(op.asid())),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn tokens_belong_to_their_address_space() {
        let f = fx(16, 2, false);
        let a = space(&f, SecondaryTlbMode::Sync);
        let b = space(&f, SecondaryTlbMode::Sync);
        a.flush(
            a.map(
                range(0x1000, 4096),
                pa(0x8000_0000),
                MapAttrs::SHARED_RW,
                false,
            )
            .unwrap(),
        )
        .unwrap();
        b.flush(
            b.map(
                range(0x1000, 4096),
                pa(0x8000_0000),
                MapAttrs::SHARED_RW,
                false,
            )
            .unwrap(),
        )
        .unwrap();
        let t = b.protect(range(0x1000, 4096), Perms::R).unwrap();
        assert_eq!(
            a.flush(t).unwrap_err(),
            AsError::Flush(FlushError::WrongAddressSpace)
        );
    }

    #[test]
    fn fault_policies() {
        let f = fx(16, 2, false);
        let s = space(&f, SecondaryTlbMode::Sync);
        s.flush(
            s.map(
                range(0x1000, 4096),
                pa(0x8000_0000),
                MapAttrs::SHARED_RO,
                false,
            )
            .unwrap(),
        )
        .unwrap();
        s.flush(
            s.map(
                range(0x2000, 4096),
                pa(0x8000_1000),
                MapAttrs::new(Perms::RX, MemType::Normal, false),
                false,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            s.handle_fault(va(0x1000), W),
            Ok(FaultOutcome::Unhandled),
            "Report by default"
        );
        s.set_fault_policy(FaultPolicy::UpgradeOnWrite);
        let tr = FaultKind {
            class: FaultClass::Translation,
            level: 3,
            write: false,
        };
        let read_perm = FaultKind {
            class: FaultClass::Permission,
            level: 3,
            write: false,
        };
        assert_eq!(s.handle_fault(va(0x9000), tr), Ok(FaultOutcome::Unhandled));
        assert_eq!(s.handle_fault(va(0x1000), tr), Ok(FaultOutcome::Spurious));
        assert_eq!(
            s.handle_fault(va(0x1000), read_perm),
            Ok(FaultOutcome::Unhandled)
        );
        assert_eq!(
            s.handle_fault(va(0x2000), W),
            Ok(FaultOutcome::Unhandled),
            "W^X: no write to code"
        );
        assert_eq!(s.handle_fault(va(0x9000), W), Ok(FaultOutcome::Unhandled));
        assert_eq!(s.handle_fault(va(0x1ABC), W), Ok(FaultOutcome::Upgraded));
        assert_eq!(s.translate(va(0x1000)).unwrap().attrs, MapAttrs::SHARED_RW);
        let af = FaultKind {
            class: FaultClass::AccessFlag,
            level: 3,
            write: false,
        };
        assert_eq!(s.handle_fault(va(0x1000), af), Ok(FaultOutcome::Spurious));

        struct Custom(StdMutex<Vec<u64>>);
        impl FaultHandler for Custom {
            fn handle(
                &self,
                space: &AddressSpace,
                far: VirtAddr,
                _: FaultKind,
            ) -> Result<FaultOutcome, AsError> {
                self.0.lock().unwrap().push(far.0);
                space.flush(space.map(
                    VaRange::page(far),
                    pa(0x8800_0000),
                    MapAttrs::SHARED_RW,
                    false,
                )?)?;
                Ok(FaultOutcome::Spurious)
            }
        }
        let h = Arc::new(Custom(StdMutex::new(Vec::new())));
        s.set_fault_policy(FaultPolicy::Handler(h.clone()));
        assert_eq!(s.handle_fault(va(0x5000), tr), Ok(FaultOutcome::Spurious));
        assert_eq!(*h.0.lock().unwrap(), vec![0x5000]);
        assert_eq!(s.translate(va(0x5000)).unwrap().pa, pa(0x8800_0000));
        assert!(matches!(s.fault_policy(), FaultPolicy::Handler(_)));
    }

    #[test]
    fn abort_glue_and_switch_to_empty() {
        use crate::exception::esr::Abort;
        // Data abort at EL1 (EC 0x25), write, permission fault level 3 (DFSC 0x0F).
        let a = Abort::decode((0x25 << 26) | (1 << 6) | 0x0F, 0x1234).unwrap();
        assert_eq!(FaultKind::from_abort(&a), Some(W));
        let a = Abort::decode((0x25 << 26) | 0x06, 0x1234).unwrap();
        assert_eq!(
            FaultKind::from_abort(&a),
            Some(FaultKind {
                class: FaultClass::Translation,
                level: 2,
                write: false
            })
        );
        let a = Abort::decode((0x25 << 26) | 0x0B, 0x1234).unwrap();
        assert_eq!(
            FaultKind::from_abort(&a).unwrap().class,
            FaultClass::AccessFlag
        );
        let a = Abort::decode((0x25 << 26) | 0x21, 0x1234).unwrap();
        assert_eq!(
            FaultKind::from_abort(&a),
            None,
            "alignment faults are not ours"
        );
        assert!(FaultOutcome::Spurious.is_resolved() && !FaultOutcome::Unhandled.is_resolved());

        let f = fx(4, 1, false);
        let s = space(&f, SecondaryTlbMode::Sync);
        // SAFETY: test executor.
        let asid = unsafe { s.switch_to(0) }.unwrap().asid;
        assert_eq!(
            f.env.asids.release(s.root_ctx()),
            Err(AsidError::StillActive(0))
        );
        f.log.take();
        // SAFETY: test executor.
        unsafe { AddressSpace::switch_to_empty(&f.env, 0, 0x4000_0000) }.unwrap();
        assert_eq!(f.log.take(), vec![Ev::Ttbr0(0x4000_0000)]);
        assert_eq!(f.env.asids.release(s.root_ctx()), Ok(()));
        // Once the CPU left, its ASID is no longer reserved across rollovers.
        let others: Vec<AddressSpace> =
            (0..30).map(|_| space(&f, SecondaryTlbMode::Sync)).collect();
        let reused = others.iter().any(|o| o.asid() == asid);
        assert!(reused);
    }

    #[test]
    fn failed_secondary_leaves_bbm_range_unmapped() {
        let f = fx(16, 2, false);
        let s = space(&f, SecondaryTlbMode::Sync);
        let bad = RecordingSecondary::new("bad", f.log.clone());
        s.register_secondary(bad.clone()).unwrap();
        s.flush(
            s.map(
                range(0x20_0000, MIB2),
                pa(0x8020_0000),
                MapAttrs::SHARED_RW,
                true,
            )
            .unwrap(),
        )
        .unwrap();
        let frames = f.mem.allocated();
        bad.fail.store(true, core::sync::atomic::Ordering::Relaxed);
        let e = s.split_block(va(0x20_0000)).unwrap_err();
        assert!(matches!(e, AsError::Flush(FlushError::Secondary { .. })));
        assert_eq!(s.translate(va(0x20_0000)), None);
        assert_eq!(
            f.mem.allocated(),
            frames,
            "the unlinked new table was freed"
        );
        bad.fail.store(false, core::sync::atomic::Ordering::Relaxed);
        // The same failure on unregistration keeps the pin.
        let f2 = fx(16, 2, false);
        let s2 = space(&f2, SecondaryTlbMode::Sync);
        let b2 = RecordingSecondary::new("bad", f2.log.clone());
        let h = s2.register_secondary(b2.clone()).unwrap();
        b2.fail.store(true, core::sync::atomic::Ordering::Relaxed);
        assert!(matches!(s2.unregister_secondary(h), Err(AsError::Flush(_))));
        assert_eq!(f2.env.asids.pinned(), 1);
        let _ = s.secondary_count();
    }

    #[test]
    fn pin_limit_refuses_registration() {
        let f = fx(3, 1, false); // 8 ASIDs, 1 CPU: 5 pins
        let spaces: Vec<AddressSpace> = (0..6).map(|_| space(&f, SecondaryTlbMode::Sync)).collect();
        let mut hs = Vec::new();
        for s in &spaces[..5] {
            hs.push(
                s.register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                    .unwrap(),
            );
        }
        assert_eq!(
            spaces[5]
                .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                .unwrap_err(),
            AsError::Asid(AsidError::PinLimit)
        );
        assert_eq!(spaces[5].secondary_count(), 0);
        for (s, h) in spaces.iter().zip(hs) {
            s.unregister_secondary(h).unwrap();
        }
    }

    /// Several CPUs change and flush one address space while secondary TLBs come and go.
    #[test]
    fn concurrent_operations() {
        let f = fx(16, 4, true);
        let s = Arc::new(space(&f, SecondaryTlbMode::Sync));
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let s = s.clone();
                thread::spawn(move || {
                    let base = 0x4000_0000 + t * 0x100_0000;
                    for i in 0..100u64 {
                        let r = range(base + (i % 16) * 4096, 4096);
                        if i < 16 {
                            s.flush(
                                s.map(r, pa(0x8000_0000 + i * 4096), MapAttrs::SHARED_RO, false)
                                    .unwrap(),
                            )
                            .unwrap();
                        } else {
                            let perms = if i % 2 == 0 { Perms::RW } else { Perms::R };
                            s.flush(s.protect(r, perms).unwrap()).unwrap();
                        }
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            let h = s
                .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                .unwrap();
            thread::yield_now();
            s.unregister_secondary(h).unwrap();
        }
        for w in workers {
            w.join().unwrap();
        }
        for t in 0..2u64 {
            for i in 0..16u64 {
                let tr = s
                    .translate(va(0x4000_0000 + t * 0x100_0000 + i * 4096))
                    .unwrap();
                assert_eq!(tr.pa, pa(0x8000_0000 + i * 4096));
            }
        }
        assert_eq!(f.env.asids.pinned(), 0);
        let _ = f.log.take();
    }
}
