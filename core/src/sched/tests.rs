//! The scheduler over simulated timelines: a tiny machine model applies each
//! [`Decision`] (and checks it is coherent: a vCPU is never loaded on two CPUs, saves
//! name what the CPU holds) while tests script what the guests do.

use super::*;
use proptest::prelude::*;

const SLICE: Ticks = 100;

/// Applies decisions as the hypervisor would, checking the invariants it relies on.
struct Machine {
    s: Scheduler,
    /// What each CPU's registers hold (the hypervisor's own view).
    hw: Vec<Option<VcpuId>>,
    now: Ticks,
    flushes: usize,
}

impl Machine {
    fn new(cpus: usize) -> Self {
        Machine {
            s: Scheduler::new(cpus, SLICE),
            hw: vec![None; cpus],
            now: 0,
            flushes: 0,
        }
    }

    fn apply(&mut self, cpu: usize, d: Decision) -> Option<VcpuId> {
        if let Some(old) = d.save {
            assert_eq!(self.hw[cpu], Some(old), "save names what cpu {cpu} holds");
            self.hw[cpu] = None;
        }
        if let Some(new) = d.restore {
            assert_eq!(self.hw[cpu], None, "cpu {cpu} restores over live state");
            assert!(
                !self.hw.contains(&Some(new)),
                "{new:?} loaded on two CPUs: {:?}",
                self.hw
            );
            self.hw[cpu] = Some(new);
        }
        if d.flush_tlb {
            self.flushes += 1;
        }
        if let Some(run) = d.run {
            assert_eq!(self.hw[cpu], Some(run), "cpu {cpu} runs what it holds");
            assert_eq!(self.s.state(run), RunState::Running(cpu));
        }
        self.check();
        d.run
    }

    fn check(&self) {
        // `deadline` trusts the count of vCPUs with a deadline not to be low; only a
        // blocked vCPU has one.
        let timed = self
            .s
            .vcpus
            .iter()
            .filter(|e| e.wake_at.is_some() && e.placement == Placement::Shared)
            .count();
        assert!(
            self.s.timed >= timed,
            "{} vCPUs with a deadline, counted {}",
            timed,
            self.s.timed
        );
        for e in &self.s.vcpus {
            assert!(e.wake_at.is_none() || e.state == RunState::Blocked, "{e:?}");
        }
        for (cpu, held) in self.hw.iter().enumerate() {
            assert_eq!(self.s.loaded(cpu), *held, "loaded view of cpu {cpu}");
        }
        let mut running = Vec::new();
        for cpu in 0..self.hw.len() {
            if let Some(v) = self.s.current(cpu) {
                assert!(!running.contains(&v), "{v:?} current on two CPUs");
                running.push(v);
            }
        }
    }

    fn tick(&mut self, cpu: usize) -> Option<VcpuId> {
        let d = self.s.tick(cpu, self.now);
        self.apply(cpu, d)
    }
    fn block(&mut self, cpu: usize, wake_at: Option<Ticks>) -> Option<VcpuId> {
        let d = self.s.block(cpu, self.now, wake_at);
        self.apply(cpu, d)
    }
    fn yield_cpu(&mut self, cpu: usize) -> Option<VcpuId> {
        let d = self.s.yield_cpu(cpu, self.now);
        self.apply(cpu, d)
    }
    /// The vCPU on `cpu` stops; also returns whether that finished its VM's stop.
    fn off(&mut self, cpu: usize) -> (Option<VcpuId>, bool) {
        let vm = self.s.current(cpu).map(|v| self.s.vcpus[v.0].vm);
        let d = self.s.off_current(cpu, self.now);
        let finished = self.s.take_finished_stop();
        assert!(
            finished.is_none() || finished == vm,
            "finished another VM's stop"
        );
        (self.apply(cpu, d), finished.is_some())
    }
    /// Start `v` and let the kicked CPU (if any) look.
    fn start(&mut self, v: VcpuId) {
        if let Some(cpu) = self.s.start(v) {
            self.tick(cpu);
        }
    }

    /// Remove VM `vm`'s vCPUs (`ids`); CPUs that held their registers drop them, as
    /// the hypervisor does (it restores over them without a save).
    fn remove(&mut self, vm: usize, ids: &[VcpuId]) -> Result<u64, StillRunning> {
        let kicks = self.s.remove_vm(vm)?;
        for held in &mut self.hw {
            if held.is_some_and(|h| ids.contains(&h)) {
                *held = None;
            }
        }
        self.check();
        Ok(kicks)
    }

