//! The VMSAv8-64 translation-table walker shared by stage 2 (`stage2.rs`) and the EL2
//! stage-1 identity map (`idmap.rs`): 4 KiB granule, 48-bit output addresses, a single
//! (non-concatenated) root table.
//!
//! The two formats differ only in the attribute bits of leaf descriptors and in how the
//! root level follows from the input-address size, so this file knows nothing about
//! attributes: callers hand it the leaf attribute bits ready-made, and it places them
//! in block or page descriptors (Arm ARM D8.3, "Translation table descriptor formats").
//!
//! Invariants this walker keeps:
//! - it never overwrites a valid descriptor with a different valid one: `map` refuses
//!   any range with something already mapped (checked before anything is written),
//!   `unmap` refuses to cut a block in two. Both would need break-before-make with a TLB
//!   invalidation in the middle (Arm ARM D8.16.1), which `core` cannot issue;
//! - blocks (1 GiB at level 1, 2 MiB at level 2) are used wherever input address, output
//!   address and remaining size allow; otherwise 4 KiB pages;
//! - intermediate tables are never freed (a later `map` reuses them), so there are no
//!   walk-cache invalidations to ask for either.

use alloc::vec::Vec;

use super::{MapError, TableMemory};
use crate::Region;

/// Translation granule: 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
pub const PAGE_SHIFT: u32 = 12;
/// Descriptors per table: a 4 KiB table of 8-byte descriptors.
pub const ENTRIES_PER_TABLE: usize = 512;
/// Input-address bits resolved per level with a 4 KiB granule.
const BITS_PER_LEVEL: u32 = 9;
/// The last lookup level (pages).
const LAST_LEVEL: u32 = 3;
/// Largest input or output address size handled (no FEAT_LPA2 52-bit descriptors).
pub const MAX_ADDRESS_BITS: u32 = 48;

/// Bit 0 of every descriptor: valid. Arm ARM D8.3.1.
pub const DESC_VALID: u64 = 1 << 0;
/// Bit 1: table descriptor at levels 0-2, page descriptor at level 3; clear for a block.
pub const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
/// Next-level table address / output address, bits [47:12].
pub const DESC_ADDR_MASK: u64 = ((1 << MAX_ADDRESS_BITS) - 1) & !(PAGE_SIZE - 1);
/// The attribute bits of a leaf: everything except the type bits and the address.
pub const DESC_ATTR_MASK: u64 = !(DESC_ADDR_MASK | DESC_VALID | DESC_TABLE_OR_PAGE);

/// Input-address bits below the index of `level`: 39, 30, 21, 12.
pub const fn level_shift(level: u32) -> u32 {
    PAGE_SHIFT + BITS_PER_LEVEL * (LAST_LEVEL - level)
}

/// Bytes one descriptor at `level` covers: 512 GiB, 1 GiB, 2 MiB, 4 KiB.
pub const fn level_size(level: u32) -> u64 {
    1 << level_shift(level)
}

/// With a 4 KiB granule, block descriptors exist at levels 1 and 2 only (level 0 needs
/// FEAT_LPA2). Arm ARM D8.3.1.
const fn block_allowed(level: u32) -> bool {
    level == 1 || level == 2
}

/// Start level for an input-address size: the level whose table resolves the top bits,
/// without concatenating root tables. 40..=48 bits → 0, 31..=39 → 1, 22..=30 → 2.
pub const fn start_level(address_bits: u32) -> u32 {
    let mut level = 0;
    while level < LAST_LEVEL && address_bits <= level_shift(level) {
        level += 1;
    }
    level
}

/// The PS/PARange encoding (TCR_EL2.PS, VTCR_EL2.PS, ID_AA64MMFR0_EL1.PARange) of the
/// largest physical address size not above `bits`, capped at 48 bits. Arm ARM D19.
pub const fn pa_range_encoding(bits: u32) -> u64 {
    match bits {
        0..=35 => 0b000,  // 32 bits, 4 GiB
        36..=39 => 0b001, // 36 bits
        40..=41 => 0b010, // 40 bits
        42..=43 => 0b011, // 42 bits
        44..=47 => 0b100, // 44 bits
        _ => 0b101,       // 48 bits (52-bit output addresses are not supported)
    }
}

/// Decodes `ID_AA64MMFR0_EL1.PARange` into a physical address size in bits.
pub const fn pa_range_bits(parange: u8) -> Option<u32> {
    match parange {
        0b0000 => Some(32),
        0b0001 => Some(36),
        0b0010 => Some(40),
        0b0011 => Some(42),
        0b0100 => Some(44),
        0b0101 => Some(48),
        0b0110 => Some(52),
        _ => None,
    }
}

