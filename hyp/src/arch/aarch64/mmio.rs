//! Volatile access to device registers and to physical memory by address.
//!
//! Bothy runs with an identity map (VA == PA), so a physical address is usable
//! as a pointer once it is mapped. These helpers are the only places that turn
//! integers into pointers; callers pass addresses the device tree or Bothy's own
//! allocator vouched for. Only `arch` may pass raw addresses (the functions taking one
//! are `pub(super)`); outside, guest RAM is written through [`copy_to_guest`], which
//! takes a checked IPA range, and what the loader handed over is read through
//! `entry::FirmwareDtb` and `entry::Payload`.

use bothy_core::mem::{GuestRam, NotGuestRam};

/// Read a 32-bit device register.
#[inline(always)]
pub(super) fn read32(addr: u64) -> u32 {
    // SAFETY: callers pass a mapped, 4-byte aligned device register address.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

#[inline(always)]
pub(super) fn write32(addr: u64, value: u32) {
    // SAFETY: callers pass a mapped, 4-byte aligned device register address.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

#[inline(always)]
pub(super) fn read64(addr: u64) -> u64 {
    // SAFETY: callers pass a mapped, 8-byte aligned device register address.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

#[inline(always)]
pub(super) fn write64(addr: u64, value: u64) {
    // SAFETY: callers pass a mapped, 8-byte aligned device register address.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// A byte slice over physical memory Bothy owns or was handed by the loader
/// (the DTB, the payload). The memory is never written while the slice lives.
pub(super) fn phys_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: callers pass memory the device tree or image layout reserved for
    // Bothy; it is mapped (or the MMU is off) and not mutated afterwards.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Copy `src` into a VM's RAM at `ipa`, checked by `ram` to be that VM's RAM (so no
/// caller can name a physical address), and clean it to the point of coherency (a
/// guest starts with its caches off).
pub fn copy_to_guest(ram: &GuestRam, ipa: u64, src: &[u8]) -> Result<(), NotGuestRam> {
    let dst = ram.range(ipa, src.len() as u64)?;
    // SAFETY: `dst` is the VM's RAM block (GuestRam only hands out ranges inside it),
    // which Bothy allocated, mapped and owns; it does not overlap `src` (the payload or
    // Bothy's heap, never given to a VM).
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.base as *mut u8, src.len()) }
    super::sysreg::clean_dcache_range(dst.base, dst.size);
    Ok(())
}

/// Zero `len` bytes at physical address `dst`, which Bothy's allocator handed out.
pub(super) fn zero_phys(dst: u64, len: usize) {
    // SAFETY: as for `copy_to_phys`: Bothy-owned, unaliased memory.
    unsafe { core::ptr::write_bytes(dst as *mut u8, 0, len) }
}

/// Read/write a u64 in a page-table frame Bothy allocated.
pub(super) fn read_table_entry(table: u64, index: usize) -> u64 {
    // SAFETY: `table` is a 4 KiB page-table frame from Bothy's allocator and index < 512.
    unsafe { core::ptr::read_volatile((table as *const u64).add(index & 511)) }
}

pub(super) fn write_table_entry(table: u64, index: usize, value: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((table as *mut u64).add(index & 511), value) }
}
