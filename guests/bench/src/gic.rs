//! GICv3 bring-up with guests/rt's steps (which follow Linux's irq-gic-v3.c):
//! distributor with affinity routing and Group 1 enabled; per vCPU the redistributor woken
//! (GICR_WAKER), all SGIs/PPIs Group 1 at one priority, SGIs 0-15 and the virtual timer
//! PPI enabled; the CPU interface through system registers (ICC_SRE_EL1.SRE), PMR 0xF0,
//! Group 1 enabled, EOImode 0. Unlike the selftest, the redistributor of a vCPU is found
//! by walking the frames for a GICR_TYPER affinity equal to its MPIDR (Xen, QEMU and Bothy
//! all number them the same way, but this costs nothing). Register offsets: Arm IHI 0069,
//! ch. 12.

use crate::arch::{self, mmio_read32, read_sysreg};
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
