//! Bothy's own console prompt: `bothy>`, opened by typing Ctrl-\ three times.
//!
//! Every byte from the physical UART goes through `bothy_core::prompt::Prompt`
//! first (the line editing and command parsing live there, host-tested); this module
//! carries out what comes back: bytes for the focused VM, echo, and the commands
//! (`list`, `stop`, `start`, `restart`, `destroy`, `create`, `console`, `help`,
//! `resume`). While the prompt is open, guest output is held (`console.rs`) and
//! written out when it closes. Commands name VMs by their name in the system file:
//! at most one VM is built from each (`destroy` takes it apart, `create` builds it
//! again).
//!
//! Runs in the UART's interrupt handler, on whichever CPU takes it, with no lock held
//! but the prompt's own (lock order: prompt, then the scheduler or a VM's locks).

use crate::console;
use crate::exit;
use crate::machine::{self, machine, Machine};
use crate::vm::Vm;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bothy_core::lifecycle::VmState;
use bothy_core::prompt::{
    format_list, Command, Feed, Prompt, VcpuRunState, VcpuStatus, VmStatus, HELP, PROMPT,
};
use bothy_core::sched::{Placement, RunState as SchedState};
use core::fmt::Write;
use core::sync::atomic::Ordering;
use spin::{Mutex, Once};

/// Ctrl-]: moves console input to the next running VM (like telnet's escape).
const SWITCH_FOCUS: u8 = 0x1d;

static PROMPT_STATE: Mutex<Prompt> = Mutex::new(Prompt::new());
static NAMES: Once<Vec<&'static str>> = Once::new();

/// Whether the prompt is open now (the machine does not power off meanwhile).
pub fn is_open() -> bool {
    PROMPT_STATE.lock().is_open()
}

/// One byte typed on the physical console.
pub fn input(m: &'static Machine, byte: u8) {
    let names = NAMES.call_once(|| m.templates.iter().map(|t| t.name.as_str()).collect());
    let mut prompt = PROMPT_STATE.lock();
    match prompt.feed(byte, names) {
        Feed::Nothing => {}
        Feed::Guest(bytes) => {
            drop(prompt);
            for &b in bytes.as_slice() {
                to_guest(m, b);
            }
        }
        Feed::Opened => {
            console::hold_guest_output(true);
            console::print_raw("\n");
            console::print_raw(PROMPT);
        }
        Feed::Echo(echo) => console::echo(echo.iter()),
        Feed::Empty => {
            console::print_raw("\n");
            console::print_raw(PROMPT);
        }
        Feed::Command(result) => {
            let open = prompt.is_open();
            drop(prompt);
            console::print_raw("\n");
            match result {
                Ok(command) => run(m, command),
                Err(e) => {
                    let mut line = String::new();
                    let _ = writeln!(line, "{e}");
                    console::print_raw(&line);
                }
            }
            if open {
                console::print_raw(PROMPT);
            } else {
                closed(m);
            }
        }
        Feed::Closed => {
            drop(prompt);
            console::print_raw("\n");
            closed(m);
        }
    }
}

/// The prompt closed: write out held guest output; power off if no VM is left.
fn closed(m: &'static Machine) {
    console::hold_guest_output(false);
    if m.running_vms.load(Ordering::Acquire) == 0 {
        crate::println!("all VMs powered off");
        crate::halt_machine();
    }
}

/// A byte for the VM that has the console (or Ctrl-], which moves it).
fn to_guest(m: &Machine, byte: u8) {
    if byte == SWITCH_FOCUS && m.vms.read().len() > 1 {
        machine::switch_focus(m);
        return;
    }
    if let Some(vm) = m.vm_at(m.focus.load(Ordering::Relaxed)) {
        exit::console_byte(&vm, byte);
    }
}

fn run(m: &'static Machine, command: Command) {
    // The VM built from the system file's VM `i`, or why there is none.
    let vm = |i: usize| -> Option<Arc<Vm>> {
        let vm = m.vm_of_template(i);
        if vm.is_none() {
            let name = m.templates.get(i).map_or("?", |t| t.name.as_str());
            say(format_args!(
                "VM {name} does not exist (destroyed); `create {name}` builds it again"
            ));
        }
        vm
    };
    match command {
        Command::List => list(m),
        Command::Help => console::print_raw(HELP),
        Command::Resume => {}
        Command::Console(i) => {
            if let Some(vm) = vm(i) {
                m.focus.store(vm.index(), Ordering::Relaxed);
                crate::println!("console input goes to VM {}", vm.name);
            }
        }
        Command::Stop(i) => {
            let Some(vm) = vm(i) else { return };
            if vm.leave_running(VmState::Halted) {
                crate::println!("VM {} stopped from the prompt", vm.name);
                exit::stop_vm(&vm);
            } else {
                say(format_args!(
                    "VM {} is not running ({})",
                    vm.name,
                    vm.state().as_str()
                ));
            }
        }
        Command::Start(i) => {
            let Some(vm) = vm(i) else { return };
            if vm.state() == VmState::Running {
                say(format_args!("VM {} is running already", vm.name));
            } else {
                start(m, &vm);
            }
        }
        Command::Restart(i) => {
            let Some(vm) = vm(i) else { return };
            if vm.leave_running(VmState::Resetting) {
                crate::println!("VM {} is restarting (from the prompt)", vm.name);
                exit::stop_vm(&vm);
            } else if vm.state() == VmState::Resetting {
                say(format_args!("VM {} is restarting already", vm.name));
            } else {
                start(m, &vm);
            }
        }
        Command::Destroy(i) => {
            let Some(vm) = vm(i) else { return };
            match machine::destroy_vm(m, &vm) {
                Ok(()) => crate::println!("VM {} destroyed", vm.name),
                Err(e) => say(format_args!("{e}")),
            }
        }
        Command::Create(i) => {
            if let Err(e) = machine::create_vm(m, i) {
                say(format_args!("{e}"));
            }
        }
    }
}

