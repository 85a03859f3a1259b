//! The system file: what a user writes to describe their VMs, and every check that can
//! be made on it before anything boots.
//!
//! ```toml
//! slice = "10ms"               # optional, this is the default
//!
//! [[vm]]
//! name = "linux0"
//! cpus = 2
//! memory = "512M"
//! kernel = "Image"
//! initrd = "initrd.gz"         # optional
//! bootargs = "console=ttyAMA0" # optional, this is the default
//! pin = [1, 0]                 # optional: vCPU i runs only on CPU pin[i]
//! on_exit = "halt"             # optional, this is the default
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
/// What a VM's exit does (`on_exit`), and the time-slice limits (`slice`).
pub use bothy_core::manifest::{OnExit, DEFAULT_SLICE_US, MAX_PIN_CPU, MAX_SLICE_US};

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
    /// A top-level key (not in a `[[vm]]` table) is invalid.
    #[error("{path}: `{key}`: {message}")]
    InvalidTop {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
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
        "{path}: VM {vm:?}: `pin`: CPU {cpu} does not exist; the machine has {}: \
         pin a CPU that exists or raise --smp",
        cpu_count(*smp)
    )]
    NoSuchCpu {
        path: PathBuf,
        vm: String,
        cpu: u32,
        smp: u32,
    },
    #[error(
        "{path}: `pin`: CPU {cpu} is pinned {}; a pinned CPU runs one vCPU only: \
         pin another CPU",
        if first == second {
            format!("twice by VM {first:?}")
        } else {
            format!("by VM {first:?} and by VM {second:?}")
        }
    )]
    CpuPinnedTwice {
        path: PathBuf,
        cpu: u32,
        first: String,
        second: String,
    },
    #[error(
        "{path}: {} time-shared (no `pin`) but `pin` takes all of the machine's CPUs ({}), \
         so no CPU is left for {}: unpin a CPU or raise --smp",
        vm_list(shared),
        cpu_range(*smp),
        if shared.len() == 1 { "it" } else { "them" }
    )]
    NoCpuLeft {
        path: PathBuf,
        shared: Vec<String>,
        smp: u32,
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
    /// Physical CPU of each vCPU (`cpus` entries, no CPU twice), or empty: time-shared.
    pub pin: Vec<u32>,
    pub on_exit: OnExit,
}

