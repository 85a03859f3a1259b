//! Emulated devices: plain state machines driven by the MMIO exits `hyp` decodes
//! (`read(offset, size)` / `write(offset, size, value)`), unit-tested without a VM. A
//! device reports the level of its interrupt line; `hyp` forwards it to the vGIC.
//! Two interrupt sources are not emulated but the guest's own hardware, handed to it
//! as Bothy sees it fire: the EL1 physical timer's model (`ptimer`) and the PMU's
//! overflow interrupt (`pmu`).

pub mod bus;
pub mod console;
pub mod mux;
pub mod outbuf;
pub mod pl011;
pub mod pmu;
pub mod ptimer;

pub use bus::{BusError, Device, MmioBus};
pub use pl011::{Pl011, Pl011Effect};
