//! Bothy's console: the physical UART, shared by the hypervisor and every VM.
//!
//! Hypervisor messages start with `bothy: `. Guest output goes out byte by
//! byte; when more than one VM exists each guest line is prefixed with the VM's
//! name so interleaved output stays readable. Before the device tree is parsed
//! there is no console at all, unless the manifest named an early one (used
//! only to say that the device tree is missing or broken).

use crate::arch::aarch64::uart::Pl011;
use core::fmt::{self, Write};
use spin::Mutex;

struct Console {
    uart: Option<Pl011>,
    /// Which VM wrote the last byte and whether it ended a line, for tagging.
    last_vm: Option<usize>,
    at_line_start: bool,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    uart: None,
    last_vm: None,
    at_line_start: true,
});

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(uart) = self.uart {
            for byte in s.bytes() {
                if byte == b'\n' {
                    uart.putc(b'\r');
                }
                uart.putc(byte);
            }
        }
        Ok(())
    }
}

pub fn init(base: u64) {
    let uart = Pl011::new(base);
    uart.enable();
    CONSOLE.lock().uart = Some(uart);
}

pub fn uart() -> Option<Pl011> {
    CONSOLE.lock().uart
}

/// Print a hypervisor message on its own line.
pub fn print(args: fmt::Arguments) {
    let mut console = CONSOLE.lock();
    if !console.at_line_start {
        let _ = console.write_str("\n");
    }
    let _ = console.write_str("bothy: ");
    let _ = console.write_fmt(args);
    let _ = console.write_str("\n");
    console.at_line_start = true;
    console.last_vm = None;
}

/// One byte a guest wrote to its UART. `tag` names the VM when several share the console.
pub fn guest_byte(vm: usize, tag: Option<&str>, byte: u8) {
    let mut console = CONSOLE.lock();
    let Some(uart) = console.uart else { return };
    if let Some(name) = tag {
        if console.last_vm != Some(vm) && !console.at_line_start {
            let _ = console.write_str("\n");
            console.at_line_start = true;
        }
        if console.at_line_start {
            let _ = write!(console, "[{name}] ");
        }
    }
    uart.putc(byte);
    console.at_line_start = byte == b'\n';
    console.last_vm = Some(vm);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}
