//! SVE's own state (P0–P15, FFR and ZCR_EL1): whose it is while a vCPU runs, and when
//! it moves with it.
//!
//! Guests run with 128-bit vectors (ZCR_EL2.LEN = 0), so the Z registers are the V
//! registers, which move with every switch (`hyp`'s FP/SIMD save and restore). What
//! SVE adds is the predicates, FFR and ZCR_EL1: some twenty instructions each way on
//! every switch, also for vCPUs that never execute an SVE instruction (bare-metal code,
//! an RTOS, the bench guest; a Linux vCPU whose tasks do not use SVE). So they are
//! switched lazily, as the PMU and the PAuth keys are ([`super::pmu`],
//! [`super::pauth`]):
//!
//! - **Trapped.** A vCPU that does not hold them runs with CPTR_EL2.TZ set: every SVE
//!   instruction and every ZCR_EL1 access of its EL1 or EL0 (that its own CPACR_EL1.ZEN
//!   lets through) traps with ESR class 0x19 ([`ec::SVE`]). FP/SIMD is untouched (TFP
//!   stays clear). A switch to or from it moves none of them ([`put`], [`load`]: an MRS
//!   of CPTR_EL2 and a test each way).
//! - **Claimed.** Its first trapped instruction has `hyp` lift TZ and load its saved
//!   predicates, FFR and ZCR_EL1 ([`claim`], [`crate::arch::Arch::claim_sve`]); the
//!   instruction is not stepped over, so the guest executes it again, untrapped.
//! - **Switched.** While a vCPU holds them, every switch away saves them and every
//!   switch back restores them. After a save it keeps them while any is non-zero
//!   ([`SveRegs::stays_claimed`]); once all are zero it goes back to trapped with
//!   nothing lost (zeros are what it would be loaded with). Linux's SVE probe at boot
//!   writes only ZCR_EL1.LEN (0 at 128 bits) and reads the vector length, so a Linux
//!   vCPU whose tasks use no SVE is trapped again at its next switch.
//! - **Reset** (PSCI CPU_ON, a VM's restart): the CPU's predicates, FFR and ZCR_EL1 are
//!   zeroed and the vCPU holds them ([`reset`]), so it starts from zeros whatever its
//!   previous incarnation saved.
//!
//! TZ traps EL2's own SVE instructions too (HCR_EL2.E2H = 0): `hyp` moves the registers
//! only while TZ is clear, and [`load`], [`claim`] and [`reset`] lift it (and
//! synchronise, [`SveHw::set_cptr`] with `sync`) before they move anything. Whether the
//! vCPU a CPU runs holds them is CPTR_EL2.TZ itself ([`claimed`]).
//!
//! ## Why a trapped vCPU cannot see the state of the one before it
//! A switch from a vCPU that holds them to one that does not leaves the first one's
//! predicates, FFR and ZCR_EL1 in the CPU. The second cannot read them: every SVE
//! instruction (the only way to read a predicate or FFR) and every ZCR_EL1 access traps
//! to EL2 while TZ is set, and a claim loads its own state before the instruction runs
//! again.
//!
//! Reference: Arm ARM (DDI 0487) CPTR_EL2 (E2H = 0: TZ, bit 8), ESR_ELx EC 0x19, ZCR_EL1.

/// CPTR_EL2 (HCR_EL2.E2H = 0) bit that traps SVE.
pub mod cptr {
    /// Trap SVE instructions and ZCR_ELx accesses at EL0–EL2.
    pub const TZ: u64 = 1 << 8;
}

/// ESR_EL2 class of an SVE instruction or ZCR access trapped by CPTR_EL2.TZ.
pub mod ec {
    pub const SVE: u32 = 0x19;
}

/// Bytes of P0–P15 and FFR at a 128-bit vector length (2 bytes each), which is all of
/// them a guest can set (EL2 caps its vectors there).
pub const PRED_BYTES: usize = 17 * 2;

