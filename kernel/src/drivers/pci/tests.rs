//! Enumeration against the configuration-space model in `fake.rs`.

use super::{
    config::{ConfigSpace, command, reg},
    device::cap_id,
    enumerate::MAX_BRIDGE_DEPTH,
    fake::{FakeBus, FakeConfig, FakeFunction, edu, host_bridge, qemu_host, root_port},
    *,
};
use crate::platform::{Bdf, IntxPin, IommuMapEntry, Irq, PciSpace, PciWindow, PcieHost, Trigger};
use alloc::{format, string::ToString, vec, vec::Vec};

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(bus, device, function).unwrap()
}

/// Enumeration never sets Bus Master Enable: no write to COMMAND has bit 2.
fn assert_no_bus_master(fake: &FakeConfig) {
    for w in fake.writes() {
        if w.offset == reg::COMMAND {
            assert_eq!(
                w.value & u32::from(command::BUS_MASTER),
                0,
                "enumeration set Bus Master Enable: {w:?}"
            );
        }
    }
}

fn run(fake: &FakeConfig, host: &PcieHost) -> Enumeration {
    let e = enumerate(fake, host);
    assert_no_bus_master(fake);
    for dev in &e.devices {
        assert!(!bus_master_enabled(fake, dev.bdf), "{} has BME", dev.bdf);
    }
    e
}

fn host_with_windows(windows: Vec<PciWindow>) -> PcieHost {
    PcieHost {
        windows,
        ..qemu_host()
    }
}

fn window(space: PciSpace, pci: u64, size: u64) -> PciWindow {
    PciWindow {
        space,
        prefetchable: false,
        pci_addr: pci,
        cpu_addr: pci,
        size,
    }
}

#[test]
fn default_machine_edu_on_the_root_bus() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(0, 0, host_bridge()).with(1, 0, edu()),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.errors, []);
    assert_eq!(e.last_bus, 0);
    assert_eq!(e.devices.len(), 2);

    let hb = e.device(bdf(0, 0, 0)).unwrap();
    assert_eq!(
        (hb.vendor, hb.device, hb.class.describe()),
        (0x1b36, 0x0008, "host bridge")
    );
    assert!(hb.bars.is_empty());
    assert_eq!(hb.command & command::MEMORY, 0, "nothing to decode");

    let dev = e.device(bdf(0, 1, 0)).unwrap();
    assert!(dev.is(0x1234, 0x11e8));
    assert_eq!(
        (dev.revision, dev.header_type, dev.multifunction),
        (0x10, 0, false)
    );
    assert_eq!(dev.class.to_string(), "00ff00");
    assert_eq!(
        dev.bars,
        [Bar {
            index: 0,
            kind: BarKind::Mem32,
            prefetchable: false,
            size: 1 << 20,
            assigned: Some(BarAssignment {
                pci_addr: 0x1000_0000,
                cpu_addr: 0x1000_0000,
                window: WindowKind::Mem32
            }),
        }]
    );
    assert_eq!(fake.read32(dev.bdf, reg::BAR0), 0x1000_0000);
    assert_eq!(dev.command, command::MEMORY);
    assert_eq!(fake.read16(dev.bdf, reg::COMMAND), command::MEMORY);
    assert_eq!(
        (dev.requester_id, dev.stream_id, dev.iommu),
        (0x8, Some(0x8), Some(0x8005))
    );
    assert_eq!(
        dev.intx,
        Some((IntxPin::A, Irq::spi(4, Trigger::LevelHigh)))
    );
    assert_eq!(dev.intx.unwrap().1.intid, 36);
    assert_eq!(
        dev.capabilities,
        [Capability {
            id: cap_id::MSI,
            offset: 0x40
        }]
    );
    assert!(dev.upstream.is_empty() && dev.bridge.is_none());

    assert_eq!(
        dev.to_string(),
        "00:01.0 [1234:11e8] rev 10 class 00ff00 (other), BAR0 mem32 1M @ 0x10000000, SID 0x8, \
         INTA -> SPI 4 (INTID 36, level-high), caps MSI@0x40"
    );
}

