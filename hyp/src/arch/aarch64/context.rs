//! A vCPU's state that lives in a physical CPU's registers while it is loaded: EL1
//! system registers, pointer-authentication keys, FP/SIMD (and SVE predicates), the
//! virtual timer, and the GICv3 virtual CPU interface.
//!
//! Saved and restored only when a CPU changes vCPU ([`VcpuContext::save`] /
//! [`VcpuContext::restore`]), never on an ordinary exit: an exit leaves all of this
//! in the hardware, which is what keeps Bothy's exits cheap (DESIGN.md §4). The
//! hypervisor is built soft-float, so nothing but the assembly here touches FP/SIMD.
//!
//! SVE: every CPU runs guests with a 128-bit vector length (`ZCR_EL2.LEN = 0`, set in
//! `machine::setup_cpu`), so the Z registers are the V registers saved here and only
//! the predicates, FFR and ZCR_EL1 need SVE instructions. SME streaming state (ZA,
//! PSTATE.SM) is not switched: see docs/STATUS.md.
//!
//! Breakpoints and watchpoints (with the OS lock and double lock) move only while a
//! vCPU holds them: until its first access they trap (MDCR_EL2.TDA/TDOSA) and a
//! switch moves none of them. `bothy_core::exit::debug` decides when; [`HwMonitors`]
//! moves them. The PMU likewise (MDCR_EL2.TPM/TPMCR; `bothy_core::exit::pmu`),
//! except that a vCPU that goes back to trapped keeps its saved values for its next
//! claim, and the pointer-authentication keys (HCR_EL2.API/APK;
//! `bothy_core::exit::pauth`, moved by [`HwKeys`]) and SVE's predicates, FFR and
//! ZCR_EL1 (CPTR_EL2.TZ; `bothy_core::exit::sve`, moved by [`HwSve`]).

use super::gic;
use super::sysreg::*;
use bothy_core::exit::debug::{self, DebugHw, DebugRegs, DebugShape, MAX_POINTS};
use bothy_core::exit::mdcr::MdcrEl2;
use bothy_core::exit::pauth::{self, PauthHw, PauthKeys};
use bothy_core::exit::sve::{self, SveHw, SveRegs};
use bothy_core::exit::pmu::{self, PmuHw, PmuRegs, MAX_EVENT_COUNTERS, PMCR_STATE};
use bothy_core::vgic::{CpuInterface, V3CpuIf, MAX_LRS};
use core::arch::global_asm;

/// Which optional register sets this CPU has (probed once per CPU).
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub sve: bool,
    pub pauth: bool,
    /// Event counters of the PMU (PMCR_EL0.N), if it has PMUv3: the guest's PMU state
    /// is switched with its vCPU.
    pub pmu_counters: Option<usize>,
    /// ICH_APxR<n> registers implemented (1, 2 or 4).
    pub aprs: usize,
    /// Breakpoints and watchpoints, and whether MDCR_EL2.TDCC exists.
    pub debug: DebugShape,
}

impl Features {
    pub fn probe() -> Self {
        let pfr0 = read_id_aa64pfr0_el1();
        let isar1 = read_id_aa64isar1_el1();
        let isar2 = read_id_aa64isar2_el1();
        // ID_AA64ISAR1_EL1.{APA,API,GPA,GPI}, ID_AA64ISAR2_EL1.APA3.
        let pauth =
            (isar1 >> 4) & 0xff != 0 || (isar1 >> 24) & 0xff != 0 || (isar2 >> 12) & 0xf != 0;
        // ICH_VTR_EL2.PREbits = preemption bits - 1: 5 bits -> 1 APR, 6 -> 2, 7 -> 4.
        let pre_bits = ((read_ich_vtr_el2() >> 26) & 0x7) + 1;
        // ID_AA64DFR0_EL1.PMUVer: 0 none, 0xF IMPLEMENTATION DEFINED (not PMUv3).
        let pmuver = (read_id_aa64dfr0_el1() >> 8) & 0xf;
        let pmu_counters =
            (pmuver != 0 && pmuver != 0xf).then(|| ((read_pmcr_el0() >> 11) & 0x1f) as usize);
        Features {
            sve: (pfr0 >> 32) & 0xf != 0,
            pauth,
            pmu_counters,
            aprs: match pre_bits {
                7.. => 4,
                6 => 2,
                _ => 1,
            },
            debug: DebugShape::from_id(read_id_aa64dfr0_el1(), read_id_aa64mmfr0_el1()),
        }
    }
}

/// EL1 and EL0 system registers a guest owns.
#[derive(Clone, Copy, Debug, Default)]
struct El1Regs {
    sctlr: u64,
    cpacr: u64,
    ttbr0: u64,
    ttbr1: u64,
    tcr: u64,
    mair: u64,
    amair: u64,
    vbar: u64,
    contextidr: u64,
    tpidr_el0: u64,
    tpidrro_el0: u64,
    tpidr_el1: u64,
    sp_el0: u64,
    sp_el1: u64,
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
    afsr0: u64,
    afsr1: u64,
    par: u64,
    mdscr: u64,
    csselr: u64,
    cntkctl: u64,
    cntv_ctl: u64,
    cntv_cval: u64,
}

