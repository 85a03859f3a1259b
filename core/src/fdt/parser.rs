//! Zero-copy, panic-free reader for flattened device trees from untrusted memory.
//!
//! [`Fdt::new`] checks the header and walks the whole structure block once, so a blob it
//! accepts is well formed: every token is known, every name is NUL-terminated UTF-8,
//! every property value and name offset is in bounds, nodes balance and nest at most
//! [`MAX_DEPTH`] deep. Accessors do not rely on that for safety, though: each token read
//! goes through [`Fdt::token`], which bounds-checks again and makes iterators stop rather
//! than panic. Every loop advances by at least one 4-byte token through a block of finite
//! size, so nothing can spin forever, and offset arithmetic is checked.
//!
//! Nodes are found by path (`/cpus/cpu@1`; a component without `@` matches any unit
//! address, as in libfdt), by `compatible`, by phandle, or by walking. A [`Node`] carries
//! its parent's `#address-cells`/`#size-cells`, which is what its `reg` is encoded with.

use alloc::string::ToString;
use alloc::vec::Vec;
use core::fmt;

use super::spec::{
    DEFAULT_ADDRESS_CELLS, DEFAULT_SIZE_CELLS, FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_MAGIC,
    FDT_NOP, FDT_PROP, HEADER_PREFIX_SIZE, HEADER_SIZE, MAX_CELLS_PER_U64, MAX_DEPTH,
    MEMRSV_ENTRY_SIZE, MIN_VERSION, TOKEN_ALIGN, VERSION_WRITTEN,
};
use super::FdtError;
use crate::Region;

/// Byte offsets of the header fields (Devicetree Specification v0.4, section 5.2).
mod field {
    pub const MAGIC: usize = 0;
    pub const TOTALSIZE: usize = 4;
    pub const OFF_DT_STRUCT: usize = 8;
    pub const OFF_DT_STRINGS: usize = 12;
    pub const OFF_MEM_RSVMAP: usize = 16;
    pub const VERSION: usize = 20;
    pub const LAST_COMP_VERSION: usize = 24;
    pub const BOOT_CPUID_PHYS: usize = 28;
    pub const SIZE_DT_STRINGS: usize = 32;
    pub const SIZE_DT_STRUCT: usize = 36;
}

/// The first version whose header has `size_dt_struct`.
const VERSION_WITH_STRUCT_SIZE: u32 = 17;
/// Bytes of a `FDT_PROP` token plus its `len` and `nameoff` words.
const PROP_HEADER_SIZE: usize = 12;
/// phandle values that never name a node (Devicetree Specification, section 2.3.3).
const PHANDLE_INVALID: [u32; 2] = [0, u32::MAX];

