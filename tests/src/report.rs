//! `harness report`: the invalidation cost report — commands, `CMD_SYNC`s and collateral loss
//! per flush shape and `smmu.inval` policy, measured from QEMU's own trace, as a Markdown
//! table and an SVG plot in `target/report/`.
//!
//! The kernel's `scenarios::costs::inval_costs` test runs every shape once per boot and prints
//! one `inval-cost` line per shape right after the shape's trace-marked flush window (see
//! [`crate::oracle`] for the marks). For each line this module takes the window and counts,
//! from the trace alone:
//!
//! - the commands QEMU consumed inside the window (`TLBI_NH_VA` in either form,
//!   `TLBI_NH_ASID`, `CMD_SYNC`), which must equal what the kernel counted;
//! - the collateral loss: the working-set pages (cached by the device before the flush, never
//!   changed: 64 far away, 16 right after the changed range) whose first IOTLB lookup after the
//!   window is a miss — entries the flush threw away although nothing about them changed.
//!
//! It then checks the claims over the measured table — `precise` never issues more
//! commands than `linux66` or `linux-latest` for any shape, and with range invalidation loses
//! strictly fewer unrelated entries than `linux66` for every partial range of 512 pages or more
//! and for 2 MiB blocks — and prints one `report <check> ... ok|FAILED` line each.

use crate::{
    Error, build,
    console::{self, Summary},
    oracle,
    qemu::{self, RunConfig},
    trace, verdict,
};
use std::{fmt::Write as _, path::Path, time::Duration};

/// The policies compared, in the kernel's boot-argument spelling.
pub const POLICIES: [&str; 3] = ["linux66", "linux-latest", "precise"];

/// One measured flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The shape's name.
    pub shape: String,
    /// Pages the change covered.
    pub pages: u64,
    /// The policy.
    pub policy: String,
    /// Invalidation commands QEMU consumed in the window (all kinds but `CMD_SYNC`).
    pub commands: u64,
    /// `CMD_SYNC`s QEMU consumed in the window.
    pub syncs: u64,
    /// Working-set pages whose next translation missed.
    pub lost: u64,
    /// Working-set pages checked.
    pub working_set: u64,
    /// The kernel's own count of invalidation commands agreed with the trace.
    pub counts_agree: bool,
    /// Guest time of the change and its flush, in ns (virtual time under icount).
    pub guest_ns: u64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn number(line: &str, key: &str) -> Result<u64, String> {
    let v = field(line, key).ok_or_else(|| format!("no {key}= in {line}"))?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .map_err(|_| format!("bad {key}={v} in {line}"))
}

/// Pair the console's `inval-cost` lines with their windows and measure each from `records`.
///
/// # Errors
/// A description of the first inconsistency (missing marks, a line without its window).
pub fn measure(console: &str, records: &[trace::Record]) -> Result<Vec<Row>, String> {
    let windows = oracle::windows(console, records)?;
    let lines: Vec<&str> = console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("inval-cost "))
        .collect();
    if lines.len() != windows.len() {
        return Err(format!(
            "{} inval-cost lines but {} marked windows",
            lines.len(),
            windows.len()
        ));
    }
    let mut rows = Vec::new();
    for (line, w) in lines.iter().zip(&windows) {
        let shape = line
            .split('"')
            .nth(1)
            .ok_or_else(|| format!("no shape in {line}"))?
            .to_string();
        let asid = number(line, "asid")? as i64;
        let ws_va = number(line, "ws_va")?;
        let ws_pages = number(line, "ws_pages")?;
        let nb_va = number(line, "nb_va")?;
        let nb_pages = number(line, "nb_pages")?;
        let inside = &records[w.begin..=w.end];
        let after = &records[w.end..w.after_end];
        let seen = oracle::commands(inside);
        let kernel = number(line, "nh_va")?
            + number(line, "range")?
            + number(line, "nh_asid")?
            + number(line, "nh_all")?;
        let commands = seen.nh_va + seen.nh_asid + seen.other;
        let missed = |base: u64, pages: u64| {
            (0..pages)
                .filter(|i| oracle::first_lookup(after, asid, base + i * 0x1000) == Some(false))
                .count() as u64
        };
        let lost = missed(ws_va, ws_pages) + missed(nb_va, nb_pages);
        rows.push(Row {
            shape,
            pages: number(line, "pages")?,
            policy: field(line, "policy").unwrap_or("?").to_string(),
            commands,
            syncs: seen.sync,
            lost,
            working_set: ws_pages + nb_pages,
            counts_agree: kernel == commands && number(line, "sync")? == seen.sync,
            guest_ns: number(line, "guest_ns").unwrap_or(0),
        });
    }
    Ok(rows)
}

