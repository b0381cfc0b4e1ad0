//! CPU TLBI planning (pure): which `TLBI … IS` instructions invalidate one flush's
//! [`Invalidation`] on every CPU, and their operand encodings.

use crate::mm::{
    addr::{PAGE_SHIFT, PAGE_SIZE, VirtAddr},
    tlb::token::{Invalidation, Stride},
};

/// Pages in a 2 MiB block.
const BLOCK_PAGES: u64 = 512;

/// CPU TLB-maintenance features that change the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TlbFeatures {
    /// FEAT_TLBIRANGE: `TLBI RVA*` range instructions.
    pub range: bool,
}

impl TlbFeatures {
    /// Decodes ID_AA64ISAR0_EL1: field TLB, bits \[59:56\], is `0b0010` when both the
    /// Outer Shareable and the range TLBI instructions are implemented.
    pub const fn from_isar0(isar0: u64) -> Self {
        Self {
            range: (isar0 >> 56) & 0xF >= 0b0010,
        }
    }
}

/// Without FEAT_TLBIRANGE, flushes needing this many TLBIs or more become one ASID-wide TLBI
/// (Linux's `MAX_TLBI_OPS`; the same 2 MiB threshold the SMMU driver uses).
pub const MAX_TLBI_OPS: u64 = 512;
/// With FEAT_TLBIRANGE, the most pages the plan covers with range instructions
/// ((NUM+1 = 32) · 2^(5·3+1)); beyond it, one ASID-wide TLBI.
pub const MAX_TLBI_RANGE_PAGES: u64 = 32 << 16;

/// Which TLB entries a flush targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbScope {
    /// Non-global entries of one ASID (TTBR0 address spaces).
    Asid(u16),
    /// Entries of every ASID (kernel TTBR1 tables with global entries). Never reported to
    /// secondary TLBs.
    Global,
}

/// A TLB maintenance instruction (all Inner Shareable: broadcast to every CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbiKind {
    /// By VA and ASID, last level only.
    Vale1is,
    /// By VA and ASID, all levels (walk caches too).
    Vae1is,
    /// Range by VA and ASID, last level only (FEAT_TLBIRANGE).
    Rvale1is,
    /// Range by VA and ASID, all levels (FEAT_TLBIRANGE).
    Rvae1is,
    /// Everything of one ASID.
    Aside1is,
    /// By VA, any ASID, last level only.
    Vaale1is,
    /// By VA, any ASID, all levels.
    Vaae1is,
    /// Range by VA, any ASID, last level only.
    Rvaale1is,
    /// Range by VA, any ASID, all levels.
    Rvaae1is,
    /// Everything at EL1&0 (current VMID).
    Vmalle1is,
}

impl TlbiKind {
    /// Whether this is a FEAT_TLBIRANGE instruction.
    pub const fn is_range(self) -> bool {
        matches!(
            self,
            TlbiKind::Rvale1is | TlbiKind::Rvae1is | TlbiKind::Rvaale1is | TlbiKind::Rvaae1is
        )
    }
}

/// One TLBI with its register operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbiOp {
    /// The instruction.
    pub kind: TlbiKind,
    /// The Xt operand.
    pub operand: u64,
}

const ASID_SHIFT: u32 = 48;
const VA_OPERAND_MASK: u64 = (1 << 44) - 1;
const RANGE_BADDR_MASK: u64 = (1 << 37) - 1;
/// TG field of a range operand for the 4 KiB granule.
const RANGE_TG_4K: u64 = 0b01;

/// Operand of a TLBI by VA: ASID in \[63:48\], VA\[55:12\] in \[43:0\] (Arm ARM C5.5, TLBI
/// operand formats; TTL \[47:44\] left 0 = no level hint).
pub const fn va_operand(asid: u16, va: VirtAddr) -> u64 {
    ((asid as u64) << ASID_SHIFT) | ((va.0 >> PAGE_SHIFT) & VA_OPERAND_MASK)
}