/// A translation table tree: its root and geometry. Plain data; the tables themselves
/// live in [`TableMemory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTable {
    root: u64,
    start_level: u32,
    address_bits: u32,
}

impl PageTable {
    /// Allocates an empty root table for `address_bits` of input address.
    pub fn new(mem: &mut impl TableMemory, address_bits: u32) -> Result<Self, MapError> {
        if !(PAGE_SHIFT + BITS_PER_LEVEL..=MAX_ADDRESS_BITS).contains(&address_bits) {
            return Err(MapError::UnsupportedAddressBits(address_bits));
        }
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        Ok(Self {
            root,
            start_level: start_level(address_bits),
            address_bits,
        })
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn start_level(&self) -> u32 {
        self.start_level
    }

    pub fn address_bits(&self) -> u32 {
        self.address_bits
    }

    fn check_input(&self, va: u64, size: u64) -> Result<(), MapError> {
        if !va.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        match va.checked_add(size) {
            Some(end) if end <= 1 << self.address_bits => Ok(()),
            _ => Err(MapError::OutOfRange),
        }
    }

    /// Maps `[va, va + size)` to `[pa, pa + size)` with leaf attribute bits `attrs`
    /// (bits inside [`DESC_ATTR_MASK`]). All or nothing: on any error no mapping is
    /// left behind (after `OutOfMemory` the range was briefly valid: if the tables are
    /// live, invalidate it before reusing the input range).
    pub fn map(
        &self,
        mem: &mut impl TableMemory,
        va: u64,
        pa: u64,
        size: u64,
        attrs: u64,
    ) -> Result<(), MapError> {
        self.map_granular(mem, va, pa, size, attrs, true)
    }

    /// [`PageTable::map`] with 4 KiB page descriptors only, never blocks.
    pub fn map_pages(
        &self,
        mem: &mut impl TableMemory,
        va: u64,
        pa: u64,
        size: u64,
        attrs: u64,
    ) -> Result<(), MapError> {
        self.map_granular(mem, va, pa, size, attrs, false)
    }

    fn map_granular(
        &self,
        mem: &mut impl TableMemory,
        va: u64,
        pa: u64,
        size: u64,
        attrs: u64,
        blocks: bool,
    ) -> Result<(), MapError> {
        self.check_input(va, size)?;
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        match pa.checked_add(size) {
            Some(end) if end <= 1 << MAX_ADDRESS_BITS => {}
            _ => return Err(MapError::OutOfRange),
        }
        if size == 0 {
            return Ok(());
        }
        if let Some(addr) = self.first_mapped(mem, self.root, self.start_level, va, size) {
            return Err(MapError::AlreadyMapped { addr });
        }
        let attrs = attrs & DESC_ATTR_MASK;
        let mut done = 0;
        let r = map_level(
            mem,
            self.root,
            self.start_level,
            Leaf {
                va,
                pa,
                size,
                attrs,
                blocks,
            },
            &mut done,
        );
        if r.is_err() && done > 0 {
            // Only whole leaves inside [va, va + done) were written: this cannot fail.
            let _ = self.unmap(mem, va, done);
        }
        r
    }

    /// Removes every mapping in `[va, va + size)`, returning the input ranges that were
    /// mapped (merged, ascending): the caller must invalidate their TLB entries.
    /// Refuses, changing nothing, if the range cuts through a block.
    pub fn unmap(
        &self,
        mem: &mut impl TableMemory,
        va: u64,
        size: u64,
    ) -> Result<Vec<Region>, MapError> {
        self.check_input(va, size)?;
        let mut out = Vec::new();
        // A dry run first, so that a refused unmap leaves everything as it was.
        unmap_level(mem, self.root, self.start_level, va, size, None)?;
        unmap_level(mem, self.root, self.start_level, va, size, Some(&mut out))?;
        Ok(out)
    }

    /// Frees every table of this tree, the root last, and returns how many. Call only
    /// once no walker can use them (not installed anywhere, VMID invalidated); the
    /// mapped output pages themselves are the caller's to give back.
    pub fn destroy(self, mem: &mut impl TableMemory) -> usize {
        free_level(mem, self.root, self.start_level)
    }

    /// Output address and leaf attribute bits for input address `va`.
    pub fn lookup(&self, mem: &impl TableMemory, va: u64) -> Option<(u64, u64)> {
        if va >> self.address_bits != 0 {
            return None;
        }
        let mut table = self.root;
        let mut level = self.start_level;
        loop {
            let desc = mem.read(table, index(va, level));
            if desc & DESC_VALID == 0 {
                return None;
            }
            let is_table_or_page = desc & DESC_TABLE_OR_PAGE != 0;
            if level < LAST_LEVEL && is_table_or_page {
                table = desc & DESC_ADDR_MASK;
                level += 1;
                continue;
            }
            // Level 3 with bit 1 clear is reserved, level 0 blocks do not exist.
            if (level == LAST_LEVEL && !is_table_or_page)
                || (level < LAST_LEVEL && !block_allowed(level))
            {
                return None;
            }
            let mask = level_size(level) - 1;
            let oa = (desc & DESC_ADDR_MASK & !mask) | (va & mask);
            return Some((oa, desc & DESC_ATTR_MASK));
        }
    }

    /// The first input address in `[va, va + size)` that something maps, if any.
    fn first_mapped(
        &self,
        mem: &impl TableMemory,
        table: u64,
        level: u32,
        va: u64,
        size: u64,
    ) -> Option<u64> {
        let end = va + size;
        let mut cur = va;
        while cur < end {
            let next = chunk_end(cur, end, level);
            let desc = mem.read(table, index(cur, level));
            if desc & DESC_VALID != 0 {
                if level < LAST_LEVEL && desc & DESC_TABLE_OR_PAGE != 0 {
                    let sub = desc & DESC_ADDR_MASK;
                    if let Some(a) = self.first_mapped(mem, sub, level + 1, cur, next - cur) {
                        return Some(a);
                    }
                } else {
                    return Some(cur);
                }
            }
            cur = next;
        }
        None
    }
}

/// Index of `va` in a table at `level`.
fn index(va: u64, level: u32) -> usize {
    ((va >> level_shift(level)) as usize) & (ENTRIES_PER_TABLE - 1)
}

/// End of the part of `[cur, end)` that one descriptor at `level` covers.
fn chunk_end(cur: u64, end: u64, level: u32) -> u64 {
    let boundary = (cur | (level_size(level) - 1)).saturating_add(1);
    boundary.min(end)
}

/// Frees the table at `table` (level `level`) and every table below it.
fn free_level(mem: &mut impl TableMemory, table: u64, level: u32) -> usize {
    let mut freed = 0;
    if level < LAST_LEVEL {
        for idx in 0..ENTRIES_PER_TABLE {
            let desc = mem.read(table, idx);
            if desc & DESC_VALID != 0 && desc & DESC_TABLE_OR_PAGE != 0 {
                freed += free_level(mem, desc & DESC_ADDR_MASK, level + 1);
            }
        }
    }
    mem.free_table(table);
    freed + 1
}

fn map_level(
    mem: &mut impl TableMemory,
    table: u64,
    level: u32,
    leaf: Leaf,
    done: &mut u64,
) -> Result<(), MapError> {
    let Leaf {
        va,
        pa,
        size,
        attrs,
        blocks,
    } = leaf;
    let end = va + size;
    let mut cur = va;
    while cur < end {
        let next = chunk_end(cur, end, level);
        let len = next - cur;
        let out = pa + (cur - va);
        let idx = index(cur, level);
        let desc = mem.read(table, idx);
        let block = level_size(level);
        let sub_leaf = Leaf {
            va: cur,
            pa: out,
            size: len,
            ..leaf
        };
        if level == LAST_LEVEL {
            // first_mapped() proved every leaf slot in the range empty.
            mem.write(table, idx, out | attrs | DESC_TABLE_OR_PAGE | DESC_VALID);
            *done += len;
        } else if desc & DESC_VALID != 0 {
            // Must be a table (a leaf would have been found by first_mapped()).
            map_level(mem, desc & DESC_ADDR_MASK, level + 1, sub_leaf, done)?;
        } else if blocks
            && block_allowed(level)
            && len == block
            && cur.is_multiple_of(block)
            && out.is_multiple_of(block)
        {
            mem.write(table, idx, out | attrs | DESC_VALID);
            *done += len;
        } else {
            let sub = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            // The new table is zeroed (all invalid) before it becomes reachable.
            mem.write(table, idx, sub | DESC_TABLE_OR_PAGE | DESC_VALID);
            map_level(mem, sub, level + 1, sub_leaf, done)?;
        }
        cur = next;
    }
    Ok(())
}

/// What `map_level` maps: `[va, va + size)` to `pa` with leaf `attrs`, using blocks
/// where they fit if `blocks`.
#[derive(Clone, Copy)]
struct Leaf {
    va: u64,
    pa: u64,
    size: u64,
    attrs: u64,
    blocks: bool,
}

/// With `out == None` only checks for partial blocks; otherwise clears the leaves and
/// records what was mapped.
fn unmap_level(
    mem: &mut impl TableMemory,
    table: u64,
    level: u32,
    va: u64,
    size: u64,
    mut out: Option<&mut Vec<Region>>,
) -> Result<(), MapError> {
    let end = va + size;
    let mut cur = va;
    while cur < end {
        let next = chunk_end(cur, end, level);
        let idx = index(cur, level);
        let desc = mem.read(table, idx);
        if desc & DESC_VALID != 0 {
            if level < LAST_LEVEL && desc & DESC_TABLE_OR_PAGE != 0 {
                let sub = desc & DESC_ADDR_MASK;
                unmap_level(mem, sub, level + 1, cur, next - cur, out.as_deref_mut())?;
            } else if next - cur != level_size(level) {
                return Err(MapError::PartialBlock {
                    addr: cur & !(level_size(level) - 1),
                });
            } else if let Some(out) = out.as_deref_mut() {
                mem.write(table, idx, 0);
                match out.last_mut() {
                    Some(last) if last.end() == cur => last.size += next - cur,
                    _ => out.push(Region::new(cur, next - cur)),
                }
            }
        }
        cur = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::fake::FakeMem;

    #[test]
    fn geometry() {
        assert_eq!(
            [0, 1, 2, 3].map(level_size),
            [1 << 39, 1 << 30, 1 << 21, 1 << 12]
        );
        assert_eq!(start_level(48), 0);
        assert_eq!(start_level(40), 0);
        assert_eq!(start_level(39), 1);
        assert_eq!(start_level(32), 1);
        assert_eq!(start_level(30), 2);
        assert_eq!(DESC_ADDR_MASK, 0x0000_ffff_ffff_f000);
        assert_eq!(pa_range_encoding(48), 5);
        assert_eq!(pa_range_encoding(52), 5);
        assert_eq!(pa_range_encoding(40), 2);
        assert_eq!(pa_range_encoding(39), 1);
        assert_eq!(pa_range_encoding(32), 0);
        assert_eq!(pa_range_bits(2), Some(40));
        assert_eq!(pa_range_bits(7), None);
    }

    #[test]
    fn chunking_does_not_overflow_at_top() {
        let top = !(PAGE_SIZE - 1);
        assert_eq!(chunk_end(top, u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn rejects_bad_sizes() {
        let mut m = FakeMem::new();
        assert_eq!(
            PageTable::new(&mut m, 49),
            Err(MapError::UnsupportedAddressBits(49))
        );
        assert_eq!(
            PageTable::new(&mut m, 20),
            Err(MapError::UnsupportedAddressBits(20))
        );
        let mut none = FakeMem::with_limit(0);
        assert_eq!(PageTable::new(&mut none, 39), Err(MapError::OutOfMemory));
    }

    #[test]
    fn out_of_memory_rolls_back() {
        // Root + one L2 table fit, the L3 table for the tail does not.
        let mut m = FakeMem::with_limit(2);
        let t = PageTable::new(&mut m, 39).unwrap();
        let r = t.map(&mut m, 0x4000_0000, 0x8000_0000, 0x20_0000 + PAGE_SIZE, 0);
        assert_eq!(r, Err(MapError::OutOfMemory));
        assert_eq!(
            t.lookup(&m, 0x4000_0000),
            None,
            "the 2 MiB block is gone too"
        );
        // The tables stay allocated and are reused.
        let mut m2 = m.clone_with_limit(3);
        t.map(&mut m2, 0x4000_0000, 0x8000_0000, 0x20_0000 + PAGE_SIZE, 0)
            .unwrap();
        assert_eq!(t.lookup(&m2, 0x4020_0000), Some((0x8020_0000, 0)));
    }

    #[test]
    fn lookup_outside_address_space() {
        let mut m = FakeMem::new();
        let t = PageTable::new(&mut m, 32).unwrap();
        assert_eq!(t.lookup(&m, 1 << 32), None);
        assert_eq!(
            t.map(&mut m, 0xffff_f000, 0, 0x2000, 0),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            t.map(&mut m, 0, !0xfff, 0x2000, 0),
            Err(MapError::OutOfRange)
        );
        assert_eq!(
            t.map(&mut m, 0, 1 << 48, 0x1000, 0),
            Err(MapError::OutOfRange)
        );
    }
}
