//! The console UART, an Arm PL011 (`Documentation/devicetree/bindings/serial/arm,pl011.yaml`).
//!
//! QEMU's `virt` has exactly one, but the DT's `/chosen/stdout-path` is what says which UART is
//! the console, so that is honoured first.

use super::{PlatformError, gic::IrqDomain, irq::Irq, missing, region::Region, tree::Tree};
use alloc::string::String;
use core::fmt;

/// An Arm PL011 UART (`Documentation/devicetree/bindings/serial/arm,pl011.yaml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pl011 {
    /// Node path.
    pub path: String,
    /// Register frame.
    pub reg: Region,
    /// Its one interrupt.
    pub irq: Irq,
}

/// The console UART: the PL011 that `stdout-path` names if it names one (the part before any
/// `:options`, resolved through `/aliases` when it is not a path), else the first enabled PL011.
pub fn discover(
    tree: &Tree<'_>,
    gic: &IrqDomain,
    stdout_path: Option<&str>,
) -> Result<Pl011, PlatformError> {
    const PL011: &str = "arm,pl011";
    let from_stdout = stdout_path.and_then(|p| {
        let p = p.split(':').next().unwrap_or(p);
        let p = if p.starts_with('/') {
            p
        } else {
            let value = tree.prop(tree.find_path("/aliases")?, p)?;
            core::str::from_utf8(value.strip_suffix(&[0])?).ok()?
        };
        tree.find_path(p)
            .filter(|&n| tree.is_enabled(n) && tree.is_compatible(n, PL011))
    });
    let node = from_stdout
        .or_else(|| tree.find_compatible(&[PL011]))
        .ok_or(PlatformError::Missing(missing::UART))?;
    let irq = *gic
        .irqs(tree, node)?
        .first()
        .ok_or_else(|| tree.missing(node, "interrupts"))?;
    Ok(Pl011 {
        path: tree.path(node).into(),
        reg: tree.required_reg(node)?[0],
        irq,
    })
}

impl fmt::Display for Pl011 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PL011 UART {}: {}, {}", self.path, self.reg, self.irq)
    }
}
