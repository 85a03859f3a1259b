//! An emulated Arm PL011 UART (PrimeCell r1p5, Arm DDI 0183G), enough for Linux's
//! `amba-pl011` driver, its `earlycon`, and simple polling writers.
//!
//! Transmit is synchronous: a write to DR hands the byte straight back to the caller
//! ([`Pl011Effect::tx`]), so the TX FIFO is always empty — FR.TXFE = 1, TXFF = BUSY = 0 —
//! and the transmit interrupt condition (FIFO at or below its trigger level) always holds:
//! RIS.TXRIS reads 1. Linux's TX path relies on exactly that: it enables TXIM while it has
//! data queued, refills from the interrupt (without clearing TXIS through ICR), and masks
//! TXIM once its buffer is empty.
//!
//! Receive has a 32-entry FIFO fed by [`Pl011::push_rx`]. RXRIS and RTRIS (the receive
//! timeout) both read 1 while it holds data, whatever IFLS says: a byte is never left
//! waiting for a timeout we do not model. They, and TXRIS, re-assert from state right after
//! an ICR write; ICR only clears the latched conditions (overrun).
//!
//! The interrupt output is a level ([`Pl011::irq_level`] = (RIS & IMSC) != 0); the caller
//! feeds it to `VGic::set_spi_level` after each access and each `push_rx`.
//!
//! Not modelled: baud rate/framing (stored only), UARTEN/TXE/RXE (the UART always works,
//! as early consoles assume firmware enabled it), FIFO disable (FEN = 0 still buffers 32),
//! loopback, modem lines, DMA (DMACR stored only), receive errors other than overrun.

/// Register offsets (PL011 TRM §3.2, table 3-1).
pub const UARTDR: u64 = 0x000;
pub const UARTRSR_ECR: u64 = 0x004;
pub const UARTFR: u64 = 0x018;
pub const UARTILPR: u64 = 0x020;
pub const UARTIBRD: u64 = 0x024;
pub const UARTFBRD: u64 = 0x028;
pub const UARTLCR_H: u64 = 0x02C;
pub const UARTCR: u64 = 0x030;
pub const UARTIFLS: u64 = 0x034;
pub const UARTIMSC: u64 = 0x038;
pub const UARTRIS: u64 = 0x03C;
pub const UARTMIS: u64 = 0x040;
pub const UARTICR: u64 = 0x044;
pub const UARTDMACR: u64 = 0x048;
pub const UARTPERIPHID0: u64 = 0xFE0;
pub const UARTPCELLID0: u64 = 0xFF0;
/// Size of the register window.
pub const PL011_SIZE: u64 = 0x1000;

/// UARTFR bits (§3.3.3).
pub const FR_BUSY: u32 = 1 << 3;
pub const FR_RXFE: u32 = 1 << 4;
pub const FR_TXFF: u32 = 1 << 5;
pub const FR_RXFF: u32 = 1 << 6;
pub const FR_TXFE: u32 = 1 << 7;

/// Interrupt bits shared by IMSC/RIS/MIS/ICR (§3.3.10-3.3.14).
pub const INT_RX: u32 = 1 << 4;
pub const INT_TX: u32 = 1 << 5;
pub const INT_RT: u32 = 1 << 6;
pub const INT_OE: u32 = 1 << 10;
/// The eleven defined interrupt bits.
pub const INT_ALL: u32 = 0x7FF;

/// UARTDR read bit 11: overrun error; UARTRSR bit 3 the same.
pub const DR_OE: u32 = 1 << 11;
pub const RSR_OE: u32 = 1 << 3;

/// PeriphID0-3 (part 0x011, designer 0x41 'A', revision 1 → r1p5) and the PrimeCell
/// CellID0-3 that the AMBA bus checks before probing a driver.
pub const PERIPH_ID: [u8; 4] = [0x11, 0x10, 0x14, 0x00];
pub const PCELL_ID: [u8; 4] = [0x0D, 0xF0, 0x05, 0xB1];

/// Reset values (§3.3): UARTCR has TXE and RXE set; IFLS both at 1/2.
const CR_RESET: u32 = 0x0300;
const IFLS_RESET: u32 = 0x12;

