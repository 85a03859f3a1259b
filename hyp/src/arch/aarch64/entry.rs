//! Entry: the arm64 `Image` header, self-relocation, stacks, and the jump to Rust.
//!
//! Any loader that boots an arm64 Linux kernel boots Bothy: the first 64 bytes
//! are an `Image` header (booting.rst) with "place anywhere" set, and the code
//! is linked at 0 as a static PIE. `primary_entry` finds where it runs with
//! `adr`, patches every `R_AARCH64_RELATIVE` slot, zeroes .bss, and calls
//! [`crate::boot_primary`] with the DTB pointer the loader left in x0. The MMU
//! is off, so nothing before the relocation loop may load an absolute address.
//! What the loader handed over is read only through [`FirmwareDtb`] (the x0 address,
//! made nowhere else) and [`Payload`] (the payload after this image, read only within
//! what the loader loaded and where its header says).
//! Secondary CPUs enter at `secondary_entry` (PSCI CPU_ON, context id = CPU
//! index) and get their own stack.
//!
//! Each CPU's stack is a 64 KiB slot inside `.stacks`; its top `GUEST_FRAME_SIZE`
//! bytes hold the register frame of the vCPU that CPU runs (see vectors.rs), so
//! Rust code starts below it, and its lowest 4 KiB are a guard page the EL2 identity
//! map leaves out ([`stack_layout`]): an overflow faults instead of writing the next
//! CPU's frame. EL2's own faults run on a separate small emergency stack per CPU
//! ([`EMERGENCY_STACK_SIZE`], also in `.stacks`), so an overflow can still be reported.

use super::mmio;
use bothy_core::fdt::{header_total_size, FdtError};
use bothy_core::image::{payload_offset, ImageError, PayloadHeader, PAYLOAD_HEADER_SIZE};
use bothy_core::mem::stacks::StackLayout;
use core::arch::global_asm;
use core::fmt;

/// Per-CPU stack slot (guard page included); must match the linker script's `.stacks`
/// reservation. A power of two: the fault vector finds a slot with a shift.
pub const STACK_SIZE: usize = 0x1_0000;
pub const MAX_CPUS: usize = 8;
/// Per-CPU emergency stack for faults at EL2 (MAX_CPUS + 1 of them, linker script).
pub const EMERGENCY_STACK_SIZE: usize = 0x2000;
const _: () = assert!(STACK_SIZE.is_power_of_two());

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0                       // text_offset: any 2 MiB-aligned base
    .quad   __image_size            // image_size (the CLI rewrites it to cover the payload)
    .quad   0xa                     // flags: little-endian, 4 KiB pages, place anywhere
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

primary_entry:
    mov     x19, x0                 // DTB physical address from the loader
    adr     x20, _start             // where the loader actually put us

    // Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base + addend.
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16       // r_offset, r_info
    ldr     x5, [x1], #8            // r_addend
    cmp     w4, #1027               // R_AARCH64_RELATIVE
    b.ne    1b
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b
2:
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:
    mov     x0, #0
    bl      bothy_set_stack
    mov     x0, x19
    mov     x1, x20
    bl      {boot_primary}
5:  wfe
    b       5b

    .global secondary_entry
secondary_entry:
    mov     x19, x0                 // CPU index, passed as the PSCI context id
    bl      bothy_set_stack
    mov     x0, x19
    bl      {boot_secondary}
6:  wfe
    b       6b

// sp = top of CPU x0's stack, less the guest register frame kept there; at EL2, the
// vectors installed, so a fault from here on (a stack overflow included) is reported.
// Clobbers x0-x2 only; returns with lr intact.
bothy_set_stack:
    mrs     x1, CurrentEL
    cmp     x1, #8                  // EL2
    b.ne    1f
    adrp    x1, bothy_el2_vectors
    add     x1, x1, :lo12:bothy_el2_vectors
    msr     vbar_el2, x1
    isb
1:  adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     x2, x0, #1
    mov     x0, #{stack_size}
    madd    x1, x2, x0, x1
    sub     sp, x1, #{frame}
    mov     x29, #0
    ret
"#,
    boot_primary = sym boot_primary,
    boot_secondary = sym crate::boot_secondary,
    stack_size = const STACK_SIZE,
    frame = const super::vectors::GUEST_FRAME_SIZE,
);

/// The boot CPU's first Rust, with the loader's x0: the one place a [`FirmwareDtb`] is
/// made.
extern "C" fn boot_primary(dtb: u64) -> ! {
    crate::boot_primary(FirmwareDtb { addr: dtb })
}

/// The device tree the loader passed in x0 (booting.rst: "the physical address of a
/// device tree blob in system RAM"). Only the entry code makes one, so no other address
/// is ever read as the firmware's device tree.
#[derive(Clone, Copy, Debug)]
pub struct FirmwareDtb {
    addr: u64,
}

/// Why the loader's device tree cannot be read.
#[derive(Clone, Debug)]
pub enum DtbError {
    /// x0 was 0.
    Missing,
    /// x0 is not 8-byte aligned.
    Misaligned,
    /// Its header is not a device tree's.
    Header(FdtError),
    /// Its header claims more than [`FDT_MAX`] bytes.
    TooLarge(usize),
}

/// The largest firmware device tree Bothy reads (booting.rst's limit).
pub const FDT_MAX: usize = 2 << 20;

