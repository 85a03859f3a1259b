//! EL1 exception handling for both vCPUs: the `el1_exception` hook of guests/rt, whose
//! `vectors.S` saves the context into a [`Frame`].
//!
//! * Synchronous exceptions at EL1 go to rt's guard (`rt::guard`): inside `guarded` the
//!   faulting instruction is skipped and the check inspects the record; any other one
//!   abandons the running check, so a faulting check fails alone and the run goes on. On
//!   vCPU 1 it is recorded for the primary to report (`rt::guard::secondary_fault`) and
//!   vCPU 1 parks.
//! * IRQs are acknowledged with ICC_IAR1_EL1 and completed with ICC_EOIR1_EL1 (EOImode 0);
//!   each vCPU records which INTIDs it saw, when its virtual timer fired and which PMU
//!   overflows it took (cleared at the source before the EOI). vCPU 1 also
//!   plays its part of the IPI ping-pong and the WFI watchdog here.
//! * Synchronous exceptions from AArch32 EL0 on the primary belong to the `aarch32_el0`
//!   check (el0.rs).
//!
//! State is in atomics used only with plain loads and stores (`ldar`/`stlr`): the MMU is
//! off, and exclusives on Device memory are not guaranteed to work. Each word has a single
//! writer at a time (its own vCPU's handler, or the primary while that handler is quiet).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::gic;
use crate::platform::{NR_VCPUS, PTIMER_INTID, VTIMER_INTID};
use crate::smp;
use rt::exceptions::{Frame, KIND_IRQ_LOWER_A32, KIND_IRQ_SPX, KIND_SYNC_LOWER_A32, KIND_SYNC_SPX};
use rt::guard;

const CNTV_CTL_ENABLE: u64 = 1 << 0;
const CNTV_CTL_IMASK: u64 = 1 << 1;

// ---- per-vCPU interrupt record -------------------------------------------------------

/// Bitmask of INTIDs 0..63 each vCPU acknowledged.
static SEEN: [AtomicU64; NR_VCPUS] = [const { AtomicU64::new(0) }; NR_VCPUS];
/// CNTPCT when vCPU 0 handled its EL1 physical timer's IRQ (0: not yet).
static PTIMER_AT: AtomicU64 = AtomicU64::new(0);

pub fn ptimer_fired_at() -> u64 {
    PTIMER_AT.load(Acquire)
}

pub fn clear_ptimer_fired() {
    PTIMER_AT.store(0, Release);
}

/// The PMU's overflow INTID, from the device tree (0: none, or not looked up yet).
pub static PMU_INTID: AtomicU32 = AtomicU32::new(0);
/// How many PMU overflow interrupts each vCPU took, and the PMOVSSET_EL0 bits it found
/// (and cleared) in them.
static PMU_IRQS: [AtomicU32; NR_VCPUS] = [const { AtomicU32::new(0) }; NR_VCPUS];
static PMU_OVS: [AtomicU64; NR_VCPUS] = [const { AtomicU64::new(0) }; NR_VCPUS];

pub fn pmu_irqs(cpu: usize) -> u32 {
    PMU_IRQS[cpu].load(Acquire)
}

pub fn pmu_overflows_seen(cpu: usize) -> u64 {
    PMU_OVS[cpu].load(Acquire)
}

/// Forget `cpu`'s PMU interrupts. Call while it cannot be taking one.
pub fn clear_pmu_irqs(cpu: usize) {
    PMU_IRQS[cpu].store(0, Release);
    PMU_OVS[cpu].store(0, Release);
}

/// CNTVCT when each vCPU handled its virtual timer IRQ (0: not yet).
static TIMER_AT: [AtomicU64; NR_VCPUS] = [const { AtomicU64::new(0) }; NR_VCPUS];

pub fn seen(cpu: usize, intid: u32) -> bool {
    SEEN[cpu].load(Acquire) & (1 << intid) != 0
}

/// Forget INTID `intid` on `cpu`. Call while `cpu` cannot be taking that interrupt.
pub fn clear_seen(cpu: usize, intid: u32) {
    let v = SEEN[cpu].load(Acquire);
    SEEN[cpu].store(v & !(1 << intid), Release);
}

pub fn timer_fired_at(cpu: usize) -> u64 {
    TIMER_AT[cpu].load(Acquire)
}

pub fn clear_timer_fired(cpu: usize) {
    TIMER_AT[cpu].store(0, Release);
}

// ---- dispatch ------------------------------------------------------------------------

#[no_mangle]
extern "C" fn el1_exception(frame: &mut Frame, kind: u64) {
    let cpu = arch::cpu_id().min(NR_VCPUS - 1);
    guard::handler(cpu, kind, || match kind {
        KIND_IRQ_SPX | KIND_IRQ_LOWER_A32 => irq(cpu),
        KIND_SYNC_SPX => guard::sync(cpu, frame),
        KIND_SYNC_LOWER_A32 if cpu == 0 => crate::el0::sync(frame),
        _ => guard::unexpected(cpu, frame, kind),
    });
}

fn irq(cpu: usize) {
    let Some((iar, intid)) = gic::ack_intid() else {
        return;
    };
    if intid == VTIMER_INTID {
        // Level-triggered: mask at the source before EOI so it does not fire again.
        write_sysreg!("cntv_ctl_el0", CNTV_CTL_ENABLE | CNTV_CTL_IMASK);
        TIMER_AT[cpu].store(arch::now(), Release);
        if cpu == 1 && smp::WATCHDOG_ARMED.load(Acquire) {
            smp::WATCHDOG_ARMED.store(false, Release);
            gic::send_sgi(smp::SGI_WATCHDOG, 0);
        }
    }
    if intid == PTIMER_INTID {
        // Level-triggered too: masked at the source before EOI.
        write_sysreg!("cntp_ctl_el0", CNTV_CTL_ENABLE | CNTV_CTL_IMASK);
        if cpu == 0 {
            PTIMER_AT.store(read_sysreg!("cntpct_el0"), Release);
        }
    }
    let pmu = PMU_INTID.load(Acquire);
    if pmu != 0 && intid == pmu {
        // Level-sensitive: clear the overflow at its source before the EOI.
        let ovs = read_sysreg!("pmovsset_el0");
        write_sysreg!("pmovsclr_el0", ovs);
        arch::isb();
        PMU_OVS[cpu].store(PMU_OVS[cpu].load(Relaxed) | ovs, Release);
        PMU_IRQS[cpu].store(PMU_IRQS[cpu].load(Relaxed).wrapping_add(1), Release);
    }
    if cpu == 1 && intid == smp::SGI_PING {
        gic::send_sgi(smp::SGI_PONG, 0);
    }
    if intid < 64 {
        let v = SEEN[cpu].load(Relaxed);
        SEEN[cpu].store(v | (1 << intid), Release);
    }
    gic::eoi(iar);
}
