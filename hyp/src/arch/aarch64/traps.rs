//! EL2's trap controls while guests run: HCR_EL2, CPTR_EL2, MDCR_EL2, CNTHCTL_EL2 and
//! ZCR_EL2, set on each CPU as it comes up ([`init_cpu`]) and HCR_EL2.TWE again when a
//! vCPU is loaded ([`set_hcr`]: a CPU becomes dedicated or shared as pinned VMs come
//! and go). The lazy switches in `context.rs` set and clear their own trap bits as
//! vCPUs claim what they guard: MDCR_EL2.TPM/TPMCR and TDA/TDOSA, HCR_EL2.API/APK,
//! CPTR_EL2.TZ.
//!
//! Outside `arch` these registers are reached only through this file, and no value it
//! writes turns off what keeps a guest contained: stage 2 (HCR_EL2.VM), physical
//! interrupts and SErrors taken to EL2, SMC trapped, EL1 in AArch64, ZCR_EL2 at the
//! 128-bit vectors `context.rs` saves. A CPU adds only the trap bits its ID registers
//! ask for (`bothy_core::exit::idregs::required`), and [`CpuTraps::new`] refuses any it
//! does not know to be safe to add: a trap (it only adds exits) or MDCR_EL2.HCCD (it
//! only stops the cycle counter at EL2).

use super::sysreg::*;
use bothy_core::exit::idregs::{bits, Traps};
use bothy_core::exit::pauth;

// HCR_EL2 (Arm ARM D17.2.48): stage 2 on, physical IRQ/FIQ/SError to EL2,
// trap WFI/WFE and SMC, broadcast maintenance inner shareable, AArch64 EL1,
// and let the guest use pointer authentication without trapping (API/APK: set and
// cleared per vCPU once running, as `bothy_core::exit::pauth` decides). TID3 and the
// traps that hide features come from each CPU's `Traps`.
const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_INNER: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
const HCR_TWE: u64 = 1 << 14;
const HCR_TSC: u64 = 1 << 19;
const HCR_RW: u64 = 1 << 31;
const HCR_APK: u64 = 1 << 40;
const HCR_API: u64 = 1 << 41;
const HCR_GUEST: u64 = HCR_VM
    | HCR_SWIO
    | HCR_FMO
    | HCR_IMO
    | HCR_AMO
    | HCR_FB
    | HCR_BSU_INNER
    | HCR_TWI
    | HCR_TWE
    | HCR_TSC
    | HCR_RW
    | HCR_APK
    | HCR_API;
/// HCR_EL2 bits a CPU may add: traps of ID registers, RAS error records, LORegions.
const HCR_EXTRA: u64 = bits::HCR_TID3 | 1 << bits::HCR_TERR | 1 << bits::HCR_TLOR;

/// CPTR_EL2 (nVHE): RES1 bits only, so FP/SIMD and SVE are not trapped.
const CPTR_EL2_RES1: u64 = (1 << 13) | (1 << 9) | 0xff;
/// CPTR_EL2 bits a CPU may add: SVE, SME, trace and AMU traps.
const CPTR_EXTRA: u64 =
    1 << bits::CPTR_TZ | 1 << bits::CPTR_TSM | 1 << bits::CPTR_TTA | 1 << bits::CPTR_TAM;

/// MDCR_EL2.HPMN (the counters the guest gets): PMCR_EL0.N, all of them.
const PMCR_N_SHIFT: u32 = 11;
const PMCR_N_MASK: u64 = 0x1f;
/// MDCR_EL2.HPMD: no event counting at EL2 (a guest must not time or profile Bothy).
const MDCR_EL2_HPMD: u64 = 1 << 17;
/// MDCR_EL2 bits a CPU may add: SPE and trace-filter traps, and HCCD (no cycle
/// counting at EL2 from PMUv3p5). Not TPM/TPMCR: those are the lazy PMU switch's
/// (`bothy_core::exit::pmu`, in `context.rs`), which clears them when a vCPU claims the
/// PMU, so a CPU could not keep the PMU hidden with them.
const MDCR_EXTRA: u64 = 1 << bits::MDCR_TPMS | 1 << bits::MDCR_TTRF | bits::MDCR_HCCD;

