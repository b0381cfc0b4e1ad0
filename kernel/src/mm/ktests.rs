//! On-target tests of the virtual-memory core: what the host tests cannot show.
//!
//! The host tests (`pgtable`, `tlb`, `asid`, `address_space`) check the tables,
//! the TLBI plans and the notifier calls against recording fakes. Only a real CPU can show that
//! the plans are *enough*: that after each flush this CPU's TLB — and, through the broadcast
//! `… IS` TLBIs, the other CPU's — stops using the old translation. So these tests enter the
//! address space ([`context::enter`]) and read or write through its lower-half VAs, and judge by
//! the data they get and the faults they take, not by the table contents alone.
//!
//! What a stale TLB entry looks like on QEMU: its software TLB keeps a translation with its
//! permissions until a TLBI (or a miss) drops it, so an entry for the *old frame* returns the
//! old frame's data after a remap, and a cached *writable* entry lets a write through after a
//! downgrade. A cached read-only entry is not observable on the CPU (QEMU re-walks on a
//! permission miss), which is why the upgrade tests count faults rather than expect a loop —
//! the device side of that bug is what the scenarios show. Nor can a stale entry under a
//! *recycled ASID* be seen on QEMU's CPU: its TLB is not ASID-tagged but flushed whole whenever
//! TTBR0's ASID changes, which every enter and leave does. The ASID tests therefore check what
//! the target can show — distinct ASIDs, the pinned ASID surviving real rollovers, every read
//! returning the entered space's own frame — while the SMMU's ASID-tagged TLB is exercised by
//! the scenarios. Checked by mutation on QEMU 7.2: with the by-VA TLBIs removed, the remap,
//! block, downgrade and cross-CPU tests fail (while the upgrade tests still pass, as said);
//! with them made local instead of broadcast, the cross-CPU test fails.
//!
//! Faults are resolved, never fatal: with the default [`FaultPolicy::Report`] a CPU write to a
//! read-only page is an unrecoverable EL1 abort that ends the machine, so every test that may
//! fault installs a policy that records the fault and upgrades the page ([`FaultLog`]).
//!
//! `flush_costs` prints, without asserting on them, the figures the "Virtual memory" issue's
//! closing note quotes (see [`bench`]).

#[path = "bench.rs"]
mod bench;

use crate::{
    kassert, kassert_eq,
    ktest::require,
    mm::{
        PAGE_SIZE, PhysAddr, VirtAddr,
        addr::BLOCK_2M,
        address_space::{
            AddressSpace, AsError, FaultClass, FaultHandler, FaultKind, FaultOutcome, FaultPolicy,
            MmEnv,
        },
        asid::AsidAllocator,
        context, frame, kernel_map,
        pgtable::{MapAttrs, MemType, Perms},
        tlb::{FlushCause, FlushRange, SecondaryTlb, SecondaryTlbError, SecondaryTlbMode, VaRange},
    },
    smp,
};
use alloc::{boxed::Box, format, string::String, sync::Arc, vec, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};
use spin::Mutex;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// Where the tests map their pages: lower-half VAs, 2 MiB-aligned, one region per test so that
// an address in a failure message names its test.
const VA_FAULT: u64 = 0x0000_0010_0000_0000;
const VA_REMAP: u64 = 0x0000_0010_4000_0000;
const VA_BLOCK: u64 = 0x0000_0010_8000_0000;
const VA_ISOLATION: u64 = 0x0000_0010_c000_0000;
const VA_NOTIFY: u64 = 0x0000_0011_0000_0000;
const VA_ROLLOVER: u64 = 0x0000_0011_4000_0000;
const VA_CROSS_CPU: u64 = 0x0000_0011_8000_0000;

/// Turns any displayable error into a test failure reason.
trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, String>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Physically contiguous frames owned by a test, freed on drop. The kernel reaches them through
/// the linear window; the tests map them into address spaces.
struct Frames(frame::PhysBlock);

impl Frames {
    /// `pages` zeroed frames aligned to `align`.
    fn alloc(pages: u64, align: u64) -> Result<Self, String> {
        frame::PhysBlock::zeroed(pages * PAGE_SIZE, align)
            .map(Self)
            .or_fail("frames")
    }

    /// Physical address of page `page`.
    fn pa(&self, page: u64) -> PhysAddr {
        self.0.ptr(page * PAGE_SIZE, PAGE_SIZE);
        self.0.pa().add(page * PAGE_SIZE)
    }

    fn word(&self, off: u64) -> *mut u64 {
        assert!(off.is_multiple_of(8));
        self.0.ptr(off, 8) as *mut u64
    }

    /// The 64-bit word at byte `off`, read through the linear window.
    fn get(&self, off: u64) -> u64 {
        // SAFETY: the block is owned by this value and mapped RW in the linear window; `word`
        // checked bounds and alignment. Volatile: the CPU also writes it through lower-half
        // aliases the compiler does not know about.
        unsafe { self.word(off).read_volatile() }
    }

