//! Host tests of the page table against fake physical memory.

use std::{collections::BTreeMap, vec::Vec};

use super::{fake::*, *};
use crate::mm::tlb::{self, FlushTarget, TargetScope, TlbiOp};

const MIB2: u64 = 2 * 1024 * 1024;

fn va(x: u64) -> VirtAddr {
    VirtAddr(x)
}
fn pa(x: u64) -> PhysAddr {
    PhysAddr(x)
}
fn range(start: u64, len: u64) -> VaRange {
    VaRange::new(va(start), len).unwrap()
}

/// Test fixture: fake memory (1024 frames), a lower-half table, a recording TLB.
struct Fx {
    mem: FakeMem,
    log: Log,
    tlb: RecordingTlb,
}

impl Fx {
    fn new() -> Self {
        let log = Log::default();
        Self {
            mem: FakeMem::new(1024),
            tlb: RecordingTlb::new(false, log.clone()),
            log,
        }
    }
    fn table(&self, half: VaHalf) -> PageTable<'_> {
        PageTable::new(&self.mem, &self.mem, half).unwrap()
    }
    fn complete(&self, t: TlbFlush) -> FlushDone {
        let target = FlushTarget {
            tlb: &self.tlb,
            scope: TargetScope::Asid(7),
            secondaries: None,
            frames: &self.mem,
            stats: None,
        };
        tlb::execute(t, &target).unwrap()
    }
    /// Runs a whole break-before-make.
    fn bbm(&self, pt: &mut PageTable<'_>, b: Bbm) {
        let (f, m) = b.into_parts();
        let done = self.complete(f);
        let publish = m.make(pt, &done).unwrap();
        self.complete(publish);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn index_math() {
    let v = va((1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123);
    assert_eq!([0, 1, 2, 3].map(|l| table_index(v, l)), [1, 2, 3, 4]);
    assert_eq!(
        [0, 1, 2, 3].map(|l| table_index(va(0xFFFF_0000_0000_0000), l)),
        [0; 4]
    );
    assert_eq!(
        [0, 1, 2, 3].map(|l| table_index(va(0xFFFF_FFFF_FFFF_F000), l)),
        [511; 4]
    );
    assert_eq!(
        [0, 1, 2, 3].map(|l| table_index(va(0x0000_FFFF_FFFF_FFFF), l)),
        [511; 4]
    );
    assert_eq!(span(3), 4096);
    assert_eq!(span(2), MIB2);
    assert_eq!(span(1), 1 << 30);
    assert_eq!(span(0), 1 << 39);
}

#[test]
fn descriptor_golden_values() {
    // The reference encodings: RO page = PA|0b11|AF|AP[2]; block = PA|0b01|AF; table = PA|0b11.
    assert_eq!(
        Descriptor::page_raw(pa(0x4000_1000), PteFlags::AF | PteFlags::AP_RO).bits(),
        0x4000_1483
    );
    assert_eq!(
        Descriptor::page_raw(pa(0x4000_1000), PteFlags::AF).bits(),
        0x4000_1403
    );
    assert_eq!(
        Descriptor::block_raw(pa(0x4020_0000), PteFlags::AF).bits(),
        0x4020_0401
    );
    assert_eq!(Descriptor::table(pa(0x4000_2000)).bits(), 0x4000_2003);
    // Full attribute encodings (SH = IS, AttrIndx, nG, XN bits).
    assert_eq!(
        Descriptor::page(pa(0x4000_1000), MapAttrs::SHARED_RO).bits(),
        0x0060_0000_4000_1F83
    );
    assert_eq!(
        Descriptor::page(pa(0x4000_1000), MapAttrs::SHARED_RW).bits(),
        0x0060_0000_4000_1F03
    );
    assert_eq!(
        Descriptor::block(pa(0x4020_0000), MapAttrs::KERNEL_TEXT).bits(),
        0x0040_0000_4020_0781
    );
    assert_eq!(
        Descriptor::page(pa(0x4008_0000), MapAttrs::KERNEL_RODATA).bits(),
        0x0060_0000_4008_0783
    );
    assert_eq!(
        Descriptor::page(pa(0x4009_0000), MapAttrs::KERNEL_DATA).bits(),
        0x0060_0000_4009_0703
    );
    assert_eq!(
        Descriptor::page(pa(0x0900_0000), MapAttrs::KERNEL_DEVICE).bits(),
        0x0060_0000_0900_0707
    );
    // EL0 executable page: AP[1] set, PXN set, UXN clear.
    let user_rx = MapAttrs::new(Perms::RX | Perms::USER, MemType::Normal, false);
    assert_eq!(
        Descriptor::page(pa(0x4000_0000), user_rx).bits(),
        0x0020_0000_4000_0FC3
    );
    assert_eq!(MAIR_EL1_VALUE, 0x04FF);
    assert_eq!(attr_index_bits(MAIR_IDX_DEVICE), 0b100);
    assert_eq!(tcr_el1_value(0b101, true), 0x0000_0015_B510_3510);
    assert_eq!(tcr_el1_value(0b101, false), 0x0000_0005_B510_3510);
}

#[test]
fn descriptor_kinds_and_attr_roundtrip() {
    assert_eq!(Descriptor(0b11).kind(3), DescKind::Page);
    assert_eq!(Descriptor(0b11).kind(2), DescKind::Table);
    assert_eq!(Descriptor(0b01).kind(2), DescKind::Block);
    assert_eq!(Descriptor(0b01).kind(1), DescKind::Block);
    assert_eq!(
        Descriptor(0b01).kind(3),
        DescKind::Invalid,
        "reserved L3 encoding"
    );
    assert_eq!(
        Descriptor(0b01).kind(0),
        DescKind::Invalid,
        "no L0 blocks with 4K/48-bit"
    );
    assert_eq!(Descriptor(0b10).kind(3), DescKind::Invalid);
    let all = [Perms::READ, Perms::WRITE, Perms::EXEC, Perms::USER];
    for bits in 0..16u8 {
        let perms = all
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .fold(Perms::empty(), |a, (_, p)| a | *p);
        for mem in [MemType::Normal, MemType::Device] {
            for global in [true, false] {
                let a = MapAttrs::new(perms, mem, global);
                if a.validate().is_ok() {
                    assert_eq!(MapAttrs::from_leaf_bits(a.leaf_bits()), a, "{a:?}");
                    let d = Descriptor::page(pa(0x1234_5000), a);
                    assert_eq!(d.attrs(), a);
                    assert_eq!(d.addr(), pa(0x1234_5000));
                }
            }
        }
    }
    assert_eq!(
        MapAttrs::new(Perms::WRITE, MemType::Normal, true).validate(),
        Err(AttrError::NoRead)
    );
    assert_eq!(
        MapAttrs::new(Perms::RW | Perms::EXEC, MemType::Normal, true).validate(),
        Err(AttrError::WriteAndExec)
    );
    assert_eq!(
        MapAttrs::new(Perms::RX, MemType::Device, true).validate(),
        Err(AttrError::ExecDevice)
    );
}

#[test]
fn upgrade_classification() {
    assert!(Perms::RW.is_upgrade_of(Perms::R));
    assert!(Perms::RX.is_upgrade_of(Perms::R));
    assert!(!Perms::R.is_upgrade_of(Perms::RW));
    assert!(!Perms::RW.is_upgrade_of(Perms::RX), "loses exec");
    assert!(!Perms::RW.is_upgrade_of(Perms::RW), "no change");
    assert!(
        !(Perms::R | Perms::USER).is_upgrade_of(Perms::R),
        "EL0 access is not a pure upgrade"
    );
}

#[test]
fn va_range_edges() {
    assert_eq!(VaRange::new(va(0x1000), 0), Err(RangeError::Empty));
    assert_eq!(
        VaRange::new(va(0x1001), 0x1000),
        Err(RangeError::Misaligned)
    );
    assert_eq!(
        VaRange::new(va(0x1000), 0x1001),
        Err(RangeError::Misaligned)
    );
    assert_eq!(
        VaRange::new(va(0xFFFF_FFFF_FFFF_F000), 0x2000),
        Err(RangeError::Overflow)
    );
    assert_eq!(
        VaRange::new(va(USER_VA_END - 0x1000), 0x2000),
        Err(RangeError::NotCanonical)
    );
    let top = VaRange::new(va(0xFFFF_FFFF_FFFF_F000), 0x1000).unwrap();
    assert_eq!(top.last(), va(u64::MAX));
    assert_eq!(
        VaRange::covering(va(0x2000), 0x2000),
        Err(RangeError::Empty)
    );
    assert_eq!(
        VaRange::covering(va(0x3000), 0x2000),
        Err(RangeError::Empty)
    );
    assert_eq!(VaRange::covering(va(0x2000), 0x4000).unwrap().pages(), 2);
    assert_eq!(VaRange::page(va(0x1234)), range(0x1000, 0x1000));
}

// ---------------------------------------------------------------------------------------------
// map / translate
// ---------------------------------------------------------------------------------------------

#[test]
fn map_pages_and_translate() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    let t = pt
        .map(
            range(0x40_0000, 3 * 4096),
            pa(0x8000_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap();
    assert!(t.invalidation().is_none() && t.needs_barrier() && t.freed_tables().is_empty());
    assert_eq!(t.cause(), FlushCause::Map);
    fx.complete(t);
    assert_eq!(
        fx.log.take(),
        vec![Ev::DsbIshst, Ev::Isb],
        "new entries need only a barrier"
    );
    for i in 0..3 {
        let tr = pt.translate(va(0x40_0000 + i * 4096 + 0x10)).unwrap();
        assert_eq!(tr.pa, pa(0x8000_0000 + i * 4096 + 0x10));
        assert_eq!(tr.level, 3);
        assert_eq!(tr.size(), 4096);
        assert_eq!(tr.attrs, MapAttrs::SHARED_RW);
    }
    assert_eq!(pt.translate(va(0x40_3000)), None);
    assert_eq!(pt.translate(va(0x3F_F000)), None);
    assert_eq!(pt.table_frames(), 4);
    assert_eq!(fx.mem.allocated(), 4);
}

#[test]
fn map_prefers_blocks_where_aligned() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    // One page, two 2 MiB blocks, one page.
    let r = range(0x1F_F000, 2 * MIB2 + 2 * 4096);
    fx.complete(
        pt.map(r, pa(0x401F_F000), MapAttrs::SHARED_RW, true)
            .unwrap(),
    );
    let lv = |x| pt.translate(va(x)).unwrap().level;
    assert_eq!(
        [
            lv(0x1F_F000),
            lv(0x20_0000),
            lv(0x3F_FFFF),
            lv(0x40_0000),
            lv(0x60_0000)
        ],
        [3, 2, 2, 2, 3]
    );
    assert_eq!(pt.translate(va(0x5F_F123)).unwrap().pa, pa(0x405F_F123));
    assert_eq!(
        pt.translate(va(0x40_0000)).unwrap().descriptor.kind(2),
        DescKind::Block
    );
    // Same VA range, PA not 2 MiB-congruent: pages only.
    let mut pt2 = fx.table(VaHalf::Lower);
    fx.complete(
        pt2.map(r, pa(0x401F_E000), MapAttrs::SHARED_RW, true)
            .unwrap(),
    );
    assert!((0..1026).all(|i| pt2.translate(va(0x1F_F000 + i * 4096)).unwrap().level == 3));
    // prefer_blocks = false: pages only.
    let mut pt3 = fx.table(VaHalf::Lower);
    fx.complete(
        pt3.map(r, pa(0x401F_F000), MapAttrs::SHARED_RW, false)
            .unwrap(),
    );
    assert_eq!(pt3.translate(va(0x20_0000)).unwrap().level, 3);
}

#[test]
fn map_upper_half_and_top_page() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Upper);
    let top = VaRange::new(va(0xFFFF_FFFF_FFFF_F000), 4096).unwrap();
    fx.complete(
        pt.map(top, pa(0x4000_0000), MapAttrs::KERNEL_DATA, true)
            .unwrap(),
    );
    let tr = pt.translate(va(u64::MAX)).unwrap();
    assert_eq!(tr.pa, pa(0x4000_0FFF));
    assert!(tr.attrs.global);
    let lin = range(LINEAR_BASE + 0x4000_0000, 4 * MIB2);
    fx.complete(
        pt.map(lin, pa(0x4000_0000), MapAttrs::KERNEL_DATA, true)
            .unwrap(),
    );
    assert_eq!(
        pt.translate(va(LINEAR_BASE + 0x4012_3456)).unwrap().pa,
        pa(0x4012_3456)
    );
    assert_eq!(
        pt.translate(va(LINEAR_BASE + 0x4012_3456)).unwrap().level,
        2
    );
    // Lower-half addresses are outside an upper-half table and vice versa.
    assert_eq!(
        pt.map(
            range(0x1000, 4096),
            pa(0x4000_0000),
            MapAttrs::KERNEL_DATA,
            false
        )
        .unwrap_err(),
        Error::AddressRange
    );
    assert_eq!(pt.translate(va(0x1000)), None);
    let t = pt.unmap(top).unwrap();
    assert_eq!(t.range(), Some(FlushRange::page(va(0xFFFF_FFFF_FFFF_F000))));
    fx.complete(t);
    // A range between the halves, or one straddling the end of the lower half, cannot even be
    // expressed: `VaRange` keeps to one canonical half.
    assert_eq!(
        VaRange::new(va(1 << 48), 4096),
        Err(RangeError::NotCanonical)
    );
    assert_eq!(
        VaRange::new(va((1 << 48) - 4096), 8192),
        Err(RangeError::NotCanonical)
    );
}

