//! The guard: many checks in one boot, and an exception or a panic in one of them fails
//! that check alone.
//!
//! Why it exists: the selftest and the attacker each run a list of checks (the attacker
//! calls them cases) one after another on the primary vCPU (MPIDR Aff0 = 0, `cpu` 0
//! below), in a single boot of a single VM, and many of those checks make the CPU take
//! an exception on purpose: a load from an IPA nothing backs must come back as a
//! synchronous external abort, an EL2 register must be UNDEFINED at EL1, an HVC may be
//! UNDEFINED on bare QEMU. A guest without this would die at the first surprise and
//! report nothing about the checks after it. So:
//!
//! * [`guarded`] runs a closure that may fault once: the faulting instruction is skipped
//!   (ELR += 4, the closure carries on with whatever the instruction left in its
//!   destination) and the [`Fault`] is returned for the check to judge.
//! * [`run`] runs one whole check. A synchronous exception outside [`guarded`], an
//!   exception at any other vector, or a panic abandons it: the handler returns into
//!   `check_recover` (guard.S), which restores the registers and stack `run_guarded`
//!   saved (a setjmp/longjmp) and [`run`] returns why as an [`Abort`]. The runner
//!   prints a failed `TEST` line and goes on with the next check.
//! * On any other vCPU, or on the primary outside [`run`], an unexpected exception is
//!   printed as a `#` line and the vCPU parks (DAIF masked, WFI); what a secondary took
//!   is kept for the primary to report ([`secondary_fault`]). An exception taken while
//!   the same vCPU's handler runs (a fault in the handler itself) parks too, rather than
//!   recursing until the stack runs out.
//!
//! The guest's `el1_exception` keeps the dispatch (which vector means what is its
//! business): it wraps the whole handler in [`handler`], sends synchronous exceptions at
//! EL1 (`KIND_SYNC_SPX`) to [`sync`] and the vectors it does not handle to
//! [`unexpected`]; its panic handler ends in [`panic_recover`]. `cpu` is the guest's own
//! vCPU index (it may clamp it); 0 is the primary, the only one that runs checks.
//!
//! What the guests rely on:
//! * One check at a time, on the primary only: one jump buffer, no nesting of [`run`].
//! * [`run`] leaves IRQs as the check left them if it returned, masked if it was
//!   abandoned (the handler resumes `check_recover` with `SPSR_EL1H_MASKED`); the runner
//!   masks them and quiets its timers before the next check.
//! * Every synchronous exception the primary takes goes through [`record`] (the guest's
//!   own handlers call it too), and each synchronous external abort among them is
//!   counted ([`injected_faults`]): those are the faults Bothy injects and reports, which
//!   the attacker's host test compares with Bothy's rate-limited reports.
//! * The lines printed here are part of the guests' output: `# vCPU <n>: nested
//!   exception (vector <k>) ESR_EL1=.. ELR_EL1=..; parking`, `# vCPU <n>: unexpected
//!   exception (vector <k>): <fault>; parking`, and [`Abort`]'s sentences, which the
//!   runners put into their failed `TEST` lines.
//!
//! State is in atomics used only with plain loads and stores: the MMU is off, so memory
//! is Device memory and exclusives are not guaranteed to work. Each word has one writer
//! at a time (its vCPU's handler, or the primary while no check runs).

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::exceptions::{park, Fault, Frame, KIND_SYNC_SPX, SPSR_EL1H_MASKED};
use crate::{println, read_sysreg};

// guard.S is assembled in lib.rs, after the jmpbuf.S macros it uses.
extern "C" {
    /// guard.S: call `f`; 0 when it returns, 1 when `check_recover` abandoned it.
    fn run_guarded(f: extern "C" fn()) -> u64;
    /// guard.S: resume `run_guarded`'s caller with 1.
    fn check_recover() -> !;
}

/// vCPU indices the per-vCPU state covers; a larger index shares the last slot.
const MAX_VCPUS: usize = 8;

/// Why a check was abandoned.
pub enum Abort {
    /// A synchronous exception at EL1 outside [`guarded`].
    Sync(Fault),
    /// An exception at a vector the guest does not handle (the vector kind).
    Vector(u64, Fault),
    /// A panic (the guest's panic handler printed `# panic ...` first).
    Panic,
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Abort::Sync(fault) => write!(f, "unexpected synchronous exception: {fault}"),
            Abort::Vector(kind, fault) => {
                write!(f, "unexpected exception at vector {kind}: {fault}")
            }
            Abort::Panic => f.write_str("panic (see '# panic' above)"),
        }
    }
}

// ---- the primary's record ------------------------------------------------------------

/// Set while [`guarded`] runs: the next synchronous exception is skipped.
static EXPECT_FAULT: AtomicBool = AtomicBool::new(false);
/// Synchronous exceptions recorded, and how many were synchronous external aborts.
static FAULTS: AtomicU32 = AtomicU32::new(0);
static INJECTED: AtomicU64 = AtomicU64::new(0);
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);
static LAST_ELR: AtomicU64 = AtomicU64::new(0);
/// Set while [`run`] runs a check: an unexpected exception abandons it.
static IN_RUN: AtomicBool = AtomicBool::new(false);
/// Why the last check was abandoned: a vector kind, or `u64::MAX` for a panic.
static ABORT_KIND: AtomicU64 = AtomicU64::new(0);

