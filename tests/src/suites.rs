//! The suite matrix and the runs behind the CLI.
//!
//! A suite is one configuration of the kernel (boot arguments, QEMU environment) under which
//! the on-target tests run. The harness boots `ktest[=<filter>] <suite bootargs>`.

use crate::{
    Error, build,
    console::{self, Summary},
    qemu::{self, RunConfig},
    verdict::{self, Verdict},
};
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// One configuration of the on-target test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    /// Name, as shown in reports and accepted by `--suite`.
    pub name: &'static str,
    /// Boot arguments added after `ktest[=<filter>]`.
    pub bootargs: &'static str,
    /// Environment for scripts/qemu-run, e.g. `("QEMU_ICOUNT", "off")`.
    pub env: &'static [(&'static str, &'static str)],
}

impl Suite {
    /// A suite with boot arguments and the default QEMU environment.
    pub const fn new(name: &'static str, bootargs: &'static str) -> Self {
        Self {
            name,
            bootargs,
            env: &[],
        }
    }

    /// The same suite with QEMU environment variables (see scripts/qemu-run).
    pub const fn with_env(self, env: &'static [(&'static str, &'static str)]) -> Self {
        Self { env, ..self }
    }
}

/// The suite matrix run by `harness suites` (and so by scripts/test). One line per suite.
pub const SUITES: &[Suite] = &[
    // The machine of qemu/machine.sh: one edu on the root bus; QEMU's SMMU advertises a
    // 2-level stream table, which the driver picks.
    Suite::new("default", ""),
    // The same with a linear stream table (the sparse-StreamID test then covers that format).
    Suite::new("strtab-linear", "smmu.strtab=linear"),
    // A second edu behind a PCIe root port (bus 1, StreamID 0x100): the multi-device tests
    // (scenarios 9, 11; two address spaces) run here instead of being skipped.
    Suite::new("two-edu", "").with_env(&[(
        "QEMU_EXTRA_ARGS",
        "-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
         -device edu,bus=rp1,dma_mask=0xffffffffffffffff",
    )]),
    // One CPU and four: the batch, nested-flush and migration scenarios adapt to the CPUs
    // online (interleaved batches on one CPU, nested batches on every CPU), and the tests that
    // need a second CPU are skipped on one.
    Suite::new("one-cpu", "").with_env(&[("QEMU_SMP", "1")]),
    Suite::new("four-cpus", "").with_env(&[("QEMU_SMP", "4")]),
    // The SMMU invalidation policies other than the default (`precise`): every scenario and
    // negative control must hold under each; command counts are checked against the plan of
    // the policy in use.
    Suite::new("inval-linux66", "smmu.inval=linux66"),
    Suite::new("inval-linux-latest", "smmu.inval=linux-latest"),
    // The default policy planning without range invalidation (as on an SMMU without RIL).
    Suite::new("no-ril", "smmu.ril=off"),
    // DMA completion by polling instead of the edu interrupt.
    Suite::new("edu-poll", "edu.completion=poll"),
    // Entered at EL2 (the boot stub drops to EL1; PSCI then goes through SMC) with a GICv2
    // (memory-mapped CPU interface, group 0). QEMU merges the extra -machine properties.
    Suite::new("el2-gicv2", "").with_env(&[(
        "QEMU_EXTRA_ARGS",
        "-machine virtualization=on,gic-version=2",
    )]),
];

/// The suite called `name`.
pub fn find(name: &str) -> Option<&'static Suite> {
    SUITES.iter().find(|s| s.name == name)
}

/// `ktest` or `ktest=<filter>`, then the extra boot arguments.
pub fn bootargs(filter: &str, extra: &str) -> String {
    let mut args = if filter.is_empty() {
        "ktest".to_string()
    } else {
        format!("ktest={filter}")
    };
    for word in extra.split_whitespace() {
        args.push(' ');
        args.push_str(word);
    }
    args
}

/// Options shared by every run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run only the tests whose name contains this (empty: all).
    pub filter: String,
    /// The hard timeout per boot.
    pub timeout: Duration,
    /// Stream the console while it runs.
    pub echo: bool,
    /// Cargo features of the kernel image (e.g. `harness-selftest`).
    pub features: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            filter: String::new(),
            timeout: qemu::timeout_from_env(),
            echo: true,
            features: Vec::new(),
        }
    }
}

/// The result of one boot.
#[derive(Clone, Debug)]
pub struct SuiteResult {
    /// The suite's name.
    pub suite: String,
    /// The full boot arguments.
    pub bootargs: String,
    /// How to run this again (a scripts/ktest command line).
    pub reproduce: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Wall time of the boot.
    pub elapsed: Duration,
    /// Wall time until the first test result appeared.
    pub first_result: Option<Duration>,
    /// QEMU's stderr.
    pub stderr: String,
}

