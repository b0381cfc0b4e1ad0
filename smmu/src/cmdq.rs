//! The command queue, safe to use from several CPUs at once (IHI 0070 G.b §3.5, §4.1, §7.1).
//!
//! # Design
//!
//! A single [`spin::Mutex`] protects the producer side: reserving slots, writing entries and
//! publishing `PROD`. Waiting for a `CMD_SYNC` happens *outside* the lock, so other CPUs can
//! queue their own batches while one CPU waits.
//!
//! Every entry ever produced has a monotonic 64-bit number ("sequence"). The lock holder knows
//! the exact number of entries published (`produced`), so when it reads `CMDQ_CONS` it can turn
//! the 20-bit `index | wrap` value into a monotonic consumed count without ambiguity: at that
//! moment the consumer is at most N entries behind `produced` and never ahead of it, a window of
//! N+1 values, while `index | wrap` repeats only every 2N entries
//! ([`QueueGeometry::consumed_since`]). The result is folded into the atomic `consumed` with
//! `fetch_max`, so it only ever grows. A submitter whose `CMD_SYNC` has sequence `s` is done
//! when `consumed > s`: the SMMU consumes in order, and consuming a `CMD_SYNC` means every
//! earlier command on the queue has completed (§4.7.3).
//!
//! Waiters poll the atomic; when it is not yet large enough they *try* to take the lock to
//! refresh it from the register, and otherwise just relax (someone else is refreshing or
//! producing). Conversions therefore only ever happen under the lock, where the reference point
//! is exact — reading `CONS` outside the lock against a stale `produced` could alias across two
//! laps of the queue.
//!
//! Batches: [`CommandQueue::submit`] appends exactly one `CMD_SYNC` to the caller's commands. A
//! batch larger than the free space is written in pieces, each published as soon as it is
//! written, waiting for space in between; the lock is held for the whole batch so the batch
//! occupies consecutive sequence numbers (which is how a rejected command is mapped back to the
//! caller's index).
//!
//! Every wait (lock, space, sync) is bounded by the configured timeout using
//! [`SmmuHal::now_ns`] and fails with a [`CmdqError`] naming what timed out.
//!
//! # Command errors (§7.1)
//!
//! While polling, the lock holder also checks `GERROR ^ GERRORN`. Reading `GERROR` *before*
//! `CMDQ_CONS` matters: the SMMU makes `CONS.ERR` visible before the global error (§7.1), and
//! while the error is active `CONS` is frozen on the offending command, so the `CONS` read
//! after seeing the error is the erroneous slot. Then, depending on `CMDQ_CONS.ERR`:
//!
//! - `CERROR_ILL` (1) and unknown codes: the command is recorded as rejected and its slot is
//!   overwritten with a `CMD_SYNC` (software may rewrite the erroneous entry while the error is
//!   active; it is re-fetched on restart);
//! - `CERROR_ABT` (2): the fetch aborted; nothing is changed and the SMMU retries the fetch;
//! - `CERROR_ATC_INV_SYNC` (3): the `CMD_SYNC` is left in place and is retried;
//!
//! and only the `CMDQ_ERR` bit is acknowledged by toggling it in `GERRORN` (other active errors
//! are left to [`crate::device::Smmu::handle_gerror`]). Every `GERRORN` read-modify-write in
//! the driver goes through [`CommandQueue::acknowledge_gerror`], which serialises them and
//! toggles only bits that are still active, so acknowledgements made concurrently on different
//! CPUs (command recovery, event-queue overflow, MSI aborts) cannot undo each other. The submitter whose batch contained the
//! rejected slot gets [`CmdqError::Rejected`] once its sync completes; everybody else is
//! unaffected, and the queue keeps working.
//!
//! QEMU consumes the whole queue synchronously inside the `PROD` write, which hides every race
//! in this file; the host tests drive it against a model that consumes lazily on another
//! thread.

use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use spin::{Mutex, MutexGuard};

use crate::{
    command::{Command, opcode},
    hal::{DmaError, DmaRegion, SmmuHal},
    queue::QueueGeometry,
    regs::{CMDQ_CONS, GERROR, QUEUE_BASE, Registers, offset},
    stats::Counters,
};

/// Bytes per command-queue entry.
pub const ENTRY_BYTES: usize = 16;

/// Rejections remembered until their submitter collects them.
const REJECTION_LOG_LEN: usize = 16;

/// Why the SMMU stopped on a command (`CMDQ_CONS.ERR`, §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorCode {
    /// `CERROR_ILL`: illegal command or parameters.
    Illegal,
    /// `CERROR_ABT`: external abort fetching the command.
    FetchAbort,
    /// `CERROR_ATC_INV_SYNC`: a sync could not complete an ATC invalidation.
    AtcInvalidationSync,
    /// A code this driver does not know (treated like `CERROR_ILL`).
    Unknown(u8),
}

