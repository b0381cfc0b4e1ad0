//! The invalidation cost benchmark: for each flush shape, what one flush costs on the SMMU
//! under the `smmu.inval` policy in use — commands and `CMD_SYNC`s (counted by the kernel, and
//! by QEMU in its trace) and *collateral loss*: IOTLB entries of pages the change did not
//! touch that the flush removed anyway, so that the device's next access to them misses.
//!
//! Collateral loss is invisible to the kernel; only QEMU's trace shows it. Before each flush
//! the device reads a working set of [`WORKING_SET`] unchanged pages (in the same ASID, far
//! from the change) and a sample of the changed pages, so both are cached; after the flush the
//! device reads the working set again. A second, small working set sits right after the
//! changed range ([`NEIGHBOURS`] pages), where a cover rounded up to a range command's size
//! would reach. `harness report` boots this test once per policy with the trace on, pairs each
//! `inval-cost` line with its trace-marked window, and counts the pages of both working sets
//! whose first lookup after the window is a miss.
//!
//! Each line also carries the guest time of the change and its flush (`guest_ns`, from the
//! virtual counter: under `-icount` an instruction count, so it measures what issuing the
//! commands costs the CPU, not QEMU's work on them, nor the device's refills).
//!
//! Every flush must still be correct: the changed pages are checked fresh by a device write
//! after the flush (an upgrade RO→RW must let it through), so a policy that under-invalidates
//! fails here. The figures themselves are reported, never asserted.

use crate::testkit::{Frames, IOVA_BASE, Rig, commands_during, fault_of, map_with, range};
use crate::{
    kassert,
    mm::{PAGE_SIZE, VirtAddr, addr::BLOCK_2M, pgtable::Perms, tlb::SecondaryTlbMode},
};
use alloc::{format, string::String, vec::Vec};

/// Unchanged pages the device keeps cached through every flush.
pub const WORKING_SET: u64 = 64;
/// Unchanged pages right after each shape, also cached: an over-wide cover shows here.
pub const NEIGHBOURS: u64 = 16;
/// Changed pages the device caches before a flush (a sample of the larger shapes).
const SAMPLE: u64 = 32;
/// Where the working set lives (far from every shape).
const WS_VA: u64 = IOVA_BASE + 0x40_0000_0000;
/// Where the shapes live: 2 MiB-aligned.
const SHAPE_VA: u64 = IOVA_BASE + 0x20_0000_0000;

/// How a shape changes its pages.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// RO→RW in place of `pages` pages from `SHAPE_VA + offset pages` (mapped by pages).
    Upgrade { offset: u64, pages: u64 },
    /// RO→RW in place of one 2 MiB block.
    BlockUpgrade,
    /// A 2 MiB block split into pages (break-before-make).
    Split,
    /// 512 pages merged into a 2 MiB block (break-before-make; the level-3 table is freed).
    Merge,
    /// The whole address space.
    All,
}

/// The shapes of the issue: ranges of 1..4096 pages, unaligned ranges, a block, split, merge,
/// the whole space.
const SHAPES: &[(&str, Change)] = &[
    (
        "1 page",
        Change::Upgrade {
            offset: 0,
            pages: 1,
        },
    ),
    (
        "2 pages",
        Change::Upgrade {
            offset: 0,
            pages: 2,
        },
    ),
    (
        "5 pages",
        Change::Upgrade {
            offset: 0,
            pages: 5,
        },
    ),
    (
        "17 pages",
        Change::Upgrade {
            offset: 0,
            pages: 17,
        },
    ),
    (
        "511 pages",
        Change::Upgrade {
            offset: 0,
            pages: 511,
        },
    ),
    (
        "512 pages",
        Change::Upgrade {
            offset: 0,
            pages: 512,
        },
    ),
    (
        "600 pages",
        Change::Upgrade {
            offset: 0,
            pages: 600,
        },
    ),
    (
        "4096 pages",
        Change::Upgrade {
            offset: 0,
            pages: 4096,
        },
    ),
    (
        "17 pages, unaligned",
        Change::Upgrade {
            offset: 3,
            pages: 17,
        },
    ),
    (
        "600 pages, unaligned",
        Change::Upgrade {
            offset: 3,
            pages: 600,
        },
    ),
    ("2 MiB block", Change::BlockUpgrade),
    ("split", Change::Split),
    ("merge", Change::Merge),
    ("whole space", Change::All),
];

/// Indices of up to [`SAMPLE`] pages spread over `0..pages`, first and last included.
fn sample(pages: u64) -> Vec<u64> {
    if pages <= SAMPLE {
        return (0..pages).collect();
    }
    let mut v: Vec<u64> = (0..SAMPLE)
        .map(|k| k * (pages - 1) / (SAMPLE - 1))
        .collect();
    v.dedup();
    v
}

/// The device reads page `i` from `base` for each `i` of `pages` (the SMMU caches them).
fn probe(rig: &Rig, base: u64, pages: impl Iterator<Item = u64>, what: &str) -> Result<(), String> {
    for i in pages {
        rig.device_probe(base + i * PAGE_SIZE)
            .map_err(|e| format!("{what} page {i}: {e}"))?;
    }
    Ok(())
}

