//! SMMU events and global errors: the event queue drained (interrupt or polling) and each
//! record routed to the DMA transfer it failed, to a per-StreamID handler, or counted as
//! unexpected; device faults handed to the bound address space's fault policy.

use alloc::{sync::Arc, vec::Vec};
use core::sync::atomic::Ordering;

use smmu::{Event, EventType};

use super::{Iommu, masked};
use crate::{
    drivers::dma::{DmaFault, DmaFaultKind, DmaFaultSource, DmaWindow, FaultWatch},
    mm::{
        VirtAddr,
        address_space::{FaultClass, FaultKind},
    },
};

/// A DMA transfer whose SMMU faults are being collected.
struct Watch {
    id: u64,
    window: DmaWindow,
    first: Option<(EventType, u64, bool)>,
    count: u32,
}

/// A handler for SMMU events of one StreamID that no transfer claimed (called in the context
/// that drains the event queue, possibly an interrupt: it must not submit SMMU commands).
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Default)]
pub(super) struct Router {
    next_watch: u64,
    watches: Vec<Watch>,
    handlers: Vec<(u32, EventHandler)>,
}

impl Iommu {
    /// Route SMMU events of `sid` that no transfer claims to `handler`.
    pub fn set_event_handler(&self, sid: u32, handler: Option<EventHandler>) {
        masked(|| {
            let mut r = self.router.lock();
            r.handlers.retain(|(s, _)| *s != sid);
            if let Some(h) = handler {
                r.handlers.push((sid, h));
            }
        });
    }

    /// Drain the event queue, routing every record (interrupt handler and polling path).
    pub fn drain_events(&self) {
        masked(|| {
            for _ in 0..16 {
                match self.smmu.drain_events(&mut |ev| self.route(ev)) {
                    Ok(report) => {
                        if report.overflow || report.abort_error {
                            self.lost_events.fetch_add(1, Ordering::Relaxed);
                        }
                        if !report.more_pending {
                            return;
                        }
                    }
                    Err(e) => {
                        log::error!("SMMU event queue: {e}");
                        return;
                    }
                }
            }
        })
    }

    /// The global-error interrupt: recover the command queue, then drain events (an event
    /// queue abort is acknowledged there).
    pub fn service_gerror(&self) {
        match masked(|| self.smmu.handle_gerror()) {
            // The submitter that hit a command error usually recovers it synchronously before
            // this interrupt is taken; then nothing is active any more.
            Ok(report) if report.active.is_empty() => {}
            Ok(report) => log::warn!("SMMU global error: {report:?}"),
            Err(e) => log::error!("SMMU global error handling failed: {e}"),
        }
        self.drain_events();
    }

    fn route(&self, ev: Event) {
        let mut router = self.router.lock();
        let addressed = carries_transaction_address(ev.kind);
        if let Some(w) = router.watches.iter_mut().find(|w| {
            w.window.stream_id == ev.stream_id
                && (!addressed
                    || ev.input_addr.is_some_and(|addr| {
                        addr >= w.window.iova && addr - w.window.iova < w.window.len
                    }))
        }) {
            // A configuration error names no address: report the transfer's start.
            let addr = match ev.input_addr {
                Some(addr) if addressed => addr,
                _ => w.window.iova,
            };
            let write = ev.access.map_or(w.window.device_writes, |a| !a.read);
            w.first.get_or_insert((ev.kind, addr, write));
            w.count += 1;
            return;
        }
        if let Some((_, h)) = router.handlers.iter().find(|(s, _)| *s == ev.stream_id) {
            let h = h.clone();
            drop(router);
            h(&ev);
            return;
        }
        drop(router);
        self.unclaimed_events.fetch_add(1, Ordering::Relaxed);
        log::warn!("SMMU event nobody expected: {ev}");
    }

    /// Give a fault the device reported to the policy of the address space bound to `sid`
    /// (thread context: resolving may flush, which submits SMMU commands).
    fn resolve_fault(&self, fault: &DmaFault) {
        let space = {
            let domains = self.domains.lock();
            domains
                .iter()
                .find(|d| d.sids.contains(&fault.stream_id))
                .map(|d| d.space.clone())
        };
        let Some(space) = space else { return };
        let class = match fault.kind {
            DmaFaultKind::Permission => FaultClass::Permission,
            DmaFaultKind::Access => FaultClass::AccessFlag,
            DmaFaultKind::Translation => FaultClass::Translation,
            _ => return,
        };
        let kind = FaultKind {
            class,
            level: 3,
            write: fault.write,
        };
        match space.handle_fault(VirtAddr(fault.iova), kind) {
            Ok(outcome) => log::debug!("device fault {fault}: {outcome:?}"),
            Err(e) => log::error!("device fault {fault}: handler failed: {e}"),
        }
    }
}

/// Whether a record of this type carries the address of the transaction that caused it
/// (IHI 0070 G.b §7.3), so it can be matched to a transfer's IOVA window. Configuration and
/// structure-fetch errors (`C_BAD_STE`, `C_BAD_CD`, `F_STE_FETCH`, `F_CD_FETCH`, ...) concern
/// the stream, not an address — QEMU even puts the CD's address in `F_CD_FETCH`'s InputAddr —
/// yet they are raised by, and fail, the accesses of whatever transfer the StreamID has in
/// flight (QEMU: one record per 4-byte access, as for translation faults).
fn carries_transaction_address(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::Uut
            | EventType::BadAtsTreq
            | EventType::TranslForbidden
            | EventType::WalkEabt
            | EventType::Translation
            | EventType::AddrSize
            | EventType::Access
            | EventType::Permission
            | EventType::TlbConflict
            | EventType::PageRequest
    )
}

fn dma_fault_kind(kind: EventType) -> DmaFaultKind {
    match kind {
        EventType::Translation => DmaFaultKind::Translation,
        EventType::AddrSize => DmaFaultKind::AddressSize,
        EventType::Access => DmaFaultKind::Access,
        EventType::Permission => DmaFaultKind::Permission,
        other => DmaFaultKind::Other(other.code()),
    }
}

impl DmaFaultSource for Iommu {
    fn begin_transfer(&self, window: &DmaWindow) -> FaultWatch {
        masked(|| {
            let mut r = self.router.lock();
            r.next_watch += 1;
            let id = r.next_watch;
            r.watches.push(Watch {
                id,
                window: *window,
                first: None,
                count: 0,
            });
            FaultWatch(id)
        })
    }

    fn end_transfer(&self, watch: FaultWatch) -> Option<DmaFault> {
        // Records of the transfer are in the queue by the time the device completes; drain
        // now rather than rely on the interrupt having run.
        self.drain_events();
        let w = masked(|| {
            let mut r = self.router.lock();
            let i = r.watches.iter().position(|w| w.id == watch.0)?;
            Some(r.watches.swap_remove(i))
        })?;
        let (kind, iova, write) = w.first?;
        let fault = DmaFault {
            kind: dma_fault_kind(kind),
            iova,
            write,
            count: w.count,
            stream_id: w.window.stream_id,
        };
        self.resolve_fault(&fault);
        Some(fault)
    }
}
