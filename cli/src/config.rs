//! The system file: what a user writes to describe their VMs, and every check that can
//! be made on it before anything boots.
//!
//! ```toml
//! [[vm]]
//! name = "linux0"
//! cpus = 2
//! memory = "512M"
//! kernel = "Image"
//! initrd = "initrd.gz"         # optional
//! bootargs = "console=ttyAMA0" # optional, this is the default
//! ```
//!
//! Parsing is strict (`deny_unknown_fields`) so a typo is an error, not a silently
//! ignored key. Relative paths are resolved against the system file's directory, so a
//! system file and its images can be moved together. Errors name the file, the VM and
//! the key. docs/CONFIG.md documents the format; keep the two in step.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::size::{format_size, parse_size, MIB};

/// Most vCPUs one VM may have (the manifest format's limit).
pub use bothy_core::manifest::MAX_VCPUS;

/// Guest RAM is mapped with 2 MiB stage-2 blocks, and Linux wants its RAM 2 MiB aligned.
pub const MEMORY_GRANULE: u64 = 2 * MIB;

/// Memory the hypervisor keeps for itself (code, heap, page tables, guest DTBs) out of
/// the machine's RAM; everything else can go to guests and their images.
pub const HYP_RESERVE: u64 = 64 * MIB;

/// Bootargs when the system file gives none: the console on the VM's emulated PL011.
pub const DEFAULT_BOOTARGS: &str = "console=ttyAMA0";

/// Longest VM name: it becomes a device-tree node name (at most 31 characters).
pub const MAX_NAME_LEN: usize = 31;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read system file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: no VMs: add at least one [[vm]] table")]
    NoVms { path: PathBuf },
    #[error("{path}: VM {vm:?}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        vm: String,
        key: &'static str,
        message: String,
    },
    #[error("{path}: VM {vm:?}: `{key}`: file {file} not found")]
    MissingFile {
        path: PathBuf,
        vm: String,
        key: &'static str,
        file: PathBuf,
    },
    #[error("{path}: VM name {name:?} used more than once: names must be unique")]
    DuplicateName { path: PathBuf, name: String },
    #[error(
        "{path}: the VMs need {total} vCPUs ({detail}) but the machine has {smp} CPUs; \
         vCPUs are pinned 1:1 to CPUs in this version: lower `cpus` or raise --smp"
    )]
    TooManyCpus {
        path: PathBuf,
        total: u64,
        smp: u32,
        detail: String,
    },
    #[error(
        "{path}: `memory` does not fit: VMs {} ({detail}) + images {}M + {} for the \
         hypervisor = {}M, but the machine has {}; lower `memory` or raise --mem",
        format_size(*vm_mem),
        images.div_ceil(MIB),
        format_size(HYP_RESERVE),
        needed.div_ceil(MIB),
        format_size(*mem)
    )]
    MemoryDoesNotFit {
        path: PathBuf,
        detail: String,
        vm_mem: u64,
        images: u64,
        needed: u64,
        mem: u64,
    },
}

/// One VM, validated, with paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub cpus: u32,
    /// Bytes, a non-zero multiple of [`MEMORY_GRANULE`].
    pub memory: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub bootargs: String,
}

/// A validated system file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemConfig {
    /// Where it came from (for messages); `<built-in demo>` for the demo.
    pub source: PathBuf,
    pub vms: Vec<VmConfig>,
}

/// The machine the system will run on, for the fit checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Physical CPUs (QEMU `-smp`).
    pub cpus: u32,
    /// RAM in bytes (QEMU `-m`).
    pub memory: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    #[serde(default)]
    vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    cpus: i64,
    // A string ("512M") or a byte count; converted by hand for a better message.
    memory: toml::Value,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    bootargs: Option<String>,
}

