//! Configuration-space access: the [`ConfigSpace`] trait the enumeration is written against, the
//! register offsets it uses, and the ECAM implementation.
//!
//! The trait is the seam between the enumeration logic and the hardware: the kernel passes an
//! [`Ecam`], the host unit tests a model of a PCI hierarchy (`fake.rs`). It has 16-bit writes as
//! well as 32-bit ones because several registers share a dword with write-1-to-clear bits
//! (COMMAND with STATUS, the bridge I/O base/limit with the secondary status): a 32-bit
//! read-modify-write of COMMAND would write back, and so clear, every error bit set in STATUS.
//! Reads have no side effects in configuration space (PCI Local Bus Specification 3.0, §6.1), so
//! 8- and 16-bit reads are derived from 32-bit ones.

use crate::platform::Bdf;
use core::ptr;

/// Header fields common to both layouts (PCI Local Bus Specification 3.0, §6.1, Figure 6-1).
pub mod reg {
    /// Vendor ID (16 bits); 0xFFFF reads back from an absent function.
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits, §6.2.2).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits, §6.2.3; error bits are write-1-to-clear).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits); the class code is the upper 24 bits of this dword.
    pub const REVISION: u16 = 0x08;
    /// Header Type (8 bits): layout in bits 6:0, multi-function in bit 7 (§6.2.1).
    pub const HEADER_TYPE: u16 = 0x0E;
    /// First Base Address Register (§6.2.5.1).
    pub const BAR0: u16 = 0x10;
    /// Capabilities Pointer (8 bits, §6.7), valid when STATUS.CAP_LIST is set.
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt Pin (8 bits, §6.2.4): 0 = none, 1..4 = INTA#..INTD#.
    pub const INTERRUPT_PIN: u16 = 0x3D;

    /// Type 1 (PCI-to-PCI Bridge Architecture Specification 1.2, §3.2): the dword with the
    /// primary, secondary and subordinate bus numbers and the secondary latency timer.
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Type 1: I/O base (8 bits) and I/O limit (8 bits), §3.2.5.6.
    pub const IO_BASE_LIMIT: u16 = 0x1C;
    /// Type 1: memory base and limit (16 bits each), §3.2.5.8.
    pub const MEMORY_BASE_LIMIT: u16 = 0x20;
    /// Type 1: prefetchable memory base and limit (16 bits each), §3.2.5.9.
    pub const PREF_BASE_LIMIT: u16 = 0x24;
    /// Type 1: prefetchable base, upper 32 bits (§3.2.5.10).
    pub const PREF_BASE_UPPER: u16 = 0x28;
    /// Type 1: prefetchable limit, upper 32 bits (§3.2.5.10).
    pub const PREF_LIMIT_UPPER: u16 = 0x2C;
    /// Type 1: I/O base and limit, upper 16 bits each (§3.2.5.7).
    pub const IO_UPPER: u16 = 0x30;
}

/// COMMAND register bits (PCI Local Bus Specification 3.0, §6.2.2).
pub mod command {
    /// I/O Space: respond to I/O accesses.
    pub const IO: u16 = 1 << 0;
    /// Memory Space: respond to memory accesses (decode the memory BARs / forward windows).
    pub const MEMORY: u16 = 1 << 1;
    /// Bus Master: allow the function to issue memory requests (DMA, and MSI writes). A bridge
    /// with it clear does not forward requests upstream (PCI-to-PCI Bridge Spec 1.2, §3.2.5.1).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Interrupt Disable: the function must not assert INTx.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// STATUS.Capabilities List (PCI Local Bus Specification 3.0, §6.2.3, bit 4).
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Offset of the last dword of a function's 4 KiB configuration space.
pub const CONFIG_SPACE_LAST_DWORD: u16 = 0xFFC;

/// Access to PCI configuration space, one function and one naturally aligned register at a time.
///
/// An absent function reads as all ones and ignores writes (a master abort, PCI Local Bus
/// Specification 3.0, §6.1), which is how the enumeration finds out what exists. `offset` must be
/// aligned to the access size and below 4096; implementations may ignore accesses that are not.
pub trait ConfigSpace: Send + Sync {
    /// Read the dword at `offset`.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Write the dword at `offset`.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
    /// Write the 16-bit register at `offset` (leaving the other half of its dword untouched).
    fn write16(&self, bdf: Bdf, offset: u16, value: u16);

