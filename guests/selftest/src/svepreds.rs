//! `sve_state_per_vcpu`: SVE's predicates and ZCR_EL1 belong to the vCPU that sets
//! them. A CPU has one set, so a hypervisor must move them with its vCPUs (Bothy does so
//! lazily: trapped until a vCPU's first SVE instruction, then switched with it).
//!
//! Every vCPU of the VM (up to [`vcpuregs::MAX`]) sets P0–P3 to its own patterns (`WHILELO`: the
//! first 1 + 4v + i byte elements of P`i` active, counted back with `CNTP`; at the
//! 128-bit vectors Bothy gives guests that is 1 to 16, distinct per vCPU and register)
//! and ZCR_EL1.LEN to its index, then all of them read everything back while being
//! switched out and in ([`vcpuregs`] runs it); each must read its own every time. Then
//! vCPU 1, which left its state set, is started again (a reset) and must read zeros.
//! vCPU 0 calls the same set and check routines as the others' assembly.

use crate::arch::{self, read_sysreg};
use crate::msg::{ensure, skip, CheckResult};
use crate::uart::println;
use crate::vcpuregs::{self, Check, Spin};

static SPIN: Spin = Spin::new();

const WHICH: [&str; 6] = ["", "P0", "P1", "P2", "P3", "ZCR_EL1.LEN"];

