//! TLB flushing: what to invalidate, how the CPU does it, and the one path that also tells every
//! secondary TLB.
//!
//! # Why this module exists
//!
//! Page-table changes become visible to a TLB only through explicit maintenance (Arm ARM
//! DDI 0487 K.a, D8.16 "Translation Lookaside Buffers", TLB maintenance requirements). The CPU's
//! `TLBI … IS` instructions are broadcast to the other CPUs of the Inner Shareable domain, but
//! *not* to the SMMU (QEMU's model has no broadcast TLB maintenance, and Linux never relies on
//! it either), although the SMMU walks the very same tables for a shared address space. So every
//! flush must do both, in this order:
//!
//! 1. the page-table stores (done by [`pgtable`](super::pgtable), which hands back a
//!    [`TlbFlush`] token describing what it changed);
//! 2. `DSB ISHST`, so that the stores are visible to every table walker, CPU or SMMU;
//! 3. the CPU `TLBI`s (planned here by [`plan`]);
//! 4. every registered secondary TLB is invalidated for the same ASID and range, and waited for
//!    ([`SecondaryTlbs::notify`]) — *between* the CPU TLBI and the final DSB, as Linux ≥ 6.6 does;
//! 5. `DSB ISH` (the CPU TLBIs are complete everywhere) and `ISB` (this CPU's own instruction
//!    stream sees the result; the kernel dereferences TTBR0 addresses directly at EL1);
//! 6. only now, the table frames the change made unreachable are freed.
//!
//! # Ranges that cannot lie
//!
//! [`FlushRange`] is an explicit enum: one page, a non-empty run of whole pages in one VA half,
//! or the whole address space. It has no end address that can wrap and no empty value that could
//! be mistaken for "everything" — the exact shapes of Linux's `(~0, ~0)` range, its `-1UL` end
//! that overflowed a driver's round-up, and the empty ranges 6.6–6.13 passed to notifiers.

use alloc::{string::String, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::mm::{
    addr::{PAGE_SHIFT, PAGE_SIZE, PhysAddr, USER_VA_END, VirtAddr},
    asid::{AsidAllocator, AsidContext, KERNEL_ASID},
    notifier::{SecondaryTlbError, SecondaryTlbs},
    pgtable::FrameSource,
};

#[cfg(target_os = "none")]
#[path = "../_arch/aarch64/mm/tlb.rs"]
pub mod arch;

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

/// First address of the upper (TTBR1) VA half with 48-bit VAs.
const UPPER_VA_START: u64 = !(USER_VA_END - 1);
/// Pages in a 2 MiB block.
const BLOCK_PAGES: u64 = 512;

/// A run of at least two whole pages that lies entirely within one canonical VA half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageSpan {
    start: VirtAddr,
    pages: u64,
}

impl PageSpan {
    /// First page.
    pub const fn start(self) -> VirtAddr {
        self.start
    }
    /// Number of pages (≥ 2).
    pub const fn pages(self) -> u64 {
        self.pages
    }
    /// Address of the last page (never wraps).
    pub const fn last_page(self) -> VirtAddr {
        VirtAddr(self.start.0 + (self.pages - 1) * PAGE_SIZE)
    }
}

/// What a flush must invalidate, in one ASID (or, for kernel tables, in all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushRange {
    /// The page containing this (page-aligned, by construction through [`FlushRange::page`])
    /// address. Also correct for a block: a TLBI by VA removes any entry that translates it.
    Page(VirtAddr),
    /// Several whole pages.
    Range(PageSpan),
    /// The whole address space (every VA of the ASID).
    All,
}

/// Why a [`FlushRange`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushRangeError {
    /// No pages: an empty range is an error, never "everything".
    Empty,
    /// The start is not page-aligned.
    Misaligned,
    /// The end would pass 2^64 (or its round-up would).
    Overflow,
    /// Not within one canonical 48-bit VA half.
    NotCanonical,
}

impl fmt::Display for FlushRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlushRangeError::Empty => "empty flush range",
            FlushRangeError::Misaligned => "flush range start not page-aligned",
            FlushRangeError::Overflow => "flush range end overflows the address space",
            FlushRangeError::NotCanonical => "flush range not within one canonical VA half",
        })
    }
}

/// Whether `[start, last]` (inclusive, `start <= last`) lies in one canonical 48-bit half.
const fn in_one_half(start: u64, last: u64) -> bool {
    last < USER_VA_END || start >= UPPER_VA_START
}

impl FlushRange {
    /// The page containing `va`.
    pub const fn page(va: VirtAddr) -> Self {
        FlushRange::Page(VirtAddr(va.0 & !(PAGE_SIZE - 1)))
    }

    /// `pages` pages from `start`. One page gives [`FlushRange::Page`].
    ///
    /// # Errors
    ///
    /// [`FlushRangeError`] for zero pages, an unaligned start, an end past 2^64, or a run that
    /// leaves its canonical VA half.
    pub const fn pages(start: VirtAddr, pages: u64) -> Result<Self, FlushRangeError> {
        if pages == 0 {
            return Err(FlushRangeError::Empty);
        }
        if start.0 & (PAGE_SIZE - 1) != 0 {
            return Err(FlushRangeError::Misaligned);
        }
        let last = match (pages - 1).checked_mul(PAGE_SIZE) {
            Some(off) => match start.0.checked_add(off) {
                Some(last) => last,
                None => return Err(FlushRangeError::Overflow),
            },
            None => return Err(FlushRangeError::Overflow),
        };
        if !in_one_half(start.0, last) {
            return Err(FlushRangeError::NotCanonical);
        }
        Ok(if pages == 1 {
            FlushRange::Page(start)
        } else {
            FlushRange::Range(PageSpan { start, pages })
        })
    }

    /// The pages touched by the byte range `[start, end_exclusive)`: `start` is rounded down
    /// and `end_exclusive` up to page boundaries.
    ///
    /// # Errors
    ///
    /// [`FlushRangeError::Empty`] if `end_exclusive <= start` — including `(~0, ~0)`;
    /// [`FlushRangeError::Overflow`] if rounding the end up passes 2^64 — including an end of
    /// `u64::MAX` (the `-1` "whole address space" idiom, which must be spelled
    /// [`FlushRange::All`] instead); [`FlushRangeError::NotCanonical`] as for [`Self::pages`].
    pub const fn from_bounds(start: VirtAddr, end_exclusive: u64) -> Result<Self, FlushRangeError> {
        if end_exclusive <= start.0 {
            return Err(FlushRangeError::Empty);
        }
        let first = start.0 & !(PAGE_SIZE - 1);
        let end = match end_exclusive.checked_add(PAGE_SIZE - 1) {
            Some(e) => e & !(PAGE_SIZE - 1),
            None => return Err(FlushRangeError::Overflow),
        };
        Self::pages(VirtAddr(first), (end - first) >> PAGE_SHIFT)
    }

