//! Bothy's own address space: an identity map (VA == PA) for the EL2 translation regime
//! (`TTBR0_EL2`, `HCR_EL2.E2H = 0`), 4 KiB granule, plus the `TCR_EL2` and `MAIR_EL2`
//! values that go with it.
//!
//! `hyp` calls [`build_el2_idmap`] once at boot, before turning the MMU on, with the RAM
//! it will use (normal) and the MMIO it drives (device); then it writes `MAIR_EL2`,
//! `TCR_EL2`, `TTBR0_EL2 = root` and sets `SCTLR_EL2.M/C/I`. Walking is `pgtable.rs`'s;
//! this file owns the stage-1 EL2 attribute encoding.
//!
//! Nothing is both writable and executable: Bothy's own text is mapped read-only and
//! executable, every other page of RAM read-write and execute-never, and devices
//! execute-never. A stray write cannot patch Bothy's code, and a jump into data (a
//! guest's pages included) faults instead of running it.

use alloc::vec::Vec;

use super::pgtable::{pa_range_encoding, PageTable, MAX_ADDRESS_BITS, PAGE_SIZE};
use super::{MapError, TableMemory};
use crate::Region;

/// MAIR_EL2 attribute encodings (Arm ARM D19, MAIR_EL2).
const MAIR_DEVICE_NGNRE: u64 = 0x04;
/// Normal, inner and outer Write-Back non-transient, Read-Allocate, Write-Allocate.
const MAIR_NORMAL_WB_RAWA: u64 = 0xff;
/// The MAIR_EL2 slot (AttrIndx) of each memory type.
const ATTRIDX_DEVICE: u64 = 0;
const ATTRIDX_NORMAL: u64 = 1;
const MAIR_BITS_PER_ATTR: u32 = 8;

/// Stage-1 leaf attributes (Arm ARM D8.3.2, "Stage 1 memory region attributes").
const S1_ATTRINDX_SHIFT: u32 = 2;
/// AP[1] (bit 6) is RES1 in a translation regime with a single privilege level (EL2
/// with E2H = 0); AP[2] (bit 7) clear = read-write.
const S1_AP1_RES1: u64 = 1 << 6;
/// SH[1:0] = 0b11: Inner Shareable.
const S1_SH_INNER: u64 = 0b11 << 8;
/// AF (bit 10): set, so no access-flag faults.
const S1_AF: u64 = 1 << 10;
/// XN (bit 54): execute-never. In the EL2 (E2H = 0) regime bit 53 is RES0.
const S1_XN: u64 = 1 << 54;
/// AP[2] (bit 7): read-only.
const S1_AP2_RO: u64 = 1 << 7;

const NORMAL: u64 = (ATTRIDX_NORMAL << S1_ATTRINDX_SHIFT) | S1_AP1_RES1 | S1_SH_INNER | S1_AF;
/// RAM Bothy reads and writes (data, stacks, heap, tables, guests' RAM): never executed.
const NORMAL_ATTRS: u64 = NORMAL | S1_XN;
/// Bothy's text: executed, never written.
const TEXT_ATTRS: u64 = NORMAL | S1_AP2_RO;
/// Device memory: Inner Shareable like the rest (shareability of Device memory is
/// treated as Outer Shareable by the architecture whatever SH says).
const DEVICE_ATTRS: u64 =
    (ATTRIDX_DEVICE << S1_ATTRINDX_SHIFT) | S1_AP1_RES1 | S1_SH_INNER | S1_AF | S1_XN;

/// TCR_EL2 fields (Arm ARM D19, TCR_EL2 when E2H = 0).
const TCR_T0SZ_SHIFT: u32 = 0;
/// IRGN0/ORGN0 = 0b01: table walks Normal Write-Back Read-Allocate Write-Allocate.
const TCR_IRGN0_WBWA: u64 = 0b01 << 8;
const TCR_ORGN0_WBWA: u64 = 0b01 << 10;
/// SH0 = 0b11: table walks Inner Shareable.
const TCR_SH0_INNER: u64 = 0b11 << 12;
/// TG0 = 0b00: 4 KiB granule.
const TCR_TG0_4K: u64 = 0b00 << 14;
const TCR_PS_SHIFT: u32 = 16;
/// Bits 31 and 23 are RES1.
const TCR_RES1: u64 = (1 << 31) | (1 << 23);

/// VA sizes this builder picks between: 39 bits (root at level 1) when everything fits,
/// otherwise 48 bits (root at level 0).
const SMALL_VA_BITS: u32 = 39;

