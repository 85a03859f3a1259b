//! A CPU simulated for the tests of the register sets switched lazily as a whole
//! (PAuth keys, [`super::pauth`]; SVE state, [`super::sve`]): several vCPUs on one CPU,
//! switched, writing and reading their registers (which traps and claims while they
//! are trapped) and reset, driven by the same `put`/`load`/`claim`/`reset` calls `hyp`
//! makes. After every step it checks that a vCPU whose accesses are untrapped runs on
//! its own values and that a trapped one's saved values are what it last had.

use alloc::vec::Vec;
use proptest::prelude::*;

/// One lazily switched register set, over its fake hardware.
pub trait Model {
    type Regs: Copy + PartialEq + core::fmt::Debug;
    type Hw;
    /// Registers a guest can write and read (slots `0..SLOTS`).
    const SLOTS: usize;
    const RESET: Self::Regs;
    /// The CPU as it comes up: untrapped, `firmware`'s values in the registers.
    fn boot(firmware: Self::Regs) -> Self::Hw;
    /// Whether the running vCPU's accesses are untrapped.
    fn claimed(hw: &Self::Hw) -> bool;
    /// The registers as they are in the CPU.
    fn live(hw: &mut Self::Hw) -> &mut Self::Regs;
    fn poke(regs: &mut Self::Regs, slot: usize, value: u64);
    fn peek(regs: &Self::Regs, slot: usize) -> u64;
    fn put(hw: &mut Self::Hw, regs: &mut Self::Regs) -> bool;
    fn load(hw: &mut Self::Hw, regs: &Self::Regs, claimed: bool);
    fn claim(hw: &mut Self::Hw, regs: &Self::Regs) -> bool;
    fn reset(hw: &mut Self::Hw);
    /// Back into the guest (an `ERET`: synchronises what EL2 wrote).
    fn enter_guest(_hw: &mut Self::Hw) {}
    /// The model's own invariants over the hardware (other trap bits kept, ...).
    fn check(hw: &Self::Hw);
    /// Saves, loads and trap-register writes so far.
    fn moves(hw: &Self::Hw) -> (usize, usize, usize);
}

/// A vCPU's context, and its registers as the architecture says it should read them.
#[derive(Clone, Copy, Debug)]
pub struct Vcpu<R> {
    pub saved: R,
    pub claimed: bool,
    pub view: R,
}

pub struct Cpu<M: Model> {
    pub hw: M::Hw,
    pub vcpus: Vec<Vcpu<M::Regs>>,
    pub current: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Switch(usize),
    /// The guest writes `value` into slot `n` (trapping and claiming first if trapped).
    Write(usize, u64),
    /// The guest reads slot `n`: must see its own value.
    Read(usize),
    Reset,
}

impl<M: Model> Cpu<M> {
    /// `n` new vCPUs on a CPU whose registers hold `firmware`; vCPU 0 loaded.
    pub fn new(n: usize, firmware: M::Regs) -> Self {
        let mut hw = M::boot(firmware);
        let fresh = Vcpu {
            saved: M::RESET,
            claimed: false,
            view: M::RESET,
        };
        M::load(&mut hw, &fresh.saved, fresh.claimed);
        M::enter_guest(&mut hw);
        Cpu {
            hw,
            vcpus: alloc::vec![fresh; n],
            current: 0,
        }
    }

    /// The guest's access: traps (and claims) while trapped.
    fn untrapped(&mut self) {
        if !M::claimed(&self.hw) {
            let v = &self.vcpus[self.current];
            assert!(M::claim(&mut self.hw, &v.saved), "a trapped vCPU claims");
            assert!(M::claimed(&self.hw));
        }
        M::enter_guest(&mut self.hw);
    }

    pub fn run(&mut self, op: Op) {
        match op {
            Op::Switch(to) => {
                let to = to % self.vcpus.len();
                let from = &mut self.vcpus[self.current];
                from.claimed = M::put(&mut self.hw, &mut from.saved);
                self.current = to;
                let v = &self.vcpus[to];
                M::load(&mut self.hw, &v.saved, v.claimed);
                M::enter_guest(&mut self.hw);
            }
            Op::Write(n, value) => {
                self.untrapped();
                let n = n % M::SLOTS;
                M::poke(M::live(&mut self.hw), n, value);
                M::poke(&mut self.vcpus[self.current].view, n, value);
            }
            Op::Read(n) => {
                self.untrapped();
                let n = n % M::SLOTS;
                let want = M::peek(&self.vcpus[self.current].view, n);
                assert_eq!(
                    M::peek(M::live(&mut self.hw), n),
                    want,
                    "vCPU {} reads slot {n}",
                    self.current
                );
            }
            Op::Reset => {
                M::reset(&mut self.hw);
                M::enter_guest(&mut self.hw);
                self.vcpus[self.current].view = M::RESET;
            }
        }
    }

