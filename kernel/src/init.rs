//! The boot sequence, from the assembly stub's hand-off to the main job or the test runner.

use crate::{
    bootargs::BootConfig,
    console, cpu,
    drivers::{self, gic, timer},
    exception, exit,
    exit::ExitStatus,
    logger,
    mm::{self, PhysAddr, frame::PhysRange},
    platform::{self, GicRegs, Platform},
    println, smp,
};
use alloc::{vec, vec::Vec};
use log::{info, warn};
use spin::Once;

/// How much RAM the heap takes from the frame allocator at boot (on top of its static seed).
const HEAP_GROWTH: u64 = 32 << 20;

static PLATFORM: Once<Platform> = Once::new();
static CONFIG: Once<BootConfig> = Once::new();

/// The machine as the device tree describes it (available once the boot CPU parsed it).
pub fn platform() -> &'static Platform {
    PLATFORM
        .get()
        .expect("platform() used before the device tree was parsed")
}

/// The boot configuration (the defaults until the boot CPU parsed the boot arguments).
pub fn config() -> &'static BootConfig {
    static DEFAULT: Once<BootConfig> = Once::new();
    CONFIG
        .get()
        .unwrap_or_else(|| DEFAULT.call_once(BootConfig::default))
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Entered from the boot stub with the MMU on (bootstrap tables), on the boot stack, IRQs
/// masked, at EL1.
///
/// `dtb_pa` is the physical address of the device tree (0 if none was found), `image_pa` the
/// physical load address of the kernel image, `entry_el` the exception level QEMU entered at
/// (the stub drops from EL2 to EL1).
///
/// # Safety
/// Called exactly once, by the boot stub, on the boot CPU.
pub unsafe fn kernel_init(dtb_pa: u64, image_pa: u64, entry_el: u64) -> ! {
    cpu::set_percpu_pointer(0);
    exception::install_vectors();
    // SAFETY: the bootstrap tables map the first GiB of the physical address space as device
    // memory in the linear window, and QEMU virt's PL011 is there; nothing else uses it.
    unsafe { console::set_uart(PhysAddr(console::EARLY_UART_PHYS).to_virt().0 as usize) };
    mm::heap::init_seed();
    let boot_start_ns = crate::time::now_ns();

    println!(
        "\nsmmu-sva unikernel: entered at EL{entry_el}, running at EL{}, image at {image_pa:#x}",
        cpu::current_el()
    );
    // SAFETY: the boot stub passes the device tree's physical address, which lies in RAM
    // covered by the bootstrap linear map; the kernel never writes to it.
    let dtb = unsafe { device_tree(dtb_pa) };
    let platform = match Platform::discover(dtb) {
        Ok(p) => PLATFORM.call_once(|| p),
        Err(e) => boot_error(&alloc::format!("device tree at {dtb_pa:#x}: {e}")),
    };
    let config = match BootConfig::parse(&platform.bootargs) {
        Ok(c) => CONFIG.call_once(|| c),
        Err(e) => boot_error(&alloc::format!("{e} in {:?}", platform.bootargs)),
    };
    logger::init(config.log);
    exit::set_psci_conduit(match platform.psci.conduit {
        platform::Conduit::Hvc => cpu::Conduit::Hvc,
        platform::Conduit::Smc => cpu::Conduit::Smc,
    });
    if platform.uart.reg.base != console::EARLY_UART_PHYS {
        // SAFETY: the device tree names this PL011 as the console; the bootstrap map covers the
        // first GiB of devices, and the final kernel map maps it too.
        unsafe { console::set_uart(PhysAddr(platform.uart.reg.base).to_virt().0 as usize) };
    }
    info!(
        "device tree at {dtb_pa:#x} ({} bytes), bootargs {:?}",
        platform.dtb_size, platform.bootargs
    );

    init_memory(platform, dtb_pa, image_pa);
    platform.log_summary();
    init_interrupts(platform);
    smp::init_boot_cpu();
    let mpidrs: Vec<u64> = platform.cpus.iter().map(|c| c.mpidr).collect();
    let cpus =
        match smp::start_secondaries(&mpidrs, exit::psci_conduit().expect("conduit set above")) {
            Ok(n) => n,
            Err(e) => boot_error(&alloc::format!("starting secondary CPUs: {e}")),
        };
    info!("{cpus} CPUs online");
    if let Err(e) = mm::context::init(cpus) {
        boot_error(&alloc::format!("address spaces: {e}"));
    }
    mm::tlb::secondary::set_mode(config.secondary_tlb);
    info!("secondary TLB notifications: {:?}", config.secondary_tlb);
    cpu::irq_enable();
    init_pci(platform, config);
    info!(
        "boot took {} us",
        (crate::time::now_ns() - boot_start_ns) / 1000
    );

    match &config.ktest {
        Some(filter) => crate::ktest::run(filter),
        None => crate::demo::main(),
    }
}

/// The device tree blob at `dtb_pa`, after checking its header.
///
/// # Safety
/// `dtb_pa`, if non-zero, must be the physical address of memory mapped in the linear window
/// that nobody writes while the kernel runs.
unsafe fn device_tree(dtb_pa: u64) -> &'static [u8] {
    if dtb_pa == 0 {
        boot_error("no device tree: x0 was 0 and none lies 2 MiB below the image");
    }
    let va = PhysAddr(dtb_pa).to_virt().0 as *const u8;
    // SAFETY: the header is 40 bytes of mapped RAM (caller's contract).
    let header = unsafe { core::slice::from_raw_parts(va, 40) };
    let size = match platform::dtb_total_size(header) {
        Ok(s) => s,
        Err(e) => boot_error(&alloc::format!("device tree at {dtb_pa:#x}: {e}")),
    };
    // SAFETY: as above, for the size the header declares.
    unsafe { core::slice::from_raw_parts(va, size) }
}

