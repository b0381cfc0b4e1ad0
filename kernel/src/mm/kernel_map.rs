//! The kernel's own translation state: TTBR1 (image, linear map of RAM, device MMIO) and the
//! empty TTBR0 every CPU uses while it runs no address space.
//!
//! The lower half belongs to address spaces only; the kernel never maps itself there, so a
//! device sharing an address space through the SMMU can never reach kernel memory.

#[cfg(target_os = "none")]
mod target {
    use crate::{cpu, mm::frame};
    use core::sync::atomic::{AtomicU64, Ordering};

    /// TTBR0 value with no mappings (an all-invalid level-0 table, ASID 0).
    static EMPTY_TTBR0: AtomicU64 = AtomicU64::new(0);

    /// Allocate the empty lower-half table and switch the boot CPU to it.
    pub fn init() -> Result<(), frame::FrameError> {
        let root = frame::alloc_frame()?;
        EMPTY_TTBR0.store(root.0, Ordering::Release);
        enter_cpu();
        Ok(())
    }

    /// Switch the calling CPU's lower half to the empty table (and leave the bootstrap
    /// identity map, which the CPU needed only to turn its MMU on).
    pub fn enter_cpu() {
        let empty = EMPTY_TTBR0.load(Ordering::Acquire);
        assert!(
            empty != 0,
            "kernel_map::init must run before CPUs switch to the empty TTBR0"
        );
        cpu::set_ttbr0(empty);
        // The identity entries of the bootstrap table were global: drop them from this CPU's
        // TLB so no stale lower-half translation survives.
        cpu::tlb_invalidate_all_local();
    }

    /// The TTBR0 value of "no address space".
    pub fn empty_ttbr0() -> u64 {
        EMPTY_TTBR0.load(Ordering::Acquire)
    }
}
#[cfg(target_os = "none")]
pub use target::{empty_ttbr0, enter_cpu, init};
