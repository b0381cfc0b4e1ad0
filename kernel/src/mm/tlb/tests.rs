//! Host tests of the flush path: ranges, CPU plans, execution order, errors and batching.

use std::{sync::Arc, vec, vec::Vec};

use super::{executor::*, *};
use crate::mm::pgtable::fake::{Ev, FakeMem, Log, RecordingSecondary, RecordingTlb};
use crate::mm::{
    addr::{PhysAddr, VirtAddr},
    asid::{AsidAllocator, AsidContext},
};

fn va(x: u64) -> VirtAddr {
    VirtAddr(x)
}

fn inv(range: FlushRange, leaf_only: bool) -> Invalidation {
    Invalidation {
        range,
        leaf_only,
        stride: Stride::Page,
        level: None,
    }
}

fn ops(i: &Invalidation, scope: TlbScope, range: bool) -> Vec<TlbiOp> {
    plan(i, scope, TlbFeatures { range }).collect()
}

// -- ranges --------------------------------------------------------------------------------

#[test]
fn range_edges_that_bit_linux() {
    // Jann Horn's nested-flush case: (~0, ~0) is empty, never "everything".
    assert_eq!(
        FlushRange::from_bounds(va(u64::MAX), u64::MAX),
        Err(RangeError::Empty)
    );
    // The flush_tlb_mm (0, -1UL) idiom: its end does not round up, it is an error; the whole
    // address space is spelled FlushRange::All.
    assert_eq!(
        FlushRange::from_bounds(va(0), u64::MAX),
        Err(RangeError::Overflow)
    );
    // Empty ranges (start == end), as 6.6-6.13 passed to notifiers.
    assert_eq!(
        FlushRange::from_bounds(va(0x4000), 0x4000),
        Err(RangeError::Empty)
    );
    assert_eq!(
        FlushRange::from_bounds(va(0x5000), 0x4000),
        Err(RangeError::Empty)
    );
    assert_eq!(FlushRange::pages(va(0x4000), 0), Err(RangeError::Empty));
    // Exclusive end, no +1 (the 2022 SMMU off-by-one).
    assert_eq!(
        FlushRange::from_bounds(va(0x1000), 0x2000),
        Ok(FlushRange::page(va(0x1000)))
    );
    assert_eq!(
        FlushRange::from_bounds(va(0x1234), 0x2001),
        FlushRange::pages(va(0x1000), 2)
    );
    // The top page of the upper half: representable, and its end is never computed.
    let top = FlushRange::pages(va(0xFFFF_FFFF_FFFF_E000), 2).unwrap();
    assert_eq!(top.last_page(), Some(va(0xFFFF_FFFF_FFFF_F000)));
    assert_eq!(top.page_count(), Some(2));
    assert!(top.covers(va(u64::MAX)));
    assert_eq!(
        FlushRange::pages(va(0xFFFF_FFFF_FFFF_F000), 2),
        Err(RangeError::Overflow)
    );
    assert_eq!(
        FlushRange::pages(va(0x1000), u64::MAX),
        Err(RangeError::Overflow)
    );
    assert_eq!(
        FlushRange::pages(va(0x1001), 1),
        Err(RangeError::Misaligned)
    );
    // Leaving the lower half, or starting in the non-canonical hole.
    assert_eq!(
        FlushRange::pages(va(0x0000_FFFF_FFFF_F000), 2),
        Err(RangeError::NotCanonical)
    );
    assert_eq!(
        FlushRange::pages(va(0x0001_0000_0000_0000), 1),
        Err(RangeError::NotCanonical)
    );
    assert!(FlushRange::pages(va(0x0000_FFFF_FFFF_F000), 1).is_ok());
    // All has no bounds at all.
    assert_eq!(FlushRange::All.page_count(), None);
    assert_eq!(FlushRange::All.start(), None);
    assert_eq!(FlushRange::All.last_page(), None);
    assert!(FlushRange::All.covers(va(0x1234)));
    assert_eq!(FlushRange::page(va(0x1FFF)), FlushRange::page(va(0x1000)));
}

#[test]
fn hull() {
    let a = FlushRange::page(va(0x1000));
    let b = FlushRange::page(va(0x5000));
    assert_eq!(a.hull(b), FlushRange::pages(va(0x1000), 5).unwrap());
    assert_eq!(b.hull(a), FlushRange::pages(va(0x1000), 5).unwrap());
    assert_eq!(a.hull(a), a);
    assert_eq!(a.hull(FlushRange::All), FlushRange::All);
    assert_eq!(
        a.hull(FlushRange::page(va(0xFFFF_0000_0000_0000))),
        FlushRange::All
    );
}

// -- operands ------------------------------------------------------------------------------

#[test]
fn operand_encodings() {
    assert_eq!(va_operand(5, va(0x1234_5000)), 0x0005_0000_0001_2345);
    assert_eq!(va_operand(5, va(0x1234_5FFF)), 0x0005_0000_0001_2345);
    assert_eq!(
        va_operand(0xFFFF, va(0x0000_FFFF_FFFF_F000)),
        0xFFFF_000F_FFFF_FFFF
    );
    // Upper-half VA: bits [43:0] carry VA[55:12].
    assert_eq!(
        va_operand(0, va(0xFFFF_0000_1234_5000)),
        0x0000_0FF0_0001_2345
    );
    assert_eq!(asid_operand(0x1234), 0x1234_0000_0000_0000);
    // ASID[63:48] TG[47:46]=01 SCALE[45:44] NUM[43:39] TTL[38:37]=0 BADDR[36:0].
    assert_eq!(range_operand(5, va(0x20_0000), 1, 7), 0x0005_5380_0000_0200);
    assert_eq!(range_operand(0, va(0), 0, 0), 0x0000_4000_0000_0000);
    assert_eq!(
        range_operand(0xABCD, va(0x0000_FFFF_FFFF_E000), 3, 31),
        0xABCD_7F8F_FFFF_FFFE
    );
    assert_eq!(range_pages(0, 0), 2);
    assert_eq!(range_pages(0, 31), 64);
    assert_eq!(range_pages(1, 0), 64);
    assert_eq!(range_pages(1, 7), 512);
    assert_eq!(range_pages(3, 31), MAX_TLBI_RANGE_PAGES);
    let op = TlbiOp {
        kind: TlbiKind::Rvae1is,
        operand: range_operand(9, va(0x20_0000), 1, 7),
    };
    assert_eq!(op.pages(), Some((0x200, 512)));
    assert_eq!(op.asid(), 9);
    assert_eq!(TlbFeatures::from_isar0(0), TlbFeatures { range: false });
    assert_eq!(
        TlbFeatures::from_isar0(1 << 56),
        TlbFeatures { range: false }
    );
    assert_eq!(
        TlbFeatures::from_isar0(2 << 56),
        TlbFeatures { range: true }
    );
}

// -- plans ---------------------------------------------------------------------------------

#[test]
fn plan_single_pages() {
    let p = inv(FlushRange::page(va(0x1234_5000)), true);
    let expect = [TlbiOp {
        kind: TlbiKind::Vale1is,
        operand: 0x0005_0000_0001_2345,
    }];
    assert_eq!(ops(&p, TlbScope::Asid(5), false), expect);
    assert_eq!(
        ops(&p, TlbScope::Asid(5), true),
        expect,
        "one page never needs a range op"
    );
    let p = inv(FlushRange::page(va(0x1234_5000)), false);
    assert_eq!(ops(&p, TlbScope::Asid(5), false)[0].kind, TlbiKind::Vae1is);
    // Kernel (global) scope: by VA for all ASIDs, no ASID field.
    let p = inv(FlushRange::page(va(0xFFFF_0000_0000_1000)), true);
    assert_eq!(
        ops(&p, TlbScope::Global, false),
        [TlbiOp {
            kind: TlbiKind::Vaale1is,
            operand: 0x0FF0_0000_0001
        }]
    );
    let p = inv(FlushRange::page(va(0xFFFF_0000_0000_1000)), false);
    assert_eq!(ops(&p, TlbScope::Global, false)[0].kind, TlbiKind::Vaae1is);
}

#[test]
fn plan_all() {
    let p = inv(FlushRange::All, false);
    assert_eq!(
        ops(&p, TlbScope::Asid(3), false),
        [TlbiOp {
            kind: TlbiKind::Aside1is,
            operand: 3 << 48
        }]
    );
    assert_eq!(
        ops(&p, TlbScope::Asid(3), true),
        [TlbiOp {
            kind: TlbiKind::Aside1is,
            operand: 3 << 48
        }]
    );
    assert_eq!(
        ops(&p, TlbScope::Global, true),
        [TlbiOp {
            kind: TlbiKind::Vmalle1is,
            operand: 0
        }]
    );
}

