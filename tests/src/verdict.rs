//! The verdict of one on-target run: the parsed console plus how QEMU ended.
//!
//! A run fails on a timeout, a deadlock, a panic, an unexpected exception, a boot error, a
//! missing or inconsistent summary, an exit status that does not match the console, or any
//! `FAILED` test.

use crate::console::{self, Fatal, Summary, TestOutcome, Transcript};
use std::{fmt, time::Duration};

/// Exit statuses of the kernel and of `scripts/qemu-run` ([`protocol::exit`]), as codes.
pub mod status {
    use protocol::exit::ExitStatus;

    /// All tests passed (or the main job finished).
    pub const SUCCESS: i32 = ExitStatus::Success.code();
    /// At least one test failed.
    pub const TESTS_FAILED: i32 = ExitStatus::TestsFailed.code();
    /// `BOOT ERROR:`.
    pub const BOOT_ERROR: i32 = ExitStatus::BootError.code();
    /// A Rust panic.
    pub const PANIC: i32 = ExitStatus::Panic.code();
    /// An unexpected exception.
    pub const EXCEPTION: i32 = ExitStatus::UnexpectedException.code();
    /// scripts/qemu-run's hard timeout.
    pub const TIMEOUT: i32 = protocol::exit::TIMEOUT;
}

/// How the QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// QEMU exited with this status (the kernel's, through semihosting).
    Exited(i32),
    /// The hard timeout expired and QEMU was killed.
    TimedOut(Duration),
    /// Under icount every CPU idled with no timer armed: nothing could ever happen again, so
    /// the harness stopped QEMU instead of waiting for the timeout.
    Deadlock,
    /// QEMU died from this signal.
    Signalled(i32),
}

impl fmt::Display for RunEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(
                f,
                "exit status {code} ({})",
                protocol::exit::describe_code(*code)
            ),
            Self::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs()),
            Self::Deadlock => write!(f, "deadlock (all CPUs idle, no timer armed)"),
            Self::Signalled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// One reason a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The hard timeout expired.
    TimedOut(Duration),
    /// Every CPU waited for an interrupt that could never come.
    Deadlock,
    /// QEMU died from a signal.
    Signalled(i32),
    /// A fatal report on the console: a boot error, a panic or an unexpected exception.
    Fatal(Fatal),
    /// An on-target test failed.
    TestFailed {
        /// Its name.
        name: String,
        /// Its reasons.
        reasons: Vec<String>,
    },
    /// No `N passed, N failed` line.
    MissingSummary,
    /// The summary disagrees with the result lines.
    SummaryMismatch {
        /// What the summary line said.
        summary: Summary,
        /// What the result lines add up to.
        parsed: Summary,
    },
    /// The exit status disagrees with the console.
    UnexpectedStatus {
        /// The status QEMU exited with.
        actual: i32,
        /// The status the console implies.
        expected: i32,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs()),
            Self::Deadlock => write!(
                f,
                "deadlock: every CPU idle with no timer armed (QEMU: \"icount sleep disabled and \
                 no active timers\"); something waited for an interrupt that never came"
            ),
            Self::Signalled(sig) => write!(f, "QEMU killed by signal {sig}"),
            Self::Fatal(fatal) => fatal.fmt(f),
            Self::TestFailed { name, reasons } => {
                write!(f, "test {name} FAILED")?;
                for r in reasons {
                    write!(f, "\n    {}", indent_continuation(r))?;
                }
                Ok(())
            }
            Self::MissingSummary => write!(f, "no `N passed, N failed` summary line"),
            Self::SummaryMismatch { summary, parsed } => write!(
                f,
                "summary says {summary} but the result lines say {parsed}"
            ),
            Self::UnexpectedStatus { actual, expected } => write!(
                f,
                "exit status {actual} ({}) but the console implies {expected} ({})",
                protocol::exit::describe_code(*actual),
                protocol::exit::describe_code(*expected)
            ),
        }
    }
}

/// Indents the continuation lines of a multi-line text under its first line.
pub(crate) fn indent_continuation(text: &str) -> String {
    text.replace('\n', "\n      ")
}

/// The verdict of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The test results, in order.
    pub tests: Vec<TestOutcome>,
    /// Why the run failed; empty if it passed.
    pub failures: Vec<Failure>,
    /// How QEMU ended.
    pub end: RunEnd,
}

