//! GIC interrupt specifiers: the device-tree encoding and the INTID it names.
//!
//! The DT names an interrupt relative to its type (SPI 1, PPI 14); the GIC's registers and the
//! acknowledge register speak INTIDs (33, 30). Mixing the two up is the classic off-by-32 bug, so
//! [`Irq`] carries both, computed once here.
//!
//! Encoding, from the GIC bindings (`arm,gic.yaml` and `arm,gic-v3.yaml` in
//! `Documentation/devicetree/bindings/interrupt-controller/`), three cells per interrupt:
//! - cell 0, type: 0 = SPI, 1 = PPI; GICv3 adds 2 = extended SPI, 3 = extended PPI;
//! - cell 1, number within the type: SPI 0–987, PPI 0–15, extended SPI 0–1023, extended PPI 0–63;
//! - cell 2, flags: bits [3:0] trigger (1 = edge rising, 2 = edge falling, 4 = level high,
//!   8 = level low); bits [15:8] a PPI CPU mask on GICv2.
//!
//! INTID ranges (GICv3 architecture specification IHI 0069, §2.2 "INTIDs"): PPI 16–31, SPI
//! 32–1019, extended PPI 1056–1119, extended SPI 4096–5119.

use core::fmt;

/// Interrupt type, cell 0 of a GIC specifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    /// Shared peripheral interrupt (0).
    Spi,
    /// Private peripheral interrupt (1).
    Ppi,
    /// GICv3.1 extended SPI (2).
    ExtendedSpi,
    /// GICv3.1 extended PPI (3).
    ExtendedPpi,
}

impl IrqKind {
    /// (DT type code, largest DT number, INTID of number 0).
    const fn layout(self) -> (u32, u32, u32) {
        match self {
            Self::Spi => (0, 987, 32),
            Self::Ppi => (1, 15, 16),
            Self::ExtendedSpi => (2, 1023, 4096),
            Self::ExtendedPpi => (3, 63, 1056),
        }
    }

    /// The DT type code (cell 0).
    pub const fn dt_code(self) -> u32 {
        self.layout().0
    }

    /// The INTID of DT number `n` of this type.
    pub const fn intid(self, n: u32) -> u32 {
        self.layout().2 + n
    }
}

/// Trigger type, bits [3:0] of cell 2 of a GIC specifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Low-to-high edge (1).
    EdgeRising,
    /// High-to-low edge (2; the GIC binding allows it only for PPIs).
    EdgeFalling,
    /// Active-high level (4).
    LevelHigh,
    /// Active-low level (8; PPIs only).
    LevelLow,
}

impl Trigger {
    /// Whether the interrupt is edge-triggered (GICD_ICFGR bit = 1) rather than level-sensitive.
    pub const fn is_edge(self) -> bool {
        matches!(self, Self::EdgeRising | Self::EdgeFalling)
    }

    /// The DT flags value (bits [3:0] of cell 2).
    pub const fn dt_flags(self) -> u32 {
        match self {
            Self::EdgeRising => 1,
            Self::EdgeFalling => 2,
            Self::LevelHigh => 4,
            Self::LevelLow => 8,
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EdgeRising => "edge-rising",
            Self::EdgeFalling => "edge-falling",
            Self::LevelHigh => "level-high",
            Self::LevelLow => "level-low",
        })
    }
}

/// One GIC interrupt: the DT encoding (`kind` + `number`) and the INTID it denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// Type from the DT (cell 0).
    pub kind: IrqKind,
    /// Number within the type, as written in the DT (cell 1): SPI 1 is `number = 1`.
    pub number: u32,
    /// The GIC INTID: SPI n is 32 + n, PPI n is 16 + n.
    pub intid: u32,
    /// Trigger type (cell 2, bits [3:0]).
    pub trigger: Trigger,
}

impl Irq {
    /// SPI `n`.
    pub const fn spi(n: u32, trigger: Trigger) -> Self {
        Self {
            kind: IrqKind::Spi,
            number: n,
            intid: IrqKind::Spi.intid(n),
            trigger,
        }
    }

