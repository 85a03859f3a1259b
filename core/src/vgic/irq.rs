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

/// One virtual interrupt (SGI, PPI or SPI).
#[derive(Clone, Copy, Debug)]
pub struct Irq {
    /// ISENABLER/ICENABLER.
    pub enabled: bool,
    /// Edge latch, or a software-set pending state of a level interrupt.
    pub latch: bool,
    /// Input line level (level-sensitive sources only: `set_spi_level`).
    pub level: bool,
    /// Active state set through ISACTIVER while the interrupt is not in an LR.
    pub active: bool,
    /// IGROUPR bit: true = group 1.
    pub group1: bool,
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
    /// Guest ICPENDR'd while in an LR: the next flush clears the LR's pending bit.
    pub clear_pending_req: bool,
    /// Guest ICACTIVER'd while in an LR: the next flush clears the LR's active bit.
    pub clear_active_req: bool,
}

impl Irq {
    /// Reset state. Group 1 by default, like KVM's vGICv3: a guest that never writes
    /// IGROUPR (many bare-metal tests) still gets its interrupts as IRQs.
    pub const fn new(trigger: Trigger) -> Irq {
        Irq {
            enabled: false,
            latch: false,
            level: false,
            active: false,
            group1: true,
            trigger,
            priority: 0,
            hw: None,
            lr: None,
            lr_vcpu: 0,
            lr_state: 0,
            clear_pending_req: false,
            clear_active_req: false,
        }
    }

    /// Pending in software (not counting any LR copy).
    pub fn pending(&self) -> bool {
        self.latch || (self.trigger == Trigger::Level && self.level)
    }

    /// May go into a free list register now, given the distributor's group-1 enable.
    /// An interrupt made active by ISACTIVER stays out of the LRs until ICACTIVER.
    pub fn deliverable(&self, grp1_enabled: bool) -> bool {
        // Most often asked of an interrupt that has just been delivered: not pending
        // is the usual answer, so it is tested first.
        self.pending()
            && self.enabled
            && self.group1
            && grp1_enabled
            && !self.active
            && self.lr.is_none()
    }

    /// Pending as the guest sees it through ISPENDR.
    pub fn pending_view(&self) -> bool {
        self.pending() || (self.lr.is_some() && self.lr_state & LR_STATE_PENDING != 0)
    }

    /// Active as the guest sees it through ISACTIVER.
    pub fn active_view(&self) -> bool {
        self.active || (self.lr.is_some() && self.lr_state & LR_STATE_ACTIVE != 0)
    }

    /// Sitting in an LR in a state the CPU interface will still signal.
    pub fn pending_in_lr(&self) -> bool {
        self.lr.is_some() && self.lr_state & LR_STATE_PENDING != 0
    }
}