fn be32(bytes: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let b = bytes.get(off..end)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(bytes: &[u8], off: usize) -> Option<u64> {
    let hi = be32(bytes, off)?;
    let lo = be32(bytes, off.checked_add(4)?)?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Reads `cells` (0..=2) big-endian cells as one number.
fn read_cells(bytes: &[u8], cells: u32) -> Option<u64> {
    match cells {
        0 => Some(0),
        1 => be32(bytes, 0).map(u64::from),
        2 => be64(bytes, 0),
        _ => None,
    }
}

fn align_token(off: usize) -> Option<usize> {
    off.checked_next_multiple_of(TOKEN_ALIGN)
}

/// Reads `magic` and `totalsize` from the first bytes of a blob, so the hypervisor knows
/// how many bytes to look at behind the raw DTB pointer. Needs
/// [`HEADER_PREFIX_SIZE`] bytes. The caller should still cap the result (Linux
/// refuses DTBs above 2 MiB) before trusting it as a length.
pub fn header_total_size(first_bytes: &[u8]) -> Result<usize, FdtError> {
    let too_short = || FdtError::TooShort {
        len: first_bytes.len(),
        needed: HEADER_PREFIX_SIZE,
    };
    let magic = be32(first_bytes, field::MAGIC).ok_or_else(too_short)?;
    if magic != FDT_MAGIC {
        return Err(FdtError::BadMagic(magic));
    }
    let totalsize = be32(first_bytes, field::TOTALSIZE).ok_or_else(too_short)?;
    let size = usize::try_from(totalsize).map_err(|_| FdtError::BadTotalSize {
        totalsize,
        available: usize::MAX,
    })?;
    if size < HEADER_SIZE {
        return Err(FdtError::BadTotalSize {
            totalsize,
            available: first_bytes.len(),
        });
    }
    Ok(size)
}

/// A validated device-tree blob. Cheap to copy: a slice and a few offsets.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    /// Exactly `totalsize` bytes.
    blob: &'a [u8],
    struct_start: usize,
    struct_end: usize,
    strings_start: usize,
    strings_end: usize,
    memrsv_start: usize,
    version: u32,
    boot_cpuid_phys: u32,
}

impl fmt::Debug for Fdt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fdt")
            .field("totalsize", &self.blob.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// One structure-block token with its payload.
#[derive(Clone, Copy)]
pub(crate) enum Token<'a> {
    BeginNode { name: &'a str },
    EndNode,
    Prop { name: &'a str, value: &'a [u8] },
    Nop,
    End,
}

impl<'a> Fdt<'a> {
    /// Validates `bytes` as a DTB (version 16 or 17). `bytes` may be longer than the
    /// blob's `totalsize`; the rest is ignored.
    pub fn new(bytes: &'a [u8]) -> Result<Fdt<'a>, FdtError> {
        if bytes.len() < HEADER_SIZE {
            // Report the magic first: "not a DTB" is the more useful message.
            if let Some(magic) = be32(bytes, field::MAGIC) {
                if magic != FDT_MAGIC {
                    return Err(FdtError::BadMagic(magic));
                }
            }
            return Err(FdtError::TooShort {
                len: bytes.len(),
                needed: HEADER_SIZE,
            });
        }
        // In bounds: bytes.len() >= HEADER_SIZE covers every header field.
        let header = |off| be32(bytes, off).unwrap_or(0);
        let magic = header(field::MAGIC);
        if magic != FDT_MAGIC {
            return Err(FdtError::BadMagic(magic));
        }
        let version = header(field::VERSION);
        let last_comp_version = header(field::LAST_COMP_VERSION);
        if version < MIN_VERSION || last_comp_version > VERSION_WRITTEN {
            return Err(FdtError::UnsupportedVersion {
                version,
                last_comp_version,
            });
        }
        let totalsize = header(field::TOTALSIZE);
        let blob = usize::try_from(totalsize)
            .ok()
            .filter(|&n| n >= HEADER_SIZE)
            .and_then(|n| bytes.get(..n))
            .ok_or(FdtError::BadTotalSize {
                totalsize,
                available: bytes.len(),
            })?;

        let block = |name, offset: u32, size: u32| -> Result<(usize, usize), FdtError> {
            let out = FdtError::BlockOutOfBounds {
                block: name,
                offset,
                size,
                totalsize,
            };
            let start = usize::try_from(offset).map_err(|_| out.clone())?;
            let len = usize::try_from(size).map_err(|_| out.clone())?;
            let end = start.checked_add(len).ok_or(out.clone())?;
            if start < HEADER_SIZE || end > blob.len() {
                return Err(out);
            }
            Ok((start, end))
        };

        let off_struct = header(field::OFF_DT_STRUCT);
        let size_struct = if version >= VERSION_WITH_STRUCT_SIZE {
            header(field::SIZE_DT_STRUCT)
        } else {
            // v16 has no size_dt_struct: the block may run to the end of the blob.
            totalsize.saturating_sub(off_struct)
        };
        let (struct_start, struct_end) = block("structure", off_struct, size_struct)?;
        if !struct_start.is_multiple_of(TOKEN_ALIGN) {
            return Err(FdtError::Misaligned {
                block: "structure",
                offset: off_struct,
                align: TOKEN_ALIGN,
            });
        }
        let (strings_start, strings_end) = block(
            "strings",
            header(field::OFF_DT_STRINGS),
            header(field::SIZE_DT_STRINGS),
        )?;
        let off_rsv = header(field::OFF_MEM_RSVMAP);
        let (memrsv_start, _) = block("memory reservation", off_rsv, 0)?;

        let fdt = Fdt {
            blob,
            struct_start,
            struct_end,
            strings_start,
            strings_end,
            memrsv_start,
            version,
            boot_cpuid_phys: header(field::BOOT_CPUID_PHYS),
        };
        fdt.check_memory_reservations()?;
        fdt.check_structure()?;
        Ok(fdt)
    }

    fn check_memory_reservations(&self) -> Result<(), FdtError> {
        let mut off = self.memrsv_start;
        loop {
            let entry =
                be64(self.blob, off).zip(off.checked_add(8).and_then(|o| be64(self.blob, o)));
            match entry {
                None => {
                    return Err(FdtError::MemReserveUnterminated {
                        offset: self.memrsv_start,
                    })
                }
                Some((0, 0)) => return Ok(()),
                Some(_) => {}
            }
            off = off
                .checked_add(MEMRSV_ENTRY_SIZE)
                .ok_or(FdtError::MemReserveUnterminated {
                    offset: self.memrsv_start,
                })?;
        }
    }

    /// One pass over the structure block enforcing the grammar
    /// `NOP* BEGIN_NODE(root) ... END_NODE NOP* END`.
    fn check_structure(&self) -> Result<(), FdtError> {
        let mut off = self.struct_start;
        let mut depth = 0usize;
        let mut root_seen = false;
        loop {
            let (token, next) = self.token(off)?;
            match token {
                Token::BeginNode { .. } => {
                    if depth == 0 && root_seen {
                        return Err(FdtError::BadToken {
                            token: FDT_BEGIN_NODE,
                            offset: off,
                        });
                    }
                    root_seen = true;
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(FdtError::TooDeep { offset: off });
                    }
                }
                Token::EndNode => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(FdtError::UnbalancedEndNode { offset: off })?;
                }
                Token::Prop { .. } if depth == 0 => {
                    return Err(FdtError::BadToken {
                        token: FDT_PROP,
                        offset: off,
                    });
                }
                Token::Prop { .. } | Token::Nop => {}
                Token::End => {
                    if depth != 0 || !root_seen {
                        return Err(FdtError::UnclosedNode { offset: off });
                    }
                    return Ok(());
                }
            }
            off = next;
        }
    }

    /// Decodes the token at `off` and returns it with the offset of the next token.
    pub(crate) fn token(&self, off: usize) -> Result<(Token<'a>, usize), FdtError> {
        let truncated = FdtError::StructTruncated { offset: off };
        let structure = self.blob.get(..self.struct_end).ok_or(truncated.clone())?;
        if off < self.struct_start {
            return Err(truncated);
        }
        let tag = be32(structure, off).ok_or(truncated.clone())?;
        let after_tag = off + TOKEN_ALIGN; // cannot overflow: be32 read 4 bytes there
        match tag {
            FDT_BEGIN_NODE => {
                let rest = structure.get(after_tag..).ok_or(truncated.clone())?;
                let nul = rest.iter().position(|&b| b == 0).ok_or(truncated)?;
                let name = core::str::from_utf8(&rest[..nul])
                    .map_err(|_| FdtError::BadNodeName { offset: after_tag })?;
                let next = align_token(after_tag + nul + 1)
                    .ok_or(FdtError::BadNodeName { offset: after_tag })?;
                Ok((Token::BeginNode { name }, next))
            }
            FDT_PROP => {
                let len = be32(structure, after_tag).ok_or(truncated.clone())?;
                let nameoff = be32(structure, after_tag + 4).ok_or(truncated.clone())?;
                let start = off + PROP_HEADER_SIZE;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| start.checked_add(len))
                    .ok_or(truncated.clone())?;
                let value = structure.get(start..end).ok_or(truncated)?;
                let name = self.string(nameoff).ok_or(FdtError::BadPropertyName {
                    nameoff,
                    offset: off,
                })?;
                let next = align_token(end).ok_or(FdtError::StructTruncated { offset: off })?;
                Ok((Token::Prop { name, value }, next))
            }
            FDT_END_NODE => Ok((Token::EndNode, after_tag)),
            FDT_NOP => Ok((Token::Nop, after_tag)),
            FDT_END => Ok((Token::End, after_tag)),
            token => Err(FdtError::BadToken { token, offset: off }),
        }
    }

    /// The NUL-terminated UTF-8 string at `nameoff` in the strings block.
    fn string(&self, nameoff: u32) -> Option<&'a str> {
        let start = self
            .strings_start
            .checked_add(usize::try_from(nameoff).ok()?)?;
        let block = self.blob.get(start..self.strings_end)?;
        let nul = block.iter().position(|&b| b == 0)?;
        core::str::from_utf8(&block[..nul]).ok()
    }

    /// The blob itself, `totalsize` bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    pub fn total_size(&self) -> usize {
        self.blob.len()
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn boot_cpuid_phys(&self) -> u32 {
        self.boot_cpuid_phys
    }

    /// The root node `/`.
    pub fn root(&self) -> Node<'a> {
        // The walk in `new` guarantees the first real token is the root's BEGIN_NODE;
        // an empty name stands in should that ever not hold (iteration then finds nothing).
        let mut off = self.struct_start;
        while let Ok((token, next)) = self.token(off) {
            match token {
                Token::Nop => off = next,
                Token::BeginNode { name } => return self.make_node(name, off, next, None),
                _ => break,
            }
        }
        self.make_node("", self.struct_end, self.struct_end, None)
    }

    fn make_node(
        &self,
        name: &'a str,
        begin: usize,
        body: usize,
        parent: Option<&Node<'a>>,
    ) -> Node<'a> {
        let (parent_address_cells, parent_size_cells) = match parent {
            Some(p) => (p.address_cells(), p.size_cells()),
            None => (DEFAULT_ADDRESS_CELLS, DEFAULT_SIZE_CELLS),
        };
        Node {
            fdt: *self,
            name,
            begin,
            body,
            parent_address_cells,
            parent_size_cells,
        }
    }

    /// Finds a node by absolute path (`/cpus/cpu@1`), or by a path that starts with an
    /// alias (`serial0`, `serial0/child`), as libfdt's `fdt_path_offset` does. A path
    /// component without `@` matches the first node of that name with any unit address.
    pub fn find_node(&self, path: &str) -> Option<Node<'a>> {
        let (mut node, rest) = if let Some(rest) = path.strip_prefix('/') {
            (self.root(), rest)
        } else {
            let (alias, rest) = path.split_once('/').unwrap_or((path, ""));
            let target = self.alias(alias)?;
            // An alias must itself be absolute; this keeps resolution to one level.
            if !target.starts_with('/') {
                return None;
            }
            (self.find_node(target)?, rest)
        };
        for component in rest.split('/').filter(|c| !c.is_empty()) {
            node = node.child(component)?;
        }
        Some(node)
    }

    /// The value of `/aliases/<name>`.
    pub fn alias(&self, name: &str) -> Option<&'a str> {
        self.root().child("aliases")?.property(name)?.as_str()
    }

    /// Every node in document order (root first), each with correct parent cells.
    pub fn nodes(&self) -> NodeIter<'a> {
        NodeIter::new(*self, self.struct_start, None)
    }

    /// Every node whose `compatible` list contains `compatible`, in document order.
    pub fn compatible_nodes<'s>(&self, compatible: &'s str) -> impl Iterator<Item = Node<'a>> + 's
    where
        'a: 's,
    {
        self.nodes().filter(move |n| n.is_compatible(compatible))
    }

    /// The first node compatible with `compatible`.
    pub fn find_compatible(&self, compatible: &str) -> Option<Node<'a>> {
        self.nodes().find(|n| n.is_compatible(compatible))
    }

    /// The node whose `phandle` (or legacy `linux,phandle`) is `phandle`.
    pub fn node_by_phandle(&self, phandle: u32) -> Option<Node<'a>> {
        if PHANDLE_INVALID.contains(&phandle) {
            return None;
        }
        self.nodes().find(|n| n.phandle() == Some(phandle))
    }

    /// The `/memreserve/` entries (memory reservation block), terminator excluded.
    pub fn memory_reservations(&self) -> MemReserveIter<'a> {
        MemReserveIter {
            blob: self.blob,
            off: Some(self.memrsv_start),
        }
    }

    /// `/chosen/stdout-path` (or the older `linux,stdout-path`) split into the path or
    /// alias and the options after `:` (e.g. `"115200n8"`).
    pub fn stdout_path(&self) -> Option<(&'a str, Option<&'a str>)> {
        let chosen = self.root().child("chosen")?;
        let value = chosen
            .property("stdout-path")
            .or_else(|| chosen.property("linux,stdout-path"))?
            .as_str()?;
        Some(match value.split_once(':') {
            Some((path, options)) => (path, Some(options)),
            None => (value, None),
        })
    }

    /// The node `stdout-path` names, aliases resolved.
    pub fn stdout_node(&self) -> Option<Node<'a>> {
        self.find_node(self.stdout_path()?.0)
    }

    /// The chain of nodes from the root down to (excluding) the node that begins at
    /// `begin`; `None` if no node begins there.
    fn ancestors(&self, begin: usize) -> Option<Vec<Node<'a>>> {
        let mut stack: Vec<Node<'a>> = Vec::new();
        let mut off = self.struct_start;
        loop {
            let (token, next) = self.token(off).ok()?;
            match token {
                Token::BeginNode { name } => {
                    if off == begin {
                        return Some(stack);
                    }
                    let node = self.make_node(name, off, next, stack.last());
                    stack.push(node);
                }
                Token::EndNode => {
                    stack.pop()?;
                }
                Token::End => return None,
                Token::Prop { .. } | Token::Nop => {}
            }
            off = next;
        }
    }
}