    pub fn check(&mut self) {
        M::check(&self.hw);
        if M::claimed(&self.hw) {
            let view = self.vcpus[self.current].view;
            assert_eq!(
                *M::live(&mut self.hw),
                view,
                "an untrapped vCPU runs on its own values"
            );
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if i != self.current && !v.claimed {
                assert_eq!(v.saved, v.view, "vCPU {i}'s values kept while trapped");
            }
        }
    }

    /// The slot-`n` value in the CPU's registers now.
    pub fn live(&mut self, n: usize) -> u64 {
        M::peek(M::live(&mut self.hw), n)
    }
}

/// Random steps for three vCPUs (writes of zero as likely as of anything else, so
/// going back to trapped is reached).
pub fn op(slots: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..3).prop_map(Op::Switch),
        2 => (0usize..slots, prop_oneof![Just(0u64), any::<u64>()]).prop_map(|(n, v)| Op::Write(n, v)),
        2 => (0usize..slots).prop_map(Op::Read),
        1 => Just(Op::Reset),
    ]
}

/// Any sequence of steps keeps every vCPU on its own values.
pub fn each_vcpu_keeps_its_own<M: Model>(firmware: M::Regs, ops: &[Op]) {
    let mut cpu = Cpu::<M>::new(3, firmware);
    cpu.check();
    for &op in ops {
        cpu.run(op);
        cpu.check();
    }
}

/// vCPUs that never touch the registers cost no save, load or trap write after the
/// first load (which traps them).
pub fn untouched_vcpus_move_nothing<M: Model>(firmware: M::Regs) {
    let mut cpu = Cpu::<M>::new(3, firmware);
    assert!(!M::claimed(&cpu.hw), "the first load traps them");
    let (_, _, writes) = M::moves(&cpu.hw);
    for to in [1, 2, 0, 2, 1, 0] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!(
        M::moves(&cpu.hw),
        (0, 0, writes),
        "nothing moved, traps already set"
    );
}

/// A vCPU that set slot `n` keeps the registers across a switch; the next vCPU runs
/// trapped with the first one's value left in the CPU, claims its own zeros on its
/// first read, goes back to trapped at its next switch (all zero), and the first one
/// goes back to trapped once it clears its value.
pub fn a_set_value_is_switched_and_the_next_vcpu_claims_its_own<M: Model>(
    firmware: M::Regs,
    n: usize,
    value: u64,
) {
    let mut cpu = Cpu::<M>::new(2, firmware);
    cpu.run(Op::Write(n, value));
    cpu.run(Op::Switch(1));
    assert!(
        cpu.vcpus[0].claimed,
        "a value is set: it keeps the registers"
    );
    assert!(!M::claimed(&cpu.hw), "vCPU 1 runs trapped");
    assert_eq!(cpu.live(n), value, "vCPU 0's value is left in the CPU");
    cpu.run(Op::Read(n));
    assert_eq!(cpu.live(n), 0, "the claim loaded vCPU 1's own");
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.live(n), value);
    assert!(!cpu.vcpus[1].claimed, "all zero: trapped again");
    cpu.run(Op::Write(n, 0));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed, "cleared: trapped again");
}

/// A reset vCPU holds the registers, all zero, and is trapped at its next switch.
pub fn a_reset_vcpu_starts_from_zeros<M: Model>(firmware: M::Regs, n: usize, value: u64) {
    let mut cpu = Cpu::<M>::new(2, firmware);
    cpu.run(Op::Write(n, value));
    cpu.run(Op::Switch(1));
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.live(n), value);
    cpu.run(Op::Reset);
    assert!(M::claimed(&cpu.hw));
    assert_eq!(*M::live(&mut cpu.hw), M::RESET);
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed, "zeros: trapped at its next switch");
    assert_eq!(cpu.vcpus[0].saved, M::RESET);
}
