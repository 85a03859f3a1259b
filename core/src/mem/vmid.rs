//! VMIDs: the tag that keeps one VM's TLB entries apart from another's.
//!
//! Every stage-1 and stage-2 TLB entry of the EL1&0 regime is tagged with the VMID in
//! `VTTBR_EL2` when it was made ([`Stage2::vttbr`] puts it there), so two VMs running
//! at once need distinct VMIDs, and a VMID that passes from a destroyed VM to a new
//! one must lose its old entries first. VMs come and go at run time (a manager VM
//! creates and destroys them); `hyp` keeps one [`VmidAllocator`] behind a lock, calls
//! [`VmidAllocator::alloc`] when it builds a VM and [`VmidAllocator::free`] when it
//! tears one down.
//!
//! ## Width
//! VMIDs are 8 bits, or 16 when ID_AA64MMFR1_EL1.VMIDBits says the CPU has them
//! ([`VmidBits::from_id_aa64mmfr1`]) *and* `hyp` sets `VTCR_EL2.VS` on every CPU
//! ([`VmidBits::vtcr_vs`], [`VTCR_EL2_VS`]). Without VS the hardware reads only
//! VMID[7:0], so VMIDs 256 apart would share TLB entries: the allocator's width and
//! VS must come from the same [`VmidBits`].
//!
//! ## VMID 0 is reserved
//! It is never handed out: it is `VTTBR_EL2`'s value when no VM is loaded and what
//! boot code ran under before stage 2 was on, and on designs with a host kernel at EL1
//! (pKVM) it tags the host. Keeping it out of the pool means no guest inherits those
//! entries. So there are 255 (or 65535) VMIDs to hand out.
//!
//! ## Policy: invalidate at free, reuse lowest first
//! Invariant: **a VMID is never handed out with TLB entries from a previous owner.**
//! [`VmidAllocator::free`] keeps it by calling [`Arch::tlbi_vmid`] (broadcast, and
//! complete when it returns) *before* the VMID becomes free. So:
//! - once `free` returns, no CPU holds a TLB entry or cached walk for the old VM: `hyp`
//!   may reuse its stage-2 tables and memory at once;
//! - [`VmidAllocator::alloc`] needs no hardware access and hands out the lowest free
//!   VMID, which may be the one just freed. Lowest-first makes a VM's VMID depend only
//!   on the create/destroy history (reproducible in tests and logs) and keeps VMIDs
//!   small.
//!
//! The alternative, keeping freed VMIDs "dirty" and invalidating them lazily in
//! `alloc` (or all at once at a round-robin rollover, as Linux KVM does), batches
//! TLBIs; at the rate VMs are destroyed here a broadcast TLBI per destruction costs
//! nothing that matters, and eager invalidation gives the stronger guarantee above.
//!
//! `free`'s precondition, which only `hyp` can check: no vCPU of the VM runs anywhere
//! and none will enter the guest with this VMID again (the scheduler has reported the
//! VM quiescent). An entry made after the invalidation would be stale for the next
//! owner.
//!
//! ## Storage
//! A bitmap, one bit per VMID (bit 0 always set), allocated in [`VmidAllocator::new`];
//! `alloc` and `free` never allocate, so they may run on any path.
//!
//! [`Stage2::vttbr`]: super::Stage2::vttbr
//! [`VTCR_EL2_VS`]: super::VTCR_EL2_VS

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::stage2::VTCR_EL2_VS;
use crate::arch::Arch;

/// ID_AA64MMFR1_EL1.VMIDBits, bits [7:4] (Arm ARM D19, ID_AA64MMFR1_EL1): 0b0000 = 8
/// bits, 0b0010 = 16 bits; other values are reserved.
const MMFR1_VMIDBITS_SHIFT: u32 = 4;
const MMFR1_VMIDBITS_MASK: u64 = 0xf;
const MMFR1_VMIDBITS_16: u64 = 0b0010;

/// A VM's VMID, as handed out by [`VmidAllocator::alloc`]; never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(u16);

impl Vmid {
    /// The value for `VTTBR_EL2.VMID` ([`Stage2::vttbr`](super::Stage2::vttbr)).
    pub fn get(self) -> u16 {
        self.0
    }

    /// Any VMID, for tests that need one without an allocator.
    #[cfg(test)]
    pub(crate) const fn for_test(vmid: u16) -> Vmid {
        Vmid(vmid)
    }
}

