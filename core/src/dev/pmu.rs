//! The PMU's overflow interrupt, delivered to the vCPU whose PMU overflowed.
//!
//! Guests use the PMU directly once they hold it ([`crate::exit::pmu`]: a vCPU's first
//! access claims it, and its PMU registers move with it from then on), so the CPU that
//! holds a vCPU's registers holds its PMU, and an overflow there is that vCPU's. A vCPU
//! that does not hold the PMU runs on one that is stopped (PMCR_EL0.E and the interrupt
//! enables clear), whose line is low: it has no overflow. The PMU signals overflows on a
//! PPI (INTID 23 on QEMU `virt`; [`Pmu`], from the host's device tree, which [`offered`]
//! turns into the guests' `arm,armv8-pmuv3` node) whose level is high while PMCR_EL0.E
//! is set and some counter has both its overflow flag (PMOVSSET_EL0) and its interrupt
//! enable (PMINTENSET_EL1) set: [`overflow_asserted`], the Arm ARM's
//! `CheckForPMUOverflow` with every counter the guest's (MDCR_EL2.HPMN = PMCR_EL0.N).
//!
//! ## Hardware-linked, as the virtual timer
//! There were two ways to give the guest that level. KVM computes it in software, from
//! PMOVSSET & PMINTENSET & PMCNTENSET under PMCR.E, but KVM traps every PMU register
//! and emulates the counters through perf, so it sees every change. Bothy traps none
//! while a vCPU holds the PMU: the overflow happens in hardware without an exit, and
//! the guest clears it (PMOVSCLR_EL0) without one, so a level kept in software would
//! need the physical PPI masked after each firing and an EOI maintenance exit to learn
//! when to look again: a hardware link done by hand, at an exit more per overflow. So
//! the physical PPI is taken at EL2 and injected as the same virtual PPI through a
//! hardware-linked list register ([`fired`]), exactly as the virtual timer's: the
//! guest's EOI deactivates the physical interrupt, and the PMU asserts it again at once
//! if the overflow is still there.
//!
//! The rest is the timer's machinery, which is generic over the hardware-linked INTID:
//! - **A level that went away is not delivered.** An overflow that fired while it could
//!   not go into a list register (its PPI disabled, withdrawn from its LR, behind its own
//!   active LR) waits in the vGIC, which asks `Arch::hw_line_high` before it offers it:
//!   `hyp` answers with [`overflow_asserted`] on the live registers and, if the level has
//!   dropped, deactivates the physical interrupt instead (`vgic/lr.rs`).
//! - **One vCPU's overflow never reaches another.** The physical interrupt goes to the
//!   vCPU whose registers the CPU holds; when it holds none ([`Fired::Nobody`]: it saved
//!   its vCPU and idles), `hyp` clears the PMU's interrupt enables (the saved context has
//!   them) and deactivates it. A vCPU leaving a CPU takes its list registers with it: a
//!   hardware-linked one has its physical interrupt deactivated there and set active
//!   again where the vCPU is loaded ([`crate::vgic::V3CpuIf::hw_ppis_held`]), so the
//!   guest's EOI lands on the CPU whose PMU it is and the next vCPU's overflow is not
//!   held up by the old one's active state; loading a vCPU's PMU registers brings its
//!   level along.
//!
//! Called by `hyp`: [`offered`] once at boot, [`fired`] when the physical PPI is taken,
//! [`overflow_asserted`] from its `Arch::hw_line_high`.

use crate::fdt::platform::Pmu;
use crate::vgic::{Local, PhysCpu, VGic};

/// PMCR_EL0.E: the counters are enabled (and so may raise the overflow interrupt).
pub const PMCR_E: u64 = 1 << 0;
/// ID_AA64DFR0_EL1.PMUVer (bits [11:8]): 0 no PMU, 0xF an IMPLEMENTATION DEFINED one,
/// anything else a PMUv3 version.
const DFR0_PMUVER_SHIFT: u32 = 8;
const PMUVER_NONE: u64 = 0;
const PMUVER_IMP_DEF: u64 = 0xf;

/// The PMU guests are given: the host's, if its device tree describes one Bothy can
/// deliver (see [`Pmu`]) and the CPU has PMUv3 (`id_aa64dfr0`, the boot CPU's
/// ID_AA64DFR0_EL1), whose registers Bothy switches with each vCPU. The guests' device
/// trees describe it and `hyp` enables its PPI only then.
pub fn offered(host: Option<Pmu>, id_aa64dfr0: u64) -> Option<Pmu> {
    let pmuver = (id_aa64dfr0 >> DFR0_PMUVER_SHIFT) & 0xf;
    host.filter(|_| pmuver != PMUVER_NONE && pmuver != PMUVER_IMP_DEF)
}

/// Whether the PMU asserts its overflow interrupt with these register values: PMCR_EL0
/// `pmcr` has E set and a counter (the cycle counter is bit 31) has its PMOVSSET_EL0
/// (`ovs`) and PMINTENSET_EL1 (`inten`) bits both set. PMCNTENSET plays no part: a flag
/// left set by a counter since disabled still asserts the line. (KVM's software level
/// also asks PMCNTENSET; Bothy links the hardware's line, so it follows the hardware.)
pub fn overflow_asserted(pmcr: u64, ovs: u64, inten: u64) -> bool {
    pmcr & PMCR_E != 0 && ovs & inten != 0
}

/// What became of a physical PMU interrupt taken at EL2 ([`fired`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Fired {
    /// Injected into the vCPU this CPU holds (or latched for it, if it cannot take it
    /// now): the physical interrupt stays active for the guest's EOI. `hyp` kicks
    /// [`Local::kicks`] as after any injection.
    Delivered(Local),
    /// No vCPU's registers are on this CPU: the PMU's interrupt enables are to be cleared
    /// (PMINTENCLR_EL1, all ones) and the physical interrupt deactivated.
    Nobody,
}

/// The physical PMU interrupt `intid` was taken on a CPU that holds the registers of
/// `holder` (a VM's vGIC and the vCPU's index), if any: its PMU is that vCPU's, so is
/// the overflow. It goes into that vCPU's list registers (`pcpu`, the CPU's), linked to
/// the same physical INTID; an overflow is high when it has just fired, so its line is
/// not asked.
pub fn fired(holder: Option<(&VGic, usize)>, intid: u32, pcpu: &mut impl PhysCpu) -> Fired {
    match holder {
        Some((vgic, vcpu)) => Fired::Delivered(vgic.inject_hw_local(vcpu, intid, intid, pcpu)),
        None => Fired::Nobody,
    }
}

#[cfg(test)]
mod tests;
