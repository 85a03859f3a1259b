//! The attacker's cases, in the order they run, and the runner. Each case does what a
//! hostile guest would and returns `Ok(())` when Bothy answered as it must, or a
//! one-line reason. A case that faults unexpectedly or panics is abandoned and fails
//! alone (`rt::guard::run`). vCPUs 1 and 2 are started first and spin for the whole
//! run (CPU hogs: with the victim that makes four vCPUs on two CPUs, so the victim is
//! time-shared with the attacker), taking the SGIs the SGI case sends them.
//!
//! A case that finds a Bothy bug not fixed yet can be gated (bootarg
//! `attacker.<gate>=1`) so CI stays green until the fix lands; none is gated now.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};

use crate::arch::{self, mmio_read32, mmio_read64, mmio_write32, read_sysreg, write_sysreg};
use crate::exceptions::{self, run_el0, sgis_taken};
use crate::msg::{bail, ensure, CheckResult};
use crate::psci::{self, hvc};
use crate::uart::{print, println};
use crate::{GICD_BASE, GICR_BASE, RAM_BASE, UART_BASE};
use rt::exceptions::{
    Fault, DFSC_EXT_ABORT, EC_DABT_CUR, EC_DABT_LOW, EC_SVC32, EC_UNKNOWN, ESR_FNV,
    KIND_SYNC_LOWER_A32,
};
use rt::gic::{GICR_SGI_OFFSET, GICR_STRIDE};
use rt::guard::{self, guarded};

/// (name, gate bootarg or none, case).
type Case = (&'static str, Option<&'static str>, fn() -> CheckResult);

static CASES: &[Case] = &[
    ("console_forgery", None, console_forgery),
    ("gic_and_hogs_up", None, gic_and_hogs_up),
    ("ipa_space_outside_ram", None, ipa_space_outside_ram),
    ("foreign_gicr_frames", None, foreign_gicr_frames),
    ("gicd_spis_not_owned", None, gicd_spis_not_owned),
    ("psci_foreign_mpidr", None, psci_foreign_mpidr),
    ("sgi_to_nobody", None, sgi_to_nobody),
    ("isv0_device_access", None, isv0_device_access),
    ("el2_registers", None, el2_registers),
    ("trapped_registers", None, trapped_registers),
    (
        "pmu_cycles_across_hypercalls",
        None,
        pmu_cycles_across_hypercalls,
    ),
    ("pmu_cycles_across_wfi", None, pmu_cycles_across_wfi),
    ("aarch32_el0", None, aarch32_el0),
    ("flood_hypercalls", None, flood_hypercalls),
    ("flood_mmio", None, flood_mmio),
    ("flood_sgis", None, flood_sgis),
    ("flood_faults", None, flood_faults),
    ("flood_console", None, flood_console),
];

// ---- the runner ----------------------------------------------------------------------

/// The running case (vCPU 0 only; no exception handler touches them).
static mut CURRENT: usize = 0;
static mut RESULT: Option<CheckResult> = None;

extern "C" fn run_current() {
    // SAFETY: vCPU 0 only, and the runner is not reading them while a case runs.
    unsafe {
        let (_, _, f) = CASES[CURRENT];
        RESULT = Some(f());
    }
}

pub fn run() -> ! {
    let (mut ok, mut failed) = (0u32, 0u32);
    for (i, (name, gate, _)) in CASES.iter().enumerate() {
        if let Some(gate) = gate {
            if !crate::bootarg(gate.as_bytes()) {
                println!("# {name}: skipped (finds a Bothy bug not fixed yet; {gate} runs it)");
                continue;
            }
        }
        // SAFETY: see CURRENT; no case runs now.
        unsafe {
            CURRENT = i;
            RESULT = None;
        }
        let outcome = guard::run(run_current);
        arch::irqs_mask();
        write_sysreg!("cntv_ctl_el0", 0);
        // SAFETY: see CURRENT.
        let result = unsafe { (*core::ptr::addr_of_mut!(RESULT)).take() };
        match (outcome, result) {
            (Ok(()), Some(Ok(()))) => {
                ok += 1;
                println!("TEST {name} ok");
            }
            (Ok(()), Some(Err(why))) => {
                failed += 1;
                println!("TEST {name} FAILED: {why}");
            }
            (Ok(()), None) => {
                failed += 1;
                println!("TEST {name} FAILED: returned without a result");
            }
            (Err(abort), _) => {
                failed += 1;
                println!("TEST {name} FAILED: {abort}");
            }
        }
    }
    HOG_STOP.store(true, Release);
    println!("# injected faults: {}", guard::injected_faults());
    println!("TEST summary: {ok} ok, {failed} failed");
    let r = psci::system_off();
    println!("TEST system_off FAILED: returned {r}");
    rt::exceptions::park()
}

// ---- helpers -------------------------------------------------------------------------

const SENTINEL: u64 = 0x5e47_1e15_5e47_1e15;
const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;

/// A 32-bit load from `addr` under the guard; the register keeps [`SENTINEL`] if the
/// load did not complete.
fn try_read32(addr: usize) -> (u64, Option<Fault>) {
    guarded(|| {
        let mut v = SENTINEL;
        // SAFETY: a load from an address that must abort; the guard skips it if it does.
        unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = inout(reg) v, options(nostack)) };
        v
    })
}

fn try_write32(addr: usize, v: u32) -> Option<Fault> {
    guarded(|| arch::mmio_write32(addr, v)).1
}

