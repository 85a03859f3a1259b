//! MDCR_EL2 as the lazily switched register groups use it. The debug registers
//! ([`super::debug`]) and the PMU ([`super::pmu`]) are each trapped by their own
//! MDCR_EL2 bits until a vCPU claims them, and each group's code reads the register to
//! learn whether the running vCPU holds it and rewrites its own bits at a switch or a
//! claim, leaving the other group's (and the rest of the register) as they are.

/// MDCR_EL2 of the CPU a switch or claim runs on (`hyp`'s reads and writes the
/// register; the tests' are fields).
pub trait MdcrEl2 {
    fn mdcr(&self) -> u64;
    fn set_mdcr(&mut self, value: u64);
}

/// Make the bits in `mask` of MDCR_EL2 (which read `now`) be `bits`, the others kept;
/// not written if that changes nothing (a switch between vCPUs that hold neither group
/// writes nothing).
#[inline(always)]
pub fn set_bits(hw: &mut impl MdcrEl2, now: u64, mask: u64, bits: u64) {
    let want = (now & !mask) | (bits & mask);
    if want != now {
        hw.set_mdcr(want);
    }
}