/// How wide VMIDs are on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmidBits {
    /// VMIDs 1..=255. Every Armv8-A CPU.
    Eight,
    /// VMIDs 1..=65535. Only when ID_AA64MMFR1_EL1.VMIDBits = 0b0010 and `hyp` sets
    /// `VTCR_EL2.VS` ([`Self::vtcr_vs`]) on every CPU.
    Sixteen,
}

impl VmidBits {
    /// The width a CPU supports, from its ID_AA64MMFR1_EL1. `hyp` should take the
    /// narrowest over all CPUs (they normally agree).
    pub fn from_id_aa64mmfr1(mmfr1: u64) -> Self {
        if (mmfr1 >> MMFR1_VMIDBITS_SHIFT) & MMFR1_VMIDBITS_MASK == MMFR1_VMIDBITS_16 {
            VmidBits::Sixteen
        } else {
            VmidBits::Eight
        }
    }

    /// The bits [`Stage2::vtcr`](super::Stage2::vtcr) ORs into every VM's `VTCR_EL2`:
    /// [`VTCR_EL2_VS`](super::VTCR_EL2_VS) for 16-bit VMIDs, else 0.
    pub const fn vtcr_vs(self) -> u64 {
        match self {
            VmidBits::Eight => 0,
            VmidBits::Sixteen => VTCR_EL2_VS,
        }
    }

    /// Number of distinct VMID values, 0 included.
    const fn values(self) -> usize {
        match self {
            VmidBits::Eight => 1 << 8,
            VmidBits::Sixteen => 1 << 16,
        }
    }
}

/// Why [`VmidAllocator::free`] refused. A refused call changes nothing and issues no
/// TLB maintenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmidError {
    /// The VMID is not allocated: freed already, never handed out, 0 (reserved), or
    /// beyond this allocator's width.
    NotAllocated,
}

impl fmt::Display for VmidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmidError::NotAllocated => write!(f, "VMID is not allocated (double free?)"),
        }
    }
}

impl core::error::Error for VmidError {}

/// Which VMIDs are in use. See the module doc for the policy and invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmidAllocator {
    /// Bit `n % 64` of word `n / 64` set: VMID `n` is in use. Bit 0 (VMID 0) is always
    /// set, so a search for a clear bit never finds it.
    map: Vec<u64>,
    /// Every word before this one is full: the lowest free VMID is at or after it.
    first_free_word: usize,
    in_use: usize,
    bits: VmidBits,
}

impl VmidAllocator {
    /// All VMIDs free (but 0). Allocates the bitmap: 32 bytes for 8-bit VMIDs, 8 KiB
    /// for 16-bit.
    pub fn new(bits: VmidBits) -> Self {
        let mut map = vec![0u64; bits.values() / 64];
        map[0] = 1; // VMID 0: reserved, never handed out.
        VmidAllocator {
            map,
            first_free_word: 0,
            in_use: 0,
            bits,
        }
    }

    /// The width this allocator was made for (for `VTCR_EL2.VS`: [`VmidBits::vtcr_vs`]).
    pub fn bits(&self) -> VmidBits {
        self.bits
    }

    /// The lowest free VMID, now in use; `None` when all are in use. The VMID carries no
    /// TLB entries from a previous owner (they were invalidated when it was freed).
    pub fn alloc(&mut self) -> Option<Vmid> {
        let (word, bits) = self
            .map
            .iter_mut()
            .enumerate()
            .skip(self.first_free_word)
            .find(|(_, w)| **w != u64::MAX)?;
        self.first_free_word = word;
        let bit = bits.trailing_ones() as usize;
        *bits |= 1 << bit;
        self.in_use += 1;
        // The map has at most 1 << 16 bits, so the index fits.
        Some(Vmid((word * 64 + bit) as u16))
    }

    /// Returns `vmid` to the pool, first invalidating every TLB entry tagged with it
    /// ([`Arch::tlbi_vmid`]). Call only once no vCPU of its VM runs anywhere or will
    /// run with it again (module doc). A VMID that is not allocated (double free, 0,
    /// never handed out) is refused and nothing happens.
    pub fn free(&mut self, vmid: Vmid, arch: &mut impl Arch) -> Result<(), VmidError> {
        let n = usize::from(vmid.0);
        let (word, mask) = (n / 64, 1u64 << (n % 64));
        if n == 0 || self.map.get(word).is_none_or(|w| w & mask == 0) {
            return Err(VmidError::NotAllocated);
        }
        // Invalidate before the VMID is free: nobody can be handed it with old entries.
        arch.tlbi_vmid(vmid);
        self.map[word] &= !mask;
        self.in_use -= 1;
        self.first_free_word = self.first_free_word.min(word);
        Ok(())
    }

