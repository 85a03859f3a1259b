//! ELF → flat binary: how the hypervisor ELF that cargo builds becomes the raw arm64
//! `Image` that loaders boot.
//!
//! QEMU `-kernel` starts an ELF with x0 = 0 (no DTB) and U-Boot `booti` wants a raw
//! `Image`, so Bothy ships flat. The hypervisor is position independent and linked at
//! 0, so every PT_LOAD segment is copied to its virtual address relative to the lowest
//! one; gaps are zero-filled and each segment's `memsz` (not just `filesz`) is included,
//! so .bss is part of the file and already zero when the loader jumps in. The
//! hypervisor then needs no .bss clearing before its MMU is on, and the payload that
//! follows cannot overlap memory it will use.

use anyhow::{bail, ensure, Context, Result};
use object::{Object, ObjectSegment};

use bothy_core::linux::ImageHeader;

/// The hypervisor's memory image.
pub struct Flat {
    /// Every loadable byte from the lowest vaddr to the end of the last segment's memsz.
    pub bytes: Vec<u8>,
    /// The Image header found at offset 0.
    pub header: ImageHeader,
}

/// A flat image larger than this is certainly a mistake (a segment at a stray vaddr).
const MAX_FLAT: u64 = 256 << 20;

/// Flattens an ELF file's PT_LOAD segments.
pub fn flatten_elf(elf: &[u8]) -> Result<Flat> {
    let file = object::File::parse(elf).context("not a valid ELF file")?;
    ensure!(
        file.architecture() == object::Architecture::Aarch64,
        "ELF is for {:?}, not AArch64",
        file.architecture()
    );
    // For ELF, `segments()` yields exactly the PT_LOAD program headers.
    let mut segs = Vec::new();
    for seg in file.segments() {
        let data = seg
            .data()
            .with_context(|| format!("reading segment at {:#x}", seg.address()))?;
        ensure!(
            data.len() as u64 <= seg.size(),
            "segment at {:#x}: file size exceeds memory size",
            seg.address()
        );
        if seg.size() > 0 {
            segs.push((seg.address(), seg.size(), data));
        }
    }
    let Some(base) = segs.iter().map(|s| s.0).min() else {
        bail!("ELF has no loadable segments");
    };
    let end = segs
        .iter()
        .map(|s| {
            s.0.checked_add(s.1)
                .context("segment wraps the address space")
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(base);
    let len = end - base;
    ensure!(
        len <= MAX_FLAT,
        "loadable segments span {len:#x} bytes from {base:#x}: too large for a flat image"
    );
    let mut bytes = vec![0u8; len as usize];
    for (addr, _, data) in segs {
        let at = (addr - base) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
    }
    let header = ImageHeader::parse(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "the first loadable segment does not start with a valid arm64 Image header \
             ({e}): is this the Bothy hypervisor ELF?"
        )
    })?;
    Ok(Flat { bytes, header })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::make_elf;

    #[test]
    fn lays_out_segments_with_gaps_and_bss() {
        let head = crate::testutil::fake_image(100);
        let elf = make_elf(&[(0, &head, 100), (0x1000, b"data", 0x2000)]);
        let flat = flatten_elf(&elf).unwrap();
        assert_eq!(flat.bytes.len(), 0x3000);
        assert_eq!(&flat.bytes[..100], &head[..]);
        assert!(flat.bytes[100..0x1000].iter().all(|&b| b == 0));
        assert_eq!(&flat.bytes[0x1000..0x1004], b"data");
        assert!(flat.bytes[0x1004..].iter().all(|&b| b == 0));
        assert_eq!(flat.header.text_offset, 0x8_0000);
    }

    #[test]
    fn rejects_non_image_and_garbage() {
        let elf = make_elf(&[(0, &[1u8; 100], 100)]);
        let e = format!("{:#}", flatten_elf(&elf).err().unwrap());
        assert!(e.contains("Image header"), "{e}");
        let e = format!("{:#}", flatten_elf(b"not an elf").err().unwrap());
        assert!(e.contains("ELF"), "{e}");
        let e = format!("{:#}", flatten_elf(&make_elf(&[])).err().unwrap());
        assert!(e.contains("no loadable"), "{e}");
    }
}
