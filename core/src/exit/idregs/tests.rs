//! The sanitised view field by field, and the pairing of traps and fields both ways.

use super::*;
use field::*;
use proptest::prelude::*;

/// The traps Bothy runs guests with, less the ones [`required`] adds: pointer
/// authentication enabled (API/APK), AArch64 EL1, MTE tag access and SCXTNUM left
/// trapped (ATA/EnSCXT clear), CPTR_EL2 RES1 bits only.
fn bothy_base() -> Traps {
    Traps {
        hcr: (1 << bits::HCR_API) | (1 << bits::HCR_APK) | bits::HCR_RW,
        cptr: (1 << 13) | (1 << 9) | 0xff,
        mdcr: 0,
    }
}

/// What `hyp` writes on `host`: its own bits plus [`required`]'s.
fn bothy_traps(host: &IdRegs) -> Traps {
    let base = bothy_base();
    let req = required(host);
    Traps {
        hcr: base.hcr | req.hcr,
        cptr: base.cptr | req.cptr,
        mdcr: base.mdcr | req.mdcr,
    }
}

/// No feature trapped: every enable bit set, every trap bit clear.
fn nothing_trapped() -> Traps {
    let mut t = Traps::default();
    for p in PAIRINGS {
        if !p.trap.trapped_when {
            *p.trap.slot(&mut t) |= 1 << p.trap.bit;
        }
    }
    t
}

fn with_fields(fields: &[(Field, u8)]) -> IdRegs {
    let mut regs = IdRegs::ZERO;
    for &(f, v) in fields {
        regs.set_field(f, v);
    }
    regs
}

/// Every 4-bit field of every register set to `v`.
fn all_fields(v: u8) -> IdRegs {
    let nibbles = u64::from(v & 0xf) * 0x1111_1111_1111_1111;
    IdRegs([nibbles; ID_SPACE_LEN])
}

/// QEMU 7.2's `-cpu max`, as `hyp` reads it at EL2 (virt, virtualization=on, no
/// MTE tag memory). Registers not listed read zero.
fn qemu_max() -> IdRegs {
    let mut r = IdRegs::ZERO;
    for (reg, value) in QEMU_MAX {
        r.set(reg, value);
    }
    r
}

#[rustfmt::skip]
const QEMU_MAX: [(IdReg, u64); 30] = [
    (IdReg::new(1, 0), 0x1102_0131),
    (IdReg::new(1, 1), 0x1001_1001),
    (IdReg::new(1, 2), 0x601_0009),
    (IdReg::new(1, 4), 0x1010_1105),
    (IdReg::new(1, 5), 0x4000_0000),
    (IdReg::new(1, 6), 0x126_0000),
    (IdReg::new(1, 7), 0x212_2211),
    (IdReg::new(2, 0), 0x210_1110),
    (IdReg::new(2, 1), 0x1311_2111),
    (IdReg::new(2, 2), 0x2123_2042),
    (IdReg::new(2, 3), 0x111_2131),
    (IdReg::new(2, 4), 0x1_1142),
    (IdReg::new(2, 5), 0x1101_1121),
    (IdReg::new(2, 6), 0x1_1110),
    (IdReg::new(2, 7), 0x111_1111),
    (IdReg::new(3, 0), 0x1011_0222),
    (IdReg::new(3, 1), 0x1321_1111),
    (IdReg::new(3, 2), 0x43),
    (IdReg::new(3, 4), 0x11),
    (IdReg::new(3, 6), 0x1),
    (IdReg::new(4, 0), 0x1201_0011_2111_0222),
    (IdReg::new(4, 1), 0x100_0021),
    (IdReg::new(4, 4), 0x110_1101_0011_0021),
    (IdReg::new(4, 5), 0x80f1_00fd_0000_0000),
    (IdReg::new(5, 0), 0x1030_5609),
    (IdReg::new(6, 0), 0x1221_1111_1021_2120),
    (IdReg::new(6, 1), 0x11_1111_1021_1102),
    (IdReg::new(7, 0), 0x323_1020_1126),
    (IdReg::new(7, 1), 0x110_1021_1122),
    (IdReg::new(7, 2), 0x1021_0110_1001_1011),
];