#[test]
fn map_errors_change_nothing() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x10_0000, 2 * 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    let frames = fx.mem.allocated();
    // Overlap in the middle of a larger range: refused before anything is written.
    assert_eq!(
        pt.map(
            range(0x0F_E000, 4 * 4096),
            pa(0x4200_0000),
            MapAttrs::SHARED_RW,
            false
        )
        .unwrap_err(),
        Error::AlreadyMapped(va(0x10_0000))
    );
    assert_eq!(pt.translate(va(0x0F_E000)), None);
    assert_eq!(pt.translate(va(0x10_0000)).unwrap().pa, pa(0x4100_0000));
    // Overlap with a block.
    fx.complete(
        pt.map(
            range(0x40_0000, MIB2),
            pa(0x4040_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    let frames2 = fx.mem.allocated();
    assert_eq!(frames2, frames, "the block reused the existing L2 table");
    assert_eq!(
        pt.map(
            range(0x5F_F000, 2 * 4096),
            pa(0x4200_0000),
            MapAttrs::SHARED_RW,
            false
        )
        .unwrap_err(),
        Error::AlreadyMapped(va(0x5F_F000))
    );
    assert_eq!(
        pt.map(
            range(0x80_0000, 4096),
            pa(0x4200_0800),
            MapAttrs::SHARED_RW,
            false
        )
        .unwrap_err(),
        Error::Misaligned
    );
    assert_eq!(
        pt.map(
            range(0x80_0000, 4096),
            pa(0x4200_0000),
            MapAttrs::new(Perms::RW | Perms::EXEC, MemType::Normal, false),
            false
        )
        .unwrap_err(),
        Error::InvalidAttrs(AttrError::WriteAndExec)
    );
    let t = pt
        .map(
            range(0x80_0000, 4096),
            pa((1 << 48) - 4096),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap();
    fx.complete(t);
    assert_eq!(
        pt.map(
            range(0x90_0000, 8192),
            pa((1 << 48) - 4096),
            MapAttrs::SHARED_RW,
            false
        )
        .unwrap_err(),
        Error::AddressRange
    );
    // Out of frames: nothing allocated, nothing mapped.
    let before = fx.mem.allocated();
    fx.mem.set_alloc_limit(Some(2));
    let far = range(0x80_0000_0000, 4096); // L0 index 1: needs L1 + L2 + L3
    assert_eq!(
        pt.map(far, pa(0x4300_0000), MapAttrs::SHARED_RW, false)
            .unwrap_err(),
        Error::OutOfFrames
    );
    assert_eq!(fx.mem.allocated(), before);
    assert_eq!(pt.translate(va(0x80_0000_0000)), None);
    fx.mem.set_alloc_limit(None);
    fx.complete(
        pt.map(far, pa(0x4300_0000), MapAttrs::SHARED_RW, false)
            .unwrap(),
    );
    assert_eq!(fx.mem.allocated(), before + 3);
}

// ---------------------------------------------------------------------------------------------
// unmap / protect
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_frees_empty_tables_only_after_flush() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, 2 * 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    assert_eq!(fx.mem.allocated(), 4);
    fx.log.take();
    let t = pt.unmap(range(0x20_0000, 4096)).unwrap();
    let inv = t.invalidation().unwrap();
    assert_eq!(inv.range, FlushRange::page(va(0x20_0000)));
    assert!(inv.leaf_only && !t.upgrade_only() && t.freed_tables().is_empty());
    assert_eq!(t.cause(), FlushCause::Unmap);
    fx.complete(t);
    assert_eq!(
        fx.log.take(),
        vec![
            Ev::DsbIshst,
            Ev::Tlbi(TlbiOp {
                kind: tlb::TlbiKind::Vale1is,
                operand: (7 << 48) | 0x200
            }),
            Ev::DsbIsh,
            Ev::Isb
        ]
    );
    // Unmapping the last page empties L3, L2 and L1: unlinked now, freed by the flush.
    let t = pt.unmap(range(0x20_1000, 4096)).unwrap();
    assert_eq!(t.freed_tables().len(), 3);
    let inv = t.invalidation().unwrap();
    assert!(!inv.leaf_only, "freed tables need walk-cache invalidation");
    for f in t.freed_tables() {
        assert!(fx.mem.is_allocated(*f), "freed before the flush");
    }
    assert_eq!(pt.translate(va(0x20_1000)), None);
    assert_eq!(pt.table_frames(), 1);
    let freed: Vec<PhysAddr> = t.freed_tables().to_vec();
    fx.complete(t);
    assert!(freed.iter().all(|f| !fx.mem.is_allocated(*f)));
    assert_eq!(fx.mem.allocated(), 1);
    assert!(matches!(
        fx.log.take()[1],
        Ev::Tlbi(TlbiOp {
            kind: tlb::TlbiKind::Vae1is,
            ..
        })
    ));
}

#[test]
fn unmap_errors() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    fx.complete(
        pt.map(
            range(0x40_0000, 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.unmap(range(0x20_1000, 4096)).unwrap_err(),
        Error::BlockInTheWay(va(0x20_0000))
    );
    assert_eq!(
        pt.unmap(range(0x40_0000, 2 * 4096)).unwrap_err(),
        Error::NotMapped(va(0x40_1000))
    );
    assert_eq!(
        pt.unmap(range(0x1000_0000, 4096)).unwrap_err(),
        Error::NotMapped(va(0x1000_0000))
    );
    // Nothing changed.
    assert!(pt.translate(va(0x40_0000)).is_some() && pt.translate(va(0x20_1000)).is_some());
    // A whole block: one TLBI per 2 MiB (stride), and the range tells secondaries 512 pages.
    let t = pt.unmap(range(0x20_0000, MIB2)).unwrap();
    let inv = t.invalidation().unwrap();
    assert_eq!(inv.stride, Stride::Block2M);
    assert_eq!(inv.range.page_count(), Some(512));
    fx.log.take();
    fx.complete(t);
    assert_eq!(
        fx.log
            .take()
            .iter()
            .filter(|e| matches!(e, Ev::Tlbi(_)))
            .count(),
        1
    );
}

#[test]
fn protect_in_place_and_upgrade_flag() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x30_0000, 4 * 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    let before: Vec<u64> = (0..4)
        .map(|i| pt.translate(va(0x30_0000 + i * 4096)).unwrap().pa.0)
        .collect();
    // RW -> RO: a downgrade.
    let t = pt.protect(range(0x30_1000, 2 * 4096), Perms::R).unwrap();
    assert!(!t.upgrade_only());
    assert_eq!(
        t.range(),
        Some(FlushRange::pages(va(0x30_1000), 2).unwrap())
    );
    assert!(t.invalidation().unwrap().leaf_only);
    fx.complete(t);
    assert_eq!(
        pt.translate(va(0x30_1000)).unwrap().attrs,
        MapAttrs::SHARED_RO
    );
    assert_eq!(
        pt.translate(va(0x30_0000)).unwrap().attrs,
        MapAttrs::SHARED_RW
    );
    // RO -> RW on a range where only the middle changes: upgrade-only, range = changed pages.
    let t = pt.protect(range(0x30_0000, 4 * 4096), Perms::RW).unwrap();
    assert!(t.upgrade_only());
    assert_eq!(
        t.range(),
        Some(FlushRange::pages(va(0x30_1000), 2).unwrap())
    );
    fx.complete(t);
    // R -> RX is an upgrade; RX -> RW is not (exec is lost).
    fx.complete(pt.protect(range(0x30_0000, 4096), Perms::R).unwrap());
    let t = pt.protect(range(0x30_0000, 4096), Perms::RX).unwrap();
    assert!(t.upgrade_only());
    fx.complete(t);
    let t = pt.protect(range(0x30_0000, 4096), Perms::RW).unwrap();
    assert!(!t.upgrade_only());
    fx.complete(t);
    // No change at all: a no-op token.
    let t = pt.protect(range(0x30_0000, 4 * 4096), Perms::RW).unwrap();
    assert!(t.is_noop());
    fx.complete(t);
    // Output addresses never moved.
    let after: Vec<u64> = (0..4)
        .map(|i| pt.translate(va(0x30_0000 + i * 4096)).unwrap().pa.0)
        .collect();
    assert_eq!(before, after);
    // Errors.
    assert_eq!(
        pt.protect(range(0x30_0000, 4096), Perms::RW | Perms::EXEC)
            .unwrap_err(),
        Error::InvalidAttrs(AttrError::WriteAndExec)
    );
    assert_eq!(
        pt.protect(range(0x30_0000, 5 * 4096), Perms::R)
            .unwrap_err(),
        Error::NotMapped(va(0x30_4000))
    );
    assert_eq!(
        pt.translate(va(0x30_0000)).unwrap().attrs.perms,
        Perms::RW,
        "failed protect changed nothing"
    );
    fx.complete(
        pt.map(
            range(0x50_0000, 4096),
            pa(0x0900_0000),
            MapAttrs::KERNEL_DEVICE,
            false,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.protect(range(0x50_0000, 4096), Perms::RX).unwrap_err(),
        Error::InvalidAttrs(AttrError::ExecDevice)
    );
}

#[test]
fn protect_blocks() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, 2 * MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.protect(range(0x20_0000, 4096), Perms::R).unwrap_err(),
        Error::BlockInTheWay(va(0x20_0000))
    );
    let t = pt.protect(range(0x20_0000, 2 * MIB2), Perms::R).unwrap();
    assert_eq!(t.invalidation().unwrap().stride, Stride::Block2M);
    fx.log.take();
    fx.complete(t);
    let tlbis: Vec<Ev> = fx
        .log
        .take()
        .into_iter()
        .filter(|e| matches!(e, Ev::Tlbi(_)))
        .collect();
    assert_eq!(
        tlbis,
        vec![
            Ev::Tlbi(TlbiOp {
                kind: tlb::TlbiKind::Vale1is,
                operand: (7 << 48) | 0x200
            }),
            Ev::Tlbi(TlbiOp {
                kind: tlb::TlbiKind::Vale1is,
                operand: (7 << 48) | 0x400
            }),
        ]
    );
    assert_eq!(
        pt.translate(va(0x3F_FFFF)).unwrap().attrs,
        MapAttrs::SHARED_RO
    );
}

#[test]
fn grant_and_access_flag() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x30_0000, 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RO,
            false,
        )
        .unwrap(),
    );
    fx.complete(
        pt.map(
            range(0x40_0000, MIB2),
            pa(0x4040_0000),
            MapAttrs::SHARED_RO,
            true,
        )
        .unwrap(),
    );
    let (t, changed) = pt.grant(va(0x30_0123), Perms::WRITE).unwrap();
    assert!(changed && t.upgrade_only());
    assert_eq!(t.cause(), FlushCause::FaultUpgrade);
    assert_eq!(t.range(), Some(FlushRange::page(va(0x30_0000))));
    fx.complete(t);
    assert_eq!(
        pt.translate(va(0x30_0000)).unwrap().attrs,
        MapAttrs::SHARED_RW
    );
    // Already writable: spurious, still one page flushed (the stale entry lives in some TLB).
    let (t, changed) = pt.grant(va(0x30_0123), Perms::WRITE).unwrap();
    assert!(!changed && t.upgrade_only());
    assert_eq!(t.cause(), FlushCause::SpuriousFault);
    assert_eq!(t.range(), Some(FlushRange::page(va(0x30_0000))));
    fx.complete(t);
    // Block: the whole block becomes writable.
    let (t, changed) = pt.grant(va(0x41_2345), Perms::WRITE).unwrap();
    assert!(changed);
    assert_eq!(
        t.range(),
        Some(FlushRange::pages(va(0x40_0000), 512).unwrap())
    );
    fx.complete(t);
    assert_eq!(pt.translate(va(0x5F_F000)).unwrap().attrs.perms, Perms::RW);
    assert_eq!(
        pt.grant(va(0x90_0000), Perms::WRITE).unwrap_err(),
        Error::NotMapped(va(0x90_0000))
    );
    // Access flag.
    let (t, changed) = pt.set_access_flag(va(0x30_0000)).unwrap();
    assert!(!changed && t.is_noop());
    fx.complete(t);
    let (table, i) = pt.slot_at(0x30_0000, 3).unwrap();
    let d = pt.read(table, i);
    pt.write(table, i, Descriptor(d.0 & !PteFlags::AF.bits()));
    let (t, changed) = pt.set_access_flag(va(0x30_0000)).unwrap();
    assert!(changed && t.invalidation().is_none() && t.needs_barrier());
    fx.complete(t);
    assert_eq!(pt.read(table, i), d);
}

