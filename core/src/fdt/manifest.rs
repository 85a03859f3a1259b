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
//!     bothy,slice-us = <10000>;                // optional, default 10000 (10 ms)
//!     chosen { bothy,early-console-pl011 = /bits/ 64 <0x9000000>; };  // optional
//!     bothy,debug-overflow-stack;              // fault injection, for tests only
//!     vms {
//!         vm@0 {
//!             name = "linux1";
//!             cpus = <2>;
//!             memory = /bits/ 64 <0x20000000>;
//!             kernel = /bits/ 64 <offset size>;   // relative to the payload start
//!             initrd = /bits/ 64 <offset size>;   // optional
//!             bootargs = "console=ttyAMA0";       // optional, default ""
//!             pin = <1 0>;                        // optional: vCPU i on CPU pin[i]
//!             on-exit = "halt";                   // optional: halt, restart, poweroff
//!         };
//!     };
//! };
//! ```
//! `pin` lists physical CPUs (their position in the firmware device tree's `/cpus`), one
//! per vCPU; no CPU appears twice in the whole manifest. Without `pin` the VM's vCPUs
//! are time-shared on the CPUs no VM pins, in slices of `bothy,slice-us`.
//!
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
/// Root property: the time slice of time-shared vCPUs, in microseconds.
const SLICE_US: &str = "bothy,slice-us";
/// Root property (empty): fault injection for tests; the boot CPU overflows its EL2
/// stack on purpose once its MMU is on (`bothy image --debug-overflow-stack`).
const DEBUG_OVERFLOW_STACK: &str = "bothy,debug-overflow-stack";
/// Time slice when the manifest gives none: 10 ms.
pub const DEFAULT_SLICE_US: u32 = 10_000;
/// Longest time slice: 1 s.
pub const MAX_SLICE_US: u32 = 1_000_000;
/// Physical CPU numbers in `pin` are below this.
pub const MAX_PIN_CPU: u32 = 64;
/// Per-VM vCPU limit (the vGIC's SGI target lists address Aff0 0..=7 comfortably).
pub const MAX_VCPUS: u32 = 8;
/// VM memory is mapped with 2 MiB stage-2 blocks, so it comes in 2 MiB units.
pub const MEMORY_GRANULE: u64 = 2 * 1024 * 1024;
/// `<offset size>` as two 64-bit values.
const PAYLOAD_REF_LEN: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub vms: Vec<VmSpec>,
    pub early_console: Option<EarlyConsole>,
    /// Time slice of time-shared vCPUs in microseconds, 1..=[`MAX_SLICE_US`].
    pub slice_us: u32,
    /// Fault injection for tests: the hypervisor overflows its stack at boot, to show
    /// the guard pages catch it. Never set by a system file.
    pub debug_overflow_stack: bool,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            vms: Vec::new(),
            early_console: None,
            slice_us: DEFAULT_SLICE_US,
            debug_overflow_stack: false,
        }
    }
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
    /// Physical CPU of each vCPU (`pin[i]` runs vCPU i and nothing else); empty when
    /// the vCPUs are time-shared on the CPUs no VM pins.
    pub pin: Vec<u32>,
    pub on_exit: OnExit,
}

/// What happens when a VM powers itself off (PSCI SYSTEM_OFF) or is stopped by a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnExit {
    /// The VM stays stopped.
    #[default]
    Halt,
    /// The VM is rebooted from its images.
    Restart,
    /// The whole machine powers off.
    Poweroff,
}

impl OnExit {
    pub const ALL: [OnExit; 3] = [OnExit::Halt, OnExit::Restart, OnExit::Poweroff];

