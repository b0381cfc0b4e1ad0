//! [`Smmu`]: the driver object the kernel uses. It ties the register map, stream table, CDs,
//! command queue, invalidation planner and event queue together behind `&self` methods that are
//! safe to call from several CPUs (interior spin locks), so the kernel can keep it in a static.
//!
//! # Bring-up ([`Smmu::init`], IHI 0070 G.b §3.11, §6.3.9–§6.3.14)
//!
//! 1. `GBPA.ABORT = 1` (with the `Update` handshake) where the register exists, so that a
//!    disabled SMMU aborts instead of bypassing. QEMU 7.2 has no GBPA (reads 0): there a
//!    disabled SMMU is *bypass*, so `SMMUEN` must be on before any device is allowed to DMA
//!    ([`Smmu::gbpa_abort_effective`] tells which case applies).
//! 2. `CR0 = 0`, waiting for `CR0ACK` (bounded).
//! 3. `CR1`: inner-shareable write-back for table walks and queues (matches how the CPU writes
//!    them; the SMMU is required to be coherent). `CR2 = PTM | RECINVSID`: private TLB
//!    maintenance (broadcast TLBIs are never relied on, see [`crate::features`]) and
//!    `C_BAD_STREAMID` records for out-of-range StreamIDs.
//! 4. Stream table (all abort), `STRTAB_BASE`/`STRTAB_BASE_CFG`.
//! 5. Command queue and event queue base/`PROD`/`CONS`.
//! 6. `IRQ_CTRL` (wired interrupts; MSI addresses are zeroed, i.e. MSIs disabled).
//! 7. `CMDQEN`; then `CMD_CFGI_ALL` + `CMD_TLBI_NSNH_ALL` + `CMD_SYNC` (the SMMU's caches are
//!    in an unknown state after reset).
//! 8. `EVENTQEN`; 9. `SMMUEN` last.
//!
//! Every register handshake is bounded by the configured timeout. If bring-up fails after
//! memory was handed to the SMMU, the memory is deliberately leaked (the SMMU might still read
//! it) and `CR0` is written to 0.
//!
//! # Configuration changes
//!
//! [`Smmu::install_stage1`], [`Smmu::set_abort`] and [`Smmu::set_bypass`] update STEs and CDs
//! with [`crate::writer`] (each step followed by `CMD_CFGI_STE`/`CMD_CFGI_CD` + `CMD_SYNC`),
//! allocate level-2 stream tables on demand (followed by a non-leaf `CMD_CFGI_STE`), and issue
//! `CMD_TLBI_NH_ASID` wherever translations of a replaced context could survive: a CD's
//! `TTB0`/`ASID` change or a context removal needs both the `CFGI` (configuration cache) and
//! the TLBI (TLB), after the `CFGI`'s sync.
//!
//! # Locking
//!
//! Stream/CD updates are serialised by one lock; the command queue and event queue have their
//! own. Lock order: streams → command queue. The event callback of
//! [`Smmu::drain_events`] runs under the event-queue lock and must not call `drain_events`
//! again. None of the locks disable interrupts: the kernel must not call into the driver from
//! an interrupt handler that can interrupt a CPU already inside the same method, or must mask
//! interrupts around the calls (every lock acquisition is still bounded by the timeout, so
//! misuse shows up as an error, not a hang).

use alloc::collections::BTreeMap;
use core::fmt;

use bitflags::bitflags;
use spin::{Mutex, MutexGuard};

use crate::{
    cd::{self, CdError, CdParams},
    cmdq::{CmdqError, CommandQueue},
    command::Command,
    event::{DrainReport, Event, EventQueue, EventqError},
    features::{Features, Granule, MissingFeature},
    hal::{DmaError, DmaRegion, SmmuHal, poll_until},
    planner::{FlushHint, FlushKind, FlushPlan, InvalPolicy, PlanError, PlannerConfig},
    queue::QueueGeometry,
    regs::{self, CR0, CR1, CR2, GBPA, IRQ_CTRL, Reg32, Registers, offset},
    stats::{CounterSnapshot, Counters},
    ste::{self, SteConfig, SteState},
    strtab::{StreamTable, StrtabError, StrtabFormat, StrtabLayout},
    writer::{self, EntryStorage, EntryWords},
};

/// Bring-up choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuConfig {
    /// log2 of the command queue entries (clamped to `IDR1.CMDQS`; at least 1).
    pub cmdq_log2_entries: u8,
    /// log2 of the event queue entries (clamped to `IDR1.EVENTQS`). QEMU records one event per
    /// 4-byte chunk of a failed DMA, so a generous queue avoids overflows.
    pub eventq_log2_entries: u8,
    /// Stream table format; `None` chooses from `IDR0.ST_LEVEL` and the StreamID bits.
    pub strtab_format: Option<StrtabFormat>,
    /// StreamID bits to cover; `None` covers `IDR1.SIDSIZE`.
    pub sid_bits: Option<u8>,
    /// Enable the global-error interrupt (`IRQ_CTRL.GERROR_IRQEN`).
    pub gerror_irq: bool,
    /// Enable the event-queue interrupt (`IRQ_CTRL.EVENTQ_IRQEN`).
    pub eventq_irq: bool,
    /// Bound on every wait (register handshakes, locks, queue space, `CMD_SYNC`).
    pub timeout_ns: u64,
    /// Request `GBPA.ABORT` so a disabled SMMU aborts DMA (where GBPA exists).
    pub abort_when_disabled: bool,
    /// Granule of the shared/stage-1 tables, for the invalidation planner.
    pub granule: Granule,
    /// Input VA bits of the address spaces, for the invalidation planner.
    pub va_bits: u8,
    /// Planner threshold without RIL (`None`: Linux's 2^(page shift − 3) pages).
    pub asid_threshold_pages: Option<u64>,
    /// The address spaces may hold global entries (whole-space flushes use `TLBI_NH_ALL`).
    pub global_entries: bool,
    /// The invalidation policy of the planner.
    pub inval_policy: InvalPolicy,
    /// Use range invalidation when the SMMU has it (`IDR3.RIL`); `false` plans as if it had
    /// not (single-address commands are valid on every SMMU), to compare the two.
    pub use_ril: bool,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            cmdq_log2_entries: 10,
            eventq_log2_entries: 10,
            strtab_format: None,
            sid_bits: None,
            gerror_irq: true,
            eventq_irq: true,
            timeout_ns: 1_000_000_000,
            abort_when_disabled: true,
            granule: Granule::Size4K,
            va_bits: 48,
            asid_threshold_pages: None,
            global_entries: false,
            inval_policy: InvalPolicy::Precise,
            use_ril: true,
        }
    }
}

/// The bit of one `GERROR` field: the register layout ([`regs::GERROR`]) is the one
/// description of these bits.
const fn gerror_bit(field: tock_registers::fields::Field<u32, regs::GERROR::Register>) -> u32 {
    field.mask << field.shift
}

bitflags! {
    /// A set of `GERROR` bits (§6.3.19), as [`Smmu::handle_gerror`] reports them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GlobalErrors: u32 {
        /// [`GERROR::CMDQ_ERR`](regs::GERROR::CMDQ_ERR).
        const CMDQ_ERR = gerror_bit(regs::GERROR::CMDQ_ERR);
        /// [`GERROR::EVENTQ_ABT_ERR`](regs::GERROR::EVENTQ_ABT_ERR).
        const EVENTQ_ABT_ERR = gerror_bit(regs::GERROR::EVENTQ_ABT_ERR);
        /// [`GERROR::PRIQ_ABT_ERR`](regs::GERROR::PRIQ_ABT_ERR).
        const PRIQ_ABT_ERR = gerror_bit(regs::GERROR::PRIQ_ABT_ERR);
        /// [`GERROR::MSI_CMDQ_ABT_ERR`](regs::GERROR::MSI_CMDQ_ABT_ERR).
        const MSI_CMDQ_ABT_ERR = gerror_bit(regs::GERROR::MSI_CMDQ_ABT_ERR);
        /// [`GERROR::MSI_EVENTQ_ABT_ERR`](regs::GERROR::MSI_EVENTQ_ABT_ERR).
        const MSI_EVENTQ_ABT_ERR = gerror_bit(regs::GERROR::MSI_EVENTQ_ABT_ERR);
        /// [`GERROR::MSI_PRIQ_ABT_ERR`](regs::GERROR::MSI_PRIQ_ABT_ERR).
        const MSI_PRIQ_ABT_ERR = gerror_bit(regs::GERROR::MSI_PRIQ_ABT_ERR);
        /// [`GERROR::MSI_GERROR_ABT_ERR`](regs::GERROR::MSI_GERROR_ABT_ERR).
        const MSI_GERROR_ABT_ERR = gerror_bit(regs::GERROR::MSI_GERROR_ABT_ERR);
        /// [`GERROR::SFM_ERR`](regs::GERROR::SFM_ERR).
        const SFM_ERR = gerror_bit(regs::GERROR::SFM_ERR);
        /// [`GERROR::CMDQP_ERR`](regs::GERROR::CMDQP_ERR).
        const CMDQP_ERR = gerror_bit(regs::GERROR::CMDQP_ERR);
        /// [`GERROR::DPT_ERR`](regs::GERROR::DPT_ERR).
        const DPT_ERR = gerror_bit(regs::GERROR::DPT_ERR);
    }
}

