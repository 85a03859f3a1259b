//! The Bothy image payload: how the CLI hands VMs to the hypervisor in one file.
//!
//! `bothy image` writes one bootable file:
//!
//! ```text
//! offset 0                      hypervisor flat binary (arm64 Linux `Image` header first),
//!                               including its zero-filled .bss
//! payload_offset(hyp_mem_size)  PayloadHeader (64 bytes, little-endian)
//!   + manifest_offset           manifest: an FDT describing the VMs (see `fdt::manifest`)
//!   + PayloadRef.offset         each guest kernel / initrd, 4 KiB aligned
//! ```
//!
//! All offsets inside the payload are relative to the payload start, so the hypervisor
//! needs to know only where its own memory image ends (the `_end` of its linker script,
//! the same number the CLI gets from the ELF's PT_LOAD segments) to find everything,
//! wherever the loader placed it. The loader copies the whole file because the `Image`
//! header's `image_size` covers it.
//!
//! [`PayloadHeader::decode`] is run by the hypervisor on bytes that come from outside
//! (a file a user built, possibly truncated or corrupted), so it validates every field
//! and never panics; a property test holds it to that.

use core::fmt;

/// The payload starts at the first multiple of this after the hypervisor's memory
/// image, and every blob inside the payload is aligned to it (page granule: the
/// hypervisor maps blobs into guests with stage-2 pages and never needs to copy).
pub const PAYLOAD_ALIGN: u64 = 4096;

/// `PayloadHeader::magic`.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"BOTHYPL\0";

/// The only layout this code writes and reads.
pub const PAYLOAD_VERSION: u32 = 1;

/// Encoded size of [`PayloadHeader`]: fields up to byte 40, then reserved zeros.
pub const PAYLOAD_HEADER_SIZE: usize = 64;

/// Where the payload starts, given the hypervisor's memory size (end of .bss minus
/// start of the image). Saturates rather than overflowing on absurd inputs, so a
/// caller that then bounds-checks against the real file size cannot be tricked
/// into wrapping around.
pub fn payload_offset(hyp_mem_size: u64) -> u64 {
    align_up(hyp_mem_size, PAYLOAD_ALIGN)
}

/// Rounds `value` up to a multiple of `align` (a power of two); saturates to the last
/// aligned value below `u64::MAX` instead of wrapping.
pub const fn align_up(value: u64, align: u64) -> u64 {
    match value.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => !(align - 1),
    }
}

/// The fixed header at the start of the payload.
///
/// Byte layout (little-endian):
///
/// | offset | size | field             |
/// |--------|------|-------------------|
/// | 0      | 8    | magic `BOTHYPL\0` |
/// | 8      | 4    | version (1)       |
/// | 12     | 4    | header_size (64)  |
/// | 16     | 8    | manifest_offset   |
/// | 24     | 8    | manifest_size     |
/// | 32     | 8    | total_size        |
/// | 40     | 24   | reserved, zero    |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    pub magic: [u8; 8],
    pub version: u32,
    /// Size of this header; the manifest starts at or after it.
    pub header_size: u32,
    /// Manifest FDT position, relative to the payload start.
    pub manifest_offset: u64,
    pub manifest_size: u64,
    /// Size of the whole payload (header, manifest and every blob).
    pub total_size: u64,
}

/// Why a payload header (or a reference into the payload) was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer bytes than a header.
    Truncated {
        len: usize,
    },
    BadMagic,
    UnsupportedVersion(u32),
    BadHeaderSize(u32),
    /// A reserved byte is not zero (written by a newer, incompatible tool).
    ReservedNotZero,
    /// The manifest lies (partly) outside the payload or overlaps the header.
    ManifestOutOfBounds,
    EmptyManifest,
    /// A blob reference lies (partly) outside the payload or overlaps the header.
    RefOutOfBounds {
        offset: u64,
        size: u64,
    },
    /// A blob reference is not aligned to [`PAYLOAD_ALIGN`].
    RefMisaligned {
        offset: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(
                f,
                "payload header truncated: {len} bytes, need {PAYLOAD_HEADER_SIZE}"
            ),
            Self::BadMagic => write!(f, "no Bothy payload (bad magic)"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "payload version {v} not supported (this build reads version {PAYLOAD_VERSION})"
            ),
            Self::BadHeaderSize(s) => write!(f, "payload header size {s} invalid"),
            Self::ReservedNotZero => write!(f, "payload header reserved bytes not zero"),
            Self::ManifestOutOfBounds => write!(f, "manifest lies outside the payload"),
            Self::EmptyManifest => write!(f, "manifest is empty"),
            Self::RefOutOfBounds { offset, size } => write!(
                f,
                "payload blob at {offset:#x} size {size:#x} lies outside the payload"
            ),
            Self::RefMisaligned { offset } => write!(
                f,
                "payload blob at {offset:#x} is not {PAYLOAD_ALIGN}-byte aligned"
            ),
        }
    }
}

