//! Exits from AArch32 EL0: 32-bit user space under a 64-bit guest kernel.
//!
//! Debian armhf containers and Android's 32-bit apps run A32 and T32 code at EL0 under an
//! AArch64 EL1. Their exits reach Bothy through the "lower EL using AArch32" vectors with
//! the same registers (R0–R14 of user mode are X0–X14) and mostly the same syndromes; what
//! differs is how to step over an instruction Bothy emulated:
//! - **Length.** A T32 instruction is 16 or 32 bits: ESR_EL2.IL says which (it is always
//!   set for AArch64), so a trapped 16-bit Thumb store or WFI moves the PC by 2.
//! - **IT blocks.** A Thumb instruction inside an IT block carries its place in the
//!   block in PSTATE.IT; stepping over it must advance that state as the CPU would
//!   (ITAdvance), or the rest of the block runs under the wrong conditions.
//! - **Conditions.** A conditional A32/T32 instruction may trap even when its condition
//!   fails (the architecture leaves it to the implementation); ESR_EL2 then carries the
//!   condition (CV/COND) and Bothy must skip it rather than emulate it. That matters for
//!   WFI/WFE; a load or store whose condition fails never accesses memory, so it never
//!   aborts.
//!
//! Exceptions Bothy injects for such code go to the guest kernel's "lower EL using
//! AArch32" vector (`inject::vector_offset`).

use super::handle::GuestFrame;

/// SPSR.M[4]: the interrupted code ran in AArch32 state.
pub const PSR_AARCH32: u64 = 1 << 4;
/// SPSR.T (AArch32): Thumb state.
const PSR_T: u64 = 1 << 5;
/// SPSR.IT[1:0] at bits 26:25 and IT[7:2] at bits 15:10.
const PSR_IT_LOW_SHIFT: u32 = 25;
const PSR_IT_HIGH_SHIFT: u32 = 10;
const PSR_IT_MASK: u64 = (0b11 << PSR_IT_LOW_SHIFT) | (0b11_1111 << PSR_IT_HIGH_SHIFT);

const ESR_IL: u64 = 1 << 25;
/// ESR_EL2.ISS for A32/T32 traps with a condition: CV (bit 24) and COND (23:20).
const ESR_CV: u64 = 1 << 24;
const ESR_COND_SHIFT: u32 = 20;

/// Whether `spsr` describes AArch32 state.
pub const fn is_aarch32(spsr: u64) -> bool {
    spsr & PSR_AARCH32 != 0
}

/// Bytes of the instruction that trapped: 2 for a 16-bit T32 instruction (IL clear), else 4.
pub const fn instruction_len(esr: u64) -> u64 {
    if esr & ESR_IL != 0 {
        4
    } else {
        2
    }
}

/// The IT state of `spsr` as the 8-bit ITSTATE (0: not in an IT block).
const fn itstate(spsr: u64) -> u64 {
    (((spsr >> PSR_IT_HIGH_SHIFT) & 0b11_1111) << 2) | ((spsr >> PSR_IT_LOW_SHIFT) & 0b11)
}

const fn with_itstate(spsr: u64, it: u64) -> u64 {
    (spsr & !PSR_IT_MASK)
        | (((it >> 2) & 0b11_1111) << PSR_IT_HIGH_SHIFT)
        | ((it & 0b11) << PSR_IT_LOW_SHIFT)
}

/// `spsr` after one instruction of an IT block executed (the Arm ARM's ITAdvance): the
/// mask shifts up by one; when the mask's last bit is gone, the block is over.
pub const fn advance_itstate(spsr: u64) -> u64 {
    if spsr & PSR_T == 0 {
        return spsr;
    }
    let it = itstate(spsr);
    if it == 0 {
        return spsr;
    }
    let next = if it & 0b111 == 0 {
        0
    } else {
        (it & 0b1110_0000) | ((it << 1) & 0b1_1111)
    };
    with_itstate(spsr, next)
}

/// Whether condition `cond` (the 4-bit A32 condition field) holds for flags NZCV in
/// `spsr` (bits 31:28).
pub const fn condition_holds(cond: u64, spsr: u64) -> bool {
    let n = spsr & (1 << 31) != 0;
    let z = spsr & (1 << 30) != 0;
    let c = spsr & (1 << 29) != 0;
    let v = spsr & (1 << 28) != 0;
    let base = match (cond >> 1) & 0b111 {
        0b000 => z,
        0b001 => c,
        0b010 => n,
        0b011 => v,
        0b100 => c && !z,
        0b101 => n == v,
        0b110 => !z && n == v,
        // AL (and the unconditional 0b1111 space) always passes.
        _ => return true,
    };
    // Odd conditions are the negations of the even ones below them.
    if cond & 1 != 0 {
        !base
    } else {
        base
    }
}

