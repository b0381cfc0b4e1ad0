//! Host harness for the on-target test suites.
//!
//! The pieces, each usable on its own:
//! - [`build`]: build the kernel image (`cargo build` for `aarch64-unknown-none`);
//! - [`qemu`]: boot it through `scripts/qemu-run` with a hard timeout, streaming the console
//!   live while capturing it;
//! - [`console`]: parse the on-target runner's output (a pure function, unit-tested);
//! - [`verdict`]: decide pass/fail from the parsed console and how QEMU ended;
//! - [`suites`]: the suite matrix (one table) and the runs behind the CLI;
//! - [`trace`]: parse QEMU's SMMU trace log (`QEMU_TRACE_FILE`) for trace oracles;
//! - [`oracle`]: check the invalidation scenarios from that trace alone.

pub mod build;
pub mod console;
pub mod error;
pub mod oracle;
pub mod qemu;
pub mod report;
pub mod suites;
pub mod trace;
pub mod verdict;

pub use error::Error;

use std::path::PathBuf;

/// The repository root (the workspace that holds `kernel/`, `scripts/` and `qemu/`).
pub fn repo_root() -> PathBuf {
    // This crate lives in `<root>/tests`.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
