//! The guest PMU's registers: whose they are while a vCPU runs, and when they move with
//! it.
//!
//! A CPU has one PMU (PMCR_EL0, the enables and overflow flags, PMUSERENR_EL0,
//! PMSELR_EL0, the cycle counter and its filter, and PMCR_EL0.N event counters with
//! their event types), and Bothy gives all of it to the guest running there
//! (MDCR_EL2.HPMN = N; EL2 counts nothing, MDCR_EL2.HPMD/HCCD). Moving all of it on
//! every vCPU switch costs some seventy system-register moves each way (`vcpu_switch`
//! is a measured hot path) for registers most vCPUs never touch. So they are switched
//! lazily, as the debug registers are ([`super::debug`]):
//!
//! - **Trapped.** A vCPU that does not hold the PMU runs with MDCR_EL2.TPM and TPMCR set:
//!   every access to a PMU register from its EL1 or EL0 traps. A switch to or from it
//!   moves none of them ([`put`], [`load`]: an MRS of MDCR_EL2 and a compare each way).
//! - **Claimed.** Its first trapped access ([`answer`] says [`Answer::Claim`]) has `hyp`
//!   load its saved values ([`PmuRegs`], kept in its context while it is trapped) into
//!   the CPU and clear the traps ([`crate::arch::Arch::claim_pmu`]); the instruction is
//!   not stepped over, so the guest executes it again, untrapped, against its own
//!   registers.
//! - **Switched.** While a vCPU holds the PMU, every switch away from it saves its
//!   registers and every switch back restores them. After a save it keeps the PMU
//!   ([`PmuRegs::stays_claimed`]) while the PMU is doing anything for it: PMCR_EL0.E, a
//!   counter enabled (PMCNTENSET), an overflow interrupt enabled (PMINTENSET), an
//!   overflow flag set (PMOVSSET), or EL0 access enabled (PMUSERENR_EL0). Once none is,
//!   it goes back to trapped **with its saved values kept**: the next claim loads them,
//!   so it reads back PMCR_EL0.LC, PMSELR_EL0, its event types and counter values as it
//!   left them. Linux's driver leaves exactly such a PMU when perf is idle (PMCR_EL0 =
//!   LC, everything disabled, PMUSERENR_EL0 = 0), so a Linux vCPU that runs no perf
//!   event is switched once after its probe and then trapped again.
//! - **Reset** (PSCI CPU_ON, a VM's restart): the CPU's PMU is written with the reset
//!   values (all zero) and the vCPU holds it ([`reset`]), as the architecture's reset
//!   leaves a PMU the vCPU can use at once. At its next switch the save finds it idle
//!   and it goes back to trapped with zeros saved. (Reset runs while the vCPU is
//!   loaded, without its saved context: a trapped reset vCPU would have a claim load its
//!   previous incarnation's values; a held one has the CPU's, which are the reset's.)
//!
//! Whether the vCPU a CPU runs holds the PMU is MDCR_EL2.TPM itself ([`claimed`]): `hyp`
//! sets it from the vCPU's saved state when it loads one ([`load`]), clears it on a
//! claim ([`claim`]) and a reset ([`reset`]), and reads it when it saves ([`put`]); those
//! four are the whole sequence, over [`PmuHw`].
//!
//! ## Why a trapped vCPU cannot see, or be counted by, the PMU of the one before it
//! A switch from a vCPU that holds the PMU to one that does not leaves the first one's
//! values in the CPU: zeroing them all would cost the writes laziness saves. The second
//! cannot observe them: every access from its EL1 traps while TPM is set, and a claim
//! loads its own values before the access runs again. From its EL0, an access traps to
//! its EL1 unless PMUSERENR_EL0 allows it, and a trapped vCPU's own PMUSERENR_EL0 is
//! zero (a non-zero one keeps the PMU), which is what the CPU holds too (below): EL0
//! sees exactly what it would with the vCPU's values loaded, and Bothy claims for any
//! EL0 access that reaches it all the same.
//!
//! Nor can the leftovers count for it or interrupt it: when [`load`] sets the traps on a
//! CPU whose PMU was held (TPM clear: by the vCPU it saved, or by one whose VM was
//! destroyed without a save) it first stops that PMU ([`PmuHw::quiesce`]: PMCR_EL0.E,
//! every counter enable and interrupt enable cleared, PMUSERENR_EL0 zero; four writes,
//! against some seventy for a restore). So on a CPU whose MDCR_EL2.TPM is set nothing
//! counts and the PMU's overflow line is low: `hyp`'s overflow handler and its
//! `Arch::hw_line_high` read the live registers and find no overflow for a vCPU that
//! does not hold the PMU. A trapped vCPU's saved values are idle by
//! [`PmuRegs::stays_claimed`], so it loses no count or interrupt of its own either.
//!
//! ## The registers, and what a trapped access does ([`answer`])
//! Every register MDCR_EL2.TPM traps that PMUv3 up to v3p8 defines (guests are shown no
//! later PMU, and no PMSS): PMCR_EL0, PMCNTENSET/CLR_EL0, PMOVSCLR/SET_EL0,
//! PMSWINC_EL0, PMSELR_EL0, PMCEID0/1_EL0, PMCCNTR_EL0, PMXEVTYPER/PMXEVCNTR_EL0,
//! PMUSERENR_EL0, PMINTENSET/CLR_EL1, PMMIR_EL1, PMEVCNTR<n>_EL0, PMEVTYPER<n>_EL0 and
//! PMCCFILTR_EL0, from EL1 or EL0, read or write: claim. The instruction then runs
//! against the hardware, so what is undefined there (a counter beyond PMCR_EL0.N, a
//! write to PMCEID0) is undefined for the guest as it would have been untrapped.
//! PMMIR_EL1 is read-only and describes the host's PMU, which is the guest's too: not
//! switched. An encoding outside that set is not the PMU's ([`answer`] is `None`).
//!
//! Reference: Arm ARM (DDI 0487) D13 "The Performance Monitors Extension", MDCR_EL2
//! (TPM, TPMCR, HPMN), PMUSERENR_EL0, and the PMU's overflow interrupt
//! (`CheckForPMUOverflow`: PMCR_EL0.E and PMOVSSET & PMINTENSET).

