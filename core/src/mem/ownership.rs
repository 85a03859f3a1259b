//! Who owns each page of physical memory, and who else may touch it.
//!
//! This is the record that the memory hypercalls (Gunyah's MEM_LEND, MEM_SHARE,
//! MEM_DONATE and MEM_RECLAIM, the guest's MEM_RELEASE, `memextent_donate`) and VM
//! construction and teardown change, and that stage-2 consults before it maps a
//! physical page for a VM ("a guest address is an allegation": a VM names a page, the
//! record says whether it may have it). pKVM keeps the same kind of record in
//! `mem_protect.c`. Like the rest of `core` it decides and does not act: an operation
//! checks and updates the record, and the caller carries out the mapping changes the
//! new state implies (the table below).
//!
//! ## Owners and states
//! A page belongs to Bothy itself ([`Owner::Hypervisor`]) or to a VM
//! ([`Owner::Vm`], an opaque VM handle index). Every tracked page is in one [`State`]:
//! - `Free`: owned by the hypervisor and handed to nobody (unused RAM);
//! - `Owned(o)`: `o`'s alone (a VM's RAM, Bothy's image and tables);
//! - `Lent { owner: o, to: b }`: still `o`'s, but while it is lent only `b` may touch
//!   it; `o` lost access;
//! - `Shared { owner: o, with: b }`: `o`'s, and both `o` and `b` may touch it.
//!
//! ```text
//!                assign(o)                    lend(o, b)
//!     Free  ---------------->  Owned(o)  ---------------->  Lent { owner: o, to: b }
//!           <----------------   |   ^    <----------------
//!               release(o)      |   |      reclaim(o) | relinquish(b)
//!                               |   |
//!                  share(o, b)  |   |  reclaim(o) | relinquish(b)
//!                               v   |
//!                      Shared { owner: o, with: b }
//!
//!     Owned(o)  --donate(o, p)-->  Owned(p)
//! ```
//!
//! | state                  | `o` may access | `b` may access | anyone else |
//! |------------------------|----------------|----------------|-------------|
//! | `Free`                 | –              | –              | no          |
//! | `Owned(o)`             | yes            | –              | no          |
//! | `Lent { o, to: b }`    | no             | yes            | no          |
//! | `Shared { o, with: b }`| yes            | yes            | no          |
//!
//! [`PageOwnership::accessible_by`] is that table over a range. `Free` memory is
//! accessible to nobody, the hypervisor included: Bothy claims what it uses with
//! `assign(range, Owner::Hypervisor)`.
//!
//! What the operations require, page by page, over the *whole* range:
//! - [`assign`](PageOwnership::assign) (building a VM): `Free` → `Owned(o)`;
//! - [`release`](PageOwnership::release) (destroying a VM): `Owned(o)` → `Free`, so it
//!   is refused while any of the range is lent or shared out, or is someone else's
//!   lent or shared in;
//! - [`lend`](PageOwnership::lend), [`share`](PageOwnership::share),
//!   [`donate`](PageOwnership::donate): `Owned(from)` → `Lent`, `Shared`,
//!   `Owned(to)`; `from` and `to` must differ;
//! - [`reclaim`](PageOwnership::reclaim) by the owner and
//!   [`relinquish`](PageOwnership::relinquish) by the borrower: `Lent` or `Shared` →
//!   `Owned(owner)`. The two differ only in who is asking; the borrowers (or owners)
//!   of different pages of one range may differ.
//!
//! A borrower cannot lend, share or donate what it borrowed (only `Owned` pages move),
//! and a page is shared with one VM at a time. Access rights (R/W/X of a Gunyah ACL)
//! and IPAs are not recorded here: the caller keeps them with its stage-2 mappings.
//!
//! ## What the caller does
//! The record changes first; then, before the hypercall returns, the caller removes
//! every mapping the new state forbids (with its TLB invalidation) and only then adds
//! the mappings it allows. `lend` and `donate`: unmap from `from`'s stage-2 (zero the
//! pages if the request says SANITIZE), then the recipient may map them. `share`: the
//! borrower may map; the owner keeps its mapping. `reclaim` and `relinquish`: unmap
//! from the borrower; a lent page may then be mapped for its owner again. `release`:
//! call once the VM can no longer reach the pages (its stage-2 is gone). The hypervisor
//! keeps one record for the machine behind one lock, held across the change and the
//! mapping work.
//!
//! ## Errors
//! An operation validates everything before it changes anything, so a refused one
//! changes nothing. It is refused ([`OwnershipError`]: the operation, the range and a
//! [`Refusal`]) when the range is empty, not 4 KiB aligned or wraps the address
//! space, when the parties are the same, when part of the range is not tracked memory,
//! or when part of it is not in the required state; the last two name the first
//! offending sub-range and, for the last, the state found there. Memory becomes
//! tracked (as `Free`) with [`PageOwnership::add_memory`]; addresses never added (MMIO,
//! holes) are refused by every operation.
//!
//! ## Representation
//! A sorted `Vec` of extents `{ base, pages, state }`. Invariant: extents are
//! non-empty, page-aligned, sorted and non-overlapping, and two extents that touch
//! never have the same state (they are merged), so a VM's 512 MiB of RAM is one entry,
//! not 131072, and the list is canonical: the same per-page states always give the
//! same list. An operation on part of an extent splits it (at most one split at each
//! end of the range); one that leaves equal neighbours merges them. The two splits are
//! reserved before anything changes, so an operation either fails with
//! [`Refusal::OutOfMemory`] or completes without allocating.

