//! The vGIC's view of this CPU's list registers (bothy_core::vgic::ListRegs).

use super::sysreg::*;
use bothy_core::vgic::ListRegs;

/// The live ICH_* registers of the CPU this runs on.
pub struct HwListRegs {
    count: usize,
}

impl HwListRegs {
    pub fn new() -> Self {
        // ICH_VTR_EL2.ListRegs holds the number of list registers minus one.
        Self {
            count: (read_ich_vtr_el2() & 0x1f) as usize + 1,
        }
    }
}

impl ListRegs for HwListRegs {
    fn count(&self) -> usize {
        self.count
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
