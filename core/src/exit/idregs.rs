//! The ID registers a guest reads: the host's, less what Bothy does not let it use.
//!
//! A guest decides which features to use from its ID registers. Left alone it reads
//! the host's, and a feature Bothy traps (or does not switch between vCPUs) then looks
//! usable: a stock Linux guest on a CPU with MTE sees MTE, writes `TFSR_EL1`, which
//! HCR_EL2.ATA = 0 traps, and gets an undefined instruction at boot. So `hyp` sets
//! HCR_EL2.TID3, every read of the ID space traps, and the exit policy answers it from
//! a view computed once at boot by [`machine_view`] (every CPU's registers combined,
//! then [`sanitise`]d): the exit path only indexes a table.
//!
//! ## Which registers
//! TID3 traps the whole space op0 = 3, op1 = 0, CRn = 0, CRm = 1..=7 (56 encodings,
//! [`IdReg`]): ID_AA64PFR0..2, ZFR0, SMFR0, FPFR0, DFR0..2, AFR0..1, ISAR0..3, MMFR0..4,
//! the AArch32 ID_PFR*, ID_DFR*, ID_AFR0, ID_MMFR*, ID_ISAR*, MVFR*, and the encodings
//! not allocated yet. Unallocated ones read as zero, as on hardware. The ID registers
//! are read-only: a write is an undefined instruction (the hardware raises it without
//! an exit; if one reaches Bothy it injects the same). MIDR/MPIDR/REVIDR (CRm = 0) are
//! not in the space: VPIDR_EL2/VMPIDR_EL2 give those.
//!
//! ## How a field is chosen
//! Every field is 4 bits. The view starts from zero and copies, field by field, only
//! the fields listed in [`KNOWN`], each with a rule: the host's value, the host's value
//! capped at a version Bothy knows, or the IPA size Bothy's stage 2 gives. A field not
//! listed reads 0, which for every field allocated since Armv8.0 means "not
//! implemented": a feature newer than this table stays hidden until someone decides
//! Bothy handles it. The few fields whose zero means "implemented" (FP, AdvSIMD,
//! TGran4, TGran64, DoubleLock) are listed, so they never read 0 by accident. Notable
//! fields left out, and why:
//! - EL2 features (ID_AA64PFR0.EL2, VH, NV, FGT, ECV's EL2 half, stage-2 granules,
//!   VMIDBits, TWED, HCX, XNX, FWB, EVT, IDS, HPMN0): a guest has no EL2.
//! - AArch32 at EL1 (ID_AA64PFR0.EL1 reads "AArch64 only"): EL1 is AArch64
//!   (HCR_EL2.RW). AArch32 at EL0 is shown as the host has it (32-bit user space runs,
//!   `exit/aarch32.rs`), and with it the AArch32 registers that describe what EL0 code
//!   may execute ([`AARCH32_EL0_ISA`]: ID_ISAR0–6, MVFR0–2 whole; ID_PFR0's instruction
//!   set states, DIT and CSV2 ≤ 1); every other AArch32 ID register (EL1's memory
//!   model, debug, PFR1/2, AFR0) reads 0.
//! - BigEnd, BigEndEL0: Bothy's MMIO emulation is little-endian only.
//! - WFxT: WFIT/WFET trap (HCR_EL2.TWI/TWE) and Bothy's WFx exit does not honour
//!   their timeout, so a guest could block for longer than it asked.
//! - MOPS, LS64, NMI, GCS, THE, TME, S1POE and other state or controls that need HCRX_EL2
//!   or registers Bothy does not switch; MPAM, SPE, BRBE, trace buffer: not offered.
//! - ID_AA64SMFR0, ID_AA64FPFR0, ID_AA64PFR2, ISAR3, MMFR3/4, DFR1/2, AFR0/1: nothing
//!   in them is offered yet.
//!
//! ## Traps and the fields that hide them
//! [`PAIRINGS`] is the one place that pairs each trap decision with the fields that
//! hide the feature it traps: if the trap is in effect (the bit set, or for the
//! enable bits like HCR_EL2.ATA, clear), those fields are capped. Both directions read
//! it: [`required`] says which trap bits `hyp` must set on this host (TSM always, TAM,
//! TERR, TLOR, TPMS, TTA, TTRF where the feature exists), and [`sanitise`] reads the
//! registers `hyp` actually writes, so a trap dropped later shows the feature again
//! rather than leaving a hidden one trapped or a trapped one visible.
//!
//! | trap | feature | hidden in |
//! |---|---|---|
//! | HCR_EL2.ATA = 0 | MTE: no tag storage in stage 2, tag registers trap | PFR1.MTE, MTE_frac, MTEX |
//! | HCR_EL2.EnSCXT = 0 | SCXTNUM_EL0/EL1 trap (and are not switched) | PFR0.CSV2 ≤ 1, PFR1.CSV2_frac ≤ 1 |
//! | HCR_EL2.API/APK = 0 | pointer authentication (Bothy switches the keys and sets both) | ISAR1.APA/API/GPA/GPI, ISAR2.APA3/GPA3/PAC_frac |
//! | HCR_EL2.TERR | RAS error records are the machine's, not a VM's | PFR0.RAS, PFR1.RAS_frac, MMFR2.IESB |
//! | HCR_EL2.TLOR | LORegions registers are not switched | MMFR1.LO |
//! | CPTR_EL2.TZ | SVE (not set: SVE is switched at a 128-bit vector length) | PFR0.SVE, ZFR0 |
//! | CPTR_EL2.TSM | SME: ZA and streaming mode are not switched | PFR1.SME, SMFR0 |
//! | CPTR_EL2.TAM | activity monitors count for the whole CPU | PFR0.AMU |
//! | CPTR_EL2.TTA | trace unit registers | DFR0.TraceVer |
//! | MDCR_EL2.TPM | the PMU (not set for good: set only until a vCPU uses the PMU, [`super::pmu`]; HPMD keeps EL2 out) | DFR0.PMUVer, PMSS |
//! | MDCR_EL2.TPMS | statistical profiling | DFR0.PMSVer |
//! | MDCR_EL2.TTRF | trace filter controls | DFR0.TraceFilt |
//!
//! Debug is not in the table: breakpoints and watchpoints are mandatory, so the ID
//! registers cannot say "none"; Bothy traps them only until a vCPU uses them, then
//! switches them with it ([`super::debug`]; DebugVer capped at Armv8.8, the counts
//! the host's, which are the ones switched). The PMU is shown (PMUVer capped at PMUv3p8, an
//! IMPLEMENTATION DEFINED PMU read as none) because Bothy gives it to every vCPU (trapped
//! only until the vCPU's first access, then switched with it, [`super::pmu`]); `required`
//! also asks for MDCR_EL2.HCCD on PMUv3p5 and later, where HPMD alone no longer keeps
//! the cycle counter from counting at EL2. The GIC field reads GICv3 (the virtual CPU
//! interface Bothy gives), not GICv4.1.
//!
//! ## A machine of CPUs that differ
//! vCPUs move between physical CPUs, so a VM's view must hold on every one of them:
//! [`machine_view`] combines the ID registers of every CPU Bothy brings up, field by
//! field, into the value that promises no more than any of them ([`combine`], by the
//! [`Combine`] rule of each field, as Linux sanitises its own CPUs' registers in
//! arch/arm64/kernel/cpufeature.c: the lower value for most fields; signed for the few
//! where 0xF means "not implemented"; the higher for SpecSEI; a safe value when an
//! `FTR_EXACT` field differs), and sanitises that. Traps are per CPU: each sets what
//! [`required`] asks for *its* features ([`cpu_traps`]; a bit such as HCR_EL2.TERR is
//! RES0 on a CPU without the feature, and MDCR_EL2.HCCD must be set on a PMUv3p5 CPU
//! even if another has an older PMU), and the view hides what any CPU traps.

