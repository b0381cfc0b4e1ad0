//! Decoding of the Exception Syndrome Register (Arm ARM D17.2.37, ESR_EL1) into typed values.
//!
//! Pure logic: the arch-specific vector code hands the raw ESR/FAR here, and the report printed
//! for an unexpected exception, as well as the routing of aborts to address-space fault
//! handlers, work from the decoded form.

use core::fmt;

/// The exception class, ESR_ELx.EC (bits [31:26]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    /// EC 0x00: unknown reason (e.g. an undefined instruction).
    Unknown,
    /// EC 0x01: WFI/WFE trapped.
    WfiWfe,
    /// EC 0x07: access to SVE/SIMD/FP trapped by CPACR_EL1.FPEN.
    FpAccess,
    /// EC 0x0E: illegal execution state.
    IllegalState,
    /// EC 0x15: SVC from AArch64.
    Svc,
    /// EC 0x16: HVC from AArch64.
    Hvc,
    /// EC 0x17: SMC from AArch64.
    Smc,
    /// EC 0x18: MSR/MRS/system instruction trapped.
    SysReg,
    /// EC 0x20: instruction abort from a lower exception level.
    InstructionAbortLower,
    /// EC 0x21: instruction abort at the current exception level.
    InstructionAbortSame,
    /// EC 0x22: PC alignment fault.
    PcAlignment,
    /// EC 0x24: data abort from a lower exception level.
    DataAbortLower,
    /// EC 0x25: data abort at the current exception level.
    DataAbortSame,
    /// EC 0x26: SP alignment fault.
    SpAlignment,
    /// EC 0x2F: SError interrupt.
    SError,
    /// EC 0x3C: BRK instruction.
    Brk,
    /// Any other class, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    /// Decode from a raw ESR value.
    pub fn from_esr(esr: u64) -> Self {
        match ((esr >> 26) & 0x3F) as u8 {
            0x00 => Self::Unknown,
            0x01 => Self::WfiWfe,
            0x07 => Self::FpAccess,
            0x0E => Self::IllegalState,
            0x15 => Self::Svc,
            0x16 => Self::Hvc,
            0x17 => Self::Smc,
            0x18 => Self::SysReg,
            0x20 => Self::InstructionAbortLower,
            0x21 => Self::InstructionAbortSame,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLower,
            0x25 => Self::DataAbortSame,
            0x26 => Self::SpAlignment,
            0x2F => Self::SError,
            0x3C => Self::Brk,
            other => Self::Other(other),
        }
    }

    /// A short human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "unknown reason (undefined instruction?)",
            Self::WfiWfe => "trapped WFI/WFE",
            Self::FpAccess => "trapped FP/SIMD access",
            Self::IllegalState => "illegal execution state",
            Self::Svc => "SVC",
            Self::Hvc => "HVC",
            Self::Smc => "SMC",
            Self::SysReg => "trapped system register access",
            Self::InstructionAbortLower => "instruction abort from lower EL",
            Self::InstructionAbortSame => "instruction abort",
            Self::PcAlignment => "PC alignment fault",
            Self::DataAbortLower => "data abort from lower EL",
            Self::DataAbortSame => "data abort",
            Self::SpAlignment => "SP alignment fault",
            Self::SError => "SError",
            Self::Brk => "BRK instruction",
            Self::Other(_) => "other",
        }
    }
}

/// What kind of fault an instruction or data abort reports (the DFSC/IFSC field, bits [5:0]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    /// Address size fault at the given level.
    AddressSize(u8),
    /// Translation fault (no valid entry) at the given level.
    Translation(u8),
    /// Access flag fault at the given level.
    AccessFlag(u8),
    /// Permission fault at the given level.
    Permission(u8),
    /// Synchronous external abort (not on a table walk).
    ExternalAbort,
    /// Synchronous external abort on a table walk at the given level.
    ExternalAbortOnWalk(u8),
    /// Alignment fault.
    Alignment,
    /// TLB conflict abort.
    TlbConflict,
    /// Any other status code.
    Other(u8),
}

impl FaultStatus {
    /// Decode the 6-bit fault status code (Arm ARM D17.2.37, ISS encoding for aborts).
    pub fn from_code(code: u8) -> Self {
        let level = code & 0x3;
        match code & 0x3F {
            0x00..=0x03 => Self::AddressSize(level),
            0x04..=0x07 => Self::Translation(level),
            0x09..=0x0B => Self::AccessFlag(level),
            0x0D..=0x0F => Self::Permission(level),
            0x10 => Self::ExternalAbort,
            0x14..=0x17 => Self::ExternalAbortOnWalk(level),
            0x21 => Self::Alignment,
            0x30 => Self::TlbConflict,
            other => Self::Other(other),
        }
    }

    /// The translation table level the fault was reported at, where that applies.
    pub fn level(self) -> Option<u8> {
        match self {
            Self::AddressSize(l)
            | Self::Translation(l)
            | Self::AccessFlag(l)
            | Self::Permission(l)
            | Self::ExternalAbortOnWalk(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressSize(l) => write!(f, "address size fault, level {l}"),
            Self::Translation(l) => write!(f, "translation fault, level {l}"),
            Self::AccessFlag(l) => write!(f, "access flag fault, level {l}"),
            Self::Permission(l) => write!(f, "permission fault, level {l}"),
            Self::ExternalAbort => write!(f, "synchronous external abort"),
            Self::ExternalAbortOnWalk(l) => write!(f, "external abort on table walk, level {l}"),
            Self::Alignment => write!(f, "alignment fault"),
            Self::TlbConflict => write!(f, "TLB conflict abort"),
            Self::Other(c) => write!(f, "fault status {c:#04x}"),
        }
    }
}

/// A decoded instruction or data abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    /// Instruction fetch (true) or data access (false).
    pub instruction: bool,
    /// For data aborts: the access was a write (ISS.WnR). Cache maintenance reports as write.
    pub write: bool,
    /// What went wrong.
    pub status: FaultStatus,
    /// The faulting virtual address, if FAR_EL1 is valid (ISS.FnV clear).
    pub address: Option<u64>,
}

impl Abort {
    /// Decode an abort from ESR and FAR; `None` if the exception is not an abort.
    pub fn decode(esr: u64, far: u64) -> Option<Self> {
        let instruction = match ExceptionClass::from_esr(esr) {
            ExceptionClass::InstructionAbortLower | ExceptionClass::InstructionAbortSame => true,
            ExceptionClass::DataAbortLower | ExceptionClass::DataAbortSame => false,
            _ => return None,
        };
        let far_not_valid = esr & (1 << 10) != 0;
        Some(Self {
            instruction,
            write: !instruction && esr & (1 << 6) != 0,
            status: FaultStatus::from_code((esr & 0x3F) as u8),
            address: (!far_not_valid).then_some(far),
        })
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match (self.instruction, self.write) {
            (true, _) => "instruction fetch",
            (false, true) => "write",
            (false, false) => "read",
        };
        write!(f, "{} on {access}", self.status)?;
        match self.address {
            Some(a) => write!(f, " at {a:#x}"),
            None => write!(f, " (FAR not valid)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_data_abort_write_permission_level3() {
        // EC=0x25, IL=1, WnR=1, DFSC=0x0F (permission fault, level 3).
        let esr = (0x25 << 26) | (1 << 25) | (1 << 6) | 0x0F;
        let abort = Abort::decode(esr, 0x1234_5000).expect("a data abort");
        assert!(!abort.instruction);
        assert!(abort.write);
        assert_eq!(abort.status, FaultStatus::Permission(3));
        assert_eq!(abort.address, Some(0x1234_5000));
        assert_eq!(
            abort.to_string(),
            "permission fault, level 3 on write at 0x12345000"
        );
    }

    #[test]
    fn decodes_instruction_abort_translation_and_fnv() {
        let esr = (0x21 << 26) | (1 << 10) | 0x06;
        let abort = Abort::decode(esr, 0xdead).expect("an instruction abort");
        assert!(abort.instruction);
        assert!(!abort.write);
        assert_eq!(abort.status, FaultStatus::Translation(2));
        assert_eq!(abort.address, None);
    }

    #[test]
    fn non_aborts_are_not_decoded_as_aborts() {
        assert_eq!(Abort::decode(0x3C << 26, 0), None);
        assert_eq!(ExceptionClass::from_esr(0x3C << 26), ExceptionClass::Brk);
        assert_eq!(
            ExceptionClass::from_esr(0x3D << 26),
            ExceptionClass::Other(0x3D)
        );
    }

    #[test]
    fn fault_status_codes() {
        assert_eq!(FaultStatus::from_code(0x0B), FaultStatus::AccessFlag(3));
        assert_eq!(FaultStatus::from_code(0x21), FaultStatus::Alignment);
        assert_eq!(FaultStatus::from_code(0x15).level(), Some(1));
        assert_eq!(FaultStatus::from_code(0x10).level(), None);
    }
}
