//! The kernel's implementation of [`smmu::hal::SmmuHal`]: MMIO through the linear window, DMA
//! memory from the frame allocator, DSB barriers and the generic timer.

use crate::{cpu, mm::frame::PhysBlock, time};
use alloc::collections::BTreeMap;
use core::ptr::NonNull;
use smmu::hal::{DmaError, DmaRegion, SmmuHal};
use spin::Mutex;

/// Access to one SMMU's register frame and to memory it can read.
pub struct KernelSmmuHal {
    base: usize,
    /// The owners of the live DMA blocks, by physical address: the driver's `DmaRegion`s are
    /// views of them, returned through `free_dma`.
    blocks: Mutex<BTreeMap<u64, PhysBlock>>,
}

impl KernelSmmuHal {
    /// The SMMU whose 128 KiB register frame (pages 0 and 1) is mapped at virtual `base`.
    ///
    /// # Safety
    /// `base` must map the SMMU's register frame as device memory for the kernel's lifetime,
    /// used by nothing but this HAL.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            base,
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    fn reg<T>(&self, offset: usize) -> *mut T {
        debug_assert!(offset < 0x2_0000 && offset.is_multiple_of(core::mem::size_of::<T>()));
        (self.base + offset) as *mut T
    }
}

// SAFETY: registers are accessed inside the frame `new`'s caller vouched for, with the width
// named; DMA regions come zeroed from the frame allocator (physically contiguous, aligned to
// their power-of-two size, which covers `align`), are reached through the linear window at
// `phys + LINEAR_BASE`, and RAM is coherent with the SMMU (IDR0.COHACC, checked at probe, and
// the tables are inner-shareable write-back); `now_ns` reads the monotonic system counter.
unsafe impl SmmuHal for KernelSmmuHal {
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: see the impl's safety comment: a register inside the mapped frame.
        unsafe { self.reg::<u32>(offset).read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as for read32.
        unsafe { self.reg::<u32>(offset).write_volatile(value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as for read32.
        unsafe { self.reg::<u64>(offset).read_volatile() }
    }

    fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as for read32.
        unsafe { self.reg::<u64>(offset).write_volatile(value) }
    }

    fn alloc_dma(&self, size: usize, align: usize) -> Result<DmaRegion, DmaError> {
        let block =
            PhysBlock::zeroed(size as u64, align as u64).map_err(|_| DmaError { size, align })?;
        let (pa, va) = (block.pa(), block.ptr(0, size as u64));
        self.blocks.lock().insert(pa.0, block);
        // SAFETY: the block was just allocated (zeroed, contiguous, aligned) and is mapped
        // read-write in the linear window; the region owns it until free_dma.
        Ok(unsafe { DmaRegion::from_raw_parts(pa.0, NonNull::new(va).expect("linear VA"), size) })
    }

    unsafe fn free_dma(&self, region: DmaRegion) {
        let pa = region.phys_addr();
        let block = self.blocks.lock().remove(&pa).unwrap_or_else(|| {
            panic!("SMMU HAL: freeing DMA block {pa:#x} that it never allocated")
        });
        drop(block);
    }

    fn publish_barrier(&self) {
        // DSB SY: earlier normal-memory stores complete before the following MMIO write
        // (IHI 0070 G.b §3.21.2).
        cpu::dsb_sy();
    }

    fn consume_barrier(&self) {
        cpu::dsb_sy();
    }

    fn now_ns(&self) -> u64 {
        time::now_ns()
    }

    fn relax(&self) {
        cpu::relax();
    }
}
