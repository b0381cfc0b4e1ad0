//! Scenarios 6-8: one flush covering many pages.
//!
//! 6. A small range (2, 5 and 17 pages) upgraded RO→RW in one `protect`: one flush, planned
//!    as range-form `TLBI_NH_VA` commands (the SMMU has RIL). Every page must come out fresh,
//!    the last one included; an off-by-one in a range's size would miss exactly that page.
//! 7. A range at and above the ASID-wide threshold (512 and 600 pages): one `TLBI_NH_ASID` +
//!    one `CMD_SYNC`, however the CPU side of the same flush is planned.
//! 8. The whole address space: two pages at the far ends of the lower half (VA 0x1000 and the
//!    last page below 2^48, 0xFFFF_FFFF_F000, which QEMU 7.2 translates through TTB0), changed
//!    separately, flushed once with the tokens merged and widened to the explicit
//!    whole-address-space kind: one `TLBI_NH_ASID`, never a range that wraps.
//!
//! QEMU's IOTLB flushes itself when it already holds 256 entries, which would hide a missing
//! invalidation. The scenarios cache well under that (at most 67 sampled pages of a large
//! range), so the negative controls (`off`) can see their stale entries.

use super::Outcome;
use crate::testkit::{
    Frames, IOVA_BASE, PAGES_CHANGED, PageSweep, Rig, commands_during, expect_planned, fault_of,
    planned_commands, planner_ril, policy, range,
};
use crate::{
    drivers::dma::DmaFaultKind,
    kassert, kassert_eq,
    mm::{PAGE_SIZE, addr::USER_VA_END, pgtable::Perms, tlb::SecondaryTlbMode},
};
use alloc::{format, string::String, vec::Vec};
use smmu::{InvalPolicy, planner::FlushKind};

/// Bytes each checking write moves (4 fault events when it faults).
const CHECK_LEN: u32 = 16;
/// What the device writes in the checks.
const PATTERN: u8 = 0xC7;

/// What a page held before the checks: distinct per page, never [`PATTERN`].
fn prefill(index: u64) -> u8 {
    0x10 + (index % 0x60) as u8
}

/// Map `pages` read-only pages at `va` (one `map` over one contiguous block, pages only), fill
/// the sampled ones, and let the device read each of them so the SMMU caches read-only
/// entries.
fn cached_read_only(rig: &Rig, va: u64, pages: u64, sample: &[u64]) -> Result<Frames, String> {
    let frames = Frames::alloc(pages, PAGE_SIZE)?;
    for &i in sample {
        frames.fill(i * PAGE_SIZE, PAGE_SIZE as usize, prefill(i));
    }
    rig.map(va, frames.pa(0), pages, Perms::R)?;
    for &i in sample {
        rig.device_probe(va + i * PAGE_SIZE)
            .map_err(|e| format!("setup: device read of page {i}: {e}"))?;
    }
    Ok(frames)
}

/// The device writes every sampled page (the buffer must hold [`PATTERN`]); a page is fresh
/// when the write went through and landed in its frame.
fn writes_land(rig: &Rig, frames: &Frames, va: u64, sample: &[u64]) -> Result<PageSweep, String> {
    let mut sweep = PageSweep::default();
    for &i in sample {
        let fault = fault_of(
            rig.device_writes(va + i * PAGE_SIZE, CHECK_LEN),
            &format!("device write of page {i}"),
        )?;
        let off = i * PAGE_SIZE;
        let landed = frames.holds(off, CHECK_LEN as usize, PATTERN);
        let untouched = frames.holds(off, CHECK_LEN as usize, prefill(i));
        if fault.is_some() && !untouched {
            return Err(format!(
                "page {i}: the write faulted but the frame changed ({})",
                frames.describe(off)
            ));
        }
        if let Some(f) = fault
            && f.kind != DmaFaultKind::Permission
        {
            return Err(format!(
                "page {i}: expected a permission fault or success, saw {f}"
            ));
        }
        sweep.record(i, fault.is_none() && landed, fault.map_or(0, |f| f.count));
    }
    Ok(sweep)
}

/// Pages `0..pages` to check: all of a small range; of a large one, the first and last eight,
/// every 16th, and the pages around the 511/512 boundary.
fn sample(pages: u64) -> Vec<u64> {
    if pages <= 64 {
        return (0..pages).collect();
    }
    let mut v: Vec<u64> = (0..pages.min(8)).collect();
    v.extend((0..pages).step_by(16));
    v.extend((504..520).filter(|&i| i < pages));
    v.extend(pages.saturating_sub(8)..pages);
    v.sort_unstable();
    v.dedup();
    v
}

