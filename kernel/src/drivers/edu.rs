//! Driver for QEMU's `edu` educational PCI device (1234:11e8): identification, liveness check,
//! factorial, interrupts, and its DMA engine — the DMA master this kernel points at the SMMU.
//!
//! The device (`hw/misc/edu.c`, `docs/specs/edu.txt` in QEMU) has a 1 MiB BAR0 with a handful of
//! registers, a 4 KiB internal buffer at device address 0x40000 that its DMA engine copies to or
//! from bus addresses, and INTx pin A (an MSI capability too, unused: an MSI write would itself
//! be DMA through the SMMU). The driver speaks **IOVAs**: whatever the SMMU translates for the
//! device's StreamID. Its API is shaped by QEMU 7.2's behaviour, several parts of which crash
//! the emulator or make a test pass for the wrong reason:
//!
//! - **Transfer bounds.** A transfer of 0 bytes, or one that ends exactly at the end of the
//!   4 KiB buffer, makes QEMU 7.2 call `hw_error()` and abort the whole emulator (its range check
//!   wants `end < 0x41000`). So lengths are 1..=4095 and `offset + len < 4096`, checked here and
//!   reported as [`DmaError::Invalid`]; such a transfer never reaches the device.
//! - **Bus Master Enable.** Without COMMAND.BME the DMA silently goes nowhere: no SMMU walk, no
//!   event, completion as usual. BME is set only by [`Edu::enable_dma`], whose caller guarantees
//!   the SMMU holds a valid STE for the device (QEMU 7.2 has no SMMU_GBPA: a disabled SMMU
//!   means bypass, i.e. DMA anywhere in RAM), and cleared by [`Edu::disable_dma`]. A transfer
//!   with BME clear is refused with [`DmaError::BusMasterDisabled`] rather than "succeeding"
//!   with nothing moved; [`Edu::transfer_without_bus_master`] exists for the test that proves
//!   the gate.
//! - **Silent faults.** edu ignores its DMA results: a faulted read leaves zeros in its buffer,
//!   a faulted write is dropped, completion is signalled as usual. Faults are visible only in
//!   the SMMU event queue, so each transfer is bracketed by a [`DmaFaultSource`] (the IOMMU
//!   glue) that returns the events for this StreamID and IOVA range ([`DmaError::Fault`]).
//! - **Timing.** The copy happens 100 ms of virtual time after the command (and the SMMU walk
//!   with it). With `-icount …,sleep=off` a CPU in WFI makes virtual time jump to the next timer
//!   deadline, so the waiting CPU sleeps in WFI until the edu interrupt ([`Completion::Irq`]);
//!   polling `RUN` ([`Completion::Poll`]) sleeps in short WFI slices between looks. Every wait is
//!   bounded and a timeout names the device, the transfer and what was seen
//!   ([`TimeoutDiagnosis`]).
//! - **Interrupt-mode honesty.** In [`Completion::Irq`] mode completion is taken only from what
//!   the interrupt handler recorded, never from reading the device after the wait: under icount a
//!   timed-out wait costs no wall time, and a "completed" read at the deadline would hide a
//!   misrouted INTx.
//! - **Access widths.** Registers below 0x80 accept only 4-byte accesses, the DMA registers 4 or
//!   8; the [`EduRegs`] interface makes other widths unrepresentable.
//!
//! Hardware access goes through [`EduRegs`] (registers) and [`EduEnv`] (time, sleeping,
//! barriers), and configuration space through [`ConfigSpace`], so the whole driver runs in host
//! unit tests against a model of the device.

use crate::{
    drivers::{
        dma::{BusMaster, DmaFault, DmaFaultSource, DmaWindow},
        mmio::MmioBlock,
        pci::{self, ConfigSpace, PciDevice, config, intx},
    },
    platform::{Bdf, IntxPin, Irq},
};
use alloc::{sync::Arc, vec::Vec};
use core::{
    fmt,
    mem::offset_of,
    sync::atomic::{AtomicU32, Ordering},
};
use spin::{Mutex, RwLock};
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

// ------------------------------------------------------------------------------------------------
// Public Definitions: the device
// ------------------------------------------------------------------------------------------------

/// PCI vendor ID of edu.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of edu.
pub const DEVICE_ID: u16 = 0x11e8;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;
/// Size of the internal DMA buffer.
pub const BUFFER_SIZE: u32 = 4096;
/// The device address of the internal DMA buffer (src/dst register value for buffer offset 0).
pub const BUFFER_ADDR: u64 = 0x40000;
/// The longest transfer QEMU 7.2 survives: it requires `end < BUFFER_ADDR + BUFFER_SIZE`.
pub const MAX_TRANSFER: u32 = BUFFER_SIZE - 1;
/// Low 16 bits of the identification register.
const ID_MAGIC: u32 = 0x00ED;

/// Interrupt status bits (register 0x24) the driver gives meaning to.
pub mod irq_bits {
    /// The factorial finished (raised when STATUS bit 7 is set).
    pub const FACTORIAL: u32 = 0x001;
    /// A DMA transfer finished (raised when the command had bit 2 set).
    pub const DMA: u32 = 0x100;
}

register_bitfields! {
    u32,
    /// Identification, 0x00: `0xRRrr00ED`, RR major and rr minor version.
    pub ID [
        /// Always 0x00ED.
        MAGIC OFFSET(0) NUMBITS(16) [],
        /// Minor version.
        MINOR OFFSET(16) NUMBITS(8) [],
        /// Major version.
        MAJOR OFFSET(24) NUMBITS(8) []
    ],
    /// Status, 0x20.
    pub STATUS [
        /// The factorial is being computed (read-only).
        COMPUTING OFFSET(0) NUMBITS(1) [],
        /// Raise interrupt 0x01 when the factorial is done.
        IRQ_ON_FACTORIAL OFFSET(7) NUMBITS(1) []
    ]
}

register_bitfields! {
    u64,
    /// DMA command, 0x98.
    pub DMA_CMD [
        /// Start; cleared by the device when the transfer is done.
        RUN OFFSET(0) NUMBITS(1) [],
        /// 0: memory (src IOVA) to the buffer; 1: the buffer to memory (dst IOVA).
        DIRECTION OFFSET(1) NUMBITS(1) [
            ToDevice = 0,
            ToMemory = 1
        ],
        /// Raise interrupt 0x100 when done.
        IRQ OFFSET(2) NUMBITS(1) []
    ]
}