/// A node of a validated tree.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    fdt: Fdt<'a>,
    name: &'a str,
    /// Offset of the node's `FDT_BEGIN_NODE`.
    begin: usize,
    /// Offset of the first token after the name (properties, then children).
    body: usize,
    parent_address_cells: u32,
    parent_size_cells: u32,
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("offset", &self.begin)
            .finish()
    }
}

impl<'a> Node<'a> {
    /// The full name, unit address included (`cpu@1`); empty for the root.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The name without the unit address (`cpu`).
    pub fn base_name(&self) -> &'a str {
        self.name
            .split_once('@')
            .map_or(self.name, |(base, _)| base)
    }

    pub fn unit_address(&self) -> Option<&'a str> {
        self.name.split_once('@').map(|(_, unit)| unit)
    }

    pub fn fdt(&self) -> Fdt<'a> {
        self.fdt
    }

    pub fn properties(&self) -> PropIter<'a> {
        PropIter {
            fdt: self.fdt,
            off: Some(self.body),
        }
    }

    pub fn property(&self, name: &str) -> Option<Property<'a>> {
        self.properties().find(|p| p.name == name)
    }

    /// True when the node has a property `name`, boolean properties included.
    pub fn has_property(&self, name: &str) -> bool {
        self.property(name).is_some()
    }

    pub fn property_u32(&self, name: &str) -> Option<u32> {
        self.property(name)?.as_u32()
    }

    pub fn property_str(&self, name: &str) -> Option<&'a str> {
        self.property(name)?.as_str()
    }

    /// Direct children in document order.
    pub fn children(&self) -> NodeIter<'a> {
        NodeIter::new(self.fdt, self.body, Some(*self))
    }

    /// The first child named `name` exactly, or (when `name` has no unit address) the
    /// first child whose name without unit address is `name`.
    pub fn child(&self, name: &str) -> Option<Node<'a>> {
        let any_unit = !name.contains('@');
        self.children()
            .find(|c| c.name == name || (any_unit && c.base_name() == name))
    }

    /// `#address-cells` for this node's children (default 2).
    pub fn address_cells(&self) -> u32 {
        self.property_u32("#address-cells")
            .unwrap_or(DEFAULT_ADDRESS_CELLS)
    }

    /// `#size-cells` for this node's children (default 1).
    pub fn size_cells(&self) -> u32 {
        self.property_u32("#size-cells")
            .unwrap_or(DEFAULT_SIZE_CELLS)
    }

    /// The parent's `(#address-cells, #size-cells)` that this node's `reg` uses.
    pub fn parent_cells(&self) -> (u32, u32) {
        (self.parent_address_cells, self.parent_size_cells)
    }

    pub fn compatible(&self) -> StringListIter<'a> {
        self.property("compatible")
            .map(|p| p.as_stringlist())
            .unwrap_or_default()
    }

    pub fn is_compatible(&self, compatible: &str) -> bool {
        self.compatible().any(|c| c == compatible)
    }

    /// `status` absent, `"okay"` or the older `"ok"`.
    pub fn is_enabled(&self) -> bool {
        matches!(
            self.property_str("status"),
            None | Some("okay") | Some("ok")
        )
    }

    pub fn device_type(&self) -> Option<&'a str> {
        self.property_str("device_type")
    }

    pub fn phandle(&self) -> Option<u32> {
        self.property_u32("phandle")
            .or_else(|| self.property_u32("linux,phandle"))
            .filter(|p| !PHANDLE_INVALID.contains(p))
    }

    /// The `reg` entries in this node's bus address space: `Ok(None)` when there is no
    /// `reg`, an error when the parent's cells do not fit `u64` or the length is not a
    /// whole number of entries. Sizes are 0 when `#size-cells` is 0 (as under `/cpus`).
    pub fn reg(&self) -> Result<Option<RegIter<'a>>, FdtError> {
        let Some(prop) = self.property("reg") else {
            return Ok(None);
        };
        RegIter::new(
            prop.value,
            self.parent_address_cells,
            self.parent_size_cells,
            self.name,
        )
        .map(Some)
    }

    /// The nodes from the root down to this node's parent (empty for the root).
    pub fn ancestors(&self) -> Option<Vec<Node<'a>>> {
        self.fdt.ancestors(self.begin)
    }

    /// `reg` translated through every ancestor's `ranges` into CPU physical addresses,
    /// as Linux's `of_address_to_resource` does (needed for devices under `/soc`-style
    /// buses). `Ok(None)` when there is no `reg`, or an entry is not reachable from the
    /// CPU (an ancestor below the root has no `ranges`, or no range covers it).
    pub fn reg_translated(&self) -> Result<Option<Vec<Region>>, FdtError> {
        let Some(reg) = self.reg()? else {
            return Ok(None);
        };
        let Some(ancestors) = self.fdt.ancestors(self.begin) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for region in reg {
            let mut base = region.base;
            // Walk up from the parent; the root's address space is the CPU's.
            for bus in ancestors.iter().skip(1).rev() {
                match translate(bus, base)? {
                    Some(translated) => base = translated,
                    None => return Ok(None),
                }
            }
            out.push(Region::new(base, region.size));
        }
        Ok(Some(out))
    }
}

