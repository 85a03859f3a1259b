//! Discovery against QEMU's real DTB and against trees missing or varying one piece.

use alloc::string::ToString;
use alloc::vec::Vec;

use super::*;
use crate::fdt::test_trees::{self as t, full_platform, tree, QEMU_VIRT_GICV3_SMP2};
use crate::fdt::FdtWriter;

fn discover(blob: &[u8]) -> Result<Platform, PlatformError> {
    Platform::discover(&Fdt::new(blob).unwrap())
}

fn error(blob: &[u8]) -> String {
    discover(blob).unwrap_err().to_string()
}

#[test]
fn qemu_virt_gicv3() {
    let p = discover(QEMU_VIRT_GICV3_SMP2).unwrap();
    assert_eq!(
        p,
        Platform {
            memory: alloc::vec![Region::new(0x4000_0000, 0x4000_0000)],
            reserved: Vec::new(),
            cpus: alloc::vec![
                Cpu {
                    mpidr: 0,
                    enable_method: EnableMethod::Psci
                },
                Cpu {
                    mpidr: 1,
                    enable_method: EnableMethod::Psci
                },
            ],
            gic: GicV3 {
                dist: Region::new(0x800_0000, 0x1_0000),
                redists: alloc::vec![Region::new(0x80a_0000, 0xf6_0000)],
                redist_stride: None,
                maintenance_ppi: Some(9),
            },
            timer: TimerIrqs {
                secure_phys: 13,
                phys: 14,
                virt: 11,
                hyp_phys: 10
            },
            uart: Some(Uart {
                base: 0x900_0000,
                size: 0x1000,
                spi: Some(1),
                kind: UartKind::Pl011
            }),
            psci: Some(Psci {
                conduit: Conduit::Smc
            }),
            pmu: Some(Pmu { ppi: 7 }),
        }
    );
    assert_eq!(p.pmu.unwrap().intid(), 23, "QEMU virt's PMU overflow INTID");
}

#[test]
fn hand_built_full_platform() {
    let p = discover(&full_platform(|_| {})).unwrap();
    assert_eq!(p.cpus.len(), 2);
    assert_eq!(p.uart.unwrap().base, 0x900_0000);
}

#[test]
fn memory_but_no_gic() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::cpus(w, 1);
        t::timer(w);
    });
    assert_eq!(
        error(&blob),
        "device tree has no GICv3 (compatible \"arm,gic-v3\") interrupt controller; Bothy needs GICv3"
    );
}

#[test]
fn gicv2_only_is_named() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v2(w);
        t::cpus(w, 1);
        t::timer(w);
    });
    assert_eq!(
        error(&blob),
        "device tree has no GICv3 (compatible \"arm,gic-v3\") interrupt controller; Bothy needs \
         GICv3 (found interrupt-controller@8000000, compatible \"arm,cortex-a15-gic\": a GICv2)"
    );
}

#[test]
fn no_memory() {
    let blob = tree(|w| {
        t::gic_v3(w);
        t::cpus(w, 1);
        t::timer(w);
    });
    assert_eq!(error(&blob), "device tree has no /memory node");
    let blob = tree(|w| {
        w.begin_node("memory@0");
        w.property_string("device_type", "memory");
        w.end_node();
        t::gic_v3(w);
    });
    assert_eq!(
        error(&blob),
        "memory node /memory@0 has no reg with a non-zero size"
    );
}

#[test]
fn several_memory_nodes_and_entries() {
    let blob = full_platform(|w| {
        w.begin_node("memory@100000000");
        w.property_string("device_type", "memory");
        w.property_reg64(&[
            Region::new(0x1_0000_0000, 0x8000_0000),
            Region::new(0x2_0000_0000, 0),
        ]);
        w.end_node();
        w.begin_node("memory@300000000");
        w.property_string("device_type", "memory");
        w.property_string("status", "disabled");
        w.property_reg64(&[Region::new(0x3_0000_0000, 0x1000)]);
        w.end_node();
    });
    assert_eq!(
        discover(&blob).unwrap().memory,
        [
            Region::new(0x4000_0000, 0x4000_0000),
            Region::new(0x1_0000_0000, 0x8000_0000)
        ]
    );
}

