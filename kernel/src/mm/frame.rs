//! Physical frame allocator: a buddy allocator over the RAM the device tree describes, minus
//! the kernel image, the device tree blob and reserved ranges.
//!
//! Blocks are power-of-two sized and naturally aligned (buddy invariant), which is exactly
//! what the SMMU's tables and queues need: a stream table or queue of 2^n bytes aligned to its
//! size. The allocator core is pure and host-tested; the target wraps it in a global that also
//! zeroes blocks through the linear window.

use super::addr::{PAGE_SHIFT, PAGE_SIZE, PhysAddr};
use buddy_system_allocator::FrameAllocator as Buddy;
use core::fmt;

/// Largest block: 2^(ORDER-1) frames = 1 GiB.
const ORDER: usize = 19;

/// A physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// The range `[start, start + size)`.
    pub const fn new(start: u64, size: u64) -> Self {
        Self {
            start,
            end: start + size,
        }
    }
}

/// Allocator of 4 KiB frames for translation tables.
pub trait FrameSource: Send + Sync {
    /// A zeroed, 4 KiB-aligned frame, or `None` when out of memory.
    fn alloc_zeroed_frame(&self) -> Option<PhysAddr>;
    /// Returns a frame obtained from [`FrameSource::alloc_zeroed_frame`].
    fn free_frame(&self, pa: PhysAddr);
}

/// [`FrameSource`] backed by the kernel's global frame allocator (this module's), which
/// zeroes frames through the linear window: usable once TTBR1 maps all RAM.
#[cfg(target_os = "none")]
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelFrames;

#[cfg(target_os = "none")]
impl FrameSource for KernelFrames {
    fn alloc_zeroed_frame(&self) -> Option<PhysAddr> {
        PhysBlock::frame().ok().map(|b| b.into_raw().0)
    }

    fn free_frame(&self, pa: PhysAddr) {
        // SAFETY: the page table gives back exactly the frames `alloc_zeroed_frame` handed out,
        // once each (FrameSource's contract), all one page with page alignment.
        drop(unsafe { PhysBlock::from_raw(pa, PAGE_SIZE, PAGE_SIZE) });
    }
}

/// Why a frame allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free block of the requested size and alignment.
    OutOfMemory {
        /// Requested size in bytes.
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { size, align } => write!(
                f,
                "out of physical memory: no free block of {size:#x} bytes aligned to {align:#x}"
            ),
        }
    }
}

/// The allocator proper.
pub struct FrameAllocator {
    buddy: Buddy<ORDER>,
    total_frames: u64,
    allocated_frames: u64,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Self {
            buddy: Buddy::new(),
            total_frames: 0,
            allocated_frames: 0,
        }
    }

    /// Hand over `memory` minus every range in `reserved` (page-granular: partial pages at the
    /// edges of a free range are not used).
    pub fn add_memory(&mut self, memory: &[PhysRange], reserved: &[PhysRange]) {
        for region in memory {
            let mut cursor = region.start;
            loop {
                // The next reserved range that overlaps [cursor, region.end), by start.
                let next = reserved
                    .iter()
                    .filter(|r| r.end > cursor && r.start < region.end)
                    .min_by_key(|r| r.start);
                let free_end = next.map_or(region.end, |r| r.start.max(cursor));
                self.add_free(cursor, free_end);
                match next {
                    Some(r) => cursor = r.end.max(cursor),
                    None => break,
                }
                if cursor >= region.end {
                    break;
                }
            }
        }
    }

    fn add_free(&mut self, start: u64, end: u64) {
        let first = start.div_ceil(PAGE_SIZE);
        let last = end / PAGE_SIZE;
        if last > first {
            self.buddy.add_frame(first as usize, last as usize);
            self.total_frames += last - first;
        }
    }

    /// Allocate `size` bytes (rounded up to a power-of-two number of frames) aligned to
    /// `align` (at least a page). The memory is not zeroed.
    ///
    /// # Errors
    /// [`FrameError::OutOfMemory`] when no such block is free.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<PhysAddr, FrameError> {
        let frames = Self::frames_for(size, align);
        match self.buddy.alloc(frames as usize) {
            Some(frame) => {
                self.allocated_frames += frames;
                Ok(PhysAddr((frame as u64) << PAGE_SHIFT))
            }
            None => Err(FrameError::OutOfMemory { size, align }),
        }
    }

    /// Return a block obtained from [`alloc`](Self::alloc) with the same `size` and `align`.
    pub fn free(&mut self, pa: PhysAddr, size: u64, align: u64) {
        let frames = Self::frames_for(size, align);
        self.buddy
            .dealloc((pa.0 >> PAGE_SHIFT) as usize, frames as usize);
        self.allocated_frames -= frames;
    }

    fn frames_for(size: u64, align: u64) -> u64 {
        let frames = size.div_ceil(PAGE_SIZE).max(1);
        let align_frames = (align / PAGE_SIZE).max(1);
        frames
            .next_power_of_two()
            .max(align_frames.next_power_of_two())
    }

    /// Frames handed to the allocator.
    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Frames currently allocated.
    pub fn allocated_frames(&self) -> u64 {
        self.allocated_frames
    }
}

