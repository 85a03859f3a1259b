//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst), and loading
//! guest kernels in the forms distributions ship them.
//!
//! Both the hypervisor's flat binary and every guest kernel carry this header: the
//! former so that any Linux loader (QEMU `-kernel`, U-Boot `booti`) boots Bothy, the
//! latter because the hypervisor reads `text_offset`/`image_size` to place the guest.
//! Guest kernels may come gzip-compressed (`Image.gz`, some distributions' `vmlinuz`)
//! or as an EFI zboot image with a gzip payload; the CLI unpacks them here so the
//! hypervisor only ever sees a plain `Image`. The header itself is validated by
//! `bothy_core::linux`, the same code the hypervisor runs, so the CLI rejects exactly
//! what the hypervisor would.

use std::io::Read;

use anyhow::{bail, ensure, Context, Result};
use bothy_core::linux::ImageHeader;
use flate2::read::GzDecoder;

/// Header field offsets (booting.rst); `image_size` is patched by the packer.
pub const MAGIC_OFFSET: usize = 56;
pub const TEXT_OFFSET_OFFSET: usize = 8;
pub const IMAGE_SIZE_OFFSET: usize = 16;
pub const FLAGS_OFFSET: usize = 24;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// EFI zboot (drivers/firmware/efi/libstub/zboot-header.S): "MZ", then "zimg" at 4,
/// payload offset/size at 8/12, compression name at 24.
const ZBOOT_MAGIC: &[u8; 4] = b"zimg";

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

/// Turns a kernel file's bytes into a plain arm64 `Image`: passes one through, unpacks
/// gzip and gzip EFI zboot, and explains anything else. `what` names the file in errors.
const ELF_MAGIC: &[u8] = b"\x7fELF";

pub fn load_kernel(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let image = if bytes.starts_with(&GZIP_MAGIC) {
        gunzip(&bytes).with_context(|| format!("{what}: decompressing gzip kernel"))?
    } else if bytes.len() >= 32 && bytes.starts_with(b"MZ") && &bytes[4..8] == ZBOOT_MAGIC {
        unzboot(&bytes).with_context(|| format!("{what}: unpacking EFI zboot kernel"))?
    } else if bytes.starts_with(ELF_MAGIC) {
        // A bare-metal guest linked as an ELF whose first bytes are an Image
        // header: lay it out flat exactly like the hypervisor itself.
        crate::flatten::flatten_elf(&bytes)
            .with_context(|| format!("{what}: flattening ELF kernel"))?
            .bytes
    } else {
        bytes
    };
    if let Err(e) = ImageHeader::parse(&image) {
        bail!(
            "{what}: {e}; pass an uncompressed arm64 `Image`, an `Image.gz` or a \
             Debian/Ubuntu vmlinuz, or an ELF whose image starts with an Image header"
        );
    }
    Ok(image)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn unzboot(bytes: &[u8]) -> Result<Vec<u8>> {
    let offset = le_u32(bytes, 8) as usize;
    let size = le_u32(bytes, 12) as usize;
    let comp = &bytes[24..32];
    let comp = std::str::from_utf8(comp)
        .unwrap_or("?")
        .trim_end_matches('\0');
    ensure!(
        comp == "gzip",
        "compressed with {comp:?}; only gzip zboot images are supported: \
         decompress it to a plain Image first"
    );
    let payload = offset
        .checked_add(size)
        .and_then(|end| bytes.get(offset..end))
        .context("payload lies outside the file")?;
    gunzip(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fake_image;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_and_gzip_kernels_load() {
        let img = fake_image(10_000);
        assert_eq!(load_kernel(img.clone(), "k").unwrap(), img);
        assert_eq!(load_kernel(gz(&img), "k").unwrap(), img);
    }

    #[test]
    fn zboot_gzip_loads() {
        let img = fake_image(5000);
        let payload = gz(&img);
        let mut z = vec![0u8; 64];
        z[0..2].copy_from_slice(b"MZ");
        z[4..8].copy_from_slice(b"zimg");
        z[8..12].copy_from_slice(&64u32.to_le_bytes());
        z[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        z[24..28].copy_from_slice(b"gzip");
        z.extend_from_slice(&payload);
        assert_eq!(load_kernel(z.clone(), "k").unwrap(), img);
        z[24..28].copy_from_slice(b"zstd");
        let e = format!("{:#}", load_kernel(z, "k").unwrap_err());
        assert!(e.contains("zstd"), "{e}");
    }

    #[test]
    fn rejects_non_kernels_clearly() {
        let mut script = b"#!/bin/sh\necho hi\n".to_vec();
        script.resize(4096, b'\n');
        let e = load_kernel(script, "vm0 kernel foo").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("vm0 kernel foo") && e.contains("not an arm64"),
            "{e}"
        );
        let e = format!("{:#}", load_kernel(gz(b"hello"), "k").unwrap_err());
        assert!(e.contains("arm64 Image"), "{e}");
        let e = format!(
            "{:#}",
            load_kernel(vec![0x1f, 0x8b, 0, 0], "k").unwrap_err()
        );
        assert!(e.contains("gzip"), "{e}");
    }
}
