//! Device-tree discovery into a typed platform description.
//!
//! The kernel hard-codes no device address and no interrupt number. The boot path hands the DTB
//! that QEMU (or firmware) passed to [`Platform::discover`] once, before any driver runs, and every
//! driver takes its register frame and interrupts from the returned [`Platform`]. That keeps the
//! kernel honest across QEMU versions and machine options (GICv2 vs v3, with or without an SMMU,
//! highmem ECAM or not), which move these things around.
//!
//! Policy:
//! - A **required** device (RAM, the PL011, the GIC, the generic timer, PSCI, the CPUs) that is
//!   absent is [`PlatformError::Missing`]; a property that cannot be decoded is
//!   [`PlatformError::Malformed`] naming node, property and reason. Either stops the boot with a
//!   message that points at the DT, not at a misprogrammed device later on.
//! - **Optional** hardware is an `Option`: the SMMU and the PCIe host. "No SMMU" is a fact about
//!   the machine for the kernel to report, not an error.
//! - Devices are found by `compatible`, never by node name, and named interrupts by
//!   `interrupt-names`, never by position: QEMU has renamed and reordered both between releases.
//!
//! The code is pure (bytes in, value out, no MMIO), so it builds and is unit-tested on the host
//! against DTBs dumped from QEMU 7.2 (`kernel/testdata/`).
//!
//! Layers, bottom up: [`dtb`] checks the container (and makes the `fdt` crate's walk safe);
//! [`tree`] indexes the nodes with paths and parents and implements the generic DT rules (cell
//! counts, `reg` and `ranges` translation, interrupt parents); [`cells`] reads big-endian cells;
//! [`irq`] decodes GIC specifiers; then one module per device family.

mod cells;
mod cpu;
mod dtb;
mod error;
mod gic;
mod irq;
mod memory;
mod pci;
mod region;
mod smmu;
mod tree;
mod uart;

#[cfg(test)]
mod tests;

pub use cpu::{Conduit, Cpu, EnableMethod, Psci, PsciVersion, Timer, psci_fn};
pub use error::PlatformError;
pub use gic::{Gic, GicRegs};
pub use irq::{Irq, IrqKind, Trigger};
pub use memory::{ReservedOrigin, ReservedRegion};
pub use pci::{
    Bdf, InterruptMapEntry, IntxPin, IommuMapEntry, PciSpace, PciWindow, PcieHost, StreamMapping,
};
pub use region::Region;
pub use smmu::{SmmuIrqs, SmmuV3};
pub use uart::Pl011;

use alloc::{string::String, vec::Vec};
use core::fmt;

/// What [`PlatformError::Missing`] names for each required item, so callers and tests can match
/// on them.
pub mod missing {
    /// RAM.
    pub const MEMORY: &str = "memory node (device_type = \"memory\") with a non-empty reg";
    /// The `/cpus` node.
    pub const CPUS: &str = "/cpus";
    /// A CPU node under `/cpus`.
    pub const CPU: &str = "/cpus/cpu@* (device_type = \"cpu\")";
    /// The interrupt controller.
    pub const GIC: &str =
        "GIC (compatible \"arm,gic-v3\", \"arm,cortex-a15-gic\" or \"arm,gic-400\")";
    /// The PSCI node.
    pub const PSCI: &str = "PSCI (compatible \"arm,psci-1.0\", \"arm,psci-0.2\" or \"arm,psci\")";
    /// The generic timer node.
    pub const TIMER: &str = "generic timer (compatible \"arm,armv8-timer\")";
    /// The PL011 node.
    pub const UART: &str = "PL011 UART (compatible \"arm,pl011\")";
}

/// Everything the kernel needs to know about the machine, discovered from the device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The DTB's `totalsize`: the frame allocator must keep `[dtb, dtb + dtb_size)` out of the
    /// free pool for as long as anything may re-read the DTB.
    pub dtb_size: usize,
    /// RAM: every `reg` entry of every memory node, sorted by base.
    pub memory: Vec<Region>,
    /// Ranges of RAM that must not be allocated (`/memreserve/` and `/reserved-memory`).
    pub reserved: Vec<ReservedRegion>,
    /// `/chosen/bootargs`; empty when absent.
    pub bootargs: String,
    /// `/chosen/stdout-path`, verbatim (may carry `:options` or be an alias).
    pub stdout_path: Option<String>,
    /// The CPUs, in DT order.
    pub cpus: Vec<Cpu>,
    /// The console UART.
    pub uart: Pl011,
    /// The interrupt controller.
    pub gic: Gic,
    /// The generic timer's interrupts.
    pub timer: Timer,
    /// Firmware interface for CPU_ON and SYSTEM_OFF.
    pub psci: Psci,
    /// The SMMUv3, if the machine has one (`-M virt,iommu=smmuv3`).
    pub smmu: Option<SmmuV3>,
    /// The PCIe host bridge, if any.
    pub pcie: Option<PcieHost>,
}

