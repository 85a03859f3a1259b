//! What an exit does: the policy for every synchronous exit, decided here, carried out
//! by `hyp`.
//!
//! `hyp`'s vector code saves the guest's registers into a [`GuestFrame`] and calls
//! [`sync_exit`] with the exit's syndrome (`ESR_EL2`), the exiting vCPU's
//! [`VmModel`] and an [`Arch`] bound to that vCPU. The policy emulates what it can on
//! the spot (hypercalls, MMIO to the vGIC and PL011, trapped system registers,
//! exception injection), leaving the guest's registers as it is to resume with, and
//! returns an [`Action`] for what only `hyp` can do: switch vCPU, stop one, start one.
//! Nothing here waits; a vCPU that has to (WFI with nothing pending, PSCI CPU_OFF, its
//! VM stopping) gets an [`Action`] that says so, and `hyp` asks the scheduler.
//!
//! | exit | action |
//! |---|---|
//! | HVC #0 / SMC #0 (SMCCC, PSCI); another immediate gets NOT_SUPPORTED | values in x0–x3, [`Action::Resume`]; CPU_ON → [`Action::StartVcpu`]; CPU_OFF → [`Action::PowerOff`]; CPU_SUSPEND as WFI; SYSTEM_OFF / SYSTEM_RESET → [`Action::VmLeft`] (or [`Action::Stop`] if another vCPU stopped the VM first) |
//! | WFI | [`Action::Resume`] if an interrupt is pending, else [`Action::Block`] until one or the virtual timer's deadline |
//! | WFE (trapped only on shared CPUs) | [`Action::Yield`] |
//! | data abort in a device window | the device's read or write, [`Action::Resume`] |
//! | data abort elsewhere (or straddling a device window's end), instruction abort, undefined | an exception injected into the guest and reported through [`Arch::guest_fault`], [`Action::Resume`] |
//! | `MSR ICC_SGI1R_EL1` | SGIs sent (other vCPUs woken), [`Action::Resume`] |
//! | physical timer registers | read as zero, writes ignored |
//! | ID registers (HCR_EL2.TID3) | read the VM's sanitised view ([`super::idregs`]); a write is undefined |
//! | debug registers (MDCR_EL2.TDA/TDOSA/TDRA) | the first access claims them for the vCPU and runs again, untrapped; MDRAR and the DCC read 0 ([`super::debug`]) |
//! | PMU registers (MDCR_EL2.TPM, while the vCPU does not hold the PMU) | the first access claims it for the vCPU and runs again, untrapped ([`super::pmu`]) |
//!
//! After any exit that resumes, [`finish`] stops the vCPU if its VM no longer runs and
//! otherwise refills its list registers if the vGIC has work for it. `hyp`'s IRQ path
//! uses [`finish`] too.
//!
//! ## Registers an exit does not save
//! The hot exits (hypercalls, SGIs, MMIO to a device) save only x0–x18 and x30: x19–x29
//! are callee-saved in the Rust code that handles them, so they are still live in the
//! CPU and `ERET` returns them untouched. An exit that transfers one of them (an MMIO
//! or system-register access naming x19–x29) answers [`Action::NeedsAllRegisters`],
//! and `hyp` saves all and calls [`sync_exit`] again with `ALL_SAVED`.
//!
//! ## Later
//! Gunyah's `vcpu_run` (a manager VM running another VM's vCPU inside its own
//! hypercall) will be one more action, `Run(vcpu)`, for the scheduler to carry out.
//!
//! Everything here is `#[inline(always)]` on the paths `bothy bench` gates (`hvc_null`,
//! `mmio_gicd_typer`, `sgi_self`): the policy moved here from `hyp` without costing an
//! instruction, and must stay that way.

use super::debug::{self, DebugShape};
use super::{
    aarch32, data_abort_srt, decode, decode_lower_data_abort, decode_sysreg_trap, ec,
    exception_class, inject, pauth, sve, sysreg as trapped, sysreg_rt, sysreg_syndrome,
    sysreg_write_syndrome, Exit, MmioAccess, SysRegAccess,
};
use crate::abi::{self, CallContext, Outcome, RETURN_SUCCESS};
use crate::arch::{Arch, El1Reg, GuestFault};
use crate::dev::ptimer::TimerReg;
use crate::dev::Device;
use crate::lifecycle::VmState;
use crate::vgic::VcpuMask;
use crate::vm::{ExitCounters, ExitKind, VmModel};
use core::num::NonZeroU64;
use core::sync::atomic::{fence, Ordering};

