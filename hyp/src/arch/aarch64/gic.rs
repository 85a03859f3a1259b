//! The physical GICv3: Bothy's own interrupts at EL2.
//!
//! Bothy owns the distributor and every CPU's redistributor. It enables only
//! what it needs: the kick SGI (another CPU wants this one to look at its vCPU),
//! the vGIC maintenance PPI, the virtual-timer PPI and the PMU's overflow PPI
//! (both delivered to the guest through hardware-linked list registers), the EL2
//! timer's PPI and the console UART's SPI.
//! `ICC_CTLR_EL1.EOImode = 1` splits priority drop from deactivation, which is
//! what lets the guest's virtual EOI deactivate the physical timer interrupt.
//! Register offsets: GICv3 architecture specification (IHI 0069), chapter 12.

use super::mmio::{read32, read64, write32, write64};
use super::sysreg::*;

const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IGROUPR: u64 = 0x0080;
const GICD_ISENABLER: u64 = 0x0100;
const GICD_ICENABLER: u64 = 0x0180;
const GICD_ICPENDR: u64 = 0x0280;
const GICD_ISACTIVER: u64 = 0x0300;
const GICD_ICACTIVER: u64 = 0x0380;
const GICD_IPRIORITYR: u64 = 0x0400;
const GICD_IROUTER: u64 = 0x6000;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1;

const GICR_CTLR: u64 = 0x0000;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_SGI_FRAME: u64 = 0x1_0000;
const GICR_FRAME_STRIDE: u64 = 0x2_0000;

const ICC_SRE_SRE: u64 = 1 << 0;
const ICC_SRE_DFB: u64 = 1 << 1;
const ICC_SRE_DIB: u64 = 1 << 2;
const ICC_SRE_ENABLE: u64 = 1 << 3;
const ICC_CTLR_EOIMODE: u64 = 1 << 1;

/// Priority for everything Bothy enables (all equal: Bothy never nests interrupts).
const DEFAULT_PRIORITY: u32 = 0xa0;
pub const SPURIOUS: u32 = 1023;
/// Bounded waits for the GIC's register-write-pending bits.
const POLL_LIMIT: u32 = 1_000_000;

fn wait_clear(addr: u64, bit: u32) -> bool {
    (0..POLL_LIMIT).any(|_| read32(addr) & bit == 0)
}

