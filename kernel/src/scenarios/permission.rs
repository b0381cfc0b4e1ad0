//! Scenarios 1-3: permission changes of a page the SMMU has cached.
//!
//! 1. The crux: RO→RW upgraded in place through the normal flush path (negative control:
//!    `legacy`, the pre-6.6 behaviour, where the SMMU is not told about upgrades).
//! 2. The same upgrade driven by the device's own fault, through the address space's
//!    write-tracking fault policy (negative control: `legacy`).
//! 3. RW→RO: a stale writable entry would let a forbidden write through silently (negative
//!    control: `off`).

use super::Outcome;
use crate::testkit::{
    Frames, IOVA_BASE, PAGES_CHANGED, RETRY_CAP, Rig, commands_during, expect_planned,
};
use crate::{
    drivers::{dma::DmaFaultKind, edu::DmaError},
    kassert, kassert_eq,
    mm::{address_space::FaultPolicy, pgtable::Perms, tlb::SecondaryTlbMode},
};
use alloc::{format, string::String};
use smmu::FlushKind;

const LEN: u32 = 64;

/// Scenario 1: the device reads P (the SMMU caches a read-only entry), the kernel upgrades P to
/// RW in place and flushes, the device writes P.
pub fn permission_upgrade(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let p = Frames::page()?;
    p.fill(0, 4096, 0x11);
    let x = IOVA_BASE;
    rig.map(x, p.pa(0), 1, Perms::R)?;
    rig.device_reads(x, LEN)
        .map_err(|e| format!("initial device read of P: {e}"))?;
    rig.expect_device_buffer(LEN, 0x11)?;
    rig.load_device(0x22, LEN)?;

    let (upgraded, commands) = commands_during(|| rig.protect(x, 1, Perms::RW));
    upgraded?;
    let retries = rig.device_writes_with_retries(x, LEN)?;
    let landed = p.holds(0, LEN as usize, 0x22);
    let unchanged = p.holds(0, LEN as usize, 0x11);
    let fresh = retries.succeeded_at == Some(1) && landed;
    let detail = match retries.succeeded_at {
        Some(n) => format!("write succeeded on attempt {n}; P holds {}", p.describe(0)),
        None => format!(
            "write faulted on all {} attempts ({} events, all F_PERMISSION at P: {}); P {}",
            retries.faulted,
            retries.events,
            retries.all(DmaFaultKind::Permission, x),
            if unchanged { "unchanged" } else { "CHANGED" }
        ),
    };
    Ok(Outcome {
        scenario: "permission upgrade RO->RW",
        mode,
        fresh,
        commands,
        device_faults: retries.events,
        detail,
    })
}

/// Scenario 2: the device writes a read-only page it has cached; the SMMU fault reaches the
/// address space's fault handler, which upgrades the entry through the same flush path, and
/// the device retries.
pub fn fault_driven_upgrade(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    rig.space.set_fault_policy(FaultPolicy::UpgradeOnWrite);
    let p = Frames::page()?;
    p.fill(0, 4096, 0x31);
    let x = IOVA_BASE + 0x5000;
    rig.map(x, p.pa(0), 1, Perms::R)?;
    rig.device_reads(x, LEN)
        .map_err(|e| format!("initial device read of P: {e}"))?;
    rig.load_device(0x32, LEN)?;
    let (retries, commands) = commands_during(|| rig.device_writes_with_retries(x, LEN));
    let retries = retries?;
    let writable = rig
        .space
        .translate(crate::mm::VirtAddr(x))
        .is_some_and(|t| t.attrs.perms.contains(Perms::WRITE));
    let fresh = retries.succeeded_at == Some(2) && p.holds(0, LEN as usize, 0x32);
    let detail = match retries.succeeded_at {
        Some(n) => format!(
            "write succeeded on attempt {n} after the fault handler upgraded P; P holds {}",
            p.describe(0)
        ),
        None => format!(
            "write faulted on all {} attempts although the PTE is {} ({} events); P holds {}",
            retries.faulted,
            if writable { "writable" } else { "read-only" },
            retries.events,
            p.describe(0)
        ),
    };
    Ok(Outcome {
        scenario: "device-fault-driven upgrade",
        mode,
        fresh,
        commands,
        device_faults: retries.events,
        detail,
    })
}

