//! The vCPU scheduler: which vCPU each physical CPU runs, and when that changes.
//!
//! This module decides; `hyp` carries out. It never touches a register: every call
//! takes the time (`now`, in counter ticks) and returns what the calling CPU should do
//! ([`Decision`]) or which CPU to interrupt ([`Kick`]). The hypervisor keeps one
//! [`Scheduler`] behind one lock and calls it at the few points where a CPU may change
//! vCPU: a blocking WFI, a yielding WFE, its slice timer, a vCPU or VM stopping, and
//! when an idle CPU wakes. Host tests drive it over a simulated timeline.
//!
//! ## Two kinds of vCPU
//! - **Pinned** (`Placement::Pinned(cpu)`): the CPU is *dedicated*: it runs that vCPU
//!   and nothing else, takes no slice timer, and keeps the vCPU's state in its
//!   registers for good (it is never saved, so its virtual timer keeps working in
//!   hardware while it sleeps in WFI).
//! - **Shared**: runs on any CPU that nobody pinned, round robin from one queue with a
//!   fixed slice. A vCPU that never yields loses its CPU when its slice ends, if anyone
//!   is waiting. One global queue (not one per CPU) keeps the CPUs evenly busy; the
//!   machines Bothy targets have a handful of CPUs, and the lock is taken only at
//!   scheduling points, never on an ordinary exit.
//!
//! ## States
//! ```text
//!   Off --start--> Runnable --picked--> Running(cpu) --block--> Blocked --wake--> Runnable
//!                     ^                   |  |  slice end / yield        |
//!                     +-------------------+  +--stop/off--> Off <--stop--+
//! ```
//! A vCPU's registers are *loaded* on at most one CPU ([`Scheduler::loaded`]). When a
//! shared vCPU blocks and nothing else wants its CPU, it stays loaded there while the
//! CPU idles, and a wake-up sends it straight back to that CPU without a context
//! switch; a CPU only saves a vCPU when it is about to load another ([`Decision::save`]),
//! so a vCPU is never loaded in two places and never queued while loaded elsewhere.
//!
//! ## Lost wake-ups
//! A vCPU decides to block (nothing pending) a moment before it calls [`Scheduler::block`];
//! an interrupt raised for it in between calls [`Scheduler::wake`] while it is still
//! `Running`. `wake` then leaves a *wake pending* mark, and `block` consumes it and
//! returns "keep running" instead of blocking: a spurious WFI return, which the
//! architecture allows.
//!
//! ## Time
//! A blocked vCPU may give a wake-up deadline (its virtual timer's, in physical counter
//! ticks): [`Scheduler::tick`] makes it runnable then, so its timer interrupt fires on
//! time even while its registers are saved. [`Scheduler::deadline`] tells a CPU when to
//! program its EL2 timer next: the end of its slice, or the earliest deadline it
//! watches. Dedicated CPUs get no deadline: their vCPU's timer is live in hardware.
//!
//! ## vCPUs that come and go
//! VMs are created and destroyed at run time, so vCPUs are too: [`Scheduler::add_vcpu`]
//! reuses the handle of a removed vCPU, and [`Scheduler::remove_vm`] takes away every
//! vCPU of a stopped VM. A CPU that still holds a removed vCPU's registers (it idled
//! with it loaded) simply forgets them: its next decision restores without a save, so
//! nothing is ever written back into a destroyed VM. A CPU pinned at run time that is
//! running a shared vCPU gives it back at its next look (the caller kicks it).
//!
//! ## TLB maintenance on migration
//! Stage-1 TLB entries are tagged by VMID and ASID, not by vCPU: a guest that
//! invalidates locally on one vCPU expects that vCPU's next run to see it. When a
//! CPU loads vCPU `v` of a VM and a *different* vCPU of that VM was the last of the VM
//! to run there, the decision carries `flush_tlb` (a local TLB flush for that VMID),
//! as KVM does.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Physical counter ticks.
pub type Ticks = u64;