#[cfg(target_os = "none")]
mod global {
    use super::*;
    use spin::Mutex;

    static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

    /// Hand the machine's free RAM to the global allocator (once, at boot).
    pub fn init(memory: &[PhysRange], reserved: &[PhysRange]) {
        FRAMES.lock().add_memory(memory, reserved);
    }

    fn alloc_uninit(size: u64, align: u64) -> Result<PhysAddr, FrameError> {
        let was = crate::cpu::irq_save();
        let pa = FRAMES.lock().alloc(size, align);
        crate::cpu::irq_restore(was);
        pa
    }

    /// The owner of one physically contiguous block of frames from the global allocator:
    /// the only way to obtain or return one. Dropping it frees the block (with the size and
    /// alignment it was allocated with, which the buddy allocator needs back). Blocks that
    /// live for ever (the heap, CPU stacks) are [`leak`](Self::leak)ed; frames whose owner is
    /// a data structure tracking raw addresses (page tables) go through
    /// [`into_raw`](Self::into_raw) / [`from_raw`](Self::from_raw).
    #[derive(Debug)]
    pub struct PhysBlock {
        pa: PhysAddr,
        size: u64,
        align: u64,
    }

    impl PhysBlock {
        /// `size` zeroed bytes aligned to `align`.
        ///
        /// # Errors
        /// [`FrameError::OutOfMemory`] when no such block is free.
        pub fn zeroed(size: u64, align: u64) -> Result<Self, FrameError> {
            let block = Self::uninit(size, align)?;
            let len = FrameAllocator::frames_for(size, align) * PAGE_SIZE;
            // SAFETY: the block was just allocated, so nothing else refers to it, and all RAM
            // is mapped read-write in the kernel's linear window.
            unsafe { core::ptr::write_bytes(block.pa.to_virt().0 as *mut u8, 0, len as usize) };
            Ok(block)
        }

        /// `size` bytes aligned to `align`, not cleared (for memory its user initialises
        /// anyway, like the heap: zeroing 32 MiB costs boot time under emulation).
        ///
        /// # Errors
        /// [`FrameError::OutOfMemory`] when no such block is free.
        pub fn uninit(size: u64, align: u64) -> Result<Self, FrameError> {
            Ok(Self {
                pa: alloc_uninit(size, align)?,
                size,
                align,
            })
        }

        /// One zeroed 4 KiB frame.
        ///
        /// # Errors
        /// [`FrameError::OutOfMemory`] when memory is exhausted.
        pub fn frame() -> Result<Self, FrameError> {
            Self::zeroed(PAGE_SIZE, PAGE_SIZE)
        }

        /// First byte.
        pub fn pa(&self) -> PhysAddr {
            self.pa
        }

        /// Size in bytes, as requested.
        pub fn size(&self) -> u64 {
            self.size
        }

        /// The kernel pointer to `len` bytes at `off`, through the linear window.
        ///
        /// # Panics
        /// If the bytes are not all inside the block.
        pub fn ptr(&self, off: u64, len: u64) -> *mut u8 {
            assert!(
                off.checked_add(len).is_some_and(|end| end <= self.size),
                "access of {len:#x} bytes at {off:#x} outside a block of {:#x}",
                self.size
            );
            self.pa.add(off).to_virt().0 as *mut u8
        }

        /// Gives the block up for good; returns its address.
        pub fn leak(self) -> PhysAddr {
            let pa = self.pa;
            core::mem::forget(self);
            pa
        }

