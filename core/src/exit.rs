//! Classifying a guest exit.
//!
//! When a guest traps to EL2 the hardware describes why in `ESR_EL2` (and, for
//! aborts, `FAR_EL2`/`HPFAR_EL2`). The hypervisor's vector code reads those
//! registers and hands the raw values here; this module turns them into an
//! [`Exit`] the rest of Bothy can match on. It is pure bit-decoding, so it is
//! exhaustively unit-tested on the host and never trusts a field it has not
//! checked (e.g. a data abort without a valid instruction syndrome cannot be
//! emulated, and says so).
//!
//! Reference: Arm ARM (DDI 0487) D17.2.37 "ESR_EL2", the ISS encodings for
//! EC 0x01 (WFx), 0x16/0x17 (HVC/SMC), 0x18 (MSR/MRS), 0x24/0x20 (aborts).

/// Exception classes Bothy handles (ESR_ELx.EC, bits [31:26]).
pub mod ec {
    pub const UNKNOWN: u32 = 0x00;
    pub const WFX: u32 = 0x01;
    pub const HVC64: u32 = 0x16;
    pub const SMC64: u32 = 0x17;
    pub const SYSREG: u32 = 0x18;
    pub const IABT_LOWER: u32 = 0x20;
    pub const DABT_LOWER: u32 = 0x24;
    pub const DABT_SAME: u32 = 0x25;
}

pub mod aarch32;
pub mod debug;
pub mod handle;
pub mod idregs;
#[cfg(test)]
mod lazy_sim;
pub mod mdcr;
pub mod pauth;
pub mod pmu;
pub mod serror;
pub mod sve;

const ESR_EC_SHIFT: u32 = 26;
const ESR_EC_MASK: u64 = 0x3f;
const ESR_IL: u64 = 1 << 25;
const ISS_MASK: u64 = (1 << 25) - 1;

/// A decoded exit, as far as Bothy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// WFI (`wfe == false`) or WFE trapped by HCR_EL2.TWI/TWE.
    Wait { wfe: bool },
    /// HVC from AArch64 EL1; `imm` is the 16-bit immediate. ELR already points past it.
    Hvc { imm: u16 },
    /// SMC trapped by HCR_EL2.TSC. ELR points *at* the SMC: skip it on return.
    Smc { imm: u16 },
    /// A trapped system-register access.
    SysReg(SysRegAccess),
    /// A stage-2 data abort that can be emulated (valid syndrome).
    Mmio(MmioAccess),
    /// A stage-2 data abort Bothy cannot emulate (no syndrome, or a
    /// translation-table walk fault); the guest gets an external abort.
    BadDataAbort { ipa: u64, far: u64 },
    /// A stage-2 instruction abort: the guest executed outside its memory.
    BadInstructionAbort { ipa: u64, far: u64 },
    /// Anything else: the guest gets an undefined-instruction exception.
    Other { ec: u32 },
}

/// One MMIO access decoded from a data-abort syndrome (ISV == 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Intermediate physical address of the access.
    pub ipa: u64,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    /// Register number 0..=31; 31 is XZR for these instructions.
    pub reg: u8,
    /// Sign-extend a load (LDRSB/LDRSH/LDRSW).
    pub sign_extend: bool,
    /// The destination/source register is 64-bit (else 32-bit, upper half zeroed).
    pub sixty_four: bool,
}

/// A trapped MSR/MRS (EC 0x18), encoding as in the Arm ARM sysreg tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// General-purpose register number; 31 means XZR.
    pub reg: u8,
    /// MRS (read into `reg`) when true, MSR (write from `reg`) when false.
    pub read: bool,
}

impl SysRegAccess {
    /// Whether this is the given register, named by its (op0, op1, CRn, CRm, op2).
    pub const fn is(&self, enc: SysRegEncoding) -> bool {
        self.op0 == enc.0
            && self.op1 == enc.1
            && self.crn == enc.2
            && self.crm == enc.3
            && self.op2 == enc.4
    }
}