/// Affinity of an MPIDR in the packed Aff3.Aff2.Aff1.Aff0 form GICR_TYPER uses.
pub fn packed_affinity(mpidr: u64) -> u32 {
    (((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)) as u32
}

/// Bring the distributor up with every SPI disabled, group 1, routed nowhere yet.
pub fn init_distributor(dist: u64) {
    write32(dist + GICD_CTLR, 0);
    wait_clear(dist + GICD_CTLR, GICD_CTLR_RWP);
    let lines = 32 * ((read32(dist + GICD_TYPER) & 0x1f) + 1);
    for reg in 1..lines / 32 {
        let off = u64::from(reg) * 4;
        write32(dist + GICD_ICENABLER + off, u32::MAX);
        write32(dist + GICD_ICPENDR + off, u32::MAX);
        write32(dist + GICD_IGROUPR + off, u32::MAX);
    }
    let prio = DEFAULT_PRIORITY * 0x0101_0101;
    for reg in 8..lines / 4 {
        write32(dist + GICD_IPRIORITYR + u64::from(reg) * 4, prio);
    }
    write32(dist + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1);
    wait_clear(dist + GICD_CTLR, GICD_CTLR_RWP);
}

/// Route SPI `intid` to the CPU with `mpidr` and enable it.
pub fn enable_spi(dist: u64, intid: u32, mpidr: u64) {
    let route = (mpidr & 0xff_ffff) | (((mpidr >> 32) & 0xff) << 32);
    write64(dist + GICD_IROUTER + 8 * u64::from(intid), route);
    write32(
        dist + GICD_ISENABLER + 4 * u64::from(intid / 32),
        1 << (intid % 32),
    );
}

/// Find this CPU's redistributor among the device tree's regions.
pub fn find_redistributor(regions: &[bothy_core::Region], mpidr: u64) -> Option<u64> {
    let want = packed_affinity(mpidr);
    for region in regions {
        let mut frame = region.base;
        while frame + GICR_FRAME_STRIDE <= region.end() {
            let typer = read64(frame + GICR_TYPER);
            if (typer >> 32) as u32 == want {
                return Some(frame);
            }
            if typer & GICR_TYPER_LAST != 0 {
                break;
            }
            // GICv4 redistributors have two more frames for vLPIs.
            frame += if typer & GICR_TYPER_VLPIS != 0 {
                2 * GICR_FRAME_STRIDE
            } else {
                GICR_FRAME_STRIDE
            };
        }
    }
    None
}

/// Wake this CPU's redistributor, enable the given SGIs/PPIs (bit mask of
/// INTIDs 0-31), and turn on the CPU interface for group 1 with split EOI.
pub fn init_cpu(redist: u64, private_enable_mask: u32) {
    let waker = read32(redist + GICR_WAKER);
    write32(redist + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    wait_clear(redist + GICR_WAKER, GICR_WAKER_CHILDREN_ASLEEP);

    let sgi = redist + GICR_SGI_FRAME;
    write32(sgi + GICD_ICENABLER, u32::MAX);
    write32(sgi + GICD_ICPENDR, u32::MAX);
    write32(sgi + GICD_IGROUPR, u32::MAX);
    for reg in 0..8 {
        write32(
            sgi + GICD_IPRIORITYR + reg * 4,
            DEFAULT_PRIORITY * 0x0101_0101,
        );
    }
    write32(sgi + GICD_ISENABLER, private_enable_mask);
    wait_clear(redist + GICR_CTLR, GICR_CTLR_RWP);

    write_icc_sre_el2(ICC_SRE_SRE | ICC_SRE_DFB | ICC_SRE_DIB | ICC_SRE_ENABLE);
    isb();
    write_icc_pmr_el1(0xff);
    write_icc_bpr1_el1(0);
    write_icc_ctlr_el1(read_icc_ctlr_el1() | ICC_CTLR_EOIMODE);
    write_icc_igrpen1_el1(1);
    isb();
}

/// Set or clear the active state of the private interrupts in `mask` (bit n = INTID n)
/// in this CPU's redistributor (hardware-linked interrupts moving with their vCPU: the
/// virtual timer's, the PMU's).
pub fn set_private_active(redist: u64, mask: u32, active: bool) {
    let reg = if active {
        GICD_ISACTIVER
    } else {
        GICD_ICACTIVER
    };
    write32(redist + GICR_SGI_FRAME + reg, mask);
}

/// Acknowledge the highest-priority pending interrupt (SPURIOUS when none).
#[inline(always)]
pub fn acknowledge() -> u32 {
    (acknowledge_icc_iar1_el1() & 0xff_ffff) as u32
}

/// Drop the running priority; with EOImode = 1 the interrupt stays active.
#[inline(always)]
pub fn priority_drop(intid: u32) {
    write_icc_eoir1_el1(u64::from(intid));
}

/// Deactivate an interrupt Bothy handled itself.
#[inline(always)]
pub fn deactivate(intid: u32) {
    write_icc_dir_el1(u64::from(intid));
}

/// Send SGI `intid` to the physical CPU with `mpidr`.
pub fn send_sgi(mpidr: u64, intid: u32) {
    let aff0 = mpidr & 0xff;
    let value = (((mpidr >> 32) & 0xff) << 48)
        | (((mpidr >> 16) & 0xff) << 32)
        | (u64::from(intid & 0xf) << 24)
        | (((mpidr >> 8) & 0xff) << 16)
        | ((aff0 >> 4) << 44)
        | (1 << (aff0 & 0xf));
    dsb_sy();
    write_icc_sgi1r_el1(value);
    isb();
}
