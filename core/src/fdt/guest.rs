//! Guest DTB generation: the device tree a VM's kernel boots with.
//!
//! The tree mirrors QEMU 7.2's `virt` machine with GICv3 (see the fixture
//! `core/tests/data/qemu-virt-gicv3-smp2.dts`): same node names, same property order
//! and flags, so an unmodified distribution kernel (Debian arm64) that boots on QEMU
//! boots on Bothy. It describes only what Bothy emulates: vCPUs with PSCI over HVC, RAM,
//! the GICv3 distributor/redistributors, the architected timer, one PL011 and its fixed
//! APB clock, and the PMU when the host has one whose overflow interrupt Bothy
//! delivers (`dev::pmu`). [`build_guest_dtb_with_extra`] lets callers add more (virtio-mmio,
//! Gunyah capabilities).
//!
//! Called by the VM builder (`core` vm setup) for each VM it starts; the output is
//! copied into guest RAM and its address handed to the guest in `x0`.

use alloc::format;
use alloc::vec::Vec;

use super::platform::{Pmu, TimerIrqs, PMU_COMPATIBLE};
use super::FdtWriter;
use crate::Region;

/// GIC binding interrupt types and trigger flags (include/dt-bindings/interrupt-controller).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// The GICv3 maintenance interrupt, PPI 9 (INTID 25), as QEMU and the Arm BSA use.
const GIC_MAINTENANCE_PPI: u32 = 9;
/// Frequency of QEMU's `apb-pclk` fixed clock; the PL011 driver needs a clock to probe.
const APB_PCLK_HZ: u32 = 24_000_000;
/// PSCI 0.1 function IDs for the legacy `arm,psci` compatible (PSCI spec DEN0022,
/// table 5-1: the SMC64 CPU_SUSPEND/CPU_ON/MIGRATE and SMC32 CPU_OFF IDs, as QEMU writes).
const PSCI_CPU_SUSPEND: u32 = 0xc400_0001;
const PSCI_CPU_OFF: u32 = 0x8400_0002;
const PSCI_CPU_ON: u32 = 0xc400_0003;
const PSCI_MIGRATE: u32 = 0xc400_0005;
/// The root bus uses 64-bit addresses and sizes, as QEMU virt.
const ROOT_ADDRESS_CELLS: u32 = 2;
const ROOT_SIZE_CELLS: u32 = 2;
/// `/cpus`: `reg` is Aff0 (one cell), no size.
const CPUS_ADDRESS_CELLS: u32 = 1;
const CPUS_SIZE_CELLS: u32 = 0;
const GIC_INTERRUPT_CELLS: u32 = 3;
const GIC_REDIST_REGIONS: u32 = 1;

/// What goes into a guest's device tree. Addresses are guest IPAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDtbConfig<'a> {
    /// `cpu@0..cpu@{vcpus-1}`, `reg` = vCPU index = virtual MPIDR Aff0.
    pub vcpus: u32,
    pub ram: Region,
    pub gic_dist: Region,
    pub gic_redist: Region,
    pub uart: Region,
    /// The emulated PL011's SPI number (INTID = 32 + n).
    pub uart_spi: u32,
    pub timer: TimerIrqs,
    /// `pmu` (`arm,armv8-pmuv3`, its overflow PPI level-high, as the host's), or none.
    pub pmu: Option<Pmu>,
    pub bootargs: &'a str,
    /// Written as `linux,initrd-start`/`linux,initrd-end` in `/chosen`.
    pub initrd: Option<Region>,
}

/// phandles of the generated nodes, for [`build_guest_dtb_with_extra`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPhandles {
    pub gic: u32,
    pub apb_pclk: u32,
}

/// Builds the guest DTB described by `cfg`.
pub fn build_guest_dtb(cfg: &GuestDtbConfig) -> Vec<u8> {
    build_guest_dtb_with_extra(cfg, &|_, _| {})
}

