//! Scenarios 13-14: batched flushes (Linux's `mmu_gather`) on a device that shares the tables.
//!
//! 13. A batch unmaps pages the SMMU has cached and releases their frames. The frames must go
//!     back only after the batch's one flush reached the SMMU and its `CMD_SYNC` completed. The
//!     release hook plays the frames' next owner (it fills them with its own data) and the
//!     device that is still running (it writes through the old address): with the invalidation
//!     done first the write faults and the new owner's data is intact; in `gather-late` (frames
//!     released before the SMMU is told) the write lands in the reused frames.
//! 14. Two batches unmap overlapping ranges at once. The first clears the entries and holds its
//!     flush back (on another CPU when there is one); the second finds nothing left to clear.
//!     It must not return before the translations the first one cleared are gone from every
//!     TLB: it detects the overlap and flushes its whole range, SMMU included, so the device's
//!     write right after it faults and the frame is unchanged. In `nested-unaware` the nested
//!     flush skips the SMMU and the write lands. With three CPUs or more, further nested
//!     batches run concurrently on the other CPUs; every one of them must see the overlap.
//!
//! Both judge by memory, and count the SMMU commands of the flush under test.

use super::Outcome;
use crate::testkit::{Frames, IOVA_BASE, Rig, commands_during, fault_of, range};
use crate::{
    drivers::dma::DmaFaultKind,
    kassert, kassert_eq,
    mm::{PAGE_SIZE, pgtable::Perms, tlb::SecondaryTlbMode},
    smp,
};
use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use spin::Mutex;

const LEN: u32 = 32;
const PAGE: usize = PAGE_SIZE as usize;
/// Pages a gather scenario unmaps (one operation each).
const GATHER_PAGES: u64 = 8;
/// Pages the first nested batch unmaps; the nested ones take pages 1..=2 of them.
const NESTED_PAGES: u64 = 4;
const JOIN_TIMEOUT_MS: u64 = 30_000;

/// What the release hook of scenario 13 saw.
#[derive(Default)]
struct Reuse {
    /// The device's writes through the old addresses that went through (page indices).
    landed: Vec<u64>,
    /// Those that faulted with a translation fault.
    faulted: u32,
    /// A check that could not run.
    error: Option<String>,
}

/// Scenario 13: a batch of one-page unmaps, one flush, frames released after it.
pub fn gather_frame_reuse(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let frames = Frames::alloc(GATHER_PAGES, PAGE_SIZE)?;
    frames.fill(0, GATHER_PAGES as usize * PAGE, 0x41);
    let x = IOVA_BASE + 0x30_0000;
    rig.map(x, frames.pa(0), GATHER_PAGES, Perms::RW)?;
    for i in 0..GATHER_PAGES {
        rig.device_probe(x + i * PAGE_SIZE)
            .map_err(|e| format!("setup: device read of page {i}: {e}"))?;
    }
    rig.load_device(0x66, LEN)?;

    let frames = Arc::new(frames);
    let reuse = Arc::new(Mutex::new(Reuse::default()));
    let (batched, commands) = commands_during(|| -> Result<(), String> {
        let mut batch = rig.space.batch();
        for i in 0..GATHER_PAGES {
            batch
                .unmap(range(x + i * PAGE_SIZE, 1)?)
                .map_err(|e| format!("batch unmap of page {i}: {e}"))?;
        }
        let (frames, reuse, edu) = (frames.clone(), reuse.clone(), rig.edu.clone());
        batch.defer(move || {
            // The frames' next owner fills them; the device, still running, writes through
            // the old addresses.
            frames.fill(0, GATHER_PAGES as usize * PAGE, 0x5A);
            let mut seen = reuse.lock();
            for i in 0..GATHER_PAGES {
                match fault_of(edu.write_to(x + i * PAGE_SIZE, 0, LEN), "device write") {
                    Ok(None) => seen.landed.push(i),
                    Ok(Some(f)) if f.kind == DmaFaultKind::Translation => seen.faulted += 1,
                    Ok(Some(f)) => seen.error = Some(format!("unexpected fault {f}")),
                    Err(e) => seen.error = Some(e),
                }
            }
        });
        batch.finish().map_err(|e| format!("batch finish: {e}"))?;
        Ok(())
    });
    batched?;
    let seen = reuse.lock();
    if let Some(e) = &seen.error {
        return Err(e.clone());
    }
    let corrupted: Vec<u64> = (0..GATHER_PAGES)
        .filter(|&i| !frames.holds(i * PAGE_SIZE, PAGE, 0x5A))
        .collect();
    let fresh =
        seen.landed.is_empty() && seen.faulted == GATHER_PAGES as u32 && corrupted.is_empty();
    Ok(Outcome {
        scenario: "batched unmap + frame reuse",
        mode,
        fresh,
        commands,
        device_faults: seen.faulted,
        detail: format!(
            "{GATHER_PAGES} unmaps in one batch; when the frames were reused, {} of the device's \
             writes through the old addresses faulted and {} went through; {}",
            seen.faulted,
            seen.landed.len(),
            if corrupted.is_empty() {
                String::from("the reused frames are intact")
            } else {
                format!("reused frames {corrupted:?} were OVERWRITTEN")
            }
        ),
    })
}

