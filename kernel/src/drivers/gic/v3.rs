//! GICv3: distributor with affinity routing, one redistributor per CPU, and the system-register
//! CPU interface (IHI 0069H).

use super::gicd::{Distributor, Trigger};
use crate::{cpu, drivers::mmio::MmioBlock, time::Deadline};
use core::arch::asm;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_structs! {
    #[allow(non_snake_case)]
    RedistributorRegs {
        /// GICR_CTLR.
        (0x0000 => CTLR: ReadWrite<u32>),
        (0x0004 => _reserved0),
        /// GICR_TYPER: affinity in [63:32], Last in bit 4, VLPIS in bit 1.
        (0x0008 => TYPER: ReadOnly<u64>),
        (0x0010 => _reserved1),
        /// GICR_WAKER: ProcessorSleep bit 1, ChildrenAsleep bit 2.
        (0x0014 => WAKER: ReadWrite<u32>),
        (0x0018 => _reserved2),
        // SGI_base frame (RD_base + 64 KiB), IHI 0069H §12.10.
        (0x10080 => IGROUPR0: ReadWrite<u32>),
        (0x10084 => _reserved3),
        (0x10100 => ISENABLER0: ReadWrite<u32>),
        (0x10104 => _reserved4),
        (0x10180 => ICENABLER0: ReadWrite<u32>),
        (0x10184 => _reserved5),
        (0x10400 => IPRIORITYR: [ReadWrite<u32>; 8]),
        (0x10420 => _reserved6),
        (0x10C00 => ICFGR0: ReadWrite<u32>),
        (0x10C04 => ICFGR1: ReadWrite<u32>),
        (0x10C08 => _reserved7),
        (0x20000 => @END),
    }
}

/// GICD_CTLR: ARE (bit 4) and group-1 enables. The same bits work for the single-security
/// layout (DS=1: EnableGrp0, EnableGrp1) and the non-secure view (EnableGrp1, EnableGrp1A).
const GICD_CTLR_ARE_GRP1: u32 = (1 << 4) | (1 << 1) | (1 << 0);
const GICD_CTLR_RWP: u32 = 1 << 31;

/// Errors bringing up the GICv3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicV3Error {
    /// No redistributor frame's affinity matches this CPU's MPIDR.
    NoRedistributor {
        /// The CPU's affinity.
        mpidr: u64,
    },
    /// A register write did not complete in time (named register).
    Timeout(&'static str),
}

/// A GICv3.
pub struct GicV3 {
    gicd: Distributor,
    gicr_base: usize,
    gicr_size: usize,
}