    /// Writes the 64-bit word at byte `off` through the linear window.
    fn put(&self, off: u64, v: u64) {
        // SAFETY: as in `get`.
        unsafe { self.word(off).write_volatile(v) }
    }

    /// Writes a distinct tag at the start and end of every page: `tag(seed, page)` and its
    /// complement, so a read through the wrong frame or the wrong page shows.
    fn tag_pages(&self, seed: u64) {
        for page in 0..self.0.size() / PAGE_SIZE {
            self.put(page * PAGE_SIZE, tag(seed, page));
            self.put(page * PAGE_SIZE + PAGE_SIZE - 8, !tag(seed, page));
        }
    }
}

/// The tag [`Frames::tag_pages`] writes in `page` of a block tagged with `seed`.
const fn tag(seed: u64, page: u64) -> u64 {
    seed << 32 | page
}

/// Reads the 64-bit word at lower-half `va` on this CPU.
///
/// # Safety
///
/// The calling CPU must be entered in an address space that maps `va` readable to memory the
/// test owns (so the access cannot reach anything else, whatever the TLB holds — every frame any
/// of the test's mappings ever pointed at is still owned by the test), or a fault at `va` must be
/// resolved by the space's fault policy.
unsafe fn peek(va: u64) -> u64 {
    // SAFETY: the caller guarantees the mapping; volatile so that the access happens exactly
    // here, between the page-table operations the test orders it against.
    unsafe { (va as *const u64).read_volatile() }
}

/// Writes the 64-bit word at lower-half `va` on this CPU.
///
/// # Safety
///
/// As for [`peek`]; a write to a read-only page faults, so the space's fault policy must
/// resolve write permission faults (a [`FaultLog`]).
unsafe fn poke(va: u64, v: u64) {
    // SAFETY: as in `peek`.
    unsafe { (va as *mut u64).write_volatile(v) }
}

fn range(va: u64, pages: u64) -> Result<VaRange, String> {
    VaRange::new(VirtAddr(va), pages * PAGE_SIZE).or_fail("range")
}

/// Maps `pages` 4 KiB pages (or, with `block`, 2 MiB blocks where possible) and flushes.
fn map(
    space: &AddressSpace,
    va: u64,
    pa: PhysAddr,
    pages: u64,
    perms: Perms,
    block: bool,
) -> Result<(), String> {
    let attrs = MapAttrs::new(perms, MemType::Normal, false);
    let t = space
        .map(range(va, pages)?, pa, attrs, block)
        .or_fail("map")?;
    space.flush(t).or_fail("flush after map")?;
    Ok(())
}

/// Changes permissions and flushes.
fn protect(space: &AddressSpace, va: u64, pages: u64, perms: Perms) -> Result<(), String> {
    let t = space.protect(range(va, pages)?, perms).or_fail("protect")?;
    space.flush(t).or_fail("flush after protect")?;
    Ok(())
}

fn new_space() -> Result<Arc<AddressSpace>, String> {
    context::new_address_space().or_fail("new address space")
}

fn flush_page(va: u64) -> FlushRange {
    FlushRange::page(VirtAddr(va))
}

fn flush_pages(va: u64, pages: u64) -> Result<FlushRange, String> {
    FlushRange::pages(VirtAddr(va), pages).or_fail("flush range")
}

/// A fault policy that records every fault and resolves write permission faults by making the
/// page writable in place (the upgrade path of [`FaultPolicy::UpgradeOnWrite`], done through
/// the public API so the test sees exactly which faults the CPU took).
struct FaultLog {
    faults: Mutex<Vec<(u64, FaultKind)>>,
}

impl FaultLog {
    /// A new log, installed as `space`'s policy.
    fn install(space: &AddressSpace) -> Arc<Self> {
        let log = Arc::new(Self {
            // Preallocated: the handler runs in the abort handler.
            faults: Mutex::new(Vec::with_capacity(16)),
        });
        space.set_fault_policy(FaultPolicy::Handler(log.clone()));
        log
    }

    fn take(&self) -> Vec<(u64, FaultKind)> {
        core::mem::take(&mut *self.faults.lock())
    }
}

impl FaultHandler for FaultLog {
    fn handle(
        &self,
        space: &AddressSpace,
        far: VirtAddr,
        kind: FaultKind,
    ) -> Result<FaultOutcome, AsError> {
        self.faults.lock().push((far.0, kind));
        if kind.class != FaultClass::Permission || !kind.write {
            return Ok(FaultOutcome::Unhandled);
        }
        let (token, changed) = space.grant(far, Perms::WRITE)?;
        space.flush(token)?;
        Ok(if changed {
            FaultOutcome::Upgraded
        } else {
            FaultOutcome::Spurious
        })
    }
}

/// The fault a CPU write to a read-only 4 KiB page raises.
const WRITE_PERMISSION_FAULT: FaultKind = FaultKind {
    class: FaultClass::Permission,
    level: 3,
    write: true,
};

