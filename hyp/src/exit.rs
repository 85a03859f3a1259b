//! Running a vCPU: first entry, every exit, waiting, and stopping.
//!
//! The vector code calls [`handle_sync_exit`], [`handle_irq_exit`] or
//! [`handle_other_exit`] with the guest's registers in a [`GuestFrame`] (x19–x29
//! only when an exit needs them: see `vectors.rs`); whatever it leaves in the frame
//! is what the guest resumes with. The ordinary path (a hypercall, an MMIO access, an interrupt) touches
//! no EL1 register and takes no lock beyond the device model it talks to; the
//! vGIC is only visited when `needs_flush` says it has work.
//!
//! A vCPU that is off (never started, CPU_OFF, VM powered off or resetting)
//! waits *inside* this module in [`wait_for_start`], with its physical CPU in
//! WFI, until PSCI CPU_ON or a reset gives it somewhere to start; it then
//! rewrites the frame and returns, so the `eret` lands at the new entry point.

use crate::arch::aarch64::lr::HwListRegs;
use crate::arch::aarch64::vectors::{
    enter_guest, ExitKind, GuestFrame, Resume, FIRST_UNSAVED, LAST_UNSAVED,
};
use crate::arch::aarch64::{gic, sysreg};
use crate::machine::{self, machine, CpuContext, Machine};
use crate::println;
use crate::vm::{RunState, Vm};
use bothy_core::abi::{self, CallContext, Outcome, RETURN_SUCCESS};
use bothy_core::exit::{
    data_abort_srt, decode, decode_lower_data_abort, decode_sysreg_trap, ec, inject, sysreg as trapped, sysreg_rt,
    sysreg_syndrome, sysreg_write_syndrome, Exit, MmioAccess, SysRegAccess,
};
use bothy_core::layout;
use bothy_core::vgic::VcpuMask;

/// SCTLR_EL1 at vCPU reset: RES1 bits only, so MMU and caches are off (booting.rst).
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// SCTLR_EL1.SPAN: when clear, exception entry to EL1 sets PSTATE.PAN.
const SCTLR_EL1_SPAN: u64 = 1 << 23;
const PSTATE_PAN: u64 = 1 << 22;
/// MPIDR_EL1 bit 31 is RES1; Aff0 is the vCPU index.
const VMPIDR_RES1: u64 = 1 << 31;
const ICH_HCR_EN: u64 = 1;
const INSTRUCTION_SIZE: u64 = 4;
const SGI1R_WRITE: u64 = sysreg_write_syndrome(trapped::ICC_SGI1R_EL1);

/// Run the vCPU pinned to this CPU (or park it forever if there is none).
pub fn run_cpu(cpu: usize) -> ! {
    let m = machine();
    let Some((vm_index, vcpu)) = m.cpus[cpu].vcpu else {
        loop {
            sysreg::wfi();
            let _ = drain_physical_irqs(m, None);
        }
    };
    let vm = &m.vms[vm_index];
    sysreg::write_vttbr_el2(vm.vttbr);
    sysreg::write_vtcr_el2(vm.vtcr);
    sysreg::write_vpidr_el2(sysreg::read_midr_el1());
    sysreg::write_vmpidr_el2(VMPIDR_RES1 | vcpu as u64);
    sysreg::write_cntvoff_el2(vm.cntvoff);
    sysreg::isb();
    sysreg::tlbi_all_local();
    let mut frame = GuestFrame::default();
    if vcpu == 0 {
        boot_vcpu0(vm, &mut frame);
    } else {
        wait_for_start(m, vm, vcpu, &mut frame);
    }
    enter_guest(m.cpus[cpu].index, &frame)
}

/// Put vCPU 0 at the kernel entry with x0 = DTB, per the arm64 boot protocol.
fn boot_vcpu0(vm: &Vm, frame: &mut GuestFrame) {
    reset_vcpu_state(vm, 0);
    *frame = GuestFrame::default();
    frame.x[0] = vm.boot.dtb;
    frame.elr = vm.boot.kernel;
    frame.spsr = inject::SPSR_EL1H_MASKED;
}

