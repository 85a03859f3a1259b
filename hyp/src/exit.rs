//! Running vCPUs: every exit, and the scheduling points where a CPU changes vCPU.
//!
//! The vector code calls [`handle_sync_exit`], [`handle_irq_exit`] or
//! [`handle_other_exit`] with the guest's registers in a [`GuestFrame`] (x19–x29
//! only when an exit needs them: see `vectors.rs`); whatever it leaves in the frame
//! is what the guest resumes with. What a synchronous exit does is decided in
//! `bothy_core::exit::handle` (host-tested through a fake `Arch`), which emulates it
//! and returns an [`Action`]; this file supplies the real `Arch` ([`ExitHw`]: bare
//! system-register accesses) and carries the action out. The ordinary path (a
//! hypercall, an MMIO access, an interrupt) touches no EL1 register and takes no lock
//! beyond the device model it talks to; the vGIC is only visited when `needs_flush`
//! says it has work.
//!
//! Nothing waits inside a handler. An exit that may give up the CPU (WFI with nothing
//! pending, a trapped WFE, PSCI CPU_OFF, its VM stopping, the slice timer) records a
//! [`Reason`] in the CPU's context and answers [`Resume::Schedule`]; the
//! vector code then stores x19–x29 and calls [`handle_exit_all`], which asks the
//! scheduler (`bothy_core::sched`, one lock) what to run and carries it out in
//! [`schedule`]: copy the leaving vCPU's frame out, save its EL1/FP/vGIC/timer state
//! only if the decision says another vCPU's is to be loaded, copy the next frame in.
//! A CPU with nothing to run idles in [`arrive`] (WFI, interrupts, ask again), or
//! scrubs a piece of a restarting VM's RAM if one waits (`restart.rs`).
//!
//! A VM stops (SYSTEM_OFF, SYSTEM_RESET, a fault, its last vCPU off) in two steps:
//! its state leaves `Running` and its vCPUs are stopped (running ones are kicked and
//! stop at their next exit); the CPU on which the last of them stops finds the VM
//! quiescent and finishes: restarts it (its RAM scrubbed in pieces by whichever CPUs
//! have time, then reloaded by the one that scrubs the last piece), or applies its
//! `on_exit`. So its memory is never rewritten under a running vCPU.

use crate::arch::aarch64::context::{live_timer_deadline, Features, VcpuContext};
use crate::arch::aarch64::lr::HwListRegs;
use crate::arch::aarch64::percpu::ExitScope;
use crate::arch::aarch64::vectors::{
    copy_frame, enter_guest, ExitKind as VectorExit, GuestFrame, Resume,
};
use crate::arch::aarch64::{gic, mmu, sysreg};
use crate::machine::{self, machine, CpuContext, Machine, Sched};
use crate::println;
use crate::vm::{Saved, Vcpu, Vm};
use alloc::sync::Arc;
use bothy_core::arch::{Arch, El1Reg, GuestFault};
use bothy_core::dev::pmu::{self, Fired};
use bothy_core::exit::handle::{self, Action};
use bothy_core::exit::{aarch32, inject};
use bothy_core::lifecycle::{self, AfterStop, VmState};
use bothy_core::mem::Vmid;
use bothy_core::sched::{earliest, Decision, RunState, Ticks};
use bothy_core::vgic::VcpuMask;
use bothy_core::vm::{ExitCounters, ExitKind};
use core::sync::atomic::Ordering;
use spin::MutexGuard;

/// SCTLR_EL1 at vCPU reset: RES1 bits only, so MMU and caches are off (booting.rst).
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// MPIDR_EL1 bit 31 is RES1; Aff0 is the vCPU index.
const VMPIDR_RES1: u64 = 1 << 31;
const ICH_HCR_EN: u64 = 1;
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
        // Only this CPU writes it: a load and a store, not an atomic swap.
        let kind = ctx.reason.load(Ordering::Relaxed);
        ctx.reason.store(0, Ordering::Relaxed);
        match kind {
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
    let (d, target, deadline) = {
        let mut s = m.sched.lock();
        let d = s.tick(cpu, sysreg::read_cntpct_el0());
        let target = Target::resolve(&s, &d, cpu);
        (d, target, s.deadline(cpu))
    };
    let scope = ExitScope::enter();
    let _ = leave(ctx, &frame, None, &d, &target, &scope, None);
    arrive(m, ctx, &mut frame, None, (&d, &target), deadline, false, &scope);
    // `cpu` is this CPU's slot in `cpus`; were it not, there is no stack slot either and
    // `enter_guest` says so.
    enter_guest(m.cpus.get(cpu).map_or(usize::MAX, |c| c.index), &frame)
}

/// What a scheduler [`Decision`] needs looked up under the scheduler's lock: the VM
/// and vCPU it runs (so they are the ones it meant even if VMs come and go right
/// after), and whether the CPU is pinned. The vCPU it saves is the one this CPU holds
/// (`CpuContext::loaded`). Kept apart from the `Decision`, which is passed by
/// reference: moving one goes through `memcpy`.
struct Target {
    run: Option<(Arc<Vm>, usize)>,
    /// The CPU is pinned to a vCPU (it may have become so, or stopped being so, since
    /// it last loaded one: VMs come and go).
    dedicated: bool,
}

impl Target {
    #[inline(always)]
    fn resolve(s: &Sched, d: &Decision, cpu: usize) -> Target {
        Target {
            run: d.run.and_then(|id| s.vcpu(id)),
            dedicated: s.dedicated(cpu).is_some(),
        }
    }
}

/// Whether `held` (a vCPU whose registers or frame this CPU has) is `other`.
fn same_vcpu(held: Option<(&Vm, usize)>, other: Option<(&Vm, usize)>) -> bool {
    match (held, other) {
        (Some((a, av)), Some((b, bv))) => core::ptr::eq(a, b) && av == bv,
        _ => false,
    }
}