    /// A kicked or idle CPU looks again.
    fn look(&mut self, cpu: Kick) -> Option<VcpuId> {
        let cpu = cpu.expect("a CPU to kick");
        self.tick(cpu)
    }
}

fn shared(m: &mut Machine, vm: usize, n: usize) -> Vec<VcpuId> {
    (0..n)
        .map(|_| m.s.add_vcpu(vm, Placement::Shared).unwrap())
        .collect()
}

#[test]
fn configuration_errors() {
    let mut s = Scheduler::new(2, SLICE);
    assert_eq!(
        s.add_vcpu(0, Placement::Pinned(2)),
        Err(SchedError::NoSuchCpu { cpu: 2, cpus: 2 })
    );
    s.add_vcpu(0, Placement::Pinned(1)).unwrap();
    assert_eq!(
        s.add_vcpu(1, Placement::Pinned(1)),
        Err(SchedError::CpuPinnedTwice { cpu: 1 })
    );
    s.add_vcpu(1, Placement::Shared).unwrap();
    assert_eq!(s.check(), Ok(()));
    s.add_vcpu(2, Placement::Pinned(0)).unwrap();
    assert_eq!(s.check(), Err(SchedError::NoSharedCpu));
    assert_eq!(
        SchedError::NoSuchCpu { cpu: 3, cpus: 2 }.to_string(),
        "pinned to CPU 3, but only 2 CPUs are online (0-1)"
    );
}

#[test]
fn only_shared_cpus_and_pinned_cpus_of_off_vcpus_do_background_work() {
    let mut s = Scheduler::new(3, SLICE);
    let pinned = s.add_vcpu(0, Placement::Pinned(1)).unwrap();
    s.add_vcpu(1, Placement::Shared).unwrap();
    assert!(s.may_do_background_work(0), "a shared CPU");
    assert!(s.may_do_background_work(1), "pinned, its vCPU still off");
    let _ = s.start(pinned);
    assert!(!s.may_do_background_work(1), "pinned, its vCPU can run");
    assert!(s.stop_vm(0).quiescent);
    assert!(
        s.may_do_background_work(1),
        "its VM stopped: the vCPU is off"
    );
    assert!(!s.may_do_background_work(3), "no such CPU");
}

#[test]
fn pins_name_device_tree_cpus_and_the_rest_share() {
    // Online CPUs by slot: the boot CPU (DT 2) first, then DT 0 and 3.
    let online = [2, 0, 3];
    assert_eq!(
        placements(3, &[3, 2], &online),
        Ok(vec![
            Placement::Pinned(2),
            Placement::Pinned(0),
            Placement::Shared
        ])
    );
    assert_eq!(placements(2, &[], &online), Ok(vec![Placement::Shared; 2]));
    assert_eq!(placements(1, &[1], &online), Err(1), "CPU 1 is not online");
    assert_eq!(earliest(Some(5), Some(3)), Some(3));
    assert_eq!(earliest(None, Some(3)), Some(3));
    assert_eq!(earliest(None, None), None);
}

#[test]
fn round_robin_within_one_slice() {
    // Three busy vCPUs on one CPU: each runs exactly one slice in turn.
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 3);
    for &x in &v {
        m.s.start(x);
    }
    assert_eq!(m.tick(0), Some(v[0]));
    let mut order = Vec::new();
    for step in 1..=6 {
        m.now = step * SLICE - 1;
        assert_eq!(
            m.tick(0),
            order.last().copied().or(Some(v[0])),
            "not before the slice ends"
        );
        m.now = step * SLICE;
        order.push(m.tick(0).unwrap());
    }
    assert_eq!(order, vec![v[1], v[2], v[0], v[1], v[2], v[0]]);
    // Equal shares of the time, to the tick.
    m.now = 6 * SLICE;
    let t: Vec<Ticks> = v
        .iter()
        .map(|&x| m.s.snapshot(x, m.now).unwrap().run_ticks)
        .collect();
    assert_eq!(t, vec![2 * SLICE, 2 * SLICE, 2 * SLICE]);
}

