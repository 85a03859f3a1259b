//! [`Arch`]: what the core's decisions need the hardware to do, as a trait.
//!
//! Most of `core` decides and returns: the scheduler returns a [`Decision`] and a CPU
//! to kick, [`Stage2::unmap`] returns the ranges to invalidate, the exit policy returns
//! an [`Action`], and `hyp` carries them out. A few operations cannot be split that way
//! without leaving a window in which a caller could forget the second half and break an
//! invariant. The VMID allocator is the first: a VMID must be invalidated before anyone
//! can be handed it again, so [`VmidAllocator::free`] invalidates it itself, through this
//! trait, before the VMID becomes free. Such operations take `&mut impl Arch`.
//!
//! The exit policy ([`crate::exit::handle`]) is the other user: it reads and writes the
//! exiting vCPU's registers (exception injection writes ESR/FAR/ELR/SPSR_EL1), its list
//! registers and its timer through this trait while it handles an exit, and hands the
//! two side effects an exit can have beyond its own vCPU (waking other vCPUs, console
//! output) to it as well. `hyp` builds one implementation per exit, bound to the
//! exiting vCPU; its methods compile to the bare instructions.
//!
//! `hyp` implements `Arch` with the real instructions; tests (and host tools, with the
//! `std` feature) use `FakeArch`, which records each call as an `ArchOp` so a test can
//! check what was asked for and in which order (Hafnium's `src/arch/fake/` plays the
//! same part).
//!
//! ## Adding a method
//! Later users (scheduler kicks, the exit policy's maintenance) add methods here. Keep
//! each one:
//! - **one architectural effect, complete**: the method does everything needed for its
//!   effect to hold when it returns, barriers included (a TLBI comes with the DSB that
//!   completes it), so `core` never reasons about barriers;
//! - **named for the effect**, with its inputs typed ([`Vmid`], not `u16`) and the
//!   instruction sequence `hyp` uses written in its doc;
//! - **synchronous and infallible**: an `Arch` call cannot fail, and waits for nothing
//!   but hardware (a broadcast TLBI's DSB), never for another CPU's software; anything
//!   that would is a decision returned to `hyp` instead;
//! - **mirrored in `ArchOp`**, one variant per method, recorded by `FakeArch`.
//!
//! `Arch` methods run inside `core` operations, which `hyp` calls with its locks held
//! (the VMID allocator's, the scheduler's), so they must not take those locks. The
//! exceptions are [`Arch::wake`], [`Arch::console_out`] and [`Arch::guest_fault`],
//! which reach the scheduler and the console: the exit policy calls them with no lock
//! of its own held, and nothing else in `core` calls them.
//!
//! [`Decision`]: crate::sched::Decision
//! [`Stage2::unmap`]: crate::mem::Stage2::unmap
//! [`VmidAllocator::free`]: crate::mem::VmidAllocator::free
//! [`Action`]: crate::exit::handle::Action

use crate::mem::Vmid;
use crate::sched::Ticks;
use crate::vgic::{ListRegs, VcpuMask};

/// The EL1 system registers of the exiting vCPU that the exit policy reads or writes
/// (exception injection), by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum El1Reg {
    Esr = 0,
    Far = 1,
    Elr = 2,
    Spsr = 3,
    Sctlr = 4,
    Vbar = 5,
}

/// The hardware operations `core` performs itself. See the module doc for what belongs
/// here.
pub trait Arch {
    /// Invalidates every stage-1 and stage-2 TLB entry (and cached walk) tagged with
    /// `vmid`, on every CPU in the Inner Shareable domain, and waits for completion.
    ///
    /// `hyp` (at EL2, interrupts masked): save `VTTBR_EL2`; write it with
    /// `VTTBR_EL2.VMID = vmid`; `ISB` (so the TLBI sees the new VMID); `DSB ISHST`
    /// (earlier table writes visible first); `TLBI VMALLS12E1IS`; `DSB ISH`; restore
    /// `VTTBR_EL2`; `ISB`.
    fn tlbi_vmid(&mut self, vmid: Vmid);

    /// Invalidates the stage-2 translation of the 4 KiB page containing `ipa` for
    /// `vmid`, on every CPU in the Inner Shareable domain, and the stage-1 entries of
    /// that VMID that may have cached a translation through it (combined stage-1+2
    /// entries are not indexed by IPA). Call after the page's descriptor was changed
    /// (break-before-make: after writing the invalid descriptor).
    ///
    /// `hyp`: with `VTTBR_EL2.VMID = vmid` as in [`Arch::tlbi_vmid`]: `DSB ISHST`;
    /// `TLBI IPAS2E1IS, ipa >> 12`; `DSB ISH` (stage 2 gone before stage 1 can refill
    /// from it); `TLBI VMALLE1IS`; `DSB ISH`; `ISB`; restore `VTTBR_EL2`.
    fn tlbi_ipa(&mut self, vmid: Vmid, ipa: u64);

