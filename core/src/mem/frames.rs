//! Physical memory bookkeeping: which ranges are free, and handing them out.
//!
//! At boot `hyp` computes [`free_regions`] from the DTB's memory nodes minus everything
//! already in use (Bothy's image, the DTB, reserved-memory, guest images), and builds a
//! [`RegionAllocator`] from it for translation tables, per-CPU stacks and guest RAM.
//!
//! Invariant: the allocator's free list is sorted, non-overlapping, non-adjacent (merged)
//! and has no empty entries; an allocation is always carved wholly out of one entry, so
//! handed-out ranges never overlap each other or anything reserved. A range given back
//! ([`RegionAllocator::release`], a destroyed VM's RAM and table frames) is merged into
//! its neighbours, so allocating and releasing everything leaves the free list exactly
//! as it was; giving back a range that is (partly) free already is refused, changing
//! nothing (a double free is a hypervisor bug, caught here rather than handing the same
//! frame out twice).

use alloc::vec::Vec;

use crate::Region;

/// `memory` minus `reserved`: sorted, merged, without empty regions. Overlapping or
/// duplicate `memory` entries (firmware DTBs have them) are merged first; reserved
/// ranges outside memory are ignored.
pub fn free_regions(memory: &[Region], reserved: &[Region]) -> Vec<Region> {
    let mut free = normalize(memory);
    for r in normalize(reserved) {
        let mut next = Vec::with_capacity(free.len() + 1);
        for f in free {
            if !f.overlaps(&r) {
                next.push(f);
                continue;
            }
            if f.base < r.base {
                next.push(Region::new(f.base, r.base - f.base));
            }
            if r.end() < f.end() {
                next.push(Region::new(r.end(), f.end() - r.end()));
            }
        }
        free = next;
    }
    free
}

/// Sorts, drops empty regions and merges overlapping or adjacent ones. A region that
/// runs past the end of the address space (a hostile DTB's `reg`) is cut at its end:
/// uncut, such a size made [`RegionAllocator::free_bytes`] overflow (found with the
/// `fdt_platform` fuzz target).
pub(crate) fn normalize(regions: &[Region]) -> Vec<Region> {
    let mut v: Vec<Region> = regions
        .iter()
        .filter(|r| r.size != 0)
        .map(|r| Region::new(r.base, r.end() - r.base))
        .collect();
    v.sort_unstable();
    let mut out: Vec<Region> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.base <= last.end() => {
                // Region::end saturates, so this cannot overflow.
                last.size = last.size.max(r.end() - last.base);
            }
            _ => out.push(r),
        }
    }
    out
}

/// First-fit allocator over free physical ranges, handing out from the top of memory
/// (keeps low memory, which DMA-limited devices and guest images prefer, for last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionAllocator {
    free: Vec<Region>,
}

impl RegionAllocator {
    /// An allocator over `memory` minus `reserved` (see [`free_regions`]).
    pub fn new(memory: &[Region], reserved: &[Region]) -> Self {
        Self::from_free(free_regions(memory, reserved))
    }

    /// An allocator over already-free ranges (normalized here).
    pub fn from_free(free: Vec<Region>) -> Self {
        Self {
            free: normalize(&free),
        }
    }

    /// `size` bytes aligned to `align` (a power of two), from the highest free range that
    /// fits. `None` if `size` is 0, `align` is not a power of two, or nothing fits.
    /// Memory is not zeroed.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        for i in (0..self.free.len()).rev() {
            let f = self.free[i];
            let Some(base) = f.end().checked_sub(size).map(|b| b & !(align - 1)) else {
                continue;
            };
            if base < f.base {
                continue;
            }
            let (lo, hi) = (
                Region::new(f.base, base - f.base),
                Region::new(base + size, f.end() - (base + size)),
            );
            match (lo.size != 0, hi.size != 0) {
                (true, true) => {
                    self.free[i] = lo;
                    self.free.insert(i + 1, hi);
                }
                (true, false) => self.free[i] = lo,
                (false, true) => self.free[i] = hi,
                (false, false) => {
                    self.free.remove(i);
                }
            }
            return Some(base);
        }
        None
    }

    /// Gives `region` back. Refused, changing nothing, if it is empty, wraps, or
    /// overlaps a free range (a double free).
    pub fn release(&mut self, region: Region) -> Result<(), ReleaseError> {
        if region.size == 0 || region.base.checked_add(region.size).is_none() {
            return Err(ReleaseError::Empty);
        }
        // The first free range that ends after `region` starts.
        let i = self.free.partition_point(|f| f.end() <= region.base);
        if self.free.get(i).is_some_and(|f| f.overlaps(&region)) {
            return Err(ReleaseError::AlreadyFree(self.free[i]));
        }
        let joins_prev = i > 0 && self.free[i - 1].end() == region.base;
        let joins_next = self.free.get(i).is_some_and(|f| f.base == region.end());
        match (joins_prev, joins_next) {
            (true, true) => {
                let next = self.free.remove(i);
                self.free[i - 1].size += region.size + next.size;
            }
            (true, false) => self.free[i - 1].size += region.size,
            (false, true) => {
                self.free[i].base = region.base;
                self.free[i].size += region.size;
            }
            (false, false) => self.free.insert(i, region),
        }
        Ok(())
    }

    /// The ranges still free, ascending.
    pub fn free(&self) -> &[Region] {
        &self.free
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.size).sum()
    }
}