#[test]
fn a_lone_vcpu_keeps_its_cpu_past_the_slice() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 1);
    m.s.start(v[0]);
    m.tick(0);
    m.now = 10 * SLICE;
    let d = m.s.tick(0, m.now);
    assert_eq!(d, Decision::keep(v[0]), "no switch, no save");
    assert_eq!(m.s.deadline(0), Some(11 * SLICE), "slice renewed");
}

#[test]
fn wfi_blocks_and_an_interrupt_wakes_on_the_same_cpu_without_a_switch() {
    let mut m = Machine::new(2);
    let v = shared(&mut m, 0, 2);
    m.start(v[0]);
    assert_eq!(m.s.current(0), Some(v[0]));
    // Blocks; nothing else to run: the CPU idles with v0's registers still loaded.
    assert_eq!(m.block(0, None), None);
    assert_eq!(m.s.loaded(0), Some(v[0]));
    assert_eq!(m.s.state(v[0]), RunState::Blocked);
    // An interrupt for it: back to CPU 0, no save or restore.
    let kick = m.s.wake(v[0]);
    assert_eq!(kick, Some(0));
    let d = m.s.tick(0, 5);
    assert_eq!((d.run, d.save, d.restore), (Some(v[0]), None, None));
    m.apply(0, d);
}

#[test]
fn a_wake_racing_a_block_is_not_lost() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 1);
    m.start(v[0]);
    // Another CPU raised an interrupt after v0 checked and before it blocked.
    assert_eq!(m.s.wake(v[0]), Some(0), "kick where it runs");
    assert_eq!(m.block(0, None), Some(v[0]), "block returns at once");
    // The mark is used up: the next block blocks.
    assert_eq!(m.block(0, None), None);
}

#[test]
fn blocked_vcpus_deadline_wakes_it_while_saved() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 2);
    m.s.start(v[0]);
    m.s.start(v[1]);
    assert_eq!(m.tick(0), Some(v[0]));
    // v0 waits for its timer at 250; v1 runs meanwhile (v0 saved).
    m.now = 10;
    assert_eq!(m.block(0, Some(250)), Some(v[1]));
    assert_eq!(m.s.deadline(0), Some(10 + SLICE), "the slice ends first");
    m.now = 10 + SLICE;
    assert_eq!(m.tick(0), Some(v[1]), "nobody waiting: v1 goes on");
    assert_eq!(m.s.deadline(0), Some(210));
    m.now = 210;
    assert_eq!(m.tick(0), Some(v[1]));
    assert_eq!(
        m.s.deadline(0),
        Some(250),
        "v0's deadline is due before the slice"
    );
    m.now = 250;
    m.tick(0); // v0 runnable, v1's slice not over
    assert_eq!(m.s.state(v[0]), RunState::Runnable);
    m.now = 310;
    assert_eq!(m.tick(0), Some(v[0]), "v0 runs at v1's slice end");
}

#[test]
fn idle_cpu_sleeps_until_a_deadline() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 1);
    m.start(v[0]);
    assert_eq!(m.block(0, Some(500)), None);
    assert_eq!(m.s.deadline(0), Some(500));
    m.now = 500;
    assert_eq!(m.tick(0), Some(v[0]));
}

#[test]
fn wfe_yields_only_to_someone_waiting() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 2);
    m.start(v[0]);
    assert_eq!(m.yield_cpu(0), Some(v[0]), "nobody else: keep running");
    m.s.start(v[1]);
    assert_eq!(m.yield_cpu(0), Some(v[1]));
    assert_eq!(m.s.state(v[0]), RunState::Runnable);
    assert_eq!(m.yield_cpu(0), Some(v[0]));
}