#[test]
fn plan_without_range_threshold() {
    let p = inv(FlushRange::pages(va(0x40_0000), 511).unwrap(), true);
    let v = ops(&p, TlbScope::Asid(1), false);
    assert_eq!(v.len(), 511);
    for (i, op) in v.iter().enumerate() {
        assert_eq!(
            *op,
            TlbiOp {
                kind: TlbiKind::Vale1is,
                operand: (1 << 48) | (0x400 + i as u64)
            }
        );
    }
    // 512 pages (2 MiB) and more: one ASID-wide TLBI.
    let p = inv(FlushRange::pages(va(0x40_0000), 512).unwrap(), true);
    assert_eq!(
        ops(&p, TlbScope::Asid(1), false),
        [TlbiOp {
            kind: TlbiKind::Aside1is,
            operand: 1 << 48
        }]
    );
    let p = inv(
        FlushRange::pages(va(0xFFFF_0000_0040_0000), 4096).unwrap(),
        false,
    );
    assert_eq!(
        ops(&p, TlbScope::Global, false),
        [TlbiOp {
            kind: TlbiKind::Vmalle1is,
            operand: 0
        }]
    );
}

#[test]
fn plan_block_stride() {
    let p = Invalidation {
        range: FlushRange::pages(va(0x20_0000), 3 * 512).unwrap(),
        leaf_only: true,
        stride: Stride::Block2M,
        level: Some(2),
    };
    assert_eq!(
        ops(&p, TlbScope::Asid(2), false),
        [0x200, 0x400, 0x600].map(|pg| TlbiOp {
            kind: TlbiKind::Vale1is,
            operand: (2 << 48) | pg
        })
    );
    // One block: one single TLBI even with TLBIRANGE.
    let one = Invalidation {
        range: FlushRange::pages(va(0x20_0000), 512).unwrap(),
        ..p
    };
    assert_eq!(ops(&one, TlbScope::Asid(2), true).len(), 1);
    // A misaligned "block" hint is ignored (per page: 512 => ASID-wide).
    let bad = Invalidation {
        range: FlushRange::pages(va(0x20_1000), 512).unwrap(),
        ..p
    };
    assert_eq!(
        ops(&bad, TlbScope::Asid(2), false)[0].kind,
        TlbiKind::Aside1is
    );
}

#[test]
fn plan_range_yardsticks() {
    // 2 MiB with FEAT_TLBIRANGE: one RVALE1IS, NUM=7, SCALE=1 (Linux's case (b3)).
    let p = inv(FlushRange::pages(va(0x20_0000), 512).unwrap(), true);
    assert_eq!(
        ops(&p, TlbScope::Asid(4), true),
        [TlbiOp {
            kind: TlbiKind::Rvale1is,
            operand: range_operand(4, va(0x20_0000), 1, 7)
        }]
    );
    // 511 pages: 1 single + 2 range ops (case (b4)).
    let p = inv(FlushRange::pages(va(0x20_0000), 511).unwrap(), false);
    assert_eq!(
        ops(&p, TlbScope::Asid(4), true),
        [
            TlbiOp {
                kind: TlbiKind::Vae1is,
                operand: va_operand(4, va(0x20_0000))
            },
            TlbiOp {
                kind: TlbiKind::Rvae1is,
                operand: range_operand(4, va(0x20_1000), 1, 6)
            },
            TlbiOp {
                kind: TlbiKind::Rvae1is,
                operand: range_operand(4, va(0x3C_1000), 0, 30)
            },
        ]
    );
    // The largest range is one op; one more page pair falls back to ASIDE1IS.
    let p = inv(
        FlushRange::pages(va(0), MAX_TLBI_RANGE_PAGES).unwrap(),
        true,
    );
    assert_eq!(
        ops(&p, TlbScope::Asid(4), true),
        [TlbiOp {
            kind: TlbiKind::Rvale1is,
            operand: range_operand(4, va(0), 3, 31)
        }]
    );
    let p = inv(
        FlushRange::pages(va(0), MAX_TLBI_RANGE_PAGES + 2).unwrap(),
        true,
    );
    assert_eq!(
        ops(&p, TlbScope::Asid(4), true),
        [TlbiOp {
            kind: TlbiKind::Aside1is,
            operand: 4 << 48
        }]
    );
    // Two pages: a single range op (never NUM = SCALE = 0 with one page).
    let p = inv(FlushRange::pages(va(0x5000), 2).unwrap(), true);
    assert_eq!(
        ops(&p, TlbScope::Asid(4), true),
        [TlbiOp {
            kind: TlbiKind::Rvale1is,
            operand: range_operand(4, va(0x5000), 0, 0)
        }]
    );
    // Kernel ranges use the all-ASID range forms.
    let p = inv(
        FlushRange::pages(va(0xFFFF_0000_0020_0000), 512).unwrap(),
        false,
    );
    assert_eq!(ops(&p, TlbScope::Global, true)[0].kind, TlbiKind::Rvaae1is);
}

