//! The one error type of device-tree discovery.
//!
//! Each variant names the thing at fault (a node path, a property, a byte offset), so a boot that
//! stops on a bad or unexpected device tree says *what* in the DT is wrong instead of failing later
//! inside whichever driver first used a wrong value.

use alloc::string::String;
use core::fmt;

/// Why [`Platform::discover`](super::Platform::discover) rejected a device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformError {
    /// The blob is not a well-formed flattened device tree (DT spec v0.4 chapter 5): bad header,
    /// a block outside the blob, or a broken structure block. `offset` is a byte offset into the
    /// blob.
    InvalidDtb {
        /// Byte offset of the offending field or token.
        offset: usize,
        /// What is wrong there.
        why: &'static str,
    },
    /// A required node or device is absent. The string names the path or the `compatible` that
    /// was looked for, e.g. `"/cpus"` or `"PL011 UART (compatible \"arm,pl011\")"`.
    Missing(&'static str),
    /// A node that discovery needs lacks a property it must have.
    MissingProperty {
        /// Full path of the node.
        node: String,
        /// Name of the absent property.
        property: &'static str,
    },
    /// A property is present but cannot be decoded, or decodes to something unusable.
    Malformed {
        /// Full path of the node.
        node: String,
        /// Name of the property.
        property: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidDtb { offset, why } => {
                write!(f, "invalid device tree blob at byte {offset:#x}: {why}")
            }
            Self::Missing(what) => write!(f, "device tree has no {what}"),
            Self::MissingProperty { node, property } => {
                write!(f, "device tree node {node} has no `{property}` property")
            }
            Self::Malformed {
                node,
                property,
                why,
            } => {
                write!(
                    f,
                    "device tree property {node} `{property}` is malformed: {why}"
                )
            }
        }
    }
}

impl core::error::Error for PlatformError {}

/// Shorthand for [`PlatformError::InvalidDtb`].
pub(super) const fn invalid(offset: usize, why: &'static str) -> PlatformError {
    PlatformError::InvalidDtb { offset, why }
}
