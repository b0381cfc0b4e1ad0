//! Parser for the on-target runner's console output: text in, structure out.
//!
//! The lines themselves are [`protocol::console`]'s, shared with the kernel: per test, the
//! failure reasons (indented lines) first if it failed, then one [`TestLine`]; at the end the
//! [`Summary`]. Fatal reports: a line starting [`console::BOOT_ERROR`], [`console::PANIC`]
//! (followed, inside a test, by that test's `FAILED` line) or
//! [`console::UNEXPECTED_EXCEPTION`] followed by indented register lines. Everything else (boot
//! banner, log lines) is ignored.

use protocol::console::{self, TestLine, Verdict};

/// Most continuation lines kept for one panic or exception report.
const MAX_REPORT_LINES: usize = 64;

/// The result a test line reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `ok`.
    Ok,
    /// `FAILED`.
    Failed,
    /// `skipped (<what it needs>)`: not run, e.g. for lack of hardware. Not a failure.
    Skipped(String),
}

/// One `test NAME ... ok|FAILED|skipped` line, with the reasons printed before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    /// `module::name` as printed.
    pub name: String,
    /// What the line says.
    pub status: Status,
    /// For a failed test: the indented lines printed before its result line, then the panic
    /// message if it panicked. Empty for other tests.
    pub reasons: Vec<String>,
}

impl TestOutcome {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.status == Status::Ok
    }

    /// Whether the test failed.
    pub fn failed(&self) -> bool {
        self.status == Status::Failed
    }
}

pub use protocol::console::Summary;

/// A fatal report from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// `BOOT ERROR: <what>`.
    BootError(String),
    /// `*** PANIC on CPU n: <message>` and the lines that continue the message.
    Panic {
        /// The CPU that panicked, if the line said.
        cpu: Option<u32>,
        /// The panic message (location and text), possibly several lines.
        message: String,
        /// The test whose `FAILED` line followed the panic, if any.
        test: Option<String>,
    },
    /// `*** UNEXPECTED EXCEPTION on CPU n: <vector>` and the report lines after it.
    Exception {
        /// The CPU that took the exception, if the line said.
        cpu: Option<u32>,
        /// The vector and the decoded report (syndrome, registers), possibly several lines.
        report: String,
        /// The last test that reported a result before the exception (the exception happened
        /// in the test after it, or outside the tests).
        after_test: Option<String>,
    },
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::verdict::indent_continuation;
        match self {
            Self::BootError(what) => write!(f, "boot error: {what}"),
            Self::Panic { cpu, message, test } => {
                write!(f, "panic")?;
                if let Some(test) = test {
                    write!(f, " in test {test}")?;
                }
                if let Some(cpu) = cpu {
                    write!(f, " on CPU {cpu}")?;
                }
                write!(f, ": {}", indent_continuation(message))
            }
            Self::Exception {
                cpu,
                report,
                after_test,
            } => {
                write!(f, "unexpected exception")?;
                if let Some(cpu) = cpu {
                    write!(f, " on CPU {cpu}")?;
                }
                match after_test {
                    Some(t) => write!(f, " (in the test after {t}, or after the tests)")?,
                    None => write!(f, " (before any test finished)")?,
                }
                write!(f, ": {}", indent_continuation(report))
            }
        }
    }
}

/// Everything the parser found in a console transcript.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The test results, in order.
    pub tests: Vec<TestOutcome>,
    /// The last `N passed, N failed` line, if any.
    pub summary: Option<Summary>,
    /// Fatal reports, in order.
    pub fatal: Vec<Fatal>,
}

impl Transcript {
    /// The counts of the parsed result lines.
    pub fn counts(&self) -> Summary {
        count(&self.tests)
    }

    /// The tests that failed.
    pub fn failed_tests(&self) -> impl Iterator<Item = &TestOutcome> {
        self.tests.iter().filter(|t| t.failed())
    }
}

/// The counts of a list of results.
pub fn count(tests: &[TestOutcome]) -> Summary {
    let mut c = Summary::default();
    for t in tests {
        match t.status {
            Status::Ok => c.passed += 1,
            Status::Failed => c.failed += 1,
            Status::Skipped(_) => c.skipped += 1,
        }
    }
    c
}

