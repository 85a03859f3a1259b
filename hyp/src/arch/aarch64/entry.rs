//! Entry: the arm64 `Image` header, self-relocation, stacks, and the jump to Rust.
//!
//! Any loader that boots an arm64 Linux kernel boots Bothy: the first 64 bytes
//! are an `Image` header (booting.rst) with "place anywhere" set, and the code
//! is linked at 0 as a static PIE. `primary_entry` finds where it runs with
//! `adr`, patches every `R_AARCH64_RELATIVE` slot, zeroes .bss, and calls
//! [`crate::boot_primary`] with the DTB pointer the loader left in x0. The MMU
//! is off, so nothing before the relocation loop may load an absolute address.
//! Secondary CPUs enter at `secondary_entry` (PSCI CPU_ON, context id = CPU
//! index) and get their own stack.
//!
//! Each CPU's stack is a 64 KiB slot inside `.stacks`; its top `GUEST_FRAME_SIZE`
//! bytes hold the register frame of the vCPU that CPU runs (see vectors.rs), so
//! Rust code starts below it, and its lowest 4 KiB are a guard page the EL2 identity
//! map leaves out ([`stack_layout`]): an overflow faults instead of writing the next
//! CPU's frame. EL2's own faults run on a separate small emergency stack per CPU
//! ([`EMERGENCY_STACK_SIZE`], also in `.stacks`), so an overflow can still be reported.

use bothy_core::mem::stacks::StackLayout;
use core::arch::global_asm;

/// Per-CPU stack slot (guard page included); must match the linker script's `.stacks`
/// reservation. A power of two: the fault vector finds a slot with a shift.
pub const STACK_SIZE: usize = 0x1_0000;
pub const MAX_CPUS: usize = 8;
/// Per-CPU emergency stack for faults at EL2 (MAX_CPUS + 1 of them, linker script).
pub const EMERGENCY_STACK_SIZE: usize = 0x2000;
const _: () = assert!(STACK_SIZE.is_power_of_two());

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0                       // text_offset: any 2 MiB-aligned base
    .quad   __image_size            // image_size (the CLI rewrites it to cover the payload)
    .quad   0xa                     // flags: little-endian, 4 KiB pages, place anywhere
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

primary_entry:
    mov     x19, x0                 // DTB physical address from the loader
    adr     x20, _start             // where the loader actually put us

    // Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base + addend.
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16       // r_offset, r_info
    ldr     x5, [x1], #8            // r_addend
    cmp     w4, #1027               // R_AARCH64_RELATIVE
    b.ne    1b
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b
2:
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:
    mov     x0, #0
    bl      bothy_set_stack
    mov     x0, x19
    mov     x1, x20
    bl      {boot_primary}
5:  wfe
    b       5b

    .global secondary_entry
secondary_entry:
    mov     x19, x0                 // CPU index, passed as the PSCI context id
    bl      bothy_set_stack
    mov     x0, x19
    bl      {boot_secondary}
6:  wfe
    b       6b

// sp = top of CPU x0's stack, less the guest register frame kept there; at EL2, the
// vectors installed, so a fault from here on (a stack overflow included) is reported.
// Clobbers x0-x2 only; returns with lr intact.
bothy_set_stack:
    mrs     x1, CurrentEL
    cmp     x1, #8                  // EL2
    b.ne    1f
    adrp    x1, bothy_el2_vectors
    add     x1, x1, :lo12:bothy_el2_vectors
    msr     vbar_el2, x1
    isb
1:  adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     x2, x0, #1
    mov     x0, #{stack_size}
    madd    x1, x2, x0, x1
    sub     sp, x1, #{frame}
    mov     x29, #0
    ret
"#,
    boot_primary = sym crate::boot_primary,
    boot_secondary = sym crate::boot_secondary,
    stack_size = const STACK_SIZE,
    frame = const super::vectors::GUEST_FRAME_SIZE,
);

extern "C" {
    static secondary_entry: u8;
    static __stacks_start: u8;
    static _start_image: u8;
    static __text_end: u8;
    static _end: u8;
}

/// Physical address of `secondary_entry` (identity mapping: VA == PA).
pub fn secondary_entry_address() -> u64 {
    core::ptr::addr_of!(secondary_entry) as u64
}

/// Where this image starts and ends in memory (`_end` covers .bss and stacks).
pub fn image_bounds() -> (u64, u64) {
    (
        core::ptr::addr_of!(_start_image) as u64,
        core::ptr::addr_of!(_end) as u64,
    )
}

/// Where this image's code ends (page-aligned): `[start, text_end)` is its text.
pub fn text_end() -> u64 {
    core::ptr::addr_of!(__text_end) as u64
}

/// Top of CPU `cpu`'s stack, where that CPU's guest register frame lives.
pub fn stack_top(cpu: usize) -> u64 {
    let base = core::ptr::addr_of!(__stacks_start) as u64;
    base + ((cpu + 1) * STACK_SIZE) as u64
}

/// Drop any data-cache lines for this image (.bss and stacks included), which Bothy
/// wrote with the MMU off: stale lines a loader left must not shadow it once caches
/// are on. Call once, before the MMU is on.
pub fn invalidate_image_dcache() {
    let (start, end) = image_bounds();
    super::sysreg::invalidate_dcache_range(start, end - start);
}

/// Where the per-CPU stacks and their guard pages are.
pub fn stack_layout() -> StackLayout {
    StackLayout {
        base: core::ptr::addr_of!(__stacks_start) as u64,
        slot_size: STACK_SIZE as u64,
        cpus: MAX_CPUS,
    }
}
