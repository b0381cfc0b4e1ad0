//! Host-only SMMU models used by the tests: a register file, DMA memory from the host heap,
//! and a command consumer that runs either synchronously inside the `CMDQ_PROD` write (as QEMU
//! does) or lazily on its own thread (as hardware may), plus an event producer.
//!
//! The model decodes commands with its own field extraction, independent of
//! [`crate::command`], and rejects what the architecture (or QEMU) rejects.
#![allow(dead_code)]

extern crate std;

use core::ptr::NonNull;
use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst, fence},
    },
    thread,
    time::{Duration, Instant},
    vec::Vec,
};

use crate::{
    features::IdRegisters,
    hal::{DmaError, DmaRegion, SmmuHal},
};

/// How the model consumes the command queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumption {
    /// Inside the `CMDQ_PROD`/`GERRORN`/`CR0` write, like QEMU.
    Synchronous,
    /// Only when the test calls [`FakeSmmu::consume`] or a [`LazyConsumer`] runs.
    Deferred,
}

/// How the model reports an event queue overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowStyle {
    /// Toggle `EVENTQ_PROD.OVFLG` (IHI 0070 §7.4).
    Architectural,
    /// Toggle `GERROR.EVENTQ_ABT_ERR` (QEMU 7.2).
    Qemu,
}

/// One consumed command-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Monotonic position in the queue (equals the driver's sequence number).
    pub seq: u64,
    /// The raw entry.
    pub raw: [u64; 2],
}

impl Consumed {
    pub fn opcode(&self) -> u8 {
        self.raw[0] as u8
    }
}

type RejectFn = dyn Fn([u64; 2]) -> bool + Send + Sync;

pub struct FakeSmmu {
    regs: [AtomicU32; 64],
    start: Instant,
    pub consumption: Consumption,
    pub overflow_style: OverflowStyle,
    pub gbpa_implemented: bool,
    consume_lock: Mutex<()>,
    log: Mutex<Vec<Consumed>>,
    consumed_count: AtomicU64,
    /// Fail the next N command fetches with CERROR_ABT.
    pub abort_fetches: AtomicU32,
    /// Fail the next N CMD_SYNCs with CERROR_ATC_INV_SYNC (CONS stays on the sync).
    pub atc_sync_failures: AtomicU32,
    reject: Mutex<Option<std::boxed::Box<RejectFn>>>,
    allocations: Mutex<Vec<(usize, Layout)>>,
    pub bad_64bit_accesses: AtomicU32,
    /// Polls of CR0ACK before it reflects CR0 (0 = immediately, like QEMU).
    pub cr0ack_delay: AtomicU32,
    cr0ack_pending: AtomicU32,
    /// When set, CR0ACK never follows CR0 (to test the timeout).
    pub cr0ack_stuck: AtomicBool,
}

const CMDQ_BASE: usize = 0x90;
const CMDQ_PROD: usize = 0x98;
const CMDQ_CONS: usize = 0x9C;
const EVENTQ_BASE: usize = 0xA0;
const EVENTQ_PROD: usize = 0xA8;
const EVENTQ_CONS: usize = 0xAC;
const CR0: usize = 0x20;
const CR0ACK: usize = 0x24;
const GBPA: usize = 0x44;
const IRQ_CTRL: usize = 0x50;
const IRQ_CTRLACK: usize = 0x54;
const GERROR: usize = 0x60;
const GERRORN: usize = 0x64;
const SIXTY_FOUR_BIT: [usize; 5] = [0x68, 0x80, 0x90, 0xA0, 0xB0];

impl FakeSmmu {
    pub fn new(id: IdRegisters, consumption: Consumption) -> Arc<Self> {
        let s = Self {
            regs: core::array::from_fn(|_| AtomicU32::new(0)),
            start: Instant::now(),
            consumption,
            overflow_style: OverflowStyle::Qemu,
            gbpa_implemented: false,
            consume_lock: Mutex::new(()),
            log: Mutex::new(Vec::new()),
            consumed_count: AtomicU64::new(0),
            abort_fetches: AtomicU32::new(0),
            atc_sync_failures: AtomicU32::new(0),
            reject: Mutex::new(None),
            allocations: Mutex::new(Vec::new()),
            bad_64bit_accesses: AtomicU32::new(0),
            cr0ack_delay: AtomicU32::new(0),
            cr0ack_pending: AtomicU32::new(0),
            cr0ack_stuck: AtomicBool::new(false),
        };
        s.set(0x00, id.idr0);
        s.set(0x04, id.idr1);
        s.set(0x0C, id.idr3);
        s.set(0x14, id.idr5);
        s.set(0x1C, id.aidr);
        Arc::new(s)
    }

