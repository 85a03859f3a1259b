//! Register-level scenarios replaying what Linux's GICv3 driver (irq-gic-v3.c) does,
//! with a fake virtual CPU interface standing in for the ICH_LR<n>_EL2 registers and a
//! fake guest that acknowledges and EOIs through it.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::dist::*;
use super::irq::{LR_STATE_ACTIVE, LR_STATE_PENDING};
use super::irqregs::*;
use super::lr::FakeListRegs as FakeLrs;
use super::lr::*;
use super::redist::*;
use super::sgi::SGI1R_IRM;
use super::*;

const SGI: u64 = SGI_FRAME;
const DEF_PRI_X4: u64 = 0xa0a0_a0a0;

fn rd(cpu: usize) -> u64 {
    cpu as u64 * VGic::REDIST_STRIDE
}

/// gic_dist_init() + gic_validate_dist_version(), as Linux 6.12 runs them on CPU 0.
fn linux_dist_init(g: &VGic) -> u32 {
    assert_eq!(g.dist_read(0, GICD_PIDR2, 4) & 0xf0, 0x30, "GICv3");
    let typer = g.dist_read(0, GICD_TYPER, 4) as u32;
    let nr_irqs = (32 * ((typer & 0x1f) + 1)).min(1020);
    g.dist_read(0, GICD_TYPER2, 4);
    g.dist_read(0, GICD_IIDR, 4);
    g.dist_write(0, GICD_CTLR, 4, 0);
    assert_eq!(g.dist_read(0, GICD_CTLR, 4) & (1 << 31), 0, "RWP clear");
    for i in (32..nr_irqs).step_by(32) {
        g.dist_write(0, IGROUPR + u64::from(i / 8), 4, 0xffff_ffff);
    }
    for i in (32..nr_irqs).step_by(16) {
        g.dist_write(0, ICFGR + u64::from(i / 4), 4, 0);
    }
    for i in (32..nr_irqs).step_by(4) {
        g.dist_write(0, IPRIORITYR + u64::from(i), 4, DEF_PRI_X4);
    }
    for i in (32..nr_irqs).step_by(32) {
        g.dist_write(0, ICACTIVER + u64::from(i / 8), 4, 0xffff_ffff);
        g.dist_write(0, ICENABLER + u64::from(i / 8), 4, 0xffff_ffff);
    }
    // DS = 1 ⇒ Linux sees "security disabled".
    assert_ne!(g.dist_read(0, GICD_CTLR, 4) as u32 & CTLR_DS, 0);
    g.dist_write(0, GICD_CTLR, 4, 0x13); // ARE_NS | ENABLE_G1A | ENABLE_G1
    for i in 32..nr_irqs {
        g.dist_write(0, GICD_IROUTER + 8 * u64::from(i), 8, 0); // boot CPU's affinity
    }
    nr_irqs
}

/// gic_populate_rdist() + gic_enable_redist() + gic_cpu_config() on `cpu`.
fn linux_cpu_init(g: &VGic, cpu: usize) -> u64 {
    let mut off = 0;
    let rbase = loop {
        assert_eq!(g.redist_read(cpu, off + GICR_PIDR2, 4) & 0xf0, 0x30);
        let typer = g.redist_read(cpu, off + GICR_TYPER, 8);
        if typer >> 32 == cpu as u64 {
            break off;
        }
        assert_eq!(typer & TYPER_LAST, 0, "ran off the end looking for {cpu}");
        off += VGic::REDIST_STRIDE;
    };
    g.redist_read(cpu, rbase + GICR_CTLR, 4);
    let waker = g.redist_read(cpu, rbase + GICR_WAKER, 4);
    g.redist_write(
        cpu,
        rbase + GICR_WAKER,
        4,
        waker & !u64::from(WAKER_PROCESSOR_SLEEP),
    );
    let mut polls = 0;
    while g.redist_read(cpu, rbase + GICR_WAKER, 4) & u64::from(WAKER_CHILDREN_ASLEEP) != 0 {
        polls += 1;
        assert!(polls < 10, "redistributor never woke");
    }
    g.redist_write(cpu, rbase + SGI + IGROUPR, 4, 0xffff_ffff);
    g.redist_write(cpu, rbase + SGI + ICACTIVER, 4, 0xffff_ffff);
    g.redist_write(cpu, rbase + SGI + ICENABLER, 4, 0xffff_ffff);
    for i in (0..32).step_by(4) {
        g.redist_write(cpu, rbase + SGI + IPRIORITYR + i, 4, DEF_PRI_X4);
    }
    // gic_smp_init: the IPIs (SGIs 0-7) get unmasked one by one.
    for sgi in 0..8 {
        g.redist_write(cpu, rbase + SGI + ISENABLER, 4, 1 << sgi);
    }
    rbase
}

fn booted(nr_vcpus: usize, nr_spis: u32) -> VGic {
    let g = VGic::new(nr_vcpus, nr_spis);
    linux_dist_init(&g);
    for cpu in 0..nr_vcpus {
        linux_cpu_init(&g, cpu);
    }
    g
}

/// The exit path as hyp runs it.
fn run_exit(g: &VGic, vcpu: usize, lrs: &mut FakeLrs) {
    if g.needs_flush(vcpu) {
        g.sync(vcpu, lrs);
        g.flush(vcpu, lrs);
    }
}

fn enable_spi(g: &VGic, intid: u32, vcpu: u64) {
    g.dist_write(0, GICD_IROUTER + 8 * u64::from(intid), 8, vcpu);
    g.dist_write(
        0,
        ISENABLER + u64::from(intid / 32) * 4,
        4,
        1 << (intid % 32),
    );
}

fn enable_private(g: &VGic, vcpu: usize, intid: u32) {
    g.redist_write(vcpu, rd(vcpu) + SGI + ISENABLER, 4, 1 << intid);
}

fn sgi1r(intid: u64, target_list: u64) -> u64 {
    intid << 24 | target_list
}

#[test]
fn distributor_identifies_as_gicv3_single_security_state() {
    let g = VGic::new(4, 64);
    let nr_irqs = linux_dist_init(&g);
    assert_eq!(nr_irqs, 96);
    assert_eq!(g.dist_read(0, GICD_TYPER, 4), 2 | 3 << 5 | 9 << 19);
    assert_eq!(g.dist_read(0, GICD_CTLR, 4), 0x53, "G0 | G1 | ARE | DS");
    assert_eq!(g.dist_read(0, GICD_PIDR2, 4), 0x3B);
    assert_eq!(g.dist_read(0, GICD_IIDR, 4), 0x4200_043B);
    assert_eq!(g.dist_read(0, GICD_TYPER2, 4), 0);
    assert_eq!(g.dist_read(0, 0xFFF0, 4), 0x0D);
    // Stored state reads back.
    assert_eq!(g.dist_read(0, IGROUPR + 4, 4), 0xffff_ffff);
    assert_eq!(
        g.dist_read(0, IGROUPR + 12, 4),
        0,
        "beyond the last SPI: RAZ"
    );
    assert_eq!(g.dist_read(0, IPRIORITYR + 33, 1), 0xa0);
    assert_eq!(g.dist_read(0, IPRIORITYR + 32, 8), 0xa0a0_a0a0_a0a0_a0a0);
}

