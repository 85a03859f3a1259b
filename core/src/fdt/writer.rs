//! [`FdtWriter`]: builds a version-17 DTB in memory, streaming style (like libfdt's
//! sequential-write API): `begin_node("")` for the root, properties, children,
//! `end_node()`, then [`FdtWriter::finish`].
//!
//! Callers are Bothy's own code (guest DTBs, the manifest), so misuse is a bug: it is
//! caught by `debug_assert!` in tests, while release builds still produce a well-formed
//! blob (`finish` closes nodes left open, a stray `end_node` is ignored). Property names
//! are deduplicated in the strings block, as dtc does.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::spec::{
    FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_MAGIC, FDT_PROP, HEADER_SIZE, LAST_COMP_VERSION,
    MEMRSV_ALIGN, TOKEN_ALIGN, VERSION_WRITTEN,
};
use crate::Region;

/// The CPU the writer names as boot CPU (`boot_cpuid_phys`); Linux on arm64 ignores it.
const BOOT_CPUID_PHYS: u32 = 0;

/// Lengths in a DTB are `u32`; a Bothy-built blob never comes near 4 GiB, and saturating
/// keeps the writer panic-free should a caller ever try.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Streaming DTB builder.
#[derive(Clone, Debug, Default)]
pub struct FdtWriter {
    structure: Vec<u8>,
    strings: Vec<u8>,
    string_offsets: BTreeMap<String, u32>,
    memreserve: Vec<Region>,
    depth: usize,
    /// Set once the root node has been closed; later nodes would be a second root.
    root_closed: bool,
    next_phandle: u32,
}

