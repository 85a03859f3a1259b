//! A stopped VM restarted without taking a CPU away from the other VMs: its RAM is
//! scrubbed in pieces ([`bothy_core::mem::scrub`]) by CPUs that have nothing better to
//! do, and only then are its tables rebuilt, its images reloaded and vCPU 0 started
//! (`exit::reload_and_start`).
//!
//! [`begin`] posts the VM's job and kicks the other CPUs. A CPU takes one piece at a
//! time ([`work`]): in its idle loop instead of sleeping, and at the end of each slice
//! on a time-shared CPU, so the job progresses even when every CPU is busy. A CPU
//! pinned to a vCPU takes none while that vCPU can run (it must not wait behind
//! another VM's restart); a restarting pinned VM's own CPUs, whose vCPUs are off, do.
//! A time-shared VM implies a time-shared CPU (the system file must leave one), so
//! every restart has CPUs that work on it.
//! The CPU that finishes the last piece finishes the restart.
//!
//! Each piece is scrubbed under the VM's `memory` lock and only if the VM is still in
//! the restart that posted it (`Resetting`, same `scrub_gen`): a restart cancelled from
//! the prompt (the VM stopped, destroyed or started afresh) can leave a piece taken but
//! not yet scrubbed, which then zeroes nothing, so no stale piece can land on RAM that
//! has since been reloaded or given to another VM.

use crate::exit;
use crate::machine::{self, machine};
use crate::vm::Vm;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bothy_core::lifecycle::VmState;
use bothy_core::mem::scrub::{ScrubJob, PIECE};
use bothy_core::sched::RunState;
use bothy_core::Region;
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Mutex;

struct Job {
    vm: Arc<Vm>,
    /// `Vm::scrub_gen` of the restart that posted it.
    gen: u64,
    job: ScrubJob,
}

/// Jobs posted and not finished; `PENDING` is their number, read without the lock on
/// every idle look and slice end.
static JOBS: Mutex<Vec<Job>> = Mutex::new(Vec::new());
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Post `vm`'s restart (it is `Resetting` and none of its vCPUs runs). False if there
/// is nothing to scrub in pieces (its memory is gone): the caller restarts it at once.
pub fn begin(vm: &Vm) -> bool {
    let Some(arc) = machine()
        .vm_at(vm.index())
        .filter(|v| core::ptr::eq(Arc::as_ptr(v), vm))
    else {
        return false;
    };
    let Some(ram) = vm
        .memory
        .lock()
        .as_ref()
        .map(|m| Region::new(m.ram_pa(), m.ram_ipa().size))
    else {
        return false;
    };
    let gen = vm.scrub_gen.fetch_add(1, Ordering::AcqRel) + 1;
    {
        let mut jobs = JOBS.lock();
        jobs.retain(|j| !Arc::ptr_eq(&j.vm, &arc));
        jobs.push(Job {
            vm: arc,
            gen,
            job: ScrubJob::new(ram, PIECE),
        });
        PENDING.store(jobs.len(), Ordering::Release);
    }
    let me = machine::current_cpu();
    for cpu in (0..machine().cpus.len()).filter(|&c| c != me) {
        machine::kick(cpu);
    }
    true
}

/// Whether any restart waits for pieces to be scrubbed.
#[inline(always)]
pub fn pending() -> bool {
    PENDING.load(Ordering::Acquire) != 0
}

/// Scrub one piece of a posted restart if this CPU (`cpu`, the scheduler's slot) may;
/// finish the restart if that was its last piece. True if it did some work.
#[cold]
#[inline(never)]
pub fn work(cpu: usize) -> bool {
    if !pending() || !may_work(cpu) {
        return false;
    }
    let taken = {
        let mut jobs = JOBS.lock();
        // A restart cancelled meanwhile (the VM no longer resetting, or restarted
        // afresh) has nothing left to do.
        jobs.retain(|j| current(&j.vm, j.gen));
        PENDING.store(jobs.len(), Ordering::Release);
        jobs.iter_mut()
            .find(|j| !j.job.all_handed_out())
            .and_then(|j| Some((j.vm.clone(), j.gen, j.job.take()?)))
    };
    let Some((vm, gen, piece)) = taken else {
        return false;
    };
    scrub(&vm, gen, piece);
    let finished = {
        let mut jobs = JOBS.lock();
        // Only this restart's job counts the piece (`finish` is not asked of others).
        let last = jobs
            .iter_mut()
            .position(|j| Arc::ptr_eq(&j.vm, &vm) && j.gen == gen && j.job.finish(piece));
        if let Some(i) = last {
            jobs.swap_remove(i);
        }
        PENDING.store(jobs.len(), Ordering::Release);
        last.is_some()
    };
    if finished {
        let _finishing = vm.lifecycle.lock();
        if current(&vm, gen) && machine::exists(&vm) {
            exit::reload_and_start(&vm, true);
        }
    }
    true
}

/// Whether `vm` is still in the restart numbered `gen`.
fn current(vm: &Vm, gen: u64) -> bool {
    vm.state() == VmState::Resetting && vm.scrub_gen.load(Ordering::Acquire) == gen
}

/// A CPU pinned to a vCPU works only while that vCPU is off (it has nothing to run:
/// the CPUs of a restarting pinned VM are such).
fn may_work(cpu: usize) -> bool {
    let s = machine().sched.lock();
    s.dedicated(cpu).is_none_or(|v| s.state(v) == RunState::Off)
}

/// Zero `piece` of `vm`'s RAM, if `vm` is still in restart `gen` and `piece` is its RAM.
fn scrub(vm: &Vm, gen: u64, piece: Region) {
    let memory = vm.memory.lock();
    let Some(mem) = memory.as_ref() else {
        return;
    };
    let ram = Region::new(mem.ram_pa(), mem.ram_ipa().size);
    if current(vm, gen) && ram.contains_range(piece.base, piece.size) {
        crate::arch::aarch64::mmu::scrub_vm_ram(mem, piece);
    }
}