#[test]
fn private_interrupt_registers_are_raz_wi_in_the_distributor() {
    let g = VGic::new(2, 32);
    g.dist_write(0, ISENABLER, 4, 0xffff_ffff);
    g.dist_write(0, IPRIORITYR, 4, DEF_PRI_X4);
    g.dist_write(0, ICFGR + 4, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, ISENABLER, 4), 0);
    assert_eq!(g.dist_read(0, IPRIORITYR, 4), 0);
    assert_eq!(g.dist_read(0, ICFGR + 4, 4), 0);
    assert_eq!(g.dist_read(0, GICD_IROUTER, 8), 0);
    // ... and they did not leak into the redistributor.
    assert_eq!(g.redist_read(0, SGI + ISENABLER, 4), 0);
}

#[test]
fn linux_finds_each_redistributor_and_wakes_it() {
    let g = VGic::new(3, 32);
    linux_dist_init(&g);
    for cpu in 0..3 {
        assert_eq!(
            g.redist_read(cpu, rd(cpu) + GICR_WAKER, 4),
            6,
            "asleep at reset"
        );
        let rbase = linux_cpu_init(&g, cpu);
        assert_eq!(rbase, rd(cpu));
        assert_eq!(g.redist_read(cpu, rbase + GICR_WAKER, 4), 0);
    }
    let typer = |cpu| g.redist_read(0, rd(cpu) + GICR_TYPER, 8);
    assert_eq!(typer(0), 0);
    assert_eq!(typer(1), 1 << 32 | 1 << 8);
    assert_eq!(typer(2), 2 << 32 | 2 << 8 | TYPER_LAST);
    // 32-bit halves, as gic_read_typer does on 32-bit kernels.
    assert_eq!(g.redist_read(0, rd(2) + GICR_TYPER + 4, 4), 2);
    assert_eq!(g.redist_read(0, rd(2) + GICR_TYPER, 4), 2 << 8 | 0x10);
    assert_eq!(g.redist_read(0, rd(1) + GICR_PIDR2, 4), 0x3B);
    assert_eq!(
        g.redist_read(0, 3 * VGic::REDIST_STRIDE, 4),
        0,
        "beyond the last"
    );
    // SGIs are fixed edge; PPIs default level and are programmable.
    assert_eq!(g.redist_read(0, SGI + ICFGR, 4), 0xAAAA_AAAA);
    g.redist_write(0, SGI + ICFGR, 4, 0);
    assert_eq!(g.redist_read(0, SGI + ICFGR, 4), 0xAAAA_AAAA);
    assert_eq!(g.redist_read(0, SGI + ICFGR + 4, 4), 0);
    g.redist_write(0, SGI + ICFGR + 4, 4, 0x8000_0000);
    assert_eq!(g.redist_read(0, SGI + ICFGR + 4, 4), 0x8000_0000);
    assert_eq!(
        g.redist_read(0, rd(1) + SGI + ICFGR + 4, 4),
        0,
        "banked per vCPU"
    );
    assert_eq!(g.redist_read(0, rd(1) + SGI + ISENABLER, 4), 0xff);
}

#[test]
fn spi_routed_to_vcpu1_reaches_only_vcpu1() {
    let g = booted(2, 64);
    let (mut l0, mut l1) = (FakeLrs::new(4), FakeLrs::new(4));
    run_exit(&g, 0, &mut l0);
    run_exit(&g, 1, &mut l1);
    assert!(
        !g.needs_flush(0) && !g.needs_flush(1),
        "nothing pending after boot"
    );

    enable_spi(&g, 40, 1);
    assert_eq!(g.dist_read(0, GICD_IROUTER + 8 * 40, 8), 1);
    assert_eq!(g.set_spi_level(40, true), VcpuMask::one(1));
    assert_eq!(
        g.set_spi_level(40, true),
        VcpuMask::EMPTY,
        "no change, no kick"
    );
    assert!(!g.needs_flush(0));
    assert!(g.needs_flush(1));
    assert!(g.has_pending(1) && !g.has_pending(0));
    run_exit(&g, 1, &mut l1);
    assert_eq!(
        l1.lr[0],
        40 | 0xa0 << LR_PRIORITY_SHIFT | LR_GROUP1 | LR_EOI | 1 << LR_STATE_SHIFT
    );
    assert_eq!(l1.hcr, HCR_EN);
    assert_eq!(
        g.dist_read(0, ISPENDR + 4, 4),
        1 << 8,
        "pending view includes the LR"
    );
    assert_eq!(l0.valid(), Vec::<u32>::new());
}

#[test]
fn sgi_from_vcpu0_lands_in_vcpu1_lrs() {
    let g = booted(2, 32);
    let (mut l0, mut l1) = (FakeLrs::new(4), FakeLrs::new(4));
    run_exit(&g, 0, &mut l0);
    run_exit(&g, 1, &mut l1);

    let kick = g.send_sgi(0, sgi1r(3, 0b10));
    assert_eq!(kick, VcpuMask::one(1));
    run_exit(&g, 0, &mut l0);
    assert!(l0.valid().is_empty());
    run_exit(&g, 1, &mut l1);
    assert_eq!(
        l1.lr[0],
        3 | 0xa0 << LR_PRIORITY_SHIFT | LR_GROUP1 | 1 << LR_STATE_SHIFT,
        "edge: no EOI maintenance"
    );
    assert!(
        g.needs_flush(1),
        "an occupied LR keeps the exit path syncing"
    );
    assert_eq!(l1.ack_eoi(), Some(3));
    run_exit(&g, 1, &mut l1);
    assert!(!g.needs_flush(1), "drained");
    assert_eq!(l1.lr[0], 0);
    assert!(!g.has_pending(1));
}

#[test]
fn sgi_routing_modes() {
    let g = booted(4, 32);
    // IRM = 1: everyone but the sender.
    assert_eq!(g.send_sgi(2, sgi1r(1, 0) | SGI1R_IRM), VcpuMask(0b1011));
    // A non-zero Aff1 names CPUs that do not exist.
    assert_eq!(g.send_sgi(0, sgi1r(1, 0b10) | 1 << 16), VcpuMask::EMPTY);
    // RS = 1 starts at vCPU 16.
    assert_eq!(g.send_sgi(0, sgi1r(1, 1) | 1 << 44), VcpuMask::EMPTY);
    // To itself, and a disabled SGI (8) pends without a kick.
    assert_eq!(g.send_sgi(0, sgi1r(2, 1)), VcpuMask::one(0));
    assert_eq!(g.send_sgi(0, sgi1r(8, 0b10)), VcpuMask::EMPTY);
    assert_eq!(
        g.redist_read(0, rd(1) + SGI + ISPENDR, 4) & (1 << 8),
        1 << 8
    );
    let d = Sgi1r::decode(0xff << 48 | 0xf << 44 | SGI1R_IRM | 5 << 24 | 0xff);
    assert_eq!(
        (d.intid, d.target_list, d.aff1, d.aff2, d.aff3, d.irm, d.rs),
        (5, 0xff, 0, 0, 0xff, true, 0xf)
    );
}

