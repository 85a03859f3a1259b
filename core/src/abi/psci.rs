//! The guest-visible PSCI ABI (Arm DEN0022, PSCI v1.1): function IDs, return codes and
//! the values of the calls' results.
//!
//! Constants only; the behaviour is in `dispatch.rs` and the per-vCPU power state
//! machine in `power.rs`. IDs and error codes come from the `smccc` crate, the same
//! definitions `hyp` uses when it calls the firmware's PSCI.
//!
//! Where a function has SMC32 and SMC64 forms (`_32`/`_64`), both are answered; the
//! SMC32 form's arguments are truncated to 32 bits (DEN0022 §5.2.1).

pub use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_DEFAULT_SUSPEND_32,
    PSCI_CPU_DEFAULT_SUSPEND_64, PSCI_CPU_FREEZE, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MEM_PROTECT,
    PSCI_MEM_PROTECT_CHECK_RANGE_32, PSCI_MEM_PROTECT_CHECK_RANGE_64, PSCI_MIGRATE_32,
    PSCI_MIGRATE_64, PSCI_MIGRATE_INFO_TYPE, PSCI_MIGRATE_INFO_UP_CPU_32,
    PSCI_MIGRATE_INFO_UP_CPU_64, PSCI_NODE_HW_STATE_32, PSCI_NODE_HW_STATE_64,
    PSCI_SET_SUSPEND_MODE, PSCI_STAT_COUNT_32, PSCI_STAT_COUNT_64, PSCI_STAT_RESIDENCY_32,
    PSCI_STAT_RESIDENCY_64, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_SYSTEM_RESET2_32,
    PSCI_SYSTEM_RESET2_64, PSCI_SYSTEM_SUSPEND_32, PSCI_SYSTEM_SUSPEND_64, PSCI_VERSION,
};

/// Return codes, DEN0022 §5.2.2 table 5-2 (negative `i32`, sign-extended into `X0`).
pub use smccc::psci::error::{
    ALREADY_ON, DENIED, DISABLED, INTERNAL_FAILURE, INVALID_ADDRESS, INVALID_PARAMETERS,
    NOT_PRESENT, NOT_SUPPORTED, ON_PENDING, SUCCESS,
};

/// `PSCI_VERSION` result for v1.1: major in bits [30:16], minor in [15:0]. DEN0022 §5.1.1.
pub const VERSION_1_1: u32 = (1 << 16) | 1;

/// `AFFINITY_INFO` results, DEN0022 §5.1.5 table 5-7.
pub const AFFINITY_ON: u64 = 0;
pub const AFFINITY_OFF: u64 = 1;
pub const AFFINITY_ON_PENDING: u64 = 2;

/// `MIGRATE_INFO_TYPE` result 2: "Trusted OS is either not present or does not require
/// migration" (DEN0022 §5.1.7). Guests then never call `MIGRATE`.
pub const MIGRATE_INFO_TYPE_NOT_PRESENT: u64 = 2;

/// `PSCI_FEATURES(CPU_SUSPEND)` flags (DEN0022 §5.1.14 table 5-20): bit 1 = extended
/// StateID format, bit 0 = OS-initiated mode. Zero: original `power_state` format,
/// platform-coordinated only.
pub const CPU_SUSPEND_FEATURES_ORIGINAL_FORMAT: u32 = 0;

/// The affinity fields a `target_cpu`/`target_affinity` argument may carry: Aff3 in
/// bits [39:32] and Aff2..Aff0 in [23:0]; everything else must be zero (DEN0022 §5.1.4).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;
