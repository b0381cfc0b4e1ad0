//! VMSAv8-64 stage-1 descriptor encoding for the 4 KiB granule, 48-bit VA configuration.
//!
//! One place defines every bit the kernel writes into a translation table, and the memory
//! attribute (MAIR) convention those bits refer to. The CPU's MMU and the SMMU (which walks the
//! very same tables for shared address spaces) both interpret them, so they must agree.
//!
//! References are to the Arm Architecture Reference Manual for A-profile, DDI 0487 K.a:
//! D8.3 (translation table descriptor formats), D8.4 (memory access control: AP, PXN/UXN, AF)
//! and D8.5 (memory region attributes: AttrIndx, MAIR_ELx, shareability).
//!
//! # Layout (4 KiB granule)
//!
//! | Bits    | Table descriptor (L0–L2) | Block (L1–L2) / page (L3) descriptor |
//! |---------|--------------------------|--------------------------------------|
//! | 0       | valid                    | valid                                |
//! | 1       | 1 = table                | 0 = block (L1/L2), 1 = page (L3)     |
//! | 4:2     | ignored                  | AttrIndx (MAIR_EL1 slot)             |
//! | 5       | ignored                  | NS (ignored in Non-secure state)     |
//! | 7:6     | ignored                  | AP\[2:1\]: AP\[2\] = read-only, AP\[1\] = EL0 access |
//! | 9:8     | ignored                  | SH (0b11 = Inner Shareable)          |
//! | 10      | ignored                  | AF (access flag)                     |
//! | 11      | ignored                  | nG (not global: tagged with the ASID)|
//! | 47:12   | next-level table address | output address (47:21 for a 2 MiB block) |
//! | 51      | —                        | DBM (unused here)                    |
//! | 52      | —                        | Contiguous (unused here)             |
//! | 53      | —                        | PXN                                  |
//! | 54      | —                        | UXN (XN)                             |
//! | 58:55   | ignored                  | software use                         |
//! | 63:59   | NSTable/APTable/XNTable  | ignored (left zero)                  |
//!
//! Level 0 never holds a block with this granule and VA size; level 3 type `0b01` is reserved
//! (and a translation fault).

use core::fmt;

use bitflags::bitflags;

use crate::mm::addr::PhysAddr;

// ---------------------------------------------------------------------------------------------
// Memory attribute convention (MAIR_EL1)
// ---------------------------------------------------------------------------------------------

/// MAIR_EL1 slot for Normal memory, Inner/Outer Write-Back Non-transient, Read- and
/// Write-Allocate. All RAM (kernel image, heap, linear window, shared address spaces) uses it.
///
/// Shareability is not a MAIR property: every Normal mapping is also written with
/// SH = Inner Shareable (see [`PteFlags::SH_INNER`]), which the SMMU's context descriptor must
/// match (CD.SH0 = IS, IR0/OR0 = WB-RAWA) for SVA to be coherent.
pub const MAIR_IDX_NORMAL: u8 = 0;
/// MAIR_EL1 slot for Device-nGnRE memory (MMIO).
pub const MAIR_IDX_DEVICE: u8 = 1;

/// MAIR attribute byte for [`MAIR_IDX_NORMAL`]: `0xFF` = Outer WB-RAWA, Inner WB-RAWA
/// (Arm ARM D8.5, MAIR_EL1.Attr`<n>` encoding `0b1111_1111`).
pub const MAIR_ATTR_NORMAL_WB_RAWA: u8 = 0xFF;
/// MAIR attribute byte for [`MAIR_IDX_DEVICE`]: `0x04` = Device-nGnRE.
pub const MAIR_ATTR_DEVICE_NGNRE: u8 = 0x04;