/// A vCPU's handle in the scheduler, handed out by [`Scheduler::add_vcpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub usize);

/// Where a vCPU may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Only on this physical CPU, which runs nothing else.
    Pinned(usize),
    /// On any CPU nobody pinned.
    Shared,
}

/// A vCPU's scheduling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Off,
    Runnable,
    Running(usize),
    Blocked,
}

/// What a CPU does next. `run == None` means idle (WFI until something changes).
///
/// Carry it out in order: save `save` (if any) out of the registers, load `restore`
/// (if any), flush the local TLB for its VM if `flush_tlb`, run `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub run: Option<VcpuId>,
    pub save: Option<VcpuId>,
    pub restore: Option<VcpuId>,
    pub flush_tlb: bool,
}

impl Decision {
    /// Keep running `v`, which is loaded already.
    fn keep(v: VcpuId) -> Self {
        Decision {
            run: Some(v),
            save: None,
            restore: None,
            flush_tlb: false,
        }
    }
}

/// The earlier of two optional deadlines (`None`: never).
pub fn earliest(a: Option<Ticks>, b: Option<Ticks>) -> Option<Ticks> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where each of a VM's `vcpus` vCPUs runs: vCPU `n` on the CPU `pin[n]` names (a
/// device-tree CPU number; `online` lists the online CPUs' numbers by scheduler slot),
/// the rest shared. `Err(cpu)`: a pin names a CPU that is not online.
pub fn placements(vcpus: usize, pin: &[u32], online: &[usize]) -> Result<Vec<Placement>, u32> {
    (0..vcpus)
        .map(|vcpu| match pin.get(vcpu) {
            Some(&dt) => online
                .iter()
                .position(|&n| n == dt as usize)
                .map(Placement::Pinned)
                .ok_or(dt),
            None => Ok(Placement::Shared),
        })
        .collect()
}

/// A CPU to interrupt ("look at your scheduling state"), if any.
pub type Kick = Option<usize>;

/// What [`Scheduler::stop_vm`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopVm {
    /// CPUs running one of the VM's vCPUs: interrupt them so they notice.
    pub kicks: Vec<usize>,
    /// No vCPU of the VM is running: whoever stopped it may finish (reset, reload).
    pub quiescent: bool,
}

/// Why [`Scheduler::remove_vm`] refused: one of the VM's vCPUs is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StillRunning;

/// Why adding a vCPU failed: configuration errors, caught before any guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    NoSuchCpu {
        cpu: usize,
        cpus: usize,
    },
    CpuPinnedTwice {
        cpu: usize,
    },
    /// A shared vCPU, but every CPU is dedicated to a pinned one.
    NoSharedCpu,
}

impl core::fmt::Display for SchedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchCpu { cpu, cpus } => write!(
                f,
                "pinned to CPU {cpu}, but only {cpus} CPUs are online (0-{})",
                cpus.saturating_sub(1)
            ),
            Self::CpuPinnedTwice { cpu } => write!(f, "CPU {cpu} is pinned twice"),
            Self::NoSharedCpu => write!(
                f,
                "time-shared, but every online CPU is pinned to another vCPU"
            ),
        }
    }
}

/// The `vm` of a removed vCPU's entry: matches no VM.
const NO_VM: usize = usize::MAX;

#[derive(Clone, Debug)]
struct Entry {
    vm: usize,
    placement: Placement,
    state: RunState,
    /// A wake arrived while Running: the next `block` returns at once.
    wake_pending: bool,
    /// Blocked with a deadline: runnable again at this time.
    wake_at: Option<Ticks>,
    /// The CPU holding its registers, if any.
    loaded_on: Option<usize>,
    /// The CPU it last ran on, and every CPU it has run on, bit per CPU (for `list`).
    last_cpu: Option<usize>,
    ran_on: u64,
    /// Counter ticks spent Running, and since when it has been Running.
    run_ticks: Ticks,
    since: Ticks,
}