/// Ask the scheduler what this CPU runs next, given why the current exit asked, and
/// carry it out. On return `frame` holds the registers of the vCPU to run.
#[cold]
#[inline(never)]
fn schedule(frame: &mut GuestFrame) {
    let m = machine();
    let ctx = machine::this_cpu();
    let cpu = ctx.slot;
    let scope = ExitScope::enter();
    let reason = Reason::take(ctx);
    if reason == Reason::Tick && crate::restart::pending() {
        // A slice ended: one piece of a VM's restart, so it progresses on busy CPUs.
        crate::restart::work(cpu);
    }
    let current = ctx.loaded.get(&scope);
    let now = sysreg::read_cntpct_el0();
    let mut s = m.sched.lock();
    let mut finished_vm = None;
    // A `Decision` held across a call (kick_mask) is moved through `memcpy` after it:
    // each arm returns the scheduler's answer as it is, and the kicks come after.
    let d = match reason {
        Reason::Tick => s.tick(cpu, now),
        Reason::Yield => s.yield_cpu(cpu, now),
        Reason::Block(wake_at) => s.block(cpu, now, wake_at),
        Reason::Off | Reason::PowerOff => {
            let d = s.off_current(cpu, now);
            if let (Some((vm, vcpu)), Reason::PowerOff) = (current, reason) {
                // Only now: a CPU_ON that sees it Off finds the scheduler agreeing.
                vm.power.power_off(vcpu);
            }
            d
        }
    };
    if reason == Reason::Tick {
        // Deadlines the tick found expired may have given other CPUs work.
        kick_mask(s.take_kicks());
    }
    let stopping = matches!(reason, Reason::Off | Reason::PowerOff);
    // Taken on every pass, so a finish can never be left for a later one.
    let finished_stop = s.take_finished_stop();
    // The common case (a block, yield or tick of a running VM's vCPU) skips this.
    if let Some((vm, v)) = current.filter(|(vm, _)| stopping || vm.state() != VmState::Running) {
        // Whatever brought it here, the vCPU may now be off: the scheduler turns a
        // vCPU of a stopping VM off at a tick, block or yield too.
        if vm.vcpus.get(v).is_some_and(|x| s.state(x.id) == RunState::Off) {
            // A stopped vCPU's timer and PMU must not fire while it stays loaded here.
            sysreg::write_cntv_ctl_el0(0);
            silence_pmu(m, ctx);
        }
        // The stop this pass finished (exactly one pass finishes each), or the VM's
        // last vCPU called CPU_OFF: decided under the scheduler's lock, so a stop or
        // start from elsewhere cannot come between the check and the state change.
        let finished = finished_stop == Some(vm.index());
        let all_off = stopping
            && lifecycle::all_vcpus_off(vm.state(), s.vm_alive(vm.index()))
            && vm.leave_running(VmState::Off);
        if finished || all_off {
            finished_vm = Some((vm, all_off));
        }
    }
    let deadline = s.deadline(cpu);
    let target = Target::resolve(&s, &d, cpu);
    let owner = match leave(ctx, frame, current, &d, &target, &scope, Some(s)) {
        Left::Stays => {
            // The same vCPU goes on with the registers it has.
            match current {
                Some((vm, v)) => arm_tick(with_ptimer(deadline, vm, v, now)),
                None => arm_tick(deadline),
            }
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
    if let Some((vm, all_off)) = finished_vm {
        vcpus_stopped(vm, all_off);
    }
    arrive(m, ctx, frame, owner, (&d, &target), deadline, look_first, &scope);
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
    ctx: &CpuContext,
    frame: &GuestFrame,
    owner: Option<(&Vm, usize)>,
    d: &Decision,
    target: &Target,
    scope: &ExitScope,
    s: Option<MutexGuard<Sched>>,
) -> Left {
    let run = target.run.as_ref().map(|(vm, v)| (&**vm, *v));
    if d.run.is_some() && same_vcpu(owner, run) {
        return Left::Stays;
    }
    if d.run.is_none() && d.save.is_none() {
        return match owner {
            Some(_) => Left::FrameKept,
            None => Left::FrameSaved,
        };
    }
    // The scheduler saves only what this CPU holds.
    let save = d.save.and_then(|_| ctx.loaded.get(scope));
    let mut frame_guard = owner.and_then(|(vm, v)| saved_of(vm, v));
    let same = same_vcpu(owner, save);
    let mut regs_guard = if same {
        None
    } else {
        save.and_then(|(vm, v)| saved_of(vm, v))
    };
    drop(s);
    if let Some(saved) = frame_guard.as_mut() {
        copy_frame(&mut saved.frame, frame);
    }
    if d.save.is_some() {
        let mut cpuif = ctx.cpuif(machine().hw_ppis);
        let saved = if same {
            frame_guard.as_mut()
        } else {
            regs_guard.as_mut()
        };
        if let Some(saved) = saved {
            saved.arch.save(ctx.features, &mut cpuif);
        }
        // With a vCPU to restore, `arrive` names it as loaded at once (nothing reads
        // `loaded` in between): left as it is till then, a switch between two vCPUs of
        // one VM neither drops nor takes a reference to it.
        if d.restore.is_none() {
            ctx.loaded.clear();
        }
    }
    Left::FrameSaved
}

/// The `saved` lock of `vm`'s vCPU `v`: one of its vCPUs (what `LoadedVcpu` holds and
/// the scheduler's map names); were it not, there would be nothing to save into.
#[inline(always)]
fn saved_of(vm: &Vm, v: usize) -> Option<MutexGuard<'_, Saved>> {
    vm.vcpus.get(v).map(|x| x.saved.lock())
}

/// The second half of carrying out `d`: load and run `d.run`, or idle until the
/// scheduler has something for this CPU. `owner` is the vCPU whose frame is still in
/// `frame` (one this CPU idles with). Leaves the registers to resume in `frame`.
#[allow(clippy::too_many_arguments)]
fn arrive<'s>(
    m: &'static Machine,
    ctx: &CpuContext,
    frame: &mut GuestFrame,
    mut owner: Option<(&'s Vm, usize)>,
    first: (&Decision, &Target),
    mut deadline: Option<Ticks>,
    mut look_first: bool,
    scope: &'s ExitScope,
) {
    let cpu = ctx.slot;
    // By reference: a `Decision` passed by value is copied through `memcpy`.
    let (mut d, mut target) = first;
    let mut fresh: Decision;
    let mut fresh_target: Target;
    // The vCPU this CPU holds has sat in the idle loop below: its list registers are
    // as its last exit (a WFI, which flushed them) or the loop's own flush left them,
    // and the guest has not run since.
    let mut idled = false;
    loop {
        if let Some(id) = d.run {
            let run = target.run.as_ref();
            let Some((vm, v, vcpu)) = run.and_then(|(vm, v)| Some((vm, *v, vm.vcpus.get(*v)?)))
            else {
                crate::fatal(format_args!(
                    "the scheduler chose vCPU {} which does not exist",
                    id.0
                ))
            };
            let restore = d.restore == Some(id);
            let in_slot = owner.is_some_and(|(o, ov)| core::ptr::eq(o, Arc::as_ptr(vm)) && ov == v);
            if !restore {
                // Loaded here already, but the CPU may have parked its VTTBR while idle,
                // or the VM may have restarted with new memory since.
                mmu::use_stage2(vm.vttbr.load(Ordering::Acquire));
            }
            if restore || !in_slot {
                let saved = vcpu.saved.lock();
                if restore {
                    mmu::load_stage2(vm.vttbr.load(Ordering::Acquire), vm.vtcr);
                    sysreg::write_cntvoff_el2(vm.cntvoff);
                    sysreg::write_vmpidr_el2(VMPIDR_RES1 | v as u64);
                    sysreg::isb();
                    let mut cpuif = ctx.cpuif(m.hw_ppis);
                    saved.arch.restore(ctx.features, &mut cpuif);
                    if d.flush_tlb {
                        sysreg::flush_local_guest_context();
                    }
                    ctx.loaded.set(vm, v);
                    machine::trap_wfe(!target.dedicated);
                }
                copy_frame(frame, &saved.frame);
            }
            let holds = ctx.loaded.get(scope);
            if !holds.is_some_and(|(l, lv)| core::ptr::eq(l, Arc::as_ptr(vm)) && lv == v) {
                crate::fatal(format_args!(
                    "CPU {cpu} runs VM {} vCPU {v} without its registers",
                    vm.name
                ));
            }
            start_if_pending(vm, v, vcpu, frame);
            // Its emulated physical timer may have come due while it was off this CPU.
            let (_own, ptimer_due) = vm.ptimer_update(v, sysreg::read_cntpct_el0());
            arm_tick(earliest(deadline, ptimer_due));
            if vm.vgic.needs_flush_before_run(v, !(in_slot && idled)) {
                service_list_registers(vm, v);
            }
            return;
        }
        if look_first {
            look_first = false;
        } else {
            // The vCPU this CPU idles with (a pinned one has no scheduler deadline) may
            // have its emulated physical timer due first.
            let loaded = ctx.loaded.get(scope);
            match loaded {
                Some((vm, v)) => {
                    arm_tick(with_ptimer(deadline, vm, v, sysreg::read_cntpct_el0()))
                }
                None => arm_tick(deadline),
            }
            // Idle: no translation of a guest's may stay installed (its memory may be
            // given back while this CPU sleeps).
            mmu::use_stage2(m.parked_vttbr);
            // Nothing to run: a piece of another VM's restart, if one waits, or sleep.
            if !(crate::restart::pending() && crate::restart::work(cpu)) {
                sysreg::wfi();
            }
            let _ = drain_physical_irqs(m, loaded);
            // The vCPU this CPU idles with may have been given an interrupt meanwhile
            // (its timers fire here: the virtual one into its own list registers).
            if let Some((vm, v)) = loaded {
                let _ = vm.ptimer_update(v, sysreg::read_cntpct_el0());
                idled = same_vcpu(owner, Some((vm, v)));
                if vm.vgic.needs_flush_before_run(v, false) {
                    service_list_registers(vm, v);
                }
                if vm.vgic.has_pending(v) {
                    wake(vm, v);
                }
            }
        }
        let mut s = m.sched.lock();
        fresh = s.tick(cpu, sysreg::read_cntpct_el0());
        fresh_target = Target::resolve(&s, &fresh, cpu);
        d = &fresh;
        target = &fresh_target;
        kick_mask(s.take_kicks());
        deadline = s.deadline(cpu);
        if d.run.is_some() && leave(ctx, frame, owner, d, target, scope, Some(s)) == Left::FrameSaved {
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

/// `deadline`, or the emulated physical timer of `vm`'s vCPU `v` if that is due first.
fn with_ptimer(deadline: Option<Ticks>, vm: &Vm, v: usize, now: Ticks) -> Option<Ticks> {
    earliest(deadline, vm.ptimer_deadline(v, now))
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
/// the kernel entry, one started by PSCI CPU_ON to the entry point it was given. (PSCI
/// has reported it On since that CPU_ON; only its registers are set here.)
fn start_if_pending(vm: &Vm, v: usize, vcpu: &Vcpu, frame: &mut GuestFrame) {
    // Looked at before the swaps: almost always false, and a load is cheaper.
    if vcpu.boot.load(Ordering::Relaxed) && vcpu.boot.swap(false, Ordering::AcqRel) {
        reset_vcpu_state(vm, v);
        *frame = GuestFrame::default();
        frame.x[0] = vm.boot.dtb;
        frame.elr = vm.boot.kernel;
        frame.spsr = inject::SPSR_EL1H_MASKED;
    } else if !vcpu.psci_start.load(Ordering::Relaxed)
        || !vcpu.psci_start.swap(false, Ordering::AcqRel)
    {
        // The common case: no lock taken.
    } else if let Some((entry, context)) = vm.power.take_pending_start(v) {
        reset_vcpu_state(vm, v);
        *frame = GuestFrame::default();
        frame.x[0] = context;
        frame.elr = entry;
        frame.spsr = inject::SPSR_EL1H_MASKED;
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
    vm.ptimer_reset(vcpu);
    crate::arch::aarch64::context::reset_pmu(ctx.features);
    crate::arch::aarch64::context::reset_pauth(ctx.features);
    crate::arch::aarch64::context::reset_sve(ctx.features);
    crate::arch::aarch64::context::reset_debug(ctx.features);
    let mut lrs = ctx.lrs;
    for i in 0..bothy_core::vgic::ListRegs::count(&lrs) {
        bothy_core::vgic::ListRegs::write(&mut lrs, i, 0);
    }
    sysreg::write_ich_vmcr_el2(0);
    sysreg::write_ich_ap0r0_el2(0);
    sysreg::write_ich_ap1r0_el2(0);
    sysreg::write_ich_hcr_el2(ICH_HCR_EN);
    // A timer or PMU interrupt the previous incarnation never EOIed stays active in the
    // physical GIC and would block the next one.
    gic::set_private_active(ctx.redist, machine().hw_ppis, false);
    vm.vgic.reset_vcpu(vcpu);
    sysreg::isb();
}

/// Some of `vm`'s vCPUs stopped. `alive`: any of them could still run; `quiescent`:
/// none is running. The last one out of a stopping VM finishes the stop, as
/// `bothy_core::lifecycle` decides.
#[cold]
#[inline(never)]
fn vcpus_stopped(vm: &Vm, all_off: bool) {
    let _finishing = vm.lifecycle.lock();
    // The prompt may have destroyed it between the scheduler naming this CPU and now.
    if !machine::exists(vm) {
        return;
    }
    if all_off {
        println!("VM {} powered off (its last vCPU called CPU_OFF)", vm.name);
    }
    match lifecycle::after_stop(vm.state(), vm.on_exit) {
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
pub fn stop_vm(vm: &Vm) {
    let m = machine();
    let stop = m.sched.lock().stop_vm(vm.index());
    for cpu in stop.kicks {
        machine::kick(cpu);
    }
    if stop.quiescent {
        vcpus_stopped(vm, false);
    }
}

/// SYSTEM_RESET (or restart), once no vCPU of the VM runs: reload the images, reset
/// the vGIC and power states, and start vCPU 0 at the kernel entry.
#[cold]
#[inline(never)]
pub fn finish_reset(vm: &Vm) {
    // Its RAM is scrubbed in pieces first (`restart.rs`), which then comes back here.
    if !crate::restart::begin(vm) {
        reload_and_start(vm, false);
    }
}

/// The rest of a restart, once `vm`'s RAM is scrubbed (`scrubbed`) or with the scrub
/// done here: fresh tables and VMID, its images reloaded, vCPU 0 started. The caller
/// holds `vm.lifecycle` and `vm` is `Resetting`.
pub fn reload_and_start(vm: &Vm, scrubbed: bool) {
    if let Err(e) = fresh_memory(vm, scrubbed)
        .and_then(|()| vm.load_images().map_err(|e| alloc::format!("{e}")))
    {
        vm.set_state(VmState::Crashed);
        println!("error: VM {} cannot be restarted: {e}", vm.name);
        machine::vm_stopped(vm);
        return;
    }
    vm.power.reset();
    // A rebooted guest finds the distributor and every redistributor as at power-on.
    vm.vgic.reset();
    // Every VM has a vCPU 0 (`VmModel::new` refuses none); without one, nothing starts.
    let Some(vcpu0) = vm.vcpus.first() else {
        return;
    };
    vcpu0.boot.store(true, Ordering::Release);
    // Running and vCPU 0 started in one step under the scheduler's lock: a stop that
    // comes between them (from the prompt) finds the VM Running and vCPU 0 runnable,
    // and stops both, instead of stopping an idle VM whose vCPU then starts anyway.
    let kick = {
        let mut s = machine().sched.lock();
        if vm.state() != VmState::Resetting {
            return;
        }
        vm.set_state(VmState::Running);
        s.start(vcpu0.id)
    };
    println!("VM {} restarted", vm.name);
    if let Some(cpu) = kick {
        machine::kick(cpu);
    }
}

/// A stopped VM's memory given back and built afresh (`VmMemory::rebuild`): scrubbed RAM,
/// new stage-2 tables, a new VMID, so nothing of the previous run survives and the
/// machine's memory record proves nothing leaked. No vCPU of the VM runs (it is
/// quiescent); idle CPUs have parked their VTTBR, and this CPU parks it if it still
/// holds the VM's. Other CPUs load the new VTTBR when they next run one of its vCPUs.
fn fresh_memory(vm: &Vm, scrubbed: bool) -> Result<(), alloc::string::String> {
    let m = machine();
    if mmu::stage2_is(vm.vttbr.load(Ordering::Acquire)) {
        mmu::use_stage2(m.parked_vttbr);
    }
    // Lock order: the VM's memory, then the machine's.
    let mut slot = vm.memory.lock();
    let mut memory = m.memory.lock();
    let mm = &mut *memory;
    let Some(old) = slot.take() else {
        return Err(alloc::string::String::from("its memory is gone"));
    };
    let rebuilt = mmu::rebuild_vm_memory(
        old,
        scrubbed,
        &mut mm.allocator,
        &mut mm.owners,
        &mut mm.vmids,
        &mut ExitHw,
    );
    match rebuilt {
        Ok(new) => {
            vm.vttbr.store(new.vttbr(), Ordering::Release);
            *slot = Some(new);
            Ok(())
        }
        // No VMID to spare: restart in the same memory (the images are reloaded).
        Err((Some(old), e)) => {
            println!("VM {} restarts in its old memory: {e}", vm.name);
            *slot = Some(old);
            Ok(())
        }
        Err((None, e)) => Err(alloc::format!("{e}")),
    }
}

/// A lazy switch's claim (`context::claim_pmu` and the like) for the vCPU this CPU
/// runs, with its saved context: what the claim loads. Its `saved` lock is free: only
/// the CPU that runs a vCPU takes it, and this one takes it only to switch.
fn claim_with_saved(claim: fn(Features, &VcpuContext) -> bool) -> bool {
    let scope = ExitScope::enter();
    let ctx = machine::this_cpu();
    let (vm, v) = loaded(ctx, &scope);
    let Some(vcpu) = vm.vcpus.get(v) else {
        return false;
    };
    let saved = vcpu.saved.lock();
    claim(ctx.features, &saved.arch)
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
// one of them is sent back to be handled by `handle_exit_all` instead. What each exit
// does is decided in `bothy_core::exit::handle`; these carry out its `Action`.

/// A synchronous exit (hypercall, trapped instruction, stage-2 abort).
pub extern "C" fn handle_sync_exit(frame: &mut GuestFrame) -> Resume {
    let esr = sysreg::read_esr_el2();
    // Four functions, each reached by a tail call and each setting up the stack frame
    // its own path needs (the rest's is the largest).
    if handle::is_smccc_call(esr) {
        hypercall_exit(frame)
    } else if handle::is_data_abort(esr) {
        data_abort_exit(frame, esr)
    } else if handle::is_sgi1r_write(esr) {
        sgi_exit(frame, esr)
    } else {
        sync_exit_a64(frame, esr)
    }
}

#[inline(never)]
fn sync_exit_a64(frame: &mut GuestFrame, esr: u64) -> Resume {
    sync_exit::<false>(frame, esr)
}

/// A synchronous exit from 32-bit user code (a trapped WFI or device access).
pub extern "C" fn handle_sync_exit_a32(frame: &mut GuestFrame) -> Resume {
    sync_exit::<true>(frame, sysreg::read_esr_el2())
}

/// `HVC #0` from AArch64: an SMCCC call.
#[inline(never)]
fn hypercall_exit(frame: &mut GuestFrame) -> Resume {
    hot_exit(frame, |vm, vcpu, exits, frame| {
        handle::hypercall_exit(vm, vcpu, exits, frame, &mut ExitHw)
    })
}

/// A stage-2 data abort from AArch64 (MMIO to an emulated device, most often).
#[inline(never)]
fn data_abort_exit(frame: &mut GuestFrame, esr: u64) -> Resume {
    hot_exit(frame, |vm, vcpu, exits, frame| {
        handle::data_abort_exit(vm, vcpu, exits, frame, esr, &mut ExitHw)
    })
}

/// `MSR ICC_SGI1R_EL1` from AArch64.
#[inline(never)]
fn sgi_exit(frame: &mut GuestFrame, esr: u64) -> Resume {
    hot_exit(frame, |vm, vcpu, exits, frame| {
        handle::sgi_exit(vm, vcpu, exits, frame, esr, &mut ExitHw)
    })
}

/// The shell of each hot exit above: find the vCPU this CPU runs, let core's `handle`
/// decide, and carry out anything but a plain resume. Inlined into each, so that each
/// keeps the stack frame its own path needs.
#[inline(always)]
fn hot_exit(
    frame: &mut GuestFrame,
    handle: impl FnOnce(&Vm, usize, &ExitCounters, &mut GuestFrame) -> Action,
) -> Resume {
    let ctx = machine::this_cpu();
    let scope = ExitScope::enter();
    let (vm, vcpu) = loaded(ctx, &scope);
    let action = handle(vm, vcpu, exits(ctx, &scope), frame);
    if action == Action::Resume {
        return Resume::Saved;
    }
    carry_out(ctx, vm, vcpu, action)
}

#[inline(always)]
fn sync_exit<const FROM_A32: bool>(frame: &mut GuestFrame, esr: u64) -> Resume {
    let ctx = machine::this_cpu();
    let scope = ExitScope::enter();
    let (vm, vcpu) = loaded(ctx, &scope);
    let mut hw = ExitHw;
    let exits = exits(ctx, &scope);
    let action = if FROM_A32 {
        handle::sync_exit::<false, true>(vm, vcpu, exits, frame, esr, &mut hw)
    } else {
        // `handle_sync_exit` has answered SMCCC calls.
        handle::sync_exit_not_smccc::<false, false>(vm, vcpu, exits, frame, esr, &mut hw)
    };
    if action == Action::Resume {
        return Resume::Saved;
    }
    carry_out(ctx, vm, vcpu, action)
}

/// A physical IRQ while the guest ran.
pub extern "C" fn handle_irq_exit(_frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let scope = ExitScope::enter();
    let (vm, vcpu) = loaded(ctx, &scope);
    exits(ctx, &scope).count(ExitKind::Irq);
    // One interrupt per exit: another one pending brings the CPU straight back.
    let taken = take_physical_irq(machine(), Some((vm, vcpu))).unwrap_or(0);
    if taken & TICK != 0 {
        // The EL2 timer also stands for this vCPU's emulated physical timer.
        let _ = vm.ptimer_update(vcpu, sysreg::read_cntpct_el0());
    }
    let action = handle::finish(vm, vcpu, taken & FLUSHED != 0, &mut ExitHw);
    if action == Action::Resume && taken & TICK == 0 {
        return Resume::Saved;
    }
    if action == Action::Resume {
        Reason::Tick.set(ctx);
        return Resume::Schedule;
    }
    carry_out(ctx, vm, vcpu, action)
}

/// FIQ, SError, or anything from AArch32.
pub extern "C" fn handle_other_exit(kind: u64, _frame: &mut GuestFrame) -> Resume {
    let ctx = machine::this_cpu();
    let scope = ExitScope::enter();
    let (vm, vcpu) = loaded(ctx, &scope);
    exits(ctx, &scope).count(ExitKind::Other);
    let flushed = other_exit(kind, vm, vcpu);
    match handle::finish(vm, vcpu, flushed, &mut ExitHw) {
        Action::Resume => Resume::Saved,
        action => carry_out(ctx, vm, vcpu, action),
    }
}

/// Called by the vector code, with every register in `frame`, for an exit that a
/// handler answered with [`Resume::SaveAllAndRetry`] (`why`; ESR_EL2 still describes
/// it: EL2 took no exception in between) or [`Resume::Schedule`]. The whole frame is
/// restored after, and may then be another vCPU's.
#[cold]
pub extern "C" fn handle_exit_all(frame: &mut GuestFrame, why: u64) {
    if Resume::from_raw(why) == Resume::SaveAllAndRetry {
        let ctx = machine::this_cpu();
        let scope = ExitScope::enter();
        let (vm, vcpu) = loaded(ctx, &scope);
        let esr = sysreg::read_esr_el2();
        let mut hw = ExitHw;
        let exits = exits(ctx, &scope);
        let action = if aarch32::is_aarch32(frame.spsr) {
            handle::sync_exit::<true, true>(vm, vcpu, exits, frame, esr, &mut hw)
        } else {
            handle::sync_exit::<true, false>(vm, vcpu, exits, frame, esr, &mut hw)
        };
        if action == Action::Resume || carry_out(ctx, vm, vcpu, action) != Resume::Schedule {
            return;
        }
    }
    schedule(frame);
}

/// Everything but [`Action::Resume`]: record why the scheduler must look, or carry out
/// a start, and say how the vector code goes on.
#[cold]
#[inline(never)]
fn carry_out(ctx: &CpuContext, vm: &Vm, vcpu: usize, action: Action) -> Resume {
    let reason = match action {
        Action::Resume => return Resume::Saved,
        Action::NeedsAllRegisters => return Resume::SaveAllAndRetry,
        Action::StartVcpu(target) => {
            if let Some(t) = vm.vcpus.get(target) {
                t.psci_start.store(true, Ordering::Release);
                let kick = machine().sched.lock().start(t.id);
                if let Some(cpu) = kick {
                    machine::kick(cpu);
                }
            }
            return match handle::finish(vm, vcpu, false, &mut ExitHw) {
                Action::Resume => Resume::Saved,
                _ => {
                    Reason::Off.set(ctx);
                    Resume::Schedule
                }
            };
        }
        Action::Block(wake_at) => Reason::Block(wake_at.map(|t| t.get())),
        Action::Yield => Reason::Yield,
        Action::PowerOff => Reason::PowerOff,
        Action::VmLeft(state) => {
            match state {
                VmState::Resetting => println!("VM {} is resetting", vm.name),
                _ => println!("VM {} powered off", vm.name),
            }
            stop_vm(vm);
            Reason::Off
        }
        Action::Stop => Reason::Off,
    };
    reason.set(ctx);
    Resume::Schedule
}

/// The exit policy's [`Arch`] for the vCPU this CPU runs: each method is the bare
/// instruction (the vCPU's EL1 state is live while it runs). Zero-sized, so handing it
/// to the policy costs the exit path nothing; the rare methods that need the vCPU's VM
/// find it through this CPU's context.
pub(crate) struct ExitHw;

impl Arch for ExitHw {
    fn tlbi_vmid(&mut self, vmid: Vmid) {
        sysreg::tlbi_vmid(vmid.get());
    }

    fn tlbi_ipa(&mut self, vmid: Vmid, ipa: u64) {
        sysreg::tlbi_ipa(vmid.get(), ipa);
    }

    #[inline(always)]
    fn el1(&self, reg: El1Reg) -> u64 {
        match reg {
            El1Reg::Esr => sysreg::read_esr_el1(),
            El1Reg::Far => sysreg::read_far_el1(),
            El1Reg::Elr => sysreg::read_elr_el1(),
            El1Reg::Spsr => sysreg::read_spsr_el1(),
            El1Reg::Sctlr => sysreg::read_sctlr_el1(),
            El1Reg::Vbar => sysreg::read_vbar_el1(),
        }
    }

    #[inline(always)]
    fn set_el1(&mut self, reg: El1Reg, value: u64) {
        match reg {
            El1Reg::Esr => sysreg::write_esr_el1(value),
            El1Reg::Far => sysreg::write_far_el1(value),
            El1Reg::Elr => sysreg::write_elr_el1(value),
            El1Reg::Spsr => sysreg::write_spsr_el1(value),
            El1Reg::Sctlr => sysreg::write_sctlr_el1(value),
            El1Reg::Vbar => sysreg::write_vbar_el1(value),
        }
    }

    #[inline(always)]
    fn far_el2(&self) -> u64 {
        sysreg::read_far_el2()
    }

    #[inline(always)]
    fn hpfar_el2(&self) -> u64 {
        sysreg::read_hpfar_el2()
    }

    fn vtimer_deadline(&self) -> Option<Ticks> {
        live_timer_deadline(sysreg::read_cntvoff_el2())
    }

    #[inline(always)]
    fn counter(&self) -> Ticks {
        sysreg::read_cntpct_el0()
    }

    #[cold]
    fn look_at(&mut self, at: Ticks) {
        let armed = sysreg::read_cnthp_ctl_el2() & TICK_ENABLE != 0;
        if !armed || sysreg::read_cnthp_cval_el2() > at {
            arm_tick(Some(at));
        }
    }

    type Lrs<'a> = HwListRegs;
    #[inline(always)]
    fn lrs(&mut self) -> HwListRegs {
        machine::this_cpu().lrs
    }

    /// The loaded vCPU's timer condition or PMU overflow, read live: nothing changes
    /// them while the vCPU is at EL2 but the counter, which only ever raises the timer's
    /// (EL2 counts no PMU events: MDCR_EL2.HPMD).
    #[cold]
    #[inline(never)]
    fn hw_line_high(&mut self, pintid: u32) -> bool {
        const ENABLE: u64 = 1 << 0;
        const IMASK: u64 = 1 << 1;
        const ISTATUS: u64 = 1 << 2;
        let m = machine();
        let high = if pintid == m.vtimer_intid {
            sysreg::read_cntv_ctl_el0() & (ENABLE | IMASK | ISTATUS) == ENABLE | ISTATUS
        } else if pintid == m.pmu_intid {
            pmu_line_high()
        } else {
            return true;
        };
        if !high {
            // Taken at EL2 and left active for the guest's EOI, which will never come.
            gic::set_private_active(machine::this_cpu().redist, 1 << (pintid % 32), false);
        }
        high
    }

    #[inline(always)]
    fn wake(&mut self, vcpus: VcpuMask) {
        let scope = ExitScope::enter();
        kick_each(loaded(machine::this_cpu(), &scope).0, vcpus);
    }

    fn console_out(&mut self, byte: u8) {
        let scope = ExitScope::enter();
        let (vm, _) = loaded(machine::this_cpu(), &scope);
        crate::console::guest_byte(vm.index(), byte);
    }

    /// The first trapped debug-register access of the vCPU this CPU runs.
    #[cold]
    #[inline(never)]
    fn claim_debug(&mut self) -> bool {
        crate::arch::aarch64::context::claim_debug(machine::this_cpu().features)
    }

    /// The first trapped PMU access of the vCPU this CPU runs: its saved PMU registers
    /// (kept in its context while it was trapped) are loaded.
    #[cold]
    #[inline(never)]
    fn claim_pmu(&mut self) -> bool {
        claim_with_saved(crate::arch::aarch64::context::claim_pmu)
    }

    /// As [`Self::claim_pmu`], for SVE's predicates, FFR and ZCR_EL1.
    #[cold]
    #[inline(never)]
    fn claim_sve(&mut self) -> bool {
        claim_with_saved(crate::arch::aarch64::context::claim_sve)
    }

    /// As [`Self::claim_pmu`], for the pointer-authentication keys.
    #[cold]
    #[inline(never)]
    fn claim_pauth(&mut self) -> bool {
        claim_with_saved(crate::arch::aarch64::context::claim_pauth)
    }

    #[cold]
    #[inline(never)]
    fn guest_fault(&mut self, fault: GuestFault) {
        let scope = ExitScope::enter();
        let (vm, vcpu) = loaded(machine::this_cpu(), &scope);
        let (n, report) = vm.note_fault();
        if report {
            println!(
                "VM {} vCPU {vcpu}: {} at PC {:#x} (address {:#x}, ESR {:#x}); the guest got an exception [{n} so far]",
                vm.name,
                fault.kind(),
                fault.pc,
                fault.far,
                fault.esr
            );
        }
    }
}

/// The exit counters of the vCPU this CPU runs.
#[inline(always)]
fn exits<'s>(ctx: &CpuContext, scope: &'s ExitScope) -> &'s ExitCounters {
    ctx.loaded.exits(scope)
}

/// The vCPU this CPU runs (an exit comes from it).
#[inline(always)]
fn loaded<'s>(ctx: &CpuContext, scope: &'s ExitScope) -> (&'s Vm, usize) {
    match ctx.loaded.get(scope) {
        Some(loaded) => loaded,
        None => crate::fatal(format_args!(
            "exit on CPU slot {}, which runs no vCPU",
            ctx.slot
        )),
    }
}

/// FIQs and SErrors (from AArch64 or AArch32). Returns whether this vCPU's list registers
/// were flushed on the way.
#[inline(never)]
fn other_exit(kind: u64, vm: &Vm, vcpu: usize) -> bool {
    match VectorExit::from_raw(kind) {
        VectorExit::Sync => false,
        VectorExit::Irq | VectorExit::Fiq => {
            drain_physical_irqs(machine(), Some((vm, vcpu))) & FLUSHED != 0
        }
        VectorExit::SError => {
            guest_serror(vm, vcpu, sysreg::read_esr_el2());
            false
        }
    }
}

/// An SError the exit's `esb` found pending from the guest (syndrome from DISR_EL1),
/// before the exit itself is handled: `Resume::Saved` carries on with the exit, anything
/// else stops this vCPU (its VM stopped).
#[cold]
pub extern "C" fn handle_deferred_serror(syndrome: u64, _frame: &mut GuestFrame) -> Resume {
    sysreg::write_disr_el1(0);
    let ctx = machine::this_cpu();
    let scope = ExitScope::enter();
    let (vm, vcpu) = loaded(ctx, &scope);
    exits(ctx, &scope).count(ExitKind::Other);
    if guest_serror(vm, vcpu, syndrome) {
        return Resume::Saved;
    }
    Reason::Off.set(ctx);
    Resume::Schedule
}

/// The guest running here caused an SError (`bothy_core::exit::serror` decides what
/// follows). Returns whether the vCPU carries on.
#[cold]
#[inline(never)]
fn guest_serror(vm: &Vm, vcpu: usize, syndrome: u64) -> bool {
    use bothy_core::exit::serror::{classify, describe, Verdict};
    let verdict = classify(syndrome);
    let what = describe(syndrome);
    if verdict == Verdict::Uncontainable {
        crate::fatal(format_args!(
            "VM {} vCPU {vcpu}: uncontainable SError (syndrome {syndrome:#x}); nothing can be trusted to be intact",
            vm.name
        ))
    }
    let (n, report) = vm.note_serror();
    let stop = verdict == Verdict::StopVm;
    if report {
        println!(
            "VM {} vCPU {vcpu}: {what} SError (syndrome {syndrome:#x}); {} [{n} so far]",
            vm.name,
            if stop { "the VM is stopped" } else { "the guest carries on" }
        );
    }
    if stop && vm.leave_running(VmState::Crashed) {
        stop_vm(vm);
    }
    !stop
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
        match take_physical_irq(m, running) {
            Some(bits) => done |= bits,
            None => break,
        }
    }
    done
}

/// Acknowledge and handle one pending physical interrupt; `None` if none was pending.
/// Returns [`FLUSHED`] and [`TICK`] bits. The IRQ exit calls this directly (one
/// interrupt per exit), without the loop's set-up.
#[inline(always)]
fn take_physical_irq(m: &'static Machine, running: Option<(&Vm, usize)>) -> Option<u8> {
    let intid = gic::acknowledge();
    if intid == gic::SPURIOUS {
        return None;
    }
    gic::priority_drop(intid);
    let mut done = 0;
    if intid == m.vtimer_intid {
        if let Some((vm, vcpu)) = running {
            // Hardware-linked: the guest's EOI deactivates the physical interrupt.
            let local = vm.vgic.inject_hw_local(vcpu, intid, intid, &mut ExitHw);
            kick_vcpus(vm, local.kicks);
            return Some(if local.flushed { FLUSHED } else { 0 });
        }
        sysreg::write_cntv_ctl_el0(0);
    } else if intid == m.pmu_intid {
        // Hardware-linked too (`pmu_overflow` deactivates it when no vCPU takes it).
        return Some(pmu_overflow(m, running, intid));
    } else {
        done = other_physical_irq(m, running, intid);
    }
    // KICK_SGI needs nothing more: the caller re-examines its vCPU afterwards.
    gic::deactivate(intid);
    Some(done)
}

/// The rarer physical interrupts: maintenance, the scheduler's tick, the console UART.
#[inline(never)]
fn other_physical_irq(m: &'static Machine, running: Option<(&Vm, usize)>, intid: u32) -> u8 {
    if intid == m.maintenance_intid {
        // The condition (EOI of a level interrupt, LR underflow) stays asserted
        // until the list registers are folded back: do it now, not later.
        match running {
            Some((vm, vcpu)) => {
                service_list_registers(vm, vcpu);
                return FLUSHED;
            }
            None => sysreg::write_ich_hcr_el2(0),
        }
    } else if intid == m.tick_intid {
        // Level-sensitive: silence it; the scheduler programs the next one.
        sysreg::write_cnthp_ctl_el2(0);
        return TICK;
    } else if Some(intid) == m.uart_intid {
        console_input(m);
        crate::console::tx_interrupt();
    }
    0
}

/// The PMU on this CPU overflowed: the vCPU whose registers the CPU holds gets it,
/// hardware-linked (`bothy_core::dev::pmu`), and its EOI deactivates it; with none
/// loaded, the PMU's interrupt is turned off (the last vCPU's context has its enables)
/// and it is deactivated here. Returns [`FLUSHED`] as `take_physical_irq`.
#[cold]
#[inline(never)]
fn pmu_overflow(m: &'static Machine, running: Option<(&Vm, usize)>, intid: u32) -> u8 {
    let holder = running.map(|(vm, vcpu)| (&vm.vgic, vcpu));
    match pmu::fired(holder, intid, &mut ExitHw) {
        Fired::Delivered(local) => {
            if let Some((vm, _)) = running {
                kick_vcpus(vm, local.kicks);
            }
            if local.flushed {
                FLUSHED
            } else {
                0
            }
        }
        Fired::Nobody => {
            silence_pmu(m, machine::this_cpu());
            gic::deactivate(intid);
            0
        }
    }
}

/// The loaded vCPU's PMU overflow line, from its live registers. A CPU without the
/// PMU's registers (a machine whose CPUs differ) has no overflow to offer.
#[cold]
#[inline(never)]
fn pmu_line_high() -> bool {
    machine::this_cpu().features.pmu_counters.is_some()
        && pmu::overflow_asserted(
            sysreg::read_pmcr_el0(),
            sysreg::read_pmovsset_el0(),
            sysreg::read_pmintenset_el1(),
        )
}

/// Turn off the PMU's overflow interrupt on this CPU (when it holds no vCPU that may
/// take it): the saved context keeps the vCPU's enables, and loading a vCPU rewrites them.
fn silence_pmu(m: &Machine, ctx: &CpuContext) {
    if m.pmu_intid != gic::SPURIOUS && ctx.features.pmu_counters.is_some() {
        sysreg::write_pmintenclr_el1(u64::MAX);
    }
}

/// Fold list-register state back into the vGIC and refill them (the exit policy's
/// own routine, on this CPU's list registers).
#[inline(always)]
fn service_list_registers(vm: &Vm, vcpu: usize) {
    handle::serve_list_registers(vm, vcpu, &mut ExitHw);
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
    let kicks = vm.console_input(byte);
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
