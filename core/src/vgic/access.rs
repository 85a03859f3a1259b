//! Turning a trapped MMIO access (offset, size 1/2/4/8, maybe misaligned) into the
//! register-sized operations a frame implements.
//!
//! GICv3 spec §12.1.3 ("GIC memory-mapped register access"): registers are 32-bit except
//! the 64-bit IROUTER/TYPER/BASER ones, which also allow 32-bit halves; IPRIORITYR is also
//! byte-accessible. Everything else is CONSTRAINED UNPREDICTABLE, so we pick the kindest
//! behaviour that cannot hurt us: misaligned or odd-sized accesses read as zero and ignore
//! writes, 8-byte accesses to 32-bit registers act as two 32-bit accesses, and narrow reads
//! of 32-bit registers return the addressed bytes. No access panics.

use super::VcpuMask;

/// How the register containing an offset is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// Byte-accessible array (IPRIORITYR).
    Byte,
    /// Ordinary 32-bit register.
    Word,
    /// 64-bit register (IROUTER, GICR_TYPER, ...).
    Dword,
}

/// One register frame (GICD, or one vCPU's GICR) as seen by the access splitter.
/// Offsets given to `*_word` are 4-aligned, to `*_dword` 8-aligned.
pub trait RegFile {
    fn width(&self, offset: u64) -> Width;
    fn read_byte(&mut self, _offset: u64) -> u8 {
        0
    }
    fn write_byte(&mut self, _offset: u64, _value: u8) -> VcpuMask {
        VcpuMask::EMPTY
    }
    fn read_word(&mut self, offset: u64) -> u32;
    fn write_word(&mut self, offset: u64, value: u32) -> VcpuMask;
    fn read_dword(&mut self, _offset: u64) -> u64 {
        0
    }
    fn write_dword(&mut self, _offset: u64, _value: u64) -> VcpuMask {
        VcpuMask::EMPTY
    }
}

fn valid(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size))
}

fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(size) * 8)) - 1
    }
}

/// Bits of the access within its containing register of `reg_bytes` bytes.
fn shift_in(offset: u64, reg_bytes: u64) -> u32 {
    ((offset % reg_bytes) * 8) as u32
}

pub fn read<R: RegFile>(r: &mut R, offset: u64, size: u8) -> u64 {
    if !valid(offset, size) {
        return 0;
    }
    match r.width(offset) {
        Width::Byte => (0..u64::from(size)).fold(0, |acc, i| {
            acc | u64::from(r.read_byte(offset + i)) << (8 * i)
        }),
        Width::Word if size == 8 => {
            u64::from(r.read_word(offset)) | u64::from(r.read_word(offset + 4)) << 32
        }
        Width::Word => {
            let word = u64::from(r.read_word(offset & !3));
            (word >> shift_in(offset, 4)) & size_mask(size)
        }
        Width::Dword => {
            let dword = r.read_dword(offset & !7);
            (dword >> shift_in(offset, 8)) & size_mask(size)
        }
    }
}

pub fn write<R: RegFile>(r: &mut R, offset: u64, size: u8, value: u64) -> VcpuMask {
    if !valid(offset, size) {
        return VcpuMask::EMPTY;
    }
    let value = value & size_mask(size);
    match r.width(offset) {
        Width::Byte => (0..u64::from(size)).fold(VcpuMask::EMPTY, |acc, i| {
            acc | r.write_byte(offset + i, (value >> (8 * i)) as u8)
        }),
        Width::Word if size == 8 => {
            r.write_word(offset, value as u32) | r.write_word(offset + 4, (value >> 32) as u32)
        }
        Width::Word if size == 4 => r.write_word(offset, value as u32),
        Width::Dword if size == 8 => r.write_dword(offset, value),
        Width::Dword if size == 4 => {
            // A 32-bit half: read-modify-write the 64-bit register.
            let base = offset & !7;
            let shift = shift_in(offset, 8);
            let old = r.read_dword(base);
            let new = (old & !(0xffff_ffffu64 << shift)) | value << shift;
            r.write_dword(base, new)
        }
        // Sub-word writes to word/dword registers are not supported by the GIC: ignore.
        _ => VcpuMask::EMPTY,
    }
}