#[test]
fn several_edus_get_distinct_bars_sids_and_swizzled_lines() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            .with(0, 0, host_bridge())
            .with(1, 0, edu())
            .with(2, 0, edu())
            .with(5, 0, edu()),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.errors, []);
    let got: Vec<_> = e
        .find(0x1234, 0x11e8)
        .map(|d| {
            (
                d.bdf,
                d.bars[0].cpu_addr().unwrap(),
                d.stream_id.unwrap(),
                d.intx.unwrap().1.intid,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (bdf(0, 1, 0), 0x1000_0000, 0x08, 36),
            (bdf(0, 2, 0), 0x1010_0000, 0x10, 37),
            (bdf(0, 5, 0), 0x1020_0000, 0x28, 36),
        ]
    );
}

#[test]
fn bridges_get_bus_numbers_and_windows_over_what_is_behind_them() {
    let behind = FakeBus::new().with(0, 0, edu().multifunction()).with(
        0,
        1,
        FakeFunction::endpoint(0x1af4, 0x1042, 0x01_00_00)
            .with_bar64(0, 0x4000, false)
            .with_bar64(2, 2 << 20, true)
            .with_interrupt_pin(2),
    );
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            .with(0, 0, host_bridge())
            .with(2, 0, root_port(behind))
            .with(3, 0, root_port(FakeBus::new()))
            .with(
                4,
                0,
                FakeFunction::endpoint(0x1b36, 0x0005, 0x00_FF_00).with_bar64(0, 0x4000, false),
            ),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.errors, []);
    assert_eq!(e.last_bus, 2);
    let order: Vec<_> = e.devices.iter().map(|d| d.bdf).collect();
    assert_eq!(
        order,
        [
            bdf(0, 0, 0),
            bdf(0, 2, 0),
            bdf(1, 0, 0),
            bdf(1, 0, 1),
            bdf(0, 3, 0),
            bdf(0, 4, 0)
        ],
        "a bridge is listed before what is behind it"
    );

    // The root port: buses, windows, COMMAND.
    let rp = e.device(bdf(0, 2, 0)).unwrap();
    assert_eq!(rp.pcie_port, Some(PciePortType::RootPort));
    assert_eq!(
        rp.bridge,
        Some(BridgeInfo {
            secondary: 1,
            subordinate: 1,
            mem_window: Some((0x1000_0000, 0x1020_0000)),
            pref_window: Some((0x80_0000_0000, 0x80_0020_0000)),
        })
    );
    assert_eq!(
        fake.read32(rp.bdf, reg::BUS_NUMBERS) & 0xFF_FFFF,
        0x01_01_00
    );
    assert_eq!(fake.read32(rp.bdf, reg::MEMORY_BASE_LIMIT), 0x1010_1000);
    assert_eq!(fake.read32(rp.bdf, reg::PREF_BASE_LIMIT), 0x0011_0001);
    assert_eq!(fake.read32(rp.bdf, reg::PREF_BASE_UPPER), 0x80);
    assert_eq!(fake.read32(rp.bdf, reg::PREF_LIMIT_UPPER), 0x80);
    assert_eq!(
        fake.read16(rp.bdf, reg::IO_BASE_LIMIT) & 0xF0F0,
        0x00F0,
        "I/O window closed"
    );
    assert_eq!(rp.command, command::MEMORY);

    // Behind it: the edu in the non-prefetchable window, the 64-bit non-prefetchable BAR too
    // (a bridge's non-prefetchable window is 32-bit), the prefetchable one in the 64-bit window.
    let edu = e.device(bdf(1, 0, 0)).unwrap();
    assert!(edu.multifunction);
    assert_eq!(edu.bars[0].cpu_addr(), Some(0x1000_0000));
    assert_eq!(edu.upstream, [bdf(0, 2, 0)]);
    assert_eq!((edu.requester_id, edu.stream_id), (0x100, Some(0x100)));
    // Device 0 pin A below the port in slot 2: INTA at 00:02.0 -> SPI 3 + 2 = SPI 5.
    assert_eq!(
        edu.intx,
        Some((IntxPin::A, Irq::spi(5, Trigger::LevelHigh)))
    );
    let other = e.device(bdf(1, 0, 1)).unwrap();
    let placed: Vec<_> = other
        .bars
        .iter()
        .map(|b| (b.index, b.kind, b.assigned.unwrap().pci_addr))
        .collect();
    assert_eq!(
        placed,
        [
            (0, BarKind::Mem64, 0x1010_0000),
            (2, BarKind::Mem64, 0x80_0000_0000)
        ]
    );
    assert_eq!(fake.read32(other.bdf, reg::BAR0 + 8), 0x0000_000C);
    assert_eq!(fake.read32(other.bdf, reg::BAR0 + 12), 0x80);
    assert_eq!(
        other.intx,
        Some((IntxPin::B, Irq::spi(6, Trigger::LevelHigh)))
    );
    assert_eq!(other.stream_id, Some(0x101));

    // The empty port: a bus number, no windows, no decoding.
    let empty = e.device(bdf(0, 3, 0)).unwrap();
    assert_eq!(
        empty.bridge,
        Some(BridgeInfo {
            secondary: 2,
            subordinate: 2,
            mem_window: None,
            pref_window: None
        })
    );
    assert_eq!(fake.read32(empty.bdf, reg::MEMORY_BASE_LIMIT), 0x0000_FFF0);
    assert_eq!(fake.read32(empty.bdf, reg::PREF_BASE_LIMIT), 0x0001_FFF1);
    assert_eq!(empty.command & command::MEMORY, 0);

    // A 64-bit non-prefetchable BAR on the root bus goes to the 64-bit window.
    let root64 = e.device(bdf(0, 4, 0)).unwrap();
    assert_eq!(root64.bars[0].assigned.unwrap().pci_addr, 0x80_0020_0000);
    assert_eq!(root64.bars[0].assigned.unwrap().window, WindowKind::Mem64);

    let line = rp.to_string();
    assert!(
        line.contains("buses 01-01, mem 0x10000000-0x101fffff, pref 0x8000000000-0x80001fffff"),
        "{line}"
    );
    assert!(line.contains("caps PCIe@0x40"), "{line}");
}