/// Receive FIFO depth (§2.4.2).
pub const RX_FIFO_DEPTH: usize = 32;
const _: () = assert!(RX_FIFO_DEPTH.is_power_of_two());

/// What a register write asks of the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pl011Effect {
    /// A byte the guest transmitted.
    pub tx: Option<u8>,
}

/// One emulated PL011.
#[derive(Clone, Debug)]
pub struct Pl011 {
    rx: [u8; RX_FIFO_DEPTH],
    rx_head: usize,
    rx_len: usize,
    /// Overrun happened: reported in the next DR read and in RSR until ECR is written.
    overrun: bool,
    /// Latched raw interrupt bits (only OE; TX/RX/RT are derived from state).
    ris_latched: u32,
    imsc: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    ilpr: u32,
    dmacr: u32,
}

impl Default for Pl011 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl011 {
    pub const fn new() -> Pl011 {
        Pl011 {
            rx: [0; RX_FIFO_DEPTH],
            rx_head: 0,
            rx_len: 0,
            overrun: false,
            ris_latched: 0,
            imsc: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            ilpr: 0,
            dmacr: 0,
        }
    }

    /// Queue a received byte; false if the FIFO was full and the byte was dropped
    /// (that is an overrun: RIS.OERIS and DR.OE report it).
    pub fn push_rx(&mut self, byte: u8) -> bool {
        if self.rx_len == RX_FIFO_DEPTH {
            self.overrun = true;
            self.ris_latched |= INT_OE;
            return false;
        }
        self.rx[(self.rx_head + self.rx_len) % RX_FIFO_DEPTH] = byte;
        self.rx_len += 1;
        true
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_len(&self) -> usize {
        self.rx_len
    }

    /// Raw interrupt status: TX always, RX/RT while data waits, plus latched conditions.
    pub fn ris(&self) -> u32 {
        let rx = if self.rx_len > 0 { INT_RX | INT_RT } else { 0 };
        INT_TX | rx | self.ris_latched
    }

    /// The level of the interrupt output (UARTINTR).
    pub fn irq_level(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    fn pop_rx(&mut self) -> u32 {
        if self.rx_len == 0 {
            return 0;
        }
        // `rx_head` stays below the depth, a power of two: the mask only tells the compiler.
        let byte = self.rx[self.rx_head % RX_FIFO_DEPTH];
        self.rx_head = (self.rx_head + 1) % RX_FIFO_DEPTH;
        self.rx_len -= 1;
        // The overrun flag rides on the character read after it happened.
        let oe = if core::mem::take(&mut self.overrun) {
            DR_OE
        } else {
            0
        };
        u32::from(byte) | oe
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx_len == 0 {
            fr |= FR_RXFE;
        }
        if self.rx_len == RX_FIFO_DEPTH {
            fr |= FR_RXFF;
        }
        fr
    }

    fn read_reg(&mut self, reg: u64) -> u32 {
        match reg {
            UARTDR => self.pop_rx(),
            UARTRSR_ECR if self.overrun => RSR_OE,
            UARTFR => self.flags(),
            UARTILPR => self.ilpr,
            UARTIBRD => self.ibrd,
            UARTFBRD => self.fbrd,
            UARTLCR_H => self.lcr_h,
            UARTCR => self.cr,
            UARTIFLS => self.ifls,
            UARTIMSC => self.imsc,
            UARTRIS => self.ris(),
            UARTMIS => self.ris() & self.imsc,
            UARTDMACR => self.dmacr,
            UARTPERIPHID0..UARTPCELLID0 => {
                u32::from(PERIPH_ID[((reg - UARTPERIPHID0) / 4) as usize])
            }
            UARTPCELLID0..PL011_SIZE => u32::from(PCELL_ID[((reg - UARTPCELLID0) / 4) as usize]),
            _ => 0,
        }
    }

    /// A guest read of `size` bytes at `offset`. Narrow reads return the addressed bytes of
    /// the containing 32-bit register (a byte read of DR pops the FIFO like a word read).
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4 | 8) || offset >= PL011_SIZE {
            return 0;
        }
        let shift = (offset & 3) * 8;
        let value = self.read_reg(offset & !3) >> shift;
        match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        }
    }

    /// A guest write. Only accesses that start at a register's first byte take effect
    /// (byte writes to DR are how many early consoles transmit).
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> Pl011Effect {
        if !matches!(size, 1 | 2 | 4 | 8) || offset & 3 != 0 || offset >= PL011_SIZE {
            return Pl011Effect::default();
        }
        match offset {
            UARTDR => {
                return Pl011Effect {
                    tx: Some(value as u8),
                }
            }
            // Any write to ECR clears the error flags.
            UARTRSR_ECR => self.overrun = false,
            UARTILPR => self.ilpr = value & 0xff,
            UARTIBRD => self.ibrd = value & 0xffff,
            UARTFBRD => self.fbrd = value & 0x3f,
            UARTLCR_H => self.lcr_h = value & 0xff,
            UARTCR => self.cr = value & 0xff87,
            UARTIFLS => self.ifls = value & 0x3f,
            UARTIMSC => self.imsc = value & INT_ALL,
            UARTICR => self.ris_latched &= !value,
            UARTDMACR => self.dmacr = value & 0x7,
            _ => {}
        }
        Pl011Effect::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's pl011_enable_interrupts / startup does.
    fn linux_startup(u: &mut Pl011) {
        u.write(UARTICR, 4, 0x7ff);
        u.write(UARTIFLS, 4, 0x12);
        u.write(UARTLCR_H, 4, 0x70);
        u.write(UARTCR, 4, 0x301);
        while u.read(UARTFR, 4) & FR_RXFE == 0 {
            u.read(UARTDR, 4);
        }
        u.write(UARTIMSC, 4, INT_RT | INT_RX);
    }

    #[test]
    fn id_registers_match_amba_probe() {
        let mut u = Pl011::new();
        let pid: u32 = (0..4).map(|i| u.read(0xFE0 + 4 * i, 4) << (8 * i)).sum();
        let cid: u32 = (0..4).map(|i| u.read(0xFF0 + 4 * i, 4) << (8 * i)).sum();
        assert_eq!(pid, 0x0014_1011);
        assert_eq!(cid, 0xB105_F00D);
    }

    #[test]
    fn rx_fifo_keeps_order_and_drops_on_overflow() {
        let mut u = Pl011::new();
        for b in 0..32u8 {
            assert!(u.push_rx(b));
        }
        assert_eq!(u.read(UARTFR, 4) & FR_RXFF, FR_RXFF);
        assert!(!u.push_rx(99));
        assert_eq!(u.read(UARTRIS, 4) & INT_OE, INT_OE);
        assert_eq!(u.read(UARTRSR_ECR, 4), RSR_OE);
        // The overrun flag rides on the next character read.
        assert_eq!(u.read(UARTDR, 4), DR_OE);
        for b in 1..32u32 {
            assert_eq!(u.read(UARTDR, 4), b);
        }
        assert_eq!(u.read(UARTFR, 4) & FR_RXFE, FR_RXFE);
        assert_eq!(u.read(UARTDR, 4), 0, "empty FIFO reads 0");
        // Wrap-around keeps order too.
        for b in [7u8, 8, 9] {
            u.push_rx(b);
        }
        assert_eq!(u.read(UARTDR, 1), 7);
        assert_eq!(u.read(UARTDR, 4), 8);
        assert_eq!(u.read(UARTDR, 4), 9);
        u.write(UARTICR, 4, INT_OE);
        assert_eq!(u.read(UARTRIS, 4) & INT_OE, 0);
    }

    #[test]
    fn rx_interrupt_follows_fifo_as_linux_drives_it() {
        let mut u = Pl011::new();
        u.push_rx(b'x'); // stale byte from before startup
        linux_startup(&mut u);
        assert!(!u.irq_level(), "startup drained the FIFO");
        u.push_rx(b'a');
        u.push_rx(b'b');
        assert!(u.irq_level());
        // Linux's pl011_int: read MIS, ack RX/RT via ICR, drain DR until RXFE.
        let status = u.read(UARTMIS, 4);
        assert_eq!(status, INT_RX | INT_RT);
        u.write(UARTICR, 4, status & !INT_TX);
        assert!(u.irq_level(), "ICR cannot clear RX while data waits");
        let mut got = alloc::vec::Vec::new();
        while u.read(UARTFR, 4) & FR_RXFE == 0 {
            got.push(u.read(UARTDR, 4) as u8);
        }
        assert_eq!(got, b"ab");
        assert!(!u.irq_level());
        assert_eq!(u.read(UARTMIS, 4), 0);
    }

    #[test]
    fn tx_interrupt_as_linux_drives_it() {
        let mut u = Pl011::new();
        linux_startup(&mut u);
        assert_eq!(u.read(UARTRIS, 4) & INT_TX, INT_TX, "TX FIFO always empty");
        assert!(!u.irq_level(), "TXIM masked: no interrupt");
        // pl011_start_tx_pio: write what fits, then unmask TXIM because more is queued.
        let out: alloc::vec::Vec<u8> = b"hello"
            .iter()
            .filter_map(|&c| u.write(UARTDR, 4, u32::from(c)).tx)
            .collect();
        assert_eq!(out, b"hello");
        u.write(UARTIMSC, 4, INT_RT | INT_RX | INT_TX);
        assert!(u.irq_level(), "TX interrupt while TXIM set");
        // pl011_int → pl011_tx_chars writes more; buffer empty → pl011_stop_tx masks TXIM.
        assert_eq!(u.read(UARTMIS, 4), INT_TX);
        assert_eq!(u.write(UARTDR, 4, u32::from(b'!')).tx, Some(b'!'));
        u.write(UARTIMSC, 4, INT_RT | INT_RX);
        assert!(!u.irq_level());
        assert_eq!(u.read(UARTMIS, 4), 0);
    }

    #[test]
    fn polling_writer_and_earlycon_work() {
        let mut u = Pl011::new();
        // earlycon pl011_putc: wait !TXFF, write DR (byte or word), wait !BUSY.
        assert_eq!(u.read(UARTFR, 4) & FR_TXFF, 0);
        assert_eq!(u.write(UARTDR, 1, 0x41).tx, Some(b'A'));
        assert_eq!(u.read(UARTFR, 4) & FR_BUSY, 0);
        assert_eq!(u.read(UARTFR, 4), FR_TXFE | FR_RXFE);
        assert_eq!(u.write(UARTDR, 4, 0x1_42).tx, Some(b'B'), "only bits [7:0]");
        assert_eq!(u.write(UARTDR + 1, 1, 0x43).tx, None, "misaligned: ignored");
    }

    #[test]
    fn config_registers_are_stored() {
        let mut u = Pl011::new();
        assert_eq!(u.read(UARTCR, 4), CR_RESET);
        assert_eq!(u.read(UARTIFLS, 4), IFLS_RESET);
        u.write(UARTIBRD, 4, 0x1a);
        u.write(UARTFBRD, 4, 0x3);
        u.write(UARTLCR_H, 4, 0x70);
        u.write(UARTDMACR, 4, 0);
        assert_eq!(u.read(UARTIBRD, 4), 0x1a);
        assert_eq!(u.read(UARTFBRD, 4), 0x3);
        assert_eq!(u.read(UARTLCR_H, 4), 0x70);
        assert_eq!(u.read(UARTLCR_H, 1), 0x70);
        assert_eq!(u.read(0x500, 4), 0);
        assert_eq!(u.read(0x2000, 4), 0);
    }

    proptest::proptest! {
        #[test]
        fn random_accesses_never_panic(
            ops in proptest::collection::vec((0u64..0x1100, 0u8..10, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>()), 0..200)
        ) {
            let mut u = Pl011::new();
            for (off, size, val, write) in ops {
                if write {
                    u.write(off, size, val);
                } else {
                    u.read(off, size);
                }
                u.push_rx(val as u8);
                proptest::prop_assert_eq!(u.irq_level(), u.read(UARTMIS, 4) != 0);
            }
        }
    }
}
