//! GICv3 driver for the guest, brought up the way Linux's irq-gic-v3.c does it:
//! distributor with affinity routing and Group 1 enabled; per vCPU the redistributor woken
//! (GICR_WAKER), all SGIs/PPIs Group 1 at priority 0xA0, SGIs 0-15 and the virtual timer
//! PPI enabled; the CPU interface through system registers (ICC_SRE_EL1.SRE), PMR 0xF0,
//! Group 1 enabled. Register offsets: Arm IHI 0069 (GICv3/v4 architecture spec), ch. 12.

use crate::arch::{self, isb, mmio_read32, mmio_read64, mmio_write32, read_sysreg, write_sysreg};
use crate::msg::{bail, ensure, Msg};
use crate::platform::{GICD_BASE, GICR_BASE, GICR_SGI_OFFSET, GICR_STRIDE, VTIMER_INTID};

// Distributor (12.9).
const GICD_CTLR: usize = 0x0000;
const GICD_TYPER: usize = 0x0004;
const GICD_PIDR2: usize = 0xFFE8;
const GICD_CTLR_ENABLE_G1: u32 = 1 << 0;
const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
const GICD_CTLR_ARE_NS: u32 = 1 << 4;
const GICD_CTLR_RWP: u32 = 1 << 31;
const PIDR2_ARCHREV_SHIFT: u32 = 4;

// Redistributor RD_base frame (12.10).
const GICR_CTLR: usize = 0x0000;
const GICR_TYPER: usize = 0x0008;
const GICR_WAKER: usize = 0x0014;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_AFF_SHIFT: u32 = 32;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

// Redistributor SGI_base frame (12.10).
const GICR_IGROUPR0: usize = 0x0080;
const GICR_ISENABLER0: usize = 0x0100;
const GICR_ICENABLER0: usize = 0x0180;
const GICR_ICPENDR0: usize = 0x0280;
const GICR_ICACTIVER0: usize = 0x0380;
const GICR_IPRIORITYR: usize = 0x0400;

const ICC_SRE_SRE: u64 = 1 << 0;
const DEFAULT_PRIORITY_X4: u32 = 0xA0A0_A0A0;
const PMR_ALLOW_ALL: u64 = 0xF0;

/// ICC_SGI1R_EL1 fields (12.2.24): INTID[27:24], TargetList[15:0] (Aff1..3 = 0 here).
const SGI1R_INTID_SHIFT: u32 = 24;

/// INTIDs 1020..1023 are special (spurious); nothing to EOI.
pub const INTID_SPECIAL_FIRST: u32 = 1020;
pub const INTID_SPECIAL_LAST: u32 = 1023;

/// SGIs 0-15 and the virtual timer PPI.
pub const ENABLED_PRIVATE: u32 = 0xFFFF | (1 << VTIMER_INTID);

const RWP_TIMEOUT_MS: u64 = 100;

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

pub fn dist_ctlr() -> u32 {
    mmio_read32(GICD_BASE + GICD_CTLR)
}

/// GICR_TYPER of `cpu`'s redistributor frame: (affinity value, Last bit).
pub fn rd_typer(cpu: usize) -> (u64, bool) {
    let typer = mmio_read64(rd_base(cpu) + GICR_TYPER);
    (typer >> GICR_TYPER_AFF_SHIFT, typer & GICR_TYPER_LAST != 0)
}

fn wait_clear(addr: usize, bit: u32, what: &str) -> Result<(), Msg> {
    if !arch::wait_until(RWP_TIMEOUT_MS, || mmio_read32(addr) & bit == 0) {
        bail!(
            "{what} stuck at {:#x} after {RWP_TIMEOUT_MS} ms",
            mmio_read32(addr)
        );
    }
    Ok(())
}

/// Distributor: disable, then enable affinity routing and Group 1 (Linux gic_dist_init).
pub fn dist_init() -> Result<(), Msg> {
    mmio_write32(GICD_BASE + GICD_CTLR, 0);
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP")?;
    mmio_write32(
        GICD_BASE + GICD_CTLR,
        GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1,
    );
    wait_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP")?;
    let ctlr = dist_ctlr();
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
/// gic_cpu_sys_reg_init).
pub fn cpu_init(cpu: usize) -> Result<(), Msg> {
    let rd = rd_base(cpu);
    let (aff, _) = rd_typer(cpu);
    ensure!(
        aff == arch::mpidr_aff() & 0xff,
        "GICR_TYPER affinity {aff:#x} of frame {cpu} does not match MPIDR {:#x}",
        arch::mpidr_aff()
    );

    let waker = mmio_read32(rd + GICR_WAKER);
    mmio_write32(rd + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    wait_clear(
        rd + GICR_WAKER,
        GICR_WAKER_CHILDREN_ASLEEP,
        "GICR_WAKER.ChildrenAsleep",
    )?;

    let sgi = sgi_base(cpu);
    mmio_write32(sgi + GICR_ICENABLER0, u32::MAX);
    mmio_write32(sgi + GICR_ICACTIVER0, u32::MAX);
    mmio_write32(sgi + GICR_ICPENDR0, u32::MAX);
    mmio_write32(sgi + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        mmio_write32(sgi + GICR_IPRIORITYR + 4 * i, DEFAULT_PRIORITY_X4);
    }
    wait_clear(rd + GICR_CTLR, GICR_CTLR_RWP, "GICR_CTLR.RWP")?;
    mmio_write32(sgi + GICR_ISENABLER0, ENABLED_PRIVATE);
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

    let sre = read_sysreg!("icc_sre_el1");
    write_sysreg!("icc_sre_el1", sre | ICC_SRE_SRE);
    isb();
    let sre = read_sysreg!("icc_sre_el1");
    ensure!(
        sre & ICC_SRE_SRE != 0,
        "ICC_SRE_EL1={sre:#x}: SRE is 0 (no system-register interface)"
    );

    write_sysreg!("icc_pmr_el1", PMR_ALLOW_ALL);
    write_sysreg!("icc_bpr1_el1", 0);
    write_sysreg!("icc_ctlr_el1", 0); // EOImode 0: EOIR also deactivates
    write_sysreg!("icc_igrpen1_el1", 1);
    isb();
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
    let v = ((intid as u64) << SGI1R_INTID_SHIFT) | (1u64 << target);
    write_sysreg!("icc_sgi1r_el1", v);
    isb();
}

pub fn ack() -> u32 {
    let iar = read_sysreg!("icc_iar1_el1") as u32;
    // As Linux: order the acknowledge before the handler's own accesses.
    arch::dsb_sy();
    iar
}

pub fn eoi(iar: u32) {
    write_sysreg!("icc_eoir1_el1", iar as u64);
    isb();
}