/// Parse a console transcript.
pub fn parse(text: &str) -> Transcript {
    let mut out = Transcript::default();
    // Indented lines since the last result line: the reasons of the next FAILED test.
    let mut pending_reasons: Vec<String> = Vec::new();
    // The panic or exception report whose continuation lines are being collected.
    let mut open_report: Option<usize> = None;
    // Panics reported since the last result line (a panic inside a test comes before the
    // test's FAILED line).
    let mut panics_since_result: Vec<usize> = Vec::new();

    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();

        if let Some((name, status)) = parse_result(line) {
            open_report = None;
            let mut reasons = std::mem::take(&mut pending_reasons);
            if status != Status::Failed {
                reasons.clear();
            } else {
                for &i in &panics_since_result {
                    if let Fatal::Panic { cpu, message, test } = &mut out.fatal[i] {
                        *test = Some(name.to_string());
                        reasons.push(panic_reason(*cpu, message));
                    }
                }
            }
            panics_since_result.clear();
            out.tests.push(TestOutcome {
                name: name.to_string(),
                status,
                reasons,
            });
        } else if let Some(counts) = Summary::parse(trimmed) {
            open_report = None;
            out.summary = Some(counts);
        } else if let Some(what) = trimmed.strip_prefix(console::BOOT_ERROR) {
            open_report = None;
            out.fatal.push(Fatal::BootError(what.trim().to_string()));
        } else if let Some(rest) = trimmed.strip_prefix(console::PANIC) {
            let (cpu, message) = split_cpu(rest);
            panics_since_result.push(out.fatal.len());
            open_report = Some(out.fatal.len());
            out.fatal.push(Fatal::Panic {
                cpu,
                message,
                test: None,
            });
        } else if let Some(rest) = trimmed.strip_prefix(console::UNEXPECTED_EXCEPTION) {
            let (cpu, report) = split_cpu(rest);
            open_report = Some(out.fatal.len());
            out.fatal.push(Fatal::Exception {
                cpu,
                report,
                after_test: out.tests.last().map(|t| t.name.clone()),
            });
        } else if let Some(i) = open_report {
            if !trimmed.is_empty() {
                let (Fatal::Panic { message: text, .. } | Fatal::Exception { report: text, .. }) =
                    &mut out.fatal[i]
                else {
                    continue;
                };
                if text.lines().count() < MAX_REPORT_LINES {
                    text.push('\n');
                    text.push_str(trimmed);
                }
            }
        } else if line.starts_with([' ', '\t']) && !trimmed.is_empty() {
            pending_reasons.push(trimmed.to_string());
        }
    }
    out
}