/// The range plan covers exactly the requested pages, without overlap, in at most five ops.
#[test]
fn plan_range_coverage_is_exact() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let mut sizes: Vec<u64> = (1..=600).collect();
    sizes.extend([
        1023,
        1024,
        1025,
        65535,
        65536,
        65537,
        2_000_000,
        MAX_TLBI_RANGE_PAGES - 1,
        MAX_TLBI_RANGE_PAGES,
    ]);
    sizes.extend((0..300).map(|_| 1 + rnd(MAX_TLBI_RANGE_PAGES)));
    for n in sizes {
        let start = rnd(1 << 20) << 12;
        let p = inv(FlushRange::pages(va(start), n).unwrap(), rnd(2) == 0);
        let v = ops(&p, TlbScope::Asid(77), true);
        assert!(v.len() <= 5, "{n} pages took {} ops", v.len());
        let mut next = start >> 12;
        for op in &v {
            assert_eq!(op.asid(), 77);
            assert_eq!(op.kind.is_range(), op.pages().unwrap().1 > 1);
            let (first, count) = op.pages().unwrap();
            assert_eq!(first, next, "{n} pages: gap or overlap");
            next += count;
        }
        assert_eq!(next, (start >> 12) + n, "{n} pages: wrong coverage");
        if n < MAX_TLBI_OPS {
            let w = ops(&p, TlbScope::Asid(77), false);
            assert_eq!(w.len() as u64, n);
        }
    }
}

// -- execution -----------------------------------------------------------------------------

struct Fx {
    mem: FakeMem,
    log: Log,
    tlb: RecordingTlb,
    list: SecondaryTlbs,
    stats: FlushStats,
}

impl Fx {
    fn new(range: bool) -> Self {
        let log = Log::default();
        let list = SecondaryTlbs::new();
        list.set_mode_override(Some(crate::mm::tlb::SecondaryTlbMode::Sync));
        Self {
            mem: FakeMem::new(16),
            tlb: RecordingTlb::new(range, log.clone()),
            log,
            list,
            stats: FlushStats::default(),
        }
    }
    fn run(&self, t: TlbFlush, scope: TargetScope<'_>) -> Result<FlushDone, FlushError> {
        execute(
            t,
            &FlushTarget {
                tlb: &self.tlb,
                scope,
                secondaries: Some(&self.list),
                frames: &self.mem,
                stats: Some(&self.stats),
            },
        )
    }
}

const ROOT: PhysAddr = PhysAddr(0x4000_0000);

#[test]
fn execute_orders_cpu_secondary_completion_then_free() {
    let fx = Fx::new(false);
    let smmu = RecordingSecondary::new("smmu", fx.log.clone());
    fx.list.register(smmu.clone());
    let frame = crate::mm::frame::FrameSource::alloc_zeroed_frame(&fx.mem).unwrap();
    let range = FlushRange::pages(va(0x7000), 3).unwrap();
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Unmap,
        inv(range, false),
        false,
        vec![frame],
    );
    fx.run(t, TargetScope::Asid(9)).unwrap();
    let vae = |pg: u64| {
        Ev::Tlbi(TlbiOp {
            kind: TlbiKind::Vae1is,
            operand: (9 << 48) | pg,
        })
    };
    assert_eq!(
        fx.log.take(),
        vec![
            Ev::DsbIshst,
            vae(7),
            vae(8),
            vae(9),
            Ev::Secondary {
                name: "smmu".into(),
                asid: 9,
                range,
                cause: FlushCause::Unmap
            },
            Ev::DsbIsh,
            Ev::Isb,
        ]
    );
    assert!(!fx.mem.is_allocated(frame));
    let s = fx.stats.snapshot();
    assert_eq!(
        (
            s.range_flushes,
            s.cpu_tlbis,
            s.secondary_notifications,
            s.frames_freed
        ),
        (1, 3, 1, 1)
    );
}

