//! GICv3 pieces shared by the guests, following Linux's irq-gic-v3.c: register offsets,
//! the bring-up steps (distributor with affinity routing and Group 1; per vCPU the
//! redistributor woken through GICR_WAKER, all SGIs/PPIs Group 1 at priority 0xA0, SGIs
//! 0-15 and the virtual timer PPI enabled; the CPU interface through system registers,
//! PMR 0xF0, EOImode 0, Group 1 enabled), SGIs, acknowledge and EOI. Each guest composes
//! the steps and checks the read-backs in its own way (`gic.rs` of each guest). Register
//! offsets: Arm IHI 0069 (GICv3/v4 architecture spec), ch. 12.

use crate::arch::{self, isb, mmio_read32, mmio_write32, read_sysreg, write_sysreg};

// Distributor (12.9).
pub const GICD_CTLR: usize = 0x0000;
pub const GICD_TYPER: usize = 0x0004;
pub const GICD_PIDR2: usize = 0xFFE8;
pub const GICD_CTLR_ENABLE_G1: u32 = 1 << 0;
pub const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
pub const GICD_CTLR_ARE_NS: u32 = 1 << 4;
pub const GICD_CTLR_RWP: u32 = 1 << 31;

// Redistributor RD_base frame (12.10).
pub const GICR_CTLR: usize = 0x0000;
pub const GICR_TYPER: usize = 0x0008;
pub const GICR_WAKER: usize = 0x0014;
pub const GICR_CTLR_RWP: u32 = 1 << 3;
/// GICR_TYPER.Last (bit 4): the last redistributor frame.
pub const GICR_TYPER_LAST: u32 = 1 << 4;
pub const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
pub const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// Size of one redistributor without VLPI frames (RD_base + SGI_base).
pub const GICR_STRIDE: usize = 0x2_0000;
/// Offset of the SGI/PPI frame inside a redistributor.
pub const GICR_SGI_OFFSET: usize = 0x1_0000;

// Redistributor SGI_base frame (12.10).
pub const GICR_IGROUPR0: usize = 0x0080;
pub const GICR_ISENABLER0: usize = 0x0100;
pub const GICR_ICENABLER0: usize = 0x0180;
pub const GICR_ICPENDR0: usize = 0x0280;
pub const GICR_ICACTIVER0: usize = 0x0380;
pub const GICR_IPRIORITYR: usize = 0x0400;

pub const ICC_SRE_SRE: u64 = 1 << 0;
pub const DEFAULT_PRIORITY_X4: u32 = 0xA0A0_A0A0;
pub const PMR_ALLOW_ALL: u64 = 0xF0;

/// Virtual timer PPI (INTID), the same on QEMU `virt`, Bothy and Xen.
pub const VTIMER_INTID: u32 = 27;

/// INTIDs 1020..1023 are special (spurious); nothing to EOI.
pub const INTID_SPECIAL_FIRST: u32 = 1020;
pub const INTID_SPECIAL_LAST: u32 = 1023;

/// SGIs 0-15 and the virtual timer PPI.
pub const ENABLED_PRIVATE: u32 = 0xFFFF | (1 << VTIMER_INTID);

/// Bound on each wait for RWP / ChildrenAsleep.
pub const RWP_TIMEOUT_MS: u64 = 100;

/// A bit that did not clear within [`RWP_TIMEOUT_MS`]: which one, and the register value
/// read after the timeout.
pub struct Stuck {
    pub what: &'static str,
    pub value: u32,
}

/// Wait until `bit` of the register at `addr` reads 0.
pub fn wait_clear(addr: usize, bit: u32, what: &'static str) -> Result<(), Stuck> {
    if arch::wait_until(RWP_TIMEOUT_MS, || mmio_read32(addr) & bit == 0) {
        Ok(())
    } else {
        Err(Stuck {
            what,
            value: mmio_read32(addr),
        })
    }
}

/// Distributor (Linux gic_dist_init): disable, wait for RWP, enable affinity routing and
/// Group 1, wait for RWP. Returns GICD_CTLR as read back.
pub fn dist_enable(gicd: usize) -> Result<u32, Stuck> {
    mmio_write32(gicd + GICD_CTLR, 0);
    wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP")?;
    mmio_write32(
        gicd + GICD_CTLR,
        GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1,
    );
    wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP")?;
    Ok(mmio_read32(gicd + GICD_CTLR))
}