/// A vCPU's general-purpose registers and return state as an exit leaves them (the
/// layout `hyp`'s vector code reads and writes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFrame {
    pub x: [u64; 31],
    /// Where the guest resumes (`ELR_EL2`).
    pub elr: u64,
    /// The guest's PSTATE (`SPSR_EL2`).
    pub spsr: u64,
}

impl GuestFrame {
    /// Writes general-purpose register `reg` as an instruction names it (0..=30; 31 is
    /// XZR, so the write is discarded). Never panics: no bounds check on the exit path.
    #[inline(always)]
    pub fn set_reg(&mut self, reg: u8, value: u64) {
        if let Some(x) = self.x.get_mut(usize::from(reg)) {
            *x = value;
        }
    }
}

/// The first of the callee-saved registers (x19–x29) an ordinary exit leaves out of
/// its [`GuestFrame`].
pub const FIRST_UNSAVED: usize = 19;
/// The last of them (x30, the link register, is saved).
pub const LAST_UNSAVED: usize = 29;

/// What the CPU does after an exit. See the module doc for which exit gives which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The vCPU goes on with the frame as left (its list registers already refilled).
    Resume,
    /// The exit transfers one of x19–x29, which are not in the frame: call
    /// [`sync_exit`] again with every register saved. Nothing was done or counted.
    NeedsAllRegisters,
    /// Nothing pending: block until an interrupt arrives for the vCPU or, if given, the
    /// physical counter reaches the deadline (its virtual timer fires then). Non-zero
    /// so that an `Action` fits in two registers (a counter value of 0 is long past).
    Block(Option<NonZeroU64>),
    /// WFE: let another vCPU run if one waits.
    Yield,
    /// PSCI CPU_OFF: the vCPU stops; mark it Off once it has left the CPU.
    PowerOff,
    /// PSCI CPU_ON accepted for this vCPU of the VM (it is On in [`VmModel::power`],
    /// its start point stored there): have it scheduled, then [`finish`] the exit.
    StartVcpu(usize),
    /// This exit took the VM out of `Running` into the state given (SYSTEM_OFF → Off,
    /// SYSTEM_RESET → Resetting): report it and stop the VM; this vCPU stops.
    VmLeft(VmState),
    /// The VM is not running (another vCPU or the prompt stopped it): this vCPU stops.
    Stop,
}

/// Stepping over a trapped instruction adds this to ELR wrapping, as the PC does: a
/// guest may run its last word of address space (0xffff_ffff_ffff_fffc, mapped through
/// TTBR1), and a checked add there let it panic a debug build of the hypervisor.
const INSTRUCTION_SIZE: u64 = 4;
const SGI1R_WRITE: u64 = sysreg_write_syndrome(trapped::ICC_SGI1R_EL1);
/// SCTLR_EL1.SPAN: when clear, exception entry to EL1 sets PSTATE.PAN.
const SCTLR_EL1_SPAN: u64 = 1 << 23;
const PSTATE_PAN: u64 = 1 << 22;

/// Handle one synchronous exit of vCPU `vcpu` of `vm`, with ESR_EL2 `esr`. With
/// `ALL_SAVED` false, x19–x29 are not in `frame` (see the module doc). `FROM_A32`: the
/// vCPU ran AArch32 user code (`aarch32.rs`: instructions are stepped over by their
/// length, conditions checked); a separate instance, so AArch64 exits pay nothing.
#[inline(always)]
pub fn sync_exit<const ALL_SAVED: bool, const FROM_A32: bool>(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) -> Action {
    // Tested in order of frequency (a `match` would compile to a compare tree that
    // reaches the hypercall after the others).
    // SMCCC is `HVC #0`: class and immediate in one compare. Other immediates are not
    // SMCCC calls (Gunyah's own ABI, `HVC #0x6000+n`, will be routed beside them) and
    // take the general path, which refuses them.
    if is_smccc_call(esr) {
        return hypercall_exit(vm, vcpu, exits, frame, hw);
    }
    sync_exit_not_smccc::<ALL_SAVED, FROM_A32>(vm, vcpu, exits, frame, esr, hw)
}

