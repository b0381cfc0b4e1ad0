//! The IOMMU glue: owns the system's SMMUv3 and brings it up from the device tree before any
//! device may DMA. The rest is split as Linux splits `arm-smmu-v3.c` from `arm-smmu-v3-sva.c`:
//!
//! - this file: the [`Iommu`] itself, its errors and bring-up ([`init`]), trace marks;
//! - [`sva`]: sharing address spaces with bus masters (bind/unbind/attach) and the SMMU as a
//!   secondary TLB of every bound address space;
//! - [`events`]: the event queue and global errors, routed to DMA transfers and handlers;
//! - [`hal`]: the `smmu` crate's hardware interface on this kernel.
//!
//! One flush, end to end: a page-table change returns a flush token → `AddressSpace::flush`
//! → CPU TLBI → each registered secondary TLB, here the SMMU ([`sva`]) → the `smmu` crate's
//! planner → one command batch + `CMD_SYNC` → wait → return.

#[cfg(target_os = "none")]
mod dma_tests;
pub mod events;
pub mod hal;
#[cfg(target_os = "none")]
mod ktests;
pub mod sva;

pub use events::EventHandler;
pub use sva::Attachment;

use crate::{
    bootargs::BootConfig,
    cpu,
    drivers::gic::{self, Trigger},
    mm::{PhysAddr, address_space::AsError},
    platform::Platform,
};
use alloc::vec::Vec;
use core::{
    fmt,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};
use events::Router;
use hal::KernelSmmuHal;
use protocol::trace_mark::{self, Mark};
use smmu::{CounterSnapshot, CpuMmuConfig, Granule, Smmu, SmmuConfig, SmmuError};
use spin::{Mutex, Once};
use sva::Domain;

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
/// Whether [`Iommu::trace_mark`] leaves marks (bootarg `smmu.trace_marks`).
static TRACE_MARKS: AtomicBool = AtomicBool::new(false);

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
    CpuMmuConfig {
        granule: Granule::Size4K,
        va_bits: crate::mm::addr::VA_BITS as u8,
        asid_bits: crate::mm::tlb::arch::cpu_asid_bits() as u8,
        pa_range_bits: cpu::pa_range_bits(),
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
        inval_policy: config.smmu_inval,
        use_ril: config.smmu_ril,
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
    /// Submits `cmds` and one `CMD_SYNC`, waited for, with IRQs masked (for tests and probes
    /// that need a command the flush paths never issue).
    ///
    /// # Errors
    ///
    /// The driver's error.
    pub fn submit_commands(&self, cmds: &[smmu::Command]) -> Result<(), SmmuError> {
        masked(|| self.smmu.submit(cmds))
    }

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

    /// Leave a mark in QEMU's SMMU trace (bootarg `smmu.trace_marks`, used by the host's trace
    /// oracle): a write of the mark's value to SMMU_GERROR_IRQ_CFG1
    /// ([`protocol::trace_mark`]), which QEMU traces as `smmuv3_write_mmio addr: 0x70 val:...`. The register holds the MSI payload of the
    /// global-error interrupt, which is never used: this SMMU signals wired interrupts, and
    /// GERROR_IRQ_CFG0.ADDR = 0 disables the MSI (IHI 0070 §6.3.21) — so the mark changes
    /// nothing the device or the tests observe, and issues no command. Returns whether a mark
    /// was left.
    pub fn trace_mark(&self, mark: Mark) -> bool {
        if !TRACE_MARKS.load(Ordering::Relaxed) {
            return false;
        }
        use smmu::hal::SmmuHal;
        self.smmu
            .hal()
            .write32(trace_mark::REGISTER_OFFSET, mark.value());
        true
    }
}