use alloc::vec::Vec;
use core::fmt;

use super::PAGE_SIZE;
use crate::Region;

/// Who a page belongs to, or is lent or shared to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// Bothy itself.
    Hypervisor,
    /// A VM, by its handle index (opaque here).
    Vm(u16),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Hypervisor => write!(f, "the hypervisor"),
            Owner::Vm(i) => write!(f, "VM {i}"),
        }
    }
}

/// The ownership state of a page (see the module doc's diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Owned by the hypervisor, handed to nobody.
    Free,
    /// Exclusively the owner's.
    Owned(Owner),
    /// The owner's, lent to `to`: only `to` may access it.
    Lent { owner: Owner, to: Owner },
    /// The owner's, shared with `with`: both may access it.
    Shared { owner: Owner, with: Owner },
}

impl State {
    /// Whether `who` may access a page in this state (may have it in its stage-2).
    pub fn accessible_by(self, who: Owner) -> bool {
        match self {
            State::Free => false,
            State::Owned(o) => o == who,
            State::Lent { to, .. } => to == who,
            State::Shared { owner, with } => owner == who || with == who,
        }
    }

    /// Whether `who` owns the page or borrows it (even if it may not access it now).
    pub fn involves(self, who: Owner) -> bool {
        match self {
            State::Free => false,
            State::Owned(o) => o == who,
            State::Lent { owner, to: b } | State::Shared { owner, with: b } => {
                owner == who || b == who
            }
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Free => write!(f, "free"),
            State::Owned(o) => write!(f, "owned by {o}"),
            State::Lent { owner, to } => write!(f, "owned by {owner} and lent to {to}"),
            State::Shared { owner, with } => {
                write!(f, "owned by {owner} and shared with {with}")
            }
        }
    }
}

/// An operation on the record, with its parties: what an [`OwnershipError`] was
/// refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipOp {
    AddMemory,
    Assign(Owner),
    Release(Owner),
    Lend { from: Owner, to: Owner },
    Share { from: Owner, with: Owner },
    Donate { from: Owner, to: Owner },
    Reclaim(Owner),
    Relinquish(Owner),
}

impl OwnershipOp {
    /// The state a page in `s` moves to, or `None` if the operation may not touch it.
    /// The one place the transitions are written down.
    fn next(self, s: State) -> Option<State> {
        use OwnershipOp as Op;
        match (self, s) {
            (Op::Assign(o), State::Free) => Some(State::Owned(o)),
            (Op::Release(o), State::Owned(x)) if x == o => Some(State::Free),
            (Op::Lend { from, to }, State::Owned(x)) if x == from => {
                Some(State::Lent { owner: from, to })
            }
            (Op::Share { from, with }, State::Owned(x)) if x == from => {
                Some(State::Shared { owner: from, with })
            }
            (Op::Donate { from, to }, State::Owned(x)) if x == from => Some(State::Owned(to)),
            (Op::Reclaim(o), State::Lent { owner, .. } | State::Shared { owner, .. })
                if owner == o =>
            {
                Some(State::Owned(o))
            }
            (
                Op::Relinquish(b),
                State::Lent { owner, to: x } | State::Shared { owner, with: x },
            ) if x == b => Some(State::Owned(owner)),
            _ => None,
        }
    }

    /// False for a lend, share or donation to oneself.
    fn parties_differ(self) -> bool {
        match self {
            OwnershipOp::Lend { from, to: other }
            | OwnershipOp::Share { from, with: other }
            | OwnershipOp::Donate { from, to: other } => from != other,
            _ => true,
        }
    }

    /// The state the operation needs, for messages.
    fn write_requirement(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OwnershipOp as Op;
        match self {
            Op::AddMemory => write!(f, "untracked"),
            Op::Assign(_) => write!(f, "free"),
            Op::Release(o)
            | Op::Lend { from: o, .. }
            | Op::Share { from: o, .. }
            | Op::Donate { from: o, .. } => write!(f, "owned by {o}, not lent or shared"),
            Op::Reclaim(o) => write!(f, "lent or shared out by {o}"),
            Op::Relinquish(b) => write!(f, "lent to or shared with {b}"),
        }
    }
}

/// Why an operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The range has size 0.
    Empty,
    /// The base or the size is not a multiple of 4 KiB.
    Unaligned,
    /// The range wraps past the end of the 64-bit address space.
    Overflow,
    /// A lend, share or donation from a party to itself.
    SameParty,
    /// `at`, part of the range, is not tracked memory.
    Untracked { at: Region },
    /// `add_memory`: `at`, part of the range, is tracked already.
    AlreadyTracked { at: Region },
    /// `at`, part of the range, is in state `found`, which the operation may not
    /// change.
    WrongState { at: Region, found: State },
    /// No memory for the (at most two) extents a split needs.
    OutOfMemory,
}

/// A refused operation: what was asked, on which range, and why. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnershipError {
    pub op: OwnershipOp,
    pub range: Region,
    pub refusal: Refusal,
}

