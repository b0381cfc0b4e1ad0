//! Device drivers.

pub mod dma;
pub mod edu;
pub mod gic;
pub mod mmio;
pub mod pci;
pub mod pl011;
pub mod timer;