    pub fn qemu() -> Arc<Self> {
        Self::new(IdRegisters::QEMU_7_2, Consumption::Synchronous)
    }

    pub fn with(
        id: IdRegisters,
        consumption: Consumption,
        overflow_style: OverflowStyle,
        gbpa_implemented: bool,
    ) -> Arc<Self> {
        let mut s = Arc::into_inner(Self::new(id, consumption)).unwrap();
        s.overflow_style = overflow_style;
        s.gbpa_implemented = gbpa_implemented;
        Arc::new(s)
    }

    fn slot(off: usize) -> usize {
        let off = off & 0xFFFF; // page 1 aliases page 0, like QEMU
        assert!(
            off < 0x100 && off.is_multiple_of(4),
            "fake SMMU: offset {off:#x}"
        );
        off / 4
    }

    pub fn get(&self, off: usize) -> u32 {
        self.regs[Self::slot(off)].load(SeqCst)
    }

    pub fn set(&self, off: usize, v: u32) {
        self.regs[Self::slot(off)].store(v, SeqCst)
    }

    fn get64(&self, off: usize) -> u64 {
        u64::from(self.get(off)) | (u64::from(self.get(off + 4)) << 32)
    }

    /// Makes commands matching `pred` illegal (CERROR_ILL), e.g. to model an SMMU that does not
    /// implement an opcode.
    pub fn reject_when(&self, pred: impl Fn([u64; 2]) -> bool + Send + Sync + 'static) {
        *self.reject.lock().unwrap() = Some(std::boxed::Box::new(pred));
    }

    pub fn log(&self) -> Vec<Consumed> {
        self.log.lock().unwrap().clone()
    }

    pub fn consumed_count(&self) -> u64 {
        self.consumed_count.load(SeqCst)
    }

    pub fn gerror_active(&self) -> u32 {
        self.get(GERROR) ^ self.get(GERRORN)
    }

    /// Architecture (plus QEMU 7.2's 0x07) legality check, independent of `crate::command`.
    fn legal(raw: [u64; 2]) -> bool {
        let [w0, w1] = raw;
        let op = w0 as u8;
        let ssec = (w0 >> 10) & 1;
        match op {
            0x01 | 0x03..=0x06 | 0x10 | 0x11 | 0x30 => ssec == 0,
            0x12 | 0x13 => {
                let num = (w0 >> 12) & 0x1F;
                let scale = (w0 >> 20) & 0x1F;
                let ttl = (w1 >> 8) & 3;
                let tg = (w1 >> 10) & 3;
                !(tg != 0 && num == 0 && scale == 0 && ttl == 0)
            }
            0x46 => (w0 >> 12) & 3 != 3,
            _ => false, // including 0x07, which QEMU 7.2 rejects
        }
    }

