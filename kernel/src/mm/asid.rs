//! ASID allocation: generation-based with rollover, per-CPU reservation, and pinning for ASIDs
//! that a secondary TLB (the SMMU) uses.
//!
//! # Scheme
//!
//! An address space's [`AsidContext`] holds a *context id* `generation << bits | asid`. ASIDs are
//! handed out from a bitmap of the current generation. When the bitmap is full, the allocator
//! *rolls over*: the generation advances, the bitmap is cleared, and every CPU must drop its
//! whole TLB (`TLBI VMALLE1(IS)`) before it next uses an ASID of the new generation — the
//! allocator reports that requirement to each CPU in its next [`Activation`] (Arm ARM DDI 0487
//! K.a, D8.16: ASIDs may be reused only after the TLB entries tagged with them are invalidated).
//! Contexts are re-issued an ASID lazily, when next activated or pinned; they keep their old
//! value when it is still free.
//!
//! Across a rollover, two kinds of ASIDs are carried over unchanged:
//!
//! - **active** ones — the ASID each CPU is running right now — because that CPU keeps filling
//!   its TLB with them until it switches;
//! - **pinned** ones — ASIDs of address spaces attached to a secondary TLB.
//!
//! # Why pinning
//!
//! The SMMU shares the CPU's ASID (its context descriptor holds the same value), but a rollover
//! only flushes CPU TLBs: the SMMU sees no CPU TLBI. If a shared address space were handed a new
//! ASID at rollover, its old ASID — still in the SMMU's context descriptor and TLB — could be
//! given to another address space, and the device would translate through the wrong tables.
//! Re-issuing it safely would need rewriting the CD, `CFGI_CD`, and invalidating the SMMU TLB, all
//! while holding the allocator lock (SMMU commands can take milliseconds). Instead, pinned ASIDs
//! are refcounted and never recycled while pinned. The number of pins is bounded so that after a
//! rollover — with every CPU's active ASID and every pinned ASID kept, and ASID 0 reserved for the
//! kernel — at least one ASID is always free.
//!
//! The allocator is one spin lock around a small state; there is no lock-free fast path (a switch
//! costs one uncontended lock in the common case, which is fine for this kernel).

use alloc::{collections::BTreeMap, vec, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use spin::Mutex;

/// ASID reserved for the kernel and idle (never handed out).
pub const KERNEL_ASID: u16 = 0;

/// ASID width from ID_AA64MMFR0_EL1.ASIDBits (\[7:4\]): `0b0010` = 16 bits, otherwise 8.
pub const fn asid_bits_from_mmfr0(mmfr0: u64) -> u32 {
    if (mmfr0 >> 4) & 0xF == 0b0010 { 16 } else { 8 }
}

static NEXT_CONTEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// The ASID state of one address space.
#[derive(Debug)]
pub struct AsidContext {
    /// Unique identity (pins are recorded against it, not against a possibly stale ASID).
    key: u64,
    /// `generation << bits | asid`; 0 = never assigned.
    id: AtomicU64,
}

impl Default for AsidContext {
    fn default() -> Self {
        Self::new()
    }
}

impl AsidContext {
    /// A context without an ASID yet.
    pub fn new() -> Self {
        Self {
            key: NEXT_CONTEXT_KEY.fetch_add(1, Ordering::Relaxed),
            id: AtomicU64::new(0),
        }
    }

    /// The raw context id (0 if never assigned).
    pub fn raw_id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }
}

/// Result of [`AsidAllocator::activate`].
#[must_use = "a required TLB flush must happen before TTBR0 is written"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The ASID to put in TTBR0.
    pub asid: u16,
    /// This CPU must flush its whole TLB (`TLBI VMALLE1`; the IS form is fine) before writing
    /// TTBR0: a rollover happened since it last switched.
    pub flush_cpu_tlbs: bool,
    /// This activation itself caused a rollover.
    pub rolled_over: bool,
}

/// Why an ASID operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidError {
    /// Unsupported ASID width.
    InvalidWidth(u32),
    /// Too many CPUs for the ASID width (no ASID guaranteed free after rollover).
    TooManyCpus,
    /// CPU index out of range.
    BadCpu(usize),
    /// The pin limit is reached.
    PinLimit,
    /// The context is not pinned.
    NotPinned,
    /// The context is still active on this CPU.
    StillActive(usize),
    /// The context is still pinned.
    StillPinned,
}

