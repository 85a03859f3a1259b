//! The emulated distributor (GICD, 64 KiB at the guest's GIC base): global enables, the
//! SPI register arrays and IROUTER routing. GICv3 spec §12.9.
//!
//! The VM sees a GICv3 with a single security state (GICD_CTLR.DS = 1) and affinity
//! routing always on (ARE = 1), so everything for INTIDs 0-31 lives in the redistributors
//! and the matching GICD words are RAZ/WI (§12.9: "when affinity routing is enabled").

use super::access::{RegFile, Width};
use super::irqregs::{self, BitReg, ICFGR, IPRIORITYR};
use super::state::{State, IROUTER_MASK};
use super::{VcpuMask, ID_CIDR, IIDR_VALUE, PIDR2_GICV3, SPI_BASE};

pub const GICD_CTLR: u64 = 0x0000;
pub const GICD_TYPER: u64 = 0x0004;
pub const GICD_IIDR: u64 = 0x0008;
pub const GICD_TYPER2: u64 = 0x000C;
pub const GICD_STATUSR: u64 = 0x0010;
pub const GICD_ITARGETSR: u64 = 0x0800;
pub const GICD_IGRPMODR: u64 = 0x0D00;
/// IROUTER<n> lives at 0x6000 + 8n (n ≥ 32; the first 32 slots are reserved).
pub const GICD_IROUTER: u64 = 0x6000;
pub const GICD_IROUTER_END: u64 = 0x7FE0;
pub const GICD_PIDR2: u64 = 0xFFE8;
pub const GICD_CIDR0: u64 = 0xFFF0;

/// GICD_CTLR bits with DS = 1 (§12.9.4, "single Security state" view).
pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
pub const CTLR_ENABLE_GRP1: u32 = 1 << 1;
pub const CTLR_ARE: u32 = 1 << 4;
pub const CTLR_DS: u32 = 1 << 6;
// RWP (bit 31) always reads 0: our register writes take effect immediately.

/// GICD_TYPER fields (§12.9.38).
pub const TYPER_CPU_NUMBER_SHIFT: u32 = 5;
pub const TYPER_IDBITS_SHIFT: u32 = 19;
/// IDbits = 9: 10 bits of INTID (no LPIs, so INTIDs < 1024).
pub const TYPER_IDBITS: u32 = 9;

/// The distributor frame seen by one accessing vCPU.
pub struct Dist<'a> {
    pub st: &'a mut State,
    pub vcpu: usize,
}

/// GICD_TYPER for `nr_spis` SPIs and `nr_vcpus` vCPUs.
pub fn gicd_typer(nr_spis: u32, nr_vcpus: usize) -> u32 {
    let it_lines = nr_spis.div_ceil(32);
    let cpus = (nr_vcpus.saturating_sub(1) as u32) & 0x7;
    it_lines | cpus << TYPER_CPU_NUMBER_SHIFT | TYPER_IDBITS << TYPER_IDBITS_SHIFT
}

impl Dist<'_> {
    fn typer(&self) -> u32 {
        gicd_typer(self.st.nr_spis, self.st.nr_vcpus)
    }

    /// IROUTER offset → SPI INTID, if it names one this VM has.
    fn router_intid(&self, offset: u64) -> Option<u32> {
        let intid = u32::try_from((offset.checked_sub(GICD_IROUTER)?) / 8).ok()?;
        self.st.is_spi(intid).then_some(intid)
    }
}

impl RegFile for Dist<'_> {
    fn width(&self, offset: u64) -> Width {
        match offset {
            IPRIORITYR..GICD_ITARGETSR => Width::Byte,
            GICD_IROUTER..GICD_IROUTER_END => Width::Dword,
            _ => Width::Word,
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        let intid = (offset - IPRIORITYR) as u32;
        if intid < SPI_BASE {
            return 0;
        }
        irqregs::read_priority(self.st, self.vcpu, intid)
    }

    fn write_byte(&mut self, offset: u64, value: u8) -> VcpuMask {
        let intid = (offset - IPRIORITYR) as u32;
        if intid >= SPI_BASE {
            irqregs::write_priority(self.st, self.vcpu, intid, value);
        }
        VcpuMask::EMPTY
    }

    fn read_word(&mut self, offset: u64) -> u32 {
        match offset {
            GICD_CTLR => {
                let mut ctlr = CTLR_ARE | CTLR_DS;
                if self.st.grp0 {
                    ctlr |= CTLR_ENABLE_GRP0;
                }
                if self.st.grp1 {
                    ctlr |= CTLR_ENABLE_GRP1;
                }
                ctlr
            }
            GICD_TYPER => self.typer(),
            GICD_IIDR => IIDR_VALUE,
            GICD_TYPER2 | GICD_STATUSR => 0,
            GICD_PIDR2 => PIDR2_GICV3,
            GICD_CIDR0..=0xFFFC => ID_CIDR[((offset - GICD_CIDR0) / 4) as usize],
            ICFGR..GICD_IGRPMODR => {
                let first = ((offset - ICFGR) / 4) as u32 * 16;
                if first < SPI_BASE {
                    return 0;
                }
                irqregs::read_config(self.st, self.vcpu, first)
            }
            _ => match BitReg::decode(offset) {
                Some((reg, word)) if word > 0 => {
                    irqregs::read_bits(self.st, self.vcpu, reg, word * 32)
                }
                // TYPER2, STATUSR, IGRPMODR (RAZ/WI with DS = 1), NSACR, SGIR, ...
                _ => 0,
            },
        }
    }

    fn write_word(&mut self, offset: u64, value: u32) -> VcpuMask {
        match offset {
            GICD_CTLR => {
                let (grp0, grp1) = (value & CTLR_ENABLE_GRP0 != 0, value & CTLR_ENABLE_GRP1 != 0);
                let changed = grp1 != self.st.grp1;
                self.st.grp0 = grp0;
                self.st.grp1 = grp1;
                if changed {
                    self.st.all_with_work()
                } else {
                    VcpuMask::EMPTY
                }
            }
            ICFGR..GICD_IGRPMODR => {
                let first = ((offset - ICFGR) / 4) as u32 * 16;
                if first < SPI_BASE {
                    return VcpuMask::EMPTY;
                }
                irqregs::write_config(self.st, self.vcpu, first, value)
            }
            _ => match BitReg::decode(offset) {
                Some((reg, word)) if word > 0 => {
                    irqregs::write_bits(self.st, self.vcpu, reg, word * 32, value)
                }
                _ => VcpuMask::EMPTY,
            },
        }
    }

    fn read_dword(&mut self, offset: u64) -> u64 {
        // `router_intid` names an SPI this VM has: one with an IROUTER.
        self.router_intid(offset)
            .and_then(|intid| self.st.irouter.get((intid - SPI_BASE) as usize))
            .copied()
            .unwrap_or(0)
    }

    fn write_dword(&mut self, offset: u64, value: u64) -> VcpuMask {
        // `router_intid` names an SPI this VM has: one with an IROUTER.
        let Some(intid) = self.router_intid(offset) else {
            return VcpuMask::EMPTY;
        };
        let Some(route) = self.st.irouter.get_mut((intid - SPI_BASE) as usize) else {
            return VcpuMask::EMPTY;
        };
        *route = value & IROUTER_MASK;
        // A pending SPI that now has a (new) target must reach it.
        self.st.kick_for(self.vcpu, intid, false)
    }
}