/// Operand of a TLBI by ASID: ASID in \[63:48\].
pub const fn asid_operand(asid: u16) -> u64 {
    (asid as u64) << ASID_SHIFT
}

/// Operand of a range TLBI: ASID \[63:48\], TG \[47:46\] (4 KiB), SCALE \[45:44\], NUM \[43:39\],
/// TTL \[38:37\] (0: any level), BADDR \[36:0\] = VA\[48:12\]. It covers
/// (NUM+1)·2^(5·SCALE+1) pages from BADDR.
pub const fn range_operand(asid: u16, va: VirtAddr, scale: u8, num: u8) -> u64 {
    ((asid as u64) << ASID_SHIFT)
        | (RANGE_TG_4K << 46)
        | (((scale & 0b11) as u64) << 44)
        | (((num & 0x1F) as u64) << 39)
        | ((va.0 >> PAGE_SHIFT) & RANGE_BADDR_MASK)
}

/// Pages covered by a range TLBI with these SCALE and NUM.
pub const fn range_pages(scale: u8, num: u8) -> u64 {
    ((num as u64) + 1) << (5 * scale as u32 + 1)
}

impl TlbiOp {
    /// The ASID field of the operand (meaningless for the all-ASID kinds).
    pub const fn asid(self) -> u16 {
        (self.operand >> ASID_SHIFT) as u16
    }

