//! `VcpuMask`: the set of vCPUs a vGIC operation gave new work to.
//!
//! Every state-changing vGIC call returns one; the hypervisor kicks (IPIs) each named vCPU
//! that is running on another physical CPU so that it exits and flushes. The calling vCPU
//! may appear in the mask too: it needs no IPI, its own exit path flushes.

use core::ops::{BitOr, BitOrAssign};

/// A set of vCPU indices (bit `i` = vCPU `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VcpuMask(pub u64);

impl VcpuMask {
    pub const EMPTY: VcpuMask = VcpuMask(0);

    /// The mask naming only `vcpu` (empty if the index cannot be represented).
    pub const fn one(vcpu: usize) -> VcpuMask {
        if vcpu < 64 {
            VcpuMask(1 << vcpu)
        } else {
            VcpuMask(0)
        }
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, vcpu: usize) -> bool {
        vcpu < 64 && self.0 & (1 << vcpu) != 0
    }

    /// The vCPU indices in ascending order (one step per set bit).
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }

    /// vCPUs `0..n` (all 64 if `n >= 64`).
    pub const fn first(n: usize) -> VcpuMask {
        if n >= 64 {
            VcpuMask(u64::MAX)
        } else {
            VcpuMask((1 << n) - 1)
        }
    }
}

impl BitOr for VcpuMask {
    type Output = VcpuMask;
    fn bitor(self, rhs: VcpuMask) -> VcpuMask {
        VcpuMask(self.0 | rhs.0)
    }
}

impl BitOrAssign for VcpuMask {
    fn bitor_assign(&mut self, rhs: VcpuMask) {
        self.0 |= rhs.0;
    }
}
