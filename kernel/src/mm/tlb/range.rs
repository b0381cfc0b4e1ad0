//! The one VA range type of the memory-management code: what a page-table operation changes and
//! what its flush invalidates, carried unchanged from the page table to the SMMU boundary.
//!
//! # Ranges that cannot lie
//!
//! A [`VaRange`] is a non-empty run of whole pages inside one canonical 48-bit VA half, given as
//! start and page count: it has no end address that can wrap and no empty value. "Everything"
//! is its own variant, [`FlushRange::All`], never a range. These are the exact shapes of Linux's
//! `(~0, ~0)` range, its `-1UL` end that overflowed a driver's round-up, and the empty ranges
//! 6.6–6.13 passed to notifiers.

use core::fmt;

use crate::mm::addr::{PAGE_SHIFT, PAGE_SIZE, UPPER_VA_START, USER_VA_END, VirtAddr};

/// Why a [`VaRange`] or [`FlushRange`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// No pages: an empty range is an error, never "everything".
    Empty,
    /// The start (or the byte length) is not page-aligned.
    Misaligned,
    /// The end would pass 2^64 (or its round-up would).
    Overflow,
    /// Not within one canonical 48-bit VA half.
    NotCanonical,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeError::Empty => "empty VA range",
            RangeError::Misaligned => "VA range not page-aligned",
            RangeError::Overflow => "VA range end overflows the address space",
            RangeError::NotCanonical => "VA range not within one canonical VA half",
        })
    }
}

/// Whether `[start, last]` (inclusive, `start <= last`) lies in one canonical 48-bit half.
const fn in_one_half(start: u64, last: u64) -> bool {
    last < USER_VA_END || start >= UPPER_VA_START
}

/// A non-empty run of whole pages within one canonical VA half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VaRange {
    start: VirtAddr,
    pages: u64,
}

impl VaRange {
    /// `pages` pages from `start`.
    ///
    /// # Errors
    ///
    /// [`RangeError`] for zero pages, an unaligned start, an end past 2^64, or a run that leaves
    /// its canonical VA half.
    pub const fn from_pages(start: VirtAddr, pages: u64) -> Result<Self, RangeError> {
        if pages == 0 {
            return Err(RangeError::Empty);
        }
        if !start.0.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::Misaligned);
        }
        let last = match (pages - 1).checked_mul(PAGE_SIZE) {
            Some(off) => match start.0.checked_add(off) {
                Some(last) => last,
                None => return Err(RangeError::Overflow),
            },
            None => return Err(RangeError::Overflow),
        };
        if !in_one_half(start.0, last) {
            return Err(RangeError::NotCanonical);
        }
        Ok(Self { start, pages })
    }

    /// `len` bytes from `start`; both page-aligned.
    ///
    /// # Errors
    ///
    /// [`RangeError::Misaligned`] if `start` or `len` is not page-aligned, otherwise as
    /// [`Self::from_pages`].
    pub const fn new(start: VirtAddr, len: u64) -> Result<Self, RangeError> {
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::Misaligned);
        }
        Self::from_pages(start, len >> PAGE_SHIFT)
    }

    /// The pages touched by the byte range `[start, end_exclusive)`: `start` is rounded down and
    /// `end_exclusive` up to page boundaries.
    ///
    /// # Errors
    ///
    /// [`RangeError::Empty`] if `end_exclusive <= start` — including `(~0, ~0)`;
    /// [`RangeError::Overflow`] if rounding the end up passes 2^64 — including an end of
    /// `u64::MAX` (the `-1` "whole address space" idiom, which must be spelled
    /// [`FlushRange::All`] instead); [`RangeError::NotCanonical`] as for [`Self::from_pages`].
    pub const fn covering(start: VirtAddr, end_exclusive: u64) -> Result<Self, RangeError> {
        if end_exclusive <= start.0 {
            return Err(RangeError::Empty);
        }
        let first = start.0 & !(PAGE_SIZE - 1);
        let end = match end_exclusive.checked_add(PAGE_SIZE - 1) {
            Some(e) => e & !(PAGE_SIZE - 1),
            None => return Err(RangeError::Overflow),
        };
        Self::from_pages(VirtAddr(first), (end - first) >> PAGE_SHIFT)
    }

    /// The page containing `va` (always canonical-safe: one page never leaves its half).
    pub const fn page(va: VirtAddr) -> Self {
        Self {
            start: VirtAddr(va.0 & !(PAGE_SIZE - 1)),
            pages: 1,
        }
    }

    /// First address.
    pub const fn start(self) -> VirtAddr {
        self.start
    }
    /// Number of pages (≥ 1).
    pub const fn pages(self) -> u64 {
        self.pages
    }
    /// Length in bytes.
    pub const fn len(self) -> u64 {
        self.pages * PAGE_SIZE
    }
    /// Always `false` (kept for API symmetry with collections).
    pub const fn is_empty(self) -> bool {
        false
    }
    /// Address of the last page (never wraps).
    pub const fn last_page(self) -> VirtAddr {
        VirtAddr(self.start.0 + (self.pages - 1) * PAGE_SIZE)
    }
    /// Last byte (inclusive; never wraps).
    pub const fn last(self) -> VirtAddr {
        VirtAddr(self.last_page().0 + (PAGE_SIZE - 1))
    }
    /// Whether `va` lies in the range.
    pub const fn covers(self, va: VirtAddr) -> bool {
        va.0 >= self.start.0 && va.0 <= self.last().0
    }

    /// The smallest range covering both, or `None` if they lie in different VA halves.
    pub fn hull(self, other: VaRange) -> Option<VaRange> {
        let s = self.start.min(other.start);
        let l = self.last_page().max(other.last_page());
        VaRange::from_pages(s, ((l.0 - s.0) >> PAGE_SHIFT) + 1).ok()
    }
}

