//! Stream table entries (IHI 0070 G.b §5.2): builders for the three configurations this driver
//! uses, a decoder, and the used-bits function for the update protocol in [`crate::writer`].
//!
//! - **Abort** (`V = 1, Config = 0b000`): every transaction is terminated without an event. New
//!   and unused StreamIDs are abort, so the table fails closed.
//! - **Bypass** (`Config = 0b100`): untranslated, with incoming attributes (`SHCFG = 0b01`,
//!   "use incoming", so bypass traffic keeps its shareability instead of becoming
//!   non-shareable).
//! - **Stage 1** (`Config = 0b101`, stage 2 bypassed): one CD at `S1ContextPtr` (`S1Fmt = 0`,
//!   `S1CDMax = 0`, i.e. no substreams). `S1STALLD = 0` (QEMU rejects 1), `S2VMID = 0` (QEMU
//!   9.2 and later tag stage-1 TLB entries with it, and `CMD_TLBI_NH_*` carry VMID 0). The CD is
//!   fetched inner-shareable write-back (`S1CIR = S1COR = WBRA`, `S1CSH = ISH`), matching
//!   `CR1`'s table attributes and how the CPU writes it; QEMU ignores these fields, which is
//!   why its verified STE shows them as 0.

// `register_bitfields!` generates undocumented items.
#![allow(missing_docs)]

use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::writer::{ENTRY_QWORDS, EntryFormat, EntryWords};

register_bitfields! {u64,
    /// STE word 0.
    pub STE0 [
        V OFFSET(0) NUMBITS(1) [],
        CONFIG OFFSET(1) NUMBITS(3) [
            Abort = 0b000,
            Bypass = 0b100,
            Stage1 = 0b101,
            Stage2 = 0b110,
            Nested = 0b111
        ],
        S1FMT OFFSET(4) NUMBITS(2) [],
        /// CD (table) address bits [55:6].
        S1CONTEXTPTR OFFSET(6) NUMBITS(50) [],
        S1CDMAX OFFSET(59) NUMBITS(5) []
    ],
    /// STE word 1.
    pub STE1 [
        S1DSS OFFSET(0) NUMBITS(2) [],
        S1CIR OFFSET(2) NUMBITS(2) [NonCacheable = 0, WriteBackAllocate = 1, WriteThrough = 2, WriteBackNoAllocate = 3],
        S1COR OFFSET(4) NUMBITS(2) [NonCacheable = 0, WriteBackAllocate = 1, WriteThrough = 2, WriteBackNoAllocate = 3],
        S1CSH OFFSET(6) NUMBITS(2) [NonShareable = 0, OuterShareable = 2, InnerShareable = 3],
        DRE OFFSET(12) NUMBITS(1) [],
        CONT OFFSET(13) NUMBITS(4) [],
        DCP OFFSET(17) NUMBITS(1) [],
        PPAR OFFSET(18) NUMBITS(1) [],
        MEV OFFSET(19) NUMBITS(1) [],
        S1STALLD OFFSET(27) NUMBITS(1) [],
        EATS OFFSET(28) NUMBITS(2) [],
        STRW OFFSET(30) NUMBITS(2) [],
        MEMATTR OFFSET(32) NUMBITS(4) [],
        MTCFG OFFSET(36) NUMBITS(1) [],
        ALLOCCFG OFFSET(37) NUMBITS(4) [],
        SHCFG OFFSET(44) NUMBITS(2) [NonShareable = 0, UseIncoming = 1, Outer = 2, Inner = 3],
        NSCFG OFFSET(46) NUMBITS(2) [],
        PRIVCFG OFFSET(48) NUMBITS(2) [],
        INSTCFG OFFSET(50) NUMBITS(2) []
    ],
    /// STE word 2.
    pub STE2 [
        S2VMID OFFSET(0) NUMBITS(16) []
    ]
}

/// A configuration this driver programs into an STE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteConfig {
    /// Terminate all traffic, no event.
    Abort,
    /// Untranslated, incoming attributes.
    Bypass,
    /// Stage-1 translation through the single CD at this physical address (64-byte aligned).
    Stage1 {
        /// Physical address of the CD.
        cd_phys: u64,
    },
}

/// What an STE currently says, as far as this driver is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteState {
    /// `V = 0`: traffic gets `C_BAD_STE`.
    Invalid,
    /// One of the configurations this driver programs.
    Known(SteConfig),
    /// A valid STE with some other configuration (stage 2, nested, reserved).
    Other {
        /// The `Config` field.
        config: u8,
    },
}

