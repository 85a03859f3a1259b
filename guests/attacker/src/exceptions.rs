//! EL1 exception handling for every vCPU of both roles: the `el1_exception` hook of
//! guests/rt, whose `vectors.S` saves the context into a [`Frame`].
//!
//! * Synchronous exceptions at EL1 on vCPU 0 are recorded (ESR/FAR/ELR). Inside
//!   [`guarded`] the faulting instruction is skipped (ELR += 4) and the case inspects
//!   the record; any other one abandons the running case through `check_recover`, so a
//!   case that faults unexpectedly fails alone and the next one runs. Every synchronous
//!   external abort is counted ([`injected_faults`]): those are the ones Bothy injects
//!   and reports, which the QEMU test compares with Bothy's rate-limited reports.
//! * Exceptions from EL0 (the AArch32 case) are recorded with the vector they came
//!   through, and the vCPU goes back to EL1 through `el0_return` (low.S).
//! * IRQs are acknowledged and completed (EOImode 0). Each vCPU counts the SGIs it took
//!   by INTID; the virtual timer calls the victim's tick (or is masked for the attacker).
//!
//! State is in atomics used only with plain loads and stores: the MMU is off, so memory
//! is Device memory and exclusives are not guaranteed to work. Each word has one writer
//! at a time.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::uart::println;
use rt::exceptions::{park, Frame, KIND_IRQ_SPX, KIND_SYNC_SPX};
use rt::gic::{self, VTIMER_INTID};

/// SPSR to resume EL1 code at: EL1h, DAIF all masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// Vector kinds (offset / 0x80) for exceptions from a lower EL.
pub const KIND_SYNC_LOWER_A32: u64 = 12;
const KIND_IRQ_LOWER_A64: u64 = 9;
const KIND_IRQ_LOWER_A32: u64 = 13;

/// ESR_EL1 exception classes.
pub const EC_UNKNOWN: u64 = 0x00;
pub const EC_SVC32: u64 = 0x11;
pub const EC_DABT_LOW: u64 = 0x24;
pub const EC_DABT_CUR: u64 = 0x25;
/// ISS bit 10 of an abort: FAR not valid.
pub const ESR_FNV: u64 = 1 << 10;
/// DFSC: synchronous external abort, not on a table walk (what Bothy injects).
pub const DFSC_EXT_ABORT: u64 = 0x10;

const CNTV_CTL_ENABLE: u64 = 1;
const CNTV_CTL_IMASK: u64 = 2;
pub const NR_VCPUS: usize = 3;

extern "C" {
    /// low.S: resume `run_guarded`'s caller with 1.
    fn check_recover() -> !;
    /// low.S: return from `enter_el0`.
    fn el0_return() -> !;
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
        self.esr & 0x3f
    }
    /// A synchronous external abort on a data access, as Bothy injects them.
    pub fn is_sea(&self) -> bool {
        (self.ec() == EC_DABT_CUR || self.ec() == EC_DABT_LOW) && self.fsc() == DFSC_EXT_ABORT
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ESR_EL1={:#x} (EC {:#x}, ISS {:#x}) FAR_EL1={:#x} ELR_EL1={:#x}",
            self.esr,
            self.ec(),
            self.esr & 0x1ff_ffff,
            self.far,
            self.elr,
        )
    }
}

// ---- vCPU 0's fault record -----------------------------------------------------------

static EXPECT_FAULT: AtomicBool = AtomicBool::new(false);
static FAULTS: AtomicU32 = AtomicU32::new(0);
static INJECTED: AtomicU64 = AtomicU64::new(0);
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);
static LAST_ELR: AtomicU64 = AtomicU64::new(0);
/// Set by the runner while a case runs under run_guarded.
pub static IN_CASE: AtomicBool = AtomicBool::new(false);
/// Why the last case was abandoned: a vector kind, or u64::MAX for a panic.
static ABORT_KIND: AtomicU64 = AtomicU64::new(0);

pub fn last_fault() -> Fault {
    Fault {
        esr: LAST_ESR.load(Acquire),
        far: LAST_FAR.load(Acquire),
        elr: LAST_ELR.load(Acquire),
    }
}

