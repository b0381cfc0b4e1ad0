//! A reader for device-tree property values as big-endian 32-bit cells.
//!
//! Every property discovery decodes (`reg`, `ranges`, `interrupts`, `interrupt-map`,
//! `iommu-map`, ...) is a flat sequence of cells whose grouping is set by `#address-cells`,
//! `#size-cells` and `#interrupt-cells` found on *other* nodes. The `fdt` crate only knows the
//! simplest groupings (it cannot split a GIC 3-cell interrupt specifier, nor a 3-cell PCI address),
//! so the grouping is done here, on raw bytes. DT spec v0.4 §2.2.4 fixes the encoding: a cell is a
//! 32-bit big-endian value, and a number spanning several cells is most-significant cell first.
//!
//! Nothing here panics: a read past the end returns `None`, and the callers turn that into a
//! [`PlatformError`](super::PlatformError) naming the property.

/// A cursor over a property value viewed as big-endian 32-bit cells.
#[derive(Clone, Copy, Debug)]
pub struct Cells<'a> {
    bytes: &'a [u8],
}

impl<'a> Cells<'a> {
    /// Views `bytes` as cells; `None` if the length is not a multiple of 4.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(4).then_some(Self { bytes })
    }

    /// Number of cells not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Whether every cell has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Reads one cell.
    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.bytes.split_first_chunk::<4>()?;
        self.bytes = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// Reads a number spanning `n` cells. `n` = 0 reads nothing and yields 0 (a `#size-cells` of 0
    /// means "no size"); `n` > 2 does not fit a `u64` and yields `None`, as does running out.
    pub fn number(&mut self, n: u32) -> Option<u64> {
        match n {
            0 => Some(0),
            1 => self.u32().map(u64::from),
            2 => {
                let hi = self.u32()?;
                let lo = self.u32()?;
                Some((u64::from(hi) << 32) | u64::from(lo))
            }
            _ => None,
        }
    }

    /// Splits off the next `n` cells as their own cursor.
    pub fn take(&mut self, n: usize) -> Option<Cells<'a>> {
        let len = n.checked_mul(4)?;
        if len > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(Cells { bytes: head })
    }

    /// Splits the remaining cells into entries of `n` cells each (for `reg`, `ranges`,
    /// `interrupt-map` and friends); `None` if `n` is 0 or does not divide what is left.
    pub fn entries(self, n: usize) -> Option<impl Iterator<Item = Cells<'a>>> {
        let len = n.checked_mul(4).filter(|&len| len != 0)?;
        if !self.bytes.len().is_multiple_of(len) {
            return None;
        }
        Some(self.bytes.chunks_exact(len).map(|bytes| Cells { bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_cells() {
        assert!(Cells::new(&[0, 0, 0]).is_none());
        assert!(Cells::new(&[]).is_some_and(|c| c.is_empty()));
    }

    #[test]
    fn reads_big_endian() {
        let mut c = Cells::new(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1]).unwrap();
        assert_eq!(c.remaining(), 2);
        assert_eq!(c.u32(), Some(0x1234_5678));
        assert_eq!(c.u32(), Some(1));
        assert_eq!(c.u32(), None);
        assert!(c.is_empty());
    }

    #[test]
    fn multi_cell_numbers_are_most_significant_first() {
        let bytes = [0, 0, 0, 0x40, 0x10, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        let mut c = Cells::new(&bytes).unwrap();
        assert_eq!(c.number(0), Some(0));
        assert_eq!(c.number(2), Some(0x40_1000_0000));
        assert_eq!(c.number(1), Some(0xdead_beef));
        assert_eq!(c.number(1), None, "ran out");
    }

    #[test]
    fn number_rejects_more_than_two_cells_and_truncation() {
        let bytes = [0u8; 12];
        assert_eq!(Cells::new(&bytes).unwrap().number(3), None);
        assert_eq!(Cells::new(&bytes[..4]).unwrap().number(2), None);
    }

    #[test]
    fn take_and_entries() {
        let bytes: [u8; 24] = core::array::from_fn(|i| if i % 4 == 3 { i as u8 / 4 } else { 0 });
        let mut c = Cells::new(&bytes).unwrap();
        let mut head = c.take(2).unwrap();
        assert_eq!(
            (head.u32(), head.u32(), head.u32()),
            (Some(0), Some(1), None)
        );
        assert!(c.take(5).is_none(), "only four cells left");
        assert!(c.entries(3).is_none(), "4 is not a multiple of 3");
        assert!(c.entries(0).is_none());
        let firsts: alloc::vec::Vec<u32> = c
            .entries(2)
            .unwrap()
            .map(|mut e| e.u32().unwrap())
            .collect();
        assert_eq!(firsts, [2, 4]);
    }
}
