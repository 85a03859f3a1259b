//! The exit policy driven through `FakeArch`: each test is one exit a guest can cause,
//! with the registers it leaves and the action it asks for checked.

use super::super::{
    ec, inject, sysreg as trapped, SysRegEncoding, DABT_ISV, DABT_SAS_SHIFT, DABT_SRT_SHIFT,
    DABT_WNR, ESR_EC_SHIFT, ESR_IL, SYSREG_CRM_SHIFT, SYSREG_CRN_SHIFT, SYSREG_OP0_SHIFT,
    SYSREG_OP1_SHIFT, SYSREG_OP2_SHIFT, SYSREG_RT_SHIFT,
};
use super::*;
use crate::abi::psci::{
    INVALID_PARAMETERS, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_CPU_SUSPEND_64, PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET, PSCI_VERSION, VERSION_1_1,
};
use crate::arch::{ArchOp, FakeArch};
use crate::layout;
use crate::vm::ExitCounters;
use crate::Region;
use core::num::NonZeroU64;
use proptest::prelude::*;

const RAM: Region = Region::new(layout::RAM_BASE, 64 << 20);
const ENTRY: u64 = layout::RAM_BASE + 0x8_0000;
const VBAR: u64 = 0x4010_0000;
const ELR: u64 = 0x4000_1000;
/// EL1h, interrupts unmasked.
const SPSR_EL1H: u64 = 0b0101;
const SPSR_EL0: u64 = 0;
const SCTLR_SPAN: u64 = 1 << 23;

fn esr(class: u32, iss: u64) -> u64 {
    (u64::from(class) << ESR_EC_SHIFT) | ESR_IL | iss
}

fn hvc() -> u64 {
    esr(ec::HVC64, 0)
}

/// A load (`write == false`) or store of `size` bytes through `reg`.
fn dabt(size: u8, reg: u8, write: bool) -> u64 {
    let sas = u64::from(size.trailing_zeros());
    let wnr = if write { DABT_WNR } else { 0 };
    esr(
        ec::DABT_LOWER,
        DABT_ISV | (sas << DABT_SAS_SHIFT) | (u64::from(reg) << DABT_SRT_SHIFT) | wnr,
    )
}

fn sysreg_esr(enc: SysRegEncoding, reg: u8, read: bool) -> u64 {
    let (op0, op1, crn, crm, op2) = enc;
    esr(
        ec::SYSREG,
        (u64::from(op0) << SYSREG_OP0_SHIFT)
            | (u64::from(op2) << SYSREG_OP2_SHIFT)
            | (u64::from(op1) << SYSREG_OP1_SHIFT)
            | (u64::from(crn) << SYSREG_CRN_SHIFT)
            | (u64::from(reg) << SYSREG_RT_SHIFT)
            | (u64::from(crm) << SYSREG_CRM_SHIFT)
            | u64::from(read),
    )
}

struct Guest {
    vm: VmModel,
    exits: ExitCounters,
    hw: FakeArch,
    frame: GuestFrame,
}

impl Guest {
    fn new(vcpus: usize) -> Self {
        let mut hw = FakeArch::new();
        hw.el1[El1Reg::Vbar as usize] = VBAR;
        Self {
            vm: VmModel::new(vcpus, RAM).unwrap(),
            exits: ExitCounters::default(),
            hw,
            frame: GuestFrame {
                elr: ELR,
                spsr: SPSR_EL1H,
                ..GuestFrame::default()
            },
        }
    }

    /// An exit of vCPU `vcpu` with every register in the frame.
    fn exit(&mut self, vcpu: usize, esr: u64) -> Action {
        sync_exit::<true, false>(
            &self.vm,
            vcpu,
            &self.exits,
            &mut self.frame,
            esr,
            &mut self.hw,
        )
    }

    /// An exit that saved x0–x18 and x30 only.
    fn fast_exit(&mut self, vcpu: usize, esr: u64) -> Action {
        sync_exit::<false, false>(
            &self.vm,
            vcpu,
            &self.exits,
            &mut self.frame,
            esr,
            &mut self.hw,
        )
    }

    /// An exit from AArch32 user code (every register in the frame).
    fn exit_a32(&mut self, vcpu: usize, esr: u64) -> Action {
        sync_exit::<true, true>(
            &self.vm,
            vcpu,
            &self.exits,
            &mut self.frame,
            esr,
            &mut self.hw,
        )
    }

    fn call(&mut self, vcpu: usize, args: &[u64]) -> Action {
        self.frame.x[..args.len()].copy_from_slice(args);
        self.exit(vcpu, hvc())
    }

    /// An MMIO access at `ipa` as the hardware reports it.
    fn mmio(&mut self, vcpu: usize, ipa: u64, size: u8, reg: u8, write: bool) -> Action {
        self.hw.far_el2 = 0xffff_8000_0000_0000 | (ipa & 0xfff);
        self.hw.hpfar_el2 = (ipa >> 12) << 4;
        self.exit(vcpu, dabt(size, reg, write))
    }

    fn write32(&mut self, vcpu: usize, ipa: u64, value: u32) -> Action {
        self.frame.x[1] = u64::from(value);
        self.mmio(vcpu, ipa, 4, 1, true)
    }

