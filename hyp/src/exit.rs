//! Running vCPUs: every exit, and the scheduling points where a CPU changes vCPU.
//!
//! The vector code calls [`handle_sync_exit`], [`handle_irq_exit`] or
//! [`handle_other_exit`] with the guest's registers in a [`GuestFrame`] (x19–x29
//! only when an exit needs them: see `vectors.rs`); whatever it leaves in the frame
//! is what the guest resumes with. The ordinary path (a hypercall, an MMIO access, an
//! interrupt) touches no EL1 register and takes no lock beyond the device model it
//! talks to; the vGIC is only visited when `needs_flush` says it has work.
//!
//! Nothing waits inside a handler. A handler that may give up the CPU (WFI with
//! nothing pending, a trapped WFE, PSCI CPU_OFF, its VM stopping, the slice timer)
//! records a [`Reason`] in the CPU's context and answers [`Resume::Schedule`]; the
//! vector code then stores x19–x29 and calls [`handle_exit_all`], which asks the
//! scheduler (`bothy_core::sched`, one lock) what to run and carries it out in
//! [`schedule`]: copy the leaving vCPU's frame out, save its EL1/FP/vGIC/timer state
//! only if the decision says another vCPU's is to be loaded, copy the next frame in.
//! A CPU with nothing to run idles in [`arrive`] (WFI, interrupts, ask again).
//!
//! A VM stops (SYSTEM_OFF, SYSTEM_RESET, a fault, its last vCPU off) in two steps:
//! its state leaves `Running` and its vCPUs are stopped (running ones are kicked and
//! stop at their next exit); the CPU on which the last of them stops finds the VM
//! quiescent and finishes: reloads and restarts it, or applies its `on_exit`. So its
//! memory is never rewritten under a running vCPU.

use crate::arch::aarch64::context::live_timer_deadline;
use crate::arch::aarch64::lr::HwListRegs;
use crate::arch::aarch64::vectors::{
    enter_guest, ExitKind, GuestFrame, Resume, FIRST_UNSAVED, LAST_UNSAVED,
};
use crate::arch::aarch64::{gic, sysreg};
use crate::machine::{self, machine, CpuContext, Machine};
use crate::println;
use crate::vm::{ExitKindCount, Vm};
use bothy_core::abi::{self, CallContext, Outcome, RETURN_SUCCESS};
use bothy_core::exit::{
    data_abort_srt, decode, decode_lower_data_abort, decode_sysreg_trap, ec, inject,
    sysreg as trapped, sysreg_rt, sysreg_syndrome, sysreg_write_syndrome, Exit, MmioAccess,
    SysRegAccess,
};
use bothy_core::layout;
use bothy_core::lifecycle::{self, AfterStop, VmState};
use bothy_core::sched::{Decision, Scheduler, Ticks};
use bothy_core::vgic::VcpuMask;
use core::sync::atomic::Ordering;
use spin::MutexGuard;

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
/// CNTHP_CTL_EL2.ENABLE (IMASK clear).
const TICK_ENABLE: u64 = 1;

/// Why an exit asked for the scheduler; kept in the CPU's context between the
/// handler and [`schedule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// The slice timer fired (or nothing in particular: just look).
    Tick,
    /// WFI with nothing pending: block until an interrupt, or the deadline.
    Block(Option<Ticks>),
    /// WFE: let someone else run if anyone waits.
    Yield,
    /// The vCPU's VM stopped: this vCPU stops.
    Off,
    /// PSCI CPU_OFF: the vCPU stops, and says so to PSCI once the scheduler agrees.
    PowerOff,
}

impl Reason {
    fn set(self, ctx: &CpuContext) {
        let (kind, wake_at) = match self {
            Reason::Tick => (0, 0),
            Reason::Block(None) => (1, 0),
            Reason::Block(Some(t)) => (2, t),
            Reason::Yield => (3, 0),
            Reason::Off => (4, 0),
            Reason::PowerOff => (5, 0),
        };
        ctx.wake_at.store(wake_at, Ordering::Relaxed);
        ctx.reason.store(kind, Ordering::Relaxed);
    }

