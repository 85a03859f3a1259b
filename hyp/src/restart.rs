//! A stopped VM restarted without taking a CPU away from the other VMs: its RAM is
//! scrubbed in pieces ([`bothy_core::mem::scrub`]) by CPUs that have nothing better to
//! do, and only then are its tables rebuilt, its images reloaded and vCPU 0 started
//! (`exit::reload_and_start`).
//!
//! [`begin`] posts the VM's job and kicks the other CPUs. A CPU takes one piece at a
//! time ([`work`]): in its idle loop instead of sleeping, and at the end of each slice
//! on a time-shared CPU, so the job progresses even when every CPU is busy. Which
//! CPUs may is the scheduler's decision (`Scheduler::may_do_background_work`: not a
//! pinned CPU whose vCPU can run); which piece, and whether a restart was cancelled,
//! the queue's (`bothy_core::mem::scrub::ScrubQueue`).
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
use bothy_core::lifecycle::VmState;
use bothy_core::mem::scrub::ScrubQueue;
use bothy_core::Region;
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Mutex;

/// A VM as a [`ScrubQueue`] owner: the same VM, not an equal one.
#[derive(Clone)]
struct VmRef(Arc<Vm>);

impl PartialEq for VmRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Restarts posted and not finished; `PENDING` is their number, read without the lock
/// on every idle look and slice end.
static JOBS: Mutex<ScrubQueue<VmRef>> = Mutex::new(ScrubQueue::new());
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
        jobs.post(VmRef(arc), gen, ram);
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
    if !pending() || !machine().sched.lock().may_do_background_work(cpu) {
        return false;
    }
    let taken = {
        let mut jobs = JOBS.lock();
        let piece = jobs.take(|vm, gen| current(&vm.0, gen));
        PENDING.store(jobs.len(), Ordering::Release);
        piece
    };
    let Some(piece) = taken else {
        return false;
    };
    scrub(&piece.owner.0, piece.gen, piece.region);
    let finished = {
        let mut jobs = JOBS.lock();
        let last = jobs.finish(&piece);
        PENDING.store(jobs.len(), Ordering::Release);
        last
    };
    let vm = &piece.owner.0;
    if finished {
        let _finishing = vm.lifecycle.lock();
        if current(vm, piece.gen) && machine::exists(vm) {
            exit::reload_and_start(vm, true);
        }
    }
    true
}

/// Whether `vm` is still in the restart numbered `gen`.
fn current(vm: &Vm, gen: u64) -> bool {
    vm.state() == VmState::Resetting && vm.scrub_gen.load(Ordering::Acquire) == gen
}

/// Zero `piece` of `vm`'s RAM, if `vm` is still in restart `gen` and `piece` is its RAM.
fn scrub(vm: &Vm, gen: u64, piece: Region) {
    let memory = vm.memory.lock();
    let Some(mem) = memory.as_ref() else {
        return;
    };
    if current(vm, gen) {
        // `scrub_vm_ram` zeroes only inside the VM's RAM block.
        crate::arch::aarch64::mmu::scrub_vm_ram(mem, piece);
    }
}