/// The value the MMU setup must program into MAIR_EL1 (and the SMMU CD's MAIR field) so that
/// the AttrIndx values written by this module mean what they say. Unused slots are 0
/// (Device-nGnRnE), so a stray index faults towards the strictest memory type.
pub const MAIR_EL1_VALUE: u64 = (MAIR_ATTR_NORMAL_WB_RAWA as u64) << (8 * MAIR_IDX_NORMAL as u64)
    | (MAIR_ATTR_DEVICE_NGNRE as u64) << (8 * MAIR_IDX_DEVICE as u64);

// ---------------------------------------------------------------------------------------------
// Raw descriptor bits
// ---------------------------------------------------------------------------------------------

bitflags! {
    /// Raw single-bit (and the two-bit SH) fields of a stage-1 descriptor, excluding AttrIndx
    /// (see [`attr_index_bits`]) and the address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// Descriptor is valid.
        const VALID = 1 << 0;
        /// Bit 1: table (L0–L2) or page (L3); clear means block (L1–L2).
        const TABLE_OR_PAGE = 1 << 1;
        /// AP\[1\]: accessible from EL0.
        const AP_EL0 = 1 << 6;
        /// AP\[2\]: read-only (at every EL that has access).
        const AP_RO = 1 << 7;
        /// SH = 0b11, Inner Shareable.
        const SH_INNER = 0b11 << 8;
        /// Access flag. Always set by this kernel: neither the CPU (no FEAT_HAFDBS use) nor the
        /// SMMU (CD.HA = 0, and QEMU ≥ 9.1 checks AF) may see AF = 0 on a mapping in use.
        const AF = 1 << 10;
        /// Not global: the entry is tagged with the ASID of the TTBR it was walked from.
        const NG = 1 << 11;
        /// Privileged execute-never.
        const PXN = 1 << 53;
        /// Unprivileged execute-never (XN at EL1&0 stage 1).
        const UXN = 1 << 54;
        /// Software bit 55: reserved for this kernel, currently unused.
        const SW0 = 1 << 55;
    }
}

/// Mask of the AttrIndx field (bits 4:2).
pub const ATTR_INDEX_MASK: u64 = 0b111 << 2;
/// Mask of the output/next-level address (bits 47:12).
pub const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;
/// The bits of a leaf descriptor that describe attributes rather than the type or the address;
/// two leaves "have the same attributes" iff these are equal.
pub const LEAF_ATTR_MASK: u64 =
    !(ADDR_MASK | PteFlags::VALID.bits() | PteFlags::TABLE_OR_PAGE.bits());

/// The AttrIndx field for MAIR slot `idx` (0..=7).
pub const fn attr_index_bits(idx: u8) -> u64 {
    ((idx as u64) & 0b111) << 2
}

// ---------------------------------------------------------------------------------------------
// Typed permissions and attributes
// ---------------------------------------------------------------------------------------------

bitflags! {
    /// Access permissions of a mapping.
    ///
    /// Stage 1 cannot express "no read" on a valid entry (AP\[2:1\] always grants read to some
    /// EL), so [`Perms::READ`] is mandatory; write and execute together are refused (W^X).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u8 {
        /// Readable (mandatory).
        const READ = 1 << 0;
        /// Writable (AP\[2\] = 0).
        const WRITE = 1 << 1;
        /// Executable at the owning EL (EL1 for kernel mappings, EL0 for [`Perms::USER`] ones).
        const EXEC = 1 << 2;
        /// Accessible from EL0 (AP\[1\] = 1). Kernel and shared-with-device address spaces do
        /// not need it: the kernel runs at EL1 and the SMMU treats DMA as privileged.
        const USER = 1 << 3;
    }
}

impl Perms {
    /// Read-only.
    pub const R: Self = Self::READ;
    /// Read-write.
    pub const RW: Self = Self::READ.union(Self::WRITE);
    /// Read-execute.
    pub const RX: Self = Self::READ.union(Self::EXEC);

    /// Whether `self` grants everything `old` granted, with the same EL0 accessibility, and
    /// something more: the change is a pure *permission upgrade* that may be done in place on
    /// a valid entry and that the CPU's TLB may still hold in its old, more restrictive form.
    pub fn is_upgrade_of(self, old: Perms) -> bool {
        self != old && self.contains(old) && self.contains(Perms::USER) == old.contains(Perms::USER)
    }
}

