//! The lazy switch of the PMU: the answer to each trapped access, the rule for going
//! back to trapped, and a CPU simulated over a sequence of switches, guest accesses and
//! resets, driven by the same `put`/`load`/`claim`/`reset` `hyp` calls.

use super::*;
use crate::dev::pmu::overflow_asserted;
use proptest::prelude::*;

/// QEMU `max`'s PMCR_EL0.N.
const COUNTERS: usize = 6;
/// MDCR_EL2 bits that are not the PMU traps' (HPMN = 6, HPMD, debug's TDRA), which must
/// survive.
const OTHER_MDCR: u64 = 6 | 1 << 17 | 1 << 11;

fn access(enc: (u8, u8, u8, u8, u8), read: bool) -> SysRegAccess {
    let (op0, op1, crn, crm, op2) = enc;
    SysRegAccess {
        op0,
        op1,
        crn,
        crm,
        op2,
        reg: 3,
        read,
    }
}

#[test]
fn every_pmu_register_claims_from_either_direction() {
    use PmuReg::*;
    let named = [
        ((3, 3, 9, 12, 0), Pmcr),
        ((3, 3, 9, 12, 1), CntEnSet),
        ((3, 3, 9, 12, 2), CntEnClr),
        ((3, 3, 9, 12, 3), OvsClr),
        ((3, 3, 9, 12, 4), SwInc),
        ((3, 3, 9, 12, 5), Selr),
        ((3, 3, 9, 12, 6), Ceid0),
        ((3, 3, 9, 12, 7), Ceid1),
        ((3, 3, 9, 13, 0), Ccntr),
        ((3, 3, 9, 13, 1), XevTyper),
        ((3, 3, 9, 13, 2), XevCntr),
        ((3, 3, 9, 14, 0), UserEnr),
        ((3, 3, 9, 14, 3), OvsSet),
        ((3, 0, 9, 14, 1), IntEnSet),
        ((3, 0, 9, 14, 2), IntEnClr),
        ((3, 0, 9, 14, 6), Mmir),
        ((3, 3, 14, 8, 0), EvCntr(0)),
        ((3, 3, 14, 8, 5), EvCntr(5)),
        ((3, 3, 14, 11, 6), EvCntr(30)),
        ((3, 3, 14, 12, 0), EvTyper(0)),
        ((3, 3, 14, 15, 6), EvTyper(30)),
        ((3, 3, 14, 15, 7), CcFiltr),
    ];
    for (enc, reg) in named {
        for read in [true, false] {
            assert_eq!(PmuReg::of(&access(enc, read)), Some(reg), "{enc:?}");
            assert_eq!(answer(&access(enc, read)), Some(Answer::Claim), "{enc:?}");
        }
    }
    // Every event counter and type has its own number.
    for n in 0..31u8 {
        let (crm, op2) = (8 + (n >> 3), n & 7);
        assert_eq!(
            PmuReg::of(&access((3, 3, 14, crm, op2), true)),
            Some(EvCntr(n))
        );
        assert_eq!(
            PmuReg::of(&access((3, 3, 14, crm + 4, op2), true)),
            Some(EvTyper(n))
        );
    }
    // Not the PMU: the generic timer beside the event counters (CNTP_CTL_EL0,
    // CNTV_CVAL_EL0), other CRn 9 encodings, the debug space, the ID space.
    for enc in [
        (3, 3, 14, 2, 1),
        (3, 3, 14, 3, 2),
        (3, 3, 9, 14, 1),
        (3, 0, 9, 12, 0),
        (3, 4, 9, 12, 0),
        (2, 3, 9, 12, 0),
        (3, 0, 0, 5, 0),
    ] {
        assert_eq!(answer(&access(enc, true)), None, "{enc:?}");
    }
}

