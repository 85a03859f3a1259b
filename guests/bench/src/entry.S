// Boot path of the bench guest: arm64 Image header, primary and secondary entry,
// self-relocation, .bss zeroing, stacks. Copied from guests/selftest/src/entry.S
// (run_guarded/check_recover left out: the bench has no check runner).
//
// Entered at EL1, MMU and D-cache off, x0 = DTB physical address (Linux arm64 boot
// protocol). The image is linked at 0 and may be loaded at any 2 MiB-aligned address,
// so nothing here uses an absolute address: `adr`/`adrp` only, and the
// R_AARCH64_RELATIVE entries of .rela.dyn are patched with the load base before Rust
// runs. The MMU stays off for the whole run: every data access is Device-nGnRnE, so
// the target's +strict-align matters and cross-vCPU flags use plain loads/stores only.

// SCTLR_EL1 with MMU, caches and alignment checks off; RES1 bits (EOS, TSCXT, EIS,
// SPAN, nTLSMD, LSMAOE) set as Linux's INIT_SCTLR_EL1_MMU_OFF does.
.equ SCTLR_EL1_MMU_OFF, 0x30d00800
// CPACR_EL1.FPEN = 0b11: no FP/SIMD traps (the hard-float target uses q registers).
.equ CPACR_EL1_FPEN, (3 << 20)
.equ R_AARCH64_RELATIVE, 1027

.section .text.head, "ax"
.global _start
_start:
    b       primary_entry           // code0
    .word   0                       // code1
    .quad   0                       // text_offset
    .quad   __image_size            // image_size, .bss included
    .quad   0xa                     // flags: LE, 4 KiB pages, anywhere in RAM
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .word   0                       // res5 (no PE header)

.section .text.boot, "ax"
primary_entry:
    msr     daifset, #0xf
    mov     x19, x0                 // DTB
    movz    x9, #(SCTLR_EL1_MMU_OFF & 0xffff)
    movk    x9, #(SCTLR_EL1_MMU_OFF >> 16), lsl #16
    msr     sctlr_el1, x9
    isb

    // Apply .rela.dyn: *(base + r_offset) = base + r_addend. Other types are skipped
    // (build.rs links so that there are none).
    adr     x21, _start             // load base (link address 0)
    adrp    x2, __rela_start
    add     x2, x2, :lo12:__rela_start
    adrp    x3, __rela_end
    add     x3, x3, :lo12:__rela_end
1:  cmp     x2, x3
    b.hs    3f
    ldr     x4, [x2]                // r_offset
    ldr     x5, [x2, #8]            // r_info
    ldr     x6, [x2, #16]           // r_addend
    add     x2, x2, #24
    and     x5, x5, #0xffffffff
    cmp     x5, #R_AARCH64_RELATIVE
    b.ne    1b
    add     x6, x6, x21
    str     x6, [x21, x4]
    b       1b
3:
    // Zero .bss (16-byte aligned at both ends by link.ld); it holds the stacks.
    adrp    x2, __bss_start
    add     x2, x2, :lo12:__bss_start
    adrp    x3, __bss_end
    add     x3, x3, :lo12:__bss_end
4:  cmp     x2, x3
    b.hs    5f
    stp     xzr, xzr, [x2], #16
    b       4b
5:
    msr     spsel, #1
    adrp    x9, stack0_top
    add     x9, x9, :lo12:stack0_top
    mov     sp, x9
    bl      cpu_common_init

    mov     x0, x19                 // dtb
    mov     x1, x21                 // image base
    bl      bench_main
    b       park

// PSCI CPU_ON entry of the second vCPU: x0 = context_id. The primary has already
// relocated the image and zeroed .bss.
.global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    movz    x9, #(SCTLR_EL1_MMU_OFF & 0xffff)
    movk    x9, #(SCTLR_EL1_MMU_OFF >> 16), lsl #16
    msr     sctlr_el1, x9
    isb
    msr     spsel, #1
    adrp    x9, stack1_top
    add     x9, x9, :lo12:stack1_top
    mov     sp, x9
    bl      cpu_common_init
    mov     x0, x19
    bl      secondary_main
    b       park

// Per-vCPU EL1 setup shared by both entries; clobbers x9 only.
cpu_common_init:
    adrp    x9, vectors
    add     x9, x9, :lo12:vectors
    msr     vbar_el1, x9
    mov     x9, #CPACR_EL1_FPEN
    msr     cpacr_el1, x9
    isb
    ret

.global park
park:
    msr     daifset, #0xf
6:  wfi
    b       6b

.section .bss.boot, "aw", %nobits
.balign 16
stack0:
    .skip   0x10000
stack0_top:
stack1:
    .skip   0x8000
stack1_top:
