//! The PSCI power state of every vCPU of one VM.
//!
//! State machine (DEN0022 §5.1.4–5.1.5):
//! ```text
//!   Off --CPU_ON(entry, ctx)--> On (start point stored)
//!   On  --CPU_OFF (by itself, once it has left its CPU)--> Off
//!   any --reset()--> vCPU 0 On, all others Off
//! ```
//! A successful `CPU_ON` makes its target `On` at once, as KVM does: every later
//! `CPU_ON` gets `ALREADY_ON` and `AFFINITY_INFO` answers ON, so of any number of racing
//! callers exactly one sees `SUCCESS` (guests written against KVM count on that; a
//! PSCI that answers `ON_PENDING` to the losers makes them retry or give up). Bothy
//! never reports `ON_PENDING`. The `(entry, context_id)` the winner gave stays stored
//! until the hypervisor takes it once ([`VcpuPower::take_pending_start`]), when it
//! first loads the new vCPU, to set its PC and `X0`.
//!
//! vCPUs on different physical CPUs call `CPU_ON`/`AFFINITY_INFO` concurrently, so each
//! vCPU's state sits behind its own spin lock: every transition is one short critical
//! section.
//!
//! Indices come from the hypervisor (the caller's vCPU) or from the VM's MPIDR map; an
//! index outside the VM is treated as a vCPU that does not exist, never as a panic.

use alloc::vec::Vec;
use spin::Mutex;

/// PSCI power state of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running, or started by a `CPU_ON` and about to run.
    On,
    Off,
}

/// Why a `CPU_ON` request was refused; maps 1:1 onto PSCI return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOnError {
    AlreadyOn,
    NoSuchVcpu,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: PowerState,
    /// `(entry, context_id)` of the `CPU_ON` that turned the vCPU on; `Some` from then
    /// until the hypervisor first loads it.
    start: Option<(u64, u64)>,
}

impl Slot {
    const fn initial(vcpu: usize) -> Self {
        Slot {
            state: if vcpu == 0 {
                PowerState::On
            } else {
                PowerState::Off
            },
            start: None,
        }
    }
}

/// Per-VM PSCI power state of every vCPU; shared by all the VM's vCPUs (`Sync`).
pub struct VcpuPower {
    slots: Vec<Mutex<Slot>>,
}

impl VcpuPower {
    /// vCPU 0 is On (the boot CPU), all others Off.
    pub fn new(nr_vcpus: usize) -> Self {
        Self {
            slots: (0..nr_vcpus)
                .map(|i| Mutex::new(Slot::initial(i)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The vCPU's state; `Off` for an index outside the VM.
    pub fn state(&self, vcpu: usize) -> PowerState {
        self.slots
            .get(vcpu)
            .map_or(PowerState::Off, |s| s.lock().state)
    }

    /// The `CPU_ON` transition `Off -> On`, atomically, recording where the vCPU will
    /// start. The hypervisor may also call it to start a vCPU on its own account.
    pub fn request_on(&self, vcpu: usize, entry: u64, context_id: u64) -> Result<(), CpuOnError> {
        let slot = self.slots.get(vcpu).ok_or(CpuOnError::NoSuchVcpu)?;
        let mut s = slot.lock();
        match s.state {
            PowerState::On => Err(CpuOnError::AlreadyOn),
            PowerState::Off => {
                s.state = PowerState::On;
                s.start = Some((entry, context_id));
                Ok(())
            }
        }
    }

    /// The physical CPU loading the vCPU collects its start point: `Some` once per
    /// accepted `CPU_ON`, `None` otherwise (also after a `CPU_OFF` or reset dropped it).
    pub fn take_pending_start(&self, vcpu: usize) -> Option<(u64, u64)> {
        self.slots.get(vcpu)?.lock().start.take()
    }

    /// `CPU_OFF`, once the vCPU has left its CPU: it becomes Off and forgets any start.
    pub fn power_off(&self, vcpu: usize) {
        if let Some(slot) = self.slots.get(vcpu) {
            *slot.lock() = Slot {
                state: PowerState::Off,
                start: None,
            };
        }
    }

    /// VM reset: back to the state of [`new`](Self::new).
    pub fn reset(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            *slot.lock() = Slot::initial(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_with_vcpu0_on() {
        let p = VcpuPower::new(3);
        assert_eq!(p.len(), 3);
        assert_eq!(p.state(0), PowerState::On);
        assert_eq!(p.state(1), PowerState::Off);
        assert_eq!(p.state(2), PowerState::Off);
        assert_eq!(p.state(3), PowerState::Off, "outside the VM reads as Off");
    }

    #[test]
    fn full_cycle() {
        let p = VcpuPower::new(2);
        assert_eq!(p.take_pending_start(1), None);
        p.request_on(1, 0x4008_0000, 7).unwrap();
        assert_eq!(
            p.state(1),
            PowerState::On,
            "on from the moment CPU_ON succeeds"
        );
        assert_eq!(p.request_on(1, 0, 0), Err(CpuOnError::AlreadyOn));
        assert_eq!(
            p.take_pending_start(1),
            Some((0x4008_0000, 7)),
            "the winner's"
        );
        assert_eq!(p.take_pending_start(1), None, "taken once");
        assert_eq!(p.state(1), PowerState::On);
        assert_eq!(p.request_on(1, 0, 0), Err(CpuOnError::AlreadyOn));
        p.power_off(1);
        assert_eq!(p.state(1), PowerState::Off);
        p.request_on(1, 0x4009_0000, 8).unwrap();
        assert_eq!(p.take_pending_start(1), Some((0x4009_0000, 8)), "restart");
        assert_eq!(p.request_on(5, 0, 0), Err(CpuOnError::NoSuchVcpu));
        assert_eq!(p.take_pending_start(5), None);
    }

    #[test]
    fn off_and_reset_drop_a_start_not_yet_taken() {
        let p = VcpuPower::new(3);
        p.request_on(1, 1, 2).unwrap();
        p.power_off(1);
        assert_eq!(p.take_pending_start(1), None);
        p.request_on(2, 1, 2).unwrap();
        p.power_off(0);
        p.reset();
        assert_eq!(p.state(0), PowerState::On);
        assert_eq!(p.state(2), PowerState::Off);
        assert_eq!(p.take_pending_start(2), None, "reset drops pending starts");
        p.power_off(99); // ignored, no panic
    }

    #[test]
    fn racing_cpu_on_has_one_winner() {
        let p = VcpuPower::new(2);
        let wins = std::sync::atomic::AtomicUsize::new(0);
        let already_on = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (p, wins, already_on) = (&p, &wins, &already_on);
                s.spawn(move || match p.request_on(1, 0x1000 * t, t) {
                    Ok(()) => {
                        wins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert_eq!(e, CpuOnError::AlreadyOn);
                        already_on.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!((wins.into_inner(), already_on.into_inner()), (1, 7));
        let (entry, context) = p.take_pending_start(1).unwrap();
        assert_eq!(entry, 0x1000 * context, "one caller's pair, not a mix");
    }
}
