//! The GIC: its register frames, and the decoding of every other device's `interrupts` against
//! it.
//!
//! The GIC is discovered first because it is the interrupt parent of everything else: a device's
//! `interrupts` cells mean nothing until the parent's `#interrupt-cells` is known, and a specifier
//! can only be decoded as (type, number, flags) once the parent is known to be this GIC.
//!
//! Bindings: `Documentation/devicetree/bindings/interrupt-controller/arm,gic-v3.yaml` (`reg` =
//! GICD, then `#redistributor-regions` GICR regions (default 1), then optional GICC/GICH/GICV;
//! ITS children `arm,gic-v3-its`) and `arm,gic.yaml` (`reg` = GICD, GICC, optional GICH/GICV; v2m
//! frames as children `arm,gic-v2m-frame`).

use super::{PlatformError, cells::Cells, irq::Irq, region::Region, tree::Tree};
use alloc::{string::String, vec::Vec};
use core::fmt;

const V3_COMPATIBLE: &str = "arm,gic-v3";
const V2_COMPATIBLES: &[&str] = &["arm,cortex-a15-gic", "arm,gic-400"];

/// The interrupt controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    /// Node path, e.g. `/intc@8000000`.
    pub path: String,
    /// The GIC's phandle, which `interrupt-parent` and `interrupt-map` entries point at.
    pub phandle: Option<u32>,
    /// `#interrupt-cells` (3, or 4 on GICv3 with PPI partitions): cells per interrupt specifier.
    pub interrupt_cells: u32,
    /// `#address-cells` of the GIC node, 0 when absent: the width of the "parent unit address"
    /// in an `interrupt-map` entry that targets the GIC (DT spec v0.4 §2.4.3.1). QEMU gives 2.
    pub address_cells: u32,
    /// Register frames, by architecture version.
    pub regs: GicRegs,
}

/// The GIC's register frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GicRegs {
    /// GICv2 (`arm,cortex-a15-gic`, `arm,gic-400`).
    V2 {
        /// Distributor.
        gicd: Region,
        /// CPU interface.
        gicc: Region,
        /// First enabled GICv2m MSI frame, if any.
        v2m: Option<Region>,
    },
    /// GICv3 (`arm,gic-v3`).
    V3 {
        /// Distributor.
        gicd: Region,
        /// Redistributor regions (`#redistributor-regions` of them, each holding the
        /// redistributors of several CPUs back to back).
        gicr: Vec<Region>,
        /// First enabled ITS, if any.
        its: Option<Region>,
    },
}

impl Gic {
    /// Architecture version: 2 or 3.
    pub fn version(&self) -> u8 {
        match self.regs {
            GicRegs::V2 { .. } => 2,
            GicRegs::V3 { .. } => 3,
        }
    }

    /// The distributor frame, common to both versions.
    pub fn gicd(&self) -> Region {
        match self.regs {
            GicRegs::V2 { gicd, .. } | GicRegs::V3 { gicd, .. } => gicd,
        }
    }
}

impl fmt::Display for Gic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GICv{} {}: GICD {}",
            self.version(),
            self.path,
            self.gicd()
        )?;
        match &self.regs {
            GicRegs::V2 { gicc, v2m, .. } => {
                write!(f, ", GICC {gicc}")?;
                if let Some(v2m) = v2m {
                    write!(f, ", v2m {v2m}")?;
                }
            }
            GicRegs::V3 { gicr, its, .. } => {
                for r in gicr {
                    write!(f, ", GICR {r}")?;
                }
                if let Some(its) = its {
                    write!(f, ", ITS {its}")?;
                }
            }
        }
        write!(f, ", #interrupt-cells {}", self.interrupt_cells)
    }
}

/// The GIC as an interrupt parent: what decoding another node's interrupts needs.
pub struct IrqDomain {
    /// Tree index of the GIC node.
    pub node: usize,
    cells: u32,
    extended: bool,
}

