//! # The virtual GICv3
//!
//! One [`VGic`] per VM. The guest drives an emulated distributor (GICD) and one
//! redistributor (GICR) per vCPU through trapped MMIO, sends SGIs by writing
//! `ICC_SGI1R_EL1` (trapped), and takes/acknowledges/EOIs interrupts through the *hardware*
//! virtual CPU interface (`ICC_*` served from the `ICH_LR<n>_EL2` list registers). This
//! module is the bookkeeping between the two; `hyp` owns the instructions.
//!
//! ## Who calls what
//! - MMIO exits: [`VGic::dist_read`]/[`VGic::dist_write`] and
//!   [`VGic::redist_read`]/[`VGic::redist_write`] with the offset in the GICD window or in
//!   the whole GICR region ([`VGic::REDIST_STRIDE`] per vCPU).
//! - `ICC_SGI1R_EL1` trap: [`VGic::send_sgi`].
//! - Devices and EL2 interrupts: [`VGic::set_spi_level`] (emulated level lines such as the
//!   PL011), [`VGic::inject_hw`] (hardware-linked: virtual timer PPI 27 → physical 27,
//!   the PMU's overflow PPI 23 → physical 23).
//! - Every call that can create work returns a [`VcpuMask`]: `hyp` IPIs those vCPUs that
//!   run on other CPUs so they exit and flush.
//! - The exit path's shortcuts: [`VGic::send_sgi_local`] (an SGI the vCPU sends itself)
//!   and [`VGic::inject_hw_local`] (its timer PPI) are called by the CPU running that vCPU
//!   with its list registers, and sync, latch and flush in one pass under one lock;
//!   [`Local::flushed`] tells `hyp` the flush is done.
//! - Exit path of vCPU `v`: `if vgic.needs_flush(v) { vgic.sync(v, lrs); vgic.flush(v, pcpu) }`
//!   before the `eret`; a maintenance interrupt exit calls `sync` (flush follows as above).
//!   `flush` syncs by itself, so `flush` alone gives exactly the same result, with one
//!   lock round trip less.
//! - `WFI` trap: `sync`, then [`VGic::has_pending`] decides whether to sleep.
//!
//! ## Where state lives, and the lock
//! All interrupt state of the VM — the distributor, every redistributor, and each vCPU's
//! *shadow* of which INTID sits in which of its LRs — is in one [`spin::Mutex`]. A VM has
//! at most a handful of vCPUs, every critical section is a short scan, and MMIO/SGI traps
//! are rare next to guest execution; one lock keeps the model free of lock-ordering rules
//! (an SGI, an SPI routing change and a flush all touch two vCPUs' views at once).
//!
//! The hot path never takes it: each vCPU has one `AtomicU32` of flags, and
//! [`VGic::needs_flush`] is a single `Acquire` load of it. The flags are only ever
//! *written* with the lock held, so writers use a plain load and a `Release` store:
//! - `WORK`: something may have become deliverable to (or must be withdrawn from) this
//!   vCPU's LRs. Set (under the lock, after the state change) by whoever caused it; cleared
//!   by `flush` when it is done, still under the lock, so a concurrent change is never lost.
//! - `LRS_BUSY`: some LR holds an interrupt per our shadow. The guest completes interrupts
//!   without exiting, so while this is set each exit syncs and frees what the guest is done
//!   with; that keeps the shadow (and so `has_pending`, ISPENDR/ISACTIVER reads, and the
//!   "already in an LR" rule) at most one exit stale.
//!
//! ## What the exit path costs
//! Nothing in `sync`/`flush`/`send_sgi`/`inject_hw` scans all interrupts or all LRs; the
//! work is proportional to what changed (see the indexes in `state.rs`):
//! - `sync` looks only at LRs the shadow says are occupied; one ELRSR read tells which of
//!   them the guest has finished with, and only the others are read back.
//! - `flush` reconciles only LRs marked dirty (the interrupt was touched, or an earlier
//!   reconcile is still waiting for the guest to move the LR's state), finds candidates
//!   in the per-vCPU pending index with `trailing_zeros`, and sorts only when more than
//!   one interrupt is waiting.
//!   When the only candidate is one private interrupt (an SGI, the timer) it goes straight
//!   into the first free LR (`fill_private`), and a freed LR that is refilled in the same
//!   flush is written once, not zeroed first.
//! - Three shortcuts skip the general flush in its most frequent states, each compared
//!   with it by a differential proptest: at the end of an exit, LRs holding only private
//!   interrupts the guest finished (or still holds) are folded back directly
//!   ([`VGic::flush_after_exit`], `State::flush_quiet`); a vCPU with empty LRs and one
//!   private interrupt waiting gets it in LR 0 (`State::place_lone_private`); the self-SGI
//!   and timer paths write a new instance over the finished one still in LR 0
//!   (`State::reraise_in_lr0`).
//! - SGIs and `inject_hw` touch one interrupt and set one index bit; an SGI to one vCPU
//!   (the sender itself or another) and a PPI injection skip the target loop and mark one
//!   vCPU's flags.
//! - Reads of registers whose value never changes (GICD_TYPER/IIDR/TYPER2/STATUSR/PIDR2/
//!   CIDRn, GICR_TYPER/IIDR/PIDR2) are answered without the lock.
//!
//! The results are those of the straightforward full scan the model describes; the
//! indexes only skip work that could not change anything.
//!
//! The list registers themselves are per physical CPU and only ever touched by the CPU
//! running that vCPU (inside `flush`/`sync`), so no other vCPU can race with them; other
//! vCPUs' writes that concern an LR are recorded in the interrupt and applied by the
//! owner's next flush (see `lr.rs` and `irqregs.rs`).
//!
//! ## Model and simplifications
//! - One security state (GICD_CTLR.DS = 1), affinity routing always on (ARE = 1), no LPIs
//!   or ITS, no extended SPI/PPI ranges. Only group 1 is delivered (EnableGrp1 and
//!   IGROUPR = 1 — the reset value, as with KVM); group 0 interrupts never reach an LR.
//!   IGRPMODR/NSACR are RAZ/WI as the spec requires with DS = 1.
//! - SPI routing: IROUTER.Aff0 = vCPU index with Aff1..3 = 0; IRM = 1 ("any") → vCPU 0;
//!   other affinities route nowhere. SGIs: target index = RS * 16 + TargetList bit.
//! - Priorities: 5 bits reach the LR (`priority & 0xF8`). When more interrupts are
//!   deliverable than LRs, the best go first, a pending-only LR of lower priority may be
//!   evicted, and ICH_HCR_EL2.UIE is set. Priority masking (PMR/BPR) is the hardware's.
//! - Writes to ISPENDR/ICPENDR/ISACTIVER/ICACTIVER/ICENABLER for an interrupt sitting in
//!   an LR: ICPENDR/ICACTIVER/disable are recorded and applied to the LR at the owner's
//!   next flush (a not-yet-acknowledged LR of a disabled interrupt is withdrawn); ISPENDR
//!   latches and merges (edge: pending+active in place); ISACTIVER is ignored. Reads show
//!   software state OR'd with the LR state as of the last sync.
//! - GICR_WAKER (§12.10.28): while a vCPU's redistributor is asleep (ProcessorSleep =
//!   1, its reset value; ChildrenAsleep reads the same) nothing goes into that vCPU's
//!   LRs: SGIs, PPIs and SPIs routed to it stay pending at the redistributor, and what
//!   sits in its LRs still only pending is taken back. Waking it delivers them. A held
//!   interrupt still ends a WFI (`has_pending`), as the redistributor's WakeRequest
//!   would wake a powered-down PE.
//! - An interrupt made active by ISACTIVER (not through an LR) is not delivered until
//!   ICACTIVER clears it. A level line that drops while its LR is pending is not withdrawn;
//!   the guest may see one spurious interrupt (Linux tolerates it).
//! - Hardware-linked interrupts (`inject_hw`) keep their link (`pINTID`) for good, like
//!   KVM's timer; a second injection while the LR is still active waits for it to drain.
//!   A hardware-linked PPI is level-sensitive: one that waits in software (it fired
//!   while disabled, or was withdrawn from its LR) is resampled through
//!   [`PhysCpu::line_high`] before it goes into an LR, and dropped if its source has
//!   let go (see `lr.rs`), as KVM does for its timer.