impl fmt::Display for AsidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsidError::InvalidWidth(b) => write!(f, "unsupported ASID width {b}"),
            AsidError::TooManyCpus => f.write_str("too many CPUs for the ASID width"),
            AsidError::BadCpu(c) => write!(f, "CPU index {c} out of range"),
            AsidError::PinLimit => f.write_str("ASID pin limit reached"),
            AsidError::NotPinned => f.write_str("ASID not pinned"),
            AsidError::StillActive(c) => write!(f, "ASID still active on CPU {c}"),
            AsidError::StillPinned => f.write_str("ASID still pinned"),
        }
    }
}

struct Pin {
    key: u64,
    count: u32,
}

struct Inner {
    generation: u64,
    /// Bitmap of ASIDs used in the current generation.
    map: Vec<u64>,
    hint: usize,
    /// Context id each CPU runs (0 = none).
    active: Vec<u64>,
    /// CPUs that must flush their TLB before the next switch.
    flush_pending: Vec<bool>,
    pins: BTreeMap<u16, Pin>,
    rollovers: u64,
}

impl Inner {
    fn test(&self, a: usize) -> bool {
        self.map[a / 64] & (1 << (a % 64)) != 0
    }

    fn set(&mut self, a: usize) {
        self.map[a / 64] |= 1 << (a % 64);
    }
}

/// The ASID allocator (one per system).
pub struct AsidAllocator {
    bits: u32,
    cpus: usize,
    max_pins: usize,
    inner: Mutex<Inner>,
}

impl fmt::Debug for AsidAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsidAllocator")
            .field("bits", &self.bits)
            .field("cpus", &self.cpus)
            .finish()
    }
}

impl AsidAllocator {
    /// An allocator for `bits`-wide ASIDs (16 or 8 on hardware, see [`asid_bits_from_mmfr0`];
    /// anything from 2 for tests) shared by `cpus` CPUs.
    ///
    /// # Errors
    ///
    /// [`AsidError::InvalidWidth`] outside 2..=16; [`AsidError::TooManyCpus`] if fewer than
    /// `cpus + 2` ASIDs exist.
    pub fn new(bits: u32, cpus: usize) -> Result<Self, AsidError> {
        if !(2..=16).contains(&bits) {
            return Err(AsidError::InvalidWidth(bits));
        }
        let n = 1usize << bits;
        if cpus == 0 || n < cpus + 2 {
            return Err(AsidError::TooManyCpus);
        }
        let mut inner = Inner {
            generation: 1,
            map: vec![0; n.div_ceil(64)],
            hint: 1,
            active: vec![0; cpus],
            flush_pending: vec![false; cpus],
            pins: BTreeMap::new(),
            rollovers: 0,
        };
        inner.set(KERNEL_ASID as usize);
        // After a rollover: ASID 0, one per CPU and every pin are taken; keep one free.
        let max_pins = n - cpus - 2;
        Ok(Self {
            bits,
            cpus,
            max_pins,
            inner: Mutex::new(inner),
        })
    }

