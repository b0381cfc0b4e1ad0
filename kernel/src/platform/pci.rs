//! The PCIe host bridge (`pci-host-ecam-generic`): where config space is, which CPU windows map to
//! which PCI addresses, which StreamID each requester gets, and where each INTx line lands.
//!
//! These are decoded into types, not kept as cells, because each is easy to get subtly wrong in
//! the code that uses it: the `ranges` PCI address is three cells with a space code in the top
//! one, `iommu-map` is the only statement of the RID→StreamID relation (QEMU's is the identity,
//! but that is a property of the DT, not something to assume), and `interrupt-map` is matched
//! through a mask and swizzled per slot.
//!
//! Bindings: `Documentation/devicetree/bindings/pci/host-generic-pci.yaml` (ECAM `reg`,
//! `bus-range`), IEEE Std 1275-1994 PCI Bus Binding §2.2.1 (3-cell PCI address), DT spec v0.4
//! §2.4.3 (interrupt nexus: `interrupt-map`, `interrupt-map-mask`),
//! `Documentation/devicetree/bindings/pci/pci-iommu.txt` (`iommu-map`, `iommu-map-mask`).

use super::{PlatformError, gic::IrqDomain, irq::Irq, region::Region, tree::Tree};
use alloc::{string::String, vec::Vec};
use core::fmt;

/// The `compatible` of a generic ECAM host bridge.
pub const COMPATIBLE: &str = "pci-host-ecam-generic";

/// A PCI bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0–31.
    pub device: u8,
    /// Function number, 0–7.
    pub function: u8,
}

impl Bdf {
    /// A BDF, or `None` if `device` > 31 or `function` > 7.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Self {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// The 16-bit Requester ID: bus in [15:8], device in [7:3], function in [2:0] (PCIe Base
    /// Specification, "Requester ID").
    pub const fn rid(self) -> u16 {
        ((self.bus as u16) << 8) | ((self.device as u16) << 3) | self.function as u16
    }

    /// The BDF of a Requester ID.
    pub const fn from_rid(rid: u16) -> Self {
        Self {
            bus: (rid >> 8) as u8,
            device: ((rid >> 3) & 0x1f) as u8,
            function: (rid & 7) as u8,
        }
    }

    /// The phys.hi cell of this function's config-space address (IEEE 1275 PCI binding §2.2.1.1:
    /// `npt000ss bbbbbbbb dddddfff rrrrrrrr`, here with ss = 00 and register 0), which is the
    /// child unit address `interrupt-map` matches on.
    pub const fn phys_hi(self) -> u32 {
        ((self.bus as u32) << 16) | ((self.device as u32) << 11) | ((self.function as u32) << 8)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// A legacy interrupt pin, as in the Interrupt Pin config register (1 = INTA#).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntxPin {
    /// INTA#.
    A = 1,
    /// INTB#.
    B = 2,
    /// INTC#.
    C = 3,
    /// INTD#.
    D = 4,
}

impl IntxPin {
    /// The pin for an Interrupt Pin register value (1–4); `None` for 0 (no INTx) or junk.
    pub const fn from_register(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::A),
            2 => Some(Self::B),
            3 => Some(Self::C),
            4 => Some(Self::D),
            _ => None,
        }
    }

    /// The pin this becomes on the upstream side of a PCI-PCI bridge, for a device in slot
    /// `device` below it (PCI-to-PCI Bridge Architecture Specification rev 1.2, §9.1). Apply once
    /// per bridge on the way up; [`PcieHost::intx_route`] takes the pin as seen at the host bridge.
    pub const fn swizzle(self, device: u8) -> Self {
        match ((self as u8 - 1 + device % 4) % 4) + 1 {
            1 => Self::A,
            2 => Self::B,
            3 => Self::C,
            _ => Self::D,
        }
    }
}

/// Address space of a `ranges` window: phys.hi bits [25:24] (IEEE 1275 PCI binding §2.2.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciSpace {
    /// 00: configuration space (not a valid window; kept so it is visible, not dropped).
    Config,
    /// 01: I/O space.
    Io,
    /// 10: 32-bit memory space.
    Mem32,
    /// 11: 64-bit memory space.
    Mem64,
}

/// One `ranges` entry of the host bridge: CPU addresses `cpu_addr..+size` reach PCI addresses
/// `pci_addr..+size` in `space`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// Which PCI address space.
    pub space: PciSpace,
    /// phys.hi bit 30, `p`: prefetchable memory.
    pub prefetchable: bool,
    /// Start in PCI address space (phys.mid:phys.lo); what goes into a BAR.
    pub pci_addr: u64,
    /// Start in the CPU's physical address space; what the CPU maps.
    pub cpu_addr: u64,
    /// Length in bytes.
    pub size: u64,
}

