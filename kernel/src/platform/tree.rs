//! An index over the device tree: every node with its full path, its parent and its raw
//! properties, plus the generic DT rules that all device decoders share (cell counts, `reg` with
//! bus translation, string lists, phandles, interrupt parents).
//!
//! The `fdt` crate walks the blob once to build this index (after [`dtb`](super::dtb) has checked
//! that the walk cannot panic). fdt 0.1.5 has no parent links and no node paths, and both are
//! needed: parents for `#address-cells` and `ranges`, paths so that every error names its node.

use super::{PlatformError, cells::Cells, region::Region};
use alloc::{
    format,
    string::{String, ToString},
    vec::Vec,
};

/// One node of the tree.
pub struct Node<'a> {
    /// Full path, e.g. `/intc@8000000/its@8080000`; `/` for the root.
    pub path: String,
    /// The node name with its unit address, e.g. `pl011@9000000`; empty for the root.
    pub name: &'a str,
    /// Index of the parent node; `None` for the root.
    pub parent: Option<usize>,
    props: Vec<(&'a str, &'a [u8])>,
}

/// All nodes, in depth-first document order; index 0 is the root.
pub struct Tree<'a> {
    nodes: Vec<Node<'a>>,
}

/// Index of the root node.
pub const ROOT: usize = 0;

impl<'a> Tree<'a> {
    /// Indexes a blob whose structure [`Header::check_structure`](super::dtb::Header) accepted
    /// and that holds no `FDT_NOP` tokens.
    pub fn build(blob: &'a [u8]) -> Result<Self, PlatformError> {
        let fdt = fdt::Fdt::new(blob)
            .map_err(|_| super::error::invalid(0, "rejected by the fdt crate"))?;
        let root = fdt
            .find_node("/")
            .ok_or(PlatformError::Missing("root node `/`"))?;
        let mut nodes = Vec::new();
        Self::add(root, None, &mut nodes);
        Ok(Self { nodes })
    }

    /// Adds `node` and, recursively, its children. The recursion depth is bounded by
    /// [`MAX_DEPTH`](super::dtb::MAX_DEPTH), which the structure check enforced.
    fn add(node: fdt::node::FdtNode<'_, 'a>, parent: Option<usize>, nodes: &mut Vec<Node<'a>>) {
        let path = match parent {
            None => "/".to_string(),
            Some(ROOT) => format!("/{}", node.name),
            Some(p) => format!("{}/{}", nodes[p].path, node.name),
        };
        let index = nodes.len();
        nodes.push(Node {
            path,
            name: if parent.is_none() { "" } else { node.name },
            parent,
            props: node.properties().map(|p| (p.name, p.value)).collect(),
        });
        for child in node.children() {
            Self::add(child, Some(index), nodes);
        }
    }

    /// Indices of all nodes, in document order.
    pub fn indices(&self) -> core::ops::Range<usize> {
        0..self.nodes.len()
    }

    /// Full path of node `i`.
    pub fn path(&self, i: usize) -> &str {
        &self.nodes[i].path
    }

    /// Index of the parent of `i`; the root is its own parent.
    pub fn parent(&self, i: usize) -> usize {
        self.nodes[i].parent.unwrap_or(ROOT)
    }

