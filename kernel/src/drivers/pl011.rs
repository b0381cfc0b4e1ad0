//! Arm PrimeCell UART (PL011) driver, polled transmit (Arm DDI 0183G, PL011 TRM §3).

use super::mmio::MmioBlock;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_bitfields! {
    u32,
    /// Flag register (TRM §3.3.3).
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ],
    /// Line control register (TRM §3.3.7).
    LCR_H [
        /// Word length: 0b11 = 8 bits.
        WLEN OFFSET(5) NUMBITS(2) [EightBit = 0b11],
        /// Enable FIFOs.
        FEN OFFSET(4) NUMBITS(1) []
    ],
    /// Control register (TRM §3.3.8).
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) []
    ]
}

register_structs! {
    #[allow(non_snake_case)]
    Registers {
        (0x00 => DR: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => FR: ReadOnly<u32, FR::Register>),
        (0x1C => _reserved1),
        (0x2C => LCR_H: ReadWrite<u32, LCR_H::Register>),
        (0x30 => CR: ReadWrite<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x44 => ICR: WriteOnly<u32>),
        (0x48 => @END),
    }
}

/// A PL011 used as a transmit-only console.
pub struct Pl011 {
    regs: MmioBlock<Registers>,
}

impl Pl011 {
    /// Create a driver for the PL011 whose registers are mapped at `base`.
    ///
    /// # Safety
    /// `base` must be the virtual address of a mapped PL011, used by nothing else.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            regs: unsafe { MmioBlock::new(base) },
        }
    }

    /// Enable the transmitter with 8-bit words and FIFOs. QEMU needs no baud-rate setup.
    pub fn init(&self) {
        self.regs.CR.set(0);
        self.regs.ICR.set(0x7FF);
        self.regs
            .LCR_H
            .write(LCR_H::WLEN::EightBit + LCR_H::FEN::SET);
        self.regs
            .CR
            .write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }

    /// Write one byte, waiting while the transmit FIFO is full.
    ///
    /// The wait is bounded: a UART that never drains (absent or broken) must not hang the
    /// kernel's error paths, so after ~1M polls the byte is dropped.
    pub fn write_byte(&self, byte: u8) {
        for _ in 0..1_000_000 {
            if !self.regs.FR.is_set(FR::TXFF) {
                self.regs.DR.set(byte as u32);
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// The base address of the registers.
    pub fn base(&self) -> usize {
        self.regs.base()
    }
}
