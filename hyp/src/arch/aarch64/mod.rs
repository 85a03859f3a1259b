//! AArch64 EL2: entry, vectors, system registers, MMU, GIC, UART, firmware calls.
pub mod context;
pub mod entry;
pub mod firmware;
pub mod gic;
pub mod heap;
pub mod lr;
pub mod mmio;
pub mod mmu;
pub mod percpu;
pub mod sysreg;
pub mod traps;
pub mod uart;
pub mod vectors;
