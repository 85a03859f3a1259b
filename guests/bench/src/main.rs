//! Bothy bench guest: a bare-metal EL1 program, packaged as an arm64 Linux `Image`, that
//! times virtualization costs (a null hypercall, trapped MMIO, SGIs, an SPI made pending
//! through the distributor, virtual timer interrupt latency, a cross-vCPU IPI round trip
//! and a one-way SGI to the other vCPU, a UART byte) with CNTVCT_EL0 and prints
//! one `BENCH <op> ...` line per operation, then `BENCH done`, then powers off with PSCI
//! SYSTEM_OFF. Lines starting with `#` are information only. See README.md.
//!
//! Boot (guests/rt: entry.S, shared with guests/selftest): Image header,
//! self-relocation, .bss, stack, VBAR_EL1, FP/SIMD on; the MMU stays off.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod exceptions;
mod fdt;
mod gic;
mod platform;
mod timed;

pub(crate) use rt::{arch, uart};

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering::*};

use crate::arch::write_sysreg;
use crate::exceptions::{count, timer_at, FAULTS, FAULT_OK, LAST_ESR, PRIMARY_MPIDR};
use crate::uart::{print, println};

const PSCI_VERSION: u64 = 0x8400_0000;
const PSCI_CPU_ON_64: u64 = 0xC400_0003;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

/// Samples per operation without `bench.iters=` in /chosen/bootargs, and the ceiling.
const DEFAULT_ITERS: usize = 1000;
const MAX_ITERS: usize = 10_000;
/// Bound on every wait for an interrupt or a device, in milliseconds of counter time.
const TIMEOUT_MS: u64 = 100;
/// How far in the future the virtual timer deadline is set, in ticks.
const VTIMER_DELTA: u64 = 2000;
/// GICD_IPRIORITYR (GICv3 §12.9.22): one byte per INTID.
const GICD_IPRIORITYR: usize = 0x400;
/// The first of the four SPIs whose priorities `mmio_gicd_write` rewrites (unused by
/// every configuration's devices: QEMU virt's start at INTID 32 + 1).
const BENCH_PRIORITY_INTID: usize = 72;
/// The priority written: the GIC driver's default, so nothing changes.
const BENCH_PRIORITY: u32 = 0xa0;
/// The byte `uart_putc` writes: a space (harmless on a terminal, keeps logs text).
const UART_BENCH_BYTE: u8 = b' ';
/// How long to wait for the second vCPU to come up after CPU_ON.
const SECONDARY_TIMEOUT_MS: u64 = 1000;

/// Sample buffer; the primary vCPU only, never from an exception handler.
struct Samples(UnsafeCell<[u64; MAX_ITERS]>);
// SAFETY: see above.
unsafe impl Sync for Samples {}
static SAMPLES: Samples = Samples(UnsafeCell::new([0; MAX_ITERS]));

/// Why an operation did not produce samples.
enum Fail {
    Timeout,
    Exception(u64),
    IrqBeforeDeadline,
    Gic(&'static str),
    Psci(i64),
    Skip(&'static str),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fail::Timeout => write!(f, "timeout-{TIMEOUT_MS}ms"),
            Fail::Exception(esr) => write!(f, "exception-esr-{esr:#x}"),
            Fail::IrqBeforeDeadline => write!(f, "irq-before-deadline"),
            Fail::Gic(why) => write!(f, "gic-init-{why}"),
            Fail::Psci(r) => write!(f, "cpu_on:{r}"),
            Fail::Skip(why) => write!(f, "{why}"),
        }
    }
}

fn timeout_ticks() -> u64 {
    arch::ms_to_ticks(TIMEOUT_MS)
}