/// (op0, op1, CRn, CRm, op2).
pub type SysRegEncoding = (u8, u8, u8, u8, u8);

/// System registers Bothy traps on purpose.
pub mod sysreg {
    use super::SysRegEncoding;
    /// GICv3 SGI generation, trapped because HCR_EL2.IMO is set.
    pub const ICC_SGI1R_EL1: SysRegEncoding = (3, 0, 12, 11, 5);
    pub const ICC_ASGI1R_EL1: SysRegEncoding = (3, 0, 12, 11, 6);
    pub const ICC_SGI0R_EL1: SysRegEncoding = (3, 0, 12, 11, 7);
    /// The EL1 physical timer, trapped by CNTHCTL_EL2.EL1PCEN = 0: guests use the virtual timer.
    pub const CNTP_TVAL_EL0: SysRegEncoding = (3, 3, 14, 2, 0);
    pub const CNTP_CTL_EL0: SysRegEncoding = (3, 3, 14, 2, 1);
    pub const CNTP_CVAL_EL0: SysRegEncoding = (3, 3, 14, 2, 2);
}

/// Decode an exit from the syndrome registers.
///
/// `hpfar` is HPFAR_EL2 (IPA[47:12] in bits [43:4]); `far` is FAR_EL2, whose
/// low 12 bits complete the IPA.
pub fn decode(esr: u64, far: u64, hpfar: u64) -> Exit {
    let class = exception_class(esr);
    let iss = esr & ISS_MASK;
    match class {
        ec::WFX => Exit::Wait { wfe: iss & 1 == 1 },
        ec::HVC64 => Exit::Hvc { imm: iss as u16 },
        ec::SMC64 => Exit::Smc { imm: iss as u16 },
        ec::SYSREG => Exit::SysReg(decode_sysreg_trap(esr)),
        ec::DABT_LOWER => decode_lower_data_abort(esr, far, hpfar),
        ec::IABT_LOWER => Exit::BadInstructionAbort {
            ipa: fault_ipa(far, hpfar),
            far,
        },
        other => Exit::Other { ec: other },
    }
}

/// Decode a data abort from a lower EL (EC 0x24) alone: what the hot MMIO path
/// needs, without building the general [`Exit`].
pub fn decode_lower_data_abort(esr: u64, far: u64, hpfar: u64) -> Exit {
    let ipa = fault_ipa(far, hpfar);
    decode_data_abort(esr & ISS_MASK, ipa).map_or(Exit::BadDataAbort { ipa, far }, Exit::Mmio)
}

/// ESR_EL2.ISS.Rt of a trapped MSR/MRS: the general-purpose register (31 = XZR).
pub const SYSREG_RT_MASK: u64 = 0x1f << SYSREG_RT_SHIFT;

/// The syndrome of a trapped `MSR <enc>, Xt` from AArch64, less the Rt field and the IL
/// bit: `esr & !(SYSREG_RT_MASK | ESR_IL) == sysreg_write_syndrome(enc)` picks out one
/// register write in a single compare, for exits too hot for `decode_sysreg_trap`.
pub const fn sysreg_write_syndrome(enc: SysRegEncoding) -> u64 {
    let (op0, op1, crn, crm, op2) = enc;
    (ec::SYSREG as u64) << ESR_EC_SHIFT
        | (op0 as u64) << SYSREG_OP0_SHIFT
        | (op2 as u64) << SYSREG_OP2_SHIFT
        | (op1 as u64) << SYSREG_OP1_SHIFT
        | (crn as u64) << SYSREG_CRN_SHIFT
        | (crm as u64) << SYSREG_CRM_SHIFT
}

/// `esr` less the fields `sysreg_write_syndrome` leaves out.
pub const fn sysreg_syndrome(esr: u64) -> u64 {
    esr & !(SYSREG_RT_MASK | ESR_IL)
}

/// The Rt field of a trapped MSR/MRS.
pub const fn sysreg_rt(esr: u64) -> usize {
    ((esr & SYSREG_RT_MASK) >> SYSREG_RT_SHIFT) as usize
}

