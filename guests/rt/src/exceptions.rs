//! The exception frame `vectors.S` builds, the vector kinds, the ESR_EL1 fields the guests
//! decode, and [`Fault`], a synchronous exception as a guest records it. The handler
//! itself is the guest's `el1_exception` hook:
//!
//! ```ignore
//! #[no_mangle]
//! extern "C" fn el1_exception(frame: &mut rt::exceptions::Frame, kind: u64);
//! // with the `entry-ticks` feature:
//! extern "C" fn el1_exception(frame: &mut Frame, kind: u64, entry_ticks: u64);
//! ```
//!
//! What the handler does with a synchronous exception of a check is [`crate::guard`]'s
//! business; a trip to EL0 and back is [`crate::el0`]'s.

use core::fmt;

/// Saved context; layout shared with `vectors.S` (FRAME_SIZE = 800).
#[repr(C)]
pub struct Frame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    pub fpcr: u64,
    pub fpsr: u64,
    _pad: u64,
    _q: [u128; 32],
}

const _: () = assert!(core::mem::size_of::<Frame>() == 800);

/// Vector offsets / 0x80 (Arm ARM D1.3.2): current EL with SP_ELx, then lower EL in
/// AArch64 and in AArch32.
pub const KIND_SYNC_SPX: u64 = 4;
pub const KIND_IRQ_SPX: u64 = 5;
pub const KIND_IRQ_LOWER_A64: u64 = 9;
pub const KIND_SYNC_LOWER_A32: u64 = 12;
pub const KIND_IRQ_LOWER_A32: u64 = 13;

/// SPSR_EL1 for a handler that sends the interrupted context elsewhere at EL1 (EL1h,
/// D/A/I/F masked), as `guard` and `el0` do.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// ESR_EL1 exception classes (EC, bits 31:26) the guests name.
pub const EC_UNKNOWN: u64 = 0x00;
pub const EC_SVC32: u64 = 0x11;
pub const EC_DABT_LOW: u64 = 0x24;
pub const EC_DABT_CUR: u64 = 0x25;
/// ESR_EL1.ISS bit 10 for aborts: FAR not valid.
pub const ESR_FNV: u64 = 1 << 10;
/// Data/instruction fault status code field.
pub const ESR_FSC_MASK: u64 = 0x3f;
/// DFSC: synchronous external abort, not on a table walk (what Bothy injects for an
/// access it does not emulate).
pub const DFSC_EXT_ABORT: u64 = 0x10;

/// A recorded synchronous exception: ESR_EL1, FAR_EL1 and ELR_EL1 as the handler found
/// them.
#[derive(Clone, Copy)]
pub struct Fault {
    pub esr: u64,
    pub far: u64,
    pub elr: u64,
}

impl Fault {
    /// The exception taken now (call from the handler, before anything can fault again).
    pub fn read() -> Fault {
        Fault {
            esr: crate::read_sysreg!("esr_el1"),
            far: crate::read_sysreg!("far_el1"),
            elr: crate::read_sysreg!("elr_el1"),
        }
    }

    pub fn ec(&self) -> u64 {
        self.esr >> 26
    }

    pub fn fsc(&self) -> u64 {
        self.esr & ESR_FSC_MASK
    }

    /// A synchronous external abort on a data access, as Bothy injects them.
    pub fn is_sea(&self) -> bool {
        (self.ec() == EC_DABT_CUR || self.ec() == EC_DABT_LOW) && self.fsc() == DFSC_EXT_ABORT
    }
}

/// `ESR_EL1=.. (EC .., ISS ..) FAR_EL1=.. ELR_EL1=..`; with the `fault-image-offset`
/// feature followed by ` (image+<ELR - load address>)`, to find the instruction in the ELF.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ESR_EL1={:#x} (EC {:#x}, ISS {:#x}) FAR_EL1={:#x} ELR_EL1={:#x}",
            self.esr,
            self.ec(),
            self.esr & 0x1ff_ffff,
            self.far,
            self.elr,
        )?;
        if cfg!(feature = "fault-image-offset") {
            let offset = self.elr.wrapping_sub(crate::image_base() as u64);
            write!(f, " (image+{offset:#x})")?;
        }
        Ok(())
    }
}

/// Mask all of DAIF and wait in WFI for good (`park` in entry.S).
pub fn park() -> ! {
    extern "C" {
        fn park() -> !;
    }
    // SAFETY: `park` only masks interrupts and loops on WFI; it never returns.
    unsafe { park() }
}
