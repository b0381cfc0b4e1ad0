//! The GIC Distributor, shared by GICv2 and GICv3 (IHI 0069H §12.9, IHI 0048B §4.3).

use crate::drivers::mmio::MmioBlock;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_structs! {
    #[allow(non_snake_case)]
    pub DistributorRegs {
        /// Control (GICD_CTLR).
        (0x0000 => pub CTLR: ReadWrite<u32>),
        /// Type: ITLinesNumber in [4:0] (GICD_TYPER).
        (0x0004 => pub TYPER: ReadOnly<u32>),
        (0x0008 => _reserved0),
        /// Group of each interrupt, one bit each (GICD_IGROUPRn).
        (0x0080 => pub IGROUPR: [ReadWrite<u32>; 32]),
        /// Set-enable, one bit each (GICD_ISENABLERn).
        (0x0100 => pub ISENABLER: [ReadWrite<u32>; 32]),
        /// Clear-enable, one bit each (GICD_ICENABLERn).
        (0x0180 => pub ICENABLER: [ReadWrite<u32>; 32]),
        /// Set-pending (GICD_ISPENDRn).
        (0x0200 => pub ISPENDR: [ReadWrite<u32>; 32]),
        /// Clear-pending (GICD_ICPENDRn).
        (0x0280 => pub ICPENDR: [ReadWrite<u32>; 32]),
        (0x0300 => _reserved1),
        /// Priority, one byte each (GICD_IPRIORITYRn).
        (0x0400 => pub IPRIORITYR: [ReadWrite<u32>; 255]),
        (0x07FC => _reserved2),
        /// GICv2 CPU targets, one byte each (GICD_ITARGETSRn).
        (0x0800 => pub ITARGETSR: [ReadWrite<u32>; 255]),
        (0x0BFC => _reserved3),
        /// Edge/level configuration, two bits each (GICD_ICFGRn).
        (0x0C00 => pub ICFGR: [ReadWrite<u32>; 64]),
        (0x0D00 => _reserved4),
        /// GICv2 software-generated interrupts (GICD_SGIR).
        (0x0F00 => pub SGIR: WriteOnly<u32>),
        (0x0F04 => _reserved5),
        /// GICv3 SPI routing, one 64-bit affinity per INTID 32..1019 (GICD_IROUTERn).
        (0x6100 => pub IROUTER: [ReadWrite<u64>; 988]),
        (0x7FE0 => _reserved6),
        (0x10000 => @END),
    }
}

/// Trigger configuration of an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Level-sensitive (e.g. PCI INTx).
    Level,
    /// Edge-triggered (e.g. the SMMU's pulsed lines).
    Edge,
}

/// A GIC Distributor.
pub struct Distributor {
    regs: MmioBlock<DistributorRegs>,
}

impl Distributor {
    /// # Safety
    /// `base` must be the mapped GICD, used only through this driver.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            regs: unsafe { MmioBlock::new(base) },
        }
    }

    /// The register block.
    pub fn regs(&self) -> &DistributorRegs {
        &self.regs
    }

    /// Number of interrupt IDs the distributor implements (32 × (ITLinesNumber + 1)).
    pub fn num_irqs(&self) -> u32 {
        (32 * ((self.regs.TYPER.get() & 0x1F) + 1)).min(1020)
    }

    /// Put every SPI in `group` (the group the CPU interface signals as IRQ: group 1 for
    /// GICv3's system-register interface, group 0 for a GICv2 without security extensions),
    /// disabled, at a middle priority.
    pub fn init_spis(&self, group: u8) {
        let groups = if group == 1 { u32::MAX } else { 0 };
        for word in 1..(self.num_irqs() / 32) as usize {
            self.regs.ICENABLER[word].set(u32::MAX);
            self.regs.ICPENDR[word].set(u32::MAX);
            self.regs.IGROUPR[word].set(groups);
        }
        for word in 8..(self.num_irqs() / 4) as usize {
            self.regs.IPRIORITYR[word].set(0xA0A0_A0A0);
        }
    }

    /// Configure the trigger of SPI `intid` (IHI 0069H §12.9.9: bit 1 of each field = edge).
    pub fn set_trigger(&self, intid: u32, trigger: Trigger) {
        let reg = &self.regs.ICFGR[(intid / 16) as usize];
        let shift = (intid % 16) * 2 + 1;
        let v = reg.get() & !(1 << shift);
        reg.set(v | (((trigger == Trigger::Edge) as u32) << shift));
    }

    /// Enable or disable `intid` at the distributor.
    pub fn set_enabled(&self, intid: u32, enabled: bool) {
        let bit = 1 << (intid % 32);
        let word = (intid / 32) as usize;
        if enabled {
            self.regs.ISENABLER[word].set(bit);
        } else {
            self.regs.ICENABLER[word].set(bit);
        }
    }

    /// Whether `intid` is pending.
    pub fn is_pending(&self, intid: u32) -> bool {
        self.regs.ISPENDR[(intid / 32) as usize].get() & (1 << (intid % 32)) != 0
    }
}
