// Boot path shared by the Bothy test guests (guests/rt): arm64 Image header, primary and
// secondary entry, self-relocation, .bss zeroing, stacks, VBAR_EL1, FP/SIMD on.
//
// Hooks the guest defines (extern "C"):
//   primary_main(dtb, image_base, x1|x2|x3 at entry, unknown relocation count) -> !
//   secondary_main(context_id) -> !           (entered through PSCI CPU_ON at secondary_entry,
//                                              or secondary_entry_on_stack via the guest's own)
//   el1_exception(frame, kind[, entry_ticks])  (called by vectors.S)
//
// Entered at EL1, MMU and D-cache off, x0 = DTB physical address, x1..x3 = 0 (Linux
// arm64 boot protocol). The image is linked at 0 and may be loaded at any 2 MiB-aligned
// address, so nothing here uses an absolute address: `adr`/`adrp` only, and the
// R_AARCH64_RELATIVE entries of .rela.dyn are patched with the load base before Rust runs.
// The MMU stays off for the whole run (see guests/selftest/README.md): every data access is
// Device-nGnRnE, so the target's +strict-align matters and cross-vCPU flags need only
// plain loads/stores (ldar/stlr) and barriers, never exclusives.

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
    orr     x20, x1, x2
    orr     x20, x20, x3            // nonzero: boot protocol violated
    movz    x9, #(SCTLR_EL1_MMU_OFF & 0xffff)
    movk    x9, #(SCTLR_EL1_MMU_OFF >> 16), lsl #16
    msr     sctlr_el1, x9
    isb

    // Apply .rela.dyn: *(base + r_offset) = base + r_addend. Unknown types are counted.
    adr     x21, _start             // load base (link address 0)
    mov     x22, #0
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
    b.eq    2f
    add     x22, x22, #1
    b       1b
2:  add     x6, x6, x21
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
    mov     x2, x20                 // x1|x2|x3 at entry
    mov     x3, x22                 // unknown relocation count
    bl      primary_main
    b       park

// PSCI CPU_ON entry of a secondary vCPU: x0 = context_id. The primary has already relocated
// the image and zeroed .bss. One stack: one secondary running at a time.
.global secondary_entry
secondary_entry:
    adrp    x1, stack1_top
    add     x1, x1, :lo12:stack1_top
    // Fall through.

// The same on a stack the guest picked: x0 = context_id, x1 = top of the stack. A guest
// that runs several secondaries at once gives CPU_ON its own entry, which picks a stack
// per vCPU without touching memory (adrp/add only: SCTLR_EL1 is not set yet) and
// branches here.
.global secondary_entry_on_stack
secondary_entry_on_stack:
    msr     daifset, #0xf
    mov     x19, x0
    mov     x20, x1
    movz    x9, #(SCTLR_EL1_MMU_OFF & 0xffff)
    movk    x9, #(SCTLR_EL1_MMU_OFF >> 16), lsl #16
    msr     sctlr_el1, x9
    isb
    msr     spsel, #1
    mov     sp, x20
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