/// `[base, end)` as `0x…..0x…`.
struct Span(Region);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        match r.base.checked_add(r.size) {
            Some(end) => write!(f, "{:#x}..{end:#x}", r.base),
            None => write!(f, "{:#x}+{:#x}", r.base, r.size),
        }
    }
}

impl fmt::Display for OwnershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OwnershipOp as Op;
        let r = Span(self.range);
        match self.op {
            Op::AddMemory => write!(f, "adding memory {r}")?,
            Op::Assign(o) => write!(f, "assigning {r} to {o}")?,
            Op::Release(o) => write!(f, "{o} releasing {r}")?,
            Op::Lend { from, to } => write!(f, "{from} lending {r} to {to}")?,
            Op::Share { from, with } => write!(f, "{from} sharing {r} with {with}")?,
            Op::Donate { from, to } => write!(f, "{from} donating {r} to {to}")?,
            Op::Reclaim(o) => write!(f, "{o} reclaiming {r}")?,
            Op::Relinquish(b) => write!(f, "{b} relinquishing {r}")?,
        }
        write!(f, ": ")?;
        match self.refusal {
            Refusal::Empty => write!(f, "the range is empty"),
            Refusal::Unaligned => write!(f, "base or size is not 4 KiB aligned"),
            Refusal::Overflow => write!(f, "the range wraps the address space"),
            Refusal::SameParty => write!(f, "giver and receiver are the same"),
            Refusal::Untracked { at } => write!(f, "{} is not tracked memory", Span(at)),
            Refusal::AlreadyTracked { at } => write!(f, "{} is tracked already", Span(at)),
            Refusal::WrongState { at, found } => {
                write!(f, "{} is {found}, but must be ", Span(at))?;
                self.op.write_requirement(f)
            }
            Refusal::OutOfMemory => write!(f, "out of memory for the ownership record"),
        }
    }
}

impl core::error::Error for OwnershipError {}

/// A run of pages in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    base: u64,
    pages: u64,
    state: State,
}

impl Extent {
    /// One past the last byte. Cannot overflow: tracked ranges were checked.
    fn end(&self) -> u64 {
        self.base + self.pages * PAGE_SIZE
    }

    fn region(&self) -> Region {
        Region::new(self.base, self.pages * PAGE_SIZE)
    }
}

/// `[base, end)` as a region.
fn span(base: u64, end: u64) -> Region {
    Region::new(base, end - base)
}

/// The end of a valid range: non-empty, page-aligned, not wrapping.
fn check_range(r: Region) -> Result<u64, Refusal> {
    if r.size == 0 {
        return Err(Refusal::Empty);
    }
    if !r.base.is_multiple_of(PAGE_SIZE) || !r.size.is_multiple_of(PAGE_SIZE) {
        return Err(Refusal::Unaligned);
    }
    r.base.checked_add(r.size).ok_or(Refusal::Overflow)
}

/// The ownership of every tracked page of physical memory (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageOwnership {
    /// Sorted, non-overlapping, non-empty, page-aligned; touching extents differ in
    /// state.
    extents: Vec<Extent>,
}

impl PageOwnership {
    /// A record that tracks no memory yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start tracking `range` (RAM), as `Free`. Refused if any of it is tracked already.
    pub fn add_memory(&mut self, range: Region) -> Result<(), OwnershipError> {
        let err = |refusal| OwnershipError {
            op: OwnershipOp::AddMemory,
            range,
            refusal,
        };
        let end = check_range(range).map_err(err)?;
        let i = self.first_ending_after(range.base);
        if let Some(e) = self.extents.get(i).filter(|e| e.base < end) {
            let at = span(e.base.max(range.base), e.end().min(end));
            return Err(err(Refusal::AlreadyTracked { at }));
        }
        self.extents
            .try_reserve(1)
            .map_err(|_| err(Refusal::OutOfMemory))?;
        self.extents.insert(
            i,
            Extent {
                base: range.base,
                pages: range.size / PAGE_SIZE,
                state: State::Free,
            },
        );
        self.merge(i.saturating_sub(1), (i + 2).min(self.extents.len()));
        Ok(())
    }