register_structs! {
    /// BAR0 of edu (QEMU `docs/specs/edu.txt`). Offsets below 0x80 accept only 32-bit accesses.
    #[allow(non_snake_case)]
    pub EduRegisterBlock {
        /// Identification.
        (0x00 => pub ID: ReadOnly<u32, ID::Register>),
        /// Liveness check: reads back the bitwise NOT of the last value written.
        (0x04 => pub LIVENESS: ReadWrite<u32>),
        /// Factorial: write n, read n! once STATUS.COMPUTING is clear.
        (0x08 => pub FACTORIAL: ReadWrite<u32>),
        (0x0C => _reserved0),
        /// Status.
        (0x20 => pub STATUS: ReadWrite<u32, STATUS::Register>),
        /// Interrupt status: the raised interrupt bits; INTx is asserted while non-zero.
        (0x24 => pub IRQ_STATUS: ReadOnly<u32>),
        (0x28 => _reserved1),
        /// Raise interrupt: ORed into the interrupt status.
        (0x60 => pub IRQ_RAISE: WriteOnly<u32>),
        /// Acknowledge interrupt: clears these bits of the interrupt status.
        (0x64 => pub IRQ_ACK: WriteOnly<u32>),
        (0x68 => _reserved2),
        /// DMA source address.
        (0x80 => pub DMA_SRC: ReadWrite<u64>),
        /// DMA destination address.
        (0x88 => pub DMA_DST: ReadWrite<u64>),
        /// DMA byte count.
        (0x90 => pub DMA_COUNT: ReadWrite<u64>),
        /// DMA command.
        (0x98 => pub DMA_CMD: ReadWrite<u64, DMA_CMD::Register>),
        (0xA0 => @END),
    }
}

/// A 32-bit register of [`EduRegisterBlock`] (offset below 0x80: 4-byte accesses only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// `ID`, read-only.
    Id,
    /// `LIVENESS`.
    Liveness,
    /// `FACTORIAL`.
    Factorial,
    /// `STATUS`.
    Status,
    /// `IRQ_STATUS`, read-only.
    IrqStatus,
    /// `IRQ_RAISE`, write-only.
    IrqRaise,
    /// `IRQ_ACK`, write-only.
    IrqAck,
}

impl Reg {
    /// The register's offset in BAR0, taken from [`EduRegisterBlock`] (the one layout).
    pub const fn offset(self) -> u32 {
        (match self {
            Self::Id => offset_of!(EduRegisterBlock, ID),
            Self::Liveness => offset_of!(EduRegisterBlock, LIVENESS),
            Self::Factorial => offset_of!(EduRegisterBlock, FACTORIAL),
            Self::Status => offset_of!(EduRegisterBlock, STATUS),
            Self::IrqStatus => offset_of!(EduRegisterBlock, IRQ_STATUS),
            Self::IrqRaise => offset_of!(EduRegisterBlock, IRQ_RAISE),
            Self::IrqAck => offset_of!(EduRegisterBlock, IRQ_ACK),
        }) as u32
    }
}

/// A 64-bit DMA register of [`EduRegisterBlock`] (offset 0x80 and up: 8-byte accesses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaReg {
    /// `DMA_SRC`.
    Src,
    /// `DMA_DST`.
    Dst,
    /// `DMA_COUNT`.
    Count,
    /// `DMA_CMD`.
    Cmd,
}

impl DmaReg {
    /// The register's offset in BAR0, taken from [`EduRegisterBlock`].
    pub const fn offset(self) -> u32 {
        (match self {
            Self::Src => offset_of!(EduRegisterBlock, DMA_SRC),
            Self::Dst => offset_of!(EduRegisterBlock, DMA_DST),
            Self::Count => offset_of!(EduRegisterBlock, DMA_COUNT),
            Self::Cmd => offset_of!(EduRegisterBlock, DMA_CMD),
        }) as u32
    }
}

/// Access to edu's registers: BAR0 on the target, a model in host tests. Reading a write-only
/// register returns 0; writing a read-only one does nothing.
pub trait EduRegs: Send + Sync {
    /// 32-bit read.
    fn read32(&self, reg: Reg) -> u32;
    /// 32-bit write.
    fn write32(&self, reg: Reg, value: u32);
    /// 64-bit read of a DMA register.
    fn read_dma(&self, reg: DmaReg) -> u64;
    /// 64-bit write of a DMA register.
    fn write_dma(&self, reg: DmaReg, value: u64);
}

impl EduRegs for MmioBlock<EduRegisterBlock> {
    fn read32(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Id => self.ID.get(),
            Reg::Liveness => self.LIVENESS.get(),
            Reg::Factorial => self.FACTORIAL.get(),
            Reg::Status => self.STATUS.get(),
            Reg::IrqStatus => self.IRQ_STATUS.get(),
            Reg::IrqRaise | Reg::IrqAck => 0,
        }
    }

    fn write32(&self, reg: Reg, value: u32) {
        match reg {
            Reg::Liveness => self.LIVENESS.set(value),
            Reg::Factorial => self.FACTORIAL.set(value),
            Reg::Status => self.STATUS.set(value),
            Reg::IrqRaise => self.IRQ_RAISE.set(value),
            Reg::IrqAck => self.IRQ_ACK.set(value),
            Reg::Id | Reg::IrqStatus => {}
        }
    }

    fn read_dma(&self, reg: DmaReg) -> u64 {
        match reg {
            DmaReg::Src => self.DMA_SRC.get(),
            DmaReg::Dst => self.DMA_DST.get(),
            DmaReg::Count => self.DMA_COUNT.get(),
            DmaReg::Cmd => self.DMA_CMD.get(),
        }
    }

    fn write_dma(&self, reg: DmaReg, value: u64) {
        match reg {
            DmaReg::Src => self.DMA_SRC.set(value),
            DmaReg::Dst => self.DMA_DST.set(value),
            DmaReg::Count => self.DMA_COUNT.set(value),
            DmaReg::Cmd => self.DMA_CMD.set(value),
        }
    }
}

/// What the driver needs from the kernel besides registers: time, sleeping, barriers.
pub trait EduEnv: Send + Sync {
    /// Monotonic time in nanoseconds (guest virtual time on QEMU).
    fn now_ns(&self) -> u64;
    /// Sleep (WFI) until `done()` holds or `timeout_ns` passes; returns whether `done()` held.
    /// `done` is evaluated after every wake-up.
    fn wait_until(&self, timeout_ns: u64, done: &mut dyn FnMut() -> bool) -> bool;
    /// A pause inside a busy-wait.
    fn relax(&self);
    /// Order all earlier memory accesses before later device accesses and vice versa (DSB SY):
    /// buffer writes before the command that starts a DMA, completion before buffer reads.
    fn dma_barrier(&self);
    /// Whether `intid` is pending at the interrupt controller, if that can be known (used only
    /// to explain a timeout).
    fn irq_pending(&self, intid: u32) -> Option<bool>;
}

// ------------------------------------------------------------------------------------------------
// Public Definitions: configuration, transfers, errors
// ------------------------------------------------------------------------------------------------

/// How the driver learns that a DMA transfer finished (boot argument `edu.completion=irq|poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Sleep in WFI until the device's INTx (status bit 0x100) is handled.
    Irq,
    /// Look at `cmd & RUN` between short WFI sleeps.
    Poll,
}

/// Parses the value of `edu.completion` (`irq` or `poll`).
impl core::str::FromStr for Completion {
    type Err = UnknownCompletion;

    fn from_str(value: &str) -> Result<Self, UnknownCompletion> {
        match value {
            "irq" => Ok(Self::Irq),
            "poll" => Ok(Self::Poll),
            _ => Err(UnknownCompletion),
        }
    }
}

/// A completion mode other than `irq` or `poll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownCompletion;

impl fmt::Display for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Irq => "irq",
            Self::Poll => "poll",
        })
    }
}

