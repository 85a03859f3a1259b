//! The lazy switch of the debug registers: the trap bits, the answer to each trapped
//! access, and a CPU simulated over a sequence of switches, guest accesses and resets,
//! driven by the same `put`/`load`/`claim`/`reset` `hyp` calls.

use super::*;
use proptest::prelude::*;

/// QEMU 7.2 `max`'s ID_AA64DFR0_EL1 (6 breakpoints, 4 watchpoints) and MMFR0 (no FGT).
const QEMU_DFR0: u64 = 0x1030_5609;
const QEMU_MMFR0: u64 = 0x0000_0323_1020_1126;
const QEMU: DebugShape = DebugShape::from_id(QEMU_DFR0, QEMU_MMFR0);
/// MDCR_EL2 bits that are not the debug traps' (HPMN = 6, HPMD), which must survive.
const OTHER_MDCR: u64 = 6 | 1 << 17;

fn access(enc: (u8, u8, u8, u8), read: bool) -> SysRegAccess {
    let (op1, crn, crm, op2) = enc;
    SysRegAccess {
        op0: 2,
        op1,
        crn,
        crm,
        op2,
        reg: 3,
        read,
    }
}

#[test]
fn the_shape_comes_from_the_id_registers() {
    assert_eq!(
        QEMU,
        DebugShape {
            breakpoints: 6,
            watchpoints: 4,
            tdcc: false
        }
    );
    let fgt = 1 << 56;
    assert!(DebugShape::from_id(QEMU_DFR0, QEMU_MMFR0 | fgt).tdcc);
    // BRPs/WRPs all ones: 16 each, the most there can be without banks.
    let most = DebugShape::from_id(0xf << 12 | 0xf << 20, 0);
    assert_eq!((most.breakpoints, most.watchpoints), (16, 16));
}

#[test]
fn trap_bits_before_and_after_a_claim() {
    use mdcr::*;
    assert_eq!(QEMU.traps(false), TDA | TDOSA | TDRA);
    assert_eq!(QEMU.traps(true), TDRA);
    let fgt = DebugShape { tdcc: true, ..QEMU };
    assert_eq!(fgt.traps(false), TDA | TDOSA | TDRA | TDCC);
    assert_eq!(fgt.traps(true), TDRA | TDCC);
    for shape in [QEMU, fgt] {
        for c in [false, true] {
            assert_eq!(shape.traps(c) & !shape.trap_mask(), 0);
            assert_eq!(claimed(shape.traps(c) | OTHER_MDCR), c);
        }
    }
    // TDCC is RES0 without FEAT_FGT: never set there.
    assert_eq!(QEMU.trap_mask() & TDCC, 0);
}

