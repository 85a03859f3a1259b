//! GICv3 driver for the guest, brought up the way Linux's irq-gic-v3.c does it (the steps
//! are guests/rt's `gic`): distributor with affinity routing and Group 1 enabled; per
//! vCPU the redistributor woken (GICR_WAKER), all SGIs/PPIs Group 1 at priority 0xA0,
//! SGIs 0-15 and the virtual timer PPI enabled; the CPU interface through system
//! registers (ICC_SRE_EL1.SRE), PMR 0xF0, Group 1 enabled. Every step is read back and a
//! mismatch is a check failure. Register offsets: Arm IHI 0069, ch. 12.

use crate::arch::{self, mmio_read32, mmio_read64, read_sysreg};
use crate::msg::{ensure, msg, Msg};
use crate::platform::{GICD_BASE, GICR_BASE, GICR_STRIDE};
pub use rt::gic::{ack_intid, eoi, INTID_SPECIAL_LAST};
use rt::gic::{
    Stuck, ENABLED_PRIVATE, GICD_CTLR_ARE_NS, GICD_CTLR_ENABLE_G1, GICD_CTLR_ENABLE_G1A,
    GICD_PIDR2, GICD_TYPER, GICR_CTLR, GICR_CTLR_RWP, GICR_ICENABLER0, GICR_IGROUPR0,
    GICR_ISENABLER0, GICR_SGI_OFFSET, GICR_TYPER, GICR_TYPER_LAST, GICR_WAKER,
    GICR_WAKER_CHILDREN_ASLEEP, GICR_WAKER_PROCESSOR_SLEEP, ICC_SRE_SRE, PMR_ALLOW_ALL,
    RWP_TIMEOUT_MS,
};

/// GICR_ISPENDR0 in the SGI_base frame (IHI 0069 12.11.32).
const GICR_ISPENDR0: usize = 0x0200;

const PIDR2_ARCHREV_SHIFT: u32 = 4;
const GICR_TYPER_AFF_SHIFT: u32 = 32;

pub fn rd_base(cpu: usize) -> usize {
    GICR_BASE + cpu * GICR_STRIDE
}

fn sgi_base(cpu: usize) -> usize {
    rd_base(cpu) + GICR_SGI_OFFSET
}

/// GICD_PIDR2.ArchRev (3 = GICv3, 4 = GICv4).
pub fn arch_rev() -> u32 {
    (mmio_read32(GICD_BASE + GICD_PIDR2) >> PIDR2_ARCHREV_SHIFT) & 0xf
}

pub fn dist_typer() -> u32 {
    mmio_read32(GICD_BASE + GICD_TYPER)
}

/// GICR_TYPER of `cpu`'s redistributor frame: (affinity value, Last bit).
pub fn rd_typer(cpu: usize) -> (u64, bool) {
    let typer = mmio_read64(rd_base(cpu) + GICR_TYPER);
    (
        typer >> GICR_TYPER_AFF_SHIFT,
        typer & u64::from(GICR_TYPER_LAST) != 0,
    )
}

fn stuck(Stuck { what, value }: Stuck) -> Msg {
    msg!("{what} stuck at {value:#x} after {RWP_TIMEOUT_MS} ms")
}

/// Distributor (Linux gic_dist_init), checking that ARE_NS and a Group 1 enable stuck.
pub fn dist_init() -> Result<(), Msg> {
    let ctlr = rt::gic::dist_enable(GICD_BASE).map_err(stuck)?;
    ensure!(
        ctlr & GICD_CTLR_ARE_NS != 0,
        "GICD_CTLR={ctlr:#x}: ARE_NS did not stick"
    );
    ensure!(
        ctlr & (GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1) != 0,
        "GICD_CTLR={ctlr:#x}: Group 1 enable did not stick"
    );
    Ok(())
}

