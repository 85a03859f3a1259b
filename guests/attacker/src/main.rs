//! Bothy attacker guest: a bare-metal EL1 program, packaged as an arm64 Linux `Image`,
//! that attacks the hypervisor from inside one VM while a second VM, running the same
//! binary as the *victim*, checks that nothing reached it. The role comes from the
//! bootargs: `attacker.role=victim` makes a victim, anything else an attacker.
//!
//! * Attacker (`cases.rs`): each case tries something a hostile guest would (console
//!   forgeries, accesses across the IPA space, foreign GIC state, PSCI on vCPUs it does
//!   not have, SGIs to nobody, accesses Bothy cannot emulate, EL2 registers, the PMU
//!   across exits, AArch32 EL0 traps, floods) and asserts Bothy's correct answer,
//!   printing `TEST <case> ok` or `TEST <case> FAILED: why`, then
//!   `TEST summary: N ok, M failed`, then powers its VM off with PSCI SYSTEM_OFF. Cases
//!   that find a Bothy bug not fixed yet are gated behind a bootarg (`attacker.<case>=1`)
//!   and announced with a `#` line when skipped.
//! * Victim (`victim.rs`): fills part of its RAM with a pattern, ticks its virtual timer
//!   every 10 ms, and every 100 ms re-checks pattern and tick rate (`VICTIM ok <n>`);
//!   told `stop` on its console it checks everything once more, prints
//!   `VICTIM summary: ok` (or `VICTIM fail ...` lines and a failed summary), and powers
//!   off.
//!
//! Boot (guests/rt: entry.S): Image header, self-relocation, .bss, stack, VBAR_EL1,
//! FP/SIMD on; the MMU stays off, so every address is the IPA. The guest assumes Bothy's
//! guest layout (QEMU `virt`'s): GICv3 at 0x0800_0000, redistributors from 0x080A_0000,
//! PL011 at 0x0900_0000, RAM from 0x4000_0000.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
// `Msg` (rt::msg) is a 256-byte inline buffer on purpose (no allocator); failures are rare.
#![allow(clippy::result_large_err)]

mod cases;
mod debugregs;
mod exceptions;
mod lazyregs;
mod victim;

pub(crate) use rt::{arch, msg, psci, uart};

use core::sync::atomic::{AtomicUsize, Ordering::*};

use crate::uart::println;

core::arch::global_asm!(include_str!("low.S"), options(raw));

/// PL011 registers.
pub const UART_BASE: usize = 0x0900_0000;
/// GICv3 distributor.
pub const GICD_BASE: usize = 0x0800_0000;
/// First redistributor; vCPU n's is `GICR_BASE + n * GICR_STRIDE`.
pub const GICR_BASE: usize = 0x080A_0000;
/// Start of guest RAM.
pub const RAM_BASE: usize = 0x4000_0000;

static DTB: AtomicUsize = AtomicUsize::new(0);

pub fn dtb() -> usize {
    DTB.load(Relaxed)
}

#[no_mangle]
extern "C" fn primary_main(dtb: usize, base: usize) -> ! {
    DTB.store(dtb, Relaxed);
    if bootarg(b"attacker.role=victim") {
        exceptions::VICTIM.store(true, Relaxed);
        println!("# bothy attacker guest: role victim, image at {base:#x}, DTB at {dtb:#x}");
        victim::run()
    } else {
        println!("# bothy attacker guest: role attacker, image at {base:#x}, DTB at {dtb:#x}");
        cases::run()
    }
}

/// Whether the DTB holds `needle`: a crude look for a switch in `/chosen/bootargs` (the
/// only string in the guest's DTB a system file sets). Nothing else is read from it.
pub fn bootarg(needle: &[u8]) -> bool {
    // SAFETY: x0 at entry named the DTB the hypervisor placed in guest RAM (MMU off: the
    // address is the IPA); the victim's pattern stays clear of it (victim.rs).
    unsafe { rt::fdt::Fdt::at(dtb()) }.is_some_and(|fdt| fdt.contains(needle))
}

/// The console for `print!`/`println!` (rt's hook): the PL011 at [`UART_BASE`].
#[no_mangle]
fn rt_console() -> rt::uart::Pl011 {
    rt::uart::Pl011 {
        base: UART_BASE,
        txff_polls: None,
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("# panic on vCPU {}: {info}", arch::cpu_id());
    rt::guard::panic_recover(arch::cpu_id().min(exceptions::NR_VCPUS - 1))
}
