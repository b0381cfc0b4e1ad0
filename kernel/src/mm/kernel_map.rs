//! The kernel's own translation state: TTBR1 (image, linear map of RAM, device MMIO) and the
//! empty TTBR0 every CPU uses while it runs no address space.
//!
//! Layout: everything the kernel touches is at `LINEAR_BASE + pa`. The image is mapped W^X
//! (text RX, rodata R, data/bss RW+XN) and is not mapped a second time: the linear map of RAM
//! leaves a hole where the image is, so no writable alias of kernel text exists. Other RAM is
//! RW+XN, device MMIO is Device-nGnRE+XN, and SCTLR_EL1.WXN makes any writable page
//! non-executable in hardware as well.
//!
//! The lower half belongs to address spaces only; the kernel never maps itself there, so a
//! device sharing an address space through the SMMU can never reach kernel memory.

#[cfg(target_os = "none")]
mod target {
    use crate::{
        cpu,
        mm::{
            addr::{BLOCK_2M, PAGE_SIZE, PhysAddr, VirtAddr},
            frame::{self, KernelFrames},
            pgtable::{self, LinearWindow, MapAttrs, PageTable, VaHalf},
            tlb::{self, VaRange, arch::CpuTlb},
        },
    };
    use core::{
        fmt,
        sync::atomic::{AtomicU64, Ordering},
    };
    use spin::{Mutex, Once};

    /// TTBR0 value with no mappings (an all-invalid level-0 table, ASID 0).
    static EMPTY_TTBR0: AtomicU64 = AtomicU64::new(0);
    // SAFETY: constructed for the kernel's tables, which map all RAM in the linear window from
    // the first page-table operation on (the bootstrap map before the switch, the final map
    // after it).
    static WINDOW: LinearWindow = unsafe { LinearWindow::new() };
    static FRAMES: KernelFrames = KernelFrames;
    static KERNEL_TABLES: Once<Mutex<PageTable<'static>>> = Once::new();

    /// The bootstrap map (boot.s) covers the first 4 GiB of physical addresses.
    const BOOTSTRAP_LIMIT: u64 = 4 << 30;

    unsafe extern "C" {
        static __image_start: u8;
        static __text_end: u8;
        static __rodata_end: u8;
        static __image_end: u8;
        fn __switch_ttbr1(ttbr1: u64);
    }

    /// Why the kernel map could not be built or extended.
    #[derive(Debug)]
    pub enum KernelMapError {
        /// A table operation failed.
        Table(&'static str, pgtable::Error),
        /// The frame allocator is exhausted.
        Frames(frame::FrameError),
        /// RAM the bootstrap map does not reach (the tables would be built out of it).
        RamAboveBootstrap(u64),
        /// `map_device` before `init`.
        NotInitialised,
    }

