//! What this SMMU implements: the ID registers decoded into [`Features`], the features the
//! driver cannot work without ([`Features::check_required`]), and whether the CPU's stage-1
//! tables can be shared with the SMMU ([`Features::check_sva`]).
//!
//! Sources: SMMU_IDR0/1/3/5 and SMMU_AIDR (IHI 0070 G.b §6.3.1, §6.3.2, §6.3.4, §6.3.6,
//! §6.3.8).
//!
//! # Broadcast TLB maintenance is never relied on
//!
//! `IDR0.BTM` says the SMMU *can* snoop the CPUs' broadcast `TLBI ...IS` operations. This driver
//! records the bit for the boot log but never depends on it, even on an SMMU that has it, and
//! programs `CR2.PTM = 1` (private TLB maintenance) so the SMMU ignores broadcasts:
//!
//! - QEMU's model has `BTM = 0` and nothing in the CPU model reaches the SMMU, so a design that
//!   relied on broadcasts would simply be wrong there.
//! - Linux never enabled it either: it always writes `CR2.PTM = 1`, and MMU-700 erratum 2812531
//!   makes BTM unusable on that part.
//! - Explicit `CMD_TLBI_*` followed by `CMD_SYNC` gives one definite completion point that the
//!   driver itself observes: when the SMMU's `CONS` passes the sync, every earlier invalidation
//!   has completed (§4.7.3). Relying on a CPU `TLBI ...IS` + `DSB ISH` instead makes
//!   correctness depend on the interconnect really delivering DVM messages to this SMMU (an
//!   integration property `IDR0.BTM` advertises but software cannot verify, and errata have
//!   broken) and on `CD.ASET` choices; it would also make the flush path differ between BTM and
//!   non-BTM SMMUs, so the path tested on QEMU would not be the path used on hardware.
//!
//! The flush paths therefore always issue SMMU commands (see [`crate::planner`]).

use core::fmt;

use tock_registers::LocalRegisterCopy;

use crate::{
    hal::SmmuHal,
    regs::{AIDR, IDR0, IDR1, IDR3, IDR5, Registers, offset},
};

/// Translation granule of a stage-1 translation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages.
    Size4K,
    /// 16 KiB pages.
    Size16K,
    /// 64 KiB pages.
    Size64K,
}

impl Granule {
    /// log2 of the page size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size16K => 14,
            Self::Size64K => 16,
        }
    }

    /// Page size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// Encoding of the `TG` field of range TLB invalidation commands (§4.4.1.1).
    pub const fn tlbi_tg(self) -> u8 {
        match self {
            Self::Size4K => 0b01,
            Self::Size16K => 0b10,
            Self::Size64K => 0b11,
        }
    }

    /// Encoding of `CD.TG0` (§5.4): 0 = 4K, 1 = 64K, 2 = 16K.
    pub const fn cd_tg0(self) -> u8 {
        match self {
            Self::Size4K => 0b00,
            Self::Size64K => 0b01,
            Self::Size16K => 0b10,
        }
    }
}

impl fmt::Display for Granule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Size4K => "4K",
            Self::Size16K => "16K",
            Self::Size64K => "64K",
        })
    }
}

/// A physical/output address size, encoded as in `IDR5.OAS` and `CD.IPS` (§6.3.6, §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressSize {
    /// 32 bits (encoding 0b000).
    Bits32,
    /// 36 bits (0b001).
    Bits36,
    /// 40 bits (0b010).
    Bits40,
    /// 42 bits (0b011).
    Bits42,
    /// 44 bits (0b100).
    Bits44,
    /// 48 bits (0b101).
    Bits48,
    /// 52 bits (0b110).
    Bits52,
    /// 56 bits (0b111).
    Bits56,
}

impl AddressSize {
    const ALL: [Self; 8] = [
        Self::Bits32,
        Self::Bits36,
        Self::Bits40,
        Self::Bits42,
        Self::Bits44,
        Self::Bits48,
        Self::Bits52,
        Self::Bits56,
    ];