#[test]
fn more_pending_than_lrs_goes_by_priority_with_underflow() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    run_exit(&g, 0, &mut l);
    // Six edge SPIs, priorities 0xF0, 0xE0, ..., 0xA0 (lower value = more urgent).
    for (n, intid) in (32..38u32).enumerate() {
        g.dist_write(0, ICFGR + u64::from(intid / 16) * 4, 4, 0xAAAA_AAAA);
        g.dist_write(0, IPRIORITYR + u64::from(intid), 1, 0xF0 - 0x10 * n as u64);
        enable_spi(&g, intid, 0);
        g.dist_write(0, ISPENDR + 4, 4, 1 << (intid - 32));
    }
    run_exit(&g, 0, &mut l);
    let mut got = l.valid();
    got.sort();
    assert_eq!(got, vec![34, 35, 36, 37], "the four most urgent");
    assert_eq!(l.hcr, HCR_EN | HCR_UIE);
    let order: Vec<u32> = (0..4).filter_map(|_| l.ack_eoi()).collect();
    assert_eq!(order, vec![37, 36, 35, 34]);
    run_exit(&g, 0, &mut l); // the underflow maintenance interrupt's exit
    let mut got = l.valid();
    got.sort();
    assert_eq!(got, vec![32, 33]);
    assert_eq!(l.hcr, HCR_EN, "everything fits again");
}

#[test]
fn urgent_interrupt_evicts_a_pending_only_lr() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(2);
    run_exit(&g, 0, &mut l);
    for intid in [32, 33, 34] {
        g.dist_write(0, IPRIORITYR + u64::from(intid), 1, 0xC0);
        enable_spi(&g, intid, 0);
        g.set_spi_level(intid, true);
    }
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![32, 33]);
    assert_eq!(l.ack(), Some(32)); // 32 is active, 33 still only pending
    g.dist_write(0, IPRIORITYR + 35, 1, 0x80);
    enable_spi(&g, 35, 0);
    assert_eq!(g.set_spi_level(35, true), VcpuMask::one(0));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![32, 35], "33 made room, 32 (active) stayed");
    assert_eq!(l.hcr, HCR_EN | HCR_UIE);
    assert_eq!(l.ack(), Some(35));
}

#[test]
fn level_spi_is_reinjected_after_eoi_while_the_line_is_high() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    enable_spi(&g, 33, 0);
    g.set_spi_level(33, true);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![33]);
    assert_ne!(l.lr[0] & LR_EOI, 0);
    assert_eq!(l.ack_eoi(), Some(33));
    assert_eq!(l.eisr(), 1, "EOI maintenance requested");
    // Maintenance interrupt exit: hyp syncs; the line is still high.
    g.sync(0, &mut l);
    assert_eq!(l.eisr(), 0, "sync cleared the maintenance condition");
    assert!(g.needs_flush(0));
    g.flush(0, &mut l);
    assert_eq!(l.valid(), vec![33], "re-injected");
    // The device handler clears the cause; the line drops before the EOI.
    assert_eq!(l.ack(), Some(33));
    g.set_spi_level(33, false);
    l.eoi(33);
    run_exit(&g, 0, &mut l);
    assert!(l.valid().is_empty());
    assert!(!g.needs_flush(0));
    assert!(!g.has_pending(0));
}

#[test]
fn hw_timer_ppi_lr_bits_are_exact() {
    let g = booted(2, 32);
    let mut l = FakeLrs::new(4);
    run_exit(&g, 1, &mut l);
    // arch_timer: enable PPI 27 on vCPU 1 with Linux's default priority.
    g.redist_write(1, rd(1) + SGI + ISENABLER, 4, 1 << 27);
    assert_eq!(g.inject_hw(1, 27, 27), VcpuMask::one(1));
    run_exit(&g, 1, &mut l);
    let expect = 27 | 27 << 32 | 0xa0 << 48 | 1 << 60 | 1 << 61 | 1 << 62;
    assert_eq!(l.lr[0], expect);
    assert_eq!(l.lr[0] & LR_EOI, 0, "HW LRs carry pINTID, never EOI");
    // The guest EOIs; the LR frees itself (ELRSR) and the physical IRQ is deactivated.
    assert_eq!(l.ack_eoi(), Some(27));
    assert_eq!(l.elrsr() & 1, 1);
    run_exit(&g, 1, &mut l);
    assert!(!g.needs_flush(1));
    // Priority keeps only five bits.
    g.redist_write(1, rd(1) + SGI + IPRIORITYR + 27, 1, 0xA7);
    g.inject_hw(1, 27, 27);
    run_exit(&g, 1, &mut l);
    assert_eq!((l.lr[0] >> 48) & 0xff, 0xA0);
}

/// vCPU 0 of a booted vGIC with its timer PPI (27, hardware-linked to 27) enabled and
/// its list registers flushed once.
fn timer_ready() -> (VGic, FakeLrs) {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    run_exit(&g, 0, &mut l);
    g.redist_write(0, rd(0) + SGI + ISENABLER, 4, 1 << 27);
    run_exit(&g, 0, &mut l);
    (g, l)
}

fn set_timer_ppi(g: &VGic, l: &mut FakeLrs, enabled: bool) {
    let reg = if enabled { ISENABLER } else { ICENABLER };
    g.redist_write(0, rd(0) + SGI + reg, 4, 1 << 27);
    run_exit(g, 0, l);
}

#[test]
fn a_timer_that_fires_while_enabled_goes_straight_in_without_asking_its_line() {
    let (g, mut l) = timer_ready();
    let r = g.inject_hw_local(0, 27, 27, &mut l);
    assert!(r.flushed);
    assert_eq!(l.valid(), [27]);
    assert!(l.lines_asked.is_empty(), "just fired: high by construction");
}

#[test]
fn a_timer_latched_while_disabled_is_dropped_if_its_line_fell_before_the_enable() {
    let (g, mut l) = timer_ready();
    set_timer_ppi(&g, &mut l, false);
    // Fires while disabled: nothing for the guest yet.
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert!(l.valid().is_empty());
    assert!(!g.has_pending(0));
    // The guest turns its timer off, then enables the PPI again.
    l.low_lines = vec![27];
    set_timer_ppi(&g, &mut l, true);
    assert_eq!(l.lines_asked, [27], "asked once, at the enable");
    assert!(
        l.valid().is_empty(),
        "a condition that went away is not delivered"
    );
    assert!(!g.has_pending(0));
    assert!(!g.needs_flush(0));
    assert_eq!(
        g.redist_read(0, rd(0) + SGI + ISPENDR, 4) & 1 << 27,
        0,
        "not pending to the guest either"
    );
    // Nothing of it is left behind: the next firing is delivered as usual.
    l.low_lines.clear();
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert_eq!(l.valid(), [27]);
    assert_eq!(l.lines_asked, [27]);
}

#[test]
fn a_timer_latched_while_disabled_is_delivered_if_its_line_is_still_high() {
    let (g, mut l) = timer_ready();
    set_timer_ppi(&g, &mut l, false);
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert!(l.valid().is_empty());
    set_timer_ppi(&g, &mut l, true);
    assert_eq!(l.lines_asked, [27]);
    assert_eq!(l.valid(), [27]);
    assert_ne!(l.lr[0] & LR_HW, 0, "still hardware-linked");
    assert_eq!(l.ack_eoi(), Some(27));
}

#[test]
fn a_timer_withdrawn_from_its_lr_by_a_disable_is_resampled_at_the_enable() {
    let (g, mut l) = timer_ready();
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert_eq!(l.valid(), [27]);
    // Disabled before the guest acknowledged it: taken back, pending in software.
    set_timer_ppi(&g, &mut l, false);
    assert!(l.valid().is_empty());
    l.low_lines = vec![27];
    set_timer_ppi(&g, &mut l, true);
    assert_eq!(l.lines_asked, [27]);
    assert!(l.valid().is_empty());
    assert!(!g.has_pending(0));
}

