//! Parser tests: QEMU's real DTB, hand-built trees, and each header/structure error.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::fdt::spec::{FDT_NOP, FDT_PROP};
use crate::fdt::test_trees::{self, tree, QEMU_VIRT_GICV3_SMP2};
use crate::fdt::{header_total_size, Fdt, FdtError, FdtWriter};
use crate::Region;

fn set_be32(blob: &mut [u8], off: usize, v: u32) {
    blob[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn get_be32(blob: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(blob[off..off + 4].try_into().unwrap())
}

#[test]
fn qemu_dtb_header_and_lookup() {
    let blob = QEMU_VIRT_GICV3_SMP2;
    // QEMU's dump compacted with `dtc -I dtb -O dtb` (QEMU pads to 1 MiB).
    assert_eq!(header_total_size(&blob[..8]), Ok(blob.len()));
    assert_eq!(header_total_size(&blob[..40]), Ok(blob.len()));
    let fdt = Fdt::new(blob).unwrap();
    assert_eq!(
        (fdt.version(), fdt.total_size(), fdt.boot_cpuid_phys()),
        (17, blob.len(), 0)
    );
    assert_eq!(fdt.memory_reservations().count(), 0);

    let root = fdt.root();
    assert_eq!(root.name(), "");
    assert!(root.is_compatible("linux,dummy-virt"));
    assert_eq!(fdt.find_node("/").unwrap().name(), "");

    let chosen = fdt.find_node("/chosen").unwrap();
    assert_eq!(chosen.property_str("stdout-path"), Some("/pl011@9000000"));
    assert_eq!(fdt.stdout_path(), Some(("/pl011@9000000", None)));
    assert_eq!(fdt.stdout_node().unwrap().name(), "pl011@9000000");

    // Unit addresses: exact match, or any when the path omits it.
    let cpu1 = fdt.find_node("/cpus/cpu@1").unwrap();
    assert_eq!(
        (cpu1.name(), cpu1.base_name(), cpu1.unit_address()),
        ("cpu@1", "cpu", Some("1"))
    );
    assert_eq!(
        cpu1.reg().unwrap().unwrap().collect::<Vec<_>>(),
        [Region::new(1, 0)]
    );
    assert_eq!(fdt.find_node("/cpus/cpu").unwrap().name(), "cpu@0");
    assert!(fdt.find_node("/cpus/cpu@2").is_none());
    assert!(fdt.find_node("/nope").is_none());
    assert_eq!(fdt.find_node("//cpus//cpu@1/").unwrap().name(), "cpu@1");
    assert_eq!(
        fdt.find_node("/cpus/cpu-map/socket0/cluster0/core1")
            .unwrap()
            .property_u32("cpu"),
        cpu1.phandle()
    );

    let cpus: Vec<&str> = fdt
        .find_node("/cpus")
        .unwrap()
        .children()
        .map(|c| c.name())
        .collect();
    assert_eq!(cpus, ["cpu-map", "cpu@0", "cpu@1"]);
    assert_eq!(root.children().count(), 48);
    // + cpu-map/socket0/cluster0/core0/core1, cpu@0, cpu@1, gpio-keys/poweroff, intc/its
    assert_eq!(fdt.nodes().count(), 1 + 48 + 5 + 2 + 1 + 1);
    assert_eq!(fdt.compatible_nodes("virtio,mmio").count(), 32);

    let gic = fdt.find_compatible("arm,gic-v3").unwrap();
    assert_eq!(gic.name(), "intc@8000000");
    let regs: Vec<Region> = gic.reg().unwrap().unwrap().collect();
    assert_eq!(
        regs,
        [
            Region::new(0x800_0000, 0x1_0000),
            Region::new(0x80a_0000, 0xf6_0000)
        ]
    );
    assert_eq!(fdt.node_by_phandle(0x8003).unwrap().name(), "intc@8000000");
    assert_eq!(fdt.node_by_phandle(0x8005).unwrap().name(), "pl061@9030000");
    assert!(fdt.node_by_phandle(0).is_none() && fdt.node_by_phandle(0x1234).is_none());
    let its = gic.child("its").unwrap();
    assert_eq!(its.parent_cells(), (2, 2));
    assert_eq!(
        its.reg_translated().unwrap().unwrap(),
        [Region::new(0x808_0000, 0x2_0000)]
    );

    let pcie = fdt.find_node("/pcie@10000000").unwrap();
    assert_eq!(
        pcie.reg().unwrap().unwrap().next(),
        Some(Region::new(0x40_1000_0000, 0x1000_0000))
    );
    assert_eq!(pcie.address_cells(), 3);

    let timer = fdt.find_node("/timer").unwrap();
    let irqs: Vec<u32> = timer
        .property("interrupts")
        .unwrap()
        .as_u32_iter()
        .unwrap()
        .collect();
    assert_eq!(irqs, [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);
    assert!(timer.property("always-on").unwrap().is_empty());
    let compat: Vec<&str> = timer.compatible().collect();
    assert_eq!(compat, ["arm,armv8-timer", "arm,armv7-timer"]);
    let mem = fdt.find_node("/memory").unwrap();
    assert_eq!(mem.device_type(), Some("memory"));
    assert!(mem.is_enabled());
}

#[test]
fn property_accessors() {
    let blob = tree(|w| {
        w.begin_node("n");
        w.property("two-strings", b"ab\0cd\0");
        w.property("embedded-nul", b"ab\0cd");
        w.property("not-utf8", b"\xff\0");
        w.property_u64("u64", 0x1_0000_0002);
        w.property_u32("u32", 7);
        w.property("odd", &[1, 2, 3]);
        w.end_node();
    });
    let fdt = Fdt::new(&blob).unwrap();
    let n = fdt.find_node("/n").unwrap();
    let p = |name| n.property(name).unwrap();
    assert_eq!(p("two-strings").as_str(), None);
    assert_eq!(
        p("two-strings").as_stringlist().collect::<Vec<_>>(),
        ["ab", "cd"]
    );
    assert_eq!(p("embedded-nul").as_str(), None);
    assert_eq!(
        p("embedded-nul").as_stringlist().collect::<Vec<_>>(),
        ["ab"]
    );
    assert_eq!(p("not-utf8").as_str(), None);
    assert_eq!(p("not-utf8").as_stringlist().count(), 0);
    assert_eq!(p("u64").as_u64(), Some(0x1_0000_0002));
    assert_eq!(p("u64").as_uint(), Some(0x1_0000_0002));
    assert_eq!(p("u64").as_u32(), None);
    assert_eq!(p("u32").as_uint(), Some(7));
    assert_eq!(p("u32").as_u64(), None);
    assert!(p("odd").as_u32_iter().is_none());
    assert_eq!(n.properties().count(), 6);
    assert!(!n.is_compatible("x"));
}

#[test]
fn reg_honours_parent_cells() {
    let blob = tree(|w| {
        w.begin_node("bus32");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 1);
        w.begin_node("dev@1000");
        w.property_u32_array("reg", &[0x1000, 0x100, 0x2000, 0x200]);
        w.end_node();
        w.begin_node("bad@0");
        w.property_u32_array("reg", &[0x1000, 0x100, 0x2000]);
        w.end_node();
        w.end_node();
        w.begin_node("defaults");
        w.begin_node("dev");
        w.property_u32_array("reg", &[0x1, 0x2, 0x3]); // default 2 address + 1 size cell
        w.end_node();
        w.end_node();
        w.begin_node("pci");
        w.property_u32("#address-cells", 3);
        w.begin_node("dev");
        w.property_u32_array("reg", &[0, 0, 0, 0]);
        w.end_node();
        w.end_node();
    });
    let fdt = Fdt::new(&blob).unwrap();
    let reg = |path| {
        fdt.find_node(path)
            .unwrap()
            .reg()
            .map(|r| r.map(|r| r.collect::<Vec<_>>()))
    };
    assert_eq!(
        reg("/bus32/dev@1000"),
        Ok(Some(alloc::vec![
            Region::new(0x1000, 0x100),
            Region::new(0x2000, 0x200)
        ]))
    );
    assert_eq!(
        reg("/defaults/dev"),
        Ok(Some(alloc::vec![Region::new(0x1_0000_0002, 3)]))
    );
    assert_eq!(reg("/bus32"), Ok(None));
    assert_eq!(
        reg("/bus32/bad").unwrap_err().to_string(),
        "device tree: node bad@0: reg is 12 bytes, not a whole number of (address, size) entries"
    );
    assert_eq!(
        reg("/pci/dev").unwrap_err(),
        FdtError::UnsupportedCells {
            node: "dev".into(),
            address_cells: 3,
            size_cells: 1
        }
    );
}

#[test]
fn reg_translation_through_ranges() {
    // Raspberry Pi 4 style: a 32-bit /soc bus whose 0x7e000000 window maps to 0xfe000000.
    let blob = tree(|w| {
        w.begin_node("soc");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 1);
        w.property_u32_array("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
        w.begin_node("serial@7e201000");
        w.property_u32_array("reg", &[0x7e20_1000, 0x200]);
        w.end_node();
        w.begin_node("outside@1000");
        w.property_u32_array("reg", &[0x1000, 0x200]);
        w.end_node();
        w.begin_node("identity");
        w.property_empty("ranges");
        w.property_u32("#address-cells", 1);
        w.property_u32("#size-cells", 1);
        w.begin_node("dev@7e000000");
        w.property_u32_array("reg", &[0x7e00_0010, 0x10]);
        w.end_node();
        w.end_node();
        w.end_node();
        w.begin_node("noranges");
        w.begin_node("dev");
        w.property_u32_array("reg", &[0, 0x10, 0x20]);
        w.end_node();
        w.end_node();
    });
    let fdt = Fdt::new(&blob).unwrap();
    let tr = |path| fdt.find_node(path).unwrap().reg_translated().unwrap();
    assert_eq!(
        tr("/soc/serial"),
        Some(alloc::vec![Region::new(0xfe20_1000, 0x200)])
    );
    assert_eq!(tr("/soc/outside"), None);
    assert_eq!(
        tr("/soc/identity/dev"),
        Some(alloc::vec![Region::new(0xfe00_0010, 0x10)])
    );
    assert_eq!(tr("/noranges/dev"), None);
    let anc: Vec<&str> = fdt
        .find_node("/soc/identity/dev")
        .unwrap()
        .ancestors()
        .unwrap()
        .iter()
        .map(|n| n.name())
        .collect();
    assert_eq!(anc, ["", "soc", "identity"]);
}

#[test]
fn aliases_and_stdout_options() {
    let blob = tree(|w| {
        w.begin_node("aliases");
        w.property_string("serial0", "/soc/uart@1000");
        w.property_string("relative", "soc");
        w.end_node();
        w.begin_node("soc");
        w.begin_node("uart@1000");
        w.begin_node("child");
        w.end_node();
        w.end_node();
        w.end_node();
        test_trees::chosen(w, "serial0:115200n8");
    });
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(fdt.alias("serial0"), Some("/soc/uart@1000"));
    assert_eq!(fdt.find_node("serial0").unwrap().name(), "uart@1000");
    assert_eq!(fdt.find_node("serial0/child").unwrap().name(), "child");
    assert!(
        fdt.find_node("relative").is_none(),
        "alias values must be absolute"
    );
    assert!(fdt.find_node("missing").is_none());
    assert_eq!(fdt.stdout_path(), Some(("serial0", Some("115200n8"))));
    assert_eq!(fdt.stdout_node().unwrap().name(), "uart@1000");
}

#[test]
fn memreserve_and_padding_and_v16() {
    let mut w = FdtWriter::new();
    w.memreserve(Region::new(0x1000, 0x2000));
    w.memreserve(Region::new(0x8000_0000, 0x10_0000));
    w.begin_node("");
    w.end_node();
    let mut blob = w.finish();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(
        fdt.memory_reservations().collect::<Vec<_>>(),
        [
            Region::new(0x1000, 0x2000),
            Region::new(0x8000_0000, 0x10_0000)
        ]
    );
    // Extra bytes behind the blob are ignored; extra space inside totalsize is allowed.
    blob.extend_from_slice(&[0xff; 64]);
    assert_eq!(Fdt::new(&blob).unwrap().total_size(), blob.len() - 64);
    let len = blob.len() as u32;
    set_be32(&mut blob, 4, len);
    assert!(Fdt::new(&blob).is_ok());
    // Version 16 has no size_dt_struct: the structure block runs to the blob's end.
    set_be32(&mut blob, 20, 16);
    set_be32(&mut blob, 36, 0);
    assert!(Fdt::new(&blob).unwrap().root().children().next().is_none());
}

#[test]
fn nops_are_skipped() {
    let blob = tree(|w| {
        w.begin_node("n");
        w.property_u32("gone", 0xdead);
        w.property_u32("kept", 2);
        w.end_node();
    });
    let mut blob = blob;
    // Overwrite the 16-byte "gone" property (token, len, nameoff, value) with NOPs.
    let off_struct = get_be32(&blob, 8) as usize;
    let size_struct = get_be32(&blob, 36) as usize;
    let gone = (off_struct..off_struct + size_struct)
        .step_by(4)
        .find(|&o| {
            get_be32(&blob, o) == FDT_PROP
                && get_be32(&blob, o + 4) == 4
                && get_be32(&blob, o + 12) == 0xdead
        })
        .unwrap();
    for o in (gone..gone + 16).step_by(4) {
        set_be32(&mut blob, o, FDT_NOP);
    }
    let fdt = Fdt::new(&blob).unwrap();
    let n = fdt.find_node("/n").unwrap();
    assert_eq!(n.properties().map(|p| p.name).collect::<Vec<_>>(), ["kept"]);
}

fn err(bytes: &[u8]) -> String {
    Fdt::new(bytes).unwrap_err().to_string()
}
use alloc::string::String;

#[test]
fn header_errors_explain_themselves() {
    let good = tree(|_| {});
    assert_eq!(
        err(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]),
        "device tree: bad magic 0x12345678 (expected 0xd00dfeed); this is not a DTB"
    );
    assert_eq!(
        err(&good[..20]),
        "device tree: only 20 bytes, but the header needs 40 (is the DTB address right?)"
    );
    assert_eq!(
        header_total_size(&good[..7]),
        Err(FdtError::TooShort { len: 7, needed: 8 })
    );
    assert_eq!(
        header_total_size(b"\xd0\x0d\xfe\xed\0\0\0\x10"),
        Err(FdtError::BadTotalSize {
            totalsize: 16,
            available: 8
        })
    );

    let mut b = good.clone();
    set_be32(&mut b, 4, good.len() as u32 + 1);
    assert!(err(&b).starts_with(&alloc::format!(
        "device tree: header says totalsize {:#x}",
        good.len() + 1
    )));

    let mut b = good.clone();
    set_be32(&mut b, 20, 15);
    assert_eq!(
        err(&b),
        "device tree: unsupported version 15 (compatible back to 16); Bothy reads versions 16..=17"
    );

    let mut b = good.clone();
    set_be32(&mut b, 12, 0xffff_fff0);
    assert!(
        err(&b).starts_with("device tree: strings block at offset 0xfffffff0"),
        "{}",
        err(&b)
    );

    let mut b = good.clone();
    set_be32(&mut b, 8, get_be32(&good, 8) + 2);
    set_be32(&mut b, 36, 4);
    assert!(err(&b).ends_with("is not 4-byte aligned"));

    let mut b = good.clone();
    set_be32(&mut b, 36, get_be32(&good, 36) - 8);
    let end = get_be32(&good, 8) + get_be32(&good, 36) - 8;
    assert_eq!(
        err(&b),
        alloc::format!("device tree: structure block truncated at offset {end:#x}")
    );
}

#[test]
fn structure_errors() {
    let good = tree(|w| {
        w.begin_node("a");
        w.end_node();
    });
    let off_struct = get_be32(&good, 8) as usize;
    // Root begin, root name "" padded (4), then 3 root properties of 16 bytes each.
    let child = off_struct + 8 + 3 * 16;
    assert_eq!(get_be32(&good, child), 1);

    let mut b = good.clone();
    set_be32(&mut b, child, 0x7);
    assert_eq!(
        err(&b),
        alloc::format!("device tree: unexpected token 0x7 at offset {child:#x}")
    );

    let mut b = good.clone();
    set_be32(&mut b, child, 2); // END_NODE closes the root early; then "a\0" is a bad token
    assert!(err(&b).starts_with("device tree: unexpected token"));

    // The property's name offset points past the strings block.
    let mut b = good.clone();
    set_be32(&mut b, off_struct + 8 + 8, 0x1000);
    assert!(
        err(&b).contains("has a bad name offset 0x1000"),
        "{}",
        err(&b)
    );

    // Too deep.
    let deep = tree(|w| {
        for _ in 0..40 {
            w.begin_node("d");
        }
        for _ in 0..40 {
            w.end_node();
        }
    });
    assert!(err(&deep).starts_with("device tree: nodes nested deeper than 32 levels"));

    // No FDT_END: the last token replaced by NOP runs off the block.
    let mut b = good.clone();
    let last = off_struct + get_be32(&good, 36) as usize - 4;
    set_be32(&mut b, last, FDT_NOP);
    assert_eq!(
        err(&b),
        alloc::format!(
            "device tree: structure block truncated at offset {:#x}",
            last + 4
        )
    );

    // Memory reservation block without terminator.
    let mut b = good.clone();
    b[40..56].fill(0xff);
    set_be32(&mut b, 8, 56); // struct now begins right after the (unterminated) entry
    set_be32(&mut b, 36, 0);
    let e = Fdt::new(&b).unwrap_err();
    assert!(
        matches!(
            e,
            FdtError::MemReserveUnterminated { .. } | FdtError::StructTruncated { .. }
        ),
        "{e}"
    );
}