#[test]
fn a_vcpu_keeps_the_pmu_while_it_does_anything() {
    let idle = PmuRegs::RESET;
    assert!(!idle.stays_claimed());
    // Linux's idle driver: PMCR_EL0 = LC, everything disabled, an event type and a
    // counter value left behind, PMSELR_EL0 and PMCCFILTR_EL0 written: trapped again,
    // its values kept for the next claim.
    const PMCR_LC: u64 = 1 << 6;
    let linux = PmuRegs {
        pmcr: PMCR_LC,
        selr: 3,
        ccntr: 12345,
        ccfiltr: 1 << 27,
        evtyper: [0x11; MAX_EVENT_COUNTERS],
        evcntr: [7; MAX_EVENT_COUNTERS],
        ..idle
    };
    assert!(!linux.stays_claimed());
    let one = |f: fn(&mut PmuRegs)| {
        let mut r = linux;
        f(&mut r);
        r.stays_claimed()
    };
    assert!(one(|r| r.pmcr |= PMCR_E));
    assert!(one(|r| r.cnten = 1 << 31));
    assert!(one(|r| r.cnten = 1));
    assert!(one(|r| r.inten = 1 << 2));
    assert!(one(|r| r.ovs = 1 << 31));
    assert!(one(|r| r.userenr = 1));
    // A trapped vCPU's values raise no overflow.
    assert!(!overflow_asserted(linux.pmcr, linux.ovs, linux.inten));
}

#[test]
fn trap_bits() {
    assert_eq!(mdcr::TRAPS, 0b11 << 5);
    assert!(claimed(OTHER_MDCR));
    assert!(!claimed(OTHER_MDCR | mdcr::TRAPS));
}

/// A CPU's PMU as plain fields, with what the hardware does between steps: enabled
/// counters count. Counts the moves.
#[derive(Clone, Debug)]
struct FakePmuHw {
    mdcr: u64,
    regs: PmuRegs,
    mdcr_writes: usize,
    saves: usize,
    loads: usize,
    quiesces: usize,
}

impl MdcrEl2 for FakePmuHw {
    fn mdcr(&self) -> u64 {
        self.mdcr
    }
    fn set_mdcr(&mut self, value: u64) {
        self.mdcr = value;
        self.mdcr_writes += 1;
    }
}

impl PmuHw for FakePmuHw {
    fn save(&mut self, counters: usize, regs: &mut PmuRegs) {
        self.saves += 1;
        let evcntr = regs.evcntr;
        let evtyper = regs.evtyper;
        *regs = self.regs;
        // Beyond the CPU's counters nothing is read: what the context had stays.
        regs.evcntr[counters..].copy_from_slice(&evcntr[counters..]);
        regs.evtyper[counters..].copy_from_slice(&evtyper[counters..]);
    }
    fn load(&mut self, counters: usize, regs: &PmuRegs) {
        self.loads += 1;
        let evcntr = self.regs.evcntr;
        let evtyper = self.regs.evtyper;
        self.regs = *regs;
        self.regs.evcntr[counters..].copy_from_slice(&evcntr[counters..]);
        self.regs.evtyper[counters..].copy_from_slice(&evtyper[counters..]);
    }
    fn quiesce(&mut self) {
        self.quiesces += 1;
        self.regs.pmcr &= !PMCR_E;
        self.regs.cnten = 0;
        self.regs.inten = 0;
        self.regs.userenr = 0;
    }
}

impl FakePmuHw {
    /// Time passes: each counter enabled (and PMCR_EL0.E) counts one.
    fn tick(&mut self) {
        if self.regs.pmcr & PMCR_E == 0 {
            return;
        }
        if self.regs.cnten & 1 << 31 != 0 {
            self.regs.ccntr = self.regs.ccntr.wrapping_add(1);
        }
        for n in 0..COUNTERS {
            if self.regs.cnten & 1 << n != 0 {
                self.regs.evcntr[n] = self.regs.evcntr[n].wrapping_add(1);
            }
        }
    }
}

