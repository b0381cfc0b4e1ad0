//! GICv2: distributor with CPU-target bytes and a memory-mapped CPU interface (IHI 0048B).

use super::gicd::{Distributor, Trigger};
use crate::drivers::mmio::MmioBlock;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_structs! {
    #[allow(non_snake_case)]
    CpuInterfaceRegs {
        /// GICC_CTLR: bit 0 enables signalling.
        (0x00 => CTLR: ReadWrite<u32>),
        /// GICC_PMR: priority mask.
        (0x04 => PMR: ReadWrite<u32>),
        /// GICC_BPR: binary point.
        (0x08 => BPR: ReadWrite<u32>),
        /// GICC_IAR: acknowledge.
        (0x0C => IAR: ReadOnly<u32>),
        /// GICC_EOIR: end of interrupt.
        (0x10 => EOIR: WriteOnly<u32>),
        (0x14 => @END),
    }
}

/// A GICv2.
pub struct GicV2 {
    gicd: Distributor,
    gicc: MmioBlock<CpuInterfaceRegs>,
}

impl GicV2 {
    /// # Safety
    /// `gicd` and `gicc` must be the mapped GICv2 distributor and CPU interface, used only
    /// through this driver.
    pub unsafe fn new(gicd: usize, gicc: usize) -> Self {
        // SAFETY: forwarded from the caller.
        unsafe {
            Self {
                gicd: Distributor::new(gicd),
                gicc: MmioBlock::new(gicc),
            }
        }
    }

    /// The distributor.
    pub fn distributor(&self) -> &Distributor {
        &self.gicd
    }

    /// Configure all SPIs and enable forwarding (boot CPU, once).
    pub fn init_distributor(&self) {
        self.gicd.regs().CTLR.set(0);
        // Group 0: QEMU's GICv2 has no security extensions, and GICD_CTLR/GICC_CTLR bit 0
        // enables group 0 only (IHI 0048B §4.3.1, §4.4.1).
        self.gicd.init_spis(0);
        self.gicd.regs().CTLR.set(1);
    }

    /// Enable this CPU's interface.
    pub fn init_cpu(&self) {
        // Banked SGI/PPI registers of this CPU: group, disabled, middle priority.
        let regs = self.gicd.regs();
        regs.IGROUPR[0].set(0);
        regs.ICENABLER[0].set(u32::MAX);
        for word in 0..8 {
            regs.IPRIORITYR[word].set(0xA0A0_A0A0);
        }
        self.gicc.PMR.set(0xFF);
        self.gicc.BPR.set(0);
        self.gicc.CTLR.set(1);
    }

    /// This CPU's interface number as a target mask (ITARGETSR0 reads it, IHI 0048B §4.3.12).
    pub fn this_cpu_mask(&self) -> u8 {
        (self.gicd.regs().ITARGETSR[0].get() & 0xFF) as u8
    }

    /// Configure and enable `intid`, targeting the CPU interfaces in `target_mask`.
    pub fn enable(&self, intid: u32, trigger: Trigger, target_mask: u8) {
        if intid >= 32 {
            let reg = &self.gicd.regs().ITARGETSR[(intid / 4) as usize];
            let shift = (intid % 4) * 8;
            reg.set((reg.get() & !(0xFF << shift)) | ((target_mask as u32) << shift));
        }
        if intid >= 16 {
            self.gicd.set_trigger(intid, trigger);
        }
        self.gicd.set_enabled(intid, true);
    }

    /// Disable `intid`.
    pub fn disable(&self, intid: u32) {
        self.gicd.set_enabled(intid, false);
    }

    /// Acknowledge the highest-priority pending interrupt; returns the raw GICC_IAR (for SGIs
    /// it carries the source CPU, which the EOI must repeat).
    pub fn ack(&self) -> u32 {
        self.gicc.IAR.get()
    }

    /// Signal end of interrupt.
    pub fn eoi(&self, iar: u32) {
        self.gicc.EOIR.set(iar);
    }

    /// Send SGI `intid` to the CPU interfaces in `target_mask`.
    pub fn send_sgi(&self, intid: u32, target_mask: u8) {
        crate::cpu::dsb_ishst();
        self.gicd
            .regs()
            .SGIR
            .set(((target_mask as u32) << 16) | (intid & 0xF));
    }
}
