//! A VM's console: its emulated PL011 plus the input Bothy holds for it.
//!
//! The PL011's receive FIFO is 32 bytes deep, but the physical UART (or a
//! paste into the terminal) can deliver a burst faster than the guest drains
//! it. Bytes are never dropped on Bothy's side: they wait in a backlog and move
//! into the FIFO whenever the guest's reads make room. Only when the backlog
//! itself is full (a guest that stopped reading its console) are bytes dropped,
//! and counted.

use super::pl011::{Pl011, Pl011Effect, RX_FIFO_DEPTH};
use alloc::collections::VecDeque;

/// Input Bothy keeps per VM beyond the PL011's own FIFO.
pub const BACKLOG_BYTES: usize = 16 * 1024;
const UARTDR: u64 = 0x000;

pub struct Console {
    pub uart: Pl011,
    backlog: VecDeque<u8>,
    dropped: u64,
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// The backlog's memory is taken here, once: input arrives on an interrupt exit,
    /// which must not allocate.
    pub fn new() -> Self {
        Self {
            uart: Pl011::new(),
            backlog: VecDeque::with_capacity(BACKLOG_BYTES),
            dropped: 0,
        }
    }

    /// Input for the guest: into the FIFO if it has room (and nothing older is
    /// waiting), else into the backlog.
    pub fn input(&mut self, byte: u8) {
        if self.backlog.len() >= BACKLOG_BYTES {
            self.dropped += 1;
        } else {
            self.backlog.push_back(byte);
        }
        self.refill();
    }

    /// A guest register read; a data-register read makes room, so refill after it.
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        let value = self.uart.read(offset, size);
        if offset == UARTDR {
            self.refill();
        }
        value
    }

    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> Pl011Effect {
        self.uart.write(offset, size, value)
    }

    pub fn irq_level(&self) -> bool {
        self.uart.irq_level()
    }

    /// Bytes lost because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Move backlog into the FIFO while it has room. Checking room first
    /// matters: pushing into a full PL011 FIFO latches an overrun, as hardware would.
    fn refill(&mut self) {
        while self.uart.rx_len() < RX_FIFO_DEPTH {
            let Some(byte) = self.backlog.pop_front() else {
                break;
            };
            self.uart.push_rx(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const UARTFR: u64 = 0x018;
    const FR_RXFE: u32 = 1 << 4;

    fn drain(console: &mut Console) -> Vec<u8> {
        let mut out = Vec::new();
        while console.read(UARTFR, 4) & FR_RXFE == 0 {
            out.push(console.read(UARTDR, 4) as u8);
        }
        out
    }

    #[test]
    fn a_burst_longer_than_the_fifo_arrives_whole_and_in_order() {
        let mut console = Console::new();
        let line = b"grep -c ^processor /proc/cpuinfo\n and then some more text";
        for &b in line.iter() {
            console.input(b);
        }
        assert!(console.backlog_len() > 0, "the FIFO alone cannot hold it");
        assert_eq!(drain(&mut console), line.to_vec());
        assert_eq!(console.dropped(), 0);
        const UARTRIS: u64 = 0x03c;
        const INT_OE: u32 = 1 << 10;
        assert_eq!(
            console.read(UARTRIS, 4) & INT_OE,
            0,
            "the guest must see no overrun"
        );
    }

    #[test]
    fn order_holds_when_input_arrives_while_the_guest_reads() {
        let mut console = Console::new();
        for b in 0..40u8 {
            console.input(b);
        }
        let mut got = Vec::new();
        got.push(console.read(UARTDR, 4) as u8);
        console.input(40);
        got.extend(drain(&mut console));
        assert_eq!(got, (0..=40u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_guest_that_never_reads_loses_only_what_exceeds_the_backlog() {
        let mut console = Console::new();
        let total = BACKLOG_BYTES + 32 + 10;
        for i in 0..total {
            console.input(i as u8);
        }
        assert_eq!(console.dropped(), 10);
        assert!(console.irq_level() || console.uart.ris() != 0);
    }

    #[test]
    fn a_full_backlog_never_grew_its_buffer() {
        let mut console = Console::new();
        let capacity = console.backlog.capacity();
        assert!(capacity >= BACKLOG_BYTES);
        for i in 0..BACKLOG_BYTES + 100 {
            console.input(i as u8);
        }
        assert_eq!(console.backlog.capacity(), capacity, "input allocated");
    }
}
