//! The flattened-devicetree container (DT spec v0.4 chapter 5): header, memory-reservation block,
//! and a structural check of the structure block.
//!
//! Why check the structure ourselves before the `fdt` crate walks it: fdt 0.1.5 slices and unwraps
//! as it goes, so a truncated property, a string offset outside the strings block or a non-UTF-8
//! name makes it panic, and it mis-walks legal `FDT_NOP` tokens (its `skip_current_node` asserts
//! `FDT_END_NODE` where a NOP left by libfdt's `fdt_nop_node()` sits between siblings, and its
//! property loops stop at a NOP between properties). A kernel should refuse a bad DTB with an error
//! that says where, not panic in a dependency, so everything the crate will touch is checked here,
//! and NOPs are squeezed out of a private copy when there are any.

use super::{PlatformError, error::invalid, region::Region};
use alloc::vec::Vec;

/// `magic` of an FDT header (DT spec v0.4 §5.2).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of a version-17 header (ten 32-bit fields).
const HEADER_LEN: usize = 40;
/// The oldest layout we read: version 17 added `size_dt_struct` (DT spec v0.4 §5.2).
const MIN_VERSION: u32 = 17;

// Structure-block tokens (DT spec v0.4 §5.4.1).
const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Deepest node nesting accepted. Real trees are a handful of levels deep; the bound keeps the
/// recursive walk in `tree` shallow on a hostile blob.
pub const MAX_DEPTH: usize = 32;

/// The header fields discovery uses, as byte offsets and sizes that have been checked to lie
/// inside the blob.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// `totalsize`: bytes from the header to the end of the last block.
    pub totalsize: usize,
    off_struct: usize,
    size_struct: usize,
    off_strings: usize,
    size_strings: usize,
    off_rsvmap: usize,
}

