//! Bothy's console: the physical UART, shared by the hypervisor and every VM.
//!
//! Hypervisor messages start with `bothy: `. Guest output goes out byte by
//! byte; when more than one VM exists each guest line is prefixed with the VM's
//! name so interleaved output stays readable. Before the device tree is parsed
//! there is no console at all, unless the manifest named an early one (used
//! only to say that the device tree is missing or broken).
//!
//! While Bothy's own prompt is open (`prompt.rs`), guest output is held in a
//! per-VM buffer ([`OutputBuffer`], 16 KiB each, oldest bytes dropped and counted
//! beyond that) and written out when the prompt closes.

use crate::arch::aarch64::uart::Pl011;
use alloc::vec::Vec;
use bothy_core::dev::outbuf::OutputBuffer;
use core::fmt::{self, Write};
use spin::Mutex;

/// Guest output held per VM while the prompt is open.
const HELD_OUTPUT: usize = 16 * 1024;

struct Console {
    uart: Option<Pl011>,
    /// Which VM wrote the last byte and whether it ended a line, for tagging.
    last_vm: Option<usize>,
    at_line_start: bool,
    /// Guest output is held (the prompt is open).
    holding: bool,
    held: Vec<OutputBuffer>,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    uart: None,
    last_vm: None,
    at_line_start: true,
    holding: false,
    held: Vec::new(),
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

/// Make room to hold the output of `vms` VMs while the prompt is open (at boot: the
/// buffers are allocated once, never on an exit).
pub fn init_held_output(vms: usize) {
    let held = (0..vms).map(|_| OutputBuffer::new(HELD_OUTPUT)).collect();
    CONSOLE.lock().held = held;
}

/// Print text from Bothy's prompt as it is (no `bothy: ` prefix).
pub fn print_raw(text: &str) {
    let mut console = CONSOLE.lock();
    let _ = console.write_str(text);
    console.at_line_start = text.ends_with('\n');
    console.last_vm = None;
}

/// Echo bytes typed at the prompt.
pub fn echo(bytes: impl Iterator<Item = u8>) {
    let console = CONSOLE.lock();
    if let Some(uart) = console.uart {
        bytes.for_each(|b| uart.putc(b));
    }
}

/// Hold guest output (the prompt opened) or write out what was held (it closed).
/// `tag` gives each VM's name for the lines written out.
pub fn hold_guest_output(hold: bool, tag: &dyn Fn(usize) -> Option<&'static str>) {
    let mut console = CONSOLE.lock();
    console.holding = hold;
    if hold {
        return;
    }
    for vm in 0..console.held.len() {
        let dropped = console.held[vm].take_dropped();
        while let Some(byte) = console.held[vm].pop() {
            put_guest_byte(&mut console, vm, tag(vm), byte);
        }
        if dropped > 0 {
            let name = tag(vm).unwrap_or("guest");
            let _ = write!(console, "\nbothy: {dropped} bytes of {name}'s output were dropped while the prompt was open\n");
            console.at_line_start = true;
        }
    }
}

/// One byte a guest wrote to its UART. `tag` names the VM when several share the console.
pub fn guest_byte(vm: usize, tag: Option<&str>, byte: u8) {
    let mut console = CONSOLE.lock();
    if console.holding {
        if let Some(buffer) = console.held.get_mut(vm) {
            buffer.push(byte);
        }
        return;
    }
    put_guest_byte(&mut console, vm, tag, byte);
}

fn put_guest_byte(console: &mut Console, vm: usize, tag: Option<&str>, byte: u8) {
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
