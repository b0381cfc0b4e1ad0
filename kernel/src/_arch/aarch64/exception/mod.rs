//! AArch64 exception entry: the vector table (vectors.s), the saved context, and dispatch.

use super::{FaultResolution, esr::Abort, esr::ExceptionClass};
use crate::{cpu, exit};
use aarch64_cpu::registers::{ESR_EL1, FAR_EL1};
use core::fmt;
use tock_registers::interfaces::Readable;

core::arch::global_asm!(include_str!("vectors.s"));

/// The context saved on exception entry. Layout shared with vectors.s.
#[repr(C)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// Where the exception returns to (ELR_EL1).
    pub elr: u64,
    /// The interrupted PSTATE (SPSR_EL1).
    pub spsr: u64,
    /// The interrupted stack pointer.
    pub sp: u64,
    /// q0..q31.
    pub q: [u128; 32],
    /// FPCR.
    pub fpcr: u64,
    /// FPSR.
    pub fpsr: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 0x320);

/// Which vector was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorKind {
    /// 0: current EL with SP_EL0, 1: current EL with SP_ELx, 2: lower EL AArch64, 3: AArch32.
    pub source: u8,
    /// 0: synchronous, 1: IRQ, 2: FIQ, 3: SError.
    pub kind: u8,
}

impl fmt::Display for VectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = ["synchronous", "IRQ", "FIQ", "SError"][self.kind as usize & 3];
        let source = [
            "EL1 (SP_EL0)",
            "EL1",
            "lower EL (AArch64)",
            "lower EL (AArch32)",
        ][self.source as usize & 3];
        write!(f, "{kind} exception from {source}")
    }
}

unsafe extern "C" {
    static __exception_vectors: u8;
}

/// Install the vector table on this CPU.
pub fn install_vectors() {
    // Only the address of the linker-provided vector table is taken, which is safe.
    let base = (&raw const __exception_vectors) as u64;
    cpu::set_vector_base(base);
}

/// The encoding of `hlt #0xf000`, the semihosting trap.
const SEMIHOSTING_HLT: u32 = 0xD45E_0000;

#[unsafe(no_mangle)]
extern "C" fn exception_dispatch(kind: u64, frame: &mut TrapFrame) {
    let vector = VectorKind {
        source: (kind >> 2) as u8,
        kind: (kind & 3) as u8,
    };
    match (vector.source, vector.kind) {
        (0 | 1, 1) => super::handle_irq(),
        (1, 0) => handle_sync(vector, frame),
        _ => fatal(vector, frame, None),
    }
}

fn handle_sync(vector: VectorKind, frame: &mut TrapFrame) {
    let esr = ESR_EL1.get();
    let far = FAR_EL1.get();
    let class = ExceptionClass::from_esr(esr);
    if class == ExceptionClass::Unknown && instruction_at(frame.elr) == Some(SEMIHOSTING_HLT) {
        // Semihosting is not enabled in this QEMU: skip the call so exit() can power off.
        frame.elr += 4;
        return;
    }
    if let Some(abort) = Abort::decode(esr, far)
        && abort
            .address
            .is_some_and(|addr| addr < crate::mm::addr::USER_VA_END)
        && super::lower_half_fault(&abort, frame.elr) == FaultResolution::Retry
    {
        return;
    }
    fatal(vector, frame, Some((esr, far)))
}

fn instruction_at(pc: u64) -> Option<u32> {
    if !pc.is_multiple_of(4) || pc < crate::mm::addr::LINEAR_BASE {
        return None;
    }
    // SAFETY: the PC of a synchronous exception taken at EL1 in the kernel image is mapped
    // executable, hence readable, and 4-byte aligned (checked above).
    Some(unsafe { core::ptr::read_volatile(pc as *const u32) })
}

fn fatal(vector: VectorKind, frame: &TrapFrame, syndrome: Option<(u64, u64)>) -> ! {
    let mut out = crate::console::lock();
    use core::fmt::Write;
    let _ = writeln!(
        out,
        "\n{} on CPU {}: {vector}",
        protocol::console::UNEXPECTED_EXCEPTION,
        cpu::index()
    );
    if let Some((esr, far)) = syndrome {
        let class = ExceptionClass::from_esr(esr);
        let _ = writeln!(
            out,
            "    ESR {esr:#018x}: EC {:#04x} {}, ISS {:#09x}",
            (esr >> 26) & 0x3F,
            class.describe(),
            esr & 0x1FF_FFFF
        );
        match Abort::decode(esr, far) {
            Some(abort) => {
                let _ = writeln!(out, "    {abort}");
            }
            None => {
                let _ = writeln!(out, "    FAR {far:#018x}");
            }
        }
    }
    let _ = writeln!(
        out,
        "    ELR {:#018x}  SPSR {:#010x}  SP {:#018x}",
        frame.elr, frame.spsr, frame.sp
    );
    for row in 0..8 {
        let _ = write!(out, "   ");
        for col in 0..4 {
            let i = row * 4 + col;
            if i < 31 {
                let _ = write!(out, " x{i:<2} {:#018x}", frame.x[i]);
            }
        }
        let _ = writeln!(out);
    }
    drop(out);
    exit::exit(exit::ExitStatus::UnexpectedException)
}
