//! Host-test physical memory: a Vec of frames at a fake physical base, which doubles as the
//! frame allocator and catches use-after-free and double frees of table frames.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    vec::Vec,
};

use super::{ENTRIES, FrameSource, PhysMem};
use crate::mm::addr::{PAGE_SIZE, PhysAddr};

/// Base physical address of the fake RAM (QEMU virt's RAM base).
pub(crate) const FAKE_BASE: u64 = 0x4000_0000;
/// Written over freed frames: looks like a valid table descriptor, so any walk through a freed
/// frame would go visibly wrong (and `table_ptr` refuses freed frames anyway).
const POISON: u64 = 0x0000_dead_beef_f003;

struct State {
    free: BTreeSet<usize>,
    allocated: BTreeSet<usize>,
    limit: Option<usize>,
    allocs: usize,
    frees: usize,
}

/// Fake physical memory for table frames.
pub(crate) struct FakeMem {
    words: Vec<AtomicU64>,
    frames: usize,
    state: Mutex<State>,
}

impl FakeMem {
    /// `frames` frames starting at [`FAKE_BASE`].
    pub(crate) fn new(frames: usize) -> Self {
        let mut words = Vec::with_capacity(frames * ENTRIES);
        words.resize_with(frames * ENTRIES, || AtomicU64::new(POISON));
        Self {
            words,
            frames,
            state: Mutex::new(State {
                free: (0..frames).collect(),
                allocated: BTreeSet::new(),
                limit: None,
                allocs: 0,
                frees: 0,
            }),
        }
    }

    fn frame_index(&self, pa: PhysAddr) -> usize {
        assert!(
            pa.0 >= FAKE_BASE && pa.0.is_multiple_of(PAGE_SIZE),
            "bad table PA {pa:?}"
        );
        let i = ((pa.0 - FAKE_BASE) / PAGE_SIZE) as usize;
        assert!(i < self.frames, "table PA {pa:?} outside fake memory");
        i
    }

    /// Frames currently allocated.
    pub(crate) fn allocated(&self) -> usize {
        self.state.lock().unwrap().allocated.len()
    }

    /// Whether `pa` is currently allocated.
    pub(crate) fn is_allocated(&self, pa: PhysAddr) -> bool {
        let i = self.frame_index(pa);
        self.state.lock().unwrap().allocated.contains(&i)
    }

    /// Allow at most `n` more allocations (`None`: unlimited).
    pub(crate) fn set_alloc_limit(&self, n: Option<usize>) {
        self.state.lock().unwrap().limit = n;
    }

    /// Total (allocations, frees) so far.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.allocs, s.frees)
    }
}

// SAFETY: every pointer handed out addresses 512 `AtomicU64`s inside `words`, which lives as
// long as `self`; the frame must be allocated (asserted), and all accesses by the page table go
// through atomics, so there is no aliasing of plain references.
unsafe impl PhysMem for FakeMem {
    fn table_ptr(&self, pa: PhysAddr) -> *mut [u64; ENTRIES] {
        let i = self.frame_index(pa);
        assert!(
            self.state.lock().unwrap().allocated.contains(&i),
            "access to unallocated/freed table frame {pa:?}"
        );
        self.words[i * ENTRIES..]
            .as_ptr()
            .cast::<[u64; ENTRIES]>()
            .cast_mut()
    }
}

impl FrameSource for FakeMem {
    fn alloc_zeroed_frame(&self) -> Option<PhysAddr> {
        let mut s = self.state.lock().unwrap();
        if let Some(l) = s.limit.as_mut() {
            if *l == 0 {
                return None;
            }
            *l -= 1;
        }
        let i = s.free.pop_first()?;
        s.allocated.insert(i);
        s.allocs += 1;
        for w in &self.words[i * ENTRIES..(i + 1) * ENTRIES] {
            w.store(0, Ordering::Relaxed);
        }
        Some(PhysAddr(FAKE_BASE + i as u64 * PAGE_SIZE))
    }

    fn free_frame(&self, pa: PhysAddr) {
        let i = self.frame_index(pa);
        let mut s = self.state.lock().unwrap();
        assert!(s.allocated.remove(&i), "double free of frame {pa:?}");
        s.free.insert(i);
        s.frees += 1;
        for w in &self.words[i * ENTRIES..(i + 1) * ENTRIES] {
            w.store(POISON, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording TLB executor and secondary TLB
// ---------------------------------------------------------------------------------------------

use std::{
    string::{String, ToString},
    sync::{Arc, atomic::AtomicBool},
};

use crate::mm::{
    tlb::{FlushCause, FlushRange, TlbFeatures, TlbMaintenance, TlbiOp},
    tlb::{SecondaryTlb, SecondaryTlbError, SecondaryTlbFailure},
};

/// One observable step of a flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    DsbIshst,
    Tlbi(TlbiOp),
    DsbIsh,
    Isb,
    FlushAllCpu,
    Ttbr0(u64),
    Secondary {
        name: String,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    },
    /// A test's marker (e.g. a deferred release ran).
    Marker(u64),
}

/// A shared, ordered event log.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<Ev>>>);

impl Log {
    pub(crate) fn push(&self, e: Ev) {
        self.0.lock().unwrap().push(e);
    }
    /// Takes every event recorded so far.
    pub(crate) fn take(&self) -> Vec<Ev> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    /// Takes only the secondary notifications, as (name, asid, range, cause).
    pub(crate) fn take_secondary(&self) -> Vec<(String, u16, FlushRange, FlushCause)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Secondary {
                    name,
                    asid,
                    range,
                    cause,
                } => Some((name, asid, range, cause)),
                _ => None,
            })
            .collect()
    }
}

