//! The on-target test fixture: the rig every scenario and device test runs on (a fresh address
//! space shared with an edu device through the SMMU), frames the test owns, and DMA helpers
//! that return what the device really did.
//!
//! Checks read memory, not only events: QEMU's edu never reports a failed DMA (a faulted read
//! leaves zeros, a faulted write is dropped), so a scenario compares page contents, and uses
//! the SMMU events only to say *why*.

use crate::{
    drivers::{
        dma::{DmaFault, DmaFaultKind},
        edu::{self, DmaError, EduDevice},
    },
    iommu::{self, Attachment},
    ktest::{TestFailure, TestResult, require},
    mm::{
        PhysAddr, VirtAddr,
        address_space::AddressSpace,
        context,
        frame::PhysBlock,
        pgtable::{MapAttrs, MemType, Perms},
        tlb::{SecondaryTlbMode, VaRange},
    },
};
use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::fmt;
use protocol::trace_mark::Mark;
use smmu::{
    CounterSnapshot, FlushHint, InvalPolicy,
    planner::{FlushKind, FlushPlan},
};

/// Where scenarios put the pages under test (a lower-half VA the CPU and the device share).
pub const IOVA_BASE: u64 = 0x0000_0040_0000_0000;
/// The rig's staging page, used to load and inspect the device's internal buffer.
const SCRATCH_VA: u64 = 0x0000_0030_0000_0000;
/// How often a faulting device write is retried before the scenario calls it stuck.
pub const RETRY_CAP: u32 = 8;
/// Where [`Rig::device_probe`] puts what it reads: the upper half of the device's buffer, so a
/// pattern staged with [`Rig::load_device`] (at offset 0, at most this long) survives probes.
pub const PROBE_OFFSET: u32 = 2048;

/// A physically contiguous block of frames owned by a scenario (a [`PhysBlock`] with
/// byte-level accessors for checking memory contents).
pub struct Frames(PhysBlock);

impl Frames {
    /// `pages` zeroed frames, physically contiguous, aligned to `align`.
    pub fn alloc(pages: u64, align: u64) -> Result<Self, String> {
        PhysBlock::zeroed(pages * crate::mm::PAGE_SIZE, align)
            .map(Self)
            .map_err(|e| format!("{e}"))
    }

    /// One zeroed frame.
    pub fn page() -> Result<Self, String> {
        Self::alloc(1, crate::mm::PAGE_SIZE)
    }

    /// Physical address of byte `off`.
    pub fn pa(&self, off: u64) -> PhysAddr {
        self.0.ptr(off, 1);
        self.0.pa().add(off)
    }

    /// Fill `len` bytes at `off` with `byte` (through the kernel's linear map).
    pub fn fill(&self, off: u64, len: usize, byte: u8) {
        let p = self.0.ptr(off, len as u64);
        // SAFETY: the block is owned by this value and mapped RW in the linear window (`ptr`
        // checked the bounds); volatile because a device reads it behind the compiler's back.
        unsafe { (0..len).for_each(|i| p.add(i).write_volatile(byte)) };
    }

    /// Copy `data` in at `off` (through the kernel's linear map).
    pub fn write(&self, off: u64, data: &[u8]) {
        let p = self.0.ptr(off, data.len() as u64);
        // SAFETY: as in `fill`.
        unsafe {
            data.iter()
                .enumerate()
                .for_each(|(i, &b)| p.add(i).write_volatile(b))
        };
    }

    /// Copy `len` bytes at `off` out.
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let p = self.0.ptr(off, len as u64);
        // SAFETY: as in `fill`; volatile because a device writes it.
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Whether `len` bytes at `off` all equal `byte`.
    pub fn holds(&self, off: u64, len: usize, byte: u8) -> bool {
        self.read(off, len).iter().all(|&b| b == byte)
    }

    /// A short description of the first bytes at `off`, for failure messages.
    pub fn describe(&self, off: u64) -> String {
        let b = self.read(off, 4);
        format!("{:02x} {:02x} {:02x} {:02x}", b[0], b[1], b[2], b[3])
    }
}

/// An address space shared with one edu device.
pub struct Rig {
    /// The shared address space.
    pub space: Arc<AddressSpace>,
    /// The device.
    pub edu: Arc<EduDevice>,
    scratch: Frames,
    scratch_va: u64,
    attachment: Option<Attachment>,
}