#[test]
fn a_timer_latched_behind_its_active_lr_is_resampled_when_the_guest_eois() {
    let (g, mut l) = timer_ready();
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert_eq!(l.ack(), Some(27));
    // Fires again while the guest handles the first (its LR active): it waits.
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), [27]);
    assert_eq!(lr_state(l.lr[0]), LR_STATE_ACTIVE);
    // The handler turns the timer off and EOIs: the waiting instance is stale.
    l.low_lines = vec![27];
    l.eoi(27);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.lines_asked, [27], "asked when the EOI freed the LR");
    assert!(l.valid().is_empty());
    assert!(!g.has_pending(0));
    // With the line high instead, it is delivered again after the EOI.
    l.low_lines.clear();
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    assert_eq!(l.ack(), Some(27));
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    run_exit(&g, 0, &mut l);
    l.eoi(27);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), [27]);
}

#[test]
fn only_hardware_linked_level_ppis_are_resampled() {
    let (g, mut l) = timer_ready();
    l.low_lines = vec![27, 26];
    // A PPI without a hardware link (software ISPENDR on PPI 26) is not asked about.
    g.redist_write(0, rd(0) + SGI + ISENABLER, 4, 1 << 26);
    g.redist_write(0, rd(0) + SGI + ISPENDR, 4, 1 << 26);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), [26]);
    // The timer configured edge-triggered latches like any edge.
    g.redist_write(0, rd(0) + SGI + ICFGR + 4, 4, 0b10 << ((27 - 16) * 2));
    set_timer_ppi(&g, &mut l, false);
    let _ = g.inject_hw_local(0, 27, 27, &mut l);
    set_timer_ppi(&g, &mut l, true);
    assert!(l.lines_asked.is_empty());
    assert!(l.valid().contains(&27));
}

#[test]
fn edge_repending_while_active_becomes_pending_and_active() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.send_sgi(0, sgi1r(1, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.ack(), Some(1));
    g.send_sgi(0, sgi1r(1, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(lr_state(l.lr[0]), LR_STATE_ACTIVE | LR_STATE_PENDING);
    assert_eq!(l.valid(), vec![1], "never in two LRs");
    l.eoi(1);
    assert_eq!(l.ack_eoi(), Some(1), "second edge delivered");
    run_exit(&g, 0, &mut l);
    assert!(!g.needs_flush(0));
}

#[test]
fn disable_and_clear_pending_withdraw_unacknowledged_lrs() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.send_sgi(0, sgi1r(1, 1));
    g.send_sgi(0, sgi1r(2, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![1, 2]);
    assert_eq!(g.redist_read(0, SGI + ISPENDR, 4), 0b110);
    // Disable SGI 1: withdrawn but remembered; clear-pending SGI 2: gone.
    assert_eq!(
        g.redist_write(0, SGI + ICENABLER, 4, 1 << 1),
        VcpuMask::one(0)
    );
    assert_eq!(
        g.redist_write(0, SGI + ICPENDR, 4, 1 << 2),
        VcpuMask::one(0)
    );
    run_exit(&g, 0, &mut l);
    assert!(l.valid().is_empty());
    assert_eq!(g.redist_read(0, SGI + ISPENDR, 4), 0b10);
    g.redist_write(0, SGI + ISENABLER, 4, 1 << 1);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.ack_eoi(), Some(1));
    assert_eq!(l.ack(), None);
}

/// Reconcile must look at an LR again after the guest moves its state, not only after a
/// register write: a disabled SGI whose LR is pending+active keeps its pending copy until
/// the guest EOIs the active one, and the next exit must then withdraw it.
#[test]
fn disabled_pending_and_active_lr_is_withdrawn_once_the_active_copy_is_eoid() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.send_sgi(0, sgi1r(1, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.ack(), Some(1));
    g.send_sgi(0, sgi1r(1, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(lr_state(l.lr[0]), LR_STATE_ACTIVE | LR_STATE_PENDING);
    g.redist_write(0, SGI + ICENABLER, 4, 1 << 1);
    run_exit(&g, 0, &mut l);
    assert_eq!(
        lr_state(l.lr[0]),
        LR_STATE_ACTIVE | LR_STATE_PENDING,
        "acknowledged copy stays"
    );
    l.eoi(1);
    assert_eq!(lr_state(l.lr[0]), LR_STATE_PENDING);
    run_exit(&g, 0, &mut l);
    assert!(
        l.valid().is_empty(),
        "pending copy of a disabled SGI withdrawn"
    );
    assert_eq!(g.redist_read(0, SGI + ISPENDR, 4), 0b10, "and remembered");
    g.redist_write(0, SGI + ISENABLER, 4, 1 << 1);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.ack_eoi(), Some(1));
}

/// The candidate index follows SPI routing: an SPI that became pending while routed to
/// vCPU 0 and is then re-routed reaches vCPU 1 only.
#[test]
fn rerouted_pending_spi_is_delivered_to_its_new_target_only() {
    let g = booted(2, 32);
    let (mut l0, mut l1) = (FakeLrs::new(4), FakeLrs::new(4));
    run_exit(&g, 0, &mut l0);
    run_exit(&g, 1, &mut l1);
    enable_spi(&g, 40, 0);
    assert_eq!(g.set_spi_level(40, true), VcpuMask::one(0));
    assert_eq!(
        g.dist_write(0, GICD_IROUTER + 8 * 40, 8, 1),
        VcpuMask::one(1)
    );
    run_exit(&g, 0, &mut l0);
    run_exit(&g, 1, &mut l1);
    assert!(l0.valid().is_empty());
    assert_eq!(l1.valid(), vec![40]);
    assert!(!g.has_pending(0));
}

#[test]
fn active_state_registers() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.send_sgi(0, sgi1r(4, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.ack(), Some(4));
    run_exit(&g, 0, &mut l);
    assert_eq!(g.redist_read(0, SGI + ISACTIVER, 4), 1 << 4);
    g.redist_write(0, SGI + ICACTIVER, 4, 1 << 4);
    run_exit(&g, 0, &mut l);
    assert!(
        l.valid().is_empty(),
        "deactivated from the distributor side"
    );
    // ISACTIVER outside an LR holds delivery back until ICACTIVER.
    g.redist_write(0, SGI + ISACTIVER, 4, 1 << 5);
    g.send_sgi(0, sgi1r(5, 1));
    run_exit(&g, 0, &mut l);
    assert!(l.valid().is_empty());
    assert_eq!(g.redist_read(0, SGI + ISACTIVER, 4), 1 << 5);
    g.redist_write(0, SGI + ICACTIVER, 4, 1 << 5);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![5]);
}

/// Clear GICR_WAKER.ProcessorSleep of `cpu` (what `linux_cpu_init` does first).
fn wake(g: &VGic, cpu: usize) -> VcpuMask {
    g.redist_write(cpu, rd(cpu) + GICR_WAKER, 4, 0)
}

#[test]
fn group_enable_gates_delivery() {
    let g = VGic::new(1, 32);
    let mut l = FakeLrs::new(4);
    wake(&g, 0);
    g.redist_write(0, SGI + ISENABLER, 4, 0xffff);
    g.send_sgi(0, sgi1r(1, 1));
    assert!(!g.has_pending(0), "EnableGrp1 off");
    run_exit(&g, 0, &mut l);
    assert!(l.valid().is_empty());
    assert_eq!(g.dist_write(0, GICD_CTLR, 4, 0x12), VcpuMask::one(0));
    assert!(g.has_pending(0));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![1]);
    // Group 0 interrupts never reach the guest.
    g.redist_write(0, SGI + IGROUPR, 4, !(1 << 2));
    g.send_sgi(0, sgi1r(2, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![1]);
}

#[test]
fn reset_vcpu_wipes_its_lrs_and_redistributor() {
    let g = booted(2, 32);
    let mut l = FakeLrs::new(4);
    enable_spi(&g, 32, 1);
    g.set_spi_level(32, true);
    g.send_sgi(0, sgi1r(1, 0b10));
    run_exit(&g, 1, &mut l);
    assert_eq!(l.valid(), vec![1, 32]);
    g.reset_vcpu(1);
    assert!(g.needs_flush(1));
    assert_eq!(g.redist_read(0, rd(1) + GICR_WAKER, 4), 6);
    assert_eq!(g.redist_read(0, rd(1) + SGI + ISENABLER, 4), 0);
    run_exit(&g, 1, &mut l);
    // Its redistributor is asleep again: the SPI (line still high) waits until the
    // guest wakes it; the SGI was lost with the reset.
    assert!(l.valid().is_empty());
    assert_eq!(wake(&g, 1), VcpuMask::one(1));
    run_exit(&g, 1, &mut l);
    assert_eq!(l.valid(), vec![32]);
    assert_eq!(l.lr[1..], [0, 0, 0]);
}

/// Set GICR_WAKER.ProcessorSleep of `cpu`, as Linux's gic_cpu_pm_notifier does before
/// a power-down (Group 1 already off at the CPU interface).
fn sleep(g: &VGic, cpu: usize) -> VcpuMask {
    g.redist_write(
        cpu,
        rd(cpu) + GICR_WAKER,
        4,
        u64::from(WAKER_PROCESSOR_SLEEP),
    )
}

fn ispendr0(g: &VGic, cpu: usize) -> u64 {
    g.redist_read(0, rd(cpu) + SGI + ISPENDR, 4)
}

#[test]
fn a_sleeping_redistributor_holds_sgis_and_ppis_until_it_wakes() {
    let g = booted(2, 32);
    let mut l = FakeLrs::new(4);
    // Nothing in its LRs to take back: no work for it.
    assert_eq!(sleep(&g, 1), VcpuMask::EMPTY);
    // ChildrenAsleep follows ProcessorSleep at once.
    assert_eq!(
        g.redist_read(0, rd(1) + GICR_WAKER, 4),
        u64::from(WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP)
    );
    assert_eq!(sleep(&g, 1), VcpuMask::EMPTY, "already asleep");
    // vCPU 0 sends SGI 2; vCPU 1's timer fires (hardware-linked PPI 27).
    g.redist_write(1, rd(1) + SGI + ISENABLER, 4, 1 << 27);
    g.send_sgi(0, sgi1r(2, 0b10));
    g.inject_hw(1, 27, 27);
    for _ in 0..3 {
        run_exit(&g, 1, &mut l);
        assert!(
            l.valid().is_empty(),
            "forwarded while asleep: {:?}",
            l.valid()
        );
    }
    // Held pending at the redistributor: the guest sees them pending, and they count
    // as a wake-up for WFI (the redistributor's WakeRequest).
    assert_eq!(ispendr0(&g, 1), 1 << 2 | 1 << 27);
    assert!(g.has_pending(1));
    // Awake again: both go in, and nothing was lost on the way.
    assert_eq!(wake(&g, 1), VcpuMask::one(1));
    assert_eq!(g.redist_read(0, rd(1) + GICR_WAKER, 4), 0);
    assert!(g.needs_flush(1));
    run_exit(&g, 1, &mut l);
    assert_eq!(l.valid(), vec![2, 27]);
    assert_eq!(l.ack_eoi(), Some(2));
    assert_eq!(l.ack_eoi(), Some(27));
    run_exit(&g, 1, &mut l);
    assert!(!g.has_pending(1));
    // Asleep and awake again with nothing held: no work either way.
    assert_eq!(sleep(&g, 1), VcpuMask::EMPTY);
    assert_eq!(wake(&g, 1), VcpuMask::EMPTY);
    // vCPU 0 was never affected.
    g.send_sgi(0, sgi1r(3, 0b01));
    let mut l0 = FakeLrs::new(4);
    run_exit(&g, 0, &mut l0);
    assert_eq!(l0.valid(), vec![3]);
}

#[test]
fn falling_asleep_takes_back_what_the_cpu_interface_has_not_acknowledged() {
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.send_sgi(0, sgi1r(1, 1));
    g.send_sgi(0, sgi1r(4, 1));
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![1, 4]);
    // The guest acknowledges SGI 1 (active), not SGI 4 (still pending in its LR).
    assert_eq!(l.ack(), Some(1));
    assert_eq!(sleep(&g, 0), VcpuMask::one(0), "its LRs to release");
    run_exit(&g, 0, &mut l);
    // SGI 4 is back at the redistributor, pending; the active SGI 1 stays to be
    // completed.
    assert_eq!(l.valid(), vec![1]);
    assert_eq!(ispendr0(&g, 0), 1 << 4);
    l.eoi(1);
    run_exit(&g, 0, &mut l);
    g.sync(0, &mut l);
    assert!(l.valid().is_empty());
    // A new edge of SGI 1 while asleep is held too.
    g.send_sgi(0, sgi1r(1, 1));
    run_exit(&g, 0, &mut l);
    assert!(l.valid().is_empty());
    wake(&g, 0);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![1, 4]);
}