impl GicV3 {
    /// # Safety
    /// `gicd` and `[gicr_base, gicr_base + gicr_size)` must be the mapped GICv3 distributor and
    /// redistributor region, used only through this driver.
    pub unsafe fn new(gicd: usize, gicr_base: usize, gicr_size: usize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            gicd: unsafe { Distributor::new(gicd) },
            gicr_base,
            gicr_size,
        }
    }

    /// The distributor.
    pub fn distributor(&self) -> &Distributor {
        &self.gicd
    }

    /// Enable affinity routing and group 1, configure all SPIs (boot CPU, once).
    pub fn init_distributor(&self) -> Result<(), GicV3Error> {
        let regs = self.gicd.regs();
        regs.CTLR.set(0);
        self.wait_rwp()?;
        self.gicd.init_spis(1);
        regs.CTLR.set(GICD_CTLR_ARE_GRP1);
        self.wait_rwp()
    }

    fn wait_rwp(&self) -> Result<(), GicV3Error> {
        let deadline = Deadline::after_ms(100);
        while self.gicd.regs().CTLR.get() & GICD_CTLR_RWP != 0 {
            if deadline.expired() {
                return Err(GicV3Error::Timeout("GICD_CTLR.RWP"));
            }
        }
        Ok(())
    }

    /// This CPU's redistributor: the frame whose GICR_TYPER affinity equals MPIDR's.
    fn redistributor(&self) -> Result<MmioBlock<RedistributorRegs>, GicV3Error> {
        let mpidr = cpu::mpidr_affinity();
        let want = (mpidr & 0xFF_FFFF) | ((mpidr >> 8) & 0xFF00_0000);
        let mut off = 0;
        while off + 0x20000 <= self.gicr_size {
            // SAFETY: the frame lies inside the redistributor region the caller of `new`
            // vouched for.
            let rd: MmioBlock<RedistributorRegs> = unsafe { MmioBlock::new(self.gicr_base + off) };
            let typer = rd.TYPER.get();
            if typer >> 32 == want {
                return Ok(rd);
            }
            if typer & (1 << 4) != 0 {
                break; // Last
            }
            // GICv4 frames (VLPIS) have two extra 64 KiB frames.
            off += if typer & (1 << 1) != 0 {
                0x40000
            } else {
                0x20000
            };
        }
        Err(GicV3Error::NoRedistributor { mpidr })
    }

    /// Wake this CPU's redistributor and enable its system-register CPU interface.
    pub fn init_cpu(&self) -> Result<(), GicV3Error> {
        let rd = self.redistributor()?;
        rd.WAKER.set(rd.WAKER.get() & !(1 << 1));
        let deadline = Deadline::after_ms(100);
        while rd.WAKER.get() & (1 << 2) != 0 {
            if deadline.expired() {
                return Err(GicV3Error::Timeout("GICR_WAKER.ChildrenAsleep"));
            }
        }
        rd.IGROUPR0.set(u32::MAX);
        rd.ICENABLER0.set(u32::MAX);
        for p in rd.IPRIORITYR.iter() {
            p.set(0xA0A0_A0A0);
        }
        // SAFETY: ICC_* system register writes configure this CPU's interface only: system
        // register access on, all priorities unmasked, no preemption grouping, group 1 on.
        unsafe {
            asm!(
                "mrs {t}, icc_sre_el1",
                "orr {t}, {t}, #1",
                "msr icc_sre_el1, {t}",
                "isb",
                "msr icc_pmr_el1, {pmr}",
                "msr icc_bpr1_el1, xzr",
                "msr icc_igrpen1_el1, {one}",
                "isb",
                t = out(reg) _,
                pmr = in(reg) 0xFFu64,
                one = in(reg) 1u64,
                options(nostack)
            );
        }
        Ok(())
    }

    /// Configure and enable `intid`; SPIs are routed to the CPU with affinity `target`.
    pub fn enable(&self, intid: u32, trigger: Trigger, target: u64) -> Result<(), GicV3Error> {
        if intid < 32 {
            let rd = self.redistributor()?;
            if intid >= 16 {
                let shift = (intid - 16) * 2 + 1;
                let v = rd.ICFGR1.get() & !(1 << shift);
                rd.ICFGR1
                    .set(v | (((trigger == Trigger::Edge) as u32) << shift));
            }
            rd.ISENABLER0.set(1 << intid);
        } else {
            let aff = (target & 0xFF_FFFF) | ((target >> 32) & 0xFF) << 32;
            self.gicd.regs().IROUTER[(intid - 32) as usize].set(aff);
            self.gicd.set_trigger(intid, trigger);
            self.gicd.set_enabled(intid, true);
        }
        Ok(())
    }

    /// Disable `intid`.
    pub fn disable(&self, intid: u32) {
        if intid < 32 {
            if let Ok(rd) = self.redistributor() {
                rd.ICENABLER0.set(1 << intid);
            }
        } else {
            self.gicd.set_enabled(intid, false);
        }
    }

    /// Acknowledge the highest-priority pending interrupt (ICC_IAR1_EL1).
    pub fn ack(&self) -> u32 {
        let v: u64;
        // SAFETY: reading IAR1 acknowledges an interrupt on this CPU; no memory is touched.
        unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) v, options(nostack)) };
        (v & 0xFF_FFFF) as u32
    }

    /// Signal end of interrupt (ICC_EOIR1_EL1, EOImode 0: also deactivates).
    pub fn eoi(&self, intid: u32) {
        // SAFETY: EOI of an interrupt this CPU acknowledged; no memory is touched.
        unsafe { asm!("msr icc_eoir1_el1, {}", in(reg) intid as u64, options(nostack)) };
    }

    /// Send SGI `intid` to the CPU with affinity `target` (ICC_SGI1R_EL1, IHI 0069H §12.2.23).
    pub fn send_sgi(&self, intid: u32, target: u64) {
        let aff0 = target & 0xFF;
        let value = ((target >> 32) & 0xFF) << 48
            | ((target >> 16) & 0xFF) << 32
            | (intid as u64 & 0xF) << 24
            | ((target >> 8) & 0xFF) << 16
            | (1 << (aff0 % 16));
        cpu::dsb_ishst();
        // SAFETY: generating an SGI has no memory effects; the DSB above makes earlier stores
        // (e.g. a queued job) visible to the target before it is woken.
        unsafe { asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nostack)) };
    }
}
