//! Hardware breakpoints and watchpoints: whose they are while a vCPU runs, and when
//! they move with it.
//!
//! A CPU has one set of self-hosted debug registers (`DBGBVR<n>_EL1` and
//! `DBGBCR<n>_EL1` for each breakpoint, `DBGWVR<n>_EL1` and `DBGWCR<n>_EL1` for each
//! watchpoint, the OS lock and double lock), and every vCPU that runs on it would
//! otherwise read, and be hit by, what the vCPU before it left there. Saving and restoring them on every switch would cost about
//! forty system-register moves on each (`vcpu_switch` is a measured hot path) for
//! registers almost no guest uses. So they are switched lazily, as KVM does:
//!
//! - **Trapped.** A vCPU that does not hold the debug registers (its debug state is all
//!   zero) runs with MDCR_EL2.TDA and TDOSA set: every access to a debug register traps.
//!   A switch to or from it moves none of them; `hyp` only makes sure the trap bits are
//!   set ([`DebugShape::traps`]: an MRS of MDCR_EL2 and a compare).
//! - **Claimed.** Its first trapped access ([`answer`] says [`Answer::Claim`]) has
//!   `hyp` load its values (zero, by the rule above) into the CPU and clear the traps
//!   ([`crate::arch::Arch::claim_debug`]); the instruction is not stepped over, so the
//!   guest executes it again, now untrapped, against its own registers.
//! - **Switched.** While a vCPU holds the debug registers, every switch away from it
//!   saves them ([`DebugRegs`]: as many as ID_AA64DFR0_EL1.BRPs/WRPs say) and every
//!   switch back restores them and clears the traps. After a save it keeps them
//!   ([`DebugRegs::stays_claimed`]) while any of them is non-zero or MDSCR_EL1 enables
//!   debug exceptions (MDE, KDE); once they are all zero again it goes back to trapped.
//!   Linux writes MDSCR_EL1 and OSLAR_EL1 when a CPU comes up, so a Linux vCPU that
//!   never sets a breakpoint is switched once and then trapped again, as under KVM.
//! - **Reset** (PSCI CPU_ON, a VM's restart): trapped, MDSCR_EL1 zero; so a claim
//!   finds zeros and the OS lock unlocked, as under KVM (the architecture's cold reset
//!   locks it; Linux unlocks it at every CPU bring-up).
//!
//! Whether the vCPU a CPU runs holds the debug registers is MDCR_EL2.TDA itself
//! ([`claimed`]): `hyp` sets it from the vCPU's saved state when it loads one
//! ([`load`]), clears it on a claim ([`claim`]), sets it on a reset ([`reset`]) and reads
//! it when it saves ([`put`]); those four are the whole sequence, over [`DebugHw`].
//!
//! ## TDOSA and TDRA
//! TDOSA traps the OS lock (OSLAR/OSLSR_EL1), the double lock (OSDLR_EL1) and
//! DBGPRCR_EL1: per-CPU state that turns a vCPU's debug exceptions off, so it moves
//! with the rest: trapped and lifted with TDA, OSLK and DLK switched. (KVM keeps TDOSA
//! set and emulates the OS lock; here Linux's unlock at bring-up is one claim, and the
//! lock's effect on debug exceptions is the hardware's own.) TDRA traps MDRAR_EL1
//! alone, the physical address of the debug ROM table: a host detail with nothing to
//! switch, so it is always set and the register reads 0 ("not valid").
//!
//! ## Why a trapped vCPU cannot see the values of the one before it
//! A switch from a vCPU that holds the debug registers to one that does not leaves the
//! first one's values in the CPU: clearing them would cost the writes laziness saves.
//! The second cannot observe them: every read of a debug register traps (and a claim
//! loads zeros before the read runs again), and none can fire, since breakpoint and
//! watchpoint exceptions need MDSCR_EL1.MDE (at EL1, KDE too), and MDSCR_EL1, switched
//! with every vCPU's EL1 registers, has both clear for a trapped vCPU (it traps too, so
//! setting them claims first; [`DebugRegs::stays_claimed`] keeps a vCPU that has them
//! set). Debug exceptions are never taken from EL2 while the debug target is EL1
//! (MDCR_EL2.TDE clear), so a guest's breakpoint cannot fire in Bothy either.
//!
//! ## The registers, and what a trapped access does ([`answer`])
//! | registers (op0 = 2) | trapped by | answer |
//! |---|---|---|
//! | `DBGBVR/DBGBCR/DBGWVR/DBGWCR<n>_EL1`, n below the count | TDA | claim; switched |
//! | the same beyond the count | (UNDEFINED before any trap) | undefined |
//! | MDSCR_EL1 | TDA | claim; switched with the EL1 registers on every switch |
//! | OSLAR_EL1 (write), OSLSR_EL1 (read): the OS lock | TDOSA | claim; OSLSR_EL1.OSLK switched |
//! | OSDLR_EL1: the double lock | TDOSA | claim; DLK switched |
//! | DBGPRCR_EL1, DBGCLAIMSET/CLR_EL1, DBGAUTHSTATUS_EL1 | TDOSA, TDA | claim; not switched (below) |
//! | MDRAR_EL1 (read) | TDRA, always set | reads 0: no ROM table (its address is the host's) |
//! | DCC: MDCCSR_EL0, MDCCINT_EL1, DBGDTR_EL0, DBGDTRRX/TX_EL0, OSDTRRX/TX_EL1 | TDA; TDCC (FEAT_FGT), always set | read 0, writes ignored: no debugger listens |
//! | OSECCR_EL1 | TDA | reads 0, writes ignored (external debug's exception catch) |
//! | a write to a read-only one, a read of OSLAR_EL1 | — | undefined |
//!
//! Not switched, so shared by the vCPUs on a CPU that hold the debug registers: the
//! DCC where FEAT_FGT is absent (MDCR_EL2.TDCC does not exist there, and TDA is clear
//! for them), DBGPRCR_EL1.CORENPDRQ, the CLAIM tags and OSECCR_EL1. QEMU 7.2 implements
//! none of DBGPRCR, the CLAIM tags, DBGAUTHSTATUS, OSECCR or the DCC data registers
//! (they are undefined there, for guests and for Bothy alike), so Bothy never touches
//! them.
//!
//! Reference: Arm ARM (DDI 0487) D2 "AArch64 Self-hosted Debug", MDCR_EL2 (TDA, TDOSA,
//! TDRA, TDCC), MDSCR_EL1 (MDE, KDE), OSLSR_EL1, OSDLR_EL1, ID_AA64DFR0_EL1 (BRPs,
//! WRPs), ID_AA64MMFR0_EL1 (FGT).

