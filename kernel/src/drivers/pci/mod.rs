//! PCI Express: enumeration and configuration of the hierarchy below the ECAM host bridge, the
//! per-function facts drivers need (BARs as placed, StreamID, INTx route), Bus Master control,
//! and shared INTx lines.
//!
//! Why the kernel does all of this itself: under `-kernel` no firmware runs, so every BAR reads
//! zero, every bridge forwards nothing, and no device decodes memory until the kernel configures
//! it. And why this much care about DMA: QEMU 7.2's SMMUv3 has no GBPA, so until the SMMU is
//! enabled with a valid stream table entry for a device, that device's DMA bypasses
//! translation and can write anywhere in RAM. Enumeration therefore clears Bus Master Enable
//! everywhere and never sets it; only [`enable_bus_master`] does, under a contract that the
//! IOMMU is ready for the function.
//!
//! Layout:
//! - [`config`]: the [`ConfigSpace`] trait (the hardware seam, faked in host tests) and
//!   [`Ecam`].
//! - [`enumerate`](mod@enumerate): the scan, bus numbering, BAR sizing/placement, bridge windows,
//!   StreamIDs from `iommu-map`, INTx from `interrupt-map`.
//! - [`device`]: the typed result, [`PciDevice`], whose `Display` is the boot-log line.
//! - [`intx`]: INTx lines shared between drivers.
//!
//! Facts come from the PCI Local Bus Specification 3.0, the PCI-to-PCI Bridge Architecture
//! Specification 1.2, the PCI Express Base Specification and the PCI Express to PCI/PCI-X
//! Bridge Specification 1.0, cited where used. Device-tree facts (windows, `iommu-map`,
//! `interrupt-map`) arrive already decoded in [`crate::platform::PcieHost`].

pub mod config;
pub mod device;
pub mod enumerate;
pub mod error;
pub mod intx;
pub mod window;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use config::{ConfigSpace, Ecam};
pub use device::{
    Bar, BarAssignment, BarKind, BridgeInfo, Capability, ClassCode, PciDevice, PciePortType,
};
pub use enumerate::{Enumeration, enumerate};
pub use error::PciError;
pub use window::WindowKind;

use crate::platform::{Bdf, PcieHost};
use spin::Once;

/// Set Bus Master Enable on `bdf` and on every bridge in `upstream` (root-most first, as in
/// [`PciDevice::upstream`]), so the function's memory requests reach the host bridge (a bridge
/// forwards requests upstream only with its own Bus Master Enable set, PCI-to-PCI Bridge Spec
/// 1.2, §3.2.5.1).
///
/// # Safety
/// From this call on, the function can read and write memory at any bus address it is told
/// to. The caller guarantees that the IOMMU confines it: the SMMU is enabled and holds a valid
/// stream table entry (translating or aborting) for the function's StreamID, and stays so
/// until [`disable_bus_master`]. With no IOMMU in the path (no `iommu-map`) the caller
/// guarantees instead that every address the device will be given is memory it may access.
pub unsafe fn enable_bus_master<C: ConfigSpace + ?Sized>(config: &C, bdf: Bdf, upstream: &[Bdf]) {
    for &bridge in upstream.iter().chain(core::iter::once(&bdf)) {
        let cmd = config.read16(bridge, config::reg::COMMAND);
        if cmd & config::command::BUS_MASTER == 0 {
            config.write16(
                bridge,
                config::reg::COMMAND,
                cmd | config::command::BUS_MASTER,
            );
        }
    }
}

/// Clear Bus Master Enable on `bdf` (only: bridges above may serve other functions; a bridge
/// with Bus Master Enable set forwards nothing from a function that has it clear). The function
/// issues no new memory request afterwards (PCI Local Bus Specification 3.0, §6.2.2).
pub fn disable_bus_master<C: ConfigSpace + ?Sized>(config: &C, bdf: Bdf) {
    let cmd = config.read16(bdf, config::reg::COMMAND);
    config.write16(
        bdf,
        config::reg::COMMAND,
        cmd & !config::command::BUS_MASTER,
    );
}

/// Whether Bus Master Enable is set on `bdf`.
pub fn bus_master_enabled<C: ConfigSpace + ?Sized>(config: &C, bdf: Bdf) -> bool {
    config.read16(bdf, config::reg::COMMAND) & config::command::BUS_MASTER != 0
}

/// The PCI subsystem as configured at boot: the host bridge, its ECAM, and what enumeration
/// found.
pub struct Pci {
    /// The host bridge, from the device tree.
    pub host: PcieHost,
    /// Configuration-space access.
    pub ecam: Ecam,
    /// The functions and the problems found.
    pub enumeration: Enumeration,
}

