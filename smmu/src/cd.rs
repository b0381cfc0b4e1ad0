//! Context descriptors (IHI 0070 G.b §5.4): the stage-1 translation context of a stream.
//!
//! A CD is the SMMU's copy of what `TCR_EL1`/`TTBR0_EL1`/`MAIR_EL1` say for one address space.
//! This driver only uses `TTB0` (`EPD1 = 1`; QEMU 7.2 cannot translate TTB1 addresses anyway),
//! always sets `AA64 = 1` and `A = 1` (abort terminated transactions; QEMU's `TERM_MODEL = 1`
//! requires it), leaves `HA = HD = 0` (no hardware AF/dirty updates: QEMU rejects them and the
//! CPU's tables must already hold AF = 1 and the right permissions), and lets the caller choose
//! `R` (record faults in the event queue; without it translation faults are silent).
//!
//! [`CdParams::sva`] builds the shared-table ("SVA") variant from the CPU's MMU configuration:
//! `TTB0` = the CPU's TTBR0 table, the pinned CPU ASID, the CPU's `T0SZ`/`TG0`/`MAIR`, and `IPS`
//! clamped to the SMMU's OAS.
//!
//! Changing `TTB0` or `ASID` of a live CD is a single-word change (hitless, see
//! [`crate::writer`]), but needs `CMD_CFGI_CD` *and* `CMD_TLBI_NH_ASID` of the old ASID: the
//! configuration cache and the TLB are separate (QEMU caches them separately too), so either
//! alone leaves stale state. [`crate::device::Smmu`] issues both.

// `register_bitfields!` generates undocumented items.
#![allow(missing_docs)]

use core::fmt;

use tock_registers::{LocalRegisterCopy, register_bitfields};

use crate::{
    features::{AddressSize, CpuMmuConfig, Features, Granule, SvaError},
    writer::{ENTRY_QWORDS, EntryFormat, EntryWords},
};

register_bitfields! {u64,
    /// CD word 0.
    pub CD0 [
        T0SZ OFFSET(0) NUMBITS(6) [],
        TG0 OFFSET(6) NUMBITS(2) [Size4K = 0, Size64K = 1, Size16K = 2],
        IR0 OFFSET(8) NUMBITS(2) [],
        OR0 OFFSET(10) NUMBITS(2) [],
        SH0 OFFSET(12) NUMBITS(2) [],
        EPD0 OFFSET(14) NUMBITS(1) [],
        ENDI OFFSET(15) NUMBITS(1) [],
        T1SZ OFFSET(16) NUMBITS(6) [],
        TG1 OFFSET(22) NUMBITS(2) [],
        IR1 OFFSET(24) NUMBITS(2) [],
        OR1 OFFSET(26) NUMBITS(2) [],
        SH1 OFFSET(28) NUMBITS(2) [],
        EPD1 OFFSET(30) NUMBITS(1) [],
        V OFFSET(31) NUMBITS(1) [],
        IPS OFFSET(32) NUMBITS(3) [],
        AFFD OFFSET(35) NUMBITS(1) [],
        WXN OFFSET(36) NUMBITS(1) [],
        UWXN OFFSET(37) NUMBITS(1) [],
        TBI0 OFFSET(38) NUMBITS(1) [],
        TBI1 OFFSET(39) NUMBITS(1) [],
        PAN OFFSET(40) NUMBITS(1) [],
        AA64 OFFSET(41) NUMBITS(1) [],
        HD OFFSET(42) NUMBITS(1) [],
        HA OFFSET(43) NUMBITS(1) [],
        S OFFSET(44) NUMBITS(1) [],
        R OFFSET(45) NUMBITS(1) [],
        A OFFSET(46) NUMBITS(1) [],
        ASET OFFSET(47) NUMBITS(1) [],
        ASID OFFSET(48) NUMBITS(16) []
    ],
    /// CD word 1.
    pub CD1 [
        NSCFG0 OFFSET(0) NUMBITS(1) [],
        HAD0 OFFSET(1) NUMBITS(1) [],
        E0PD0 OFFSET(2) NUMBITS(1) [],
        HAFT OFFSET(3) NUMBITS(1) [],
        /// TTB0 address bits [55:4].
        TTB0 OFFSET(4) NUMBITS(52) []
    ]
}

