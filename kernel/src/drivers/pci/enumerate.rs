//! Depth-first enumeration of the hierarchy below one ECAM host bridge: find every function,
//! number the buses behind bridges, size and place every memory BAR, open bridge windows over
//! what lies behind them, and work out each function's StreamID and INTx route.
//!
//! Nothing runs under `-kernel` before us (no firmware), so the kernel is the only software that
//! configures PCI. The policy:
//!
//! - **Bus numbers** are handed out in discovery order from the host's `bus-range`. A bridge is
//!   first given subordinate = last bus so configuration requests for anything below reach it,
//!   then, after its subtree is scanned, the highest bus actually used (PCI-to-PCI Bridge
//!   Architecture Specification 1.2, §3.2.5.3–5).
//! - **BARs** are sized by writing all ones and reading back the address mask, then restoring
//!   the original value, with decoding off (PCI Local Bus Specification 3.0, §6.2.5.1). Memory
//!   BARs are placed naturally aligned, and at least page aligned so each can be mapped on its
//!   own. 32-bit BARs come from the 32-bit window. 64-bit BARs come from the 64-bit window when
//!   every bridge on the way can forward it: on the root bus always (if the window is not
//!   prefetchable-only or the BAR is prefetchable); behind bridges only prefetchable BARs, through
//!   bridges with a 64-bit prefetchable window, because a bridge's non-prefetchable window is
//!   32-bit only (§3.2.5.8). Everything else falls back to the 32-bit window. I/O BARs are
//!   reported, never assigned, and I/O decoding is never enabled.
//! - **Bridge windows** are the span of what was allocated while scanning below the bridge,
//!   rounded to the 1 MiB window granularity; an unused window is closed (base > limit).
//! - **COMMAND**: Memory Space is enabled on a function only if all its memory BARs were placed
//!   (and on a bridge whose windows are open). **Bus Master Enable is cleared on every function
//!   and bridge and never set here**: no device may issue DMA until the IOMMU holds a valid
//!   stream table entry for it, which only the driver that owns the device knows (see
//!   [`enable_bus_master`](super::enable_bus_master)).
//!
//! Every loop is bounded: 32 devices × 8 functions per bus, 6 BARs, 48 capabilities with loop
//! detection, bus numbers from a finite range, and bridge nesting by [`MAX_BRIDGE_DEPTH`].

use super::{
    config::{ConfigSpace, STATUS_CAP_LIST, command, reg},
    device::{
        Bar, BarAssignment, BarKind, BridgeInfo, Capability, ClassCode, PciDevice, PciePortType,
        cap_id,
    },
    error::PciError,
    window::{WindowAllocator, WindowKind, align_up},
};
use crate::platform::{Bdf, IntxPin, Irq, PciSpace, PcieHost};
use alloc::vec::Vec;

/// The deepest bridge nesting enumeration descends into (each level is one recursion frame).
pub const MAX_BRIDGE_DEPTH: usize = 16;
/// Granularity of a bridge's memory windows (PCI-to-PCI Bridge Spec 1.2, §3.2.5.8–9).
const BRIDGE_WINDOW_ALIGN: u64 = 1 << 20;
/// Smallest alignment given to a memory BAR: one page, so BARs never share a page.
const MIN_BAR_ALIGN: u64 = 4096;
/// Most entries a capabilities list can hold: (256 - 64) / 4.
const MAX_CAPABILITIES: usize = 48;
/// End of the 32-bit address space: 32-bit BARs and bridge non-prefetchable windows live below.
const FOUR_GIB: u64 = 1 << 32;

/// The result of [`enumerate`]: every function found, in scan order (a bridge before what is
/// behind it), and everything that could not be done.
#[derive(Clone, Debug, Default)]
pub struct Enumeration {
    /// The functions.
    pub devices: Vec<PciDevice>,
    /// Problems, one per function/BAR/bridge concerned. Enumeration continues past all of them.
    pub errors: Vec<PciError>,
    /// The highest bus number in use.
    pub last_bus: u8,
}

impl Enumeration {
    /// The function at `bdf`.
    pub fn device(&self, bdf: Bdf) -> Option<&PciDevice> {
        self.devices.iter().find(|d| d.bdf == bdf)
    }

