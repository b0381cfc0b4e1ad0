//! Console lines of an on-target run. The kernel prints, in order:
//!
//! - one [`TestLine`] per test: `test <module::name> ... ok`, `... FAILED` (after the failure's
//!   reasons, each on an indented line) or `... skipped (<what it needs>)`;
//! - the [`Summary`]: `N passed, N failed`, followed by `, N skipped` when tests were skipped.
//!
//! And, when a run cannot go on, a line starting with one of the fatal prefixes:
//! [`BOOT_ERROR`], [`PANIC`] (`*** PANIC on CPU n: ...`) or [`UNEXPECTED_EXCEPTION`]
//! (`*** UNEXPECTED EXCEPTION on CPU n: ...`, followed by indented register lines).

use core::fmt;

/// Starts the line of a boot that could not complete.
pub const BOOT_ERROR: &str = "BOOT ERROR:";
/// Starts a panic report.
pub const PANIC: &str = "*** PANIC";
/// Starts an unexpected-exception report.
pub const UNEXPECTED_EXCEPTION: &str = "*** UNEXPECTED EXCEPTION";

/// The result of one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Passed.
    Ok,
    /// Failed.
    Failed,
    /// Not run: the machine lacks what it needs (described, possibly empty).
    Skipped(&'a str),
}

/// `test NAME ... ok|FAILED|skipped (WHAT)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestLine<'a> {
    /// The test's name (no whitespace).
    pub name: &'a str,
    /// Its result.
    pub verdict: Verdict<'a>,
}

impl fmt::Display for TestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            Verdict::Ok => write!(f, "test {} ... ok", self.name),
            Verdict::Failed => write!(f, "test {} ... FAILED", self.name),
            Verdict::Skipped(what) => write!(f, "test {} ... skipped ({what})", self.name),
        }
    }
}

impl<'a> TestLine<'a> {
    /// Parses one line (without its line terminator); `None` if it is not a test line.
    pub fn parse(line: &'a str) -> Option<Self> {
        let rest = line.strip_prefix("test ")?;
        let (name, verdict) = if let Some(name) = rest.strip_suffix(" ... ok") {
            (name, Verdict::Ok)
        } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
            (name, Verdict::Failed)
        } else {
            let (name, what) = rest.split_once(" ... skipped")?;
            let what = what.trim();
            let what = match what.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
                Some(inner) => inner,
                None if what.is_empty() => "",
                None => return None,
            };
            (name, Verdict::Skipped(what))
        };
        let valid = !name.is_empty() && !name.contains(char::is_whitespace);
        valid.then_some(Self { name, verdict })
    }
}

/// `N passed, N failed[, N skipped]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were skipped.
    pub skipped: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}

impl core::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl Summary {
    /// Parses one (trimmed) line; `None` if it is not a summary.
    pub fn parse(line: &str) -> Option<Self> {
        let (passed, rest) = line.split_once(" passed, ")?;
        let (failed, skipped) = match rest.split_once(" failed, ") {
            Some((failed, skipped)) => (failed, Some(skipped.strip_suffix(" skipped")?)),
            None => (rest.strip_suffix(" failed")?, None),
        };
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(Self {
            passed: number(passed)?,
            failed: number(failed)?,
            skipped: match skipped {
                Some(s) => number(s)?,
                None => 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn test_lines_round_trip() {
        for verdict in [
            Verdict::Ok,
            Verdict::Failed,
            Verdict::Skipped("two edu devices"),
        ] {
            let line = TestLine {
                name: "mm::ktests::a",
                verdict,
            };
            assert_eq!(TestLine::parse(&line.to_string()), Some(line));
        }
        assert_eq!(
            TestLine::parse("test a ... skipped").map(|t| t.verdict),
            Some(Verdict::Skipped(""))
        );
        assert_eq!(TestLine::parse("test two words ... ok"), None);
        assert_eq!(TestLine::parse("test  ... ok"), None);
        assert_eq!(TestLine::parse("test a ... skipped because"), None);
        assert_eq!(TestLine::parse("tests a ... ok"), None);
    }

    #[test]
    fn summaries_round_trip() {
        for s in [
            Summary {
                passed: 3,
                failed: 0,
                skipped: 0,
            },
            Summary {
                passed: 53,
                failed: 1,
                skipped: 4,
            },
        ] {
            assert_eq!(Summary::parse(&s.to_string()), Some(s));
        }
        assert_eq!(Summary::parse("2 passed, 0 failed").unwrap().skipped, 0);
        assert_eq!(Summary::parse("x passed, 0 failed"), None);
        assert_eq!(Summary::parse("2 passed, 0 failed, 1"), None);
        assert_eq!(Summary::parse("2 passed"), None);
    }
}