        /// Hands ownership to a structure that tracks raw addresses; [`from_raw`]
        /// (Self::from_raw) with the same size and alignment takes it back.
        pub fn into_raw(self) -> (PhysAddr, u64, u64) {
            let raw = (self.pa, self.size, self.align);
            core::mem::forget(self);
            raw
        }

        /// Takes back a block given up with [`into_raw`](Self::into_raw).
        ///
        /// # Safety
        /// `(pa, size, align)` must be what `into_raw` returned for a block not taken back yet.
        pub unsafe fn from_raw(pa: PhysAddr, size: u64, align: u64) -> Self {
            Self { pa, size, align }
        }
    }

    impl Drop for PhysBlock {
        fn drop(&mut self) {
            let was = crate::cpu::irq_save();
            FRAMES.lock().free(self.pa, self.size, self.align);
            crate::cpu::irq_restore(was);
        }
    }

    /// `(allocated, total)` frames.
    pub fn usage() -> (u64, u64) {
        let f = FRAMES.lock();
        (f.allocated_frames(), f.total_frames())
    }
}
#[cfg(target_os = "none")]
pub use global::{PhysBlock, init, usage};

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn excludes_reserved_ranges_and_partial_pages() {
        let mut a = FrameAllocator::new();
        let ram = [PhysRange::new(0x4000_0000, 64 * MIB)];
        let reserved = [
            PhysRange::new(0x4000_0000, 0x2000),      // DTB
            PhysRange::new(0x4020_0000, 3 * MIB + 5), // image, ends mid-page
        ];
        a.add_memory(&ram, &reserved);
        let expected = (64 * MIB - 0x2000 - (3 * MIB + PAGE_SIZE)) / PAGE_SIZE;
        assert_eq!(a.total_frames(), expected);
        // Every allocated frame lies outside the reserved ranges.
        let mut got = std::vec::Vec::new();
        while let Ok(pa) = a.alloc(PAGE_SIZE, PAGE_SIZE) {
            for r in &reserved {
                assert!(
                    pa.0 + PAGE_SIZE <= r.start || pa.0 >= r.end,
                    "{pa:?} in {r:?}"
                );
            }
            assert!(pa.0 >= 0x4000_0000 && pa.0 < 0x4000_0000 + 64 * MIB);
            got.push(pa);
        }
        assert_eq!(got.len() as u64, expected);
    }

    #[test]
    fn blocks_are_aligned_to_their_size_and_alignment() {
        let mut a = FrameAllocator::new();
        a.add_memory(&[PhysRange::new(0x4000_1000, 16 * MIB)], &[]);
        let b = a.alloc(0x10000, 0x10000).unwrap();
        assert!(b.is_aligned(0x10000));
        let c = a.alloc(PAGE_SIZE, 2 * MIB).unwrap();
        assert!(c.is_aligned(2 * MIB));
        let d = a.alloc(3 * PAGE_SIZE, PAGE_SIZE).unwrap();
        assert!(
            d.is_aligned(4 * PAGE_SIZE),
            "3 pages round up to a 4-page block"
        );
        assert_eq!(a.allocated_frames(), 16 + 512 + 4);
        a.free(c, PAGE_SIZE, 2 * MIB);
        assert_eq!(a.allocated_frames(), 16 + 4);
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_request() {
        let mut a = FrameAllocator::new();
        a.add_memory(&[PhysRange::new(0x4000_0000, 4 * PAGE_SIZE)], &[]);
        let err = a.alloc(8 * PAGE_SIZE, PAGE_SIZE).unwrap_err();
        assert_eq!(
            err,
            FrameError::OutOfMemory {
                size: 0x8000,
                align: 0x1000
            }
        );
        assert!(err.to_string().contains("0x8000"));
    }

    #[test]
    fn overlapping_and_unsorted_reservations() {
        let mut a = FrameAllocator::new();
        let ram = [PhysRange::new(0, 16 * PAGE_SIZE)];
        let reserved = [
            PhysRange::new(8 * PAGE_SIZE, 4 * PAGE_SIZE),
            PhysRange::new(2 * PAGE_SIZE, 2 * PAGE_SIZE),
            PhysRange::new(3 * PAGE_SIZE, 6 * PAGE_SIZE),
        ];
        a.add_memory(&ram, &reserved);
        // Free: pages 0-1 and 12-15.
        assert_eq!(a.total_frames(), 6);
    }
}