    /// The exiting vCPU's EL1 register `reg` (live on this CPU while it runs).
    fn el1(&self, reg: El1Reg) -> u64;

    /// Sets the exiting vCPU's EL1 register `reg`; takes effect when the vCPU resumes
    /// (`hyp`: `MSR`, no barrier: the `ERET` that resumes the vCPU synchronises it).
    fn set_el1(&mut self, reg: El1Reg, value: u64);

    /// `FAR_EL2` of the exit being handled (the faulting virtual address).
    fn far_el2(&self) -> u64;

    /// `HPFAR_EL2` of the exit being handled (the faulting IPA, bits [47:12] >> 8).
    fn hpfar_el2(&self) -> u64;

    /// When the exiting vCPU's virtual timer fires, on the physical counter
    /// (`CNTV_CVAL_EL0 + CNTVOFF_EL2`), if it is enabled and not masked; `None` if it
    /// cannot fire. A blocked vCPU is woken then.
    fn vtimer_deadline(&self) -> Option<Ticks>;

    /// The physical counter now (CNTPCT_EL0): the time base of the emulated EL1
    /// physical timer.
    fn counter(&self) -> Ticks;

    /// The list registers of the virtual CPU interface this CPU holds for the exiting
    /// vCPU (a handle: `hyp`'s is a copy of the CPU's probed LR count).
    type Lrs<'a>: ListRegs
    where
        Self: 'a;
    fn lrs(&mut self) -> Self::Lrs<'_>;

    /// Whether the source of hardware-linked level-sensitive interrupt `pintid` still
    /// asserts it for the exiting vCPU; when it does not, the physical interrupt (which
    /// EL2 acknowledged and left active for the guest to deactivate through its list
    /// register) is deactivated, so the source can fire again. The vGIC asks this before
    /// it puts such an interrupt, pending in software, into a list register
    /// ([`crate::vgic::PhysCpu`]), never on the path that injects one that has just
    /// fired.
    ///
    /// `hyp`: for the virtual timer's PPI, `CNTV_CTL_EL0` has ENABLE and ISTATUS set and
    /// IMASK clear; for the PMU's overflow PPI, [`crate::dev::pmu::overflow_asserted`] on
    /// PMCR_EL0, PMOVSSET_EL0 and PMINTENSET_EL1; if not, a write to this CPU's
    /// `GICR_ICACTIVER0`. Any other `pintid` reads as high.
    fn hw_line_high(&mut self, pintid: u32) -> bool;

    /// These vCPUs of the exiting vCPU's VM have new work (an interrupt became pending
    /// for them): wake each that is blocked, kick the CPU of each that runs. `hyp` takes
    /// the scheduler's lock.
    fn wake(&mut self, vcpus: VcpuMask);

    /// The exiting vCPU's VM wrote `byte` to its console.
    fn console_out(&mut self, byte: u8);

    /// Make this CPU look at its vCPU again at counter value `at` at the latest (the
    /// vCPU's emulated physical timer comes due then): an earlier EL2 timer stays.
    fn look_at(&mut self, at: Ticks);

    /// The exiting vCPU's first access to a debug register trapped
    /// ([`crate::exit::debug`]): give it the CPU's debug registers. Its values (zero:
    /// it held none) go into the breakpoint and watchpoint registers, the OS lock and the
    /// double lock, and its accesses stop trapping; the exit policy then has it execute
    /// the instruction again. `false` if it held them already (the access trapped for
    /// another reason, and would trap again): nothing is done.
    ///
    /// `hyp`: [`crate::exit::debug::claim`] on this CPU's registers: unless
    /// MDCR_EL2.TDA is clear, MSR of each `DBGBVR/DBGBCR/DBGWVR/DBGWCR<n>_EL1` the CPU has,
    /// OSLAR_EL1 and OSDLR_EL1 with 0, then MDCR_EL2.TDA and TDOSA cleared (no barrier:
    /// the `ERET` that resumes the vCPU synchronises them).
    fn claim_debug(&mut self) -> bool;