    /// Number of pages, or `None` for [`FlushRange::All`].
    pub const fn page_count(self) -> Option<u64> {
        match self {
            FlushRange::Page(_) => Some(1),
            FlushRange::Range(s) => Some(s.pages),
            FlushRange::All => None,
        }
    }

    /// First page, or `None` for [`FlushRange::All`].
    pub const fn start(self) -> Option<VirtAddr> {
        match self {
            FlushRange::Page(va) => Some(va),
            FlushRange::Range(s) => Some(s.start),
            FlushRange::All => None,
        }
    }

    /// Last page (inclusive; never wraps), or `None` for [`FlushRange::All`].
    pub const fn last_page(self) -> Option<VirtAddr> {
        match self {
            FlushRange::Page(va) => Some(va),
            FlushRange::Range(s) => Some(s.last_page()),
            FlushRange::All => None,
        }
    }

    /// Whether the page containing `va` is covered.
    pub const fn covers(self, va: VirtAddr) -> bool {
        match (self.start(), self.last_page()) {
            (Some(s), Some(l)) => va.0 >= s.0 && va.0 <= l.0 + (PAGE_SIZE - 1),
            _ => true,
        }
    }

    /// The smallest range covering both. Ranges in different halves give [`FlushRange::All`].
    pub fn hull(self, other: FlushRange) -> FlushRange {
        match (
            self.start().zip(self.last_page()),
            other.start().zip(other.last_page()),
        ) {
            (Some((s1, l1)), Some((s2, l2))) => {
                let s = s1.min(s2);
                let l = l1.max(l2);
                FlushRange::pages(s, ((l.0 - s.0) >> PAGE_SHIFT) + 1).unwrap_or(FlushRange::All)
            }
            _ => FlushRange::All,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The flush token
// ---------------------------------------------------------------------------------------------

/// The operation that made a flush necessary (passed to secondary TLBs for diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushCause {
    /// New mappings (invalid → valid): only a barrier, no invalidation.
    Map,
    /// Mappings removed.
    Unmap,
    /// Permissions changed in place (see [`TlbFlush::upgrade_only`]).
    Protect,
    /// Output addresses changed (break-before-make).
    Remap,
    /// A block replaced by a table of pages (break-before-make).
    SplitBlock,
    /// A table of pages replaced by a block (break-before-make).
    MergeBlock,
    /// A permission fault resolved by making a read-only page writable in place.
    FaultUpgrade,
    /// A permission fault on an entry that already allowed the access: a stale TLB entry.
    SpuriousFault,
    /// The address space is being destroyed.
    Teardown,
    /// A secondary TLB is being detached from the address space.
    Release,
    /// Several tokens merged with [`TlbFlush::merge`].
    Batch,
}

/// How much a single CPU TLBI by VA covers for this flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stride {
    /// Per 4 KiB page.
    Page,
    /// Every changed leaf was a whole 2 MiB block: one TLBI per block suffices, since a TLBI by
    /// VA removes every entry that translates that VA, whatever its size.
    Block2M,
}

/// The invalidation part of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Invalidation {
    /// What to invalidate.
    pub range: FlushRange,
    /// Only leaf entries changed: last-level TLBIs (`VALE1IS`) suffice. `false` when a table
    /// entry changed or a table was freed, so walk caches must go too (`VAE1IS`).
    pub leaf_only: bool,
    /// Granularity hint for the CPU plan.
    pub stride: Stride,
}

static NEXT_FLUSH_ID: AtomicU64 = AtomicU64::new(1);

/// What a page-table change requires before it is complete: a TLB invalidation (or just a
/// barrier), and table frames that may be freed only after it.
///
/// Every mutating page-table operation returns one. It must be passed to the flush executor
/// ([`AddressSpace::flush`](super::address_space::AddressSpace::flush), [`flush_kernel`], or for
/// tables that were never live [`complete_without_tlb`]); dropping it un-flushed is a bug,
/// logged, and leaks the frames rather than risk a walker reading freed memory.
#[must_use = "a page-table change is incomplete until its TLB flush has run"]
pub struct TlbFlush {
    id: u64,
    absorbed: Vec<u64>,
    origin: PhysAddr,
    cause: FlushCause,
    inval: Option<Invalidation>,
    upgrade_only: bool,
    barrier: bool,
    freed: Vec<PhysAddr>,
    armed: bool,
}

impl TlbFlush {
    fn new(origin: PhysAddr, cause: FlushCause) -> Self {
        Self {
            id: NEXT_FLUSH_ID.fetch_add(1, Ordering::Relaxed),
            absorbed: Vec::new(),
            origin,
            cause,
            inval: None,
            upgrade_only: false,
            barrier: false,
            freed: Vec::new(),
            armed: true,
        }
    }

    /// Nothing changed: completing it does nothing.
    pub(crate) fn nothing(origin: PhysAddr, cause: FlushCause) -> Self {
        Self::new(origin, cause)
    }

    /// Only new entries were written (invalid → valid, new tables linked): a barrier
    /// (`DSB ISHST; ISB`) makes them visible; no TLB can hold an invalid entry.
    pub(crate) fn barrier_only(origin: PhysAddr, cause: FlushCause) -> Self {
        let mut t = Self::new(origin, cause);
        t.barrier = true;
        t
    }

    /// Valid entries changed.
    pub(crate) fn invalidate(
        origin: PhysAddr,
        cause: FlushCause,
        inval: Invalidation,
        upgrade_only: bool,
        freed: Vec<PhysAddr>,
    ) -> Self {
        let mut t = Self::new(origin, cause);
        t.inval = Some(inval);
        t.upgrade_only = upgrade_only;
        t.barrier = true;
        t.freed = freed;
        t
    }

    /// Unique id (ties a break-before-make's second half to this flush).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Root table of the page table that produced it.
    pub fn origin(&self) -> PhysAddr {
        self.origin
    }
    /// The operation behind it.
    pub fn cause(&self) -> FlushCause {
        self.cause
    }
    /// What must be invalidated; `None` if only a barrier (or nothing) is needed.
    pub fn invalidation(&self) -> Option<Invalidation> {
        self.inval
    }
    /// Shortcut for the invalidation's range.
    pub fn range(&self) -> Option<FlushRange> {
        self.inval.map(|i| i.range)
    }
    /// The change *only* added permissions to valid entries (e.g. RO→RW in place). Such a
    /// change needs a TLB invalidation as much as any other (a TLB may hold the old, more
    /// restrictive entry, Arm ARM D8.16) — it is the one pre-6.6 Linux forgot to send to
    /// secondary TLBs, which the `legacy` notifier mode reproduces.
    pub fn upgrade_only(&self) -> bool {
        self.upgrade_only
    }
    /// Whether completing it needs a barrier.
    pub fn needs_barrier(&self) -> bool {
        self.barrier
    }
    /// Whether completing it does nothing at all.
    pub fn is_noop(&self) -> bool {
        !self.barrier && self.inval.is_none() && self.freed.is_empty()
    }
    /// Table frames freed when the flush completes.
    pub fn freed_tables(&self) -> &[PhysAddr] {
        &self.freed
    }