/// Why [`RegionAllocator::release`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// Zero bytes, or a range that wraps the address space.
    Empty,
    /// Part of it is free already: this free range overlaps it.
    AlreadyFree(Region),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(base: u64, size: u64) -> Region {
        Region::new(base, size)
    }

    #[test]
    fn memory_past_the_end_of_the_address_space_is_cut_there() {
        let mem = [r(0x4000_0000, 0x4000_0000), r(0x1_0000_0000, u64::MAX)];
        let free = free_regions(&mem, &[r(0x1_0000_0000, 0x1000)]);
        assert_eq!(
            free,
            vec![
                r(0x4000_0000, 0x4000_0000),
                r(0x1_0000_1000, u64::MAX - 0x1_0000_1000)
            ]
        );
        let alloc = RegionAllocator::new(&mem, &[]);
        assert_eq!(alloc.free_bytes(), 0x4000_0000 + (u64::MAX - 0x1_0000_0000));
    }

    #[test]
    fn subtraction_edges() {
        let mem = [r(0x1000, 0x9000)]; // [0x1000, 0xa000)
        assert_eq!(free_regions(&mem, &[]), vec![r(0x1000, 0x9000)]);
        // Hole in the middle.
        assert_eq!(
            free_regions(&mem, &[r(0x3000, 0x1000)]),
            vec![r(0x1000, 0x2000), r(0x4000, 0x6000)]
        );
        // Touching the start / the end exactly.
        assert_eq!(
            free_regions(&mem, &[r(0x1000, 0x1000)]),
            vec![r(0x2000, 0x8000)]
        );
        assert_eq!(
            free_regions(&mem, &[r(0x9000, 0x1000)]),
            vec![r(0x1000, 0x8000)]
        );
        // Adjacent but not overlapping: nothing removed.
        assert_eq!(
            free_regions(&mem, &[r(0, 0x1000), r(0xa000, 0x10)]),
            vec![r(0x1000, 0x9000)]
        );
        // Straddling both ends, covering all, empty reservation, reservation outside.
        assert_eq!(
            free_regions(&mem, &[r(0, 0x2000), r(0x9800, 0x1000)]),
            vec![r(0x2000, 0x7800)]
        );
        assert_eq!(free_regions(&mem, &[r(0, 0x10_0000)]), vec![]);
        assert_eq!(free_regions(&mem, &[r(0x3000, 0)]), vec![r(0x1000, 0x9000)]);
        assert_eq!(
            free_regions(&mem, &[r(0x10_0000, 0x1000)]),
            vec![r(0x1000, 0x9000)]
        );
        // One reservation spanning two memory banks.
        assert_eq!(
            free_regions(&[r(0, 0x1000), r(0x2000, 0x1000)], &[r(0x800, 0x2000)]),
            vec![r(0, 0x800), r(0x2800, 0x800)]
        );
        // Overlapping, duplicate and adjacent memory banks merge; empty ones vanish.
        assert_eq!(
            free_regions(
                &[
                    r(0x2000, 0x1000),
                    r(0, 0x1800),
                    r(0x1000, 0x1000),
                    r(0, 0x1000),
                    r(0x5000, 0)
                ],
                &[]
            ),
            vec![r(0, 0x3000)]
        );
        // Up to the top of the address space, without overflow.
        assert_eq!(
            free_regions(
                &[r(u64::MAX - 0xfff, 0x1000)],
                &[r(u64::MAX - 0x7ff, 0x800)]
            ),
            vec![r(u64::MAX - 0xfff, 0x800)]
        );
    }

    #[test]
    fn allocates_from_the_top_with_alignment() {
        let mut a =
            RegionAllocator::new(&[r(0x4000_0000, 0x100_0000)], &[r(0x40ff_0000, 0x1_0000)]);
        // Top range is [0x4000_0000, 0x40ff_0000): 64 KiB from its top.
        assert_eq!(a.alloc(0x1_0000, 0x1000), Some(0x40fe_0000));
        // 2 MiB aligned 2 MiB: below, at 0x40c0_0000, leaving a hole above.
        assert_eq!(a.alloc(0x20_0000, 0x20_0000), Some(0x40c0_0000));
        assert_eq!(
            a.free(),
            &[r(0x4000_0000, 0xc0_0000), r(0x40e0_0000, 0x1e_0000)]
        );
        // The hole is used first for what fits.
        assert_eq!(a.alloc(0x1000, 0x1000), Some(0x40fd_f000));
        assert_eq!(a.alloc(0, 0x1000), None);
        assert_eq!(a.alloc(0x1000, 3), None);
        assert_eq!(a.alloc(0x1000, 0), None);
    }

    #[test]
    fn exhaustion() {
        let mut a = RegionAllocator::new(&[r(0x1000, 0x3000)], &[]);
        assert_eq!(a.alloc(0x4000, 1), None);
        assert_eq!(a.alloc(0x2000, 0x2000), Some(0x2000));
        assert_eq!(a.alloc(0x2000, 1), None, "only 0x1000 bytes left");
        assert_eq!(a.alloc(0x1000, 0x2000), None, "left range is misaligned");
        assert_eq!(a.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(a.free(), &[]);
        assert_eq!(a.alloc(1, 1), None);
        assert_eq!(RegionAllocator::default().alloc(1, 1), None);
        // A range at the very bottom: end - size must not underflow.
        let mut low = RegionAllocator::from_free(vec![r(0, 0x10)]);
        assert_eq!(low.alloc(0x20, 1), None);
        assert_eq!(low.alloc(0x10, 0x10), Some(0));
    }

    proptest! {
        #[test]
        fn allocations_are_disjoint_aligned_and_inside(
            mem in prop::collection::vec((0u64..1 << 20, 1u64..1 << 16), 1..6),
            res in prop::collection::vec((0u64..1 << 20, 0u64..1 << 14), 0..6),
            reqs in prop::collection::vec((1u64..1 << 14, 0u32..14), 1..40),
        ) {
            let mem: Vec<Region> = mem.into_iter().map(|(b, s)| r(b, s)).collect();
            let res: Vec<Region> = res.into_iter().map(|(b, s)| r(b, s)).collect();
            let free = free_regions(&mem, &res);
            // The free list is sorted, merged, inside memory and outside reservations.
            for w in free.windows(2) {
                prop_assert!(w[0].end() < w[1].base);
            }
            for f in &free {
                prop_assert!(f.size > 0);
                // Every byte lies in some bank (banks may have been merged).
                let inside = (f.base..f.end()).step_by(0x100).chain([f.end() - 1])
                    .all(|a| mem.iter().any(|m| m.contains(a)));
                prop_assert!(inside);
                prop_assert!(res.iter().all(|x| !x.overlaps(f)));
            }
            let total = RegionAllocator::from_free(free.clone()).free_bytes();
            let mut a = RegionAllocator::from_free(free.clone());
            let mut got: Vec<Region> = Vec::new();
            for (size, align_log) in reqs {
                let align = 1u64 << align_log;
                if let Some(base) = a.alloc(size, align) {
                    prop_assert_eq!(base % align, 0);
                    let g = r(base, size);
                    prop_assert!(free.iter().any(|f| f.contains_range(base, size)));
                    prop_assert!(got.iter().all(|o| !o.overlaps(&g)));
                    got.push(g);
                }
            }
            prop_assert_eq!(a.free_bytes() + got.iter().map(|g| g.size).sum::<u64>(), total);
        }

        /// Whatever is allocated and given back, in any order, the free list ends as it
        /// began (merged), and giving anything back twice is refused without effect.
        #[test]
        fn releasing_everything_restores_the_free_list(
            mem in prop::collection::vec((0u64..1 << 20, 1u64..1 << 16), 1..6),
            reqs in prop::collection::vec((1u64..1 << 14, 0u32..14), 1..40),
            order in prop::collection::vec(any::<prop::sample::Index>(), 40),
        ) {
            let mem: Vec<Region> = mem.into_iter().map(|(b, s)| r(b, s)).collect();
            let start = RegionAllocator::new(&mem, &[]);
            let mut a = start.clone();
            let mut got: Vec<Region> = reqs
                .into_iter()
                .filter_map(|(size, align_log)| a.alloc(size, 1 << align_log).map(|b| r(b, size)))
                .collect();
            let mut released = Vec::new();
            for ix in order {
                if got.is_empty() {
                    break;
                }
                let g = got.swap_remove(ix.index(got.len()));
                prop_assert_eq!(a.release(g), Ok(()));
                released.push(g);
                // A second release of the same range changes nothing.
                let before = a.clone();
                prop_assert!(matches!(a.release(g), Err(ReleaseError::AlreadyFree(_))));
                prop_assert_eq!(&a, &before);
                for w in a.free().windows(2) {
                    prop_assert!(w[0].end() < w[1].base, "merged and sorted");
                }
            }
            for g in got {
                prop_assert_eq!(a.release(g), Ok(()));
            }
            prop_assert_eq!(a, start);
        }
    }

    #[test]
    fn release_refuses_empty_wrapping_and_overlapping_ranges() {
        let mut a = RegionAllocator::new(&[r(0x1000, 0x4000)], &[]);
        let base = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(a.release(r(base, 0)), Err(ReleaseError::Empty));
        assert_eq!(a.release(r(u64::MAX, 2)), Err(ReleaseError::Empty));
        // Half of it is still allocated, half is free.
        assert_eq!(
            a.release(r(base - 0x800, 0x1000)),
            Err(ReleaseError::AlreadyFree(r(0x1000, 0x3000)))
        );
        assert_eq!(a.release(r(base, 0x1000)), Ok(()));
        assert_eq!(a.free(), &[r(0x1000, 0x4000)]);
    }
}
