//! Device drivers. The interrupt controller, console UART and timer touch hardware only; PCI
//! enumeration and the edu driver keep their logic host-testable behind config-space and
//! register traits.

pub mod dma;
pub mod edu;
#[cfg(target_os = "none")]
pub mod gic;
pub mod mmio;
pub mod pci;
#[cfg(target_os = "none")]
pub mod pl011;
#[cfg(target_os = "none")]
pub mod timer;
