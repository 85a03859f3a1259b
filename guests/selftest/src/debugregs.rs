//! `debug_registers_per_vcpu`: a hardware breakpoint, a watchpoint and the OS lock
//! belong to the vCPU that programs them. A CPU has one set of debug registers, so a
//! hypervisor must move them with its vCPUs (Bothy does so lazily: trapped until a
//! vCPU's first access, then switched with it).
//!
//! Every vCPU of the VM (up to [`vcpuregs::MAX`]) writes values of its own into
//! DBGBVR0_EL1, DBGBCR0_EL1, DBGWVR0_EL1 and DBGWCR0_EL1 (enable bits clear: nothing
//! fires) and locks the OS lock on odd vCPUs, then all of them read everything back
//! while being switched out and in ([`vcpuregs`] runs it); each must read its own
//! values every time. Then vCPU 1, which left its values and the OS lock locked, is
//! started again (a reset) and must read zeros and the OS lock unlocked, as KVM resets
//! them (bare QEMU resets the OS lock locked, its cold-reset value, so this last part
//! fails there).

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::msg::{ensure, CheckResult};
use crate::uart::println;
use crate::vcpuregs::{self, Check, Spin};

static SPIN: Spin = Spin::new();

/// vCPU `v`'s DBGBVR0, DBGBCR0, DBGWVR0, DBGWCR0 (the assembly computes the same):
/// addresses below bit 47 (so no sign extension), the breakpoint for EL1 and EL0 on
/// even vCPUs and EL1 only on odd ones, the watchpoint on byte `v` of its doubleword,
/// for loads and stores at EL1 and EL0; E (bit 0) clear in both.
const fn values(v: u64) -> [u64; 4] {
    [
        0xb00 << 32 | v << 16,
        0x1e2 | ((v & 1) ^ 1) << 2,
        0xa00 << 32 | v << 16,
        0x20 << v | 0x1e,
    ]
}

const WHICH: [&str; 6] = ["", "DBGBVR0", "DBGBCR0", "DBGWVR0", "DBGWCR0", "OSLSR.OSLK"];

core::arch::global_asm!(
    r#"
.section .text.debugregs, "ax"
// vCPUs 1..: x0 = the vCPU's index. Program, read back until told to stop, CPU_OFF
// (leaving its values, and odd ones the OS lock locked, for the reset to clear).
.global debug_spinner
debug_spinner:
    msr     daifset, #0xf
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    add     x20, x19, x0, lsl #3
    mov     x10, #0xb00
    lsl     x10, x10, #32
    orr     x10, x10, x0, lsl #16
    and     x9, x0, #1
    eor     x9, x9, #1
    mov     x11, #0x1e2
    orr     x11, x11, x9, lsl #2
    mov     x12, #0xa00
    lsl     x12, x12, #32
    orr     x12, x12, x0, lsl #16
    mov     x9, #0x20
    lsl     x13, x9, x0
    orr     x13, x13, #0x1e
    and     x14, x0, #1
    msr     dbgbvr0_el1, x10
    msr     dbgbcr0_el1, x11
    msr     dbgwvr0_el1, x12
    msr     dbgwcr0_el1, x13
    msr     oslar_el1, x14
    isb
    mov     x9, #1
    str     x9, [x20, #{ready}]
    dsb     sy
    sev
    mov     x21, #0
1:  mrs     x9, dbgbvr0_el1
    mov     x15, #1
    cmp     x9, x10
    b.ne    8f
    mrs     x9, dbgbcr0_el1
    mov     x15, #2
    cmp     x9, x11
    b.ne    8f
    mrs     x9, dbgwvr0_el1
    mov     x15, #3
    cmp     x9, x12
    b.ne    8f
    mrs     x9, dbgwcr0_el1
    mov     x15, #4
    cmp     x9, x13
    b.ne    8f
    mrs     x9, oslsr_el1
    ubfx    x9, x9, #1, #1
    mov     x15, #5
    cmp     x9, x14
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
.global debug_fresh
debug_fresh:
    msr     daifset, #0xf
    adrp    x19, {spin}
    add     x19, x19, :lo12:{spin}
    mrs     x9, dbgbvr0_el1
    str     x9, [x19, #{fresh}]
    mrs     x9, dbgbcr0_el1
    str     x9, [x19, #{fresh} + 8]
    mrs     x9, dbgwvr0_el1
    str     x9, [x19, #{fresh} + 16]
    mrs     x9, dbgwcr0_el1
    str     x9, [x19, #{fresh} + 24]
    mrs     x9, oslsr_el1
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
    fn debug_spinner();
    fn debug_fresh();
}

/// vCPU 0's own registers, as read now.
fn own() -> [u64; 5] {
    [
        read_sysreg!("dbgbvr0_el1"),
        read_sysreg!("dbgbcr0_el1"),
        read_sysreg!("dbgwvr0_el1"),
        read_sysreg!("dbgwcr0_el1"),
        (read_sysreg!("oslsr_el1") >> 1) & 1,
    ]
}

fn set_own(v: [u64; 4], os_lock: u64) {
    write_sysreg!("dbgbvr0_el1", v[0]);
    write_sysreg!("dbgbcr0_el1", v[1]);
    write_sysreg!("dbgwvr0_el1", v[2]);
    write_sysreg!("dbgwcr0_el1", v[3]);
    write_sysreg!("oslar_el1", os_lock);
    arch::isb();
}

pub fn debug_registers_per_vcpu() -> CheckResult {
    // vCPU 0 leaves the OS lock unlocked.
    let mine = values(0);
    let want_own = [mine[0], mine[1], mine[2], mine[3], 0];
    let out = vcpuregs::run(Check {
        spin: &SPIN,
        spinner: debug_spinner,
        fresh: debug_fresh,
        fresh_len: 5,
        set_own: &mut || set_own(mine, 0),
        check_own: &mut || {
            let got = own();
            (0..5)
                .find(|&i| got[i] != want_own[i])
                .map(|i| (i + 1, got[i], want_own[i]))
        },
        // Zero again: vCPU 0 stops holding the debug registers at its next switch.
        put_back: &mut || set_own([0; 4], 0),
        name: &|i| WHICH[i.min(5)],
        want: &|v, i| match i {
            5 => (v & 1) as u64,
            _ => values(v as u64)[(i - 1).min(3)],
        },
    })?;
    // A reset (CPU_ON again) starts vCPU 1 with zeros and the OS lock unlocked.
    if let Some(got) = out.fresh {
        ensure!(
            got[..4] == [0; 4] && (got[4] >> 1) & 1 == 0,
            "vCPU 1 after a reset reads DBGBVR0/BCR0/WVR0/WCR0 {:#x}/{:#x}/{:#x}/{:#x}, OSLSR {:#x}: want zeros, unlocked",
            got[0],
            got[1],
            got[2],
            got[3],
            got[4]
        );
    }
    println!(
        "# debug_registers_per_vcpu: {} vCPUs, vCPU 0 read its own {} times, across {} pauses of over 2 ms (switched out)",
        out.vcpus, out.reads, out.gaps
    );
    Ok(())
}