/// [`sync_exit`] for an exit that is not [`is_smccc_call`] (`hyp` tests that first,
/// so that each has a stack frame of its own size).
#[inline(always)]
pub fn sync_exit_not_smccc<const ALL_SAVED: bool, const FROM_A32: bool>(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) -> Action {
    // Each exit is counted once: in the arm that handles it, after any early return
    // that sends it back to be handled with all registers saved.
    let class = exception_class(esr);
    let flushed = if class == ec::DABT_LOWER {
        if !ALL_SAVED && unsaved(data_abort_srt(esr)) {
            return Action::NeedsAllRegisters;
        }
        exits.count(ExitKind::Mmio);
        data_abort::<FROM_A32>(vm, vcpu, frame, esr, hw);
        false
    } else if class == ec::SYSREG {
        let rt = sysreg_rt(esr);
        if !ALL_SAVED && unsaved(rt) {
            return Action::NeedsAllRegisters;
        }
        exits.count(ExitKind::Sysreg);
        if sysreg_syndrome(esr) == SGI1R_WRITE {
            sgi1r_write(vm, vcpu, frame, rt, hw)
        } else {
            sysreg_access(vm, vcpu, frame, decode_sysreg_trap(esr), hw);
            false
        }
    } else {
        match other_sync_exit::<FROM_A32>(vm, vcpu, exits, frame, esr, hw) {
            Action::Resume => false,
            other => return other,
        }
    };
    finish(vm, vcpu, flushed, hw)
}

/// Whether ESR_EL2 `esr` is an `HVC #0`, an SMCCC call: the exit [`sync_exit`] tests
/// first. `hyp` tests it itself and calls [`hypercall_exit`] (or tests for the next hot
/// exits, [`is_data_abort`] and [`is_sgi1r_write`], and then calls
/// [`sync_exit_not_smccc`]), so that each hot path has a stack frame of its own, as
/// small as it needs.
#[inline(always)]
pub fn is_smccc_call(esr: u64) -> bool {
    esr & HVC_CLASS_AND_IMM == HVC_0
}

/// Whether ESR_EL2 `esr` is a stage-2 data abort (a lower EL's): the exit
/// [`data_abort_exit`] takes (an emulated device's register, most often). `hyp` tests
/// it after [`is_smccc_call`], before [`is_sgi1r_write`].
#[inline(always)]
pub fn is_data_abort(esr: u64) -> bool {
    exception_class(esr) == ec::DABT_LOWER
}

/// [`sync_exit`] for an exit that [`is_data_abort`] (from AArch64). One whose transfer
/// register is one of x19–x29 asks for [`Action::NeedsAllRegisters`].
#[inline(always)]
pub fn data_abort_exit(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) -> Action {
    if unsaved(data_abort_srt(esr)) {
        return Action::NeedsAllRegisters;
    }
    exits.count(ExitKind::Mmio);
    data_abort::<false>(vm, vcpu, frame, esr, hw);
    finish(vm, vcpu, false, hw)
}

/// Whether ESR_EL2 `esr` is the guest's `MSR ICC_SGI1R_EL1, Xt` from AArch64 with an
/// `Xt` that an ordinary exit saves (not one of x19–x29): the exit [`sgi_exit`] takes.
/// `hyp` tests it after [`is_smccc_call`], so that sending an SGI, the most frequent exit
/// of an SMP guest after hypercalls and MMIO, has a stack frame of its own too.
#[inline(always)]
pub fn is_sgi1r_write(esr: u64) -> bool {
    sysreg_syndrome(esr) == SGI1R_WRITE && !unsaved(sysreg_rt(esr))
}

/// [`sync_exit`] for an exit that [`is_sgi1r_write`] (from AArch64, all registers it
/// needs saved).
#[inline(always)]
pub fn sgi_exit(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) -> Action {
    exits.count(ExitKind::Sysreg);
    let flushed = sgi1r_write_inline(vm, vcpu, frame, sysreg_rt(esr), hw);
    finish(vm, vcpu, flushed, hw)
}

