//! The edu driver against a model of the device (`FakeEdu`, written from the behaviour
//! documented in `docs/specs/edu.txt` and the project's QEMU 7.2 notes), a virtual clock that
//! behaves like `-icount …,sleep=off` (`FakeEnv`: a WFI jumps to the next device event or the
//! deadline), the PCI configuration-space model, and the real INTx registry.

use super::*;
use crate::{
    drivers::{
        dma::{DmaFaultKind, FaultWatch},
        pci::{
            self,
            config::command,
            fake::{self as pci_fake, FakeBus, FakeConfig, host_bridge, qemu_host},
        },
    },
    platform::Trigger,
};
use alloc::{boxed::Box, format, string::ToString, vec, vec::Vec};
use core::sync::atomic::{AtomicBool, AtomicU64};

const DMA_DELAY_NS: u64 = 100_000_000;
const MEMORY_SIZE: usize = 0x10000;

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(bus, device, function).unwrap()
}

// ------------------------------------------------------------------------------------------------
// The device model
// ------------------------------------------------------------------------------------------------

/// One register access, as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    R(u32),
    W(u32, u64),
}

struct State {
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    src: u64,
    dst: u64,
    count: u64,
    cmd: u64,
    dma_due: Option<u64>,
    factorial_due: Option<(u64, u32)>,
    buffer: Vec<u8>,
    memory: Vec<u8>,
    log: Vec<Access>,
    /// The DMA timer never fires.
    stuck: bool,
    /// The liveness register does not invert.
    broken_liveness: bool,
}

struct FakeEdu {
    state: Mutex<State>,
    now: AtomicU64,
    config: &'static FakeConfig,
    bdf: Bdf,
}

impl FakeEdu {
    fn new(config: &'static FakeConfig, bdf: Bdf) -> Self {
        Self {
            state: Mutex::new(State {
                liveness: 0,
                factorial: 1,
                status: 0,
                irq_status: 0,
                src: 0,
                dst: 0,
                count: 0,
                cmd: 0,
                dma_due: None,
                factorial_due: None,
                buffer: vec![0; BUFFER_SIZE as usize],
                memory: vec![0; MEMORY_SIZE],
                log: Vec::new(),
                stuck: false,
                broken_liveness: false,
            }),
            now: AtomicU64::new(0),
            config,
            bdf,
        }
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Advance the clock to `t`, firing whatever is due.
    fn advance_to(&self, t: u64) {
        self.now.fetch_max(t, Ordering::SeqCst);
        let now = self.now();
        let mut s = self.state.lock();
        if let Some((due, n)) = s.factorial_due
            && now >= due
        {
            s.factorial = (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k));
            s.status &= !1;
            s.factorial_due = None;
            if s.status & 0x80 != 0 {
                s.irq_status |= irq_bits::FACTORIAL;
            }
        }
        if let Some(due) = s.dma_due
            && now >= due
            && !s.stuck
        {
            s.dma_due = None;
            self.run_dma(&mut s);
        }
    }

