//! SMCCC / PSCI over HVC, as a guest makes the calls: function IDs and return codes
//! (Arm DEN0028 SMCCC, DEN0022 PSCI), a raw call, and a guarded call for the primary
//! vCPU that survives an HVC that traps as UNDEFINED (bare QEMU without EL2 does this
//! for every function ID it does not implement).
//!
//! Why it exists: starting and stopping vCPUs (CPU_ON, CPU_OFF, AFFINITY_INFO) and
//! powering the VM off at the end of a run (SYSTEM_OFF) is how every test guest talks to
//! the hypervisor, and both the selftest and the attacker also check the answers
//! themselves. The IDs and codes are the ABI, so they are written down once.
//!
//! What the guests rely on:
//! * [`hvc_raw`] is one `hvc #0` with x0..x3 in and out; x4..x17 are treated as clobbered
//!   (SMCCC 1.0 lets the callee use them), nothing else is.
//! * [`hvc`] gives X0 as `i64` unchanged, [`call`] the result as the calling convention
//!   says (W0 sign-extended for an SMC32 ID): the attacker compares raw X0 with the
//!   codes below, the selftest judges results per convention.
//! * [`call`] and [`call_raw`] run under `rt::guard::guarded`, so they belong to the
//!   primary vCPU inside a check.

use crate::exceptions::Fault;
use crate::guard::guarded;

pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
pub const PSCI_CPU_ON_64: u32 = 0xC400_0003;
pub const PSCI_AFFINITY_INFO_64: u32 = 0xC400_0004;
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
pub const PSCI_FEATURES: u32 = 0x8400_000A;
/// Inside the PSCI range but not assigned.
pub const PSCI_UNKNOWN: u32 = 0x8400_00FF;

pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
pub const INVALID_ADDRESS: i64 = -9;

/// AFFINITY_INFO results.
pub const AFF_ON: i64 = 0;
pub const AFF_OFF: i64 = 1;

/// Function ID bit 30: SMC64/HVC64 calling convention (64-bit results).
const SMC64: u32 = 1 << 30;

/// `hvc #0` with x0..x3; returns x0..x3. x4..x17 are treated as clobbered (SMCCC 1.0).
/// Any vCPU.
pub fn hvc_raw(id: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    let (r0, r1, r2, r3);
    // SAFETY: a hypercall; the hypervisor (or QEMU's built-in PSCI) owns its effects.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") id as u64 => r0,
            inout("x1") a1 => r1,
            inout("x2") a2 => r2,
            inout("x3") a3 => r3,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        )
    };
    [r0, r1, r2, r3]
}

/// `hvc #0` with x0..x3; X0 as `i64` (not narrowed for SMC32 IDs). Any vCPU.
pub fn hvc(id: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    hvc_raw(id, a1, a2, a3)[0] as i64
}

/// SYSTEM_OFF; returns (X0) only if the hypervisor refused it.
pub fn system_off() -> i64 {
    hvc(PSCI_SYSTEM_OFF, 0, 0, 0)
}

/// x0 as a signed result: sign-extended W0 for SMC32 IDs, X0 for SMC64 IDs.
pub fn signed_result(id: u32, x0: u64) -> i64 {
    if id & SMC64 != 0 {
        x0 as i64
    } else {
        x0 as u32 as i32 as i64
    }
}

/// Why a guarded call did not return normally.
pub enum CallError {
    /// The HVC raised a synchronous exception at EL1 (e.g. UNDEFINED).
    Fault(Fault),
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            CallError::Fault(fault) => write!(f, "HVC raised an exception: {fault}"),
        }
    }
}

/// Primary vCPU only: HVC under the fault guard; the signed result.
pub fn call(id: u32, a1: u64, a2: u64, a3: u64) -> Result<i64, CallError> {
    call_raw(id, a1, a2, a3).map(|r| signed_result(id, r[0]))
}

/// Primary vCPU only: HVC under the fault guard; x0..x3.
pub fn call_raw(id: u32, a1: u64, a2: u64, a3: u64) -> Result<[u64; 4], CallError> {
    match guarded(|| hvc_raw(id, a1, a2, a3)) {
        (r, None) => Ok(r),
        (_, Some(fault)) => Err(CallError::Fault(fault)),
    }
}

/// The PSCI name of a return code (`?` for none).
pub fn name(code: i64) -> &'static str {
    match code {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        -4 => "ALREADY_ON",
        -5 => "ON_PENDING",
        -6 => "INTERNAL_FAILURE",
        -7 => "NOT_PRESENT",
        -8 => "DISABLED",
        -9 => "INVALID_ADDRESS",
        _ => "?",
    }
}
