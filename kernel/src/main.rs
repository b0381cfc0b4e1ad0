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

/// On the host, `cargo run -p kernel [-- BOOTARGS]` lands here: build the image for the
/// bare-metal target with the same profile and boot it through the target's cargo runner
/// (`scripts/qemu-run`), exiting with the kernel's status.
#[cfg(not(target_os = "none"))]
fn main() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["run", "-p", "kernel", "--bin", "kernel"])
        .args(["--target", "aarch64-unknown-none"]);
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--").args(std::env::args_os().skip(1));
    match cmd.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("kernel: cannot run cargo for aarch64-unknown-none: {e}");
            std::process::exit(2);
        }
    }
}