const PAIRED: &[Field] = &[
    PFR1_MTE,
    PFR1_MTE_FRAC,
    PFR0_CSV2,
    PFR1_CSV2_FRAC,
    ISAR1_APA,
    ISAR1_API,
    ISAR1_GPA,
    ISAR1_GPI,
    ISAR2_APA3,
    ISAR2_GPA3,
    ISAR2_PAC_FRAC,
    PFR0_RAS,
    PFR1_RAS_FRAC,
    MMFR2_IESB,
    MMFR1_LO,
    PFR0_SVE,
    PFR1_SME,
    PFR0_AMU,
    DFR0_TRACEVER,
    DFR0_PMUVER,
    DFR0_PMSVER,
    DFR0_TRACEFILT,
];

fn known(f: Field) -> Option<Rule> {
    KNOWN.iter().find(|(k, _)| *k == f).map(|&(_, r)| r)
}

#[test]
fn a_trap_in_effect_hides_its_fields_and_nothing_else() {
    let host = all_fields(1);
    let open = sanitise(&host, &nothing_trapped(), 48);
    for p in PAIRINGS {
        let mut traps = nothing_trapped();
        *p.trap.slot(&mut traps) ^= 1 << p.trap.bit;
        assert!(p.trap.in_effect(&traps));
        let view = sanitise(&host, &traps, 48);
        let mut expect = open;
        for hide in p.hides {
            match *hide {
                Hide::Field(f, max) => expect.set_field(f, open.field(f).min(max)),
                Hide::Reg(r) => expect.set(r, 0),
            }
        }
        if expect.field(PFR0_SVE) == 0 {
            expect.set(reg::ID_AA64ZFR0_EL1, 0);
        }
        assert_eq!(view, expect, "{p:?}");
    }
}

#[test]
fn with_nothing_trapped_the_paired_fields_show() {
    let view = sanitise(&all_fields(1), &nothing_trapped(), 48);
    for &f in PAIRED {
        assert_eq!(view.field(f), 1, "{f:?}");
    }
}

#[test]
fn bothy_hides_mte_sme_ras_lor_amu_and_scxtnum_but_not_pauth_sve_or_the_pmu() {
    let host = with_fields(&[
        (PFR1_MTE, 2),
        (PFR1_MTE_FRAC, 0),
        (PFR1_SME, 1),
        (PFR0_RAS, 2),
        (PFR1_RAS_FRAC, 1),
        (MMFR2_IESB, 1),
        (MMFR1_LO, 1),
        (PFR0_AMU, 1),
        (PFR0_CSV2, 2),
        (PFR1_CSV2_FRAC, 2),
        (PFR0_SVE, 1),
        (ZFR0_SVEVER, 1),
        (ISAR1_APA, 5),
        (ISAR1_GPA, 1),
        (DFR0_PMUVER, 5),
        (DFR0_DEBUGVER, 6),
    ]);
    let mut h = host;
    h.set(reg::ID_AA64SMFR0_EL1, 0x8000_0000_0000_0000);
    let view = sanitise(&h, &bothy_traps(&h), 39);
    for f in [
        PFR1_MTE,
        PFR1_SME,
        PFR0_RAS,
        PFR1_RAS_FRAC,
        MMFR2_IESB,
        MMFR1_LO,
        PFR0_AMU,
    ] {
        assert_eq!(view.field(f), 0, "{f:?}");
    }
    assert_eq!(view.get(reg::ID_AA64SMFR0_EL1), 0);
    assert_eq!((view.field(PFR0_CSV2), view.field(PFR1_CSV2_FRAC)), (1, 1));
    assert_eq!(view.field(PFR0_SVE), 1);
    assert_eq!(view.field(ZFR0_SVEVER), 1);
    assert_eq!((view.field(ISAR1_APA), view.field(ISAR1_GPA)), (5, 1));
    assert_eq!(view.field(DFR0_PMUVER), 5);
    assert_eq!(view.field(DFR0_DEBUGVER), 6);
}