impl FdtWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn push_u32(&mut self, v: u32) {
        self.structure.extend_from_slice(&v.to_be_bytes());
    }

    fn pad_structure(&mut self) {
        while !self.structure.len().is_multiple_of(TOKEN_ALIGN) {
            self.structure.push(0);
        }
    }

    fn string_offset(&mut self, name: &str) -> u32 {
        if let Some(&off) = self.string_offsets.get(name) {
            return off;
        }
        let off = len32(self.strings.len());
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.string_offsets.insert(String::from(name), off);
        off
    }

    /// Opens a node; the root is `begin_node("")`. `name` must not contain NUL.
    pub fn begin_node(&mut self, name: &str) {
        debug_assert!(!name.contains('\0'), "node name {name:?} contains NUL");
        debug_assert!(!self.root_closed, "node {name:?} after the root was closed");
        debug_assert!(
            self.depth > 0 || name.is_empty(),
            "the root node's name must be empty"
        );
        self.push_u32(FDT_BEGIN_NODE);
        self.structure.extend(name.bytes().filter(|&b| b != 0));
        self.structure.push(0);
        self.pad_structure();
        self.depth += 1;
    }

    /// Closes the innermost open node.
    pub fn end_node(&mut self) {
        debug_assert!(self.depth > 0, "end_node without an open node");
        if self.depth == 0 {
            return;
        }
        self.push_u32(FDT_END_NODE);
        self.depth -= 1;
        self.root_closed = self.depth == 0;
    }

    /// Adds a property with a raw value to the innermost open node.
    pub fn property(&mut self, name: &str, value: &[u8]) {
        debug_assert!(self.depth > 0, "property {name:?} outside a node");
        debug_assert!(!name.contains('\0'), "property name {name:?} contains NUL");
        let nameoff = self.string_offset(name);
        self.push_u32(FDT_PROP);
        self.push_u32(len32(value.len()));
        self.push_u32(nameoff);
        self.structure.extend_from_slice(value);
        self.pad_structure();
    }

    /// A boolean (empty) property such as `interrupt-controller`.
    pub fn property_empty(&mut self, name: &str) {
        self.property(name, &[]);
    }

    pub fn property_u32(&mut self, name: &str, value: u32) {
        self.property(name, &value.to_be_bytes());
    }

    /// A 64-bit value as two cells (`/bits/ 64 <v>` in dts).
    pub fn property_u64(&mut self, name: &str, value: u64) {
        self.property(name, &value.to_be_bytes());
    }

    pub fn property_string(&mut self, name: &str, value: &str) {
        self.property_stringlist(name, &[value]);
    }

    pub fn property_stringlist(&mut self, name: &str, values: &[&str]) {
        let mut bytes = Vec::new();
        for v in values {
            debug_assert!(!v.contains('\0'), "string {v:?} contains NUL");
            bytes.extend(v.bytes().filter(|&b| b != 0));
            bytes.push(0);
        }
        self.property(name, &bytes);
    }

    pub fn property_u32_array(&mut self, name: &str, cells: &[u32]) {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.property(name, &bytes);
    }

    /// Same as [`Self::property_u32_array`]; reads better for `interrupts`, `clocks`.
    pub fn property_cells(&mut self, name: &str, cells: &[u32]) {
        self.property_u32_array(name, cells);
    }

    pub fn property_u64_array(&mut self, name: &str, values: &[u64]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        self.property(name, &bytes);
    }

    /// `reg` for a parent with `#address-cells = <2>` and `#size-cells = <2>`.
    pub fn property_reg64(&mut self, regions: &[Region]) {
        let values: Vec<u64> = regions.iter().flat_map(|r| [r.base, r.size]).collect();
        self.property_u64_array("reg", &values);
    }

    /// Adds a `/memreserve/` entry.
    pub fn memreserve(&mut self, region: Region) {
        self.memreserve.push(region);
    }

    /// A fresh phandle (1, 2, ...), for nodes the caller wants to reference.
    pub fn alloc_phandle(&mut self) -> u32 {
        self.next_phandle = self.next_phandle.saturating_add(1);
        self.next_phandle
    }

    /// Closes any open nodes and lays out header, memory reservations, structure and
    /// strings (version 17, `last_comp_version` 16, `boot_cpuid_phys` 0).
    pub fn finish(mut self) -> Vec<u8> {
        debug_assert_eq!(self.depth, 0, "finish with {} open node(s)", self.depth);
        while self.depth > 0 {
            self.end_node();
        }
        self.push_u32(FDT_END);

        // Zero (0, 0) entries: memreserve entries of size 0 would read as the terminator.
        let reservations: Vec<Region> = self
            .memreserve
            .iter()
            .copied()
            .filter(|r| r.size != 0)
            .collect();
        let memrsv_len = (reservations.len() + 1) * 16;
        let off_mem_rsvmap = HEADER_SIZE.next_multiple_of(MEMRSV_ALIGN);
        let off_dt_struct = off_mem_rsvmap + memrsv_len;
        let off_dt_strings = off_dt_struct + self.structure.len();
        let totalsize = off_dt_strings + self.strings.len();

        let mut out = Vec::with_capacity(totalsize);
        for field in [
            FDT_MAGIC,
            len32(totalsize),
            len32(off_dt_struct),
            len32(off_dt_strings),
            len32(off_mem_rsvmap),
            VERSION_WRITTEN,
            LAST_COMP_VERSION,
            BOOT_CPUID_PHYS,
            len32(self.strings.len()),
            len32(self.structure.len()),
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        out.resize(off_mem_rsvmap, 0);
        for r in &reservations {
            out.extend_from_slice(&r.base.to_be_bytes());
            out.extend_from_slice(&r.size.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&self.strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdt::Fdt;

    #[test]
    fn write_then_parse_back() {
        let mut w = FdtWriter::new();
        w.memreserve(Region::new(0x4800_0000, 0x1000));
        w.begin_node("");
        w.property_u32("#address-cells", 2);
        w.property_u32("#size-cells", 2);
        w.property_string("model", "test");
        w.begin_node("node@1000");
        w.property_empty("flag");
        w.property_u64("big", 0x1_2345_6789);
        w.property_stringlist("compatible", &["a,b", "c"]);
        w.property_u32_array("cells", &[1, 2, 3]);
        w.property_reg64(&[Region::new(0x1000, 0x20)]);
        w.end_node();
        w.begin_node("other");
        w.property_string("model", "dup name reuses string");
        w.end_node();
        w.end_node();
        let blob = w.finish();

        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(fdt.version(), 17);
        assert_eq!(fdt.total_size(), blob.len());
        assert_eq!(
            fdt.memory_reservations().collect::<Vec<_>>(),
            [Region::new(0x4800_0000, 0x1000)]
        );
        let root = fdt.root();
        assert_eq!(root.property_str("model"), Some("test"));
        let n = fdt.find_node("/node").unwrap();
        assert_eq!(n.name(), "node@1000");
        assert!(n.has_property("flag") && n.property("flag").unwrap().is_empty());
        assert_eq!(n.property("big").unwrap().as_u64(), Some(0x1_2345_6789));
        assert_eq!(n.compatible().collect::<Vec<_>>(), ["a,b", "c"]);
        assert!(n.is_compatible("c") && !n.is_compatible("a"));
        assert_eq!(
            n.property("cells")
                .unwrap()
                .as_u32_iter()
                .unwrap()
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            n.reg().unwrap().unwrap().collect::<Vec<_>>(),
            [Region::new(0x1000, 0x20)]
        );
        assert_eq!(
            fdt.find_node("/other").unwrap().property_str("model"),
            Some("dup name reuses string")
        );
        // "model" is stored once in the strings block.
        assert_eq!(blob.windows(6).filter(|w| w == b"model\0").count(), 1);
    }

    #[test]
    fn finish_closes_open_nodes_in_release_builds() {
        if cfg!(debug_assertions) {
            return; // the debug_assert! is the point in debug builds
        }
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.begin_node("a");
        assert!(Fdt::new(&w.finish()).is_ok());
    }
}
