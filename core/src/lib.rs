//! # bothy-core
//!
//! Everything in Bothy that plain Rust can decide lives here: device-tree parsing and
//! generation, stage-2 table construction, the virtual GIC, the PL011 model, PSCI/SMCCC
//! decoding and the exit classification. The `hyp` binary is a thin shell that owns the
//! instructions and system registers; it hands this crate exit descriptions and memory
//! accessors (traits) and carries out what comes back.
//!
//! The crate is `no_std` + `alloc` so the same code runs at EL2 and in host unit tests.
//! Nothing here touches a system register or dereferences a raw pointer.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod arch;
pub mod dev;
pub mod exit;
pub mod fdt;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod image;
pub mod layout;
pub mod lifecycle;
pub mod linux;
pub mod mem;
pub mod prompt;
pub mod region;
pub mod sched;
pub mod vgic;
pub mod vm;

pub use fdt::manifest;
pub use region::Region;