/// A [`TlbMaintenance`] that records what it is asked to do.
pub(crate) struct RecordingTlb {
    pub(crate) features: TlbFeatures,
    pub(crate) log: Log,
}

impl RecordingTlb {
    pub(crate) fn new(range: bool, log: Log) -> Self {
        Self {
            features: TlbFeatures { range },
            log,
        }
    }
}

impl TlbMaintenance for RecordingTlb {
    fn features(&self) -> TlbFeatures {
        self.features
    }
    fn dsb_ishst(&self) {
        self.log.push(Ev::DsbIshst);
    }
    fn tlbi(&self, op: TlbiOp) {
        self.log.push(Ev::Tlbi(op));
    }
    fn dsb_ish(&self) {
        self.log.push(Ev::DsbIsh);
    }
    fn isb(&self) {
        self.log.push(Ev::Isb);
    }
    fn flush_all_cpu_tlbs(&self) {
        self.log.push(Ev::FlushAllCpu);
    }
    unsafe fn write_ttbr0(&self, value: u64) {
        self.log.push(Ev::Ttbr0(value));
    }
}

/// A [`SecondaryTlb`] that records its invalidations (into the same log as the CPU side, so the
/// order is visible) and can be told to fail.
pub(crate) struct RecordingSecondary {
    pub(crate) name: String,
    pub(crate) log: Log,
    pub(crate) fail: AtomicBool,
}

impl RecordingSecondary {
    pub(crate) fn new(name: &str, log: Log) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            log,
            fail: AtomicBool::new(false),
        })
    }
}

impl SecondaryTlb for RecordingSecondary {
    fn name(&self) -> &str {
        &self.name
    }
    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        self.log.push(Ev::Secondary {
            name: self.name.clone(),
            asid,
            range,
            cause,
        });
        if self.fail.load(Ordering::Relaxed) {
            Err(SecondaryTlbError::new(SecondaryTlbFailure::Timeout))
        } else {
            Ok(())
        }
    }
}

/// A model of the SMMU's IOTLB, like QEMU's: it caches the permission with the translation,
/// faults on a cached read-only entry without re-walking, and never caches faults. Registered
/// as a secondary TLB, it forgets exactly what it is told to.
pub(crate) struct ModelIotlb {
    entries: Mutex<std::collections::BTreeMap<(u16, u64), (u64, bool)>>,
}

/// What a modelled device access did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dma {
    /// It went through to this physical address.
    Ok(u64),
    /// Translation fault (nothing mapped, nothing cached).
    Translation,
    /// Permission fault (a write through a read-only entry, cached or walked).
    Permission,
}

impl ModelIotlb {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// An access at `addr` in `space`, through the cache.
    pub(crate) fn access_space(
        &self,
        space: &crate::mm::address_space::AddressSpace,
        addr: u64,
        write: bool,
    ) -> Dma {
        let key = (space.asid(), addr & !0xFFF);
        let mut e = self.entries.lock().unwrap();
        let (out, writable) = match e.get(&key) {
            Some(&hit) => hit,
            None => match space.translate(crate::mm::VirtAddr(addr & !0xFFF)) {
                None => return Dma::Translation,
                Some(t) => {
                    let entry = (
                        t.pa.0,
                        t.attrs.perms.contains(crate::mm::pgtable::Perms::WRITE),
                    );
                    e.insert(key, entry);
                    entry
                }
            },
        };
        if write && !writable {
            Dma::Permission
        } else {
            Dma::Ok(out | (addr & 0xFFF))
        }
    }
}

impl SecondaryTlb for ModelIotlb {
    fn name(&self) -> &str {
        "iotlb"
    }
    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        _: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        self.entries
            .lock()
            .unwrap()
            .retain(|&(a, p), _| a != asid || !range.covers(crate::mm::VirtAddr(p)));
        Ok(())
    }
}

/// An address-space environment over `frames` frames of fake memory, with a recording CPU TLB
/// (TLBI range operations when `range_ops`) logging to `log`: (the memory, the environment).
pub(crate) fn fake_env(
    frames: usize,
    asid_bits: u32,
    cpus: usize,
    range_ops: bool,
    log: &Log,
) -> (Arc<FakeMem>, crate::mm::address_space::MmEnv) {
    let mem = Arc::new(FakeMem::new(frames));
    let env = crate::mm::address_space::MmEnv {
        mem: mem.clone(),
        frames: mem.clone(),
        tlb: Arc::new(RecordingTlb::new(range_ops, log.clone())),
        asids: Arc::new(crate::mm::asid::AsidAllocator::new(asid_bits, cpus).unwrap()),
    };
    (mem, env)
}
