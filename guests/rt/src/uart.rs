//! Polled PL011 transmit. No initialisation: QEMU, Bothy and Xen's vpl011 all present an
//! enabled UART, as firmware would.
//!
//! `print!`/`println!` write to the [`Pl011`] the guest's `rt_console` hook returns (called
//! once per macro use, so a guest may move its UART at run time).

use crate::arch::{mmio_read32, mmio_write32};

pub const UARTDR: usize = 0x000;
pub const UARTFR: usize = 0x018;
pub const UARTFR_TXFF: u32 = 1 << 5;

/// A PL011 at `base`. `txff_polls` bounds the wait for FIFO space per byte (`None`: wait
/// for ever), so a stuck TXFF need not hang the run.
#[derive(Clone, Copy)]
pub struct Pl011 {
    pub base: usize,
    pub txff_polls: Option<u32>,
}

impl Pl011 {
    fn put(&mut self, b: u8) {
        let mut polls = 0;
        while mmio_read32(self.base + UARTFR) & UARTFR_TXFF != 0
            && self.txff_polls.is_none_or(|max| polls < max)
        {
            polls += 1;
            core::hint::spin_loop();
        }
        mmio_write32(self.base + UARTDR, b as u32);
    }
}

impl core::fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

extern "Rust" {
    /// Guest hook: the console UART.
    fn rt_console() -> Pl011;
}

/// The guest's console (see `rt_console`).
pub fn console() -> Pl011 {
    // SAFETY: `rt_console` is a plain safe function the guest defines with #[no_mangle].
    unsafe { rt_console() }
}

/// Formatted output to the guest's console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::uart::console(), format_args!($($arg)*));
    }};
}

/// As [`print!`], then a newline (sent as CR LF).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

pub use crate::{print, println};