    /// Consumes up to `limit` commands; returns how many were consumed.
    pub fn consume(&self, limit: usize) -> usize {
        let _serialised = self.consume_lock.lock().unwrap();
        let mut done = 0;
        while done < limit {
            if self.get(CR0) & (1 << 3) == 0 || self.gerror_active() & 1 != 0 {
                break;
            }
            let base = self.get64(CMDQ_BASE);
            let log2 = (base & 0x1F) as u32;
            let ring = (base & 0x00FF_FFFF_FFFF_FFE0) as usize;
            let mask = (2u32 << log2) - 1;
            let prod = self.get(CMDQ_PROD) & mask;
            let cons_reg = self.get(CMDQ_CONS);
            let cons = cons_reg & mask;
            if prod == cons {
                break;
            }
            fence(SeqCst);
            let slot = (cons & ((1 << log2) - 1)) as usize;
            let entry = (ring + slot * 16) as *const u64;
            // SAFETY: `ring` is a live allocation made by `alloc_dma` (PA == host address) of
            // 2^log2 entries; the driver does not write slots between CONS and PROD.
            let raw = unsafe { [entry.read_volatile(), entry.add(1).read_volatile()] };
            if self
                .abort_fetches
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.raise_cmdq_error(cons, 2);
                break;
            }
            if raw[0] as u8 == 0x46
                && self
                    .atc_sync_failures
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                self.raise_cmdq_error(cons, 3);
                break;
            }
            let rejected = self.reject.lock().unwrap().as_ref().is_some_and(|f| f(raw));
            if !Self::legal(raw) || rejected {
                self.raise_cmdq_error(cons, 1);
                break;
            }
            let seq = self.consumed_count.load(SeqCst);
            self.log.lock().unwrap().push(Consumed { seq, raw });
            self.consumed_count.store(seq + 1, SeqCst);
            // QEMU keeps ERR sticky: only the pointer bits change.
            let next = ((cons + 1) & mask) | (cons_reg & !mask);
            self.set(CMDQ_CONS, next);
            done += 1;
        }
        done
    }

    fn raise_cmdq_error(&self, cons: u32, err: u32) {
        self.set(CMDQ_CONS, cons | (err << 24));
        self.set(GERROR, self.get(GERROR) ^ 1);
    }

    /// Writes an event record as the SMMU would; returns false if it was dropped.
    pub fn inject_event(&self, record: [u64; 4]) -> bool {
        if self.get(CR0) & (1 << 2) == 0 {
            return false;
        }
        let base = self.get64(EVENTQ_BASE);
        let log2 = (base & 0x1F) as u32;
        let ring = (base & 0x00FF_FFFF_FFFF_FFE0) as usize;
        let mask = (2u32 << log2) - 1;
        let prod_reg = self.get(EVENTQ_PROD);
        let cons_reg = self.get(EVENTQ_CONS);
        let (prod, cons) = (prod_reg & mask, cons_reg & mask);
        if (prod ^ cons) & mask == 1 << log2 {
            match self.overflow_style {
                OverflowStyle::Architectural => {
                    let ovflg = prod_reg >> 31;
                    let ovack = cons_reg >> 31;
                    if ovflg == ovack {
                        self.set(EVENTQ_PROD, prod_reg ^ (1 << 31));
                    }
                }
                OverflowStyle::Qemu => {
                    if self.gerror_active() & (1 << 2) == 0 {
                        self.set(GERROR, self.get(GERROR) ^ (1 << 2));
                    }
                }
            }
            return false;
        }
        let slot = (prod & ((1 << log2) - 1)) as usize;
        let entry = (ring + slot * 32) as *mut u64;
        for (i, word) in record.iter().enumerate() {
            // SAFETY: `ring` is a live `alloc_dma` allocation of 2^log2 32-byte records and the
            // slot at PROD is free (the queue is not full).
            unsafe { entry.add(i).write_volatile(*word) };
        }
        fence(SeqCst);
        self.set(EVENTQ_PROD, ((prod + 1) & mask) | (prod_reg & (1 << 31)));
        true
    }

    /// Reads 8 bytes of DMA memory by physical address (PA == host address in this model).
    pub fn read_phys_u64(&self, pa: u64) -> u64 {
        // SAFETY: tests only pass addresses inside live `alloc_dma` allocations.
        unsafe { (pa as *const u64).read_volatile() }
    }

    pub fn live_allocations(&self) -> usize {
        self.allocations.lock().unwrap().len()
    }
}

impl Drop for FakeSmmu {
    fn drop(&mut self) {
        for (ptr, layout) in self.allocations.get_mut().unwrap().drain(..) {
            // SAFETY: allocated by `alloc_dma` with this layout and not yet freed.
            unsafe { dealloc(ptr as *mut u8, layout) };
        }
    }
}

