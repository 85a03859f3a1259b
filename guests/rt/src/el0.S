// Running a snippet of user code (EL0, AArch32 in the guests so far) from the primary
// vCPU, and coming back: a setjmp/longjmp across an exception return (rt::el0, el0.rs,
// is the Rust side and says why; the JMPBUF_ macros are in jmpbuf.S).

.section .text.el0, "ax"
// u64 run_el0(x0 = entry, x1 = SPSR, x2 = &[u64; 8] initial R0-R7): drop to EL0 and
// return 0 once the handler has sent the exception that ends the trip to el0_return.
// x8-x10 are zeroed. The callee-saved registers and SP are saved here for el0_return to
// restore: after AArch32 code the upper halves of x0-x14 and all of x15 up are UNKNOWN.
.global run_el0
run_el0:
    JMPBUF_SAVE el0_jmp_buf
    msr     elr_el1, x0
    msr     spsr_el1, x1
    mov     x10, x2
    ldp     x0, x1, [x10, #0]
    ldp     x2, x3, [x10, #16]
    ldp     x4, x5, [x10, #32]
    ldp     x6, x7, [x10, #48]
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    isb
    eret

// Back on run_el0's stack and registers; returns 0 to its caller. Reached by eret from
// the exception handler (EL1h, interrupts masked).
.global el0_return
el0_return:
    JMPBUF_RESTORE el0_jmp_buf
    mov     x0, #0
    ret

.section .bss.el0, "aw", %nobits
.balign 16
el0_jmp_buf:
    .skip   112