impl Verdict {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The tests that failed.
    pub fn failed_tests(&self) -> impl Iterator<Item = &TestOutcome> {
        self.tests.iter().filter(|t| t.failed())
    }

    /// Summary for the totals: the passed and failed result lines, plus one failure for a run
    /// that failed without any `FAILED` line (a boot error, a timeout, ...), so that a broken
    /// run can never add up to "0 failed".
    pub fn counts(&self) -> Summary {
        let mut c = console::count(&self.tests);
        c.failed += usize::from(!self.passed() && c.failed == 0);
        c
    }
}

impl fmt::Display for Verdict {
    /// The failures, one per paragraph; nothing for a passing run. A panic inside a test is
    /// shown once, as that test's reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failures {
            if !matches!(failure, Failure::Fatal(Fatal::Panic { test: Some(_), .. })) {
                writeln!(f, "  {failure}")?;
            }
        }
        Ok(())
    }
}

/// Judge a run of the on-target tests.
pub fn judge(transcript: &Transcript, end: RunEnd) -> Verdict {
    let mut failures = Vec::new();
    match end {
        RunEnd::TimedOut(d) => failures.push(Failure::TimedOut(d)),
        RunEnd::Deadlock => failures.push(Failure::Deadlock),
        RunEnd::Signalled(sig) => failures.push(Failure::Signalled(sig)),
        RunEnd::Exited(_) => {}
    }

    // The status the console implies, checked against the real one below.
    let mut expected = status::SUCCESS;
    for fatal in &transcript.fatal {
        expected = match fatal {
            Fatal::BootError(_) => status::BOOT_ERROR,
            Fatal::Panic { .. } => status::PANIC,
            Fatal::Exception { .. } => status::EXCEPTION,
        };
        failures.push(Failure::Fatal(fatal.clone()));
    }
    for t in transcript.failed_tests() {
        failures.push(Failure::TestFailed {
            name: t.name.clone(),
            reasons: t.reasons.clone(),
        });
    }
    let parsed = transcript.counts();
    if transcript.fatal.is_empty() && parsed.failed > 0 {
        expected = status::TESTS_FAILED;
    }
    match transcript.summary {
        // A fatal report ends the run early; the missing summary is a consequence, not news.
        None if transcript.fatal.is_empty() => failures.push(Failure::MissingSummary),
        None => {}
        Some(summary) if summary != parsed => {
            failures.push(Failure::SummaryMismatch { summary, parsed })
        }
        Some(_) => {}
    }
    if let RunEnd::Exited(actual) = end
        && actual != expected
    {
        failures.push(Failure::UnexpectedStatus { actual, expected });
    }
    Verdict {
        tests: transcript.tests.clone(),
        failures,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::parse;

    fn verdict(text: &str, end: RunEnd) -> Verdict {
        judge(&parse(text), end)
    }

    #[test]
    fn all_passed() {
        let v = verdict(
            "test a::x ... ok\ntest a::y ... ok\n2 passed, 0 failed\n",
            RunEnd::Exited(0),
        );
        assert!(v.passed(), "{v}");
        assert_eq!(
            v.counts(),
            Summary {
                passed: 2,
                failed: 0,
                skipped: 0,
            }
        );
    }

    #[test]
    fn a_failed_test_is_named_with_its_reason() {
        let v = verdict(
            "test a::x ... ok\n    left 1, right 2\ntest a::y ... FAILED\n1 passed, 1 failed\n",
            RunEnd::Exited(1),
        );
        assert_eq!(
            v.failures,
            vec![Failure::TestFailed {
                name: "a::y".into(),
                reasons: vec!["left 1, right 2".into()]
            }]
        );
        assert_eq!(
            v.counts(),
            Summary {
                passed: 1,
                failed: 1,
                skipped: 0,
            }
        );
        let text = v.to_string();
        assert!(
            text.contains("test a::y FAILED\n    left 1, right 2"),
            "{text}"
        );
    }

    #[test]
    fn failed_line_with_exit_zero_is_still_a_failure_and_flags_the_status() {
        let v = verdict(
            "test a::y ... FAILED\n0 passed, 1 failed\n",
            RunEnd::Exited(0),
        );
        assert!(!v.passed());
        assert!(v.failures.contains(&Failure::UnexpectedStatus {
            actual: 0,
            expected: 1
        }));
    }

    #[test]
    fn nonzero_status_with_a_clean_console_fails() {
        let v = verdict("test a::x ... ok\n1 passed, 0 failed\n", RunEnd::Exited(1));
        assert_eq!(
            v.failures,
            vec![Failure::UnexpectedStatus {
                actual: 1,
                expected: 0
            }]
        );
        assert_eq!(v.counts().failed, 1, "an unattributed failure still counts");
    }

    #[test]
    fn panic_in_a_test_without_summary() {
        let v = verdict(
            "test a::x ... ok\n    deliberate failure\ntest a::y ... FAILED\n\
             \n*** PANIC on CPU 0: panicked at k.rs:1:1:\nboom\ntest a::z ... FAILED\n",
            RunEnd::Exited(101),
        );
        assert!(!v.passed());
        let names: Vec<_> = v.failed_tests().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a::y", "a::z"]);
        assert!(matches!(
            &v.failures[0],
            Failure::Fatal(Fatal::Panic { test: Some(t), .. }) if t == "a::z"
        ));
        // The summary is missing because of the panic: not reported separately; the status
        // matches the panic.
        assert!(!v.failures.contains(&Failure::MissingSummary));
        assert!(
            !v.failures
                .iter()
                .any(|f| matches!(f, Failure::UnexpectedStatus { .. }))
        );
        assert_eq!(
            v.counts(),
            Summary {
                passed: 1,
                failed: 2,
                skipped: 0,
            }
        );
    }

    #[test]
    fn exception_and_boot_error() {
        let v = verdict(
            "test a::x ... ok\n*** UNEXPECTED EXCEPTION on CPU 1: SError\n    ESR 0x0\n",
            RunEnd::Exited(102),
        );
        assert_eq!(v.failures.len(), 1, "{v}");
        assert!(v.to_string().contains("in the test after a::x"));
        assert_eq!(v.counts().failed, 1);

        let v = verdict(
            "BOOT ERROR: no SMMU in the device tree\n",
            RunEnd::Exited(3),
        );
        assert_eq!(
            v.failures,
            vec![Failure::Fatal(Fatal::BootError(
                "no SMMU in the device tree".into()
            ))]
        );
    }

    #[test]
    fn missing_summary_and_mismatch() {
        let v = verdict("test a::x ... ok\n", RunEnd::Exited(0));
        assert_eq!(v.failures, vec![Failure::MissingSummary]);

        let v = verdict("test a::x ... ok\n2 passed, 0 failed\n", RunEnd::Exited(0));
        assert_eq!(
            v.failures,
            vec![Failure::SummaryMismatch {
                summary: Summary {
                    passed: 2,
                    failed: 0,
                    skipped: 0,
                },
                parsed: Summary {
                    passed: 1,
                    failed: 0,
                    skipped: 0,
                }
            }]
        );
    }

    #[test]
    fn timeout_and_deadlock() {
        let v = verdict(
            "test a::x ... ok\n",
            RunEnd::TimedOut(Duration::from_secs(120)),
        );
        assert_eq!(
            v.failures,
            vec![
                Failure::TimedOut(Duration::from_secs(120)),
                Failure::MissingSummary
            ]
        );
        assert!(v.to_string().contains("timed out after 120 s"));
        let v = verdict("", RunEnd::Deadlock);
        assert_eq!(v.failures[0], Failure::Deadlock);
        assert_eq!(
            v.counts(),
            Summary {
                passed: 0,
                failed: 1,
                skipped: 0,
            }
        );
    }

    #[test]
    fn skipped_tests_do_not_fail_the_run() {
        let v = verdict(
            "test a::x ... ok\ntest a::y ... skipped (two edu devices)\n1 passed, 0 failed, 1 skipped\n",
            RunEnd::Exited(0),
        );
        assert!(v.passed(), "{v}");
        assert_eq!(v.counts().to_string(), "1 passed, 0 failed, 1 skipped");
        // The summary must agree on skipped tests too.
        let v = verdict(
            "test a::y ... skipped (x)\n0 passed, 0 failed\n",
            RunEnd::Exited(0),
        );
        assert!(
            matches!(v.failures[..], [Failure::SummaryMismatch { .. }]),
            "{v}"
        );
    }

    #[test]
    fn empty_selection_passes() {
        // A filter that matches nothing is not a failure (as with cargo test).
        let v = verdict(
            "running 0 on-target tests\n0 passed, 0 failed\n",
            RunEnd::Exited(0),
        );
        assert!(v.passed());
    }
}