#[test]
fn pinned_and_shared_together() {
    // CPU 1 is dedicated to rt; two shared vCPUs share CPU 0.
    let mut m = Machine::new(2);
    let rt = m.s.add_vcpu(0, Placement::Pinned(1)).unwrap();
    let v = shared(&mut m, 1, 2);
    m.s.check().unwrap();
    assert_eq!(m.s.start(rt), Some(1));
    let k = m.s.start(v[0]);
    assert_eq!(
        k,
        Some(0),
        "a shared vCPU is never sent to the dedicated CPU"
    );
    m.look(Some(1));
    m.look(k);
    m.s.start(v[1]);
    assert_eq!(m.s.deadline(1), None, "no tick on the dedicated CPU");
    for step in 1..20 {
        m.now = step * SLICE;
        m.tick(0);
        assert_eq!(m.tick(1), Some(rt));
        assert_eq!(m.s.current(1), Some(rt));
    }
    // rt blocks: its CPU idles rather than run anything else, and rt stays loaded.
    assert_eq!(m.block(1, Some(5000)), None);
    assert_eq!(m.tick(1), None);
    assert_eq!(m.s.loaded(1), Some(rt));
    assert_eq!(m.s.wake(rt), Some(1));
    assert_eq!(m.tick(1), Some(rt));
    assert!(m.hw[0].is_some_and(|x| x != rt));
    assert_eq!(m.s.snapshot(rt, m.now).unwrap().ran_on, 1 << 1);
    for x in v {
        assert_eq!(
            m.s.snapshot(x, m.now).unwrap().ran_on,
            1 << 0,
            "{x:?} ran elsewhere"
        );
    }
}

#[test]
fn kicks_follow_a_vcpu_that_moved() {
    let mut m = Machine::new(2);
    let v = shared(&mut m, 0, 3);
    for &x in &v {
        if let Some(cpu) = m.s.start(x) {
            m.look(Some(cpu));
        }
    }
    // v0 on CPU 0, v1 on CPU 1, v2 queued. CPU 0's slice ends: v2 runs there.
    m.now = SLICE;
    assert_eq!(m.tick(0), Some(v[2]));
    // CPU 1 ends its slice: v0 moves to CPU 1.
    assert_eq!(m.tick(1), Some(v[0]));
    assert_eq!(m.s.state(v[0]), RunState::Running(1));
    assert_eq!(m.s.wake(v[0]), Some(1), "the kick goes where v0 runs now");
    assert_eq!(m.s.wake(v[1]), None, "queued: it will flush when loaded");
}

#[test]
fn tlb_flush_when_another_vcpu_of_the_vm_ran_here_last() {
    let mut m = Machine::new(1);
    let a = shared(&mut m, 0, 2);
    let b = shared(&mut m, 1, 1);
    for &x in a.iter().chain(&b) {
        m.s.start(x);
    }
    let d = m.s.tick(0, 0);
    assert!(!d.flush_tlb, "first vCPU of VM 0 here");
    m.apply(0, d);
    let mut flushes = Vec::new();
    for step in 1..=3 {
        m.now = step * SLICE;
        let d = m.s.tick(0, m.now);
        flushes.push((d.run.unwrap(), d.flush_tlb));
        m.apply(0, d);
    }
    // a1 after a0: flush; b0 first of VM 1: none; a0 after a1 (VM 0's last here): flush.
    assert_eq!(flushes, vec![(a[1], true), (b[0], false), (a[0], true)]);
}

#[test]
fn stop_vm_and_restart_quiescence() {
    let mut m = Machine::new(2);
    let v = shared(&mut m, 0, 2);
    let other = shared(&mut m, 1, 1);
    for &x in v.iter().chain(&other) {
        if let Some(cpu) = m.s.start(x) {
            m.look(Some(cpu));
        }
    }
    // v0 on CPU 0, v1 on CPU 1, other queued.
    assert_eq!(m.s.state(other[0]), RunState::Runnable);
    let stop = m.s.stop_vm(0);
    assert_eq!(stop.kicks, vec![0, 1]);
    assert!(!stop.quiescent);
    let (next, quiescent) = m.off(0);
    assert_eq!(next, Some(other[0]));
    assert!(!quiescent, "v1 still runs on CPU 1");
    let (next, quiescent) = m.off(1);
    assert_eq!(next, None);
    assert!(quiescent, "the last one out finishes the stop");
    assert!(!m.s.vm_alive(0));
    // A stopped VM whose vCPUs are all off: stopping it again is quiescent at once.
    assert!(m.s.stop_vm(0).quiescent);
    // Restart vCPU 0: it goes back to CPU 1, where its registers... no, v1's are there.
    let k = m.s.start(v[0]);
    assert_eq!(k, Some(1));
    assert_eq!(m.look(k), Some(v[0]));
}

