//! The per-INTID register arrays shared by the distributor (SPIs) and each
//! redistributor's SGI frame (SGIs/PPIs): IGROUPR, IS/ICENABLER, IS/ICPENDR,
//! IS/ICACTIVER (one bit per INTID), IPRIORITYR (one byte) and ICFGR (two bits).
//! GICv3 spec §12.9 (GICD_*) and §12.11 (GICR_* in the SGI_base frame).
//!
//! Writes that touch an interrupt currently in a list register are approximated: the LR
//! is the truth while the guest runs, so we record the request and the owning vCPU's next
//! flush applies it to the LR (see `lr.rs`). ISACTIVER on such an interrupt is ignored.

use super::irq::Trigger;
use super::state::State;
use super::{VcpuMask, NR_SGIS};

/// Offsets of each array from the start of its frame (same in GICD and GICR SGI_base).
pub const IGROUPR: u64 = 0x080;
pub const ISENABLER: u64 = 0x100;
pub const ICENABLER: u64 = 0x180;
pub const ISPENDR: u64 = 0x200;
pub const ICPENDR: u64 = 0x280;
pub const ISACTIVER: u64 = 0x300;
pub const ICACTIVER: u64 = 0x380;
pub const IPRIORITYR: u64 = 0x400;
pub const ICFGR: u64 = 0xC00;
/// ICFGR field value for edge-triggered (bit [2n+1]; bit [2n] is RES0).
const ICFGR_EDGE: u32 = 0b10;

/// The one-bit-per-INTID registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// Which array `offset` (relative to the frame) falls in, and its word index.
    pub fn decode(offset: u64) -> Option<(BitReg, u32)> {
        let (reg, base) = match offset {
            0x080..=0x0FF => (BitReg::Group, IGROUPR),
            0x100..=0x17F => (BitReg::SetEnable, ISENABLER),
            0x180..=0x1FF => (BitReg::ClearEnable, ICENABLER),
            0x200..=0x27F => (BitReg::SetPending, ISPENDR),
            0x280..=0x2FF => (BitReg::ClearPending, ICPENDR),
            0x300..=0x37F => (BitReg::SetActive, ISACTIVER),
            0x380..=0x3FF => (BitReg::ClearActive, ICACTIVER),
            _ => return None,
        };
        Some((reg, ((offset - base) / 4) as u32))
    }
}

/// Read 32 bits of `reg` for INTIDs `first..first+32` as seen from `vcpu`.
pub fn read_bits(st: &State, vcpu: usize, reg: BitReg, first: u32) -> u32 {
    (0..32).fold(0, |acc, bit| {
        let Some(irq) = st.irq(vcpu, first + bit) else {
            return acc;
        };
        let set = match reg {
            BitReg::Group => irq.group1(),
            BitReg::SetEnable | BitReg::ClearEnable => irq.enabled(),
            BitReg::SetPending | BitReg::ClearPending => irq.pending_view(),
            BitReg::SetActive | BitReg::ClearActive => irq.active_view(),
        };
        acc | u32::from(set) << bit
    })
}

/// Write 32 bits of `reg` for INTIDs `first..first+32`; returns the vCPUs to kick.
pub fn write_bits(st: &mut State, vcpu: usize, reg: BitReg, first: u32, value: u32) -> VcpuMask {
    let mut kick = VcpuMask::EMPTY;
    // The set/clear registers ignore zero bits: visit only the ones (a guest raising
    // one SPI through ISPENDR pays for one INTID, not 32). GROUP takes every bit.
    let mut bits = match reg {
        BitReg::Group => u32::MAX,
        _ => value,
    };
    while bits != 0 {
        let bit = bits.trailing_zeros();
        bits &= bits - 1;
        let intid = first + bit;
        let one = value & (1 << bit) != 0;
        let Some(irq) = st.irq_mut(vcpu, intid) else {
            continue;
        };
        // `lr_dirty`: the owning vCPU's flush has to revisit the LR holding this interrupt.
        let lr_dirty = match reg {
            BitReg::Group => {
                irq.set_group1(one);
                irq.pending_in_lr()
            }
            // All the set/clear registers ignore zero bits.
            _ if !one => continue,
            BitReg::SetEnable => {
                irq.set_enabled(true);
                false
            }
            BitReg::ClearEnable => {
                irq.set_enabled(false);
                irq.pending_in_lr()
            }
            BitReg::SetPending => {
                irq.set_latch(true);
                true
            }
            BitReg::ClearPending => {
                irq.set_latch(false);
                let in_lr = irq.pending_in_lr();
                irq.set_clear_pending_req(irq.clear_pending_req() || in_lr);
                in_lr
            }
            BitReg::SetActive => {
                if irq.lr.is_none() {
                    irq.set_active(true);
                }
                false
            }
            BitReg::ClearActive => {
                irq.set_active(false);
                let in_lr = irq.lr.is_some() && irq.active_view();
                irq.set_clear_active_req(irq.clear_active_req() || in_lr);
                in_lr
            }
        };
        kick |= st.kick_for(vcpu, intid, lr_dirty);
    }
    kick
}

pub fn read_priority(st: &State, vcpu: usize, intid: u32) -> u8 {
    st.irq(vcpu, intid).map_or(0, |irq| irq.priority)
}

/// Priority only orders delivery; it never makes an interrupt newly deliverable.
pub fn write_priority(st: &mut State, vcpu: usize, intid: u32, value: u8) {
    if let Some(irq) = st.irq_mut(vcpu, intid) {
        irq.priority = value;
    }
}

/// ICFGR word `index` (16 INTIDs from `index * 16`).
pub fn read_config(st: &State, vcpu: usize, first: u32) -> u32 {
    (0..16).fold(0, |acc, n| match st.irq(vcpu, first + n) {
        Some(irq) if irq.trigger == Trigger::Edge => acc | ICFGR_EDGE << (2 * n),
        _ => acc,
    })
}

/// SGIs stay edge-triggered. Switching a line that is high to level-sensitive can make
/// it pending, hence the kick mask.
pub fn write_config(st: &mut State, vcpu: usize, first: u32, value: u32) -> VcpuMask {
    let mut kick = VcpuMask::EMPTY;
    for n in 0..16 {
        let intid = first + n;
        if intid < NR_SGIS as u32 {
            continue;
        }
        if let Some(irq) = st.irq_mut(vcpu, intid) {
            irq.trigger = if (value >> (2 * n)) & ICFGR_EDGE != 0 {
                Trigger::Edge
            } else {
                Trigger::Level
            };
            kick |= st.kick_for(vcpu, intid, false);
        }
    }
    kick
}