/// A vCPU as `hyp` keeps it off its CPU, and its guest's own view of its PMU.
#[derive(Clone, Debug, Default)]
struct Vcpu {
    saved: PmuRegs,
    claimed: bool,
    /// What every read must return: what it wrote, and what its counters counted
    /// while it ran.
    view: PmuRegs,
    gone: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Another vCPU onto the CPU (`hyp`: save, then restore).
    Switch(usize),
    /// The same, without the save: the vCPU the CPU held was destroyed with its VM.
    SwitchDropping(usize),
    /// The running guest runs a while: its enabled counters count.
    Run,
    /// The guest writes one of its PMU registers (a field of `PmuRegs`, by number).
    Write(u8, u64),
    /// The guest reads them all and checks them.
    Read,
    /// PSCI CPU_ON of the running vCPU.
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![Just(0u64), 1u64..8, Just(1 << 31), any::<u64>()];
    prop_oneof![
        (0usize..3).prop_map(Op::Switch),
        (0usize..3).prop_map(Op::SwitchDropping),
        Just(Op::Run),
        (0u8..10, value).prop_map(|(r, v)| Op::Write(r, v)),
        Just(Op::Read),
        Just(Op::Reset),
    ]
}

/// The register of `regs` that `r` names, and the trapped access that reaches it.
fn reg(regs: &mut PmuRegs, r: u8) -> (&mut u64, (u8, u8, u8, u8, u8)) {
    match r {
        0 => (&mut regs.pmcr, (3, 3, 9, 12, 0)),
        1 => (&mut regs.cnten, (3, 3, 9, 12, 1)),
        2 => (&mut regs.inten, (3, 0, 9, 14, 1)),
        3 => (&mut regs.ovs, (3, 3, 9, 14, 3)),
        4 => (&mut regs.userenr, (3, 3, 9, 14, 0)),
        5 => (&mut regs.selr, (3, 3, 9, 12, 5)),
        6 => (&mut regs.ccntr, (3, 3, 9, 13, 0)),
        7 => (&mut regs.ccfiltr, (3, 3, 14, 15, 7)),
        8 => (&mut regs.evcntr[2], (3, 3, 14, 8, 2)),
        _ => (&mut regs.evtyper[5], (3, 3, 14, 12, 5)),
    }
}

struct Cpu {
    hw: FakePmuHw,
    vcpus: Vec<Vcpu>,
    running: usize,
}

impl Cpu {
    /// vCPU 0 running, as `hyp` starts one: the CPU comes up with TPM clear and
    /// whatever firmware left in the PMU (here: counting).
    fn new(vcpus: usize) -> Self {
        let mut regs = PmuRegs::RESET;
        regs.pmcr = PMCR_E;
        regs.cnten = 1 << 31 | 1;
        regs.inten = 1;
        regs.ovs = 1;
        regs.userenr = 0xf;
        let mut cpu = Cpu {
            hw: FakePmuHw {
                mdcr: OTHER_MDCR,
                regs,
                mdcr_writes: 0,
                saves: 0,
                loads: 0,
                quiesces: 0,
            },
            vcpus: vec![Vcpu::default(); vcpus],
            running: 0,
        };
        load(&mut cpu.hw, COUNTERS, &PmuRegs::RESET, false);
        cpu
    }

    /// The running guest accesses PMU register `enc`: if it traps, the exit policy's
    /// answer must be a claim, carried out as `hyp` does (with the vCPU's saved
    /// registers) before the access runs again.
    fn trap(&mut self, enc: (u8, u8, u8, u8, u8), read: bool) {
        if claimed(self.hw.mdcr) {
            return;
        }
        assert_eq!(answer(&access(enc, read)), Some(Answer::Claim));
        let saved = self.vcpus[self.running].saved;
        assert!(claim(&mut self.hw, COUNTERS, &saved));
    }