mod access;
pub mod cpuif;
mod dist;
mod irq;
mod irqregs;
pub mod lr;
mod mask;
mod redist;
mod sgi;
mod state;
#[cfg(test)]
mod tests;

use core::sync::atomic::{AtomicU32, Ordering};

use spin::Mutex;

pub use cpuif::{CpuInterface, V3CpuIf};
pub use lr::{ListRegs, PhysCpu};
pub use mask::VcpuMask;
pub use sgi::Sgi1r;

use irq::Trigger;
use state::State;

/// SGIs are INTIDs 0-15, PPIs 16-31, SPIs from 32 (GICv3 spec §2.2).
pub const NR_SGIS: usize = 16;
pub const NR_PRIVATE: usize = 32;
pub const SPI_BASE: u32 = 32;
/// INTIDs 1020-1023 are special, so at most 988 SPIs.
pub const MAX_SPIS: u32 = 988;
/// ICH_VTR_EL2.ListRegs is 4 bits: at most 16 LRs.
pub const MAX_LRS: usize = 16;
/// The `VcpuMask` width.
pub const MAX_VCPUS: usize = 64;
const _: () = assert!(MAX_VCPUS.is_power_of_two());

/// GICD_IIDR / GICR_IIDR: ProductID 0x42 ('B'othy) [31:24], Implementer 0x43B [11:0] (the
/// JEP106 code virtual GICs conventionally report, as KVM's and QEMU's do). The product ID
/// matches none of the errata quirks in Linux's irq-gic-v3.c.
pub const IIDR_VALUE: u32 = 0x42 << 24 | 0x43B;
/// GICD_PIDR2 / GICR_PIDR2: ArchRev [7:4] = 3 (GICv3), JEDEC-assigned bit 3, JEP106 bits.
pub const PIDR2_GICV3: u32 = 0x3B;
/// CoreSight component ID registers CIDR0-3 (offsets 0xFFF0-0xFFFC).
pub const ID_CIDR: [u32; 4] = [0x0D, 0xF0, 0x05, 0xB1];