/// Like [`build_guest_dtb`], then calls `extra` inside the root node to add more nodes
/// (virtio-mmio devices, Gunyah capabilities); it gets the phandles it may reference.
pub fn build_guest_dtb_with_extra(
    cfg: &GuestDtbConfig,
    extra: &dyn Fn(&mut FdtWriter, GuestPhandles),
) -> Vec<u8> {
    let mut w = FdtWriter::new();
    let phandles = GuestPhandles {
        apb_pclk: w.alloc_phandle(),
        gic: w.alloc_phandle(),
    };
    let uart_node = format!("pl011@{:x}", cfg.uart.base);

    w.begin_node("");
    w.property_u32("interrupt-parent", phandles.gic);
    w.property_string("model", "Bothy VM");
    w.property_u32("#size-cells", ROOT_SIZE_CELLS);
    w.property_u32("#address-cells", ROOT_ADDRESS_CELLS);
    w.property_string("compatible", "linux,dummy-virt");

    w.begin_node("psci");
    w.property_u32("migrate", PSCI_MIGRATE);
    w.property_u32("cpu_on", PSCI_CPU_ON);
    w.property_u32("cpu_off", PSCI_CPU_OFF);
    w.property_u32("cpu_suspend", PSCI_CPU_SUSPEND);
    w.property_string("method", "hvc");
    w.property_stringlist("compatible", super::platform::PSCI_COMPATIBLES);
    w.end_node();

    w.begin_node(&format!("memory@{:x}", cfg.ram.base));
    w.property_reg64(&[cfg.ram]);
    w.property_string("device_type", "memory");
    w.end_node();

    w.begin_node(&uart_node);
    w.property_stringlist("clock-names", &["uartclk", "apb_pclk"]);
    w.property_cells("clocks", &[phandles.apb_pclk, phandles.apb_pclk]);
    w.property_cells("interrupts", &[GIC_SPI, cfg.uart_spi, IRQ_TYPE_LEVEL_HIGH]);
    w.property_reg64(&[cfg.uart]);
    w.property_stringlist("compatible", &["arm,pl011", "arm,primecell"]);
    w.end_node();

    if let Some(pmu) = cfg.pmu {
        w.begin_node("pmu");
        w.property_cells("interrupts", &[GIC_PPI, pmu.ppi, IRQ_TYPE_LEVEL_HIGH]);
        w.property_string("compatible", PMU_COMPATIBLE);
        w.end_node();
    }

    w.begin_node(&format!("intc@{:x}", cfg.gic_dist.base));
    w.property_u32("phandle", phandles.gic);
    w.property_cells(
        "interrupts",
        &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
    );
    w.property_reg64(&[cfg.gic_dist, cfg.gic_redist]);
    w.property_u32("#redistributor-regions", GIC_REDIST_REGIONS);
    w.property_string("compatible", super::platform::GIC_V3_COMPATIBLE);
    // As QEMU: dtc wants #address-cells on an interrupt provider (interrupt-map users
    // read it), and `ranges` leaves room for an ITS child.
    w.property_empty("ranges");
    w.property_u32("#size-cells", ROOT_SIZE_CELLS);
    w.property_u32("#address-cells", ROOT_ADDRESS_CELLS);
    w.property_empty("interrupt-controller");
    w.property_u32("#interrupt-cells", GIC_INTERRUPT_CELLS);
    w.end_node();

    w.begin_node("cpus");
    w.property_u32("#size-cells", CPUS_SIZE_CELLS);
    w.property_u32("#address-cells", CPUS_ADDRESS_CELLS);
    for cpu in 0..cfg.vcpus {
        w.begin_node(&format!("cpu@{cpu:x}"));
        w.property_u32("reg", cpu);
        w.property_string("enable-method", "psci");
        w.property_string("compatible", "arm,armv8");
        w.property_string("device_type", "cpu");
        w.end_node();
    }
    w.end_node();

    w.begin_node("timer");
    let t = cfg.timer;
    let mut irqs = Vec::new();
    for ppi in [t.secure_phys, t.phys, t.virt, t.hyp_phys] {
        irqs.extend_from_slice(&[GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]);
    }
    w.property_cells("interrupts", &irqs);
    w.property_empty("always-on");
    w.property_stringlist("compatible", &["arm,armv8-timer", "arm,armv7-timer"]);
    w.end_node();

    w.begin_node("apb-pclk");
    w.property_u32("phandle", phandles.apb_pclk);
    w.property_string("clock-output-names", "clk24mhz");
    w.property_u32("clock-frequency", APB_PCLK_HZ);
    w.property_u32("#clock-cells", 0);
    w.property_string("compatible", "fixed-clock");
    w.end_node();

    w.begin_node("chosen");
    w.property_string("stdout-path", &format!("/{uart_node}"));
    w.property_string("bootargs", cfg.bootargs);
    if let Some(initrd) = cfg.initrd {
        w.property_u64("linux,initrd-start", initrd.base);
        w.property_u64("linux,initrd-end", initrd.end());
    }
    w.end_node();

    extra(&mut w, phandles);
    w.end_node();
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdt::platform::{Conduit, EnableMethod, Platform, UartKind};
    use crate::fdt::Fdt;
    use alloc::string::String;

    fn config() -> GuestDtbConfig<'static> {
        GuestDtbConfig {
            vcpus: 3,
            ram: Region::new(0x4000_0000, 0x2000_0000),
            gic_dist: Region::new(0x0800_0000, 0x1_0000),
            gic_redist: Region::new(0x080a_0000, 0xf6_0000),
            uart: Region::new(0x0900_0000, 0x1000),
            uart_spi: 1,
            timer: TimerIrqs {
                secure_phys: 13,
                phys: 14,
                virt: 11,
                hyp_phys: 10,
            },
            pmu: Some(Pmu { ppi: 7 }),
            bootargs: "console=ttyAMA0 earlycon",
            initrd: Some(Region::new(0x4800_0000, 0x10_0000)),
        }
    }

    #[test]
    fn guest_dtb_parses_back_as_a_platform() {
        let blob = build_guest_dtb(&config());
        let fdt = Fdt::new(&blob).unwrap();
        let p = Platform::discover(&fdt).unwrap();
        assert_eq!(p.memory, [Region::new(0x4000_0000, 0x2000_0000)]);
        assert!(p.reserved.is_empty());
        assert_eq!(p.cpus.len(), 3);
        for (i, cpu) in p.cpus.iter().enumerate() {
            assert_eq!(cpu.mpidr, i as u64);
            assert_eq!(cpu.enable_method, EnableMethod::Psci);
        }
        assert_eq!(p.gic.dist, config().gic_dist);
        assert_eq!(p.gic.redists, [config().gic_redist]);
        assert_eq!(p.gic.maintenance_ppi, Some(GIC_MAINTENANCE_PPI));
        assert_eq!(p.timer, config().timer);
        let uart = p.uart.unwrap();
        assert_eq!(
            (uart.base, uart.size, uart.spi, uart.kind),
            (0x0900_0000, 0x1000, Some(1), UartKind::Pl011)
        );
        assert_eq!(p.psci.unwrap().conduit, Conduit::Hvc);
        assert_eq!(p.pmu, Some(Pmu { ppi: 7 }));

        let root = fdt.root();
        assert_eq!(root.property_str("model"), Some("Bothy VM"));
        assert!(root.is_compatible("linux,dummy-virt"));
        assert_eq!((root.address_cells(), root.size_cells()), (2, 2));
        let gic = fdt.find_compatible("arm,gic-v3").unwrap();
        assert_eq!(root.property_u32("interrupt-parent"), gic.phandle());
        assert!(gic.has_property("interrupt-controller"));
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property_str("bootargs"),
            Some("console=ttyAMA0 earlycon")
        );
        assert_eq!(
            chosen.property("linux,initrd-start").unwrap().as_u64(),
            Some(0x4800_0000)
        );
        assert_eq!(
            chosen.property("linux,initrd-end").unwrap().as_u64(),
            Some(0x4810_0000)
        );
        let clk = fdt.find_node("/apb-pclk").unwrap();
        assert_eq!(clk.property_u32("clock-frequency"), Some(APB_PCLK_HZ));
        let pl011 = fdt.stdout_node().unwrap();
        let clocks: Vec<u32> = pl011
            .property("clocks")
            .unwrap()
            .as_u32_iter()
            .unwrap()
            .collect();
        assert_eq!(clocks, [clk.phandle().unwrap(); 2]);
        assert!(fdt
            .find_compatible("arm,armv8-timer")
            .unwrap()
            .has_property("always-on"));
    }

    #[test]
    fn extra_nodes_and_no_initrd() {
        let add = |w: &mut FdtWriter, ph: GuestPhandles| {
            w.begin_node("virtio_mmio@a000000");
            w.property_u32("interrupt-parent", ph.gic);
            w.property_string("compatible", "virtio,mmio");
            w.end_node();
        };
        let cfg = GuestDtbConfig {
            initrd: None,
            ..config()
        };
        let blob = build_guest_dtb_with_extra(&cfg, &add);
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt
            .find_node("/virtio_mmio@a000000")
            .unwrap()
            .is_compatible("virtio,mmio"));
        assert!(!fdt
            .find_node("/chosen")
            .unwrap()
            .has_property("linux,initrd-start"));
    }

    #[test]
    fn a_pmu_only_when_the_host_has_one() {
        let blob = build_guest_dtb(&config());
        let fdt = Fdt::new(&blob).unwrap();
        let pmu = fdt.find_compatible(PMU_COMPATIBLE).unwrap();
        let cells: Vec<u32> = pmu
            .property("interrupts")
            .unwrap()
            .as_u32_iter()
            .unwrap()
            .collect();
        assert_eq!(cells, [GIC_PPI, 7, IRQ_TYPE_LEVEL_HIGH]);
        let blob = build_guest_dtb(&GuestDtbConfig {
            pmu: None,
            ..config()
        });
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_compatible(PMU_COMPATIBLE).is_none());
        assert!(fdt.find_node("/pmu").is_none());
        assert_eq!(Platform::discover(&fdt).unwrap().pmu, None);
    }

    /// dtc is the reference implementation: it must accept the blob and, decompiled, it
    /// must show the nodes Linux needs.
    #[test]
    fn dtc_accepts_guest_dtb() {
        use std::process::Command;
        let blob = build_guest_dtb(&config());
        let dir = std::env::temp_dir().join(format!("bothy-guest-dtb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.dtb");
        std::fs::write(&path, &blob).unwrap();
        let out = match Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                std::println!("note: dtc not runnable ({e}); skipping the dtc check");
                return;
            }
        };
        std::fs::remove_dir_all(&dir).ok();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc failed: {stderr}");
        assert!(stderr.trim().is_empty(), "dtc warnings: {stderr}");
        let dts = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "compatible = \"arm,gic-v3\";",
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0xf60000>;",
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
            "stdout-path = \"/pl011@9000000\";",
            "compatible = \"arm,pl011\\0arm,primecell\";",
            "method = \"hvc\";",
            "cpu@2 {",
            "linux,initrd-start = <0x00 0x48000000>;",
            // As QEMU's node for the same PMU.
            "pmu {\n\t\tinterrupts = <0x01 0x07 0x04>;\n\t\tcompatible = \"arm,armv8-pmuv3\";",
        ] {
            assert!(dts.contains(needle), "missing {needle:?} in:\n{dts}");
        }
    }
}