/// What [`Smmu::handle_gerror`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GerrorReport {
    /// Errors active on entry.
    pub active: GlobalErrors,
    /// Errors acknowledged.
    pub acknowledged: GlobalErrors,
    /// `EVENTQ_ABT_ERR` is active: call [`Smmu::drain_events`], which acknowledges it after
    /// draining.
    pub needs_event_drain: bool,
}

/// A bring-up invariant that does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantViolation {
    /// `CR0ACK` differs from `CR0`.
    Cr0AckMismatch {
        /// `CR0`.
        cr0: u32,
        /// `CR0ACK`.
        ack: u32,
    },
    /// `SMMUEN`, `EVENTQEN` or `CMDQEN` is clear.
    NotEnabled {
        /// `CR0`.
        cr0: u32,
    },
    /// A global error is active (`GERROR != GERRORN`).
    GlobalErrorActive {
        /// `GERROR ^ GERRORN`.
        active: u32,
    },
    /// The command queue is not idle (`CONS != PROD`).
    CommandQueueBusy {
        /// `CMDQ_PROD`.
        prod: u32,
        /// `CMDQ_CONS`.
        cons: u32,
    },
    /// `STRTAB_BASE` reads 0.
    NoStreamTable,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Cr0AckMismatch { cr0, ack } => {
                write!(f, "CR0ACK {ack:#x} differs from CR0 {cr0:#x}")
            }
            Self::NotEnabled { cr0 } => write!(f, "CR0 {cr0:#x} lacks SMMUEN/EVENTQEN/CMDQEN"),
            Self::GlobalErrorActive { active } => {
                write!(f, "global error active (GERROR ^ GERRORN = {active:#x})")
            }
            Self::CommandQueueBusy { prod, cons } => {
                write!(f, "command queue not idle (prod {prod:#x}, cons {cons:#x})")
            }
            Self::NoStreamTable => f.write_str("STRTAB_BASE is 0"),
        }
    }
}

impl core::error::Error for InvariantViolation {}

/// Driver failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU lacks something the driver needs.
    Missing(MissingFeature),
    /// [`Smmu::init`] has not run (or failed).
    NotInitialized,
    /// [`Smmu::init`] was called twice.
    AlreadyInitialized,
    /// A register handshake (`CR0ACK`, `IRQ_CTRLACK`, `GBPA.Update`) timed out.
    AckTimeout {
        /// The register polled.
        register: &'static str,
        /// The value waited for.
        wanted: u32,
        /// The last value read.
        got: u32,
    },
    /// A driver lock was not obtained in time.
    LockTimeout {
        /// Which lock.
        lock: &'static str,
    },
    /// Bring-up left an invariant violated.
    Invariant(InvariantViolation),
    /// Stream table problem.
    Strtab(StrtabError),
    /// Context descriptor problem.
    Cd(CdError),
    /// Command queue problem.
    Cmdq(CmdqError),
    /// Event queue problem.
    Eventq(EventqError),
    /// Invalid flush request.
    Plan(PlanError),
    /// DMA allocation failure.
    Dma(DmaError),
    /// The SMMU entered service failure mode.
    ServiceFailure,
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(m) => write!(f, "unsupported SMMU: {m}"),
            Self::NotInitialized => f.write_str("SMMU not initialised"),
            Self::AlreadyInitialized => f.write_str("SMMU already initialised"),
            Self::AckTimeout {
                register,
                wanted,
                got,
            } => write!(f, "{register} did not reach {wanted:#x} (last {got:#x})"),
            Self::LockTimeout { lock } => write!(f, "SMMU {lock} lock timed out"),
            Self::Invariant(v) => write!(f, "SMMU invariant violated: {v}"),
            Self::Strtab(e) => e.fmt(f),
            Self::Cd(e) => e.fmt(f),
            Self::Cmdq(e) => e.fmt(f),
            Self::Eventq(e) => e.fmt(f),
            Self::Plan(e) => e.fmt(f),
            Self::Dma(e) => e.fmt(f),
            Self::ServiceFailure => f.write_str("SMMU entered service failure mode"),
        }
    }
}

impl core::error::Error for SmmuError {}

impl From<StrtabError> for SmmuError {
    fn from(e: StrtabError) -> Self {
        Self::Strtab(e)
    }
}
impl From<CdError> for SmmuError {
    fn from(e: CdError) -> Self {
        Self::Cd(e)
    }
}
impl From<CmdqError> for SmmuError {
    fn from(e: CmdqError) -> Self {
        match e {
            CmdqError::ServiceFailure => Self::ServiceFailure,
            other => Self::Cmdq(other),
        }
    }
}
impl From<EventqError> for SmmuError {
    fn from(e: EventqError) -> Self {
        Self::Eventq(e)
    }
}
impl From<PlanError> for SmmuError {
    fn from(e: PlanError) -> Self {
        Self::Plan(e)
    }
}
impl From<DmaError> for SmmuError {
    fn from(e: DmaError) -> Self {
        Self::Dma(e)
    }
}

struct Streams {
    table: StreamTable,
    /// One 64-byte CD per stage-1 StreamID, allocated on first use and kept.
    cds: BTreeMap<u32, DmaRegion>,
}

struct CdSlot<'a>(&'a mut DmaRegion);

impl EntryStorage for CdSlot<'_> {
    fn load(&self, index: usize) -> u64 {
        self.0.read_u64(index * 8)
    }

    fn store(&mut self, index: usize, value: u64) {
        self.0.write_u64(index * 8, value);
    }
}

struct Runtime {
    config: SmmuConfig,
    planner: PlannerConfig,
    cmdq: CommandQueue,
    eventq: Mutex<EventQueue>,
    streams: Mutex<Streams>,
    gbpa_abort: bool,
}

/// The SMMU driver.
pub struct Smmu<H: SmmuHal> {
    hal: H,
    features: Features,
    counters: Counters,
    runtime: Option<Runtime>,
}

impl<H: SmmuHal> Smmu<H> {
    /// Reads and decodes the ID registers and refuses SMMUs the driver cannot drive.
    ///
    /// # Errors
    ///
    /// [`SmmuError::Missing`] naming the missing feature.
    pub fn probe(hal: H) -> Result<Self, SmmuError> {
        let features = Features::read(&hal);
        log::info!("{features}");
        features.check_required().map_err(SmmuError::Missing)?;
        Ok(Self {
            hal,
            features,
            counters: Counters::default(),
            runtime: None,
        })
    }

    /// The decoded features.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The HAL.
    pub fn hal(&self) -> &H {
        &self.hal
    }

    /// Live counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A snapshot of the counters (take two and use [`CounterSnapshot::delta`]).
    pub fn stats(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    fn runtime(&self) -> Result<&Runtime, SmmuError> {
        self.runtime.as_ref().ok_or(SmmuError::NotInitialized)
    }

    fn regs(&self) -> Registers<'_, H> {
        Registers::new(&self.hal)
    }