/// Memory type of a mapping (selects the MAIR slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal write-back cacheable RAM ([`MAIR_IDX_NORMAL`]), Inner Shareable.
    Normal,
    /// Device-nGnRE MMIO ([`MAIR_IDX_DEVICE`]); always execute-never.
    Device,
}

impl MemType {
    /// The MAIR slot of this memory type.
    pub const fn mair_index(self) -> u8 {
        match self {
            MemType::Normal => MAIR_IDX_NORMAL,
            MemType::Device => MAIR_IDX_DEVICE,
        }
    }
}

/// Everything that describes a leaf mapping except its output address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapAttrs {
    /// Access permissions.
    pub perms: Perms,
    /// Memory type.
    pub mem: MemType,
    /// Global (nG = 0; right for TTBR1 kernel mappings) or ASID-tagged (nG = 1; required for
    /// every TTBR0 address space, since several of them use the same VAs).
    pub global: bool,
}

impl MapAttrs {
    /// Kernel text: read + execute, global.
    pub const KERNEL_TEXT: Self = Self::new(Perms::RX, MemType::Normal, true);
    /// Kernel read-only data: read, execute-never, global.
    pub const KERNEL_RODATA: Self = Self::new(Perms::R, MemType::Normal, true);
    /// Kernel data, bss, stacks, heap, linear window: read-write, execute-never, global.
    pub const KERNEL_DATA: Self = Self::new(Perms::RW, MemType::Normal, true);
    /// Kernel MMIO: Device-nGnRE, read-write, execute-never, global.
    pub const KERNEL_DEVICE: Self = Self::new(Perms::RW, MemType::Device, true);
    /// Shared (TTBR0, SVA) read-only normal memory, ASID-tagged.
    pub const SHARED_RO: Self = Self::new(Perms::R, MemType::Normal, false);
    /// Shared (TTBR0, SVA) read-write normal memory, ASID-tagged.
    pub const SHARED_RW: Self = Self::new(Perms::RW, MemType::Normal, false);

    /// Attributes from their parts.
    pub const fn new(perms: Perms, mem: MemType, global: bool) -> Self {
        Self { perms, mem, global }
    }

    /// The same attributes with other permissions.
    pub const fn with_perms(self, perms: Perms) -> Self {
        Self { perms, ..self }
    }

    /// Checks the combination is encodable and allowed.
    ///
    /// # Errors
    ///
    /// [`AttrError`] if READ is missing, WRITE and EXEC are both requested (W^X), or EXEC is
    /// requested on device memory.
    pub fn validate(self) -> Result<(), AttrError> {
        if !self.perms.contains(Perms::READ) {
            return Err(AttrError::NoRead);
        }
        if self.perms.contains(Perms::WRITE | Perms::EXEC) {
            return Err(AttrError::WriteAndExec);
        }
        if self.perms.contains(Perms::EXEC) && self.mem == MemType::Device {
            return Err(AttrError::ExecDevice);
        }
        Ok(())
    }

    /// The leaf attribute bits (everything in [`LEAF_ATTR_MASK`] plus AF), without the type
    /// bits and the address. Does not validate.
    pub fn leaf_bits(self) -> u64 {
        let mut f = PteFlags::AF | PteFlags::SH_INNER;
        if !self.perms.contains(Perms::WRITE) {
            f |= PteFlags::AP_RO;
        }
        let user = self.perms.contains(Perms::USER);
        if user {
            f |= PteFlags::AP_EL0;
        }
        if !self.global {
            f |= PteFlags::NG;
        }
        // Execute permission applies to the EL that owns the mapping; the other EL never
        // executes it (the kernel must not execute user memory, EL0 never kernel memory).
        f |= match (
            self.perms.contains(Perms::EXEC) && self.mem == MemType::Normal,
            user,
        ) {
            (true, false) => PteFlags::UXN,
            (true, true) => PteFlags::PXN,
            (false, _) => PteFlags::PXN | PteFlags::UXN,
        };
        f.bits() | attr_index_bits(self.mem.mair_index())
    }

