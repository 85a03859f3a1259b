//! Pointer-authentication keys: whose they are while a vCPU runs, and when they move
//! with it.
//!
//! A CPU with FEAT_PAuth has five 128-bit keys (APIA, APIB, APDA, APDB, APGA: ten
//! system registers), and a guest kernel that uses them (Linux with
//! `CONFIG_ARM64_PTR_AUTH`) signs return addresses with them in every function. Moving
//! them on every vCPU switch costs some forty instructions (`vcpu_switch` is a measured
//! hot path) also for guests that never use them: bare-metal code, RTOSes, the bench
//! guest. So they are switched lazily, as the PMU is ([`super::pmu`]):
//!
//! - **Trapped.** A vCPU that does not hold the keys runs with HCR_EL2.API and APK
//!   clear: every pointer-authentication instruction its EL1 or EL0 has enabled
//!   (SCTLR_EL1.EnIA and the like; a disabled one is a NOP and never traps, and PACGA,
//!   which no enable bit controls, always does) traps with ESR class 0x09
//!   ([`ec::PAUTH`]), and every MRS or MSR of a key register traps as a system-register
//!   access ([`is_key_register`]). A switch to or from it moves no key ([`put`],
//!   [`load`]: an MRS of HCR_EL2 and a test each way).
//! - **Claimed.** Its first trapped instruction has `hyp` load its saved keys into the
//!   CPU and set API and APK ([`claim`], [`crate::arch::Arch::claim_pauth`]); the
//!   instruction is not stepped over, so the guest executes it again, untrapped, with
//!   its own keys.
//! - **Switched.** While a vCPU holds the keys, every switch away saves them and every
//!   switch back restores them. After a save it keeps them while any key is non-zero
//!   ([`PauthKeys::stays_claimed`]): a guest that set keys uses them. One whose keys
//!   are all zero goes back to trapped, with nothing lost (zeros are what it would be
//!   loaded with).
//! - **Reset** (PSCI CPU_ON, a VM's restart): the CPU's keys are zeroed and the vCPU
//!   holds them ([`reset`]), so it starts with zero keys whatever its previous
//!   incarnation saved, and its next switch finds them zero and traps it again.
//!
//! Whether the vCPU a CPU runs holds the keys is HCR_EL2.API itself ([`claimed`]):
//! `hyp` sets it from the vCPU's saved state when it loads one ([`load`]), sets it on a
//! claim ([`claim`]) and a reset ([`reset`]), and reads it when it saves ([`put`]).
//!
//! ## Why a trapped vCPU cannot see, or use, the keys of the one before it
//! A switch from a vCPU that holds the keys to one that does not leaves the first one's
//! keys in the CPU (zeroing them would cost the writes laziness saves). The second
//! cannot read them (APK clear: every key-register access traps, and a claim loads its
//! own keys before the access runs again) nor sign or authenticate with them (API
//! clear: every enabled pointer-authentication instruction traps before it uses a
//! key, and a disabled one uses none).
//!
//! Reference: Arm ARM (DDI 0487) D8.8 "Pointer authentication", HCR_EL2.API and APK,
//! ESR_ELx EC 0x09 ("trapped pointer authentication instruction"), the key
//! registers `AP{IA,IB,DA,DB,GA}Key{Lo,Hi}_EL1` (op0 3, op1 0, CRn 2, CRm 1–3).

use super::SysRegAccess;

/// HCR_EL2 bits that leave pointer authentication to the guest.
pub mod hcr {
    /// Key registers accessible at EL1 (clear: their accesses trap to EL2).
    pub const APK: u64 = 1 << 40;
    /// Pointer-authentication instructions do not trap (clear: they trap to EL2).
    pub const API: u64 = 1 << 41;
    /// Both: what a vCPU that holds the keys runs with.
    pub const BOTH: u64 = APK | API;
}

/// ESR_EL2 class of a pointer-authentication instruction trapped by HCR_EL2.API.
pub mod ec {
    pub const PAUTH: u32 = 0x09;
}

