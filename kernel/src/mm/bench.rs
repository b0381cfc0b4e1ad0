//! Flush figures for the "Virtual memory" issue's closing note, printed as `log::info!` lines by
//! the `mm::ktests::flush_costs` test: what each kind of page-table change costs in flushes, CPU
//! TLBIs and secondary-TLB notifications (and SMMU commands, when an SMMU and an edu device can
//! be bound), and how long a one-page and a 512-page flush take.
//!
//! Counts come from the address space's own counters ([`AddressSpace::stats`]), so they are
//! exact and independent of the clock. Times are read from the generic timer's virtual counter
//! around [`AddressSpace::flush`] alone (the table change is made before the clock starts), 101
//! runs each, and reported as the median with the extremes. Under QEMU's `-icount shift=N` the
//! counter is *virtual* time, 2^N ns per executed instruction — so a time is really an
//! instruction count (at shift 4 and the 62.5 MHz counter, one tick per instruction); without
//! `-icount` it is host time. The lines say which clock they used; nothing here asserts on a
//! number.

use super::{Frames, OrFail, Recorder, map, new_space, poke, protect, range};
use crate::{
    cpu,
    iommu::{self, Iommu},
    mm::{
        PAGE_SIZE, VirtAddr,
        addr::BLOCK_2M,
        address_space::{AddressSpace, FaultPolicy},
        context,
        pgtable::Perms,
        tlb::SecondaryTlbMode,
        tlb::{FlushStatsSnapshot, arch::detect_features},
    },
};
use alloc::{format, string::String, sync::Arc, vec::Vec};

/// Runs per timed figure (odd, so the median is one sample).
const RUNS: usize = 101;
/// Where the figures' mappings live (lower half, 2 MiB-aligned).
const VA: u64 = 0x0000_0012_0000_0000;

/// The SMMU bound to an address space through the first edu device's StreamID, unbound on drop.
/// The device's DMA stays off: only the SMMU's flush commands are measured.
struct SmmuBinding {
    iommu: &'static Iommu,
    sid: u32,
}

impl SmmuBinding {
    /// Binds `space`, or explains why not (no SMMU, no edu, StreamID busy).
    fn new(space: &Arc<AddressSpace>) -> Result<Self, String> {
        let iommu = iommu::get().ok_or("no SMMU")?;
        let edu = crate::drivers::edu::devices()
            .first()
            .ok_or("no edu device")?;
        let sid = edu.stream_id().ok_or("the edu device has no StreamID")?;
        iommu.bind(sid, space).or_fail("bind")?;
        Ok(Self { iommu, sid })
    }
}

impl Drop for SmmuBinding {
    fn drop(&mut self) {
        if let Err(e) = self.iommu.unbind(self.sid) {
            log::error!("flush figures: unbinding StreamID {:#x}: {e}", self.sid);
        }
    }
}

/// A space whose flushes reach one secondary TLB: the SMMU when it can be bound, otherwise a
/// counting [`Recorder`].
struct Subject {
    space: Arc<AddressSpace>,
    smmu: Option<SmmuBinding>,
    _recorder: Option<Arc<Recorder>>,
    handle: Option<crate::mm::tlb::SecondaryTlbHandle>,
}

impl Subject {
    /// `with_secondary`: attach a secondary TLB (SMMU if possible) or leave the CPU alone.
    fn new(with_secondary: bool) -> Result<Self, String> {
        let space = new_space()?;
        space.set_secondary_mode_override(Some(SecondaryTlbMode::Sync));
        let mut s = Self {
            space,
            smmu: None,
            _recorder: None,
            handle: None,
        };
        if with_secondary {
            match SmmuBinding::new(&s.space) {
                Ok(b) => s.smmu = Some(b),
                Err(why) => {
                    log::info!("flush figures: SMMU not bound ({why}); using a recording TLB");
                    let r = Recorder::new(false);
                    s.handle = Some(s.space.register_secondary(r.clone()).or_fail("register")?);
                    s._recorder = Some(r);
                }
            }
        }
        Ok(s)
    }