use super::mdcr::{self as mdcr_el2, MdcrEl2};
use super::SysRegAccess;

/// MDCR_EL2 bits that trap a guest's PMU register accesses to EL2.
pub mod mdcr {
    /// Trap Performance Monitors Control register accesses (PMCR_EL0).
    pub const TPMCR: u64 = 1 << 5;
    /// Trap Performance Monitors accesses: every PMU register, PMCR_EL0 included.
    pub const TPM: u64 = 1 << 6;
    /// Both: what a vCPU that does not hold the PMU runs with.
    pub const TRAPS: u64 = TPM | TPMCR;
}

/// PMCR_EL0.E: the counters are enabled (and so may raise the overflow interrupt).
pub const PMCR_E: u64 = 1 << 0;
/// PMCR_EL0 bits that hold state (E, D, X, DP, LC, LP); P and C are actions, N is the
/// hardware's.
pub const PMCR_STATE: u64 = 0b1111_1001;

/// The most event counters PMCR_EL0.N can name (counter 31 is the cycle counter).
pub const MAX_EVENT_COUNTERS: usize = 31;

/// Whether the vCPU running on a CPU whose MDCR_EL2 reads `mdcr_el2` holds the PMU
/// (its accesses no longer trap).
pub const fn claimed(mdcr_el2: u64) -> bool {
    mdcr_el2 & mdcr::TPM == 0
}

