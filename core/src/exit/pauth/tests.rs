//! The lazy switch of the pointer-authentication keys: which accesses claim, the rule
//! for going back to trapped, and the keys in `lazy_sim`'s simulated CPU.

use super::*;
use crate::exit::lazy_sim::{self, Model};
use proptest::prelude::*;

/// HCR_EL2 bits that are not the keys' (VM, IMO, TWI, TWE, RW), which must survive.
const OTHER_HCR: u64 = 1 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 31;

fn access(crm: u8, op2: u8, read: bool) -> SysRegAccess {
    SysRegAccess {
        op0: 3,
        op1: 0,
        crn: 2,
        crm,
        op2,
        reg: 5,
        read,
    }
}

#[test]
fn the_ten_key_registers_and_nothing_else() {
    let keys = [
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
        (2, 2),
        (2, 3),
        (3, 0),
        (3, 1),
    ];
    for (crm, op2) in keys {
        for read in [true, false] {
            assert!(is_key_register(&access(crm, op2, read)), "C2_C{crm}_{op2}");
        }
    }
    // TTBR0/TTBR1/TCR (C2_C0_x), the rest of C2_C3 and anything with another op1/op0.
    for (crm, op2) in [(0, 0), (0, 1), (0, 2), (3, 2), (3, 3), (4, 0), (1, 4)] {
        assert!(!is_key_register(&access(crm, op2, true)), "C2_C{crm}_{op2}");
    }
    let mut other = access(1, 0, true);
    other.op1 = 4;
    assert!(!is_key_register(&other));
    other.op1 = 0;
    other.op0 = 2;
    assert!(!is_key_register(&other));
}

#[test]
fn keys_stay_claimed_while_any_is_set() {
    assert!(!PauthKeys::RESET.stays_claimed());
    for i in 0..10 {
        let mut k = PauthKeys::RESET;
        k.0[i] = 1 << 63;
        assert!(k.stays_claimed(), "key register {i}");
    }
}

/// One CPU's keys and HCR_EL2, counting the moves.
#[derive(Default)]
struct FakeHw {
    hcr: u64,
    keys: PauthKeys,
    saves: usize,
    loads: usize,
    hcr_writes: usize,
}

impl PauthHw for FakeHw {
    fn hcr(&self) -> u64 {
        self.hcr
    }
    fn set_hcr(&mut self, value: u64) {
        self.hcr = value;
        self.hcr_writes += 1;
    }
    fn save(&mut self, keys: &mut PauthKeys) {
        *keys = self.keys;
        self.saves += 1;
    }
    fn load(&mut self, keys: &PauthKeys) {
        self.keys = *keys;
        self.loads += 1;
    }
}

/// The keys in the simulated CPU of `lazy_sim`: slot `n` is key register `n` (a
/// pointer-authentication instruction uses them as a read does).
struct Keys;

impl Model for Keys {
    type Regs = PauthKeys;
    type Hw = FakeHw;
    const SLOTS: usize = 10;
    const RESET: PauthKeys = PauthKeys::RESET;
    fn boot(firmware: PauthKeys) -> FakeHw {
        FakeHw {
            hcr: OTHER_HCR | hcr::BOTH,
            keys: firmware,
            ..FakeHw::default()
        }
    }
    fn claimed(hw: &FakeHw) -> bool {
        claimed(hw.hcr)
    }
    fn live(hw: &mut FakeHw) -> &mut PauthKeys {
        &mut hw.keys
    }
    fn poke(regs: &mut PauthKeys, slot: usize, value: u64) {
        regs.0[slot] = value;
    }
    fn peek(regs: &PauthKeys, slot: usize) -> u64 {
        regs.0[slot]
    }
    fn put(hw: &mut FakeHw, regs: &mut PauthKeys) -> bool {
        put(hw, regs)
    }
    fn load(hw: &mut FakeHw, regs: &PauthKeys, claimed: bool) {
        load(hw, regs, claimed)
    }
    fn claim(hw: &mut FakeHw, regs: &PauthKeys) -> bool {
        claim(hw, regs)
    }
    fn reset(hw: &mut FakeHw) {
        reset(hw)
    }
    fn check(hw: &FakeHw) {
        assert_eq!(hw.hcr & !hcr::BOTH, OTHER_HCR, "other HCR bits kept");
        let both = hw.hcr & hcr::BOTH;
        assert!(both == 0 || both == hcr::BOTH, "API and APK move together");
    }
    fn moves(hw: &FakeHw) -> (usize, usize, usize) {
        (hw.saves, hw.loads, hw.hcr_writes)
    }
}

/// What firmware may leave in the keys.
const FIRMWARE: PauthKeys = PauthKeys([0xf1; 10]);

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back, and signs with, only the keys it wrote.
    #[test]
    fn each_vcpu_uses_only_its_own_keys(ops in proptest::collection::vec(lazy_sim::op(10), 1..100)) {
        lazy_sim::each_vcpu_keeps_its_own::<Keys>(FIRMWARE, &ops);
    }
}

#[test]
fn vcpus_that_never_use_them_cost_no_moves() {
    lazy_sim::untouched_vcpus_move_nothing::<Keys>(FIRMWARE);
}

#[test]
fn a_vcpu_with_keys_is_switched_and_the_next_one_claims_its_own() {
    lazy_sim::a_set_value_is_switched_and_the_next_vcpu_claims_its_own::<Keys>(FIRMWARE, 0, 0x1234);
}

#[test]
fn a_reset_vcpu_starts_with_zero_keys() {
    lazy_sim::a_reset_vcpu_starts_from_zeros::<Keys>(FIRMWARE, 4, 77);
}

#[test]
fn a_claim_of_held_keys_is_refused() {
    let mut hw = Keys::boot(PauthKeys::RESET);
    assert!(!claim(&mut hw, &PauthKeys([9; 10])));
    assert_eq!((hw.loads, hw.keys), (0, PauthKeys::RESET));
}