    /// The next time something happens, if anything is scheduled.
    fn next_event(&self) -> Option<u64> {
        let s = self.state.lock();
        let dma = s.dma_due.filter(|_| !s.stuck);
        let fact = s.factorial_due.map(|(t, _)| t);
        match (dma, fact) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn bus_master(&self) -> bool {
        self.config.read16(self.bdf, pci::config::reg::COMMAND) & command::BUS_MASTER != 0
    }

    /// The copy `edu_dma_timer()` does, with QEMU 7.2's range check: a transfer of 0 bytes or
    /// one not ending strictly before 0x41000 aborts the emulator — here, the test.
    fn run_dma(&self, s: &mut State) {
        let to_memory = s.cmd & 2 != 0;
        let (buffer_addr, iova) = if to_memory {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        let count = s.count;
        let end = buffer_addr.saturating_add(count);
        if count == 0 || buffer_addr < BUFFER_ADDR || end >= BUFFER_ADDR + u64::from(BUFFER_SIZE) {
            panic!(
                "QEMU 7.2 would abort: EDU: DMA range {buffer_addr:#x}-{:#x} out of bounds",
                end.wrapping_sub(1)
            );
        }
        let bme = self.bus_master();
        let base = (buffer_addr - BUFFER_ADDR) as usize;
        for i in 0..count as usize {
            let addr = iova as usize + i;
            if to_memory {
                if bme && addr < MEMORY_SIZE {
                    s.memory[addr] = s.buffer[base + i];
                }
            } else {
                // Without bus mastering, or outside memory, the read returns zeros.
                let byte = if bme && addr < MEMORY_SIZE {
                    s.memory[addr]
                } else {
                    0
                };
                s.buffer[base + i] = byte;
            }
        }
        s.cmd &= !1;
        if s.cmd & 4 != 0 {
            s.irq_status |= irq_bits::DMA;
        }
    }

    /// Whether the device asserts INTx.
    fn line(&self) -> bool {
        let intx_disabled =
            self.config.read16(self.bdf, pci::config::reg::COMMAND) & command::INTX_DISABLE != 0;
        self.state.lock().irq_status != 0 && !intx_disabled
    }

    fn log(&self) -> Vec<Access> {
        self.state.lock().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().log.clear();
    }
}

impl EduRegs for &'static FakeEdu {
    fn read32(&self, reg: Reg) -> u32 {
        let mut s = self.state.lock();
        s.log.push(Access::R(reg.offset()));
        match reg {
            Reg::Id => 0x0100_00ED,
            Reg::Liveness => s.liveness,
            Reg::Factorial => s.factorial,
            Reg::Status => s.status,
            Reg::IrqStatus => s.irq_status,
            Reg::IrqRaise | Reg::IrqAck => panic!("read of write-only register {reg:?}"),
        }
    }

    fn write32(&self, reg: Reg, value: u32) {
        let now = self.now();
        let mut s = self.state.lock();
        s.log.push(Access::W(reg.offset(), u64::from(value)));
        match reg {
            Reg::Id | Reg::IrqStatus => {}
            Reg::Liveness => s.liveness = if s.broken_liveness { value } else { !value },
            Reg::Factorial => {
                if s.status & 1 == 0 {
                    s.status |= 1;
                    s.factorial_due = Some((now + 1_000, value));
                }
            }
            Reg::Status => s.status = (s.status & 1) | (value & 0x80),
            Reg::IrqRaise => s.irq_status |= value,
            Reg::IrqAck => s.irq_status &= !value,
        }
    }

    fn read_dma(&self, reg: DmaReg) -> u64 {
        let mut s = self.state.lock();
        s.log.push(Access::R(reg.offset()));
        match reg {
            DmaReg::Src => s.src,
            DmaReg::Dst => s.dst,
            DmaReg::Count => s.count,
            DmaReg::Cmd => s.cmd,
        }
    }

    fn write_dma(&self, reg: DmaReg, value: u64) {
        let now = self.now();
        let mut s = self.state.lock();
        s.log.push(Access::W(reg.offset(), value));
        if s.cmd & 1 != 0 {
            return; // ignored while running
        }
        match reg {
            DmaReg::Src => s.src = value,
            DmaReg::Dst => s.dst = value,
            DmaReg::Count => s.count = value,
            DmaReg::Cmd => {
                if value & 1 != 0 {
                    s.cmd = value;
                    s.dma_due = Some(now + DMA_DELAY_NS);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The environment: virtual time, WFI, interrupt delivery
// ------------------------------------------------------------------------------------------------

struct FakeEnv {
    edu: &'static FakeEdu,
    intid: u32,
    /// Deliver the asserted INTx to the registry (as the GIC would with IRQs unmasked).
    deliver: AtomicBool,
    barriers: AtomicU32,
    waits: AtomicU32,
}

impl FakeEnv {
    fn new(edu: &'static FakeEdu, intid: u32) -> Self {
        Self {
            edu,
            intid,
            deliver: AtomicBool::new(true),
            barriers: AtomicU32::new(0),
            waits: AtomicU32::new(0),
        }
    }

    fn deliver_pending(&self) {
        if self.deliver.load(Ordering::SeqCst) && self.edu.line() {
            intx::dispatch(self.intid);
        }
    }
}

impl EduEnv for FakeEnv {
    fn now_ns(&self) -> u64 {
        self.edu.now()
    }

    fn wait_until(&self, timeout_ns: u64, done: &mut dyn FnMut() -> bool) -> bool {
        self.waits.fetch_add(1, Ordering::SeqCst);
        let deadline = self.edu.now().saturating_add(timeout_ns);
        for _ in 0..10_000 {
            self.deliver_pending();
            if done() {
                return true;
            }
            let now = self.edu.now();
            if now >= deadline {
                return false;
            }
            // WFI under icount sleep=off: time jumps to the next event or the timer deadline.
            let next = self
                .edu
                .next_event()
                .map_or(deadline, |t| t.clamp(now, deadline));
            self.edu.advance_to(next.max(now + 1));
        }
        panic!("wait_until did not terminate");
    }

    fn relax(&self) {
        self.edu.advance_to(self.edu.now() + 1_000);
        self.deliver_pending();
    }

    fn dma_barrier(&self) {
        self.barriers.fetch_add(1, Ordering::SeqCst);
    }

    fn irq_pending(&self, _intid: u32) -> Option<bool> {
        Some(self.edu.line())
    }
}

// ------------------------------------------------------------------------------------------------
// A fault source standing in for the IOMMU glue
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakeFaults {
    begun: Mutex<Vec<DmaWindow>>,
    ended: AtomicU32,
    next: Mutex<Option<DmaFault>>,
}

impl DmaFaultSource for FakeFaults {
    fn begin_transfer(&self, window: &DmaWindow) -> FaultWatch {
        let mut begun = self.begun.lock();
        begun.push(*window);
        FaultWatch(begun.len() as u64)
    }

    fn end_transfer(&self, watch: FaultWatch) -> Option<DmaFault> {
        assert_eq!(watch.0, self.begun.lock().len() as u64, "token handed back");
        self.ended.fetch_add(1, Ordering::SeqCst);
        self.next.lock().take()
    }
}

// ------------------------------------------------------------------------------------------------
// Rig
// ------------------------------------------------------------------------------------------------

struct Rig {
    edu: Arc<Edu<&'static FakeEdu>>,
    dev: &'static FakeEdu,
    env: &'static FakeEnv,
    config: &'static FakeConfig,
    pci: PciDevice,
}

/// The default machine (edu at 00:01.0) enumerated by the real code, the driver on the model.
/// `intid` replaces the routed INTID: the INTx registry is global and tests run in parallel.
fn rig_with(settings: EduConfig, intid: u32) -> Rig {
    let config = leak(FakeConfig::new(
        0,
        FakeBus::new()
            .with(0, 0, host_bridge())
            .with(1, 0, pci_fake::edu()),
    ));
    let e = pci::enumerate(config, &qemu_host());
    assert_eq!(e.errors, []);
    let mut pci = e.device(bdf(0, 1, 0)).unwrap().clone();
    if let Some((_, irq)) = &mut pci.intx {
        *irq = Irq::spi(intid - 32, Trigger::LevelHigh);
    }
    let dev = leak(FakeEdu::new(config, pci.bdf));
    let env = leak(FakeEnv::new(dev, intid));
    let edu = Arc::new(Edu::new(&pci, dev, config, env, settings).unwrap());
    if settings.completion == Completion::Irq {
        edu.attach_irq().unwrap();
    }
    dev.clear_log();
    Rig {
        edu,
        dev,
        env,
        config,
        pci,
    }
}

fn irq_rig(intid: u32) -> Rig {
    rig_with(EduConfig::default(), intid)
}

fn poll_rig(intid: u32) -> Rig {
    rig_with(
        EduConfig {
            completion: Completion::Poll,
            ..EduConfig::default()
        },
        intid,
    )
}

impl Rig {
    fn enable(&self) {
        // SAFETY: a model; the "device" can only touch `FakeEdu::memory`.
        unsafe { self.edu.enable_dma() };
    }

    fn fill(&self, iova: usize, bytes: &[u8]) {
        self.dev.state.lock().memory[iova..iova + bytes.len()].copy_from_slice(bytes);
    }

    fn memory(&self, iova: usize, len: usize) -> Vec<u8> {
        self.dev.state.lock().memory[iova..iova + len].to_vec()
    }

    fn buffer(&self, offset: usize, len: usize) -> Vec<u8> {
        self.dev.state.lock().buffer[offset..offset + len].to_vec()
    }

    fn dma_writes(&self) -> usize {
        self.dev
            .log()
            .iter()
            .filter(|a| matches!(a, Access::W(off, _) if *off >= 0x80))
            .count()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Pure parts
// ------------------------------------------------------------------------------------------------

/// The offsets of QEMU's `docs/specs/edu.txt`, written out independently of the driver's
/// register block.
#[test]
fn register_block_layout_matches_the_device() {
    let spec = [
        (Reg::Id.offset(), 0x00),
        (Reg::Liveness.offset(), 0x04),
        (Reg::Factorial.offset(), 0x08),
        (Reg::Status.offset(), 0x20),
        (Reg::IrqStatus.offset(), 0x24),
        (Reg::IrqRaise.offset(), 0x60),
        (Reg::IrqAck.offset(), 0x64),
        (DmaReg::Src.offset(), 0x80),
        (DmaReg::Dst.offset(), 0x88),
        (DmaReg::Count.offset(), 0x90),
        (DmaReg::Cmd.offset(), 0x98),
    ];
    for (driver, edu_txt) in spec {
        assert_eq!(driver, edu_txt);
    }
    assert_eq!(core::mem::size_of::<EduRegisterBlock>(), 0xA0);
}

#[test]
fn mmio_accesses_land_at_their_offsets_with_their_widths() {
    let mut bar = vec![0u64; 0xA0 / 8];
    {
        // SAFETY: `bar` is 0xA0 bytes of ordinary memory standing in for the BAR, alive and
        // otherwise unused while `regs` is.
        let regs: MmioBlock<EduRegisterBlock> =
            unsafe { MmioBlock::new(bar.as_mut_ptr() as usize) };
        regs.write32(Reg::Liveness, 0x1122_3344);
        regs.write32(Reg::IrqAck, 0x100);
        regs.write_dma(DmaReg::Cmd, 0x7);
        regs.write_dma(DmaReg::Dst, 0x4_0010);
        regs.write32(Reg::Id, 0xFFFF_FFFF);
        assert_eq!(
            regs.read32(Reg::IrqAck),
            0,
            "write-only reads as 0, without an access"
        );
    }
    assert_eq!(bar[0], 0x1122_3344 << 32, "0x04, 32 bits; ID untouched");
    assert_eq!(bar[0x60 / 8], 0x100 << 32, "0x64");
    assert_eq!(bar[0x98 / 8], 0x7);
    assert_eq!(bar[0x88 / 8], 0x4_0010);
}

#[test]
fn transfer_lengths_are_checked_against_qemu_7_2s_limits() {
    let t = |buffer_offset, len| Transfer {
        direction: Direction::ToDevice,
        iova: 0x1000,
        buffer_offset,
        len,
    };
    let ok = [(0, 1), (0, 4095), (4094, 1), (100, 3995), (2048, 2047)];
    for (offset, len) in ok {
        assert_eq!(t(offset, len).validate(u64::MAX), Ok(()), "{offset}+{len}");
    }
    let bad = [
        (0, 0, InvalidTransfer::Length),
        (0, 4096, InvalidTransfer::Length),
        (5, 5000, InvalidTransfer::Length),
        (1, 4095, InvalidTransfer::BufferRange),
        (4095, 1, InvalidTransfer::BufferRange),
        (4096, 1, InvalidTransfer::BufferRange),
        (u32::MAX, 2, InvalidTransfer::BufferRange),
    ];
    for (offset, len, reason) in bad {
        assert_eq!(
            t(offset, len).validate(u64::MAX),
            Err(reason),
            "{offset}+{len}"
        );
    }
}

#[test]
fn iovas_must_fit_the_dma_mask_and_not_wrap() {
    let t = |iova, len| Transfer {
        direction: Direction::FromDevice,
        iova,
        buffer_offset: 0,
        len,
    };
    let mask28 = (1 << 28) - 1;
    assert_eq!(t(0x0FFF_F000, 4095).validate(mask28), Ok(()));
    assert_eq!(
        t(0x0FFF_F002, 4095).validate(mask28),
        Err(InvalidTransfer::IovaRange { dma_mask: mask28 })
    );
    assert_eq!(
        t(0x4000_0000, 16).validate(mask28),
        Err(InvalidTransfer::IovaRange { dma_mask: mask28 }),
        "a RAM address would be truncated by the default dma_mask"
    );
    assert_eq!(t(u64::MAX - 15, 16).validate(u64::MAX), Ok(()));
    assert_eq!(
        t(u64::MAX - 14, 16).validate(u64::MAX),
        Err(InvalidTransfer::IovaRange { dma_mask: u64::MAX })
    );
}

#[test]
fn command_encoding() {
    let read = Transfer {
        direction: Direction::ToDevice,
        iova: 0x8000_1000,
        buffer_offset: 0x10,
        len: 64,
    };
    assert_eq!(
        read.program(true),
        DmaProgram {
            src: 0x8000_1000,
            dst: 0x4_0010,
            count: 64,
            cmd: 0b101
        },
        "RUN | IRQ, direction 0"
    );
    assert_eq!(read.program(false).cmd, 0b001);
    let write = Transfer {
        direction: Direction::FromDevice,
        ..read
    };
    assert_eq!(
        write.program(true),
        DmaProgram {
            src: 0x4_0010,
            dst: 0x8000_1000,
            count: 64,
            cmd: 0b111
        },
        "RUN | DIR | IRQ"
    );
    assert_eq!(write.program(false).cmd, 0b011);
}

#[test]
fn completion_parses_and_prints() {
    assert_eq!("irq".parse(), Ok(Completion::Irq));
    assert_eq!("poll".parse(), Ok(Completion::Poll));
    assert_eq!("IRQ".parse::<Completion>(), Err(UnknownCompletion));
    assert_eq!(Completion::Poll.to_string(), "poll");
    assert_eq!(
        EduConfig::with_completion(Completion::Poll).completion,
        Completion::Poll
    );
    assert_eq!(EduConfig::default().completion, Completion::Irq);
}

// ------------------------------------------------------------------------------------------------
// Probe
// ------------------------------------------------------------------------------------------------

#[test]
fn probe_identifies_checks_liveness_and_leaves_bus_mastering_off() {
    let r = irq_rig(33 + 900);
    assert_eq!(r.edu.version(), (1, 0));
    assert_eq!(r.edu.stream_id(), Some(8));
    assert_eq!(r.edu.bar0_phys(), 0x1000_0000);
    assert!(!r.edu.dma_enabled());
    assert_eq!(
        r.edu.to_string(),
        "edu 00:01.0 v1.0: BAR0 at 0x10000000, StreamID 0x8, INTA -> INTID 933, completion irq"
    );
}

#[test]
fn probe_register_sequence() {
    let config = leak(FakeConfig::new(
        0,
        FakeBus::new().with(1, 0, pci_fake::edu()),
    ));
    let e = pci::enumerate(config, &qemu_host());
    let pci = e.devices[0].clone();
    let dev = leak(FakeEdu::new(config, pci.bdf));
    dev.state.lock().irq_status = 0x100;
    let env = leak(FakeEnv::new(dev, 934));
    let settings = EduConfig {
        completion: Completion::Poll,
        ..EduConfig::default()
    };
    Edu::new(&pci, dev, config, env, settings).unwrap();
    use Access::{R, W};
    assert_eq!(
        dev.log(),
        [
            R(0x00),
            W(0x04, 0x5A5A_0FF0),
            R(0x04),
            W(0x04, 0x0123_4567),
            R(0x04),
            R(0x98),
            W(0x20, 0),
            R(0x24),
            W(0x64, 0x100),
        ],
        "identify, liveness twice, not busy, factorial IRQ off, stale interrupt acknowledged"
    );
    assert_eq!(dev.state.lock().irq_status, 0);
}

#[test]
fn probe_errors() {
    let config = leak(FakeConfig::new(
        0,
        FakeBus::new().with(1, 0, pci_fake::edu()),
    ));
    let e = pci::enumerate(config, &qemu_host());
    let pci = e.devices[0].clone();
    let dev = leak(FakeEdu::new(config, pci.bdf));
    let env = leak(FakeEnv::new(dev, 935));
    let irq = EduConfig::default();
    let new = |pci: &PciDevice, settings| Edu::new(pci, dev, config, env, settings).map(|_| ());

    dev.state.lock().broken_liveness = true;
    let err = new(&pci, irq).unwrap_err();
    assert_eq!(
        err,
        EduError::Liveness {
            bdf: pci.bdf,
            wrote: 0x5A5A_0FF0,
            read: 0x5A5A_0FF0
        }
    );
    assert_eq!(
        err.to_string(),
        "edu 00:01.0: liveness check failed: wrote 0x5a5a0ff0, read 0x5a5a0ff0, expected 0xa5a5f00f"
    );
    dev.state.lock().broken_liveness = false;

    let other = PciDevice {
        device: 0x1111,
        ..pci.clone()
    };
    assert!(matches!(
        new(&other, irq),
        Err(EduError::NotEdu { device: 0x1111, .. })
    ));

    let no_intx = PciDevice {
        intx: None,
        ..pci.clone()
    };
    assert_eq!(new(&no_intx, irq), Err(EduError::NoIntx { bdf: pci.bdf }));
    let poll = EduConfig {
        completion: Completion::Poll,
        ..irq
    };
    assert_eq!(new(&no_intx, poll), Ok(()), "polling needs no INTx");

    let mut unplaced = pci.clone();
    unplaced.bars[0].assigned = None;
    assert_eq!(new(&unplaced, irq), Err(EduError::Bar0 { bdf: pci.bdf }));

    assert!(matches!(
        new(
            &pci,
            EduConfig {
                timeout_ns: 0,
                ..irq
            }
        ),
        Err(EduError::BadSettings { .. })
    ));

    let cmd = config.read16(pci.bdf, pci::config::reg::COMMAND);
    config.write16(pci.bdf, pci::config::reg::COMMAND, cmd & !command::MEMORY);
    assert_eq!(
        new(&pci, irq),
        Err(EduError::MemoryDecodingOff { bdf: pci.bdf })
    );
}

// ------------------------------------------------------------------------------------------------
// DMA
// ------------------------------------------------------------------------------------------------

#[test]
fn read_from_in_interrupt_mode_moves_data_and_acknowledges() {
    let r = irq_rig(940);
    r.enable();
    let data = pattern(64, 3);
    r.fill(0x1000, &data);
    let before = r.dev.now();
    r.edu.read_from(0x1000, 0x10, 64).unwrap();
    assert_eq!(r.buffer(0x10, 64), data);
    assert_eq!(
        r.dev.now() - before,
        DMA_DELAY_NS,
        "one WFI, woken by the interrupt"
    );
    use Access::{R, W};
    assert_eq!(
        r.dev.log(),
        [
            R(0x98),
            W(0x80, 0x1000),
            W(0x88, 0x4_0010),
            W(0x90, 64),
            W(0x98, 0b101),
            R(0x24),
            W(0x64, 0x100),
        ],
        "not busy; src, dst, count, command; the handler acknowledges exactly the DMA bit"
    );
    assert_eq!(r.dev.state.lock().irq_status, 0, "the line dropped");
    assert_eq!(r.env.barriers.load(Ordering::SeqCst), 2);
}

#[test]
fn write_to_and_copy_move_data() {
    let r = irq_rig(941);
    r.enable();
    let data = pattern(4095, 9);
    r.fill(0x1000, &data);
    r.edu.copy(0x1000, 0x5000, 4095).unwrap();
    assert_eq!(r.memory(0x5000, 4095), data);
    r.edu.write_to(0x9001, 100, 17).unwrap();
    assert_eq!(r.memory(0x9001, 17), data[100..117]);
}

#[test]
fn polling_mode_sets_no_irq_bit_and_is_bounded() {
    let r = poll_rig(942);
    r.enable();
    r.fill(0x2000, &[0xAB; 8]);
    r.edu.read_from(0x2000, 0, 8).unwrap();
    r.edu.write_to(0x3000, 0, 8).unwrap();
    assert_eq!(r.memory(0x3000, 8), [0xAB; 8]);
    let cmds: Vec<_> = r
        .dev
        .log()
        .into_iter()
        .filter_map(|a| match a {
            Access::W(0x98, v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(cmds, [0b001, 0b011]);
    assert_eq!(r.dev.state.lock().irq_status, 0);
    let waits = r.env.waits.load(Ordering::SeqCst);
    assert!(
        (100..=210).contains(&waits),
        "two 100 ms transfers polled every 1 ms: {waits} sleeps"
    );
}

#[test]
fn transfers_that_would_crash_qemu_never_reach_the_device() {
    let r = irq_rig(943);
    r.enable();
    for (offset, len) in [(0, 0), (0, 4096), (1, 4095), (4095, 1), (4000, 200)] {
        let err = r.edu.write_to(0x1000, offset, len).unwrap_err();
        assert!(matches!(err, DmaError::Invalid { .. }), "{err}");
        let err = r.edu.copy(0x1000, 0x2000, len.max(4096)).unwrap_err();
        assert!(matches!(err, DmaError::Invalid { .. }), "{err}");
    }
    assert_eq!(r.dma_writes(), 0);
    let err = r.edu.read_from(0x1000, 0, 4096).unwrap_err();
    assert_eq!(
        err.to_string(),
        "edu 00:01.0: DMA read_from (memory -> device) of 4096 bytes from IOVA 0x1000 to buffer \
         offset 0x0 refused: the length must be 1..=4095 bytes (QEMU 7.2's edu aborts the \
         emulator on 0 bytes and on a transfer ending at the end of its 4 KiB buffer)"
    );
}

#[test]
fn without_bus_mastering_transfers_are_refused_or_move_nothing() {
    let r = irq_rig(944);
    r.fill(0x1000, &[0x55; 32]);
    let err = r.edu.read_from(0x1000, 0, 32).unwrap_err();
    assert!(matches!(err, DmaError::BusMasterDisabled { .. }), "{err}");
    assert!(err.to_string().contains("bus mastering is disabled"));
    assert_eq!(r.dma_writes(), 0);

    // The deliberate variant runs, and the device moves nothing: zeros in, nothing out.
    r.dev.state.lock().buffer[..32].fill(0x77);
    let t = Transfer {
        direction: Direction::ToDevice,
        iova: 0x1000,
        buffer_offset: 0,
        len: 32,
    };
    r.edu.transfer_without_bus_master(t).unwrap();
    assert_eq!(r.buffer(0, 32), [0; 32]);
    r.dev.state.lock().buffer[..32].fill(0x77);
    let out = Transfer {
        direction: Direction::FromDevice,
        iova: 0x4000,
        ..t
    };
    r.edu.transfer_without_bus_master(out).unwrap();
    assert_eq!(r.memory(0x4000, 32), [0; 32]);

    r.enable();
    assert!(matches!(
        r.edu.transfer_without_bus_master(t),
        Err(DmaError::BusMasterEnabled { .. })
    ));
}

#[test]
fn enable_and_disable_dma_toggle_only_bus_master_enable() {
    let r = irq_rig(945);
    let cmd = |c: &FakeConfig| c.read16(bdf(0, 1, 0), pci::config::reg::COMMAND);
    assert_eq!(cmd(r.config), command::MEMORY);
    r.enable();
    assert_eq!(cmd(r.config), command::MEMORY | command::BUS_MASTER);
    r.edu.disable_dma();
    assert_eq!(cmd(r.config), command::MEMORY);
    assert!(!r.edu.dma_enabled());
    assert!(r.pci.upstream.is_empty());
}

#[test]
fn a_stuck_transfer_times_out_naming_device_and_transfer_then_blocks_the_engine() {
    let r = irq_rig(946);
    r.enable();
    r.dev.state.lock().stuck = true;
    let err = r.edu.write_to(0x3000, 8, 64).unwrap_err();
    let DmaError::Timeout {
        bdf: b,
        transfer,
        waited_ns,
        diagnosis,
        fault,
    } = err
    else {
        panic!("{err}");
    };
    assert_eq!(b, bdf(0, 1, 0));
    assert_eq!(
        transfer,
        Transfer {
            direction: Direction::FromDevice,
            iova: 0x3000,
            buffer_offset: 8,
            len: 64
        }
    );
    assert_eq!(waited_ns, 1_000_000_000);
    assert_eq!((diagnosis, fault), (TimeoutDiagnosis::StillRunning, None));
    assert_eq!(
        err.to_string(),
        "edu 00:01.0: DMA write_to (device -> memory) of 64 bytes from buffer offset 0x8 to IOVA \
         0x3000 timed out after 1000 ms: the device is still running"
    );
    // The engine cannot be cancelled: the next transfer is refused until it finishes.
    assert!(matches!(
        r.edu.read_from(0, 0, 4),
        Err(DmaError::Busy { .. })
    ));
    r.dev.state.lock().stuck = false;
    r.env.relax();
    r.env.deliver_pending();
    r.edu.read_from(0, 0, 4).unwrap();
}

#[test]
fn an_interrupt_nobody_handles_times_out_with_a_diagnosis() {
    let r = irq_rig(947);
    r.enable();
    r.env.deliver.store(false, Ordering::SeqCst);
    let err = r.edu.read_from(0x1000, 0, 16).unwrap_err();
    let DmaError::Timeout { diagnosis, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(
        diagnosis,
        TimeoutDiagnosis::InterruptNotHandled {
            irq_status: 0x100,
            intid: Some(947),
            gic_pending: Some(true)
        },
        "completion is never taken from the device itself in interrupt mode"
    );
    assert!(err.to_string().contains(
        "no handler saw it (INTID 947, pending at the GIC: yes): INTx not attached or misrouted"
    ));
    assert_eq!(
        r.dev.state.lock().irq_status,
        0,
        "acknowledged so the line drops"
    );
}

#[test]
fn faults_reported_by_the_iommu_glue_fail_the_transfer() {
    let r = irq_rig(948);
    r.enable();
    let faults = leak(FakeFaults::default());
    r.edu.set_fault_source(Some(faults));
    r.edu.write_to(0x6000, 0, 24).unwrap();
    let fault = DmaFault {
        kind: DmaFaultKind::Permission,
        iova: 0x6000,
        write: true,
        count: 6,
        stream_id: 8,
    };
    *faults.next.lock() = Some(fault);
    let err = r.edu.write_to(0x6000, 0, 24).unwrap_err();
    assert_eq!(
        err,
        DmaError::Fault {
            bdf: bdf(0, 1, 0),
            transfer: Transfer {
                direction: Direction::FromDevice,
                iova: 0x6000,
                buffer_offset: 0,
                len: 24
            },
            fault
        }
    );
    assert_eq!(
        err.to_string(),
        "edu 00:01.0: DMA write_to (device -> memory) of 24 bytes from buffer offset 0x0 to IOVA \
         0x6000 faulted in the IOMMU: permission fault on StreamID 0x8 at IOVA 0x6000 (device \
         write), 6 events"
    );
    assert_eq!(
        *faults.begun.lock(),
        [DmaWindow {
            stream_id: 8,
            iova: 0x6000,
            len: 24,
            device_writes: true
        }; 2]
    );
    assert_eq!(faults.ended.load(Ordering::SeqCst), 2);

    // A refused transfer never reaches the source.
    let _ = r.edu.read_from(0, 0, 0);
    assert_eq!(faults.ended.load(Ordering::SeqCst), 2);

    // A timeout still closes the watch and carries what the IOMMU saw.
    r.dev.state.lock().stuck = true;
    *faults.next.lock() = Some(DmaFault {
        write: false,
        ..fault
    });
    let err = r.edu.read_from(0x6000, 0, 4).unwrap_err();
    assert!(
        matches!(err, DmaError::Timeout { fault: Some(f), .. } if !f.write),
        "{err}"
    );
    assert!(err.to_string().ends_with(
        "; IOMMU: permission fault on StreamID 0x8 at IOVA 0x6000 (device read), 6 events"
    ));
}

#[test]
fn a_device_without_a_stream_id_is_not_watched() {
    let r = irq_rig(949);
    let faults = leak(FakeFaults::default());
    let mut pci = r.pci.clone();
    pci.stream_id = None;
    let settings = EduConfig {
        completion: Completion::Poll,
        ..EduConfig::default()
    };
    let edu = Edu::new(&pci, r.dev, r.config, r.env, settings).unwrap();
    edu.set_fault_source(Some(faults));
    r.enable();
    edu.read_from(0, 0, 4).unwrap();
    assert!(faults.begun.lock().is_empty());
}

// ------------------------------------------------------------------------------------------------
// Interrupts and factorial
// ------------------------------------------------------------------------------------------------

#[test]
fn factorial_by_polling_and_by_interrupt() {
    let r = irq_rig(950);
    assert_eq!(r.edu.factorial(5), Ok(120));
    assert_eq!(
        r.edu.factorial(13),
        Ok(1_932_053_504),
        "32-bit wrapping, as edu computes"
    );
    assert_eq!(
        r.dev.state.lock().irq_status,
        0,
        "no interrupt without status bit 7"
    );
    r.dev.clear_log();
    assert_eq!(r.edu.factorial_with_irq(10), Ok(3_628_800));
    let log = r.dev.log();
    assert_eq!(
        log[..3],
        [Access::R(0x20), Access::W(0x20, 0x80), Access::W(0x08, 10)]
    );
    assert!(
        log.contains(&Access::W(0x64, 0x1)),
        "handler acknowledged 0x01: {log:?}"
    );
    assert_eq!(
        *log.last().unwrap(),
        Access::W(0x20, 0),
        "interrupt enable cleared"
    );
    assert_eq!(r.dev.state.lock().irq_status, 0);
}

#[test]
fn factorial_interrupt_not_delivered() {
    let r = irq_rig(951);
    r.env.deliver.store(false, Ordering::SeqCst);
    let err = r.edu.factorial_with_irq(4).unwrap_err();
    assert!(
        matches!(
            err,
            EduError::FactorialTimeout {
                n: 4,
                diagnosis: TimeoutDiagnosis::InterruptNotHandled { irq_status: 1, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn raised_interrupts_reach_the_handler_on_a_shared_line() {
    let intid = 952;
    let a = irq_rig(intid);
    let b = irq_rig(intid);
    a.edu.raise_and_wait_interrupt(0x40).unwrap();
    assert_eq!(a.dev.state.lock().irq_status, 0);
    assert!(
        b.dev.log().contains(&Access::R(0x24)),
        "the other device on the line was asked too"
    );
    assert!(
        !b.dev.log().iter().any(|x| matches!(x, Access::W(0x64, _))),
        "and acknowledged nothing"
    );
    drop(b);
    a.env.deliver.store(false, Ordering::SeqCst);
    let err = a.edu.raise_and_wait_interrupt(0x2).unwrap_err();
    assert!(
        matches!(err, EduError::InterruptTimeout { bits: 0x2, .. }),
        "{err}"
    );
}

#[test]
fn dropping_the_driver_detaches_its_handler_and_clears_bus_mastering() {
    let r = irq_rig(953);
    r.edu.attach_irq().unwrap();
    assert!(r.edu.irq_attached());
    assert_eq!(intx::dispatch(953), 0, "nothing asserted");
    r.dev.state.lock().irq_status = 0x40;
    assert_eq!(
        intx::dispatch(953),
        1,
        "attached once, even when asked twice"
    );
    r.enable();
    drop(r.edu);
    r.dev.state.lock().irq_status = 0x40;
    assert_eq!(intx::dispatch(953), 0);
    assert!(!pci::bus_master_enabled(r.config, r.pci.bdf), "fail closed");
}

#[test]
fn error_messages() {
    let b = bdf(0, 2, 0);
    let t = Transfer {
        direction: Direction::ToDevice,
        iova: 0x10,
        buffer_offset: 4,
        len: 8,
    };
    let cases: [(alloc::string::String, &str); 6] = [
        (
            DmaError::Busy {
                bdf: b,
                transfer: t,
            }
            .to_string(),
            "edu 00:02.0: DMA read_from (memory -> device) of 8 bytes from IOVA 0x10 to buffer offset 0x4 not started",
        ),
        (
            EduError::BadId { bdf: b, id: 0xdead }.to_string(),
            "reads 0x0000dead",
        ),
        (
            EduError::NotEdu {
                bdf: b,
                vendor: 0x1af4,
                device: 0x1000,
            }
            .to_string(),
            "PCI 00:02.0 is 1af4:1000, not edu 1234:11e8",
        ),
        (EduError::Bar0 { bdf: b }.to_string(), "edu 00:02.0: BAR0"),
        (
            TimeoutDiagnosis::NoInterruptRaised { irq_status: 0 }.to_string(),
            "did not raise the completion interrupt",
        ),
        (
            InvalidTransfer::IovaRange {
                dma_mask: 0xfff_ffff,
            }
            .to_string(),
            "dma_mask 0xfffffff",
        ),
    ];
    for (msg, needle) in cases {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    let _ = format!("{}", EduError::Busy { bdf: b });
}
