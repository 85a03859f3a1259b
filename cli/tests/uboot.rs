//! Bothy boots from U-Boot's `booti` as well as from QEMU's `-kernel`: the image
//! is a plain arm64 `Image`, loaded where U-Boot's `kernel_addr_r` is (not where
//! QEMU would put it), with the device tree U-Boot relocated near the top of RAM
//! and the secondary CPU off until Bothy starts it with PSCI. Uses Debian's
//! `u-boot-qemu` (installed by scripts/setup.sh).

mod common;

use std::time::Duration;

use common::{qemu, qemu_lock, Console};

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
/// U-Boot's `kernel_addr_r` on qemu_arm64.
const LOAD_ADDR: &str = "0x40400000";

#[test]
fn uboot_booti_starts_bothy_and_its_guest() {
    let _q = qemu_lock();
    assert!(
        std::path::Path::new(UBOOT).is_file(),
        "{UBOOT} missing: run ./scripts/setup.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let mut cmd = qemu("virt,virtualization=on,gic-version=3");
    cmd.args(["-bios", UBOOT]).arg("-device").arg(format!(
        "loader,file={},addr={LOAD_ADDR},force-raw=on",
        img.display()
    ));
    let mut c = Console::spawn(cmd, "U-Boot booti");
    c.expect("Hit any key to stop autoboot", Duration::from_secs(60));
    c.send("");
    c.expect("=>", Duration::from_secs(30));
    c.send(&format!("booti {LOAD_ADDR} - ${{fdtcontroladdr}}"));
    c.expect(
        &format!(
            "bothy: Bothy {} at EL2: image {LOAD_ADDR}",
            env!("CARGO_PKG_VERSION")
        ),
        Duration::from_secs(60),
    );
    let out = c.expect("TEST summary:", Duration::from_secs(120));
    assert!(
        !out.contains(" fail"),
        "selftest failures under U-Boot:\n{out}"
    );
    c.expect("bothy: all VMs powered off", Duration::from_secs(30));
    assert!(
        c.wait(Duration::from_secs(30)).success(),
        "QEMU did not power off cleanly"
    );
}