/// Per-vCPU flag bits read by `needs_flush` (see module docs). Only ever written with
/// the state lock held, so a plain load + `Release` store updates them.
const FLAG_WORK: u32 = 1 << 0;
const FLAG_LRS_BUSY: u32 = 1 << 1;

/// What a `*_local` call (an event raised by the vCPU running on this CPU) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Local {
    /// vCPUs with new work, to kick as after the plain call. May include the caller's
    /// own vCPU when it was not flushed.
    pub kicks: VcpuMask,
    /// The caller's vCPU was flushed under the same lock: its exit path need not ask
    /// `needs_flush` (work added later by another CPU comes with a kick, whose exit
    /// flushes).
    pub flushed: bool,
}

impl Local {
    const FLUSHED: Local = Local {
        kicks: VcpuMask::EMPTY,
        flushed: true,
    };

    fn not_flushed(kicks: VcpuMask) -> Local {
        Local {
            kicks,
            flushed: false,
        }
    }
}

/// A device's interrupt line: one SPI of one VM's vGIC, handed out by
/// [`VGic::spi_line`], so a device holds a line it was given instead of an SPI
/// number it assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqLine {
    intid: u32,
}

impl IrqLine {
    /// The line's INTID, as the guest's device tree names it (minus 32).
    pub fn intid(self) -> u32 {
        self.intid
    }
}

/// The virtual GICv3 of one VM, shared by all its vCPUs' physical CPUs.
pub struct VGic {
    state: Mutex<State>,
    /// Per vCPU, inline and `MAX_VCPUS` long so that the hot-path load indexes it with a
    /// mask instead of a bounds check (slots beyond `nr_vcpus` stay zero).
    flags: [AtomicU32; MAX_VCPUS],
    nr_vcpus: usize,
    nr_spis: u32,
    /// GICD_TYPER, GICD_IIDR, GICD_TYPER2 and GICD_STATUSR (offsets 0x4..=0x10),
    /// fixed at construction: a read of one is an index into this (GICD_TYPER is the
    /// most-read register: Linux and the benchmark poll it).
    dist_id: [u32; 4],
}

/// The offset of [`VGic::dist_id`]'s first register.
const DIST_ID_FIRST: u64 = dist::GICD_TYPER;

impl VGic {
    /// Size of the GICD window.
    pub const DIST_SIZE: u64 = 0x1_0000;
    /// Size of one vCPU's redistributor (RD_base + SGI_base frames).
    pub const REDIST_STRIDE: u64 = 0x2_0000;

    /// A vGIC for `nr_vcpus` vCPUs and `nr_spis` SPIs (INTIDs 32..32 + nr_spis; capped at
    /// 988; GICD_TYPER reports it rounded up to a multiple of 32).
    ///
    /// # Panics
    /// If `nr_vcpus` is 0 or above [`MAX_VCPUS`]: a configuration bug, not a guest action.
    pub fn new(nr_vcpus: usize, nr_spis: u32) -> VGic {
        assert!(
            (1..=MAX_VCPUS).contains(&nr_vcpus),
            "vGIC supports 1..={MAX_VCPUS} vCPUs"
        );
        let nr_spis = nr_spis.min(MAX_SPIS);
        VGic {
            state: Mutex::new(State::new(nr_vcpus, nr_spis)),
            flags: core::array::from_fn(|v| {
                AtomicU32::new(if v < nr_vcpus { FLAG_WORK } else { 0 })
            }),
            nr_vcpus,
            nr_spis,
            dist_id: [dist::gicd_typer(nr_spis, nr_vcpus), IIDR_VALUE, 0, 0],
        }
    }

    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    pub fn nr_spis(&self) -> u32 {
        self.nr_spis
    }