// ---------------------------------------------------------------------------------------------
// Break-before-make
// ---------------------------------------------------------------------------------------------

#[test]
fn remap_is_break_flush_make() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x30_0000, 2 * 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RO,
            false,
        )
        .unwrap(),
    );
    let bbm = pt
        .remap(range(0x30_0000, 2 * 4096), pa(0x4200_0000))
        .unwrap();
    // Broken: nothing translates until the make step.
    assert_eq!(pt.translate(va(0x30_0000)), None);
    let inv = bbm.flush().invalidation().unwrap();
    assert_eq!(inv.range, FlushRange::pages(va(0x30_0000), 2).unwrap());
    assert!(inv.leaf_only && !bbm.flush().upgrade_only());
    let (f, make) = bbm.into_parts();
    // A proof from another flush is refused.
    let other = fx.complete(TlbFlush::barrier_only(pt.root(), FlushCause::Map));
    let err = make.make(&mut pt, &other).unwrap_err();
    assert_eq!(err, Error::FlushNotDone);
    // (That consumed the make step; do it again properly.)
    let f_done = fx.complete(f);
    assert_eq!(pt.translate(va(0x30_0000)), None, "still broken");
    drop(f_done);
    fx.complete(
        pt.map(
            range(0x30_0000, 2 * 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RO,
            false,
        )
        .unwrap(),
    );
    let bbm = pt
        .remap(range(0x30_0000, 2 * 4096), pa(0x4200_0000))
        .unwrap();
    fx.bbm(&mut pt, bbm);
    let tr = pt.translate(va(0x30_1008)).unwrap();
    assert_eq!(tr.pa, pa(0x4200_1008));
    assert_eq!(tr.attrs, MapAttrs::SHARED_RO);
}