/// Per-instance settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EduConfig {
    /// Completion mode.
    pub completion: Completion,
    /// Longest wait for one transfer (or factorial), in guest nanoseconds. A DMA takes 100 ms.
    pub timeout_ns: u64,
    /// Sleep between looks at the device in [`Completion::Poll`] mode.
    pub poll_interval_ns: u64,
    /// The `dma_mask` QEMU was given for the device: edu ANDs bus addresses with it *before*
    /// the SMMU, so an IOVA outside it would be silently truncated. The project's machine sets
    /// all ones; QEMU's default is `(1 << 28) - 1`.
    pub dma_mask: u64,
}

impl EduConfig {
    /// The default settings with this completion mode.
    pub fn with_completion(completion: Completion) -> Self {
        Self {
            completion,
            ..Self::default()
        }
    }
}

impl Default for EduConfig {
    fn default() -> Self {
        Self {
            completion: Completion::Irq,
            timeout_ns: 1_000_000_000,
            poll_interval_ns: 1_000_000,
            dma_mask: u64::MAX,
        }
    }
}

/// Which way a transfer copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Memory → device buffer (command direction 0): the device *reads* memory at the IOVA.
    ToDevice,
    /// Device buffer → memory (command direction 1): the device *writes* memory at the IOVA.
    FromDevice,
}

/// One DMA transfer, in IOVA terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Direction.
    pub direction: Direction,
    /// The memory side's IOVA.
    pub iova: u64,
    /// The device side: offset into the 4 KiB buffer.
    pub buffer_offset: u32,
    /// Bytes.
    pub len: u32,
}

/// The register values that run a [`Transfer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaProgram {
    /// DMA source.
    pub src: u64,
    /// DMA destination.
    pub dst: u64,
    /// DMA count.
    pub count: u64,
    /// DMA command (RUN set).
    pub cmd: u64,
}

/// Why a transfer was refused before reaching the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidTransfer {
    /// Zero bytes, or more than [`MAX_TRANSFER`].
    Length,
    /// `buffer_offset + len` reaches the end of the 4 KiB buffer.
    BufferRange,
    /// The IOVA range wraps or leaves the device's `dma_mask`.
    IovaRange {
        /// The mask.
        dma_mask: u64,
    },
}

impl fmt::Display for InvalidTransfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length => write!(
                f,
                "the length must be 1..={MAX_TRANSFER} bytes (QEMU 7.2's edu aborts the emulator on \
                 0 bytes and on a transfer ending at the end of its 4 KiB buffer)"
            ),
            Self::BufferRange => write!(
                f,
                "buffer offset + length must stay below {BUFFER_SIZE} (QEMU 7.2's edu aborts the \
                 emulator otherwise)"
            ),
            Self::IovaRange { dma_mask } => write!(
                f,
                "the IOVA range wraps or exceeds the device's dma_mask {dma_mask:#x} (edu would \
                 truncate the address before the SMMU)"
            ),
        }
    }
}

impl Transfer {
    /// Check the transfer against QEMU 7.2's limits and the device's `dma_mask`.
    pub fn validate(&self, dma_mask: u64) -> Result<(), InvalidTransfer> {
        if self.len == 0 || self.len > MAX_TRANSFER {
            return Err(InvalidTransfer::Length);
        }
        if self
            .buffer_offset
            .checked_add(self.len)
            .is_none_or(|end| end >= BUFFER_SIZE)
        {
            return Err(InvalidTransfer::BufferRange);
        }
        let last = self.iova.checked_add(u64::from(self.len) - 1);
        if last.is_none_or(|last| last & !dma_mask != 0) {
            return Err(InvalidTransfer::IovaRange { dma_mask });
        }
        Ok(())
    }

    /// The register values that run this transfer; `irq` asks for interrupt 0x100 at the end.
    pub fn program(&self, irq: bool) -> DmaProgram {
        let buffer = BUFFER_ADDR + u64::from(self.buffer_offset);
        let (src, dst, direction) = match self.direction {
            Direction::ToDevice => (self.iova, buffer, DMA_CMD::DIRECTION::ToDevice),
            Direction::FromDevice => (buffer, self.iova, DMA_CMD::DIRECTION::ToMemory),
        };
        let irq = if irq {
            DMA_CMD::IRQ::SET
        } else {
            DMA_CMD::IRQ::CLEAR
        };
        DmaProgram {
            src,
            dst,
            count: u64::from(self.len),
            cmd: (DMA_CMD::RUN::SET + direction + irq).value,
        }
    }
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            Direction::ToDevice => write!(
                f,
                "read_from (memory -> device) of {} bytes from IOVA {:#x} to buffer offset {:#x}",
                self.len, self.iova, self.buffer_offset
            ),
            Direction::FromDevice => write!(
                f,
                "write_to (device -> memory) of {} bytes from buffer offset {:#x} to IOVA {:#x}",
                self.len, self.buffer_offset, self.iova
            ),
        }
    }
}

/// What was observed when a wait timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutDiagnosis {
    /// The device still has RUN (or COMPUTING) set: it has not finished.
    StillRunning,
    /// The device finished and raised its interrupt, but no handler recorded it: the INTx is not
    /// attached, misrouted, or IRQs are masked on the waiting CPU. The driver acknowledged it.
    InterruptNotHandled {
        /// The device's interrupt status.
        irq_status: u32,
        /// The INTID it should have arrived on.
        intid: Option<u32>,
        /// Whether the GIC showed it pending.
        gic_pending: Option<bool>,
    },
    /// The device finished without raising the expected interrupt bit.
    NoInterruptRaised {
        /// The device's interrupt status.
        irq_status: u32,
    },
}

impl fmt::Display for TimeoutDiagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::StillRunning => f.write_str("the device is still running"),
            Self::InterruptNotHandled {
                irq_status,
                intid,
                gic_pending,
            } => {
                write!(
                    f,
                    "the device finished and raised interrupt status {irq_status:#x}, but no \
                     handler saw it"
                )?;
                if let Some(intid) = intid {
                    write!(f, " (INTID {intid}")?;
                    match gic_pending {
                        Some(p) => {
                            write!(f, ", pending at the GIC: {})", if p { "yes" } else { "no" })?
                        }
                        None => f.write_str(")")?,
                    }
                }
                f.write_str(": INTx not attached or misrouted, or IRQs masked on this CPU")
            }
            Self::NoInterruptRaised { irq_status } => write!(
                f,
                "the device finished but did not raise the completion interrupt (status {irq_status:#x})"
            ),
        }
    }
}