/// The byte offset of the first `test NAME ... ok|FAILED` line in `text`.
pub fn first_result_offset(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if parse_result(line.trim_end_matches(['\r', '\n'])).is_some() {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// A `test NAME ... ok|FAILED|skipped (WHAT)` line ([`protocol::console::TestLine`]).
fn parse_result(line: &str) -> Option<(&str, Status)> {
    let t = TestLine::parse(line)?;
    let status = match t.verdict {
        Verdict::Ok => Status::Ok,
        Verdict::Failed => Status::Failed,
        Verdict::Skipped(what) => Status::Skipped(what.to_string()),
    };
    Some((t.name, status))
}

/// ` on CPU n: text` → (Some(n), "text"); anything else → (None, the text after any colon).
fn split_cpu(rest: &str) -> (Option<u32>, String) {
    let rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix("on CPU ")
        && let Some((n, text)) = after.split_once(':')
        && let Ok(n) = n.trim().parse()
    {
        return (Some(n), text.trim().to_string());
    }
    let text = rest.strip_prefix(':').unwrap_or(rest);
    (None, text.trim().to_string())
}

fn panic_reason(cpu: Option<u32>, message: &str) -> String {
    match cpu {
        Some(cpu) => format!("panic on CPU {cpu}: {message}"),
        None => format!("panic: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, passed: bool, reasons: &[&str]) -> TestOutcome {
        TestOutcome {
            name: name.into(),
            status: if passed { Status::Ok } else { Status::Failed },
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn passing_run_with_log_noise_and_crlf() {
        let t = parse(
            "\r\nsmmu-sva unikernel booting (image at 0x40200000, EL1)\r\n\
             [    0.004022] C0 INFO  init: device tree at 0x40000000\r\n\
             running 2 on-target tests (filter \"\")\r\n\
             test mm::flush::one ... ok\r\n\
             [    0.104022] C1 DEBUG mm::flush::two took 3 ms\r\n\
             test mm::flush::two ... ok\r\n\
             on-target suite time: 12 ms\r\n\
             2 passed, 0 failed\r\n",
        );
        assert_eq!(
            t.tests,
            vec![
                outcome("mm::flush::one", true, &[]),
                outcome("mm::flush::two", true, &[])
            ]
        );
        assert_eq!(
            t.summary,
            Some(Summary {
                passed: 2,
                failed: 0,
                skipped: 0,
            })
        );
        assert!(t.fatal.is_empty());
        assert_eq!(t.counts(), t.summary.unwrap());
    }

    #[test]
    fn reasons_attach_to_the_failing_test_only() {
        let t = parse(
            "test a::first ... ok\n\
             [    0.1] C0 INFO  a: some log line\n\
             \x20   assertion failed: x == y: left 1, right 2 (kernel/src/a.rs:10)\n\
             \x20   second reason line\n\
             test a::second ... FAILED\n\
             test a::third ... ok\n\
             2 passed, 1 failed\n",
        );
        assert_eq!(
            t.tests,
            vec![
                outcome("a::first", true, &[]),
                outcome(
                    "a::second",
                    false,
                    &[
                        "assertion failed: x == y: left 1, right 2 (kernel/src/a.rs:10)",
                        "second reason line"
                    ]
                ),
                outcome("a::third", true, &[]),
            ]
        );
        assert_eq!(t.failed_tests().count(), 1);
    }

    #[test]
    fn skipped_tests_are_neither_passed_nor_failed() {
        let t = parse(
            "    stray\n\
             test a::s ... skipped (two edu devices)\n\
             test a::ok ... ok\n\
             1 passed, 0 failed, 1 skipped\n",
        );
        assert_eq!(
            t.tests[0],
            TestOutcome {
                name: "a::s".into(),
                status: Status::Skipped("two edu devices".into()),
                reasons: vec![]
            }
        );
        assert_eq!(
            t.counts(),
            Summary {
                passed: 1,
                failed: 0,
                skipped: 1
            }
        );
        assert_eq!(t.summary, Some(t.counts()));
        assert_eq!(t.counts().to_string(), "1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn indented_lines_before_a_passing_test_are_not_carried_over() {
        let t = parse("    stray indented output\ntest a::ok ... ok\ntest a::bad ... FAILED\n");
        assert_eq!(t.tests[1], outcome("a::bad", false, &[]));
    }

    #[test]
    fn panic_inside_a_test_becomes_its_reason() {
        let t = parse(
            "test a::fine ... ok\n\
             \n\
             *** PANIC on CPU 1: panicked at kernel/src/ktest.rs:217:13:\n\
             deliberate panic: the harness must report a panic\n\
             test ktest::harness_selftest::harness_selftest_zz_panic ... FAILED\n",
        );
        let message = "panicked at kernel/src/ktest.rs:217:13:\n\
                       deliberate panic: the harness must report a panic";
        assert_eq!(
            t.fatal,
            vec![Fatal::Panic {
                cpu: Some(1),
                message: message.into(),
                test: Some("ktest::harness_selftest::harness_selftest_zz_panic".into()),
            }]
        );
        assert_eq!(
            t.tests[1].reasons,
            vec![format!("panic on CPU 1: {message}")]
        );
        assert_eq!(t.summary, None);
    }

    #[test]
    fn panic_outside_a_test() {
        let t =
            parse("booting\n*** PANIC on CPU 0: panicked at kernel/src/init.rs:3:5:\nno heap\n");
        assert_eq!(
            t.fatal,
            vec![Fatal::Panic {
                cpu: Some(0),
                message: "panicked at kernel/src/init.rs:3:5:\nno heap".into(),
                test: None
            }]
        );
        assert!(t.tests.is_empty());
    }

    #[test]
    fn exception_report_keeps_its_lines_and_the_previous_test() {
        let t = parse(
            "test a::before ... ok\n\
             \n\
             *** UNEXPECTED EXCEPTION on CPU 0: synchronous, current EL with SP_ELx\n\
             \x20   ESR 0x0000000096000045: EC 0x25 data abort, same EL, ISS 0x0000045\n\
             \x20   write at 0x0000000000000000: translation fault, level 1\n\
             \x20   ELR 0xffff000040201234  SPSR 0x600003c5  SP 0xffff000040400000\n",
        );
        let Fatal::Exception {
            cpu,
            report,
            after_test,
        } = &t.fatal[0]
        else {
            panic!("expected an exception, got {:?}", t.fatal);
        };
        assert_eq!(*cpu, Some(0));
        assert_eq!(after_test.as_deref(), Some("a::before"));
        assert!(report.starts_with("synchronous, current EL with SP_ELx\nESR 0x0000000096000045"));
        assert_eq!(report.lines().count(), 4);
        // The indented register lines are part of the report, not reasons for a later test.
        assert!(t.tests.iter().all(|t| t.reasons.is_empty()));
    }

    #[test]
    fn boot_error() {
        let t = parse("smmu-sva unikernel booting\nBOOT ERROR: no device tree\n");
        assert_eq!(t.fatal, vec![Fatal::BootError("no device tree".into())]);
        assert_eq!(t.summary, None);
    }

    #[test]
    fn summary_is_strict_and_the_last_one_wins() {
        assert_eq!(
            Summary::parse("3 passed, 1 failed").map(|c| c.failed),
            Some(1)
        );
        assert_eq!(Summary::parse("x passed, 1 failed"), None);
        assert_eq!(Summary::parse("3 passed, 1 failed, 2 ignored"), None);
        assert_eq!(
            Summary::parse("53 passed, 0 failed, 4 skipped"),
            Some(Summary {
                passed: 53,
                failed: 0,
                skipped: 4
            })
        );
        assert_eq!(Summary::parse("53 passed, 0 failed, x skipped"), None);
        assert_eq!(Summary::parse("passed, failed"), None);
        let t = parse("1 passed, 0 failed\n4 passed, 2 failed\n");
        assert_eq!(
            t.summary,
            Some(Summary {
                passed: 4,
                failed: 2,
                skipped: 0,
            })
        );
    }

    #[test]
    fn result_lines_must_be_exact() {
        assert_eq!(parse_result("test a::b ... ok"), Some(("a::b", Status::Ok)));
        assert_eq!(
            parse_result("test a::b ... FAILED"),
            Some(("a::b", Status::Failed))
        );
        assert_eq!(parse_result("  test a::b ... ok"), None);
        assert_eq!(parse_result("test a b ... ok"), None);
        assert_eq!(parse_result("test  ... ok"), None);
        assert_eq!(parse_result("test a::b ... ignored"), None);
        assert_eq!(
            parse_result("test a::b ... skipped (two edu devices)"),
            Some(("a::b", Status::Skipped("two edu devices".into())))
        );
        assert_eq!(
            parse_result("test a::b ... skipped"),
            Some(("a::b", Status::Skipped(String::new())))
        );
        assert_eq!(parse_result("test a::b ... skipped because"), None);
        assert_eq!(parse_result("test a::b ... ok trailing"), None);
    }

    #[test]
    fn first_result_offset_finds_the_line_start() {
        let text = "boot\r\n    reason\r\ntest a::b ... FAILED\r\n";
        assert_eq!(first_result_offset(text), Some(18));
        assert_eq!(first_result_offset("no tests\n"), None);
    }

    #[test]
    fn empty_and_garbage_transcripts() {
        assert_eq!(parse(""), Transcript::default());
        let t = parse("\u{fffd}\u{fffd} garbage\n*** PANIC: no cpu given\n");
        assert_eq!(
            t.fatal,
            vec![Fatal::Panic {
                cpu: None,
                message: "no cpu given".into(),
                test: None
            }]
        );
    }
}