#[test]
fn required_sets_tid3_and_tsm_always_and_the_others_where_the_feature_exists() {
    let none = required(&IdRegs::ZERO);
    assert_eq!(
        none,
        Traps {
            hcr: bits::HCR_TID3,
            cptr: 1 << bits::CPTR_TSM,
            mdcr: 0
        }
    );
    let host = with_fields(&[
        (PFR0_RAS, 1),
        (MMFR1_LO, 1),
        (PFR0_AMU, 1),
        (DFR0_TRACEVER, 1),
        (DFR0_PMSVER, 1),
        (DFR0_TRACEFILT, 1),
        (DFR0_PMUVER, 6),
    ]);
    let all = required(&host);
    assert_eq!(
        all.hcr,
        bits::HCR_TID3 | 1 << bits::HCR_TERR | 1 << bits::HCR_TLOR
    );
    assert_eq!(
        all.cptr,
        1 << bits::CPTR_TSM | 1 << bits::CPTR_TAM | 1 << bits::CPTR_TTA
    );
    assert_eq!(
        all.mdcr,
        1 << bits::MDCR_TPMS | 1 << bits::MDCR_TTRF | bits::MDCR_HCCD
    );
    // HCCD only for an architected PMU from v3p5.
    for (pmuver, hccd) in [(5, false), (6, true), (9, true), (0xf, false)] {
        let t = required(&with_fields(&[(DFR0_PMUVER, pmuver)]));
        assert_eq!(t.mdcr & bits::MDCR_HCCD != 0, hccd, "PMUVer {pmuver}");
    }
}

#[test]
fn every_trap_bothy_sets_hides_a_feature_the_host_has() {
    // On a host with every feature, each bit `required` asks for is a pairing in effect.
    let host = all_fields(1);
    let traps = bothy_traps(&host);
    let view = sanitise(&host, &traps, 48);
    for p in PAIRINGS.iter().filter(|p| p.trap.in_effect(&traps)) {
        for hide in p.hides {
            if let Hide::Field(f, max) = *hide {
                assert!(view.field(f) <= max, "{p:?} {f:?}");
            }
        }
    }
}

#[test]
fn fields_bothy_does_not_know_read_zero() {
    for host in [all_fields(1), all_fields(0x7), all_fields(0xf)] {
        let view = sanitise(&host, &nothing_trapped(), 52);
        for i in 0..ID_SPACE_LEN {
            let reg = IdReg::at(i);
            for shift in (0..64).step_by(4) {
                let f = Field { reg, shift };
                let aarch32 = host.field(PFR0_EL0) >= 2 && aarch32_el0_field(f);
                if known(f).is_none() && !aarch32 {
                    assert_eq!(view.field(f), 0, "{f:?}");
                }
            }
        }
    }
    // Some that matter, by name.
    let view = sanitise(&all_fields(1), &nothing_trapped(), 48);
    for f in [
        PFR0_EL2,
        PFR0_MPAM,
        PFR1_NMI,
        PFR1_GCS,
        ISAR0_TME,
        ISAR1_LS64,
        ISAR2_WFXT,
        ISAR2_MOPS,
        MMFR0_BIGEND,
        MMFR0_BIGENDEL0,
        MMFR0_FGT,
        MMFR1_VMIDBITS,
        MMFR1_VH,
        MMFR2_NV,
    ] {
        assert_eq!(view.field(f), 0, "{f:?}");
    }
    for r in [
        reg::ID_AA64PFR2_EL1,
        reg::ID_AA64FPFR0_EL1,
        reg::ID_AA64DFR1_EL1,
        reg::ID_AA64AFR0_EL1,
        reg::ID_AA64ISAR3_EL1,
        reg::ID_AA64MMFR3_EL1,
    ] {
        assert_eq!(view.get(r), 0, "{r:?}");
    }
}

#[test]
fn fields_whose_zero_means_implemented_keep_the_hosts_not_implemented() {
    let host = with_fields(&[
        (PFR0_FP, 0xf),
        (PFR0_ADVSIMD, 0xf),
        (MMFR0_TGRAN4, 0xf),
        (MMFR0_TGRAN64, 0xf),
        (DFR0_DOUBLELOCK, 0xf),
    ]);
    let view = sanitise(&host, &bothy_traps(&host), 39);
    for f in [
        PFR0_FP,
        PFR0_ADVSIMD,
        MMFR0_TGRAN4,
        MMFR0_TGRAN64,
        DFR0_DOUBLELOCK,
    ] {
        assert_eq!(view.field(f), 0xf, "{f:?}");
    }
}

