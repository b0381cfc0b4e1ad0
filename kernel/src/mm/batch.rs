//! Batched flushes (Linux's `mmu_gather`): many changes to one address space, one flush at the
//! end that covers them all, and only after it the release of what they unmapped.
//!
//! # The contract
//!
//! [`AddressSpace::batch`] opens a [`FlushBatch`]. Its operations change the tables at once
//! (each under the table lock) but defer the flush: their tokens are merged into one, covering
//! the hull of what changed. [`FlushBatch::finish`] then performs that one flush — `DSB ISHST`,
//! the CPU TLBIs, every secondary TLB and its completion (`CMD_SYNC` for the SMMU), `DSB ISH` —
//! and only after it frees the page-table pages and runs the deferred releases of data frames
//! ([`FlushBatch::defer`]); break-before-make steps of the batch ([`FlushBatch::remap`]) write
//! their new entries last. Nothing unmapped by a batch is reusable before every TLB forgot it.
//!
//! While a batch is open, the ranges it was asked to change belong to it — and, where it unlinked
//! a table, the 1 GiB around them: [`AddressSpace::map`] and moves refuse to write new entries
//! there ([`AsError::BatchInFlight`]), since a stale entry of the old mapping (or a walk through
//! the unlinked table) could still be cached until the batch's flush (Linux relies on
//! `mmap_lock` for the same). The ranges of its break-before-make steps stay reserved until
//! those steps wrote them: other batches may not change them meanwhile. A batch whose flush
//! failed keeps its claim for good (fail closed).
//!
//! Nested-batch detection is between batches. A change made outside a batch returns a token
//! its caller must flush before anything else relies on it; it claims nothing.
//!
//! # Nested batches
//!
//! Two batches may change overlapping ranges at once (two CPUs zapping the same pages). The one
//! that comes second can find nothing left to clear — its token is empty — while the first one's
//! flush is still pending: returning then would let its caller believe the range unreachable
//! while a TLB still holds the translations the other batch cleared. So a batch that ends while
//! another open batch's range overlaps its own flushes the *whole* range it was asked to change,
//! walk caches included, on the CPU and on every secondary TLB
//! ([`FlushCause::NestedBatch`]). This is Linux's `mm_tlb_flush_nested()` check in
//! `tlb_finish_mmu()`, made precise: Linux forces the flush whenever any other batch of the mm is
//! pending, this code only when the ranges overlap.
//!
//! The union is a hull, as in Linux: scattered changes end in one flush of the range spanning
//! them, which the CPU and SMMU planners turn into an ASID-wide invalidation when it is large.

use alloc::{boxed::Box, vec::Vec};

use crate::mm::{
    addr::{PhysAddr, VirtAddr},
    address_space::{AddressSpace, AsError},
    pgtable::{PendingMake, Perms},
    tlb::{FlushCause, FlushDone, FlushRange, TlbFlush, VaRange},
};

/// What an ended batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Operations applied.
    pub operations: u64,
    /// What the one flush invalidated (`None`: nothing needed invalidating).
    pub flushed: Option<FlushRange>,
    /// Another batch with an overlapping range was open: the whole requested range was flushed.
    pub nested: bool,
    /// Deferred releases run after the flush.
    pub deferred: usize,
}

/// An open batch of changes to one address space (see the [module documentation](self)).
///
/// Dropping it un-finished finishes it (and logs an error if that flush fails): the changes are
/// already in the tables, so their flush cannot be skipped.
#[must_use = "a batch's changes are incomplete until FlushBatch::finish has flushed them"]
pub struct FlushBatch<'a> {
    space: &'a AddressSpace,
    id: u64,
    token: Option<TlbFlush>,
    requested: Option<FlushRange>,
    makes: Vec<PendingMake>,
    operations: u64,
    open: bool,
}

impl<'a> FlushBatch<'a> {
    pub(super) fn new(space: &'a AddressSpace, id: u64) -> Self {
        Self {
            space,
            id,
            token: None,
            requested: None,
            makes: Vec::new(),
            operations: 0,
            open: true,
        }
    }

