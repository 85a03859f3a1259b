// Hand-written pieces: the hogs' entry and the AArch32 code the EL0 case runs (the boot
// path, the case runner's setjmp/longjmp and the trip to EL0 and back are in guests/rt).

.section .text.low, "ax"
// PSCI CPU_ON entry of a hog vCPU, x0 = its index (1 or 2): guests/rt's secondary_entry
// has one stack, for one secondary, and the attacker runs two at once. Each gets 16 KiB
// here; rt's secondary_entry_on_stack does the rest (EL1 set-up, secondary_main(x0)).
.global hog_entry
hog_entry:
    adrp    x1, hog_stacks
    add     x1, x1, :lo12:hog_stacks
    add     x1, x1, x0, lsl #14     // top of stack x0 (16 KiB each, index 1..2)
    b       secondary_entry_on_stack

// AArch32 code for EL0 (assembled as data: this is an AArch64 assembler). Each piece
// ends in `svc #0`; an `svc #1` right after a 16-bit instruction catches a hypervisor
// that steps over it as if it were 32 bits long (the SVC immediate is in ESR_EL1).
.balign 4
// T32: 16-bit `str r1, [r0]` (a trapped MMIO write), then svc #0.
.global t16_str_code
t16_str_code:
    .short  0x6001          // str r1, [r0, #0]
    .short  0xdf00          // svc #0
    .short  0xdf01          // svc #1
    .short  0xdf01          // svc #1
.balign 4
// T32: 16-bit `wfi` (trapped by HCR_EL2.TWI with SCTLR_EL1.nTWI set), then svc #0.
.global t16_wfi_code
t16_wfi_code:
    .short  0xbf30          // wfi
    .short  0xdf00          // svc #0
    .short  0xdf01          // svc #1
    .short  0xdf01          // svc #1
.balign 4
// A32: a load from an IPA nothing is mapped at (r2), then svc #0 (not reached: the abort
// goes to EL1).
.global a32_load_code
a32_load_code:
    .inst   0xe5921000      // ldr r1, [r2]
    .inst   0xef000000      // svc #0

.section .bss.low, "aw", %nobits
.balign 16
hog_stacks:
    .skip   0x8000
