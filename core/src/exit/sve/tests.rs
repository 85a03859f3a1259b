//! The lazy switch of SVE's predicates, FFR and ZCR_EL1: the rule for going back to
//! trapped, and SVE's state in `lazy_sim`'s simulated CPU, whose fake refuses any move
//! of the registers by EL2 while TZ is set or not yet synchronised, as the hardware
//! would trap it.

use super::*;
use crate::exit::lazy_sim::{self, Model};
use proptest::prelude::*;

/// CPTR_EL2 bits that are not TZ (RES1, TSM, TAM), which must survive.
const OTHER_CPTR: u64 = (1 << 13) | (1 << 9) | 0xff | (1 << 12) | (1 << 30);

#[test]
fn state_stays_claimed_while_any_of_it_is_set() {
    assert!(!SveRegs::RESET.stays_claimed());
    let mut r = SveRegs::RESET;
    r.zcr = 1;
    assert!(r.stays_claimed(), "ZCR_EL1");
    for i in 0..PRED_BYTES {
        let mut r = SveRegs::RESET;
        r.preds[i] = 0x80;
        assert!(r.stays_claimed(), "predicate byte {i}");
    }
}

/// One CPU's SVE state and CPTR_EL2, counting the moves.
#[derive(Default)]
struct FakeHw {
    cptr: u64,
    /// CPTR_EL2 as EL2's own instructions see it (updated by a synchronising write).
    effective: u64,
    regs: SveRegs,
    saves: usize,
    loads: usize,
    cptr_writes: usize,
}

impl SveHw for FakeHw {
    fn cptr(&self) -> u64 {
        self.cptr
    }
    fn set_cptr(&mut self, value: u64, sync: bool) {
        self.cptr = value;
        if sync {
            self.effective = value;
        }
        self.cptr_writes += 1;
    }
    fn save(&mut self, regs: &mut SveRegs) {
        assert!(claimed(self.effective), "EL2's SVE save would trap");
        *regs = self.regs;
        self.saves += 1;
    }
    fn load(&mut self, regs: &SveRegs) {
        assert!(claimed(self.effective), "EL2's SVE load would trap");
        self.regs = *regs;
        self.loads += 1;
    }
}

/// SVE's state in the simulated CPU of `lazy_sim`: slots 0..PRED_BYTES are predicate
/// bytes, the last is ZCR_EL1.LEN. The fake refuses any move by EL2 while TZ is set or
/// not yet synchronised, as the hardware would trap it.
struct Sve;

impl Model for Sve {
    type Regs = SveRegs;
    type Hw = FakeHw;
    const SLOTS: usize = PRED_BYTES + 1;
    const RESET: SveRegs = SveRegs::RESET;
    fn boot(firmware: SveRegs) -> FakeHw {
        FakeHw {
            cptr: OTHER_CPTR,
            effective: OTHER_CPTR,
            regs: firmware,
            ..FakeHw::default()
        }
    }
    fn claimed(hw: &FakeHw) -> bool {
        claimed(hw.cptr)
    }
    fn live(hw: &mut FakeHw) -> &mut SveRegs {
        &mut hw.regs
    }
    fn poke(regs: &mut SveRegs, slot: usize, value: u64) {
        match regs.preds.get_mut(slot) {
            Some(b) => *b = value as u8,
            None => regs.zcr = value & 0xf,
        }
    }
    fn peek(regs: &SveRegs, slot: usize) -> u64 {
        regs.preds.get(slot).map_or(regs.zcr, |&b| u64::from(b))
    }
    fn put(hw: &mut FakeHw, regs: &mut SveRegs) -> bool {
        put(hw, regs)
    }
    fn load(hw: &mut FakeHw, regs: &SveRegs, claimed: bool) {
        load(hw, regs, claimed)
    }
    fn claim(hw: &mut FakeHw, regs: &SveRegs) -> bool {
        claim(hw, regs)
    }
    fn reset(hw: &mut FakeHw) {
        reset(hw)
    }
    fn enter_guest(hw: &mut FakeHw) {
        hw.effective = hw.cptr;
    }
    fn check(hw: &FakeHw) {
        assert_eq!(hw.cptr & !cptr::TZ, OTHER_CPTR, "other CPTR bits kept");
    }
    fn moves(hw: &FakeHw) -> (usize, usize, usize) {
        (hw.saves, hw.loads, hw.cptr_writes)
    }
}

/// What firmware may leave in SVE's registers.
const FIRMWARE: SveRegs = SveRegs {
    zcr: 0xf,
    preds: [0xee; PRED_BYTES],
};

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back only the predicates and ZCR_EL1 it wrote, and EL2 never moves them
    /// with SVE trapped.
    #[test]
    fn each_vcpu_sees_only_its_own_sve_state(ops in proptest::collection::vec(lazy_sim::op(PRED_BYTES + 1), 1..100)) {
        lazy_sim::each_vcpu_keeps_its_own::<Sve>(FIRMWARE, &ops);
    }
}

#[test]
fn vcpus_that_never_use_it_cost_no_moves() {
    lazy_sim::untouched_vcpus_move_nothing::<Sve>(FIRMWARE);
}

#[test]
fn a_vcpu_using_sve_is_switched_and_the_next_one_claims_its_own() {
    lazy_sim::a_set_value_is_switched_and_the_next_vcpu_claims_its_own::<Sve>(FIRMWARE, 3, 0x5a);
}

#[test]
fn a_reset_vcpu_starts_from_zeros() {
    lazy_sim::a_reset_vcpu_starts_from_zeros::<Sve>(FIRMWARE, PRED_BYTES, 3);
}

#[test]
fn a_claim_of_held_state_is_refused() {
    let mut hw = Sve::boot(SveRegs::RESET);
    let regs = SveRegs {
        zcr: 1,
        preds: [1; PRED_BYTES],
    };
    assert!(!claim(&mut hw, &regs));
    assert_eq!((hw.loads, hw.regs), (0, SveRegs::RESET));
}
