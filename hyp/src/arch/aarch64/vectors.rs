//! EL2 exception vectors and the guest entry/exit path.
//!
//! This is Bothy's hot path, so it does as little as possible (DESIGN.md §4):
//! an exit from the guest saves the registers Rust code may clobber — x0–x18,
//! x30, ELR_EL2 and SPSR_EL2 — into a [`GuestFrame`] at the top of this CPU's
//! stack, calls the handler in [`crate::exit`] for the exit's kind with the frame,
//! restores them and `eret`s. x19–x29 are callee-saved in the AAPCS64: Rust
//! code hands them back unchanged, so they stay in the registers, and their
//! slots in the frame are stale. The handler answers with a [`Resume`] for the
//! two exceptions: an exit that transfers one of them (an MMIO or system
//! register access naming x19–x29) has them stored and is handled again by
//! [`crate::exit::handle_exit_all`]; an exit that may change vCPU has them stored
//! too and goes to the scheduler through the same function; an exit that rewrote the
//! whole frame (a vCPU (re)start) has them loaded from it. EL1 system registers, FP/SIMD (the
//! hypervisor is built soft-float and never touches them) and the vGIC's list
//! registers stay in the hardware. Because the frame sits at a fixed place per
//! CPU, entering a guest for the first time is just "point sp at the frame and
//! restore all", and switching vCPU is copying one frame out and another in
//! (`crate::exit::schedule`).
//!
//! Exceptions taken *at* EL2 are Bothy bugs: they print the syndrome and stop
//! the machine; a guest can never cause one.

use core::arch::global_asm;

/// The guest's general-purpose state as saved on exit (defined in `core`, where the
/// exit policy reads and writes it). On an ordinary exit
/// `x[FIRST_UNSAVED..=LAST_UNSAVED]` are stale (the registers still hold the guest's
/// values): only `handle_exit_all`, and code that rewrites the whole frame and returns
/// [`Resume::All`], may use them.
pub use bothy_core::exit::handle::{GuestFrame, FIRST_UNSAVED, LAST_UNSAVED};

/// `*dst = *src` in 17 load/store pairs. A vCPU switch copies a frame out and one in;
/// as a plain assignment (with a softfloat target) each became a word-at-a-time
/// `memcpy` loop four times as long.
#[inline(always)]
pub fn copy_frame(dst: &mut GuestFrame, src: &GuestFrame) {
    // SAFETY: both are valid, aligned GuestFrames (references), and `dst` is exclusive,
    // so they do not overlap; the block reads 264 bytes of `src` and writes 264 of `dst`.
    unsafe {
        core::arch::asm!(
            "ldp {a}, {b}, [{s}, #0]",   "stp {a}, {b}, [{d}, #0]",
            "ldp {a}, {b}, [{s}, #16]",  "stp {a}, {b}, [{d}, #16]",
            "ldp {a}, {b}, [{s}, #32]",  "stp {a}, {b}, [{d}, #32]",
            "ldp {a}, {b}, [{s}, #48]",  "stp {a}, {b}, [{d}, #48]",
            "ldp {a}, {b}, [{s}, #64]",  "stp {a}, {b}, [{d}, #64]",
            "ldp {a}, {b}, [{s}, #80]",  "stp {a}, {b}, [{d}, #80]",
            "ldp {a}, {b}, [{s}, #96]",  "stp {a}, {b}, [{d}, #96]",
            "ldp {a}, {b}, [{s}, #112]", "stp {a}, {b}, [{d}, #112]",
            "ldp {a}, {b}, [{s}, #128]", "stp {a}, {b}, [{d}, #128]",
            "ldp {a}, {b}, [{s}, #144]", "stp {a}, {b}, [{d}, #144]",
            "ldp {a}, {b}, [{s}, #160]", "stp {a}, {b}, [{d}, #160]",
            "ldp {a}, {b}, [{s}, #176]", "stp {a}, {b}, [{d}, #176]",
            "ldp {a}, {b}, [{s}, #192]", "stp {a}, {b}, [{d}, #192]",
            "ldp {a}, {b}, [{s}, #208]", "stp {a}, {b}, [{d}, #208]",
            "ldp {a}, {b}, [{s}, #224]", "stp {a}, {b}, [{d}, #224]",
            "ldp {a}, {b}, [{s}, #240]", "stp {a}, {b}, [{d}, #240]",
            "ldr {a}, [{s}, #256]",      "str {a}, [{d}, #256]",
            s = in(reg) src as *const GuestFrame,
            d = in(reg) dst as *mut GuestFrame,
            a = out(reg) _,
            b = out(reg) _,
            options(nostack, preserves_flags)
        )
    };
}
const _: () = assert!(core::mem::size_of::<GuestFrame>() == 264);