/// Boot a stopped VM again from its images.
fn start(m: &Machine, vm: &Vm) {
    // Decided and done under the VM's lifecycle lock: a CPU finishing the VM's stop
    // (on_exit restart, a reload) waits, then finds it running and does nothing.
    let _lifecycle = vm.lifecycle.lock();
    let stopping = m.sched.lock().vm_stopping(vm.index());
    if vm.state() == VmState::Running {
        say(format_args!("VM {} is running already", vm.name));
        return;
    }
    if stopping || vm.state() == VmState::Resetting {
        say(format_args!("VM {} is still stopping; try again", vm.name));
        return;
    }
    machine::vm_started(vm);
    vm.set_state(VmState::Resetting);
    exit::finish_reset(vm);
}

fn say(args: core::fmt::Arguments) {
    let mut line = String::new();
    let _ = line.write_fmt(args);
    line.push('\n');
    console::print_raw(&line);
}

/// `list`: every VM, its vCPUs, where they run, their exits and CPU time.
fn list(m: &Machine) {
    let now = crate::arch::aarch64::sysreg::read_cntpct_el0();
    let all = m.all_vms();
    let statuses: Vec<Vec<VcpuStatus>> = {
        let s = m.sched.lock();
        all.iter()
            .map(|vm| vm.vcpus.iter().map(|v| vcpu_status(&s, v, now)).collect())
            .collect()
    };
    let vms: Vec<VmStatus> = all
        .iter()
        .zip(&statuses)
        .map(|(vm, vcpus)| VmStatus {
            name: &vm.name,
            state: vm.state().as_str(),
            vcpus,
        })
        .collect();
    let mut text = String::new();
    let _ = format_list(
        &mut text,
        &vms,
        crate::arch::aarch64::sysreg::read_cntfrq_el0(),
    );
    for t in m.templates.iter() {
        if !all.iter().any(|vm| vm.name == t.name) {
            let _ = writeln!(text, "{}: destroyed (`create {}` builds it again)", t.name, t.name);
        }
    }
    let memory = m.memory.lock();
    let owned_by_vms: u64 = memory
        .owners
        .extents()
        .filter(|(_, state)| !matches!(state, bothy_core::mem::State::Free))
        .map(|(range, _)| range.size)
        .sum();
    let _ = writeln!(
        text,
        "memory: {} MiB held by VMs, {} KiB free; {} VMIDs in use",
        owned_by_vms >> 20,
        memory.allocator.free_bytes() >> 10,
        memory.vmids.in_use()
    );
    drop(memory);
    console::print_raw(&text);
}

/// The number a user knows a CPU by (its place in the device tree, as `pin` uses).
fn dt_index(slot: usize) -> usize {
    machine().cpus.get(slot).map_or(slot, |c| c.dt_index)
}

fn vcpu_status(s: &bothy_core::sched::Scheduler, v: &crate::vm::Vcpu, now: u64) -> VcpuStatus {
    let snap = s.snapshot(v.id, now);
    let state = snap.map_or(SchedState::Off, |x| x.state);
    let running_on = match state {
        SchedState::Running(cpu) => Some(cpu),
        _ => None,
    };
    VcpuStatus {
        state: match state {
            SchedState::Running(_) => VcpuRunState::Running,
            SchedState::Runnable => VcpuRunState::Runnable,
            SchedState::Blocked => VcpuRunState::Blocked,
            SchedState::Off => VcpuRunState::Off,
        },
        cpu: running_on.or(snap.and_then(|x| x.last_cpu)).map(dt_index),
        running_now: running_on.is_some(),
        ran_on: (0..64)
            .filter(|slot| snap.is_some_and(|x| x.ran_on & (1 << slot) != 0))
            .fold(0, |mask, slot| {
                mask | 1u64.checked_shl(dt_index(slot) as u32).unwrap_or(0)
            }),
        pinned: match snap.map(|x| x.placement) {
            Some(Placement::Pinned(cpu)) => Some(dt_index(cpu)),
            _ => None,
        },
        exits: v.exits.snapshot(),
        cpu_ticks: snap.map_or(0, |x| x.run_ticks),
    }
}
