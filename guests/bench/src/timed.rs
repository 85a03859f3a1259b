//! The timed instruction sequences. Each one is a single `asm!` block framed the same
//! way as [`empty`]:
//!
//! ```text
//!     isb ; mrs t0, cntvct_el0 ; <operation> ; isb ; mrs t1, cntvct_el0
//! ```
//!
//! so `t1 - t0` of [`empty`] (the "overhead") is exactly the framing cost contained in
//! every other sample, and the runner subtracts it. Under QEMU `-icount shift=4` with a
//! 62.5 MHz counter one tick is one executed instruction at any exception level, so a
//! sample is the number of instructions the operation cost, hypervisor included.
//! The sequences are `#[inline(never)]` so every call site times the same machine code.

use core::arch::asm;

/// The framing alone.
#[inline(never)]
pub fn empty() -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: reads the virtual counter only.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// `hvc #0` with x0 = `id` and x1..x3 = 0 (SMCCC: x0..x17 may change). Returns
/// (ticks, x0).
#[inline(never)]
pub fn hvc(id: u64) -> (u64, u64) {
    let (t0, t1, r0): (u64, u64, u64);
    // SAFETY: a hypercall with a query function ID; no guest state is affected.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "hvc #0",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1,
            inout("x0") id => r0,
            inout("x1") 0u64 => _, inout("x2") 0u64 => _, inout("x3") 0u64 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        )
    };
    (t1.wrapping_sub(t0), r0)
}

/// One 32-bit `ldr w, [x]` from a device register. Returns (ticks, value).
#[inline(never)]
pub fn mmio_read32(addr: usize) -> (u64, u32) {
    let (t0, t1): (u64, u64);
    let v: u32;
    // SAFETY: `addr` is a readable device register without read side effects (GICD_TYPER).
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "ldr {v:w}, [{a}]",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, v = out(reg) v, a = in(reg) addr,
            options(nostack),
        )
    };
    (t1.wrapping_sub(t0), v)
}

/// One 32-bit `str w, [x]` to a device register. Returns ticks.
#[inline(never)]
pub fn mmio_write32(addr: usize, value: u32) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: `addr` is a writable device register whose write has no effect beyond
    // itself (the priority of an SPI nothing raises).
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "str {v:w}, [{a}]",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, v = in(reg) value, a = in(reg) addr,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// Write `sgi1r` to ICC_SGI1R_EL1 and spin until the u32 at `counter` differs from
/// `prev` (an IRQ handler bumps it) or CNTVCT reaches `deadline`. IRQs must be unmasked.
/// The poll loop has a YIELD: a no-op for the CPU, but single-threaded TCG (which -icount
/// implies) switches to the other vCPU on it, without which `ipi_roundtrip` starves vCPU 1.
#[inline(never)]
pub fn sgi_and_wait(sgi1r: u64, counter: *const u32, prev: u32, deadline: u64) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: sends an SGI (handled by our vector) and reads a static the handler writes.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "msr icc_sgi1r_el1, {sgi}",
            "isb",
            "2:",
            "ldr {c:w}, [{cnt}]",
            "cmp {c:w}, {prev:w}",
            "b.ne 3f",
            "mrs {n}, cntvct_el0",
            "cmp {n}, {dl}",
            "yield", // let QEMU's round-robin TCG run the other vCPU
            "b.lo 2b",
            "3:",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, c = out(reg) _, n = out(reg) _,
            sgi = in(reg) sgi1r, cnt = in(reg) counter, prev = in(reg) prev, dl = in(reg) deadline,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// Store `value` to the device register at `addr` (a GICD_ISPENDR bit: an SPI made
/// pending by software), then spin exactly as [`sgi_and_wait`] does until the u32 at
/// `counter` differs from `prev` or CNTVCT reaches `deadline`. IRQs must be unmasked.
#[inline(never)]
pub fn mmio_set_and_wait(
    addr: usize,
    value: u32,
    counter: *const u32,
    prev: u32,
    deadline: u64,
) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: makes an interrupt pending that our vector handles, and reads a static the
    // handler writes.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "str {v:w}, [{a}]",
            "isb",
            "2:",
            "ldr {c:w}, [{cnt}]",
            "cmp {c:w}, {prev:w}",
            "b.ne 3f",
            "mrs {n}, cntvct_el0",
            "cmp {n}, {dl}",
            "yield",
            "b.lo 2b",
            "3:",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, c = out(reg) _, n = out(reg) _,
            v = in(reg) value, a = in(reg) addr,
            cnt = in(reg) counter, prev = in(reg) prev, dl = in(reg) deadline,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// Write `sgi1r` to ICC_SGI1R_EL1 (an SGI to another vCPU) and nothing else: the sender's
