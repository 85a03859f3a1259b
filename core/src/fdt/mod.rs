//! # Flattened device trees: parse, generate, and Bothy's manifest
//!
//! Bothy meets device trees three times:
//!
//! 1. **The firmware's DTB** (`x0` at entry) describes the host: memory, reserved memory,
//!    CPUs, GIC, timer, console UART, PSCI conduit. [`Fdt`] parses it and
//!    [`platform::Platform::discover`] turns it into plain data for the boot sequence.
//!    These bytes come from outside Bothy, so they are **untrusted**: [`Fdt::new`]
//!    validates the whole blob once (header, memory reservation block, every structure
//!    token, every name) and every accessor afterwards is still written so that a
//!    malformed blob yields `None`/`Err`, never a panic, an endless loop or an overflow.
//!    A property-based test feeds random bytes and mutated real DTBs to every entry
//!    point.
//! 2. **Guest DTBs**: [`guest::build_guest_dtb`] writes a tree that mirrors QEMU's
//!    `virt` machine so unmodified Linux kernels boot in a VM.
//! 3. **The manifest**: the CLI packs VMs into a boot image and describes them in a small
//!    FDT ([`manifest::Manifest`], re-exported as `bothy_core::manifest`); the hypervisor
//!    decodes and validates it with the same parser.
//!
//! The parser and writer are Bothy's own rather than the `dtoolkit` crate: see
//! `docs/FDT.md` for why. Format reference: Devicetree Specification v0.4,
//! chapter 5 ("Flattened Devicetree (DTB) Format"). Everything in the blob is big-endian.
//!
//! Callers: `hyp` (boot: [`header_total_size`], [`Fdt::new`], `Platform::discover`,
//! `Manifest::decode`, `build_guest_dtb`) and the `cli` (`Manifest::encode`, tests).

mod error;
pub mod guest;
pub mod manifest;
mod parser;
pub mod platform;
mod writer;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
pub(crate) mod test_trees;

pub use error::FdtError;
pub use parser::{
    header_total_size, Fdt, MemReserveIter, Node, NodeIter, PropIter, Property, RegIter,
    StringListIter, U32Iter,
};
pub use writer::FdtWriter;

/// Format constants from Devicetree Specification v0.4, section 5.
pub mod spec {
    /// `magic` field of the header (section 5.2).
    pub const FDT_MAGIC: u32 = 0xd00d_feed;
    /// Size of a version-17 header: ten big-endian `u32` fields.
    pub const HEADER_SIZE: usize = 40;
    /// Bytes of the header [`super::header_total_size`] needs: `magic` + `totalsize`.
    pub const HEADER_PREFIX_SIZE: usize = 8;
    /// The version Bothy writes.
    pub const VERSION_WRITTEN: u32 = 17;
    /// Oldest version Bothy parses (v16 lacks only `size_dt_struct`).
    pub const MIN_VERSION: u32 = 16;
    /// `last_comp_version` Bothy writes: a v16 reader can read our blobs.
    pub const LAST_COMP_VERSION: u32 = 16;
    /// Structure-block tokens (section 5.4.1).
    pub const FDT_BEGIN_NODE: u32 = 0x1;
    pub const FDT_END_NODE: u32 = 0x2;
    pub const FDT_PROP: u32 = 0x3;
    pub const FDT_NOP: u32 = 0x4;
    pub const FDT_END: u32 = 0x9;
    /// Structure-block tokens and property values are padded to this alignment.
    pub const TOKEN_ALIGN: usize = 4;
    /// The memory reservation block is aligned to 8 bytes (section 5.3).
    pub const MEMRSV_ALIGN: usize = 8;
    /// One `/memreserve/` entry: `u64 address, u64 size`.
    pub const MEMRSV_ENTRY_SIZE: usize = 16;
    /// Nesting limit, the same as libfdt's `FDT_MAX_DEPTH`; bounds the walker's stack.
    pub const MAX_DEPTH: usize = 32;
    /// Defaults when a parent node has no `#address-cells` / `#size-cells`
    /// (section 2.3.5).
    pub const DEFAULT_ADDRESS_CELLS: u32 = 2;
    pub const DEFAULT_SIZE_CELLS: u32 = 1;
    /// A `reg` address or size must fit a `u64`: at most two 32-bit cells.
    pub const MAX_CELLS_PER_U64: u32 = 2;
}