#[test]
fn each_trapped_access_gets_its_answer() {
    let a = |enc, read| answer(&access(enc, read), QEMU);
    use Answer::*;
    // Breakpoints 0..6, watchpoints 0..4, either direction: claimed.
    for n in 0..16u8 {
        let b = if n < 6 { Claim } else { Undefined };
        let w = if n < 4 { Claim } else { Undefined };
        for read in [true, false] {
            assert_eq!(a((0, 0, n, 4), read), Some(b), "DBGBVR{n}");
            assert_eq!(a((0, 0, n, 5), read), Some(b), "DBGBCR{n}");
            assert_eq!(a((0, 0, n, 6), read), Some(w), "DBGWVR{n}");
            assert_eq!(a((0, 0, n, 7), read), Some(w), "DBGWCR{n}");
        }
    }
    // MDSCR_EL1, OSDLR_EL1, DBGPRCR_EL1 and the CLAIM tags: claimed either way.
    for enc in [
        (0, 0, 2, 2),
        (0, 1, 3, 4),
        (0, 1, 4, 4),
        (0, 7, 8, 6),
        (0, 7, 9, 6),
    ] {
        assert_eq!(a(enc, true), Some(Claim), "{enc:?}");
        assert_eq!(a(enc, false), Some(Claim), "{enc:?}");
    }
    // OSLAR_EL1 is write-only, OSLSR_EL1 and DBGAUTHSTATUS_EL1 read-only.
    assert_eq!(a((0, 1, 0, 4), false), Some(Claim));
    assert_eq!(a((0, 1, 0, 4), true), Some(Undefined));
    assert_eq!(a((0, 1, 1, 4), true), Some(Claim));
    assert_eq!(a((0, 1, 1, 4), false), Some(Undefined));
    assert_eq!(a((0, 7, 14, 6), true), Some(Claim));
    assert_eq!(a((0, 7, 14, 6), false), Some(Undefined));
    // MDRAR_EL1: no ROM table; read-only.
    assert_eq!(a((0, 1, 0, 0), true), Some(Zero));
    assert_eq!(a((0, 1, 0, 0), false), Some(Undefined));
    // The DCC and OSECCR_EL1: read 0, writes ignored, never claimed.
    let dcc = [
        (0, 0, 0, 2),
        (0, 0, 2, 0),
        (0, 0, 3, 2),
        (3, 0, 1, 0),
        (3, 0, 4, 0),
    ];
    for enc in dcc.into_iter().chain([(3, 0, 5, 0), (0, 0, 6, 2)]) {
        assert_eq!(a(enc, true), Some(Zero), "{enc:?}");
        assert_eq!(a(enc, false), Some(Zero), "{enc:?}");
    }
    // Unallocated debug encodings (MDSELR_EL1, FEAT_Debugv8p9, is not offered):
    // undefined. Trace (op1 1), EL2's DBGVCR32_EL2 (op1 4), other op0: not debug.
    assert_eq!(a((0, 0, 4, 2), true), Some(Undefined));
    assert_eq!(a((1, 0, 0, 0), true), None);
    assert_eq!(a((4, 0, 7, 0), true), None);
    let mut not_debug = access((0, 0, 0, 4), true);
    not_debug.op0 = 3;
    assert_eq!(answer(&not_debug, QEMU), None);
}

#[test]
fn the_count_is_the_vms_view() {
    use super::super::idregs::field;
    let mut view = IdRegs::ZERO;
    view.set_field(field::DFR0_BRPS, 5);
    view.set_field(field::DFR0_WRPS, 3);
    let shape = DebugShape::of_view(&view);
    assert_eq!((shape.breakpoints, shape.watchpoints), (6, 4));
    assert_eq!(
        answer(&access((0, 0, 5, 4), true), shape),
        Some(Answer::Claim)
    );
    assert_eq!(
        answer(&access((0, 0, 6, 4), true), shape),
        Some(Answer::Undefined)
    );
}

#[test]
fn a_vcpu_keeps_the_registers_while_it_uses_them() {
    let zero = DebugRegs::default();
    // All zero with debug exceptions off (Linux's MDSCR_EL1: TDCC only): trapped again.
    const MDSCR_TDCC: u64 = 1 << 12;
    assert!(!zero.stays_claimed(QEMU, MDSCR_TDCC));
    // Debug exceptions on: kept, or another vCPU's values could fire for it.
    assert!(zero.stays_claimed(QEMU, MDSCR_MDE));
    assert!(zero.stays_claimed(QEMU, MDSCR_KDE));
    // Any value of its own: kept.
    let one = |f: fn(&mut DebugRegs)| {
        let mut r = zero;
        f(&mut r);
        r.stays_claimed(QEMU, 0)
    };
    assert!(one(|r| r.bvr[5] = 4));
    assert!(one(|r| r.bcr[0] = 1));
    assert!(one(|r| r.wvr[3] = 8));
    assert!(one(|r| r.wcr[3] = 1));
    assert!(one(|r| r.os_lock = true));
    assert!(one(|r| r.double_lock = true));
    // Beyond the CPU's count there are no registers (`hyp` never fills them).
    assert!(!one(|r| r.bvr[6] = 4));
    assert!(!one(|r| r.wcr[4] = 1));
}

