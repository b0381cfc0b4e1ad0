//! Stage-1 translation tables: 4 KiB granule, 48-bit VA, four levels (L0–L3), shared by the CPU
//! and — for TTBR0 address spaces — by the SMMU (Arm ARM DDI 0487 K.a, D8.2–D8.5).
//!
//! # Design
//!
//! - Tables live in physical frames reached through two traits, [`PhysMem`] (where a frame is
//!   mapped for the kernel) and [`FrameSource`] (allocate/free
//!   frames), so the whole module runs on the host against fake memory.
//! - Every mutating operation returns a [`TlbFlush`] token (`#[must_use]`) that says what must be
//!   invalidated, whether the change was *only* a permission upgrade, and which table frames may
//!   be freed once — and only once — that flush has completed. The page table never frees a table
//!   itself: a walker (CPU or SMMU) may still hold a cached pointer to it until the flush.
//! - Break-before-make (Arm ARM D8.16, required whenever the output address or the block size of
//!   a live entry changes): [`PageTable::remap`], [`PageTable::split_block`] and
//!   [`PageTable::merge_to_block`] only *break* (write invalid entries) and return a [`Bbm`]: its
//!   [`TlbFlush`] must be executed, and the [`FlushDone`] proof it yields is the only way to run
//!   the *make* half ([`PendingMake::make`]).
//! - Permission changes of valid entries ([`PageTable::protect`], [`PageTable::grant`]) are done
//!   in place with one 64-bit store: the architecture does not require break-before-make for
//!   them.
//! - Entries are read and written as `AtomicU64` (single-copy atomic 64-bit accesses), because
//!   hardware walkers read them concurrently. New tables are fully initialised before the
//!   descriptor that links them is stored, with a store barrier in between.
//! - Operations are all-or-nothing: each first checks the whole range (and pre-allocates every
//!   table it needs), then writes.
//!
//! Only 4 KiB pages and 2 MiB blocks are created; existing 1 GiB blocks are understood
//! (translate, split, unmap/protect when fully covered).

use alloc::vec::Vec;
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::mm::{
    addr::{LINEAR_BASE, PAGE_SIZE, PhysAddr, UPPER_VA_START, USER_VA_END, VirtAddr},
    frame::FrameSource,
    tlb::{FlushCause, FlushDone, FlushRange, Invalidation, RangeError, Stride, TlbFlush, VaRange},
};

mod desc;
pub use desc::*;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

/// Entries per table.
pub const ENTRIES: usize = 512;
/// One past the largest output address a descriptor can hold (48-bit OA).
pub const PA_LIMIT: u64 = 1 << 48;

// ---------------------------------------------------------------------------------------------
// Memory interfaces
// ---------------------------------------------------------------------------------------------

/// Where the kernel can access a physical frame that holds a translation table.
///
/// # Safety
///
/// For every frame handed out by the [`FrameSource`] used with the same [`PageTable`], and for
/// as long as it stays allocated, `table_ptr` must return a pointer that is valid for reads and
/// writes of 4096 bytes, 8-byte aligned, that aliases no Rust reference, and through which the
/// frame's contents are what a hardware walker reading physical address `pa` sees (coherent,
/// cacheable memory).
pub unsafe trait PhysMem: Send + Sync {
    /// The kernel pointer to the table frame at `pa`.
    fn table_ptr(&self, pa: PhysAddr) -> *mut [u64; ENTRIES];
}

/// [`PhysMem`] through the kernel's linear window (`va = pa + LINEAR_BASE`), valid once the
/// TTBR1 tables mapping all RAM are live.
#[derive(Debug)]
pub struct LinearWindow(());

impl LinearWindow {
    /// # Safety
    ///
    /// The linear window must map every frame the paired [`FrameSource`] hands out, read-write,
    /// Normal cacheable memory, for as long as this value is used.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: `new`'s contract guarantees the window maps each table frame coherently.
unsafe impl PhysMem for LinearWindow {
    fn table_ptr(&self, pa: PhysAddr) -> *mut [u64; ENTRIES] {
        (LINEAR_BASE + pa.0) as *mut [u64; ENTRIES]
    }
}

/// [`PhysMem`] with the MMU off (or an identity map): `va = pa`. For building the boot tables.
#[derive(Debug)]
pub struct IdentityPhysMem(());

impl IdentityPhysMem {
    /// # Safety
    ///
    /// Physical addresses of table frames must be directly accessible (MMU off with the data
    /// cache coherent with the walker, or an identity mapping) while this value is used.
    pub const unsafe fn new() -> Self {
        Self(())
    }
}

// SAFETY: `new`'s contract guarantees physical addresses are directly accessible.
unsafe impl PhysMem for IdentityPhysMem {
    fn table_ptr(&self, pa: PhysAddr) -> *mut [u64; ENTRIES] {
        pa.0 as *mut [u64; ENTRIES]
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges, errors, results
// ---------------------------------------------------------------------------------------------

/// Which half of the VA space a table translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VaHalf {
    /// TTBR0: `[0, 2^48)`. Shared address spaces.
    Lower,
    /// TTBR1: `[2^64 − 2^48, 2^64)`. The kernel.
    Upper,
}

impl VaHalf {
    const fn base(self) -> u64 {
        match self {
            VaHalf::Lower => 0,
            VaHalf::Upper => UPPER_VA_START,
        }
    }
}

/// Why a page-table operation was refused. Nothing was changed when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The VA range leaves this table's half, or the PA range passes 2^48.
    AddressRange,
    /// The VA range itself is malformed.
    Range(RangeError),
    /// An address or length is not aligned as required.
    Misaligned,
    /// This address is not mapped (and must be).
    NotMapped(VirtAddr),
    /// This address is already mapped (and must not be).
    AlreadyMapped(VirtAddr),
    /// The range covers only part of the block at this address: split it first.
    BlockInTheWay(VirtAddr),
    /// The entry at this address is not a block.
    NotABlock(VirtAddr),
    /// The 2 MiB region at this address does not hold 512 uniform pages (contiguous ones when no
    /// new address is given).
    NotMergeable(VirtAddr),
    /// No frame for a new table.
    OutOfFrames,
    /// The attributes cannot be mapped.
    InvalidAttrs(AttrError),
    /// The entry broken at this address was changed before the make step.
    BbmConflict(VirtAddr),
    /// The make step was given no proof of its own flush, or another page table.
    FlushNotDone,
    /// A move's source and destination ranges overlap.
    MoveOverlap,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AddressRange => f.write_str("address range outside the table"),
            Error::Range(e) => write!(f, "{e}"),
            Error::Misaligned => f.write_str("misaligned address or length"),
            Error::NotMapped(va) => write!(f, "{va} is not mapped"),
            Error::AlreadyMapped(va) => write!(f, "{va} is already mapped"),
            Error::BlockInTheWay(va) => write!(f, "range covers part of the block at {va}"),
            Error::NotABlock(va) => write!(f, "{va} is not mapped by a block"),
            Error::NotMergeable(va) => write!(f, "pages at {va} cannot be merged into a block"),
            Error::OutOfFrames => f.write_str("out of frames for page tables"),
            Error::InvalidAttrs(e) => write!(f, "invalid attributes: {e}"),
            Error::BbmConflict(va) => write!(f, "entry at {va} changed during break-before-make"),
            Error::FlushNotDone => f.write_str("break-before-make completed without its flush"),
            Error::MoveOverlap => f.write_str("move source and destination overlap"),
        }
    }
}