/// Architectural reset of the EL1 and virtual-interface state this CPU holds for `vcpu`.
fn reset_vcpu_state(vm: &Vm, vcpu: usize) {
    sysreg::write_sctlr_el1(SCTLR_EL1_RESET);
    sysreg::write_cpacr_el1(0);
    sysreg::write_vbar_el1(0);
    sysreg::write_cntv_ctl_el0(0);
    sysreg::write_cntkctl_el1(0);
    let mut lrs = machine::this_cpu().lrs;
    for i in 0..bothy_core::vgic::ListRegs::count(&lrs) {
        bothy_core::vgic::ListRegs::write(&mut lrs, i, 0);
    }
    sysreg::write_ich_vmcr_el2(0);
    sysreg::write_ich_ap0r0_el2(0);
    sysreg::write_ich_ap1r0_el2(0);
    sysreg::write_ich_hcr_el2(ICH_HCR_EN);
    // A timer interrupt the previous incarnation never EOIed stays active in the
    // physical GIC and would block the next one.
    gic::deactivate(machine().vtimer_intid);
    vm.vgic.reset_vcpu(vcpu);
    sysreg::isb();
}

/// Wait (in WFI) until this vCPU is given a start point, then set the frame up for it.
#[cold]
#[inline(never)]
fn wait_for_start(m: &Machine, vm: &Vm, vcpu: usize, frame: &mut GuestFrame) {
    loop {
        match vm.state() {
            RunState::Running => {
                if let Some((entry, context)) = vm.power.take_pending_start(vcpu) {
                    reset_vcpu_state(vm, vcpu);
                    *frame = GuestFrame::default();
                    frame.x[0] = context;
                    frame.elr = entry;
                    frame.spsr = inject::SPSR_EL1H_MASKED;
                    vm.power.mark_on(vcpu);
                    return;
                }
            }
            // Only vCPU 0's CPU completes a reset, and it boots from here directly.
            RunState::Resetting if vcpu == 0 => {
                finish_reset(vm);
                boot_vcpu0(vm, frame);
                return;
            }
            _ => {}
        }
        sysreg::wfi();
        let _ = drain_physical_irqs(m, Some((vm, vcpu)));
    }
}

// The vector code calls one of the three `handle_*_exit` below for every exit from the
// guest, with x19–x29 left out of the frame (see `vectors.rs`); an exit that transfers
// one of them is sent back to be handled by `handle_exit_all` instead.

/// A synchronous exit (hypercall, trapped instruction, stage-2 abort).
pub extern "C" fn handle_sync_exit(frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let vm = running_vm(ctx);
    let vcpu = ctx.vcpu;
    let flushed = match sync_exit::<false>(vm, vcpu, frame, sysreg::read_esr_el2(), ctx.lrs) {
        SyncExit::Handled { flushed } => flushed,
        SyncExit::Restarted => return restarted(vm, vcpu),
        SyncExit::NeedsAllRegisters => return Resume::SaveAllAndRetry,
    };
    finish_exit(vm, vcpu, frame, flushed)
}

/// A physical IRQ while the guest ran.
pub extern "C" fn handle_irq_exit(frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let vm = running_vm(ctx);
    // One interrupt per exit: another one pending brings the CPU straight back.
    let flushed = take_physical_irqs(machine(), Some((vm, ctx.vcpu)), 1);
    finish_exit(vm, ctx.vcpu, frame, flushed)
}

/// FIQ, SError, or anything from AArch32.
pub extern "C" fn handle_other_exit(kind: u64, frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let vm = running_vm(ctx);
    let flushed = other_exit(kind, vm, ctx.vcpu);
    finish_exit(vm, ctx.vcpu, frame, flushed)
}

/// Called by the vector code, with every register in `frame`, for a synchronous exit
/// that [`handle_sync_exit`] answered with [`Resume::SaveAllAndRetry`]. ESR_EL2 still
/// describes it: EL2 took no exception in between. The whole frame is restored after.
#[cold]
pub extern "C" fn handle_exit_all(frame: &mut GuestFrame) {
    let ctx = machine::this_cpu();
    let vm = running_vm(ctx);
    let vcpu = ctx.vcpu;
    let _ = match sync_exit::<true>(vm, vcpu, frame, sysreg::read_esr_el2(), ctx.lrs) {
        SyncExit::Handled { flushed } => finish_exit(vm, vcpu, frame, flushed),
        SyncExit::Restarted => restarted(vm, vcpu),
        // Not with ALL_SAVED: every register is in the frame.
        SyncExit::NeedsAllRegisters => Resume::All,
    };
}

