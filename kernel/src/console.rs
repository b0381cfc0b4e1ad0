//! The kernel console: a PL011 written by whole lines under a CPU-aware lock.
//!
//! Lines from different CPUs never interleave mid-line: a writer holds the console lock for a
//! whole formatted line. The lock remembers its owner CPU, so an exception or panic report on a
//! CPU that was interrupted while printing still gets through instead of deadlocking.

use crate::{cpu, drivers::pl011::Pl011};
use core::{
    fmt::{self, Write},
    sync::atomic::{AtomicUsize, Ordering},
};

/// Where the PL011 of QEMU `virt` lives, used only until the device tree names the real one
/// (the one hard-coded address the kernel has: the early console fallback).
pub const EARLY_UART_PHYS: u64 = 0x0900_0000;

/// Virtual address of the console UART, 0 while there is none.
static UART_BASE: AtomicUsize = AtomicUsize::new(0);
/// Owner of the console lock: CPU index + 1, or 0 when free.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// Use the PL011 at virtual address `base` as the console.
///
/// # Safety
/// `base` must be the virtual address of a mapped PL011 that stays mapped for the kernel's
/// lifetime and is used by nothing but the console.
pub unsafe fn set_uart(base: usize) {
    // SAFETY: forwarded from the caller.
    let uart = unsafe { Pl011::new(base) };
    uart.init();
    UART_BASE.store(base, Ordering::Release);
}

fn write_raw(bytes: &[u8]) {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    // SAFETY: UART_BASE only ever holds an address accepted by `set_uart`, whose contract
    // guarantees a mapped PL011 for the kernel's lifetime.
    let uart = unsafe { Pl011::new(base) };
    for &b in bytes {
        if b == b'\n' {
            uart.write_byte(b'\r');
        }
        uart.write_byte(b);
    }
}

/// Exclusive use of the console for one or more whole lines.
pub struct ConsoleGuard {
    reentered: bool,
}

/// Take the console lock (reentrant on the same CPU, e.g. from an exception handler).
pub fn lock() -> ConsoleGuard {
    let me = cpu::index() + 1;
    if OWNER.load(Ordering::Relaxed) == me {
        return ConsoleGuard { reentered: true };
    }
    while OWNER
        .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    ConsoleGuard { reentered: false }
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        if !self.reentered {
            OWNER.store(0, Ordering::Release);
        }
    }
}

impl Write for ConsoleGuard {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_raw(s.as_bytes());
        Ok(())
    }
}

/// Print formatted text as one uninterrupted unit.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut guard = lock();
    let _ = guard.write_fmt(args);
}

/// Print to the console without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!($($arg)*)) };
}

/// Print a line to the console; the whole line is written under the console lock.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