/// Run `one` once as warm-up (not recorded), then `iters` times; each result minus
/// `overhead` is a sample. Synchronous exceptions inside are skipped and end the op.
fn measure(
    iters: usize,
    overhead: u64,
    mut one: impl FnMut() -> Result<u64, Fail>,
) -> Result<Stats, Fail> {
    let faults = FAULTS.load(Acquire);
    FAULT_OK.store(true, SeqCst);
    let mut run = || {
        let r = one();
        if FAULTS.load(Acquire) != faults {
            return Err(Fail::Exception(LAST_ESR.load(Relaxed)));
        }
        r
    };
    let result = (|| {
        run()?;
        // SAFETY: see Samples.
        let samples = unsafe { &mut *SAMPLES.0.get() };
        for s in samples[..iters].iter_mut() {
            *s = run()?.saturating_sub(overhead);
        }
        Ok(Stats::of(&mut samples[..iters], overhead))
    })();
    FAULT_OK.store(false, SeqCst);
    result
}

struct Stats {
    iters: usize,
    total: u64,
    median: u64,
    min: u64,
    max: u64,
    overhead: u64,
}

impl Stats {
    /// Sorts `s`; the median is the lower median for an even count.
    fn of(s: &mut [u64], overhead: u64) -> Stats {
        s.sort_unstable();
        Stats {
            iters: s.len(),
            total: s.iter().sum(),
            median: s[(s.len() - 1) / 2],
            min: s[0],
            max: s[s.len() - 1],
            overhead,
        }
    }
}

fn report(op: &str, r: Result<Stats, Fail>) {
    match r {
        Ok(s) => println!(
            "BENCH {op} iters={} total={} median={} min={} max={} overhead={}",
            s.iters, s.total, s.median, s.min, s.max, s.overhead
        ),
        Err(Fail::Skip(why)) => println!("BENCH {op} skipped reason={why}"),
        Err(e) => println!("BENCH {op} failed reason={e}"),
    }
}

/// Wait for the virtual timer IRQ after programming the deadline; `wfi` sleeps instead
/// of spinning. Sample: handler entry CNTVCT − CNTV_CVAL.
fn vtimer_once(wfi: bool) -> Result<u64, Fail> {
    let at = timer_at(0);
    at.store(0, Release);
    if wfi {
        arch::irqs_mask();
    }
    let cval = arch::now() + VTIMER_DELTA;
    write_sysreg!("cntv_cval_el0", cval);
    write_sysreg!("cntv_ctl_el0", 1);
    arch::isb();
    let deadline = cval + timeout_ticks();
    let fired = loop {
        let t = at.load(Acquire);
        if t != 0 {
            break t;
        }
        if arch::now() > deadline {
            write_sysreg!("cntv_ctl_el0", 0);
            arch::irqs_unmask();
            return Err(Fail::Timeout);
        }
        if wfi {
            // Masked WFI still wakes on the pending IRQ; it is taken on unmask.
            arch::wfi();
            arch::irqs_unmask();
            arch::irqs_mask();
        }
    };
    arch::irqs_unmask();
    fired.checked_sub(cval).ok_or(Fail::IrqBeforeDeadline)
}

/// Send `sgi1r` and wait for `intid` to be counted on the primary.
fn sgi_once(sgi1r: u64, intid: u32) -> Result<u64, Fail> {
    let c = count(0, intid);
    let prev = c.load(Acquire);
    let deadline = arch::now() + timeout_ticks();
    let ticks = timed::sgi_and_wait(sgi1r, c.as_ptr(), prev, deadline);
    if c.load(Acquire) == prev {
        return Err(Fail::Timeout);
    }
    Ok(ticks)
}

/// Make `SPI_INJECT` pending with the store of `bit` to its GICD_ISPENDR at `ispendr`,
/// and wait until the primary's handler has counted it.
fn spi_once(ispendr: usize, bit: u32) -> Result<u64, Fail> {
    let c = count(0, exceptions::SPI_INJECT);
    let prev = c.load(Acquire);
    let deadline = arch::now() + timeout_ticks();
    let ticks = timed::mmio_set_and_wait(ispendr, bit, c.as_ptr(), prev, deadline);
    if c.load(Acquire) == prev {
        return Err(Fail::Timeout);
    }
    Ok(ticks)
}

/// `sgi_once`, sleeping in WFI instead of spinning.
fn sgi_wfi_once(sgi1r: u64, intid: u32) -> Result<u64, Fail> {
    let c = count(0, intid);
    let prev = c.load(Acquire);
    let deadline = arch::now() + timeout_ticks();
    let ticks = timed::sgi_and_wfi(sgi1r, c.as_ptr(), prev, deadline);
    if c.load(Acquire) == prev {
        return Err(Fail::Timeout);
    }
    Ok(ticks)
}