    /// What Linux's GICv3 driver does before it can take SGIs on every vCPU: enable
    /// group 1 with affinity routing, wake each redistributor, put SGIs 0–15 in group 1
    /// and enable them.
    fn enable_sgis(&mut self) {
        const GICD_CTLR_ARE_G1: u32 = 0x12;
        const GICR_WAKER: u64 = 0x14;
        const SGI_FRAME: u64 = 0x1_0000;
        const IGROUPR0: u64 = SGI_FRAME + 0x80;
        const ISENABLER0: u64 = SGI_FRAME + 0x100;
        const IPRIORITYR: u64 = SGI_FRAME + 0x400;
        assert_eq!(
            self.write32(0, layout::GIC_DIST.base, GICD_CTLR_ARE_G1),
            Action::Resume
        );
        for vcpu in 0..self.vm.nr_vcpus() {
            let frame = layout::gic_redist(self.vm.nr_vcpus()).base + vcpu as u64 * 0x2_0000;
            self.write32(vcpu, frame + GICR_WAKER, 0);
            for i in 0..4 {
                self.write32(vcpu, frame + IPRIORITYR + 4 * i, 0xa0a0_a0a0);
            }
            self.write32(vcpu, frame + IGROUPR0, 0xffff);
            self.write32(vcpu, frame + ISENABLER0, 0xffff);
        }
        // Each of those stepped over its store; the tests start from a fresh ELR.
        self.frame.elr = ELR;
    }

    /// The EL1 registers an injected exception set, and where the guest resumes.
    fn injected(&self) -> (u64, u64, u64, u64, u64, u64) {
        let el1 = |r: El1Reg| self.hw.el1[r as usize];
        (
            el1(El1Reg::Esr),
            el1(El1Reg::Far),
            el1(El1Reg::Elr),
            el1(El1Reg::Spsr),
            self.frame.elr,
            self.frame.spsr,
        )
    }
}

#[test]
fn a_psci_query_returns_values_and_resumes_after_the_hvc() {
    let mut g = Guest::new(1);
    assert_eq!(g.call(0, &[PSCI_VERSION.into()]), Action::Resume);
    assert_eq!(g.frame.x[0], u64::from(VERSION_1_1));
    // HVC: ELR already points past the instruction.
    assert_eq!(g.frame.elr, ELR);
    assert_eq!(g.exits.get(ExitKind::Hypercall), 1);
    assert!(g.hw.log.is_empty());
}

#[test]
fn a_trapped_smc_is_answered_and_stepped_over() {
    let mut g = Guest::new(1);
    g.frame.x[0] = PSCI_VERSION.into();
    assert_eq!(g.exit(0, esr(ec::SMC64, 0)), Action::Resume);
    assert_eq!(g.frame.x[0], u64::from(VERSION_1_1));
    assert_eq!(g.frame.elr, ELR + 4);
    assert_eq!(g.exits.get(ExitKind::Other), 1);
}

/// Found by `fuzz/` (exit_decode): stepping over an instruction in the last word of the
/// address space overflowed ELR and panicked a debug build. Every path that steps over
/// its instruction wraps instead.
#[test]
fn stepping_over_the_last_word_of_the_address_space_wraps() {
    const LAST_WORD: u64 = u64::MAX - 3;
    type Step = fn(&mut Guest) -> Action;
    let steps: [(&str, Step); 5] = [
        ("smc", |g| g.exit(0, esr(ec::SMC64, 0))),
        ("wfe", |g| g.exit(0, esr(ec::WFX, 1))),
        ("mmio", |g| g.mmio(0, layout::UART.base + 0x18, 4, 1, false)),
        ("sgi", |g| {
            g.exit(0, sysreg_esr(trapped::ICC_SGI1R_EL1, 1, false))
        }),
        ("timer", |g| {
            g.exit(0, sysreg_esr(trapped::CNTP_CTL_EL0, 1, true))
        }),
    ];
    for (what, step) in steps {
        let mut g = Guest::new(1);
        g.frame.elr = LAST_WORD;
        step(&mut g);
        assert_eq!(g.frame.elr, 0, "{what}");
    }
}

#[test]
fn only_hvc_and_smc_0_are_smccc_calls() {
    let mut g = Guest::new(1);
    g.frame.x[0] = PSCI_VERSION.into();
    g.frame.x[1] = 7;
    // Gunyah's native calls use HVC #0x6000+n: not PSCI_VERSION, however X0 reads.
    assert_eq!(g.exit(0, esr(ec::HVC64, 0x6000)), Action::Resume);
    assert_eq!(
        g.frame.x[..2],
        [u64::MAX, 0],
        "NOT_SUPPORTED, X1..X3 zeroed"
    );
    assert_eq!(g.frame.elr, ELR);
    g.frame.x[0] = PSCI_VERSION.into();
    assert_eq!(g.exit(0, esr(ec::SMC64, 1)), Action::Resume);
    assert_eq!(g.frame.x[0], u64::MAX);
    assert_eq!(g.frame.elr, ELR + 4, "the SMC is stepped over");
    assert_eq!(g.exits.get(ExitKind::Hypercall), 1);
    // HVC #0 still is one.
    g.frame.x[0] = PSCI_VERSION.into();
    assert_eq!(g.exit(0, hvc()), Action::Resume);
    assert_eq!(g.frame.x[0], u64::from(VERSION_1_1));
}