use super::idregs::{reg, IdRegs};
use super::mdcr::{self as mdcr_el2, MdcrEl2};
use super::SysRegAccess;

/// MDCR_EL2 bits that trap a guest's debug register accesses to EL2.
pub mod mdcr {
    /// Trap Debug Access: everything not under TDOSA or TDRA (breakpoints,
    /// watchpoints, MDSCR_EL1, the DCC, CLAIM tags, ...).
    pub const TDA: u64 = 1 << 9;
    /// Trap Debug OS-related registers: OSLAR, OSLSR, OSDLR, DBGPRCR.
    pub const TDOSA: u64 = 1 << 10;
    /// Trap Debug ROM Address: MDRAR_EL1.
    pub const TDRA: u64 = 1 << 11;
    /// Trap the Debug Communications Channel (only with FEAT_FGT; RES0 without).
    pub const TDCC: u64 = 1 << 27;
}

/// MDSCR_EL1.KDE: debug exceptions at the guest's EL1.
pub const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE: breakpoint, watchpoint and vector catch exceptions.
pub const MDSCR_MDE: u64 = 1 << 15;

/// The most breakpoints (and watchpoints) ID_AA64DFR0_EL1 can count (BRPs/WRPs are
/// 4 bits, number minus one; more need FEAT_Debugv8p9's banks, which guests are not
/// shown and MDCR_EL2.EBWE, left clear, keeps out of reach).
pub const MAX_POINTS: usize = 16;