#[test]
fn remap_blocks_and_errors() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.remap(range(0x20_0000, MIB2), pa(0x4030_0000))
            .unwrap_err(),
        Error::Misaligned
    );
    assert_eq!(
        pt.remap(range(0x20_0000, 4096), pa(0x4060_0000))
            .unwrap_err(),
        Error::BlockInTheWay(va(0x20_0000))
    );
    assert_eq!(
        pt.remap(range(0x60_0000, 4096), pa(0x4060_0000))
            .unwrap_err(),
        Error::NotMapped(va(0x60_0000))
    );
    assert_eq!(
        pt.remap(range(0x20_0000, MIB2), pa(0x4060_0800))
            .unwrap_err(),
        Error::Misaligned
    );
    assert!(
        pt.translate(va(0x20_0000)).is_some(),
        "errors change nothing"
    );
    let bbm = pt.remap(range(0x20_0000, MIB2), pa(0x4060_0000)).unwrap();
    fx.bbm(&mut pt, bbm);
    let tr = pt.translate(va(0x21_0000)).unwrap();
    assert_eq!((tr.pa, tr.level), (pa(0x4061_0000), 2));
}

#[test]
fn make_detects_conflicting_change() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x30_0000, 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    let (f, make) = pt
        .remap(range(0x30_0000, 4096), pa(0x4200_0000))
        .unwrap()
        .into_parts();
    // Someone maps into the hole before the make step.
    fx.complete(
        pt.map(
            range(0x30_0000, 4096),
            pa(0x4300_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    let done = fx.complete(f);
    assert_eq!(
        make.make(&mut pt, &done).unwrap_err(),
        Error::BbmConflict(va(0x30_0000))
    );
    assert_eq!(
        pt.translate(va(0x30_0000)).unwrap().pa,
        pa(0x4300_0000),
        "the newer mapping is kept"
    );
}

#[test]
fn split_block_keeps_translations() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RO,
            true,
        )
        .unwrap(),
    );
    let frames = fx.mem.allocated();
    assert_eq!(
        pt.split_block(va(0x80_0000)).unwrap_err(),
        Error::NotMapped(va(0x80_0000))
    );
    let bbm = pt.split_block(va(0x21_2345)).unwrap();
    assert_eq!(pt.translate(va(0x20_0000)), None, "broken");
    let inv = bbm.flush().invalidation().unwrap();
    assert_eq!(inv.range, FlushRange::pages(va(0x20_0000), 512).unwrap());
    assert!(inv.leaf_only);
    assert_eq!(inv.stride, Stride::Block2M);
    assert_eq!(bbm.flush().cause(), FlushCause::SplitBlock);
    fx.log.take();
    fx.bbm(&mut pt, bbm);
    // One TLBI for the block (no TLBIRANGE needed), then the make's barrier.
    let tlbis = fx
        .log
        .take()
        .into_iter()
        .filter(|e| matches!(e, Ev::Tlbi(_)))
        .count();
    assert_eq!(tlbis, 1);
    assert_eq!(fx.mem.allocated(), frames + 1);
    for i in 0..512 {
        let tr = pt.translate(va(0x20_0000 + i * 4096 + 8)).unwrap();
        assert_eq!(
            (tr.pa, tr.level, tr.attrs),
            (pa(0x4020_0000 + i * 4096 + 8), 3, MapAttrs::SHARED_RO)
        );
    }
    assert_eq!(
        pt.split_block(va(0x20_0000)).unwrap_err(),
        Error::NotABlock(va(0x20_0000))
    );
    // Now a page of it can be remapped on its own.
    let bbm = pt.remap(range(0x20_1000, 4096), pa(0x4800_0000)).unwrap();
    fx.bbm(&mut pt, bbm);
    assert_eq!(pt.translate(va(0x20_1000)).unwrap().pa, pa(0x4800_0000));
}