    /// The size of the whole redistributor region.
    pub fn redist_size(&self) -> u64 {
        Self::REDIST_STRIDE * self.nr_vcpus as u64
    }

    /// Record new work for the vCPUs in `mask`; returns it for the caller to kick.
    /// Call with the state lock held (see `FLAG_WORK`).
    fn mark(&self, mask: VcpuMask) -> VcpuMask {
        for vcpu in mask.iter() {
            if let Some(flags) = self.flags.get(vcpu) {
                let old = flags.load(Ordering::Relaxed);
                if old & FLAG_WORK == 0 {
                    flags.store(old | FLAG_WORK, Ordering::Release);
                }
            }
        }
        mask
    }

    /// `mark` for one vCPU that exists (the common case of a kick mask).
    #[inline]
    fn mark_one(&self, vcpu: usize) {
        if let Some(flags) = self.flags.get(vcpu) {
            let old = flags.load(Ordering::Relaxed);
            if old & FLAG_WORK == 0 {
                flags.store(old | FLAG_WORK, Ordering::Release);
            }
        }
    }

    /// A flush of `vcpu` is done (with the state lock held): its flags say only whether
    /// an LR is left occupied (WORK is cleared: whoever sets it holds the lock).
    #[inline(always)]
    fn flushed(&self, vcpu: usize, lrs_busy: bool) {
        self.set_flags(vcpu, if lrs_busy { FLAG_LRS_BUSY } else { 0 });
    }

    /// The general flush of `vcpu` (`State::flush_cpu`), with the state lock held.
    /// Returns whether an LR is left occupied.
    fn flush_general_locked(&self, st: &mut State, vcpu: usize, pcpu: &mut impl PhysCpu) -> bool {
        let busy = st.flush_cpu(vcpu, pcpu);
        self.flushed(vcpu, busy);
        busy
    }

    /// Set `vcpu`'s flags to `flags` (with the state lock held).
    fn set_flags(&self, vcpu: usize, flags: u32) {
        // `% MAX_VCPUS` (a mask): vcpu < nr_vcpus <= MAX_VCPUS already, and the exit path
        // then carries no bounds check.
        let f = &self.flags[vcpu % MAX_VCPUS];
        if f.load(Ordering::Relaxed) != flags {
            f.store(flags, Ordering::Release);
        }
    }

    /// GICD registers whose value never changes: read without the lock.
    #[inline(always)]
    fn dist_const(&self, offset: u64) -> Option<u32> {
        // GICD_TYPER..=GICD_STATUSR, word-aligned: one subtract and one test.
        let id = offset.wrapping_sub(DIST_ID_FIRST);
        if id & !0b1100 == 0 {
            return self.dist_id.get((id / 4) as usize).copied();
        }
        Some(match offset {
            dist::GICD_PIDR2 => PIDR2_GICV3,
            dist::GICD_CIDR0..=0xFFFC if offset.is_multiple_of(4) => {
                ID_CIDR[((offset - dist::GICD_CIDR0) / 4) as usize]
            }
            _ => return None,
        })
    }

    /// A GICD read by `vcpu`; never panics, unknown offsets read as zero. The constant
    /// registers are answered inline, without a call or the lock.
    #[inline(always)]
    pub fn dist_read(&self, vcpu: usize, offset: u64, size: u8) -> u64 {
        if offset >= Self::DIST_SIZE {
            return 0;
        }
        if size == 4 {
            if let Some(v) = self.dist_const(offset) {
                return u64::from(v);
            }
        }
        self.dist_read_locked(vcpu, offset, size)
    }

    #[inline(never)]
    fn dist_read_locked(&self, vcpu: usize, offset: u64, size: u8) -> u64 {
        let mut st = self.state.lock();
        access::read(&mut dist::Dist { st: &mut st, vcpu }, offset, size)
    }

    /// A GICD write by `vcpu`; returns the vCPUs with new work.
    pub fn dist_write(&self, vcpu: usize, offset: u64, size: u8, value: u64) -> VcpuMask {
        if offset >= Self::DIST_SIZE {
            return VcpuMask::EMPTY;
        }
        let mut st = self.state.lock();
        let mask = access::write(&mut dist::Dist { st: &mut st, vcpu }, offset, size, value);
        self.mark(mask)
    }

