//! The IOMMU glue: brings the SMMUv3 up from the device tree, shares address spaces with
//! devices (SVA bind/unbind), makes the SMMU a secondary TLB of every bound address space, and
//! routes SMMU events to the DMA transfers and fault handlers they belong to.
//!
//! One flush, end to end: a page-table change returns a flush token → `AddressSpace::flush`
//! → CPU TLBI → each registered secondary TLB, here [`SmmuTlb::invalidate`] → the `smmu`
//! crate's planner → one command batch + `CMD_SYNC` → wait → return.

#[cfg(target_os = "none")]
mod dma_tests;
pub mod hal;
#[cfg(target_os = "none")]
mod ktests;

use crate::{
    bootargs::BootConfig,
    cpu,
    drivers::{
        dma::{DmaFault, DmaFaultKind, DmaFaultSource, DmaWindow, FaultWatch},
        edu::EduDevice,
        gic::{self, Trigger},
    },
    mm::{
        PhysAddr, VirtAddr,
        address_space::{AddressSpace, AsError, FaultClass, FaultKind},
        tlb::{
            FlushCause, FlushRange, SecondaryTlb, SecondaryTlbError, SecondaryTlbFailure,
            SecondaryTlbHandle,
        },
    },
    platform::Platform,
};
use alloc::{sync::Arc, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};
use hal::KernelSmmuHal;
use smmu::{
    CdParams, CounterSnapshot, CpuMmuConfig, Event, EventType, FlushKind, Granule, Smmu,
    SmmuConfig, SmmuError,
};
use spin::{Mutex, Once};

/// Why an IOMMU operation failed.
#[derive(Debug)]
pub enum IommuError {
    /// The device tree has no `arm,smmu-v3` node.
    NoSmmu,
    /// The SMMU driver refused or failed.
    Smmu(SmmuError),
    /// The address space could not be shared.
    AddressSpace(AsError),
    /// The SMMU's interrupts could not be registered.
    Irq(gic::GicError),
    /// The device has no StreamID (no `iommu-map` entry for it).
    NoStreamId,
    /// The StreamID is already bound to an address space.
    AlreadyBound(u32),
    /// The StreamID is not bound.
    NotBound(u32),
    /// The IOMMU has not been initialised.
    NotInitialised,
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSmmu => write!(
                f,
                "no SMMUv3 in the device tree (compatible \"arm,smmu-v3\")"
            ),
            Self::Smmu(e) => write!(f, "SMMU: {e}"),
            Self::AddressSpace(e) => write!(f, "address space: {e}"),
            Self::Irq(e) => write!(f, "SMMU interrupts: {e}"),
            Self::NoStreamId => write!(f, "device has no StreamID (no iommu-map entry)"),
            Self::AlreadyBound(sid) => write!(f, "StreamID {sid:#x} is already bound"),
            Self::NotBound(sid) => write!(f, "StreamID {sid:#x} is not bound"),
            Self::NotInitialised => write!(f, "IOMMU not initialised"),
        }
    }
}

impl From<SmmuError> for IommuError {
    fn from(e: SmmuError) -> Self {
        Self::Smmu(e)
    }
}
impl From<AsError> for IommuError {
    fn from(e: AsError) -> Self {
        Self::AddressSpace(e)
    }
}

/// An address space shared with one or more devices.
struct Domain {
    space: Arc<AddressSpace>,
    tlb: SecondaryTlbHandle,
    sids: Vec<u32>,
}

/// A DMA transfer whose SMMU faults are being collected.
struct Watch {
    id: u64,
    window: DmaWindow,
    first: Option<(EventType, u64, bool)>,
    count: u32,
}

/// A handler for SMMU events of one StreamID that no transfer claimed (called in the context
/// that drains the event queue, possibly an interrupt: it must not submit SMMU commands).
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Default)]
struct Router {
    next_watch: u64,
    watches: Vec<Watch>,
    handlers: Vec<(u32, EventHandler)>,
}

/// The system's SMMU, once initialised.
pub struct Iommu {
    smmu: Smmu<KernelSmmuHal>,
    cpu: CpuMmuConfig,
    domains: Mutex<Vec<Domain>>,
    router: Mutex<Router>,
    unclaimed_events: AtomicU64,
    lost_events: AtomicU64,
}

