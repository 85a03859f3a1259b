//! Linux guest tests: Debian's arm64 kernel and the demo busybox initramfs, driven
//! through the console like a person would (DESIGN.md §5.3).
//!
//! The same script runs twice: on bare QEMU (Linux at EL1, no hypervisor), which
//! proves the harness, the kernel and the initramfs; and under Bothy via `bothy run`,
//! which is the real test. Both need the guest artifacts from ./scripts/setup.sh.
//! Shorter runs check a restart (`reboot`) and a machine with MTE (`virt,mte=on`).

mod common;

use std::process::Command;
use std::time::Duration;

use bothy_cli::cache::Cache;
use bothy_cli::initramfs::{build_demo, PROMPT, READY_MARKER};
use common::{bothy, qemu_lock, Console};

const CMD: Duration = Duration::from_secs(60);

fn artifacts() -> bothy_cli::cache::GuestArtifacts {
    let a = Cache::default_location()
        .guest_artifacts()
        .expect("guest artifacts (run ./scripts/setup.sh)");
    assert!(
        a.busybox32.is_some(),
        "no armhf busybox in the cache (run ./scripts/setup.sh)"
    );
    a
}

/// The checks both variants share: boot to a shell, inspect the machine, power off.
fn guest_script(c: &mut Console, boot: Duration) {
    c.expect(READY_MARKER, boot);
    c.expect(PROMPT, boot);

    let cpus = c.run("grep -c ^processor /proc/cpuinfo", CMD);
    assert!(cpus.ends_with('2'), "expected 2 CPUs, got {cpus:?}");

    let psci = c.run("dmesg | grep -i psci", CMD);
    assert!(psci.contains("PSCIv1"), "PSCI 1.x not detected:\n{psci}");
    // Both bare QEMU at EL1 and Bothy answer PSCI over HVC; the DT says so.
    let method = c.run(
        "echo method=$(cat /sys/firmware/devicetree/base/psci/method)",
        CMD,
    );
    assert!(method.contains("method=hvc"), "PSCI conduit: {method:?}");

    let gic = c.run("dmesg | grep -i gicv3", CMD);
    assert!(gic.contains("GICv3"), "no GICv3 in dmesg:\n{gic}");
    let timer = c.run("dmesg | grep arch_timer", CMD);
    assert!(
        timer.contains("arch_timer: cp15 timer"),
        "no architected timer in dmesg:\n{timer}"
    );
    // The tree describes a PMU (QEMU's own; Bothy's when the host has one) and Linux's
    // PMUv3 driver takes it, with its overflow interrupt (checked in /proc/interrupts
    // below).
    let pmu = c.run(
        "dmesg | grep -i 'PMU driver'; \
         test -d /sys/bus/event_source/devices/armv8_pmuv3 && echo pmu-in-sysfs",
        CMD,
    );
    assert!(
        pmu.contains("armv8_pmuv3 PMU driver") && pmu.contains("pmu-in-sysfs"),
        "the PMUv3 driver did not probe:\n{pmu}"
    );
    let module = c.run("ls /lib/modules/*/kernel/drivers/virtio/", CMD);
    assert!(module.contains("virtio_mmio.ko"), "{module}");

    // 32-bit user space under the 64-bit kernel (armhf busybox): it runs (with the
    // 32-bit personality the kernel calls the machine "armv8l"), and a loop long enough
    // to be interrupted many times (timer, IPIs: exits to the hypervisor from AArch32
    // code) finishes with the right count.
    let arch = c.run("busybox32 linux32 uname -m", CMD);
    assert!(arch.contains("armv8l"), "32-bit busybox: {arch:?}");
    let looped = c.run(
        "busybox32 sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo a32=$i'",
        Duration::from_secs(120),
    );
    assert!(looped.contains("a32=20000"), "32-bit loop: {looped:?}");

    // Idle past the kernel's 10 s hard-lockup threshold: the virtual timer must keep
    // firing on both CPUs while they sit in WFI, and IPIs must flow both ways.
    let idle = c.run(
        "sleep 12; echo stalls=$(dmesg | grep -ciE 'hard LOCKUP|rcu.*stall')",
        Duration::from_secs(120),
    );
    assert!(
        idle.contains("stalls=0"),
        "lockup or RCU stall reports:\n{idle}"
    );
    let irqs = c.run("cat /proc/interrupts", CMD);
    assert!(
        irqs.lines()
            .any(|l| l.contains("arm-pmu") && l.contains("Level")),
        "the PMU's overflow interrupt is not requested (level-sensitive):\n{irqs}"
    );
    for needle in [
        "arch_timer",
        "Rescheduling interrupts",
        "Function call interrupts",
    ] {
        let line = irqs
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} line:\n{irqs}"));
        let counts: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        assert!(
            counts.len() == 2 && counts.iter().all(|&n| n > 0),
            "{needle} not delivered on both CPUs:\n{line}"
        );
    }

    c.send("poweroff");
}