    /// Widens the invalidation to the whole address space — the explicit [`FlushRange::All`]
    /// kind, never a wrapping or empty range — as Linux's `flush_tlb_mm` does after scattered
    /// changes. A token with no invalidation (only new mappings) stays barrier-only.
    pub fn widen_to_all(&mut self) {
        if let Some(inv) = &mut self.inval {
            inv.range = FlushRange::All;
        }
    }

    /// Folds `other` into `self` (one flush for several changes, like Linux's `mmu_gather`):
    /// the range becomes the hull, walk caches are invalidated if either needs it, and the
    /// result is upgrade-only only if every invalidating part was.
    ///
    /// # Panics
    ///
    /// If the tokens come from different page tables.
    pub fn merge(&mut self, mut other: TlbFlush) {
        assert_eq!(
            self.origin, other.origin,
            "merging flushes of different page tables"
        );
        other.armed = false;
        self.absorbed.push(other.id);
        self.absorbed.append(&mut other.absorbed);
        self.freed.append(&mut other.freed);
        self.barrier |= other.barrier;
        if self.cause != other.cause {
            self.cause = FlushCause::Batch;
        }
        self.inval = match (self.inval, other.inval) {
            (None, o) => {
                self.upgrade_only = other.upgrade_only;
                o
            }
            (s, None) => s,
            (Some(a), Some(b)) => {
                self.upgrade_only &= other.upgrade_only;
                Some(Invalidation {
                    range: a.range.hull(b.range),
                    leaf_only: a.leaf_only && b.leaf_only,
                    stride: if a.stride == b.stride {
                        a.stride
                    } else {
                        Stride::Page
                    },
                })
            }
        };
    }

    /// Disarms the token and hands out its parts.
    fn take(mut self) -> Parts {
        self.armed = false;
        let mut ids = core::mem::take(&mut self.absorbed);
        ids.push(self.id);
        Parts {
            done: FlushDone { ids },
            cause: self.cause,
            inval: self.inval,
            upgrade_only: self.upgrade_only,
            barrier: self.barrier,
            freed: core::mem::take(&mut self.freed),
        }
    }
}

struct Parts {
    done: FlushDone,
    cause: FlushCause,
    inval: Option<Invalidation>,
    upgrade_only: bool,
    barrier: bool,
    freed: Vec<PhysAddr>,
}

impl fmt::Debug for TlbFlush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlbFlush")
            .field("id", &self.id)
            .field("cause", &self.cause)
            .field("inval", &self.inval)
            .field("upgrade_only", &self.upgrade_only)
            .field("barrier", &self.barrier)
            .field("freed", &self.freed)
            .finish()
    }
}

impl Drop for TlbFlush {
    fn drop(&mut self) {
        if self.armed && (self.inval.is_some() || !self.freed.is_empty()) {
            log::error!("TLB flush dropped without being performed ({self:?}); leaking its frames");
        }
    }
}

/// Proof that a [`TlbFlush`] has been completed (CPU and secondary TLBs invalidated, frames
/// freed). Break-before-make operations demand it before writing their new entries.
#[derive(Debug)]
pub struct FlushDone {
    ids: Vec<u64>,
}

impl FlushDone {
    /// Whether this completion covers the flush with id `id`.
    pub fn covers(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }
}

// ---------------------------------------------------------------------------------------------
// CPU TLBI planning (pure)
// ---------------------------------------------------------------------------------------------

/// CPU TLB-maintenance features that change the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TlbFeatures {
    /// FEAT_TLBIRANGE: `TLBI RVA*` range instructions.
    pub range: bool,
}

impl TlbFeatures {
    /// Decodes ID_AA64ISAR0_EL1: field TLB, bits \[59:56\], is `0b0010` when both the
    /// Outer Shareable and the range TLBI instructions are implemented.
    pub const fn from_isar0(isar0: u64) -> Self {
        Self {
            range: (isar0 >> 56) & 0xF >= 0b0010,
        }
    }
}

/// Without FEAT_TLBIRANGE, flushes needing this many TLBIs or more become one ASID-wide TLBI
/// (Linux's `MAX_TLBI_OPS`; the same 2 MiB threshold the SMMU driver uses).
pub const MAX_TLBI_OPS: u64 = 512;
/// With FEAT_TLBIRANGE, the most pages the plan covers with range instructions
/// ((NUM+1 = 32) · 2^(5·3+1)); beyond it, one ASID-wide TLBI.
pub const MAX_TLBI_RANGE_PAGES: u64 = 32 << 16;

/// Which TLB entries a flush targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbScope {
    /// Non-global entries of one ASID (TTBR0 address spaces).
    Asid(u16),
    /// Entries of every ASID (kernel TTBR1 tables with global entries). Never reported to
    /// secondary TLBs.
    Global,
}

/// A TLB maintenance instruction (all Inner Shareable: broadcast to every CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbiKind {
    /// By VA and ASID, last level only.
    Vale1is,
    /// By VA and ASID, all levels (walk caches too).
    Vae1is,
    /// Range by VA and ASID, last level only (FEAT_TLBIRANGE).
    Rvale1is,
    /// Range by VA and ASID, all levels (FEAT_TLBIRANGE).
    Rvae1is,
    /// Everything of one ASID.
    Aside1is,
    /// By VA, any ASID, last level only.
    Vaale1is,
    /// By VA, any ASID, all levels.
    Vaae1is,
    /// Range by VA, any ASID, last level only.
    Rvaale1is,
    /// Range by VA, any ASID, all levels.
    Rvaae1is,
    /// Everything at EL1&0 (current VMID).
    Vmalle1is,
}

impl TlbiKind {
    /// Whether this is a FEAT_TLBIRANGE instruction.
    pub const fn is_range(self) -> bool {
        matches!(
            self,
            TlbiKind::Rvale1is | TlbiKind::Rvae1is | TlbiKind::Rvaale1is | TlbiKind::Rvaae1is
        )
    }
}

/// One TLBI with its register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbiOp {
    /// The instruction.
    pub kind: TlbiKind,
    /// The Xt operand.
    pub operand: u64,
}

const ASID_SHIFT: u32 = 48;
const VA_OPERAND_MASK: u64 = (1 << 44) - 1;
const RANGE_BADDR_MASK: u64 = (1 << 37) - 1;
/// TG field of a range operand for the 4 KiB granule.
const RANGE_TG_4K: u64 = 0b01;

/// Operand of a TLBI by VA: ASID in \[63:48\], VA\[55:12\] in \[43:0\] (Arm ARM C5.5, TLBI
/// operand formats; TTL \[47:44\] left 0 = no level hint).
pub const fn va_operand(asid: u16, va: VirtAddr) -> u64 {
    ((asid as u64) << ASID_SHIFT) | ((va.0 >> PAGE_SHIFT) & VA_OPERAND_MASK)
}

/// Operand of a TLBI by ASID: ASID in \[63:48\].
pub const fn asid_operand(asid: u16) -> u64 {
    (asid as u64) << ASID_SHIFT
}