/// The update-protocol description of STEs.
pub const FORMAT: EntryFormat = EntryFormat {
    name: "STE",
    valid_mask: 1,
    used: used_bits,
};

fn mask<R: tock_registers::RegisterLongName>(f: tock_registers::fields::Field<u64, R>) -> u64 {
    f.mask << f.shift
}

/// Builds the 64-byte entry for a configuration.
///
/// # Panics
///
/// If a stage-1 CD address is not 64-byte aligned (a driver bug: CDs are allocated aligned).
pub fn build(config: SteConfig) -> EntryWords {
    let mut w0: LocalRegisterCopy<u64, STE0::Register> = LocalRegisterCopy::new(0);
    let mut w1: LocalRegisterCopy<u64, STE1::Register> = LocalRegisterCopy::new(0);
    match config {
        SteConfig::Abort => w0.write(STE0::V::SET + STE0::CONFIG::Abort),
        SteConfig::Bypass => {
            w0.write(STE0::V::SET + STE0::CONFIG::Bypass);
            w1.write(STE1::SHCFG::UseIncoming);
        }
        SteConfig::Stage1 { cd_phys } => {
            assert!(
                cd_phys.is_multiple_of(64),
                "CD address {cd_phys:#x} is not 64-byte aligned"
            );
            w0.write(
                STE0::V::SET
                    + STE0::CONFIG::Stage1
                    + STE0::S1FMT.val(0)
                    + STE0::S1CONTEXTPTR.val(cd_phys >> 6)
                    + STE0::S1CDMAX.val(0),
            );
            w1.write(
                STE1::S1CIR::WriteBackAllocate
                    + STE1::S1COR::WriteBackAllocate
                    + STE1::S1CSH::InnerShareable
                    + STE1::S1STALLD::CLEAR,
            );
        }
    }
    let mut words = [0; ENTRY_QWORDS];
    words[0] = w0.get();
    words[1] = w1.get();
    words
}

/// The entry every StreamID starts with.
pub const ABORT: EntryWords = [1, 0, 0, 0, 0, 0, 0, 0];

/// Decodes an entry.
pub fn decode(words: &EntryWords) -> SteState {
    let w0: LocalRegisterCopy<u64, STE0::Register> = LocalRegisterCopy::new(words[0]);
    if !w0.is_set(STE0::V) {
        return SteState::Invalid;
    }
    let config = w0.read(STE0::CONFIG) as u8;
    match config {
        0b000..=0b011 => SteState::Known(SteConfig::Abort),
        0b100 => SteState::Known(SteConfig::Bypass),
        0b101 => SteState::Known(SteConfig::Stage1 {
            cd_phys: w0.read(STE0::S1CONTEXTPTR) << 6,
        }),
        other => SteState::Other { config: other },
    }
}

