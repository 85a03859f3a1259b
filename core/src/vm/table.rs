//! The VM table: VMs named by generation-tagged handles.
//!
//! A [`VmHandle`] is a slot index plus the generation the slot had when the VM was put
//! in it. Removing a VM bumps its slot's generation, so a handle kept by anyone (a
//! manager VM, a doorbell, a message queue, the prompt) stops resolving the moment its
//! VM is gone, even after the slot holds a new VM: a stale handle is an error, never
//! another VM. Slots are reused lowest first, so indexes stay small (the page-ownership
//! record names a VM by its index, [`VmHandle::index`]).
//!
//! Plain data: `hyp` keeps the table behind its lock and decides when a VM may leave
//! it (when no vCPU of it can run; see `lifecycle`).

use alloc::vec::Vec;

/// Names one VM for as long as it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmHandle {
    index: u16,
    generation: u32,
}

impl VmHandle {
    /// The slot: unique among live VMs, reused after a VM is removed.
    pub fn index(self) -> u16 {
        self.index
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    vm: Option<T>,
}

/// Up to `capacity` VMs of type `T`.
#[derive(Debug)]
pub struct VmTable<T> {
    slots: Vec<Slot<T>>,
    capacity: usize,
    len: usize,
}

impl<T> VmTable<T> {
    /// An empty table for at most `capacity` VMs (at most 65536: indexes are 16-bit).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Vec::new(),
            capacity: capacity.min(usize::from(u16::MAX) + 1),
            len: 0,
        }
    }

    /// The handle the next [`Self::insert`] gives, if there is room: a VM being built
    /// needs its slot number (its pages' owner, its scheduler index) before it exists.
    pub fn vacant(&self) -> Option<VmHandle> {
        match self.slots.iter().position(|s| s.vm.is_none()) {
            Some(i) => Some(VmHandle {
                index: i as u16,
                generation: self.slots[i].generation,
            }),
            None if self.slots.len() < self.capacity => Some(VmHandle {
                index: self.slots.len() as u16,
                generation: 0,
            }),
            None => None,
        }
    }

    /// Puts `vm` in the lowest free slot; gives it back if the table is full.
    pub fn insert(&mut self, vm: T) -> Result<VmHandle, T> {
        let index = match self.slots.iter().position(|s| s.vm.is_none()) {
            Some(i) => i,
            None if self.slots.len() < self.capacity => {
                self.slots.push(Slot {
                    generation: 0,
                    vm: None,
                });
                self.slots.len() - 1
            }
            None => return Err(vm),
        };
        let slot = &mut self.slots[index];
        slot.vm = Some(vm);
        self.len += 1;
        Ok(VmHandle {
            // `capacity` keeps indexes within u16.
            index: index as u16,
            generation: slot.generation,
        })
    }

    fn slot(&self, handle: VmHandle) -> Option<&Slot<T>> {
        self.slots
            .get(usize::from(handle.index))
            .filter(|s| s.generation == handle.generation)
    }

    /// The VM `handle` names, if it still exists.
    pub fn get(&self, handle: VmHandle) -> Option<&T> {
        self.slot(handle)?.vm.as_ref()
    }

    pub fn get_mut(&mut self, handle: VmHandle) -> Option<&mut T> {
        self.slots
            .get_mut(usize::from(handle.index))
            .filter(|s| s.generation == handle.generation)?
            .vm
            .as_mut()
    }

    /// Takes the VM out; from now on `handle` (and every copy of it) names nothing.
    pub fn remove(&mut self, handle: VmHandle) -> Option<T> {
        let slot = self
            .slots
            .get_mut(usize::from(handle.index))
            .filter(|s| s.generation == handle.generation)?;
        let vm = slot.vm.take()?;
        // Wrapping after 2^32 removals of one slot could revive a handle that old;
        // a VM created and destroyed every millisecond takes 50 days to get there.
        slot.generation = slot.generation.wrapping_add(1);
        self.len -= 1;
        Some(vm)
    }

    /// The live VMs with their handles, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (VmHandle, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.vm.as_ref().map(|vm| {
                (
                    VmHandle {
                        index: i as u16,
                        generation: s.generation,
                    },
                    vm,
                )
            })
        })
    }

    /// The handle of the live VM in slot `index`.
    pub fn handle_at(&self, index: u16) -> Option<VmHandle> {
        let s = self.slots.get(usize::from(index))?;
        s.vm.as_ref().map(|_| VmHandle {
            index,
            generation: s.generation,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_removed_vms_handle_never_names_its_successor() {
        let mut t = VmTable::new(4);
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None, "removed twice");
        let next = t.vacant();
        let c = t.insert("c").unwrap();
        assert_eq!(next, Some(c), "vacant names the slot insert takes");
        assert_eq!(c.index(), 0, "lowest slot reused");
        assert_ne!(c, a);
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(c), Some(&"c"));
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.handle_at(0), Some(c));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_full_table_gives_the_vm_back() {
        let mut t = VmTable::new(2);
        t.insert(1).unwrap();
        t.insert(2).unwrap();
        assert_eq!(t.insert(3), Err(3));
        assert_eq!(t.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [1, 2]);
    }

    proptest! {
        /// Against a model: every handle ever issued resolves exactly while its VM is
        /// in the table, and live VMs have distinct slots.
        #[test]
        fn handles_resolve_exactly_while_their_vm_lives(
            ops in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..200),
        ) {
            let mut t = VmTable::new(5);
            let mut issued: Vec<(VmHandle, u32)> = Vec::new();
            let mut live: Vec<(VmHandle, u32)> = Vec::new();
            for (n, (insert, ix)) in ops.into_iter().enumerate() {
                let n = n as u32;
                if insert || live.is_empty() {
                    match t.insert(n) {
                        Ok(h) => {
                            prop_assert!(live.iter().all(|(l, _)| l.index() != h.index()));
                            issued.push((h, n));
                            live.push((h, n));
                        }
                        Err(v) => {
                            prop_assert_eq!(v, n);
                            prop_assert_eq!(live.len(), 5);
                        }
                    }
                } else {
                    let (h, v) = live.swap_remove(ix.index(live.len()));
                    prop_assert_eq!(t.remove(h), Some(v));
                }
                for &(h, v) in &issued {
                    let alive = live.contains(&(h, v));
                    prop_assert_eq!(t.get(h), alive.then_some(&v));
                }
                prop_assert_eq!(t.len(), live.len());
            }
        }
    }
}