/// A TLB executor that runs a hook at its `DSB ISHST` (another CPU acting at that moment).
struct HookTlb<'a> {
    inner: RecordingTlb,
    hook: &'a (dyn Fn() + Send + Sync),
}

impl TlbMaintenance for HookTlb<'_> {
    fn features(&self) -> TlbFeatures {
        self.inner.features()
    }
    fn dsb_ishst(&self) {
        self.inner.dsb_ishst();
        (self.hook)();
    }
    fn tlbi(&self, op: TlbiOp) {
        self.inner.tlbi(op);
    }
    fn dsb_ish(&self) {
        self.inner.dsb_ish();
    }
    fn isb(&self) {
        self.inner.isb();
    }
    fn flush_all_cpu_tlbs(&self) {
        self.inner.flush_all_cpu_tlbs();
    }
    unsafe fn write_ttbr0(&self, value: u64) {
        // SAFETY: forwarded to the recording fake.
        unsafe { self.inner.write_ttbr0(value) };
    }
}

/// The ASID of a live context is read after the `DSB ISHST`: if another CPU re-tags the
/// context at that moment, the TLBI and the secondary TLBs use the new value.
#[test]
fn context_asid_is_read_after_the_store_barrier() {
    let alloc = AsidAllocator::new(4, 1).unwrap();
    let ctx = AsidContext::new();
    assert_eq!(alloc.assign(&ctx), 1);
    let others: Vec<AsidContext> = (0..16).map(|_| AsidContext::new()).collect();
    for o in &others {
        let _ = alloc.activate(0, o).unwrap();
    }
    assert_eq!(alloc.rollovers(), 1);
    assert_eq!(
        alloc.asid_of(&ctx),
        Some(1),
        "stale, and 1 now belongs to someone else"
    );
    let hook = || {
        let _ = alloc.activate(0, &ctx).unwrap();
    };
    let log = Log::default();
    let tlb = HookTlb {
        inner: RecordingTlb::new(false, log.clone()),
        hook: &hook,
    };
    let list = SecondaryTlbs::new();
    list.set_mode_override(Some(crate::mm::tlb::SecondaryTlbMode::Sync));
    list.register(RecordingSecondary::new("smmu", log.clone()));
    let mem = FakeMem::new(1);
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Protect,
        inv(FlushRange::page(va(0x1000)), true),
        false,
        vec![],
    );
    let target = FlushTarget {
        tlb: &tlb,
        scope: TargetScope::Context(&alloc, &ctx),
        secondaries: Some(&list),
        frames: &mem,
        stats: None,
    };
    execute(t, &target).unwrap();
    let new = alloc.asid_of(&ctx).unwrap();
    assert_ne!(new, 1);
    let ev = log.take();
    assert_eq!(
        ev[1],
        Ev::Tlbi(TlbiOp {
            kind: TlbiKind::Vale1is,
            operand: va_operand(new, va(0x1000))
        })
    );
    assert!(matches!(&ev[2], Ev::Secondary { asid, .. } if *asid == new));
}

#[test]
fn failing_secondary_keeps_frames() {
    let fx = Fx::new(true);
    let ok = RecordingSecondary::new("ok", fx.log.clone());
    let bad = RecordingSecondary::new("bad", fx.log.clone());
    bad.fail.store(true, core::sync::atomic::Ordering::Relaxed);
    fx.list.register(bad.clone());
    fx.list.register(ok.clone());
    let frame = crate::mm::frame::FrameSource::alloc_zeroed_frame(&fx.mem).unwrap();
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::MergeBlock,
        inv(FlushRange::All, false),
        false,
        vec![frame],
    );
    let e = fx.run(t, TargetScope::Asid(3)).unwrap_err();
    assert_eq!(
        e,
        FlushError::Secondary {
            name: "bad".into(),
            error: SecondaryTlbError::new(SecondaryTlbFailure::Timeout),
            failures: 1
        }
    );
    let log = fx.log.take();
    // Both secondaries were tried, and the CPU sequence still completed.
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e, Ev::Secondary { .. }))
            .count(),
        2
    );
    assert_eq!(&log[log.len() - 2..], &[Ev::DsbIsh, Ev::Isb]);
    assert!(
        fx.mem.is_allocated(frame),
        "a secondary walker may still use it"
    );
    assert_eq!(fx.stats.snapshot().secondary_failures, 1);
}

