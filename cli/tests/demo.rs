//! The built-in demo (`bothy run`): two Debian Linux VMs with 2 vCPUs each and the
//! bare-metal self-test VM, time-shared on QEMU's 2 CPUs. Both Linux guests reach a
//! shell and answer on their own consoles while a CPU-bound loop runs on every vCPU,
//! Bothy's prompt lists them, one powering off leaves the other answering, `restart`
//! from the prompt brings it back to a shell, and the run ends when both power off.

mod common;

use std::process::Command;
use std::time::Duration;

use bothy_cli::initramfs::READY_MARKER;
use common::{bothy, qemu_lock, Console};

const BOOT: Duration = Duration::from_secs(600);
const CMD: Duration = Duration::from_secs(120);
/// Ctrl-\ three times: Bothy's prompt.
const PROMPT_KEYS: &[u8] = b"\x1c\x1c\x1c";

/// Busy loops on both vCPUs of the focused guest, for as long as the test runs.
const BURN: &str = "for i in 1 2; do (while :; do :; done) & done";

#[test]
fn demo_two_linux_vms_and_the_selftest_share_two_cpus() {
    let _q = qemu_lock();
    let mut cmd = Command::new(bothy());
    cmd.args(["run", "--timeout", "1500"]);
    let mut c = Console::spawn(cmd, "bothy run (demo)");

    // The self-test VM runs its checks and powers off. Its lines may be split where
    // another VM's output interleaves, so look for failures line by line.
    c.expect("bothy: VM selftest powered off", BOOT);
    let t = c.transcript();
    let failures: Vec<&str> = t
        .lines()
        .filter(|l| {
            l.starts_with("[selftest] TEST ") && l.split_whitespace().nth(3) == Some("fail")
        })
        .collect();
    assert!(
        failures.is_empty() && t.contains("0 failed"),
        "the self-test VM failed checks while time-shared:\n{}",
        failures.join("\n")
    );
    // Both booted to a shell (their boot output interleaves: see `expect_vm`).
    for name in ["linux-a", "linux-b"] {
        c.expect_vm(name, READY_MARKER, BOOT);
        c.expect_vm(name, "bothy-guest#", BOOT);
    }

    // Input goes to linux-a first: load both its vCPUs, and it still answers.
    c.send(BURN);
    c.send("echo a-says-$((6*7)) cpus=$(nproc)");
    c.expect("[linux-a] a-says-42 cpus=2", CMD);
    // Ctrl-] moves input to linux-b: the same there.
    c.send_raw(b"\x1d");
    c.expect("console input goes to VM linux-b", CMD);
    c.send(BURN);
    c.send("echo b-says-$((6*7)) cpus=$(nproc)");
    c.expect("[linux-b] b-says-42 cpus=2", CMD);

    // The prompt lists both, running, with their vCPUs.
    c.send_raw(PROMPT_KEYS);
    c.expect("bothy> ", CMD);
    c.send("list");
    let list = c.expect("bothy> ", CMD);
    for name in ["linux-a", "linux-b"] {
        let line = list
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from list:\n{list}"));
        assert!(line.contains("running"), "{name} not running:\n{list}");
    }
    assert!(list.contains("vcpu 1"), "{list}");
    // The machine's memory record outlives boot: two 256 MiB Linux VMs and the 64 MiB
    // self-test hold their RAM in it, each with its own VMID.
    assert!(
        list.contains("memory: 576 MiB held by VMs") && list.contains("3 VMIDs in use"),
        "{list}"
    );
    c.send("resume");

    // linux-b powers off; linux-a keeps answering (with its loops still running).
    c.send("poweroff");
    c.expect("bothy: VM linux-b powered off", CMD);
    c.expect("console input goes to VM linux-a", CMD);
    c.send("echo a-still-$((6*7))");
    c.expect("[linux-a] a-still-42", CMD);

    // `restart linux-b` from the prompt boots it again to a shell.
    c.send_raw(PROMPT_KEYS);
    c.expect("bothy> ", CMD);
    c.send("restart linux-b");
    c.expect("bothy: VM linux-b restarted", CMD);
    c.send("console linux-b");
    c.expect("console input goes to VM linux-b", CMD);
    c.expect(&format!("[linux-b] {READY_MARKER}"), BOOT);
    c.expect("[linux-b] bothy-guest#", BOOT);
    c.send("echo b-again-$((6*7))");
    c.expect("[linux-b] b-again-42", CMD);

    c.send("poweroff");
    c.expect("bothy: VM linux-b powered off", CMD);
    // Input reaches linux-a once Bothy says so (the VM stops first, then focus moves).
    c.expect("console input goes to VM linux-a", CMD);
    c.send("poweroff");
    c.expect("bothy: VM linux-a powered off", CMD);
    c.expect("bothy: all VMs powered off", CMD);
    assert!(c.wait(CMD).success(), "bothy run failed");
}