fn init_memory(platform: &Platform, dtb_pa: u64, image_pa: u64) {
    let image_size = (&raw const __image_end) as u64 - (&raw const __image_start) as u64;
    let memory: Vec<PhysRange> = platform
        .memory
        .iter()
        .map(|r| PhysRange::new(r.base, r.size))
        .collect();
    let mut reserved: Vec<PhysRange> = platform
        .reserved
        .iter()
        .map(|r| PhysRange::new(r.region.base, r.region.size))
        .collect();
    reserved.push(PhysRange::new(image_pa, image_size));
    reserved.push(PhysRange::new(dtb_pa, platform.dtb_size as u64));
    mm::frame::init(&memory, &reserved);
    let heap = mm::frame::PhysBlock::uninit(HEAP_GROWTH, mm::PAGE_SIZE)
        .unwrap_or_else(|e| boot_error(&alloc::format!("kernel heap: {e}")))
        .leak();
    // SAFETY: the block was just taken from the frame allocator and is mapped in the linear
    // window; the heap owns it from now on.
    unsafe { mm::heap::grow(heap.to_virt().0 as usize, HEAP_GROWTH as usize) };
    let ram: Vec<(u64, u64)> = platform.memory.iter().map(|r| (r.base, r.size)).collect();
    if let Err(e) = mm::kernel_map::init(&ram, &device_regions(platform)) {
        boot_error(&alloc::format!("kernel page tables: {e}"));
    }
    let (used, total) = mm::frame::usage();
    info!(
        "memory: {} MiB RAM, image {:#x}+{:#x}, {} MiB free for frames",
        memory.iter().map(|r| r.end - r.start).sum::<u64>() >> 20,
        image_pa,
        image_size,
        ((total - used) * mm::PAGE_SIZE) >> 20
    );
}

/// The MMIO regions the kernel maps at boot: everything discovered except PCI BARs, which the
/// PCI code maps as it assigns them.
fn device_regions(platform: &Platform) -> Vec<(&'static str, u64, u64)> {
    let mut v = vec![("PL011", platform.uart.reg.base, platform.uart.reg.size)];
    match &platform.gic.regs {
        GicRegs::V2 { gicd, gicc, .. } => {
            v.push(("GICD", gicd.base, gicd.size));
            v.push(("GICC", gicc.base, gicc.size));
        }
        GicRegs::V3 { gicd, gicr, .. } => {
            v.push(("GICD", gicd.base, gicd.size));
            v.extend(gicr.iter().map(|r| ("GICR", r.base, r.size)));
        }
    }
    if let Some(smmu) = &platform.smmu {
        v.push(("SMMUv3", smmu.reg.base, smmu.reg.size));
    }
    if let Some(pcie) = &platform.pcie {
        v.push(("PCIe ECAM", pcie.ecam.base, pcie.ecam.size));
    }
    v
}

fn init_interrupts(platform: &Platform) {
    let gic = match &platform.gic.regs {
        // SAFETY: the device tree names these register frames; they are mapped as device
        // memory in the linear window and used only by the GIC driver.
        GicRegs::V2 { gicd, gicc, .. } => unsafe {
            gic::Gic::V2(gic::v2::GicV2::new(
                PhysAddr(gicd.base).to_virt().0 as usize,
                PhysAddr(gicc.base).to_virt().0 as usize,
            ))
        },
        GicRegs::V3 { gicd, gicr, .. } => {
            let Some(rd) = gicr.first() else {
                boot_error("GICv3 without a redistributor region");
            };
            // SAFETY: as above.
            unsafe {
                gic::Gic::V3(gic::v3::GicV3::new(
                    PhysAddr(gicd.base).to_virt().0 as usize,
                    PhysAddr(rd.base).to_virt().0 as usize,
                    rd.size as usize,
                ))
            }
        }
    };
    if let Err(e) = gic::init(gic) {
        boot_error(&alloc::format!("interrupt controller: {e}"));
    }
    if let Err(e) = timer::init(platform.timer.virt.intid) {
        boot_error(&alloc::format!("virtual timer: {e}"));
    }
}

fn init_pci(platform: &Platform, config: &BootConfig) {
    let Some(host) = platform.pcie.clone() else {
        warn!("no PCIe host bridge in the device tree: no DMA devices");
        return;
    };
    // SAFETY: kernel_map::init mapped the ECAM as device memory in the linear window; only the
    // PCI subsystem uses it.
    let ecam = unsafe {
        drivers::pci::Ecam::new(
            PhysAddr(host.ecam.base).to_virt().0 as usize,
            host.bus_range,
        )
    };
    drivers::pci::init(host, ecam);
    drivers::edu::init(drivers::edu::EduConfig::with_completion(
        config.edu_completion,
    ));
    // The SMMU comes up after enumeration (which never sets Bus Master Enable) and before any
    // driver may enable DMA.
    match crate::iommu::init(platform, config) {
        // Each driver brackets its transfers with the IOMMU's fault reports.
        Ok(iommu) => {
            for edu in drivers::edu::devices() {
                edu.set_fault_source(Some(iommu));
            }
        }
        Err(crate::iommu::IommuError::NoSmmu) => {
            warn!("no SMMUv3 in the device tree: DMA devices stay disabled (no Bus Master Enable)")
        }
        Err(e) => boot_error(&alloc::format!("{e}")),
    }
}

/// Report an unrecoverable boot problem and exit with [`ExitStatus::BootError`].
pub fn boot_error(what: &str) -> ! {
    println!("{} {what}", protocol::console::BOOT_ERROR);
    exit::exit(ExitStatus::BootError)
}
