//! Parser for QEMU's SMMU trace log, the file written with `QEMU_TRACE_FILE` (scripts/qemu-run
//! passes `-trace 'smmu*' -d guest_errors -D FILE`). The base for trace oracles: checks that
//! the kernel issued the invalidations it should, and that the device saw no stale entry.
//!
//! Log-backend lines look like `smmu_iotlb_insert IOTLB ++ asid=5 addr=0x200000 tg=1 level=3`,
//! with `-msg timestamp=on` prefixed by `pid@secs.usecs:`. Arguments are read as `key=value`
//! words, so the extra fields newer QEMUs add (`vmid=`, `stage=`, `mask=`) are picked up when
//! present and do not break older lines. Handles the renames of 8.1+
//! (`smmuv3_s1_range_inval` → `smmuv3_range_inval`, `smmu_iotlb_inv_asid` →
//! `smmu_iotlb_inv_asid_vmid`, `smmuv3_cmdq_tlbi_nsnh`).

use std::{io, path::Path};

/// One parsed line of the trace log.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The QEMU process id, with `-msg timestamp=on`.
    pub pid: Option<u32>,
    /// Host time in seconds, with `-msg timestamp=on`.
    pub time: Option<f64>,
    /// The event.
    pub event: Event,
}

/// A trace event (or guest-error line) the oracles care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `smmuv3_cmdq_opcode "<--- SMMU_CMD_xxx"`: one command fetched from the queue.
    Command {
        /// `SMMU_CMD_TLBI_NH_VA`, `SMMU_CMD_SYNC`, ... (`INVALID`/`UNKNOWN` for bad opcodes).
        name: String,
    },
    /// `smmuv3_cmdq_consume_error "Error on <cmd> command execution: <err>"`.
    CommandError {
        /// The command's name.
        name: String,
        /// The CERROR code.
        error: u32,
    },
    /// An address-range invalidation (TLBI_NH_VA/VAA): `smmuv3_s1_range_inval` (7.2) or
    /// `smmuv3_range_inval` (8.1+, adds `stage=`).
    RangeInval {
        /// VMID (-1 when stage 2 is not in use on newer QEMUs).
        vmid: i64,
        /// ASID (-1 for VAA).
        asid: i64,
        /// First address.
        addr: u64,
        /// Translation granule field (0: no range).
        tg: u64,
        /// Number of pages.
        num_pages: u64,
        /// TTL hint.
        ttl: u64,
        /// Leaf-only.
        leaf: bool,
        /// Stage (8.1+ only).
        stage: Option<u64>,
    },
    /// `smmuv3_cmdq_tlbi_nh_asid asid=N`: TLBI_NH_ASID.
    TlbiNhAsid {
        /// The ASID.
        asid: i64,
    },
    /// `smmuv3_cmdq_tlbi_nh` / `smmuv3_cmdq_tlbi_nsnh`: TLBI_NH_ALL or TLBI_NSNH_ALL.
    TlbiAll,
    /// `smmu_iotlb_insert "IOTLB ++ asid= [vmid=] addr= tg= level="`.
    IotlbInsert {
        /// ASID.
        asid: i64,
        /// VMID (8.1+).
        vmid: Option<i64>,
        /// Input address.
        addr: u64,
        /// Granule field.
        tg: u64,
        /// Level of the leaf.
        level: u64,
    },
    /// `smmu_iotlb_lookup_hit`: a translation served from the IOTLB.
    IotlbHit {
        /// ASID.
        asid: i64,
        /// VMID (8.1+).
        vmid: Option<i64>,
        /// Input address.
        addr: u64,
    },
    /// `smmu_iotlb_lookup_miss`: a translation that walked the tables.
    IotlbMiss {
        /// ASID.
        asid: i64,
        /// VMID (8.1+).
        vmid: Option<i64>,
        /// Input address.
        addr: u64,
    },
    /// `smmu_iotlb_inv_all`: from NH_ALL/NSNH_ALL, or the 256-entry overflow flush.
    IotlbInvAll,
    /// `smmu_iotlb_inv_asid` (7.2) / `smmu_iotlb_inv_asid_vmid` (8.1+).
    IotlbInvAsid {
        /// ASID.
        asid: i64,
    },
    /// `smmuv3_record_event "<type> sid=<sid>"` (`smmuv3_propagate_event` on 11.x): an event
    /// written to the event queue.
    RecordEvent {
        /// `SMMU_EVT_F_PERMISSION`, `SMMU_EVT_F_TRANSLATION`, ...
        kind: String,
        /// StreamID.
        sid: u64,
    },
    /// A `-d guest_errors` line `<region> translation failed for iova=0x… (<detail>)`:
    /// every fault, recorded as an event or not.
    TranslationFailed {
        /// The IOMMU memory region (names the StreamID), e.g. `smmuv3-iommu-memory-region-8-1`.
        region: String,
        /// The faulting input address.
        iova: u64,
        /// The event type and whether it was recorded.
        detail: String,
    },
    /// Any other trace event, unparsed.
    Other {
        /// The event name.
        name: String,
        /// Its arguments, verbatim.
        args: String,
    },
}