/// A vCPU's PMU registers, as its last save left them (zero for a new vCPU). `repr(C)`:
/// `hyp`'s assembly fills the counter arrays by offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PmuRegs {
    /// PMCR_EL0, [`PMCR_STATE`] bits only.
    pub pmcr: u64,
    /// PMCNTENSET_EL0.
    pub cnten: u64,
    /// PMINTENSET_EL1.
    pub inten: u64,
    /// PMOVSSET_EL0.
    pub ovs: u64,
    pub userenr: u64,
    pub selr: u64,
    pub ccntr: u64,
    pub ccfiltr: u64,
    /// PMEVCNTR<n>_EL0, n below PMCR_EL0.N.
    pub evcntr: [u64; MAX_EVENT_COUNTERS],
    /// PMEVTYPER<n>_EL0, n below PMCR_EL0.N.
    pub evtyper: [u64; MAX_EVENT_COUNTERS],
}

impl PmuRegs {
    /// Every register at its reset value: the PMU off, counters zero.
    pub const RESET: PmuRegs = PmuRegs {
        pmcr: 0,
        cnten: 0,
        inten: 0,
        ovs: 0,
        userenr: 0,
        selr: 0,
        ccntr: 0,
        ccfiltr: 0,
        evcntr: [0; MAX_EVENT_COUNTERS],
        evtyper: [0; MAX_EVENT_COUNTERS],
    };

    /// After a switch saved them: whether the vCPU keeps the PMU (its registers are
    /// restored when it runs next) or goes back to trapped, its values kept here for
    /// the next claim. It keeps it while the PMU does anything for it: counting or able
    /// to (PMCR_EL0.E, PMCNTENSET), able to interrupt or holding an overflow
    /// (PMINTENSET, PMOVSSET), or open to its EL0 (PMUSERENR_EL0). A trapped vCPU must
    /// have all of them clear: the CPU it runs on counts nothing for it, raises no
    /// overflow for it, and refuses its EL0 (the module doc).
    pub const fn stays_claimed(&self) -> bool {
        self.pmcr & PMCR_E != 0
            || self.cnten != 0
            || self.inten != 0
            || self.ovs != 0
            || self.userenr != 0
    }
}

impl Default for PmuRegs {
    fn default() -> Self {
        Self::RESET
    }
}

/// The moves `hyp` makes with a CPU's PMU (MRS/MSR in `hyp`, fields in tests); the
/// functions below decide when. `counters` is the CPU's PMCR_EL0.N.
pub trait PmuHw: MdcrEl2 {
    /// Read the PMU's registers (`counters` event counters) into `regs`.
    fn save(&mut self, counters: usize, regs: &mut PmuRegs);
    /// Write them from `regs`, nothing counting or interrupting until the last write
    /// (PMCR_EL0) turns the PMU on as `regs` has it.
    fn load(&mut self, counters: usize, regs: &PmuRegs);
    /// Stop the PMU: PMCR_EL0.E, PMCNTENSET_EL0 and PMINTENSET_EL1 cleared,
    /// PMUSERENR_EL0 zero. Nothing counts or interrupts afterwards, and EL0 accesses
    /// trap to EL1.
    fn quiesce(&mut self);
}

/// A switch away from the vCPU this CPU runs: if it holds the PMU its registers are
/// saved into `regs`. Returns whether it holds the PMU from now on
/// ([`PmuRegs::stays_claimed`]), which [`load`] needs when it runs again; `false` with
/// nothing moved if it did not hold it (`regs` keeps the values it was trapped with).
/// The PMU is left as it was: the next [`load`] stops it if it has to.
#[inline(always)]
pub fn put(hw: &mut impl PmuHw, counters: usize, regs: &mut PmuRegs) -> bool {
    if !claimed(hw.mdcr()) {
        return false;
    }
    hw.save(counters, regs);
    regs.stays_claimed()
}

/// A switch to a vCPU: its registers loaded if it holds the PMU (`claimed`, from
/// [`put`]); if it does not and the CPU's PMU was held (by the vCPU saved before, or by
/// one whose VM was destroyed without a save), that PMU stopped. Then the traps, set to
/// match.
#[inline(always)]
pub fn load(hw: &mut impl PmuHw, counters: usize, regs: &PmuRegs, claimed: bool) {
    let now = hw.mdcr();
    if claimed {
        hw.load(counters, regs);
    } else if self::claimed(now) {
        hw.quiesce();
    }
    set_traps(hw, now, claimed);
}