impl CommandErrorCode {
    /// Decodes `CMDQ_CONS.ERR`.
    pub fn from_err_field(err: u8) -> Self {
        match err {
            1 => Self::Illegal,
            2 => Self::FetchAbort,
            3 => Self::AtcInvalidationSync,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for CommandErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Illegal => f.write_str("illegal command (CERROR_ILL)"),
            Self::FetchAbort => f.write_str("command fetch abort (CERROR_ABT)"),
            Self::AtcInvalidationSync => f.write_str("ATC invalidation sync failure"),
            Self::Unknown(code) => write!(f, "unknown command error {code:#x}"),
        }
    }
}

/// Command queue failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdqError {
    /// The producer lock was not obtained in time (another CPU held it for the whole timeout).
    LockTimeout {
        /// Nanoseconds waited.
        waited_ns: u64,
    },
    /// The queue did not drain enough to take the batch.
    QueueFullTimeout {
        /// `CMDQ_PROD` (index | wrap) published so far.
        prod: u32,
        /// Last `CMDQ_CONS` (index | wrap) read.
        cons: u32,
        /// Commands of the batch still to be written.
        remaining: usize,
    },
    /// The batch's `CMD_SYNC` was not consumed in time.
    SyncTimeout {
        /// `CMDQ_PROD` (index | wrap) when giving up.
        prod: u32,
        /// `CMDQ_CONS` (index | wrap) when giving up.
        cons: u32,
        /// Queue slot of the sync being waited for.
        sync_slot: u32,
    },
    /// `CMDQ_CONS` is more than a queue length away from `PROD`: the SMMU is not following the
    /// queue protocol.
    InconsistentCons {
        /// `CMDQ_PROD` (index | wrap).
        prod: u32,
        /// `CMDQ_CONS` (index | wrap).
        cons: u32,
    },
    /// The SMMU entered service failure mode (`GERROR.SFM_ERR`); it processes nothing more.
    ServiceFailure,
    /// One of the caller's commands was rejected (`CERROR_ILL`).
    ///
    /// Commands `0..index` had completed when the SMMU stopped; the rejected command had no
    /// effect and was replaced by a `CMD_SYNC`; the commands after it, and the batch's own
    /// `CMD_SYNC`, were then executed normally, and the queue keeps working.
    Rejected {
        /// Index of the rejected command in the caller's batch (`batch_len` = the appended
        /// sync).
        index: usize,
        /// Its opcode byte.
        opcode: u8,
        /// The error code reported.
        reason: CommandErrorCode,
        /// Commands in the caller's batch (excluding the appended sync).
        batch_len: usize,
        /// Further rejected commands in the same batch.
        further_rejections: usize,
    },
    /// No memory for the queue.
    Dma(DmaError),
}

impl fmt::Display for CmdqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LockTimeout { waited_ns } => {
                write!(f, "command queue lock not obtained after {waited_ns} ns")
            }
            Self::QueueFullTimeout {
                prod,
                cons,
                remaining,
            } => write!(
                f,
                "command queue full: timed out with {remaining} commands left (prod {prod:#x}, cons {cons:#x})"
            ),
            Self::SyncTimeout {
                prod,
                cons,
                sync_slot,
            } => write!(
                f,
                "CMD_SYNC at slot {sync_slot:#x} timed out (prod {prod:#x}, cons {cons:#x})"
            ),
            Self::InconsistentCons { prod, cons } => write!(
                f,
                "command queue pointers inconsistent (prod {prod:#x}, cons {cons:#x})"
            ),
            Self::ServiceFailure => f.write_str("SMMU entered service failure mode"),
            Self::Rejected {
                index,
                opcode,
                reason,
                batch_len,
                further_rejections,
            } => {
                write!(
                    f,
                    "command {index} of {batch_len} ({}, opcode {opcode:#04x}) rejected: {reason}; \
                     commands 0..{index} completed, the rest of the batch executed",
                    opcode::name(opcode)
                )?;
                if further_rejections > 0 {
                    write!(f, " ({further_rejections} more rejected)")?;
                }
                Ok(())
            }
            Self::Dma(e) => write!(f, "command queue: {e}"),
        }
    }
}

impl core::error::Error for CmdqError {}

/// Sequence numbers of a completed batch (for diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitReceipt {
    /// Sequence number of the batch's first command.
    pub first: u64,
    /// Sequence number of the batch's `CMD_SYNC`.
    pub sync: u64,
}

#[derive(Debug, Clone, Copy)]
struct Rejection {
    seq: u64,
    opcode: u8,
    reason: CommandErrorCode,
}

struct ProducerState {
    ring: DmaRegion,
    /// Entries written *and* published to `CMDQ_PROD`.
    produced: u64,
    rejections: [Option<Rejection>; REJECTION_LOG_LEN],
}