#[derive(Clone, Debug)]
struct Cpu {
    dedicated: Option<VcpuId>,
    current: Option<VcpuId>,
    loaded: Option<VcpuId>,
    /// A vCPU woken while its registers were loaded here and the CPU idled: this
    /// CPU's to run, not the queue's.
    woken_here: Option<VcpuId>,
    slice_end: Ticks,
    /// Per VM index: the vCPU of that VM that last ran here (for `flush_tlb`).
    last_of_vm: Vec<Option<VcpuId>>,
}

/// What `list` shows of one vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuSnapshot {
    pub state: RunState,
    pub placement: Placement,
    pub last_cpu: Option<usize>,
    /// Every CPU it has run on, bit per CPU.
    pub ran_on: u64,
    /// Counter ticks spent running, including the current stint.
    pub run_ticks: Ticks,
}

/// The scheduling state of every vCPU and CPU. Not `Sync` by itself: the hypervisor
/// keeps it behind one lock (DESIGN: the lock order puts it after a VM's locks, and
/// nothing is called with it held).
pub struct Scheduler {
    cpus: Vec<Cpu>,
    vcpus: Vec<Entry>,
    queue: VecDeque<VcpuId>,
    /// Handles of removed vCPUs, for [`Self::add_vcpu`] to hand out again.
    free: Vec<VcpuId>,
    slice: Ticks,
    /// CPUs that a deadline's wake-up (in [`Self::tick`]) gave work: bit per CPU.
    kicks: u64,
    /// Per VM index: [`Self::stop_vm`] found vCPUs of it running, and not all of them
    /// have left their CPUs yet.
    stopping: Vec<bool>,
    /// The VM whose stop the last call finished (its last running vCPU left its CPU),
    /// for [`Self::take_finished_stop`].
    finished: Option<usize>,
    /// At least as many as the shared vCPUs with a wake-up deadline (`wake_at`, which
    /// only a Blocked vCPU has): with none, [`Self::deadline`] skips its walk over
    /// every vCPU, which is on every switch. `block` counts one up and the walk counts
    /// them all, so the wake-ups and stops that take a deadline away need not.
    timed: usize,
}

impl Scheduler {
    /// `cpus` physical CPUs, shared vCPUs get `slice` ticks at a time.
    pub fn new(cpus: usize, slice: Ticks) -> Self {
        Scheduler {
            cpus: (0..cpus)
                .map(|_| Cpu {
                    dedicated: None,
                    current: None,
                    loaded: None,
                    woken_here: None,
                    slice_end: 0,
                    last_of_vm: Vec::new(),
                })
                .collect(),
            vcpus: Vec::new(),
            queue: VecDeque::new(),
            free: Vec::new(),
            slice: slice.max(1),
            kicks: 0,
            stopping: Vec::new(),
            finished: None,
            timed: 0,
        }
    }

    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Register a vCPU of VM `vm` (a small index; see `flush_tlb`), initially Off.
    /// Allocates; call when the VM is built, not on an exit path. A pinned vCPU may take
    /// a CPU that runs a shared vCPU now: kick that CPU, and it gives the CPU up when it
    /// looks.
    pub fn add_vcpu(&mut self, vm: usize, placement: Placement) -> Result<VcpuId, SchedError> {
        let cpus = self.cpus.len();
        match placement {
            Placement::Pinned(cpu) => {
                let Some(c) = self.cpus.get(cpu) else {
                    return Err(SchedError::NoSuchCpu { cpu, cpus });
                };
                if c.dedicated.is_some() {
                    return Err(SchedError::CpuPinnedTwice { cpu });
                }
            }
            Placement::Shared => {}
        }
        let entry = Entry {
            vm,
            placement,
            state: RunState::Off,
            wake_pending: false,
            wake_at: None,
            loaded_on: None,
            last_cpu: None,
            ran_on: 0,
            run_ticks: 0,
            since: 0,
        };
        // A free handle names an entry of `vcpus` (entries are never removed); were one
        // not to, a new entry is pushed instead.
        let reused = self
            .free
            .pop()
            .and_then(|id| Some((id, self.vcpus.get_mut(id.0)?)));
        let id = match reused {
            Some((id, slot)) => {
                *slot = entry;
                id
            }
            None => {
                self.vcpus.push(entry);
                VcpuId(self.vcpus.len() - 1)
            }
        };
        if let Placement::Pinned(cpu) = placement {
            // Checked above: the CPU exists.
            if let Some(c) = self.cpus.get_mut(cpu) {
                c.dedicated = Some(id);
            }
        }
        for cpu in &mut self.cpus {
            if cpu.last_of_vm.len() <= vm {
                cpu.last_of_vm.resize(vm + 1, None);
            }
        }
        if self.stopping.len() <= vm {
            self.stopping.resize(vm + 1, false);
        }
        // Room for every vCPU, so a push on an exit path never allocates.
        self.queue.reserve(self.vcpus.len());
        Ok(id)
    }