    /// Indices of the children of `i`, in document order.
    pub fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (i + 1..self.nodes.len()).filter(move |&c| self.nodes[c].parent == Some(i))
    }

    /// The node at `path`. A path component without a unit address matches a node whose name
    /// without its unit address is equal (DT spec v0.4 §2.2.3), first in document order.
    pub fn find_path(&self, path: &str) -> Option<usize> {
        let mut at = ROOT;
        for component in path.split('/').filter(|c| !c.is_empty()) {
            at = self.children(at).find(|&c| {
                let name = self.nodes[c].name;
                name == component
                    || (!component.contains('@') && name.split('@').next() == Some(component))
            })?;
        }
        Some(at)
    }

    /// Raw value of property `name` of node `i`.
    pub fn prop(&self, i: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[i]
            .props
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// Whether node `i` has property `name` (for boolean properties such as `dma-coherent`).
    pub fn has(&self, i: usize, name: &str) -> bool {
        self.prop(i, name).is_some()
    }

    /// Error naming property `property` of node `i` as malformed.
    pub fn malformed(&self, i: usize, property: &'static str, why: &'static str) -> PlatformError {
        PlatformError::Malformed {
            node: self.nodes[i].path.clone(),
            property,
            why,
        }
    }

    /// Error naming property `property` of node `i` as missing.
    pub fn missing(&self, i: usize, property: &'static str) -> PlatformError {
        PlatformError::MissingProperty {
            node: self.nodes[i].path.clone(),
            property,
        }
    }

    /// Property `name` as cells, or `None` if absent.
    pub fn cells(&self, i: usize, name: &'static str) -> Result<Option<Cells<'a>>, PlatformError> {
        self.prop(i, name)
            .map(|v| {
                Cells::new(v)
                    .ok_or_else(|| self.malformed(i, name, "length is not a multiple of 4"))
            })
            .transpose()
    }

    /// Property `name` as cells; an error if absent.
    pub fn required_cells(&self, i: usize, name: &'static str) -> Result<Cells<'a>, PlatformError> {
        self.cells(i, name)?.ok_or_else(|| self.missing(i, name))
    }

    /// Property `name` as a single `u32` cell, or `None` if absent.
    pub fn u32(&self, i: usize, name: &'static str) -> Result<Option<u32>, PlatformError> {
        match self.prop(i, name) {
            None => Ok(None),
            Some(&[a, b, c, d]) => Ok(Some(u32::from_be_bytes([a, b, c, d]))),
            Some(_) => Err(self.malformed(i, name, "expected exactly one cell")),
        }
    }

    /// Property `name` as a list of NUL-terminated strings (DT spec v0.4 §2.2.4 `<stringlist>`),
    /// or `None` if absent.
    pub fn strings(
        &self,
        i: usize,
        name: &'static str,
    ) -> Result<Option<Vec<&'a str>>, PlatformError> {
        let Some(value) = self.prop(i, name) else {
            return Ok(None);
        };
        let body = value
            .strip_suffix(&[0])
            .ok_or_else(|| self.malformed(i, name, "string is not NUL-terminated"))?;
        let text = core::str::from_utf8(body)
            .map_err(|_| self.malformed(i, name, "string is not UTF-8"))?;
        Ok(Some(text.split('\0').collect()))
    }

    /// Property `name` as one string, or `None` if absent.
    pub fn string(&self, i: usize, name: &'static str) -> Result<Option<&'a str>, PlatformError> {
        match self.strings(i, name)? {
            None => Ok(None),
            Some(list) if list.len() == 1 => Ok(Some(list[0])),
            Some(_) => Err(self.malformed(i, name, "expected one string, found a list")),
        }
    }

    /// Whether node `i` lists `compatible` (DT spec v0.4 §2.3.1).
    pub fn is_compatible(&self, i: usize, compatible: &str) -> bool {
        // Split the raw `<stringlist>` rather than `strings()`: this runs for every node on every
        // lookup, and need not allocate.
        self.prop(i, "compatible")
            .is_some_and(|v| v.split(|&b| b == 0).any(|s| s == compatible.as_bytes()))
    }

    /// Whether node `i` is enabled: `status` absent, `"okay"` or the legacy `"ok"` (DT spec v0.4
    /// §2.3.4).
    pub fn is_enabled(&self, i: usize) -> bool {
        matches!(self.string(i, "status"), Ok(None | Some("okay" | "ok")))
    }

    /// The first enabled node, in document order, compatible with any of `compatibles`.
    pub fn find_compatible(&self, compatibles: &[&str]) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| self.is_enabled(i) && compatibles.iter().any(|c| self.is_compatible(i, c)))
    }

    /// The node whose `phandle` (or legacy `linux,phandle`) is `phandle` (DT spec v0.4 §2.3.3).
    pub fn by_phandle(&self, phandle: u32) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            ["phandle", "linux,phandle"]
                .iter()
                .any(|p| self.prop(i, p) == Some(&phandle.to_be_bytes()[..]))
        })
    }

    /// The phandle of node `i`, if it has one.
    pub fn phandle(&self, i: usize) -> Result<Option<u32>, PlatformError> {
        match self.u32(i, "phandle")? {
            Some(p) => Ok(Some(p)),
            None => self.u32(i, "linux,phandle"),
        }
    }

    /// Resolves a phandle found in property `property` of node `i`.
    pub fn resolve(
        &self,
        i: usize,
        property: &'static str,
        phandle: u32,
    ) -> Result<usize, PlatformError> {
        self.by_phandle(phandle)
            .ok_or_else(|| self.malformed(i, property, "phandle does not match any node"))
    }

    /// `#address-cells` that node `i` gives its children; 2 when absent (DT spec v0.4 §2.3.5).
    pub fn address_cells(&self, i: usize) -> Result<u32, PlatformError> {
        Ok(self.u32(i, "#address-cells")?.unwrap_or(2))
    }

    /// `#size-cells` that node `i` gives its children; 1 when absent (DT spec v0.4 §2.3.5).
    pub fn size_cells(&self, i: usize) -> Result<u32, PlatformError> {
        Ok(self.u32(i, "#size-cells")?.unwrap_or(1))
    }

    /// The `reg` entries of node `i` as CPU physical regions: each (address, size) pair is read
    /// with the parent's `#address-cells`/`#size-cells` (DT spec v0.4 §2.3.6) and translated to
    /// the CPU's address space through the `ranges` of every bus above (§2.3.8). Absent `reg` is
    /// an empty list.
    pub fn reg(&self, i: usize) -> Result<Vec<Region>, PlatformError> {
        let Some(parent) = self.nodes[i].parent else {
            return Ok(Vec::new());
        };
        let Some(cells) = self.cells(i, "reg")? else {
            return Ok(Vec::new());
        };
        let (ac, sc) = (self.address_cells(parent)?, self.size_cells(parent)?);
        if ac > 2 || sc > 2 {
            return Err(self.malformed(i, "reg", "parent #address-cells or #size-cells above 2"));
        }
        let entries = cells.entries((ac + sc) as usize).ok_or_else(|| {
            self.malformed(i, "reg", "not a whole number of (address, size) entries")
        })?;
        let mut out = Vec::new();
        for mut e in entries {
            let (addr, size) = e
                .number(ac)
                .zip(e.number(sc))
                .ok_or_else(|| self.malformed(i, "reg", "truncated"))?;
            let cpu = self.translate(parent, addr)?;
            out.push(Region::new(cpu, size).ok_or_else(|| {
                self.malformed(i, "reg", "region runs past the top of the address space")
            })?);
        }
        Ok(out)
    }

    /// The `reg` of node `i`, which must have at least one entry.
    pub fn required_reg(&self, i: usize) -> Result<Vec<Region>, PlatformError> {
        if !self.has(i, "reg") {
            return Err(self.missing(i, "reg"));
        }
        let reg = self.reg(i)?;
        if reg.is_empty() {
            return Err(self.malformed(i, "reg", "empty"));
        }
        Ok(reg)
    }

    /// Translates `addr`, an address in the child address space of node `bus`, to a CPU
    /// address: through `bus`'s `ranges`, then its parent's, up to the root (DT spec v0.4 §2.3.8).
    /// An empty `ranges` is an identity map; an absent one means the children are not
    /// memory-mapped at all, which is an error here.
    pub fn translate(&self, bus: usize, addr: u64) -> Result<u64, PlatformError> {
        let mut node = bus;
        let mut addr = addr;
        while let Some(up) = self.nodes[node].parent {
            let ranges = self.cells(node, "ranges")?.ok_or_else(|| {
                self.malformed(
                    node,
                    "ranges",
                    "absent, so child addresses are not CPU addresses",
                )
            })?;
            if !ranges.is_empty() {
                addr = self.translate_one(node, up, ranges, addr)?;
            }
            node = up;
        }
        Ok(addr)
    }

    fn translate_one(
        &self,
        node: usize,
        up: usize,
        ranges: Cells<'a>,
        addr: u64,
    ) -> Result<u64, PlatformError> {
        let (ca, pa, sc) = (
            self.address_cells(node)?,
            self.address_cells(up)?,
            self.size_cells(node)?,
        );
        if ca > 2 || pa > 2 || sc > 2 {
            return Err(self.malformed(node, "ranges", "address or size cells above 2"));
        }
        let entries = ranges
            .entries((ca + pa + sc) as usize)
            .ok_or_else(|| self.malformed(node, "ranges", "not a whole number of entries"))?;
        for mut e in entries {
            let (child, parent, size) = (e.number(ca), e.number(pa), e.number(sc));
            let (Some(child), Some(parent), Some(size)) = (child, parent, size) else {
                return Err(self.malformed(node, "ranges", "truncated"));
            };
            if addr >= child && addr - child < size {
                return parent
                    .checked_add(addr - child)
                    .ok_or_else(|| self.malformed(node, "ranges", "translation overflows"));
            }
        }
        Err(self.malformed(
            node,
            "ranges",
            "a child address is not covered by any range",
        ))
    }

    /// The interrupt parent of node `i`: follow `interrupt-parent` where present and the tree
    /// parent otherwise, until a node with `#interrupt-cells` (DT spec v0.4 §2.4.1–2.4.2).
    pub fn interrupt_parent(&self, i: usize) -> Result<usize, PlatformError> {
        let mut at = i;
        for _ in 0..self.nodes.len() {
            let next = match self.u32(at, "interrupt-parent")? {
                Some(phandle) => self.resolve(at, "interrupt-parent", phandle)?,
                None => self.nodes[at].parent.ok_or_else(|| {
                    self.malformed(i, "interrupts", "no interrupt parent in the tree")
                })?,
            };
            if self.has(next, "#interrupt-cells") {
                return Ok(next);
            }
            at = next;
        }
        Err(self.malformed(i, "interrupt-parent", "the interrupt-parent chain loops"))
    }
}
