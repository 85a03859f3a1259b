//! `cpu_on_race`: three vCPUs call PSCI `CPU_ON` for a fourth at the same moment, and
//! exactly one of them must get SUCCESS, the others ALREADY_ON (what KVM answers, and
//! what guests written against it expect), with `AFFINITY_INFO` saying ON at once.
//!
//! Roles, in a VM of at least 4 vCPUs: vCPU 0 (the check itself), vCPU 1 (through its
//! mailbox, [`smp::CMD_RACE`]) and vCPU 2 (started for this at `race_caller`) each call
//! `CPU_ON(3, race_target, TAGS[caller])`; vCPU 3 records the context ID it started
//! with, waits to be released, and calls `CPU_OFF`; vCPU 2 calls `CPU_OFF` after its
//! call. vCPUs 2 and 3 run a few instructions of assembly with interrupts masked and
//! need neither a stack nor exception state. The callers meet on [`Race::go`]: each
//! says it is ready, the primary waits for both, sets `go` and calls at once.
//!
//! The MMU is off (Device memory, no exclusives), so the block is plain loads and
//! stores with one writer per word, a DSB + SEV after each store others wait for, and
//! WFE in the waiting loops (under Bothy a trapped WFE yields the CPU to a vCPU that
//! has work, which a time-shared VM with more vCPUs than CPUs needs).

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch;
use crate::msg::{bail, ensure, msg, skip, CheckResult, Msg};
use crate::psci::{self, call};
use crate::smp;
use crate::uart::println;

/// The vCPU the others race to start, and the one started to race.
const TARGET: u64 = 3;
const HELPER: u64 = 2;
/// The context ID each caller (vCPU 0, 1, 2) passes: the target reports the winner's.
pub const TAGS: [u64; 3] = [0x7ACE_0000, 0x7ACE_0001, 0x7ACE_0002];
/// Most vCPUs looked for by [`nr_vcpus`].
const MAX_VCPUS: u64 = 8;

/// Shared by every vCPU in the race; the assembly below addresses it by field offset.
#[repr(C)]
pub struct Race {
    /// Set by the primary: call now.
    go: AtomicU64,
    /// Set with `go` when the race is called off: do not call.
    abort: AtomicU64,
    ready1: AtomicU64,
    result1: AtomicU64,
    ready2: AtomicU64,
    result2: AtomicU64,
    done2: AtomicU64,
    target_boots: AtomicU64,
    target_ctx: AtomicU64,
    /// Set by the primary: the target may power itself off.
    release: AtomicU64,
}

static RACE: Race = Race {
    go: AtomicU64::new(0),
    abort: AtomicU64::new(0),
    ready1: AtomicU64::new(0),
    result1: AtomicU64::new(0),
    ready2: AtomicU64::new(0),
    result2: AtomicU64::new(0),
    done2: AtomicU64::new(0),
    target_boots: AtomicU64::new(0),
    target_ctx: AtomicU64::new(0),
    release: AtomicU64::new(0),
};

