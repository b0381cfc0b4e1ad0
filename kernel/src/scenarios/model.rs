//! Probes of what the SMMU model does where the architecture leaves it open, measured on target
//! (not taken from documentation) so that `scripts/matrix` can report them per QEMU version:
//!
//! - **IOTLB capacity**: how many other translations the device can make before a cached entry
//!   that nothing invalidated is gone. The entry is made stale on purpose (its page is remapped
//!   with the SMMU left out, `off`), so whether it is still cached shows in memory: a write
//!   lands in the old frame while it is. QEMU 7.2 empties its whole IOTLB when an insert finds
//!   it full, so the answer there is a capacity, not an eviction order.
//! - **Fault caching**: a translation fault, then the page is mapped with only a barrier (no
//!   invalidation, as for any new mapping): a model that cached the fault keeps faulting.
//!
//! - **Range invalidation semantics**: three cached pages made stale; one range command of
//!   `NUM = 1` (two pages) from the first; exactly the first two must walk afresh, the third
//!   keep its stale entry. And a single-address command (`TG = 0`) at a page inside a cached
//!   2 MiB block: the whole block entry must go.
//!
//! The results are printed as one `smmu-model ...` line; the probes fail only when they cannot
//! run, never on a value (a different model is not a bug).

use crate::testkit::{Frames, IOVA_BASE, Rig, fault_of, range};
use crate::{
    mm::{PAGE_SIZE, pgtable::Perms, tlb::SecondaryTlbMode},
    println,
};
use alloc::{format, string::String, vec::Vec};

/// Where the probed page lives, and the run of other pages touched after it.
const PROBE_VA: u64 = IOVA_BASE + 0x50_0000_0000;
const OTHERS_VA: u64 = IOVA_BASE + 0x60_0000_0000;
/// The largest capacity probed.
const MAX_OTHERS: u64 = 1024;

/// Whether the stale entry of the probed page survives `others` translations of other pages.
fn survives(rig: &Rig, others: u64, old: &Frames, new: &Frames) -> Result<bool, String> {
    rig.map(PROBE_VA, old.pa(0), 1, Perms::RW)?;
    rig.device_probe(PROBE_VA)
        .map_err(|e| format!("caching the probed page: {e}"))?;
    // Stale on purpose: remapped without telling the SMMU.
    rig.space
        .set_secondary_mode_override(Some(SecondaryTlbMode::Off));
    let moved = rig
        .space
        .remap(range(PROBE_VA, 1)?, new.pa(0))
        .map_err(|e| format!("remap: {e}"));
    rig.space
        .set_secondary_mode_override(Some(SecondaryTlbMode::Sync));
    moved?;
    for i in 0..others {
        rig.device_probe(OTHERS_VA + i * PAGE_SIZE)
            .map_err(|e| format!("translation {i} of the other pages: {e}"))?;
    }
    old.fill(0, 16, 0);
    new.fill(0, 16, 0);
    rig.load_device(0x7A, 16)?;
    rig.device_writes(PROBE_VA, 16)
        .map_err(|e| format!("write to the probed page: {e}"))?;
    let stale = old.holds(0, 16, 0x7A);
    // Forget everything before the next trial.
    forget_run(rig, PROBE_VA, 1)?;
    Ok(stale)
}

/// The number of other translations after which the entry is gone (`None`: it survived
/// [`MAX_OTHERS`]).
fn iotlb_capacity(rig: &Rig) -> Result<Option<u64>, String> {
    let old = Frames::page()?;
    let new = Frames::page()?;
    let others = Frames::alloc(MAX_OTHERS, PAGE_SIZE)?;
    rig.map(OTHERS_VA, others.pa(0), MAX_OTHERS, Perms::R)?;
    if !survives(rig, 0, &old, &new)? {
        return Err("the stale entry was gone at once: the model does not cache".into());
    }
    if survives(rig, MAX_OTHERS, &old, &new)? {
        return Ok(None);
    }
    // Survives `lo` others, gone after `hi`.
    let (mut lo, mut hi) = (0, MAX_OTHERS);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if survives(rig, mid, &old, &new)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(hi))
}

/// Whether a translation fault is cached (the page then mapped without an invalidation).
fn faults_cached(rig: &Rig) -> Result<bool, String> {
    let p = Frames::page()?;
    let va = PROBE_VA + 0x10_0000;
    rig.load_device(0x3C, 16)?;
    let first = fault_of(rig.device_writes(va, 16), "write to an unmapped page")?;
    if first.is_none() {
        return Err("the write to an unmapped page did not fault".into());
    }
    rig.map(va, p.pa(0), 1, Perms::RW)?;
    let again = fault_of(rig.device_writes(va, 16), "write after mapping")?;
    Ok(again.is_some() || !p.holds(0, 16, 0x3C))
}