/// Read and parse a trace log.
pub fn read(path: &Path) -> io::Result<Vec<Record>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// Parse a whole trace log; lines that are neither trace events nor translation failures
/// (other guest errors, blank lines) are skipped.
pub fn parse(text: &str) -> Vec<Record> {
    text.lines().filter_map(parse_line).collect()
}

/// Parse one line of the trace log.
pub fn parse_line(line: &str) -> Option<Record> {
    let line = line.trim_end_matches('\r');
    let (pid, time, rest) = split_prefix(line);
    if let Some(event) = translation_failed(rest) {
        return Some(Record { pid, time, event });
    }
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let is_event_name = name.contains('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_event_name {
        return None;
    }
    let event = event(name, args.trim()).unwrap_or_else(|| Event::Other {
        name: name.to_string(),
        args: args.trim().to_string(),
    });
    Some(Record { pid, time, event })
}

/// Split off `pid@secs.usecs:`.
fn split_prefix(line: &str) -> (Option<u32>, Option<f64>, &str) {
    if let Some((prefix, rest)) = line.split_once(':')
        && let Some((pid, time)) = prefix.split_once('@')
        && let (Ok(pid), Ok(time)) = (pid.parse(), time.parse())
    {
        return (Some(pid), Some(time), rest);
    }
    (None, None, line)
}

/// The typed event for `name` with `args`; None if it is not one of the typed events or its
/// arguments do not parse (it then becomes [`Event::Other`]).
fn event(name: &str, args: &str) -> Option<Event> {
    let kv = Fields(args);
    Some(match name {
        "smmuv3_cmdq_opcode" => Event::Command {
            name: args.strip_prefix("<---")?.trim().to_string(),
        },
        "smmuv3_cmdq_consume_error" => {
            let rest = args.strip_prefix("Error on ")?;
            let (cmd, err) = rest.split_once(" command execution:")?;
            Event::CommandError {
                name: cmd.to_string(),
                error: err.trim().parse().ok()?,
            }
        }
        "smmuv3_s1_range_inval" | "smmuv3_range_inval" => Event::RangeInval {
            vmid: kv.int("vmid")?,
            asid: kv.int("asid")?,
            addr: kv.uint("addr")?,
            tg: kv.uint("tg")?,
            num_pages: kv.uint("num_pages")?,
            ttl: kv.uint("ttl")?,
            leaf: kv.uint("leaf")? != 0,
            stage: kv.uint("stage"),
        },
        "smmuv3_cmdq_tlbi_nh_asid" => Event::TlbiNhAsid {
            asid: kv.int("asid")?,
        },
        "smmuv3_cmdq_tlbi_nh" | "smmuv3_cmdq_tlbi_nsnh" => Event::TlbiAll,
        "smmu_iotlb_insert" => Event::IotlbInsert {
            asid: kv.int("asid")?,
            vmid: kv.int("vmid"),
            addr: kv.uint("addr")?,
            tg: kv.uint("tg")?,
            level: kv.uint("level")?,
        },
        "smmu_iotlb_lookup_hit" => Event::IotlbHit {
            asid: kv.int("asid")?,
            vmid: kv.int("vmid"),
            addr: kv.uint("addr")?,
        },
        "smmu_iotlb_lookup_miss" => Event::IotlbMiss {
            asid: kv.int("asid")?,
            vmid: kv.int("vmid"),
            addr: kv.uint("addr")?,
        },
        "smmu_iotlb_inv_all" => Event::IotlbInvAll,
        "smmu_iotlb_inv_asid" | "smmu_iotlb_inv_asid_vmid" => Event::IotlbInvAsid {
            asid: kv.int("asid")?,
        },
        // 7.2 to 10.x name it `smmuv3_record_event`; 11.x `smmuv3_propagate_event` (same
        // arguments).
        "smmuv3_record_event" | "smmuv3_propagate_event" => Event::RecordEvent {
            kind: args.split_whitespace().next()?.to_string(),
            sid: kv.uint("sid")?,
        },
        _ => return None,
    })
}

