//! GICv3 bring-up, reduced from guests/selftest/src/gic.rs (which follows Linux's
//! irq-gic-v3.c): distributor with affinity routing and Group 1 enabled; per vCPU the
//! redistributor woken (GICR_WAKER), all SGIs/PPIs Group 1 at one priority, SGIs 0-15
//! and the virtual timer PPI enabled; the CPU interface through system registers
//! (ICC_SRE_EL1.SRE), PMR 0xF0, Group 1 enabled, EOImode 0. Unlike the selftest, the
//! redistributor of a vCPU is found by walking the frames for a GICR_TYPER affinity equal
//! to its MPIDR (Xen, QEMU and Bothy all number them the same way, but this costs
//! nothing). Register offsets: Arm IHI 0069, ch. 12.

use crate::arch::{self, isb, mmio_read32, mmio_write32, read_sysreg, write_sysreg};
use crate::platform::{self, GICR_SGI_OFFSET, VTIMER_INTID};

pub const GICD_CTLR: usize = 0x0000;
pub const GICD_TYPER: usize = 0x0004;
const GICD_CTLR_ENABLE_G1: u32 = 1 << 0;
const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
const GICD_CTLR_ARE_NS: u32 = 1 << 4;
const GICD_CTLR_RWP: u32 = 1 << 31;

const GICR_CTLR: usize = 0x0000;
const GICR_TYPER_LO: usize = 0x0008;
const GICR_TYPER_HI: usize = 0x000C;
const GICR_WAKER: usize = 0x0014;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_TYPER_LAST: u32 = 1 << 4;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// Frames walked at most when looking for a vCPU's redistributor.
const MAX_FRAMES: usize = 64;

const GICR_IGROUPR0: usize = 0x0080;
const GICR_ISENABLER0: usize = 0x0100;
const GICR_ICENABLER0: usize = 0x0180;
const GICR_ICPENDR0: usize = 0x0280;
const GICR_ICACTIVER0: usize = 0x0380;
const GICR_IPRIORITYR: usize = 0x0400;

const ICC_SRE_SRE: u64 = 1 << 0;
const DEFAULT_PRIORITY_X4: u32 = 0xA0A0_A0A0;
const PMR_ALLOW_ALL: u64 = 0xF0;

/// INTIDs 1020..1023 are special (spurious); nothing to EOI.
pub const INTID_SPECIAL_FIRST: u32 = 1020;

/// SGIs 0-15 and the virtual timer PPI.
const ENABLED_PRIVATE: u32 = 0xFFFF | (1 << VTIMER_INTID);

const RWP_TIMEOUT_MS: u64 = 100;

fn wait_clear(addr: usize, bit: u32) -> Result<(), &'static str> {
    if arch::wait_until(RWP_TIMEOUT_MS, || mmio_read32(addr) & bit == 0) {
        Ok(())
    } else {
        Err("rwp-or-waker-stuck")
    }
}

/// Distributor: disable, then enable affinity routing and Group 1 (Linux gic_dist_init).
pub fn dist_init() -> Result<(), &'static str> {
    let gicd = platform::get().gicd;
    mmio_write32(gicd + GICD_CTLR, 0);
    wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP)?;
    mmio_write32(
        gicd + GICD_CTLR,
        GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1A | GICD_CTLR_ENABLE_G1,
    );
    wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP)?;
    if mmio_read32(gicd + GICD_CTLR) & GICD_CTLR_ARE_NS == 0 {
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
    let waker = mmio_read32(rd + GICR_WAKER);
    mmio_write32(rd + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    wait_clear(rd + GICR_WAKER, GICR_WAKER_CHILDREN_ASLEEP)?;

    let sgi = rd + GICR_SGI_OFFSET;
    mmio_write32(sgi + GICR_ICENABLER0, u32::MAX);
    mmio_write32(sgi + GICR_ICACTIVER0, u32::MAX);
    mmio_write32(sgi + GICR_ICPENDR0, u32::MAX);
    mmio_write32(sgi + GICR_IGROUPR0, u32::MAX);
    for i in 0..8 {
        mmio_write32(sgi + GICR_IPRIORITYR + 4 * i, DEFAULT_PRIORITY_X4);
    }
    wait_clear(rd + GICR_CTLR, GICR_CTLR_RWP)?;
    mmio_write32(sgi + GICR_ISENABLER0, ENABLED_PRIVATE);
    if mmio_read32(sgi + GICR_ISENABLER0) & ENABLED_PRIVATE != ENABLED_PRIVATE {
        return Err("isenabler0-did-not-stick");
    }

    let sre = read_sysreg!("icc_sre_el1");
    write_sysreg!("icc_sre_el1", sre | ICC_SRE_SRE);
    isb();
    if read_sysreg!("icc_sre_el1") & ICC_SRE_SRE == 0 {
        return Err("icc-sre-is-0");
    }
    write_sysreg!("icc_pmr_el1", PMR_ALLOW_ALL);
    write_sysreg!("icc_bpr1_el1", 0);
    write_sysreg!("icc_ctlr_el1", 0); // EOImode 0: EOIR also deactivates
    write_sysreg!("icc_igrpen1_el1", 1);
    isb();
    if read_sysreg!("icc_igrpen1_el1") & 1 == 0 {
        return Err("icc-igrpen1-did-not-stick");
    }
    Ok(())
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

pub fn eoi(iar: u32) {
    write_sysreg!("icc_eoir1_el1", iar as u64);
    isb();
}
