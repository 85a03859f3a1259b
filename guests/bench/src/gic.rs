//! GICv3 bring-up with guests/rt's steps (which follow Linux's irq-gic-v3.c):
//! distributor with affinity routing and Group 1 enabled; per vCPU the redistributor woken
//! (GICR_WAKER), all SGIs/PPIs Group 1 at one priority, SGIs 0-15 and the virtual timer
//! PPI enabled; the CPU interface through system registers (ICC_SRE_EL1.SRE), PMR 0xF0,
//! Group 1 enabled, EOImode 0. Unlike the selftest, the redistributor of a vCPU is found
//! by walking the frames for a GICR_TYPER affinity equal to its MPIDR (Xen, QEMU and Bothy
//! all number them the same way, but this costs nothing). [`spi_init`] sets up the one SPI
//! `spi_inject` raises. Register offsets: Arm IHI 0069, ch. 12.

use core::arch::asm;

use crate::arch::{self, mmio_read32, mmio_read64, mmio_write32, read_sysreg};
use crate::platform;
pub use rt::gic::{ack, eoi, send_sgi, sgi1r, GICD_TYPER, INTID_SPECIAL_FIRST};
use rt::gic::{
    Stuck, ENABLED_PRIVATE, GICD_CTLR_ARE_NS, GICR_ISENABLER0, GICR_SGI_OFFSET, GICR_TYPER,
    GICR_TYPER_LAST, ICC_SRE_SRE,
};

/// GICR_TYPER[31:0] and [63:32], read as two 32-bit words.
const GICR_TYPER_LO: usize = GICR_TYPER;
const GICR_TYPER_HI: usize = GICR_TYPER + 4;
/// Frames walked at most when looking for a vCPU's redistributor.
const MAX_FRAMES: usize = 64;

// Distributor SPI registers (12.9): one bit per INTID, but ICFGR (two bits) and
// IPRIORITYR (one byte), and IROUTER (64 bits per INTID).
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
pub const GICD_ISPENDR: usize = 0x200;
const GICD_ICPENDR: usize = 0x280;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ICFGR: usize = 0xC00;
const GICD_IROUTER: usize = 0x6000;
/// GICD_TYPER.ITLinesNumber: the GIC implements INTIDs below 32 * (N + 1).
const GICD_TYPER_ITLINES: u32 = 0x1f;
/// ICFGR: bit [2n+1] set = edge-triggered.
const ICFGR_EDGE: u32 = 0b10;
/// The priority of every interrupt the guest uses (rt's SGI/PPI default).
const PRIORITY: u32 = rt::gic::DEFAULT_PRIORITY_X4 & 0xff;

fn stuck(_: Stuck) -> &'static str {
    "rwp-or-waker-stuck"
}

/// Distributor (Linux gic_dist_init).
pub fn dist_init() -> Result<(), &'static str> {
    let ctlr = rt::gic::dist_enable(platform::get().gicd).map_err(stuck)?;
    if ctlr & GICD_CTLR_ARE_NS == 0 {
        return Err("gicd-are-did-not-stick");
    }
    Ok(())
}