#[test]
fn functions_1_to_7_only_on_multifunction_devices() {
    let ghost = FakeFunction::endpoint(0x1234, 0x0001, 0x00_FF_00);
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            // Single-function device that also answers at function 1: must not be listed twice.
            .with(1, 0, ghost.clone())
            .with(1, 1, ghost.clone())
            // Multi-function device with functions 0 and 3.
            .with(2, 0, ghost.clone().multifunction())
            .with(2, 3, ghost.clone()),
    );
    let e = run(&fake, &qemu_host());
    let found: Vec<_> = e.devices.iter().map(|d| d.bdf).collect();
    assert_eq!(found, [bdf(0, 1, 0), bdf(0, 2, 0), bdf(0, 2, 3)]);
}

#[test]
fn an_exhausted_window_names_the_bar_and_leaves_decoding_off() {
    let host = host_with_windows(vec![window(PciSpace::Mem32, 0x1000_0000, 0x18_0000)]);
    let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, edu()).with(2, 0, edu()));
    let e = run(&fake, &host);
    let err = PciError::WindowExhausted {
        bdf: bdf(0, 2, 0),
        bar: 0,
        size: 1 << 20,
        window: WindowKind::Mem32,
    };
    assert_eq!(e.errors, [err]);
    assert_eq!(
        err.to_string(),
        "PCI 00:02.0: BAR0 (0x100000 bytes) does not fit in the host bridge's 32-bit memory \
         window (window exhausted); the function's memory decoding stays off"
    );
    let second = e.device(bdf(0, 2, 0)).unwrap();
    assert_eq!(second.bars[0].assigned, None);
    assert_eq!(
        fake.read32(second.bdf, reg::BAR0),
        0,
        "restored after sizing"
    );
    assert_eq!(fake.read16(second.bdf, reg::COMMAND) & command::MEMORY, 0);
    assert!(second.to_string().contains("BAR0 mem32 1M unassigned"));
    assert_eq!(fake.read16(bdf(0, 1, 0), reg::COMMAND), command::MEMORY);
}