#[test]
fn reserved_memory() {
    let mut w = FdtWriter::new();
    w.memreserve(Region::new(0x4800_0000, 0x1000));
    w.begin_node("");
    w.property_u32("#address-cells", 2);
    w.property_u32("#size-cells", 2);
    t::memory(&mut w, 0x4000_0000, 0x4000_0000);
    t::gic_v3(&mut w);
    t::timer(&mut w);
    t::cpus(&mut w, 1);
    w.begin_node("reserved-memory");
    w.property_u32("#address-cells", 2);
    w.property_u32("#size-cells", 1);
    w.property_empty("ranges");
    w.begin_node("tee@4e000000");
    w.property_u32_array("reg", &[0, 0x4e00_0000, 0x20_0000]);
    w.property_empty("no-map");
    w.end_node();
    w.begin_node("cma");
    w.property_u32("size", 0x100_0000); // placed by the OS: nothing to reserve
    w.end_node();
    w.begin_node("off@50000000");
    w.property_string("status", "disabled");
    w.property_u32_array("reg", &[0, 0x5000_0000, 0x1000]);
    w.end_node();
    w.end_node();
    w.end_node();
    let p = discover(&w.finish()).unwrap();
    assert_eq!(
        p.reserved,
        [
            Region::new(0x4800_0000, 0x1000),
            Region::new(0x4e00_0000, 0x20_0000)
        ]
    );
    assert_eq!((p.uart, p.psci), (None, None));
}

#[test]
fn cpus_one_and_two_cell_reg_and_spin_table() {
    let two_cells = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        w.begin_node("cpus");
        w.property_u32("#address-cells", 2);
        w.property_u32("#size-cells", 0);
        w.begin_node("cpu-map");
        w.end_node();
        w.begin_node("cpu@0");
        w.property_string("device_type", "cpu");
        w.property_u32_array("reg", &[0, 0]);
        w.end_node();
        w.begin_node("cpu@100000101");
        w.property_string("device_type", "cpu");
        w.property_u32_array("reg", &[0x1, 0x101]);
        w.property_string("enable-method", "spin-table");
        w.property_u64("cpu-release-addr", 0x8000_fff8);
        w.end_node();
        w.begin_node("cpu@2");
        w.property_string("device_type", "cpu");
        w.property_string("status", "fail");
        w.property_u32_array("reg", &[0, 2]);
        w.end_node();
        w.end_node();
    });
    assert_eq!(
        discover(&two_cells).unwrap().cpus,
        [
            Cpu {
                mpidr: 0,
                enable_method: EnableMethod::Other
            },
            Cpu {
                mpidr: 0x1_0000_0101,
                enable_method: EnableMethod::SpinTable {
                    release_addr: 0x8000_fff8
                }
            },
        ]
    );
    let one_cell = full_platform(|_| {});
    let cpus = discover(&one_cell).unwrap().cpus;
    assert_eq!(cpus.iter().map(|c| c.mpidr).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn cpu_errors() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        w.begin_node("cpus");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 0);
        w.begin_node("cpu@0");
        w.property_string("device_type", "cpu");
        w.property_u32("reg", 0);
        w.end_node();
        w.begin_node("cpu@1");
        w.property_string("device_type", "cpu");
        w.end_node();
        w.end_node();
    });
    assert_eq!(error(&blob), "cpu node /cpus/cpu@1 has no reg");
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        w.begin_node("cpus");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 0);
        w.begin_node("cpu@0");
        w.property_string("device_type", "cpu");
        w.property_string("enable-method", "spin-table");
        w.property_u32("reg", 0);
        w.end_node();
        w.end_node();
    });
    assert_eq!(
        error(&blob),
        "cpu node /cpus/cpu@0 has enable-method \"spin-table\" but no cpu-release-addr"
    );
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
    });
    assert_eq!(
        error(&blob),
        "device tree has no /cpus node with cpu children"
    );
}

