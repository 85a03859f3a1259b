//! Guest firmware ABIs Bothy implements itself: SMCCC v1.1 (DEN0028) and PSCI v1.1
//! (DEN0022), called over HVC (or SMC, trapped to EL2).
//!
//! - `smccc.rs`, `psci.rs`: the guest-visible numbers (function IDs, return codes,
//!   result values) and nothing else — one place per interface.
//! - `power.rs`: [`VcpuPower`], the per-VM PSCI power state machine shared by all of a
//!   VM's vCPUs.
//! - `dispatch.rs`: [`CALLS`], the one declaration of every call answered, and
//!   [`dispatch`], which turns a caller's `X0..X7` into an [`Outcome`] for `hyp` to
//!   carry out (write registers, start or stop a vCPU, suspend, stop or reset the VM).
//!
//! Called from `hyp`'s HVC/SMC exit path with the caller's registers; `hyp` keeps the
//! `VcpuPower` of each VM and, for a `StartVcpu`, has the target scheduled; the CPU
//! that first loads it calls [`VcpuPower::take_pending_start`] for its entry point.

mod dispatch;
mod power;
pub mod psci;
pub mod smccc;

pub use dispatch::{
    dispatch, lookup, Call, CallContext, Interface, Outcome, CALLS, RETURN_SUCCESS,
};
pub use power::{CpuOnError, PowerState, VcpuPower};