/// A DMA transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// Refused before reaching the device.
    Invalid {
        /// Device.
        bdf: Bdf,
        /// Transfer.
        transfer: Transfer,
        /// Why.
        reason: InvalidTransfer,
    },
    /// Bus Master Enable is clear: the device would move nothing (see [`Edu::enable_dma`]).
    BusMasterDisabled {
        /// Device.
        bdf: Bdf,
        /// Transfer.
        transfer: Transfer,
    },
    /// [`Edu::transfer_without_bus_master`] was called with Bus Master Enable set.
    BusMasterEnabled {
        /// Device.
        bdf: Bdf,
        /// Transfer.
        transfer: Transfer,
    },
    /// An earlier transfer (one that timed out) is still running; edu cannot cancel it.
    Busy {
        /// Device.
        bdf: Bdf,
        /// The transfer that was not started.
        transfer: Transfer,
    },
    /// The transfer did not complete in time.
    Timeout {
        /// Device.
        bdf: Bdf,
        /// Transfer.
        transfer: Transfer,
        /// How long the driver waited (guest time).
        waited_ns: u64,
        /// What it found afterwards.
        diagnosis: TimeoutDiagnosis,
        /// Faults the fault source reported for it meanwhile, if any.
        fault: Option<DmaFault>,
    },
    /// The transfer completed at the device but the IOMMU reported faults for it: a read left
    /// zeros in the buffer, a write was (partly) dropped.
    Fault {
        /// Device.
        bdf: Bdf,
        /// Transfer.
        transfer: Transfer,
        /// The folded fault events.
        fault: DmaFault,
    },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid {
                bdf,
                transfer,
                reason,
            } => write!(f, "edu {bdf}: DMA {transfer} refused: {reason}"),
            Self::BusMasterDisabled { bdf, transfer } => write!(
                f,
                "edu {bdf}: DMA {transfer} refused: bus mastering is disabled (enable_dma() not \
                 called), the device would move nothing"
            ),
            Self::BusMasterEnabled { bdf, transfer } => write!(
                f,
                "edu {bdf}: DMA {transfer} refused: asked to run without bus mastering but it is \
                 enabled"
            ),
            Self::Busy { bdf, transfer } => write!(
                f,
                "edu {bdf}: DMA {transfer} not started: an earlier transfer is still running"
            ),
            Self::Timeout {
                bdf,
                transfer,
                waited_ns,
                diagnosis,
                fault,
            } => {
                write!(
                    f,
                    "edu {bdf}: DMA {transfer} timed out after {} ms: {diagnosis}",
                    waited_ns / 1_000_000
                )?;
                if let Some(fault) = fault {
                    write!(f, "; IOMMU: {fault}")?;
                }
                Ok(())
            }
            Self::Fault {
                bdf,
                transfer,
                fault,
            } => write!(f, "edu {bdf}: DMA {transfer} faulted in the IOMMU: {fault}"),
        }
    }
}

