//! The physical PL011 Bothy owns (found through `/chosen/stdout-path`).
//!
//! Output polled (Bothy's own messages) or as room allows, continued from the transmit
//! interrupt (guest output); interrupt-driven input. Only `console.rs` uses it, under
//! its lock.

use super::mmio::{read32, write32};

const DR: u64 = 0x000;
const FR: u64 = 0x018;
const CR: u64 = 0x030;
const IMSC: u64 = 0x038;
const ICR: u64 = 0x044;
const FR_TXFF: u32 = 1 << 5;
const FR_RXFE: u32 = 1 << 4;
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;
const CR_RXE: u32 = 1 << 9;
const INT_RX: u32 = 1 << 4;
const INT_RT: u32 = 1 << 6;
const INT_TX: u32 = 1 << 5;
/// Give up waiting on a stuck transmitter rather than hang Bothy.
const TX_SPIN_LIMIT: u32 = 1_000_000;

#[derive(Clone, Copy)]
pub struct Pl011 {
    base: u64,
}

impl Pl011 {
    pub const fn new(base: u64) -> Self {
        Self { base }
    }

    /// Make sure the transmitter and receiver are on; firmware usually did this.
    pub fn enable(&self) {
        let cr = read32(self.base + CR);
        write32(self.base + CR, cr | CR_UARTEN | CR_TXE | CR_RXE);
    }

    pub fn enable_rx_interrupt(&self) {
        write32(self.base + ICR, 0x7ff);
        write32(self.base + IMSC, INT_RX | INT_RT);
    }

    /// Send `byte` if the transmitter has room now; false (nothing sent) if it is full.
    pub fn try_putc(&self, byte: u8) -> bool {
        if read32(self.base + FR) & FR_TXFF != 0 {
            return false;
        }
        write32(self.base + DR, u32::from(byte));
        true
    }

    /// Interrupt when the transmitter has room again (`on`), or not.
    pub fn set_tx_interrupt(&self, on: bool) {
        let imsc = read32(self.base + IMSC);
        let want = if on { imsc | INT_TX } else { imsc & !INT_TX };
        if want != imsc {
            write32(self.base + IMSC, want);
        }
    }

    pub fn putc(&self, byte: u8) {
        let mut spins = 0;
        while read32(self.base + FR) & FR_TXFF != 0 && spins < TX_SPIN_LIMIT {
            spins += 1;
        }
        write32(self.base + DR, u32::from(byte));
    }

    pub fn getc(&self) -> Option<u8> {
        if read32(self.base + FR) & FR_RXFE != 0 {
            None
        } else {
            Some(read32(self.base + DR) as u8)
        }
    }
}
