//! Exit statuses: the kernel's (its semihosting exit code, which QEMU passes on as its own) and
//! the hard timeout of `scripts/qemu-run`.

/// How a run of the kernel ended, as QEMU's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ExitStatus {
    /// Every selected test passed, or the main job finished.
    Success = 0,
    /// At least one on-target test failed.
    TestsFailed = 1,
    /// The boot could not complete (a `BOOT ERROR:` line says why).
    BootError = 3,
    /// A Rust panic (a `*** PANIC` report).
    Panic = 101,
    /// An unexpected exception (a `*** UNEXPECTED EXCEPTION` report).
    UnexpectedException = 102,
}

/// `scripts/qemu-run`'s status when its hard timeout expired (as `timeout(1)`).
pub const TIMEOUT: i32 = 124;

impl ExitStatus {
    /// The process exit code.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The status with this exit code, if it is one of the kernel's.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::TestsFailed,
            3 => Self::BootError,
            101 => Self::Panic,
            102 => Self::UnexpectedException,
            _ => return None,
        })
    }

    /// What the status means, in words.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::TestsFailed => "tests failed",
            Self::BootError => "boot error",
            Self::Panic => "panic",
            Self::UnexpectedException => "unexpected exception",
        }
    }
}

/// What any exit code means (the kernel's statuses, the timeout, or neither).
pub const fn describe_code(code: i32) -> &'static str {
    match ExitStatus::from_code(code) {
        Some(s) => s.describe(),
        None if code == TIMEOUT => "timeout",
        None => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_described() {
        for s in [
            ExitStatus::Success,
            ExitStatus::TestsFailed,
            ExitStatus::BootError,
            ExitStatus::Panic,
            ExitStatus::UnexpectedException,
        ] {
            assert_eq!(ExitStatus::from_code(s.code()), Some(s));
            assert_eq!(describe_code(s.code()), s.describe());
        }
        assert_eq!(ExitStatus::from_code(TIMEOUT), None);
        assert_eq!(describe_code(TIMEOUT), "timeout");
        assert_eq!(describe_code(7), "unknown status");
    }
}