fn running_vm(ctx: &CpuContext) -> &'static Vm {
    match ctx.vm {
        Some(vm) => vm,
        None => crate::fatal(format_args!(
            "exit on CPU slot {}, which runs no vCPU",
            ctx.slot
        )),
    }
}

/// Whether general-purpose register `reg` (an MMIO or system-register transfer) is one
/// the vector code leaves out of the frame.
#[inline(always)]
fn unsaved(reg: usize) -> bool {
    (FIRST_UNSAVED..=LAST_UNSAVED).contains(&reg)
}

/// Whether a handler stopped the vCPU and started it afresh, rewriting its whole frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restarted {
    No,
    Yes,
}

/// How a synchronous exit went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncExit {
    /// `flushed`: this vCPU's list registers were flushed (a self-SGI).
    Handled { flushed: bool },
    /// The vCPU was stopped and started afresh: its whole frame is new.
    Restarted,
    /// Not handled: it transfers one of x19–x29, which are not in the frame (only
    /// when `ALL_SAVED` is false).
    NeedsAllRegisters,
}

/// A synchronous exit. The hottest (hypercalls, SGIs, MMIO) are routed first, with a
/// compare or two each.
#[inline(always)]
fn sync_exit<const ALL_SAVED: bool>(
    vm: &Vm,
    vcpu: usize,
    frame: &mut GuestFrame,
    esr: u64,
    lrs: HwListRegs,
) -> SyncExit {
    let flushed = match bothy_core::exit::exception_class(esr) {
        ec::HVC64 => {
            if smccc_call(vm, vcpu, frame) == Restarted::Yes {
                return SyncExit::Restarted;
            }
            false
        }
        ec::SYSREG => {
            let rt = sysreg_rt(esr);
            if !ALL_SAVED && unsaved(rt) {
                return SyncExit::NeedsAllRegisters;
            }
            if sysreg_syndrome(esr) == SGI1R_WRITE {
                sgi1r_write(vm, vcpu, frame, rt, lrs)
            } else {
                sysreg_access(vm, vcpu, frame, decode_sysreg_trap(esr));
                false
            }
        }
        ec::DABT_LOWER => {
            if !ALL_SAVED && unsaved(data_abort_srt(esr)) {
                return SyncExit::NeedsAllRegisters;
            }
            data_abort(vm, vcpu, frame, esr);
            false
        }
        _ => {
            if other_sync_exit(vm, vcpu, frame, esr) == Restarted::Yes {
                return SyncExit::Restarted;
            }
            false
        }
    };
    SyncExit::Handled { flushed }
}

/// The end of an exit that kept the vCPU's frame: stop the vCPU if its VM no longer
/// runs, and flush its list registers if they have work.
#[inline(always)]
fn finish_exit(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, flushed: bool) -> Resume {
    if vm.state() != RunState::Running {
        stop_vcpu(machine(), vm, vcpu, frame);
        return restarted(vm, vcpu);
    }
    // A handler that flushed is the last thing its exit does for this vCPU, so work
    // added since came from another CPU, which kicks this one: the kick's interrupt
    // is taken as soon as the guest is entered, and that exit flushes. So only an
    // exit that did not flush asks.
    if !flushed && vm.vgic.needs_flush(vcpu) {
        service_list_registers(vm, vcpu);
    }
    Resume::Saved
}

/// The end of an exit after which the vCPU starts afresh (its frame rewritten, and
/// perhaps fresh vGIC state to load).
#[cold]
#[inline(never)]
fn restarted(vm: &Vm, vcpu: usize) -> Resume {
    if vm.vgic.needs_flush(vcpu) {
        service_list_registers(vm, vcpu);
    }
    Resume::All
}