/// The DTB's `totalsize`, read from its header after checking the magic: what the boot code needs
/// to turn the DTB pointer it was handed into the slice [`Platform::discover`] takes.
pub fn dtb_total_size(header: &[u8]) -> Result<usize, PlatformError> {
    dtb::total_size(header)
}

impl Platform {
    /// Discovers the platform from the DTB bytes. `dtb` must hold at least the DTB's
    /// `totalsize` bytes (see [`dtb_total_size`]); it is not kept.
    pub fn discover(dtb: &[u8]) -> Result<Self, PlatformError> {
        let header = dtb::Header::parse(dtb)?;
        let nops = header.check_structure(dtb)?;
        let memreserve = header.mem_reservations(dtb)?;
        let compacted;
        let blob = if nops.is_empty() {
            &dtb[..header.totalsize]
        } else {
            compacted = header.without_nops(dtb, &nops);
            &compacted[..]
        };
        let tree = tree::Tree::build(blob)?;

        let memory = memory::memory(&tree)?;
        let reserved = memory::reserved(&tree, memreserve)?;
        let (bootargs, stdout_path) = chosen(&tree)?;
        let (gic, domain) = gic::discover(&tree)?;
        let uart = uart::discover(&tree, &domain, stdout_path.as_deref())?;
        let timer = cpu::timer(&tree, &domain)?;
        let psci = cpu::psci(&tree)?;
        let cpus = cpu::cpus(&tree)?;
        let smmu = smmu::discover(&tree, &domain)?;
        let pcie = pci::discover(&tree, &domain)?;
        Ok(Self {
            dtb_size: header.totalsize,
            memory,
            reserved,
            bootargs,
            stdout_path,
            cpus,
            uart,
            gic,
            timer,
            psci,
            smmu,
            pcie,
        })
    }

    /// The StreamID with which PCI function `bdf`'s DMA reaches *the discovered SMMU*, from the
    /// host bridge's `iommu-map`. `None` if there is no SMMU or no PCIe host, if no `iommu-map`
    /// entry covers the function (its DMA bypasses any IOMMU), or if the entry names another
    /// IOMMU.
    pub fn smmu_stream_id(&self, bdf: Bdf) -> Option<u32> {
        let smmu = self.smmu.as_ref()?;
        let mapping = self.pcie.as_ref()?.rid_to_sid(bdf.rid())?;
        (smmu.phandle == Some(mapping.iommu)).then_some(mapping.sid)
    }

    /// Logs the platform at `info` level, one line per item (what, address, size, interrupts),
    /// for the boot log.
    pub fn log_summary(&self) {
        // The closure cannot fail; the `fmt::Result` plumbing is shared with `Display`.
        let _ = self.summary(|line| {
            log::info!("{line}");
            Ok(())
        });
    }

    /// Emits the summary, one line per call of `emit`.
    fn summary(&self, mut emit: impl FnMut(fmt::Arguments<'_>) -> fmt::Result) -> fmt::Result {
        emit(format_args!("DTB: {:#x} bytes", self.dtb_size))?;
        for region in &self.memory {
            emit(format_args!("memory: {region}"))?;
        }
        for reserved in &self.reserved {
            emit(format_args!("{reserved}"))?;
        }
        match &self.stdout_path {
            Some(path) => emit(format_args!(
                "chosen: bootargs {:?}, stdout-path {path:?}",
                self.bootargs
            ))?,
            None => emit(format_args!(
                "chosen: bootargs {:?}, no stdout-path",
                self.bootargs
            ))?,
        }
        for cpu in &self.cpus {
            emit(format_args!("{cpu}"))?;
        }
        emit(format_args!("{}", self.psci))?;
        emit(format_args!("{}", self.gic))?;
        emit(format_args!("{}", self.timer))?;
        emit(format_args!("{}", self.uart))?;
        match &self.smmu {
            Some(smmu) => emit(format_args!("{smmu}"))?,
            None => emit(format_args!(
                "no SMMU (no enabled node with compatible \"{}\")",
                smmu::COMPATIBLE
            ))?,
        }
        match &self.pcie {
            Some(pcie) => emit(format_args!("{pcie}")),
            None => emit(format_args!(
                "no PCIe host (no enabled node with compatible \"{}\")",
                pci::COMPATIBLE
            )),
        }
    }
}

/// `/chosen` `bootargs` (empty when absent) and `stdout-path` (DT spec v0.4 §3.6). Both are
/// optional, and so is `/chosen` itself.
fn chosen(tree: &tree::Tree<'_>) -> Result<(String, Option<String>), PlatformError> {
    let Some(chosen) = tree.find_path("/chosen") else {
        return Ok((String::new(), None));
    };
    let bootargs = tree.string(chosen, "bootargs")?.unwrap_or_default().into();
    let stdout = tree.string(chosen, "stdout-path")?.map(String::from);
    Ok((bootargs, stdout))
}

/// The same lines as [`Platform::log_summary`], newline-separated.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.summary(|line| writeln!(f, "{line}"))
    }
}
