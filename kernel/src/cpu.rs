//! CPU identity and primitives. The architecture code lives in `_arch/aarch64/cpu.rs`.

#[cfg(target_os = "none")]
#[path = "_arch/aarch64/cpu.rs"]
mod arch_cpu;
#[cfg(target_os = "none")]
pub use arch_cpu::*;

/// The most CPUs the kernel brings up (QEMU virt supports up to 512 with GICv3; the tests need
/// a handful).
pub const MAX_CPUS: usize = 8;

/// This CPU's logical index: 0 for the boot CPU, then in device-tree order.
///
/// TPIDR_EL1 holds the index itself, set before anything else runs on the CPU.
#[cfg(target_os = "none")]
pub fn index() -> usize {
    percpu_pointer() as usize
}
