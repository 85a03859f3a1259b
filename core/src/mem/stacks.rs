//! Bothy's per-CPU EL2 stacks: where each lies, the unmapped guard page below each, and
//! whether a faulting address is in a guard page (a stack overflow).
//!
//! `hyp` reserves `cpus` slots of `slot_size` bytes from `base` (its linker script's
//! `.stacks`); a CPU's stack grows down from the top of its slot and the lowest
//! [`GUARD_SIZE`] bytes are left out of the EL2 identity map ([`super::build_el2_idmap`]'s
//! `unmapped`). An overflow then takes a data abort at EL2 instead of silently writing
//! the top of the next CPU's stack down — where that CPU keeps its guest's registers.

use crate::Region;

use super::PAGE_SIZE;

/// One page: unmapped, so the first access below a stack faults.
pub const GUARD_SIZE: u64 = PAGE_SIZE;

/// The per-CPU stack slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackLayout {
    /// Start of slot 0 (page-aligned).
    pub base: u64,
    /// Bytes per CPU, guard page included (a multiple of [`PAGE_SIZE`], more than one page).
    pub slot_size: u64,
    pub cpus: usize,
}

impl StackLayout {
    /// The guard page of `cpu`'s stack: the bottom of its slot.
    pub fn guard(&self, cpu: usize) -> Option<Region> {
        if cpu >= self.cpus {
            return None;
        }
        let base = (cpu as u64)
            .checked_mul(self.slot_size)
            .and_then(|o| o.checked_add(self.base))?;
        Some(Region::new(base, GUARD_SIZE))
    }

    /// Every CPU's guard page.
    pub fn guards(&self) -> impl Iterator<Item = Region> + '_ {
        (0..self.cpus).filter_map(|cpu| self.guard(cpu))
    }

    /// The usable stack of `cpu` (its slot above the guard).
    pub fn stack(&self, cpu: usize) -> Option<Region> {
        let guard = self.guard(cpu)?;
        Some(Region::new(
            guard.end(),
            self.slot_size.checked_sub(GUARD_SIZE)?,
        ))
    }

    /// The CPU whose guard page holds `addr`: a fault there is that CPU's stack
    /// overflowing.
    pub fn overflowed(&self, addr: u64) -> Option<usize> {
        let offset = addr.checked_sub(self.base)?;
        let cpu = usize::try_from(offset / self.slot_size.max(1)).ok()?;
        let guard = self.guard(cpu)?;
        guard.contains(addr).then_some(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: StackLayout = StackLayout {
        base: 0x4030_0000,
        slot_size: 0x1_0000,
        cpus: 8,
    };

    #[test]
    fn guards_sit_below_each_stack() {
        assert_eq!(L.guard(0), Some(Region::new(0x4030_0000, 0x1000)));
        assert_eq!(L.stack(0), Some(Region::new(0x4030_1000, 0xf000)));
        assert_eq!(L.guard(7), Some(Region::new(0x4037_0000, 0x1000)));
        assert_eq!(L.guard(8), None);
        assert_eq!(L.guards().count(), 8);
        // Each stack ends where the next CPU's guard begins.
        for cpu in 0..7 {
            assert_eq!(L.stack(cpu).unwrap().end(), L.guard(cpu + 1).unwrap().base);
        }
    }

    #[test]
    fn only_guard_pages_are_overflows() {
        assert_eq!(L.overflowed(0x4030_0000), Some(0));
        assert_eq!(L.overflowed(0x4031_0ff8), Some(1));
        assert_eq!(L.overflowed(0x4031_1000), None, "bottom of CPU 1's stack");
        assert_eq!(L.overflowed(0x402f_fff8), None, "below the slots");
        assert_eq!(L.overflowed(0x4038_0000), None, "above the slots");
        assert_eq!(L.overflowed(0), None);
        assert_eq!(L.overflowed(u64::MAX), None);
        let none = StackLayout { slot_size: 0, ..L };
        assert_eq!(none.overflowed(0x4030_0000), Some(0));
    }
}
