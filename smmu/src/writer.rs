//! Safe ordering of updates to live STEs and CDs (IHI 0070 G.b §3.21.3).
//!
//! The SMMU may fetch any reachable structure at any time, reads each aligned 64-bit word
//! single-copy atomically, but may read the words of a structure in any order and cache the
//! result until a `CMD_CFGI_*` + `CMD_SYNC` (§3.21.3, §4.3). An update is therefore a sequence of
//! steps; each step is some 64-bit stores followed by a *sync* (the caller's `CFGI_STE`/`CFGI_CD`
//! and `CMD_SYNC`, after the HAL's publish barrier), and after every step the SMMU must see an
//! entry that is either entirely the old configuration or entirely the new one — or, where that
//! is impossible, invalid (`V = 0`), which aborts traffic rather than mis-translating it.
//!
//! What "entirely" means depends on the configuration: an abort STE ignores its context pointer,
//! a CD with `EPD0 = 1` ignores `TTB0`, an invalid entry ignores everything but `V`. Each entry
//! format supplies a *used-bits* function for this ([`EntryFormat::used`]). The algorithm:
//!
//! 1. Write every bit the *current* configuration ignores to its target value; sync. The SMMU
//!    still sees the current configuration.
//! 2. Count the 64-bit words that still differ from the target in bits the *target* uses. If at
//!    most one does, it is the critical word: store it in one 64-bit write; sync. The SMMU now
//!    sees exactly the target (every other word already agrees on the target's used bits).
//! 3. Write the remaining bits (now ignored by the target) so memory equals the target; sync.
//!
//! If two or more words are critical, no single store can switch atomically, and the update
//! breaks before make: clear `V` in word 0; sync; write words 1..N; sync; write word 0; sync.
//!
//! Consequences: installing an entry (`V` 0 → 1) writes everything else first and `V` last;
//! removing one clears `V` first; abort ↔ bypass ↔ stage-1 and ASID or `TTB0` changes are
//! hitless. Steps that change nothing are skipped together with their sync. The host tests
//! check every transition with a recording backend in the style of Linux's arm-smmu-v3 KUnit
//! suite: after each sync the entry, restricted to the bits its own configuration uses, equals
//! the old or the new entry (or is invalid for a break-before-make update).

/// 64-bit words in an STE or a CD (both are 64 bytes).
pub const ENTRY_QWORDS: usize = 8;

/// The contents of an STE or a CD.
pub type EntryWords = [u64; ENTRY_QWORDS];

/// What the update protocol needs to know about a structure.
#[derive(Clone, Copy)]
pub struct EntryFormat {
    /// Name for diagnostics ("STE", "CD").
    pub name: &'static str,
    /// The `V` bit, in word 0.
    pub valid_mask: u64,
    /// Bits the SMMU interprets for an entry with these contents.
    pub used: fn(&EntryWords) -> EntryWords,
}

/// Memory holding one entry.
pub trait EntryStorage {
    /// Loads word `index`.
    fn load(&self, index: usize) -> u64;
    /// Stores word `index` with a single 64-bit write.
    fn store(&mut self, index: usize, value: u64);
}

impl EntryStorage for EntryWords {
    fn load(&self, index: usize) -> u64 {
        self[index]
    }

