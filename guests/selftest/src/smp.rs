//! vCPU 1: its entry (`secondary_main`, reached from `secondary_entry` in guests/rt's entry.S through
//! PSCI CPU_ON) and the mailbox the primary drives it with.
//!
//! Protocol: the primary writes `CMD`/`CMD_ARG`, then bumps `CMD_SEQ` (release), does
//! DSB + SEV and, once vCPU 1 idles in WFI, kicks it with SGI [`SGI_KICK`]. vCPU 1 runs
//! the command and publishes `ACK_SEQ = CMD_SEQ`. Before its GIC is set up vCPU 1 polls;
//! after, it waits in WFI with IRQs unmasked (mask, re-check, WFI, unmask: no lost wake-up).
//! Every boot increments `BOOTS`, so the primary can tell a fresh start from a stale one.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, write_sysreg};
use crate::gic;
use crate::msg::{bail, ensure, msg, CheckResult, Msg};
use crate::psci;

/// SGI the primary sends vCPU 1 in `ipi_between_vcpus`.
pub const SGI_PING: u32 = 2;
/// SGI vCPU 1 answers with.
pub const SGI_PONG: u32 = 3;
/// Mailbox doorbell.
pub const SGI_KICK: u32 = 4;
/// vCPU 1's watchdog SGI to the primary (`wfi_returns`).
pub const SGI_WATCHDOG: u32 = 5;

pub const CMD_GIC_INIT: u32 = 1;
pub const CMD_OFF: u32 = 2;
/// Arm vCPU 1's own virtual timer for CNTVCT = arg; on expiry it sends SGI_WATCHDOG.
pub const CMD_WATCHDOG: u32 = 3;
pub const CMD_WATCHDOG_CANCEL: u32 = 4;
/// Take part in `cpu_on_race` (race.rs): the primary does not wait for the
/// acknowledgement before it starts the race.
pub const CMD_RACE: u32 = 5;

const CMD_TIMEOUT_MS: u64 = 1000;

pub static BOOTS: AtomicU32 = AtomicU32::new(0);
pub static BOOT_CTX: AtomicU64 = AtomicU64::new(0);
pub static BOOT_MPIDR: AtomicU64 = AtomicU64::new(0);
static WFI_MODE: AtomicBool = AtomicBool::new(false);
static CMD: AtomicU32 = AtomicU32::new(0);
static CMD_ARG: AtomicU64 = AtomicU64::new(0);
static CMD_SEQ: AtomicU32 = AtomicU32::new(0);
static ACK_SEQ: AtomicU32 = AtomicU32::new(0);
/// 0: last command succeeded; else an error code (ERR_*).
static CMD_ERR: AtomicU32 = AtomicU32::new(0);
/// Set if CPU_OFF returned (it must not); holds the return value.
pub static OFF_RETURNED: AtomicU64 = AtomicU64::new(0);
pub static OFF_RETURNED_SET: AtomicBool = AtomicBool::new(false);
pub static WATCHDOG_ARMED: AtomicBool = AtomicBool::new(false);
/// Primary's view: vCPU 1 is running our code and answering the mailbox.
pub static RUNNING: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn secondary_entry();
}

/// Physical address of vCPU 1's entry (MMU off: VA = PA).
pub fn entry_point() -> u64 {
    entry(secondary_entry)
}

/// A CPU_ON entry point: an assembly routine's address (MMU off: VA = PA).
pub fn entry(f: unsafe extern "C" fn()) -> u64 {
    f as *const () as u64
}

pub fn affinity(v: u64) -> Result<i64, Msg> {
    psci::call(psci::PSCI_AFFINITY_INFO_64, v, 0, 0).map_err(|e| msg!("AFFINITY_INFO({v}): {e}"))
}

/// A check's precondition: each vCPU in `vcpus` is OFF.
pub fn all_off(vcpus: impl IntoIterator<Item = u64>) -> CheckResult {
    for v in vcpus {
        let a = affinity(v)?;
        ensure!(
            a == psci::AFF_OFF,
            "precondition: AFFINITY_INFO({v}) = {a}, want 1 OFF"
        );
    }
    Ok(())
}

/// Start vCPU `v` at the routine `f`, with its index as the context; SUCCESS or why not.
pub fn cpu_on(v: u64, f: unsafe extern "C" fn()) -> CheckResult {
    let r =
        psci::call(psci::PSCI_CPU_ON_64, v, entry(f), v).map_err(|e| msg!("CPU_ON({v}): {e}"))?;
    ensure!(
        r == psci::SUCCESS,
        "CPU_ON({v}) = {r} {}, want 0 SUCCESS",
        psci::name(r)
    );
    Ok(())
}

/// Wait up to 1 s for vCPU `v` to be OFF (it may report ON briefly after CPU_OFF).
pub fn wait_off(v: u64) -> CheckResult {
    let mut last = Ok(psci::AFF_ON);
    let off = arch::wait_until(1000, || {
        last = affinity(v);
        !matches!(last, Ok(a) if a != psci::AFF_OFF)
    });
    let a = last?;
    ensure!(
        off,
        "AFFINITY_INFO({v}) still {a} 1 s after it was let go, want 1 OFF"
    );
    Ok(())
}

