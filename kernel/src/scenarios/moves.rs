//! Scenarios 15-17: a mapping moves — to another VA, to a copy-on-write copy, to another frame —
//! while a device that has cached it keeps working.
//!
//! 15. `move_range` (mremap) moves P from X to Y; the kernel then maps a new page Q at X. The
//!     move must have invalidated X in the SMMU before it returned, so the device's write to X
//!     reaches Q. In `move-late` (the SMMU told only at the next flush, after the move
//!     returned) the write lands in the moved page P, now at Y.
//! 16. Fork: every writable page of the shared region is write-protected in one batch with one
//!     flush at the end (Linux's `dup_mmap` → `flush_tlb_mm`); the old frames now belong to
//!     the child too. The device then writes each page: each write faults, the address space's
//!     copy-on-write handler breaks the page (copy to a new frame, unmap + flush, map the copy
//!     writable), the device retries, and the write lands in the copy. The child's frames keep
//!     the pre-fork contents. With the SMMU never told (`off`) the device's cached writable
//!     entries survive the fork and its writes corrupt the child's frames.
//! 17. Migration: P's mapping is broken and flushed, P is copied to a new frame, the mapping
//!     made again at the copy; the old frame is then poisoned (it is free). The device's next
//!     write must land in the new frame and leave the poison. With two CPUs or more, the
//!     device keeps writing and reading back on CPU 0 while CPU 1 migrates the page over and
//!     over; a transfer caught in a break takes a translation fault and is retried.

use super::Outcome;
use crate::testkit::{
    Frames, IOVA_BASE, PAGES_CHANGED, Rig, commands_during, expect_planned, fault_of, range,
};
use crate::{
    drivers::{dma::DmaFaultKind, edu::DmaError},
    kassert, kassert_eq,
    mm::{
        PAGE_SIZE, VirtAddr,
        address_space::{
            AddressSpace, AsError, FaultClass, FaultHandler, FaultKind, FaultOutcome, FaultPolicy,
        },
        pgtable::{MapAttrs, MemType, Perms},
        tlb::SecondaryTlbMode,
    },
    smp,
};
use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use smmu::{FlushHint, FlushKind};
use spin::Mutex;

const LEN: u32 = 32;
const PAGE: usize = PAGE_SIZE as usize;
const JOIN_TIMEOUT_MS: u64 = 30_000;

/// Scenario 15: mremap, then a new mapping at the old address.
pub fn move_range_remap_old(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let p = Frames::page()?;
    let q = Frames::page()?;
    p.fill(0, PAGE, 0x41);
    q.fill(0, PAGE, 0x71);
    let (x, y) = (IOVA_BASE + 0x50_0000, IOVA_BASE + 0x60_0000);
    rig.map(x, p.pa(0), 1, Perms::RW)?;
    rig.load_device(0x42, LEN)?;
    rig.device_writes(x, LEN)
        .map_err(|e| format!("setup: device write of X: {e}"))?;
    if !p.holds(0, LEN as usize, 0x42) {
        return Err(format!(
            "setup: the write did not land in P ({})",
            p.describe(0)
        ));
    }

    let (moved, commands) = commands_during(|| {
        rig.space
            .move_range(range(x, 1)?, VirtAddr(y))
            .map_err(|e| format!("move_range: {e}"))
    });
    moved?;
    rig.map(x, q.pa(0), 1, Perms::RW)?;
    rig.load_device(0x66, LEN)?;
    let fault = fault_of(
        rig.device_writes(x, LEN),
        "device write of X after the move",
    )?;
    let n = LEN as usize;
    let in_q = q.holds(0, n, 0x66);
    let in_p = p.holds(0, n, 0x66);
    // The moved page is still reachable, at its new address.
    rig.device_probe(y)
        .map_err(|e| format!("device read of Y: {e}"))?;
    let y_ok = rig.space.translate(VirtAddr(y)).map(|t| t.pa) == Some(p.pa(0));
    let fresh = fault.is_none() && in_q && !in_p && y_ok;
    let detail = format!(
        "after the move X→Y and a new mapping at X, the device's write to X {}{}",
        match (fault, in_q, in_p) {
            (Some(f), _, _) => format!("faulted ({f})"),
            (None, true, false) => String::from("landed in the NEW page at X"),
            (None, false, true) => String::from("landed in the MOVED page (now at Y)"),
            _ => String::from("landed nowhere visible"),
        },
        if y_ok {
            ""
        } else {
            "; Y does not translate to P"
        }
    );
    Ok(Outcome {
        scenario: "move_range (mremap)",
        mode,
        fresh,
        commands,
        device_faults: fault.map_or(0, |f| f.count),
        detail,
    })
}

