//! A VM's life: its run state, and what happens once its vCPUs have stopped.
//!
//! A VM stops in two steps (the hypervisor's `exit.rs` carries them out): its
//! [`VmState`] leaves `Running` (a guest's SYSTEM_OFF or SYSTEM_RESET, a fault Bothy
//! cannot reflect, Bothy's prompt), and its vCPUs are stopped — those running on a CPU
//! at their next scheduling point (an exit, or their slice's end). The scheduler names
//! exactly one finisher: the caller of its `stop_vm` when no vCPU was running, or
//! else the CPU on which the last running vCPU stops (`Scheduler::take_finished_stop`).
//! That CPU finds the VM *quiescent* and asks [`after_stop`] what to finish with; only
//! then may the VM's memory be rewritten, since no vCPU can be executing in it, and no
//! vCPU of it can be started in between (the scheduler refuses while a stop is on).
//!
//! ```text
//!   Running --SYSTEM_OFF / last CPU_OFF--> Off     --quiescent--> on_exit: halt | restart | poweroff
//!   Running --fault--------------------->  Crashed --quiescent--> on_exit
//!   Running --SYSTEM_RESET / restart---->  Resetting --quiescent--> reload images, Running
//!   Running --prompt stop--------------->  Halted  --quiescent--> stays stopped (prompt start)
//! ```
//! A VM whose vCPUs have all called CPU_OFF is off: nothing can ever wake it, so it is
//! treated as if it had called SYSTEM_OFF ([`all_vcpus_off`]).

use crate::manifest::OnExit;

/// Where a VM is in its life. Stored by the hypervisor in an atomic (`as u8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmState {
    Running = 0,
    /// Powered itself off (SYSTEM_OFF, or its last vCPU called CPU_OFF).
    Off = 1,
    /// SYSTEM_RESET or a restart: vCPUs stop, images are reloaded, vCPU 0 starts again.
    Resetting = 2,
    /// Bothy stopped it because of something it did (the reason is printed).
    Crashed = 3,
    /// Stopped from Bothy's prompt; starts again only from there.
    Halted = 4,
}

impl VmState {
    /// The state stored as `raw` (`VmState as u8`); unknown values read as `Halted`,
    /// the state from which nothing runs by itself.
    pub fn from_u8(raw: u8) -> Self {
        match raw {
            0 => VmState::Running,
            1 => VmState::Off,
            2 => VmState::Resetting,
            3 => VmState::Crashed,
            _ => VmState::Halted,
        }
    }

    /// As the prompt's `list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Off => "off",
            VmState::Resetting => "resetting",
            VmState::Crashed => "crashed",
            VmState::Halted => "halted",
        }
    }
}

/// What the hypervisor finishes a VM's stop with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Nothing: the VM runs (it was started again before its stop was finished).
    Nothing,
    /// Reload the images, reset the vGIC and power states, start vCPU 0.
    Reload,
    /// The VM stays stopped: it no longer counts as running (the machine powers off
    /// when none does).
    Stop,
    /// `on_exit = "restart"`: enter `Resetting`, then as [`AfterStop::Reload`].
    Restart,
    /// `on_exit = "poweroff"`: power the whole machine off.
    PowerOffMachine,
}

/// Whether a `Running` VM must become `Off` because none of its vCPUs can run again
/// (`alive` is false: every one is off, none starting).
pub fn all_vcpus_off(state: VmState, alive: bool) -> bool {
    state == VmState::Running && !alive
}

/// The VM's stop is finished (none of its vCPUs runs on any CPU): what to do next.
pub fn after_stop(state: VmState, on_exit: OnExit) -> AfterStop {
    match (state, on_exit) {
        (VmState::Running, _) => AfterStop::Nothing,
        (VmState::Resetting, _) => AfterStop::Reload,
        (VmState::Halted, _) => AfterStop::Stop,
        (VmState::Off | VmState::Crashed, OnExit::Halt) => AfterStop::Stop,
        (VmState::Off | VmState::Crashed, OnExit::Restart) => AfterStop::Restart,
        (VmState::Off | VmState::Crashed, OnExit::Poweroff) => AfterStop::PowerOffMachine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [VmState; 5] = [
        VmState::Running,
        VmState::Off,
        VmState::Resetting,
        VmState::Crashed,
        VmState::Halted,
    ];
    const POLICIES: [OnExit; 3] = [OnExit::Halt, OnExit::Restart, OnExit::Poweroff];

    #[test]
    fn the_last_one_out_finishes_by_state_and_policy() {
        use AfterStop::*;
        let table = [
            (VmState::Running, [Nothing, Nothing, Nothing]),
            (VmState::Resetting, [Reload, Reload, Reload]),
            (VmState::Halted, [Stop, Stop, Stop]),
            (VmState::Off, [Stop, Restart, PowerOffMachine]),
            (VmState::Crashed, [Stop, Restart, PowerOffMachine]),
        ];
        for (state, want) in table {
            for (p, w) in POLICIES.into_iter().zip(want) {
                assert_eq!(after_stop(state, p), w, "{state:?} {p:?}");
            }
        }
    }

    #[test]
    fn only_a_running_vm_with_no_vcpu_left_goes_off() {
        for s in STATES {
            assert!(!all_vcpus_off(s, true));
            assert_eq!(all_vcpus_off(s, false), s == VmState::Running, "{s:?}");
        }
    }

    #[test]
    fn states_round_trip_through_their_stored_form() {
        for s in STATES {
            assert_eq!(VmState::from_u8(s as u8), s);
        }
        assert_eq!(VmState::from_u8(200), VmState::Halted);
    }
}
