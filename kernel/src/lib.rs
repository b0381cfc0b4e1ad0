//! A bare-metal aarch64 unikernel for QEMU `virt` with an SMMUv3 that shares the CPU's stage-1
//! page tables (SVA), and flush paths that keep the SMMU's TLB coherent with them.
//!
//! # Code organisation
//!
//! - Generic code lives in `src/<subsystem>`; CPU-specific code in `src/_arch/aarch64/<same path>`,
//!   pulled in with `#[path]` and re-exported by the generic module (the layout of
//!   rust-raspberrypi-OS-tutorials).
//! - Everything that touches hardware is behind `cfg(target_os = "none")`. The pure logic (page
//!   tables, device-tree discovery, allocators, log formatting) also builds on the host, where
//!   plain `cargo test` runs its unit tests.
//! - On-target tests are registered with [`ktest!`] next to the code they test and run by
//!   [`ktest::run`]; the host harness in `tests/` boots the image and reads their results.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bootargs;
pub mod exception;
pub mod ktest;
pub mod logger;
pub mod mm;
pub mod platform;

#[cfg(target_os = "none")]
pub mod console;
pub mod cpu;
#[cfg(target_os = "none")]
pub mod demo;
pub mod drivers;
#[cfg(target_os = "none")]
pub mod exit;
#[cfg(target_os = "none")]
pub mod init;
#[cfg(target_os = "none")]
pub mod iommu;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
pub mod scenarios;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod testkit;
#[cfg(target_os = "none")]
pub mod time;
