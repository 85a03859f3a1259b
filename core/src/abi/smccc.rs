//! The guest-visible SMC Calling Convention ABI (Arm DEN0028, SMCCC v1.1): function-ID
//! layout, the Arm Architecture Service IDs Bothy knows, and the return codes.
//!
//! This file holds constants and the function-ID decoder only; what Bothy *does* with a
//! call is in `dispatch.rs`. The numbers come from the `smccc` crate where it has them,
//! so the IDs Bothy answers and the IDs `hyp` uses to call firmware cannot drift apart.
//!
//! Register convention (DEN0028 §2.6–2.7), as Bothy applies it to a trapped HVC/SMC:
//! - the function ID is `W0`: the upper 32 bits of `X0` are ignored;
//! - SMC32 calls (bit 30 clear) take their arguments from `W1..W7`: the upper halves of
//!   `X1..X7` are ignored;
//! - results go in `X0..X3`. Bothy's calls return one value, so it writes zero to
//!   `X1..X3` (result registers whose content is UNKNOWN to the caller: zero leaks no
//!   hypervisor state); `X4..X17` are preserved, as SMCCC v1.1 requires.

pub use smccc::arch::{
    SMCCC_ARCH_FEATURES, SMCCC_ARCH_SOC_ID, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2,
    SMCCC_ARCH_WORKAROUND_3, SMCCC_VERSION,
};

/// Function-ID bit 31: fast call (1) or yielding call (0). DEN0028 §2.5, table 2-1.
pub const FN_FAST_CALL: u32 = 1 << 31;
/// Function-ID bit 30: SMC64/HVC64 (1) or SMC32/HVC32 (0) calling convention.
pub const FN_SMC64: u32 = 1 << 30;
/// Function-ID bits [29:24]: the owning entity number.
pub const FN_OWNER_SHIFT: u32 = 24;
pub const FN_OWNER_MASK: u32 = 0x3f;
/// Function-ID bits [15:0]: the function number within the owner's range.
pub const FN_NUMBER_MASK: u32 = 0xffff;

/// Owning entity numbers, DEN0028 §6 table 6-2.
pub const OWNER_ARCH: u32 = 0;
pub const OWNER_CPU: u32 = 1;
pub const OWNER_SIP: u32 = 2;
pub const OWNER_OEM: u32 = 3;
pub const OWNER_STANDARD_SECURE: u32 = 4;
pub const OWNER_STANDARD_HYP: u32 = 5;
pub const OWNER_VENDOR_HYP: u32 = 6;

/// `SMCCC_VERSION` result for v1.1: major in bits [30:16], minor in [15:0]. DEN0028 §7.2.
pub const VERSION_1_1: u32 = (1 << 16) | 1;

/// Return codes of the Arm Architecture Service calls, DEN0028 §7.1 table 7-1.
pub const SUCCESS: i32 = smccc::arch::error::SUCCESS;
pub const NOT_SUPPORTED: i32 = smccc::arch::error::NOT_SUPPORTED;
pub const NOT_REQUIRED: i32 = smccc::arch::error::NOT_REQUIRED;
pub const INVALID_PARAMETER: i32 = smccc::arch::error::INVALID_PARAMETER;

/// A return code as it goes into `X0`: a negative `i32` sign-extended to 64 bits, which
/// is also correct for SMC32 callers (they read `W0`).
pub const fn ret_code(code: i32) -> u64 {
    code as i64 as u64
}

/// A decoded function identifier: `W0` of an HVC or trapped SMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FunctionId(pub u32);

impl FunctionId {
    /// Takes `W0`; the upper half of `X0` is not part of the function ID.
    pub const fn from_x0(x0: u64) -> Self {
        Self(x0 as u32)
    }

    pub const fn is_fast(self) -> bool {
        self.0 & FN_FAST_CALL != 0
    }

    /// True for the 64-bit convention, whose arguments are full `X` registers.
    pub const fn is_smc64(self) -> bool {
        self.0 & FN_SMC64 != 0
    }

    pub const fn owner(self) -> u32 {
        (self.0 >> FN_OWNER_SHIFT) & FN_OWNER_MASK
    }

    pub const fn number(self) -> u32 {
        self.0 & FN_NUMBER_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_id_fields() {
        let id = FunctionId::from_x0(0xffff_ffff_c400_0003);
        assert_eq!(id.0, 0xc400_0003);
        assert!(id.is_fast() && id.is_smc64());
        assert_eq!(id.owner(), OWNER_STANDARD_SECURE);
        assert_eq!(id.number(), 3);
        let v = FunctionId::from_x0(u64::from(SMCCC_VERSION));
        assert!(v.is_fast() && !v.is_smc64());
        assert_eq!(v.owner(), OWNER_ARCH);
        assert_eq!(FunctionId(0xc600_0000).owner(), OWNER_VENDOR_HYP);
    }

    #[test]
    fn return_codes_sign_extend() {
        assert_eq!(ret_code(NOT_SUPPORTED), u64::MAX);
        assert_eq!(ret_code(INVALID_PARAMETER), (-3i64) as u64);
        assert_eq!(ret_code(SUCCESS), 0);
        assert_eq!(VERSION_1_1, 0x1_0001);
    }
}
