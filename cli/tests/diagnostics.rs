//! Bothy started wrongly must say what is wrong on the console and stop — never hang
//! silently or misbehave. Each test boots a small Bothy image (the selftest guest)
//! in a deliberately wrong setting and checks the message.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{qemu, qemu_lock, Console};

const WAIT: Duration = Duration::from_secs(60);

/// QEMU's own device tree for virt, edited as DTS by `edit`, compiled with dtc.
fn edited_qemu_dtb(dir: &std::path::Path, edit: impl Fn(&str) -> String) -> std::path::PathBuf {
    let dtb = dir.join("virt.dtb");
    let status = qemu(&format!(
        "virt,virtualization=on,gic-version=3,dumpdtb={}",
        dtb.display()
    ))
    .status()
    .expect("qemu dumpdtb");
    assert!(status.success());
    let dts = Command::new("dtc")
        .args(["-q", "-I", "dtb", "-O", "dts"])
        .arg(&dtb)
        .output()
        .expect("dtc (device-tree-compiler) is installed by scripts/setup.sh");
    assert!(dts.status.success());
    let edited = edit(&String::from_utf8(dts.stdout).unwrap());
    let src = dir.join("edited.dts");
    std::fs::write(&src, edited).unwrap();
    let out = dir.join("edited.dtb");
    let status = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "dtc could not compile the edited tree");
    out
}

/// QEMU with `img` placed by the generic loader, which starts CPU 0 at its first
/// byte at the highest exception level with every register zero (so x0 = 0).
fn loaded_without_dtb(machine: &str, img: &std::path::Path) -> Command {
    let mut cmd = qemu(machine);
    cmd.arg("-device")
        .arg(format!(
            "loader,file={},addr=0x40200000,force-raw=on",
            img.display()
        ))
        .args(["-device", "loader,addr=0x40200000,cpu-num=0"]);
    cmd
}

/// Runs QEMU on `cmd` and expects `message`; QEMU must then exit by itself with
/// status 0 (Bothy powered the machine off) unless `stops_itself` is false.
fn expect_message(cmd: Command, what: &str, message: &str, stops_itself: bool) {
    let mut c = Console::spawn(cmd, what);
    let text = c.expect(message, WAIT);
    assert!(
        !text.contains("all VMs powered off"),
        "{what}: Bothy ran guests anyway:\n{text}"
    );
    if stops_itself {
        assert!(
            c.wait(WAIT).success(),
            "{what}: QEMU did not power off cleanly"
        );
    }
}

#[test]
fn no_device_tree_is_reported_on_the_early_console() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    // The generic loader sets the PC and leaves x0 = 0: no DTB at all.
    let cmd = loaded_without_dtb("virt,virtualization=on,gic-version=3", &img);
    expect_message(
        cmd,
        "no DTB",
        "bothy: error: no device tree: the loader passed x0 = 0",
        true,
    );
}

#[test]
fn a_gicv2_machine_is_refused_by_name() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let mut cmd = qemu("virt,virtualization=on,gic-version=2");
    cmd.arg("-kernel").arg(&img);
    expect_message(
        cmd,
        "GICv2",
        "device tree has no GICv3 (compatible \"arm,gic-v3\") interrupt controller",
        true,
    );
}

#[test]
fn a_tree_without_a_console_falls_back_to_the_early_console() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let dtb = edited_qemu_dtb(dir.path(), |dts| {
        dts.lines()
            .filter(|l| !l.contains("stdout-path"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let mut cmd = qemu("virt,virtualization=on,gic-version=3");
    cmd.arg("-kernel").arg(&img).arg("-dtb").arg(&dtb);
    expect_message(
        cmd,
        "no stdout-path",
        "bothy: error: the device tree's /chosen/stdout-path names no PL011 UART",
        true,
    );
}

#[test]
fn a_tree_without_cpus_is_refused() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let dtb = edited_qemu_dtb(dir.path(), |dts| {
        // Drop the whole top-level `cpus { ... };` block.
        let start = dts.find("\n\tcpus {").expect("QEMU's tree has /cpus");
        let end = start + dts[start..].find("\n\t};").expect("end of /cpus") + "\n\t};".len();
        format!("{}{}", &dts[..start], &dts[end..])
    });
    let mut cmd = qemu("virt,virtualization=on,gic-version=3");
    cmd.arg("-kernel").arg(&img).arg("-dtb").arg(&dtb);
    expect_message(
        cmd,
        "no cpus",
        "bothy: error: device tree has no /cpus",
        true,
    );
}

#[test]
fn entered_at_el3_says_so() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    // With secure=on and no firmware, the generic loader starts the CPU at EL3.
    let cmd = loaded_without_dtb("virt,secure=on,virtualization=on,gic-version=3", &img);
    // At EL3 there is no firmware below to power off through: Bothy reports and
    // parks the CPU; dropping the console ends QEMU.
    expect_message(
        cmd,
        "EL3",
        "bothy: error: entered at EL3; Bothy must be started at non-secure EL2",
        false,
    );
}

/// A payload whose header says it ends before the kernel its manifest names: Bothy
/// refuses it by name instead of copying from past the payload.
#[test]
fn a_kernel_outside_the_payload_is_refused() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let mut bytes = std::fs::read(&img).unwrap();
    let magic = bothy_core::image::PAYLOAD_MAGIC;
    let at = (0..bytes.len().saturating_sub(magic.len()))
        .step_by(4096)
        .rfind(|&i| bytes[i..i + magic.len()] == magic)
        .expect("payload header in the image");
    let word = |b: &[u8], o: usize| u64::from_le_bytes(b[at + o..at + o + 8].try_into().unwrap());
    // total_size := the end of the manifest, so the manifest still decodes.
    let manifest_end = word(&bytes, 16) + word(&bytes, 24);
    bytes[at + 32..at + 40].copy_from_slice(&manifest_end.to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let mut cmd = qemu("virt,virtualization=on,gic-version=3");
    cmd.arg("-kernel").arg(&img);
    expect_message(
        cmd,
        "kernel outside the payload",
        "bothy: error: VM selftest: kernel: ",
        true,
    );
}

/// The fault-injection knob `--debug-overflow-stack` makes the boot CPU recurse until its
/// EL2 stack runs out: the guard page below it must catch that (instead of the stack
/// silently overwriting the next CPU's), and the fault must still be reported, from
/// the emergency stack.
#[test]
fn an_el2_stack_overflow_is_caught_by_the_guard_page() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let system = common::selftest_system(dir.path(), 2);
    let img = dir.path().join("overflow.img");
    let status = Command::new(common::bothy())
        .arg("image")
        .arg(&system)
        .arg("-o")
        .arg(&img)
        .arg("--debug-overflow-stack")
        .status()
        .expect("bothy image");
    assert!(
        status.success(),
        "bothy image --debug-overflow-stack failed"
    );
    let mut cmd = qemu("virt,virtualization=on,gic-version=3");
    cmd.arg("-kernel").arg(&img);
    expect_message(
        cmd,
        "stack overflow",
        "bothy: fatal: EL2 stack overflow on CPU 0",
        true,
    );
}