/// V0–V31, FPCR, FPSR, as `bothy_fp_save` lays them out.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
struct FpRegs {
    v: [u128; 32],
    fpcr: u64,
    fpsr: u64,
}


/// This CPU's self-hosted monitors, each group trapped through MDCR_EL2 until a vCPU
/// claims it: the PMU, moved as `bothy_core::exit::pmu` says (guests use it directly
/// once they hold it, so its counters and controls move with the vCPU that does;
/// otherwise a vCPU would count what other vCPUs, of other VMs, do on its CPU, and read
/// what they left), and the debug registers, moved as `bothy_core::exit::debug` says.
struct HwMonitors;

impl MdcrEl2 for HwMonitors {
    #[inline(always)]
    fn mdcr(&self) -> u64 {
        read_mdcr_el2()
    }

    #[inline(always)]
    fn set_mdcr(&mut self, value: u64) {
        write_mdcr_el2(value);
    }
}

impl PmuHw for HwMonitors {

    // Out of line: only vCPUs that use the PMU get here.
    #[cold]
    #[inline(never)]
    fn save(&mut self, counters: usize, regs: &mut PmuRegs) {
        regs.pmcr = read_pmcr_el0() & PMCR_STATE;
        regs.cnten = read_pmcntenset_el0();
        regs.inten = read_pmintenset_el1();
        regs.ovs = read_pmovsset_el0();
        regs.userenr = read_pmuserenr_el0();
        regs.selr = read_pmselr_el0();
        regs.ccntr = read_pmccntr_el0();
        regs.ccfiltr = read_pmccfiltr_el0();
        // SAFETY: `regs` is a whole `PmuRegs` (repr(C), the offsets the routine is
        // assembled with); it reads PMEVCNTR/PMEVTYPER<n>_EL0 for n below `counters`
        // (at most 31), which this CPU implements (PMCR_EL0.N). EL2 does not trap them.
        unsafe { bothy_pmu_counters_save(regs, counters.min(MAX_EVENT_COUNTERS)) };
    }

    #[cold]
    #[inline(never)]
    fn load(&mut self, counters: usize, regs: &PmuRegs) {
        // Everything off while the counters are loaded, then on as the vCPU had it.
        write_pmcr_el0(0);
        write_pmcntenclr_el0(u64::MAX);
        write_pmintenclr_el1(u64::MAX);
        write_pmovsclr_el0(u64::MAX);
        // SAFETY: as in `save`; the values written are this vCPU's own (or zero), and
        // nothing counts or interrupts while PMCR_EL0.E and the enables are clear.
        unsafe { bothy_pmu_counters_load(regs, counters.min(MAX_EVENT_COUNTERS)) };
        write_pmccfiltr_el0(regs.ccfiltr);
        write_pmccntr_el0(regs.ccntr);
        write_pmselr_el0(regs.selr);
        write_pmuserenr_el0(regs.userenr);
        write_pmovsset_el0(regs.ovs);
        write_pmintenset_el1(regs.inten);
        write_pmcntenset_el0(regs.cnten);
        write_pmcr_el0(regs.pmcr);
    }

    // Only when a vCPU that does not hold the PMU follows one that did.
    #[cold]
    #[inline(never)]
    fn quiesce(&mut self) {
        write_pmcr_el0(0);
        write_pmcntenclr_el0(u64::MAX);
        write_pmintenclr_el1(u64::MAX);
        write_pmuserenr_el0(0);
    }
}

