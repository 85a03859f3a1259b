//! `bothy image` end to end: the file it writes parses back (hypervisor Image header,
//! payload header, manifest, blobs), with a synthetic hypervisor ELF so this runs
//! without the aarch64 toolchain, and with the real one when `hyp/` builds.

mod common;

use assert_cmd::Command;
use bothy_cli::testutil::{fake_image, make_elf};
use bothy_core::image::{payload_offset, PayloadHeader};
use bothy_core::linux::ImageHeader;
use bothy_core::manifest::Manifest;
use flate2::{write::GzEncoder, Compression};
use std::io::Write;

/// A system dir with a gzip-compressed kernel (the packer must unpack it) and an initrd.
fn system_dir() -> (tempfile::TempDir, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    let kernel = fake_image(300_000);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&kernel).unwrap();
    std::fs::write(d.path().join("Image.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(d.path().join("initrd.gz"), vec![0x5a; 12_345]).unwrap();
    std::fs::write(
        d.path().join("system.toml"),
        r#"
[[vm]]
name = "linux0"
cpus = 1
memory = "128M"
kernel = "Image.gz"
initrd = "initrd.gz"
bootargs = "console=ttyAMA0 loglevel=8"

[[vm]]
name = "linux1"
cpus = 1
memory = "64M"
kernel = "Image.gz"
"#,
    )
    .unwrap();
    (d, kernel)
}

/// Parses an image file back and checks every layer against what went in.
fn check_image(file: &[u8], hyp_mem: u64, kernel: &[u8]) {
    let hh = ImageHeader::parse(file).expect("hypervisor Image header");
    assert_eq!(hh.image_size % (2 << 20), 0, "image_size is 2 MiB aligned");
    assert!(
        hh.image_size >= file.len() as u64,
        "image_size covers the file"
    );

    let poff = payload_offset(hyp_mem) as usize;
    let payload = &file[poff..];
    let ph = PayloadHeader::decode(payload).expect("payload header");
    assert_eq!(ph.total_size as usize, payload.len());
    let m = &payload[ph.manifest_offset as usize..][..ph.manifest_size as usize];
    let m = Manifest::decode(m).expect("manifest");
    assert_eq!(m.early_console.map(|c| c.pl011_base), Some(0x0900_0000));
    assert_eq!(m.vms.len(), 2);
    let (a, b) = (&m.vms[0], &m.vms[1]);
    assert_eq!(
        (a.name.as_str(), a.cpus, a.memory),
        ("linux0", 1, 128 << 20)
    );
    assert_eq!(a.bootargs, "console=ttyAMA0 loglevel=8");
    assert_eq!(b.bootargs, "console=ttyAMA0", "default bootargs");
    for vm in [a, b] {
        ph.check_ref(vm.kernel.offset, vm.kernel.size).unwrap();
        let k = &payload[vm.kernel.offset as usize..][..vm.kernel.size as usize];
        assert_eq!(k, kernel, "{}: kernel stored decompressed", vm.name);
    }
    let i = a.initrd.expect("initrd");
    ph.check_ref(i.offset, i.size).unwrap();
    assert!(payload[i.offset as usize..][..i.size as usize]
        .iter()
        .all(|&x| x == 0x5a));
    assert_eq!(b.initrd, None);
}

#[test]
fn image_with_synthetic_hypervisor_parses_back() {
    let (d, kernel) = system_dir();
    let head = fake_image(4096);
    // Text, then a gap, then .bss-like memsz > filesz: flat size 0x23000.
    let elf = make_elf(&[(0, &head, 4096), (0x10000, b"data", 0x13000)]);
    let elf_path = d.path().join("hyp.elf");
    std::fs::write(&elf_path, elf).unwrap();
    let out = d.path().join("out.img");
    Command::new(common::bothy())
        .arg("image")
        .arg(d.path().join("system.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--hyp")
        .arg(&elf_path)
        .assert()
        .success();
    let file = std::fs::read(&out).unwrap();
    // The hypervisor's bytes are copied as they are, except image_size (offset 16),
    // patched to the whole file rounded up to 2 MiB.
    let mut want = head.clone();
    want[16..24].copy_from_slice(&(2u64 << 20).to_le_bytes());
    assert_eq!(&file[..4096], &want[..]);
    assert!(
        file[0x1_0004..0x2_3000].iter().all(|&b| b == 0),
        ".bss zero-filled"
    );
    check_image(&file, 0x23000, &kernel);
}

#[test]
fn image_with_real_hypervisor_parses_back() {
    assert!(common::hyp_present(), "hyp/ is missing");
    let (d, kernel) = system_dir();
    let out = d.path().join("out.img");
    Command::new(common::bothy())
        .arg("image")
        .arg(d.path().join("system.toml"))
        .arg("-o")
        .arg(&out)
        .timeout(std::time::Duration::from_secs(600))
        .assert()
        .success();
    let file = std::fs::read(&out).unwrap();
    // The real hypervisor's memory size is not known here; the payload header sits
    // at the first page boundary after it, so find its magic there.
    let hyp_mem = (0..file.len())
        .step_by(4096)
        .find(|&o| file[o..].starts_with(b"BOTHYPL\0"))
        .expect("payload magic at a page boundary") as u64;
    check_image(&file, hyp_mem, &kernel);
}