/// Names the device and the address space (its ASID) in failure messages.
impl fmt::Debug for Rig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rig(edu {}, ASID {})", self.edu.bdf(), self.space.asid())
    }
}

/// A new address space.
pub fn new_space(mode: SecondaryTlbMode) -> Result<Arc<AddressSpace>, TestFailure> {
    let space = context::new_address_space().map_err(|e| format!("address space: {e}"))?;
    space.set_secondary_mode_override(Some(mode));
    Ok(space)
}

impl Rig {
    /// Share a fresh address space, whose secondary TLBs are told about flushes according to
    /// `mode`, with edu device number `index`. Skips when the machine has no such device.
    pub fn new(index: usize, mode: SecondaryTlbMode) -> Result<Self, TestFailure> {
        let space = new_space(mode)?;
        Self::on(index, space)
    }

    /// Share `space` with edu device number `index`.
    pub fn on(index: usize, space: Arc<AddressSpace>) -> Result<Self, TestFailure> {
        Self::on_with_scratch(index, space, SCRATCH_VA)
    }

    /// Share this rig's address space with edu device number `index` too: one more device on
    /// the same page tables and ASID, with its own staging page (the next page after this
    /// rig's). Skips when the machine has no such device.
    pub fn join(&self, index: usize) -> Result<Self, TestFailure> {
        let scratch_va = self.scratch_va + crate::mm::PAGE_SIZE;
        Self::on_with_scratch(index, self.space.clone(), scratch_va)
    }

    fn on_with_scratch(
        index: usize,
        space: Arc<AddressSpace>,
        scratch_va: u64,
    ) -> Result<Self, TestFailure> {
        let iommu = iommu::get().ok_or("no SMMU: the kernel found no arm,smmu-v3 node")?;
        let devices = edu::devices();
        require(
            devices.len() > index,
            if index == 0 {
                "an edu device"
            } else {
                "two edu devices"
            },
        )?;
        let edu = devices[index].clone();
        let scratch = Frames::page()?;
        map(&space, scratch_va, scratch.pa(0), 1, Perms::RW)?;
        let attachment = iommu
            .attach(edu.clone(), &space)
            .map_err(|e| format!("attach {}: {e}", edu.bdf()))?;
        Ok(Self {
            space,
            edu,
            scratch,
            scratch_va,
            attachment: Some(attachment),
        })
    }

    /// Map `pages` pages at `va` to the frames at `pa` with `perms`, and flush.
    pub fn map(&self, va: u64, pa: PhysAddr, pages: u64, perms: Perms) -> Result<(), String> {
        map(&self.space, va, pa, pages, perms)
    }

    /// Change the permissions of `pages` pages at `va`, and flush.
    pub fn protect(&self, va: u64, pages: u64, perms: Perms) -> Result<(), String> {
        let t = self
            .space
            .protect(range(va, pages)?, perms)
            .map_err(|e| format!("protect {va:#x}: {e}"))?;
        self.space.flush(t).map_err(|e| format!("flush: {e}"))?;
        Ok(())
    }

    /// Device buffer ← memory at `va` (the device reads `len` bytes).
    pub fn device_reads(&self, va: u64, len: u32) -> Result<(), DmaError> {
        self.edu.read_from(va, 0, len)
    }

    /// Memory at `va` ← device buffer (the device writes `len` bytes).
    pub fn device_writes(&self, va: u64, len: u32) -> Result<(), DmaError> {
        self.edu.write_to(va, 0, len)
    }

    /// Put `len` bytes of `byte` in the device's buffer (staged through the scratch page).
    pub fn load_device(&self, byte: u8, len: u32) -> Result<(), String> {
        self.scratch.fill(0, len as usize, byte);
        self.edu
            .read_from(self.scratch_va, 0, len)
            .map_err(|e| format!("loading the device buffer: {e}"))
    }