impl From<AttrError> for Error {
    fn from(e: AttrError) -> Self {
        Error::InvalidAttrs(e)
    }
}

impl From<RangeError> for Error {
    fn from(e: RangeError) -> Self {
        Error::Range(e)
    }
}

/// Result of [`PageTable::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output address of the queried VA (offset within the page/block included).
    pub pa: PhysAddr,
    /// Attributes of the leaf.
    pub attrs: MapAttrs,
    /// Level of the leaf: 3 = 4 KiB page, 2 = 2 MiB block, 1 = 1 GiB block.
    pub level: u8,
    /// The raw leaf descriptor.
    pub descriptor: Descriptor,
}

impl Translation {
    /// Size of the leaf's mapping.
    pub const fn size(&self) -> u64 {
        span(self.level)
    }
}

/// A break-before-make in progress: the entries are invalid; run [`Bbm::flush`]'s token, then
/// [`PendingMake::make`] with its proof.
#[must_use = "the range stays unmapped until the flush and the make step run"]
#[derive(Debug)]
pub struct Bbm {
    flush: TlbFlush,
    make: PendingMake,
}

impl Bbm {
    /// The flush that must complete first.
    pub fn flush(&self) -> &TlbFlush {
        &self.flush
    }
    /// Splits into the flush to execute and the make step that needs its proof.
    pub fn into_parts(self) -> (TlbFlush, PendingMake) {
        (self.flush, self.make)
    }
}

#[derive(Clone, Copy, Debug)]
struct MakeWrite {
    off: u64,
    level: u8,
    desc: Descriptor,
}

/// The second half of a break-before-make: the entries to write once the flush is done.
#[must_use = "the range stays unmapped until the make step runs"]
#[derive(Debug)]
pub struct PendingMake {
    flush_id: u64,
    origin: PhysAddr,
    half: VaHalf,
    cause: FlushCause,
    writes: Vec<MakeWrite>,
    /// A table built for the make step (split): unreachable until made.
    new_table: Option<PhysAddr>,
    armed: bool,
}

impl PendingMake {
    /// Writes the new entries, after checking `done` proves this make's flush completed and
    /// that the broken entries are still invalid. Returns the (barrier-only) token that
    /// publishes the new entries.
    ///
    /// # Errors
    ///
    /// [`Error::FlushNotDone`] without the right proof or with another page table;
    /// [`Error::BbmConflict`] if an entry was changed meanwhile. Nothing is written then; the
    /// new table (if any) is leaked.
    pub fn make(mut self, pt: &mut PageTable<'_>, done: &FlushDone) -> Result<TlbFlush, Error> {
        if !done.covers(self.flush_id) || pt.root != self.origin || pt.half != self.half {
            return Err(Error::FlushNotDone);
        }
        let mut slots = Vec::with_capacity(self.writes.len());
        for w in &self.writes {
            let (table, i) = pt
                .slot_at(w.off, w.level)
                .ok_or(Error::BbmConflict(pt.va(w.off)))?;
            if pt.read(table, i).is_valid() {
                return Err(Error::BbmConflict(pt.va(w.off)));
            }
            slots.push((table, i, w.desc));
        }
        publish_fence();
        for (table, i, d) in slots {
            pt.write(table, i, d);
        }
        self.armed = false;
        Ok(TlbFlush::barrier_only(self.origin, self.cause))
    }

    /// Gives up: the range stays unmapped. A table built for the make step was never reachable
    /// and is freed at once.
    pub fn abandon(mut self, frames: &dyn FrameSource) {
        self.armed = false;
        if let Some(t) = self.new_table.take() {
            frames.free_frame(t);
        }
    }
}