/// Whether a trapped A32/T32 instruction with syndrome `esr` passes its condition check,
/// so it must be emulated (else it is skipped as if it had executed).
pub const fn condition_passed(esr: u64, spsr: u64) -> bool {
    // Classes 0x10 and up (aborts among them) carry no condition: ISS bit 24 is
    // something else there.
    if esr >> 30 != 0 {
        return true;
    }
    let cond = if esr & ESR_CV != 0 {
        (esr >> ESR_COND_SHIFT) & 0xf
    } else {
        // No condition in the syndrome: a Thumb instruction in an IT block takes the
        // block's; anything else is unconditional.
        let it = itstate(spsr);
        if spsr & PSR_T == 0 || it == 0 {
            return true;
        }
        it >> 4
    };
    condition_holds(cond, spsr)
}

/// Step over the AArch32 instruction that trapped with syndrome `esr`.
pub fn skip(frame: &mut GuestFrame, esr: u64) {
    frame.elr = frame.elr.wrapping_add(instruction_len(esr)) & 0xffff_ffff;
    frame.spsr = advance_itstate(frame.spsr);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const THUMB_USR: u64 = 0x30;

    #[test]
    fn sixteen_bit_thumb_instructions_step_by_two() {
        let mut f = GuestFrame {
            elr: 0x8000,
            spsr: THUMB_USR,
            ..GuestFrame::default()
        };
        skip(&mut f, 0x9000_0000); // a data abort, IL clear
        assert_eq!(f.elr, 0x8002);
        skip(&mut f, 0x9000_0000 | ESR_IL);
        assert_eq!(f.elr, 0x8006);
        assert_eq!(f.spsr, THUMB_USR, "no IT block: SPSR unchanged");
    }

    #[test]
    fn an_it_block_advances_and_ends() {
        // ITTE EQ: ITSTATE = firstcond (0000) : mask (0110), three instructions, the
        // third running under NE (the condition's low bit comes from the mask).
        let start = with_itstate(THUMB_USR, 0b000_00110);
        let second = advance_itstate(start);
        assert_eq!(itstate(second), 0b000_01100);
        let third = advance_itstate(second);
        assert_eq!(itstate(third), 0b000_11000);
        assert_eq!(
            itstate(third) >> 4,
            0x1,
            "the else-instruction runs under NE"
        );
        let done = advance_itstate(third);
        assert_eq!(
            itstate(done),
            0,
            "three instructions, then the block is over"
        );
        assert_eq!(advance_itstate(done), done);
    }

    #[test]
    fn conditions_follow_the_flags() {
        const N: u64 = 1 << 31;
        const Z: u64 = 1 << 30;
        const C: u64 = 1 << 29;
        const V: u64 = 1 << 28;
        let cases = [
            (0x0, Z, true),      // EQ
            (0x0, 0, false),     // EQ
            (0x1, 0, true),      // NE
            (0x2, C, true),      // CS
            (0x3, C, false),     // CC
            (0x4, N, true),      // MI
            (0x5, N, false),     // PL
            (0x6, V, true),      // VS
            (0x7, V, false),     // VC
            (0x8, C, true),      // HI
            (0x8, C | Z, false), // HI
            (0x9, C | Z, true),  // LS
            (0xa, N | V, true),  // GE
            (0xb, N, true),      // LT
            (0xc, 0, true),      // GT
            (0xc, Z, false),     // GT
            (0xd, Z, true),      // LE
            (0xe, 0, true),      // AL
            (0xe, N | Z | C | V, true),
        ];
        for (cond, flags, holds) in cases {
            assert_eq!(
                condition_holds(cond, flags),
                holds,
                "cond {cond:#x} flags {flags:#x}"
            );
        }
    }

    #[test]
    fn the_syndromes_condition_wins_else_the_it_blocks() {
        const Z: u64 = 1 << 30;
        // CV set, COND = NE, Z set: fails.
        assert!(!condition_passed(ESR_CV | (0x1 << ESR_COND_SHIFT), Z));
        // No CV, A32: unconditional.
        assert!(condition_passed(0, 0x10));
        // A data abort (EC 0x24): bit 24 is ISV, not CV.
        assert!(condition_passed(0x9300_0000 | (0x1 << ESR_COND_SHIFT), Z));
        // No CV, Thumb in an IT block with firstcond EQ, Z clear: fails.
        let in_block = with_itstate(THUMB_USR, 0b000_01000);
        assert!(!condition_passed(0, in_block));
        assert!(condition_passed(0, in_block | Z));
    }

    proptest! {
        /// ITAdvance never leaves the IT bits' place, and an A32 SPSR is never touched.
        #[test]
        fn itstate_stays_in_its_bits(spsr in any::<u32>()) {
            let spsr = u64::from(spsr);
            let next = advance_itstate(spsr);
            prop_assert_eq!(next & !PSR_IT_MASK, spsr & !PSR_IT_MASK);
            if spsr & PSR_T == 0 {
                prop_assert_eq!(next, spsr);
            }
        }
    }
}