// bothy_pmu_counters_save/load(x0 = PmuRegs*, x1 = event counters, 0..=31): like the
// debug routines below, a branch into a run of four instructions per counter, from 30
// down to 0. Each counter by its own register (PMEVCNTR<n>_EL0, PMEVTYPER<n>_EL0), not
// through PMSELR_EL0 and PMXEV*: that needed an ISB per counter, and the loop cost
// twice as much on every switch.
global_asm!(
    r#"
    .section .text.bothy_pmu, "ax"
    .global bothy_pmu_counters_save
bothy_pmu_counters_save:
    adr     x9, 1f
    sub     x9, x9, x1, lsl #4
    br      x9
    .irp    i, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    mrs     x10, pmevcntr\i\()_el0
    str     x10, [x0, #(\i * 8 + {cntr})]
    mrs     x10, pmevtyper\i\()_el0
    str     x10, [x0, #(\i * 8 + {typer})]
    .endr
1:  ret

    .global bothy_pmu_counters_load
bothy_pmu_counters_load:
    adr     x9, 1f
    sub     x9, x9, x1, lsl #4
    br      x9
    .irp    i, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    ldr     x10, [x0, #(\i * 8 + {typer})]
    msr     pmevtyper\i\()_el0, x10
    ldr     x10, [x0, #(\i * 8 + {cntr})]
    msr     pmevcntr\i\()_el0, x10
    .endr
1:  ret
"#,
    cntr = const core::mem::offset_of!(PmuRegs, evcntr),
    typer = const core::mem::offset_of!(PmuRegs, evtyper),
);

extern "C" {
    fn bothy_pmu_counters_save(regs: *mut PmuRegs, counters: usize);
    fn bothy_pmu_counters_load(regs: *const PmuRegs, counters: usize);
}

/// A vCPU's reset: the PMU off and zeroed, and held by the vCPU
/// (`bothy_core::exit::pmu::reset`: its saved context is not at hand here, so it is not
/// trapped with the previous incarnation's values; its next switch away finds the PMU
/// idle and traps it again with zeros saved).
pub fn reset_pmu(f: Features) {
    if let Some(counters) = f.pmu_counters {
        pmu::reset(&mut HwMonitors, counters);
    }
}

/// The running vCPU's first trapped PMU access: it gets the CPU's PMU, loaded from
/// `ctx` (its saved context) (`bothy_core::arch::Arch::claim_pmu`); `false` if it held
/// it already or the CPU has no PMU.
pub fn claim_pmu(f: Features, ctx: &VcpuContext) -> bool {
    match f.pmu_counters {
        Some(counters) => pmu::claim(&mut HwMonitors, counters, &ctx.pmu),
        None => false,
    }
}

/// This CPU's pointer-authentication keys and the HCR_EL2 bits that trap them, moved as
/// `bothy_core::exit::pauth` says.
struct HwKeys;

impl PauthHw for HwKeys {
    #[inline(always)]
    fn hcr(&self) -> u64 {
        read_hcr_el2()
    }

    #[inline(always)]
    fn set_hcr(&mut self, value: u64) {
        // Only API and APK differ from what is there (`pauth::set_traps`): the traps
        // that contain a guest stay as `traps.rs` set them.
        write_hcr_el2(value);
    }

    // Out of line: only vCPUs that use pointer authentication get here.
    #[inline(never)]
    fn save(&mut self, keys: &mut PauthKeys) {
        keys.0 = [
            read_apiakeylo_el1(),
            read_apiakeyhi_el1(),
            read_apibkeylo_el1(),
            read_apibkeyhi_el1(),
            read_apdakeylo_el1(),
            read_apdakeyhi_el1(),
            read_apdbkeylo_el1(),
            read_apdbkeyhi_el1(),
            read_apgakeylo_el1(),
            read_apgakeyhi_el1(),
        ];
    }

    #[inline(never)]
    fn load(&mut self, keys: &PauthKeys) {
        let k = &keys.0;
        write_apiakeylo_el1(k[0]);
        write_apiakeyhi_el1(k[1]);
        write_apibkeylo_el1(k[2]);
        write_apibkeyhi_el1(k[3]);
        write_apdakeylo_el1(k[4]);
        write_apdakeyhi_el1(k[5]);
        write_apdbkeylo_el1(k[6]);
        write_apdbkeyhi_el1(k[7]);
        write_apgakeylo_el1(k[8]);
        write_apgakeyhi_el1(k[9]);
    }
}

/// This CPU's SVE predicates, FFR and ZCR_EL1 and the CPTR_EL2 bit that traps them,
/// moved as `bothy_core::exit::sve` says (which lifts TZ, synchronised, before any
/// move: TZ traps EL2's own SVE instructions too).
struct HwSve;

impl SveHw for HwSve {
    #[inline(always)]
    fn cptr(&self) -> u64 {
        read_cptr_el2()
    }

    #[inline(always)]
    fn set_cptr(&mut self, value: u64, sync: bool) {
        // Only TZ differs from what `traps::init_cpu` wrote.
        write_cptr_el2(value);
        if sync {
            isb();
        }
    }

    // Out of line: only vCPUs that use SVE get here.
    #[inline(never)]
    fn save(&mut self, regs: &mut SveRegs) {
        regs.zcr = read_zcr_el1();
        // SAFETY: `preds` holds P0–P15 and FFR at the 128-bit vector length EL2 runs at
        // (ZCR_EL2.LEN = 0, `traps::init_cpu`, before any vCPU is loaded): 2 bytes each;
        // `sve::put` calls this only with CPTR_EL2.TZ clear.
        unsafe { bothy_sve_preds_save(regs.preds.as_mut_ptr()) };
    }

    #[inline(never)]
    fn load(&mut self, regs: &SveRegs) {
        write_zcr_el1(regs.zcr);
        // SAFETY: as in `save`; `sve::load`, `claim` and `reset` lift TZ (with an ISB)
        // before they call this.
        unsafe { bothy_sve_preds_restore(regs.preds.as_ptr()) };
    }
}

/// A vCPU's reset: its predicates, FFR and ZCR_EL1 zeroed and held by it
/// (`bothy_core::exit::sve::reset`).
pub fn reset_sve(f: Features) {
    if f.sve {
        sve::reset(&mut HwSve);
    }
}

/// The running vCPU's first trapped SVE instruction: it gets the CPU's SVE state, loaded
/// from `ctx` (`bothy_core::arch::Arch::claim_sve`); `false` if it held it already or
/// the CPU has no SVE.
pub fn claim_sve(f: Features, ctx: &VcpuContext) -> bool {
    f.sve && sve::claim(&mut HwSve, &ctx.sve)
}

/// A vCPU's reset: the keys zeroed and held by the vCPU (`bothy_core::exit::pauth::reset`;
/// its next switch away finds them zero and traps them again).
pub fn reset_pauth(f: Features) {
    if f.pauth {
        pauth::reset(&mut HwKeys);
    }
}

/// The running vCPU's first trapped use of pointer authentication: it gets the CPU's
/// keys, loaded from `ctx` (its saved context) (`bothy_core::arch::Arch::claim_pauth`);
/// `false` if it held them already or the CPU has no pointer authentication.
pub fn claim_pauth(f: Features, ctx: &VcpuContext) -> bool {
    f.pauth && pauth::claim(&mut HwKeys, &ctx.pauth)
}

/// OSLSR_EL1.OSLK (OSLAR_EL1.OSLA, which sets it, is bit 0); OSDLR_EL1.DLK.
const OSLSR_OSLK: u64 = 1 << 1;
const OSDLR_DLK: u64 = 1 << 0;

impl DebugHw for HwMonitors {

    // Out of line: only vCPUs that use breakpoints get here.
    #[cold]
    #[inline(never)]
    fn save(&mut self, shape: DebugShape, regs: &mut DebugRegs) {
        let (b, w) = points(shape);
        // SAFETY: `regs` is a whole `DebugRegs` (repr(C), the offsets the routine is
        // assembled with); it reads breakpoints 0..b and watchpoints 0..w, at most 16
        // each, which this CPU has (ID_AA64DFR0_EL1.BRPs/WRPs).
        unsafe { bothy_debug_save(regs, b, w) };
        regs.os_lock = read_oslsr_el1() & OSLSR_OSLK != 0;
        regs.double_lock = read_osdlr_el1() & OSDLR_DLK != 0;
    }

    #[cold]
    #[inline(never)]
    fn load(&mut self, shape: DebugShape, regs: &DebugRegs) {
        let (b, w) = points(shape);
        // SAFETY: as in `save`; the registers written are the guest's own, and debug
        // exceptions are never taken from EL2 with the debug target at EL1 (MDCR_EL2.TDE
        // clear).
        unsafe { bothy_debug_load(regs, b, w) };
        write_oslar_el1(u64::from(regs.os_lock));
        write_osdlr_el1(u64::from(regs.double_lock));
    }
}

/// The breakpoints and watchpoints the routines move, at most [`MAX_POINTS`] each.
fn points(shape: DebugShape) -> (usize, usize) {
    (
        usize::from(shape.breakpoints).min(MAX_POINTS),
        usize::from(shape.watchpoints).min(MAX_POINTS),
    )
}

// bothy_debug_save/load(x0 = DebugRegs*, x1 = breakpoints, x2 = watchpoints; 0..=16):
// a branch into a run of four instructions per breakpoint (and per watchpoint), from
// number 15 down to 0, so n of them cost 4n + 3 instructions: the loop the compiler
// makes of them (a jump table per register) cost about four times that on each switch
// of a vCPU that uses breakpoints.
global_asm!(
    r#"
    .section .text.bothy_debug, "ax"
    .global bothy_debug_save
bothy_debug_save:
    adr     x9, 1f
    sub     x9, x9, x1, lsl #4
    br      x9
    .irp    i, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    mrs     x10, dbgbvr\i\()_el1
    str     x10, [x0, #(\i * 8 + {bvr})]
    mrs     x10, dbgbcr\i\()_el1
    str     x10, [x0, #(\i * 8 + {bcr})]
    .endr
1:  adr     x9, 2f
    sub     x9, x9, x2, lsl #4
    br      x9
    .irp    i, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    mrs     x10, dbgwvr\i\()_el1
    str     x10, [x0, #(\i * 8 + {wvr})]
    mrs     x10, dbgwcr\i\()_el1
    str     x10, [x0, #(\i * 8 + {wcr})]
    .endr
2:  ret

    .global bothy_debug_load
bothy_debug_load:
    adr     x9, 1f
    sub     x9, x9, x1, lsl #4
    br      x9
    .irp    i, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    ldr     x10, [x0, #(\i * 8 + {bvr})]
    msr     dbgbvr\i\()_el1, x10
    ldr     x10, [x0, #(\i * 8 + {bcr})]
    msr     dbgbcr\i\()_el1, x10
    .endr
1:  adr     x9, 2f
    sub     x9, x9, x2, lsl #4
    br      x9
    .irp    i, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0
    ldr     x10, [x0, #(\i * 8 + {wvr})]
    msr     dbgwvr\i\()_el1, x10
    ldr     x10, [x0, #(\i * 8 + {wcr})]
    msr     dbgwcr\i\()_el1, x10
    .endr
2:  ret
"#,
    bvr = const core::mem::offset_of!(DebugRegs, bvr),
    bcr = const core::mem::offset_of!(DebugRegs, bcr),
    wvr = const core::mem::offset_of!(DebugRegs, wvr),
    wcr = const core::mem::offset_of!(DebugRegs, wcr),
);

extern "C" {
    fn bothy_debug_save(regs: *mut DebugRegs, breakpoints: usize, watchpoints: usize);
    fn bothy_debug_load(regs: *const DebugRegs, breakpoints: usize, watchpoints: usize);
}

/// The running vCPU's first trapped debug-register access: it gets the CPU's debug
/// registers, zero (`bothy_core::arch::Arch::claim_debug`); `false` if it had them.
pub fn claim_debug(f: Features) -> bool {
    debug::claim(&mut HwMonitors, f.debug)
}

/// A vCPU's reset: its debug registers trapped again, MDSCR_EL1 zero (debug exceptions
/// off, so nothing left in the CPU can fire for it).
pub fn reset_debug(f: Features) {
    debug::reset(&mut HwMonitors, f.debug);
    write_mdscr_el1(0);
}

/// Everything of one vCPU that [`VcpuContext::save`] takes out of a CPU.
#[derive(Clone, Copy, Debug)]
pub struct VcpuContext {
    el1: El1Regs,
    fp: FpRegs,
    /// Its predicates, FFR and ZCR_EL1: live in the CPU while `sve_claimed` and it
    /// runs, else as it left them (what a claim loads).
    sve: SveRegs,
    /// It holds SVE's state: loaded (and CPTR_EL2.TZ clear) when it runs.
    sve_claimed: bool,
    pub gic: V3CpuIf,
    /// The hardware-linked PPIs `gic`'s list registers hold, found when they were saved
    /// from `gic_held_lrs` list registers (the saved ones change only then): a restore
    /// on a CPU with as many need not scan them again.
    gic_held: u32,
    gic_held_lrs: usize,
    /// Its breakpoints and watchpoints, meaningful while `debug_claimed`.
    debug: DebugRegs,
    /// It holds the debug registers: they are loaded (and untrapped) when it runs.
    debug_claimed: bool,
    /// Its PMU registers: live in the CPU while `pmu_claimed` and it runs, else as it
    /// left them (what a claim loads).
    pmu: PmuRegs,
    /// It holds the PMU: its registers are loaded (and untrapped) when it runs.
    pmu_claimed: bool,
    /// Its pointer-authentication keys: live in the CPU while `pauth_claimed` and it
    /// runs, else as it left them (what a claim loads).
    pauth: PauthKeys,
    /// It holds the keys: they are loaded (and untrapped) when it runs.
    pauth_claimed: bool,
}

impl Default for VcpuContext {
    fn default() -> Self {
        VcpuContext {
            el1: El1Regs::default(),
            fp: FpRegs::default(),
            sve: SveRegs::RESET,
            sve_claimed: false,
            gic: V3CpuIf::default(),
            gic_held: 0,
            gic_held_lrs: 0,
            debug: DebugRegs::default(),
            debug_claimed: false,
            pmu: PmuRegs::RESET,
            pmu_claimed: false,
            pauth: PauthKeys::RESET,
            pauth_claimed: false,
        }
    }
}

global_asm!(
    r#"
    .arch_extension fp
    .arch_extension simd
    .arch_extension sve
    .section .text.bothy_context, "ax"

// bothy_fp_save(x0 = FpRegs*)
    .global bothy_fp_save
bothy_fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpcr
    mrs     x2, fpsr
    add     x0, x0, #512
    stp     x1, x2, [x0]
    ret

// bothy_fp_restore(x0 = const FpRegs*)
    .global bothy_fp_restore
bothy_fp_restore:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    add     x0, x0, #512
    ldp     x1, x2, [x0]
    msr     fpcr, x1
    msr     fpsr, x2
    ret

// bothy_sve_preds_save(x0 = buffer): P0-P15 then FFR (through P0, restored after).
    .global bothy_sve_preds_save
bothy_sve_preds_save:
    str     p0, [x0, #0, mul vl]
    str     p1, [x0, #1, mul vl]
    str     p2, [x0, #2, mul vl]
    str     p3, [x0, #3, mul vl]
    str     p4, [x0, #4, mul vl]
    str     p5, [x0, #5, mul vl]
    str     p6, [x0, #6, mul vl]
    str     p7, [x0, #7, mul vl]
    str     p8, [x0, #8, mul vl]
    str     p9, [x0, #9, mul vl]
    str     p10, [x0, #10, mul vl]
    str     p11, [x0, #11, mul vl]
    str     p12, [x0, #12, mul vl]
    str     p13, [x0, #13, mul vl]
    str     p14, [x0, #14, mul vl]
    str     p15, [x0, #15, mul vl]
    rdffr   p0.b
    str     p0, [x0, #16, mul vl]
    ldr     p0, [x0, #0, mul vl]
    ret

// bothy_sve_preds_restore(x0 = buffer)
    .global bothy_sve_preds_restore
bothy_sve_preds_restore:
    ldr     p0, [x0, #16, mul vl]
    wrffr   p0.b
    ldr     p0, [x0, #0, mul vl]
    ldr     p1, [x0, #1, mul vl]
    ldr     p2, [x0, #2, mul vl]
    ldr     p3, [x0, #3, mul vl]
    ldr     p4, [x0, #4, mul vl]
    ldr     p5, [x0, #5, mul vl]
    ldr     p6, [x0, #6, mul vl]
    ldr     p7, [x0, #7, mul vl]
    ldr     p8, [x0, #8, mul vl]
    ldr     p9, [x0, #9, mul vl]
    ldr     p10, [x0, #10, mul vl]
    ldr     p11, [x0, #11, mul vl]
    ldr     p12, [x0, #12, mul vl]
    ldr     p13, [x0, #13, mul vl]
    ldr     p14, [x0, #14, mul vl]
    ldr     p15, [x0, #15, mul vl]
    ret
"#
);

extern "C" {
    fn bothy_fp_save(regs: *mut FpRegs);
    fn bothy_fp_restore(regs: *const FpRegs);
    fn bothy_sve_preds_save(buf: *mut u8);
    fn bothy_sve_preds_restore(buf: *const u8);
}

// bothy_lrs_put(x0 = u64[16], x1 = list registers, 0..=16): read each ICH_LR<n>_EL2
// into x0[n] and clear it; bothy_lrs_load(x0, x1): write them back. A branch into a
// run of three (two) instructions per register, from 15 down to 0, as the debug
// routines above: a loop over `read_ich_lr(i)` is a jump table per register, four
// times the cost on every switch.
global_asm!(
    r#"
    .section .text.bothy_lrs, "ax"
    .global bothy_lrs_put
bothy_lrs_put:
    adr     x9, 1f
    add     x10, x1, x1, lsl #1
    sub     x9, x9, x10, lsl #2
    br      x9
    .irp    i, 7, 6, 5, 4, 3, 2, 1, 0
    mrs     x10, S3_4_C12_C13_\i
    str     x10, [x0, #((\i + 8) * 8)]
    msr     S3_4_C12_C13_\i, xzr
    .endr
    .irp    i, 7, 6, 5, 4, 3, 2, 1, 0
    mrs     x10, S3_4_C12_C12_\i
    str     x10, [x0, #(\i * 8)]
    msr     S3_4_C12_C12_\i, xzr
    .endr
1:  ret

    .global bothy_lrs_load
bothy_lrs_load:
    adr     x9, 1f
    sub     x9, x9, x1, lsl #3
    br      x9
    .irp    i, 7, 6, 5, 4, 3, 2, 1, 0
    ldr     x10, [x0, #((\i + 8) * 8)]
    msr     S3_4_C12_C13_\i, x10
    .endr
    .irp    i, 7, 6, 5, 4, 3, 2, 1, 0
    ldr     x10, [x0, #(\i * 8)]
    msr     S3_4_C12_C12_\i, x10
    .endr
1:  ret
"#
);

extern "C" {
    fn bothy_lrs_put(lrs: *mut u64, count: usize);
    fn bothy_lrs_load(lrs: *const u64, count: usize);
}

/// This CPU's GICv3 virtual CPU interface (ICH_*_EL2), with its redistributor for the
/// active state of the hardware-linked PPIs.
pub struct HwCpuIf {
    pub lr_count: usize,
    pub aprs: usize,
    pub redist: u64,
    /// The PPIs Bothy injects hardware-linked (bit n = INTID n): the virtual timer's,
    /// and the PMU's overflow when guests have a PMU.
    pub hw_ppis: u32,
}

impl CpuInterface for HwCpuIf {
    type Saved = V3CpuIf;

    fn put(&mut self, s: &mut V3CpuIf) {
        let _ = self.put_held(s);
    }

    fn load(&mut self, s: &V3CpuIf) {
        self.load_held(s, s.hw_ppis_held(self.hw_ppis, self.lr_count));
    }
}

impl HwCpuIf {
    /// [`CpuInterface::put`], which also returns the hardware-linked PPIs the saved list
    /// registers hold (what [`Self::load_held`] takes back on a CPU with as many).
    fn put_held(&mut self, s: &mut V3CpuIf) -> u32 {
        s.hcr = read_ich_hcr_el2();
        write_ich_hcr_el2(0);
        s.vmcr = read_ich_vmcr_el2();
        // SAFETY: `s.lrs` has room for MAX_LRS (16) registers; the routine reads and
        // clears the first `lr_count`, which this CPU implements (ICH_VTR_EL2.ListRegs).
        unsafe { bothy_lrs_put(s.lrs.as_mut_ptr(), self.lr_count.min(MAX_LRS).min(16)) };
        s.ap0r[0] = read_ich_ap0r0_el2();
        s.ap1r[0] = read_ich_ap1r0_el2();
        if self.aprs > 1 {
            s.ap0r[1] = read_ich_ap0r1_el2();
            s.ap1r[1] = read_ich_ap1r1_el2();
        }
        if self.aprs > 2 {
            s.ap0r[2] = read_ich_ap0r2_el2();
            s.ap0r[3] = read_ich_ap0r3_el2();
            s.ap1r[2] = read_ich_ap1r2_el2();
            s.ap1r[3] = read_ich_ap1r3_el2();
        }
        // The timer or PMU interrupt in flight belongs to this vCPU, not to the next one.
        let held = s.hw_ppis_held(self.hw_ppis, self.lr_count);
        if held != 0 {
            gic::set_private_active(self.redist, held, false);
        }
        isb();
        held
    }

    /// [`CpuInterface::load`], given `s.hw_ppis_held` over this CPU's list registers.
    fn load_held(&mut self, s: &V3CpuIf, held: u32) {
        write_ich_vmcr_el2(s.vmcr);
        write_ich_ap0r0_el2(s.ap0r[0]);
        write_ich_ap1r0_el2(s.ap1r[0]);
        if self.aprs > 1 {
            write_ich_ap0r1_el2(s.ap0r[1]);
            write_ich_ap1r1_el2(s.ap1r[1]);
        }
        if self.aprs > 2 {
            write_ich_ap0r2_el2(s.ap0r[2]);
            write_ich_ap0r3_el2(s.ap0r[3]);
            write_ich_ap1r2_el2(s.ap1r[2]);
            write_ich_ap1r3_el2(s.ap1r[3]);
        }
        // SAFETY: as in `put`; the values are this vCPU's own list registers.
        unsafe { bothy_lrs_load(s.lrs.as_ptr(), self.lr_count.min(MAX_LRS).min(16)) };
        // A hardware-linked LR needs its physical interrupt active here, so the guest's
        // deactivation lands on it and its source cannot fire again at EL2 meanwhile;
        // the others must not be (a previous vCPU's, or one EL2 left active).
        if self.hw_ppis & !held != 0 {
            gic::set_private_active(self.redist, self.hw_ppis & !held, false);
        }
        if held != 0 {
            gic::set_private_active(self.redist, held, true);
        }
        write_ich_hcr_el2(s.hcr);
    }
}

impl VcpuContext {
    /// Take the loaded vCPU's state out of this CPU and leave the CPU quiet: its
    /// virtual timer stopped, its list registers empty.
    pub fn save(&mut self, f: Features, cpuif: &mut HwCpuIf) {
        let e = &mut self.el1;
        e.sctlr = read_sctlr_el1();
        e.cpacr = read_cpacr_el1();
        e.ttbr0 = read_ttbr0_el1();
        e.ttbr1 = read_ttbr1_el1();
        e.tcr = read_tcr_el1();
        e.mair = read_mair_el1();
        e.amair = read_amair_el1();
        e.vbar = read_vbar_el1();
        e.contextidr = read_contextidr_el1();
        e.tpidr_el0 = read_tpidr_el0();
        e.tpidrro_el0 = read_tpidrro_el0();
        e.tpidr_el1 = read_tpidr_el1();
        e.sp_el0 = read_sp_el0();
        e.sp_el1 = read_sp_el1();
        e.elr = read_elr_el1();
        e.spsr = read_spsr_el1();
        e.esr = read_esr_el1();
        e.far = read_far_el1();
        e.afsr0 = read_afsr0_el1();
        e.afsr1 = read_afsr1_el1();
        e.par = read_par_el1();
        e.mdscr = read_mdscr_el1();
        e.csselr = read_csselr_el1();
        e.cntkctl = read_cntkctl_el1();
        e.cntv_ctl = read_cntv_ctl_el0();
        e.cntv_cval = read_cntv_cval_el0();
        // Stop the timer first: its interrupt must not fire for the next vCPU.
        write_cntv_ctl_el0(0);
        // Saved only if it holds the keys; nothing moves for a vCPU that does not.
        if f.pauth {
            self.pauth_claimed = pauth::put(&mut HwKeys, &mut self.pauth);
        }
        // SAFETY: `self.fp` is a valid, 16-byte aligned FpRegs the routine fills; EL2
        // does not trap FP/SIMD (CPTR_EL2.TFP clear, machine::setup_cpu).
        unsafe { bothy_fp_save(&mut self.fp) };
        // Saved only if it holds SVE's state; nothing moves for a vCPU that does not.
        if f.sve {
            self.sve_claimed = sve::put(&mut HwSve, &mut self.sve);
        }
        // Saved only if it holds the PMU; nothing moves for a vCPU that does not.
        if let Some(counters) = f.pmu_counters {
            self.pmu_claimed = pmu::put(&mut HwMonitors, counters, &mut self.pmu);
        }
        self.gic_held = cpuif.put_held(&mut self.gic);
        self.gic_held_lrs = cpuif.lr_count;
        self.put_debug(f);
    }

    /// Its debug registers saved if it holds them (MDCR_EL2.TDA clear); nothing moves
    /// for a vCPU that does not (never touched them, or went back to trapped).
    #[inline(always)]
    fn put_debug(&mut self, f: Features) {
        self.debug_claimed = debug::put(&mut HwMonitors, f.debug, &mut self.debug, self.el1.mdscr);
    }

    /// Its debug registers loaded if it holds them, and MDCR_EL2's traps set to match.
    /// Then MDSCR_EL1 once more, now under its own OS lock (which makes some of its bits
    /// writable); a vCPU that does not hold them has those bits clear.
    #[inline(always)]
    fn load_debug(&self, f: Features) {
        debug::load(&mut HwMonitors, f.debug, &self.debug, self.debug_claimed);
        if self.debug_claimed {
            write_mdscr_el1(self.el1.mdscr);
        }
    }

    /// Load this vCPU's state into this CPU (the reverse of [`Self::save`]).
    pub fn restore(&self, f: Features, cpuif: &mut HwCpuIf) {
        let e = &self.el1;
        write_sctlr_el1(e.sctlr);
        write_cpacr_el1(e.cpacr);
        write_ttbr0_el1(e.ttbr0);
        write_ttbr1_el1(e.ttbr1);
        write_tcr_el1(e.tcr);
        write_mair_el1(e.mair);
        write_amair_el1(e.amair);
        write_vbar_el1(e.vbar);
        write_contextidr_el1(e.contextidr);
        write_tpidr_el0(e.tpidr_el0);
        write_tpidrro_el0(e.tpidrro_el0);
        write_tpidr_el1(e.tpidr_el1);
        write_sp_el0(e.sp_el0);
        write_sp_el1(e.sp_el1);
        write_elr_el1(e.elr);
        write_spsr_el1(e.spsr);
        write_esr_el1(e.esr);
        write_far_el1(e.far);
        write_afsr0_el1(e.afsr0);
        write_afsr1_el1(e.afsr1);
        write_par_el1(e.par);
        write_mdscr_el1(e.mdscr);
        write_csselr_el1(e.csselr);
        write_cntkctl_el1(e.cntkctl);
        // Loaded if it holds the keys; else HCR_EL2.API/APK cleared, so it cannot
        // read or use the keys the CPU's last vCPU left.
        if f.pauth {
            pauth::load(&mut HwKeys, &self.pauth, self.pauth_claimed);
        }
        // SAFETY: `self.fp` is a valid, aligned FpRegs; FP/SIMD is not trapped at EL2.
        unsafe { bothy_fp_restore(&self.fp) };
        // Loaded if it holds SVE's state; else CPTR_EL2.TZ set, so it cannot read what
        // the CPU's last vCPU left.
        if f.sve {
            sve::load(&mut HwSve, &self.sve, self.sve_claimed);
        }
        // Loaded if it holds the PMU; else the traps set, and a PMU the CPU's last vCPU
        // held stopped.
        if let Some(counters) = f.pmu_counters {
            pmu::load(&mut HwMonitors, counters, &self.pmu, self.pmu_claimed);
        }
        if self.gic_held_lrs == cpuif.lr_count {
            cpuif.load_held(&self.gic, self.gic_held);
        } else {
            cpuif.load(&self.gic);
        }
        self.load_debug(f);
        // The timer last, with the interrupt interface ready for what it raises.
        write_cntv_cval_el0(e.cntv_cval);
        write_cntv_ctl_el0(e.cntv_ctl);
        isb();
    }
}

/// The loaded vCPU's virtual-timer deadline in physical counter ticks, read from the
/// registers.
pub fn live_timer_deadline(cntvoff: u64) -> Option<u64> {
    timer_deadline(read_cntv_ctl_el0(), read_cntv_cval_el0(), cntvoff)
}

fn timer_deadline(ctl: u64, cval: u64, cntvoff: u64) -> Option<u64> {
    const ENABLE: u64 = 1 << 0;
    const IMASK: u64 = 1 << 1;
    (ctl & (ENABLE | IMASK) == ENABLE).then(|| cval.wrapping_add(cntvoff))
}
