//! On-target tests of the SMMUv3 driver against QEMU's model (issue "SMMUv3 driver").
//!
//! Why on the target: the `smmu` crate's host tests run against fake SMMUs written from the
//! specification; these check that the same code drives a real implementation — QEMU 7.2's
//! `virt,iommu=smmuv3` — the way the specification (Arm IHI 0070 G.b) says, with the only
//! DMA master there is, QEMU's `edu` (StreamID 0x8 on the default machine).
//!
//! What is checked, and how it is made observable:
//!
//! - **Bring-up** (§6.3: `CR0`/`CR0ACK`, `GERROR`/`GERRORN`, the queue and stream-table base
//!   registers, `IRQ_CTRL`): the registers after `Smmu::init` and the command counters of the
//!   init batch.
//! - **Stream tables** (§3.3.1, §6.3.24/§6.3.25): the harness boots the suite with
//!   `smmu.strtab=linear` and with the default (2-level); the tests assert which format the
//!   driver and `STRTAB_BASE_CFG` report, then walk the table *from the registers* — as the
//!   SMMU does — for a sparse StreamID (0xFF08, no device) and for edu's, and compare with what
//!   the driver says it wrote.
//! - **Command errors** (§7.1): a reserved opcode ([`Command::Raw`]) in the middle of a batch.
//!   QEMU stops on it with `CMDQ_CONS.ERR = CERROR_ILL` and `GERROR.CMDQ_ERR`; the driver must
//!   skip it, acknowledge the error and report the index. That the commands *before* it took
//!   effect is shown with the IOTLB: a stale read-only entry (left by a permission upgrade the
//!   SMMU was not told about) makes a device write fault until the batch's `CMD_TLBI_NH_VA`
//!   removes it.
//! - **Configuration errors** (§7.3.4 `C_BAD_STE`, §7.3.10 `C_BAD_CD`): the STE and CD of a
//!   bound device are corrupted in memory (values the driver's builders refuse to produce),
//!   invalidated, and a DMA must fail with those events — one per 4-byte access, as QEMU does
//!   not cache failed decodes — then work again once the entries are restored.
//! - **Event-queue overflow** (§7.4; QEMU signals it with `GERROR.EVENTQ_ABT_ERR`, hardware
//!   with `EVENTQ_PROD.OVFLG`): faulting DMAs fill the queue while nothing drains it, the
//!   overflow must be detected, acknowledged and counted, and the next fault recorded again.
//!
//! Every direct call into the driver runs with IRQs masked, as the IOMMU glue does: the
//! driver's locks are not interrupt-safe and the SMMU's interrupt handlers call into it.

use super::{Iommu, hal::KernelSmmuHal};
use crate::{
    cpu,
    drivers::{
        dma::{DmaFault, DmaFaultKind},
        edu::{DmaError, DmaReg, EduDevice, EduRegs, Transfer},
        timer,
    },
    kassert, kassert_eq,
    ktest::{TestFailure, TestResult},
    mm::{PhysAddr, pgtable::Perms, tlb::SecondaryTlbMode},
    testkit::{Frames, IOVA_BASE, Rig},
};
use alloc::{format, string::String, sync::Arc};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use smmu::{
    CdParams, CmdqError, Command, EventType, Granule, SmmuError, SmmuHal, StrtabFormat,
    cd::{Cacheability, Shareability},
    cmdq::CommandErrorCode,
    regs::{Registers, offset},
    ste::{self, SteConfig, SteState},
};

/// Bytes moved by the short probe transfers (16 four-byte accesses).
const LEN: u32 = 64;
/// A reserved command opcode (§4.1.1): the SMMU must reject it with `CERROR_ILL`.
const RESERVED_OPCODE: u64 = 0x7F;
/// A StreamID no device uses, in the last level-2 span of a 16-bit table.
const SPARSE_SID: u32 = 0xFF08;

/// Commands this module rejected on purpose, so the bring-up test can tell them apart from
/// rejections of the driver's own commands.
static DELIBERATE_REJECTIONS: AtomicU64 = AtomicU64::new(0);

fn iommu() -> Result<&'static Iommu, TestFailure> {
    super::get().ok_or_else(|| "no SMMU: the kernel found no arm,smmu-v3 node".into())
}

