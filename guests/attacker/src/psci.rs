//! SMCCC / PSCI over HVC (Arm DEN0028, DEN0022): function IDs, return codes, raw calls.

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
pub const PSCI_CPU_ON_64: u32 = 0xC400_0003;
pub const PSCI_AFFINITY_INFO_64: u32 = 0xC400_0004;
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;

pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
pub const NOT_SUPPORTED: i64 = -1;

/// `hvc #0` with x0..x3; returns x0 (x1..x17 treated as clobbered, SMCCC 1.0).
pub fn hvc(id: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let r0: u64;
    // SAFETY: a hypercall; the hypervisor owns its effects.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") id as u64 => r0,
            inout("x1") a1 => _,
            inout("x2") a2 => _,
            inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        )
    };
    r0 as i64
}

/// SYSTEM_OFF; returns only if the hypervisor refused it.
pub fn system_off() -> i64 {
    hvc(PSCI_SYSTEM_OFF, 0, 0, 0)
}
