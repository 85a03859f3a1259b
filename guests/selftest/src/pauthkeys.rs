//! `pauth_keys_per_vcpu`: the pointer-authentication keys belong to the vCPU that sets
//! them. A CPU has one set of keys, so a hypervisor must move them with its vCPUs (Bothy
//! does so lazily: trapped until a vCPU's first use, then switched with it).
//!
//! Every vCPU of the VM (up to [`MAX`]) writes keys of its own into APIAKeyLo/Hi and
//! APGAKeyLo/Hi, computes `PACGA` of a fixed pair with them (the generic key signs it,
//! whatever SCTLR_EL1 enables), then all of them read the keys back and sign the pair
//! again while being switched out and in ([`vcpuregs`] runs it); each must read its
//! own keys and get its own signature every time. Then vCPU 1, which left its keys set,
//! is started again (a reset) and must read zeros.

use core::sync::atomic::Ordering::*;

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::msg::{ensure, skip, CheckResult};
use crate::uart::println;
use crate::vcpuregs::{self, Check, Spin, MAX};

static SPIN: Spin = Spin::new();

/// vCPU `v`'s APIAKeyLo, APIAKeyHi, APGAKeyLo, APGAKeyHi (the assembly computes the
/// same): distinct per vCPU and per register.
const fn values(v: u64) -> [u64; 4] {
    const BASE: u64 = 0x5a5a_0000_0000_0000;
    [
        BASE | v << 32 | 0x1111,
        BASE | v << 32 | 0x2222,
        BASE | v << 32 | 0x3333,
        BASE | v << 32 | 0x4444,
    ]
}

/// The pair every vCPU signs with `PACGA`.
const SIGNED: (u64, u64) = (0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321);

const WHICH: [&str; 6] = [
    "",
    "APIAKeyLo",
    "APIAKeyHi",
    "APGAKeyLo",
    "APGAKeyHi",
    "PACGA",
];

