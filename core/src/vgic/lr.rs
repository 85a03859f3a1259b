//! List registers: moving interrupts between the model and the virtual CPU interface.
//!
//! The hardware (ICH_LR<n>_EL2, GICv3 spec §12.4.9 / Arm ARM) is reached through the
//! [`ListRegs`] trait, which `hyp` implements with `mrs`/`msr` and tests with a fake.
//!
//! - **sync** folds LR state back: an LR that became invalid means the guest completed
//!   (EOI/deactivated) the interrupt, so the interrupt returns to software; a level
//!   interrupt then counts as pending again exactly while its line is still high. Freed
//!   LRs are written 0 so an EOI-maintenance request (`EISR`) is cleared with them; the
//!   write is deferred to the end of the sync/flush and skipped for an LR that is refilled
//!   meanwhile (`CpuState::unzeroed`), so recycling an LR costs one register write.
//! - **flush** first syncs, then *reconciles* occupied LRs with what the guest or devices
//!   did meanwhile (ICPENDR/ICACTIVER requests, disabling, a new edge), then fills free LRs
//!   with the highest-priority deliverable interrupts; if there are more than fit it may
//!   evict a lower-priority LR that is still only pending, and it sets ICH_HCR_EL2.UIE so
//!   the underflow maintenance interrupt brings us back when LRs drain.
//!
//! Reconcile is a no-op for an LR whose interrupt is allowed (enabled, group 1 on), has no
//! latch waiting and no clear request: nothing the guest does to the LR can change that.
//! So only *dirty* LRs are reconciled: `kick_for` marks the LR of any interrupt it is
//! called for (every register write, SGI, line change or injection ends there), and
//! reconcile keeps an LR marked while it leaves a latch waiting or the interrupt not
//! allowed, because then the guest moving the LR's state (say pending+active → pending)
//! is enough for the next reconcile to act.
//!
//! A withdrawn or evicted interrupt goes back to software pending if it is edge-triggered
//! or hardware-linked; a level-sensitive one is pending again only while its line is high
//! (a software ISPENDR on it is lost — an accepted approximation).
//!
//! Level-sensitive interrupts without a hardware link go in with the EOI bit, so that the
//! guest's EOI raises a maintenance interrupt and `sync` re-samples the line. A
//! hardware-linked one (the virtual timer) needs no EOI bit: the guest's EOI deactivates
//! the physical interrupt, which fires again at EL2 if its source still asserts it. But
//! one that fired while it could not be delivered (disabled at the vGIC, or withdrawn
//! from its LR) waits in software, and its source may have dropped meanwhile (the guest
//! turned the timer off): `flush` asks the source ([`PhysCpu::line_high`]) before it
//! puts such an interrupt into an LR, and drops it if the level is gone. That covers the
//! guest enabling it again, an earlier instance's EOI freeing the LR, and the vCPU being
//! loaded, since each ends in a flush. The exit path's injection of a timer that has
//! just fired does not ask: its level is high by construction. An edge
//! interrupt that fires again while its LR is active is upgraded in place to
//! pending+active (as KVM does) instead of waiting for the LR to drain; a hardware-linked
//! one keeps its latch until the LR frees, because HW=1 LRs cannot be pending+active.

use super::irq::{Irq, Trigger, LR_STATE_ACTIVE, LR_STATE_PENDING};
use super::state::{BitIter, CpuState, State, HOLD_WIPE_LRS};
use super::{MAX_LRS, NR_PRIVATE, NR_SGIS, SPI_BASE};

/// `CpuState::pend[0]` bits of the PPIs (INTIDs 16-31).
const PPI_BITS: u32 = !((1 << NR_SGIS) - 1);

/// The virtual CPU interface's list registers of the physical CPU running the vCPU.
pub trait ListRegs {
    /// Number of implemented LRs (ICH_VTR_EL2.ListRegs + 1); at most 16 are used.
    fn count(&self) -> usize;
    /// The LRs used, as a bitmap: bits `0..count().min(MAX_LRS)`. An implementation that
    /// keeps it at hand saves the exit path from deriving it from the count each time.
    #[inline(always)]
    fn mask(&self) -> u16 {
        lr_mask(self.count().min(MAX_LRS))
    }
    fn read(&self, i: usize) -> u64;
    fn write(&mut self, i: usize, v: u64);
    /// ICH_ELRSR_EL2: bit n set = LR n holds no interrupt (and needs no maintenance).
    fn elrsr(&self) -> u16;
    /// ICH_EISR_EL2: bit n set = LR n raised an EOI maintenance request.
    fn eisr(&self) -> u16;
    /// Write ICH_HCR_EL2.
    fn set_hcr(&mut self, v: u64);
}

/// The physical CPU a vCPU runs on, as a flush uses it: that vCPU's list registers, and
/// the sources of its hardware-linked level-sensitive interrupts. `hyp`'s is its exit
/// policy's [`Arch`](crate::arch::Arch) (every `Arch` is one); the vGIC's tests use
/// [`FakeListRegs`].
pub trait PhysCpu {
    type Lrs<'a>: ListRegs
    where
        Self: 'a;
    fn list_regs(&mut self) -> Self::Lrs<'_>;
    /// Whether the source of hardware-linked level-sensitive interrupt `pintid` still
    /// asserts it. When it does not, the physical interrupt (which EL2 acknowledged and
    /// left active for the guest to deactivate) is deactivated, so the source can fire
    /// again. See [`Arch::hw_line_high`](crate::arch::Arch::hw_line_high).
    fn line_high(&mut self, pintid: u32) -> bool;
}