#[test]
fn aarch32_is_shown_at_el0_only_with_the_registers_el0_code_needs() {
    let host = all_fields(2);
    let view = sanitise(&host, &bothy_traps(&host), 39);
    assert_eq!((view.field(PFR0_EL0), view.field(PFR0_EL1)), (2, 1));
    assert_eq!(view.field(PFR0_EL2), 0);
    assert_eq!(view.field(PFR0_EL3), 1);
    for r in AARCH32_EL0_ISA {
        assert_eq!(view.get(r), host.get(r), "{r:?} copied whole");
    }
    // ID_PFR0: the states and DIT as the host's, CSV2 capped, RAS and AMU hidden.
    assert_eq!(view.get(reg::ID_PFR0_EL1), 0x0201_2222);
    // EL1's AArch32 registers (PFR1, DFR0, AFR0, MMFR*) read 0.
    for (crm, op2) in [
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (1, 7),
        (2, 6),
        (3, 4),
        (3, 5),
        (3, 6),
    ] {
        assert_eq!(view.get(IdReg::new(crm, op2)), 0, "({crm}, {op2})");
    }
    // A host without AArch32 at EL0: none of it.
    let host = with_fields(&[(PFR0_EL0, 1)]);
    let mut full = host;
    for r in AARCH32_EL0_ISA {
        full.set(r, 0x1111_1111);
    }
    let view = sanitise(&full, &bothy_traps(&full), 39);
    assert_eq!(view.field(PFR0_EL0), 1);
    for i in 0..24 {
        assert_eq!(view.0[i], 0, "{:?}", IdReg::at(i));
    }
}

#[test]
fn versions_are_capped_at_what_bothy_knows() {
    let host = with_fields(&[
        (DFR0_DEBUGVER, 0xb),
        (DFR0_PMUVER, 9),
        (PFR0_GIC, 3),
        (MMFR0_ECV, 2),
        (MMFR1_HAFDBS, 3),
        (MMFR0_PARANGE, 6),
    ]);
    let view = sanitise(&host, &bothy_traps(&host), 39);
    assert_eq!(view.field(DFR0_DEBUGVER), 0xa);
    assert_eq!(view.field(DFR0_PMUVER), 8);
    assert_eq!(view.field(PFR0_GIC), 1);
    assert_eq!(view.field(MMFR0_ECV), 1);
    assert_eq!(view.field(MMFR1_HAFDBS), 2);
    // 39 IPA bits: 40-bit range (the smallest that covers them).
    assert_eq!(view.field(MMFR0_PARANGE), 2);
    // A host with a smaller range keeps it; a big stage 2 is capped at 52 bits.
    let small = with_fields(&[(MMFR0_PARANGE, 1)]);
    assert_eq!(
        sanitise(&small, &bothy_traps(&small), 39).field(MMFR0_PARANGE),
        1
    );
    assert_eq!(
        sanitise(&host, &bothy_traps(&host), 60).field(MMFR0_PARANGE),
        6
    );
    // An IMPLEMENTATION DEFINED PMU is not offered as PMUv3.
    let impdef = with_fields(&[(DFR0_PMUVER, 0xf)]);
    assert_eq!(
        sanitise(&impdef, &bothy_traps(&impdef), 39).field(DFR0_PMUVER),
        0
    );
}

#[test]
fn zfr0_needs_sve() {
    let host = with_fields(&[(ZFR0_SVEVER, 1), (ZFR0_AES, 1), (PFR1_SME, 1)]);
    // SME without SVE: ZFR0 would describe streaming SVE, which is hidden with SME.
    let view = sanitise(&host, &bothy_traps(&host), 39);
    assert_eq!(view.get(reg::ID_AA64ZFR0_EL1), 0);
    let mut traps = bothy_traps(&host);
    traps.cptr |= 1 << bits::CPTR_TZ;
    let sve = with_fields(&[(PFR0_SVE, 1), (ZFR0_SVEVER, 1)]);
    assert_eq!(sanitise(&sve, &traps, 39).get(reg::ID_AA64ZFR0_EL1), 0);
    assert_eq!(sanitise(&sve, &bothy_traps(&sve), 39).field(ZFR0_SVEVER), 1);
}