    /// Every function with these IDs.
    pub fn find(&self, vendor: u16, device: u16) -> impl Iterator<Item = &PciDevice> + '_ {
        self.devices.iter().filter(move |d| d.is(vendor, device))
    }

    /// Log one line per function (info) and one per error (warn).
    pub fn log(&self) {
        log::info!(
            "PCI: {} functions on buses up to {:02x}",
            self.devices.len(),
            self.last_bus
        );
        for dev in &self.devices {
            log::info!("PCI {dev}");
        }
        for err in &self.errors {
            log::warn!("{err}");
        }
    }
}

/// Enumerate and configure the hierarchy below `host`, reaching configuration space through
/// `config`.
pub fn enumerate<C: ConfigSpace + ?Sized>(config: &C, host: &PcieHost) -> Enumeration {
    // Prefer a non-prefetchable window of each kind (a prefetchable one may hold only
    // prefetchable BARs).
    let pick = |space| {
        host.windows
            .iter()
            .filter(|w| w.space == space)
            .min_by_key(|w| w.prefetchable)
    };
    let mem32 = pick(PciSpace::Mem32).and_then(|w| WindowAllocator::new(WindowKind::Mem32, w));
    let mem64_window = pick(PciSpace::Mem64);
    let mem64 = mem64_window.and_then(|w| WindowAllocator::new(WindowKind::Mem64, w));
    let mut e = Enumerator {
        config,
        host,
        mem32,
        mem64,
        mem64_prefetchable_only: mem64_window.is_some_and(|w| w.prefetchable),
        next_bus: u16::from(host.bus_range.0) + 1,
        devices: Vec::new(),
        errors: Vec::new(),
    };
    let root = BusContext {
        bus: host.bus_range.0,
        depth: 0,
        upstream: Vec::new(),
        pref64: true,
    };
    let last_bus = e.scan_bus(&root);
    Enumeration {
        devices: e.devices,
        errors: e.errors,
        last_bus,
    }
}

/// The Requester ID that DMA from `bdf` carries at the root bus, given the bridges above it.
///
/// Each bridge whose secondary side is conventional PCI re-issues the transaction upstream as
/// its own: a PCI Express to PCI bridge with Requester ID (secondary bus, 0, 0), a conventional
/// PCI-to-PCI bridge with its own ID (PCI Express to PCI/PCI-X Bridge Specification 1.0, §2.3).
/// Behind PCI Express ports the function's own ID survives. QEMU models exactly this when it
/// picks the SMMU address space (`pci_device_iommu_address_space()`).
pub fn requester_id(bdf: Bdf, upstream: &[Hop]) -> u16 {
    let mut rid = bdf.rid();
    for hop in upstream.iter().rev() {
        if !hop.secondary_is_pcie {
            rid = match hop.pcie_to_pci {
                true => (u16::from(hop.secondary)) << 8,
                false => hop.bridge.rid(),
            };
        }
    }
    rid
}

/// The pin and root-bus function at which INTx `pin` of `bdf` arrives: swizzled once per bridge
/// on the way up, by the device number below that bridge (PCI-to-PCI Bridge Spec 1.2, §9.1).
pub fn swizzle_to_root(bdf: Bdf, pin: IntxPin, upstream: &[Hop]) -> (Bdf, IntxPin) {
    let (mut at, mut pin) = (bdf, pin);
    for hop in upstream.iter().rev() {
        pin = pin.swizzle(at.device);
        at = hop.bridge;
    }
    (at, pin)
}

/// One bridge on the path from the root bus to a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The bridge.
    pub bridge: Bdf,
    /// The secondary bus number it was given.
    pub secondary: u8,
    /// Its secondary side is a PCI Express link.
    pub secondary_is_pcie: bool,
    /// It is a PCI Express to PCI/PCI-X bridge.
    pub pcie_to_pci: bool,
}

/// What a bus inherits from the bridges above it.
struct BusContext {
    bus: u8,
    depth: usize,
    upstream: Vec<Hop>,
    /// 64-bit prefetchable BARs on this bus can use the 64-bit window.
    pref64: bool,
}

struct Enumerator<'a, C: ?Sized> {
    config: &'a C,
    host: &'a PcieHost,
    mem32: Option<WindowAllocator>,
    mem64: Option<WindowAllocator>,
    mem64_prefetchable_only: bool,
    /// The next free bus number (256 when exhausted).
    next_bus: u16,
    devices: Vec<PciDevice>,
    errors: Vec<PciError>,
}

/// A BAR as sized, before placement.
enum Sizing {
    /// Not implemented (reads back zero): skip `slots` slots.
    Absent { slots: u8 },
    /// Implemented.
    Bar(Bar),
}