    fn wait_ack<R: tock_registers::RegisterLongName>(
        &self,
        reg: Reg32<R>,
        name: &'static str,
        mask: u32,
        wanted: u32,
        timeout_ns: u64,
    ) -> Result<(), SmmuError> {
        let mut last = 0;
        poll_until(&self.hal, timeout_ns, || {
            last = self.regs().read(reg).get();
            (last & mask == wanted).then_some(())
        })
        .map_err(|_| SmmuError::AckTimeout {
            register: name,
            wanted,
            got: last,
        })
    }

    fn update_cr0(&self, value: u32, timeout_ns: u64) -> Result<(), SmmuError> {
        self.regs().write_raw(offset::CR0, value);
        self.wait_ack(offset::CR0ACK, "CR0ACK", u32::MAX, value, timeout_ns)
    }

    /// Requests `GBPA.ABORT`; returns whether it took effect (false where GBPA is absent).
    fn set_gbpa_abort(&self, timeout_ns: u64) -> Result<bool, SmmuError> {
        let update = GBPA::UPDATE::SET.value;
        self.wait_ack(offset::GBPA, "GBPA.Update", update, 0, timeout_ns)?;
        let current = self.regs().read(offset::GBPA).get();
        self.regs()
            .write_raw(offset::GBPA, current | GBPA::ABORT::SET.value | update);
        self.wait_ack(offset::GBPA, "GBPA.Update", update, 0, timeout_ns)?;
        Ok(self.regs().read(offset::GBPA).is_set(GBPA::ABORT))
    }

    /// Brings the SMMU up (see the module docs). On success every StreamID aborts until it is
    /// configured.
    ///
    /// # Errors
    ///
    /// Any [`SmmuError`]; the SMMU is then left disabled.
    pub fn init(&mut self, config: &SmmuConfig) -> Result<(), SmmuError> {
        if self.runtime.is_some() {
            return Err(SmmuError::AlreadyInitialized);
        }
        match self.bring_up(config) {
            Ok(runtime) => {
                self.runtime = Some(runtime);
                self.check_invariants().map_err(SmmuError::Invariant)?;
                // One lock at a time: guards in a format argument live to the end of the
                // statement, so taking the same lock twice here would deadlock.
                let rt = self.runtime()?;
                let layout = rt.streams.lock().table.layout();
                let eventq_log2 = rt.eventq.lock().geometry().log2_entries();
                log::info!(
                    "SMMU enabled: {:?} stream table ({} StreamID bits), cmdq 2^{}, eventq 2^{}, GBPA abort {}",
                    layout.format,
                    layout.sid_bits,
                    rt.cmdq.geometry().log2_entries(),
                    eventq_log2,
                    if rt.gbpa_abort {
                        "effective"
                    } else {
                        "absent (disabled SMMU bypasses)"
                    }
                );
                Ok(())
            }
            Err(e) => {
                // Leave translation off; memory already handed to the SMMU stays allocated.
                self.regs().write_raw(offset::CR0, 0);
                log::error!("SMMU bring-up failed: {e}");
                Err(e)
            }
        }
    }

    fn bring_up(&self, config: &SmmuConfig) -> Result<Runtime, SmmuError> {
        let timeout = config.timeout_ns;
        let regs = self.regs();
        let f = &self.features;

        let gbpa_abort = if config.abort_when_disabled {
            let effective = self.set_gbpa_abort(timeout)?;
            if !effective {
                // Not a fault: the caller's contract (no Bus Master Enable before SMMUEN) is what
                // keeps DMA closed on such an SMMU (QEMU 7.2); say so once, without alarm.
                log::info!(
                    "SMMU: GBPA not implemented (a disabled SMMU bypasses): DMA stays closed until SMMUEN"
                );
            }
            effective
        } else {
            false
        };

        self.update_cr0(0, timeout)?;
        regs.write(
            offset::CR1,
            CR1::QUEUE_IC::WriteBack
                + CR1::QUEUE_OC::WriteBack
                + CR1::QUEUE_SH::InnerShareable
                + CR1::TABLE_IC::WriteBack
                + CR1::TABLE_OC::WriteBack
                + CR1::TABLE_SH::InnerShareable,
        );
        regs.write(
            offset::CR2,
            CR2::PTM::SET + CR2::RECINVSID::SET + CR2::E2H::CLEAR,
        );

        let layout = StrtabLayout::choose(f, config.strtab_format, config.sid_bits)?;
        let table = StreamTable::new(&self.hal, layout)?;
        let cmdq_geometry = QueueGeometry::new(config.cmdq_log2_entries.clamp(1, f.cmdq_log2_max))
            .expect("clamped to IDR1.CMDQS <= 19");
        let eventq_geometry = QueueGeometry::new(config.eventq_log2_entries.min(f.eventq_log2_max))
            .expect("clamped to IDR1.EVENTQS <= 19");
        let cmdq = CommandQueue::new(&self.hal, cmdq_geometry, timeout)?;
        let mut eventq = EventQueue::new(&self.hal, eventq_geometry)?;

        // Table contents before the base registers that make them reachable.
        self.hal.publish_barrier();
        self.hal
            .write64(offset::STRTAB_BASE.offset(), table.base_register_value());
        regs.write_raw(offset::STRTAB_BASE_CFG, layout.base_cfg_value());
        cmdq.program_registers(&self.hal);
        eventq.program_registers(&self.hal);

        // Interrupts: wired only (MSI address 0 disables MSIs where they exist).
        regs.write_raw(offset::IRQ_CTRL, 0);
        self.wait_ack(offset::IRQ_CTRLACK, "IRQ_CTRLACK", u32::MAX, 0, timeout)?;
        if f.msi {
            self.hal.write64(offset::GERROR_IRQ_CFG0.offset(), 0);
            self.hal.write64(offset::EVENTQ_IRQ_CFG0.offset(), 0);
        }
        let mut irq = IRQ_CTRL::GERROR_IRQEN::CLEAR;
        if config.gerror_irq {
            irq += IRQ_CTRL::GERROR_IRQEN::SET;
        }
        if config.eventq_irq {
            irq += IRQ_CTRL::EVENTQ_IRQEN::SET;
        }
        regs.write(offset::IRQ_CTRL, irq);
        self.wait_ack(
            offset::IRQ_CTRLACK,
            "IRQ_CTRLACK",
            u32::MAX,
            irq.value,
            timeout,
        )?;

        let mut cr0 = CR0::CMDQEN::SET.value;
        self.update_cr0(cr0, timeout)?;
        cmdq.submit(
            &self.hal,
            &self.counters,
            &[Command::CFGI_ALL, Command::TlbiNsnhAll],
        )?;
        cr0 |= CR0::EVENTQEN::SET.value;
        self.update_cr0(cr0, timeout)?;
        cr0 |= CR0::SMMUEN::SET.value;
        self.update_cr0(cr0, timeout)?;

        let mut planner = PlannerConfig::new(config.granule, f);
        planner.va_bits = config.va_bits;
        planner.global_entries = config.global_entries;
        planner.policy = config.inval_policy;
        planner.ril &= config.use_ril;
        if let Some(pages) = config.asid_threshold_pages {
            planner.asid_threshold_pages = pages;
        }
        Ok(Runtime {
            config: *config,
            planner,
            cmdq,
            eventq: Mutex::new(eventq),
            streams: Mutex::new(Streams {
                table,
                cds: BTreeMap::new(),
            }),
            gbpa_abort,
        })
    }

    /// Whether `GBPA.ABORT` took effect, i.e. whether a disabled SMMU aborts DMA. `false` on
    /// QEMU 7.2 (no GBPA) or when not requested.
    pub fn gbpa_abort_effective(&self) -> bool {
        self.runtime.as_ref().is_some_and(|rt| rt.gbpa_abort)
    }

    /// The invalidation planner settings in use.
    ///
    /// # Errors
    ///
    /// [`SmmuError::NotInitialized`].
    pub fn planner_config(&self) -> Result<PlannerConfig, SmmuError> {
        Ok(self.runtime()?.planner)
    }

