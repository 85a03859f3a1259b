//! The vGIC's lock-protected state: every interrupt of the VM, the distributor and
//! redistributor control bits, and each vCPU's shadow of what its list registers hold.
//!
//! Everything here is reached through `VGic::state` (one `spin::Mutex` per VM); methods
//! return the `VcpuMask` of vCPUs whose work changed, and `VGic` turns that into the
//! per-vCPU atomic flags the hot path reads.
//!
//! ## Indexes kept so the exit path never scans every interrupt
//! - `CpuState::pend`: per vCPU, a bitmap over INTIDs (word `intid / 32`) that is a
//!   *superset* of the interrupts deliverable to it (`Irq::deliverable`, routed to it, not
//!   in an LR). Every change that can make an interrupt deliverable ends in
//!   [`State::kick_for`] (register writes, SGIs, lines, `inject_hw`, routing, GICD_CTLR) or
//!   in an interrupt leaving an LR ([`State::note`]); both set the owner's bit. Bits that
//!   turn out stale (disabled, re-routed, already delivered) are dropped when `flush` looks
//!   at them, so the candidate search costs one `trailing_zeros` per candidate.
//! - `CpuState::occupied`: bit `i` = `lrs[i]` is `Some` (kept in step by place/free).
//! - `CpuState::dirty`: LRs whose interrupt was touched since the last reconcile (any
//!   `kick_for` on an interrupt in an LR) or whose reconcile may still act when the guest
//!   moves the LR's state (see `lr.rs`); `flush` reconciles only these.

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
    /// `HOLD_*` bits: what keeps the exit path's one-pass raise off this vCPU (one
    /// byte, so that path tests both with one compare).
    pub hold: u8,
    /// INTID held by each list register, as far as we know (`None` = free).
    pub lrs: [Option<u32>; MAX_LRS],
    /// Bit `i` set = `lrs[i]` is `Some`.
    pub occupied: u16,
    /// LRs the next flush must reconcile (see module docs).
    pub dirty: u16,
    /// LRs freed by the sync/flush in progress whose hardware register is still to be
    /// written 0; a `place` into one of them makes that write unnecessary. Always 0
    /// outside `sync_cpu`/`flush_cpu`.
    pub unzeroed: u16,
    /// Superset of the INTIDs deliverable to this vCPU: bit `intid % 32` of word `intid / 32`.
    pub pend: [u32; PEND_WORDS],
    /// Bit `w` set = `pend[w]` may be non-zero.
    pub pend_words: u32,
}

/// INTIDs 0..1024 in 32-bit words.
pub const PEND_WORDS: usize = 32;

/// `CpuState::hold`: the hardware LRs may hold stale entries (after a reset): zero them
/// all at the next flush.
pub const HOLD_WIPE_LRS: u8 = 1 << 0;
/// `CpuState::hold`: GICR_WAKER.ProcessorSleep (ChildrenAsleep mirrors it). While set,
/// nothing goes into this vCPU's LRs and pending ones are taken back; interrupts stay
/// pending (and indexed in `pend`) until it is cleared.
pub const HOLD_ASLEEP: u8 = 1 << 1;

impl CpuState {
    /// Record that `intid` may be deliverable to this vCPU.
    #[inline]
    pub fn set_pend(&mut self, intid: u32) {
        let w = (intid / 32) as usize % PEND_WORDS;
        self.pend[w] |= 1 << (intid % 32);
        self.pend_words |= 1 << w;
    }

    #[inline]
    pub fn clear_pend(&mut self, intid: u32) {
        let w = (intid / 32) as usize % PEND_WORDS;
        self.pend[w] &= !(1 << (intid % 32));
    }

    /// Whether the redistributor is asleep (GICR_WAKER.ProcessorSleep).
    #[inline]
    pub fn asleep(&self) -> bool {
        self.hold & HOLD_ASLEEP != 0
    }

    pub fn set_asleep(&mut self, asleep: bool) {
        self.hold = (self.hold & !HOLD_ASLEEP) | if asleep { HOLD_ASLEEP } else { 0 };
    }

    /// Whether the hardware LRs are to be wiped at the next flush; clears the request.
    #[inline]
    pub fn take_wipe_lrs(&mut self) -> bool {
        let wipe = self.hold & HOLD_WIPE_LRS != 0;
        self.hold &= !HOLD_WIPE_LRS;
        wipe
    }

