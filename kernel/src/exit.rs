//! Leaving the machine: semihosting exit with a status (tests), PSCI SYSTEM_OFF (normal
//! shutdown), and the exit statuses the host harness interprets.

use crate::cpu::{self, Conduit};
use core::sync::atomic::{AtomicU8, Ordering};

pub use protocol::exit::ExitStatus;

/// PSCI function IDs (Arm DEN 0022, SMC32 calling convention).
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;

/// The PSCI conduit: 0 unknown, 1 HVC, 2 SMC.
static PSCI_CONDUIT: AtomicU8 = AtomicU8::new(0);

/// Record how PSCI is reached (from the device tree).
pub fn set_psci_conduit(conduit: Conduit) {
    PSCI_CONDUIT.store(
        match conduit {
            Conduit::Hvc => 1,
            Conduit::Smc => 2,
        },
        Ordering::Relaxed,
    );
}

/// The PSCI conduit, if the device tree has been read.
pub fn psci_conduit() -> Option<Conduit> {
    match PSCI_CONDUIT.load(Ordering::Relaxed) {
        1 => Some(Conduit::Hvc),
        2 => Some(Conduit::Smc),
        _ => None,
    }
}

/// Exit QEMU with `status` through semihosting; if that is unavailable, power off.
pub fn exit(status: ExitStatus) -> ! {
    cpu::semihosting_exit(status as u32);
    // Only reached when semihosting is disabled and the hlt was skipped by the handler.
    shutdown()
}

/// Power the machine off through PSCI SYSTEM_OFF (QEMU exits with status 0).
pub fn shutdown() -> ! {
    if let Some(conduit) = psci_conduit() {
        cpu::firmware_call(conduit, PSCI_SYSTEM_OFF, 0, 0, 0);
    }
    loop {
        cpu::wait_for_interrupt();
    }
}