core::arch::global_asm!(
    r#"
.section .text.svepreds, "ax"
.arch_extension sve

// sve_own_set(x0 = v): SVE enabled at EL1 and EL0 (CPACR_EL1.ZEN, and FPEN, which
// traps SVE too), ZCR_EL1.LEN = v,
// P15 all true, P`i` = the first 1 + 4v + i byte elements. Uses x9, x10.
.global sve_own_set
sve_own_set:
    mrs     x9, cpacr_el1
    orr     x9, x9, #(3 << 16)
    orr     x9, x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    msr     s3_0_c1_c2_0, x0
    isb
    ptrue   p15.b
    lsl     x10, x0, #2
    add     x10, x10, #1
    whilelo p0.b, xzr, x10
    add     x10, x10, #1
    whilelo p1.b, xzr, x10
    add     x10, x10, #1
    whilelo p2.b, xzr, x10
    add     x10, x10, #1
    whilelo p3.b, xzr, x10
    ret

// sve_own_check(x0 = v) -> x0 = 0 if P0-P3 and ZCR_EL1.LEN are v's, else 1 + i (5 for
// ZCR) with what was read in x1. Uses x9, x10.
.global sve_own_check
sve_own_check:
    lsl     x10, x0, #2
    add     x10, x10, #1
    cntp    x9, p15, p0.b
    cmp     x9, x10
    b.ne    1f
    add     x10, x10, #1
    cntp    x9, p15, p1.b
    cmp     x9, x10
    b.ne    2f
    add     x10, x10, #1
    cntp    x9, p15, p2.b
    cmp     x9, x10
    b.ne    3f
    add     x10, x10, #1
    cntp    x9, p15, p3.b
    cmp     x9, x10
    b.ne    4f
    mrs     x9, s3_0_c1_c2_0
    and     x9, x9, #0xf
    cmp     x9, x0
    b.ne    5f
    mov     x0, #0
    ret
1:  mov     x0, #1
    b       6f
2:  mov     x0, #2
    b       6f
3:  mov     x0, #3
    b       6f
4:  mov     x0, #4
    b       6f
5:  mov     x0, #5
6:  mov     x1, x9
    ret

// vCPUs 1..: x0 = the vCPU's index. Set, read back until told to stop, CPU_OFF (leaving
// its state set, for the reset to clear).
.global sve_spinner
sve_spinner:
    msr     daifset, #0xf
    mov     x22, x0
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    add     x20, x19, x22, lsl #3
    bl      sve_own_set
    mov     x9, #1
    str     x9, [x20, #{ready}]
    dsb     sy
    sev
    mov     x21, #0
1:  mov     x0, x22
    bl      sve_own_check
    cbnz    x0, 8f
    add     x21, x21, #1
    str     x21, [x20, #{loops}]
    ldr     x9, [x19, #{stop}]
    cbz     x9, 1b
    b       9f
8:  str     x1, [x20, #{seen}]
    str     x0, [x20, #{bad}]
9:  b       vcpuregs_done

// vCPU 1 once more, after its reset: SVE enabled at EL1 (the reset cleared CPACR_EL1),
// then report what it finds (nothing written first), CPU_OFF.
.global sve_fresh
sve_fresh:
    msr     daifset, #0xf
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    mrs     x9, cpacr_el1
    orr     x9, x9, #(3 << 16)
    orr     x9, x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    ptrue   p15.b
    cntp    x9, p15, p0.b
    str     x9, [x19, #{fresh}]
    cntp    x9, p15, p1.b
    str     x9, [x19, #{fresh} + 8]
    cntp    x9, p15, p2.b
    str     x9, [x19, #{fresh} + 16]
    cntp    x9, p15, p3.b
    str     x9, [x19, #{fresh} + 24]
    mrs     x9, s3_0_c1_c2_0
    str     x9, [x19, #{fresh} + 32]
    mov     x10, #40
    b       vcpuregs_reported
"#,
    spin = sym SPIN,
    stop = const core::mem::offset_of!(Spin, stop),
    ready = const core::mem::offset_of!(Spin, ready),
    loops = const core::mem::offset_of!(Spin, loops),
    bad = const core::mem::offset_of!(Spin, bad),
    seen = const core::mem::offset_of!(Spin, seen),
    fresh = const core::mem::offset_of!(Spin, fresh),
);

extern "C" {
    fn sve_spinner();
    fn sve_fresh();
    fn sve_own_set(v: u64);
}

/// `sve_own_check(v)`: 0, or which register was wrong and what it read.
fn check_own(v: u64) -> (u64, u64) {
    let (bad, seen): (u64, u64);
    // SAFETY: the routine reads P0–P3, P15 and ZCR_EL1 (SVE enabled by `sve_own_set`)
    // and uses only the registers named here; it touches no memory.
    unsafe {
        core::arch::asm!(
            "bl sve_own_check",
            inout("x0") v => bad,
            out("x1") seen,
            out("x9") _,
            out("x10") _,
            out("x30") _,
            options(nomem, nostack),
        )
    };
    (bad, seen)
}

pub fn sve_state_per_vcpu() -> CheckResult {
    // ID_AA64PFR0_EL1.SVE (bits 35:32).
    if (read_sysreg!("id_aa64pfr0_el1") >> 32) & 0xf == 0 {
        skip!("no SVE (ID_AA64PFR0_EL1.SVE)");
    }
    let cpacr = read_sysreg!("cpacr_el1");
    let out = vcpuregs::run(Check {
        spin: &SPIN,
        spinner: sve_spinner,
        fresh: sve_fresh,
        fresh_len: 5,
        // SAFETY: sets P0–P3, P15, ZCR_EL1 and CPACR_EL1.ZEN, which no Rust code uses.
        set_own: &mut || unsafe { sve_own_set(0) },
        check_own: &mut || {
            let (bad, seen) = check_own(0);
            (bad != 0).then(|| (bad as usize, seen, want(0, bad as usize)))
        },
        put_back: &mut || {
            // Zero again (vCPU 0 stops holding SVE's state at its next switch), then SVE
            // off at EL1 as it was.
            // SAFETY: as above.
            unsafe {
                core::arch::asm!(
                    ".arch_extension sve",
                    "pfalse p0.b",
                    "pfalse p1.b",
                    "pfalse p2.b",
                    "pfalse p3.b",
                    "pfalse p15.b",
                    "msr s3_0_c1_c2_0, xzr",
                    options(nomem, nostack),
                )
            };
            crate::arch::write_sysreg!("cpacr_el1", cpacr);
            arch::isb();
        },
        name: &|i| WHICH[i.min(5)],
        want: &want,
    })?;
    // A reset (CPU_ON again) starts vCPU 1 with no predicate set and ZCR_EL1 zero.
    if let Some(fresh) = out.fresh {
        ensure!(
            fresh[..5] == [0; 5],
            "vCPU 1 after a reset reads P0-P3 active elements and ZCR_EL1 {:?}: want zeros",
            &fresh[..5]
        );
    }
    println!(
        "# sve_state_per_vcpu: {} vCPUs, vCPU 0 read its own {} times, across {} pauses of over 2 ms",
        out.vcpus, out.reads, out.gaps
    );
    Ok(())
}

/// What vCPU `v` set into read `i`: P`i - 1` holds 1 + 4v + (i - 1) elements, and
/// ZCR_EL1.LEN (5) is `v`.
fn want(v: usize, i: usize) -> u64 {
    if i == 5 {
        v as u64
    } else {
        (4 * v + i) as u64
    }
}