impl ProducerState {
    fn record_rejection(&mut self, rejection: Rejection) {
        let slot = match self.rejections.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                // Full: forget the oldest (its submitter has most likely given up).
                let (oldest, _) = self
                    .rejections
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| r.map_or(u64::MAX, |r| r.seq))
                    .expect("rejection log has entries");
                log::warn!("SMMU cmdq: rejection log full, dropping the oldest entry");
                oldest
            }
        };
        self.rejections[slot] = Some(rejection);
    }

    /// Removes and returns the rejections in `first..=last` (lowest first) and their count.
    fn take_rejections(&mut self, first: u64, last: u64) -> (Option<Rejection>, usize) {
        let mut earliest: Option<Rejection> = None;
        let mut count = 0;
        for entry in self.rejections.iter_mut() {
            if let Some(r) = *entry
                && (first..=last).contains(&r.seq)
            {
                *entry = None;
                count += 1;
                if earliest.is_none_or(|e| r.seq < e.seq) {
                    earliest = Some(r);
                }
            }
        }
        (earliest, count)
    }
}

/// The command queue: ring memory, producer state and the consumed-count shadow.
pub struct CommandQueue {
    geometry: QueueGeometry,
    ring_phys: u64,
    state: Mutex<ProducerState>,
    /// Monotonic count of entries the SMMU has consumed (a lower bound; only grows).
    consumed: AtomicU64,
    /// Number of rejections ever recorded, to skip the log lookup when nothing happened.
    rejections_recorded: AtomicU64,
    /// Serialises read-modify-writes of `GERRORN` (command recovery, event-queue and other
    /// acknowledgements can run on different CPUs; a lost update would re-raise an error).
    gerrorn_lock: Mutex<()>,
    timeout_ns: u64,
}

impl CommandQueue {
    /// Allocates a queue of `geometry.entries()` zeroed entries, aligned to its size (at least
    /// 32 bytes, §6.3.26). Every wait it performs is bounded by `timeout_ns`.
    ///
    /// # Errors
    ///
    /// [`CmdqError::Dma`] if the memory cannot be allocated.
    pub fn new<H: SmmuHal + ?Sized>(
        hal: &H,
        geometry: QueueGeometry,
        timeout_ns: u64,
    ) -> Result<Self, CmdqError> {
        let bytes = geometry.entries() as usize * ENTRY_BYTES;
        let ring = hal
            .alloc_dma(bytes, bytes.max(32))
            .map_err(CmdqError::Dma)?;
        Ok(Self {
            geometry,
            ring_phys: ring.phys_addr(),
            state: Mutex::new(ProducerState {
                ring,
                produced: 0,
                rejections: [None; REJECTION_LOG_LEN],
            }),
            consumed: AtomicU64::new(0),
            rejections_recorded: AtomicU64::new(0),
            gerrorn_lock: Mutex::new(()),
            timeout_ns,
        })
    }

    /// Queue size.
    pub fn geometry(&self) -> QueueGeometry {
        self.geometry
    }

    /// Physical address of the ring.
    pub fn ring_phys(&self) -> u64 {
        self.ring_phys
    }

    /// The `CMDQ_BASE` value: read-allocate hint, base address and `LOG2SIZE`.
    pub fn base_register_value(&self) -> u64 {
        (QUEUE_BASE::ALLOCATE::SET
            + QUEUE_BASE::ADDR.val(self.ring_phys >> 5)
            + QUEUE_BASE::LOG2SIZE.val(u64::from(self.geometry.log2_entries())))
        .value
    }

    /// Programs `CMDQ_BASE`, `CMDQ_PROD = CMDQ_CONS = 0` in the order §6.3.26 requires. Only
    /// valid while `CR0.CMDQEN == 0`; resets the software state to match.
    pub fn program_registers<H: SmmuHal + ?Sized>(&self, hal: &H) {
        let mut st = self.state.lock();
        hal.write64(offset::CMDQ_BASE.offset(), self.base_register_value());
        let regs = Registers::new(hal);
        regs.write_raw(offset::CMDQ_CONS, 0);
        regs.write_raw(offset::CMDQ_PROD, 0);
        st.produced = 0;
        self.consumed.store(0, Ordering::Release);
    }

    /// Returns the ring memory to the HAL.
    ///
    /// # Safety
    ///
    /// The SMMU must no longer use the queue: `CR0.CMDQEN` is 0 (acknowledged) or `CMDQ_BASE`
    /// points elsewhere.
    pub unsafe fn free<H: SmmuHal + ?Sized>(self, hal: &H) {
        let ring = self.state.into_inner().ring;
        // SAFETY: the caller guarantees the SMMU no longer accesses the ring.
        unsafe { hal.free_dma(ring) };
    }

    /// Submits `cmds` followed by one `CMD_SYNC` and waits until that sync is consumed.
    ///
    /// # Errors
    ///
    /// See [`CmdqError`]; on [`CmdqError::Rejected`] the queue has already recovered.
    pub fn submit<H: SmmuHal + ?Sized>(
        &self,
        hal: &H,
        counters: &Counters,
        cmds: &[Command],
    ) -> Result<SubmitReceipt, CmdqError> {
        self.submit_iter(hal, counters, cmds.iter().copied())
    }