/// `MSR ICC_SGI1R_EL1, Xt`. Returns whether this vCPU's list registers were flushed.
#[inline(never)]
fn sgi1r_write(
    vm: &Vm,
    vcpu: usize,
    frame: &mut GuestFrame,
    rt: usize,
    mut lrs: HwListRegs,
) -> bool {
    frame.elr += INSTRUCTION_SIZE;
    let value = frame.x.get(rt).copied().unwrap_or(0);
    let done = vm.vgic.send_sgi_local(vcpu, value, &mut lrs);
    kick_vcpus(vm, done.kicks);
    done.flushed
}

/// A stage-2 data abort: an emulated device, or an abort for the guest.
#[inline(never)]
fn data_abort(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, esr: u64) {
    match decode_lower_data_abort(esr, sysreg::read_far_el2(), sysreg::read_hpfar_el2()) {
        Exit::Mmio(access) => mmio(vm, vcpu, frame, access),
        _ => inject_bad_data_abort(frame, esr),
    }
}

fn inject_bad_data_abort(frame: &mut GuestFrame, esr: u64) {
    const ESR_WNR: u64 = 1 << 6;
    let write = esr & ESR_WNR != 0;
    inject_sync(
        frame,
        inject::data_abort_esr(inject::from_el0(frame.spsr), write),
        sysreg::read_far_el2(),
    )
}

/// FIQs, SErrors and anything from AArch32. Returns whether this vCPU's list registers
/// were flushed on the way.
#[inline(never)]
fn other_exit(kind: u64, vm: &Vm, vcpu: usize) -> bool {
    match ExitKind::from_raw(kind) {
        ExitKind::Sync => false,
        ExitKind::Irq | ExitKind::Fiq => drain_physical_irqs(machine(), Some((vm, vcpu))),
        ExitKind::SError => {
            println!(
                "VM {}: vCPU {vcpu} raised an SError (ESR {:#x}); ignored",
                vm.name,
                sysreg::read_esr_el2()
            );
            false
        }
        ExitKind::Aarch32 => {
            crash_vm(
                vm,
                format_args!("vCPU {vcpu} entered AArch32, which Bothy does not run"),
            );
            false
        }
    }
}

/// The rarer synchronous exits (WFI/WFE, SMC, aborts outside RAM and devices, anything
/// undefined).
#[inline(never)]
fn other_sync_exit(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, esr: u64) -> Restarted {
    match decode(esr, sysreg::read_far_el2(), sysreg::read_hpfar_el2()) {
        Exit::Hvc { .. } => return smccc_call(vm, vcpu, frame),
        Exit::Smc { .. } => {
            frame.elr += INSTRUCTION_SIZE;
            return smccc_call(vm, vcpu, frame);
        }
        Exit::Wait { wfe } => {
            frame.elr += INSTRUCTION_SIZE;
            // WFE is a hint the guest may get back early; with one vCPU per CPU
            // there is nobody to yield to. WFI sleeps until something is pending.
            if !wfe {
                wait_for_interrupt(machine(), vm, vcpu);
            }
        }
        Exit::Mmio(access) => mmio(vm, vcpu, frame, access),
        Exit::SysReg(access) => sysreg_access(vm, vcpu, frame, access),
        Exit::BadDataAbort { .. } => inject_bad_data_abort(frame, esr),
        Exit::BadInstructionAbort { far, .. } => inject_sync(
            frame,
            inject::instruction_abort_esr(inject::from_el0(frame.spsr)),
            far,
        ),
        Exit::Other { .. } => inject_sync(frame, inject::undefined_esr(), 0),
    }
    Restarted::No
}

/// PSCI and SMCCC from the guest (HVC, or trapped SMC).
#[inline(always)]
fn smccc_call(vm: &Vm, vcpu: usize, frame: &mut GuestFrame) -> Restarted {
    let vcpus = vm.vcpus();
    let mpidr_to_vcpu = |mpidr: u64| {
        let index = (mpidr & 0xff_00ff_ffff) as usize;
        (index < vcpus).then_some(index)
    };
    let ctx = CallContext {
        vcpu,
        power: &vm.power,
        ram: vm.ram,
        mpidr_to_vcpu: &mpidr_to_vcpu,
    };
    let (args, _) = frame.x.split_first_chunk::<8>().expect("31 registers");
    // Almost every call just returns values: test for that alone first (a `match`
    // compiles to a compare chain that reaches `Return` last).
    let outcome = abi::dispatch(&ctx, args);
    if let Outcome::Return([x0, x1, x2, x3]) = outcome {
        frame.x[0] = x0;
        frame.x[1] = x1;
        frame.x[2] = x2;
        frame.x[3] = x3;
        return Restarted::No;
    }
    smccc_outcome(vm, vcpu, frame, outcome)
}