#[test]
fn the_id_space_is_crm_1_to_7_and_unallocated_encodings_read_zero() {
    let access = |op0, op1, crn, crm, op2| SysRegAccess {
        op0,
        op1,
        crn,
        crm,
        op2,
        reg: 0,
        read: true,
    };
    let host = IdRegs([0xdead_beef; ID_SPACE_LEN]);
    let view = sanitise(&host, &bothy_traps(&host), 39);
    // Reserved in the ID space: zero whatever the host returned.
    for (crm, op2) in [
        (3, 3),
        (3, 7),
        (4, 3),
        (4, 6),
        (5, 3),
        (5, 6),
        (6, 7),
        (7, 7),
    ] {
        assert_eq!(view.read(&access(3, 0, 0, crm, op2)), Some(0));
    }
    for i in 0..ID_SPACE_LEN {
        let r = IdReg::at(i);
        assert_eq!(r.index(), i);
        assert_eq!(IdReg::of(&access(3, 0, 0, r.crm, r.op2)), Some(r));
    }
    // Positions outside the space read 0 and ignore writes.
    let mut regs = view;
    for r in [IdReg::new(0, 0), IdReg::new(4, 8), IdReg::new(8, 0)] {
        regs.set(r, 1);
        assert_eq!(regs.get(r), 0);
    }
    assert_eq!(regs, view);
    // Outside it: MIDR (CRm 0), another op1 or CRn, another op0.
    assert_eq!(view.read(&access(3, 0, 0, 0, 0)), None);
    assert_eq!(view.read(&access(3, 1, 0, 4, 0)), None);
    assert_eq!(view.read(&access(3, 0, 1, 4, 0)), None);
    assert_eq!(view.read(&access(2, 0, 0, 4, 0)), None);
    assert_eq!(view.read(&access(3, 0, 0, 8, 0)), None);
}

#[test]
fn qemu_max_under_bothy() {
    let host = qemu_max();
    let traps = bothy_traps(&host);
    // RAS and LORegions exist there, and PMUv3p5: TERR, TLOR and HCCD as well.
    assert_eq!(
        required(&host),
        Traps {
            hcr: bits::HCR_TID3 | 1 << bits::HCR_TERR | 1 << bits::HCR_TLOR,
            cptr: 1 << bits::CPTR_TSM,
            mdcr: bits::MDCR_HCCD,
        }
    );
    let view = sanitise(&host, &traps, 39);
    assert_eq!(host.field(PFR1_SME), 1);
    assert_eq!(host.field(PFR0_CSV2), 2);
    assert_eq!(view.field(PFR1_MTE), 0);
    assert_eq!(view.field(PFR1_SME), 0);
    assert_eq!(view.get(reg::ID_AA64SMFR0_EL1), 0);
    assert_eq!(view.field(PFR0_EL0), 2, "QEMU max runs AArch32 at EL0");
    assert_eq!(view.field(PFR0_CSV2), 1);
    assert_eq!(view.field(PFR0_RAS), 0);
    assert_eq!(view.field(MMFR0_PARANGE), 2);
    assert_eq!(view.field(DFR0_PMUVER), 6);
    assert_eq!(view.field(DFR0_DEBUGVER), 9);
    assert_eq!(view.field(MMFR1_LO), 0);
    // What Linux needs to boot stays.
    assert_eq!(view.field(PFR0_FP), host.field(PFR0_FP));
    assert_eq!(view.field(PFR0_SVE), host.field(PFR0_SVE));
    assert_eq!(view.field(ISAR1_API), host.field(ISAR1_API));
    assert_eq!(view.field(MMFR0_TGRAN4), host.field(MMFR0_TGRAN4));
    assert_eq!(view.field(ISAR0_ATOMIC), host.field(ISAR0_ATOMIC));
}

