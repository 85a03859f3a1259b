//! Builders for synthetic inputs (arm64 Image headers, tiny ELF files) shared by the
//! unit tests and the integration tests in `tests/`; not part of the CLI's interface.

use crate::kimage::{FLAGS_OFFSET, IMAGE_SIZE_OFFSET, MAGIC_OFFSET, TEXT_OFFSET_OFFSET};

/// `len` bytes starting with a valid arm64 Image header (text_offset 0x80000,
/// image_size 2 MiB, flags 0xa), zero elsewhere.
pub fn fake_image(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[TEXT_OFFSET_OFFSET..TEXT_OFFSET_OFFSET + 8].copy_from_slice(&0x8_0000u64.to_le_bytes());
    v[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&0x20_0000u64.to_le_bytes());
    v[FLAGS_OFFSET..FLAGS_OFFSET + 8].copy_from_slice(&0xau64.to_le_bytes());
    v[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&bothy_core::linux::MAGIC);
    v
}

/// A minimal little-endian AArch64 ELF64 with the given (vaddr, filedata, memsz).
pub fn make_elf(segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
    const EH: usize = 64;
    const PH: usize = 56;
    let mut out = vec![0u8; EH + PH * segments.len()];
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&(EH as u64).to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&(EH as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(PH as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (vaddr, data, memsz)) in segments.iter().enumerate() {
        let off = out.len() as u64;
        let ph = EH + i * PH;
        out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes());
        out[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&vaddr.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        out[ph + 48..ph + 56].copy_from_slice(&4096u64.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}