    /// Which redistributor `offset` (from the start of the GICR region) falls in.
    fn redist_frame(&self, offset: u64) -> Option<(usize, u64)> {
        let cpu = usize::try_from(offset / Self::REDIST_STRIDE).ok()?;
        (cpu < self.nr_vcpus).then_some((cpu, offset % Self::REDIST_STRIDE))
    }

    /// A GICR read; the redistributor is chosen by the offset, not by the accessing vCPU.
    pub fn redist_read(&self, _vcpu: usize, offset: u64, size: u8) -> u64 {
        let Some((cpu, off)) = self.redist_frame(offset) else {
            return 0;
        };
        // The identification registers, and GICR_TYPER, never change: no lock.
        match (off, size) {
            (redist::GICR_TYPER, 8) => return redist::gicr_typer(cpu, self.nr_vcpus),
            (redist::GICR_TYPER, 4) => return redist::gicr_typer(cpu, self.nr_vcpus) & 0xffff_ffff,
            (redist::GICR_TYPER_HI, 4) => return redist::gicr_typer(cpu, self.nr_vcpus) >> 32,
            (redist::GICR_IIDR, 4) => return u64::from(IIDR_VALUE),
            (redist::GICR_PIDR2, 4) => return u64::from(PIDR2_GICV3),
            _ => {}
        }
        let mut st = self.state.lock();
        access::read(&mut redist::Redist { st: &mut st, cpu }, off, size)
    }

    /// A GICR write; returns the vCPUs with new work.
    pub fn redist_write(&self, _vcpu: usize, offset: u64, size: u8, value: u64) -> VcpuMask {
        let Some((cpu, off)) = self.redist_frame(offset) else {
            return VcpuMask::EMPTY;
        };
        let mut st = self.state.lock();
        let mask = access::write(&mut redist::Redist { st: &mut st, cpu }, off, size, value);
        self.mark(mask)
    }

    /// The guest on `from_vcpu` wrote `icc_sgi1r` to ICC_SGI1R_EL1.
    pub fn send_sgi(&self, from_vcpu: usize, icc_sgi1r: u64) -> VcpuMask {
        let sgi = Sgi1r::decode(icc_sgi1r);
        let targets = sgi.targets(from_vcpu, self.nr_vcpus);
        if targets.is_empty() {
            return VcpuMask::EMPTY;
        }
        let mut st = self.state.lock();
        if targets.0.is_power_of_two() {
            // One target (the usual IPI): one interrupt, no target loop.
            let target = targets.0.trailing_zeros() as usize;
            let kick = st.raise_private(target, sgi.intid);
            if kick == targets {
                self.mark_one(target);
                return kick;
            }
            return self.mark(kick);
        }
        let mut kick = VcpuMask::EMPTY;
        for vcpu in targets.iter() {
            kick |= st.raise_private(vcpu, sgi.intid);
        }
        self.mark(kick)
    }

    /// `send_sgi` as a call, so that `send_sgi_local`'s own case needs no registers
    /// saved for its target loop.
    #[inline(never)]
    fn send_sgi_out_of_line(&self, from_vcpu: usize, icc_sgi1r: u64) -> VcpuMask {
        self.send_sgi(from_vcpu, icc_sgi1r)
    }

    /// `send_sgi` from the vCPU that runs on `pcpu` (this CPU), for the exit path. An SGI to itself goes straight into an LR: sync, latch
    /// and flush under one lock, where `send_sgi` + `flush` would take it twice. Returns
    /// what to kick and whether `from_vcpu` was flushed (see [`Local`]).
    #[inline(always)]
    pub fn send_sgi_local(
        &self,
        from_vcpu: usize,
        icc_sgi1r: u64,
        pcpu: &mut impl PhysCpu,
    ) -> Local {
        if !Sgi1r::only_to_self(icc_sgi1r, from_vcpu, self.nr_vcpus) {
            return Local::not_flushed(self.send_sgi_out_of_line(from_vcpu, icc_sgi1r));
        }
        self.raise_and_flush::<true>(from_vcpu, Sgi1r::decode(icc_sgi1r).intid, None, pcpu);
        Local::FLUSHED
    }