impl core::error::Error for ImageError {}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

impl PayloadHeader {
    /// A version-1 header for a manifest of `manifest_size` bytes at `manifest_offset`
    /// in a payload of `total_size` bytes.
    pub const fn new(manifest_offset: u64, manifest_size: u64, total_size: u64) -> Self {
        Self {
            magic: PAYLOAD_MAGIC,
            version: PAYLOAD_VERSION,
            header_size: PAYLOAD_HEADER_SIZE as u32,
            manifest_offset,
            manifest_size,
            total_size,
        }
    }

    pub fn encode(&self) -> [u8; PAYLOAD_HEADER_SIZE] {
        let mut out = [0u8; PAYLOAD_HEADER_SIZE];
        out[0..8].copy_from_slice(&self.magic);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.manifest_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.manifest_size.to_le_bytes());
        out[32..40].copy_from_slice(&self.total_size.to_le_bytes());
        out
    }

    /// Parses and validates a header from the first [`PAYLOAD_HEADER_SIZE`] bytes of
    /// `bytes` (trailing bytes are ignored: callers pass the whole payload).
    ///
    /// On success the manifest range `[manifest_offset, manifest_offset +
    /// manifest_size)` is non-empty, lies after the header and inside `total_size`.
    /// It does not check `total_size` against the bytes actually present: the
    /// caller knows how much memory the loader gave it.
    pub fn decode(bytes: &[u8]) -> Result<Self, ImageError> {
        let bytes = bytes
            .get(..PAYLOAD_HEADER_SIZE)
            .ok_or(ImageError::Truncated { len: bytes.len() })?;
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[0..8]);
        if magic != PAYLOAD_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = le_u32(bytes, 8);
        if version != PAYLOAD_VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        let header_size = le_u32(bytes, 12);
        if header_size as usize != PAYLOAD_HEADER_SIZE {
            return Err(ImageError::BadHeaderSize(header_size));
        }
        if bytes[40..].iter().any(|&b| b != 0) {
            return Err(ImageError::ReservedNotZero);
        }
        let header = Self {
            magic,
            version,
            header_size,
            manifest_offset: le_u64(bytes, 16),
            manifest_size: le_u64(bytes, 24),
            total_size: le_u64(bytes, 32),
        };
        if header.manifest_size == 0 {
            return Err(ImageError::EmptyManifest);
        }
        if !header.in_bounds(header.manifest_offset, header.manifest_size) {
            return Err(ImageError::ManifestOutOfBounds);
        }
        Ok(header)
    }

    /// Checks a blob reference (kernel, initrd) from the manifest: aligned, non-empty
    /// and wholly inside the payload after the header.
    pub fn check_ref(&self, offset: u64, size: u64) -> Result<(), ImageError> {
        if !offset.is_multiple_of(PAYLOAD_ALIGN) {
            return Err(ImageError::RefMisaligned { offset });
        }
        if size == 0 || !self.in_bounds(offset, size) {
            return Err(ImageError::RefOutOfBounds { offset, size });
        }
        Ok(())
    }

    /// `[offset, offset + size)` lies after the header and within `total_size`.
    fn in_bounds(&self, offset: u64, size: u64) -> bool {
        match offset.checked_add(size) {
            Some(end) => offset >= u64::from(self.header_size) && end <= self.total_size,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PayloadHeader {
        PayloadHeader::new(4096, 1234, 3 * 4096)
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(&bytes[0..8], b"BOTHYPL\0");
        assert_eq!(PayloadHeader::decode(&bytes), Ok(h));
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let bytes = PayloadHeader::new(0x1122_3344_5566_7788, 2, 3).encode();
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &64u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &2u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &3u64.to_le_bytes());
        assert!(bytes[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn decode_ignores_trailing_bytes() {
        let mut v = sample().encode().to_vec();
        v.extend_from_slice(&[0xff; 100]);
        assert_eq!(PayloadHeader::decode(&v), Ok(sample()));
    }

    #[test]
    fn rejects_truncated() {
        let bytes = sample().encode();
        assert_eq!(
            PayloadHeader::decode(&bytes[..63]),
            Err(ImageError::Truncated { len: 63 })
        );
        assert_eq!(
            PayloadHeader::decode(&[]),
            Err(ImageError::Truncated { len: 0 })
        );
    }

    #[test]
    fn rejects_bad_magic_version_size_reserved() {
        let good = sample().encode();

        let mut b = good;
        b[0] = b'X';
        assert_eq!(PayloadHeader::decode(&b), Err(ImageError::BadMagic));

        let mut b = good;
        b[8] = 2;
        assert_eq!(
            PayloadHeader::decode(&b),
            Err(ImageError::UnsupportedVersion(2))
        );

        let mut b = good;
        b[12] = 32;
        assert_eq!(
            PayloadHeader::decode(&b),
            Err(ImageError::BadHeaderSize(32))
        );

        let mut b = good;
        b[63] = 1;
        assert_eq!(PayloadHeader::decode(&b), Err(ImageError::ReservedNotZero));
    }

    #[test]
    fn rejects_manifest_outside_payload() {
        let cases = [
            PayloadHeader::new(4096, 4097, 8192),    // runs past the end
            PayloadHeader::new(32, 16, 8192),        // overlaps the header
            PayloadHeader::new(u64::MAX, 2, 8192),   // offset + size wraps
            PayloadHeader::new(64, u64::MAX, 8192),  // size wraps
            PayloadHeader::new(8192, 1, 8192),       // starts at the end
            PayloadHeader::new(4096, 100, 0),        // empty payload
            PayloadHeader::new(64, 8192 - 63, 8192), // one byte too long
        ];
        for h in cases {
            assert_eq!(
                PayloadHeader::decode(&h.encode()),
                Err(ImageError::ManifestOutOfBounds),
                "{h:?}"
            );
        }
        assert_eq!(
            PayloadHeader::decode(&PayloadHeader::new(64, 0, 8192).encode()),
            Err(ImageError::EmptyManifest)
        );
        // Exactly filling the payload after the header is fine.
        let h = PayloadHeader::new(64, 8192 - 64, 8192);
        assert_eq!(PayloadHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn check_ref_bounds_and_alignment() {
        let h = sample();
        assert_eq!(h.check_ref(8192, 4096), Ok(()));
        assert_eq!(h.check_ref(8192, 1), Ok(()));
        assert_eq!(
            h.check_ref(8192, 4097),
            Err(ImageError::RefOutOfBounds {
                offset: 8192,
                size: 4097
            })
        );
        assert_eq!(
            h.check_ref(0, 16),
            Err(ImageError::RefOutOfBounds {
                offset: 0,
                size: 16
            })
        );
        assert_eq!(
            h.check_ref(4096, 0),
            Err(ImageError::RefOutOfBounds {
                offset: 4096,
                size: 0
            })
        );
        assert_eq!(
            h.check_ref(100, 1),
            Err(ImageError::RefMisaligned { offset: 100 })
        );
        assert!(h.check_ref(!4095u64, 4096).is_err());
    }

    #[test]
    fn payload_offset_aligns_up() {
        assert_eq!(payload_offset(0), 0);
        assert_eq!(payload_offset(1), 4096);
        assert_eq!(payload_offset(4096), 4096);
        assert_eq!(payload_offset(0x12_3001), 0x12_4000);
        assert_eq!(payload_offset(u64::MAX), !4095u64);
    }

    #[test]
    fn errors_display() {
        let msg = ImageError::UnsupportedVersion(7).to_string();
        assert!(msg.contains('7'), "{msg}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = PayloadHeader::decode(&bytes);
        }

        #[test]
        fn decode_of_valid_prefix_with_random_fields_never_panics(
            off in any::<u64>(), size in any::<u64>(), total in any::<u64>()
        ) {
            let h = PayloadHeader::new(off, size, total);
            if let Ok(d) = PayloadHeader::decode(&h.encode()) {
                prop_assert_eq!(d, h);
                prop_assert!(d.manifest_offset >= 64);
                prop_assert!(d.manifest_offset + d.manifest_size <= d.total_size);
            }
            let _ = h.check_ref(off, size);
        }

        #[test]
        fn round_trip_any_valid(off in 64u64..1 << 40, size in 1u64..1 << 40, slack in 0u64..1 << 20) {
            let h = PayloadHeader::new(off, size, off + size + slack);
            prop_assert_eq!(PayloadHeader::decode(&h.encode()), Ok(h));
        }
    }
}