    fn switch(&mut self, to: usize, save: bool) {
        let v = &mut self.vcpus[self.running];
        if save {
            v.claimed = put(&mut self.hw, COUNTERS, &mut v.saved);
        } else {
            v.gone = true;
        }
        self.running = to;
        let v = &self.vcpus[to];
        load(&mut self.hw, COUNTERS, &v.saved, v.claimed);
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Switch(to) | Op::SwitchDropping(to)
                if self.vcpus[to].gone || to == self.running => {}
            Op::Switch(to) => self.switch(to, true),
            Op::SwitchDropping(to) => self.switch(to, false),
            Op::Run => {
                self.hw.tick();
                // The guest's own counters count only if it holds the PMU: a trapped
                // one's are idle by the rule that trapped it.
                if claimed(self.hw.mdcr) {
                    self.vcpus[self.running].view = self.hw.regs;
                }
            }
            Op::Write(r, value) => {
                let (_, enc) = reg(&mut self.hw.regs, r);
                self.trap(enc, false);
                let value = if r == 0 { value & PMCR_STATE } else { value };
                *reg(&mut self.hw.regs, r).0 = value;
                *reg(&mut self.vcpus[self.running].view, r).0 = value;
            }
            Op::Read => {
                for r in 0..10 {
                    let (_, enc) = reg(&mut self.hw.regs, r);
                    self.trap(enc, true);
                }
                assert_eq!(
                    self.hw.regs, self.vcpus[self.running].view,
                    "vCPU {} reads its own PMU",
                    self.running
                );
            }
            Op::Reset => {
                reset(&mut self.hw, COUNTERS);
                self.vcpus[self.running].view = PmuRegs::RESET;
            }
        }
    }

    /// What must hold between any two steps.
    fn check(&self) {
        let v = &self.vcpus[self.running];
        assert_eq!(
            self.hw.mdcr & OTHER_MDCR,
            OTHER_MDCR,
            "other MDCR_EL2 bits kept"
        );
        let traps = self.hw.mdcr & mdcr::TRAPS;
        assert!(traps == 0 || traps == mdcr::TRAPS, "TPM and TPMCR together");
        if claimed(self.hw.mdcr) {
            // Untrapped: the CPU holds exactly the vCPU's PMU.
            assert_eq!(self.hw.regs, v.view, "vCPU {}", self.running);
        } else {
            // Trapped: its saved values are its own, idle; the CPU counts nothing,
            // raises no overflow and refuses EL0.
            assert_eq!(v.saved, v.view, "vCPU {} keeps its values", self.running);
            assert!(!v.saved.stays_claimed());
            let hw = &self.hw.regs;
            assert_eq!(hw.pmcr & PMCR_E, 0);
            assert_eq!((hw.cnten, hw.inten, hw.userenr), (0, 0, 0));
            assert!(!overflow_asserted(hw.pmcr, hw.ovs, hw.inten));
        }
    }
}

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back only what it wrote and what its own counters counted; a trapped one
    /// runs on a PMU that counts nothing and interrupts nothing.
    #[test]
    fn each_vcpu_sees_only_its_own_pmu(ops in proptest::collection::vec(op(), 1..100)) {
        let mut cpu = Cpu::new(3);
        cpu.check();
        for op in ops {
            cpu.run(op);
            cpu.check();
        }
    }
}

#[test]
fn vcpus_that_never_touch_it_cost_no_moves() {
    let mut cpu = Cpu::new(3);
    // The first load found TPM clear (anything may be in the PMU) and stopped it.
    assert_eq!(cpu.hw.quiesces, 1);
    let writes = cpu.hw.mdcr_writes;
    for to in [1, 2, 0, 2, 1, 0] {
        cpu.run(Op::Switch(to));
        cpu.run(Op::Run);
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads, cpu.hw.quiesces), (0, 0, 1));
    assert_eq!(cpu.hw.mdcr_writes, writes, "the traps were already set");
}