impl<A: crate::arch::Arch> PhysCpu for A {
    type Lrs<'a>
        = A::Lrs<'a>
    where
        Self: 'a;
    #[inline(always)]
    fn list_regs(&mut self) -> A::Lrs<'_> {
        self.lrs()
    }
    #[inline(always)]
    fn line_high(&mut self, pintid: u32) -> bool {
        self.hw_line_high(pintid)
    }
}

/// A borrowed set of list registers is one too (the exit policy's `Arch` hands out
/// `&mut` to a fake's).
impl<T: ListRegs + ?Sized> ListRegs for &mut T {
    #[inline(always)]
    fn count(&self) -> usize {
        (**self).count()
    }
    #[inline(always)]
    fn mask(&self) -> u16 {
        (**self).mask()
    }
    #[inline(always)]
    fn read(&self, i: usize) -> u64 {
        (**self).read(i)
    }
    #[inline(always)]
    fn write(&mut self, i: usize, v: u64) {
        (**self).write(i, v)
    }
    #[inline(always)]
    fn elrsr(&self) -> u16 {
        (**self).elrsr()
    }
    #[inline(always)]
    fn eisr(&self) -> u16 {
        (**self).eisr()
    }
    #[inline(always)]
    fn set_hcr(&mut self, v: u64) {
        (**self).set_hcr(v)
    }
}

// ICH_LR<n>_EL2 fields.
pub const LR_VINTID_MASK: u64 = 0xffff_ffff;
pub const LR_PINTID_SHIFT: u32 = 32;
pub const LR_PINTID_MASK: u64 = 0x1fff;
/// With HW = 0: raise a maintenance interrupt when the guest EOIs this LR.
pub const LR_EOI: u64 = 1 << 41;
pub const LR_PRIORITY_SHIFT: u32 = 48;
pub const LR_GROUP1: u64 = 1 << 60;
pub const LR_HW: u64 = 1 << 61;
pub const LR_STATE_SHIFT: u32 = 62;
/// The virtual CPU interface implements 5 priority bits, like QEMU's: keep the top ones.
pub const LR_PRIORITY_MASK: u8 = 0xF8;

// ICH_HCR_EL2 fields.
pub const HCR_EN: u64 = 1 << 0;
/// Underflow: maintenance interrupt when at most one LR is valid.
pub const HCR_UIE: u64 = 1 << 1;
pub const HCR_LRENPIE: u64 = 1 << 2;
pub const HCR_NPIE: u64 = 1 << 3;

/// The LR State field of `lr` (`LR_STATE_*` bits).
pub fn lr_state(lr: u64) -> u8 {
    (lr >> LR_STATE_SHIFT) as u8 & 0b11
}

fn with_state(lr: u64, state: u8) -> u64 {
    (lr & !(0b11 << LR_STATE_SHIFT)) | u64::from(state) << LR_STATE_SHIFT
}

/// The LR value that presents `irq` (INTID `intid`) as pending to the guest.
pub fn encode(intid: u32, irq: &Irq) -> u64 {
    let mut lr = u64::from(intid) & LR_VINTID_MASK
        | u64::from(irq.priority & LR_PRIORITY_MASK) << LR_PRIORITY_SHIFT
        | LR_GROUP1
        | u64::from(LR_STATE_PENDING) << LR_STATE_SHIFT;
    match irq.hw {
        Some(pintid) => lr |= LR_HW | (u64::from(pintid) & LR_PINTID_MASK) << LR_PINTID_SHIFT,
        None if irq.trigger == Trigger::Level => lr |= LR_EOI,
        None => {}
    }
    lr
}

/// The best `MAX_LRS` candidates by (LR priority, INTID), without allocating. A key is
/// `priority << 16 | intid`, which orders exactly like the pair.
struct Best {
    items: [u32; MAX_LRS],
    len: usize,
    total: usize,
}

impl Best {
    fn new() -> Best {
        Best {
            items: [0; MAX_LRS],
            len: 0,
            total: 0,
        }
    }

    #[inline]
    fn offer(&mut self, key: u32, keep: usize) {
        self.total += 1;
        if keep == 0 {
            return;
        }
        let pos = self.items[..self.len].partition_point(|k| *k < key);
        if pos >= keep {
            return;
        }
        let end = self.len.min(keep - 1);
        self.items.copy_within(pos..end, pos + 1);
        self.items[pos] = key;
        self.len = end + 1;
    }
}

fn key(intid: u32, irq: &Irq) -> u32 {
    u32::from(irq.priority & LR_PRIORITY_MASK) << 16 | intid
}