/// Probing or a non-DMA operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The function is not an edu.
    NotEdu {
        /// Function.
        bdf: Bdf,
        /// Its vendor ID.
        vendor: u16,
        /// Its device ID.
        device: u16,
    },
    /// BAR0 is missing, not a memory BAR, smaller than 1 MiB, or was not assigned.
    Bar0 {
        /// Device.
        bdf: Bdf,
    },
    /// BAR0 could not be mapped into the kernel's address space.
    MapBar0 {
        /// Device.
        bdf: Bdf,
        /// What the kernel map said.
        reason: alloc::string::String,
    },
    /// Memory decoding is off (enumeration could not place every BAR).
    MemoryDecodingOff {
        /// Device.
        bdf: Bdf,
    },
    /// The identification register does not read 0xRRrr00ED.
    BadId {
        /// Device.
        bdf: Bdf,
        /// What it read.
        id: u32,
    },
    /// The liveness register did not return the bitwise NOT of what was written.
    Liveness {
        /// Device.
        bdf: Bdf,
        /// Written.
        wrote: u32,
        /// Read back.
        read: u32,
    },
    /// Interrupt completion was asked for but the function has no INTx route.
    NoIntx {
        /// Device.
        bdf: Bdf,
    },
    /// The INTx handler could not be attached.
    Irq {
        /// Device.
        bdf: Bdf,
        /// Why.
        error: intx::IntxError,
    },
    /// The settings are unusable (a zero timeout or poll interval).
    BadSettings {
        /// Device.
        bdf: Bdf,
        /// What is wrong.
        what: &'static str,
    },
    /// A DMA or factorial is still running.
    Busy {
        /// Device.
        bdf: Bdf,
    },
    /// The factorial of `n` did not complete in time.
    FactorialTimeout {
        /// Device.
        bdf: Bdf,
        /// The argument.
        n: u32,
        /// What was seen.
        diagnosis: TimeoutDiagnosis,
    },
    /// A raised interrupt was not handled in time.
    InterruptTimeout {
        /// Device.
        bdf: Bdf,
        /// The bits raised.
        bits: u32,
        /// What was seen.
        diagnosis: TimeoutDiagnosis,
    },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEdu {
                bdf,
                vendor,
                device,
            } => write!(
                f,
                "PCI {bdf} is {vendor:04x}:{device:04x}, not edu {VENDOR_ID:04x}:{DEVICE_ID:04x}"
            ),
            Self::Bar0 { bdf } => write!(
                f,
                "edu {bdf}: BAR0 is missing, not a 1 MiB memory BAR, or unassigned"
            ),
            Self::MapBar0 { bdf, reason } => {
                write!(f, "edu {bdf}: BAR0 could not be mapped: {reason}")
            }
            Self::MemoryDecodingOff { bdf } => {
                write!(f, "edu {bdf}: memory decoding is off (see the PCI errors)")
            }
            Self::BadId { bdf, id } => write!(
                f,
                "edu {bdf}: identification register reads {id:#010x}, expected 0xRRrr00ed"
            ),
            Self::Liveness { bdf, wrote, read } => write!(
                f,
                "edu {bdf}: liveness check failed: wrote {wrote:#010x}, read {read:#010x}, \
                 expected {:#010x}",
                !wrote
            ),
            Self::NoIntx { bdf } => write!(
                f,
                "edu {bdf}: interrupt completion requested but the function has no INTx route"
            ),
            Self::Irq { bdf, error } => write!(f, "edu {bdf}: {error}"),
            Self::BadSettings { bdf, what } => write!(f, "edu {bdf}: bad settings: {what}"),
            Self::Busy { bdf } => write!(f, "edu {bdf}: a DMA or factorial is still running"),
            Self::FactorialTimeout { bdf, n, diagnosis } => {
                write!(f, "edu {bdf}: factorial of {n} timed out: {diagnosis}")
            }
            Self::InterruptTimeout {
                bdf,
                bits,
                diagnosis,
            } => write!(
                f,
                "edu {bdf}: raised interrupt {bits:#x} was not handled in time: {diagnosis}"
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Public Code: the driver
// ------------------------------------------------------------------------------------------------

/// One edu function.
pub struct Edu<R: EduRegs> {
    bdf: Bdf,
    upstream: Vec<Bdf>,
    stream_id: Option<u32>,
    intx: Option<(IntxPin, Irq)>,
    bar0: u64,
    version: (u8, u8),
    regs: R,
    config: &'static dyn ConfigSpace,
    env: &'static dyn EduEnv,
    settings: EduConfig,
    /// Interrupt status bits the handler acknowledged and nobody has consumed yet.
    events: AtomicU32,
    /// One DMA engine: transfers (and the BME check before each) are serialised.
    engine: Mutex<()>,
    fault_source: RwLock<Option<&'static dyn DmaFaultSource>>,
    intx_handle: Mutex<Option<intx::IntxHandle>>,
}

/// The driver on real BAR0 registers.
pub type EduDevice = Edu<MmioBlock<EduRegisterBlock>>;

impl<R: EduRegs> Edu<R> {
    /// Take over edu function `dev` (as enumerated: BAR0 placed, memory decoding on) through
    /// `regs`: check identification and liveness, clear stale interrupts and the factorial
    /// interrupt enable. Bus mastering stays as enumeration left it: off.
    ///
    /// In [`Completion::Irq`] mode the caller also attaches the interrupt
    /// ([`attach_irq`](Self::attach_irq)); `probe` does both (on the target).
    pub fn new(
        dev: &PciDevice,
        regs: R,
        config: &'static dyn ConfigSpace,
        env: &'static dyn EduEnv,
        settings: EduConfig,
    ) -> Result<Self, EduError> {
        let bdf = dev.bdf;
        if !dev.is(VENDOR_ID, DEVICE_ID) {
            return Err(EduError::NotEdu {
                bdf,
                vendor: dev.vendor,
                device: dev.device,
            });
        }
        let bar0 = dev
            .bar(0)
            .filter(|b| b.kind != pci::BarKind::Io && b.size >= BAR0_SIZE)
            .and_then(|b| b.cpu_addr())
            .ok_or(EduError::Bar0 { bdf })?;
        if settings.timeout_ns == 0 || settings.poll_interval_ns == 0 {
            return Err(EduError::BadSettings {
                bdf,
                what: "timeout and poll interval must be non-zero",
            });
        }
        if settings.completion == Completion::Irq && dev.intx.is_none() {
            return Err(EduError::NoIntx { bdf });
        }
        let command = config.read16(bdf, config::reg::COMMAND);
        if command & config::command::MEMORY == 0 {
            return Err(EduError::MemoryDecodingOff { bdf });
        }
        if settings.completion == Completion::Irq && command & config::command::INTX_DISABLE != 0 {
            config.write16(
                bdf,
                config::reg::COMMAND,
                command & !config::command::INTX_DISABLE,
            );
        }

        let id = regs.read32(Reg::Id);
        if id & 0xFFFF != ID_MAGIC {
            return Err(EduError::BadId { bdf, id });
        }
        for wrote in [0x5A5A_0FF0, 0x0123_4567] {
            regs.write32(Reg::Liveness, wrote);
            let read = regs.read32(Reg::Liveness);
            if read != !wrote {
                return Err(EduError::Liveness { bdf, wrote, read });
            }
        }
        if regs.read_dma(DmaReg::Cmd) & DMA_CMD::RUN::SET.value != 0 {
            return Err(EduError::Busy { bdf });
        }
        regs.write32(Reg::Status, 0);
        let stale = regs.read32(Reg::IrqStatus);
        if stale != 0 {
            regs.write32(Reg::IrqAck, stale);
        }
        Ok(Self {
            bdf,
            upstream: dev.upstream.clone(),
            stream_id: dev.stream_id,
            intx: dev.intx,
            bar0,
            version: (ID::MAJOR.read(id) as u8, ID::MINOR.read(id) as u8),
            regs,
            config,
            env,
            settings,
            events: AtomicU32::new(0),
            engine: Mutex::new(()),
            fault_source: RwLock::new(None),
            intx_handle: Mutex::new(None),
        })
    }

    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The StreamID its DMA carries, from `iommu-map` (None: not behind an IOMMU).
    pub fn stream_id(&self) -> Option<u32> {
        self.stream_id
    }

    /// Its INTx pin and GIC interrupt.
    pub fn intx(&self) -> Option<(IntxPin, Irq)> {
        self.intx
    }

    /// (major, minor) from the identification register.
    pub fn version(&self) -> (u8, u8) {
        self.version
    }

    /// The CPU physical address of BAR0.
    pub fn bar0_phys(&self) -> u64 {
        self.bar0
    }

    /// The settings.
    pub fn settings(&self) -> EduConfig {
        self.settings
    }

    /// Whether the INTx handler is attached.
    pub fn irq_attached(&self) -> bool {
        self.intx_handle.lock().is_some()
    }

    /// The registers (for tests that poke the device directly).
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Install (or remove) the source of IOMMU faults consulted around every transfer.
    pub fn set_fault_source(&self, source: Option<&'static dyn DmaFaultSource>) {
        *self.fault_source.write() = source;
    }

    /// The INTx handler: read the interrupt status, acknowledge exactly those bits (so the
    /// level-sensitive line drops), and record them for the waiters. Returns whether this device
    /// was asserting the line. Runs in IRQ context; attached by [`attach_irq`](Self::attach_irq).
    pub fn handle_irq(&self) -> bool {
        let status = self.regs.read32(Reg::IrqStatus);
        if status == 0 {
            return false;
        }
        self.regs.write32(Reg::IrqAck, status);
        self.events.fetch_or(status, Ordering::AcqRel);
        true
    }

    /// Set Bus Master Enable on the device and the bridges above it: from now on it can DMA.
    ///
    /// # Safety
    /// The caller guarantees that the SMMU is enabled and holds a valid stream table entry for
    /// [`stream_id`](Self::stream_id) — translating through page tables the caller controls,
    /// or aborting — and keeps it valid until [`disable_dma`](Self::disable_dma) returns. QEMU
    /// 7.2's SMMUv3 has no GBPA: with the SMMU disabled, or no valid STE, the device's DMA is
    /// not confined and may read or write any RAM. (Without an IOMMU in the path at all — no
    /// `iommu-map` — every IOVA passed to this driver must be memory the device may access.)
    pub unsafe fn enable_dma(&self) {
        let _engine = self.engine.lock();
        // SAFETY: forwarded from the caller.
        unsafe { pci::enable_bus_master(self.config, self.bdf, &self.upstream) };
    }

    /// Clear Bus Master Enable: the device issues no further memory request (fail closed). A
    /// transfer already started is not cancelled (edu cannot), but its accesses, made when the
    /// 100 ms timer fires, are then dropped.
    pub fn disable_dma(&self) {
        let _engine = self.engine.lock();
        pci::disable_bus_master(self.config, self.bdf);
    }

    /// Whether Bus Master Enable is set.
    pub fn dma_enabled(&self) -> bool {
        pci::bus_master_enabled(self.config, self.bdf)
    }

    /// Device buffer ← memory: copy `len` bytes at `iova` into the buffer at `buffer_offset`
    /// (command RUN, direction 0, and IRQ in interrupt mode).
    pub fn read_from(&self, iova: u64, buffer_offset: u32, len: u32) -> Result<(), DmaError> {
        self.transfer(Transfer {
            direction: Direction::ToDevice,
            iova,
            buffer_offset,
            len,
        })
    }

    /// Memory ← device buffer: copy `len` bytes of the buffer at `buffer_offset` to `iova`
    /// (command RUN | DIRECTION, and IRQ in interrupt mode).
    pub fn write_to(&self, iova: u64, buffer_offset: u32, len: u32) -> Result<(), DmaError> {
        self.transfer(Transfer {
            direction: Direction::FromDevice,
            iova,
            buffer_offset,
            len,
        })
    }

    /// Copy `len` bytes from `src_iova` to `dst_iova` through the buffer (offset 0): a
    /// [`read_from`](Self::read_from) then a [`write_to`](Self::write_to), with the engine held
    /// across both so no other transfer can overwrite the buffer in between.
    pub fn copy(&self, src_iova: u64, dst_iova: u64, len: u32) -> Result<(), DmaError> {
        let read = Transfer {
            direction: Direction::ToDevice,
            iova: src_iova,
            buffer_offset: 0,
            len,
        };
        let write = Transfer {
            direction: Direction::FromDevice,
            iova: dst_iova,
            ..read
        };
        // Validate both before moving anything.
        self.check(&read)?;
        self.check(&write)?;
        let _engine = self.engine.lock();
        self.run(read, true)?;
        self.run(write, true)
    }

    /// Run one transfer and wait for it (bounded by the configured timeout).
    pub fn transfer(&self, transfer: Transfer) -> Result<(), DmaError> {
        self.check(&transfer)?;
        let _engine = self.engine.lock();
        self.run(transfer, true)
    }

    /// Run a transfer with Bus Master Enable deliberately clear, for the test that shows the
    /// device then moves no data (and the SMMU sees nothing). Refused if bus mastering is on.
    pub fn transfer_without_bus_master(&self, transfer: Transfer) -> Result<(), DmaError> {
        self.check(&transfer)?;
        let _engine = self.engine.lock();
        self.run(transfer, false)
    }

    fn check(&self, transfer: &Transfer) -> Result<(), DmaError> {
        transfer
            .validate(self.settings.dma_mask)
            .map_err(|reason| DmaError::Invalid {
                bdf: self.bdf,
                transfer: *transfer,
                reason,
            })
    }

    /// Start `transfer` and wait for it. The caller holds the engine lock and has validated it.
    fn run(&self, transfer: Transfer, bus_master: bool) -> Result<(), DmaError> {
        let bdf = self.bdf;
        match (bus_master, self.dma_enabled()) {
            (true, false) => return Err(DmaError::BusMasterDisabled { bdf, transfer }),
            (false, true) => return Err(DmaError::BusMasterEnabled { bdf, transfer }),
            _ => {}
        }
        if self.regs.read_dma(DmaReg::Cmd) & DMA_CMD::RUN::SET.value != 0 {
            return Err(DmaError::Busy { bdf, transfer });
        }
        let irq_mode = self.settings.completion == Completion::Irq;
        let program = transfer.program(irq_mode);
        // A completion recorded earlier (a transfer that timed out, then finished) is not ours.
        self.events.fetch_and(!irq_bits::DMA, Ordering::AcqRel);

        let watch = match (*self.fault_source.read(), self.stream_id) {
            (Some(source), Some(stream_id)) => {
                let window = DmaWindow {
                    stream_id,
                    iova: transfer.iova,
                    len: u64::from(transfer.len),
                    device_writes: transfer.direction == Direction::FromDevice,
                };
                Some((source, source.begin_transfer(&window)))
            }
            _ => None,
        };

        // The CPU's writes to the source buffer must be visible before the device is told to go.
        self.env.dma_barrier();
        self.regs.write_dma(DmaReg::Src, program.src);
        self.regs.write_dma(DmaReg::Dst, program.dst);
        self.regs.write_dma(DmaReg::Count, program.count);
        self.regs.write_dma(DmaReg::Cmd, program.cmd);
        let start = self.env.now_ns();
        let done = if irq_mode {
            self.wait_event(irq_bits::DMA)
        } else {
            self.poll(|| self.regs.read_dma(DmaReg::Cmd) & DMA_CMD::RUN::SET.value == 0)
        };
        // The device's writes must be visible before the CPU reads the destination.
        self.env.dma_barrier();
        let waited_ns = self.env.now_ns().saturating_sub(start);
        let fault = watch.and_then(|(source, watch)| source.end_transfer(watch));

        if !done {
            let running = self.regs.read_dma(DmaReg::Cmd) & DMA_CMD::RUN::SET.value != 0;
            let diagnosis = self.diagnose(running, irq_bits::DMA);
            return Err(DmaError::Timeout {
                bdf,
                transfer,
                waited_ns,
                diagnosis,
                fault,
            });
        }
        match fault {
            Some(fault) => Err(DmaError::Fault {
                bdf,
                transfer,
                fault,
            }),
            None => Ok(()),
        }
    }

    /// Sleep until the handler has recorded all of `bits`, then consume them. Only the handler's
    /// record counts (see the module docs).
    fn wait_event(&self, bits: u32) -> bool {
        let mut done = || self.events.load(Ordering::Acquire) & bits == bits;
        let ok = self.env.wait_until(self.settings.timeout_ns, &mut done);
        if ok {
            self.events.fetch_and(!bits, Ordering::AcqRel);
        }
        ok
    }

    /// Check `done` every poll interval (sleeping in between) until it holds or the timeout
    /// passes. Bounded by time and, should the clock stall, by the number of intervals.
    fn poll(&self, mut done: impl FnMut() -> bool) -> bool {
        let (timeout, interval) = (self.settings.timeout_ns, self.settings.poll_interval_ns);
        let deadline = self.env.now_ns().saturating_add(timeout);
        for _ in 0..=timeout / interval + 1 {
            if done() {
                return true;
            }
            let now = self.env.now_ns();
            if now >= deadline {
                break;
            }
            self.env
                .wait_until(interval.min(deadline - now), &mut || false);
        }
        done()
    }

    /// Busy-wait (no WFI) until `done` holds, bounded by the timeout and an iteration count.
    /// Used where the device finishes on a host thread, not a virtual-clock timer: under
    /// `-icount …,sleep=off` a WFI would make virtual time jump straight to the deadline before
    /// the host thread has run.
    fn spin(&self, mut done: impl FnMut() -> bool) -> bool {
        const MAX_SPINS: u32 = 50_000_000;
        let deadline = self.env.now_ns().saturating_add(self.settings.timeout_ns);
        for _ in 0..MAX_SPINS {
            if done() {
                return true;
            }
            if self.env.now_ns() >= deadline {
                break;
            }
            self.env.relax();
        }
        done()
    }

    /// Explain a timeout; acknowledges a raised-but-unhandled interrupt so the line drops.
    fn diagnose(&self, running: bool, expected: u32) -> TimeoutDiagnosis {
        if running {
            return TimeoutDiagnosis::StillRunning;
        }
        let irq_status = self.regs.read32(Reg::IrqStatus);
        if irq_status & expected == 0 {
            return TimeoutDiagnosis::NoInterruptRaised { irq_status };
        }
        let intid = self.intx.map(|(_, irq)| irq.intid);
        let gic_pending = intid.and_then(|i| self.env.irq_pending(i));
        self.regs.write32(Reg::IrqAck, irq_status);
        TimeoutDiagnosis::InterruptNotHandled {
            irq_status,
            intid,
            gic_pending,
        }
    }

    /// Compute `n!` on the device (in 32 bits, wrapping, as edu does), polling STATUS.COMPUTING.
    pub fn factorial(&self, n: u32) -> Result<u32, EduError> {
        self.factorial_inner(n, false)
    }

    /// Compute `n!` with STATUS bit 7 set, so the device raises interrupt 0x01 when done, and
    /// wait until the INTx handler has recorded that interrupt: exercises the whole INTx path
    /// (device → host bridge → interrupt-map → GIC → handler → acknowledge) without DMA. IRQs must
    /// be unmasked on the calling CPU and the interrupt attached.
    pub fn factorial_with_irq(&self, n: u32) -> Result<u32, EduError> {
        self.factorial_inner(n, true)
    }

    fn factorial_inner(&self, n: u32, irq: bool) -> Result<u32, EduError> {
        let bdf = self.bdf;
        let computing = || self.regs.read32(Reg::Status) & STATUS::COMPUTING::SET.value != 0;
        if computing() {
            return Err(EduError::Busy { bdf });
        }
        self.events
            .fetch_and(!irq_bits::FACTORIAL, Ordering::AcqRel);
        let status = if irq {
            STATUS::IRQ_ON_FACTORIAL::SET.value
        } else {
            0
        };
        self.regs.write32(Reg::Status, status);
        self.regs.write32(Reg::Factorial, n);
        // edu computes on a host thread: spin, do not sleep (see `spin`).
        if !self.spin(|| !computing()) {
            self.regs.write32(Reg::Status, 0);
            return Err(EduError::FactorialTimeout {
                bdf,
                n,
                diagnosis: TimeoutDiagnosis::StillRunning,
            });
        }
        let result = self.regs.read32(Reg::Factorial);
        if irq {
            let seen = self.spin(|| self.events.load(Ordering::Acquire) & irq_bits::FACTORIAL != 0);
            self.regs.write32(Reg::Status, 0);
            if !seen {
                return Err(EduError::FactorialTimeout {
                    bdf,
                    n,
                    diagnosis: self.diagnose(false, irq_bits::FACTORIAL),
                });
            }
            self.events
                .fetch_and(!irq_bits::FACTORIAL, Ordering::AcqRel);
        }
        Ok(result)
    }

    /// Raise interrupt `bits` through register 0x60 and wait (WFI) until the handler has
    /// recorded them: checks the INTx route with no DMA and no host thread involved (the line is
    /// asserted by the register write itself, so sleeping is safe under icount).
    pub fn raise_and_wait_interrupt(&self, bits: u32) -> Result<(), EduError> {
        self.events.fetch_and(!bits, Ordering::AcqRel);
        self.regs.write32(Reg::IrqRaise, bits);
        if self.wait_event(bits) {
            return Ok(());
        }
        Err(EduError::InterruptTimeout {
            bdf: self.bdf,
            bits,
            diagnosis: self.diagnose(false, bits),
        })
    }
}

impl<R: EduRegs + 'static> Edu<R> {
    /// Attach [`handle_irq`](Self::handle_irq) to the device's INTx line (shared with any other
    /// function on the same line); does nothing if already attached. Detached when the driver
    /// is dropped.
    pub fn attach_irq(self: &Arc<Self>) -> Result<(), EduError> {
        let bdf = self.bdf;
        let (_, irq) = self.intx.ok_or(EduError::NoIntx { bdf })?;
        let mut slot = self.intx_handle.lock();
        if slot.is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let handle = intx::attach(
            irq,
            Arc::new(move || weak.upgrade().is_some_and(|edu| edu.handle_irq())),
        )
        .map_err(|error| EduError::Irq { bdf, error })?;
        *slot = Some(handle);
        Ok(())
    }
}