/// CNTHCTL_EL2: EL1 may read the physical counter; the EL1 physical timer traps.
const CNTHCTL_EL1PCTEN: u64 = 1 << 0;

/// Bothy's own trap controls, as the ID-register view reads them (which features its
/// enable bits, such as HCR_EL2.API, leave to guests).
pub const fn own() -> Traps {
    Traps {
        hcr: HCR_GUEST,
        cptr: CPTR_EL2_RES1,
        mdcr: 0,
    }
}

/// One CPU's trap controls: Bothy's own bits and the traps its ID registers ask for.
/// Made only by [`CpuTraps::new`], so every value keeps Bothy's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTraps {
    hcr: u64,
    cptr: u64,
    mdcr: u64,
}

impl CpuTraps {
    /// Bothy's bits plus `extra` (`bothy_core::exit::idregs::required` for the CPU).
    /// `Err` holds the bits of `extra` not known here to be safe to add (a new pairing in
    /// the ID-register table that needs listing here).
    pub fn new(extra: &Traps) -> Result<CpuTraps, Traps> {
        let unknown = Traps {
            hcr: extra.hcr & !HCR_EXTRA,
            cptr: extra.cptr & !CPTR_EXTRA,
            mdcr: extra.mdcr & !MDCR_EXTRA,
        };
        if unknown != Traps::default() {
            return Err(unknown);
        }
        Ok(CpuTraps {
            hcr: HCR_GUEST | extra.hcr,
            cptr: CPTR_EL2_RES1 | extra.cptr,
            mdcr: MDCR_EL2_HPMD | extra.mdcr,
        })
    }
}

/// Set this CPU's trap controls for running guests, but for HCR_EL2 ([`set_hcr`]).
/// `sve`: the CPU has SVE, and guests get 128-bit vectors (ZCR_EL2.LEN = 0), the size a
/// vCPU switch saves the Z registers at (`context.rs`).
pub fn init_cpu(traps: &CpuTraps, sve: bool) {
    // With E2H = 0, CPTR_EL2.TSM traps EL2's own SME accesses too: SMCR_EL2 is left
    // alone, as SME is not offered to guests (ZA and streaming mode are not switched).
    write_cptr_el2(traps.cptr);
    if sve {
        write_zcr_el2(0);
    }
    // All PMU counters belong to the guest (HPMN = PMCR_EL0.N), and none counts events
    // at EL2 (HPMD, and HCCD for the cycle counter from PMUv3p5). TPM and TPMCR start
    // clear, so the first vCPU loaded here that does not hold the PMU stops whatever
    // firmware left in it as it sets them (`bothy_core::exit::pmu::load`); from then on
    // `context.rs` sets and clears them as vCPUs come and claim the PMU.
    write_mdcr_el2(((read_pmcr_el0() >> PMCR_N_SHIFT) & PMCR_N_MASK) | traps.mdcr);
    write_cnthctl_el2(CNTHCTL_EL1PCTEN);
}

/// HCR_EL2 with WFE trapped (a shared CPU: WFE yields) or not (a dedicated CPU has
/// nobody to yield to), written only if it changes.
#[inline(always)]
pub fn set_hcr(traps: &CpuTraps, trap_wfe: bool) {
    let hcr = if trap_wfe {
        traps.hcr
    } else {
        traps.hcr & !HCR_TWE
    };
    // API and APK are the lazy key switch's (`bothy_core::exit::pauth`, in
    // `context.rs`): they stay as the loaded vCPU's claim left them.
    let now = read_hcr_el2();
    let hcr = (hcr & !pauth::hcr::BOTH) | (now & pauth::hcr::BOTH);
    if now != hcr {
        write_hcr_el2(hcr);
        isb();
    }
}