    /// Decodes the attributes of a leaf descriptor. An AttrIndx other than the two defined
    /// slots decodes as [`MemType::Device`] (the conservative reading).
    pub fn from_leaf_bits(bits: u64) -> Self {
        let f = PteFlags::from_bits_truncate(bits);
        let mut perms = Perms::READ;
        if !f.contains(PteFlags::AP_RO) {
            perms |= Perms::WRITE;
        }
        let user = f.contains(PteFlags::AP_EL0);
        if user {
            perms |= Perms::USER;
        }
        let xn = if user { PteFlags::UXN } else { PteFlags::PXN };
        if !f.contains(xn) {
            perms |= Perms::EXEC;
        }
        let mem = if (bits & ATTR_INDEX_MASK) == attr_index_bits(MAIR_IDX_NORMAL) {
            MemType::Normal
        } else {
            MemType::Device
        };
        Self {
            perms,
            mem,
            global: !f.contains(PteFlags::NG),
        }
    }
}

/// Why a [`MapAttrs`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrError {
    /// Stage 1 cannot map a valid entry without read access.
    NoRead,
    /// Writable and executable at once (W^X).
    WriteAndExec,
    /// Executable device memory.
    ExecDevice,
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrError::NoRead => "mapping without read permission",
            AttrError::WriteAndExec => "mapping both writable and executable (W^X)",
            AttrError::ExecDevice => "executable device memory",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// What a descriptor is, given the level it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescKind {
    /// Bit 0 clear (or the reserved L3 encoding `0b01`): translation fault.
    Invalid,
    /// Next-level table (levels 0–2).
    Table,
    /// Block (levels 1–2 with this granule).
    Block,
    /// Page (level 3).
    Page,
}

/// A raw 64-bit stage-1 descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(pub u64);

impl Descriptor {
    /// The invalid descriptor.
    pub const INVALID: Self = Self(0);

    /// A table descriptor pointing at the next-level table `pa` (`pa | 0b11`; hierarchical
    /// attribute fields left zero: no restriction).
    pub const fn table(pa: PhysAddr) -> Self {
        Self((pa.0 & ADDR_MASK) | 0b11)
    }

    /// A level-3 page descriptor (`pa | 0b11 | attrs`).
    pub fn page(pa: PhysAddr, attrs: MapAttrs) -> Self {
        Self((pa.0 & ADDR_MASK) | 0b11 | attrs.leaf_bits())
    }

    /// A level-1/2 block descriptor (`pa | 0b01 | attrs`).
    pub fn block(pa: PhysAddr, attrs: MapAttrs) -> Self {
        Self((pa.0 & ADDR_MASK) | 0b01 | attrs.leaf_bits())
    }

    /// A level-3 page descriptor from raw flags (for golden-value tests and special cases).
    pub const fn page_raw(pa: PhysAddr, flags: PteFlags) -> Self {
        Self((pa.0 & ADDR_MASK) | 0b11 | flags.bits())
    }

    /// A block descriptor from raw flags (the type bits of `flags` are ignored).
    pub const fn block_raw(pa: PhysAddr, flags: PteFlags) -> Self {
        Self((pa.0 & ADDR_MASK) | 0b01 | (flags.bits() & !0b11))
    }

    /// The raw value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether bit 0 is set.
    pub const fn is_valid(self) -> bool {
        self.0 & 1 != 0
    }

    /// The kind of descriptor when read at `level` (0..=3).
    pub const fn kind(self, level: u8) -> DescKind {
        match (self.0 & 0b11, level) {
            (0b11, 3) => DescKind::Page,
            (0b11, _) => DescKind::Table,
            (0b01, 1 | 2) => DescKind::Block,
            _ => DescKind::Invalid,
        }
    }

