//! SMMUv3 register map: offsets and field layouts (IHI 0070 G.b §6.2 and §6.3).
//!
//! Field layouts are declared with `tock_registers::register_bitfields!`; values read through the
//! HAL are decoded with [`LocalRegisterCopy`], and values to write are composed from
//! `FieldValue`s. Registers that share a layout share one declaration (`CR0ACK` uses [`CR0`],
//! `GERRORN` uses [`GERROR`], `IRQ_CTRLACK` uses [`IRQ_CTRL`], both queue bases use
//! [`QUEUE_BASE`], both `*_IRQ_CFG0` use [`IRQ_CFG0`]).
//!
//! Typed offsets live in [`offset`]; [`Registers`] pairs them with the HAL so that the width of
//! every access is fixed by the register's type:
//!
//! - 32-bit registers are always accessed with 32-bit loads and stores;
//! - the 64-bit base/CFG0 registers (`GERROR_IRQ_CFG0`, `STRTAB_BASE`, `CMDQ_BASE`,
//!   `EVENTQ_BASE`, `EVENTQ_IRQ_CFG0`) use 64-bit accesses. QEMU's model honours 64-bit accesses
//!   only at exactly these offsets; anywhere else they are silently RAZ/WI.
//!
//! `EVENTQ_PROD`/`EVENTQ_CONS` live in page 1 (offsets `0x100A8`/`0x100AC`). Their page-0 offsets
//! are only an optional alias (§6.2.1) — QEMU aliases them, hardware may read them as zero — so
//! this crate always uses page 1.

// `register_bitfields!` generates undocumented items (enum values, `Register` markers).
#![allow(missing_docs)]

use core::marker::PhantomData;

use tock_registers::{LocalRegisterCopy, RegisterLongName, fields::FieldValue, register_bitfields};

use crate::hal::SmmuHal;