/// Whether the vCPU running on a CPU whose HCR_EL2 reads `hcr_el2` holds the keys.
#[inline(always)]
pub const fn claimed(hcr_el2: u64) -> bool {
    hcr_el2 & hcr::API != 0
}

/// A vCPU's keys, as its last save left them (zero for a new vCPU): APIAKeyLo/Hi,
/// APIBKeyLo/Hi, APDAKeyLo/Hi, APDBKeyLo/Hi, APGAKeyLo/Hi.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauthKeys(pub [u64; 10]);

impl PauthKeys {
    /// Every key at zero (what a reset leaves).
    pub const RESET: PauthKeys = PauthKeys([0; 10]);

    /// After a switch saved them: whether the vCPU keeps the keys (they are restored
    /// when it runs next) or goes back to trapped. It keeps them while any is set.
    pub fn stays_claimed(&self) -> bool {
        self.0.iter().any(|&k| k != 0)
    }
}

/// The moves `hyp` makes with a CPU's keys and HCR_EL2 (MRS/MSR in `hyp`, fields in
/// tests); the functions below decide when.
pub trait PauthHw {
    /// HCR_EL2 as it is.
    fn hcr(&self) -> u64;
    /// Write HCR_EL2 (the `ERET` that resumes the guest synchronises it).
    fn set_hcr(&mut self, value: u64);
    /// Read the ten key registers into `keys`.
    fn save(&mut self, keys: &mut PauthKeys);
    /// Write the ten key registers from `keys`.
    fn load(&mut self, keys: &PauthKeys);
}

/// A switch away from the vCPU this CPU runs: if it holds the keys they are saved into
/// `keys`. Returns whether it holds them from now on ([`PauthKeys::stays_claimed`]),
/// which [`load`] needs when it runs again; `false` with nothing moved if it did not
/// hold them (`keys` keeps what it had).
#[inline(always)]
pub fn put(hw: &mut impl PauthHw, keys: &mut PauthKeys) -> bool {
    if !claimed(hw.hcr()) {
        return false;
    }
    hw.save(keys);
    keys.stays_claimed()
}

/// A switch to a vCPU: its keys loaded if it holds them (`claimed`, from [`put`]), then
/// API and APK set to match.
#[inline(always)]
pub fn load(hw: &mut impl PauthHw, keys: &PauthKeys, claimed: bool) {
    if claimed {
        hw.load(keys);
    }
    set_traps(hw, claimed);
}

/// The running vCPU's first trapped use: its saved keys into the CPU, and no more
/// traps ([`crate::arch::Arch::claim_pauth`]). Returns `false`, and moves nothing, if
/// it held them already: then something else trapped the instruction, and running it
/// again would only trap again.
pub fn claim(hw: &mut impl PauthHw, keys: &PauthKeys) -> bool {
    if claimed(hw.hcr()) {
        return false;
    }
    hw.load(keys);
    set_traps(hw, true);
    true
}

/// The running vCPU is reset: the CPU's keys zeroed, and the vCPU holds them.
pub fn reset(hw: &mut impl PauthHw) {
    hw.load(&PauthKeys::RESET);
    set_traps(hw, true);
}

/// HCR_EL2 with API and APK set (`claimed`) or clear, the other bits kept; written only
/// if that changes it.
#[inline(always)]
fn set_traps(hw: &mut impl PauthHw, claimed: bool) {
    let now = hw.hcr();
    let want = (now & !hcr::BOTH) | if claimed { hcr::BOTH } else { 0 };
    if want != now {
        hw.set_hcr(want);
    }
}

/// Whether a trapped system-register access names a key register
/// (`AP{IA,IB,DA,DB,GA}Key{Lo,Hi}_EL1`), which HCR_EL2.APK traps.
pub fn is_key_register(access: &SysRegAccess) -> bool {
    access.op0 == 3
        && access.op1 == 0
        && access.crn == 2
        && match access.crm {
            1 | 2 => access.op2 <= 3,
            3 => access.op2 <= 1,
            _ => false,
        }
}

#[cfg(test)]
mod tests;