#[test]
fn the_exit_paths_one_pass_raise_holds_too() {
    // The self-SGI and timer shortcuts (`*_local`) must not slip past a sleeping
    // redistributor.
    let g = booted(2, 32);
    let mut l = FakeLrs::new(4);
    g.redist_write(0, rd(0) + SGI + ISENABLER, 4, 1 << 27);
    sleep(&g, 0);
    run_exit(&g, 0, &mut l);
    let r = g.send_sgi_local(0, sgi1r(5, 1), &mut l);
    assert!(r.flushed);
    let r = g.inject_hw_local(0, 27, 27, &mut l);
    assert!(r.flushed);
    assert!(l.valid().is_empty(), "{:?}", l.valid());
    assert_eq!(ispendr0(&g, 0), 1 << 5 | 1 << 27);
    wake(&g, 0);
    run_exit(&g, 0, &mut l);
    assert_eq!(l.valid(), vec![5, 27]);
}

#[test]
fn a_repeated_self_sgi_or_timer_reuses_its_finished_lr() {
    // The steady state of `sgi_self` and `vtimer_irq`: the previous instance, finished
    // by the guest, still holds LR 0 in the shadow. The new one goes over it.
    let g = booted(1, 32);
    let mut l = FakeLrs::new(4);
    g.redist_write(0, rd(0) + SGI + ISENABLER, 4, 1 << 27);
    run_exit(&g, 0, &mut l);
    // Round 0 places through the general path; later rounds must write the same LR.
    let mut first = 0;
    for round in 0..3 {
        assert!(g.send_sgi_local(0, sgi1r(5, 1), &mut l).flushed);
        assert_eq!(l.valid(), vec![5], "round {round}");
        first = if round == 0 { l.lr[0] } else { first };
        assert_eq!(l.lr[0], first, "round {round}");
        assert_eq!(ispendr0(&g, 0), 1 << 5);
        assert_eq!(l.ack_eoi(), Some(5));
    }
    for round in 0..3 {
        assert!(g.inject_hw_local(0, 27, 27, &mut l).flushed);
        assert_eq!(l.valid(), vec![27], "round {round}");
        first = if round == 0 { l.lr[0] } else { first };
        assert_eq!(l.lr[0], first, "round {round}");
        assert_ne!(l.lr[0] & LR_HW, 0, "still hardware-linked");
        assert_eq!(ispendr0(&g, 0), 1 << 27);
        assert_eq!(l.ack_eoi(), Some(27));
    }
    // Not while the guest still holds it: the edge latches behind the active copy.
    assert!(g.send_sgi_local(0, sgi1r(5, 1), &mut l).flushed);
    assert_eq!(l.ack(), Some(5));
    assert!(g.send_sgi_local(0, sgi1r(5, 1), &mut l).flushed);
    assert_eq!(l.valid(), vec![5]);
    assert_eq!(lr_state(l.lr[0]), LR_STATE_PENDING | LR_STATE_ACTIVE);
    // Nor once it is disabled: it stays pending in software.
    l.eoi(5);
    assert_eq!(l.ack_eoi(), Some(5));
    g.redist_write(0, rd(0) + SGI + ICENABLER, 4, 1 << 5);
    assert!(g.send_sgi_local(0, sgi1r(5, 1), &mut l).flushed);
    assert!(l.valid().is_empty());
    assert_eq!(ispendr0(&g, 0), 1 << 5);
}