#[test]
fn no_memory_window_at_all() {
    let host = host_with_windows(vec![]);
    let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, edu()));
    let e = run(&fake, &host);
    assert_eq!(
        e.errors,
        [PciError::NoMemoryWindow {
            bdf: bdf(0, 1, 0),
            bar: 0
        }]
    );
}

#[test]
fn without_a_64_bit_window_64_bit_bars_fall_back_to_the_32_bit_one() {
    let host = host_with_windows(vec![window(PciSpace::Mem32, 0x1000_0000, 0x1000_0000)]);
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(
            1,
            0,
            FakeFunction::endpoint(1, 2, 0).with_bar64(0, 0x8000, true),
        ),
    );
    let e = run(&fake, &host);
    assert_eq!(e.errors, []);
    let bar = e.devices[0].bars[0];
    assert_eq!(
        (bar.kind, bar.assigned.unwrap().pci_addr),
        (BarKind::Mem64, 0x1000_0000)
    );
    assert_eq!(fake.read32(bdf(0, 1, 0), reg::BAR0 + 4), 0, "upper half");
}

#[test]
fn behind_a_bridge_without_a_64_bit_prefetchable_window_prefetchable_bars_stay_below_4_gib() {
    let below = || {
        FakeBus::new().with(
            0,
            0,
            FakeFunction::endpoint(1, 2, 0).with_bar64(0, 2 << 20, true),
        )
    };
    for bridge in [
        root_port(below()).without_prefetchable_window(),
        root_port(below()).with_32bit_prefetchable_window(),
    ] {
        let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, bridge));
        let e = run(&fake, &qemu_host());
        assert_eq!(e.errors, []);
        let bar = e.device(bdf(1, 0, 0)).unwrap().bars[0];
        assert_eq!(bar.assigned.unwrap().window, WindowKind::Mem32);
        let info = e.device(bdf(0, 1, 0)).unwrap().bridge.unwrap();
        assert_eq!(info.mem_window, Some((0x1000_0000, 0x1020_0000)));
        assert_eq!(info.pref_window, None);
    }
}

#[test]
fn bus_numbers_run_out() {
    let host = PcieHost {
        bus_range: (0, 1),
        ..qemu_host()
    };
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            .with(1, 0, root_port(FakeBus::new().with(0, 0, edu())))
            .with(2, 0, root_port(FakeBus::new().with(0, 0, edu()))),
    );
    let e = run(&fake, &host);
    let err = PciError::BusNumbersExhausted {
        bridge: bdf(0, 2, 0),
        last_bus: 1,
    };
    assert_eq!(e.errors, [err]);
    assert!(err.to_string().contains("bus numbers exhausted"));
    assert_eq!(e.find(0x1234, 0x11e8).count(), 1);
    assert_eq!(e.device(bdf(0, 2, 0)).unwrap().bridge.unwrap().secondary, 0);
}

