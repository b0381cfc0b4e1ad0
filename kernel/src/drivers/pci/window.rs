//! Bump allocation of PCI bus addresses out of one host-bridge window.
//!
//! Enumeration assigns addresses depth first, so a bump allocator is enough to make every
//! bridge's window one contiguous range: before descending into a bridge the cursor is aligned to
//! the bridge's window granularity (1 MiB for memory, PCI-to-PCI Bridge Architecture Specification
//! 1.2, §3.2.5.8), everything behind the bridge is allocated, and the bridge's window is
//! `[start, cursor rounded up to 1 MiB)`. Nothing is ever freed: the hierarchy is assigned once at
//! boot.

use crate::platform::PciWindow;

/// Which host-bridge window an address came from (named in errors and the boot log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// The 32-bit non-prefetchable memory window.
    Mem32,
    /// The 64-bit memory window.
    Mem64,
}

impl core::fmt::Display for WindowKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Mem32 => "32-bit memory window",
            Self::Mem64 => "64-bit memory window",
        })
    }
}

/// A bump allocator over `[pci_base, end)` of one window's PCI address range.
#[derive(Clone, Debug)]
pub struct WindowAllocator {
    kind: WindowKind,
    /// First PCI address of the window.
    pci_base: u64,
    /// CPU physical address of `pci_base`.
    cpu_base: u64,
    /// One past the last PCI address.
    end: u64,
    /// Next free PCI address.
    cursor: u64,
}

impl WindowAllocator {
    /// An allocator over `window`, or `None` if the window is empty or wraps.
    pub fn new(kind: WindowKind, window: &PciWindow) -> Option<Self> {
        let end = window.pci_addr.checked_add(window.size)?;
        window.cpu_addr.checked_add(window.size)?;
        (window.size > 0).then_some(Self {
            kind,
            pci_base: window.pci_addr,
            cpu_base: window.cpu_addr,
            end,
            cursor: window.pci_addr,
        })
    }

    /// Which window this is.
    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    /// One past the last PCI address of the window.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// `size` bytes aligned to `align` (a power of two), ending at or below `limit` (exclusive;
    /// `1 << 32` for a 32-bit BAR). Returns the PCI address, or `None` if the window is full.
    pub fn alloc(&mut self, size: u64, align: u64, limit: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        let start = align_up(self.cursor, align)?;
        let end = start.checked_add(size)?;
        if end > self.end || end > limit {
            return None;
        }
        self.cursor = end;
        Some(start)
    }

    /// The current cursor (the next free PCI address, before alignment).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Move the cursor back to `mark` (from [`cursor`](Self::cursor)), releasing nothing that was
    /// handed out: used to undo an alignment when a bridge turned out to need no window.
    pub fn rewind(&mut self, mark: u64) {
        debug_assert!(mark <= self.cursor && mark >= self.pci_base);
        self.cursor = mark;
    }

    /// Align the cursor up to `align`, saturating at the end of the window.
    pub fn align_cursor(&mut self, align: u64) {
        self.cursor = align_up(self.cursor, align).map_or(self.end, |c| c.min(self.end));
    }

    /// The CPU physical address of PCI address `pci` in this window.
    pub fn to_cpu(&self, pci: u64) -> u64 {
        pci - self.pci_base + self.cpu_base
    }
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::PciSpace;

    fn window(pci: u64, cpu: u64, size: u64) -> PciWindow {
        PciWindow {
            space: PciSpace::Mem32,
            prefetchable: false,
            pci_addr: pci,
            cpu_addr: cpu,
            size,
        }
    }

    #[test]
    fn allocations_are_naturally_aligned_and_bounded() {
        let mut a = WindowAllocator::new(
            WindowKind::Mem32,
            &window(0x1000_0000, 0x1000_0000, 0x30_0000),
        )
        .unwrap();
        assert_eq!(a.alloc(0x1000, 0x1000, 1 << 32), Some(0x1000_0000));
        assert_eq!(a.alloc(0x10_0000, 0x10_0000, 1 << 32), Some(0x1010_0000));
        assert_eq!(
            a.alloc(0x20_0000, 0x20_0000, 1 << 32),
            None,
            "would end past the window"
        );
        assert_eq!(a.alloc(0x10_0000, 0x10_0000, 1 << 32), Some(0x1020_0000));
        assert_eq!(a.alloc(16, 16, 1 << 32), None, "full");
    }

    #[test]
    fn cpu_addresses_follow_the_window_offset() {
        let mut a = WindowAllocator::new(
            WindowKind::Mem64,
            &window(0x8000_0000, 0x80_0000_0000, 1 << 30),
        )
        .unwrap();
        let pci = a.alloc(0x4000, 0x4000, u64::MAX).unwrap();
        assert_eq!(pci, 0x8000_0000);
        assert_eq!(a.to_cpu(pci + 0x10), 0x80_0000_0010);
    }

    #[test]
    fn limit_keeps_32_bit_bars_below_4_gib() {
        let mut a = WindowAllocator::new(
            WindowKind::Mem32,
            &window(0xFFF0_0000, 0xFFF0_0000, 0x20_0000),
        )
        .unwrap();
        assert_eq!(a.alloc(0x20_0000, 0x10_0000, 1 << 32), None);
        assert_eq!(a.alloc(0x10_0000, 0x10_0000, 1 << 32), Some(0xFFF0_0000));
    }

    #[test]
    fn align_cursor_saturates_and_rewind_restores() {
        let mut a =
            WindowAllocator::new(WindowKind::Mem32, &window(0x1000, 0x1000, 0x1000)).unwrap();
        let mark = a.cursor();
        a.align_cursor(0x10_0000);
        assert_eq!(a.cursor(), 0x2000, "saturated at the end");
        a.rewind(mark);
        assert_eq!(a.cursor(), 0x1000);
        assert_eq!(align_up(u64::MAX - 1, 16), None);
    }
}