/// `<region> translation failed for iova=0x… (<detail>)`.
fn translation_failed(line: &str) -> Option<Event> {
    let (region, rest) = line.split_once(" translation failed for iova=")?;
    let (iova, detail) = rest.split_once(' ').unwrap_or((rest, ""));
    let detail = detail.trim();
    let detail = detail
        .strip_prefix('(')
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or(detail);
    Some(Event::TranslationFailed {
        region: region.trim().to_string(),
        iova: number(iova)?.try_into().ok()?,
        detail: detail.to_string(),
    })
}

/// `key=value` words of an argument string.
struct Fields<'a>(&'a str);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_end_matches(','))
    }

    fn int(&self, key: &str) -> Option<i64> {
        i64::try_from(number(self.get(key)?)?).ok()
    }

    fn uint(&self, key: &str) -> Option<u64> {
        u64::try_from(number(self.get(key)?)?).ok()
    }
}

/// `0x…` hexadecimal or (possibly negative) decimal.
fn number(s: &str) -> Option<i128> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => i128::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(line: &str) -> Event {
        parse_line(line)
            .unwrap_or_else(|| panic!("no event in {line:?}"))
            .event
    }

    #[test]
    fn commands_and_errors() {
        assert_eq!(
            ev("smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA"),
            Event::Command {
                name: "SMMU_CMD_TLBI_NH_VA".into()
            }
        );
        assert_eq!(
            ev("smmuv3_cmdq_consume_error Error on SMMU_CMD_CFGI_ALL command execution: 1"),
            Event::CommandError {
                name: "SMMU_CMD_CFGI_ALL".into(),
                error: 1
            }
        );
        assert_eq!(ev("smmuv3_cmdq_tlbi_nh "), Event::TlbiAll);
        assert_eq!(ev("smmuv3_cmdq_tlbi_nh vmid=-1"), Event::TlbiAll);
        assert_eq!(ev("smmuv3_cmdq_tlbi_nsnh "), Event::TlbiAll);
        assert_eq!(
            ev("smmuv3_cmdq_tlbi_nh_asid asid=5"),
            Event::TlbiNhAsid { asid: 5 }
        );
    }

    #[test]
    fn range_invalidation_in_both_versions() {
        // QEMU 7.2
        assert_eq!(
            ev("smmuv3_s1_range_inval vmid=0 asid=5 addr=0x200000 tg=1 num_pages=0x1 ttl=3 leaf=1"),
            Event::RangeInval {
                vmid: 0,
                asid: 5,
                addr: 0x20_0000,
                tg: 1,
                num_pages: 1,
                ttl: 3,
                leaf: true,
                stage: None
            }
        );
        // QEMU 8.1+ (stage= from 9.x)
        assert_eq!(
            ev(
                "smmuv3_range_inval vmid=-1 asid=7 addr=0x7f000 tg=0 num_pages=0x10 ttl=0 leaf=0 stage=1"
            ),
            Event::RangeInval {
                vmid: -1,
                asid: 7,
                addr: 0x7_f000,
                tg: 0,
                num_pages: 16,
                ttl: 0,
                leaf: false,
                stage: Some(1)
            }
        );
    }

    #[test]
    fn iotlb_lines_with_and_without_vmid_and_timestamps() {
        assert_eq!(
            ev("smmu_iotlb_insert IOTLB ++ asid=5 addr=0x200000 tg=1 level=3"),
            Event::IotlbInsert {
                asid: 5,
                vmid: None,
                addr: 0x20_0000,
                tg: 1,
                level: 3
            }
        );
        assert_eq!(
            ev("smmu_iotlb_insert IOTLB ++ asid=5 vmid=-1 addr=0x200000 tg=1 level=3 stage=1"),
            Event::IotlbInsert {
                asid: 5,
                vmid: Some(-1),
                addr: 0x20_0000,
                tg: 1,
                level: 3
            }
        );
        let r = parse_line(
            "18368@1795288714.444714:smmu_iotlb_lookup_hit IOTLB cache HIT asid=5 addr=0x201000 hit=3 miss=1 hit rate=75",
        )
        .unwrap();
        assert_eq!(r.pid, Some(18368));
        assert!((r.time.unwrap() - 1_795_288_714.444_714).abs() < 1e-3);
        assert_eq!(
            r.event,
            Event::IotlbHit {
                asid: 5,
                vmid: None,
                addr: 0x20_1000
            }
        );
        assert_eq!(
            ev(
                "smmu_iotlb_lookup_hit IOTLB cache HIT asid=5 vmid=-1 addr=0x201000 mask=0xfff hit=3 miss=1 hit rate=75"
            ),
            Event::IotlbHit {
                asid: 5,
                vmid: Some(-1),
                addr: 0x20_1000
            }
        );
        assert_eq!(
            ev(
                "smmu_iotlb_lookup_miss IOTLB cache MISS asid=5 addr=0x1000 hit=0 miss=1 hit rate=0"
            ),
            Event::IotlbMiss {
                asid: 5,
                vmid: None,
                addr: 0x1000
            }
        );
        assert_eq!(
            ev("smmu_iotlb_inv_all IOTLB invalidate all"),
            Event::IotlbInvAll
        );
        assert_eq!(
            ev("smmu_iotlb_inv_asid IOTLB invalidate asid=5"),
            Event::IotlbInvAsid { asid: 5 }
        );
        assert_eq!(
            ev("smmu_iotlb_inv_asid_vmid IOTLB invalidate asid=5 vmid=-1"),
            Event::IotlbInvAsid { asid: 5 }
        );
    }

    #[test]
    fn events_and_guest_errors() {
        assert_eq!(
            ev("smmuv3_propagate_event SMMU_EVT_F_PERMISSION sid=0x8"),
            Event::RecordEvent {
                kind: "SMMU_EVT_F_PERMISSION".into(),
                sid: 8
            },
            "the 11.x name"
        );
        assert_eq!(
            ev("smmuv3_record_event SMMU_EVT_F_PERMISSION sid=0x8"),
            Event::RecordEvent {
                kind: "SMMU_EVT_F_PERMISSION".into(),
                sid: 8
            }
        );
        assert_eq!(
            ev(
                "smmuv3-iommu-memory-region-8-1 translation failed for iova=0x201000 (SMMU_EVT_F_PERMISSION | no recorded event)"
            ),
            Event::TranslationFailed {
                region: "smmuv3-iommu-memory-region-8-1".into(),
                iova: 0x20_1000,
                detail: "SMMU_EVT_F_PERMISSION | no recorded event".into()
            }
        );
        // Other guest errors and noise are skipped.
        assert_eq!(
            parse_line(
                "Invalid write at addr 0x40000000, size 4, region '(null)', reason: rejected"
            ),
            None
        );
        assert_eq!(parse_line("Illegal command type: 127"), None);
        assert_eq!(parse_line("invalid STE"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn other_events_and_malformed_known_ones() {
        assert_eq!(
            ev("smmu_add_mr smmuv3-iommu-memory-region-8-1"),
            Event::Other {
                name: "smmu_add_mr".into(),
                args: "smmuv3-iommu-memory-region-8-1".into()
            }
        );
        // A known event whose arguments changed beyond recognition is kept, not dropped.
        assert!(matches!(
            ev("smmu_iotlb_insert something new"),
            Event::Other { .. }
        ));
    }

    #[test]
    fn whole_log() {
        let log = "smmu_add_mr smmuv3-iommu-memory-region-0-0\n\
                   smmuv3_cmdq_opcode <--- SMMU_CMD_CFGI_STE_RANGE\n\
                   smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NSNH_ALL\n\
                   smmuv3_cmdq_tlbi_nh \n\
                   smmu_iotlb_inv_all IOTLB invalidate all\n\
                   smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n\
                   Invalid read at addr 0x0, size 4, region '(null)', reason: rejected\n";
        let records = parse(log);
        assert_eq!(records.len(), 6);
        let commands: Vec<_> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Command { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            commands,
            [
                "SMMU_CMD_CFGI_STE_RANGE",
                "SMMU_CMD_TLBI_NSNH_ALL",
                "SMMU_CMD_SYNC"
            ]
        );
    }
}