    /// As [`CommandQueue::submit`], for commands produced by an iterator of known length (the
    /// invalidation planner), so no intermediate buffer is needed.
    ///
    /// # Errors
    ///
    /// See [`CmdqError`].
    pub fn submit_iter<H: SmmuHal + ?Sized, I: ExactSizeIterator<Item = Command>>(
        &self,
        hal: &H,
        counters: &Counters,
        cmds: I,
    ) -> Result<SubmitReceipt, CmdqError> {
        let batch_len = cmds.len();
        let seen_rejections = self.rejections_recorded.load(Ordering::Acquire);
        let receipt = {
            let mut st = self.lock(hal, counters)?;
            self.produce(&mut st, hal, counters, batch_len, cmds)?
        };
        counters.batches.fetch_add(1, Ordering::Relaxed);
        self.wait_consumed(hal, counters, receipt.sync)?;
        if self.rejections_recorded.load(Ordering::Acquire) != seen_rejections {
            let (first, count) = {
                let mut st = self.lock(hal, counters)?;
                st.take_rejections(receipt.first, receipt.sync)
            };
            if let Some(r) = first {
                return Err(CmdqError::Rejected {
                    index: (r.seq - receipt.first) as usize,
                    opcode: r.opcode,
                    reason: r.reason,
                    batch_len,
                    further_rejections: count - 1,
                });
            }
        }
        Ok(receipt)
    }

    /// Checks for and recovers from a command queue error without submitting anything (for the
    /// GERROR interrupt handler). Returns whether an error was handled.
    ///
    /// # Errors
    ///
    /// [`CmdqError::LockTimeout`], [`CmdqError::InconsistentCons`] or
    /// [`CmdqError::ServiceFailure`].
    pub fn recover<H: SmmuHal + ?Sized>(
        &self,
        hal: &H,
        counters: &Counters,
    ) -> Result<bool, CmdqError> {
        let mut st = self.lock(hal, counters)?;
        self.refresh(&mut st, hal, counters)
    }

    /// Acknowledges those of `bits` that are active (`GERROR ^ GERRORN`) by toggling exactly
    /// them in `GERRORN`, atomically with respect to other acknowledgements made through this
    /// queue. Returns the bits acknowledged. Toggling an inactive bit would *raise* it, so a
    /// bit another CPU already acknowledged is left alone.
    ///
    /// # Errors
    ///
    /// [`CmdqError::LockTimeout`].
    pub fn acknowledge_gerror<H: SmmuHal + ?Sized>(
        &self,
        hal: &H,
        counters: &Counters,
        bits: u32,
    ) -> Result<u32, CmdqError> {
        let _serialised =
            crate::hal::poll_until(hal, self.timeout_ns, || self.gerrorn_lock.try_lock()).map_err(
                |waited| {
                    Counters::bump(&counters.timeouts);
                    CmdqError::LockTimeout { waited_ns: waited }
                },
            )?;
        let regs = Registers::new(hal);
        let gerrorn = regs.read(offset::GERRORN).get();
        let active = regs.read(offset::GERROR).get() ^ gerrorn;
        let ack = active & bits;
        if ack != 0 {
            regs.write_raw(offset::GERRORN, gerrorn ^ ack);
            Counters::bump(&counters.gerrors);
        }
        Ok(ack)
    }