/// One `sgi_send` sample: an untimed exit, the timed write of `send` (SGI_SEND to
/// vCPU 1), then, outside the timed window, a hand-over until vCPU 1 has counted it.
/// `inside` counts the samples in which it had already done so when the window closed.
///
/// What the window holds, and why the receiver is not in it:
/// - The window is [`timed::sgi_send`]: `isb; mrs` / `msr icc_sgi1r_el1` / `isb; mrs`,
///   the framing of every other op, so the sample is the cost of the `msr` alone: the trap,
///   marking the SGI pending for vCPU 1, waking it (making it runnable), and the return.
/// - Before each send vCPU 1 is idle in WFI with nothing pending: it has counted the
///   previous SGI_SEND (checked below), and every PING it got was answered. So a send
///   always wakes a sleeping vCPU and is never folded into an SGI still pending.
/// - On one physical CPU (`bothy bench` takes this op only from the run of both vCPUs on
///   `-smp 1`) vCPU 1 runs only when the primary gives the CPU up. The primary does so
///   after the window: it sends SGI_PING and sleeps in WFI ([`sgi_wfi_once`], as for
///   `ipi_wfi_roundtrip`); vCPU 1 then takes SGI_SEND and SGI_PING (in either order),
///   answers the PING with SGI_PONG and goes back to WFI, which hands the CPU back. That
///   repeats until the SGI_SEND count has moved (a hypervisor that switches to a woken
///   vCPU at once could hand the CPU back after the PONG, before SGI_SEND was taken).
/// - The hand-over leaves the primary with the SGI_PONG it has just taken, which a
///   hypervisor may clean up at the vCPU's next exit (Bothy syncs its list register
///   then: about 120 instructions). That exit is an untimed `hvc` (PSCI_VERSION) before
///   the window, so the sample does not pay for the measurement's own interrupt.
/// - Only a hypervisor that switches to vCPU 1 as soon as the `msr` wakes it (or a time
///   slice that ends inside the window) can put vCPU 1's run in a sample. The counter read
///   right after the window shows it; `primary_main` prints how many samples that was.
///   The primary has just got the CPU back each time, which is when a scheduler is least
///   inclined to take it away: Xen preempted a sender that had been printing before the
///   send, but not one just scheduled (presumably credit2's 1 ms rate limit).
/// - On two physical CPUs vCPU 1 runs meanwhile on its own CPU: the figure is then
///   repeatable but not exact, and `bothy bench` ignores it.
fn sgi_send_once(send: u64, ping: u64, inside: &mut u32) -> Result<u64, Fail> {
    let c = count(1, exceptions::SGI_SEND);
    let prev = c.load(Acquire);
    timed::psci(PSCI_VERSION, 0, 0, 0);
    let (ticks, seen) = timed::sgi_send(send, c.as_ptr());
    if seen != prev {
        *inside += 1;
    }
    let deadline = arch::now() + timeout_ticks();
    while c.load(Acquire) == prev {
        if arch::now() > deadline {
            return Err(Fail::Timeout);
        }
        sgi_wfi_once(ping, exceptions::SGI_PONG)?;
    }
    Ok(ticks)
}

// ---- second vCPU ---------------------------------------------------------------------

/// 0: not started; 1: GIC ready, idling in WFI; 2: its GIC init failed.
static SECONDARY: AtomicU32 = AtomicU32::new(0);

extern "C" {
    fn secondary_entry();
}

#[no_mangle]
extern "C" fn secondary_main(_ctx: u64) -> ! {
    let state = match gic::cpu_init() {
        Ok(()) => 1,
        Err(why) => {
            println!("# vCPU 1: GIC init failed: {why}");
            2
        }
    };
    SECONDARY.store(state, Release);
    arch::dsb_sy();
    arch::sev();
    // Everything happens in the IRQ handler (SGI_PING -> SGI_PONG; SGI_SEND is counted).
    arch::irqs_unmask();
    loop {
        arch::wfi();
    }
}

