// The check runner's setjmp/longjmp (rt::guard, guard.rs, is the Rust side and says why).

.section .text.guard, "ax"
// u64 run_guarded(extern "C" fn()): call it; return 0 when it returns, or 1 when
// `check_recover` abandons it (unexpected exception or panic inside a check).
// Primary vCPU only: one jump buffer.
.global run_guarded
run_guarded:
    adrp    x9, jmp_buf
    add     x9, x9, :lo12:jmp_buf
    stp     x19, x20, [x9, #0]
    stp     x21, x22, [x9, #16]
    stp     x23, x24, [x9, #32]
    stp     x25, x26, [x9, #48]
    stp     x27, x28, [x9, #64]
    stp     x29, x30, [x9, #80]
    mov     x10, sp
    str     x10, [x9, #96]
    blr     x0
    adrp    x9, jmp_buf
    add     x9, x9, :lo12:jmp_buf
    ldr     x30, [x9, #88]
    mov     x0, #0
    ret

// Resume run_guarded's caller with 1. Reached by eret from the exception handler or
// called from the panic handler.
.global check_recover
check_recover:
    adrp    x9, jmp_buf
    add     x9, x9, :lo12:jmp_buf
    ldp     x19, x20, [x9, #0]
    ldp     x21, x22, [x9, #16]
    ldp     x23, x24, [x9, #32]
    ldp     x25, x26, [x9, #48]
    ldp     x27, x28, [x9, #64]
    ldp     x29, x30, [x9, #80]
    ldr     x10, [x9, #96]
    mov     sp, x10
    mov     x0, #1
    ret

.section .bss.guard, "aw", %nobits
.balign 16
jmp_buf:
    .skip   112