    /// Latch private interrupt `intid` of `vcpu` (optionally hardware-linked to
    /// `phys_intid`) and flush `vcpu`'s LRs, under one lock. Folding the LRs back first
    /// means an earlier instance the guest has completed is out of its LR before the
    /// new edge arrives, so the edge is simply pending, not a dirty LR to reconcile.
    ///
    /// `REUSE_FIRST`: try [`State::reraise_in_lr0`] alone first and leave the rest to
    /// a call, which keeps the quickest case free of saved registers (`sgi_self`: 5
    /// instructions) but costs the other cases the call (the timer that wakes an idle
    /// vCPU, which finds its LRs empty: ~35). So SGIs to self take it, the timer not.
    #[inline(always)]
    fn raise_and_flush<const REUSE_FIRST: bool>(
        &self,
        vcpu: usize,
        intid: u32,
        phys_intid: Option<u32>,
        pcpu: &mut impl PhysCpu,
    ) {
        let mut st = self.state.lock();
        // Everyone who sets WORK holds the lock, so this flush covers it all. No other
        // candidate waits on this path, so no hardware-linked level needs asking.
        if REUSE_FIRST {
            if st.reraise_in_lr0(vcpu, intid, phys_intid, &mut pcpu.list_regs()) {
                return self.flushed(vcpu, true);
            }
            return self.raise_and_flush_locked(st, vcpu, intid, phys_intid, pcpu);
        }
        self.raise_and_flush_locked_inline(st, vcpu, intid, phys_intid, pcpu);
    }

    /// `raise_and_flush` past its quickest case, with the state lock held.
    #[inline(never)]
    fn raise_and_flush_locked(
        &self,
        st: spin::MutexGuard<'_, State>,
        vcpu: usize,
        intid: u32,
        phys_intid: Option<u32>,
        pcpu: &mut impl PhysCpu,
    ) {
        self.raise_and_flush_locked_inline(st, vcpu, intid, phys_intid, pcpu);
    }

    /// [`State::raise_private_fast`] (which also tries the quickest case first) or, when
    /// it declines, the general path.
    #[inline(always)]
    fn raise_and_flush_locked_inline(
        &self,
        mut st: spin::MutexGuard<'_, State>,
        vcpu: usize,
        intid: u32,
        phys_intid: Option<u32>,
        pcpu: &mut impl PhysCpu,
    ) {
        let Some(busy) = st.raise_private_fast(vcpu, intid, phys_intid, &mut pcpu.list_regs())
        else {
            // Out of line and last, so the fast path needs no registers saved for it.
            // Letting go of the lock meanwhile is harmless: the general path starts
            // from whatever state it finds.
            drop(st);
            return self.raise_and_flush_general(vcpu, intid, phys_intid, pcpu);
        };
        self.flushed(vcpu, busy);
    }

    /// `raise_and_flush` for any state, by the general calls.
    #[inline(never)]
    fn raise_and_flush_general(
        &self,
        vcpu: usize,
        intid: u32,
        phys_intid: Option<u32>,
        pcpu: &mut impl PhysCpu,
    ) {
        let mut st = self.state.lock();
        let busy = st.raise_private_general(vcpu, intid, phys_intid, pcpu);
        self.flushed(vcpu, busy);
    }

    /// The input line of SPI number `spi` (INTID `spi + 32`), for a device to drive; `None`
    /// if this vGIC has no such SPI. Checked once, when the device is attached.
    pub fn spi_line(&self, spi: u32) -> Option<IrqLine> {
        (spi < self.nr_spis).then_some(IrqLine {
            intid: SPI_BASE + spi,
        })
    }

    /// Drive a device's interrupt line (see [`VGic::set_spi_level`]).
    #[inline]
    pub fn set_line_level(&self, line: IrqLine, level: bool) -> VcpuMask {
        self.set_spi_level(line.intid, level)
    }

    /// Drive the input line of SPI `intid` (level-sensitive device such as the PL011). An
    /// SPI configured edge-triggered latches on the rising edge. Repeating the current
    /// level is a cheap no-op.
    pub fn set_spi_level(&self, intid: u32, level: bool) -> VcpuMask {
        let mut st = self.state.lock();
        if !st.is_spi(intid) {
            return VcpuMask::EMPTY;
        }
        self.drive_line(&mut st, 0, intid, level)
    }

    /// Drive the input line of PPI `intid` of `vcpu`: an interrupt Bothy emulates in
    /// software for one vCPU (the EL1 physical timer). Like [`VGic::set_spi_level`]:
    /// level-sensitive unless the guest made it edge-triggered, and repeating the current
    /// level is a cheap no-op. SGIs and SPIs are refused.
    pub fn set_private_level(&self, vcpu: usize, intid: u32, level: bool) -> VcpuMask {
        if !(16..SPI_BASE).contains(&intid) || vcpu >= self.nr_vcpus {
            return VcpuMask::EMPTY;
        }
        let mut st = self.state.lock();
        self.drive_line(&mut st, vcpu, intid, level)
    }

