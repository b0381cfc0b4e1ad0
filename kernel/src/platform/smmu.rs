//! The SMMUv3, found by `compatible = "arm,smmu-v3"` and never by node name.
//!
//! QEMU 7.2 calls the node `smmuv3@9050000` and lists its interrupts as eventq, priq, cmdq-sync,
//! gerror; a later QEMU patch renames it `iommu@…` and reorders the interrupts. So the node is
//! matched on `compatible` and each interrupt on its `interrupt-names` entry, never by position
//! (binding: `Documentation/devicetree/bindings/iommu/arm,smmu-v3.yaml`: names from `eventq`,
//! `gerror`, `priq`, `cmdq-sync` in any subset, or `combined` alone for one wired line).

use super::{PlatformError, gic::IrqDomain, irq::Irq, region::Region, tree::Tree};
use alloc::string::String;
use core::fmt;

/// The `compatible` an SMMUv3 node carries.
pub const COMPATIBLE: &str = "arm,smmu-v3";

/// The SMMU's wired interrupts, each present only if the DT names it. An SMMU that signals
/// through MSIs, or whose queue is polled, may have none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuIrqs {
    /// Event queue not empty (`eventq`).
    pub eventq: Option<Irq>,
    /// PRI queue not empty (`priq`).
    pub priq: Option<Irq>,
    /// CMD_SYNC completion (`cmdq-sync`).
    pub cmdq_sync: Option<Irq>,
    /// Global error (`gerror`).
    pub gerror: Option<Irq>,
    /// One line for all of the above (`combined`), which excludes the others.
    pub combined: Option<Irq>,
}

/// An SMMUv3 (Arm IHI 0070).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuV3 {
    /// Node path, e.g. `/smmuv3@9050000`.
    pub path: String,
    /// Register frame (page 0 and page 1: 128 KiB on QEMU).
    pub reg: Region,
    /// `#iommu-cells`: 1, the StreamID.
    pub iommu_cells: u32,
    /// `dma-coherent`: the SMMU's table and queue walks snoop the CPU caches.
    pub dma_coherent: bool,
    /// The phandle that masters' `iommus` and PCIe `iommu-map` entries point at.
    pub phandle: Option<u32>,
    /// Wired interrupts by name.
    pub irqs: SmmuIrqs,
}

/// The first enabled SMMUv3, or `None` when the machine has none.
pub fn discover(tree: &Tree<'_>, gic: &IrqDomain) -> Result<Option<SmmuV3>, PlatformError> {
    let Some(node) = tree.find_compatible(&[COMPATIBLE]) else {
        return Ok(None);
    };
    let iommu_cells = tree
        .u32(node, "#iommu-cells")?
        .ok_or_else(|| tree.missing(node, "#iommu-cells"))?;
    if iommu_cells != 1 {
        return Err(tree.malformed(node, "#iommu-cells", "must be 1 (the StreamID)"));
    }
    let mut irqs = SmmuIrqs::default();
    match gic.named_irqs(tree, node)? {
        None if !gic.irqs(tree, node)?.is_empty() => {
            return Err(tree.missing(node, "interrupt-names"));
        }
        None => {}
        Some(named) => {
            for (name, irq) in named {
                let slot = match name {
                    "eventq" => &mut irqs.eventq,
                    "priq" => &mut irqs.priq,
                    "cmdq-sync" => &mut irqs.cmdq_sync,
                    "gerror" => &mut irqs.gerror,
                    "combined" => &mut irqs.combined,
                    other => {
                        log::warn!(
                            "{}: ignoring unknown SMMU interrupt {other:?}",
                            tree.path(node)
                        );
                        continue;
                    }
                };
                *slot = Some(irq);
            }
            let separate = [irqs.eventq, irqs.priq, irqs.cmdq_sync, irqs.gerror];
            if irqs.combined.is_some() && separate.iter().any(Option::is_some) {
                return Err(tree.malformed(
                    node,
                    "interrupt-names",
                    "\"combined\" must be the only interrupt",
                ));
            }
        }
    }
    Ok(Some(SmmuV3 {
        path: tree.path(node).into(),
        reg: tree.required_reg(node)?[0],
        iommu_cells,
        dma_coherent: tree.has(node, "dma-coherent"),
        phandle: tree.phandle(node)?,
        irqs,
    }))
}

impl fmt::Display for SmmuV3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMUv3 {}: {}", self.path, self.reg)?;
        let named = [
            ("eventq", self.irqs.eventq),
            ("priq", self.irqs.priq),
            ("cmdq-sync", self.irqs.cmdq_sync),
            ("gerror", self.irqs.gerror),
            ("combined", self.irqs.combined),
        ];
        for (name, irq) in named {
            if let Some(irq) = irq {
                write!(f, ", {name} {irq}")?;
            }
        }
        if let Some(phandle) = self.phandle {
            write!(f, ", phandle {phandle:#x}")?;
        }
        write!(f, ", #iommu-cells {}", self.iommu_cells)?;
        if self.dma_coherent {
            write!(f, ", dma-coherent")?;
        }
        Ok(())
    }
}
