//! The demo guest's initramfs: busybox, an `/init` and an inittab, built in Rust.
//!
//! Boot sequence inside the guest: the kernel runs `/init` (a shell script), which
//! mounts proc, sysfs and devtmpfs, installs the busybox applet links, prints the
//! marker `BOTHY-GUEST-READY` (tests and `bothy run` wait for it) and execs busybox
//! `init`. That init reads /etc/inittab, respawns a root shell on the console, and on
//! `poweroff` runs the shutdown actions and calls reboot(RB_POWER_OFF), which the
//! kernel turns into PSCI SYSTEM_OFF: under Bothy that ends the VM, on bare QEMU it
//! ends QEMU with status 0.
//!
//! The kernel's `virtio_mmio.ko` is included decompressed under
//! /lib/modules/<release>/kernel/drivers/virtio/ (busybox's insmod cannot read .xz) so
//! later tests can load it; nothing loads it yet.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use flate2::{write::GzEncoder, Compression};

use crate::cache::GuestArtifacts;
use crate::cpio::CpioWriter;

/// Printed by /init once the guest's userspace is up.
pub const READY_MARKER: &str = "BOTHY-GUEST-READY";

/// The shell prompt, distinctive so a console driver can wait for it.
pub const PROMPT: &str = "bothy-guest# ";

/// Applets linked in the archive itself: enough for /init to run before
/// `busybox --install` adds the rest, and for the tests' commands.
const APPLETS: &[(&str, &str)] = &[
    ("bin", "sh"),
    ("bin", "ash"),
    ("bin", "cat"),
    ("bin", "cttyhack"),
    ("bin", "dmesg"),
    ("bin", "echo"),
    ("bin", "grep"),
    ("bin", "ls"),
    ("bin", "mkdir"),
    ("bin", "mount"),
    ("bin", "uname"),
    ("sbin", "halt"),
    ("sbin", "init"),
    ("sbin", "insmod"),
    ("sbin", "lsmod"),
    ("sbin", "modprobe"),
    ("sbin", "poweroff"),
    ("sbin", "reboot"),
];

const INIT: &str = r#"#!/bin/sh
# Bothy demo guest init: mount the pseudo-filesystems, announce readiness, hand over
# to busybox init (which owns the console shell and a clean poweroff).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
echo "BOTHY-GUEST-READY $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
exec /sbin/init
"#;

// cttyhack gives the shell a controlling terminal on whatever the console is (ttyAMA0
// here), so job control and ^C work.
const INITTAB: &str = "\
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/echo bothy-guest: powering off
";

const PROFILE: &str = "export PS1='bothy-guest# '\nexport PATH=/sbin:/bin:/usr/sbin:/usr/bin\n";

/// Builds the gzip-compressed demo initramfs from cached artifacts.
pub fn build_demo(artifacts: &GuestArtifacts) -> Result<Vec<u8>> {
    let busybox = std::fs::read(&artifacts.busybox)
        .with_context(|| format!("reading {}", artifacts.busybox.display()))?;
    let module_rel = "kernel/drivers/virtio/virtio_mmio.ko";
    let module_xz = artifacts.modules_dir.join(format!("{module_rel}.xz"));
    let module = read_module(&module_xz, &artifacts.modules_dir.join(module_rel))?;
    let busybox32 = match &artifacts.busybox32 {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let cpio = demo_cpio(
        &busybox,
        busybox32.as_deref(),
        &artifacts.kernel_release,
        module.as_deref(),
    );
    gzip(&cpio)
}

/// The uncompressed archive; separate from the file handling so it is unit-testable.
/// `busybox32`, an armhf busybox, goes in as `/bin/busybox32` (a 32-bit program for the
/// tests to run under the 64-bit kernel).
pub fn demo_cpio(
    busybox: &[u8],
    busybox32: Option<&[u8]>,
    kernel_release: &str,
    virtio_mmio: Option<&[u8]>,
) -> Vec<u8> {
    let mut w = CpioWriter::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "lib",
        "lib/modules",
    ] {
        w.dir(d, 0o755);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, busybox);
    if let Some(b32) = busybox32 {
        w.file("bin/busybox32", 0o755, b32);
    }
    for (dir, applet) in APPLETS {
        let target = if *dir == "bin" {
            "busybox"
        } else {
            "../bin/busybox"
        };
        w.symlink(&format!("{dir}/{applet}"), target);
    }
    w.file("init", 0o755, INIT.as_bytes());
    w.file("etc/inittab", 0o644, INITTAB.as_bytes());
    w.file("etc/profile", 0o644, PROFILE.as_bytes());
    if let Some(ko) = virtio_mmio {
        let base = format!("lib/modules/{kernel_release}");
        for d in ["", "/kernel", "/kernel/drivers", "/kernel/drivers/virtio"] {
            w.dir(&format!("{base}{d}"), 0o755);
        }
        w.file(
            &format!("{base}/kernel/drivers/virtio/virtio_mmio.ko"),
            0o644,
            ko,
        );
    }
    w.finish()
}

/// Reads the module, decompressing the `.xz` Debian ships; `None` when the kernel
/// package has neither form (e.g. a kernel with virtio-mmio built in).
fn read_module(xz: &Path, plain: &Path) -> Result<Option<Vec<u8>>> {
    if xz.is_file() {
        let data = std::fs::read(xz).with_context(|| format!("reading {}", xz.display()))?;
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &data[..], &mut out)
            .with_context(|| format!("decompressing {}", xz.display()))?;
        return Ok(Some(out));
    }
    if plain.is_file() {
        return Ok(Some(std::fs::read(plain)?));
    }
    Ok(None)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 2), Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_init_busybox_and_module() {
        let a = demo_cpio(
            b"BUSYBOX",
            Some(b"BUSYBOX32"),
            "6.12.1-arm64",
            Some(b"\x7fELFko"),
        );
        let s = String::from_utf8_lossy(&a);
        for name in [
            "init\0",
            "bin/busybox\0",
            "bin/busybox32\0",
            "bin/sh\0",
            "sbin/poweroff\0",
            "etc/inittab\0",
            "dev/console\0",
            "lib/modules/6.12.1-arm64/kernel/drivers/virtio/virtio_mmio.ko\0",
        ] {
            assert!(s.contains(name), "missing {name}");
        }
        assert!(s.contains(READY_MARKER));
        assert!(PROFILE.contains(PROMPT));
        assert!(INITTAB.contains("::shutdown:"));
    }

    #[test]
    fn module_optional() {
        let a = demo_cpio(b"BB", None, "r", None);
        assert!(!String::from_utf8_lossy(&a).contains("virtio_mmio"));
    }
}