#[test]
fn nesting_is_bounded() {
    let mut bus = FakeBus::new().with(0, 0, edu());
    for _ in 0..MAX_BRIDGE_DEPTH + 2 {
        bus = FakeBus::new().with(0, 0, root_port(bus));
    }
    let fake = FakeConfig::new(0, bus);
    let e = run(&fake, &qemu_host());
    assert_eq!(
        e.errors,
        [PciError::BridgeTooDeep {
            bridge: bdf(MAX_BRIDGE_DEPTH as u8, 0, 0),
            max_depth: MAX_BRIDGE_DEPTH
        }]
    );
    assert_eq!(e.find(0x1234, 0x11e8).count(), 0);
}

#[test]
fn stream_ids_come_from_iommu_map_not_from_the_rid() {
    let host = PcieHost {
        // Only bus 0, shifted: SID = 0x1000 + RID.
        iommu_map: vec![IommuMapEntry {
            rid_base: 0,
            iommu: 0x8005,
            sid_base: 0x1000,
            length: 0x100,
        }],
        ..qemu_host()
    };
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            .with(1, 0, edu())
            .with(2, 0, root_port(FakeBus::new().with(0, 0, edu()))),
    );
    let e = run(&fake, &host);
    assert_eq!(e.device(bdf(0, 1, 0)).unwrap().stream_id, Some(0x1008));
    let err = PciError::NoStreamId {
        bdf: bdf(1, 0, 0),
        rid: 0x100,
    };
    assert_eq!(e.errors, [err]);
    assert_eq!(
        err.to_string(),
        "PCI 01:00.0: no iommu-map entry for RID 0x0100: its DMA has no StreamID"
    );
    let behind = e.device(bdf(1, 0, 0)).unwrap();
    assert_eq!(behind.stream_id, None);
    assert!(behind.to_string().contains("no SID"));
    assert!(
        e.device(bdf(0, 1, 0))
            .unwrap()
            .to_string()
            .contains("SID 0x1008 (RID 0x0008)"),
        "a SID that differs from the RID is shown with the RID"
    );

    // No iommu-map at all: no SID, and no error (DMA simply is not translated).
    let host = PcieHost {
        iommu_map: vec![],
        ..qemu_host()
    };
    let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, edu()));
    let e = run(&fake, &host);
    assert_eq!(e.errors, []);
    assert_eq!(e.devices[0].stream_id, None);
}

#[test]
fn conventional_bridges_take_ownership_of_the_requester_id() {
    // A conventional PCI-to-PCI bridge (no PCIe capability) at 00:05.0 and a PCI Express to
    // PCI bridge at 00:06.0, each with an edu behind it.
    let fake = FakeConfig::new(
        0,
        FakeBus::new()
            .with(
                5,
                0,
                FakeFunction::bridge(0x1b36, 0x0001, FakeBus::new().with(3, 0, edu())),
            )
            .with(
                6,
                0,
                FakeFunction::bridge(0x1b36, 0x000e, FakeBus::new().with(1, 0, edu()))
                    .with_pcie(0x40, 0x7),
            ),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.errors, []);
    let a = e.device(bdf(1, 3, 0)).unwrap();
    assert_eq!(
        (a.requester_id, a.stream_id),
        (0x28, Some(0x28)),
        "the bridge's own RID"
    );
    // Slot 3 pin A swizzles to pin D at 00:05.0: SPI 3 + (5 + 3) mod 4 = SPI 3.
    assert_eq!(a.intx, Some((IntxPin::A, Irq::spi(3, Trigger::LevelHigh))));
    let b = e.device(bdf(2, 1, 0)).unwrap();
    assert_eq!(
        (b.requester_id, b.stream_id),
        (0x200, Some(0x200)),
        "(secondary bus, 0, 0)"
    );
    assert!(
        b.to_string().contains("SID 0x200 (RID 0x0200)") || b.to_string().contains("SID 0x200")
    );
}