/// The running vCPU's first trapped access: its saved values (`regs`) into the CPU, and
/// no more traps ([`crate::arch::Arch::claim_pmu`]). Returns `false`, and moves
/// nothing, if it held the PMU already: then something else trapped the access, and
/// running it again would only trap again.
pub fn claim(hw: &mut impl PmuHw, counters: usize, regs: &PmuRegs) -> bool {
    let now = hw.mdcr();
    if claimed(now) {
        return false;
    }
    hw.load(counters, regs);
    set_traps(hw, now, true);
    true
}

/// The running vCPU is reset: the CPU's PMU gets the reset values and the vCPU holds it
/// (the module doc says why not trapped).
pub fn reset(hw: &mut impl PmuHw, counters: usize) {
    let now = hw.mdcr();
    hw.load(counters, &PmuRegs::RESET);
    set_traps(hw, now, true);
}

/// MDCR_EL2 (`now`) with TPM and TPMCR set or cleared, the other bits kept.
#[inline(always)]
fn set_traps(hw: &mut impl PmuHw, now: u64, claimed: bool) {
    mdcr_el2::set_bits(hw, now, mdcr::TRAPS, mdcr::TRAPS * u64::from(!claimed));
}

/// A PMU register, as a trapped access names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmuReg {
    Pmcr,
    CntEnSet,
    CntEnClr,
    OvsClr,
    SwInc,
    Selr,
    Ceid0,
    Ceid1,
    Ccntr,
    XevTyper,
    XevCntr,
    UserEnr,
    OvsSet,
    IntEnSet,
    IntEnClr,
    Mmir,
    EvCntr(u8),
    /// PMEVTYPER<n>_EL0, n 0..=30.
    EvTyper(u8),
    /// PMCCFILTR_EL0 (where PMEVTYPER31 would be).
    CcFiltr,
}

impl PmuReg {
    /// The PMU register `access` names, if it is one (op0 = 3; op1 = 3 for the EL0
    /// registers, 0 for PMINTENSET/CLR_EL1 and PMMIR_EL1).
    pub const fn of(access: &SysRegAccess) -> Option<Self> {
        use PmuReg::*;
        if access.op0 != 3 {
            return None;
        }
        let (op1, crn, crm, op2) = (access.op1, access.crn, access.crm, access.op2);
        Some(match (op1, crn, crm, op2) {
            (3, 9, 12, 0) => Pmcr,
            (3, 9, 12, 1) => CntEnSet,
            (3, 9, 12, 2) => CntEnClr,
            (3, 9, 12, 3) => OvsClr,
            (3, 9, 12, 4) => SwInc,
            (3, 9, 12, 5) => Selr,
            (3, 9, 12, 6) => Ceid0,
            (3, 9, 12, 7) => Ceid1,
            (3, 9, 13, 0) => Ccntr,
            (3, 9, 13, 1) => XevTyper,
            (3, 9, 13, 2) => XevCntr,
            (3, 9, 14, 0) => UserEnr,
            (3, 9, 14, 3) => OvsSet,
            (0, 9, 14, 1) => IntEnSet,
            (0, 9, 14, 2) => IntEnClr,
            (0, 9, 14, 6) => Mmir,
            (3, 14, 15, 7) => CcFiltr,
            (3, 14, 8..=11, n) => EvCntr((crm & 3) << 3 | n),
            (3, 14, 12..=15, n) => EvTyper((crm & 3) << 3 | n),
            _ => return None,
        })
    }
}

/// What the exit policy does with a trapped access to a PMU register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Give the vCPU the PMU ([`crate::arch::Arch::claim_pmu`]) and let it execute the
    /// instruction again, untrapped: the access is not stepped over.
    Claim,
}

/// The answer to a trapped access to a PMU register; `None` for an access that is not
/// one. Every PMU register claims, from EL1 or EL0, in either direction (the module
/// doc).
pub fn answer(access: &SysRegAccess) -> Option<Answer> {
    PmuReg::of(access).map(|_| Answer::Claim)
}

#[cfg(test)]
mod tests;