impl<R: EduRegs> BusMaster for Edu<R> {
    fn stream_id(&self) -> Option<u32> {
        Edu::stream_id(self)
    }

    unsafe fn enable_dma(&self) {
        // SAFETY: the trait's contract is this method's.
        unsafe { Edu::enable_dma(self) }
    }

    fn disable_dma(&self) {
        Edu::disable_dma(self)
    }
}

impl<R: EduRegs> Drop for Edu<R> {
    /// Fail closed: a device nobody drives must not stay a bus master. (One driver instance per
    /// function: dropping a second instance would clear the first one's Bus Master Enable.)
    fn drop(&mut self) {
        pci::disable_bus_master(self.config, self.bdf);
    }
}

impl<R: EduRegs> fmt::Display for Edu<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "edu {} v{}.{}: BAR0 at {:#x}, ",
            self.bdf, self.version.0, self.version.1, self.bar0
        )?;
        match self.stream_id {
            Some(sid) => write!(f, "StreamID {sid:#x}, ")?,
            None => f.write_str("no StreamID, ")?,
        }
        match self.intx {
            Some((pin, irq)) => write!(f, "INT{pin:?} -> INTID {}, ", irq.intid)?,
            None => f.write_str("no INTx, ")?,
        }
        write!(f, "completion {}", self.settings.completion)
    }
}