/// Scenario 3: the device wrote P (a writable entry is cached), P becomes read-only, the device
/// writes again: the write must fault and leave memory unchanged.
pub fn downgrade(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let p = Frames::page()?;
    let x = IOVA_BASE + 0x9000;
    rig.map(x, p.pa(0), 1, Perms::RW)?;
    rig.load_device(0xAA, LEN)?;
    rig.device_writes(x, LEN)
        .map_err(|e| format!("initial device write of P: {e}"))?;
    if !p.holds(0, LEN as usize, 0xAA) {
        return Err(format!(
            "the initial device write did not land: P holds {}",
            p.describe(0)
        ));
    }
    rig.load_device(0xBB, LEN)?;
    let (downgraded, commands) = commands_during(|| rig.protect(x, 1, Perms::R));
    downgraded?;
    let result = rig.device_writes(x, LEN);
    let kept = p.holds(0, LEN as usize, 0xAA);
    let (fresh, faults, detail) = match result {
        Err(DmaError::Fault { fault, .. }) => (
            kept && fault.kind == DmaFaultKind::Permission,
            fault.count,
            format!(
                "write faulted ({fault}); P {}",
                if kept { "unchanged" } else { "CHANGED" }
            ),
        ),
        Ok(()) => (
            false,
            0,
            format!(
                "the write to a read-only page went through silently; P holds {}",
                p.describe(0)
            ),
        ),
        Err(e) => return Err(format!("device write: {e}")),
    };
    Ok(Outcome {
        scenario: "downgrade RW->RO",
        mode,
        fresh,
        commands,
        device_faults: faults,
        detail,
    })
}

crate::ktest! {
    /// The crux, correct: one TLBI_NH_VA + one CMD_SYNC, and the write succeeds first time.
    fn s01_permission_upgrade() {
        let o = permission_upgrade(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE), PAGES_CHANGED)], "single-page upgrade")?;
        kassert_eq!(o.device_faults, 0);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: with the pre-6.6 behaviour the device faults on every retry.
    fn s01_permission_upgrade_nc_legacy() {
        let o = permission_upgrade(SecondaryTlbMode::Legacy)?;
        o.expect_stale()?;
        kassert_eq!(o.commands.tlbi_nh_va + o.commands.tlbi_nh_va_range + o.commands.tlbi_nh_asid, 0,
            "legacy mode must not tell the SMMU about an upgrade");
        kassert!(o.device_faults >= RETRY_CAP * (LEN / 4), "{}", o.detail);
        kassert!(o.detail.contains("all F_PERMISSION at P: true") && o.detail.contains("unchanged"), "{}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// The device's own fault drives the upgrade; the retry succeeds.
    fn s02_fault_driven_upgrade() {
        let o = fault_driven_upgrade(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0x5000), PAGES_CHANGED)],
            "the fault-upgrade flush reaches the SMMU once")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the handler upgrades the PTE but the SMMU keeps its read-only entry;
    /// the retries exhaust their cap.
    fn s02_fault_driven_upgrade_nc_legacy() {
        let o = fault_driven_upgrade(SecondaryTlbMode::Legacy)?;
        o.expect_stale()?;
        kassert!(o.detail.contains("all 8 attempts although the PTE is writable"), "{}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// RW→RO: the forbidden write faults and memory is unchanged.
    fn s03_downgrade() {
        let o = downgrade(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0x9000), PAGES_CHANGED)], "one-page downgrade")?;
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: a stale writable entry lets the write through.
    fn s03_downgrade_nc_off() {
        downgrade(SecondaryTlbMode::Off)?.expect_stale()
    }
}
