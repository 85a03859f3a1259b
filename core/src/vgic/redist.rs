//! The emulated redistributors (GICR): one 128 KiB block per vCPU, an RD_base frame
//! (control, TYPER, WAKER) followed by an SGI_base frame at +64 KiB (the SGI/PPI register
//! arrays). GICv3 spec §12.10 (RD_base) and §12.11 (SGI_base).
//!
//! Any vCPU may access any redistributor (Linux's `gic_populate_rdist` walks them all
//! reading GICR_TYPER until it finds its own affinity or `Last`), so the frame is picked
//! from the offset, never from the accessing vCPU. No LPIs: PROPBASER/PENDBASER are RAZ/WI
//! and GICR_TYPER advertises neither PLPIS nor VLPIS nor DirectLPI.

use super::access::{RegFile, Width};
use super::irqregs::{self, BitReg, ICFGR, IPRIORITYR};
use super::state::State;
use super::{VcpuMask, ID_CIDR, IIDR_VALUE, NR_PRIVATE, PIDR2_GICV3};

/// Offset of the SGI_base frame within one redistributor.
pub const SGI_FRAME: u64 = 0x1_0000;

// RD_base frame (§12.10).
pub const GICR_CTLR: u64 = 0x0000;
pub const GICR_IIDR: u64 = 0x0004;
pub const GICR_TYPER: u64 = 0x0008;
/// The upper 32-bit half of GICR_TYPER.
pub const GICR_TYPER_HI: u64 = 0x000C;
pub const GICR_STATUSR: u64 = 0x0010;
pub const GICR_WAKER: u64 = 0x0014;
pub const GICR_PROPBASER: u64 = 0x0070;
pub const GICR_PENDBASER: u64 = 0x0078;
pub const GICR_PIDR2: u64 = 0xFFE8;
pub const GICR_CIDR0: u64 = 0xFFF0;

/// GICR_WAKER (§12.10.28): Linux clears ProcessorSleep and polls ChildrenAsleep == 0.
/// While ProcessorSleep is 1 the redistributor holds every interrupt that arrives for
/// its PE pending and forwards none to the CPU interface, and releases (takes back)
/// those pending there; ChildrenAsleep follows ProcessorSleep at once.
pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// GICR_TYPER (§12.10.27).
pub const TYPER_LAST: u64 = 1 << 4;
pub const TYPER_PROCESSOR_NUMBER_SHIFT: u32 = 8;
pub const TYPER_AFFINITY_SHIFT: u32 = 32;

// SGI_base frame, relative to the redistributor (§12.11).
const SGI_IPRIORITYR: u64 = SGI_FRAME + IPRIORITYR;
const SGI_IPRIORITYR_END: u64 = SGI_IPRIORITYR + NR_PRIVATE as u64;
/// GICR_ICFGR0 (SGIs, read-only edge) and GICR_ICFGR1 (PPIs).
const SGI_ICFGR0: u64 = SGI_FRAME + ICFGR;
const SGI_ICFGR1: u64 = SGI_FRAME + ICFGR + 4;

/// One vCPU's redistributor (`cpu`), whoever accesses it.
pub struct Redist<'a> {
    pub st: &'a mut State,
    pub cpu: usize,
}

/// GICR_TYPER of vCPU `cpu`'s redistributor: Affinity_Value = the vCPU's MPIDR affinity
/// (Aff0 = index), Processor_Number = index.
pub fn gicr_typer(cpu: usize, nr_vcpus: usize) -> u64 {
    let last = if cpu + 1 == nr_vcpus { TYPER_LAST } else { 0 };
    let cpu = cpu as u64;
    cpu << TYPER_AFFINITY_SHIFT | (cpu & 0xffff) << TYPER_PROCESSOR_NUMBER_SHIFT | last
}

impl Redist<'_> {
    fn typer(&self) -> u64 {
        gicr_typer(self.cpu, self.st.nr_vcpus)
    }
}

impl RegFile for Redist<'_> {
    fn width(&self, offset: u64) -> Width {
        match offset {
            GICR_TYPER..GICR_STATUSR => Width::Dword,
            GICR_PROPBASER..0x80 => Width::Dword,
            SGI_IPRIORITYR..SGI_IPRIORITYR_END => Width::Byte,
            _ => Width::Word,
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        irqregs::read_priority(self.st, self.cpu, (offset - SGI_IPRIORITYR) as u32)
    }

    fn write_byte(&mut self, offset: u64, value: u8) -> VcpuMask {
        irqregs::write_priority(self.st, self.cpu, (offset - SGI_IPRIORITYR) as u32, value);
        VcpuMask::EMPTY
    }

    fn read_word(&mut self, offset: u64) -> u32 {
        match offset {
            // No LPIs, writes complete at once: EnableLPIs, RWP and UWP all 0.
            GICR_CTLR | GICR_STATUSR => 0,
            GICR_IIDR => IIDR_VALUE,
            GICR_WAKER => {
                if self.st.cpus[self.cpu].asleep() {
                    WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP
                } else {
                    0
                }
            }
            GICR_PIDR2 => PIDR2_GICV3,
            GICR_CIDR0..=0xFFFC => ID_CIDR[((offset - GICR_CIDR0) / 4) as usize],
            SGI_ICFGR0 => irqregs::read_config(self.st, self.cpu, 0),
            SGI_ICFGR1 => irqregs::read_config(self.st, self.cpu, 16),
            _ => match offset.checked_sub(SGI_FRAME).and_then(BitReg::decode) {
                // Only word 0 of each array exists in the SGI frame (32 private INTIDs).
                Some((reg, 0)) => irqregs::read_bits(self.st, self.cpu, reg, 0),
                // IGRPMODR0 and NSACR are RAZ/WI with DS = 1.
                _ => 0,
            },
        }
    }

    fn write_word(&mut self, offset: u64, value: u32) -> VcpuMask {
        match offset {
            GICR_WAKER => {
                let cpu = &mut self.st.cpus[self.cpu];
                let sleep = value & WAKER_PROCESSOR_SLEEP != 0;
                if sleep == cpu.asleep() {
                    return VcpuMask::EMPTY;
                }
                cpu.set_asleep(sleep);
                // Falling asleep, what waits unacknowledged in its LRs goes back
                // (reconcile takes it out); waking, what was held (still in the `pend`
                // index: nothing prunes it while asleep) goes in. Either way its next
                // flush acts, if there is anything to act on.
                let work = if sleep {
                    cpu.dirty |= cpu.occupied;
                    cpu.occupied != 0
                } else {
                    cpu.pend_words != 0
                };
                if work {
                    VcpuMask::one(self.cpu)
                } else {
                    VcpuMask::EMPTY
                }
            }
            SGI_ICFGR0 => VcpuMask::EMPTY,
            SGI_ICFGR1 => irqregs::write_config(self.st, self.cpu, 16, value),
            _ => match offset.checked_sub(SGI_FRAME).and_then(BitReg::decode) {
                Some((reg, 0)) => irqregs::write_bits(self.st, self.cpu, reg, 0, value),
                _ => VcpuMask::EMPTY,
            },
        }
    }

    fn read_dword(&mut self, offset: u64) -> u64 {
        match offset {
            GICR_TYPER => self.typer(),
            // RAZ/WI: no LPI support.
            GICR_PROPBASER | GICR_PENDBASER => 0,
            _ => 0,
        }
    }
}
