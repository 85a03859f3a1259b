//! The exception frame `vectors.S` builds, and the vector kinds. The handler itself is the
//! guest's `el1_exception` hook:
//!
//! ```ignore
//! #[no_mangle]
//! extern "C" fn el1_exception(frame: &mut rt::exceptions::Frame, kind: u64);
//! // with the `entry-ticks` feature:
//! extern "C" fn el1_exception(frame: &mut Frame, kind: u64, entry_ticks: u64);
//! ```

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

/// Vector offsets / 0x80 (Arm ARM D1.3.2).
pub const KIND_SYNC_SPX: u64 = 4;
pub const KIND_IRQ_SPX: u64 = 5;

/// Mask all of DAIF and wait in WFI for good (`park` in entry.S).
pub fn park() -> ! {
    extern "C" {
        fn park() -> !;
    }
    // SAFETY: `park` only masks interrupts and loops on WFI; it never returns.
    unsafe { park() }
}
