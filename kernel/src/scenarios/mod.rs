//! The invalidation scenarios: on an emulated SMMUv3 with a real DMA master (QEMU's edu), the
//! flush paths must keep the SMMU's TLB coherent with the CPU's page tables — and each
//! scenario's negative control (the same steps with the secondary invalidation disabled, in
//! `legacy` or `off` mode) must observe the failure, or the scenario could not detect the bug.
//!
//! Each scenario is a function of the mode returning an [`Outcome`]; the on-target tests
//! assert on it and the main job prints it as a table row.

pub mod batching;
pub mod blocks;
pub mod moves;
mod outcome;
pub use outcome::Outcome;
pub mod permission;
pub mod ranges;
pub mod sharing;
pub mod unmap_remap;

use crate::mm::tlb::SecondaryTlbMode;
use alloc::string::String;

/// A scenario: run it in a mode, get what the device did.
pub type Scenario = fn(SecondaryTlbMode) -> Result<Outcome, String>;

/// Further acts of the main job: (title, introduction, scenario), each run with the SMMU left
/// out (`off`) and told (`sync`).
pub static DEMO_EXTRAS: &[(&str, &str, Scenario)] = &[
    (
        "Act 3: a range too large for page-by-page invalidation",
        "512 and 600 pages cached, then upgraded in one operation. Like Linux (512 pages at\n\
         4 KiB), the planner sends one TLBI_NH_ASID instead of hundreds of commands:",
        ranges::range_protect_large,
    ),
    (
        "Act 4: the whole address space",
        "Pages at the lowest and the highest VA change, then one whole-address-space flush —\n\
         an explicit kind, never a wrapping or empty range:",
        ranges::whole_address_space,
    ),
];