/// Whether the vCPU running on a CPU whose CPTR_EL2 reads `cptr_el2` holds SVE's state.
#[inline(always)]
pub const fn claimed(cptr_el2: u64) -> bool {
    cptr_el2 & cptr::TZ == 0
}

/// A vCPU's predicates, FFR and ZCR_EL1, as its last save left them (zero for a new
/// vCPU). `repr(C)`: `hyp`'s assembly fills `preds` in P0..P15, FFR order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SveRegs {
    pub zcr: u64,
    pub preds: [u8; PRED_BYTES],
}

impl SveRegs {
    /// Every register at zero (what a reset leaves).
    pub const RESET: SveRegs = SveRegs {
        zcr: 0,
        preds: [0; PRED_BYTES],
    };

    /// After a switch saved them: whether the vCPU keeps them (they are restored when it
    /// runs next) or goes back to trapped. It keeps them while any is non-zero.
    #[inline(always)]
    pub fn stays_claimed(&self) -> bool {
        self.zcr != 0 || self.preds.iter().any(|&b| b != 0)
    }
}

impl Default for SveRegs {
    fn default() -> Self {
        Self::RESET
    }
}

/// The moves `hyp` makes with a CPU's SVE state and CPTR_EL2 (MRS/MSR and SVE
/// instructions in `hyp`, fields in tests); the functions below decide when.
pub trait SveHw {
    /// CPTR_EL2 as it is.
    fn cptr(&self) -> u64;
    /// Write CPTR_EL2; with `sync`, an ISB after it, so that EL2's own SVE instructions
    /// that follow see TZ as written.
    fn set_cptr(&mut self, value: u64, sync: bool);
    /// Read the predicates, FFR and ZCR_EL1 into `regs` (TZ is clear).
    fn save(&mut self, regs: &mut SveRegs);
    /// Write them from `regs` (TZ is clear and synchronised).
    fn load(&mut self, regs: &SveRegs);
}

/// A switch away from the vCPU this CPU runs: if it holds SVE's state it is saved into
/// `regs`. Returns whether it holds it from now on ([`SveRegs::stays_claimed`]), which
/// [`load`] needs when it runs again; `false` with nothing moved if it did not hold it
/// (`regs` keeps what it had).
#[inline(always)]
pub fn put(hw: &mut impl SveHw, regs: &mut SveRegs) -> bool {
    if !claimed(hw.cptr()) {
        return false;
    }
    hw.save(regs);
    regs.stays_claimed()
}

/// A switch to a vCPU: if it holds SVE's state (`claimed`, from [`put`]), TZ lifted and
/// its state loaded; else TZ set.
#[inline(always)]
pub fn load(hw: &mut impl SveHw, regs: &SveRegs, claimed: bool) {
    if claimed {
        lift(hw);
        hw.load(regs);
    } else {
        let now = hw.cptr();
        if now & cptr::TZ == 0 {
            // Synchronised by the `ERET` into the guest; EL2 runs no SVE meanwhile.
            hw.set_cptr(now | cptr::TZ, false);
        }
    }
}

/// The running vCPU's first trapped SVE instruction: TZ lifted and its saved state into
/// the CPU ([`crate::arch::Arch::claim_sve`]). Returns `false`, and moves nothing, if
/// it held it already: then something else trapped the instruction, and running it
/// again would only trap again.
pub fn claim(hw: &mut impl SveHw, regs: &SveRegs) -> bool {
    if claimed(hw.cptr()) {
        return false;
    }
    lift(hw);
    hw.load(regs);
    true
}

/// The running vCPU is reset: TZ lifted, the CPU's predicates, FFR and ZCR_EL1 zeroed,
/// and the vCPU holds them.
pub fn reset(hw: &mut impl SveHw) {
    lift(hw);
    hw.load(&SveRegs::RESET);
}

/// TZ cleared (and synchronised) if it was set.
#[inline(always)]
fn lift(hw: &mut impl SveHw) {
    let now = hw.cptr();
    if now & cptr::TZ != 0 {
        hw.set_cptr(now & !cptr::TZ, true);
    }
}

#[cfg(test)]
mod tests;