core::arch::global_asm!(
    r#"
.section .text.race, "ax"
// vCPU 2's entry (PSCI CPU_ON): ready, wait for go, CPU_ON(3), done, CPU_OFF.
.global race_caller
race_caller:
    msr     daifset, #0xf
    adrp    x19, {race}
    add     x19, x19, :lo12:{race}
    mov     x9, #1
    str     x9, [x19, #{ready2}]
    dsb     sy
    sev
1:  ldr     x9, [x19, #{go}]
    cbnz    x9, 2f
    wfe
    b       1b
2:  ldr     x9, [x19, #{abort}]
    cbnz    x9, 3f
    movz    x0, #0x0003
    movk    x0, #0xC400, lsl #16
    mov     x1, #{target}
    adrp    x2, race_target
    add     x2, x2, :lo12:race_target
    movz    x3, #{tag2_lo}
    movk    x3, #{tag2_hi}, lsl #16
    hvc     #0
    str     x0, [x19, #{result2}]
3:  mov     x9, #1
    str     x9, [x19, #{done2}]
    dsb     sy
    sev
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
4:  wfi
    b       4b

// vCPU 3's entry, x0 = context ID: report it, wait for the release, CPU_OFF.
.global race_target
race_target:
    msr     daifset, #0xf
    adrp    x19, {race}
    add     x19, x19, :lo12:{race}
    str     x0, [x19, #{target_ctx}]
    ldr     x9, [x19, #{target_boots}]
    add     x9, x9, #1
    str     x9, [x19, #{target_boots}]
    dsb     sy
    sev
1:  ldr     x9, [x19, #{release}]
    cbnz    x9, 2f
    wfe
    b       1b
2:  movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
3:  wfi
    b       3b
"#,
    race = sym RACE,
    go = const core::mem::offset_of!(Race, go),
    abort = const core::mem::offset_of!(Race, abort),
    ready2 = const core::mem::offset_of!(Race, ready2),
    result2 = const core::mem::offset_of!(Race, result2),
    done2 = const core::mem::offset_of!(Race, done2),
    target_ctx = const core::mem::offset_of!(Race, target_ctx),
    target_boots = const core::mem::offset_of!(Race, target_boots),
    release = const core::mem::offset_of!(Race, release),
    target = const TARGET,
    tag2_lo = const TAGS[2] & 0xffff,
    tag2_hi = const TAGS[2] >> 16,
);

extern "C" {
    fn race_caller();
    fn race_target();
}

fn wfe() {
    // SAFETY: a hint; state is unchanged.
    unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
}

/// Make a store visible to vCPUs waiting in WFE.
fn publish() {
    arch::dsb_sy();
    arch::sev();
}

/// vCPU 1's part ([`smp::CMD_RACE`]): ready, wait for go, call. Returns 0 (the
/// mailbox's "done").
pub fn vcpu1_calls() -> u32 {
    RACE.ready1.store(1, Release);
    publish();
    while RACE.go.load(Acquire) == 0 {
        wfe();
    }
    if RACE.abort.load(Acquire) == 0 {
        let r = psci::hvc_raw(
            psci::PSCI_CPU_ON_64,
            TARGET,
            smp::entry(race_target),
            TAGS[1],
        );
        RACE.result1.store(r[0], Release);
    }
    0
}

/// How many vCPUs this VM has: PSCI names vCPUs 0..n (Aff0 = index) and refuses the
/// next one with INVALID_PARAMETERS.
pub fn nr_vcpus() -> Result<usize, Msg> {
    for v in 1..MAX_VCPUS {
        if smp::affinity(v)? == psci::INVALID_PARAMETERS {
            return Ok(v as usize);
        }
    }
    Ok(MAX_VCPUS as usize)
}

/// Call the race off: vCPUs waiting for `go` go on without calling.
fn call_off() {
    RACE.abort.store(1, Release);
    RACE.go.store(1, Release);
    publish();
}

pub fn cpu_on_race() -> CheckResult {
    let n = nr_vcpus()?;
    if n < 4 {
        skip!("needs 4 vCPUs");
    }
    smp::all_off([HELPER, TARGET])?;
    ensure!(
        smp::RUNNING.load(Acquire) && smp::in_wfi_mode(),
        "needs vCPU 1 answering its mailbox (an earlier check failed)"
    );
    for word in [
        &RACE.go,
        &RACE.abort,
        &RACE.ready1,
        &RACE.result1,
        &RACE.ready2,
        &RACE.result2,
        &RACE.done2,
        &RACE.target_boots,
        &RACE.target_ctx,
        &RACE.release,
    ] {
        word.store(0, Release);
    }
    publish();

    // The third caller, vCPU 2.
    let r = call(psci::PSCI_CPU_ON_64, HELPER, smp::entry(race_caller), 0)
        .map_err(|e| msg!("CPU_ON({HELPER}): {e}"))?;
    ensure!(
        r == psci::SUCCESS,
        "CPU_ON({HELPER}) = {r} {}, want 0 SUCCESS",
        psci::name(r)
    );
    if !arch::wait_until(3000, || RACE.ready2.load(Acquire) != 0) {
        call_off();
        bail!("vCPU {HELPER} did not reach race_caller within 3 s");
    }
    let seq = match smp::post(smp::CMD_RACE, 0) {
        Ok(seq) => seq,
        Err(e) => {
            call_off();
            return Err(e);
        }
    };
    if !arch::wait_until(1000, || RACE.ready1.load(Acquire) != 0) {
        call_off();
        let _ = smp::wait_off(HELPER);
        bail!("vCPU 1 did not get ready for the race within 1 s");
    }

    // Everyone waits on `go`: call together.
    RACE.go.store(1, Release);
    publish();
    let r0 = call(
        psci::PSCI_CPU_ON_64,
        TARGET,
        smp::entry(race_target),
        TAGS[0],
    )
    .map_err(|e| msg!("CPU_ON({TARGET}): {e}"))?;
    let acked = smp::wait_ack(seq, smp::CMD_RACE);
    let done2 = arch::wait_until(1000, || RACE.done2.load(Acquire) != 0);
    // ON from the moment a CPU_ON succeeded, whether or not it runs yet.
    let aff = smp::affinity(TARGET)?;
    let booted = arch::wait_until(3000, || RACE.target_boots.load(Acquire) != 0);
    RACE.release.store(1, Release);
    publish();
    let off = smp::wait_off(TARGET).and(smp::wait_off(HELPER));

    acked?;
    ensure!(done2, "vCPU {HELPER} did not finish its CPU_ON within 1 s");
    let results = [
        r0,
        RACE.result1.load(Acquire) as i64,
        RACE.result2.load(Acquire) as i64,
    ];
    let winners = results.iter().filter(|&&r| r == psci::SUCCESS).count();
    ensure!(
        winners == 1 && results.iter().all(|&r| r == psci::SUCCESS || r == psci::ALREADY_ON),
        "CPU_ON({TARGET}) from vCPUs 0, 1, 2 returned {} {}, {} {}, {} {}: want one 0 SUCCESS and -4 ALREADY_ON for the others (vCPU {TARGET} started {} time(s), last with x0 = {:#x})",
        results[0],
        psci::name(results[0]),
        results[1],
        psci::name(results[1]),
        results[2],
        psci::name(results[2]),
        RACE.target_boots.load(Acquire),
        RACE.target_ctx.load(Acquire)
    );
    ensure!(
        aff == psci::AFF_ON,
        "AFFINITY_INFO({TARGET}) right after the race = {aff}, want 0 ON"
    );
    ensure!(booted, "vCPU {TARGET} did not start within 3 s");
    let boots = RACE.target_boots.load(Acquire);
    ensure!(boots == 1, "vCPU {TARGET} started {boots} times");
    let winner = results
        .iter()
        .position(|&r| r == psci::SUCCESS)
        .unwrap_or(0);
    let ctx = RACE.target_ctx.load(Acquire);
    ensure!(
        ctx == TAGS[winner],
        "vCPU {TARGET} started with x0 = {ctx:#x}, want the winner's (vCPU {winner}) context ID {:#x}",
        TAGS[winner]
    );
    off?;
    println!("# cpu_on_race: vCPU {winner} won, the other two got ALREADY_ON");
    Ok(())
}
