//! A VM's memory as one run-time object: its RAM, its stage-2 tables and its VMID,
//! created together and destroyed together, with every frame accounted for.
//!
//! [`VmMemory::create`] takes RAM from the machine's frame allocator, records it as the
//! VM's in the [`PageOwnership`] record, scrubs it, builds the stage-2 tables mapping
//! it at the VM's IPA and allocates a VMID; any failure undoes what was done, so a
//! refused create leaks nothing. [`VmMemory::destroy`] is the reverse: the VMID is
//! freed (which invalidates its TLB entries on every CPU before it can be reused), the
//! table frames go back, the RAM is scrubbed (the next owner must not see this VM's
//! data) and given back to the record and the allocator. A property test checks that
//! any sequence of creates and destroys hands back every frame, tables included.
//!
//! Physical memory is reached through [`PhysMemory`] (`hyp`: the frame allocator over
//! its identity map; tests: a fake that tracks every frame and every scrub).
//!
//! A VM's RAM is one contiguous block, mapped with 4 KiB pages (see
//! [`Stage2::map_pages`] for why). Later, memory lent or shared by a manager VM will be
//! mapped into and out of these same tables, with the record deciding what may be.

use super::{
    GuestRam, MapError, Owner, OwnershipError, PageOwnership, S2Attr, Stage2, TableMemory, Vmid,
    VmidAllocator, Vttbr,
};
use crate::arch::Arch;
use crate::Region;
use core::fmt;

/// Physical memory for VMs: table frames ([`TableMemory`]) and RAM blocks.
pub trait PhysMemory: TableMemory {
    /// `size` bytes of free physical memory aligned to `align`; not zeroed.
    fn alloc_ram(&mut self, size: u64, align: u64) -> Option<u64>;
    /// Gives back a block [`PhysMemory::alloc_ram`] returned.
    fn free_ram(&mut self, block: Region);
    /// Zeroes `block`, visibly to a guest that starts with its caches off (`hyp`
    /// cleans the lines to the point of coherency).
    fn scrub(&mut self, block: Region);
}

/// The shape of a VM's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmMemorySpec {
    /// Guest RAM in IPA space (4 KiB aligned).
    pub ram: Region,
    /// Alignment of the physical RAM block (a power of two, at least 4 KiB).
    pub ram_align: u64,
    /// IPA space size of the stage-2 tables.
    pub ipa_bits: u32,
}

/// Why [`VmMemory::create`] refused; nothing was allocated or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// No free block of this many bytes is left.
    NoRam(u64),
    /// Every VMID is in use.
    NoVmid,
    /// Building the stage-2 tables failed (out of table frames, or a bad shape).
    Tables(MapError),
    /// The ownership record refused the RAM block (a hypervisor bug: the allocator
    /// and the record disagree).
    Ownership(OwnershipError),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::NoRam(size) => write!(
                f,
                "no {} MiB block of free memory left for its RAM",
                size >> 20
            ),
            CreateError::NoVmid => write!(f, "no VMID left"),
            CreateError::Tables(e) => write!(f, "stage-2 tables: {e}"),
            CreateError::Ownership(e) => write!(f, "memory ownership: {e:?}"),
        }
    }
}

/// A VM's RAM, stage-2 tables and VMID.
#[derive(Debug, PartialEq, Eq)]
pub struct VmMemory {
    owner: Owner,
    spec: VmMemorySpec,
    ram_pa: u64,
    stage2: Stage2,
    vmid: Vmid,
}

/// What [`VmMemory::destroy`] gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destroyed {
    /// The RAM block (physical).
    pub ram: Region,
    /// Stage-2 table frames freed.
    pub tables: usize,
}

impl VmMemory {
    /// Builds `owner`'s memory as `spec` says. All or nothing. The VMID it gets is
    /// invalidated as it is handed out (as well as when it was freed): a CPU that was
    /// still leaving the VM that had it may have refilled TLB entries for it since.
    pub fn create(
        owner: Owner,
        spec: VmMemorySpec,
        mem: &mut impl PhysMemory,
        owners: &mut PageOwnership,
        vmids: &mut VmidAllocator,
        arch: &mut impl Arch,
    ) -> Result<Self, CreateError> {
        let vmid = vmids.alloc().ok_or(CreateError::NoVmid)?;
        let created = Self::create_with(owner, spec, vmid, None, mem, owners, arch);
        if created.is_err() {
            // Allocated a moment ago: freeing it cannot be refused.
            let _ = vmids.free(vmid, arch);
        }
        created
    }