#[test]
fn stop_vm_removes_queued_and_blocked_vcpus() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 1);
    let w = shared(&mut m, 1, 2);
    m.start(w[0]);
    m.s.start(v[0]);
    m.s.start(w[1]);
    let stop = m.s.stop_vm(1);
    assert_eq!(stop.kicks, vec![0], "w0 runs on CPU 0");
    assert_eq!(m.s.state(w[1]), RunState::Off);
    let (next, q) = m.off(0);
    assert!(q);
    assert_eq!(next, Some(v[0]), "the queue no longer holds w1");
    m.now = 5 * SLICE;
    assert_eq!(m.tick(0), Some(v[0]));
}

/// A vCPU whose VM is being stopped may reach the scheduler for another reason first
/// (its slice ended, it blocked in WFI or yielded in WFE before it saw the kick): it
/// goes off all the same, and that call finishes the stop. Before, it went back to the
/// queue or blocked, the stop was finished by nobody or too early, and the vCPU ran on
/// into the VM's next life with its old registers.
#[test]
fn a_vcpu_of_a_stopping_vm_goes_off_whatever_brings_it_to_the_scheduler() {
    for how in ["tick", "block", "yield"] {
        let mut m = Machine::new(2);
        let v = shared(&mut m, 0, 2);
        let other = shared(&mut m, 1, 1);
        m.start(v[0]);
        m.start(v[1]);
        m.s.start(other[0]);
        assert_eq!(m.s.state(v[1]), RunState::Running(1));
        let stop = m.s.stop_vm(0);
        assert_eq!(stop.kicks, vec![0, 1]);
        let (_, finished) = m.off(0);
        assert!(!finished, "v1 still runs");
        m.now += 2 * SLICE;
        let next = match how {
            "tick" => m.tick(1),
            "block" => m.block(1, Some(m.now + 5)),
            _ => m.yield_cpu(1),
        };
        assert_eq!(m.s.state(v[1]), RunState::Off, "{how}");
        assert_eq!(m.s.take_finished_stop(), Some(0), "{how} finishes the stop");
        assert_eq!(m.s.take_finished_stop(), None, "once");
        assert!(!m.s.queue.contains(&v[1]), "{how}: not queued");
        assert_ne!(next, Some(v[1]), "{how}");
        m.now += 10 * SLICE;
        for cpu in 0..2 {
            assert_ne!(m.tick(cpu), Some(v[1]), "{how}: never runs again");
        }
    }
}

/// CPU_ON from a vCPU that has not yet noticed its VM's stop is refused by the
/// scheduler: the target stays Off, and the stop still finishes when the caller leaves.
#[test]
fn no_vcpu_starts_while_its_vm_is_stopping() {
    let mut m = Machine::new(2);
    let v = shared(&mut m, 0, 2);
    m.start(v[0]);
    assert!(!m.s.stop_vm(0).quiescent);
    assert_eq!(m.s.start(v[1]), None);
    assert_eq!(m.s.state(v[1]), RunState::Off);
    let (_, finished) = m.off(0);
    assert!(finished);
    assert!(!m.s.vm_alive(0));
    // Once stopped, the VM's vCPUs may be started again (its next run).
    assert_eq!(m.s.start(v[0]), Some(0));
}

/// A pinned vCPU's slice never ends, but a tick while its VM stops takes it off too.
#[test]
fn a_pinned_vcpu_of_a_stopping_vm_goes_off_at_a_tick() {
    let mut m = Machine::new(2);
    let p = m.s.add_vcpu(0, Placement::Pinned(1)).unwrap();
    m.start(p);
    assert_eq!(m.s.current(1), Some(p));
    assert!(!m.s.stop_vm(0).quiescent);
    assert_eq!(m.tick(1), None);
    assert_eq!(m.s.state(p), RunState::Off);
    assert_eq!(m.s.take_finished_stop(), Some(0));
}

#[test]
fn wake_of_off_or_unknown_vcpu_does_nothing() {
    let mut m = Machine::new(1);
    let v = shared(&mut m, 0, 1);
    assert_eq!(m.s.wake(v[0]), None);
    assert_eq!(m.s.wake(VcpuId(99)), None);
    assert_eq!(m.s.start(VcpuId(99)), None);
    assert_eq!(m.s.state(v[0]), RunState::Off);
    assert_eq!(m.tick(0), None);
}