/// Maps `addr` from `bus`'s child address space into its parent's through `bus`'s
/// `ranges`. Empty `ranges` is the identity; missing `ranges` means "not translatable".
fn translate(bus: &Node<'_>, addr: u64) -> Result<Option<u64>, FdtError> {
    let Some(ranges) = bus.property("ranges") else {
        return Ok(None);
    };
    if ranges.value.is_empty() {
        return Ok(Some(addr));
    }
    let child_cells = bus.address_cells();
    let size_cells = bus.size_cells();
    let (parent_cells, _) = bus.parent_cells();
    if [child_cells, parent_cells, size_cells]
        .iter()
        .any(|&c| c > MAX_CELLS_PER_U64)
    {
        return Err(FdtError::UnsupportedCells {
            node: bus.name.to_string(),
            address_cells: child_cells.max(parent_cells),
            size_cells,
        });
    }
    // Each cell count is <= 2, so these products are tiny.
    let cell = TOKEN_ALIGN;
    let (child_len, parent_len) = (child_cells as usize * cell, parent_cells as usize * cell);
    let entry_len = child_len + parent_len + size_cells as usize * cell;
    if entry_len == 0 || !ranges.value.len().is_multiple_of(entry_len) {
        return Err(FdtError::BadRegLength {
            node: bus.name.to_string(),
            len: ranges.value.len(),
        });
    }
    for entry in ranges.value.chunks_exact(entry_len) {
        let child = read_cells(entry, child_cells).unwrap_or(0);
        let parent = read_cells(entry.get(child_len..).unwrap_or(&[]), parent_cells).unwrap_or(0);
        let size = read_cells(
            entry.get(child_len + parent_len..).unwrap_or(&[]),
            size_cells,
        )
        .unwrap_or(0);
        if Region::new(child, size).contains(addr) {
            return Ok(parent.checked_add(addr - child));
        }
    }
    Ok(None)
}

