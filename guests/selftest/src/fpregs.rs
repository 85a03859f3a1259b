//! `fp_registers_per_vcpu`: V0–V31, FPCR and FPSR belong to the vCPU that writes
//! them. A CPU has one set of FP/SIMD registers, so a hypervisor must move them with its
//! vCPUs whenever a CPU changes vCPU.
//!
//! Every vCPU of the VM (up to [`MAX`]) loads values of its own into all 32 V registers
//! (both halves: the low doubleword through `fmov`, the high one through `ins`), FPCR
//! (rounding mode, AHP, DN, FZ) and FPSR (cumulative flags), then all of them read
//! everything back for [`SPIN_MS`] with interrupts masked, keeping their CPUs busy.
//! With more vCPUs than CPUs (4 on QEMU's 2 in `cli/tests/selftest_guest.rs`) each is
//! switched out and in, and moved between CPUs, many times; each must read its own
//! values every time. Odd vCPUs spend half of each round in integer-only code, so some
//! slices pass without any FP/SIMD instruction (a hypervisor that switches these
//! registers lazily is exercised both ways).
//!
//! The whole of it is one assembly routine, [`fp_check`], which touches no memory but
//! the shared block and so needs no stack: vCPUs 1.. enter it from CPU_ON (like
//! race.rs), vCPU 0 calls it from the check with every FP/SIMD register declared
//! clobbered (it restores FPCR and FPSR, which Rust code assumes untouched).

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch;
use crate::msg::{bail, ensure, msg, CheckResult, Msg};
use crate::smp;
use crate::uart::println;

/// vCPUs taking part (0 and up to three helpers).
pub const MAX: usize = 4;
/// How long they all read back.
const SPIN_MS: u64 = 300;
/// A gap this long between two of a vCPU's rounds: it was switched out meanwhile.
const GAP_MS: u64 = 2;

