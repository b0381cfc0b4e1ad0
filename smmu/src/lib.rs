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
//!
//! # How the kernel uses it
//!
//! ```ignore
//! // 1. Implement the HAL: MMIO at the SMMU's base, DMA memory, `dsb`s, the counter timer.
//! struct KernelSmmuHal { base: usize, /* ... */ }
//! unsafe impl smmu::SmmuHal for KernelSmmuHal { /* ... */ }
//!
//! // 2. Probe and bring up (before any device may DMA: QEMU 7.2 bypasses while disabled).
//! let mut smmu = smmu::Smmu::probe(KernelSmmuHal::new(0x0905_0000))?;
//! smmu.init(&smmu::SmmuConfig::default())?;
//! static SMMU: spin::Once<smmu::Smmu<KernelSmmuHal>> = spin::Once::new();
//! let smmu = SMMU.call_once(|| smmu);
//!
//! // 3. Share the CPU's TTBR0 tables with a device (StreamID = PCI requester ID).
//! let cd = smmu::CdParams::sva(&cpu_mmu_config, ttbr0_pa, pinned_asid, mair, smmu.features())?;
//! smmu.install_stage1(0x8, &cd)?;
//!
//! // 4. In every flush path, after the PTE store + DSB and the CPU TLBI:
//! smmu.invalidate(pinned_asid, smmu::FlushKind::Page(va))?;
//!
//! // 5. Interrupts: GERROR -> handle_gerror(); EVENTQ (and after GERROR) -> drain_events().
//! smmu.handle_gerror()?;
//! smmu.drain_events(&mut |event| log::warn!("{event}"))?;
//! ```
//!
//! Hardware facts cite the Arm SMMUv3 specification, IHI 0070 G.b, by section; QEMU's model
//! (7.2 and later) is one implementation and its deviations are called out where they matter.
#![no_std]
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

pub use cd::CdParams;
pub use cmdq::CmdqError;
pub use command::Command;
pub use device::{GerrorReport, Smmu, SmmuConfig, SmmuError};
pub use event::{DrainReport, Event, EventType};
pub use features::{CpuMmuConfig, Features, Granule};
pub use hal::{DmaError, DmaRegion, SmmuHal};
pub use planner::{FlushHint, FlushKind, InvalPolicy};
pub use stats::CounterSnapshot;
pub use strtab::StrtabFormat;
