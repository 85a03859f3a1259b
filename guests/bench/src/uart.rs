//! Polled PL011 transmit (as guests/selftest/src/uart.rs, with the base address chosen at
//! run time from the DTB). No initialisation: QEMU, Bothy and Xen's vpl011 all present an
//! enabled UART.

use crate::arch::{mmio_read32, mmio_write32};
use crate::platform;

pub const UARTDR: usize = 0x000;
pub const UARTFR: usize = 0x018;
pub const UARTFR_TXFF: u32 = 1 << 5;

/// Bound on waiting for FIFO space per byte (polls), so a stuck TXFF cannot hang the run.
const TXFF_POLLS: u32 = 1_000_000;

pub struct Uart;

impl Uart {
    fn put(&mut self, b: u8) {
        let base = platform::get().uart;
        let mut polls = 0;
        while mmio_read32(base + UARTFR) & UARTFR_TXFF != 0 && polls < TXFF_POLLS {
            polls += 1;
            core::hint::spin_loop();
        }
        mmio_write32(base + UARTDR, b as u32);
    }
}

impl core::fmt::Write for Uart {
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

macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::uart::Uart, format_args!($($arg)*));
    }};
}

macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::uart::print!($($arg)*);
        $crate::uart::print!("\n");
    }};
}

pub(crate) use print;
pub(crate) use println;