#[test]
fn an_occupied_lr_needs_a_flush_only_after_the_guest_ran() {
    // A CPU idling with a vCPU (the guest not running) flushes for new work alone; once
    // the guest has run, an occupied LR is synced too.
    let g = booted(2, 32);
    let mut l = FakeLrs::new(4);
    run_exit(&g, 0, &mut l);
    assert!(!g.needs_flush_before_run(0, true));
    g.send_sgi(1, sgi1r(3, 1));
    assert!(g.needs_flush_before_run(0, false));
    g.flush(0, &mut l);
    assert_eq!(l.valid(), vec![3]);
    assert!(
        g.needs_flush_before_run(0, true),
        "the guest may have finished it"
    );
    assert!(
        !g.needs_flush_before_run(0, false),
        "nothing new, nothing moved"
    );
    g.send_sgi(1, sgi1r(4, 1));
    assert!(g.needs_flush_before_run(0, false));
}

#[test]
fn an_spi_routed_to_a_sleeping_vcpu_waits_for_it() {
    let g = booted(2, 64);
    let mut l = FakeLrs::new(4);
    enable_spi(&g, 40, 1);
    sleep(&g, 1);
    g.set_spi_level(40, true);
    run_exit(&g, 1, &mut l);
    assert!(l.valid().is_empty());
    assert!(g.has_pending(1));
    wake(&g, 1);
    run_exit(&g, 1, &mut l);
    assert_eq!(l.valid(), vec![40]);
}

#[test]
fn only_processor_sleep_is_writable_in_gicr_waker() {
    let g = booted(1, 32);
    // ChildrenAsleep is read-only: writing it alone wakes nothing up or down.
    g.redist_write(0, rd(0) + GICR_WAKER, 4, u64::from(WAKER_CHILDREN_ASLEEP));
    assert_eq!(g.redist_read(0, rd(0) + GICR_WAKER, 4), 0);
    g.redist_write(0, rd(0) + GICR_WAKER, 4, 0xffff_ffff);
    assert_eq!(g.redist_read(0, rd(0) + GICR_WAKER, 4), 6);
}

#[test]
fn odd_accesses_are_harmless() {
    let g = booted(2, 32);
    assert_eq!(g.dist_read(0, GICD_CTLR + 1, 4), 0, "misaligned");
    assert_eq!(g.dist_read(0, GICD_CTLR, 3), 0, "bad size");
    assert_eq!(g.dist_read(0, GICD_CTLR, 1), 0x53);
    assert_eq!(
        g.dist_read(0, GICD_TYPER, 8) >> 32,
        0,
        "TYPER2 in the upper half"
    );
    g.dist_write(0, GICD_CTLR, 1, 0);
    assert_eq!(
        g.dist_read(0, GICD_CTLR, 4),
        0x53,
        "byte writes to CTLR ignored"
    );
    // 8-byte write to two 32-bit registers.
    g.dist_write(0, ISENABLER, 8, 0xffff_ffff_0000_0000);
    assert_eq!(g.dist_read(0, ISENABLER + 4, 4), 0xffff_ffff);
    // 32-bit halves of IROUTER.
    g.dist_write(0, GICD_IROUTER + 8 * 32, 4, 1);
    g.dist_write(0, GICD_IROUTER + 8 * 32 + 4, 4, 0);
    assert_eq!(g.dist_read(0, GICD_IROUTER + 8 * 32, 8), 1);
    g.dist_write(0, GICD_IROUTER + 8 * 33, 8, u64::MAX);
    assert_eq!(g.dist_read(0, GICD_IROUTER + 8 * 33, 8), 0xff_80ff_ffff);
    assert_eq!(g.dist_read(0, 0x1_0000, 4), 0, "outside the window");
    assert_eq!(g.redist_read(0, u64::MAX - 3, 4), 0);
    assert_eq!(g.inject_hw(7, 27, 27), VcpuMask::EMPTY);
    assert_eq!(g.set_spi_level(1000, true), VcpuMask::EMPTY);
    assert!(!g.needs_flush(9));
}

