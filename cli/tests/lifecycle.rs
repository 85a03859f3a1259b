//! VM lifecycle policies with the bare-metal self-test guest (a few seconds a run):
//! `on_exit = "restart"` boots the VM again each time it powers off, until it is
//! stopped from Bothy's prompt (then the machine powers off when the prompt closes);
//! `on_exit = "poweroff"` powers the whole machine off although another VM still runs;
//! a stopped VM is destroyed and created again from the prompt.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bothy, qemu_lock, Console};

const RUN: Duration = Duration::from_secs(180);

fn system(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let guest = common::build_selftest_guest();
    let text = format!(
        "[[vm]]\nname = \"st\"\ncpus = 2\nmemory = \"64M\"\nkernel = {:?}\n{extra}",
        guest.display().to_string()
    );
    let path = dir.join("lifecycle.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn on_exit_restart_boots_the_vm_again_until_stopped_from_the_prompt() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = system(dir.path(), "on_exit = \"restart\"\n");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&path).args(["--timeout", "300"]);
    let mut c = Console::spawn(cmd, "on_exit restart");
    for round in 1..=2 {
        let summary = c.expect_vm_summary("st", round, RUN);
        assert!(summary.contains(" 0 failed"), "round {round}: {summary}");
        c.expect("bothy: VM st restarts (on_exit = \"restart\")", RUN);
        c.expect("bothy: VM st restarted", RUN);
    }
    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", RUN);
    c.send("stop st");
    c.expect("bothy: VM st stopped from the prompt", RUN);
    c.expect(
        "no VM is running; Bothy powers off when the prompt closes",
        RUN,
    );
    c.send("resume");
    c.expect("bothy: all VMs powered off", RUN);
    assert!(c.wait(RUN).success(), "bothy run failed");
}

#[test]
fn on_exit_poweroff_ends_the_machine_while_another_vm_runs() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    // A second VM that would run for ever (the self-test again, restarting).
    let guest = common::build_selftest_guest();
    let other = format!(
        "on_exit = \"poweroff\"\n\n[[vm]]\nname = \"forever\"\ncpus = 1\nmemory = \"64M\"\n\
         kernel = {:?}\non_exit = \"restart\"\n",
        guest.display().to_string()
    );
    let path = system(dir.path(), &other);
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&path).args(["--timeout", "300"]);
    let mut c = Console::spawn(cmd, "on_exit poweroff");
    // (The two VMs' lines interleave, so only Bothy's own lines are matched.)
    c.expect(
        "bothy: powering the machine off (VM st stopped and has on_exit = \"poweroff\")",
        RUN,
    );
    assert!(c.wait(RUN).success(), "bothy run failed");
    assert!(
        !c.transcript().contains("bothy: all VMs powered off"),
        "{}",
        c.transcript()
    );
}

/// Bothy's prompt on a VM that keeps running (`on_exit = "restart"`): `restart` of the
/// running VM boots it again, `stop` stops it, `start` boots the stopped VM, and
/// `start` of a running one is refused with a one-line answer.
#[test]
fn prompt_restarts_a_running_vm_and_starts_a_stopped_one() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = system(dir.path(), "on_exit = \"restart\"\n");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&path).args(["--timeout", "300"]);
    cmd.args(common::debug_args());
    let mut c = Console::spawn(cmd, "prompt restart/start");
    c.expect("TEST summary:", RUN);
    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", RUN);
    let before = memory_line(&mut c);

    // It may be between two of its own restarts at this moment: both answers are right.
    c.send("restart st");
    let restarting = [
        "bothy: VM st is restarting (from the prompt)",
        "VM st is restarting already",
    ];
    assert!(
        c.try_expect(&restarting, RUN).is_some(),
        "no answer to restart"
    );
    c.expect("bothy: VM st restarted", RUN);

    // Stop it (retrying while it is between restarts), then start it again.
    let mut stopped = false;
    for _ in 0..20 {
        c.send("stop st");
        let answers = [
            "bothy: VM st stopped from the prompt",
            "VM st is not running",
        ];
        match c.try_expect(&answers, RUN) {
            Some((0, _)) => {
                stopped = true;
                break;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
            None => panic!("no answer to stop"),
        }
    }
    assert!(stopped, "the VM never stopped");
    c.expect(
        "no VM is running; Bothy powers off when the prompt closes",
        RUN,
    );
    c.send("start st");
    c.expect("bothy: VM st restarted", RUN);
    c.send("start st");
    let refused = ["VM st is running already", "VM st is still stopping"];
    assert!(
        c.try_expect(&refused, RUN).is_some(),
        "start of a running VM"
    );

    // Back to the guest: the restarted VM passes its checks again (its output was held
    // while the prompt was open: the next summary is one it printed since).
    let seen = c.vm_summaries("st");
    c.send("resume");
    let summary = c.expect_vm_summary("st", seen + 1, RUN);
    assert!(summary.contains(" 0 failed"), "after start: {summary}");
    c.skip_to_end();

    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", RUN);
    // Every restart gave the VM fresh memory (new tables, a new VMID) and gave the old
    // back: after several, the machine's memory record reads exactly as before.
    assert_eq!(memory_line(&mut c), before, "memory leaked across restarts");
    stop_until_stopped(&mut c, "st");
    c.send("resume");
    c.expect("bothy: all VMs powered off", RUN);
    assert!(c.wait(RUN).success(), "bothy run failed");
}