    /// Check that the first `len` bytes of the device's buffer all hold `expect` (what the
    /// device read in the scenario's setup).
    pub fn expect_device_buffer(&self, len: u32, expect: u8) -> Result<(), String> {
        let buf = self.device_buffer(len)?;
        if buf.iter().all(|&b| b == expect) {
            Ok(())
        } else {
            Err(format!(
                "setup: the device read {:02x?}…, expected {expect:#04x}",
                &buf[..4.min(buf.len())]
            ))
        }
    }

    /// The first `len` bytes of the device's buffer (staged through the scratch page).
    pub fn device_buffer(&self, len: u32) -> Result<Vec<u8>, String> {
        self.scratch.fill(0, len as usize, 0xEE);
        self.edu
            .write_to(self.scratch_va, 0, len)
            .map_err(|e| format!("reading the device buffer back: {e}"))?;
        Ok(self.scratch.read(0, len as usize))
    }

    /// Map `pages` pages at `va` to the frames at `pa` with `perms`, as 2 MiB blocks wherever
    /// VA and PA allow, and flush.
    pub fn map_blocks(
        &self,
        va: u64,
        pa: PhysAddr,
        pages: u64,
        perms: Perms,
    ) -> Result<(), String> {
        map_with(&self.space, va, pa, pages, perms, true)
    }

    /// The device reads 4 bytes at `va` into the upper half of its buffer ([`PROBE_OFFSET`]): the
    /// SMMU walks and caches the translation of `va`, and a pattern staged at offset 0 with
    /// [`Rig::load_device`] stays in place.
    pub fn device_probe(&self, va: u64) -> Result<(), DmaError> {
        self.edu.read_from(va, PROBE_OFFSET, 4)
    }

    /// The device writes `len` bytes at `va`, retried up to [`RETRY_CAP`] times while it faults.
    pub fn device_writes_with_retries(&self, va: u64, len: u32) -> Result<Retries, String> {
        let mut r = Retries::default();
        for attempt in 1..=RETRY_CAP {
            match self.device_writes(va, len) {
                Ok(()) => {
                    r.succeeded_at = Some(attempt);
                    break;
                }
                Err(DmaError::Fault { fault, .. }) => r.record(fault),
                Err(e) => return Err(format!("device write at {va:#x}: {e}")),
            }
        }
        Ok(r)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Stop the device and unbind before the address space can go away.
        self.attachment.take();
    }
}

/// What happened to a device write retried after faults.
#[derive(Debug, Default, Clone)]
pub struct Retries {
    /// The attempt that succeeded (1 = the first try), if any.
    pub succeeded_at: Option<u32>,
    /// Attempts that faulted.
    pub faulted: u32,
    /// Fault events over all attempts (QEMU: one per 4-byte chunk).
    pub events: u32,
    /// Every fault was a permission fault at the written address.
    pub kinds: Vec<(DmaFaultKind, u64)>,
}

impl Retries {
    fn record(&mut self, fault: DmaFault) {
        self.faulted += 1;
        self.events += fault.count;
        self.kinds.push((fault.kind, fault.iova));
    }

    /// Whether every faulted attempt was `kind` at `va`.
    pub fn all(&self, kind: DmaFaultKind, va: u64) -> bool {
        self.kinds.iter().all(|&(k, a)| k == kind && a == va)
    }
}

/// The page range `[va, va + pages pages)`.
pub fn range(va: u64, pages: u64) -> Result<VaRange, String> {
    VaRange::new(VirtAddr(va), pages * crate::mm::PAGE_SIZE)
        .map_err(|e| format!("range {va:#x}: {e}"))
}

/// Map `pages` pages at `va` in `space` to the frames at `pa` (pages only, no blocks), flushed.
pub fn map(
    space: &AddressSpace,
    va: u64,
    pa: PhysAddr,
    pages: u64,
    perms: Perms,
) -> Result<(), String> {
    map_with(space, va, pa, pages, perms, false)
}

/// [`map`], with 2 MiB blocks wherever VA and PA allow when `prefer_blocks`.
pub fn map_with(
    space: &AddressSpace,
    va: u64,
    pa: PhysAddr,
    pages: u64,
    perms: Perms,
    prefer_blocks: bool,
) -> Result<(), String> {
    let attrs = MapAttrs::new(perms, MemType::Normal, false);
    let t = space
        .map(range(va, pages)?, pa, attrs, prefer_blocks)
        .map_err(|e| format!("map {va:#x}: {e}"))?;
    space.flush(t).map_err(|e| format!("flush: {e}"))?;
    Ok(())
}

