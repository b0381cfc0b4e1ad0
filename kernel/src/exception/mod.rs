//! Exceptions: syndrome decoding (pure), and on the target the vector table, interrupt dispatch
//! and the routing of lower-half (TTBR0) aborts to their address space's fault handler.

pub mod esr;

#[cfg(target_os = "none")]
#[path = "../_arch/aarch64/exception/mod.rs"]
mod arch_exception;
#[cfg(target_os = "none")]
pub use arch_exception::{TrapFrame, install_vectors};

/// What a fault handler did with an abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResolution {
    /// The cause was fixed (e.g. a page upgraded and flushed): re-execute the instruction.
    Retry,
    /// Not handled: report it as an unexpected exception.
    Unhandled,
}

/// A handler for aborts on lower-half addresses (the address spaces' fault policies).
pub type LowerHalfFaultHandler = fn(&esr::Abort, u64) -> FaultResolution;

/// A handler for IRQs (the interrupt controller's dispatch).
pub type IrqHandler = fn();

#[cfg(target_os = "none")]
mod hooks {
    use super::*;
    use spin::Once;

    static LOWER_HALF_FAULTS: Once<LowerHalfFaultHandler> = Once::new();
    static IRQS: Once<IrqHandler> = Once::new();

    /// Route aborts on lower-half addresses to `handler`. Set once, at boot.
    pub fn set_lower_half_fault_handler(handler: LowerHalfFaultHandler) {
        LOWER_HALF_FAULTS.call_once(|| handler);
    }

    /// Route IRQs to `handler`. Set once, at boot.
    pub fn set_irq_handler(handler: IrqHandler) {
        IRQS.call_once(|| handler);
    }

    pub(super) fn lower_half_fault(abort: &esr::Abort, elr: u64) -> FaultResolution {
        match LOWER_HALF_FAULTS.get() {
            Some(handler) => handler(abort, elr),
            None => FaultResolution::Unhandled,
        }
    }

    pub(super) fn handle_irq() {
        if let Some(handler) = IRQS.get() {
            handler();
        }
    }
}
#[cfg(target_os = "none")]
use hooks::{handle_irq, lower_half_fault};
#[cfg(target_os = "none")]
pub use hooks::{set_irq_handler, set_lower_half_fault_handler};