    fn secondary_name(&self) -> &'static str {
        match (&self.smmu, &self.handle) {
            (Some(_), _) => "SMMU",
            (None, Some(_)) => "recording TLB",
            (None, None) => "none",
        }
    }

    /// Runs `op` and logs what it cost.
    fn row(&self, what: &str, op: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let before = self.space.stats();
        let smmu_before = self.smmu.as_ref().map(|b| b.iommu.stats());
        op().or_fail(what)?;
        let d = delta(&self.space.stats(), &before);
        let smmu = match (&self.smmu, smmu_before) {
            (Some(b), Some(s)) => format!("{}", b.iommu.stats().delta(&s)),
            _ => String::from("-"),
        };
        log::info!(
            "flush figures: {what:<28} page={} range={} all={} barrier_only={} cpu_tlbi={} \
             secondary={} skipped={} frames_freed={} | smmu: {smmu}",
            d.page_flushes,
            d.range_flushes,
            d.all_flushes,
            d.barrier_only,
            d.cpu_tlbis,
            d.secondary_notifications,
            d.secondary_skipped,
            d.frames_freed,
        );
        Ok(())
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.smmu.take();
        if let Some(h) = self.handle.take()
            && let Err(e) = self.space.unregister_secondary(h)
        {
            log::error!("flush figures: unregister: {e}");
        }
    }
}

fn delta(now: &FlushStatsSnapshot, before: &FlushStatsSnapshot) -> FlushStatsSnapshot {
    now.since(before)
}

/// One line per operation: flushes by kind, CPU TLBIs, secondary notifications, SMMU commands.
pub(super) fn op_counts() -> Result<(), String> {
    let pages = Frames::alloc(512, BLOCK_2M)?;
    let block = Frames::alloc(512, BLOCK_2M)?;
    let one = Frames::alloc(1, PAGE_SIZE)?;
    let other = Frames::alloc(1, PAGE_SIZE)?;
    let s = Subject::new(true)?;
    let sp = &s.space;
    log::info!(
        "flush figures: CPU FEAT_TLBIRANGE={}, secondary TLB: {}, mode sync",
        detect_features().range,
        s.secondary_name()
    );
    let v1 = VA;
    let v512 = VA + BLOCK_2M;
    let vb = VA + 2 * BLOCK_2M;
    s.row("map 1 page", || map(sp, v1, one.pa(0), 1, Perms::RW, false))?;
    s.row("map 512 pages", || {
        map(sp, v512, pages.pa(0), 512, Perms::RW, false)
    })?;
    s.row("map 2M block", || {
        map(sp, vb, block.pa(0), 512, Perms::RW, true)
    })?;
    s.row("protect 1 page RW->R", || protect(sp, v1, 1, Perms::R))?;
    s.row("protect 1 page R->RW", || protect(sp, v1, 1, Perms::RW))?;
    s.row("protect 512 pages RW->R", || {
        protect(sp, v512, 512, Perms::R)
    })?;
    s.row("protect 512 pages R->RW", || {
        protect(sp, v512, 512, Perms::RW)
    })?;
    s.row("protect 2M block RW->R", || protect(sp, vb, 512, Perms::R))?;
    s.row("protect 2M block R->RW", || protect(sp, vb, 512, Perms::RW))?;
    s.row("remap 1 page", || {
        sp.remap(range(v1, 1)?, other.pa(0)).or_fail("remap")
    })?;
    s.row("split 2M block", || {
        sp.split_block(VirtAddr(vb)).or_fail("split")
    })?;
    s.row("merge 512 pages to 2M", || {
        sp.merge_to_block(VirtAddr(vb), None).or_fail("merge")
    })?;
    // The fault-driven upgrade: a CPU write to a read-only page, resolved by the policy.
    protect(sp, v1, 1, Perms::R)?;
    sp.set_fault_policy(FaultPolicy::UpgradeOnWrite);
    s.row("CPU write fault upgrade", || {
        let entered = context::enter(sp).or_fail("enter")?;
        // SAFETY: entered; `v1` maps `other`, owned by this function; the UpgradeOnWrite policy
        // resolves the write permission fault.
        unsafe { poke(v1, 1) };
        drop(entered);
        Ok(())
    })?;
    s.row("unmap 1 page", || {
        sp.flush(sp.unmap(range(v1, 1)?).or_fail("unmap")?)
            .map(drop)
            .or_fail("flush")
    })?;
    s.row("unmap 512 pages", || {
        sp.flush(sp.unmap(range(v512, 512)?).or_fail("unmap")?)
            .map(drop)
            .or_fail("flush")
    })?;
    s.row("unmap 2M block", || {
        sp.flush(sp.unmap(range(vb, 512)?).or_fail("unmap")?)
            .map(drop)
            .or_fail("flush")
    })?;
    s.row("flush_all", || sp.flush_all().or_fail("flush_all"))?;
    Ok(())
}

