//! EL2's own translation (an identity map), the stage-2 table memory, and which
//! stage 2 a CPU translates guests through.
//!
//! Table *layout* is decided in bothy_core::mem; this file supplies the
//! physical memory the tables live in and flips the system registers. Outside `arch`
//! those registers take only values the table builders made: an [`El2Map`] for
//! EL2's own (built here, from Bothy's allocator), a `Vttbr`/`Vtcr` for a guest's
//! (made only by `bothy_core::mem::Stage2` from its own root and VMID).

use super::sysreg::*;
use super::{entry, mmio};
use alloc::vec::Vec;
use bothy_core::arch::Arch;
use bothy_core::mem::{
    build_el2_idmap, CreateError, Destroyed, MapError, Owner, OwnershipError, PageOwnership,
    PhysMemory, RegionAllocator, Stage2, TableMemory, VmMemory, VmMemorySpec, VmidAllocator, Vtcr,
    Vttbr,
};
use bothy_core::Region;

const PAGE: u64 = 4096;

/// Page-table frames and guest RAM drawn from the frame allocator; VA == PA under
/// Bothy's identity map, and before the MMU is on. Its `TableMemory` and `PhysMemory`
/// methods read, write and scrub whatever physical address they are given, so it never
/// leaves this file: outside, the functions below build and take apart tables and VM
/// memory with one.
struct Frames<'a> {
    allocator: &'a mut RegionAllocator,
    /// Tables written before the MMU is on bypass the caches: invalidate each
    /// new frame so no stale line shadows it when the walker reads through caches.
    mmu_off: bool,
}

impl<'a> Frames<'a> {
    /// With the MMU (and caches) on.
    fn new(allocator: &'a mut RegionAllocator) -> Self {
        Frames {
            allocator,
            mmu_off: false,
        }
    }
}

/// `VmMemory::create` for `owner`, in memory from `allocator`.
pub fn create_vm_memory(
    owner: Owner,
    spec: VmMemorySpec,
    allocator: &mut RegionAllocator,
    owners: &mut PageOwnership,
    vmids: &mut VmidAllocator,
    arch: &mut impl Arch,
) -> Result<VmMemory, CreateError> {
    VmMemory::create(
        owner,
        spec,
        &mut Frames::new(allocator),
        owners,
        vmids,
        arch,
    )
}

/// `VmMemory::rebuild` (a VM restarting), in memory from `allocator`. As for
/// [`destroy_vm_memory`], no CPU may have the VM's stage 2 installed.
// As `VmMemory::rebuild`: the memory comes back in the error when nothing changed.
#[allow(clippy::result_large_err)]
pub fn rebuild_vm_memory(
    memory: VmMemory,
    scrubbed: bool,
    allocator: &mut RegionAllocator,
    owners: &mut PageOwnership,
    vmids: &mut VmidAllocator,
    arch: &mut impl Arch,
) -> Result<VmMemory, (Option<VmMemory>, CreateError)> {
    memory.rebuild(scrubbed, &mut Frames::new(allocator), owners, vmids, arch)
}

/// `VmMemory::destroy`: the VM's RAM, tables and VMID back to `allocator` and `vmids`.
/// No CPU may have the VM's stage 2 installed (its VTTBR parked everywhere: see
/// `exit.rs`), or a walk could read a freed table.
pub fn destroy_vm_memory(
    memory: VmMemory,
    allocator: &mut RegionAllocator,
    owners: &mut PageOwnership,
    vmids: &mut VmidAllocator,
    arch: &mut impl Arch,
) -> Result<Destroyed, OwnershipError> {
    memory.destroy(&mut Frames::new(allocator), owners, vmids, arch)
}

/// An idle CPU's stage 2: empty tables for an `ipa_bits` IPA space under VMID 0 (never
/// handed out), so nothing translates while no vCPU runs.
pub fn idle_stage2(allocator: &mut RegionAllocator, ipa_bits: u32) -> Result<Vttbr, MapError> {
    Ok(Stage2::new(&mut Frames::new(allocator), ipa_bits)?.idle_vttbr())
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

/// Zero `piece` of a VM's RAM (and clean it to the point of coherency, as a scrub does),
/// if it lies in `memory`'s RAM block, which Bothy's allocator handed out for the VM
/// (`restart.rs` scrubs a restarting VM's RAM this way, a piece at a time, with none of
/// its vCPUs running).
pub fn scrub_vm_ram(memory: &VmMemory, piece: Region) {
    let ram = Region::new(memory.ram_pa(), memory.ram_ipa().size);
    if ram.contains_range(piece.base, piece.size) {
        mmio::zero_phys(piece.base, piece.size as usize);
        clean_dcache_range(piece.base, piece.size);
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

/// Bothy's EL2 identity map with the TCR_EL2 and MAIR_EL2 that go with it, ready to
/// install on every CPU. Made only by [`build_el2_map`].
#[derive(Clone, Copy, Debug)]
pub struct El2Map {
    root: u64,
    tcr: u64,
    mair: u64,
}

/// Build the EL2 identity map (`bothy_core::mem::build_el2_idmap`) in frames from
/// `allocator`, with the MMU still off: `ram` normal memory, `devices` the MMIO Bothy
/// drives (device memory, never a page of RAM), this image's text read-only and
/// executable, and the guard page below each CPU's stack left out.
pub fn build_el2_map(
    allocator: &mut RegionAllocator,
    ram: &[Region],
    devices: &[Region],
) -> Result<El2Map, MapError> {
    let (image_start, _) = entry::image_bounds();
    let guards: Vec<Region> = entry::stack_layout().guards().collect();
    let map = build_el2_idmap(
        &mut Frames {
            allocator,
            mmu_off: true,
        },
        ram,
        devices,
        Region::new(image_start, entry::text_end() - image_start),
        &guards,
        pa_bits(),
    )?;
    Ok(El2Map {
        root: map.root,
        tcr: map.tcr,
        mair: map.mair,
    })
}

/// Turn on EL2 translation with `map`; identical on every CPU.
pub fn enable(map: &El2Map) {
    write_mair_el2(map.mair);
    write_tcr_el2(map.tcr);
    write_ttbr0_el2(map.root);
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