impl SystemConfig {
    /// Reads, parses and validates a system file (including that its files exist).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses `text` as if read from `source`, resolving relative paths against `base`.
    pub fn parse(text: &str, source: &Path, base: &Path) -> Result<Self, ConfigError> {
        let path = source.to_path_buf();
        let raw: RawSystem = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if raw.vm.is_empty() {
            return Err(ConfigError::NoVms { path });
        }
        let mut vms: Vec<VmConfig> = Vec::with_capacity(raw.vm.len());
        for r in raw.vm {
            let invalid = |key, message: String| ConfigError::Invalid {
                path: path.clone(),
                vm: r.name.clone(),
                key,
                message,
            };
            check_name(&r.name).map_err(|m| invalid("name", m))?;
            if vms.iter().any(|v| v.name == r.name) {
                return Err(ConfigError::DuplicateName { path, name: r.name });
            }
            let cpus = match u32::try_from(r.cpus) {
                Ok(n) if (1..=MAX_VCPUS).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "cpus",
                        format!(
                            "{} is not a valid vCPU count: must be 1 to {MAX_VCPUS}",
                            r.cpus
                        ),
                    ))
                }
            };
            let memory = memory_value(&r.memory).map_err(|m| invalid("memory", m))?;
            let file = |key: &'static str, p: &Path| -> Result<PathBuf, ConfigError> {
                let resolved = base.join(p);
                if resolved.is_file() {
                    Ok(resolved)
                } else {
                    Err(ConfigError::MissingFile {
                        path: path.clone(),
                        vm: r.name.clone(),
                        key,
                        file: resolved,
                    })
                }
            };
            let kernel = file("kernel", &r.kernel)?;
            let initrd = r.initrd.as_deref().map(|p| file("initrd", p)).transpose()?;
            vms.push(VmConfig {
                name: r.name,
                cpus,
                memory,
                kernel,
                initrd,
                bootargs: r.bootargs.unwrap_or_else(|| DEFAULT_BOOTARGS.to_string()),
            });
        }
        Ok(Self { source: path, vms })
    }

    /// Checks that the VMs fit the machine: vCPUs are pinned 1:1, so their total must
    /// not exceed the CPUs; guest RAM plus the packed images (`image_bytes`, which the
    /// hypervisor keeps in memory to copy from) plus [`HYP_RESERVE`] must fit in RAM.
    pub fn check_fits(&self, machine: Machine, image_bytes: u64) -> Result<(), ConfigError> {
        let path = self.source.clone();
        let total_cpus: u64 = self.vms.iter().map(|v| u64::from(v.cpus)).sum();
        if total_cpus > u64::from(machine.cpus) {
            return Err(ConfigError::TooManyCpus {
                path,
                total: total_cpus,
                smp: machine.cpus,
                detail: self.detail(|v| v.cpus.to_string()),
            });
        }
        let vm_mem = self
            .vms
            .iter()
            .fold(0u64, |acc, v| acc.saturating_add(v.memory));
        let needed = vm_mem
            .saturating_add(image_bytes)
            .saturating_add(HYP_RESERVE);
        if needed > machine.memory {
            return Err(ConfigError::MemoryDoesNotFit {
                path,
                detail: self.detail(|v| format_size(v.memory)),
                vm_mem,
                images: image_bytes,
                needed,
                mem: machine.memory,
            });
        }
        Ok(())
    }

    /// "linux0: 2, linux1: 1" for messages.
    fn detail(&self, f: impl Fn(&VmConfig) -> String) -> String {
        let mut s = String::new();
        for (i, v) in self.vms.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(s, "{sep}{}: {}", v.name, f(v));
        }
        s
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{name:?} is longer than {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

fn memory_value(v: &toml::Value) -> Result<u64, String> {
    let bytes = match v {
        toml::Value::String(s) => parse_size(s).map_err(|e| e.to_string())?,
        toml::Value::Integer(i) if *i > 0 => *i as u64,
        other => {
            return Err(format!(
                "{other} is not a size: write e.g. \"512M\" (K, M and G suffixes)"
            ))
        }
    };
    if bytes == 0 {
        return Err("must not be zero".into());
    }
    if bytes % MEMORY_GRANULE != 0 {
        return Err(format!(
            "{} is not a multiple of 2M (guest RAM is mapped in 2 MiB blocks)",
            format_size(bytes)
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("Image"), b"kernel").unwrap();
            std::fs::write(d.path().join("initrd.gz"), b"initrd").unwrap();
            Self(d)
        }
        fn parse(&self, text: &str) -> Result<SystemConfig, ConfigError> {
            let src = self.0.path().join("system.toml");
            SystemConfig::parse(text, &src, self.0.path())
        }
    }

    const GOOD: &str = r#"
        [[vm]]
        name = "linux0"
        cpus = 2
        memory = "512M"
        kernel = "Image"
        initrd = "initrd.gz"
        bootargs = "console=ttyAMA0 quiet"
    "#;

    fn err(text: &str) -> String {
        Dir::new().parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_resolves_paths() {
        let d = Dir::new();
        let s = d.parse(GOOD).unwrap();
        assert_eq!(s.vms.len(), 1);
        let vm = &s.vms[0];
        assert_eq!(vm.name, "linux0");
        assert_eq!(vm.cpus, 2);
        assert_eq!(vm.memory, 512 * MIB);
        assert_eq!(vm.kernel, d.0.path().join("Image"));
        assert_eq!(vm.initrd.as_deref(), Some(&*d.0.path().join("initrd.gz")));
        assert_eq!(vm.bootargs, "console=ttyAMA0 quiet");
    }

    #[test]
    fn optional_keys_default() {
        let s = Dir::new()
            .parse("[[vm]]\nname='a'\ncpus=1\nmemory=\"2M\"\nkernel='Image'\n")
            .unwrap();
        assert_eq!(s.vms[0].initrd, None);
        assert_eq!(s.vms[0].bootargs, DEFAULT_BOOTARGS);
    }

    #[test]
    fn load_resolves_relative_to_file() {
        let d = Dir::new();
        let p = d.0.path().join("sys.toml");
        std::fs::write(&p, GOOD).unwrap();
        let s = SystemConfig::load(&p).unwrap();
        assert_eq!(s.vms[0].kernel, d.0.path().join("Image"));
        let e = SystemConfig::load(&d.0.path().join("nope.toml")).unwrap_err();
        assert!(e.to_string().contains("nope.toml"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&GOOD.replace("cpus = 2", "cpus = 2\nvcpus = 2"));
        assert!(e.contains("vcpus"), "{e}");
        let e = err(&format!("{GOOD}\n[extra]\nx = 1\n"));
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let e = err(&GOOD.replace("kernel = \"Image\"", ""));
        assert!(e.contains("kernel"), "{e}");
    }

    #[test]
    fn no_vms() {
        assert!(err("").contains("no VMs"));
    }

    #[test]
    fn missing_files_are_named() {
        let e = err(&GOOD.replace("\"Image\"", "\"nope/Image\""));
        assert!(e.contains("`kernel`") && e.contains("nope/Image"), "{e}");
        let e = err(&GOOD.replace("initrd.gz", "missing.gz"));
        assert!(e.contains("`initrd`") && e.contains("missing.gz"), "{e}");
    }

    #[test]
    fn zero_or_negative_cpus() {
        let e = err(&GOOD.replace("cpus = 2", "cpus = 0"));
        assert!(e.contains("\"linux0\"") && e.contains("`cpus`"), "{e}");
        let e = err(&GOOD.replace("cpus = 2", "cpus = -3"));
        assert!(e.contains("`cpus`"), "{e}");
        let e = err(&GOOD.replace("cpus = 2", "cpus = 9"));
        assert!(e.contains("`cpus`") && e.contains("1 to 8"), "{e}");
    }

    #[test]
    fn bad_memory() {
        for (m, want) in [
            ("\"3M\"", "multiple of 2M"),
            ("\"0\"", "zero"),
            ("\"lots\"", "not a size"),
            ("1.5", "not a size"),
            ("-2", "not a size"),
        ] {
            let e = err(&GOOD.replace("\"512M\"", m));
            assert!(e.contains("`memory`") && e.contains(want), "{m}: {e}");
        }
        let s = Dir::new()
            .parse(&GOOD.replace("\"512M\"", "4194304"))
            .unwrap();
        assert_eq!(s.vms[0].memory, 4 * MIB);
    }

    #[test]
    fn bad_names() {
        let e = err(&format!("{GOOD}{}", GOOD.replace("cpus = 2", "cpus = 1")));
        assert!(e.contains("more than once") && e.contains("linux0"), "{e}");
        let e = err(&GOOD.replace("\"linux0\"", "\"\""));
        assert!(e.contains("`name`"), "{e}");
        let e = err(&GOOD.replace("\"linux0\"", "\"a b\""));
        assert!(e.contains("`name`"), "{e}");
        let e = err(&GOOD.replace("\"linux0\"", &format!("\"{}\"", "x".repeat(32))));
        assert!(e.contains("longer"), "{e}");
    }

    #[test]
    fn fit_checks() {
        let d = Dir::new();
        let two = format!(
            "{GOOD}{}",
            GOOD.replace("linux0", "linux1")
                .replace("cpus = 2", "cpus = 1")
        );
        let s = d.parse(&two).unwrap();
        let m = Machine {
            cpus: 2,
            memory: GIB,
        };
        let e = s.check_fits(m, 0).unwrap_err().to_string();
        assert!(e.contains("3 vCPUs") && e.contains("linux1: 1"), "{e}");
        let m = Machine {
            cpus: 4,
            memory: GIB,
        };
        let e = s.check_fits(m, 0).unwrap_err().to_string();
        assert!(e.contains("does not fit") && e.contains("1G"), "{e}");

        let one = d.parse(GOOD).unwrap();
        let m = Machine {
            cpus: 2,
            memory: GIB,
        };
        one.check_fits(m, 100 * MIB).unwrap();
        // 512M + 448M + 64M = 1024M: exactly fits; one more byte does not.
        one.check_fits(m, 448 * MIB).unwrap();
        assert!(one.check_fits(m, 448 * MIB + 1).is_err());
    }
}