/// A property: its name and raw big-endian value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Property<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

impl<'a> Property<'a> {
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// A single cell.
    pub fn as_u32(&self) -> Option<u32> {
        (self.value.len() == 4)
            .then(|| be32(self.value, 0))
            .flatten()
    }

    /// Exactly two cells (`/bits/ 64` or `<hi lo>`).
    pub fn as_u64(&self) -> Option<u64> {
        (self.value.len() == 8)
            .then(|| be64(self.value, 0))
            .flatten()
    }

    /// One or two cells, for values bindings allow either way (`cpu-release-addr`).
    pub fn as_uint(&self) -> Option<u64> {
        self.as_u32().map(u64::from).or_else(|| self.as_u64())
    }

    /// One NUL-terminated UTF-8 string with no embedded NUL.
    pub fn as_str(&self) -> Option<&'a str> {
        let (last, body) = self.value.split_last()?;
        if *last != 0 || body.contains(&0) {
            return None;
        }
        core::str::from_utf8(body).ok()
    }

    /// The NUL-separated strings of a string list; stops at the first unterminated or
    /// non-UTF-8 entry.
    pub fn as_stringlist(&self) -> StringListIter<'a> {
        StringListIter { rest: self.value }
    }

    /// The value as 32-bit cells; `None` if the length is not a multiple of 4.
    pub fn as_u32_iter(&self) -> Option<U32Iter<'a>> {
        self.value
            .len()
            .is_multiple_of(4)
            .then_some(U32Iter { rest: self.value })
    }
}

