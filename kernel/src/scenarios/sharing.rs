//! Scenarios 9, 11 and 12: more than one address space, device or CPU.
//!
//! 9. An ASID-wide invalidation is precise. QEMU's IOTLB is one table for the whole SMMU,
//!    keyed by ASID. Flushing address space A must remove A's entries and leave B's, which sit
//!    at the same VA. To see B's entry survive, both spaces remap the page with the SMMU left
//!    out (`off`), so both entries go stale on purpose. Then only A is flushed ASID-wide: A's
//!    device must reach A's new frame while B's device still reaches B's old one.
//! 11. Two devices bound to one address space share its ASID, and so its IOTLB entries. One
//!     change and one flush must reach both devices (negative control: `off`).
//! 12. Several CPUs flush the same address space at once, each toggling its own pages, while
//!     the device checks them. No command may be lost or corrupted: the SMMU counters must
//!     match the flushes exactly, with no global error, rejected command or timeout. Every
//!     check must be fresh. CPU 1 flips its pages RO/RW without pause for as long as CPU 0
//!     changes its own pages and has the device check each one. Under `-icount` the vCPUs
//!     take turns on one host thread, so a CPU 1 that ran short jobs would finish them while
//!     CPU 0 waits for a DMA, and no two flushes would ever overlap. Flipping without pause
//!     means CPU 0 resumes while CPU 1 is inside a flush; the test counts those overlaps and
//!     requires them. The cost is wall time: CPU 1 really executes while each DMA's 100 ms of
//!     virtual time passes (about 1.5 s per run).