/// Redistributor and CPU interface of the calling vCPU `cpu` (Linux gic_cpu_init +
/// gic_cpu_sys_reg_init), each step read back.
pub fn cpu_init(cpu: usize) -> Result<(), Msg> {
    let (aff, _) = rd_typer(cpu);
    ensure!(
        aff == arch::mpidr_aff() & 0xff,
        "GICR_TYPER affinity {aff:#x} of frame {cpu} does not match MPIDR {:#x}",
        arch::mpidr_aff()
    );

    rt::gic::rd_init(rd_base(cpu)).map_err(stuck)?;
    let sgi = sgi_base(cpu);
    let en = mmio_read32(sgi + GICR_ISENABLER0);
    ensure!(
        en & ENABLED_PRIVATE == ENABLED_PRIVATE,
        "GICR_ISENABLER0 reads {en:#x}, wanted bits {ENABLED_PRIVATE:#x}"
    );
    let grp = mmio_read32(sgi + GICR_IGROUPR0);
    ensure!(
        grp == u32::MAX,
        "GICR_IGROUPR0 reads {grp:#x}, wrote 0xffffffff"
    );

    let sre = rt::gic::icc_sre_enable();
    ensure!(
        sre & ICC_SRE_SRE != 0,
        "ICC_SRE_EL1={sre:#x}: SRE is 0 (no system-register interface)"
    );

    rt::gic::icc_enable();
    let pmr = read_sysreg!("icc_pmr_el1");
    ensure!(
        pmr == PMR_ALLOW_ALL,
        "ICC_PMR_EL1 reads {pmr:#x}, wrote {PMR_ALLOW_ALL:#x}"
    );
    let grpen = read_sysreg!("icc_igrpen1_el1");
    ensure!(grpen & 1 == 1, "ICC_IGRPEN1_EL1 reads {grpen:#x}, wrote 1");
    Ok(())
}

/// Group 1 SGI `intid` to the vCPU with Aff0 = `target` (Aff1..3 = 0).
pub fn send_sgi(intid: u32, target: usize) {
    rt::gic::send_sgi(intid, target as u64);
}

/// Enable or disable SGI/PPI `intid` at `cpu`'s redistributor, waiting for the write to
/// take effect (GICR_CTLR.RWP) as Linux does.
pub fn set_private_enabled(cpu: usize, intid: u32, enabled: bool) -> Result<(), Msg> {
    let reg = if enabled {
        GICR_ISENABLER0
    } else {
        GICR_ICENABLER0
    };
    arch::mmio_write32(sgi_base(cpu) + reg, 1 << intid);
    rt::gic::wait_clear(rd_base(cpu) + GICR_CTLR, GICR_CTLR_RWP, "GICR_CTLR.RWP").map_err(stuck)
}

/// Put `cpu`'s redistributor to sleep (GICR_WAKER.ProcessorSleep = 1) or wake it, and
/// wait until ChildrenAsleep follows, as Linux's gic_enable_redist does.
pub fn set_asleep(cpu: usize, asleep: bool) -> Result<(), Msg> {
    let rd = rd_base(cpu);
    let waker = mmio_read32(rd + GICR_WAKER);
    let waker = if asleep {
        waker | GICR_WAKER_PROCESSOR_SLEEP
    } else {
        waker & !GICR_WAKER_PROCESSOR_SLEEP
    };
    arch::mmio_write32(rd + GICR_WAKER, waker);
    let followed = arch::wait_until(RWP_TIMEOUT_MS, || {
        (mmio_read32(rd + GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP != 0) == asleep
    });
    ensure!(
        followed,
        "GICR_WAKER = {:#x}: ChildrenAsleep did not follow ProcessorSleep = {} within {RWP_TIMEOUT_MS} ms",
        mmio_read32(rd + GICR_WAKER),
        u32::from(asleep)
    );
    Ok(())
}

/// GICR_ISPENDR0 of `cpu`: which SGIs and PPIs its redistributor has pending.
pub fn pending_private(cpu: usize) -> u32 {
    mmio_read32(sgi_base(cpu) + GICR_ISPENDR0)
}
