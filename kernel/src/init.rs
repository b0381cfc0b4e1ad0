//! The boot sequence, from the assembly stub's hand-off to the main job or the test runner.

use crate::{
    bootargs::BootArgs, console, cpu, exception, exit, exit::ExitStatus, logger, mm, println,
};
use log::info;

/// Entered from the boot stub with the MMU on (bootstrap tables), on the boot stack, IRQs
/// masked, at EL1.
///
/// `dtb_pa` is the physical address of the device tree (0 if none was found), `image_pa` the
/// physical load address of the kernel image.
///
/// # Safety
/// Called exactly once, by the boot stub, on the boot CPU.
pub unsafe fn kernel_init(dtb_pa: u64, image_pa: u64) -> ! {
    cpu::set_percpu_pointer(0);
    exception::install_vectors();
    // SAFETY: the bootstrap tables map the first GiB of the physical address space as device
    // memory in the linear window, and QEMU virt's PL011 is there; nothing else uses it.
    unsafe { console::set_uart(mm::PhysAddr(console::EARLY_UART_PHYS).to_virt().0 as usize) };
    mm::heap::init_seed();

    println!(
        "\nsmmu-sva unikernel booting (image at {image_pa:#x}, EL{})",
        cpu::current_el()
    );
    if dtb_pa == 0 {
        boot_error("no device tree: x0 was 0 and none lies 2 MiB below the image");
    }
    logger::init(log::LevelFilter::Info);
    info!("device tree at {dtb_pa:#x}");

    let args = BootArgs::new("");
    match args.get("ktest") {
        Some(filter) => crate::ktest::run(filter.unwrap_or("")),
        None => {
            info!("main job: nothing to do yet");
            exit::shutdown()
        }
    }
}

/// Report an unrecoverable boot problem and exit with [`ExitStatus::BootError`].
pub fn boot_error(what: &str) -> ! {
    println!("BOOT ERROR: {what}");
    exit::exit(ExitStatus::BootError)
}