static IOMMU: Once<Iommu> = Once::new();
/// SMMU_GERROR_IRQ_CFG1 (IHI 0070 §6.3.22), where [`Iommu::trace_mark`] writes its marks.
const TRACE_MARK_REGISTER: usize = 0x70;
/// Whether [`Iommu::trace_mark`] leaves marks (bootarg `smmu.trace_marks`).
static TRACE_MARKS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The IOMMU, if [`init`] succeeded.
pub fn get() -> Option<&'static Iommu> {
    IOMMU.get()
}

/// Run `f` with IRQs masked on this CPU: the SMMU driver's locks are not interrupt-safe, and
/// the event and error interrupts call into the driver too.
fn masked<R>(f: impl FnOnce() -> R) -> R {
    let was = cpu::irq_save();
    let r = f();
    cpu::irq_restore(was);
    r
}

fn cpu_mmu_config(platform: &Platform) -> CpuMmuConfig {
    use aarch64_cpu::registers::ID_AA64MMFR0_EL1;
    use tock_registers::interfaces::Readable;
    let pa_range_bits = match ID_AA64MMFR0_EL1.get() & 0xF {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    };
    CpuMmuConfig {
        granule: Granule::Size4K,
        va_bits: crate::mm::addr::VA_BITS as u8,
        asid_bits: crate::mm::tlb::arch::cpu_asid_bits() as u8,
        pa_range_bits,
        max_ram_pa: platform
            .memory
            .iter()
            .map(|r| r.base + r.size)
            .max()
            .unwrap_or(0),
    }
}

/// Probe and enable the SMMU described by the device tree, before any device may DMA (QEMU 7.2
/// has no GBPA: a disabled SMMU lets DMA through untranslated). Every STE starts as abort.
pub fn init(platform: &Platform, config: &BootConfig) -> Result<&'static Iommu, IommuError> {
    let node = platform.smmu.as_ref().ok_or(IommuError::NoSmmu)?;
    // SAFETY: kernel_map::init mapped the SMMU's register frame (from the device tree) as
    // device memory in the linear window; only this driver uses it.
    let hal = unsafe { KernelSmmuHal::new(PhysAddr(node.reg.base).to_virt().0 as usize) };
    // probe() logs the decoded ID registers.
    let mut smmu = Smmu::probe(hal)?;
    let cpu = cpu_mmu_config(platform);
    smmu.features()
        .check_sva(&cpu)
        .map_err(|e| IommuError::Smmu(SmmuError::Cd(smmu::cd::CdError::Sva(e))))?;
    TRACE_MARKS.store(config.smmu_trace_marks, Ordering::Relaxed);
    smmu.init(&SmmuConfig {
        strtab_format: config.smmu_strtab,
        ..SmmuConfig::default()
    })?;
    smmu.check_invariants()
        .map_err(|e| IommuError::Smmu(SmmuError::Invariant(e)))?;
    let iommu = IOMMU.call_once(|| Iommu {
        smmu,
        cpu,
        domains: Mutex::new(Vec::new()),
        router: Mutex::new(Router::default()),
        unclaimed_events: AtomicU64::new(0),
        lost_events: AtomicU64::new(0),
    });
    // Both lines are pulsed by QEMU: edge-triggered (IHI 0070 §3.18 allows either; the device
    // tree says which).
    if let Some(irq) = node.irqs.eventq {
        gic::register(
            irq.intid,
            trigger(irq.trigger.is_edge()),
            gic::handler(|_| iommu.drain_events()),
        )
        .map_err(IommuError::Irq)?;
    }
    if let Some(irq) = node.irqs.gerror {
        gic::register(
            irq.intid,
            trigger(irq.trigger.is_edge()),
            gic::handler(|_| iommu.service_gerror()),
        )
        .map_err(IommuError::Irq)?;
    }
    for edu in crate::drivers::edu::devices() {
        edu.set_fault_source(Some(iommu));
    }
    log::info!(
        "SMMUv3 at {:#x} on: every StreamID aborts until a device is bound (fail closed)",
        node.reg.base
    );
    Ok(iommu)
}

fn trigger(edge: bool) -> Trigger {
    if edge { Trigger::Edge } else { Trigger::Level }
}

impl Iommu {
    /// The SMMU driver.
    pub fn smmu(&self) -> &Smmu<KernelSmmuHal> {
        &self.smmu
    }