#[test]
fn a_removed_vm_gives_back_its_handles_and_no_cpu_saves_into_it() {
    let mut m = Machine::new(1);
    let a = shared(&mut m, 0, 2);
    m.start(a[0]);
    assert_eq!(m.s.current(0), Some(a[0]));
    assert_eq!(m.remove(0, &a), Err(StillRunning), "a0 still runs");
    let _ = m.s.stop_vm(0);
    let (next, quiescent) = m.off(0);
    assert_eq!((next, quiescent), (None, true));
    // CPU 0 idles with a0's registers still loaded.
    assert_eq!(m.s.loaded(0), Some(a[0]));
    assert_eq!(m.remove(0, &a), Ok(0));
    assert_eq!(
        m.s.loaded(0),
        None,
        "the dead vCPU's registers are forgotten"
    );
    assert_eq!(m.s.start(a[1]), None, "a removed handle cannot be started");
    // A new VM takes the same slot and the same handles.
    let b = shared(&mut m, 0, 2);
    let mut reused = b.clone();
    reused.sort();
    let mut old = a.clone();
    old.sort();
    assert_eq!(reused, old);
    let k = m.s.start(b[0]);
    assert_eq!(k, Some(0));
    let d = m.s.tick(0, m.now);
    assert_eq!(
        (d.save, d.restore, d.flush_tlb),
        (None, Some(b[0]), false),
        "restore without a save, no flush for the new VM"
    );
    m.apply(0, d);
    assert!(m.s.vm_alive(0));
}

#[test]
fn a_removed_pinned_vm_frees_its_cpu_and_a_new_pin_evicts_a_shared_vcpu() {
    let mut m = Machine::new(2);
    let p = m.s.add_vcpu(0, Placement::Pinned(1)).unwrap();
    let s = shared(&mut m, 1, 2);
    m.start(p);
    m.start(s[0]);
    m.start(s[1]);
    assert_eq!(m.s.current(1), Some(p));
    assert_eq!(m.s.current(0), Some(s[0]));
    let _ = m.s.stop_vm(0);
    m.off(1);
    assert_eq!(m.remove(0, &[p]), Ok(1 << 1), "CPU 1 is free: kick it");
    assert_eq!(m.s.dedicated(1), None);
    assert_eq!(
        m.look(Some(1)),
        Some(s[1]),
        "the queued shared vCPU runs there"
    );
    // Pinning CPU 1 again: the shared vCPU running there leaves at the next look.
    let q = m.s.add_vcpu(2, Placement::Pinned(1)).unwrap();
    let _ = m.s.start(q);
    assert_eq!(m.tick(1), Some(q));
    assert_eq!(m.s.state(s[1]), RunState::Runnable);
    m.now += SLICE;
    assert_eq!(
        m.tick(0),
        Some(s[1]),
        "the evicted vCPU gets CPU 0's next slice"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Wake(usize),
    Block(usize, Option<u8>),
    Yield(usize),
    Off(usize),
    StopVm(usize),
    /// Remove the VM (if none of its vCPUs runs) and build it again.
    Recreate(usize),
    Tick(usize),
    Advance(u8),
}

fn op(cpus: usize, vcpus: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..vcpus).prop_map(Op::Start),
        (0..vcpus).prop_map(Op::Wake),
        (0..cpus, proptest::option::of(any::<u8>())).prop_map(|(c, t)| Op::Block(c, t)),
        (0..cpus).prop_map(Op::Yield),
        (0..cpus).prop_map(Op::Off),
        (0..3usize).prop_map(Op::StopVm),
        (0..3usize).prop_map(Op::Recreate),
        (0..cpus).prop_map(Op::Tick),
        any::<u8>().prop_map(Op::Advance),
    ]
}

