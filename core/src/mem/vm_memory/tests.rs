//! VM memory created and destroyed over a fake machine that tracks every frame.

use super::*;
use crate::arch::{ArchOp, FakeArch};
use crate::mem::{RegionAllocator, State, VmidBits};
use alloc::vec::Vec;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const POOL: Region = Region::new(0x8000_0000, 64 << 20);
const PAGE: u64 = 0x1000;

/// Physical memory out of one allocator: RAM blocks and table frames alike, so a leak
/// of either shows in the allocator's free list. RAM contents are modelled as "dirty"
/// pages (written by a guest) to check scrubbing.
struct FakePhys {
    alloc: RegionAllocator,
    tables: HashMap<u64, Box<[u64; 512]>>,
    /// Pages holding some VM's data.
    dirty: HashSet<u64>,
    scrubs: Vec<Region>,
}

impl FakePhys {
    fn new() -> Self {
        Self {
            alloc: RegionAllocator::new(&[POOL], &[]),
            tables: HashMap::new(),
            dirty: HashSet::new(),
            scrubs: Vec::new(),
        }
    }

    /// A guest writes every page of its RAM.
    fn dirty(&mut self, block: Region) {
        self.dirty
            .extend((block.base..block.end()).step_by(PAGE as usize));
    }

    fn is_clean(&self, block: Region) -> bool {
        (block.base..block.end())
            .step_by(PAGE as usize)
            .all(|p| !self.dirty.contains(&p))
    }
}

impl TableMemory for FakePhys {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.alloc.alloc(PAGE, PAGE)?;
        self.tables.insert(pa, Box::new([0; 512]));
        Some(pa)
    }
    fn free_table(&mut self, pa: u64) {
        self.tables
            .remove(&pa)
            .expect("free of a table never allocated");
        self.alloc
            .release(Region::new(pa, PAGE))
            .expect("double free");
    }
    fn read(&self, pa: u64, i: usize) -> u64 {
        self.tables[&pa][i]
    }
    fn write(&mut self, pa: u64, i: usize, v: u64) {
        self.tables.get_mut(&pa).expect("write to a freed table")[i] = v;
    }
}

impl PhysMemory for FakePhys {
    fn alloc_ram(&mut self, size: u64, align: u64) -> Option<u64> {
        self.alloc.alloc(size, align)
    }
    fn free_ram(&mut self, block: Region) {
        self.alloc.release(block).expect("double free of RAM");
    }
    fn scrub(&mut self, block: Region) {
        for p in (block.base..block.end()).step_by(PAGE as usize) {
            self.dirty.remove(&p);
        }
        self.scrubs.push(block);
    }
}

struct Machine {
    mem: FakePhys,
    owners: PageOwnership,
    vmids: VmidAllocator,
    arch: FakeArch,
}

impl Machine {
    fn new(bits: VmidBits) -> Self {
        let mut owners = PageOwnership::new();
        owners.add_memory(POOL).unwrap();
        Self {
            mem: FakePhys::new(),
            owners,
            vmids: VmidAllocator::new(bits),
            arch: FakeArch::new(),
        }
    }

    fn create(&mut self, owner: u16, mib: u64) -> Result<VmMemory, CreateError> {
        let spec = VmMemorySpec {
            ram: Region::new(0x4000_0000, mib << 20),
            ram_align: 2 << 20,
            ipa_bits: 39,
        };
        VmMemory::create(
            Owner::Vm(owner),
            spec,
            &mut self.mem,
            &mut self.owners,
            &mut self.vmids,
            &mut self.arch,
        )
    }

    fn destroy(&mut self, vm: VmMemory) -> Destroyed {
        vm.destroy(
            &mut self.mem,
            &mut self.owners,
            &mut self.vmids,
            &mut self.arch,
        )
        .unwrap()
    }
}

#[test]
fn a_created_vm_owns_scrubbed_ram_mapped_at_its_ipa() {
    let mut m = Machine::new(VmidBits::Eight);
    m.mem.dirty(POOL);
    let vm = m.create(3, 8).unwrap();
    let block = Region::new(vm.ram_pa(), 8 << 20);
    assert!(m.mem.is_clean(block), "scrubbed before the VM gets it");
    assert_eq!(
        m.owners.state_of(vm.ram_pa()),
        Some(State::Owned(Owner::Vm(3)))
    );
    let ipa = 0x4000_0000 + 0x12_3000;
    assert_eq!(
        vm.stage2().translate(&m.mem, ipa).map(|(pa, _)| pa),
        Some(vm.ram_pa() + 0x12_3000)
    );
    assert_eq!(vm.stage2().translate(&m.mem, 0x4000_0000 + (8 << 20)), None);
    assert_eq!(vm.vttbr().bits() >> 48, u64::from(vm.vmid().get()));
}