    /// VMIDs handed out and not freed.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// VMIDs that can be in use at once: 255 or 65535 (VMID 0 is reserved).
    pub fn capacity(&self) -> usize {
        self.bits.values() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ArchOp, FakeArch};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn ids(v: &[u16]) -> Vec<Vmid> {
        v.iter().map(|&n| Vmid(n)).collect()
    }

    #[test]
    fn hands_out_lowest_first_from_one() {
        let mut a = VmidAllocator::new(VmidBits::Eight);
        let got: Vec<Vmid> = (0..5).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(got, ids(&[1, 2, 3, 4, 5]));
        assert_eq!(a.in_use(), 5);

        let mut arch = FakeArch::new();
        a.free(Vmid(4), &mut arch).unwrap();
        a.free(Vmid(2), &mut arch).unwrap();
        assert_eq!(a.in_use(), 3);
        // Lowest free first, then past the old high-water mark.
        assert_eq!(a.alloc(), Some(Vmid(2)));
        assert_eq!(a.alloc(), Some(Vmid(4)));
        assert_eq!(a.alloc(), Some(Vmid(6)));
    }

    #[test]
    fn eight_bit_exhausts_at_255() {
        let mut a = VmidAllocator::new(VmidBits::Eight);
        assert_eq!(a.capacity(), 255);
        for n in 1..=255u16 {
            assert_eq!(a.alloc(), Some(Vmid(n)));
        }
        assert_eq!(a.in_use(), 255);
        assert_eq!(a.alloc(), None);
        assert_eq!(a.alloc(), None, "stays exhausted");

        let mut arch = FakeArch::new();
        a.free(Vmid(200), &mut arch).unwrap();
        assert_eq!(a.alloc(), Some(Vmid(200)));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn sixteen_bit_capacity_and_exhaustion() {
        let mut a = VmidAllocator::new(VmidBits::Sixteen);
        assert_eq!(a.capacity(), 65535);
        assert_eq!(a.alloc(), Some(Vmid(1)));
        assert_eq!(a.alloc(), Some(Vmid(2)));
        for n in 3..=65535u16 {
            assert_eq!(a.alloc(), Some(Vmid(n)));
        }
        assert_eq!(a.in_use(), 65535);
        assert_eq!(a.alloc(), None);

        let mut arch = FakeArch::new();
        a.free(Vmid(65535), &mut arch).unwrap();
        a.free(Vmid(256), &mut arch).unwrap();
        assert_eq!(a.alloc(), Some(Vmid(256)));
        assert_eq!(a.alloc(), Some(Vmid(65535)));
        assert_eq!(a.alloc(), None);
    }

    #[test]
    fn width_from_id_register_and_vtcr() {
        // VMIDBits is ID_AA64MMFR1_EL1[7:4]; other fields must not matter.
        assert_eq!(VmidBits::from_id_aa64mmfr1(0), VmidBits::Eight);
        assert_eq!(VmidBits::from_id_aa64mmfr1(0x20), VmidBits::Sixteen);
        assert_eq!(
            VmidBits::from_id_aa64mmfr1(0xffff_ff0f | 0x20),
            VmidBits::Sixteen
        );
        assert_eq!(VmidBits::from_id_aa64mmfr1(0xffff_ff0f), VmidBits::Eight);
        assert_eq!(
            VmidBits::from_id_aa64mmfr1(0x10),
            VmidBits::Eight,
            "reserved"
        );
        assert_eq!(VmidBits::Eight.vtcr_vs(), 0);
        assert_eq!(VmidBits::Sixteen.vtcr_vs(), 1 << 19);
        assert_eq!(
            VmidAllocator::new(VmidBits::Sixteen).bits(),
            VmidBits::Sixteen
        );
    }

    #[test]
    fn reuse_is_invalidated_exactly_once_before_handout() {
        let mut a = VmidAllocator::new(VmidBits::Eight);
        let mut arch = FakeArch::new();
        let (v1, v2) = (a.alloc().unwrap(), a.alloc().unwrap());
        assert!(arch.log.is_empty(), "a fresh VMID needs no invalidation");

        a.free(v1, &mut arch).unwrap();
        assert_eq!(arch.log, [ArchOp::TlbiVmid(v1)], "invalidated by free");
        assert_eq!(a.alloc(), Some(v1), "reused");
        assert_eq!(arch.log, [ArchOp::TlbiVmid(v1)], "and not again by alloc");

        a.free(v2, &mut arch).unwrap();
        a.free(v1, &mut arch).unwrap();
        assert_eq!(
            arch.log,
            [
                ArchOp::TlbiVmid(v1),
                ArchOp::TlbiVmid(v2),
                ArchOp::TlbiVmid(v1)
            ]
        );
    }

    #[test]
    fn bad_frees_change_nothing() {
        let mut a = VmidAllocator::new(VmidBits::Eight);
        let mut arch = FakeArch::new();
        let v = a.alloc().unwrap();
        a.alloc().unwrap();
        a.free(v, &mut arch).unwrap();
        arch.log.clear();
        let before = a.clone();

        for bad in [v, Vmid(0), Vmid(7), Vmid(255), Vmid(256), Vmid(u16::MAX)] {
            assert_eq!(
                a.free(bad, &mut arch),
                Err(VmidError::NotAllocated),
                "{bad:?}"
            );
        }
        assert_eq!(a, before, "state untouched");
        assert!(arch.log.is_empty(), "no TLB maintenance for a refused free");
        assert_eq!(
            a.alloc(),
            Some(v),
            "the freed VMID is still free exactly once"
        );
        assert_eq!(a.alloc(), Some(Vmid(3)));
        assert_eq!(
            VmidError::NotAllocated.to_string(),
            "VMID is not allocated (double free?)"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        /// Free the `Index`-th VMID in use (skipped when none is).
        FreeInUse(prop::sample::Index),
        /// Free an arbitrary value: mostly not allocated (0, freed, out of range).
        FreeAny(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Alloc),
            2 => any::<prop::sample::Index>().prop_map(Op::FreeInUse),
            1 => prop_oneof![0u16..300, any::<u16>()].prop_map(Op::FreeAny),
        ]
    }

    /// Runs `ops` against a model: the set in use, and for each VMID ever handed out,
    /// how many times it was invalidated since it was last freed (None: in use).
    fn run(bits: VmidBits, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut a = VmidAllocator::new(bits);
        let mut arch = FakeArch::new();
        let mut in_use = BTreeSet::<u16>::new();
        let mut since_free = BTreeMap::<u16, Option<usize>>::new();
        for op in ops {
            let victim = match op {
                Op::Alloc => {
                    let got = a.alloc();
                    prop_assert!(arch.log.is_empty(), "alloc issued {:?}", arch.log);
                    let lowest = (1..=a.capacity() as u16).find(|n| !in_use.contains(n));
                    prop_assert_eq!(got.map(Vmid::get), lowest);
                    if let Some(v) = got {
                        prop_assert_ne!(v.get(), 0);
                        prop_assert!(in_use.insert(v.get()), "{:?} handed out twice", v);
                        // Reused: invalidated exactly once since its last free.
                        let prev = since_free.insert(v.get(), None);
                        prop_assert!(
                            matches!(prev, None | Some(Some(1))),
                            "{:?} reused after {:?} invalidations",
                            v,
                            prev
                        );
                    }
                    prop_assert_eq!(a.in_use(), in_use.len());
                    continue;
                }
                Op::FreeInUse(_) if in_use.is_empty() => continue,
                Op::FreeInUse(i) => *in_use.iter().nth(i.index(in_use.len())).unwrap(),
                Op::FreeAny(n) => n,
            };
            let before = a.clone();
            let res = a.free(Vmid(victim), &mut arch);
            if in_use.remove(&victim) {
                prop_assert_eq!(res, Ok(()));
                since_free.insert(victim, Some(0));
            } else {
                prop_assert_eq!(res, Err(VmidError::NotAllocated));
                prop_assert_eq!(&a, &before, "refused free changed state");
            }
            for op in arch.log.drain(..) {
                let ArchOp::TlbiVmid(v) = op else {
                    return Err(TestCaseError::fail(format!("unexpected {op:?}")));
                };
                match since_free.get_mut(&v.get()) {
                    Some(Some(n)) => *n += 1,
                    _ => return Err(TestCaseError::fail(format!("{v:?} in use: tlbi"))),
                }
            }
            prop_assert_eq!(a.in_use(), in_use.len());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn random_alloc_free_eight_bit(ops in prop::collection::vec(op(), 0..1000)) {
            run(VmidBits::Eight, ops)?;
        }

        #[test]
        fn random_alloc_free_sixteen_bit(ops in prop::collection::vec(op(), 0..200)) {
            run(VmidBits::Sixteen, ops)?;
        }
    }
}