    /// This batch's id among the address space's open batches.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Claims `range` for the batch before it is changed, so that a batch ending meanwhile sees
    /// the overlap (the claim is published before the table lock is taken for the change).
    /// Refused if another open batch reserved part of it for a make step: unmapping or changing
    /// what that step is about to write would be undone by it.
    fn claim(&mut self, range: FlushRange) -> Result<(), AsError> {
        if let Some(va) = self.space.claimed(range, Some(self.id), true) {
            return Err(AsError::BatchInFlight(va));
        }
        self.requested = Some(match self.requested {
            Some(r) => r.hull(range),
            None => range,
        });
        self.space.claim_batch_range(self.id, range, false);
        Ok(())
    }

    fn absorb(&mut self, token: TlbFlush) {
        // A table unlinked by the change stays reachable through walk caches until the flush:
        // claim the 1 GiB regions around the change too, so nobody links a new table in its
        // place before then (an unlinked level-1 table, 512 GiB, is not covered).
        let unlinked = token.range().and_then(|r| r.as_range());
        if let Some(r) = unlinked.filter(|_| !token.freed_tables().is_empty()) {
            const GIB: u64 = 1 << 30;
            let start = r.start().0 & !(GIB - 1);
            let end = (r.start().0 + r.len()).div_ceil(GIB) * GIB;
            if let Ok(wide) = VaRange::new(VirtAddr(start), end - start) {
                self.requested = self.requested.map(|q| q.hull(wide.into()));
                self.space.claim_batch_range(self.id, wide.into(), false);
            }
        }
        self.operations += 1;
        match &mut self.token {
            Some(t) => t.merge(token),
            None => self.token = Some(token),
        }
    }