#[test]
fn a_counting_vcpu_is_switched_and_the_next_one_sees_nothing() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(1, 1 << 31)); // PMCNTENSET: the cycle counter
    cpu.run(Op::Write(0, PMCR_E));
    assert!(claimed(cpu.hw.mdcr));
    cpu.run(Op::Run);
    cpu.run(Op::Switch(1));
    assert!(cpu.vcpus[0].claimed, "counting: it keeps the PMU");
    // vCPU 1 is trapped: vCPU 0's cycle count is still in the CPU, stopped and out of
    // its reach.
    assert!(!claimed(cpu.hw.mdcr));
    assert_eq!(cpu.hw.regs.ccntr, 1);
    cpu.run(Op::Run);
    assert_eq!(
        cpu.hw.regs.ccntr, 1,
        "stopped: it counts nothing for vCPU 1"
    );
    cpu.run(Op::Read);
    assert_eq!(cpu.hw.regs.ccntr, 0, "the claim loaded vCPU 1's own");
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.regs.ccntr, 1);
    cpu.run(Op::Run);
    cpu.run(Op::Read);
    assert_eq!(cpu.vcpus[0].view.ccntr, 2);
    // vCPU 1 did nothing with it: trapped again, and costs nothing.
    assert!(!cpu.vcpus[1].claimed);
    let loads = cpu.hw.loads;
    cpu.run(Op::Switch(1));
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.loads, loads + 1, "only vCPU 0 loaded");
}

#[test]
fn an_idle_linux_pmu_goes_back_to_trapped_and_reads_back_its_values() {
    // Linux's probe: PMCR_EL0 = LC (P and C are actions), enables and flags cleared,
    // PMUSERENR_EL0 = 0; then an event type programmed and left.
    const PMCR_LC: u64 = 1 << 6;
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(0, PMCR_LC | 0b110));
    cpu.run(Op::Write(4, 0));
    cpu.run(Op::Write(9, 0x11));
    cpu.run(Op::Write(5, 5));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed);
    let (saves, loads) = (cpu.hw.saves, cpu.hw.loads);
    for to in [0, 1, 0, 1] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads), (saves, loads));
    cpu.run(Op::Switch(0));
    cpu.run(Op::Read);
    assert_eq!(cpu.hw.regs.pmcr, PMCR_LC);
    assert_eq!((cpu.hw.regs.evtyper[5], cpu.hw.regs.selr), (0x11, 5));
}

#[test]
fn a_vcpu_whose_vm_was_destroyed_leaves_nothing_counting() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(1, 1));
    cpu.run(Op::Write(2, 1));
    cpu.run(Op::Write(0, PMCR_E));
    cpu.run(Op::Write(3, 1)); // an overflow: the line is high
    assert!(overflow_asserted(
        cpu.hw.regs.pmcr,
        cpu.hw.regs.ovs,
        cpu.hw.regs.inten
    ));
    cpu.run(Op::SwitchDropping(1));
    assert!(!claimed(cpu.hw.mdcr));
    assert!(!overflow_asserted(
        cpu.hw.regs.pmcr,
        cpu.hw.regs.ovs,
        cpu.hw.regs.inten
    ));
    cpu.check();
}

#[test]
fn a_claim_of_a_pmu_already_held_moves_nothing() {
    let mut cpu = Cpu::new(1);
    cpu.run(Op::Write(5, 3));
    let (loads, writes) = (cpu.hw.loads, cpu.hw.mdcr_writes);
    assert!(!claim(&mut cpu.hw, COUNTERS, &PmuRegs::RESET));
    assert_eq!((cpu.hw.loads, cpu.hw.mdcr_writes), (loads, writes));
    assert_eq!(cpu.hw.regs.selr, 3);
}

#[test]
fn a_reset_vcpu_holds_a_zeroed_pmu_then_goes_back_to_trapped() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Write(6, 99));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed);
    cpu.run(Op::Switch(0));
    // Trapped with ccntr = 99 saved; reset: the CPU's PMU zeroed and held.
    cpu.run(Op::Reset);
    assert!(claimed(cpu.hw.mdcr));
    assert_eq!(cpu.hw.regs, PmuRegs::RESET);
    cpu.run(Op::Read);
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed);
    assert_eq!(
        cpu.vcpus[0].saved,
        PmuRegs::RESET,
        "the old incarnation's are gone"
    );
    cpu.run(Op::Switch(0));
    cpu.run(Op::Read);
}
