//! [`FdtError`]: everything that can be wrong with a device-tree blob, with messages a
//! user can act on ("device tree: bad magic ..."). Offsets are from the start of the blob
//! so they can be checked with `xxd`/`fdtdump`.

use alloc::string::String;
use core::fmt;

use super::spec::{FDT_MAGIC, HEADER_SIZE, MAX_DEPTH, MIN_VERSION, VERSION_WRITTEN};

/// Why a blob (or a part of it) could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// Fewer bytes than the header needs.
    TooShort {
        len: usize,
        needed: usize,
    },
    BadMagic(u32),
    /// `version` too old, or `last_comp_version` newer than we understand.
    UnsupportedVersion {
        version: u32,
        last_comp_version: u32,
    },
    /// `totalsize` is smaller than the header or larger than the bytes we were given.
    BadTotalSize {
        totalsize: u32,
        available: usize,
    },
    /// A block's offset/size points outside `totalsize` (or overflows).
    BlockOutOfBounds {
        block: &'static str,
        offset: u32,
        size: u32,
        totalsize: u32,
    },
    /// A block offset is not aligned as the specification requires.
    Misaligned {
        block: &'static str,
        offset: u32,
        align: usize,
    },
    /// The structure block ends in the middle of a token, name or value.
    StructTruncated {
        offset: usize,
    },
    /// An unknown token, or a token where the grammar does not allow it.
    BadToken {
        token: u32,
        offset: usize,
    },
    /// A node name is missing its NUL or is not UTF-8.
    BadNodeName {
        offset: usize,
    },
    /// A property's `nameoff` points outside the strings block or to a broken string.
    BadPropertyName {
        nameoff: u32,
        offset: usize,
    },
    /// `FDT_END_NODE` without a matching `FDT_BEGIN_NODE`.
    UnbalancedEndNode {
        offset: usize,
    },
    /// `FDT_END` (or the block end) reached while nodes are still open.
    UnclosedNode {
        offset: usize,
    },
    TooDeep {
        offset: usize,
    },
    /// The memory reservation block has no `(0, 0)` terminator inside the blob.
    MemReserveUnterminated {
        offset: usize,
    },
    /// `#address-cells`/`#size-cells` that do not fit a `u64` (e.g. PCI's 3 cells).
    UnsupportedCells {
        node: String,
        address_cells: u32,
        size_cells: u32,
    },
    /// A `reg` whose length is not a whole number of `(address, size)` entries.
    BadRegLength {
        node: String,
        len: usize,
    },
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device tree: ")?;
        match self {
            Self::TooShort { len, needed } => write!(
                f,
                "only {len} bytes, but the header needs {needed} (is the DTB address right?)"
            ),
            Self::BadMagic(magic) => write!(
                f,
                "bad magic {magic:#010x} (expected {FDT_MAGIC:#010x}); this is not a DTB"
            ),
            Self::UnsupportedVersion {
                version,
                last_comp_version,
            } => write!(
                f,
                "unsupported version {version} (compatible back to {last_comp_version}); \
                 Bothy reads versions {MIN_VERSION}..={VERSION_WRITTEN}"
            ),
            Self::BadTotalSize {
                totalsize,
                available,
            } => write!(
                f,
                "header says totalsize {totalsize:#x} but {available:#x} bytes are available \
                 (a header alone is {HEADER_SIZE:#x})"
            ),
            Self::BlockOutOfBounds {
                block,
                offset,
                size,
                totalsize,
            } => write!(
                f,
                "{block} block at offset {offset:#x} size {size:#x} lies outside the blob \
                 (totalsize {totalsize:#x})"
            ),
            Self::Misaligned {
                block,
                offset,
                align,
            } => {
                write!(
                    f,
                    "{block} block offset {offset:#x} is not {align}-byte aligned"
                )
            }
            Self::StructTruncated { offset } => {
                write!(f, "structure block truncated at offset {offset:#x}")
            }
            Self::BadToken { token, offset } => {
                write!(f, "unexpected token {token:#x} at offset {offset:#x}")
            }
            Self::BadNodeName { offset } => write!(
                f,
                "node name at offset {offset:#x} is unterminated or not valid UTF-8"
            ),
            Self::BadPropertyName { nameoff, offset } => write!(
                f,
                "property at offset {offset:#x} has a bad name offset {nameoff:#x} into the \
                 strings block"
            ),
            Self::UnbalancedEndNode { offset } => {
                write!(
                    f,
                    "end of node at offset {offset:#x} without a matching begin"
                )
            }
            Self::UnclosedNode { offset } => {
                write!(
                    f,
                    "structure block ends at offset {offset:#x} with nodes still open"
                )
            }
            Self::TooDeep { offset } => write!(
                f,
                "nodes nested deeper than {MAX_DEPTH} levels at offset {offset:#x}"
            ),
            Self::MemReserveUnterminated { offset } => write!(
                f,
                "memory reservation block starting at offset {offset:#x} has no terminating \
                 (0, 0) entry"
            ),
            Self::UnsupportedCells {
                node,
                address_cells,
                size_cells,
            } => write!(
                f,
                "node {node}: #address-cells = {address_cells}, #size-cells = {size_cells} \
                 do not fit 64-bit addresses"
            ),
            Self::BadRegLength { node, len } => write!(
                f,
                "node {node}: reg is {len} bytes, not a whole number of (address, size) entries"
            ),
        }
    }
}

impl core::error::Error for FdtError {}