/// Boot `kernel` once in the configuration `suite` (plus `extra_bootargs`) and judge the run.
pub fn run_suite(
    root: &Path,
    kernel: &Path,
    suite: &Suite,
    extra_bootargs: &str,
    env: &[(String, String)],
    opts: &Options,
) -> Result<SuiteResult, Error> {
    let extra = format!("{} {extra_bootargs}", suite.bootargs);
    let args = bootargs(&opts.filter, &extra);
    let mut cfg = RunConfig::new(kernel, args.clone());
    cfg.timeout = opts.timeout;
    cfg.echo = opts.echo;
    cfg.env = suite
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(env.iter().cloned())
        .collect();
    if opts.echo {
        println!("==> suite {}: {args}", suite.name);
    }
    let out = qemu::run(root, &cfg)?;
    let verdict = verdict::judge(&console::parse(&out.console), out.end);
    let result = SuiteResult {
        suite: suite.name.to_string(),
        reproduce: reproduce(suite, extra_bootargs, opts, &verdict),
        bootargs: args,
        verdict,
        elapsed: out.elapsed,
        first_result: out.first_result,
        stderr: out.stderr,
    };
    if opts.echo {
        println!("{}", suite_footer(&result));
    }
    Ok(result)
}

/// The scripts/ktest command line that reruns the first failed test (or the whole selection)
/// in the same configuration.
fn reproduce(suite: &Suite, extra_bootargs: &str, opts: &Options, verdict: &Verdict) -> String {
    let filter = verdict
        .failed_tests()
        .next()
        .map_or(opts.filter.as_str(), |t| t.name.as_str());
    let mut cmd = String::from("scripts/ktest");
    if !filter.is_empty() {
        let _ = write!(cmd, " {filter}");
    }
    if suite.name != "default" {
        let _ = write!(cmd, " --suite {}", suite.name);
    }
    if !extra_bootargs.trim().is_empty() {
        let _ = write!(cmd, " --bootargs '{}'", extra_bootargs.trim());
    }
    if !opts.features.is_empty() {
        let _ = write!(cmd, " --features {}", opts.features.join(","));
    }
    cmd
}

/// Build the image once (with `opts.features`) and run `suites`.
pub fn run_suites(
    root: &Path,
    suites: &[&Suite],
    opts: &Options,
) -> Result<Vec<SuiteResult>, Error> {
    let features: Vec<&str> = opts.features.iter().map(String::as_str).collect();
    let kernel = build::build_kernel(root, &features)?;
    // Several suites would overwrite one trace file: give each its own.
    let trace = std::env::var_os("QEMU_TRACE_FILE").map(PathBuf::from);
    let mut results = Vec::new();
    for suite in suites {
        let env: Vec<(String, String)> = trace
            .iter()
            .map(|t| {
                let per_suite = per_suite_path(t, suite.name);
                ("QEMU_TRACE_FILE".into(), per_suite.display().to_string())
            })
            .collect();
        results.push(run_suite(root, &kernel, suite, "", &env, opts)?);
    }
    Ok(results)
}

/// `smmu.log` → `smmu.<suite>.log`.
pub fn per_suite_path(path: &Path, suite: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{suite}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{suite}"),
    };
    path.with_file_name(name)
}

/// The line (and failure details) printed after a suite's console.
pub fn suite_footer(r: &SuiteResult) -> String {
    let c = r.verdict.counts();
    let mut s = format!(
        "<== suite {}: {}, {c} ({:.2} s",
        r.suite,
        if r.verdict.passed() { "ok" } else { "FAILED" },
        r.elapsed.as_secs_f64()
    );
    if let Some(first) = r.first_result {
        let _ = write!(s, ", first result after {:.2} s", first.as_secs_f64());
    }
    s.push(')');
    if r.verdict.tests.is_empty() && r.verdict.passed() {
        s.push_str("\n  warning: no on-target test matched");
    }
    if !r.verdict.passed() {
        s.push('\n');
        s.push_str(r.verdict.to_string().trim_end());
        let _ = write!(s, "\n  reproduce: {}", r.reproduce);
    }
    s
}

