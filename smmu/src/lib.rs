//! Arm SMMUv3 driver logic (Arm IHI 0070 G.b), written as pure, host-testable Rust.
//!
//! The crate is `no_std` and builds for the host and for `aarch64-unknown-none`. Every access to
//! SMMU registers, DMA memory, barriers and time goes through [`hal::SmmuHal`], which the
//! kernel implements; the host tests implement it with fake SMMU models (including one that
//! consumes the command queue lazily on another thread).
//!
//! # Modules
//!
//! - [`regs`]: register offsets and field layouts.
//! - [`hal`]: the trait the kernel implements, and DMA regions.
//! - [`features`]: ID registers decoded into [`features::Features`]; required-feature and SVA
//!   compatibility checks.
//! - [`command`]: command-queue entries and their encodings.
//! - [`queue`]: circular-queue index/wrap arithmetic shared by the command and event queues.
//! - [`cmdq`]: the multi-CPU command queue (batches, `CMD_SYNC` waits, error recovery).
//! - [`strtab`]: linear and 2-level stream tables.
//! - [`ste`], [`cd`]: stream table entry and context descriptor builders.
//! - [`writer`]: the ordered, hitless-where-possible update protocol for STEs and CDs.
//! - [`planner`]: TLB invalidation planning (per-page, range, whole-ASID).
//! - [`event`]: event record decoding and event-queue consumption.
//! - [`stats`]: command counters with snapshots and deltas.
//! - [`device`]: [`device::Smmu`], which ties everything together.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod cd;
pub mod cmdq;
pub mod command;
pub mod device;
pub mod event;
pub mod features;
pub mod hal;
pub mod planner;
pub mod queue;
pub mod regs;
pub mod stats;
pub mod ste;
pub mod strtab;
pub mod writer;

#[cfg(test)]
mod fake;