/// Pages of scenario 15's table-sized move: one whole level-3 table (2 MiB) and two pages more.
const TABLE_MOVE_PAGES: u64 = 514;

/// Scenario 15 at table size: X and Y are 2 MiB-aligned, so the first 2 MiB move as one
/// level-3 table entry and the two pages after it leaf by leaf; the device has cached the
/// first and the last page. The old range is 514 pages: the planner invalidates the ASID.
pub fn move_table_remap_old(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let n = TABLE_MOVE_PAGES;
    let last = (n - 1) * PAGE_SIZE;
    let p = Frames::alloc(n, PAGE_SIZE)?;
    let q = Frames::alloc(n, PAGE_SIZE)?;
    p.fill(0, PAGE, 0x41);
    p.fill(last, PAGE, 0x43);
    let (x, y) = (IOVA_BASE + 0xA0_0000, IOVA_BASE + 0x100_0000);
    rig.map(x, p.pa(0), n, Perms::RW)?;
    for off in [0, last] {
        rig.device_probe(x + off)
            .map_err(|e| format!("setup: device read at X+{off:#x}: {e}"))?;
    }
    let (moved, commands) = commands_during(|| {
        rig.space
            .move_range(range(x, n)?, VirtAddr(y))
            .map_err(|e| format!("move_range: {e}"))
    });
    moved?;
    rig.map(x, q.pa(0), n, Perms::RW)?;
    rig.load_device(0x66, LEN)?;
    let mut words = Vec::new();
    let mut fresh = true;
    let mut faults = 0;
    for off in [0, last] {
        let fault = fault_of(
            rig.device_writes(x + off, LEN),
            "device write after the move",
        )?;
        faults += fault.map_or(0, |f| f.count);
        let in_q = q.holds(off, LEN as usize, 0x66);
        let in_p = p.holds(off, LEN as usize, 0x66);
        fresh &= fault.is_none() && in_q && !in_p;
        words.push(format!(
            "X+{off:#x}: {}",
            match (fault, in_q, in_p) {
                (Some(f), _, _) => format!("faulted ({f})"),
                (None, true, false) => String::from("landed in the NEW page"),
                (None, false, true) => String::from("landed in the MOVED page"),
                _ => String::from("landed nowhere visible"),
            }
        ));
    }
    for off in [0, last] {
        if rig.space.translate(VirtAddr(y + off)).map(|t| t.pa) != Some(p.pa(off)) {
            fresh = false;
            words.push(format!("Y+{off:#x} does not translate to the moved page"));
        }
    }
    Ok(Outcome {
        scenario: "move_range of a whole table",
        mode,
        fresh,
        commands,
        device_faults: faults,
        detail: format!(
            "after moving {n} pages X→Y (one level-3 table whole) and mapping new pages at X, \
             the device's writes: {}",
            words.join("; ")
        ),
    })
}

/// Pages of the forked region.
const FORK_PAGES: u64 = 4;

/// Copy-on-write breaks for the pages of one region: a write permission fault on a
/// write-protected page copies it to a new frame and maps the copy writable.
struct CowBreaker {
    base: u64,
    old: Arc<Frames>,
    copies: Mutex<Vec<(u64, Frames)>>,
    breaks: AtomicU32,
}

