//! A VM's stage-2 translation tables (IPA → PA), VMSAv8-64 stage 2 with a 4 KiB
//! granule (Arm ARM D8), and the `VTCR_EL2`/`VTTBR_EL2` values that describe them.
//!
//! The VM builder maps guest RAM and passthrough MMIO here; the memory-sharing calls
//! (lend/share/reclaim) unmap and remap ranges and hand the returned ranges to `hyp` for
//! `TLBI IPAS2E1IS` by VMID. Walking and the no-overwrite / no-split rules are
//! `pgtable.rs`'s; this file owns the stage-2 attribute encoding and the register
//! values.
//!
//! Geometry: `ipa_bits` 32..=48. The root is a single table at level 1 for up to 39
//! bits (VTCR_EL2.SL0 = 1) and at level 0 above (SL0 = 2); no concatenated roots.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::pgtable::{pa_range_encoding, PageTable};
use super::{MapError, TableMemory, Vmid, VmidBits};
use crate::Region;

/// Stage-2 leaf attributes (Arm ARM D8.3.2, "Stage 2 memory region attributes").
const S2_MEMATTR_SHIFT: u32 = 2;
const S2_MEMATTR_MASK: u64 = 0b1111 << S2_MEMATTR_SHIFT;
/// MemAttr[3:0] = 0b1111: Normal, outer and inner Write-Back cacheable.
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111 << S2_MEMATTR_SHIFT;
/// MemAttr[3:0] = 0b0001: Device-nGnRE.
const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << S2_MEMATTR_SHIFT;
/// S2AP[0] (bit 6): reads permitted; S2AP[1] (bit 7): writes permitted.
const S2AP_READ: u64 = 1 << 6;
const S2AP_WRITE: u64 = 1 << 7;
/// SH[1:0] (bits [9:8]) = 0b11: Inner Shareable.
const S2_SH_INNER: u64 = 0b11 << 8;
/// AF (bit 10): set, so the first access does not fault (no hardware AF management).
const S2_AF: u64 = 1 << 10;
/// XN[1:0] (bits [54:53]) = 0b10: not executable at EL1 or EL0. Bit 54 alone is the
/// Armv8.0 XN bit; with FEAT_XNX, 0b10 still means "execute-never everywhere" (0b11
/// would make it executable at EL1, so bit 53 stays clear).
const S2_XN: u64 = 0b10 << 53;

/// What a stage-2 mapping gives the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum S2Attr {
    /// Write-back cacheable RAM, Inner Shareable.
    Normal { read: bool, write: bool, exec: bool },
    /// Device-nGnRE MMIO, read/write, never executable.
    Device,
}

impl S2Attr {
    /// Read-write-execute RAM, the usual guest memory.
    pub const RAM: S2Attr = S2Attr::Normal {
        read: true,
        write: true,
        exec: true,
    };

    /// The descriptor's attribute bits (outside address and type bits).
    pub const fn bits(self) -> u64 {
        match self {
            S2Attr::Normal { read, write, exec } => {
                S2_MEMATTR_NORMAL_WB
                    | S2_SH_INNER
                    | S2_AF
                    | if read { S2AP_READ } else { 0 }
                    | if write { S2AP_WRITE } else { 0 }
                    | if exec { 0 } else { S2_XN }
            }
            S2Attr::Device => S2_MEMATTR_DEVICE_NGNRE | S2AP_READ | S2AP_WRITE | S2_AF | S2_XN,
        }
    }

    /// Inverse of [`bits`](Self::bits) for descriptors this module wrote.
    const fn from_bits(bits: u64) -> Self {
        if bits & S2_MEMATTR_MASK == S2_MEMATTR_NORMAL_WB {
            S2Attr::Normal {
                read: bits & S2AP_READ != 0,
                write: bits & S2AP_WRITE != 0,
                exec: bits & S2_XN == 0,
            }
        } else {
            S2Attr::Device
        }
    }
}

