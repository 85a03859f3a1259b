//! A VM's MMIO bus: which emulated device answers an address.
//!
//! Every device window of a VM is left unmapped in stage 2, so each access traps and
//! arrives here as an IPA. The bus is built with the VM from the windows its device
//! tree advertises ([`MmioBus::add`] refuses overlaps), and the exit path asks it
//! which device an access hits ([`MmioBus::find`]) and at which offset. An address no
//! window holds is the guest's mistake: the exit policy gives it an external abort.
//!
//! Windows live in a fixed array, not a `Vec`: the lookup is on the MMIO exit path and
//! a VM has a handful of devices. Unused slots can match no address, so the lookup is
//! an unrolled scan with no length check; the first window added is tried first, so
//! the busiest device (the GIC distributor) goes first. Devices that come later (virtio, doorbells)
//! become more [`Device`] variants and more windows, not more code in the exit path.

use crate::Region;

/// What answers a window of the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The vGIC distributor.
    GicDist,
    /// The vGIC redistributors (one 128 KiB frame pair per vCPU).
    GicRedist,
    /// The VM's PL011 console.
    Uart,
}

/// At most this many windows per VM.
pub const MAX_WINDOWS: usize = 8;

/// Why a window could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// It overlaps a window already on the bus (the other window's device).
    Overlap(Device),
    /// The bus already holds [`MAX_WINDOWS`].
    Full,
    /// A window of zero bytes, or one that wraps around the address space.
    Empty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    base: u64,
    /// Last address in the window (inclusive), so a window may end at `u64::MAX`.
    last: u64,
    device: Device,
}

/// A VM's device windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioBus {
    windows: [Window; MAX_WINDOWS],
    len: usize,
}

impl Default for MmioBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioBus {
    pub const fn new() -> Self {
        // `base > last`: no address is in it.
        const NONE: Window = Window {
            base: 1,
            last: 0,
            device: Device::Uart,
        };
        Self {
            windows: [NONE; MAX_WINDOWS],
            len: 0,
        }
    }

    /// Put `device` at `region`.
    pub fn add(&mut self, region: Region, device: Device) -> Result<(), BusError> {
        if region.size == 0 {
            return Err(BusError::Empty);
        }
        let last = region
            .base
            .checked_add(region.size - 1)
            .ok_or(BusError::Empty)?;
        if let Some(w) = self.windows[..self.len]
            .iter()
            .find(|w| region.base <= w.last && w.base <= last)
        {
            return Err(BusError::Overlap(w.device));
        }
        let slot = self.windows.get_mut(self.len).ok_or(BusError::Full)?;
        *slot = Window {
            base: region.base,
            last,
            device,
        };
        self.len += 1;
        Ok(())
    }

    /// The device whose window holds `ipa`, and the offset of `ipa` in that window.
    pub fn find(&self, ipa: u64) -> Option<(Device, u64)> {
        self.find_access(ipa, 1)
    }

    /// The device whose window holds all of `[ipa, ipa + size)` (an access never
    /// reaches past its window: one straddling the end is nobody's), and the offset.
    #[inline(always)]
    pub fn find_access(&self, ipa: u64, size: u8) -> Option<(Device, u64)> {
        let last = ipa.checked_add(u64::from(size.max(1)) - 1)?;
        self.windows
            .iter()
            .find(|w| w.base <= ipa && ipa <= w.last)
            .filter(|w| last <= w.last)
            .map(|w| (w.device, ipa - w.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bus() -> MmioBus {
        let mut bus = MmioBus::new();
        bus.add(Region::new(0x0800_0000, 0x1_0000), Device::GicDist)
            .unwrap();
        bus.add(Region::new(0x080a_0000, 0x4_0000), Device::GicRedist)
            .unwrap();
        bus.add(Region::new(0x0900_0000, 0x1000), Device::Uart)
            .unwrap();
        bus
    }

    #[test]
    fn finds_the_window_and_offset() {
        let bus = bus();
        assert_eq!(bus.find(0x0800_0004), Some((Device::GicDist, 4)));
        assert_eq!(bus.find(0x080a_0000), Some((Device::GicRedist, 0)));
        assert_eq!(bus.find(0x080d_ffff), Some((Device::GicRedist, 0x3_ffff)));
        assert_eq!(bus.find(0x0900_0018), Some((Device::Uart, 0x18)));
        assert_eq!(bus.find(0x080e_0000), None);
        assert_eq!(bus.find(0x0900_1000), None);
        assert_eq!(bus.find(0), None);
        assert_eq!(bus.find(u64::MAX), None);
        // A whole access must lie in the window.
        assert_eq!(bus.find_access(0x0900_0ff8, 8), Some((Device::Uart, 0xff8)));
        assert_eq!(bus.find_access(0x0900_0ffc, 8), None, "straddles the end");
        assert_eq!(bus.find_access(u64::MAX, 8), None);
    }

    #[test]
    fn refuses_overlaps_empty_windows_and_more_than_fit() {
        let mut bus = bus();
        assert_eq!(
            bus.add(Region::new(0x0800_f000, 0x2000), Device::Uart),
            Err(BusError::Overlap(Device::GicDist))
        );
        assert_eq!(
            bus.add(Region::new(0x0a00_0000, 0), Device::Uart),
            Err(BusError::Empty)
        );
        assert_eq!(
            bus.add(Region::new(u64::MAX, 2), Device::Uart),
            Err(BusError::Empty)
        );
        // A window ending at the top of the address space is fine.
        bus.add(Region::new(u64::MAX - 0xfff, 0x1000), Device::Uart)
            .unwrap();
        assert_eq!(bus.find(u64::MAX), Some((Device::Uart, 0xfff)));
        for i in 0..(MAX_WINDOWS - 4) as u64 {
            bus.add(
                Region::new(0x1_0000_0000 + i * 0x1000, 0x1000),
                Device::Uart,
            )
            .unwrap();
        }
        assert_eq!(
            bus.add(Region::new(0x2_0000_0000, 0x1000), Device::Uart),
            Err(BusError::Full)
        );
        // Refused windows changed nothing.
        assert_eq!(bus.find(0x0800_f000), Some((Device::GicDist, 0xf000)));
    }

    proptest! {
        /// Against a model: an address is found in the window that holds it, and
        /// windows never overlap whatever order they are offered in.
        #[test]
        fn matches_a_model(windows in proptest::collection::vec((0u64..64, 1u64..8), 1..12),
                           probes in proptest::collection::vec(0u64..80, 1..40)) {
            let mut bus = MmioBus::new();
            let mut model: alloc::vec::Vec<(u64, u64, usize)> = alloc::vec::Vec::new();
            let devices = [Device::GicDist, Device::GicRedist, Device::Uart];
            for (i, &(base, size)) in windows.iter().enumerate() {
                let device = devices[i % 3];
                let overlaps = model.iter().any(|&(b, s, _)| base < b + s && b < base + size);
                let result = bus.add(Region::new(base, size), device);
                if overlaps {
                    prop_assert!(matches!(result, Err(BusError::Overlap(_))));
                } else if model.len() == MAX_WINDOWS {
                    prop_assert_eq!(result, Err(BusError::Full));
                } else {
                    prop_assert_eq!(result, Ok(()));
                    model.push((base, size, i % 3));
                }
            }
            for ipa in probes {
                let want = model
                    .iter()
                    .find(|&&(b, s, _)| b <= ipa && ipa < b + s)
                    .map(|&(b, _, d)| (devices[d], ipa - b));
                prop_assert_eq!(bus.find(ipa), want);
            }
        }
    }
}