impl PciWindow {
    /// The CPU physical range of the window.
    pub const fn cpu_region(&self) -> Region {
        Region {
            base: self.cpu_addr,
            size: self.size,
        }
    }
}

impl fmt::Display for PciWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            PciSpace::Config => "config",
            PciSpace::Io => "I/O",
            PciSpace::Mem32 => "mem32",
            PciSpace::Mem64 => "mem64",
        };
        let pref = if self.prefetchable {
            " prefetchable"
        } else {
            ""
        };
        write!(
            f,
            "{space}{pref} pci {:#x} at cpu {:#x} size {:#x}",
            self.pci_addr, self.cpu_addr, self.size
        )
    }
}

/// One `iommu-map` entry: RIDs `rid_base..rid_base + length` go to the IOMMU with phandle
/// `iommu`, as StreamIDs `sid_base..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// First Requester ID (after `iommu-map-mask`).
    pub rid_base: u32,
    /// Phandle of the IOMMU.
    pub iommu: u32,
    /// StreamID of `rid_base`.
    pub sid_base: u32,
    /// Number of RIDs covered.
    pub length: u32,
}

/// Where a Requester ID's DMA goes: which IOMMU, as which StreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMapping {
    /// Phandle of the IOMMU (compare with [`SmmuV3::phandle`](super::SmmuV3)).
    pub iommu: u32,
    /// The StreamID.
    pub sid: u32,
}

/// One `interrupt-map` entry: a (child unit address, INTx pin) pattern and the GIC interrupt it
/// maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMapEntry {
    /// Child unit address: the 3-cell PCI address (phys.hi, phys.mid, phys.lo).
    pub child_addr: [u32; 3],
    /// Child interrupt specifier: the pin, 1 = INTA.
    pub child_pin: u32,
    /// Phandle of the interrupt parent.
    pub parent: u32,
    /// The parent interrupt.
    pub irq: Irq,
}

/// A `pci-host-ecam-generic` host bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcieHost {
    /// Node path, e.g. `/pcie@10000000`.
    pub path: String,
    /// ECAM region; its base is the config space of bus `bus_range.0`.
    pub ecam: Region,
    /// First and last bus number (`bus-range`; 0–255 when absent).
    pub bus_range: (u8, u8),
    /// `linux,pci-domain`, if given.
    pub domain: Option<u32>,
    /// Decoded `ranges`, in DT order.
    pub windows: Vec<PciWindow>,
    /// Decoded `iommu-map`; empty when absent (then no function is behind an IOMMU).
    pub iommu_map: Vec<IommuMapEntry>,
    /// `iommu-map-mask`, applied to a RID before lookup; `None` when absent (no masking).
    pub iommu_map_mask: Option<u32>,
    /// `interrupt-map-mask`: (phys.hi, phys.mid, phys.lo, pin); all ones when absent.
    pub interrupt_map_mask: [u32; 4],
    /// Decoded `interrupt-map`.
    pub interrupt_map: Vec<InterruptMapEntry>,
    /// `dma-coherent`: devices' DMA snoops the CPU caches.
    pub dma_coherent: bool,
}

impl PcieHost {
    /// The first window in `space`.
    pub fn window(&self, space: PciSpace) -> Option<&PciWindow> {
        self.windows.iter().find(|w| w.space == space)
    }

    /// Physical address range of `bdf`'s 4 KiB configuration space: ECAM puts bus at bits
    /// [27:20], device at [19:15], function at [14:12], relative to the first bus in `bus-range`
    /// (PCIe Base Specification, "Enhanced Configuration Access Mechanism"). `None` outside the
    /// bus range.
    pub fn config_space(&self, bdf: Bdf) -> Option<Region> {
        if bdf.bus < self.bus_range.0 || bdf.bus > self.bus_range.1 {
            return None;
        }
        let offset = (u64::from(bdf.bus - self.bus_range.0) << 20)
            | (u64::from(bdf.device) << 15)
            | (u64::from(bdf.function) << 12);
        (offset + 0x1000 <= self.ecam.size).then_some(Region {
            base: self.ecam.base + offset,
            size: 0x1000,
        })
    }

    /// The IOMMU and StreamID for Requester ID `rid`, from `iommu-map` (pci-iommu binding: RID r
    /// in `[rid-base, rid-base + length)` maps to `iommu-base + (r - rid-base)`, after masking
    /// with `iommu-map-mask`). `None` if no entry covers it, including when there is no
    /// `iommu-map` at all: that function's DMA does not go through an IOMMU.
    pub fn rid_to_sid(&self, rid: u16) -> Option<StreamMapping> {
        let rid = u32::from(rid) & self.iommu_map_mask.unwrap_or(u32::MAX);
        self.iommu_map.iter().find_map(|e| {
            let offset = rid.checked_sub(e.rid_base).filter(|&o| o < e.length)?;
            Some(StreamMapping {
                iommu: e.iommu,
                sid: e.sid_base.checked_add(offset)?,
            })
        })
    }