/// A validated system file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemConfig {
    /// Where it came from (for messages); `<built-in demo>` for the demo.
    pub source: PathBuf,
    /// Time slice of time-shared vCPUs in microseconds, 1..=[`MAX_SLICE_US`].
    pub slice_us: u32,
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
    // A string ("10ms"); converted by hand for a better message.
    slice: Option<toml::Value>,
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
    // Converted by hand, like `memory`.
    pin: Option<toml::Value>,
    on_exit: Option<toml::Value>,
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
        let slice_us = match &raw.slice {
            None => DEFAULT_SLICE_US,
            Some(v) => slice_value(v).map_err(|message| ConfigError::InvalidTop {
                path: path.clone(),
                key: "slice",
                message,
            })?,
        };
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
            let pin = match &r.pin {
                None => Vec::new(),
                Some(v) => pin_value(v, cpus).map_err(|m| invalid("pin", m))?,
            };
            let on_exit = match &r.on_exit {
                None => OnExit::default(),
                Some(v) => on_exit_value(v).map_err(|m| invalid("on_exit", m))?,
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
                pin,
                on_exit,
            });
        }
        let system = Self {
            source: path,
            slice_us,
            vms,
        };
        // Needs no machine, so checked here too: `--board generic` skips `check_fits`.
        system.check_pins_unique()?;
        Ok(system)
    }

    /// Checks that the VMs fit the machine: every pinned CPU exists and is pinned once,
    /// and if any VM is time-shared, some CPU is left unpinned for it; guest RAM plus
    /// the packed images (`image_bytes`, which the hypervisor keeps in memory to copy
    /// from) plus [`HYP_RESERVE`] must fit in RAM.
    pub fn check_fits(&self, machine: Machine, image_bytes: u64) -> Result<(), ConfigError> {
        let path = self.source.clone();
        for v in &self.vms {
            if let Some(&cpu) = v.pin.iter().find(|&&c| c >= machine.cpus) {
                return Err(ConfigError::NoSuchCpu {
                    path,
                    vm: v.name.clone(),
                    cpu,
                    smp: machine.cpus,
                });
            }
        }
        self.check_pins_unique()?;
        let pinned: usize = self.vms.iter().map(|v| v.pin.len()).sum();
        let shared: Vec<String> = self
            .vms
            .iter()
            .filter(|v| v.pin.is_empty())
            .map(|v| v.name.clone())
            .collect();
        // Pinned CPUs exist and are distinct, so this count says whether any is left.
        if !shared.is_empty() && pinned >= machine.cpus as usize {
            return Err(ConfigError::NoCpuLeft {
                path,
                shared,
                smp: machine.cpus,
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

    /// No CPU is pinned twice, within a VM or across VMs.
    fn check_pins_unique(&self) -> Result<(), ConfigError> {
        let mut owner: Vec<(u32, &str)> = Vec::new();
        for v in &self.vms {
            for &cpu in &v.pin {
                if let Some(&(_, first)) = owner.iter().find(|(c, _)| *c == cpu) {
                    return Err(ConfigError::CpuPinnedTwice {
                        path: self.source.clone(),
                        cpu,
                        first: first.to_string(),
                        second: v.name.clone(),
                    });
                }
                owner.push((cpu, &v.name));
            }
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

/// The CPU numbers of a machine with `smp` CPUs: "0", "0-1".
fn cpu_range(smp: u32) -> String {
    match smp {
        0 | 1 => "0".to_string(),
        n => format!("0-{}", n - 1),
    }
}

/// "the machine has 2 CPUs (0-1)" without the first words: "2 CPUs (0-1)", "1 CPU (0)".
fn cpu_count(smp: u32) -> String {
    match smp {
        0 => "no CPUs".to_string(),
        1 => "1 CPU (0)".to_string(),
        n => format!("{n} CPUs ({})", cpu_range(n)),
    }
}

/// `VM "a" is` / `VMs "a", "b" are`.
fn vm_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.len() {
        1 => format!("VM {} is", quoted[0]),
        _ => format!("VMs {} are", quoted.join(", ")),
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

/// `"500us"`, `"10ms"`, `"1s"` → microseconds, more than 0 and at most 1 s.
fn slice_value(v: &toml::Value) -> Result<u32, String> {
    let malformed = |what: &dyn std::fmt::Display| {
        format!(
            "{what} is not a duration: write e.g. \"10ms\" (an integer with a us, ms or s suffix)"
        )
    };
    let toml::Value::String(text) = v else {
        return Err(malformed(v));
    };
    let (num, unit_us) = if let Some(n) = text.strip_suffix("us") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000)
    } else {
        return Err(malformed(&format!("{text:?}")));
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(&format!("{text:?}")));
    }
    let us = num.parse::<u64>().ok().and_then(|n| n.checked_mul(unit_us));
    match us {
        Some(0) => Err(format!("{text:?} must be more than zero")),
        Some(us) if us <= u64::from(MAX_SLICE_US) => Ok(us as u32),
        _ => Err(format!(
            "{text:?} is longer than 1s, the longest time slice"
        )),
    }
}

/// `[1, 0]` → CPU numbers, one per vCPU, each below [`MAX_PIN_CPU`], none twice.
/// An empty list means time-shared.
fn pin_value(v: &toml::Value, cpus: u32) -> Result<Vec<u32>, String> {
    let bad =
        || format!("{v} is not a list of CPU numbers: write e.g. [0, 1] (CPU numbers start at 0)");
    let toml::Value::Array(items) = v else {
        return Err(bad());
    };
    let pin = items
        .iter()
        .map(|i| match i {
            toml::Value::Integer(n) => u32::try_from(*n).ok(),
            _ => None,
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(bad)?;
    if !pin.is_empty() && pin.len() != cpus as usize {
        return Err(format!(
            "lists {} CPU(s) but `cpus` = {cpus}: give one CPU per vCPU, or leave `pin` out \
             to time-share",
            pin.len()
        ));
    }
    if let Some(cpu) = pin.iter().find(|&&c| c >= MAX_PIN_CPU) {
        return Err(format!(
            "CPU {cpu} is out of range: CPU numbers are 0 to {}",
            MAX_PIN_CPU - 1
        ));
    }
    Ok(pin)
}

fn on_exit_value(v: &toml::Value) -> Result<OnExit, String> {
    let words: Vec<String> = OnExit::ALL
        .iter()
        .map(|o| format!("{:?}", o.as_str()))
        .collect();
    match v {
        toml::Value::String(s) => OnExit::from_word(s),
        _ => None,
    }
    .ok_or_else(|| format!("{v} is not one of {}", words.join(", ")))
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
        assert_eq!(s.vms[0].pin, Vec::<u32>::new());
        assert_eq!(s.vms[0].on_exit, OnExit::Halt);
        assert_eq!(s.slice_us, DEFAULT_SLICE_US);
        assert_eq!(s.slice_us, 10_000);
    }

    #[test]
    fn slice() {
        for (text, us) in [
            ("\"500us\"", 500),
            ("\"10ms\"", 10_000),
            ("\"1s\"", 1_000_000),
            ("\"1000000us\"", 1_000_000),
            ("\"1us\"", 1),
        ] {
            let s = Dir::new()
                .parse(&format!("slice = {text}\n{GOOD}"))
                .unwrap();
            assert_eq!(s.slice_us, us, "{text}");
        }
        for (text, want) in [
            ("\"0ms\"", "more than zero"),
            ("\"0s\"", "more than zero"),
            ("\"2s\"", "longer than 1s"),
            ("\"1001ms\"", "longer than 1s"),
            ("\"99999999999999999999s\"", "longer than 1s"),
            ("\"10\"", "not a duration"),
            ("\"ms\"", "not a duration"),
            ("\"1.5ms\"", "not a duration"),
            ("\"-5ms\"", "not a duration"),
            ("\"10 ms\"", "not a duration"),
            ("\"10m\"", "not a duration"),
            ("10", "not a duration"),
        ] {
            let e = err(&format!("slice = {text}\n{GOOD}"));
            assert!(
                e.contains("system.toml: `slice`: ") && e.contains(want),
                "{text}: {e}"
            );
            assert!(!e.contains("VM \""), "{text}: {e}");
        }
        // `slice` is a top-level key: inside a [[vm]] table it is unknown.
        let e = err(&format!("{GOOD}slice = \"10ms\"\n"));
        assert!(e.contains("unknown field") && e.contains("slice"), "{e}");
    }

    #[test]
    fn pin() {
        let d = Dir::new();
        let s = d.parse(&format!("{GOOD}pin = [1, 0]\n")).unwrap();
        assert_eq!(s.vms[0].pin, [1, 0]);
        let s = d.parse(&format!("{GOOD}pin = []\n")).unwrap();
        assert!(s.vms[0].pin.is_empty());
        for (text, want) in [
            ("[0]", "lists 1 CPU(s) but `cpus` = 2"),
            ("[0, 1, 2]", "lists 3 CPU(s) but `cpus` = 2"),
            ("[-1, 0]", "not a list of CPU numbers"),
            ("[\"0\", 1]", "not a list of CPU numbers"),
            ("[0.5, 1]", "not a list of CPU numbers"),
            ("1", "not a list of CPU numbers"),
            ("\"0,1\"", "not a list of CPU numbers"),
            ("[64, 0]", "CPU 64 is out of range: CPU numbers are 0 to 63"),
        ] {
            let e = err(&format!("{GOOD}pin = {text}\n"));
            assert!(
                e.contains("VM \"linux0\": `pin`: ") && e.contains(want),
                "{text}: {e}"
            );
        }
        let e = err(&format!("{GOOD}pin = [1, 1]\n"));
        assert!(
            e.ends_with(
                "system.toml: `pin`: CPU 1 is pinned twice by VM \"linux0\"; a pinned CPU \
                 runs one vCPU only: pin another CPU"
            ),
            "{e}"
        );
        let two = format!(
            "{GOOD}pin = [0, 1]\n{}pin = [2, 1]\n",
            GOOD.replace("linux0", "linux1")
        );
        let e = err(&two);
        assert!(
            e.contains("CPU 1 is pinned by VM \"linux0\" and by VM \"linux1\""),
            "{e}"
        );
    }

    #[test]
    fn on_exit() {
        let d = Dir::new();
        for o in OnExit::ALL {
            let s = d
                .parse(&format!("{GOOD}on_exit = \"{}\"\n", o.as_str()))
                .unwrap();
            assert_eq!(s.vms[0].on_exit, o);
        }
        for text in ["\"reboot\"", "\"Halt\"", "1", "true"] {
            let e = err(&format!("{GOOD}on_exit = {text}\n"));
            assert!(
                e.contains("VM \"linux0\": `on_exit`: ")
                    && e.contains("is not one of \"halt\", \"restart\", \"poweroff\""),
                "{text}: {e}"
            );
        }
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
        // 3 time-shared vCPUs on 1 CPU are fine; 1G of VMs is not.
        let m = Machine {
            cpus: 1,
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

    /// Two VMs: "rt" with `pin_rt`, "ts" with `pin_ts` (`[]`: time-shared), 1 vCPU each.
    fn pinned(pin_rt: &str, pin_ts: &str) -> SystemConfig {
        let vm = |name: &str, pin: &str| {
            format!(
                "[[vm]]\nname = \"{name}\"\ncpus = 1\nmemory = \"2M\"\nkernel = \"Image\"\n\
                 pin = {pin}\n"
            )
        };
        let text = format!("{}{}", vm("rt", pin_rt), vm("ts", pin_ts));
        Dir::new().parse(&text).unwrap()
    }

    fn fits(s: &SystemConfig, cpus: u32) -> Result<(), String> {
        let m = Machine { cpus, memory: GIB };
        s.check_fits(m, 0).map_err(|e| e.to_string())
    }

    #[test]
    fn pinned_cpus_must_exist() {
        let s = pinned("[3]", "[]");
        let e = fits(&s, 2).unwrap_err();
        assert!(
            e.ends_with(
                "system.toml: VM \"rt\": `pin`: CPU 3 does not exist; the machine has \
                 2 CPUs (0-1): pin a CPU that exists or raise --smp"
            ),
            "{e}"
        );
        let e = fits(&pinned("[1]", "[]"), 1).unwrap_err();
        assert!(
            e.contains("CPU 1 does not exist; the machine has 1 CPU (0)"),
            "{e}"
        );
        fits(&s, 5).unwrap();
    }

    #[test]
    fn a_cpu_is_pinned_once() {
        // Built by hand, as the demo and the benchmarks are: `parse` is not involved.
        let mut s = pinned("[1]", "[0]");
        s.vms[1].pin = vec![1];
        let e = fits(&s, 2).unwrap_err();
        assert!(
            e.ends_with(
                "`pin`: CPU 1 is pinned by VM \"rt\" and by VM \"ts\"; a pinned CPU \
                 runs one vCPU only: pin another CPU"
            ),
            "{e}"
        );
        s.vms[1].cpus = 2;
        s.vms[1].pin = vec![0, 0];
        let e = fits(&s, 2).unwrap_err();
        assert!(e.contains("CPU 0 is pinned twice by VM \"ts\""), "{e}");
    }

    #[test]
    fn time_shared_vms_need_an_unpinned_cpu() {
        let s = pinned("[0]", "[]");
        fits(&s, 2).unwrap();
        let e = fits(&s, 1).unwrap_err();
        assert!(
            e.ends_with(
                "system.toml: VM \"ts\" is time-shared (no `pin`) but `pin` takes all of \
                 the machine's CPUs (0), so no CPU is left for it: unpin a CPU or raise --smp"
            ),
            "{e}"
        );
        let mut s3 = s.clone();
        s3.vms.push(VmConfig {
            name: "ts2".into(),
            ..s.vms[1].clone()
        });
        let e = fits(&s3, 1).unwrap_err();
        assert!(
            e.contains("VMs \"ts\", \"ts2\" are time-shared") && e.contains("left for them"),
            "{e}"
        );
        // Every CPU pinned and no VM time-shared is fine.
        fits(&pinned("[0]", "[1]"), 2).unwrap();
    }
}