/// An EL2 identity map ready to be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// Root table: the value for `TTBR0_EL2`.
    pub root: u64,
    pub tcr: u64,
    pub mair: u64,
    /// VA size the tables and `tcr` were built for (39 or 48).
    pub va_bits: u32,
}

/// Builds the EL2 identity map of `normal` (RAM, write-back) and `device` (MMIO) regions,
/// with `text` (Bothy's code, inside `normal`) read-only and executable and all else
/// execute-never. Regions are rounded out to 4 KiB (`text` must be page-aligned);
/// regions of one kind may touch or overlap, but a page that is both normal and device
/// is refused ([`MapError::AlreadyMapped`]). `unmapped` (page-aligned) is left out of
/// `normal`: the guard pages below the per-CPU stacks (`super::stacks`), so a stack
/// overflow faults. `pa_range_bits` is the CPU's physical address range
/// (ID_AA64MMFR0_EL1.PARange).
pub fn build_el2_idmap(
    mem: &mut impl TableMemory,
    normal: &[Region],
    device: &[Region],
    text: Region,
    unmapped: &[Region],
    pa_range_bits: u32,
) -> Result<IdMap, MapError> {
    let aligned = |r: &Region| r.base.is_multiple_of(PAGE_SIZE) && r.size.is_multiple_of(PAGE_SIZE);
    if !aligned(&text) || !unmapped.iter().all(aligned) {
        return Err(MapError::Unaligned);
    }
    let normal = round_and_merge(normal)?;
    let device = round_and_merge(device)?;
    let top = normal
        .iter()
        .chain(&device)
        .map(Region::end)
        .max()
        .unwrap_or(0);
    let va_bits = if top <= 1 << SMALL_VA_BITS {
        SMALL_VA_BITS
    } else if top <= 1 << MAX_ADDRESS_BITS {
        MAX_ADDRESS_BITS
    } else {
        return Err(MapError::OutOfRange);
    };
    let table = PageTable::new(mem, va_bits)?;
    let mut holes = Vec::with_capacity(unmapped.len() + 1);
    holes.push(text);
    holes.extend_from_slice(unmapped);
    for r in &super::frames::free_regions(&normal, &holes) {
        table.map(mem, r.base, r.base, r.size, NORMAL_ATTRS)?;
    }
    if text.size != 0 {
        table.map(mem, text.base, text.base, text.size, TEXT_ATTRS)?;
    }
    for r in &device {
        table.map(mem, r.base, r.base, r.size, DEVICE_ATTRS)?;
    }
    let tcr = TCR_RES1
        | (u64::from(64 - va_bits) << TCR_T0SZ_SHIFT)
        | TCR_IRGN0_WBWA
        | TCR_ORGN0_WBWA
        | TCR_SH0_INNER
        | TCR_TG0_4K
        | (pa_range_encoding(pa_range_bits) << TCR_PS_SHIFT);
    let mair = (MAIR_DEVICE_NGNRE << (ATTRIDX_DEVICE as u32 * MAIR_BITS_PER_ATTR))
        | (MAIR_NORMAL_WB_RAWA << (ATTRIDX_NORMAL as u32 * MAIR_BITS_PER_ATTR));
    Ok(IdMap {
        root: table.root(),
        tcr,
        mair,
        va_bits,
    })
}

