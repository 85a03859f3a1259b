//! The victim: a VM that only wants to be left alone, and says whether it was.
//!
//! It fills every breakpoint and watchpoint register with values of its own
//! ([`debugregs::victim`]), its pointer-authentication keys and SVE predicates
//! ([`lazyregs`]), and [`FILL`] bytes of its RAM above its image with a pattern
//! that depends on the address (so a page mapped twice or moved shows as well as a
//! write), brings up its GIC and ticks its virtual timer every [`PERIOD_MS`]. Between
//! ticks it sleeps in WFI. Every [`CHECK_MS`] it re-checks one [`CHUNK`] of the pattern
//! (the whole of it every `FILL / CHUNK` rounds), the debug registers and the tick
//! record, and prints `VICTIM ok <round>`; when it
//! reads `stop` on its console it checks the whole pattern and the tick rate once more,
//! prints `VICTIM summary: ok` (or `VICTIM summary: FAILED`) and powers off.
//!
//! Ticks: the CPU is time-shared with the attacker under TCG, so a tick may come late;
//! what must not happen is a long stall (no tick for [`STALL_MS`] while the victim runs)
//! or a rate far below the period (less than [`MIN_RATE_PERCENT`] of the ticks due).
//! Any failure prints `VICTIM fail <why>` at once.

use core::sync::atomic::{AtomicU64, Ordering::*};

use crate::arch::{self, mmio_read32, write_sysreg};
use crate::uart::println;
use crate::{debugregs, lazyregs, psci, GICD_BASE, GICR_BASE, RAM_BASE, UART_BASE};

const PERIOD_MS: u64 = 10;
const CHECK_MS: u64 = 100;
/// Longest gap between two ticks the victim accepts.
const STALL_MS: u64 = 3000;
const MIN_RATE_PERCENT: u64 = 10;
/// Pattern size (of the VM's 64 MiB) and how much of it one round re-checks.
const FILL: usize = 16 << 20;
const CHUNK: usize = 1 << 20;
/// The victim gives up waiting for `stop` after this long.
const MAX_RUN_MS: u64 = 150_000;

const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;
const UARTFR_RXFE: u32 = 1 << 4;

static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST_TICK: AtomicU64 = AtomicU64::new(0);
/// Longest gap between ticks seen, in counter ticks.
static MAX_GAP: AtomicU64 = AtomicU64::new(0);
static PERIOD: AtomicU64 = AtomicU64::new(0);

/// Timer interrupt (exceptions.rs): count, and program the next tick.
pub fn tick() {
    let now = arch::now();
    let last = LAST_TICK.load(Relaxed);
    if now - last > MAX_GAP.load(Relaxed) {
        MAX_GAP.store(now - last, Relaxed);
    }
    LAST_TICK.store(now, Release);
    TICKS.store(TICKS.load(Relaxed) + 1, Release);
    write_sysreg!("cntv_cval_el0", now + PERIOD.load(Relaxed));
}

fn pattern(addr: usize) -> u64 {
    (addr as u64).rotate_left(17) ^ 0x5EED_F00D_CAFE_0000
}

/// The first wrong word in `[start, end)`, if any.
fn check(start: usize, end: usize) -> Option<(usize, u64)> {
    (start..end).step_by(8).find_map(|a| {
        // SAFETY: inside the victim's own RAM (see `region`), 8-byte aligned.
        let v = unsafe { core::ptr::read_volatile(a as *const u64) };
        (v != pattern(a)).then_some((a, v))
    })
}

/// Where the pattern goes: from the first 2 MiB boundary past the image, below the DTB.
fn region() -> (usize, usize) {
    let start = rt::image_end().next_multiple_of(2 << 20);
    (start, start + FILL)
}

struct Run {
    failures: u32,
}

impl Run {
    fn fail(&mut self, why: core::fmt::Arguments) {
        self.failures += 1;
        println!("VICTIM fail {why}");
    }
}

