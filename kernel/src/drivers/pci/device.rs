//! What enumeration found and did, per function: [`PciDevice`] and its parts, with the one-line
//! boot-log format.

use super::window::WindowKind;
use crate::platform::{Bdf, IntxPin, Irq};
use alloc::vec::Vec;
use core::fmt;

/// The type of a Base Address Register (PCI Local Bus Specification 3.0, §6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Memory, 32-bit decoder (type 00b).
    Mem32,
    /// Memory, 64-bit decoder (type 10b): uses this BAR slot and the next.
    Mem64,
    /// I/O space (bit 0 set). Sized and reported, never assigned: nothing here uses port I/O.
    Io,
}

/// Where a BAR was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAssignment {
    /// The PCI bus address written into the BAR.
    pub pci_addr: u64,
    /// The CPU physical address at which the CPU reaches it (through the host bridge window).
    pub cpu_addr: u64,
    /// The host-bridge window it came from.
    pub window: WindowKind,
}

/// One implemented Base Address Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR slot (0–5 for a type 0 header, 0–1 for a bridge); a 64-bit BAR also uses `index + 1`.
    pub index: u8,
    /// Type.
    pub kind: BarKind,
    /// Prefetchable (memory BARs only, bit 3).
    pub prefetchable: bool,
    /// Size in bytes (a power of two), from the sizing read-back.
    pub size: u64,
    /// The assigned address; `None` for I/O BARs and for BARs that did not fit (an error says
    /// which).
    pub assigned: Option<BarAssignment>,
}

impl Bar {
    /// The CPU physical address of the BAR, if it was assigned.
    pub fn cpu_addr(&self) -> Option<u64> {
        self.assigned.map(|a| a.cpu_addr)
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
            BarKind::Io => "io",
        };
        let pref = if self.prefetchable { " pref" } else { "" };
        write!(f, "BAR{} {kind}{pref} ", self.index)?;
        write_size(f, self.size)?;
        match self.assigned {
            Some(a) if a.pci_addr == a.cpu_addr => write!(f, " @ {:#x}", a.pci_addr),
            Some(a) => write!(f, " @ pci {:#x} (cpu {:#x})", a.pci_addr, a.cpu_addr),
            None => f.write_str(" unassigned"),
        }
    }
}

/// Sizes as 4K / 1M / 2G when exact, else in hex.
fn write_size(f: &mut fmt::Formatter<'_>, size: u64) -> fmt::Result {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return write!(f, "{}{unit}", size >> shift);
        }
    }
    write!(f, "{size:#x}")
}

/// An entry of the capabilities list (PCI Local Bus Specification 3.0, §6.7 and Appendix H).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of the capability in configuration space.
    pub offset: u8,
}

/// Capability IDs (PCI Local Bus Specification 3.0, Appendix H; PCI Code and ID Assignment).
pub mod cap_id {
    /// PCI Power Management Interface.
    pub const PM: u8 = 0x01;
    /// Message Signalled Interrupts (§6.8.1).
    pub const MSI: u8 = 0x05;
    /// Vendor specific.
    pub const VENDOR: u8 = 0x09;
    /// PCI hot-plug (SHPC).
    pub const SHPC: u8 = 0x0C;
    /// Bridge subsystem vendor ID.
    pub const SUBSYSTEM_ID: u8 = 0x0D;
    /// PCI Express (PCI Express Base Specification, §7.5.3).
    pub const PCIE: u8 = 0x10;
    /// MSI-X (§6.8.2).
    pub const MSIX: u8 = 0x11;
}