/// Operand of a range TLBI: ASID \[63:48\], TG \[47:46\] (4 KiB), SCALE \[45:44\], NUM \[43:39\],
/// TTL \[38:37\] (0: any level), BADDR \[36:0\] = VA\[48:12\]. It covers
/// (NUM+1)·2^(5·SCALE+1) pages from BADDR.
pub const fn range_operand(asid: u16, va: VirtAddr, scale: u8, num: u8) -> u64 {
    ((asid as u64) << ASID_SHIFT)
        | (RANGE_TG_4K << 46)
        | (((scale & 0b11) as u64) << 44)
        | (((num & 0x1F) as u64) << 39)
        | ((va.0 >> PAGE_SHIFT) & RANGE_BADDR_MASK)
}

/// Pages covered by a range TLBI with these SCALE and NUM.
pub const fn range_pages(scale: u8, num: u8) -> u64 {
    ((num as u64) + 1) << (5 * scale as u32 + 1)
}

impl TlbiOp {
    /// The ASID field of the operand (meaningless for the all-ASID kinds).
    pub const fn asid(self) -> u16 {
        (self.operand >> ASID_SHIFT) as u16
    }

    /// For a by-VA or range kind, the first page number (VA >> 12, truncated to the operand's
    /// address field) and the number of pages named; `None` for ASID/all kinds.
    pub const fn pages(self) -> Option<(u64, u64)> {
        match self.kind {
            TlbiKind::Vale1is | TlbiKind::Vae1is | TlbiKind::Vaale1is | TlbiKind::Vaae1is => {
                Some((self.operand & VA_OPERAND_MASK, 1))
            }
            TlbiKind::Rvale1is | TlbiKind::Rvae1is | TlbiKind::Rvaale1is | TlbiKind::Rvaae1is => {
                let scale = ((self.operand >> 44) & 0b11) as u8;
                let num = ((self.operand >> 39) & 0x1F) as u8;
                Some((self.operand & RANGE_BADDR_MASK, range_pages(scale, num)))
            }
            TlbiKind::Aside1is | TlbiKind::Vmalle1is => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PlanState {
    Done,
    One(TlbiOp),
    Singles,
    Ranges { scale: u8 },
}

/// The CPU TLBIs for one flush, produced lazily (no allocation on the flush path).
#[derive(Clone, Debug)]
pub struct TlbiPlan {
    state: PlanState,
    asid: u16,
    single: TlbiKind,
    range: TlbiKind,
    next: VirtAddr,
    remaining: u64,
    step: u64,
}

impl Iterator for TlbiPlan {
    type Item = TlbiOp;

    fn next(&mut self) -> Option<TlbiOp> {
        match self.state {
            PlanState::Done => None,
            PlanState::One(op) => {
                self.state = PlanState::Done;
                Some(op)
            }
            PlanState::Singles => {
                if self.remaining == 0 {
                    self.state = PlanState::Done;
                    return None;
                }
                let op = TlbiOp {
                    kind: self.single,
                    operand: va_operand(self.asid, self.next),
                };
                self.advance(self.step);
                Some(op)
            }
            PlanState::Ranges { mut scale } => {
                if self.remaining == 0 {
                    self.state = PlanState::Done;
                    return None;
                }
                // Range instructions name an even number of pages: an odd one goes alone.
                if !self.remaining.is_multiple_of(2) {
                    let op = TlbiOp {
                        kind: self.single,
                        operand: va_operand(self.asid, self.next),
                    };
                    self.advance(1);
                    return Some(op);
                }
                // Largest chunks first; each scale is used at most once (with NUM ≤ 31), since
                // what remains afterwards is less than one unit of that scale.
                loop {
                    let unit = range_pages(scale, 0);
                    let n = (self.remaining / unit).min(32);
                    if n > 0 {
                        let op = TlbiOp {
                            kind: self.range,
                            operand: range_operand(self.asid, self.next, scale, (n - 1) as u8),
                        };
                        self.advance(n * unit);
                        self.state = PlanState::Ranges { scale };
                        return Some(op);
                    }
                    // `remaining` is even and non-zero, so scale 0 (unit 2) always matches.
                    scale -= 1;
                }
            }
        }
    }
}

impl TlbiPlan {
    fn advance(&mut self, pages: u64) {
        self.remaining -= pages;
        // Cannot overflow: the range was validated to lie within one VA half; the last step may
        // land exactly on 2^64 for a range ending at the top of the upper half.
        self.next = VirtAddr(self.next.0.wrapping_add(pages << PAGE_SHIFT));
    }
}

/// Plans the CPU TLBIs for `inv` in `scope`.
///
/// - [`FlushRange::All`] → `ASIDE1IS` (or `VMALLE1IS` for [`TlbScope::Global`]).
/// - Without FEAT_TLBIRANGE: one `VALE1IS` (leaf-only) / `VAE1IS` per page (per 2 MiB for a
///   [`Stride::Block2M`] flush), or `ASIDE1IS` once that would take [`MAX_TLBI_OPS`] or more.
/// - With FEAT_TLBIRANGE: one single TLBI where one suffices; otherwise an odd page alone plus at
///   most four `RVALE1IS`/`RVAE1IS` covering exactly the rest; `ASIDE1IS` beyond
///   [`MAX_TLBI_RANGE_PAGES`].
pub fn plan(inv: &Invalidation, scope: TlbScope, features: TlbFeatures) -> TlbiPlan {
    let (asid, single, range, all) = match (scope, inv.leaf_only) {
        (TlbScope::Asid(a), true) => (a, TlbiKind::Vale1is, TlbiKind::Rvale1is, TlbiKind::Aside1is),
        (TlbScope::Asid(a), false) => (a, TlbiKind::Vae1is, TlbiKind::Rvae1is, TlbiKind::Aside1is),
        (TlbScope::Global, true) => (
            0,
            TlbiKind::Vaale1is,
            TlbiKind::Rvaale1is,
            TlbiKind::Vmalle1is,
        ),
        (TlbScope::Global, false) => (
            0,
            TlbiKind::Vaae1is,
            TlbiKind::Rvaae1is,
            TlbiKind::Vmalle1is,
        ),
    };
    let all_op = TlbiOp {
        kind: all,
        operand: if all == TlbiKind::Aside1is {
            asid_operand(asid)
        } else {
            0
        },
    };
    let mut p = TlbiPlan {
        state: PlanState::One(all_op),
        asid,
        single,
        range,
        next: VirtAddr(0),
        remaining: 0,
        step: 1,
    };
    let (Some(start), Some(pages)) = (inv.range.start(), inv.range.page_count()) else {
        return p;
    };
    let block_stride = inv.stride == Stride::Block2M
        && start.0.is_multiple_of(BLOCK_PAGES * PAGE_SIZE)
        && pages.is_multiple_of(BLOCK_PAGES);
    let step = if block_stride { BLOCK_PAGES } else { 1 };
    let singles = pages / step;
    p.next = start;
    p.remaining = pages;
    if singles == 1 {
        p.step = step;
        p.state = PlanState::Singles;
    } else if features.range {
        if pages <= MAX_TLBI_RANGE_PAGES {
            p.state = PlanState::Ranges { scale: 3 };
        }
    } else if singles < MAX_TLBI_OPS {
        p.step = step;
        p.state = PlanState::Singles;
    }
    p
}

// ---------------------------------------------------------------------------------------------
// The executor interface
// ---------------------------------------------------------------------------------------------

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
        }
    }

