//! List registers: moving interrupts between the model and the virtual CPU interface.
//!
//! The hardware (ICH_LR<n>_EL2, GICv3 spec §12.4.9 / Arm ARM) is reached through the
//! [`ListRegs`] trait, which `hyp` implements with `mrs`/`msr` and tests with a fake.
//!
//! - **sync** folds LR state back: an LR that became invalid means the guest completed
//!   (EOI/deactivated) the interrupt, so the interrupt returns to software; a level
//!   interrupt then counts as pending again exactly while its line is still high. Freed
//!   LRs are written 0 so an EOI-maintenance request (`EISR`) is cleared with them.
//! - **flush** first syncs, then *reconciles* occupied LRs with what the guest or devices
//!   did meanwhile (ICPENDR/ICACTIVER requests, disabling, a new edge), then fills free LRs
//!   with the highest-priority deliverable interrupts; if there are more than fit it may
//!   evict a lower-priority LR that is still only pending, and it sets ICH_HCR_EL2.UIE so
//!   the underflow maintenance interrupt brings us back when LRs drain.
//!
//! A withdrawn or evicted interrupt goes back to software pending if it is edge-triggered
//! or hardware-linked; a level-sensitive one is pending again only while its line is high
//! (a software ISPENDR on it is lost — an accepted approximation).
//!
//! Level-sensitive interrupts without a hardware link go in with the EOI bit, so that the
//! guest's EOI raises a maintenance interrupt and `sync` re-samples the line. An edge
//! interrupt that fires again while its LR is active is upgraded in place to
//! pending+active (as KVM does) instead of waiting for the LR to drain; a hardware-linked
//! one keeps its latch until the LR frees, because HW=1 LRs cannot be pending+active.

use super::irq::{Irq, Trigger, LR_STATE_ACTIVE, LR_STATE_PENDING};
use super::state::State;
use super::MAX_LRS;

/// The virtual CPU interface's list registers of the physical CPU running the vCPU.
pub trait ListRegs {
    /// Number of implemented LRs (ICH_VTR_EL2.ListRegs + 1); at most 16 are used.
    fn count(&self) -> usize;
    fn read(&self, i: usize) -> u64;
    fn write(&mut self, i: usize, v: u64);
    /// ICH_ELRSR_EL2: bit n set = LR n holds no interrupt (and needs no maintenance).
    fn elrsr(&self) -> u16;
    /// ICH_EISR_EL2: bit n set = LR n raised an EOI maintenance request.
    fn eisr(&self) -> u16;
    /// Write ICH_HCR_EL2.
    fn set_hcr(&mut self, v: u64);
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

/// The best `MAX_LRS` candidates by (LR priority, INTID), without allocating.
struct Best {
    items: [(u8, u32); MAX_LRS],
    len: usize,
    total: usize,
}

impl Best {
    fn new() -> Best {
        Best {
            items: [(0, 0); MAX_LRS],
            len: 0,
            total: 0,
        }
    }