/// Rounds each region out to whole pages, drops empty ones, sorts and merges.
fn round_and_merge(regions: &[Region]) -> Result<Vec<Region>, MapError> {
    let mut v = Vec::with_capacity(regions.len());
    for r in regions.iter().filter(|r| r.size != 0) {
        let base = r.base & !(PAGE_SIZE - 1);
        let end = r
            .base
            .checked_add(r.size)
            .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE))
            .ok_or(MapError::OutOfRange)?;
        v.push(Region::new(base, end - base));
    }
    Ok(super::frames::normalize(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::fake::FakeMem;
    use crate::mem::pgtable::DESC_ADDR_MASK;
    use crate::mem::TableMemory;

    const G1: u64 = 0x4000_0000;
    const M2: u64 = 0x20_0000;
    const NO_TEXT: Region = Region::new(0, 0);

    fn lookup(mem: &FakeMem, map: &IdMap, va: u64) -> Option<(u64, u64)> {
        // Rebuild the walker view from the published root and VA size.
        let t = PageTableView {
            root: map.root,
            bits: map.va_bits,
        };
        t.lookup(mem, va)
    }

    /// A read-only walker over a finished map, as the MMU would see it.
    struct PageTableView {
        root: u64,
        bits: u32,
    }

    impl PageTableView {
        fn lookup(&self, mem: &FakeMem, va: u64) -> Option<(u64, u64)> {
            let mut level = crate::mem::pgtable::start_level(self.bits);
            let mut table = self.root;
            loop {
                let shift = crate::mem::pgtable::level_shift(level);
                let d = mem.read(table, ((va >> shift) & 511) as usize);
                if d & 1 == 0 {
                    return None;
                }
                if level < 3 && d & 2 != 0 {
                    table = d & DESC_ADDR_MASK;
                    level += 1;
                    continue;
                }
                let mask = (1u64 << shift) - 1;
                return Some((
                    (d & DESC_ADDR_MASK & !mask) | (va & mask),
                    d & !DESC_ADDR_MASK & !3,
                ));
            }
        }
    }

    #[test]
    fn qemu_virt_layout() {
        let mut mem = FakeMem::new();
        let ram = Region::new(0x4000_0000, 0x8000_0000); // 2 GiB at 1 GiB
        let uart = Region::new(0x0900_0000, 0x1000);
        let gic = Region::new(0x0800_0000, 0x20_0000);
        let m = build_el2_idmap(&mut mem, &[ram], &[uart, gic], NO_TEXT, &[], 40).unwrap();
        assert_eq!(m.va_bits, 39);
        assert_eq!(m.mair, 0xff04);
        // Root (level 1) + one L2 table for the MMIO gigabyte + one L3 table for the UART.
        assert_eq!(mem.tables(), 3, "RAM is two 1 GiB blocks");
        let (pa, attrs) = lookup(&mem, &m, 0x4123_4567).unwrap();
        assert_eq!(pa, 0x4123_4567);
        assert_eq!(
            attrs,
            1 << 2 | 1 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54,
            "RAM: RW, XN"
        );
        let (pa, attrs) = lookup(&mem, &m, 0x0900_0010).unwrap();
        assert_eq!(pa, 0x0900_0010);
        assert_eq!(attrs, 1 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54);
        assert_eq!(lookup(&mem, &m, 0x0900_1000), None);
        assert!(
            lookup(&mem, &m, 0x081f_ffff).is_some(),
            "GIC as a 2 MiB block"
        );
        assert_eq!(lookup(&mem, &m, 0xc000_0000), None);

        let t = m.tcr;
        assert_eq!(t & 0x3f, 25, "T0SZ for 39 bits");
        assert_eq!((t >> 8) & 0xf, 0b0101, "IRGN0/ORGN0 WBWA");
        assert_eq!((t >> 12) & 3, 3, "SH0 inner");
        assert_eq!((t >> 14) & 3, 0, "TG0 4K");
        assert_eq!((t >> 16) & 7, 2, "PS 40 bits");
        assert_eq!(t & (1 << 31 | 1 << 23), 1 << 31 | 1 << 23, "RES1");
        assert_eq!(t, 0x8082_3519);
    }

    #[test]
    fn bothys_text_is_the_only_executable_memory_and_is_read_only() {
        let mut mem = FakeMem::new();
        let ram = Region::new(0x4000_0000, 0x4000_0000);
        let text = Region::new(0x4020_0000, 0x3_5000);
        let m = build_el2_idmap(&mut mem, &[ram], &[], text, &[], 40).unwrap();
        let attrs = |va| lookup(&mem, &m, va).unwrap().1;
        for va in [0x4020_0000, 0x4023_4fff] {
            assert_eq!(
                attrs(va) & (1 << 54 | 1 << 7),
                1 << 7,
                "text at {va:#x}: RO, X"
            );
        }
        for va in [0x4000_0000, 0x401f_ffff, 0x4023_5000, 0x7fff_ffff] {
            assert_eq!(
                attrs(va) & (1 << 54 | 1 << 7),
                1 << 54,
                "data at {va:#x}: RW, XN"
            );
        }
        assert_eq!(
            build_el2_idmap(
                &mut mem,
                &[ram],
                &[],
                Region::new(0x4020_0800, 0x1000),
                &[],
                40
            ),
            Err(MapError::Unaligned)
        );
    }

    #[test]
    fn high_memory_needs_48_bits() {
        let mut mem = FakeMem::new();
        let high = Region::new(0x80_0000_0000, G1); // at 512 GiB
        let m = build_el2_idmap(&mut mem, &[high], &[], NO_TEXT, &[], 48).unwrap();
        assert_eq!(m.va_bits, 48);
        assert_eq!(m.tcr & 0x3f, 16);
        assert_eq!((m.tcr >> 16) & 7, 5);
        assert_eq!(
            mem.tables(),
            2,
            "level-0 root + level-1 table holding one 1 GiB block"
        );
        assert!(lookup(&mem, &m, 0x80_3fff_ffff).is_some());
        // A region ending exactly at 2^39 still fits 39 bits.
        let mut mem = FakeMem::new();
        let edge = Region::new(0x7f_c000_0000, G1);
        assert_eq!(
            build_el2_idmap(&mut mem, &[edge], &[], NO_TEXT, &[], 48)
                .unwrap()
                .va_bits,
            39
        );
        let mut mem = FakeMem::new();
        let too_high = Region::new(1 << 48, 0x1000);
        assert_eq!(
            build_el2_idmap(&mut mem, &[too_high], &[], NO_TEXT, &[], 48),
            Err(MapError::OutOfRange)
        );
    }

    #[test]
    fn rounds_out_and_merges() {
        let mut mem = FakeMem::new();
        // Two unaligned normal regions sharing a page, one fully inside another.
        let n = [
            Region::new(0x4000_0800, 0x1000),
            Region::new(0x4000_1800, 0x100),
            Region::new(0x4000_0000, 0x10),
            Region::new(0x5000_0000, 0),
        ];
        let m = build_el2_idmap(&mut mem, &n, &[], NO_TEXT, &[], 40).unwrap();
        assert!(lookup(&mem, &m, 0x4000_0000).is_some());
        assert!(lookup(&mem, &m, 0x4000_1fff).is_some());
        assert_eq!(lookup(&mem, &m, 0x4000_2000), None);
        assert_eq!(lookup(&mem, &m, 0x5000_0000), None, "empty region skipped");
        assert_eq!(
            round_and_merge(&[Region::new(0x1fff, 2), Region::new(0x3000, 0x1000)]).unwrap(),
            vec![Region::new(0x1000, 0x3000)]
        );
    }

    #[test]
    fn normal_device_overlap_is_refused() {
        let mut mem = FakeMem::new();
        let r = build_el2_idmap(
            &mut mem,
            &[Region::new(0x4000_0000, M2)],
            &[Region::new(0x401f_f800, 0x10)],
            NO_TEXT,
            &[],
            40,
        );
        assert_eq!(r, Err(MapError::AlreadyMapped { addr: 0x401f_f000 }));
        let mut none = FakeMem::with_limit(0);
        assert_eq!(
            build_el2_idmap(&mut none, &[Region::new(0, 0x1000)], &[], NO_TEXT, &[], 40),
            Err(MapError::OutOfMemory)
        );
    }

    #[test]
    fn stack_guard_pages_are_left_unmapped() {
        use crate::mem::stacks::StackLayout;
        let mut mem = FakeMem::new();
        let ram = Region::new(0x4000_0000, 0x4000_0000);
        let text = Region::new(0x4020_0000, 0x3_5000);
        let stacks = StackLayout {
            base: 0x4030_0000,
            slot_size: 0x1_0000,
            cpus: 8,
        };
        let guards: Vec<Region> = stacks.guards().collect();
        let m = build_el2_idmap(&mut mem, &[ram], &[], text, &guards, 40).unwrap();
        for cpu in 0..stacks.cpus {
            let guard = stacks.guard(cpu).unwrap();
            let stack = stacks.stack(cpu).unwrap();
            assert_eq!(lookup(&mem, &m, guard.base), None, "CPU {cpu}'s guard");
            assert_eq!(lookup(&mem, &m, guard.end() - 8), None, "CPU {cpu}'s guard");
            for va in [stack.base, stack.end() - 8] {
                let (pa, attrs) = lookup(&mem, &m, va).expect("stack mapped");
                assert_eq!(pa, va);
                assert_eq!(attrs & (1 << 54 | 1 << 7), 1 << 54, "stack: RW, XN");
            }
        }
        assert!(lookup(&mem, &m, 0x4020_0000).is_some(), "text still mapped");
        assert!(
            lookup(&mem, &m, 0x402f_f000).is_some(),
            "RAM below the slots"
        );
        assert!(
            lookup(&mem, &m, 0x4038_0000).is_some(),
            "RAM above the slots"
        );
        assert_eq!(
            build_el2_idmap(
                &mut mem,
                &[ram],
                &[],
                text,
                &[Region::new(0x4030_0800, 0x1000)],
                40
            ),
            Err(MapError::Unaligned)
        );
    }
}