#[test]
fn split_out_of_frames_changes_nothing_and_abandon_frees() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    fx.mem.set_alloc_limit(Some(0));
    assert_eq!(
        pt.split_block(va(0x20_0000)).unwrap_err(),
        Error::OutOfFrames
    );
    assert!(pt.translate(va(0x20_0000)).is_some());
    fx.mem.set_alloc_limit(None);
    let before = fx.mem.allocated();
    let (f, make) = pt.split_block(va(0x20_0000)).unwrap().into_parts();
    assert_eq!(fx.mem.allocated(), before + 1);
    fx.complete(f);
    make.abandon(&fx.mem);
    assert_eq!(fx.mem.allocated(), before);
    assert_eq!(
        pt.translate(va(0x20_0000)),
        None,
        "abandoned: stays unmapped"
    );
}

#[test]
fn merge_to_block_frees_l3_after_flush() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    assert_eq!(pt.translate(va(0x20_0000)).unwrap().level, 3);
    let l3 = pt.slot_at(0x20_0000, 3).unwrap().0;
    let bbm = pt.merge_to_block(va(0x3F_0000), None).unwrap();
    assert_eq!(bbm.flush().freed_tables(), &[l3]);
    let inv = bbm.flush().invalidation().unwrap();
    assert!(
        !inv.leaf_only,
        "a table entry was removed: walk caches must go"
    );
    assert_eq!(inv.range, FlushRange::pages(va(0x20_0000), 512).unwrap());
    assert!(fx.mem.is_allocated(l3), "not freed before the flush");
    let (f, make) = bbm.into_parts();
    let done = fx.complete(f);
    assert!(!fx.mem.is_allocated(l3), "freed by the flush");
    fx.complete(make.make(&mut pt, &done).unwrap());
    let tr = pt.translate(va(0x3F_F123)).unwrap();
    assert_eq!(
        (tr.pa, tr.level, tr.attrs),
        (pa(0x403F_F123), 2, MapAttrs::SHARED_RW)
    );
}

