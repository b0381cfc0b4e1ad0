//! The EL1 virtual timer (Arm ARM D12: CNTV_CTL_EL0 / CNTV_CVAL_EL0), used to bound sleeps:
//! a CPU that waits in WFI for a device arms the timer at its deadline, so the wait ends even
//! if the device never interrupts. Under QEMU's `-icount …,sleep=off` a CPU in WFI makes virtual
//! time jump to the next timer deadline, so such waits cost almost no wall time.

use crate::{
    cpu,
    drivers::gic::{self, Trigger},
};
use aarch64_cpu::registers::{CNTV_CTL_EL0, CNTV_CVAL_EL0};
use core::sync::atomic::{AtomicU32, Ordering};
use tock_registers::interfaces::Writeable;

/// The virtual timer's INTID (from the device tree; PPI 11 = INTID 27 on virt).
static VIRT_TIMER_INTID: AtomicU32 = AtomicU32::new(0);

/// Register the timer interrupt (boot CPU) and enable it on this CPU.
pub fn init(intid: u32) -> Result<(), gic::GicError> {
    VIRT_TIMER_INTID.store(intid, Ordering::Relaxed);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::IMASK::SET);
    // The handler only masks the timer: its job is to end a WFI.
    gic::register(intid, Trigger::Level, gic::handler(|_| disarm()))
}

/// Enable the timer interrupt on a secondary CPU (PPIs are per CPU).
pub fn init_cpu() -> Result<(), gic::GicError> {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::IMASK::SET);
    gic::enable_local(VIRT_TIMER_INTID.load(Ordering::Relaxed), Trigger::Level)
}

/// Fire the timer interrupt on this CPU at absolute counter value `deadline_ticks`.
pub fn arm_at(deadline_ticks: u64) {
    CNTV_CVAL_EL0.set(deadline_ticks);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET);
    cpu::isb();
}

/// Stop the timer on this CPU.
pub fn disarm() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::IMASK::SET);
}

/// Wait in WFI until `done()` holds or `timeout_ns` passes; returns whether `done()` held.
///
/// Interrupts must be routed so that whatever makes `done()` true also raises an interrupt on
/// this CPU (e.g. a device completion IRQ); the timer bounds the wait otherwise. Works with
/// IRQs masked or unmasked (WFI wakes on a pending interrupt either way).
pub fn wait_until(timeout_ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let freq = cpu::counter_frequency().max(1);
    let ticks = ((timeout_ns as u128 * freq as u128) / 1_000_000_000) as u64;
    let deadline = cpu::counter().saturating_add(ticks);
    loop {
        // Check, arm and sleep with IRQs masked: an interrupt taken between the check and the
        // WFI would otherwise be consumed (and the timer disarmed by its handler) before the
        // CPU sleeps, leaving it asleep with nothing to wake it. WFI wakes on a pending
        // interrupt even while masked; unmasking afterwards lets its handler run.
        let was = cpu::irq_save();
        if done() {
            disarm();
            cpu::irq_restore(was);
            return true;
        }
        if cpu::counter() >= deadline {
            disarm();
            cpu::irq_restore(was);
            return done();
        }
        arm_at(deadline);
        cpu::wait_for_interrupt();
        cpu::irq_restore(was);
    }
}