use super::SysRegAccess;

/// Encodings in the trapped ID space (CRm 1..=7, op2 0..=7).
pub const ID_SPACE_LEN: usize = 56;

/// A register of the ID space, by CRm and op2 (op0 = 3, op1 = 0, CRn = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdReg {
    pub crm: u8,
    pub op2: u8,
}

impl IdReg {
    pub const fn new(crm: u8, op2: u8) -> Self {
        Self { crm, op2 }
    }

    /// Position in [`IdRegs`]; `crm` 1..=7 and `op2` 0..=7 give 0..56. Anything else
    /// gives a position past the end (which reads 0), never a panic.
    pub const fn index(self) -> usize {
        if self.crm == 0 || self.op2 > 7 {
            return usize::MAX;
        }
        (self.crm as usize - 1) * 8 + self.op2 as usize
    }

    /// The register at position `index` (< [`ID_SPACE_LEN`]).
    pub const fn at(index: usize) -> Self {
        Self::new((index / 8 + 1) as u8, (index % 8) as u8)
    }

    /// The ID-space register a trapped MRS/MSR names, if it is one.
    pub const fn of(access: &SysRegAccess) -> Option<Self> {
        if access.op0 == 3
            && access.op1 == 0
            && access.crn == 0
            && access.crm >= 1
            && access.crm <= 7
            && access.op2 <= 7
        {
            Some(Self::new(access.crm, access.op2))
        } else {
            None
        }
    }
}

/// The ID registers Bothy names (Arm ARM D23.2).
pub mod reg {
    use super::IdReg;
    pub const ID_PFR0_EL1: IdReg = IdReg::new(1, 0);
    pub const ID_DFR0_EL1: IdReg = IdReg::new(1, 2);
    pub const MVFR0_EL1: IdReg = IdReg::new(3, 0);
    pub const ID_AA64PFR0_EL1: IdReg = IdReg::new(4, 0);
    pub const ID_AA64PFR1_EL1: IdReg = IdReg::new(4, 1);
    pub const ID_AA64PFR2_EL1: IdReg = IdReg::new(4, 2);
    pub const ID_AA64ZFR0_EL1: IdReg = IdReg::new(4, 4);
    pub const ID_AA64SMFR0_EL1: IdReg = IdReg::new(4, 5);
    pub const ID_AA64FPFR0_EL1: IdReg = IdReg::new(4, 7);
    pub const ID_AA64DFR0_EL1: IdReg = IdReg::new(5, 0);
    pub const ID_AA64DFR1_EL1: IdReg = IdReg::new(5, 1);
    pub const ID_AA64AFR0_EL1: IdReg = IdReg::new(5, 4);
    pub const ID_AA64ISAR0_EL1: IdReg = IdReg::new(6, 0);
    pub const ID_AA64ISAR1_EL1: IdReg = IdReg::new(6, 1);
    pub const ID_AA64ISAR2_EL1: IdReg = IdReg::new(6, 2);
    pub const ID_AA64ISAR3_EL1: IdReg = IdReg::new(6, 3);
    pub const ID_AA64MMFR0_EL1: IdReg = IdReg::new(7, 0);
    pub const ID_AA64MMFR1_EL1: IdReg = IdReg::new(7, 1);
    pub const ID_AA64MMFR2_EL1: IdReg = IdReg::new(7, 2);
    pub const ID_AA64MMFR3_EL1: IdReg = IdReg::new(7, 3);
}

/// A 4-bit field of an ID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub reg: IdReg,
    pub shift: u8,
}

const fn f(reg: IdReg, shift: u8) -> Field {
    Field { reg, shift }
}