#[test]
fn merge_errors_and_new_pa() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    // Not contiguous: page 5 points elsewhere.
    fx.complete(
        pt.map(
            range(0x20_0000, MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    let bbm = pt.remap(range(0x20_5000, 4096), pa(0x4800_0000)).unwrap();
    fx.bbm(&mut pt, bbm);
    assert_eq!(
        pt.merge_to_block(va(0x20_0000), None).unwrap_err(),
        Error::NotMergeable(va(0x20_0000))
    );
    // With an explicit new address it works (and the contents move there).
    assert_eq!(
        pt.merge_to_block(va(0x20_0000), Some(pa(0x4810_0000)))
            .unwrap_err(),
        Error::Misaligned
    );
    let bbm = pt
        .merge_to_block(va(0x20_0000), Some(pa(0x4A00_0000)))
        .unwrap();
    fx.bbm(&mut pt, bbm);
    assert_eq!(pt.translate(va(0x20_5000)).unwrap().pa, pa(0x4A00_5000));
    // Already a block / not mapped / holes / mixed attributes.
    assert_eq!(
        pt.merge_to_block(va(0x20_0000), None).unwrap_err(),
        Error::NotMergeable(va(0x20_0000))
    );
    assert_eq!(
        pt.merge_to_block(va(0x60_0000), None).unwrap_err(),
        Error::NotMapped(va(0x60_0000))
    );
    assert_eq!(
        pt.merge_to_block(va(0x80_0000_0000), None).unwrap_err(),
        Error::NotMergeable(va(0x80_0000_0000))
    );
    fx.complete(
        pt.map(
            range(0x40_0000, MIB2 - 4096),
            pa(0x4040_0000),
            MapAttrs::SHARED_RW,
            false,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.merge_to_block(va(0x40_0000), None).unwrap_err(),
        Error::NotMapped(va(0x5F_F000))
    );
    fx.complete(
        pt.map(
            range(0x5F_F000, 4096),
            pa(0x405F_F000),
            MapAttrs::SHARED_RO,
            false,
        )
        .unwrap(),
    );
    assert_eq!(
        pt.merge_to_block(va(0x40_0000), None).unwrap_err(),
        Error::NotMergeable(va(0x40_0000))
    );
    fx.complete(pt.protect(range(0x5F_F000, 4096), Perms::RW).unwrap());
    let bbm = pt.merge_to_block(va(0x40_0000), None).unwrap();
    fx.bbm(&mut pt, bbm);
    assert_eq!(pt.translate(va(0x40_0000)).unwrap().level, 2);
}

#[test]
fn teardown_frees_every_table_after_flush() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    fx.complete(
        pt.map(
            range(0x20_0000, 3 * MIB2),
            pa(0x4020_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    fx.complete(
        pt.map(
            range(0x7F_0000_0000, 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    fx.complete(
        pt.map(
            range(0x10_0000, 4096),
            pa(0x4100_0000),
            MapAttrs::SHARED_RW,
            true,
        )
        .unwrap(),
    );
    let n = pt.table_frames();
    assert_eq!(fx.mem.allocated(), n);
    let t = pt.teardown();
    assert_eq!(t.freed_tables().len(), n);
    assert_eq!(t.range(), Some(FlushRange::All));
    assert_eq!(fx.mem.allocated(), n, "nothing freed before the flush");
    fx.log.take();
    fx.complete(t);
    assert_eq!(fx.mem.allocated(), 0);
    assert_eq!(
        fx.log.take(),
        vec![
            Ev::DsbIshst,
            Ev::Tlbi(TlbiOp {
                kind: tlb::TlbiKind::Aside1is,
                operand: 7 << 48
            }),
            Ev::DsbIsh,
            Ev::Isb
        ]
    );
}

/// Random operations against a model: after every completed operation, every page of the window
/// translates exactly as the model says.
#[test]
fn random_operations_match_model() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    const WIN: u64 = 0x40_0000; // window base; 3 blocks' worth of pages
    const PAGES: u64 = 3 * 512;
    let mut model: BTreeMap<u64, (u64, Perms)> = BTreeMap::new();
    let mut seed = 0xC0FF_EE00_1234_5678u64;
    let mut rnd = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for step in 0..600 {
        let (first, n) = match rnd(4) {
            0 => (rnd(3) * 512, 512), // a whole 2 MiB chunk
            _ => {
                let f = rnd(PAGES);
                (f, 1 + rnd((PAGES - f).min(40)))
            }
        };
        let r = range(WIN + first * 4096, n * 4096);
        let mapped = (first..first + n).filter(|p| model.contains_key(p)).count() as u64;
        match rnd(6) {
            0 | 1 => {
                let base_pa =
                    0x8000_0000 + rnd(64) * MIB2 + if rnd(2) == 0 { 0 } else { rnd(512) * 4096 };
                let perms = if rnd(2) == 0 { Perms::R } else { Perms::RW };
                let res = pt.map(
                    r,
                    pa(base_pa),
                    MapAttrs::new(perms, MemType::Normal, false),
                    rnd(2) == 0,
                );
                match res {
                    Ok(t) => {
                        assert_eq!(mapped, 0, "step {step}: map over mapped pages succeeded");
                        fx.complete(t);
                        for i in 0..n {
                            model.insert(first + i, (base_pa + i * 4096, perms));
                        }
                    }
                    Err(Error::AlreadyMapped(_)) => assert!(mapped > 0),
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            2 => match pt.unmap(r) {
                Ok(t) => {
                    assert_eq!(mapped, n);
                    fx.complete(t);
                    for i in 0..n {
                        model.remove(&(first + i));
                    }
                }
                Err(Error::NotMapped(_)) => assert!(mapped < n),
                Err(Error::BlockInTheWay(_)) => {}
                Err(e) => panic!("step {step}: {e}"),
            },
            3 => {
                let perms = if rnd(2) == 0 { Perms::R } else { Perms::RW };
                match pt.protect(r, perms) {
                    Ok(t) => {
                        fx.complete(t);
                        for i in 0..n {
                            model.get_mut(&(first + i)).unwrap().1 = perms;
                        }
                    }
                    Err(Error::NotMapped(_)) => assert!(mapped < n),
                    Err(Error::BlockInTheWay(_)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            4 => {
                let new = 0x9000_0000 + rnd(64) * MIB2;
                match pt.remap(r, pa(new)) {
                    Ok(b) => {
                        fx.bbm(&mut pt, b);
                        for i in 0..n {
                            model.get_mut(&(first + i)).unwrap().0 = new + i * 4096;
                        }
                    }
                    Err(Error::NotMapped(_)) => assert!(mapped < n),
                    Err(Error::BlockInTheWay(_) | Error::Misaligned) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            _ => {
                let v = va(WIN + first * 4096);
                if rnd(2) == 0 {
                    if let Ok(b) = pt.split_block(v) {
                        fx.bbm(&mut pt, b);
                    }
                } else if let Ok(b) = pt.merge_to_block(v, None) {
                    fx.bbm(&mut pt, b);
                }
            }
        }
        for p in 0..PAGES {
            let got = pt
                .translate(va(WIN + p * 4096))
                .map(|t| (t.pa.0, t.attrs.perms));
            assert_eq!(got, model.get(&p).copied(), "step {step}, page {p}");
        }
    }
    // Every table frame in use is reachable; teardown returns them all.
    assert_eq!(fx.mem.allocated(), pt.table_frames());
    let (allocs, frees) = fx.mem.counts();
    assert_eq!(allocs - frees, pt.table_frames());
    fx.complete(pt.teardown());
    assert_eq!(fx.mem.allocated(), 0);
}

// ---------------------------------------------------------------------------------------------
// Batch operations: hole-tolerant unmap, write-protect, move
// ---------------------------------------------------------------------------------------------

/// Maps one 2 MiB block at 1 GiB to 0x4200_0000, read-write, and completes the flush.
fn map_block(fx: &Fx, pt: &mut PageTable<'_>) {
    map(
        fx,
        pt,
        0x4000_0000,
        0x20_0000,
        0x4200_0000,
        MapAttrs::SHARED_RW,
        true,
    );
}

/// Maps `len` bytes at `v` to `p` and completes the flush.
fn map(fx: &Fx, pt: &mut PageTable<'_>, v: u64, len: u64, p: u64, attrs: MapAttrs, blocks: bool) {
    fx.complete(pt.map(range(v, len), pa(p), attrs, blocks).unwrap());
}

#[test]
fn unmap_present_tolerates_holes_and_changes_nothing_when_empty() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    map(
        &fx,
        &mut pt,
        0x20_0000,
        4096,
        0x4100_0000,
        MapAttrs::SHARED_RW,
        false,
    );
    map(
        &fx,
        &mut pt,
        0x20_3000,
        4096,
        0x4100_3000,
        MapAttrs::SHARED_RW,
        false,
    );
    assert_eq!(
        pt.unmap(range(0x20_0000, 4 * 4096)).unwrap_err(),
        Error::NotMapped(va(0x20_1000)),
        "strict unmap refuses holes"
    );
    let t = pt.unmap_present(range(0x20_0000, 4 * 4096)).unwrap();
    assert_eq!(
        t.range(),
        Some(FlushRange::pages(va(0x20_0000), 4).unwrap()),
        "the hull of what was cleared"
    );
    fx.complete(t);
    assert_eq!(pt.translate(va(0x20_3000)), None);
    // Nothing left: a token with nothing to do.
    let t = pt.unmap_present(range(0x20_0000, 4 * 4096)).unwrap();
    assert!(t.is_noop() && t.range().is_none());
    fx.complete(t);
    // A partly covered block is still refused.
    map(
        &fx,
        &mut pt,
        0x40_0000,
        0x20_0000,
        0x4200_0000,
        MapAttrs::SHARED_RW,
        true,
    );
    assert_eq!(
        pt.unmap_present(range(0x40_1000, 4096)).unwrap_err(),
        Error::BlockInTheWay(va(0x40_0000))
    );
}

#[test]
fn write_protect_strips_write_only_where_set() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    map(
        &fx,
        &mut pt,
        0x20_0000,
        2 * 4096,
        0x4100_0000,
        MapAttrs::SHARED_RW,
        false,
    );
    let rx = MapAttrs::new(Perms::RX, MemType::Normal, false);
    map(&fx, &mut pt, 0x30_0000, 4096, 0x4100_8000, rx, false);
    let t = pt.write_protect(range(0x20_0000, 0x20_0000)).unwrap();
    assert_eq!(
        t.range(),
        Some(FlushRange::pages(va(0x20_0000), 2).unwrap())
    );
    assert!(!t.upgrade_only());
    fx.complete(t);
    assert_eq!(pt.translate(va(0x20_1000)).unwrap().attrs.perms, Perms::R);
    assert_eq!(
        pt.translate(va(0x30_0000)).unwrap().attrs,
        rx,
        "not writable: untouched"
    );
    // Again: nothing writable left, nothing to flush.
    let t = pt.write_protect(range(0x20_0000, 0x20_0000)).unwrap();
    assert!(t.range().is_none());
    fx.complete(t);
}

#[test]
fn move_range_keeps_frames_and_moves_blocks_and_tables() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    // A 2 MiB block, then 512 pages (a whole L3 table), then one page.
    map_block(&fx, &mut pt);
    map(
        &fx,
        &mut pt,
        0x4020_0000,
        0x20_1000,
        0x4400_0000,
        MapAttrs::SHARED_RO,
        false,
    );
    let frames = fx.mem.allocated();
    let t = pt
        .move_range(range(0x4000_0000, 0x40_1000), va(0x8000_0000))
        .unwrap();
    assert_eq!(t.cause(), FlushCause::Move);
    let inv = t.invalidation().unwrap();
    assert_eq!(
        inv.range,
        FlushRange::pages(va(0x4000_0000), 0x401).unwrap()
    );
    assert!(!inv.leaf_only, "a table entry moved: walk caches go too");
    assert_eq!(
        inv.stride,
        tlb::Stride::Page,
        "the moved table's pages may be cached"
    );
    assert_eq!(
        t.freed_tables().len(),
        2,
        "the L3 table of the last page and the source's L2 table, emptied"
    );
    fx.complete(t);
    for (off, want, level) in [
        (0u64, 0x4200_0000u64, 2u8),
        (0x1F_F000, 0x421F_F000, 2),
        (0x20_0000, 0x4400_0000, 3),
        (0x3F_F000, 0x441F_F000, 3),
        (0x40_0000, 0x4420_0000, 3),
    ] {
        let t = pt.translate(va(0x8000_0000 + off)).unwrap();
        assert_eq!((t.pa, t.level), (pa(want), level), "offset {off:#x}");
        assert_eq!(pt.translate(va(0x4000_0000 + off)), None);
    }
    assert_eq!(
        pt.translate(va(0x8020_0000)).unwrap().attrs,
        MapAttrs::SHARED_RO
    );
    // The whole L3 moved as one entry: a new L2 and an L3 for the last page, the two emptied
    // tables freed; no second L3 of 512 pages was built.
    assert_eq!(fx.mem.allocated(), frames);
}

#[test]
fn move_range_errors_change_nothing() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    map_block(&fx, &mut pt);
    map(
        &fx,
        &mut pt,
        0x5000_0000,
        4096,
        0x4300_0000,
        MapAttrs::SHARED_RW,
        false,
    );
    let before = fx.mem.allocated();
    let block = range(0x4000_0000, 0x20_0000);
    assert_eq!(
        pt.move_range(block, va(0x6000_1000)).unwrap_err(),
        Error::Misaligned,
        "a block must stay 2 MiB-aligned"
    );
    assert_eq!(
        pt.move_range(block, va(0x4010_0000)).unwrap_err(),
        Error::MoveOverlap
    );
    assert_eq!(
        pt.move_range(block, va(0x5000_0000)).unwrap_err(),
        Error::AlreadyMapped(va(0x5000_0000))
    );
    assert_eq!(
        pt.move_range(range(0x5000_0000, 4096), va(0x5000_0800))
            .unwrap_err(),
        Error::Misaligned
    );
    assert_eq!(
        pt.move_range(range(0x4010_0000, 4096), va(0x6000_0000))
            .unwrap_err(),
        Error::BlockInTheWay(va(0x4000_0000))
    );
    // Out of frames for the destination's tables: the source is untouched.
    fx.mem.set_alloc_limit(Some(0));
    assert_eq!(
        pt.move_range(range(0x5000_0000, 4096), va(0x7000_0000_0000))
            .unwrap_err(),
        Error::OutOfFrames
    );
    fx.mem.set_alloc_limit(None);
    assert_eq!(pt.translate(va(0x5000_0000)).unwrap().pa, pa(0x4300_0000));
    assert_eq!(pt.translate(va(0x4000_0000)).unwrap().level, 2);
    assert_eq!(fx.mem.allocated(), before);
}

#[test]
fn tokens_carry_the_level_of_what_changed() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    map(
        &fx,
        &mut pt,
        0x20_0000,
        0x20_0000,
        0x4200_0000,
        MapAttrs::SHARED_RW,
        true,
    );
    map(
        &fx,
        &mut pt,
        0x40_0000,
        4 * 4096,
        0x4300_0000,
        MapAttrs::SHARED_RW,
        false,
    );
    let hint = |t: &TlbFlush| t.invalidation().unwrap().hint();
    // Pages: level 3, leaf only.
    let t = pt.protect(range(0x40_0000, 2 * 4096), Perms::R).unwrap();
    assert_eq!(
        hint(&t),
        tlb::LeafHint {
            leaf_only: true,
            level: Some(3)
        }
    );
    fx.complete(t);
    // A block: level 2.
    let t = pt.protect(range(0x20_0000, 0x20_0000), Perms::R).unwrap();
    assert_eq!(
        hint(&t),
        tlb::LeafHint {
            leaf_only: true,
            level: Some(2)
        }
    );
    fx.complete(t);
    // Both: mixed levels, no level.
    let t = pt.protect(range(0x20_0000, 0x20_4000), Perms::RW).unwrap();
    assert_eq!(
        hint(&t),
        tlb::LeafHint {
            leaf_only: true,
            level: None
        }
    );
    fx.complete(t);
    // A table freed: not leaf-only, so no level either.
    let t = pt.unmap(range(0x40_0000, 4 * 4096)).unwrap();
    assert_eq!(hint(&t), tlb::LeafHint::UNKNOWN);
    fx.complete(t);
}

#[test]
fn move_refuses_to_write_over_an_empty_table() {
    let fx = Fx::new();
    let mut pt = fx.table(VaHalf::Lower);
    map_block(&fx, &mut pt);
    // A broken remap leaves an L3 table of invalid entries at the destination.
    map(
        &fx,
        &mut pt,
        0x6000_0000,
        4096,
        0x4300_0000,
        MapAttrs::SHARED_RW,
        false,
    );
    let (flush, make) = pt
        .remap(range(0x6000_0000, 4096), pa(0x4400_0000))
        .unwrap()
        .into_parts();
    fx.complete(flush);
    assert_eq!(
        pt.move_range(range(0x4000_0000, 0x20_0000), va(0x6000_0000))
            .unwrap_err(),
        Error::AlreadyMapped(va(0x6000_0000))
    );
    assert_eq!(
        pt.translate(va(0x4000_0000)).unwrap().level,
        2,
        "nothing moved"
    );
    make.abandon(&fx.mem);
}