proptest! {
    /// No field of the view promises more than the host's, and nothing Bothy does not
    /// know is copied, whatever the host and the traps.
    #[test]
    fn the_view_never_exceeds_the_host(
        regs in proptest::array::uniform32(any::<u64>()),
        more in proptest::array::uniform24(any::<u64>()),
        hcr: u64, cptr: u64, mdcr: u64, ipa_bits in 0u32..70,
    ) {
        let mut host = IdRegs::ZERO;
        host.0[..32].copy_from_slice(&regs);
        host.0[32..].copy_from_slice(&more);
        let view = sanitise(&host, &Traps { hcr, cptr, mdcr }, ipa_bits);
        for i in 0..ID_SPACE_LEN {
            for shift in (0..64).step_by(4) {
                let f = Field { reg: IdReg::at(i), shift };
                prop_assert!(view.field(f) <= host.field(f), "{:?}", f);
                let aarch32 = host.field(PFR0_EL0) >= 2 && aarch32_el0_field(f);
                if known(f).is_none() && !aarch32 {
                    prop_assert_eq!(view.field(f), 0);
                }
            }
        }
        for p in PAIRINGS.iter().filter(|p| p.trap.in_effect(&Traps { hcr, cptr, mdcr })) {
            for hide in p.hides {
                match *hide {
                    Hide::Field(f, max) => prop_assert!(view.field(f) <= max),
                    Hide::Reg(r) => prop_assert_eq!(view.get(r), 0),
                }
            }
        }
    }
}

// ---- several CPUs ------------------------------------------------------------------

/// Every field of every register, for the combination tests.
fn every_field() -> impl Iterator<Item = Field> {
    (0..ID_SPACE_LEN).flat_map(|i| {
        (0..64).step_by(4).map(move |shift| Field {
            reg: IdReg::at(i),
            shift,
        })
    })
}

fn regs_from(words: &[u64]) -> IdRegs {
    let mut r = IdRegs::ZERO;
    r.0.copy_from_slice(words);
    r
}

#[test]
fn two_cpus_that_differ_combine_field_by_field() {
    // A big and a little core: each has something the other lacks.
    let big = with_fields(&[
        (ISAR0_ATOMIC, 2),
        (ISAR0_AES, 2),
        (ISAR1_LRCPC, 2),
        (PFR0_SVE, 1),
        (ZFR0_SVEVER, 1),
        (MMFR0_PARANGE, 5),
        (MMFR0_ASIDBITS, 2),
        (MMFR1_SPECSEI, 0),
        (DFR0_BRPS, 5),
        (DFR0_DEBUGVER, 8),
        (DFR0_PMUVER, 6),
        (ISAR1_APA, 5),
        (ISAR1_GPA, 1),
        (PFR0_EL0, 1),
    ]);
    let little = with_fields(&[
        (ISAR0_ATOMIC, 2),
        (ISAR0_AES, 1),
        (ISAR1_LRCPC, 1),
        (MMFR0_PARANGE, 2),
        (MMFR0_ASIDBITS, 2),
        (MMFR1_SPECSEI, 1),
        (DFR0_BRPS, 3),
        (DFR0_DEBUGVER, 9),
        (DFR0_PMUVER, 5),
        (ISAR1_API, 5),
        (ISAR1_GPI, 1),
        (PFR0_EL0, 2),
    ]);
    let both = combine(&big, &little);
    assert_eq!(both, combine(&little, &big), "the order does not matter");
    for (f, want) in [
        (ISAR0_ATOMIC, 2), // the same on both
        (ISAR0_AES, 1),    // the lower: AES without PMULL
        (ISAR1_LRCPC, 1),  // LDAPR but not the 8.4 forms
        (PFR0_SVE, 0),     // only one has SVE
        (ZFR0_SVEVER, 0),
        (MMFR0_PARANGE, 2), // the smaller physical address range
        (DFR0_BRPS, 3),     // the fewer breakpoints
        (MMFR1_SPECSEI, 1), // higher is safer: SErrors from speculative reads expected
        (DFR0_DEBUGVER, 6), // exact: Armv8.0 debug when they differ
        (DFR0_PMUVER, 0),   // exact: no PMU when they differ
        (ISAR1_APA, 0),     // different address authentication algorithms: none
        (ISAR1_API, 0),
        (ISAR1_GPA, 0), // generic authentication: the lower of each
        (ISAR1_GPI, 0),
        (PFR0_EL0, 1), // AArch32 at EL0 only on the little core: AArch64 only
    ] {
        assert_eq!(both.field(f), want, "{f:?}");
    }
    // Through the view: what the guest reads.
    let view = machine_view(&[big, little], &bothy_base(), 39);
    assert_eq!(view.field(ISAR0_AES), 1);
    assert_eq!(view.field(PFR0_SVE), 0);
    assert_eq!(view.get(reg::ID_AA64ZFR0_EL1), 0);
    assert_eq!(view.field(MMFR0_PARANGE), 2);
    assert_eq!(view.field(DFR0_DEBUGVER), 6);
    assert_eq!(view.field(DFR0_PMUVER), 0);
    assert_eq!((view.field(ISAR1_APA), view.field(ISAR1_API)), (0, 0));
    assert_eq!(view.field(PFR0_EL0), 1);
    assert_eq!(
        view.get(reg::ID_PFR0_EL1),
        0,
        "no AArch32 registers without AArch32"
    );
    // One CPU alone: exactly its own view.
    assert_eq!(
        machine_view(&[big], &bothy_base(), 39),
        sanitise(&big, &bothy_traps(&big), 39)
    );
}

