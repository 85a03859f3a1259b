//! Memory management decisions: translation tables and physical frames.
//!
//! - `pgtable.rs`: the VMSAv8-64 table walker (4 KiB granule) shared by both formats;
//! - `stage2.rs`: [`Stage2`], a VM's IPA → PA tables, plus its `VTCR_EL2`/`VTTBR_EL2`;
//! - `idmap.rs`: [`build_el2_idmap`], Bothy's own EL2 stage-1 identity map;
//! - `stacks.rs`: [`stacks::StackLayout`], the per-CPU EL2 stacks and their guard pages;
//! - `frames.rs`: [`free_regions`] and [`RegionAllocator`], physical memory bookkeeping;
//! - `vmid.rs`: [`VmidAllocator`], VMIDs for VMs that come and go (a freed VMID is
//!   invalidated through [`crate::arch::Arch::tlbi_vmid`] before anyone gets it again);
//! - `ownership.rs`: [`PageOwnership`], who owns each physical page and who it is lent or
//!   shared to (what stage-2 may map for whom);
//! - `vm_memory.rs`: [`VmMemory`], a VM's RAM, stage-2 tables and VMID, created and
//!   destroyed as one, every frame given back;
//! - `scrub.rs`: [`scrub::ScrubJob`], a restarting VM's RAM zeroed in pieces that
//!   CPUs take when they have nothing better to do;
//! - `guest_ram.rs`: [`GuestRam`], the one place an IPA range a guest names (or Bothy
//!   computed for it) becomes a physical range, checked to be the VM's RAM.
//!
//! Tables live in physical memory the hypervisor owns, but `core` never dereferences a
//! pointer: every table access goes through [`TableMemory`], which `hyp` implements over
//! its identity map and the tests implement with a hash map. TLB maintenance goes through
//! the [`crate::arch::Arch`] trait (a fake records it in tests); the table operations
//! that remove translations return what must be invalidated, and those that would need
//! break-before-make refuse instead.

mod frames;
mod guest_ram;
mod idmap;
mod ownership;
mod pgtable;
pub mod scrub;
pub mod stacks;
mod stage2;
mod vm_memory;
mod vmid;

pub use frames::{free_regions, RegionAllocator, ReleaseError};
pub use guest_ram::{GuestRam, NotGuestRam};
pub use idmap::{build_el2_idmap, IdMap};
pub use ownership::{Owner, OwnershipError, OwnershipOp, PageOwnership, Refusal, State};
pub use pgtable::{pa_range_bits, pa_range_encoding, PAGE_SIZE};
pub use stage2::{AtomicVttbr, S2Attr, Stage2, Vtcr, Vttbr, VTCR_EL2_VS};
pub use vm_memory::{CreateError, Destroyed, PhysMemory, VmMemory, VmMemorySpec};
pub use vmid::{Vmid, VmidAllocator, VmidBits, VmidError};

use core::fmt;

/// Where translation tables live: 4 KiB tables of 512 descriptors, named by physical
/// address.
pub trait TableMemory {
    /// Physical address of a new, zeroed, 4 KiB-aligned page; `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Gives back a table page [`TableMemory::alloc_table`] returned, once no walker can
    /// reach it (its tables are no longer installed, its VMID invalidated).
    fn free_table(&mut self, table_pa: u64);
    /// Descriptor `index` (0..512) of the table at `table_pa`.
    fn read(&self, table_pa: u64, index: usize) -> u64;
    /// Writes descriptor `index` of the table at `table_pa`. The hypervisor's
    /// implementation must make the write visible to the table walker (a single 64-bit
    /// store, followed by `DSB ISHST` before the tables are used).
    fn write(&mut self, table_pa: u64, index: usize, value: u64);
}

/// Why a table operation was refused. A refused operation changes no mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An address or size is not a multiple of 4 KiB.
    Unaligned,
    /// The range wraps, or ends beyond the input address space or 48-bit output addresses.
    OutOfRange,
    /// Something is already mapped at `addr`: mappings are never silently replaced.
    AlreadyMapped { addr: u64 },
    /// The range would cut the block starting at `addr` in two (needs break-before-make).
    PartialBlock { addr: u64 },
    /// `TableMemory::alloc_table` returned `None`.
    OutOfMemory,
    /// The requested input-address size (IPA or VA bits) is not supported.
    UnsupportedAddressBits(u32),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Unaligned => write!(f, "address or size not 4 KiB aligned"),
            MapError::OutOfRange => write!(f, "range outside the translatable address space"),
            MapError::AlreadyMapped { addr } => write!(f, "{addr:#x} is already mapped"),
            MapError::PartialBlock { addr } => {
                write!(f, "range splits the block mapped at {addr:#x}")
            }
            MapError::OutOfMemory => write!(f, "out of memory for translation tables"),
            MapError::UnsupportedAddressBits(b) => write!(f, "{b}-bit address space not supported"),
        }
    }
}

impl core::error::Error for MapError {}

/// A `TableMemory` backed by a hash map, for tests: tables at fake, page-aligned
/// addresses; reading a table that was never allocated panics (a walker bug).
#[cfg(test)]
pub(crate) mod fake {
    use super::TableMemory;
    use std::collections::HashMap;

    #[derive(Clone)]
    pub struct FakeMem {
        tables: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
        limit: Option<usize>,
    }

    impl FakeMem {
        pub fn new() -> Self {
            Self {
                tables: HashMap::new(),
                next: 0x1_0000_0000_0000 >> 4, // well away from addresses tests map
                limit: None,
            }
        }

        /// Fails allocations after `n` tables.
        pub fn with_limit(n: usize) -> Self {
            Self {
                limit: Some(n),
                ..Self::new()
            }
        }

        pub fn clone_with_limit(&self, n: usize) -> Self {
            Self {
                limit: Some(n),
                ..self.clone()
            }
        }

        /// Tables allocated so far.
        pub fn tables(&self) -> usize {
            self.tables.len()
        }
    }

    impl TableMemory for FakeMem {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            let pa = self.next;
            self.next += 0x1000;
            self.tables.insert(pa, Box::new([0; 512]));
            Some(pa)
        }

        fn free_table(&mut self, table_pa: u64) {
            self.tables
                .remove(&table_pa)
                .expect("free of an unallocated table");
        }

        fn read(&self, table_pa: u64, index: usize) -> u64 {
            self.tables
                .get(&table_pa)
                .expect("read of an unallocated table")[index]
        }

        fn write(&mut self, table_pa: u64, index: usize, value: u64) {
            self.tables
                .get_mut(&table_pa)
                .expect("write to an unallocated table")[index] = value;
        }
    }
}