/// The fields Bothy names, `<REGISTER>_<FIELD>` with the `ID_AA64` and `_EL1` dropped.
pub mod field {
    use super::reg::*;
    use super::{f, Field};
    pub const PFR0_EL0: Field = f(ID_AA64PFR0_EL1, 0);
    pub const PFR0_EL1: Field = f(ID_AA64PFR0_EL1, 4);
    pub const PFR0_EL2: Field = f(ID_AA64PFR0_EL1, 8);
    pub const PFR0_EL3: Field = f(ID_AA64PFR0_EL1, 12);
    pub const PFR0_FP: Field = f(ID_AA64PFR0_EL1, 16);
    pub const PFR0_ADVSIMD: Field = f(ID_AA64PFR0_EL1, 20);
    pub const PFR0_GIC: Field = f(ID_AA64PFR0_EL1, 24);
    pub const PFR0_RAS: Field = f(ID_AA64PFR0_EL1, 28);
    pub const PFR0_SVE: Field = f(ID_AA64PFR0_EL1, 32);
    pub const PFR0_MPAM: Field = f(ID_AA64PFR0_EL1, 40);
    pub const PFR0_AMU: Field = f(ID_AA64PFR0_EL1, 44);
    pub const PFR0_DIT: Field = f(ID_AA64PFR0_EL1, 48);
    pub const PFR0_CSV2: Field = f(ID_AA64PFR0_EL1, 56);
    pub const PFR0_CSV3: Field = f(ID_AA64PFR0_EL1, 60);

    pub const PFR1_BT: Field = f(ID_AA64PFR1_EL1, 0);
    pub const PFR1_SSBS: Field = f(ID_AA64PFR1_EL1, 4);
    pub const PFR1_MTE: Field = f(ID_AA64PFR1_EL1, 8);
    pub const PFR1_RAS_FRAC: Field = f(ID_AA64PFR1_EL1, 12);
    pub const PFR1_SME: Field = f(ID_AA64PFR1_EL1, 24);
    pub const PFR1_CSV2_FRAC: Field = f(ID_AA64PFR1_EL1, 32);
    pub const PFR1_NMI: Field = f(ID_AA64PFR1_EL1, 36);
    pub const PFR1_MTE_FRAC: Field = f(ID_AA64PFR1_EL1, 40);
    pub const PFR1_GCS: Field = f(ID_AA64PFR1_EL1, 44);
    pub const PFR1_MTEX: Field = f(ID_AA64PFR1_EL1, 52);

    pub const ZFR0_SVEVER: Field = f(ID_AA64ZFR0_EL1, 0);
    pub const ZFR0_AES: Field = f(ID_AA64ZFR0_EL1, 4);
    pub const ZFR0_BITPERM: Field = f(ID_AA64ZFR0_EL1, 16);
    pub const ZFR0_BF16: Field = f(ID_AA64ZFR0_EL1, 20);
    pub const ZFR0_B16B16: Field = f(ID_AA64ZFR0_EL1, 24);
    pub const ZFR0_SHA3: Field = f(ID_AA64ZFR0_EL1, 32);
    pub const ZFR0_SM4: Field = f(ID_AA64ZFR0_EL1, 40);
    pub const ZFR0_I8MM: Field = f(ID_AA64ZFR0_EL1, 44);
    pub const ZFR0_F32MM: Field = f(ID_AA64ZFR0_EL1, 52);
    pub const ZFR0_F64MM: Field = f(ID_AA64ZFR0_EL1, 56);

    pub const DFR0_DEBUGVER: Field = f(ID_AA64DFR0_EL1, 0);
    pub const DFR0_TRACEVER: Field = f(ID_AA64DFR0_EL1, 4);
    pub const DFR0_PMUVER: Field = f(ID_AA64DFR0_EL1, 8);
    pub const DFR0_BRPS: Field = f(ID_AA64DFR0_EL1, 12);
    pub const DFR0_PMSS: Field = f(ID_AA64DFR0_EL1, 16);
    pub const DFR0_WRPS: Field = f(ID_AA64DFR0_EL1, 20);
    pub const DFR0_CTX_CMPS: Field = f(ID_AA64DFR0_EL1, 28);
    pub const DFR0_PMSVER: Field = f(ID_AA64DFR0_EL1, 32);
    pub const DFR0_DOUBLELOCK: Field = f(ID_AA64DFR0_EL1, 36);
    pub const DFR0_TRACEFILT: Field = f(ID_AA64DFR0_EL1, 40);

    pub const ISAR0_AES: Field = f(ID_AA64ISAR0_EL1, 4);
    pub const ISAR0_SHA1: Field = f(ID_AA64ISAR0_EL1, 8);
    pub const ISAR0_SHA2: Field = f(ID_AA64ISAR0_EL1, 12);
    pub const ISAR0_CRC32: Field = f(ID_AA64ISAR0_EL1, 16);
    pub const ISAR0_ATOMIC: Field = f(ID_AA64ISAR0_EL1, 20);
    pub const ISAR0_TME: Field = f(ID_AA64ISAR0_EL1, 24);
    pub const ISAR0_RDM: Field = f(ID_AA64ISAR0_EL1, 28);
    pub const ISAR0_SHA3: Field = f(ID_AA64ISAR0_EL1, 32);
    pub const ISAR0_SM3: Field = f(ID_AA64ISAR0_EL1, 36);
    pub const ISAR0_SM4: Field = f(ID_AA64ISAR0_EL1, 40);
    pub const ISAR0_DP: Field = f(ID_AA64ISAR0_EL1, 44);
    pub const ISAR0_FHM: Field = f(ID_AA64ISAR0_EL1, 48);
    pub const ISAR0_TS: Field = f(ID_AA64ISAR0_EL1, 52);
    pub const ISAR0_TLB: Field = f(ID_AA64ISAR0_EL1, 56);
    pub const ISAR0_RNDR: Field = f(ID_AA64ISAR0_EL1, 60);

    pub const ISAR1_DPB: Field = f(ID_AA64ISAR1_EL1, 0);
    pub const ISAR1_APA: Field = f(ID_AA64ISAR1_EL1, 4);
    pub const ISAR1_API: Field = f(ID_AA64ISAR1_EL1, 8);
    pub const ISAR1_JSCVT: Field = f(ID_AA64ISAR1_EL1, 12);
    pub const ISAR1_FCMA: Field = f(ID_AA64ISAR1_EL1, 16);
    pub const ISAR1_LRCPC: Field = f(ID_AA64ISAR1_EL1, 20);
    pub const ISAR1_GPA: Field = f(ID_AA64ISAR1_EL1, 24);
    pub const ISAR1_GPI: Field = f(ID_AA64ISAR1_EL1, 28);
    pub const ISAR1_FRINTTS: Field = f(ID_AA64ISAR1_EL1, 32);
    pub const ISAR1_SB: Field = f(ID_AA64ISAR1_EL1, 36);
    pub const ISAR1_SPECRES: Field = f(ID_AA64ISAR1_EL1, 40);
    pub const ISAR1_BF16: Field = f(ID_AA64ISAR1_EL1, 44);
    pub const ISAR1_DGH: Field = f(ID_AA64ISAR1_EL1, 48);
    pub const ISAR1_I8MM: Field = f(ID_AA64ISAR1_EL1, 52);
    pub const ISAR1_LS64: Field = f(ID_AA64ISAR1_EL1, 60);