    pub(crate) fn add_secondary(&self, notified: u64, skipped: u64, failed: u64) {
        self.secondary_notifications
            .fetch_add(notified, Ordering::Relaxed);
        self.secondary_skipped.fetch_add(skipped, Ordering::Relaxed);
        self.secondary_failures.fetch_add(failed, Ordering::Relaxed);
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
        failures: usize,
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
        free_frames(freed, target);
        return Ok(done);
    };

    if let Some(s) = target.stats {
        let c = match inval.range {
            FlushRange::Page(_) => &s.page_flushes,
            FlushRange::Range(_) => &s.range_flushes,
            FlushRange::All => &s.all_flushes,
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
    let secondary = match (scope, target.secondaries) {
        (TlbScope::Asid(asid), Some(list)) => {
            list.notify(asid, inval.range, cause, upgrade_only, target.stats)
        }
        _ => Ok(()),
    };
    target.tlb.dsb_ish();
    target.tlb.isb();

    match secondary {
        Ok(()) => {
            free_frames(freed, target);
            Ok(done)
        }
        Err(e) => {
            if !freed.is_empty() {
                log::error!(
                    "leaking {} table frame(s) after a failed secondary flush",
                    freed.len()
                );
            }
            Err(e)
        }
    }
}

fn free_frames(freed: Vec<PhysAddr>, target: &FlushTarget<'_>) {
    let n = freed.len() as u64;
    for pa in freed {
        target.frames.free_frame(pa);
    }
    if let Some(s) = target.stats {
        s.frames_freed.fetch_add(n, Ordering::Relaxed);
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
    let Parts { done, freed, .. } = token.take();
    for pa in freed {
        frames.free_frame(pa);
    }
    done
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, vec, vec::Vec};

    use super::*;
    use crate::mm::pgtable::fake::{Ev, FakeMem, Log, RecordingSecondary, RecordingTlb};

    fn va(x: u64) -> VirtAddr {
        VirtAddr(x)
    }

    fn inv(range: FlushRange, leaf_only: bool) -> Invalidation {
        Invalidation {
            range,
            leaf_only,
            stride: Stride::Page,
        }
    }

    fn ops(i: &Invalidation, scope: TlbScope, range: bool) -> Vec<TlbiOp> {
        plan(i, scope, TlbFeatures { range }).collect()
    }

    // -- ranges --------------------------------------------------------------------------------

    #[test]
    fn range_edges_that_bit_linux() {
        // Jann Horn's nested-flush case: (~0, ~0) is empty, never "everything".
        assert_eq!(
            FlushRange::from_bounds(va(u64::MAX), u64::MAX),
            Err(FlushRangeError::Empty)
        );
        // The flush_tlb_mm (0, -1UL) idiom: its end does not round up, it is an error; the whole
        // address space is spelled FlushRange::All.
        assert_eq!(
            FlushRange::from_bounds(va(0), u64::MAX),
            Err(FlushRangeError::Overflow)
        );
        // Empty ranges (start == end), as 6.6-6.13 passed to notifiers.
        assert_eq!(
            FlushRange::from_bounds(va(0x4000), 0x4000),
            Err(FlushRangeError::Empty)
        );
        assert_eq!(
            FlushRange::from_bounds(va(0x5000), 0x4000),
            Err(FlushRangeError::Empty)
        );
        assert_eq!(
            FlushRange::pages(va(0x4000), 0),
            Err(FlushRangeError::Empty)
        );
        // Exclusive end, no +1 (the 2022 SMMU off-by-one).
        assert_eq!(
            FlushRange::from_bounds(va(0x1000), 0x2000),
            Ok(FlushRange::Page(va(0x1000)))
        );
        assert_eq!(
            FlushRange::from_bounds(va(0x1234), 0x2001),
            FlushRange::pages(va(0x1000), 2)
        );
        // The top page of the upper half: representable, and its end is never computed.
        let top = FlushRange::pages(va(0xFFFF_FFFF_FFFF_E000), 2).unwrap();
        assert_eq!(top.last_page(), Some(va(0xFFFF_FFFF_FFFF_F000)));
        assert_eq!(top.page_count(), Some(2));
        assert!(top.covers(va(u64::MAX)));
        assert_eq!(
            FlushRange::pages(va(0xFFFF_FFFF_FFFF_F000), 2),
            Err(FlushRangeError::Overflow)
        );
        assert_eq!(
            FlushRange::pages(va(0x1000), u64::MAX),
            Err(FlushRangeError::Overflow)
        );
        assert_eq!(
            FlushRange::pages(va(0x1001), 1),
            Err(FlushRangeError::Misaligned)
        );
        // Leaving the lower half, or starting in the non-canonical hole.
        assert_eq!(
            FlushRange::pages(va(0x0000_FFFF_FFFF_F000), 2),
            Err(FlushRangeError::NotCanonical)
        );
        assert_eq!(
            FlushRange::pages(va(0x0001_0000_0000_0000), 1),
            Err(FlushRangeError::NotCanonical)
        );
        assert!(FlushRange::pages(va(0x0000_FFFF_FFFF_F000), 1).is_ok());
        // All has no bounds at all.
        assert_eq!(FlushRange::All.page_count(), None);
        assert_eq!(FlushRange::All.start(), None);
        assert_eq!(FlushRange::All.last_page(), None);
        assert!(FlushRange::All.covers(va(0x1234)));
        assert_eq!(FlushRange::page(va(0x1FFF)), FlushRange::Page(va(0x1000)));
    }

    #[test]
    fn hull() {
        let a = FlushRange::page(va(0x1000));
        let b = FlushRange::page(va(0x5000));
        assert_eq!(a.hull(b), FlushRange::pages(va(0x1000), 5).unwrap());
        assert_eq!(b.hull(a), FlushRange::pages(va(0x1000), 5).unwrap());
        assert_eq!(a.hull(a), a);
        assert_eq!(a.hull(FlushRange::All), FlushRange::All);
        assert_eq!(
            a.hull(FlushRange::page(va(0xFFFF_0000_0000_0000))),
            FlushRange::All
        );
    }

    // -- operands ------------------------------------------------------------------------------

    #[test]
    fn operand_encodings() {
        assert_eq!(va_operand(5, va(0x1234_5000)), 0x0005_0000_0001_2345);
        assert_eq!(va_operand(5, va(0x1234_5FFF)), 0x0005_0000_0001_2345);
        assert_eq!(
            va_operand(0xFFFF, va(0x0000_FFFF_FFFF_F000)),
            0xFFFF_000F_FFFF_FFFF
        );
        // Upper-half VA: bits [43:0] carry VA[55:12].
        assert_eq!(
            va_operand(0, va(0xFFFF_0000_1234_5000)),
            0x0000_0FF0_0001_2345
        );
        assert_eq!(asid_operand(0x1234), 0x1234_0000_0000_0000);
        // ASID[63:48] TG[47:46]=01 SCALE[45:44] NUM[43:39] TTL[38:37]=0 BADDR[36:0].
        assert_eq!(range_operand(5, va(0x20_0000), 1, 7), 0x0005_5380_0000_0200);
        assert_eq!(range_operand(0, va(0), 0, 0), 0x0000_4000_0000_0000);
        assert_eq!(
            range_operand(0xABCD, va(0x0000_FFFF_FFFF_E000), 3, 31),
            0xABCD_7F8F_FFFF_FFFE
        );
        assert_eq!(range_pages(0, 0), 2);
        assert_eq!(range_pages(0, 31), 64);
        assert_eq!(range_pages(1, 0), 64);
        assert_eq!(range_pages(1, 7), 512);
        assert_eq!(range_pages(3, 31), MAX_TLBI_RANGE_PAGES);
        let op = TlbiOp {
            kind: TlbiKind::Rvae1is,
            operand: range_operand(9, va(0x20_0000), 1, 7),
        };
        assert_eq!(op.pages(), Some((0x200, 512)));
        assert_eq!(op.asid(), 9);
        assert_eq!(TlbFeatures::from_isar0(0), TlbFeatures { range: false });
        assert_eq!(
            TlbFeatures::from_isar0(1 << 56),
            TlbFeatures { range: false }
        );
        assert_eq!(
            TlbFeatures::from_isar0(2 << 56),
            TlbFeatures { range: true }
        );
    }

    // -- plans ---------------------------------------------------------------------------------

    #[test]
    fn plan_single_pages() {
        let p = inv(FlushRange::page(va(0x1234_5000)), true);
        let expect = [TlbiOp {
            kind: TlbiKind::Vale1is,
            operand: 0x0005_0000_0001_2345,
        }];
        assert_eq!(ops(&p, TlbScope::Asid(5), false), expect);
        assert_eq!(
            ops(&p, TlbScope::Asid(5), true),
            expect,
            "one page never needs a range op"
        );
        let p = inv(FlushRange::page(va(0x1234_5000)), false);
        assert_eq!(ops(&p, TlbScope::Asid(5), false)[0].kind, TlbiKind::Vae1is);
        // Kernel (global) scope: by VA for all ASIDs, no ASID field.
        let p = inv(FlushRange::page(va(0xFFFF_0000_0000_1000)), true);
        assert_eq!(
            ops(&p, TlbScope::Global, false),
            [TlbiOp {
                kind: TlbiKind::Vaale1is,
                operand: 0x0FF0_0000_0001
            }]
        );
        let p = inv(FlushRange::page(va(0xFFFF_0000_0000_1000)), false);
        assert_eq!(ops(&p, TlbScope::Global, false)[0].kind, TlbiKind::Vaae1is);
    }

    #[test]
    fn plan_all() {
        let p = inv(FlushRange::All, false);
        assert_eq!(
            ops(&p, TlbScope::Asid(3), false),
            [TlbiOp {
                kind: TlbiKind::Aside1is,
                operand: 3 << 48
            }]
        );
        assert_eq!(
            ops(&p, TlbScope::Asid(3), true),
            [TlbiOp {
                kind: TlbiKind::Aside1is,
                operand: 3 << 48
            }]
        );
        assert_eq!(
            ops(&p, TlbScope::Global, true),
            [TlbiOp {
                kind: TlbiKind::Vmalle1is,
                operand: 0
            }]
        );
    }

    #[test]
    fn plan_without_range_threshold() {
        let p = inv(FlushRange::pages(va(0x40_0000), 511).unwrap(), true);
        let v = ops(&p, TlbScope::Asid(1), false);
        assert_eq!(v.len(), 511);
        for (i, op) in v.iter().enumerate() {
            assert_eq!(
                *op,
                TlbiOp {
                    kind: TlbiKind::Vale1is,
                    operand: (1 << 48) | (0x400 + i as u64)
                }
            );
        }
        // 512 pages (2 MiB) and more: one ASID-wide TLBI.
        let p = inv(FlushRange::pages(va(0x40_0000), 512).unwrap(), true);
        assert_eq!(
            ops(&p, TlbScope::Asid(1), false),
            [TlbiOp {
                kind: TlbiKind::Aside1is,
                operand: 1 << 48
            }]
        );
        let p = inv(
            FlushRange::pages(va(0xFFFF_0000_0040_0000), 4096).unwrap(),
            false,
        );
        assert_eq!(
            ops(&p, TlbScope::Global, false),
            [TlbiOp {
                kind: TlbiKind::Vmalle1is,
                operand: 0
            }]
        );
    }

    #[test]
    fn plan_block_stride() {
        let p = Invalidation {
            range: FlushRange::pages(va(0x20_0000), 3 * 512).unwrap(),
            leaf_only: true,
            stride: Stride::Block2M,
        };
        assert_eq!(
            ops(&p, TlbScope::Asid(2), false),
            [0x200, 0x400, 0x600].map(|pg| TlbiOp {
                kind: TlbiKind::Vale1is,
                operand: (2 << 48) | pg
            })
        );
        // One block: one single TLBI even with TLBIRANGE.
        let one = Invalidation {
            range: FlushRange::pages(va(0x20_0000), 512).unwrap(),
            ..p
        };
        assert_eq!(ops(&one, TlbScope::Asid(2), true).len(), 1);
        // A misaligned "block" hint is ignored (per page: 512 => ASID-wide).
        let bad = Invalidation {
            range: FlushRange::pages(va(0x20_1000), 512).unwrap(),
            ..p
        };
        assert_eq!(
            ops(&bad, TlbScope::Asid(2), false)[0].kind,
            TlbiKind::Aside1is
        );
    }

    #[test]
    fn plan_range_yardsticks() {
        // 2 MiB with FEAT_TLBIRANGE: one RVALE1IS, NUM=7, SCALE=1 (Linux's case (b3)).
        let p = inv(FlushRange::pages(va(0x20_0000), 512).unwrap(), true);
        assert_eq!(
            ops(&p, TlbScope::Asid(4), true),
            [TlbiOp {
                kind: TlbiKind::Rvale1is,
                operand: range_operand(4, va(0x20_0000), 1, 7)
            }]
        );
        // 511 pages: 1 single + 2 range ops (case (b4)).
        let p = inv(FlushRange::pages(va(0x20_0000), 511).unwrap(), false);
        assert_eq!(
            ops(&p, TlbScope::Asid(4), true),
            [
                TlbiOp {
                    kind: TlbiKind::Vae1is,
                    operand: va_operand(4, va(0x20_0000))
                },
                TlbiOp {
                    kind: TlbiKind::Rvae1is,
                    operand: range_operand(4, va(0x20_1000), 1, 6)
                },
                TlbiOp {
                    kind: TlbiKind::Rvae1is,
                    operand: range_operand(4, va(0x3C_1000), 0, 30)
                },
            ]
        );
        // The largest range is one op; one more page pair falls back to ASIDE1IS.
        let p = inv(
            FlushRange::pages(va(0), MAX_TLBI_RANGE_PAGES).unwrap(),
            true,
        );
        assert_eq!(
            ops(&p, TlbScope::Asid(4), true),
            [TlbiOp {
                kind: TlbiKind::Rvale1is,
                operand: range_operand(4, va(0), 3, 31)
            }]
        );
        let p = inv(
            FlushRange::pages(va(0), MAX_TLBI_RANGE_PAGES + 2).unwrap(),
            true,
        );
        assert_eq!(
            ops(&p, TlbScope::Asid(4), true),
            [TlbiOp {
                kind: TlbiKind::Aside1is,
                operand: 4 << 48
            }]
        );
        // Two pages: a single range op (never NUM = SCALE = 0 with one page).
        let p = inv(FlushRange::pages(va(0x5000), 2).unwrap(), true);
        assert_eq!(
            ops(&p, TlbScope::Asid(4), true),
            [TlbiOp {
                kind: TlbiKind::Rvale1is,
                operand: range_operand(4, va(0x5000), 0, 0)
            }]
        );
        // Kernel ranges use the all-ASID range forms.
        let p = inv(
            FlushRange::pages(va(0xFFFF_0000_0020_0000), 512).unwrap(),
            false,
        );
        assert_eq!(ops(&p, TlbScope::Global, true)[0].kind, TlbiKind::Rvaae1is);
    }

    /// The range plan covers exactly the requested pages, without overlap, in at most five ops.
    #[test]
    fn plan_range_coverage_is_exact() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut sizes: Vec<u64> = (1..=600).collect();
        sizes.extend([
            1023,
            1024,
            1025,
            65535,
            65536,
            65537,
            2_000_000,
            MAX_TLBI_RANGE_PAGES - 1,
            MAX_TLBI_RANGE_PAGES,
        ]);
        sizes.extend((0..300).map(|_| 1 + rnd(MAX_TLBI_RANGE_PAGES)));
        for n in sizes {
            let start = rnd(1 << 20) << 12;
            let p = inv(FlushRange::pages(va(start), n).unwrap(), rnd(2) == 0);
            let v = ops(&p, TlbScope::Asid(77), true);
            assert!(v.len() <= 5, "{n} pages took {} ops", v.len());
            let mut next = start >> 12;
            for op in &v {
                assert_eq!(op.asid(), 77);
                assert_eq!(op.kind.is_range(), op.pages().unwrap().1 > 1);
                let (first, count) = op.pages().unwrap();
                assert_eq!(first, next, "{n} pages: gap or overlap");
                next += count;
            }
            assert_eq!(next, (start >> 12) + n, "{n} pages: wrong coverage");
            if n < MAX_TLBI_OPS {
                let w = ops(&p, TlbScope::Asid(77), false);
                assert_eq!(w.len() as u64, n);
            }
        }
    }

    // -- execution -----------------------------------------------------------------------------

    struct Fx {
        mem: FakeMem,
        log: Log,
        tlb: RecordingTlb,
        list: SecondaryTlbs,
        stats: FlushStats,
    }

    impl Fx {
        fn new(range: bool) -> Self {
            let log = Log::default();
            let list = SecondaryTlbs::new();
            list.set_mode_override(Some(crate::mm::notifier::SecondaryTlbMode::Sync));
            Self {
                mem: FakeMem::new(16),
                tlb: RecordingTlb::new(range, log.clone()),
                log,
                list,
                stats: FlushStats::default(),
            }
        }
        fn run(&self, t: TlbFlush, scope: TargetScope<'_>) -> Result<FlushDone, FlushError> {
            execute(
                t,
                &FlushTarget {
                    tlb: &self.tlb,
                    scope,
                    secondaries: Some(&self.list),
                    frames: &self.mem,
                    stats: Some(&self.stats),
                },
            )
        }
    }

    const ROOT: PhysAddr = PhysAddr(0x4000_0000);

    #[test]
    fn execute_orders_cpu_secondary_completion_then_free() {
        let fx = Fx::new(false);
        let smmu = RecordingSecondary::new("smmu", fx.log.clone());
        fx.list.register(smmu.clone());
        let frame = crate::mm::pgtable::FrameSource::alloc_zeroed_frame(&fx.mem).unwrap();
        let range = FlushRange::pages(va(0x7000), 3).unwrap();
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Unmap,
            inv(range, false),
            false,
            vec![frame],
        );
        fx.run(t, TargetScope::Asid(9)).unwrap();
        let vae = |pg: u64| {
            Ev::Tlbi(TlbiOp {
                kind: TlbiKind::Vae1is,
                operand: (9 << 48) | pg,
            })
        };
        assert_eq!(
            fx.log.take(),
            vec![
                Ev::DsbIshst,
                vae(7),
                vae(8),
                vae(9),
                Ev::Secondary {
                    name: "smmu".into(),
                    asid: 9,
                    range,
                    cause: FlushCause::Unmap
                },
                Ev::DsbIsh,
                Ev::Isb,
            ]
        );
        assert!(!fx.mem.is_allocated(frame));
        let s = fx.stats.snapshot();
        assert_eq!(
            (
                s.range_flushes,
                s.cpu_tlbis,
                s.secondary_notifications,
                s.frames_freed
            ),
            (1, 3, 1, 1)
        );
    }