/// A CPU's debug registers, from its ID registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugShape {
    /// Breakpoints implemented (ID_AA64DFR0_EL1.BRPs + 1).
    pub breakpoints: u8,
    /// Watchpoints implemented (ID_AA64DFR0_EL1.WRPs + 1).
    pub watchpoints: u8,
    /// FEAT_FGT (ID_AA64MMFR0_EL1.FGT): MDCR_EL2.TDCC exists.
    pub tdcc: bool,
}

impl DebugShape {
    /// From ID_AA64DFR0_EL1 and ID_AA64MMFR0_EL1.
    pub const fn from_id(dfr0: u64, mmfr0: u64) -> Self {
        const BRPS_SHIFT: u64 = 12;
        const WRPS_SHIFT: u64 = 20;
        const FGT_SHIFT: u64 = 56;
        Self {
            breakpoints: ((dfr0 >> BRPS_SHIFT) & 0xf) as u8 + 1,
            watchpoints: ((dfr0 >> WRPS_SHIFT) & 0xf) as u8 + 1,
            tdcc: (mmfr0 >> FGT_SHIFT) & 0xf != 0,
        }
    }

    /// The breakpoints and watchpoints a guest of a VM with ID view `view` has.
    pub fn of_view(view: &IdRegs) -> Self {
        Self::from_id(view.get(reg::ID_AA64DFR0_EL1), 0)
    }

    /// Every MDCR_EL2 bit [`Self::traps`] decides; `hyp` keeps the others.
    pub const fn trap_mask(self) -> u64 {
        mdcr::TDA | mdcr::TDOSA | mdcr::TDRA | self.tdcc_bit()
    }

    /// MDCR_EL2's debug trap bits while a vCPU runs: all of them until it has claimed
    /// the debug registers; after, only the ones that are never lifted (MDRAR_EL1, and
    /// the DCC where FEAT_FGT lets it be trapped on its own). Branch-free: it is on
    /// every vCPU switch.
    #[inline(always)]
    pub const fn traps(self, claimed: bool) -> u64 {
        let lifted = (mdcr::TDA | mdcr::TDOSA) * claimed as u64;
        self.trap_mask() & !lifted
    }

    #[inline(always)]
    const fn tdcc_bit(self) -> u64 {
        (self.tdcc as u64) << mdcr::TDCC.trailing_zeros()
    }
}

/// Whether the vCPU running on a CPU whose MDCR_EL2 reads `mdcr_el2` holds the debug
/// registers (its accesses no longer trap).
pub const fn claimed(mdcr_el2: u64) -> bool {
    mdcr_el2 & mdcr::TDA == 0
}

/// The debug registers a vCPU takes with it while it holds them ([`DebugShape`] says
/// how many of each array are real). MDSCR_EL1 is not here: it moves with the EL1
/// registers on every switch. `repr(C)`: `hyp`'s assembly fills the arrays by offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DebugRegs {
    pub bvr: [u64; MAX_POINTS],
    pub bcr: [u64; MAX_POINTS],
    pub wvr: [u64; MAX_POINTS],
    pub wcr: [u64; MAX_POINTS],
    /// OSLSR_EL1.OSLK: the OS lock is locked (restored through OSLAR_EL1).
    pub os_lock: bool,
    /// OSDLR_EL1.DLK: the OS double lock is locked.
    pub double_lock: bool,
}