#[test]
fn signed_fields_combine_as_signed_numbers() {
    // FP: 0xF none, 0 FP, 1 FP with half precision. The lower as signed numbers.
    for (a, b, want) in [
        (0x0, 0x1, 0x0),
        (0x1, 0x0, 0x0),
        (0xf, 0x0, 0xf),
        (0x1, 0xf, 0xf),
        (0x1, 0x1, 0x1),
        (0xf, 0xf, 0xf),
    ] {
        for f in [
            PFR0_FP,
            PFR0_ADVSIMD,
            MMFR0_TGRAN4,
            MMFR0_TGRAN64,
            DFR0_DOUBLELOCK,
        ] {
            let both = combine(&with_fields(&[(f, a)]), &with_fields(&[(f, b)]));
            assert_eq!(both.field(f), want, "{f:?} {a:#x} {b:#x}");
        }
        // An unsigned field of the same values takes the plain lower.
        let both = combine(
            &with_fields(&[(ISAR0_AES, a)]),
            &with_fields(&[(ISAR0_AES, b)]),
        );
        assert_eq!(both.field(ISAR0_AES), a.min(b));
    }
    // What a guest reads: a CPU without FP/SIMD or the 4 KiB granule takes them away.
    let with = with_fields(&[(PFR0_FP, 1), (PFR0_ADVSIMD, 1), (MMFR0_TGRAN4, 0)]);
    let without = with_fields(&[(PFR0_FP, 0xf), (PFR0_ADVSIMD, 0xf), (MMFR0_TGRAN4, 0xf)]);
    let view = machine_view(&[with, without], &bothy_base(), 39);
    for f in [PFR0_FP, PFR0_ADVSIMD, MMFR0_TGRAN4] {
        assert_eq!(view.field(f), 0xf, "{f:?}");
    }
}

#[test]
fn each_cpu_traps_its_own_features_and_the_view_hides_what_any_traps() {
    // Only the first CPU has RAS, LORegions, an AMU and PMUv3p5.
    let first = with_fields(&[
        (PFR0_RAS, 1),
        (MMFR1_LO, 1),
        (PFR0_AMU, 1),
        (DFR0_PMUVER, 6),
        (MMFR2_IESB, 1),
    ]);
    let second = with_fields(&[(DFR0_PMUVER, 4), (MMFR2_IESB, 1)]);
    let base = bothy_base();
    let t1 = cpu_traps(&base, &first);
    let t2 = cpu_traps(&base, &second);
    // TERR, TLOR, TAM and HCCD are RES0 where the feature is missing: only the first
    // CPU sets them, and it must (or its RAS records, AMU and EL2 cycles leak).
    assert_eq!(
        t1.hcr & (1 << bits::HCR_TERR | 1 << bits::HCR_TLOR),
        1 << bits::HCR_TERR | 1 << bits::HCR_TLOR
    );
    assert_eq!(t1.cptr & 1 << bits::CPTR_TAM, 1 << bits::CPTR_TAM);
    assert_eq!(t1.mdcr & bits::MDCR_HCCD, bits::MDCR_HCCD);
    assert_eq!(t2, cpu_traps(&base, &IdRegs::ZERO));
    let view = machine_view(&[first, second], &base, 39);
    for f in [PFR0_RAS, MMFR1_LO, PFR0_AMU, MMFR2_IESB, DFR0_PMUVER] {
        assert_eq!(view.field(f), 0, "{f:?}");
    }
    // With every CPU having RAS the view still hides it: it is trapped everywhere.
    let view = machine_view(&[first, first], &base, 39);
    assert_eq!(view.field(PFR0_RAS), 0);
    assert_eq!(view.field(MMFR2_IESB), 0);
}

