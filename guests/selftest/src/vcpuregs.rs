//! The harness of the checks that registers a CPU has one set of stay each vCPU's own
//! (`debug_registers_per_vcpu`, `pauth_keys_per_vcpu`, `sve_state_per_vcpu`).
//!
//! Every vCPU of the VM (up to [`MAX`]) sets its own values, then all of them read them
//! back for [`SPIN_MS`] while keeping their CPUs busy. With more vCPUs than CPUs (4 on
//! QEMU's 2 in `cli/tests/selftest_guest.rs`) each is switched out and in many times;
//! each must read its own values every time. Then vCPU 1, which left its values set, is
//! started again (a reset) and reports what it finds, which the check compares with
//! what a reset must leave.
//!
//! vCPUs 1.. run each check's own assembly with interrupts masked and no stack (like
//! race.rs): its spinner sets the values, raises `ready`, reads back until `stop`,
//! records the first wrong read in `bad` and `seen`, raises `done` and calls CPU_OFF;
//! its fresh routine reports into `fresh` and raises `fresh[len]`. vCPU 0 is the check
//! itself. The MMU is off, so the shared block is plain loads and stores with one
//! writer per word; the assembly addresses it by [`core::mem::offset_of`].

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch;
use crate::msg::{bail, ensure, Msg};
use crate::smp;

/// vCPUs taking part (0 and up to three helpers).
pub const MAX: usize = 4;
/// How long they all read back.
const SPIN_MS: u64 = 300;
/// A gap this long between two of vCPU 0's reads: it was switched out meanwhile.
const GAP_MS: u64 = 2;