    /// The SMMU's command counters.
    pub fn stats(&self) -> CounterSnapshot {
        self.smmu.stats()
    }

    /// Events that no transfer or handler claimed, and events lost to queue overflow.
    pub fn event_counts(&self) -> (u64, u64) {
        (
            self.unclaimed_events.load(Ordering::Relaxed),
            self.lost_events.load(Ordering::Relaxed),
        )
    }

    /// Share `space` with the device whose StreamID is `sid`: pin the ASID and register the
    /// SMMU as a secondary TLB of `space` (once per address space, whatever the number of
    /// devices), then install a Context Descriptor pointing at the CPU's own tables and a
    /// stage-1 STE. The device may DMA only after this returns.
    pub fn bind(&'static self, sid: u32, space: &Arc<AddressSpace>) -> Result<(), IommuError> {
        let mut domains = self.domains.lock();
        if domains.iter().any(|d| d.sids.contains(&sid)) {
            return Err(IommuError::AlreadyBound(sid));
        }
        let index = match domains.iter().position(|d| Arc::ptr_eq(&d.space, space)) {
            Some(i) => i,
            None => {
                // Register (and so pin the ASID) before the CD exists: from the moment the SMMU
                // can cache translations of this ASID, every flush must reach it.
                let tlb = space.register_secondary(Arc::new(SmmuTlb { iommu: self }))?;
                domains.push(Domain {
                    space: space.clone(),
                    tlb,
                    sids: Vec::new(),
                });
                domains.len() - 1
            }
        };
        let ctx = domains[index].space.smmu_context()?;
        let cd = CdParams::sva(
            &self.cpu,
            ctx.ttb0.0,
            ctx.asid,
            ctx.mair,
            self.smmu.features(),
        )
        .map_err(|e| IommuError::Smmu(SmmuError::Cd(e)));
        let result =
            cd.and_then(|cd| masked(|| self.smmu.install_stage1(sid, &cd)).map_err(Into::into));
        match result {
            Ok(()) => {
                domains[index].sids.push(sid);
                log::debug!(
                    "StreamID {sid:#x} bound to ASID {} (TTB0 {})",
                    ctx.asid,
                    ctx.ttb0
                );
                Ok(())
            }
            Err(e) => {
                if domains[index].sids.is_empty() {
                    let d = domains.remove(index);
                    let _ = d.space.unregister_secondary(d.tlb);
                }
                Err(e)
            }
        }
    }

    /// Stop sharing: quiesce the CD (EPD0 = 1: walks fault, the CD stays valid), invalidate the
    /// ASID, make the STE abort, and — for the last device of the address space — unregister
    /// the SMMU as its secondary TLB (which unpins the ASID). The device must have stopped
    /// DMA (Bus Master Enable cleared) before.
    pub fn unbind(&self, sid: u32) -> Result<(), IommuError> {
        let mut domains = self.domains.lock();
        let index = domains
            .iter()
            .position(|d| d.sids.contains(&sid))
            .ok_or(IommuError::NotBound(sid))?;
        let asid = domains[index].space.asid();
        masked(|| -> Result<(), SmmuError> {
            if let Some(cd) = self.smmu.context(sid)? {
                self.smmu.install_stage1(sid, &cd.quiesced())?;
            }
            self.smmu.invalidate(asid, FlushKind::All)?;
            self.smmu.set_abort(sid)
        })?;
        domains[index].sids.retain(|&s| s != sid);
        if domains[index].sids.is_empty() {
            let d = domains.remove(index);
            d.space.unregister_secondary(d.tlb)?;
        }
        Ok(())
    }

    /// Bind `edu`'s StreamID to `space` and then let the device master the bus.
    pub fn attach(
        &'static self,
        edu: &Arc<EduDevice>,
        space: &Arc<AddressSpace>,
    ) -> Result<Attachment, IommuError> {
        let sid = edu.stream_id().ok_or(IommuError::NoStreamId)?;
        self.bind(sid, space)?;
        // SAFETY: the SMMU is enabled and the device's StreamID now has a valid stage-1 STE.
        unsafe { edu.enable_dma() };
        Ok(Attachment {
            iommu: self,
            edu: edu.clone(),
            sid,
        })
    }