/// Bits `0..n` of an LR bitmap.
pub fn lr_mask(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

impl State {
    /// The interrupt an LR of `vcpu` claims to hold, if the claim is consistent.
    fn lr_irq(&mut self, vcpu: usize, i: usize, intid: u32) -> Option<&mut Irq> {
        self.irq_mut(vcpu, intid)
            .filter(|irq| irq.lr == Some(i as u8) && usize::from(irq.lr_vcpu) == vcpu)
    }

    /// Forget LR `i` of `vcpu`. The interrupt goes back to software, and to the `pend`
    /// index if it is deliverable again. The hardware register is zeroed by
    /// `CpuState::zero_freed` at the end of the sync/flush, unless an interrupt is placed
    /// in it first.
    fn free_lr(&mut self, vcpu: usize, i: usize) {
        let grp1 = self.grp1;
        // Callers pass a vCPU whose LRs they hold: one in `cpus`.
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return;
        };
        cpu.occupied &= !(1 << i);
        cpu.dirty &= !(1 << i);
        cpu.unzeroed |= 1 << i;
        if let Some(intid) = cpu.lrs[i].take() {
            if let Some(irq) = self.lr_irq(vcpu, i, intid) {
                irq.lr = None;
                irq.lr_state = 0;
                irq.drop_clear_reqs();
                if irq.deliverable(grp1) {
                    if intid < SPI_BASE {
                        if let Some(cpu) = self.cpus.get_mut(vcpu) {
                            cpu.set_pend(intid);
                        }
                    } else {
                        self.note(vcpu, intid);
                    }
                }
            }
        }
    }

    /// Fold LR state back into the model. Returns whether any LR was freed. Only occupied
    /// LRs are looked at, and those ELRSR reports empty are not read.
    pub fn sync_cpu(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> bool {
        if vcpu >= self.nr_vcpus {
            return false;
        }
        let freed = self.sync_lrs(vcpu, lrs);
        self.cpus[vcpu].zero_freed(lrs);
        freed
    }

    /// `sync_lrs` + latch private interrupt `intid` (hardware-linked to `hw` if given) +
    /// `flush_cpu`, for an SGI or PPI that `vcpu` raises on itself in hyp's exit path
    /// with `lrs` the list registers it runs on, in the common case: every occupied LR
    /// holds a private interrupt, nothing else is waiting or dirty, an LR is free. That
    /// is one pass over this vCPU's state. Returns whether an LR is left occupied, as
    /// `flush_cpu` does, or `None` (after, at most, syncing some LRs) when
    /// [`State::raise_private_general`] must do it. Both end in the same state
    /// (`local_raise_and_flush_matches_raise_then_exit`).
    ///
    /// Syncing first means an earlier instance the guest has completed is out of its LR
    /// before the new edge arrives.
    #[inline(always)]
    pub(super) fn raise_private_fast(
        &mut self,
        vcpu: usize,
        intid: u32,
        hw: Option<u32>,
        lrs: &mut impl ListRegs,
    ) -> Option<bool> {
        let grp1 = self.grp1;
        let implemented = lrs.mask();
        if let Some(cpu) = self.cpus.get_mut(vcpu) {
            // Not after a reset (LRs to wipe), not asleep (GICR_WAKER): one compare.
            if cpu.hold == 0 && cpu.dirty == 0 && cpu.pend_words == 0 && intid < SPI_BASE {
                if cpu.occupied == 1 && cpu.reraise_in_lr0(intid, hw, grp1, lrs) {
                    return Some(true);
                }
                let occupied = cpu.occupied & implemented;
                // An LR holding an SPI needs the general sync (a partial sync is still a sync).
                let others = if occupied != 0 {
                    cpu.sync_private_lrs(vcpu, occupied, grp1, lrs).1
                } else {
                    0
                };
                if others == 0 {
                    return cpu.raise_into_free_lr(vcpu, implemented, grp1, intid, hw, lrs);
                }
            }
        }
        None
    }

    /// The quickest case of [`State::raise_private_fast`]: `intid` comes again for the
    /// vCPU after the guest finished the last instance, which still holds LR 0 (see
    /// [`CpuState::reraise_in_lr0`]) and nothing else is in an LR, waiting or dirty.
    /// True when done (LR 0 holds the new instance, an LR is left occupied); false, with
    /// nothing changed, otherwise.
    #[inline(always)]
    pub(super) fn reraise_in_lr0(
        &mut self,
        vcpu: usize,
        intid: u32,
        hw: Option<u32>,
        lrs: &mut impl ListRegs,
    ) -> bool {
        let grp1 = self.grp1;
        match self.cpus.get_mut(vcpu) {
            Some(cpu) if cpu.hold == 0 && cpu.dirty == 0 && cpu.pend_words == 0 => {
                cpu.occupied == 1 && cpu.reraise_in_lr0(intid, hw, grp1, lrs)
            }
            _ => false,
        }
    }

    /// What [`State::raise_private_fast`] does, by the general calls, for any state.
    pub(super) fn raise_private_general(
        &mut self,
        vcpu: usize,
        intid: u32,
        hw: Option<u32>,
        pcpu: &mut impl PhysCpu,
    ) -> bool {
        self.sync_lrs(vcpu, &mut pcpu.list_regs());
        if let (Some(phys), Some(irq)) = (hw, self.irq_mut(vcpu, intid)) {
            irq.hw = Some(phys);
        }
        // Private: the vCPU itself is the only one with work.
        let _ = self.raise_private(vcpu, intid);
        self.flush_cpu(vcpu, pcpu)
    }

    /// `sync_cpu` without zeroing the freed hardware LRs (`flush_cpu` does that last).
    fn sync_lrs(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> bool {
        let grp1 = self.grp1;
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return false;
        };
        if cpu.hold & HOLD_WIPE_LRS != 0 {
            return false;
        }
        let occupied = cpu.occupied & lrs.mask();
        if occupied == 0 {
            return false;
        }
        // Private interrupts (the common case: SGIs, the timer) are all in this vCPU's
        // state; SPIs need the whole model and are done after.
        let (mut freed, spis) = cpu.sync_private_lrs(vcpu, occupied, grp1, lrs);
        if spis == 0 {
            return freed;
        }
        let empty = lrs.elrsr() & occupied;
        for i in BitIter(spis) {
            let i = i as usize;
            let Some(intid) = self.cpus[vcpu].lrs[i] else {
                continue;
            };
            let state = if empty & (1 << i) != 0 {
                0
            } else {
                lr_state(lrs.read(i))
            };
            match self.lr_irq(vcpu, i, intid) {
                Some(irq) if state != 0 => irq.lr_state = state,
                _ => {
                    self.free_lr(vcpu, i);
                    freed = true;
                }
            }
        }
        freed
    }

    /// Apply what happened since the interrupt entered LR `i` (see module docs).
    fn reconcile(&mut self, vcpu: usize, i: usize, lrs: &mut impl ListRegs) {
        let Some(intid) = self.cpus[vcpu].lrs[i] else {
            return;
        };
        let grp1 = self.grp1;
        // A redistributor asleep (GICR_WAKER) releases what is pending at the CPU interface.
        let asleep = self.cpus[vcpu].asleep();
        let old = lrs.read(i);
        let Some(irq) = self.lr_irq(vcpu, i, intid) else {
            self.free_lr(vcpu, i);
            return;
        };
        let mut state = lr_state(old);
        if irq.clear_active_req() {
            irq.set_clear_active_req(false);
            state &= !LR_STATE_ACTIVE;
        }
        if irq.clear_pending_req() {
            irq.set_clear_pending_req(false);
            state &= !LR_STATE_PENDING;
        }
        let allowed = grp1 && irq.group1() && irq.enabled() && !asleep;
        if state == LR_STATE_PENDING && !allowed {
            // Not yet acknowledged and no longer signalled: take it back. An edge (or
            // hardware) interrupt stays pending in software; a level one follows its line.
            state = 0;
            irq.latch_if(irq.trigger == Trigger::Edge || irq.hw.is_some());
        }
        if irq.latch() && allowed {
            if state & LR_STATE_PENDING != 0 {
                irq.set_latch(false); // merges with the pending copy already in the LR
            } else if state == LR_STATE_ACTIVE && irq.hw.is_none() && irq.trigger == Trigger::Edge {
                state |= LR_STATE_PENDING;
                irq.set_latch(false);
            }
        }
        // With a latch still waiting, or the interrupt no longer allowed, a later reconcile
        // may act once the guest moves the LR's state (say pending+active → pending) even
        // though nobody touches the interrupt: keep the LR on the list.
        let again = irq.latch() || !allowed;
        if state == 0 {
            self.free_lr(vcpu, i);
            return;
        }
        if state != lr_state(old) {
            irq.lr_state = state;
            lrs.write(i, with_state(old, state));
        }
        if again {
            self.cpus[vcpu].dirty |= 1 << i;
        }
    }

    /// Put deliverable interrupt `intid` into LR `i` of `vcpu`.
    fn place(&mut self, vcpu: usize, i: usize, intid: u32, lrs: &mut impl ListRegs) {
        let Some(irq) = self.irq_mut(vcpu, intid) else {
            return;
        };
        // Entering the LR stands for acknowledgement: it consumes the edge latch (and a
        // level interrupt's software-pending state; its line keeps it pending if high).
        irq.set_latch(false);
        irq.lr = Some(i as u8);
        irq.lr_vcpu = vcpu as u8;
        irq.lr_state = LR_STATE_PENDING;
        lrs.write(i, encode(intid, irq));
        let cpu = &mut self.cpus[vcpu];
        cpu.lrs[i] = Some(intid);
        cpu.occupied |= 1 << i;
        cpu.dirty &= !(1 << i);
        cpu.unzeroed &= !(1 << i);
        cpu.clear_pend(intid);
    }

    /// The occupied LR still only pending with the lowest priority worse than `prio`.
    fn eviction_victim(&self, vcpu: usize, n: usize, prio: u8) -> Option<usize> {
        let mut victim: Option<(u8, usize)> = None;
        for i in BitIter(u32::from(self.cpus[vcpu].occupied & lr_mask(n))) {
            let i = i as usize;
            let Some(intid) = self.cpus[vcpu].lrs[i] else {
                continue;
            };
            let Some(irq) = self.irq(vcpu, intid) else {
                continue;
            };
            let p = irq.priority & LR_PRIORITY_MASK;
            if irq.lr_state == LR_STATE_PENDING && p > prio && victim.is_none_or(|(vp, _)| p > vp) {
                victim = Some((p, i));
            }
        }
        victim.map(|(_, i)| i)
    }

    /// Drop stale `pend` bits of `vcpu`; returns how many interrupts are deliverable to it
    /// and the best one's key.
    fn prune(&mut self, vcpu: usize) -> (usize, u32) {
        let mut count = 0;
        let mut first = u32::MAX;
        // `vcpu` is one `flush_cpu` checked; `w` is below 32, the number of `pend` words.
        let Some(mut words) = self.cpus.get(vcpu).map(|c| c.pend_words) else {
            return (count, first);
        };
        while words != 0 {
            let w = words.trailing_zeros();
            words &= words - 1;
            let Some(&bits) = self.cpus.get(vcpu).and_then(|c| c.pend.get(w as usize)) else {
                continue;
            };
            let mut live = bits;
            for b in BitIter(bits) {
                let intid = w * 32 + b;
                match self.irq(vcpu, intid) {
                    Some(irq) if self.deliverable_to(vcpu, intid) => {
                        count += 1;
                        first = first.min(key(intid, irq));
                    }
                    _ => live &= !(1 << b),
                }
            }
            if let Some(cpu) = self.cpus.get_mut(vcpu) {
                if let Some(word) = cpu.pend.get_mut(w as usize) {
                    *word = live;
                }
                if live == 0 {
                    cpu.pend_words &= !(1 << w);
                }
            }
        }
        (count, first)
    }

    /// The best `keep` deliverable interrupts of `vcpu` (after `prune`: every bit is live).
    fn best(&self, vcpu: usize, keep: usize) -> Best {
        let mut best = Best::new();
        let cpu = &self.cpus[vcpu];
        for w in BitIter(cpu.pend_words) {
            for b in BitIter(cpu.pend[w as usize]) {
                let intid = w * 32 + b;
                if let Some(irq) = self.irq(vcpu, intid) {
                    best.offer(key(intid, irq), keep);
                }
            }
        }
        best
    }

    /// Put the interrupt with `key` into a free LR, or in place of a worse pending-only one.
    /// Returns `None` when neither exists, else whether it evicted.
    fn fill(&mut self, vcpu: usize, n: usize, key: u32, lrs: &mut impl ListRegs) -> Option<bool> {
        let (prio, intid) = ((key >> 16) as u8, key & 0xffff);
        // `vcpu` is one `flush_cpu` checked: no LR to fill were it not.
        let free = !self.cpus.get(vcpu)?.occupied & lr_mask(n);
        let (slot, evicted) = if free != 0 {
            (free.trailing_zeros() as usize, false)
        } else {
            let i = self.eviction_victim(vcpu, n, prio)?;
            self.evict(vcpu, i);
            (i, true)
        };
        self.place(vcpu, slot, intid, lrs);
        Some(evicted)
    }

    /// Sync, reconcile, resample, fill. Returns whether any LR is left occupied.
    pub fn flush_cpu(&mut self, vcpu: usize, pcpu: &mut impl PhysCpu) -> bool {
        let Some(n) = self.sync_and_reconcile(vcpu, &mut pcpu.list_regs()) else {
            return false;
        };
        self.resample_hw_lines(vcpu, pcpu);
        let mut lrs = pcpu.list_regs();
        let lrs = &mut lrs;

        // Best first, as many as there are LRs (one candidate needs no sorting).
        let grp1 = self.grp1;
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return false;
        };
        // Asleep (GICR_WAKER): the redistributor forwards nothing; the index keeps it.
        let (total, placed, evicted) = if cpu.pend_words == 0 || cpu.asleep() {
            (0, 0, false)
        } else if cpu.pend_words == 1 && cpu.pend[0].is_power_of_two() {
            match cpu.fill_private(vcpu, n, grp1, lrs) {
                Some(counts) => counts,
                // No free LR: the general path decides whether to evict.
                None => self.fill_all(vcpu, n, lrs),
            }
        } else {
            self.fill_all(vcpu, n, lrs)
        };

        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return false;
        };
        cpu.zero_freed(lrs);
        let overflow = evicted || total > placed;
        lrs.set_hcr(HCR_EN | if overflow { HCR_UIE } else { 0 });
        cpu.occupied & lr_mask(n) != 0
    }

    /// `flush_cpu` in its most frequent states after the guest took an interrupt: every
    /// occupied LR holds a private interrupt, and nothing else is waiting, dirty or held.
    /// LRs the guest has finished (ICH_ELRSR_EL2) are freed and zeroed, provided their
    /// interrupt will not be pending once out (it would be a candidate to place); the
    /// others (still active: an SGI sent from inside a handler) get their state read
    /// back. ICH_HCR_EL2 is written as `flush_cpu` would, without its general sync,
    /// reconcile and fill. `Some(whether an LR is left occupied)` when done, `None`,
    /// with nothing changed, in any other state.
    #[inline(always)]
    pub(super) fn flush_quiet(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> Option<bool> {
        let grp1 = self.grp1;
        let cpu = self.cpus.get_mut(vcpu)?;
        let occupied = cpu.occupied;
        if cpu.hold != 0 || cpu.dirty != 0 || cpu.pend_words != 0 || occupied & !lrs.mask() != 0 {
            return None;
        }
        if occupied == 1 {
            return Self::flush_quiet_lr0(cpu, grp1, lrs);
        }
        let finished = occupied & lrs.elrsr();
        // Looked at first, changed after: a decline leaves everything as it was. The
        // state of each LR the guest still holds, 2 bits per LR.
        let mut held = 0u32;
        for i in BitIter(u32::from(occupied)) {
            let i = i as usize % MAX_LRS;
            let state = if finished & (1 << i) == 0 {
                lr_state(lrs.read(i))
            } else {
                0
            };
            let quiet = cpu.lrs[i].is_some_and(|intid| {
                let irq = &cpu.private[intid as usize % NR_PRIVATE];
                // Not empty, yet in no state: a level interrupt's EOI waiting for its
                // maintenance interrupt, which the general sync frees and may refill.
                let settled = if finished & (1 << i) == 0 {
                    state != 0
                } else {
                    !irq.deliverable_once_out(grp1)
                };
                intid < SPI_BASE && irq.lr == Some(i as u8) && settled
            });
            if !quiet {
                return None;
            }
            held |= u32::from(state) << (2 * i);
        }
        for i in BitIter(u32::from(occupied)) {
            let i = i as usize % MAX_LRS;
            let Some(intid) = cpu.lrs[i] else {
                continue;
            };
            let irq = &mut cpu.private[intid as usize % NR_PRIVATE];
            if finished & (1 << i) == 0 {
                irq.lr_state = (held >> (2 * i)) as u8 & 0b11;
                continue;
            }
            irq.lr = None;
            irq.lr_state = 0;
            irq.drop_clear_reqs();
            cpu.lrs[i] = None;
            lrs.write(i, 0);
        }
        cpu.occupied = occupied & !finished;
        lrs.set_hcr(HCR_EN);
        Some(cpu.occupied != 0)
    }

    /// [`Self::flush_quiet`] when LR 0 is the only occupied one, as it is at nearly every
    /// exit after an interrupt (both exits of a hand-over between two vCPUs): the same
    /// checks and the same outcome as the loops, without them, and LR 0 reached
    /// directly rather than through an index.
    #[inline(always)]
    fn flush_quiet_lr0(cpu: &mut CpuState, grp1: bool, lrs: &mut impl ListRegs) -> Option<bool> {
        let intid = cpu.lrs[0].filter(|&intid| intid < SPI_BASE)?;
        let irq = &mut cpu.private[intid as usize % NR_PRIVATE];
        if irq.lr != Some(0) {
            return None;
        }
        if lrs.elrsr() & 1 == 0 {
            // Still held by the guest: its state read back.
            let state = lr_state(lrs.read(0));
            if state == 0 {
                return None;
            }
            irq.lr_state = state;
        } else {
            // Finished: freed, unless its interrupt is pending again once out.
            if irq.deliverable_once_out(grp1) {
                return None;
            }
            irq.lr = None;
            irq.lr_state = 0;
            irq.drop_clear_reqs();
            cpu.lrs[0] = None;
            cpu.occupied = 0;
            lrs.write(0, 0);
        }
        lrs.set_hcr(HCR_EN);
        Some(cpu.occupied != 0)
    }

    /// `flush_cpu` when the vCPU's LRs are empty and one private interrupt, not
    /// hardware-linked, is all that waits for it: the state of a vCPU woken by an SGI
    /// while off its CPU. Places it in LR 0 as `fill_private` would. True when done (an
    /// LR is left occupied); false, with nothing changed, in any other state.
    #[inline(always)]
    pub(super) fn place_lone_private(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> bool {
        let grp1 = self.grp1;
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return false;
        };
        if cpu.occupied != 0 || cpu.hold != 0 || cpu.pend_words != 1 {
            return false;
        }
        let waiting = cpu.pend[0];
        let intid = waiting.trailing_zeros();
        let irq = &cpu.private[intid as usize % NR_PRIVATE];
        // (A dirty LR is an occupied one, and hardware-linked PPIs are resampled first.)
        if !waiting.is_power_of_two() || irq.hw.is_some() || !irq.deliverable(grp1) {
            return false;
        }
        cpu.place_private(vcpu, 0, intid, lrs);
        cpu.pend[0] = 0;
        cpu.pend_words = 0;
        lrs.set_hcr(HCR_EN);
        true
    }

    /// The first half of `flush_cpu`: wipe stale LRs, sync, reconcile the dirty ones.
    /// Returns how many LRs are used, `None` for a vCPU outside the VM.
    fn sync_and_reconcile(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> Option<usize> {
        let n = lrs.count().min(MAX_LRS);
        let cpu = self.cpus.get_mut(vcpu)?;
        if cpu.take_wipe_lrs() {
            for i in 0..n {
                lrs.write(i, 0);
            }
        }
        // `hyp` has usually just synced: with no LR left occupied there is nothing to read.
        if cpu.occupied != 0 {
            self.sync_lrs(vcpu, lrs);
        }
        let cpu = self.cpus.get_mut(vcpu)?;
        let dirty = core::mem::take(&mut cpu.dirty) & cpu.occupied & lr_mask(n);
        if dirty != 0 {
            for i in BitIter(u32::from(dirty)) {
                self.reconcile(vcpu, i as usize, lrs);
            }
        }
        Some(n)
    }

    /// Hardware-linked level PPIs of `vcpu` about to be offered from software go in only
    /// while their source still asserts them (see the module doc): ask, and drop those
    /// it no longer does. Only PPIs indexed as deliverable can be placed by this flush;
    /// one that is not (disabled) is asked when it becomes deliverable, which flushes.
    /// A software ISPENDR on such a PPI is lost with it, as for a withdrawn level
    /// interrupt.
    fn resample_hw_lines(&mut self, vcpu: usize, pcpu: &mut impl PhysCpu) {
        let Some(cpu) = self.cpus.get_mut(vcpu) else {
            return;
        };
        let ppis = cpu.pend[0] & PPI_BITS;
        if ppis == 0 {
            return;
        }
        for intid in BitIter(ppis) {
            let irq = &mut cpu.private[intid as usize % NR_PRIVATE];
            let Some(pintid) = irq.hw else {
                continue;
            };
            if irq.trigger == Trigger::Level
                && irq.latch()
                && irq.lr.is_none()
                && !pcpu.line_high(pintid)
            {
                irq.set_latch(false);
                cpu.clear_pend(intid);
            }
        }
        if cpu.pend[0] == 0 {
            cpu.pend_words &= !1;
        }
    }

    /// Prune the `pend` index and fill LRs with the best candidates. Returns how many
    /// were deliverable, how many were placed, and whether any LR was evicted.
    fn fill_all(&mut self, vcpu: usize, n: usize, lrs: &mut impl ListRegs) -> (usize, usize, bool) {
        let (total, first) = self.prune(vcpu);
        let mut placed = 0;
        let mut evicted = false;
        if total == 1 && n > 0 {
            if let Some(e) = self.fill(vcpu, n, first, lrs) {
                evicted = e;
                placed = 1;
            }
        } else if total > 1 {
            let best = self.best(vcpu, n);
            for &key in &best.items[..best.len] {
                match self.fill(vcpu, n, key, lrs) {
                    Some(e) => evicted |= e,
                    None => break,
                }
                placed += 1;
            }
        }
        (total, placed, evicted)
    }

    /// Return a pending-only LR's interrupt to software to make room for a better one.
    fn evict(&mut self, vcpu: usize, i: usize) {
        if let Some(intid) = self.cpus[vcpu].lrs[i] {
            if let Some(irq) = self.lr_irq(vcpu, i, intid) {
                irq.latch_if(irq.trigger == Trigger::Edge || irq.hw.is_some());
            }
        }
        self.free_lr(vcpu, i);
    }

    /// Whether `vcpu` has an interrupt to take: deliverable in software or pending in an LR.
    /// One its redistributor holds while asleep (GICR_WAKER) counts: that is the
    /// WakeRequest a sleeping PE's power controller gets, so a vCPU suspended with its
    /// redistributor asleep is woken (a WFI may end for any reason).
    pub fn has_pending_cpu(&self, vcpu: usize) -> bool {
        let Some(cpu) = self.cpus.get(vcpu) else {
            return false;
        };
        let in_lr = BitIter(u32::from(cpu.occupied)).any(|i| {
            cpu.lrs[i as usize].is_some_and(|intid| {
                self.irq(vcpu, intid)
                    .is_some_and(|irq| irq.lr_state & LR_STATE_PENDING != 0)
            })
        });
        in_lr || self.candidates(vcpu).next().is_some()
    }
}

impl CpuState {
    /// Sync those of the `occupied` LRs that hold private interrupts. Returns whether
    /// any was freed, and the other occupied LRs (SPIs: the caller's, with the whole
    /// model at hand).
    #[inline(always)]
    fn sync_private_lrs(
        &mut self,
        vcpu: usize,
        occupied: u16,
        grp1: bool,
        lrs: &mut impl ListRegs,
    ) -> (bool, u32) {
        let empty = lrs.elrsr() & occupied;
        let mut freed = false;
        let mut others = 0u32;
        for i in BitIter(u32::from(occupied)) {
            let i = i as usize % MAX_LRS;
            match self.lrs[i] {
                Some(intid) if intid < SPI_BASE => {
                    let state = if empty & (1 << i) != 0 {
                        0
                    } else {
                        lr_state(lrs.read(i))
                    };
                    freed |= self.sync_private(vcpu, i, intid, state, grp1);
                }
                _ => others |= 1 << i,
            }
        }
        (freed, others)
    }

    /// Sync LR `i`, which the shadow says holds private interrupt `intid`, from its
    /// hardware `state`: `State::sync_lrs` + `free_lr` for the interrupts this vCPU owns.
    /// Returns whether the LR was freed.
    #[inline(always)]
    fn sync_private(&mut self, vcpu: usize, i: usize, intid: u32, state: u8, grp1: bool) -> bool {
        let irq = &mut self.private[intid as usize % NR_PRIVATE];
        // A private interrupt only ever enters its own vCPU's LRs (`lr_vcpu` is `vcpu`).
        debug_assert!(irq.lr.is_none() || usize::from(irq.lr_vcpu) == vcpu);
        if irq.lr == Some(i as u8) {
            if state != 0 {
                irq.lr_state = state;
                return false;
            }
            irq.lr = None;
            irq.lr_state = 0;
            irq.drop_clear_reqs();
            if irq.deliverable(grp1) {
                self.set_pend(intid);
            }
        }
        // (An inconsistent claim frees the LR and leaves the interrupt alone.)
        let bit = 1 << (i % MAX_LRS);
        self.lrs[i % MAX_LRS] = None;
        self.occupied &= !bit;
        self.dirty &= !bit;
        self.unzeroed |= bit;
        true
    }

    /// [`State::reraise_in_lr0`] within the vCPU: LR 0 is the only occupied LR, it holds `intid`
    /// itself, and the guest is done with it (ICH_ELRSR_EL2 says it is empty): the steady
    /// state of a vCPU that keeps sending itself one SGI, or of its timer. Syncing would
    /// free LR 0 and placing would take the first free LR, LR 0 again, so the new
    /// instance is written over the finished one and the shadow keeps its entry. False,
    /// with nothing changed, in any other state (and when `intid` is not deliverable).
    #[inline(always)]
    fn reraise_in_lr0(
        &mut self,
        intid: u32,
        hw: Option<u32>,
        grp1: bool,
        lrs: &mut impl ListRegs,
    ) -> bool {
        let irq = &mut self.private[intid as usize % NR_PRIVATE];
        // A private interrupt that claims LR 0 is what the shadow says LR 0 holds
        // (`place_private` and `place` set both, freeing clears both; the vGIC's
        // property tests check it after every step).
        let finished_in_lr0 = irq.lr == Some(0) && lrs.elrsr() & 1 != 0;
        debug_assert!(!finished_in_lr0 || self.lrs[0] == Some(intid));
        // What `deliverable` asks once the instance has left the LR (the edge this call
        // latches makes it pending).
        let deliverable = grp1 && irq.enabled_and_idle();
        if !(finished_in_lr0 && deliverable) {
            return false;
        }
        if hw.is_some() {
            irq.hw = hw;
        }
        irq.lr_state = LR_STATE_PENDING;
        irq.drop_clear_reqs();
        lrs.write(0, encode(intid, irq));
        lrs.set_hcr(HCR_EN);
        true
    }

    /// The end of `State::raise_private_fast`, after the sync: latch
    /// private `intid` and, if deliverable, place it in the first free LR; then finish as
    /// `flush_cpu` does. `None`, with nothing changed, when the general path must decide
    /// (other candidates to rank, the interrupt still in an LR, no LR free).
    #[inline(always)]
    fn raise_into_free_lr(
        &mut self,
        vcpu: usize,
        implemented: u16,
        grp1: bool,
        intid: u32,
        hw: Option<u32>,
        lrs: &mut impl ListRegs,
    ) -> Option<bool> {
        let free = !self.occupied & implemented;
        let irq = &mut self.private[intid as usize % NR_PRIVATE];
        if self.pend_words != 0 || irq.lr.is_some() || free == 0 {
            return None;
        }
        if hw.is_some() {
            irq.hw = hw;
        }
        irq.set_latch(true);
        if irq.deliverable(grp1) {
            self.place_private(vcpu, free.trailing_zeros() as usize, intid, lrs);
        }
        self.zero_freed(lrs);
        lrs.set_hcr(HCR_EN);
        Some(self.occupied & implemented != 0)
    }

    /// `prune` + `fill` when the only candidate is one private interrupt (an SGI, the
    /// timer) and an LR is free: the same outcome, without the general scan. Returns
    /// (deliverable, placed, evicted) as `fill_all` does, or `None` when every LR is
    /// taken (eviction is the general path's decision).
    #[inline]
    fn fill_private(
        &mut self,
        vcpu: usize,
        n: usize,
        grp1: bool,
        lrs: &mut impl ListRegs,
    ) -> Option<(usize, usize, bool)> {
        let intid = self.pend[0].trailing_zeros();
        let irq = &mut self.private[intid as usize % NR_PRIVATE];
        if !irq.deliverable(grp1) {
            self.pend[0] = 0;
            self.pend_words = 0;
            return Some((0, 0, false));
        }
        let free = !self.occupied & lr_mask(n);
        if free == 0 {
            return None;
        }
        self.place_private(vcpu, free.trailing_zeros() as usize, intid, lrs);
        self.pend[0] = 0;
        self.pend_words = 0;
        Some((1, 1, false))
    }

    /// Put deliverable private interrupt `intid` into free LR `i`: `State::place`
    /// within this vCPU's state.
    #[inline(always)]
    fn place_private(&mut self, vcpu: usize, i: usize, intid: u32, lrs: &mut impl ListRegs) {
        let i = i % MAX_LRS;
        let irq = &mut self.private[intid as usize % NR_PRIVATE];
        // Entering the LR stands for acknowledgement: it consumes the edge latch.
        irq.set_latch(false);
        irq.lr = Some(i as u8);
        irq.lr_vcpu = vcpu as u8;
        irq.lr_state = LR_STATE_PENDING;
        lrs.write(i, encode(intid, irq));
        let bit = 1 << i;
        self.lrs[i] = Some(intid);
        self.occupied |= bit;
        // (A free LR is never dirty: only occupied ones are marked, and freeing clears.)
        debug_assert_eq!(self.dirty & bit, 0);
        self.unzeroed &= !bit;
    }

    /// Zero the hardware LRs freed since the last call and not reused.
    #[inline]
    fn zero_freed(&mut self, lrs: &mut impl ListRegs) {
        for i in BitIter(u32::from(core::mem::take(&mut self.unzeroed))) {
            lrs.write(i as usize, 0);
        }
    }
}

/// A physical CPU's list registers plus the guest's view of them, for tests (the vGIC's
/// and `FakeArch`'s).
#[cfg(any(test, feature = "std"))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeListRegs {
    pub lr: alloc::vec::Vec<u64>,
    pub hcr: u64,
    /// Physical INTIDs whose hardware-linked source no longer asserts its level.
    pub low_lines: alloc::vec::Vec<u32>,
    /// Every [`PhysCpu::line_high`] asked, in order.
    pub lines_asked: alloc::vec::Vec<u32>,
}

