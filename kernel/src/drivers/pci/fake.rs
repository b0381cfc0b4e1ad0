//! A model of a PCI hierarchy behind a host bridge, for host tests: functions with byte-wise
//! write masks (so BAR sizing, read-only fields and hard-wired bits behave as in hardware),
//! write-1-to-clear bits, and bridges that route configuration requests by their programmed
//! secondary/subordinate bus numbers — a bus behind a bridge exists only once the bridge has
//! been numbered, as on real hardware.

use super::config::{ConfigSpace, reg};
use crate::platform::Bdf;
use alloc::{boxed::Box, vec, vec::Vec};
use spin::Mutex;

/// One function's configuration space.
#[derive(Clone)]
pub struct FakeFunction {
    cfg: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    /// The bus behind this function, if it is a bridge.
    secondary: Option<Box<FakeBus>>,
}

/// A bus: functions at (device, function).
#[derive(Clone, Default)]
pub struct FakeBus {
    functions: Vec<(u8, u8, FakeFunction)>,
}

impl FakeBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `function` at `device.function`.
    pub fn with(mut self, device: u8, function: u8, f: FakeFunction) -> Self {
        self.functions.push((device, function, f));
        self
    }
}

impl FakeFunction {
    fn blank(vendor: u16, device: u16, class: u32, revision: u8, header_type: u8) -> Self {
        let mut f = Self {
            cfg: vec![0; 4096],
            wmask: vec![0; 4096],
            w1c: vec![0; 4096],
            secondary: None,
        };
        f.set16(reg::VENDOR_ID, vendor);
        f.set16(reg::DEVICE_ID, device);
        f.set32(reg::REVISION, (class << 8) | u32::from(revision));
        f.cfg[usize::from(reg::HEADER_TYPE)] = header_type;
        // COMMAND: I/O, memory, bus master, INTx disable are writable.
        f.wmask16(reg::COMMAND, 0x0407);
        // STATUS: the error bits [15:11] and [8] are write-1-to-clear.
        f.w1c[usize::from(reg::STATUS) + 1] = 0xF9;
        // Interrupt Line is read-write scratch.
        f.wmask[0x3C] = 0xFF;
        f
    }

    /// A type 0 function.
    pub fn endpoint(vendor: u16, device: u16, class: u32) -> Self {
        Self::blank(vendor, device, class, 0x01, 0x00)
    }

    /// A PCI-to-PCI bridge (type 1) with a 64-bit prefetchable window and `below` behind it.
    pub fn bridge(vendor: u16, device: u16, below: FakeBus) -> Self {
        let mut f = Self::blank(vendor, device, 0x06_04_00, 0x00, 0x01);
        // Primary, secondary, subordinate bus numbers and the secondary latency timer.
        f.wmask32(reg::BUS_NUMBERS, 0xFFFF_FFFF);
        // I/O base/limit: bits [7:4] writable, [3:0] = 1 (32-bit I/O decoding).
        f.cfg[0x1C] = 0x01;
        f.cfg[0x1D] = 0x01;
        f.wmask[0x1C] = 0xF0;
        f.wmask[0x1D] = 0xF0;
        f.wmask32(reg::IO_UPPER, 0xFFFF_FFFF);
        // Secondary status error bits are write-1-to-clear.
        f.w1c[0x1F] = 0xF9;
        // Memory base/limit: bits [15:4].
        f.wmask32(reg::MEMORY_BASE_LIMIT, 0xFFF0_FFF0);
        // Prefetchable: bits [15:4] writable, [3:0] = 1 (64-bit).
        f.set32(reg::PREF_BASE_LIMIT, 0x0001_0001);
        f.wmask32(reg::PREF_BASE_LIMIT, 0xFFF0_FFF0);
        f.wmask32(reg::PREF_BASE_UPPER, 0xFFFF_FFFF);
        f.wmask32(reg::PREF_LIMIT_UPPER, 0xFFFF_FFFF);
        // Bridge control.
        f.wmask16(0x3E, 0x0FFF);
        f.secondary = Some(Box::new(below));
        f
    }

    /// Drop the bridge's prefetchable window (read-only zero, as when not implemented).
    pub fn without_prefetchable_window(mut self) -> Self {
        for off in [
            reg::PREF_BASE_LIMIT,
            reg::PREF_BASE_UPPER,
            reg::PREF_LIMIT_UPPER,
        ] {
            self.set32(off, 0);
            self.wmask32(off, 0);
        }
        self
    }

