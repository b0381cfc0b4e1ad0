//! Physical and virtual address types, and the fixed kernel address-space layout.
//!
//! The kernel runs in the upper half (TTBR1). Every physical address the kernel touches — RAM and
//! device MMIO alike — is reached through one linear window at a constant offset, so
//! `phys_to_virt` is an addition and needs no lookup. The lower half (TTBR0) belongs to
//! [`AddressSpace`](super)s that a device may share through the SMMU, and never maps the kernel.

use core::fmt;

/// Size of the translation granule used everywhere (4 KiB, Arm ARM D8.2).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Size of a level-2 block mapping with a 4 KiB granule.
pub const BLOCK_2M: u64 = 2 * 1024 * 1024;

/// Base of the kernel's linear window: `va = LINEAR_BASE + pa` (TTBR1, T1SZ = 16).
pub const LINEAR_BASE: u64 = 0xFFFF_0000_0000_0000;
/// Number of VA bits in each half (T0SZ = T1SZ = 16, Arm ARM D8.1.7).
pub const VA_BITS: u32 = 48;
/// One past the highest lower-half (TTBR0) address.
pub const USER_VA_END: u64 = 1 << VA_BITS;
/// First address of the upper (TTBR1) VA half.
pub const UPPER_VA_START: u64 = !(USER_VA_END - 1);

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual address (either half).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

impl PhysAddr {
    /// The kernel virtual address of this physical address in the linear window.
    pub const fn to_virt(self) -> VirtAddr {
        VirtAddr(LINEAR_BASE + self.0)
    }
}

impl VirtAddr {
    /// Whether this is a lower-half (TTBR0) address.
    pub const fn is_lower_half(self) -> bool {
        self.0 < USER_VA_END
    }
    /// The physical address behind a linear-window address, if it is one.
    pub const fn linear_to_phys(self) -> Option<PhysAddr> {
        if self.0 >= LINEAR_BASE && self.0 - LINEAR_BASE < USER_VA_END {
            Some(PhysAddr(self.0 - LINEAR_BASE))
        } else {
            None
        }
    }
}

/// What both address types have in common: the raw value, alignment, offsetting, and their
/// `PA(..)`/`VA(..)` debug and hex display forms.
macro_rules! address_common {
    ($ty:ident, $tag:literal) => {
        impl $ty {
            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Whether the address is aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// The address plus `off` bytes.
            pub const fn add(self, off: u64) -> Self {
                Self(self.0 + off)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($tag, "({:#x})"), self.0)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}
address_common!(PhysAddr, "PA");
address_common!(VirtAddr, "VA");
