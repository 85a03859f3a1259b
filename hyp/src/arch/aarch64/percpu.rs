//! Which [`CpuContext`] belongs to the CPU running this code: a pointer kept in
//! TPIDR_EL2, EL2's own software thread register (guests cannot touch it).
//!
//! Every exit starts by asking; an `mrs` and a null check is all it costs.

use super::sysreg::{read_tpidr_el2, write_tpidr_el2};
use crate::machine::CpuContext;
use crate::vm::Vm;
use bothy_core::vm::ExitCounters;
use alloc::sync::Arc;
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
/// its VM and its index, written only by the CPU itself when it loads or saves a
/// vCPU, and read by its own exit path (and by nobody else).
///
/// VMs are created and destroyed at run time, so the VM pointer is a strong
/// reference (an `Arc` turned into a raw pointer): a VM destroyed while a CPU idles
/// with one of its vCPUs loaded lives until that CPU lets go. References handed out
/// by [`LoadedVcpu::get`] are bounded by an [`ExitScope`], so they cannot outlive the
/// exit (or scheduling pass) that asked. When [`LoadedVcpu::set`] or
/// [`LoadedVcpu::clear`] lets go of a VM in the middle of a scheduling pass, code of
/// that pass may still hold references to it; so the reference is *retired*, not
/// dropped, and dropped by [`release_retired`] once the pass is over: the vector code
/// calls it after `handle_exit_all` returns, and [`super::vectors::enter_guest`]
/// before it enters a guest, when no Rust frame that could hold one is left.
pub struct LoadedVcpu {
    vm: AtomicPtr<Vm>,
    vcpu: AtomicUsize,
    /// Its exit counters, so counting an exit is a load and an add. Never null: with
    /// no vCPU loaded it points at [`NOWHERE`].
    exits: AtomicPtr<ExitCounters>,
    /// VMs let go of during the current scheduling pass (at most two: one `clear` and
    /// one `set` of an empty slot retire nothing more).
    retired: [AtomicPtr<Vm>; RETIRED_SLOTS],
}

const RETIRED_SLOTS: usize = 4;

/// Where the exits of no vCPU are counted (a CPU with none loaded takes no exit from a
/// guest): keeps [`LoadedVcpu::exits`] a valid pointer, so an exit does not test it.
static NOWHERE: ExitCounters = ExitCounters::new();

const fn nowhere() -> *mut ExitCounters {
    (&raw const NOWHERE).cast_mut()
}

/// The span in which references from [`LoadedVcpu::get`] are valid: one exit handler
/// or scheduling pass on this CPU. Not `Send`, and never stored: make one on the
/// stack with [`ExitScope::enter`] and borrow it.
pub struct ExitScope(core::marker::PhantomData<*mut ()>);

impl ExitScope {
    #[inline(always)]
    pub fn enter() -> Self {
        ExitScope(core::marker::PhantomData)
    }
}

impl LoadedVcpu {
    pub const fn empty() -> Self {
        LoadedVcpu {
            vm: AtomicPtr::new(core::ptr::null_mut()),
            vcpu: AtomicUsize::new(0),
            exits: AtomicPtr::new(nowhere()),
            retired: [const { AtomicPtr::new(core::ptr::null_mut()) }; RETIRED_SLOTS],
        }
    }

    /// This CPU now holds `vcpu` of `vm`. It takes a strong reference of its own only
    /// if it held another VM's vCPU (or none): a switch between two vCPUs of one VM
    /// neither clones nor retires one.
    ///
    /// Plain loads and stores, no read-modify-write: only this CPU writes these.
    pub fn set(&self, vm: &Arc<Vm>, vcpu: usize) {
        let exits = vm.vcpus.get(vcpu).map_or(nowhere(), |v| {
            &v.exits as *const ExitCounters as *mut ExitCounters
        });
        self.exits.store(exits, Ordering::Relaxed);
        self.vcpu.store(vcpu, Ordering::Relaxed);
        let old = self.vm.load(Ordering::Relaxed);
        if core::ptr::eq(old, Arc::as_ptr(vm)) {
            return;
        }
        self.vm
            .store(Arc::into_raw(vm.clone()) as *mut Vm, Ordering::Relaxed);
        self.retire(old);
    }

    /// This CPU holds no vCPU's registers any more.
    pub fn clear(&self) {
        self.exits.store(nowhere(), Ordering::Relaxed);
        let old = self.vm.load(Ordering::Relaxed);
        self.vm.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.retire(old);
    }

    fn retire(&self, old: *mut Vm) {
        if old.is_null() {
            return;
        }
        for slot in &self.retired {
            if slot.load(Ordering::Relaxed).is_null() {
                slot.store(old, Ordering::Relaxed);
                return;
            }
        }
        // No room (cannot happen, see `retired`): keep the VM alive for good rather
        // than free it under a reference; a destroyed VM's few KiB stay allocated.
    }

    /// The loaded vCPU's exit counters ([`NOWHERE`] if none is loaded).
    #[inline(always)]
    pub fn exits<'s>(&self, _scope: &'s ExitScope) -> &'s ExitCounters {
        let exits = self.exits.load(Ordering::Relaxed);
        // SAFETY: never null: `NOWHERE` (a static), or taken in `set` from a vCPU of the
        // VM this CPU holds a strong reference to; that reference is dropped only by
        // `release_retired`, after every scope of the pass has ended (the counters are
        // atomics, `Sync`).
        unsafe { &*exits }
    }

    #[inline(always)]
    pub fn get<'s>(&self, _scope: &'s ExitScope) -> Option<(&'s Vm, usize)> {
        let vm = self.vm.load(Ordering::Relaxed);
        // SAFETY: null, or from `Arc::into_raw` in `set`: this CPU holds that strong
        // reference until `set`/`clear` retire it, and a retired one is dropped only
        // by `release_retired` once no scope of this pass is left. Only shared
        // references are made (`Vm` is `Sync`).
        let vm = unsafe { vm.as_ref() }?;
        Some((vm, self.vcpu.load(Ordering::Relaxed)))
    }
}

/// Drop the VMs this CPU let go of during the pass that just ended.
///
/// # Safety
/// No reference obtained from [`LoadedVcpu::get`] or [`LoadedVcpu::exits`] on this CPU
/// may be used afterwards: call it only where no Rust frame of an exit handler or
/// scheduling pass is live (after `handle_exit_all` returned, or just before entering
/// a guest from a function that never returns).
pub unsafe extern "C" fn release_retired() {
    let Some(ctx) = get() else { return };
    for slot in &ctx.loaded.retired {
        // Almost always empty: look before writing.
        if slot.load(Ordering::Relaxed).is_null() {
            continue;
        }
        let old = slot.swap(core::ptr::null_mut(), Ordering::Relaxed);
        if !old.is_null() {
            // SAFETY: from `Arc::into_raw` in `set`, retired exactly once; the caller
            // guarantees nothing borrowed from it is used any more.
            drop(unsafe { Arc::from_raw(old) });
        }
    }
}