#[test]
fn stdout_path_via_alias_with_options() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        t::cpus(w, 1);
        w.begin_node("aliases");
        w.property_string("serial0", "/pl011@9000000");
        w.end_node();
        t::pl011(w, "pl011@9000000");
        t::chosen(w, "serial0:115200n8");
    });
    let uart = discover(&blob).unwrap().uart.unwrap();
    assert_eq!(
        uart,
        Uart {
            base: 0x900_0000,
            size: 0x1000,
            spi: Some(1),
            kind: UartKind::Pl011
        }
    );
}

#[test]
fn stdout_errors_and_unknown_uart() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        t::cpus(w, 1);
        t::chosen(w, "serial9:115200n8");
    });
    assert_eq!(
        error(&blob),
        "/chosen/stdout-path \"serial9\" does not name a node or alias"
    );
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        t::cpus(w, 1);
        w.begin_node("soc");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 1);
        w.property_u32_array("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
        w.begin_node("serial@7e215040");
        w.property_string("compatible", "brcm,bcm2835-aux-uart");
        w.property_u32_array("reg", &[0x7e21_5040, 0x40]);
        w.end_node();
        w.end_node();
        t::chosen(w, "/soc/serial@7e215040");
    });
    let uart = discover(&blob).unwrap().uart.unwrap();
    assert_eq!(
        uart,
        Uart {
            base: 0xfe21_5040,
            size: 0x40,
            spi: None,
            kind: UartKind::Unknown
        }
    );
}

#[test]
fn gic_variants() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        w.begin_node("timer");
        w.property_string("compatible", "arm,armv8-timer");
        w.property_cells(
            "interrupts",
            &[1, 13, 4, 0, 1, 14, 4, 0, 1, 11, 4, 0, 1, 10, 4, 0],
        );
        w.end_node();
        t::cpus(w, 1);
        w.begin_node("interrupt-controller@2f000000");
        w.property_string("compatible", "arm,gic-v3");
        w.property_u32("phandle", t::GIC_PHANDLE);
        w.property_u32("#interrupt-cells", 4); // PPI partitions: <type num flags partition>
        w.property_empty("interrupt-controller");
        w.property_u32("#redistributor-regions", 2);
        w.property_u64("redistributor-stride", 0x4_0000);
        w.property_reg64(&[
            Region::new(0x2f00_0000, 0x1_0000),
            Region::new(0x2f10_0000, 0x10_0000),
            Region::new(0x2f30_0000, 0x10_0000),
            Region::new(0x2c00_0000, 0x2000), // GICC, ignored
        ]);
        w.property_cells("interrupts", &[1, 9, 4, 0]);
        w.end_node();
    });
    let gic = discover(&blob).unwrap().gic;
    assert_eq!(gic.dist, Region::new(0x2f00_0000, 0x1_0000));
    assert_eq!(
        gic.redists,
        [
            Region::new(0x2f10_0000, 0x10_0000),
            Region::new(0x2f30_0000, 0x10_0000)
        ]
    );
    assert_eq!(
        (gic.redist_stride, gic.maintenance_ppi),
        (Some(0x4_0000), Some(9))
    );

    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::timer(w);
        t::cpus(w, 1);
        w.begin_node("intc");
        w.property_string("compatible", "arm,gic-v3");
        w.property_u32("#redistributor-regions", 3);
        w.property_reg64(&[Region::new(0x2f00_0000, 0x1_0000)]);
        w.end_node();
    });
    assert_eq!(
        error(&blob),
        "GICv3 node intc: reg has 1 region(s) but the distributor and #redistributor-regions need 4"
    );
}