    /// Take away every vCPU of `vm`, whose vCPUs must all be stopped (none running).
    /// Their handles may be handed out again; CPUs that held their registers forget
    /// them, and CPUs pinned to them become shared. Returns the CPUs to kick (a freed
    /// CPU may now run queued vCPUs).
    pub fn remove_vm(&mut self, vm: usize) -> Result<u64, StillRunning> {
        if vm == NO_VM {
            return Ok(0);
        }
        if self.vm_running(vm) {
            return Err(StillRunning);
        }
        let mut kicks = 0u64;
        let Scheduler {
            vcpus,
            queue,
            cpus,
            free,
            ..
        } = self;
        for (i, e) in vcpus.iter_mut().enumerate() {
            if e.vm != vm {
                continue;
            }
            let id = VcpuId(i);
            queue.retain(|q| *q != id);
            for (n, c) in cpus.iter_mut().enumerate() {
                if c.loaded == Some(id) {
                    c.loaded = None;
                }
                if c.woken_here == Some(id) {
                    c.woken_here = None;
                }
                if c.dedicated == Some(id) {
                    c.dedicated = None;
                    kicks |= 1u64.checked_shl(n as u32).unwrap_or(0);
                }
                if let Some(last) = c.last_of_vm.get_mut(vm) {
                    *last = None;
                }
            }
            e.vm = NO_VM;
            e.state = RunState::Off;
            e.placement = Placement::Shared;
            e.wake_pending = false;
            e.wake_at = None;
            e.loaded_on = None;
            free.push(id);
        }
        if let Some(stopping) = self.stopping.get_mut(vm) {
            *stopping = false;
        }
        Ok(kicks)
    }

    /// Check, once all vCPUs are added, that shared vCPUs have somewhere to run.
    pub fn check(&self) -> Result<(), SchedError> {
        let shared = self.vcpus.iter().any(|e| e.placement == Placement::Shared);
        if shared && self.cpus.iter().all(|c| c.dedicated.is_some()) {
            return Err(SchedError::NoSharedCpu);
        }
        Ok(())
    }

    pub fn state(&self, v: VcpuId) -> RunState {
        self.vcpus.get(v.0).map_or(RunState::Off, |e| e.state)
    }

    /// The vCPU a CPU is running now (None: idle).
    pub fn current(&self, cpu: usize) -> Option<VcpuId> {
        self.cpus.get(cpu).and_then(|c| c.current)
    }

    /// The vCPU whose registers a CPU holds (running, or blocked while the CPU idles).
    pub fn loaded(&self, cpu: usize) -> Option<VcpuId> {
        self.cpus.get(cpu).and_then(|c| c.loaded)
    }

    /// The vCPU this CPU is dedicated to, if it is pinned.
    pub fn dedicated(&self, cpu: usize) -> Option<VcpuId> {
        self.cpus.get(cpu).and_then(|c| c.dedicated)
    }