    /// Monotonic count of consumed entries, as last observed.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    fn lock<'a, H: SmmuHal + ?Sized>(
        &'a self,
        hal: &H,
        counters: &Counters,
    ) -> Result<MutexGuard<'a, ProducerState>, CmdqError> {
        crate::hal::poll_until(hal, self.timeout_ns, || self.state.try_lock()).map_err(|waited| {
            Counters::bump(&counters.timeouts);
            CmdqError::LockTimeout { waited_ns: waited }
        })
    }

    /// Writes and publishes the batch plus its sync; returns the sequence numbers used.
    fn produce<H: SmmuHal + ?Sized, I: Iterator<Item = Command>>(
        &self,
        st: &mut ProducerState,
        hal: &H,
        counters: &Counters,
        batch_len: usize,
        mut cmds: I,
    ) -> Result<SubmitReceipt, CmdqError> {
        let first = st.produced;
        let mut remaining = batch_len + 1; // + the CMD_SYNC
        let mut sync_written = false;
        while remaining > 0 {
            let free = self.wait_for_space(st, hal, counters, remaining)?;
            let chunk = free.min(remaining as u64);
            let mut written = st.produced;
            for _ in 0..chunk {
                let cmd = match cmds.next() {
                    Some(cmd) => cmd,
                    None => {
                        assert!(
                            !sync_written,
                            "command iterator yielded fewer items than its len()"
                        );
                        sync_written = true;
                        Command::SYNC
                    }
                };
                let [w0, w1] = cmd.encode();
                let off = self.geometry.slot_of(written) as usize * ENTRY_BYTES;
                st.ring.write_u64(off, w0);
                st.ring.write_u64(off + 8, w1);
                counters.count_command(cmd.kind());
                written += 1;
            }
            remaining -= chunk as usize;
            // §3.21.2: DSB so the entries are observable before PROD moves.
            hal.publish_barrier();
            st.produced = written;
            Registers::new(hal).write_raw(offset::CMDQ_PROD, self.geometry.pointer_of(st.produced));
        }
        assert!(
            sync_written && cmds.next().is_none(),
            "command iterator length did not match len()"
        );
        Ok(SubmitReceipt {
            first,
            sync: st.produced - 1,
        })
    }

    /// Waits (holding the lock) until at least one slot is free; returns the free count.
    ///
    /// A batch that does not fit is written in pieces as space appears, so a batch longer than
    /// the whole queue still completes.
    fn wait_for_space<H: SmmuHal + ?Sized>(
        &self,
        st: &mut ProducerState,
        hal: &H,
        counters: &Counters,
        remaining: usize,
    ) -> Result<u64, CmdqError> {
        let entries = u64::from(self.geometry.entries());
        let free = |st: &ProducerState| entries - (st.produced - self.consumed());
        if free(st) >= remaining as u64 {
            return Ok(free(st));
        }
        let start = hal.now_ns();
        loop {
            self.refresh(st, hal, counters)?;
            let now_free = free(st);
            if now_free > 0 {
                return Ok(now_free);
            }
            if hal.now_ns().saturating_sub(start) > self.timeout_ns {
                Counters::bump(&counters.timeouts);
                return Err(CmdqError::QueueFullTimeout {
                    prod: self.geometry.pointer_of(st.produced),
                    cons: self.cons_pointer(hal),
                    remaining,
                });
            }
            hal.relax();
        }
    }

    /// Waits until the entry with sequence `seq` has been consumed.
    fn wait_consumed<H: SmmuHal + ?Sized>(
        &self,
        hal: &H,
        counters: &Counters,
        seq: u64,
    ) -> Result<(), CmdqError> {
        let start = hal.now_ns();
        // Completion was observed through an MMIO read of CONS (here or on another CPU); the
        // barrier orders it before whatever the caller does next (e.g. reusing freed pages).
        let done = || {
            hal.consume_barrier();
            Ok(())
        };
        loop {
            if self.consumed.load(Ordering::Acquire) > seq {
                return done();
            }
            if let Some(mut st) = self.state.try_lock() {
                self.refresh(&mut st, hal, counters)?;
                if self.consumed.load(Ordering::Acquire) > seq {
                    return done();
                }
            }
            if hal.now_ns().saturating_sub(start) > self.timeout_ns {
                Counters::bump(&counters.timeouts);
                return Err(CmdqError::SyncTimeout {
                    prod: Registers::new(hal).read(offset::CMDQ_PROD).get()
                        & self.geometry.pointer_mask(),
                    cons: self.cons_pointer(hal),
                    sync_slot: self.geometry.slot_of(seq),
                });
            }
            hal.relax();
        }
    }

    fn cons_pointer<H: SmmuHal + ?Sized>(&self, hal: &H) -> u32 {
        Registers::new(hal).read(offset::CMDQ_CONS).get() & self.geometry.pointer_mask()
    }

    /// Under the lock: reads the SMMU's progress, updates `consumed`, and recovers from an
    /// active command error. Returns whether an error was handled.
    fn refresh<H: SmmuHal + ?Sized>(
        &self,
        st: &mut ProducerState,
        hal: &H,
        counters: &Counters,
    ) -> Result<bool, CmdqError> {
        let regs = Registers::new(hal);
        // GERROR before CONS: see the module docs.
        let gerror = regs.read(offset::GERROR).get();
        let gerrorn = regs.read(offset::GERRORN).get();
        let active = gerror ^ gerrorn;
        if GERROR::SFM_ERR.is_set(active) {
            return Err(CmdqError::ServiceFailure);
        }
        let cons_reg = regs.read(offset::CMDQ_CONS);
        let cons_ptr = cons_reg.get() & self.geometry.pointer_mask();
        let consumed = self
            .geometry
            .consumed_since(st.produced, cons_ptr)
            .map_err(|e| CmdqError::InconsistentCons {
                prod: e.prod,
                cons: e.cons,
            })?;
        self.consumed.fetch_max(consumed, Ordering::AcqRel);
        if !GERROR::CMDQ_ERR.is_set(active) {
            return Ok(false);
        }
        let reason = CommandErrorCode::from_err_field(cons_reg.read(CMDQ_CONS::ERR) as u8);
        if consumed == st.produced {
            log::warn!("SMMU cmdq: CMDQ_ERR active with an empty queue ({reason}); acknowledging");
        } else {
            let off = self.geometry.slot_of(consumed) as usize * ENTRY_BYTES;
            let bad = [st.ring.read_u64(off), st.ring.read_u64(off + 8)];
            let op = bad[0] as u8;
            match reason {
                CommandErrorCode::FetchAbort => {
                    Counters::bump(&counters.command_fetch_aborts);
                    log::warn!("SMMU cmdq: fetch abort at slot {off:#x}; retrying");
                }
                CommandErrorCode::AtcInvalidationSync => {
                    Counters::bump(&counters.atc_sync_errors);
                    log::warn!("SMMU cmdq: ATC invalidation sync failed; retrying the sync");
                }
                CommandErrorCode::Illegal | CommandErrorCode::Unknown(_) => {
                    log::error!(
                        "SMMU cmdq: {} ({op:#04x}) at sequence {consumed} rejected: {reason}; \
                         raw {:#018x} {:#018x}; replacing it with CMD_SYNC",
                        opcode::name(op),
                        bad[0],
                        bad[1]
                    );
                    let [s0, s1] = Command::SYNC.encode();
                    st.ring.write_u64(off, s0);
                    st.ring.write_u64(off + 8, s1);
                    hal.publish_barrier();
                    st.record_rejection(Rejection {
                        seq: consumed,
                        opcode: op,
                        reason,
                    });
                    self.rejections_recorded.fetch_add(1, Ordering::AcqRel);
                    Counters::bump(&counters.commands_rejected);
                }
            }
        }
        // Acknowledge only CMDQ_ERR; command processing restarts at CONS.
        self.acknowledge_gerror(hal, counters, GERROR::CMDQ_ERR::SET.value)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeMap, string::ToString, sync::Arc, thread, vec::Vec};

    use super::*;
    use crate::{
        fake::{Consumption, FakeSmmu, LazyConsumer, enable_cmdq},
        features::IdRegisters,
    };

    const SECOND: u64 = 1_000_000_000;

    fn queue(smmu: &Arc<FakeSmmu>, log2: u8, timeout_ns: u64) -> CommandQueue {
        let q = CommandQueue::new(smmu, QueueGeometry::new(log2).unwrap(), timeout_ns).unwrap();
        enable_cmdq(smmu, &q);
        q
    }

    /// A command that carries a (producer, counter) tag the test can find in the model's log.
    fn tagged(producer: u16, n: u64) -> Command {
        Command::TlbiNhVa {
            asid: producer,
            addr: n << 12,
            leaf: false,
            range: None,
        }
    }

    fn tag_of(raw: [u64; 2]) -> Option<(u16, u64)> {
        (raw[0] as u8 == 0x12).then(|| ((raw[0] >> 48) as u16, raw[1] >> 12))
    }

    #[test]
    fn synchronous_model_batch_ends_with_one_sync() {
        let smmu = FakeSmmu::qemu();
        let q = queue(&smmu, 4, SECOND);
        let c = Counters::default();
        let r = q
            .submit(&smmu, &c, &[Command::CFGI_ALL, Command::TlbiNsnhAll])
            .unwrap();
        assert_eq!(r, SubmitReceipt { first: 0, sync: 2 });
        let ops: Vec<u8> = smmu.log().iter().map(|e| e.opcode()).collect();
        assert_eq!(ops, [0x04, 0x30, 0x46]);
        let s = c.snapshot();
        assert_eq!(
            (s.cfgi, s.tlbi_all, s.sync, s.commands, s.batches),
            (1, 1, 1, 3, 1)
        );
        // An empty batch is just a sync.
        let r = q.submit(&smmu, &c, &[]).unwrap();
        assert_eq!(r, SubmitReceipt { first: 3, sync: 3 });
        assert_eq!(smmu.log().last().unwrap().opcode(), 0x46);
    }

    #[test]
    fn batches_longer_than_the_queue_are_split() {
        for log2 in [1u8, 2, 3] {
            for consumption in [Consumption::Synchronous, Consumption::Deferred] {
                let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, consumption);
                let _lazy = (consumption == Consumption::Deferred)
                    .then(|| LazyConsumer::start(smmu.clone(), 20));
                let q = queue(&smmu, log2, 5 * SECOND);
                let c = Counters::default();
                let mut next = 0u64;
                for len in [0usize, 1, 2, 3, 7, 8, 9, 20] {
                    let cmds: Vec<Command> = (0..len as u64).map(|i| tagged(1, next + i)).collect();
                    let r = q.submit(&smmu, &c, &cmds).unwrap();
                    assert!(smmu.consumed_count() > r.sync);
                    next += len as u64;
                }
                let log = smmu.log();
                let tags: Vec<u64> = log
                    .iter()
                    .filter_map(|e| tag_of(e.raw))
                    .map(|t| t.1)
                    .collect();
                assert_eq!(tags, (0..next).collect::<Vec<_>>(), "queue 2^{log2}");
                assert_eq!(log.iter().filter(|e| e.opcode() == 0x46).count(), 8);
                // Monotonic sequence numbers line up with the model's consumption count.
                assert!(log.iter().enumerate().all(|(i, e)| e.seq == i as u64));
            }
        }
    }

    /// Several producers against a model that consumes slowly on its own thread: no command is
    /// lost or duplicated, each producer's commands stay in order, and a producer returns only
    /// after its own sync (hence all its commands) was consumed.
    #[test]
    fn concurrent_producers_with_a_lazy_consumer() {
        for log2 in [1u8, 2, 3, 6] {
            let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
            let lazy = LazyConsumer::start(smmu.clone(), 30);
            let q = Arc::new(queue(&smmu, log2, 20 * SECOND));
            let c = Arc::new(Counters::default());
            const PRODUCERS: u16 = 4;
            const BATCHES: u64 = 60;
            let handles: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let (smmu, q, c) = (smmu.clone(), q.clone(), c.clone());
                    thread::spawn(move || {
                        let mut next = 0u64;
                        for b in 0..BATCHES {
                            let len = ((b * 7 + u64::from(p)) % 11) as usize;
                            let cmds: Vec<Command> =
                                (0..len as u64).map(|i| tagged(p, next + i)).collect();
                            let r = q.submit(&smmu, &c, &cmds).unwrap();
                            // Our sync was consumed before we returned...
                            assert!(smmu.consumed_count() > r.sync);
                            let log = smmu.log();
                            assert_eq!(log[r.sync as usize].opcode(), 0x46);
                            // ...so every command of ours so far is in the log.
                            next += len as u64;
                            let mine = log
                                .iter()
                                .filter(|e| tag_of(e.raw).is_some_and(|t| t.0 == p))
                                .count() as u64;
                            assert_eq!(mine, next, "producer {p} batch {b}");
                        }
                        next
                    })
                })
                .collect();
            let totals: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            drop(lazy);
            let log = smmu.log();
            let mut per_producer: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
            for e in &log {
                if let Some((p, n)) = tag_of(e.raw) {
                    per_producer.entry(p).or_default().push(n);
                }
            }
            for p in 0..PRODUCERS {
                let got = per_producer.remove(&p).unwrap_or_default();
                assert_eq!(
                    got,
                    (0..totals[p as usize]).collect::<Vec<_>>(),
                    "producer {p}"
                );
            }
            let syncs = log.iter().filter(|e| e.opcode() == 0x46).count() as u64;
            assert_eq!(syncs, u64::from(PRODUCERS) * BATCHES);
            assert_eq!(c.snapshot().batches, u64::from(PRODUCERS) * BATCHES);
            assert_eq!(q.consumed(), log.len() as u64);
        }
    }

    #[test]
    fn illegal_command_is_skipped_and_reported_to_its_submitter() {
        for consumption in [Consumption::Synchronous, Consumption::Deferred] {
            let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, consumption);
            let _lazy = (consumption == Consumption::Deferred)
                .then(|| LazyConsumer::start(smmu.clone(), 10));
            // Model an SMMU that refuses NH_VAA (as QEMU >= 8.1 does for stage-2-only SMMUs).
            smmu.reject_when(|raw| raw[0] as u8 == 0x13);
            let q = queue(&smmu, 3, 5 * SECOND);
            let c = Counters::default();
            let bad = Command::TlbiNhVaa {
                addr: 0xBAD000,
                leaf: false,
                range: None,
            };
            let batch = [tagged(1, 0), tagged(1, 1), bad, tagged(1, 2)];
            let err = q.submit(&smmu, &c, &batch).unwrap_err();
            assert_eq!(
                err,
                CmdqError::Rejected {
                    index: 2,
                    opcode: 0x13,
                    reason: CommandErrorCode::Illegal,
                    batch_len: 4,
                    further_rejections: 0,
                }
            );
            assert!(err.to_string().contains("CMD_TLBI_NH_VAA"), "{err}");
            // The commands before and after the bad one ran; the bad slot became a CMD_SYNC.
            let ops: Vec<u8> = smmu.log().iter().map(|e| e.opcode()).collect();
            assert_eq!(ops, [0x12, 0x12, 0x46, 0x12, 0x46]);
            assert_eq!(smmu.gerror_active(), 0);
            let s = c.snapshot();
            assert_eq!((s.commands_rejected, s.gerrors), (1, 1));
            // The queue keeps working.
            q.submit(&smmu, &c, &[tagged(1, 3)]).unwrap();
            assert_eq!(smmu.log().last().unwrap().opcode(), 0x46);
        }
    }

    #[test]
    fn rejection_goes_to_the_right_submitter_among_many() {
        let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let _lazy = LazyConsumer::start(smmu.clone(), 20);
        smmu.reject_when(|raw| raw[0] as u8 == 0x13);
        let q = Arc::new(queue(&smmu, 2, 20 * SECOND));
        let c = Arc::new(Counters::default());
        let handles: Vec<_> = (0..3u16)
            .map(|p| {
                let (smmu, q, c) = (smmu.clone(), q.clone(), c.clone());
                thread::spawn(move || {
                    let mut rejected = 0;
                    for b in 0..40u64 {
                        let mut cmds = std::vec![tagged(p, 2 * b), tagged(p, 2 * b + 1)];
                        let poisoned = p == 0 && b % 5 == 0;
                        if poisoned {
                            cmds.insert(
                                1,
                                Command::TlbiNhVaa {
                                    addr: 0,
                                    leaf: true,
                                    range: None,
                                },
                            );
                        }
                        match q.submit(&smmu, &c, &cmds) {
                            Ok(_) => assert!(!poisoned, "producer {p} batch {b}"),
                            Err(CmdqError::Rejected {
                                index: 1,
                                opcode: 0x13,
                                ..
                            }) => {
                                assert!(poisoned);
                                rejected += 1;
                            }
                            Err(e) => panic!("producer {p}: {e}"),
                        }
                    }
                    rejected
                })
            })
            .collect();
        let rejected: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(rejected, [8, 0, 0]);
        assert_eq!(c.snapshot().commands_rejected, 8);
    }

    #[test]
    fn fetch_abort_is_retried() {
        let smmu = FakeSmmu::qemu();
        let q = queue(&smmu, 3, SECOND);
        let c = Counters::default();
        smmu.abort_fetches
            .store(2, core::sync::atomic::Ordering::SeqCst);
        q.submit(&smmu, &c, &[tagged(0, 0)]).unwrap();
        let ops: Vec<u8> = smmu.log().iter().map(|e| e.opcode()).collect();
        assert_eq!(ops, [0x12, 0x46]);
        let s = c.snapshot();
        assert_eq!(
            (s.command_fetch_aborts, s.commands_rejected, s.gerrors),
            (2, 0, 2)
        );
    }

    #[test]
    fn atc_invalidation_sync_failure_leaves_the_sync_to_be_retried() {
        let smmu = FakeSmmu::qemu();
        let q = queue(&smmu, 2, SECOND);
        let c = Counters::default();
        smmu.atc_sync_failures
            .store(1, core::sync::atomic::Ordering::SeqCst);
        q.submit(&smmu, &c, &[tagged(0, 0)]).unwrap();
        let ops: Vec<u8> = smmu.log().iter().map(|e| e.opcode()).collect();
        assert_eq!(ops, [0x12, 0x46], "the same sync completed on retry");
        let s = c.snapshot();
        assert_eq!(
            (s.atc_sync_errors, s.commands_rejected, s.gerrors),
            (1, 0, 1)
        );
    }

    #[test]
    fn waits_time_out_with_typed_errors() {
        // Nothing consumes: the sync wait times out...
        let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let q = queue(&smmu, 2, 2_000_000);
        let c = Counters::default();
        let err = q.submit(&smmu, &c, &[tagged(0, 0)]).unwrap_err();
        assert_eq!(
            err,
            CmdqError::SyncTimeout {
                prod: 2,
                cons: 0,
                sync_slot: 1
            }
        );
        // ...and once the queue is full, waiting for space does too.
        let err = q
            .submit(&smmu, &c, &[tagged(0, 1), tagged(0, 2), tagged(0, 3)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                CmdqError::QueueFullTimeout {
                    prod: 4,
                    cons: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(c.snapshot().timeouts, 2);
        // Once the SMMU catches up, the queue is usable again. The consumer is a thread, and
        // this queue's 2 ms timeout is shorter than a scheduling delay on a loaded host: a
        // sync that times out here is retried (its commands stay queued and are consumed
        // later); what must hold is that a sync completes and nothing is reported broken.
        smmu.consume(usize::MAX);
        let _lazy = LazyConsumer::start(smmu.clone(), 0);
        let mut result = q.submit(&smmu, &c, &[tagged(0, 9)]);
        for _ in 0..200 {
            match result {
                Err(CmdqError::SyncTimeout { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    result = q.submit(&smmu, &c, &[]);
                }
                _ => break,
            }
        }
        result.unwrap();
    }

    #[test]
    fn service_failure_and_inconsistent_cons_are_reported() {
        let smmu = FakeSmmu::new(IdRegisters::QEMU_7_2, Consumption::Deferred);
        let q = queue(&smmu, 2, SECOND);
        let c = Counters::default();
        smmu.set(0x9C, 0b110); // CONS "ahead" of PROD = 0
        assert_eq!(
            q.submit(&smmu, &c, &[]).unwrap_err(),
            CmdqError::InconsistentCons {
                prod: 1,
                cons: 0b110
            }
        );
        smmu.set(0x60, 1 << 8); // GERROR.SFM_ERR
        assert_eq!(q.recover(&smmu, &c).unwrap_err(), CmdqError::ServiceFailure);
    }
}