/// VMs as run-time objects: a stopped VM is destroyed from the prompt (its memory and
/// VMID go back to the machine, `list` says so), refused while running, and created
/// again from the system file; it boots and passes its checks, and the machine's
/// memory record reads as before.
#[test]
fn a_stopped_vm_is_destroyed_and_created_again_from_the_prompt() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let guest = common::build_selftest_guest();
    let text = format!(
        "[[vm]]\nname = \"keep\"\ncpus = 1\nmemory = \"64M\"\nkernel = {k:?}\non_exit = \"restart\"\n\
         [[vm]]\nname = \"st\"\ncpus = 2\nmemory = \"64M\"\nkernel = {k:?}\n",
        k = guest.display().to_string()
    );
    let path = dir.path().join("destroy.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&path).args(["--timeout", "300"]);
    cmd.args(common::debug_args());
    let mut c = Console::spawn(cmd, "destroy/create");
    c.expect("bothy: VM st powered off", RUN);
    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", RUN);
    let before = memory_line(&mut c);
    let (held, vmids) = memory_figures(&before);

    c.send("destroy keep");
    c.expect("stop it first", RUN);
    c.send("destroy st");
    c.expect("bothy: VM st destroyed", RUN);
    c.send("list");
    c.expect("st: destroyed", RUN);
    c.expect("bothy> ", RUN);
    let after = memory_line(&mut c);
    assert_eq!(
        memory_figures(&after),
        (held - 64, vmids - 1),
        "destroying st gives back its 64 MiB and its VMID: {before} -> {after}"
    );
    c.send("start st");
    c.expect("VM st does not exist (destroyed)", RUN);

    c.send("create st");
    c.expect("bothy: VM st : 2 vCPUs", RUN);
    c.send("create st");
    c.expect("VM st exists already", RUN);
    c.send("resume");
    // It ran while the prompt was open, so its output was held and comes out now, maybe
    // after Bothy reported its power-off (Bothy's own lines are not held): look for
    // both in the whole transcript rather than in order.
    let summary = c.expect_vm_summary("st", 2, RUN);
    assert!(summary.contains(" 0 failed"), "created again: {summary}");
    c.expect_count("bothy: VM st powered off", 2, RUN);
    c.skip_to_end();

    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", RUN);
    assert_eq!(
        memory_line(&mut c),
        before,
        "memory after destroy and create"
    );
    stop_until_stopped(&mut c, "keep");
    c.send("resume");
    c.expect("bothy: all VMs powered off", RUN);
    assert!(c.wait(RUN).success(), "bothy run failed");
}

/// `stop NAME` at the open prompt until it takes (the VM may be between two of its own
/// restarts, when it is not running for a moment).
fn stop_until_stopped(c: &mut Console, name: &str) {
    let answers = [
        format!("bothy: VM {name} stopped from the prompt"),
        format!("VM {name} is not running"),
    ];
    let answers = [answers[0].as_str(), answers[1].as_str()];
    loop {
        c.send(&format!("stop {name}"));
        if let Some((0, _)) = c.try_expect(&answers, RUN) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// MiB held by VMs and VMIDs in use, from a `memory:` line.
fn memory_figures(line: &str) -> (u64, u64) {
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| w.starts_with(word)).unwrap();
        words[at - 1].parse().unwrap()
    };
    (number_before("MiB"), number_before("VMIDs"))
}

/// The `memory:` line of the prompt's `list`.
fn memory_line(c: &mut Console) -> String {
    c.send("list");
    c.expect("memory: ", RUN);
    let line = c.expect("\n", RUN);
    c.expect("bothy> ", RUN);
    line.trim().to_string()
}

/// A VM whose last running vCPU calls PSCI CPU_OFF can never run again: Bothy treats it
/// as powered off, applies its `on_exit` (halt), and, with no VM left, powers the
/// machine off.
#[test]
fn cpu_off_on_the_last_vcpu_powers_the_vm_off() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = system(dir.path(), "bootargs = \"selftest.end=cpu_off\"\n");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&path).args(["--timeout", "120"]);
    let mut c = Console::spawn(cmd, "CPU_OFF on the last vCPU");
    let summary = c.expect_vm_summary("st", 1, RUN);
    assert!(summary.contains(" 0 failed"), "{summary}");
    c.expect("ending with CPU_OFF on the last vCPU", RUN);
    c.expect(
        "bothy: VM st powered off (its last vCPU called CPU_OFF)",
        RUN,
    );
    c.expect("bothy: all VMs powered off", RUN);
    assert!(c.wait(RUN).success(), "bothy run failed");
    assert!(
        !c.transcript().contains("TEST cpu_off_last fail"),
        "CPU_OFF returned"
    );
}