    /// Leave a mark in QEMU's SMMU trace (bootarg `smmu.trace_marks`, used by the host's trace
    /// oracle): a write of `value` to SMMU_GERROR_IRQ_CFG1, which QEMU traces as
    /// `smmuv3_write_mmio addr: 0x70 val:<value>`. The register holds the MSI payload of the
    /// global-error interrupt, which is never used: this SMMU signals wired interrupts, and
    /// GERROR_IRQ_CFG0.ADDR = 0 disables the MSI (IHI 0070 §6.3.21) — so the mark changes
    /// nothing the device or the tests observe, and issues no command. Returns whether a mark
    /// was left.
    pub fn trace_mark(&self, value: u32) -> bool {
        if !TRACE_MARKS.load(Ordering::Relaxed) {
            return false;
        }
        use smmu::hal::SmmuHal;
        self.smmu.hal().write32(TRACE_MARK_REGISTER, value);
        true
    }

    /// Route SMMU events of `sid` that no transfer claims to `handler`.
    pub fn set_event_handler(&self, sid: u32, handler: Option<EventHandler>) {
        masked(|| {
            let mut r = self.router.lock();
            r.handlers.retain(|(s, _)| *s != sid);
            if let Some(h) = handler {
                r.handlers.push((sid, h));
            }
        });
    }

    /// Drain the event queue, routing every record (interrupt handler and polling path).
    pub fn drain_events(&self) {
        masked(|| {
            for _ in 0..16 {
                match self.smmu.drain_events(&mut |ev| self.route(ev)) {
                    Ok(report) => {
                        if report.overflow || report.abort_error {
                            self.lost_events.fetch_add(1, Ordering::Relaxed);
                        }
                        if !report.more_pending {
                            return;
                        }
                    }
                    Err(e) => {
                        log::error!("SMMU event queue: {e}");
                        return;
                    }
                }
            }
        })
    }

    /// The global-error interrupt: recover the command queue, then drain events (an event
    /// queue abort is acknowledged there).
    pub fn service_gerror(&self) {
        match masked(|| self.smmu.handle_gerror()) {
            // The submitter that hit a command error usually recovers it synchronously before
            // this interrupt is taken; then nothing is active any more.
            Ok(report) if report.active.is_empty() => {}
            Ok(report) => log::warn!("SMMU global error: {report:?}"),
            Err(e) => log::error!("SMMU global error handling failed: {e}"),
        }
        self.drain_events();
    }

    fn route(&self, ev: Event) {
        let mut router = self.router.lock();
        let addressed = carries_transaction_address(ev.kind);
        if let Some(w) = router.watches.iter_mut().find(|w| {
            w.window.stream_id == ev.stream_id
                && (!addressed
                    || ev.input_addr.is_some_and(|addr| {
                        addr >= w.window.iova && addr - w.window.iova < w.window.len
                    }))
        }) {
            // A configuration error names no address: report the transfer's start.
            let addr = match ev.input_addr {
                Some(addr) if addressed => addr,
                _ => w.window.iova,
            };
            let write = ev.access.map_or(w.window.device_writes, |a| !a.read);
            w.first.get_or_insert((ev.kind, addr, write));
            w.count += 1;
            return;
        }
        if let Some((_, h)) = router.handlers.iter().find(|(s, _)| *s == ev.stream_id) {
            let h = h.clone();
            drop(router);
            h(&ev);
            return;
        }
        drop(router);
        self.unclaimed_events.fetch_add(1, Ordering::Relaxed);
        log::warn!("SMMU event nobody expected: {ev}");
    }

    /// Give a fault the device reported to the policy of the address space bound to `sid`
    /// (thread context: resolving may flush, which submits SMMU commands).
    fn resolve_fault(&self, fault: &DmaFault) {
        let space = {
            let domains = self.domains.lock();
            domains
                .iter()
                .find(|d| d.sids.contains(&fault.stream_id))
                .map(|d| d.space.clone())
        };
        let Some(space) = space else { return };
        let class = match fault.kind {
            DmaFaultKind::Permission => FaultClass::Permission,
            DmaFaultKind::Access => FaultClass::AccessFlag,
            DmaFaultKind::Translation => FaultClass::Translation,
            _ => return,
        };
        let kind = FaultKind {
            class,
            level: 3,
            write: fault.write,
        };
        match space.handle_fault(VirtAddr(fault.iova), kind) {
            Ok(outcome) => log::debug!("device fault {fault}: {outcome:?}"),
            Err(e) => log::error!("device fault {fault}: handler failed: {e}"),
        }
    }
}

