//! Trips to EL0: run a snippet of user code from the primary vCPU and come back to the
//! Rust code that started it, as if it were a function call.
//!
//! Why it exists: a hypervisor must handle what user code does under a guest kernel, in
//! particular 32-bit user code (an armhf container, an Android 32-bit app) whose trapped
//! instructions are 2 or 4 bytes long and whose aborts go to the kernel's "lower EL
//! using AArch32" vectors. The selftest (`aarch32_el0`: T32 and A32 snippets that count
//! their steps) and the attacker (`aarch32_el0`: one trapped instruction per trip) both
//! drop to EL0 to see that; they differ only in what the snippets do and how each ends.
//!
//! How: [`run`] (el0.S `run_el0`) saves the callee-saved registers and SP, loads R0-R7,
//! and erets to the snippet in the mode its SPSR names. The snippet runs with D/A/I/F as
//! that SPSR sets them. Every exception from it arrives at the guest's `el1_exception`
//! at a lower-EL vector (`KIND_SYNC_LOWER_A32`, ...); the guest decides whether the trip
//! goes on (it may edit the frame, e.g. step over an aborting load) or ends: then it calls
//! [`back_to_el1`], which makes the handler's `eret` land in `el0_return` at EL1h with
//! D/A/I/F masked, and `el0_return` restores what `run_el0` saved and returns from [`run`].
//!
//! What the guests rely on:
//! * The primary vCPU only, one trip at a time (one save buffer), not from a handler.
//! * IRQs stay masked after the trip ([`back_to_el1`] resumes with them masked).
//! * [`running`] is true from the eret to EL0 until [`run`] returns, so a handler can tell
//!   an exception of the snippet from one of EL1 code.
//! * R8-R10 (x8-x10) start at zero; R11-R14 (x11-x14) hold whatever EL1 left there, so a
//!   snippet sets what it uses beyond R7 itself.

use core::sync::atomic::{AtomicBool, Ordering::SeqCst};

use crate::exceptions::{Frame, SPSR_EL1H_MASKED};

// el0.S is assembled in lib.rs, after the jmpbuf.S macros it uses.
extern "C" {
    /// el0.S: drop to EL0 at `entry` with `spsr` and R0-R7 = `regs`; returns 0 through
    /// `el0_return`.
    fn run_el0(entry: u64, spsr: u64, regs: &[u64; 8]) -> u64;
    /// el0.S: back on `run_el0`'s stack and registers, return from it.
    fn el0_return() -> !;
}

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Run the user code at `entry` in the mode `spsr` names (EL0; AArch32 state for T32 or
/// A32 code) with R0-R7 = `regs`, until the guest's handler ends the trip with
/// [`back_to_el1`].
///
/// # Safety
///
/// `entry` is code for that mode that touches only the registers it is given and the
/// addresses in them (the MMU is off: EL0 could write anywhere), and the guest's handler
/// ends the trip at an exception of it (at the latest at the first one it does not
/// expect), so that `el0_return` runs while the frame `run_el0` saved is still live.
/// Primary vCPU only, not from an exception handler.
pub unsafe fn run(entry: u64, spsr: u64, regs: &[u64; 8]) {
    RUNNING.store(true, SeqCst);
    // SAFETY: run_el0 saves our callee-saved registers and SP, erets to the snippet and
    // comes back through el0_return, which restores them (the caller's contract).
    unsafe { run_el0(entry, spsr, regs) };
    RUNNING.store(false, SeqCst);
}

/// Whether the primary is on a trip to EL0.
pub fn running() -> bool {
    RUNNING.load(SeqCst)
}

/// From the guest's handler: end the trip; the handler's `eret` returns from [`run`].
pub fn back_to_el1(frame: &mut Frame) {
    frame.elr = el0_return as *const () as u64;
    frame.spsr = SPSR_EL1H_MASKED;
}