    /// Whether `cpu` may spend time on background work (a piece of a restarting VM's
    /// scrub, `mem::scrub`) when it has nothing to run or its slice ends: a shared CPU
    /// may; a pinned one only while its vCPU is off (a restarting pinned VM's CPUs), so
    /// a pinned vCPU that can run never waits behind another VM's work. A time-shared
    /// VM implies a shared CPU ([`Self::check`]), so every VM's restart has one.
    pub fn may_do_background_work(&self, cpu: usize) -> bool {
        match self.cpus.get(cpu) {
            Some(c) => c.dedicated.is_none_or(|v| self.state(v) == RunState::Off),
            None => false,
        }
    }

    pub fn snapshot(&self, v: VcpuId, now: Ticks) -> Option<VcpuSnapshot> {
        let e = self.vcpus.get(v.0)?;
        let running = match e.state {
            RunState::Running(_) => now.saturating_sub(e.since),
            _ => 0,
        };
        Some(VcpuSnapshot {
            state: e.state,
            placement: e.placement,
            last_cpu: e.last_cpu,
            ran_on: e.ran_on,
            run_ticks: e.run_ticks + running,
        })
    }

    /// An Off vCPU may run (PSCI CPU_ON, VM boot or restart). Returns the CPU to kick.
    /// Refused (None, it stays Off) while its VM is being stopped: a vCPU that had not
    /// yet noticed the stop may still call CPU_ON, and the started vCPU would otherwise
    /// outlive the stop into the VM's next run.
    pub fn start(&mut self, v: VcpuId) -> Kick {
        match self
            .vcpus
            .get(v.0)
            .filter(|e| e.vm != NO_VM && !self.vm_stopping(e.vm))
            .map(|e| e.state)
        {
            Some(RunState::Off) => {
                if let Some(e) = self.vcpus.get_mut(v.0) {
                    e.state = RunState::Blocked;
                    e.wake_at = None;
                }
                self.wake(v)
            }
            _ => None,
        }
    }

    /// `v` has new work (an interrupt, a started vCPU). Returns the CPU to kick: the one
    /// running it (to take the work into its list registers), or one that should run it.
    pub fn wake(&mut self, v: VcpuId) -> Kick {
        let e = self.vcpus.get_mut(v.0)?;
        match e.state {
            RunState::Off | RunState::Runnable => None,
            RunState::Running(cpu) => {
                e.wake_pending = true;
                Some(cpu)
            }
            RunState::Blocked => {
                e.wake_at = None;
                // Back to where its registers are, if that CPU idles; else its own CPU,
                // else the queue.
                let home = match (e.loaded_on, e.placement) {
                    (_, Placement::Pinned(cpu)) => Some(cpu),
                    (Some(cpu), _) if self.cpus.get(cpu).is_some_and(|c| c.current.is_none()) => {
                        Some(cpu)
                    }
                    _ => None,
                };
                // A home is a CPU `cpus` has (`add_vcpu` checked the pin, `pick` recorded
                // where it ran); were it not, the queue would take the vCPU.
                if let Some((cpu, c)) = home.and_then(|cpu| Some((cpu, self.cpus.get_mut(cpu)?))) {
                    e.state = RunState::Runnable;
                    if e.placement == Placement::Shared {
                        c.woken_here = Some(v);
                    }
                    if c.current.is_none() {
                        // The idle CPU picks it up on its next look.
                        return Some(cpu);
                    }
                    // A pinned vCPU's CPU is busy only with it; nothing more to do.
                    return None;
                }
                e.state = RunState::Runnable;
                self.queue.push_back(v);
                self.idle_shared_cpu()
            }
        }
    }

    /// An idle CPU a newly queued vCPU could run on, preferring one with nothing loaded.
    fn idle_shared_cpu(&self) -> Kick {
        let idle = |c: &&Cpu| c.dedicated.is_none() && c.current.is_none();
        self.cpus
            .iter()
            .position(|c| idle(&c) && c.loaded.is_none())
            .or_else(|| self.cpus.iter().position(|c| idle(&c)))
    }