/// What a flush must invalidate, in one ASID (or, for kernel tables, in all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushRange {
    /// These pages. A TLBI by VA removes any entry that translates the VA, whatever its size,
    /// so a range covering part of a block is still correct.
    Pages(VaRange),
    /// The whole address space (every VA of the ASID).
    All,
}

impl From<VaRange> for FlushRange {
    fn from(r: VaRange) -> Self {
        FlushRange::Pages(r)
    }
}

impl FlushRange {
    /// The page containing `va`.
    pub const fn page(va: VirtAddr) -> Self {
        FlushRange::Pages(VaRange::page(va))
    }

    /// `pages` pages from `start`.
    ///
    /// # Errors
    ///
    /// As [`VaRange::from_pages`].
    pub const fn pages(start: VirtAddr, pages: u64) -> Result<Self, RangeError> {
        match VaRange::from_pages(start, pages) {
            Ok(r) => Ok(FlushRange::Pages(r)),
            Err(e) => Err(e),
        }
    }

    /// The pages touched by the byte range `[start, end_exclusive)`.
    ///
    /// # Errors
    ///
    /// As [`VaRange::covering`].
    pub const fn from_bounds(start: VirtAddr, end_exclusive: u64) -> Result<Self, RangeError> {
        match VaRange::covering(start, end_exclusive) {
            Ok(r) => Ok(FlushRange::Pages(r)),
            Err(e) => Err(e),
        }
    }

    /// The range, or `None` for [`FlushRange::All`].
    pub const fn as_range(self) -> Option<VaRange> {
        match self {
            FlushRange::Pages(r) => Some(r),
            FlushRange::All => None,
        }
    }

    /// Number of pages, or `None` for [`FlushRange::All`].
    pub const fn page_count(self) -> Option<u64> {
        match self {
            FlushRange::Pages(r) => Some(r.pages()),
            FlushRange::All => None,
        }
    }

    /// First page, or `None` for [`FlushRange::All`].
    pub const fn start(self) -> Option<VirtAddr> {
        match self {
            FlushRange::Pages(r) => Some(r.start()),
            FlushRange::All => None,
        }
    }

    /// Last page (inclusive; never wraps), or `None` for [`FlushRange::All`].
    pub const fn last_page(self) -> Option<VirtAddr> {
        match self {
            FlushRange::Pages(r) => Some(r.last_page()),
            FlushRange::All => None,
        }
    }

    /// Whether the page containing `va` is covered.
    pub const fn covers(self, va: VirtAddr) -> bool {
        match self {
            FlushRange::Pages(r) => r.covers(va),
            FlushRange::All => true,
        }
    }

    /// Whether the two share a page ([`FlushRange::All`] overlaps everything).
    pub const fn overlaps(self, other: FlushRange) -> bool {
        match (self, other) {
            (FlushRange::Pages(a), FlushRange::Pages(b)) => {
                a.start().0 <= b.last_page().0 && b.start().0 <= a.last_page().0
            }
            _ => true,
        }
    }

    /// The smallest range covering both. Ranges in different halves give [`FlushRange::All`].
    pub fn hull(self, other: FlushRange) -> FlushRange {
        match (self, other) {
            (FlushRange::Pages(a), FlushRange::Pages(b)) => {
                a.hull(b).map_or(FlushRange::All, FlushRange::Pages)
            }
            _ => FlushRange::All,
        }
    }
}