impl Capability {
    /// A short name for the ID.
    pub fn name(&self) -> &'static str {
        match self.id {
            cap_id::PM => "PM",
            0x02 => "AGP",
            0x03 => "VPD",
            0x04 => "SlotID",
            cap_id::MSI => "MSI",
            0x06 => "HotSwap",
            0x07 => "PCI-X",
            0x08 => "HT",
            cap_id::VENDOR => "Vendor",
            0x0A => "Debug",
            0x0B => "CRC",
            cap_id::SHPC => "SHPC",
            cap_id::SUBSYSTEM_ID => "SSVID",
            0x0E => "AGP8x",
            0x0F => "Secure",
            cap_id::PCIE => "PCIe",
            cap_id::MSIX => "MSI-X",
            0x12 => "SATA",
            0x13 => "AF",
            0x14 => "EA",
            _ => "?",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "?" => write!(f, "cap {:#04x}@{:#x}", self.id, self.offset),
            name => write!(f, "{name}@{:#x}", self.offset),
        }
    }
}

/// Device/Port Type of the PCI Express Capabilities register (PCI Express Base Specification,
/// §7.5.3.2, bits 7:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciePortType {
    /// 0000b PCI Express Endpoint.
    Endpoint,
    /// 0001b Legacy PCI Express Endpoint.
    LegacyEndpoint,
    /// 1001b Root Complex Integrated Endpoint.
    RootComplexIntegrated,
    /// 1010b Root Complex Event Collector.
    RootComplexEventCollector,
    /// 0100b Root Port of a PCI Express Root Complex.
    RootPort,
    /// 0101b Upstream Port of a PCI Express Switch.
    SwitchUpstream,
    /// 0110b Downstream Port of a PCI Express Switch.
    SwitchDownstream,
    /// 0111b PCI Express to PCI/PCI-X Bridge.
    PcieToPciBridge,
    /// 1000b PCI/PCI-X to PCI Express Bridge.
    PciToPcieBridge,
    /// Anything else.
    Other(u8),
}

impl PciePortType {
    /// Decode the 4-bit Device/Port Type field.
    pub fn from_field(value: u8) -> Self {
        match value & 0xF {
            0x0 => Self::Endpoint,
            0x1 => Self::LegacyEndpoint,
            0x4 => Self::RootPort,
            0x5 => Self::SwitchUpstream,
            0x6 => Self::SwitchDownstream,
            0x7 => Self::PcieToPciBridge,
            0x8 => Self::PciToPcieBridge,
            0x9 => Self::RootComplexIntegrated,
            0xA => Self::RootComplexEventCollector,
            other => Self::Other(other),
        }
    }

    /// Whether the secondary side of a bridge of this type is a PCI Express link (so requests
    /// from below keep their own Requester ID), rather than a conventional PCI bus.
    pub fn secondary_is_pcie(self) -> bool {
        matches!(
            self,
            Self::RootPort | Self::SwitchUpstream | Self::SwitchDownstream | Self::PciToPcieBridge
        )
    }
}

/// The class code (PCI Local Bus Specification 3.0, §6.2.1 and Appendix D).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class.
    pub base: u8,
    /// Sub-class.
    pub sub: u8,
    /// Programming interface.
    pub prog_if: u8,
}

impl ClassCode {
    /// A short description of well-known base/sub classes.
    pub fn describe(&self) -> &'static str {
        match (self.base, self.sub) {
            (0x01, _) => "storage",
            (0x02, _) => "network",
            (0x03, _) => "display",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x04) => "PCI bridge",
            (0x06, _) => "bridge",
            (0x08, _) => "system peripheral",
            (0x0C, 0x03) => "USB",
            (0xFF, _) | (0x00, 0xFF) => "other",
            _ => "device",
        }
    }
}

impl fmt::Display for ClassCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}", self.base, self.sub, self.prog_if)
    }
}

/// What enumeration programmed into a PCI-to-PCI bridge (type 1 header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeInfo {
    /// Secondary bus number (the bus directly below).
    pub secondary: u8,
    /// Subordinate bus number (the highest bus below).
    pub subordinate: u8,
    /// Non-prefetchable memory window `[start, end)` in PCI addresses, if open.
    pub mem_window: Option<(u64, u64)>,
    /// Prefetchable memory window `[start, end)` in PCI addresses, if open.
    pub pref_window: Option<(u64, u64)>,
}