// SAFETY: register accesses go to the model's register file; DMA regions are fresh, zeroed,
// suitably aligned host allocations whose "physical address" is their host address, which is
// also how the model's consumer reads them; `now_ns` is based on `Instant`.
unsafe impl SmmuHal for Arc<FakeSmmu> {
    fn read32(&self, offset: usize) -> u32 {
        match offset & 0xFFFF {
            GBPA if !self.gbpa_implemented => 0,
            CR0ACK => {
                if self.cr0ack_pending.load(SeqCst) > 0 {
                    self.cr0ack_pending.fetch_sub(1, SeqCst);
                    if self.cr0ack_pending.load(SeqCst) == 0 && !self.cr0ack_stuck.load(SeqCst) {
                        self.set(CR0ACK, self.get(CR0));
                    }
                }
                self.get(CR0ACK)
            }
            off => self.get(off),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        match offset & 0xFFFF {
            CR0 => {
                self.set(CR0, value);
                let delay = self.cr0ack_delay.load(SeqCst);
                if self.cr0ack_stuck.load(SeqCst) {
                    self.cr0ack_pending.store(u32::MAX, SeqCst);
                } else if delay == 0 {
                    self.set(CR0ACK, value);
                } else {
                    self.cr0ack_pending.store(delay, SeqCst);
                }
                if self.consumption == Consumption::Synchronous {
                    self.consume(usize::MAX);
                }
            }
            IRQ_CTRL => {
                self.set(IRQ_CTRL, value);
                self.set(IRQ_CTRLACK, value);
            }
            GBPA => {
                if self.gbpa_implemented {
                    self.set(GBPA, value & !(1 << 31));
                }
            }
            GERROR | CR0ACK | IRQ_CTRLACK | 0x00..=0x1C => {} // read-only
            CMDQ_PROD => {
                self.set(CMDQ_PROD, value);
                if self.consumption == Consumption::Synchronous {
                    self.consume(usize::MAX);
                }
            }
            GERRORN => {
                self.set(GERRORN, value);
                if self.consumption == Consumption::Synchronous {
                    self.consume(usize::MAX);
                }
            }
            off => self.set(off, value),
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        if !SIXTY_FOUR_BIT.contains(&offset) {
            self.bad_64bit_accesses.fetch_add(1, SeqCst);
            return 0;
        }
        self.get64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        if !SIXTY_FOUR_BIT.contains(&offset) {
            self.bad_64bit_accesses.fetch_add(1, SeqCst);
            return;
        }
        self.set(offset, value as u32);
        self.set(offset + 4, (value >> 32) as u32);
    }

    fn alloc_dma(&self, size: usize, align: usize) -> Result<DmaRegion, DmaError> {
        let layout = Layout::from_size_align(size.max(8), align.max(8))
            .map_err(|_| DmaError { size, align })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let cpu = NonNull::new(ptr).ok_or(DmaError { size, align })?;
        self.allocations
            .lock()
            .unwrap()
            .push((ptr as usize, layout));
        // SAFETY: fresh, zeroed allocation of `size` bytes, 8-byte aligned or better; the
        // model uses the host address as the physical address.
        Ok(unsafe { DmaRegion::from_raw_parts(ptr as u64, cpu, size) })
    }

    unsafe fn free_dma(&self, region: DmaRegion) {
        let ptr = region.cpu_ptr().as_ptr() as usize;
        let mut allocations = self.allocations.lock().unwrap();
        let pos = allocations
            .iter()
            .position(|(p, _)| *p == ptr)
            .expect("free_dma of a region this HAL did not allocate");
        let (_, layout) = allocations.swap_remove(pos);
        // SAFETY: allocated by `alloc_dma` with this layout; the caller guarantees the SMMU
        // no longer uses it.
        unsafe { dealloc(ptr as *mut u8, layout) };
    }

    fn publish_barrier(&self) {
        fence(SeqCst);
    }

    fn consume_barrier(&self) {
        fence(SeqCst);
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn relax(&self) {
        thread::yield_now();
    }
}

/// A background thread that consumes commands slowly, one at a time, with irregular pauses.
pub struct LazyConsumer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl LazyConsumer {
    pub fn start(smmu: Arc<FakeSmmu>, max_pause_us: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            // A small deterministic LCG for irregular pauses and burst sizes.
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            while !flag.load(SeqCst) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let burst = 1 + (x >> 60) as usize % 3;
                smmu.consume(burst);
                let pause = (x >> 33) % (max_pause_us + 1);
                if pause == 0 {
                    thread::yield_now();
                } else {
                    thread::sleep(Duration::from_micros(pause));
                }
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for LazyConsumer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

/// Enables the command queue in the model the way the driver's init would.
pub fn enable_cmdq(smmu: &Arc<FakeSmmu>, queue: &crate::cmdq::CommandQueue) {
    queue.program_registers(smmu);
    smmu.write32(CR0, smmu.get(CR0) | (1 << 3));
}