    /// Decodes the 3-bit `OAS`/`IPS`/`PARange`-style encoding.
    pub const fn from_encoding(encoding: u8) -> Self {
        Self::ALL[(encoding & 7) as usize]
    }

    /// The 3-bit encoding.
    pub const fn encoding(self) -> u8 {
        self as u8
    }

    /// Number of address bits.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Bits32 => 32,
            Self::Bits36 => 36,
            Self::Bits40 => 40,
            Self::Bits42 => 42,
            Self::Bits44 => 44,
            Self::Bits48 => 48,
            Self::Bits52 => 52,
            Self::Bits56 => 56,
        }
    }

    /// The largest encodable size that is not larger than `bits` (`None` below 32 bits).
    pub fn at_most(bits: u8) -> Option<Self> {
        Self::ALL.iter().rev().copied().find(|s| s.bits() <= bits)
    }

    /// One past the highest address of this size (2^bits).
    pub const fn limit(self) -> u64 {
        1 << self.bits()
    }
}

/// Translation table formats (`IDR0.TTF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormats {
    /// Encoding 0b00 (reserved).
    Reserved,
    /// VMSAv8-32 LPAE only.
    AArch32,
    /// VMSAv8-64 only.
    AArch64,
    /// Both.
    Both,
}

impl TableFormats {
    /// Whether VMSAv8-64 tables (what the CPU uses) are supported.
    pub fn aarch64(self) -> bool {
        matches!(self, Self::AArch64 | Self::Both)
    }
}

/// Hardware update of Access flag / Dirty state (`IDR0.HTTU`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Httu {
    /// No hardware updates: PTEs used by DMA must have AF set, writable pages must be writable.
    None,
    /// Access flag updates.
    AccessFlag,
    /// Access flag and dirty state.
    AccessDirty,
    /// Access flag, dirty state and table-descriptor access flag.
    AccessDirtyTable,
}

/// Endianness of translation tables (`IDR0.TTENDIAN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableEndianness {
    /// Either, per structure.
    Mixed,
    /// Encoding 0b01 (reserved).
    Reserved,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
}

/// Stall model (`IDR0.STALL_MODEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallModel {
    /// Stall and terminate both supported.
    StallAndTerminate,
    /// Faults always terminate the transaction (QEMU).
    TerminateOnly,
    /// Faults always stall.
    StallForced,
    /// Encoding 0b11 (reserved).
    Reserved,
}

/// The raw ID register values, kept for diagnostics and for decoding on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdRegisters {
    /// SMMU_IDR0.
    pub idr0: u32,
    /// SMMU_IDR1.
    pub idr1: u32,
    /// SMMU_IDR3.
    pub idr3: u32,
    /// SMMU_IDR5.
    pub idr5: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
}

impl IdRegisters {
    /// QEMU 7.2's values (reference §2), handy for tests and documentation.
    pub const QEMU_7_2: Self = Self {
        idr0: 0x0D40_101A,
        idr1: 0x0273_0010,
        idr3: 0x0000_1404,
        idr5: 0x0000_0074,
        aidr: 0x1,
    };

    /// Reads the ID registers through the HAL (32-bit accesses).
    pub fn read<H: SmmuHal + ?Sized>(hal: &H) -> Self {
        let regs = Registers::new(hal);
        Self {
            idr0: regs.read(offset::IDR0).get(),
            idr1: regs.read(offset::IDR1).get(),
            idr3: regs.read(offset::IDR3).get(),
            idr5: regs.read(offset::IDR5).get(),
            aidr: regs.read(offset::AIDR).get(),
        }
    }
}

