//! The trace oracle: an independent check of the invalidation scenarios from QEMU's own SMMU
//! trace, not from the kernel's word.
//!
//! The kernel (bootarg `smmu.trace_marks`) brackets each flush under test with two writes to
//! SMMU_GERROR_IRQ_CFG1 — QEMU traces them as `smmuv3_write_mmio addr: 0x70 val:0x7eb0NNNN`
//! (begin) and `val:0x7ee0NNNN` (end), NNNN a sequence number — and prints on the console
//! which test the window belongs to and which commands it counted:
//!
//! ```text
//! trace-mark flush-begin seq=0 test=scenarios::permission::s01_permission_upgrade
//! trace-mark flush-end seq=0 nh_va=1 nh_va_range=0 nh_asid=0 sync=1
//! ```
//!
//! From the trace alone the oracle then checks, for every window, that QEMU consumed the
//! commands the kernel claims (`TLBI_NH_VA`, `TLBI_NH_ASID`, `CMD_SYNC`), and per scenario:
//!
//! - the crux (`s01_permission_upgrade`): the read-only IOTLB insert of P precedes the window,
//!   one invalidation covering P with the bound ASID is inside it, and the device's next
//!   translation of P after it is a miss (a fresh walk), with no permission fault;
//! - its negative control: no invalidation in the window, and afterwards the device keeps
//!   hitting the stale entry of P and faulting with F_PERMISSION on every retry (records for
//!   P's StreamID);
//! - the range at the threshold (`s07`): exactly one invalidation command (ASID-wide under
//!   `smmu.inval=linux66`, one range command under `precise`) and one `CMD_SYNC`; the whole
//!   address space (`s08`): exactly one `TLBI_NH_ASID` and one `CMD_SYNC` (none in the
//!   negative controls, which then fault);
//! - ASID-wide precision (`s09`): the flushed ASID misses afterwards while the other address
//!   space's ASID still hits its cached entry;
//! - nested batches (`s14`): the window is the nested batch that found nothing to clear. It
//!   must contain an invalidation (by address or ASID-wide) covering the page the device writes
//!   next, and that write's translation must miss (a fresh walk, which faults); in the negative
//!   control (`nested-unaware`) nothing reaches the SMMU and the write hits the stale entry;
//! - `move_range` (`s15`): the window is the move. The page the device used last before it (the
//!   old address) must be invalidated inside the window and its next translation must miss; in
//!   the negative control (`move-late`) nothing reaches the SMMU before the move returned and
//!   the next translation of the old address hits the stale entry.

use crate::{
    Error, build,
    console::{self, Summary},
    qemu::{self, RunConfig},
    trace::{self, Event, Record},
    verdict,
};
use protocol::trace_mark::{self, Mark};
use std::{fmt, path::Path, time::Duration};

/// The oracle's runs: (what, on-target test filter). Each boots the two-edu machine once with
/// the trace on; s12 and the other scenarios are left out to keep traces small (QEMU logs
/// several lines per command and per translation).
pub const RUNS: &[(&str, &str)] = &[
    ("crux", "s01_permission_upgrade"),
    ("range at the threshold", "s07_range_protect_threshold"),
    ("whole address space", "s08_whole_address_space"),
    ("ASID-wide precision", "s09_asid_flush_is_precise"),
    ("nested batches", "s14_nested_unmap"),
    ("move_range (mremap)", "s15_move_range"),
];

/// A second edu, so the ASID-precision scenario has its two devices.
const SECOND_EDU: &str = "-device edu,dma_mask=0xffffffffffffffff,addr=0x3";