    /// Unmaps whatever is mapped in `range` (holes allowed: another batch may have cleared it
    /// already). The frames stay the caller's; release them with [`FlushBatch::defer`].
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed).
    pub fn unmap(&mut self, range: VaRange) -> Result<(), AsError> {
        self.claim(range.into())?;
        let t = self.space.with_table(|pt| pt.unmap_present(range))?;
        self.absorb(t);
        Ok(())
    }

    /// Sets the permissions of every page of `range` (all must be mapped).
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed).
    pub fn protect(&mut self, range: VaRange, perms: Perms) -> Result<(), AsError> {
        self.claim(range.into())?;
        let t = self.space.with_table(|pt| pt.protect(range, perms))?;
        self.absorb(t);
        Ok(())
    }

    /// Removes write permission from every writable leaf of `range` (fork's write-protect).
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed).
    pub fn write_protect(&mut self, range: VaRange) -> Result<(), AsError> {
        self.claim(range.into())?;
        let t = self.space.with_table(|pt| pt.write_protect(range))?;
        self.absorb(t);
        Ok(())
    }

    /// Moves the mappings of `src` to `dst` (see
    /// [`PageTable::move_range`](crate::mm::pgtable::PageTable::move_range)); the old range is
    /// invalidated by the batch's flush.
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed).
    pub fn move_range(&mut self, src: VaRange, dst: VirtAddr) -> Result<(), AsError> {
        // The destination gets new entries: no batch, this one included, may have a flush
        // pending there. Both ends are claimed: until this batch's flush every TLB may still
        // translate the source to the moved frames.
        let dst_range: FlushRange = VaRange::from_pages(dst, src.pages())
            .map_err(crate::mm::pgtable::Error::from)?
            .into();
        if let Some(va) = self.space.claimed(dst_range, None, false) {
            return Err(AsError::BatchInFlight(va));
        }
        self.claim(src.into())?;
        self.claim(dst_range)?;
        let t = self.space.with_table(|pt| pt.move_range(src, dst))?;
        self.absorb(t);
        Ok(())
    }

    /// Breaks the mappings of `range` now and writes them at `new_pa` after the batch's flush
    /// (break-before-make spread over the batch: one flush for every break).
    ///
    /// # Errors
    ///
    /// [`AsError::Table`] (nothing changed).
    pub fn remap(&mut self, range: VaRange, new_pa: PhysAddr) -> Result<(), AsError> {
        self.claim(range.into())?;
        self.space.claim_batch_range(self.id, range.into(), true);
        let bbm = self.space.with_table(|pt| pt.remap(range, new_pa))?;
        let (t, make) = bbm.into_parts();
        self.makes.push(make);
        self.absorb(t);
        Ok(())
    }

    /// Runs `work` once the batch's flush completed on the CPU and on every secondary TLB —
    /// the release of the data frames the batch unmapped. If the flush fails, `work` never runs
    /// (what it would free is leaked rather than reachable by a device).
    pub fn defer(&mut self, work: impl FnOnce() + Send + 'static) {
        let t = self
            .token
            .get_or_insert_with(|| TlbFlush::nothing(self.space.root(), FlushCause::Batch));
        t.defer(Box::new(work));
    }

    /// Ends the batch: one flush for everything (the whole requested range if an overlapping
    /// batch is still open), then frees its table pages, runs its deferred releases, and
    /// writes the new entries of its break-before-make steps.
    ///
    /// # Errors
    ///
    /// [`AsError::Flush`]: a secondary TLB failed. Frames and deferred releases are leaked and
    /// the broken ranges of [`FlushBatch::remap`] stay unmapped. [`AsError::Table`] if a
    /// make step found its entries changed meanwhile.
    pub fn finish(mut self) -> Result<BatchReport, AsError> {
        self.end()
    }

    fn end(&mut self) -> Result<BatchReport, AsError> {
        self.open = false;
        let mut token = self
            .token
            .take()
            .unwrap_or_else(|| TlbFlush::nothing(self.space.root(), FlushCause::Batch));
        token.mark_gathered();
        let nested = self
            .requested
            .is_some_and(|r| self.space.batch_overlaps_other(self.id, r));
        if let Some(r) = self.requested.filter(|_| nested) {
            token.force_nested(r);
        }
        let flushed = token.range();
        let deferred = token.deferred_len();
        let done: FlushDone = match self.space.flush(token) {
            Ok(d) => d,
            Err(e) => {
                // Fail closed: the claim stays (nobody maps there, overlapping batches keep
                // flushing), and the broken ranges stay unmapped.
                for make in self.makes.drain(..) {
                    make.abandon(&*self.space.env().frames);
                }
                log::error!(
                    "batch {}: flush failed ({e}); its ranges stay claimed",
                    self.id
                );
                return Err(e);
            }
        };
        // Every make step is attempted; the first failure is reported.
        let mut first_error = None;
        for make in self.makes.drain(..) {
            let made = self
                .space
                .with_table(|pt| make.make(pt, &done))
                .and_then(|publish| self.space.flush(publish).map(|_| ()));
            if let Err(e) = made {
                first_error.get_or_insert(e);
            }
        }
        self.space.release_batch(self.id, nested);
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(BatchReport {
            operations: self.operations,
            flushed,
            nested,
            deferred,
        })
    }
}