/// [`sync_exit`] for an exit that [`is_smccc_call`].
#[inline(always)]
pub fn hypercall_exit(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    hw: &mut impl Arch,
) -> Action {
    exits.count(ExitKind::Hypercall);
    match hypercall(vm, vcpu, frame, hw) {
        Action::Resume => finish(vm, vcpu, false, hw),
        other => other,
    }
}

/// The end of an exit that keeps the vCPU on its CPU: stop it if its VM no longer
/// runs, and refill its list registers if the vGIC has work for it. `flushed`: this
/// exit already refilled them.
#[inline(always)]
pub fn finish(vm: &VmModel, vcpu: usize, flushed: bool, hw: &mut impl Arch) -> Action {
    // Both flags are read relaxed, with the acquire fence on the branch that acts on
    // what was read: the ordering of acquire loads, one instruction each cheaper.
    if !vm.is_running_relaxed() {
        fence(Ordering::Acquire);
        return Action::Stop;
    }
    // A handler that flushed is the last thing its exit does for this vCPU, so work
    // added since came from another CPU, which kicks this one: the kick's interrupt
    // is taken as soon as the guest is entered, and that exit flushes. So only an
    // exit that did not flush asks.
    if !flushed && vm.vgic.needs_flush_relaxed(vcpu) {
        fence(Ordering::Acquire);
        serve_list_registers_after_exit(vm, vcpu, hw);
    }
    Action::Resume
}

/// [`serve_list_registers`] at the end of an exit (see [`VGic::flush_after_exit`]).
///
/// [`VGic::flush_after_exit`]: crate::vgic::VGic::flush_after_exit
#[inline(never)]
fn serve_list_registers_after_exit(vm: &VmModel, vcpu: usize, hw: &mut impl Arch) {
    vm.vgic.flush_after_exit(vcpu, hw);
}

/// Fold the list registers back into the vGIC and refill them (asking `hw` whether a
/// hardware-linked level interrupt waiting in software is still asserted).
#[inline(never)]
pub fn serve_list_registers(vm: &VmModel, vcpu: usize, hw: &mut impl Arch) {
    vm.vgic.flush(vcpu, hw);
}

/// Whether general-purpose register `reg` is one an ordinary exit leaves out of the
/// frame.
#[inline(always)]
fn unsaved(reg: usize) -> bool {
    (FIRST_UNSAVED..=LAST_UNSAVED).contains(&reg)
}

#[inline(always)]
fn wake(hw: &mut impl Arch, mask: VcpuMask) {
    if !mask.is_empty() {
        hw.wake(mask);
    }
}

/// [`wake`] the vCPUs in `mask` but `vcpu`, the one exiting, for a device access: its own
/// new work (an SPI routed to itself, a UART interrupt) goes into its list registers at
/// this exit's [`finish`] (the vGIC's WORK flag makes it flush), and a scheduler wake of
/// a running vCPU would only leave a pending wake behind, which makes its next WFI
/// return at once. The test for an empty mask is inline, the rest a call: most device
/// accesses wake nobody.
#[inline(always)]
fn wake_others(hw: &mut impl Arch, vcpu: usize, mask: VcpuMask) {
    if !mask.is_empty() {
        wake_others_in(hw, vcpu, mask);
    }
}

#[inline(never)]
fn wake_others_in(hw: &mut impl Arch, vcpu: usize, mask: VcpuMask) {
    wake(hw, VcpuMask(mask.0 & !VcpuMask::one(vcpu).0));
}

/// ESR_EL2's exception class and, for HVC/SMC, the immediate (ISS[15:0]), with
/// ESR_EL2[63:32] (ISS2, RES0 for an HVC): one logical immediate, where masking the low
/// 32 bits alone compiles to two `and`s. An HVC #0 with ISS2 bits set would miss this
/// compare and be answered by the general path instead, the same way.
const HVC_CLASS_AND_IMM: u64 = !(0x3ff << 16);
/// ... of `HVC #0`.
const HVC_0: u64 = (ec::HVC64 as u64) << 26;

