//! The PMU's overflow interrupt through the vGIC, with `FakeArch` as the CPU that takes
//! it: delivered hardware-linked to the vCPU that holds the PMU and to no other,
//! resampled (and dropped) when it waited while the level went away.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::arch::{ArchOp, FakeArch};
use crate::vgic::lr::{lr_state, LR_HW, LR_PINTID_MASK, LR_PINTID_SHIFT};
use crate::vgic::VcpuMask;

/// QEMU `virt`'s PMU overflow PPI (7) and virtual timer PPI (11), as INTIDs.
const PMU: u32 = 23;
const TIMER: u32 = 27;
const GICD_CTLR_ARE_G1: u64 = 0x12;
const SGI_FRAME: u64 = 0x1_0000;
const ISENABLER0: u64 = SGI_FRAME + 0x100;
const ICENABLER0: u64 = SGI_FRAME + 0x180;
const ISPENDR0: u64 = SGI_FRAME + 0x200;
const LR_STATE_PENDING: u8 = 0b01;
const LR_STATE_ACTIVE: u8 = 0b10;

/// A vGIC with group 1 enabled and, on every vCPU, the redistributor awake (it resets
/// asleep and holds interrupts until the guest wakes it) and the PMU's PPI enabled.
fn booted(vcpus: usize) -> VGic {
    const GICR_WAKER: u64 = 0x14;
    let g = VGic::new(vcpus, 32);
    g.dist_write(0, 0, 4, GICD_CTLR_ARE_G1);
    for v in 0..vcpus {
        let _ = g.redist_write(v, v as u64 * VGic::REDIST_STRIDE + GICR_WAKER, 4, 0);
        set_enabled(&g, v, PMU, true);
    }
    g
}

fn set_enabled(g: &VGic, vcpu: usize, intid: u32, on: bool) {
    let reg = if on { ISENABLER0 } else { ICENABLER0 };
    let _ = g.redist_write(vcpu, vcpu as u64 * VGic::REDIST_STRIDE + reg, 4, 1 << intid);
}

/// The end of an exit of `vcpu` on the CPU `hw`, as `hyp` runs it.
fn exit(g: &VGic, vcpu: usize, hw: &mut FakeArch) {
    if g.needs_flush(vcpu) {
        g.flush(vcpu, hw);
    }
}

/// The guest writes `intid`'s enable and its exit ends.
fn enable(g: &VGic, vcpu: usize, intid: u32, on: bool, hw: &mut FakeArch) {
    set_enabled(g, vcpu, intid, on);
    exit(g, vcpu, hw);
}

/// Every hardware line the vGIC asked about, and the answer.
fn asked(hw: &FakeArch) -> Vec<(u32, bool)> {
    hw.log
        .iter()
        .filter_map(|op| match op {
            ArchOp::HwLine { pintid, high } => Some((*pintid, *high)),
            _ => None,
        })
        .collect()
}

fn pending_to_guest(g: &VGic, vcpu: usize, intid: u32) -> bool {
    g.redist_read(vcpu, vcpu as u64 * VGic::REDIST_STRIDE + ISPENDR0, 4) & 1 << intid != 0
}

/// A CPU of its own for each vCPU, flushed once.
fn cpus(g: &VGic) -> Vec<FakeArch> {
    (0..g.nr_vcpus())
        .map(|v| {
            let mut hw = FakeArch::new();
            exit(g, v, &mut hw);
            hw
        })
        .collect()
}

#[test]
fn guests_get_a_pmu_only_when_the_host_has_one_with_pmuv3() {
    let qemu = Some(Pmu { ppi: 7 });
    // ID_AA64DFR0_EL1.PMUVer: QEMU max's (PMUv3p5), PMUv3, none, IMPLEMENTATION DEFINED.
    assert_eq!(offered(qemu, 0x6 << 8), qemu);
    assert_eq!(
        offered(qemu, 0x1 << 8 | 0x6),
        qemu,
        "other fields play no part"
    );
    assert_eq!(offered(qemu, 0), None);
    assert_eq!(offered(qemu, 0xf << 8), None);
    assert_eq!(offered(None, 0x6 << 8), None, "no PMU in the host's tree");
}

#[test]
fn the_overflow_level_is_e_and_an_enabled_overflow_flag() {
    const CYCLES: u64 = 1 << 31;
    assert!(overflow_asserted(PMCR_E, 1, 1));
    assert!(
        overflow_asserted(PMCR_E, CYCLES | 1, CYCLES),
        "the cycle counter"
    );
    assert!(
        !overflow_asserted(0, 1, 1),
        "counters disabled (PMCR_EL0.E clear)"
    );
    assert!(
        !overflow_asserted(PMCR_E, 1, 2),
        "the flag's interrupt not enabled"
    );
    assert!(
        !overflow_asserted(PMCR_E, 0, u64::MAX),
        "enabled, nothing overflowed"
    );
    // PMCR_EL0's other bits (N, LC, D...) play no part.
    assert!(!overflow_asserted(!PMCR_E, 1, 1));
}

proptest! {
    #[test]
    fn the_level_is_high_iff_some_counter_overflowed_with_its_interrupt_on(
        pmcr in any::<u64>(), ovs in any::<u64>(), inten in any::<u64>()
    ) {
        let some_counter = (0..64).any(|n| ovs >> n & 1 == 1 && inten >> n & 1 == 1);
        prop_assert_eq!(
            overflow_asserted(pmcr, ovs, inten),
            pmcr & PMCR_E != 0 && some_counter
        );
    }
}