proptest! {
    /// Any sequence of events keeps the invariants `Machine::apply` checks, never
    /// leaves a runnable shared vCPU waiting while a shared CPU idles after it looked,
    /// and never runs anything but its own vCPU on a dedicated CPU.
    #[test]
    fn random_timelines_keep_the_invariants(
        pinned in proptest::option::of(0..3usize),
        ops in proptest::collection::vec(op(3, 6), 1..200),
    ) {
        let mut m = Machine::new(3);
        let mut ids = Vec::new();
        for i in 0..6 {
            let placement = match pinned {
                Some(cpu) if i == 0 => Placement::Pinned(cpu),
                _ => Placement::Shared,
            };
            ids.push(m.s.add_vcpu(i % 3, placement).unwrap());
        }
        // Per VM: a stop is under way (stop_vm found vCPUs running).
        let mut stopping = [false; 3];
        for o in ops {
            match o {
                Op::Start(v) => { let _ = m.s.start(ids[v]); }
                Op::Wake(v) => { let _ = m.s.wake(ids[v]); }
                Op::Block(c, t) => { m.block(c, t.map(|t| m.now + Ticks::from(t))); }
                Op::Yield(c) => { m.yield_cpu(c); }
                Op::Off(c) => {
                    let vm = m.s.current(c).map(|v| m.s.vcpus[v.0].vm);
                    if let (_, true) = m.off(c) {
                        let vm = vm.expect("a stop finished by a CPU that ran nothing");
                        prop_assert!(stopping[vm], "VM {vm}'s stop finished but none was under way");
                        stopping[vm] = false;
                    }
                }
                Op::StopVm(vm) => {
                    if !m.s.stop_vm(vm).quiescent {
                        stopping[vm] = true;
                    }
                }
                Op::Recreate(vm) => {
                    let mine: Vec<usize> = (0..6).filter(|i| i % 3 == vm).collect();
                    let old: Vec<VcpuId> = mine.iter().map(|&i| ids[i]).collect();
                    if m.remove(vm, &old).is_ok() {
                        for &i in &mine {
                            let placement = match pinned {
                                Some(cpu) if i == 0 => Placement::Pinned(cpu),
                                _ => Placement::Shared,
                            };
                            ids[i] = m.s.add_vcpu(vm, placement).unwrap();
                            prop_assert!(old.contains(&ids[i]), "handles are reused");
                        }
                    }
                }
                Op::Tick(c) => {
                    let ran = m.tick(c);
                    if let (Some(cpu), Some(v)) = (pinned, ran) {
                        prop_assert!(cpu != c || v == ids[0], "dedicated CPU ran {v:?}");
                        prop_assert!(cpu == c || v != ids[0], "pinned vCPU ran on {c}");
                    }
                    if ran.is_none() && Some(c) != pinned {
                        prop_assert!(m.s.queue.iter().all(|q| m.s.state(*q) != RunState::Runnable),
                            "cpu {c} idles while {:?} waits", m.s.queue);
                    }
                }
                Op::Advance(t) => m.now += Ticks::from(t),
            }
            m.check();
            for cpu in 0..3 {
                // What `deadline` computed before it kept a count of timed vCPUs.
                let slow = m.s.cpus[cpu].dedicated.is_none().then(|| {
                    let c = &m.s.cpus[cpu];
                    let wake = m.s.vcpus.iter()
                        .filter(|e| e.state == RunState::Blocked && e.placement == Placement::Shared)
                        .filter_map(|e| e.wake_at)
                        .min();
                    earliest(c.current.map(|_| c.slice_end), wake)
                }).flatten();
                prop_assert_eq!(m.s.deadline(cpu), slow, "deadline of cpu {}", cpu);
            }
            if let Some(vm) = m.s.take_finished_stop() {
                prop_assert!(stopping[vm], "VM {vm}'s stop finished but none was under way");
                stopping[vm] = false;
            }
            for (vm, &under_way) in stopping.iter().enumerate() {
                prop_assert_eq!(m.s.vm_stopping(vm), under_way);
                for e in m.s.vcpus.iter().filter(|e| e.vm == vm) {
                    prop_assert!(
                        !under_way || matches!(e.state, RunState::Off | RunState::Running(_)),
                        "VM {} stopping with a vCPU {:?}", vm, e.state
                    );
                }
            }
        }
    }
}

#[test]
fn a_deadline_expired_by_another_cpu_kicks_the_vcpus_cpu() {
    let mut m = Machine::new(2);
    let v = shared(&mut m, 0, 2);
    m.start(v[0]);
    m.start(v[1]);
    assert_eq!(m.s.current(0), Some(v[0]));
    assert_eq!(m.s.current(1), Some(v[1]));
    // v1 blocks on CPU 1 with a deadline and stays loaded there; CPU 0 ticks past it.
    assert_eq!(m.block(1, Some(50)), None);
    m.now = 60;
    m.tick(0);
    assert_eq!(m.s.take_kicks(), 1 << 1, "CPU 1 must look");
    assert_eq!(m.s.take_kicks(), 0);
    assert_eq!(m.tick(1), Some(v[1]));
}