/// An HVC or SMC with a non-zero immediate: not an SMCCC call. The caller gets
/// NOT_SUPPORTED in X0 (X1–X3 zero), as for an unknown function.
#[cold]
#[inline(never)]
fn not_smccc(vm: &VmModel, vcpu: usize, frame: &mut GuestFrame, hw: &mut impl Arch) -> Action {
    frame.x[..4].copy_from_slice(&[
        crate::abi::smccc::ret_code(crate::abi::smccc::NOT_SUPPORTED),
        0,
        0,
        0,
    ]);
    finish(vm, vcpu, false, hw)
}

/// PSCI and SMCCC from the guest (HVC, or a trapped SMC already stepped over).
#[inline(always)]
fn hypercall(vm: &VmModel, vcpu: usize, frame: &mut GuestFrame, hw: &mut impl Arch) -> Action {
    let ctx = CallContext { vm, vcpu };
    let (args, _) = frame.x.split_first_chunk::<8>().expect("31 registers");
    // Almost every call just returns a value: test for that alone first (a `match`
    // compiles to a compare chain that reaches `Return` last).
    let outcome = abi::dispatch(&ctx, args);
    if let Outcome::Return(x0) = outcome {
        frame.x[..4].copy_from_slice(&[x0, 0, 0, 0]);
        return Action::Resume;
    }
    call_outcome(vm, vcpu, frame, outcome, hw)
}

/// What a PSCI call does beyond returning values.
#[cold]
#[inline(never)]
fn call_outcome(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    outcome: Outcome,
    hw: &mut impl Arch,
) -> Action {
    match outcome {
        Outcome::Return(x0) => {
            frame.x[..4].copy_from_slice(&[x0, 0, 0, 0]);
            Action::Resume
        }
        Outcome::StartVcpu { target } => {
            frame.x[..4].copy_from_slice(&[RETURN_SUCCESS, 0, 0, 0]);
            Action::StartVcpu(target)
        }
        Outcome::StopVcpu => Action::PowerOff,
        Outcome::Suspend => {
            frame.x[..4].copy_from_slice(&[RETURN_SUCCESS, 0, 0, 0]);
            wait_for_interrupt(vm, vcpu, hw)
        }
        Outcome::SystemOff => leave_running(vm, VmState::Off),
        Outcome::SystemReset => leave_running(vm, VmState::Resetting),
    }
}

/// Only the first of several racing stops (two vCPUs' SYSTEM_OFF, the prompt) reports
/// and finishes it; the others just stop their vCPU.
fn leave_running(vm: &VmModel, to: VmState) -> Action {
    if vm.leave_running(to) {
        Action::VmLeft(to)
    } else {
        Action::Stop
    }
}

/// WFI: resume at once if an interrupt is pending for the vCPU, otherwise block it
/// (until an interrupt or its virtual timer's deadline).
///
/// The list registers are folded back first, every time: the guest may have completed
/// interrupts without an exit (hardware-linked or edge ones), and until the model
/// knows, it would not offer their next occurrence.
#[cold]
#[inline(never)]
fn wait_for_interrupt(vm: &VmModel, vcpu: usize, hw: &mut impl Arch) -> Action {
    // The emulated physical timer may have come due since it was last looked at.
    let (_own, ptimer_due) = vm.ptimer_update(vcpu, hw.counter());
    if vm.vgic.flush_and_has_pending(vcpu, hw) || vm.state() != VmState::Running {
        return Action::Resume;
    }
    // Woken by whichever timer is due first.
    let deadline = crate::sched::earliest(hw.vtimer_deadline(), ptimer_due);
    Action::Block(deadline.and_then(NonZeroU64::new))
}

/// `MSR ICC_SGI1R_EL1, Xt`. Returns whether this vCPU's list registers were flushed.
#[inline(never)]
fn sgi1r_write(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    rt: usize,
    hw: &mut impl Arch,
) -> bool {
    sgi1r_write_inline(vm, vcpu, frame, rt, hw)
}

