//! TLB maintenance: the flush of one page-table change, end to end, on the CPU and on every
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
//!    [`TlbFlush`] token describing what it changed, over one [`VaRange`]);
//! 2. `DSB ISHST`, so that the stores are visible to every table walker, CPU or SMMU;
//! 3. the CPU `TLBI`s (planned by [`plan`]);
//! 4. every registered secondary TLB is invalidated for the same ASID and range, and waited for
//!    ([`SecondaryTlbs::notify`]) — *between* the CPU TLBI and the final DSB, as Linux ≥ 6.6 does;
//! 5. `DSB ISH` (the CPU TLBIs are complete everywhere) and `ISB` (this CPU's own instruction
//!    stream sees the result; the kernel dereferences TTBR0 addresses directly at EL1);
//! 6. only now, the table frames the change made unreachable are freed.
//!
//! # Files, one concept each (dependencies point upwards only)
//!
//! | File | Owns |
//! |---|---|
//! | [`range`] | [`VaRange`] and [`FlushRange`]: the one range type, from page table to SMMU |
//! | [`token`] | [`TlbFlush`] (`#[must_use]`), [`FlushCause`], [`Invalidation`], [`FlushDone`] |
//! | [`cpu_plan`] | the CPU `TLBI` plan and operand encodings (pure) |
//! | [`secondary`] | the [`SecondaryTlb`] trait, the registration list, the notifier mode |
//! | [`executor`] | [`execute`]: steps 2–6 above, with [`FlushStats`] and [`FlushError`] |
//! | `arch` | the aarch64 instructions behind [`TlbMaintenance`] (`_arch/aarch64/mm/tlb.rs`) |

pub mod cpu_plan;
pub mod executor;
pub mod range;
pub mod secondary;
pub mod token;

#[cfg(target_os = "none")]
#[path = "../../_arch/aarch64/mm/tlb.rs"]
pub mod arch;

#[cfg(test)]
mod tests;

pub use cpu_plan::{
    MAX_TLBI_OPS, MAX_TLBI_RANGE_PAGES, TlbFeatures, TlbScope, TlbiKind, TlbiOp, TlbiPlan,
    asid_operand, plan, range_operand, range_pages, va_operand,
};
pub use executor::{
    FlushError, FlushStats, FlushStatsSnapshot, FlushTarget, TargetScope, TlbMaintenance,
    complete_without_tlb, execute, flush_kernel,
};
pub use range::{FlushRange, RangeError, VaRange};
pub use secondary::{
    Delivery, SecondaryTlb, SecondaryTlbError, SecondaryTlbFailure, SecondaryTlbHandle,
    SecondaryTlbMode, SecondaryTlbs,
};
pub use token::{Deferred, FlushCause, FlushDone, Invalidation, LeafHint, Stride, TlbFlush};