    /// The output (or next-level table) address, bits 47:12.
    pub const fn addr(self) -> PhysAddr {
        PhysAddr(self.0 & ADDR_MASK)
    }

    /// The same descriptor with another address.
    pub const fn with_addr(self, pa: PhysAddr) -> Self {
        Self((self.0 & !ADDR_MASK) | (pa.0 & ADDR_MASK))
    }

    /// The attribute bits of a leaf ([`LEAF_ATTR_MASK`]).
    pub const fn leaf_attr_bits(self) -> u64 {
        self.0 & LEAF_ATTR_MASK
    }

    /// The decoded attributes of a leaf.
    pub fn attrs(self) -> MapAttrs {
        MapAttrs::from_leaf_bits(self.0)
    }

    /// Raw flag view.
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// This leaf with its permission bits (AP\[2:1\], PXN, UXN) recomputed for `perms`, keeping
    /// memory type, shareability, AF, nG, the address and the type bits.
    pub fn with_perms(self, perms: Perms) -> Self {
        let attrs = self.attrs().with_perms(perms);
        let perm_mask = (PteFlags::AP_EL0 | PteFlags::AP_RO | PteFlags::PXN | PteFlags::UXN).bits();
        Self((self.0 & !perm_mask) | (attrs.leaf_bits() & perm_mask))
    }

    /// A level-3 page descriptor with the attributes of this block descriptor.
    pub const fn block_to_page(self, pa: PhysAddr) -> Self {
        Self((self.0 & LEAF_ATTR_MASK) | (pa.0 & ADDR_MASK) | 0b11)
    }

    /// A block descriptor with the attributes of this page descriptor.
    pub const fn page_to_block(self, pa: PhysAddr) -> Self {
        Self((self.0 & LEAF_ATTR_MASK) | (pa.0 & ADDR_MASK) | 0b01)
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Translation control values shared by the CPU and the SMMU
// ---------------------------------------------------------------------------------------------

/// T0SZ = T1SZ for 48-bit VAs in each half (Arm ARM D8.1: VA size = 64 − TnSZ).
pub const TXSZ_48BIT: u8 = 16;
/// TCR_EL1.TG0 / CD.TG0 encoding of the 4 KiB granule (`0b00`).
pub const TG0_4K: u8 = 0b00;
/// TCR_EL1.TG1 encoding of the 4 KiB granule (`0b10`; TG1 uses a different encoding).
pub const TG1_4K: u8 = 0b10;

/// A TCR_EL1 value matching this module's tables: T0SZ = T1SZ = 16, 4 KiB granules, table
/// walks Inner Shareable, Inner/Outer WB-RAWA, TTBR0's ASID selects (A1 = 0), 16-bit ASIDs when
/// `asid16` (TCR_EL1.AS, which must agree with the allocator's width), and IPS = `ips` (copy
/// ID_AA64MMFR0_EL1.PARange, 3 bits). The MMU setup code may use it or build its own; the
/// fields here are the ones the SMMU CD must mirror.
pub const fn tcr_el1_value(ips: u8, asid16: bool) -> u64 {
    let t0sz = TXSZ_48BIT as u64;
    let t1sz = (TXSZ_48BIT as u64) << 16;
    let irgn0 = 0b01 << 8; // Normal, Inner WB RA WA cacheable
    let orgn0 = 0b01 << 10; // Normal, Outer WB RA WA cacheable
    let sh0 = 0b11 << 12; // Inner Shareable
    let tg0 = (TG0_4K as u64) << 14;
    let irgn1 = 0b01 << 24;
    let orgn1 = 0b01 << 26;
    let sh1 = 0b11 << 28;
    let tg1 = (TG1_4K as u64) << 30;
    let ips = ((ips & 0b111) as u64) << 32;
    let as_ = if asid16 { 1 << 36 } else { 0 };
    t0sz | irgn0 | orgn0 | sh0 | tg0 | t1sz | irgn1 | orgn1 | sh1 | tg1 | ips | as_
}