/// VTCR_EL2 fields (Arm ARM D19, VTCR_EL2).
const VTCR_T0SZ_SHIFT: u32 = 0;
const VTCR_SL0_SHIFT: u32 = 6;
/// IRGN0/ORGN0 = 0b01: table walks Normal Write-Back Read-Allocate Write-Allocate.
const VTCR_IRGN0_WBWA: u64 = 0b01 << 8;
const VTCR_ORGN0_WBWA: u64 = 0b01 << 10;
/// SH0 = 0b11: table walks Inner Shareable.
const VTCR_SH0_INNER: u64 = 0b11 << 12;
/// TG0 = 0b00: 4 KiB granule.
const VTCR_TG0_4K: u64 = 0b00 << 14;
const VTCR_PS_SHIFT: u32 = 16;
/// VS (bit 19): 16-bit VMIDs. `hyp` ORs it in when ID_AA64MMFR1_EL1.VMIDBits says the
/// CPU has them; without it only VMIDs below 256 are valid.
pub const VTCR_EL2_VS: u64 = 1 << 19;
/// Bit 31 is RES1.
const VTCR_RES1: u64 = 1 << 31;
/// VTTBR_EL2.VMID, bits [63:48] (bits [55:48] with 8-bit VMIDs).
const VTTBR_VMID_SHIFT: u32 = 48;

/// A `VTTBR_EL2` value: the root of a [`Stage2`] and the VMID it translates under.
/// Only a `Stage2` makes one ([`Stage2::vttbr`], [`Stage2::idle_vttbr`]), so `hyp`
/// installs it without taking a raw value: no safe caller can point the stage-2 walker
/// at memory that is not a stage-2 root, or tag a VM's TLB entries with a VMID it was
/// not given. That the tables still exist while it is installed is `hyp`'s to keep (it
/// parks an idle CPU's stage 2 and frees tables only once no CPU has them installed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Vttbr(u64);

impl Vttbr {
    /// The register value.
    #[inline(always)]
    pub const fn bits(self) -> u64 {
        self.0
    }
}

/// A [`Vttbr`] that changes while others read it (a VM's, replaced when it restarts
/// with fresh memory): an `AtomicU64` that only ever holds a `Vttbr`.
#[derive(Debug)]
pub struct AtomicVttbr(AtomicU64);

impl AtomicVttbr {
    pub const fn new(vttbr: Vttbr) -> Self {
        Self(AtomicU64::new(vttbr.0))
    }

    #[inline(always)]
    pub fn load(&self, order: Ordering) -> Vttbr {
        Vttbr(self.0.load(order))
    }

    pub fn store(&self, vttbr: Vttbr, order: Ordering) {
        self.0.store(vttbr.0, order)
    }
}

/// A `VTCR_EL2` value: the geometry of a [`Stage2`]'s tables (IPA size, start level,
/// granule, walk attributes), the physical address size and the VMID width. Only
/// [`Stage2::vtcr`] makes one, so the walker is never told a geometry the tables were
/// not built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Vtcr(u64);

impl Vtcr {
    /// The register value.
    #[inline(always)]
    pub const fn bits(self) -> u64 {
        self.0
    }
}

/// A VM's stage-2 tables. Plain data: the tables live in [`TableMemory`], which every
/// operation takes, so one `Stage2` never outlives or aliases its memory provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2 {
    table: PageTable,
}

impl Stage2 {
    /// An empty stage 2 for an `ipa_bits`-bit IPA space (32..=48).
    pub fn new(mem: &mut impl TableMemory, ipa_bits: u32) -> Result<Self, MapError> {
        if !(32..=48).contains(&ipa_bits) {
            return Err(MapError::UnsupportedAddressBits(ipa_bits));
        }
        Ok(Self {
            table: PageTable::new(mem, ipa_bits)?,
        })
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.table.root()
    }

    pub fn ipa_bits(&self) -> u32 {
        self.table.address_bits()
    }

