//! The CPUs, PSCI (how to start and stop them, and how to power off) and the generic timer: the
//! per-CPU facts the boot path needs before it brings up secondaries or arms a timer.

use super::{
    PlatformError,
    gic::IrqDomain,
    irq::{Irq, IrqKind},
    missing,
    tree::Tree,
};
use alloc::{string::String, vec::Vec};
use core::fmt;

/// How a secondary CPU is started (`enable-method`, `Documentation/devicetree/bindings/arm/
/// cpus.yaml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    /// `"psci"`: PSCI CPU_ON.
    Psci,
    /// `"spin-table"`: write the entry point to `cpu-release-addr` and `sev`.
    SpinTable {
        /// `cpu-release-addr`.
        release_addr: u64,
    },
    /// Any other method, by name.
    Other(String),
}

/// One CPU node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Node path, e.g. `/cpus/cpu@1`.
    pub path: String,
    /// `reg`: the MPIDR_EL1 affinity fields (Aff2..Aff0 in bits [23:0], Aff3 in bits [39:32] when
    /// `#address-cells` is 2), which is also PSCI CPU_ON's target_cpu.
    pub mpidr: u64,
    /// `enable-method`; `None` when absent (QEMU omits it on a single-CPU machine).
    pub enable_method: Option<EnableMethod>,
}

/// Every child of `/cpus` with `device_type = "cpu"` (DT spec v0.4 §3.7), in document order.
pub fn cpus(tree: &Tree<'_>) -> Result<Vec<Cpu>, PlatformError> {
    let cpus = tree
        .find_path("/cpus")
        .ok_or(PlatformError::Missing(missing::CPUS))?;
    let ac = tree.address_cells(cpus)?;
    if !(1..=2).contains(&ac) || tree.size_cells(cpus)? != 0 {
        return Err(tree.malformed(
            cpus,
            "#address-cells",
            "CPU nodes need 1 or 2 address cells and 0 size cells",
        ));
    }
    let mut out = Vec::new();
    for c in tree.children(cpus) {
        if !matches!(tree.string(c, "device_type"), Ok(Some("cpu"))) {
            continue;
        }
        let mut reg = tree.required_cells(c, "reg")?;
        let mpidr = reg.number(ac).filter(|_| reg.is_empty());
        let mpidr = mpidr.ok_or_else(|| {
            tree.malformed(c, "reg", "expected one MPIDR of #address-cells cells")
        })?;
        let enable_method = match tree.string(c, "enable-method")? {
            None => None,
            Some("psci") => Some(EnableMethod::Psci),
            Some("spin-table") => {
                let mut addr = tree.required_cells(c, "cpu-release-addr")?;
                let release_addr = addr.number(addr.remaining() as u32).ok_or_else(|| {
                    tree.malformed(c, "cpu-release-addr", "expected 1 or 2 cells")
                })?;
                Some(EnableMethod::SpinTable { release_addr })
            }
            Some(other) => Some(EnableMethod::Other(other.into())),
        };
        out.push(Cpu {
            path: tree.path(c).into(),
            mpidr,
            enable_method,
        });
    }
    if out.is_empty() {
        return Err(PlatformError::Missing(missing::CPU));
    }
    Ok(out)
}

/// The PSCI conduit: which instruction reaches the firmware (`method`, `Documentation/
/// devicetree/bindings/arm/psci.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0` (firmware at EL2; QEMU booting the kernel at EL1).
    Hvc,
    /// `smc #0` (firmware at EL3).
    Smc,
}

/// The newest PSCI version the node claims compatibility with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PsciVersion {
    /// `arm,psci`: function IDs only from the node.
    V0_1,
    /// `arm,psci-0.2`: standard function IDs.
    V0_2,
    /// `arm,psci-1.0`.
    V1_0,
}

/// PSCI firmware interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Psci {
    /// Node path.
    pub path: String,
    /// `hvc` or `smc`.
    pub conduit: Conduit,
    /// Newest version in `compatible`.
    pub version: PsciVersion,
    /// CPU_ON function ID: the node's `cpu_on` if present, else the PSCI 0.2+ SMC64 ID.
    pub cpu_on: u32,
    /// CPU_OFF function ID: the node's `cpu_off` if present, else the 0.2+ ID.
    pub cpu_off: Option<u32>,
    /// SYSTEM_OFF function ID (PSCI 0.2+ only; PSCI 0.1 has none).
    pub system_off: Option<u32>,
}

/// Standard function IDs (Arm DEN0022 "Arm Power State Coordination Interface", §5.1).
pub mod psci_fn {
    /// CPU_ON, SMC64 calling convention.
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
}

