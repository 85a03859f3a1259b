//! The hypervisor's heap: a fixed arena in .bss, enough for VM objects and
//! device-tree work. Guest memory and page tables come from the frame allocator.

use buddy_system_allocator::LockedHeap;

const HEAP_SIZE: usize = 4 << 20;

#[repr(align(4096))]
struct Arena(#[allow(dead_code)] [u8; HEAP_SIZE]);

static mut ARENA: Arena = Arena([0; HEAP_SIZE]);

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hand the arena to the allocator. Called once, first thing on the boot CPU.
pub fn init() {
    // SAFETY: ARENA is used by nothing but the allocator, and init runs once
    // before any allocation, on one CPU.
    unsafe {
        let start = core::ptr::addr_of_mut!(ARENA) as usize;
        HEAP.lock().init(start, HEAP_SIZE);
    }
}