/// The SRT field of a data abort: the register a described (ISV) load or store
/// transfers. Without ISV the field is RES0, so this reads 0.
pub const fn data_abort_srt(esr: u64) -> usize {
    ((esr >> DABT_SRT_SHIFT) & 0x1f) as usize
}

/// Decode a trapped MSR/MRS (EC 0x18) alone.
pub fn decode_sysreg_trap(esr: u64) -> SysRegAccess {
    decode_sysreg(esr & ISS_MASK)
}

pub const fn exception_class(esr: u64) -> u32 {
    ((esr >> ESR_EC_SHIFT) & ESR_EC_MASK) as u32
}

/// Whether the trapped instruction was 32 bits long (always, for AArch64 guests).
pub const fn instruction_is_32bit(esr: u64) -> bool {
    esr & ESR_IL != 0
}

/// IPA of a stage-2 fault: HPFAR_EL2.FIPA gives bits [47:12], FAR_EL2 the page offset.
pub const fn fault_ipa(far: u64, hpfar: u64) -> u64 {
    const FIPA_MASK: u64 = (1 << 44) - 1;
    const PAGE_OFFSET_MASK: u64 = 0xfff;
    (((hpfar & FIPA_MASK) >> 4) << 12) | (far & PAGE_OFFSET_MASK)
}

// Data-abort ISS fields (Arm ARM D17.2.37, "ISS encoding for an exception from a Data Abort").
const DABT_ISV: u64 = 1 << 24;
const DABT_SAS_SHIFT: u64 = 22;
const DABT_SSE: u64 = 1 << 21;
const DABT_SRT_SHIFT: u64 = 16;
const DABT_SF: u64 = 1 << 15;
const DABT_S1PTW: u64 = 1 << 7;
const DABT_WNR: u64 = 1 << 6;

fn decode_data_abort(iss: u64, ipa: u64) -> Option<MmioAccess> {
    // Without ISV the faulting instruction is not described (e.g. LDP, or a
    // write-back addressing mode); a fault during a stage-1 table walk means the
    // guest put its page tables outside RAM. Neither is an MMIO access.
    if iss & DABT_ISV == 0 || iss & DABT_S1PTW != 0 {
        return None;
    }
    Some(MmioAccess {
        ipa,
        size: 1 << ((iss >> DABT_SAS_SHIFT) & 0b11),
        write: iss & DABT_WNR != 0,
        reg: ((iss >> DABT_SRT_SHIFT) & 0x1f) as u8,
        sign_extend: iss & DABT_SSE != 0,
        sixty_four: iss & DABT_SF != 0,
    })
}

// MSR/MRS ISS fields (Arm ARM D17.2.37, "ISS encoding for an exception from MSR, MRS,
// or System instruction execution in AArch64 state").
const SYSREG_OP0_SHIFT: u64 = 20;
const SYSREG_OP2_SHIFT: u64 = 17;
const SYSREG_OP1_SHIFT: u64 = 14;
const SYSREG_CRN_SHIFT: u64 = 10;
const SYSREG_RT_SHIFT: u64 = 5;
const SYSREG_CRM_SHIFT: u64 = 1;

fn decode_sysreg(iss: u64) -> SysRegAccess {
    let field = |shift: u64, bits: u64| ((iss >> shift) & ((1 << bits) - 1)) as u8;
    SysRegAccess {
        op0: field(SYSREG_OP0_SHIFT, 2),
        op2: field(SYSREG_OP2_SHIFT, 3),
        op1: field(SYSREG_OP1_SHIFT, 3),
        crn: field(SYSREG_CRN_SHIFT, 4),
        reg: field(SYSREG_RT_SHIFT, 5),
        crm: field(SYSREG_CRM_SHIFT, 4),
        read: iss & 1 == 1,
    }
}