/// Skip the current test unless the machine has at least `n` edu devices.
pub fn require_edus(n: usize) -> TestResult {
    require(
        edu::devices().len() >= n,
        if n <= 1 {
            "an edu device"
        } else {
            "two edu devices"
        },
    )
}

/// Skip the current test unless at least `n` CPUs are online.
pub fn require_cpus(n: usize) -> TestResult {
    require(
        crate::smp::online_cpus() >= n,
        if n <= 2 {
            "a second CPU online"
        } else {
            "more CPUs online"
        },
    )
}

/// Splits a transfer's result into "went through" (`None`), "faulted in the SMMU"
/// (`Some(fault)`), and any other failure (an error: the check itself could not run).
pub fn fault_of(result: Result<(), DmaError>, what: &str) -> Result<Option<DmaFault>, String> {
    match result {
        Ok(()) => Ok(None),
        Err(DmaError::Fault { fault, .. }) => Ok(Some(fault)),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The SMMU commands the planner in use (its `smmu.inval` policy) makes of one flush of `kind`
/// whose changed entries `hint` describes (in any ASID: the ASID does not change the plan's
/// shape): a snapshot with the invalidation counters filled in (`tlbi_nh_va`,
/// `tlbi_nh_va_range`, `tlbi_nh_asid`, `tlbi_all`) and one `sync`, for comparing with what a
/// flush really issued.
pub fn planned_commands(kind: FlushKind, hint: FlushHint) -> Result<CounterSnapshot, String> {
    let iommu = iommu::get().ok_or("no SMMU")?;
    let config = iommu
        .smmu()
        .planner_config()
        .map_err(|e| format!("planner config: {e}"))?;
    let plan =
        FlushPlan::with_hint(&config, 1, kind, hint).map_err(|e| format!("plan {kind:?}: {e}"))?;
    let mut c = CounterSnapshot {
        sync: 1,
        ..CounterSnapshot::default()
    };
    for cmd in plan {
        match cmd {
            smmu::Command::TlbiNhVa { range: None, .. } => c.tlbi_nh_va += 1,
            smmu::Command::TlbiNhVa { range: Some(_), .. } => c.tlbi_nh_va_range += 1,
            smmu::Command::TlbiNhAsid { .. } => c.tlbi_nh_asid += 1,
            _ => c.tlbi_all += 1,
        }
    }
    Ok(c)
}

/// Leaf pages (level 3) changed in place, no table freed: what most scenario flushes are.
pub const PAGES_CHANGED: FlushHint = FlushHint {
    leaf_only: true,
    level: Some(3),
};

/// Whole 2 MiB blocks changed in place.
pub const BLOCKS_CHANGED: FlushHint = FlushHint {
    leaf_only: true,
    level: Some(2),
};

/// The invalidation counters of a snapshot: (TLBI_NH_VA, range TLBI_NH_VA, TLBI_NH_ASID,
/// TLBI_NH_ALL, CMD_SYNC).
pub fn inval_counts(c: &CounterSnapshot) -> (u64, u64, u64, u64, u64) {
    (
        c.tlbi_nh_va,
        c.tlbi_nh_va_range,
        c.tlbi_nh_asid,
        c.tlbi_all,
        c.sync,
    )
}

/// The sum, counter by counter, of the plans of several flushes.
pub fn planned_sum(flushes: &[(FlushKind, FlushHint)]) -> Result<CounterSnapshot, String> {
    let mut total = CounterSnapshot::default();
    for &(kind, hint) in flushes {
        let c = planned_commands(kind, hint)?;
        total.tlbi_nh_va += c.tlbi_nh_va;
        total.tlbi_nh_va_range += c.tlbi_nh_va_range;
        total.tlbi_nh_asid += c.tlbi_nh_asid;
        total.tlbi_all += c.tlbi_all;
        total.sync += c.sync;
    }
    Ok(total)
}

/// Checks that the SMMU received exactly the planned commands of `flushes` (each one
/// `CMD_SYNC`), whatever the `smmu.inval` policy.
pub fn expect_planned(
    issued: &CounterSnapshot,
    flushes: &[(FlushKind, FlushHint)],
    what: &str,
) -> TestResult {
    let planned = planned_sum(flushes)?;
    if inval_counts(issued) == inval_counts(&planned) {
        Ok(())
    } else {
        Err(format!(
            "{what}: issued (nh_va, range, nh_asid, nh_all, sync) {:?}, the {} planner plans {:?} \
             ({issued})",
            inval_counts(issued),
            policy(),
            inval_counts(&planned)
        )
        .into())
    }
}

/// Whether the planner in use plans range invalidations (`IDR3.RIL`, unless `smmu.ril=off`).
pub fn planner_ril() -> bool {
    iommu::get()
        .and_then(|i| i.smmu().planner_config().ok())
        .is_some_and(|c| c.ril)
}

/// The `smmu.inval` policy in use.
pub fn policy() -> InvalPolicy {
    iommu::get()
        .and_then(|i| i.smmu().planner_config().ok())
        .map_or(InvalPolicy::Precise, |c| c.policy)
}

/// Per-page verdicts of a check that covers many pages: a scenario is fresh only if every
/// checked page is, and a negative control must see every page stale.
#[derive(Debug, Default, Clone)]
pub struct PageSweep {
    /// `(page index, fresh)` per check, in check order.
    pub pages: Vec<(u64, bool)>,
    /// Fault events the checking transfers produced.
    pub events: u32,
}

impl PageSweep {
    /// Record the verdict on page `index`, and the fault events its check produced.
    pub fn record(&mut self, index: u64, fresh: bool, events: u32) {
        self.pages.push((index, fresh));
        self.events += events;
    }

    /// Whether something was checked and every check was fresh.
    pub fn all_fresh(&self) -> bool {
        !self.pages.is_empty() && self.pages.iter().all(|&(_, f)| f)
    }

    /// Whether something was checked and every check was stale.
    pub fn all_stale(&self) -> bool {
        !self.pages.is_empty() && self.pages.iter().all(|&(_, f)| !f)
    }

    /// The verdict of the last check of page `index`, if it was checked.
    pub fn verdict(&self, index: u64) -> Option<bool> {
        self.pages
            .iter()
            .rev()
            .find(|&&(i, _)| i == index)
            .map(|&(_, f)| f)
    }

    /// "n/m checks fresh", and which pages were stale (the first few).
    pub fn summary(&self) -> String {
        let stale: Vec<u64> = self
            .pages
            .iter()
            .filter(|&&(_, f)| !f)
            .map(|&(i, _)| i)
            .collect();
        let fresh = self.pages.len() - stale.len();
        let mut out = format!("{fresh}/{} page checks fresh", self.pages.len());
        if !stale.is_empty() {
            let shown: Vec<String> = stale.iter().take(12).map(|i| format!("{i}")).collect();
            out += &format!(
                "; stale pages {}{}",
                shown.join(", "),
                if stale.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        out
    }
}

static FLUSH_SEQ: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// SMMU commands issued while `f` runs (the change under test and its flush).
///
/// With bootarg `smmu.trace_marks` the window is also marked in QEMU's SMMU trace, and the
/// console says which test it belongs to and what the kernel counted, so the host's trace
/// oracle can check the same window from QEMU's side.
pub fn commands_during<R>(f: impl FnOnce() -> R) -> (R, CounterSnapshot) {
    let iommu = iommu::get().expect("scenarios run only with an SMMU");
    let seq = FLUSH_SEQ.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    // The window's sequence number travels in 16 bits (see `protocol::trace_mark`).
    if iommu.trace_mark(Mark::FlushBegin(seq as u16)) {
        crate::println!(
            "trace-mark flush-begin seq={seq} test={}",
            crate::ktest::current().unwrap_or("-")
        );
    }
    let before = iommu.stats();
    let r = f();
    let d = iommu.stats().delta(&before);
    if iommu.trace_mark(Mark::FlushEnd(seq as u16)) {
        crate::println!(
            "trace-mark flush-end seq={seq} nh_va={} nh_va_range={} nh_asid={} sync={}",
            d.tlbi_nh_va,
            d.tlbi_nh_va_range,
            d.tlbi_nh_asid,
            d.sync
        );
    }
    (r, d)
}