    /// The recorded reason, reset to `Tick` (what a bare look amounts to).
    fn take(ctx: &CpuContext) -> Reason {
        let wake_at = ctx.wake_at.load(Ordering::Relaxed);
        match ctx.reason.swap(0, Ordering::Relaxed) {
            1 => Reason::Block(None),
            2 => Reason::Block(Some(wake_at)),
            3 => Reason::Yield,
            4 => Reason::Off,
            5 => Reason::PowerOff,
            _ => Reason::Tick,
        }
    }
}

/// Run whatever the scheduler gives this CPU, for ever.
pub fn run_cpu(cpu: usize) -> ! {
    let m = machine();
    let ctx = machine::this_cpu();
    sysreg::write_vpidr_el2(sysreg::read_midr_el1());
    sysreg::tlbi_all_local();
    let mut frame = GuestFrame::default();
    let (d, deadline) = {
        let mut s = m.sched.lock();
        let d = s.tick(cpu, sysreg::read_cntpct_el0());
        (d, s.deadline(cpu))
    };
    let _ = leave(m, ctx, &frame, None, &d, None);
    arrive(m, ctx, &mut frame, None, d, deadline, false);
    enter_guest(m.cpus[cpu].index, &frame)
}

/// Ask the scheduler what this CPU runs next, given why the current exit asked, and
/// carry it out. On return `frame` holds the registers of the vCPU to run.
#[cold]
#[inline(never)]
fn schedule(frame: &mut GuestFrame) {
    let m = machine();
    let ctx = machine::this_cpu();
    let cpu = ctx.slot;
    let reason = Reason::take(ctx);
    let current = ctx.loaded.get();
    let now = sysreg::read_cntpct_el0();
    let mut s = m.sched.lock();
    let mut finished_vm = None;
    let d = match reason {
        Reason::Tick => {
            let d = s.tick(cpu, now);
            kick_mask(s.take_kicks());
            d
        }
        Reason::Yield => s.yield_cpu(cpu, now),
        Reason::Block(wake_at) => s.block(cpu, now, wake_at),
        Reason::Off | Reason::PowerOff => {
            let (d, quiescent) = s.off_current(cpu, now);
            if let Some((vm, vcpu)) = current {
                // A stopped vCPU's timer must not fire while it stays loaded here.
                sysreg::write_cntv_ctl_el0(0);
                if reason == Reason::PowerOff {
                    // Only now: a CPU_ON that sees it Off finds the scheduler agreeing.
                    vm.power.power_off(vcpu);
                }
                finished_vm = Some((vm, quiescent, s.vm_alive(vm.index)));
            }
            d
        }
    };
    let deadline = s.deadline(cpu);
    let owner = match leave(m, ctx, frame, current, &d, Some(s)) {
        Left::Stays => {
            // The same vCPU goes on with the registers it has.
            arm_tick(deadline);
            if let Some((vm, v)) = current {
                if vm.vgic.needs_flush(v) {
                    service_list_registers(vm, v);
                }
            }
            return;
        }
        Left::FrameKept => current,
        Left::FrameSaved => None,
    };
    // Stopping a VM may restart it here, and nobody kicks a CPU on its own behalf:
    // then the CPU must look again before it sleeps.
    let look_first = finished_vm.is_some();
    if let Some((vm, quiescent, alive)) = finished_vm {
        vcpus_stopped(vm, quiescent, alive);
    }
    arrive(m, ctx, frame, owner, d, deadline, look_first);
}

/// What [`leave`] did with the vCPU whose registers are in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// It keeps running: nothing moved.
    Stays,
    /// The CPU idles and the vCPU stays loaded here, its frame in the frame slot: only
    /// this CPU can run it next (a wake-up of a vCPU loaded on an idle CPU goes there).
    FrameKept,
    /// Its frame went to its `saved` (or there was none in the slot).
    FrameSaved,
}