/// Every LR the fake holds is one the model knows about, and vice versa.
fn check_consistent(g: &VGic, vcpu: usize, l: &FakeLrs) -> Result<(), TestCaseError> {
    let st = g.state.lock();
    for (i, &v) in l.lr.iter().enumerate() {
        let shadow = st.cpus[vcpu].lrs[i];
        if lr_state(v) != 0 {
            prop_assert_eq!(shadow, Some((v & LR_VINTID_MASK) as u32));
            let irq = st.irq(vcpu, shadow.unwrap()).unwrap();
            prop_assert_eq!(irq.lr, Some(i as u8));
            prop_assert_eq!(usize::from(irq.lr_vcpu), vcpu);
        }
    }
    // And the other way: a private interrupt that claims an LR is what the shadow
    // says that LR holds (the exit path's LR-reuse shortcut relies on it).
    for (intid, irq) in st.cpus[vcpu].private.iter().enumerate() {
        if let Some(i) = irq.lr {
            prop_assert_eq!(st.cpus[vcpu].lrs[usize::from(i)], Some(intid as u32));
        }
    }
    let mut seen = Vec::new();
    for &v in &l.lr {
        if lr_state(v) != 0 {
            let intid = (v & LR_VINTID_MASK) as u32;
            prop_assert!(!seen.contains(&intid), "INTID {} in two LRs", intid);
            seen.push(intid);
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    DistRead(u64, u8),
    DistWrite(u64, u8, u64),
    RedistRead(u64, u8),
    RedistWrite(u64, u8, u64),
    Sgi(usize, u64),
    Level(u32, bool),
    Hw(usize, u32),
    Guest(usize, u8),
    Exit(usize),
    Reset(usize),
    /// GICR_WAKER.ProcessorSleep of a vCPU set (true) or cleared.
    Sleep(usize, bool),
    /// vCPU `v` raises private interrupt `intid` for itself (an SGI, or with `hw` a
    /// hardware-linked PPI like its timer) and takes it at once: acknowledge and EOI.
    Taken {
        v: usize,
        intid: u32,
        hw: bool,
    },
    /// The input line of PPI `intid` of vCPU `v` (an emulated level source, such as the
    /// EL1 physical timer) goes to `level`.
    PrivateLevel {
        v: usize,
        intid: u32,
        level: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![Just(1u8), Just(2), Just(4), Just(8), 0u8..16];
    let dist_off = prop_oneof![0u64..0x1000, 0x6000u64..0x6400, 0xFFC0u64..0x10010];
    let redist_off = prop_oneof![0u64..0x100, 0x1_0000u64..0x1_0E00, 0u64..0x8_0000];
    prop_oneof![
        (dist_off.clone(), size.clone()).prop_map(|(o, s)| Op::DistRead(o, s)),
        (dist_off, size.clone(), any::<u64>()).prop_map(|(o, s, v)| Op::DistWrite(o, s, v)),
        (redist_off.clone(), size.clone()).prop_map(|(o, s)| Op::RedistRead(o, s)),
        (redist_off, size, any::<u64>()).prop_map(|(o, s, v)| Op::RedistWrite(o, s, v)),
        (0usize..4, any::<u64>()).prop_map(|(f, v)| Op::Sgi(f, v)),
        // Well-formed SGIs (random words almost never name Aff1-3 = 0).
        (0usize..4, 0u64..16, 0u64..8).prop_map(|(f, i, t)| Op::Sgi(f, sgi1r(i, t))),
        // Raised and taken at once, from a small set, so that one often comes again
        // after the guest finished the last (the exit path's LR-reuse shortcut).
        (0usize..3, 0u32..3).prop_map(|(v, intid)| Op::Taken {
            v,
            intid,
            hw: false
        }),
        (0usize..3, 26u32..28).prop_map(|(v, intid)| Op::Taken { v, intid, hw: true }),
        (0usize..3, 29u32..31, any::<bool>()).prop_map(|(v, intid, level)| Op::PrivateLevel {
            v,
            intid,
            level
        }),
        (0u32..1100, any::<bool>()).prop_map(|(i, l)| Op::Level(i, l)),
        (0usize..4, 0u32..100).prop_map(|(v, i)| Op::Hw(v, i)),
        (0usize..3, 0u8..4).prop_map(|(v, a)| Op::Guest(v, a)),
        (0usize..3).prop_map(Op::Exit),
        (0usize..4).prop_map(Op::Reset),
        (0usize..3, any::<bool>()).prop_map(|(v, a)| Op::Sleep(v, a)),
    ]
}

proptest! {
    #[test]
    fn random_mmio_and_guest_activity_never_panics(
        boot in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let g = if boot { booted(3, 64) } else { VGic::new(3, 64) };
        let mut lrs = [FakeLrs::new(4), FakeLrs::new(2), FakeLrs::new(16)];
        for op in ops {
            match op {
                Op::DistRead(o, s) => { g.dist_read(0, o, s); }
                Op::DistWrite(o, s, v) => { g.dist_write(1, o, s, v); }
                Op::RedistRead(o, s) => { g.redist_read(2, o, s); }
                Op::RedistWrite(o, s, v) => { g.redist_write(0, o, s, v); }
                Op::Sgi(f, v) => { g.send_sgi(f, v); }
                Op::Level(i, l) => { g.set_spi_level(i, l); }
                Op::Hw(v, i) => { g.inject_hw(v, i, i); }
                Op::Guest(v, a) => {
                    let l = &mut lrs[v];
                    match a {
                        0 => { l.ack(); }
                        1 => { l.ack_eoi(); }
                        2 => { g.sync(v, l); }
                        _ => {
                            let active: Vec<u32> = l.lr.iter()
                                .filter(|&&x| lr_state(x) & LR_STATE_ACTIVE != 0)
                                .map(|&x| (x & LR_VINTID_MASK) as u32).collect();
                            for i in active { l.eoi(i); }
                        }
                    }
                }
                Op::Exit(v) => {
                    run_exit(&g, v, &mut lrs[v]);
                    check_consistent(&g, v, &lrs[v])?;
                    g.has_pending(v);
                }
                Op::Reset(v) => g.reset_vcpu(v),
                Op::Sleep(v, asleep) => {
                    let waker = if asleep { WAKER_PROCESSOR_SLEEP } else { 0 };
                    g.redist_write(v, rd(v) + GICR_WAKER, 4, u64::from(waker));
                }
                ref other @ (Op::Taken { .. } | Op::PrivateLevel { .. }) => {
                    apply(&g, &mut lrs, other)
                }
            }
        }
        // Draining: a guest that acks and EOIs everything ends with empty LRs and,
        // with the dist disabled, no further work.
        g.dist_write(0, GICD_CTLR, 4, 0);
        for (v, l) in lrs.iter_mut().enumerate() {
            for _ in 0..64 {
                run_exit(&g, v, l);
                while l.ack_eoi().is_some() {}
                let active: Vec<u32> = l.lr.iter()
                    .filter(|&&x| lr_state(x) & LR_STATE_ACTIVE != 0)
                    .map(|&x| (x & LR_VINTID_MASK) as u32).collect();
                for i in active { l.eoi(i); }
            }
            run_exit(&g, v, l);
            prop_assert!(l.valid().is_empty());
            prop_assert!(!g.needs_flush(v));
        }
    }
}

/// Apply one generated operation to `g` (the SGI and injection as plain calls).
fn apply(g: &VGic, lrs: &mut [FakeLrs; 3], op: &Op) {
    match *op {
        Op::DistRead(o, s) => {
            g.dist_read(0, o, s);
        }
        Op::DistWrite(o, s, v) => {
            g.dist_write(1, o, s, v);
        }
        Op::RedistRead(o, s) => {
            g.redist_read(2, o, s);
        }
        Op::RedistWrite(o, s, v) => {
            g.redist_write(0, o, s, v);
        }
        Op::Sgi(f, v) => {
            g.send_sgi(f, v);
        }
        Op::Level(i, l) => {
            g.set_spi_level(i, l);
        }
        Op::Hw(v, i) => {
            g.inject_hw(v, i, i);
        }
        Op::Guest(v, a) => {
            let l = &mut lrs[v];
            match a {
                0 => {
                    l.ack();
                }
                1 => {
                    l.ack_eoi();
                }
                2 => g.sync(v, l),
                _ => {
                    let active: Vec<u32> =
                        l.lr.iter()
                            .filter(|&&x| lr_state(x) & LR_STATE_ACTIVE != 0)
                            .map(|&x| (x & LR_VINTID_MASK) as u32)
                            .collect();
                    for i in active {
                        l.eoi(i);
                    }
                }
            }
        }
        Op::Exit(v) => run_exit(g, v, &mut lrs[v]),
        Op::Reset(v) => g.reset_vcpu(v),
        Op::Sleep(v, asleep) => {
            let waker = if asleep { WAKER_PROCESSOR_SLEEP } else { 0 };
            g.redist_write(v, rd(v) + GICR_WAKER, 4, u64::from(waker));
        }
        Op::PrivateLevel { v, intid, level } => {
            enable_private(g, v, intid);
            g.set_private_level(v, intid, level);
        }
        Op::Taken { v, intid, hw } => {
            enable_private(g, v, intid);
            if hw {
                g.inject_hw(v, intid, intid);
            } else {
                g.send_sgi(v, sgi1r(u64::from(intid), 1 << v));
            }
            run_exit(g, v, &mut lrs[v]);
            lrs[v].ack_eoi();
        }
    }
}

/// One side of a differential test: a 3-vCPU vGIC (booted as Linux would, or fresh)
/// and list registers of three sizes for its vCPUs.
fn twin(boot: bool) -> (VGic, [FakeLrs; 3]) {
    let g = if boot {
        booted(3, 64)
    } else {
        VGic::new(3, 64)
    };
    (g, [FakeLrs::new(4), FakeLrs::new(2), FakeLrs::new(16)])
}

/// Both sides of a differential test look the same to every vCPU after `op`: list
/// registers, ICH_HCR_EL2, flags, pending view, GICR_ISPENDR0.
fn same_view(
    (a, al): (&VGic, &[FakeLrs; 3]),
    (b, bl): (&VGic, &[FakeLrs; 3]),
    op: &Op,
) -> Result<(), TestCaseError> {
    for v in 0..3 {
        prop_assert_eq!(&al[v].lr, &bl[v].lr, "vCPU {} LRs after {:?}", v, op);
        prop_assert_eq!(al[v].hcr, bl[v].hcr);
        prop_assert_eq!(a.needs_flush(v), b.needs_flush(v));
        prop_assert_eq!(a.has_pending(v), b.has_pending(v));
        prop_assert_eq!(ispendr0(a, v), ispendr0(b, v));
    }
    Ok(())
}

proptest! {
    /// hyp raises a vCPU's own SGIs and its timer PPI with the `*_local` calls, which
    /// flush at once under one lock. That must end exactly where the plain call followed
    /// by the ordinary exit path (`needs_flush` → sync + flush) ends: same list
    /// registers, same ICH_HCR_EL2, same flags, same pending view.
    #[test]
    fn local_raise_and_flush_matches_raise_then_exit(
        boot in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let ((plain, mut pl), (local, mut ll)) = (twin(boot), twin(boot));
        for op in ops {
            match op {
                Op::Sgi(f, v) if f < 3 => {
                    plain.send_sgi(f, v);
                    run_exit(&plain, f, &mut pl[f]);
                    let r = local.send_sgi_local(f, v, &mut ll[f]);
                    if !r.flushed && local.needs_flush(f) {
                        local.sync(f, &mut ll[f]);
                        local.flush(f, &mut ll[f]);
                    }
                }
                Op::Hw(v, i) if v < 3 => {
                    plain.inject_hw(v, i, i);
                    run_exit(&plain, v, &mut pl[v]);
                    let r = local.inject_hw_local(v, i, i, &mut ll[v]);
                    if !r.flushed && local.needs_flush(v) {
                        local.sync(v, &mut ll[v]);
                        local.flush(v, &mut ll[v]);
                    }
                }
                Op::Taken { v, intid, hw } => {
                    apply(&plain, &mut pl, &op);
                    enable_private(&local, v, intid);
                    let r = if hw {
                        local.inject_hw_local(v, intid, intid, &mut ll[v])
                    } else {
                        local.send_sgi_local(v, sgi1r(u64::from(intid), 1 << v), &mut ll[v])
                    };
                    if !r.flushed && local.needs_flush(v) {
                        local.sync(v, &mut ll[v]);
                        local.flush(v, &mut ll[v]);
                    }
                    ll[v].ack_eoi();
                }
                ref other => {
                    apply(&plain, &mut pl, other);
                    apply(&local, &mut ll, other);
                }
            }
            same_view((&plain, &pl), (&local, &ll), &op)?;
        }
    }
}

proptest! {
    /// The flush shortcuts (`flush_after_exit`'s for LRs the guest has finished,
    /// `State::flush_quiet`, and `flush`'s for one private interrupt waiting for empty
    /// LRs, `State::place_lone_private`) end exactly where the general flush ends: same
    /// list registers, ICH_HCR_EL2, flags, pending view and ISPENDR/ISACTIVER reads. A
    /// WFI's `flush_and_has_pending` answers as `flush` + `has_pending`.
    #[test]
    fn flush_shortcut_matches_the_general_flush(
        boot in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let ((general, mut gl), (short, mut sl)) = (twin(boot), twin(boot));
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Exit(v) => {
                    if general.needs_flush(v) {
                        general.sync(v, &mut gl[v]);
                        general.flush_general(v, &mut gl[v]);
                    }
                    if short.needs_flush(v) {
                        if n % 3 == 0 {
                            short.flush_after_exit(v, &mut sl[v]);
                        } else if n % 3 == 1 {
                            short.flush(v, &mut sl[v]);
                        } else {
                            let pending = short.flush_and_has_pending(v, &mut sl[v]);
                            prop_assert_eq!(pending, general.has_pending(v));
                        }
                    }
                }
                Op::Taken { v, intid, hw } => {
                    for (g, l, general_flush) in [(&general, &mut gl, true), (&short, &mut sl, false)] {
                        enable_private(g, v, intid);
                        if hw {
                            g.inject_hw(v, intid, intid);
                        } else {
                            g.send_sgi(v, sgi1r(u64::from(intid), 1 << v));
                        }
                        if general_flush {
                            g.sync(v, &mut l[v]);
                            g.flush_general(v, &mut l[v]);
                        } else {
                            g.flush_after_exit(v, &mut l[v]);
                        }
                        l[v].ack_eoi();
                    }
                }
                ref other => {
                    apply(&general, &mut gl, other);
                    apply(&short, &mut sl, other);
                }
            }
            same_view((&general, &gl), (&short, &sl), op)?;
            if let Op::Exit(v) = *op {
                check_consistent(&short, v, &sl[v])?;
            }
        }
    }
}

proptest! {
    /// The exit path's quick "SGI to myself" test never claims more than the full decode,
    /// and recognises the canonical self-SGI.
    #[test]
    fn only_to_self_matches_the_decoded_targets(
        raw in any::<u64>(),
        intid in 0u64..16,
        list in 0u64..0x1_0000,
        rs in 0u64..16,
        nr_vcpus in 1usize..=64,
        from_seed in any::<usize>(),
        structured in any::<bool>(),
    ) {
        // Now and then a sender past the last vCPU, which must never pass.
        let from = from_seed % (nr_vcpus + 1);
        let v = if structured {
            // Mostly well-formed: Aff1-3 = 0, IRM = 0, often the sender's own bit.
            let list = if list % 3 == 0 { 1 << (from % 16) } else { list };
            let rs = if rs % 2 == 0 { (from / 16) as u64 } else { rs };
            sgi1r(intid, list) | rs << 44 | (raw & SGI1R_IRM & (raw >> 1))
        } else {
            raw
        };
        let canonical = sgi1r(intid, 1 << (from % 16)) | ((from / 16) as u64) << 44;
        if from == nr_vcpus {
            prop_assert!(!Sgi1r::only_to_self(v, from, nr_vcpus), "{:#x}", v);
            prop_assert!(!Sgi1r::only_to_self(canonical, from, nr_vcpus));
            return Ok(());
        }
        let decoded = Sgi1r::decode(v).targets(from, nr_vcpus) == VcpuMask::one(from);
        if Sgi1r::only_to_self(v, from, nr_vcpus) {
            prop_assert!(decoded, "{:#x}", v);
        }
        prop_assert!(Sgi1r::only_to_self(canonical, from, nr_vcpus));
    }
}