/// Check the claims over a full table measured with range invalidation (`ril`) or without;
/// `(name, ok, detail)` per check. Without RIL every policy keeps the ASID threshold for page
/// ranges, so only whole blocks (one single-address command for `precise`) must lose less.
pub fn checks(rows: &[Row], ril: bool) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let find =
        |shape: &str, policy: &str| rows.iter().find(|r| r.shape == shape && r.policy == policy);
    let mut shapes: Vec<&str> = Vec::new();
    for r in rows {
        if !shapes.contains(&r.shape.as_str()) {
            shapes.push(&r.shape);
        }
    }
    for r in rows {
        out.push((
            format!(
                "{} / {}: QEMU consumed what the kernel counted",
                r.shape, r.policy
            ),
            r.counts_agree,
            format!("{} commands, {} CMD_SYNC", r.commands, r.syncs),
        ));
    }
    for shape in shapes {
        let (Some(l66), Some(latest), Some(precise)) = (
            find(shape, "linux66"),
            find(shape, "linux-latest"),
            find(shape, "precise"),
        ) else {
            out.push((
                format!("{shape}: measured under every policy"),
                false,
                String::new(),
            ));
            continue;
        };
        out.push((
            format!("{shape}: precise issues no more commands than linux66 and linux-latest"),
            precise.commands <= l66.commands && precise.commands <= latest.commands,
            format!(
                "precise {}, linux66 {}, linux-latest {}",
                precise.commands, l66.commands, latest.commands
            ),
        ));
        let blocks = matches!(shape, "2 MiB block" | "split");
        let partial_large = precise.pages >= 512 && shape != "whole space";
        if (ril && partial_large) || blocks {
            out.push((
                format!("{shape}: precise loses strictly fewer unrelated entries than linux66"),
                precise.lost < l66.lost,
                format!("precise {}, linux66 {}", precise.lost, l66.lost),
            ));
        }
    }
    out
}