/// The first half of carrying out `d`: `owner`, the vCPU whose registers are in
/// `frame`, gets its frame copied out if another vCPU is to run here, and the vCPU
/// whose registers this CPU holds gets them saved if `d` loads another. The `saved`
/// locks are taken while the scheduler's lock (`s`) is still held, so whoever loads
/// those vCPUs next waits for this.
fn leave(
    m: &Machine,
    ctx: &CpuContext,
    frame: &GuestFrame,
    owner: Option<(&'static Vm, usize)>,
    d: &Decision,
    s: Option<MutexGuard<Scheduler>>,
) -> Left {
    let owner_id = owner.map(|(vm, v)| vm.vcpus[v].id);
    if d.run.is_some() && d.run == owner_id {
        return Left::Stays;
    }
    if d.run.is_none() && d.save.is_none() {
        return match owner {
            Some(_) => Left::FrameKept,
            None => Left::FrameSaved,
        };
    }
    let out_regs = d.save.and_then(|id| m.vcpu(id));
    let mut frame_guard = owner.map(|(vm, v)| vm.vcpus[v].saved.lock());
    let same = owner_id.is_some() && owner_id == d.save;
    let mut regs_guard = if same {
        None
    } else {
        out_regs.map(|(vm, v)| vm.vcpus[v].saved.lock())
    };
    drop(s);
    if let Some(saved) = frame_guard.as_mut() {
        saved.frame = *frame;
    }
    if d.save.is_some() {
        let mut cpuif = ctx.cpuif(m.vtimer_intid);
        let saved = if same {
            frame_guard.as_mut()
        } else {
            regs_guard.as_mut()
        };
        if let Some(saved) = saved {
            saved.arch.save(ctx.features, &mut cpuif);
        }
        ctx.loaded.clear();
    }
    Left::FrameSaved
}

/// The second half of carrying out `d`: load and run `d.run`, or idle until the
/// scheduler has something for this CPU. `owner` is the vCPU whose frame is still in
/// `frame` (one this CPU idles with). Leaves the registers to resume in `frame`.
fn arrive(
    m: &'static Machine,
    ctx: &CpuContext,
    frame: &mut GuestFrame,
    mut owner: Option<(&'static Vm, usize)>,
    mut d: Decision,
    mut deadline: Option<Ticks>,
    mut look_first: bool,
) {
    let cpu = ctx.slot;
    loop {
        if let Some(id) = d.run {
            let Some((vm, v)) = m.vcpu(id) else {
                crate::fatal(format_args!(
                    "the scheduler chose vCPU {} which does not exist",
                    id.0
                ))
            };
            let in_slot = owner.is_some_and(|(o, ov)| o.index == vm.index && ov == v);
            if d.restore == Some(id) || !in_slot {
                let saved = vm.vcpus[v].saved.lock();
                if d.restore == Some(id) {
                    sysreg::write_vttbr_el2(vm.vttbr);
                    sysreg::write_vtcr_el2(vm.vtcr);
                    sysreg::write_cntvoff_el2(vm.cntvoff);
                    sysreg::write_vmpidr_el2(VMPIDR_RES1 | v as u64);
                    sysreg::isb();
                    let mut cpuif = ctx.cpuif(m.vtimer_intid);
                    saved.arch.restore(ctx.features, &mut cpuif);
                    if d.flush_tlb {
                        sysreg::flush_local_guest_context();
                    }
                    ctx.loaded.set(vm, v);
                }
                *frame = saved.frame;
            }
            if ctx.loaded.get().map(|(l, lv)| (l.index, lv)) != Some((vm.index, v)) {
                crate::fatal(format_args!(
                    "CPU {cpu} runs VM {} vCPU {v} without its registers",
                    vm.name
                ));
            }
            start_if_pending(vm, v, frame);
            arm_tick(deadline);
            if vm.vgic.needs_flush(v) {
                service_list_registers(vm, v);
            }
            return;
        }
        if look_first {
            look_first = false;
        } else {
            arm_tick(deadline);
            sysreg::wfi();
            let loaded = ctx.loaded.get();
            let _ = drain_physical_irqs(m, loaded);
            // The vCPU this CPU idles with may have been given an interrupt meanwhile
            // (its timer fires here, into its own list registers).
            if let Some((vm, v)) = loaded {
                if vm.vgic.needs_flush(v) {
                    service_list_registers(vm, v);
                }
                if vm.vgic.has_pending(v) {
                    wake(vm, v);
                }
            }
        }
        let mut s = m.sched.lock();
        d = s.tick(cpu, sysreg::read_cntpct_el0());
        kick_mask(s.take_kicks());
        deadline = s.deadline(cpu);
        if d.run.is_some() && leave(m, ctx, frame, owner, &d, Some(s)) == Left::FrameSaved {
            owner = None;
        }
    }
}

/// Kick each CPU in a bit mask (but not this one).
fn kick_mask(mut mask: u64) {
    while mask != 0 {
        let cpu = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        machine::kick(cpu);
    }
}

/// Program this CPU's EL2 timer for the scheduler's next deadline (or stop it).
fn arm_tick(deadline: Option<Ticks>) {
    match deadline {
        Some(t) => {
            sysreg::write_cnthp_cval_el2(t);
            sysreg::write_cnthp_ctl_el2(TICK_ENABLE);
        }
        None => sysreg::write_cnthp_ctl_el2(0),
    }
}

/// A vCPU about to run that was (re)started: vCPU 0 at boot or after a reset goes to
/// the kernel entry, one started by PSCI CPU_ON to the entry point it was given.
fn start_if_pending(vm: &Vm, v: usize, frame: &mut GuestFrame) {
    if vm.vcpus[v].boot.swap(false, Ordering::AcqRel) {
        reset_vcpu_state(vm, v);
        *frame = GuestFrame::default();
        frame.x[0] = vm.boot.dtb;
        frame.elr = vm.boot.kernel;
        frame.spsr = inject::SPSR_EL1H_MASKED;
    } else if !vm.vcpus[v].psci_start.swap(false, Ordering::AcqRel) {
        // The common case: no lock taken.
    } else if let Some((entry, context)) = vm.power.take_pending_start(v) {
        reset_vcpu_state(vm, v);
        *frame = GuestFrame::default();
        frame.x[0] = context;
        frame.elr = entry;
        frame.spsr = inject::SPSR_EL1H_MASKED;
        vm.power.mark_on(v);
    }
}

/// Architectural reset of the EL1 and virtual-interface state this CPU holds for `vcpu`.
fn reset_vcpu_state(vm: &Vm, vcpu: usize) {
    let ctx = machine::this_cpu();
    sysreg::write_sctlr_el1(SCTLR_EL1_RESET);
    sysreg::write_cpacr_el1(0);
    sysreg::write_vbar_el1(0);
    sysreg::write_cntv_ctl_el0(0);
    sysreg::write_cntkctl_el1(0);
    let mut lrs = ctx.lrs;
    for i in 0..bothy_core::vgic::ListRegs::count(&lrs) {
        bothy_core::vgic::ListRegs::write(&mut lrs, i, 0);
    }
    sysreg::write_ich_vmcr_el2(0);
    sysreg::write_ich_ap0r0_el2(0);
    sysreg::write_ich_ap1r0_el2(0);
    sysreg::write_ich_hcr_el2(ICH_HCR_EN);
    // A timer interrupt the previous incarnation never EOIed stays active in the
    // physical GIC and would block the next one.
    gic::set_private_active(ctx.redist, machine().vtimer_intid, false);
    vm.vgic.reset_vcpu(vcpu);
    sysreg::isb();
}

/// Some of `vm`'s vCPUs stopped. `alive`: any of them could still run; `quiescent`:
/// none is running. The last one out of a stopping VM finishes the stop, as
/// `bothy_core::lifecycle` decides.
#[cold]
#[inline(never)]
fn vcpus_stopped(vm: &'static Vm, quiescent: bool, alive: bool) {
    if lifecycle::all_vcpus_off(vm.state(), alive) && vm.leave_running(VmState::Off) {
        println!("VM {} powered off (its last vCPU called CPU_OFF)", vm.name);
    }
    match lifecycle::after_stop(vm.state(), vm.on_exit, quiescent) {
        AfterStop::Nothing => {}
        AfterStop::Reload => finish_reset(vm),
        AfterStop::Stop => machine::vm_stopped(vm),
        AfterStop::Restart => {
            println!("VM {} restarts (on_exit = \"restart\")", vm.name);
            vm.set_state(VmState::Resetting);
            finish_reset(vm);
        }
        AfterStop::PowerOffMachine => {
            // `bothy run` takes this line as a clean end, like "all VMs powered off".
            println!(
                "powering the machine off (VM {} stopped and has on_exit = \"poweroff\")",
                vm.name
            );
            crate::halt_machine();
        }
    }
}

/// Stop every vCPU of `vm` after its state left `Running`; finishes at once if none
/// was running.
pub fn stop_vm(vm: &'static Vm) {
    let m = machine();
    let stop = m.sched.lock().stop_vm(vm.index);
    for cpu in stop.kicks {
        machine::kick(cpu);
    }
    if stop.quiescent {
        vcpus_stopped(vm, true, false);
    }
}

/// SYSTEM_RESET (or restart), once no vCPU of the VM runs: reload the images, reset
/// the vGIC and power states, and start vCPU 0 at the kernel entry.
#[cold]
#[inline(never)]
pub fn finish_reset(vm: &'static Vm) {
    vm.load_images();
    vm.power.reset();
    // A rebooted guest finds the distributor and every redistributor as at power-on.
    vm.vgic.reset();
    vm.vcpus[0].boot.store(true, Ordering::Release);
    // Running and vCPU 0 started in one step under the scheduler's lock: a stop that
    // comes between them (from the prompt) finds the VM Running and vCPU 0 runnable,
    // and stops both, instead of stopping an idle VM whose vCPU then starts anyway.
    let kick = {
        let mut s = machine().sched.lock();
        if vm.state() != VmState::Resetting {
            return;
        }
        vm.set_state(VmState::Running);
        s.start(vm.vcpus[0].id)
    };
    println!("VM {} restarted", vm.name);
    if let Some(cpu) = kick {
        machine::kick(cpu);
    }
}

/// `vcpu` of `vm` has new work: wake it, or kick the CPU running it.
fn wake(vm: &Vm, vcpu: usize) {
    if let Some(v) = vm.vcpus.get(vcpu) {
        let kick = machine().sched.lock().wake(v.id);
        if let Some(cpu) = kick {
            machine::kick(cpu);
        }
    }
}

// The vector code calls one of the three `handle_*_exit` below for every exit from the
// guest, with x19–x29 left out of the frame (see `vectors.rs`); an exit that transfers
// one of them is sent back to be handled by `handle_exit_all` instead.

/// A synchronous exit (hypercall, trapped instruction, stage-2 abort).
pub extern "C" fn handle_sync_exit(frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let (vm, vcpu) = loaded(ctx);
    let esr = sysreg::read_esr_el2();
    let flushed = match sync_exit::<false>(ctx, vm, vcpu, frame, esr) {
        SyncExit::Handled { flushed } => flushed,
        SyncExit::Schedule => return Resume::Schedule,
        SyncExit::NeedsAllRegisters => return Resume::SaveAllAndRetry,
    };
    finish_exit(vm, vcpu, flushed)
}

/// A physical IRQ while the guest ran.
pub extern "C" fn handle_irq_exit(_frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let (vm, vcpu) = loaded(ctx);
    count_exit(ctx, ExitKindCount::Irq);
    // One interrupt per exit: another one pending brings the CPU straight back.
    let taken = take_physical_irqs(machine(), Some((vm, vcpu)), 1);
    let resume = finish_exit(vm, vcpu, taken & FLUSHED != 0);
    if taken & TICK != 0 && resume != Resume::Schedule {
        Reason::Tick.set(ctx);
        return Resume::Schedule;
    }
    resume
}

/// FIQ, SError, or anything from AArch32.
pub extern "C" fn handle_other_exit(kind: u64, _frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let (vm, vcpu) = loaded(ctx);
    count_exit(ctx, ExitKindCount::Other);
    let flushed = other_exit(kind, vm, vcpu);
    finish_exit(vm, vcpu, flushed)
}

/// Called by the vector code, with every register in `frame`, for an exit that a
/// handler answered with [`Resume::SaveAllAndRetry`] (`why`; ESR_EL2 still describes
/// it: EL2 took no exception in between) or [`Resume::Schedule`]. The whole frame is
/// restored after, and may then be another vCPU's.
#[cold]
pub extern "C" fn handle_exit_all(frame: &mut GuestFrame, why: u64) {
    if Resume::from_raw(why) == Resume::SaveAllAndRetry {
        let ctx = machine::this_cpu();
        let (vm, vcpu) = loaded(ctx);
        let resume = match sync_exit::<true>(ctx, vm, vcpu, frame, sysreg::read_esr_el2()) {
            SyncExit::Handled { flushed } => finish_exit(vm, vcpu, flushed),
            SyncExit::Schedule => Resume::Schedule,
            // Not with ALL_SAVED: every register is in the frame.
            SyncExit::NeedsAllRegisters => Resume::All,
        };
        if resume != Resume::Schedule {
            return;
        }
    }
    schedule(frame);
}

#[inline(always)]
fn count_exit(ctx: &CpuContext, kind: ExitKindCount) {
    if let Some(exits) = ctx.loaded.exits() {
        exits.count(kind);
    }
}

/// The vCPU this CPU runs (an exit comes from it).
#[inline(always)]
fn loaded(ctx: &CpuContext) -> (&'static Vm, usize) {
    match ctx.loaded.get() {
        Some(loaded) => loaded,
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

/// Whether a handler recorded a [`Reason`] for the scheduler to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    No,
    Yes,
}

/// How a synchronous exit went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncExit {
    /// `flushed`: this vCPU's list registers were flushed (a self-SGI).
    Handled { flushed: bool },
    /// The handler recorded a [`Reason`]: the scheduler decides what runs next.
    Schedule,
    /// Not handled: it transfers one of x19–x29, which are not in the frame (only
    /// when `ALL_SAVED` is false).
    NeedsAllRegisters,
}

/// A synchronous exit. The hottest (hypercalls, SGIs, MMIO) are routed first, with a
/// compare or two each.
#[inline(always)]
fn sync_exit<const ALL_SAVED: bool>(
    ctx: &CpuContext,
    vm: &'static Vm,
    vcpu: usize,
    frame: &mut GuestFrame,
    esr: u64,
) -> SyncExit {
    // Each exit is counted once: in the arm that handles it, after any early return
    // that sends it back to be handled with all registers saved.
    let flushed = match bothy_core::exit::exception_class(esr) {
        ec::HVC64 => {
            count_exit(ctx, ExitKindCount::Hypercall);
            if smccc_call(vm, vcpu, frame) == Sched::Yes {
                return SyncExit::Schedule;
            }
            false
        }
        ec::SYSREG => {
            let rt = sysreg_rt(esr);
            if !ALL_SAVED && unsaved(rt) {
                return SyncExit::NeedsAllRegisters;
            }
            count_exit(ctx, ExitKindCount::Sysreg);
            if sysreg_syndrome(esr) == SGI1R_WRITE {
                sgi1r_write(vm, vcpu, frame, rt, ctx.lrs)
            } else {
                sysreg_access(vm, vcpu, frame, decode_sysreg_trap(esr));
                false
            }
        }
        ec::DABT_LOWER => {
            if !ALL_SAVED && unsaved(data_abort_srt(esr)) {
                return SyncExit::NeedsAllRegisters;
            }
            count_exit(ctx, ExitKindCount::Mmio);
            data_abort(vm, vcpu, frame, esr);
            false
        }
        other => {
            let kind = match other {
                ec::WFX => ExitKindCount::Wfx,
                _ => ExitKindCount::Other,
            };
            count_exit(ctx, kind);
            if other_sync_exit(vm, vcpu, frame, esr) == Sched::Yes {
                return SyncExit::Schedule;
            }
            false
        }
    };
    SyncExit::Handled { flushed }
}

/// The end of an exit that kept the vCPU's frame: stop the vCPU if its VM no longer
/// runs, and flush its list registers if they have work.
#[inline(always)]
fn finish_exit(vm: &Vm, vcpu: usize, flushed: bool) -> Resume {
    if vm.state() != VmState::Running {
        return vm_not_running();
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

/// The vCPU's VM stopped or is resetting: this vCPU stops.
#[cold]
#[inline(never)]
fn vm_not_running() -> Resume {
    Reason::Off.set(machine::this_cpu());
    Resume::Schedule
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
fn other_exit(kind: u64, vm: &'static Vm, vcpu: usize) -> bool {
    match ExitKind::from_raw(kind) {
        ExitKind::Sync => false,
        ExitKind::Irq | ExitKind::Fiq => {
            drain_physical_irqs(machine(), Some((vm, vcpu))) & FLUSHED != 0
        }
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
fn other_sync_exit(vm: &'static Vm, vcpu: usize, frame: &mut GuestFrame, esr: u64) -> Sched {
    match decode(esr, sysreg::read_far_el2(), sysreg::read_hpfar_el2()) {
        Exit::Hvc { .. } => return smccc_call(vm, vcpu, frame),
        Exit::Smc { .. } => {
            frame.elr += INSTRUCTION_SIZE;
            return smccc_call(vm, vcpu, frame);
        }
        Exit::Wait { wfe } => {
            frame.elr += INSTRUCTION_SIZE;
            // WFE traps only on shared CPUs (machine::setup_cpu): offer the CPU.
            if wfe {
                Reason::Yield.set(machine::this_cpu());
                return Sched::Yes;
            }
            return wait_for_interrupt(vm, vcpu);
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
    Sched::No
}

/// PSCI and SMCCC from the guest (HVC, or trapped SMC).
#[inline(always)]
fn smccc_call(vm: &'static Vm, vcpu: usize, frame: &mut GuestFrame) -> Sched {
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
        return Sched::No;
    }
    smccc_outcome(vm, vcpu, frame, outcome)
}

/// What a PSCI/SMCCC call does beyond returning values.
#[cold]
#[inline(never)]
fn smccc_outcome(vm: &'static Vm, vcpu: usize, frame: &mut GuestFrame, outcome: Outcome) -> Sched {
    let ctx = machine::this_cpu();
    match outcome {
        Outcome::Return(_) => {}
        Outcome::StartVcpu { target, ret } => {
            frame.x[..4].copy_from_slice(&ret);
            if let Some(t) = vm.vcpus.get(target) {
                t.psci_start.store(true, Ordering::Release);
                let kick = machine().sched.lock().start(t.id);
                if let Some(cpu) = kick {
                    machine::kick(cpu);
                }
            }
        }
        Outcome::StopVcpu => {
            Reason::PowerOff.set(ctx);
            return Sched::Yes;
        }
        Outcome::Suspend => {
            frame.x[..4].copy_from_slice(&RETURN_SUCCESS);
            return wait_for_interrupt(vm, vcpu);
        }
        Outcome::SystemOff => {
            if vm.leave_running(VmState::Off) {
                println!("VM {} powered off", vm.name);
                stop_vm(vm);
            }
            Reason::Off.set(ctx);
            return Sched::Yes;
        }
        Outcome::SystemReset => {
            if vm.leave_running(VmState::Resetting) {
                println!("VM {} is resetting", vm.name);
                stop_vm(vm);
            }
            Reason::Off.set(ctx);
            return Sched::Yes;
        }
    }
    Sched::No
}

/// Stop a VM because of something it did that Bothy cannot reflect back to it.
#[cold]
#[inline(never)]
fn crash_vm(vm: &'static Vm, why: core::fmt::Arguments) {
    if vm.leave_running(VmState::Crashed) {
        println!("error: VM {} stopped: {why}", vm.name);
        stop_vm(vm);
    }
}

/// WFI: return at once if an interrupt is pending for the vCPU, otherwise block it
/// (until an interrupt or its virtual timer's deadline) and let the scheduler decide.
///
/// The list registers are folded back first, every time: the guest may have
/// completed interrupts without an exit (hardware-linked or edge ones), and
/// until the model knows, it would not offer their next occurrence.
#[cold]
#[inline(never)]
fn wait_for_interrupt(vm: &Vm, vcpu: usize) -> Sched {
    service_list_registers(vm, vcpu);
    if vm.vgic.has_pending(vcpu) || vm.state() != VmState::Running {
        return Sched::No;
    }
    Reason::Block(live_timer_deadline(vm.cntvoff)).set(machine::this_cpu());
    Sched::Yes
}

/// What [`take_physical_irqs`] did: the loaded vCPU's list registers were flushed.
const FLUSHED: u8 = 1 << 0;
/// ... and the scheduler's timer fired.
const TICK: u8 = 1 << 1;

/// Acknowledge and handle every pending physical interrupt on this CPU. Returns
/// [`FLUSHED`] and [`TICK`] bits.
fn drain_physical_irqs(m: &'static Machine, running: Option<(&Vm, usize)>) -> u8 {
    // Level-sensitive sources re-assert at once if their cause is not removed;
    // a bound keeps a misbehaving one from livelocking EL2.
    const MAX_PER_DRAIN: usize = 64;
    take_physical_irqs(m, running, MAX_PER_DRAIN)
}

/// Acknowledge and handle up to `max` pending physical interrupts on this CPU, with
/// `running` the vCPU whose registers it holds. Returns [`FLUSHED`] and [`TICK`] bits.
#[inline(never)]
fn take_physical_irqs(m: &'static Machine, running: Option<(&Vm, usize)>, max: usize) -> u8 {
    let mut done = 0;
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
                let local = vm.vgic.inject_hw_local(vcpu, intid, intid, &mut lrs);
                kick_vcpus(vm, local.kicks);
                if local.flushed {
                    done |= FLUSHED;
                }
                continue;
            }
            sysreg::write_cntv_ctl_el0(0);
        } else if intid == m.maintenance_intid {
            // The condition (EOI of a level interrupt, LR underflow) stays asserted
            // until the list registers are folded back: do it now, not after the loop.
            match running {
                Some((vm, vcpu)) => {
                    service_list_registers(vm, vcpu);
                    done |= FLUSHED;
                }
                None => sysreg::write_ich_hcr_el2(0),
            }
        } else if intid == m.tick_intid {
            // Level-sensitive: silence it; the scheduler programs the next one.
            sysreg::write_cnthp_ctl_el2(0);
            done |= TICK;
        } else if Some(intid) == m.uart_intid {
            console_input(m);
        }
        // KICK_SGI needs nothing more: the caller re-examines its vCPU afterwards.
        gic::deactivate(intid);
    }
    done
}

/// Fold list-register state back into the vGIC and refill them.
#[inline(never)]
fn service_list_registers(vm: &Vm, vcpu: usize) {
    // flush folds the list registers back (sync) before it fills them.
    let mut lrs = machine::this_cpu().lrs;
    vm.vgic.flush(vcpu, &mut lrs);
}

/// Bytes from the physical UART: to Bothy's prompt first, which passes the rest on to
/// the VM that has the console focus.
#[cold]
#[inline(never)]
fn console_input(m: &'static Machine) {
    let Some(uart) = crate::console::uart() else {
        return;
    };
    while let Some(byte) = uart.getc() {
        crate::prompt::input(m, byte);
    }
}

/// One byte of console input for `vm`'s PL011.
pub fn console_byte(vm: &Vm, byte: u8) {
    let mut console = vm.uart.lock();
    console.input(byte);
    // Under the UART lock, so concurrent accesses apply their levels in order.
    let kicks = vm
        .vgic
        .set_spi_level(layout::UART_SPI + 32, console.irq_level());
    drop(console);
    kick_vcpus(vm, kicks);
}

#[inline(always)]
fn kick_vcpus(vm: &Vm, mask: VcpuMask) {
    if !mask.is_empty() {
        kick_each(vm, mask);
    }
}

/// Wake each vCPU in `mask` (or kick the CPU running it).
#[inline(never)]
fn kick_each(vm: &Vm, mask: VcpuMask) {
    for vcpu in mask.iter() {
        wake(vm, vcpu);
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
