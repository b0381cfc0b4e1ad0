//! `harness`: build the kernel, run the on-target tests in QEMU, report.
//!
//! Exit status: 0 when everything passed, 1 when a test or a run failed, 2 when the harness
//! could not run (usage, build failure, QEMU missing).

use harness::{
    Error, build,
    console::Summary,
    suites::{self, Options, Suite},
};
use std::{process::ExitCode, time::Duration};

const USAGE: &str = "\
usage:
  harness suites [--filter F] [--suite NAME]... [--timeout SECS]
      run the suite matrix (tests/src/suites.rs), each suite in its own boot
  harness ktest [FILTER] [--suite NAME] [--bootargs ARGS] [--features F] [--timeout SECS]
      run the on-target tests whose name contains FILTER in one configuration
  harness oracle [--timeout SECS]
      run the invalidation scenarios with QEMU's SMMU trace on and check them from the
      trace alone (tests/src/oracle.rs)
  harness report [--out DIR] [--timeout SECS]
      the invalidation cost report: commands, CMD_SYNCs and collateral loss per flush
      shape and smmu.inval policy, from QEMU's trace, as Markdown and SVG
      (DIR defaults to target/report; tests/src/report.rs)
  harness list
      list the suites

Timeouts default to $QEMU_TIMEOUT or 120 s per boot. The QEMU_* variables of
scripts/qemu-run apply (QEMU_TRACE_FILE gets a per-suite name with `suites`).
The last line printed is `N passed, N failed` over all on-target tests.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Error::Usage(msg)) => {
            eprintln!("harness: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("harness: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parsed command-line options.
#[derive(Default)]
struct Args {
    positional: Vec<String>,
    filter: Option<String>,
    suites: Vec<String>,
    bootargs: String,
    features: Vec<String>,
    timeout: Option<Duration>,
    out: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Args, Error> {
    let mut out = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--filter" => out.filter = Some(value("--filter")?),
            "--suite" => out.suites.push(value("--suite")?),
            "--bootargs" => out.bootargs = value("--bootargs")?,
            "--out" => out.out = Some(value("--out")?),
            "--features" => out
                .features
                .extend(value("--features")?.split(',').map(String::from)),
            "--timeout" => {
                let secs = value("--timeout")?;
                let secs: u64 = secs
                    .parse()
                    .map_err(|_| Error::Usage(format!("bad --timeout {secs}")))?;
                out.timeout = Some(Duration::from_secs(secs.max(1)));
            }
            "-h" | "--help" => return Err(Error::Usage("help".into())),
            s if s.starts_with("--") => return Err(Error::Usage(format!("unknown option {s}"))),
            _ => out.positional.push(arg.clone()),
        }
    }
    Ok(out)
}

fn suite(name: &str) -> Result<&'static Suite, Error> {
    suites::find(name).ok_or_else(|| {
        let known: Vec<_> = suites::SUITES.iter().map(|s| s.name).collect();
        Error::Usage(format!("no suite {name} (known: {})", known.join(", ")))
    })
}

/// The final line, `N passed, N failed` (what scripts/test adds up), with skipped tests on the
/// line before it.
fn print_total(total: Summary) {
    if total.skipped > 0 {
        println!("({} skipped)", total.skipped);
    }
    println!("{} passed, {} failed", total.passed, total.failed);
}

/// Run the command; Ok(true) when everything passed.
fn run(args: &[String]) -> Result<bool, Error> {
    let Some((command, rest)) = args.split_first() else {
        return Err(Error::Usage("missing command".into()));
    };
    let args = parse_args(rest)?;
    let root = harness::repo_root();
    let mut opts = Options::default();
    if let Some(t) = args.timeout {
        opts.timeout = t;
    }
    match command.as_str() {
        "list" => {
            for s in suites::SUITES {
                println!("{:16} {}", s.name, suites::bootargs("", s.bootargs));
            }
            Ok(true)
        }
        "suites" => {
            if !args.positional.is_empty() || !args.bootargs.is_empty() || !args.features.is_empty()
            {
                return Err(Error::Usage(
                    "suites takes only --filter, --suite and --timeout".into(),
                ));
            }
            opts.filter = args.filter.unwrap_or_default();
            let selected: Vec<&Suite> = if args.suites.is_empty() {
                suites::SUITES.iter().collect()
            } else {
                args.suites
                    .iter()
                    .map(|n| suite(n))
                    .collect::<Result<_, _>>()?
            };
            let results = suites::run_suites(&root, &selected, &opts)?;
            let (table, total) = suites::report(&results);
            print!("\n{table}");
            print_total(total);
            Ok(results.iter().all(|r| r.verdict.passed()))
        }
        "ktest" => {
            if args.positional.len() > 1 || args.suites.len() > 1 {
                return Err(Error::Usage(
                    "ktest takes one FILTER and at most one --suite".into(),
                ));
            }
            opts.filter = args
                .positional
                .first()
                .cloned()
                .or(args.filter)
                .unwrap_or_default();
            let suite = suite(args.suites.first().map_or("default", String::as_str))?;
            opts.features = args.features;
            let features: Vec<&str> = opts.features.iter().map(String::as_str).collect();
            let kernel = build::build_kernel(&root, &features)?;
            let result = suites::run_suite(&root, &kernel, suite, &args.bootargs, &[], &opts)?;
            print_total(result.verdict.counts());
            Ok(result.verdict.passed())
        }
        "oracle" => {
            let counts = harness::oracle::run(&root, opts.timeout, false)?;
            print_total(counts);
            Ok(counts.failed == 0)
        }
        "report" => {
            let dir = args
                .out
                .map_or_else(|| root.join("target/report"), std::path::PathBuf::from);
            let counts = harness::report::run(&root, &dir, opts.timeout, false)?;
            print_total(counts);
            Ok(counts.failed == 0)
        }
        other => Err(Error::Usage(format!("unknown command {other}"))),
    }
}