core::arch::global_asm!(
    r#"
.section .text.pauthkeys, "ax"
// vCPUs 1..: x0 = the vCPU's index. Set its keys, sign, read back and sign again until
// told to stop, CPU_OFF (leaving its keys set, for the reset to clear).
.global pauth_spinner
pauth_spinner:
    msr     daifset, #0xf
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    add     x20, x19, x0, lsl #3
    movz    x10, #0x5a5a, lsl #48
    orr     x10, x10, x0, lsl #32
    mov     x11, x10
    movk    x11, #0x2222
    mov     x12, x10
    movk    x12, #0x3333
    mov     x13, x10
    movk    x13, #0x4444
    movk    x10, #0x1111
    msr     s3_0_c2_c1_0, x10
    msr     s3_0_c2_c1_1, x11
    msr     s3_0_c2_c3_0, x12
    msr     s3_0_c2_c3_1, x13
    isb
    ldr     x22, ={a}
    ldr     x23, ={b}
    .inst   0x9ad732d0          // pacga x16, x22, x23
    str     x16, [x20, #{pac}]
    mov     x9, #1
    str     x9, [x20, #{ready}]
    dsb     sy
    sev
    mov     x21, #0
1:  mrs     x9, s3_0_c2_c1_0
    mov     x15, #1
    cmp     x9, x10
    b.ne    8f
    mrs     x9, s3_0_c2_c1_1
    mov     x15, #2
    cmp     x9, x11
    b.ne    8f
    mrs     x9, s3_0_c2_c3_0
    mov     x15, #3
    cmp     x9, x12
    b.ne    8f
    mrs     x9, s3_0_c2_c3_1
    mov     x15, #4
    cmp     x9, x13
    b.ne    8f
    .inst   0x9ad732c9          // pacga x9, x22, x23
    mov     x15, #5
    cmp     x9, x16
    b.ne    8f
    add     x21, x21, #1
    str     x21, [x20, #{loops}]
    ldr     x9, [x19, #{stop}]
    cbz     x9, 1b
    b       9f
8:  str     x9, [x20, #{seen}]
    str     x15, [x20, #{bad}]
9:  b       vcpuregs_done

// vCPU 1 once more, after its reset: report what it finds, CPU_OFF.
.global pauth_fresh
pauth_fresh:
    msr     daifset, #0xf
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    mrs     x9, s3_0_c2_c1_0
    str     x9, [x19, #{fresh}]
    mrs     x9, s3_0_c2_c1_1
    str     x9, [x19, #{fresh} + 8]
    mrs     x9, s3_0_c2_c3_0
    str     x9, [x19, #{fresh} + 16]
    mrs     x9, s3_0_c2_c3_1
    str     x9, [x19, #{fresh} + 24]
    mov     x10, #32
    b       vcpuregs_reported
"#,
    spin = sym SPIN,
    a = const SIGNED.0,
    b = const SIGNED.1,
    stop = const core::mem::offset_of!(Spin, stop),
    ready = const core::mem::offset_of!(Spin, ready),
    loops = const core::mem::offset_of!(Spin, loops),
    bad = const core::mem::offset_of!(Spin, bad),
    seen = const core::mem::offset_of!(Spin, seen),
    pac = const core::mem::offset_of!(Spin, extra),
    fresh = const core::mem::offset_of!(Spin, fresh),
);

extern "C" {
    fn pauth_spinner();
    fn pauth_fresh();
}

/// vCPU 0's keys, as read now.
fn own() -> [u64; 4] {
    [
        read_sysreg!("s3_0_c2_c1_0"),
        read_sysreg!("s3_0_c2_c1_1"),
        read_sysreg!("s3_0_c2_c3_0"),
        read_sysreg!("s3_0_c2_c3_1"),
    ]
}

fn set_own(k: [u64; 4]) {
    write_sysreg!("s3_0_c2_c1_0", k[0]);
    write_sysreg!("s3_0_c2_c1_1", k[1]);
    write_sysreg!("s3_0_c2_c3_0", k[2]);
    write_sysreg!("s3_0_c2_c3_1", k[3]);
    arch::isb();
}

/// `PACGA` of [`SIGNED`] with the generic key in the CPU now.
fn sign() -> u64 {
    let pac: u64;
    // SAFETY: PACGA computes a value from registers only (FEAT_PAuth, checked by the
    // caller); it is not controlled by any SCTLR_EL1 enable.
    unsafe {
        core::arch::asm!(
            ".inst 0x9ac23020", // pacga x0, x1, x2
            out("x0") pac,
            in("x1") SIGNED.0,
            in("x2") SIGNED.1,
            options(nomem, nostack),
        )
    };
    pac
}

pub fn pauth_keys_per_vcpu() -> CheckResult {
    // ID_AA64ISAR1_EL1.GPA (bits 27:24) or GPI (31:28), or ISAR2.GPA3 (11:8): PACGA.
    let isar1 = read_sysreg!("id_aa64isar1_el1");
    let isar2 = read_sysreg!("s3_0_c0_c6_2");
    if (isar1 >> 24) & 0xff == 0 && (isar2 >> 8) & 0xf == 0 {
        skip!("no generic pointer authentication (ID_AA64ISAR1_EL1.GPA/GPI, ISAR2.GPA3)");
    }
    let mine = values(0);
    set_own(mine);
    let my_pac = sign();
    let out = vcpuregs::run(Check {
        spin: &SPIN,
        spinner: pauth_spinner,
        fresh: pauth_fresh,
        fresh_len: 4,
        set_own: &mut || set_own(mine),
        check_own: &mut || {
            let got = own();
            if let Some(i) = (0..4).find(|&i| got[i] != mine[i]) {
                return Some((i + 1, got[i], mine[i]));
            }
            let pac = sign();
            (pac != my_pac).then_some((5, pac, my_pac))
        },
        // Zero again: vCPU 0 stops holding the keys at its next switch.
        put_back: &mut || set_own([0; 4]),
        name: &|i| WHICH[i.min(5)],
        want: &|v, i| match i {
            5 => SPIN.extra[v].load(Acquire),
            _ => values(v as u64)[(i - 1).min(3)],
        },
    })?;
    // Different keys sign differently: the check above could tell a neighbour's key.
    let pacs: [u64; MAX] = core::array::from_fn(|v| SPIN.extra[v].load(Acquire));
    ensure!(
        pacs[1..out.vcpus].iter().all(|&pac| pac != my_pac),
        "vCPUs with different generic keys computed the same PACGA ({my_pac:#x}, {:#x?})",
        &pacs[1..out.vcpus]
    );
    // A reset (CPU_ON again) starts vCPU 1 with zero keys.
    if let Some(fresh) = out.fresh {
        ensure!(
            fresh[..4] == [0; 4],
            "vCPU 1 after a reset reads APIAKeyLo/Hi, APGAKeyLo/Hi {:#x?}: want zeros",
            &fresh[..4]
        );
    }
    println!(
        "# pauth_keys_per_vcpu: {} vCPUs, vCPU 0 read and signed with its own {} times, across {} pauses of over 2 ms",
        out.vcpus, out.reads, out.gaps
    );
    Ok(())
}