/// Build the image, boot it once per [`RUNS`] entry with QEMU's SMMU trace on, and check each
/// trace. Prints one `oracle <check> ... ok|FAILED` line per check; returns the counts.
///
/// # Errors
/// When the image cannot be built or QEMU cannot be started.
pub fn run(root: &Path, timeout: Duration, echo: bool) -> Result<Summary, Error> {
    let kernel = build::build_kernel(root, &[])?;
    let dir = root.join("target/harness");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut counts = Summary::default();
    for (what, filter) in RUNS {
        let trace_path = dir.join(format!("oracle-{filter}.log"));
        let _ = std::fs::remove_file(&trace_path);
        let mut cfg = RunConfig::new(&kernel, format!("ktest={filter} smmu.trace_marks"));
        cfg.timeout = timeout;
        cfg.echo = echo;
        cfg.env = vec![
            ("QEMU_TRACE_FILE".into(), trace_path.display().to_string()),
            ("QEMU_EXTRA_ARGS".into(), SECOND_EDU.into()),
        ];
        println!(
            "==> oracle run: {what} (ktest={filter}, trace {})",
            trace_path.display()
        );
        let out = qemu::run(root, &cfg)?;
        let verdict = verdict::judge(&console::parse(&out.console), out.end);
        let mut checks = vec![Check {
            name: format!("{filter}: the on-target tests of the traced run passed"),
            ok: verdict.passed() && !verdict.tests.is_empty(),
            detail: format!("{}", verdict.counts()),
        }];
        match trace::read(&trace_path) {
            Ok(records) => checks.extend(check(&out.console, &records)),
            Err(e) => checks.push(Check {
                name: format!("{filter}: trace readable"),
                ok: false,
                detail: format!("{}: {e}", trace_path.display()),
            }),
        }
        for c in &checks {
            if c.ok {
                counts.passed += 1;
                println!("oracle {} ... ok  [{}]", c.name, c.detail);
            } else {
                counts.failed += 1;
                println!("    {}", c.detail);
                println!("oracle {} ... FAILED", c.name);
            }
        }
    }
    Ok(counts)
}

/// What the trace says happened between two marks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// `CMD_TLBI_NH_VA` commands (single and range form).
    pub nh_va: u64,
    /// `CMD_TLBI_NH_ASID` commands.
    pub nh_asid: u64,
    /// `CMD_SYNC` commands.
    pub sync: u64,
    /// Any other command.
    pub other: u64,
}

impl fmt::Display for CommandCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NH_VA {}, NH_ASID {}, SYNC {}, other {}",
            self.nh_va, self.nh_asid, self.sync, self.other
        )
    }
}

/// One flush under test, located in both the console and the trace.
#[derive(Clone, Debug)]
pub struct Window {
    /// Sequence number (kernel-side).
    pub seq: u32,
    /// The on-target test it belongs to.
    pub test: String,
    /// What the kernel counted: (NH_VA + range NH_VA, NH_ASID, SYNC).
    pub kernel: (u64, u64, u64),
    /// Index of the begin mark in the trace records.
    pub begin: usize,
    /// Index of the end mark.
    pub end: usize,
    /// Index where the window's aftermath ends (the next begin mark, or the end of the trace).
    pub after_end: usize,
    /// Index where the window's prelude starts (the previous end mark, or the start).
    pub before_start: usize,
}

/// The result of one oracle check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `<test>: <what>`.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// The marks in the trace ([`protocol::trace_mark`]): (record index, begin?, sequence).
fn marks(records: &[Record]) -> Vec<(usize, bool, u32)> {
    let register = format!("addr: {:#x} ", trace_mark::REGISTER_OFFSET);
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.event {
            Event::Other { name, args } if name == "smmuv3_write_mmio" => {
                let rest = args.strip_prefix(register.as_str())?;
                let val = rest.split_whitespace().next()?.strip_prefix("val:0x")?;
                match Mark::decode(u32::from_str_radix(val, 16).ok()?)? {
                    Mark::FlushBegin(seq) => Some((i, true, u32::from(seq))),
                    Mark::FlushEnd(seq) => Some((i, false, u32::from(seq))),
                }
            }
            _ => None,
        })
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Pair the console's mark lines with the trace's marks.
///
/// # Errors
/// A description of the first inconsistency (missing or unordered marks): the oracle then
/// cannot say anything, which is a failure.
pub fn windows(console: &str, records: &[Record]) -> Result<Vec<Window>, String> {
    let mut begins = Vec::new();
    let mut ends = Vec::new();
    for line in console.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("trace-mark flush-begin ") {
            let seq: u32 = field(rest, "seq")
                .and_then(|s| s.parse().ok())
                .ok_or(line)?;
            let test = field(rest, "test").unwrap_or("-").to_string();
            begins.push((seq, test));
        } else if let Some(rest) = line.strip_prefix("trace-mark flush-end ") {
            let num = |k| {
                field(rest, k)
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(line)
            };
            let seq = num("seq")? as u32;
            ends.push((
                seq,
                (
                    num("nh_va")? + num("nh_va_range")?,
                    num("nh_asid")?,
                    num("sync")?,
                ),
            ));
        }
    }
    let marks = marks(records);
    if begins.len() != ends.len() || marks.len() != 2 * begins.len() {
        return Err(format!(
            "{} begin and {} end marks on the console, {} marks in the trace",
            begins.len(),
            ends.len(),
            marks.len()
        ));
    }
    let mut out = Vec::new();
    for (k, ((seq, test), (end_seq, kernel))) in begins.into_iter().zip(ends).enumerate() {
        let (b, e) = (marks[2 * k], marks[2 * k + 1]);
        let seq16 = seq & 0xFFFF;
        if seq != end_seq || !b.1 || e.1 || b.2 != seq16 || e.2 != seq16 {
            return Err(format!("marks out of order at window {seq}"));
        }
        out.push(Window {
            seq,
            test,
            kernel,
            begin: b.0,
            end: e.0,
            after_end: marks.get(2 * k + 2).map_or(records.len(), |m| m.0),
            before_start: if k == 0 { 0 } else { marks[2 * k - 1].0 },
        });
    }
    Ok(out)
}