static PCI: Once<Pci> = Once::new();

/// Enumerate and configure the hierarchy below `host` through `ecam`, map every assigned memory
/// BAR as device memory in the kernel's linear window (on the target), log it all (one line per
/// function, one warning per problem), and keep the result for [`get`]. Runs once; later calls
/// return the first result.
///
/// Call at boot once the kernel page tables are up (`mm::kernel_map::init`, which maps the ECAM
/// region), before any PCI driver probes. Whether the SMMU is enabled yet does not matter:
/// enumeration never enables DMA.
pub fn init(host: PcieHost, ecam: Ecam) -> &'static Pci {
    PCI.call_once(|| {
        let enumeration = enumerate(&ecam, &host);
        enumeration.log();
        #[cfg(target_os = "none")]
        map_bars(&enumeration);
        Pci {
            host,
            ecam,
            enumeration,
        }
    })
}

/// Map each assigned memory BAR at `LINEAR_BASE + cpu_addr` as Device-nGnRE, where drivers
/// expect it (`PhysAddr::to_virt`).
#[cfg(target_os = "none")]
fn map_bars(enumeration: &Enumeration) {
    for dev in &enumeration.devices {
        for bar in &dev.bars {
            let Some(placed) = bar.assigned else {
                continue;
            };
            if let Err(e) = crate::mm::kernel_map::map_device("PCI BAR", placed.cpu_addr, bar.size)
            {
                log::warn!(
                    "PCI {}: BAR{} at {:#x} could not be mapped: {e}",
                    dev.bdf,
                    bar.index,
                    placed.cpu_addr
                );
            }
        }
    }
}

/// The PCI subsystem, once [`init`] has run.
pub fn get() -> Option<&'static Pci> {
    PCI.get()
}

#[cfg(target_os = "none")]
mod ktests {
    use super::*;
    use crate::{kassert, kassert_eq};

    fn pci() -> Result<&'static Pci, alloc::string::String> {
        get().ok_or_else(|| "PCI not initialised: boot must call drivers::pci::init".into())
    }

    crate::ktest! {
        /// The default machine: host bridge at 00:00.0, edu at 00:01.0 with BAR0 placed in the
        /// 32-bit window, StreamID 8 (identity iommu-map), INTA -> SPI 4 = INTID 36, memory
        /// decoding on and bus mastering off.
        fn pci_enumerates_default_machine() {
            let pci = pci()?;
            let e = &pci.enumeration;
            kassert!(e.errors.is_empty(), "enumeration errors: {:?}", e.errors);
            let host = e.device(Bdf::new(0, 0, 0).unwrap()).ok_or("no 00:00.0")?;
            kassert_eq!((host.vendor, host.device), (0x1b36, 0x0008));
            let edu = e.device(Bdf::new(0, 1, 0).unwrap()).ok_or("no device at 00:01.0")?;
            kassert!(edu.is(0x1234, 0x11e8), "00:01.0 is not edu: {edu}");
            let bar0 = edu.bar(0).ok_or("edu has no BAR0")?;
            kassert_eq!(bar0.size, 1 << 20);
            let placed = bar0.assigned.ok_or("edu BAR0 not assigned")?;
            let w32 = pci
                .host
                .window(crate::platform::PciSpace::Mem32)
                .ok_or("no 32-bit window")?;
            kassert!(
                placed.pci_addr >= w32.pci_addr && placed.pci_addr + bar0.size <= w32.pci_addr + w32.size,
                "BAR0 {placed:?} outside {w32}"
            );
            kassert_eq!(pci.ecam.read32(edu.bdf, config::reg::BAR0) & !0xF, placed.pci_addr as u32);
            kassert_eq!(edu.stream_id, Some(0x8));
            let (pin, irq) = edu.intx.ok_or("edu has no INTx route")?;
            kassert_eq!(pin, crate::platform::IntxPin::A);
            kassert_eq!(irq.intid, 36);
            let cmd = pci.ecam.read16(edu.bdf, config::reg::COMMAND);
            kassert!(cmd & config::command::MEMORY != 0, "memory decoding off: {cmd:#x}");
            kassert!(cmd & config::command::BUS_MASTER == 0, "bus mastering on after enumeration");
            kassert!(edu.capability(device::cap_id::MSI).is_some(), "edu lists no MSI capability");
            Ok(())
        }
    }

    crate::ktest! {
        /// No function is left with Bus Master Enable after enumeration.
        fn pci_enumeration_never_enables_bus_mastering() {
            let pci = pci()?;
            for dev in &pci.enumeration.devices {
                kassert!(!bus_master_enabled(&pci.ecam, dev.bdf), "{} has bus mastering on", dev.bdf);
            }
            Ok(())
        }
    }
}