#[test]
fn destroy_scrubs_invalidates_and_gives_back_everything() {
    let mut m = Machine::new(VmidBits::Eight);
    let start = m.mem.alloc.clone();
    let vm = m.create(1, 4).unwrap();
    let (vmid, block) = (vm.vmid(), Region::new(vm.ram_pa(), 4 << 20));
    assert_eq!(
        m.arch.log,
        [ArchOp::TlbiVmid(vmid)],
        "invalidated as handed out"
    );
    m.arch.log.clear();
    m.mem.dirty(block);
    let tables = m.mem.tables.len();
    let done = m.destroy(vm);
    assert_eq!(done, Destroyed { ram: block, tables });
    assert!(
        m.mem.is_clean(block),
        "the next owner must not see its data"
    );
    assert_eq!(m.arch.log, [ArchOp::TlbiVmid(vmid)]);
    assert_eq!(m.mem.alloc, start);
    assert!(m.mem.tables.is_empty());
    assert_eq!(m.owners.state_of(block.base), Some(State::Free));
    assert_eq!(m.vmids.in_use(), 0);
}

#[test]
fn rebuild_gives_fresh_memory_and_a_new_vmid_and_keeps_every_frame() {
    let mut m = Machine::new(VmidBits::Eight);
    let vm = m.create(1, 8).unwrap();
    let (old_vmid, old_block) = (vm.vmid(), Region::new(vm.ram_pa(), 8 << 20));
    m.mem.dirty(old_block);
    let free = m.mem.alloc.free_bytes();
    let tables = m.mem.tables.len();
    m.arch.log.clear();
    let vm = vm
        .rebuild(false, &mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch)
        .unwrap();
    assert_ne!(
        vm.vmid(),
        old_vmid,
        "the old VMID is not handed straight back"
    );
    assert_eq!(
        m.arch.log,
        [ArchOp::TlbiVmid(old_vmid), ArchOp::TlbiVmid(vm.vmid())]
    );
    let block = Region::new(vm.ram_pa(), 8 << 20);
    assert!(m.mem.is_clean(block) && m.mem.is_clean(old_block));
    assert_eq!(m.mem.alloc.free_bytes(), free, "nothing leaked or doubled");
    assert_eq!(m.mem.tables.len(), tables);
    assert_eq!(m.vmids.in_use(), 1);
    assert_eq!(
        m.owners.state_of(block.base),
        Some(State::Owned(Owner::Vm(1)))
    );
    // No VMID left: the memory comes back untouched.
    let mut held = Vec::new();
    while let Some(v) = m.vmids.alloc() {
        held.push(v);
    }
    let (back, e) = vm
        .rebuild(false, &mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch)
        .unwrap_err();
    assert_eq!(e, CreateError::NoVmid);
    assert_eq!(back.map(|v| v.ram_pa()), Some(block.base));
}

#[test]
fn a_rebuild_scrubs_its_ram_once() {
    let mut m = Machine::new(VmidBits::Eight);
    let vm = m.create(1, 8).unwrap();
    let old_block = Region::new(vm.ram_pa(), 8 << 20);
    m.mem.dirty(old_block);
    m.mem.scrubs.clear();
    let vm = vm
        .rebuild(false, &mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch)
        .unwrap();
    let block = Region::new(vm.ram_pa(), 8 << 20);
    assert_eq!(block, old_block, "the allocator hands the same block back");
    assert_eq!(m.mem.scrubs, [old_block], "scrubbed when freed, not again");
    assert!(m.mem.is_clean(block));

    // Scrubbed by the caller already (in pieces): not at all here.
    m.mem.dirty(block);
    m.mem.scrub(block);
    m.mem.scrubs.clear();
    let vm = vm
        .rebuild(true, &mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch)
        .unwrap();
    assert_eq!(Region::new(vm.ram_pa(), 8 << 20), block);
    assert_eq!(m.mem.scrubs, [], "nothing scrubbed twice");
    assert!(m.mem.is_clean(block));
    m.destroy(vm);

    // Only RAM wholly inside the block known to be zero skips its scrub.
    let spec = VmMemorySpec {
        ram: Region::new(0x4000_0000, 2 << 20),
        ram_align: 2 << 20,
        ipa_bits: 39,
    };
    // Where the allocator puts 2 MiB now (it hands the same block out each time).
    let probe = m.create(3, 2).unwrap();
    let pa = probe.ram_pa();
    m.destroy(probe);
    for (zeroed, scrubbed) in [
        (None, true),
        (Some(Region::new(pa, 2 << 20)), false),
        (Some(Region::new(pa - PAGE, 4 << 20)), false),
        (Some(Region::new(pa + PAGE, 2 << 20)), true),
        (Some(Region::new(pa, (2 << 20) - PAGE)), true),
    ] {
        m.mem.scrubs.clear();
        let vmid = m.vmids.alloc().unwrap();
        let vm = VmMemory::create_with(
            Owner::Vm(3),
            spec,
            vmid,
            zeroed,
            &mut m.mem,
            &mut m.owners,
            &mut m.arch,
        )
        .unwrap();
        assert_eq!(vm.ram_pa(), pa);
        assert_eq!(!m.mem.scrubs.is_empty(), scrubbed, "zeroed {zeroed:x?}");
        m.destroy(vm);
    }
}