impl Drop for PendingMake {
    fn drop(&mut self) {
        if self.armed {
            log::error!(
                "break-before-make abandoned without its make step: {:?}",
                self.writes
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Level arithmetic
// ---------------------------------------------------------------------------------------------

const fn shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

const fn span(level: u8) -> u64 {
    1 << shift(level)
}

const fn index(off: u64, level: u8) -> usize {
    ((off >> shift(level)) & (ENTRIES as u64 - 1)) as usize
}

/// Index of the entry for `va` at `level` (0..=3) in a 4-level, 4 KiB-granule walk.
pub const fn table_index(va: VirtAddr, level: u8) -> usize {
    index(va.0 & (USER_VA_END - 1), level)
}

/// Calls `f(index, entry_base, clipped_start, clipped_end)` for each entry of a level-`level`
/// table overlapping `[s, e)` (offsets within the half).
fn for_each_entry(
    level: u8,
    s: u64,
    e: u64,
    mut f: impl FnMut(usize, u64, u64, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let sz = span(level);
    let mut cur = s;
    while cur < e {
        let base = cur & !(sz - 1);
        let next = (base + sz).min(e);
        f(index(cur, level), base, cur, next)?;
        cur = next;
    }
    Ok(())
}

/// Orders the initialisation of a new table before the store that links it, for every walker.
fn publish_fence() {
    #[cfg(target_os = "none")]
    crate::mm::tlb::arch::dmb_ishst();
    #[cfg(not(target_os = "none"))]
    core::sync::atomic::fence(Ordering::Release);
}

/// Accumulates the extent of the leaves an operation changed.
struct Changes {
    first: u64,
    end: u64,
    all_l2_blocks: bool,
    /// Bit `l` set: a level-`l` leaf changed.
    levels: u8,
    leaf_only: bool,
    upgrade_only: bool,
    freed: Vec<PhysAddr>,
}

impl Changes {
    /// `upgrade_candidate`: the operation only changes permissions, so the result is
    /// upgrade-only unless a change says otherwise.
    fn new(upgrade_candidate: bool) -> Self {
        Self {
            first: u64::MAX,
            end: 0,
            all_l2_blocks: true,
            levels: 0,
            leaf_only: true,
            upgrade_only: upgrade_candidate,
            freed: Vec::new(),
        }
    }

    fn leaf(&mut self, base: u64, level: u8) {
        self.first = self.first.min(base);
        self.end = self.end.max(base + span(level));
        self.all_l2_blocks &= level == 2;
        self.levels |= 1 << level;
    }

    fn any(&self) -> bool {
        self.first < self.end
    }

    fn into_flush(self, pt: &PageTable<'_>, cause: FlushCause) -> TlbFlush {
        if !self.any() {
            return if self.freed.is_empty() {
                TlbFlush::nothing(pt.root, cause)
            } else {
                // Tables unlinked without leaf changes cannot happen; stay safe anyway.
                TlbFlush::invalidate(
                    pt.root,
                    cause,
                    Invalidation {
                        range: FlushRange::All,
                        leaf_only: false,
                        stride: Stride::Page,
                        level: None,
                    },
                    false,
                    self.freed,
                )
            };
        }
        let range = FlushRange::pages(pt.va(self.first), (self.end - self.first) / PAGE_SIZE)
            .unwrap_or(FlushRange::All);
        let stride = if self.all_l2_blocks {
            Stride::Block2M
        } else {
            Stride::Page
        };
        let inval = Invalidation {
            range,
            leaf_only: self.leaf_only && self.freed.is_empty(),
            stride,
            level: (self.levels.count_ones() == 1).then(|| self.levels.trailing_zeros() as u8),
        };
        TlbFlush::invalidate(pt.root, cause, inval, self.upgrade_only, self.freed)
    }
}

// ---------------------------------------------------------------------------------------------
// The page table
// ---------------------------------------------------------------------------------------------

/// A four-level stage-1 translation table rooted at one frame.
///
/// It does not own its frames in the RAII sense: dropping it frees nothing (the kernel's TTBR1
/// tables live forever); [`PageTable::teardown`] returns a flush that frees them all.
pub struct PageTable<'a> {
    root: PhysAddr,
    half: VaHalf,
    mem: &'a dyn PhysMem,
    frames: &'a dyn FrameSource,
}

impl fmt::Debug for PageTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable")
            .field("root", &self.root)
            .field("half", &self.half)
            .finish()
    }
}

impl<'a> PageTable<'a> {
    /// A new, empty table for `half`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfFrames`] if no root frame can be allocated.
    pub fn new(
        mem: &'a dyn PhysMem,
        frames: &'a dyn FrameSource,
        half: VaHalf,
    ) -> Result<Self, Error> {
        let root = frames.alloc_zeroed_frame().ok_or(Error::OutOfFrames)?;
        Ok(Self {
            root,
            half,
            mem,
            frames,
        })
    }

    /// A view of an existing table.
    ///
    /// # Safety
    ///
    /// `root` must be the root frame of a well-formed table built by this module for `half`,
    /// whose frames all came from `frames`, and no other `PageTable` may mutate it while this one
    /// is used.
    pub const unsafe fn from_root(
        root: PhysAddr,
        half: VaHalf,
        mem: &'a dyn PhysMem,
        frames: &'a dyn FrameSource,
    ) -> Self {
        Self {
            root,
            half,
            mem,
            frames,
        }
    }

    /// Physical address of the root (L0) table: the TTBR base address.
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// The VA half this table translates.
    pub const fn half(&self) -> VaHalf {
        self.half
    }

    // -- raw access ----------------------------------------------------------------------------

    fn slot(&self, table: PhysAddr, i: usize) -> &AtomicU64 {
        assert!(i < ENTRIES);
        let base = self.mem.table_ptr(table).cast::<AtomicU64>();
        // SAFETY: `table` is a table frame of this page table (reached from the root or just
        // allocated from `frames`), so by the `PhysMem` contract `base` points at 512 valid,
        // aligned u64s that no Rust reference aliases; `AtomicU64` has the layout of `u64`, and
        // all accesses go through atomics because hardware walkers read concurrently. `i < 512`.
        unsafe { &*base.add(i) }
    }

    fn read(&self, table: PhysAddr, i: usize) -> Descriptor {
        Descriptor(self.slot(table, i).load(Ordering::Relaxed))
    }

    fn write(&self, table: PhysAddr, i: usize, d: Descriptor) {
        self.slot(table, i).store(d.0, Ordering::Relaxed);
    }

    fn va(&self, off: u64) -> VirtAddr {
        VirtAddr(self.half.base() + off)
    }

    fn offsets(&self, r: VaRange) -> Result<(u64, u64), Error> {
        let base = self.half.base();
        let ok = match self.half {
            VaHalf::Lower => r.last().0 < USER_VA_END,
            VaHalf::Upper => r.start().0 >= base,
        };
        if !ok {
            return Err(Error::AddressRange);
        }
        let s = r.start().0 - base;
        Ok((s, s + r.len()))
    }

    fn offset(&self, va: VirtAddr) -> Option<u64> {
        match self.half {
            VaHalf::Lower if va.0 < USER_VA_END => Some(va.0),
            VaHalf::Upper if va.0 >= UPPER_VA_START => Some(va.0 - UPPER_VA_START),
            _ => None,
        }
    }

    /// The table and index holding the level-`level` entry for `off`, if every level above is a
    /// table.
    fn slot_at(&self, off: u64, level: u8) -> Option<(PhysAddr, usize)> {
        let mut table = self.root;
        for l in 0..level {
            let d = self.read(table, index(off, l));
            if d.kind(l) != DescKind::Table {
                return None;
            }
            table = d.addr();
        }
        Some((table, index(off, level)))
    }

    /// The leaf for `off`: (table, index, level, descriptor).
    fn leaf_at(&self, off: u64) -> Option<(PhysAddr, usize, u8, Descriptor)> {
        let mut table = self.root;
        for level in 0..=3 {
            let i = index(off, level);
            let d = self.read(table, i);
            match d.kind(level) {
                DescKind::Table => table = d.addr(),
                DescKind::Block | DescKind::Page => return Some((table, i, level, d)),
                DescKind::Invalid => return None,
            }
        }
        None
    }

    fn table_is_empty(&self, table: PhysAddr) -> bool {
        (0..ENTRIES).all(|i| !self.read(table, i).is_valid())
    }

    // -- translate -----------------------------------------------------------------------------

    /// The translation of `va`, if mapped.
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let off = self.offset(va)?;
        let (_, _, level, d) = self.leaf_at(off)?;
        Some(Translation {
            pa: PhysAddr(d.addr().0 + (off & (span(level) - 1))),
            attrs: d.attrs(),
            level,
            descriptor: d,
        })
    }

    // -- map -----------------------------------------------------------------------------------

    /// Maps `range` to the physical range starting at `pa` with `attrs`. With `prefer_blocks`,
    /// every 2 MiB-aligned, fully covered 2 MiB chunk whose PA is 2 MiB-aligned (and whose level-2
    /// entry is empty) becomes one block; everything else uses 4 KiB pages.
    ///
    /// Only invalid entries are written, so the returned token needs just a barrier.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] (PA), [`Error::AddressRange`], [`Error::InvalidAttrs`],
    /// [`Error::AlreadyMapped`] if any page of the range is mapped, [`Error::OutOfFrames`] (then
    /// nothing was allocated or written).
    pub fn map(
        &mut self,
        range: VaRange,
        pa: PhysAddr,
        attrs: MapAttrs,
        prefer_blocks: bool,
    ) -> Result<TlbFlush, Error> {
        attrs.validate()?;
        if !pa.is_aligned(PAGE_SIZE) {
            return Err(Error::Misaligned);
        }
        if pa
            .0
            .checked_add(range.len())
            .is_none_or(|end| end > PA_LIMIT)
        {
            return Err(Error::AddressRange);
        }
        let (s, e) = self.offsets(range)?;
        let delta = pa.0.wrapping_sub(s);
        let mut needed = 0;
        self.map_check(Some(self.root), 0, s, e, delta, prefer_blocks, &mut needed)?;
        let mut pool = Vec::with_capacity(needed);
        for _ in 0..needed {
            match self.frames.alloc_zeroed_frame() {
                Some(f) => pool.push(f),
                None => {
                    for f in pool {
                        self.frames.free_frame(f);
                    }
                    return Err(Error::OutOfFrames);
                }
            }
        }
        let bits = attrs.leaf_bits();
        self.map_apply(self.root, 0, s, e, delta, bits, prefer_blocks, &mut pool);
        debug_assert!(pool.is_empty());
        Ok(TlbFlush::barrier_only(self.root, FlushCause::Map))
    }

    fn can_block(level: u8, cs: u64, ce: u64, delta: u64, prefer: bool) -> bool {
        prefer
            && level == 2
            && cs.is_multiple_of(span(2))
            && ce - cs == span(2)
            && cs.wrapping_add(delta).is_multiple_of(span(2))
    }

    #[allow(clippy::too_many_arguments)]
    fn map_check(
        &self,
        table: Option<PhysAddr>,
        level: u8,
        s: u64,
        e: u64,
        delta: u64,
        prefer: bool,
        needed: &mut usize,
    ) -> Result<(), Error> {
        for_each_entry(level, s, e, |i, _base, cs, ce| {
            let d = table.map_or(Descriptor::INVALID, |t| self.read(t, i));
            match d.kind(level) {
                DescKind::Block | DescKind::Page => Err(Error::AlreadyMapped(self.va(cs))),
                DescKind::Table => {
                    self.map_check(Some(d.addr()), level + 1, cs, ce, delta, prefer, needed)
                }
                DescKind::Invalid
                    if level == 3 || Self::can_block(level, cs, ce, delta, prefer) =>
                {
                    Ok(())
                }
                DescKind::Invalid => {
                    *needed += 1;
                    self.map_check(None, level + 1, cs, ce, delta, prefer, needed)
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn map_apply(
        &self,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        delta: u64,
        bits: u64,
        prefer: bool,
        pool: &mut Vec<PhysAddr>,
    ) {
        let r = for_each_entry(level, s, e, |i, _base, cs, ce| {
            let d = self.read(table, i);
            let pa = PhysAddr(cs.wrapping_add(delta));
            match d.kind(level) {
                DescKind::Table => {
                    self.map_apply(d.addr(), level + 1, cs, ce, delta, bits, prefer, pool)
                }
                DescKind::Invalid if level == 3 => {
                    self.write(table, i, Descriptor(pa.0 | 0b11 | bits))
                }
                DescKind::Invalid if Self::can_block(level, cs, ce, delta, prefer) => {
                    self.write(table, i, Descriptor(pa.0 | 0b01 | bits));
                }
                DescKind::Invalid => {
                    let t = pool.pop().expect("map_check counted every table");
                    publish_fence();
                    self.write(table, i, Descriptor::table(t));
                    self.map_apply(t, level + 1, cs, ce, delta, bits, prefer, pool);
                }
                DescKind::Block | DescKind::Page => {
                    unreachable!("map_check rejected mapped entries")
                }
            }
            Ok(())
        });
        debug_assert!(r.is_ok());
    }

    // -- checks shared by unmap / protect / remap -----------------------------------------------

    /// Every page of `[s, e)` is mapped, and every leaf is either entirely inside or outside.
    fn check_mapped(&self, table: PhysAddr, level: u8, s: u64, e: u64) -> Result<(), Error> {
        self.check_leaves(table, level, s, e, false)
    }

    /// Every leaf overlapping `[s, e)` lies entirely inside it; with `holes`, unmapped pages are
    /// allowed, otherwise [`Error::NotMapped`].
    fn check_leaves(
        &self,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        holes: bool,
    ) -> Result<(), Error> {
        for_each_entry(level, s, e, |i, base, cs, ce| {
            let d = self.read(table, i);
            match d.kind(level) {
                DescKind::Invalid if holes => Ok(()),
                DescKind::Invalid => Err(Error::NotMapped(self.va(cs))),
                DescKind::Table => self.check_leaves(d.addr(), level + 1, cs, ce, holes),
                DescKind::Block | DescKind::Page if cs != base || ce != base + span(level) => {
                    Err(Error::BlockInTheWay(self.va(base)))
                }
                DescKind::Block | DescKind::Page => Ok(()),
            }
        })
    }

    /// Calls `f(table, index, level, entry_base, descriptor)` for each leaf in `[s, e)` (which
    /// [`Self::check_mapped`] accepted).
    fn for_each_leaf(
        &self,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        f: &mut dyn FnMut(PhysAddr, usize, u8, u64, Descriptor) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for_each_entry(level, s, e, |i, base, cs, ce| {
            let d = self.read(table, i);
            match d.kind(level) {
                DescKind::Table => self.for_each_leaf(d.addr(), level + 1, cs, ce, f),
                DescKind::Block | DescKind::Page => f(table, i, level, base, d),
                DescKind::Invalid => Ok(()),
            }
        })
    }

    // -- unmap ---------------------------------------------------------------------------------

    /// Unmaps every page of `range`. Tables left empty are unlinked and handed to the token, to be
    /// freed after the flush (which then also invalidates walk caches).
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::NotMapped`] if any page is not mapped,
    /// [`Error::BlockInTheWay`] if the range covers part of a block.
    pub fn unmap(&mut self, range: VaRange) -> Result<TlbFlush, Error> {
        self.unmap_leaves(range, false)
    }

    fn unmap_leaves(&mut self, range: VaRange, holes: bool) -> Result<TlbFlush, Error> {
        let (s, e) = self.offsets(range)?;
        self.check_leaves(self.root, 0, s, e, holes)?;
        let mut ch = Changes::new(false);
        self.unmap_apply(self.root, 0, s, e, &mut ch);
        Ok(ch.into_flush(self, FlushCause::Unmap))
    }

    fn unmap_apply(&self, table: PhysAddr, level: u8, s: u64, e: u64, ch: &mut Changes) {
        let r = for_each_entry(level, s, e, |i, base, cs, ce| {
            let d = self.read(table, i);
            match d.kind(level) {
                DescKind::Table => {
                    self.unmap_apply(d.addr(), level + 1, cs, ce, ch);
                    if self.table_is_empty(d.addr()) {
                        self.write(table, i, Descriptor::INVALID);
                        ch.freed.push(d.addr());
                        ch.leaf_only = false;
                    }
                }
                DescKind::Block | DescKind::Page => {
                    self.write(table, i, Descriptor::INVALID);
                    ch.leaf(base, level);
                }
                DescKind::Invalid => {}
            }
            Ok(())
        });
        debug_assert!(r.is_ok());
    }

    /// Unmaps whatever is mapped in `range`, leaving holes alone — the zap of a batch
    /// ([`AddressSpace::batch`](crate::mm::address_space::AddressSpace::batch)), which may find
    /// that a concurrent batch already cleared some or all of it. A token that changed nothing
    /// needs no flush of its own; the batch decides whether another CPU's pending flush must be
    /// waited for by flushing anyway.
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::BlockInTheWay`] if the range covers part of a block.
    pub fn unmap_present(&mut self, range: VaRange) -> Result<TlbFlush, Error> {
        self.unmap_leaves(range, true)
    }

    /// Removes write permission from every writable leaf in `range`, in place, leaving holes and
    /// read-only leaves alone: what fork does to the parent before its pages are shared
    /// copy-on-write (Linux's `copy_present_pte` → `ptep_set_wrprotect`).
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::BlockInTheWay`].
    pub fn write_protect(&mut self, range: VaRange) -> Result<TlbFlush, Error> {
        let (s, e) = self.offsets(range)?;
        self.check_leaves(self.root, 0, s, e, true)?;
        let mut ch = Changes::new(false);
        self.for_each_leaf(self.root, 0, s, e, &mut |table, i, level, base, d| {
            let perms = d.attrs().perms;
            if perms.contains(Perms::WRITE) {
                self.write(table, i, d.with_perms(perms - Perms::WRITE));
                ch.leaf(base, level);
            }
            Ok(())
        })?;
        Ok(ch.into_flush(self, FlushCause::Protect))
    }

    // -- move ----------------------------------------------------------------------------------

    /// Moves every mapping of `src` to the same offsets from `dst` (mremap): leaves keep their
    /// frames, attributes and sizes; a level-3 table whose whole 2 MiB lies in `src` moves as one
    /// table entry when `dst` is 2 MiB-aligned with it (Linux's `move_normal_pmd`). `dst` must be
    /// unmapped. Source tables left empty are unlinked and freed by the flush.
    ///
    /// The destination entries are new (invalid → valid) and the source entries invalid
    /// afterwards, so the token invalidates the source range only — and must complete before
    /// anything else is mapped there, or a TLB could still send the old address to the moved
    /// page.
    ///
    /// # Errors
    ///
    /// [`Error::Misaligned`] (`dst`, or a block that would land misaligned),
    /// [`Error::AddressRange`], [`Error::MoveOverlap`], [`Error::NotMapped`] (a hole in `src`),
    /// [`Error::BlockInTheWay`], [`Error::AlreadyMapped`] (something in the destination),
    /// [`Error::OutOfFrames`] (then the source is untouched; empty destination tables may have
    /// been linked).
    pub fn move_range(&mut self, src: VaRange, dst: VirtAddr) -> Result<TlbFlush, Error> {
        if !dst.0.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Misaligned);
        }
        let dst_range = VaRange::from_pages(dst, src.pages())?;
        let (s, e) = self.offsets(src)?;
        let (ds, de) = self.offsets(dst_range)?;
        if ds < e && s < de {
            return Err(Error::MoveOverlap);
        }
        self.check_mapped(self.root, 0, s, e)?;
        self.for_each_leaf(self.root, 0, ds, de, &mut |_, _, _, base, _| {
            Err(Error::AlreadyMapped(self.va(base.max(ds))))
        })?;
        let delta = ds.wrapping_sub(s);
        // What moves: whole level-3 tables where both sides allow it, leaves elsewhere.
        let mut moves: Vec<(u64, u8, Descriptor, bool)> = Vec::new();
        self.collect_moves(self.root, 0, s, e, delta, &mut moves)?;
        // Make every destination slot reachable first, so a lack of frames changes nothing that
        // is mapped.
        let mut slots = Vec::with_capacity(moves.len());
        for &(off, level, _, _) in &moves {
            slots.push(self.ensure_slot(off.wrapping_add(delta), level)?);
        }
        let mut ch = Changes::new(false);
        for (&(off, level, d, whole_table), (table, i)) in moves.iter().zip(slots) {
            self.write(table, i, d);
            let (st, si) = self
                .slot_at(off, level)
                .expect("collect_moves found this entry");
            self.write(st, si, Descriptor::INVALID);
            ch.leaf(off, level);
            if whole_table {
                // A moved table: its 512 page entries may be cached under the old VAs, and the
                // walk caches hold the old level-2 entry.
                ch.all_l2_blocks = false;
                ch.leaf_only = false;
            }
        }
        self.prune_empty(self.root, 0, s, e, &mut ch);
        Ok(ch.into_flush(self, FlushCause::Move))
    }

    /// Collects `(source offset, level, descriptor, whole table)` for each entry that moves.
    fn collect_moves(
        &self,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        delta: u64,
        out: &mut Vec<(u64, u8, Descriptor, bool)>,
    ) -> Result<(), Error> {
        for_each_entry(level, s, e, |i, base, cs, ce| {
            let d = self.read(table, i);
            match d.kind(level) {
                DescKind::Table
                    if level == 2
                        && cs == base
                        && ce == base + span(2)
                        && base.wrapping_add(delta).is_multiple_of(span(2)) =>
                {
                    out.push((base, 2, d, true));
                    Ok(())
                }
                DescKind::Table => self.collect_moves(d.addr(), level + 1, cs, ce, delta, out),
                DescKind::Block | DescKind::Page => {
                    if !base.wrapping_add(delta).is_multiple_of(span(level)) {
                        return Err(Error::Misaligned);
                    }
                    out.push((base, level, d, false));
                    Ok(())
                }
                DescKind::Invalid => Ok(()),
            }
        })
    }

    /// The slot for the level-`level` entry of `off`, creating the tables above it. Only called
    /// on offsets known to be unmapped.
    fn ensure_slot(&self, off: u64, level: u8) -> Result<(PhysAddr, usize), Error> {
        let mut table = self.root;
        for l in 0..level {
            let i = index(off, l);
            let d = self.read(table, i);
            table = match d.kind(l) {
                DescKind::Table => d.addr(),
                DescKind::Invalid => {
                    let t = self.frames.alloc_zeroed_frame().ok_or(Error::OutOfFrames)?;
                    publish_fence();
                    self.write(table, i, Descriptor::table(t));
                    t
                }
                DescKind::Block | DescKind::Page => return Err(Error::AlreadyMapped(self.va(off))),
            };
        }
        // The slot itself must be empty: even an empty table there may be cached by a walker,
        // and writing over it would need its own invalidation.
        if self.read(table, index(off, level)).is_valid() {
            return Err(Error::AlreadyMapped(self.va(off)));
        }
        Ok((table, index(off, level)))
    }

    /// Unlinks the tables in `[s, e)` that hold no valid entry, handing them to `ch`.
    fn prune_empty(&self, table: PhysAddr, level: u8, s: u64, e: u64, ch: &mut Changes) {
        let r = for_each_entry(level, s, e, |i, _, cs, ce| {
            let d = self.read(table, i);
            if d.kind(level) == DescKind::Table {
                self.prune_empty(d.addr(), level + 1, cs, ce, ch);
                if self.table_is_empty(d.addr()) {
                    self.write(table, i, Descriptor::INVALID);
                    ch.freed.push(d.addr());
                    ch.leaf_only = false;
                }
            }
            Ok(())
        });
        debug_assert!(r.is_ok());
    }

    // -- protect -------------------------------------------------------------------------------

    /// Sets the permissions of every mapping in `range` to `perms`, in place (memory type,
    /// shareability and nG are kept). The token records whether the change was only an upgrade.
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::NotMapped`], [`Error::BlockInTheWay`],
    /// [`Error::InvalidAttrs`] (e.g. W^X, or execute on device memory).
    pub fn protect(&mut self, range: VaRange, perms: Perms) -> Result<TlbFlush, Error> {
        let (s, e) = self.offsets(range)?;
        self.check_mapped(self.root, 0, s, e)?;
        self.for_each_leaf(self.root, 0, s, e, &mut |_, _, _, _, d| {
            Ok(d.attrs().with_perms(perms).validate()?)
        })?;
        let mut ch = Changes::new(true);
        self.for_each_leaf(self.root, 0, s, e, &mut |table, i, level, base, d| {
            let new = d.with_perms(perms);
            if new != d {
                ch.upgrade_only &= perms.is_upgrade_of(d.attrs().perms);
                self.write(table, i, new);
                ch.leaf(base, level);
            }
            Ok(())
        })?;
        Ok(ch.into_flush(self, FlushCause::Protect))
    }

    /// Adds `add` to the permissions of the leaf mapping `va` (page or whole block), in place —
    /// the write-fault upgrade path. If the leaf already allows them, the entry is left alone and
    /// a one-page flush is returned anyway (cause [`FlushCause::SpuriousFault`]): the fault came
    /// from a stale TLB entry, which for a secondary TLB nothing else would ever remove.
    ///
    /// Returns the token (upgrade-only in both cases) and whether the entry changed.
    ///
    /// # Errors
    ///
    /// [`Error::NotMapped`], [`Error::InvalidAttrs`] (e.g. write to an executable page).
    pub fn grant(&mut self, va: VirtAddr, add: Perms) -> Result<(TlbFlush, bool), Error> {
        let off = self.offset(va).ok_or(Error::AddressRange)?;
        let (table, i, level, d) = self.leaf_at(off).ok_or(Error::NotMapped(va))?;
        let old = d.attrs().perms;
        let perms = old | add;
        if perms == old {
            let inval = Invalidation {
                range: FlushRange::page(va),
                leaf_only: true,
                stride: Stride::Page,
                level: Some(level),
            };
            return Ok((
                TlbFlush::invalidate(
                    self.root,
                    FlushCause::SpuriousFault,
                    inval,
                    true,
                    Vec::new(),
                ),
                false,
            ));
        }
        d.attrs().with_perms(perms).validate()?;
        self.write(table, i, d.with_perms(perms));
        let mut ch = Changes::new(true);
        ch.leaf(off & !(span(level) - 1), level);
        Ok((ch.into_flush(self, FlushCause::FaultUpgrade), true))
    }

    /// Sets the access flag of the leaf mapping `va` if clear (an access-flag fault). AF = 0
    /// entries are never cached by a TLB, so only a barrier is needed.
    ///
    /// # Errors
    ///
    /// [`Error::NotMapped`].
    pub fn set_access_flag(&mut self, va: VirtAddr) -> Result<(TlbFlush, bool), Error> {
        let off = self.offset(va).ok_or(Error::AddressRange)?;
        let (table, i, _, d) = self.leaf_at(off).ok_or(Error::NotMapped(va))?;
        if d.flags().contains(PteFlags::AF) {
            return Ok((
                TlbFlush::nothing(self.root, FlushCause::FaultUpgrade),
                false,
            ));
        }
        self.write(table, i, Descriptor(d.0 | PteFlags::AF.bits()));
        Ok((
            TlbFlush::barrier_only(self.root, FlushCause::FaultUpgrade),
            true,
        ))
    }

    // -- break-before-make operations ------------------------------------------------------------

    /// Moves every mapping in `range` to the physical range starting at `new_pa`, keeping
    /// attributes and block sizes. Break-before-make: the entries are invalidated now; the new
    /// ones are written by the returned [`Bbm`]'s make step after its flush.
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::Misaligned`] (`new_pa` not page-aligned, or a block's
    /// new address not 2 MiB-aligned), [`Error::NotMapped`], [`Error::BlockInTheWay`].
    pub fn remap(&mut self, range: VaRange, new_pa: PhysAddr) -> Result<Bbm, Error> {
        if !new_pa.is_aligned(PAGE_SIZE) {
            return Err(Error::Misaligned);
        }
        if new_pa
            .0
            .checked_add(range.len())
            .is_none_or(|end| end > PA_LIMIT)
        {
            return Err(Error::AddressRange);
        }
        let (s, e) = self.offsets(range)?;
        self.check_mapped(self.root, 0, s, e)?;
        let delta = new_pa.0.wrapping_sub(s);
        self.for_each_leaf(self.root, 0, s, e, &mut |_, _, level, base, _| {
            if !base.wrapping_add(delta).is_multiple_of(span(level)) {
                Err(Error::Misaligned)
            } else {
                Ok(())
            }
        })?;
        let mut ch = Changes::new(false);
        let mut writes = Vec::new();
        self.for_each_leaf(self.root, 0, s, e, &mut |table, i, level, base, d| {
            self.write(table, i, Descriptor::INVALID);
            ch.leaf(base, level);
            writes.push(MakeWrite {
                off: base,
                level,
                desc: d.with_addr(PhysAddr(base.wrapping_add(delta))),
            });
            Ok(())
        })?;
        let flush = ch.into_flush(self, FlushCause::Remap);
        Ok(self.bbm(flush, FlushCause::Remap, writes, None))
    }

    fn bbm(
        &self,
        flush: TlbFlush,
        cause: FlushCause,
        writes: Vec<MakeWrite>,
        new_table: Option<PhysAddr>,
    ) -> Bbm {
        let make = PendingMake {
            flush_id: flush.id(),
            origin: self.root,
            half: self.half,
            cause,
            writes,
            new_table,
            armed: true,
        };
        Bbm { flush, make }
    }

    /// Replaces the block mapping `va` by a table of 512 entries with the same output and
    /// attributes (pages for a 2 MiB block, 2 MiB blocks for a 1 GiB one). Break-before-make:
    /// the new table is built now but linked by the make step after the flush.
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::NotMapped`], [`Error::NotABlock`] (mapped by pages),
    /// [`Error::OutOfFrames`].
    pub fn split_block(&mut self, va: VirtAddr) -> Result<Bbm, Error> {
        let off = self.offset(va).ok_or(Error::AddressRange)?;
        let (table, i, level, d) = self.leaf_at(off).ok_or(Error::NotMapped(va))?;
        if d.kind(level) != DescKind::Block {
            return Err(Error::NotABlock(va));
        }
        let base = off & !(span(level) - 1);
        let t = self.frames.alloc_zeroed_frame().ok_or(Error::OutOfFrames)?;
        let child = level + 1;
        for j in 0..ENTRIES {
            let pa = PhysAddr(d.addr().0 + j as u64 * span(child));
            let cd = if child == 3 {
                d.block_to_page(pa)
            } else {
                d.with_addr(pa)
            };
            self.write(t, j, cd);
        }
        self.write(table, i, Descriptor::INVALID);
        let mut ch = Changes::new(false);
        ch.leaf(base, level);
        let flush = ch.into_flush(self, FlushCause::SplitBlock);
        let w = MakeWrite {
            off: base,
            level,
            desc: Descriptor::table(t),
        };
        Ok(self.bbm(flush, FlushCause::SplitBlock, alloc::vec![w], Some(t)))
    }

    /// Replaces the 512 pages of the 2 MiB region containing `va` by one block, at `new_pa` or —
    /// when `None` — at the pages' own output if they are physically contiguous and 2 MiB-aligned.
    /// The pages must all be mapped with identical attributes. Break-before-make: the level-3
    /// table is unlinked now and freed by the flush; the block is written by the make step.
    ///
    /// # Errors
    ///
    /// [`Error::AddressRange`], [`Error::NotMapped`], [`Error::NotMergeable`],
    /// [`Error::Misaligned`] (`new_pa` not 2 MiB-aligned).
    pub fn merge_to_block(&mut self, va: VirtAddr, new_pa: Option<PhysAddr>) -> Result<Bbm, Error> {
        let off = self.offset(va).ok_or(Error::AddressRange)?;
        let base = off & !(span(2) - 1);
        let bva = self.va(base);
        if new_pa.is_some_and(|p| !p.is_aligned(span(2)) || p.0 + span(2) > PA_LIMIT) {
            return Err(Error::Misaligned);
        }
        let (table, i) = self.slot_at(base, 2).ok_or(Error::NotMergeable(bva))?;
        let d = self.read(table, i);
        match d.kind(2) {
            DescKind::Invalid => return Err(Error::NotMapped(bva)),
            DescKind::Block | DescKind::Page => return Err(Error::NotMergeable(bva)),
            DescKind::Table => {}
        }
        let l3 = d.addr();
        let first = self.read(l3, 0);
        for j in 0..ENTRIES {
            let p = self.read(l3, j);
            if p.kind(3) != DescKind::Page {
                return Err(Error::NotMapped(self.va(base + j as u64 * PAGE_SIZE)));
            }
            let contiguous = p.addr().0 == first.addr().0 + j as u64 * PAGE_SIZE;
            if p.leaf_attr_bits() != first.leaf_attr_bits() || (new_pa.is_none() && !contiguous) {
                return Err(Error::NotMergeable(bva));
            }
        }
        let pa = match new_pa {
            Some(p) => p,
            None if first.addr().is_aligned(span(2)) => first.addr(),
            None => return Err(Error::NotMergeable(bva)),
        };
        self.write(table, i, Descriptor::INVALID);
        let mut ch = Changes::new(false);
        ch.leaf(base, 2);
        ch.all_l2_blocks = false; // 512 page entries may be cached, not one block
        ch.freed.push(l3);
        let flush = ch.into_flush(self, FlushCause::MergeBlock);
        let w = MakeWrite {
            off: base,
            level: 2,
            desc: first.page_to_block(pa),
        };
        Ok(self.bbm(flush, FlushCause::MergeBlock, alloc::vec![w], None))
    }

    // -- teardown ------------------------------------------------------------------------------

    /// Consumes the table: every table frame, root included, is handed to an address-space-wide
    /// flush that frees them once complete. Mapped (leaf) memory is not touched.
    pub fn teardown(self) -> TlbFlush {
        let mut freed = Vec::new();
        self.collect_tables(self.root, 0, &mut freed);
        freed.push(self.root);
        let inval = Invalidation {
            range: FlushRange::All,
            leaf_only: false,
            stride: Stride::Page,
            level: None,
        };
        TlbFlush::invalidate(self.root, FlushCause::Teardown, inval, false, freed)
    }

    fn collect_tables(&self, table: PhysAddr, level: u8, out: &mut Vec<PhysAddr>) {
        if level == 3 {
            return;
        }
        for i in 0..ENTRIES {
            let d = self.read(table, i);
            if d.kind(level) == DescKind::Table {
                self.collect_tables(d.addr(), level + 1, out);
                out.push(d.addr());
            }
        }
    }

    /// Number of table frames reachable from the root, root included (for tests and statistics).
    pub fn table_frames(&self) -> usize {
        let mut v = Vec::new();
        self.collect_tables(self.root, 0, &mut v);
        v.len() + 1
    }
}