    /// The stream table in use: its format and the StreamID bits it covers, as chosen at
    /// bring-up from [`SmmuConfig::strtab_format`] and the ID registers.
    ///
    /// # Errors
    ///
    /// [`SmmuError::NotInitialized`] or a lock timeout.
    pub fn strtab_layout(&self) -> Result<StrtabLayout, SmmuError> {
        let rt = self.runtime()?;
        Ok(self.lock(&rt.streams, "stream table")?.table.layout())
    }

    /// Checks the bring-up invariants: `CR0ACK == CR0` with `SMMUEN | EVENTQEN | CMDQEN`,
    /// `GERROR == GERRORN`, `CMDQ_CONS == CMDQ_PROD` (an idle queue) and `STRTAB_BASE != 0`.
    ///
    /// # Errors
    ///
    /// The first [`InvariantViolation`].
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let regs = self.regs();
        let cr0 = regs.read(offset::CR0).get();
        let ack = regs.read(offset::CR0ACK).get();
        if cr0 != ack {
            return Err(InvariantViolation::Cr0AckMismatch { cr0, ack });
        }
        let enabled = (CR0::SMMUEN::SET + CR0::EVENTQEN::SET + CR0::CMDQEN::SET).value;
        if cr0 & enabled != enabled {
            return Err(InvariantViolation::NotEnabled { cr0 });
        }
        let active = regs.read(offset::GERROR).get() ^ regs.read(offset::GERRORN).get();
        if active != 0 {
            return Err(InvariantViolation::GlobalErrorActive { active });
        }
        let mask = match &self.runtime {
            Some(rt) => rt.cmdq.geometry().pointer_mask(),
            None => 0xF_FFFF,
        };
        let prod = regs.read(offset::CMDQ_PROD).get() & mask;
        let cons = regs.read(offset::CMDQ_CONS).get() & mask;
        if prod != cons {
            return Err(InvariantViolation::CommandQueueBusy { prod, cons });
        }
        if self.hal.read64(offset::STRTAB_BASE.offset()) == 0 {
            return Err(InvariantViolation::NoStreamTable);
        }
        Ok(())
    }

    fn lock<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        name: &'static str,
    ) -> Result<MutexGuard<'a, T>, SmmuError> {
        let timeout = self.runtime()?.config.timeout_ns;
        poll_until(&self.hal, timeout, || mutex.try_lock()).map_err(|_| {
            Counters::bump(&self.counters.timeouts);
            SmmuError::LockTimeout { lock: name }
        })
    }

    /// Submits commands followed by one `CMD_SYNC`, and waits for it.
    ///
    /// # Errors
    ///
    /// [`SmmuError::Cmdq`] (see [`CmdqError`]).
    pub fn submit(&self, cmds: &[Command]) -> Result<(), SmmuError> {
        self.runtime()?
            .cmdq
            .submit(&self.hal, &self.counters, cmds)?;
        Ok(())
    }

    fn sync_ste(&self, rt: &Runtime, sid: u32) -> Result<(), SmmuError> {
        rt.cmdq.submit(
            &self.hal,
            &self.counters,
            &[Command::CfgiSte { sid, leaf: true }],
        )?;
        Ok(())
    }

    fn sync_cd(&self, rt: &Runtime, sid: u32) -> Result<(), SmmuError> {
        rt.cmdq.submit(
            &self.hal,
            &self.counters,
            &[Command::CfgiCd {
                sid,
                ssid: 0,
                leaf: true,
            }],
        )?;
        Ok(())
    }

    /// Makes sure `sid` has an STE; publishes a new level-2 table if needed.
    fn ensure_ste(&self, rt: &Runtime, streams: &mut Streams, sid: u32) -> Result<(), SmmuError> {
        if streams.table.ensure_ste(&self.hal, sid)? {
            // The old, empty level-1 descriptor may be cached: non-leaf invalidation.
            rt.cmdq.submit(
                &self.hal,
                &self.counters,
                &[Command::CfgiSte { sid, leaf: false }],
            )?;
        }
        Ok(())
    }

    fn write_ste(
        &self,
        rt: &Runtime,
        streams: &mut Streams,
        sid: u32,
        config: SteConfig,
    ) -> Result<writer::UpdateReport, SmmuError> {
        let target = ste::build(config);
        let mut slot = streams.table.ste_slot(sid)?;
        writer::write_entry(&ste::FORMAT, &mut slot, &target, &mut |_| {
            self.sync_ste(rt, sid)
        })
    }

    fn write_cd(
        &self,
        rt: &Runtime,
        region: &mut DmaRegion,
        sid: u32,
        target: &EntryWords,
    ) -> Result<writer::UpdateReport, SmmuError> {
        writer::write_entry(&cd::FORMAT, &mut CdSlot(region), target, &mut |_| {
            self.sync_cd(rt, sid)
        })
    }

    /// Points `sid` at a stage-1 context (creating or updating its CD), e.g. the CPU's address
    /// space built with [`CdParams::sva`].
    ///
    /// Order: on a new context, stale TLB entries of its ASID are invalidated first; the CD is
    /// written (valid bit last) with `CMD_CFGI_CD` syncs; if it replaced a live context with a
    /// different table or ASID, the old ASID is invalidated (after the CD's sync); finally the
    /// STE is switched to stage 1 (hitless from abort or bypass).
    ///
    /// # Errors
    ///
    /// [`SmmuError::Cd`] for parameters this SMMU cannot use, or queue/table/lock errors.
    pub fn install_stage1(&self, sid: u32, params: &CdParams) -> Result<(), SmmuError> {
        params.validate(&self.features)?;
        let rt = self.runtime()?;
        let mut guard = self.lock(&rt.streams, "stream table")?;
        let streams = &mut *guard;
        self.ensure_ste(rt, streams, sid)?;
        let old_ste = streams
            .table
            .read_ste(sid)
            .map_or(SteState::Invalid, |words| ste::decode(&words));
        let region = match streams.cds.entry(sid) {
            alloc::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            alloc::collections::btree_map::Entry::Vacant(e) => {
                e.insert(self.hal.alloc_dma(64, 64)?)
            }
        };
        let cd_phys = region.phys_addr();
        let cd_live = old_ste == SteState::Known(SteConfig::Stage1 { cd_phys });
        let old_words: EntryWords = core::array::from_fn(|i| region.read_u64(i * 8));
        let old = CdParams::decode(&old_words).filter(|_| cd_live);
        let target = params.build();

        if old.is_none_or(|o| o.asid != params.asid) {
            // Entries a previous user of this ASID left behind must not become reachable.
            rt.cmdq.submit(
                &self.hal,
                &self.counters,
                &[Command::TlbiNhAsid { asid: params.asid }],
            )?;
        }
        self.write_cd(rt, region, sid, &target)?;
        if let Some(old) = old
            && old != *params
        {
            // Translations made through the old context (old table and/or old ASID) may still
            // be cached; the CFGI above only dropped the cached configuration.
            rt.cmdq.submit(
                &self.hal,
                &self.counters,
                &[Command::TlbiNhAsid { asid: old.asid }],
            )?;
        }
        self.write_ste(rt, streams, sid, SteConfig::Stage1 { cd_phys })?;
        Ok(())
    }

    fn set_simple(&self, sid: u32, config: SteConfig) -> Result<(), SmmuError> {
        let rt = self.runtime()?;
        let mut guard = self.lock(&rt.streams, "stream table")?;
        let streams = &mut *guard;
        self.ensure_ste(rt, streams, sid)?;
        let old_ste = streams
            .table
            .read_ste(sid)
            .map_or(SteState::Invalid, |words| ste::decode(&words));
        self.write_ste(rt, streams, sid, config)?;
        if let SteState::Known(SteConfig::Stage1 { cd_phys }) = old_ste
            && let Some(region) = streams.cds.get_mut(&sid)
            && region.phys_addr() == cd_phys
        {
            let words: EntryWords = core::array::from_fn(|i| region.read_u64(i * 8));
            if let Some(old) = CdParams::decode(&words) {
                // The CD is unreachable now; make it invalid (fail closed for a later install)
                // and drop the translations of its ASID.
                self.write_cd(rt, region, sid, &cd::INVALID)?;
                rt.cmdq.submit(
                    &self.hal,
                    &self.counters,
                    &[Command::TlbiNhAsid { asid: old.asid }],
                )?;
            }
        }
        Ok(())
    }

    /// Makes `sid` abort all DMA, silently (the state every StreamID starts in).
    ///
    /// # Errors
    ///
    /// Queue/table/lock errors.
    pub fn set_abort(&self, sid: u32) -> Result<(), SmmuError> {
        self.set_simple(sid, SteConfig::Abort)
    }

    /// Lets `sid` DMA to physical addresses untranslated.
    ///
    /// # Errors
    ///
    /// Queue/table/lock errors.
    pub fn set_bypass(&self, sid: u32) -> Result<(), SmmuError> {
        self.set_simple(sid, SteConfig::Bypass)
    }

    /// What the STE of `sid` currently says (`None` outside the table or before its level-2
    /// table exists).
    ///
    /// # Errors
    ///
    /// [`SmmuError::NotInitialized`] or a lock timeout.
    pub fn ste_state(&self, sid: u32) -> Result<Option<SteState>, SmmuError> {
        let rt = self.runtime()?;
        let streams = self.lock(&rt.streams, "stream table")?;
        Ok(streams.table.read_ste(sid).map(|w| ste::decode(&w)))
    }

    /// The CD installed for `sid`, if any.
    ///
    /// # Errors
    ///
    /// [`SmmuError::NotInitialized`] or a lock timeout.
    pub fn context(&self, sid: u32) -> Result<Option<CdParams>, SmmuError> {
        let rt = self.runtime()?;
        let streams = self.lock(&rt.streams, "stream table")?;
        Ok(streams
            .cds
            .get(&sid)
            .and_then(|region| CdParams::decode(&core::array::from_fn(|i| region.read_u64(i * 8)))))
    }

    /// Invalidates the SMMU's TLB for `kind` in the address space tagged `asid`: the planned
    /// commands plus exactly one `CMD_SYNC`, waited for. Call it after the page-table update
    /// (and its `DSB`), wherever the CPU's TLB is invalidated.
    ///
    /// # Errors
    ///
    /// [`SmmuError::Plan`] for invalid requests, [`SmmuError::Cmdq`] for queue failures.
    pub fn invalidate(&self, asid: u16, kind: FlushKind) -> Result<(), SmmuError> {
        self.invalidate_hinted(asid, kind, FlushHint::UNKNOWN)
    }

    /// [`Self::invalidate`], with what the caller knows about the changed entries (`Leaf`,
    /// level), used by [`InvalPolicy::Precise`].
    ///
    /// # Errors
    ///
    /// As [`Self::invalidate`].
    pub fn invalidate_hinted(
        &self,
        asid: u16,
        kind: FlushKind,
        hint: FlushHint,
    ) -> Result<(), SmmuError> {
        let rt = self.runtime()?;
        let plan = FlushPlan::with_hint(&rt.planner, asid, kind, hint)?;
        Counters::bump(&self.counters.flushes);
        rt.cmdq.submit_iter(&self.hal, &self.counters, plan)?;
        Ok(())
    }

    /// Consumes pending event records (at most one queue's worth per call), calling `on_event`
    /// for each; detects overflow the architectural way (`OVFLG`) and QEMU's way
    /// (`GERROR.EVENTQ_ABT_ERR`, acknowledged here, after draining, by toggling only that bit).
    ///
    /// # Errors
    ///
    /// [`SmmuError::Eventq`] (inconsistent pointers, or another CPU draining for the whole
    /// timeout).
    pub fn drain_events<F: FnMut(Event)>(
        &self,
        on_event: &mut F,
    ) -> Result<DrainReport, SmmuError> {
        let rt = self.runtime()?;
        let mut eventq = self
            .lock(&rt.eventq, "event queue")
            .map_err(|_| SmmuError::Eventq(EventqError::Busy))?;
        let limit = eventq.geometry().entries() as usize;
        let mut report = eventq.drain(&self.hal, limit, on_event)?;
        self.counters
            .events
            .fetch_add(report.events as u64, core::sync::atomic::Ordering::Relaxed);
        if report.overflow {
            Counters::bump(&self.counters.event_overflows);
        }
        // QEMU signals a full queue with EVENTQ_ABT_ERR: acknowledge it only after draining.
        let acked = rt.cmdq.acknowledge_gerror(
            &self.hal,
            &self.counters,
            GlobalErrors::EVENTQ_ABT_ERR.bits(),
        )?;
        if acked != 0 {
            log::warn!("SMMU event queue abort/overflow (GERROR.EVENTQ_ABT_ERR): events were lost");
            report.abort_error = true;
            Counters::bump(&self.counters.event_overflows);
        }
        Ok(report)
    }

    /// Handles active global errors (for the GERROR interrupt): recovers the command queue
    /// from `CMDQ_ERR` (see [`crate::cmdq`]), logs and acknowledges MSI/PRI-queue aborts, and
    /// leaves `EVENTQ_ABT_ERR` to [`Smmu::drain_events`]. Only active bits are toggled.
    ///
    /// # Errors
    ///
    /// [`SmmuError::ServiceFailure`] when `SFM_ERR` is active (the SMMU needs a reset), or
    /// queue errors from the recovery.
    pub fn handle_gerror(&self) -> Result<GerrorReport, SmmuError> {
        let rt = self.runtime()?;
        let regs = self.regs();
        let active = GlobalErrors::from_bits_retain(
            regs.read(offset::GERROR).get() ^ regs.read(offset::GERRORN).get(),
        );
        let mut report = GerrorReport {
            active,
            acknowledged: GlobalErrors::empty(),
            needs_event_drain: active.contains(GlobalErrors::EVENTQ_ABT_ERR),
        };
        if active.contains(GlobalErrors::SFM_ERR) {
            log::error!("SMMU entered service failure mode");
            return Err(SmmuError::ServiceFailure);
        }
        if active.contains(GlobalErrors::CMDQ_ERR) && rt.cmdq.recover(&self.hal, &self.counters)? {
            report.acknowledged |= GlobalErrors::CMDQ_ERR;
        }
        let others =
            active - GlobalErrors::CMDQ_ERR - GlobalErrors::EVENTQ_ABT_ERR - GlobalErrors::SFM_ERR;
        if !others.is_empty() {
            log::warn!("SMMU global errors {others:?}; acknowledging");
            let acked = rt
                .cmdq
                .acknowledge_gerror(&self.hal, &self.counters, others.bits())?;
            report.acknowledged |= GlobalErrors::from_bits_retain(acked);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::ToString, sync::Arc, thread, vec::Vec};

    use super::*;
    use crate::{
        cd::{Cacheability, Shareability},
        fake::{Consumed, Consumption, FakeSmmu, LazyConsumer, OverflowStyle},
        features::{AddressSize, IdRegisters},
    };

    type TestSmmu = Smmu<Arc<FakeSmmu>>;

    fn up(fake: &Arc<FakeSmmu>, config: &SmmuConfig) -> TestSmmu {
        let mut smmu = Smmu::probe(fake.clone()).unwrap();
        smmu.init(config).unwrap();
        smmu
    }

    fn params(asid: u16, ttb0: u64) -> CdParams {
        CdParams {
            asid,
            ttb0,
            t0sz: 25,
            granule: Granule::Size4K,
            ips: AddressSize::Bits44,
            mair: 0xFF44_0400,
            walk_inner: Cacheability::WriteBackAllocate,
            walk_outer: Cacheability::WriteBackAllocate,
            walk_shareability: Shareability::InnerShareable,
            tbi0: false,
            affd: false,
            record_faults: true,
            walks_disabled: false,
        }
    }

    /// Walks the stream table the way the SMMU would, from the registers and memory only.
    fn walk_ste(fake: &FakeSmmu, sid: u32) -> Option<[u64; 8]> {
        let base =
            (u64::from(fake.get(0x80)) | (u64::from(fake.get(0x84)) << 32)) & 0x00FF_FFFF_FFFF_FFC0;
        let cfg = fake.get(0x88);
        let (log2, split, fmt) = (cfg & 0x3F, (cfg >> 6) & 0x1F, (cfg >> 16) & 3);
        if u64::from(sid) >> log2 != 0 {
            return None;
        }
        let ste = if fmt == 0 {
            base + u64::from(sid) * 64
        } else {
            let l1 = fake.read_phys_u64(base + u64::from(sid >> split) * 8);
            if l1 & 0x1F == 0 {
                return None;
            }
            (l1 & 0x00FF_FFFF_FFFF_FFC0) + u64::from(sid & ((1 << split) - 1)) * 64
        };
        Some(core::array::from_fn(|i| {
            fake.read_phys_u64(ste + 8 * i as u64)
        }))
    }

    fn walk_cd(fake: &FakeSmmu, sid: u32) -> Option<[u64; 8]> {
        let ste = walk_ste(fake, sid)?;
        (ste[0] & 0xF == 0b1011).then(|| {
            let cd = ste[0] & 0x00FF_FFFF_FFFF_FFC0;
            core::array::from_fn(|i| fake.read_phys_u64(cd + 8 * i as u64))
        })
    }

    /// Compact view of the commands consumed since `from`: opcode plus the interesting field.
    fn commands_since(fake: &FakeSmmu, from: usize) -> Vec<(u8, u64)> {
        fake.log()[from..]
            .iter()
            .map(|c: &Consumed| {
                let op = c.opcode();
                let detail = match op {
                    0x03 | 0x05 => (c.raw[0] >> 32) << 1 | (c.raw[1] & 1),
                    0x11 | 0x12 => c.raw[0] >> 48,
                    0x04 => c.raw[1],
                    _ => 0,
                };
                (op, detail)
            })
            .collect()
    }

    #[test]
    fn init_programs_the_documented_sequence() {
        let fake = FakeSmmu::qemu();
        let smmu = up(&fake, &SmmuConfig::default());
        assert_eq!(fake.get(0x20), 0xD, "CR0 = SMMUEN | EVENTQEN | CMDQEN");
        assert_eq!(fake.get(0x24), 0xD, "CR0ACK");
        assert_eq!(
            fake.get(0x28),
            0x0D75,
            "CR1: ISH write-back tables and queues"
        );
        assert_eq!(fake.get(0x2C), 0b110, "CR2 = PTM | RECINVSID");
        assert_eq!(
            fake.get(0x88),
            16 | (8 << 6) | (1 << 16),
            "2-level, SPLIT 8"
        );
        assert_eq!(fake.get(0x90) & 0x1F, 10, "CMDQ LOG2SIZE");
        assert_eq!(fake.get(0xA0) & 0x1F, 10, "EVENTQ LOG2SIZE");
        assert_eq!(fake.get(0x50), 0b101, "GERROR and EVENTQ interrupts");
        // CFGI_ALL (0x04, Range 31), TLBI_NSNH_ALL, CMD_SYNC — and nothing else.
        assert_eq!(commands_since(&fake, 0), [(0x04, 31), (0x30, 0), (0x46, 0)]);
        assert_eq!(
            fake.bad_64bit_accesses
                .load(core::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(!smmu.gbpa_abort_effective(), "QEMU 7.2 has no GBPA");
        assert_eq!(smmu.check_invariants(), Ok(()));
        // Every StreamID is unreachable (no level-2 table) or abort.
        assert_eq!(walk_ste(&fake, 0x8), None);
        assert_eq!(smmu.ste_state(0x8).unwrap(), None);
        let s = smmu.stats();
        assert_eq!((s.cfgi, s.tlbi_all, s.sync, s.batches), (1, 1, 1, 1));
    }

    #[test]
    fn init_refuses_twice_and_reports_missing_features() {
        let fake = FakeSmmu::qemu();
        let mut smmu = up(&fake, &SmmuConfig::default());
        assert_eq!(
            smmu.init(&SmmuConfig::default()),
            Err(SmmuError::AlreadyInitialized)
        );
        let no_s1 = FakeSmmu::new(
            IdRegisters {
                idr0: IdRegisters::QEMU_7_2.idr0 & !2,
                ..IdRegisters::QEMU_7_2
            },
            Consumption::Synchronous,
        );
        let err = Smmu::probe(no_s1).err().unwrap();
        assert_eq!(err, SmmuError::Missing(MissingFeature::Stage1));
        assert!(err.to_string().contains("stage-1"));
        let uninit = Smmu::probe(FakeSmmu::qemu()).unwrap();
        assert_eq!(
            uninit.invalidate(1, FlushKind::All),
            Err(SmmuError::NotInitialized)
        );
    }

    #[test]
    fn gbpa_abort_where_implemented() {
        let fake = FakeSmmu::with(
            IdRegisters::QEMU_7_2,
            Consumption::Synchronous,
            OverflowStyle::Qemu,
            true,
        );
        let smmu = up(&fake, &SmmuConfig::default());
        assert!(smmu.gbpa_abort_effective());
        assert_eq!(fake.get(0x44) & (1 << 20), 1 << 20);
        assert_eq!(fake.get(0x44) >> 31, 0, "Update completed");
    }

    #[test]
    fn linear_table_on_request() {
        let fake = FakeSmmu::qemu();
        let smmu = up(
            &fake,
            &SmmuConfig {
                strtab_format: Some(StrtabFormat::Linear),
                sid_bits: Some(10),
                ..SmmuConfig::default()
            },
        );
        assert_eq!(fake.get(0x88), 10);
        assert_eq!(walk_ste(&fake, 0x3FF), Some(ste::ABORT));
        assert_eq!(
            smmu.ste_state(0x3FF).unwrap(),
            Some(SteState::Known(SteConfig::Abort))
        );
    }

    #[test]
    fn init_with_a_lazy_consumer() {
        let fake = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let _lazy = LazyConsumer::start(fake.clone(), 50);
        let smmu = up(&fake, &SmmuConfig::default());
        assert_eq!(smmu.check_invariants(), Ok(()));
        smmu.install_stage1(0x8, &params(5, 0x4010_0000)).unwrap();
        assert!(walk_cd(&fake, 0x8).is_some());
    }

    #[test]
    fn cr0ack_timeout_is_reported_and_leaves_translation_off() {
        let fake = FakeSmmu::qemu();
        fake.cr0ack_stuck
            .store(true, core::sync::atomic::Ordering::SeqCst);
        fake.set(0x24, 0x1); // stale ACK
        let mut smmu = Smmu::probe(fake.clone()).unwrap();
        let err = smmu
            .init(&SmmuConfig {
                timeout_ns: 1_000_000,
                ..SmmuConfig::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            SmmuError::AckTimeout {
                register: "CR0ACK",
                wanted: 0,
                got: 1
            }
        );
        assert_eq!(fake.get(0x20), 0);
    }

    #[test]
    fn delayed_cr0ack_is_waited_for() {
        let fake = FakeSmmu::qemu();
        fake.cr0ack_delay
            .store(5, core::sync::atomic::Ordering::SeqCst);
        let smmu = up(&fake, &SmmuConfig::default());
        assert_eq!(smmu.check_invariants(), Ok(()));
    }

    #[test]
    fn stage1_install_change_and_removal() {
        let fake = FakeSmmu::qemu();
        let smmu = up(&fake, &SmmuConfig::default());
        let p = params(5, 0x4010_0000);

        // Install on a sparse StreamID: level-2 table, stale-ASID flush, CD, then STE.
        let mark = fake.log().len();
        smmu.install_stage1(0x8, &p).unwrap();
        assert_eq!(
            commands_since(&fake, mark),
            [
                (0x03, 0x8 << 1), // CFGI_STE leaf = 0: new level-1 descriptor
                (0x46, 0),
                (0x11, 5), // TLBI_NH_ASID of the new ASID
                (0x46, 0),
                (0x05, (0x8 << 1) | 1), // CD: everything but V
                (0x46, 0),
                (0x05, (0x8 << 1) | 1), // CD: V
                (0x46, 0),
                (0x03, (0x8 << 1) | 1), // STE: pointer and attributes
                (0x46, 0),
                (0x03, (0x8 << 1) | 1), // STE: Config = stage 1
                (0x46, 0),
            ]
        );
        let cd = walk_cd(&fake, 0x8).expect("SID 8 translates");
        assert_eq!(cd, p.build());
        assert_eq!(cd[0] as u32, 0xC000_3519);
        assert_eq!((cd[0] >> 32) as u32, 0x0005_6204);
        assert_eq!(smmu.context(0x8).unwrap(), Some(p));

        // Installing the same context again changes nothing.
        let mark = fake.log().len();
        smmu.install_stage1(0x8, &p).unwrap();
        assert_eq!(commands_since(&fake, mark), []);

        // ASID change: one CD word; the old ASID is invalidated after the CD's sync.
        let mark = fake.log().len();
        let p6 = params(6, 0x4010_0000);
        smmu.install_stage1(0x8, &p6).unwrap();
        assert_eq!(
            commands_since(&fake, mark),
            [
                (0x11, 6),
                (0x46, 0),
                (0x05, (0x8 << 1) | 1),
                (0x46, 0),
                (0x11, 5),
                (0x46, 0)
            ]
        );

        // TTB change with the same ASID: CFGI_CD and then TLBI_NH_ASID (both are needed).
        let mark = fake.log().len();
        let moved = params(6, 0x4030_0000);
        smmu.install_stage1(0x8, &moved).unwrap();
        assert_eq!(
            commands_since(&fake, mark),
            [(0x05, (0x8 << 1) | 1), (0x46, 0), (0x11, 6), (0x46, 0)]
        );
        assert_eq!(walk_cd(&fake, 0x8).unwrap()[1], 0x4030_0000);

        // Removal: STE abort first, then the CD is invalidated, then the ASID's TLB entries.
        let mark = fake.log().len();
        smmu.set_abort(0x8).unwrap();
        let cmds = commands_since(&fake, mark);
        assert_eq!(cmds.first(), Some(&(0x03, (0x8 << 1) | 1)));
        assert_eq!(cmds.last(), Some(&(0x46, 0)));
        assert_eq!(cmds[cmds.len() - 2], (0x11, 6));
        assert_eq!(walk_ste(&fake, 0x8), Some(ste::ABORT));
        assert_eq!(smmu.context(0x8).unwrap(), None);

        // A second sparse StreamID in another level-2 table, then bypass.
        smmu.install_stage1(0xFF08, &params(7, 0x4050_0000))
            .unwrap();
        assert!(walk_cd(&fake, 0xFF08).is_some());
        smmu.set_bypass(0xFF08).unwrap();
        assert_eq!(
            ste::decode(&walk_ste(&fake, 0xFF08).unwrap()),
            SteState::Known(SteConfig::Bypass)
        );
        assert_eq!(
            walk_ste(&fake, 0x7F08),
            None,
            "untouched spans stay unreachable"
        );
        assert_eq!(walk_ste(&fake, 0xFF09), Some(ste::ABORT));
        assert_eq!(smmu.check_invariants(), Ok(()));
        assert_eq!(
            fake.bad_64bit_accesses
                .load(core::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    #[test]
    fn invalid_context_parameters_are_refused() {
        let fake = FakeSmmu::qemu();
        let smmu = up(&fake, &SmmuConfig::default());
        let bad = CdParams {
            ttb0: 0x4010_0800,
            ..params(5, 0)
        };
        assert!(matches!(
            smmu.install_stage1(0x8, &bad),
            Err(SmmuError::Cd(CdError::Ttb0Misaligned { .. }))
        ));
        assert!(matches!(
            smmu.install_stage1(0x1_0000, &params(5, 0x4010_0000)),
            Err(SmmuError::Strtab(StrtabError::StreamIdOutOfRange { .. }))
        ));
    }

    #[test]
    fn invalidate_issues_one_batch_and_one_sync() {
        let fake = FakeSmmu::qemu();
        // The counts below are linux66's (precise sends one range command for 512 pages).
        let smmu = up(
            &fake,
            &SmmuConfig {
                inval_policy: InvalPolicy::Linux66,
                ..SmmuConfig::default()
            },
        );
        let check = |kind: FlushKind, expect: fn(&CounterSnapshot) -> bool| {
            let before = smmu.stats();
            smmu.invalidate(9, kind).unwrap();
            let d = smmu.stats().delta(&before);
            assert_eq!((d.sync, d.flushes, d.batches), (1, 1, 1), "{kind:?}: {d}");
            assert!(expect(&d), "{kind:?}: {d}");
        };
        // QEMU has RIL.
        check(FlushKind::Page(0x4000_0000), |d| {
            d.tlbi_nh_va == 1 && d.commands == 2
        });
        check(
            FlushKind::Range {
                start: 0x20_0000,
                pages: 512,
            },
            |d| d.tlbi_nh_asid == 1 && d.tlbi_nh_va_range == 0 && d.commands == 2,
        );
        check(
            FlushKind::Range {
                start: 0,
                pages: 511,
            },
            |d| d.tlbi_nh_va_range == 2,
        );
        check(FlushKind::All, |d| d.tlbi_nh_asid == 1 && d.commands == 2);
        assert!(matches!(
            smmu.invalidate(9, FlushKind::Range { start: 0, pages: 0 }),
            Err(SmmuError::Plan(PlanError::EmptyRange { .. }))
        ));

        let no_ril = FakeSmmu::new(
            IdRegisters {
                idr3: 0,
                ..IdRegisters::QEMU_7_2
            },
            Consumption::Synchronous,
        );
        let smmu = up(&no_ril, &SmmuConfig::default());
        let before = smmu.stats();
        smmu.invalidate(
            9,
            FlushKind::Range {
                start: 0x1000,
                pages: 5,
            },
        )
        .unwrap();
        smmu.invalidate(
            9,
            FlushKind::Range {
                start: 0x20_0000,
                pages: 512,
            },
        )
        .unwrap();
        let d = smmu.stats().delta(&before);
        assert_eq!(
            (d.tlbi_nh_va, d.tlbi_nh_asid, d.sync, d.flushes),
            (5, 1, 2, 2)
        );
        let ops: Vec<u8> = no_ril
            .log()
            .iter()
            .rev()
            .take(2)
            .map(|c| c.opcode())
            .collect();
        assert_eq!(ops, [0x46, 0x11]);
    }

    fn fault(n: u64) -> [u64; 4] {
        [0x13 | (8 << 32), 0, 0x20_1000 + 4 * n, 0]
    }

    #[test]
    fn events_with_qemu_style_overflow() {
        let fake = FakeSmmu::qemu();
        let smmu = up(
            &fake,
            &SmmuConfig {
                eventq_log2_entries: 2,
                ..SmmuConfig::default()
            },
        );
        for n in 0..6 {
            fake.inject_event(fault(n));
        }
        assert_eq!(fake.gerror_active(), 1 << 2, "EVENTQ_ABT_ERR");
        let g = smmu.handle_gerror().unwrap();
        assert!(g.needs_event_drain);
        assert!(g.acknowledged.is_empty());
        let mut seen = Vec::new();
        let r = smmu.drain_events(&mut |e: Event| seen.push(e)).unwrap();
        assert_eq!((r.events, r.abort_error, r.overflow), (4, true, false));
        assert_eq!(
            fake.gerror_active(),
            0,
            "only EVENTQ_ABT_ERR toggled, and acknowledged"
        );
        assert_eq!(seen[3].input_addr, Some(0x20_100C));
        assert_eq!(seen[0].kind, crate::event::EventType::Permission);
        // Recording resumes.
        assert!(fake.inject_event(fault(9)));
        let r = smmu.drain_events(&mut |_| {}).unwrap();
        assert_eq!((r.events, r.abort_error), (1, false));
        let s = smmu.stats();
        assert_eq!((s.events, s.event_overflows), (5, 1));
    }

    #[test]
    fn events_with_architectural_overflow() {
        let fake = FakeSmmu::with(
            IdRegisters::QEMU_7_2,
            Consumption::Synchronous,
            OverflowStyle::Architectural,
            true,
        );
        let smmu = up(
            &fake,
            &SmmuConfig {
                eventq_log2_entries: 1,
                ..SmmuConfig::default()
            },
        );
        for n in 0..3 {
            fake.inject_event(fault(n));
        }
        let r = smmu.drain_events(&mut |_| {}).unwrap();
        assert_eq!((r.events, r.overflow, r.abort_error), (2, true, false));
        assert_eq!(
            fake.get(0xAC) >> 31,
            fake.get(0xA8) >> 31,
            "OVACKFLG == OVFLG"
        );
    }

    #[test]
    fn handle_gerror_acknowledges_only_active_bits() {
        let fake = FakeSmmu::qemu();
        let smmu = up(&fake, &SmmuConfig::default());
        // MSI abort and event-queue abort active; GERRORN has an unrelated history bit.
        fake.set(0x64, 1 << 3);
        fake.set(0x60, (1 << 3) | (1 << 4) | (1 << 2));
        let r = smmu.handle_gerror().unwrap();
        assert_eq!(
            r.active,
            GlobalErrors::MSI_CMDQ_ABT_ERR | GlobalErrors::EVENTQ_ABT_ERR
        );
        assert_eq!(r.acknowledged, GlobalErrors::MSI_CMDQ_ABT_ERR);
        assert!(r.needs_event_drain);
        assert_eq!(fake.gerror_active(), 1 << 2);
        smmu.drain_events(&mut |_| {}).unwrap();
        assert_eq!(fake.gerror_active(), 0);
        assert_eq!(fake.get(0x64), (1 << 3) | (1 << 4) | (1 << 2));
        // Service failure mode is reported as such.
        fake.set(0x60, fake.get(0x60) ^ (1 << 8));
        assert_eq!(smmu.handle_gerror(), Err(SmmuError::ServiceFailure));
    }

    #[test]
    fn strtab_layout_reports_the_format_in_use() {
        for format in [StrtabFormat::Linear, StrtabFormat::TwoLevel] {
            let fake = FakeSmmu::qemu();
            let smmu = up(
                &fake,
                &SmmuConfig {
                    strtab_format: Some(format),
                    sid_bits: Some(12),
                    ..SmmuConfig::default()
                },
            );
            let layout = smmu.strtab_layout().unwrap();
            assert_eq!((layout.format, layout.sid_bits), (format, 12));
            assert_eq!(fake.get(0x88), layout.base_cfg_value());
        }
        let fake = FakeSmmu::qemu();
        let smmu = Smmu::probe(fake.clone()).unwrap();
        assert_eq!(smmu.strtab_layout(), Err(SmmuError::NotInitialized));
    }

    /// The raw test hook reaches the queue unchanged: a reserved opcode in the middle of a batch
    /// is rejected, reported with its index, and the commands around it run.
    #[test]
    fn raw_reserved_opcode_is_rejected_and_reported() {
        let fake = FakeSmmu::qemu();
        let smmu = up(&fake, &SmmuConfig::default());
        let before = smmu.stats();
        let mark = fake.log().len();
        let err = smmu
            .submit(&[
                Command::TlbiNhAsid { asid: 1 },
                Command::Raw([0x7F, 0]),
                Command::TlbiNhAsid { asid: 2 },
            ])
            .unwrap_err();
        assert!(
            matches!(
                err,
                SmmuError::Cmdq(CmdqError::Rejected {
                    index: 1,
                    opcode: 0x7F,
                    batch_len: 3,
                    further_rejections: 0,
                    ..
                })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("commands 0..1 completed"), "{err}");
        assert_eq!(
            commands_since(&fake, mark),
            [(0x11, 1), (0x46, 0), (0x11, 2), (0x46, 0)]
        );
        let d = smmu.stats().delta(&before);
        assert_eq!((d.raw, d.commands_rejected, d.commands), (1, 1, 4));
        assert_eq!(smmu.check_invariants(), Ok(()));
        smmu.submit(&[Command::TlbiNhAsid { asid: 3 }]).unwrap();
    }

    fn poisoned_batch() -> [Command; 3] {
        [
            Command::TlbiNhAsid { asid: 1 },
            Command::TlbiNhVaa {
                addr: 0x1000,
                leaf: false,
                range: None,
            },
            Command::TlbiNhAsid { asid: 2 },
        ]
    }

    /// The GERROR interrupt path alone recovers a stuck command queue (here nobody is waiting:
    /// the submitter already gave up).
    #[test]
    fn command_error_recovered_by_the_gerror_handler() {
        let fake = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let config = SmmuConfig {
            timeout_ns: 5_000_000,
            ..SmmuConfig::default()
        };
        let smmu = {
            let _lazy = LazyConsumer::start(fake.clone(), 0);
            up(&fake, &config)
        };
        fake.reject_when(|raw| raw[0] as u8 == 0x13);
        let mark = fake.log().len();
        assert!(matches!(
            smmu.submit(&poisoned_batch()),
            Err(SmmuError::Cmdq(CmdqError::SyncTimeout { .. }))
        ));
        fake.consume(usize::MAX);
        assert_eq!(fake.gerror_active(), 1, "stuck on the illegal command");
        let r = smmu.handle_gerror().unwrap();
        assert_eq!(r.active, GlobalErrors::CMDQ_ERR);
        assert_eq!(r.acknowledged, GlobalErrors::CMDQ_ERR);
        fake.consume(usize::MAX);
        assert_eq!(
            commands_since(&fake, mark),
            [(0x11, 1), (0x46, 0), (0x11, 2), (0x46, 0)],
            "the illegal command became a CMD_SYNC and the rest ran"
        );
        assert_eq!(smmu.check_invariants(), Ok(()));
    }

    /// A submitter learns which of its commands was rejected, whichever CPU (itself or the
    /// GERROR handler) did the recovery.
    #[test]
    fn rejected_command_reported_while_the_handler_races() {
        let fake = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let smmu = {
            let _lazy = LazyConsumer::start(fake.clone(), 0);
            Arc::new(up(&fake, &SmmuConfig::default()))
        };
        fake.reject_when(|raw| raw[0] as u8 == 0x13);
        let submitter = {
            let smmu = smmu.clone();
            thread::spawn(move || smmu.submit(&poisoned_batch()))
        };
        while fake.gerror_active() & 1 == 0 && !submitter.is_finished() {
            fake.consume(1);
            thread::yield_now();
        }
        smmu.handle_gerror().unwrap();
        let _lazy = LazyConsumer::start(fake.clone(), 0);
        let err = submitter.join().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                SmmuError::Cmdq(CmdqError::Rejected {
                    index: 1,
                    opcode: 0x13,
                    batch_len: 3,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(smmu.stats().commands_rejected, 1);
        assert_eq!(fake.gerror_active(), 0);
        smmu.invalidate(1, FlushKind::All).unwrap();
    }

    /// Several CPUs flushing and reconfiguring at once against a lazily consuming SMMU.
    #[test]
    fn concurrent_flushes_and_configuration() {
        let fake = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let lazy = LazyConsumer::start(fake.clone(), 20);
        let smmu = Arc::new(up(
            &fake,
            &SmmuConfig {
                cmdq_log2_entries: 3,
                ..SmmuConfig::default()
            },
        ));
        let mut handles = Vec::new();
        for t in 0..2u16 {
            let smmu = smmu.clone();
            handles.push(thread::spawn(move || {
                for i in 0..40u64 {
                    let kind = match i % 4 {
                        0 => FlushKind::Page(i << 12),
                        1 => FlushKind::Range {
                            start: i << 12,
                            pages: 1 + i,
                        },
                        2 => FlushKind::Range {
                            start: 0,
                            pages: 600,
                        },
                        _ => FlushKind::All,
                    };
                    smmu.invalidate(t, kind).unwrap();
                }
            }));
        }
        for t in 0..2u32 {
            let smmu = smmu.clone();
            handles.push(thread::spawn(move || {
                let sid = 0x100 * (t + 1) + 8;
                for i in 0..10u64 {
                    smmu.install_stage1(sid, &params(10 + t as u16, 0x4000_0000 + (i << 12)))
                        .unwrap();
                    if i % 3 == 0 && i < 9 {
                        smmu.set_abort(sid).unwrap();
                    }
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        drop(lazy);
        let s = smmu.stats();
        assert_eq!(s.flushes, 80);
        assert_eq!(s.sync, s.batches);
        assert_eq!(fake.log().len() as u64, s.commands);
        for t in 0..2u32 {
            let sid = 0x100 * (t + 1) + 8;
            let cd = walk_cd(&fake, sid).expect("last operation installed stage 1");
            assert_eq!(cd[1], 0x4000_0000 + (9 << 12));
        }
        assert_eq!(smmu.check_invariants(), Ok(()));
    }
}