/// One PCI function, as enumerated and configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Bus/device/function.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code.
    pub class: ClassCode,
    /// Revision ID.
    pub revision: u8,
    /// Header layout (Header Type bits 6:0): 0 = device, 1 = PCI-to-PCI bridge.
    pub header_type: u8,
    /// Header Type bit 7 of function 0 of this device.
    pub multifunction: bool,
    /// Implemented BARs, in slot order.
    pub bars: Vec<Bar>,
    /// The capabilities list, in list order.
    pub capabilities: Vec<Capability>,
    /// PCI Express Device/Port Type, if the function has a PCI Express capability.
    pub pcie_port: Option<PciePortType>,
    /// The Requester ID the function's DMA carries when it reaches the host bridge: its own
    /// `bus << 8 | device << 3 | function`, unless a conventional PCI bridge on the way takes
    /// ownership of the transaction (PCI Express to PCI/PCI-X Bridge Specification 1.0, §2.3).
    pub requester_id: u16,
    /// The StreamID of `requester_id` from the host bridge's `iommu-map`; `None` if the
    /// host has no `iommu-map` (DMA does not go through an IOMMU) or, with an error recorded,
    /// if no entry covers the RID.
    pub stream_id: Option<u32>,
    /// Phandle of the IOMMU `stream_id` belongs to.
    pub iommu: Option<u32>,
    /// The function's own INTx pin and the GIC interrupt it is routed to (after swizzling through
    /// the bridges above it).
    pub intx: Option<(IntxPin, Irq)>,
    /// Bridges between the root bus and this function, root-most first. Enabling DMA sets Bus
    /// Master Enable on each of them too.
    pub upstream: Vec<Bdf>,
    /// Bus numbers and windows programmed, for a bridge.
    pub bridge: Option<BridgeInfo>,
    /// The COMMAND register as enumeration left it (never with Bus Master Enable).
    pub command: u16,
}

impl PciDevice {
    /// Whether this is `vendor:device`.
    pub fn is(&self, vendor: u16, device: u16) -> bool {
        self.vendor == vendor && self.device == device
    }

    /// The BAR in slot `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The first capability with `id`, if present.
    pub fn capability(&self, id: u8) -> Option<Capability> {
        self.capabilities.iter().copied().find(|c| c.id == id)
    }
}

impl fmt::Display for PciDevice {
    /// The boot-log line: BDF, IDs, class, BARs as assigned, StreamID, INTx routing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:04x}:{:04x}] rev {:02x} class {} ({})",
            self.bdf,
            self.vendor,
            self.device,
            self.revision,
            self.class,
            self.class.describe()
        )?;
        if let Some(b) = &self.bridge {
            write!(f, ", buses {:02x}-{:02x}", b.secondary, b.subordinate)?;
            if let Some((s, e)) = b.mem_window {
                write!(f, ", mem {s:#x}-{:#x}", e - 1)?;
            }
            if let Some((s, e)) = b.pref_window {
                write!(f, ", pref {s:#x}-{:#x}", e - 1)?;
            }
        }
        for bar in &self.bars {
            write!(f, ", {bar}")?;
        }
        if self.bars.is_empty() && self.bridge.is_none() {
            f.write_str(", no BARs")?;
        }
        match self.stream_id {
            Some(sid) if u32::from(self.requester_id) == sid => write!(f, ", SID {sid:#x}")?,
            Some(sid) => write!(f, ", SID {sid:#x} (RID {:#06x})", self.requester_id)?,
            None => f.write_str(", no SID")?,
        }
        match &self.intx {
            Some((pin, irq)) => write!(f, ", INT{:?} -> {irq}", pin)?,
            None => f.write_str(", no INTx")?,
        }
        if !self.capabilities.is_empty() {
            f.write_str(", caps")?;
            for cap in &self.capabilities {
                write!(f, " {cap}")?;
            }
        }
        Ok(())
    }
}
