//! EL2's own translation (an identity map), the stage-2 table memory, and which
//! stage 2 a CPU translates guests through.
//!
//! Table *layout* is decided in bothy_core::mem; this file supplies the
//! physical memory the tables live in and flips the system registers. A guest's
//! stage-2 registers take only a `Vttbr`/`Vtcr`, which `bothy_core::mem::Stage2` makes
//! from its own root and VMID.

use super::mmio;
use super::sysreg::*;
use bothy_core::mem::{PhysMemory, RegionAllocator, TableMemory, Vtcr, Vttbr};
use bothy_core::Region;

const PAGE: u64 = 4096;

/// Page-table frames drawn from the frame allocator; VA == PA under Bothy's
/// identity map, and before the MMU is on.
pub struct Frames<'a> {
    pub allocator: &'a mut RegionAllocator,
    /// Tables written before the MMU is on bypass the caches: invalidate each
    /// new frame so no stale line shadows it when the walker reads through caches.
    pub mmu_off: bool,
}

impl TableMemory for Frames<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.allocator.alloc(PAGE, PAGE)?;
        mmio::zero_phys(pa, PAGE as usize);
        if self.mmu_off {
            invalidate_dcache_range(pa, PAGE);
        }
        Some(pa)
    }
    fn free_table(&mut self, table_pa: u64) {
        if let Err(e) = self.allocator.release(Region::new(table_pa, PAGE)) {
            crate::fatal(format_args!(
                "table frame {table_pa:#x} given back twice ({e:?})"
            ));
        }
    }
    fn read(&self, table_pa: u64, index: usize) -> u64 {
        mmio::read_table_entry(table_pa, index)
    }
    fn write(&mut self, table_pa: u64, index: usize, value: u64) {
        mmio::write_table_entry(table_pa, index, value)
    }
}

impl PhysMemory for Frames<'_> {
    fn alloc_ram(&mut self, size: u64, align: u64) -> Option<u64> {
        self.allocator.alloc(size, align)
    }
    fn free_ram(&mut self, block: Region) {
        if let Err(e) = self.allocator.release(block) {
            crate::fatal(format_args!(
                "RAM {:#x}+{:#x} given back twice ({e:?})",
                block.base, block.size
            ));
        }
    }
    fn scrub(&mut self, block: Region) {
        mmio::zero_phys(block.base, block.size as usize);
        // A guest starts with its caches off: the zeroes must be in RAM.
        clean_dcache_range(block.base, block.size);
    }
}

/// SCTLR_EL2: RES1 bits plus M (MMU), C (data cache), I (instruction cache), SA (stack alignment).
const SCTLR_EL2_RES1: u64 = 0x30c5_0830;
const SCTLR_M: u64 = 1 << 0;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_SA: u64 = 1 << 3;
const SCTLR_I: u64 = 1 << 12;
/// WXN: a writable page is never executable, whatever its XN bit says (the tables
/// already map only Bothy's read-only text executable; this makes it a hardware rule).
const SCTLR_WXN: u64 = 1 << 19;

/// Turn on EL2 translation with the given tables; identical on every CPU.
pub fn enable(root: u64, tcr: u64, mair: u64) {
    write_mair_el2(mair);
    write_tcr_el2(tcr);
    write_ttbr0_el2(root);
    isb();
    tlbi_all_local();
    write_sctlr_el2(SCTLR_EL2_RES1 | SCTLR_M | SCTLR_C | SCTLR_SA | SCTLR_I | SCTLR_WXN);
    isb();
}

/// Whether this CPU translates guests through `vttbr` now.
#[inline(always)]
pub fn stage2_is(vttbr: Vttbr) -> bool {
    read_vttbr_el2() == vttbr.bits()
}

/// Make `vttbr` this CPU's stage 2 unless it is already.
#[inline(always)]
pub fn use_stage2(vttbr: Vttbr) {
    if !stage2_is(vttbr) {
        write_vttbr_el2(vttbr.bits());
        isb();
    }
}

/// Load a VM's stage 2 (`vtcr`: its tables' geometry) as a vCPU of it is loaded; in
/// effect after the caller's next `isb`, once the rest of the vCPU is loaded too.
#[inline(always)]
pub fn load_stage2(vttbr: Vttbr, vtcr: Vtcr) {
    write_vttbr_el2(vttbr.bits());
    write_vtcr_el2(vtcr.bits());
}

/// The CPU's physical address size in bits (ID_AA64MMFR0_EL1.PARange).
pub fn pa_bits() -> u32 {
    match read_id_aa64mmfr0_el1() & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}
