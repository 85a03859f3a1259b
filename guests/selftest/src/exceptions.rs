//! EL1 exception handling for both vCPUs: the `el1_exception` hook of guests/rt, whose
//! `vectors.S` saves the context into a [`Frame`].
//!
//! * Synchronous exceptions on the primary are recorded (ESR/FAR/ELR). Inside
//!   [`guarded`] the faulting instruction is skipped (ELR += 4) and the check inspects the
//!   record; any other one abandons the running check through `check_recover`, so a
//!   faulting check fails alone and the run goes on.
//! * IRQs are acknowledged with ICC_IAR1_EL1 and completed with ICC_EOIR1_EL1 (EOImode 0);
//!   each vCPU records which INTIDs it saw, when its virtual timer fired and which PMU
//!   overflows it took (cleared at the source before the EOI). vCPU 1 also
//!   plays its part of the IPI ping-pong and the WFI watchdog here.
//! * On vCPU 1 any synchronous exception is recorded for the primary to report and vCPU 1
//!   parks.
//!
//! State is in atomics used only with plain loads and stores (`ldar`/`stlr`): the MMU is
//! off, and exclusives on Device memory are not guaranteed to work. Each word has a single
//! writer at a time (its own vCPU's handler, or the primary while that handler is quiet).

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::gic;
use crate::platform::{NR_VCPUS, PTIMER_INTID, VTIMER_INTID};
use crate::smp;
use crate::uart::println;
use rt::exceptions::{park, Frame, KIND_IRQ_SPX, KIND_SYNC_SPX};

/// Vector kinds (offset / 0x80) of exceptions from AArch32 EL0 (el0.rs).
const KIND_SYNC_A32: u64 = 12;
const KIND_IRQ_A32: u64 = 13;

/// SPSR for check_recover: EL1h, DAIF all masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// ESR_EL1 exception classes we name.
pub const EC_UNKNOWN: u64 = 0x00;
pub const EC_DABT_CUR: u64 = 0x25;
pub const EC_DABT_LOW: u64 = 0x24;
/// ESR_EL1.ISS bit 10 for aborts: FAR not valid.
pub const ESR_FNV: u64 = 1 << 10;
/// Data/instruction fault status code field.
pub const ESR_FSC_MASK: u64 = 0x3f;
/// DFSC: synchronous external abort, not on a table walk.
pub const DFSC_EXT_ABORT: u64 = 0x10;

const CNTV_CTL_ENABLE: u64 = 1 << 0;
const CNTV_CTL_IMASK: u64 = 1 << 1;

extern "C" {
    /// guard.S: resume `run_guarded`'s caller with 1.
    fn check_recover() -> !;
}

/// A recorded synchronous exception.
#[derive(Clone, Copy)]
pub struct Fault {
    pub esr: u64,
    pub far: u64,
    pub elr: u64,
}

impl Fault {
    pub fn ec(&self) -> u64 {
        self.esr >> 26
    }
    pub fn fsc(&self) -> u64 {
        self.esr & ESR_FSC_MASK
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ESR_EL1={:#x} (EC {:#x}, ISS {:#x}) FAR_EL1={:#x} ELR_EL1={:#x} (image+{:#x})",
            self.esr,
            self.ec(),
            self.esr & 0x1ff_ffff,
            self.far,
            self.elr,
            self.elr.wrapping_sub(crate::image_base() as u64)
        )
    }
}

// ---- primary-vCPU fault record -------------------------------------------------------

static EXPECT_FAULT: AtomicBool = AtomicBool::new(false);
static FAULTS: AtomicU32 = AtomicU32::new(0);
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);
static LAST_ELR: AtomicU64 = AtomicU64::new(0);
/// Set by the runner while a check runs under run_guarded.
pub static IN_CHECK: AtomicBool = AtomicBool::new(false);
/// Why the last check was abandoned (see `Abort`).
static ABORT_KIND: AtomicU64 = AtomicU64::new(0);

/// Why a check was abandoned.
pub enum Abort {
    Sync(Fault),
    Vector(u64, Fault),
    Panic,
}

pub fn last_fault() -> Fault {
    Fault {
        esr: LAST_ESR.load(Acquire),
        far: LAST_FAR.load(Acquire),
        elr: LAST_ELR.load(Acquire),
    }
}

pub fn take_abort() -> Abort {
    match ABORT_KIND.load(Acquire) {
        u64::MAX => Abort::Panic,
        KIND_SYNC_SPX => Abort::Sync(last_fault()),
        k => Abort::Vector(k, last_fault()),
    }
}

