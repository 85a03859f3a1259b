//! Hardware breakpoint and watchpoint registers by number, and the values each role
//! writes into them. A CPU has one set; the victim fills all of its with [`victim`]'s
//! values and checks them every round, and the attacker (case `trapped_registers`)
//! first reads what it finds, then fills them with [`attacker`]'s and reads them back
//! while the CPUs are time-shared with the victim. Neither may ever see the other's.

use core::arch::asm;

use crate::arch::read_sysreg;

/// Register names by kind, for messages.
pub const KINDS: [&str; 4] = ["DBGBVR", "DBGBCR", "DBGWVR", "DBGWCR"];

/// (breakpoints, watchpoints) this CPU has: ID_AA64DFR0_EL1.BRPs + 1, WRPs + 1.
pub fn counts() -> (usize, usize) {
    let dfr0 = read_sysreg!("id_aa64dfr0_el1");
    (
        ((dfr0 >> 12) & 0xf) as usize + 1,
        ((dfr0 >> 20) & 0xf) as usize + 1,
    )
}

/// Every (kind, number) this CPU has.
pub fn all() -> impl Iterator<Item = (usize, usize)> {
    let (b, w) = counts();
    (0..4).flat_map(move |kind| (0..if kind < 2 { b } else { w }).map(move |n| (kind, n)))
}

/// The victim's: addresses below bit 47 (no sign extension), enable bits clear,
/// breakpoints for EL1 and EL0, watchpoints on all 8 bytes for loads and stores.
pub const fn victim(kind: usize, n: usize) -> u64 {
    let n = n as u64;
    match kind {
        0 | 2 => 0x5eed << 32 | n << 12,
        1 => 0x1e6,
        _ => 0x1ffe,
    }
}

/// The attacker's: other addresses, breakpoints for EL1 only, watchpoints on 4 bytes.
pub const fn attacker(kind: usize, n: usize) -> u64 {
    let n = n as u64;
    match kind {
        0 | 2 => 0x0bad << 32 | n << 12,
        1 => 0x1e2,
        _ => 0x1fe,
    }
}

macro_rules! points {
    ($($n:literal),*) => {
        /// Register `kind` (see [`KINDS`]) number `n`, which must exist on this CPU.
        pub fn read(kind: usize, n: usize) -> u64 {
            let v: u64;
            // SAFETY: reading one of this vCPU's debug registers.
            unsafe {
                match (kind, n) {
                    $(
                        (0, $n) => asm!(concat!("mrs {}, dbgbvr", $n, "_el1"), out(reg) v, options(nomem, nostack)),
                        (1, $n) => asm!(concat!("mrs {}, dbgbcr", $n, "_el1"), out(reg) v, options(nomem, nostack)),
                        (2, $n) => asm!(concat!("mrs {}, dbgwvr", $n, "_el1"), out(reg) v, options(nomem, nostack)),
                        (3, $n) => asm!(concat!("mrs {}, dbgwcr", $n, "_el1"), out(reg) v, options(nomem, nostack)),
                    )*
                    _ => v = 0,
                }
            }
            v
        }

        /// Write register `kind` number `n`, which must exist on this CPU.
        pub fn write(kind: usize, n: usize, v: u64) {
            // SAFETY: one of this vCPU's debug registers; the values used keep the
            // enable bit clear, so nothing fires.
            unsafe {
                match (kind, n) {
                    $(
                        (0, $n) => asm!(concat!("msr dbgbvr", $n, "_el1, {}"), in(reg) v, options(nostack)),
                        (1, $n) => asm!(concat!("msr dbgbcr", $n, "_el1, {}"), in(reg) v, options(nostack)),
                        (2, $n) => asm!(concat!("msr dbgwvr", $n, "_el1, {}"), in(reg) v, options(nostack)),
                        (3, $n) => asm!(concat!("msr dbgwcr", $n, "_el1, {}"), in(reg) v, options(nostack)),
                    )*
                    _ => {}
                }
            }
        }
    };
}

points!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

/// The first register that does not read `want(kind, n)`: (kind, n, what it read).
pub fn first_wrong(want: fn(usize, usize) -> u64) -> Option<(usize, usize, u64)> {
    all().find_map(|(kind, n)| {
        let v = read(kind, n);
        (v != want(kind, n)).then_some((kind, n, v))
    })
}
