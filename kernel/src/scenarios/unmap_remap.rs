//! Scenarios 4-5: a page the SMMU has cached loses its frame.
//!
//! 4. Unmap, then the frame is reused: a stale SMMU entry would let the device write into memory
//!    that now belongs to someone else, a use-after-free no fault reports (negative control:
//!    `off`).
//! 5. Break-before-make remap, as a copy-on-write break does it: the page moves to a new frame
//!    holding a copy. A stale entry would send the device's write to the old frame, where
//!    nobody will ever read it (negative control: `off`).
//!
//! Both scenarios judge by memory. A DMA write the device believes succeeded says nothing
//! about where it landed, so each check reads the frames on both sides.

use super::Outcome;
use crate::testkit::{
    Frames, IOVA_BASE, PAGES_CHANGED, Rig, commands_during, expect_planned, fault_of, range,
};
use crate::{
    drivers::dma::DmaFaultKind,
    kassert, kassert_eq,
    mm::{PAGE_SIZE, pgtable::Perms, tlb::SecondaryTlbMode},
};
use alloc::{format, string::String, vec::Vec};
use smmu::{FlushHint, FlushKind};

const LEN: u32 = 64;
const PAGE: usize = PAGE_SIZE as usize;

/// Scenario 4: the device reads and writes P (the SMMU caches a writable entry); P is
/// unmapped and its frame reused (this scenario keeps the frame and plays its next owner,
/// which fills it with its own data); the device writes P again. The write must fault with a
/// translation fault, and the new owner's data must stay intact.
pub fn unmap_frame_reuse(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let p = Frames::page()?;
    p.fill(0, PAGE, 0x41);
    let x = IOVA_BASE + 0x4000;
    rig.map(x, p.pa(0), 1, Perms::RW)?;
    rig.device_reads(x, LEN)
        .map_err(|e| format!("setup: device read of P: {e}"))?;
    rig.expect_device_buffer(LEN, 0x41)?;
    rig.load_device(0x42, LEN)?;
    rig.device_writes(x, LEN)
        .map_err(|e| format!("setup: device write of P: {e}"))?;
    if !p.holds(0, LEN as usize, 0x42) {
        return Err(format!(
            "setup: the device write did not land in P: {}",
            p.describe(0)
        ));
    }

    let (unmapped, commands) = commands_during(|| -> Result<(), String> {
        let t = rig
            .space
            .unmap(range(x, 1)?)
            .map_err(|e| format!("unmap: {e}"))?;
        rig.space.flush(t).map_err(|e| format!("flush: {e}"))?;
        Ok(())
    });
    unmapped?;
    // The frame's next owner.
    p.fill(0, PAGE, 0x5A);
    rig.load_device(0x66, LEN)?;
    let fault = fault_of(rig.device_writes(x, LEN), "device write after unmap")?;
    let intact = p.holds(0, PAGE, 0x5A);
    let fresh = fault.is_some_and(|f| f.kind == DmaFaultKind::Translation) && intact;
    let contents = if intact {
        String::from("the reused frame is intact")
    } else {
        format!("the reused frame was OVERWRITTEN (holds {})", p.describe(0))
    };
    let detail = match fault {
        Some(f) => format!("the write after unmap faulted ({f}); {contents}"),
        None => format!("the write after unmap went through silently; {contents}"),
    };
    Ok(Outcome {
        scenario: "unmap + frame reuse",
        mode,
        fresh,
        commands,
        device_faults: fault.map_or(0, |f| f.count),
        detail,
    })
}

