//! Polled PL011 transmit: the only output of the selftest. No initialisation: QEMU and
//! Bothy both present an enabled UART, as firmware would.

use crate::arch::{mmio_read32, mmio_write32};
use crate::platform::UART_BASE;

const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;
const UARTFR_TXFF: u32 = 1 << 5;

pub struct Uart;

impl Uart {
    fn put(&mut self, b: u8) {
        while mmio_read32(UART_BASE + UARTFR) & UARTFR_TXFF != 0 {
            core::hint::spin_loop();
        }
        mmio_write32(UART_BASE + UARTDR, b as u32);
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