/// The table as Markdown, one row per shape, three column groups (one per policy).
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| shape | pages | linux66: cmds / sync / lost / µs | linux-latest: cmds / sync / lost / µs | \
         precise: cmds / sync / lost / µs |\n|---|---:|---:|---:|---:|\n",
    );
    let mut shapes: Vec<(&str, u64)> = Vec::new();
    for r in rows {
        if !shapes.iter().any(|(n, _)| *n == r.shape) {
            shapes.push((&r.shape, r.pages));
        }
    }
    for (shape, pages) in shapes {
        let _ = write!(s, "| {shape} | {pages} |");
        for p in POLICIES {
            match rows.iter().find(|r| r.shape == shape && r.policy == p) {
                Some(r) => {
                    let _ = write!(
                        s,
                        " {} / {} / {} of {} / {:.1} |",
                        r.commands,
                        r.syncs,
                        r.lost,
                        r.working_set,
                        r.guest_ns as f64 / 1000.0
                    );
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Grouped bars: commands (top) and collateral loss (bottom) per shape, one colour per policy.
///
/// # Errors
/// The plotting library's error, as text.
pub fn plot(rows: &[Row], path: &Path, tag: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let mut shapes: Vec<&str> = Vec::new();
    for r in rows {
        if !shapes.contains(&r.shape.as_str()) {
            shapes.push(&r.shape);
        }
    }
    let colours = [
        RGBColor(214, 96, 77),
        RGBColor(244, 165, 130),
        RGBColor(33, 102, 172),
    ];
    let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(360);
    let n = shapes.len() as u32;
    type Metric = fn(&Row) -> u64;
    let panels: [(_, &str, Metric); 2] = [
        (
            &top,
            "SMMU invalidation commands per flush (each also costs one CMD_SYNC)",
            |r| r.commands,
        ),
        (
            &bottom,
            "Collateral loss: cached entries of unchanged pages (64 far, 16 adjacent) the flush removed",
            |r| r.lost,
        ),
    ];
    for (area, title, value) in panels {
        // Head room above the tallest bar for the legend.
        let max = rows.iter().map(value).max().unwrap_or(1).max(1) * 3 / 2 + 1;
        let title = format!("{title} [{tag}]");
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(95)
            .y_label_area_size(40)
            .build_cartesian_2d(0u32..n * 4, 0u64..max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2)
            .x_label_formatter(&|_| String::new())
            .y_desc("count")
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, policy) in POLICIES.iter().enumerate() {
            let colour = colours[k];
            let bars = shapes.iter().enumerate().filter_map(|(i, shape)| {
                let r = rows
                    .iter()
                    .find(|r| r.shape == *shape && r.policy == *policy)?;
                let x = i as u32 * 4 + k as u32;
                Some(Rectangle::new([(x, 0), (x + 1, value(r))], colour.filled()))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(*policy)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        for (i, shape) in shapes.iter().enumerate() {
            chart
                .draw_series(std::iter::once(Text::new(
                    (*shape).to_string(),
                    (i as u32 * 4, 0),
                    ("sans-serif", 11)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                )))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Boot the cost benchmark once per policy, with range invalidation and without it
/// (`smmu.ril=off`), with the trace on; measure, check, and write `inval-costs.md`,
/// `inval-costs.svg` and `inval-costs-no-ril.svg` into `out_dir`. Prints one line per check; returns
/// their counts.
///
/// # Errors
/// When the image cannot be built, QEMU cannot be started or a file cannot be written.
pub fn run(root: &Path, out_dir: &Path, timeout: Duration, echo: bool) -> Result<Summary, Error> {
    let kernel = build::build_kernel(root, &[])?;
    let trace_dir = root.join("target/harness");
    for dir in [&trace_dir, &out_dir.to_path_buf()] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut counts = Summary::default();
    let fail = |counts: &mut Summary, what: String, detail: String| {
        counts.failed += 1;
        println!("    {detail}");
        println!("report {what} ... FAILED");
    };
    let mut written = Vec::new();
    let mut text = String::new();
    for ril in [true, false] {
        let (tag, suffix) = if ril {
            ("RIL", "")
        } else {
            ("no RIL", "-no-ril")
        };
        let mut rows = Vec::new();
        for policy in POLICIES {
            let trace_path = trace_dir.join(format!("report-{policy}{suffix}.log"));
            let _ = std::fs::remove_file(&trace_path);
            let ril_arg = if ril { "" } else { " smmu.ril=off" };
            let mut cfg = RunConfig::new(
                &kernel,
                format!("ktest=inval_costs smmu.inval={policy}{ril_arg} smmu.trace_marks"),
            );
            cfg.timeout = timeout;
            cfg.echo = echo;
            cfg.env = vec![("QEMU_TRACE_FILE".into(), trace_path.display().to_string())];
            println!(
                "==> report run: smmu.inval={policy}{ril_arg} (trace {})",
                trace_path.display()
            );
            let out = qemu::run(root, &cfg)?;
            let v = verdict::judge(&console::parse(&out.console), out.end);
            if !v.passed() || v.tests.is_empty() {
                fail(
                    &mut counts,
                    format!("{policy} ({tag}): the benchmark's own checks passed"),
                    format!("{}", v.counts()),
                );
                continue;
            }
            match trace::read(&trace_path)
                .map_err(|e| e.to_string())
                .and_then(|records| measure(&out.console, &records))
            {
                Ok(r) => rows.extend(r),
                Err(e) => fail(&mut counts, format!("{policy} ({tag}): trace measured"), e),
            }
        }
        for (name, ok, detail) in checks(&rows, ril) {
            let name = format!("{tag}: {name}");
            if ok {
                counts.passed += 1;
                println!("report {name} ... ok  [{detail}]");
            } else {
                fail(&mut counts, name, detail);
            }
        }
        let md = markdown(&rows);
        let _ = write!(text, "### With {tag}\n\n{md}\n");
        let svg_path = out_dir.join(format!("inval-costs{suffix}.svg"));
        if let Err(e) = plot(&rows, &svg_path, tag) {
            fail(&mut counts, format!("{tag}: plot written"), e);
        }
        written.push(svg_path);
    }
    let md_path = out_dir.join("inval-costs.md");
    std::fs::write(&md_path, &text)
        .map_err(|e| Error::io(format!("writing {}", md_path.display()), e))?;
    println!("\n{text}");
    for p in written.iter().chain([&md_path]) {
        println!("wrote {}", p.display());
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(shape: &str, pages: u64, policy: &str, commands: u64, lost: u64) -> Row {
        Row {
            shape: shape.into(),
            pages,
            policy: policy.into(),
            commands,
            syncs: 1,
            lost,
            working_set: 64,
            counts_agree: true,
            guest_ns: 0,
        }
    }

    #[test]
    fn checks_catch_a_costlier_or_lossier_precise() {
        let good = vec![
            row("600 pages", 600, "linux66", 1, 64),
            row("600 pages", 600, "linux-latest", 2, 0),
            row("600 pages", 600, "precise", 1, 0),
        ];
        assert!(
            checks(&good, true).iter().all(|c| c.1),
            "{:?}",
            checks(&good, true)
        );
        let mut costly = good.clone();
        costly[2].commands = 2;
        assert!(
            checks(&costly, true)
                .iter()
                .any(|c| !c.1 && c.0.contains("no more commands"))
        );
        let mut lossy = good.clone();
        lossy[2].lost = 64;
        assert!(
            checks(&lossy, true)
                .iter()
                .any(|c| !c.1 && c.0.contains("strictly fewer"))
        );
        // Without RIL a 600-page range is ASID-wide for every policy: no loss claim.
        assert!(
            checks(&lossy, false)
                .iter()
                .all(|c| !c.0.contains("strictly fewer"))
        );
        let mut missing = good;
        missing.pop();
        assert!(checks(&missing, true).iter().any(|c| !c.1));
    }

    #[test]
    fn measures_commands_and_lost_entries_from_the_trace() {
        let console = "\
trace-mark flush-begin seq=0 test=scenarios::costs::inval_costs
trace-mark flush-end seq=0 nh_va=0 nh_va_range=0 nh_asid=1 sync=1
inval-cost shape=\"512 pages\" pages=512 asid=1 ws_va=0x8000000000 ws_pages=2 nb_va=0x9000000000 nb_pages=0 nh_va=0 range=0 nh_asid=1 nh_all=0 sync=1 commands=2 policy=linux66
";
        let records = trace::parse(
            "smmuv3_write_mmio addr: 0x70 val:0x7eb00000 size: 0x4(0)
smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_ASID
smmuv3_cmdq_tlbi_nh_asid asid=1
smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC
smmuv3_write_mmio addr: 0x70 val:0x7ee00000 size: 0x4(0)
smmu_iotlb_lookup_miss IOTLB cache MISS asid=1 addr=0x8000000000 hit=0 miss=1 hit rate=0
smmu_iotlb_lookup_hit IOTLB cache HIT asid=1 addr=0x8000001000 hit=1 miss=1 hit rate=50
",
        );
        let rows = measure(console, &records).unwrap();
        assert_eq!(
            rows,
            [Row {
                shape: "512 pages".into(),
                pages: 512,
                policy: "linux66".into(),
                commands: 1,
                syncs: 1,
                lost: 1,
                working_set: 2,
                counts_agree: true,
                guest_ns: 0
            }]
        );
        assert!(markdown(&rows).contains("| 512 pages | 512 | 1 / 1 / 1 of 2 / 0.0 |"));
    }
}
