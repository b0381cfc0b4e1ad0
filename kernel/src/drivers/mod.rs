//! Device drivers.

pub mod gic;
pub mod mmio;
pub mod pl011;
pub mod timer;
