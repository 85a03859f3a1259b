//! The PSCI power state of every vCPU of one VM.
//!
//! State machine (DEN0022 §5.1.4–5.1.5):
//! ```text
//!   Off --CPU_ON(entry, ctx)--> OnPending --hyp starts it, mark_on--> On
//!   On  --CPU_OFF (by itself)--> Off
//!   any --reset()--> vCPU 0 On, all others Off
//! ```
//! A vCPU in `OnPending` owns the `(entry, context_id)` its starter gave; the hypervisor
//! takes it once ([`VcpuPower::take_pending_start`]) to set the new vCPU's PC and `X0`.
//!
//! vCPUs on different physical CPUs call `CPU_ON`/`AFFINITY_INFO` concurrently, so each
//! vCPU's state sits behind its own spin lock: every transition is one short critical
//! section, and two racing `CPU_ON`s for the same target see exactly one winner
//! (`SUCCESS`) while the loser gets `ON_PENDING` or `ALREADY_ON`.
//!
//! Indices come from the hypervisor (the caller's vCPU) or from the VM's MPIDR map; an
//! index outside the VM is treated as a vCPU that does not exist, never as a panic.

use alloc::vec::Vec;
use spin::Mutex;

/// PSCI power state of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// `CPU_ON` accepted, the vCPU has not run its first instruction yet.
    OnPending,
}

/// Why a `CPU_ON` request was refused; maps 1:1 onto PSCI return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOnError {
    AlreadyOn,
    OnPending,
    NoSuchVcpu,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: PowerState,
    /// `(entry, context_id)`; `Some` only while `state == OnPending` and not yet taken.
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

    /// The `CPU_ON` transition `Off -> OnPending`, atomically, recording where the vCPU
    /// will start. The hypervisor may also call it to start a vCPU on its own account.
    pub fn request_on(&self, vcpu: usize, entry: u64, context_id: u64) -> Result<(), CpuOnError> {
        let slot = self.slots.get(vcpu).ok_or(CpuOnError::NoSuchVcpu)?;
        let mut s = slot.lock();
        match s.state {
            PowerState::On => Err(CpuOnError::AlreadyOn),
            PowerState::OnPending => Err(CpuOnError::OnPending),
            PowerState::Off => {
                s.state = PowerState::OnPending;
                s.start = Some((entry, context_id));
                Ok(())
            }
        }
    }

    /// The target vCPU's physical CPU collects its start point: `Some` once per
    /// accepted `CPU_ON`, `None` otherwise. The state stays `OnPending` until
    /// [`mark_on`](Self::mark_on), so `AFFINITY_INFO` keeps answering `ON_PENDING`.
    pub fn take_pending_start(&self, vcpu: usize) -> Option<(u64, u64)> {
        let mut s = self.slots.get(vcpu)?.lock();
        if s.state == PowerState::OnPending {
            s.start.take()
        } else {
            None
        }
    }

    /// The target vCPU actually started: `OnPending -> On`. Any other state is left
    /// alone (a `reset()` may have raced with the start).
    pub fn mark_on(&self, vcpu: usize) {
        if let Some(slot) = self.slots.get(vcpu) {
            let mut s = slot.lock();
            if s.state == PowerState::OnPending {
                s.state = PowerState::On;
                s.start = None;
            }
        }
    }

    /// `CPU_OFF`: the vCPU becomes Off and forgets any pending start.
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
        assert_eq!(p.state(1), PowerState::OnPending);
        assert_eq!(p.request_on(1, 0, 0), Err(CpuOnError::OnPending));
        assert_eq!(p.take_pending_start(1), Some((0x4008_0000, 7)));
        assert_eq!(p.take_pending_start(1), None, "taken once");
        assert_eq!(p.state(1), PowerState::OnPending);
        p.mark_on(1);
        assert_eq!(p.state(1), PowerState::On);
        assert_eq!(p.request_on(1, 0, 0), Err(CpuOnError::AlreadyOn));
        p.power_off(1);
        assert_eq!(p.state(1), PowerState::Off);
        assert_eq!(p.request_on(5, 0, 0), Err(CpuOnError::NoSuchVcpu));
    }

    #[test]
    fn mark_on_only_from_pending_and_reset_restores() {
        let p = VcpuPower::new(3);
        p.mark_on(1);
        assert_eq!(p.state(1), PowerState::Off);
        p.request_on(2, 1, 2).unwrap();
        p.power_off(0);
        p.reset();
        assert_eq!(p.state(0), PowerState::On);
        assert_eq!(p.state(2), PowerState::Off);
        assert_eq!(p.take_pending_start(2), None, "reset drops pending starts");
        p.mark_on(99); // ignored, no panic
        p.power_off(99);
    }

    #[test]
    fn racing_cpu_on_has_one_winner() {
        let p = VcpuPower::new(2);
        let wins = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (p, wins) = (&p, &wins);
                s.spawn(move || {
                    if p.request_on(1, 0x1000 * t, t).is_ok() {
                        wins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.into_inner(), 1);
        assert!(p.take_pending_start(1).is_some());
    }
}