pub fn run() -> ! {
    let mut run = Run { failures: 0 };
    // Breakpoints and watchpoints: all of them the victim's, checked every round.
    for (kind, n) in debugregs::all() {
        debugregs::write(kind, n, debugregs::victim(kind, n));
    }
    // Pointer-authentication keys and SVE predicates likewise.
    if lazyregs::has_pauth() {
        lazyregs::set_keys(lazyregs::victim_keys());
    }
    if lazyregs::has_sve() {
        lazyregs::set_preds(lazyregs::VICTIM_PREDS);
    }
    let (start, end) = region();
    let dtb = crate::dtb();
    if start < RAM_BASE || (end > dtb && start < dtb + (2 << 20)) {
        run.fail(format_args!(
            "pattern [{start:#x}, {end:#x}) would overlap the DTB at {dtb:#x}"
        ));
    }
    for a in (start..end).step_by(8) {
        // SAFETY: the victim's own RAM past its image and below its DTB (checked above).
        unsafe { core::ptr::write_volatile(a as *mut u64, pattern(a)) };
    }
    println!("# victim: {} MiB pattern at {start:#x}", FILL >> 20);

    if let Err(s) = gic_up() {
        run.fail(format_args!(
            "GIC bring-up: {} stuck at {:#x}",
            s.what, s.value
        ));
    }
    let freq = arch::counter_freq();
    let period = freq * PERIOD_MS / 1000;
    PERIOD.store(period, Relaxed);
    let t0 = arch::now();
    LAST_TICK.store(t0, Release);
    write_sysreg!("cntv_cval_el0", t0 + period);
    write_sysreg!("cntv_ctl_el0", 1);
    arch::isb();

    let mut round = 0u64;
    let mut next_chunk = start;
    let mut line = [0u8; 16];
    let mut len = 0;
    let mut stopped = false;
    while !stopped {
        sleep_until(arch::now() + freq * CHECK_MS / 1000);
        round += 1;
        if let Some((a, v)) = check(next_chunk, next_chunk + CHUNK) {
            run.fail(format_args!(
                "memory at {a:#x} reads {v:#x}, wrote {:#x}",
                pattern(a)
            ));
        }
        next_chunk = if next_chunk + CHUNK >= end {
            start
        } else {
            next_chunk + CHUNK
        };
        check_debug_registers(&mut run, round);
        check_lazy_registers(&mut run, round);
        check_lazy_registers(&mut run, round);
        let now = arch::now();
        let gap_ms = (now - LAST_TICK.load(Acquire)) * 1000 / freq;
        if gap_ms > STALL_MS {
            run.fail(format_args!(
                "no timer tick for {gap_ms} ms (round {round})"
            ));
        }
        println!("VICTIM ok {round} ticks {}", TICKS.load(Acquire));
        // Console input: a line `stop` ends the run.
        while mmio_read32(UART_BASE + UARTFR) & UARTFR_RXFE == 0 {
            let b = mmio_read32(UART_BASE + UARTDR) as u8;
            if b == b'\n' || b == b'\r' {
                stopped |= &line[..len] == b"stop";
                len = 0;
            } else if len < line.len() {
                line[len] = b;
                len += 1;
            }
        }
        if (now - t0) * 1000 / freq > MAX_RUN_MS {
            run.fail(format_args!("not told to stop within {MAX_RUN_MS} ms"));
            break;
        }
    }
    arch::irqs_mask();
    write_sysreg!("cntv_ctl_el0", 0);

    if let Some((a, v)) = check(start, end) {
        run.fail(format_args!(
            "memory at {a:#x} reads {v:#x}, wrote {:#x} (final check)",
            pattern(a)
        ));
    }
    check_debug_registers(&mut run, round);
    let elapsed = arch::now() - t0;
    let due = elapsed / period;
    let ticks = TICKS.load(Acquire);
    let max_gap_ms = MAX_GAP.load(Acquire) * 1000 / freq;
    println!(
        "# victim: {ticks} ticks of {due} due over {} ms, longest gap {max_gap_ms} ms",
        elapsed * 1000 / freq
    );
    if ticks * 100 < due * MIN_RATE_PERCENT {
        run.fail(format_args!(
            "only {ticks} timer ticks of {due} due (under {MIN_RATE_PERCENT}%)"
        ));
    }
    if max_gap_ms > STALL_MS {
        run.fail(format_args!("timer ticks stalled for {max_gap_ms} ms"));
    }
    if run.failures == 0 {
        println!("VICTIM summary: ok");
    } else {
        println!("VICTIM summary: FAILED ({} failures)", run.failures);
    }
    let r = psci::system_off();
    println!("VICTIM fail SYSTEM_OFF returned {r}");
    rt::exceptions::park()
}

/// The breakpoint and watchpoint registers still hold what the victim wrote.
fn check_debug_registers(run: &mut Run, round: u64) {
    if let Some((kind, n, v)) = debugregs::first_wrong(debugregs::victim) {
        let whose = if v == debugregs::attacker(kind, n) {
            "the attacker's "
        } else {
            ""
        };
        run.fail(format_args!(
            "{}{n} reads {whose}{v:#x}, wrote {:#x} (round {round})",
            debugregs::KINDS[kind],
            debugregs::victim(kind, n)
        ));
    }
}

/// The keys and predicates still hold what the victim wrote.
fn check_lazy_registers(run: &mut Run, round: u64) {
    if lazyregs::has_pauth() {
        let keys = lazyregs::keys();
        if keys != lazyregs::victim_keys() {
            let whose = if keys == lazyregs::attacker_keys() {
                "the attacker's "
            } else {
                ""
            };
            run.fail(format_args!(
                "PAuth keys read {whose}{keys:#x?} (round {round})"
            ));
        }
    }
    if lazyregs::has_sve() {
        let preds = lazyregs::preds();
        if preds != lazyregs::preds_of(lazyregs::VICTIM_PREDS) {
            run.fail(format_args!(
                "SVE predicates P0-P3 hold {preds:?} elements (round {round})"
            ));
        }
    }
}

/// Sleep in WFI (the timer ticks wake it) until the counter reaches `until`.
fn sleep_until(until: u64) {
    loop {
        arch::irqs_mask();
        if arch::now() >= until {
            arch::irqs_unmask();
            return;
        }
        arch::wfi();
        arch::irqs_unmask();
    }
}

/// Distributor, this vCPU's redistributor and CPU interface (guests/rt's steps).
fn gic_up() -> Result<(), rt::gic::Stuck> {
    rt::gic::dist_enable(GICD_BASE)?;
    rt::gic::rd_init(GICR_BASE)?;
    rt::gic::icc_sre_enable();
    rt::gic::icc_enable();
    Ok(())
}