    pub const ISAR2_WFXT: Field = f(ID_AA64ISAR2_EL1, 0);
    pub const ISAR2_RPRES: Field = f(ID_AA64ISAR2_EL1, 4);
    pub const ISAR2_GPA3: Field = f(ID_AA64ISAR2_EL1, 8);
    pub const ISAR2_APA3: Field = f(ID_AA64ISAR2_EL1, 12);
    pub const ISAR2_MOPS: Field = f(ID_AA64ISAR2_EL1, 16);
    pub const ISAR2_BC: Field = f(ID_AA64ISAR2_EL1, 20);
    pub const ISAR2_PAC_FRAC: Field = f(ID_AA64ISAR2_EL1, 24);
    pub const ISAR2_CLRBHB: Field = f(ID_AA64ISAR2_EL1, 28);
    pub const ISAR2_CSSC: Field = f(ID_AA64ISAR2_EL1, 52);

    pub const MMFR0_PARANGE: Field = f(ID_AA64MMFR0_EL1, 0);
    pub const MMFR0_ASIDBITS: Field = f(ID_AA64MMFR0_EL1, 4);
    pub const MMFR0_BIGEND: Field = f(ID_AA64MMFR0_EL1, 8);
    pub const MMFR0_BIGENDEL0: Field = f(ID_AA64MMFR0_EL1, 16);
    pub const MMFR0_TGRAN16: Field = f(ID_AA64MMFR0_EL1, 20);
    pub const MMFR0_TGRAN64: Field = f(ID_AA64MMFR0_EL1, 24);
    pub const MMFR0_TGRAN4: Field = f(ID_AA64MMFR0_EL1, 28);
    pub const MMFR0_FGT: Field = f(ID_AA64MMFR0_EL1, 56);
    pub const MMFR0_ECV: Field = f(ID_AA64MMFR0_EL1, 60);

    pub const MMFR1_HAFDBS: Field = f(ID_AA64MMFR1_EL1, 0);
    pub const MMFR1_VMIDBITS: Field = f(ID_AA64MMFR1_EL1, 4);
    pub const MMFR1_VH: Field = f(ID_AA64MMFR1_EL1, 8);
    pub const MMFR1_HPDS: Field = f(ID_AA64MMFR1_EL1, 12);
    pub const MMFR1_LO: Field = f(ID_AA64MMFR1_EL1, 16);
    pub const MMFR1_PAN: Field = f(ID_AA64MMFR1_EL1, 20);
    pub const MMFR1_SPECSEI: Field = f(ID_AA64MMFR1_EL1, 24);
    pub const MMFR1_ETS: Field = f(ID_AA64MMFR1_EL1, 36);
    pub const MMFR1_AFP: Field = f(ID_AA64MMFR1_EL1, 44);
    pub const MMFR1_NTLBPA: Field = f(ID_AA64MMFR1_EL1, 48);
    pub const MMFR1_ECBHB: Field = f(ID_AA64MMFR1_EL1, 60);

    pub const MMFR2_CNP: Field = f(ID_AA64MMFR2_EL1, 0);
    pub const MMFR2_UAO: Field = f(ID_AA64MMFR2_EL1, 4);
    pub const MMFR2_IESB: Field = f(ID_AA64MMFR2_EL1, 12);
    pub const MMFR2_VARANGE: Field = f(ID_AA64MMFR2_EL1, 16);
    pub const MMFR2_CCIDX: Field = f(ID_AA64MMFR2_EL1, 20);
    pub const MMFR2_NV: Field = f(ID_AA64MMFR2_EL1, 24);
    pub const MMFR2_ST: Field = f(ID_AA64MMFR2_EL1, 28);
    pub const MMFR2_AT: Field = f(ID_AA64MMFR2_EL1, 32);
    pub const MMFR2_TTL: Field = f(ID_AA64MMFR2_EL1, 48);
    pub const MMFR2_BBM: Field = f(ID_AA64MMFR2_EL1, 52);
    pub const MMFR2_E0PD: Field = f(ID_AA64MMFR2_EL1, 60);
}

/// What the view shows of a field in [`KNOWN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The host's value: the guest uses the feature directly, and whatever state it
    /// has is switched between vCPUs (or it has none).
    Host,
    /// The host's value, at most this: later values add what Bothy does not handle.
    Max(u8),
    /// A version field where 0xF means IMPLEMENTATION DEFINED (PMUVer): capped like
    /// `Max`, and 0xF reads 0 (an interface Bothy knows nothing of is not offered).
    Version(u8),
    /// ID_AA64MMFR0.PARange: the host's, at most the smallest range that covers the
    /// IPA size of Bothy's stage 2 (a guest address beyond it aborts anyway).
    PaRange,
}

/// The AArch32 registers copied whole when the view shows AArch32 at EL0: instruction
/// sets and FP/SIMD features, no state Bothy would have to switch.
pub const AARCH32_EL0_ISA: [IdReg; 10] = [
    IdReg::new(2, 0), // ID_ISAR0
    IdReg::new(2, 1), // ID_ISAR1
    IdReg::new(2, 2), // ID_ISAR2
    IdReg::new(2, 3), // ID_ISAR3
    IdReg::new(2, 4), // ID_ISAR4
    IdReg::new(2, 5), // ID_ISAR5
    IdReg::new(2, 7), // ID_ISAR6
    IdReg::new(3, 0), // MVFR0
    IdReg::new(3, 1), // MVFR1
    IdReg::new(3, 2), // MVFR2
];