    /// ASID width.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Number of ASIDs (including the reserved 0).
    pub fn num_asids(&self) -> usize {
        1 << self.bits
    }
    /// Maximum number of distinct pinned ASIDs.
    pub fn max_pins(&self) -> usize {
        self.max_pins
    }
    /// Number of distinct pinned ASIDs.
    pub fn pinned(&self) -> usize {
        self.inner.lock().pins.len()
    }
    /// Current generation (starts at 1).
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }
    /// Number of rollovers so far.
    pub fn rollovers(&self) -> u64 {
        self.inner.lock().rollovers
    }

    fn mask(&self) -> u64 {
        (1 << self.bits) - 1
    }

    /// The ASID value currently recorded for `ctx` (possibly from an older generation: still the
    /// right tag for flushing whatever TLB entries it may have), or `None` if never assigned.
    pub fn asid_of(&self, ctx: &AsidContext) -> Option<u16> {
        match ctx.raw_id() {
            0 => None,
            id => Some((id & self.mask()) as u16),
        }
    }

    fn rollover(&self, inner: &mut Inner) {
        inner.generation += 1;
        inner.rollovers += 1;
        inner.map.iter_mut().for_each(|w| *w = 0);
        inner.set(KERNEL_ASID as usize);
        let pinned: Vec<u16> = inner.pins.keys().copied().collect();
        for a in pinned {
            inner.set(a as usize);
        }
        for c in 0..self.cpus {
            let id = inner.active[c];
            if id != 0 {
                inner.set((id & self.mask()) as usize);
            }
        }
        inner.flush_pending.iter_mut().for_each(|p| *p = true);
        inner.hint = 1;
    }

    fn find_free(&self, inner: &mut Inner) -> Option<usize> {
        let n = self.num_asids();
        (inner.hint..n)
            .chain(1..inner.hint)
            .find(|&a| !inner.test(a))
    }

    /// A context id of the current generation for `ctx` (whose id is stale or 0).
    fn new_context(&self, inner: &mut Inner, ctx: &AsidContext) -> u64 {
        let old = ctx.raw_id();
        let asid = (old & self.mask()) as usize;
        let fresh = |inner: &Inner, a: usize| (inner.generation << self.bits) | a as u64;
        if old != 0 {
            // Running on some CPU: its ASID was carried over; re-tag those CPUs' records too.
            if inner.active.contains(&old) {
                let id = fresh(inner, asid);
                inner
                    .active
                    .iter_mut()
                    .filter(|a| **a == old)
                    .for_each(|a| *a = id);
                return id;
            }
            // Pinned by this very context (checked by identity: the value alone may now be
            // pinned by another context that got it in a later generation).
            if inner
                .pins
                .get(&(asid as u16))
                .is_some_and(|p| p.key == ctx.key)
            {
                return fresh(inner, asid);
            }
            // Keep the old value when nobody took it in this generation.
            if !inner.test(asid) {
                inner.set(asid);
                return fresh(inner, asid);
            }
        }
        let a = match self.find_free(inner) {
            Some(a) => a,
            None => {
                self.rollover(inner);
                self.find_free(inner)
                    .expect("a free ASID is guaranteed after rollover")
            }
        };
        inner.set(a);
        inner.hint = a + 1;
        fresh(inner, a)
    }

    /// Makes sure `ctx`'s id belongs to the current generation; returns whether that rolled over.
    fn refresh(&self, inner: &mut Inner, ctx: &AsidContext) -> bool {
        let id = ctx.raw_id();
        if id != 0 && id >> self.bits == inner.generation {
            return false;
        }
        let before = inner.rollovers;
        let id = self.new_context(inner, ctx);
        ctx.id.store(id, Ordering::Release);
        inner.rollovers != before
    }

    /// Gives `ctx` an ASID of the current generation without running it anywhere.
    pub fn assign(&self, ctx: &AsidContext) -> u16 {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, ctx);
        (ctx.raw_id() & self.mask()) as u16
    }

    /// Records that CPU `cpu` is switching to `ctx`, and returns the ASID to use plus whether the
    /// CPU's TLB must be flushed first.
    ///
    /// # Errors
    ///
    /// [`AsidError::BadCpu`].
    pub fn activate(&self, cpu: usize, ctx: &AsidContext) -> Result<Activation, AsidError> {
        if cpu >= self.cpus {
            return Err(AsidError::BadCpu(cpu));
        }
        let mut inner = self.inner.lock();
        let rolled_over = self.refresh(&mut inner, ctx);
        let id = ctx.raw_id();
        inner.active[cpu] = id;
        let flush = core::mem::replace(&mut inner.flush_pending[cpu], false);
        Ok(Activation {
            asid: (id & self.mask()) as u16,
            flush_cpu_tlbs: flush,
            rolled_over,
        })
    }

    /// Records that CPU `cpu` no longer runs any context (its TTBR0 holds no user ASID).
    ///
    /// # Errors
    ///
    /// [`AsidError::BadCpu`].
    pub fn deactivate(&self, cpu: usize) -> Result<(), AsidError> {
        if cpu >= self.cpus {
            return Err(AsidError::BadCpu(cpu));
        }
        self.inner.lock().active[cpu] = 0;
        Ok(())
    }

    /// Pins `ctx`'s ASID (refcounted) so that no rollover ever changes or recycles it, and returns
    /// it. For address spaces a secondary TLB uses.
    ///
    /// # Errors
    ///
    /// [`AsidError::PinLimit`] when [`Self::max_pins`] distinct ASIDs are already pinned.
    pub fn pin(&self, ctx: &AsidContext) -> Result<u16, AsidError> {
        let mut inner = self.inner.lock();
        let id = ctx.raw_id();
        let asid = (id & self.mask()) as u16;
        if id != 0
            && let Some(p) = inner.pins.get_mut(&asid)
            && p.key == ctx.key
        {
            p.count += 1;
            return Ok(asid);
        }
        if inner.pins.len() >= self.max_pins {
            return Err(AsidError::PinLimit);
        }
        self.refresh(&mut inner, ctx);
        let asid = (ctx.raw_id() & self.mask()) as u16;
        inner.pins.insert(
            asid,
            Pin {
                key: ctx.key,
                count: 1,
            },
        );
        Ok(asid)
    }

    /// Drops one pin of `ctx`. The ASID stays in use for the rest of the generation.
    ///
    /// # Errors
    ///
    /// [`AsidError::NotPinned`].
    pub fn unpin(&self, ctx: &AsidContext) -> Result<(), AsidError> {
        let mut inner = self.inner.lock();
        let asid = (ctx.raw_id() & self.mask()) as u16;
        match inner.pins.get_mut(&asid) {
            Some(p) if p.key == ctx.key && ctx.raw_id() != 0 => {
                p.count -= 1;
                if p.count == 0 {
                    inner.pins.remove(&asid);
                }
                Ok(())
            }
            _ => Err(AsidError::NotPinned),
        }
    }

    /// Whether `ctx` is pinned.
    pub fn is_pinned(&self, ctx: &AsidContext) -> bool {
        let asid = (ctx.raw_id() & self.mask()) as u16;
        ctx.raw_id() != 0
            && self
                .inner
                .lock()
                .pins
                .get(&asid)
                .is_some_and(|p| p.key == ctx.key)
    }

    /// Checks that `ctx` can be destroyed: active on no CPU and not pinned. Its ASID is
    /// recycled at the next rollover (whose flushes drop any TLB entries still tagged with it).
    ///
    /// # Errors
    ///
    /// [`AsidError::StillActive`], [`AsidError::StillPinned`].
    pub fn release(&self, ctx: &AsidContext) -> Result<(), AsidError> {
        let inner = self.inner.lock();
        let id = ctx.raw_id();
        if id == 0 {
            return Ok(());
        }
        if let Some(cpu) = inner.active.iter().position(|a| *a == id) {
            return Err(AsidError::StillActive(cpu));
        }
        let asid = (id & self.mask()) as u16;
        if inner.pins.get(&asid).is_some_and(|p| p.key == ctx.key) {
            return Err(AsidError::StillPinned);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn mmfr0_decoding() {
        assert_eq!(asid_bits_from_mmfr0(0x0000_0000_0000_0020), 16);
        assert_eq!(asid_bits_from_mmfr0(0x0000_0000_0000_0000), 8);
        assert_eq!(asid_bits_from_mmfr0(0x0000_0000_0000_0f05), 8);
        // QEMU cortex-a57: PARange 0b0100? ASIDBits 0b0010 (16).
        assert_eq!(asid_bits_from_mmfr0(0x0000_0000_0000_1124), 16);
    }

    #[test]
    fn construction_limits() {
        assert_eq!(
            AsidAllocator::new(1, 1).unwrap_err(),
            AsidError::InvalidWidth(1)
        );
        assert_eq!(
            AsidAllocator::new(17, 1).unwrap_err(),
            AsidError::InvalidWidth(17)
        );
        assert_eq!(
            AsidAllocator::new(2, 3).unwrap_err(),
            AsidError::TooManyCpus
        );
        let a = AsidAllocator::new(4, 2).unwrap();
        assert_eq!(a.num_asids(), 16);
        assert_eq!(a.max_pins(), 12);
        let a = AsidAllocator::new(16, 8).unwrap();
        assert_eq!(a.max_pins(), 65536 - 10);
    }

    #[test]
    fn never_hands_out_zero_and_fills_before_rollover() {
        let a = AsidAllocator::new(4, 2).unwrap();
        let ctxs: Vec<AsidContext> = (0..15).map(|_| AsidContext::new()).collect();
        let mut seen = BTreeSet::new();
        for c in &ctxs {
            let act = a.activate(0, c).unwrap();
            assert_ne!(act.asid, KERNEL_ASID);
            assert!(!act.flush_cpu_tlbs && !act.rolled_over);
            assert!(seen.insert(act.asid), "duplicate ASID {}", act.asid);
        }
        assert_eq!(seen.len(), 15);
        assert_eq!(a.rollovers(), 0);
        // The 16th context forces a rollover, reported to this CPU as a required flush.
        let extra = AsidContext::new();
        let act = a.activate(1, &extra).unwrap();
        assert!(act.rolled_over && act.flush_cpu_tlbs);
        assert_eq!(a.rollovers(), 1);
        assert_eq!(a.generation(), 2);
        // CPU 0 learns about it on its next switch, exactly once.
        let again = a.activate(0, &ctxs[14]).unwrap();
        assert!(again.flush_cpu_tlbs && !again.rolled_over);
        // ctxs[14] was active on CPU 0 across the rollover: same ASID.
        assert_eq!(again.asid, 15);
        let third = a.activate(0, &ctxs[14]).unwrap();
        assert!(!third.flush_cpu_tlbs);
    }

    #[test]
    fn active_asid_survives_rollover() {
        let a = AsidAllocator::new(4, 2).unwrap();
        let running = AsidContext::new();
        let r = a.activate(1, &running).unwrap().asid;
        let others: Vec<AsidContext> = (0..40).map(|_| AsidContext::new()).collect();
        for c in &others {
            let act = a.activate(0, c).unwrap();
            assert_ne!(act.asid, r, "an ASID active on CPU 1 was handed out");
        }
        assert!(a.rollovers() >= 2);
        // CPU 1 never switched; when it re-activates the same context, the value is unchanged.
        assert_eq!(a.activate(1, &running).unwrap().asid, r);
    }

    #[test]
    fn pinned_asid_survives_rollover_and_others_recycle() {
        let a = AsidAllocator::new(4, 2).unwrap();
        let shared = AsidContext::new();
        let p = a.pin(&shared).unwrap();
        assert_ne!(p, KERNEL_ASID);
        // More contexts than ASIDs: rollovers happen while `shared` is pinned but inactive.
        let ctxs: Vec<AsidContext> = (0..20).map(|_| AsidContext::new()).collect();
        for _round in 0..5 {
            for c in &ctxs {
                let act = a.activate(0, c).unwrap();
                assert_ne!(act.asid, p, "pinned ASID recycled");
                assert_ne!(act.asid, KERNEL_ASID);
            }
            assert_eq!(a.asid_of(&shared), Some(p));
        }
        assert!(a.rollovers() >= 5);
        // No two contexts of the current generation share an ASID.
        let g = a.generation();
        let mut live = BTreeSet::from([p]);
        for c in &ctxs {
            if c.raw_id() >> 4 == g {
                assert!(live.insert(a.asid_of(c).unwrap()));
            }
        }
        // Still the same value when it is activated or re-pinned after rollovers.
        assert_eq!(a.activate(1, &shared).unwrap().asid, p);
        assert_eq!(a.pin(&shared).unwrap(), p);
        assert_eq!(a.pinned(), 1);
        a.unpin(&shared).unwrap();
        a.unpin(&shared).unwrap();
        assert_eq!(a.unpin(&shared), Err(AsidError::NotPinned));
        assert_eq!(a.pinned(), 0);
    }

    #[test]
    fn stale_context_does_not_inherit_someone_elses_pin() {
        // C gets ASID x in generation 1 and is never pinned; after a rollover D may receive x
        // and pin it. When C is pinned later, it must not be treated as the owner of x's pin.
        let a = AsidAllocator::new(3, 1).unwrap(); // 8 ASIDs, 1 CPU, max 5 pins
        let c = AsidContext::new();
        let x = a.activate(0, &c).unwrap().asid;
        a.deactivate(0).unwrap();
        let mut d_pinned = None;
        for _ in 0..40 {
            let d = AsidContext::new();
            let _ = a.activate(0, &d).unwrap();
            a.deactivate(0).unwrap();
            if a.asid_of(&d) == Some(x) && a.generation() > 1 {
                assert_eq!(a.pin(&d).unwrap(), x);
                d_pinned = Some(d);
                break;
            }
        }
        let d = d_pinned.expect("x was recycled to another context");
        let cx = a.pin(&c).unwrap();
        assert_ne!(
            cx, x,
            "stale context took over another context's pinned ASID"
        );
        assert_eq!(a.asid_of(&d), Some(x));
        assert_eq!(a.pinned(), 2);
    }

    #[test]
    fn pin_limit_exhaustion() {
        let a = AsidAllocator::new(4, 2).unwrap();
        let ctxs: Vec<AsidContext> = (0..13).map(|_| AsidContext::new()).collect();
        let mut pinned = BTreeSet::new();
        for c in &ctxs[..12] {
            assert!(pinned.insert(a.pin(c).unwrap()));
        }
        assert_eq!(a.pin(&ctxs[12]), Err(AsidError::PinLimit));
        // Re-pinning an already pinned context is only a refcount.
        assert!(pinned.contains(&a.pin(&ctxs[0]).unwrap()));
        // With every pin used and both CPUs active, allocation still works across rollovers.
        let r0 = AsidContext::new();
        let r1 = AsidContext::new();
        let a0 = a.activate(0, &r0).unwrap().asid;
        let a1 = a.activate(1, &r1).unwrap().asid;
        for _ in 0..10 {
            let t = AsidContext::new();
            let act = a.activate(0, &t).unwrap();
            assert!(!pinned.contains(&act.asid));
            assert_ne!(act.asid, a1, "CPU 1's active ASID handed out");
        }
        assert!(a.rollovers() > 0);
        assert!(!pinned.contains(&a0));
        // Pins are still the same values.
        for c in &ctxs[..12] {
            assert!(pinned.contains(&a.asid_of(c).unwrap()));
        }
        // Releasing one pin makes room.
        a.unpin(&ctxs[5]).unwrap();
        assert!(a.pin(&ctxs[12]).is_ok());
    }

    #[test]
    fn release_checks() {
        let a = AsidAllocator::new(4, 2).unwrap();
        let c = AsidContext::new();
        let _ = a.activate(1, &c).unwrap();
        assert_eq!(a.release(&c), Err(AsidError::StillActive(1)));
        a.deactivate(1).unwrap();
        a.pin(&c).unwrap();
        assert_eq!(a.release(&c), Err(AsidError::StillPinned));
        a.unpin(&c).unwrap();
        assert_eq!(a.release(&c), Ok(()));
        assert_eq!(a.activate(2, &c), Err(AsidError::BadCpu(2)));
    }

    /// Randomised invariant check: in every generation, contexts holding a current-generation id
    /// have distinct ASIDs; pinned contexts never change ASID; every CPU is told to flush exactly
    /// once per rollover before its next switch.
    #[test]
    fn random_schedule_keeps_asids_unique() {
        let a = AsidAllocator::new(4, 3).unwrap();
        let ctxs: Vec<AsidContext> = (0..30).map(|_| AsidContext::new()).collect();
        let mut pinned_val: Vec<Option<u16>> = vec![None; ctxs.len()];
        let mut seen_rollovers = [0u64; 3];
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..5000 {
            let i = rnd(ctxs.len() as u64) as usize;
            match rnd(10) {
                0 => {
                    if pinned_val[i].is_none()
                        && let Ok(v) = a.pin(&ctxs[i])
                    {
                        pinned_val[i] = Some(v);
                    }
                }
                1 => {
                    if pinned_val[i].take().is_some() {
                        a.unpin(&ctxs[i]).unwrap();
                    }
                }
                _ => {
                    let cpu = rnd(3) as usize;
                    let before = a.rollovers();
                    let act = a.activate(cpu, &ctxs[i]).unwrap();
                    let after = a.rollovers();
                    // A flush is due iff a rollover happened since this CPU's last switch.
                    assert_eq!(
                        act.flush_cpu_tlbs,
                        seen_rollovers[cpu] != after,
                        "cpu {cpu}"
                    );
                    assert!(after - before <= 1);
                    seen_rollovers[cpu] = after;
                }
            }
            let g = a.generation();
            let mut used = BTreeSet::new();
            for (j, c) in ctxs.iter().enumerate() {
                let id = c.raw_id();
                if id != 0 && id >> 4 == g {
                    assert!(
                        used.insert(id & 0xF),
                        "two contexts share ASID {} in gen {g}",
                        id & 0xF
                    );
                }
                if let Some(v) = pinned_val[j] {
                    assert_eq!(a.asid_of(c), Some(v), "pinned ASID changed");
                }
            }
            // Pinned ASIDs are never held by another current-generation context.
            for (j, c) in ctxs.iter().enumerate() {
                if let Some(v) = pinned_val[j] {
                    for (k, o) in ctxs.iter().enumerate() {
                        if k != j && o.raw_id() >> 4 == g {
                            assert_ne!(a.asid_of(o), Some(v));
                        }
                    }
                    let _ = c;
                }
            }
        }
        assert!(a.rollovers() > 10, "the schedule should roll over often");
    }
}