/// Commands QEMU consumed in `records`.
pub fn commands(records: &[Record]) -> CommandCounts {
    let mut c = CommandCounts::default();
    for r in records {
        if let Event::Command { name } = &r.event {
            match name.as_str() {
                "SMMU_CMD_TLBI_NH_VA" => c.nh_va += 1,
                "SMMU_CMD_TLBI_NH_ASID" => c.nh_asid += 1,
                "SMMU_CMD_SYNC" => c.sync += 1,
                _ => c.other += 1,
            }
        }
    }
    c
}

const PAGE_MASK: u64 = !0xFFF;

/// The ASIDs and page addresses invalidated by address in `records`.
fn range_invalidations(records: &[Record]) -> Vec<(i64, u64)> {
    records
        .iter()
        .filter_map(|r| match r.event {
            Event::RangeInval { asid, addr, .. } => Some((asid, addr & PAGE_MASK)),
            _ => None,
        })
        .collect()
}

/// Permission faults (from `-d guest_errors`) in `records`: their page-aligned IOVAs.
fn permission_faults(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::TranslationFailed { iova, detail, .. } if detail.contains("F_PERMISSION") => {
                Some(iova & PAGE_MASK)
            }
            _ => None,
        })
        .collect()
}

/// Recorded F_PERMISSION events per StreamID in `records`.
fn permission_records(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::RecordEvent { kind, sid } if kind.contains("F_PERMISSION") => Some(*sid),
            _ => None,
        })
        .collect()
}

/// The first IOTLB lookup of (`asid`, page) in `records`: `Some(true)` for a hit.
pub(crate) fn first_lookup(records: &[Record], asid: i64, page: u64) -> Option<bool> {
    records.iter().find_map(|r| match r.event {
        Event::IotlbHit { asid: a, addr, .. } if a == asid && addr & PAGE_MASK == page => {
            Some(true)
        }
        Event::IotlbMiss { asid: a, addr, .. } if a == asid && addr & PAGE_MASK == page => {
            Some(false)
        }
        _ => None,
    })
}

/// Every IOTLB lookup in `records`: (ASID, page, hit).
fn lookups(records: &[Record]) -> Vec<(i64, u64, bool)> {
    records
        .iter()
        .filter_map(|r| match r.event {
            Event::IotlbHit { asid, addr, .. } => Some((asid, addr & PAGE_MASK, true)),
            Event::IotlbMiss { asid, addr, .. } => Some((asid, addr & PAGE_MASK, false)),
            _ => None,
        })
        .collect()
}

/// Whether `records` hold an invalidation of (`asid`, `page`): by address (single or range
/// form) or of the whole ASID.
fn invalidates(records: &[Record], asid: i64, page: u64) -> bool {
    records.iter().any(|r| match r.event {
        Event::RangeInval {
            asid: a,
            addr,
            tg,
            num_pages,
            ..
        } => {
            let first = addr & PAGE_MASK;
            let pages = if tg == 0 { 1 } else { num_pages.max(1) };
            a == asid && page >= first && page < first + pages * 0x1000
        }
        Event::TlbiNhAsid { asid: a } => a == asid,
        Event::TlbiAll => true,
        _ => false,
    })
}