impl<C: ConfigSpace + ?Sized> Enumerator<'_, C> {
    fn present(&self, bdf: Bdf) -> bool {
        !matches!(self.config.read16(bdf, reg::VENDOR_ID), 0xFFFF | 0x0000)
    }

    /// Scan every device on `ctx.bus`; returns the highest bus number at or below it.
    fn scan_bus(&mut self, ctx: &BusContext) -> u8 {
        let mut highest = ctx.bus;
        for device in 0..32 {
            let Some(f0) = Bdf::new(ctx.bus, device, 0) else {
                continue;
            };
            if !self.present(f0) {
                continue;
            }
            // Functions 1-7 exist only on a multi-function device (PCI 3.0 §6.2.1); a
            // single-function device may answer on all eight and must not be listed eight times.
            let multifunction = self.config.read8(f0, reg::HEADER_TYPE) & 0x80 != 0;
            let functions = if multifunction { 8 } else { 1 };
            for function in 0..functions {
                let Some(bdf) = Bdf::new(ctx.bus, device, function) else {
                    continue;
                };
                if function > 0 && !self.present(bdf) {
                    continue;
                }
                highest = highest.max(self.probe(bdf, multifunction, ctx));
            }
        }
        highest
    }

    /// Configure one function (and, for a bridge, everything behind it); returns the highest
    /// bus number at or below it.
    fn probe(&mut self, bdf: Bdf, multifunction: bool, ctx: &BusContext) -> u8 {
        let cfg = self.config;
        let ids = cfg.read32(bdf, reg::VENDOR_ID);
        let class_rev = cfg.read32(bdf, reg::REVISION);
        let header_type = cfg.read8(bdf, reg::HEADER_TYPE) & 0x7F;
        // Decoding off while BARs are sized and moved (PCI 3.0 §6.2.5.1); bus mastering off and
        // left off: fail closed, no DMA before the IOMMU is set up for the function.
        let command =
            cfg.read16(bdf, reg::COMMAND) & !(command::IO | command::MEMORY | command::BUS_MASTER);
        cfg.write16(bdf, reg::COMMAND, command);

        let capabilities = self.capabilities(bdf);
        let pcie_port = capabilities.iter().find(|c| c.id == cap_id::PCIE).map(|c| {
            PciePortType::from_field((cfg.read16(bdf, u16::from(c.offset) + 2) >> 4) as u8)
        });

        let bar_slots = match header_type {
            0 => 6,
            1 => 2,
            _ => {
                self.errors
                    .push(PciError::UnsupportedHeader { bdf, header_type });
                0
            }
        };
        let (bars, bars_ok) = self.bars(bdf, bar_slots, ctx);

        let requester_id = requester_id(bdf, &ctx.upstream);
        let stream = self.host.rid_to_sid(requester_id);
        if stream.is_none() && !self.host.iommu_map.is_empty() {
            self.errors.push(PciError::NoStreamId {
                bdf,
                rid: requester_id,
            });
        }
        let intx = self.route_intx(bdf, ctx);

        let index = self.devices.len();
        self.devices.push(PciDevice {
            bdf,
            vendor: ids as u16,
            device: (ids >> 16) as u16,
            class: ClassCode {
                base: (class_rev >> 24) as u8,
                sub: (class_rev >> 16) as u8,
                prog_if: (class_rev >> 8) as u8,
            },
            revision: class_rev as u8,
            header_type,
            multifunction,
            bars,
            capabilities,
            pcie_port,
            requester_id,
            stream_id: stream.map(|s| s.sid),
            iommu: stream.map(|s| s.iommu),
            intx,
            upstream: ctx.upstream.iter().map(|h| h.bridge).collect(),
            bridge: None,
            command,
        });

        let has_mem_bar = self.devices[index]
            .bars
            .iter()
            .any(|b| b.kind != BarKind::Io);
        let mut decode = has_mem_bar;
        let mut highest = ctx.bus;
        if header_type == 1 {
            let (info, below) = self.bridge(bdf, pcie_port, ctx);
            decode |= info.mem_window.is_some() || info.pref_window.is_some();
            highest = below;
            self.devices[index].bridge = Some(info);
        }
        let command = if decode && bars_ok {
            command | command::MEMORY
        } else {
            command
        };
        cfg.write16(bdf, reg::COMMAND, command);
        self.devices[index].command = command;
        highest
    }

    /// Walk the capabilities list (PCI 3.0 §6.7), bounded and loop-checked.
    fn capabilities(&mut self, bdf: Bdf) -> Vec<Capability> {
        let mut caps = Vec::new();
        if self.config.read16(bdf, reg::STATUS) & STATUS_CAP_LIST == 0 {
            return caps;
        }
        let mut seen = [false; 64];
        let mut ptr = self.config.read8(bdf, reg::CAP_PTR) & 0xFC;
        for _ in 0..MAX_CAPABILITIES {
            if ptr == 0 {
                return caps;
            }
            let slot = usize::from(ptr / 4);
            if ptr < 0x40 || seen[slot] {
                break;
            }
            seen[slot] = true;
            let header = self.config.read16(bdf, u16::from(ptr));
            caps.push(Capability {
                id: header as u8,
                offset: ptr,
            });
            ptr = (header >> 8) as u8 & 0xFC;
        }
        if ptr != 0 {
            self.errors
                .push(PciError::BadCapabilityList { bdf, offset: ptr });
        }
        caps
    }

    /// Size and place the BARs in slots `0..slots`. Returns the implemented BARs and whether
    /// every memory BAR was placed (so memory decoding may be enabled).
    fn bars(&mut self, bdf: Bdf, slots: u8, ctx: &BusContext) -> (Vec<Bar>, bool) {
        let mut bars = Vec::new();
        let mut all_placed = true;
        let mut index = 0;
        while index < slots {
            match self.size_bar(bdf, index, slots) {
                Err(e) => {
                    self.errors.push(e);
                    // Unknown decoder: keep memory decoding off rather than guess.
                    all_placed = false;
                    index += 1;
                }
                Ok(Sizing::Absent { slots }) => index += slots,
                Ok(Sizing::Bar(mut bar)) => {
                    if bar.kind != BarKind::Io
                        && let Err(e) = self.place(bdf, &mut bar, ctx)
                    {
                        self.errors.push(e);
                        all_placed = false;
                    }
                    index += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
                    bars.push(bar);
                }
            }
        }
        (bars, all_placed)
    }

    /// Size BAR `index`: write all ones, read the mask back, restore (PCI 3.0 §6.2.5.1).
    fn size_bar(&self, bdf: Bdf, index: u8, slots: u8) -> Result<Sizing, PciError> {
        let cfg = self.config;
        let offset = reg::BAR0 + 4 * u16::from(index);
        let original = cfg.read32(bdf, offset);
        cfg.write32(bdf, offset, u32::MAX);
        let lo = cfg.read32(bdf, offset);
        cfg.write32(bdf, offset, original);

        if lo & 1 == 1 {
            // I/O: bits [31:2] are the address; a 16-bit decoder hard-wires the upper half to 0.
            let mut mask = lo & !0x3;
            if mask == 0 {
                return Ok(Sizing::Absent { slots: 1 });
            }
            if mask >> 16 == 0 {
                mask |= 0xFFFF_0000;
            }
            return Ok(Sizing::Bar(Bar {
                index,
                kind: BarKind::Io,
                prefetchable: false,
                size: u64::from(mask & mask.wrapping_neg()),
                assigned: None,
            }));
        }
        let prefetchable = original & 0x8 != 0;
        match (original >> 1) & 0x3 {
            0b00 => {
                let mask = lo & !0xF;
                if mask == 0 {
                    return Ok(Sizing::Absent { slots: 1 });
                }
                Ok(Sizing::Bar(Bar {
                    index,
                    kind: BarKind::Mem32,
                    prefetchable,
                    size: u64::from(mask & mask.wrapping_neg()),
                    assigned: None,
                }))
            }
            0b10 if index + 1 < slots => {
                let upper = offset + 4;
                let original_hi = cfg.read32(bdf, upper);
                cfg.write32(bdf, upper, u32::MAX);
                let hi = cfg.read32(bdf, upper);
                cfg.write32(bdf, upper, original_hi);
                let mask = (u64::from(hi) << 32) | u64::from(lo & !0xF);
                if mask == 0 {
                    return Ok(Sizing::Absent { slots: 2 });
                }
                Ok(Sizing::Bar(Bar {
                    index,
                    kind: BarKind::Mem64,
                    prefetchable,
                    size: mask & mask.wrapping_neg(),
                    assigned: None,
                }))
            }
            _ => Err(PciError::BadBar {
                bdf,
                bar: index,
                raw: original,
            }),
        }
    }

    /// Place a memory BAR (see the module docs for the window policy) and program it.
    fn place(&mut self, bdf: Bdf, bar: &mut Bar, ctx: &BusContext) -> Result<(), PciError> {
        let root_bus = ctx.upstream.is_empty();
        let want64 = bar.kind == BarKind::Mem64
            && self.mem64.is_some()
            && if root_bus {
                bar.prefetchable || !self.mem64_prefetchable_only
            } else {
                bar.prefetchable && ctx.pref64
            };
        let (allocator, limit) = if want64 {
            (self.mem64.as_mut(), u64::MAX)
        } else {
            (self.mem32.as_mut(), FOUR_GIB)
        };
        let Some(allocator) = allocator else {
            return Err(PciError::NoMemoryWindow {
                bdf,
                bar: bar.index,
            });
        };
        let align = bar.size.max(MIN_BAR_ALIGN);
        let Some(pci_addr) = allocator.alloc(bar.size, align, limit) else {
            return Err(PciError::WindowExhausted {
                bdf,
                bar: bar.index,
                size: bar.size,
                window: allocator.kind(),
            });
        };
        bar.assigned = Some(BarAssignment {
            pci_addr,
            cpu_addr: allocator.to_cpu(pci_addr),
            window: allocator.kind(),
        });
        let offset = reg::BAR0 + 4 * u16::from(bar.index);
        self.config.write32(bdf, offset, pci_addr as u32);
        if bar.kind == BarKind::Mem64 {
            self.config
                .write32(bdf, offset + 4, (pci_addr >> 32) as u32);
        }
        Ok(())
    }

    /// The GIC interrupt of the function's INTx pin, if it has one.
    fn route_intx(&mut self, bdf: Bdf, ctx: &BusContext) -> Option<(IntxPin, Irq)> {
        let value = self.config.read8(bdf, reg::INTERRUPT_PIN);
        if value == 0 {
            return None;
        }
        let Some(pin) = IntxPin::from_register(value) else {
            self.errors.push(PciError::BadInterruptPin { bdf, value });
            return None;
        };
        let (root, root_pin) = swizzle_to_root(bdf, pin, &ctx.upstream);
        match self.host.intx_route(root, root_pin) {
            Some(irq) => Some((pin, irq)),
            None => {
                if !self.host.interrupt_map.is_empty() {
                    self.errors.push(PciError::NoIntxRoute {
                        bdf,
                        pin,
                        root,
                        root_pin,
                    });
                }
                None
            }
        }
    }

    /// Number a bridge's buses, scan behind it, and open its windows over what was placed there.
    /// Returns what was programmed and the highest bus at or below the bridge.
    fn bridge(
        &mut self,
        bdf: Bdf,
        port: Option<PciePortType>,
        ctx: &BusContext,
    ) -> (BridgeInfo, u8) {
        let cfg = self.config;
        let last_bus = self.host.bus_range.1;
        let latency = cfg.read32(bdf, reg::BUS_NUMBERS) & 0xFF00_0000;
        let bus_numbers = |secondary: u8, subordinate: u8| {
            latency
                | (u32::from(subordinate) << 16)
                | (u32::from(secondary) << 8)
                | u32::from(bdf.bus)
        };
        let closed = BridgeInfo {
            secondary: 0,
            subordinate: 0,
            mem_window: None,
            pref_window: None,
        };
        // Probe the prefetchable window: optional, read-only zero when absent (§3.2.5.9); the
        // probe value (base 0xFFF0 > limit 0) leaves it closed.
        cfg.write32(bdf, reg::PREF_BASE_LIMIT, 0x0000_FFF0);
        let pref = cfg.read32(bdf, reg::PREF_BASE_LIMIT);
        let pref_implemented = pref & 0xFFF0 != 0;
        let pref_is_64 = pref & 0xF == 0x1;
        self.close_windows(bdf, pref_implemented);

        if ctx.depth >= MAX_BRIDGE_DEPTH {
            self.errors.push(PciError::BridgeTooDeep {
                bridge: bdf,
                max_depth: MAX_BRIDGE_DEPTH,
            });
            cfg.write32(bdf, reg::BUS_NUMBERS, bus_numbers(0, 0));
            return (closed, ctx.bus);
        }
        if self.next_bus > u16::from(last_bus) {
            self.errors.push(PciError::BusNumbersExhausted {
                bridge: bdf,
                last_bus,
            });
            cfg.write32(bdf, reg::BUS_NUMBERS, bus_numbers(0, 0));
            return (closed, ctx.bus);
        }
        let secondary = self.next_bus as u8;
        self.next_bus += 1;
        cfg.write32(bdf, reg::BUS_NUMBERS, bus_numbers(secondary, last_bus));

        // Windows start on their granularity; remember where the cursors were so an unused
        // window gives the alignment back.
        let mark32 = self.mem32.as_mut().map(|a| {
            let mark = a.cursor();
            a.align_cursor(BRIDGE_WINDOW_ALIGN);
            (mark, a.cursor())
        });
        let mark64 = self.mem64.as_mut().map(|a| {
            let mark = a.cursor();
            a.align_cursor(BRIDGE_WINDOW_ALIGN);
            (mark, a.cursor())
        });

        let mut upstream = ctx.upstream.clone();
        upstream.push(Hop {
            bridge: bdf,
            secondary,
            secondary_is_pcie: port.is_some_and(PciePortType::secondary_is_pcie),
            pcie_to_pci: port == Some(PciePortType::PcieToPciBridge),
        });
        let mem64_below_4g = self.mem64.as_ref().is_some_and(|a| a.end() <= FOUR_GIB);
        let below = BusContext {
            bus: secondary,
            depth: ctx.depth + 1,
            upstream,
            pref64: ctx.pref64 && pref_implemented && (pref_is_64 || mem64_below_4g),
        };
        let subordinate = self.scan_bus(&below);
        cfg.write32(bdf, reg::BUS_NUMBERS, bus_numbers(secondary, subordinate));

        let mem_window = Self::finish_window(self.mem32.as_mut(), mark32);
        let pref_window = Self::finish_window(self.mem64.as_mut(), mark64);
        if let Some((start, end)) = mem_window {
            cfg.write32(bdf, reg::MEMORY_BASE_LIMIT, window_register(start, end));
        }
        if let Some((start, end)) = pref_window {
            cfg.write32(bdf, reg::PREF_BASE_UPPER, (start >> 32) as u32);
            cfg.write32(bdf, reg::PREF_LIMIT_UPPER, ((end - 1) >> 32) as u32);
            cfg.write32(bdf, reg::PREF_BASE_LIMIT, window_register(start, end));
        }
        let info = BridgeInfo {
            secondary,
            subordinate,
            mem_window,
            pref_window,
        };
        (info, subordinate)
    }

    /// Close all of a bridge's windows (base above limit): I/O, memory, prefetchable.
    fn close_windows(&self, bdf: Bdf, pref_implemented: bool) {
        let cfg = self.config;
        // 16-bit write: the upper half of this dword is the write-1-to-clear secondary status.
        cfg.write16(bdf, reg::IO_BASE_LIMIT, 0x00F0);
        cfg.write32(bdf, reg::IO_UPPER, 0x0000_FFFF);
        cfg.write32(bdf, reg::MEMORY_BASE_LIMIT, 0x0000_FFF0);
        if pref_implemented {
            cfg.write32(bdf, reg::PREF_BASE_LIMIT, 0x0000_FFF0);
            cfg.write32(bdf, reg::PREF_BASE_UPPER, u32::MAX);
            cfg.write32(bdf, reg::PREF_LIMIT_UPPER, 0);
        }
    }

    /// The window `[start, end)` a bridge needs in `allocator`'s space after its subtree was
    /// scanned, or `None` (and the cursor rewound) if nothing was allocated below it.
    fn finish_window(
        allocator: Option<&mut WindowAllocator>,
        mark: Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        let (allocator, (mark, start)) = (allocator?, mark?);
        if allocator.cursor() == start {
            allocator.rewind(mark);
            return None;
        }
        let end = align_up(allocator.cursor(), BRIDGE_WINDOW_ALIGN)?;
        allocator.align_cursor(BRIDGE_WINDOW_ALIGN);
        Some((start, end))
    }
}

/// A memory base/limit register pair for `[start, end)`: address bits [31:20] of the base in
/// bits [15:4], of the (inclusive) limit in bits [31:20] (PCI-to-PCI Bridge Spec 1.2,
/// §3.2.5.8).
fn window_register(start: u64, end: u64) -> u32 {
    let base = ((start >> 16) & 0xFFF0) as u32;
    let limit = (((end - 1) >> 16) & 0xFFF0) as u32;
    base | (limit << 16)
}