/// The SMMU's features, decoded from the ID registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Architecture major revision (3 for SMMUv3; AIDR.ArchMajorRev + 3).
    pub version_major: u8,
    /// Architecture minor revision (SMMUv3.x).
    pub version_minor: u8,
    /// Stage 1 translation (`IDR0.S1P`).
    pub stage1: bool,
    /// Stage 2 translation (`IDR0.S2P`).
    pub stage2: bool,
    /// Translation table formats (`IDR0.TTF`).
    pub table_formats: TableFormats,
    /// IO-coherent table walks, structure fetches and queue accesses (`IDR0.COHACC`).
    pub coherent: bool,
    /// Broadcast TLB maintenance (`IDR0.BTM`). Recorded, never relied on (module docs).
    pub btm: bool,
    /// Hardware AF/dirty updates (`IDR0.HTTU`).
    pub httu: Httu,
    /// Hypervisor stage-1 contexts (`IDR0.Hyp`).
    pub hyp: bool,
    /// PCIe ATS (`IDR0.ATS`).
    pub ats: bool,
    /// 16-bit ASIDs (`IDR0.ASID16`); otherwise 8-bit.
    pub asid16: bool,
    /// MSIs (`IDR0.MSI`).
    pub msi: bool,
    /// WFE wake-up events (`IDR0.SEV`).
    pub sev: bool,
    /// Address translation operations (`IDR0.ATOS`).
    pub atos: bool,
    /// PCIe PRI (`IDR0.PRI`).
    pub pri: bool,
    /// 16-bit VMIDs (`IDR0.VMID16`).
    pub vmid16: bool,
    /// 2-level CD tables (`IDR0.CD2L`).
    pub cd2l: bool,
    /// Translation table endianness (`IDR0.TTENDIAN`).
    pub table_endianness: TableEndianness,
    /// Stall model (`IDR0.STALL_MODEL`).
    pub stall_model: StallModel,
    /// `IDR0.TERM_MODEL`: terminated transactions always abort (CD.A must be 1).
    pub terminate_aborts_only: bool,
    /// 2-level stream tables supported (`IDR0.ST_LEVEL == 0b01`).
    pub two_level_strtab: bool,
    /// StreamID bits (`IDR1.SIDSIZE`).
    pub sid_bits: u8,
    /// SubstreamID bits (`IDR1.SSIDSIZE`).
    pub ssid_bits: u8,
    /// log2 of the largest command queue (`IDR1.CMDQS`).
    pub cmdq_log2_max: u8,
    /// log2 of the largest event queue (`IDR1.EVENTQS`).
    pub eventq_log2_max: u8,
    /// Range invalidation and TTL hints (`IDR3.RIL`).
    pub ril: bool,
    /// Break-before-make level (`IDR3.BBML`).
    pub bbml: u8,
    /// Hierarchical attribute disable (`IDR3.HAD`).
    pub had: bool,
    /// Output (physical) address size (`IDR5.OAS`).
    pub oas: AddressSize,
    /// 4 KiB granule (`IDR5.GRAN4K`).
    pub gran4k: bool,
    /// 16 KiB granule (`IDR5.GRAN16K`).
    pub gran16k: bool,
    /// 64 KiB granule (`IDR5.GRAN64K`).
    pub gran64k: bool,
    /// Largest input VA size in bits from `IDR5.VAX` (48, 52 or 56).
    pub va_bits: u8,
    /// The raw registers.
    pub raw: IdRegisters,
}

/// A feature the driver cannot work without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFeature {
    /// `IDR0.S1P == 0`.
    Stage1,
    /// `IDR0.TTF` lacks VMSAv8-64.
    AArch64Tables,
    /// `IDR5.GRAN4K == 0`.
    Granule4K,
    /// `IDR0.COHACC == 0`: the driver does no cache maintenance of tables and queues.
    CoherentAccess,
    /// `IDR0.TTENDIAN` is big-endian only.
    LittleEndianTables,
    /// `IDR0.ST_LEVEL`/`IDR1.SIDSIZE`/`IDR1.CMDQS` make a usable configuration impossible.
    Queues,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stage1 => "SMMU lacks stage-1 translation (IDR0.S1P = 0)",
            Self::AArch64Tables => "SMMU lacks VMSAv8-64 translation tables (IDR0.TTF)",
            Self::Granule4K => "SMMU lacks the 4 KiB translation granule (IDR5.GRAN4K = 0)",
            Self::CoherentAccess => {
                "SMMU lacks coherent table/queue access (IDR0.COHACC = 0); this driver does no cache maintenance"
            }
            Self::LittleEndianTables => {
                "SMMU supports only big-endian translation tables (IDR0.TTENDIAN)"
            }
            Self::Queues => "SMMU command queue has fewer than 2 entries (IDR1.CMDQS = 0)",
        })
    }
}

