//! Physical or intermediate-physical address ranges, the unit every layer of Bothy
//! speaks in (DTB `reg` entries, guest RAM, MMIO windows, image payloads).

/// A half-open address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Region {
    pub base: u64,
    pub size: u64,
}

impl Region {
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last byte; saturates so a hostile `reg` cannot wrap.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// True when `[addr, addr + len)` lies wholly inside this region.
    pub const fn contains_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.base && end <= self.end(),
            None => false,
        }
    }

    pub const fn overlaps(&self, other: &Region) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_do_not_wrap() {
        let r = Region::new(0x4000_0000, 0x1000);
        assert!(r.contains(0x4000_0fff));
        assert!(!r.contains(0x4000_1000));
        assert!(r.contains_range(0x4000_0ff0, 0x10));
        assert!(!r.contains_range(0x4000_0ff0, 0x11));
        assert!(!r.contains_range(u64::MAX, 2));
        assert_eq!(Region::new(u64::MAX - 1, 10).end(), u64::MAX);
    }

    #[test]
    fn overlap_is_symmetric_and_half_open() {
        let a = Region::new(0, 0x100);
        let b = Region::new(0x100, 0x100);
        assert!(!a.overlaps(&b) && !b.overlaps(&a));
        let c = Region::new(0xff, 2);
        assert!(a.overlaps(&c) && c.overlaps(&b));
    }
}