/// A CPU's debug registers as plain fields; counts the moves.
#[derive(Clone, Debug, Default)]
struct FakeDebugHw {
    mdcr: u64,
    regs: DebugRegs,
    /// MDSCR_EL1 (an EL1 register: `hyp` switches it with the others).
    mdscr: u64,
    mdcr_writes: usize,
    saves: usize,
    loads: usize,
}

impl MdcrEl2 for FakeDebugHw {
    fn mdcr(&self) -> u64 {
        self.mdcr
    }
    fn set_mdcr(&mut self, value: u64) {
        self.mdcr = value;
        self.mdcr_writes += 1;
    }
}

impl DebugHw for FakeDebugHw {
    fn save(&mut self, shape: DebugShape, regs: &mut DebugRegs) {
        self.saves += 1;
        let (b, w) = (
            usize::from(shape.breakpoints),
            usize::from(shape.watchpoints),
        );
        regs.bvr[..b].copy_from_slice(&self.regs.bvr[..b]);
        regs.bcr[..b].copy_from_slice(&self.regs.bcr[..b]);
        regs.wvr[..w].copy_from_slice(&self.regs.wvr[..w]);
        regs.wcr[..w].copy_from_slice(&self.regs.wcr[..w]);
        regs.os_lock = self.regs.os_lock;
        regs.double_lock = self.regs.double_lock;
    }
    fn load(&mut self, shape: DebugShape, regs: &DebugRegs) {
        self.loads += 1;
        let (b, w) = (
            usize::from(shape.breakpoints),
            usize::from(shape.watchpoints),
        );
        self.regs.bvr[..b].copy_from_slice(&regs.bvr[..b]);
        self.regs.bcr[..b].copy_from_slice(&regs.bcr[..b]);
        self.regs.wvr[..w].copy_from_slice(&regs.wvr[..w]);
        self.regs.wcr[..w].copy_from_slice(&regs.wcr[..w]);
        self.regs.os_lock = regs.os_lock;
        self.regs.double_lock = regs.double_lock;
    }
}

/// A vCPU as `hyp` keeps it off its CPU, and what its guest last wrote.
#[derive(Clone, Debug, Default)]
struct Vcpu {
    saved: DebugRegs,
    claimed: bool,
    mdscr: u64,
    /// The guest's own view: what every read must return.
    wrote: DebugRegs,
    wrote_mdscr: u64,
    gone: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Another vCPU onto the CPU (`hyp`: save, then restore).
    Switch(usize),
    /// The same, without the save: the vCPU the CPU held was destroyed with its VM.
    SwitchDropping(usize),
    /// The guest writes (or reads, with `None`) breakpoint or watchpoint register
    /// `kind` (BVR, BCR, WVR, WCR) number `n`.
    Point(u8, u8, Option<u64>),
    /// The guest writes MDSCR_EL1.
    Mdscr(u64),
    /// The guest locks or unlocks the OS lock, then reads OSLSR_EL1.
    OsLock(bool),
    /// PSCI CPU_ON of the running vCPU.
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![Just(0u64), 1u64..8, any::<u64>()];
    prop_oneof![
        (0usize..3).prop_map(Op::Switch),
        (0usize..3).prop_map(Op::SwitchDropping),
        // QEMU's 6 breakpoints, 4 watchpoints.
        (0u8..4, 0u8..6, proptest::option::of(value)).prop_map(|(k, n, v)| Op::Point(
            k,
            if k < 2 { n } else { n % 4 },
            v
        )),
        prop_oneof![Just(0u64), Just(1 << 12), Just(MDSCR_MDE), Just(MDSCR_KDE)]
            .prop_map(Op::Mdscr),
        any::<bool>().prop_map(Op::OsLock),
        Just(Op::Reset),
    ]
}

/// The register of `regs` that `kind` names.
fn point(regs: &mut DebugRegs, kind: u8, n: u8) -> &mut u64 {
    let n = usize::from(n);
    match kind {
        0 => &mut regs.bvr[n],
        1 => &mut regs.bcr[n],
        2 => &mut regs.wvr[n],
        _ => &mut regs.wcr[n],
    }
}

