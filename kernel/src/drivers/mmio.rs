//! Typed access to a memory-mapped register block.

use core::{marker::PhantomData, ops::Deref};

/// A register block of type `T` (a `register_structs!` layout) at a fixed virtual address.
///
/// The only way to create one is the `unsafe` [`MmioBlock::new`], whose caller vouches for the
/// address; every access afterwards is a safe volatile access through tock-registers.
pub struct MmioBlock<T> {
    base: usize,
    _layout: PhantomData<fn() -> T>,
}

impl<T> MmioBlock<T> {
    /// Wrap the register block at `base`.
    ///
    /// # Safety
    /// `base` must be the virtual address of a mapped device whose registers have the layout
    /// `T`, mapped as device memory for as long as the block is used, and not aliased by
    /// accesses that assume other layouts.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            base,
            _layout: PhantomData,
        }
    }

    /// The base address.
    pub fn base(&self) -> usize {
        self.base
    }
}

impl<T> Deref for MmioBlock<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `new`'s contract guarantees that `base` points at a live register block of
        // layout `T`; tock-registers types only perform volatile accesses through `&T`.
        unsafe { &*(self.base as *const T) }
    }
}

// SAFETY: an MmioBlock is an address; the registers behind it are accessed with volatile
// single-copy-atomic loads and stores, and callers serialise multi-register sequences with
// their own locks.
unsafe impl<T> Send for MmioBlock<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for MmioBlock<T> {}
