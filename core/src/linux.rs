//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst).
//!
//! Bothy both *is* such an image (so any Linux loader boots it) and *loads*
//! such images into guests. This module validates the 64-byte header of a guest
//! kernel and tells where in guest RAM it must go. Untrusted bytes in, typed
//! answer or a clear error out.

use core::fmt;

pub const HEADER_SIZE: usize = 64;
pub const MAGIC: [u8; 4] = *b"ARM\x64";
const MAGIC_OFFSET: usize = 56;
const TEXT_OFFSET_OFFSET: usize = 8;
const IMAGE_SIZE_OFFSET: usize = 16;
const FLAGS_OFFSET: usize = 24;
/// Pre-3.17 kernels leave image_size zero; booting.rst says to assume this much.
const LEGACY_IMAGE_SIZE: u64 = 16 << 20;
/// flags bit 0: the kernel is big-endian.
const FLAG_BIG_ENDIAN: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the image must sit above a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel needs from its load address (text, data, bss).
    pub image_size: u64,
    pub flags: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    TooShort(usize),
    BadMagic([u8; 4]),
    BigEndian,
    TextOffsetUnaligned(u64),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::TooShort(len) => {
                write!(f, "{len} bytes is too short for an arm64 Image (the header alone is {HEADER_SIZE})")
            }
            ImageError::BadMagic(m) => write!(
                f,
                "not an arm64 Linux Image: magic at offset 56 is {m:02x?}, expected \"ARM\\x64\" (gzip-compressed or ELF kernels must be converted)"
            ),
            ImageError::BigEndian => write!(f, "big-endian arm64 kernels are not supported"),
            ImageError::TextOffsetUnaligned(o) => write!(f, "Image text_offset {o:#x} is not 4 KiB aligned"),
        }
    }
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl ImageHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() < HEADER_SIZE {
            return Err(ImageError::TooShort(bytes.len()));
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4]);
        if magic != MAGIC {
            return Err(ImageError::BadMagic(magic));
        }
        let flags = le64(bytes, FLAGS_OFFSET);
        if flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        let text_offset = le64(bytes, TEXT_OFFSET_OFFSET);
        if !text_offset.is_multiple_of(4096) {
            return Err(ImageError::TextOffsetUnaligned(text_offset));
        }
        let declared = le64(bytes, IMAGE_SIZE_OFFSET);
        let image_size = if declared == 0 {
            LEGACY_IMAGE_SIZE
        } else {
            declared
        };
        // The file itself must fit too, whatever the header claims.
        let image_size = image_size.max(bytes.len() as u64);
        Ok(Self {
            text_offset,
            image_size,
            flags,
        })
    }
}

#[cfg(test)]
pub(crate) fn test_image(text_offset: u64, image_size: u64, len: usize) -> alloc::vec::Vec<u8> {
    let mut image = alloc::vec![0u8; len.max(HEADER_SIZE)];
    image[TEXT_OFFSET_OFFSET..TEXT_OFFSET_OFFSET + 8].copy_from_slice(&text_offset.to_le_bytes());
    image[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());
    image[FLAGS_OFFSET..FLAGS_OFFSET + 8].copy_from_slice(&0xau64.to_le_bytes());
    image[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_modern_header() {
        let h = ImageHeader::parse(&test_image(0, 0x300_0000, 4096)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x300_0000,
                flags: 0xa
            }
        );
    }

    #[test]
    fn legacy_zero_size_assumes_16m_and_never_less_than_the_file() {
        assert_eq!(
            ImageHeader::parse(&test_image(0x80000, 0, 4096))
                .unwrap()
                .image_size,
            16 << 20
        );
        assert_eq!(
            ImageHeader::parse(&test_image(0, 100, 8192))
                .unwrap()
                .image_size,
            8192
        );
    }

    #[test]
    fn rejects_what_it_cannot_boot() {
        assert_eq!(ImageHeader::parse(&[0; 10]), Err(ImageError::TooShort(10)));
        let mut gz = test_image(0, 0, 64);
        gz[56] = 0x1f;
        assert!(matches!(
            ImageHeader::parse(&gz),
            Err(ImageError::BadMagic(_))
        ));
        let mut be = test_image(0, 0, 64);
        be[24] |= 1;
        assert_eq!(ImageHeader::parse(&be), Err(ImageError::BigEndian));
        assert_eq!(
            ImageHeader::parse(&test_image(0x80001, 0, 64)),
            Err(ImageError::TextOffsetUnaligned(0x80001))
        );
    }
}