/// [`sgi1r_write`], inlined into [`sgi_exit`].
#[inline(always)]
fn sgi1r_write_inline(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    rt: usize,
    hw: &mut impl Arch,
) -> bool {
    frame.elr = frame.elr.wrapping_add(INSTRUCTION_SIZE);
    let value = frame.x.get(rt).copied().unwrap_or(0);
    let done = vm.vgic.send_sgi_local(vcpu, value, hw);
    wake(hw, done.kicks);
    done.flushed
}

/// Step over the instruction that trapped: 4 bytes from AArch64; from AArch32 by its
/// length, with the IT state advanced.
#[inline(always)]
fn step_over<const FROM_A32: bool>(frame: &mut GuestFrame, esr: u64) {
    if FROM_A32 {
        aarch32::skip(frame, esr);
    } else {
        frame.elr = frame.elr.wrapping_add(INSTRUCTION_SIZE);
    }
}

/// A stage-2 data abort: an emulated device, or an abort for the guest.
#[inline(always)]
fn data_abort<const FROM_A32: bool>(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) {
    match decode_lower_data_abort(esr, hw.far_el2(), hw.hpfar_el2()) {
        Exit::Mmio(access) => mmio::<FROM_A32>(vm, vcpu, frame, access, esr, hw),
        _ => inject_bad_data_abort(frame, esr, hw),
    }
}

fn inject_bad_data_abort(frame: &mut GuestFrame, esr: u64, hw: &mut impl Arch) {
    const ESR_WNR: u64 = 1 << 6;
    let write = esr & ESR_WNR != 0;
    let far = hw.far_el2();
    inject_sync(
        frame,
        inject::data_abort_esr(inject::from_el0(frame.spsr), write),
        far,
        hw,
    )
}

/// The rarer synchronous exits (WFI/WFE, SMC, aborts outside RAM and devices, anything
/// undefined).
#[inline(never)]
fn other_sync_exit<const FROM_A32: bool>(
    vm: &VmModel,
    vcpu: usize,
    exits: &ExitCounters,
    frame: &mut GuestFrame,
    esr: u64,
    hw: &mut impl Arch,
) -> Action {
    // Classified here, out of line, so the hot path's dispatch stays three compares.
    exits.count(match exception_class(esr) {
        ec::WFX => ExitKind::Wfx,
        // An HVC with an immediate other than 0 (refused) is still a hypercall.
        ec::HVC64 => ExitKind::Hypercall,
        _ => ExitKind::Other,
    });
    if FROM_A32 && !aarch32::condition_passed(esr, frame.spsr) {
        // A conditional A32/T32 instruction that trapped although its condition
        // failed: it does nothing.
        step_over::<true>(frame, esr);
        return Action::Resume;
    }
    match decode(esr, hw.far_el2(), hw.hpfar_el2()) {
        Exit::Hvc { imm: 0 } => return hypercall(vm, vcpu, frame, hw),
        Exit::Smc { imm: 0 } => {
            frame.elr = frame.elr.wrapping_add(INSTRUCTION_SIZE);
            return hypercall(vm, vcpu, frame, hw);
        }
        Exit::Hvc { .. } => return not_smccc(vm, vcpu, frame, hw),
        Exit::Smc { .. } => {
            frame.elr = frame.elr.wrapping_add(INSTRUCTION_SIZE);
            return not_smccc(vm, vcpu, frame, hw);
        }
        Exit::Wait { wfe } => {
            step_over::<FROM_A32>(frame, esr);
            // WFE traps only on shared CPUs (hyp's CPU setup): offer the CPU.
            if wfe {
                return Action::Yield;
            }
            return wait_for_interrupt(vm, vcpu, hw);
        }
        Exit::Mmio(access) => mmio::<FROM_A32>(vm, vcpu, frame, access, esr, hw),
        Exit::SysReg(access) => sysreg_access(vm, vcpu, frame, access, hw),
        Exit::BadDataAbort { .. } => inject_bad_data_abort(frame, esr, hw),
        Exit::BadInstructionAbort { far, .. } => inject_sync(
            frame,
            inject::instruction_abort_esr(inject::from_el0(frame.spsr)),
            far,
            hw,
        ),
        // A pointer-authentication instruction (HCR_EL2.API, [`super::pauth`]) or an
        // SVE instruction (CPTR_EL2.TZ, [`super::sve`]): not stepped over, the guest
        // executes it again with its own keys or SVE state. A claim of what it holds
        // already (something else trapped it): running it again would only trap again.
        Exit::Other {
            ec: pauth::ec::PAUTH,
        } if hw.claim_pauth() => {}
        Exit::Other { ec: sve::ec::SVE } if hw.claim_sve() => {}
        Exit::Other { .. } => inject_sync(frame, inject::undefined_esr(), 0, hw),
    }
    Action::Resume
}