    /// The exiting vCPU's first access to a PMU register trapped
    /// ([`crate::exit::pmu`]): give it the CPU's PMU. Its saved PMU registers (what it
    /// left when it last held the PMU, or the reset values) are loaded, and its accesses
    /// stop trapping; the exit policy then has it execute the instruction again. `false`
    /// if it held the PMU already, or the CPU has none: nothing is done.
    ///
    /// `hyp`: [`crate::exit::pmu::claim`] on this CPU's PMU with the vCPU's saved
    /// context (its `saved` lock, which only this CPU takes while the vCPU runs here):
    /// unless MDCR_EL2.TPM is clear, the context's restore (PMCR_EL0 and the enables
    /// cleared, the counters, event types, PMCCFILTR, PMCCNTR, PMSELR, PMUSERENR,
    /// PMOVSSET, PMINTENSET, PMCNTENSET written, PMCR_EL0 last), then MDCR_EL2.TPM and
    /// TPMCR cleared (no barrier: the `ERET` that resumes the vCPU synchronises them).
    fn claim_pmu(&mut self) -> bool;

    /// The exiting vCPU's first use of pointer authentication trapped
    /// ([`crate::exit::pauth`]: an enabled PAuth instruction, or an access to a key
    /// register): give it the CPU's keys. Its saved keys are loaded and HCR_EL2.API and
    /// APK set; the exit policy then has it execute the instruction again. `false` if it
    /// held them already, or the CPU has no pointer authentication: nothing is done.
    ///
    /// `hyp`: [`crate::exit::pauth::claim`] on this CPU's keys with the vCPU's saved
    /// context (its `saved` lock, which only this CPU takes while the vCPU runs here).
    fn claim_pauth(&mut self) -> bool;

    /// The exiting vCPU's first SVE instruction or ZCR_EL1 access trapped
    /// ([`crate::exit::sve`]): give it SVE's state. CPTR_EL2.TZ is lifted and its saved
    /// predicates, FFR and ZCR_EL1 loaded; the exit policy then has it execute the
    /// instruction again. `false` if it held them already, or the CPU has no SVE:
    /// nothing is done.
    ///
    /// `hyp`: [`crate::exit::sve::claim`] on this CPU with the vCPU's saved context.
    fn claim_sve(&mut self) -> bool;

    /// The exiting vCPU did something Bothy answered with an exception injected into it
    /// (an access outside its RAM and devices, an undefined or trapped instruction):
    /// `hyp` counts it per VM and reports it, rate-limited, so a hostile or broken guest
    /// is visible without being able to flood the console.
    fn guest_fault(&mut self, fault: GuestFault);
}

/// An exception Bothy injected into a guest because of what the guest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// The syndrome injected (ESR_EL1): its class says data abort, instruction abort
    /// or undefined instruction.
    pub esr: u64,
    /// Where the guest was (the faulting instruction).
    pub pc: u64,
    /// The faulting virtual address (FAR_EL1 as injected; 0 for an undefined
    /// instruction).
    pub far: u64,
}

impl GuestFault {
    /// What happened, in words.
    pub fn kind(&self) -> &'static str {
        match (self.esr >> 26) & 0x3f {
            0x24 | 0x25 => "data access outside its RAM and devices",
            0x20 | 0x21 => "instruction fetch outside its RAM",
            _ => "undefined or trapped instruction",
        }
    }
}

/// One [`Arch`] call, as `FakeArch` records it.
#[cfg(any(test, feature = "std"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchOp {
    TlbiVmid(Vmid),
    TlbiIpa(Vmid, u64),
    Wake(VcpuMask),
    Fault(GuestFault),
    /// [`Arch::hw_line_high`] asked about `pintid`, and the answer.
    HwLine {
        pintid: u32,
        high: bool,
    },
    /// [`Arch::look_at`].
    LookAt(Ticks),
    /// [`Arch::claim_debug`].
    ClaimDebug,
    /// [`Arch::claim_pmu`].
    ClaimPmu,
    /// [`Arch::claim_pauth`].
    ClaimPauth,
    /// [`Arch::claim_sve`].
    ClaimSve,
}