impl core::error::Error for MissingFeature {}

/// The CPU's stage-1 configuration, as far as sharing its tables with the SMMU is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMmuConfig {
    /// TTBR0 granule (`TCR_EL1.TG0`).
    pub granule: Granule,
    /// Input VA bits of the TTBR0 region (`64 - TCR_EL1.T0SZ`).
    pub va_bits: u8,
    /// ASID bits the CPU uses (16 when `TCR_EL1.AS = 1` and `ID_AA64MMFR0_EL1.ASIDBits` = 16).
    pub asid_bits: u8,
    /// CPU physical address range in bits (`ID_AA64MMFR0_EL1.PARange`).
    pub pa_range_bits: u8,
    /// Exclusive upper bound of every physical address the shared tables use: the page tables
    /// themselves and every page mapped for DMA (normally the end of RAM).
    pub max_ram_pa: u64,
}

/// What the SMMU must be programmed with for a shared (SVA) context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvaCompatibility {
    /// `CD.IPS`: the CPU's PA range clamped to the SMMU's OAS.
    pub ips: AddressSize,
    /// ASID bits available in the SMMU.
    pub smmu_asid_bits: u8,
}

/// Why the CPU's stage-1 tables cannot be shared with this SMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvaError {
    /// The CPU's granule is not supported by the SMMU.
    GranuleUnsupported {
        /// The CPU's granule.
        granule: Granule,
    },
    /// The CPU's VA size is outside what a CD can express for this SMMU.
    VaBitsUnsupported {
        /// The CPU's TTBR0 VA bits.
        cpu_va_bits: u8,
        /// Smallest usable VA size.
        min_bits: u8,
        /// Largest VA size this SMMU translates (`IDR5.VAX`, 48 without LVA for 4K/16K).
        max_bits: u8,
    },
    /// The CPU uses wider ASIDs than the SMMU tags its TLB with.
    AsidTooWide {
        /// CPU ASID bits.
        cpu_bits: u8,
        /// SMMU ASID bits.
        smmu_bits: u8,
    },
    /// Some table or page PA would not be reachable through the SMMU's output address size.
    RamAboveOas {
        /// Exclusive end of RAM used by the shared tables.
        max_ram_pa: u64,
        /// SMMU output address size in bits.
        oas_bits: u8,
    },
    /// The CPU's own PA range is below 32 bits or below the RAM end given (bad input).
    CpuPaRangeInvalid {
        /// The CPU's PA range in bits.
        pa_range_bits: u8,
    },
    /// The SMMU is not IO-coherent, so it could miss CPU page-table updates held in caches.
    NotCoherent,
}

impl fmt::Display for SvaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::GranuleUnsupported { granule } => {
                write!(f, "SVA: CPU granule {granule} not supported by the SMMU")
            }
            Self::VaBitsUnsupported {
                cpu_va_bits,
                min_bits,
                max_bits,
            } => write!(
                f,
                "SVA: CPU VA size {cpu_va_bits} bits outside the SMMU's {min_bits}..={max_bits}"
            ),
            Self::AsidTooWide {
                cpu_bits,
                smmu_bits,
            } => write!(
                f,
                "SVA: CPU uses {cpu_bits}-bit ASIDs, SMMU supports {smmu_bits}"
            ),
            Self::RamAboveOas {
                max_ram_pa,
                oas_bits,
            } => write!(
                f,
                "SVA: RAM/table PAs up to {max_ram_pa:#x} exceed the SMMU's {oas_bits}-bit output address size"
            ),
            Self::CpuPaRangeInvalid { pa_range_bits } => {
                write!(f, "SVA: CPU PA range of {pa_range_bits} bits is invalid")
            }
            Self::NotCoherent => f.write_str("SVA: SMMU is not IO-coherent (IDR0.COHACC = 0)"),
        }
    }
}

impl core::error::Error for SvaError {}

impl Features {
    /// Reads and decodes the ID registers.
    pub fn read<H: SmmuHal + ?Sized>(hal: &H) -> Self {
        Self::decode(IdRegisters::read(hal))
    }