    /// Give `Free` memory to `owner` (building a VM, or claiming it for Bothy).
    pub fn assign(&mut self, range: Region, owner: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Assign(owner), range)
    }

    /// `owner` gives its memory back to `Free` (destroying a VM). Refused if any of
    /// the range is lent or shared, out or in.
    pub fn release(&mut self, range: Region, owner: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Release(owner), range)
    }

    /// `from` lends its memory to `to`, losing access until it is reclaimed or
    /// relinquished.
    pub fn lend(&mut self, range: Region, from: Owner, to: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Lend { from, to }, range)
    }

    /// `from` shares its memory with `with`; both may access it.
    pub fn share(&mut self, range: Region, from: Owner, with: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Share { from, with }, range)
    }

    /// `from` gives its memory to `to` for good.
    pub fn donate(&mut self, range: Region, from: Owner, to: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Donate { from, to }, range)
    }

    /// `owner` takes back memory it lent or shared out.
    pub fn reclaim(&mut self, range: Region, owner: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Reclaim(owner), range)
    }

    /// The borrower `by` gives back memory lent to or shared with it; it returns to
    /// its owner as by `reclaim`.
    pub fn relinquish(&mut self, range: Region, by: Owner) -> Result<(), OwnershipError> {
        self.change(OwnershipOp::Relinquish(by), range)
    }

    /// The state of the page holding `pa`; `None` if it is not tracked.
    pub fn state_of(&self, pa: u64) -> Option<State> {
        let i = self.first_ending_after(pa);
        self.extents
            .get(i)
            .filter(|e| e.base <= pa)
            .map(|e| e.state)
    }

    /// The ranges `owner` owns or borrows, with their states, in address order: what a
    /// VM holds (lent-out ranges included) or has access to. Touching ranges in
    /// different states come separately.
    pub fn ranges_of(&self, owner: Owner) -> impl Iterator<Item = (Region, State)> + '_ {
        self.extents
            .iter()
            .filter(move |e| e.state.involves(owner))
            .map(|e| (e.region(), e.state))
    }

    /// Whether `who` may access all of `range` (what stage-2 may map for it). False for
    /// an invalid range or one not wholly tracked.
    pub fn accessible_by(&self, range: Region, who: Owner) -> bool {
        self.check(range, |s| s.accessible_by(who)).is_ok()
    }

    /// Every tracked range and its state, in address order (maximal runs: touching
    /// ranges differ in state).
    pub fn extents(&self) -> impl Iterator<Item = (Region, State)> + '_ {
        self.extents.iter().map(|e| (e.region(), e.state))
    }

    /// Index of the first extent that ends after `addr` (the one holding `addr`, if
    /// any holds it).
    fn first_ending_after(&self, addr: u64) -> usize {
        self.extents.partition_point(|e| e.end() <= addr)
    }

    /// Checks that `range` is valid and every page of it is tracked and satisfies
    /// `ok`; returns the index of the extent holding its first page.
    fn check(&self, range: Region, ok: impl Fn(State) -> bool) -> Result<usize, Refusal> {
        let end = check_range(range)?;
        let first = self.first_ending_after(range.base);
        let mut cursor = range.base;
        let mut k = first;
        while cursor < end {
            let next = self.extents.get(k);
            let Some(e) = next.filter(|e| e.base <= cursor) else {
                let stop = next.map_or(end, |e| e.base.min(end));
                return Err(Refusal::Untracked {
                    at: span(cursor, stop),
                });
            };
            if !ok(e.state) {
                return Err(Refusal::WrongState {
                    at: span(cursor, e.end().min(end)),
                    found: e.state,
                });
            }
            cursor = e.end();
            k += 1;
        }
        Ok(first)
    }

    /// Validates `op` over all of `range`, then applies it.
    fn change(&mut self, op: OwnershipOp, range: Region) -> Result<(), OwnershipError> {
        let err = |refusal| OwnershipError { op, range, refusal };
        check_range(range).map_err(err)?;
        if !op.parties_differ() {
            return Err(err(Refusal::SameParty));
        }
        self.check(range, |s| op.next(s).is_some()).map_err(err)?;
        // The two splits below must not allocate halfway through.
        self.extents
            .try_reserve(2)
            .map_err(|_| err(Refusal::OutOfMemory))?;
        let i = self.split_at(range.base);
        let j = self.split_at(range.base + range.size);
        for e in &mut self.extents[i..j] {
            if let Some(s) = op.next(e.state) {
                e.state = s;
            }
        }
        self.merge(i.saturating_sub(1), (j + 1).min(self.extents.len()));
        Ok(())
    }

    /// Makes `addr` (page-aligned) an extent boundary; returns the index of the first
    /// extent starting at or after `addr`.
    fn split_at(&mut self, addr: u64) -> usize {
        let k = self.first_ending_after(addr);
        match self.extents.get_mut(k) {
            Some(e) if e.base < addr => {
                let head = (addr - e.base) / PAGE_SIZE;
                let tail = Extent {
                    base: addr,
                    pages: e.pages - head,
                    state: e.state,
                };
                e.pages = head;
                self.extents.insert(k + 1, tail);
                k + 1
            }
            _ => k,
        }
    }

    /// Merges touching extents with equal states within `extents[lo..hi]`.
    fn merge(&mut self, lo: usize, hi: usize) {
        if hi <= lo + 1 {
            return;
        }
        let mut w = lo;
        for r in lo + 1..hi {
            let next = self.extents[r];
            let last = &mut self.extents[w];
            if last.end() == next.base && last.state == next.state {
                last.pages += next.pages;
            } else {
                w += 1;
                self.extents[w] = next;
            }
        }
        self.extents.drain(w + 1..hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const RAM: u64 = 0x4000_0000;
    const HYP: Owner = Owner::Hypervisor;
    const A: Owner = Owner::Vm(1);
    const B: Owner = Owner::Vm(2);
    const C: Owner = Owner::Vm(3);

    fn r(base: u64, size: u64) -> Region {
        Region::new(base, size)
    }

    /// `pages` pages starting `page` pages into RAM.
    fn pg(page: u64, pages: u64) -> Region {
        r(RAM + page * PAGE_SIZE, pages * PAGE_SIZE)
    }

    /// A MiB of free RAM at `RAM`.
    fn mib() -> PageOwnership {
        let mut o = PageOwnership::new();
        o.add_memory(r(RAM, MIB)).unwrap();
        o
    }

    /// A MiB of RAM owned by `A`.
    fn owned_mib() -> PageOwnership {
        let mut o = mib();
        o.assign(r(RAM, MIB), A).unwrap();
        o
    }

    fn list(o: &PageOwnership) -> Vec<(Region, State)> {
        o.extents().collect()
    }

    fn refusal(e: Result<(), OwnershipError>) -> Refusal {
        e.unwrap_err().refusal
    }

    #[test]
    fn assign_and_release_round_trip() {
        let mut o = mib();
        assert_eq!(o.state_of(RAM), Some(State::Free));
        o.assign(r(RAM, MIB), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
        assert!(o.accessible_by(r(RAM, MIB), A));
        assert!(!o.accessible_by(r(RAM, MIB), B));
        o.release(r(RAM, MIB), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Free)]);
        assert!(
            !o.accessible_by(r(RAM, MIB), HYP),
            "free memory is nobody's to map"
        );
    }

    #[test]
    fn half_a_gigabyte_is_one_extent() {
        let mut o = PageOwnership::new();
        o.add_memory(r(RAM, 1 << 30)).unwrap();
        o.assign(r(RAM, 512 * MIB), A).unwrap();
        assert_eq!(
            list(&o),
            [
                (r(RAM, 512 * MIB), State::Owned(A)),
                (r(RAM + 512 * MIB, 512 * MIB), State::Free),
            ]
        );
    }

    #[test]
    fn lend_and_reclaim() {
        let mut o = owned_mib();
        o.lend(r(RAM, MIB), A, B).unwrap();
        let lent = State::Lent { owner: A, to: B };
        assert_eq!(o.state_of(RAM + MIB - 1), Some(lent));
        assert!(o.accessible_by(r(RAM, MIB), B));
        assert!(!o.accessible_by(r(RAM, MIB), A), "the owner lost access");
        assert!(!o.accessible_by(r(RAM, MIB), C));
        o.reclaim(r(RAM, MIB), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn share_and_reclaim() {
        let mut o = owned_mib();
        o.share(r(RAM, MIB), A, B).unwrap();
        assert_eq!(o.state_of(RAM), Some(State::Shared { owner: A, with: B }));
        assert!(o.accessible_by(r(RAM, MIB), A));
        assert!(o.accessible_by(r(RAM, MIB), B));
        assert!(!o.accessible_by(r(RAM, MIB), C));
        o.reclaim(r(RAM, MIB), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn borrowers_relinquish_lent_and_shared_memory() {
        let mut o = owned_mib();
        o.lend(pg(0, 1), A, B).unwrap();
        o.share(pg(1, 1), A, B).unwrap();
        // Both pages in one call: lent and shared alike go back to their owner.
        o.relinquish(pg(0, 2), B).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn donate_moves_ownership_for_good() {
        let mut o = owned_mib();
        o.donate(pg(0, 4), A, HYP).unwrap();
        assert_eq!(o.state_of(RAM), Some(State::Owned(HYP)));
        assert_eq!(o.state_of(RAM + 4 * PAGE_SIZE), Some(State::Owned(A)));
        o.donate(pg(0, 4), HYP, A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn lending_the_middle_page_splits_and_reclaiming_merges() {
        let mut o = owned_mib();
        let mid = RAM + MIB / 2;
        o.lend(r(mid, PAGE_SIZE), A, B).unwrap();
        assert_eq!(
            list(&o),
            [
                (r(RAM, MIB / 2), State::Owned(A)),
                (r(mid, PAGE_SIZE), State::Lent { owner: A, to: B }),
                (r(mid + PAGE_SIZE, MIB / 2 - PAGE_SIZE), State::Owned(A)),
            ]
        );
        assert_eq!(o.ranges_of(B).count(), 1);
        assert_eq!(o.ranges_of(A).count(), 3, "A still holds what it lent");
        o.reclaim(r(mid, PAGE_SIZE), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn an_operation_across_extents_changes_each_and_merges() {
        let mut o = owned_mib();
        o.lend(pg(2, 2), A, B).unwrap();
        o.share(pg(4, 2), A, C).unwrap();
        // Reclaim both borrowers' pages at once.
        o.reclaim(pg(2, 4), A).unwrap();
        assert_eq!(list(&o), [(r(RAM, MIB), State::Owned(A))]);
    }

    #[test]
    fn separately_added_memory_merges() {
        let mut o = PageOwnership::new();
        o.add_memory(pg(4, 4)).unwrap();
        o.add_memory(pg(0, 2)).unwrap();
        assert_eq!(o.extents().count(), 2, "a hole stays untracked");
        assert_eq!(o.state_of(RAM + 2 * PAGE_SIZE), None);
        o.add_memory(pg(2, 2)).unwrap();
        assert_eq!(list(&o), [(pg(0, 8), State::Free)]);
    }

    #[test]
    fn malformed_ranges_are_refused() {
        let mut o = mib();
        assert_eq!(refusal(o.assign(r(RAM, 0), A)), Refusal::Empty);
        assert_eq!(
            refusal(o.assign(r(RAM + 1, PAGE_SIZE), A)),
            Refusal::Unaligned
        );
        assert_eq!(
            refusal(o.assign(r(RAM, PAGE_SIZE + 8), A)),
            Refusal::Unaligned
        );
        let top = u64::MAX - PAGE_SIZE + 1;
        assert_eq!(refusal(o.assign(r(top, PAGE_SIZE), A)), Refusal::Overflow);
        assert_eq!(
            refusal(o.add_memory(r(top, 2 * PAGE_SIZE))),
            Refusal::Overflow
        );
        assert!(!o.accessible_by(r(RAM, 0), A));
        assert_eq!(list(&o), [(r(RAM, MIB), State::Free)]);
    }

    #[test]
    fn untracked_memory_is_refused() {
        let mut o = mib();
        // Runs past the end of RAM: the first untracked page onwards is named.
        let e = o.assign(r(RAM + MIB - PAGE_SIZE, 3 * PAGE_SIZE), A);
        assert_eq!(
            refusal(e),
            Refusal::Untracked {
                at: r(RAM + MIB, 2 * PAGE_SIZE)
            }
        );
        // Starts below RAM: the gap up to RAM is named.
        let e = o.assign(r(RAM - 2 * PAGE_SIZE, 4 * PAGE_SIZE), A);
        assert_eq!(
            refusal(e),
            Refusal::Untracked {
                at: r(RAM - 2 * PAGE_SIZE, 2 * PAGE_SIZE)
            }
        );
        assert_eq!(o.state_of(RAM - 1), None);
        assert_eq!(o.state_of(RAM + MIB), None);
        assert!(!o.accessible_by(r(RAM + MIB, PAGE_SIZE), A));
        assert_eq!(list(&o), [(r(RAM, MIB), State::Free)]);
    }

    #[test]
    fn adding_tracked_memory_again_is_refused() {
        let mut o = mib();
        let e = o.add_memory(r(RAM + MIB - PAGE_SIZE, 2 * PAGE_SIZE));
        assert_eq!(
            refusal(e),
            Refusal::AlreadyTracked {
                at: r(RAM + MIB - PAGE_SIZE, PAGE_SIZE)
            }
        );
        assert_eq!(list(&o), [(r(RAM, MIB), State::Free)]);
    }

    #[test]
    fn giving_to_oneself_is_refused() {
        let mut o = owned_mib();
        let range = r(RAM, MIB);
        assert_eq!(refusal(o.lend(range, A, A)), Refusal::SameParty);
        assert_eq!(refusal(o.share(range, A, A)), Refusal::SameParty);
        assert_eq!(refusal(o.donate(range, A, A)), Refusal::SameParty);
    }

    #[test]
    fn assigning_memory_that_is_not_free_is_refused() {
        let mut o = mib();
        o.assign(pg(1, 1), A).unwrap();
        assert_eq!(
            o.assign(pg(0, 4), B),
            Err(OwnershipError {
                op: OwnershipOp::Assign(B),
                range: pg(0, 4),
                refusal: Refusal::WrongState {
                    at: pg(1, 1),
                    found: State::Owned(A)
                },
            })
        );
        assert_eq!(o.state_of(RAM), Some(State::Free), "nothing changed");
    }

    #[test]
    fn lending_a_range_half_of_which_is_someone_elses_is_refused() {
        let mut o = mib();
        o.assign(pg(0, 4), A).unwrap();
        o.assign(pg(4, 4), B).unwrap();
        let before = o.clone();
        let e = o.lend(pg(0, 8), A, C);
        assert_eq!(
            refusal(e),
            Refusal::WrongState {
                at: pg(4, 4),
                found: State::Owned(B)
            }
        );
        assert_eq!(o, before);
    }

    #[test]
    fn release_is_refused_while_lent_or_shared() {
        let mut o = owned_mib();
        o.lend(pg(3, 1), A, B).unwrap();
        let before = o.clone();
        assert_eq!(
            refusal(o.release(r(RAM, MIB), A)),
            Refusal::WrongState {
                at: pg(3, 1),
                found: State::Lent { owner: A, to: B }
            }
        );
        assert_eq!(o, before, "a refused release frees nothing");
        // The borrower cannot release what it borrowed either.
        assert_eq!(
            refusal(o.release(pg(3, 1), B)),
            Refusal::WrongState {
                at: pg(3, 1),
                found: State::Lent { owner: A, to: B }
            }
        );
        o.reclaim(pg(3, 1), A).unwrap();
        o.share(pg(5, 1), A, B).unwrap();
        assert_eq!(
            refusal(o.release(r(RAM, MIB), A)),
            Refusal::WrongState {
                at: pg(5, 1),
                found: State::Shared { owner: A, with: B }
            }
        );
        o.relinquish(pg(5, 1), B).unwrap();
        o.release(r(RAM, MIB), A).unwrap();
        assert_eq!(o.ranges_of(A).count(), 0);
    }

    #[test]
    fn releasing_someone_elses_memory_is_refused() {
        let mut o = owned_mib();
        assert_eq!(
            refusal(o.release(pg(0, 1), B)),
            Refusal::WrongState {
                at: pg(0, 1),
                found: State::Owned(A)
            }
        );
    }

    #[test]
    fn borrowed_memory_cannot_be_passed_on() {
        let mut o = owned_mib();
        o.lend(pg(0, 1), A, B).unwrap();
        o.share(pg(1, 1), A, B).unwrap();
        let lent = State::Lent { owner: A, to: B };
        let shared = State::Shared { owner: A, with: B };
        for (range, found) in [(pg(0, 1), lent), (pg(1, 1), shared)] {
            let wrong = Refusal::WrongState { at: range, found };
            assert_eq!(refusal(o.lend(range, B, C)), wrong);
            assert_eq!(refusal(o.share(range, B, C)), wrong);
            assert_eq!(refusal(o.donate(range, B, C)), wrong);
            // Nor can the owner move it again while it is out.
            assert_eq!(refusal(o.lend(range, A, C)), wrong);
            assert_eq!(refusal(o.donate(range, A, C)), wrong);
        }
    }

    #[test]
    fn reclaim_and_relinquish_check_their_side() {
        let mut o = owned_mib();
        o.lend(pg(0, 1), A, B).unwrap();
        let lent = State::Lent { owner: A, to: B };
        let wrong = Refusal::WrongState {
            at: pg(0, 1),
            found: lent,
        };
        assert_eq!(refusal(o.reclaim(pg(0, 1), B)), wrong, "B is no owner");
        assert_eq!(
            refusal(o.relinquish(pg(0, 1), A)),
            wrong,
            "A is no borrower"
        );
        assert_eq!(refusal(o.relinquish(pg(0, 1), C)), wrong);
        // Owned memory that was never lent has nothing to reclaim.
        assert_eq!(
            refusal(o.reclaim(pg(0, 2), A)),
            Refusal::WrongState {
                at: pg(1, 1),
                found: State::Owned(A)
            }
        );
        assert_eq!(o.state_of(RAM), Some(lent));
    }

    #[test]
    fn ranges_of_lists_what_a_vm_holds_or_borrows() {
        let mut o = PageOwnership::new();
        o.add_memory(pg(0, 16)).unwrap();
        o.assign(pg(0, 4), A).unwrap();
        o.assign(pg(4, 4), B).unwrap();
        o.assign(pg(8, 2), HYP).unwrap();
        o.lend(pg(1, 1), A, B).unwrap();
        o.share(pg(5, 1), B, A).unwrap();
        let of_a: Vec<_> = o.ranges_of(A).collect();
        assert_eq!(
            of_a,
            [
                (pg(0, 1), State::Owned(A)),
                (pg(1, 1), State::Lent { owner: A, to: B }),
                (pg(2, 2), State::Owned(A)),
                (pg(5, 1), State::Shared { owner: B, with: A }),
            ]
        );
        assert_eq!(
            o.ranges_of(HYP).collect::<Vec<_>>(),
            [(pg(8, 2), State::Owned(HYP))]
        );
        assert_eq!(o.ranges_of(C).count(), 0);
        assert!(!o.accessible_by(pg(4, 2), A) && o.accessible_by(pg(5, 1), A));
        assert!(!o.accessible_by(pg(0, 2), A), "page 1 is lent away");
        assert!(o.accessible_by(pg(1, 1), B));
    }

    #[test]
    fn errors_name_the_operation_the_range_and_why() {
        let mut o = owned_mib();
        o.lend(pg(3, 1), A, B).unwrap();
        let e = o.release(r(RAM, MIB), A).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VM 1 releasing 0x40000000..0x40100000: 0x40003000..0x40004000 is owned by \
             VM 1 and lent to VM 2, but must be owned by VM 1, not lent or shared"
        );
        let e = o.lend(r(RAM + 1, PAGE_SIZE), A, HYP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VM 1 lending 0x40000001..0x40001001 to the hypervisor: base or size is not \
             4 KiB aligned"
        );
        let e = o.assign(r(RAM + MIB, PAGE_SIZE), C).unwrap_err();
        assert_eq!(
            e.to_string(),
            "assigning 0x40100000..0x40101000 to VM 3: 0x40100000..0x40101000 is not \
             tracked memory"
        );
    }

    // ---- Random operations against a per-page model ----

    /// Pages of the small address space the property test works in; pages 6 and 7 and
    /// 14 and 15 are never tracked.
    const SPACE: u64 = 16;
    const PARTIES: [Owner; 4] = [HYP, Owner::Vm(0), Owner::Vm(1), Owner::Vm(2)];

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Assign,
        Release,
        Lend,
        Share,
        Donate,
        Reclaim,
        Relinquish,
    }

    #[derive(Clone, Copy, Debug)]
    struct Step {
        kind: Kind,
        page: u64,
        pages: u64,
        /// Misaligns the range by this many bytes (usually 0).
        skew: u64,
        a: usize,
        b: usize,
    }

    fn step() -> impl Strategy<Value = Step> {
        let kind = prop_oneof![
            Just(Kind::Assign),
            Just(Kind::Release),
            Just(Kind::Lend),
            Just(Kind::Share),
            Just(Kind::Donate),
            Just(Kind::Reclaim),
            Just(Kind::Relinquish),
        ];
        let skew = prop_oneof![8 => Just(0u64), 1 => 1..PAGE_SIZE];
        (kind, 0..SPACE, 0..6u64, skew, 0..4usize, 0..4usize).prop_map(
            |(kind, page, pages, skew, a, b)| Step {
                kind,
                page,
                pages,
                skew,
                a,
                b,
            },
        )
    }

    fn op_of(s: &Step) -> OwnershipOp {
        let (a, b) = (PARTIES[s.a], PARTIES[s.b]);
        match s.kind {
            Kind::Assign => OwnershipOp::Assign(a),
            Kind::Release => OwnershipOp::Release(a),
            Kind::Lend => OwnershipOp::Lend { from: a, to: b },
            Kind::Share => OwnershipOp::Share { from: a, with: b },
            Kind::Donate => OwnershipOp::Donate { from: a, to: b },
            Kind::Reclaim => OwnershipOp::Reclaim(a),
            Kind::Relinquish => OwnershipOp::Relinquish(a),
        }
    }

    fn run(o: &mut PageOwnership, op: OwnershipOp, range: Region) -> Result<(), OwnershipError> {
        use OwnershipOp as Op;
        match op {
            Op::AddMemory => o.add_memory(range),
            Op::Assign(a) => o.assign(range, a),
            Op::Release(a) => o.release(range, a),
            Op::Lend { from, to } => o.lend(range, from, to),
            Op::Share { from, with } => o.share(range, from, with),
            Op::Donate { from, to } => o.donate(range, from, to),
            Op::Reclaim(a) => o.reclaim(range, a),
            Op::Relinquish(a) => o.relinquish(range, a),
        }
    }

    type Model = BTreeMap<u64, State>;

    /// The model's answer: the refusal (computed page by page, with maximal runs of
    /// one state or of untracked pages as the offending sub-range), or the new model.
    fn model_step(m: &Model, op: OwnershipOp, range: Region) -> Result<Model, Refusal> {
        let end = check_range(range)?;
        if !op.parties_differ() {
            return Err(Refusal::SameParty);
        }
        let (first, last) = ((range.base - RAM) / PAGE_SIZE, (end - RAM) / PAGE_SIZE);
        let addr = |p: u64| RAM + p * PAGE_SIZE;
        let mut next = m.clone();
        for p in first..last {
            let run_end =
                |same: &dyn Fn(u64) -> bool| (p..last).find(|&q| !same(q)).unwrap_or(last);
            match m.get(&p) {
                None => {
                    let stop = run_end(&|q| !m.contains_key(&q));
                    let at = span(addr(p), addr(stop));
                    return Err(Refusal::Untracked { at });
                }
                Some(&s) => match op.next(s) {
                    Some(n) => {
                        next.insert(p, n);
                    }
                    None => {
                        let stop = run_end(&|q| m.get(&q) == Some(&s));
                        let at = span(addr(p), addr(stop));
                        return Err(Refusal::WrongState { at, found: s });
                    }
                },
            }
        }
        Ok(next)
    }

    /// The record agrees with the model page by page and keeps its invariants.
    fn check_against(o: &PageOwnership, m: &Model) -> Result<(), TestCaseError> {
        let mut pages = Model::new();
        for w in o.extents.windows(2) {
            prop_assert!(w[0].end() <= w[1].base, "unsorted or overlapping: {w:?}");
            prop_assert!(
                w[0].end() < w[1].base || w[0].state != w[1].state,
                "unmerged: {w:?}"
            );
        }
        for e in &o.extents {
            prop_assert!(e.pages > 0 && e.base.is_multiple_of(PAGE_SIZE), "{e:?}");
            for i in 0..e.pages {
                pages.insert((e.base - RAM) / PAGE_SIZE + i, e.state);
            }
        }
        prop_assert_eq!(&pages, m);
        for p in 0..SPACE {
            let pa = RAM + p * PAGE_SIZE + 123;
            prop_assert_eq!(o.state_of(pa), m.get(&p).copied());
            for who in PARTIES {
                let may = m.get(&p).is_some_and(|s| s.accessible_by(who));
                prop_assert_eq!(o.accessible_by(pg(p, 1), who), may);
            }
        }
        for who in PARTIES {
            let held: u64 = o.ranges_of(who).map(|(r, _)| r.size / PAGE_SIZE).sum();
            let model = m.values().filter(|s| s.involves(who)).count() as u64;
            prop_assert_eq!(held, model);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn random_operations_match_a_per_page_model(
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut o = PageOwnership::new();
            let mut m = Model::new();
            for (first, pages) in [(0, 6), (8, 6)] {
                o.add_memory(pg(first, pages)).unwrap();
                for p in first..first + pages {
                    m.insert(p, State::Free);
                }
            }
            check_against(&o, &m)?;
            for s in &steps {
                let op = op_of(s);
                let range = r(RAM + s.page * PAGE_SIZE + s.skew, s.pages * PAGE_SIZE);
                let before = o.clone();
                let got = run(&mut o, op, range);
                match model_step(&m, op, range) {
                    Ok(next) => {
                        prop_assert_eq!(got, Ok(()), "{:?} on {:?}", op, range);
                        m = next;
                    }
                    Err(refusal) => {
                        prop_assert_eq!(got, Err(OwnershipError { op, range, refusal }));
                        prop_assert_eq!(&o, &before, "a refused operation changed the record");
                    }
                }
                check_against(&o, &m)?;
            }
        }
    }
}
