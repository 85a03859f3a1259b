// u64 keep_registers_across_exits(u64 gicd_typer_address)
//
// Bothy's exit path leaves x19-x29 out of its frame unless an exit transfers one of
// them. Give each a distinct value, then exit in the ways that take each path:
// a hypercall (registers left in place), a GICD_TYPER load into x20 and an
// ICC_SGI1R_EL1 write from x21 (both handled again with every register saved), a
// store from x22 to the read-only GICD_TYPER (ignored), and a second hypercall.
// Returns a mask with bit n set for each xn (19..29) that came back wrong; x20 must
// hold GICD_TYPER. x21's value names Aff1 = 0x21, so the SGI reaches nobody.

.macro pattern reg, n
    movz    \reg, #\n
    movk    \reg, #0xb07e, lsl #32
.endm

// Set bit \n of x0 when \reg differs from x10.
.macro expect reg, n
    cmp     \reg, x10
    cset    x11, ne
    orr     x0, x0, x11, lsl #\n
.endm

.section .text.regs, "ax"
.global keep_registers_across_exits
keep_registers_across_exits:
    stp     x19, x20, [sp, #-112]!
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    str     x0, [sp, #96]
    pattern x19, 0x19
    pattern x20, 0x20
    movz    x21, #0x21, lsl #16
    pattern x22, 0x22
    pattern x23, 0x23
    pattern x24, 0x24
    pattern x25, 0x25
    pattern x26, 0x26
    pattern x27, 0x27
    pattern x28, 0x28
    pattern x29, 0x29
    movz    w0, #0x8400, lsl #16        // PSCI_VERSION
    hvc     #0
    ldr     x9, [sp, #96]
    ldr     w20, [x9]
    msr     S3_0_C12_C11_5, x21         // ICC_SGI1R_EL1
    isb
    ldr     x9, [sp, #96]
    str     w22, [x9]
    movz    w0, #0x8400, lsl #16
    hvc     #0
    mov     x0, #0
    pattern x10, 0x19
    expect  x19, 19
    ldr     x9, [sp, #96]
    ldr     w10, [x9]
    expect  x20, 20
    movz    x10, #0x21, lsl #16
    expect  x21, 21
    pattern x10, 0x22
    expect  x22, 22
    pattern x10, 0x23
    expect  x23, 23
    pattern x10, 0x24
    expect  x24, 24
    pattern x10, 0x25
    expect  x25, 25
    pattern x10, 0x26
    expect  x26, 26
    pattern x10, 0x27
    expect  x27, 27
    pattern x10, 0x28
    expect  x28, 28
    pattern x10, 0x29
    expect  x29, 29
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     x19, x20, [sp], #112
    ret
