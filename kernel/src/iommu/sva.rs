//! Shared Virtual Addressing: a bus master's StreamID bound to a CPU address space (the SMMU's
//! Context Descriptor points at the CPU's own TTBR0 tables with the same, pinned ASID), and the
//! SMMU registered as a secondary TLB of that address space so every flush reaches it.

use alloc::{sync::Arc, vec::Vec};

use smmu::{CdParams, FlushHint, FlushKind, SmmuError};

use super::{Iommu, IommuError, masked};
use crate::{
    drivers::dma::BusMaster,
    mm::{
        address_space::AddressSpace,
        tlb::{
            FlushCause, FlushRange, LeafHint, SecondaryTlb, SecondaryTlbError, SecondaryTlbFailure,
            SecondaryTlbHandle,
        },
    },
};

/// An address space shared with one or more devices.
pub(super) struct Domain {
    pub(super) space: Arc<AddressSpace>,
    tlb: SecondaryTlbHandle,
    pub(super) sids: Vec<u32>,
}

impl Iommu {
    /// Share `space` with the device whose StreamID is `sid`: pin the ASID and register the
    /// SMMU as a secondary TLB of `space` (once per address space, whatever the number of
    /// devices), then install a Context Descriptor pointing at the CPU's own tables and a
    /// stage-1 STE. The device may DMA only after this returns.
    pub fn bind(&'static self, sid: u32, space: &Arc<AddressSpace>) -> Result<(), IommuError> {
        let mut domains = self.domains.lock();
        if domains.iter().any(|d| d.sids.contains(&sid)) {
            return Err(IommuError::AlreadyBound(sid));
        }
        let index = match domains.iter().position(|d| Arc::ptr_eq(&d.space, space)) {
            Some(i) => i,
            None => {
                // Register (and so pin the ASID) before the CD exists: from the moment the SMMU
                // can cache translations of this ASID, every flush must reach it.
                let tlb = space.register_secondary(Arc::new(SmmuTlb { iommu: self }))?;
                domains.push(Domain {
                    space: space.clone(),
                    tlb,
                    sids: Vec::new(),
                });
                domains.len() - 1
            }
        };
        let ctx = domains[index].space.smmu_context()?;
        let cd = CdParams::sva(
            &self.cpu,
            ctx.ttb0.0,
            ctx.asid,
            ctx.mair,
            self.smmu.features(),
        )
        .map_err(|e| IommuError::Smmu(SmmuError::Cd(e)));
        let result =
            cd.and_then(|cd| masked(|| self.smmu.install_stage1(sid, &cd)).map_err(Into::into));
        match result {
            Ok(()) => {
                domains[index].sids.push(sid);
                log::debug!(
                    "StreamID {sid:#x} bound to ASID {} (TTB0 {})",
                    ctx.asid,
                    ctx.ttb0
                );
                Ok(())
            }
            Err(e) => {
                if domains[index].sids.is_empty() {
                    let d = domains.remove(index);
                    let _ = d.space.unregister_secondary(d.tlb);
                }
                Err(e)
            }
        }
    }

    /// Stop sharing: quiesce the CD (EPD0 = 1: walks fault, the CD stays valid), invalidate the
    /// ASID, make the STE abort, and — for the last device of the address space — unregister
    /// the SMMU as its secondary TLB (which unpins the ASID). The device must have stopped
    /// DMA (Bus Master Enable cleared) before.
    pub fn unbind(&self, sid: u32) -> Result<(), IommuError> {
        let mut domains = self.domains.lock();
        let index = domains
            .iter()
            .position(|d| d.sids.contains(&sid))
            .ok_or(IommuError::NotBound(sid))?;
        let asid = domains[index].space.asid();
        masked(|| -> Result<(), SmmuError> {
            if let Some(cd) = self.smmu.context(sid)? {
                self.smmu.install_stage1(sid, &cd.quiesced())?;
            }
            self.smmu.invalidate(asid, FlushKind::All)?;
            self.smmu.set_abort(sid)
        })?;
        domains[index].sids.retain(|&s| s != sid);
        if domains[index].sids.is_empty() {
            let d = domains.remove(index);
            d.space.unregister_secondary(d.tlb)?;
        }
        Ok(())
    }

    /// Bind `device`'s StreamID to `space` and then let the device master the bus.
    pub fn attach(
        &'static self,
        device: Arc<dyn BusMaster>,
        space: &Arc<AddressSpace>,
    ) -> Result<Attachment, IommuError> {
        let sid = device.stream_id().ok_or(IommuError::NoStreamId)?;
        self.bind(sid, space)?;
        // SAFETY: the SMMU is enabled and the device's StreamID now has a valid stage-1 STE,
        // which stays valid until the Attachment is dropped, after `disable_dma`.
        unsafe { device.enable_dma() };
        Ok(Attachment {
            iommu: self,
            device,
            sid,
        })
    }
}

/// The SMMU as a secondary TLB of an address space.
struct SmmuTlb {
    iommu: &'static Iommu,
}

impl SecondaryTlb for SmmuTlb {
    fn name(&self) -> &str {
        "smmuv3"
    }

    fn invalidate(
        &self,
        asid: u16,
        range: FlushRange,
        cause: FlushCause,
    ) -> Result<(), SecondaryTlbError> {
        self.invalidate_hinted(asid, range, cause, LeafHint::UNKNOWN)
    }

    fn invalidate_hinted(
        &self,
        asid: u16,
        range: FlushRange,
        _cause: FlushCause,
        hint: LeafHint,
    ) -> Result<(), SecondaryTlbError> {
        // The SMMU boundary: the kernel's one range type becomes the driver's flush kind.
        let kind = match range {
            FlushRange::Pages(r) if r.pages() == 1 => FlushKind::Page(r.start().0),
            FlushRange::Pages(r) => FlushKind::Range {
                start: r.start().0,
                pages: r.pages(),
            },
            FlushRange::All => FlushKind::All,
        };
        let hint = FlushHint {
            leaf_only: hint.leaf_only,
            level: hint.level,
        };
        masked(|| self.iommu.smmu.invalidate_hinted(asid, kind, hint)).map_err(|e| {
            let failure = match e {
                SmmuError::Cmdq(smmu::CmdqError::SyncTimeout { .. }) => {
                    SecondaryTlbFailure::Timeout
                }
                SmmuError::Cmdq(smmu::CmdqError::Rejected { index, opcode, .. }) => {
                    SecondaryTlbFailure::Rejected { index, opcode }
                }
                _ => SecondaryTlbFailure::Unavailable,
            };
            SecondaryTlbError::caused_by(failure, e)
        })
    }
}

/// A device bound to an address space with bus mastering on; dropping it stops the device's
/// DMA first, then unbinds.
pub struct Attachment {
    iommu: &'static Iommu,
    device: Arc<dyn BusMaster>,
    sid: u32,
}

impl Attachment {
    /// The device's StreamID.
    pub fn stream_id(&self) -> u32 {
        self.sid
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BusMaster> {
        &self.device
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.device.disable_dma();
        if let Err(e) = self.iommu.unbind(self.sid) {
            log::error!("unbinding StreamID {:#x}: {e}", self.sid);
        }
    }
}