    /// Decodes raw ID register values.
    pub fn decode(raw: IdRegisters) -> Self {
        let idr0: LocalRegisterCopy<u32, IDR0::Register> = LocalRegisterCopy::new(raw.idr0);
        let idr1: LocalRegisterCopy<u32, IDR1::Register> = LocalRegisterCopy::new(raw.idr1);
        let idr3: LocalRegisterCopy<u32, IDR3::Register> = LocalRegisterCopy::new(raw.idr3);
        let idr5: LocalRegisterCopy<u32, IDR5::Register> = LocalRegisterCopy::new(raw.idr5);
        let aidr: LocalRegisterCopy<u32, AIDR::Register> = LocalRegisterCopy::new(raw.aidr);
        let field = |v: u32| v as u8;
        Self {
            version_major: 3 + field(aidr.read(AIDR::ARCH_MAJOR_REV)),
            version_minor: field(aidr.read(AIDR::ARCH_MINOR_REV)),
            stage1: idr0.is_set(IDR0::S1P),
            stage2: idr0.is_set(IDR0::S2P),
            table_formats: match idr0.read(IDR0::TTF) {
                1 => TableFormats::AArch32,
                2 => TableFormats::AArch64,
                3 => TableFormats::Both,
                _ => TableFormats::Reserved,
            },
            coherent: idr0.is_set(IDR0::COHACC),
            btm: idr0.is_set(IDR0::BTM),
            httu: match idr0.read(IDR0::HTTU) {
                1 => Httu::AccessFlag,
                2 => Httu::AccessDirty,
                3 => Httu::AccessDirtyTable,
                _ => Httu::None,
            },
            hyp: idr0.is_set(IDR0::HYP),
            ats: idr0.is_set(IDR0::ATS),
            asid16: idr0.is_set(IDR0::ASID16),
            msi: idr0.is_set(IDR0::MSI),
            sev: idr0.is_set(IDR0::SEV),
            atos: idr0.is_set(IDR0::ATOS),
            pri: idr0.is_set(IDR0::PRI),
            vmid16: idr0.is_set(IDR0::VMID16),
            cd2l: idr0.is_set(IDR0::CD2L),
            table_endianness: match idr0.read(IDR0::TTENDIAN) {
                0 => TableEndianness::Mixed,
                2 => TableEndianness::Little,
                3 => TableEndianness::Big,
                _ => TableEndianness::Reserved,
            },
            stall_model: match idr0.read(IDR0::STALL_MODEL) {
                0 => StallModel::StallAndTerminate,
                1 => StallModel::TerminateOnly,
                2 => StallModel::StallForced,
                _ => StallModel::Reserved,
            },
            terminate_aborts_only: idr0.is_set(IDR0::TERM_MODEL),
            two_level_strtab: idr0.read(IDR0::ST_LEVEL) == 1,
            sid_bits: field(idr1.read(IDR1::SIDSIZE)),
            ssid_bits: field(idr1.read(IDR1::SSIDSIZE)),
            cmdq_log2_max: field(idr1.read(IDR1::CMDQS)),
            eventq_log2_max: field(idr1.read(IDR1::EVENTQS)),
            ril: idr3.is_set(IDR3::RIL),
            bbml: field(idr3.read(IDR3::BBML)),
            had: idr3.is_set(IDR3::HAD),
            oas: AddressSize::from_encoding(field(idr5.read(IDR5::OAS))),
            gran4k: idr5.is_set(IDR5::GRAN4K),
            gran16k: idr5.is_set(IDR5::GRAN16K),
            gran64k: idr5.is_set(IDR5::GRAN64K),
            va_bits: match idr5.read(IDR5::VAX) {
                1 => 52,
                2 => 56,
                _ => 48,
            },
            raw,
        }
    }

    /// ASID bits the SMMU's TLB is tagged with.
    pub fn asid_bits(&self) -> u8 {
        if self.asid16 { 16 } else { 8 }
    }

