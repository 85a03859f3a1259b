//! The guest's EL1 physical timer (CNTP_CTL/CVAL/TVAL_EL0), emulated.
//!
//! Guests use the virtual timer directly (its interrupt is hardware-linked, see the
//! vGIC), but bare-metal code and RTOSes often program the *physical* timer. The real one
//! belongs to the machine (CNTHCTL_EL2.EL1PCEN clear traps every access), so each vCPU
//! gets a software one here: its registers live in this struct, its output is a
//! level-sensitive PPI (the physical-timer PPI of the guest's device tree, INTID 30 on
//! QEMU's board) driven through the vGIC, and Bothy re-evaluates that level whenever time
//! may have made it change: on every access, when the vCPU is about to run, and when the
//! EL2 timer that `hyp` arms for [`PhysTimer::deadline`] fires. A blocked vCPU's wake-up
//! deadline includes it, so the timer fires on time while the vCPU is not running.
//!
//! Time is the physical counter, which guests read untrapped (CNTPCT_EL0): the comparison
//! is the architecture's, `CNTPCT >= CVAL`, with no offset. TVAL is the signed 32-bit
//! view `CVAL - CNTPCT` (Arm ARM D12.8: a write sets `CVAL = CNTPCT + SignExtend(TVAL)`).

/// CNTP_CTL_EL0 bits.
pub const CTL_ENABLE: u64 = 1 << 0;
pub const CTL_IMASK: u64 = 1 << 1;
pub const CTL_ISTATUS: u64 = 1 << 2;

/// Which register a trapped access names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReg {
    Ctl,
    Cval,
    Tval,
}

/// One vCPU's physical timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysTimer {
    /// ENABLE and IMASK as the guest wrote them (ISTATUS is computed).
    ctl: u64,
    cval: u64,
}

impl PhysTimer {
    /// Whether the timer condition holds at `now` (ISTATUS), whatever IMASK says.
    pub fn condition(&self, now: u64) -> bool {
        self.ctl & CTL_ENABLE != 0 && now >= self.cval
    }

    /// Whether the guest has enabled it (CTL.ENABLE): a disabled timer's line is low and
    /// stays low until the guest writes CTL.
    pub fn enabled(&self) -> bool {
        self.ctl & CTL_ENABLE != 0
    }

    /// The interrupt line's level at `now`.
    pub fn level(&self, now: u64) -> bool {
        self.condition(now) && self.ctl & CTL_IMASK == 0
    }

    /// When the line next rises if nothing is written: `CVAL` if the timer is enabled,
    /// unmasked and not yet due. `None` when it cannot rise (or is high already).
    pub fn deadline(&self, now: u64) -> Option<u64> {
        (self.ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE && now < self.cval).then_some(self.cval)
    }

    pub fn read(&self, reg: TimerReg, now: u64) -> u64 {
        match reg {
            TimerReg::Ctl => self.ctl | if self.condition(now) { CTL_ISTATUS } else { 0 },
            TimerReg::Cval => self.cval,
            // Bits [63:32] are RES0; [31:0] the signed distance to CVAL.
            TimerReg::Tval => u64::from(self.cval.wrapping_sub(now) as u32),
        }
    }

    pub fn write(&mut self, reg: TimerReg, value: u64, now: u64) {
        match reg {
            // ISTATUS is read-only; the other bits are RES0.
            TimerReg::Ctl => self.ctl = value & (CTL_ENABLE | CTL_IMASK),
            TimerReg::Cval => self.cval = value,
            TimerReg::Tval => {
                let delta = i64::from(value as u32 as i32);
                self.cval = now.wrapping_add(delta as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_timer_programmed_through_tval_fires_at_its_deadline() {
        let mut t = PhysTimer::default();
        assert_eq!(t.deadline(0), None, "off at reset");
        t.write(TimerReg::Tval, 100, 1000);
        assert_eq!(t.read(TimerReg::Cval, 1000), 1100);
        t.write(TimerReg::Ctl, CTL_ENABLE, 1000);
        assert_eq!(t.deadline(1000), Some(1100));
        assert!(!t.level(1099));
        assert_eq!(t.read(TimerReg::Tval, 1099), 1);
        assert!(t.level(1100));
        assert_eq!(t.read(TimerReg::Ctl, 1100), CTL_ENABLE | CTL_ISTATUS);
        assert_eq!(t.deadline(1100), None, "high already: nothing to wait for");
        // Past the deadline TVAL counts down through zero, as a signed 32-bit value.
        assert_eq!(t.read(TimerReg::Tval, 1105), u64::from((-5i32) as u32));
    }

    #[test]
    fn masking_keeps_istatus_but_drops_the_line() {
        let mut t = PhysTimer::default();
        t.write(TimerReg::Cval, 50, 0);
        t.write(TimerReg::Ctl, CTL_ENABLE | CTL_IMASK | 0xf0, 0);
        assert_eq!(
            t.read(TimerReg::Ctl, 60),
            CTL_ENABLE | CTL_IMASK | CTL_ISTATUS
        );
        assert!(!t.level(60));
        assert_eq!(t.deadline(0), None);
        t.write(TimerReg::Ctl, 0, 60);
        assert_eq!(t.read(TimerReg::Ctl, 60), 0, "disabled: no ISTATUS");
    }

    #[test]
    fn a_negative_tval_sets_a_deadline_in_the_past() {
        let mut t = PhysTimer::default();
        t.write(TimerReg::Tval, u64::from((-10i32) as u32), 1000);
        assert_eq!(t.read(TimerReg::Cval, 1000), 990);
        t.write(TimerReg::Ctl, CTL_ENABLE, 1000);
        assert!(t.level(1000));
    }

    proptest! {
        /// The line is high exactly when enabled, unmasked and due; a deadline is given
        /// exactly when it will rise later.
        #[test]
        fn level_and_deadline_agree(ctl in 0u64..8, cval: u64, now: u64) {
            let mut t = PhysTimer::default();
            t.write(TimerReg::Ctl, ctl, now);
            t.write(TimerReg::Cval, cval, now);
            let on = ctl & 3 == CTL_ENABLE;
            prop_assert_eq!(t.level(now), on && now >= cval);
            prop_assert_eq!(t.deadline(now), (on && now < cval).then_some(cval));
            if let Some(d) = t.deadline(now) {
                prop_assert!(t.level(d));
            }
        }
    }
}
