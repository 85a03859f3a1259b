//! Pointer-authentication keys and SVE predicates, and the values each role puts in
//! them. A CPU has one set of each, which a hypervisor may switch lazily (Bothy traps
//! them until a vCPU's first use). The victim sets its own and checks them every
//! round; the attacker (case `trapped_registers`) first reads what it finds, then sets
//! its own and reads them back while the CPUs are time-shared with the victim. Neither
//! may ever see the other's.
//!
//! Keys: APIAKeyLo/Hi and APGAKeyLo/Hi. Predicates: P0–P3 set with `WHILELO` to the
//! first `base + i` byte elements, read back as counts with `CNTP` (whatever the
//! vector length, up to 16 elements fit in the smallest).

use core::arch::asm;

use crate::arch::read_sysreg;

/// Whether this CPU has pointer authentication with a generic key (ID_AA64ISAR1_EL1.GPA
/// or GPI, ID_AA64ISAR2_EL1.GPA3).
pub fn has_pauth() -> bool {
    let isar1 = read_sysreg!("id_aa64isar1_el1");
    let isar2 = read_sysreg!("s3_0_c0_c6_2");
    (isar1 >> 24) & 0xff != 0 || (isar2 >> 8) & 0xf != 0
}

/// Whether this CPU has SVE (ID_AA64PFR0_EL1.SVE).
pub fn has_sve() -> bool {
    (read_sysreg!("id_aa64pfr0_el1") >> 32) & 0xf != 0
}

pub const fn victim_keys() -> [u64; 4] {
    [
        0x5eed_0000_0000_1111,
        0x5eed_0000_0000_2222,
        0x5eed_0000_0000_3333,
        0x5eed_0000_0000_4444,
    ]
}

pub const fn attacker_keys() -> [u64; 4] {
    [
        0x0bad_0000_0000_1111,
        0x0bad_0000_0000_2222,
        0x0bad_0000_0000_3333,
        0x0bad_0000_0000_4444,
    ]
}

/// The victim's predicates hold 9..=12 elements, the attacker's 2..=5.
pub const VICTIM_PREDS: u64 = 9;
pub const ATTACKER_PREDS: u64 = 2;

pub fn set_keys(k: [u64; 4]) {
    // SAFETY: writes this vCPU's own key registers, which no code here signs with.
    unsafe {
        asm!(
            "msr s3_0_c2_c1_0, {0}",
            "msr s3_0_c2_c1_1, {1}",
            "msr s3_0_c2_c3_0, {2}",
            "msr s3_0_c2_c3_1, {3}",
            "isb",
            in(reg) k[0], in(reg) k[1], in(reg) k[2], in(reg) k[3],
            options(nostack),
        )
    };
}

pub fn keys() -> [u64; 4] {
    let k: [u64; 4];
    // SAFETY: reads this vCPU's own key registers.
    unsafe {
        let (a, b, c, d): (u64, u64, u64, u64);
        asm!(
            "mrs {0}, s3_0_c2_c1_0",
            "mrs {1}, s3_0_c2_c1_1",
            "mrs {2}, s3_0_c2_c3_0",
            "mrs {3}, s3_0_c2_c3_1",
            out(reg) a, out(reg) b, out(reg) c, out(reg) d,
            options(nomem, nostack),
        );
        k = [a, b, c, d];
    }
    k
}

/// SVE (and FP/SIMD, whose trap also covers SVE) enabled at EL1 and EL0.
fn enable_sve() {
    let cpacr = read_sysreg!("cpacr_el1");
    crate::arch::write_sysreg!("cpacr_el1", cpacr | 3 << 16 | 3 << 20);
    crate::arch::isb();
}

/// P0–P3 = the first `base`, `base + 1`, `base + 2`, `base + 3` byte elements.
pub fn set_preds(base: u64) {
    enable_sve();
    // SAFETY: writes this vCPU's own predicates, which no Rust code uses.
    unsafe {
        asm!(
            ".arch_extension sve",
            "whilelo p0.b, xzr, {n}",
            "add {n}, {n}, #1",
            "whilelo p1.b, xzr, {n}",
            "add {n}, {n}, #1",
            "whilelo p2.b, xzr, {n}",
            "add {n}, {n}, #1",
            "whilelo p3.b, xzr, {n}",
            n = inout(reg) base => _,
            options(nomem, nostack),
        )
    };
}

/// Active byte elements of P0–P3.
pub fn preds() -> [u64; 4] {
    enable_sve();
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reads this vCPU's own predicates (P15 is set to all true first).
    unsafe {
        asm!(
            ".arch_extension sve",
            "ptrue p15.b",
            "cntp {0}, p15, p0.b",
            "cntp {1}, p15, p1.b",
            "cntp {2}, p15, p2.b",
            "cntp {3}, p15, p3.b",
            out(reg) a, out(reg) b, out(reg) c, out(reg) d,
            options(nomem, nostack),
        )
    };
    [a, b, c, d]
}

/// The predicate counts `set_preds(base)` leaves.
pub const fn preds_of(base: u64) -> [u64; 4] {
    [base, base + 1, base + 2, base + 3]
}