#[no_mangle]
extern "C" fn secondary_main(ctx: u64) -> ! {
    WFI_MODE.store(false, Release);
    BOOT_CTX.store(ctx, Release);
    BOOT_MPIDR.store(arch::mpidr_aff(), Release);
    let mut handled = CMD_SEQ.load(Acquire);
    ACK_SEQ.store(handled, Release);
    BOOTS.store(BOOTS.load(Acquire).wrapping_add(1), Release);
    arch::dsb_sy();
    arch::sev();
    loop {
        let seq = CMD_SEQ.load(Acquire);
        if seq != handled {
            handled = seq;
            let cmd = CMD.load(Acquire);
            let err = run(cmd, CMD_ARG.load(Acquire));
            CMD_ERR.store(err, Release);
            ACK_SEQ.store(seq, Release);
            arch::dsb_sy();
            arch::sev();
            if cmd == CMD_OFF {
                cpu_off();
            }
            continue;
        }
        if WFI_MODE.load(Acquire) {
            arch::irqs_mask();
            if CMD_SEQ.load(Acquire) == handled {
                arch::wfi();
            }
            arch::irqs_unmask();
        } else {
            arch::cpu_relax();
        }
    }
}

/// GIC init failed on vCPU 1.
const ERR_GIC: u32 = 1;
const ERR_UNKNOWN_CMD: u32 = 2;

fn run(cmd: u32, arg: u64) -> u32 {
    match cmd {
        CMD_GIC_INIT => match gic::cpu_init(1) {
            Ok(()) => {
                WFI_MODE.store(true, Release);
                0
            }
            Err(e) => {
                crate::uart::println!("# vCPU 1: GIC init failed: {e}");
                ERR_GIC
            }
        },
        CMD_OFF => 0,
        CMD_WATCHDOG => {
            WATCHDOG_ARMED.store(true, Release);
            write_sysreg!("cntv_cval_el0", arg);
            write_sysreg!("cntv_ctl_el0", 1);
            arch::isb();
            0
        }
        CMD_RACE => crate::race::vcpu1_calls(),
        CMD_WATCHDOG_CANCEL => {
            WATCHDOG_ARMED.store(false, Release);
            write_sysreg!("cntv_ctl_el0", 0);
            arch::isb();
            0
        }
        _ => ERR_UNKNOWN_CMD,
    }
}

fn cpu_off() {
    arch::irqs_mask();
    write_sysreg!("cntv_ctl_el0", 0);
    let r = psci::hvc_raw(psci::PSCI_CPU_OFF, 0, 0, 0);
    OFF_RETURNED.store(r[0], Release);
    OFF_RETURNED_SET.store(true, Release);
}

// ---- primary side --------------------------------------------------------------------

/// Why vCPU 1 is not answering, for failure messages.
pub fn why_silent() -> Msg {
    match rt::guard::secondary_fault() {
        Some(f) => msg!("vCPU 1 took an exception: {f}"),
        None => msg!("no exception recorded on vCPU 1"),
    }
}

/// CPU_ON vCPU 1 at `secondary_entry` with `ctx`; wait up to 3 s for it to check in.
pub fn start(ctx: u64) -> Result<(), Msg> {
    let boots = BOOTS.load(Acquire);
    let r = match psci::call(psci::PSCI_CPU_ON_64, 1, entry_point(), ctx) {
        Ok(r) => r,
        Err(e) => bail!("CPU_ON(1, {:#x}): {e}", entry_point()),
    };
    if r != psci::SUCCESS {
        bail!(
            "CPU_ON(1, {:#x}) returned {r} {}",
            entry_point(),
            psci::name(r)
        );
    }
    if !arch::wait_until(3000, || BOOTS.load(Acquire) != boots) {
        bail!(
            "CPU_ON succeeded but vCPU 1 did not reach secondary_main within 3 s; {}",
            why_silent()
        );
    }
    RUNNING.store(true, Release);
    Ok(())
}

/// Send vCPU 1 a command and wait for its acknowledgement.
pub fn command(cmd: u32, arg: u64) -> Result<(), Msg> {
    let seq = post(cmd, arg)?;
    wait_ack(seq, cmd)
}

/// Send vCPU 1 a command; returns its sequence number for [`wait_ack`].
pub fn post(cmd: u32, arg: u64) -> Result<u32, Msg> {
    if !RUNNING.load(Acquire) {
        bail!("vCPU 1 is not running (an earlier check failed)");
    }
    CMD.store(cmd, Release);
    CMD_ARG.store(arg, Release);
    let seq = CMD_SEQ.load(Acquire).wrapping_add(1);
    CMD_SEQ.store(seq, Release);
    arch::dsb_sy();
    arch::sev();
    if WFI_MODE.load(Acquire) {
        gic::send_sgi(SGI_KICK, 1);
    }
    Ok(seq)
}

/// Wait for vCPU 1 to acknowledge command `cmd`, posted as `seq`.
pub fn wait_ack(seq: u32, cmd: u32) -> Result<(), Msg> {
    if !arch::wait_until(CMD_TIMEOUT_MS, || ACK_SEQ.load(Acquire) == seq) {
        RUNNING.store(false, Release);
        bail!(
            "vCPU 1 did not acknowledge command {cmd} within {CMD_TIMEOUT_MS} ms; {}",
            why_silent()
        );
    }
    match CMD_ERR.load(Acquire) {
        0 => Ok(()),
        ERR_GIC => bail!("vCPU 1's own GIC init failed (see the '# vCPU 1' line above)"),
        e => bail!("vCPU 1 rejected command {cmd}: error {e}"),
    }
}

pub fn in_wfi_mode() -> bool {
    WFI_MODE.load(Acquire)
}