    /// The vCPU running on `cpu` waits for an interrupt (WFI with nothing pending),
    /// until `wake_at` at the latest. Returns what the CPU does next.
    pub fn block(&mut self, cpu: usize, now: Ticks, wake_at: Option<Ticks>) -> Decision {
        // Each entry looked up once (this is on every blocking WFI): what `leave` does,
        // done here with the entry in hand.
        let Some(c) = self.cpus.get_mut(cpu) else {
            return Decision::keep_idle();
        };
        let Some(v) = c.current else {
            return self.pick(cpu, now);
        };
        // `current` names an entry of `vcpus`; were it not to, it keeps running.
        let Some(e) = self.vcpus.get_mut(v.0) else {
            return Decision::keep(v);
        };
        if self.stopping.get(e.vm).copied().unwrap_or(false) {
            return self.off_current(cpu, now);
        }
        if core::mem::take(&mut e.wake_pending) || wake_at.is_some_and(|t| t <= now) {
            return Decision::keep(v);
        }
        e.wake_at = wake_at;
        if wake_at.is_some() && e.placement == Placement::Shared {
            self.timed = self.timed.saturating_add(1);
        }
        e.run_ticks += now.saturating_sub(e.since);
        e.state = RunState::Blocked;
        c.current = None;
        self.pick(cpu, now)
    }

    /// The vCPU running on `cpu` offers its CPU (WFE): it goes to the back of the queue
    /// if another vCPU is waiting, else keeps running.
    pub fn yield_cpu(&mut self, cpu: usize, now: Ticks) -> Decision {
        match self.current(cpu) {
            Some(v) if self.stopping_vcpu(v) => self.off_current(cpu, now),
            Some(v) if self.queue.is_empty() => Decision::keep(v),
            Some(v)
                if self
                    .vcpus
                    .get(v.0)
                    .is_some_and(|e| e.placement == Placement::Shared) =>
            {
                self.leave(cpu, now, RunState::Runnable);
                self.queue.push_back(v);
                self.pick(cpu, now)
            }
            Some(v) => Decision::keep(v),
            None => self.pick(cpu, now),
        }
    }

    /// The vCPU running on `cpu` stops (PSCI CPU_OFF, its VM stopped). Returns what the
    /// CPU does next. If its VM was being stopped and it was the last of the VM's vCPUs
    /// on a CPU, the stop is finished: [`Self::take_finished_stop`] says so.
    #[inline(never)] // rare; tick, block and yield call it for a stopping VM's vCPU
    pub fn off_current(&mut self, cpu: usize, now: Ticks) -> Decision {
        let Some(vm) = self
            .current(cpu)
            .and_then(|v| self.vcpus.get(v.0))
            .map(|e| e.vm)
        else {
            return self.pick(cpu, now);
        };
        self.leave(cpu, now, RunState::Off);
        if self.vm_stopping(vm) && !self.vm_running(vm) {
            if let Some(stopping) = self.stopping.get_mut(vm) {
                *stopping = false;
            }
            self.finished = Some(vm);
        }
        self.pick(cpu, now)
    }

    /// The VM whose stop the last [`Self::off_current`], [`Self::tick`],
    /// [`Self::block`] or [`Self::yield_cpu`] finished, if any (cleared by the call). Exactly
    /// one call finishes each stop that [`Self::stop_vm`] could not finish at once, so
    /// exactly one CPU goes on to what follows (reload, restart, power-off).
    pub fn take_finished_stop(&mut self) -> Option<usize> {
        self.finished.take()
    }

    /// Whether `vm` is being stopped (some of its vCPUs have yet to leave their CPUs).
    pub fn vm_stopping(&self, vm: usize) -> bool {
        self.stopping.get(vm).copied().unwrap_or(false)
    }

    fn stopping_vcpu(&self, v: VcpuId) -> bool {
        self.vcpus.get(v.0).is_some_and(|e| self.vm_stopping(e.vm))
    }