/// ID_PFR0's fields shown with AArch32 at EL0: State0–3 (A32, T32, Jazelle, T32EE),
/// CSV2 (capped at 1, as ID_AA64PFR0.CSV2 with SCXTNUM trapped) and DIT.
const AARCH32_PFR0: [(u8, u8); 6] = [(0, 0xf), (4, 0xf), (8, 0xf), (12, 0xf), (16, 1), (24, 0xf)];

/// Whether `field` is one [`sanitise`] copies from the AArch32 registers when the view
/// shows AArch32 at EL0.
pub fn aarch32_el0_field(field: Field) -> bool {
    AARCH32_EL0_ISA.contains(&field.reg)
        || (field.reg == reg::ID_PFR0_EL1
            && AARCH32_PFR0.iter().any(|&(shift, _)| shift == field.shift))
}

/// Every field the view copies from the host, and how; every other field reads 0.
pub const KNOWN: &[(Field, Rule)] = {
    use field::*;
    use Rule::*;
    &[
        // AArch64 only at EL0 and EL1 (see the module doc); no EL2 for guests; SMC is
        // answered by Bothy, which plays an AArch64 EL3.
        // EL0: AArch32 too if the host has it (see the module doc).
        (PFR0_EL0, Max(2)),
        (PFR0_EL1, Max(1)),
        (PFR0_EL3, Max(1)),
        // FP/SIMD registers are switched. Signed fields: 0 means implemented.
        (PFR0_FP, Host),
        (PFR0_ADVSIMD, Host),
        // The guest's GIC CPU interface is GICv3's (the virtual one), never v4.1.
        (PFR0_GIC, Max(1)),
        (PFR0_RAS, Host),
        (PFR0_SVE, Host),
        (PFR0_AMU, Host),
        (PFR0_DIT, Host),
        (PFR0_CSV2, Host),
        (PFR0_CSV3, Host),
        (PFR1_BT, Host),
        (PFR1_SSBS, Host),
        (PFR1_MTE, Host),
        (PFR1_RAS_FRAC, Host),
        (PFR1_SME, Host),
        (PFR1_CSV2_FRAC, Host),
        (PFR1_MTE_FRAC, Host),
        // SVE instruction groups: no state beyond the Z/P/FFR registers Bothy switches.
        (ZFR0_SVEVER, Host),
        (ZFR0_AES, Host),
        (ZFR0_BITPERM, Host),
        (ZFR0_BF16, Host),
        (ZFR0_B16B16, Host),
        (ZFR0_SHA3, Host),
        (ZFR0_SM4, Host),
        (ZFR0_I8MM, Host),
        (ZFR0_F32MM, Host),
        (ZFR0_F64MM, Host),
        // Debug is mandatory and not trapped: the host's breakpoints, at most Armv8.8
        // debug (8.9 adds banked breakpoint selection Bothy has not looked at).
        (DFR0_DEBUGVER, Max(0xa)),
        (DFR0_TRACEVER, Host),
        (DFR0_PMUVER, Version(8)),
        (DFR0_BRPS, Host),
        (DFR0_WRPS, Host),
        (DFR0_CTX_CMPS, Host),
        (DFR0_PMSVER, Host),
        // 0 means OS Double Lock is implemented.
        (DFR0_DOUBLELOCK, Host),
        (DFR0_TRACEFILT, Host),
        // Instructions without state of their own.
        (ISAR0_AES, Host),
        (ISAR0_SHA1, Host),
        (ISAR0_SHA2, Host),
        (ISAR0_CRC32, Host),
        (ISAR0_ATOMIC, Host),
        (ISAR0_RDM, Host),
        (ISAR0_SHA3, Host),
        (ISAR0_SM3, Host),
        (ISAR0_SM4, Host),
        (ISAR0_DP, Host),
        (ISAR0_FHM, Host),
        (ISAR0_TS, Host),
        (ISAR0_TLB, Host),
        (ISAR0_RNDR, Host),
        (ISAR1_DPB, Host),
        (ISAR1_APA, Host),
        (ISAR1_API, Host),
        (ISAR1_JSCVT, Host),
        (ISAR1_FCMA, Host),
        (ISAR1_LRCPC, Host),
        (ISAR1_GPA, Host),
        (ISAR1_GPI, Host),
        (ISAR1_FRINTTS, Host),
        (ISAR1_SB, Host),
        (ISAR1_SPECRES, Host),
        (ISAR1_BF16, Host),
        (ISAR1_DGH, Host),
        (ISAR1_I8MM, Host),
        (ISAR2_RPRES, Host),
        (ISAR2_GPA3, Host),
        (ISAR2_APA3, Host),
        (ISAR2_BC, Host),
        (ISAR2_PAC_FRAC, Host),
        (ISAR2_CLRBHB, Host),
        (ISAR2_CSSC, Host),
        // Stage-1 translation is the guest's; its registers are switched.
        (MMFR0_PARANGE, PaRange),
        (MMFR0_ASIDBITS, Host),
        (MMFR0_TGRAN16, Host),
        // Signed: 0 means the granule is supported.
        (MMFR0_TGRAN64, Host),
        (MMFR0_TGRAN4, Host),
        // ECV 1: the self-synchronising counter views; 2 is EL2's CNTPOFF.
        (MMFR0_ECV, Max(1)),
        // 3 adds table-descriptor access flags, controlled by TCR2_EL1 (not switched).
        (MMFR1_HAFDBS, Max(2)),
        (MMFR1_HPDS, Host),
        (MMFR1_LO, Host),
        (MMFR1_PAN, Host),
        (MMFR1_SPECSEI, Host),
        (MMFR1_ETS, Host),
        (MMFR1_AFP, Host),
        (MMFR1_NTLBPA, Host),
        (MMFR1_ECBHB, Host),
        (MMFR2_CNP, Host),
        (MMFR2_UAO, Host),
        (MMFR2_IESB, Host),
        (MMFR2_VARANGE, Host),
        // The format of CCSIDR_EL1, which the guest reads untrapped: must be true.
        (MMFR2_CCIDX, Host),
        (MMFR2_ST, Host),
        (MMFR2_AT, Host),
        (MMFR2_TTL, Host),
        (MMFR2_BBM, Host),
        (MMFR2_E0PD, Host),
    ]
};

