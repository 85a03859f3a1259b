//! 32-bit user code (AArch32 EL0) under this 64-bit kernel, as an armhf container or an
//! Android 32-bit app runs: the exits it causes must be handled by the hypervisor as the
//! architecture says, not kill the VM.
//!
//! [`run_a32`] drops to EL0 in A32 or T32 state with R0–R7 set, runs a hand-encoded
//! snippet and comes back when the snippet executes `SVC #0` (`rt::el0`: a setjmp/longjmp
//! around the exception return). Exceptions from the snippet arrive at this kernel's
//! "lower EL using AArch32" vectors (kinds 12 and 13 of guests/rt), handled by [`sync`]:
//! the SVC ends the run; an expected data abort is counted and stepped over; anything
//! else ends the run and is reported.
//!
//! The snippets (one per instruction set) do the same four things, counting each step
//! in R5 so that a wrong step-over by the hypervisor shows as a wrong count:
//! a store to the UART's data register (emulated MMIO: a 16-bit instruction in T32),
//! `WFI` (trapped: returns at once because an SGI is pending, masked at EL0), a load from
//! an address outside RAM and every device (the hypervisor injects a data abort, which
//! must come to the AArch32 vector), and `SVC #0`.

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch::read_sysreg;
use rt::el0::back_to_el1;
use rt::exceptions::{Frame, EC_DABT_LOW, EC_SVC32};

/// T32, user mode, A/I/F masked: the pending SGI must not be taken at EL0.
const SPSR_T32_USR_MASKED: u64 = 0x1f0;
const SPSR_A32_USR_MASKED: u64 = 0x1d0;
const PSR_T: u64 = 1 << 5;

/// `str r1,[r0]; adds r5,#1; wfi; adds r5,#1; ldr r2,[r3]; adds r5,#1; svc #0`,
/// every one a 16-bit T32 instruction.
#[repr(align(4))]
struct T32([u16; 8]);
static T32_SNIPPET: T32 = T32([
    0x6001, 0x3501, 0xbf30, 0x3501, 0x681a, 0x3501, 0xdf00, 0xbf00,
]);
/// Offset of the aborting `ldr` in [`T32_SNIPPET`].
pub const T32_LOAD_AT: u64 = 8;

/// The same in A32: `str r1,[r0]; add r5,r5,#1; wfi; add r5,r5,#1; ldr r2,[r3];
/// add r5,r5,#1; svc #0`.
static A32_SNIPPET: [u32; 7] = [
    0xe580_1000,
    0xe285_5001,
    0xe320_f003,
    0xe285_5001,
    0xe593_2000,
    0xe285_5001,
    0xef00_0000,
];
pub const A32_LOAD_AT: u64 = 16;

/// What the last run did: R5 at the SVC, aborts taken (and the ELR and ESR of the
/// last), and an unexpected exception's ESR (0: none).
static R5_AT_SVC: AtomicU64 = AtomicU64::new(u64::MAX);
static ABORTS: AtomicU64 = AtomicU64::new(0);
static ABORT_ELR: AtomicU64 = AtomicU64::new(0);
static ABORT_ESR: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED_ESR: AtomicU64 = AtomicU64::new(0);

/// The outcome of one run.
pub struct Run {
    pub r5_at_svc: u64,
    pub aborts: u64,
    /// The last abort's return address, relative to the snippet.
    pub abort_at: u64,
    pub abort_esr: u64,
    pub unexpected_esr: u64,
}

/// Run the snippet for `thumb` (T32) or A32 with R0 = `uart_dr`, R1 = `byte`,
/// R3 = `bad_address`.
pub fn run_a32(thumb: bool, uart_dr: u64, byte: u8, bad_address: u64) -> Run {
    R5_AT_SVC.store(u64::MAX, SeqCst);
    ABORTS.store(0, SeqCst);
    ABORT_ELR.store(0, SeqCst);
    ABORT_ESR.store(0, SeqCst);
    UNEXPECTED_ESR.store(0, SeqCst);
    let (entry, spsr) = if thumb {
        (T32_SNIPPET.0.as_ptr() as u64, SPSR_T32_USR_MASKED)
    } else {
        (A32_SNIPPET.as_ptr() as u64, SPSR_A32_USR_MASKED)
    };
    let regs = [uart_dr, u64::from(byte), 0, bad_address, 0, 0, 0, 0];
    // SAFETY: the snippet touches only the registers given and the addresses in them,
    // and `sync` below ends the trip at its SVC or at any exception it does not expect.
    unsafe { rt::el0::run(entry, spsr, &regs) };
    Run {
        r5_at_svc: R5_AT_SVC.load(SeqCst),
        aborts: ABORTS.load(SeqCst),
        abort_at: ABORT_ELR.load(SeqCst).wrapping_sub(entry),
        abort_esr: ABORT_ESR.load(SeqCst),
        unexpected_esr: UNEXPECTED_ESR.load(SeqCst),
    }
}

/// A synchronous exception from AArch32 EL0 (vector kind 12).
pub fn sync(frame: &mut Frame) {
    let esr = read_sysreg!("esr_el1");
    match esr >> 26 {
        EC_SVC32 => {
            R5_AT_SVC.store(frame.x[5] & 0xffff_ffff, SeqCst);
            back_to_el1(frame);
        }
        EC_DABT_LOW => {
            ABORTS.fetch_add(1, SeqCst);
            ABORT_ELR.store(frame.elr, SeqCst);
            ABORT_ESR.store(esr, SeqCst);
            // Every load in the snippets is 16 bits in T32 and 32 in A32.
            frame.elr += if frame.spsr & PSR_T != 0 { 2 } else { 4 };
        }
        _ => {
            UNEXPECTED_ESR.store(esr | (1 << 63), SeqCst);
            back_to_el1(frame);
        }
    }
}
