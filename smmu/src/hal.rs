//! The hardware abstraction the kernel implements: register access, DMA memory, barriers, time.
//!
//! Everything in this crate that touches the SMMU or memory shared with it goes through
//! [`SmmuHal`], so every encoder, queue and state machine can run on the host against a fake
//! SMMU model. The trait is deliberately small: 32/64-bit register accessors, one allocator for
//! zeroed, physically contiguous DMA memory, two barriers and a monotonic clock.
//!
//! # Register access widths
//!
//! IHI 0070 G.b §6.2 requires 32-bit access to 32-bit registers and allows 64-bit access to the
//! 64-bit registers. QEMU's model honours 64-bit accesses only at the 64-bit base/CFG0 registers
//! (`GERROR_IRQ_CFG0`, `STRTAB_BASE`, `CMDQ_BASE`, `EVENTQ_BASE`, `EVENTQ_IRQ_CFG0`) and silently
//! ignores them elsewhere, so this crate uses [`SmmuHal::read64`]/[`SmmuHal::write64`] only for
//! those and 32-bit accesses for everything else (see [`crate::regs`]).
//!
//! # Memory ordering
//!
//! The SMMU reads stream table entries, context descriptors, page tables and command-queue
//! entries from memory; it is told about new queue entries through an MMIO write of `PROD`.
//! [`SmmuHal::publish_barrier`] is called between the last normal-memory store and that MMIO
//! write (IHI 0070 G.b §3.21.2 step 3: "Performs a DSB operation"). In the other direction, the
//! SMMU writes event records and then advances `EVENTQ_PROD`; [`SmmuHal::consume_barrier`] is
//! called after reading `PROD` and before reading the records, and again after reading the
//! records and before writing `CONS` (so the SMMU cannot overwrite a record still being read).
//! It is also called once a `CMD_SYNC` is seen consumed, before returning to the caller.

use core::{fmt, ptr::NonNull};

/// Hardware services the kernel provides to the driver.
///
/// # Safety
///
/// The driver dereferences the memory described by the [`DmaRegion`]s returned from
/// [`SmmuHal::alloc_dma`] and hands their physical addresses to the SMMU. Implementations must
/// guarantee that:
///
/// - `alloc_dma(size, align)` returns a region of exactly `size` bytes that is zero-filled,
///   physically contiguous, aligned to `align` both virtually and physically, valid for volatile
///   reads and writes through [`DmaRegion::cpu_ptr`] until it is passed to
///   [`SmmuHal::free_dma`], used by nothing else in the meantime, and whose
///   [`DmaRegion::phys_addr`] is the address at which the SMMU sees the same bytes;
/// - the memory is coherent with the SMMU's accesses (the driver requires `IDR0.COHACC` and
///   programs inner-shareable write-back attributes), or the implementation performs whatever
///   cache maintenance is needed inside the two barrier methods;
/// - the register accessors access the SMMU's register frame at the given byte offset (page 0
///   starts at offset 0, page 1 at offset `0x1_0000`), with exactly the access width named;
/// - [`SmmuHal::now_ns`] is monotonic.
pub unsafe trait SmmuHal: Send + Sync {
    /// 32-bit read of the register at byte `offset` in the SMMU frame.
    fn read32(&self, offset: usize) -> u32;
    /// 32-bit write of the register at byte `offset` in the SMMU frame.
    fn write32(&self, offset: usize, value: u32);
    /// 64-bit read; only used for the 64-bit base/CFG0 registers.
    fn read64(&self, offset: usize) -> u64;
    /// 64-bit write; only used for the 64-bit base/CFG0 registers.
    fn write64(&self, offset: usize, value: u64);

    /// Allocates zeroed, physically contiguous memory the SMMU can access.
    ///
    /// # Errors
    ///
    /// Returns [`DmaError`] when no suitable memory is available.
    fn alloc_dma(&self, size: usize, align: usize) -> Result<DmaRegion, DmaError>;

    /// Returns memory obtained from [`SmmuHal::alloc_dma`].
    ///
    /// # Safety
    ///
    /// The SMMU must no longer be able to access the region: nothing reachable from an enabled
    /// stream table, queue base register or live context descriptor may point into it.
    unsafe fn free_dma(&self, region: DmaRegion);

    /// Makes all earlier normal-memory stores (STE, CD, page-table and queue-entry writes)
    /// observable by the SMMU before any later MMIO write. On aarch64: `dsb st` (or `dsb sy`).
    fn publish_barrier(&self);

    /// Orders earlier MMIO reads (`EVENTQ_PROD`, `CMDQ_CONS`) before later normal-memory
    /// accesses, and earlier normal-memory reads before later MMIO writes (`EVENTQ_CONS`). On
    /// aarch64: `dsb sy` (a `dmb osh` also suffices when the SMMU is coherent).
    fn consume_barrier(&self);

