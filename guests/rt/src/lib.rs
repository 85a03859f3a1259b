//! Guest runtime shared by the Bothy test guests (guests/selftest, guests/attacker,
//! guests/bench): boot path, exception vectors, the check guard, trips to EL0, PSCI calls,
//! check messages, device-tree reading, system-register/MMIO helpers, GICv3 bring-up
//! steps and PL011 output, one module per mechanism. See README.md for the hooks a guest
//! defines.
//!
//! Boot (entry.S): arm64 Image header, self-relocation of .rela.dyn (linked at 0, loaded
//! at any 2 MiB-aligned address), .bss zeroing, stacks (64 KiB for the primary, 32 KiB
//! for a secondary), VBAR_EL1, FP/SIMD on; the MMU stays off. The linker script and link
//! flags come from `link.ld` and `build_link.rs` (included by each guest's build.rs).

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod el0;
pub mod exceptions;
pub mod fdt;
pub mod gic;
pub mod guard;
pub mod msg;
pub mod psci;
pub mod uart;

core::arch::global_asm!(include_str!("entry.S"), options(raw));

#[cfg(not(feature = "entry-ticks"))]
core::arch::global_asm!(
    ".equ RT_ENTRY_TICKS, 0",
    include_str!("vectors.S"),
    options(raw)
);
#[cfg(feature = "entry-ticks")]
core::arch::global_asm!(
    ".equ RT_ENTRY_TICKS, 1",
    include_str!("vectors.S"),
    options(raw)
);

// The check guard's and the EL0 trip's setjmp/longjmp (guard.rs, el0.rs), in one block:
// both use the save/restore macros of jmpbuf.S, which may be defined only once.
core::arch::global_asm!(
    include_str!("jmpbuf.S"),
    include_str!("guard.S"),
    include_str!("el0.S"),
    options(raw)
);

extern "C" {
    static _start: u8;
    static _end: u8;
}

/// Start of the image (the arm64 Image header, `_start` of entry.S): its load address.
pub fn image_base() -> usize {
    // `_start` is a label; only its (PC-relative) address is used.
    core::ptr::addr_of!(_start) as usize
}

/// End of the image (`_end` of link.ld, .bss included), at its load address.
pub fn image_end() -> usize {
    // `_end` is a linker-script symbol; only its (PC-relative) address is used.
    core::ptr::addr_of!(_end) as usize
}
