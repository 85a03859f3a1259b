//! The state of one virtual interrupt, and the predicates every other part of the vGIC
//! asks of it ("is it pending?", "may it go into a list register?").
//!
//! An interrupt is in exactly one of two places:
//! - **software** (`lr == None`): `latch`, `level` and `active` below are the whole truth;
//! - **a list register** of vCPU `lr_vcpu` (`lr == Some(i)`): the LR's State field is the
//!   truth for pending/active; `lr_state` is our copy as of the last flush/sync. A pending
//!   latch set while it sits in an LR is kept here and merged by the next flush.
//!
//! Pending, per the GICv3 spec (§4.1 "Interrupt lifecycle"): edge-triggered interrupts
//! latch pending on each edge (`latch`); level-sensitive ones are pending while the line is
//! high (`level`) *or* while a software ISPENDR write holds them (`latch`).

/// ICFGR value of one interrupt: level-sensitive or edge-triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Level,
    Edge,
}

/// LR State field bits (`ICH_LR<n>_EL2.State`, bits [63:62] shifted down).
pub const LR_STATE_PENDING: u8 = 0b01;
pub const LR_STATE_ACTIVE: u8 = 0b10;

// `Irq::flags` bits: the interrupt's yes/no state, in one byte so that the exit path
// asks several questions of it with one load and one compare.

/// ISENABLER/ICENABLER.
const ENABLED: u8 = 1 << 0;
/// Edge latch, or a software-set pending state of a level interrupt.
const LATCH: u8 = 1 << 1;
/// Input line level (level-sensitive sources only: `set_spi_level`).
const LEVEL: u8 = 1 << 2;
/// Active state set through ISACTIVER while the interrupt is not in an LR.
const ACTIVE: u8 = 1 << 3;
/// IGROUPR bit: set = group 1.
const GROUP1: u8 = 1 << 4;
/// Guest ICPENDR'd while in an LR: the next flush clears the LR's pending bit.
const CLEAR_PENDING_REQ: u8 = 1 << 5;
/// Guest ICACTIVER'd while in an LR: the next flush clears the LR's active bit.
const CLEAR_ACTIVE_REQ: u8 = 1 << 6;

/// One virtual interrupt (SGI, PPI or SPI).
#[derive(Clone, Copy, Debug)]
pub struct Irq {
    /// The `ENABLED`, `LATCH`, ... bits above, read and written through the methods.
    flags: u8,
    pub trigger: Trigger,
    /// IPRIORITYR byte as the guest wrote it (only the top bits reach the LR).
    pub priority: u8,
    /// Physical INTID when the interrupt is hardware-linked (LR.HW = 1).
    pub hw: Option<u32>,
    /// List register index while the interrupt sits in one.
    pub lr: Option<u8>,
    /// Whose list register `lr` refers to (an SPI's route may change meanwhile).
    pub lr_vcpu: u8,
    /// LR State as of the last flush/sync (`LR_STATE_*` bits).
    pub lr_state: u8,
}

/// Getter and setter of one `Irq::flags` bit.
macro_rules! flag {
    ($get:ident, $set:ident, $bit:ident) => {
        #[inline(always)]
        pub fn $get(&self) -> bool {
            self.flags & $bit != 0
        }
        #[inline(always)]
        pub fn $set(&mut self, on: bool) {
            self.flags = (self.flags & !$bit) | if on { $bit } else { 0 };
        }
    };
}

impl Irq {
    /// Reset state. Group 1 by default, like KVM's vGICv3: a guest that never writes
    /// IGROUPR (many bare-metal tests) still gets its interrupts as IRQs.
    pub const fn new(trigger: Trigger) -> Irq {
        Irq {
            flags: GROUP1,
            trigger,
            priority: 0,
            hw: None,
            lr: None,
            lr_vcpu: 0,
            lr_state: 0,
        }
    }

    flag!(enabled, set_enabled, ENABLED);
    flag!(latch, set_latch, LATCH);
    flag!(level, set_level, LEVEL);
    flag!(active, set_active, ACTIVE);
    flag!(group1, set_group1, GROUP1);
    flag!(clear_pending_req, set_clear_pending_req, CLEAR_PENDING_REQ);
    flag!(clear_active_req, set_clear_active_req, CLEAR_ACTIVE_REQ);

    /// Latches the interrupt if `edge` (the other latch setters are `set_latch`).
    #[inline(always)]
    pub fn latch_if(&mut self, edge: bool) {
        self.flags |= if edge { LATCH } else { 0 };
    }

    /// Forgets ICPENDR/ICACTIVER requests recorded while the interrupt sat in an LR.
    #[inline(always)]
    pub fn drop_clear_reqs(&mut self) {
        self.flags &= !(CLEAR_PENDING_REQ | CLEAR_ACTIVE_REQ);
    }

    /// Enabled, group 1, and neither active in software nor latched: one compare, for
    /// the exit path's LR-reuse shortcut (with the distributor's group-1 enable and
    /// the interrupt out of any LR, such an interrupt is deliverable once latched).
    #[inline(always)]
    pub fn enabled_and_idle(&self) -> bool {
        self.flags & (ENABLED | GROUP1 | ACTIVE | LATCH) == ENABLED | GROUP1
    }

    /// Pending in software (not counting any LR copy).
    pub fn pending(&self) -> bool {
        self.latch() || (self.trigger == Trigger::Level && self.level())
    }

    /// May go into a free list register now, given the distributor's group-1 enable.
    /// An interrupt made active by ISACTIVER stays out of the LRs until ICACTIVER.
    pub fn deliverable(&self, grp1_enabled: bool) -> bool {
        // Most often asked of an interrupt that has just been delivered: not pending
        // is the usual answer, so it is tested first.
        self.pending()
            && self.enabled()
            && self.group1()
            && grp1_enabled
            && !self.active()
            && self.lr.is_none()
    }

    /// Whether it will be [`Irq::deliverable`] once out of the LR it sits in.
    #[inline(always)]
    pub fn deliverable_once_out(&self, grp1_enabled: bool) -> bool {
        self.pending() && self.enabled() && self.group1() && grp1_enabled && !self.active()
    }

    /// Pending as the guest sees it through ISPENDR.
    pub fn pending_view(&self) -> bool {
        self.pending() || (self.lr.is_some() && self.lr_state & LR_STATE_PENDING != 0)
    }

    /// Active as the guest sees it through ISACTIVER.
    pub fn active_view(&self) -> bool {
        self.active() || (self.lr.is_some() && self.lr_state & LR_STATE_ACTIVE != 0)
    }

    /// Sitting in an LR in a state the CPU interface will still signal.
    pub fn pending_in_lr(&self) -> bool {
        self.lr.is_some() && self.lr_state & LR_STATE_PENDING != 0
    }
}