    /// The GIC interrupt that INTx `pin` of `bdf` raises at the host bridge: the first
    /// `interrupt-map` entry whose child address and pin equal `bdf`'s under
    /// `interrupt-map-mask` (DT spec v0.4 §2.4.3.2). `pin` is as seen at the host bridge; for a
    /// device behind bridges, [`IntxPin::swizzle`] it first.
    pub fn intx_route(&self, bdf: Bdf, pin: IntxPin) -> Option<Irq> {
        let key = [bdf.phys_hi(), 0, 0, pin as u32];
        let mask = self.interrupt_map_mask;
        self.interrupt_map
            .iter()
            .find(|e| {
                let entry = [
                    e.child_addr[0],
                    e.child_addr[1],
                    e.child_addr[2],
                    e.child_pin,
                ];
                (0..4).all(|k| (key[k] ^ entry[k]) & mask[k] == 0)
            })
            .map(|e| e.irq)
    }
}

impl fmt::Display for PcieHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PCIe ECAM {}: {}, buses {}-{}",
            self.path, self.ecam, self.bus_range.0, self.bus_range.1
        )?;
        for w in &self.windows {
            write!(f, ", {w}")?;
        }
        for e in &self.iommu_map {
            write!(
                f,
                ", iommu-map RID {:#x}+{:#x} -> <{:#x}> SID {:#x}",
                e.rid_base, e.length, e.iommu, e.sid_base
            )?;
        }
        if self.iommu_map.is_empty() {
            write!(f, ", no iommu-map")?;
        }
        write!(f, ", {} INTx routes", self.interrupt_map.len())?;
        if let Some(first) = self.interrupt_map.first() {
            write!(f, " (first: {})", first.irq)?;
        }
        if self.dma_coherent {
            write!(f, ", dma-coherent")?;
        }
        Ok(())
    }
}

/// The first enabled generic ECAM host bridge, or `None`.
pub fn discover(tree: &Tree<'_>, gic: &IrqDomain) -> Result<Option<PcieHost>, PlatformError> {
    let Some(node) = tree.find_compatible(&[COMPATIBLE]) else {
        return Ok(None);
    };
    if tree.address_cells(node)? != 3 {
        return Err(tree.malformed(node, "#address-cells", "a PCI bus needs 3 address cells"));
    }
    let bus_range = match tree.cells(node, "bus-range")? {
        None => (0, 255),
        Some(mut c) => match (c.u32(), c.u32(), c.is_empty()) {
            (Some(start), Some(end), true) if start <= end && end <= 255 => {
                (start as u8, end as u8)
            }
            _ => {
                return Err(tree.malformed(
                    node,
                    "bus-range",
                    "expected <start end> with start <= end <= 255",
                ));
            }
        },
    };
    let ecam = tree.required_reg(node)?[0];
    let buses = u64::from(bus_range.1 - bus_range.0) + 1;
    if ecam.size < buses << 20 {
        return Err(tree.malformed(
            node,
            "reg",
            "ECAM region is smaller than 1 MiB per bus in bus-range",
        ));
    }
    let (iommu_map, iommu_map_mask) = iommu_map(tree, node)?;
    let (interrupt_map_mask, interrupt_map) = interrupt_map(tree, node, gic)?;
    Ok(Some(PcieHost {
        path: tree.path(node).into(),
        ecam,
        bus_range,
        domain: tree.u32(node, "linux,pci-domain")?,
        windows: windows(tree, node)?,
        iommu_map,
        iommu_map_mask,
        interrupt_map_mask,
        interrupt_map,
        dma_coherent: tree.has(node, "dma-coherent"),
    }))
}

/// Decodes `ranges`: (PCI address: 3 cells, CPU address: the parent's `#address-cells`, size:
/// the bridge's `#size-cells`) per entry.
fn windows(tree: &Tree<'_>, node: usize) -> Result<Vec<PciWindow>, PlatformError> {
    let parent = tree.parent(node);
    let (pa, sc) = (tree.address_cells(parent)?, tree.size_cells(node)?);
    if pa > 2 || sc > 2 {
        return Err(tree.malformed(node, "ranges", "parent address or size cells above 2"));
    }
    let Some(ranges) = tree.cells(node, "ranges")? else {
        return Ok(Vec::new());
    };
    let entries = ranges
        .entries((3 + pa + sc) as usize)
        .ok_or_else(|| tree.malformed(node, "ranges", "not a whole number of entries"))?;
    let mut out = Vec::new();
    for mut e in entries {
        let (Some(hi), Some(pci_addr), Some(cpu), Some(size)) =
            (e.u32(), e.number(2), e.number(pa), e.number(sc))
        else {
            return Err(tree.malformed(node, "ranges", "truncated"));
        };
        let space = match (hi >> 24) & 3 {
            0 => PciSpace::Config,
            1 => PciSpace::Io,
            2 => PciSpace::Mem32,
            _ => PciSpace::Mem64,
        };
        let cpu_addr = tree.translate(parent, cpu)?;
        if Region::new(cpu_addr, size).is_none() || pci_addr.checked_add(size).is_none() {
            return Err(tree.malformed(
                node,
                "ranges",
                "a window runs past the top of the address space",
            ));
        }
        out.push(PciWindow {
            space,
            prefetchable: hi & (1 << 30) != 0,
            pci_addr,
            cpu_addr,
            size,
        });
    }
    Ok(out)
}