    /// An input line of `intid` (as `vcpu` sees it) goes to `level`: an edge-triggered
    /// one latches on the rising edge; a rise may make it deliverable.
    fn drive_line(&self, st: &mut State, vcpu: usize, intid: u32, level: bool) -> VcpuMask {
        let Some(irq) = st.irq_mut(vcpu, intid) else {
            return VcpuMask::EMPTY;
        };
        if irq.level() == level {
            return VcpuMask::EMPTY;
        }
        irq.set_level(level);
        let edge = level && irq.trigger == Trigger::Edge;
        irq.latch_if(edge);
        if !level {
            return VcpuMask::EMPTY;
        }
        let kick = st.kick_for(vcpu, intid, edge);
        self.mark(kick)
    }

    /// A physical interrupt `phys_intid` that EL2 took (and left active) is to be seen by
    /// the guest as `intid` (PPI of `vcpu`, or SPI) through a hardware-linked LR: the
    /// guest's deactivation then deactivates the physical interrupt.
    pub fn inject_hw(&self, vcpu: usize, intid: u32, phys_intid: u32) -> VcpuMask {
        let mut st = self.state.lock();
        if intid < SPI_BASE && vcpu >= self.nr_vcpus {
            return VcpuMask::EMPTY;
        }
        let Some(irq) = st.irq_mut(vcpu, intid) else {
            return VcpuMask::EMPTY;
        };
        irq.hw = Some(phys_intid);
        if intid < SPI_BASE {
            // A PPI (the timer): `raise_private` latches it and is `kick_for` for private
            // interrupts, in one lookup.
            let kick = st.raise_private(vcpu, intid);
            if kick == VcpuMask::one(vcpu) {
                self.mark_one(vcpu);
                return kick;
            }
            return self.mark(kick);
        }
        irq.set_latch(true);
        let kick = st.kick_for(vcpu, intid, true);
        self.mark(kick)
    }

    /// `inject_hw` of a PPI of the vCPU that runs on `pcpu` (this CPU): injected and
    /// flushed under one lock, like [`VGic::send_sgi_local`]. An SPI, or a vCPU index
    /// out of range, takes the `inject_hw` path.
    pub fn inject_hw_local(
        &self,
        vcpu: usize,
        intid: u32,
        phys_intid: u32,
        pcpu: &mut impl PhysCpu,
    ) -> Local {
        if intid >= SPI_BASE || vcpu >= self.nr_vcpus {
            return Local::not_flushed(self.inject_hw(vcpu, intid, phys_intid));
        }
        self.raise_and_flush::<false>(vcpu, intid, Some(phys_intid), pcpu);
        Local::FLUSHED
    }

    /// For WFI: is there an interrupt `vcpu` could take (deliverable in software, or
    /// pending in an LR as of the last sync)? Call `sync` first for an exact answer.
    pub fn has_pending(&self, vcpu: usize) -> bool {
        self.state.lock().has_pending_cpu(vcpu)
    }

    /// Before entering `vcpu`, which runs on `pcpu`: fold back, reconcile and fill its
    /// LRs (a hardware-linked level interrupt waiting in software only if its source
    /// still asserts it), and program ICH_HCR_EL2 (En, plus UIE when interrupts are left
    /// waiting for an LR). One private interrupt waiting for empty LRs, the vCPU woken
    /// by an SGI, goes straight into LR 0 (`State::place_lone_private`).
    pub fn flush(&self, vcpu: usize, pcpu: &mut impl PhysCpu) {
        if vcpu >= self.nr_vcpus {
            return;
        }
        let mut st = self.state.lock();
        // Everyone who sets WORK holds the lock, so clearing it at the end loses nothing.
        if st.place_lone_private(vcpu, &mut pcpu.list_regs()) {
            return self.flushed(vcpu, true);
        }
        self.flush_general_locked(&mut st, vcpu, pcpu);
    }

    /// [`VGic::flush`] without its shortcut: the reference its tests compare with.
    #[cfg(test)]
    fn flush_general(&self, vcpu: usize, pcpu: &mut impl PhysCpu) {
        if vcpu < self.nr_vcpus {
            self.flush_general_locked(&mut self.state.lock(), vcpu, pcpu);
        }
    }

    /// [`VGic::flush`] for the end of an exit of `vcpu`, whose likeliest state then is
    /// list registers holding interrupts the guest has finished: tries that case's
    /// shortcut (`State::flush_quiet`) first. (The scheduler's flushes, of a vCPU
    /// given new work while off its CPU or idle, go straight to the general flush.)
    pub fn flush_after_exit(&self, vcpu: usize, pcpu: &mut impl PhysCpu) {
        if vcpu >= self.nr_vcpus {
            return;
        }
        let mut st = self.state.lock();
        self.flush_locked(&mut st, vcpu, pcpu);
    }

