//! Enumeration errors. Each names the function (and BAR, bridge or RID) it is about, so the boot
//! log says what to fix without a debugger.

use super::window::WindowKind;
use crate::platform::{Bdf, IntxPin};
use core::fmt;

/// Something enumeration could not do for one function. Enumeration carries on with the rest of
/// the hierarchy and reports these in [`Enumeration::errors`](super::Enumeration); a function
/// with an unassigned memory BAR is left with memory decoding off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// No room left in `window` for BAR `bar` (`size` bytes) of `bdf`.
    WindowExhausted {
        /// The function.
        bdf: Bdf,
        /// BAR slot.
        bar: u8,
        /// BAR size in bytes.
        size: u64,
        /// The window that ran out.
        window: WindowKind,
    },
    /// The host bridge has no memory window (`ranges`) a BAR could come from.
    NoMemoryWindow {
        /// The function.
        bdf: Bdf,
        /// BAR slot.
        bar: u8,
    },
    /// A BAR whose encoding is invalid: a reserved memory type, or a 64-bit BAR in the last slot.
    BadBar {
        /// The function.
        bdf: Bdf,
        /// BAR slot.
        bar: u8,
        /// The BAR's value.
        raw: u32,
    },
    /// A bridge was found but every bus number in `bus-range` is taken: nothing behind it is
    /// enumerated.
    BusNumbersExhausted {
        /// The bridge.
        bridge: Bdf,
        /// The last bus number of the host bridge's `bus-range`.
        last_bus: u8,
    },
    /// Bridges nested deeper than the enumeration's bound.
    BridgeTooDeep {
        /// The bridge that was not descended into.
        bridge: Bdf,
        /// The bound.
        max_depth: usize,
    },
    /// The host bridge has an `iommu-map`, but no entry covers the Requester ID `rid` of `bdf`:
    /// its DMA has no StreamID.
    NoStreamId {
        /// The function.
        bdf: Bdf,
        /// The Requester ID its DMA carries.
        rid: u16,
    },
    /// `interrupt-map` has no entry for the (swizzled) INTx of `bdf`.
    NoIntxRoute {
        /// The function.
        bdf: Bdf,
        /// Its own Interrupt Pin.
        pin: IntxPin,
        /// The function on the root bus the pin was swizzled up to.
        root: Bdf,
        /// The pin at the root bus.
        root_pin: IntxPin,
    },
    /// An Interrupt Pin register value other than 0–4.
    BadInterruptPin {
        /// The function.
        bdf: Bdf,
        /// The register value.
        value: u8,
    },
    /// The capabilities list points outside 0x40..0x100, is misaligned, loops, or is too long.
    BadCapabilityList {
        /// The function.
        bdf: Bdf,
        /// The offending pointer.
        offset: u8,
    },
    /// A header layout enumeration does not handle (e.g. CardBus, type 2): listed, not configured.
    UnsupportedHeader {
        /// The function.
        bdf: Bdf,
        /// Header Type bits 6:0.
        header_type: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::WindowExhausted {
                bdf,
                bar,
                size,
                window,
            } => write!(
                f,
                "PCI {bdf}: BAR{bar} ({size:#x} bytes) does not fit in the host bridge's {window} \
                 (window exhausted); the function's memory decoding stays off"
            ),
            Self::NoMemoryWindow { bdf, bar } => write!(
                f,
                "PCI {bdf}: BAR{bar} cannot be assigned: the host bridge's `ranges` has no memory \
                 window"
            ),
            Self::BadBar { bdf, bar, raw } => write!(
                f,
                "PCI {bdf}: BAR{bar} has an invalid encoding {raw:#010x} (reserved memory type, or \
                 a 64-bit BAR in the last slot)"
            ),
            Self::BusNumbersExhausted { bridge, last_bus } => write!(
                f,
                "PCI {bridge}: bridge left unconfigured: bus numbers exhausted (bus-range ends at \
                 {last_bus:#04x}); nothing behind it is enumerated"
            ),
            Self::BridgeTooDeep { bridge, max_depth } => write!(
                f,
                "PCI {bridge}: bridge nested deeper than {max_depth} levels; not descended into"
            ),
            Self::NoStreamId { bdf, rid } => write!(
                f,
                "PCI {bdf}: no iommu-map entry for RID {rid:#06x}: its DMA has no StreamID"
            ),
            Self::NoIntxRoute {
                bdf,
                pin,
                root,
                root_pin,
            } => write!(
                f,
                "PCI {bdf}: INT{pin:?} (INT{root_pin:?} of {root} at the root bus) has no \
                 interrupt-map entry"
            ),
            Self::BadInterruptPin { bdf, value } => {
                write!(
                    f,
                    "PCI {bdf}: Interrupt Pin register holds {value:#x}, not 0-4"
                )
            }
            Self::BadCapabilityList { bdf, offset } => write!(
                f,
                "PCI {bdf}: capabilities list broken at pointer {offset:#04x} (outside 0x40-0xff, \
                 misaligned, looping or too long); list truncated"
            ),
            Self::UnsupportedHeader { bdf, header_type } => write!(
                f,
                "PCI {bdf}: header type {header_type:#x} is not supported; function listed but \
                 not configured"
            ),
        }
    }
}