impl FaultHandler for CowBreaker {
    fn handle(
        &self,
        space: &AddressSpace,
        far: VirtAddr,
        kind: FaultKind,
    ) -> Result<FaultOutcome, AsError> {
        let page = far.0 & !(PAGE_SIZE - 1);
        if kind.class != FaultClass::Permission
            || !kind.write
            || page < self.base
            || page >= self.base + FORK_PAGES * PAGE_SIZE
        {
            return Ok(FaultOutcome::Unhandled);
        }
        let i = (page - self.base) / PAGE_SIZE;
        if self.copies.lock().iter().any(|(j, _)| *j == i) {
            // Already broken: a stale entry; flush it.
            let (t, _) = space.grant(VirtAddr(page), Perms::WRITE)?;
            space.flush(t)?;
            return Ok(FaultOutcome::Spurious);
        }
        let Ok(copy) = Frames::page() else {
            return Ok(FaultOutcome::Unhandled);
        };
        copy.write(0, &self.old.read(i * PAGE_SIZE, PAGE));
        // Linux's wp_page_copy: clear and flush the old entry, then set the new one.
        let r = crate::mm::tlb::VaRange::page(VirtAddr(page));
        space.flush(space.unmap(r)?)?;
        let attrs = MapAttrs::new(Perms::RW, MemType::Normal, false);
        space.flush(space.map(r, copy.pa(0), attrs, false)?)?;
        self.copies.lock().push((i, copy));
        self.breaks.fetch_add(1, Ordering::Relaxed);
        Ok(FaultOutcome::Upgraded)
    }
}

/// Scenario 16: fork-style write-protect, then copy-on-write breaks while the device writes.
pub fn fork_cow(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let old = Arc::new(Frames::alloc(FORK_PAGES, PAGE_SIZE)?);
    for i in 0..FORK_PAGES {
        old.fill(i * PAGE_SIZE, PAGE, 0x10 + i as u8);
    }
    let x = IOVA_BASE + 0x70_0000;
    rig.map(x, old.pa(0), FORK_PAGES, Perms::RW)?;
    // The device writes every page: the SMMU caches writable entries.
    for i in 0..FORK_PAGES {
        rig.load_device(0x10 + i as u8, LEN)?;
        rig.device_writes(x + i * PAGE_SIZE, LEN)
            .map_err(|e| format!("setup: device write of page {i}: {e}"))?;
    }
    let breaker = Arc::new(CowBreaker {
        base: x,
        old: old.clone(),
        copies: Mutex::new(Vec::new()),
        breaks: AtomicU32::new(0),
    });
    rig.space
        .set_fault_policy(FaultPolicy::Handler(breaker.clone()));

    // fork: one batch write-protects the region, one flush at the end.
    let (forked, commands) = commands_during(|| -> Result<(), String> {
        let mut b = rig.space.batch();
        b.write_protect(range(x, FORK_PAGES)?)
            .map_err(|e| format!("write-protect: {e}"))?;
        b.finish().map_err(|e| format!("fork flush: {e}"))?;
        Ok(())
    });
    forked?;
    let mut faults = 0;
    let mut landed = 0;
    for i in 0..FORK_PAGES {
        rig.load_device(0xC0 + i as u8, LEN)?;
        let r = rig.device_writes_with_retries(x + i * PAGE_SIZE, LEN)?;
        faults += r.events;
        let copy_holds = breaker
            .copies
            .lock()
            .iter()
            .any(|(j, c)| *j == i && c.holds(0, LEN as usize, 0xC0 + i as u8));
        if r.succeeded_at.is_some() && copy_holds {
            landed += 1;
        }
    }
    rig.space.set_fault_policy(FaultPolicy::Report);
    let child_intact: Vec<u64> = (0..FORK_PAGES)
        .filter(|&i| old.holds(i * PAGE_SIZE, PAGE, 0x10 + i as u8))
        .collect();
    let breaks = breaker.breaks.load(Ordering::Relaxed);
    let fresh = landed == FORK_PAGES && child_intact.len() == FORK_PAGES as usize;
    Ok(Outcome {
        scenario: "fork write-protect + copy-on-write",
        mode,
        fresh,
        commands,
        device_faults: faults,
        detail: format!(
            "one flush write-protected {FORK_PAGES} pages; the device's writes caused {breaks} \
             copy-on-write break(s), {landed}/{FORK_PAGES} landed in their copies; the child's \
             frames {}",
            if child_intact.len() == FORK_PAGES as usize {
                String::from("keep the pre-fork contents")
            } else {
                format!(
                    "were CORRUPTED ({} of {FORK_PAGES} intact)",
                    child_intact.len()
                )
            }
        ),
    })
}

