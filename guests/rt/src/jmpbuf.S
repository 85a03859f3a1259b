// The save and restore halves of a setjmp/longjmp, shared by the check guard (guard.S)
// and the trip to EL0 (el0.S), which keep one buffer each: a trip to EL0 runs inside a
// guarded check. A buffer is 112 bytes, 16-byte aligned: x19-x30 at 0..95 (x30 at 88),
// SP at 96. Only the callee-saved state is kept: the longjmp lands where the setjmp's
// caller sees a return from a call, so the caller-saved registers are dead there.

// Save x19-x30 and SP into the buffer at symbol \buf; clobbers x9 and x10.
.macro JMPBUF_SAVE buf
    adrp    x9, \buf
    add     x9, x9, :lo12:\buf
    stp     x19, x20, [x9, #0]
    stp     x21, x22, [x9, #16]
    stp     x23, x24, [x9, #32]
    stp     x25, x26, [x9, #48]
    stp     x27, x28, [x9, #64]
    stp     x29, x30, [x9, #80]
    mov     x10, sp
    str     x10, [x9, #96]
.endm

// Restore x19-x30 and SP from the buffer at symbol \buf; clobbers x9 and x10.
.macro JMPBUF_RESTORE buf
    adrp    x9, \buf
    add     x9, x9, :lo12:\buf
    ldp     x19, x20, [x9, #0]
    ldp     x21, x22, [x9, #16]
    ldp     x23, x24, [x9, #32]
    ldp     x25, x26, [x9, #48]
    ldp     x27, x28, [x9, #64]
    ldp     x29, x30, [x9, #80]
    ldr     x10, [x9, #96]
    mov     sp, x10
.endm
