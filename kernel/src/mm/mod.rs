//! Memory management: addresses, frames, the kernel heap, page tables, address spaces, ASIDs and
//! the flush paths that keep every TLB (the CPU's and secondary ones) coherent.

pub mod addr;
pub mod address_space;
pub mod asid;
pub mod batch;
pub mod context;
pub mod frame;
pub mod heap;
pub mod kernel_map;
#[cfg(target_os = "none")]
mod ktests;
pub mod pgtable;
pub mod tlb;

pub use addr::{PAGE_SIZE, PhysAddr, VirtAddr};