#[test]
fn bar_sizing_restores_and_io_bars_are_noted_not_assigned() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(
            1,
            0,
            FakeFunction::endpoint(1, 2, 0)
                .with_io_bar(0, 32)
                .with_bar32(1, 0x1000, true)
                .with_bar32(3, 0x100, false),
        ),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.errors, []);
    let d = &e.devices[0];
    let summary: Vec<_> = d
        .bars
        .iter()
        .map(|b| {
            (
                b.index,
                b.kind,
                b.prefetchable,
                b.size,
                b.assigned.map(|a| a.pci_addr),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, BarKind::Io, false, 32, None),
            (1, BarKind::Mem32, true, 0x1000, Some(0x1000_0000)),
            (3, BarKind::Mem32, false, 0x100, Some(0x1000_1000)),
        ],
        "small BARs are page aligned"
    );
    assert_eq!(fake.read32(d.bdf, reg::BAR0), 0x1, "I/O BAR restored");
    assert_eq!(
        fake.read32(d.bdf, reg::BAR0 + 8),
        0,
        "unimplemented BAR untouched"
    );
    assert_eq!(d.command, command::MEMORY, "I/O decoding never enabled");
    assert!(
        d.to_string()
            .contains("BAR0 io 0x20 unassigned, BAR1 mem32 pref 4K @ 0x10000000")
    );
}

#[test]
fn a_64_bit_bar_in_the_last_slot_is_rejected() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(
            1,
            0,
            FakeFunction::endpoint(1, 2, 0).with_raw(reg::BAR0 + 20, 0x4),
        ),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(
        e.errors,
        [PciError::BadBar {
            bdf: bdf(0, 1, 0),
            bar: 5,
            raw: 0x4
        }]
    );
    assert_eq!(e.devices[0].command & command::MEMORY, 0);
}

#[test]
fn enumeration_clears_bus_mastering_left_on() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(1, 0, edu().with_raw(reg::COMMAND, 0x07)),
    );
    let e = run(&fake, &qemu_host());
    assert_eq!(e.devices[0].command, command::MEMORY);
}

#[test]
fn capabilities_are_walked_and_named() {
    let f = FakeFunction::endpoint(1, 2, 0)
        .with_capability(0x40, cap_id::PM, &[0x03, 0x00])
        .with_capability(0x50, cap_id::MSI, &[0x80, 0x00])
        .with_pcie(0x60, 0x0)
        .with_capability(0x70, cap_id::MSIX, &[0x00, 0x00])
        .with_capability(0x80, 0x09, &[]);
    let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, f));
    let e = run(&fake, &qemu_host());
    let d = &e.devices[0];
    let names: Vec<_> = d.capabilities.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        names,
        [
            "PM@0x40",
            "MSI@0x50",
            "PCIe@0x60",
            "MSI-X@0x70",
            "Vendor@0x80"
        ]
    );
    assert_eq!(d.pcie_port, Some(PciePortType::Endpoint));
    assert_eq!(d.capability(cap_id::MSIX).map(|c| c.offset), Some(0x70));
}

#[test]
fn a_looping_capability_list_is_cut_and_reported() {
    let f = FakeFunction::endpoint(1, 2, 0)
        .with_capability(0x40, cap_id::PM, &[0x03, 0x00])
        .with_capability(0x50, cap_id::MSI, &[0x80, 0x00])
        .with_raw(0x51, 0x40);
    let fake = FakeConfig::new(0, FakeBus::new().with(1, 0, f));
    let e = run(&fake, &qemu_host());
    assert_eq!(e.devices[0].capabilities.len(), 2);
    assert_eq!(
        e.errors,
        [PciError::BadCapabilityList {
            bdf: bdf(0, 1, 0),
            offset: 0x40
        }]
    );
}

