//! Host tests: the checked-in QEMU 7.2 DTBs (values cross-checked with `dtc -I dtb -O dts`),
//! those DTBs with nodes or properties NOP'd out, and small trees built by [`N`] for the cases
//! QEMU does not produce.

use super::*;
use alloc::{borrow::ToOwned, format, string::ToString, vec, vec::Vec};

static GICV3_SMMUV3: &[u8] = include_bytes!("../../testdata/virt-gicv3-smmuv3.dtb");
static GICV2_SMMUV3: &[u8] = include_bytes!("../../testdata/virt-gicv2-smmuv3.dtb");
static GICV3_NOSMMU: &[u8] = include_bytes!("../../testdata/virt-gicv3-nosmmu.dtb");

const fn region(base: u64, size: u64) -> Region {
    Region { base, size }
}

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(bus, device, function).unwrap()
}

fn discover(dtb: &[u8]) -> Platform {
    Platform::discover(dtb).unwrap_or_else(|e| panic!("discovery failed: {e}"))
}

fn malformed(node: &str, property: &'static str) -> impl Fn(&PlatformError) -> bool {
    let node = node.to_owned();
    move |e| {
        matches!(e, PlatformError::Malformed { node: n, property: p, .. }
            if *n == node && *p == property)
    }
}

// ---------------------------------------------------------------------------------------------
// The default machine: -M virt,iommu=smmuv3,gic-version=3 -smp 2 -m 1G

#[test]
fn default_machine_memory_chosen_and_dtb() {
    let p = discover(GICV3_SMMUV3);
    assert_eq!(p.dtb_size, 0x1f59);
    assert_eq!(p.dtb_size, GICV3_SMMUV3.len());
    assert_eq!(p.memory, [region(0x4000_0000, 1 << 30)]);
    assert!(p.reserved.is_empty());
    assert_eq!(p.bootargs, "");
    assert_eq!(p.stdout_path.as_deref(), Some("/pl011@9000000"));
}

#[test]
fn default_machine_uart_gic_timer() {
    let p = discover(GICV3_SMMUV3);
    assert_eq!(p.uart.path, "/pl011@9000000");
    assert_eq!(p.uart.reg, region(0x0900_0000, 0x1000));
    assert_eq!(p.uart.irq, Irq::spi(1, Trigger::LevelHigh));
    assert_eq!(p.uart.irq.intid, 33);

    assert_eq!(p.gic.version(), 3);
    assert_eq!(p.gic.path, "/intc@8000000");
    assert_eq!(p.gic.phandle, Some(0x8003));
    assert_eq!((p.gic.interrupt_cells, p.gic.address_cells), (3, 2));
    assert_eq!(
        p.gic.regs,
        GicRegs::V3 {
            gicd: region(0x0800_0000, 0x1_0000),
            gicr: vec![region(0x080A_0000, 0xf6_0000)],
            its: Some(region(0x0808_0000, 0x2_0000)),
        }
    );

    let t = &p.timer;
    assert_eq!(t.secure_phys, Irq::ppi(13, Trigger::LevelHigh));
    assert_eq!(t.nonsecure_phys, Irq::ppi(14, Trigger::LevelHigh));
    assert_eq!(t.virt, Irq::ppi(11, Trigger::LevelHigh));
    assert_eq!(t.hyp_phys, Irq::ppi(10, Trigger::LevelHigh));
    assert_eq!(
        [
            t.secure_phys.intid,
            t.nonsecure_phys.intid,
            t.virt.intid,
            t.hyp_phys.intid
        ],
        [29, 30, 27, 26]
    );
    assert_eq!((t.hyp_virt, t.clock_frequency), (None, None));
}

#[test]
fn default_machine_psci_and_cpus() {
    let p = discover(GICV3_SMMUV3);
    assert_eq!(
        p.psci,
        Psci {
            path: "/psci".into(),
            conduit: Conduit::Hvc,
            version: PsciVersion::V1_0,
            cpu_on: 0xC400_0003,
            cpu_off: Some(0x8400_0002),
            system_off: Some(0x8400_0008),
        }
    );
    let mpidrs: Vec<u64> = p.cpus.iter().map(|c| c.mpidr).collect();
    assert_eq!(mpidrs, [0, 1]);
    assert!(
        p.cpus
            .iter()
            .all(|c| c.enable_method == Some(EnableMethod::Psci))
    );
    assert_eq!(p.cpus[1].path, "/cpus/cpu@1");
}

#[test]
fn default_machine_smmu() {
    let p = discover(GICV3_SMMUV3);
    let s = p.smmu.as_ref().expect("the default machine has an SMMUv3");
    assert_eq!(s.path, "/smmuv3@9050000");
    assert_eq!(s.reg, region(0x0905_0000, 0x2_0000));
    assert_eq!(
        (s.iommu_cells, s.dma_coherent, s.phandle),
        (1, true, Some(0x8005))
    );
    let edge = Trigger::EdgeRising;
    assert_eq!(s.irqs.eventq, Some(Irq::spi(74, edge)));
    assert_eq!(s.irqs.eventq.unwrap().intid, 106);
    assert_eq!(s.irqs.priq, Some(Irq::spi(75, edge)));
    assert_eq!(s.irqs.cmdq_sync, Some(Irq::spi(76, edge)));
    assert_eq!(s.irqs.gerror, Some(Irq::spi(77, edge)));
    assert_eq!(s.irqs.gerror.unwrap().intid, 109);
    assert!(s.irqs.gerror.unwrap().trigger.is_edge());
    assert_eq!(s.irqs.combined, None);
}

#[test]
fn default_machine_pcie_ecam_and_windows() {
    let p = discover(GICV3_SMMUV3);
    let pci = p.pcie.as_ref().expect("PCIe host");
    assert_eq!(pci.path, "/pcie@10000000");
    assert_eq!(pci.ecam, region(0x40_1000_0000, 0x1000_0000));
    assert_eq!(
        (pci.bus_range, pci.domain, pci.dma_coherent),
        ((0, 255), Some(0), true)
    );
    assert_eq!(
        pci.windows,
        [
            PciWindow {
                space: PciSpace::Io,
                prefetchable: false,
                pci_addr: 0,
                cpu_addr: 0x3eff_0000,
                size: 0x1_0000
            },
            PciWindow {
                space: PciSpace::Mem32,
                prefetchable: false,
                pci_addr: 0x1000_0000,
                cpu_addr: 0x1000_0000,
                size: 0x2eff_0000,
            },
            PciWindow {
                space: PciSpace::Mem64,
                prefetchable: false,
                pci_addr: 0x80_0000_0000,
                cpu_addr: 0x80_0000_0000,
                size: 0x80_0000_0000,
            },
        ]
    );
    assert_eq!(
        pci.window(PciSpace::Mem32).unwrap().cpu_region(),
        region(0x1000_0000, 0x2eff_0000)
    );
    assert_eq!(
        pci.window(PciSpace::Mem64).unwrap().cpu_addr,
        0x80_0000_0000
    );
    assert_eq!(
        pci.config_space(bdf(0, 1, 0)),
        Some(region(0x40_1000_8000, 0x1000))
    );
    assert_eq!(
        pci.config_space(bdf(255, 31, 7)),
        Some(region(0x40_1fff_f000, 0x1000))
    );
}