fn regs(iommu: &Iommu) -> Registers<'_, KernelSmmuHal> {
    Registers::new(iommu.smmu().hal())
}

/// `f` with IRQs masked on this CPU (see the module docs).
fn masked<R>(f: impl FnOnce() -> R) -> R {
    let was = cpu::irq_save();
    let r = f();
    cpu::irq_restore(was);
    r
}

fn active_gerrors(iommu: &Iommu) -> u32 {
    let r = regs(iommu);
    r.read(offset::GERROR).get() ^ r.read(offset::GERRORN).get()
}

fn phys_read(pa: u64) -> u64 {
    // SAFETY: `pa` is an 8-byte-aligned word of an SMMU structure (stream table, STE, CD) that
    // the driver allocated from RAM, which the linear window maps for the kernel's lifetime;
    // volatile because the SMMU shares it.
    unsafe { (PhysAddr(pa).to_virt().0 as *const u64).read_volatile() }
}

fn phys_write(pa: u64, value: u64) {
    // SAFETY: as in `phys_read`; the tests write only words of a STE or CD they saved first and
    // restore, followed by the configuration invalidation the architecture requires (§4.3).
    unsafe { (PhysAddr(pa).to_virt().0 as *mut u64).write_volatile(value) }
}

fn phys_entry(pa: u64) -> [u64; 8] {
    core::array::from_fn(|i| phys_read(pa + 8 * i as u64))
}

/// Bits [55:6] of a table address field (`STRTAB_BASE.ADDR`, `L2Ptr`, `S1ContextPtr`).
const ADDR_55_6: u64 = 0x00FF_FFFF_FFFF_FFC0;

/// Where the SMMU finds the STE of a StreamID, worked out from the registers and memory alone.
#[derive(Debug)]
struct SteLocation {
    format: StrtabFormat,
    /// `STRTAB_BASE_CFG.LOG2SIZE`.
    sid_bits: u32,
    /// Physical address of the STE, `None` when no level-2 table covers the StreamID.
    ste: Option<u64>,
    /// 2-level: the level-1 descriptor.
    l1_desc: Option<u64>,
}

/// Walk the stream table the way the SMMU does (§3.3.1): `STRTAB_BASE`, `STRTAB_BASE_CFG`,
/// then for 2-level the level-1 descriptor's `L2Ptr` and `Span`.
fn locate_ste(iommu: &Iommu, sid: u32) -> Result<SteLocation, String> {
    let r = regs(iommu);
    let base = iommu.smmu().hal().read64(offset::STRTAB_BASE.offset()) & ADDR_55_6;
    let cfg = r.read(offset::STRTAB_BASE_CFG).get();
    let (log2size, split, fmt) = (cfg & 0x3F, (cfg >> 6) & 0x1F, (cfg >> 16) & 3);
    if u64::from(sid) >> log2size != 0 {
        return Err(format!(
            "StreamID {sid:#x} outside the {log2size}-bit stream table"
        ));
    }
    match fmt {
        0 => Ok(SteLocation {
            format: StrtabFormat::Linear,
            sid_bits: log2size,
            ste: Some(base + u64::from(sid) * 64),
            l1_desc: None,
        }),
        1 => {
            let desc = phys_read(base + u64::from(sid >> split) * 8);
            let span = (desc & 0x1F) as u32;
            let index = u64::from(sid & ((1 << split) - 1));
            let ste =
                (span != 0 && index >> (span - 1) == 0).then(|| (desc & ADDR_55_6) + index * 64);
            Ok(SteLocation {
                format: StrtabFormat::TwoLevel,
                sid_bits: log2size,
                ste,
                l1_desc: Some(desc),
            })
        }
        other => Err(format!("STRTAB_BASE_CFG.FMT = {other} is reserved")),
    }
}