/// Cacheability of table walks (`IRx`/`ORx`, as in `TCR_EL1.IRGNx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheability {
    /// Non-cacheable.
    NonCacheable = 0,
    /// Write-back, read- and write-allocate.
    WriteBackAllocate = 1,
    /// Write-through, read-allocate.
    WriteThrough = 2,
    /// Write-back, read-allocate, no write-allocate.
    WriteBackNoWriteAllocate = 3,
}

/// Shareability of table walks (`SHx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shareability {
    /// Non-shareable.
    NonShareable = 0,
    /// Outer shareable.
    OuterShareable = 2,
    /// Inner shareable.
    InnerShareable = 3,
}

/// Everything a CD says, in typed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdParams {
    /// ASID that tags this context's TLB entries.
    pub asid: u16,
    /// Physical address of the top-level translation table.
    pub ttb0: u64,
    /// `T0SZ`: the TTB0 region covers 2^(64 - T0SZ) bytes.
    pub t0sz: u8,
    /// Translation granule.
    pub granule: Granule,
    /// Intermediate (output) physical address size, at most the SMMU's OAS.
    pub ips: AddressSize,
    /// Memory attribute indirection (`MAIR_EL1` layout).
    pub mair: u64,
    /// Inner cacheability of walks.
    pub walk_inner: Cacheability,
    /// Outer cacheability of walks.
    pub walk_outer: Cacheability,
    /// Shareability of walks.
    pub walk_shareability: Shareability,
    /// Top byte ignore for TTB0 addresses.
    pub tbi0: bool,
    /// Access-flag faults disabled (`AFFD`): pages with AF = 0 are used as if AF were 1.
    pub affd: bool,
    /// Record translation/permission/access faults in the event queue (`R`).
    pub record_faults: bool,
    /// `EPD0`: TTB0 walks disabled ("quiesced" context: every access faults, the CD stays valid).
    pub walks_disabled: bool,
}

/// A CD that cannot be programmed on this SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdError {
    /// `T0SZ` outside what the granule and SMMU allow.
    T0szOutOfRange {
        /// Requested value.
        t0sz: u8,
        /// Smallest allowed value.
        min: u8,
        /// Largest allowed value.
        max: u8,
    },
    /// The SMMU does not implement the granule.
    GranuleUnsupported(Granule),
    /// `TTB0` is not aligned to the top-level table size.
    Ttb0Misaligned {
        /// The table address.
        ttb0: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// `TTB0` is not below 2^IPS.
    Ttb0OutOfRange {
        /// The table address.
        ttb0: u64,
        /// IPS in bits.
        ips_bits: u8,
    },
    /// `IPS` larger than the SMMU's OAS.
    IpsAboveOas {
        /// Requested IPS bits.
        ips_bits: u8,
        /// The SMMU's OAS bits.
        oas_bits: u8,
    },
    /// The ASID does not fit the SMMU's ASID size.
    AsidTooWide {
        /// The ASID.
        asid: u16,
        /// ASID bits the SMMU supports.
        bits: u8,
    },
    /// The CPU's configuration cannot be shared (see [`SvaError`]).
    Sva(SvaError),
}