/// What the helpers report.
#[repr(C)]
pub struct Spin {
    /// Set by vCPU 0: stop reading.
    pub stop: AtomicU64,
    pub ready: [AtomicU64; MAX],
    pub loops: [AtomicU64; MAX],
    /// 0, or which read came back wrong (1-based, in the check's own numbering).
    pub bad: [AtomicU64; MAX],
    /// What that read gave.
    pub seen: [AtomicU64; MAX],
    /// A value of the check's own per vCPU (`pauth_keys_per_vcpu`: its first signature).
    pub extra: [AtomicU64; MAX],
    pub done: [AtomicU64; MAX],
    /// vCPU 1 after its reset: what it read, then a non-zero word after the last.
    pub fresh: [AtomicU64; 8],
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Spin {
    pub const fn new() -> Spin {
        Spin {
            stop: ZERO,
            ready: [ZERO; MAX],
            loops: [ZERO; MAX],
            bad: [ZERO; MAX],
            seen: [ZERO; MAX],
            extra: [ZERO; MAX],
            done: [ZERO; MAX],
            fresh: [ZERO; 8],
        }
    }

    fn clear(&self) {
        let per_vcpu = [
            &self.ready,
            &self.loops,
            &self.bad,
            &self.seen,
            &self.extra,
            &self.done,
        ];
        for word in core::iter::once(&self.stop)
            .chain(per_vcpu.into_iter().flatten())
            .chain(self.fresh.iter())
        {
            word.store(0, Release);
        }
        publish();
    }
}

core::arch::global_asm!(
    r#"
.section .text.vcpuregs, "ax"
// The ends every check's assembly branches to (no stack, interrupts masked).
// vcpuregs_done: x20 = the Spin + 8 * the vCPU's index. Raise its `done`, CPU_OFF.
.global vcpuregs_done
vcpuregs_done:
    mov     x9, #1
    str     x9, [x20, #{done}]
    b       1f
// vcpuregs_reported: x19 = the Spin, x10 = the byte offset in `fresh` of the word after
// the last one reported. Raise it, CPU_OFF.
.global vcpuregs_reported
vcpuregs_reported:
    mov     x9, #1
    add     x10, x10, #{fresh}
    str     x9, [x19, x10]
1:  dsb     sy
    sev
    movz    x0, #0x0002
    movk    x0, #0x8400, lsl #16
    hvc     #0
2:  wfi
    b       2b
"#,
    done = const core::mem::offset_of!(Spin, done),
    fresh = const core::mem::offset_of!(Spin, fresh),
);

fn publish() {
    arch::dsb_sy();
    arch::sev();
}

/// One check's pieces.
pub struct Check<'a> {
    pub spin: &'static Spin,
    /// vCPUs 1..'s routine (x0 = the vCPU's index).
    pub spinner: unsafe extern "C" fn(),
    /// vCPU 1's routine after its reset.
    pub fresh: unsafe extern "C" fn(),
    /// Words `fresh` reports before its done word.
    pub fresh_len: usize,
    /// vCPU 0 sets its own values.
    pub set_own: &'a mut dyn FnMut(),
    /// vCPU 0 reads them back: `None`, or (which, what it read, what it wanted).
    pub check_own: &'a mut dyn FnMut() -> Option<(usize, u64, u64)>,
    /// vCPU 0 puts back what it found (zeros), so it stops holding the registers.
    pub put_back: &'a mut dyn FnMut(),
    /// The name of read `i` (1-based, as in `bad`), for messages.
    pub name: &'a dyn Fn(usize) -> &'static str,
    /// What vCPU `v` wrote into read `i`.
    pub want: &'a dyn Fn(usize, usize) -> u64,
}

/// What [`run`] saw.
pub struct Outcome {
    /// vCPUs taking part.
    pub vcpus: usize,
    /// vCPU 0's good reads, and the pauses of over [`GAP_MS`] between them.
    pub reads: u64,
    pub gaps: u64,
    /// What vCPU 1 reported after its reset (`None` with a single vCPU).
    pub fresh: Option<[u64; 8]>,
}

/// Runs `c` as the module doc says; fails on any wrong read.
pub fn run(c: Check) -> Result<Outcome, Msg> {
    let n = crate::race::nr_vcpus()?.min(MAX);
    smp::all_off(1..n as u64)?;
    c.spin.clear();
    (c.set_own)();
    let mut started = 1;
    let mut result = Ok(());
    for v in 1..n as u64 {
        if let Err(e) = smp::cpu_on(v, c.spinner) {
            result = Err(e);
            break;
        }
        started += 1;
    }
    let ready = arch::wait_until(3000, || {
        (1..started).all(|v| c.spin.ready[v].load(Acquire) != 0)
    });

    let freq = arch::counter_freq();
    let (start, gap) = (arch::now(), freq * GAP_MS / 1000);
    let (mut last, mut gaps, mut reads) = (start, 0u64, 0u64);
    let mut wrong = None;
    while ready && result.is_ok() && arch::now() - start < freq * SPIN_MS / 1000 {
        if let Some(w) = (c.check_own)() {
            wrong = Some(w);
            break;
        }
        reads += 1;
        let now = arch::now();
        if now - last > gap {
            gaps += 1;
        }
        last = now;
    }
    c.spin.stop.store(1, Release);
    publish();
    let done = arch::wait_until(3000, || {
        (1..started).all(|v| c.spin.done[v].load(Acquire) != 0)
    });
    for v in 1..started as u64 {
        let off = smp::wait_off(v);
        result = result.and(off);
    }
    (c.put_back)();

    result?;
    ensure!(ready, "the other vCPUs did not all set theirs within 3 s");
    ensure!(done, "the other vCPUs did not all stop within 3 s");
    if let Some((i, got, want)) = wrong {
        bail!(
            "vCPU 0 read {} = {got:#x} after {reads} good reads and {gaps} pauses of over 2 ms, wrote {want:#x}",
            (c.name)(i)
        );
    }
    for v in 1..started {
        let (bad, seen) = (c.spin.bad[v].load(Acquire), c.spin.seen[v].load(Acquire));
        let loops = c.spin.loops[v].load(Acquire);
        if bad != 0 {
            let i = bad as usize;
            bail!(
                "vCPU {v} read {} = {seen:#x} after {loops} good reads, wrote {:#x}",
                (c.name)(i),
                (c.want)(v, i)
            );
        }
        ensure!(loops > 0, "vCPU {v} never read its values back");
    }

    let mut fresh = None;
    if n > 1 {
        smp::cpu_on(1, c.fresh)?;
        let reported = arch::wait_until(3000, || c.spin.fresh[c.fresh_len].load(Acquire) != 0);
        smp::wait_off(1)?;
        ensure!(reported, "vCPU 1 did not report after its reset within 3 s");
        fresh = Some(core::array::from_fn(|i| c.spin.fresh[i].load(Acquire)));
    }
    Ok(Outcome {
        vcpus: n,
        reads,
        gaps,
        fresh,
    })
}
