//! The invalidation scenarios: on an emulated SMMUv3 with a real DMA master (QEMU's edu), the
//! flush paths must keep the SMMU's TLB coherent with the CPU's page tables — and each
//! scenario's negative control (the same steps with the secondary invalidation disabled, in
//! `legacy` or `off` mode) must observe the failure, or the scenario could not detect the bug.
//!
//! Each scenario is a function of the mode returning an [`Outcome`]; the on-target tests
//! assert on it and the main job prints it as a table row.

pub mod batching;
pub mod blocks;
pub mod costs;
pub mod model;
pub mod moves;
mod outcome;
pub use outcome::Outcome;
pub mod permission;
pub mod ranges;
pub mod sharing;
pub mod stress;
pub mod unmap_remap;

use crate::mm::tlb::SecondaryTlbMode;
use alloc::string::String;

/// A scenario: run it in a mode, get what the device did.
pub type Scenario = fn(SecondaryTlbMode) -> Result<Outcome, String>;

/// Further acts of the main job: (title, introduction, scenario, the mode that shows the bug),
/// each run in that mode and then told correctly (`sync`).
pub static DEMO_EXTRAS: &[(&str, &str, Scenario, SecondaryTlbMode)] = &[
    (
        "Act 3: a range too large for page-by-page invalidation",
        "512 and 600 pages cached, then upgraded in one operation. Linux 6.6's policy\n\
         (smmu.inval=linux66) sends one TLBI_NH_ASID, which empties the device's whole IOTLB\n\
         for the ASID; the default (precise) sends one range command covering the range:",
        ranges::range_protect_large,
        SecondaryTlbMode::Off,
    ),
    (
        "Act 4: the whole address space",
        "Pages at the lowest and the highest VA change, then one whole-address-space flush —\n\
         an explicit kind, never a wrapping or empty range:",
        ranges::whole_address_space,
        SecondaryTlbMode::Off,
    ),
    (
        "Act 5: two CPUs unmap the same pages at once",
        "The first batch clears the pages and has not flushed yet; the second finds nothing\n\
         left to clear. If it returned at once, or flushed only the CPU's TLB ('nested-unaware'),\n\
         the device could still write the unmapped page. It must flush its whole range, the\n\
         SMMU included, before it returns ('sync'):",
        batching::nested_unmap,
        SecondaryTlbMode::NestedUnaware,
    ),
    (
        "Act 6: mremap, then a new page at the old address",
        "move_range moves P from X to Y and the kernel maps a new page at X. If the SMMU hears\n\
         of the move only after it returned ('move-late'), the device's write to X lands in the\n\
         moved page. Told before the move returns ('sync'), it reaches the new page:",
        moves::move_range_remap_old,
        SecondaryTlbMode::MoveLate,
    ),
];