#[test]
fn default_machine_rid_to_sid_is_the_identity_from_iommu_map() {
    let p = discover(GICV3_SMMUV3);
    let pci = p.pcie.as_ref().unwrap();
    assert_eq!(
        pci.iommu_map,
        [IommuMapEntry {
            rid_base: 0,
            iommu: 0x8005,
            sid_base: 0,
            length: 0x1_0000
        }]
    );
    assert_eq!(pci.iommu_map_mask, None);
    for rid in 0..=u16::MAX {
        assert_eq!(
            pci.rid_to_sid(rid),
            Some(StreamMapping {
                iommu: 0x8005,
                sid: u32::from(rid)
            })
        );
    }
    assert_eq!(p.smmu_stream_id(bdf(0, 1, 0)), Some(8));
    assert_eq!(p.smmu_stream_id(bdf(3, 0, 1)), Some(0x301));
}

#[test]
fn default_machine_intx_routes() {
    let p = discover(GICV3_SMMUV3);
    let pci = p.pcie.as_ref().unwrap();
    assert_eq!(pci.interrupt_map_mask, [0x1800, 0, 0, 7]);
    assert_eq!(pci.interrupt_map.len(), 16);
    assert!(pci.interrupt_map.iter().all(|e| e.parent == 0x8003));
    let slot1_a = pci.intx_route(bdf(0, 1, 0), IntxPin::A).unwrap();
    assert_eq!(slot1_a, Irq::spi(4, Trigger::LevelHigh));
    assert_eq!(slot1_a.intid, 36);
    // QEMU's table is the standard swizzle onto SPIs 3..=6: slot s, pin p -> SPI 3 + (s + p - 1)
    // % 4. The mask keeps only device bits [12:11] and the pin, so bus, function and slot / 4
    // are ignored.
    let pins = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];
    for device in 0..32u8 {
        for (k, &pin) in pins.iter().enumerate() {
            let want = Irq::spi(3 + (u32::from(device) + k as u32) % 4, Trigger::LevelHigh);
            for (bus, function) in [(0, 0), (0, 7), (5, 3)] {
                assert_eq!(
                    pci.intx_route(bdf(bus, device, function), pin),
                    Some(want),
                    "{device} {pin:?}"
                );
            }
        }
    }
}

#[test]
fn default_machine_summary_names_every_device() {
    let p = discover(GICV3_SMMUV3);
    let text = p.to_string();
    for needle in [
        "memory: 0x40000000 size 0x40000000",
        "PL011 UART /pl011@9000000: 0x9000000 size 0x1000, SPI 1 (INTID 33, level-high)",
        "GICv3 /intc@8000000: GICD 0x8000000 size 0x10000, GICR 0x80a0000 size 0xf60000",
        "SMMUv3 /smmuv3@9050000: 0x9050000 size 0x20000, eventq SPI 74 (INTID 106, edge-rising)",
        "gerror SPI 77 (INTID 109, edge-rising)",
        "PCIe ECAM /pcie@10000000: 0x4010000000 size 0x10000000, buses 0-255",
        "PSCI 1.0 /psci: via hvc, CPU_ON 0xc4000003, SYSTEM_OFF 0x84000008",
        "CPU /cpus/cpu@1: MPIDR 0x1, enable-method psci",
    ] {
        assert!(text.contains(needle), "summary lacks {needle:?}:\n{text}");
    }
    assert_eq!(text.lines().count(), 11);
    p.log_summary();
}

// ---------------------------------------------------------------------------------------------
// The GICv2 variant: -M virt,iommu=smmuv3,gic-version=2 -smp 4 -m 512M