    pub fn new() -> CpuState {
        let mut private = [Irq::new(Trigger::Level); NR_PRIVATE];
        // SGIs are always edge-triggered (GICR_ICFGR0 is read-only 0xAAAA_AAAA).
        for sgi in private.iter_mut().take(NR_SGIS) {
            sgi.trigger = Trigger::Edge;
        }
        CpuState {
            private,
            hold: HOLD_WIPE_LRS | HOLD_ASLEEP,
            lrs: [None; MAX_LRS],
            occupied: 0,
            dirty: 0,
            unzeroed: 0,
            pend: [0; PEND_WORDS],
            pend_words: 0,
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
    /// an LR that the next flush must revisit (`lr_dirty`). Called after *every* state
    /// change of an interrupt, it also keeps the indexes: the owner's `pend` bit for a
    /// deliverable interrupt, the holder's `dirty` bit for one in an LR (reconcile reads
    /// enable, group, trigger, latch and the clear requests, any of which may have changed).
    pub fn kick_for(&mut self, vcpu: usize, intid: u32, lr_dirty: bool) -> VcpuMask {
        let grp1 = self.grp1;
        let Some(irq) = self.irq(vcpu, intid) else {
            return VcpuMask::EMPTY;
        };
        if let Some(lr) = irq.lr {
            let holder = usize::from(irq.lr_vcpu);
            if let Some(cpu) = self.cpus.get_mut(holder) {
                cpu.dirty |= 1 << (lr as usize % MAX_LRS);
            }
            return if lr_dirty {
                VcpuMask::one(holder)
            } else {
                VcpuMask::EMPTY
            };
        }
        if !irq.deliverable(grp1) {
            return VcpuMask::EMPTY;
        }
        let Some(owner) = self.owner(vcpu, intid) else {
            return VcpuMask::EMPTY;
        };
        // An owner is below `nr_vcpus`, which is how many `cpus` there are.
        let Some(cpu) = self.cpus.get_mut(owner) else {
            return VcpuMask::EMPTY;
        };
        cpu.set_pend(intid);
        VcpuMask::one(owner)
    }

    /// Latch an edge on private interrupt `intid` of `vcpu` (an SGI): `kick_for` with
    /// `lr_dirty`, in one lookup.
    pub fn raise_private(&mut self, vcpu: usize, intid: u32) -> VcpuMask {
        let grp1 = self.grp1;
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return VcpuMask::EMPTY;
        };
        let Some(irq) = cpu.private.get_mut(intid as usize) else {
            return VcpuMask::EMPTY;
        };
        irq.set_latch(true);
        if let Some(lr) = irq.lr {
            // A private interrupt only ever sits in its own vCPU's LRs.
            let holder = usize::from(irq.lr_vcpu);
            if holder == vcpu {
                cpu.dirty |= 1 << (lr as usize % MAX_LRS);
                return VcpuMask::one(vcpu);
            }
            return self.kick_for(vcpu, intid, true);
        }
        if irq.deliverable(grp1) {
            cpu.set_pend(intid);
            return VcpuMask::one(vcpu);
        }
        VcpuMask::EMPTY
    }

    /// `intid` (seen from `vcpu`) just left an LR: index it again if it is deliverable.
    pub fn note(&mut self, vcpu: usize, intid: u32) {
        if self
            .irq(vcpu, intid)
            .is_some_and(|irq| irq.deliverable(self.grp1))
        {
            // An owner is below `nr_vcpus`, which is how many `cpus` there are.
            if let Some(cpu) = self.owner(vcpu, intid).and_then(|o| self.cpus.get_mut(o)) {
                cpu.set_pend(intid);
            }
        }
    }

    /// Every vCPU with something deliverable or an LR to revisit (after a GICD_CTLR change).
    pub fn all_with_work(&mut self) -> VcpuMask {
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

    /// Whether `intid` (seen from `vcpu`) may go into one of `vcpu`'s LRs now.
    #[inline]
    pub fn deliverable_to(&self, vcpu: usize, intid: u32) -> bool {
        self.irq(vcpu, intid)
            .is_some_and(|irq| irq.deliverable(self.grp1))
            && (intid < SPI_BASE || self.spi_target(intid) == Some(vcpu))
    }

    /// Deliverable interrupts of `vcpu` (not yet in an LR), ascending INTID, read off the
    /// `pend` index (stale bits are skipped, not dropped: see `lr.rs` for the pruning scan).
    pub fn candidates(&self, vcpu: usize) -> impl Iterator<Item = u32> + '_ {
        let cpu = self.cpus.get(vcpu);
        let words = cpu.map_or(0, |c| c.pend_words);
        BitIter(words)
            .flat_map(move |w| {
                let bits = cpu.map_or(0, |c| c.pend[w as usize]);
                BitIter(bits).map(move |b| w * 32 + b)
            })
            .filter(move |&intid| self.deliverable_to(vcpu, intid))
    }

    /// Back to the reset state of one vCPU's redistributor and LRs. SPIs that sat in its
    /// LRs leave them (their pending/active state there is lost, as on a real CPU reset).
    pub fn reset_cpu(&mut self, vcpu: usize) {
        let Some(cpu) = self.cpus.get(vcpu) else {
            return;
        };
        let held = cpu.lrs;
        // SPIs are the distributor's: their index bits survive the redistributor reset.
        let (mut pend, pend_words) = (cpu.pend, cpu.pend_words);
        pend[0] = 0;
        for intid in held.into_iter().flatten() {
            if let Some(irq) = self.irq_mut(vcpu, intid) {
                irq.lr = None;
                irq.lr_state = 0;
                irq.drop_clear_reqs();
            }
        }
        self.cpus[vcpu] = CpuState::new();
        self.cpus[vcpu].pend = pend;
        self.cpus[vcpu].pend_words = pend_words & !1;
        for intid in held.into_iter().flatten() {
            if intid >= SPI_BASE {
                self.note(vcpu, intid);
            }
        }
    }
}

/// The set bits of a word, lowest first.
#[derive(Clone, Copy)]
pub struct BitIter(pub u32);

impl Iterator for BitIter {
    type Item = u32;
    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(b)
    }
}
