//! RAM, and the ranges inside it that must not be handed out.
//!
//! The frame allocator is built from [`memory`] minus [`reserved`] minus the DTB itself, so
//! every `memory` node and every `reg` entry counts (a machine may split RAM across nodes or
//! entries), and both kinds of reservation count: the header's `/memreserve/` block and the
//! `/reserved-memory` node.

use super::{PlatformError, region::Region, tree::Tree};
use alloc::{string::String, vec::Vec};
use core::fmt;

/// Where a reservation came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservedOrigin {
    /// An entry of the DTB header's memory-reservation block (`/memreserve/` in DTS).
    MemReserve,
    /// A child of `/reserved-memory`; the path of that child.
    Node(String),
}

/// A range of RAM that must not be allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    /// The range.
    pub region: Region,
    /// `no-map`: the range must not even be mapped (reserved-memory binding). Always false for
    /// `/memreserve/` entries.
    pub no_map: bool,
    /// Where it came from.
    pub origin: ReservedOrigin,
}

impl fmt::Display for ReservedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reserved {}", self.region)?;
        match &self.origin {
            ReservedOrigin::MemReserve => write!(f, " (/memreserve/)")?,
            ReservedOrigin::Node(path) => write!(f, " ({path})")?,
        }
        if self.no_map {
            write!(f, ", no-map")?;
        }
        Ok(())
    }
}

/// Every `reg` entry of every enabled node with `device_type = "memory"` (DT spec v0.4 §3.4),
/// sorted by base, zero-sized entries dropped. At least one region is required.
pub fn memory(tree: &Tree<'_>) -> Result<Vec<Region>, PlatformError> {
    let mut out = Vec::new();
    for i in tree.indices() {
        if tree.is_enabled(i) && matches!(tree.string(i, "device_type"), Ok(Some("memory"))) {
            out.extend(tree.required_reg(i)?.into_iter().filter(|r| r.size != 0));
        }
    }
    if out.is_empty() {
        return Err(PlatformError::Missing(super::missing::MEMORY));
    }
    out.sort_unstable();
    Ok(out)
}

/// The `/memreserve/` entries followed by the static children of `/reserved-memory` (DT spec
/// v0.4 §3.5.1; `Documentation/devicetree/bindings/reserved-memory/reserved-memory.yaml`). A
/// child with only `size` asks the OS to allocate a region dynamically; it reserves no fixed range
/// and is skipped.
pub fn reserved(
    tree: &Tree<'_>,
    memreserve: Vec<Region>,
) -> Result<Vec<ReservedRegion>, PlatformError> {
    let mut out: Vec<ReservedRegion> = memreserve
        .into_iter()
        .map(|region| ReservedRegion {
            region,
            no_map: false,
            origin: ReservedOrigin::MemReserve,
        })
        .collect();
    if let Some(node) = tree.find_path("/reserved-memory") {
        for child in tree.children(node).filter(|&c| tree.is_enabled(c)) {
            for region in tree.reg(child)? {
                out.push(ReservedRegion {
                    region,
                    no_map: tree.has(child, "no-map"),
                    origin: ReservedOrigin::Node(tree.path(child).into()),
                });
            }
        }
    }
    Ok(out)
}