/// Iterator over the strings of a string-list property.
#[derive(Clone, Debug, Default)]
pub struct StringListIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for StringListIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let nul = self.rest.iter().position(|&b| b == 0)?;
        let (s, rest) = self.rest.split_at(nul);
        self.rest = rest.get(1..).unwrap_or(&[]);
        match core::str::from_utf8(s) {
            Ok(s) => Some(s),
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Iterator over 32-bit big-endian cells.
#[derive(Clone, Debug)]
pub struct U32Iter<'a> {
    rest: &'a [u8],
}

impl Iterator for U32Iter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let v = be32(self.rest, 0)?;
        self.rest = self.rest.get(4..).unwrap_or(&[]);
        Some(v)
    }
}

/// Decoded `reg` entries as [`Region`]s.
#[derive(Clone, Debug)]
pub struct RegIter<'a> {
    rest: &'a [u8],
    address_cells: u32,
    size_cells: u32,
}

impl<'a> RegIter<'a> {
    fn new(
        value: &'a [u8],
        address_cells: u32,
        size_cells: u32,
        node: &str,
    ) -> Result<Self, FdtError> {
        if address_cells > MAX_CELLS_PER_U64 || size_cells > MAX_CELLS_PER_U64 {
            return Err(FdtError::UnsupportedCells {
                node: node.to_string(),
                address_cells,
                size_cells,
            });
        }
        let entry = (address_cells + size_cells) as usize * TOKEN_ALIGN;
        let whole = if entry == 0 {
            value.is_empty()
        } else {
            value.len().is_multiple_of(entry)
        };
        if !whole {
            return Err(FdtError::BadRegLength {
                node: node.to_string(),
                len: value.len(),
            });
        }
        Ok(RegIter {
            rest: value,
            address_cells,
            size_cells,
        })
    }