#[cfg(any(test, feature = "std"))]
impl FakeListRegs {
    pub fn new(n: usize) -> FakeListRegs {
        FakeListRegs {
            lr: alloc::vec![0; n],
            ..FakeListRegs::default()
        }
    }

    pub fn valid(&self) -> alloc::vec::Vec<u32> {
        self.lr
            .iter()
            .filter(|&&v| lr_state(v) != 0)
            .map(|&v| (v & LR_VINTID_MASK) as u32)
            .collect()
    }

    /// The guest reads ICC_IAR1_EL1: highest-priority pending LR becomes active.
    pub fn ack(&mut self) -> Option<u32> {
        let i = (0..self.lr.len())
            .filter(|&i| lr_state(self.lr[i]) & LR_STATE_PENDING != 0)
            .filter(|&i| lr_state(self.lr[i]) & LR_STATE_ACTIVE == 0)
            .min_by_key(|&i| (self.lr[i] >> LR_PRIORITY_SHIFT) & 0xff)?;
        self.lr[i] =
            (self.lr[i] & !(0b11 << LR_STATE_SHIFT)) | u64::from(LR_STATE_ACTIVE) << LR_STATE_SHIFT;
        Some((self.lr[i] & LR_VINTID_MASK) as u32)
    }

    /// The guest writes ICC_EOIR1_EL1 (EOImode 0: drop priority and deactivate).
    pub fn eoi(&mut self, intid: u32) {
        for v in self.lr.iter_mut() {
            if (*v & LR_VINTID_MASK) as u32 == intid && lr_state(*v) & LR_STATE_ACTIVE != 0 {
                *v &= !(u64::from(LR_STATE_ACTIVE) << LR_STATE_SHIFT);
            }
        }
    }

