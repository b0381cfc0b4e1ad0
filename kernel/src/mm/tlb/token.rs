//! The flush token: what a page-table change requires before it is complete, and the proof
//! ([`FlushDone`]) that it was.

use alloc::{boxed::Box, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::mm::{addr::PhysAddr, tlb::range::FlushRange};

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
    /// Mappings moved to another VA (mremap): the old VAs are invalidated.
    Move,
    /// A batch that ended while another batch of the same address space was still in flight:
    /// the whole range it was asked to change is flushed, whatever it cleared itself, so it
    /// cannot return before the translations the other batch cleared are gone (Linux's
    /// `mm_tlb_flush_nested`).
    NestedBatch,
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
    /// Every changed leaf is at this translation table level (3: pages, 2: 2 MiB blocks, 1:
    /// 1 GiB blocks); `None` when mixed or unknown.
    pub level: Option<u8>,
}

/// What a secondary TLB may use to invalidate less (the SMMU's `Leaf` and `TTL` fields, IHI
/// 0070 §4.4.1): only leaf entries changed, all at one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafHint {
    /// Only leaf entries changed and no table was freed: walk caches may stay.
    pub leaf_only: bool,
    /// The level of every changed leaf; only given when `leaf_only` (a freed or changed table
    /// may have cached walks at any level).
    pub level: Option<u8>,
}

impl LeafHint {
    /// Nothing known.
    pub const UNKNOWN: Self = Self {
        leaf_only: false,
        level: None,
    };
}

impl Invalidation {
    /// What secondary TLBs may rely on for this invalidation.
    pub const fn hint(&self) -> LeafHint {
        LeafHint {
            leaf_only: self.leaf_only,
            level: if self.leaf_only { self.level } else { None },
        }
    }
}

static NEXT_FLUSH_ID: AtomicU64 = AtomicU64::new(1);

/// Work that may run only once a flush completed on the CPU and on every secondary TLB —
/// typically freeing the data frames a change unmapped.
pub type Deferred = Box<dyn FnOnce() + Send>;

/// What a page-table change requires before it is complete: a TLB invalidation (or just a
/// barrier), and table frames that may be freed only after it.
///
/// Every mutating page-table operation returns one. It must be passed to the flush executor
/// ([`AddressSpace::flush`](crate::mm::address_space::AddressSpace::flush),
/// [`flush_kernel`](super::flush_kernel), or for tables that were never live
/// [`complete_without_tlb`](super::complete_without_tlb)); dropping it un-flushed is a bug,
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
    deferred: Vec<Deferred>,
    gathered: bool,
    /// Set by [`TlbFlush::force_nested`]: what the token invalidated before it was widened.
    own: Option<(Invalidation, FlushCause, bool)>,
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
            deferred: Vec::new(),
            gathered: false,
            own: None,
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
        !self.barrier && self.inval.is_none() && self.freed.is_empty() && self.deferred.is_empty()
    }

    /// Adds work that runs only after the flush completed everywhere (CPU TLBs, every secondary
    /// TLB and its completion), after the table frames were freed. If the flush fails the work
    /// never runs: what it would free is leaked rather than risk a device reaching it.
    pub fn defer(&mut self, work: Deferred) {
        self.deferred.push(work);
    }

    /// Number of deferred work items.
    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    /// Marks the token as the end of a batch (the `gather-late` mode reorders only those).
    pub(crate) fn mark_gathered(&mut self) {
        self.gathered = true;
    }

    /// Whether the token ends a batch.
    pub fn is_gathered(&self) -> bool {
        self.gathered
    }

    /// Makes the token invalidate all of `range` (walk caches included) as a
    /// [`FlushCause::NestedBatch`], whatever it changed itself: the flush of a batch that ran
    /// while another batch of the address space was in flight.
    pub(crate) fn force_nested(&mut self, range: FlushRange) {
        self.own = self.inval.map(|i| (i, self.cause, self.upgrade_only));
        let range = match self.inval {
            Some(inv) => inv.range.hull(range),
            None => range,
        };
        self.inval = Some(Invalidation {
            range,
            leaf_only: false,
            stride: Stride::Page,
            level: None,
        });
        self.upgrade_only = false;
        self.barrier = true;
        self.cause = FlushCause::NestedBatch;
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
        self.deferred.append(&mut other.deferred);
        self.gathered |= other.gathered;
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
                    level: if a.level == b.level { a.level } else { None },
                })
            }
        };
    }

    /// Disarms the token and hands out its parts.
    pub(super) fn take(mut self) -> Parts {
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
            deferred: core::mem::take(&mut self.deferred),
            gathered: self.gathered,
            own: self.own,
        }
    }
}

/// A disarmed token's contents, for the executor.
pub(super) struct Parts {
    pub(super) done: FlushDone,
    pub(super) cause: FlushCause,
    pub(super) inval: Option<Invalidation>,
    pub(super) upgrade_only: bool,
    pub(super) barrier: bool,
    pub(super) freed: Vec<PhysAddr>,
    pub(super) deferred: Vec<Deferred>,
    pub(super) gathered: bool,
    /// For a widened nested-batch flush: the batch's own invalidation (cause, upgrade-only)
    /// before widening, if it had one.
    pub(super) own: Option<(Invalidation, FlushCause, bool)>,
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
            .field("deferred", &self.deferred.len())
            .field("gathered", &self.gathered)
            .finish()
    }
}

impl Drop for TlbFlush {
    fn drop(&mut self) {
        if self.armed
            && (self.inval.is_some() || !self.freed.is_empty() || !self.deferred.is_empty())
        {
            log::error!("TLB flush dropped without being performed ({self:?}); leaking its frames");
            // The deferred work may free memory a walker still reaches: never run, never drop.
            core::mem::forget(core::mem::take(&mut self.deferred));
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