fn inserted(records: &[Record], asid: i64, page: u64) -> bool {
    records.iter().any(|r| {
        matches!(r.event, Event::IotlbInsert { asid: a, addr, .. } if a == asid && addr & PAGE_MASK == page)
    })
}

/// The retry cap of the kernel's scenarios and the events one 64-byte faulting write makes.
const RETRIES: usize = 8;

/// Run every check on a console transcript and its trace.
pub fn check(console: &str, records: &[Record]) -> Vec<Check> {
    let mut out = Vec::new();
    let windows = match windows(console, records) {
        Ok(w) => w,
        Err(e) => {
            out.push(Check {
                name: "trace marks".into(),
                ok: false,
                detail: e,
            });
            return out;
        }
    };
    if windows.is_empty() {
        out.push(Check {
            name: "trace marks".into(),
            ok: false,
            detail: "no flush under test was marked (was smmu.trace_marks given?)".into(),
        });
    }
    for w in &windows {
        let test = w.test.rsplit("::").next().unwrap_or(&w.test).to_string();
        let inside = &records[w.begin..=w.end];
        let before = &records[w.before_start..w.begin];
        let after = &records[w.end..w.after_end];
        let seen = commands(inside);
        let mut push = |what: &str, ok: bool, detail: String| {
            out.push(Check {
                name: format!("{test} (flush {}): {what}", w.seq),
                ok,
                detail,
            })
        };
        let (k_va, k_asid, k_sync) = w.kernel;
        push(
            "QEMU consumed the commands the kernel counted",
            seen.nh_va == k_va && seen.nh_asid == k_asid && seen.sync == k_sync,
            format!("trace: {seen}; kernel: NH_VA {k_va}, NH_ASID {k_asid}, SYNC {k_sync}"),
        );
        let nc = test.contains("_nc_");
        if test == "s01_permission_upgrade" {
            let inv = range_invalidations(inside);
            match inv.as_slice() {
                [(asid, page)] => {
                    push(
                        "read-only IOTLB insert of P before the invalidation",
                        inserted(before, *asid, *page),
                        format!("ASID {asid}, P {page:#x}"),
                    );
                    let next = first_lookup(after, *asid, *page);
                    push(
                        "the device's next translation of P walks afresh",
                        next == Some(false),
                        format!("first lookup of P after the flush: {next:?} (Some(false) = miss)"),
                    );
                    let faults = permission_faults(after)
                        .iter()
                        .filter(|&&p| p == *page)
                        .count();
                    push(
                        "no permission fault at P afterwards",
                        faults == 0,
                        format!("{faults} faults"),
                    );
                }
                other => push(
                    "exactly one invalidation by address, covering P",
                    false,
                    format!("range invalidations in the window: {other:?}"),
                ),
            }
        } else if test == "s01_permission_upgrade_nc_legacy" {
            push(
                "no invalidation reaches the SMMU",
                seen.nh_va == 0 && seen.nh_asid == 0 && seen.other == 0,
                format!("{seen}"),
            );
            let faults = permission_faults(after);
            let page = faults.first().copied();
            let at_p = page.map_or(0, |p| faults.iter().filter(|&&f| f == p).count());
            let records_for_device = permission_records(after);
            let hits = match page {
                Some(p) => after
                    .iter()
                    .filter(|r| matches!(r.event, Event::IotlbHit { addr, .. } if addr & PAGE_MASK == p))
                    .count(),
                None => 0,
            };
            push(
                "the device keeps faulting with F_PERMISSION at P on every retry",
                at_p >= RETRIES * 16 && at_p == faults.len(),
                format!(
                    "{at_p} permission faults at {page:x?}, {} in all",
                    faults.len()
                ),
            );
            push(
                "the faults come from the stale IOTLB entry of P",
                hits >= RETRIES,
                format!("{hits} IOTLB hits on P after the flush"),
            );
            push(
                "F_PERMISSION records for the device's StreamID",
                records_for_device.len() >= RETRIES * 16
                    && records_for_device.windows(2).all(|w| w[0] == w[1]),
                format!(
                    "{} records, StreamIDs {:x?}",
                    records_for_device.len(),
                    records_for_device.first()
                ),
            );
        } else if test.starts_with("s07_") || test.starts_with("s08_") {
            if nc {
                push(
                    "no invalidation reaches the SMMU",
                    seen.nh_va == 0 && seen.nh_asid == 0,
                    format!("{seen}"),
                );
                let faults = permission_faults(after).len();
                push(
                    "the device faults on the stale entries",
                    faults > 0,
                    format!("{faults} permission faults"),
                );
            } else if test.starts_with("s08_") {
                push(
                    "exactly one TLBI_NH_ASID and one CMD_SYNC",
                    seen.nh_asid == 1 && seen.sync == 1 && seen.nh_va == 0 && seen.other == 0,
                    format!("{seen}"),
                );
            } else {
                // 512 and 600 pages: one command whatever the policy — ASID-wide under
                // `smmu.inval=linux66`, one range command under `precise` — and one CMD_SYNC.
                push(
                    "exactly one invalidation command and one CMD_SYNC",
                    seen.nh_asid + seen.nh_va == 1 && seen.sync == 1 && seen.other == 0,
                    format!("{seen}"),
                );
            }
        } else if test == "s09_asid_flush_is_precise" {
            let flushed: Vec<i64> = inside
                .iter()
                .filter_map(|r| match r.event {
                    Event::TlbiNhAsid { asid } => Some(asid),
                    _ => None,
                })
                .collect();
            match flushed.as_slice() {
                [a] => {
                    let lookups: Vec<(i64, bool)> = after
                        .iter()
                        .filter_map(|r| match r.event {
                            Event::IotlbHit { asid, .. } => Some((asid, true)),
                            Event::IotlbMiss { asid, .. } => Some((asid, false)),
                            _ => None,
                        })
                        .collect();
                    let other_hit = lookups.iter().any(|&(asid, hit)| asid != *a && hit);
                    let a_first = lookups
                        .iter()
                        .find(|&&(asid, _)| asid == *a)
                        .map(|&(_, h)| h);
                    push(
                        "the flushed ASID misses afterwards",
                        a_first == Some(false),
                        format!("ASID {a}: first lookup {a_first:?} (Some(false) = miss)"),
                    );
                    push(
                        "the other address space's ASID still hits its cached entry",
                        other_hit,
                        format!("lookups after the flush: {lookups:?}"),
                    );
                }
                other => push("exactly one TLBI_NH_ASID", false, format!("{other:?}")),
            }
        } else if test.starts_with("s14_nested_unmap") || test.starts_with("s15_move_range") {
            // s14: the page the device writes right after the nested batch; s15: the old
            // address, the page the device used last before the move.
            let page = if test.starts_with("s14") {
                lookups(after).first().copied()
            } else {
                lookups(before).last().copied()
            };
            let Some((asid, page, _)) = page else {
                push(
                    "a device translation of the page under test",
                    false,
                    "no IOTLB lookup found".into(),
                );
                continue;
            };
            let next = first_lookup(after, asid, page);
            if nc {
                push(
                    "no invalidation reaches the SMMU inside the window",
                    seen.nh_va == 0 && seen.nh_asid == 0 && seen.other == 0,
                    format!("{seen}"),
                );
                push(
                    "the device's next translation of the page hits the stale entry",
                    next == Some(true),
                    format!(
                        "ASID {asid}, page {page:#x}: first lookup {next:?} (Some(true) = hit)"
                    ),
                );
            } else {
                push(
                    "an invalidation covering the page inside the window",
                    invalidates(inside, asid, page) && seen.sync >= 1,
                    format!("ASID {asid}, page {page:#x}; {seen}"),
                );
                push(
                    "the device's next translation of the page walks afresh",
                    next == Some(false),
                    format!(
                        "ASID {asid}, page {page:#x}: first lookup {next:?} (Some(false) = miss)"
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::parse;

    const CONSOLE_OK: &str = "\
trace-mark flush-begin seq=0 test=scenarios::permission::s01_permission_upgrade
trace-mark flush-end seq=0 nh_va=1 nh_va_range=0 nh_asid=0 sync=1
test scenarios::permission::s01_permission_upgrade ... ok
";

    const TRACE_OK: &str = "\
smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x4000000000 hit=0 miss=1 hit rate=0
smmu_iotlb_insert IOTLB ++ asid=1 addr=0x4000000000 tg=1 level=3
smmuv3_write_mmio addr: 0x70 val:0x7eb00000 size: 0x4(0)
smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA
smmuv3_s1_range_inval vmid=0 asid=1 addr=0x4000000000 tg=0 num_pages=0x1 ttl=0 leaf=0
smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC
smmuv3_write_mmio addr: 0x70 val:0x7ee00000 size: 0x4(0)
smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x4000000000 hit=0 miss=2 hit rate=0
smmu_iotlb_insert IOTLB ++ asid=1 addr=0x4000000000 tg=1 level=3
";

    fn failures(checks: &[Check]) -> Vec<&Check> {
        checks.iter().filter(|c| !c.ok).collect()
    }

    #[test]
    fn crux_passes_on_a_correct_trace() {
        let checks = check(CONSOLE_OK, &parse(TRACE_OK));
        assert!(checks.len() >= 4, "{checks:?}");
        assert!(failures(&checks).is_empty(), "{:?}", failures(&checks));
    }

    #[test]
    fn crux_fails_without_the_invalidation_or_with_a_stale_hit() {
        // The kernel claims a TLBI QEMU never consumed.
        let no_tlbi = TRACE_OK
            .replace("smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA\n", "")
            .replace("smmuv3_s1_range_inval vmid=0 asid=1 addr=0x4000000000 tg=0 num_pages=0x1 ttl=0 leaf=0\n", "");
        assert!(!failures(&check(CONSOLE_OK, &parse(&no_tlbi))).is_empty());
        // An invalidation of the wrong ASID leaves P cached: the next lookup hits.
        let wrong = TRACE_OK
            .replace(
                "asid=1 addr=0x4000000000 tg=0",
                "asid=7 addr=0x4000000000 tg=0",
            )
            .replace(
                "smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x4000000000 hit=0 miss=2",
                "smmu_iotlb_lookup_hit IOTLB cache HIT asid=1 addr=0x4000000000 hit=1 miss=1",
            );
        let f = check(CONSOLE_OK, &parse(&wrong));
        assert!(
            failures(&f).iter().any(|c| c.name.contains("insert of P")),
            "{f:?}"
        );
        // A count mismatch alone fails too.
        let console = CONSOLE_OK.replace("sync=1", "sync=2");
        let f = check(&console, &parse(TRACE_OK));
        assert!(
            failures(&f)
                .iter()
                .any(|c| c.name.contains("kernel counted")),
            "{f:?}"
        );
    }

    #[test]
    fn negative_control_needs_continual_permission_faults() {
        let console = "\
trace-mark flush-begin seq=3 test=scenarios::permission::s01_permission_upgrade_nc_legacy
trace-mark flush-end seq=3 nh_va=0 nh_va_range=0 nh_asid=0 sync=0
";
        let mut trace = String::from(
            "smmu_iotlb_insert IOTLB ++ asid=2 addr=0x4000000000 tg=1 level=3\n\
             smmuv3_write_mmio addr: 0x70 val:0x7eb00003 size: 0x4(0)\n\
             smmuv3_write_mmio addr: 0x70 val:0x7ee00003 size: 0x4(0)\n",
        );
        for _ in 0..8 {
            trace.push_str("smmu_iotlb_lookup_hit IOTLB cache HIT asid=2 addr=0x4000000000 hit=1 miss=1 hit rate=50\n");
            for chunk in 0..16 {
                trace.push_str(&format!(
                    "smmuv3-iommu-memory-region-8-1 translation failed for iova=0x{:x} (SMMU_EVT_F_PERMISSION)\n\
                     smmuv3_record_event SMMU_EVT_F_PERMISSION sid=0x8\n",
                    0x40_0000_0000u64 + chunk * 4
                ));
            }
        }
        let checks = check(console, &parse(&trace));
        assert!(failures(&checks).is_empty(), "{:?}", failures(&checks));
        // Only one faulting retry: the control would be blind.
        let short: String = trace
            .lines()
            .take(1 + 2 + 1 + 32)
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!failures(&check(console, &parse(&short))).is_empty());
    }

    #[test]
    fn asid_precision_needs_a_miss_for_the_flushed_asid_and_a_hit_for_the_other() {
        let console = "\
trace-mark flush-begin seq=0 test=scenarios::sharing::s09_asid_flush_is_precise
trace-mark flush-end seq=0 nh_va=0 nh_va_range=0 nh_asid=1 sync=1
";
        let trace = "\
smmuv3_write_mmio addr: 0x70 val:0x7eb00000 size: 0x4(0)
smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_ASID
smmuv3_cmdq_tlbi_nh_asid asid=1
smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC
smmuv3_write_mmio addr: 0x70 val:0x7ee00000 size: 0x4(0)
smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x4000009000 hit=1 miss=4 hit rate=20
smmu_iotlb_lookup_hit IOTLB cache HIT asid=2 addr=0x4000009000 hit=3 miss=2 hit rate=60
";
        let checks = check(console, &parse(trace));
        assert!(failures(&checks).is_empty(), "{:?}", failures(&checks));
        let imprecise = trace
            .replace("HIT asid=2", "MISS asid=2")
            .replace("lookup_hit", "lookup_miss");
        assert!(!failures(&check(console, &parse(&imprecise))).is_empty());
    }

    #[test]
    fn move_range_needs_the_old_address_invalidated_and_missed_and_its_control_a_hit() {
        let console = "\
trace-mark flush-begin seq=0 test=scenarios::moves::s15_move_range
trace-mark flush-end seq=0 nh_va=1 nh_va_range=0 nh_asid=0 sync=1
trace-mark flush-begin seq=1 test=scenarios::moves::s15_move_range_nc_move_late
trace-mark flush-end seq=1 nh_va=0 nh_va_range=0 nh_asid=0 sync=0
";
        let trace = "\
smmu_iotlb_lookup_hit IOTLB cache HIT asid=1 addr=0x4000500000 hit=1 miss=1 hit rate=50
smmuv3_write_mmio addr: 0x70 val:0x7eb00000 size: 0x4(0)
smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA
smmuv3_s1_range_inval vmid=0 asid=1 addr=0x4000500000 tg=0 num_pages=0x1 ttl=0 leaf=0
smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC
smmuv3_write_mmio addr: 0x70 val:0x7ee00000 size: 0x4(0)
smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x4000500000 hit=1 miss=2 hit rate=33
smmu_iotlb_lookup_hit IOTLB cache HIT asid=2 addr=0x4000500000 hit=2 miss=2 hit rate=50
smmuv3_write_mmio addr: 0x70 val:0x7eb00001 size: 0x4(0)
smmuv3_write_mmio addr: 0x70 val:0x7ee00001 size: 0x4(0)
smmu_iotlb_lookup_hit IOTLB cache HIT asid=2 addr=0x4000500000 hit=3 miss=2 hit rate=60
";
        let checks = check(console, &parse(trace));
        assert!(checks.len() >= 6, "{checks:?}");
        assert!(failures(&checks).is_empty(), "{:?}", failures(&checks));
        // An invalidation of another page does not cover the old address.
        let elsewhere = trace.replace(
            "asid=1 addr=0x4000500000 tg=0",
            "asid=1 addr=0x4000600000 tg=0",
        );
        assert!(
            failures(&check(console, &parse(&elsewhere)))
                .iter()
                .any(|c| c.name.contains("covering the page"))
        );
        // A control whose device walked afresh saw no stale entry: it would be blind.
        let walked = trace.replace(
            "val:0x7ee00001 size: 0x4(0)\nsmmu_iotlb_lookup_hit IOTLB cache HIT asid=2",
            "val:0x7ee00001 size: 0x4(0)\nsmmu_iotlb_lookup_miss IOTLB cache MISS asid=2",
        );
        assert!(
            failures(&check(console, &parse(&walked)))
                .iter()
                .any(|c| c.name.contains("stale entry"))
        );
    }

    #[test]
    fn unmatched_marks_are_a_failure() {
        let checks = check(
            CONSOLE_OK,
            &parse("smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n"),
        );
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].ok);
        let none = check("", &parse(""));
        assert!(
            !none[0].ok,
            "no marks at all means the oracle checked nothing"
        );
    }
}
