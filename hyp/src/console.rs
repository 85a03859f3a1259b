//! Bothy's console: the physical UART, shared by the hypervisor and every VM.
//!
//! Hypervisor messages start with `bothy: ` and are written at once (they may wait
//! for the UART: Bothy's own action). Guest output never waits for it: each byte goes
//! into its VM's buffer in `bothy_core::dev::mux::OutputMux`, which sends what the
//! transmitter has room for and stops; the rest goes out from the UART's transmit
//! interrupt. So a guest that writes without pause, or a slow UART, costs no CPU any
//! spinning and no other VM its output (a flooding VM loses its own oldest bytes,
//! counted and reported). With several VMs each guest line is tagged with the VM's
//! name. While Bothy's prompt is open (`prompt.rs`) guest output is held.
//!
//! Before the device tree is parsed there is no console at all, unless the manifest
//! named an early one (used only to say that the device tree is missing or broken).

use crate::arch::aarch64::uart::Pl011;
use bothy_core::dev::mux::{Drain, OutputMux, TxPort};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// Guest output buffered per VM (while the UART is busy or the prompt open).
const OUTPUT_BUFFER: usize = 16 * 1024;

struct Console {
    uart: Option<Pl011>,
    /// Guest output, once the VMs exist.
    mux: Option<OutputMux>,
    /// Before the VMs exist: whether the last text written ended a line.
    at_line_start: bool,
    /// The UART's transmit interrupt is enabled (output is waiting for room).
    tx_irq: bool,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    uart: None,
    mux: None,
    at_line_start: true,
    tx_irq: false,
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

/// The transmitter as the mux sees it: never waits.
struct Tx(Pl011);

impl TxPort for Tx {
    fn try_put(&mut self, byte: u8) -> bool {
        self.0.try_putc(byte)
    }
}

impl Console {
    /// Before Bothy writes its own text: finish anything staged and end an open guest
    /// line, so the text starts a line of its own.
    fn begin_own(&mut self) {
        let Some(uart) = self.uart else { return };
        let break_line = match self.mux.as_mut() {
            Some(mux) => {
                mux.take_staged().for_each(|b| uart.putc(b));
                mux.begin_own_line()
            }
            None => !self.at_line_start,
        };
        if break_line {
            let _ = self.write_str("\n");
        }
    }

    fn end_own(&mut self, at_line_start: bool) {
        match self.mux.as_mut() {
            Some(mux) => mux.end_own_line(at_line_start),
            None => self.at_line_start = at_line_start,
        }
    }

    /// Send what guest output the UART takes now; if it fills up, let its transmit
    /// interrupt call [`tx_interrupt`] for the rest.
    fn drain(&mut self) {
        self.send(|mux, tx| mux.drain(tx));
    }

    /// Runs `send` on the mux and the transmitter; keeps the UART's transmit interrupt
    /// on exactly while output is left waiting for room.
    fn send(&mut self, send: impl FnOnce(&mut OutputMux, &mut Tx) -> Drain) {
        let (Some(uart), Some(mux)) = (self.uart, self.mux.as_mut()) else {
            return;
        };
        let blocked = send(mux, &mut Tx(uart)) == Drain::Blocked;
        if blocked != self.tx_irq {
            uart.set_tx_interrupt(blocked);
            self.tx_irq = blocked;
        }
    }
}

pub fn init(base: u64) {
    let uart = Pl011::new(base);
    uart.enable();
    CONSOLE.lock().uart = Some(uart);
    UART_BASE.store(base, Ordering::Relaxed);
}

pub fn uart() -> Option<Pl011> {
    CONSOLE.lock().uart
}

/// Print a hypervisor message on its own line.
pub fn print(args: fmt::Arguments) {
    let mut console = CONSOLE.lock();
    console.begin_own();
    let _ = console.write_str("bothy: ");
    let _ = console.write_fmt(args);
    let _ = console.write_str("\n");
    console.end_own(true);
}

/// A fatal error's message, which must get out even if the console's lock is held: by
/// another CPU that may never let go, or by this CPU itself (a fault inside console
/// code). It waits a bounded time for the lock, then writes to the UART without it (a
/// line may interleave with whatever the holder writes; better than silence).
pub fn print_fatal(args: fmt::Arguments) {
    const SPINS: u32 = 1_000_000;
    for _ in 0..SPINS {
        if let Some(mut console) = CONSOLE.try_lock() {
            console.begin_own();
            let _ = console.write_str("bothy: ");
            let _ = console.write_fmt(args);
            let _ = console.write_str("\n");
            return;
        }
        core::hint::spin_loop();
    }
    let uart = UART_BASE.load(Ordering::Relaxed);
    if uart != 0 {
        let mut direct = Direct(Pl011::new(uart));
        let _ = direct.write_str("\nbothy: ");
        let _ = direct.write_fmt(args);
        let _ = direct.write_str("\n");
    }
}

/// The UART's address, readable without the console's lock (for [`print_fatal`]).
static UART_BASE: AtomicU64 = AtomicU64::new(0);

/// The UART written directly, bypassing the console's lock and state.
struct Direct(Pl011);

impl Write for Direct {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.0.putc(b'\r');
            }
            self.0.putc(byte);
        }
        Ok(())
    }
}

/// Buffers for the output of the VMs named (at boot: the buffers are allocated once,
/// never on an exit). Lines are tagged when there is more than one.
pub fn init_guest_output(names: &[&str]) {
    CONSOLE.lock().mux = Some(OutputMux::new(names, OUTPUT_BUFFER));
}

/// VM slot `vm` now belongs to the VM named `name` (built at boot or at run time).
pub fn attach_guest_output(vm: usize, name: &str) {
    if let Some(mux) = CONSOLE.lock().mux.as_mut() {
        mux.attach(vm, name);
    }
}

/// Print text from Bothy's prompt as it is (no `bothy: ` prefix).
pub fn print_raw(text: &str) {
    let mut console = CONSOLE.lock();
    console.begin_own();
    let _ = console.write_str(text);
    console.end_own(text.ends_with('\n'));
}

/// Echo bytes typed at the prompt.
pub fn echo(bytes: impl Iterator<Item = u8>) {
    let console = CONSOLE.lock();
    if let Some(uart) = console.uart {
        bytes.for_each(|b| uart.putc(b));
    }
}

/// Hold guest output (the prompt opened) or let what was held go out (it closed).
pub fn hold_guest_output(hold: bool) {
    let mut console = CONSOLE.lock();
    if let Some(mux) = console.mux.as_mut() {
        mux.hold(hold);
    }
    if !hold {
        console.drain();
    }
}

/// One byte VM `vm` wrote to its UART. Never waits for the physical UART.
pub fn guest_byte(vm: usize, byte: u8) {
    CONSOLE.lock().send(|mux, tx| mux.write(vm, byte, tx));
}

/// The UART's transmit interrupt: it has room again.
pub fn tx_interrupt() {
    CONSOLE.lock().drain();
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}