/// The poison a frame gets once the page migrated away from it (it is free then).
const POISON: u8 = 0xDD;

/// Scenario 17, on one CPU: write, migrate, poison the old frame, write again.
pub fn migration(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let a = Frames::page()?;
    let b = Frames::page()?;
    a.fill(0, PAGE, 0x31);
    let x = IOVA_BASE + 0x80_0000;
    rig.map(x, a.pa(0), 1, Perms::RW)?;
    rig.load_device(0x61, LEN)?;
    rig.device_writes(x, LEN)
        .map_err(|e| format!("setup: device write: {e}"))?;
    let (migrated, commands) = commands_during(|| {
        rig.space
            .migrate(range(x, 1)?, b.pa(0), || b.write(0, &a.read(0, PAGE)))
            .map_err(|e| format!("migrate: {e}"))
    });
    migrated?;
    a.fill(0, PAGE, POISON);
    rig.load_device(0x62, LEN)?;
    let fault = fault_of(rig.device_writes(x, LEN), "device write after migration")?;
    let n = LEN as usize;
    let in_new = b.holds(0, n, 0x62) && b.holds(n as u64, PAGE - n, 0x31);
    let poison_kept = a.holds(0, PAGE, POISON);
    let fresh = fault.is_none() && in_new && poison_kept;
    Ok(Outcome {
        scenario: "page migration",
        mode,
        fresh,
        commands,
        device_faults: fault.map_or(0, |f| f.count),
        detail: format!(
            "after migrating the page, the device's write {}; the old (freed) frame {}",
            match fault {
                Some(f) => format!("faulted ({f})"),
                None if in_new => String::from("landed in the NEW frame over the copy"),
                None => String::from("missed the new frame"),
            },
            if poison_kept {
                "keeps its poison"
            } else {
                "was WRITTEN after it was freed"
            }
        ),
    })
}

/// What the concurrent migration run counted.
#[derive(Debug, Clone, Default)]
pub struct MigrationCounts {
    /// Migrations done by CPU 1.
    pub migrations: u32,
    /// Write + read-back rounds done by the device on CPU 0.
    pub rounds: u32,
    /// Transfers that faulted (a break in progress) and were retried.
    pub retried: u32,
    /// Rounds whose read-back did not match what the device wrote.
    pub lost_writes: u32,
    /// Old frames written after the page had left them.
    pub poisoned_frames_hit: u32,
}

/// Frames the page migrates among in the concurrent run.
const MIGRATION_FRAMES: u64 = 4;
/// Write + read-back rounds of the device in the concurrent run.
const DEVICE_ROUNDS: u32 = 14;
/// How often a transfer caught in a migration's break is retried (a break is a large part of
/// the migrator's loop, so several in a row are possible).
const MIGRATION_RETRY_CAP: u32 = 64;

/// One transfer, retried while it takes a translation fault (a migration's break).
fn transfer_with_retries(
    f: impl Fn() -> Result<(), DmaError>,
    retried: &mut u32,
) -> Result<(), String> {
    for _ in 0..MIGRATION_RETRY_CAP {
        match f() {
            Ok(()) => return Ok(()),
            Err(DmaError::Fault { fault, .. }) if fault.kind == DmaFaultKind::Translation => {
                *retried += 1;
            }
            Err(e) => return Err(format!("transfer: {e}")),
        }
    }
    Err(format!(
        "transfer still faulting after {MIGRATION_RETRY_CAP} attempts"
    ))
}

