//! aarch64 CPU TLB maintenance: the executor behind [`TlbMaintenance`].
//!
//! Every TLBI here is the Inner Shareable form, so the hardware broadcasts it to every CPU of the
//! Inner Shareable domain (Arm ARM DDI 0487 K.a, D8.16 "Translation Lookaside Buffers" and
//! C5.5 "A64 system instructions for TLB maintenance"). The SMMU is *not* reached by these; the
//! generic flush path calls secondary TLBs between [`CpuTlb::tlbi`] and [`CpuTlb::dsb_ish`].
//!
//! `aarch64-cpu` has no TLBI helpers, hence the inline assembly. The FEAT_TLBIRANGE forms are
//! written as their `SYS` encodings so that no assembler extension has to be enabled (they are
//! only issued when ID_AA64ISAR0_EL1.TLB reports them).

use aarch64_cpu::{
    asm::barrier,
    registers::{ID_AA64ISAR0_EL1, ID_AA64MMFR0_EL1, TTBR0_EL1},
};
use tock_registers::interfaces::{Readable, Writeable};

use crate::mm::{
    asid::asid_bits_from_mmfr0,
    tlb::{TlbFeatures, TlbMaintenance, TlbiKind, TlbiOp},
};

/// The CPU's TLB features (from ID_AA64ISAR0_EL1).
pub fn detect_features() -> TlbFeatures {
    TlbFeatures::from_isar0(ID_AA64ISAR0_EL1.get())
}

/// ASID width supported by the CPU, 8 or 16 (from ID_AA64MMFR0_EL1.ASIDBits). With 16, the MMU
/// setup must also set TCR_EL1.AS.
pub fn cpu_asid_bits() -> u32 {
    asid_bits_from_mmfr0(ID_AA64MMFR0_EL1.get())
}

/// `DMB ISHST`: orders earlier stores (a new table's contents) before later ones (the descriptor
/// linking it) for every observer in the Inner Shareable domain, table walkers included.
pub fn dmb_ishst() {
    barrier::dmb(barrier::ISHST);
}

/// The CPU executor. Stateless apart from the features read once at construction.
#[derive(Debug, Clone, Copy)]
pub struct CpuTlb {
    features: TlbFeatures,
}

impl CpuTlb {
    /// Reads the CPU's features. All CPUs are assumed identical.
    pub fn new() -> Self {
        Self {
            features: detect_features(),
        }
    }
}

impl Default for CpuTlb {
    fn default() -> Self {
        Self::new()
    }
}

impl TlbMaintenance for CpuTlb {
    fn features(&self) -> TlbFeatures {
        self.features
    }

    fn dsb_ishst(&self) {
        barrier::dsb(barrier::ISHST);
    }

    fn tlbi(&self, op: TlbiOp) {
        let x = op.operand;
        // SAFETY: TLB invalidation only removes cached translations; it cannot make memory
        // accessible that the tables do not map. The range forms are issued only when the plan
        // was made with FEAT_TLBIRANGE reported by this CPU. No registers other than the operand
        // are used, no memory is accessed by the instruction itself.
        unsafe {
            match op.kind {
                TlbiKind::Vale1is => {
                    core::arch::asm!("tlbi vale1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                TlbiKind::Vae1is => {
                    core::arch::asm!("tlbi vae1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                TlbiKind::Aside1is => {
                    core::arch::asm!("tlbi aside1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                TlbiKind::Vaale1is => {
                    core::arch::asm!("tlbi vaale1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                TlbiKind::Vaae1is => {
                    core::arch::asm!("tlbi vaae1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                TlbiKind::Vmalle1is => {
                    core::arch::asm!("tlbi vmalle1is", options(nostack, preserves_flags))
                }
                // TLBI RVAE1IS = SYS #0, C8, C2, #1
                TlbiKind::Rvae1is => {
                    core::arch::asm!("sys #0, c8, c2, #1, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                // TLBI RVALE1IS = SYS #0, C8, C2, #5
                TlbiKind::Rvale1is => {
                    core::arch::asm!("sys #0, c8, c2, #5, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                // TLBI RVAAE1IS = SYS #0, C8, C2, #3
                TlbiKind::Rvaae1is => {
                    core::arch::asm!("sys #0, c8, c2, #3, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
                // TLBI RVAALE1IS = SYS #0, C8, C2, #7
                TlbiKind::Rvaale1is => {
                    core::arch::asm!("sys #0, c8, c2, #7, {x}", x = in(reg) x, options(nostack, preserves_flags))
                }
            }
        }
    }

    fn dsb_ish(&self) {
        barrier::dsb(barrier::ISH);
    }

    fn isb(&self) {
        barrier::isb(barrier::SY);
    }

    fn flush_all_cpu_tlbs(&self) {
        barrier::dsb(barrier::ISHST);
        // SAFETY: invalidating every EL1&0 TLB entry only forces re-walks of the live tables.
        unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
        barrier::dsb(barrier::ISH);
        barrier::isb(barrier::SY);
    }

    unsafe fn write_ttbr0(&self, value: u64) {
        // One register write changes the table base and the ASID together (TCR_EL1.A1 = 0).
        TTBR0_EL1.set(value);
        barrier::isb(barrier::SY);
    }
}
