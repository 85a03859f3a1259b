//! The boot manifest: which VMs to build, encoded as a small FDT (like Xen dom0less and
//! Hafnium manifests) so the CLI and the hypervisor share one well-understood format.
//!
//! The CLI ([`Manifest::encode`]) writes it into the boot image next to the guest
//! payloads; the hypervisor ([`Manifest::decode`]) reads it at boot. The bytes sit in
//! memory anyone with the image could have edited, so decoding validates everything and
//! its errors name the VM and key, e.g.
//! `manifest: VM "linux1": memory = 0x100001 is not a non-zero multiple of 2 MiB`.
//!
//! ```text
//! / {
//!     compatible = "bothy,manifest-v1";
//!     chosen { bothy,early-console-pl011 = /bits/ 64 <0x9000000>; };  // optional
//!     vms {
//!         vm@0 {
//!             name = "linux1";
//!             cpus = <2>;
//!             memory = /bits/ 64 <0x20000000>;
//!             kernel = /bits/ 64 <offset size>;   // relative to the payload start
//!             initrd = /bits/ 64 <offset size>;   // optional
//!             bootargs = "console=ttyAMA0";       // optional, default ""
//!         };
//!     };
//! };
//! ```
//! Unknown properties and nodes are ignored so newer CLIs can add keys older hypervisors
//! skip; an incompatible change gets a new `compatible`.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::{Fdt, FdtError, FdtWriter, Node};

/// Root `compatible` of this format version.
pub const MANIFEST_COMPATIBLE: &str = "bothy,manifest-v1";
/// Property in `/chosen` holding the PL011 base for early error reports.
const EARLY_CONSOLE_PL011: &str = "bothy,early-console-pl011";
/// Per-VM vCPU limit (the vGIC's SGI target lists address Aff0 0..=7 comfortably).
pub const MAX_VCPUS: u32 = 8;
/// VM memory is mapped with 2 MiB stage-2 blocks, so it comes in 2 MiB units.
pub const MEMORY_GRANULE: u64 = 2 * 1024 * 1024;
/// `<offset size>` as two 64-bit values.
const PAYLOAD_REF_LEN: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub vms: Vec<VmSpec>,
    pub early_console: Option<EarlyConsole>,
}

/// A UART to report on when the firmware DTB is missing or unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyConsole {
    pub pl011_base: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub cpus: u32,
    /// Bytes of guest RAM.
    pub memory: u64,
    pub kernel: PayloadRef,
    pub initrd: Option<PayloadRef>,
    pub bootargs: String,
}

/// A byte range of the image's payload area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRef {
    /// From the start of the payload area.
    pub offset: u64,
    pub size: u64,
}

/// Why a manifest was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestError {
    Fdt(FdtError),
    NotAManifest {
        compatible: Option<String>,
    },
    NoVms,
    /// A key of one VM is missing or invalid; `vm` is its name, or its node if unnamed.
    BadKey {
        vm: String,
        key: &'static str,
        why: String,
    },
    DuplicateName {
        name: String,
    },
}

impl From<FdtError> for ManifestError {
    fn from(e: FdtError) -> Self {
        Self::Fdt(e)
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "manifest: ")?;
        match self {
            Self::Fdt(e) => write!(f, "{e}"),
            Self::NotAManifest {
                compatible: Some(c),
            } => write!(
                f,
                "root compatible is \"{c}\", expected \"{MANIFEST_COMPATIBLE}\" (built by a \
                 different bothy version?)"
            ),
            Self::NotAManifest { compatible: None } => {
                write!(f, "root has no compatible \"{MANIFEST_COMPATIBLE}\"")
            }
            Self::NoVms => write!(f, "no VMs (/vms is missing or empty)"),
            Self::BadKey { vm, key, why } => write!(f, "VM {vm}: {key} {why}"),
            Self::DuplicateName { name } => {
                write!(f, "two VMs are named \"{name}\"; names must be unique")
            }
        }
    }
}

impl core::error::Error for ManifestError {}