/// CPU_ON the second vCPU and wait until it has set up its GIC.
fn start_secondary(mpidr: u64) -> Result<(), Fail> {
    let faults = FAULTS.load(Acquire);
    FAULT_OK.store(true, SeqCst);
    let entry = secondary_entry as *const () as u64;
    let r = timed::psci(PSCI_CPU_ON_64, mpidr, entry, 0) as i64;
    FAULT_OK.store(false, SeqCst);
    if FAULTS.load(Acquire) != faults {
        return Err(Fail::Exception(LAST_ESR.load(Relaxed)));
    }
    if r != 0 {
        return Err(Fail::Psci(r));
    }
    if !arch::wait_until(SECONDARY_TIMEOUT_MS, || SECONDARY.load(Acquire) != 0) {
        return Err(Fail::Skip("second-vcpu-did-not-come-up"));
    }
    match SECONDARY.load(Acquire) {
        1 => Ok(()),
        _ => Err(Fail::Skip("second-vcpu-gic-init-failed")),
    }
}

// ---- main ----------------------------------------------------------------------------

pub fn power_off() -> ! {
    let r = timed::psci(PSCI_SYSTEM_OFF, 0, 0, 0);
    println!("# SYSTEM_OFF returned {r:#x}");
    arch::irqs_mask();
    loop {
        arch::wfi();
    }
}