#[test]
fn a_refused_create_leaves_nothing_behind() {
    let mut m = Machine::new(VmidBits::Eight);
    let start = m.mem.alloc.clone();
    // More RAM than the pool holds.
    assert_eq!(m.create(1, 128), Err(CreateError::NoRam(128 << 20)));
    // A second VM once the first left too little for RAM and tables: refused, and the
    // allocator is as it was.
    let vm = m.create(1, 62).unwrap();
    let before_second = m.mem.alloc.clone();
    assert!(matches!(
        m.create(2, 2),
        Err(CreateError::NoRam(_) | CreateError::Tables(MapError::OutOfMemory))
    ));
    assert_eq!(m.mem.alloc, before_second);
    m.destroy(vm);
    assert_eq!(m.mem.alloc, start);
    // No VMID left: the 8-bit space has 255.
    let mut held = Vec::new();
    while let Some(v) = m.vmids.alloc() {
        held.push(v);
    }
    assert_eq!(m.create(1, 2), Err(CreateError::NoVmid));
    assert_eq!(m.mem.alloc, start);
    assert!(m.mem.tables.is_empty());
    assert_eq!(m.owners.state_of(POOL.base), Some(State::Free));
}

#[test]
fn ram_still_lent_out_is_not_reused() {
    let mut m = Machine::new(VmidBits::Eight);
    let vm = m.create(1, 2).unwrap();
    let page = Region::new(vm.ram_pa(), PAGE);
    m.owners.lend(page, Owner::Vm(1), Owner::Vm(2)).unwrap();
    let block = Region::new(vm.ram_pa(), 2 << 20);
    let free_before = m.mem.alloc.free_bytes();
    let err = vm
        .destroy(&mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch)
        .unwrap_err();
    assert_eq!(err.range.base, page.base);
    // Tables went back; the RAM did not (VM 2 may still map the lent page).
    assert!(m.mem.tables.is_empty());
    assert!(m.mem.alloc.free_bytes() > free_before);
    assert!(m.mem.alloc.free().iter().all(|f| !f.overlaps(&block)));
}

proptest! {
    /// Any sequence of creates and destroys: live VMs' RAM is disjoint and theirs in the
    /// record, each VM's RAM is clean when it gets it, and once all are destroyed every
    /// frame (RAM and tables) is back, every VMID free and invalidated.
    #[test]
    fn create_and_destroy_return_every_frame(
        ops in prop::collection::vec((0u8..3, 1u64..12, any::<prop::sample::Index>()), 1..40),
    ) {
        let mut m = Machine::new(VmidBits::Eight);
        m.mem.dirty(POOL);
        let start = m.mem.alloc.clone();
        let mut live: Vec<VmMemory> = Vec::new();
        let mut next_owner = 0u16;
        for (op, mib, ix) in ops {
            if op == 2 && !live.is_empty() {
                let i = ix.index(live.len());
                let vm = live.swap_remove(i);
                let old = vm.vmid();
                match vm.rebuild(false, &mut m.mem, &mut m.owners, &mut m.vmids, &mut m.arch) {
                    Ok(vm) => {
                        prop_assert_ne!(vm.vmid(), old);
                        let block = Region::new(vm.ram_pa(), vm.ram_ipa().size);
                        prop_assert!(m.mem.is_clean(block));
                        m.mem.dirty(block);
                        live.push(vm);
                    }
                    Err((Some(vm), CreateError::NoVmid)) => live.push(vm),
                    Err((_, e)) => prop_assert!(false, "{e:?}"),
                }
            } else if op == 1 || live.is_empty() {
                next_owner += 1;
                match m.create(next_owner, mib) {
                    Ok(vm) => {
                        let block = Region::new(vm.ram_pa(), mib << 20);
                        prop_assert!(m.mem.is_clean(block));
                        prop_assert!(live.iter().all(|o| !Region::new(o.ram_pa(), o.ram_ipa().size).overlaps(&block)));
                        m.mem.dirty(block);
                        live.push(vm);
                    }
                    Err(CreateError::NoRam(_) | CreateError::Tables(MapError::OutOfMemory)) => {}
                    Err(e) => prop_assert!(false, "{e:?}"),
                }
            } else {
                let vm = live.swap_remove(ix.index(live.len()));
                let vmid = vm.vmid();
                m.destroy(vm);
                prop_assert_eq!(m.arch.log.last(), Some(&ArchOp::TlbiVmid(vmid)));
            }
            for vm in &live {
                prop_assert_eq!(m.owners.state_of(vm.ram_pa()), Some(State::Owned(vm.owner())));
            }
        }
        for vm in live.drain(..) {
            m.destroy(vm);
        }
        prop_assert_eq!(&m.mem.alloc, &start);
        prop_assert!(m.mem.tables.is_empty());
        prop_assert_eq!(m.vmids.in_use(), 0);
        prop_assert_eq!(m.owners.ranges_of(Owner::Vm(1)).count(), 0);
        prop_assert!(m.owners.extents().all(|(_, s)| s == State::Free));
    }
}