#[test]
fn timer_and_psci_errors() {
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::cpus(w, 1);
    });
    assert_eq!(
        error(&blob),
        "device tree has no \"arm,armv8-timer\" architected timer node"
    );
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::cpus(w, 1);
        w.begin_node("timer");
        w.property_string("compatible", "arm,armv8-timer");
        w.property_cells("interrupts", &[1, 13, 4, 1, 14, 4, 0, 11, 4, 1, 10, 4]);
        w.end_node();
    });
    assert_eq!(
        error(&blob),
        "node timer: interrupts of the timer must all be PPIs below 16"
    );
    let blob = full_platform(|w| {
        w.begin_node("psci-alt");
        w.property_string("compatible", "arm,psci-0.2");
        w.end_node();
    });
    // The first PSCI node (method "smc") wins.
    assert_eq!(
        discover(&blob).unwrap().psci,
        Some(Psci {
            conduit: Conduit::Smc
        })
    );
    let blob = tree(|w| {
        t::memory(w, 0x4000_0000, 0x1000_0000);
        t::gic_v3(w);
        t::timer(w);
        t::cpus(w, 1);
        t::psci(w, "svc");
    });
    assert_eq!(
        error(&blob),
        "PSCI node psci: method \"svc\" is neither \"smc\" nor \"hvc\""
    );
}

fn with_pmu(compatible: &[&str], interrupts: &[u32]) -> Option<Pmu> {
    let blob = full_platform(|w| {
        w.begin_node("pmu");
        w.property_cells("interrupts", interrupts);
        w.property_stringlist("compatible", compatible);
        w.end_node();
    });
    discover(&blob).unwrap().pmu
}

#[test]
fn pmu_is_found_only_as_one_level_high_ppi() {
    assert_eq!(
        discover(&full_platform(|_| {})).unwrap().pmu,
        None,
        "no node"
    );
    assert_eq!(
        with_pmu(&["arm,armv8-pmuv3"], &[1, 7, 4]),
        Some(Pmu { ppi: 7 })
    );
    // A core-specific compatible; a GICv2-style CPU mask in the flags is ignored.
    assert_eq!(
        with_pmu(&["arm,cortex-a72-pmu"], &[1, 9, 0xf04]),
        Some(Pmu { ppi: 9 })
    );
    assert_eq!(
        with_pmu(&["arm,armv8-pmuv3"], &[1, 7, 0]),
        Some(Pmu { ppi: 7 })
    );
    // Per-CPU SPIs (interrupt-affinity boards), an edge-triggered PPI, a PPI number out
    // of range, no interrupts, malformed interrupts, another PMU: not offered.
    assert_eq!(with_pmu(&["arm,armv8-pmuv3"], &[0, 40, 4, 0, 41, 4]), None);
    assert_eq!(with_pmu(&["arm,armv8-pmuv3"], &[1, 7, 1]), None);
    assert_eq!(with_pmu(&["arm,armv8-pmuv3"], &[1, 16, 4]), None);
    assert_eq!(with_pmu(&["arm,armv8-pmuv3"], &[]), None);
    assert_eq!(
        with_pmu(&["arm,armv8-pmuv3"], &[1, 7]),
        None,
        "not whole specifiers"
    );
    assert_eq!(
        with_pmu(&["arm,neoverse-n1-pmu"], &[1, 7, 4]),
        Some(Pmu { ppi: 7 })
    );
    assert_eq!(
        with_pmu(&["arm,dsu-pmu"], &[1, 7, 4]),
        None,
        "not the CPU's PMU"
    );
}

#[test]
fn a_disabled_pmu_is_not_offered() {
    let blob = full_platform(|w| {
        w.begin_node("pmu");
        w.property_cells("interrupts", &[1, 7, 4]);
        w.property_string("compatible", "arm,armv8-pmuv3");
        w.property_string("status", "disabled");
        w.end_node();
    });
    assert_eq!(discover(&blob).unwrap().pmu, None);
}
