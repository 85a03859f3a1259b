//! Two Linux VMs side by side, one vCPU each: both boot, their console lines are
//! tagged with the VM name, input goes to the focused VM, Ctrl-] moves it, one VM
//! powering off leaves the other running (and gives it the console), and the run
//! ends cleanly when the last one powers off.

mod common;

use std::process::Command;
use std::time::Duration;

use bothy_cli::cache::Cache;
use bothy_cli::initramfs::build_demo;
use common::{bothy, qemu_lock, Console};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);

#[test]
fn two_vms_share_the_machine_and_the_console() {
    let _q = qemu_lock();
    let a = Cache::default_location()
        .guest_artifacts()
        .expect("guest artifacts (run ./scripts/setup.sh)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("initrd.gz"), build_demo(&a).unwrap()).unwrap();
    let vm = |name: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\ncpus = 1\nmemory = \"256M\"\nkernel = {:?}\n\
             initrd = \"initrd.gz\"\nbootargs = \"console=ttyAMA0 quiet\"\n",
            a.kernel.display().to_string()
        )
    };
    let system = dir.path().join("two.toml");
    std::fs::write(&system, format!("{}\n{}", vm("alpha"), vm("beta"))).unwrap();

    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&system).args(["--timeout", "600"]);
    let mut c = Console::spawn(cmd, "two VMs");
    // Both shells come up, each in its own tagged lines (which first is up to the
    // scheduler; their boot output interleaves: see `expect_vm`).
    for name in ["alpha", "beta"] {
        c.expect_vm(name, "BOTHY-GUEST-READY", BOOT);
        c.expect_vm(name, "bothy-guest#", BOOT);
    }

    // Input goes to the first VM, tagged output comes back from it.
    c.send("echo alpha-says-$((6*7)) cpus=$(grep -c ^processor /proc/cpuinfo)");
    c.expect("[alpha] alpha-says-42 cpus=1", CMD);

    // Ctrl-] moves input to beta.
    c.send("\x1d");
    c.expect("console input goes to VM beta", CMD);
    c.send("echo beta-says-$((6*7))");
    c.expect("[beta] beta-says-42", CMD);

    // Beta powers off; alpha keeps running and gets the console back.
    c.send("poweroff");
    c.expect("bothy: VM beta powered off", CMD);
    c.expect("console input goes to VM alpha", CMD);
    c.send("echo alpha-still-$((6*7))");
    c.expect("[alpha] alpha-still-42", CMD);

    c.send("poweroff");
    c.expect("bothy: VM alpha powered off", CMD);
    c.expect("bothy: all VMs powered off", CMD);
    assert!(
        c.wait(CMD).success(),
        "bothy run failed:\n{}",
        c.transcript()
    );
}