    fn offer(&mut self, key: (u8, u32), keep: usize) {
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

impl State {
    /// The interrupt an LR of `vcpu` claims to hold, if the claim is consistent.
    fn lr_irq(&mut self, vcpu: usize, i: usize, intid: u32) -> Option<&mut Irq> {
        self.irq_mut(vcpu, intid)
            .filter(|irq| irq.lr == Some(i as u8) && usize::from(irq.lr_vcpu) == vcpu)
    }

    /// Forget LR `i` of `vcpu` (and zero the hardware register).
    fn free_lr(&mut self, vcpu: usize, i: usize, lrs: &mut impl ListRegs) {
        if let Some(intid) = self.cpus[vcpu].lrs[i].take() {
            if let Some(irq) = self.lr_irq(vcpu, i, intid) {
                irq.lr = None;
                irq.lr_state = 0;
                irq.clear_pending_req = false;
                irq.clear_active_req = false;
            }
        }
        lrs.write(i, 0);
    }

    /// Fold LR state back into the model. Returns whether any LR was freed.
    pub fn sync_cpu(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> bool {
        if vcpu >= self.nr_vcpus || self.cpus[vcpu].wipe_lrs {
            return false;
        }
        let n = lrs.count().min(MAX_LRS);
        let empty = lrs.elrsr();
        let mut freed = false;
        for i in 0..n {
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
                    self.free_lr(vcpu, i, lrs);
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
        let old = lrs.read(i);
        let Some(irq) = self.lr_irq(vcpu, i, intid) else {
            self.free_lr(vcpu, i, lrs);
            return;
        };
        let mut state = lr_state(old);
        if core::mem::take(&mut irq.clear_active_req) {
            state &= !LR_STATE_ACTIVE;
        }
        if core::mem::take(&mut irq.clear_pending_req) {
            state &= !LR_STATE_PENDING;
        }
        let allowed = grp1 && irq.group1 && irq.enabled;
        if state == LR_STATE_PENDING && !allowed {
            // Not yet acknowledged and no longer signalled: take it back. An edge (or
            // hardware) interrupt stays pending in software; a level one follows its line.
            state = 0;
            irq.latch |= irq.trigger == Trigger::Edge || irq.hw.is_some();
        }
        if irq.latch && allowed {
            if state & LR_STATE_PENDING != 0 {
                irq.latch = false; // merges with the pending copy already in the LR
            } else if state == LR_STATE_ACTIVE && irq.hw.is_none() && irq.trigger == Trigger::Edge {
                state |= LR_STATE_PENDING;
                irq.latch = false;
            }
        }
        if state == 0 {
            self.free_lr(vcpu, i, lrs);
        } else if state != lr_state(old) {
            irq.lr_state = state;
            lrs.write(i, with_state(old, state));
        }
    }

    /// Put deliverable interrupt `intid` into LR `i` of `vcpu`.
    fn place(&mut self, vcpu: usize, i: usize, intid: u32, lrs: &mut impl ListRegs) {
        let Some(irq) = self.irq_mut(vcpu, intid) else {
            return;
        };
        // Entering the LR stands for acknowledgement: it consumes the edge latch (and a
        // level interrupt's software-pending state; its line keeps it pending if high).
        irq.latch = false;
        irq.lr = Some(i as u8);
        irq.lr_vcpu = vcpu as u8;
        irq.lr_state = LR_STATE_PENDING;
        lrs.write(i, encode(intid, irq));
        self.cpus[vcpu].lrs[i] = Some(intid);
    }

    /// The occupied LR still only pending with the lowest priority worse than `prio`.
    fn eviction_victim(&self, vcpu: usize, n: usize, prio: u8) -> Option<usize> {
        let mut victim: Option<(u8, usize)> = None;
        for i in 0..n {
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

    /// Sync, reconcile, fill. Returns whether any LR is left occupied.
    pub fn flush_cpu(&mut self, vcpu: usize, lrs: &mut impl ListRegs) -> bool {
        if vcpu >= self.nr_vcpus {
            return false;
        }
        let n = lrs.count().min(MAX_LRS);
        if core::mem::take(&mut self.cpus[vcpu].wipe_lrs) {
            for i in 0..n {
                lrs.write(i, 0);
            }
        }
        self.sync_cpu(vcpu, lrs);
        for i in 0..n {
            self.reconcile(vcpu, i, lrs);
        }

        let mut best = Best::new();
        for (intid, irq) in self.candidates(vcpu) {
            best.offer((irq.priority & LR_PRIORITY_MASK, intid), n);
        }
        let mut placed = 0;
        let mut evicted = false;
        for &(prio, intid) in &best.items[..best.len] {
            let slot = (0..n).find(|&i| self.cpus[vcpu].lrs[i].is_none());
            let slot = match slot {
                Some(i) => i,
                None => match self.eviction_victim(vcpu, n, prio) {
                    Some(i) => {
                        self.evict(vcpu, i, lrs);
                        evicted = true;
                        i
                    }
                    None => break,
                },
            };
            self.place(vcpu, slot, intid, lrs);
            placed += 1;
        }

        let overflow = evicted || best.total > placed;
        lrs.set_hcr(HCR_EN | if overflow { HCR_UIE } else { 0 });
        self.cpus[vcpu].lrs[..n].iter().any(Option::is_some)
    }

    /// Return a pending-only LR's interrupt to software to make room for a better one.
    fn evict(&mut self, vcpu: usize, i: usize, lrs: &mut impl ListRegs) {
        if let Some(intid) = self.cpus[vcpu].lrs[i] {
            if let Some(irq) = self.lr_irq(vcpu, i, intid) {
                irq.latch |= irq.trigger == Trigger::Edge || irq.hw.is_some();
            }
        }
        self.free_lr(vcpu, i, lrs);
    }

    /// Whether `vcpu` has an interrupt to take: deliverable in software or pending in an LR.
    pub fn has_pending_cpu(&self, vcpu: usize) -> bool {
        let Some(cpu) = self.cpus.get(vcpu) else {
            return false;
        };
        let in_lr = cpu.lrs.iter().flatten().any(|&intid| {
            self.irq(vcpu, intid)
                .is_some_and(|irq| irq.lr_state & LR_STATE_PENDING != 0)
        });
        in_lr || self.candidates(vcpu).next().is_some()
    }
}