    /// Make the bridge's prefetchable window 32-bit only.
    pub fn with_32bit_prefetchable_window(mut self) -> Self {
        self.set32(reg::PREF_BASE_LIMIT, 0);
        for off in [reg::PREF_BASE_UPPER, reg::PREF_LIMIT_UPPER] {
            self.wmask32(off, 0);
        }
        self
    }

    /// Set the multi-function bit of the header type.
    pub fn multifunction(mut self) -> Self {
        self.cfg[usize::from(reg::HEADER_TYPE)] |= 0x80;
        self
    }

    /// A 32-bit memory BAR of `size` bytes in slot `index`.
    pub fn with_bar32(mut self, index: u8, size: u32, prefetchable: bool) -> Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        self.set32(off, if prefetchable { 0x8 } else { 0 });
        self.wmask32(off, !(size - 1) & !0xF);
        self
    }

    /// A 64-bit memory BAR of `size` bytes in slots `index` and `index + 1`.
    pub fn with_bar64(mut self, index: u8, size: u64, prefetchable: bool) -> Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        let mask = !(size - 1);
        self.set32(off, 0x4 | if prefetchable { 0x8 } else { 0 });
        self.wmask32(off, (mask as u32) & !0xF);
        self.wmask32(off + 4, (mask >> 32) as u32);
        self
    }

    /// An I/O BAR of `size` bytes in slot `index`.
    pub fn with_io_bar(mut self, index: u8, size: u32) -> Self {
        let off = reg::BAR0 + 4 * u16::from(index);
        self.set32(off, 0x1);
        self.wmask32(off, !(size - 1) & !0x3);
        self
    }

    /// Set the Interrupt Pin register.
    pub fn with_interrupt_pin(mut self, pin: u8) -> Self {
        self.cfg[usize::from(reg::INTERRUPT_PIN)] = pin;
        self
    }

    /// Append a capability with `id` at `offset` (with `body` after the two header bytes) to the
    /// capabilities list.
    pub fn with_capability(mut self, offset: u8, id: u8, body: &[u8]) -> Self {
        let off = usize::from(offset);
        self.cfg[off] = id;
        self.cfg[off + 1] = 0;
        self.cfg[off + 2..off + 2 + body.len()].copy_from_slice(body);
        // Link it at the end of the list.
        self.cfg[usize::from(reg::STATUS)] |= 0x10;
        let mut link = usize::from(reg::CAP_PTR);
        for _ in 0..48 {
            let next = usize::from(self.cfg[link]);
            if next == 0 {
                break;
            }
            link = next + 1;
        }
        self.cfg[link] = offset;
        self
    }

    /// A PCI Express capability at `offset` with Device/Port Type `port_type`.
    pub fn with_pcie(self, offset: u8, port_type: u8) -> Self {
        // PCI Express Capabilities register: version 2, Device/Port Type in bits [7:4].
        self.with_capability(offset, 0x10, &[0x02 | (port_type << 4), 0x00])
    }

    /// Raw write of a capability's next pointer, to build broken lists.
    pub fn with_raw(mut self, offset: u16, byte: u8) -> Self {
        self.cfg[usize::from(offset)] = byte;
        self
    }

    fn set16(&mut self, off: u16, v: u16) {
        let o = usize::from(off);
        self.cfg[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, off: u16, v: u32) {
        let o = usize::from(off);
        self.cfg[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn wmask16(&mut self, off: u16, m: u16) {
        let o = usize::from(off);
        self.wmask[o..o + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn wmask32(&mut self, off: u16, m: u32) {
        let o = usize::from(off);
        self.wmask[o..o + 4].copy_from_slice(&m.to_le_bytes());
    }

    fn read(&self, off: u16, len: usize) -> u32 {
        let o = usize::from(off);
        let mut bytes = [0u8; 4];
        bytes[..len].copy_from_slice(&self.cfg[o..o + len]);
        u32::from_le_bytes(bytes)
    }

    fn write(&mut self, off: u16, len: usize, value: u32) {
        let o = usize::from(off);
        for (i, byte) in value.to_le_bytes().iter().take(len).enumerate() {
            let (m, c) = (self.wmask[o + i], self.w1c[o + i]);
            let old = self.cfg[o + i];
            self.cfg[o + i] = ((old & !m) | (byte & m)) & !(byte & c);
        }
    }

    fn bus_numbers(&self) -> (u8, u8) {
        (self.cfg[0x19], self.cfg[0x1A])
    }
}

/// One logged configuration write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigWrite {
    /// Target.
    pub bdf: Bdf,
    /// Offset.
    pub offset: u16,
    /// Access size in bytes.
    pub size: u8,
    /// Value written.
    pub value: u32,
}

/// A host bridge's configuration space: the root bus (numbered `root_bus`) and everything
/// reachable through programmed bridges.
pub struct FakeConfig {
    root_bus: u8,
    root: Mutex<FakeBus>,
    writes: Mutex<Vec<ConfigWrite>>,
}

impl FakeConfig {
    /// A hierarchy whose root bus is numbered `root_bus`.
    pub fn new(root_bus: u8, root: FakeBus) -> Self {
        Self {
            root_bus,
            root: Mutex::new(root),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// Every configuration write so far, in order.
    pub fn writes(&self) -> Vec<ConfigWrite> {
        self.writes.lock().clone()
    }

    fn with_function<T>(&self, bdf: Bdf, f: impl FnOnce(&mut FakeFunction) -> T) -> Option<T> {
        let mut root = self.root.lock();
        let func = find(&mut root, self.root_bus, bdf, 0)?;
        Some(f(func))
    }
}

/// Route a configuration request for `bdf` arriving on `bus` (numbered `number`): type 0 if it
/// is for this bus, else down the bridge whose secondary..=subordinate range claims it.
fn find(bus: &mut FakeBus, number: u8, bdf: Bdf, depth: usize) -> Option<&mut FakeFunction> {
    if depth > 64 {
        return None;
    }
    if bdf.bus == number {
        return bus
            .functions
            .iter_mut()
            .find(|(d, f, _)| *d == bdf.device && *f == bdf.function)
            .map(|(_, _, func)| func);
    }
    for (_, _, func) in bus.functions.iter_mut() {
        let (secondary, subordinate) = func.bus_numbers();
        if func.secondary.is_some()
            && secondary != 0
            && secondary > number
            && (secondary..=subordinate).contains(&bdf.bus)
        {
            let below = func.secondary.as_deref_mut()?;
            return find(below, secondary, bdf, depth + 1);
        }
    }
    None
}

impl ConfigSpace for FakeConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        assert!(
            offset.is_multiple_of(4) && offset < 4096,
            "bad config read offset {offset:#x}"
        );
        self.with_function(bdf, |f| f.read(offset, 4))
            .unwrap_or(u32::MAX)
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        assert!(
            offset.is_multiple_of(4) && offset < 4096,
            "bad config write offset {offset:#x}"
        );
        self.writes.lock().push(ConfigWrite {
            bdf,
            offset,
            size: 4,
            value,
        });
        self.with_function(bdf, |f| f.write(offset, 4, value));
    }

    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        assert!(
            offset.is_multiple_of(2) && offset < 4096,
            "bad config write offset {offset:#x}"
        );
        self.writes.lock().push(ConfigWrite {
            bdf,
            offset,
            size: 2,
            value: u32::from(value),
        });
        self.with_function(bdf, |f| f.write(offset, 2, u32::from(value)));
    }
}

/// The default machine's host bridge, decoded by the platform code from the device tree QEMU
/// 7.2 generates for `-M virt,iommu=smmuv3,gic-version=3` (`kernel/testdata`): ECAM buses
/// 0-255, 32-bit window at 0x1000_0000, 64-bit window at 0x80_0000_0000, identity `iommu-map`,
/// INTx of slot s pin p on SPI 3 + (s + p - 1) mod 4.
pub fn qemu_host() -> crate::platform::PcieHost {
    static DTB: &[u8] = include_bytes!("../../../testdata/virt-gicv3-smmuv3.dtb");
    crate::platform::Platform::discover(DTB)
        .expect("testdata DTB decodes")
        .pcie
        .expect("the default machine has a PCIe host")
}

/// QEMU's edu (1234:11e8, class 00ff00, revision 0x10): BAR0 32-bit 1 MiB, INTA, an MSI
/// capability at 0x40.
pub fn edu() -> FakeFunction {
    let mut f = FakeFunction::endpoint(0x1234, 0x11e8, 0x00_FF_00)
        .with_bar32(0, 1 << 20, false)
        .with_interrupt_pin(1)
        .with_capability(0x40, 0x05, &[0x80, 0x00]);
    f.cfg[usize::from(reg::REVISION)] = 0x10;
    f
}

/// QEMU's host bridge function at 00:00.0 (1b36:0008, class 060000, no BARs).
pub fn host_bridge() -> FakeFunction {
    FakeFunction::endpoint(0x1b36, 0x0008, 0x06_00_00)
}

/// QEMU's `pcie-root-port` (1b36:000c) with a PCI Express capability (Root Port) and INTA.
pub fn root_port(below: FakeBus) -> FakeFunction {
    FakeFunction::bridge(0x1b36, 0x000c, below)
        .with_pcie(0x40, 0x4)
        .with_interrupt_pin(1)
}