/// The 56 registers of the ID space, as read on the host or as a guest sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRegs(pub [u64; ID_SPACE_LEN]);

impl Default for IdRegs {
    fn default() -> Self {
        Self::ZERO
    }
}

impl IdRegs {
    pub const ZERO: Self = Self([0; ID_SPACE_LEN]);

    /// Each register from `read` (hyp: an MRS of each encoding).
    pub fn from_fn(mut read: impl FnMut(IdReg) -> u64) -> Self {
        let mut regs = Self::ZERO;
        for (i, value) in regs.0.iter_mut().enumerate() {
            *value = read(IdReg::at(i));
        }
        regs
    }

    pub fn get(&self, reg: IdReg) -> u64 {
        self.0.get(reg.index()).copied().unwrap_or(0)
    }

    pub fn set(&mut self, reg: IdReg, value: u64) {
        if let Some(slot) = self.0.get_mut(reg.index()) {
            *slot = value;
        }
    }

    pub fn field(&self, field: Field) -> u8 {
        ((self.get(field.reg) >> field.shift) & 0xf) as u8
    }

    pub fn set_field(&mut self, field: Field, value: u8) {
        let mask = 0xf << field.shift;
        let reg = (self.get(field.reg) & !mask) | (u64::from(value & 0xf) << field.shift);
        self.set(field.reg, reg);
    }

    /// What a trapped access to the ID space reads, or `None` if `access` is not in it.
    pub fn read(&self, access: &SysRegAccess) -> Option<u64> {
        IdReg::of(access).map(|reg| self.get(reg))
    }
}

/// The EL2 trap controls the view depends on, as `hyp` writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traps {
    pub hcr: u64,
    pub cptr: u64,
    pub mdcr: u64,
}

/// Which EL2 register a trap bit is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapReg {
    Hcr,
    /// CPTR_EL2 as laid out with HCR_EL2.E2H = 0 (Bothy's).
    Cptr,
    Mdcr,
}

/// One trap control: the feature is trapped when `bit` of `reg` reads `trapped_when`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapBit {
    pub reg: TrapReg,
    pub bit: u8,
    pub trapped_when: bool,
}

impl TrapBit {
    const fn set(reg: TrapReg, bit: u8) -> Self {
        Self {
            reg,
            bit,
            trapped_when: true,
        }
    }

    const fn clear(reg: TrapReg, bit: u8) -> Self {
        Self {
            reg,
            bit,
            trapped_when: false,
        }
    }

    fn slot(self, traps: &mut Traps) -> &mut u64 {
        match self.reg {
            TrapReg::Hcr => &mut traps.hcr,
            TrapReg::Cptr => &mut traps.cptr,
            TrapReg::Mdcr => &mut traps.mdcr,
        }
    }

    /// Whether `traps` trap the feature.
    pub fn in_effect(self, traps: &Traps) -> bool {
        let mut t = *traps;
        (*self.slot(&mut t) >> self.bit & 1 == 1) == self.trapped_when
    }
}

/// What a trap hides: a field capped (0 for "not implemented"), or a whole register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hide {
    Field(Field, u8),
    Reg(IdReg),
}

/// Whether [`required`] asks `hyp` to set a trap bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Always (the bit is RES1 where the feature is absent, so setting it is harmless).
    Always,
    /// Where the host has the feature (the bit is RES0 otherwise).
    IfHost(Field),
    /// `hyp`'s own constant decides (an enable bit, or a feature guests get).
    Hyp,
}

/// One trap decision and the fields that hide the feature it traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pairing {
    /// The feature, as Bothy's boot report names it.
    pub name: &'static str,
    pub trap: TrapBit,
    pub want: Want,
    pub hides: &'static [Hide],
}

pub mod bits {
    pub const HCR_TID3: u64 = 1 << 18;
    pub const HCR_RW: u64 = 1 << 31;
    pub const HCR_TLOR: u8 = 35;
    pub const HCR_TERR: u8 = 36;
    pub const HCR_APK: u8 = 40;
    pub const HCR_API: u8 = 41;
    pub const HCR_ENSCXT: u8 = 53;
    pub const HCR_ATA: u8 = 56;
    pub const CPTR_TZ: u8 = 8;
    pub const CPTR_TSM: u8 = 12;
    pub const CPTR_TTA: u8 = 20;
    pub const CPTR_TAM: u8 = 30;
    pub const MDCR_TPM: u8 = 6;
    pub const MDCR_TPMS: u8 = 14;
    pub const MDCR_TTRF: u8 = 19;
    pub const MDCR_HCCD: u64 = 1 << 23;
}