/// What a PSCI/SMCCC call does beyond returning values.
#[cold]
#[inline(never)]
fn smccc_outcome(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, outcome: Outcome) -> Restarted {
    match outcome {
        Outcome::Return(_) => {}
        Outcome::StartVcpu { target, ret } => {
            frame.x[..4].copy_from_slice(&ret);
            machine::kick(vm.vcpu_pcpu[target]);
        }
        Outcome::StopVcpu => {
            vm.power.power_off(vcpu);
            wait_for_start(machine(), vm, vcpu, frame);
            return Restarted::Yes;
        }
        Outcome::Suspend => {
            frame.x[..4].copy_from_slice(&RETURN_SUCCESS);
            wait_for_interrupt(machine(), vm, vcpu);
        }
        Outcome::SystemOff => {
            if vm.leave_running(RunState::Off) {
                println!("VM {} powered off", vm.name);
                kick_all_but_me(vm);
                machine::vm_stopped(vm);
            }
        }
        Outcome::SystemReset => {
            if vm.leave_running(RunState::Resetting) {
                println!("VM {} is resetting", vm.name);
                kick_all_but_me(vm);
            }
        }
    }
    Restarted::No
}

fn kick_all_but_me(vm: &Vm) {
    for &pcpu in &vm.vcpu_pcpu {
        machine::kick(pcpu);
    }
}

/// The VM is no longer running: this vCPU stops, and restarts only after a reset.
#[cold]
#[inline(never)]
fn stop_vcpu(m: &Machine, vm: &Vm, vcpu: usize, frame: &mut GuestFrame) {
    if vm.state() == RunState::Resetting {
        vm.power.power_off(vcpu);
    }
    wait_for_start(m, vm, vcpu, frame);
}

/// SYSTEM_RESET, on vCPU 0's CPU once every other vCPU has noticed: reload the
/// images, reset the vGIC and power states, and run again.
#[cold]
#[inline(never)]
fn finish_reset(vm: &Vm) {
    // The other vCPUs must be out of the guest before its images are rewritten under
    // them; they leave on their kick. Bounded, but generous for a slow emulator.
    let deadline = sysreg::read_cntpct_el0() + sysreg::read_cntfrq_el0();
    let others_off =
        || (1..vm.vcpus()).all(|v| vm.power.state(v) == bothy_core::abi::PowerState::Off);
    while !others_off() && sysreg::read_cntpct_el0() < deadline {
        core::hint::spin_loop();
    }
    if !others_off() {
        println!(
            "warning: VM {}: a vCPU did not stop within 1 s of SYSTEM_RESET",
            vm.name
        );
    }
    vm.load_images();
    vm.power.reset();
    // A rebooted guest finds the distributor and every redistributor as at power-on.
    vm.vgic.reset();
    vm.set_state(RunState::Running);
    println!("VM {} restarted", vm.name);
}

#[cold]
#[inline(never)]
fn crash_vm(vm: &Vm, why: core::fmt::Arguments) {
    if vm.leave_running(RunState::Crashed) {
        println!("error: VM {} stopped: {why}", vm.name);
        kick_all_but_me(vm);
        machine::vm_stopped(vm);
    }
}

/// WFI: return at once if an interrupt is pending for the vCPU, otherwise
/// sleep the physical CPU until one is (or the VM stops).
///
/// The list registers are folded back first, every time: the guest may have
/// completed interrupts without an exit (hardware-linked or edge ones), and
/// until the model knows, it would not offer their next occurrence.
#[cold]
#[inline(never)]
fn wait_for_interrupt(m: &Machine, vm: &Vm, vcpu: usize) {
    let mut flushed = false;
    loop {
        if !flushed {
            service_list_registers(vm, vcpu);
        }
        if vm.vgic.has_pending(vcpu) || vm.state() != RunState::Running {
            return;
        }
        sysreg::wfi();
        // The timer's injection flushes by itself; other work leaves WORK set, and
        // the exit path flushes for it.
        flushed = drain_physical_irqs(m, Some((vm, vcpu)));
    }
}

