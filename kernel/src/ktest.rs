//! On-target test registry and runner, on stable Rust.
//!
//! [`ktest!`](crate::ktest) places a [`KTest`] descriptor in the `.ktests` linker section;
//! `linker.ld` brackets the section with `__ktests_start`/`__ktests_end`, so the runner sees
//! every test linked into the image without a central list. Tests live next to the code they
//! test.
//!
//! Output contract, read by the host harness (tests/): per test, any failure reason first,
//! then exactly one line `test <module::name> ... ok`, `test <module::name> ... FAILED` or
//! `test <module::name> ... skipped (<what it needs>)`; finally `N passed, N failed` (followed
//! by `, N skipped` when tests were skipped) — the lines of [`protocol::console`]. The exit status is 0 iff nothing failed. A panic
//! inside a test prints `test <name> ... FAILED` from the panic handler before the panic exit.

use alloc::string::String;

/// Why an on-target test did not pass.
#[derive(Debug)]
pub enum TestFailure {
    /// The test failed, for this reason.
    Failed(String),
    /// The machine lacks what the test needs (e.g. a second DMA device); the test did not run.
    Skipped(&'static str),
}

impl From<String> for TestFailure {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

impl From<&str> for TestFailure {
    fn from(reason: &str) -> Self {
        Self::Failed(reason.into())
    }
}

/// The result of an on-target test.
pub type TestResult = Result<(), TestFailure>;

/// Skip the current test unless `cond` holds (the machine lacks what it needs).
pub fn require(cond: bool, what: &'static str) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(TestFailure::Skipped(what))
    }
}

/// A registered on-target test.
#[repr(C)]
pub struct KTest {
    /// `module::path::name` (without the crate name).
    pub name: &'static str,
    /// The test body.
    pub func: fn() -> TestResult,
}

/// Register an on-target test: `ktest! { fn name() { ...; Ok(()) } }`.
///
/// Only compiled for the target; on the host the test and its registration disappear.
#[macro_export]
macro_rules! ktest {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        #[cfg(target_os = "none")]
        $(#[$meta])*
        fn $name() -> $crate::ktest::TestResult $body

        #[cfg(target_os = "none")]
        const _: () = {
            #[used]
            #[unsafe(link_section = ".ktests")]
            static TEST: $crate::ktest::KTest = $crate::ktest::KTest {
                name: $crate::ktest::strip_crate(concat!(module_path!(), "::", stringify!($name))),
                func: $name,
            };
        };
    };
}

/// Fail the current on-target test with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! kassert {
    ($cond:expr $(,)?) => {
        if !$cond {
            return Err(alloc::format!("assertion failed: {} ({}:{})", stringify!($cond), file!(), line!()).into());
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(alloc::format!("{} ({}:{})", format_args!($($arg)+), file!(), line!()).into());
        }
    };
}

/// Fail the current on-target test unless the two values are equal.
#[macro_export]
macro_rules! kassert_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(alloc::format!(
                "assertion failed: {} == {}: left {:?}, right {:?} ({}:{})",
                stringify!($left), stringify!($right), l, r, file!(), line!()
            ).into());
        }
    }};
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(alloc::format!(
                "{}: left {:?}, right {:?} ({}:{})",
                format_args!($($arg)+), l, r, file!(), line!()
            ).into());
        }
    }};
}