/// Run `transfer` on `edu` behind the driver's back — no fault watch (so no drain of the event
/// queue), no completion interrupt — and wait for the device to clear RUN. For the overflow
/// test, which must keep the event queue undrained across several transfers.
fn raw_transfer(edu: &EduDevice, transfer: Transfer) -> Result<(), String> {
    transfer
        .validate(edu.settings().dma_mask)
        .map_err(|e| format!("{transfer}: {e}"))?;
    let regs = edu.regs();
    let running = || regs.read_dma(DmaReg::Cmd) & 1 != 0;
    if running() {
        return Err(format!("edu {}: a transfer is still running", edu.bdf()));
    }
    let program = transfer.program(false);
    cpu::dsb_sy();
    regs.write_dma(DmaReg::Src, program.src);
    regs.write_dma(DmaReg::Dst, program.dst);
    regs.write_dma(DmaReg::Count, program.count);
    regs.write_dma(DmaReg::Cmd, program.cmd);
    if timer::wait_until(edu.settings().timeout_ns, || !running()) {
        cpu::dsb_sy();
        Ok(())
    } else {
        Err(format!("edu {}: {transfer} did not complete", edu.bdf()))
    }
}

fn fault_of(r: Result<(), DmaError>, what: &str) -> Result<DmaFault, String> {
    match r {
        Err(DmaError::Fault { fault, .. }) => Ok(fault),
        Ok(()) => Err(format!("{what}: completed without an SMMU event")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

crate::ktest! {
    /// After `Smmu::init`: CR0ACK == CR0 with SMMUEN | EVENTQEN | CMDQEN, no global error,
    /// an idle command queue, a stream table, both queues and the wired interrupts programmed,
    /// and the init batch (CFGI_ALL + TLBI_NSNH_ALL + CMD_SYNC) consumed without a rejection.
    fn bring_up_invariants_hold() {
        bring_up()
    }
}

fn bring_up() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    kassert_eq!(smmu.check_invariants(), Ok(()));
    let r = regs(iommu);
    let cr0 = r.read(offset::CR0).get();
    kassert_eq!(r.read(offset::CR0ACK).get(), cr0, "CR0ACK");
    kassert_eq!(
        cr0 & 0b1101,
        0b1101,
        "CR0 {:#x}: SMMUEN | EVENTQEN | CMDQEN",
        cr0
    );
    kassert_eq!(active_gerrors(iommu), 0, "GERROR ^ GERRORN");
    let cmdq_base = smmu.hal().read64(offset::CMDQ_BASE.offset());
    let eventq_base = smmu.hal().read64(offset::EVENTQ_BASE.offset());
    kassert!(
        cmdq_base & ADDR_55_6 != 0 && eventq_base & ADDR_55_6 != 0,
        "queue bases {:#x} {:#x}",
        cmdq_base,
        eventq_base
    );
    let mask = (2u32 << (cmdq_base & 0x1F)) - 1;
    let prod = r.read(offset::CMDQ_PROD).get() & mask;
    let cons = r.read(offset::CMDQ_CONS).get() & mask;
    kassert_eq!(cons, prod, "CMDQ_CONS == CMDQ_PROD (index | wrap)");
    kassert!(
        smmu.hal().read64(offset::STRTAB_BASE.offset()) & ADDR_55_6 != 0,
        "STRTAB_BASE"
    );
    let irq = r.read(offset::IRQ_CTRL).get();
    kassert_eq!(r.read(offset::IRQ_CTRLACK).get(), irq, "IRQ_CTRLACK");
    kassert_eq!(
        irq & 0b101,
        0b101,
        "IRQ_CTRL {:#x}: GERROR_IRQEN | EVENTQ_IRQEN",
        irq
    );
    let s = smmu.stats();
    kassert!(
        s.cfgi >= 1 && s.tlbi_all >= 1 && s.sync >= 1,
        "init commands: {}",
        s
    );
    kassert_eq!(
        s.sync,
        s.batches,
        "every batch ends with exactly one CMD_SYNC: {}",
        s
    );
    kassert_eq!(
        s.commands_rejected,
        DELIBERATE_REJECTIONS.load(Ordering::Relaxed),
        "commands rejected besides the tests' deliberate ones: {}",
        s
    );
    kassert_eq!(s.command_fetch_aborts, 0, "{}", s);
    log::info!(
        "SMMU up: CR0 {cr0:#x}, cmdq 2^{}, eventq 2^{}, {:?} stream table; counters {s}",
        cmdq_base & 0x1F,
        eventq_base & 0x1F,
        smmu.strtab_layout().map(|l| l.format)
    );
    Ok(())
}

crate::ktest! {
    /// The stream-table format is the one the boot argument `smmu.strtab` asks for (default:
    /// the driver's choice, 2-level on QEMU), the driver and `STRTAB_BASE_CFG` agree, and the
    /// table the SMMU walks for edu's StreamID holds what the driver says it holds.
    fn stream_table_format_matches_bootarg_and_registers() {
        table_format()
    }
}

fn table_format() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    let layout = smmu.strtab_layout().map_err(|e| format!("{e}"))?;
    let requested = crate::init::config().smmu_strtab;
    let expected = match requested {
        Some(format) => format,
        None if smmu.features().two_level_strtab && layout.sid_bits > smmu::strtab::SPLIT => {
            StrtabFormat::TwoLevel
        }
        None => StrtabFormat::Linear,
    };
    log::info!(
        "stream table: {:?}, {} StreamID bits (smmu.strtab={:?})",
        layout.format,
        layout.sid_bits,
        requested
    );
    kassert_eq!(
        layout.format,
        expected,
        "driver's format for smmu.strtab={:?}",
        requested
    );
    let cfg = regs(iommu).read(offset::STRTAB_BASE_CFG).get();
    kassert_eq!(cfg, layout.base_cfg_value(), "STRTAB_BASE_CFG");
    let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
    let sid = rig.edu.stream_id().ok_or("edu has no StreamID")?;
    let loc = locate_ste(iommu, sid)?;
    kassert_eq!(loc.format, layout.format);
    kassert_eq!(loc.sid_bits, u32::from(layout.sid_bits));
    let ste_pa = loc.ste.ok_or("edu's StreamID has no level-2 table")?;
    let words = phys_entry(ste_pa);
    let driver = masked(|| smmu.ste_state(sid)).map_err(|e| format!("{e}"))?;
    kassert_eq!(
        Some(ste::decode(&words)),
        driver,
        "STE of {:#x} at {:#x}",
        sid,
        ste_pa
    );
    let Some(SteState::Known(SteConfig::Stage1 { cd_phys })) = driver else {
        return Err(format!("bound StreamID {sid:#x} is not stage 1: {driver:?}").into());
    };
    let cd = CdParams::decode(&phys_entry(cd_phys)).ok_or("edu's CD does not decode")?;
    kassert_eq!(
        cd.ttb0,
        rig.space.root().0,
        "CD.TTB0 is the address space's root table"
    );
    kassert_eq!(
        cd.asid,
        rig.space.asid(),
        "CD.ASID is the address space's ASID"
    );
    // And the device translates through it.
    let p = Frames::page()?;
    p.fill(0, LEN as usize, 0x5C);
    rig.map(IOVA_BASE, p.pa(0), 1, Perms::RW)?;
    rig.device_reads(IOVA_BASE, LEN)
        .map_err(|e| format!("{e}"))?;
    kassert!(
        rig.device_buffer(LEN)?.iter().all(|&b| b == 0x5C),
        "edu read the wrong data"
    );
    Ok(())
}

/// A context for a StreamID no device uses: its own (empty) top-level table, a spare ASID.
fn spare_context(iommu: &Iommu, table: &Frames) -> CdParams {
    let features = iommu.smmu().features();
    CdParams {
        asid: ((1u32 << features.asid_bits()) - 2) as u16,
        ttb0: table.pa(0).0,
        t0sz: 16,
        granule: Granule::Size4K,
        ips: features.oas,
        mair: crate::mm::pgtable::MAIR_EL1_VALUE,
        walk_inner: Cacheability::WriteBackAllocate,
        walk_outer: Cacheability::WriteBackAllocate,
        walk_shareability: Shareability::InnerShareable,
        tbi0: false,
        affd: false,
        record_faults: true,
        walks_disabled: false,
    }
}

crate::ktest! {
    /// A stage-1 context on StreamID 0xFF08 (no device) lands where the SMMU will look for it
    /// in the active format: linear — base + SID × 64; 2-level — a level-2 table allocated on
    /// demand for span 0xFF only, the spans in between left empty. Removing it leaves an
    /// abort STE and no CD.
    fn sparse_stream_id_in_the_active_table_format() {
        sparse_sid()
    }
}

fn sparse_sid() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    let layout = smmu.strtab_layout().map_err(|e| format!("{e}"))?;
    kassert!(
        layout.contains(SPARSE_SID),
        "{:?} does not cover {:#x}",
        layout,
        SPARSE_SID
    );
    let before = masked(|| smmu.ste_state(SPARSE_SID)).map_err(|e| format!("{e}"))?;
    match layout.format {
        StrtabFormat::Linear => kassert_eq!(before, Some(SteState::Known(SteConfig::Abort))),
        StrtabFormat::TwoLevel => kassert_eq!(before, None, "level-2 table before first use"),
    }
    let table = Frames::page()?;
    let params = spare_context(iommu, &table);
    masked(|| smmu.install_stage1(SPARSE_SID, &params)).map_err(|e| format!("install: {e}"))?;

    let state = masked(|| smmu.ste_state(SPARSE_SID)).map_err(|e| format!("{e}"))?;
    let Some(SteState::Known(SteConfig::Stage1 { cd_phys })) = state else {
        return Err(format!("STE of {SPARSE_SID:#x} after install: {state:?}").into());
    };
    kassert_eq!(
        masked(|| smmu.context(SPARSE_SID)).map_err(|e| format!("{e}"))?,
        Some(params)
    );
    let loc = locate_ste(iommu, SPARSE_SID)?;
    kassert_eq!(loc.format, layout.format);
    let ste_pa = loc
        .ste
        .ok_or("the SMMU would not find the STE (no level-2 table)")?;
    kassert_eq!(
        phys_entry(ste_pa),
        ste::build(SteConfig::Stage1 { cd_phys }),
        "STE in memory"
    );
    kassert_eq!(phys_entry(cd_phys), params.build(), "CD in memory");
    let neighbour = locate_ste(iommu, SPARSE_SID + 1)?
        .ste
        .ok_or("no STE for 0xFF09")?;
    kassert_eq!(
        phys_entry(neighbour),
        ste::ABORT,
        "StreamID 0xFF09 still aborts"
    );
    match layout.format {
        StrtabFormat::Linear => {
            let base = smmu.hal().read64(offset::STRTAB_BASE.offset()) & ADDR_55_6;
            kassert_eq!(
                ste_pa,
                base + u64::from(SPARSE_SID) * 64,
                "linear STE address"
            );
        }
        StrtabFormat::TwoLevel => {
            let desc = loc.l1_desc.unwrap_or(0);
            kassert_eq!(
                desc & 0x1F,
                u64::from(smmu::strtab::SPLIT) + 1,
                "L1 Span of 0xFF"
            );
            let hole = locate_ste(iommu, 0x7F08)?;
            kassert_eq!(
                hole.l1_desc.map(|d| d & 0x1F),
                Some(0),
                "span 0x7F stays empty"
            );
            kassert!(hole.ste.is_none());
        }
    }
    log::info!(
        "StreamID {SPARSE_SID:#x} in the {:?} table: STE at {ste_pa:#x}, CD at {cd_phys:#x}",
        layout.format
    );

    masked(|| smmu.set_abort(SPARSE_SID)).map_err(|e| format!("set_abort: {e}"))?;
    kassert_eq!(
        masked(|| smmu.ste_state(SPARSE_SID)).map_err(|e| format!("{e}"))?,
        Some(SteState::Known(SteConfig::Abort))
    );
    kassert_eq!(
        masked(|| smmu.context(SPARSE_SID)).map_err(|e| format!("{e}"))?,
        None
    );
    kassert_eq!(phys_entry(ste_pa), ste::ABORT);
    kassert_eq!(smmu.check_invariants(), Ok(()));
    Ok(())
}

