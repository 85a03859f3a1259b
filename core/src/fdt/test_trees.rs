//! Device trees shared by the fdt tests: QEMU's real DTB and small hand-built trees
//! assembled from the pieces a host platform has.

use alloc::vec::Vec;

use super::FdtWriter;
use crate::Region;

/// `qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3,dumpdtb=...
/// -cpu max -smp 2 -m 1G` (QEMU 7.2). Its `totalsize` is 1 MiB: QEMU leaves free space.
pub const QEMU_VIRT_GICV3_SMP2: &[u8] = include_bytes!("../../tests/data/qemu-virt-gicv3-smp2.dtb");

pub const GIC_PHANDLE: u32 = 1;

/// A root with `#address-cells = <2>; #size-cells = <2>` around `body`.
pub fn tree(body: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    let mut w = FdtWriter::new();
    w.begin_node("");
    w.property_u32("#address-cells", 2);
    w.property_u32("#size-cells", 2);
    w.property_u32("interrupt-parent", GIC_PHANDLE);
    body(&mut w);
    w.end_node();
    w.finish()
}

pub fn memory(w: &mut FdtWriter, base: u64, size: u64) {
    w.begin_node(&alloc::format!("memory@{base:x}"));
    w.property_string("device_type", "memory");
    w.property_reg64(&[Region::new(base, size)]);
    w.end_node();
}

pub fn gic_v3(w: &mut FdtWriter) {
    w.begin_node("interrupt-controller@8000000");
    w.property_string("compatible", "arm,gic-v3");
    w.property_u32("phandle", GIC_PHANDLE);
    w.property_u32("#interrupt-cells", 3);
    w.property_empty("interrupt-controller");
    w.property_reg64(&[
        Region::new(0x800_0000, 0x1_0000),
        Region::new(0x80a_0000, 0xf6_0000),
    ]);
    w.property_cells("interrupts", &[1, 9, 4]);
    w.end_node();
}

pub fn gic_v2(w: &mut FdtWriter) {
    w.begin_node("interrupt-controller@8000000");
    w.property_stringlist("compatible", &["arm,cortex-a15-gic", "arm,gic-400"]);
    w.property_u32("phandle", GIC_PHANDLE);
    w.property_u32("#interrupt-cells", 3);
    w.property_empty("interrupt-controller");
    w.property_reg64(&[
        Region::new(0x800_0000, 0x1_0000),
        Region::new(0x801_0000, 0x1_0000),
    ]);
    w.end_node();
}

pub fn timer(w: &mut FdtWriter) {
    w.begin_node("timer");
    w.property_stringlist("compatible", &["arm,armv8-timer", "arm,armv7-timer"]);
    w.property_cells("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);
    w.end_node();
}

/// `/cpus` with one-cell `reg`s and PSCI.
pub fn cpus(w: &mut FdtWriter, count: u32) {
    w.begin_node("cpus");
    w.property_u32("#address-cells", 1);
    w.property_u32("#size-cells", 0);
    for i in 0..count {
        w.begin_node(&alloc::format!("cpu@{i:x}"));
        w.property_string("device_type", "cpu");
        w.property_string("enable-method", "psci");
        w.property_u32("reg", i);
        w.end_node();
    }
    w.end_node();
}

pub fn pl011(w: &mut FdtWriter, name: &str) {
    w.begin_node(name);
    w.property_stringlist("compatible", &["arm,pl011", "arm,primecell"]);
    w.property_reg64(&[Region::new(0x900_0000, 0x1000)]);
    w.property_cells("interrupts", &[0, 1, 4]);
    w.end_node();
}

pub fn psci(w: &mut FdtWriter, method: &str) {
    w.begin_node("psci");
    w.property_stringlist("compatible", &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]);
    w.property_string("method", method);
    w.end_node();
}

pub fn chosen(w: &mut FdtWriter, stdout_path: &str) {
    w.begin_node("chosen");
    w.property_string("stdout-path", stdout_path);
    w.end_node();
}

/// Everything a platform needs, QEMU-like, with `extra` added to the root.
pub fn full_platform(extra: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    tree(|w| {
        memory(w, 0x4000_0000, 0x4000_0000);
        gic_v3(w);
        timer(w);
        cpus(w, 2);
        pl011(w, "pl011@9000000");
        psci(w, "smc");
        chosen(w, "/pl011@9000000");
        extra(w);
    })
}