    /// The lookup level of the root table (0 or 1).
    pub fn start_level(&self) -> u32 {
        self.table.start_level()
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)`: 4 KiB aligned, nothing mapped there
    /// yet. Uses 1 GiB and 2 MiB blocks wherever IPA, PA and size line up.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        pa: u64,
        size: u64,
        attr: S2Attr,
    ) -> Result<(), MapError> {
        self.table.map(mem, ipa, pa, size, attr.bits())
    }

    /// [`Stage2::map`] with 4 KiB pages only. Guest RAM is mapped this way: QEMU's TLB
    /// records a two-stage translation at the *larger* of the two page sizes, so with
    /// stage-2 blocks every guest entry counts as a large page and each page-granular
    /// `TLBI` the guest issues flushes QEMU's whole TLB (see docs/PERFORMANCE.md).
    pub fn map_pages(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        pa: u64,
        size: u64,
        attr: S2Attr,
    ) -> Result<(), MapError> {
        self.table.map_pages(mem, ipa, pa, size, attr.bits())
    }

    /// Unmaps `[ipa, ipa + size)` (holes are fine) and returns the IPA ranges that were
    /// mapped: `hyp` must `TLBI IPAS2E1IS` them for this VM's VMID (then `TLBI VMALLE1IS`,
    /// as stage-1 entries may combine them) before the frames are reused. Refuses with
    /// [`MapError::PartialBlock`] if the range cuts a block, changing nothing.
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        size: u64,
    ) -> Result<Vec<Region>, MapError> {
        self.table.unmap(mem, ipa, size)
    }

    /// Frees every table frame, the root included, and returns how many. Only after the
    /// tables are no longer installed on any CPU and the VM's VMID was invalidated
    /// ([`crate::mem::VmidAllocator::free`] does that); the guest pages they mapped are
    /// not touched.
    pub fn destroy(self, mem: &mut impl TableMemory) -> usize {
        self.table.destroy(mem)
    }

    /// The PA and attributes `ipa` translates to, if mapped.
    pub fn translate(&self, mem: &impl TableMemory, ipa: u64) -> Option<(u64, S2Attr)> {
        self.table
            .lookup(mem, ipa)
            .map(|(pa, bits)| (pa, S2Attr::from_bits(bits)))
    }

    /// `VTCR_EL2` for these tables on a CPU with a `pa_range_bits` physical address
    /// range (from ID_AA64MMFR0_EL1.PARange) and VMIDs `vmids` wide (VS set for 16 bits:
    /// the allocator's width and VS come from the same [`VmidBits`]). The IPA size must
    /// not exceed the PA range: choose `ipa_bits` accordingly.
    pub fn vtcr(&self, pa_range_bits: u32, vmids: VmidBits) -> Vtcr {
        let t0sz = u64::from(64 - self.ipa_bits());
        // SL0 for a 4 KiB granule: 0 = level 2, 1 = level 1, 2 = level 0.
        let sl0 = u64::from(2 - self.start_level());
        Vtcr(
            VTCR_RES1
                | (t0sz << VTCR_T0SZ_SHIFT)
                | (sl0 << VTCR_SL0_SHIFT)
                | VTCR_IRGN0_WBWA
                | VTCR_ORGN0_WBWA
                | VTCR_SH0_INNER
                | VTCR_TG0_4K
                | (pa_range_encoding(pa_range_bits) << VTCR_PS_SHIFT)
                | vmids.vtcr_vs(),
        )
    }

    /// `VTTBR_EL2` for these tables under VMID `vmid`: root table address (BADDR) and
    /// VMID. CnP is left clear.
    pub fn vttbr(&self, vmid: Vmid) -> Vttbr {
        self.vttbr_raw(vmid.get())
    }

    /// `VTTBR_EL2` for these tables under VMID 0, which is never handed out: for tables
    /// that map nothing, installed on a CPU that runs no vCPU (`hyp`'s idle stage 2).
    pub fn idle_vttbr(&self) -> Vttbr {
        self.vttbr_raw(0)
    }

    fn vttbr_raw(&self, vmid: u16) -> Vttbr {
        Vttbr((u64::from(vmid) << VTTBR_VMID_SHIFT) | self.root())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::fake::FakeMem;
    use crate::mem::pgtable::{DESC_ADDR_MASK, DESC_VALID};
    use crate::mem::TableMemory;
    use proptest::prelude::*;

    const K4: u64 = 0x1000;
    const M2: u64 = 0x20_0000;
    const G1: u64 = 0x4000_0000;
    const RO: S2Attr = S2Attr::Normal {
        read: true,
        write: false,
        exec: false,
    };

    fn s2(bits: u32) -> (FakeMem, Stage2) {
        let mut m = FakeMem::new();
        let s = Stage2::new(&mut m, bits).unwrap();
        (m, s)
    }

    #[test]
    fn one_gib_aligned_is_a_single_l1_block() {
        let (mut m, mut s) = s2(39);
        s.map(&mut m, G1, 2 * G1, G1, S2Attr::RAM).unwrap();
        assert_eq!(m.tables(), 1, "only the root table");
        let d = m.read(s.root(), 1);
        assert_eq!(d & 0b11, 0b01, "block descriptor");
        assert_eq!(d & DESC_ADDR_MASK, 2 * G1);
        assert_eq!(
            s.translate(&m, G1 + 0x1234_5678),
            Some((2 * G1 + 0x1234_5678, S2Attr::RAM))
        );
        assert_eq!(s.translate(&m, G1 - 1), None);
        assert_eq!(s.translate(&m, 2 * G1), None);

        // With a level-0 root the block sits one table down.
        let (mut m, mut s) = s2(40);
        s.map(&mut m, G1, 2 * G1, G1, S2Attr::RAM).unwrap();
        assert_eq!(m.tables(), 2);
    }

    #[test]
    fn map_pages_uses_no_blocks_even_when_aligned() {
        let (mut m, mut s) = s2(39);
        // 4 MiB, 1 GiB-aligned on both sides: two L3 tables under one L2 and one L1.
        s.map_pages(&mut m, G1, 2 * G1, 2 * M2, S2Attr::RAM)
            .unwrap();
        assert_eq!(m.tables(), 4);
        for off in [0, K4, M2 - K4, M2, 2 * M2 - K4] {
            assert_eq!(s.translate(&m, G1 + off), Some((2 * G1 + off, S2Attr::RAM)));
        }
        assert_eq!(s.translate(&m, G1 + 2 * M2), None);
        // Overlaps are refused as with `map`, and unmapping gives the range back.
        assert!(s.map_pages(&mut m, G1 + M2, 0, K4, S2Attr::RAM).is_err());
        assert_eq!(
            s.unmap(&mut m, G1, 2 * M2).unwrap(),
            vec![Region::new(G1, 2 * M2)]
        );
    }

    #[test]
    fn two_mib_blocks_and_page_tails() {
        let (mut m, mut s) = s2(39);
        // 1 GiB-aligned IPA but only 2 MiB-aligned PA: 512 L2 blocks, no L3 table.
        s.map(&mut m, G1, 3 * M2, G1, S2Attr::RAM).unwrap();
        assert_eq!(m.tables(), 2);
        // 2 MiB + 4 KiB: one block and one page (plus a new L3 table).
        s.map(&mut m, 4 * G1, 4 * G1, M2 + K4, S2Attr::Device)
            .unwrap();
        assert_eq!(m.tables(), 4);
        assert_eq!(
            s.translate(&m, 4 * G1 + M2),
            Some((4 * G1 + M2, S2Attr::Device))
        );
        // Misaligned by a page relative to each other: pages only.
        s.map(&mut m, 5 * G1, 6 * G1 + K4, M2, RO).unwrap();
        assert_eq!(m.tables(), 6);
        assert_eq!(
            s.translate(&m, 5 * G1 + 0x10),
            Some((6 * G1 + K4 + 0x10, RO))
        );
    }

    #[test]
    fn descriptor_bits() {
        assert_eq!(
            S2Attr::RAM.bits(),
            0b1111 << 2 | 0b11 << 6 | 0b11 << 8 | 1 << 10
        );
        assert_eq!(
            RO.bits(),
            0b1111 << 2 | 0b01 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54
        );
        assert_eq!(
            S2Attr::Device.bits(),
            0b0001 << 2 | 0b11 << 6 | 1 << 10 | 1 << 54
        );
        let (mut m, mut s) = s2(39);
        s.map(&mut m, 0, 0x9000_0000, K4, S2Attr::Device).unwrap();
        let l2 = m.read(s.root(), 0) & DESC_ADDR_MASK;
        let l3 = m.read(l2, 0) & DESC_ADDR_MASK;
        assert_eq!(m.read(l3, 0), 0x9000_0000 | S2Attr::Device.bits() | 0b11);
        for (r, w, x) in [
            (false, false, false),
            (true, true, false),
            (false, true, true),
        ] {
            let a = S2Attr::Normal {
                read: r,
                write: w,
                exec: x,
            };
            assert_eq!(S2Attr::from_bits(a.bits()), a);
        }
    }

    #[test]
    fn refuses_overlap_and_misalignment() {
        let (mut m, mut s) = s2(40);
        s.map(&mut m, G1, 0, M2, S2Attr::RAM).unwrap();
        let tables = m.tables();
        assert_eq!(
            s.map(&mut m, G1 + M2 - K4, 0x100_0000, 2 * K4, S2Attr::RAM),
            Err(MapError::AlreadyMapped { addr: G1 + M2 - K4 })
        );
        assert_eq!(
            s.map(&mut m, 0, 0, 2 * G1, S2Attr::RAM),
            Err(MapError::AlreadyMapped { addr: G1 })
        );
        assert_eq!(m.tables(), tables, "a refused map allocates nothing");
        assert_eq!(s.translate(&m, 0), None, "and maps nothing");
        assert_eq!(
            s.map(&mut m, 0x800, 0, K4, S2Attr::RAM),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            s.map(&mut m, 0, 0x800, K4, S2Attr::RAM),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            s.map(&mut m, 0, 0, 0x800, S2Attr::RAM),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            s.map(&mut m, 1 << 40, 0, K4, S2Attr::RAM),
            Err(MapError::OutOfRange)
        );
        assert_eq!(s.map(&mut m, 0, 0, 0, S2Attr::RAM), Ok(()));
        assert_eq!(
            Stage2::new(&mut m, 31),
            Err(MapError::UnsupportedAddressBits(31))
        );
        assert_eq!(
            Stage2::new(&mut m, 49),
            Err(MapError::UnsupportedAddressBits(49))
        );
    }

    #[test]
    fn unmap_pages_keeps_neighbours() {
        let (mut m, mut s) = s2(39);
        s.map(&mut m, 0x4000_0000, 0x8000_1000, 16 * K4, S2Attr::RAM)
            .unwrap();
        let r = s.unmap(&mut m, 0x4000_4000, 4 * K4).unwrap();
        assert_eq!(r, vec![Region::new(0x4000_4000, 4 * K4)]);
        assert_eq!(
            s.translate(&m, 0x4000_3fff),
            Some((0x8000_4fff, S2Attr::RAM))
        );
        assert_eq!(s.translate(&m, 0x4000_4000), None);
        assert_eq!(
            s.translate(&m, 0x4000_8000),
            Some((0x8000_9000, S2Attr::RAM))
        );
        // Unmapping across holes reports only what was mapped, merged.
        let r = s.unmap(&mut m, 0x3fff_0000, 0x10_0000).unwrap();
        assert_eq!(
            r,
            vec![
                Region::new(0x4000_0000, 4 * K4),
                Region::new(0x4000_8000, 8 * K4)
            ]
        );
        assert_eq!(s.unmap(&mut m, 0, G1).unwrap(), vec![]);
        // The range can be mapped again (tables are reused).
        let t = m.tables();
        s.map(&mut m, 0x4000_0000, 0, 16 * K4, S2Attr::Device)
            .unwrap();
        assert_eq!(m.tables(), t);
    }

    #[test]
    fn unmap_refuses_to_split_blocks() {
        let (mut m, mut s) = s2(39);
        s.map(&mut m, G1, G1, G1 + M2, S2Attr::RAM).unwrap();
        assert_eq!(
            s.unmap(&mut m, G1, K4),
            Err(MapError::PartialBlock { addr: G1 })
        );
        // A range that would first remove the L2 block, then hit the 1 GiB block partly:
        // refused before anything changes.
        assert_eq!(
            s.unmap(&mut m, G1 + G1 / 2, G1),
            Err(MapError::PartialBlock { addr: G1 })
        );
        assert!(s.translate(&m, 2 * G1).is_some());
        assert_eq!(
            s.unmap(&mut m, 2 * G1, K4),
            Err(MapError::PartialBlock { addr: 2 * G1 })
        );
        // Whole blocks go, and come back as one merged range.
        assert_eq!(
            s.unmap(&mut m, G1, G1 + M2).unwrap(),
            vec![Region::new(G1, G1 + M2)]
        );
        assert_eq!(s.translate(&m, G1), None);
    }

    #[test]
    fn vtcr_and_vttbr_fields() {
        let (_, s39) = s2(39);
        let v = s39.vtcr(40, VmidBits::Eight).bits();
        assert_eq!(v & 0x3f, 25, "T0SZ");
        assert_eq!((v >> 6) & 3, 1, "SL0: start at level 1");
        assert_eq!((v >> 8) & 3, 1, "IRGN0 WBWA");
        assert_eq!((v >> 10) & 3, 1, "ORGN0 WBWA");
        assert_eq!((v >> 12) & 3, 3, "SH0 inner");
        assert_eq!((v >> 14) & 3, 0, "TG0 4K");
        assert_eq!((v >> 16) & 7, 2, "PS 40 bits");
        assert_eq!(v >> 31 & 1, 1, "RES1");
        assert_eq!(v & VTCR_EL2_VS, 0);
        assert_eq!(v, 0x8002_3559);
        assert_eq!(s39.vtcr(40, VmidBits::Sixteen).bits(), v | VTCR_EL2_VS);

        let (_, s40) = s2(40);
        let v = s40.vtcr(48, VmidBits::Eight).bits();
        assert_eq!((v & 0x3f, (v >> 6) & 3, (v >> 16) & 7), (24, 2, 5));
        let (_, s48) = s2(48);
        let v = s48.vtcr(44, VmidBits::Eight).bits();
        assert_eq!((v & 0x3f, (v >> 16) & 7), (16, 4));
        let (_, s32) = s2(32);
        let v = s32.vtcr(32, VmidBits::Eight).bits();
        assert_eq!((v & 0x3f, (v >> 6) & 3), (32, 1));

        let t = s40.vttbr(Vmid::for_test(0x1234)).bits();
        assert_eq!(t >> 48, 0x1234);
        assert_eq!(t & ((1 << 48) - 1), s40.root());
        assert_eq!(t & 1, 0, "CnP clear");
        let idle = s40.idle_vttbr().bits();
        assert_eq!(idle, s40.root(), "VMID 0, CnP clear");

        let cell = AtomicVttbr::new(s40.idle_vttbr());
        cell.store(s39.vttbr(Vmid::for_test(7)), Ordering::Relaxed);
        assert_eq!(cell.load(Ordering::Relaxed), s39.vttbr(Vmid::for_test(7)));
    }

    /// One mapping of a reference model: IPA range → PA, attributes.
    #[derive(Clone, Debug)]
    struct M {
        ipa: u64,
        pa: u64,
        size: u64,
        attr: S2Attr,
    }

    fn attr() -> impl Strategy<Value = S2Attr> {
        prop_oneof![
            Just(S2Attr::Device),
            (any::<bool>(), any::<bool>(), any::<bool>())
                .prop_map(|(read, write, exec)| S2Attr::Normal { read, write, exec }),
        ]
    }

    /// Mappings whose IPA, PA and size are often 1 GiB or 2 MiB aligned, sometimes off
    /// by a smaller unit. Units above 4 KiB are offset by 1/512 of themselves at most, so
    /// the number of 4 KiB pages stays small.
    fn mapping() -> impl Strategy<Value = M> {
        (
            0usize..3,
            0u64..48,
            0u64..1024,
            1u64..3,
            0u64..3,
            0u64..3,
            0u64..3,
            attr(),
        )
            .prop_map(|(u, ii, pi, n, io, po, so, attr)| {
                let unit = [K4, M2, G1][u];
                let sub = if unit == K4 { K4 } else { unit / 512 };
                let sub_pa = if unit == G1 { M2 } else { sub };
                M {
                    ipa: ii * unit + io * sub,
                    pa: pi * unit + po * sub_pa,
                    size: n * unit + so * sub,
                    attr,
                }
            })
    }

    fn model_lookup(model: &[M], ipa: u64) -> Option<(u64, S2Attr)> {
        model
            .iter()
            .find(|m| ipa >= m.ipa && ipa < m.ipa + m.size)
            .map(|m| (m.pa + (ipa - m.ipa), m.attr))
    }

    /// Addresses worth probing: every mapping's edges and middle, and just outside.
    fn probes(model: &[M]) -> Vec<u64> {
        let mut p = Vec::new();
        for m in model {
            for a in [
                m.ipa,
                m.ipa + m.size / 2 + 0x123,
                m.ipa + m.size - 1,
                m.ipa + m.size,
            ] {
                p.push(a);
            }
            p.push(m.ipa.wrapping_sub(1));
        }
        p
    }

    fn build(maps: Vec<M>) -> (FakeMem, Stage2, Vec<M>) {
        let (mut mem, mut s) = s2(40);
        let mut model: Vec<M> = Vec::new();
        for m in maps {
            let overlaps = model
                .iter()
                .any(|o| m.ipa < o.ipa + o.size && o.ipa < m.ipa + m.size);
            let r = s.map(&mut mem, m.ipa, m.pa, m.size, m.attr);
            if overlaps {
                assert!(matches!(r, Err(MapError::AlreadyMapped { .. })), "{r:?}");
            } else {
                assert_eq!(r, Ok(()));
                model.push(m);
            }
        }
        (mem, s, model)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn translate_matches_model(maps in prop::collection::vec(mapping(), 1..8), extra in prop::collection::vec(0u64..(64 * G1), 16)) {
            let (mem, s, model) = build(maps);
            for a in probes(&model).into_iter().chain(extra) {
                prop_assert_eq!(s.translate(&mem, a), model_lookup(&model, a), "ipa {:#x}", a);
            }
        }

        #[test]
        fn unmap_leaves_the_rest(maps in prop::collection::vec(mapping(), 2..8), pick in any::<prop::sample::Index>()) {
            let (mut mem, mut s, mut model) = build(maps);
            let gone = model.remove(pick.index(model.len()));
            let ranges = s.unmap(&mut mem, gone.ipa, gone.size).unwrap();
            prop_assert_eq!(ranges, vec![Region::new(gone.ipa, gone.size)]);
            let mut all = model.clone();
            all.push(gone.clone());
            for a in probes(&all) {
                prop_assert_eq!(s.translate(&mem, a), model_lookup(&model, a), "ipa {:#x}", a);
            }
            // And it can be mapped again, identically.
            s.map(&mut mem, gone.ipa, gone.pa, gone.size, gone.attr).unwrap();
            prop_assert_eq!(s.translate(&mem, gone.ipa), Some((gone.pa, gone.attr)));
        }

        #[test]
        fn block_counts_are_minimal(u in 0usize..2, n in 1u64..4) {
            // An aligned mapping of n blocks of 1 GiB (or 2 MiB) uses exactly n valid
            // descriptors at that level: nothing is mapped with smaller pieces.
            let unit = [G1, M2][u];
            let (mut mem, mut s) = s2(39);
            s.map(&mut mem, 4 * G1, 8 * G1, n * unit, S2Attr::RAM).unwrap();
            let table = if unit == G1 { s.root() } else { mem.read(s.root(), 4) & DESC_ADDR_MASK };
            let first = if unit == G1 { 4 } else { 0 };
            let valid: Vec<_> = (0..512).map(|i| mem.read(table, i)).filter(|d| d & DESC_VALID != 0).collect();
            prop_assert_eq!(valid.len() as u64, n);
            prop_assert!(valid.iter().all(|d| d & 0b11 == 0b01));
            prop_assert_eq!(mem.read(table, first) & DESC_ADDR_MASK, 8 * G1);
        }
    }

    proptest! {
        /// Destroying a stage 2 gives back every table frame it ever allocated, however
        /// it was mapped and unmapped.
        #[test]
        fn destroy_frees_every_table(
            ranges in prop::collection::vec((0u64..1 << 12, 1u64..1 << 10, any::<bool>()), 1..12),
            unmap in prop::collection::vec((0u64..1 << 12, 1u64..1 << 10), 0..4),
            bits in 32u32..=48,
        ) {
            let (mut m, mut s) = s2(bits);
            for (page, pages, pages_only) in ranges {
                let (ipa, size) = (page * 0x8_0000, pages * K4);
                let _ = if pages_only {
                    s.map_pages(&mut m, ipa, 0x8000_0000 + ipa, size, RO)
                } else {
                    s.map(&mut m, ipa, 0x8000_0000 + ipa, size, RO)
                };
            }
            for (page, pages) in unmap {
                let _ = s.unmap(&mut m, page * 0x8_0000, pages * K4);
            }
            let tables = m.tables();
            prop_assert_eq!(s.destroy(&mut m), tables);
            prop_assert_eq!(m.tables(), 0);
        }
    }
}