    /// Whether the SMMU supports translation tables with this granule.
    pub fn supports_granule(&self, granule: Granule) -> bool {
        match granule {
            Granule::Size4K => self.gran4k,
            Granule::Size16K => self.gran16k,
            Granule::Size64K => self.gran64k,
        }
    }

    /// Refuses an SMMU the driver cannot drive, naming the first missing feature.
    ///
    /// # Errors
    ///
    /// [`MissingFeature`] when stage 1, VMSAv8-64 tables, the 4 KiB granule, coherent access or
    /// little-endian tables are absent, or the command queue cannot hold a command plus a sync.
    pub fn check_required(&self) -> Result<(), MissingFeature> {
        if !self.stage1 {
            return Err(MissingFeature::Stage1);
        }
        if !self.table_formats.aarch64() {
            return Err(MissingFeature::AArch64Tables);
        }
        if !self.gran4k {
            return Err(MissingFeature::Granule4K);
        }
        if !self.coherent {
            return Err(MissingFeature::CoherentAccess);
        }
        if self.table_endianness == TableEndianness::Big {
            return Err(MissingFeature::LittleEndianTables);
        }
        if self.cmdq_log2_max == 0 {
            return Err(MissingFeature::Queues);
        }
        Ok(())
    }

    /// Checks that the CPU's stage-1 tables can be walked by this SMMU, and returns the `CD.IPS`
    /// to use.
    ///
    /// The check is about *addresses the SMMU must reach*, not about the CPU's PA range: with
    /// QEMU `-cpu max` the CPU reports 52-bit `PARange` while the SMMU's OAS is 44 bits, which
    /// is fine as long as every table and page PA lies below 2^OAS. `CD.IPS` is then the
    /// smaller of the two sizes. (Linux's `arm_smmu_sva_supported()` compares OAS with the CPU PA
    /// size and would refuse this configuration.)
    ///
    /// # Errors
    ///
    /// [`SvaError`] naming the first incompatibility.
    pub fn check_sva(&self, cpu: &CpuMmuConfig) -> Result<SvaCompatibility, SvaError> {
        if !self.coherent {
            return Err(SvaError::NotCoherent);
        }
        if !self.supports_granule(cpu.granule) {
            return Err(SvaError::GranuleUnsupported {
                granule: cpu.granule,
            });
        }
        // CD.T0SZ: 16..=39 for VMSAv8-64 without the small-translation-table feature; more than
        // 48 bits needs VAX and (for 4K/16K) LPA2, which this driver does not program.
        let max_bits = if cpu.granule == Granule::Size64K {
            self.va_bits.min(52)
        } else {
            48
        };
        let min_bits = 25;
        if cpu.va_bits < min_bits || cpu.va_bits > max_bits {
            return Err(SvaError::VaBitsUnsupported {
                cpu_va_bits: cpu.va_bits,
                min_bits,
                max_bits,
            });
        }
        if cpu.asid_bits > self.asid_bits() {
            return Err(SvaError::AsidTooWide {
                cpu_bits: cpu.asid_bits,
                smmu_bits: self.asid_bits(),
            });
        }
        let cpu_pa =
            AddressSize::at_most(cpu.pa_range_bits).ok_or(SvaError::CpuPaRangeInvalid {
                pa_range_bits: cpu.pa_range_bits,
            })?;
        if cpu.max_ram_pa > cpu_pa.limit() {
            return Err(SvaError::CpuPaRangeInvalid {
                pa_range_bits: cpu.pa_range_bits,
            });
        }
        if cpu.max_ram_pa > self.oas.limit() {
            return Err(SvaError::RamAboveOas {
                max_ram_pa: cpu.max_ram_pa,
                oas_bits: self.oas.bits(),
            });
        }
        Ok(SvaCompatibility {
            ips: cpu_pa.min(self.oas),
            smmu_asid_bits: self.asid_bits(),
        })
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

impl fmt::Display for Features {
    /// One boot-log line, e.g.
    /// `SMMUv3.1 S1 TTF=AArch64 OAS=44 VA=48 SID=16 SSID=0 CMDQ=2^19 EVTQ=2^19 ST=2-level ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMUv{}.{}", self.version_major, self.version_minor)?;
        let stages = match (self.stage1, self.stage2) {
            (true, true) => "S1+S2",
            (true, false) => "S1",
            (false, true) => "S2",
            (false, false) => "no-stages",
        };
        write!(
            f,
            " {stages} TTF={:?} OAS={} VA={} SID={} SSID={} CMDQ=2^{} EVTQ=2^{} ST={}",
            self.table_formats,
            self.oas.bits(),
            self.va_bits,
            self.sid_bits,
            self.ssid_bits,
            self.cmdq_log2_max,
            self.eventq_log2_max,
            if self.two_level_strtab {
                "2-level"
            } else {
                "linear"
            },
        )?;
        f.write_str(" gran=")?;
        let mut sep = "";
        for (present, name) in [
            (self.gran4k, "4K"),
            (self.gran16k, "16K"),
            (self.gran64k, "64K"),
        ] {
            if present {
                write!(f, "{sep}{name}")?;
                sep = "+";
            }
        }
        write!(
            f,
            " COHACC={} ASID16={} VMID16={} RIL={} BBML={} HTTU={:?} BTM={}(unused) MSI={} SEV={} \
             PRI={} ATS={} CD2L={} HYP={} stall={:?} term={}",
            yes_no(self.coherent),
            yes_no(self.asid16),
            yes_no(self.vmid16),
            yes_no(self.ril),
            self.bbml,
            self.httu,
            yes_no(self.btm),
            yes_no(self.msi),
            yes_no(self.sev),
            yes_no(self.pri),
            yes_no(self.ats),
            yes_no(self.cd2l),
            yes_no(self.hyp),
            self.stall_model,
            if self.terminate_aborts_only {
                "abort"
            } else {
                "CD.A"
            },
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    fn qemu() -> Features {
        Features::decode(IdRegisters::QEMU_7_2)
    }

    #[test]
    fn decodes_qemu_7_2() {
        let f = qemu();
        assert_eq!((f.version_major, f.version_minor), (3, 1));
        assert!(f.stage1 && !f.stage2);
        assert_eq!(f.table_formats, TableFormats::AArch64);
        assert!(f.coherent && !f.btm && f.asid16 && !f.vmid16);
        assert_eq!(f.httu, Httu::None);
        assert!(!f.msi && !f.sev && !f.pri && !f.ats && !f.cd2l);
        assert_eq!(f.table_endianness, TableEndianness::Little);
        assert_eq!(f.stall_model, StallModel::TerminateOnly);
        assert!(f.terminate_aborts_only);
        assert!(f.two_level_strtab);
        assert_eq!((f.sid_bits, f.ssid_bits), (16, 0));
        assert_eq!((f.cmdq_log2_max, f.eventq_log2_max), (19, 19));
        assert!(f.ril && f.had);
        assert_eq!(f.bbml, 2);
        assert_eq!(f.oas, AddressSize::Bits44);
        assert!(f.gran4k && f.gran16k && f.gran64k);
        assert_eq!(f.va_bits, 48);
        assert_eq!(f.check_required(), Ok(()));
    }

    #[test]
    fn decodes_qemu_10_nested() {
        // virt >= 9.2: S2P=1, VMID16=1, XNX in IDR3.
        let f = Features::decode(IdRegisters {
            idr0: 0x0D44_101B,
            idr3: 0x1414,
            ..IdRegisters::QEMU_7_2
        });
        assert!(f.stage1 && f.stage2 && f.vmid16);
        assert_eq!(f.check_required(), Ok(()));
    }

    #[test]
    fn display_is_one_line_naming_the_essentials() {
        let line = qemu().to_string();
        assert!(!line.contains('\n'));
        for needle in [
            "SMMUv3.1",
            "S1 ",
            "OAS=44",
            "SID=16",
            "ST=2-level",
            "gran=4K+16K+64K",
            "RIL=yes",
            "BTM=no(unused)",
        ] {
            assert!(line.contains(needle), "{needle:?} missing from {line}");
        }
    }

    #[test]
    fn required_features_are_named() {
        let base = IdRegisters::QEMU_7_2;
        let cases = [
            (base.idr0 & !(1 << 1), base.idr5, MissingFeature::Stage1),
            (
                base.idr0 & !(3 << 2) | (1 << 2),
                base.idr5,
                MissingFeature::AArch64Tables,
            ),
            (base.idr0, base.idr5 & !(1 << 4), MissingFeature::Granule4K),
            (
                base.idr0 & !(1 << 4),
                base.idr5,
                MissingFeature::CoherentAccess,
            ),
            (
                base.idr0 | (3 << 21),
                base.idr5,
                MissingFeature::LittleEndianTables,
            ),
        ];
        for (idr0, idr5, missing) in cases {
            let f = Features::decode(IdRegisters { idr0, idr5, ..base });
            assert_eq!(f.check_required(), Err(missing));
            assert!(!missing.to_string().is_empty());
        }
    }

    fn cpu_max() -> CpuMmuConfig {
        CpuMmuConfig {
            granule: Granule::Size4K,
            va_bits: 48,
            asid_bits: 16,
            pa_range_bits: 52,
            max_ram_pa: 0x4000_0000 + (512 << 20),
        }
    }

    #[test]
    fn sva_accepts_cpu_pa_range_above_oas_and_clamps_ips() {
        // QEMU -cpu max: PARange 52 bits, SMMU OAS 44 bits, RAM far below 2^44.
        let ok = qemu().check_sva(&cpu_max()).unwrap();
        assert_eq!(ok.ips, AddressSize::Bits44);
        let narrow = CpuMmuConfig {
            pa_range_bits: 40,
            ..cpu_max()
        };
        assert_eq!(qemu().check_sva(&narrow).unwrap().ips, AddressSize::Bits40);
    }

    #[test]
    fn sva_refuses_ram_above_oas() {
        let cpu = CpuMmuConfig {
            max_ram_pa: (1 << 44) + 0x1000,
            ..cpu_max()
        };
        assert_eq!(
            qemu().check_sva(&cpu),
            Err(SvaError::RamAboveOas {
                max_ram_pa: (1 << 44) + 0x1000,
                oas_bits: 44
            })
        );
        // Exactly 2^44 as an exclusive end is still reachable.
        let edge = CpuMmuConfig {
            max_ram_pa: 1 << 44,
            ..cpu_max()
        };
        assert!(qemu().check_sva(&edge).is_ok());
    }

    #[test]
    fn sva_names_each_incompatibility() {
        let f = qemu();
        let no16k = Features {
            gran16k: false,
            ..f
        };
        let cpu16k = CpuMmuConfig {
            granule: Granule::Size16K,
            ..cpu_max()
        };
        assert_eq!(
            no16k.check_sva(&cpu16k),
            Err(SvaError::GranuleUnsupported {
                granule: Granule::Size16K
            })
        );
        let wide_va = CpuMmuConfig {
            va_bits: 52,
            ..cpu_max()
        };
        assert!(matches!(
            f.check_sva(&wide_va),
            Err(SvaError::VaBitsUnsupported {
                cpu_va_bits: 52,
                max_bits: 48,
                ..
            })
        ));
        let asid8 = Features { asid16: false, ..f };
        assert_eq!(
            asid8.check_sva(&cpu_max()),
            Err(SvaError::AsidTooWide {
                cpu_bits: 16,
                smmu_bits: 8
            })
        );
        let incoherent = Features {
            coherent: false,
            ..f
        };
        assert_eq!(incoherent.check_sva(&cpu_max()), Err(SvaError::NotCoherent));
        for e in [
            SvaError::NotCoherent,
            SvaError::RamAboveOas {
                max_ram_pa: 1,
                oas_bits: 44,
            },
        ] {
            assert!(e.to_string().starts_with("SVA:"));
        }
    }

    #[test]
    fn address_sizes() {
        assert_eq!(AddressSize::at_most(52), Some(AddressSize::Bits52));
        assert_eq!(AddressSize::at_most(47), Some(AddressSize::Bits44));
        assert_eq!(AddressSize::at_most(31), None);
        assert_eq!(AddressSize::from_encoding(4).bits(), 44);
        assert_eq!(AddressSize::Bits44.encoding(), 4);
    }
}