#[test]
fn cpu_on_starts_the_target_and_refuses_a_missing_one() {
    let mut g = Guest::new(2);
    assert_eq!(
        g.call(0, &[PSCI_CPU_ON_64.into(), 1, ENTRY, 0x55]),
        Action::StartVcpu(1)
    );
    assert_eq!(g.frame.x[0], 0);
    assert_eq!(g.vm.power.take_pending_start(1), Some((ENTRY, 0x55)));
    assert_eq!(
        g.call(0, &[PSCI_CPU_ON_64.into(), 7, ENTRY, 0]),
        Action::Resume
    );
    assert_eq!(g.frame.x[0] as i64, i64::from(INVALID_PARAMETERS));
}

#[test]
fn cpu_off_powers_the_vcpu_off() {
    let mut g = Guest::new(2);
    assert_eq!(g.call(1, &[PSCI_CPU_OFF.into()]), Action::PowerOff);
}

#[test]
fn cpu_suspend_with_nothing_pending_blocks_until_the_timer() {
    let mut g = Guest::new(1);
    g.hw.vtimer_deadline = Some(12_345);
    assert_eq!(
        g.call(0, &[PSCI_CPU_SUSPEND_64.into(), 0, ENTRY, 0]),
        Action::Block(NonZeroU64::new(12_345))
    );
    // Resumed later with success.
    assert_eq!(g.frame.x[0], 0);
}

#[test]
fn system_off_and_reset_stop_the_vm_once() {
    let mut g = Guest::new(2);
    assert_eq!(
        g.call(0, &[PSCI_SYSTEM_OFF.into()]),
        Action::VmLeft(VmState::Off)
    );
    assert_eq!(g.vm.state(), VmState::Off);
    // The other vCPU racing with a reset finds the VM stopped: it only stops itself.
    assert_eq!(g.call(1, &[PSCI_SYSTEM_RESET.into()]), Action::Stop);
    assert_eq!(g.vm.state(), VmState::Off);

    let mut g = Guest::new(1);
    assert_eq!(
        g.call(0, &[PSCI_SYSTEM_RESET.into()]),
        Action::VmLeft(VmState::Resetting)
    );
    assert_eq!(g.vm.state(), VmState::Resetting);
}

#[test]
fn any_exit_of_a_stopped_vm_stops_the_vcpu() {
    let mut g = Guest::new(1);
    assert!(g.vm.leave_running(VmState::Halted));
    assert_eq!(g.call(0, &[PSCI_VERSION.into()]), Action::Stop);
    assert_eq!(g.exit(0, esr(ec::WFX, 0)), Action::Stop);
}

#[test]
fn wfi_blocks_until_the_timer_deadline_or_resumes_if_an_interrupt_waits() {
    let mut g = Guest::new(2);
    g.enable_sgis();
    g.hw.vtimer_deadline = Some(99);
    assert_eq!(
        g.exit(0, esr(ec::WFX, 0)),
        Action::Block(NonZeroU64::new(99))
    );
    assert_eq!(g.frame.elr, ELR + 4);
    g.hw.vtimer_deadline = None;
    assert_eq!(g.exit(0, esr(ec::WFX, 0)), Action::Block(None));
    assert_eq!(g.exits.get(ExitKind::Wfx), 2);

    // vCPU 1 sends SGI 3 to vCPU 0, which is woken (through the scheduler).
    g.frame.x[5] = (3 << 24) | 0b01;
    assert_eq!(
        g.exit(1, sysreg_esr(trapped::ICC_SGI1R_EL1, 5, false)),
        Action::Resume
    );
    assert_eq!(g.hw.woken(), [VcpuMask(0b01)]);
    // Now vCPU 0's WFI returns at once, with SGI 3 in its list registers.
    assert_eq!(g.exit(0, esr(ec::WFX, 0)), Action::Resume);
    assert_eq!(g.hw.lrs.valid(), [3]);
}