pub fn clear_expect() {
    EXPECT_FAULT.store(false, SeqCst);
}

/// Run `f` on the primary vCPU allowing one synchronous exception: the faulting
/// instruction is skipped and the exception returned.
pub fn guarded<R>(f: impl FnOnce() -> R) -> (R, Option<Fault>) {
    let before = FAULTS.load(SeqCst);
    EXPECT_FAULT.store(true, SeqCst);
    let r = f();
    EXPECT_FAULT.store(false, SeqCst);
    let fault = (FAULTS.load(SeqCst) != before).then(last_fault);
    (r, fault)
}

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
static IN_HANDLER: [AtomicBool; NR_VCPUS] = [const { AtomicBool::new(false) }; NR_VCPUS];

/// vCPU 1's record of its own fault, for the primary to report.
pub static SEC_FAULTED: AtomicBool = AtomicBool::new(false);
static SEC_ESR: AtomicU64 = AtomicU64::new(0);
static SEC_FAR: AtomicU64 = AtomicU64::new(0);
static SEC_ELR: AtomicU64 = AtomicU64::new(0);

pub fn sec_fault() -> Option<Fault> {
    SEC_FAULTED.load(Acquire).then(|| Fault {
        esr: SEC_ESR.load(Acquire),
        far: SEC_FAR.load(Acquire),
        elr: SEC_ELR.load(Acquire),
    })
}

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
    if IN_HANDLER[cpu].load(Relaxed) {
        println!(
            "# vCPU {cpu}: nested exception (vector {kind}) ESR_EL1={:#x} ELR_EL1={:#x}; parking",
            read_sysreg!("esr_el1"),
            read_sysreg!("elr_el1")
        );
        park();
    }
    IN_HANDLER[cpu].store(true, Relaxed);
    match kind {
        KIND_IRQ_SPX | KIND_IRQ_A32 => irq(cpu),
        KIND_SYNC_SPX => sync(cpu, frame),
        KIND_SYNC_A32 if cpu == 0 => crate::el0::sync(frame),
        _ => {
            let fault = record(cpu);
            abandon(cpu, frame, kind, fault);
        }
    }
    IN_HANDLER[cpu].store(false, Relaxed);
}

fn record(cpu: usize) -> Fault {
    let fault = Fault {
        esr: read_sysreg!("esr_el1"),
        far: read_sysreg!("far_el1"),
        elr: read_sysreg!("elr_el1"),
    };
    if cpu == 0 {
        LAST_ESR.store(fault.esr, Release);
        LAST_FAR.store(fault.far, Release);
        LAST_ELR.store(fault.elr, Release);
        FAULTS.store(FAULTS.load(Relaxed).wrapping_add(1), Release);
    }
    fault
}

fn sync(cpu: usize, frame: &mut Frame) {
    let fault = record(cpu);
    if cpu == 0 && EXPECT_FAULT.load(SeqCst) {
        EXPECT_FAULT.store(false, SeqCst);
        frame.elr += 4;
        return;
    }
    abandon(cpu, frame, KIND_SYNC_SPX, fault);
}

/// An exception nobody expected: abandon the primary's running check, or park.
fn abandon(cpu: usize, frame: &mut Frame, kind: u64, fault: Fault) {
    if cpu == 0 && IN_CHECK.load(SeqCst) {
        ABORT_KIND.store(kind, Release);
        frame.elr = check_recover as *const () as u64;
        frame.spsr = SPSR_EL1H_MASKED;
        return;
    }
    if cpu != 0 {
        SEC_ESR.store(fault.esr, Release);
        SEC_FAR.store(fault.far, Release);
        SEC_ELR.store(fault.elr, Release);
        SEC_FAULTED.store(true, Release);
    }
    println!("# vCPU {cpu}: unexpected exception (vector {kind}): {fault}; parking");
    park();
}

/// Panic path: abandon the running check on the primary, park otherwise.
pub fn panic_recover() -> ! {
    let cpu = arch::cpu_id().min(NR_VCPUS - 1);
    IN_HANDLER[cpu].store(false, Relaxed);
    if cpu == 0 && IN_CHECK.load(SeqCst) {
        ABORT_KIND.store(u64::MAX, Release);
        // SAFETY: run_guarded is live below us on this stack (IN_CHECK).
        unsafe { check_recover() };
    }
    park()
}

fn irq(cpu: usize) {
    let iar = gic::ack();
    let intid = iar & 0xff_ffff;
    if (gic::INTID_SPECIAL_FIRST..=gic::INTID_SPECIAL_LAST).contains(&intid) {
        return;
    }
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
