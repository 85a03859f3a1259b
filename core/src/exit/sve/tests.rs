//! The lazy switch of SVE's predicates, FFR and ZCR_EL1: the rule for going back to
//! trapped, and a CPU simulated over switches, guest SVE writes and reads, and resets,
//! driven by the same `put`/`load`/`claim`/`reset` `hyp` calls. The simulated CPU also
//! refuses any move of the registers by EL2 while TZ is set or not yet synchronised,
//! as the hardware would trap it.

use super::*;
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

#[derive(Clone, Default)]
struct Vcpu {
    saved: SveRegs,
    claimed: bool,
    /// Its state as the architecture says it should read it.
    view: SveRegs,
}

struct Cpu {
    hw: FakeHw,
    vcpus: Vec<Vcpu>,
    current: usize,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Switch(usize),
    /// An SVE instruction writing predicate byte `n` (or ZCR_EL1 for `n` past them).
    Write(usize, u8),
    /// An SVE instruction reading it: must see the vCPU's own.
    Read(usize),
    Reset,
}

impl Cpu {
    fn new(n: usize) -> Self {
        // The CPU comes up with SVE untrapped and whatever firmware left in it.
        let mut hw = FakeHw {
            cptr: OTHER_CPTR,
            effective: OTHER_CPTR,
            regs: SveRegs {
                zcr: 0xf,
                preds: [0xee; PRED_BYTES],
            },
            ..FakeHw::default()
        };
        let vcpus = vec![Vcpu::default(); n];
        load(&mut hw, &vcpus[0].saved, vcpus[0].claimed);
        // The ERET into the guest synchronises whatever `load` wrote.
        hw.effective = hw.cptr;
        Cpu {
            hw,
            vcpus,
            current: 0,
        }
    }

    /// The guest's SVE instruction: traps (and claims) while TZ is set.
    fn untrapped(&mut self) {
        if !claimed(self.hw.cptr) {
            let v = &self.vcpus[self.current];
            assert!(claim(&mut self.hw, &v.saved), "a trapped vCPU claims");
        }
        // Back into the guest.
        self.hw.effective = self.hw.cptr;
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
                self.hw.effective = self.hw.cptr;
            }
            Op::Write(n, value) => {
                self.untrapped();
                let view = &mut self.vcpus[self.current].view;
                match self.hw.regs.preds.get_mut(n) {
                    Some(b) => {
                        *b = value;
                        view.preds[n] = value;
                    }
                    None => {
                        self.hw.regs.zcr = u64::from(value & 0xf);
                        view.zcr = u64::from(value & 0xf);
                    }
                }
            }
            Op::Read(n) => {
                self.untrapped();
                let view = &self.vcpus[self.current].view;
                match self.hw.regs.preds.get(n) {
                    Some(&b) => assert_eq!(b, view.preds[n], "vCPU {} P byte {n}", self.current),
                    None => assert_eq!(self.hw.regs.zcr, view.zcr, "vCPU {} ZCR", self.current),
                }
            }
            Op::Reset => {
                reset(&mut self.hw);
                self.hw.effective = self.hw.cptr;
                self.vcpus[self.current].view = SveRegs::RESET;
            }
        }
    }

    fn check(&self) {
        assert_eq!(self.hw.cptr & !cptr::TZ, OTHER_CPTR, "other CPTR bits kept");
        if claimed(self.hw.cptr) {
            assert_eq!(
                self.hw.regs, self.vcpus[self.current].view,
                "an untrapped vCPU runs on its own state"
            );
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if i != self.current && !v.claimed {
                assert_eq!(v.saved, v.view, "vCPU {i}'s state kept while trapped");
            }
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3).prop_map(Op::Switch),
        2 => (0usize..PRED_BYTES + 1, prop_oneof![Just(0u8), any::<u8>()]).prop_map(|(n, v)| Op::Write(n, v)),
        2 => (0usize..PRED_BYTES + 1).prop_map(Op::Read),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back only the predicates and ZCR_EL1 it wrote, and EL2 never moves them
    /// with SVE trapped.
    #[test]
    fn each_vcpu_sees_only_its_own_sve_state(ops in proptest::collection::vec(op(), 1..100)) {
        let mut cpu = Cpu::new(3);
        cpu.check();
        for op in ops {
            cpu.run(op);
            cpu.check();
        }
    }
}

#[test]
fn vcpus_that_never_use_it_cost_no_moves() {
    let mut cpu = Cpu::new(3);
    assert!(!claimed(cpu.hw.cptr), "the first load traps it");
    let writes = cpu.hw.cptr_writes;
    for to in [1, 2, 0, 2, 1, 0] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads), (0, 0));
    assert_eq!(cpu.hw.cptr_writes, writes, "TZ was already set");
}

#[test]
fn a_vcpu_using_sve_is_switched_and_the_next_one_claims_its_own() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(3, 0x5a));
    cpu.run(Op::Switch(1));
    assert!(
        cpu.vcpus[0].claimed,
        "a predicate is set: it keeps the state"
    );
    assert!(!claimed(cpu.hw.cptr), "vCPU 1 runs trapped");
    assert_eq!(
        cpu.hw.regs.preds[3], 0x5a,
        "vCPU 0's predicate is left in the CPU"
    );
    cpu.run(Op::Read(3));
    assert_eq!(cpu.hw.regs.preds[3], 0, "the claim loaded vCPU 1's own");
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.regs.preds[3], 0x5a);
    assert!(!cpu.vcpus[1].claimed, "all zero: trapped again");
    cpu.run(Op::Write(3, 0));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed, "cleared: trapped again");
}

#[test]
fn a_reset_vcpu_starts_from_zeros() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(PRED_BYTES, 3));
    cpu.run(Op::Switch(1));
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.regs.zcr, 3);
    cpu.run(Op::Reset);
    assert!(claimed(cpu.hw.cptr));
    assert_eq!(cpu.hw.regs, SveRegs::RESET);
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed, "zeros: trapped at its next switch");
}

#[test]
fn a_claim_of_held_state_is_refused() {
    let mut hw = FakeHw {
        cptr: OTHER_CPTR,
        effective: OTHER_CPTR,
        ..FakeHw::default()
    };
    let regs = SveRegs {
        zcr: 1,
        preds: [1; PRED_BYTES],
    };
    assert!(!claim(&mut hw, &regs));
    assert_eq!((hw.loads, hw.regs), (0, SveRegs::RESET));
}