/// Bytes reserved at the top of every CPU's stack for its [`GuestFrame`] (16-aligned).
pub const GUEST_FRAME_SIZE: usize = 272;
const _: () = assert!(core::mem::size_of::<GuestFrame>() <= GUEST_FRAME_SIZE);
// The assembly below addresses the frame with these offsets.
const _: () = assert!(core::mem::offset_of!(GuestFrame, x) == 0);
const _: () = assert!(FIRST_UNSAVED * 8 == 152 && LAST_UNSAVED * 8 == 232);
const _: () = assert!(core::mem::offset_of!(GuestFrame, elr) == 248);
const _: () = assert!(core::mem::offset_of!(GuestFrame, spsr) == 256);

/// What the vector code does when an exit handler returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
#[must_use]
pub enum Resume {
    /// Restore the registers the exit saved; x19–x29 still hold the guest's values.
    Saved = 0,
    /// The whole frame was rewritten (the vCPU starts afresh): restore x19–x29 from
    /// it too.
    All = 1,
    /// The exit transfers one of x19–x29 and was not handled: store them in the
    /// frame, call `handle_exit_all`, then restore everything.
    SaveAllAndRetry = 2,
    /// The CPU may change vCPU (WFI, WFE, slice end, vCPU or VM stop): store x19–x29
    /// in the frame, call `handle_exit_all` (which schedules, and may leave another
    /// vCPU's registers in the frame), then restore everything.
    Schedule = 3,
}

impl Resume {
    pub fn from_raw(raw: u64) -> Self {
        match raw {
            0 => Self::Saved,
            1 => Self::All,
            2 => Self::SaveAllAndRetry,
            _ => Self::Schedule,
        }
    }
}

/// Why the guest left, as told by which vector was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitKind {
    Sync = 0,
    Irq = 1,
    Fiq = 2,
    SError = 3,
}

impl ExitKind {
    pub fn from_raw(raw: u64) -> Self {
        match raw {
            0 => Self::Sync,
            1 => Self::Irq,
            2 => Self::Fiq,
            _ => Self::SError,
        }
    }
}