/// An [`Arch`] for tests: appends each maintenance call and wake-up to `log`, keeps the
/// vCPU's EL1 registers, list registers and console output as plain fields a test sets
/// up and checks.
#[cfg(any(test, feature = "std"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeArch {
    pub log: alloc::vec::Vec<ArchOp>,
    /// Indexed by [`El1Reg`].
    pub el1: [u64; 6],
    pub far_el2: u64,
    pub hpfar_el2: u64,
    pub vtimer_deadline: Option<Ticks>,
    /// What [`Arch::counter`] reads.
    pub now: Ticks,
    pub lrs: crate::vgic::lr::FakeListRegs,
    /// The vCPU holds the debug registers ([`Arch::claim_debug`] succeeded).
    pub debug_claimed: bool,
    /// The vCPU holds the PMU ([`Arch::claim_pmu`] succeeded).
    pub pmu_claimed: bool,
    /// The vCPU holds the pointer-authentication keys ([`Arch::claim_pauth`] succeeded).
    pub pauth_claimed: bool,
    /// The vCPU holds SVE's state ([`Arch::claim_sve`] succeeded).
    pub sve_claimed: bool,
    /// Physical INTIDs whose hardware-linked source no longer asserts its level.
    pub low_lines: alloc::vec::Vec<u32>,
    pub console: alloc::vec::Vec<u8>,
}

#[cfg(any(test, feature = "std"))]
impl FakeArch {
    /// A CPU with four list registers, all empty.
    pub fn new() -> Self {
        Self {
            lrs: crate::vgic::lr::FakeListRegs::new(4),
            ..Self::default()
        }
    }

    /// The vCPUs woken, in order.
    pub fn woken(&self) -> alloc::vec::Vec<VcpuMask> {
        self.log
            .iter()
            .filter_map(|op| match op {
                ArchOp::Wake(mask) => Some(*mask),
                _ => None,
            })
            .collect()
    }
}

#[cfg(any(test, feature = "std"))]
impl Arch for FakeArch {
    fn tlbi_vmid(&mut self, vmid: Vmid) {
        self.log.push(ArchOp::TlbiVmid(vmid));
    }

    fn tlbi_ipa(&mut self, vmid: Vmid, ipa: u64) {
        self.log.push(ArchOp::TlbiIpa(vmid, ipa));
    }

    fn el1(&self, reg: El1Reg) -> u64 {
        self.el1[reg as usize]
    }

    fn set_el1(&mut self, reg: El1Reg, value: u64) {
        self.el1[reg as usize] = value;
    }

    fn far_el2(&self) -> u64 {
        self.far_el2
    }

    fn hpfar_el2(&self) -> u64 {
        self.hpfar_el2
    }

    fn vtimer_deadline(&self) -> Option<Ticks> {
        self.vtimer_deadline
    }

    fn counter(&self) -> Ticks {
        self.now
    }

    type Lrs<'a> = &'a mut crate::vgic::lr::FakeListRegs;
    fn lrs(&mut self) -> Self::Lrs<'_> {
        &mut self.lrs
    }

    fn hw_line_high(&mut self, pintid: u32) -> bool {
        let high = !self.low_lines.contains(&pintid);
        self.log.push(ArchOp::HwLine { pintid, high });
        high
    }

    fn wake(&mut self, vcpus: VcpuMask) {
        self.log.push(ArchOp::Wake(vcpus));
    }

    fn look_at(&mut self, at: Ticks) {
        self.log.push(ArchOp::LookAt(at));
    }

    fn console_out(&mut self, byte: u8) {
        self.console.push(byte);
    }

    fn claim_debug(&mut self) -> bool {
        self.log.push(ArchOp::ClaimDebug);
        !core::mem::replace(&mut self.debug_claimed, true)
    }

    fn claim_pmu(&mut self) -> bool {
        self.log.push(ArchOp::ClaimPmu);
        !core::mem::replace(&mut self.pmu_claimed, true)
    }

    fn claim_pauth(&mut self) -> bool {
        self.log.push(ArchOp::ClaimPauth);
        !core::mem::replace(&mut self.pauth_claimed, true)
    }

    fn claim_sve(&mut self) -> bool {
        self.log.push(ArchOp::ClaimSve);
        !core::mem::replace(&mut self.sve_claimed, true)
    }

    fn guest_fault(&mut self, fault: GuestFault) {
        self.log.push(ArchOp::Fault(fault));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{VmidAllocator, VmidBits};

    #[test]
    fn fake_records_calls_in_order() {
        let mut ids = VmidAllocator::new(VmidBits::Eight);
        let (a, b) = (ids.alloc().unwrap(), ids.alloc().unwrap());
        let mut arch = FakeArch::new();
        arch.tlbi_ipa(a, 0x4000_1000);
        arch.tlbi_vmid(b);
        assert_eq!(
            arch.log,
            [ArchOp::TlbiIpa(a, 0x4000_1000), ArchOp::TlbiVmid(b)]
        );
    }
}