    /// Monotonic time in nanoseconds; every wait in this crate is bounded with it.
    fn now_ns(&self) -> u64;

    /// Called in every polling loop iteration (e.g. `core::hint::spin_loop()`, or `wfe` when the
    /// SMMU supports SEV).
    fn relax(&self);
}

/// The DMA allocator could not satisfy a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaError {
    /// Requested size in bytes.
    pub size: usize,
    /// Requested alignment in bytes.
    pub align: usize,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA allocation of {:#x} bytes aligned to {:#x} failed",
            self.size, self.align
        )
    }
}

impl core::error::Error for DmaError {}

/// A block of DMA memory: its physical address (as seen by the SMMU) and a CPU pointer.
///
/// The region is an owning handle: it is not `Clone`, and goes back to the allocator through
/// [`SmmuHal::free_dma`]. Accesses are volatile, 64-bit aligned and bounds-checked; writes need
/// `&mut self`, so two CPUs can only write the same region when a lock hands out the `&mut`.
pub struct DmaRegion {
    phys: u64,
    cpu: NonNull<u8>,
    size: usize,
}

// SAFETY: a `DmaRegion` is a handle to memory owned by the driver (see `SmmuHal::alloc_dma`);
// nothing about it is tied to the allocating CPU, so it may move between CPUs.
unsafe impl Send for DmaRegion {}
// SAFETY: shared references only permit volatile reads; writes require `&mut DmaRegion`, so the
// borrow checker (and the driver's locks around the owning structures) rules out data races
// between CPUs. The SMMU's own concurrent accesses are DMA, outside the Rust memory model, and
// are synchronised through the queue protocols and the HAL barriers.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Wraps memory produced by a [`SmmuHal::alloc_dma`] implementation.
    ///
    /// # Safety
    ///
    /// `cpu` must be valid for volatile reads and writes of `size` bytes for the lifetime of the
    /// returned value, aligned to at least 8 bytes, not accessed by anything else, and
    /// `phys` must be the physical address of the same bytes as the SMMU sees them.
    pub unsafe fn from_raw_parts(phys: u64, cpu: NonNull<u8>, size: usize) -> Self {
        Self { phys, cpu, size }
    }

    /// Physical address of the first byte.
    pub fn phys_addr(&self) -> u64 {
        self.phys
    }

    /// CPU pointer to the first byte (for the allocator when the region is freed).
    pub fn cpu_ptr(&self) -> NonNull<u8> {
        self.cpu
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn check(&self, offset: usize) {
        assert!(
            offset.is_multiple_of(8) && offset.checked_add(8).is_some_and(|end| end <= self.size),
            "DMA access at offset {offset:#x} outside or misaligned in a region of {:#x} bytes",
            self.size
        );
    }

    /// Volatile 64-bit load at byte `offset` (8-byte aligned, inside the region).
    pub fn read_u64(&self, offset: usize) -> u64 {
        self.check(offset);
        // SAFETY: `check` keeps the access inside the region and 8-byte aligned (the region is
        // at least 8-byte aligned by construction); `from_raw_parts` guarantees validity.
        unsafe { self.cpu.as_ptr().add(offset).cast::<u64>().read_volatile() }
    }

    /// Volatile 64-bit store at byte `offset`: a single 64-bit single-copy-atomic write, which
    /// is what the STE/CD update protocols rely on (IHI 0070 G.b §3.21.3).
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        self.check(offset);
        // SAFETY: as in `read_u64`; `&mut self` excludes concurrent CPU access.
        unsafe {
            self.cpu
                .as_ptr()
                .add(offset)
                .cast::<u64>()
                .write_volatile(value)
        }
    }
}

impl fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaRegion")
            .field("phys", &format_args!("{:#x}", self.phys))
            .field("size", &format_args!("{:#x}", self.size))
            .finish()
    }
}

/// Polls `done` until it returns `Some`, or `timeout_ns` has elapsed.
///
/// Returns `Err(waited_ns)` on timeout. Shared by every bounded wait in the crate.
pub(crate) fn poll_until<H: SmmuHal + ?Sized, T>(
    hal: &H,
    timeout_ns: u64,
    mut done: impl FnMut() -> Option<T>,
) -> Result<T, u64> {
    let start = hal.now_ns();
    loop {
        if let Some(value) = done() {
            return Ok(value);
        }
        let waited = hal.now_ns().saturating_sub(start);
        if waited > timeout_ns {
            // One last look: the condition may have become true while we were descheduled.
            return done().ok_or(waited);
        }
        hal.relax();
    }
}
