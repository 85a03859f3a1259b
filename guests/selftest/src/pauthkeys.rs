//! `pauth_keys_per_vcpu`: the pointer-authentication keys belong to the vCPU that sets
//! them. A CPU has one set of keys, so a hypervisor must move them with its vCPUs (Bothy
//! does so lazily: trapped until a vCPU's first use, then switched with it).
//!
//! Every vCPU of the VM (up to [`MAX`]) writes keys of its own into APIAKeyLo/Hi and
//! APGAKeyLo/Hi, computes `PACGA` of a fixed pair with them (the generic key signs it,
//! whatever SCTLR_EL1 enables), then all of them read the keys back and sign the pair
//! again for [`SPIN_MS`] while keeping their CPUs busy. With more vCPUs than CPUs (4 on
//! QEMU's 2 in `cli/tests/selftest_guest.rs`) each is switched out and in many times;
//! each must read its own keys and get its own signature every time. Then vCPU 1,
//! which left its keys set, is started again (a reset) and must read zeros.
//!
//! vCPUs 1.. run a few instructions of assembly with interrupts masked and need no
//! stack, like debugregs.rs; vCPU 0 is the check itself.

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::msg::{bail, ensure, skip, CheckResult};
use crate::smp;
use crate::uart::println;

/// vCPUs taking part (0 and up to three helpers).
pub const MAX: usize = 4;
/// How long they all read back.
const SPIN_MS: u64 = 300;