#[test]
fn kernel_scope_never_notifies() {
    let fx = Fx::new(false);
    fx.list
        .register(RecordingSecondary::new("smmu", fx.log.clone()));
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Protect,
        inv(FlushRange::page(va(0xFFFF_0000_0000_0000)), true),
        false,
        vec![],
    );
    fx.run(t, TargetScope::Global).unwrap();
    assert!(
        fx.log
            .take()
            .iter()
            .all(|e| !matches!(e, Ev::Secondary { .. }))
    );
    let fx2 = Fx::new(false);
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Protect,
        inv(FlushRange::page(va(0xFFFF_0000_0000_0000)), true),
        false,
        vec![],
    );
    flush_kernel(t, &fx2.tlb, &fx2.mem).unwrap();
    assert_eq!(
        fx2.log.take()[1],
        Ev::Tlbi(TlbiOp {
            kind: TlbiKind::Vaale1is,
            operand: 0x0FF0_0000_0000
        })
    );
}

#[test]
fn barrier_only_and_noop() {
    let fx = Fx::new(false);
    fx.list
        .register(RecordingSecondary::new("smmu", fx.log.clone()));
    fx.run(
        TlbFlush::barrier_only(ROOT, FlushCause::Map),
        TargetScope::Asid(1),
    )
    .unwrap();
    assert_eq!(fx.log.take(), vec![Ev::DsbIshst, Ev::Isb]);
    let t = TlbFlush::nothing(ROOT, FlushCause::Protect);
    assert!(t.is_noop());
    fx.run(t, TargetScope::Asid(1)).unwrap();
    assert_eq!(fx.log.take(), vec![]);
    assert_eq!(fx.stats.snapshot().barrier_only, 1);
}

#[test]
fn merge_batches_and_proves_all() {
    let up = |p| {
        TlbFlush::invalidate(
            ROOT,
            FlushCause::Protect,
            inv(FlushRange::page(va(p)), true),
            true,
            vec![],
        )
    };
    let mut a = up(0x1000);
    let b = up(0x3000);
    let (ia, ib) = (a.id(), b.id());
    a.merge(b);
    assert_eq!(a.range(), Some(FlushRange::pages(va(0x1000), 3).unwrap()));
    assert!(a.upgrade_only() && a.invalidation().unwrap().leaf_only);
    a.merge(TlbFlush::barrier_only(ROOT, FlushCause::Map));
    assert!(a.upgrade_only(), "a new mapping adds nothing to invalidate");
    assert_eq!(a.cause(), FlushCause::Batch);
    let down = TlbFlush::invalidate(
        ROOT,
        FlushCause::Unmap,
        inv(FlushRange::page(va(0x9000)), false),
        false,
        vec![],
    );
    let id_down = down.id();
    a.merge(down);
    assert!(!a.upgrade_only() && !a.invalidation().unwrap().leaf_only);
    let fx = Fx::new(false);
    let done = fx.run(a, TargetScope::Asid(1)).unwrap();
    assert!(done.covers(ia) && done.covers(ib) && done.covers(id_down));
    // Barrier-only first, invalidation merged in: takes the other's upgrade flag.
    let mut m = TlbFlush::barrier_only(ROOT, FlushCause::Map);
    m.merge(up(0x1000));
    assert!(m.upgrade_only());
    fx.run(m, TargetScope::Asid(1)).unwrap();
}

#[test]
fn dropped_token_leaks_instead_of_freeing() {
    let mem = FakeMem::new(4);
    let frame = crate::mm::frame::FrameSource::alloc_zeroed_frame(&mem).unwrap();
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Unmap,
        inv(FlushRange::All, false),
        false,
        vec![frame],
    );
    drop(t);
    assert!(mem.is_allocated(frame));
    let t = TlbFlush::invalidate(
        ROOT,
        FlushCause::Unmap,
        inv(FlushRange::All, false),
        false,
        vec![frame],
    );
    // SAFETY: test: the frame was never part of a live table.
    let done = unsafe { complete_without_tlb(t, &mem) };
    assert!(!mem.is_allocated(frame));
    drop(done);
    let _ = Arc::new(0);
}
