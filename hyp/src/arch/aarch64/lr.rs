//! The vGIC's view of this CPU's list registers (bothy_core::vgic::ListRegs).

use super::sysreg::*;
use bothy_core::vgic::lr::lr_mask;
use bothy_core::vgic::{ListRegs, MAX_LRS};

/// The live ICH_* registers of the CPU this runs on, with the LR count probed once
/// (each CPU keeps its own in its `CpuContext`: the exit path then reads no ICH_VTR_EL2).
#[derive(Clone, Copy, Debug)]
pub struct HwListRegs {
    count: u8,
    mask: u16,
}

impl HwListRegs {
    /// Read this CPU's ICH_VTR_EL2.
    pub fn probe() -> Self {
        // ICH_VTR_EL2.ListRegs holds the number of list registers minus one.
        let count = (read_ich_vtr_el2() & 0x1f) as usize + 1;
        Self {
            count: count as u8,
            mask: lr_mask(count.min(MAX_LRS)),
        }
    }
}

impl ListRegs for HwListRegs {
    #[inline(always)]
    fn count(&self) -> usize {
        usize::from(self.count)
    }
    #[inline(always)]
    fn mask(&self) -> u16 {
        self.mask
    }
    #[inline(always)]
    fn read(&self, i: usize) -> u64 {
        read_ich_lr(i)
    }
    #[inline(always)]
    fn write(&mut self, i: usize, v: u64) {
        write_ich_lr(i, v)
    }
    fn elrsr(&self) -> u16 {
        read_ich_elrsr_el2() as u16
    }
    fn eisr(&self) -> u16 {
        read_ich_eisr_el2() as u16
    }
    fn set_hcr(&mut self, v: u64) {
        write_ich_hcr_el2(v)
    }
}