/// Decodes `iommu-map` (4 cells per entry: rid-base, iommu phandle, iommu-base, length) and
/// `iommu-map-mask`. Every phandle must resolve.
fn iommu_map(
    tree: &Tree<'_>,
    node: usize,
) -> Result<(Vec<IommuMapEntry>, Option<u32>), PlatformError> {
    let mask = tree.u32(node, "iommu-map-mask")?;
    let Some(cells) = tree.cells(node, "iommu-map")? else {
        return Ok((Vec::new(), mask));
    };
    let entries = cells
        .entries(4)
        .ok_or_else(|| tree.malformed(node, "iommu-map", "not a whole number of 4-cell entries"))?;
    let mut out = Vec::new();
    for mut e in entries {
        let (Some(rid_base), Some(iommu), Some(sid_base), Some(length)) =
            (e.u32(), e.u32(), e.u32(), e.u32())
        else {
            return Err(tree.malformed(node, "iommu-map", "truncated"));
        };
        tree.resolve(node, "iommu-map", iommu)?;
        out.push(IommuMapEntry {
            rid_base,
            iommu,
            sid_base,
            length,
        });
    }
    Ok((out, mask))
}

/// Decodes `interrupt-map-mask` and `interrupt-map`. Each map entry is: child unit address (the
/// bridge's `#address-cells`, 3), child specifier (the bridge's `#interrupt-cells`, 1: the pin),
/// parent phandle, parent unit address (the parent's `#address-cells`, 0 when absent), parent
/// specifier (the parent's `#interrupt-cells`) — DT spec v0.4 §2.4.3.1. The parent must be the
/// GIC, whose specifiers are decoded to [`Irq`]s.
fn interrupt_map(
    tree: &Tree<'_>,
    node: usize,
    gic: &IrqDomain,
) -> Result<([u32; 4], Vec<InterruptMapEntry>), PlatformError> {
    let mask = match tree.cells(node, "interrupt-map-mask")? {
        None => [u32::MAX; 4],
        Some(mut c) => match (c.u32(), c.u32(), c.u32(), c.u32(), c.is_empty()) {
            (Some(a), Some(b), Some(d), Some(p), true) => [a, b, d, p],
            _ => {
                return Err(tree.malformed(
                    node,
                    "interrupt-map-mask",
                    "expected 4 cells (3 address + pin)",
                ));
            }
        },
    };
    let Some(mut cells) = tree.cells(node, "interrupt-map")? else {
        return Ok((mask, Vec::new()));
    };
    if tree.u32(node, "#interrupt-cells")? != Some(1) {
        return Err(tree.malformed(
            node,
            "#interrupt-cells",
            "a PCI interrupt nexus needs exactly 1 (the pin)",
        ));
    }
    let truncated = || tree.malformed(node, "interrupt-map", "truncated entry");
    let mut out = Vec::new();
    while !cells.is_empty() {
        let mut child = cells.take(4).ok_or_else(truncated)?;
        let (Some(a0), Some(a1), Some(a2), Some(pin)) =
            (child.u32(), child.u32(), child.u32(), child.u32())
        else {
            return Err(truncated());
        };
        let parent = cells.u32().ok_or_else(truncated)?;
        let parent_node = tree.resolve(node, "interrupt-map", parent)?;
        if parent_node != gic.node {
            return Err(tree.malformed(node, "interrupt-map", "an entry's parent is not the GIC"));
        }
        let parent_addr_cells = tree.u32(parent_node, "#address-cells")?.unwrap_or(0);
        cells
            .take(parent_addr_cells as usize)
            .ok_or_else(truncated)?;
        let spec = cells.take(gic.cells()).ok_or_else(truncated)?;
        let irq = gic.decode(tree, node, "interrupt-map", spec)?;
        out.push(InterruptMapEntry {
            child_addr: [a0, a1, a2],
            child_pin: pin,
            parent,
            irq,
        });
    }
    Ok((mask, out))
}