    /// PPI `n`.
    pub const fn ppi(n: u32, trigger: Trigger) -> Self {
        Self {
            kind: IrqKind::Ppi,
            number: n,
            intid: IrqKind::Ppi.intid(n),
            trigger,
        }
    }

    /// Decodes the first three cells of a GIC interrupt specifier (any further cells, such as the
    /// GICv3 PPI-partition phandle, are the caller's to skip). `extended` allows the GICv3.1
    /// extended types. The error says which cell is wrong.
    pub fn from_gic_cells(cells: [u32; 3], extended: bool) -> Result<Self, &'static str> {
        let [kind, number, flags] = cells;
        let kind = match kind {
            0 => IrqKind::Spi,
            1 => IrqKind::Ppi,
            2 if extended => IrqKind::ExtendedSpi,
            3 if extended => IrqKind::ExtendedPpi,
            _ => return Err("unknown GIC interrupt type (cell 0)"),
        };
        if number > kind.layout().1 {
            return Err("GIC interrupt number out of range for its type (cell 1)");
        }
        let trigger = match flags & 0xf {
            1 => Trigger::EdgeRising,
            2 => Trigger::EdgeFalling,
            4 => Trigger::LevelHigh,
            8 => Trigger::LevelLow,
            _ => return Err("GIC trigger flags are not exactly one of 1, 2, 4, 8 (cell 2)"),
        };
        Ok(Self {
            kind,
            number,
            intid: kind.intid(number),
            trigger,
        })
    }
}

impl fmt::Display for Irq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IrqKind::Spi => "SPI",
            IrqKind::Ppi => "PPI",
            IrqKind::ExtendedSpi => "ESPI",
            IrqKind::ExtendedPpi => "EPPI",
        };
        write!(
            f,
            "{kind} {} (INTID {}, {})",
            self.number, self.intid, self.trigger
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_and_ppi_intids() {
        let spi = Irq::from_gic_cells([0, 1, 4], false).unwrap();
        assert_eq!(spi, Irq::spi(1, Trigger::LevelHigh));
        assert_eq!(spi.intid, 33);
        let ppi = Irq::from_gic_cells([1, 14, 0xf04], false).unwrap();
        assert_eq!((ppi.kind, ppi.number, ppi.intid), (IrqKind::Ppi, 14, 30));
        assert_eq!(
            ppi.trigger,
            Trigger::LevelHigh,
            "the GICv2 CPU mask in bits [15:8] is not trigger"
        );
        assert_eq!(Irq::from_gic_cells([2, 0, 1], true).unwrap().intid, 4096);
        assert_eq!(Irq::from_gic_cells([3, 63, 1], true).unwrap().intid, 1119);
    }

    #[test]
    fn rejects_bad_cells() {
        assert!(
            Irq::from_gic_cells([2, 0, 1], false).is_err(),
            "extended SPI needs GICv3"
        );
        assert!(Irq::from_gic_cells([4, 0, 1], true).is_err());
        assert!(Irq::from_gic_cells([0, 988, 4], false).is_err());
        assert!(Irq::from_gic_cells([1, 16, 4], false).is_err());
        assert!(Irq::from_gic_cells([0, 3, 0], false).is_err(), "no trigger");
        assert!(
            Irq::from_gic_cells([0, 3, 5], false).is_err(),
            "two triggers"
        );
    }

    #[test]
    fn display_names_both_encodings() {
        let irq = Irq::spi(74, Trigger::EdgeRising);
        assert_eq!(alloc::format!("{irq}"), "SPI 74 (INTID 106, edge-rising)");
        assert!(irq.trigger.is_edge() && !Trigger::LevelLow.is_edge());
        assert_eq!(Trigger::LevelLow.dt_flags(), 8);
        assert_eq!(IrqKind::Ppi.dt_code(), 1);
    }
}