/// The one table pairing each trap decision with the ID fields that hide its feature
/// (the module doc has it as a table, with the reasons).
pub const PAIRINGS: &[Pairing] = {
    use bits::*;
    use field::*;
    use reg::*;
    use Hide::{Field as F, Reg as R};
    use TrapReg::*;
    const PAUTH: &[Hide] = &[
        F(ISAR1_APA, 0),
        F(ISAR1_API, 0),
        F(ISAR1_GPA, 0),
        F(ISAR1_GPI, 0),
        F(ISAR2_APA3, 0),
        F(ISAR2_GPA3, 0),
        F(ISAR2_PAC_FRAC, 0),
    ];
    &[
        Pairing {
            name: "MTE",
            trap: TrapBit::clear(Hcr, HCR_ATA),
            want: Want::Hyp,
            hides: &[F(PFR1_MTE, 0), F(PFR1_MTE_FRAC, 0), F(PFR1_MTEX, 0)],
        },
        Pairing {
            name: "SCXTNUM",
            trap: TrapBit::clear(Hcr, HCR_ENSCXT),
            want: Want::Hyp,
            hides: &[F(PFR0_CSV2, 1), F(PFR1_CSV2_FRAC, 1)],
        },
        Pairing {
            name: "pointer authentication",
            trap: TrapBit::clear(Hcr, HCR_API),
            want: Want::Hyp,
            hides: PAUTH,
        },
        Pairing {
            name: "pointer authentication",
            trap: TrapBit::clear(Hcr, HCR_APK),
            want: Want::Hyp,
            hides: PAUTH,
        },
        Pairing {
            name: "RAS",
            trap: TrapBit::set(Hcr, HCR_TERR),
            want: Want::IfHost(PFR0_RAS),
            hides: &[F(PFR0_RAS, 0), F(PFR1_RAS_FRAC, 0), F(MMFR2_IESB, 0)],
        },
        Pairing {
            name: "LORegions",
            trap: TrapBit::set(Hcr, HCR_TLOR),
            want: Want::IfHost(MMFR1_LO),
            hides: &[F(MMFR1_LO, 0)],
        },
        Pairing {
            name: "SVE",
            trap: TrapBit::set(Cptr, CPTR_TZ),
            want: Want::Hyp,
            hides: &[F(PFR0_SVE, 0), R(ID_AA64ZFR0_EL1)],
        },
        Pairing {
            name: "SME",
            trap: TrapBit::set(Cptr, CPTR_TSM),
            want: Want::Always,
            hides: &[F(PFR1_SME, 0), R(ID_AA64SMFR0_EL1)],
        },
        Pairing {
            name: "AMU",
            trap: TrapBit::set(Cptr, CPTR_TAM),
            want: Want::IfHost(PFR0_AMU),
            hides: &[F(PFR0_AMU, 0)],
        },
        Pairing {
            name: "trace",
            trap: TrapBit::set(Cptr, CPTR_TTA),
            want: Want::IfHost(DFR0_TRACEVER),
            hides: &[F(DFR0_TRACEVER, 0)],
        },
        Pairing {
            name: "PMU",
            trap: TrapBit::set(Mdcr, MDCR_TPM),
            want: Want::Hyp,
            hides: &[F(DFR0_PMUVER, 0), F(DFR0_PMSS, 0)],
        },
        Pairing {
            name: "SPE",
            trap: TrapBit::set(Mdcr, MDCR_TPMS),
            want: Want::IfHost(DFR0_PMSVER),
            hides: &[F(DFR0_PMSVER, 0)],
        },
        Pairing {
            name: "trace filter",
            trap: TrapBit::set(Mdcr, MDCR_TTRF),
            want: Want::IfHost(DFR0_TRACEFILT),
            hides: &[F(DFR0_TRACEFILT, 0)],
        },
    ]
};

impl Traps {
    /// The bits set in either: traps in effect on either CPU (Bothy's enable bits, such
    /// as HCR_EL2.API, are its own constants, the same on every CPU).
    pub fn union(&self, other: &Traps) -> Traps {
        Traps {
            hcr: self.hcr | other.hcr,
            cptr: self.cptr | other.cptr,
            mdcr: self.mdcr | other.mdcr,
        }
    }
}

/// The trap bits `hyp` must set on a host with ID registers `host`, beside its own:
/// TID3, and each [`PAIRINGS`] bit that [`Want`]s setting here.
pub fn required(host: &IdRegs) -> Traps {
    let mut traps = Traps {
        hcr: bits::HCR_TID3,
        ..Traps::default()
    };
    for p in PAIRINGS {
        let set = match p.want {
            Want::Always => true,
            Want::IfHost(feature) => host.field(feature) != 0,
            Want::Hyp => false,
        };
        if set && p.trap.trapped_when {
            *p.trap.slot(&mut traps) |= 1 << p.trap.bit;
        }
    }
    // From PMUv3p5 HPMD no longer covers the cycle counter; HCCD does.
    const PMUV3P5: u8 = 6;
    if (PMUV3P5..0xf).contains(&host.field(field::DFR0_PMUVER)) {
        traps.mdcr |= bits::MDCR_HCCD;
    }
    traps
}

/// The smallest ID_AA64MMFR0.PARange encoding covering `bits` of address.
fn pa_range_for(bits: u32) -> u8 {
    const RANGES: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];
    RANGES
        .iter()
        .position(|&r| r >= bits)
        .unwrap_or(RANGES.len() - 1) as u8
}

/// The ID registers a guest sees: `host`'s [`KNOWN`] fields by their rules, then every
/// [`PAIRINGS`] entry whose trap `traps` has in effect applied, for a stage 2 of
/// `ipa_bits`. Everything else reads 0.
pub fn sanitise(host: &IdRegs, traps: &Traps, ipa_bits: u32) -> IdRegs {
    let mut view = IdRegs::ZERO;
    for &(field, rule) in KNOWN {
        let h = host.field(field);
        let v = match rule {
            Rule::Host => h,
            Rule::Max(max) => h.min(max),
            Rule::Version(_) if h == 0xf => 0,
            Rule::Version(max) => h.min(max),
            Rule::PaRange => h.min(pa_range_for(ipa_bits)),
        };
        view.set_field(field, v);
    }
    for p in PAIRINGS.iter().filter(|p| p.trap.in_effect(traps)) {
        for hide in p.hides {
            match *hide {
                Hide::Field(field, max) => {
                    let v = view.field(field).min(max);
                    view.set_field(field, v);
                }
                Hide::Reg(reg) => view.set(reg, 0),
            }
        }
    }
    if view.field(field::PFR0_EL0) >= 2 {
        for reg in AARCH32_EL0_ISA {
            view.set(reg, host.get(reg));
        }
        for (shift, max) in AARCH32_PFR0 {
            let pfr0 = f(reg::ID_PFR0_EL1, shift);
            view.set_field(pfr0, host.field(pfr0).min(max));
        }
    }
    // ZFR0 describes SVE: none of it without SVE (SME's streaming SVE is hidden too).
    if view.field(field::PFR0_SVE) == 0 {
        view.set(reg::ID_AA64ZFR0_EL1, 0);
    }
    view
}