/// `module_path!()` starts with the crate name; test names are reported without it.
pub const fn strip_crate(path: &'static str) -> &'static str {
    let bytes = path.as_bytes();
    let prefix = b"kernel::";
    if bytes.len() > prefix.len() {
        let mut i = 0;
        while i < prefix.len() && bytes[i] == prefix[i] {
            i += 1;
        }
        if i == prefix.len() {
            let (_, rest) = bytes.split_at(prefix.len());
            // Splitting after an ASCII prefix keeps valid UTF-8, so this never fails.
            return match core::str::from_utf8(rest) {
                Ok(s) => s,
                Err(_) => path,
            };
        }
    }
    path
}

#[cfg(target_os = "none")]
mod runner {
    use super::KTest;
    use crate::{exit, println, time};
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicPtr, Ordering};
    use protocol::console::{Summary, TestLine, Verdict};

    unsafe extern "C" {
        static __ktests_start: u8;
        static __ktests_end: u8;
    }

    /// The test currently running, for the panic handler.
    static CURRENT: AtomicPtr<KTest> = AtomicPtr::new(core::ptr::null_mut());

    /// All registered tests, grouped by top-level module and sorted by test name within it
    /// (link order is not source order; the scenario tests, spread over several modules, run
    /// in scenario-number order).
    pub fn all() -> Vec<&'static KTest> {
        // SAFETY: the linker script places only `KTest` values (from `ktest!`) between the two
        // symbols, aligned for KTest; the section is read-only data that lives forever.
        let tests: &'static [KTest] = unsafe {
            let start = (&raw const __ktests_start).cast::<KTest>();
            let end = (&raw const __ktests_end).cast::<KTest>();
            core::slice::from_raw_parts(start, end.offset_from(start) as usize)
        };
        let mut v: Vec<&'static KTest> = tests.iter().collect();
        let key = |t: &KTest| {
            let top = t.name.split("::").next().unwrap_or("");
            let leaf = t.name.rsplit("::").next().unwrap_or("");
            (top, leaf, t.name)
        };
        v.sort_by(|a, b| key(a).cmp(&key(b)));
        v
    }

    /// The name of the test that is running, if any.
    pub fn current() -> Option<&'static str> {
        let p = CURRENT.load(Ordering::Relaxed);
        // SAFETY: CURRENT only ever holds null or a pointer to a KTest in the static section.
        unsafe { p.as_ref() }.map(|t| t.name)
    }

    /// Run every test whose name contains `filter`, print the summary, and exit.
    pub fn run(filter: &str) -> ! {
        let selected: Vec<_> = all()
            .into_iter()
            .filter(|t| t.name.contains(filter))
            .collect();
        println!(
            "running {} on-target tests (filter {:?})",
            selected.len(),
            filter
        );
        let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
        let suite_start = time::now_ns();
        for test in &selected {
            CURRENT.store((*test as *const KTest).cast_mut(), Ordering::Relaxed);
            let start = time::now_ns();
            let result = (test.func)();
            let ms = (time::now_ns() - start) / 1_000_000;
            match result {
                Ok(()) => {
                    passed += 1;
                    log::debug!("{} took {} ms", test.name, ms);
                    println!(
                        "{}",
                        TestLine {
                            name: test.name,
                            verdict: Verdict::Ok
                        }
                    );
                }
                Err(super::TestFailure::Skipped(what)) => {
                    skipped += 1;
                    println!(
                        "{}",
                        TestLine {
                            name: test.name,
                            verdict: Verdict::Skipped(what)
                        }
                    );
                }
                Err(super::TestFailure::Failed(reason)) => {
                    failed += 1;
                    for line in reason.lines() {
                        println!("    {line}");
                    }
                    println!(
                        "{}",
                        TestLine {
                            name: test.name,
                            verdict: Verdict::Failed
                        }
                    );
                }
            }
        }
        CURRENT.store(core::ptr::null_mut(), Ordering::Relaxed);
        println!(
            "on-target suite time: {} ms",
            (time::now_ns() - suite_start) / 1_000_000
        );
        println!(
            "{}",
            Summary {
                passed,
                failed,
                skipped
            }
        );
        exit::exit(if failed == 0 {
            exit::ExitStatus::Success
        } else {
            exit::ExitStatus::TestsFailed
        })
    }
}
#[cfg(target_os = "none")]
pub use runner::{all, current, run};

#[cfg(test)]
mod tests {
    #[test]
    fn strips_only_the_crate_prefix() {
        assert_eq!(super::strip_crate("kernel::mm::tlb::t"), "mm::tlb::t");
        assert_eq!(super::strip_crate("other::x"), "other::x");
        assert_eq!(super::strip_crate("kernel::"), "kernel::");
    }
}

// Deliberately failing tests, compiled only into the harness self-test image: they prove the
// host harness notices a failing on-target test, a panic, and an unexpected exception.
#[cfg(feature = "harness-selftest")]
mod harness_selftest {
    crate::ktest! {
        fn harness_selftest_reports_failure() {
            Err("deliberate failure: the harness must report this test as FAILED".into())
        }
    }

    crate::ktest! {
        fn harness_selftest_zz_panic() {
            panic!("deliberate panic: the harness must report a panic");
        }
    }
}

// Compiled only into the self-test image, and outside `harness_selftest` so that filter does
// not select it: it ends the run (`ktest=exception_selftest`).
#[cfg(feature = "harness-selftest")]
mod exception_selftest {
    crate::ktest! {
        /// A read through the lower half with no address space entered: the empty TTBR0
        /// table makes it a translation fault nobody resolves, which must end the run with a
        /// decoded report (selected on its own: `ktest=exception_selftest`).
        fn unresolved_lower_half_abort() {
            // SAFETY: deliberately unsound: the address is unmapped, and the resulting abort is
            // the point of the test; the exception handler reports it and exits the machine.
            let v = unsafe { core::ptr::read_volatile(0x1234_5000 as *const u64) };
            Err(alloc::format!("read an unmapped address and got {v:#x}").into())
        }
    }
}