    fn entry_len(&self) -> usize {
        (self.address_cells + self.size_cells) as usize * TOKEN_ALIGN
    }
}

impl Iterator for RegIter<'_> {
    type Item = Region;
    fn next(&mut self) -> Option<Region> {
        let len = self.entry_len();
        if len == 0 || self.rest.len() < len {
            return None;
        }
        let (entry, rest) = self.rest.split_at(len);
        self.rest = rest;
        let addr_len = self.address_cells as usize * TOKEN_ALIGN;
        let base = read_cells(entry, self.address_cells)?;
        let size = read_cells(entry.get(addr_len..)?, self.size_cells)?;
        Some(Region::new(base, size))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len().checked_div(self.entry_len()).unwrap_or(0);
        (n, Some(n))
    }
}

impl ExactSizeIterator for RegIter<'_> {}

/// Properties of one node (only those before its first child, as in libfdt).
#[derive(Clone, Debug)]
pub struct PropIter<'a> {
    fdt: Fdt<'a>,
    off: Option<usize>,
}

impl<'a> Iterator for PropIter<'a> {
    type Item = Property<'a>;
    fn next(&mut self) -> Option<Property<'a>> {
        loop {
            let (token, next) = self.fdt.token(self.off?).ok()?;
            self.off = Some(next);
            match token {
                Token::Prop { name, value } => return Some(Property { name, value }),
                Token::Nop => {}
                _ => {
                    self.off = None;
                    return None;
                }
            }
        }
    }
}