    fn store(&mut self, index: usize, value: u64) {
        self[index] = value;
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateReport {
    /// Syncs requested.
    pub syncs: u32,
    /// 64-bit stores performed.
    pub stores: u32,
    /// Whether the SMMU saw only the old or the new entry (no invalid intermediate state).
    pub hitless: bool,
}

fn read_all<S: EntryStorage + ?Sized>(storage: &S) -> EntryWords {
    core::array::from_fn(|i| storage.load(i))
}

/// Writes `target` over the entry in `storage` in the safe order described in the module
/// docs, calling `sync` after each step with the entry's contents at that point.
///
/// # Errors
///
/// The first error returned by `sync`; the entry is then left in an intermediate state that is
/// still one of the permitted ones (old, new, or invalid).
pub fn write_entry<S: EntryStorage + ?Sized, E>(
    format: &EntryFormat,
    storage: &mut S,
    target: &EntryWords,
    sync: &mut dyn FnMut(&EntryWords) -> Result<(), E>,
) -> Result<UpdateReport, E> {
    let current = read_all(storage);
    let mut report = UpdateReport {
        hitless: true,
        ..UpdateReport::default()
    };
    if current == *target {
        return Ok(report);
    }
    let current_used = (format.used)(&current);
    let target_used = (format.used)(target);

    let mut apply = |storage: &mut S,
                     words: &EntryWords,
                     range: core::ops::Range<usize>,
                     report: &mut UpdateReport|
     -> Result<(), E> {
        let mut changed = false;
        for i in range {
            if storage.load(i) != words[i] {
                storage.store(i, words[i]);
                report.stores += 1;
                changed = true;
            }
        }
        if changed {
            report.syncs += 1;
            sync(&read_all(storage))?;
        }
        Ok(())
    };

    // Step 1: bits the current configuration ignores.
    let unused_first: EntryWords =
        core::array::from_fn(|i| (current[i] & current_used[i]) | (target[i] & !current_used[i]));
    let mut critical = (0..ENTRY_QWORDS)
        .filter(|&i| (unused_first[i] ^ target[i]) & target_used[i] != 0)
        .peekable();
    let first_critical = critical.next();
    if critical.peek().is_none() {
        apply(storage, &unused_first, 0..ENTRY_QWORDS, &mut report)?;
        // Step 2: the one word that switches the configuration.
        if let Some(i) = first_critical {
            let mut words = read_all(storage);
            words[i] = target[i];
            apply(storage, &words, i..i + 1, &mut report)?;
        }
        // Step 3: bits the target ignores.
        apply(storage, target, 0..ENTRY_QWORDS, &mut report)?;
    } else {
        report.hitless = false;
        let mut invalid = current;
        invalid[0] &= !format.valid_mask;
        apply(storage, &invalid, 0..1, &mut report)?;
        apply(storage, target, 1..ENTRY_QWORDS, &mut report)?;
        apply(storage, target, 0..1, &mut report)?;
    }
    debug_assert_eq!(
        read_all(storage),
        *target,
        "{} update incomplete",
        format.name
    );
    Ok(report)
}

#[cfg(test)]
pub(crate) mod recording {
    //! A recording backend for the update-protocol tests.
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Replays `write_entry` from `initial` to `target` and returns the entry after each sync.
    pub fn record(
        format: &EntryFormat,
        initial: EntryWords,
        target: EntryWords,
    ) -> (Vec<EntryWords>, UpdateReport) {
        let mut entry = initial;
        let mut seen = Vec::new();
        let report = write_entry::<_, ()>(format, &mut entry, &target, &mut |snapshot| {
            seen.push(*snapshot);
            Ok(())
        })
        .unwrap();
        assert_eq!(entry, target);
        (seen, report)
    }

    fn masked(format: &EntryFormat, words: &EntryWords) -> EntryWords {
        let used = (format.used)(words);
        core::array::from_fn(|i| words[i] & used[i])
    }

    /// Asserts the KUnit-style invariant over every observed state and returns the report.
    pub fn check_transition(
        format: &EntryFormat,
        initial: EntryWords,
        target: EntryWords,
        expect_syncs: u32,
        expect_hitless: bool,
    ) -> UpdateReport {
        let (seen, report) = record(format, initial, target);
        let old = masked(format, &initial);
        let new = masked(format, &target);
        let mut saw_invalid = false;
        for (step, snapshot) in seen.iter().enumerate() {
            let view = masked(format, snapshot);
            let invalid = snapshot[0] & format.valid_mask == 0;
            if view == old || view == new {
                continue;
            }
            assert!(
                invalid && !expect_hitless,
                "{} step {step}: SMMU-visible entry {view:#x?} is neither old {old:#x?} nor new {new:#x?}",
                format.name
            );
            saw_invalid = true;
        }
        assert_eq!(report.syncs as usize, seen.len());
        assert_eq!(report.syncs, expect_syncs, "{} sync count", format.name);
        assert_eq!(report.hitless, expect_hitless, "{} hitless", format.name);
        assert_eq!(
            saw_invalid,
            !expect_hitless
                && initial[0] & format.valid_mask != 0
                && target[0] & format.valid_mask != 0
        );
        report
    }
}