/// Runs one shape: set up, cache, change + flush (marked), check fresh, re-read the working
/// set. Returns the `inval-cost` line.
fn run_shape(rig: &Rig, name: &str, change: Change) -> Result<String, String> {
    // Each shape gets its own frames and a fresh stretch of VA, unmapped afterwards.
    let (va, pages, checked): (u64, u64, Vec<u64>) = match change {
        Change::Upgrade { offset, pages } => (SHAPE_VA + offset * PAGE_SIZE, pages, sample(pages)),
        Change::BlockUpgrade | Change::Split | Change::Merge => (SHAPE_VA, 512, sample(512)),
        Change::All => (SHAPE_VA, 1, sample(1)),
    };
    let frames = Frames::alloc(pages.max(512), BLOCK_2M)?;
    let blocks = matches!(change, Change::BlockUpgrade | Change::Split);
    let perms = match change {
        Change::Split | Change::Merge => Perms::RW,
        _ => Perms::R,
    };
    map_with(&rig.space, va, frames.pa(0), pages, perms, blocks)?;
    let nb_va = va + pages * PAGE_SIZE;
    let neighbours = Frames::alloc(NEIGHBOURS, PAGE_SIZE)?;
    crate::testkit::map(&rig.space, nb_va, neighbours.pa(0), NEIGHBOURS, Perms::R)?;
    probe(
        rig,
        va,
        checked.iter().copied(),
        &format!("{name}: caching changed"),
    )?;
    let read_working_sets = |what: &str| {
        probe(
            rig,
            WS_VA,
            0..WORKING_SET,
            &format!("{name}: {what} working-set"),
        )?;
        probe(
            rig,
            nb_va,
            0..NEIGHBOURS,
            &format!("{name}: {what} neighbour"),
        )
    };
    read_working_sets("caching")?;
    let (changed, commands) = commands_during(|| -> Result<u64, String> {
        let r = range(va, pages)?;
        let start = crate::time::now_ns();
        match change {
            Change::Upgrade { .. } | Change::BlockUpgrade => {
                let t = rig
                    .space
                    .protect(r, Perms::RW)
                    .map_err(|e| format!("protect: {e}"))?;
                rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
            }
            Change::Split => rig
                .space
                .split_block(VirtAddr(va))
                .map_err(|e| format!("split: {e}"))?,
            Change::Merge => rig
                .space
                .merge_to_block(VirtAddr(va), Some(frames.pa(0)))
                .map_err(|e| format!("merge: {e}"))?,
            Change::All => {
                let mut t = rig
                    .space
                    .protect(r, Perms::RW)
                    .map_err(|e| format!("protect: {e}"))?;
                // Flushed as the whole address space, as after scattered changes.
                t.widen_to_all();
                rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
            }
        }
        Ok(crate::time::now_ns() - start)
    });
    let elapsed_ns = changed?;
    // The working set first (its first lookups after the window are what the report counts),
    // then the changed pages must be fresh: writable now.
    read_working_sets("re-reading")?;
    rig.load_device(0x5C, 16)?;
    let mut stale = Vec::new();
    for &i in &checked {
        let fault = fault_of(
            rig.device_writes(va + i * PAGE_SIZE, 16),
            "device write of a changed page",
        )?;
        if fault.is_some() || !frames.holds(i * PAGE_SIZE, 16, 0x5C) {
            stale.push(i);
        }
    }
    let t = rig
        .space
        .unmap(range(va, pages)?)
        .map_err(|e| format!("{name}: unmap: {e}"))?;
    rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
    let t = rig
        .space
        .unmap(range(nb_va, NEIGHBOURS)?)
        .map_err(|e| format!("{name}: unmap neighbours: {e}"))?;
    rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
    if !stale.is_empty() {
        return Err(format!(
            "{name}: changed pages {stale:?} still stale after the flush ({commands})"
        ));
    }
    Ok(format!(
        "inval-cost shape=\"{name}\" pages={pages} asid={} ws_va={WS_VA:#x} ws_pages={WORKING_SET} \
         nb_va={nb_va:#x} nb_pages={NEIGHBOURS} \
         nh_va={} range={} nh_asid={} nh_all={} sync={} commands={} guest_ns={elapsed_ns}",
        rig.space.asid(),
        commands.tlbi_nh_va,
        commands.tlbi_nh_va_range,
        commands.tlbi_nh_asid,
        commands.tlbi_all,
        commands.sync,
        commands.commands
    ))
}

crate::ktest! {
    /// The cost benchmark's runs (figures for `harness report`): every shape's flush leaves its
    /// changed pages fresh under the policy in use; one `inval-cost` line per shape.
    fn inval_costs() {
        // About 1,500 transfers: a minute of wall time when each completion is polled, and the
        // completion mode changes nothing the benchmark measures.
        crate::ktest::require(
            crate::init::config().edu_completion != crate::drivers::edu::Completion::Poll,
            "interrupt-driven DMA completion (the benchmark is not run with edu.completion=poll)",
        )?;
        let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
        let ws = Frames::alloc(WORKING_SET, PAGE_SIZE)?;
        crate::testkit::map(&rig.space, WS_VA, ws.pa(0), WORKING_SET, Perms::R)?;
        let policy = crate::testkit::policy();
        let mut lines = 0;
        for &(name, change) in SHAPES {
            let line = run_shape(&rig, name, change)?;
            crate::println!("{line} policy={policy}");
            lines += 1;
        }
        kassert!(lines == SHAPES.len(), "every shape ran");
        Ok(())
    }
}