/// Iterates nodes in document order: either the direct children of one node, or (for
/// [`Fdt::nodes`]) every node in the tree. Tracks `#address-cells`/`#size-cells` of the
/// open ancestors so every yielded node decodes its `reg` correctly.
#[derive(Clone, Debug)]
pub struct NodeIter<'a> {
    fdt: Fdt<'a>,
    off: Option<usize>,
    /// `Some(parent)` for a children iterator; `None` for a whole-tree walk.
    parent: Option<Node<'a>>,
    /// Nodes open below the starting point; the last one is the parent of the next
    /// BEGIN_NODE at this level.
    open: Vec<Node<'a>>,
    /// For a children iterator: depth below the parent (0 = at child level).
    depth: usize,
}

impl<'a> NodeIter<'a> {
    fn new(fdt: Fdt<'a>, off: usize, parent: Option<Node<'a>>) -> Self {
        NodeIter {
            fdt,
            off: Some(off),
            parent,
            open: Vec::new(),
            depth: 0,
        }
    }

    fn stop(&mut self) -> Option<Node<'a>> {
        self.off = None;
        None
    }
}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::BeginNode { name } => write!(f, "BeginNode({name:?})"),
            Token::EndNode => write!(f, "EndNode"),
            Token::Prop { name, .. } => write!(f, "Prop({name:?})"),
            Token::Nop => write!(f, "Nop"),
            Token::End => write!(f, "End"),
        }
    }
}

impl<'a> Iterator for NodeIter<'a> {
    type Item = Node<'a>;
    fn next(&mut self) -> Option<Node<'a>> {
        loop {
            let off = self.off?;
            let Ok((token, next)) = self.fdt.token(off) else {
                return self.stop();
            };
            self.off = Some(next);
            match (token, self.parent) {
                // Children of one node: yield BEGIN_NODEs at depth 0, skip subtrees.
                (Token::BeginNode { name }, Some(parent)) => {
                    self.depth += 1;
                    if self.depth == 1 {
                        return Some(self.fdt.make_node(name, off, next, Some(&parent)));
                    }
                }
                (Token::EndNode, Some(_)) => match self.depth.checked_sub(1) {
                    Some(d) => self.depth = d,
                    None => return self.stop(), // the parent's own END_NODE
                },
                // Whole tree: yield every BEGIN_NODE.
                (Token::BeginNode { name }, None) => {
                    if self.open.len() >= MAX_DEPTH {
                        return self.stop();
                    }
                    let node = self.fdt.make_node(name, off, next, self.open.last());
                    self.open.push(node);
                    return Some(node);
                }
                (Token::EndNode, None) => {
                    self.open.pop();
                    if self.open.is_empty() {
                        return self.stop(); // root closed
                    }
                }
                (Token::Prop { .. } | Token::Nop, _) => {}
                (Token::End, _) => return self.stop(),
            }
        }
    }
}

/// The `/memreserve/` entries as regions.
#[derive(Clone, Debug)]
pub struct MemReserveIter<'a> {
    blob: &'a [u8],
    off: Option<usize>,
}

impl Iterator for MemReserveIter<'_> {
    type Item = Region;
    fn next(&mut self) -> Option<Region> {
        let off = self.off?;
        let entry = be64(self.blob, off).zip(off.checked_add(8).and_then(|o| be64(self.blob, o)));
        match entry {
            Some((base, size)) if (base, size) != (0, 0) => {
                self.off = off.checked_add(MEMRSV_ENTRY_SIZE);
                Some(Region::new(base, size))
            }
            _ => {
                self.off = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
