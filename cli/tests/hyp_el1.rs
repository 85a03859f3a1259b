//! Entered at EL1 (QEMU `virtualization=off`), the hypervisor must say so and stop,
//! never misbehave silently (DESIGN.md §2 step 2).

mod common;

use std::process::Command;
use std::time::Duration;

use bothy_cli::cache::Cache;
use bothy_cli::initramfs::build_demo;
use common::{bothy, qemu_lock, Console};

#[test]
fn hypervisor_entered_at_el1_refuses_clearly() {
    let _q = qemu_lock();
    assert!(common::hyp_present(), "hyp/ is missing");
    let a = Cache::default_location()
        .guest_artifacts()
        .expect("guest artifacts (run ./scripts/setup.sh)");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("initrd.gz"), build_demo(&a).unwrap()).unwrap();
    let system = format!(
        "[[vm]]\nname = \"linux0\"\ncpus = 2\nmemory = \"512M\"\nkernel = {:?}\ninitrd = \"initrd.gz\"\n",
        a.kernel.display().to_string()
    );
    std::fs::write(d.path().join("system.toml"), system).unwrap();
    let img = d.path().join("bothy.img");
    let st = Command::new(bothy())
        .arg("image")
        .arg(d.path().join("system.toml"))
        .arg("-o")
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success(), "bothy image failed");

    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(["-machine", "virt,virtualization=off,gic-version=3"])
        .args(["-cpu", "max,pauth-impdef=on", "-smp", "2", "-m", "1G"])
        .args(["-nographic", "-nic", "none", "-kernel"])
        .arg(&img);
    let mut c = Console::spawn(cmd, "QEMU at EL1");
    c.expect(
        "HYP mode not available: entered at EL1",
        Duration::from_secs(60),
    );
    // The hypervisor stops there; dropping the console ends QEMU.
}

/// `bothy run` turns the refusal into a failing exit with the hypervisor's message.
#[test]
fn bothy_run_at_el1_fails_with_the_hypervisors_message() {
    let _q = qemu_lock();
    assert!(common::hyp_present(), "hyp/ is missing");
    assert_cmd::Command::new(bothy())
        .args(["run", "--el1", "--timeout", "120"])
        .timeout(Duration::from_secs(600))
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "bothy: error: hypervisor: HYP mode not available: entered at EL1",
        ));
}
