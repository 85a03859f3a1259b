//! Which [`CpuContext`] belongs to the CPU running this code: a pointer kept in
//! TPIDR_EL2, EL2's own software thread register (guests cannot touch it).
//!
//! Every exit starts by asking; an `mrs` and a null check is all it costs.

use super::sysreg::{read_tpidr_el2, write_tpidr_el2};
use crate::machine::CpuContext;
use crate::vm::Vm;
use bothy_core::vm::ExitCounters;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Forget any value firmware left: TPIDR_EL2 resets to an UNKNOWN value. Call at
/// EL2, before anything asks [`get`].
pub fn clear() {
    write_tpidr_el2(0);
}

/// From now on, [`get`] on this CPU returns `ctx`.
pub fn install(ctx: &'static CpuContext) {
    write_tpidr_el2(ctx as *const CpuContext as u64);
}

/// This CPU's context, if [`install`] has run on it.
#[inline(always)]
pub fn get() -> Option<&'static CpuContext> {
    let ptr = read_tpidr_el2() as *const CpuContext;
    // SAFETY: TPIDR_EL2 is written only by `clear` (null, which `as_ref` maps to None)
    // and `install` (a `&'static CpuContext`, valid and never mutated for the rest of
    // the run). Both run on this CPU before any `get`.
    unsafe { ptr.as_ref() }
}

/// The vCPU whose registers this CPU holds (running, or blocked while the CPU idles):
/// a VM pointer and a vCPU index, written only by the CPU itself when it loads or
/// saves a vCPU, and read by its own exit path (and by nobody else).
pub struct LoadedVcpu {
    vm: AtomicPtr<Vm>,
    vcpu: AtomicUsize,
    /// Its exit counters, so counting an exit is a load and an add.
    exits: AtomicPtr<ExitCounters>,
}

impl LoadedVcpu {
    pub const fn empty() -> Self {
        LoadedVcpu {
            vm: AtomicPtr::new(core::ptr::null_mut()),
            vcpu: AtomicUsize::new(0),
            exits: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    pub fn set(&self, vm: &'static Vm, vcpu: usize) {
        let exits = vm.vcpus.get(vcpu).map_or(core::ptr::null_mut(), |v| {
            &v.exits as *const ExitCounters as *mut ExitCounters
        });
        self.exits.store(exits, Ordering::Relaxed);
        self.vcpu.store(vcpu, Ordering::Relaxed);
        self.vm.store(vm as *const Vm as *mut Vm, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.vm.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.exits.store(core::ptr::null_mut(), Ordering::Relaxed);
    }

    /// The loaded vCPU's exit counters.
    #[inline(always)]
    pub fn exits(&self) -> Option<&'static ExitCounters> {
        let exits = self.exits.load(Ordering::Relaxed);
        // SAFETY: null, or taken in `set` from a vCPU of a `&'static Vm` (VMs and their
        // vCPUs live for the rest of the run; the counters are atomics, `Sync`).
        unsafe { exits.as_ref() }
    }

    #[inline(always)]
    pub fn get(&self) -> Option<(&'static Vm, usize)> {
        let vm = self.vm.load(Ordering::Relaxed);
        // SAFETY: the pointer is null or came from a `&'static Vm` in `set`; VMs live
        // in the machine for the rest of the run and are only shared (`Sync`).
        let vm = unsafe { vm.as_ref() }?;
        Some((vm, self.vcpu.load(Ordering::Relaxed)))
    }
}