    impl fmt::Display for KernelMapError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Table(what, e) => write!(f, "mapping {what}: {e}"),
                Self::Frames(e) => write!(f, "{e}"),
                Self::RamAboveBootstrap(end) => write!(
                    f,
                    "RAM ends at {end:#x}, beyond the 4 GiB the bootstrap map covers"
                ),
                Self::NotInitialised => write!(f, "kernel page tables not built yet"),
            }
        }
    }

    fn linear(pa: u64) -> VirtAddr {
        PhysAddr(pa).to_virt()
    }

    fn map_range(
        pt: &mut PageTable<'static>,
        what: &'static str,
        start: u64,
        end: u64,
        attrs: MapAttrs,
    ) -> Result<(), KernelMapError> {
        if end <= start {
            return Ok(());
        }
        let range = VaRange::new(linear(start), end - start)
            .map_err(|e| KernelMapError::Table(what, e.into()))?;
        let token = pt
            .map(range, PhysAddr(start), attrs, true)
            .map_err(|e| KernelMapError::Table(what, e))?;
        // SAFETY: these tables are not installed in any TTBR or SMMU context yet: no walker
        // has seen them. The switch below issues the barriers and TLB invalidation.
        unsafe { tlb::complete_without_tlb(token, &FRAMES) };
        Ok(())
    }

    /// Build the final kernel tables — the image W^X, all `ram` RW+XN, the `devices` (physical
    /// `(base, size)`) as device memory — switch TTBR1 to them, and move the boot CPU's lower
    /// half to the empty table.
    pub fn init(
        ram: &[(u64, u64)],
        devices: &[(&'static str, u64, u64)],
    ) -> Result<(), KernelMapError> {
        if let Some(end) = ram
            .iter()
            .map(|(b, s)| b + s)
            .max()
            .filter(|&e| e > BOOTSTRAP_LIMIT)
        {
            return Err(KernelMapError::RamAboveBootstrap(end));
        }
        let pa = |sym: *const u8| {
            VirtAddr(sym as u64)
                .linear_to_phys()
                .expect("image in linear map")
                .0
        };
        let image_start = pa(&raw const __image_start);
        let text_end = pa(&raw const __text_end);
        let rodata_end = pa(&raw const __rodata_end);
        let image_end = pa(&raw const __image_end);

        let mut pt = PageTable::new(&WINDOW, &FRAMES, VaHalf::Upper)
            .map_err(|e| KernelMapError::Table("root", e))?;
        map_range(
            &mut pt,
            "kernel text",
            image_start,
            text_end,
            MapAttrs::KERNEL_TEXT,
        )?;
        map_range(
            &mut pt,
            "kernel rodata",
            text_end,
            rodata_end,
            MapAttrs::KERNEL_RODATA,
        )?;
        map_range(
            &mut pt,
            "kernel data",
            rodata_end,
            image_end,
            MapAttrs::KERNEL_DATA,
        )?;
        for &(base, size) in ram {
            let end = base + size;
            // RAM around the image: the image itself is mapped above, once.
            map_range(
                &mut pt,
                "RAM",
                base,
                end.min(image_start),
                MapAttrs::KERNEL_DATA,
            )?;
            map_range(
                &mut pt,
                "RAM",
                base.max(image_end),
                end,
                MapAttrs::KERNEL_DATA,
            )?;
        }
        for &(what, base, size) in devices {
            let start = base & !(PAGE_SIZE - 1);
            let end = (base + size).next_multiple_of(PAGE_SIZE);
            map_range(&mut pt, what, start, end, MapAttrs::KERNEL_DEVICE)?;
        }
        let root = pt.root();
        KERNEL_TABLES.call_once(|| Mutex::new(pt));

        let switch = __switch_ttbr1 as *const () as u64;
        let switch_pa = VirtAddr(switch)
            .linear_to_phys()
            .expect("image in linear map")
            .0;
        cpu::dsb_ish();
        // SAFETY: __switch_ttbr1 (boot.s) is position-independent, uses no stack and is
        // reachable at its physical address through the bootstrap identity map still in
        // TTBR0. The new tables map everything the kernel uses at the same virtual addresses
        // (image, stack, heap, devices), so execution continues at the return address.
        unsafe {
            let f: unsafe extern "C" fn(u64) = core::mem::transmute(switch_pa as usize);
            f(root.0);
        }
        cpu::enable_wxn();

        // The empty TTBR0 table every CPU runs on between address spaces, for ever.
        let empty = frame::PhysBlock::frame()
            .map_err(KernelMapError::Frames)?
            .leak();
        EMPTY_TTBR0.store(empty.0, Ordering::Release);
        enter_cpu();
        Ok(())
    }

    /// Map a device's registers (physical `base`, `size` bytes) in the linear window, if not
    /// already mapped, and return their virtual address.
    pub fn map_device(
        what: &'static str,
        base: u64,
        size: u64,
    ) -> Result<VirtAddr, KernelMapError> {
        let tables = KERNEL_TABLES.get().ok_or(KernelMapError::NotInitialised)?;
        let mut pt = tables.lock();
        let start = base & !(PAGE_SIZE - 1);
        let end = (base + size).next_multiple_of(PAGE_SIZE);
        let mut page = start;
        while page < end {
            if pt.translate(linear(page)).is_none() {
                // Map the unmapped run starting here, block-aligned where possible.
                let mut run_end = page + PAGE_SIZE;
                while run_end < end && pt.translate(linear(run_end)).is_none() {
                    run_end += if run_end.is_multiple_of(BLOCK_2M) && run_end + BLOCK_2M <= end {
                        BLOCK_2M
                    } else {
                        PAGE_SIZE
                    };
                }
                let range = VaRange::new(linear(page), run_end - page)
                    .map_err(|e| KernelMapError::Table(what, e.into()))?;
                let token = pt
                    .map(range, PhysAddr(page), MapAttrs::KERNEL_DEVICE, true)
                    .map_err(|e| KernelMapError::Table(what, e))?;
                tlb::flush_kernel(token, &CpuTlb::new(), &FRAMES)
                    .expect("kernel flushes involve no secondary TLB and cannot fail");
                page = run_end;
            } else {
                page += PAGE_SIZE;
            }
        }
        Ok(linear(base))
    }

    /// Switch the calling CPU's lower half to the empty table (and leave the bootstrap
    /// identity map, which the CPU needed only to turn its MMU on).
    pub fn enter_cpu() {
        let empty = EMPTY_TTBR0.load(Ordering::Acquire);
        assert!(
            empty != 0,
            "kernel_map::init must run before CPUs switch to the empty TTBR0"
        );
        cpu::enable_wxn();
        cpu::set_ttbr0(empty);
        // The bootstrap identity entries were global: drop them from this CPU's TLB so no
        // stale lower-half translation survives.
        cpu::tlb_invalidate_all_local();
    }

    /// The TTBR0 value of "no address space".
    pub fn empty_ttbr0() -> u64 {
        EMPTY_TTBR0.load(Ordering::Acquire)
    }

    /// The kernel's translation of `va` (for tests of the W^X layout).
    pub fn translate(va: VirtAddr) -> Option<pgtable::Translation> {
        KERNEL_TABLES.get()?.lock().translate(va)
    }
}
#[cfg(target_os = "none")]
pub use target::{KernelMapError, empty_ttbr0, enter_cpu, init, map_device, translate};
