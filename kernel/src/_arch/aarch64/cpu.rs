//! AArch64 CPU primitives: barriers, idle, identification, the generic timer's counter, and the
//! firmware calls (PSCI over SMC/HVC, semihosting).

use aarch64_cpu::{
    asm::{self, barrier},
    registers::*,
};
use core::arch::asm;
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

/// Data synchronisation barrier, inner shareable (Arm ARM B2.3.12).
#[inline(always)]
pub fn dsb_ish() {
    barrier::dsb(barrier::ISH);
}

/// Data synchronisation barrier for stores only, inner shareable.
#[inline(always)]
pub fn dsb_ishst() {
    barrier::dsb(barrier::ISHST);
}

/// Full-system data synchronisation barrier (orders device accesses too).
#[inline(always)]
pub fn dsb_sy() {
    barrier::dsb(barrier::SY);
}

/// Instruction synchronisation barrier.
#[inline(always)]
pub fn isb() {
    barrier::isb(barrier::SY);
}

/// Wait for an interrupt. Wakes on a pending interrupt even while PSTATE.I masks it.
#[inline(always)]
pub fn wait_for_interrupt() {
    asm::wfi();
}

/// Wait for an event (SEV from another CPU, or an interrupt).
#[inline(always)]
pub fn wait_for_event() {
    asm::wfe();
}

/// Signal an event to all CPUs, waking those in WFE.
#[inline(always)]
pub fn send_event() {
    asm::sev();
}

/// Spin-loop hint.
#[inline(always)]
pub fn relax() {
    core::hint::spin_loop();
}

/// The affinity fields of this CPU's MPIDR_EL1 (Aff3:Aff2:Aff1:Aff0), as used by PSCI and GIC.
pub fn mpidr_affinity() -> u64 {
    MPIDR_EL1.get() & 0xFF_00FF_FFFF
}

/// Frequency of the system counter in Hz (CNTFRQ_EL0).
pub fn counter_frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// The virtual count (CNTVCT_EL0), ordered after earlier instructions by an ISB.
pub fn counter() -> u64 {
    isb();
    CNTVCT_EL0.get()
}

/// Mask IRQs on this CPU and return whether they were unmasked before.
pub fn irq_save() -> bool {
    let was_enabled = !DAIF.is_set(DAIF::I);
    DAIF.write(DAIF::D::Masked + DAIF::A::Masked + DAIF::I::Masked + DAIF::F::Masked);
    was_enabled
}

/// Restore the IRQ mask state returned by [`irq_save`].
pub fn irq_restore(was_enabled: bool) {
    if was_enabled {
        irq_enable();
    }
}

/// Unmask IRQs (and SErrors) on this CPU.
pub fn irq_enable() {
    DAIF.write(DAIF::D::Masked + DAIF::A::Unmasked + DAIF::I::Unmasked + DAIF::F::Masked);
}

/// Whether IRQs are currently masked on this CPU.
pub fn irqs_masked() -> bool {
    DAIF.is_set(DAIF::I)
}

/// How firmware calls reach PSCI (from the DT `psci` node's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0` (QEMU when the kernel starts at EL1).
    Hvc,
    /// `smc #0` (QEMU with `virtualization=on`).
    Smc,
}

/// Issue an SMC Calling Convention call with up to three arguments and return x0.
pub fn firmware_call(conduit: Conduit, function: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut x0 = function as u64;
    // SAFETY: an SMCCC call clobbers at most x0-x17 (SMCCC v1.1+ preserves x4-x17 but older
    // firmware may not); all are declared clobbered. It does not touch our memory except as
    // the PSCI function documents (CPU_ON reads nothing from memory).
    unsafe {
        match conduit {
            Conduit::Hvc => {
                asm!("hvc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                options(nostack))
            }
            Conduit::Smc => {
                asm!("smc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _,
                inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                options(nostack))
            }
        }
    }
    x0 as i64
}

/// Semihosting `SYS_EXIT` (0x18) with `ADP_Stopped_ApplicationExit`: QEMU exits with `code`.
///
/// Needs QEMU's `-semihosting`; without it the `hlt` traps as an undefined instruction, which
/// the exception handler reports (it then falls back to PSCI `SYSTEM_OFF`).
pub fn semihosting_exit(code: u32) {
    let block: [u64; 2] = [0x20026, code as u64];
    // SAFETY: the semihosting call reads the two-word parameter block, which lives on our stack
    // for the duration of the call; it writes only x0.
    unsafe {
        asm!("hlt #0xF000", inout("x0") 0x18u64 => _, in("x1") block.as_ptr(), options(nostack));
    }
}

/// The CPU's physical address size in bits, from ID_AA64MMFR0_EL1.PARange (Arm ARM D19.2.64:
/// 0b0000 = 32 bits ... 0b0101 = 48, 0b0110 = 52).
pub fn pa_range_bits() -> u8 {
    match ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange) {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// The current exception level (1 after the boot stub).
pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// Install the exception vector table.
pub fn set_vector_base(addr: u64) {
    VBAR_EL1.set(addr);
    isb();
}

/// The per-CPU data pointer (TPIDR_EL1), 0 before [`set_percpu_pointer`].
pub fn percpu_pointer() -> u64 {
    TPIDR_EL1.get()
}

/// Set the per-CPU data pointer of this CPU.
pub fn set_percpu_pointer(ptr: u64) {
    TPIDR_EL1.set(ptr);
}

/// The current TTBR1_EL1 (kernel translation table base).
pub fn ttbr1() -> u64 {
    TTBR1_EL1.get()
}

/// The current TTBR0_EL1 (lower-half table base and ASID).
pub fn ttbr0() -> u64 {
    TTBR0_EL1.get()
}

/// Install `value` (table PA | ASID << 48) in TTBR0_EL1.
///
/// The caller is responsible for TLB maintenance: with distinct ASIDs per address space no
/// invalidation is needed on a switch (Arm ARM D8.15.1), and ASID reuse is handled by the
/// allocator's rollover flush.
pub fn set_ttbr0(value: u64) {
    TTBR0_EL1.set(value);
    isb();
}

/// Size of the smallest data cache line (CTR_EL0.DminLine, in 4-byte words).
fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xF)
}

/// Clean the data cache for `[va, va + len)` to the point of coherency (`DC CVAC`), so an
/// observer with caches off (a CPU starting up) sees the data.
pub fn clean_dcache_range(va: u64, len: u64) {
    let line = dcache_line_size();
    let mut addr = va & !(line - 1);
    while addr < va + len {
        // SAFETY: cache maintenance by VA on a mapped kernel address has no effect on the
        // program's view of memory.
        unsafe { asm!("dc cvac, {}", in(reg) addr, options(nostack)) };
        addr += line;
    }
    dsb_sy();
}

/// Invalidate every EL1 TLB entry of this CPU only (`TLBI VMALLE1`, not broadcast).
pub fn tlb_invalidate_all_local() {
    dsb_ishst();
    // SAFETY: TLB invalidation only forces re-walks of the current tables.
    unsafe { asm!("tlbi vmalle1", options(nostack)) };
    barrier::dsb(barrier::NSH);
    isb();
}

/// Set SCTLR_EL1.WXN: every writable mapping is also execute-never (W^X in hardware).
pub fn enable_wxn() {
    SCTLR_EL1.modify(SCTLR_EL1::WXN::SET);
    // Cached translations may hold the old executable permission of writable pages.
    tlb_invalidate_all_local();
}