global_asm!(
    r#"
// Save what Rust may clobber (x0-x18, x30, ELR, SPSR) into the frame, with x0 and
// x1 left free for the handler's arguments. Fits a vector slot (32 instructions).
.macro save_frame
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    str     x18, [sp, #144]
    mrs     x1, elr_el2
    stp     x30, x1, [sp, #240]
    mrs     x1, spsr_el2
    str     x1, [sp, #256]
.endm

// With RAS: an SError the guest caused and that is still pending is deferred into
// DISR_EL1 by the `esb` (PSTATE.A is masked on exception entry), so it is found while
// this exit is still the guest's; then SErrors are unmasked while Bothy runs, so one
// Bothy causes is taken at EL2 as its own (fatal), and `bothy_guest_resume`'s `esb`
// takes any still pending before the eret. A deferred one is handled first
// (handle_deferred_serror(syndrome, frame)); its Resume::Saved carries on with this
// exit, anything else (the VM stops) goes straight back. Keeps x1 = SPSR_EL2.
// Without RAS (no DISR_EL1, `esb` a NOP) SErrors stay masked in Bothy as before.
.macro serror_check ras
.if \ras
    esb
    mrs     x0, disr_el1
    cbz     x0, 8f
    mov     x1, sp
    bl      {handle_deferred_serror}
    msr     daifclr, #4
    cbnz    x0, bothy_guest_return
    ldr     x1, [sp, #256]
    b       9f
8:  msr     daifclr, #4
9:
.endif
.endm

// The two hot exits call their own handler(frame) from the vector itself.
.macro guest_vector handler, ras
    .balign 0x80
    save_frame
    serror_check \ras
    mov     x0, sp
    bl      \handler
    b       bothy_guest_return
.endm

// The rest call handle_other_exit(kind, frame).
.macro guest_vector_other kind, ras
    .balign 0x80
    save_frame
    serror_check \ras
    mov     x0, #\kind
    mov     x1, sp
    bl      {handle_other_exit}
    b       bothy_guest_return
.endm

.macro hyp_vector kind
    .balign 0x80
    mov     x0, #\kind
    b       bothy_hyp_fault
.endm

// The table, with (ras = 1) or without the SError checks at guest exit; a CPU installs
// the one its ID_AA64PFR0_EL1.RAS allows (vector_table).
.macro el2_vectors ras
    hyp_vector 0                    // current EL, SP_EL0
    hyp_vector 1
    hyp_vector 2
    hyp_vector 3
    hyp_vector 4                    // current EL, SP_ELx
    hyp_vector 5
    hyp_vector 6
    hyp_vector 7
    // Lower EL, AArch64: the guest's EL1 is always AArch64 (HCR_EL2.RW), so this
    // group also takes exits from 32-bit user code under it (the vector group follows
    // the state of the EL just below EL2, not of the code that trapped). Such code has
    // the same frame (R0-R14 of user mode are X0-X14); a synchronous exit from it is
    // handled by its own instance of the exit policy (instruction lengths, conditions:
    // core's exit/aarch32.rs), told apart by SPSR_EL2.M[4] (x1 after save_frame).
    .balign 0x80
    save_frame
    serror_check \ras
    mov     x0, sp
    tbnz    x1, #4, 1f
    bl      {handle_sync_exit}
    b       bothy_guest_return
1:  bl      {handle_sync_exit_a32}
    b       bothy_guest_return
    guest_vector {handle_irq_exit}, \ras   // irq
    guest_vector_other 2, \ras             // fiq
    guest_vector_other 3, \ras             // serror
    // Lower EL, AArch32: only if the guest's EL1 were AArch32, which Bothy never
    // allows; handled the same way all the same.
    guest_vector {handle_sync_exit_a32}, \ras
    guest_vector {handle_irq_exit}, \ras
    guest_vector_other 2, \ras
    guest_vector_other 3, \ras
.endm

    .arch_extension ras
    .section .text.vectors, "ax"
    .balign 0x800
    .global bothy_el2_vectors
bothy_el2_vectors:
    el2_vectors 1
    // A slot over 32 instructions would push the rest out of place silently; then
    // this .org would have to move backwards, which the assembler refuses.
    .org    bothy_el2_vectors + 0x800
    .global bothy_el2_vectors_noras
bothy_el2_vectors_noras:
    el2_vectors 0

// x0 = the handler's Resume.
bothy_guest_return:
    cbnz    x0, bothy_guest_exit_all

bothy_guest_resume:
    ldp     x30, x1, [sp, #240]
    msr     elr_el2, x1
    ldr     x1, [sp, #256]
    msr     spsr_el2, x1
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldr     x18, [sp, #144]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame}
    // An SError Bothy caused is taken here, at EL2, not blamed on the guest after the
    // eret (with RAS; a NOP without).
    esb
    eret

// x0 = Resume::All, Resume::SaveAllAndRetry or Resume::Schedule.
bothy_guest_exit_all:
    cmp     x0, #{resume_all}
    b.eq    bothy_guest_resume_all
    str     x19, [sp, #152]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mov     x1, x0
    mov     x0, sp
    bl      {handle_exit_all}
    bl      {release_retired}
bothy_guest_resume_all:
    ldr     x19, [sp, #152]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    b       bothy_guest_resume

// enter_guest(frame): the frame is this CPU's (top of its stack); run it.
    .global bothy_enter_guest
bothy_enter_guest:
    mov     sp, x0
    b       bothy_guest_resume_all

// A fault at EL2 is Bothy's own and fatal. SP may be in a guard page (a stack
// overflow), so no Rust runs before SP is this CPU's emergency stack: the slot the
// faulting SP lies in (the spare one past MAX_CPUS when it lies in none) names it.
// Registers are not preserved: nothing returns from here.
bothy_hyp_fault:
    mov     x4, sp
    adrp    x5, __stacks_start
    add     x5, x5, :lo12:__stacks_start
    sub     x6, x4, x5
    lsr     x6, x6, #{stack_shift}
    mov     x7, #{max_cpus}
    cmp     x6, x7
    csel    x6, x6, x7, lo
    adrp    x5, __emergency_stacks_start
    add     x5, x5, :lo12:__emergency_stacks_start
    add     x6, x6, #1
    mov     x7, #{emergency_size}
    madd    x5, x6, x7, x5
    mov     sp, x5
    mov     x29, #0
    mrs     x1, esr_el2
    mrs     x2, elr_el2
    mrs     x3, far_el2
    bl      {hyp_fault}
7:  wfe
    b       7b
"#,
    frame = const GUEST_FRAME_SIZE,
    handle_sync_exit = sym crate::exit::handle_sync_exit,
    handle_sync_exit_a32 = sym crate::exit::handle_sync_exit_a32,
    handle_irq_exit = sym crate::exit::handle_irq_exit,
    handle_other_exit = sym crate::exit::handle_other_exit,
    handle_deferred_serror = sym crate::exit::handle_deferred_serror,
    handle_exit_all = sym crate::exit::handle_exit_all,
    release_retired = sym super::percpu::release_retired,
    resume_all = const Resume::All as u64,
    hyp_fault = sym hyp_fault,
    stack_shift = const super::entry::STACK_SIZE.trailing_zeros(),
    max_cpus = const super::entry::MAX_CPUS,
    emergency_size = const super::entry::EMERGENCY_STACK_SIZE,
);

extern "C" {
    static bothy_el2_vectors: u8;
    static bothy_el2_vectors_noras: u8;
    fn bothy_enter_guest(frame: *mut GuestFrame) -> !;
}

/// Install this CPU's EL2 vectors (VBAR_EL2): no caller chooses the address.
pub fn install() {
    super::sysreg::write_vbar_el2(vector_table());
    super::sysreg::isb();
}

/// Address for VBAR_EL2: the table that checks for guests' SErrors at every exit when
/// this CPU has RAS (`esb`, DISR_EL1), the one that cannot otherwise.
fn vector_table() -> u64 {
    if super::sysreg::has_ras() {
        core::ptr::addr_of!(bothy_el2_vectors) as u64
    } else {
        core::ptr::addr_of!(bothy_el2_vectors_noras) as u64
    }
}

/// This CPU's guest frame: the top of its stack, which Rust code never uses.
fn frame_of(cpu: usize) -> *mut GuestFrame {
    (super::entry::stack_top(cpu) - GUEST_FRAME_SIZE as u64) as *mut GuestFrame
}

/// Load `frame` into this CPU's frame slot and run the guest. Never returns:
/// every later exit starts afresh at the top of the stack.
pub fn enter_guest(cpu: usize, frame: &GuestFrame) -> ! {
    if cpu >= super::entry::MAX_CPUS {
        crate::fatal_bug(format_args!("no stack slot {cpu} to run a guest from"));
    }
    let slot = frame_of(cpu);
    // SAFETY: `slot` is this CPU's reserved frame area (above any Rust stack
    // frame, see entry.rs), aligned and sized for a GuestFrame; only this CPU uses it.
    // The caller never returns (this does not), so nothing it borrowed from the loaded
    // vCPU is used again: the retired VMs may go.
    unsafe {
        slot.write(*frame);
        super::percpu::release_retired();
        bothy_enter_guest(slot)
    }
}

/// ESR_EL2.EC of a data abort taken without a change of exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;

/// Every exception Bothy takes from itself, on this CPU's emergency stack (`sp` is the
/// one it faulted with).
extern "C" fn hyp_fault(kind: u64, esr: u64, elr: u64, far: u64, sp: u64) -> ! {
    let overflow = (esr >> 26 == EC_DATA_ABORT_SAME_EL)
        .then(|| super::entry::stack_layout().overflowed(far))
        .flatten();
    if kind & 3 == 3 {
        crate::fatal_bug(format_args!(
            "SError at EL2: Bothy caused it (ESR_EL2={esr:#x}, PC {elr:#x})"
        ))
    }
    if let Some(cpu) = overflow {
        crate::fatal_bug(format_args!(
            "EL2 stack overflow on CPU {cpu} (PC {elr:#x}, SP {sp:#x}, address {far:#x})"
        ))
    }
    crate::fatal_bug(format_args!(
        "exception at EL2 (vector {kind}): ESR_EL2={esr:#x} ELR_EL2={elr:#x} FAR_EL2={far:#x} SP={sp:#x}"
    ))
}