/// cost of a one-way SGI. Returns (ticks, the u32 at `counter` read right after the
/// second counter read). The receiver's handler bumps that counter, so on a single
/// physical CPU a value that has already changed means the receiver ran inside the timed
/// window: the hypervisor switched to it before the sender's `isb; mrs` completed.
#[inline(never)]
pub fn sgi_send(sgi1r: u64, counter: *const u32) -> (u64, u32) {
    let (t0, t1): (u64, u64);
    let seen: u32;
    // SAFETY: sends an SGI (handled by the other vCPU's vector) and reads a static its
    // handler writes.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "msr icc_sgi1r_el1, {sgi}",
            "isb", "mrs {t1}, cntvct_el0",
            "ldr {c:w}, [{cnt}]",
            t0 = out(reg) t0, t1 = out(reg) t1, c = out(reg) seen,
            sgi = in(reg) sgi1r, cnt = in(reg) counter,
            options(nostack),
        )
    };
    (t1.wrapping_sub(t0), seen)
}

/// Write `sgi1r` to ICC_SGI1R_EL1, then sleep in WFI (IRQs masked around the check, so
/// the wake-up is not lost) until the u32 at `counter` differs from `prev` or CNTVCT
/// reaches `deadline`. IRQs must be unmasked on entry; they are on return. With both
/// vCPUs time-shared on one physical CPU this is two hand-overs: the WFI gives the CPU
/// to the other vCPU, whose answer and WFI give it back.
#[inline(never)]
pub fn sgi_and_wfi(sgi1r: u64, counter: *const u32, prev: u32, deadline: u64) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: sends an SGI (handled by our vector), reads a static the handler writes, and
    // masks/unmasks IRQs around WFI as any idle loop does.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "msr icc_sgi1r_el1, {sgi}",
            "isb",
            "2:",
            "msr daifset, #2",
            "ldr {c:w}, [{cnt}]",
            "cmp {c:w}, {prev:w}",
            "b.ne 3f",
            "mrs {n}, cntvct_el0",
            "cmp {n}, {dl}",
            "b.hs 3f",
            "wfi",
            "msr daifclr, #2",
            "isb",
            "b 2b",
            "3:",
            "msr daifclr, #2",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, c = out(reg) _, n = out(reg) _,
            sgi = in(reg) sgi1r, cnt = in(reg) counter, prev = in(reg) prev, dl = in(reg) deadline,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// A PL011 driver's putc: poll UARTFR until TXFF is clear (bounded by `deadline`), then
/// one 32-bit store of `byte` to UARTDR.
#[inline(never)]
pub fn uart_putc(fr: usize, dr: usize, byte: u32, deadline: u64) -> u64 {
    let (t0, t1): (u64, u64);
    // SAFETY: PL011 registers of the console; writes one byte.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0",
            "2:",
            "ldr {f:w}, [{fr}]",
            "tbz {f:w}, #5, 3f", // UARTFR.TXFF
            "mrs {n}, cntvct_el0",
            "cmp {n}, {dl}",
            "b.lo 2b",
            "3:",
            "str {b:w}, [{dr}]",
            "isb", "mrs {t1}, cntvct_el0",
            t0 = out(reg) t0, t1 = out(reg) t1, f = out(reg) _, n = out(reg) _,
            fr = in(reg) fr, dr = in(reg) dr, b = in(reg) byte, dl = in(reg) deadline,
            options(nostack),
        )
    };
    t1.wrapping_sub(t0)
}

/// PSCI call outside any measurement: x0..x3 in, x0 out.
pub fn psci(id: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let r0: u64;
    // SAFETY: a hypercall; the hypervisor (or QEMU's built-in PSCI) owns its effects.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") id => r0,
            inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        )
    };
    r0
}