/// Bits the SMMU interprets for an STE with these contents (see [`crate::writer`]).
pub fn used_bits(words: &EntryWords) -> EntryWords {
    let mut used = [0; ENTRY_QWORDS];
    let w0: LocalRegisterCopy<u64, STE0::Register> = LocalRegisterCopy::new(words[0]);
    used[0] = mask(STE0::V);
    if !w0.is_set(STE0::V) {
        return used;
    }
    used[0] |= mask(STE0::CONFIG);
    let overrides = mask(STE1::PRIVCFG) | mask(STE1::INSTCFG) | mask(STE1::MEV);
    match w0.read(STE0::CONFIG) {
        // Abort: nothing else matters.
        0b000..=0b011 => {}
        0b100 => {
            used[1] = overrides
                | mask(STE1::MEMATTR)
                | mask(STE1::MTCFG)
                | mask(STE1::ALLOCCFG)
                | mask(STE1::SHCFG)
                | mask(STE1::NSCFG);
        }
        0b101 => {
            used[0] |= mask(STE0::S1FMT) | mask(STE0::S1CONTEXTPTR) | mask(STE0::S1CDMAX);
            used[1] = overrides
                | mask(STE1::S1DSS)
                | mask(STE1::S1CIR)
                | mask(STE1::S1COR)
                | mask(STE1::S1CSH)
                | mask(STE1::DCP)
                | mask(STE1::S1STALLD)
                | mask(STE1::EATS)
                | mask(STE1::STRW);
            // Newer QEMU (nested SMMU) and stage-2-capable hardware tag entries with S2VMID.
            used[2] = mask(STE2::S2VMID);
        }
        // Stage-2 and nested configurations are never built here: treat everything as used so
        // any change to them is break-before-make.
        _ => used = [u64::MAX; ENTRY_QWORDS],
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::recording::check_transition;

    const CD_A: u64 = 0x4012_3440;
    const CD_B: u64 = 0x4055_6680;

    #[test]
    fn matches_the_reference_encoding() {
        // Appendix A: dword0 = 1 | 0b101 << 1 | CD_PA, dword1 carries only the CD-fetch
        // attributes (QEMU ignores them), dword2 = 0.
        let ste = build(SteConfig::Stage1 { cd_phys: CD_A });
        assert_eq!(ste[0], 1 | (0b101 << 1) | CD_A);
        assert_eq!(ste[1], (1 << 2) | (1 << 4) | (3 << 6));
        assert_eq!(ste[1] & (1 << 27), 0, "S1STALLD must be 0");
        assert_eq!(&ste[2..], &[0; 6]);
        assert_eq!(build(SteConfig::Abort), ABORT);
        assert_eq!(
            build(SteConfig::Bypass),
            [0b1001, 1 << 44, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn decodes_what_it_builds() {
        for config in [
            SteConfig::Abort,
            SteConfig::Bypass,
            SteConfig::Stage1 { cd_phys: CD_B },
        ] {
            assert_eq!(decode(&build(config)), SteState::Known(config));
        }
        assert_eq!(decode(&[0; 8]), SteState::Invalid);
        assert_eq!(
            decode(&[0b1101, 0, 0, 0, 0, 0, 0, 0]),
            SteState::Other { config: 0b110 }
        );
    }

    fn ste(config: SteConfig) -> EntryWords {
        build(config)
    }

    const S1: SteConfig = SteConfig::Stage1 { cd_phys: CD_A };

    /// Every transition between the configurations, with Linux's expected sync counts where
    /// the cases coincide (bypass_to_abort 2, abort_to_bypass 2, cdtable_to_abort 2,
    /// abort_to_cdtable 2, cdtable_to_bypass 3, bypass_to_cdtable 3).
    #[test]
    fn transitions_are_hitless_with_expected_syncs() {
        let cases = [
            (SteConfig::Bypass, SteConfig::Abort, 2),
            (SteConfig::Abort, SteConfig::Bypass, 2),
            (S1, SteConfig::Abort, 2),
            (SteConfig::Abort, S1, 2),
            (S1, SteConfig::Bypass, 3),
            (SteConfig::Bypass, S1, 3),
            // Pointing at another CD changes one word.
            (S1, SteConfig::Stage1 { cd_phys: CD_B }, 1),
        ];
        for (from, to, syncs) in cases {
            let report = check_transition(&FORMAT, ste(from), ste(to), syncs, true);
            assert!(report.stores >= 1, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn install_sets_valid_last_and_removal_clears_it_first() {
        // Invalid -> stage 1: every other word first, then word 0 with V.
        let (seen, report) = crate::writer::recording::record(&FORMAT, [0; 8], ste(S1));
        assert_eq!(report.syncs, 2);
        assert_eq!(
            seen[0][0] & 1,
            0,
            "V must still be clear after the first step"
        );
        assert_eq!(seen[0][1], ste(S1)[1]);
        assert_eq!(seen[1], ste(S1));
        check_transition(&FORMAT, [0; 8], ste(S1), 2, true);
        // Stage 1 -> invalid: V goes first, the rest is cleaned up afterwards.
        let (seen, _) = crate::writer::recording::record(&FORMAT, ste(S1), [0; 8]);
        assert_eq!(seen[0][0] & 1, 0);
        check_transition(&FORMAT, ste(S1), [0; 8], 2, true);
        // Invalid -> abort is a single word.
        check_transition(&FORMAT, [0; 8], ABORT, 1, true);
    }

    #[test]
    fn unchanged_entry_needs_no_sync() {
        check_transition(&FORMAT, ste(S1), ste(S1), 0, true);
    }

    #[test]
    fn non_hitless_change_goes_through_invalid() {
        // Changing the CD pointer (word 0) and the S2VMID (word 2) of a live stage-1 STE cannot
        // be done with one store.
        let mut with_vmid = ste(S1);
        with_vmid[2] = 7;
        let mut target = ste(SteConfig::Stage1 { cd_phys: CD_B });
        target[2] = 9;
        check_transition(&FORMAT, with_vmid, target, 3, false);
    }
}