    /// Read the 16-bit register at `offset`.
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    /// Read the byte at `offset`.
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
}

/// The Enhanced Configuration Access Mechanism: each function's 4 KiB of configuration space is
/// memory-mapped at `base + (bus - first bus) << 20 | device << 15 | function << 12` (PCI Express
/// Base Specification, §7.2.2 "PCI Express Enhanced Configuration Access Mechanism").
pub struct Ecam {
    base: usize,
    first_bus: u8,
    last_bus: u8,
}

impl Ecam {
    /// The ECAM whose bus `bus_range.0` starts at virtual address `base`.
    ///
    /// # Safety
    /// `base .. base + (bus_range.1 - bus_range.0 + 1) MiB` must be the host bridge's ECAM
    /// region, mapped as device memory (nGnRE or stronger) for as long as the `Ecam` is used.
    pub const unsafe fn new(base: usize, bus_range: (u8, u8)) -> Self {
        Self {
            base,
            first_bus: bus_range.0,
            last_bus: bus_range.1,
        }
    }

    /// The bus range this ECAM covers.
    pub fn bus_range(&self) -> (u8, u8) {
        (self.first_bus, self.last_bus)
    }

    /// The virtual address of `offset` in `bdf`'s configuration space, or `None` for a bus
    /// outside the range, an offset past 4 KiB, or a misaligned offset.
    fn address(&self, bdf: Bdf, offset: u16, size: u16) -> Option<usize> {
        if bdf.bus < self.first_bus
            || bdf.bus > self.last_bus
            || bdf.device > 31
            || bdf.function > 7
            || offset > 0xFFF
            || !offset.is_multiple_of(size)
        {
            return None;
        }
        let index = (usize::from(bdf.bus - self.first_bus) << 20)
            | (usize::from(bdf.device) << 15)
            | (usize::from(bdf.function) << 12)
            | usize::from(offset);
        Some(self.base + index)
    }
}

impl ConfigSpace for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.address(bdf, offset, 4) {
            // SAFETY: `new`'s contract: the address lies in the mapped ECAM region, and it is
            // 4-byte aligned; a config read has no side effects.
            Some(addr) => unsafe { ptr::read_volatile(addr as *const u32) },
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(addr) = self.address(bdf, offset, 4) {
            // SAFETY: as for `read32`; ECAM is device memory, not memory Rust knows about.
            unsafe { ptr::write_volatile(addr as *mut u32, value) }
        }
    }

    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(addr) = self.address(bdf, offset, 2) {
            // SAFETY: as for `write32`, with a 2-byte aligned address.
            unsafe { ptr::write_volatile(addr as *mut u16, value) }
        }
    }
}

// SAFETY: an Ecam is an address range; every access is a single volatile load or store, which
// is single-copy atomic for aligned 16/32-bit accesses. Multi-access sequences on one function
// are serialised by their users (the enumeration runs once at boot; each driver owns its
// function's COMMAND register).
unsafe impl Send for Ecam {}
// SAFETY: as for Send.
unsafe impl Sync for Ecam {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(bus, device, function).unwrap()
    }

    #[test]
    fn ecam_addresses_follow_the_bus_device_function_layout() {
        // Two buses starting at bus 4: 2 MiB of "configuration space" in ordinary memory.
        let mut space = vec![0u32; 2 << 18];
        let base = space.as_mut_ptr() as usize;
        // SAFETY: `space` outlives `ecam` and covers buses 4..=5.
        let ecam = unsafe { Ecam::new(base, (4, 5)) };
        ecam.write32(bdf(5, 3, 2), 0x10, 0xdead_beef);
        let index = ((1 << 20) | (3 << 15) | (2 << 12) | 0x10) / 4;
        assert_eq!(space[index], 0xdead_beef);
        assert_eq!(ecam.read32(bdf(5, 3, 2), 0x10), 0xdead_beef);
        assert_eq!(ecam.read16(bdf(5, 3, 2), 0x12), 0xdead);
        assert_eq!(ecam.read8(bdf(5, 3, 2), 0x10), 0xef);
        ecam.write16(bdf(5, 3, 2), 0x12, 0x1234);
        assert_eq!(ecam.read32(bdf(5, 3, 2), 0x10), 0x1234_beef);
        drop(space);
    }

    #[test]
    fn ecam_outside_its_bus_range_reads_all_ones_and_drops_writes() {
        let mut space = vec![0u32; 1 << 18];
        let base = space.as_mut_ptr() as usize;
        // SAFETY: `space` outlives `ecam` and covers bus 0.
        let ecam = unsafe { Ecam::new(base, (0, 0)) };
        assert_eq!(ecam.read32(bdf(1, 0, 0), 0), u32::MAX);
        ecam.write32(bdf(1, 0, 0), 0, 0);
        assert_eq!(ecam.read32(bdf(0, 0, 0), 0x2), u32::MAX, "misaligned");
        assert!(space.iter().all(|&w| w == 0));
        drop(space);
    }
}