/// Linux directly on QEMU at EL1: the harness's known-good baseline.
#[test]
fn bare_qemu_linux_boots_to_shell_and_powers_off() {
    let _q = qemu_lock();
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio.gz");
    std::fs::write(&initrd, build_demo(&a).unwrap()).unwrap();

    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args([
        "-machine",
        "virt,gic-version=3",
        "-cpu",
        "max,pauth-impdef=on",
    ])
    .args(["-smp", "2", "-m", "1G", "-nographic", "-nic", "none"])
    .arg("-kernel")
    .arg(&a.kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyAMA0"]);
    let mut c = Console::spawn(cmd, "bare QEMU");
    guest_script(&mut c, Duration::from_secs(180));
    c.expect("reboot: Power down", CMD);
    let status = c.wait(CMD);
    assert!(status.success(), "QEMU exited with {status}");
}

/// One Linux VM with 2 vCPUs under Bothy: `bothy run` builds the hypervisor and the
/// image, the guest sees PSCI from Bothy over HVC, and `poweroff` ends the VM and then
/// the machine.
#[test]
fn bothy_run_linux_boots_to_shell_and_powers_off() {
    let _q = qemu_lock();
    assert!(common::hyp_present(), "hyp/ is missing");
    let dir = tempfile::tempdir().unwrap();
    let system = common::linux_system(dir.path(), &[("linux0", 2, "512M", "")], "");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&system).args(["--timeout", "900"]);
    let mut c = Console::spawn(cmd, "bothy run");
    guest_script(&mut c, Duration::from_secs(600));
    c.expect("bothy: all VMs powered off", CMD);
    let status = c.wait(CMD);
    assert!(
        status.success(),
        "bothy run exited with {status}\n{}",
        c.transcript()
    );
}

/// On a machine whose CPU has MTE (QEMU `virt,mte=on`), Linux under Bothy boots to a
/// shell and reports no MTE: Bothy does not give guests tag memory (HCR_EL2.ATA clear
/// traps the tag registers), and the ID registers say so. Before they were sanitised
/// the kernel saw MTE, touched its registers and took an undefined instruction early in
/// boot. Bothy's boot report must name MTE among what it hides, or the machine had none.
#[test]
fn linux_boots_without_mte_on_a_machine_with_mte() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let system = common::linux_system(dir.path(), &[("linux0", 1, "256M", "")], "");
    let mut cmd = Command::new(bothy());
    cmd.arg("run")
        .arg(&system)
        .args(["--machine-opt", "mte=on", "--timeout", "600"]);
    let mut c = Console::spawn(cmd, "bothy run (virt,mte=on)");
    c.expect("CPU features VMs do not see (trapped):", CMD);
    let hidden = c.expect("\n", CMD);
    assert!(
        hidden.contains("MTE"),
        "the machine has no MTE to hide: {hidden:?}"
    );
    c.expect(READY_MARKER, Duration::from_secs(600));
    c.expect(PROMPT, CMD);
    let mte = c.run("echo mte=$(grep -c mte /proc/cpuinfo)", CMD);
    assert!(mte.contains("mte=0"), "the guest sees MTE: {mte:?}");
    c.send("poweroff");
    c.expect("bothy: all VMs powered off", CMD);
    assert!(c.wait(CMD).success(), "bothy run failed");
}

/// `reboot` in the guest is PSCI SYSTEM_RESET: Bothy reloads the VM's images and
/// starts it again (both vCPUs), while the machine itself keeps running.
#[test]
fn guest_reboot_restarts_the_vm_from_its_images() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let system = common::linux_system(dir.path(), &[("linux0", 2, "512M", "")], "");
    let mut cmd = Command::new(bothy());
    cmd.arg("run").arg(&system).args(["--timeout", "900"]);
    let mut c = Console::spawn(cmd, "bothy run (reboot)");
    c.expect(READY_MARKER, Duration::from_secs(600));
    c.expect(PROMPT, CMD);
    c.run("echo before-reset > /marker", CMD);
    c.send("reboot");
    c.expect("bothy: VM linux0 is resetting", CMD);
    c.expect("bothy: VM linux0 restarted", CMD);
    c.expect(READY_MARKER, Duration::from_secs(600));
    c.expect(PROMPT, CMD);
    let after = c.run("cat /marker 2>&1; grep -c ^processor /proc/cpuinfo", CMD);
    assert!(
        !after.contains("before-reset"),
        "state survived the reset:\n{after}"
    );
    assert!(after.ends_with('2'), "both vCPUs should be back:\n{after}");
    c.send("poweroff");
    c.expect("bothy: all VMs powered off", CMD);
    assert!(c.wait(CMD).success(), "bothy run failed");
}
