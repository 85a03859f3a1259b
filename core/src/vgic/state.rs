//! The vGIC's lock-protected state: every interrupt of the VM, the distributor and
//! redistributor control bits, and each vCPU's shadow of what its list registers hold.
//!
//! Everything here is reached through `VGic::state` (one `spin::Mutex` per VM); methods
//! return the `VcpuMask` of vCPUs whose work changed, and `VGic` turns that into the
//! per-vCPU atomic flags the hot path reads.

use alloc::vec::Vec;

use super::irq::{Irq, Trigger};
use super::{VcpuMask, MAX_LRS, NR_PRIVATE, NR_SGIS, SPI_BASE};

/// GICD_IROUTER<n> fields (GICv3 spec §12.9.22).
pub const IROUTER_AFF0: u64 = 0xff;
pub const IROUTER_AFF1: u64 = 0xff << 8;
pub const IROUTER_AFF2: u64 = 0xff << 16;
pub const IROUTER_IRM: u64 = 1 << 31;
pub const IROUTER_AFF3: u64 = 0xff << 32;
pub const IROUTER_MASK: u64 =
    IROUTER_AFF0 | IROUTER_AFF1 | IROUTER_AFF2 | IROUTER_IRM | IROUTER_AFF3;

/// Per-vCPU state: the redistributor and the list-register shadow.
pub struct CpuState {
    /// SGIs 0-15 and PPIs 16-31 (banked per redistributor).
    pub private: [Irq; NR_PRIVATE],
    /// GICR_WAKER.ProcessorSleep (ChildrenAsleep mirrors it).
    pub sleep: bool,
    /// INTID held by each list register, as far as we know (`None` = free).
    pub lrs: [Option<u32>; MAX_LRS],
    /// The hardware LRs may hold stale entries (after a reset): zero them all at next flush.
    pub wipe_lrs: bool,
}

impl CpuState {
    pub fn new() -> CpuState {
        let mut private = [Irq::new(Trigger::Level); NR_PRIVATE];
        // SGIs are always edge-triggered (GICR_ICFGR0 is read-only 0xAAAA_AAAA).
        for sgi in private.iter_mut().take(NR_SGIS) {
            sgi.trigger = Trigger::Edge;
        }
        CpuState {
            private,
            sleep: true,
            lrs: [None; MAX_LRS],
            wipe_lrs: true,
        }
    }
}

pub struct State {
    pub nr_vcpus: usize,
    pub nr_spis: u32,
    /// GICD_CTLR.EnableGrp0.
    pub grp0: bool,
    /// GICD_CTLR.EnableGrp1 (EnableGrp1A: the only group that reaches the guest).
    pub grp1: bool,
    /// SPIs 32.., index `intid - 32`; reset level-sensitive as Linux expects to program them.
    pub spis: Vec<Irq>,
    /// GICD_IROUTER for each SPI, masked to its defined fields.
    pub irouter: Vec<u64>,
    pub cpus: Vec<CpuState>,
}

impl State {
    pub fn new(nr_vcpus: usize, nr_spis: u32) -> State {
        State {
            nr_vcpus,
            nr_spis,
            grp0: false,
            grp1: false,
            spis: alloc::vec![Irq::new(Trigger::Level); nr_spis as usize],
            irouter: alloc::vec![0; nr_spis as usize],
            cpus: (0..nr_vcpus).map(|_| CpuState::new()).collect(),
        }
    }

    pub fn is_spi(&self, intid: u32) -> bool {
        intid >= SPI_BASE && intid - SPI_BASE < self.nr_spis
    }

    /// The interrupt `intid` as seen from `vcpu` (private interrupts are banked).
    pub fn irq(&self, vcpu: usize, intid: u32) -> Option<&Irq> {
        if intid < SPI_BASE {
            self.cpus.get(vcpu)?.private.get(intid as usize)
        } else {
            self.spis.get((intid - SPI_BASE) as usize)
        }
    }

