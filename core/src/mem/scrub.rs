//! A restarting VM's RAM scrubbed in pieces, so that no CPU is taken away from the
//! other VMs for the whole of it.
//!
//! A restart must not hand a VM's next run anything of its previous one, so its RAM is
//! zeroed (and cleaned to the point of coherency) before its images are loaded again.
//! Done in one go, that is hundreds of MiB on the CPU that finished the VM's stop,
//! which meanwhile runs no vCPU of any other VM. A [`ScrubJob`] cuts the RAM into
//! pieces of [`PIECE`] bytes ([`ScrubQueue`] holds the waiting restarts) that CPUs take
//! one at a time where they have nothing better to do
//! ([`crate::sched::Scheduler::may_do_background_work`]): an idle CPU before it
//! sleeps, a time-shared CPU at the end of a slice (so a CPU busy with vCPUs still
//! makes progress, one piece per slice). Several CPUs
//! may work on one job: [`ScrubJob::take`] hands each piece out once, and
//! [`ScrubJob::finish`] says which call finished the last one, so exactly one CPU goes
//! on to rebuild the VM's tables and reload its images.
//!
//! The RAM stays the VM's (its ownership record and stage-2 tables unchanged) while it
//! is scrubbed: no vCPU of the VM runs (it is stopped), and nobody else maps it.

use crate::Region;

/// Bytes scrubbed at a time: 2 MiB, some hundred microseconds on hardware.
pub const PIECE: u64 = 2 << 20;

/// The pieces of one region: handed out in order, finished in any order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubJob {
    region: Region,
    piece: u64,
    /// Bytes of `region` handed out so far.
    handed: u64,
    /// Bytes of `region` finished so far.
    finished: u64,
}

impl ScrubJob {
    /// `region` in pieces of `piece` bytes (at least 1; the last piece may be shorter).
    pub fn new(region: Region, piece: u64) -> Self {
        ScrubJob {
            region,
            piece: piece.max(1),
            handed: 0,
            finished: 0,
        }
    }

    /// The next piece to scrub, or `None` once every piece has been handed out.
    pub fn take(&mut self) -> Option<Region> {
        let left = self
            .region
            .size
            .checked_sub(self.handed)
            .filter(|&l| l > 0)?;
        let size = left.min(self.piece);
        let piece = Region::new(self.region.base + self.handed, size);
        self.handed += size;
        Some(piece)
    }

    /// `piece`, which [`Self::take`] handed out, is scrubbed. True for exactly one call:
    /// the one that finishes the whole region.
    pub fn finish(&mut self, piece: Region) -> bool {
        let before = self.finished;
        self.finished = self.finished.saturating_add(piece.size).min(self.handed);
        before < self.region.size && self.finished == self.region.size
    }

    /// Whether every piece has been handed out (some may still be being scrubbed).
    pub fn all_handed_out(&self) -> bool {
        self.handed == self.region.size
    }
}

/// A piece of a posted restart: whose (`owner`), which restart (`gen`), and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece<K> {
    pub owner: K,
    pub gen: u64,
    pub region: Region,
}

/// The restarts waiting for their RAM to be scrubbed, one per owner (a VM), each
/// numbered by its owner's restart count (`gen`). A restart is cancelled by its owner
/// leaving it (stopped, destroyed, restarted afresh: `current` says no any more), and a
/// piece of a cancelled restart finishes nothing. `hyp` keeps one under a lock and
/// scrubs the pieces outside it.
#[derive(Debug)]
pub struct ScrubQueue<K> {
    jobs: alloc::vec::Vec<(K, u64, ScrubJob)>,
}

impl<K: Clone + PartialEq> ScrubQueue<K> {
    pub const fn new() -> Self {
        ScrubQueue {
            jobs: alloc::vec::Vec::new(),
        }
    }

    /// `owner`'s restart `gen`, over `region`: replaces any earlier one of `owner`.
    pub fn post(&mut self, owner: K, gen: u64, region: Region) {
        self.jobs.retain(|(o, _, _)| *o != owner);
        self.jobs.push((owner, gen, ScrubJob::new(region, PIECE)));
    }

    /// Restarts waiting (some of which `take` may find cancelled).
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The next piece to scrub, after dropping the restarts `current(owner, gen)` says
    /// are cancelled.
    pub fn take(&mut self, current: impl Fn(&K, u64) -> bool) -> Option<Piece<K>> {
        self.jobs.retain(|(o, gen, _)| current(o, *gen));
        self.jobs.iter_mut().find_map(|(owner, gen, job)| {
            Some(Piece {
                region: job.take()?,
                owner: owner.clone(),
                gen: *gen,
            })
        })
    }