/// Acknowledge and handle every pending physical interrupt on this CPU. Returns whether
/// the running vCPU's list registers were flushed meanwhile.
fn drain_physical_irqs(m: &Machine, running: Option<(&Vm, usize)>) -> bool {
    // Level-sensitive sources re-assert at once if their cause is not removed;
    // a bound keeps a misbehaving one from livelocking EL2.
    const MAX_PER_DRAIN: usize = 64;
    take_physical_irqs(m, running, MAX_PER_DRAIN)
}

/// Acknowledge and handle up to `max` pending physical interrupts on this CPU.
/// Returns whether the running vCPU's list registers were flushed meanwhile.
#[inline(never)]
fn take_physical_irqs(m: &Machine, running: Option<(&Vm, usize)>, max: usize) -> bool {
    let mut flushed = false;
    for _ in 0..max {
        let intid = gic::acknowledge();
        if intid == gic::SPURIOUS {
            break;
        }
        gic::priority_drop(intid);
        if intid == m.vtimer_intid {
            if let Some((vm, vcpu)) = running {
                // Hardware-linked: the guest's EOI deactivates the physical interrupt.
                let mut lrs = machine::this_cpu().lrs;
                let done = vm.vgic.inject_hw_local(vcpu, intid, intid, &mut lrs);
                kick_vcpus(vm, done.kicks);
                flushed |= done.flushed;
                continue;
            }
            sysreg::write_cntv_ctl_el0(0);
        } else if intid == m.maintenance_intid {
            // The condition (EOI of a level interrupt, LR underflow) stays asserted
            // until the list registers are folded back: do it now, not after the loop.
            match running {
                Some((vm, vcpu)) => {
                    service_list_registers(vm, vcpu);
                    flushed = true;
                }
                None => sysreg::write_ich_hcr_el2(0),
            }
        } else if Some(intid) == m.uart_intid {
            console_input(m);
        }
        // KICK_SGI needs nothing more: the caller re-examines its vCPU afterwards.
        gic::deactivate(intid);
    }
    flushed
}

/// Fold list-register state back into the vGIC and refill them.
#[inline(never)]
fn service_list_registers(vm: &Vm, vcpu: usize) {
    // flush folds the list registers back (sync) before it fills them.
    let mut lrs = machine::this_cpu().lrs;
    vm.vgic.flush(vcpu, &mut lrs);
}

/// Bytes from the physical UART go to the VM that has the console focus.
#[cold]
#[inline(never)]
fn console_input(m: &Machine) {
    /// Ctrl-]: the byte that moves console input to the next VM (like telnet's escape).
    const SWITCH_FOCUS: u8 = 0x1d;
    let Some(uart) = crate::console::uart() else {
        return;
    };
    while let Some(byte) = uart.getc() {
        if byte == SWITCH_FOCUS && m.vms.len() > 1 {
            machine::switch_focus(m);
            continue;
        }
        let vm = &m.vms[m.focus.load(core::sync::atomic::Ordering::Relaxed) % m.vms.len()];
        let mut console = vm.uart.lock();
        console.input(byte);
        // Under the UART lock, so concurrent accesses apply their levels in order.
        let kicks = vm
            .vgic
            .set_spi_level(layout::UART_SPI + 32, console.irq_level());
        drop(console);
        kick_vcpus(vm, kicks);
    }
}

#[inline(always)]
fn kick_vcpus(vm: &Vm, mask: VcpuMask) {
    if !mask.is_empty() {
        kick_each(vm, mask);
    }
}

#[inline(never)]
fn kick_each(vm: &Vm, mask: VcpuMask) {
    for vcpu in mask.iter() {
        if let Some(&pcpu) = vm.vcpu_pcpu.get(vcpu) {
            machine::kick(pcpu);
        }
    }
}