/// Scenario 17 with the device busy on CPU 0 while CPU 1 migrates the page without pause.
///
/// QEMU's edu reads or writes memory when its DMA timer fires, translating the IOVA then;
/// under `-icount` that moment falls wherever CPU 1's instruction stream is, often inside a
/// break (the transfer then takes a translation fault and is retried: the count proves the
/// overlap). A freed frame keeps the poison until the page migrates back into it; the migrator
/// checks that before each migration, so a write through a stale entry is caught wherever the
/// page ends.
pub fn migration_concurrent(mode: SecondaryTlbMode) -> Result<(Outcome, MigrationCounts), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let frames = Arc::new(Frames::alloc(MIGRATION_FRAMES, PAGE_SIZE)?);
    frames.fill(0, MIGRATION_FRAMES as usize * PAGE, POISON);
    frames.fill(0, PAGE, 0x30);
    let x = IOVA_BASE + 0x90_0000;
    rig.map(x, frames.pa(0), 1, Perms::RW)?;
    let stop = Arc::new(AtomicBool::new(false));
    let before = crate::iommu::get().ok_or("no SMMU")?.stats();
    let job = {
        let (space, frames, stop) = (rig.space.clone(), frames.clone(), stop.clone());
        smp::run_on(1, move || -> Result<(u32, u32), String> {
            let (mut at, mut done, mut hits) = (0u64, 0u32, 0u32);
            // Spin rather than sleep between migrations: a spinning vCPU keeps icount's
            // virtual clock moving, and the device's CPU sleeps in WFI through each DMA.
            while !stop.load(Ordering::Acquire) {
                let to = (at + 1) % MIGRATION_FRAMES;
                let (src, dst) = (at * PAGE_SIZE, to * PAGE_SIZE);
                if !frames.holds(dst, PAGE, POISON) {
                    hits += 1;
                }
                space
                    .migrate(range(x, 1)?, frames.pa(dst), || {
                        frames.write(dst, &frames.read(src, PAGE))
                    })
                    .map_err(|e| format!("migration {done}: {e}"))?;
                // The old frame is free now.
                frames.fill(src, PAGE, POISON);
                at = to;
                done += 1;
            }
            Ok((done, hits))
        })
        .map_err(|e| format!("starting the migrator on CPU 1: {e}"))?
    };
    let mut counts = MigrationCounts::default();
    let mut device = || -> Result<(), String> {
        for round in 0..DEVICE_ROUNDS {
            let pattern = 0x40 + round as u8;
            rig.load_device(pattern, LEN)?;
            transfer_with_retries(|| rig.device_writes(x, LEN), &mut counts.retried)?;
            // Read back through the device into the upper half of its buffer.
            transfer_with_retries(|| rig.device_probe(x), &mut counts.retried)?;
            let back = rig.device_buffer(crate::testkit::PROBE_OFFSET + 4)?;
            let p = crate::testkit::PROBE_OFFSET as usize;
            if back[p..p + 4].iter().any(|&b| b != pattern) {
                counts.lost_writes += 1;
            }
            counts.rounds += 1;
        }
        Ok(())
    };
    let device_result = device();
    stop.store(true, Ordering::Release);
    let migrated = job
        .join(JOIN_TIMEOUT_MS)
        .map_err(|e| format!("migrator: {e}"))?;
    device_result?;
    let (migrations, hits) = migrated?;
    counts.migrations = migrations;
    counts.poisoned_frames_hit = hits;
    let commands = crate::iommu::get().ok_or("no SMMU")?.stats().delta(&before);
    let current = rig
        .space
        .translate(VirtAddr(x))
        .map(|t| (t.pa.0 - frames.pa(0).0) / PAGE_SIZE)
        .ok_or("the page is not mapped after the run")?;
    counts.poisoned_frames_hit += (0..MIGRATION_FRAMES)
        .filter(|&i| i != current && !frames.holds(i * PAGE_SIZE, PAGE, POISON))
        .count() as u32;
    // The frame the page ends in must hold the device's last write.
    let last = 0x40 + (DEVICE_ROUNDS - 1) as u8;
    if !frames.holds(current * PAGE_SIZE, LEN as usize, last) {
        counts.lost_writes += 1;
    }
    let fresh = counts.lost_writes == 0 && counts.poisoned_frames_hit == 0;
    let outcome = Outcome {
        scenario: "page migration under DMA (2 CPUs)",
        mode,
        fresh,
        commands,
        device_faults: counts.retried,
        detail: format!(
            "{} migrations on CPU 1 during {} write + read-back rounds on CPU 0 ({} transfers \
             retried after a fault); {} lost write(s), {} freed frame(s) written",
            counts.migrations,
            counts.rounds,
            counts.retried,
            counts.lost_writes,
            counts.poisoned_frames_hit
        ),
    };
    Ok((outcome, counts))
}