/// Emulate an access to a device on the VM's bus; anything else aborts.
#[inline(always)]
fn mmio<const FROM_A32: bool>(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    access: MmioAccess,
    esr: u64,
    hw: &mut impl Arch,
) {
    // The register a store writes (XZR reads as zero); loads do not need it.
    let value = || frame.x.get(usize::from(access.reg)).copied().unwrap_or(0);
    let Some((device, offset)) = vm.bus.find_access(access.ipa, access.size) else {
        let far = hw.far_el2();
        inject_sync(
            frame,
            inject::data_abort_esr(inject::from_el0(frame.spsr), access.write),
            far,
            hw,
        );
        return;
    };
    let mut kicks = VcpuMask::EMPTY;
    let result: Option<u64> = match device {
        Device::GicDist if access.write => {
            kicks = vm
                .vgic
                .dist_write(vcpu, offset, access.size, access.store_value(value()));
            None
        }
        Device::GicDist => Some(vm.vgic.dist_read(vcpu, offset, access.size)),
        Device::GicRedist if access.write => {
            kicks = vm
                .vgic
                .redist_write(vcpu, offset, access.size, access.store_value(value()));
            None
        }
        Device::GicRedist => Some(vm.vgic.redist_read(vcpu, offset, access.size)),
        Device::Uart => uart_access(vm, vcpu, offset, access, value(), hw),
    };
    if let Some(raw) = result {
        // `!= 31` then a plain index (`reg` is 5 bits, so no bounds check either): two
        // instructions cheaper on the MMIO path than `set_reg` as compiled here.
        if access.reg != 31 {
            frame.x[usize::from(access.reg & 31)] = access.load_result(raw);
        }
    }
    wake_others(hw, vcpu, kicks);
    step_over::<FROM_A32>(frame, esr);
}

#[inline(never)]
fn uart_access(
    vm: &VmModel,
    vcpu: usize,
    offset: u64,
    access: MmioAccess,
    value: u64,
    hw: &mut impl Arch,
) -> Option<u64> {
    let mut model = vm.uart.lock();
    let result = if access.write {
        if let Some(byte) = model
            .write(offset, access.size, access.store_value(value) as u32)
            .tx
        {
            hw.console_out(byte);
        }
        None
    } else {
        Some(u64::from(model.read(offset, access.size)))
    };
    // Under the UART lock: two vCPUs racing here must not apply stale levels out of
    // order (that loses the interrupt).
    let kicks = vm.vgic.set_line_level(vm.uart_line, model.irq_level());
    drop(model);
    wake_others(hw, vcpu, kicks);
    result
}