impl DebugRegs {
    /// After a switch saved them: whether the vCPU keeps the debug registers (they
    /// are restored when it runs next) or goes back to trapped, where they are zero.
    /// It keeps them while any of `shape`'s is non-zero or `mdscr` (its MDSCR_EL1)
    /// enables breakpoint or watchpoint exceptions; a trapped vCPU must have both
    /// clear, or the values another vCPU left in the CPU could fire for it.
    pub fn stays_claimed(&self, shape: DebugShape, mdscr: u64) -> bool {
        let b = usize::from(shape.breakpoints).min(MAX_POINTS);
        let w = usize::from(shape.watchpoints).min(MAX_POINTS);
        let nonzero = |regs: &[u64]| regs.iter().any(|&r| r != 0);
        mdscr & (MDSCR_MDE | MDSCR_KDE) != 0
            || self.os_lock
            || self.double_lock
            || nonzero(&self.bvr[..b])
            || nonzero(&self.bcr[..b])
            || nonzero(&self.wvr[..w])
            || nonzero(&self.wcr[..w])
    }
}

/// The moves `hyp` makes with a CPU's debug registers (MRS/MSR in `hyp`, fields in
/// tests); the functions below decide when.
pub trait DebugHw: MdcrEl2 {
    /// Read `shape`'s breakpoints, watchpoints, OS lock and double lock into `regs`.
    fn save(&mut self, shape: DebugShape, regs: &mut DebugRegs);
    /// Write them from `regs`.
    fn load(&mut self, shape: DebugShape, regs: &DebugRegs);
}

/// A switch away from the vCPU this CPU runs (MDSCR_EL1 `mdscr`): if it holds the debug
/// registers they are saved into `regs`. Returns whether it holds them from now on
/// ([`DebugRegs::stays_claimed`]), which [`load`] needs when it runs again; `false`
/// leaves `regs` as they were (a trapped vCPU's are zero, whatever `regs` says).
#[inline(always)]
pub fn put(hw: &mut impl DebugHw, shape: DebugShape, regs: &mut DebugRegs, mdscr: u64) -> bool {
    if !claimed(hw.mdcr()) {
        return false;
    }
    hw.save(shape, regs);
    regs.stays_claimed(shape, mdscr)
}

/// A switch to a vCPU: its debug registers loaded if it holds them (`claimed`, from
/// [`put`]), and the traps set to match. The traps are written whatever the vCPU before
/// left: a CPU may load a vCPU without saving the one it held (its VM was destroyed).
#[inline(always)]
pub fn load(hw: &mut impl DebugHw, shape: DebugShape, regs: &DebugRegs, claimed: bool) {
    if claimed {
        hw.load(shape, regs);
    }
    set_traps(hw, shape, claimed);
}

/// The running vCPU's first trapped access: its values (zero, as it was trapped) into
/// the CPU, and no more traps ([`crate::arch::Arch::claim_debug`]). Returns `false`,
/// and moves nothing, if it held them already: then something else trapped the access
/// (a fine-grained trap Bothy does not set), and running it again would only trap again.
pub fn claim(hw: &mut impl DebugHw, shape: DebugShape) -> bool {
    if claimed(hw.mdcr()) {
        return false;
    }
    hw.load(shape, &DebugRegs::default());
    set_traps(hw, shape, true);
    true
}

/// The running vCPU is reset: trapped again (whatever it left in the CPU is then
/// unreachable, and a claim loads zeros). `hyp` zeroes its MDSCR_EL1 too.
pub fn reset(hw: &mut impl DebugHw, shape: DebugShape) {
    set_traps(hw, shape, false);
}

/// MDCR_EL2's debug trap bits as [`DebugShape::traps`] says, the other bits kept.
#[inline(always)]
fn set_traps(hw: &mut impl DebugHw, shape: DebugShape, claimed: bool) {
    let now = hw.mdcr();
    mdcr_el2::set_bits(hw, now, shape.trap_mask(), shape.traps(claimed));
}