    /// [`VGic::flush_after_exit`], then [`VGic::has_pending`], under one lock: what a
    /// WFI asks.
    pub fn flush_and_has_pending(&self, vcpu: usize, pcpu: &mut impl PhysCpu) -> bool {
        if vcpu >= self.nr_vcpus {
            return false;
        }
        let mut st = self.state.lock();
        if !self.flush_locked(&mut st, vcpu, pcpu) {
            // Nothing is left in an LR: nothing was waiting either (the shortcut's rule).
            return false;
        }
        st.has_pending_cpu(vcpu)
    }

    /// `flush_after_exit` with the state lock held. Returns false when no LR is left
    /// occupied and nothing waits for one (the shortcut's finding); true otherwise, or
    /// when it could not tell.
    #[inline(always)]
    fn flush_locked(&self, st: &mut State, vcpu: usize, pcpu: &mut impl PhysCpu) -> bool {
        if let Some(busy) = st.flush_quiet(vcpu, &mut pcpu.list_regs()) {
            self.flushed(vcpu, busy);
            return busy;
        }
        self.flush_general_locked(st, vcpu, pcpu);
        true
    }

    /// After an exit that may have changed LR state (maintenance interrupt, WFI, or just
    /// `needs_flush`): interrupts the guest completed return to the model.
    pub fn sync(&self, vcpu: usize, lrs: &mut impl ListRegs) {
        if vcpu >= self.nr_vcpus {
            return;
        }
        let mut st = self.state.lock();
        let mut flags = self.flags[vcpu % MAX_VCPUS].load(Ordering::Relaxed) & FLAG_WORK;
        if st.sync_cpu(vcpu, lrs) {
            // A freed LR may let a waiting or re-asserted interrupt in.
            flags |= FLAG_WORK;
        }
        if st.cpus[vcpu].occupied != 0 {
            flags |= FLAG_LRS_BUSY;
        }
        self.set_flags(vcpu, flags);
    }

    /// The hot-path check: one atomic load. False = `sync` and `flush` would do nothing.
    #[inline(always)]
    pub fn needs_flush(&self, vcpu: usize) -> bool {
        // MAX_VCPUS is a power of two: a vCPU beyond the VM reads an unused zero slot.
        self.flags[vcpu % MAX_VCPUS].load(Ordering::Acquire) != 0
    }

    /// Whether `vcpu` needs a flush before it runs (or, idle, to learn what is pending):
    /// for new work (WORK) always; for an occupied LR (LRS_BUSY) only if the guest ran
    /// since its LRs were last flushed (`guest_ran`), since only the guest moves them.
    /// A CPU idling with the vCPU that blocked (its WFI exit flushed) passes false.
    pub fn needs_flush_before_run(&self, vcpu: usize, guest_ran: bool) -> bool {
        let flags = self.flags[vcpu % MAX_VCPUS].load(Ordering::Acquire);
        let asks = if guest_ran {
            FLAG_WORK | FLAG_LRS_BUSY
        } else {
            FLAG_WORK
        };
        flags & asks != 0
    }

    /// [`VGic::needs_flush`] without ordering, for the exit path: a caller that finds
    /// work issues an acquire fence before acting on it (the same ordering as the
    /// `Acquire` load, one instruction cheaper there).
    #[inline(always)]
    pub fn needs_flush_relaxed(&self, vcpu: usize) -> bool {
        self.flags[vcpu % MAX_VCPUS].load(Ordering::Relaxed) != 0
    }

    /// Reset one vCPU's redistributor and LRs (PSCI CPU_ON, VM reset). The hardware LRs are
    /// zeroed by the next `flush` on that vCPU.
    pub fn reset_vcpu(&self, vcpu: usize) {
        if vcpu >= self.nr_vcpus {
            return;
        }
        let mut st = self.state.lock();
        st.reset_cpu(vcpu);
        self.flags[vcpu % MAX_VCPUS].store(FLAG_WORK, Ordering::Release);
    }

    /// Reset the whole vGIC (VM reset): distributor, SPIs and every vCPU.
    pub fn reset(&self) {
        let mut st = self.state.lock();
        *st = State::new(self.nr_vcpus, self.nr_spis);
        for flags in &self.flags[..self.nr_vcpus] {
            flags.store(FLAG_WORK, Ordering::Release);
        }
    }
}