/// Finds the GIC: GICv3 first, then GICv2.
pub fn discover(tree: &Tree<'_>) -> Result<(Gic, IrqDomain), PlatformError> {
    let (node, v3) = match tree.find_compatible(&[V3_COMPATIBLE]) {
        Some(n) => (n, true),
        None => (
            tree.find_compatible(V2_COMPATIBLES)
                .ok_or(PlatformError::Missing(super::missing::GIC))?,
            false,
        ),
    };
    if !tree.has(node, "interrupt-controller") {
        return Err(tree.missing(node, "interrupt-controller"));
    }
    let interrupt_cells = tree
        .u32(node, "#interrupt-cells")?
        .ok_or_else(|| tree.missing(node, "#interrupt-cells"))?;
    if interrupt_cells < 3 {
        return Err(tree.malformed(
            node,
            "#interrupt-cells",
            "below 3: cannot hold (type, number, flags)",
        ));
    }
    let reg = tree.required_reg(node)?;
    let child = |compatible: &str| -> Result<Option<Region>, PlatformError> {
        match tree
            .children(node)
            .find(|&c| tree.is_enabled(c) && tree.is_compatible(c, compatible))
        {
            Some(c) => Ok(Some(tree.required_reg(c)?[0])),
            None => Ok(None),
        }
    };
    let regs = if v3 {
        let n = tree.u32(node, "#redistributor-regions")?.unwrap_or(1) as usize;
        if n == 0 || reg.len() < 1 + n {
            return Err(tree.malformed(
                node,
                "reg",
                "fewer entries than GICD + #redistributor-regions",
            ));
        }
        GicRegs::V3 {
            gicd: reg[0],
            gicr: reg[1..=n].to_vec(),
            its: child("arm,gic-v3-its")?,
        }
    } else {
        if reg.len() < 2 {
            return Err(tree.malformed(node, "reg", "GICv2 needs GICD and GICC entries"));
        }
        GicRegs::V2 {
            gicd: reg[0],
            gicc: reg[1],
            v2m: child("arm,gic-v2m-frame")?,
        }
    };
    let gic = Gic {
        path: tree.path(node).into(),
        phandle: tree.phandle(node)?,
        interrupt_cells,
        address_cells: tree.u32(node, "#address-cells")?.unwrap_or(0),
        regs,
    };
    Ok((
        gic,
        IrqDomain {
            node,
            cells: interrupt_cells,
            extended: v3,
        },
    ))
}

impl IrqDomain {
    /// Decodes one specifier read from `property` of node `i`; skips cells past the third.
    pub fn decode(
        &self,
        tree: &Tree<'_>,
        i: usize,
        property: &'static str,
        mut spec: Cells<'_>,
    ) -> Result<Irq, PlatformError> {
        let (Some(kind), Some(number), Some(flags)) = (spec.u32(), spec.u32(), spec.u32()) else {
            return Err(tree.malformed(i, property, "truncated GIC interrupt specifier"));
        };
        Irq::from_gic_cells([kind, number, flags], self.extended)
            .map_err(|why| tree.malformed(i, property, why))
    }

    /// Width of one specifier, in cells.
    pub fn cells(&self) -> usize {
        self.cells as usize
    }

    /// All interrupts of node `i`, in order: from `interrupts-extended` if present (DT spec v0.4
    /// §2.4.1.2: each entry is a controller phandle then its specifier), else from `interrupts`
    /// against the node's interrupt parent. Every interrupt must go to this GIC. No property is an
    /// empty list.
    pub fn irqs(&self, tree: &Tree<'_>, i: usize) -> Result<Vec<Irq>, PlatformError> {
        const EXT: &str = "interrupts-extended";
        if let Some(mut cells) = tree.cells(i, EXT)? {
            let mut out = Vec::new();
            while let Some(phandle) = cells.u32() {
                if tree.resolve(i, EXT, phandle)? != self.node {
                    return Err(tree.malformed(
                        i,
                        EXT,
                        "an interrupt goes to a controller other than the GIC",
                    ));
                }
                let spec = cells
                    .take(self.cells())
                    .ok_or_else(|| tree.malformed(i, EXT, "truncated GIC interrupt specifier"))?;
                out.push(self.decode(tree, i, EXT, spec)?);
            }
            return Ok(out);
        }
        let Some(cells) = tree.cells(i, "interrupts")? else {
            return Ok(Vec::new());
        };
        if tree.interrupt_parent(i)? != self.node {
            return Err(tree.malformed(i, "interrupts", "the interrupt parent is not the GIC"));
        }
        cells
            .entries(self.cells())
            .ok_or_else(|| tree.malformed(i, "interrupts", "not a whole number of GIC specifiers"))?
            .map(|spec| self.decode(tree, i, "interrupts", spec))
            .collect()
    }

    /// The interrupts of node `i` paired with their `interrupt-names` (DT spec v0.4 §2.4.1;
    /// the names may come in any order). `None` when the node has no `interrupt-names`. The
    /// counts must match and names must not repeat.
    pub fn named_irqs<'a>(
        &self,
        tree: &Tree<'a>,
        i: usize,
    ) -> Result<Option<Vec<(&'a str, Irq)>>, PlatformError> {
        let Some(names) = tree.strings(i, "interrupt-names")? else {
            return Ok(None);
        };
        let irqs = self.irqs(tree, i)?;
        if names.len() != irqs.len() {
            return Err(tree.malformed(
                i,
                "interrupt-names",
                "count differs from the number of interrupts",
            ));
        }
        if names
            .iter()
            .enumerate()
            .any(|(k, n)| names[..k].contains(n))
        {
            return Err(tree.malformed(i, "interrupt-names", "a name appears twice"));
        }
        Ok(Some(names.into_iter().zip(irqs).collect()))
    }
}
