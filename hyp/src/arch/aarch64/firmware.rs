//! Calls out to the firmware's PSCI (SMC or HVC conduit, from the device tree).
//!
//! Used to start secondary physical CPUs and to power the machine off when the
//! last VM has stopped.

/// PSCI function IDs Bothy calls (DEN0022).
const PSCI_CPU_ON_64: u64 = 0xC400_0003;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    Smc,
    Hvc,
}

fn call(conduit: Conduit, fid: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut x0 = fid;
    match conduit {
        // SAFETY: an SMCCC call: the firmware preserves x4+ and the stack; x0-x3 may change.
        Conduit::Smc => unsafe {
            core::arch::asm!("smc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _, options(nostack))
        },
        // SAFETY: as above, through the HVC conduit (only used when entered at EL1).
        Conduit::Hvc => unsafe {
            core::arch::asm!("hvc #0", inout("x0") x0, inout("x1") a1 => _, inout("x2") a2 => _, inout("x3") a3 => _, options(nostack))
        },
    }
    x0 as i64
}

/// Start physical CPU `mpidr` at Bothy's `secondary_entry` with x0 = `cpu` (its stack
/// slot): no caller chooses where a CPU starts.
pub fn cpu_on(conduit: Conduit, mpidr: u64, cpu: usize) -> i64 {
    let entry = super::entry::secondary_entry_address();
    call(conduit, PSCI_CPU_ON_64, mpidr, entry, cpu as u64)
}

/// Power the machine off. Returns only if the firmware refused.
pub fn system_off(conduit: Conduit) {
    call(conduit, PSCI_SYSTEM_OFF, 0, 0, 0);
}
