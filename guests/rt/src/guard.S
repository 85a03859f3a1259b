// The check runner's setjmp/longjmp (rt::guard, guard.rs, is the Rust side and says why;
// the JMPBUF_ macros are in jmpbuf.S).

.section .text.guard, "ax"
// u64 run_guarded(extern "C" fn()): call it; return 0 when it returns, or 1 when
// `check_recover` abandons it (unexpected exception or panic inside a check).
// Primary vCPU only: one jump buffer.
.global run_guarded
run_guarded:
    JMPBUF_SAVE jmp_buf
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
    JMPBUF_RESTORE jmp_buf
    mov     x0, #1
    ret

.section .bss.guard, "aw", %nobits
.balign 16
jmp_buf:
    .skip   112