    /// A TLB executor that runs a hook at its `DSB ISHST` (another CPU acting at that moment).
    struct HookTlb<'a> {
        inner: RecordingTlb,
        hook: &'a (dyn Fn() + Send + Sync),
    }

    impl TlbMaintenance for HookTlb<'_> {
        fn features(&self) -> TlbFeatures {
            self.inner.features()
        }
        fn dsb_ishst(&self) {
            self.inner.dsb_ishst();
            (self.hook)();
        }
        fn tlbi(&self, op: TlbiOp) {
            self.inner.tlbi(op);
        }
        fn dsb_ish(&self) {
            self.inner.dsb_ish();
        }
        fn isb(&self) {
            self.inner.isb();
        }
        fn flush_all_cpu_tlbs(&self) {
            self.inner.flush_all_cpu_tlbs();
        }
        unsafe fn write_ttbr0(&self, value: u64) {
            // SAFETY: forwarded to the recording fake.
            unsafe { self.inner.write_ttbr0(value) };
        }
    }

    /// The ASID of a live context is read after the `DSB ISHST`: if another CPU re-tags the
    /// context at that moment, the TLBI and the secondary TLBs use the new value.
    #[test]
    fn context_asid_is_read_after_the_store_barrier() {
        let alloc = AsidAllocator::new(4, 1).unwrap();
        let ctx = AsidContext::new();
        assert_eq!(alloc.assign(&ctx), 1);
        let others: Vec<AsidContext> = (0..16).map(|_| AsidContext::new()).collect();
        for o in &others {
            let _ = alloc.activate(0, o).unwrap();
        }
        assert_eq!(alloc.rollovers(), 1);
        assert_eq!(
            alloc.asid_of(&ctx),
            Some(1),
            "stale, and 1 now belongs to someone else"
        );
        let hook = || {
            let _ = alloc.activate(0, &ctx).unwrap();
        };
        let log = Log::default();
        let tlb = HookTlb {
            inner: RecordingTlb::new(false, log.clone()),
            hook: &hook,
        };
        let list = SecondaryTlbs::new();
        list.set_mode_override(Some(crate::mm::notifier::SecondaryTlbMode::Sync));
        list.register(RecordingSecondary::new("smmu", log.clone()));
        let mem = FakeMem::new(1);
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Protect,
            inv(FlushRange::page(va(0x1000)), true),
            false,
            vec![],
        );
        let target = FlushTarget {
            tlb: &tlb,
            scope: TargetScope::Context(&alloc, &ctx),
            secondaries: Some(&list),
            frames: &mem,
            stats: None,
        };
        execute(t, &target).unwrap();
        let new = alloc.asid_of(&ctx).unwrap();
        assert_ne!(new, 1);
        let ev = log.take();
        assert_eq!(
            ev[1],
            Ev::Tlbi(TlbiOp {
                kind: TlbiKind::Vale1is,
                operand: va_operand(new, va(0x1000))
            })
        );
        assert!(matches!(&ev[2], Ev::Secondary { asid, .. } if *asid == new));
    }

    #[test]
    fn failing_secondary_keeps_frames() {
        let fx = Fx::new(true);
        let ok = RecordingSecondary::new("ok", fx.log.clone());
        let bad = RecordingSecondary::new("bad", fx.log.clone());
        bad.fail.store(true, core::sync::atomic::Ordering::Relaxed);
        fx.list.register(bad.clone());
        fx.list.register(ok.clone());
        let frame = crate::mm::pgtable::FrameSource::alloc_zeroed_frame(&fx.mem).unwrap();
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::MergeBlock,
            inv(FlushRange::All, false),
            false,
            vec![frame],
        );
        let e = fx.run(t, TargetScope::Asid(3)).unwrap_err();
        assert_eq!(
            e,
            FlushError::Secondary {
                name: "bad".into(),
                error: SecondaryTlbError::Timeout,
                failures: 1
            }
        );
        let log = fx.log.take();
        // Both secondaries were tried, and the CPU sequence still completed.
        assert_eq!(
            log.iter()
                .filter(|e| matches!(e, Ev::Secondary { .. }))
                .count(),
            2
        );
        assert_eq!(&log[log.len() - 2..], &[Ev::DsbIsh, Ev::Isb]);
        assert!(
            fx.mem.is_allocated(frame),
            "a secondary walker may still use it"
        );
        assert_eq!(fx.stats.snapshot().secondary_failures, 1);
    }

    #[test]
    fn kernel_scope_never_notifies() {
        let fx = Fx::new(false);
        fx.list
            .register(RecordingSecondary::new("smmu", fx.log.clone()));
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Protect,
            inv(FlushRange::page(va(0xFFFF_0000_0000_0000)), true),
            false,
            vec![],
        );
        fx.run(t, TargetScope::Global).unwrap();
        assert!(
            fx.log
                .take()
                .iter()
                .all(|e| !matches!(e, Ev::Secondary { .. }))
        );
        let fx2 = Fx::new(false);
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Protect,
            inv(FlushRange::page(va(0xFFFF_0000_0000_0000)), true),
            false,
            vec![],
        );
        flush_kernel(t, &fx2.tlb, &fx2.mem).unwrap();
        assert_eq!(
            fx2.log.take()[1],
            Ev::Tlbi(TlbiOp {
                kind: TlbiKind::Vaale1is,
                operand: 0x0FF0_0000_0000
            })
        );
    }

    #[test]
    fn barrier_only_and_noop() {
        let fx = Fx::new(false);
        fx.list
            .register(RecordingSecondary::new("smmu", fx.log.clone()));
        fx.run(
            TlbFlush::barrier_only(ROOT, FlushCause::Map),
            TargetScope::Asid(1),
        )
        .unwrap();
        assert_eq!(fx.log.take(), vec![Ev::DsbIshst, Ev::Isb]);
        let t = TlbFlush::nothing(ROOT, FlushCause::Protect);
        assert!(t.is_noop());
        fx.run(t, TargetScope::Asid(1)).unwrap();
        assert_eq!(fx.log.take(), vec![]);
        assert_eq!(fx.stats.snapshot().barrier_only, 1);
    }

    #[test]
    fn merge_batches_and_proves_all() {
        let up = |p| {
            TlbFlush::invalidate(
                ROOT,
                FlushCause::Protect,
                inv(FlushRange::page(va(p)), true),
                true,
                vec![],
            )
        };
        let mut a = up(0x1000);
        let b = up(0x3000);
        let (ia, ib) = (a.id(), b.id());
        a.merge(b);
        assert_eq!(a.range(), Some(FlushRange::pages(va(0x1000), 3).unwrap()));
        assert!(a.upgrade_only() && a.invalidation().unwrap().leaf_only);
        a.merge(TlbFlush::barrier_only(ROOT, FlushCause::Map));
        assert!(a.upgrade_only(), "a new mapping adds nothing to invalidate");
        assert_eq!(a.cause(), FlushCause::Batch);
        let down = TlbFlush::invalidate(
            ROOT,
            FlushCause::Unmap,
            inv(FlushRange::page(va(0x9000)), false),
            false,
            vec![],
        );
        let id_down = down.id();
        a.merge(down);
        assert!(!a.upgrade_only() && !a.invalidation().unwrap().leaf_only);
        let fx = Fx::new(false);
        let done = fx.run(a, TargetScope::Asid(1)).unwrap();
        assert!(done.covers(ia) && done.covers(ib) && done.covers(id_down));
        // Barrier-only first, invalidation merged in: takes the other's upgrade flag.
        let mut m = TlbFlush::barrier_only(ROOT, FlushCause::Map);
        m.merge(up(0x1000));
        assert!(m.upgrade_only());
        fx.run(m, TargetScope::Asid(1)).unwrap();
    }

    #[test]
    fn dropped_token_leaks_instead_of_freeing() {
        let mem = FakeMem::new(4);
        let frame = crate::mm::pgtable::FrameSource::alloc_zeroed_frame(&mem).unwrap();
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Unmap,
            inv(FlushRange::All, false),
            false,
            vec![frame],
        );
        drop(t);
        assert!(mem.is_allocated(frame));
        let t = TlbFlush::invalidate(
            ROOT,
            FlushCause::Unmap,
            inv(FlushRange::All, false),
            false,
            vec![frame],
        );
        // SAFETY: test: the frame was never part of a live table.
        let done = unsafe { complete_without_tlb(t, &mem) };
        assert!(!mem.is_allocated(frame));
        drop(done);
        let _ = Arc::new(0);
    }
}