    /// `piece` is scrubbed. True, for exactly one piece of each restart not cancelled,
    /// when it was the restart's last: the restart is removed, and the caller finishes it.
    pub fn finish(&mut self, piece: &Piece<K>) -> bool {
        let last = self.jobs.iter_mut().position(|(o, gen, job)| {
            *o == piece.owner && *gen == piece.gen && job.finish(piece.region)
        });
        if let Some(i) = last {
            self.jobs.swap_remove(i);
        }
        last.is_some()
    }
}

impl<K: Clone + PartialEq> Default for ScrubQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn pieces_cover_the_region_once_in_order() {
        let mut job = ScrubJob::new(Region::new(0x4000_0000, 5 << 20), PIECE);
        let mut pieces = Vec::new();
        while let Some(p) = job.take() {
            pieces.push(p);
        }
        assert_eq!(
            pieces,
            [
                Region::new(0x4000_0000, 2 << 20),
                Region::new(0x4020_0000, 2 << 20),
                Region::new(0x4040_0000, 1 << 20),
            ]
        );
        assert!(job.all_handed_out());
        assert!(!job.finish(pieces[2]));
        assert!(!job.finish(pieces[0]));
        assert!(job.finish(pieces[1]), "the last piece finishes it");
        assert!(!job.finish(pieces[1]), "and only once");
    }

    #[test]
    fn an_empty_region_hands_out_nothing() {
        let mut job = ScrubJob::new(Region::new(0x4000_0000, 0), PIECE);
        assert_eq!(job.take(), None);
        assert!(job.all_handed_out());
    }

    #[test]
    fn a_cancelled_or_reposted_restart_finishes_nothing() {
        let ram = Region::new(0x4000_0000, 2 * PIECE);
        let mut q = ScrubQueue::new();
        q.post('a', 1, ram);
        q.post('b', 1, Region::new(0x8000_0000, PIECE));
        let first = q.take(|_, _| true).unwrap();
        assert_eq!(
            (first.owner, first.gen, first.region.base),
            ('a', 1, ram.base)
        );
        // VM a restarts afresh (restart 2) while piece 1 of restart 1 is out.
        q.post('a', 2, ram);
        assert_eq!(q.len(), 2, "one restart per owner");
        assert!(!q.finish(&first), "a stale piece counts for nothing");
        // Cancelled (b stopped): dropped at the next take.
        let current = |o: &char, gen: u64| *o == 'a' && gen == 2;
        let p1 = q.take(current).unwrap();
        let p2 = q.take(current).unwrap();
        assert_eq!(q.take(current), None, "all handed out, and b is gone");
        assert_eq!((p1.gen, p2.gen), (2, 2));
        assert!(!q.finish(&p2));
        assert!(q.finish(&p1), "the last piece of restart 2 finishes it");
        assert!(q.is_empty());
    }

    proptest! {
        /// Three CPUs taking and finishing pieces in any interleaving: every byte is
        /// handed out exactly once, and exactly one finish, the last, reports the end.
        #[test]
        fn any_interleaving_scrubs_each_byte_once_and_finishes_once(
            size in 0u64..(20 << 12),
            piece in 1u64..(6 << 12),
            steps in proptest::collection::vec((0usize..3, any::<bool>()), 0..200),
        ) {
            let region = Region::new(0x8000_0000, size);
            let mut job = ScrubJob::new(region, piece);
            let mut holding: [Option<Region>; 3] = [None; 3];
            let mut scrubbed: Vec<Region> = Vec::new();
            let mut finishes = 0;
            let mut step = |cpu: usize, take: bool, job: &mut ScrubJob, holding: &mut [Option<Region>; 3]| {
                match holding[cpu].take() {
                    Some(p) => {
                        scrubbed.push(p);
                        if job.finish(p) {
                            finishes += 1;
                        }
                    }
                    None if take => holding[cpu] = job.take(),
                    None => {}
                }
            };
            for (cpu, take) in steps {
                step(cpu, take, &mut job, &mut holding);
            }
            // Then every CPU works until the job is done.
            for _ in 0..(2 * size / piece + 8) {
                for cpu in 0..3 {
                    step(cpu, true, &mut job, &mut holding);
                }
            }
            prop_assert!(job.all_handed_out());
            scrubbed.sort();
            let mut at = region.base;
            for p in &scrubbed {
                prop_assert_eq!(p.base, at, "a gap or an overlap");
                at = p.end();
            }
            prop_assert_eq!(at, region.end());
            prop_assert_eq!(finishes, usize::from(size > 0));
        }
    }
}