// ------------------------------------------------------------------------------------------------
// OS Interface Code
// ------------------------------------------------------------------------------------------------

#[cfg(target_os = "none")]
mod kernel {
    use super::*;
    use crate::{
        cpu,
        drivers::{gic, timer},
        mm::kernel_map,
        time,
    };
    use spin::Once;

    /// The kernel's [`EduEnv`]: the generic timer, WFI sleeps, DSB SY, the GIC.
    pub struct KernelEnv;

    impl EduEnv for KernelEnv {
        fn now_ns(&self) -> u64 {
            time::now_ns()
        }

        fn wait_until(&self, timeout_ns: u64, done: &mut dyn FnMut() -> bool) -> bool {
            timer::wait_until(timeout_ns, done)
        }

        fn relax(&self) {
            cpu::relax();
        }

        fn dma_barrier(&self) {
            cpu::dsb_sy();
        }

        fn irq_pending(&self, intid: u32) -> Option<bool> {
            Some(gic::is_pending(intid))
        }
    }

    static KERNEL_ENV: KernelEnv = KernelEnv;

    /// Probe edu function `dev`: map BAR0 (device memory, in the kernel's linear window at the
    /// physical address enumeration assigned), construct the driver, and in interrupt mode attach
    /// its INTx.
    pub fn probe(
        dev: &PciDevice,
        config: &'static dyn ConfigSpace,
        settings: EduConfig,
    ) -> Result<Arc<EduDevice>, EduError> {
        let bar0 = dev
            .bar(0)
            .filter(|b| b.kind != pci::BarKind::Io && b.size >= BAR0_SIZE)
            .and_then(|b| b.cpu_addr())
            .ok_or(EduError::Bar0 { bdf: dev.bdf })?;
        // Already mapped by `pci::init`; mapping is idempotent and makes the driver independent
        // of that.
        let va =
            kernel_map::map_device("edu BAR0", bar0, BAR0_SIZE).map_err(|e| EduError::MapBar0 {
                bdf: dev.bdf,
                reason: alloc::format!("{e}"),
            })?;
        // SAFETY: enumeration placed BAR0 (1 MiB, which holds the register block at offsets
        // 0..0xA0) at `bar0` in the host bridge's memory window and enabled its decoding;
        // `map_device` mapped it as device memory at `va`; this driver instance is the only user
        // of the registers.
        let regs = unsafe { MmioBlock::new(va.as_u64() as usize) };
        let edu = Arc::new(Edu::new(dev, regs, config, &KERNEL_ENV, settings)?);
        if settings.completion == Completion::Irq {
            edu.attach_irq()?;
        }
        Ok(edu)
    }