    /// Stop every vCPU of `vm`: those not running become Off at once; the CPUs running
    /// the others are returned to kick, and each stops its vCPU when it next schedules
    /// ([`Self::off_current`], or a tick, block or yield, which turn a vCPU of a stopping
    /// VM off). If none was running (`quiescent`), the caller finishes the stop;
    /// otherwise the call that takes the last one off does ([`Self::take_finished_stop`]).
    pub fn stop_vm(&mut self, vm: usize) -> StopVm {
        let mut out = StopVm::default();
        for (i, e) in self.vcpus.iter_mut().enumerate() {
            if e.vm != vm {
                continue;
            }
            match e.state {
                RunState::Running(cpu) => out.kicks.push(cpu),
                RunState::Runnable => {
                    e.state = RunState::Off;
                    self.queue.retain(|q| q.0 != i);
                }
                RunState::Blocked | RunState::Off => e.state = RunState::Off,
            }
            e.wake_pending = false;
            e.wake_at = None;
        }
        out.quiescent = out.kicks.is_empty();
        // `add_vcpu` sized `stopping` for every VM that has vCPUs.
        if let (false, Some(stopping)) = (out.quiescent, self.stopping.get_mut(vm)) {
            *stopping = true;
        }
        out
    }

    /// Whether any vCPU of `vm` is running on a CPU now.
    pub fn vm_running(&self, vm: usize) -> bool {
        self.vcpus
            .iter()
            .any(|e| e.vm == vm && matches!(e.state, RunState::Running(_)))
    }

    /// Whether any vCPU of `vm` could still run (not all Off).
    pub fn vm_alive(&self, vm: usize) -> bool {
        self.vcpus
            .iter()
            .any(|e| e.vm == vm && e.state != RunState::Off)
    }

    /// The CPU's timer fired (or it woke from idle): wake vCPUs whose deadline passed,
    /// end the slice if it is over and someone waits. Returns what the CPU does next.
    pub fn tick(&mut self, cpu: usize, now: Ticks) -> Decision {
        self.expire(now);
        let Some(c) = self.cpus.get(cpu) else {
            return Decision::keep_idle();
        };
        match c.current {
            Some(v) if self.stopping_vcpu(v) => self.off_current(cpu, now),
            Some(v) if c.dedicated == Some(v) => Decision::keep(v),
            // Pinned at run time while it ran a shared vCPU: give that one back.
            Some(v) if c.dedicated.is_some() => {
                self.leave(cpu, now, RunState::Runnable);
                self.queue.push_back(v);
                self.pick(cpu, now)
            }
            Some(v) => {
                if now < c.slice_end {
                    return Decision::keep(v);
                }
                if self.queue.is_empty() {
                    if let Some(c) = self.cpus.get_mut(cpu) {
                        c.slice_end = now + self.slice;
                    }
                    return Decision::keep(v);
                }
                self.leave(cpu, now, RunState::Runnable);
                self.queue.push_back(v);
                self.pick(cpu, now)
            }
            None => self.pick(cpu, now),
        }
    }

    /// Blocked vCPUs whose deadline has passed become runnable; the CPUs that should
    /// run them are collected for [`Self::take_kicks`].
    /// Counts the shared ones still waiting for theirs afresh (`timed`).
    fn expire(&mut self, now: Ticks) {
        let mut timed = 0;
        for i in 0..self.vcpus.len() {
            let Some(e) = self.vcpus.get(i) else { break };
            let (blocked, shared) = (
                e.state == RunState::Blocked,
                e.placement == Placement::Shared,
            );
            match e.wake_at {
                Some(t) if blocked && t <= now => {
                    if let Some(cpu) = self.wake(VcpuId(i)) {
                        self.kicks |= 1u64.checked_shl(cpu as u32).unwrap_or(0);
                    }
                }
                Some(_) if blocked && shared => timed += 1,
                _ => {}
            }
        }
        self.timed = timed;
    }

    /// The CPUs to interrupt because [`Self::tick`] woke vCPUs for them (bit per CPU;
    /// the caller skips itself). Cleared by the call.
    pub fn take_kicks(&mut self) -> u64 {
        core::mem::take(&mut self.kicks)
    }