/// Whether a record of this type carries the address of the transaction that caused it
/// (IHI 0070 G.b §7.3), so it can be matched to a transfer's IOVA window. Configuration and
/// structure-fetch errors (`C_BAD_STE`, `C_BAD_CD`, `F_STE_FETCH`, `F_CD_FETCH`, ...) concern
/// the stream, not an address — QEMU even puts the CD's address in `F_CD_FETCH`'s InputAddr —
/// yet they are raised by, and fail, the accesses of whatever transfer the StreamID has in
/// flight (QEMU: one record per 4-byte access, as for translation faults).
fn carries_transaction_address(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::Uut
            | EventType::BadAtsTreq
            | EventType::TranslForbidden
            | EventType::WalkEabt
            | EventType::Translation
            | EventType::AddrSize
            | EventType::Access
            | EventType::Permission
            | EventType::TlbConflict
            | EventType::PageRequest
    )
}

fn dma_fault_kind(kind: EventType) -> DmaFaultKind {
    match kind {
        EventType::Translation => DmaFaultKind::Translation,
        EventType::AddrSize => DmaFaultKind::AddressSize,
        EventType::Access => DmaFaultKind::Access,
        EventType::Permission => DmaFaultKind::Permission,
        other => DmaFaultKind::Other(other.code()),
    }
}

impl DmaFaultSource for Iommu {
    fn begin_transfer(&self, window: &DmaWindow) -> FaultWatch {
        masked(|| {
            let mut r = self.router.lock();
            r.next_watch += 1;
            let id = r.next_watch;
            r.watches.push(Watch {
                id,
                window: *window,
                first: None,
                count: 0,
            });
            FaultWatch(id)
        })
    }

    fn end_transfer(&self, watch: FaultWatch) -> Option<DmaFault> {
        // Records of the transfer are in the queue by the time the device completes; drain
        // now rather than rely on the interrupt having run.
        self.drain_events();
        let w = masked(|| {
            let mut r = self.router.lock();
            let i = r.watches.iter().position(|w| w.id == watch.0)?;
            Some(r.watches.swap_remove(i))
        })?;
        let (kind, iova, write) = w.first?;
        let fault = DmaFault {
            kind: dma_fault_kind(kind),
            iova,
            write,
            count: w.count,
            stream_id: w.window.stream_id,
        };
        self.resolve_fault(&fault);
        Some(fault)
    }
}

/// The SMMU as a secondary TLB of an address space.
struct SmmuTlb {
    iommu: &'static Iommu,
}

impl SecondaryTlb for SmmuTlb {
    fn name(&self) -> &str {
        "smmuv3"
    }

    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        _cause: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        // The SMMU boundary: the kernel's one range type becomes the driver's flush kind.
        let kind = match range {
            FlushRange::Pages(r) if r.pages() == 1 => FlushKind::Page(r.start().0),
            FlushRange::Pages(r) => FlushKind::Range {
                start: r.start().0,
                pages: r.pages(),
            },
            FlushRange::All => FlushKind::All,
        };
        masked(|| self.iommu.smmu.invalidate(asid, kind)).map_err(|e| {
            let failure = match e {
                SmmuError::Cmdq(smmu::CmdqError::SyncTimeout { .. }) => {
                    SecondaryTlbFailure::Timeout
                }
                SmmuError::Cmdq(smmu::CmdqError::Rejected { index, opcode, .. }) => {
                    SecondaryTlbFailure::Rejected { index, opcode }
                }
                _ => SecondaryTlbFailure::Unavailable,
            };
            SecondaryTlbError::caused_by(failure, e)
        })
    }
}

/// A device bound to an address space with bus mastering on; dropping it stops the device's
/// DMA first, then unbinds.
pub struct Attachment {
    iommu: &'static Iommu,
    edu: Arc<EduDevice>,
    sid: u32,
}

impl Attachment {
    /// The device's StreamID.
    pub fn stream_id(&self) -> u32 {
        self.sid
    }

    /// The device.
    pub fn device(&self) -> &Arc<EduDevice> {
        &self.edu
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.edu.disable_dma();
        if let Err(e) = self.iommu.unbind(self.sid) {
            log::error!("unbinding StreamID {:#x}: {e}", self.sid);
        }
    }
}
