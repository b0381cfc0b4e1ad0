//! The kernel heap: a buddy allocator, seeded from a static region in .bss so that allocation
//! works before the device tree is read, and grown from the frame allocator afterwards.

#[cfg(target_os = "none")]
mod global {
    use crate::cpu;
    use buddy_system_allocator::Heap;
    use core::{
        alloc::{GlobalAlloc, Layout},
        ptr::NonNull,
    };
    use spin::Mutex;

    /// Size of the static seed region.
    const SEED_SIZE: usize = 4 << 20;

    #[repr(C, align(4096))]
    struct Seed([u8; SEED_SIZE]);
    static mut SEED: Seed = Seed([0; SEED_SIZE]);

    /// The heap, locked with IRQs masked so an interrupt handler that allocates cannot
    /// deadlock against the code it interrupted.
    struct KernelHeap(Mutex<Heap<32>>);

    // SAFETY: allocation and deallocation go through the buddy heap under its lock; blocks are
    // handed out exclusively and returned exactly once by the GlobalAlloc contract.
    unsafe impl GlobalAlloc for KernelHeap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let was = cpu::irq_save();
            let p = self
                .0
                .lock()
                .alloc(layout)
                .map_or(core::ptr::null_mut(), |p| p.as_ptr());
            cpu::irq_restore(was);
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let was = cpu::irq_save();
            // SAFETY: GlobalAlloc's contract: `ptr` is non-null and came from `alloc` with this
            // layout, so it is a live block of this heap.
            unsafe { self.0.lock().dealloc(NonNull::new_unchecked(ptr), layout) };
            cpu::irq_restore(was);
        }
    }

    #[global_allocator]
    static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap::new()));

    /// Seed the heap with the static region, first thing at boot.
    ///
    /// # Panics
    ///
    /// If called a second time: the seed would be handed out twice.
    pub fn init_seed() {
        static SEEDED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        assert!(
            !SEEDED.swap(true, core::sync::atomic::Ordering::AcqRel),
            "heap::init_seed called twice: the static seed would be given to the heap twice"
        );
        // SAFETY: the swap above lets exactly one call through, so the seed region is added to
        // the heap once and, being private to this module, used by nothing else afterwards.
        unsafe {
            let start = (&raw mut SEED) as usize;
            HEAP.0.lock().init(start, SEED_SIZE);
        }
    }

    /// Grow the heap by `size` bytes of RAM at kernel virtual address `start`.
    ///
    /// # Safety
    /// The range must be mapped read-write and owned by nobody else, for ever.
    pub unsafe fn grow(start: usize, size: usize) {
        let was = cpu::irq_save();
        // SAFETY: forwarded from the caller.
        unsafe { HEAP.0.lock().add_to_heap(start, start + size) };
        cpu::irq_restore(was);
    }

    /// `(allocated, total)` bytes.
    pub fn usage() -> (usize, usize) {
        let h = HEAP.0.lock();
        (h.stats_alloc_actual(), h.stats_total_bytes())
    }
}
#[cfg(target_os = "none")]
pub use global::{grow, init_seed, usage};