    /// [`VmMemory::create`] with a VMID the caller allocated (and keeps if this fails).
    /// `zeroed`: a free block the caller scrubbed a moment ago and nobody has written
    /// since (the same locks held throughout); RAM that falls wholly inside it is not
    /// scrubbed again.
    fn create_with(
        owner: Owner,
        spec: VmMemorySpec,
        vmid: Vmid,
        zeroed: Option<Region>,
        mem: &mut impl PhysMemory,
        owners: &mut PageOwnership,
        arch: &mut impl Arch,
    ) -> Result<Self, CreateError> {
        let size = spec.ram.size;
        let ram_pa = mem
            .alloc_ram(size, spec.ram_align)
            .ok_or(CreateError::NoRam(size))?;
        let block = Region::new(ram_pa, size);
        if let Err(e) = owners.assign(block, owner) {
            mem.free_ram(block);
            return Err(CreateError::Ownership(e));
        }
        let undo_ram = |mem: &mut dyn FnMut(Region), owners: &mut PageOwnership| {
            // Assigned a moment ago and never lent: release cannot be refused.
            let _ = owners.release(block, owner);
            mem(block);
        };
        if !zeroed.is_some_and(|z| z.contains_range(block.base, block.size)) {
            mem.scrub(block);
        }
        let mut stage2 = match Stage2::new(mem, spec.ipa_bits) {
            Ok(s) => s,
            Err(e) => {
                undo_ram(&mut |b| mem.free_ram(b), owners);
                return Err(CreateError::Tables(e));
            }
        };
        let attr = S2Attr::Normal {
            read: true,
            write: true,
            exec: true,
        };
        if let Err(e) = stage2.map_pages(mem, spec.ram.base, ram_pa, size, attr) {
            // Never installed: no TLB can hold these tables' translations.
            stage2.destroy(mem);
            undo_ram(&mut |b| mem.free_ram(b), owners);
            return Err(CreateError::Tables(e));
        }
        arch.tlbi_vmid(vmid);
        Ok(Self {
            owner,
            spec,
            ram_pa,
            stage2,
            vmid,
        })
    }

    /// The same memory afresh (a VM restarting): a new VMID, then everything of this
    /// one given back (as [`VmMemory::destroy`]), then RAM and tables built again (RAM
    /// that lands where the old RAM was is not scrubbed a second time). `scrubbed`: the
    /// caller has zeroed this VM's RAM already (in pieces, [`super::scrub`]) and nothing
    /// has written it since, so the old RAM is not scrubbed again either. The
    /// new VMID is taken first so the old one is not handed straight back: a CPU still
    /// leaving the VM may refill TLB entries for the old VMID. Preconditions as for
    /// `destroy`. If no VMID is left, `self` comes back untouched with the error; if
    /// building fails after the old memory is gone (it cannot for lack of memory: the
    /// same amount was just freed), the error comes alone.
    // The memory comes back in the error when nothing was changed; called once per
    // restart, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn rebuild(
        self,
        scrubbed: bool,
        mem: &mut impl PhysMemory,
        owners: &mut PageOwnership,
        vmids: &mut VmidAllocator,
        arch: &mut impl Arch,
    ) -> Result<Self, (Option<Self>, CreateError)> {
        let Some(vmid) = vmids.alloc() else {
            return Err((Some(self), CreateError::NoVmid));
        };
        let (owner, spec) = (self.owner, self.spec);
        let freed = match self.destroy_with(scrubbed, mem, owners, vmids, arch) {
            Ok(freed) => freed,
            Err(e) => {
                let _ = vmids.free(vmid, arch);
                return Err((None, CreateError::Ownership(e)));
            }
        };
        // `destroy` scrubbed the old RAM, and the allocator mostly hands the same block
        // back: scrubbing it again would double a restart's longest step.
        let created = Self::create_with(owner, spec, vmid, Some(freed.ram), mem, owners, arch);
        if created.is_err() {
            let _ = vmids.free(vmid, arch);
        }
        created.map_err(|e| (None, e))
    }

    /// Gives everything back. The caller guarantees no CPU can still translate through
    /// these tables: every vCPU of the VM has stopped and no CPU has its `VTTBR_EL2`
    /// loaded (a loaded VTTBR may be walked speculatively).
    ///
    /// If part of the RAM is still lent or shared (to or from another VM), the
    /// ownership record refuses to release it: the RAM block is then kept out of the
    /// allocator (scrubbed, but not reused) and the refusal returned, since handing
    /// out pages another VM may still map would break isolation.
    pub fn destroy(
        self,
        mem: &mut impl PhysMemory,
        owners: &mut PageOwnership,
        vmids: &mut VmidAllocator,
        arch: &mut impl Arch,
    ) -> Result<Destroyed, OwnershipError> {
        self.destroy_with(false, mem, owners, vmids, arch)
    }

    /// [`VmMemory::destroy`], skipping the scrub of RAM the caller has zeroed already.
    fn destroy_with(
        self,
        scrubbed: bool,
        mem: &mut impl PhysMemory,
        owners: &mut PageOwnership,
        vmids: &mut VmidAllocator,
        arch: &mut impl Arch,
    ) -> Result<Destroyed, OwnershipError> {
        // Allocated by `create` and freed only here: cannot be refused.
        let _ = vmids.free(self.vmid, arch);
        let tables = self.stage2.destroy(mem);
        let ram = Region::new(self.ram_pa, self.spec.ram.size);
        if !scrubbed {
            mem.scrub(ram);
        }
        owners.release(ram, self.owner)?;
        mem.free_ram(ram);
        Ok(Destroyed { ram, tables })
    }

    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Guest RAM in IPA space.
    pub fn ram_ipa(&self) -> Region {
        self.spec.ram
    }

    /// Where guest RAM starts physically.
    pub fn ram_pa(&self) -> u64 {
        self.ram_pa
    }

    /// The RAM, for checked access to guest addresses.
    pub fn guest_ram(&self) -> GuestRam {
        GuestRam::new(self.spec.ram, self.ram_pa)
    }

    pub fn stage2(&self) -> &Stage2 {
        &self.stage2
    }

    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// `VTTBR_EL2` for this VM: its own stage-2 root and VMID.
    pub fn vttbr(&self) -> Vttbr {
        self.stage2.vttbr(self.vmid)
    }
}

#[cfg(test)]
mod tests;