#[test]
fn the_boot_report_names_what_the_machine_has_and_vms_do_not_see() {
    let host = qemu_max();
    assert_eq!(
        machine_hidden(&[host, host], &bothy_base()),
        ["SCXTNUM", "RAS", "LORegions", "SME"]
    );
    // QEMU virt,mte=on: MTE too, named first.
    let mut mte = host;
    mte.set_field(PFR1_MTE, 2);
    assert_eq!(
        machine_hidden(&[mte], &bothy_base()),
        ["MTE", "SCXTNUM", "RAS", "LORegions", "SME"]
    );
    // A feature only one CPU has is not on the machine: not named.
    assert_eq!(
        machine_hidden(&[mte, host], &bothy_base()),
        ["SCXTNUM", "RAS", "LORegions", "SME"]
    );
    // Pointer authentication trapped: named once for its two trap bits.
    let pauth = with_fields(&[(ISAR1_APA, 1)]);
    assert_eq!(
        hidden_features(&pauth, &Traps::default()),
        ["pointer authentication"]
    );
    assert!(hidden_features(&IdRegs::ZERO, &Traps::default()).is_empty());
}

#[test]
fn qemu_max_on_every_cpu_gives_the_boot_cpus_view() {
    let host = qemu_max();
    let one = sanitise(&host, &bothy_traps(&host), 39);
    for n in 1..=4 {
        assert_eq!(
            machine_view(&vec![host; n], &bothy_base(), 39),
            one,
            "{n} CPUs"
        );
    }
}

proptest! {
    /// The combination never promises more than either CPU, field by field, and is the
    /// same whichever order the CPUs come in.
    #[test]
    fn the_combination_never_exceeds_either_cpu(
        a in proptest::collection::vec(any::<u64>(), ID_SPACE_LEN),
        b in proptest::collection::vec(any::<u64>(), ID_SPACE_LEN),
        c in proptest::collection::vec(any::<u64>(), ID_SPACE_LEN),
    ) {
        let (a, b, c) = (regs_from(&a), regs_from(&b), regs_from(&c));
        let ab = combine(&a, &b);
        for f in every_field() {
            let rule = combine_rule(f);
            prop_assert!(rule.no_more(ab.field(f), a.field(f)), "{:?} {:?}", f, rule);
            prop_assert!(rule.no_more(ab.field(f), b.field(f)), "{:?} {:?}", f, rule);
        }
        prop_assert_eq!(ab, combine(&b, &a));
        prop_assert_eq!(combine(&a, &a), a);
        prop_assert_eq!(combine(&ab, &c), combine(&a, &combine(&b, &c)));
    }

    /// What a VM reads on two CPUs promises no more than what it would read on either
    /// alone (that CPU's own view, with its own traps), whatever the registers and
    /// `hyp`'s own trap bits.
    #[test]
    fn the_machine_view_never_exceeds_either_cpus_view(
        a in proptest::collection::vec(any::<u64>(), ID_SPACE_LEN),
        b in proptest::collection::vec(any::<u64>(), ID_SPACE_LEN),
        hcr: u64, cptr: u64, mdcr: u64, ipa_bits in 0u32..70,
    ) {
        let (a, b) = (regs_from(&a), regs_from(&b));
        let base = Traps { hcr, cptr, mdcr };
        let view = machine_view(&[a, b], &base, ipa_bits);
        prop_assert_eq!(view, machine_view(&[b, a], &base, ipa_bits));
        for own in [a, b] {
            let alone = sanitise(&own, &cpu_traps(&base, &own), ipa_bits);
            for f in every_field() {
                let rule = combine_rule(f);
                prop_assert!(
                    rule.no_more(view.field(f), alone.field(f)),
                    "{:?} {:?}: {:#x} on both, {:#x} alone", f, rule, view.field(f), alone.field(f)
                );
            }
        }
    }
}