    static EDUS: Once<Vec<Arc<EduDevice>>> = Once::new();

    /// Probe every edu that PCI enumeration found (call after `pci::init`), log each (or why it
    /// failed), and keep them for [`devices`]. Runs once; later calls return the first result.
    pub fn init(settings: EduConfig) -> &'static [Arc<EduDevice>] {
        EDUS.call_once(|| {
            let Some(pci) = pci::get() else {
                log::warn!("edu: PCI not initialised, no devices probed");
                return Vec::new();
            };
            let mut found = Vec::new();
            for dev in pci.enumeration.find(VENDOR_ID, DEVICE_ID) {
                match probe(dev, &pci.ecam, settings) {
                    Ok(edu) => {
                        log::info!("{edu}");
                        found.push(edu);
                    }
                    Err(e) => log::warn!("{e}"),
                }
            }
            found
        })
    }

    /// The edu devices probed by [`init`] (empty before).
    pub fn devices() -> &'static [Arc<EduDevice>] {
        EDUS.get().map_or(&[], |v| v.as_slice())
    }
}

#[cfg(target_os = "none")]
pub use kernel::{KernelEnv, devices, init, probe};

#[cfg(target_os = "none")]
mod ktests {
    use super::*;
    use crate::{cpu, kassert, kassert_eq};
    use alloc::string::String;

    fn first() -> Result<Arc<EduDevice>, String> {
        if pci::get().is_none() {
            return Err("PCI not initialised: boot must call drivers::pci::init".into());
        }
        init(EduConfig::default())
            .first()
            .cloned()
            .ok_or_else(|| "no edu probed (see the boot log)".into())
    }

    crate::ktest! {
        /// The default machine's edu at 00:01.0: version 1.0, StreamID 8, INTA on INTID 36,
        /// bus mastering off after probe.
        fn edu_probe_identifies_default_device() {
            let edu = first()?;
            kassert_eq!(edu.bdf(), Bdf::new(0, 1, 0).unwrap());
            kassert_eq!(edu.version(), (1, 0));
            kassert_eq!(edu.stream_id(), Some(0x8));
            kassert_eq!(edu.intx().map(|(_, irq)| irq.intid), Some(36));
            kassert!(!edu.dma_enabled(), "bus mastering on before any STE exists");
            Ok(())
        }
    }

    crate::ktest! {
        /// Liveness: 0x04 reads back the bitwise NOT of each value written.
        fn edu_liveness_inverts() {
            let edu = first()?;
            for v in [0u32, u32::MAX, 0xDEAD_BEEF, 0x1234_5678] {
                edu.regs().write32(Reg::Liveness, v);
                kassert_eq!(edu.regs().read32(Reg::Liveness), !v);
            }
            Ok(())
        }
    }

    crate::ktest! {
        /// Factorial by polling, then with the completion interrupt (status bit 7 -> IRQ 0x01)
        /// delivered through the interrupt-map route and acknowledged by the handler.
        fn edu_factorial_with_and_without_irq() {
            let edu = first()?;
            kassert_eq!(edu.factorial(5).map_err(|e| alloc::format!("{e}"))?, 120);
            kassert_eq!(edu.factorial(12).map_err(|e| alloc::format!("{e}"))?, 479_001_600);
            edu.attach_irq().map_err(|e| alloc::format!("{e}"))?;
            let was = cpu::irq_save();
            cpu::irq_enable();
            let result = edu.factorial_with_irq(10);
            cpu::irq_restore(was);
            kassert_eq!(result.map_err(|e| alloc::format!("{e}"))?, 3_628_800);
            kassert_eq!(edu.regs().read32(Reg::IrqStatus), 0, "interrupt not acknowledged");
            Ok(())
        }
    }

    crate::ktest! {
        /// The INTx route with IRQs masked: a raised interrupt shows pending at the GIC (INTID
        /// 36) and stops being pending once acknowledged at the device; then, unmasked, the
        /// handler sees and acknowledges it.
        fn edu_intx_reaches_the_gic_and_is_acknowledged() {
            let edu = first()?;
            let intid = edu.intx().ok_or("no INTx")?.1.intid;
            edu.attach_irq().map_err(|e| alloc::format!("{e}"))?;
            let was = cpu::irq_save();
            edu.regs().write32(Reg::IrqRaise, 0x40);
            let pending = crate::drivers::gic::is_pending(intid);
            edu.regs().write32(Reg::IrqAck, 0x40);
            let after = crate::drivers::gic::is_pending(intid);
            cpu::irq_enable();
            let handled = edu.raise_and_wait_interrupt(0x20);
            cpu::irq_restore(was);
            kassert!(pending, "INTID {intid} not pending while edu asserts INTx");
            kassert!(!after, "INTID {intid} still pending after the acknowledge");
            handled.map_err(|e| alloc::format!("{e}"))?;
            kassert_eq!(edu.regs().read32(Reg::IrqStatus), 0);
            Ok(())
        }
    }

    crate::ktest! {
        /// Every edu enumeration found (on the root bus, behind root ports or bridges) was
        /// probed, answers on its BAR, and its raised interrupt reaches its own handler through
        /// the swizzled interrupt-map route.
        fn edu_every_device_answers_and_interrupts() {
            first()?;
            let expected = pci::get().map_or(0, |p| p.enumeration.find(VENDOR_ID, DEVICE_ID).count());
            kassert_eq!(devices().len(), expected, "not every edu probed (see the boot log)");
            let was = cpu::irq_save();
            cpu::irq_enable();
            let mut result = Ok(());
            for edu in devices() {
                if let Err(e) = edu.attach_irq() {
                    result = Err(alloc::format!("{e}"));
                    break;
                }
                edu.regs().write32(Reg::Liveness, edu.bdf().rid().into());
                if edu.regs().read32(Reg::Liveness) != !u32::from(edu.bdf().rid()) {
                    result = Err(alloc::format!("{}: liveness failed", edu.bdf()));
                    break;
                }
                if let Err(e) = edu.raise_and_wait_interrupt(0x10) {
                    result = Err(alloc::format!("{e}"));
                    break;
                }
            }
            cpu::irq_restore(was);
            result.map_err(Into::into)
        }
    }

    crate::ktest! {
        /// Transfers that would abort QEMU 7.2 are refused before reaching the device.
        fn edu_refuses_transfers_that_crash_qemu() {
            let edu = first()?;
            for (offset, len) in [(0, 0), (0, 4096), (1, 4095), (4095, 1)] {
                let r = edu.read_from(0x1000, offset, len);
                kassert!(matches!(r, Err(DmaError::Invalid { .. })), "{offset}+{len}: {r:?}");
            }
            // Valid, but bus mastering is off: refused, nothing started.
            let r = edu.read_from(0x1000, 0, 4095);
            kassert!(matches!(r, Err(DmaError::BusMasterDisabled { .. })), "{r:?}");
            kassert_eq!(edu.regs().read_dma(DmaReg::Cmd) & 1, 0);
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Testing
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests;
