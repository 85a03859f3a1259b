//! The lazy switch of the pointer-authentication keys: which accesses claim, the rule
//! for going back to trapped, and a CPU simulated over switches, guest key writes and
//! uses, and resets, driven by the same `put`/`load`/`claim`/`reset` `hyp` calls.

use super::*;
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

/// What each vCPU's context holds, and what it believes its keys are.
#[derive(Clone, Default)]
struct Vcpu {
    saved: PauthKeys,
    claimed: bool,
    /// Its keys as the architecture says it should read them.
    view: PauthKeys,
}

struct Cpu {
    hw: FakeHw,
    vcpus: Vec<Vcpu>,
    current: usize,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Switch(usize),
    /// MSR of key register `n` (traps and claims first if trapped).
    Write(usize, u64),
    /// MRS of key register `n`: must read the vCPU's own.
    Read(usize),
    /// A pointer-authentication instruction (PACIA): uses the APIA key.
    Sign,
    Reset,
}

impl Cpu {
    fn new(n: usize) -> Self {
        // The CPU comes up with the keys untrapped and whatever firmware left in them.
        let mut hw = FakeHw {
            hcr: OTHER_HCR | hcr::BOTH,
            keys: PauthKeys([0xf1; 10]),
            ..FakeHw::default()
        };
        let vcpus = vec![Vcpu::default(); n];
        load(&mut hw, &vcpus[0].saved, vcpus[0].claimed);
        Cpu {
            hw,
            vcpus,
            current: 0,
        }
    }

    /// The guest's key access: traps (and claims) while API/APK are clear.
    fn untrapped(&mut self) {
        if !claimed(self.hw.hcr) {
            let v = &self.vcpus[self.current];
            assert!(claim(&mut self.hw, &v.saved), "a trapped vCPU claims");
            assert!(claimed(self.hw.hcr));
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Switch(to) => {
                let to = to % self.vcpus.len();
                let from = &mut self.vcpus[self.current];
                from.claimed = put(&mut self.hw, &mut from.saved);
                self.current = to;
                let v = &self.vcpus[to];
                load(&mut self.hw, &v.saved, v.claimed);
            }
            Op::Write(n, value) => {
                self.untrapped();
                self.hw.keys.0[n % 10] = value;
                self.vcpus[self.current].view.0[n % 10] = value;
            }
            Op::Read(n) => {
                self.untrapped();
                assert_eq!(
                    self.hw.keys.0[n % 10],
                    self.vcpus[self.current].view.0[n % 10],
                    "vCPU {} reads key register {}",
                    self.current,
                    n % 10
                );
            }
            Op::Sign => {
                self.untrapped();
                let v = &self.vcpus[self.current];
                assert_eq!(self.hw.keys.0[..2], v.view.0[..2], "signs with its own key");
            }
            Op::Reset => {
                reset(&mut self.hw);
                self.vcpus[self.current].view = PauthKeys::RESET;
            }
        }
    }

    fn check(&self) {
        assert_eq!(self.hw.hcr & !hcr::BOTH, OTHER_HCR, "other HCR bits kept");
        let both = self.hw.hcr & hcr::BOTH;
        assert!(both == 0 || both == hcr::BOTH, "API and APK move together");
        if claimed(self.hw.hcr) {
            assert_eq!(
                self.hw.keys, self.vcpus[self.current].view,
                "an untrapped vCPU runs on its own keys"
            );
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if i != self.current && !v.claimed {
                assert_eq!(v.saved, v.view, "vCPU {i}'s keys kept while trapped");
            }
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3).prop_map(Op::Switch),
        2 => (0usize..10, prop_oneof![Just(0u64), any::<u64>()]).prop_map(|(n, v)| Op::Write(n, v)),
        2 => (0usize..10).prop_map(Op::Read),
        1 => Just(Op::Sign),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back, and signs with, only the keys it wrote.
    #[test]
    fn each_vcpu_uses_only_its_own_keys(ops in proptest::collection::vec(op(), 1..100)) {
        let mut cpu = Cpu::new(3);
        cpu.check();
        for op in ops {
            cpu.run(op);
            cpu.check();
        }
    }
}

#[test]
fn vcpus_that_never_use_them_cost_no_moves() {
    let mut cpu = Cpu::new(3);
    assert!(!claimed(cpu.hw.hcr), "the first load traps them");
    let writes = cpu.hw.hcr_writes;
    for to in [1, 2, 0, 2, 1, 0] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads), (0, 0));
    assert_eq!(cpu.hw.hcr_writes, writes, "the traps were already set");
}

#[test]
fn a_vcpu_with_keys_is_switched_and_the_next_one_claims_its_own() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(0, 0x1234));
    cpu.run(Op::Switch(1));
    assert!(cpu.vcpus[0].claimed, "a key is set: it keeps them");
    assert!(!claimed(cpu.hw.hcr), "vCPU 1 runs trapped");
    assert_eq!(cpu.hw.keys.0[0], 0x1234, "vCPU 0's key is left in the CPU");
    cpu.run(Op::Read(0));
    assert_eq!(cpu.hw.keys.0[0], 0, "the claim loaded vCPU 1's own");
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.keys.0[0], 0x1234);
    assert!(!cpu.vcpus[1].claimed, "all zero: trapped again");
    // A vCPU that clears its keys goes back to trapped too.
    cpu.run(Op::Write(0, 0));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed);
}

#[test]
fn a_reset_vcpu_starts_with_zero_keys() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(4, 77));
    cpu.run(Op::Switch(1));
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.keys.0[4], 77);
    cpu.run(Op::Reset);
    assert!(claimed(cpu.hw.hcr));
    assert_eq!(cpu.hw.keys, PauthKeys::RESET);
    cpu.run(Op::Switch(1));
    assert!(
        !cpu.vcpus[0].claimed,
        "zero keys: trapped at its next switch"
    );
    assert_eq!(cpu.vcpus[0].saved, PauthKeys::RESET);
}

#[test]
fn a_claim_of_held_keys_is_refused() {
    let mut hw = FakeHw {
        hcr: OTHER_HCR | hcr::BOTH,
        ..FakeHw::default()
    };
    assert!(!claim(&mut hw, &PauthKeys([9; 10])));
    assert_eq!((hw.loads, hw.keys), (0, PauthKeys::RESET));
}