    /// When `cpu` should next call [`Self::tick`]: its slice end while it runs a shared
    /// vCPU, and the earliest wake-up deadline of a blocked shared vCPU. None on a
    /// dedicated CPU (no tick) or when nothing is due.
    pub fn deadline(&mut self, cpu: usize) -> Option<Ticks> {
        let c = self.cpus.get(cpu)?;
        if c.dedicated.is_some() {
            return None;
        }
        let slice = c.current.map(|_| c.slice_end);
        if self.timed == 0 {
            return slice;
        }
        let mut timed = 0;
        let mut wake = None;
        for e in &self.vcpus {
            if let (RunState::Blocked, Placement::Shared, Some(t)) =
                (e.state, e.placement, e.wake_at)
            {
                timed += 1;
                wake = earliest(wake, Some(t));
            }
        }
        self.timed = timed;
        earliest(slice, wake)
    }

    /// `cpu`'s current vCPU leaves the CPU in `to` (its registers stay loaded).
    fn leave(&mut self, cpu: usize, now: Ticks, to: RunState) {
        let current = self.cpus.get_mut(cpu).and_then(|c| c.current.take());
        // `current` names an entry of `vcpus`.
        if let Some(e) = current.and_then(|v| self.vcpus.get_mut(v.0)) {
            e.run_ticks += now.saturating_sub(e.since);
            e.state = to;
            e.wake_pending = false;
        }
    }

    /// What an idle (or just vacated) CPU runs next.
    fn pick(&mut self, cpu: usize, now: Ticks) -> Decision {
        let Scheduler {
            cpus,
            vcpus,
            queue,
            slice,
            ..
        } = self;
        let Some(c) = cpus.get_mut(cpu) else {
            return Decision::keep_idle();
        };
        let runnable = |v: VcpuId| {
            vcpus
                .get(v.0)
                .is_some_and(|e| e.state == RunState::Runnable)
        };
        let next = match (c.dedicated, c.woken_here.take()) {
            (Some(v), _) => runnable(v).then_some(v),
            (None, Some(v)) if runnable(v) => Some(v),
            (None, _) => Self::pop_runnable(queue, vcpus),
        };
        // Whatever `pick` chose is runnable, so in `vcpus`.
        let Some((v, e)) = next.and_then(|v| Some((v, vcpus.get_mut(v.0)?))) else {
            return Decision::keep_idle();
        };
        let vm = e.vm;
        e.state = RunState::Running(cpu);
        e.loaded_on = Some(cpu);
        e.last_cpu = Some(cpu);
        e.ran_on |= 1u64.checked_shl(cpu as u32).unwrap_or(0);
        e.since = now;
        e.wake_pending = false;
        let (save, restore) = if c.loaded == Some(v) {
            (None, None)
        } else {
            (c.loaded, Some(v))
        };
        // `save` is not `v`: its registers leave, `v`'s arrive.
        if let Some(old) = save.and_then(|old| vcpus.get_mut(old.0)) {
            old.loaded_on = None;
        }
        let flush_tlb = match c.last_of_vm.get_mut(vm) {
            Some(last) => {
                let other = last.is_some_and(|last| last != v);
                *last = Some(v);
                restore.is_some() && other
            }
            None => false,
        };
        c.current = Some(v);
        c.loaded = Some(v);
        c.slice_end = now + *slice;
        Decision {
            run: Some(v),
            save,
            restore,
            flush_tlb,
        }
    }

    /// The first queued vCPU that is still runnable and not loaded on another CPU.
    fn pop_runnable(queue: &mut VecDeque<VcpuId>, vcpus: &[Entry]) -> Option<VcpuId> {
        while let Some(v) = queue.pop_front() {
            if vcpus
                .get(v.0)
                .is_some_and(|e| e.state == RunState::Runnable)
            {
                return Some(v);
            }
        }
        None
    }
}

impl Decision {
    fn keep_idle() -> Self {
        Decision {
            run: None,
            save: None,
            restore: None,
            flush_tlb: false,
        }
    }
}

#[cfg(test)]
mod tests;