struct Cpu {
    hw: FakeDebugHw,
    vcpus: Vec<Vcpu>,
    running: usize,
}

impl Cpu {
    /// vCPU 0 reset and running, as `hyp` starts one.
    fn new(vcpus: usize) -> Self {
        let mut cpu = Cpu {
            hw: FakeDebugHw {
                mdcr: OTHER_MDCR,
                ..FakeDebugHw::default()
            },
            vcpus: vec![Vcpu::default(); vcpus],
            running: 0,
        };
        cpu.hw.regs.os_lock = true; // as QEMU resets it
        load(&mut cpu.hw, QEMU, &DebugRegs::default(), false);
        cpu
    }

    /// The running guest accesses a register `enc`: if it traps, the exit policy's
    /// answer must be a claim, carried out as `hyp` does before the access runs again.
    fn trap(&mut self, enc: (u8, u8, u8, u8), read: bool) {
        if claimed(self.hw.mdcr) {
            return;
        }
        assert_eq!(answer(&access(enc, read), QEMU), Some(Answer::Claim));
        assert!(claim(&mut self.hw, QEMU));
    }

    fn switch(&mut self, to: usize, save: bool) {
        let v = &mut self.vcpus[self.running];
        if save {
            v.mdscr = self.hw.mdscr;
            v.claimed = put(&mut self.hw, QEMU, &mut v.saved, v.mdscr);
        } else {
            v.gone = true;
        }
        self.running = to;
        let v = &self.vcpus[to];
        self.hw.mdscr = v.mdscr;
        load(&mut self.hw, QEMU, &v.saved, v.claimed);
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Switch(to) | Op::SwitchDropping(to)
                if self.vcpus[to].gone || to == self.running => {}
            Op::Switch(to) => self.switch(to, true),
            Op::SwitchDropping(to) => self.switch(to, false),
            Op::Point(kind, n, value) => {
                self.trap((0, 0, n, 4 + kind), value.is_none());
                let v = &mut self.vcpus[self.running];
                match value {
                    Some(value) => {
                        *point(&mut self.hw.regs, kind, n) = value;
                        *point(&mut v.wrote, kind, n) = value;
                    }
                    None => assert_eq!(
                        *point(&mut self.hw.regs, kind, n),
                        *point(&mut v.wrote, kind, n),
                        "vCPU {} reads {kind}/{n}",
                        self.running
                    ),
                }
            }
            Op::Mdscr(value) => {
                self.trap((0, 0, 2, 2), false);
                self.hw.mdscr = value;
                self.vcpus[self.running].wrote_mdscr = value;
            }
            Op::OsLock(lock) => {
                self.trap((0, 1, 0, 4), false);
                self.hw.regs.os_lock = lock;
                let v = &mut self.vcpus[self.running];
                v.wrote.os_lock = lock;
                self.trap((0, 1, 1, 4), true);
                assert_eq!(self.hw.regs.os_lock, lock);
            }
            Op::Reset => {
                reset(&mut self.hw, QEMU);
                self.hw.mdscr = 0;
                let v = &mut self.vcpus[self.running];
                v.wrote = DebugRegs::default();
                v.wrote_mdscr = 0;
            }
        }
    }

    /// What must hold between any two steps.
    fn check(&self) {
        let v = &self.vcpus[self.running];
        assert_eq!(self.hw.mdscr, v.wrote_mdscr, "MDSCR_EL1 is the vCPU's");
        assert_eq!(
            self.hw.mdcr & OTHER_MDCR,
            OTHER_MDCR,
            "other MDCR_EL2 bits kept"
        );
        assert_ne!(self.hw.mdcr & mdcr::TDRA, 0, "MDRAR_EL1 always trapped");
        if claimed(self.hw.mdcr) {
            // Untrapped: the CPU holds exactly what the guest wrote.
            assert_eq!(self.hw.regs, v.wrote, "vCPU {}", self.running);
        } else {
            // Trapped: the vCPU's values are zero and nothing in the CPU can fire.
            assert_eq!(v.wrote, DebugRegs::default(), "vCPU {}", self.running);
            assert_eq!(self.hw.mdscr & (MDSCR_MDE | MDSCR_KDE), 0);
        }
    }
}