crate::ktest! {
    /// [TLBI_NH_VA(X), reserved opcode, TLBI_NH_VA(Y)]: the submit names command 1 and its
    /// opcode; GERROR.CMDQ_ERR is acknowledged; exactly one rejection is counted; the queue
    /// keeps working; and both TLBIs ran — the stale read-only IOTLB entries of X and Y (the
    /// PTEs were made writable without telling the SMMU) are gone, so device writes succeed
    /// where, just before, they faulted.
    fn illegal_command_mid_batch_is_reported_and_recovered() {
        illegal_command()
    }
}

fn illegal_command() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    let rig = Rig::new(0, SecondaryTlbMode::Off)?;
    let asid = rig.space.asid();
    let p = Frames::alloc(2, crate::mm::PAGE_SIZE)?;
    p.fill(0, 2 * 4096, 0x11);
    let x = IOVA_BASE + 0x10_0000;
    let y = x + 0x1000;
    rig.map(x, p.pa(0), 2, Perms::R)?;
    for va in [x, y] {
        rig.device_reads(va, LEN)
            .map_err(|e| format!("caching {va:#x}: {e}"))?;
    }
    rig.load_device(0x22, LEN)?;
    // Secondary mode `off`: only the CPU's TLB hears about this.
    rig.protect(x, 2, Perms::RW)?;
    for va in [x, y] {
        let f = fault_of(rig.device_writes(va, LEN), "write through the stale entry")
            .map_err(|e| format!("negative control failed, the test would be blind: {e}"))?;
        kassert_eq!(
            f.kind,
            DmaFaultKind::Permission,
            "stale read-only entry at {:#x}",
            va
        );
    }
    kassert!(p.holds(0, 2 * 4096, 0x11), "a faulted write changed memory");

    let before = smmu.stats();
    DELIBERATE_REJECTIONS.fetch_add(1, Ordering::Relaxed);
    let batch = [
        Command::TlbiNhVa {
            asid,
            addr: x,
            leaf: true,
            range: None,
        },
        Command::Raw([RESERVED_OPCODE | (0xBAD << 32), 0]),
        Command::TlbiNhVa {
            asid,
            addr: y,
            leaf: true,
            range: None,
        },
    ];
    let result = masked(|| smmu.submit(&batch));
    let gerrors_after = active_gerrors(iommu);
    let d = smmu.stats().delta(&before);
    let err = match result {
        Err(e) => e,
        Ok(()) => return Err("a batch with a reserved opcode was accepted".into()),
    };
    let message = format!("{err}");
    log::info!("rejected as expected: {message}");
    kassert!(
        matches!(
            err,
            SmmuError::Cmdq(CmdqError::Rejected {
                index: 1,
                opcode: 0x7F,
                reason: CommandErrorCode::Illegal,
                batch_len: 3,
                further_rejections: 0,
            })
        ),
        "{err:?}"
    );
    kassert!(message.contains("commands 0..1 completed"), "{}", message);
    kassert_eq!(gerrors_after, 0, "GERROR ^ GERRORN after the recovery");
    kassert_eq!(
        (d.commands_rejected, d.raw, d.tlbi_nh_va),
        (1, 1, 2),
        "{}",
        d
    );
    kassert!(d.gerrors >= 1, "CMDQ_ERR acknowledged: {}", d);
    kassert_eq!(smmu.check_invariants(), Ok(()));

    let sid = rig.edu.stream_id().ok_or("no StreamID")?;
    masked(|| smmu.submit(&[Command::PrefetchConfig { sid }]))
        .map_err(|e| format!("the queue does not work after the recovery: {e}"))?;
    kassert_eq!(
        smmu.stats().delta(&before).commands_rejected,
        1,
        "the following batch was rejected too"
    );
    for (va, off) in [(x, 0), (y, 4096)] {
        rig.device_writes(va, LEN).map_err(|e| {
            format!(
                "write at {va:#x} still faults: the TLBI around the bad command did not run: {e}"
            )
        })?;
        kassert!(
            p.holds(off, LEN as usize, 0x22),
            "write at {:#x} did not land",
            va
        );
    }
    Ok(())
}