/// What scenario 14 counted besides the outcome.
#[derive(Debug, Clone, Default)]
pub struct NestedCounts {
    /// Nested batches run (the one on CPU 0 and those on other CPUs).
    pub nested_batches: u32,
    /// Of those, the ones that reported the overlap.
    pub nested_seen: u32,
    /// The address space's count of nested batches over the run.
    pub counted: u64,
    /// The first batch ran on another CPU.
    pub cross_cpu: bool,
}

/// Scenario 14: overlapping batches; the second finds nothing to clear.
pub fn nested_unmap_counts(mode: SecondaryTlbMode) -> Result<(Outcome, NestedCounts), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let frames = Frames::alloc(NESTED_PAGES, PAGE_SIZE)?;
    frames.fill(0, NESTED_PAGES as usize * PAGE, 0x41);
    let x = IOVA_BASE + 0x40_0000;
    rig.map(x, frames.pa(0), NESTED_PAGES, Perms::RW)?;
    for i in 0..NESTED_PAGES {
        rig.device_probe(x + i * PAGE_SIZE)
            .map_err(|e| format!("setup: device read of page {i}: {e}"))?;
    }
    rig.load_device(0x66, LEN)?;
    let before = rig.space.stats();
    let cpus = smp::online_cpus();
    let mut counts = NestedCounts {
        cross_cpu: cpus >= 2,
        ..NestedCounts::default()
    };

    // The first batch: clears everything, then holds its flush until told.
    let cleared = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let first_range = range(x, NESTED_PAGES)?;
    let nested_range = range(x + PAGE_SIZE, 2)?;
    let mut local_first = None;
    let holder = if counts.cross_cpu {
        let (space, cleared, release) = (rig.space.clone(), cleared.clone(), release.clone());
        let job = smp::run_on(cpus - 1, move || -> Result<bool, String> {
            let mut b = space.batch();
            let r = b.unmap(first_range);
            cleared.store(true, Ordering::Release);
            r.map_err(|e| format!("first batch unmap: {e}"))?;
            // Hold the flush back until CPU 0 has checked the device (bounded: the batch is
            // finished either way).
            smp::wait_for(JOIN_TIMEOUT_MS, || release.load(Ordering::Acquire));
            Ok(b.finish()
                .map_err(|e| format!("first batch finish: {e}"))?
                .nested)
        })
        .map_err(|e| format!("starting the first batch on CPU {}: {e}", cpus - 1))?;
        Some(job)
    } else {
        let mut b = rig.space.batch();
        b.unmap(first_range)
            .map_err(|e| format!("first batch unmap: {e}"))?;
        cleared.store(true, Ordering::Release);
        local_first = Some(b);
        None
    };
    if !smp::wait_for(JOIN_TIMEOUT_MS, || cleared.load(Ordering::Acquire)) {
        release.store(true, Ordering::Release);
        return Err("the first batch never cleared its range".into());
    }

    // Further nested batches on the CPUs in between, at the same time as CPU 0's.
    let others_seen = Arc::new(AtomicU32::new(0));
    let mut others = Vec::new();
    for cpu in 1..cpus.saturating_sub(1) {
        let (space, seen) = (rig.space.clone(), others_seen.clone());
        let job = smp::run_on(cpu, move || -> Result<(), String> {
            let mut b = space.batch();
            b.unmap(nested_range)
                .map_err(|e| format!("nested batch unmap: {e}"))?;
            if b.finish()
                .map_err(|e| format!("nested finish: {e}"))?
                .nested
            {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        match job {
            Ok(j) => others.push(j),
            Err(e) => {
                release.store(true, Ordering::Release);
                return Err(format!("starting a nested batch on CPU {cpu}: {e}"));
            }
        }
    }

    // CPU 0's nested batch: nothing left to clear, yet it must flush before returning.
    let (nested, commands) = commands_during(|| -> Result<bool, String> {
        let mut b = rig.space.batch();
        b.unmap(nested_range)
            .map_err(|e| format!("nested batch unmap: {e}"))?;
        Ok(b.finish()
            .map_err(|e| format!("nested finish: {e}"))?
            .nested)
    });
    // The device writes page 1 while the first batch's flush is still held back.
    let write = nested.clone().and_then(|_| {
        fault_of(
            rig.device_writes(x + PAGE_SIZE, LEN),
            "device write after the nested batch",
        )
    });
    for j in others {
        j.join(JOIN_TIMEOUT_MS)
            .map_err(|e| format!("nested batch: {e}"))??;
        counts.nested_batches += 1;
    }
    release.store(true, Ordering::Release);
    let first_nested = match (holder, local_first) {
        (Some(job), _) => job
            .join(JOIN_TIMEOUT_MS)
            .map_err(|e| format!("first batch: {e}"))??,
        (None, Some(b)) => b.finish().map_err(|e| format!("first finish: {e}"))?.nested,
        (None, None) => false,
    };
    let nested = nested?;
    let fault = write?;
    counts.nested_batches += 1;
    counts.nested_seen = others_seen.load(Ordering::Relaxed) + u32::from(nested);
    counts.counted = rig.space.stats().since(&before).nested_batches;
    let intact = frames.holds(PAGE_SIZE, PAGE, 0x41);
    let fresh = nested
        && !first_nested
        && fault.is_some_and(|f| f.kind == DmaFaultKind::Translation)
        && intact;
    let detail = format!(
        "{} nested batch(es) on {cpus} CPU(s) ({} saw the overlap); after CPU 0's nested batch \
         returned, the device's write to the unmapped page {}; the page's frame {}",
        counts.nested_batches,
        counts.nested_seen,
        match fault {
            Some(f) => format!("faulted ({f})"),
            None => String::from("went through silently"),
        },
        if intact {
            "is unchanged"
        } else {
            "was OVERWRITTEN"
        }
    );
    Ok((
        Outcome {
            scenario: "nested batches (overlapping unmaps)",
            mode,
            fresh,
            commands,
            device_faults: fault.map_or(0, |f| f.count),
            detail,
        },
        counts,
    ))
}

/// Scenario 14, as a table row.
pub fn nested_unmap(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    nested_unmap_counts(mode).map(|(o, _)| o)
}

crate::ktest! {
    /// Eight unmaps, one flush: one invalidation of the hull and one CMD_SYNC, then the frames
    /// are released; the device's writes through the old addresses fault, the reused frames
    /// are intact.
    fn s13_gather_frame_reuse() {
        let o = gather_frame_reuse(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        kassert_eq!(o.commands.sync, 1, "one CMD_SYNC for the whole batch (commands {})", o.commands);
        kassert_eq!(o.commands.flushes, 1, "one SMMU flush for the whole batch (commands {})", o.commands);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the batch releases its frames before telling the SMMU, and the
    /// device's writes land in the reused frames.
    fn s13_gather_frame_reuse_nc_gather_late() {
        let o = gather_frame_reuse(SecondaryTlbMode::GatherLate)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert!(o.detail.contains("OVERWRITTEN"), "expected the reused frames overwritten: {}", o.detail);
        kassert_eq!(o.commands.sync, 1, "the SMMU is still told, too late (commands {})", o.commands);
        Ok(())
    }
}

crate::ktest! {
    /// The nested batch finds nothing to clear but flushes its whole range (SMMU included)
    /// before it returns; every nested batch sees the overlap; the first batch does not.
    fn s14_nested_unmap() {
        let (o, counts) = nested_unmap_counts(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        kassert_eq!(counts.nested_seen, counts.nested_batches, "nested batches that saw the overlap: {}", o.detail);
        kassert!(counts.counted >= u64::from(counts.nested_batches),
            "the address space counted {} nested batches, {} ran", counts.counted, counts.nested_batches);
        kassert!(o.commands.sync >= 1, "CPU 0's nested flush: a CMD_SYNC (commands {})", o.commands);
        kassert!(o.commands.tlbi_nh_va + o.commands.tlbi_nh_va_range + o.commands.tlbi_nh_asid >= 1,
            "CPU 0's nested flush must invalidate the SMMU (commands {})", o.commands);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the nested flush skips the SMMU; the device's write lands in the
    /// frame the first batch unmapped.
    fn s14_nested_unmap_nc_nested_unaware() {
        let (o, counts) = nested_unmap_counts(SecondaryTlbMode::NestedUnaware)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert!(o.detail.contains("OVERWRITTEN"), "expected the unmapped frame written: {}", o.detail);
        kassert_eq!(counts.nested_seen, counts.nested_batches, "the overlap is still detected: {}", o.detail);
        kassert_eq!(o.commands.commands, 0, "no SMMU command from the nested flush (commands {})", o.commands);
        Ok(())
    }
}

/// SMMU commands and `CMD_SYNC`s of unmapping `pages` pages one flush per page, and in one
/// batch: `(per page, batched)`.
fn gather_costs(
    rig: &Rig,
    frames: &Frames,
    pages: u64,
) -> Result<(smmu::CounterSnapshot, smmu::CounterSnapshot), String> {
    let x = IOVA_BASE + 0x1_0000_0000;
    rig.map(x, frames.pa(0), pages, Perms::RW)?;
    let (r, single) = commands_during(|| -> Result<(), String> {
        for i in 0..pages {
            let t = rig
                .space
                .unmap(range(x + i * PAGE_SIZE, 1)?)
                .map_err(|e| format!("unmap: {e}"))?;
            rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
        }
        Ok(())
    });
    r?;
    rig.map(x, frames.pa(0), pages, Perms::RW)?;
    let (r, batched) = commands_during(|| -> Result<(), String> {
        let mut b = rig.space.batch();
        for i in 0..pages {
            b.unmap(range(x + i * PAGE_SIZE, 1)?)
                .map_err(|e| format!("batch unmap: {e}"))?;
        }
        b.finish().map_err(|e| format!("batch finish: {e}"))?;
        Ok(())
    });
    r?;
    Ok((single, batched))
}

crate::ktest! {
    /// Figures: SMMU commands and CMD_SYNCs for unmapping 1, 16, 256 and 4096 pages with one
    /// flush per page and in one batch (printed as `gather-costs` lines). A batch costs one
    /// CMD_SYNC whatever its size; one flush per page costs one per page.
    fn s13_gather_costs() {
        let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
        let frames = Frames::alloc(4096, PAGE_SIZE)?;
        for pages in [1u64, 16, 256, 4096] {
            let (single, batched) = gather_costs(&rig, &frames, pages)?;
            crate::println!(
                "gather-costs pages={pages} per-page: commands={} sync={} nh_va={} range={} asid={} | batch: commands={} sync={} nh_va={} range={} asid={}",
                single.commands, single.sync, single.tlbi_nh_va, single.tlbi_nh_va_range, single.tlbi_nh_asid,
                batched.commands, batched.sync, batched.tlbi_nh_va, batched.tlbi_nh_va_range, batched.tlbi_nh_asid
            );
            kassert_eq!(single.sync, pages, "one CMD_SYNC per flushed page ({pages} pages)");
            kassert_eq!(batched.sync, 1, "one CMD_SYNC per batch ({pages} pages)");
            kassert!(batched.commands <= single.commands, "the batch never costs more ({pages} pages)");
        }
        Ok(())
    }
}