/// Scenarios 6 and 7: `pages` read-only pages are cached, upgraded to RW in one `protect` and
/// one flush, and the device writes the sampled pages.
pub fn range_protect_sweep(
    mode: SecondaryTlbMode,
    pages: u64,
) -> Result<(Outcome, PageSweep), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let va = IOVA_BASE;
    let checked = sample(pages);
    let frames = cached_read_only(&rig, va, pages, &checked)?;
    let (upgraded, commands) = commands_during(|| rig.protect(va, pages, Perms::RW));
    upgraded?;
    rig.load_device(PATTERN, CHECK_LEN)?;
    let sweep = writes_land(&rig, &frames, va, &checked)?;
    let last = pages - 1;
    let detail = format!(
        "{pages} pages upgraded in one protect, {} checked (last page {}): {}",
        checked.len(),
        match sweep.verdict(last) {
            Some(true) => "fresh",
            Some(false) => "STALE",
            None => "not checked",
        },
        sweep.summary()
    );
    let outcome = Outcome {
        scenario: if pages < 512 {
            "range protect, small"
        } else {
            "range protect, >= threshold"
        },
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail,
    };
    Ok((outcome, sweep))
}

/// Scenario 6 with 17 pages (the largest of the small sizes), as a table row.
pub fn range_protect_small(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    range_protect_sweep(mode, 17).map(|(o, _)| o)
}

/// Scenario 7 with 600 pages, as a table row.
pub fn range_protect_large(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    range_protect_sweep(mode, 600).map(|(o, _)| o)
}

/// The low and high pages of scenario 8.
const LOW_VA: u64 = 0x1000;
const HIGH_VA: u64 = USER_VA_END - PAGE_SIZE;

/// Scenario 8: pages at both ends of the lower half are cached read-only, upgraded by two
/// separate `protect`s whose tokens are merged and widened to the whole address space, and
/// flushed once; the device writes both.
pub fn whole_address_space_sweep(mode: SecondaryTlbMode) -> Result<(Outcome, PageSweep), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let frames = Frames::alloc(2, PAGE_SIZE)?;
    let vas = [LOW_VA, HIGH_VA];
    for (i, &va) in vas.iter().enumerate() {
        let i = i as u64;
        frames.fill(i * PAGE_SIZE, PAGE_SIZE as usize, prefill(i));
        rig.map(va, frames.pa(i * PAGE_SIZE), 1, Perms::R)?;
        rig.device_probe(va)
            .map_err(|e| format!("setup: device read at {va:#x}: {e}"))?;
    }
    let (flushed, commands) = commands_during(|| -> Result<(), String> {
        let mut t = rig
            .space
            .protect(range(LOW_VA, 1)?, Perms::RW)
            .map_err(|e| format!("protect {LOW_VA:#x}: {e}"))?;
        let high = rig
            .space
            .protect(range(HIGH_VA, 1)?, Perms::RW)
            .map_err(|e| format!("protect {HIGH_VA:#x}: {e}"))?;
        t.merge(high);
        t.widen_to_all();
        rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
        Ok(())
    });
    flushed?;
    rig.load_device(PATTERN, CHECK_LEN)?;
    let mut sweep = PageSweep::default();
    let mut words: Vec<String> = Vec::new();
    for (i, &va) in vas.iter().enumerate() {
        let i = i as u64;
        let fault = fault_of(
            rig.device_writes(va, CHECK_LEN),
            &format!("device write at {va:#x}"),
        )?;
        let landed = frames.holds(i * PAGE_SIZE, CHECK_LEN as usize, PATTERN);
        sweep.record(i, fault.is_none() && landed, fault.map_or(0, |f| f.count));
        words.push(match fault {
            Some(f) => format!("{va:#x}: write faulted ({})", f.kind),
            None if landed => format!("{va:#x}: write landed"),
            None => format!("{va:#x}: write went through but did NOT land"),
        });
    }
    let outcome = Outcome {
        scenario: "whole address space",
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail: format!("one flush of the whole address space; {}", words.join("; ")),
    };
    Ok((outcome, sweep))
}

/// Scenario 8, as a table row.
pub fn whole_address_space(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    whole_address_space_sweep(mode).map(|(o, _)| o)
}

