//! Scenario 10: 2 MiB blocks split into pages and pages merged into a block, while the SMMU
//! holds translations of the old layout.
//!
//! - Split: the device reads inside a 2 MiB block, so the SMMU caches one level-2 block entry
//!   that translates all 512 pages. The block is split (break-before-make) and one page of it
//!   moves to another frame (a second break-before-make). The moved page must reach the new
//!   frame and its neighbours the block's own frames. A stale block entry would still send the
//!   moved page to the block's frame.
//! - Merge: the device reads several pages of a 2 MiB run mapped with pages, so the SMMU caches
//!   level-3 entries. The run is merged into one block at a new 2 MiB frame block
//!   (`merge_to_block(va, Some(..))`, as a collapse into a huge page does after copying). Every
//!   write must land in the new block. Stale page entries would still send the writes to the
//!   old frames.
//!
//! The negative controls run in `off` mode. Either operation's flush covers 512 pages: one
//! `TLBI_NH_ASID` under `smmu.inval=linux66` (the ASID-wide threshold), one command for the
//! block (split) or one range command (merge) under `precise`, plus one command for the moved
//! page.

use super::Outcome;
use crate::testkit::{
    BLOCKS_CHANGED, Frames, IOVA_BASE, PAGES_CHANGED, PageSweep, Rig, commands_during,
    expect_planned, fault_of, range,
};
use crate::{
    kassert, kassert_eq,
    mm::{PAGE_SIZE, VirtAddr, addr::BLOCK_2M, pgtable::Perms, tlb::SecondaryTlbMode},
};
use alloc::{format, string::String, vec::Vec};
use smmu::{FlushHint, FlushKind};

const LEN: u32 = 64;
const BLOCK_PAGES: u64 = BLOCK_2M / PAGE_SIZE;
/// The page of the block that moves in the split scenario.
const MOVED: u64 = 7;

/// Fail unless `va` is mapped at `level` to `pa`.
fn expect_mapping(rig: &Rig, va: u64, level: u8, pa: crate::mm::PhysAddr) -> Result<(), String> {
    match rig.space.translate(VirtAddr(va)) {
        Some(t) if t.level == level && t.pa == pa => Ok(()),
        Some(t) => Err(format!(
            "setup: {va:#x} is mapped at level {} to {}, expected level {level} to {pa}",
            t.level, t.pa
        )),
        None => Err(format!("setup: {va:#x} is not mapped")),
    }
}

/// Split: block cached → split → page [`MOVED`] remapped → the device writes the moved page and
/// its two neighbours.
pub fn block_split_sweep(mode: SecondaryTlbMode) -> Result<(Outcome, PageSweep), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let block = Frames::alloc(BLOCK_PAGES, BLOCK_2M)?;
    let moved = Frames::page()?;
    let bva = IOVA_BASE + 0x4000_0000;
    let page = |i: u64| bva + i * PAGE_SIZE;
    for i in [MOVED - 1, MOVED, MOVED + 1] {
        block.fill(i * PAGE_SIZE, PAGE_SIZE as usize, 0x70 + i as u8);
    }
    rig.map_blocks(bva, block.pa(0), BLOCK_PAGES, Perms::RW)?;
    expect_mapping(&rig, page(MOVED), 2, block.pa(MOVED * PAGE_SIZE))?;
    rig.device_reads(page(MOVED), LEN)
        .map_err(|e| format!("setup: device read inside the block: {e}"))?;
    let buf = rig.device_buffer(LEN)?;
    if !buf.iter().all(|&b| b == 0x70 + MOVED as u8) {
        return Err(format!(
            "setup: the device read {:02x?}… inside the block",
            &buf[..4]
        ));
    }

    // Migrate the page: copy, split the block, move the page.
    moved.write(0, &block.read(MOVED * PAGE_SIZE, PAGE_SIZE as usize));
    let (changed, commands) = commands_during(|| -> Result<(), String> {
        rig.space
            .split_block(VirtAddr(bva))
            .map_err(|e| format!("split_block: {e}"))?;
        rig.space
            .remap(range(page(MOVED), 1)?, moved.pa(0))
            .map_err(|e| format!("remap of page {MOVED}: {e}"))
    });
    changed?;
    expect_mapping(&rig, page(MOVED), 3, moved.pa(0))?;
    expect_mapping(&rig, page(MOVED + 1), 3, block.pa((MOVED + 1) * PAGE_SIZE))?;

    rig.load_device(0xB7, LEN)?;
    let mut sweep = PageSweep::default();
    let mut words: Vec<String> = Vec::new();
    for i in [MOVED, MOVED - 1, MOVED + 1] {
        let fault = fault_of(
            rig.device_writes(page(i), LEN),
            &format!("device write of page {i}"),
        )?;
        let in_block = block.holds(i * PAGE_SIZE, LEN as usize, 0xB7);
        let fresh = if i == MOVED {
            let in_moved = moved.holds(0, LEN as usize, 0xB7);
            words.push(format!(
                "moved page {i}: {}",
                match (fault, in_moved, in_block) {
                    (Some(f), ..) => format!("write faulted ({f})"),
                    (None, true, false) => String::from("landed in the new frame"),
                    (None, false, true) => String::from("landed in the OLD block frame"),
                    (None, ..) => String::from("landed nowhere expected"),
                }
            ));
            fault.is_none() && in_moved && !in_block
        } else {
            if fault.is_some() || !in_block {
                words.push(format!(
                    "neighbour page {i}: the write did not land in the block's frame"
                ));
            }
            fault.is_none() && in_block
        };
        sweep.record(i, fresh, fault.map_or(0, |f| f.count));
    }
    if words.len() == 1 {
        words.push(String::from("neighbours landed in the block's frames"));
    }
    let outcome = Outcome {
        scenario: "2 MiB block split + page move",
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail: words.join("; "),
    };
    Ok((outcome, sweep))
}

