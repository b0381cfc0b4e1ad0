//! Trace marks: 32-bit values the kernel writes to SMMU_GERROR_IRQ_CFG1 (offset 0x70, the MSI
//! payload of an interrupt this SMMU never signals by MSI), so that QEMU's SMMU trace shows
//! `smmuv3_write_mmio addr: 0x70 val:0x7eb0NNNN` where a flush under test begins and
//! `...0x7ee0NNNN` where it ends; NNNN is the window's sequence number.

/// Byte offset of the register that carries the marks (SMMU_GERROR_IRQ_CFG1, IHI 0070 §6.3.22).
pub const REGISTER_OFFSET: usize = 0x70;

/// A mark: the beginning or the end of the window with this sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mark {
    /// The flush under test begins.
    FlushBegin(u16),
    /// The flush under test has completed.
    FlushEnd(u16),
}

const BEGIN_TAG: u32 = 0x7EB0;
const END_TAG: u32 = 0x7EE0;

impl Mark {
    /// The value written to the register.
    pub const fn value(self) -> u32 {
        match self {
            Self::FlushBegin(seq) => (BEGIN_TAG << 16) | seq as u32,
            Self::FlushEnd(seq) => (END_TAG << 16) | seq as u32,
        }
    }

    /// The mark a value written to the register stands for, if any.
    pub const fn decode(value: u32) -> Option<Self> {
        let seq = (value & 0xFFFF) as u16;
        match value >> 16 {
            BEGIN_TAG => Some(Self::FlushBegin(seq)),
            END_TAG => Some(Self::FlushEnd(seq)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_other_values_are_not_marks() {
        for m in [
            Mark::FlushBegin(0),
            Mark::FlushEnd(7),
            Mark::FlushBegin(0xFFFF),
        ] {
            assert_eq!(Mark::decode(m.value()), Some(m));
        }
        assert_eq!(Mark::FlushBegin(3).value(), 0x7EB0_0003);
        assert_eq!(Mark::decode(0), None);
        assert_eq!(Mark::decode(0x7EB1_0000), None);
    }
}