/// Finds and decodes the PSCI node.
pub fn psci(tree: &Tree<'_>) -> Result<Psci, PlatformError> {
    let node = tree
        .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
        .ok_or(PlatformError::Missing(missing::PSCI))?;
    let version = if tree.is_compatible(node, "arm,psci-1.0") {
        PsciVersion::V1_0
    } else if tree.is_compatible(node, "arm,psci-0.2") {
        PsciVersion::V0_2
    } else {
        PsciVersion::V0_1
    };
    let conduit = match tree.string(node, "method")? {
        Some("hvc") => Conduit::Hvc,
        Some("smc") => Conduit::Smc,
        Some(_) => return Err(tree.malformed(node, "method", "neither \"hvc\" nor \"smc\"")),
        None => return Err(tree.missing(node, "method")),
    };
    let standard = version >= PsciVersion::V0_2;
    let cpu_on = match (tree.u32(node, "cpu_on")?, standard) {
        (Some(id), _) => id,
        (None, true) => psci_fn::CPU_ON_64,
        (None, false) => return Err(tree.missing(node, "cpu_on")),
    };
    let cpu_off = tree
        .u32(node, "cpu_off")?
        .or(standard.then_some(psci_fn::CPU_OFF));
    Ok(Psci {
        path: tree.path(node).into(),
        conduit,
        version,
        cpu_on,
        cpu_off,
        system_off: standard.then_some(psci_fn::SYSTEM_OFF),
    })
}

impl fmt::Display for Psci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = match self.version {
            PsciVersion::V0_1 => "0.1",
            PsciVersion::V0_2 => "0.2",
            PsciVersion::V1_0 => "1.0",
        };
        let conduit = match self.conduit {
            Conduit::Hvc => "hvc",
            Conduit::Smc => "smc",
        };
        write!(
            f,
            "PSCI {version} {}: via {conduit}, CPU_ON {:#x}",
            self.path, self.cpu_on
        )?;
        match self.system_off {
            Some(id) => write!(f, ", SYSTEM_OFF {id:#x}"),
            None => write!(f, ", no SYSTEM_OFF"),
        }
    }
}

/// The Arm generic timer's per-CPU interrupts (`Documentation/devicetree/bindings/timer/
/// arm,arch_timer.yaml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Node path.
    pub path: String,
    /// EL3 (secure) physical timer, CNTPS.
    pub secure_phys: Irq,
    /// EL1 non-secure physical timer, CNTP.
    pub nonsecure_phys: Irq,
    /// EL1 virtual timer, CNTV.
    pub virt: Irq,
    /// EL2 physical timer, CNTHP.
    pub hyp_phys: Irq,
    /// EL2 virtual timer, CNTHV (only with FEAT_VHE, optional fifth entry).
    pub hyp_virt: Option<Irq>,
    /// `clock-frequency`, for firmware that leaves CNTFRQ_EL0 unset; `None` means trust CNTFRQ.
    pub clock_frequency: Option<u32>,
}

/// Finds the generic timer. Its interrupts are taken by `interrupt-names` (`sec-phys`, `phys`,
/// `virt`, `hyp-phys`, `hyp-virt`) when present, else by position in that order.
pub fn timer(tree: &Tree<'_>, gic: &IrqDomain) -> Result<Timer, PlatformError> {
    let node = tree
        .find_compatible(&["arm,armv8-timer", "arm,armv7-timer"])
        .ok_or(PlatformError::Missing(missing::TIMER))?;
    const NAMES: [&str; 5] = ["sec-phys", "phys", "virt", "hyp-phys", "hyp-virt"];
    let irqs: [Option<Irq>; 5] = match gic.named_irqs(tree, node)? {
        Some(named) => NAMES.map(|n| {
            named
                .iter()
                .find(|(name, _)| *name == n)
                .map(|&(_, irq)| irq)
        }),
        None => {
            let irqs = gic.irqs(tree, node)?;
            core::array::from_fn(|k| irqs.get(k).copied())
        }
    };
    if irqs.iter().flatten().any(|irq| irq.kind != IrqKind::Ppi) {
        return Err(tree.malformed(node, "interrupts", "a generic timer interrupt is not a PPI"));
    }
    let [
        Some(secure_phys),
        Some(nonsecure_phys),
        Some(virt),
        Some(hyp_phys),
        hyp_virt,
    ] = irqs
    else {
        return Err(tree.malformed(
            node,
            "interrupts",
            "fewer than the four timer PPIs (sec-phys, phys, virt, hyp-phys)",
        ));
    };
    Ok(Timer {
        path: tree.path(node).into(),
        secure_phys,
        nonsecure_phys,
        virt,
        hyp_phys,
        hyp_virt,
        clock_frequency: tree.u32(node, "clock-frequency")?,
    })
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generic timer {}: sec-phys {}, phys {}, virt {}, hyp-phys {}",
            self.path, self.secure_phys, self.nonsecure_phys, self.virt, self.hyp_phys
        )?;
        if let Some(irq) = self.hyp_virt {
            write!(f, ", hyp-virt {irq}")?;
        }
        match self.clock_frequency {
            Some(hz) => write!(f, ", clock-frequency {hz} Hz"),
            None => write!(f, ", frequency from CNTFRQ_EL0"),
        }
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}: MPIDR {:#x}", self.path, self.mpidr)?;
        match &self.enable_method {
            None => write!(f, ", no enable-method"),
            Some(EnableMethod::Psci) => write!(f, ", enable-method psci"),
            Some(EnableMethod::SpinTable { release_addr }) => {
                write!(f, ", enable-method spin-table (release {release_addr:#x})")
            }
            Some(EnableMethod::Other(m)) => write!(f, ", enable-method {m}"),
        }
    }
}
