//! Decoding the guest's `ICC_SGI1R_EL1` writes (trapped by `hyp` via ICH_HCR_EL2 / the
//! system-register trap) into the set of target vCPUs. Arm GIC v3 spec §12.2.23.
//!
//! A vCPU's virtual MPIDR is Aff0 = its index and Aff1..3 = 0, so target vCPU index =
//! RS * 16 + TargetList bit; a request naming any non-zero Aff1..3 reaches nobody.

use super::VcpuMask;

pub const SGI1R_TARGET_LIST_MASK: u64 = 0xffff;
pub const SGI1R_AFF1_SHIFT: u32 = 16;
pub const SGI1R_INTID_SHIFT: u32 = 24;
pub const SGI1R_INTID_MASK: u64 = 0xf;
pub const SGI1R_AFF2_SHIFT: u32 = 32;
/// Interrupt Routing Mode: 1 = every PE except the sender.
pub const SGI1R_IRM: u64 = 1 << 40;
pub const SGI1R_RS_SHIFT: u32 = 44;
pub const SGI1R_RS_MASK: u64 = 0xf;
pub const SGI1R_AFF3_SHIFT: u32 = 48;
const AFF_MASK: u64 = 0xff;

/// One decoded ICC_SGI1R_EL1 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgi1r {
    pub intid: u32,
    pub target_list: u16,
    pub aff1: u8,
    pub aff2: u8,
    pub aff3: u8,
    pub irm: bool,
    pub rs: u8,
}

impl Sgi1r {
    pub fn decode(v: u64) -> Sgi1r {
        Sgi1r {
            intid: ((v >> SGI1R_INTID_SHIFT) & SGI1R_INTID_MASK) as u32,
            target_list: (v & SGI1R_TARGET_LIST_MASK) as u16,
            aff1: ((v >> SGI1R_AFF1_SHIFT) & AFF_MASK) as u8,
            aff2: ((v >> SGI1R_AFF2_SHIFT) & AFF_MASK) as u8,
            aff3: ((v >> SGI1R_AFF3_SHIFT) & AFF_MASK) as u8,
            irm: v & SGI1R_IRM != 0,
            rs: ((v >> SGI1R_RS_SHIFT) & SGI1R_RS_MASK) as u8,
        }
    }

    /// A quick test, for the exit path, that raw ICC_SGI1R_EL1 value `v` written by
    /// vCPU `from` (of `nr_vcpus`) targets `from` alone: the way a guest writes an
    /// SGI to itself (its own bit, its own block, no affinity or IRM). True implies
    /// `decode(v).targets(from, nr_vcpus) == VcpuMask::one(from)`; a false answer
    /// only means "take the general path" (a list also naming absent vCPUs, say).
    #[inline(always)]
    pub fn only_to_self(v: u64, from: usize, nr_vcpus: usize) -> bool {
        // Every bit but the INTID's must be the canonical self-SGI's: the sender's bit
        // in its block of 16 (RS), no affinity, no IRM. A value with RES0 bits set is
        // not recognised (the general path ignores them). `from < nr_vcpus <= 64`
        // keeps RS within its field.
        const _: () = assert!(super::MAX_VCPUS / 16 <= SGI1R_RS_MASK as usize + 1);
        let canonical = ((from / 16) as u64) << SGI1R_RS_SHIFT | 1 << (from % 16);
        from < nr_vcpus && v & !(SGI1R_INTID_MASK << SGI1R_INTID_SHIFT) == canonical
    }

    /// The vCPUs (of `nr_vcpus`) this request targets when sent by `from`.
    pub fn targets(&self, from: usize, nr_vcpus: usize) -> VcpuMask {
        let all = VcpuMask::first(nr_vcpus).0;
        if self.irm {
            return VcpuMask(all & !VcpuMask::one(from).0);
        }
        if self.aff1 != 0 || self.aff2 != 0 || self.aff3 != 0 {
            return VcpuMask::EMPTY;
        }
        // RS selects a block of 16; blocks from 4 on name vCPUs past the mask's 64.
        let shift = u32::from(self.rs) * 16;
        let list = u64::from(self.target_list).checked_shl(shift).unwrap_or(0);
        VcpuMask(list & all)
    }
}