#[no_mangle]
extern "C" fn primary_main(dtb: usize, base: usize) -> ! {
    let me = arch::mpidr_aff();
    PRIMARY_MPIDR.store(me, Relaxed);
    let info = fdt::parse(dtb);
    if let Some(info) = &info {
        platform::apply(info);
    }
    let p = platform::get();
    let from = |dtb: bool| if dtb { "dtb" } else { platform::LAYOUT_NAME };
    let iters = match info.as_ref().and_then(|i| i.iters) {
        Some(n) => (n as usize).clamp(1, MAX_ITERS),
        None => DEFAULT_ITERS,
    };
    println!(
        "# bench: EL{}, image at {base:#x}, DTB at {dtb:#x} ({}), MPIDR {me:#x}, CNTFRQ {} Hz",
        arch::current_el(),
        if info.is_some() {
            "parsed"
        } else {
            "not parsed"
        },
        arch::counter_freq()
    );
    // The MPIDR `ipi_roundtrip` starts: the first /cpus entry that is not us.
    let dtb_second = info
        .as_ref()
        .and_then(|i| i.cpus.iter().flatten().copied().find(|&m| m != me));
    let second = dtb_second.unwrap_or(platform::SECOND_MPIDR_DEFAULT);
    println!(
        "# bench: uart {:#x} ({}), gicd {:#x} gicr {:#x} stride {:#x} ({}), second vCPU {second:#x} ({}), iters {iters}",
        p.uart,
        from(p.uart_from_dtb),
        p.gicd,
        p.gicr,
        p.gicr_stride,
        from(p.gic_from_dtb),
        from(dtb_second.is_some())
    );

    // The framing cost, subtracted from every framed sample.
    let overhead = match measure(iters, 0, || Ok(timed::empty())) {
        Ok(s) => {
            println!(
                "# bench: overhead median {} min {} max {}",
                s.median, s.min, s.max
            );
            s.median
        }
        Err(_) => 0,
    };

    let r = measure(iters, overhead, || Ok(timed::hvc(PSCI_VERSION).0));
    if r.is_ok() {
        println!("# bench: PSCI_VERSION = {:#x}", timed::hvc(PSCI_VERSION).1);
    }
    report("hvc_null", r);

    let typer = p.gicd + gic::GICD_TYPER;
    report(
        "mmio_gicd_typer",
        measure(iters, overhead, || Ok(timed::mmio_read32(typer).0)),
    );

    // GICD_IPRIORITYR of SPIs 72..75, which nothing enables or raises: a trapped,
    // emulated MMIO write whose only effect is the register itself.
    let prio = p.gicd + GICD_IPRIORITYR + BENCH_PRIORITY_INTID;
    report(
        "mmio_gicd_write",
        measure(iters, overhead, || {
            Ok(timed::mmio_write32(prio, BENCH_PRIORITY * 0x0101_0101))
        }),
    );

    let gic = gic::dist_init().and_then(|()| gic::cpu_init());
    if let Err(why) = gic {
        println!("# bench: GIC init failed: {why}");
    }
    let sgi_self = gic::sgi1r(exceptions::SGI_SELF, me);
    arch::irqs_unmask();
    let r = gic.map_err(Fail::Gic);
    report(
        "sgi_self",
        r.and_then(|()| measure(iters, overhead, || sgi_once(sgi_self, exceptions::SGI_SELF))),
    );
    // An SPI raised by a trapped distributor write (software pending, as a device model's
    // would be) and delivered to this vCPU: the store to GICD_ISPENDR, the injection and
    // the guest's handler, as `sgi_self` for an SGI.
    let (ispendr, spi_bit) = gic::bit_reg(gic::GICD_ISPENDR, exceptions::SPI_INJECT);
    let r = gic
        .and_then(|()| gic::spi_init(exceptions::SPI_INJECT, me))
        .map_err(Fail::Gic);
    report(
        "spi_inject",
        r.and_then(|()| measure(iters, overhead, || spi_once(p.gicd + ispendr, spi_bit))),
    );
    let r = gic
        .map_err(Fail::Gic)
        .and_then(|()| measure(iters, 0, || vtimer_once(false)));
    let vtimer_ok = r.is_ok();
    report("vtimer_irq", r);
    // Only a timer known to fire may be slept on: nothing else would end the WFI.
    let r = match vtimer_ok {
        true => measure(iters, 0, || vtimer_once(true)),
        false => Err(Fail::Skip("vtimer_irq-failed")),
    };
    report("vtimer_wfi", r);
    arch::irqs_mask();

    let (fr, dr) = (p.uart + uart::UARTFR, p.uart + uart::UARTDR);
    let r = measure(iters, overhead, || {
        let deadline = arch::now() + timeout_ticks();
        Ok(timed::uart_putc(fr, dr, UART_BENCH_BYTE.into(), deadline))
    });
    print!("\n");
    report("uart_putc", r);

    // Last: from here on a second vCPU exists, which shares QEMU's icount budget.
    match gic
        .map_err(Fail::Gic)
        .and_then(|()| start_secondary(second))
    {
        Err(why) => {
            for op in ["ipi_roundtrip", "ipi_wfi_roundtrip", "sgi_send"] {
                println!("BENCH {op} skipped reason={why}");
            }
        }
        Ok(()) => {
            arch::irqs_unmask();
            let ping = gic::sgi1r(exceptions::SGI_PING, second);
            let r = measure(iters, overhead, || sgi_once(ping, exceptions::SGI_PONG));
            report("ipi_roundtrip", r);
            // The same round trip with vCPU 0 asleep in WFI meanwhile: on one physical
            // CPU shared by both vCPUs, two vCPU hand-overs (`bothy bench` runs it so).
            let r = measure(iters, overhead, || sgi_wfi_once(ping, exceptions::SGI_PONG));
            report("ipi_wfi_roundtrip", r);
            // One way, vCPU 1 asleep: what the sender pays (see sgi_send_once). One
            // hand-over first, so that the warm-up send, like every other, comes right
            // after one (Xen preempted the sender at a send that came after the report).
            let send = gic::sgi1r(exceptions::SGI_SEND, second);
            let mut inside = 0;
            let r = sgi_wfi_once(ping, exceptions::SGI_PONG)
                .and_then(|_| measure(iters, overhead, || sgi_send_once(send, ping, &mut inside)));
            println!(
                "# bench: sgi_send: vCPU 1 had taken the SGI by the end of the timed window \
                 in {inside} of {} sends",
                iters + 1
            );
            report("sgi_send", r);
        }
    }
    arch::irqs_mask();

    println!("BENCH done");
    power_off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("# fatal: panic on vCPU {}: {info}", exceptions::cpu_index());
    if exceptions::cpu_index() == 0 {
        power_off()
    }
    arch::irqs_mask();
    loop {
        arch::wfi();
    }
}