    pub fn ack_eoi(&mut self) -> Option<u32> {
        let intid = self.ack()?;
        self.eoi(intid);
        Some(intid)
    }
}

#[cfg(any(test, feature = "std"))]
impl ListRegs for FakeListRegs {
    fn count(&self) -> usize {
        self.lr.len()
    }
    fn read(&self, i: usize) -> u64 {
        self.lr[i]
    }
    fn write(&mut self, i: usize, v: u64) {
        self.lr[i] = v;
    }
    fn elrsr(&self) -> u16 {
        (0..self.lr.len())
            .filter(|&i| lr_state(self.lr[i]) == 0 && (self.lr[i] & (LR_HW | LR_EOI)) != LR_EOI)
            .fold(0, |acc, i| acc | 1 << i)
    }
    fn eisr(&self) -> u16 {
        (0..self.lr.len())
            .filter(|&i| lr_state(self.lr[i]) == 0 && (self.lr[i] & (LR_HW | LR_EOI)) == LR_EOI)
            .fold(0, |acc, i| acc | 1 << i)
    }
    fn set_hcr(&mut self, v: u64) {
        self.hcr = v;
    }
}

#[cfg(any(test, feature = "std"))]
impl PhysCpu for FakeListRegs {
    type Lrs<'a> = &'a mut FakeListRegs;
    fn list_regs(&mut self) -> &mut FakeListRegs {
        self
    }
    fn line_high(&mut self, pintid: u32) -> bool {
        self.lines_asked.push(pintid);
        !self.low_lines.contains(&pintid)
    }
}