/// Run one check, `f`, on the primary vCPU. `Err` when it was abandoned (see the module
/// doc); what the check itself concluded, `f` stores where its runner reads it.
pub fn run(f: extern "C" fn()) -> Result<(), Abort> {
    IN_RUN.store(true, SeqCst);
    // SAFETY: run_guarded saves our callee-saved registers and stack and calls `f`, a
    // plain extern "C" fn; if the check is abandoned, check_recover restores them and
    // returns 1 here, while IN_RUN tells the handlers that this frame is live.
    let abandoned = unsafe { run_guarded(f) } != 0;
    IN_RUN.store(false, SeqCst);
    EXPECT_FAULT.store(false, SeqCst);
    if !abandoned {
        return Ok(());
    }
    Err(match ABORT_KIND.load(Acquire) {
        u64::MAX => Abort::Panic,
        KIND_SYNC_SPX => Abort::Sync(last_fault()),
        kind => Abort::Vector(kind, last_fault()),
    })
}

/// Run `f` on the primary vCPU allowing one synchronous exception at EL1: the faulting
/// instruction is skipped and the exception returned.
pub fn guarded<R>(f: impl FnOnce() -> R) -> (R, Option<Fault>) {
    let before = FAULTS.load(SeqCst);
    EXPECT_FAULT.store(true, SeqCst);
    let r = f();
    EXPECT_FAULT.store(false, SeqCst);
    let fault = (FAULTS.load(SeqCst) != before).then(last_fault);
    (r, fault)
}

/// The primary's last recorded synchronous exception.
pub fn last_fault() -> Fault {
    Fault {
        esr: LAST_ESR.load(Acquire),
        far: LAST_FAR.load(Acquire),
        elr: LAST_ELR.load(Acquire),
    }
}

/// Synchronous external aborts the primary took so far.
pub fn injected_faults() -> u64 {
    INJECTED.load(Acquire)
}

// ---- every vCPU ----------------------------------------------------------------------

static IN_HANDLER: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// What parked a vCPU other than the primary, for the primary to report.
static SEC_FAULTED: AtomicBool = AtomicBool::new(false);
static SEC_ESR: AtomicU64 = AtomicU64::new(0);
static SEC_FAR: AtomicU64 = AtomicU64::new(0);
static SEC_ELR: AtomicU64 = AtomicU64::new(0);

fn in_handler(cpu: usize) -> &'static AtomicBool {
    &IN_HANDLER[cpu.min(MAX_VCPUS - 1)]
}

/// Run the body of `cpu`'s exception handler for vector `kind`; park instead if `cpu` is
/// already inside it.
pub fn handler(cpu: usize, kind: u64, body: impl FnOnce()) {
    if in_handler(cpu).load(Relaxed) {
        println!(
            "# vCPU {cpu}: nested exception (vector {kind}) ESR_EL1={:#x} ELR_EL1={:#x}; parking",
            read_sysreg!("esr_el1"),
            read_sysreg!("elr_el1")
        );
        park();
    }
    in_handler(cpu).store(true, Relaxed);
    body();
    in_handler(cpu).store(false, Relaxed);
}

/// Read the synchronous exception being handled; on the primary, record and count it.
pub fn record(cpu: usize) -> Fault {
    let fault = Fault::read();
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

/// A synchronous exception at EL1 (`KIND_SYNC_SPX`): skipped inside [`guarded`], else
/// [`unexpected`].
pub fn sync(cpu: usize, frame: &mut Frame) {
    let fault = record(cpu);
    if cpu == 0 && EXPECT_FAULT.load(SeqCst) {
        EXPECT_FAULT.store(false, SeqCst);
        frame.elr += 4;
        return;
    }
    abandon(cpu, frame, KIND_SYNC_SPX, fault);
}

/// An exception at vector `kind` the guest does not handle: abandon the primary's check,
/// or report and park.
pub fn unexpected(cpu: usize, frame: &mut Frame, kind: u64) {
    let fault = record(cpu);
    abandon(cpu, frame, kind, fault);
}

fn abandon(cpu: usize, frame: &mut Frame, kind: u64, fault: Fault) {
    if cpu == 0 && IN_RUN.load(SeqCst) {
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

/// The exception that parked a vCPU other than the primary, if one did.
pub fn secondary_fault() -> Option<Fault> {
    SEC_FAULTED.load(Acquire).then(|| Fault {
        esr: SEC_ESR.load(Acquire),
        far: SEC_FAR.load(Acquire),
        elr: SEC_ELR.load(Acquire),
    })
}

/// End of the guest's panic handler: abandon the primary's running check, park
/// otherwise.
pub fn panic_recover(cpu: usize) -> ! {
    in_handler(cpu).store(false, Relaxed);
    if cpu == 0 && IN_RUN.load(SeqCst) {
        ABORT_KIND.store(u64::MAX, Release);
        // SAFETY: run_guarded is live below us on this stack (IN_RUN).
        unsafe { check_recover() };
    }
    park()
}
