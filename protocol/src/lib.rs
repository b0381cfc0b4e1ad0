//! The kernel ↔ host-harness protocol: how an on-target run reports to the host. The kernel
//! writes these (console lines, an exit status, marks in QEMU's SMMU trace); the harness in
//! `tests/` reads them. One definition, used by both sides, so neither can drift.
//!
//! - [`exit`]: the kernel's exit statuses (semihosting `SYS_EXIT`), plus `scripts/qemu-run`'s
//!   timeout status;
//! - [`console`]: the console lines the harness parses: per-test results, the summary, and
//!   the fatal reports;
//! - [`trace_mark`]: the values the kernel writes to an unused SMMU register so the trace
//!   oracle can find a flush under test in QEMU's trace.
#![no_std]
#![warn(missing_docs)]

pub mod console;
pub mod exit;
pub mod trace_mark;