    /// For a by-VA or range kind, the first page number (VA >> 12, truncated to the operand's
    /// address field) and the number of pages named; `None` for ASID/all kinds.
    pub const fn pages(self) -> Option<(u64, u64)> {
        match self.kind {
            TlbiKind::Vale1is | TlbiKind::Vae1is | TlbiKind::Vaale1is | TlbiKind::Vaae1is => {
                Some((self.operand & VA_OPERAND_MASK, 1))
            }
            TlbiKind::Rvale1is | TlbiKind::Rvae1is | TlbiKind::Rvaale1is | TlbiKind::Rvaae1is => {
                let scale = ((self.operand >> 44) & 0b11) as u8;
                let num = ((self.operand >> 39) & 0x1F) as u8;
                Some((self.operand & RANGE_BADDR_MASK, range_pages(scale, num)))
            }
            TlbiKind::Aside1is | TlbiKind::Vmalle1is => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum PlanState {
    Done,
    One(TlbiOp),
    Singles,
    Ranges { scale: u8 },
}

/// The CPU TLBIs for one flush, produced lazily (no allocation on the flush path).
#[derive(Clone, Debug)]
pub struct TlbiPlan {
    state: PlanState,
    asid: u16,
    single: TlbiKind,
    range: TlbiKind,
    next: VirtAddr,
    remaining: u64,
    step: u64,
}

impl Iterator for TlbiPlan {
    type Item = TlbiOp;

    fn next(&mut self) -> Option<TlbiOp> {
        match self.state {
            PlanState::Done => None,
            PlanState::One(op) => {
                self.state = PlanState::Done;
                Some(op)
            }
            PlanState::Singles => {
                if self.remaining == 0 {
                    self.state = PlanState::Done;
                    return None;
                }
                let op = TlbiOp {
                    kind: self.single,
                    operand: va_operand(self.asid, self.next),
                };
                self.advance(self.step);
                Some(op)
            }
            PlanState::Ranges { mut scale } => {
                if self.remaining == 0 {
                    self.state = PlanState::Done;
                    return None;
                }
                // Range instructions name an even number of pages: an odd one goes alone.
                if !self.remaining.is_multiple_of(2) {
                    let op = TlbiOp {
                        kind: self.single,
                        operand: va_operand(self.asid, self.next),
                    };
                    self.advance(1);
                    return Some(op);
                }
                // Largest chunks first; each scale is used at most once (with NUM ≤ 31), since
                // what remains afterwards is less than one unit of that scale.
                loop {
                    let unit = range_pages(scale, 0);
                    let n = (self.remaining / unit).min(32);
                    if n > 0 {
                        let op = TlbiOp {
                            kind: self.range,
                            operand: range_operand(self.asid, self.next, scale, (n - 1) as u8),
                        };
                        self.advance(n * unit);
                        self.state = PlanState::Ranges { scale };
                        return Some(op);
                    }
                    // `remaining` is even and non-zero, so scale 0 (unit 2) always matches.
                    scale -= 1;
                }
            }
        }
    }
}

impl TlbiPlan {
    fn advance(&mut self, pages: u64) {
        self.remaining -= pages;
        // Cannot overflow: the range was validated to lie within one VA half; the last step may
        // land exactly on 2^64 for a range ending at the top of the upper half.
        self.next = VirtAddr(self.next.0.wrapping_add(pages << PAGE_SHIFT));
    }
}

/// Plans the CPU TLBIs for `inv` in `scope`.
///
/// - [`FlushRange::All`](crate::mm::tlb::FlushRange::All) → `ASIDE1IS` (or `VMALLE1IS` for
///   [`TlbScope::Global`]).
/// - Without FEAT_TLBIRANGE: one `VALE1IS` (leaf-only) / `VAE1IS` per page (per 2 MiB for a
///   [`Stride::Block2M`] flush), or `ASIDE1IS` once that would take [`MAX_TLBI_OPS`] or more.
/// - With FEAT_TLBIRANGE: one single TLBI where one suffices; otherwise an odd page alone plus at
///   most four `RVALE1IS`/`RVAE1IS` covering exactly the rest; `ASIDE1IS` beyond
///   [`MAX_TLBI_RANGE_PAGES`].
pub fn plan(inv: &Invalidation, scope: TlbScope, features: TlbFeatures) -> TlbiPlan {
    let (asid, single, range, all) = match (scope, inv.leaf_only) {
        (TlbScope::Asid(a), true) => (a, TlbiKind::Vale1is, TlbiKind::Rvale1is, TlbiKind::Aside1is),
        (TlbScope::Asid(a), false) => (a, TlbiKind::Vae1is, TlbiKind::Rvae1is, TlbiKind::Aside1is),
        (TlbScope::Global, true) => (
            0,
            TlbiKind::Vaale1is,
            TlbiKind::Rvaale1is,
            TlbiKind::Vmalle1is,
        ),
        (TlbScope::Global, false) => (
            0,
            TlbiKind::Vaae1is,
            TlbiKind::Rvaae1is,
            TlbiKind::Vmalle1is,
        ),
    };
    let all_op = TlbiOp {
        kind: all,
        operand: if all == TlbiKind::Aside1is {
            asid_operand(asid)
        } else {
            0
        },
    };
    let mut p = TlbiPlan {
        state: PlanState::One(all_op),
        asid,
        single,
        range,
        next: VirtAddr(0),
        remaining: 0,
        step: 1,
    };
    let (Some(start), Some(pages)) = (inv.range.start(), inv.range.page_count()) else {
        return p;
    };
    let block_stride = inv.stride == Stride::Block2M
        && start.0.is_multiple_of(BLOCK_PAGES * PAGE_SIZE)
        && pages.is_multiple_of(BLOCK_PAGES);
    let step = if block_stride { BLOCK_PAGES } else { 1 };
    let singles = pages / step;
    p.next = start;
    p.remaining = pages;
    if singles == 1 {
        p.step = step;
        p.state = PlanState::Singles;
    } else if features.range {
        if pages <= MAX_TLBI_RANGE_PAGES {
            p.state = PlanState::Ranges { scale: 3 };
        }
    } else if singles < MAX_TLBI_OPS {
        p.step = step;
        p.state = PlanState::Singles;
    }
    p
}

// ---------------------------------------------------------------------------------------------
// The executor interface
// ---------------------------------------------------------------------------------------------
