//! The virtual CPU interface's per-vCPU state, and the hooks that move it in and out
//! of a physical CPU.
//!
//! The distributor/redistributor model (the rest of this module) is shared by every
//! host GIC; what differs between hosts is the virtual CPU interface: GICv3's ICH_*_EL2
//! system registers today, a GICv2 host's GICH/GICV MMIO frames, or a GICv5 host in
//! GICv3-compat mode, which must restore VMCR and the APRs and set `ICH_VCTLR_EL2.V3`
//! in one step on load. Each is a [`CpuInterface`]: the scheduler's context switch calls
//! [`CpuInterface::put`] when a vCPU leaves a CPU and [`CpuInterface::load`] when one
//! arrives, and never on an ordinary exit.
//!
//! While a vCPU is not loaded its list registers live here verbatim, so the model's
//! record of "interrupt X is in LR n of vCPU v" stays true: other CPUs may still make
//! interrupts pending for it (that only sets its work flag), and the next flush on the
//! CPU that loads it reconciles the LRs as usual.

use super::MAX_LRS;

/// What a GICv3 virtual CPU interface holds for one vCPU (GICv3 spec §12.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V3CpuIf {
    /// ICH_LR<n>_EL2, the implemented ones first.
    pub lrs: [u64; MAX_LRS],
    pub vmcr: u64,
    /// ICH_AP0R<n>_EL2 / ICH_AP1R<n>_EL2: active priorities (how many are implemented
    /// depends on ICH_VTR_EL2.PREbits).
    pub ap0r: [u64; 4],
    pub ap1r: [u64; 4],
    pub hcr: u64,
}

impl V3CpuIf {
    /// Which of the hardware-linked PPIs in `linked` (bit n = INTID n: the virtual
    /// timer's, the PMU's) one of the first `count` saved list registers (the implemented
    /// ones) holds, in any state. Each such physical interrupt must be active on whichever
    /// CPU loads the vCPU, so the guest's deactivation reaches it and its source cannot
    /// fire again meanwhile; on the CPU the vCPU leaves, it must not stay active.
    pub fn hw_ppis_held(&self, linked: u32, count: usize) -> u32 {
        use super::lr::{lr_state, LR_HW, LR_PINTID_MASK, LR_PINTID_SHIFT};
        let mut held = 0;
        for &lr in &self.lrs[..count.min(MAX_LRS)] {
            let pintid = (lr >> LR_PINTID_SHIFT) & LR_PINTID_MASK;
            if lr & LR_HW != 0 && lr_state(lr) != 0 && pintid < 32 {
                held |= 1 << pintid;
            }
        }
        held & linked
    }
}

/// A host's virtual CPU interface, switched between vCPUs.
pub trait CpuInterface {
    type Saved: Default + Copy;
    /// Save the interface's state for the leaving vCPU and leave it quiet (no list
    /// register valid, no maintenance interrupt pending).
    fn put(&mut self, saved: &mut Self::Saved);
    /// Load an arriving vCPU's state.
    fn load(&mut self, saved: &Self::Saved);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vgic::lr::{LR_HW, LR_PINTID_SHIFT, LR_STATE_SHIFT};

    #[test]
    fn hw_ppis_held_only_for_live_hardware_linked_lrs() {
        const LINKED: u32 = 1 << 27 | 1 << 23;
        let mut s = V3CpuIf::default();
        let hw = |pintid: u64| LR_HW | (pintid << LR_PINTID_SHIFT) | pintid;
        s.lrs[3] = hw(27); // state 0: invalid
        assert_eq!(s.hw_ppis_held(LINKED, 4), 0);
        s.lrs[3] = hw(27) | (1 << LR_STATE_SHIFT);
        assert_eq!(s.hw_ppis_held(LINKED, 4), 1 << 27);
        assert_eq!(s.hw_ppis_held(LINKED, 3), 0, "only implemented LRs count");
        assert_eq!(
            s.hw_ppis_held(1 << 23, 4),
            0,
            "only the linked PPIs asked about"
        );
        // The PMU's overflow (23) active in another LR: both are held.
        s.lrs[0] = hw(23) | (2 << LR_STATE_SHIFT);
        assert_eq!(s.hw_ppis_held(LINKED, 4), LINKED);
        s.lrs[3] = (27u64 << LR_PINTID_SHIFT) | 27 | (2 << LR_STATE_SHIFT);
        assert_eq!(s.hw_ppis_held(LINKED, 4), 1 << 23, "27 not hardware-linked");
        // An SPI linked to a physical SPI is none of these.
        s.lrs[1] = hw(40) | (1 << LR_STATE_SHIFT);
        assert_eq!(s.hw_ppis_held(u32::MAX, 4), 1 << 23);
    }
}