impl Drop for FlushBatch<'_> {
    fn drop(&mut self) {
        if self.open {
            log::error!("batch {} dropped without finish: flushing it now", self.id);
            if let Err(e) = self.end() {
                log::error!("flush of dropped batch {} failed: {e}", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, vec, vec::Vec};

    use super::*;
    use crate::mm::{
        pgtable::{
            MapAttrs,
            fake::{Dma, Ev, FakeMem, Log, ModelIotlb, RecordingSecondary, fake_env},
        },
        tlb::SecondaryTlbMode,
    };

    const MIB2: u64 = 2 * 1024 * 1024;
    const X: u64 = 0x4000_0000;

    fn range(s: u64, pages: u64) -> VaRange {
        VaRange::from_pages(VirtAddr(s), pages).unwrap()
    }

    struct Fx {
        mem: Arc<FakeMem>,
        log: Log,
        space: AddressSpace,
    }

    fn fx(mode: SecondaryTlbMode) -> Fx {
        let log = Log::default();
        let (mem, env) = fake_env(4096, 16, 2, true, &log);
        let space = AddressSpace::new(env).unwrap();
        space.set_secondary_mode_override(Some(mode));
        Fx { mem, log, space }
    }

    fn map(s: &AddressSpace, va: u64, pa: u64, pages: u64) {
        s.flush(
            s.map(range(va, pages), PhysAddr(pa), MapAttrs::SHARED_RW, false)
                .unwrap(),
        )
        .unwrap();
    }

    fn secondary_events(ev: &[Ev]) -> Vec<(FlushRange, FlushCause)> {
        ev.iter()
            .filter_map(|e| match e {
                Ev::Secondary { range, cause, .. } => Some((*range, *cause)),
                _ => None,
            })
            .collect()
    }

    /// 16 one-page unmaps in a batch: one flush of the hull, told to the secondary TLB once, and
    /// the deferred release after it — before it in `gather-late`.
    #[test]
    fn one_flush_per_batch_and_release_after_it() {
        for mode in [SecondaryTlbMode::Sync, SecondaryTlbMode::GatherLate] {
            let f = fx(mode);
            f.space
                .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
                .unwrap();
            map(&f.space, X, 0x8000_0000, 16);
            f.log.take();
            let mut b = f.space.batch();
            for i in 0..16 {
                b.unmap(range(X + i * 4096, 1)).unwrap();
            }
            let log = f.log.clone();
            b.defer(move || log.push(Ev::Marker(7)));
            assert!(f.log.take().is_empty(), "nothing flushed before finish");
            let r = b.finish().unwrap();
            assert_eq!(
                (r.operations, r.nested, r.deferred),
                (16, false, 1),
                "{mode}"
            );
            assert_eq!(r.flushed, Some(range(X, 16).into()));
            let ev = f.log.take();
            assert_eq!(
                secondary_events(&ev),
                vec![(range(X, 16).into(), FlushCause::Unmap)]
            );
            let told = ev
                .iter()
                .position(|e| matches!(e, Ev::Secondary { .. }))
                .unwrap();
            let released = ev.iter().position(|e| *e == Ev::Marker(7)).unwrap();
            assert_eq!(
                released > told,
                mode == SecondaryTlbMode::Sync,
                "{mode}: {ev:?}"
            );
            let st = f.space.stats();
            assert_eq!(
                (st.batches, st.nested_batches, st.deferred_released),
                (1, 0, 1)
            );
            assert_eq!(st.range_flushes, 1);
        }
    }

    /// The second of two overlapping batches finds nothing to clear, yet flushes the whole
    /// range before it returns: the device can no longer reach the unmapped frame.
    #[test]
    fn nested_batch_flushes_what_the_other_cleared() {
        for (mode, after_nested) in [
            (SecondaryTlbMode::Sync, Dma::Translation),
            (SecondaryTlbMode::NestedUnaware, Dma::Ok(0x8000_1000)),
        ] {
            let f = fx(mode);
            let iotlb = ModelIotlb::new();
            f.space.register_secondary(iotlb.clone()).unwrap();
            map(&f.space, X, 0x8000_0000, 4);
            assert_eq!(
                iotlb.access_space(&f.space, X + 0x1000, true),
                Dma::Ok(0x8000_1000)
            );
            let mut first = f.space.batch();
            first.unmap(range(X, 4)).unwrap();
            let mut second = f.space.batch();
            second.unmap(range(X + 0x1000, 2)).unwrap();
            let r = second.finish().unwrap();
            assert!(r.nested);
            assert_eq!(r.flushed, Some(range(X + 0x1000, 2).into()));
            assert_eq!(
                iotlb.access_space(&f.space, X + 0x1000, true),
                after_nested,
                "{mode}"
            );
            first.finish().unwrap();
            assert_eq!(
                iotlb.access_space(&f.space, X + 0x1000, true),
                Dma::Translation
            );
            assert_eq!(f.space.stats().nested_batches, 1);
        }
        // Disjoint batches are not nested.
        let f = fx(SecondaryTlbMode::Sync);
        map(&f.space, X, 0x8000_0000, 4);
        let mut a = f.space.batch();
        a.unmap(range(X, 1)).unwrap();
        let mut b = f.space.batch();
        b.unmap(range(X + 0x2000, 1)).unwrap();
        assert!(!b.finish().unwrap().nested);
        assert!(!a.finish().unwrap().nested);
        assert_eq!(f.space.open_batches(), 0);
    }

    #[test]
    fn mapping_into_a_pending_batch_is_refused() {
        let f = fx(SecondaryTlbMode::Sync);
        map(&f.space, X, 0x8000_0000, 2);
        let mut b = f.space.batch();
        b.unmap(range(X, 2)).unwrap();
        let e = f
            .space
            .map(
                range(X + 0x1000, 1),
                PhysAddr(0x9000_0000),
                MapAttrs::SHARED_RW,
                false,
            )
            .unwrap_err();
        assert_eq!(e, AsError::BatchInFlight(VirtAddr(X)));
        b.finish().unwrap();
        map(&f.space, X + 0x1000, 0x9000_0000, 1);
    }

    /// mremap: leaves and a whole level-3 table move; the old range is flushed before the move
    /// returns, so a new mapping there is all the device reaches — except in `move-late`.
    #[test]
    fn move_range_moves_and_flushes_before_returning() {
        for mode in [SecondaryTlbMode::Sync, SecondaryTlbMode::MoveLate] {
            let f = fx(mode);
            let iotlb = ModelIotlb::new();
            f.space.register_secondary(iotlb.clone()).unwrap();
            // 2 MiB + 2 pages from a 2 MiB boundary: one whole table, two leaves.
            map(&f.space, X, 0x8000_0000, 514);
            let tables = f.space.table_frames();
            assert_eq!(
                iotlb.access_space(&f.space, X + 0x10, true),
                Dma::Ok(0x8000_0010)
            );
            let dst = 0x8000_0000u64;
            f.space.move_range(range(X, 514), VirtAddr(dst)).unwrap();
            assert_eq!(f.space.translate(VirtAddr(X)), None);
            for (i, off) in [0u64, 0x1000, MIB2, MIB2 + 0x1000].into_iter().enumerate() {
                let t = f.space.translate(VirtAddr(dst + off)).unwrap();
                assert_eq!(t.pa, PhysAddr(0x8000_0000 + off), "page {i}");
            }
            // The level-3 table moved whole; the old level-3 table of the two leaves is freed,
            // and new tables above dst were made.
            assert!(f.space.table_frames() <= tables + 2);
            map(&f.space, X, 0x9000_0000, 1);
            let want = if mode == SecondaryTlbMode::Sync {
                Dma::Ok(0x9000_0010)
            } else {
                Dma::Ok(0x8000_0010)
            };
            assert_eq!(iotlb.access_space(&f.space, X + 0x10, true), want, "{mode}");
            // `move-late` owes the invalidation until the next flush.
            assert_eq!(f.space.secondary_owes(), mode == SecondaryTlbMode::MoveLate);
            f.space
                .flush(f.space.protect(range(X, 1), Perms::R).unwrap())
                .unwrap();
            assert!(!f.space.secondary_owes());
        }
        let f = fx(SecondaryTlbMode::Sync);
        map(&f.space, X, 0x8000_0000, 4);
        map(&f.space, X + 0x10_0000, 0x8010_0000, 1);
        use crate::mm::pgtable::Error as E;
        let err = |src: VaRange, dst: u64| f.space.move_range(src, VirtAddr(dst)).unwrap_err();
        assert_eq!(err(range(X, 4), X + 0x2000), AsError::Table(E::MoveOverlap));
        assert_eq!(
            err(range(X, 4), X + 0xF_E000),
            AsError::Table(E::AlreadyMapped(VirtAddr(X + 0x10_0000)))
        );
        assert_eq!(
            err(range(X, 5), X + 0x20_0000),
            AsError::Table(E::NotMapped(VirtAddr(X + 0x4000)))
        );
        assert_eq!(
            f.space.translate(VirtAddr(X)).unwrap().pa,
            PhysAddr(0x8000_0000)
        );
    }

    /// Fork: every writable page write-protected, one flush at the end; read-only pages and
    /// holes untouched; the device's cached writable entry is gone.
    #[test]
    fn fork_write_protects_everything_with_one_flush() {
        let f = fx(SecondaryTlbMode::Sync);
        let iotlb = ModelIotlb::new();
        f.space.register_secondary(iotlb.clone()).unwrap();
        map(&f.space, X, 0x8000_0000, 8);
        map(&f.space, 0x30_0000_0000, 0x8100_0000, 1);
        f.space
            .flush(f.space.protect(range(X + 0x3000, 1), Perms::R).unwrap())
            .unwrap();
        assert_eq!(iotlb.access_space(&f.space, X, true), Dma::Ok(0x8000_0000));
        let before = f.space.stats();
        let mut b = f.space.batch();
        b.write_protect(VaRange::from_pages(VirtAddr(0), 1 << 36).unwrap())
            .unwrap();
        let r = b.finish().unwrap();
        assert_eq!(
            r.flushed,
            Some(FlushRange::Pages(
                VaRange::covering(VirtAddr(X), 0x30_0000_1000).unwrap()
            ))
        );
        let st = f.space.stats();
        assert_eq!(
            st.secondary_notifications - before.secondary_notifications,
            1
        );
        for i in 0..8 {
            let t = f.space.translate(VirtAddr(X + i * 4096)).unwrap();
            assert_eq!(t.attrs.perms, Perms::R, "page {i}");
        }
        assert_eq!(iotlb.access_space(&f.space, X, true), Dma::Permission);
    }

    /// Break-before-make in a batch: every break flushed once, then the makes; a migration
    /// copies between the break's flush and the make.
    #[test]
    fn batched_remap_and_migrate() {
        let f = fx(SecondaryTlbMode::Sync);
        let iotlb = ModelIotlb::new();
        f.space.register_secondary(iotlb.clone()).unwrap();
        f.space
            .register_secondary(RecordingSecondary::new("smmu", f.log.clone()))
            .unwrap();
        map(&f.space, X, 0x8000_0000, 4);
        for i in 0..4 {
            iotlb.access_space(&f.space, X + i * 4096, false);
        }
        let mut b = f.space.batch();
        b.remap(range(X, 1), PhysAddr(0x9000_0000)).unwrap();
        b.remap(range(X + 0x3000, 1), PhysAddr(0x9000_3000))
            .unwrap();
        assert_eq!(
            f.space.translate(VirtAddr(X)),
            None,
            "broken until the batch ends"
        );
        b.finish().unwrap();
        assert_eq!(iotlb.access_space(&f.space, X, true), Dma::Ok(0x9000_0000));
        assert_eq!(
            iotlb.access_space(&f.space, X + 0x3000, true),
            Dma::Ok(0x9000_3000)
        );
        assert_eq!(
            iotlb.access_space(&f.space, X + 0x1000, true),
            Dma::Ok(0x8000_1000)
        );

        let log = f.log.clone();
        f.log.take();
        f.space
            .migrate(range(X + 0x1000, 1), PhysAddr(0x9000_1000), move || {
                log.push(Ev::Marker(1))
            })
            .unwrap();
        let ev = f.log.take();
        let told = ev
            .iter()
            .position(|e| matches!(e, Ev::Secondary { .. }))
            .unwrap();
        let copied = ev.iter().position(|e| *e == Ev::Marker(1)).unwrap();
        assert!(
            told < copied,
            "the copy runs after the break reached the SMMU: {ev:?}"
        );
        assert_eq!(
            iotlb.access_space(&f.space, X + 0x1000, true),
            Dma::Ok(0x9000_1000)
        );
        let _ = f.mem.allocated();
    }

    /// Two threads unmap overlapping ranges in batches, round after round: whenever a batch
    /// returns, the model IOTLB reaches none of the pages it was asked to unmap, whoever
    /// cleared them.
    #[test]
    fn concurrent_overlapping_batches_never_return_early() {
        let f = fx(SecondaryTlbMode::Sync);
        let space = Arc::new(f.space);
        let iotlb = ModelIotlb::new();
        space.register_secondary(iotlb.clone()).unwrap();
        const PAGES: u64 = 32;
        for round in 0..200u64 {
            map(&space, X, 0x8000_0000, PAGES);
            for i in 0..PAGES {
                iotlb.access_space(&space, X + i * 4096, true);
            }
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let workers: Vec<_> = (0..2u64)
                .map(|t| {
                    let (space, iotlb, barrier) = (space.clone(), iotlb.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        // Overlapping, different ranges per thread and round.
                        let first = (round * 7 + t * 5) % (PAGES / 2);
                        let pages = PAGES / 2 + t * 3;
                        let pages = pages.min(PAGES - first);
                        barrier.wait();
                        let mut b = space.batch();
                        for i in 0..pages {
                            b.unmap(range(X + (first + i) * 4096, 1)).unwrap();
                            std::thread::yield_now();
                        }
                        let report = b.finish().unwrap();
                        for i in 0..pages {
                            let va = X + (first + i) * 4096;
                            assert_eq!(
                                iotlb.access_space(&space, va, true),
                                Dma::Translation,
                                "round {round}, thread {t}: page {va:#x} still reachable after \
                                 the batch returned ({report:?})"
                            );
                        }
                        report.nested
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            // Whatever the threads left mapped goes too, before the next round maps again.
            let mut b = space.batch();
            b.unmap(range(X, PAGES)).unwrap();
            b.finish().unwrap();
        }
        let st = space.stats();
        assert_eq!(space.open_batches(), 0);
        assert!(st.batches >= 600, "{st:?}");
        // The threads really overlapped in some rounds (they start at a barrier).
        assert!(st.nested_batches > 0, "no batch ever overlapped: {st:?}");
    }

    /// What the review of the first version found, each now refused or handled.
    #[test]
    fn claims_cover_move_destinations_make_steps_and_failed_flushes() {
        use core::sync::atomic::Ordering;
        let f = fx(SecondaryTlbMode::Sync);
        map(&f.space, X, 0x8000_0000, 2);
        map(&f.space, X + 0x10_0000, 0x8010_0000, 1);
        // A batched move claims its destination: a batch unmapping it meanwhile is nested.
        let mut a = f.space.batch();
        a.move_range(range(X, 2), VirtAddr(X + 0x20_0000)).unwrap();
        let mut b = f.space.batch();
        b.unmap(range(X + 0x20_0000, 2)).unwrap();
        assert!(b.finish().unwrap().nested);
        a.finish().unwrap();
        // Nothing moves into a range whose flush is pending, this batch's own included.
        map(&f.space, X, 0x8000_0000, 1);
        let mut c = f.space.batch();
        c.unmap(range(X, 1)).unwrap();
        assert_eq!(
            c.move_range(range(X + 0x10_0000, 1), VirtAddr(X)),
            Err(AsError::BatchInFlight(VirtAddr(X)))
        );
        c.finish().unwrap();
        // A make step's range is reserved until it is written.
        map(&f.space, X, 0x8000_0000, 1);
        let mut d = f.space.batch();
        d.remap(range(X, 1), PhysAddr(0x9000_0000)).unwrap();
        let mut e = f.space.batch();
        assert_eq!(
            e.unmap(range(X, 1)),
            Err(AsError::BatchInFlight(VirtAddr(X)))
        );
        e.finish().unwrap();
        d.finish().unwrap();
        assert_eq!(
            f.space.translate(VirtAddr(X)).unwrap().pa,
            PhysAddr(0x9000_0000)
        );
        // A failed flush keeps the claim: nothing is mapped where the SMMU may still translate.
        let bad = RecordingSecondary::new("bad", f.log.clone());
        f.space.register_secondary(bad.clone()).unwrap();
        bad.fail.store(true, Ordering::Relaxed);
        let mut g = f.space.batch();
        g.unmap(range(X, 1)).unwrap();
        assert!(matches!(g.finish(), Err(AsError::Flush(_))));
        bad.fail.store(false, Ordering::Relaxed);
        assert_eq!(
            f.space
                .map(
                    range(X, 1),
                    PhysAddr(0x9100_0000),
                    MapAttrs::SHARED_RW,
                    false
                )
                .unwrap_err(),
            AsError::BatchInFlight(VirtAddr(X & !((1 << 30) - 1)))
        );
    }
}