/// The table of suite results and the failed tests; returns the totals over all suites.
pub fn report(results: &[SuiteResult]) -> (String, Summary) {
    let mut s = String::from("suite results:\n");
    let mut total = Summary::default();
    let width = results.iter().map(|r| r.suite.len()).max().unwrap_or(0);
    for r in results {
        let c = r.verdict.counts();
        total += c;
        let _ = writeln!(
            s,
            "  {:width$}  {:6}  {:4} passed, {:3} failed, {:3} skipped  {:6.1} s  ({})",
            r.suite,
            if r.verdict.passed() { "ok" } else { "FAILED" },
            c.passed,
            c.failed,
            c.skipped,
            r.elapsed.as_secs_f64(),
            r.verdict.end,
        );
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            let tests = r
                .verdict
                .failed_tests()
                .map(|t| format!("  {}: {}", r.suite, t.name));
            let run = (!r.verdict.passed() && r.verdict.failed_tests().next().is_none())
                .then(|| format!("  {}: the run itself ({})", r.suite, r.verdict.failures[0]));
            tests.chain(run).collect::<Vec<_>>()
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("failed:\n");
        for f in failed {
            let first_line = f.lines().next().unwrap_or_default();
            s.push_str(first_line);
            s.push('\n');
        }
    }
    (s, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::RunEnd;

    #[test]
    fn suite_table_is_sane() {
        for (i, s) in SUITES.iter().enumerate() {
            assert!(!s.name.is_empty() && !s.name.contains(char::is_whitespace));
            assert!(
                SUITES[..i].iter().all(|o| o.name != s.name),
                "duplicate {}",
                s.name
            );
            assert!(
                s.bootargs
                    .split_whitespace()
                    .all(|w| !w.starts_with("ktest")),
                "{}: the harness adds ktest itself",
                s.name
            );
        }
        assert_eq!(SUITES[0].name, "default");
        assert!(find("strtab-linear").is_some());
    }

    #[test]
    fn bootargs_compose() {
        assert_eq!(bootargs("", ""), "ktest");
        assert_eq!(
            bootargs("mm::flush", " smmu.strtab=2level  log=debug"),
            "ktest=mm::flush smmu.strtab=2level log=debug"
        );
    }

    #[test]
    fn trace_file_per_suite() {
        assert_eq!(
            per_suite_path(Path::new("/t/smmu.log"), "default"),
            Path::new("/t/smmu.default.log")
        );
        assert_eq!(
            per_suite_path(Path::new("trace"), "x"),
            Path::new("trace.x")
        );
    }

    #[test]
    fn report_totals_and_names_failures() {
        let ok = verdict::judge(
            &console::parse("test a::x ... ok\n1 passed, 0 failed\n"),
            RunEnd::Exited(0),
        );
        let bad = verdict::judge(
            &console::parse(
                "test a::x ... ok\n    why\ntest a::y ... FAILED\n1 passed, 1 failed\n",
            ),
            RunEnd::Exited(1),
        );
        let hung = verdict::judge(
            &console::parse(""),
            RunEnd::TimedOut(Duration::from_secs(9)),
        );
        let result = |suite: &str, verdict: Verdict| SuiteResult {
            suite: suite.into(),
            bootargs: "ktest".into(),
            reproduce: format!("scripts/ktest --suite {suite}"),
            verdict,
            elapsed: Duration::from_millis(1500),
            first_result: None,
            stderr: String::new(),
        };
        let results = [
            result("default", ok),
            result("two", bad),
            result("three", hung),
        ];
        let (text, total) = report(&results);
        assert_eq!(
            total,
            Summary {
                passed: 2,
                failed: 2,
                skipped: 0,
            }
        );
        assert!(text.contains("  two: a::y\n"), "{text}");
        assert!(
            text.contains("  three: the run itself (timed out after 9 s)"),
            "{text}"
        );
        let footer = suite_footer(&results[1]);
        assert!(
            footer.contains("  test a::y FAILED\n    why\n  reproduce: "),
            "{footer}"
        );
    }

    #[test]
    fn reproduce_names_the_first_failed_test_and_the_configuration() {
        let bad = verdict::judge(
            &console::parse("test a::y ... FAILED\ntest a::z ... FAILED\n0 passed, 2 failed\n"),
            RunEnd::Exited(1),
        );
        let two = find("strtab-linear").unwrap();
        let opts = Options {
            features: vec!["harness-selftest".into()],
            ..Options::default()
        };
        assert_eq!(
            reproduce(two, " log=debug ", &opts, &bad),
            "scripts/ktest a::y --suite strtab-linear --bootargs 'log=debug' --features harness-selftest"
        );
        let hung = verdict::judge(&console::parse(""), RunEnd::Deadlock);
        let opts = Options {
            filter: "mm::".into(),
            ..Options::default()
        };
        assert_eq!(
            reproduce(&SUITES[0], "", &opts, &hung),
            "scripts/ktest mm::"
        );
    }
}