#[test]
fn a_timer_whose_condition_went_away_before_the_enable_is_not_delivered() {
    const IGROUPR0: u64 = 0x1_0080;
    const ISENABLER0: u64 = 0x1_0100;
    const ICENABLER0: u64 = 0x1_0180;
    const TIMER: u32 = 27;
    let mut g = Guest::new(1);
    g.enable_sgis();
    let rd = layout::gic_redist(1).base;
    g.write32(0, rd + IGROUPR0, 0xffff | 1 << TIMER);
    let line = |g: &Guest| {
        g.hw.log
            .iter()
            .filter_map(|op| match op {
                ArchOp::HwLine { pintid, high } => Some((*pintid, *high)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // The timer fires (hyp injects it) while its PPI is disabled; the guest turns the
    // timer off, then enables the PPI.
    let _ = g.vm.vgic.inject_hw_local(0, TIMER, TIMER, &mut g.hw);
    assert!(g.hw.lrs.valid().is_empty());
    g.hw.low_lines = vec![TIMER];
    assert_eq!(g.write32(0, rd + ISENABLER0, 1 << TIMER), Action::Resume);
    assert_eq!(line(&g), [(TIMER, false)], "resampled at the enable");
    assert!(g.hw.lrs.valid().is_empty());
    g.hw.vtimer_deadline = None;
    assert_eq!(
        g.exit(0, esr(ec::WFX, 0)),
        Action::Block(None),
        "nothing pending for WFI either"
    );
    // The condition still true at the enable: delivered, hardware-linked.
    g.hw.low_lines.clear();
    g.write32(0, rd + ICENABLER0, 1 << TIMER);
    let _ = g.vm.vgic.inject_hw_local(0, TIMER, TIMER, &mut g.hw);
    assert!(g.hw.lrs.valid().is_empty());
    g.write32(0, rd + ISENABLER0, 1 << TIMER);
    assert_eq!(line(&g), [(TIMER, false), (TIMER, true)]);
    assert_eq!(g.hw.lrs.valid(), [TIMER]);
    // A timer that fires while enabled is not asked about (the hot path).
    assert_eq!(g.hw.lrs.ack_eoi(), Some(TIMER));
    let _ = g.vm.vgic.inject_hw_local(0, TIMER, TIMER, &mut g.hw);
    assert_eq!(g.hw.lrs.valid(), [TIMER]);
    assert_eq!(line(&g).len(), 2);
}

#[test]
fn wfe_yields() {
    let mut g = Guest::new(1);
    assert_eq!(g.exit(0, esr(ec::WFX, 1)), Action::Yield);
    assert_eq!(g.frame.elr, ELR + 4);
}

#[test]
fn a_self_sgi_is_in_the_list_registers_when_the_guest_resumes() {
    let mut g = Guest::new(1);
    g.enable_sgis();
    g.frame.x[2] = (5 << 24) | 1;
    assert_eq!(
        g.exit(0, sysreg_esr(trapped::ICC_SGI1R_EL1, 2, false)),
        Action::Resume
    );
    assert_eq!(g.hw.lrs.valid(), [5]);
    assert!(g.hw.woken().is_empty(), "nobody else to wake");
    assert_eq!(g.frame.elr, ELR + 4);
}

#[test]
fn an_spi_made_pending_by_its_own_target_wakes_nobody() {
    // The target's copy goes into its list registers at the end of the exit that made
    // it pending; a scheduler wake of that running vCPU would only make its next WFI
    // return at once. Made pending from another vCPU, the target is woken.
    const ISENABLER1: u64 = 0x104;
    const ISPENDR1: u64 = 0x204;
    const SPI_40: u32 = 1 << (40 - 32);
    let mut g = Guest::new(2);
    g.enable_sgis();
    let dist = layout::GIC_DIST.base;
    g.write32(0, dist + ISENABLER1, SPI_40);
    g.hw.log.clear();
    assert_eq!(g.write32(0, dist + ISPENDR1, SPI_40), Action::Resume);
    assert!(g.hw.woken().is_empty(), "{:?}", g.hw.woken());
    assert_eq!(g.hw.lrs.valid(), [40]);
    g.hw.lrs.ack_eoi();
    assert_eq!(g.write32(1, dist + ISPENDR1, SPI_40), Action::Resume);
    assert_eq!(g.hw.woken(), [VcpuMask::one(0)]);
}

#[test]
fn mmio_reads_and_writes_reach_the_device_on_the_bus() {
    let mut g = Guest::new(2);
    // ldr w3, [GICD_TYPER]
    assert_eq!(
        g.mmio(0, layout::GIC_DIST.base + 4, 4, 3, false),
        Action::Resume
    );
    let typer = g.frame.x[3];
    assert_eq!(typer, g.vm.vgic.dist_read(0, 4, 4));
    assert_eq!((typer >> 5) & 7, 1, "two vCPUs");
    assert_eq!(g.frame.elr, ELR + 4);
    // strb w1, [UARTDR]: the byte goes to the console.
    g.frame.x[1] = u64::from(b'h');
    assert_eq!(g.mmio(0, layout::UART.base, 1, 1, true), Action::Resume);
    assert_eq!(g.hw.console, b"h");
    assert_eq!(g.exits.get(ExitKind::Mmio), 2);
}

#[test]
fn mmio_through_x19_to_x29_needs_every_register_first() {
    let mut g = Guest::new(1);
    g.hw.hpfar_el2 = (layout::GIC_DIST.base >> 12) << 4;
    g.hw.far_el2 = 4;
    assert_eq!(
        g.fast_exit(0, dabt(4, 20, false)),
        Action::NeedsAllRegisters
    );
    assert_eq!(g.frame.elr, ELR, "nothing done");
    assert_eq!(g.exits.get(ExitKind::Mmio), 0, "nor counted");
    assert_eq!(g.exit(0, dabt(4, 20, false)), Action::Resume);
    assert_ne!(g.frame.x[20], 0);
    assert_eq!(g.exits.get(ExitKind::Mmio), 1);
    // The same for system registers.
    assert_eq!(
        g.fast_exit(0, sysreg_esr(trapped::CNTP_CTL_EL0, 25, true)),
        Action::NeedsAllRegisters
    );
}

#[test]
fn an_access_outside_every_device_is_an_external_abort_at_the_guests_vector() {
    let mut g = Guest::new(1);
    g.frame.spsr = SPSR_EL1H;
    g.hw.el1[El1Reg::Sctlr as usize] = SCTLR_SPAN;
    let ipa = 0x0a00_0010;
    assert_eq!(g.mmio(0, ipa, 4, 1, true), Action::Resume);
    let far = g.hw.far_el2;
    assert_eq!(
        g.injected(),
        (
            inject::data_abort_esr(false, true),
            far,
            ELR,
            SPSR_EL1H,
            VBAR + 0x200,
            inject::SPSR_EL1H_MASKED
        )
    );
}

#[test]
fn an_access_straddling_the_end_of_a_device_is_an_abort() {
    let mut g = Guest::new(1);
    g.hw.el1[El1Reg::Sctlr as usize] = SCTLR_SPAN;
    // ldr x1, [UART + 0xffc]: 4 of its 8 bytes are past the PL011's page.
    assert_eq!(
        g.mmio(0, layout::UART.base + 0xffc, 8, 1, false),
        Action::Resume
    );
    assert_eq!(g.frame.elr, VBAR + 0x200, "an abort, not a partial read");
    assert_eq!(
        g.hw.el1[El1Reg::Esr as usize],
        inject::data_abort_esr(false, false)
    );
}

#[test]
fn every_injected_exception_is_reported() {
    let mut g = Guest::new(1);
    g.mmio(0, 0x0a00_0010, 4, 1, true);
    let far = g.hw.far_el2;
    g.frame.elr = ELR;
    g.exit(0, esr(0x3f, 0));
    let faults: alloc::vec::Vec<_> =
        g.hw.log
            .iter()
            .filter_map(|op| match op {
                crate::arch::ArchOp::Fault(f) => Some(*f),
                _ => None,
            })
            .collect();
    assert_eq!(faults.len(), 2);
    assert_eq!((faults[0].pc, faults[0].far), (ELR, far));
    assert_eq!(faults[0].kind(), "data access outside its RAM and devices");
    assert_eq!(faults[1].kind(), "undefined or trapped instruction");
}

#[test]
fn an_undefined_instruction_from_el0_goes_to_the_lower_el_vector_with_pan_set() {
    let mut g = Guest::new(1);
    g.frame.spsr = SPSR_EL0;
    // SCTLR_EL1.SPAN clear: exception entry sets PSTATE.PAN.
    assert_eq!(g.exit(0, esr(0x3f, 0)), Action::Resume);
    assert_eq!(
        g.injected(),
        (
            inject::undefined_esr(),
            0,
            ELR,
            SPSR_EL0,
            VBAR + 0x400,
            inject::SPSR_EL1H_MASKED | PSTATE_PAN
        )
    );
}

#[test]
fn an_instruction_abort_outside_ram_is_reflected() {
    let mut g = Guest::new(1);
    g.hw.el1[El1Reg::Sctlr as usize] = SCTLR_SPAN;
    g.hw.far_el2 = 0x1234_5000;
    g.hw.hpfar_el2 = (0x1234_5000 >> 12) << 4;
    assert_eq!(g.exit(0, esr(ec::IABT_LOWER, 0x10)), Action::Resume);
    let (esr_el1, far, elr, ..) = g.injected();
    assert_eq!(
        (esr_el1, far, elr),
        (inject::instruction_abort_esr(false), 0x1234_5000, ELR)
    );
    assert_eq!(g.frame.elr, VBAR + 0x200);
}

#[test]
fn unknown_trapped_registers_are_undefined() {
    let mut g = Guest::new(1);
    assert_eq!(
        g.exit(0, sysreg_esr((3, 0, 15, 0, 0), 4, true)),
        Action::Resume
    );
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
}

#[test]
fn the_physical_timer_is_emulated_and_its_interrupt_delivered() {
    const PTIMER_INTID: u64 = 30;
    let mut g = Guest::new(1);
    g.enable_sgis();
    // PPI 30 in group 1 with a priority, then enabled (vCPU 0's SGI frame), as a
    // driver would.
    let sgi_frame = layout::gic_redist(1).base + 0x1_0000;
    g.write32(0, sgi_frame + 0x80, 0xffff | 1 << PTIMER_INTID);
    g.write32(0, sgi_frame + 0x400 + 28, 0xa0a0_a0a0);
    g.write32(0, sgi_frame + 0x100, 1 << PTIMER_INTID);
    g.frame.elr = ELR;
    g.hw.now = 1_000;
    // TVAL = 500, then CTL = ENABLE.
    g.frame.x[2] = 500;
    g.exit(0, sysreg_esr(trapped::CNTP_TVAL_EL0, 2, false));
    g.frame.x[2] = 1;
    g.exit(0, sysreg_esr(trapped::CNTP_CTL_EL0, 2, false));
    g.frame.x[3] = 77;
    g.exit(0, sysreg_esr(trapped::CNTP_CVAL_EL0, 3, true));
    assert_eq!(g.frame.x[3], 1_500, "CVAL = now + TVAL");
    assert!(
        g.hw.log.contains(&ArchOp::LookAt(1_500)),
        "the CPU is asked to look again when it comes due: {:?}",
        g.hw.log
    );
    assert_eq!(g.frame.elr, ELR + 12);
    // WFI with nothing pending blocks until the timer's deadline.
    g.hw.vtimer_deadline = Some(9_000);
    assert_eq!(
        g.exit(0, esr(ec::WFX, 0)),
        Action::Block(NonZeroU64::new(1_500))
    );
    assert!(g.hw.lrs.valid().is_empty());
    // Time passes: CTL shows ISTATUS, and the next WFI returns with INTID 30 in the LRs.
    g.hw.now = 1_600;
    g.exit(0, sysreg_esr(trapped::CNTP_CTL_EL0, 3, true));
    assert_eq!(g.frame.x[3], 0b101, "ENABLE | ISTATUS");
    assert_eq!(g.exit(0, esr(ec::WFX, 0)), Action::Resume);
    assert_eq!(g.hw.lrs.valid(), [PTIMER_INTID as u32]);
    // Masking it drops the line (level-sensitive): nothing new is raised.
    g.frame.x[2] = 0b11;
    g.exit(0, sysreg_esr(trapped::CNTP_CTL_EL0, 2, false));
    assert_eq!(g.vm.ptimer_deadline(0, 1_600), None);
}

/// T32 user mode, and A32 user mode (SPSR.M[4] set: AArch32 state).
const SPSR_T32_USR: u64 = 0x30;
const SPSR_A32_USR: u64 = 0x10;
const A32_PC: u64 = 0x8000;

#[test]
fn aarch32_user_code_is_stepped_by_its_instruction_length() {
    let mut g = Guest::new(1);
    g.frame.spsr = SPSR_T32_USR;
    g.frame.elr = A32_PC;
    // A 16-bit Thumb `str r1, [r0]` to the UART (IL clear).
    g.frame.x[1] = u64::from(b't');
    g.hw.far_el2 = layout::UART.base;
    g.hw.hpfar_el2 = (layout::UART.base >> 12) << 4;
    let t16_store = dabt(1, 1, true) & !ESR_IL;
    assert_eq!(g.exit_a32(0, t16_store), Action::Resume);
    assert_eq!(
        (g.frame.elr, g.hw.console.as_slice()),
        (A32_PC + 2, &b"t"[..])
    );
    // A 32-bit one (IL set) moves by 4; so does an A32 load.
    assert_eq!(g.exit_a32(0, dabt(1, 1, true)), Action::Resume);
    assert_eq!(g.frame.elr, A32_PC + 6);
    g.frame.spsr = SPSR_A32_USR;
    assert_eq!(g.exit_a32(0, dabt(4, 2, false)), Action::Resume);
    assert_eq!(g.frame.elr, A32_PC + 10);
    // A Thumb WFI (IL clear) blocks and resumes after itself.
    g.frame.spsr = SPSR_T32_USR;
    assert_eq!(
        g.exit_a32(0, esr(ec::WFX, 0) & !ESR_IL),
        Action::Block(None)
    );
    assert_eq!(g.frame.elr, A32_PC + 12);
}

#[test]
fn a_trapped_wfi_whose_condition_fails_does_nothing() {
    const CV: u64 = 1 << 24;
    const EQ: u64 = 0 << 20;
    const Z: u64 = 1 << 30;
    let mut g = Guest::new(1);
    g.frame.spsr = SPSR_A32_USR;
    g.frame.elr = A32_PC;
    // WFIEQ with Z clear: skipped, the vCPU does not block.
    assert_eq!(g.exit_a32(0, esr(ec::WFX, CV | EQ)), Action::Resume);
    assert_eq!(g.frame.elr, A32_PC + 4);
    // With Z set it waits.
    g.frame.spsr |= Z;
    assert_eq!(g.exit_a32(0, esr(ec::WFX, CV | EQ)), Action::Block(None));
}

#[test]
fn an_abort_in_aarch32_user_code_goes_to_the_aarch32_vector() {
    let mut g = Guest::new(1);
    g.frame.spsr = SPSR_T32_USR;
    g.frame.elr = A32_PC;
    g.hw.far_el2 = 0x10;
    g.hw.hpfar_el2 = 0;
    assert_eq!(g.exit_a32(0, dabt(4, 2, false) & !ESR_IL), Action::Resume);
    let (esr_el1, _, elr, spsr, ..) = g.injected();
    assert_eq!(esr_el1, inject::data_abort_esr(true, false));
    assert_eq!(
        (elr, spsr),
        (A32_PC, SPSR_T32_USR),
        "the kernel sees the user state"
    );
    assert_eq!(g.frame.elr, VBAR + 0x600);
    assert_eq!(g.frame.spsr & 0x1f, 0x05, "EL1h, AArch64");
}

proptest! {
    /// No exit from AArch32 user code panics, and each ends stepped over (by 2 or 4),
    /// retried, or at the guest kernel's AArch32 vector.
    #[test]
    fn no_aarch32_exit_panics(class in 0u32..64, iss in 0u64..(1 << 25), il: bool,
                              far: u64, hpfar: u64, flags in 0u64..16, thumb: bool) {
        let mut g = Guest::new(1);
        g.hw.far_el2 = far;
        g.hw.hpfar_el2 = hpfar & ((1 << 44) - 1);
        g.frame.elr = A32_PC;
        g.frame.spsr = (if thumb { SPSR_T32_USR } else { SPSR_A32_USR }) | (flags << 28);
        let e = (u64::from(class) << ESR_EC_SHIFT) | if il { ESR_IL } else { 0 } | iss;
        let action = g.exit_a32(0, e);
        let ends = [A32_PC, A32_PC + 2, A32_PC + 4, VBAR + 0x600];
        prop_assert!(ends.contains(&g.frame.elr), "ELR {:#x} after {action:?}", g.frame.elr);
    }
}

#[test]
fn id_registers_read_the_vms_view_and_writes_are_undefined() {
    use crate::exit::idregs::{field, reg, IdReg, IdRegs};
    let mut g = Guest::new(1);
    let mut view = IdRegs::ZERO;
    view.set(reg::ID_AA64PFR0_EL1, 0x1100_0000_1011_0011);
    view.set(reg::ID_AA64MMFR0_EL1, 0x1_0122);
    g.vm.id_regs = view;
    let enc = |r: IdReg| (3, 0, 0, r.crm, r.op2);
    g.frame.x[7] = 0xdead;
    assert_eq!(
        g.exit(0, sysreg_esr(enc(reg::ID_AA64PFR0_EL1), 7, true)),
        Action::Resume
    );
    assert_eq!(
        (g.frame.x[7], g.frame.elr),
        (view.get(reg::ID_AA64PFR0_EL1), ELR + 4)
    );
    assert_eq!(g.exits.get(ExitKind::Sysreg), 1);
    // A register the view zeroes (SME's) and an unallocated encoding read zero.
    for r in [reg::ID_AA64SMFR0_EL1, IdReg::new(4, 3), IdReg::new(7, 7)] {
        g.frame.x[7] = 0xdead;
        g.frame.elr = ELR;
        assert_eq!(g.exit(0, sysreg_esr(enc(r), 7, true)), Action::Resume);
        assert_eq!((g.frame.x[7], g.frame.elr), (0, ELR + 4), "{r:?}");
    }
    // Into XZR: nothing written, still stepped over.
    g.frame.elr = ELR;
    assert_eq!(
        g.exit(0, sysreg_esr(enc(reg::ID_AA64MMFR0_EL1), 31, true)),
        Action::Resume
    );
    assert_eq!(g.frame.elr, ELR + 4);
    // Through x19..x29: every register first, then the same answer.
    g.frame.elr = ELR;
    let mrs_x20 = sysreg_esr(enc(reg::ID_AA64MMFR0_EL1), 20, true);
    assert_eq!(g.fast_exit(0, mrs_x20), Action::NeedsAllRegisters);
    assert_eq!(g.exit(0, mrs_x20), Action::Resume);
    assert_eq!(g.frame.x[20], view.get(reg::ID_AA64MMFR0_EL1));
    assert_eq!(view.field(field::PFR0_EL0), 1);
    // MSR to an ID register: undefined instruction, the register unchanged.
    g.frame.elr = ELR;
    g.frame.x[3] = 0;
    assert_eq!(
        g.exit(0, sysreg_esr(enc(reg::ID_AA64PFR1_EL1), 3, false)),
        Action::Resume
    );
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
    assert_eq!(g.hw.el1[El1Reg::Elr as usize], ELR);
    assert_eq!(g.vm.id_regs, view);
}

/// One vCPU whose ID registers promise 6 breakpoints and 4 watchpoints.
fn guest_with_breakpoints() -> Guest {
    use crate::exit::idregs::{field, IdRegs};
    let mut g = Guest::new(1);
    let mut view = IdRegs::ZERO;
    view.set_field(field::DFR0_BRPS, 5);
    view.set_field(field::DFR0_WRPS, 3);
    g.vm.id_regs = view;
    g
}

#[test]
fn a_first_debug_register_access_claims_them_and_runs_again() {
    let mut g = guest_with_breakpoints();
    // MSR DBGBVR0_EL1, x3 / MRS x3, DBGWCR3_EL1 / MSR MDSCR_EL1 / MSR OSLAR_EL1: each
    // claims the registers and is not stepped over, so the guest executes it again.
    for (enc, read) in [
        ((2, 0, 0, 0, 4), false),
        ((2, 0, 0, 3, 7), true),
        ((2, 0, 0, 2, 2), false),
        ((2, 0, 1, 0, 4), false),
    ] {
        g.hw.log.clear();
        g.hw.debug_claimed = false;
        g.frame.x[3] = 0xdead;
        assert_eq!(g.exit(0, sysreg_esr(enc, 3, read)), Action::Resume);
        assert_eq!(g.hw.log, [ArchOp::ClaimDebug], "{enc:?}");
        assert_eq!((g.frame.elr, g.frame.x[3]), (ELR, 0xdead), "{enc:?}");
    }
    assert_eq!(g.exits.get(ExitKind::Sysreg), 4);
    // Once it holds them, an access that traps all the same (something else traps it)
    // would trap forever if run again: undefined.
    g.frame.elr = ELR;
    assert_eq!(
        g.exit(0, sysreg_esr((2, 0, 0, 1, 4), 3, true)),
        Action::Resume
    );
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
    // Through x19..x29: every register first, like any other system register.
    assert_eq!(
        g.fast_exit(0, sysreg_esr((2, 0, 0, 0, 4), 20, false)),
        Action::NeedsAllRegisters
    );
}

#[test]
fn debug_registers_the_guest_does_not_get() {
    let mut g = guest_with_breakpoints();
    // MDRAR_EL1 (no ROM table) and the DCC (MDCCSR_EL0, DBGDTR_EL0) read 0 and are
    // stepped over; a DCC write is ignored. None of them claims anything.
    for (enc, read) in [
        ((2, 0, 1, 0, 0), true),
        ((2, 3, 0, 1, 0), true),
        ((2, 3, 0, 4, 0), true),
        ((2, 3, 0, 5, 0), false),
    ] {
        g.frame.elr = ELR;
        g.frame.x[3] = 0xdead;
        assert_eq!(g.exit(0, sysreg_esr(enc, 3, read)), Action::Resume);
        let x3 = if read { 0 } else { 0xdead };
        assert_eq!((g.frame.elr, g.frame.x[3]), (ELR + 4, x3), "{enc:?}");
    }
    assert!(g.hw.log.is_empty(), "{:?}", g.hw.log);
    // Breakpoint 6 and watchpoint 4 do not exist; OSLAR_EL1 cannot be read: undefined.
    for (enc, read) in [
        ((2, 0, 0, 6, 4), true),
        ((2, 0, 0, 4, 6), false),
        ((2, 0, 1, 0, 4), true),
    ] {
        g.frame.elr = ELR;
        g.frame.spsr = SPSR_EL1H;
        g.hw.log.clear();
        assert_eq!(g.exit(0, sysreg_esr(enc, 3, read)), Action::Resume);
        assert_eq!(g.frame.elr, VBAR + 0x200, "{enc:?}");
        assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
        assert!(!g.hw.log.contains(&ArchOp::ClaimDebug), "{enc:?}");
    }
}

proptest! {
    /// No exit a guest can cause panics, and each ends where the architecture says: the
    /// instruction retried or stepped over, or the guest at one of its EL1 sync
    /// vectors, or a decision for the scheduler.
    #[test]
    fn no_exit_panics(class in 0u32..64, iss in 0u64..(1 << 25), far: u64, hpfar: u64,
                      regs in proptest::array::uniform8(any::<u64>()), el0: bool,
                      all_saved: bool, vcpu in 0usize..2) {
        let mut g = Guest::new(2);
        g.hw.far_el2 = far;
        g.hw.hpfar_el2 = hpfar & ((1 << 44) - 1);
        g.frame.x[..8].copy_from_slice(&regs);
        g.frame.spsr = if el0 { SPSR_EL0 } else { SPSR_EL1H };
        let e = esr(class, iss);
        let action = if all_saved { g.exit(vcpu, e) } else { g.fast_exit(vcpu, e) };
        let vectors = [VBAR, VBAR + 0x200, VBAR + 0x400];
        prop_assert!(
            g.frame.elr == ELR || g.frame.elr == ELR + 4 || vectors.contains(&g.frame.elr),
            "ELR {:#x} after {action:?}", g.frame.elr
        );
        if action == Action::NeedsAllRegisters {
            prop_assert!(!all_saved);
        }
    }
}

#[test]
fn a_first_pmu_register_access_claims_it_and_runs_again() {
    let mut g = Guest::new(1);
    // MRS x3, PMCR_EL0 / MSR PMINTENSET_EL1, x3 / MRS x3, PMEVCNTR5_EL0 /
    // MSR PMCCFILTR_EL0, x3: each claims the PMU and is not stepped over.
    for (enc, read) in [
        ((3, 3, 9, 12, 0), true),
        ((3, 0, 9, 14, 1), false),
        ((3, 3, 14, 8, 5), true),
        ((3, 3, 14, 15, 7), false),
    ] {
        g.hw.log.clear();
        g.hw.pmu_claimed = false;
        g.frame.x[3] = 0xdead;
        assert_eq!(g.exit(0, sysreg_esr(enc, 3, read)), Action::Resume);
        assert_eq!(g.hw.log, [ArchOp::ClaimPmu], "{enc:?}");
        assert_eq!((g.frame.elr, g.frame.x[3]), (ELR, 0xdead), "{enc:?}");
    }
    // Once it holds the PMU, an access that traps all the same would trap forever if
    // run again: undefined.
    g.frame.spsr = SPSR_EL1H;
    assert_eq!(
        g.exit(0, sysreg_esr((3, 3, 9, 12, 0), 3, true)),
        Action::Resume
    );
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
    assert!(!g.hw.log.contains(&ArchOp::ClaimDebug));
}

#[test]
fn a_first_pointer_authentication_use_claims_the_keys_and_runs_again() {
    let mut g = Guest::new(1);
    // PACIASP trapped by HCR_EL2.API (class 0x09, IL set), then MRS x3, APIAKeyLo_EL1
    // and MSR APGAKeyHi_EL1, x3 trapped by APK: each claims the keys and is not stepped
    // over.
    let pac_trap = (0x09 << 26) | (1 << 25);
    for esr in [
        pac_trap,
        sysreg_esr((3, 0, 2, 1, 0), 3, true),
        sysreg_esr((3, 0, 2, 3, 1), 3, false),
    ] {
        g.hw.log.clear();
        g.hw.pauth_claimed = false;
        g.frame.x[3] = 0xdead;
        assert_eq!(g.exit(0, esr), Action::Resume);
        assert_eq!(g.hw.log, [ArchOp::ClaimPauth], "{esr:#x}");
        assert_eq!((g.frame.elr, g.frame.x[3]), (ELR, 0xdead), "{esr:#x}");
    }
    // Held already, yet trapped: running it again would trap forever, so undefined.
    g.frame.spsr = SPSR_EL1H;
    assert_eq!(g.exit(0, pac_trap), Action::Resume);
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
}

#[test]
fn a_first_sve_instruction_claims_its_state_and_runs_again() {
    let mut g = Guest::new(1);
    // An SVE instruction (or a ZCR_EL1 access) trapped by CPTR_EL2.TZ: class 0x19.
    let sve_trap = (0x19 << 26) | (1 << 25);
    assert_eq!(g.exit(0, sve_trap), Action::Resume);
    assert_eq!(g.hw.log, [ArchOp::ClaimSve]);
    assert_eq!(g.frame.elr, ELR, "not stepped over: it runs again");
    // Held already, yet trapped: undefined.
    g.frame.spsr = SPSR_EL1H;
    assert_eq!(g.exit(0, sve_trap), Action::Resume);
    assert_eq!(g.frame.elr, VBAR + 0x200);
    assert_eq!(g.hw.el1[El1Reg::Esr as usize], inject::undefined_esr());
}
