//! The checks, in the order they run. Each returns `Ok(())` or a one-line reason; a
//! check that faults unexpectedly or panics is abandoned by the runner (main.rs) and
//! reported as failed, and the next one runs. Checks share state only where the
//! hardware does: vCPU 1's power state and the GIC set up by `gic_init`. `cpu_on_race`
//! (race.rs) needs 4 vCPUs and reports itself skipped with fewer; it leaves vCPUs 2 and
//! 3 off and vCPU 1 as it found it, for `cpu_off` and what follows.
//!
//! `cpu_on_bad_entry` runs last on purpose: an implementation that wrongly accepts the
//! bad entry point (bare QEMU does) leaves vCPU 1 executing garbage.

use core::sync::atomic::{AtomicBool, Ordering::*};

use crate::arch::{self, mmio_read32, read_sysreg, write_sysreg};
use crate::exceptions;
use crate::gic;
use crate::msg::{bail, ensure, skip, CheckResult};
use crate::platform::*;
use crate::psci::{self, call, call_raw, CallError};
use crate::smp;
use crate::uart::println;
use rt::exceptions::{Fault, DFSC_EXT_ABORT, EC_DABT_CUR, EC_DABT_LOW, EC_UNKNOWN, ESR_FNV};
use rt::guard::guarded;