    /// The word used in the manifest and the system file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Halt => "halt",
            Self::Restart => "restart",
            Self::Poweroff => "poweroff",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == word)
    }
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
    /// A root property is invalid.
    BadRootKey {
        key: &'static str,
        why: String,
    },
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
            Self::BadRootKey { key, why } => write!(f, "{key} {why}"),
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
        w.property_u32(SLICE_US, self.slice_us);
        if self.debug_overflow_stack {
            w.property_empty(DEBUG_OVERFLOW_STACK);
        }
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
            if !vm.pin.is_empty() {
                w.property_u32_array("pin", &vm.pin);
            }
            w.property_string("on-exit", vm.on_exit.as_str());
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
        let slice_us = match root.property(SLICE_US) {
            None => DEFAULT_SLICE_US,
            Some(p) => p.as_u32().ok_or_else(|| ManifestError::BadRootKey {
                key: SLICE_US,
                why: "is not one 32-bit cell".to_string(),
            })?,
        };
        if !(1..=MAX_SLICE_US).contains(&slice_us) {
            return Err(ManifestError::BadRootKey {
                key: SLICE_US,
                why: format!("= {slice_us} is out of range (1..={MAX_SLICE_US} microseconds)"),
            });
        }

        let mut vms: Vec<VmSpec> = Vec::new();
        let mut names = BTreeSet::new();
        if let Some(list) = root.child("vms") {
            for node in list.children().filter(|n| n.base_name() == "vm") {
                let vm = decode_vm(&node)?;
                if !names.insert(vm.name.clone()) {
                    return Err(ManifestError::DuplicateName { name: vm.name });
                }
                for cpu in &vm.pin {
                    if let Some(other) = vms.iter().find(|o| o.pin.contains(cpu)) {
                        return Err(ManifestError::BadKey {
                            vm: format!("\"{}\"", vm.name),
                            key: "pin",
                            why: format!(
                                "lists CPU {cpu}, which VM \"{}\" pins too; a pinned CPU runs \
                                 one vCPU only",
                                other.name
                            ),
                        });
                    }
                }
                vms.push(vm);
            }
        }
        if vms.is_empty() {
            return Err(ManifestError::NoVms);
        }
        Ok(Manifest {
            vms,
            early_console,
            slice_us,
            debug_overflow_stack: root.property(DEBUG_OVERFLOW_STACK).is_some(),
        })
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

    let pin: Vec<u32> = match node.property("pin") {
        None => Vec::new(),
        Some(p) => p
            .as_u32_iter()
            .ok_or_else(|| bad(&vm, "pin", "is not a list of 32-bit cells".to_string()))?
            .collect(),
    };
    if !pin.is_empty() && pin.len() != cpus as usize {
        return Err(bad(
            &vm,
            "pin",
            format!(
                "has {} entries but cpus = {cpus}; it needs one CPU per vCPU",
                pin.len()
            ),
        ));
    }
    for (i, &cpu) in pin.iter().enumerate() {
        if cpu >= MAX_PIN_CPU {
            return Err(bad(
                &vm,
                "pin",
                format!("lists CPU {cpu}, out of range (0..{MAX_PIN_CPU})"),
            ));
        }
        if pin[..i].contains(&cpu) {
            return Err(bad(&vm, "pin", format!("lists CPU {cpu} twice")));
        }
    }

    let on_exit = match node.property("on-exit") {
        None => OnExit::default(),
        Some(p) => {
            let word = p
                .as_str()
                .ok_or_else(|| bad(&vm, "on-exit", "is not a string".to_string()))?;
            OnExit::from_word(word).ok_or_else(|| {
                bad(
                    &vm,
                    "on-exit",
                    format!("= \"{word}\" is not one of halt, restart, poweroff"),
                )
            })?
        }
    };
    Ok(VmSpec {
        name,
        cpus,
        memory,
        kernel,
        initrd,
        bootargs,
        pin,
        on_exit,
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
                    pin: alloc::vec![1, 0],
                    on_exit: OnExit::Restart,
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
                    pin: Vec::new(),
                    on_exit: OnExit::Halt,
                },
            ],
            early_console: Some(EarlyConsole {
                pl011_base: 0x0900_0000,
            }),
            slice_us: 2_500,
            debug_overflow_stack: false,
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
        let mut m = sample();
        m.vms[0].on_exit = OnExit::Poweroff;
        m.vms[1].pin = alloc::vec![2];
        m.slice_us = MAX_SLICE_US;
        m.debug_overflow_stack = true;
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn on_exit_words() {
        for o in OnExit::ALL {
            assert_eq!(OnExit::from_word(o.as_str()), Some(o));
        }
        assert_eq!(OnExit::from_word("reboot"), None);
        assert_eq!(OnExit::default(), OnExit::Halt);
        assert_eq!(Manifest::default().slice_us, DEFAULT_SLICE_US);
    }

    /// A manifest of one VM "a" (1 vCPU) with extra root and VM properties.
    fn minimal(root: impl FnOnce(&mut FdtWriter), vm: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
        let mut w = FdtWriter::new();
        w.begin_node("");
        w.property_string("compatible", MANIFEST_COMPATIBLE);
        root(&mut w);
        w.begin_node("vms");
        w.begin_node("vm@0");
        w.property_string("name", "a");
        w.property_u32("cpus", 1);
        w.property_u64("memory", MEMORY_GRANULE);
        w.property_u64_array("kernel", &[0, 1]);
        vm(&mut w);
        w.end_node();
        w.end_node();
        w.end_node();
        w.finish()
    }

    #[test]
    fn new_keys_default_when_absent() {
        // What an older CLI wrote: no slice, pin or on-exit.
        let m = Manifest::decode(&minimal(|_| {}, |_| {})).unwrap();
        assert_eq!(m.slice_us, DEFAULT_SLICE_US);
        assert_eq!(m.vms[0].pin, Vec::<u32>::new());
        assert_eq!(m.vms[0].on_exit, OnExit::Halt);
        // An empty `pin` means time-shared too.
        let m = Manifest::decode(&minimal(|_| {}, |w| w.property_empty("pin"))).unwrap();
        assert!(m.vms[0].pin.is_empty());
    }

    #[test]
    fn bad_types_of_new_keys() {
        let err = |root: fn(&mut FdtWriter), vm: fn(&mut FdtWriter)| {
            Manifest::decode(&minimal(root, vm))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(|w| w.property_u64(SLICE_US, 1), |_| {}),
            "manifest: bothy,slice-us is not one 32-bit cell"
        );
        assert_eq!(
            err(|_| {}, |w| w.property("pin", &[0, 0, 1])),
            "manifest: VM \"a\": pin is not a list of 32-bit cells"
        );
        assert_eq!(
            err(|_| {}, |w| w.property_u32("on-exit", 1)),
            "manifest: VM \"a\": on-exit is not a string"
        );
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
    fn slice_pin_and_on_exit_errors() {
        rejects(
            |m| m.slice_us = 0,
            "manifest: bothy,slice-us = 0 is out of range (1..=1000000 microseconds)",
        );
        rejects(
            |m| m.slice_us = MAX_SLICE_US + 1,
            "manifest: bothy,slice-us = 1000001 is out of range (1..=1000000 microseconds)",
        );
        rejects(
            |m| m.vms[0].pin = alloc::vec![1],
            "manifest: VM \"linux1\": pin has 1 entries but cpus = 2; it needs one CPU per vCPU",
        );
        rejects(
            |m| m.vms[0].pin = alloc::vec![0, 64],
            "manifest: VM \"linux1\": pin lists CPU 64, out of range (0..64)",
        );
        rejects(
            |m| m.vms[0].pin = alloc::vec![3, 3],
            "manifest: VM \"linux1\": pin lists CPU 3 twice",
        );
        rejects(
            |m| m.vms[1].pin = alloc::vec![0],
            "manifest: VM \"selftest\": pin lists CPU 0, which VM \"linux1\" pins too; a \
             pinned CPU runs one vCPU only",
        );
        let err = Manifest::decode(&minimal(|_| {}, |w| w.property_string("on-exit", "reboot")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest: VM \"a\": on-exit = \"reboot\" is not one of halt, restart, poweroff"
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