crate::ktest! {
    /// The move invalidates the old address in the SMMU before it returns (one TLBI + one
    /// CMD_SYNC): the device's write to X reaches the new page Q; Y still reaches P.
    fn s15_move_range() {
        let o = move_range_remap_old(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        kassert_eq!((o.commands.tlbi_nh_va + o.commands.tlbi_nh_va_range, o.commands.sync), (1, 1),
            "one-page move: (invalidations by VA, CMD_SYNC); commands {}", o.commands);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the SMMU is told after the move returned; the device's write to X
    /// lands in the moved page.
    fn s15_move_range_nc_move_late() {
        let o = move_range_remap_old(SecondaryTlbMode::MoveLate)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert!(o.detail.contains("MOVED page"), "expected the write in the moved page: {}", o.detail);
        kassert_eq!(o.commands.commands, 0, "no SMMU command before the move returned (commands {})", o.commands);
        Ok(())
    }
}

crate::ktest! {
    /// A table-sized move: the old 514 pages go ASID-wide (one TLBI_NH_ASID + one CMD_SYNC)
    /// before the move returns; the device's writes to the first and the last old page reach
    /// the new pages.
    fn s15_move_range_table() {
        let o = move_table_remap_old(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        // A table entry moved: nothing is known of levels.
        expect_planned(&o.commands, &[(FlushKind::Range { start: IOVA_BASE + 0xA0_0000, pages: TABLE_MOVE_PAGES }, FlushHint::UNKNOWN)],
            "514-page move")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: told after the move returned, the SMMU sends both writes to the moved
    /// pages.
    fn s15_move_range_table_nc_move_late() {
        let o = move_table_remap_old(SecondaryTlbMode::MoveLate)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert_eq!(o.detail.matches("MOVED page").count(), 2, "both writes in the moved pages: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// One flush write-protects the region (one SMMU flush + one CMD_SYNC); every device write
    /// then breaks copy-on-write once and lands in its copy; the child's frames are intact.
    fn s16_fork_cow() {
        let o = fork_cow(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        kassert_eq!((o.commands.flushes, o.commands.sync), (1, 1),
            "fork: one SMMU flush, one CMD_SYNC; commands {}", o.commands);
        kassert!(o.detail.contains(&format!("caused {FORK_PAGES} copy-on-write")), "one break per page: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the write-protect never reaches the SMMU; the device writes straight
    /// into the child's frames.
    fn s16_fork_cow_nc_off() {
        let o = fork_cow(SecondaryTlbMode::Off)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert!(o.detail.contains("CORRUPTED"), "expected the child's frames corrupted: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// The break reaches the SMMU before the copy (one TLBI + one CMD_SYNC): the write after
    /// the migration lands in the new frame; the freed frame keeps its poison.
    fn s17_migration() {
        let o = migration(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0x80_0000), PAGES_CHANGED)], "one-page migration")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the device's stale entry sends its write into the freed frame.
    fn s17_migration_nc_off() {
        let o = migration(SecondaryTlbMode::Off)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        kassert!(o.detail.contains("WRITTEN after it was freed"), "expected the freed frame written: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// The device writes and reads back on CPU 0 while CPU 1 migrates the page without pause:
    /// transfers are caught in breaks (and retried), no write is lost, no freed frame is
    /// written.
    fn s17_migration_concurrent() {
        crate::testkit::require_cpus(2)?;
        let (o, counts) = migration_concurrent(SecondaryTlbMode::Sync)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_fresh()?;
        kassert!(counts.migrations >= DEVICE_ROUNDS, "migrations done: {}", o.detail);
        kassert!(counts.retried > 0,
            "no transfer was ever caught in a migration's break: the DMA and the migrations never overlapped ({})", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: with the SMMU never told, the device keeps using the first frame.
    fn s17_migration_concurrent_nc_off() {
        crate::testkit::require_cpus(2)?;
        let (o, _) = migration_concurrent(SecondaryTlbMode::Off)?;
        log::info!("{}: {}", o.scenario, o.detail);
        o.expect_stale()?;
        Ok(())
    }
}
