//! Shared, level-sensitive INTx lines.
//!
//! Four INTx wires per host bridge serve every function below it (on QEMU virt, slots 1 and 5
//! both raise SPI 4), so one GIC interrupt can belong to several drivers. The GIC layer takes one
//! handler per INTID; this module owns that handler for INTx INTIDs and calls every driver
//! attached to the line, each of which checks and acknowledges its own device. Calling all of
//! them, not just the first that claims the interrupt, matters for a level-sensitive line: the
//! line stays asserted while any device still asserts it, and the GIC would re-signal at once.
//!
//! The registry is plain data behind a lock, so it builds on the host, where [`dispatch`] stands
//! in for the GIC in the drivers' unit tests. On the target, the first [`attach`] to a line
//! registers it with the GIC and the last [`IntxHandle`] dropped unregisters it.

use crate::platform::Irq;
use alloc::{collections::BTreeMap, sync::Arc, vec::Vec};
use core::fmt;
use spin::Mutex;

/// A driver's INTx handler: checks its device, acknowledges it there, and returns whether the
/// device had the line asserted. Runs in IRQ context.
pub type IntxHandler = Arc<dyn Fn() -> bool + Send + Sync>;

/// The handlers attached to each INTx INTID.
#[derive(Default)]
pub struct IntxLines {
    lines: BTreeMap<u32, Vec<(u64, IntxHandler)>>,
    next_id: u64,
}

impl IntxLines {
    /// An empty registry.
    pub const fn new() -> Self {
        Self {
            lines: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Attach `handler` to `intid`; returns its id and whether it is the line's first handler.
    pub fn add(&mut self, intid: u32, handler: IntxHandler) -> (u64, bool) {
        let id = self.next_id;
        self.next_id += 1;
        let handlers = self.lines.entry(intid).or_default();
        handlers.push((id, handler));
        (id, handlers.len() == 1)
    }

    /// Detach handler `id` from `intid`; returns whether the line has no handler left.
    pub fn remove(&mut self, intid: u32, id: u64) -> bool {
        let Some(handlers) = self.lines.get_mut(&intid) else {
            return true;
        };
        handlers.retain(|(h, _)| *h != id);
        if handlers.is_empty() {
            self.lines.remove(&intid);
            return true;
        }
        false
    }

    /// The handlers of `intid` (cloned, so they run without the lock held).
    pub fn handlers(&self, intid: u32) -> Vec<IntxHandler> {
        self.lines
            .get(&intid)
            .map(|hs| hs.iter().map(|(_, h)| h.clone()).collect())
            .unwrap_or_default()
    }
}

static LINES: Mutex<IntxLines> = Mutex::new(IntxLines::new());

/// Run `f` on the registry. On the target with IRQs masked, since [`dispatch`] takes the same
/// lock in IRQ context.
fn with_lines<T>(f: impl FnOnce(&mut IntxLines) -> T) -> T {
    #[cfg(target_os = "none")]
    let was = crate::cpu::irq_save();
    let result = f(&mut LINES.lock());
    #[cfg(target_os = "none")]
    crate::cpu::irq_restore(was);
    result
}

/// Run every handler attached to `intid`; returns how many found their device asserting it.
/// This is the GIC handler of every INTx INTID (and the tests' stand-in for the GIC).
pub fn dispatch(intid: u32) -> usize {
    let handlers = with_lines(|lines| lines.handlers(intid));
    handlers.iter().filter(|h| h()).count()
}

/// Why a handler could not be attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntxError {
    /// The INTID.
    pub intid: u32,
    /// What the interrupt controller said.
    pub reason: alloc::string::String,
}

impl fmt::Display for IntxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot attach an INTx handler to INTID {}: {}",
            self.intid, self.reason
        )
    }
}

/// A handler's attachment to a line; dropping it detaches the handler.
pub struct IntxHandle {
    intid: u32,
    id: u64,
}

impl IntxHandle {
    /// The INTID the handler is attached to.
    pub fn intid(&self) -> u32 {
        self.intid
    }
}

impl Drop for IntxHandle {
    fn drop(&mut self) {
        let last = with_lines(|lines| lines.remove(self.intid, self.id));
        #[cfg(target_os = "none")]
        if last {
            crate::drivers::gic::unregister(self.intid);
        }
        #[cfg(not(target_os = "none"))]
        let _ = last;
    }
}

/// Attach `handler` to the INTx line `irq`. The first handler of a line registers the line with
/// the GIC (as level- or edge-triggered, as the device tree says; INTx is level-high).
pub fn attach(irq: Irq, handler: IntxHandler) -> Result<IntxHandle, IntxError> {
    let intid = irq.intid;
    let (id, first) = with_lines(|lines| lines.add(intid, handler));
    #[cfg(target_os = "none")]
    if first {
        use crate::drivers::gic;
        let trigger = if irq.trigger.is_edge() {
            gic::Trigger::Edge
        } else {
            gic::Trigger::Level
        };
        let registered = gic::register(
            intid,
            trigger,
            gic::handler(|intid| {
                dispatch(intid);
            }),
        );
        if let Err(e) = registered {
            // The INTID is not ours (or not implemented): detach, leave the GIC alone.
            with_lines(|lines| lines.remove(intid, id));
            return Err(IntxError {
                intid,
                reason: alloc::format!("{e}"),
            });
        }
    }
    #[cfg(not(target_os = "none"))]
    let _ = first;
    Ok(IntxHandle { intid, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Trigger;
    use core::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn every_handler_on_a_shared_line_runs() {
        let calls = Arc::new(AtomicU32::new(0));
        let (c1, c2) = (calls.clone(), calls.clone());
        // INTIDs private to this test: the registry is global.
        let irq = Irq::spi(900, Trigger::LevelHigh);
        let a = attach(
            irq,
            Arc::new(move || {
                c1.fetch_add(1, Ordering::Relaxed);
                false
            }),
        )
        .unwrap();
        let b = attach(
            irq,
            Arc::new(move || {
                c2.fetch_add(1, Ordering::Relaxed);
                true
            }),
        )
        .unwrap();
        assert_eq!(dispatch(irq.intid), 1, "one device claimed it");
        assert_eq!(calls.load(Ordering::Relaxed), 2, "both were asked");
        drop(b);
        assert_eq!(dispatch(irq.intid), 0);
        drop(a);
        assert_eq!(dispatch(irq.intid), 0);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn registry_reports_first_and_last() {
        let mut lines = IntxLines::new();
        let h: IntxHandler = Arc::new(|| true);
        let (a, first) = lines.add(36, h.clone());
        assert!(first);
        let (b, first) = lines.add(36, h.clone());
        assert!(!first);
        assert!(!lines.remove(36, a));
        assert_eq!(lines.handlers(36).len(), 1);
        assert!(lines.remove(36, b));
        assert!(lines.handlers(36).is_empty());
        assert!(lines.remove(37, 0), "unknown line is empty");
    }
}