/// What a helper reports; its assembly addresses it by field offset.
#[repr(C)]
pub struct Spin {
    /// Set by vCPU 0: stop reading.
    stop: AtomicU64,
    ready: [AtomicU64; MAX],
    loops: [AtomicU64; MAX],
    /// 0, or which read came back wrong: 1 APIAKeyLo, 2 APIAKeyHi, 3 APGAKeyLo,
    /// 4 APGAKeyHi, 5 the signature.
    bad: [AtomicU64; MAX],
    /// What that read gave.
    seen: [AtomicU64; MAX],
    /// Its first signature, which every later one must equal.
    pac: [AtomicU64; MAX],
    done: [AtomicU64; MAX],
    /// vCPU 1 after its reset: APIAKeyLo, APIAKeyHi, APGAKeyLo, APGAKeyHi, done.
    fresh: [AtomicU64; 5],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static SPIN: Spin = Spin {
    stop: ZERO,
    ready: [ZERO; MAX],
    loops: [ZERO; MAX],
    bad: [ZERO; MAX],
    seen: [ZERO; MAX],
    pac: [ZERO; MAX],
    done: [ZERO; MAX],
    fresh: [ZERO; 5],
};

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
9:  mov     x9, #1
    str     x9, [x20, #{done}]
    dsb     sy
    sev
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
2:  wfi
    b       2b

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
    mov     x9, #1
    str     x9, [x19, #{fresh} + 32]
    dsb     sy
    sev
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
3:  wfi
    b       3b
"#,
    spin = sym SPIN,
    a = const SIGNED.0,
    b = const SIGNED.1,
    stop = const core::mem::offset_of!(Spin, stop),
    ready = const core::mem::offset_of!(Spin, ready),
    loops = const core::mem::offset_of!(Spin, loops),
    bad = const core::mem::offset_of!(Spin, bad),
    seen = const core::mem::offset_of!(Spin, seen),
    pac = const core::mem::offset_of!(Spin, pac),
    done = const core::mem::offset_of!(Spin, done),
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

fn publish() {
    arch::dsb_sy();
    arch::sev();
}

pub fn pauth_keys_per_vcpu() -> CheckResult {
    // ID_AA64ISAR1_EL1.GPA (bits 27:24) or GPI (31:28), or ISAR2.GPA3 (11:8): PACGA.
    let isar1 = read_sysreg!("id_aa64isar1_el1");
    let isar2 = read_sysreg!("s3_0_c0_c6_2");
    if (isar1 >> 24) & 0xff == 0 && (isar2 >> 8) & 0xf == 0 {
        skip!("no generic pointer authentication (ID_AA64ISAR1_EL1.GPA/GPI, ISAR2.GPA3)");
    }
    let n = crate::race::nr_vcpus()?.min(MAX);
    smp::all_off(1..n as u64)?;
    for word in [&SPIN.stop].into_iter().chain(SPIN.ready.iter()) {
        word.store(0, Release);
    }
    for i in 0..MAX {
        for word in [
            &SPIN.loops[i],
            &SPIN.bad[i],
            &SPIN.seen[i],
            &SPIN.pac[i],
            &SPIN.done[i],
        ] {
            word.store(0, Release);
        }
    }
    for word in &SPIN.fresh {
        word.store(0, Release);
    }
    publish();

    let mine = values(0);
    set_own(mine);
    let my_pac = sign();
    let mut started = 1;
    let mut result = Ok(());
    for v in 1..n as u64 {
        if let Err(e) = smp::cpu_on(v, pauth_spinner) {
            result = Err(e);
            break;
        }
        started += 1;
    }
    let ready = arch::wait_until(3000, || {
        (1..started).all(|v| SPIN.ready[v].load(Acquire) != 0)
    });

    let freq = arch::counter_freq();
    let start = arch::now();
    let mut reads = 0u64;
    let mut wrong = None;
    while ready && result.is_ok() && arch::now() - start < freq * SPIN_MS / 1000 {
        let got = own();
        reads += 1;
        if let Some(i) = (0..4).find(|&i| got[i] != mine[i]) {
            wrong = Some((i + 1, got[i], mine[i]));
            break;
        }
        let pac = sign();
        if pac != my_pac {
            wrong = Some((5, pac, my_pac));
            break;
        }
    }
    SPIN.stop.store(1, Release);
    publish();
    let done = arch::wait_until(3000, || {
        (1..started).all(|v| SPIN.done[v].load(Acquire) != 0)
    });
    for v in 1..started as u64 {
        let off = smp::wait_off(v);
        result = result.and(off);
    }
    // Zero again: vCPU 0 stops holding the keys at its next switch.
    set_own([0; 4]);

    result?;
    ensure!(ready, "the other vCPUs did not all set theirs within 3 s");
    ensure!(done, "the other vCPUs did not all stop within 3 s");
    if let Some((i, got, want)) = wrong {
        bail!(
            "vCPU 0 read {} = {got:#x} after {reads} good reads, wanted {want:#x}",
            WHICH[i]
        );
    }
    let pacs: [u64; MAX] = core::array::from_fn(|v| SPIN.pac[v].load(Acquire));
    for (v, &pac) in pacs.iter().enumerate().take(started).skip(1) {
        let (bad, seen) = (SPIN.bad[v].load(Acquire), SPIN.seen[v].load(Acquire));
        let loops = SPIN.loops[v].load(Acquire);
        if bad != 0 {
            let i = (bad as usize).min(5);
            let want = match i {
                5 => pac,
                _ => values(v as u64)[i - 1],
            };
            bail!(
                "vCPU {v} read {} = {seen:#x} after {loops} good reads, wanted {want:#x}",
                WHICH[i]
            );
        }
        ensure!(loops > 0, "vCPU {v} never read its keys back");
    }
    // Different keys sign differently: the check above could tell a neighbour's key.
    ensure!(
        pacs[1..started].iter().all(|&pac| pac != my_pac),
        "vCPUs with different generic keys computed the same PACGA ({my_pac:#x}, {:#x?})",
        &pacs[1..started]
    );

    // A reset (CPU_ON again) starts vCPU 1 with zero keys.
    if n > 1 {
        smp::cpu_on(1, pauth_fresh)?;
        let fresh = arch::wait_until(3000, || SPIN.fresh[4].load(Acquire) != 0);
        smp::wait_off(1)?;
        ensure!(fresh, "vCPU 1 did not report after its reset within 3 s");
        let got: [u64; 4] = core::array::from_fn(|i| SPIN.fresh[i].load(Acquire));
        ensure!(
            got == [0; 4],
            "vCPU 1 after a reset reads APIAKeyLo/Hi, APGAKeyLo/Hi {got:#x?}: want zeros"
        );
    }
    println!("# pauth_keys_per_vcpu: {n} vCPUs, vCPU 0 read and signed with its own {reads} times");
    Ok(())
}