/// Trapped system registers: SGIs are sent, the EL1 physical timer is emulated
/// (`dev/ptimer.rs`), ID registers read the VM's view ([`super::idregs`]), debug
/// registers, the PMU and the pointer-authentication keys are claimed ([`super::debug`],
/// [`super::pmu`], [`super::pauth`]), anything else is undefined for the guest.
#[inline(never)]
fn sysreg_access(
    vm: &VmModel,
    vcpu: usize,
    frame: &mut GuestFrame,
    access: SysRegAccess,
    hw: &mut impl Arch,
) {
    if access.is(trapped::ICC_SGI1R_EL1) && !access.read {
        let _ = sgi1r_write(vm, vcpu, frame, usize::from(access.reg), hw);
        return;
    } else if access.is(trapped::ICC_ASGI1R_EL1) || access.is(trapped::ICC_SGI0R_EL1) {
        // Group-0 / alternate-group SGIs: the guest has only group 1; ignore.
    } else if let Some(reg) = physical_timer_reg(&access) {
        let write =
            (!access.read).then(|| frame.x.get(usize::from(access.reg)).copied().unwrap_or(0));
        // A line that rose is this vCPU's own: `finish` refills its list registers at the
        // end of the exit, so there is nobody to wake.
        let now = hw.counter();
        let (value, _own) = vm.ptimer_access(vcpu, reg, write, now);
        if access.read {
            frame.set_reg(access.reg, value);
        }
        // While it runs, Bothy's EL2 timer stands for this one.
        if let Some(at) = vm.ptimer_deadline(vcpu, now) {
            hw.look_at(at);
        }
    } else if let Some(value) = vm.id_regs.read(&access).filter(|_| access.read) {
        // The ID space (HCR_EL2.TID3): the VM's sanitised view. Its registers are
        // read-only, so a write falls through to undefined, as on hardware.
        frame.set_reg(access.reg, value);
    } else if let Some(answer) = debug::answer(&access, DebugShape::of_view(&vm.id_regs)) {
        // Debug registers (MDCR_EL2.TDA/TDOSA/TDRA, [`super::debug`]).
        match answer {
            // Not stepped over: the guest executes it again, untrapped.
            debug::Answer::Claim if hw.claim_debug() => return,
            debug::Answer::Zero if access.read => frame.set_reg(access.reg, 0),
            debug::Answer::Zero => {}
            // Or a claim trapped again: running it once more would only trap again.
            debug::Answer::Claim | debug::Answer::Undefined => {
                inject_sync(frame, inject::undefined_esr(), 0, hw);
                return;
            }
        }
    } else if let Some(super::pmu::Answer::Claim) = super::pmu::answer(&access) {
        // PMU registers (MDCR_EL2.TPM/TPMCR, [`super::pmu`]): not stepped over, the
        // guest executes it again against its own PMU. A claim of a PMU it holds
        // already (something else trapped it) or of a CPU without one: running it again
        // would only trap again.
        if !hw.claim_pmu() {
            inject_sync(frame, inject::undefined_esr(), 0, hw);
        }
        return;
    } else if pauth::is_key_register(&access) {
        // Key registers (HCR_EL2.APK, [`super::pauth`]): likewise.
        if !hw.claim_pauth() {
            inject_sync(frame, inject::undefined_esr(), 0, hw);
        }
        return;
    } else {
        inject_sync(frame, inject::undefined_esr(), 0, hw);
        return;
    }
    frame.elr = frame.elr.wrapping_add(INSTRUCTION_SIZE);
}

/// The emulated physical-timer register a trapped access names, if any.
fn physical_timer_reg(access: &SysRegAccess) -> Option<TimerReg> {
    if access.is(trapped::CNTP_CTL_EL0) {
        Some(TimerReg::Ctl)
    } else if access.is(trapped::CNTP_CVAL_EL0) {
        Some(TimerReg::Cval)
    } else if access.is(trapped::CNTP_TVAL_EL0) {
        Some(TimerReg::Tval)
    } else {
        None
    }
}

/// Deliver a synchronous exception to the guest's EL1 vector, as the hardware would:
/// the syndrome, fault address and return state into the EL1 registers, the guest
/// resumed at the vector for the mode it was in, in EL1h with D/A/I/F masked and
/// PSTATE.PAN as SCTLR_EL1.SPAN says.
#[cold]
#[inline(never)]
pub fn inject_sync(frame: &mut GuestFrame, esr: u64, far: u64, hw: &mut impl Arch) {
    hw.guest_fault(GuestFault {
        esr,
        pc: frame.elr,
        far,
    });
    hw.set_el1(El1Reg::Esr, esr);
    hw.set_el1(El1Reg::Far, far);
    hw.set_el1(El1Reg::Elr, frame.elr);
    hw.set_el1(El1Reg::Spsr, frame.spsr);
    let pan = if hw.el1(El1Reg::Sctlr) & SCTLR_EL1_SPAN == 0 {
        PSTATE_PAN
    } else {
        frame.spsr & PSTATE_PAN
    };
    frame.elr = hw.el1(El1Reg::Vbar) + inject::vector_offset(frame.spsr);
    frame.spsr = inject::SPSR_EL1H_MASKED | pan;
}

#[cfg(test)]
mod tests;