impl FirmwareDtb {
    /// Where it is (for messages, and to keep it out of the memory Bothy hands out).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The whole blob, as long as its header says (at most [`FDT_MAX`] bytes).
    pub fn bytes(&self) -> Result<&'static [u8], DtbError> {
        const FDT_ALIGN: u64 = 8;
        const FDT_HEADER: usize = 40;
        if self.addr == 0 {
            return Err(DtbError::Missing);
        }
        if !self.addr.is_multiple_of(FDT_ALIGN) {
            return Err(DtbError::Misaligned);
        }
        let size =
            header_total_size(mmio::phys_bytes(self.addr, FDT_HEADER)).map_err(DtbError::Header)?;
        if size > FDT_MAX {
            return Err(DtbError::TooLarge(size));
        }
        Ok(mmio::phys_bytes(self.addr, size))
    }
}

/// The payload `bothy image` appended after this image (header, manifest, guest
/// images): Bothy's own, never written. Made only by [`payload`], which checks it lies
/// within what the loader loaded; its bytes are read only where its header says.
#[derive(Clone, Copy, Debug)]
pub struct Payload {
    base: u64,
    header: PayloadHeader,
}

/// Why there is no usable payload.
#[derive(Clone, Copy, Debug)]
pub enum PayloadError {
    Header(ImageError),
    /// It ends beyond the image the loader loaded (the Image header's `image_size`).
    BeyondImage {
        end: u64,
        loaded_end: u64,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Header(e) => write!(f, "{e}"),
            PayloadError::BeyondImage { end, loaded_end } => write!(
                f,
                "it ends at {end:#x}, beyond the {loaded_end:#x} the Image header's image_size covers"
            ),
        }
    }
}

/// Offset of `image_size` in the Image header (booting.rst), which `bothy image` sets
/// to cover the payload.
const IMAGE_SIZE_OFFSET: u64 = 16;

/// The payload after this image, if its header is valid and it lies within the image
/// the loader loaded.
pub fn payload() -> Result<Payload, PayloadError> {
    let (start, end) = image_bounds();
    let base = start + payload_offset(end - start);
    let image_size = mmio::phys_bytes(start + IMAGE_SIZE_OFFSET, 8)
        .try_into()
        .map_or(0, u64::from_le_bytes);
    let loaded_end = start.saturating_add(image_size);
    if base.saturating_add(PAYLOAD_HEADER_SIZE as u64) > loaded_end {
        return Err(PayloadError::Header(ImageError::Truncated {
            len: loaded_end.saturating_sub(base) as usize,
        }));
    }
    let header = PayloadHeader::decode(mmio::phys_bytes(base, PAYLOAD_HEADER_SIZE))
        .map_err(PayloadError::Header)?;
    let payload_end = base.saturating_add(header.total_size);
    if payload_end > loaded_end {
        return Err(PayloadError::BeyondImage {
            end: payload_end,
            loaded_end,
        });
    }
    Ok(Payload { base, header })
}

impl Payload {
    /// Where it ends (this image and its payload are kept out of the memory Bothy hands
    /// out).
    pub fn end(&self) -> u64 {
        self.base + self.header.total_size
    }

    pub fn header(&self) -> &PayloadHeader {
        &self.header
    }

    /// The manifest (its range was checked against the payload by the header's decode).
    pub fn manifest_bytes(&self) -> &'static [u8] {
        mmio::phys_bytes(
            self.base + self.header.manifest_offset,
            self.header.manifest_size as usize,
        )
    }

    /// The `size` bytes at `offset` (a kernel or initrd the manifest names), if they lie
    /// inside the payload ([`PayloadHeader::check_ref`]).
    pub fn bytes(&self, offset: u64, size: u64) -> Result<&'static [u8], ImageError> {
        self.header.check_ref(offset, size)?;
        Ok(mmio::phys_bytes(self.base + offset, size as usize))
    }
}

extern "C" {
    static secondary_entry: u8;
    static __stacks_start: u8;
    static _start_image: u8;
    static __text_end: u8;
    static _end: u8;
}

/// Physical address of `secondary_entry` (identity mapping: VA == PA).
pub fn secondary_entry_address() -> u64 {
    core::ptr::addr_of!(secondary_entry) as u64
}

/// Where this image starts and ends in memory (`_end` covers .bss and stacks).
pub fn image_bounds() -> (u64, u64) {
    (
        core::ptr::addr_of!(_start_image) as u64,
        core::ptr::addr_of!(_end) as u64,
    )
}

/// Where this image's code ends (page-aligned): `[start, text_end)` is its text.
pub fn text_end() -> u64 {
    core::ptr::addr_of!(__text_end) as u64
}

/// Top of CPU `cpu`'s stack, where that CPU's guest register frame lives.
pub fn stack_top(cpu: usize) -> u64 {
    let base = core::ptr::addr_of!(__stacks_start) as u64;
    base + ((cpu + 1) * STACK_SIZE) as u64
}

/// Drop any data-cache lines for this image (.bss and stacks included), which Bothy
/// wrote with the MMU off: stale lines a loader left must not shadow it once caches
/// are on. Call once, before the MMU is on.
pub fn invalidate_image_dcache() {
    let (start, end) = image_bounds();
    super::sysreg::invalidate_dcache_range(start, end - start);
}

/// Where the per-CPU stacks and their guard pages are.
pub fn stack_layout() -> StackLayout {
    StackLayout {
        base: core::ptr::addr_of!(__stacks_start) as u64,
        slot_size: STACK_SIZE as u64,
        cpus: MAX_CPUS,
    }
}
