//! EL1 exception handling for both vCPUs: the `el1_exception` hook of guests/rt, whose
//! `vectors.S` (feature `entry-ticks`) passes the CNTVCT_EL0 value read at the third
//! instruction of the vector as `entry_ticks`.
//!
//! * IRQs: ICC_IAR1_EL1, then per INTID: the virtual timer records `entry_ticks` and is
//!   disabled at the source (level-triggered); SGI `SGI_PING` on the second vCPU answers
//!   with `SGI_PONG` to the primary; every INTID below [`COUNTED`] (the SGIs and PPIs,
//!   and the SPI `spi_inject` raises) bumps a per-vCPU counter the measuring loop polls.
//!   `SGI_SEND` on the second vCPU does nothing else: no reply. Then ICC_EOIR1_EL1
//!   (EOImode 0).
//! * Synchronous exceptions on the primary while `FAULT_OK` is set (during an op) are
//!   recorded and skipped (ELR += 4): the op reports `failed` and the run continues.
//!   Anything else is fatal: printed, then the vCPU parks (the primary powers off).
//!
//! Every word has a single writer at a time (the MMU is off: no exclusives).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::gic;
use crate::platform::VTIMER_INTID;
use crate::uart::println;
use rt::exceptions::{park, Frame, KIND_IRQ_SPX, KIND_SYNC_SPX};

/// SGI the primary sends itself in `sgi_self`.
pub const SGI_SELF: u32 = 1;
/// SGI the primary sends the second vCPU in `ipi_roundtrip`.
pub const SGI_PING: u32 = 2;
/// SGI the second vCPU answers with.
pub const SGI_PONG: u32 = 3;
/// SGI the primary sends the second vCPU in `sgi_send`: only counted there, no reply.
pub const SGI_SEND: u32 = 4;
/// The SPI `spi_inject` makes pending through GICD_ISPENDR, routed to the primary.
/// INTID 80 (SPI 48) exists everywhere the guest runs and nothing else raises it: Bothy
/// implements INTIDs 32..95 (its PL011 is 33), Xen's dom0less domU as many as the host
/// GIC has (its vpl011 is 32), and QEMU virt with GICv3 wires 33..79 (virtio-mmio 48..79,
/// with no device behind them here), the SMMU's 106..109 (only with `iommu=smmuv3`) and
/// the platform bus from 144; `mmio_gicd_write` rewrites the priorities of 72..75.
pub const SPI_INJECT: u32 = 80;
/// INTIDs 0..COUNTED are counted per vCPU: the SGIs, the PPIs and `SPI_INJECT`. A power
/// of two, so that indexing the counters costs the handler what it did with 32 (a
/// shift, not a multiply; `sgi_self` and the others keep their figures).
pub const COUNTED: usize = 128;
const _: () = assert!((SPI_INJECT as usize) < COUNTED && COUNTED.is_power_of_two());

/// MPIDR affinity of the primary, set once at boot; the other vCPU is index 1.
pub static PRIMARY_MPIDR: AtomicU64 = AtomicU64::new(0);

pub fn cpu_index() -> usize {
    usize::from(arch::mpidr_aff() != PRIMARY_MPIDR.load(Relaxed))
}

/// Per vCPU: how many times each INTID below [`COUNTED`] was acknowledged.
static COUNT: [[AtomicU32; COUNTED]; 2] = [const { [const { AtomicU32::new(0) }; COUNTED] }; 2];
/// Per vCPU: `entry_ticks` of the last virtual timer IRQ (0: none since cleared).
static TIMER_AT: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

pub fn count(cpu: usize, intid: u32) -> &'static AtomicU32 {
    &COUNT[cpu][intid as usize]
}

pub fn timer_at(cpu: usize) -> &'static AtomicU64 {
    &TIMER_AT[cpu]
}

/// Primary: skip-and-record synchronous exceptions (set only while an op runs).
pub static FAULT_OK: AtomicBool = AtomicBool::new(false);
pub static FAULTS: AtomicU32 = AtomicU32::new(0);
pub static LAST_ESR: AtomicU64 = AtomicU64::new(0);

#[no_mangle]
extern "C" fn el1_exception(frame: &mut Frame, kind: u64, entry_ticks: u64) {
    let cpu = cpu_index();
    match kind {
        KIND_IRQ_SPX => irq(cpu, entry_ticks),
        KIND_SYNC_SPX if cpu == 0 && FAULT_OK.load(Relaxed) => {
            LAST_ESR.store(read_sysreg!("esr_el1"), Relaxed);
            FAULTS.store(FAULTS.load(Relaxed) + 1, Release);
            frame.elr += 4;
        }
        _ => {
            println!(
                "# fatal: vCPU {cpu}: unexpected exception at vector {kind}: ESR_EL1={:#x} \
                 FAR_EL1={:#x} ELR_EL1={:#x} (image+{:#x})",
                read_sysreg!("esr_el1"),
                read_sysreg!("far_el1"),
                frame.elr,
                frame.elr.wrapping_sub(rt::image_base() as u64)
            );
            if cpu == 0 {
                crate::power_off();
            }
            park();
        }
    }
}

fn irq(cpu: usize, entry_ticks: u64) {
    let iar = gic::ack();
    let intid = iar & 0xff_ffff;
    if intid >= gic::INTID_SPECIAL_FIRST {
        return;
    }
    if intid == VTIMER_INTID {
        // Level-triggered: disable at the source before EOI so it does not fire again.
        write_sysreg!("cntv_ctl_el0", 0);
        TIMER_AT[cpu].store(entry_ticks, Release);
    }
    if cpu == 1 && intid == SGI_PING {
        gic::send_sgi(SGI_PONG, PRIMARY_MPIDR.load(Relaxed));
    }
    if intid < COUNTED as u32 {
        let c = &COUNT[cpu][intid as usize];
        c.store(c.load(Relaxed).wrapping_add(1), Release);
    }
    gic::eoi(iar);
}