impl fmt::Display for CdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::T0szOutOfRange { t0sz, min, max } => {
                write!(f, "CD: T0SZ {t0sz} outside {min}..={max}")
            }
            Self::GranuleUnsupported(g) => write!(f, "CD: granule {g} not supported by the SMMU"),
            Self::Ttb0Misaligned { ttb0, align } => {
                write!(f, "CD: TTB0 {ttb0:#x} not aligned to {align:#x}")
            }
            Self::Ttb0OutOfRange { ttb0, ips_bits } => {
                write!(f, "CD: TTB0 {ttb0:#x} not below 2^{ips_bits}")
            }
            Self::IpsAboveOas { ips_bits, oas_bits } => {
                write!(
                    f,
                    "CD: IPS {ips_bits} bits exceeds the SMMU's OAS of {oas_bits} bits"
                )
            }
            Self::AsidTooWide { asid, bits } => {
                write!(f, "CD: ASID {asid} does not fit in {bits} bits")
            }
            Self::Sva(e) => write!(f, "CD: {e}"),
        }
    }
}

impl core::error::Error for CdError {}

/// The update-protocol description of CDs.
pub const FORMAT: EntryFormat = EntryFormat {
    name: "CD",
    valid_mask: 1 << 31,
    used: used_bits,
};

/// An invalid CD (`V = 0`).
pub const INVALID: EntryWords = [0; ENTRY_QWORDS];

fn mask<R: tock_registers::RegisterLongName>(f: tock_registers::fields::Field<u64, R>) -> u64 {
    f.mask << f.shift
}

/// Size in bytes of the top-level table for a TTB0 region of 2^(64 - `t0sz`) bytes.
pub fn top_level_table_bytes(t0sz: u8, granule: Granule) -> u64 {
    let page_shift = granule.shift();
    let per_level = page_shift - 3;
    let va_bits = 64 - u32::from(t0sz);
    let resolved = va_bits.saturating_sub(page_shift);
    let top = match resolved % per_level {
        0 => per_level,
        r => r,
    };
    8 << top
}

impl CdParams {
    /// The shared-table (SVA) context for the CPU's TTBR0 address space.
    ///
    /// # Errors
    ///
    /// [`CdError::Sva`] when [`Features::check_sva`] refuses the CPU configuration, or any other
    /// [`CdError`] from [`CdParams::validate`].
    pub fn sva(
        cpu: &CpuMmuConfig,
        ttb0: u64,
        asid: u16,
        mair: u64,
        features: &Features,
    ) -> Result<Self, CdError> {
        let compat = features.check_sva(cpu).map_err(CdError::Sva)?;
        let params = Self {
            asid,
            ttb0,
            t0sz: 64 - cpu.va_bits,
            granule: cpu.granule,
            ips: compat.ips,
            mair,
            walk_inner: Cacheability::WriteBackAllocate,
            walk_outer: Cacheability::WriteBackAllocate,
            walk_shareability: Shareability::InnerShareable,
            tbi0: false,
            affd: false,
            record_faults: true,
            walks_disabled: false,
        };
        params.validate(features)?;
        Ok(params)
    }

    /// The same context with TTB0 walks disabled (`EPD0 = 1`): the CD stays valid but every
    /// access faults. Used to quiesce a context before its tables go away.
    pub fn quiesced(self) -> Self {
        Self {
            walks_disabled: true,
            ..self
        }
    }

    /// Checks the parameters against the architecture and this SMMU.
    ///
    /// # Errors
    ///
    /// The first [`CdError`] found.
    pub fn validate(&self, features: &Features) -> Result<(), CdError> {
        if !features.supports_granule(self.granule) {
            return Err(CdError::GranuleUnsupported(self.granule));
        }
        // VMSAv8-64 without LVA/TTST: 16..=39 (QEMU enforces exactly this range).
        let min = if self.granule == Granule::Size64K && features.va_bits >= 52 {
            12
        } else {
            16
        };
        if !(min..=39).contains(&self.t0sz) {
            return Err(CdError::T0szOutOfRange {
                t0sz: self.t0sz,
                min,
                max: 39,
            });
        }
        if self.ips > features.oas {
            return Err(CdError::IpsAboveOas {
                ips_bits: self.ips.bits(),
                oas_bits: features.oas.bits(),
            });
        }
        let align = top_level_table_bytes(self.t0sz, self.granule).max(64);
        if !self.ttb0.is_multiple_of(align) {
            return Err(CdError::Ttb0Misaligned {
                ttb0: self.ttb0,
                align,
            });
        }
        if self.ttb0 >= self.ips.limit() {
            return Err(CdError::Ttb0OutOfRange {
                ttb0: self.ttb0,
                ips_bits: self.ips.bits(),
            });
        }
        let bits = features.asid_bits();
        if u32::from(self.asid) >> bits != 0 {
            return Err(CdError::AsidTooWide {
                asid: self.asid,
                bits,
            });
        }
        Ok(())
    }

