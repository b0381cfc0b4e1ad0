//! The harness's errors: things that stop it from producing a verdict at all.

use std::{fmt, io, path::PathBuf, process::ExitStatus};

/// Why the harness could not build or run the kernel.
#[derive(Debug)]
pub enum Error {
    /// Starting or talking to a process, or a file operation, failed.
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// `cargo build` of the kernel image failed.
    Build(ExitStatus),
    /// `cargo build` succeeded but reported no kernel executable.
    NoArtifact,
    /// A kernel image path that does not look like `<target>/<triple>/<profile>/kernel`.
    UnexpectedArtifactPath(PathBuf),
    /// Bad command-line usage.
    Usage(String),
}

impl Error {
    /// An [`Error::Io`] with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::Build(status) => write!(f, "building the kernel image failed ({status})"),
            Self::NoArtifact => write!(f, "cargo reported no kernel executable"),
            Self::UnexpectedArtifactPath(p) => {
                write!(f, "unexpected kernel image path {}", p.display())
            }
            Self::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