#[test]
fn gicv2_machine() {
    let p = discover(GICV2_SMMUV3);
    assert_eq!(p.memory, [region(0x4000_0000, 512 << 20)]);
    assert_eq!(p.gic.version(), 2);
    assert_eq!(p.gic.phandle, Some(0x8005));
    assert_eq!(
        p.gic.regs,
        GicRegs::V2 {
            gicd: region(0x0800_0000, 0x1_0000),
            gicc: region(0x0801_0000, 0x1_0000),
            v2m: Some(region(0x0802_0000, 0x1000)),
        }
    );
    assert_eq!(p.cpus.len(), 4);
    assert_eq!(
        p.cpus.iter().map(|c| c.mpidr).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    // The GICv2 PPI flags carry a CPU mask (0xf04); the trigger is still level-high.
    assert_eq!(p.timer.nonsecure_phys, Irq::ppi(14, Trigger::LevelHigh));
    let smmu = p.smmu.as_ref().unwrap();
    assert_eq!(
        (smmu.reg, smmu.phandle),
        (region(0x0905_0000, 0x2_0000), Some(0x8007))
    );
    let pci = p.pcie.as_ref().unwrap();
    assert_eq!(pci.iommu_map[0].iommu, 0x8007);
    assert_eq!(p.smmu_stream_id(bdf(0, 2, 0)), Some(0x10));
    assert_eq!(
        pci.intx_route(bdf(0, 1, 0), IntxPin::A),
        Some(Irq::spi(4, Trigger::LevelHigh))
    );
    assert!(
        p.to_string().contains(
            "GICv2 /intc@8000000: GICD 0x8000000 size 0x10000, GICC 0x8010000 size 0x10000"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// The no-SMMU variant: -M virt,gic-version=3 -smp 1 -m 256M

#[test]
fn nosmmu_machine() {
    let p = discover(GICV3_NOSMMU);
    assert_eq!(p.smmu, None);
    assert_eq!(p.memory, [region(0x4000_0000, 256 << 20)]);
    assert_eq!(p.cpus.len(), 1);
    assert_eq!(
        p.cpus[0].enable_method, None,
        "QEMU omits enable-method with one CPU"
    );
    let pci = p.pcie.as_ref().expect("the PCIe host is still there");
    assert!(pci.iommu_map.is_empty());
    assert_eq!(pci.rid_to_sid(8), None);
    assert_eq!(p.smmu_stream_id(bdf(0, 1, 0)), None);
    assert!(
        p.to_string()
            .contains("no SMMU (no enabled node with compatible \"arm,smmu-v3\")")
    );
    assert!(p.to_string().contains("no iommu-map"));
}

// ---------------------------------------------------------------------------------------------
// Real DTBs with a node or property removed. Removal overwrites it with FDT_NOP tokens, which is
// how libfdt's fdt_nop_node() does it; this also exercises the NOP compaction that keeps the
// `fdt` crate from mis-walking them.

/// Byte range of node `path` (BEGIN_NODE..=END_NODE), or of its property `prop`, in `dtb`.
fn locate(dtb: &[u8], path: &str, prop: Option<&str>) -> core::ops::Range<usize> {
    let word = |o: usize| u32::from_be_bytes(dtb[o..o + 4].try_into().unwrap()) as usize;
    let (off_struct, off_strings) = (word(8), word(12));
    let mut stack: Vec<String> = Vec::new();
    let mut start = None;
    let mut pos = off_struct;
    loop {
        match word(pos) {
            1 => {
                let name_len = dtb[pos + 4..].iter().position(|&b| b == 0).unwrap();
                let name = core::str::from_utf8(&dtb[pos + 4..pos + 4 + name_len]).unwrap();
                let full = match stack.last() {
                    None => "/".to_string(),
                    Some(p) if p == "/" => format!("/{name}"),
                    Some(p) => format!("{p}/{name}"),
                };
                if full == path && prop.is_none() {
                    start = Some((pos, stack.len()));
                }
                stack.push(full);
                pos = (pos + 4 + name_len + 1 + 3) & !3;
            }
            2 => {
                stack.pop();
                pos += 4;
                if let Some((s, depth)) = start
                    && depth == stack.len()
                {
                    return s..pos;
                }
            }
            3 => {
                let len = word(pos + 4);
                let name_off = off_strings + word(pos + 8);
                let name_len = dtb[name_off..].iter().position(|&b| b == 0).unwrap();
                let name = core::str::from_utf8(&dtb[name_off..name_off + name_len]).unwrap();
                let end = (pos + 12 + len + 3) & !3;
                if stack.last().map(String::as_str) == Some(path) && prop == Some(name) {
                    return pos..end;
                }
                pos = end;
            }
            4 => pos += 4,
            _ => panic!("{path} {prop:?} not found"),
        }
    }
}

fn nop_out(dtb: &[u8], path: &str, prop: Option<&str>) -> Vec<u8> {
    let mut out = dtb.to_vec();
    for word in out[locate(dtb, path, prop)].chunks_exact_mut(4) {
        word.copy_from_slice(&4u32.to_be_bytes());
    }
    out
}

fn without_node(path: &str) -> Result<Platform, PlatformError> {
    Platform::discover(&nop_out(GICV3_SMMUV3, path, None))
}

fn without_prop(path: &str, prop: &str) -> Result<Platform, PlatformError> {
    Platform::discover(&nop_out(GICV3_SMMUV3, path, Some(prop)))
}

#[test]
fn missing_required_nodes_are_named() {
    for (path, want) in [
        ("/psci", missing::PSCI),
        ("/pl011@9000000", missing::UART),
        ("/intc@8000000", missing::GIC),
        ("/timer", missing::TIMER),
        ("/cpus", missing::CPUS),
        ("/memory@40000000", missing::MEMORY),
    ] {
        assert_eq!(
            without_node(path),
            Err(PlatformError::Missing(want)),
            "removing {path}"
        );
    }
    let e = without_node("/cpus/cpu@0")
        .and_then(|_| Platform::discover(&nop_out(GICV3_NOSMMU, "/cpus/cpu@0", None)));
    assert_eq!(e, Err(PlatformError::Missing(missing::CPU)));
    assert_eq!(
        format!("{}", PlatformError::Missing(missing::PSCI)),
        "device tree has no PSCI (compatible \"arm,psci-1.0\", \"arm,psci-0.2\" or \"arm,psci\")"
    );
}

#[test]
fn missing_required_properties_are_named() {
    let missing_prop = |node: &str, property| PlatformError::MissingProperty {
        node: node.into(),
        property,
    };
    assert_eq!(
        without_prop("/psci", "method"),
        Err(missing_prop("/psci", "method"))
    );
    assert_eq!(
        without_prop("/pl011@9000000", "reg"),
        Err(missing_prop("/pl011@9000000", "reg"))
    );
    assert_eq!(
        without_prop("/pl011@9000000", "interrupts"),
        Err(missing_prop("/pl011@9000000", "interrupts"))
    );
    assert_eq!(
        without_prop("/intc@8000000", "#interrupt-cells"),
        Err(missing_prop("/intc@8000000", "#interrupt-cells"))
    );
    assert_eq!(
        without_prop("/smmuv3@9050000", "interrupt-names"),
        Err(missing_prop("/smmuv3@9050000", "interrupt-names"))
    );
    assert_eq!(
        without_prop("/smmuv3@9050000", "#iommu-cells"),
        Err(missing_prop("/smmuv3@9050000", "#iommu-cells"))
    );
    assert_eq!(
        format!("{}", missing_prop("/psci", "method")),
        "device tree node /psci has no `method` property"
    );
}

#[test]
fn optional_items_may_be_absent() {
    let p = without_node("/chosen").unwrap();
    assert_eq!((p.bootargs.as_str(), p.stdout_path), ("", None));
    assert_eq!(
        p.uart.reg.base, 0x0900_0000,
        "found by compatible without stdout-path"
    );

    let p = without_node("/pcie@10000000").unwrap();
    assert_eq!(p.pcie, None);
    assert!(p.smmu.is_some());
    assert_eq!(p.smmu_stream_id(bdf(0, 1, 0)), None);

    let p = without_node("/intc@8000000/its@8080000").unwrap();
    assert!(matches!(p.gic.regs, GicRegs::V3 { its: None, .. }));
}

#[test]
fn iommu_map_pointing_at_a_removed_smmu_is_malformed() {
    let e = without_node("/smmuv3@9050000").unwrap_err();
    assert!(malformed("/pcie@10000000", "iommu-map")(&e), "{e:?}");
    assert_eq!(
        e.to_string(),
        "device tree property /pcie@10000000 `iommu-map` is malformed: phandle does not match any node"
    );
}

#[test]
fn nops_between_properties_and_siblings_change_nothing() {
    let full = discover(GICV3_SMMUV3);
    let mut dtb = nop_out(GICV3_SMMUV3, "/pcie@10000000", Some("msi-map"));
    dtb = nop_out(&dtb, "/pl031@9010000", None);
    dtb = nop_out(&dtb, "/platform-bus@c000000", None);
    // A NOP'd first child: fdt 0.1.5 alone panics ("bad node") skipping over /cpus after this.
    dtb = nop_out(&dtb, "/cpus/cpu-map", None);
    dtb = nop_out(&dtb, "/smmuv3@9050000", Some("compatible"));
    let p = discover(&dtb);
    assert_eq!(
        p.smmu, None,
        "without `compatible` the node is not an SMMU, whatever its name"
    );
    assert_eq!(
        Platform {
            smmu: full.smmu.clone(),
            ..p
        },
        full
    );
}

#[test]
fn broken_containers_are_errors_not_panics() {
    let invalid = |dtb: &[u8]| match Platform::discover(dtb) {
        Err(PlatformError::InvalidDtb { offset, why }) => (offset, why),
        other => panic!("expected InvalidDtb, got {other:?}"),
    };
    assert_eq!(invalid(&[]).0, 0);
    assert_eq!(invalid(&GICV3_SMMUV3[..39]).0, 0);
    let mut bad_magic = GICV3_SMMUV3.to_vec();
    bad_magic[0] = 0;
    assert_eq!(invalid(&bad_magic), (0, "bad magic (expected 0xd00dfeed)"));
    assert_eq!(
        invalid(&GICV3_SMMUV3[..GICV3_SMMUV3.len() - 1]).0,
        4,
        "shorter than totalsize"
    );
    // A property whose length runs off the end of the structure block.
    let mut long_prop = GICV3_SMMUV3.to_vec();
    let at = locate(GICV3_SMMUV3, "/psci", Some("method")).start;
    long_prop[at + 4..at + 8].copy_from_slice(&0x10_0000u32.to_be_bytes());
    assert_eq!(
        invalid(&long_prop),
        (at, "property value runs past the structure block")
    );
    // A property name offset outside the strings block.
    let mut bad_name = GICV3_SMMUV3.to_vec();
    bad_name[at + 8..at + 12].copy_from_slice(&0xffffu32.to_be_bytes());
    assert_eq!(invalid(&bad_name).0, at);
    // An unknown token.
    let mut bad_token = GICV3_SMMUV3.to_vec();
    bad_token[at..at + 4].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(invalid(&bad_token), (at, "unknown structure-block token"));
    assert_eq!(dtb_total_size(GICV3_SMMUV3), Ok(0x1f59));
    assert!(dtb_total_size(&bad_magic).is_err());
}

#[test]
fn corrupted_bytes_never_panic() {
    // Flip bits across the whole blob: discovery may succeed or fail, but must return.
    for dtb in [GICV3_SMMUV3, GICV2_SMMUV3] {
        for at in (0..dtb.len()).step_by(3) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = dtb.to_vec();
                bad[at] ^= flip;
                let _ = Platform::discover(&bad);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic trees, for what QEMU 7.2 does not produce.

/// A device-tree node for building test DTBs.
#[derive(Clone)]
struct N {
    name: String,
    props: Vec<(String, Vec<u8>)>,
    children: Vec<N>,
}

impl N {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            props: Vec::new(),
            children: Vec::new(),
        }
    }

    fn raw(mut self, name: &str, value: Vec<u8>) -> Self {
        self.props.retain(|(n, _)| n != name);
        self.props.push((name.into(), value));
        self
    }

    fn cells(self, name: &str, cells: &[u32]) -> Self {
        self.raw(name, cells.iter().flat_map(|c| c.to_be_bytes()).collect())
    }

    fn strs(self, name: &str, strings: &[&str]) -> Self {
        self.raw(
            name,
            strings.iter().flat_map(|s| s.bytes().chain([0])).collect(),
        )
    }

    fn flag(self, name: &str) -> Self {
        self.raw(name, Vec::new())
    }

    fn child(mut self, child: N) -> Self {
        self.children.retain(|c| c.name != child.name);
        self.children.push(child);
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.children.retain(|c| c.name != name);
        self
    }

    /// The node at `path` below this one (`"a/b"`).
    fn at(&mut self, path: &str) -> &mut N {
        path.split('/')
            .filter(|s| !s.is_empty())
            .fold(self, |n, part| {
                n.children
                    .iter_mut()
                    .find(|c| c.name == part)
                    .unwrap_or_else(|| panic!("no {part}"))
            })
    }

    /// Edits the node at `path` in place.
    fn edit(mut self, path: &str, f: impl FnOnce(N) -> N) -> Self {
        let node = self.at(path);
        *node = f(node.clone());
        self
    }

    /// Serialises the tree as a version-17 DTB with the given `/memreserve/` entries.
    fn dtb(&self, memreserve: &[(u64, u64)]) -> Vec<u8> {
        fn emit(n: &N, structs: &mut Vec<u8>, strings: &mut Vec<u8>) {
            let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(4), 0);
            structs.extend(1u32.to_be_bytes());
            structs.extend(n.name.bytes().chain([0]));
            pad(structs);
            for (name, value) in &n.props {
                let needle: Vec<u8> = name.bytes().chain([0]).collect();
                let off = strings
                    .windows(needle.len())
                    .position(|w| w == needle)
                    .unwrap_or_else(|| {
                        strings.extend(&needle);
                        strings.len() - needle.len()
                    });
                structs.extend(3u32.to_be_bytes());
                structs.extend((value.len() as u32).to_be_bytes());
                structs.extend((off as u32).to_be_bytes());
                structs.extend(value);
                pad(structs);
            }
            for c in &n.children {
                emit(c, structs, strings);
            }
            structs.extend(2u32.to_be_bytes());
        }
        let (mut structs, mut strings) = (Vec::new(), Vec::new());
        emit(self, &mut structs, &mut strings);
        structs.extend(9u32.to_be_bytes());
        let mut rsv = Vec::new();
        for &(a, s) in memreserve.iter().chain(&[(0, 0)]) {
            rsv.extend(a.to_be_bytes());
            rsv.extend(s.to_be_bytes());
        }
        let off_rsv = 40;
        let off_struct = off_rsv + rsv.len();
        let off_strings = off_struct + structs.len();
        let total = off_strings + strings.len();
        let header = [
            0xd00d_feed,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            strings.len(),
            structs.len(),
        ];
        let mut out: Vec<u8> = header
            .iter()
            .flat_map(|&w| (w as u32).to_be_bytes())
            .collect();
        out.extend(rsv);
        out.extend(structs);
        out.extend(strings);
        out
    }
}

const GIC: u32 = 1;
const SMMU: u32 = 2;
const LEVEL: u32 = 4;
const EDGE: u32 = 1;

/// A small but complete platform: root with 2/2 cells, GICv3 at phandle 1, everything required.
fn base() -> N {
    N::new("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[GIC])
        .child(
            N::new("chosen")
                .strs("bootargs", &["ktest=all loglevel=4"])
                .strs("stdout-path", &["/uart@1000"]),
        )
        .child(
            N::new("memory@80000000")
                .strs("device_type", &["memory"])
                .cells("reg", &[0, 0x8000_0000, 0, 0x1000_0000]),
        )
        .child(
            N::new("gic@2000")
                .strs("compatible", &["arm,gic-v3"])
                .flag("interrupt-controller")
                .cells("#interrupt-cells", &[3])
                .cells("phandle", &[GIC])
                .cells("reg", &[0, 0x2000, 0, 0x1000, 0, 0x3000, 0, 0x2000]),
        )
        .child(
            N::new("uart@1000")
                .strs("compatible", &["arm,pl011", "arm,primecell"])
                .cells("reg", &[0, 0x1000, 0, 0x1000])
                .cells("interrupts", &[0, 5, LEVEL]),
        )
        .child(
            N::new("timer")
                .strs("compatible", &["arm,armv8-timer"])
                .cells("interrupts", &[1, 13, 8, 1, 14, 8, 1, 11, 8, 1, 10, 8]),
        )
        .child(
            N::new("psci")
                .strs("compatible", &["arm,psci-0.2", "arm,psci"])
                .strs("method", &["smc"]),
        )
        .child(
            N::new("cpus")
                .cells("#address-cells", &[2])
                .cells("#size-cells", &[0])
                .child(
                    N::new("cpu@0")
                        .strs("device_type", &["cpu"])
                        .cells("reg", &[0, 0])
                        .strs("enable-method", &["psci"]),
                )
                .child(
                    N::new("cpu@100000000")
                        .strs("device_type", &["cpu"])
                        .cells("reg", &[1, 0])
                        .strs("enable-method", &["spin-table"])
                        .cells("cpu-release-addr", &[0, 0x8000_fff8]),
                )
                .child(N::new("cpu-map")),
        )
}

fn smmu(names: &[&str], spis: &[u32]) -> N {
    let interrupts: Vec<u32> = spis.iter().flat_map(|&n| [0, n, EDGE]).collect();
    N::new("iommu@5000")
        .strs("compatible", &["arm,smmu-v3"])
        .cells("reg", &[0, 0x5000, 0, 0x2_0000])
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[SMMU])
        .cells("interrupts", &interrupts)
        .strs("interrupt-names", names)
}

fn pcie() -> N {
    N::new("pcie@100000")
        .strs("compatible", &["pci-host-ecam-generic"])
        .strs("device_type", &["pci"])
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("#interrupt-cells", &[1])
        .cells("reg", &[0, 0x100_0000, 0, 0x20_0000])
        .cells("bus-range", &[0x10, 0x11])
        .cells(
            "ranges",
            &[
                0x4200_0000,
                0,
                0x4000_0000,
                0,
                0x4000_0000,
                0,
                0x1000_0000, // prefetchable mem32
                0x8300_0000,
                0x1,
                0,
                0x1,
                0x8000_0000,
                0,
                0x4000_0000, // non-relocatable mem64, pci != cpu
            ],
        )
}

fn synth(root: &N) -> Result<Platform, PlatformError> {
    Platform::discover(&root.dtb(&[]))
}

#[test]
fn synthetic_base_platform() {
    let p = synth(&base()).unwrap();
    assert_eq!(p.bootargs, "ktest=all loglevel=4");
    assert_eq!(p.memory, [region(0x8000_0000, 0x1000_0000)]);
    assert_eq!(p.uart.irq, Irq::spi(5, Trigger::LevelHigh));
    assert_eq!(p.timer.virt, Irq::ppi(11, Trigger::LevelLow));
    assert_eq!(
        p.gic.address_cells, 0,
        "absent #address-cells on the GIC counts as 0"
    );
    let GicRegs::V3 { gicr, its, .. } = &p.gic.regs else {
        panic!("not GICv3")
    };
    assert_eq!((&gicr[..], its), (&[region(0x3000, 0x2000)][..], &None));
    assert_eq!(
        (p.psci.conduit, p.psci.version, p.psci.cpu_on),
        (Conduit::Smc, PsciVersion::V0_2, 0xC400_0003)
    );
    assert_eq!(p.cpus.len(), 2, "cpu-map is not a CPU");
    assert_eq!(
        p.cpus[1].mpidr, 0x1_0000_0000,
        "two-cell MPIDR: Aff3 in bits [39:32]"
    );
    assert_eq!(
        p.cpus[1].enable_method,
        Some(EnableMethod::SpinTable {
            release_addr: 0x8000_fff8
        })
    );
    assert_eq!((p.smmu, p.pcie), (None, None));
}

#[test]
fn smmu_irqs_by_name_in_any_order_and_subset() {
    // The order of a later QEMU: eventq, gerror, priq, cmdq-sync.
    let root = base().child(smmu(
        &["eventq", "gerror", "priq", "cmdq-sync"],
        &[10, 11, 12, 13],
    ));
    let s = synth(&root).unwrap().smmu.unwrap();
    assert_eq!(
        s.path, "/iommu@5000",
        "found by compatible, whatever the node name"
    );
    assert_eq!(s.irqs.eventq, Some(Irq::spi(10, Trigger::EdgeRising)));
    assert_eq!(s.irqs.gerror, Some(Irq::spi(11, Trigger::EdgeRising)));
    assert_eq!(s.irqs.priq, Some(Irq::spi(12, Trigger::EdgeRising)));
    assert_eq!(s.irqs.cmdq_sync, Some(Irq::spi(13, Trigger::EdgeRising)));
    assert!(!s.dma_coherent);

    let s = synth(&base().child(smmu(&["gerror", "eventq"], &[20, 21])))
        .unwrap()
        .smmu
        .unwrap();
    assert_eq!(
        (s.irqs.gerror.unwrap().number, s.irqs.eventq.unwrap().number),
        (20, 21)
    );
    assert_eq!(
        (s.irqs.priq, s.irqs.cmdq_sync, s.irqs.combined),
        (None, None, None)
    );

    let s = synth(&base().child(smmu(&["combined"], &[30])))
        .unwrap()
        .smmu
        .unwrap();
    assert_eq!(
        s.irqs,
        SmmuIrqs {
            combined: Some(Irq::spi(30, Trigger::EdgeRising)),
            ..SmmuIrqs::default()
        }
    );

    let no_irqs = smmu(&[], &[])
        .raw("interrupts", Vec::new())
        .raw("interrupt-names", Vec::new());
    let no_irqs = N {
        props: no_irqs
            .props
            .into_iter()
            .filter(|(n, _)| !n.starts_with("interrupt"))
            .collect(),
        ..no_irqs
    };
    assert_eq!(
        synth(&base().child(no_irqs)).unwrap().smmu.unwrap().irqs,
        SmmuIrqs::default()
    );
}

#[test]
fn smmu_irq_name_errors() {
    let is = |root: N, why: &str| {
        let e = synth(&root).unwrap_err();
        assert!(malformed("/iommu@5000", "interrupt-names")(&e), "{e:?}");
        assert!(e.to_string().contains(why), "{e}");
    };
    is(
        base().child(smmu(&["eventq", "gerror"], &[1])),
        "count differs",
    );
    is(
        base().child(smmu(&["eventq", "eventq"], &[1, 2])),
        "appears twice",
    );
    is(
        base().child(smmu(&["combined", "gerror"], &[1, 2])),
        "\"combined\" must be the only",
    );
    let e = synth(&base().child(smmu(&["eventq"], &[1]).cells("#iommu-cells", &[2]))).unwrap_err();
    assert!(malformed("/iommu@5000", "#iommu-cells")(&e));
    let e =
        synth(&base().child(smmu(&["eventq"], &[1]).cells("interrupts", &[0, 1, 0]))).unwrap_err();
    assert!(
        malformed("/iommu@5000", "interrupts")(&e),
        "trigger flags 0"
    );
    let e = synth(&base().child(smmu(&["eventq"], &[1]).cells("interrupts", &[0, 1]))).unwrap_err();
    assert!(
        malformed("/iommu@5000", "interrupts")(&e),
        "not a whole specifier"
    );
}

#[test]
fn memory_respects_cells_and_collects_every_entry() {
    let root = base()
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .edit("memory@80000000", |m| {
            m.cells("reg", &[0x9000_0000, 0x100_0000, 0x8000_0000, 0x200_0000])
        })
        .child(
            N::new("memory@a0000000")
                .strs("device_type", &["memory"])
                .cells("reg", &[0xa000_0000, 0x1000]),
        )
        .child(
            N::new("memory@0")
                .strs("device_type", &["memory"])
                .cells("reg", &[0, 0]),
        )
        .child(
            N::new("memory@c0000000")
                .strs("device_type", &["memory"])
                .strs("status", &["disabled"])
                .cells("reg", &[0xc000_0000, 0x1000]),
        )
        .edit("gic@2000", |g| {
            g.cells("reg", &[0x2000, 0x1000, 0x3000, 0x2000])
        })
        .edit("uart@1000", |u| u.cells("reg", &[0x1000, 0x1000]));
    let p = synth(&root).unwrap();
    assert_eq!(
        p.memory,
        [
            region(0x8000_0000, 0x200_0000),
            region(0x9000_0000, 0x100_0000),
            region(0xa000_0000, 0x1000)
        ]
    );
    assert_eq!(p.uart.reg, region(0x1000, 0x1000));
    let e = synth(&root.edit("memory@80000000", |m| {
        m.cells("reg", &[0x9000_0000, 0x100_0000, 0x8000_0000])
    }))
    .unwrap_err();
    assert!(malformed("/memory@80000000", "reg")(&e), "{e:?}");
}

#[test]
fn reservations_from_memreserve_and_reserved_memory() {
    let root = base().child(
        N::new("reserved-memory")
            .cells("#address-cells", &[2])
            .cells("#size-cells", &[2])
            .flag("ranges")
            .child(
                N::new("secmon@8f000000")
                    .cells("reg", &[0, 0x8f00_0000, 0, 0x10_0000])
                    .flag("no-map"),
            )
            .child(N::new("ramoops@8e000000").cells("reg", &[0, 0x8e00_0000, 0, 0x1000]))
            .child(
                N::new("cma")
                    .cells("size", &[0, 0x400_0000])
                    .flag("reusable"),
            ),
    );
    let p = Platform::discover(&root.dtb(&[(0x8000_0000, 0x1_0000), (0x8100_0000, 0)])).unwrap();
    assert_eq!(
        p.reserved,
        [
            ReservedRegion {
                region: region(0x8000_0000, 0x1_0000),
                no_map: false,
                origin: ReservedOrigin::MemReserve
            },
            ReservedRegion {
                region: region(0x8f00_0000, 0x10_0000),
                no_map: true,
                origin: ReservedOrigin::Node("/reserved-memory/secmon@8f000000".into()),
            },
            ReservedRegion {
                region: region(0x8e00_0000, 0x1000),
                no_map: false,
                origin: ReservedOrigin::Node("/reserved-memory/ramoops@8e000000".into()),
            },
        ]
    );
    assert!(
        p.to_string().contains(
            "reserved 0x8f000000 size 0x100000 (/reserved-memory/secmon@8f000000), no-map"
        )
    );
}

#[test]
fn reg_is_translated_through_bus_ranges() {
    let bus = N::new("soc")
        .strs("compatible", &["simple-bus"])
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .cells("ranges", &[0x0, 0, 0x2000_0000, 0x10_0000]);
    let moved_uart = N::new("uart@4000")
        .strs("compatible", &["arm,pl011"])
        .cells("reg", &[0x4000, 0x1000])
        .cells("interrupts", &[0, 9, LEVEL]);
    let root = base()
        .without("uart@1000")
        .child(bus.clone().child(moved_uart.clone()));
    let p = synth(&root).unwrap();
    assert_eq!(
        (p.uart.path.as_str(), p.uart.reg),
        ("/soc/uart@4000", region(0x2000_4000, 0x1000))
    );
    assert_eq!(
        p.uart.irq.number, 9,
        "interrupt-parent inherited from the root"
    );

    let no_ranges = N {
        props: bus
            .props
            .iter()
            .filter(|(n, _)| n != "ranges")
            .cloned()
            .collect(),
        ..bus.clone()
    };
    let e = synth(
        &base()
            .without("uart@1000")
            .child(no_ranges.child(moved_uart.clone())),
    )
    .unwrap_err();
    assert!(malformed("/soc", "ranges")(&e), "{e:?}");

    let outside = moved_uart.cells("reg", &[0x20_0000, 0x1000]);
    let e = synth(&base().without("uart@1000").child(bus.child(outside))).unwrap_err();
    assert!(e.to_string().contains("not covered by any range"), "{e}");
}

#[test]
fn stdout_path_picks_the_console_uart() {
    let second = N::new("uart@9000")
        .strs("compatible", &["arm,pl011"])
        .cells("reg", &[0, 0x9000, 0, 0x1000])
        .cells("interrupts", &[0, 8, LEVEL]);
    let root = base()
        .child(second)
        .child(N::new("aliases").strs("serial1", &["/uart@9000"]))
        .edit("chosen", |c| c.strs("stdout-path", &["serial1:115200n8"]));
    assert_eq!(synth(&root).unwrap().uart.reg.base, 0x9000);
    let root = root.edit("chosen", |c| {
        c.strs("stdout-path", &["/uart@9000:115200n8"])
    });
    assert_eq!(synth(&root).unwrap().uart.reg.base, 0x9000);
    let root = root.edit("chosen", |c| c.strs("stdout-path", &["/nowhere"]));
    assert_eq!(
        synth(&root).unwrap().uart.reg.base,
        0x1000,
        "falls back to the first PL011"
    );
}

#[test]
fn psci_versions_and_conduit() {
    let v01 = |n: N| {
        n.strs("compatible", &["arm,psci"])
            .cells("cpu_on", &[0x9500_0001])
            .strs("method", &["hvc"])
    };
    let p = synth(&base().edit("psci", v01)).unwrap();
    assert_eq!(
        (
            p.psci.version,
            p.psci.cpu_on,
            p.psci.cpu_off,
            p.psci.system_off
        ),
        (PsciVersion::V0_1, 0x9500_0001, None, None)
    );
    assert_eq!(p.psci.conduit, Conduit::Hvc);
    assert!(p.to_string().contains("no SYSTEM_OFF"));

    let e = synth(&base().edit("psci", |n| n.strs("compatible", &["arm,psci"]))).unwrap_err();
    assert_eq!(
        e,
        PlatformError::MissingProperty {
            node: "/psci".into(),
            property: "cpu_on"
        }
    );
    let e = synth(&base().edit("psci", |n| n.strs("method", &["svc"]))).unwrap_err();
    assert!(malformed("/psci", "method")(&e));
    let e = synth(&base().edit("psci", |n| n.raw("method", b"hvc".to_vec()))).unwrap_err();
    assert!(e.to_string().contains("not NUL-terminated"), "{e}");
}

#[test]
fn timer_irqs_by_name_and_count() {
    let named = |n: N| {
        n.cells(
            "interrupts",
            &[1, 10, 4, 1, 11, 4, 1, 12, 4, 1, 13, 4, 1, 14, 4],
        )
        .strs(
            "interrupt-names",
            &["hyp-phys", "virt", "hyp-virt", "sec-phys", "phys"],
        )
        .cells("clock-frequency", &[62_500_000])
    };
    let t = synth(&base().edit("timer", named)).unwrap().timer;
    assert_eq!(
        [
            t.hyp_phys.number,
            t.virt.number,
            t.hyp_virt.unwrap().number,
            t.secure_phys.number,
            t.nonsecure_phys.number
        ],
        [10, 11, 12, 13, 14]
    );
    assert_eq!(t.clock_frequency, Some(62_500_000));
    let e = synth(&base().edit("timer", |n| {
        n.cells("interrupts", &[1, 13, 8, 1, 14, 8, 1, 11, 8])
    }))
    .unwrap_err();
    assert!(malformed("/timer", "interrupts")(&e));
    let spi = |n: N| n.cells("interrupts", &[1, 13, 8, 1, 14, 8, 0, 11, 4, 1, 10, 8]);
    let e = synth(&base().edit("timer", spi)).unwrap_err();
    assert!(e.to_string().contains("not a PPI"), "{e}");
}

#[test]
fn gic_variants_and_errors() {
    let e = synth(&base().edit("gic@2000", |g| g.cells("#interrupt-cells", &[2]))).unwrap_err();
    assert!(malformed("/gic@2000", "#interrupt-cells")(&e));
    let e =
        synth(&base().edit("gic@2000", |g| g.cells("reg", &[0, 0x2000, 0, 0x1000]))).unwrap_err();
    assert!(malformed("/gic@2000", "reg")(&e), "no GICR");
    // Two redistributor regions, and a GICv3 PPI-partition 4th cell that is skipped.
    let g = |g: N| {
        g.cells("#redistributor-regions", &[2])
            .cells("#interrupt-cells", &[4])
            .cells(
                "reg",
                &[
                    0, 0x2000, 0, 0x1000, 0, 0x3000, 0, 0x2000, 0, 0x8000, 0, 0x2000,
                ],
            )
    };
    let root = base()
        .edit("gic@2000", g)
        .edit("uart@1000", |u| u.cells("interrupts", &[0, 5, LEVEL, 0]))
        .edit("timer", |t| {
            t.cells(
                "interrupts",
                &[1, 13, 8, 0, 1, 14, 8, 0, 1, 11, 8, 0, 1, 10, 8, 0],
            )
        });
    let p = synth(&root).unwrap();
    let GicRegs::V3 { gicr, .. } = &p.gic.regs else {
        panic!("not GICv3")
    };
    assert_eq!(gicr, &[region(0x3000, 0x2000), region(0x8000, 0x2000)]);
    assert_eq!(p.uart.irq, Irq::spi(5, Trigger::LevelHigh));
    // A GICv2 (gic-400): the second reg entry is GICC; without it the node is malformed.
    let p = synth(&base().edit("gic@2000", |g| g.strs("compatible", &["arm,gic-400"]))).unwrap();
    assert!(
        matches!(p.gic.regs, GicRegs::V2 { gicc, v2m: None, .. } if gicc == region(0x3000, 0x2000))
    );
    let e = synth(&base().edit("gic@2000", |g| {
        g.strs("compatible", &["arm,gic-400"])
            .cells("reg", &[0, 0x2000, 0, 0x1000])
    }))
    .unwrap_err();
    assert!(malformed("/gic@2000", "reg")(&e));
    // A device whose interrupt parent is some other controller.
    let other = N::new("gpio@7000")
        .flag("interrupt-controller")
        .cells("#interrupt-cells", &[2])
        .cells("phandle", &[9]);
    let e = synth(
        &base()
            .child(other)
            .edit("uart@1000", |u| u.cells("interrupt-parent", &[9])),
    )
    .unwrap_err();
    assert!(malformed("/uart@1000", "interrupts")(&e), "{e:?}");
    let e = synth(&base().edit("uart@1000", |u| u.cells("interrupt-parent", &[77]))).unwrap_err();
    assert!(malformed("/uart@1000", "interrupt-parent")(&e), "{e:?}");
}

#[test]
fn interrupts_extended_is_decoded() {
    let root = base().edit("uart@1000", |u| {
        N {
            props: u
                .props
                .into_iter()
                .filter(|(n, _)| n != "interrupts")
                .collect(),
            ..u
        }
        .cells("interrupts-extended", &[GIC, 0, 6, EDGE])
    });
    assert_eq!(
        synth(&root).unwrap().uart.irq,
        Irq::spi(6, Trigger::EdgeRising)
    );
}

#[test]
fn pcie_windows_bus_range_and_non_identity_iommu_map() {
    let root = base().child(smmu(&["eventq"], &[1])).child(
        pcie()
            .cells(
                "iommu-map",
                &[0x1000, SMMU, 0x100, 0x100, 0x1100, SMMU, 0x8000, 0x10],
            )
            .cells("iommu-map-mask", &[0xfff8]),
    );
    let p = synth(&root).unwrap();
    let pci = p.pcie.as_ref().unwrap();
    assert_eq!(pci.bus_range, (0x10, 0x11));
    assert_eq!(
        pci.windows,
        [
            PciWindow {
                space: PciSpace::Mem32,
                prefetchable: true,
                pci_addr: 0x4000_0000,
                cpu_addr: 0x4000_0000,
                size: 0x1000_0000
            },
            PciWindow {
                space: PciSpace::Mem64,
                prefetchable: false,
                pci_addr: 0x1_0000_0000,
                cpu_addr: 0x1_8000_0000,
                size: 0x4000_0000
            },
        ]
    );
    assert_eq!(pci.window(PciSpace::Io), None);
    // ECAM base is bus 0x10, the first of bus-range.
    assert_eq!(
        pci.config_space(bdf(0x10, 0, 0)),
        Some(region(0x100_0000, 0x1000))
    );
    assert_eq!(
        pci.config_space(bdf(0x11, 1, 2)),
        Some(region(0x110_a000, 0x1000))
    );
    assert_eq!(pci.config_space(bdf(0x12, 0, 0)), None);
    assert_eq!(pci.config_space(bdf(0, 0, 0)), None);
    // RID 0x10:01.x -> mask drops the function -> 0x1008 -> SID 0x108.
    assert_eq!(
        pci.rid_to_sid(bdf(0x10, 1, 5).rid()),
        Some(StreamMapping {
            iommu: SMMU,
            sid: 0x108
        })
    );
    assert_eq!(p.smmu_stream_id(bdf(0x10, 1, 5)), Some(0x108));
    assert_eq!(p.smmu_stream_id(bdf(0x11, 1, 0)), Some(0x8008));
    assert_eq!(
        pci.rid_to_sid(0x1110),
        None,
        "past the second entry's length"
    );
    assert_eq!(pci.rid_to_sid(0x0fff), None);
    assert_eq!(
        pci.intx_route(bdf(0x10, 0, 0), IntxPin::A),
        None,
        "no interrupt-map"
    );

    let e = synth(&base().child(pcie().cells("bus-range", &[2, 1]))).unwrap_err();
    assert!(malformed("/pcie@100000", "bus-range")(&e));
    let e = synth(&base().child(pcie().cells("bus-range", &[0, 255]))).unwrap_err();
    assert!(
        malformed("/pcie@100000", "reg")(&e),
        "2 MiB of ECAM cannot hold 256 buses"
    );
    let e = synth(&base().child(pcie().cells("iommu-map", &[0, SMMU, 0]))).unwrap_err();
    assert!(malformed("/pcie@100000", "iommu-map")(&e));
    let e = synth(&base().child(pcie().cells("ranges", &[0x0200_0000, 0, 0]))).unwrap_err();
    assert!(malformed("/pcie@100000", "ranges")(&e));
}

#[test]
fn interrupt_map_with_a_zero_address_cell_gic() {
    // The GIC of `base()` has no #address-cells, so parent unit addresses are 0 cells wide.
    let map: Vec<u32> = (0..4u32)
        .flat_map(|slot| (1..=4u32).map(move |pin| (slot, pin)))
        .flat_map(|(slot, pin)| {
            [
                slot << 11,
                0,
                0,
                pin,
                GIC,
                0,
                40 + (slot + pin - 1) % 4,
                LEVEL,
            ]
        })
        .collect();
    let root = base().child(
        pcie()
            .cells("interrupt-map-mask", &[0x1800, 0, 0, 7])
            .cells("interrupt-map", &map),
    );
    let pci = synth(&root).unwrap().pcie.unwrap();
    assert_eq!(pci.interrupt_map.len(), 16);
    assert_eq!(
        pci.intx_route(bdf(0x10, 1, 0), IntxPin::A),
        Some(Irq::spi(41, Trigger::LevelHigh))
    );
    assert_eq!(
        pci.intx_route(bdf(0x10, 6, 3), IntxPin::D),
        Some(Irq::spi(40 + (2 + 3) % 4, Trigger::LevelHigh))
    );
    // A device behind a bridge in slot 1, itself in slot 2, INTB: swizzle once per bridge.
    let at_host = IntxPin::B.swizzle(1);
    assert_eq!(at_host, IntxPin::C);
    assert_eq!(
        pci.intx_route(bdf(0x10, 2, 0), at_host),
        Some(Irq::spi(40, Trigger::LevelHigh))
    );

    // Without a mask every cell must match exactly: function 1 no longer matches.
    let exact = base().child(pcie().cells("interrupt-map", &map));
    let pci = synth(&exact).unwrap().pcie.unwrap();
    assert_eq!(pci.interrupt_map_mask, [u32::MAX; 4]);
    assert_eq!(
        pci.intx_route(bdf(0, 1, 0), IntxPin::A),
        Some(Irq::spi(41, Trigger::LevelHigh))
    );
    assert_eq!(pci.intx_route(bdf(0, 1, 1), IntxPin::A), None);

    // An entry one cell short, and an entry whose parent is not the GIC.
    let e = synth(&base().child(pcie().cells("interrupt-map", &map[..map.len() - 1]))).unwrap_err();
    assert!(malformed("/pcie@100000", "interrupt-map")(&e), "{e:?}");
    let mut other = map.clone();
    other[4] = SMMU;
    let e = synth(
        &base()
            .child(smmu(&["eventq"], &[1]))
            .child(pcie().cells("interrupt-map", &other)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("parent is not the GIC"), "{e}");
    let e = synth(
        &base().child(
            pcie()
                .cells("#interrupt-cells", &[2])
                .cells("interrupt-map", &map),
        ),
    )
    .unwrap_err();
    assert!(malformed("/pcie@100000", "#interrupt-cells")(&e));
}

#[test]
fn bdf_and_pin_helpers() {
    let b = bdf(0x12, 0x1f, 7);
    assert_eq!(b.rid(), 0x12ff);
    assert_eq!(Bdf::from_rid(0x12ff), b);
    assert_eq!(b.phys_hi(), 0x0012_ff00);
    assert_eq!(Bdf::new(0, 32, 0), None);
    assert_eq!(Bdf::new(0, 0, 8), None);
    assert_eq!(format!("{b}"), "12:1f.7");
    assert_eq!(IntxPin::from_register(4), Some(IntxPin::D));
    assert_eq!(IntxPin::from_register(0), None);
    assert_eq!(IntxPin::D.swizzle(1), IntxPin::A);
    assert_eq!(IntxPin::A.swizzle(4), IntxPin::A);
}