    /// Builds the 64-byte CD (valid). Call [`CdParams::validate`] first.
    pub fn build(&self) -> EntryWords {
        let mut w0: LocalRegisterCopy<u64, CD0::Register> = LocalRegisterCopy::new(0);
        w0.write(
            CD0::T0SZ.val(u64::from(self.t0sz))
                + CD0::TG0.val(u64::from(self.granule.cd_tg0()))
                + CD0::IR0.val(self.walk_inner as u64)
                + CD0::OR0.val(self.walk_outer as u64)
                + CD0::SH0.val(self.walk_shareability as u64)
                + CD0::EPD0.val(u64::from(self.walks_disabled))
                + CD0::EPD1::SET
                + CD0::V::SET
                + CD0::IPS.val(u64::from(self.ips.encoding()))
                + CD0::AFFD.val(u64::from(self.affd))
                + CD0::TBI0.val(u64::from(self.tbi0))
                + CD0::AA64::SET
                + CD0::HD::CLEAR
                + CD0::HA::CLEAR
                + CD0::S::CLEAR
                + CD0::R.val(u64::from(self.record_faults))
                + CD0::A::SET
                + CD0::ASID.val(u64::from(self.asid)),
        );
        let mut w1: LocalRegisterCopy<u64, CD1::Register> = LocalRegisterCopy::new(0);
        w1.write(CD1::TTB0.val(self.ttb0 >> 4));
        let mut words = INVALID;
        words[0] = w0.get();
        words[1] = w1.get();
        words[3] = self.mair;
        words
    }

    /// Decodes a valid CD built by [`CdParams::build`]; `None` if `V = 0` or a field has a value
    /// this driver never programs.
    pub fn decode(words: &EntryWords) -> Option<Self> {
        let w0: LocalRegisterCopy<u64, CD0::Register> = LocalRegisterCopy::new(words[0]);
        let w1: LocalRegisterCopy<u64, CD1::Register> = LocalRegisterCopy::new(words[1]);
        if !w0.is_set(CD0::V) {
            return None;
        }
        let cache = |v: u64| match v {
            0 => Cacheability::NonCacheable,
            1 => Cacheability::WriteBackAllocate,
            2 => Cacheability::WriteThrough,
            _ => Cacheability::WriteBackNoWriteAllocate,
        };
        Some(Self {
            asid: w0.read(CD0::ASID) as u16,
            ttb0: w1.read(CD1::TTB0) << 4,
            t0sz: w0.read(CD0::T0SZ) as u8,
            granule: match w0.read(CD0::TG0) {
                0 => Granule::Size4K,
                1 => Granule::Size64K,
                2 => Granule::Size16K,
                _ => return None,
            },
            ips: AddressSize::from_encoding(w0.read(CD0::IPS) as u8),
            mair: words[3],
            walk_inner: cache(w0.read(CD0::IR0)),
            walk_outer: cache(w0.read(CD0::OR0)),
            walk_shareability: match w0.read(CD0::SH0) {
                0 => Shareability::NonShareable,
                2 => Shareability::OuterShareable,
                3 => Shareability::InnerShareable,
                _ => return None,
            },
            tbi0: w0.is_set(CD0::TBI0),
            affd: w0.is_set(CD0::AFFD),
            record_faults: w0.is_set(CD0::R),
            walks_disabled: w0.is_set(CD0::EPD0),
        })
    }
}

