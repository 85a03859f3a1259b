//! Thin wrappers over system registers, barriers and MMIO.
//!
//! MMIO goes through single `ldr`/`str` instructions with a plain base register (never
//! `ldp`, writeback or pre/post-index) so a trapping hypervisor always gets a data abort
//! with ESR_EL2.ISV = 1 and can emulate it.

use core::arch::asm;

/// `read_sysreg!("name")`: MRS of an EL1/EL0 system register.
#[macro_export]
macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading an EL1/EL0-accessible system register has no side effects we rely on.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

/// `write_sysreg!("name", value)`: MSR of an EL1/EL0 system register.
#[macro_export]
macro_rules! write_sysreg {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: callers only write registers the guest owns (timer, GIC CPU interface).
        unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nostack)) };
    }};
}

pub use crate::read_sysreg;
pub use crate::write_sysreg;

pub fn isb() {
    // SAFETY: barrier only.
    unsafe { asm!("isb", options(nostack)) };
}

pub fn dsb_sy() {
    // SAFETY: barrier only.
    unsafe { asm!("dsb sy", options(nostack)) };
}

pub fn sev() {
    // SAFETY: hint only.
    unsafe { asm!("sev", options(nomem, nostack)) };
}

/// Spin-wait hint. Unlike `core::hint::spin_loop` (an ISB on aarch64) QEMU's single-threaded
/// TCG treats YIELD as "run another vCPU", so polling loops make progress under -icount.
pub fn cpu_relax() {
    // SAFETY: hint only.
    unsafe { asm!("yield", options(nomem, nostack)) };
}

pub fn wfi() {
    // SAFETY: waits for an interrupt; state is unchanged.
    unsafe { asm!("wfi", options(nostack)) };
}

pub fn irqs_unmask() {
    // SAFETY: the vector table is installed (entry.S) before any Rust code runs.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

pub fn irqs_mask() {
    // SAFETY: masking is always safe.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}

/// MPIDR_EL1 Aff0: the vCPU index on the QEMU `virt` / Bothy layout.
pub fn cpu_id() -> usize {
    (read_sysreg!("mpidr_el1") & 0xff) as usize
}

/// MPIDR_EL1 affinity fields Aff3..Aff0 (bits 39:32 and 23:0).
pub fn mpidr_aff() -> u64 {
    read_sysreg!("mpidr_el1") & 0xff_00ff_ffff
}

pub fn current_el() -> u64 {
    (read_sysreg!("CurrentEL") >> 2) & 3
}

/// Virtual counter, ordered after earlier instructions.
pub fn now() -> u64 {
    isb();
    read_sysreg!("cntvct_el0")
}

pub fn counter_freq() -> u64 {
    read_sysreg!("cntfrq_el0")
}

/// Counter ticks in `ms` milliseconds. With the `cntfrq-floor` feature CNTFRQ counts as at
/// least 1 MHz, so a zero CNTFRQ (broken firmware) does not make every timeout expire at
/// once; without it a zero CNTFRQ stays visible (the selftest checks for it).
pub fn ms_to_ticks(ms: u64) -> u64 {
    let freq = if cfg!(feature = "cntfrq-floor") {
        counter_freq().max(1_000_000)
    } else {
        counter_freq()
    };
    freq * ms / 1000
}

/// Poll `cond` until it holds or `timeout_ms` of virtual-counter time pass.
pub fn wait_until(timeout_ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = now() + ms_to_ticks(timeout_ms);
    loop {
        if cond() {
            return true;
        }
        if now() > end {
            return cond();
        }
        cpu_relax();
    }
}

pub fn mmio_read32(addr: usize) -> u32 {
    let v: u32;
    // SAFETY: addr is a device register of the platform layout (or a deliberately bad IPA
    // inside a fault-expecting check).
    unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

pub fn mmio_write32(addr: usize, v: u32) {
    // SAFETY: as for mmio_read32.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

pub fn mmio_read64(addr: usize) -> u64 {
    let v: u64;
    // SAFETY: as for mmio_read32; 64-bit GIC registers allow 64-bit access.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}