/// Emulate a trapped access to the vGIC or the PL011; anything else aborts.
fn mmio(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, access: MmioAccess) {
    let ipa = access.ipa;
    let value = if access.reg == 31 {
        0
    } else {
        frame.x[access.reg as usize]
    };
    let redist = layout::gic_redist(vm.vcpus());
    let mut kicks = VcpuMask::default();
    let result: Option<u64> = if layout::GIC_DIST.contains(ipa) {
        let offset = ipa - layout::GIC_DIST.base;
        if access.write {
            kicks = vm
                .vgic
                .dist_write(vcpu, offset, access.size, access.store_value(value));
            None
        } else {
            Some(vm.vgic.dist_read(vcpu, offset, access.size))
        }
    } else if redist.contains(ipa) {
        let offset = ipa - redist.base;
        if access.write {
            kicks = vm
                .vgic
                .redist_write(vcpu, offset, access.size, access.store_value(value));
            None
        } else {
            Some(vm.vgic.redist_read(vcpu, offset, access.size))
        }
    } else if layout::UART.contains(ipa) {
        uart_access(machine(), vm, access, value)
    } else {
        let write = access.write;
        let far = sysreg::read_far_el2();
        inject_sync(
            frame,
            inject::data_abort_esr(inject::from_el0(frame.spsr), write),
            far,
        );
        return;
    };
    if let Some(raw) = result {
        if access.reg != 31 {
            frame.x[access.reg as usize] = access.load_result(raw);
        }
    }
    kick_vcpus(vm, kicks);
    frame.elr += INSTRUCTION_SIZE;
}

fn uart_access(m: &Machine, vm: &Vm, access: MmioAccess, value: u64) -> Option<u64> {
    let offset = access.ipa - layout::UART.base;
    let mut model = vm.uart.lock();
    let result = if access.write {
        if let Some(byte) = model
            .write(offset, access.size, access.store_value(value) as u32)
            .tx
        {
            let tag = m.tag_output().then_some(vm.name.as_str());
            crate::console::guest_byte(vm.index, tag, byte);
        }
        None
    } else {
        Some(u64::from(model.read(offset, access.size)))
    };
    // Under the UART lock: two vCPUs racing here must not apply stale levels
    // out of order (that loses the interrupt).
    let kicks = vm
        .vgic
        .set_spi_level(layout::UART_SPI + 32, model.irq_level());
    drop(model);
    kick_vcpus(vm, kicks);
    result
}

/// Trapped system registers other than the `ICC_SGI1R_EL1` write `sync_exit` routes
/// itself: the physical timer reads as zero and ignores writes, anything else is
/// undefined for the guest.
#[inline(never)]
fn sysreg_access(vm: &Vm, vcpu: usize, frame: &mut GuestFrame, access: SysRegAccess) {
    if access.is(trapped::ICC_SGI1R_EL1) && !access.read {
        // Only if routing changes: an unreported flush costs the exit path a second one.
        let lrs = machine::this_cpu().lrs;
        let _ = sgi1r_write(vm, vcpu, frame, usize::from(access.reg), lrs);
        return;
    } else if access.is(trapped::ICC_ASGI1R_EL1) || access.is(trapped::ICC_SGI0R_EL1) {
        // Group-0 / alternate-group SGIs: the guest has only group 1; ignore.
    } else if access.is(trapped::CNTP_CTL_EL0)
        || access.is(trapped::CNTP_CVAL_EL0)
        || access.is(trapped::CNTP_TVAL_EL0)
    {
        if access.read && access.reg != 31 {
            frame.x[access.reg as usize] = 0;
        }
    } else {
        inject_sync(frame, inject::undefined_esr(), 0);
        return;
    }
    frame.elr += INSTRUCTION_SIZE;
}

/// Deliver a synchronous exception to the guest's EL1 vector, as the hardware would.
#[cold]
#[inline(never)]
fn inject_sync(frame: &mut GuestFrame, esr: u64, far: u64) {
    sysreg::write_esr_el1(esr);
    sysreg::write_far_el1(far);
    sysreg::write_elr_el1(frame.elr);
    sysreg::write_spsr_el1(frame.spsr);
    let pan = if sysreg::read_sctlr_el1() & SCTLR_EL1_SPAN == 0 {
        PSTATE_PAN
    } else {
        frame.spsr & PSTATE_PAN
    };
    frame.elr = sysreg::read_vbar_el1() + inject::vector_offset(frame.spsr);
    frame.spsr = inject::SPSR_EL1H_MASKED | pan;
}