use super::Outcome;
use crate::testkit::{
    Frames, IOVA_BASE, PAGES_CHANGED, PageSweep, Rig, commands_during, expect_planned, fault_of,
    planned_commands, range, require_cpus, require_edus,
};
use crate::{
    drivers::dma::DmaFaultKind,
    iommu, kassert, kassert_eq,
    mm::{PAGE_SIZE, address_space::AddressSpace, pgtable::Perms, tlb::SecondaryTlbMode},
    smp,
};
use alloc::{format, string::String, sync::Arc, vec, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use smmu::FlushKind;

const LEN: u32 = 16;

/// The device writes `len` bytes of `byte` at `va` (staged through its buffer) and must not
/// fault: for the steps that establish a scenario's starting state.
fn write_through(rig: &Rig, va: u64, byte: u8, what: &str) -> Result<(), String> {
    rig.load_device(byte, LEN)?;
    rig.device_writes(va, LEN)
        .map_err(|e| format!("{what}: {e}"))
}

/// Scenario 9: ASID-wide invalidation of A leaves B's entry for the same VA in place. A is
/// switched back to `mode` for the flush; `sync` is the correct mode.
pub fn asid_flush_is_precise(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let a = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let b = Rig::new(1, mode).map_err(|e| format!("{e:?}"))?;
    if a.space.asid() == b.space.asid() {
        return Err(format!(
            "setup: both address spaces have ASID {}",
            a.space.asid()
        ));
    }
    let frames = Frames::alloc(4, PAGE_SIZE)?;
    let (a_old, a_new, b_old, b_new) = (0, PAGE_SIZE, 2 * PAGE_SIZE, 3 * PAGE_SIZE);
    let x = IOVA_BASE + 0x9000;
    a.map(x, frames.pa(a_old), 1, Perms::RW)?;
    b.map(x, frames.pa(b_old), 1, Perms::RW)?;
    a.device_probe(x)
        .map_err(|e| format!("setup: A's device read: {e}"))?;
    b.device_probe(x)
        .map_err(|e| format!("setup: B's device read: {e}"))?;

    // Both spaces move x with the SMMU left out: both cached entries are now stale.
    for (rig, new) in [(&a, a_new), (&b, b_new)] {
        rig.space
            .set_secondary_mode_override(Some(SecondaryTlbMode::Off));
        rig.space
            .remap(range(x, 1)?, frames.pa(new))
            .map_err(|e| format!("remap: {e}"))?;
    }
    // Evidence that both entries are cached: each device still reaches its old frame.
    write_through(&a, x, 0xA1, "A's write before the flush")?;
    write_through(&b, x, 0xB1, "B's write before the flush")?;
    let n = LEN as usize;
    if !frames.holds(a_old, n, 0xA1) || !frames.holds(b_old, n, 0xB1) {
        return Err(format!(
            "setup: the SMMU did not keep both entries (A's old frame {}, B's old frame {}), \
             so precision cannot be observed",
            frames.describe(a_old),
            frames.describe(b_old)
        ));
    }

    a.space.set_secondary_mode_override(Some(mode));
    let (flushed, commands) = commands_during(|| a.space.flush_all());
    flushed.map_err(|e| format!("flush_all of A: {e}"))?;
    write_through(&a, x, 0xA2, "A's write after the flush")?;
    write_through(&b, x, 0xB2, "B's write after the flush")?;
    b.space.set_secondary_mode_override(Some(mode));

    let a_fresh = frames.holds(a_new, n, 0xA2) && frames.holds(a_old, n, 0xA1);
    let b_kept = frames.holds(b_old, n, 0xB2) && !frames.holds(b_new, n, 0xB2);
    let detail = format!(
        "after flushing A (ASID {}) ASID-wide: A's device wrote its {} frame; B's device (ASID {}) \
         wrote its {} frame ({})",
        a.space.asid(),
        if a_fresh { "new" } else { "OLD" },
        b.space.asid(),
        if b_kept { "old" } else { "NEW" },
        if b_kept {
            "B's entry survived: precise"
        } else {
            "B's entry was flushed too: IMPRECISE"
        }
    );
    Ok(Outcome {
        scenario: "ASID-wide flush is precise",
        mode,
        fresh: a_fresh && b_kept,
        commands,
        device_faults: 0,
        detail,
    })
}

/// Scenario 11: both devices read P through one address space; P is upgraded RO→RW with one
/// flush; both devices write P (at different offsets).
pub fn two_devices_one_space(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let first = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let second = first.join(1).map_err(|e| format!("{e:?}"))?;
    let p = Frames::page()?;
    p.fill(0, PAGE_SIZE as usize, 0x11);
    let x = IOVA_BASE + 0xB000;
    first.map(x, p.pa(0), 1, Perms::R)?;
    first
        .device_probe(x)
        .map_err(|e| format!("setup: first device's read: {e}"))?;
    second
        .device_probe(x)
        .map_err(|e| format!("setup: second device's read: {e}"))?;

    let (upgraded, commands) = commands_during(|| first.protect(x, 1, Perms::RW));
    upgraded?;
    let mut sweep = PageSweep::default();
    let mut words = Vec::new();
    for (k, rig, off, byte) in [(0u64, &first, 0u64, 0xE0u8), (1, &second, 0x100, 0xE1)] {
        rig.load_device(byte, LEN)?;
        let fault = fault_of(
            rig.device_writes(x + off, LEN),
            &format!("device {} write", rig.edu.bdf()),
        )?;
        let landed = p.holds(off, LEN as usize, byte);
        let untouched = p.holds(off, LEN as usize, 0x11);
        words.push(format!(
            "device {} {}",
            rig.edu.bdf(),
            match fault {
                Some(f) if untouched => format!("faulted ({})", f.kind),
                Some(f) => format!("faulted ({}) but P CHANGED", f.kind),
                None if landed => String::from("wrote P"),
                None => String::from("went through but P does NOT hold its data"),
            }
        ));
        let fresh = fault.is_none() && landed;
        if let Some(f) = fault
            && f.kind != DmaFaultKind::Permission
        {
            return Err(format!("expected a permission fault or success, saw {f}"));
        }
        sweep.record(k, fresh, fault.map_or(0, |f| f.count));
    }
    Ok(Outcome {
        scenario: "two devices, one address space",
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail: format!("after one upgrade + flush: {}", words.join("; ")),
    })
}

/// Pages each CPU owns in scenario 12.
const CPU_PAGES: u64 = 8;
/// Rounds of scenario 12; each ends with CPU 1's pages all RW (even rounds) or all RO.
const ROUNDS: u32 = 4;
/// Changes (each checked by the device) CPU 0 makes to its pages per round; CPU 1 keeps
/// flipping its pages for as long as these take.
const LOCAL_STEPS: u64 = CPU_PAGES;
/// How long CPU 0 waits for CPU 1's round.
const JOIN_TIMEOUT_MS: u64 = 30_000;

/// Sets the page at `va` to RW or RO and flushes; counts the flushes that invalidate (every
/// real change) in `count`.
fn set_writable(space: &AddressSpace, va: u64, rw: bool, count: &AtomicU64) -> Result<(), String> {
    let perms = if rw { Perms::RW } else { Perms::R };
    let t = space
        .protect(range(va, 1)?, perms)
        .map_err(|e| format!("protect {va:#x}: {e}"))?;
    let invalidates = t.invalidation().is_some();
    space.flush(t).map_err(|e| format!("flush {va:#x}: {e}"))?;
    if invalidates {
        count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One device check of scenario 12's page `i` of `frames` (mapped at `base`), whose state is
/// `rw`: a write of the staged `pattern` must land (RW) or fault and leave the page unchanged
/// (RO; the device then reads the page so the SMMU caches the read-only entry). `held` is
/// what the page holds in its first `LEN` bytes.
#[allow(clippy::too_many_arguments)]
fn check_page(
    rig: &Rig,
    frames: &Frames,
    base: u64,
    i: u64,
    label: u64,
    rw: bool,
    pattern: u8,
    held: &mut [u8],
    sweep: &mut PageSweep,
) -> Result<(), String> {
    let va = base + i * PAGE_SIZE;
    let off = i * PAGE_SIZE;
    let fault = fault_of(
        rig.device_writes(va, LEN),
        &format!("device write of {va:#x}"),
    )?;
    let n = LEN as usize;
    let fresh = if rw {
        fault.is_none() && frames.holds(off, n, pattern)
    } else {
        fault.is_some_and(|f| f.kind == DmaFaultKind::Permission)
            && frames.holds(off, n, held[i as usize])
    };
    if frames.holds(off, n, pattern) {
        held[i as usize] = pattern;
    }
    if !rw {
        rig.device_probe(va)
            .map_err(|e| format!("device read of read-only {va:#x}: {e}"))?;
    }
    sweep.record(label, fresh, fault.map_or(0, |f| f.count));
    Ok(())
}

/// What scenario 12 counted besides the SMMU's own counters.
#[derive(Debug, Clone, Default)]
pub struct ConcurrentCounts {
    /// Flushes that needed an invalidation, from both CPUs.
    pub flushes: u64,
    /// Of which CPU 1's.
    pub remote_flushes: u64,
    /// Secondary-TLB failures the address space recorded meanwhile.
    pub secondary_failures: u64,
    /// CPU 0's change + device check steps during which CPU 1 flushed: evidence that the
    /// flushes and the device's transfers really overlapped.
    pub overlapping_steps: u64,
    /// CPU 0's flushes that started while CPU 1 was inside one of its own (between its
    /// `protect` and the end of its flush): the two flush paths really interleaved.
    pub interleaved_flushes: u64,
}

/// Scenario 12: CPU 1 toggles its pages RO/RW, flushing each change, while CPU 0 toggles its
/// own and has the device check each of them right after its flush; after each round the
/// device checks CPU 1's pages.
pub fn concurrent_flushes_sweep(
    mode: SecondaryTlbMode,
) -> Result<(Outcome, PageSweep, ConcurrentCounts), String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let iommu = iommu::get().ok_or("no SMMU")?;
    let local = Frames::alloc(CPU_PAGES, PAGE_SIZE)?;
    let remote = Frames::alloc(CPU_PAGES, PAGE_SIZE)?;
    let (lva, rva) = (IOVA_BASE + 0x10_0000, IOVA_BASE + 0x20_0000);
    let mut held_local: Vec<u8> = (0..CPU_PAGES).map(|i| 0x20 + i as u8).collect();
    let mut held_remote: Vec<u8> = (0..CPU_PAGES).map(|i| 0x40 + i as u8).collect();
    for i in 0..CPU_PAGES {
        let off = i * PAGE_SIZE;
        local.fill(off, PAGE_SIZE as usize, held_local[i as usize]);
        remote.fill(off, PAGE_SIZE as usize, held_remote[i as usize]);
    }
    rig.map(lva, local.pa(0), CPU_PAGES, Perms::R)?;
    rig.map(rva, remote.pa(0), CPU_PAGES, Perms::R)?;
    for i in 0..CPU_PAGES {
        for va in [lva, rva] {
            rig.device_probe(va + i * PAGE_SIZE)
                .map_err(|e| format!("setup: device read: {e}"))?;
        }
    }

    let local_flushes = AtomicU64::new(0);
    let remote_flushes = Arc::new(AtomicU64::new(0));
    let mut local_rw = vec![false; CPU_PAGES as usize];
    let mut overlapping_steps = 0;
    let mut interleaved_flushes = 0;
    let remote_busy = Arc::new(AtomicBool::new(false));
    let mut sweep = PageSweep::default();
    let failures_before = rig.space.stats().secondary_failures;
    let before = iommu.stats();
    for round in 0..ROUNDS {
        let target_rw = round % 2 == 0;
        let space = rig.space.clone();
        let count = remote_flushes.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = stop.clone();
        let busy = remote_busy.clone();
        let job = smp::run_on(1, move || -> Result<(), String> {
            // The pages start the round at the previous round's target, the opposite of this
            // one's; every pass flips all of them, until CPU 0 has done its part.
            let mut rw = !target_rw;
            loop {
                rw = !rw;
                for i in 0..CPU_PAGES {
                    busy.store(true, Ordering::Release);
                    let r = set_writable(&space, rva + i * PAGE_SIZE, rw, &count);
                    busy.store(false, Ordering::Release);
                    r?;
                }
                if stop_seen.load(Ordering::Acquire) {
                    break;
                }
            }
            // Leave every page at the round's target.
            if rw != target_rw {
                for i in 0..CPU_PAGES {
                    set_writable(&space, rva + i * PAGE_SIZE, target_rw, &count)?;
                }
            }
            Ok(())
        })
        .map_err(|e| format!("starting CPU 1's round {round}: {e}"))?;

        let pattern = 0x80 + round as u8;
        rig.load_device(pattern, LEN)?;
        let mut local_result = Ok(());
        for step in 0..LOCAL_STEPS {
            let i = (step % CPU_PAGES) as usize;
            let remote_before = remote_flushes.load(Ordering::Relaxed);
            if remote_busy.load(Ordering::Acquire) {
                interleaved_flushes += 1;
            }
            local_rw[i] = !local_rw[i];
            local_result = set_writable(
                &rig.space,
                lva + i as u64 * PAGE_SIZE,
                local_rw[i],
                &local_flushes,
            )
            .and_then(|()| {
                check_page(
                    &rig,
                    &local,
                    lva,
                    i as u64,
                    i as u64,
                    local_rw[i],
                    pattern,
                    &mut held_local,
                    &mut sweep,
                )
            });
            if local_result.is_err() {
                break;
            }
            if remote_flushes.load(Ordering::Relaxed) != remote_before {
                overlapping_steps += 1;
            }
        }
        // Always stop and collect CPU 1 before returning: its job holds the address space.
        stop.store(true, Ordering::Release);
        let remote_result = job
            .join(JOIN_TIMEOUT_MS)
            .map_err(|e| format!("CPU 1's round {round}: {e}"))?;
        local_result?;
        remote_result.map_err(|e| format!("CPU 1, round {round}: {e}"))?;
        for i in 0..CPU_PAGES {
            check_page(
                &rig,
                &remote,
                rva,
                i,
                CPU_PAGES + i,
                target_rw,
                pattern,
                &mut held_remote,
                &mut sweep,
            )?;
        }
    }
    let commands = iommu.stats().delta(&before);
    let remote_count = remote_flushes.load(Ordering::Relaxed);
    let counts = ConcurrentCounts {
        flushes: local_flushes.load(Ordering::Relaxed) + remote_count,
        remote_flushes: remote_count,
        secondary_failures: rig.space.stats().secondary_failures - failures_before,
        overlapping_steps,
        interleaved_flushes,
    };
    let outcome = Outcome {
        scenario: "concurrent flushes (2 CPUs)",
        mode,
        fresh: sweep.all_fresh(),
        commands,
        device_faults: sweep.events,
        detail: format!(
            "{} flushes ({} from CPU 1) over {ROUNDS} rounds, CPU 1 flushing during {} of CPU 0's \
             {} change + check steps, {} of CPU 0's flushes started inside one of CPU 1's; {}",
            counts.flushes,
            counts.remote_flushes,
            counts.overlapping_steps,
            u64::from(ROUNDS) * LOCAL_STEPS,
            counts.interleaved_flushes,
            sweep.summary()
        ),
    };
    Ok((outcome, sweep, counts))
}

/// Scenario 12, as a table row.
pub fn concurrent_flushes(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    concurrent_flushes_sweep(mode).map(|(o, ..)| o)
}

crate::ktest! {
    /// Flushing A ASID-wide (one TLBI_NH_ASID + one CMD_SYNC) refreshes A's device and leaves
    /// B's cached entry for the same VA in place.
    fn s09_asid_flush_is_precise() {
        require_edus(2)?;
        let o = asid_flush_is_precise(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        kassert_eq!(
            (o.commands.tlbi_nh_asid, o.commands.sync, o.commands.tlbi_nh_va, o.commands.tlbi_nh_va_range, o.commands.tlbi_all),
            (1, 1, 0, 0, 0),
            "flush_all of A: (nh_asid, sync, nh_va, range, all); issued {}",
            o.commands
        );
        Ok(())
    }
}

crate::ktest! {
    /// One upgrade + one flush (one TLBI_NH_VA + one CMD_SYNC) reaches both devices.
    fn s11_two_devices_one_space() {
        require_edus(2)?;
        let o = two_devices_one_space(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0xB000), PAGES_CHANGED)],
            "one-page upgrade shared by two devices")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: both devices fault on the shared stale read-only entry.
    fn s11_two_devices_one_space_nc_off() {
        require_edus(2)?;
        let o = two_devices_one_space(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert!(o.detail.matches("faulted (permission fault)").count() == 2 && !o.detail.contains("CHANGED"),
            "expected both devices to fault with P unchanged, saw: {}", o.detail);
        kassert_eq!(o.device_faults, 2 * (LEN / 4), "one event per 4-byte chunk of both writes");
        Ok(())
    }
}

crate::ktest! {
    /// Two CPUs flush at once: every check fresh, and the SMMU saw exactly one TLBI_NH_VA +
    /// one CMD_SYNC per flush, with no global error, rejection or timeout.
    fn s12_concurrent_flushes() {
        require_cpus(2)?;
        let (o, sweep, counts) = concurrent_flushes_sweep(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        let c = o.commands;
        kassert_eq!(sweep.pages.len() as u64, u64::from(ROUNDS) * (LOCAL_STEPS + CPU_PAGES), "device checks");
        kassert!(counts.remote_flushes >= u64::from(ROUNDS) * CPU_PAGES,
            "CPU 1 flushed only {} times: at least one pass over its {CPU_PAGES} pages per round expected", counts.remote_flushes);
        kassert_eq!((c.gerrors, c.commands_rejected, c.timeouts), (0, 0, 0),
            "SMMU (gerrors, rejected commands, timeouts) during the run; counters {}", c);
        kassert_eq!(counts.secondary_failures, 0, "secondary TLB failures");
        kassert!(counts.overlapping_steps > 0,
            "CPU 1 never flushed while CPU 0 changed and checked its pages: no concurrency was tested ({})", o.detail);
        kassert!(counts.interleaved_flushes > 0,
            "none of CPU 0's flushes started while CPU 1 was inside one: the flush paths never interleaved ({})", o.detail);
        // Every flush is a one-page permission change: one planned command + one CMD_SYNC.
        let one = planned_commands(FlushKind::Page(IOVA_BASE), PAGES_CHANGED)?;
        let n = counts.flushes;
        kassert_eq!(
            (c.flushes, c.tlbi_nh_va, c.tlbi_nh_va_range, c.sync, c.batches, c.commands),
            (n, n * one.tlbi_nh_va, n * one.tlbi_nh_va_range, n, n, 2 * n),
            "per flush one SMMU flush, the planned one-page command, one CMD_SYNC, one batch, two commands: (flushes, nh_va, range, sync, batches, commands) for {} flushes; counters {}",
            n, c
        );
        kassert_eq!(c.tlbi_nh_asid + c.tlbi_all, 0, "only single-page invalidations expected; counters {}", c);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control (not required by the issue, but it shows the checks can see a lost
    /// invalidation): with the SMMU never told, checks go stale.
    fn s12_concurrent_flushes_nc_off() {
        require_cpus(2)?;
        let (o, sweep, _) = concurrent_flushes_sweep(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert!(sweep.pages.iter().any(|&(i, f)| i >= CPU_PAGES && !f),
            "expected stale checks of CPU 1's pages too: {}", sweep.summary());
        Ok(())
    }
}