/// What a [`Recorder`] was told: (ASID, range, cause).
type Told = (u16, FlushRange, FlushCause);

/// A secondary TLB that records every invalidation it is asked for (or, for long loops, only
/// accepts them: the address space's counters count them).
struct Recorder {
    seen: Mutex<Vec<Told>>,
    keep: bool,
}

impl Recorder {
    /// `keep`: remember each call.
    fn new(keep: bool) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::with_capacity(16)),
            keep,
        })
    }

    fn take(&self) -> Vec<Told> {
        core::mem::take(&mut *self.seen.lock())
    }
}

impl SecondaryTlb for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        if self.keep {
            self.seen.lock().push((asid, range, cause));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Permissions and faults
// ---------------------------------------------------------------------------------------------

/// Read-only data, for the W^X layout check.
static RODATA_PROBE: [u64; 2] = [0x5244_4f4e_4c59, 1];
/// Writable data (`.data`), for the W^X layout check.
static DATA_PROBE: AtomicU64 = AtomicU64::new(0x4441_5441);

crate::ktest! {
    /// The kernel's TTBR1 image is W^X: text executable and read-only, rodata read-only and
    /// execute-never, data, heap and stacks writable and execute-never; all global.
    fn kernel_wx_layout() {
        let heap = Box::new(0u64);
        let stack = 0u64;
        let text = kernel_map::translate as *const () as u64;
        let probes = [
            ("text", text, Perms::RX),
            ("rodata", RODATA_PROBE.as_ptr() as u64, Perms::R),
            ("data", DATA_PROBE.as_ptr() as u64, Perms::RW),
            ("heap", &*heap as *const u64 as u64, Perms::RW),
            ("stack", &stack as *const u64 as u64, Perms::RW),
        ];
        for (what, va, perms) in probes {
            let t = kernel_map::translate(VirtAddr(va))
                .ok_or_else(|| format!("{what} at {va:#x} is not mapped"))?;
            kassert_eq!(t.attrs.perms, perms, "{what} at {va:#x}");
            kassert!(t.attrs.global && t.attrs.mem == MemType::Normal, "{what}: {:?}", t.attrs);
            kassert!(
                !(t.attrs.perms.contains(Perms::WRITE) && t.attrs.perms.contains(Perms::EXEC)),
                "{what} is writable and executable"
            );
            log::debug!("W^X: {what} at {va:#x}: {:?} level {}", t.attrs.perms, t.level);
        }
        // The data probe is really written through its RW mapping.
        DATA_PROBE.fetch_add(1, Ordering::Relaxed);
        {
            use aarch64_cpu::registers::SCTLR_EL1;
            use tock_registers::interfaces::Readable;
            kassert!(SCTLR_EL1.is_set(SCTLR_EL1::WXN), "SCTLR_EL1.WXN is clear");
        }
        Ok(())
    }
}

crate::ktest! {
    /// A CPU write to a read-only page raises exactly one write permission fault at that VA; the
    /// handler upgrades the page in place (grant + flush) and the retried write lands. A second
    /// write takes no fault.
    fn cpu_write_to_ro_page_faults_once() {
        let p = Frames::alloc(1, PAGE_SIZE)?;
        p.put(0, 0x1111);
        let space = new_space()?;
        let faults = FaultLog::install(&space);
        let va = VA_FAULT;
        map(&space, va, p.pa(0), 1, Perms::R, false)?;
        let before = space.stats();
        let entered = context::enter(&space).or_fail("enter")?;
        // SAFETY: entered; `va` maps `p`, owned by this test; write faults are resolved by the
        // FaultLog policy.
        let (read, after_first) = unsafe {
            let r = peek(va);
            poke(va + 0x10, 0x2222);
            let n = faults.faults.lock().len();
            poke(va + 0x18, 0x3333);
            (r, n)
        };
        drop(entered);
        kassert_eq!(read, 0x1111, "read through the read-only mapping");
        kassert_eq!(after_first, 1, "the first write must fault exactly once");
        kassert_eq!(faults.take(), vec![(va + 0x10, WRITE_PERMISSION_FAULT)]);
        kassert_eq!((p.get(0x10), p.get(0x18)), (0x2222, 0x3333), "both writes landed");
        let t = space.translate(VirtAddr(va)).ok_or("unmapped")?;
        kassert_eq!(t.attrs.perms, Perms::RW);
        let s = space.stats();
        kassert_eq!(s.page_flushes - before.page_flushes, 1, "one page flush for the upgrade");
        kassert_eq!(s.upgrade_flushes - before.upgrade_flushes, 1);
        Ok(())
    }
}

crate::ktest! {
    /// `protect(RW)` + flush of a page the CPU has just read (its TLB holds the read-only
    /// entry): the next write succeeds without any fault.
    fn protect_upgrade_then_write_no_fault() {
        let p = Frames::alloc(1, PAGE_SIZE)?;
        p.put(0, 0x4444);
        let space = new_space()?;
        let faults = FaultLog::install(&space);
        let va = VA_FAULT + 0x10_0000;
        map(&space, va, p.pa(0), 1, Perms::R, false)?;
        let entered = context::enter(&space).or_fail("enter")?;
        // SAFETY: entered; `va` maps `p`, owned by this test.
        let read = unsafe { peek(va) };
        protect(&space, va, 1, Perms::RW)?;
        // SAFETY: as above; a fault would be resolved (and fail the test below).
        unsafe { poke(va + 8, 0x5555) };
        drop(entered);
        kassert_eq!(read, 0x4444);
        kassert_eq!(faults.take(), vec![], "the upgrade was flushed before the write");
        kassert_eq!(p.get(8), 0x5555);
        Ok(())
    }
}

crate::ktest! {
    /// The other direction, where a stale entry is observable on the CPU: the TLB holds a
    /// writable entry (the CPU just wrote), the page becomes read-only and is flushed; the next
    /// write must fault (exactly once, then the handler upgrades it back).
    fn protect_downgrade_then_write_faults() {
        let p = Frames::alloc(1, PAGE_SIZE)?;
        let space = new_space()?;
        let faults = FaultLog::install(&space);
        let va = VA_FAULT + 0x20_0000;
        map(&space, va, p.pa(0), 1, Perms::RW, false)?;
        let entered = context::enter(&space).or_fail("enter")?;
        // SAFETY: entered; `va` maps `p`, owned by this test; faults are resolved by FaultLog.
        unsafe { poke(va, 0x6666) };
        protect(&space, va, 1, Perms::R)?;
        // SAFETY: as above.
        unsafe { poke(va + 8, 0x7777) };
        drop(entered);
        kassert_eq!(
            faults.take(),
            vec![(va + 8, WRITE_PERMISSION_FAULT)],
            "a write after the downgrade flush must fault (a stale writable entry lets it through)"
        );
        kassert_eq!((p.get(0), p.get(8)), (0x6666, 0x7777));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Break-before-make
// ---------------------------------------------------------------------------------------------

crate::ktest! {
    /// Remap with break-before-make: the CPU reads the old frames through the VAs (caching
    /// them), the range moves to new frames, and the same VAs now read the new frames' data —
    /// for one page and for a run of pages.
    fn remap_bbm_cpu_reads_new_frames() {
        const PAGES: u64 = 8;
        let old = Frames::alloc(PAGES, PAGE_SIZE)?;
        let new = Frames::alloc(PAGES, PAGE_SIZE)?;
        old.tag_pages(0x01d);
        new.tag_pages(0x0e1);
        let space = new_space()?;
        let va = VA_REMAP;
        map(&space, va, old.pa(0), PAGES, Perms::RW, false)?;
        let entered = context::enter(&space).or_fail("enter")?;
        let check = |frames: &Frames, seed: u64, what: &str| -> Result<(), String> {
            for page in 0..PAGES {
                let pva = va + page * PAGE_SIZE;
                // SAFETY: entered; `pva` maps a page of `old` or `new`, both owned by this test
                // until after the address space is gone.
                let (first, last) = unsafe { (peek(pva), peek(pva + PAGE_SIZE - 8)) };
                if (first, last) != (tag(seed, page), !tag(seed, page)) {
                    return Err(format!(
                        "{what}: page {page} read {first:#x}/{last:#x}, expected tag {:#x}",
                        tag(seed, page)
                    ));
                }
                let t = space.translate(VirtAddr(pva)).ok_or("unmapped")?;
                if t.pa != frames.pa(page) || t.level != 3 {
                    return Err(format!("{what}: page {page} translates to {:?}", t));
                }
            }
            Ok(())
        };
        let result = (|| {
            check(&old, 0x01d, "before the remap")?;
            // One page first, then the whole run.
            space.remap(range(va, 1)?, new.pa(0)).or_fail("remap one page")?;
            // SAFETY: as in `check`.
            let one = unsafe { peek(va) };
            if one != tag(0x0e1, 0) {
                return Err(format!("after a one-page remap the CPU read {one:#x}"));
            }
            space.remap(range(va, PAGES)?, new.pa(0)).or_fail("remap the run")?;
            check(&new, 0x0e1, "after the remap")?;
            space.remap(range(va, PAGES)?, old.pa(0)).or_fail("remap back")?;
            check(&old, 0x01d, "after remapping back")
        })();
        drop(entered);
        result?;
        Ok(())
    }
}

crate::ktest! {
    /// A 2 MiB block, remapped as a block, split into pages, a page moved away (merge refused)
    /// and back, then merged into a block at another frame: after every step, translate() and
    /// CPU reads through the VA of several pages give the expected frame.
    fn block_split_merge_keep_translations() {
        let x = Frames::alloc(512, BLOCK_2M)?;
        let y = Frames::alloc(512, BLOCK_2M)?;
        let z = Frames::alloc(1, PAGE_SIZE)?;
        x.tag_pages(0xb10ca);
        y.tag_pages(0xb10cb);
        z.tag_pages(0x51de);
        let space = new_space()?;
        let va = VA_BLOCK;
        map(&space, va, x.pa(0), 512, Perms::RW, true)?;
        let entered = context::enter(&space).or_fail("enter")?;
        let samples = [0u64, 1, 2, 255, 256, 310, 510, 511];
        // Every sample page must translate to `base + page` at `level` and read its tag.
        let check = |step: &str, base: PhysAddr, seed: u64, level: u8| -> Result<(), String> {
            for &page in &samples {
                let pva = va + page * PAGE_SIZE;
                let t = space
                    .translate(VirtAddr(pva))
                    .ok_or_else(|| format!("{step}: page {page} unmapped"))?;
                if t.pa != base.add(page * PAGE_SIZE) || t.level != level {
                    return Err(format!("{step}: page {page}: {t:?}, expected {:?} level {level}",
                        base.add(page * PAGE_SIZE)));
                }
                // SAFETY: entered; the region maps pages of `x`, `y` or `z`, all owned by this
                // test until after the address space is gone.
                let (first, last) = unsafe { (peek(pva), peek(pva + PAGE_SIZE - 8)) };
                if (first, last) != (tag(seed, page), !tag(seed, page)) {
                    return Err(format!("{step}: page {page} read {first:#x}/{last:#x}, expected \
                        {:#x}", tag(seed, page)));
                }
            }
            Ok(())
        };
        let result = (|| {
            check("block", x.pa(0), 0xb10ca, 2)?;
            space.remap(range(va, 512)?, y.pa(0)).or_fail("remap the block")?;
            check("block remapped", y.pa(0), 0xb10cb, 2)?;
            space.split_block(VirtAddr(va)).or_fail("split")?;
            check("split", y.pa(0), 0xb10cb, 3)?;
            // Page 310 moves elsewhere: the region is no longer contiguous.
            let moved = va + 310 * PAGE_SIZE;
            space.remap(range(moved, 1)?, z.pa(0)).or_fail("remap one page")?;
            // SAFETY: as in `check`.
            let got = unsafe { peek(moved) };
            if got != tag(0x51de, 0) {
                return Err(format!("page moved to z read {got:#x}"));
            }
            match space.merge_to_block(VirtAddr(va), None) {
                Err(AsError::Table(_)) => {}
                other => return Err(format!("merge of non-contiguous pages: {other:?}")),
            }
            space.remap(range(moved, 1)?, y.pa(310)).or_fail("remap the page back")?;
            check("split, page moved back", y.pa(0), 0xb10cb, 3)?;
            space.merge_to_block(VirtAddr(va), None).or_fail("merge in place")?;
            check("merged in place", y.pa(0), 0xb10cb, 2)?;
            space.split_block(VirtAddr(va)).or_fail("split again")?;
            check("split again", y.pa(0), 0xb10cb, 3)?;
            // Merge to another frame: every cached page entry of y must be gone.
            space.merge_to_block(VirtAddr(va), Some(x.pa(0))).or_fail("merge to x")?;
            check("merged to x", x.pa(0), 0xb10ca, 2)
        })();
        drop(entered);
        result?;
        kassert_eq!(space.table_frames(), 3, "root, L1, L2: the L3 tables were freed");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

crate::ktest! {
    /// Two address spaces map the same VA to different frames under distinct ASIDs; what the CPU
    /// writes in one is never seen through the other, even with both in the TLB.
    fn two_spaces_same_va_isolated() {
        let fa = Frames::alloc(1, PAGE_SIZE)?;
        let fb = Frames::alloc(1, PAGE_SIZE)?;
        fa.put(0, 0xaaaa);
        fb.put(0, 0xbbbb);
        let a = new_space()?;
        let b = new_space()?;
        let va = VA_ISOLATION;
        map(&a, va, fa.pa(0), 1, Perms::RW, false)?;
        map(&b, va, fb.pa(0), 1, Perms::RW, false)?;
        let mut seen = Vec::new();
        for round in 0..3u64 {
            for (name, space, frames) in [("A", &a, &fa), ("B", &b, &fb)] {
                let entered = context::enter(space).or_fail("enter")?;
                // SAFETY: entered; `va` maps `frames`, owned by this test.
                let (before, after) = unsafe {
                    let r = peek(va);
                    poke(va, r + 1);
                    (r, peek(va))
                };
                drop(entered);
                seen.push((name, round, before));
                kassert_eq!(after, before + 1);
                kassert_eq!(frames.get(0), after, "{name} wrote its own frame (round {round})");
            }
        }
        kassert_eq!(fa.get(0), 0xaaaa + 3, "A saw only its own writes: {seen:?}");
        kassert_eq!(fb.get(0), 0xbbbb + 3, "B saw only its own writes: {seen:?}");
        kassert!(a.asid() != b.asid() && a.asid() != 0 && b.asid() != 0,
            "ASIDs {} and {}", a.asid(), b.asid());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The secondary-TLB notifier
// ---------------------------------------------------------------------------------------------

/// One of every operation on an address space with a [`Recorder`] in `mode`. Returns what the
/// recorder was expected to be told in `sync` mode (with an upgrade flag per entry), what it was
/// told, what it was told at unregistration, and the ASID.
#[allow(clippy::type_complexity)]
fn notifier_ops(
    mode: SecondaryTlbMode,
) -> Result<(Vec<(Told, bool)>, Vec<Told>, Vec<Told>, u16), String> {
    let pages = Frames::alloc(4, PAGE_SIZE)?;
    let other = Frames::alloc(1, PAGE_SIZE)?;
    let block = Frames::alloc(512, BLOCK_2M)?;
    let space = new_space()?;
    space.set_secondary_mode_override(Some(mode));
    space.set_fault_policy(FaultPolicy::UpgradeOnWrite);
    let rec = Recorder::new(true);
    let handle = space.register_secondary(rec.clone()).or_fail("register")?;
    let asid = space.asid();
    let v = VA_NOTIFY;
    let b = VA_NOTIFY + BLOCK_2M;
    let page = |i: u64| v + i * PAGE_SIZE;
    let mut expect = Vec::new();
    let mut exp = |range: FlushRange, cause: FlushCause, upgrade: bool| {
        expect.push(((asid, range, cause), upgrade));
    };

    // Maps: invalid → valid, a barrier only, nobody is told.
    map(&space, v, pages.pa(0), 4, Perms::RW, false)?;
    map(&space, b, block.pa(0), 512, Perms::RW, true)?;
    // Downgrade of a run, then upgrade of one page.
    protect(&space, v, 4, Perms::R)?;
    exp(flush_pages(v, 4)?, FlushCause::Protect, false);
    protect(&space, page(1), 1, Perms::RW)?;
    exp(flush_page(page(1)), FlushCause::Protect, true);
    let t = space.unmap(range(page(3), 1)?).or_fail("unmap")?;
    space.flush(t).or_fail("flush unmap")?;
    exp(flush_page(page(3)), FlushCause::Unmap, false);
    space
        .remap(range(page(0), 1)?, other.pa(0))
        .or_fail("remap")?;
    exp(flush_page(page(0)), FlushCause::Remap, false);
    space.split_block(VirtAddr(b)).or_fail("split")?;
    exp(flush_pages(b, 512)?, FlushCause::SplitBlock, false);
    space.merge_to_block(VirtAddr(b), None).or_fail("merge")?;
    exp(flush_pages(b, 512)?, FlushCause::MergeBlock, false);
    // A real CPU write fault on the read-only page 2, upgraded by the policy.
    let entered = context::enter(&space).or_fail("enter")?;
    // SAFETY: entered; page 2 maps `pages`, owned by this function; the UpgradeOnWrite policy
    // resolves the write permission fault.
    unsafe { poke(page(2) + 8, 0x0f0f) };
    drop(entered);
    if pages.get(2 * PAGE_SIZE + 8) != 0x0f0f {
        return Err("the faulting CPU write did not land".into());
    }
    exp(flush_page(page(2)), FlushCause::FaultUpgrade, true);
    // The whole-address-space kind, explicitly and by widening a token.
    space.flush_all().or_fail("flush_all")?;
    exp(FlushRange::All, FlushCause::Batch, false);
    let mut t = space
        .protect(range(page(1), 1)?, Perms::R)
        .or_fail("protect")?;
    t.widen_to_all();
    space.flush(t).or_fail("flush widened")?;
    exp(FlushRange::All, FlushCause::Protect, false);

    let told = rec.take();
    let stats = space.stats();
    let (notified, skipped) = (stats.secondary_notifications, stats.secondary_skipped);
    space.unregister_secondary(handle).or_fail("unregister")?;
    let release = rec.take();
    let total = expect.len() as u64;
    let upgrades = expect.iter().filter(|(_, up)| *up).count() as u64;
    let (want_notified, want_skipped) = match mode {
        SecondaryTlbMode::Legacy => (total - upgrades, upgrades),
        SecondaryTlbMode::Off => (0, total),
        // The ordering-bug modes change batches, nested flushes and moves only.
        _ => (total, 0),
    };
    if (notified, skipped) != (want_notified, want_skipped) {
        return Err(format!(
            "{mode:?}: stats say {notified} notified, {skipped} skipped; expected \
             {want_notified}, {want_skipped}"
        ));
    }
    Ok((expect, told, release, asid))
}

crate::ktest! {
    /// A recording secondary TLB is told exactly the expected (ASID, range, cause) for each
    /// operation — maps nothing; protect downgrade/upgrade, unmap, remap one page; split and
    /// merge the 2 MiB; a CPU fault upgrade one page; flush_all and a widened token the whole
    /// address space; unregistration the whole ASID — in `sync`; exactly the upgrades are
    /// missing in `legacy`; nothing in `off`.
    fn notifier_sees_each_flush_per_mode() {
        for mode in [SecondaryTlbMode::Sync, SecondaryTlbMode::Legacy, SecondaryTlbMode::Off] {
            let (expect, told, release, asid) = notifier_ops(mode)?;
            let want: Vec<Told> = expect
                .iter()
                .filter(|(_, upgrade)| mode.should_notify(*upgrade))
                .map(|(t, _)| *t)
                .collect();
            kassert_eq!(told, want, "{mode:?}");
            let want_release = match mode {
                SecondaryTlbMode::Off => vec![],
                _ => vec![(asid, FlushRange::All, FlushCause::Release)],
            };
            kassert_eq!(release, want_release, "{mode:?}: unregistration");
            log::debug!("notifier {mode:?}: {} calls as expected", told.len());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ASIDs
// ---------------------------------------------------------------------------------------------

crate::ktest! {
    /// ASID rollover on the CPU, with 4-bit ASIDs (15 usable) so that it happens within a few
    /// dozen switches: one address space is pinned (a secondary TLB is registered), 20 others
    /// are entered in turn, three rounds. Every read through the shared VA must return the
    /// entered space's own frame (a recycled ASID with stale TLB entries would show another
    /// space's data); the pinned space keeps its ASID across every rollover and still works
    /// afterwards, while the others are re-assigned.
    fn asid_rollover_keeps_pinned_asid() {
        const OTHERS: usize = 20;
        const ROUNDS: usize = 3;
        let cpus = smp::online_cpus();
        // A separate environment: the same tables, frames and CPU TLB executor as the machine's,
        // but a 4-bit allocator.
        let global = context::env();
        let env = MmEnv {
            mem: global.mem.clone(),
            frames: global.frames.clone(),
            tlb: global.tlb.clone(),
            asids: Arc::new(AsidAllocator::new(4, cpus).or_fail("allocator")?),
        };
        // The small allocator hands out ASIDs the machine's allocator also uses: drop every
        // CPU TLB entry first, so none of another address space's entries can match.
        env.tlb.flush_all_cpu_tlbs();
        let frames = Frames::alloc(32, PAGE_SIZE)?;
        frames.tag_pages(0xa51d);
        let va = VA_ROLLOVER;
        let mk = |page: u64| -> Result<Arc<AddressSpace>, String> {
            let s = Arc::new(AddressSpace::new(env.clone()).or_fail("address space")?);
            map(&s, va, frames.pa(page), 1, Perms::RW, false)?;
            Ok(s)
        };
        let pinned = mk(0)?;
        let rec = Recorder::new(true);
        let handle = pinned.register_secondary(rec.clone()).or_fail("register")?;
        let p = pinned.asid();
        let others = (1..=OTHERS as u64).map(mk).collect::<Result<Vec<_>, _>>()?;

        let visit = |s: &Arc<AddressSpace>, page: u64| -> Result<u16, String> {
            let entered = context::enter(s).or_fail("enter")?;
            let asid = s.asid();
            // SAFETY: entered; `va` maps page `page` of `frames`, owned by this test.
            let got = unsafe { peek(va) };
            drop(entered);
            if got != tag(0xa51d, page) {
                return Err(format!("space {page} (ASID {asid}) read {got:#x}: another space's \
                    frame through a stale TLB entry"));
            }
            Ok(asid)
        };
        let result = (|| -> Result<Vec<Vec<u16>>, String> {
            let mut asids = vec![Vec::new(); ROUNDS];
            for (round, seen) in asids.iter_mut().enumerate() {
                for (i, s) in others.iter().enumerate() {
                    let a = visit(s, i as u64 + 1)?;
                    if a == p || a == 0 {
                        return Err(format!("round {round}: space {} got ASID {a}", i + 1));
                    }
                    seen.push(a);
                }
                let a = visit(&pinned, 0)?;
                if a != p {
                    return Err(format!("round {round}: the pinned space's ASID {p} became {a}"));
                }
            }
            Ok(asids)
        })();
        let rollovers = env.asids.rollovers();
        // The pinned space still works after the rollovers: the CPU writes and reads through it.
        let entered = context::enter(&pinned).or_fail("enter pinned")?;
        // SAFETY: entered; `va` maps page 0 of `frames`, owned by this test.
        let back = unsafe {
            poke(va + 8, 0x91ed);
            peek(va + 8)
        };
        drop(entered);
        let ctx = pinned.smmu_context();
        let told = rec.take();
        pinned.unregister_secondary(handle).or_fail("unregister")?;
        drop(others);
        drop(pinned);
        // Leave no entry tagged by the small allocator's ASIDs behind.
        env.tlb.flush_all_cpu_tlbs();
        let asids = result?;
        kassert!(rollovers >= ROUNDS as u64, "only {rollovers} rollovers");
        kassert_eq!((back, frames.get(8)), (0x91ed, 0x91ed));
        kassert_eq!(ctx.map(|c| c.asid), Ok(p), "the SMMU context keeps the pinned ASID");
        kassert_eq!(told, vec![], "rollovers flush only CPU TLBs; the pinned ASID never changes");
        let reassigned = (0..OTHERS).filter(|&i| asids[0][i] != asids[ROUNDS - 1][i]).count();
        kassert!(reassigned > 0, "no space was re-assigned an ASID: {asids:?}");
        log::info!(
            "ASID rollover: 4-bit ASIDs, {rollovers} rollovers in {} switches; pinned ASID {p} \
             kept; {reassigned}/{OTHERS} others re-assigned between rounds 1 and {ROUNDS}",
            ROUNDS * (OTHERS + 1)
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Flushes from the other CPU
// ---------------------------------------------------------------------------------------------

/// Runs `f` on CPU 1 and waits for it.
fn on_cpu1<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, String> + Send + 'static,
) -> Result<R, String> {
    smp::run_on(1, f)
        .or_fail("run_on(1)")?
        .join(5000)
        .or_fail("CPU 1")?
}

crate::ktest! {
    /// Broadcast TLB maintenance: CPU 1 remaps (and later write-protects) a page of an address
    /// space CPU 0 is running and has just used; CPU 0 then reads the new frame (writes fault)
    /// through the same VA. And the reverse: CPU 0 remaps a page that CPU 1's TLB holds.
    fn flush_from_other_cpu() {
        require(smp::online_cpus() >= 2, "two CPUs")?;
        kassert_eq!(on_cpu1(|| Ok(crate::cpu::index()))?, 1, "a trivial job on CPU 1");
        let a = Frames::alloc(1, PAGE_SIZE)?;
        let b = Frames::alloc(1, PAGE_SIZE)?;
        a.tag_pages(0xa);
        b.tag_pages(0xb);
        let space = new_space()?;
        let faults = FaultLog::install(&space);
        let va = VA_CROSS_CPU;
        map(&space, va, a.pa(0), 1, Perms::RW, false)?;
        let (pa_a, pa_b) = (a.pa(0), b.pa(0));

        let entered = context::enter(&space).or_fail("enter")?;
        let result = (|| -> Result<(), String> {
            for round in 0..16u64 {
                let (now, next, next_pa) = if round % 2 == 0 {
                    (0xa, 0xb, pa_b)
                } else {
                    (0xb, 0xa, pa_a)
                };
                // SAFETY: entered; `va` maps `a` or `b`, both owned by this test.
                let got = unsafe { peek(va) };
                if got != tag(now, 0) {
                    return Err(format!("round {round}: CPU 0 read {got:#x} before the remap"));
                }
                let s = space.clone();
                on_cpu1(move || s.remap(range(va, 1)?, next_pa).or_fail("remap on CPU 1"))
                    .map_err(|e| format!("round {round}: {e}"))?;
                // SAFETY: as above.
                let got = unsafe { peek(va) };
                if got != tag(next, 0) {
                    return Err(format!("round {round}: after CPU 1's remap CPU 0 read {got:#x} \
                        (stale translation)"));
                }
            }
            // A cached writable entry on CPU 0, write-protected from CPU 1.
            // SAFETY: as above; write faults are resolved by the FaultLog policy.
            unsafe { poke(va + 16, 1) };
            let s = space.clone();
            on_cpu1(move || protect(&s, va, 1, Perms::R))?;
            // SAFETY: as above.
            unsafe { poke(va + 16, 2) };
            Ok(())
        })();
        drop(entered);
        result?;
        // The last remap (round 15) went back to `a`.
        kassert_eq!(faults.take(), vec![(va + 16, WRITE_PERMISSION_FAULT)],
            "CPU 0's write after CPU 1's downgrade must fault exactly once");
        kassert_eq!(a.get(16), 2);

        // The reverse: CPU 1 caches the translation, CPU 0 remaps, CPU 1 re-enters (same ASID,
        // its TLB entries survive a switch) and must read the new frame.
        for round in 0..4u64 {
            let (now, next, next_pa) = if round % 2 == 0 { (0xa, 0xb, pa_b) } else { (0xb, 0xa, pa_a) };
            let read_on_cpu1 = || {
                let s = space.clone();
                on_cpu1(move || {
                    let entered = context::enter(&s).or_fail("enter on CPU 1")?;
                    // SAFETY: entered on CPU 1; `va` maps `a` or `b`, owned by the test, which
                    // waits for this job.
                    let got = unsafe { peek(va) };
                    drop(entered);
                    Ok(got)
                })
            };
            kassert_eq!(read_on_cpu1()?, tag(now, 0), "CPU 1 before the remap (round {round})");
            space.remap(range(va, 1)?, next_pa).or_fail("remap on CPU 0")?;
            kassert_eq!(read_on_cpu1()?, tag(next, 0), "CPU 1 after CPU 0's remap (round {round})");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

crate::ktest! {
    /// Prints (log info, `flush figures:` / `flush timing:` lines) the flush counts per
    /// operation and the guest time of page and 512-page range flushes. Asserts nothing about
    /// the numbers.
    fn flush_costs() {
        bench::op_counts()?;
        bench::timings()?;
        Ok(())
    }
}