crate::ktest! {
    /// A bound device's CD with A = 0, then with T0SZ = 8, then its STE with V = 0 (entries the
    /// driver's builders never produce, written into table memory and invalidated with
    /// CFGI_CD / CFGI_STE): each 64-byte DMA fails with 16 C_BAD_CD (0x0A) or C_BAD_STE (0x04)
    /// records — QEMU does not cache failed decodes — reported as the transfer's fault; the
    /// aborted read leaves zeros; restoring the entry makes the same DMA work again.
    fn bad_ste_and_bad_cd_raise_config_events_and_recover() {
        bad_entries()
    }
}

fn bad_entries() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
    let sid = rig.edu.stream_id().ok_or("no StreamID")?;
    let p = Frames::page()?;
    p.fill(0, 4096, 0x6B);
    let x = IOVA_BASE + 0x20_0000;
    rig.map(x, p.pa(0), 1, Perms::R)?;
    rig.device_reads(x, LEN)
        .map_err(|e| format!("baseline read: {e}"))?;
    kassert!(
        rig.device_buffer(LEN)?.iter().all(|&b| b == 0x6B),
        "baseline data"
    );

    let state = masked(|| smmu.ste_state(sid)).map_err(|e| format!("{e}"))?;
    let Some(SteState::Known(SteConfig::Stage1 { cd_phys })) = state else {
        return Err(format!("StreamID {sid:#x} is not stage 1: {state:?}").into());
    };
    let ste_pa = locate_ste(iommu, sid)?.ste.ok_or("no STE for edu")?;
    let good_ste = phys_entry(ste_pa);
    kassert_eq!(
        good_ste,
        ste::build(SteConfig::Stage1 { cd_phys }),
        "the SMMU's STE"
    );
    let good_cd = masked(|| smmu.context(sid)).map_err(|e| format!("{e}"))?;
    let cd0 = phys_read(cd_phys);
    let ste0 = good_ste[0];
    let cfgi_cd = Command::CfgiCd {
        sid,
        ssid: 0,
        leaf: true,
    };
    let cfgi_ste = Command::CfgiSte { sid, leaf: true };
    let cases = [
        (
            "CD.A = 0",
            cd_phys,
            cd0 & !(1 << 46),
            cfgi_cd,
            EventType::BadCd,
        ),
        (
            "CD.T0SZ = 8",
            cd_phys,
            (cd0 & !0x3F) | 8,
            cfgi_cd,
            EventType::BadCd,
        ),
        ("STE.V = 0", ste_pa, ste0 & !1, cfgi_ste, EventType::BadSte),
    ];
    let (unclaimed_before, _) = iommu.event_counts();
    for (what, pa, bad, cfgi, expected) in cases {
        let good = phys_read(pa);
        phys_write(pa, bad);
        let corrupted = masked(|| smmu.submit(&[cfgi]));
        let r = rig.device_reads(x, LEN);
        phys_write(pa, good);
        let restored = masked(|| smmu.submit(&[cfgi]));
        corrupted.map_err(|e| format!("{what}: {e}"))?;
        restored.map_err(|e| format!("{what}: restoring: {e}"))?;
        let f = fault_of(r, what)?;
        kassert_eq!(
            f.kind,
            DmaFaultKind::Other(expected.code()),
            "{}: {}",
            what,
            f
        );
        kassert_eq!(f.count, LEN / 4, "{}: one record per 4-byte access", what);
        kassert_eq!((f.stream_id, f.iova, f.write), (sid, x, false), "{}", what);
        kassert!(
            rig.device_buffer(LEN)?.iter().all(|&b| b == 0),
            "{}: aborted read left data",
            what
        );
        rig.device_reads(x, LEN)
            .map_err(|e| format!("{what}: after restoring: {e}"))?;
        kassert!(
            rig.device_buffer(LEN)?.iter().all(|&b| b == 0x6B),
            "{}: data after restoring",
            what
        );
        log::info!("{what}: {f}; restored");
    }
    kassert_eq!(
        iommu.event_counts().0,
        unclaimed_before,
        "events nobody claimed"
    );
    kassert_eq!(phys_entry(ste_pa), good_ste);
    kassert_eq!(
        masked(|| smmu.context(sid)).map_err(|e| format!("{e}"))?,
        good_cd
    );
    kassert_eq!(smmu.check_invariants(), Ok(()));
    Ok(())
}

