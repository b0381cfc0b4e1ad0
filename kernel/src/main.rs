//! The kernel binary: the boot stub and the hand-off into the library's boot sequence.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("_arch/aarch64/cpu/boot.s"));

/// Called by the boot stub (boot.s) on the boot CPU with the MMU on.
///
/// # Safety
/// Only the boot stub calls this, once.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
unsafe extern "C" fn kernel_init(dtb_pa: u64, image_pa: u64, entry_el: u64) -> ! {
    // SAFETY: forwarded: called once by the boot stub on the boot CPU.
    unsafe { kernel::init::kernel_init(dtb_pa, image_pa, entry_el) }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs only on aarch64-unknown-none: use scripts/run");
    std::process::exit(2);
}
