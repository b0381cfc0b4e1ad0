//! DMA seen from the IOMMU glue and the drivers: the [`BusMaster`] interface the glue attaches
//! to an address space, DMA faults as a driver reports them, and the hook through which the
//! glue supplies them.
//!
//! Why a hook: a PCI device usually never learns that its DMA failed. QEMU's edu ignores the
//! result of its memory accesses — a faulted read leaves zeros in its buffer, a faulted write is
//! dropped, and it signals completion as usual — so the only witness is the SMMU's event queue.
//! The driver knows *when* a transfer runs and *which* StreamID and IOVA range it covers; the
//! IOMMU glue knows the events. [`DmaFaultSource`] joins the two: the driver brackets each
//! transfer with [`begin_transfer`](DmaFaultSource::begin_transfer) /
//! [`end_transfer`](DmaFaultSource::end_transfer), and the glue returns the events recorded in
//! between for that StreamID and range, folded into one [`DmaFault`].

use core::fmt;

/// A device that masters the bus: what the IOMMU glue needs to let it DMA through the SMMU
/// and to cut it off again.
pub trait BusMaster: Send + Sync {
    /// The StreamID its DMA carries (None: not behind an IOMMU).
    fn stream_id(&self) -> Option<u32>;

    /// Lets the device issue memory requests (PCI: Bus Master Enable on it and its bridges).
    ///
    /// # Safety
    ///
    /// The SMMU must be enabled and hold a valid stream table entry for
    /// [`stream_id`](Self::stream_id) — translating through page tables the caller controls, or
    /// aborting — until [`disable_dma`](Self::disable_dma) returns: an SMMU without GBPA (QEMU
    /// 7.2) lets a disabled or unconfigured stream's DMA reach any RAM.
    unsafe fn enable_dma(&self);

    /// Stops the device's memory requests (fail closed).
    fn disable_dma(&self);
}

/// The class of an SMMU fault event (Arm IHI 0070, §7.3 "Event records"), as the glue decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFaultKind {
    /// F_TRANSLATION (0x10): no valid translation for the address.
    Translation,
    /// F_ADDR_SIZE (0x11): the address or an output address is out of range.
    AddressSize,
    /// F_ACCESS (0x12): access flag fault.
    Access,
    /// F_PERMISSION (0x13): the translation does not allow the access (e.g. a write to a
    /// read-only page).
    Permission,
    /// Any other event (configuration errors, bad STE/CD, ...), with its event code.
    Other(u8),
}

impl fmt::Display for DmaFaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Translation => f.write_str("translation fault"),
            Self::AddressSize => f.write_str("address size fault"),
            Self::Access => f.write_str("access flag fault"),
            Self::Permission => f.write_str("permission fault"),
            Self::Other(code) => write!(f, "SMMU event {code:#04x}"),
        }
    }
}

/// The faults one transfer caused.
///
/// QEMU splits a failed transfer into 4-byte accesses and records one event per access, so a
/// 64-byte transfer that faults throughout yields `count == 16` with `iova` the first chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// The kind of the first event.
    pub kind: DmaFaultKind,
    /// The input address (IOVA) of the first event (the transfer's first IOVA when that event
    /// is a configuration error, which carries no address).
    pub iova: u64,
    /// Whether the faulting access was a write to memory (the device writing), per the event.
    pub write: bool,
    /// How many events the transfer produced.
    pub count: u32,
    /// The StreamID the events carry.
    pub stream_id: u32,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on StreamID {:#x} at IOVA {:#x} (device {}), {} event{}",
            self.kind,
            self.stream_id,
            self.iova,
            if self.write { "write" } else { "read" },
            self.count,
            if self.count == 1 { "" } else { "s" }
        )
    }
}

/// One transfer as the fault source sees it: which StreamID touches which IOVA range, how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaWindow {
    /// The device's StreamID.
    pub stream_id: u32,
    /// First IOVA the transfer touches.
    pub iova: u64,
    /// Bytes touched from `iova`.
    pub len: u64,
    /// The device writes memory (rather than reads it).
    pub device_writes: bool,
}

/// An opaque token from [`DmaFaultSource::begin_transfer`], handed back to `end_transfer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultWatch(pub u64);

/// Where a driver learns about the IOMMU faults its transfers caused (implemented by the IOMMU
/// glue).
///
/// Contract:
/// - `begin_transfer` is called before the device is told to start, `end_transfer` once the
///   device has reported completion (or the wait for it timed out). The device performs the
///   accesses in between, so every event they cause is in the SMMU's event queue by the time
///   `end_transfer` runs; the implementation drains the queue there (it must not wait for an
///   event interrupt the transfer may never produce).
/// - `end_transfer` returns the events for `window.stream_id` whose input address lies in
///   `[window.iova, window.iova + window.len)` — plus that StreamID's configuration errors
///   (bad STE or CD), which name no address but fail the transfer all the same — folded into
///   one [`DmaFault`], or `None`.
/// - Several devices may have transfers in flight at once; the token tells them apart.
pub trait DmaFaultSource: Send + Sync {
    /// Start collecting faults for `window`.
    fn begin_transfer(&self, window: &DmaWindow) -> FaultWatch;
    /// Stop collecting and return what the transfer caused.
    fn end_transfer(&self, watch: FaultWatch) -> Option<DmaFault>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn fault_display_names_everything() {
        let f = DmaFault {
            kind: DmaFaultKind::Permission,
            iova: 0x4000,
            write: true,
            count: 6,
            stream_id: 8,
        };
        assert_eq!(
            f.to_string(),
            "permission fault on StreamID 0x8 at IOVA 0x4000 (device write), 6 events"
        );
        let one = DmaFault {
            count: 1,
            kind: DmaFaultKind::Other(0x0a),
            write: false,
            ..f
        };
        assert_eq!(
            one.to_string(),
            "SMMU event 0x0a on StreamID 0x8 at IOVA 0x4000 (device read), 1 event"
        );
    }
}