impl MmioAccess {
    /// The value a load delivers into its register, given the raw bytes read
    /// (zero- or sign-extended per the syndrome, truncated to 32 bits for W registers).
    #[inline(always)]
    pub fn load_result(&self, raw: u64) -> u64 {
        // The usual device read, `LDR Wt`, first: 32 bits zero-extended are the result
        // whether Wt or Xt is named.
        if self.size == 4 && !self.sign_extend {
            return u64::from(raw as u32);
        }
        // One arm per load instruction form; this runs on every emulated read.
        let extended = match (self.size, self.sign_extend) {
            (1, false) => u64::from(raw as u8),
            (2, false) => u64::from(raw as u16),
            (4, false) => u64::from(raw as u32),
            (1, true) => raw as u8 as i8 as i64 as u64,
            (2, true) => raw as u16 as i16 as i64 as u64,
            (4, true) => raw as u32 as i32 as i64 as u64,
            _ => raw,
        };
        if self.sixty_four {
            extended
        } else {
            u64::from(extended as u32)
        }
    }

    /// The value a store writes, given the source register's contents.
    pub fn store_value(&self, reg_value: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        if bits >= 64 {
            reg_value
        } else {
            reg_value & ((1u64 << bits) - 1)
        }
    }
}

/// Syndromes Bothy writes into ESR_EL1 when it injects an exception.
pub mod inject {
    use super::{ec, ESR_EC_SHIFT, ESR_IL};

    /// Data fault status code: synchronous external abort, not on a table walk.
    const DFSC_SYNC_EXTERNAL: u64 = 0x10;
    const IFSC_SYNC_EXTERNAL: u64 = 0x10;
    const DABT_WNR: u64 = 1 << 6;

    /// ESR_EL1 for a synchronous external abort on a data access taken from
    /// EL1 (`from_el0 == false`) or EL0.
    pub const fn data_abort_esr(from_el0: bool, write: bool) -> u64 {
        let class = if from_el0 {
            ec::DABT_LOWER
        } else {
            ec::DABT_SAME
        } as u64;
        let wnr = if write { DABT_WNR } else { 0 };
        (class << ESR_EC_SHIFT) | ESR_IL | DFSC_SYNC_EXTERNAL | wnr
    }

    /// ESR_EL1 for a synchronous external abort on an instruction fetch.
    pub const fn instruction_abort_esr(from_el0: bool) -> u64 {
        const IABT_SAME: u64 = 0x21;
        let class = if from_el0 {
            ec::IABT_LOWER as u64
        } else {
            IABT_SAME
        };
        (class << ESR_EC_SHIFT) | ESR_IL | IFSC_SYNC_EXTERNAL
    }

    /// ESR_EL1 for an undefined instruction (EC 0, "unknown reason").
    pub const fn undefined_esr() -> u64 {
        ((ec::UNKNOWN as u64) << ESR_EC_SHIFT) | ESR_IL
    }

    /// Offset into VBAR_EL1 of the synchronous vector for an exception taken
    /// from the guest's current mode (`SPSR.M`): current EL with SP_EL0 or SP_ELx,
    /// lower EL AArch64, or lower EL AArch32 (32-bit user space).
    pub const fn vector_offset(guest_spsr: u64) -> u64 {
        const MODE_MASK: u64 = 0xf;
        const EL1T: u64 = 0b0100;
        const EL1H: u64 = 0b0101;
        if super::aarch32::is_aarch32(guest_spsr) {
            return 0x600;
        }
        match guest_spsr & MODE_MASK {
            EL1T => 0x000,
            EL1H => 0x200,
            _ => 0x400,
        }
    }

    /// PSTATE for the guest on exception entry to EL1: EL1h, D/A/I/F masked.
    pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