impl Manifest {
    /// Encodes the manifest as a DTB. Does not validate: `decode` does, so a bad
    /// manifest is caught wherever it is read (the CLI decodes what it wrote).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_string("compatible", MANIFEST_COMPATIBLE);
        if let Some(console) = self.early_console {
            w.begin_node("chosen");
            w.property_u64(EARLY_CONSOLE_PL011, console.pl011_base);
            w.end_node();
        }
        w.begin_node("vms");
        for (i, vm) in self.vms.iter().enumerate() {
            w.begin_node(&format!("vm@{i}"));
            w.property_string("name", &vm.name);
            w.property_u32("cpus", vm.cpus);
            w.property_u64("memory", vm.memory);
            w.property_u64_array("kernel", &[vm.kernel.offset, vm.kernel.size]);
            if let Some(initrd) = vm.initrd {
                w.property_u64_array("initrd", &[initrd.offset, initrd.size]);
            }
            w.property_string("bootargs", &vm.bootargs);
            w.end_node();
        }
        w.end_node();
        w.end_node();
        w.finish()
    }

    /// Parses and validates a manifest DTB.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let fdt = Fdt::new(bytes)?;
        let root = fdt.root();
        if !root.is_compatible(MANIFEST_COMPATIBLE) {
            return Err(ManifestError::NotAManifest {
                compatible: root.compatible().next().map(str::to_string),
            });
        }
        let early_console = root
            .child("chosen")
            .and_then(|c| c.property(EARLY_CONSOLE_PL011))
            .and_then(|p| p.as_uint())
            .map(|pl011_base| EarlyConsole { pl011_base });

        let mut vms = Vec::new();
        let mut names = BTreeSet::new();
        if let Some(list) = root.child("vms") {
            for node in list.children().filter(|n| n.base_name() == "vm") {
                let vm = decode_vm(&node)?;
                if !names.insert(vm.name.clone()) {
                    return Err(ManifestError::DuplicateName { name: vm.name });
                }
                vms.push(vm);
            }
        }
        if vms.is_empty() {
            return Err(ManifestError::NoVms);
        }
        Ok(Manifest { vms, early_console })
    }
}

fn decode_vm(node: &Node) -> Result<VmSpec, ManifestError> {
    let unnamed = format!("/vms/{}", node.name());
    let bad = |vm: &str, key, why: String| ManifestError::BadKey {
        vm: vm.to_string(),
        key,
        why,
    };

    let name = match node.property_str("name") {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => return Err(bad(&unnamed, "name", "is missing or empty".to_string())),
    };
    let vm = format!("\"{name}\"");

    let cpus = node
        .property_u32("cpus")
        .ok_or_else(|| bad(&vm, "cpus", "is missing or not one 32-bit cell".to_string()))?;
    if !(1..=MAX_VCPUS).contains(&cpus) {
        return Err(bad(
            &vm,
            "cpus",
            format!("= {cpus} is out of range (1..={MAX_VCPUS})"),
        ));
    }

    let memory = node
        .property("memory")
        .and_then(|p| p.as_uint())
        .ok_or_else(|| {
            bad(
                &vm,
                "memory",
                "is missing or not a 32/64-bit number".to_string(),
            )
        })?;
    if memory == 0 || memory % MEMORY_GRANULE != 0 {
        return Err(bad(
            &vm,
            "memory",
            format!("= {memory:#x} is not a non-zero multiple of 2 MiB"),
        ));
    }

    let kernel = payload(node, "kernel", &vm)?
        .ok_or_else(|| bad(&vm, "kernel", "is missing".to_string()))?;
    let initrd = payload(node, "initrd", &vm)?;

    let bootargs = match node.property("bootargs") {
        None => String::new(),
        Some(p) => p
            .as_str()
            .ok_or_else(|| bad(&vm, "bootargs", "is not a string".to_string()))?
            .to_string(),
    };
    Ok(VmSpec {
        name,
        cpus,
        memory,
        kernel,
        initrd,
        bootargs,
    })
}