/// A debug register, as a trapped access names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugReg {
    Bvr(u8),
    Bcr(u8),
    Wvr(u8),
    Wcr(u8),
    Mdscr,
    /// OSLAR_EL1 (write-only).
    Oslar,
    /// OSLSR_EL1 (read-only).
    Oslsr,
    Osdlr,
    Dbgprcr,
    ClaimSet,
    ClaimClr,
    /// DBGAUTHSTATUS_EL1 (read-only).
    AuthStatus,
    /// MDRAR_EL1 (read-only).
    Mdrar,
    /// The Debug Communications Channel: MDCCSR_EL0, MDCCINT_EL1, DBGDTR_EL0,
    /// DBGDTRRX/TX_EL0, OSDTRRX/TX_EL1.
    Dcc,
    OsEccr,
    /// DBGVCR32_EL2 and any other op0 = 2 register that is not EL1's to use.
    Other,
}

impl DebugReg {
    /// The debug register `access` names, if it is in the debug space (op0 = 2, op1 0
    /// or 3; op1 = 1 is the trace unit, trapped by CPTR_EL2.TTA, not here).
    pub const fn of(access: &SysRegAccess) -> Option<Self> {
        if access.op0 != 2 {
            return None;
        }
        let (op1, crn, crm, op2) = (access.op1, access.crn, access.crm, access.op2);
        Some(match (op1, crn, crm, op2) {
            (0, 0, n, 4) => Self::Bvr(n),
            (0, 0, n, 5) => Self::Bcr(n),
            (0, 0, n, 6) => Self::Wvr(n),
            (0, 0, n, 7) => Self::Wcr(n),
            (0, 0, 2, 2) => Self::Mdscr,
            (0, 0, 0, 2) | (0, 0, 2, 0) | (0, 0, 3, 2) => Self::Dcc,
            (0, 0, 6, 2) => Self::OsEccr,
            (0, 1, 0, 0) => Self::Mdrar,
            (0, 1, 0, 4) => Self::Oslar,
            (0, 1, 1, 4) => Self::Oslsr,
            (0, 1, 3, 4) => Self::Osdlr,
            (0, 1, 4, 4) => Self::Dbgprcr,
            (0, 7, 8, 6) => Self::ClaimSet,
            (0, 7, 9, 6) => Self::ClaimClr,
            (0, 7, 14, 6) => Self::AuthStatus,
            (3, 0, 1, 0) | (3, 0, 4, 0) | (3, 0, 5, 0) => Self::Dcc,
            (0 | 3, _, _, _) => Self::Other,
            _ => return None,
        })
    }
}

/// What the exit policy does with a trapped access to a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Give the vCPU the debug registers ([`crate::arch::Arch::claim_debug`]) and let
    /// it execute the instruction again, untrapped: the access is not stepped over.
    Claim,
    /// A read gives 0, a write is ignored; the instruction is stepped over.
    Zero,
    /// An undefined instruction for the guest.
    Undefined,
}

/// The answer to a trapped access in the debug space, for a VM whose guests have
/// `shape`'s breakpoints and watchpoints; `None` for an access outside it.
pub fn answer(access: &SysRegAccess, shape: DebugShape) -> Option<Answer> {
    use DebugReg::*;
    let reg = DebugReg::of(access)?;
    let below = |n: u8, count: u8| n < count;
    let read = access.read;
    Some(match reg {
        Bvr(n) | Bcr(n) if below(n, shape.breakpoints) => Answer::Claim,
        Wvr(n) | Wcr(n) if below(n, shape.watchpoints) => Answer::Claim,
        Bvr(_) | Bcr(_) | Wvr(_) | Wcr(_) => Answer::Undefined,
        Mdscr | Osdlr | Dbgprcr | ClaimSet | ClaimClr => Answer::Claim,
        Oslar if !read => Answer::Claim,
        Oslsr | AuthStatus if read => Answer::Claim,
        Mdrar if read => Answer::Zero,
        Dcc | OsEccr => Answer::Zero,
        Oslar | Oslsr | AuthStatus | Mdrar | Other => Answer::Undefined,
    })
}

#[cfg(test)]
mod tests;