pub type Check = (&'static str, fn() -> CheckResult);

pub static CHECKS: &[Check] = &[
    ("boot_protocol", boot_protocol),
    ("psci_version", psci_version),
    ("smccc_version", smccc_version),
    ("psci_features", psci_features),
    ("unknown_hvc", unknown_hvc),
    (
        "id_registers_hide_what_is_trapped",
        id_registers_hide_what_is_trapped,
    ),
    ("cpu_on_errors", cpu_on_errors),
    ("affinity_info", affinity_info),
    ("secondary_boot", secondary_boot),
    ("gic_init", gic_init),
    ("sgi_self", sgi_self),
    ("exits_keep_registers", exits_keep_registers),
    ("ipi_between_vcpus", ipi_between_vcpus),
    ("vtimer", vtimer),
    ("wfi_returns", wfi_returns),
    ("el1_physical_timer", el1_physical_timer),
    ("aarch32_el0", aarch32_el0),
    ("vtimer_level_resampled", vtimer_level_resampled),
    ("pmu_overflow_irq", pmu_overflow_irq),
    ("sgi_held_while_asleep", sgi_held_while_asleep),
    ("bad_access", bad_access),
    ("bad_access_beyond_ipa", bad_access_beyond_ipa),
    ("cpu_on_race", crate::race::cpu_on_race),
    ("cpu_off", cpu_off),
    ("cpu_on_again", cpu_on_again),
    (
        "debug_registers_per_vcpu",
        crate::debugregs::debug_registers_per_vcpu,
    ),
    (
        "fp_registers_per_vcpu",
        crate::fpregs::fp_registers_per_vcpu,
    ),
    ("pauth_keys_per_vcpu", crate::pauthkeys::pauth_keys_per_vcpu),
    ("sve_state_per_vcpu", crate::svepreds::sve_state_per_vcpu),
    ("cpu_on_bad_entry", cpu_on_bad_entry),
    ("pmu_does_not_see_el2", pmu_does_not_see_el2),
];

const BOOT_MAGIC: u64 = 0xB07B_5E1F_7E57_0001;
const BOOT_MAGIC_AGAIN: u64 = 0xB07B_5E1F_7E57_0002;
const FDT_MAGIC: u32 = 0xd00d_feed;
const IMAGE_ALIGN: usize = 2 << 20;
const CNTV_CTL_ENABLE: u64 = 1;
const CNTV_CTL_ISTATUS: u64 = 1 << 2;

static GIC_READY: AtomicBool = AtomicBool::new(false);

/// Readable form of a guarded call's failure for the messages below.
fn hvc_fail(what: &str, e: CallError) -> crate::msg::Msg {
    crate::msg::msg!("{what}: {e}")
}

fn boot_protocol() -> CheckResult {
    let b = crate::boot_info();
    let el = arch::current_el();
    ensure!(el == 1, "running at EL{el}, expected EL1");
    ensure!(
        b.relocs_unknown == 0,
        "{} relocations of unknown type in .rela.dyn",
        b.relocs_unknown
    );
    ensure!(
        b.base.is_multiple_of(IMAGE_ALIGN) && b.base >= RAM_BASE,
        "image loaded at {:#x}: not 2 MiB aligned in RAM",
        b.base
    );
    // Image header image_size (offset 16) against the linked size.
    let hdr_size = mmio_read32(b.base + 16) as usize | (mmio_read32(b.base + 20) as usize) << 32;
    ensure!(
        hdr_size == b.size,
        "header image_size {hdr_size:#x} != linked size {:#x}",
        b.size
    );
    ensure!(
        b.x1_x3 == 0,
        "x1..x3 not zero at entry (OR = {:#x})",
        b.x1_x3
    );
    ensure!(
        b.dtb != 0 && b.dtb.is_multiple_of(8) && b.dtb >= RAM_BASE,
        "x0 = {:#x} is not a DTB address in RAM",
        b.dtb
    );
    let magic = u32::from_be(mmio_read32(b.dtb));
    ensure!(
        magic == FDT_MAGIC,
        "no FDT magic at x0 = {:#x} (read {magic:#x})",
        b.dtb
    );
    let dtb_size = u32::from_be(mmio_read32(b.dtb + 4)) as usize;
    ensure!(
        b.dtb + dtb_size <= b.base || b.dtb >= b.base + b.size,
        "DTB [{:#x}, +{dtb_size:#x}) overlaps the image [{:#x}, +{:#x})",
        b.dtb,
        b.base,
        b.size
    );
    Ok(())
}

fn psci_version() -> CheckResult {
    let v = call(psci::PSCI_VERSION, 0, 0, 0).map_err(|e| hvc_fail("PSCI_VERSION", e))?;
    let (major, minor) = ((v >> 16) & 0x7fff, v & 0xffff);
    println!("# psci_version: {major}.{minor}");
    ensure!(
        v >= 0 && major >= 1,
        "PSCI_VERSION = {v:#x} ({major}.{minor}), want >= 1.0"
    );
    Ok(())
}

fn smccc_version() -> CheckResult {
    let v = call(psci::SMCCC_VERSION, 0, 0, 0).map_err(|e| hvc_fail("SMCCC_VERSION", e))?;
    ensure!(
        v == 0x1_0001 || (v >> 16 == 1 && v & 0xffff >= 1),
        "SMCCC_VERSION = {v:#x}, want 1.1 (0x10001) or a later 1.x"
    );
    let f = call(psci::SMCCC_ARCH_FEATURES, psci::SMCCC_VERSION as u64, 0, 0)
        .map_err(|e| hvc_fail("SMCCC_ARCH_FEATURES", e))?;
    ensure!(f == 0, "SMCCC_ARCH_FEATURES(SMCCC_VERSION) = {f}, want 0");
    Ok(())
}

fn psci_features() -> CheckResult {
    let f = call(psci::PSCI_FEATURES, psci::PSCI_CPU_ON_64 as u64, 0, 0)
        .map_err(|e| hvc_fail("PSCI_FEATURES(CPU_ON)", e))?;
    ensure!(
        f == 0,
        "PSCI_FEATURES(CPU_ON_64) = {f} {}, want 0",
        psci::name(f)
    );
    let f = call(psci::PSCI_FEATURES, psci::PSCI_UNKNOWN as u64, 0, 0)
        .map_err(|e| hvc_fail("PSCI_FEATURES(0x840000ff)", e))?;
    ensure!(
        f == psci::NOT_SUPPORTED,
        "PSCI_FEATURES(0x840000ff) = {f} {}, want -1 NOT_SUPPORTED",
        psci::name(f)
    );
    Ok(())
}

fn unknown_hvc() -> CheckResult {
    // Standard-hypervisor-service SMC64, vendor-hypervisor SMC32, and a non-SMCCC ID.
    for id in [0xC600_1234u32, 0x8600_FFF0, 0x4242] {
        let r = call_raw(id, 0, 0, 0).map_err(|e| hvc_fail("unknown function ID", e))?;
        let x0 = r[0];
        let ok = x0 == u64::MAX || (id & (1 << 30) == 0 && x0 as u32 == u32::MAX);
        ensure!(
            ok,
            "HVC {id:#x} returned x0 = {x0:#x}, want -1 NOT_SUPPORTED"
        );
    }
    Ok(())
}

/// Bothy traps the ID registers (HCR_EL2.TID3) and shows what a guest may use: MTE
/// (tag access traps) and SME (CPTR_EL2.TSM: ZA is not switched) read as absent, and
/// a register of the hidden SME is then undefined, as its absence says. The ID space's
/// unallocated encodings read zero, and its registers cannot be written.
fn id_registers_hide_what_is_trapped() -> CheckResult {
    let pfr1 = read_sysreg!("id_aa64pfr1_el1");
    let (mte, sme) = ((pfr1 >> 8) & 0xf, (pfr1 >> 24) & 0xf);
    ensure!(
        mte == 0 && sme == 0,
        "ID_AA64PFR1_EL1 = {pfr1:#x}: MTE {mte}, SME {sme}, want both 0 (Bothy traps them)"
    );
    let smfr0 = read_sysreg!("S3_0_C0_C4_5");
    ensure!(smfr0 == 0, "ID_AA64SMFR0_EL1 = {smfr0:#x}, want 0");
    // ID_AA64PFR0_EL1: EL1 is AArch64 only; EL0 may have AArch32 (32-bit user space
    // is handled, see aarch32_el0), and then MVFR0 describes its FP/SIMD.
    let pfr0 = read_sysreg!("id_aa64pfr0_el1");
    let (el0, el1) = (pfr0 & 0xf, (pfr0 >> 4) & 0xf);
    ensure!(
        el1 == 1,
        "ID_AA64PFR0_EL1.EL1 = {el1}, want 1 (AArch64 only)"
    );
    ensure!(
        el0 == 1 || el0 == 2,
        "ID_AA64PFR0_EL1.EL0 = {el0}, want 1 or 2"
    );
    let mvfr0 = read_sysreg!("mvfr0_el1");
    ensure!(
        (el0 == 2) == (mvfr0 != 0),
        "MVFR0_EL1 = {mvfr0:#x} with ID_AA64PFR0_EL1.EL0 = {el0}"
    );
    // Unallocated in the ID space (op0 3, op1 0, CRn 0, CRm 1..=7).
    for (name, v) in [
        ("S3_0_C0_C4_3", read_sysreg!("S3_0_C0_C4_3")),
        ("S3_0_C0_C7_7", read_sysreg!("S3_0_C0_C7_7")),
    ] {
        ensure!(
            v == 0,
            "unallocated ID register {name} reads {v:#x}, want 0"
        );
    }
    // With CPACR_EL1.SMEN open, so that the access is not the guest's own EL1 trap.
    const CPACR_SMEN: u64 = 0b11 << 24;
    let cpacr = read_sysreg!("cpacr_el1");
    write_sysreg!("cpacr_el1", cpacr | CPACR_SMEN);
    arch::isb();
    let (_, fault) = guarded(|| read_sysreg!("S3_0_C1_C2_6"));
    write_sysreg!("cpacr_el1", cpacr);
    arch::isb();
    match fault {
        Some(f) if f.ec() == EC_UNKNOWN => {}
        Some(f) => bail!("MRS SMCR_EL1 (SME hidden): {f}, want an undefined instruction"),
        None => bail!("MRS SMCR_EL1 worked, but SME reads as absent"),
    }
    let (_, fault) = guarded(|| write_sysreg!("S3_0_C0_C4_1", pfr1 | 1 << 8));
    match fault {
        Some(f) if f.ec() == EC_UNKNOWN => {}
        Some(f) => bail!("MSR ID_AA64PFR1_EL1: {f}, want an undefined instruction"),
        None => bail!("MSR ID_AA64PFR1_EL1 completed, want an undefined instruction"),
    }
    let again = read_sysreg!("id_aa64pfr1_el1");
    ensure!(
        again == pfr1,
        "ID_AA64PFR1_EL1 changed to {again:#x} after a write"
    );
    // What one trapped read costs (docs/PERFORMANCE.md): under -icount
    // (selftest_guest.rs) a counter tick is one instruction.
    const READS: u64 = 16;
    let start = arch::now();
    for _ in 0..READS {
        core::hint::black_box(read_sysreg!("id_aa64isar0_el1"));
    }
    let ticks = arch::now() - start;
    println!(
        "# id_registers_hide_what_is_trapped: {} counter ticks per ID-register read",
        ticks / READS
    );
    Ok(())
}

fn cpu_on_errors() -> CheckResult {
    let entry = smp::entry_point();
    let r =
        call(psci::PSCI_CPU_ON_64, BAD_MPIDR, entry, 0).map_err(|e| hvc_fail("CPU_ON(0x55)", e))?;
    ensure!(
        r == psci::INVALID_PARAMETERS,
        "CPU_ON(MPIDR {BAD_MPIDR:#x}) = {r} {}, want -2 INVALID_PARAMETERS",
        psci::name(r)
    );
    let r = call(psci::PSCI_CPU_ON_64, 0, entry, 0).map_err(|e| hvc_fail("CPU_ON(self)", e))?;
    ensure!(
        r == psci::ALREADY_ON,
        "CPU_ON(self) = {r} {}, want -4 ALREADY_ON",
        psci::name(r)
    );
    Ok(())
}

fn affinity_info() -> CheckResult {
    let a = smp::affinity(0)?;
    ensure!(a == psci::AFF_ON, "AFFINITY_INFO(0) = {a}, want 0 ON");
    let a = smp::affinity(1)?;
    ensure!(
        a == psci::AFF_OFF,
        "AFFINITY_INFO(1) before CPU_ON = {a}, want 1 OFF"
    );
    Ok(())
}

fn check_boot_report(magic: u64) -> CheckResult {
    let ctx = smp::BOOT_CTX.load(Acquire);
    ensure!(
        ctx == magic,
        "vCPU 1 entered with x0 = {ctx:#x}, want context_id {magic:#x}"
    );
    let mpidr = smp::BOOT_MPIDR.load(Acquire);
    ensure!(
        mpidr & 0xff == 1,
        "vCPU 1 has MPIDR affinity {mpidr:#x}, want Aff0 = 1"
    );
    Ok(())
}

fn secondary_boot() -> CheckResult {
    smp::start(BOOT_MAGIC)?;
    check_boot_report(BOOT_MAGIC)?;
    let a = smp::affinity(1)?;
    ensure!(
        a == psci::AFF_ON,
        "AFFINITY_INFO(1) after boot = {a}, want 0 ON"
    );
    let r = call(psci::PSCI_CPU_ON_64, 1, smp::entry_point(), 0)
        .map_err(|e| hvc_fail("CPU_ON again", e))?;
    ensure!(
        r == psci::ALREADY_ON,
        "second CPU_ON(1) = {r} {}, want -4 ALREADY_ON",
        psci::name(r)
    );
    Ok(())
}

fn gic_init() -> CheckResult {
    let rev = gic::arch_rev();
    ensure!(
        rev == 3 || rev == 4,
        "GICD_PIDR2.ArchRev = {rev}, want 3 (GICv3)"
    );
    println!(
        "# gic_init: GICD_PIDR2.ArchRev {rev}, GICD_TYPER {:#x}",
        gic::dist_typer()
    );
    gic::dist_init()?;
    gic::cpu_init(0)?;
    // The interrupt checks need only vCPU 0's side; the topology check below may still fail.
    GIC_READY.store(true, Release);
    // One frame per vCPU PSCI knows of, the last one marked Last.
    let n = crate::race::nr_vcpus()?;
    for frame in 0..n {
        let (aff, last) = gic::rd_typer(frame);
        let want_last = frame + 1 == n;
        ensure!(
            aff == frame as u64 && last == want_last,
            "GICR_TYPER frame {frame} of {n}: affinity {aff:#x} Last {last}, want {frame:#x} / {want_last}"
        );
    }
    Ok(())
}

fn need_gic() -> CheckResult {
    ensure!(GIC_READY.load(Acquire), "needs gic_init, which failed");
    Ok(())
}

/// Unmask IRQs on this vCPU and poll `cond` for up to `ms`.
fn wait_irq(ms: u64, cond: impl FnMut() -> bool) -> bool {
    arch::irqs_unmask();
    let ok = arch::wait_until(ms, cond);
    arch::irqs_mask();
    ok
}

fn sgi_self() -> CheckResult {
    need_gic()?;
    const SGI: u32 = 1;
    exceptions::clear_seen(0, SGI);
    gic::send_sgi(SGI, 0);
    ensure!(
        wait_irq(1000, || exceptions::seen(0, SGI)),
        "SGI {SGI} to self not taken within 1 s"
    );
    Ok(())
}

extern "C" {
    /// regs.S: which of x19–x29 came back changed across a hypercall, MMIO accesses
    /// and an SGI write that name some of them (bit n = xn).
    fn keep_registers_across_exits(gicd_typer: usize) -> u64;
}

/// 32-bit user code: a trapped 16-bit Thumb store and WFI are stepped over by 2 bytes
/// (A32 ones by 4), and an access outside the VM aborts to the AArch32 vector
/// (el0.rs). Skipped on a CPU without AArch32 at EL0.
fn aarch32_el0() -> CheckResult {
    need_gic()?;
    const SGI: u32 = 1;
    const UART_DR: u64 = UART_BASE as u64;
    /// Below RAM, above every device window: nothing is there.
    const NOWHERE: u64 = 0x3000_0000;
    let el0 = read_sysreg!("id_aa64pfr0_el1") & 0xf;
    if el0 != 2 {
        skip!("ID_AA64PFR0_EL1.EL0 = {el0}: no AArch32 at EL0");
    }
    for (thumb, load_at) in [
        (true, crate::el0::T32_LOAD_AT),
        (false, crate::el0::A32_LOAD_AT),
    ] {
        let set = if thumb { "T32" } else { "A32" };
        // Pending but masked at EL0: the snippet's WFI must return at once.
        gic::send_sgi(SGI, 0);
        let run = crate::el0::run_a32(thumb, UART_DR, b'\n', NOWHERE);
        ensure!(
            run.unexpected_esr == 0,
            "{set}: unexpected exception from EL0, ESR_EL1={:#x}",
            run.unexpected_esr & !(1 << 63)
        );
        ensure!(
            run.r5_at_svc == 3,
            "{set}: R5 = {} at the SVC, wanted 3 (an instruction was skipped or run twice)",
            run.r5_at_svc
        );
        ensure!(
            run.aborts == 1 && run.abort_at == load_at,
            "{set}: {} aborts, the last at +{:#x}; wanted one, at the load (+{load_at:#x})",
            run.aborts,
            run.abort_at
        );
        ensure!(
            run.abort_esr >> 26 == EC_DABT_LOW,
            "{set}: abort ESR_EL1={:#x}, wanted a data abort from a lower EL",
            run.abort_esr
        );
        // Take the SGI now, so it does not linger into later checks.
        ensure!(
            wait_irq(1000, || exceptions::seen(0, SGI)),
            "{set}: SGI {SGI} not taken after the run"
        );
        exceptions::clear_seen(0, SGI);
    }
    Ok(())
}

fn exits_keep_registers() -> CheckResult {
    need_gic()?;
    const GICD_TYPER: usize = 0x4;
    // SAFETY: the routine saves and restores every callee-saved register it uses, and
    // touches only GICD_TYPER (a read and an ignored write) and its own stack slots.
    let wrong = unsafe { keep_registers_across_exits(GICD_BASE + GICD_TYPER) };
    ensure!(
        wrong == 0,
        "registers changed across exits: mask {wrong:#x} (bit n = xn)"
    );
    Ok(())
}

fn ipi_between_vcpus() -> CheckResult {
    need_gic()?;
    if !smp::in_wfi_mode() {
        smp::command(smp::CMD_GIC_INIT, 0)?;
    }
    exceptions::clear_seen(1, smp::SGI_PING);
    exceptions::clear_seen(0, smp::SGI_PONG);
    gic::send_sgi(smp::SGI_PING, 1);
    let ok = wait_irq(1000, || exceptions::seen(0, smp::SGI_PONG));
    if !ok {
        if !exceptions::seen(1, smp::SGI_PING) {
            bail!(
                "vCPU 1 did not take SGI {} within 1 s; {}",
                smp::SGI_PING,
                smp::why_silent()
            );
        }
        bail!(
            "vCPU 1 took SGI {} but vCPU 0 never got SGI {} back",
            smp::SGI_PING,
            smp::SGI_PONG
        );
    }
    Ok(())
}

fn vtimer() -> CheckResult {
    need_gic()?;
    let freq = arch::counter_freq();
    ensure!(freq != 0, "CNTFRQ_EL0 is 0");
    exceptions::clear_timer_fired(0);
    let deadline = arch::now() + freq / 1000;
    write_sysreg!("cntv_cval_el0", deadline);
    write_sysreg!("cntv_ctl_el0", CNTV_CTL_ENABLE);
    arch::isb();
    let fired = wait_irq(1000, || exceptions::timer_fired_at(0) != 0);
    write_sysreg!("cntv_ctl_el0", 0);
    ensure!(
        fired,
        "virtual timer IRQ (INTID {VTIMER_INTID}) not taken within 1 s of a 1 ms deadline"
    );
    ensure!(
        exceptions::seen(0, VTIMER_INTID),
        "timer handled but INTID {VTIMER_INTID} not recorded"
    );
    let at = exceptions::timer_fired_at(0);
    ensure!(
        at >= deadline,
        "timer IRQ handled at CNTVCT {at:#x}, before the deadline {deadline:#x}"
    );
    println!(
        "# vtimer: CNTFRQ {freq} Hz, IRQ handled {} us after the deadline",
        (at - deadline) * 1_000_000 / freq
    );
    Ok(())
}

/// The EL1 physical timer (which Bothy emulates): programmed through TVAL it fires on
/// time on its own PPI, CTL shows ISTATUS, and a WFI with interrupts masked is woken by
/// it (the vCPU is blocked meanwhile, so Bothy must keep time for it).
fn el1_physical_timer() -> CheckResult {
    need_gic()?;
    let freq = arch::counter_freq();
    ensure!(freq != 0, "CNTFRQ_EL0 is 0");
    let pct = || {
        arch::isb();
        read_sysreg!("cntpct_el0")
    };
    gic::set_private_enabled(0, PTIMER_INTID, true)?;
    exceptions::clear_ptimer_fired();
    exceptions::clear_seen(0, PTIMER_INTID);
    // 2 ms through TVAL.
    let start = pct();
    write_sysreg!("cntp_tval_el0", freq / 500);
    write_sysreg!("cntp_ctl_el0", CNTV_CTL_ENABLE);
    arch::isb();
    let cval = read_sysreg!("cntp_cval_el0");
    ensure!(
        cval >= start + freq / 500 && cval <= pct() + freq / 500,
        "CNTP_CVAL_EL0 = {cval:#x} after TVAL = 2 ms at CNTPCT {start:#x}"
    );
    let fired = wait_irq(1000, || exceptions::ptimer_fired_at() != 0);
    let ctl = read_sysreg!("cntp_ctl_el0");
    write_sysreg!("cntp_ctl_el0", 0);
    ensure!(
        fired,
        "physical timer IRQ (INTID {PTIMER_INTID}) not taken within 1 s of a 2 ms deadline"
    );
    let at = exceptions::ptimer_fired_at();
    ensure!(
        at >= cval,
        "physical timer IRQ handled at CNTPCT {at:#x}, before CVAL {cval:#x}"
    );
    ensure!(
        ctl == 0b111,
        "CNTP_CTL_EL0 = {ctl:#x} after it fired and was masked, want ENABLE|IMASK|ISTATUS"
    );
    // Blocked in WFI (interrupts masked: a pending one still wakes it) until it fires.
    exceptions::clear_seen(0, PTIMER_INTID);
    let deadline = pct() + freq / 200;
    write_sysreg!("cntp_cval_el0", deadline);
    write_sysreg!("cntp_ctl_el0", CNTV_CTL_ENABLE);
    arch::isb();
    let mut wakes = 0;
    while pct() < deadline && wakes < 1000 {
        arch::wfi();
        wakes += 1;
    }
    let woke_at = pct();
    // Take the pending interrupt (it masks the timer), then turn it off.
    let taken = wait_irq(1000, || exceptions::seen(0, PTIMER_INTID));
    write_sysreg!("cntp_ctl_el0", 0);
    gic::set_private_enabled(0, PTIMER_INTID, false)?;
    ensure!(
        woke_at >= deadline,
        "WFI loop ended at CNTPCT {woke_at:#x}, before the deadline {deadline:#x} ({wakes} wake-ups)"
    );
    ensure!(
        taken,
        "the physical timer's IRQ was not pending after it woke the WFI"
    );
    println!(
        "# el1_physical_timer: IRQ {} us after CVAL; WFI woken {} us after its deadline ({wakes} wake-ups)",
        (at - cval) * 1_000_000 / freq,
        (woke_at - deadline) * 1_000_000 / freq
    );
    Ok(())
}

fn wfi_returns() -> CheckResult {
    need_gic()?;
    let freq = arch::counter_freq();
    ensure!(freq != 0, "CNTFRQ_EL0 is 0");
    // vCPU 1 (if up) wakes us with an SGI after 500 ms in case WFI never returns on its own.
    let watchdog =
        smp::in_wfi_mode() && smp::command(smp::CMD_WATCHDOG, arch::now() + freq / 2).is_ok();
    if !watchdog {
        println!(
            "# wfi_returns: vCPU 1 unavailable, no watchdog: a hang here means WFI never returned"
        );
    }
    exceptions::clear_seen(0, smp::SGI_WATCHDOG);
    exceptions::clear_timer_fired(0);
    let start = arch::now();
    let deadline = start + freq * 5 / 1000;
    write_sysreg!("cntv_cval_el0", deadline);
    write_sysreg!("cntv_ctl_el0", CNTV_CTL_ENABLE);
    arch::isb();
    let mut wakeups = 0u32;
    loop {
        arch::irqs_mask();
        if exceptions::timer_fired_at(0) != 0 || exceptions::seen(0, smp::SGI_WATCHDOG) {
            break;
        }
        arch::wfi();
        wakeups += 1;
        arch::irqs_unmask();
    }
    write_sysreg!("cntv_ctl_el0", 0);
    if watchdog {
        let _ = smp::command(smp::CMD_WATCHDOG_CANCEL, 0);
    }
    let at = exceptions::timer_fired_at(0);
    ensure!(
        at != 0,
        "WFI with a 5 ms timer pending did not return until vCPU 1's 500 ms watchdog SGI"
    );
    ensure!(
        at >= deadline,
        "timer IRQ at {at:#x} before the deadline {deadline:#x}"
    );
    println!(
        "# wfi_returns: woke {} us after the 5 ms deadline, {wakeups} WFI wake-up(s)",
        (at - deadline) * 1_000_000 / freq
    );
    Ok(())
}

/// The timer's interrupt is level-sensitive: one that fired while its PPI was disabled
/// at the GIC must not be delivered once the guest has turned the timer off and enabled
/// the PPI again, and must be if the condition still holds then.
fn vtimer_level_resampled() -> CheckResult {
    need_gic()?;
    // Negative: fire, turn off, enable: nothing may arrive.
    let fired = timer_fired_while_disabled(|| {
        write_sysreg!("cntv_ctl_el0", 0);
        arch::isb();
    })?;
    ensure!(
        !fired,
        "virtual timer IRQ delivered after the timer was turned off (CNTV_CTL_EL0 = 0) while its PPI was disabled"
    );
    // Positive: the condition still true at the enable: it arrives.
    let fired = timer_fired_while_disabled(|| {})?;
    write_sysreg!("cntv_ctl_el0", 0);
    ensure!(
        fired,
        "virtual timer IRQ not delivered within 1 s of enabling its PPI, with the timer still firing"
    );
    Ok(())
}

/// With the timer PPI disabled, let the timer fire (deadline in the past), wait, run
/// `before_enable`, enable the PPI, and watch for the interrupt (20 ms if `before_enable`
/// turned the timer off, else 1 s). Returns whether it was taken.
fn timer_fired_while_disabled(before_enable: impl FnOnce()) -> Result<bool, crate::msg::Msg> {
    gic::set_private_enabled(0, VTIMER_INTID, false)?;
    exceptions::clear_timer_fired(0);
    exceptions::clear_seen(0, VTIMER_INTID);
    write_sysreg!("cntv_cval_el0", arch::now().saturating_sub(1));
    write_sysreg!("cntv_ctl_el0", CNTV_CTL_ENABLE);
    arch::isb();
    // Time for the timer to fire (at EL2 under a hypervisor), IRQs unmasked.
    let early = wait_irq(5, || exceptions::timer_fired_at(0) != 0);
    let ctl = read_sysreg!("cntv_ctl_el0");
    before_enable();
    let still_on = read_sysreg!("cntv_ctl_el0") & CNTV_CTL_ENABLE != 0;
    gic::set_private_enabled(0, VTIMER_INTID, true)?;
    ensure!(!early, "virtual timer IRQ taken while its PPI was disabled");
    ensure!(
        ctl & CNTV_CTL_ISTATUS != 0,
        "CNTV_CTL_EL0 = {ctl:#x}: ISTATUS clear with the deadline in the past"
    );
    let ms = if still_on { 1000 } else { 20 };
    Ok(wait_irq(ms, || exceptions::timer_fired_at(0) != 0))
}

// PMU registers' fields (Arm ARM D13 / D24.5).
const PMCR_E: u64 = 1 << 0;
/// PMCR_EL0.LP: 64-bit event counters (from PMUv3p5); cleared, so counter 0 overflows at
/// 2^32.
const PMCR_LP: u64 = 1 << 7;
const PMU_EVENT_SW_INCR: u64 = 0x00;
/// Counter 0's bit in PMCNTEN/PMINTEN/PMOVS/PMSWINC.
const COUNTER0: u64 = 1;

/// ID_AA64DFR0_EL1.PMUVer, if it is a PMUv3.
fn pmuv3() -> Option<u64> {
    let pmuver = (read_sysreg!("id_aa64dfr0_el1") >> 8) & 0xf;
    (pmuver != 0 && pmuver != 0xf).then_some(pmuver)
}

/// Make event counter 0 (counting software increments, its overflow interrupt enabled)
/// overflow: one increment from 0xffff_ffff.
fn pmu_overflow_now() {
    write_sysreg!("pmselr_el0", 0);
    arch::isb();
    write_sysreg!("pmxevtyper_el0", PMU_EVENT_SW_INCR);
    write_sysreg!("pmxevcntr_el0", 0xffff_ffff);
    write_sysreg!("pmintenset_el1", COUNTER0);
    write_sysreg!("pmcntenset_el0", COUNTER0);
    arch::isb();
    write_sysreg!("pmswinc_el0", COUNTER0);
    arch::isb();
}

/// The PMU's overflow interrupt is the guest's: its device tree describes the PMU
/// (`arm,armv8-pmuv3`, a level-high PPI), an overflow raises that PPI on the vCPU that
/// owns the PMU and on no other, once: cleared in the handler, it is not delivered
/// again. It is level-sensitive: an overflow that happened while the PPI was disabled
/// and was cleared before the enable is not delivered; one still there is.
fn pmu_overflow_irq() -> CheckResult {
    need_gic()?;
    let Some(pmuver) = pmuv3() else {
        skip!("no PMUv3 (ID_AA64DFR0_EL1.PMUVer)");
    };
    let Some([kind, ppi, flags]) =
        crate::fdt::first_interrupt(crate::boot_info().dtb, b"arm,armv8-pmuv3")
    else {
        bail!(
            "PMUVer {pmuver:#x}, but the device tree has no arm,armv8-pmuv3 node with interrupts"
        );
    };
    ensure!(
        kind == 1 && ppi < 16 && flags & 0xf == 4,
        "PMU interrupts = <{kind} {ppi} {flags:#x}>, want a level-high PPI <1 n 4>"
    );
    let intid = 16 + ppi;
    println!("# pmu_overflow_irq: PMUVer {pmuver:#x}, overflow interrupt INTID {intid}");
    // vCPU 1, if it is up, has the same PPI enabled: it must never see vCPU 0's overflow.
    let watch = smp::in_wfi_mode() && smp::RUNNING.load(Acquire);
    exceptions::PMU_INTID.store(intid, Release);
    for cpu in 0..=usize::from(watch) {
        exceptions::clear_pmu_irqs(cpu);
        exceptions::clear_seen(cpu, intid);
        gic::set_private_enabled(cpu, intid, true)?;
    }
    let pmcr = read_sysreg!("pmcr_el0");
    write_sysreg!("pmcr_el0", (pmcr & !PMCR_LP) | PMCR_E);
    let result = pmu_overflow_cases(intid, watch);
    write_sysreg!("pmintenclr_el1", COUNTER0);
    write_sysreg!("pmcntenclr_el0", COUNTER0);
    write_sysreg!("pmovsclr_el0", u64::MAX);
    write_sysreg!("pmcr_el0", pmcr);
    arch::isb();
    for cpu in 0..=usize::from(watch) {
        gic::set_private_enabled(cpu, intid, false)?;
    }
    exceptions::PMU_INTID.store(0, Release);
    result
}

fn pmu_overflow_cases(intid: u32, watch: bool) -> CheckResult {
    let ovs = || read_sysreg!("pmovsset_el0") & COUNTER0;
    // Delivered, on its INTID, once.
    pmu_overflow_now();
    let taken = wait_irq(1000, || exceptions::pmu_irqs(0) != 0);
    ensure!(
        taken,
        "no PMU overflow interrupt (INTID {intid}) within 1 s of counter 0 overflowing (PMOVSSET_EL0 = {:#x})",
        read_sysreg!("pmovsset_el0")
    );
    ensure!(
        exceptions::seen(0, intid),
        "PMU handled but INTID {intid} not recorded"
    );
    ensure!(
        exceptions::pmu_overflows_seen(0) & COUNTER0 != 0,
        "the PMU interrupt came without counter 0's overflow flag set"
    );
    let again = wait_irq(20, || exceptions::pmu_irqs(0) > 1);
    ensure!(
        !again,
        "the PMU interrupt was delivered again after the handler cleared the overflow"
    );
    ensure!(
        !watch || (exceptions::pmu_irqs(1) == 0 && !exceptions::seen(1, intid)),
        "vCPU 1 took vCPU 0's PMU overflow interrupt"
    );
    // Overflowed while its PPI was disabled, cleared before the enable: not delivered.
    gic::set_private_enabled(0, intid, false)?;
    exceptions::clear_pmu_irqs(0);
    pmu_overflow_now();
    let early = wait_irq(5, || exceptions::pmu_irqs(0) != 0);
    let flagged = ovs();
    write_sysreg!("pmovsclr_el0", COUNTER0);
    arch::isb();
    gic::set_private_enabled(0, intid, true)?;
    ensure!(!early, "PMU interrupt taken while its PPI was disabled");
    ensure!(
        flagged != 0,
        "counter 0 did not overflow (PMOVSSET_EL0 clear)"
    );
    ensure!(
        !wait_irq(20, || exceptions::pmu_irqs(0) != 0),
        "PMU interrupt delivered after its overflow was cleared while the PPI was disabled"
    );
    // ... still overflowed at the enable: delivered.
    gic::set_private_enabled(0, intid, false)?;
    pmu_overflow_now();
    let _ = wait_irq(5, || false);
    gic::set_private_enabled(0, intid, true)?;
    ensure!(
        wait_irq(1000, || exceptions::pmu_irqs(0) != 0),
        "PMU interrupt not delivered within 1 s of enabling its PPI, with the overflow still set"
    );
    ensure!(
        !watch || exceptions::pmu_irqs(1) == 0,
        "vCPU 1 took vCPU 0's PMU overflow interrupt"
    );
    Ok(())
}

/// A redistributor the guest put to sleep (GICR_WAKER.ProcessorSleep) holds an SGI
/// pending instead of forwarding it to the CPU interface, and delivers it once woken.
fn sgi_held_while_asleep() -> CheckResult {
    need_gic()?;
    const SGI: u32 = 6;
    exceptions::clear_seen(0, SGI);
    // Linux's order (gic_cpu_pm_notifier): Group 1 off at the CPU interface, then the
    // redistributor to sleep. Group 1 is turned back on (IRQs stay masked) so that an
    // SGI forwarded to the CPU interface would show in ICC_HPPIR1_EL1.
    let group1 = |on: u64| {
        write_sysreg!("icc_igrpen1_el1", on);
        arch::isb();
    };
    group1(0);
    let asleep = gic::set_asleep(0, true);
    group1(1);
    gic::send_sgi(SGI, 0);
    arch::isb();
    let hppir = read_sysreg!("icc_hppir1_el1") & 0xff_ffff;
    let pending = gic::pending_private(0);
    // Awake again before anything can fail, so the checks after this one have a GIC.
    group1(0);
    let awake = gic::set_asleep(0, false);
    group1(1);
    asleep?;
    awake?;
    ensure!(
        hppir == u64::from(gic::INTID_SPECIAL_LAST),
        "ICC_HPPIR1_EL1 = {hppir}: SGI {SGI} reached the CPU interface while its redistributor slept, want 1023"
    );
    ensure!(
        pending & (1 << SGI) != 0,
        "GICR_ISPENDR0 = {pending:#x}: SGI {SGI} not pending at the sleeping redistributor"
    );
    ensure!(
        wait_irq(1000, || exceptions::seen(0, SGI)),
        "SGI {SGI}, held while the redistributor slept, not taken within 1 s of waking it"
    );
    Ok(())
}

fn describe_abort(f: &Fault) -> crate::msg::Msg {
    crate::msg::msg!("{f}")
}

fn bad_access() -> CheckResult {
    let (v, fault) = guarded(|| mmio_read32(UNMAPPED_IPA));
    let Some(f) = fault else {
        bail!("load from unmapped IPA {UNMAPPED_IPA:#x} returned {v:#x} without an abort");
    };
    if f.ec() == EC_UNKNOWN {
        bail!(
            "load from {UNMAPPED_IPA:#x} gave an UNDEFINED exception, want a data abort: {}",
            describe_abort(&f)
        );
    }
    ensure!(
        f.ec() == EC_DABT_CUR,
        "load from {UNMAPPED_IPA:#x}: EC {:#x}, want 0x25 (data abort, current EL): {f}",
        f.ec()
    );
    ensure!(
        f.fsc() == DFSC_EXT_ABORT,
        "load from {UNMAPPED_IPA:#x}: DFSC {:#x}, want 0x10 (synchronous external abort): {f}",
        f.fsc()
    );
    ensure!(
        f.esr & ESR_FNV != 0 || f.far == UNMAPPED_IPA as u64,
        "FAR_EL1 {:#x} != faulting address {UNMAPPED_IPA:#x}",
        f.far
    );
    Ok(())
}

fn bad_access_beyond_ipa() -> CheckResult {
    let (_, fault) = guarded(|| arch::mmio_write32(BEYOND_IPA, 0x5e1f));
    let Some(f) = fault else {
        bail!("store to {BEYOND_IPA:#x} completed without an abort");
    };
    println!(
        "# bad_access_beyond_ipa: store to {BEYOND_IPA:#x} -> {f} (DFSC {:#x})",
        f.fsc()
    );
    ensure!(
        f.ec() == EC_DABT_CUR || f.ec() == EC_DABT_LOW,
        "store to {BEYOND_IPA:#x}: EC {:#x}, want a data abort (0x25): {f}",
        f.ec()
    );
    Ok(())
}

/// Poll AFFINITY_INFO(1) until OFF (it may report ON_PENDING/ON briefly after CPU_OFF).
fn wait_vcpu1_off() -> CheckResult {
    smp::wait_off(1)?;
    if smp::OFF_RETURNED_SET.load(Acquire) {
        bail!(
            "CPU_OFF returned to vCPU 1 with {:#x}",
            smp::OFF_RETURNED.load(Acquire)
        );
    }
    Ok(())
}

fn turn_off_vcpu1() -> CheckResult {
    smp::command(smp::CMD_OFF, 0)?;
    smp::RUNNING.store(false, Release);
    wait_vcpu1_off()
}

fn cpu_off() -> CheckResult {
    turn_off_vcpu1()
}

fn cpu_on_again() -> CheckResult {
    let a = smp::affinity(1)?;
    ensure!(
        a == psci::AFF_OFF,
        "precondition: AFFINITY_INFO(1) = {a}, want 1 OFF (cpu_off failed?)"
    );
    smp::start(BOOT_MAGIC_AGAIN)?;
    check_boot_report(BOOT_MAGIC_AGAIN)?;
    turn_off_vcpu1()
}

fn cpu_on_bad_entry() -> CheckResult {
    let a = smp::affinity(1)?;
    ensure!(
        a == psci::AFF_OFF,
        "precondition: AFFINITY_INFO(1) = {a}, want 1 OFF"
    );
    let r = call(psci::PSCI_CPU_ON_64, 1, BAD_ENTRY, 0).map_err(|e| hvc_fail("CPU_ON", e))?;
    ensure!(
        r != psci::SUCCESS,
        "CPU_ON(1, entry {BAD_ENTRY:#x} outside RAM) succeeded (vCPU 1 now runs at {BAD_ENTRY:#x}), want -9 INVALID_ADDRESS"
    );
    ensure!(
        r == psci::INVALID_ADDRESS,
        "CPU_ON(1, entry {BAD_ENTRY:#x}) = {r} {}, want -9 INVALID_ADDRESS",
        psci::name(r)
    );
    Ok(())
}

/// A guest's PMU must not count what Bothy does at EL2 (a timing side channel into the
/// hypervisor): an event counter set to count instructions at EL1 and at EL2 (the
/// filter's NSH bit asks for EL2) sees only the guest's own instructions across
/// hypercalls, whose EL2 side is ~100 instructions each.
fn pmu_does_not_see_el2() -> CheckResult {
    const INST_RETIRED: u64 = 0x08;
    const PMEVTYPER_NSH: u64 = 1 << 27;
    const PMCR_E: u64 = 1 << 0;
    const CALLS: u64 = 16;
    let pmuver = (read_sysreg!("id_aa64dfr0_el1") >> 8) & 0xf;
    if pmuver == 0 || pmuver == 0xf {
        println!("# pmu_does_not_see_el2: no PMUv3 (PMUVer {pmuver:#x}), nothing to check");
        return Ok(());
    }
    write_sysreg!("pmselr_el0", 0);
    write_sysreg!("pmxevtyper_el0", INST_RETIRED | PMEVTYPER_NSH);
    write_sysreg!("pmcntenset_el0", 1);
    let pmcr = read_sysreg!("pmcr_el0");
    write_sysreg!("pmcr_el0", pmcr | PMCR_E);
    arch::isb();
    let before = read_sysreg!("pmxevcntr_el0");
    for _ in 0..CALLS {
        call(psci::PSCI_VERSION, 0, 0, 0).map_err(|e| hvc_fail("PSCI_VERSION", e))?;
    }
    arch::isb();
    let after = read_sysreg!("pmxevcntr_el0");
    write_sysreg!("pmcntenclr_el0", 1);
    write_sysreg!("pmcr_el0", pmcr);
    let counted = after.wrapping_sub(before) & 0xffff_ffff;
    if counted == 0 {
        // QEMU counts instructions only with -icount (cli/tests/selftest_guest.rs runs
        // this check that way too).
        println!("# pmu_does_not_see_el2: INST_RETIRED counts nothing here, nothing to check");
        return Ok(());
    }
    println!("# pmu_does_not_see_el2: {counted} instructions counted over {CALLS} hypercalls");
    ensure!(
        counted < CALLS * 50,
        "{counted} instructions counted over {CALLS} hypercalls: the PMU counts EL2"
    );
    Ok(())
}