crate::ktest! {
    /// 2, 5 and 17 pages: exactly the commands the planner plans for the range (range-form
    /// TLBI_NH_VA on this SMMU), no TLBI_NH_ASID, one CMD_SYNC; every page fresh, the last too.
    fn s06_range_protect_small() {
        for pages in [2u64, 5, 17] {
            let (o, sweep) = range_protect_sweep(SecondaryTlbMode::Sync, pages)?;
            o.expect_fresh()?;
            kassert_eq!(sweep.verdict(pages - 1), Some(true), "{pages} pages: the last page must be checked and fresh: {}", o.detail);
            kassert_eq!(sweep.pages.len() as u64, pages, "{pages} pages: every page checked");
            let planned = planned_commands(FlushKind::Range { start: IOVA_BASE, pages }, PAGES_CHANGED)?;
            kassert!(!planner_ril() || planned.tlbi_nh_va_range >= 1,
                "{pages} pages: the planner has RIL, so the plan should use range commands: {planned}");
            kassert_eq!((o.commands.tlbi_nh_va, o.commands.tlbi_nh_va_range), (planned.tlbi_nh_va, planned.tlbi_nh_va_range),
                "{pages} pages: (single, range) TLBI_NH_VA issued vs planned (issued {})", o.commands);
            kassert_eq!(o.commands.tlbi_nh_asid, 0, "{pages} pages: no TLBI_NH_ASID below the threshold (issued {})", o.commands);
            kassert_eq!(o.commands.sync, 1, "{pages} pages: one CMD_SYNC for the one flush");
            kassert_eq!(o.device_faults, 0, "{pages} pages: {}", o.detail);
        }
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: every page's write faults on its stale read-only entry, the last too.
    fn s06_range_protect_small_nc_off() {
        for pages in [2u64, 5, 17] {
            let (o, sweep) = range_protect_sweep(SecondaryTlbMode::Off, pages)?;
            o.expect_stale()?;
            kassert!(sweep.all_stale(), "{pages} pages: expected every page stale (faulting), saw {}", sweep.summary());
            kassert_eq!(sweep.verdict(pages - 1), Some(false), "{pages} pages: the last page must be checked and stale");
            kassert_eq!(sweep.events, pages as u32 * (CHECK_LEN / 4), "{pages} pages: one permission fault event per 4-byte chunk");
        }
        Ok(())
    }
}

crate::ktest! {
    /// 512 and 600 pages: exactly one TLBI_NH_ASID and one CMD_SYNC, nothing else; every
    /// sampled page fresh (first, last, around 511/512).
    fn s07_range_protect_threshold() {
        for pages in [512u64, 600] {
            let (o, sweep) = range_protect_sweep(SecondaryTlbMode::Sync, pages)?;
            o.expect_fresh()?;
            for i in [0, 511, pages - 1] {
                kassert_eq!(sweep.verdict(i), Some(true), "{pages} pages: page {i} must be checked and fresh");
            }
            if pages > 512 {
                kassert_eq!(sweep.verdict(512), Some(true), "{pages} pages: page 512 must be checked and fresh");
            }
            kassert!(sweep.pages.len() >= 32 && sweep.pages.len() < 200,
                "{pages} pages: 32..200 sampled pages expected, {} checked", sweep.pages.len());
            expect_planned(&o.commands, &[(FlushKind::Range { start: IOVA_BASE, pages }, PAGES_CHANGED)],
                &format!("{pages} pages"))?;
            // One command either way: ASID-wide (linux66), or one range command (precise).
            let invalidations = o.commands.tlbi_nh_va + o.commands.tlbi_nh_va_range + o.commands.tlbi_nh_asid;
            match policy() {
                _ if !planner_ril() => kassert_eq!(o.commands.tlbi_nh_asid, 1,
                    "{pages} pages without RIL: ASID-wide under every policy ({})", o.commands),
                InvalPolicy::Linux66 => kassert_eq!(o.commands.tlbi_nh_asid, 1, "{pages} pages, linux66: ASID-wide ({})", o.commands),
                InvalPolicy::Precise => kassert_eq!((invalidations, o.commands.tlbi_nh_asid), (1, 0),
                    "{pages} pages, precise: one range command, not ASID-wide ({})", o.commands),
                InvalPolicy::LinuxLatest => kassert_eq!(o.commands.tlbi_nh_asid, 0, "{pages} pages, linux-latest: range commands ({})", o.commands),
            }
        }
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: every sampled page still faults.
    fn s07_range_protect_threshold_nc_off() {
        for pages in [512u64, 600] {
            let (o, sweep) = range_protect_sweep(SecondaryTlbMode::Off, pages)?;
            o.expect_stale()?;
            kassert!(sweep.all_stale(), "{pages} pages: expected every sampled page stale, saw {}", sweep.summary());
        }
        Ok(())
    }
}

crate::ktest! {
    /// Both ends of the address space fresh after one whole-address-space flush: exactly one
    /// TLBI_NH_ASID + one CMD_SYNC.
    fn s08_whole_address_space() {
        let (o, sweep) = whole_address_space_sweep(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        kassert_eq!(sweep.pages.len(), 2);
        kassert_eq!(
            (o.commands.tlbi_nh_asid, o.commands.sync, o.commands.tlbi_nh_va, o.commands.tlbi_nh_va_range, o.commands.tlbi_all),
            (1, 1, 0, 0, 0),
            "expected exactly one TLBI_NH_ASID + one CMD_SYNC (nh_asid, sync, nh_va, range, all); issued {}",
            o.commands
        );
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: both writes fault on their stale read-only entries.
    fn s08_whole_address_space_nc_off() {
        let (o, sweep) = whole_address_space_sweep(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert!(sweep.all_stale(), "expected both pages stale, saw {}", o.detail);
        Ok(())
    }
}