/// Redistributor at RD_base `rd` (Linux gic_cpu_init): wake it, then make every SGI/PPI
/// Group 1 at the default priority, inactive and not pending, and enable
/// [`ENABLED_PRIVATE`]. The caller checks GICR_ISENABLER0 (SGI frame) as it likes.
pub fn rd_init(rd: usize) -> Result<(), Stuck> {
    let waker = mmio_read32(rd + GICR_WAKER);
    mmio_write32(rd + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    wait_clear(
        rd + GICR_WAKER,
        GICR_WAKER_CHILDREN_ASLEEP,
        "GICR_WAKER.ChildrenAsleep",
    )?;

    let sgi = rd + GICR_SGI_OFFSET;
    mmio_write32(sgi + GICR_ICENABLER0, u32::MAX);
    mmio_write32(sgi + GICR_ICACTIVER0, u32::MAX);
    mmio_write32(sgi + GICR_ICPENDR0, u32::MAX);
    mmio_write32(sgi + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        mmio_write32(sgi + GICR_IPRIORITYR + 4 * i, DEFAULT_PRIORITY_X4);
    }
    wait_clear(rd + GICR_CTLR, GICR_CTLR_RWP, "GICR_CTLR.RWP")?;
    mmio_write32(sgi + GICR_ISENABLER0, ENABLED_PRIVATE);
    Ok(())
}

/// Turn on the system-register CPU interface (ICC_SRE_EL1.SRE); returns ICC_SRE_EL1 as
/// read back.
pub fn icc_sre_enable() -> u64 {
    let sre = read_sysreg!("icc_sre_el1");
    write_sysreg!("icc_sre_el1", sre | ICC_SRE_SRE);
    isb();
    read_sysreg!("icc_sre_el1")
}

/// CPU interface (Linux gic_cpu_sys_reg_init): PMR allows all, BPR 0, EOImode 0, Group 1
/// enabled. The caller checks the read-backs.
pub fn icc_enable() {
    write_sysreg!("icc_pmr_el1", PMR_ALLOW_ALL);
    write_sysreg!("icc_bpr1_el1", 0);
    write_sysreg!("icc_ctlr_el1", 0); // EOImode 0: EOIR also deactivates
    write_sysreg!("icc_igrpen1_el1", 1);
    isb();
}

/// ICC_SGI1R_EL1 value for Group 1 SGI `intid` to the vCPU with affinity `mpidr`
/// (Aff0 < 16; IHI 0069 12.2.24: Aff3 [55:48], Aff2 [39:32], INTID [27:24],
/// Aff1 [23:16], TargetList [15:0]).
pub fn sgi1r(intid: u32, mpidr: u64) -> u64 {
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    (aff3 << 48) | (aff2 << 32) | ((intid as u64) << 24) | (aff1 << 16) | (1 << (mpidr & 0xf))
}

/// Group 1 SGI `intid` to the vCPU with affinity `mpidr`.
pub fn send_sgi(intid: u32, mpidr: u64) {
    write_sysreg!("icc_sgi1r_el1", sgi1r(intid, mpidr));
    isb();
}

pub fn ack() -> u32 {
    let iar = read_sysreg!("icc_iar1_el1") as u32;
    // As Linux: order the acknowledge before the handler's own accesses.
    arch::dsb_sy();
    iar
}

/// [`ack`], split for an IRQ handler: `(iar, intid)`, `iar` for the [`eoi`] and `intid`
/// its INTID field (bits 23:0); `None` for a special INTID (1020-1023: nothing to handle,
/// and no EOI).
pub fn ack_intid() -> Option<(u32, u32)> {
    let iar = ack();
    let intid = iar & 0xff_ffff;
    (!(INTID_SPECIAL_FIRST..=INTID_SPECIAL_LAST).contains(&intid)).then_some((iar, intid))
}

pub fn eoi(iar: u32) {
    write_sysreg!("icc_eoir1_el1", iar as u64);
    isb();
}
