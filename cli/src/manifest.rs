//! The bridge from the CLI's view of a system to `bothy_core`'s manifest encoder.
//!
//! The manifest format itself (an FDT) is owned by `bothy_core::manifest`, shared with
//! the hypervisor that decodes it; this module only fills in its types, and decodes
//! what it encoded so that anything the hypervisor would reject is reported here, at
//! build time, instead of at boot.

use anyhow::{ensure, Result};
use bothy_core::manifest::{EarlyConsole, Manifest, PayloadRef, VmSpec};

use crate::pack::{BlobRef, LoadedVm};

/// Encodes the manifest for `vms`, whose blobs sit at `refs` (kernel, initrd) in the
/// payload, with time slice `slice_us`. The FDT's size does not depend on the offsets'
/// values (fixed 64-bit cells), which lets the packer measure it before the offsets are
/// known. `overflow_stack` is the `--debug-overflow-stack` fault injection (tests only).
pub fn encode(
    vms: &[LoadedVm],
    refs: &[(BlobRef, Option<BlobRef>)],
    slice_us: u32,
    early_console: Option<u64>,
    overflow_stack: bool,
) -> Result<Vec<u8>> {
    ensure!(vms.len() == refs.len(), "internal: one blob set per VM");
    let manifest = Manifest {
        vms: vms
            .iter()
            .zip(refs)
            .map(|(vm, (k, i))| VmSpec {
                name: vm.config.name.clone(),
                cpus: vm.config.cpus,
                memory: vm.config.memory,
                kernel: payload_ref(*k),
                initrd: i.map(payload_ref),
                bootargs: vm.config.bootargs.clone(),
                pin: vm.config.pin.clone(),
                on_exit: vm.config.on_exit,
            })
            .collect(),
        early_console: early_console.map(|pl011_base| EarlyConsole { pl011_base }),
        slice_us,
        debug_overflow_stack: overflow_stack,
    };
    Ok(manifest.encode())
}

/// Decodes an encoded manifest with the hypervisor's own validation.
pub fn check(bytes: &[u8]) -> Result<Manifest> {
    Manifest::decode(bytes).map_err(|e| anyhow::anyhow!("{e}"))
}

fn payload_ref(r: BlobRef) -> PayloadRef {
    PayloadRef {
        offset: r.offset,
        size: r.size,
    }
}
