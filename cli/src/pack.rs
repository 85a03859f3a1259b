//! `bothy image`: hypervisor + manifest + guest images → one bootable file.
//!
//! ```text
//! 0                       hypervisor flat binary (arm64 Image header, .bss zero-filled)
//! P = payload_offset(len) PayloadHeader (bothy_core::image), 64 bytes
//! P + 64                  manifest (FDT from bothy_core::manifest)
//! P + 4 KiB-aligned       VM 0 kernel, VM 0 initrd, VM 1 kernel, ... each 4 KiB aligned
//! ```
//!
//! Blob offsets are relative to the payload start. The Image header's `image_size` is
//! patched to the whole file rounded up to 2 MiB, so every loader (QEMU `-kernel`,
//! U-Boot `booti`) treats the payload as part of the image and keeps it intact and
//! out of the way of the DTB and initrd it places.
//!
//! Everything a user can get wrong is checked here, before anything boots: kernels are
//! unpacked and validated, and each VM's kernel + initrd + DTB must fit its memory
//! (the same `plan_boot` the hypervisor runs).

use anyhow::{ensure, Context, Result};
use bothy_core::image::{
    align_up, payload_offset, PayloadHeader, PAYLOAD_ALIGN, PAYLOAD_HEADER_SIZE,
};
use bothy_core::layout::{plan_boot, RAM_BASE};
use bothy_core::linux::ImageHeader;
use bothy_core::Region;

use crate::config::{SystemConfig, VmConfig};
use crate::flatten::Flat;
use crate::kimage::{load_kernel, IMAGE_SIZE_OFFSET};

/// Loaders place and reserve images in 2 MiB units.
pub const IMAGE_SIZE_ALIGN: u64 = 2 << 20;

/// The PL011 of QEMU's `virt` board, used as the hypervisor's early console.
pub const QEMU_VIRT_PL011: u64 = 0x0900_0000;

/// A blob's place in the payload (relative to the payload start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobRef {
    pub offset: u64,
    pub size: u64,
}

/// A VM with its images read and checked.
#[derive(Clone, Debug)]
pub struct LoadedVm {
    pub config: VmConfig,
    /// Plain arm64 Image (decompressed).
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
}

/// Reads every VM's kernel and initrd, unpacking and validating them.
pub fn load_vms(system: &SystemConfig) -> Result<Vec<LoadedVm>> {
    system
        .vms
        .iter()
        .map(|vm| {
            let kraw = std::fs::read(&vm.kernel).with_context(|| {
                format!("VM {:?}: reading kernel {}", vm.name, vm.kernel.display())
            })?;
            let what = format!("VM {:?}: kernel {}", vm.name, vm.kernel.display());
            let kernel = load_kernel(kraw, &what)?;
            let initrd = vm
                .initrd
                .as_ref()
                .map(|p| {
                    std::fs::read(p).with_context(|| {
                        format!("VM {:?}: reading initrd {}", vm.name, p.display())
                    })
                })
                .transpose()?;
            let header = ImageHeader::parse(&kernel).expect("load_kernel validated the header");
            let ram = Region::new(RAM_BASE, vm.memory);
            plan_boot(ram, &header, initrd.as_ref().map(|i| i.len() as u64)).map_err(|e| {
                anyhow::anyhow!(
                    "{}: VM {:?}: `memory` = {}M is too small: {e}",
                    system.source.display(),
                    vm.name,
                    vm.memory >> 20
                )
            })?;
            Ok(LoadedVm {
                config: vm.clone(),
                kernel,
                initrd,
            })
        })
        .collect()
}

/// The packed image and where things went, for messages and tests.
pub struct Packed {
    pub bytes: Vec<u8>,
    /// Hypervisor memory size (flat binary including .bss).
    pub hyp_size: u64,
    pub payload_offset: u64,
    pub header: PayloadHeader,
    pub refs: Vec<(BlobRef, Option<BlobRef>)>,
}

impl Packed {
    /// Bytes of the payload: what the hypervisor keeps in RAM besides guest memory.
    pub fn payload_size(&self) -> u64 {
        self.header.total_size
    }
}

/// Packs the flattened hypervisor and the VMs into one image; `slice_us` is the time
/// slice of time-shared vCPUs; `overflow_stack` the `--debug-overflow-stack` fault
/// injection (tests only).
pub fn pack(
    hyp: &Flat,
    vms: &[LoadedVm],
    slice_us: u32,
    early_console: Option<u64>,
    overflow_stack: bool,
) -> Result<Packed> {
    let hyp_size = hyp.bytes.len() as u64;
    let poff = payload_offset(hyp_size);
    let manifest_offset = PAYLOAD_HEADER_SIZE as u64;

    // The manifest's size does not depend on the offsets' values, so measure it with
    // placeholders, lay the blobs out after it, then encode for real.
    let placeholder = vec![(BlobRef::default(), None); vms.len()];
    let mut manifest =
        crate::manifest::encode(vms, &placeholder, slice_us, early_console, overflow_stack)?;
    let (refs, end) = loop {
        let (refs, end) = layout_blobs(vms, manifest_offset + manifest.len() as u64);
        let real = crate::manifest::encode(vms, &refs, slice_us, early_console, overflow_stack)?;
        if real.len() == manifest.len() {
            manifest = real;
            break (refs, end);
        }
        // Defensive: if an encoder ever sized cells by value, settle on the new size.
        manifest = real;
    };
    crate::manifest::check(&manifest)?;
    let header = PayloadHeader::new(manifest_offset, manifest.len() as u64, end);

    let mut bytes = Vec::with_capacity((poff + end) as usize);
    bytes.extend_from_slice(&hyp.bytes);
    bytes.resize(poff as usize, 0);
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&manifest);
    for (vm, (k, i)) in vms.iter().zip(&refs) {
        put(&mut bytes, poff, *k, &vm.kernel);
        if let (Some(i), Some(data)) = (i, &vm.initrd) {
            put(&mut bytes, poff, *i, data);
        }
    }
    ensure!(
        bytes.len() as u64 == poff + end,
        "internal: payload size mismatch"
    );

    let image_size = align_up(bytes.len() as u64, IMAGE_SIZE_ALIGN);
    bytes[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&image_size.to_le_bytes());

    Ok(Packed {
        bytes,
        hyp_size,
        payload_offset: poff,
        header,
        refs,
    })
}

