//! Time-sharing under load: more vCPUs than CPUs, and a pinned vCPU beside shared ones.
//!
//! - One Linux VM with 4 vCPUs on QEMU's 2 CPUs boots, runs a 30-second load on all
//!   four without RCU stalls or soft lockups, and powers off cleanly.
//! - A bare-metal VM (the self-test guest) pinned to CPUs 1 and 2 of `-smp 3` passes
//!   every check while a 2-vCPU Linux VM boots on CPU 0 alone; Bothy's `list` then
//!   shows the pinned vCPUs last on their own CPUs and the Linux vCPUs, busy on both,
//!   never anywhere but CPU 0.

mod common;

use std::process::Command;
use std::time::Duration;

use bothy_cli::initramfs::{PROMPT, READY_MARKER};
use common::{bothy, qemu_lock, Console};

const BOOT: Duration = Duration::from_secs(600);
const CMD: Duration = Duration::from_secs(120);

#[test]
fn four_vcpus_on_two_cpus_survive_a_parallel_load() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let system = common::linux_system(dir.path(), &[("wide", 4, "512M", "")], "");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&system).args(["--timeout", "1200"]);
    let mut c = Console::spawn(cmd, "4 vCPUs on 2 CPUs");
    c.expect(READY_MARKER, BOOT);
    c.expect(PROMPT, BOOT);
    let cpus = c.run("nproc", CMD);
    assert!(cpus.ends_with('4'), "expected 4 CPUs, got {cpus:?}");
    let load = c.run(
        "for i in 1 2 3 4; do timeout 30 sh -c 'while :; do :; done' & done; wait; \
         echo stalls=$(dmesg | grep -ciE 'rcu.*stall|soft lockup|hard lockup')",
        Duration::from_secs(300),
    );
    assert!(
        load.contains("stalls=0"),
        "stalls or lockups under load:\n{load}\n{}",
        c.run("dmesg | tail -40", CMD)
    );
    c.send("poweroff");
    c.expect("bothy: VM wide powered off", CMD);
    c.expect("bothy: all VMs powered off", CMD);
    assert!(c.wait(CMD).success(), "bothy run failed");
}

#[test]
fn pinned_vcpus_own_their_cpus_beside_time_shared_linux() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let selftest = common::build_selftest_guest();
    let rt = format!(
        "[[vm]]\nname = \"rt\"\ncpus = 2\nmemory = \"64M\"\nkernel = {:?}\npin = [1, 2]\n",
        selftest.display().to_string()
    );
    let system = common::linux_system(dir.path(), &[("linux", 2, "256M", "")], &rt);
    let mut cmd = Command::new(bothy());
    cmd.arg("run")
        .arg(&system)
        .args(["--smp", "3", "--timeout", "1200"]);
    let mut c = Console::spawn(cmd, "pinned + shared");
    // The pinned VM passes every self-test check while Linux boots beside it.
    // (rt's lines and Linux's boot output interleave: see `expect_vm`.)
    c.expect("bothy: VM rt powered off", BOOT);
    c.expect_vm("rt", "TEST summary:", CMD);
    c.expect_vm("rt", "passed, 0 failed", CMD);
    c.expect_vm("linux", "bothy-guest#", BOOT);
    c.send("for i in 1 2; do (while :; do :; done) & done; echo loaded-$((6*7))");
    c.expect("[linux] loaded-42", CMD);
    std::thread::sleep(Duration::from_secs(3));
    c.send_raw(b"\x1c\x1c\x1c");
    c.expect("bothy> ", CMD);
    c.send("list");
    let list = c.expect("bothy> ", CMD);
    c.send("resume");
    let vcpus: Vec<&str> = list.lines().filter(|l| l.contains("vcpu ")).collect();
    assert_eq!(vcpus.len(), 4, "two Linux vCPUs and two pinned:\n{list}");
    for (cpu, want) in [(1, "last cpu 1"), (2, "last cpu 2")] {
        let line = vcpus
            .iter()
            .find(|l| l.contains(&format!("pinned to {cpu}")))
            .unwrap_or_else(|| panic!("no vCPU pinned to {cpu}:\n{list}"));
        assert!(line.contains(want), "pinned vCPU ran elsewhere:\n{list}");
    }
    let shared: Vec<&&str> = vcpus.iter().filter(|l| l.contains("shared")).collect();
    assert_eq!(shared.len(), 2, "{list}");
    for line in shared {
        assert!(
            line.contains("shared on 0 ") && line.contains("cpu 0"),
            "a time-shared vCPU ran on a pinned CPU:\n{list}"
        );
    }
    c.send("poweroff");
    c.expect("bothy: VM linux powered off", CMD);
    c.expect("bothy: all VMs powered off", CMD);
    assert!(c.wait(CMD).success(), "bothy run failed");
}