fn be32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be64(data: &[u8], off: usize) -> Option<u64> {
    let bytes = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Header field at byte `off` as a `usize` (the header is known to be at least 40 bytes long).
fn field(data: &[u8], off: usize) -> usize {
    be32(data, off).unwrap_or(0) as usize
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads `totalsize` from the start of a DTB after checking the magic: all the boot code needs in
/// order to turn the pointer it was handed into a slice.
pub fn total_size(header: &[u8]) -> Result<usize, PlatformError> {
    match be32(header, 0) {
        None => Err(invalid(0, "shorter than the FDT magic")),
        Some(FDT_MAGIC) => {
            let size = be32(header, 4).ok_or(invalid(4, "header truncated before totalsize"))?;
            Ok(size as usize)
        }
        Some(_) => Err(invalid(0, "bad magic (expected 0xd00dfeed)")),
    }
}

impl Header {
    /// Parses and bounds-checks the header (DT spec v0.4 §5.2).
    pub fn parse(data: &[u8]) -> Result<Self, PlatformError> {
        let totalsize = total_size(data)?;
        if data.len() < HEADER_LEN {
            return Err(invalid(0, "shorter than the 40-byte FDT header"));
        }
        if totalsize < HEADER_LEN || totalsize > data.len() {
            return Err(invalid(
                4,
                "totalsize is smaller than the header or larger than the blob",
            ));
        }
        if be32(data, 20).unwrap_or(0) < MIN_VERSION {
            return Err(invalid(20, "version is below 17 (no size_dt_struct)"));
        }
        if be32(data, 24).unwrap_or(u32::MAX) > MIN_VERSION {
            return Err(invalid(
                24,
                "last_comp_version is above 17: layout not understood",
            ));
        }
        let h = Self {
            totalsize,
            off_struct: field(data, 8),
            off_strings: field(data, 12),
            off_rsvmap: field(data, 16),
            size_strings: field(data, 32),
            size_struct: field(data, 36),
        };
        let inside =
            |off: usize, size: usize| off.checked_add(size).is_some_and(|e| e <= totalsize);
        if !h.off_struct.is_multiple_of(4) || !inside(h.off_struct, h.size_struct) {
            return Err(invalid(
                8,
                "structure block is misaligned or outside totalsize",
            ));
        }
        if !inside(h.off_strings, h.size_strings) {
            return Err(invalid(12, "strings block is outside totalsize"));
        }
        if !h.off_rsvmap.is_multiple_of(8) || h.off_rsvmap >= totalsize {
            return Err(invalid(
                16,
                "memory reservation block is misaligned or outside totalsize",
            ));
        }
        Ok(h)
    }

    /// Checks the structure block token by token (DT spec v0.4 §5.4) so the `fdt` crate cannot
    /// trip over it, and returns the byte offsets of any `FDT_NOP` tokens.
    ///
    /// Checked: exactly one root node, with an empty name; every other node named; names and
    /// property names NUL-terminated UTF-8; property values and name offsets in bounds; properties
    /// before child nodes (§5.4.2); balanced nesting no deeper than [`MAX_DEPTH`]; a final
    /// `FDT_END`.
    pub fn check_structure(&self, data: &[u8]) -> Result<Vec<usize>, PlatformError> {
        let end = self.off_struct + self.size_struct;
        let block = &data[..end];
        let strings = &data[self.off_strings..self.off_strings + self.size_strings];
        let mut nops = Vec::new();
        let mut pos = self.off_struct;
        let mut depth = 0usize;
        let mut seen_root = false;
        let mut in_props = false;
        loop {
            let token =
                be32(block, pos).ok_or(invalid(pos, "structure block ends without FDT_END"))?;
            match token {
                FDT_BEGIN_NODE => {
                    if depth == 0 && seen_root {
                        return Err(invalid(pos, "a second top-level node after the root"));
                    }
                    let name_start = pos + 4;
                    let name = cstr(block, name_start)
                        .ok_or(invalid(pos, "node name is not NUL-terminated UTF-8"))?;
                    if depth == 0 && !name.is_empty() {
                        return Err(invalid(pos, "the root node has a name"));
                    }
                    if depth > 0 && name.is_empty() {
                        return Err(invalid(pos, "a node other than the root has no name"));
                    }
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(invalid(pos, "nodes nested deeper than 32 levels"));
                    }
                    seen_root = true;
                    in_props = true;
                    pos = align4(name_start + name.len() + 1);
                }
                FDT_END_NODE => {
                    if depth == 0 {
                        return Err(invalid(pos, "FDT_END_NODE outside any node"));
                    }
                    depth -= 1;
                    in_props = false;
                    pos += 4;
                }
                FDT_PROP => {
                    if depth == 0 {
                        return Err(invalid(pos, "property outside any node"));
                    }
                    if !in_props {
                        return Err(invalid(pos, "property after a child node"));
                    }
                    let (len, name_off) =
                        be32(block, pos + 4)
                            .zip(be32(block, pos + 8))
                            .ok_or(invalid(
                                pos,
                                "property header runs past the structure block",
                            ))?;
                    let value_end = (pos + 12)
                        .checked_add(len as usize)
                        .filter(|&e| e <= end)
                        .ok_or(invalid(pos, "property value runs past the structure block"))?;
                    cstr(strings, name_off as usize).ok_or(invalid(
                        pos,
                        "property name is outside the strings block or not NUL-terminated UTF-8",
                    ))?;
                    pos = align4(value_end);
                }
                FDT_NOP => {
                    nops.push(pos);
                    pos += 4;
                }
                FDT_END => {
                    if depth != 0 {
                        return Err(invalid(pos, "FDT_END inside an unterminated node"));
                    }
                    if !seen_root {
                        return Err(invalid(pos, "no root node"));
                    }
                    return Ok(nops);
                }
                _ => return Err(invalid(pos, "unknown structure-block token")),
            }
        }
    }

    /// A copy of the blob with the given `FDT_NOP` tokens removed from the structure block (and
    /// `size_dt_struct` shrunk to match). NOPs carry nothing (DT spec v0.4 §5.4.1), so the tree is
    /// unchanged; only the `fdt` crate's walk needs this.
    pub fn without_nops(&self, data: &[u8], nops: &[usize]) -> Vec<u8> {
        let mut out = data[..self.totalsize].to_vec();
        let end = self.off_struct + self.size_struct;
        let mut nops = nops.iter().copied().peekable();
        let mut write = self.off_struct;
        let mut read = self.off_struct;
        while read + 4 <= end {
            if nops.next_if_eq(&read).is_none() {
                out.copy_within(read..read + 4, write);
                write += 4;
            }
            read += 4;
        }
        let new_size = (write - self.off_struct) as u32;
        out[36..40].copy_from_slice(&new_size.to_be_bytes());
        out
    }

    /// The `/memreserve/` entries (DT spec v0.4 §5.3): (address, size) pairs up to the all-zero
    /// terminator. Zero-sized entries reserve nothing and are dropped.
    pub fn mem_reservations(&self, data: &[u8]) -> Result<Vec<Region>, PlatformError> {
        let mut out = Vec::new();
        let mut off = self.off_rsvmap;
        loop {
            let entry = be64(&data[..self.totalsize], off)
                .zip(be64(&data[..self.totalsize], off + 8))
                .ok_or(invalid(
                    off,
                    "memory reservation block has no terminating entry",
                ))?;
            match entry {
                (0, 0) => return Ok(out),
                (_, 0) => {}
                (base, size) => out.push(Region::new(base, size).ok_or(invalid(
                    off,
                    "memory reservation wraps around the address space",
                ))?),
            }
            off += 16;
        }
    }
}

/// The NUL-terminated UTF-8 string starting at `off` in `data`.
fn cstr(data: &[u8], off: usize) -> Option<&str> {
    let tail = data.get(off..)?;
    let len = tail.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&tail[..len]).ok()
}