crate::ktest! {
    /// Faulting 4095-byte reads (1024 F_TRANSLATION records each, one per 4-byte access) while
    /// nothing drains the queue (IRQs masked, no fault watch) until more records were produced
    /// than it holds: the overflow shows as GERROR.EVENTQ_ABT_ERR (QEMU) or EVENTQ_PROD.OVFLG
    /// (architecture); draining delivers exactly a queue's worth, acknowledges it, counts the
    /// loss; and the next fault is recorded and reported again.
    fn event_queue_overflow_is_detected_and_recording_resumes() {
        overflow()
    }
}

fn overflow() -> TestResult {
    let iommu = iommu()?;
    let smmu = iommu.smmu();
    let rig = Rig::new(0, SecondaryTlbMode::Sync)?;
    let sid = rig.edu.stream_id().ok_or("no StreamID")?;
    let r = regs(iommu);
    let log2 = (smmu.hal().read64(offset::EVENTQ_BASE.offset()) & 0x1F) as u32;
    let entries = 1u32 << log2;
    let len = crate::drivers::edu::MAX_TRANSFER;
    let per_transfer = len.div_ceil(4);
    let transfers = entries / per_transfer + 1;
    kassert!(
        transfers <= 64,
        "event queue of 2^{} entries is too large to fill",
        log2
    );
    let u = IOVA_BASE + 0x40_0000;

    let seen = Arc::new(AtomicU32::new(0));
    let strays = Arc::new(AtomicU32::new(0));
    {
        let (seen, strays) = (seen.clone(), strays.clone());
        iommu.set_event_handler(
            sid,
            Some(Arc::new(move |ev: &smmu::Event| {
                let ours = ev.kind == EventType::Translation
                    && ev
                        .input_addr
                        .is_some_and(|a| a >= u && a < u + u64::from(len));
                if ours { &seen } else { &strays }.fetch_add(1, Ordering::Relaxed);
            })),
        );
    }
    let before = smmu.stats();
    let (_, lost_before) = iommu.event_counts();
    let was = cpu::irq_save();
    let mut ran = Ok(());
    for _ in 0..transfers {
        ran = raw_transfer(
            &rig.edu,
            Transfer {
                direction: crate::drivers::edu::Direction::ToDevice,
                iova: u,
                buffer_offset: 0,
                len,
            },
        );
        if ran.is_err() {
            break;
        }
    }
    let active = active_gerrors(iommu);
    let prod = r.read(offset::EVENTQ_PROD).get();
    let cons = r.read(offset::EVENTQ_CONS).get();
    iommu.drain_events();
    let active_after = active_gerrors(iommu);
    let (prod_after, cons_after) = (
        r.read(offset::EVENTQ_PROD).get(),
        r.read(offset::EVENTQ_CONS).get(),
    );
    cpu::irq_restore(was);
    iommu.set_event_handler(sid, None);
    ran?;

    let ptr = (2 << log2) - 1;
    let abt = active & (1 << 2) != 0;
    let ovflg = (prod >> 31) != (cons >> 31);
    log::info!(
        "{transfers} x {len}-byte faulting reads into a 2^{log2} event queue: PROD {prod:#x} \
         CONS {cons:#x}, GERROR^GERRORN {active:#x} (EVENTQ_ABT_ERR {abt}, OVFLG {ovflg})"
    );
    kassert_eq!(prod & ptr, (cons & ptr) ^ entries, "the queue was full");
    kassert!(
        abt || ovflg,
        "overflow not signalled (GERROR^GERRORN {:#x})",
        active
    );
    kassert_eq!(
        active_after & (1 << 2),
        0,
        "EVENTQ_ABT_ERR acknowledged after the drain"
    );
    kassert_eq!(
        prod_after >> 31,
        cons_after >> 31,
        "OVACKFLG == OVFLG after the drain"
    );
    kassert_eq!(prod_after & ptr, cons_after & ptr, "the queue drained");
    kassert_eq!(
        seen.load(Ordering::Relaxed),
        entries,
        "records delivered: a queue's worth"
    );
    kassert_eq!(strays.load(Ordering::Relaxed), 0, "unexpected records");
    let d = smmu.stats().delta(&before);
    kassert_eq!(d.events, u64::from(entries), "{}", d);
    kassert!(d.event_overflows >= 1, "overflow not counted: {}", d);
    kassert_eq!(iommu.event_counts().1 - lost_before, 1, "lost-events count");
    kassert_eq!(smmu.check_invariants(), Ok(()));

    // Recording resumes: the next fault is seen, whole.
    let f = fault_of(rig.device_reads(u, LEN), "read after the overflow")?;
    kassert_eq!(
        (f.kind, f.iova, f.count),
        (DmaFaultKind::Translation, u, LEN / 4),
        "{}",
        f
    );
    let p = Frames::page()?;
    p.fill(0, LEN as usize, 0x4D);
    rig.map(u, p.pa(0), 1, Perms::R)?;
    rig.device_reads(u, LEN)
        .map_err(|e| format!("good read after the overflow: {e}"))?;
    kassert!(
        rig.device_buffer(LEN)?.iter().all(|&b| b == 0x4D),
        "data after the overflow"
    );
    Ok(())
}
