//! Bothy selftest guest: a bare-metal EL1 program, packaged as an arm64 Linux `Image`,
//! that checks a hypervisor's behaviour from inside (PSCI/SMCCC over HVC, vCPU bring-up,
//! GICv3 SGIs and IPIs, the virtual timer and WFI, aborts on bad IPAs) and prints one
//! `TEST <name> ok` / `TEST <name> fail <why>` / `TEST <name> skipped (<why>)` line per
//! check, then `TEST summary: N passed, M failed, K skipped`, then powers the VM off with
//! PSCI SYSTEM_OFF.
//! Lines starting with `#` are information only.
//!
//! Boot (guests/rt: entry.S): Image header, self-relocation of .rela.dyn (linked at 0,
//! loaded at any 2 MiB-aligned address), .bss zeroing, stack, VBAR_EL1, FP/SIMD on; MMU
//! stays off (see README.md). Each check runs under `rt::guard::run` (a setjmp), so an
//! unexpected exception or a panic inside one check fails that check and the next one
//! runs.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
// `Msg` (rt::msg) is a 256-byte inline buffer on purpose (no allocator); failures are rare.
#![allow(clippy::result_large_err)]

mod checks;
mod debugregs;
mod el0;
mod exceptions;
mod fdt;
mod fpregs;
mod gic;
mod pauthkeys;
mod platform;
mod race;
mod smp;
mod svepreds;
mod vcpuregs;

pub(crate) use rt::{arch, msg, psci, uart};

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering::*};

use crate::msg::CheckResult;
use crate::uart::println;

core::arch::global_asm!(include_str!("regs.S"), options(raw));

/// What entry.S (guests/rt) found at boot.
#[derive(Clone, Copy)]
pub struct BootInfo {
    pub dtb: usize,
    pub base: usize,
    pub size: usize,
    pub x1_x3: u64,
    pub relocs_unknown: u64,
}

/// A cell written once by the primary before anything else reads it.
struct BootCell(UnsafeCell<BootInfo>);
// SAFETY: written only in primary_main before any check (or vCPU 1) runs; read-only after.
unsafe impl Sync for BootCell {}

static BOOT: BootCell = BootCell(UnsafeCell::new(BootInfo {
    dtb: 0,
    base: 0,
    size: 0,
    x1_x3: 0,
    relocs_unknown: 0,
}));

pub fn boot_info() -> BootInfo {
    // SAFETY: see BootCell.
    unsafe { *BOOT.0.get() }
}

/// Index of the running check, and its result (primary vCPU only).
static CURRENT: AtomicUsize = AtomicUsize::new(0);
struct ResultCell(UnsafeCell<Option<CheckResult>>);
// SAFETY: only the primary vCPU touches it, never from an exception handler.
unsafe impl Sync for ResultCell {}
static RESULT: ResultCell = ResultCell(UnsafeCell::new(None));

extern "C" fn run_current() {
    let (_, f) = checks::CHECKS[CURRENT.load(SeqCst)];
    let r = f();
    // SAFETY: see ResultCell.
    unsafe { *RESULT.0.get() = Some(r) };
}

#[no_mangle]
extern "C" fn primary_main(dtb: usize, base: usize, x1_x3: u64, relocs_unknown: u64) -> ! {
    let end = rt::image_end();
    // SAFETY: see BootCell; nothing else runs yet.
    unsafe {
        *BOOT.0.get() = BootInfo {
            dtb,
            base,
            size: end - base,
            x1_x3,
            relocs_unknown,
        }
    };
    println!(
        "# bothy selftest: EL{}, image at {base:#x} (+{:#x}), DTB at {dtb:#x}, MPIDR {:#x}, CNTFRQ {} Hz",
        arch::current_el(),
        end - base,
        arch::mpidr_aff(),
        arch::counter_freq()
    );

    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    for (i, (name, _)) in checks::CHECKS.iter().enumerate() {
        CURRENT.store(i, SeqCst);
        // SAFETY: see ResultCell.
        unsafe { *RESULT.0.get() = None };
        let outcome = rt::guard::run(run_current);
        arch::irqs_mask();
        arch::write_sysreg!("cntv_ctl_el0", 0);

        // SAFETY: see ResultCell.
        let result = unsafe { (*RESULT.0.get()).take() };
        match (outcome, result) {
            (Ok(()), Some(Ok(()))) => {
                passed += 1;
                println!("TEST {name} ok");
            }
            (Ok(()), Some(Err(why))) if why.skipped => {
                skipped += 1;
                println!("TEST {name} skipped ({why})");
            }
            (Ok(()), Some(Err(why))) => {
                failed += 1;
                println!("TEST {name} fail {why}");
            }
            (Ok(()), None) => {
                failed += 1;
                println!("TEST {name} fail returned without a result");
            }
            (Err(abort), _) => {
                failed += 1;
                println!("TEST {name} fail {abort}");
            }
        }
    }

    println!("TEST summary: {passed} passed, {failed} failed, {skipped} skipped");
    // vCPU 1 is off by now (cpu_on_again turned it off), and so are vCPUs 2 and 3
    // (cpu_on_race turned them off): CPU_OFF here leaves the VM with no vCPU that can
    // run, which a hypervisor must treat as the VM powering off.
    if dtb_contains(b"selftest.end=cpu_off") {
        println!("# ending with CPU_OFF on the last vCPU");
        let r = psci::hvc_raw(psci::PSCI_CPU_OFF, 0, 0, 0);
        println!("TEST cpu_off_last fail returned {:#x}", r[0]);
    } else {
        let r = psci::hvc_raw(psci::PSCI_SYSTEM_OFF, 0, 0, 0);
        println!("TEST system_off fail returned {:#x}", r[0]);
    }
    loop {
        arch::wfi();
    }
}

/// Whether the DTB's bytes contain `needle`: a crude look for a switch in the
/// bootargs (the selftest reads nothing else from the DTB but the PMU's interrupt).
fn dtb_contains(needle: &[u8]) -> bool {
    // SAFETY: x0 at entry named the DTB the hypervisor placed in guest RAM (MMU off: the
    // address is the IPA); nothing writes it.
    unsafe { rt::fdt::Fdt::at(boot_info().dtb) }.is_some_and(|fdt| fdt.contains(needle))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("# panic on vCPU {}: {info}", arch::cpu_id());
    rt::guard::panic_recover(arch::cpu_id().min(platform::NR_VCPUS - 1))
}
