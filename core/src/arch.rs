//! [`Arch`]: what the core's decisions need the hardware to do, as a trait.
//!
//! Most of `core` decides and returns: the scheduler returns a [`Decision`] and a CPU
//! to kick, [`Stage2::unmap`] returns the ranges to invalidate, and `hyp` carries them
//! out. A few operations cannot be split that way without leaving a window in which a
//! caller could forget the second half and break an invariant. The VMID allocator is
//! the first: a VMID must be invalidated before anyone can be handed it again, so
//! [`VmidAllocator::free`] invalidates it itself, through this trait, before the VMID
//! becomes free. Such operations take `&mut impl Arch`.
//!
//! `hyp` implements `Arch` with the real instructions; tests (and host tools, with the
//! `std` feature) use `FakeArch`, which records each call as an `ArchOp` so a test can
//! check what was asked for and in which order (Hafnium's `src/arch/fake/` plays the
//! same part).
//!
//! ## Adding a method
//! Later users (scheduler kicks, the exit policy's maintenance) add methods here. Keep
//! each one:
//! - **one architectural effect, complete**: the method does everything needed for its
//!   effect to hold when it returns, barriers included (a TLBI comes with the DSB that
//!   completes it), so `core` never reasons about barriers;
//! - **named for the effect**, with its inputs typed ([`Vmid`], not `u16`) and the
//!   instruction sequence `hyp` uses written in its doc;
//! - **synchronous and infallible**: an `Arch` call cannot fail, and waits for nothing
//!   but hardware (a broadcast TLBI's DSB), never for another CPU's software; anything
//!   that would is a decision returned to `hyp` instead;
//! - **mirrored in `ArchOp`**, one variant per method, recorded by `FakeArch`.
//!
//! `Arch` methods run inside `core` operations, which `hyp` calls with its locks held
//! (the VMID allocator's, the scheduler's), so they must not take those locks.
//!
//! [`Decision`]: crate::sched::Decision
//! [`Stage2::unmap`]: crate::mem::Stage2::unmap
//! [`VmidAllocator::free`]: crate::mem::VmidAllocator::free

use crate::mem::Vmid;

/// The hardware operations `core` performs itself. See the module doc for what belongs
/// here.
pub trait Arch {
    /// Invalidates every stage-1 and stage-2 TLB entry (and cached walk) tagged with
    /// `vmid`, on every CPU in the Inner Shareable domain, and waits for completion.
    ///
    /// `hyp` (at EL2, interrupts masked): save `VTTBR_EL2`; write it with
    /// `VTTBR_EL2.VMID = vmid`; `ISB` (so the TLBI sees the new VMID); `DSB ISHST`
    /// (earlier table writes visible first); `TLBI VMALLS12E1IS`; `DSB ISH`; restore
    /// `VTTBR_EL2`; `ISB`.
    fn tlbi_vmid(&mut self, vmid: Vmid);

    /// Invalidates the stage-2 translation of the 4 KiB page containing `ipa` for
    /// `vmid`, on every CPU in the Inner Shareable domain, and the stage-1 entries of
    /// that VMID that may have cached a translation through it (combined stage-1+2
    /// entries are not indexed by IPA). Call after the page's descriptor was changed
    /// (break-before-make: after writing the invalid descriptor).
    ///
    /// `hyp`: with `VTTBR_EL2.VMID = vmid` as in [`Arch::tlbi_vmid`]: `DSB ISHST`;
    /// `TLBI IPAS2E1IS, ipa >> 12`; `DSB ISH` (stage 2 gone before stage 1 can refill
    /// from it); `TLBI VMALLE1IS`; `DSB ISH`; `ISB`; restore `VTTBR_EL2`.
    fn tlbi_ipa(&mut self, vmid: Vmid, ipa: u64);
}

/// One [`Arch`] call, as `FakeArch` records it.
#[cfg(any(test, feature = "std"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchOp {
    TlbiVmid(Vmid),
    TlbiIpa(Vmid, u64),
}

/// An [`Arch`] for tests: does nothing but append each call to `log`.
#[cfg(any(test, feature = "std"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeArch {
    pub log: alloc::vec::Vec<ArchOp>,
}

#[cfg(any(test, feature = "std"))]
impl FakeArch {
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(any(test, feature = "std"))]
impl Arch for FakeArch {
    fn tlbi_vmid(&mut self, vmid: Vmid) {
        self.log.push(ArchOp::TlbiVmid(vmid));
    }

    fn tlbi_ipa(&mut self, vmid: Vmid, ipa: u64) {
        self.log.push(ArchOp::TlbiIpa(vmid, ipa));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{VmidAllocator, VmidBits};

    #[test]
    fn fake_records_calls_in_order() {
        let mut ids = VmidAllocator::new(VmidBits::Eight);
        let (a, b) = (ids.alloc().unwrap(), ids.alloc().unwrap());
        let mut arch = FakeArch::new();
        arch.tlbi_ipa(a, 0x4000_1000);
        arch.tlbi_vmid(b);
        assert_eq!(
            arch.log,
            [ArchOp::TlbiIpa(a, 0x4000_1000), ArchOp::TlbiVmid(b)]
        );
    }
}