#[test]
fn interrupt_pin_problems_are_reported() {
    let host = PcieHost {
        interrupt_map: qemu_host()
            .interrupt_map
            .into_iter()
            .filter(|m| m.child_pin != 2)
            .collect(),
        ..qemu_host()
    };
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(1, 0, edu().with_interrupt_pin(2)).with(
            2,
            0,
            edu().with_interrupt_pin(7),
        ),
    );
    let e = run(&fake, &host);
    let err = PciError::NoIntxRoute {
        bdf: bdf(0, 1, 0),
        pin: IntxPin::B,
        root: bdf(0, 1, 0),
        root_pin: IntxPin::B,
    };
    assert_eq!(
        e.errors,
        [
            err,
            PciError::BadInterruptPin {
                bdf: bdf(0, 2, 0),
                value: 7
            }
        ]
    );
    assert_eq!(
        err.to_string(),
        "PCI 00:01.0: INTB (INTB of 00:01.0 at the root bus) has no interrupt-map entry"
    );
}

#[test]
fn enable_bus_master_covers_the_path_and_disable_only_the_function() {
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(2, 0, root_port(FakeBus::new().with(0, 0, edu()))),
    );
    let e = run(&fake, &qemu_host());
    let dev = e.device(bdf(1, 0, 0)).unwrap();
    // SAFETY: a model; no memory is accessed.
    unsafe { enable_bus_master(&fake, dev.bdf, &dev.upstream) };
    assert!(bus_master_enabled(&fake, dev.bdf));
    assert!(bus_master_enabled(&fake, bdf(0, 2, 0)));
    assert_eq!(
        fake.read16(dev.bdf, reg::COMMAND),
        command::MEMORY | command::BUS_MASTER
    );
    disable_bus_master(&fake, dev.bdf);
    assert!(!bus_master_enabled(&fake, dev.bdf));
    assert!(bus_master_enabled(&fake, bdf(0, 2, 0)));
    assert_eq!(fake.read16(dev.bdf, reg::COMMAND), command::MEMORY);
}

#[test]
fn command_writes_are_16_bit_so_status_error_bits_survive() {
    // STATUS bit 15 (Detected Parity Error, write-1-to-clear) set before enumeration.
    let fake = FakeConfig::new(
        0,
        FakeBus::new().with(1, 0, edu().with_raw(reg::STATUS + 1, 0x80)),
    );
    run(&fake, &qemu_host());
    assert_eq!(fake.read16(bdf(0, 1, 0), reg::STATUS) & 0x8000, 0x8000);
}

#[test]
fn root_bus_number_comes_from_bus_range() {
    let host = PcieHost {
        bus_range: (0x10, 0x1f),
        ..qemu_host()
    };
    let fake = FakeConfig::new(
        0x10,
        FakeBus::new().with(1, 0, root_port(FakeBus::new().with(0, 0, edu()))),
    );
    let e = run(&fake, &host);
    assert_eq!(e.errors, []);
    let info = e.device(bdf(0x10, 1, 0)).unwrap().bridge.unwrap();
    assert_eq!((info.secondary, info.subordinate), (0x11, 0x11));
    assert_eq!(e.device(bdf(0x11, 0, 0)).unwrap().stream_id, Some(0x1100));
}

#[test]
fn error_messages_name_what_is_wrong() {
    let b = bdf(0, 3, 1);
    let cases = [
        (PciError::NoMemoryWindow { bdf: b, bar: 2 }, "00:03.1: BAR2"),
        (
            PciError::BadBar {
                bdf: b,
                bar: 5,
                raw: 0x6,
            },
            "BAR5 has an invalid encoding 0x00000006",
        ),
        (
            PciError::BridgeTooDeep {
                bridge: b,
                max_depth: 16,
            },
            "deeper than 16",
        ),
        (
            PciError::UnsupportedHeader {
                bdf: b,
                header_type: 2,
            },
            "header type 0x2",
        ),
        (
            PciError::BadInterruptPin { bdf: b, value: 9 },
            "0x9, not 0-4",
        ),
        (
            PciError::BadCapabilityList {
                bdf: b,
                offset: 0x3c,
            },
            "pointer 0x3c",
        ),
    ];
    for (err, needle) in cases {
        let msg = format!("{err}");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(msg.contains("00:03.1"), "{msg:?}");
    }
}