/// What each vCPU reports; the assembly addresses it by field offset.
#[repr(C)]
pub struct Spin {
    /// Counter value at which every vCPU stops reading back (set by vCPU 0).
    deadline: AtomicU64,
    /// [`GAP_MS`] in counter ticks.
    gap: AtomicU64,
    ready: [AtomicU64; MAX],
    loops: [AtomicU64; MAX],
    /// 0, or which read came back wrong: 1 + n for the low half of Vn, 33 + n for its
    /// high half, 65 FPCR, 66 FPSR.
    bad: [AtomicU64; MAX],
    /// What that read gave.
    seen: [AtomicU64; MAX],
    /// Rounds more than [`GAP_MS`] apart (the vCPU was not running in between).
    gaps: [AtomicU64; MAX],
    done: [AtomicU64; MAX],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static SPIN: Spin = Spin {
    deadline: ZERO,
    gap: ZERO,
    ready: [ZERO; MAX],
    loops: [ZERO; MAX],
    bad: [ZERO; MAX],
    seen: [ZERO; MAX],
    gaps: [ZERO; MAX],
    done: [ZERO; MAX],
};

/// The low and high doublewords of vCPU `v`'s V`n` (the assembly computes the same).
const LO: u64 = 0x0f1e_0000_a5c3_9687;
const HI: u64 = 0x3c00_0000_5a69_f01e;
const fn v_reg(v: u64, n: u64) -> (u64, u64) {
    (LO ^ v << 56 ^ n << 48, HI ^ v << 56 ^ n << 48)
}

/// vCPU `v`'s FPCR: rounding mode v + 1, AHP, DN on odd vCPUs, FZ on vCPUs 2 and 3.
const fn fpcr(v: u64) -> u64 {
    ((v + 1) & 3) << 22 | 1 << 26 | (v & 1) << 25 | ((v >> 1) & 1) << 24
}

/// vCPU `v`'s FPSR: cumulative flag `v` (IOC, DZC, OFC, UFC) and QC.
const fn fpsr(v: u64) -> u64 {
    1 << v | 1 << 27
}

core::arch::global_asm!(
    r#"
.section .text.fpregs, "ax"
// fp_check(x0 = vCPU index < 4, x1 = deadline, x2 = gap): load this vCPU's values, read
// them back until CNTVCT_EL0 passes the deadline or one is wrong, report in SPIN, and
// return the rounds in x0. Uses x0-x17 and every FP/SIMD register, no stack; masks
// interrupts meanwhile and restores DAIF, FPCR and FPSR.
.global fp_check
fp_check:
    mrs     x15, daif
    msr     daifset, #0xf
    mrs     x16, fpcr
    mrs     x17, fpsr
    adrp    x3, {spin}
    add     x3, x3, :lo12:{spin}
    add     x3, x3, x0, lsl #3
    movz    x4, #{lo0}
    movk    x4, #{lo1}, lsl #16
    movk    x4, #{lo2}, lsl #32
    movk    x4, #{lo3}, lsl #48
    eor     x4, x4, x0, lsl #56
    movz    x5, #{hi0}
    movk    x5, #{hi1}, lsl #16
    movk    x5, #{hi2}, lsl #32
    movk    x5, #{hi3}, lsl #48
    eor     x5, x5, x0, lsl #56
    add     x6, x0, #1
    and     x6, x6, #3
    lsl     x6, x6, #22
    orr     x6, x6, #(1 << 26)
    and     x8, x0, #1
    orr     x6, x6, x8, lsl #25
    ubfx    x8, x0, #1, #1
    orr     x6, x6, x8, lsl #24
    mov     x8, #1
    lsl     x7, x8, x0
    orr     x7, x7, #(1 << 27)
    .irp    i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    mov     x8, #\i
    eor     x9, x4, x8, lsl #48
    eor     x10, x5, x8, lsl #48
    fmov    d\i, x9
    mov     v\i\().d[1], x10
    .endr
    msr     fpcr, x6
    msr     fpsr, x7
    isb
    mov     x8, #1
    str     x8, [x3, #{ready}]
    dsb     sy
    sev
    mov     x11, #0
    mov     x13, #0
    mrs     x12, cntvct_el0
1:
    .irp    i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    mov     x8, #\i
    eor     x9, x4, x8, lsl #48
    fmov    x10, d\i
    mov     x14, #(\i + 1)
    cmp     x10, x9
    b.ne    8f
    eor     x9, x5, x8, lsl #48
    mov     x10, v\i\().d[1]
    mov     x14, #(\i + 33)
    cmp     x10, x9
    b.ne    8f
    .endr
    mrs     x10, fpcr
    mov     x14, #65
    cmp     x10, x6
    b.ne    8f
    mrs     x10, fpsr
    mov     x14, #66
    cmp     x10, x7
    b.ne    8f
    add     x11, x11, #1
    str     x11, [x3, #{loops}]
    // Odd vCPUs: half a gap of integer-only work.
    tbz     x0, #0, 3f
    isb
    mrs     x8, cntvct_el0
    add     x8, x8, x2, lsr #1
2:  isb
    mrs     x9, cntvct_el0
    cmp     x9, x8
    b.lo    2b
3:  isb
    mrs     x9, cntvct_el0
    sub     x10, x9, x12
    mov     x12, x9
    cmp     x10, x2
    cinc    x13, x13, hi
    cmp     x9, x1
    b.lo    1b
    mov     x14, #0
    b       9f
8:  str     x10, [x3, #{seen}]
9:  str     x14, [x3, #{bad}]
    str     x13, [x3, #{gaps}]
    mov     x8, #1
    str     x8, [x3, #{done}]
    msr     fpcr, x16
    msr     fpsr, x17
    dsb     sy
    sev
    msr     daif, x15
    mov     x0, x11
    ret

// vCPUs 1..: x0 = the vCPU's index. FP/SIMD on, fp_check until vCPU 0's deadline,
// then CPU_OFF.
.global fp_spinner
fp_spinner:
    msr     daifset, #0xf
    // CPU_ON reset CPACR_EL1: FP/SIMD traps to EL1 until FPEN allows it.
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    adrp    x9, {spin}
    add     x9, x9, :lo12:{spin}
    ldr     x1, [x9, #{deadline}]
    ldr     x2, [x9, #{gap}]
    bl      fp_check
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
4:  wfi
    b       4b
"#,
    spin = sym SPIN,
    deadline = const core::mem::offset_of!(Spin, deadline),
    gap = const core::mem::offset_of!(Spin, gap),
    ready = const core::mem::offset_of!(Spin, ready),
    loops = const core::mem::offset_of!(Spin, loops),
    bad = const core::mem::offset_of!(Spin, bad),
    seen = const core::mem::offset_of!(Spin, seen),
    gaps = const core::mem::offset_of!(Spin, gaps),
    done = const core::mem::offset_of!(Spin, done),
    lo0 = const LO & 0xffff,
    lo1 = const (LO >> 16) & 0xffff,
    lo2 = const (LO >> 32) & 0xffff,
    lo3 = const LO >> 48,
    hi0 = const HI & 0xffff,
    hi1 = const (HI >> 16) & 0xffff,
    hi2 = const (HI >> 32) & 0xffff,
    hi3 = const HI >> 48,
);

extern "C" {
    fn fp_check();
    fn fp_spinner();
}

/// What a wrong read was, and what it should have been.
fn describe(v: u64, bad: u64) -> (Msg, u64) {
    match bad {
        1..=32 => (msg!("V{} (low half)", bad - 1), v_reg(v, bad - 1).0),
        33..=64 => (msg!("V{} (high half)", bad - 33), v_reg(v, bad - 33).1),
        65 => (msg!("FPCR"), fpcr(v)),
        _ => (msg!("FPSR"), fpsr(v)),
    }
}

pub fn fp_registers_per_vcpu() -> CheckResult {
    let n = crate::race::nr_vcpus()?.min(MAX);
    smp::all_off(1..n as u64)?;
    for i in 0..MAX {
        for word in [
            &SPIN.ready[i],
            &SPIN.loops[i],
            &SPIN.bad[i],
            &SPIN.seen[i],
            &SPIN.gaps[i],
            &SPIN.done[i],
        ] {
            word.store(0, Release);
        }
    }
    let gap = arch::ms_to_ticks(GAP_MS);
    // Room for the helpers to come up, then SPIN_MS of reading back for everyone.
    let deadline = arch::now() + arch::ms_to_ticks(100 + SPIN_MS);
    SPIN.gap.store(gap, Release);
    SPIN.deadline.store(deadline, Release);
    arch::dsb_sy();

    let mut started = 1;
    let mut result = Ok(());
    for v in 1..n as u64 {
        if let Err(e) = smp::cpu_on(v, fp_spinner) {
            result = Err(e);
            break;
        }
        started += 1;
    }

    let rounds: u64;
    // SAFETY: fp_check uses x0-x17, x30 and the FP/SIMD registers (all declared
    // clobbered), no stack, and only SPIN in memory; it restores DAIF, FPCR and FPSR.
    unsafe {
        core::arch::asm!(
            "bl {f}",
            f = sym fp_check,
            inout("x0") 0u64 => rounds,
            in("x1") deadline,
            in("x2") gap,
            clobber_abi("C"),
        );
    }
    let done = arch::wait_until(3000, || {
        (1..started).all(|v| SPIN.done[v].load(Acquire) != 0)
    });
    for v in 1..started as u64 {
        let off = smp::wait_off(v);
        result = result.and(off);
    }
    result?;
    ensure!(done, "the other vCPUs did not all stop within 3 s");
    for v in 0..started {
        let (bad, seen) = (SPIN.bad[v].load(Acquire), SPIN.seen[v].load(Acquire));
        let (loops, gaps) = (SPIN.loops[v].load(Acquire), SPIN.gaps[v].load(Acquire));
        if bad != 0 {
            let (which, want) = describe(v as u64, bad);
            bail!(
                "vCPU {v} read {which} = {seen:#x} after {loops} good rounds and {gaps} pauses of over 2 ms, wrote {want:#x}"
            );
        }
        ensure!(loops > 0, "vCPU {v} never read its registers back");
    }
    // cli/tests/selftest_guest.rs requires pauses when the vCPUs outnumber the CPUs.
    let gaps: u64 = (0..started).map(|v| SPIN.gaps[v].load(Acquire)).sum();
    println!(
        "# fp_registers_per_vcpu: {n} vCPUs, vCPU 0 checked its own {rounds} times; {gaps} pauses of over 2 ms (switched out) in all"
    );
    Ok(())
}