fn mmio_write64(addr: usize, v: u64) {
    // SAFETY: a GIC register (64-bit access allowed); single str, so ISV = 1.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// The fault must be the synchronous external abort Bothy injects for an access it does
/// not emulate: data abort at EL1, DFSC 0x10, FAR the address, WnR as the access.
fn expect_sea(what: &str, addr: usize, write: bool, fault: Option<Fault>) -> CheckResult {
    let Some(f) = fault else {
        bail!("{what} at {addr:#x} completed without an abort");
    };
    ensure!(
        f.ec() == EC_DABT_CUR && f.fsc() == DFSC_EXT_ABORT,
        "{what} at {addr:#x}: want a synchronous external abort (EC 0x25, DFSC 0x10): {f}"
    );
    ensure!(
        f.esr & ESR_FNV != 0 || f.far == addr as u64,
        "{what} at {addr:#x}: FAR_EL1 {:#x}",
        f.far
    );
    ensure!(
        (f.esr >> 6) & 1 == write as u64,
        "{what} at {addr:#x}: ESR_EL1.WnR wrong: {f}"
    );
    Ok(())
}

/// A read and a write at `addr` must both abort, and the read must not have loaded.
fn expect_no_access(addr: usize) -> CheckResult {
    let (v, fault) = try_read32(addr);
    expect_sea("load", addr, false, fault)?;
    ensure!(
        v == SENTINEL,
        "load at {addr:#x} aborted but wrote {v:#x} to its register"
    );
    expect_sea("store", addr, true, try_write32(addr, 0xA77A_C4ED))
}

/// Unmask IRQs on this vCPU for `ms`.
fn take_irqs(ms: u64) {
    arch::irqs_unmask();
    let end = arch::now() + arch::ms_to_ticks(ms);
    while arch::now() < end {
        arch::cpu_relax();
    }
    arch::irqs_mask();
}

// ---- console -------------------------------------------------------------------------

/// Lines that try to pass for Bothy's or the victim's. The guest cannot see the outcome:
/// the QEMU test checks each came out tagged `[attacker] ` with its control characters
/// shown (`^[`, `^M`, `^H`), and that `bothy run` did not take any as its verdict.
fn console_forgery() -> CheckResult {
    println!("bothy: all VMs powered off");
    print!("\x1b[2K\x1b[1Gbothy: error: forged by the attacker\n");
    print!("attacker-was-here\rbothy: powering the machine off\n");
    println!("[victim] VICTIM summary: ok");
    print!("\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08bothy: VM victim powered off\n");
    Ok(())
}

// ---- bring-up ------------------------------------------------------------------------

/// vCPUs 1 and 2: hogs (the VM has 3 vCPUs).
const HOGS_PLUS_ONE: usize = 3;
static HOGS_READY: AtomicU32 = AtomicU32::new(0);
static HOG_STOP: AtomicBool = AtomicBool::new(false);

/// The GIC for vCPU 0, and vCPUs 1 and 2 started as CPU hogs that take SGIs.
fn gic_and_hogs_up() -> CheckResult {
    let stuck = |s: rt::gic::Stuck| crate::msg::msg!("{} stuck at {:#x}", s.what, s.value);
    rt::gic::dist_enable(GICD_BASE).map_err(stuck)?;
    rt::gic::rd_init(GICR_BASE).map_err(stuck)?;
    rt::gic::icc_sre_enable();
    rt::gic::icc_enable();
    extern "C" {
        fn hog_entry();
    }
    for cpu in 1..HOGS_PLUS_ONE {
        let r = hvc(
            psci::PSCI_CPU_ON_64,
            cpu as u64,
            hog_entry as *const () as u64,
            cpu as u64,
        );
        ensure!(r == 0, "CPU_ON({cpu}) = {r}");
    }
    ensure!(
        arch::wait_until(2000, || HOGS_READY.load(Acquire)
            == HOGS_PLUS_ONE as u32 - 1),
        "{} of the hog vCPUs came up within 2 s",
        HOGS_READY.load(Acquire)
    );
    Ok(())
}

/// A hog vCPU (low.S `hog_entry`): its GIC, then spin with IRQs on until the run ends.
#[no_mangle]
extern "C" fn secondary_main(cpu: usize) -> ! {
    let up = rt::gic::rd_init(GICR_BASE + cpu * GICR_STRIDE).is_ok();
    rt::gic::icc_sre_enable();
    rt::gic::icc_enable();
    if !up {
        println!("# vCPU {cpu}: redistributor did not wake");
    }
    // One writer at a time is all the MMU-off memory allows: vCPU n waits for n - 1.
    while HOGS_READY.load(Acquire) != cpu as u32 - 1 {
        core::hint::spin_loop();
    }
    HOGS_READY.store(cpu as u32, Release);
    arch::irqs_unmask();
    // Spin without WFI or YIELD: a vCPU that never gives its CPU up on its own.
    while !HOG_STOP.load(Acquire) {
        core::hint::spin_loop();
    }
    arch::irqs_mask();
    hvc(psci::PSCI_CPU_OFF, 0, 0, 0);
    rt::exceptions::park()
}

// ---- memory --------------------------------------------------------------------------

/// The attacker's own windows (3 vCPUs, 64 MiB): anything else must abort.
const WINDOWS: &[(usize, usize)] = &[
    (GICD_BASE, 0x1_0000),
    (GICR_BASE, 3 * GICR_STRIDE),
    (UART_BASE, 0x1000),
    (RAM_BASE, 64 << 20),
];
const IPA_BITS: u32 = 39;

fn in_window(a: usize) -> bool {
    WINDOWS.iter().any(|&(b, s)| a >= b && a < b + s)
}

/// Loads and stores across the 39-bit IPA space outside the VM's RAM and devices: every
/// 64 MiB below RAM, every 2 MiB from the end of RAM to 2 GiB (where the machine's RAM,
/// and so the victim, would be under an identity map), every 1 GiB to the top, and the
/// words just around each window. Each must get a synchronous external abort and leave
/// the load's register alone. Past 39 bits the access must still abort (any fault code:
/// the stage-1 output size check may catch it first).
fn ipa_space_outside_ram() -> CheckResult {
    let mut n = 0u32;
    let mut probe = |a: usize| -> CheckResult {
        if !in_window(a) && !in_window(a + 3) {
            n += 1;
            expect_no_access(a)?;
        }
        Ok(())
    };
    for &(b, s) in WINDOWS {
        for a in [b - 0x1000, b - 4, b + s, b + s + 0x1000 - 4] {
            probe(a)?;
        }
    }
    for a in (0..RAM_BASE).step_by(64 << 20) {
        probe(a)?;
    }
    for a in (RAM_BASE + (64 << 20)..0x8000_0000).step_by(2 << 20) {
        probe(a)?;
    }
    for a in (1usize << 31..1 << IPA_BITS).step_by(1 << 30) {
        probe(a)?;
        probe(a + (1 << 30) - 8)?;
    }
    let mut beyond = 0u32;
    for a in [1usize << IPA_BITS, 1 << 44, (1 << 48) - 16] {
        let (v, fault) = try_read32(a);
        let Some(f) = fault else {
            bail!("load at {a:#x} (beyond the IPA space) completed: {v:#x}");
        };
        ensure!(
            f.ec() == EC_DABT_CUR && v == SENTINEL,
            "load at {a:#x} beyond the IPA space: want a data abort: {f}"
        );
        beyond += 1;
    }
    println!("# ipa_space_outside_ram: {n} addresses inside 39 bits, {beyond} beyond: all abort");
    Ok(())
}

/// Redistributor frames past the VM's three vCPUs are not there (aborts, like any other
/// hole); the VM's own third frame says it is the last.
fn foreign_gicr_frames() -> CheckResult {
    const GICR_TYPER: usize = 0x8;
    const GICR_WAKER: usize = 0x14;
    const GICR_ISENABLER0: usize = GICR_SGI_OFFSET + 0x100;
    let typer = mmio_read64(GICR_BASE + 2 * GICR_STRIDE + GICR_TYPER);
    ensure!(
        typer >> 32 == 2 && typer & (1 << 4) != 0,
        "own frame 2: GICR_TYPER {typer:#x}, want affinity 2 and Last"
    );
    for frame in [3usize, 4, 5, 63, (UART_BASE - GICR_BASE) / GICR_STRIDE - 1] {
        let rd = GICR_BASE + frame * GICR_STRIDE;
        for reg in [GICR_TYPER, GICR_WAKER, GICR_ISENABLER0] {
            expect_no_access(rd + reg)?;
        }
    }
    Ok(())
}

/// GICD state for interrupts the VM does not have (INTIDs past its SPIs, and the
/// private ones, which live in the redistributors with affinity routing) reads as zero
/// and ignores writes; legacy GICD_SGIR sends nothing.
fn gicd_spis_not_owned() -> CheckResult {
    const GICD_TYPER: usize = 0x4;
    const GICD_SGIR: usize = 0xF00;
    let typer = mmio_read32(GICD_BASE + GICD_TYPER);
    let intids = 32 * ((typer & 0x1f) as usize + 1);
    ensure!(
        (64..1020).contains(&intids),
        "GICD_TYPER {typer:#x}: {intids} INTIDs"
    );
    let words = intids / 32;
    // IGROUPR, IS/ICENABLER, IS/ICPENDR, IS/ICACTIVER: word 0 and every word past the VM's.
    for base in [0x080usize, 0x100, 0x200, 0x300] {
        for w in core::iter::once(0).chain(words..32) {
            let a = GICD_BASE + base + 4 * w;
            mmio_write32(a, u32::MAX);
            let v = mmio_read32(a);
            ensure!(
                v == 0,
                "GICD {:#x} (word {w}) reads {v:#x} after writing ones",
                base + 4 * w
            );
        }
    }
    for intid in (0..32).chain(intids..1020).step_by(4) {
        let a = GICD_BASE + 0x400 + intid;
        mmio_write32(a, 0xa0a0_a0a0);
        let v = mmio_read32(a);
        ensure!(v == 0, "GICD_IPRIORITYR for INTID {intid} reads {v:#x}");
    }
    for intid in intids..1020 {
        let a = GICD_BASE + 0x6000 + 8 * intid;
        mmio_write64(a, 1);
        let v = mmio_read64(a);
        ensure!(v == 0, "GICD_IROUTER{intid} reads {v:#x} after writing 1");
    }
    // The VM's own SPIs are still its own: enable one, read it back, disable it.
    mmio_write32(GICD_BASE + 0x104, 1 << 8);
    let v = mmio_read32(GICD_BASE + 0x104);
    mmio_write32(GICD_BASE + 0x184, 1 << 8);
    ensure!(
        v & (1 << 8) != 0,
        "own SPI 40: GICD_ISENABLER1 reads {v:#x}"
    );
    let before = sgis_taken(0, 3);
    mmio_write32(GICD_BASE + GICD_SGIR, 0x00ff_0003);
    take_irqs(10);
    ensure!(
        sgis_taken(0, 3) == before,
        "a GICD_SGIR write delivered SGI 3"
    );
    Ok(())
}

/// CPU_ON and AFFINITY_INFO on MPIDRs the VM does not have: INVALID_PARAMETERS; on its
/// own running vCPUs: ALREADY_ON / ON.
fn psci_foreign_mpidr() -> CheckResult {
    let entry = RAM_BASE as u64;
    for mpidr in [
        3u64,
        4,
        0xf,
        0xff,
        0x100,
        0x101,
        0xff00,
        0x1_0000,
        0xff_0000,
        1 << 32,
        0xff_00ff_ffff,
    ] {
        let r = hvc(psci::PSCI_CPU_ON_64, mpidr, entry, 0);
        ensure!(
            r == psci::INVALID_PARAMETERS,
            "CPU_ON(MPIDR {mpidr:#x}) = {r}, want -2 INVALID_PARAMETERS"
        );
        let r = hvc(psci::PSCI_AFFINITY_INFO_64, mpidr, 0, 0);
        ensure!(
            r == psci::INVALID_PARAMETERS,
            "AFFINITY_INFO(MPIDR {mpidr:#x}) = {r}, want -2 INVALID_PARAMETERS"
        );
    }
    for mpidr in [0u64, 1, 2] {
        let r = hvc(psci::PSCI_CPU_ON_64, mpidr, entry, 0);
        ensure!(
            r == psci::ALREADY_ON,
            "CPU_ON(own vCPU {mpidr}) = {r}, want -4 ALREADY_ON"
        );
        let r = hvc(psci::PSCI_AFFINITY_INFO_64, mpidr, 0, 0);
        ensure!(r == 0, "AFFINITY_INFO(own vCPU {mpidr}) = {r}, want 0 ON");
    }
    Ok(())
}

/// SGIs to target lists and affinities naming vCPUs the VM does not have reach nobody
/// (and crash nothing); the VM's own vCPUs still get theirs.
fn sgi_to_nobody() -> CheckResult {
    const SGI: u32 = 7;
    let sgi = |v: u64| {
        write_sysreg!("icc_sgi1r_el1", v | u64::from(SGI) << 24);
        arch::isb();
    };
    let counts = || [0, 1, 2].map(|cpu| sgis_taken(cpu, SGI));
    // Wait (IRQs on) until the counts are `want`, or 500 ms; the counts then.
    let settle = |want: [u32; 3]| {
        arch::irqs_unmask();
        arch::wait_until(500, || counts() == want);
        arch::irqs_mask();
        counts()
    };
    let before = counts();
    sgi(0xfff8); // vCPUs 3..15
    sgi(0); // an empty list
    sgi(1 << 16 | 0xffff); // Aff1 = 1
    sgi(0xff << 16 | 0xffff);
    sgi(1 << 32 | 0xffff); // Aff2
    sgi(0xff << 48 | 0xff << 32 | 0xff << 16 | 0xffff); // Aff3..1 all ones
    for rs in 1..16u64 {
        sgi(rs << 44 | 0xffff); // range selector: vCPUs 16 and up
    }
    take_irqs(20);
    let after = counts();
    ensure!(
        after == before,
        "SGIs to absent vCPUs arrived: per vCPU {before:?} -> {after:?}"
    );
    // One at a time: an SGI still pending merges with the next one of its INTID.
    let [a, b, c] = before;
    sgi(1 << 40); // IRM: everyone else, i.e. vCPUs 1 and 2
    let after = settle([a, b + 1, c + 1]);
    ensure!(
        after == [a, b + 1, c + 1],
        "IRM: per vCPU {before:?} -> {after:?}, want +0/+1/+1"
    );
    sgi(0xffff); // vCPUs 0..15: the three that exist
    let after = settle([a + 1, b + 2, c + 2]);
    ensure!(
        after == [a + 1, b + 2, c + 2],
        "target list 0xffff: per vCPU {before:?} -> {after:?}, want +1/+2/+2 in all"
    );
    Ok(())
}

/// Loads and stores Bothy cannot emulate (no instruction syndrome: pairs, writeback,
/// SIMD) to the distributor and the UART: the guest gets an abort, nothing is read or
/// written (the stores would send BEL characters: the QEMU test checks no `^G` came out),
/// and the base register is not written back.
fn isv0_device_access() -> CheckResult {
    let typer = GICD_BASE + 4;
    let dr = UART_BASE + UARTDR;
    let ((a, b), f) = guarded(|| {
        let (mut a, mut b) = (SENTINEL, SENTINEL);
        // SAFETY: a load pair from a device register; aborts, skipped by the guard.
        unsafe {
            asm!("ldp {a:w}, {b:w}, [{p}]", p = in(reg) typer, a = inout(reg) a, b = inout(reg) b, options(nostack))
        };
        (a, b)
    });
    expect_sea("ldp", typer, false, f)?;
    ensure!(
        a == SENTINEL && b == SENTINEL,
        "ldp aborted but loaded {a:#x} {b:#x}"
    );

    let (_, f) = guarded(|| {
        // SAFETY: a store pair to the UART data register; aborts, skipped by the guard.
        unsafe {
            asm!("stp {v:w}, {v:w}, [{p}]", p = in(reg) dr, v = in(reg) 7u32, options(nostack))
        };
    });
    expect_sea("stp", dr, true, f)?;

    let ((p, v), f) = guarded(|| {
        let (mut p, mut v) = (typer, SENTINEL);
        // SAFETY: a post-indexed load from a device register; aborts, skipped by the guard.
        unsafe {
            asm!("ldr {v:w}, [{p}], #4", p = inout(reg) p, v = inout(reg) v, options(nostack))
        };
        (p, v)
    });
    expect_sea("post-indexed ldr", typer, false, f)?;
    ensure!(
        p == typer && v == SENTINEL,
        "post-indexed ldr aborted but base {p:#x}, value {v:#x}"
    );

    let (p, f) = guarded(|| {
        let mut p = dr - 4;
        // SAFETY: a pre-indexed store to the UART; aborts, skipped by the guard.
        unsafe {
            asm!("str {v:w}, [{p}, #4]!", p = inout(reg) p, v = in(reg) 7u32, options(nostack))
        };
        p
    });
    expect_sea("pre-indexed str", dr, true, f)?;
    ensure!(
        p == dr - 4,
        "pre-indexed str aborted but wrote back its base: {p:#x}"
    );

    let (v, f) = guarded(|| {
        let v: u64;
        // SAFETY: a SIMD load from a device register; aborts, skipped by the guard.
        unsafe {
            asm!("movi v0.2d, #0xffffffffffffffff", "ldr q0, [{p}]", "fmov {v}, d0",
                 p = in(reg) GICD_BASE, v = out(reg) v, out("v0") _, options(nostack))
        };
        v
    });
    expect_sea("SIMD ldr q0", GICD_BASE, false, f)?;
    ensure!(v == u64::MAX, "SIMD load aborted but loaded {v:#x}");
    Ok(())
}

/// One instruction that must be UNDEFINED at EL1 (no nested virtualization: EL2 and EL3
/// registers and operations do not exist for the guest). `$insn` names `{v}`.
macro_rules! undefined {
    ($insn:literal) => {
        ($insn, || {
            guarded(|| {
                let mut v = SENTINEL;
                // SAFETY: must be UNDEFINED at EL1; the guard skips it. Were it executed
                // (a broken hypervisor), it would read or zero an EL2 register: that is
                // what this case exists to catch.
                unsafe { asm!($insn, v = inout(reg) v, options(nostack)) };
                v
            })
        })
    };
}

/// EL2 and EL3 system registers and operations from EL1: undefined instruction, taken at
/// EL1 (the register in `{v}` keeps its value).
fn el2_registers() -> CheckResult {
    type Probe = (&'static str, fn() -> (u64, Option<Fault>));
    let probes: &[Probe] = &[
        undefined!("mrs {v}, s3_4_c1_c1_0"),   // HCR_EL2
        undefined!("mrs {v}, s3_4_c2_c1_0"),   // VTTBR_EL2
        undefined!("mrs {v}, s3_4_c2_c1_2"),   // VTCR_EL2
        undefined!("mrs {v}, s3_4_c12_c0_0"),  // VBAR_EL2
        undefined!("mrs {v}, s3_4_c13_c0_2"),  // TPIDR_EL2
        undefined!("mrs {v}, s3_4_c1_c0_0"),   // SCTLR_EL2
        undefined!("mrs {v}, s3_4_c4_c0_1"),   // ELR_EL2
        undefined!("mrs {v}, s3_4_c14_c1_0"),  // CNTHCTL_EL2
        undefined!("mrs {v}, s3_4_c14_c0_3"),  // CNTVOFF_EL2
        undefined!("mrs {v}, s3_4_c12_c11_0"), // ICH_HCR_EL2
        undefined!("mrs {v}, s3_4_c12_c12_0"), // ICH_LR0_EL2
        undefined!("mrs {v}, s3_4_c1_c1_1"),   // MDCR_EL2
        undefined!("mrs {v}, s3_6_c1_c1_0"),   // SCR_EL3
        undefined!("msr s3_4_c13_c0_2, {v}"),  // TPIDR_EL2 (Bothy's per-CPU pointer)
        undefined!("msr s3_4_c12_c0_0, {v}"),  // VBAR_EL2
        undefined!("msr s3_4_c1_c1_0, {v}"),   // HCR_EL2
        undefined!("msr s3_4_c2_c1_0, {v}"),   // VTTBR_EL2
        undefined!("msr s3_4_c14_c0_3, {v}"),  // CNTVOFF_EL2
        undefined!("msr s3_4_c12_c12_0, {v}"), // ICH_LR0_EL2
        undefined!("sys #4, c7, c8, #4, {v}"), // AT S12E1R
        undefined!("sys #4, c8, c7, #0, {v}"), // TLBI ALLE2 (Xt ignored)
        undefined!("sys #4, c8, c7, #6, {v}"), // TLBI VMALLS12E1
    ];
    for (insn, probe) in probes {
        let (v, fault) = probe();
        let Some(f) = fault else {
            bail!("`{insn}` executed at EL1 (value {v:#x}), want UNDEFINED");
        };
        ensure!(f.ec() == EC_UNKNOWN, "`{insn}`: want UNDEFINED (EC 0): {f}");
        ensure!(
            v == SENTINEL,
            "`{insn}` was undefined but changed its register to {v:#x}"
        );
    }
    Ok(())
}

/// Registers Bothy traps and emulates: the EL1 physical timer is the vCPU's own (writes
/// read back, ISTATUS shown); group-0 and alternate-group SGIs are ignored; HVC and SMC with an immediate
/// other than 0 return NOT_SUPPORTED; SMC #0 is a PSCI call like HVC #0.
fn trapped_registers() -> CheckResult {
    // The physical timer is this vCPU's own (emulated): what it writes reads back, RES0
    // bits stay zero, and a CVAL long past shows ISTATUS; masked, it raises nothing.
    write_sysreg!("cntp_cval_el0", 0x1234);
    write_sysreg!("cntp_ctl_el0", 0xfff0 | 0b011);
    let (ctl, cval) = (read_sysreg!("cntp_ctl_el0"), read_sysreg!("cntp_cval_el0"));
    write_sysreg!("cntp_ctl_el0", 0);
    ensure!(
        ctl == 0b111 && cval == 0x1234,
        "CNTP_CTL/CVAL read {ctl:#x}/{cval:#x} after writes, want 0x7/0x1234"
    );
    let before = sgis_taken(0, 5);
    write_sysreg!("icc_sgi0r_el1", 5 << 24 | 1);
    write_sysreg!("icc_asgi1r_el1", 5 << 24 | 1);
    take_irqs(10);
    ensure!(
        sgis_taken(0, 5) == before,
        "a group-0 / alternate-group SGI was delivered"
    );
    let call = |which: u32| -> i64 {
        let r: u64;
        // SAFETY: hypercalls; x1..x17 clobbered as SMCCC allows.
        unsafe {
            match which {
                0 => asm!("hvc #1", inout("x0") psci::PSCI_VERSION as u64 => r,
                    out("x1") _, out("x2") _, out("x3") _, options(nostack)),
                1 => asm!("smc #1", inout("x0") psci::PSCI_VERSION as u64 => r,
                    out("x1") _, out("x2") _, out("x3") _, options(nostack)),
                _ => asm!("smc #0", inout("x0") psci::PSCI_VERSION as u64 => r,
                    out("x1") _, out("x2") _, out("x3") _, options(nostack)),
            }
        }
        r as u32 as i32 as i64
    };
    let (h1, s1, s0) = (call(0), call(1), call(2));
    let version = hvc(psci::PSCI_VERSION, 0, 0, 0);
    ensure!(h1 == psci::NOT_SUPPORTED, "HVC #1 = {h1}, want -1");
    ensure!(s1 == psci::NOT_SUPPORTED, "SMC #1 = {s1}, want -1");
    ensure!(
        s0 == version,
        "SMC #0 PSCI_VERSION = {s0:#x}, HVC #0 says {version:#x}"
    );
    debug_registers_are_its_own()
}

/// The breakpoint and watchpoint registers (trapped until a vCPU's first access, then
/// switched with it) are this vCPU's alone: at first they read zero, never what the
/// victim (which fills all of its own and checks them every round) left in the CPU;
/// then, filled with the attacker's values, they read back as such for 300 ms while
/// the victim and the two hogs share the CPUs with this vCPU. Before they were
/// switched, each VM read the other's.
fn debug_registers_are_its_own() -> CheckResult {
    use crate::debugregs::{self as dbg, KINDS};
    for (kind, n) in dbg::all() {
        let v = dbg::read(kind, n);
        ensure!(
            v != dbg::victim(kind, n),
            "{}{n} reads the victim's {v:#x}",
            KINDS[kind]
        );
        ensure!(
            v == 0,
            "{}{n} reads {v:#x} before this VM wrote it, want 0",
            KINDS[kind]
        );
    }
    for (kind, n) in dbg::all() {
        dbg::write(kind, n, dbg::attacker(kind, n));
    }
    let end = arch::now() + arch::ms_to_ticks(300);
    let (gap, mut last) = (arch::ms_to_ticks(2), arch::now());
    let (mut rounds, mut gaps) = (0u64, 0u64);
    let wrong = loop {
        if let Some(w) = dbg::first_wrong(dbg::attacker) {
            break Some(w);
        }
        rounds += 1;
        let now = arch::now();
        if now - last > gap {
            gaps += 1;
        }
        last = now;
        if now >= end {
            break None;
        }
    };
    for (kind, n) in dbg::all() {
        dbg::write(kind, n, 0);
    }
    if let Some((kind, n, v)) = wrong {
        let whose = if v == dbg::victim(kind, n) {
            "the victim's "
        } else {
            ""
        };
        bail!(
            "{}{n} read {whose}{v:#x} after {rounds} good rounds, {gaps} pauses of over 2 ms, wrote {:#x}",
            KINDS[kind],
            dbg::attacker(kind, n)
        );
    }
    let (b, w) = dbg::counts();
    println!(
        "# trapped_registers: {b} breakpoints and {w} watchpoints its own for {rounds} rounds, across {gaps} pauses of over 2 ms (switched out)"
    );
    lazy_registers_are_its_own()
}

/// The pointer-authentication keys and SVE predicates (each trapped until a vCPU's
/// first use, then switched with it) are this vCPU's alone: at first they read zero,
/// never what the victim (which sets its own and checks them every round) left in the
/// CPU; then, set to the attacker's values, they read back as such for 300 ms while the
/// victim and the two hogs share the CPUs with this vCPU.
fn lazy_registers_are_its_own() -> CheckResult {
    use crate::lazyregs::{self as lazy, ATTACKER_PREDS};
    let (pauth, sve) = (lazy::has_pauth(), lazy::has_sve());
    if pauth {
        let keys = lazy::keys();
        ensure!(
            keys != lazy::victim_keys(),
            "the PAuth keys read the victim's {keys:#x?}"
        );
        ensure!(
            keys == [0; 4],
            "the PAuth keys read {keys:#x?} before this VM set them, want 0"
        );
        lazy::set_keys(lazy::attacker_keys());
    }
    if sve {
        let preds = lazy::preds();
        ensure!(
            preds == [0; 4],
            "SVE predicates P0-P3 hold {preds:?} elements before this VM set them, want none (the victim's hold 9..=12)"
        );
        lazy::set_preds(ATTACKER_PREDS);
    }
    let end = arch::now() + arch::ms_to_ticks(300);
    let mut rounds = 0u64;
    let wrong = loop {
        if pauth && lazy::keys() != lazy::attacker_keys() {
            break Some("PAuth keys");
        }
        if sve && lazy::preds() != lazy::preds_of(ATTACKER_PREDS) {
            break Some("SVE predicates");
        }
        rounds += 1;
        if arch::now() >= end {
            break None;
        }
    };
    if pauth {
        lazy::set_keys([0; 4]);
    }
    if let Some(what) = wrong {
        bail!("its {what} changed after {rounds} good rounds");
    }
    println!("# trapped_registers: PAuth keys ({pauth}) and SVE predicates ({sve}) its own for {rounds} rounds");
    Ok(())
}

// ---- PMU -----------------------------------------------------------------------------

const PMCR_E: u64 = 1 << 0;
const PMCR_C: u64 = 1 << 2;
const PMCR_DP: u64 = 1 << 5;
/// PMCCFILTR_EL0.NSH: count at EL2 too (if EL2 allows it).
const PMCCFILTR_NSH: u64 = 1 << 27;
const PMCNTEN_C: u64 = 1 << 31;

fn have_pmu() -> bool {
    let pmuver = (read_sysreg!("id_aa64dfr0_el1") >> 8) & 0xf;
    pmuver != 0 && pmuver != 0xf
}

/// Cycles PMCCNTR counts across `f` with PMCCFILTR_EL0 = `filter` and PMCR_EL0.DP clear.
fn cycles(filter: u64, f: impl FnOnce()) -> u64 {
    let pmcr = read_sysreg!("pmcr_el0");
    write_sysreg!("pmccfiltr_el0", filter);
    write_sysreg!("pmcntenset_el0", PMCNTEN_C);
    write_sysreg!("pmcr_el0", (pmcr & !PMCR_DP) | PMCR_E | PMCR_C);
    arch::isb();
    let before = read_sysreg!("pmccntr_el0");
    f();
    arch::isb();
    let after = read_sysreg!("pmccntr_el0");
    write_sysreg!("pmcntenclr_el0", PMCNTEN_C);
    write_sysreg!("pmcr_el0", pmcr);
    after.wrapping_sub(before)
}

/// The cycle counter must not count what Bothy does at EL2 (a timing channel into the
/// hypervisor), even when the guest's filter asks for EL2 (NSH) and PMCR_EL0.DP is
/// clear: across hypercalls it counts about what it counts without NSH.
/// Found that Bothy set MDCR_EL2.HPMD but not HCCD (HPMD stops the cycle counter only
/// when the guest sets PMCR_EL0.DP); fixed.
fn pmu_cycles_across_hypercalls() -> CheckResult {
    const CALLS: u32 = 2000;
    if !have_pmu() {
        println!("# pmu_cycles_across_hypercalls: no PMUv3, nothing to check");
        return Ok(());
    }
    let calls = || {
        for _ in 0..CALLS {
            hvc(psci::PSCI_VERSION, 0, 0, 0);
        }
    };
    let (mut el1, mut el2) = (u64::MAX, u64::MAX);
    for _ in 0..3 {
        el1 = el1.min(cycles(0, calls));
        el2 = el2.min(cycles(PMCCFILTR_NSH, calls));
    }
    println!("# pmu_cycles_across_hypercalls: {CALLS} calls: {el1} cycles at EL1, {el2} asking for EL2 too");
    ensure!(
        el2 < el1 * 3 / 2 + 10_000,
        "PMCCNTR counts EL2: {el2} cycles with PMCCFILTR_EL0.NSH, {el1} without, over {CALLS} hypercalls"
    );
    Ok(())
}

/// Across a WFI that blocks for 50 ms the guest runs a handful of instructions: its
/// cycle counter (EL1 only, the default filter) must not count other vCPUs (the victim,
/// vCPU 1) that ran meanwhile on the same CPU, nor Bothy idling. Compared with a 5 ms
/// busy wait, it must count less.
/// Found that Bothy did not switch PMU state between vCPUs; fixed (hyp's context.rs).
/// Under TCG the cycle counter follows the host's clock, so a host that deschedules
/// QEMU while this vCPU is at EL1 adds that time too: the best of three trials is kept
/// (a real leak shows in every one; host noise in one now and then).
fn pmu_cycles_across_wfi() -> CheckResult {
    const TRIALS: usize = 3;
    if !have_pmu() {
        println!("# pmu_cycles_across_wfi: no PMUv3, nothing to check");
        return Ok(());
    }
    let (mut busy5, mut slept) = (0, u64::MAX);
    for _ in 0..TRIALS {
        busy5 = busy5.max(cycles(0, || {
            let end = arch::now() + arch::ms_to_ticks(5);
            while arch::now() < end {}
        }));
        slept = slept.min(cycles(0, || {
            let end = arch::now() + arch::ms_to_ticks(50);
            write_sysreg!("cntv_cval_el0", end);
            write_sysreg!("cntv_ctl_el0", 1);
            arch::isb();
            // IRQs masked: the pending timer still ends WFI.
            while arch::now() < end {
                arch::wfi();
            }
            write_sysreg!("cntv_ctl_el0", 0);
        }));
    }
    println!("# pmu_cycles_across_wfi: {slept} cycles over a 50 ms WFI, {busy5} for 5 ms busy");
    ensure!(
        slept < busy5 / 10,
        "PMCCNTR counted {slept} cycles across a 50 ms WFI (a 5 ms busy wait: {busy5}): it counts other vCPUs or Bothy"
    );
    Ok(())
}

// ---- AArch32 EL0 ---------------------------------------------------------------------

/// SPSR for AArch32 EL0: User mode (M = 0x10), A/I/F masked, T (bit 5) for Thumb.
const SPSR_A32_USR: u64 = 0x10 | 0x1c0;
const SPSR_T32_USR: u64 = SPSR_A32_USR | 0x20;
/// SCTLR_EL1.nTWI/nTWE: EL0 WFI/WFE not trapped to EL1 (so they reach EL2's trap).
const SCTLR_NTWI_NTWE: u64 = (1 << 16) | (1 << 18);

/// User code in AArch32 state: a 16-bit Thumb store to the UART data register and a
/// 16-bit Thumb WFI (both trap to Bothy, which must emulate them and step 2 bytes), and
/// an A32 load from an unmapped IPA (Bothy must inject a data abort into EL1 through the
/// lower-EL AArch32 vector, VBAR_EL1 + 0x600). Each trip ends with `svc #0`; an
/// `svc #1` means the trapped instruction was stepped as if it were 4 bytes.
/// Found that Bothy's exit policy assumed A64 (4-byte steps, the vector offset from
/// SPSR.M[3:0] only); fixed (core/src/exit/aarch32.rs).
fn aarch32_el0() -> CheckResult {
    extern "C" {
        static t16_str_code: u8;
        static t16_wfi_code: u8;
        static a32_load_code: u8;
    }
    let el0 = read_sysreg!("id_aa64pfr0_el1") & 0xf;
    if el0 != 2 {
        println!(
            "# aarch32_el0: EL0 is AArch64-only (ID_AA64PFR0_EL1.EL0 = {el0}), nothing to check"
        );
        return Ok(());
    }
    let sctlr = read_sysreg!("sctlr_el1");
    write_sysreg!("sctlr_el1", sctlr | SCTLR_NTWI_NTWE);
    arch::isb();
    let svc0 = |what: &str, e: &exceptions::El0Exit| -> CheckResult {
        ensure!(
            e.kind == KIND_SYNC_LOWER_A32 && e.fault.ec() == EC_SVC32,
            "{what}: came back through vector {} with {}, want SVC from AArch32 (vector 12, EC 0x11)",
            e.kind,
            e.fault
        );
        let imm = e.fault.esr & 0xffff;
        ensure!(
            imm == 0,
            "{what}: reached svc #{imm}: the trapped instruction was stepped by 4 bytes"
        );
        Ok(())
    };
    // Addresses of code in our image (low.S), not dereferenced here.
    let (t16_str, t16_wfi, a32_load) = (
        core::ptr::addr_of!(t16_str_code) as u64,
        core::ptr::addr_of!(t16_wfi_code) as u64,
        core::ptr::addr_of!(a32_load_code) as u64,
    );
    // Each part runs whatever the others found, so one run shows every bug.
    let t16_store = || -> CheckResult {
        print!("# aarch32_el0: T16 store wrote: ");
        let e = run_el0(
            t16_str,
            SPSR_T32_USR,
            (UART_BASE + UARTDR) as u64,
            b'T' as u64,
            0,
        );
        println!("");
        svc0("T16 str to the UART", &e)
    };
    let t16_wfi = || -> CheckResult {
        // Nothing may be pending, or the WFI completes without trapping: the virtual
        // timer, 2 ms ahead, ends Bothy's wait (IRQs stay masked at EL0).
        write_sysreg!("cntv_cval_el0", arch::now() + arch::ms_to_ticks(2));
        write_sysreg!("cntv_ctl_el0", 1);
        arch::isb();
        let e = run_el0(t16_wfi, SPSR_T32_USR, 0, 0, 0);
        take_irqs(5);
        write_sysreg!("cntv_ctl_el0", 0);
        svc0("T16 wfi", &e)
    };
    let a32_abort = || -> CheckResult {
        let bad = 0x3000_0000u64;
        let e = run_el0(a32_load, SPSR_A32_USR, 0, 0, bad);
        ensure!(
            e.kind == KIND_SYNC_LOWER_A32,
            "A32 load from {bad:#x}: abort came through vector {} (VBAR_EL1 + {:#x}), want 12 (+0x600): {}",
            e.kind,
            e.kind * 0x80,
            e.fault
        );
        ensure!(
            e.fault.ec() == EC_DABT_LOW && e.fault.fsc() == DFSC_EXT_ABORT,
            "A32 load from {bad:#x}: want a lower-EL synchronous external abort (EC 0x24, DFSC 0x10): {}",
            e.fault
        );
        ensure!(
            e.fault.esr & ESR_FNV != 0 || e.fault.far == bad,
            "A32 load from {bad:#x}: FAR {:#x}",
            e.fault.far
        );
        Ok(())
    };
    let mut result = Ok(());
    for (part, r) in [
        ("T16 str", t16_store()),
        ("T16 wfi", t16_wfi()),
        ("A32 abort", a32_abort()),
    ] {
        match r {
            Ok(()) => println!("# aarch32_el0: {part}: ok"),
            Err(why) => {
                println!("# aarch32_el0: {part}: {why}");
                if result.is_ok() {
                    result = Err(why);
                }
            }
        }
    }
    write_sysreg!("sctlr_el1", sctlr);
    arch::isb();
    result
}

// ---- floods --------------------------------------------------------------------------

fn elapsed_ms(since: u64) -> u64 {
    (arch::now() - since) * 1000 / arch::counter_freq().max(1)
}

fn flood_hypercalls() -> CheckResult {
    const N: u32 = 100_000;
    let t = arch::now();
    let want = hvc(psci::PSCI_VERSION, 0, 0, 0);
    for i in 0..N {
        let v = hvc(psci::PSCI_VERSION, 0, 0, 0);
        ensure!(
            v == want,
            "call {i}: PSCI_VERSION {v:#x}, first said {want:#x}"
        );
    }
    println!("# flood_hypercalls: {N} in {} ms", elapsed_ms(t));
    Ok(())
}

fn flood_mmio() -> CheckResult {
    const N: u32 = 100_000;
    let t = arch::now();
    let want = mmio_read32(GICD_BASE + 4);
    for i in 0..N {
        let v = mmio_read32(GICD_BASE + 4);
        ensure!(
            v == want,
            "read {i}: GICD_TYPER {v:#x}, first read {want:#x}"
        );
    }
    println!("# flood_mmio: {N} GICD_TYPER reads in {} ms", elapsed_ms(t));
    Ok(())
}

fn flood_sgis() -> CheckResult {
    const N: u32 = 10_000;
    const SGI: u32 = 8;
    let t = arch::now();
    let before = sgis_taken(0, SGI);
    arch::irqs_unmask();
    for _ in 0..N {
        rt::gic::send_sgi(SGI, 0);
    }
    let all = arch::wait_until(1000, || sgis_taken(0, SGI) - before == N);
    arch::irqs_mask();
    let got = sgis_taken(0, SGI) - before;
    println!(
        "# flood_sgis: {N} SGIs to itself in {} ms, {got} taken",
        elapsed_ms(t)
    );
    ensure!(all, "sent {N} SGIs to itself (IRQs unmasked), took {got}");
    Ok(())
}

/// Many bad accesses: each gets its abort, and Bothy's report of them is rate-limited
/// (the QEMU test counts its lines against `# injected faults`).
fn flood_faults() -> CheckResult {
    const N: u32 = 4096;
    let t = arch::now();
    for _ in 0..N {
        let (_, f) = try_read32(0x3000_0000);
        ensure!(
            f.is_some_and(|f| f.is_sea()),
            "a bad load did not abort: {f:?}",
            f = f.map(|f| f.esr)
        );
    }
    println!("# flood_faults: {N} aborts in {} ms", elapsed_ms(t));
    Ok(())
}

/// A few hundred KB of console output, written straight to the data register (one
/// trapped store a byte). The QEMU test checks the last line came out whole.
fn flood_console() -> CheckResult {
    const LINES: u32 = 3000;
    const WIDTH: usize = 96;
    let fr = mmio_read32(UART_BASE + UARTFR);
    ensure!(
        fr & (1 << 5) == 0,
        "UARTFR {fr:#x}: transmit FIFO full before the flood"
    );
    let t = arch::now();
    let put = |b: u8| mmio_write32(UART_BASE + UARTDR, b as u32);
    for i in 0..LINES {
        for b in b"FLOOD " {
            put(*b);
        }
        for k in (0..8).rev() {
            put(b'0' + (i / 10u32.pow(k) % 10) as u8);
        }
        for k in 0..WIDTH - 14 {
            put(b'a' + (k % 26) as u8);
        }
        put(b'\r');
        put(b'\n');
    }
    let bytes = LINES as usize * WIDTH;
    println!(
        "FLOOD done: {LINES} lines, {bytes} bytes in {} ms",
        elapsed_ms(t)
    );
    Ok(())
}