    /// Whether the guest was running at EL0 when it trapped.
    pub const fn from_el0(guest_spsr: u64) -> bool {
        guest_spsr & 0xf == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esr(class: u32, iss: u64) -> u64 {
        (u64::from(class) << ESR_EC_SHIFT) | ESR_IL | iss
    }

    #[test]
    fn hvc_and_smc_carry_the_immediate() {
        assert_eq!(
            decode(esr(ec::HVC64, 0x1234), 0, 0),
            Exit::Hvc { imm: 0x1234 }
        );
        assert_eq!(decode(esr(ec::SMC64, 0), 0, 0), Exit::Smc { imm: 0 });
    }

    #[test]
    fn wfi_and_wfe_are_told_apart() {
        assert_eq!(decode(esr(ec::WFX, 0), 0, 0), Exit::Wait { wfe: false });
        assert_eq!(decode(esr(ec::WFX, 1), 0, 0), Exit::Wait { wfe: true });
    }

    #[test]
    fn word_load_from_gicd_typer() {
        // ldr w3, [x1] at IPA 0x0800_0004: ISV, SAS=2 (word), SRT=3, !WnR, !SF.
        let iss = DABT_ISV | (2 << DABT_SAS_SHIFT) | (3 << DABT_SRT_SHIFT);
        let exit = decode(esr(ec::DABT_LOWER, iss), 0xffff_0000_0000_0004, 0x8000 << 4);
        assert_eq!(
            exit,
            Exit::Mmio(MmioAccess {
                ipa: 0x0800_0004,
                size: 4,
                write: false,
                reg: 3,
                sign_extend: false,
                sixty_four: false
            })
        );
    }

    #[test]
    fn abort_without_syndrome_is_not_emulated() {
        let exit = decode(esr(ec::DABT_LOWER, 0), 0x123, 0x3_0000 << 4);
        assert_eq!(
            exit,
            Exit::BadDataAbort {
                ipa: 0x3000_0123,
                far: 0x123
            }
        );
        // A stage-1 walk fault is never MMIO even with ISV set.
        let iss = DABT_ISV | DABT_S1PTW;
        assert!(matches!(
            decode(esr(ec::DABT_LOWER, iss), 0, 0),
            Exit::BadDataAbort { .. }
        ));
    }

    proptest::proptest! {
        /// hyp reads the register field alone, before decoding, to decide whether the
        /// exit needs the guest's callee-saved registers in its frame: it must be the
        /// register the full decode transfers, for every syndrome.
        #[test]
        fn register_fields_match_the_decode(iss in 0u64..(1 << 25), far: u64, hpfar: u64) {
            if let Exit::Mmio(a) = decode(esr(ec::DABT_LOWER, iss), far, hpfar) {
                proptest::prop_assert_eq!(data_abort_srt(esr(ec::DABT_LOWER, iss)), usize::from(a.reg));
            }
            if let Exit::SysReg(a) = decode(esr(ec::SYSREG, iss), far, hpfar) {
                proptest::prop_assert_eq!(sysreg_rt(esr(ec::SYSREG, iss)), usize::from(a.reg));
            }
        }
    }

    #[test]
    fn store_of_doubleword_is_a_write_of_8() {
        let iss = DABT_ISV | (3 << DABT_SAS_SHIFT) | (31 << DABT_SRT_SHIFT) | DABT_WNR | DABT_SF;
        match decode(esr(ec::DABT_LOWER, iss), 0, 0) {
            Exit::Mmio(a) => {
                assert!(a.write && a.sixty_four);
                assert_eq!((a.size, a.reg), (8, 31));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loads_extend_like_the_instruction_would() {
        let ldrsb_w = MmioAccess {
            ipa: 0,
            size: 1,
            write: false,
            reg: 0,
            sign_extend: true,
            sixty_four: false,
        };
        assert_eq!(ldrsb_w.load_result(0x80), 0xffff_ff80);
        let ldrsb_x = MmioAccess {
            sixty_four: true,
            ..ldrsb_w
        };
        assert_eq!(ldrsb_x.load_result(0x80), 0xffff_ffff_ffff_ff80);
        let ldrh = MmioAccess {
            size: 2,
            sign_extend: false,
            ..ldrsb_w
        };
        assert_eq!(ldrh.load_result(0xdead_8001), 0x8001);
        let ldr_x = MmioAccess {
            size: 8,
            sixty_four: true,
            ..ldrh
        };
        assert_eq!(ldr_x.load_result(u64::MAX), u64::MAX);
        assert_eq!(ldrh.store_value(0x1234_5678), 0x5678);
    }

    #[test]
    fn sysreg_trap_of_sgi1r_write() {
        // MSR ICC_SGI1R_EL1, x5: op0=3 op2=5 op1=0 CRn=12 Rt=5 CRm=11, direction write.
        let iss = (3 << 20) | (5 << 17) | (12 << 10) | (5 << 5) | (11 << 1);
        match decode(esr(ec::SYSREG, iss), 0, 0) {
            Exit::SysReg(access) => {
                assert!(access.is(sysreg::ICC_SGI1R_EL1));
                assert!(!access.read);
                assert_eq!(access.reg, 5);
            }
            other => panic!("{other:?}"),
        }
        // The one-compare form agrees, for any Rt, and rejects the read and neighbours.
        let write = esr(ec::SYSREG, iss);
        assert_eq!(
            sysreg_syndrome(write),
            sysreg_write_syndrome(sysreg::ICC_SGI1R_EL1)
        );
        assert_eq!(sysreg_rt(write), 5);
        let xzr = esr(ec::SYSREG, iss | 31 << 5);
        assert_eq!(sysreg_rt(xzr), 31);
        assert_eq!(sysreg_syndrome(xzr), sysreg_syndrome(write));
        let read = esr(ec::SYSREG, iss | 1);
        assert_ne!(
            sysreg_syndrome(read),
            sysreg_write_syndrome(sysreg::ICC_SGI1R_EL1)
        );
        for other in [
            sysreg::ICC_ASGI1R_EL1,
            sysreg::ICC_SGI0R_EL1,
            sysreg::CNTP_CTL_EL0,
        ] {
            assert_ne!(sysreg_syndrome(write), sysreg_write_syndrome(other));
        }
        assert_ne!(
            sysreg_syndrome(esr(ec::HVC64, iss)),
            sysreg_write_syndrome(sysreg::ICC_SGI1R_EL1)
        );
    }

    #[test]
    fn injected_syndromes() {
        assert_eq!(inject::data_abort_esr(false, false) >> 26, 0x25);
        assert_eq!(inject::data_abort_esr(true, true) & 0x7f, 0x50);
        assert_eq!(inject::undefined_esr(), 1 << 25);
        assert_eq!(inject::vector_offset(0x3c5), 0x200);
        assert_eq!(inject::vector_offset(0x3c4), 0x000);
        assert_eq!(inject::vector_offset(0x0), 0x400);
        assert_eq!(inject::vector_offset(0x10), 0x600, "A32 user mode");
        assert_eq!(inject::vector_offset(0x30), 0x600, "T32 user mode");
    }

    #[test]
    fn per_class_decoders_agree_with_decode() {
        let dabt = esr(
            ec::DABT_LOWER,
            DABT_ISV | (2 << DABT_SAS_SHIFT) | (7 << DABT_SRT_SHIFT) | DABT_WNR,
        );
        assert_eq!(
            decode_lower_data_abort(dabt, 0x10, 0x9000 << 4),
            decode(dabt, 0x10, 0x9000 << 4)
        );
        let bad = esr(ec::DABT_LOWER, 0);
        assert_eq!(
            decode_lower_data_abort(bad, 0x10, 0x9000 << 4),
            decode(bad, 0x10, 0x9000 << 4)
        );
        let msr = esr(
            ec::SYSREG,
            (3 << 20) | (5 << 17) | (12 << 10) | (5 << 5) | (11 << 1),
        );
        assert_eq!(Exit::SysReg(decode_sysreg_trap(msr)), decode(msr, 0, 0));
    }

    #[test]
    fn other_classes_pass_through() {
        assert_eq!(decode(esr(0x07, 0), 0, 0), Exit::Other { ec: 0x07 });
    }
}