proptest! {
    /// Three vCPUs on one CPU: whatever they do and however they are switched, each
    /// reads back only what it wrote (zero before), MDRAR_EL1 stays trapped, and a
    /// trapped vCPU has debug exceptions off.
    #[test]
    fn each_vcpu_sees_only_its_own_debug_registers(ops in proptest::collection::vec(op(), 1..80)) {
        let mut cpu = Cpu::new(3);
        cpu.check();
        for op in ops {
            cpu.run(op);
            cpu.check();
        }
    }
}

#[test]
fn vcpus_that_never_touch_them_cost_no_moves() {
    let mut cpu = Cpu::new(3);
    let writes = cpu.hw.mdcr_writes;
    for to in [1, 2, 0, 2, 1, 0] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads), (0, 0));
    assert_eq!(cpu.hw.mdcr_writes, writes, "the traps were already set");
}

#[test]
fn a_vcpu_using_a_breakpoint_is_switched_and_the_next_one_is_trapped() {
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Point(0, 0, Some(0x4000_1000)));
    assert!(claimed(cpu.hw.mdcr));
    cpu.run(Op::Switch(1));
    assert_eq!(cpu.hw.saves, 1);
    // vCPU 1 is trapped: vCPU 0's value is still in the CPU, out of its reach.
    assert!(!claimed(cpu.hw.mdcr));
    assert_eq!(cpu.hw.regs.bvr[0], 0x4000_1000);
    cpu.run(Op::Point(0, 0, None));
    assert_eq!(cpu.hw.regs.bvr[0], 0, "the claim loaded zeros");
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.regs.bvr[0], 0x4000_1000);
    assert!(claimed(cpu.hw.mdcr));
    // vCPU 1 wrote nothing: it went back to trapped at that switch, and costs nothing.
    assert!(!cpu.vcpus[1].claimed);
    let loads = cpu.hw.loads;
    cpu.run(Op::Switch(1));
    cpu.run(Op::Switch(0));
    assert_eq!(cpu.hw.loads, loads + 1, "only vCPU 0 loaded");
}

#[test]
fn a_linux_like_boot_goes_back_to_trapped_after_one_switch() {
    // Linux: MDSCR_EL1 = TDCC and the OS lock cleared, no breakpoint.
    let mut cpu = Cpu::new(2);
    cpu.run(Op::Mdscr(1 << 12));
    cpu.run(Op::OsLock(false));
    cpu.run(Op::Switch(1));
    assert!(!cpu.vcpus[0].claimed);
    let (saves, loads) = (cpu.hw.saves, cpu.hw.loads);
    for to in [0, 1, 0, 1] {
        cpu.run(Op::Switch(to));
    }
    assert_eq!((cpu.hw.saves, cpu.hw.loads), (saves, loads));
}

#[test]
fn a_claim_of_registers_already_held_moves_nothing() {
    let mut cpu = Cpu::new(1);
    cpu.run(Op::Point(0, 1, Some(0x4000)));
    let (loads, writes) = (cpu.hw.loads, cpu.hw.mdcr_writes);
    assert!(!claim(&mut cpu.hw, QEMU));
    assert_eq!((cpu.hw.loads, cpu.hw.mdcr_writes), (loads, writes));
    assert_eq!(cpu.hw.regs.bvr[1], 0x4000);
}

#[test]
fn a_reset_vcpu_is_trapped_and_reads_zero() {
    let mut cpu = Cpu::new(1);
    cpu.run(Op::Point(2, 3, Some(0x8000)));
    cpu.run(Op::Mdscr(MDSCR_MDE));
    cpu.run(Op::Reset);
    assert!(!claimed(cpu.hw.mdcr));
    cpu.run(Op::Point(2, 3, None));
    cpu.check();
}