/// Minimum, median and maximum of `samples` (sorted in place).
fn summary(samples: &mut [u64]) -> (u64, u64, u64) {
    samples.sort_unstable();
    (
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1],
    )
}

/// Ticks taken by [`AddressSpace::flush`] of a protect of `pages` pages at `va`, alternating
/// RW→R and R→RW (the same flush shape both ways), [`RUNS`] times.
fn time_protect_flushes(space: &AddressSpace, va: u64, pages: u64) -> Result<Vec<u64>, String> {
    let r = range(va, pages)?;
    let mut ticks = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let perms = if i % 2 == 0 { Perms::R } else { Perms::RW };
        let token = space.protect(r, perms).or_fail("protect")?;
        let t0 = cpu::counter();
        let done = space.flush(token);
        let t1 = cpu::counter();
        done.or_fail("flush")?;
        ticks.push(t1 - t0);
    }
    Ok(ticks)
}

/// Ticks taken by [`AddressSpace::flush_all`], [`RUNS`] times.
fn time_flush_all(space: &AddressSpace) -> Result<Vec<u64>, String> {
    let mut ticks = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = cpu::counter();
        let done = space.flush_all();
        let t1 = cpu::counter();
        done.or_fail("flush_all")?;
        ticks.push(t1 - t0);
    }
    Ok(ticks)
}

/// Guest time of a one-page flush, a 512-page range flush and a whole-ASID flush, with no
/// secondary TLB and with the SMMU (or a recording TLB) attached.
pub(super) fn timings() -> Result<(), String> {
    let freq = cpu::counter_frequency().max(1);
    let ns = |ticks: u64| ticks * 1_000_000_000 / freq;
    // What reading the clock itself costs, to read the figures against.
    let mut empty: Vec<u64> = (0..RUNS)
        .map(|_| {
            let t0 = cpu::counter();
            let t1 = cpu::counter();
            t1 - t0
        })
        .collect();
    let (_, empty_med, _) = summary(&mut empty);
    log::info!(
        "flush timing: clock CNTVCT_EL0 at {freq} Hz ({} ns/tick), median of {RUNS} runs; under \
         -icount shift=N this is virtual time, 2^N ns per instruction (a tick count is an \
         instruction count at shift 4); without -icount it is host time. Empty measurement: \
         {empty_med} ticks",
        1_000_000_000 / freq
    );
    let pages = Frames::alloc(512, BLOCK_2M)?;
    for with_secondary in [false, true] {
        let s = Subject::new(with_secondary)?;
        map(&s.space, VA, pages.pa(0), 512, Perms::RW, false)?;
        let label = s.secondary_name();
        let mut rows = [
            ("flush 1 page", time_protect_flushes(&s.space, VA, 1)?),
            (
                "flush 512-page range",
                time_protect_flushes(&s.space, VA, 512)?,
            ),
            ("flush_all (ASID)", time_flush_all(&s.space)?),
        ];
        for (what, samples) in rows.iter_mut() {
            let (min, med, max) = summary(samples);
            log::info!(
                "flush timing: secondary={label:<13} {what:<21} median {med} ticks = {} ns \
                 (min {} ns, max {} ns)",
                ns(med),
                ns(min),
                ns(max)
            );
        }
    }
    Ok(())
}