    pub fn irq_mut(&mut self, vcpu: usize, intid: u32) -> Option<&mut Irq> {
        if intid < SPI_BASE {
            self.cpus.get_mut(vcpu)?.private.get_mut(intid as usize)
        } else {
            self.spis.get_mut((intid - SPI_BASE) as usize)
        }
    }

    /// Which vCPU an SPI is routed to: IRM=1 ("any") picks vCPU 0; an affinity that
    /// names no vCPU routes nowhere (the spec leaves such an interrupt undelivered).
    pub fn spi_target(&self, intid: u32) -> Option<usize> {
        let router = *self.irouter.get(intid.checked_sub(SPI_BASE)? as usize)?;
        if router & IROUTER_IRM != 0 {
            return Some(0);
        }
        if router & (IROUTER_AFF1 | IROUTER_AFF2 | IROUTER_AFF3) != 0 {
            return None;
        }
        let aff0 = (router & IROUTER_AFF0) as usize;
        (aff0 < self.nr_vcpus).then_some(aff0)
    }

    /// The vCPU that would receive `intid` (banked private interrupts: `vcpu` itself).
    pub fn owner(&self, vcpu: usize, intid: u32) -> Option<usize> {
        if intid < SPI_BASE {
            (vcpu < self.nr_vcpus).then_some(vcpu)
        } else {
            self.spi_target(intid)
        }
    }

    /// The vCPU to kick if `intid` (seen from `vcpu`) is now deliverable, or if it sits in
    /// an LR that the next flush must revisit (`lr_dirty`).
    pub fn kick_for(&self, vcpu: usize, intid: u32, lr_dirty: bool) -> VcpuMask {
        let Some(irq) = self.irq(vcpu, intid) else {
            return VcpuMask::EMPTY;
        };
        if irq.lr.is_some() {
            return if lr_dirty {
                VcpuMask::one(usize::from(irq.lr_vcpu))
            } else {
                VcpuMask::EMPTY
            };
        }
        match self.owner(vcpu, intid) {
            Some(owner) if irq.deliverable(self.grp1) => VcpuMask::one(owner),
            _ => VcpuMask::EMPTY,
        }
    }

    /// Every vCPU with something deliverable or an LR to revisit (after a GICD_CTLR change).
    pub fn all_with_work(&self) -> VcpuMask {
        let mut mask = VcpuMask::EMPTY;
        for vcpu in 0..self.nr_vcpus {
            for intid in 0..SPI_BASE {
                mask |= self.kick_for(vcpu, intid, true);
            }
        }
        for intid in SPI_BASE..SPI_BASE + self.nr_spis {
            mask |= self.kick_for(0, intid, true);
        }
        mask
    }

    /// Deliverable interrupts of `vcpu` (not yet in an LR), as `(intid, &Irq)`.
    pub fn candidates(&self, vcpu: usize) -> impl Iterator<Item = (u32, &Irq)> + '_ {
        let grp1 = self.grp1;
        let private = self
            .cpus
            .get(vcpu)
            .into_iter()
            .flat_map(|c| c.private.iter())
            .zip(0u32..);
        let spis = self
            .spis
            .iter()
            .zip(SPI_BASE..)
            .filter(move |&(_, intid)| self.spi_target(intid) == Some(vcpu));
        private
            .chain(spis)
            .filter(move |(irq, _)| irq.deliverable(grp1))
            .map(|(irq, intid)| (intid, irq))
    }

    /// Back to the reset state of one vCPU's redistributor and LRs. SPIs that sat in its
    /// LRs leave them (their pending/active state there is lost, as on a real CPU reset).
    pub fn reset_cpu(&mut self, vcpu: usize) {
        let Some(cpu) = self.cpus.get(vcpu) else {
            return;
        };
        let held = cpu.lrs;
        for intid in held.into_iter().flatten() {
            if let Some(irq) = self.irq_mut(vcpu, intid) {
                irq.lr = None;
                irq.lr_state = 0;
                irq.clear_pending_req = false;
                irq.clear_active_req = false;
            }
        }
        self.cpus[vcpu] = CpuState::new();
    }
}