/// Decodes an optional `<offset size>` payload reference; size must be non-zero and
/// the range must not wrap.
fn payload(node: &Node, key: &'static str, vm: &str) -> Result<Option<PayloadRef>, ManifestError> {
    let Some(prop) = node.property(key) else {
        return Ok(None);
    };
    let bad = |why: &str| ManifestError::BadKey {
        vm: vm.to_string(),
        key,
        why: why.to_string(),
    };
    if prop.value.len() != PAYLOAD_REF_LEN {
        return Err(bad("must be two 64-bit values <offset size>"));
    }
    let (offset, size) = prop.value.split_at(PAYLOAD_REF_LEN / 2);
    let (Ok(offset), Ok(size)) = (<[u8; 8]>::try_from(offset), <[u8; 8]>::try_from(size)) else {
        return Err(bad("must be two 64-bit values <offset size>"));
    };
    let (offset, size) = (u64::from_be_bytes(offset), u64::from_be_bytes(size));
    if size == 0 {
        return Err(bad("has size 0"));
    }
    if offset.checked_add(size).is_none() {
        return Err(bad("offset + size overflows"));
    }
    Ok(Some(PayloadRef { offset, size }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            vms: alloc::vec![
                VmSpec {
                    name: "linux1".into(),
                    cpus: 2,
                    memory: 512 << 20,
                    kernel: PayloadRef {
                        offset: 0,
                        size: 0x200_0000
                    },
                    initrd: Some(PayloadRef {
                        offset: 0x200_0000,
                        size: 0x10_0000
                    }),
                    bootargs: "console=ttyAMA0 rdinit=/init".into(),
                },
                VmSpec {
                    name: "selftest".into(),
                    cpus: 1,
                    memory: 2 << 20,
                    kernel: PayloadRef {
                        offset: 0x300_0000,
                        size: 0x1000
                    },
                    initrd: None,
                    bootargs: String::new(),
                },
            ],
            early_console: Some(EarlyConsole {
                pl011_base: 0x0900_0000,
            }),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let no_console = Manifest {
            early_console: None,
            ..sample()
        };
        assert_eq!(Manifest::decode(&no_console.encode()).unwrap(), no_console);
    }

    fn rejects(edit: impl FnOnce(&mut Manifest), expected: &str) {
        let mut m = sample();
        edit(&mut m);
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    #[test]
    fn validation_errors_name_vm_and_key() {
        rejects(
            |m| m.vms[0].name = String::new(),
            "manifest: VM /vms/vm@0: name is missing or empty",
        );
        rejects(
            |m| m.vms[1].name = "linux1".into(),
            "manifest: two VMs are named \"linux1\"; names must be unique",
        );
        rejects(
            |m| m.vms[0].cpus = 0,
            "manifest: VM \"linux1\": cpus = 0 is out of range (1..=8)",
        );
        rejects(
            |m| m.vms[1].cpus = 9,
            "manifest: VM \"selftest\": cpus = 9 is out of range (1..=8)",
        );
        rejects(
            |m| m.vms[0].memory = 0,
            "manifest: VM \"linux1\": memory = 0x0 is not a non-zero multiple of 2 MiB",
        );
        rejects(
            |m| m.vms[0].memory = (2 << 20) + 4096,
            "manifest: VM \"linux1\": memory = 0x201000 is not a non-zero multiple of 2 MiB",
        );
        rejects(
            |m| m.vms[1].kernel.size = 0,
            "manifest: VM \"selftest\": kernel has size 0",
        );
        rejects(
            |m| {
                m.vms[0].initrd = Some(PayloadRef {
                    offset: u64::MAX,
                    size: 1,
                })
            },
            "manifest: VM \"linux1\": initrd offset + size overflows",
        );
        rejects(
            |m| m.vms.clear(),
            "manifest: no VMs (/vms is missing or empty)",
        );
    }

    #[test]
    fn rejects_other_trees_and_garbage() {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_string("compatible", "linux,dummy-virt");
        w.end_node();
        assert_eq!(
            Manifest::decode(&w.finish()).unwrap_err().to_string(),
            "manifest: root compatible is \"linux,dummy-virt\", expected \"bothy,manifest-v1\" \
             (built by a different bothy version?)"
        );
        let err =
            Manifest::decode(b"\x12\x34\x56\x78 not a dtb at all, but long enough").unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest: device tree: bad magic 0x12345678 (expected 0xd00dfeed); this is not a DTB"
        );
    }

    #[test]
    fn missing_kernel_and_bad_types() {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_string("compatible", MANIFEST_COMPATIBLE);
        w.begin_node("vms");
        w.begin_node("vm@0");
        w.property_string("name", "a");
        w.property_u32("cpus", 1);
        w.property_u32("memory", 0x20_0000); // one cell is accepted
        w.end_node();
        w.end_node();
        w.end_node();
        assert_eq!(
            Manifest::decode(&w.finish()).unwrap_err().to_string(),
            "manifest: VM \"a\": kernel is missing"
        );
    }
}