/// RD_base of the redistributor whose GICR_TYPER affinity matches `mpidr`.
fn find_rd(mpidr: u64) -> Option<usize> {
    let p = platform::get();
    // GICR_TYPER[63:32] = Aff3.Aff2.Aff1.Aff0.
    let want = (((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)) as u32;
    let mut rd = p.gicr;
    for _ in 0..MAX_FRAMES {
        if mmio_read32(rd + GICR_TYPER_HI) == want {
            return Some(rd);
        }
        if mmio_read32(rd + GICR_TYPER_LO) & GICR_TYPER_LAST != 0 {
            return None;
        }
        rd += p.gicr_stride;
    }
    None
}

/// Redistributor and CPU interface of the calling vCPU (Linux gic_cpu_init +
/// gic_cpu_sys_reg_init).
pub fn cpu_init() -> Result<(), &'static str> {
    let rd = find_rd(arch::mpidr_aff()).ok_or("no-redistributor-for-mpidr")?;
    rt::gic::rd_init(rd).map_err(stuck)?;
    let sgi = rd + GICR_SGI_OFFSET;
    if mmio_read32(sgi + GICR_ISENABLER0) & ENABLED_PRIVATE != ENABLED_PRIVATE {
        return Err("isenabler0-did-not-stick");
    }

    if rt::gic::icc_sre_enable() & ICC_SRE_SRE == 0 {
        return Err("icc-sre-is-0");
    }
    rt::gic::icc_enable();
    if read_sysreg!("icc_igrpen1_el1") & 1 == 0 {
        return Err("icc-igrpen1-did-not-stick");
    }
    Ok(())
}

/// The register of a one-bit-per-INTID array that holds `intid`, and its bit.
pub fn bit_reg(array: usize, intid: u32) -> (usize, u32) {
    (array + 4 * (intid as usize / 32), 1 << (intid % 32))
}

fn mmio_write64(addr: usize, v: u64) {
    // SAFETY: a 64-bit GIC register (GICD_IROUTER), which allows 64-bit access.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Make SPI `intid` an edge-triggered Group 1 interrupt at the guest's usual priority,
/// routed to the vCPU with affinity `mpidr`, not pending, and enabled (the order of Linux's
/// gic_configure_irq + gic_set_affinity + gic_unmask_irq, with the distributor enabled).
/// Fails if the GIC does not implement the INTID or the enable does not read back.
pub fn spi_init(intid: u32, mpidr: u64) -> Result<(), &'static str> {
    let gicd = platform::get().gicd;
    let lines = 32 * ((mmio_read32(gicd + GICD_TYPER) & GICD_TYPER_ITLINES) + 1);
    if !(32..lines).contains(&intid) {
        return Err("spi-not-implemented");
    }
    let (enable_off, bit) = bit_reg(GICD_ICENABLER, intid);
    mmio_write32(gicd + enable_off, bit);
    let (pend_off, _) = bit_reg(GICD_ICPENDR, intid);
    mmio_write32(gicd + pend_off, bit);
    // Group 1 (Xen implements no groups: reads as 0, writes ignored, all is group 1).
    let (group, _) = bit_reg(GICD_IGROUPR, intid);
    mmio_write32(gicd + group, mmio_read32(gicd + group) | bit);
    let cfg = gicd + GICD_ICFGR + 4 * (intid as usize / 16);
    let cfg_bit = ICFGR_EDGE << (2 * (intid % 16));
    mmio_write32(cfg, mmio_read32(cfg) | cfg_bit);
    if mmio_read32(cfg) & cfg_bit == 0 {
        return Err("spi-icfgr-edge-did-not-stick");
    }
    // One byte per INTID; written as the word holding it (word access works everywhere).
    let prio = gicd + GICD_IPRIORITYR + (intid as usize & !3);
    let shift = 8 * (intid % 4);
    mmio_write32(
        prio,
        (mmio_read32(prio) & !(0xff << shift)) | PRIORITY << shift,
    );
    // Aff3 in [39:32], Aff2.Aff1.Aff0 in [23:0], IRM = 0: to that vCPU only.
    let router = gicd + GICD_IROUTER + 8 * intid as usize;
    let aff = ((mpidr >> 32) & 0xff) << 32 | (mpidr & 0xff_ffff);
    mmio_write64(router, aff);
    if mmio_read64(router) != aff {
        return Err("spi-irouter-did-not-stick");
    }
    let (set_enable, _) = bit_reg(GICD_ISENABLER, intid);
    mmio_write32(gicd + set_enable, bit);
    if mmio_read32(gicd + set_enable) & bit == 0 {
        return Err("spi-enable-did-not-stick");
    }
    Ok(())
}