/// Scenario 5: the device reads P (a writable entry is cached); P's contents are copied to a new
/// frame and P is remapped there with break-before-make (a copy-on-write break); the device
/// writes P. The write must land in the new frame, and the old frame must keep the contents
/// it had at the break.
pub fn remap_cow_break(mode: SecondaryTlbMode) -> Result<Outcome, String> {
    let rig = Rig::new(0, mode).map_err(|e| format!("{e:?}"))?;
    let old = Frames::page()?;
    let new = Frames::page()?;
    // A pattern that differs byte by byte, so a misplaced copy or write shows.
    let before: Vec<u8> = (0..PAGE).map(|i| (i as u8) ^ 0x51).collect();
    old.write(0, &before);
    let x = IOVA_BASE + 0x6000;
    rig.map(x, old.pa(0), 1, Perms::RW)?;
    rig.device_reads(x, LEN)
        .map_err(|e| format!("setup: device read of P: {e}"))?;
    let buf = rig.device_buffer(LEN)?;
    if buf[..] != before[..LEN as usize] {
        return Err(format!(
            "setup: the device read {:02x?}…, expected {:02x?}…",
            &buf[..4],
            &before[..4]
        ));
    }

    // The copy-on-write break: copy, then move the mapping.
    new.write(0, &old.read(0, PAGE));
    let (remapped, commands) = commands_during(|| {
        rig.space
            .remap(range(x, 1)?, new.pa(0))
            .map_err(|e| format!("remap: {e}"))
    });
    remapped?;
    rig.load_device(0x55, LEN)?;
    let fault = fault_of(rig.device_writes(x, LEN), "device write after remap")?;
    let n = LEN as usize;
    let new_now = new.read(0, PAGE);
    let landed = new_now[..n].iter().all(|&b| b == 0x55) && new_now[n..] == before[n..];
    let old_now = old.read(0, PAGE);
    let old_kept = old_now == before;
    let fresh = fault.is_none() && landed && old_kept;
    let detail = match fault {
        Some(f) => format!("the write after remap faulted ({f})"),
        None => format!(
            "the write landed in the {} frame; the new frame {}, the old frame {}",
            if landed {
                "NEW"
            } else if old_now[..n].iter().all(|&b| b == 0x55) {
                "OLD"
            } else {
                "neither"
            },
            if landed {
                "holds the write over the copy"
            } else {
                "holds the copy only"
            },
            if old_kept {
                "keeps its pre-break contents"
            } else {
                "was CHANGED after the break"
            }
        ),
    };
    Ok(Outcome {
        scenario: "remap (copy-on-write break)",
        mode,
        fresh,
        commands,
        device_faults: fault.map_or(0, |f| f.count),
        detail,
    })
}

crate::ktest! {
    /// The unmap reaches the SMMU (one TLBI_NH_VA + one CMD_SYNC): the device's write faults
    /// with a translation fault and the reused frame keeps its new owner's data.
    fn s04_unmap_frame_reuse() {
        let o = unmap_frame_reuse(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        // The page was alone in its tables: they are freed too, so nothing is known of levels.
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0x4000), FlushHint::UNKNOWN)],
            "one-page unmap")?;
        kassert_eq!(o.device_faults, LEN / 4, "one fault event per 4-byte chunk of the write: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the SMMU is never told, so its stale entry lets the write into the
    /// reused frame (a use-after-free) without any fault.
    fn s04_unmap_frame_reuse_nc_off() {
        let o = unmap_frame_reuse(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert_eq!(o.commands.commands, 0, "off mode must not send any SMMU command");
        kassert!(o.detail.contains("went through silently") && o.detail.contains("OVERWRITTEN"),
            "expected the write to land in the reused frame without a fault, saw: {}", o.detail);
        Ok(())
    }
}

crate::ktest! {
    /// The break reaches the SMMU (one TLBI_NH_VA + one CMD_SYNC; the make step needs only a
    /// barrier): the write lands in the new frame, the old one keeps its contents.
    fn s05_remap_cow_break() {
        let o = remap_cow_break(SecondaryTlbMode::Sync)?;
        o.expect_fresh()?;
        expect_planned(&o.commands, &[(FlushKind::Page(IOVA_BASE + 0x6000), PAGES_CHANGED)],
            "one-page remap: the break's flush only (the make needs a barrier)")?;
        kassert_eq!(o.device_faults, 0);
        Ok(())
    }
}

crate::ktest! {
    /// Negative control: the stale entry sends the write to the old frame.
    fn s05_remap_cow_break_nc_off() {
        let o = remap_cow_break(SecondaryTlbMode::Off)?;
        o.expect_stale()?;
        kassert!(o.detail.contains("landed in the OLD frame"),
            "expected the write to land in the old frame, saw: {}", o.detail);
        Ok(())
    }
}