/// How two CPUs' values of one field combine into the machine's: the value that
/// promises no more than either (Linux's `FTR_*` types in arch/arm64/kernel/cpufeature.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// The lower (`FTR_LOWER_SAFE`): each value adds to the ones below it. Most fields.
    Lower,
    /// The lower as a signed 4-bit number (`S_ARM64_FTR_BITS`, `FTR_LOWER_SAFE`): 0xF
    /// (-1) means "not implemented", 0 the base feature, 1 and up additions.
    LowerSigned,
    /// The higher (`FTR_HIGHER_SAFE`): a higher value promises less.
    Higher,
    /// The same value on every CPU, or else this safe one (`FTR_EXACT`): values that are
    /// not steps on one scale (algorithms, interfaces).
    Exact(u8),
}

impl Combine {
    /// The machine's value of a field one CPU reads as `a` and another as `b`.
    pub fn apply(self, a: u8, b: u8) -> u8 {
        match self {
            Combine::Lower => a.min(b),
            Combine::LowerSigned => {
                if signed(a) <= signed(b) {
                    a
                } else {
                    b
                }
            }
            Combine::Higher => a.max(b),
            Combine::Exact(_) if a == b => a,
            Combine::Exact(safe) => safe,
        }
    }

    /// Whether `v` promises no more than `x` under this rule.
    pub fn no_more(self, v: u8, x: u8) -> bool {
        match self {
            Combine::Lower => v <= x,
            Combine::LowerSigned => signed(v) <= signed(x),
            Combine::Higher => v >= x,
            Combine::Exact(safe) => v == x || v == safe,
        }
    }
}

/// A 4-bit field read as a signed number (0xF is -1).
fn signed(v: u8) -> i8 {
    (((v & 0xf) << 4) as i8) >> 4
}

/// The fields that do not combine by [`Combine::Lower`], as Linux's cpufeature.c has
/// them. Fields Bothy does not show read 0 whatever their rule.
pub const COMBINE: &[(Field, Combine)] = {
    use field::*;
    use Combine::*;
    &[
        // 0xF: no floating point, no Advanced SIMD, no async tag faults, no 4 KiB or
        // 64 KiB granule, no OS Double Lock.
        (PFR0_FP, LowerSigned),
        (PFR0_ADVSIMD, LowerSigned),
        (PFR1_MTE_FRAC, LowerSigned),
        (MMFR0_TGRAN4, LowerSigned),
        (MMFR0_TGRAN64, LowerSigned),
        (DFR0_DOUBLELOCK, LowerSigned),
        // Different PMUs or debug architectures are not one scale: no PMU, Armv8.0 debug.
        (DFR0_PMUVER, Exact(0)),
        (DFR0_DEBUGVER, Exact(6)),
        // A pointer signed on one CPU must authenticate on the other: the same
        // algorithm everywhere, or no address authentication.
        (ISAR1_APA, Exact(0)),
        (ISAR1_API, Exact(0)),
        (ISAR2_APA3, Exact(0)),
        // 1: an SError may come from a speculative read; safer to expect it.
        (MMFR1_SPECSEI, Higher),
    ]
};

/// The rule `field` combines by.
pub fn combine_rule(field: Field) -> Combine {
    COMBINE
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(Combine::Lower, |&(_, rule)| rule)
}

/// Two CPUs' ID registers as one: every 4-bit field of every register by its
/// [`combine_rule`]. Commutative and associative, so the order CPUs come up in does
/// not matter.
pub fn combine(a: &IdRegs, b: &IdRegs) -> IdRegs {
    let mut out = IdRegs::ZERO;
    for i in 0..ID_SPACE_LEN {
        let reg = IdReg::at(i);
        for shift in (0..64).step_by(4) {
            let f = Field { reg, shift };
            out.set_field(f, combine_rule(f).apply(a.field(f), b.field(f)));
        }
    }
    out
}

/// The features `host` has that `traps` hide, by [`Pairing::name`], each once, in
/// [`PAIRINGS`] order (Bothy's boot report).
pub fn hidden_features(host: &IdRegs, traps: &Traps) -> alloc::vec::Vec<&'static str> {
    let mut names = alloc::vec::Vec::new();
    for p in PAIRINGS.iter().filter(|p| p.trap.in_effect(traps)) {
        let has = p.hides.iter().any(|hide| match *hide {
            Hide::Field(field, max) => host.field(field) > max,
            Hide::Reg(reg) => host.get(reg) != 0,
        });
        if has && !names.contains(&p.name) {
            names.push(p.name);
        }
    }
    names
}

/// The trap bits a CPU whose ID registers are `own` runs guests with: `base` (`hyp`'s
/// constants) and what [`required`] asks for on it.
pub fn cpu_traps(base: &Traps, own: &IdRegs) -> Traps {
    base.union(&required(own))
}

/// The ID registers every VM reads on a machine whose CPUs read `cpus` and each run
/// with [`cpu_traps`]: the CPUs [`combine`]d, sanitised with every trap any of them
/// sets in effect, for a stage 2 of `ipa_bits`.
pub fn machine_view(cpus: &[IdRegs], base: &Traps, ipa_bits: u32) -> IdRegs {
    let (host, traps) = machine(cpus, base);
    sanitise(&host, &traps, ipa_bits)
}

/// The features every CPU of [`machine_view`]'s machine has and VMs do not see
/// because a trap hides them ([`hidden_features`]), for Bothy's boot report.
pub fn machine_hidden(cpus: &[IdRegs], base: &Traps) -> alloc::vec::Vec<&'static str> {
    let (host, traps) = machine(cpus, base);
    hidden_features(&host, &traps)
}

/// `cpus` [`combine`]d, and every trap any of them sets.
fn machine(cpus: &[IdRegs], base: &Traps) -> (IdRegs, Traps) {
    let Some((first, rest)) = cpus.split_first() else {
        return (IdRegs::ZERO, *base);
    };
    let host = rest.iter().fold(*first, |acc, cpu| combine(&acc, cpu));
    let traps = cpus
        .iter()
        .fold(*base, |traps, cpu| traps.union(&cpu_traps(base, cpu)));
    (host, traps)
}

#[cfg(test)]
mod tests;