/// Assigns 4 KiB-aligned offsets to every kernel and initrd, starting after `start`;
/// returns the refs and the payload's end.
fn layout_blobs(vms: &[LoadedVm], start: u64) -> (Vec<(BlobRef, Option<BlobRef>)>, u64) {
    let mut cursor = start;
    let mut place = |size: usize| {
        let offset = align_up(cursor, PAYLOAD_ALIGN);
        cursor = offset + size as u64;
        BlobRef {
            offset,
            size: size as u64,
        }
    };
    let refs = vms
        .iter()
        .map(|vm| {
            let k = place(vm.kernel.len());
            let i = vm.initrd.as_ref().map(|d| place(d.len()));
            (k, i)
        })
        .collect();
    (refs, cursor)
}

fn put(bytes: &mut Vec<u8>, poff: u64, r: BlobRef, data: &[u8]) {
    bytes.resize((poff + r.offset) as usize, 0);
    bytes.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flatten::flatten_elf;
    use crate::testutil::{fake_image, make_elf};

    fn hyp() -> Flat {
        let head = fake_image(200);
        let elf = make_elf(&[(0, &head, 200), (0x2000, b"x", 0x1_0010)]);
        flatten_elf(&elf).unwrap()
    }

    fn vm(name: &str, kernel: Vec<u8>, initrd: Option<Vec<u8>>) -> LoadedVm {
        LoadedVm {
            config: VmConfig {
                name: name.into(),
                cpus: 1,
                memory: 64 << 20,
                kernel: "k".into(),
                initrd: None,
                bootargs: String::new(),
                pin: Vec::new(),
                on_exit: Default::default(),
            },
            kernel,
            initrd,
        }
    }

    #[test]
    fn layout_round_trips() {
        let h = hyp();
        let mut vms = [
            vm("a", fake_image(10_000), Some(vec![7u8; 5000])),
            vm("b", fake_image(4096), None),
        ];
        vms[0].config.pin = vec![1];
        vms[0].config.on_exit = bothy_core::manifest::OnExit::Restart;
        let p = pack(&h, &vms, 2_000, Some(QEMU_VIRT_PL011), false).unwrap();
        assert_eq!(p.hyp_size, 0x1_2010);
        assert_eq!(p.payload_offset, 0x1_3000);
        let file = &p.bytes;
        // The hypervisor header survives, with image_size covering the whole file.
        let hh = ImageHeader::parse(file).unwrap();
        assert_eq!(hh.image_size, 2 << 20);
        assert_eq!(hh.image_size % IMAGE_SIZE_ALIGN, 0);
        assert!(hh.image_size >= file.len() as u64);
        // .bss stays zero up to the payload.
        assert!(file[0x2001..0x1_3000].iter().all(|&b| b == 0));

        let payload = &file[p.payload_offset as usize..];
        let ph = PayloadHeader::decode(payload).unwrap();
        assert_eq!(ph, p.header);
        assert_eq!(ph.total_size as usize, payload.len());
        let (k, i) = p.refs[0];
        ph.check_ref(k.offset, k.size).unwrap();
        let i = i.unwrap();
        ph.check_ref(i.offset, i.size).unwrap();
        assert_eq!(
            &payload[k.offset as usize..][..k.size as usize],
            &vms[0].kernel[..]
        );
        assert_eq!(&payload[i.offset as usize..][..5000], &[7u8; 5000][..]);
        let (k2, none) = p.refs[1];
        assert_eq!(none, None);
        assert_eq!(&payload[k2.offset as usize..][..4096], &vms[1].kernel[..]);
        // Blobs follow the manifest and do not overlap.
        assert!(k.offset >= ph.manifest_offset + ph.manifest_size);
        assert!(i.offset >= k.offset + k.size && k2.offset >= i.offset + i.size);

        // The manifest names the same blobs, and the early console.
        let m = &payload[ph.manifest_offset as usize..][..ph.manifest_size as usize];
        let m = crate::manifest::check(m).unwrap();
        assert_eq!(m.early_console.unwrap().pl011_base, QEMU_VIRT_PL011);
        assert_eq!(m.slice_us, 2_000);
        assert_eq!(m.vms.len(), 2);
        assert_eq!(m.vms[0].name, "a");
        assert_eq!(m.vms[0].pin, [1]);
        assert_eq!(m.vms[0].on_exit, bothy_core::manifest::OnExit::Restart);
        assert!(m.vms[1].pin.is_empty());
        assert_eq!(
            (m.vms[0].kernel.offset, m.vms[0].kernel.size),
            (k.offset, k.size)
        );
        let mi = m.vms[0].initrd.unwrap();
        assert_eq!((mi.offset, mi.size), (i.offset, i.size));
        assert_eq!(m.vms[1].initrd, None);
    }
}