/// Caches `pages` pages at `va` (mapped to `old`), then remaps them to `new` with the SMMU left
/// out: every cached entry is stale. With `block`, one 2 MiB block instead.
fn stale_run(
    rig: &Rig,
    va: u64,
    pages: u64,
    old: &Frames,
    new: &Frames,
    block: bool,
) -> Result<(), String> {
    crate::testkit::map_with(&rig.space, va, old.pa(0), pages, Perms::RW, block)?;
    for i in 0..pages.min(4) {
        rig.device_probe(va + i * PAGE_SIZE)
            .map_err(|e| format!("caching page {i}: {e}"))?;
    }
    rig.space
        .set_secondary_mode_override(Some(SecondaryTlbMode::Off));
    let moved = rig
        .space
        .remap(range(va, pages)?, new.pa(0))
        .map_err(|e| format!("remap: {e}"));
    rig.space
        .set_secondary_mode_override(Some(SecondaryTlbMode::Sync));
    moved
}

/// Flushes the whole ASID and unmaps the run, so the next probe starts clean.
fn forget_run(rig: &Rig, va: u64, pages: u64) -> Result<(), String> {
    rig.space
        .flush_all()
        .map_err(|e| format!("flush_all: {e}"))?;
    let t = rig
        .space
        .unmap(range(va, pages)?)
        .map_err(|e| format!("unmap: {e}"))?;
    rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
    Ok(())
}

/// Whether page `i` of the run is stale (the device's write lands in the old frame).
fn page_stale(rig: &Rig, va: u64, i: u64, old: &Frames) -> Result<bool, String> {
    old.fill(i * PAGE_SIZE, 16, 0);
    rig.load_device(0x6B, 16)?;
    rig.device_writes(va + i * PAGE_SIZE, 16)
        .map_err(|e| format!("write to page {i}: {e}"))?;
    Ok(old.holds(i * PAGE_SIZE, 16, 0x6B))
}

/// (a two-page range command covers exactly two pages, a single-address command drops a block).
fn invalidation_semantics(rig: &Rig) -> Result<(bool, bool), String> {
    use crate::mm::addr::BLOCK_2M;
    use smmu::{Command, command::TlbiRange, features::Granule};
    let iommu = crate::iommu::get().ok_or("no SMMU")?;
    let asid = rig.space.asid();
    let va = PROBE_VA + 0x20_0000;
    let (old, new) = (Frames::alloc(3, PAGE_SIZE)?, Frames::alloc(3, PAGE_SIZE)?);
    stale_run(rig, va, 3, &old, &new, false)?;
    let two = TlbiRange::new(Granule::Size4K, 1, 0, 0).map_err(|e| format!("{e}"))?;
    iommu
        .submit_commands(&[Command::TlbiNhVa {
            asid,
            addr: va,
            leaf: false,
            range: Some(two),
        }])
        .map_err(|e| format!("range command: {e}"))?;
    let stale: Vec<bool> = (0..3)
        .map(|i| page_stale(rig, va, i, &old))
        .collect::<Result<_, _>>()?;
    let range_exact = stale == [false, false, true];
    forget_run(rig, va, 3)?;

    let bva = PROBE_VA + 0x40_0000;
    let (bold, bnew) = (Frames::alloc(512, BLOCK_2M)?, Frames::alloc(512, BLOCK_2M)?);
    stale_run(rig, bva, 512, &bold, &bnew, true)?;
    iommu
        .submit_commands(&[Command::TlbiNhVa {
            asid,
            addr: bva + 5 * PAGE_SIZE,
            leaf: false,
            range: None,
        }])
        .map_err(|e| format!("single-address command: {e}"))?;
    let block_dropped = !page_stale(rig, bva, 0, &bold)?;
    forget_run(rig, bva, 512)?;
    Ok((range_exact, block_dropped))
}

crate::ktest! {
    /// Measures the SMMU model's IOTLB capacity and whether it caches faults; prints them as an
    /// `smmu-model` line for `scripts/matrix`.
    fn smmu_model_probes() {
        // About 5,000 transfers: too slow polled, and the completion mode changes nothing.
        crate::ktest::require(
            crate::init::config().edu_completion != crate::drivers::edu::Completion::Poll,
            "interrupt-driven DMA completion (the probes are not run with edu.completion=poll)",
        )?;
        let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
        let capacity = iotlb_capacity(&rig)?;
        let cached = faults_cached(&rig)?;
        let (range_exact, block_dropped) = invalidation_semantics(&rig)?;
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "smmu-model iotlb_capacity={} faults_cached={} range_exact={} va_drops_block={}",
            capacity.map_or(format!(">{MAX_OTHERS}"), |c| format!("{c}")),
            yes(cached),
            yes(range_exact),
            yes(block_dropped)
        );
        Ok(())
    }
}
