//! EL1 exception handling for every vCPU of both roles: the `el1_exception` hook of
//! guests/rt, whose `vectors.S` saves the context into a [`Frame`].
//!
//! * Synchronous exceptions at EL1 go to rt's guard (`rt::guard`): inside `guarded` the
//!   faulting instruction is skipped and the case inspects the record; any other one
//!   abandons the running case, so a case that faults unexpectedly fails alone and the
//!   next one runs. The guard counts every synchronous external abort on vCPU 0
//!   (`rt::guard::injected_faults`): those are the ones Bothy injects and reports, which
//!   the QEMU test compares with Bothy's rate-limited reports.
//! * Exceptions from EL0 (the AArch32 case) are recorded with the vector they came
//!   through, and end the trip to EL0 (`rt::el0`).
//! * IRQs are acknowledged and completed (EOImode 0). Each vCPU counts the SGIs it took
//!   by INTID; the virtual timer calls the victim's tick (or is masked for the attacker).
//!
//! State is in atomics used only with plain loads and stores: the MMU is off, so memory
//! is Device memory and exclusives are not guaranteed to work. Each word has one writer
//! at a time.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, write_sysreg};
use rt::exceptions::{
    Fault, Frame, KIND_IRQ_LOWER_A32, KIND_IRQ_LOWER_A64, KIND_IRQ_SPX, KIND_SYNC_SPX,
};
use rt::gic::{self, VTIMER_INTID};
use rt::guard;

const CNTV_CTL_ENABLE: u64 = 1;
const CNTV_CTL_IMASK: u64 = 2;
pub const NR_VCPUS: usize = 3;

// ---- EL0 trips (vCPU 0) --------------------------------------------------------------

static EL0_KIND: AtomicU64 = AtomicU64::new(0);
static EL0_ESR: AtomicU64 = AtomicU64::new(0);
static EL0_FAR: AtomicU64 = AtomicU64::new(0);
static EL0_ELR: AtomicU64 = AtomicU64::new(0);

/// How a trip to EL0 ended: the vector kind it came back through, and the exception.
pub struct El0Exit {
    pub kind: u64,
    pub fault: Fault,
}

/// Run the code at `entry` at EL0 in mode `spsr` with r0..r2 set, until its first
/// synchronous exception (which is returned).
pub fn run_el0(entry: u64, spsr: u64, r0: u64, r1: u64, r2: u64) -> El0Exit {
    // SAFETY: the pieces of low.S touch only r0..r2 and the addresses in them, and
    // `from_el0` ends the trip at the first exception from EL0.
    unsafe { rt::el0::run(entry, spsr, &[r0, r1, r2, 0, 0, 0, 0, 0]) };
    El0Exit {
        kind: EL0_KIND.load(Acquire),
        fault: Fault {
            esr: EL0_ESR.load(Acquire),
            far: EL0_FAR.load(Acquire),
            elr: EL0_ELR.load(Acquire),
        },
    }
}

// ---- interrupts ----------------------------------------------------------------------

/// SGIs each vCPU took, by INTID.
static SGIS: [[AtomicU32; 16]; NR_VCPUS] = [const { [const { AtomicU32::new(0) }; 16] }; NR_VCPUS];
/// The victim's tick: called from the timer interrupt.
pub static VICTIM: AtomicBool = AtomicBool::new(false);

pub fn sgis_taken(cpu: usize, intid: u32) -> u32 {
    SGIS[cpu][intid as usize & 15].load(Acquire)
}

// ---- dispatch ------------------------------------------------------------------------

#[no_mangle]
extern "C" fn el1_exception(frame: &mut Frame, kind: u64) {
    let cpu = arch::cpu_id().min(NR_VCPUS - 1);
    guard::handler(cpu, kind, || match kind {
        KIND_IRQ_SPX | KIND_IRQ_LOWER_A64 | KIND_IRQ_LOWER_A32 => irq(cpu),
        KIND_SYNC_SPX => guard::sync(cpu, frame),
        _ if cpu == 0 && rt::el0::running() => from_el0(frame, kind),
        _ => guard::unexpected(cpu, frame, kind),
    });
}

/// The first exception of a trip to EL0: record it and leave EL0 for good.
fn from_el0(frame: &mut Frame, kind: u64) {
    let f = guard::record(0);
    EL0_KIND.store(kind, Release);
    EL0_ESR.store(f.esr, Release);
    EL0_FAR.store(f.far, Release);
    EL0_ELR.store(f.elr, Release);
    rt::el0::back_to_el1(frame);
}

fn irq(cpu: usize) {
    let Some((iar, intid)) = gic::ack_intid() else {
        return;
    };
    if intid == VTIMER_INTID {
        if VICTIM.load(Relaxed) {
            crate::victim::tick();
        } else {
            // Level-triggered: mask at the source before EOI so it does not fire again.
            write_sysreg!("cntv_ctl_el0", CNTV_CTL_ENABLE | CNTV_CTL_IMASK);
        }
    } else if intid < 16 {
        let n = &SGIS[cpu][intid as usize];
        n.store(n.load(Relaxed) + 1, Release);
    }
    gic::eoi(iar);
}
