//! Guest RAM as the hypervisor may touch it.
//!
//! An address a guest hands Bothy (a buffer for a hypercall, a message queue, an entry
//! point) or that Bothy computed for it (where an image goes) is a claim to check, not
//! a pointer. [`GuestRam::range`] is the one place an IPA range becomes a physical
//! one: it must lie wholly inside the VM's RAM (no wrap-around, no straddling the end,
//! nothing outside), or the caller gets an error naming the range instead of a
//! physical address. `hyp` copies into guest memory only through ranges from here.
//!
//! Today a VM's RAM is one block (see [`super::VmMemory`]); memory lent or shared to a
//! VM later will be more ranges here, checked the same way.

use crate::Region;
use core::fmt;

/// A VM's RAM: an IPA range and the physical block behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    ipa: Region,
    pa: u64,
}

/// Why an IPA range is not guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotGuestRam {
    pub ipa: u64,
    pub len: u64,
}

impl fmt::Display for NotGuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x} bytes at IPA {:#x} are not all in the VM's RAM",
            self.len, self.ipa
        )
    }
}

impl GuestRam {
    pub const fn new(ipa: Region, pa: u64) -> Self {
        Self { ipa, pa }
    }

    /// The RAM's IPA range.
    pub fn ipa(&self) -> Region {
        self.ipa
    }

    /// The physical range behind `[ipa, ipa + len)`, if all of it is guest RAM. An
    /// empty range is fine where it starts inside RAM or at its end.
    pub fn range(&self, ipa: u64, len: u64) -> Result<Region, NotGuestRam> {
        let refuse = NotGuestRam { ipa, len };
        let end = ipa.checked_add(len).ok_or(refuse)?;
        if ipa < self.ipa.base || end > self.ipa.end() {
            return Err(refuse);
        }
        Ok(Region::new(self.pa + (ipa - self.ipa.base), len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAM: GuestRam = GuestRam::new(Region::new(0x4000_0000, 0x100_0000), 0x8_0000_0000);

    #[test]
    fn inside_translates_and_the_edges_hold() {
        assert_eq!(
            RAM.range(0x4000_0000, 0x1000),
            Ok(Region::new(0x8_0000_0000, 0x1000))
        );
        assert_eq!(
            RAM.range(0x40ff_f000, 0x1000),
            Ok(Region::new(0x8_00ff_f000, 0x1000))
        );
        assert_eq!(RAM.range(0x4100_0000, 0), Ok(Region::new(0x8_0100_0000, 0)));
        // One byte past the end, below the start, straddling, wrapping.
        assert!(RAM.range(0x40ff_f000, 0x1001).is_err());
        assert!(RAM.range(0x3fff_ffff, 2).is_err());
        assert!(RAM.range(0x4100_0000, 1).is_err());
        assert!(RAM.range(u64::MAX, 2).is_err());
        assert_eq!(
            RAM.range(0x4000_0010, u64::MAX),
            Err(NotGuestRam {
                ipa: 0x4000_0010,
                len: u64::MAX
            })
        );
    }

    proptest! {
        /// Whatever a guest names, a range is returned only if every byte of it is RAM,
        /// and it is the same bytes physically.
        #[test]
        fn only_ram_is_ever_reachable(ipa: u64, len in prop_oneof![0u64..0x2000, any::<u64>()]) {
            match RAM.range(ipa, len) {
                Ok(pa) => {
                    prop_assert!(ipa >= 0x4000_0000 && ipa + len <= 0x4100_0000);
                    prop_assert_eq!(pa, Region::new(0x8_0000_0000 + (ipa - 0x4000_0000), len));
                }
                Err(e) => {
                    prop_assert_eq!(e, NotGuestRam { ipa, len });
                    let inside = ipa >= 0x4000_0000
                        && ipa.checked_add(len).is_some_and(|end| end <= 0x4100_0000);
                    prop_assert!(!inside);
                }
            }
        }
    }
}