/// Synchronous external aborts taken so far (vCPU 0).
pub fn injected_faults() -> u64 {
    INJECTED.load(Acquire)
}

/// Why a case was abandoned, as a sentence.
pub fn abort_reason() -> crate::msg::Msg {
    match ABORT_KIND.load(Acquire) {
        u64::MAX => crate::msg::msg!("panic (see '# panic' above)"),
        KIND_SYNC_SPX => crate::msg::msg!("unexpected synchronous exception: {}", last_fault()),
        k => crate::msg::msg!("unexpected exception at vector {k}: {}", last_fault()),
    }
}

pub fn clear_expect() {
    EXPECT_FAULT.store(false, SeqCst);
}

/// Run `f` on vCPU 0 allowing one synchronous exception at EL1: the faulting instruction
/// is skipped and the exception returned.
pub fn guarded<R>(f: impl FnOnce() -> R) -> (R, Option<Fault>) {
    let before = FAULTS.load(SeqCst);
    EXPECT_FAULT.store(true, SeqCst);
    let r = f();
    EXPECT_FAULT.store(false, SeqCst);
    let fault = (FAULTS.load(SeqCst) != before).then(last_fault);
    (r, fault)
}

// ---- EL0 trips (vCPU 0) --------------------------------------------------------------

static IN_EL0: AtomicBool = AtomicBool::new(false);
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
    extern "C" {
        fn enter_el0(entry: u64, spsr: u64, r0: u64, r1: u64, r2: u64);
    }
    IN_EL0.store(true, SeqCst);
    // SAFETY: enter_el0 saves our callee-saved registers and SP and erets; the handler
    // sends the first synchronous exception from EL0 to el0_return, which restores them.
    unsafe { enter_el0(entry, spsr, r0, r1, r2) };
    IN_EL0.store(false, SeqCst);
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
static IN_HANDLER: [AtomicBool; NR_VCPUS] = [const { AtomicBool::new(false) }; NR_VCPUS];
/// The victim's tick: called from the timer interrupt.
pub static VICTIM: AtomicBool = AtomicBool::new(false);

pub fn sgis_taken(cpu: usize, intid: u32) -> u32 {
    SGIS[cpu][intid as usize & 15].load(Acquire)
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
        KIND_IRQ_SPX | KIND_IRQ_LOWER_A64 | KIND_IRQ_LOWER_A32 => irq(cpu),
        KIND_SYNC_SPX => sync(cpu, frame),
        _ if cpu == 0 && IN_EL0.load(SeqCst) => from_el0(frame, kind),
        _ => abandon(cpu, frame, kind, record(cpu)),
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
        if fault.is_sea() {
            INJECTED.store(INJECTED.load(Relaxed) + 1, Release);
        }
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

/// The first exception of a trip to EL0: record it and leave EL0 for good.
fn from_el0(frame: &mut Frame, kind: u64) {
    let f = record(0);
    EL0_KIND.store(kind, Release);
    EL0_ESR.store(f.esr, Release);
    EL0_FAR.store(f.far, Release);
    EL0_ELR.store(f.elr, Release);
    frame.elr = el0_return as *const () as u64;
    frame.spsr = SPSR_EL1H_MASKED;
}

/// An exception nobody expected: abandon vCPU 0's running case, or park.
fn abandon(cpu: usize, frame: &mut Frame, kind: u64, fault: Fault) {
    if cpu == 0 && IN_CASE.load(SeqCst) {
        ABORT_KIND.store(kind, Release);
        frame.elr = check_recover as *const () as u64;
        frame.spsr = SPSR_EL1H_MASKED;
        return;
    }
    println!("# vCPU {cpu}: unexpected exception (vector {kind}): {fault}; parking");
    park();
}

/// Panic path: abandon the running case on vCPU 0, park otherwise.
pub fn panic_recover() -> ! {
    let cpu = arch::cpu_id().min(NR_VCPUS - 1);
    IN_HANDLER[cpu].store(false, Relaxed);
    if cpu == 0 && IN_CASE.load(SeqCst) {
        ABORT_KIND.store(u64::MAX, Release);
        // SAFETY: run_guarded is live below us on this stack (IN_CASE).
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
