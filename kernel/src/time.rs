//! Monotonic time from the generic timer's counter, and bounded waits.

use crate::cpu;

/// Nanoseconds since the counter started (QEMU starts it at 0 with the machine).
pub fn now_ns() -> u64 {
    let freq = cpu::counter_frequency().max(1);
    ((cpu::counter() as u128 * 1_000_000_000) / freq as u128) as u64
}

/// A point in time after which a bounded wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// A deadline `ns` nanoseconds from now.
    pub fn after_ns(ns: u64) -> Self {
        Self(now_ns().saturating_add(ns))
    }

    /// A deadline `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::after_ns(ms.saturating_mul(1_000_000))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now_ns() >= self.0
    }
}

/// Busy-wait for `us` microseconds.
pub fn spin_delay_us(us: u64) {
    let end = Deadline::after_ns(us.saturating_mul(1000));
    while !end.expired() {
        cpu::relax();
    }
}