#[test]
fn an_overflow_goes_hardware_linked_to_the_vcpu_holding_the_pmu_and_no_other() {
    let g = booted(2);
    let mut hw = cpus(&g);
    // vCPU 1's CPU takes the physical interrupt.
    let Fired::Delivered(local) = fired(Some((&g, 1)), PMU, &mut hw[1]) else {
        panic!("the vCPU holding the PMU gets its overflow");
    };
    assert!(local.flushed);
    assert_eq!(local.kicks, VcpuMask::EMPTY);
    assert_eq!(hw[1].lrs.valid(), [PMU]);
    let lr = hw[1].lrs.lr[0];
    assert_ne!(
        lr & LR_HW,
        0,
        "hardware-linked: the guest's EOI deactivates it"
    );
    assert_eq!((lr >> LR_PINTID_SHIFT) & LR_PINTID_MASK, u64::from(PMU));
    assert!(asked(&hw[1]).is_empty(), "just fired: high by construction");
    // vCPU 0, with the same PPI enabled, sees nothing of it.
    exit(&g, 0, &mut hw[0]);
    assert!(hw[0].lrs.valid().is_empty());
    assert!(!g.has_pending(0));
    assert!(!pending_to_guest(&g, 0, PMU));
    assert!(pending_to_guest(&g, 1, PMU));
    // The guest handles it: clears the overflow and EOIs (deactivating the physical
    // interrupt). Nothing is left to deliver again.
    assert_eq!(hw[1].lrs.ack_eoi(), Some(PMU));
    exit(&g, 1, &mut hw[1]);
    assert!(hw[1].lrs.valid().is_empty());
    assert!(!g.has_pending(1));
    assert!(!pending_to_guest(&g, 1, PMU));
}

#[test]
fn with_no_vcpu_on_the_cpu_the_overflow_is_nobodys() {
    let g = booted(2);
    let mut hw = FakeArch::new();
    assert_eq!(fired(None, PMU, &mut hw), Fired::Nobody);
    assert_eq!(hw.lrs.valid(), Vec::<u32>::new());
    for v in 0..2 {
        assert!(!g.has_pending(v));
        assert!(!pending_to_guest(&g, v, PMU));
    }
}

#[test]
fn an_overflow_cleared_while_its_ppi_was_disabled_is_not_delivered() {
    let g = booted(1);
    let mut hw = cpus(&g).remove(0);
    enable(&g, 0, PMU, false, &mut hw);
    // It fires while disabled: waits for the vCPU, nothing in its list registers.
    let Fired::Delivered(_) = fired(Some((&g, 0)), PMU, &mut hw) else {
        panic!("latched for its vCPU");
    };
    assert!(hw.lrs.valid().is_empty());
    // The guest clears the overflow (PMOVSCLR_EL0), then enables the PPI.
    hw.low_lines = vec![PMU];
    enable(&g, 0, PMU, true, &mut hw);
    assert_eq!(asked(&hw), [(PMU, false)], "resampled at the enable");
    assert!(
        hw.lrs.valid().is_empty(),
        "a level that went away is not delivered"
    );
    assert!(!g.has_pending(0));
    assert!(!pending_to_guest(&g, 0, PMU));
    // Still overflowed at the enable: delivered, hardware-linked.
    hw.low_lines.clear();
    enable(&g, 0, PMU, false, &mut hw);
    let _ = fired(Some((&g, 0)), PMU, &mut hw);
    enable(&g, 0, PMU, true, &mut hw);
    assert_eq!(asked(&hw), [(PMU, false), (PMU, true)]);
    assert_eq!(hw.lrs.valid(), [PMU]);
    assert_ne!(hw.lrs.lr[0] & LR_HW, 0);
}

#[test]
fn an_overflow_waiting_behind_its_active_lr_is_resampled_at_the_eoi() {
    let g = booted(1);
    let mut hw = cpus(&g).remove(0);
    let _ = fired(Some((&g, 0)), PMU, &mut hw);
    assert_eq!(hw.lrs.ack(), Some(PMU));
    // Injected again while the guest handles the first (after a vCPU switch, say).
    let _ = fired(Some((&g, 0)), PMU, &mut hw);
    exit(&g, 0, &mut hw);
    assert_eq!(lr_state(hw.lrs.lr[0]), LR_STATE_ACTIVE);
    // The handler clears the overflow and EOIs: the waiting one is stale.
    hw.low_lines = vec![PMU];
    hw.lrs.eoi(PMU);
    exit(&g, 0, &mut hw);
    assert_eq!(asked(&hw), [(PMU, false)]);
    assert!(hw.lrs.valid().is_empty());
    assert!(!g.has_pending(0));
}

#[test]
fn the_timer_and_the_pmu_are_each_resampled_on_their_own_line() {
    let g = booted(1);
    let mut hw = cpus(&g).remove(0);
    enable(&g, 0, PMU, false, &mut hw);
    // Both fire while their PPIs are disabled.
    let _ = g.inject_hw_local(0, TIMER, TIMER, &mut hw);
    let _ = fired(Some((&g, 0)), PMU, &mut hw);
    assert!(hw.lrs.valid().is_empty());
    // The overflow is cleared, the timer still fires; both enabled at once.
    hw.low_lines = vec![PMU];
    let _ = g.redist_write(0, ISENABLER0, 4, 1 << PMU | 1 << TIMER);
    exit(&g, 0, &mut hw);
    let mut lines = asked(&hw);
    lines.sort_unstable();
    assert_eq!(lines, [(PMU, false), (TIMER, true)]);
    assert_eq!(hw.lrs.valid(), [TIMER]);
    let timer_lr = hw.lrs.lr[0];
    assert_eq!(lr_state(timer_lr), LR_STATE_PENDING);
    assert_eq!(
        (timer_lr >> LR_PINTID_SHIFT) & LR_PINTID_MASK,
        u64::from(TIMER),
        "each linked to its own physical interrupt"
    );
}