/// Bits the SMMU interprets for a CD with these contents (see [`crate::writer`]).
pub fn used_bits(words: &EntryWords) -> EntryWords {
    let mut used = INVALID;
    let w0: LocalRegisterCopy<u64, CD0::Register> = LocalRegisterCopy::new(words[0]);
    used[0] = mask(CD0::V);
    if !w0.is_set(CD0::V) {
        return used;
    }
    let ttb0_fields =
        mask(CD0::T0SZ) | mask(CD0::TG0) | mask(CD0::IR0) | mask(CD0::OR0) | mask(CD0::SH0);
    let ttb1_fields =
        mask(CD0::T1SZ) | mask(CD0::TG1) | mask(CD0::IR1) | mask(CD0::OR1) | mask(CD0::SH1);
    used[0] = u64::MAX;
    if w0.is_set(CD0::EPD0) {
        used[0] &= !ttb0_fields;
    } else {
        used[1] = u64::MAX;
    }
    if w0.is_set(CD0::EPD1) {
        used[0] &= !ttb1_fields;
    } else {
        used[2] = u64::MAX;
    }
    used[3] = u64::MAX; // MAIR
    used[4] = u64::MAX; // AMAIR
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        features::IdRegisters,
        writer::recording::{check_transition, record},
    };

    fn qemu() -> Features {
        Features::decode(IdRegisters::QEMU_7_2)
    }

    fn reference_params() -> CdParams {
        CdParams {
            asid: 5,
            ttb0: 0x4010_0000,
            t0sz: 25,
            granule: Granule::Size4K,
            ips: AddressSize::Bits44,
            mair: 0x0000_0000_0044_ff04,
            walk_inner: Cacheability::WriteBackAllocate,
            walk_outer: Cacheability::WriteBackAllocate,
            walk_shareability: Shareability::InnerShareable,
            tbi0: false,
            affd: false,
            record_faults: true,
            walks_disabled: false,
        }
    }

    #[test]
    fn golden_cd_from_the_reference() {
        // Appendix A: T0SZ = 25, ASID 5 -> low word 0xC0003519, high word 0x00056204.
        let cd = reference_params().build();
        assert_eq!(cd[0] as u32, 0xC000_3519);
        assert_eq!((cd[0] >> 32) as u32, 0x0005_6204);
        assert_eq!(cd[1], 0x4010_0000);
        assert_eq!(cd[2], 0);
        assert_eq!(cd[3], 0x0000_0000_0044_ff04);
        assert_eq!(&cd[4..], &[0; 4]);
        assert_eq!(reference_params().validate(&qemu()), Ok(()));
        assert_eq!(CdParams::decode(&cd), Some(reference_params()));
    }

    #[test]
    fn sva_constructor_follows_the_cpu() {
        let cpu = CpuMmuConfig {
            granule: Granule::Size4K,
            va_bits: 48,
            asid_bits: 16,
            pa_range_bits: 52,
            max_ram_pa: 0x6000_0000,
        };
        let p = CdParams::sva(&cpu, 0x4020_0000, 0x1E20, 0xFF, &qemu()).unwrap();
        assert_eq!(p.t0sz, 16);
        assert_eq!(p.ips, AddressSize::Bits44, "IPS clamped to the SMMU's OAS");
        assert!(p.record_faults);
        let cd = p.build();
        assert_eq!(cd[0] & (1 << 30), 1 << 30, "EPD1");
        assert_eq!(cd[0] & (1 << 45), 1 << 45, "R");
        assert_eq!(cd[0] & (1 << 46), 1 << 46, "A");
        assert_eq!(cd[0] & (1 << 41), 1 << 41, "AA64");
        assert_eq!(cd[0] & (3 << 42), 0, "HA/HD");
        assert_eq!(cd[0] >> 48, 0x1E20);
        let wide = CpuMmuConfig {
            max_ram_pa: 1 << 45,
            ..cpu
        };
        assert!(matches!(
            CdParams::sva(&wide, 0x4020_0000, 1, 0, &qemu()),
            Err(CdError::Sva(SvaError::RamAboveOas { .. }))
        ));
    }

    #[test]
    fn validation_names_the_problem() {
        let f = qemu();
        let p = reference_params();
        assert!(matches!(
            CdParams { t0sz: 40, ..p }.validate(&f),
            Err(CdError::T0szOutOfRange { t0sz: 40, .. })
        ));
        assert!(matches!(
            CdParams { t0sz: 15, ..p }.validate(&f),
            Err(CdError::T0szOutOfRange { .. })
        ));
        assert_eq!(
            CdParams {
                ttb0: 0x4010_0800,
                ..p
            }
            .validate(&f),
            Err(CdError::Ttb0Misaligned {
                ttb0: 0x4010_0800,
                align: 0x1000
            })
        );
        assert!(matches!(
            CdParams {
                ips: AddressSize::Bits48,
                ..p
            }
            .validate(&f),
            Err(CdError::IpsAboveOas {
                ips_bits: 48,
                oas_bits: 44
            })
        ));
        assert!(matches!(
            CdParams { ttb0: 1 << 44, ..p }.validate(&f),
            Err(CdError::Ttb0OutOfRange { .. })
        ));
        let asid8 = Features { asid16: false, ..f };
        assert_eq!(
            CdParams { asid: 256, ..p }.validate(&asid8),
            Err(CdError::AsidTooWide { asid: 256, bits: 8 })
        );
    }

    #[test]
    fn top_level_table_sizes() {
        assert_eq!(top_level_table_bytes(25, Granule::Size4K), 4096); // 39-bit: full L1
        assert_eq!(top_level_table_bytes(16, Granule::Size4K), 4096); // 48-bit: full L0
        assert_eq!(top_level_table_bytes(24, Granule::Size4K), 16); // 40-bit: 2-entry L0
        assert_eq!(top_level_table_bytes(22, Granule::Size64K), 64 << 10); // 42-bit: full L2
        assert_eq!(top_level_table_bytes(25, Granule::Size64K), 8 << 10); // 39-bit: 1024-entry L2
    }

    fn cd(p: CdParams) -> EntryWords {
        p.build()
    }

    /// The CD transitions, with Linux's counts where they coincide (s1_clear 2,
    /// s1_change_asid 1, sva_release 2 when the quiesced CD also drops TTB0).
    #[test]
    fn transitions() {
        let p = reference_params();
        // Install: everything else first, V last.
        check_transition(&FORMAT, INVALID, cd(p), 2, true);
        let (seen, _) = record(&FORMAT, INVALID, cd(p));
        assert_eq!(seen[0][0] & (1 << 31), 0);
        // Remove: V first.
        check_transition(&FORMAT, cd(p), INVALID, 2, true);
        let (seen, _) = record(&FORMAT, cd(p), INVALID);
        assert_eq!(seen[0][0] & (1 << 31), 0);
        // ASID change: one word.
        check_transition(&FORMAT, cd(p), cd(CdParams { asid: 1997, ..p }), 1, true);
        // TTB change: one word.
        check_transition(
            &FORMAT,
            cd(p),
            cd(CdParams {
                ttb0: 0x4030_0000,
                ..p
            }),
            1,
            true,
        );
        // Quiesce (EPD0 = 1) and back: one word; TTB0 may change as well without a break,
        // because the quiesced CD ignores it.
        check_transition(&FORMAT, cd(p), cd(p.quiesced()), 1, true);
        check_transition(&FORMAT, cd(p.quiesced()), cd(p), 1, true);
        let quiet_elsewhere = CdParams {
            ttb0: 0x4030_0000,
            ..p
        }
        .quiesced();
        check_transition(&FORMAT, cd(p), cd(quiet_elsewhere), 2, true);
        // ASID and TTB together: two words, so break-before-make.
        check_transition(
            &FORMAT,
            cd(p),
            cd(CdParams {
                asid: 6,
                ttb0: 0x4030_0000,
                ..p
            }),
            3,
            false,
        );
    }
}