/// Scenario 10, split half, as a table row.
pub fn block_split(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    block_split_sweep(mode).map(|(o, _)| o)
}

/// The pages of the run the merge scenario caches and checks.
const MERGE_CHECKED: [u64; 6] = [0, 1, 255, 256, 510, 511];

/// Merge: a run of 512 pages, some cached → merged into a block at a new 2 MiB frame block →
/// the device writes the cached pages.
pub fn block_merge_sweep(mode: SecondaryTlbMode) -> Result<(Outcome, PageSweep), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let old = Frames::alloc(BLOCK_PAGES, PAGE_SIZE)?;
    let new = Frames::alloc(BLOCK_PAGES, BLOCK_2M)?;
    let mva = IOVA_BASE + 0x8000_0000;
    let page = |i: u64| mva + i * PAGE_SIZE;
    for i in MERGE_CHECKED {
        old.fill(i * PAGE_SIZE, PAGE_SIZE as usize, 0x30 + i as u8);
    }
    rig.map(mva, old.pa(0), BLOCK_PAGES, Perms::RW)?;
    expect_mapping(&rig, mva, 3, old.pa(0))?;
    for i in MERGE_CHECKED {
        rig.device_probe(page(i))
            .map_err(|e| format!("setup: device read of page {i}: {e}"))?;
    }

    // Collapse: copy the run into the new block, then merge.
    for i in MERGE_CHECKED {
        new.write(i * PAGE_SIZE, &old.read(i * PAGE_SIZE, PAGE_SIZE as usize));
    }
    let (merged, commands) = commands_during(|| {
        rig.space
            .merge_to_block(VirtAddr(mva), Some(new.pa(0)))
            .map_err(|e| format!("merge_to_block: {e}"))
    });
    merged?;
    expect_mapping(&rig, page(1), 2, new.pa(PAGE_SIZE))?;

    rig.load_device(0xD3, LEN)?;
    let mut sweep = PageSweep::default();
    let (mut in_old, mut in_new) = (0, 0);
    for i in MERGE_CHECKED {
        let fault = fault_of(
            rig.device_writes(page(i), LEN),
            &format!("device write of page {i}"),
        )?;
        let landed_new = new.holds(i * PAGE_SIZE, LEN as usize, 0xD3);
        let landed_old = old.holds(i * PAGE_SIZE, LEN as usize, 0xD3);
        in_new += u32::from(landed_new);
        in_old += u32::from(landed_old);
        sweep.record(
            i,
            fault.is_none() && landed_new && !landed_old,
            fault.map_or(0, |f| f.count),
        );
    }
    let outcome = Outcome {
        scenario: "pages merged into a 2 MiB block",
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail: format!(
            "{} cached pages written after the merge: {in_new} landed in the new block, {in_old} \
             in the OLD page frames; {}",
            MERGE_CHECKED.len(),
            sweep.summary()
        ),
    };
    Ok((outcome, sweep))
}

/// Scenario 10, merge half, as a table row.
pub fn block_merge(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    block_merge_sweep(mode).map(|(o, _)| o)
}

crate::ktest! {
    /// Split + move: the moved page reaches its new frame, the neighbours the block's frames.
    /// The split's 512-page flush is one TLBI_NH_ASID, the move's one TLBI_NH_VA; one CMD_SYNC
    /// each.
    fn s10_block_split() {
        let (o, sweep) = block_split_sweep(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        kassert_eq!(sweep.pages.len(), 3);
        let bva = IOVA_BASE + 0x4000_0000;
        expect_planned(&o.commands, &[
            (FlushKind::Range { start: bva, pages: BLOCK_PAGES }, BLOCKS_CHANGED),
            (FlushKind::Page(bva + MOVED * PAGE_SIZE), PAGES_CHANGED),
        ], "split (one 2 MiB block) + one-page move")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the stale block entry sends the moved page's write to the old frame.
    fn s10_block_split_nc_off() {
        let (o, sweep) = block_split_sweep(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert_eq!(sweep.verdict(MOVED), Some(false), "the moved page must be stale: {}", o.detail);
        kassert!(o.detail.contains("landed in the OLD block frame"),
            "expected the write to the moved page in the old block frame, saw: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// Merge: every cached page's write lands in the new block. The 512-page flush is one
    /// TLBI_NH_ASID + one CMD_SYNC.
    fn s10_block_merge() {
        let (o, sweep) = block_merge_sweep(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        kassert_eq!(sweep.pages.len(), MERGE_CHECKED.len());
        // The level-3 table is unlinked and freed: nothing is known of levels.
        expect_planned(&o.commands, &[
            (FlushKind::Range { start: IOVA_BASE + 0x8000_0000, pages: BLOCK_PAGES }, FlushHint::UNKNOWN),
        ], "merge (512 pages under a freed table)")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the stale page entries send every write to the old frames.
    fn s10_block_merge_nc_off() {
        let (o, sweep) = block_merge_sweep(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert!(sweep.all_stale(), "expected every cached page stale, saw {}", o.detail);
        kassert!(o.detail.contains(&format!("{} in the OLD", MERGE_CHECKED.len())),
            "expected every write in the old frames, saw: {}", o.detail);
        Ok(())
    }
}