register_bitfields! {u32,
    /// SMMU_IDR0, §6.3.1: features of the Non-secure programming interface.
    pub IDR0 [
        /// Stage 2 translation supported.
        S2P OFFSET(0) NUMBITS(1) [],
        /// Stage 1 translation supported.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Translation table formats supported.
        TTF OFFSET(2) NUMBITS(2) [AArch32 = 1, AArch64 = 2, Both = 3],
        /// Coherent access to tables, structures and queues.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// Broadcast TLB maintenance supported.
        BTM OFFSET(5) NUMBITS(1) [],
        /// Hardware translation table flag updates.
        HTTU OFFSET(6) NUMBITS(2) [None = 0, Access = 1, AccessDirty = 2, AccessDirtyTable = 3],
        /// Dormant hint supported.
        DORMHINT OFFSET(8) NUMBITS(1) [],
        /// Hypervisor stage 1 contexts supported.
        HYP OFFSET(9) NUMBITS(1) [],
        /// PCIe ATS supported.
        ATS OFFSET(10) NUMBITS(1) [],
        /// Split-stage ATS NOT supported when set.
        NS1ATS OFFSET(11) NUMBITS(1) [],
        /// 16-bit ASIDs supported.
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// MSIs supported.
        MSI OFFSET(13) NUMBITS(1) [],
        /// WFE wake-up events (SEV) supported.
        SEV OFFSET(14) NUMBITS(1) [],
        /// Address translation operations supported.
        ATOS OFFSET(15) NUMBITS(1) [],
        /// PCIe PRI supported.
        PRI OFFSET(16) NUMBITS(1) [],
        /// VMID wildcard matching supported.
        VMW OFFSET(17) NUMBITS(1) [],
        /// 16-bit VMIDs supported.
        VMID16 OFFSET(18) NUMBITS(1) [],
        /// 2-level CD tables supported.
        CD2L OFFSET(19) NUMBITS(1) [],
        /// Virtual ATOS page supported.
        VATOS OFFSET(20) NUMBITS(1) [],
        /// Endianness of translation tables.
        TTENDIAN OFFSET(21) NUMBITS(2) [Mixed = 0, Little = 2, Big = 3],
        /// Stall model.
        STALL_MODEL OFFSET(24) NUMBITS(2) [StallAndTerminate = 0, TerminateOnly = 1, StallForced = 2],
        /// Terminate model: 1 means RAZ/WI is not supported and CD.A must be 1.
        TERM_MODEL OFFSET(26) NUMBITS(1) [],
        /// Stream table levels.
        ST_LEVEL OFFSET(27) NUMBITS(2) [Linear = 0, TwoLevel = 1]
    ],
    /// SMMU_IDR1, §6.3.2: sizes.
    pub IDR1 [
        /// StreamID bits.
        SIDSIZE OFFSET(0) NUMBITS(6) [],
        /// SubstreamID bits.
        SSIDSIZE OFFSET(6) NUMBITS(5) [],
        /// log2 of the maximum PRI queue entries.
        PRIQS OFFSET(11) NUMBITS(5) [],
        /// log2 of the maximum event queue entries.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// log2 of the maximum command queue entries.
        CMDQS OFFSET(21) NUMBITS(5) [],
        /// Relative base pointers.
        REL OFFSET(28) NUMBITS(1) [],
        /// Queue base registers are fixed.
        QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
        /// Table base registers are fixed.
        TABLES_PRESET OFFSET(30) NUMBITS(1) [],
        /// Enhanced command queues.
        ECMDQ OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_IDR3, §6.3.4.
    pub IDR3 [
        /// Hierarchical attribute disable.
        HAD OFFSET(2) NUMBITS(1) [],
        /// Range invalidation and TTL hint supported.
        RIL OFFSET(10) NUMBITS(1) [],
        /// Break-before-make level.
        BBML OFFSET(11) NUMBITS(2) []
    ],
    /// SMMU_IDR5, §6.3.6.
    pub IDR5 [
        /// Output address size.
        OAS OFFSET(0) NUMBITS(3) [],
        /// 4 KiB granule supported.
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// 16 KiB granule supported.
        GRAN16K OFFSET(5) NUMBITS(1) [],
        /// 64 KiB granule supported.
        GRAN64K OFFSET(6) NUMBITS(1) [],
        /// Virtual address extent: 0 = 48 bits, 1 = 52 bits, 2 = 56 bits.
        VAX OFFSET(10) NUMBITS(2) [],
        /// Maximum outstanding stalls.
        STALL_MAX OFFSET(16) NUMBITS(16) []
    ],
    /// SMMU_AIDR, §6.3.8: architecture revision (3.x).
    pub AIDR [
        /// Minor revision: 0 = v3.0, 1 = v3.1, ...
        ARCH_MINOR_REV OFFSET(0) NUMBITS(4) [],
        /// Major revision (0 for SMMUv3).
        ARCH_MAJOR_REV OFFSET(4) NUMBITS(4) []
    ],
    /// SMMU_CR0 and SMMU_CR0ACK, §6.3.9/§6.3.10.
    pub CR0 [
        /// Translation enable.
        SMMUEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue enable.
        PRIQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue enable.
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Command queue enable.
        CMDQEN OFFSET(3) NUMBITS(1) [],
        /// ATS check.
        ATSCHK OFFSET(4) NUMBITS(1) [],
        /// VMID wildcard.
        VMW OFFSET(6) NUMBITS(3) []
    ],
    /// SMMU_CR1, §6.3.11: attributes of table and queue accesses.
    pub CR1 [
        /// Queue inner cacheability.
        QUEUE_IC OFFSET(0) NUMBITS(2) [NonCacheable = 0, WriteBack = 1, WriteThrough = 2],
        /// Queue outer cacheability.
        QUEUE_OC OFFSET(2) NUMBITS(2) [NonCacheable = 0, WriteBack = 1, WriteThrough = 2],
        /// Queue shareability.
        QUEUE_SH OFFSET(4) NUMBITS(2) [NonShareable = 0, OuterShareable = 2, InnerShareable = 3],
        /// Table inner cacheability.
        TABLE_IC OFFSET(6) NUMBITS(2) [NonCacheable = 0, WriteBack = 1, WriteThrough = 2],
        /// Table outer cacheability.
        TABLE_OC OFFSET(8) NUMBITS(2) [NonCacheable = 0, WriteBack = 1, WriteThrough = 2],
        /// Table shareability.
        TABLE_SH OFFSET(10) NUMBITS(2) [NonShareable = 0, OuterShareable = 2, InnerShareable = 3]
    ],
    /// SMMU_CR2, §6.3.12.
    pub CR2 [
        /// EL2-E2H translation regime.
        E2H OFFSET(0) NUMBITS(1) [],
        /// Record C_BAD_STREAMID for invalid input StreamIDs.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// Private TLB maintenance: ignore broadcast TLB invalidation.
        PTM OFFSET(2) NUMBITS(1) []
    ],
    /// SMMU_GBPA, §6.3.14: global bypass attributes used while SMMUEN == 0.
    pub GBPA [
        /// Memory attribute override.
        MEMATTR OFFSET(0) NUMBITS(4) [],
        /// Memory type override enable.
        MTCFG OFFSET(4) NUMBITS(1) [],
        /// Allocation hints override.
        ALLOCCFG OFFSET(8) NUMBITS(4) [],
        /// Shareability override.
        SHCFG OFFSET(12) NUMBITS(2) [NonShareable = 0, UseIncoming = 1, Outer = 2, Inner = 3],
        /// Privilege override.
        PRIVCFG OFFSET(16) NUMBITS(2) [],
        /// Instruction/data override.
        INSTCFG OFFSET(18) NUMBITS(2) [],
        /// Abort all incoming transactions while the SMMU is disabled.
        ABORT OFFSET(20) NUMBITS(1) [],
        /// Update request/completion flag.
        UPDATE OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_IRQ_CTRL and SMMU_IRQ_CTRLACK, §6.3.16/§6.3.18.
    pub IRQ_CTRL [
        /// Global error interrupt enable.
        GERROR_IRQEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue interrupt enable.
        PRIQ_IRQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue interrupt enable.
        EVENTQ_IRQEN OFFSET(2) NUMBITS(1) []
    ],
    /// SMMU_GERROR and SMMU_GERRORN, §6.3.19/§6.3.20. An error is active while the bit differs
    /// between the two registers; software acknowledges by toggling the bit in GERRORN.
    pub GERROR [
        /// Command queue error (see CMDQ_CONS.ERR).
        CMDQ_ERR OFFSET(0) NUMBITS(1) [],
        /// Event queue write aborted (QEMU also uses it for event queue overflow).
        EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
        /// PRI queue write aborted.
        PRIQ_ABT_ERR OFFSET(3) NUMBITS(1) [],
        /// CMD_SYNC MSI write aborted.
        MSI_CMDQ_ABT_ERR OFFSET(4) NUMBITS(1) [],
        /// Event queue MSI write aborted.
        MSI_EVENTQ_ABT_ERR OFFSET(5) NUMBITS(1) [],
        /// PRI queue MSI write aborted.
        MSI_PRIQ_ABT_ERR OFFSET(6) NUMBITS(1) [],
        /// GERROR MSI write aborted.
        MSI_GERROR_ABT_ERR OFFSET(7) NUMBITS(1) [],
        /// Service failure mode entered.
        SFM_ERR OFFSET(8) NUMBITS(1) [],
        /// Command queue control page error.
        CMDQP_ERR OFFSET(9) NUMBITS(1) [],
        /// Device permission table error.
        DPT_ERR OFFSET(10) NUMBITS(1) []
    ],
    /// SMMU_STRTAB_BASE_CFG, §6.3.25.
    pub STRTAB_BASE_CFG [
        /// log2 of the number of StreamIDs covered.
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// StreamID bits resolved by the level-2 tables (6, 8 or 10).
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// Table format.
        FMT OFFSET(16) NUMBITS(2) [Linear = 0, TwoLevel = 1]
    ],
    /// SMMU_CMDQ_PROD, §6.3.27.
    pub CMDQ_PROD [
        /// Write index and wrap bit (the wrap bit sits at bit LOG2SIZE).
        WR OFFSET(0) NUMBITS(20) []
    ],
    /// SMMU_CMDQ_CONS, §6.3.28.
    pub CMDQ_CONS [
        /// Read index and wrap bit.
        RD OFFSET(0) NUMBITS(20) [],
        /// Command error reason, meaningful only while GERROR.CMDQ_ERR is active.
        ERR OFFSET(24) NUMBITS(7) [None = 0, Illegal = 1, Abort = 2, AtcInvSync = 3]
    ],
    /// SMMU_EVENTQ_PROD, §6.3.95 (page 1).
    pub EVENTQ_PROD [
        /// Write index and wrap bit.
        WR OFFSET(0) NUMBITS(20) [],
        /// Overflow flag, toggled by the SMMU when records were lost.
        OVFLG OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_EVENTQ_CONS, §6.3.96 (page 1).
    pub EVENTQ_CONS [
        /// Read index and wrap bit.
        RD OFFSET(0) NUMBITS(20) [],
        /// Overflow acknowledge: software copies PROD.OVFLG here.
        OVACKFLG OFFSET(31) NUMBITS(1) []
    ],
    /// SMMU_*_IRQ_CFG1, §6.3.22: MSI data.
    pub IRQ_CFG1 [
        /// MSI payload.
        DATA OFFSET(0) NUMBITS(32) []
    ],
    /// SMMU_*_IRQ_CFG2, §6.3.23: MSI attributes.
    pub IRQ_CFG2 [
        /// Memory attributes of the MSI write.
        MEMATTR OFFSET(0) NUMBITS(4) [],
        /// Shareability of the MSI write.
        SH OFFSET(4) NUMBITS(2) []
    ]
}

register_bitfields! {u64,
    /// SMMU_STRTAB_BASE, §6.3.24.
    pub STRTAB_BASE [
        /// Physical address bits [55:6] of the stream table (or its level-1 table).
        ADDR OFFSET(6) NUMBITS(50) [],
        /// Read-allocate hint.
        RA OFFSET(62) NUMBITS(1) []
    ],
    /// SMMU_CMDQ_BASE (§6.3.26) and SMMU_EVENTQ_BASE (§6.3.29).
    pub QUEUE_BASE [
        /// log2 of the number of entries (at most IDR1.CMDQS / IDR1.EVENTQS).
        LOG2SIZE OFFSET(0) NUMBITS(5) [],
        /// Physical address bits [55:5]; the base is aligned to the queue size in bytes.
        ADDR OFFSET(5) NUMBITS(51) [],
        /// Read-allocate hint (command queue) / write-allocate hint (event queue).
        ALLOCATE OFFSET(62) NUMBITS(1) []
    ],
    /// SMMU_GERROR_IRQ_CFG0 (§6.3.21) and SMMU_EVENTQ_IRQ_CFG0 (§6.3.30): MSI address, 0 disables.
    pub IRQ_CFG0 [
        /// Physical address bits [55:2].
        ADDR OFFSET(2) NUMBITS(54) []
    ]
}

/// A 32-bit register: its byte offset in the SMMU frame and its field layout.
pub struct Reg32<R: RegisterLongName> {
    offset: usize,
    layout: PhantomData<R>,
}

/// A 64-bit register: its byte offset in the SMMU frame and its field layout.
pub struct Reg64<R: RegisterLongName> {
    offset: usize,
    layout: PhantomData<R>,
}

impl<R: RegisterLongName> Reg32<R> {
    const fn at(offset: usize) -> Self {
        Self {
            offset,
            layout: PhantomData,
        }
    }

    /// Byte offset in the SMMU register frame.
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

impl<R: RegisterLongName> Reg64<R> {
    const fn at(offset: usize) -> Self {
        Self {
            offset,
            layout: PhantomData,
        }
    }

    /// Byte offset in the SMMU register frame.
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

impl<R: RegisterLongName> Clone for Reg32<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: RegisterLongName> Copy for Reg32<R> {}
impl<R: RegisterLongName> Clone for Reg64<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: RegisterLongName> Copy for Reg64<R> {}

/// Typed register offsets (§6.2.1 page 0, §6.2.2 page 1).
pub mod offset {
    use super::{Reg32, Reg64};

    /// Size of one register page; page 1 starts here.
    pub const PAGE_SIZE: usize = 0x1_0000;

    /// SMMU_IDR0.
    pub const IDR0: Reg32<super::IDR0::Register> = Reg32::at(0x00);
    /// SMMU_IDR1.
    pub const IDR1: Reg32<super::IDR1::Register> = Reg32::at(0x04);
    /// SMMU_IDR2.
    pub const IDR2: Reg32<()> = Reg32::at(0x08);
    /// SMMU_IDR3.
    pub const IDR3: Reg32<super::IDR3::Register> = Reg32::at(0x0C);
    /// SMMU_IDR4.
    pub const IDR4: Reg32<()> = Reg32::at(0x10);
    /// SMMU_IDR5.
    pub const IDR5: Reg32<super::IDR5::Register> = Reg32::at(0x14);
    /// SMMU_IIDR.
    pub const IIDR: Reg32<()> = Reg32::at(0x18);
    /// SMMU_AIDR.
    pub const AIDR: Reg32<super::AIDR::Register> = Reg32::at(0x1C);
    /// SMMU_CR0.
    pub const CR0: Reg32<super::CR0::Register> = Reg32::at(0x20);
    /// SMMU_CR0ACK.
    pub const CR0ACK: Reg32<super::CR0::Register> = Reg32::at(0x24);
    /// SMMU_CR1.
    pub const CR1: Reg32<super::CR1::Register> = Reg32::at(0x28);
    /// SMMU_CR2.
    pub const CR2: Reg32<super::CR2::Register> = Reg32::at(0x2C);
    /// SMMU_STATUSR.
    pub const STATUSR: Reg32<()> = Reg32::at(0x40);
    /// SMMU_GBPA (absent on QEMU 7.2: reads 0, writes ignored).
    pub const GBPA: Reg32<super::GBPA::Register> = Reg32::at(0x44);
    /// SMMU_IRQ_CTRL.
    pub const IRQ_CTRL: Reg32<super::IRQ_CTRL::Register> = Reg32::at(0x50);
    /// SMMU_IRQ_CTRLACK.
    pub const IRQ_CTRLACK: Reg32<super::IRQ_CTRL::Register> = Reg32::at(0x54);
    /// SMMU_GERROR.
    pub const GERROR: Reg32<super::GERROR::Register> = Reg32::at(0x60);
    /// SMMU_GERRORN.
    pub const GERRORN: Reg32<super::GERROR::Register> = Reg32::at(0x64);
    /// SMMU_GERROR_IRQ_CFG0 (64-bit).
    pub const GERROR_IRQ_CFG0: Reg64<super::IRQ_CFG0::Register> = Reg64::at(0x68);
    /// SMMU_GERROR_IRQ_CFG1.
    pub const GERROR_IRQ_CFG1: Reg32<super::IRQ_CFG1::Register> = Reg32::at(0x70);
    /// SMMU_GERROR_IRQ_CFG2.
    pub const GERROR_IRQ_CFG2: Reg32<super::IRQ_CFG2::Register> = Reg32::at(0x74);
    /// SMMU_STRTAB_BASE (64-bit).
    pub const STRTAB_BASE: Reg64<super::STRTAB_BASE::Register> = Reg64::at(0x80);
    /// SMMU_STRTAB_BASE_CFG.
    pub const STRTAB_BASE_CFG: Reg32<super::STRTAB_BASE_CFG::Register> = Reg32::at(0x88);
    /// SMMU_CMDQ_BASE (64-bit).
    pub const CMDQ_BASE: Reg64<super::QUEUE_BASE::Register> = Reg64::at(0x90);
    /// SMMU_CMDQ_PROD.
    pub const CMDQ_PROD: Reg32<super::CMDQ_PROD::Register> = Reg32::at(0x98);
    /// SMMU_CMDQ_CONS.
    pub const CMDQ_CONS: Reg32<super::CMDQ_CONS::Register> = Reg32::at(0x9C);
    /// SMMU_EVENTQ_BASE (64-bit).
    pub const EVENTQ_BASE: Reg64<super::QUEUE_BASE::Register> = Reg64::at(0xA0);
    /// SMMU_EVENTQ_IRQ_CFG0 (64-bit).
    pub const EVENTQ_IRQ_CFG0: Reg64<super::IRQ_CFG0::Register> = Reg64::at(0xB0);
    /// SMMU_EVENTQ_IRQ_CFG1.
    pub const EVENTQ_IRQ_CFG1: Reg32<super::IRQ_CFG1::Register> = Reg32::at(0xB8);
    /// SMMU_EVENTQ_IRQ_CFG2.
    pub const EVENTQ_IRQ_CFG2: Reg32<super::IRQ_CFG2::Register> = Reg32::at(0xBC);
    /// SMMU_EVENTQ_PROD (page 1).
    pub const EVENTQ_PROD: Reg32<super::EVENTQ_PROD::Register> = Reg32::at(PAGE_SIZE + 0xA8);
    /// SMMU_EVENTQ_CONS (page 1).
    pub const EVENTQ_CONS: Reg32<super::EVENTQ_CONS::Register> = Reg32::at(PAGE_SIZE + 0xAC);
}

/// Typed register access through a [`SmmuHal`].
pub struct Registers<'h, H: SmmuHal + ?Sized> {
    hal: &'h H,
}

impl<'h, H: SmmuHal + ?Sized> Registers<'h, H> {
    /// Wraps a HAL.
    pub fn new(hal: &'h H) -> Self {
        Self { hal }
    }

    /// 32-bit read, decoded with the register's layout.
    pub fn read<R: RegisterLongName>(&self, reg: Reg32<R>) -> LocalRegisterCopy<u32, R> {
        LocalRegisterCopy::new(self.hal.read32(reg.offset()))
    }

    /// 32-bit write of a composed value (fields not named are written as zero).
    pub fn write<R: RegisterLongName>(&self, reg: Reg32<R>, value: FieldValue<u32, R>) {
        self.hal.write32(reg.offset(), value.value);
    }

    /// 32-bit write of a raw value.
    pub fn write_raw<R: RegisterLongName>(&self, reg: Reg32<R>, value: u32) {
        self.hal.write32(reg.offset(), value);
    }

    /// 64-bit read, decoded with the register's layout.
    pub fn read64<R: RegisterLongName>(&self, reg: Reg64<R>) -> LocalRegisterCopy<u64, R> {
        LocalRegisterCopy::new(self.hal.read64(reg.offset()))
    }

    /// 64-bit write of a composed value.
    pub fn write64<R: RegisterLongName>(&self, reg: Reg64<R>, value: FieldValue<u64, R>) {
        self.hal.write64(reg.offset(), value.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_one_queue_registers() {
        assert_eq!(offset::EVENTQ_PROD.offset(), 0x100A8);
        assert_eq!(offset::EVENTQ_CONS.offset(), 0x100AC);
    }

    #[test]
    fn qemu_idr0_decodes() {
        // QEMU 7.2's IDR0 (reference §2).
        let idr0: LocalRegisterCopy<u32, IDR0::Register> = LocalRegisterCopy::new(0x0D40_101A);
        assert!(idr0.is_set(IDR0::S1P));
        assert!(!idr0.is_set(IDR0::S2P));
        assert_eq!(idr0.read(IDR0::TTF), 2);
        assert!(idr0.is_set(IDR0::COHACC));
        assert!(idr0.is_set(IDR0::ASID16));
        assert_eq!(idr0.read(IDR0::ST_LEVEL), 1);
        assert_eq!(idr0.read(IDR0::STALL_MODEL), 1);
        assert!(idr0.is_set(IDR0::TERM_MODEL));
        assert_eq!(idr0.read(IDR0::TTENDIAN), 2);
    }

    #[test]
    fn cr1_inner_shareable_write_back_matches_known_value() {
        // The value QEMU's own SMMU test library programs: ISH, WB for tables and queues.
        let v = CR1::QUEUE_IC::WriteBack
            + CR1::QUEUE_OC::WriteBack
            + CR1::QUEUE_SH::InnerShareable
            + CR1::TABLE_IC::WriteBack
            + CR1::TABLE_OC::WriteBack
            + CR1::TABLE_SH::InnerShareable;
        assert_eq!(v.value, 0x0D75);
    }

    #[test]
    fn cmdq_cons_error_field() {
        // Reference §6.5: CONS = 0x0100003B after an illegal command at slot 0x3B.
        let cons: LocalRegisterCopy<u32, CMDQ_CONS::Register> = LocalRegisterCopy::new(0x0100_003B);
        assert_eq!(cons.read(CMDQ_CONS::ERR), 1);
        assert_eq!(cons.read(CMDQ_CONS::RD), 0x3B);
    }
}
