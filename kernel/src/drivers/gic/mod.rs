//! The interrupt controller: GICv2 or GICv3 as the device tree says, with handler registration
//! per INTID, trigger configuration, SGIs between CPUs, and the IRQ dispatch loop.

pub mod gicd;
pub mod v2;
pub mod v3;

pub use gicd::Trigger;

use crate::{cpu, exception};
use alloc::{collections::BTreeMap, sync::Arc};
use core::fmt;
use spin::{Once, RwLock};

/// The SGI used to wake an idle CPU (e.g. to run queued work).
pub const SGI_WAKE: u32 = 0;
/// INTIDs at or above this are spurious (1020-1023).
const SPURIOUS: u32 = 1020;

/// An interrupt handler, called with the INTID in IRQ context (IRQs masked).
pub type Handler = Arc<dyn Fn(u32) + Send + Sync>;

/// Errors of the interrupt controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GicError {
    /// The controller has not been initialised.
    NotInitialised,
    /// The INTID is outside what the distributor implements.
    BadIntid(u32),
    /// A handler is already registered for the INTID.
    AlreadyRegistered(u32),
    /// GICv3 bring-up failed.
    V3(v3::GicV3Error),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInitialised => write!(f, "interrupt controller not initialised"),
            Self::BadIntid(i) => write!(f, "INTID {i} is not implemented by the GIC"),
            Self::AlreadyRegistered(i) => write!(f, "INTID {i} already has a handler"),
            Self::V3(e) => write!(f, "GICv3: {e:?}"),
        }
    }
}

/// The two supported GIC generations.
pub enum Gic {
    /// GICv2 (memory-mapped CPU interface).
    V2(v2::GicV2),
    /// GICv3 (system-register CPU interface).
    V3(v3::GicV3),
}

static GIC: Once<Gic> = Once::new();
static HANDLERS: RwLock<BTreeMap<u32, Handler>> = RwLock::new(BTreeMap::new());

/// Install `gic` as the interrupt controller, initialise its distributor and the boot CPU's
/// interface, and route IRQ exceptions to [`dispatch`].
pub fn init(gic: Gic) -> Result<(), GicError> {
    let gic = GIC.call_once(|| gic);
    match gic {
        Gic::V2(g) => g.init_distributor(),
        Gic::V3(g) => g.init_distributor().map_err(GicError::V3)?,
    }
    exception::set_irq_handler(dispatch);
    init_cpu()
}

/// Initialise the calling CPU's interface (every CPU, once) and enable the wake SGI.
pub fn init_cpu() -> Result<(), GicError> {
    let gic = GIC.get().ok_or(GicError::NotInitialised)?;
    match gic {
        Gic::V2(g) => {
            g.init_cpu();
            g.enable(SGI_WAKE, Trigger::Edge, 0);
        }
        Gic::V3(g) => {
            g.init_cpu().map_err(GicError::V3)?;
            g.enable(SGI_WAKE, Trigger::Edge, 0).map_err(GicError::V3)?;
        }
    }
    Ok(())
}

/// Register `handler` for `intid` and enable it with `trigger`, routed to the boot CPU
/// (per-CPU interrupts, INTID < 32, are enabled on the calling CPU).
pub fn register(intid: u32, trigger: Trigger, handler: Handler) -> Result<(), GicError> {
    let gic = GIC.get().ok_or(GicError::NotInitialised)?;
    let limit = match gic {
        Gic::V2(g) => g.distributor().num_irqs(),
        Gic::V3(g) => g.distributor().num_irqs(),
    };
    if intid >= limit {
        return Err(GicError::BadIntid(intid));
    }
    {
        let was = cpu::irq_save();
        let mut handlers = HANDLERS.write();
        let result = match handlers.entry(intid) {
            alloc::collections::btree_map::Entry::Occupied(_) => {
                Err(GicError::AlreadyRegistered(intid))
            }
            alloc::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(handler);
                Ok(())
            }
        };
        drop(handlers);
        cpu::irq_restore(was);
        result?;
    }
    match gic {
        Gic::V2(g) => {
            let mask = g.this_cpu_mask();
            g.enable(intid, trigger, mask);
        }
        Gic::V3(g) => g
            .enable(intid, trigger, cpu::mpidr_affinity())
            .map_err(GicError::V3)?,
    }
    Ok(())
}

/// Disable `intid` and remove its handler.
pub fn unregister(intid: u32) {
    if let Some(gic) = GIC.get() {
        match gic {
            Gic::V2(g) => g.disable(intid),
            Gic::V3(g) => g.disable(intid),
        }
    }
    let was = cpu::irq_save();
    HANDLERS.write().remove(&intid);
    cpu::irq_restore(was);
}

/// Enable a per-CPU interrupt (PPI) on the calling CPU without changing its handler.
pub fn enable_local(intid: u32, trigger: Trigger) -> Result<(), GicError> {
    match GIC.get().ok_or(GicError::NotInitialised)? {
        Gic::V2(g) => g.enable(intid, trigger, 0),
        Gic::V3(g) => g.enable(intid, trigger, 0).map_err(GicError::V3)?,
    }
    Ok(())
}

/// Whether SPI `intid` is pending at the distributor (used by polling fallbacks and tests).
pub fn is_pending(intid: u32) -> bool {
    match GIC.get() {
        Some(Gic::V2(g)) => g.distributor().is_pending(intid),
        Some(Gic::V3(g)) => g.distributor().is_pending(intid),
        None => false,
    }
}

/// Send the wake SGI to the CPU with MPIDR affinity `mpidr` (GICv3) / interface `index`.
pub fn send_wake(mpidr: u64, cpu_index: usize) {
    match GIC.get() {
        Some(Gic::V2(g)) => g.send_sgi(SGI_WAKE, 1 << (cpu_index % 8)),
        Some(Gic::V3(g)) => g.send_sgi(SGI_WAKE, mpidr),
        None => {}
    }
}

/// The IRQ exception handler: acknowledge, run the handler, EOI, until nothing is pending.
pub fn dispatch() {
    let Some(gic) = GIC.get() else { return };
    loop {
        let raw = match gic {
            Gic::V2(g) => g.ack(),
            Gic::V3(g) => g.ack(),
        };
        let intid = raw & 0x3FF;
        if intid >= SPURIOUS {
            break;
        }
        let handler = HANDLERS.read().get(&intid).cloned();
        match handler {
            Some(h) => h(intid),
            None if intid == SGI_WAKE => {}
            None => log::warn!("unexpected IRQ {intid} (no handler); disabling it"),
        }
        if handler_missing(intid) {
            match gic {
                Gic::V2(g) => g.disable(intid),
                Gic::V3(g) => g.disable(intid),
            }
        }
        match gic {
            Gic::V2(g) => g.eoi(raw),
            Gic::V3(g) => g.eoi(raw),
        }
    }
}

fn handler_missing(intid: u32) -> bool {
    intid != SGI_WAKE && !HANDLERS.read().contains_key(&intid)
}

/// A boxed handler from a closure.
pub fn handler(f: impl Fn(u32) + Send + Sync + 'static) -> Handler {
    Arc::new(f) as Arc<dyn Fn(u32) + Send + Sync>
}
