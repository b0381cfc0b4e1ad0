//! The main job: the story of the secondary TLB, told on the real (emulated) device.
//!
//! The device (QEMU's edu) shares an address space with the CPU through the SMMU. Each act
//! runs a scenario twice where it matters: once with the SMMU left out of the flush (the bug),
//! once with the flush path telling it (the fix), and says what the device did. The closing
//! table counts the SMMU commands each flush cost.

use crate::mm::tlb::SecondaryTlbMode::{self, Legacy, Off, Sync};
use crate::{
    exit, println,
    scenarios::{Outcome, Scenario},
};
use alloc::vec::Vec;

/// Run the demonstration and power off.
pub fn main() -> ! {
    let platform = crate::init::platform();
    let mut missing = Vec::new();
    if platform.smmu.is_none() {
        missing.push("an SMMUv3 (no \"arm,smmu-v3\" node: QEMU -M virt,iommu=smmuv3)");
    }
    if platform.pcie.is_none() {
        missing.push("a PCIe host bridge (no \"pci-host-ecam-generic\" node)");
    } else if crate::drivers::edu::devices().is_empty() {
        missing.push("an edu device (no PCI function 1234:11e8: QEMU -device edu)");
    }
    if !missing.is_empty() {
        // A main job that demonstrated nothing has not succeeded: say what is missing.
        crate::init::boot_error(&alloc::format!(
            "main job: nothing to demonstrate without {} (scripts/run sets up the machine)",
            missing.join(" and ")
        ));
    }
    let mut rows: Vec<Outcome> = Vec::new();
    // Rows that could not run, or whose device behaviour contradicts the story: a `sync` flush
    // must leave the device fresh, and the `legacy`/`off` demonstrations must show the bug.
    let mut problems = 0usize;
    let mut run = |title: &str, scenario: Scenario, mode: SecondaryTlbMode| -> Option<Outcome> {
        match scenario(mode) {
            Ok(o) => {
                println!("  [{}] {}: {}", mode.as_str(), title, o.detail);
                if o.fresh != mode.is_correct() {
                    problems += 1;
                    println!(
                        "  [{}] {}: UNEXPECTED: the device saw the tables {} in this mode",
                        mode.as_str(),
                        title,
                        if o.fresh {
                            "as they are"
                        } else {
                            "as they were"
                        }
                    );
                }
                rows.push(o.clone());
                Some(o)
            }
            Err(e) => {
                problems += 1;
                println!("  [{}] {}: could not run: {e}", mode.as_str(), title);
                None
            }
        }
    };

    println!();
    println!("== Act 1: a read-only permission cached by the SMMU ==");
    println!("The device reads page P, so the SMMU's TLB caches P as read-only. The kernel then");
    println!("upgrades P to read-write in place (allowed without break-before-make) and flushes.");
    println!("Before Linux 6.6 that flush reached only the CPU's TLB ('legacy'):");
    run(
        "device writes P",
        crate::scenarios::permission::permission_upgrade,
        Legacy,
    );
    println!("The SMMU kept its read-only entry: the device faults on every retry, for ever.");
    println!("With the SMMU told at the same moment as the CPU ('sync'):");
    run(
        "device writes P",
        crate::scenarios::permission::permission_upgrade,
        Sync,
    );
    println!();
    println!("The same bug when the device's own fault triggers the upgrade (write tracking):");
    run(
        "device writes P",
        crate::scenarios::permission::fault_driven_upgrade,
        Legacy,
    );
    run(
        "device writes P",
        crate::scenarios::permission::fault_driven_upgrade,
        Sync,
    );

    println!();
    println!("== Act 2: the other direction: a stale writable entry ==");
    println!(
        "P was written by the device, then made read-only. If the SMMU is never told ('off'),"
    );
    println!("its cached writable entry lets the forbidden write through silently:");
    run(
        "device writes read-only P",
        crate::scenarios::permission::downgrade,
        Off,
    );
    run(
        "device writes read-only P",
        crate::scenarios::permission::downgrade,
        Sync,
    );

    for (title, intro, scenario, bug) in crate::scenarios::DEMO_EXTRAS {
        println!();
        println!("== {title} ==");
        println!("{intro}");
        run("device checks", *scenario, *bug);
        run("device checks", *scenario, Sync);
    }

    println!();
    print_table(&rows);
    println!();
    println!("How to read it: TLBI_NH_VA / range TLBI / TLBI_NH_ASID / CMD_SYNC count the SMMU");
    println!("commands the flush under test issued; device faults are the SMMU fault records the");
    println!(
        "checking transfers produced (QEMU records one per 4-byte chunk); result says whether"
    );
    println!("the device saw the page tables as they are (fresh) or as they were (STALE).");
    if problems > 0 {
        println!(
            "\nmain job: {problems} row(s) could not run or contradicted the expected outcome"
        );
        exit::exit(exit::ExitStatus::TestsFailed);
    }
    exit::shutdown()
}

fn print_table(rows: &[Outcome]) {
    println!(
        "{:<36} | {:<14} | {:>10} | {:>10} | {:>12} | {:>8} | {:>13} | result",
        "scenario", "mode", "TLBI_NH_VA", "range TLBI", "TLBI_NH_ASID", "CMD_SYNC", "device faults"
    );
    println!("{}", "-".repeat(36 + 17 + 13 + 13 + 15 + 11 + 16 + 12));
    for o in rows {
        println!(
            "{:<36} | {:<14} | {:>10} | {:>10} | {:>12} | {:>8} | {:>13} | {}",
            o.scenario,
            o.mode.as_str(),
            o.commands.tlbi_nh_va,
            o.commands.tlbi_nh_va_range,
            o.commands.tlbi_nh_asid,
            o.commands.sync,
            o.device_faults,
            if o.fresh { "fresh" } else { "STALE" }
        );
    }
}
