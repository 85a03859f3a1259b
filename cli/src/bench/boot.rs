//! `bothy bench boot`: the demo Linux guest (Debian kernel + busybox initramfs,
//! [`GUEST_BOOTARGS`], 2 vCPUs) booted in up to four configurations, timed from spawning
//! QEMU to the guest's `/init` printing [`READY_MARKER`] on the console.
//!
//! `bare` hands kernel and initramfs to QEMU directly: Linux runs at EL1 and QEMU
//! answers PSCI itself. `bothy` boots a packed Bothy image with one VM
//! ([`single_vm_system`]) with `virtualization=on`, so the time includes Bothy's own
//! boot, copying the guest's images into its RAM, and every trapped GIC and UART access
//! of the guest. `bothy-shared` boots two such VMs in one image ([`shared_system`]),
//! time-sharing the same CPUs, and times each VM to its own tagged ready line
//! (`[linux-a] BOTHY-GUEST-READY`): what sharing the CPUs costs each guest, against
//! `bothy`. `xen` boots Xen 4.17 dom0less with the same kernel and initramfs as its
//! domU ([`crate::xen`]). Runs alternate (bare, bothy, bothy-shared, xen, bare, ...) so
//! that drift on the host affects all alike; the results are the ratios of the medians.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::{command_line, format_ratio, median, qemu_version, time_to_markers, Run, Watch};
use crate::config::{
    Machine, OnExit, SystemConfig, VmConfig, DEFAULT_SLICE_US, HYP_RESERVE, MEMORY_GRANULE,
};
use crate::initramfs::READY_MARKER;
use crate::qemu;
use crate::size::{format_size, MIB};
use crate::xen;

/// Said next to every result: part of the ratio is QEMU's, not Bothy's.
pub const EL2_NOTE: &str = "under TCG, virtualization=on (emulated EL2) costs something by \
itself, even with no hypervisor running; the ratio includes that, the hypervisor's own boot \
and copying the guest kernel into guest RAM";

/// The guest VM's RAM under Bothy (each VM's, in `bothy-shared`) and the Xen domU's: as
/// measured since the first `bench boot`.
pub const GUEST_MEMORY: u64 = 512 * MIB;
/// The guest's bootargs in every configuration (no `quiet`: the console traffic of a
/// full boot log is part of what is measured).
pub const GUEST_BOOTARGS: &str = "console=ttyAMA0";
/// The VMs of `bothy-shared`, as their console lines are tagged.
pub const SHARED_VMS: [&str; 2] = ["linux-a", "linux-b"];
/// When `bothy-shared` does not fit the machine's RAM, it gets the next multiple of this.
pub const SHARED_MEMORY_STEP: u64 = 256 * MIB;

/// What is being compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootConfig {
    /// The guest directly on QEMU at EL1.
    Bare,
    /// The guest as the one VM under Bothy, QEMU entering at EL2.
    Bothy,
    /// Two such guests as two VMs under Bothy, time-sharing the CPUs.
    BothyShared,
    /// The guest as a dom0less domU of Xen 4.17, QEMU entering at EL2.
    Xen,
}

impl BootConfig {
    /// Also the order in which a round of runs goes through them.
    pub const ALL: [BootConfig; 4] = [
        BootConfig::Bare,
        BootConfig::Bothy,
        BootConfig::BothyShared,
        BootConfig::Xen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BootConfig::Bare => "bare",
            BootConfig::Bothy => "bothy",
            BootConfig::BothyShared => "bothy-shared",
            BootConfig::Xen => "xen",
        }
    }

    /// As in headings.
    pub fn title(self) -> &'static str {
        match self {
            BootConfig::Bare => "bare",
            BootConfig::Bothy => "Bothy",
            BootConfig::BothyShared => "Bothy, 2 VMs",
            BootConfig::Xen => "Xen",
        }
    }

    /// `bare`, `bothy`, `bothy-shared` or `xen` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?}: not a configuration (bare, bothy, bothy-shared, xen)"))
    }

    /// `--only` in the canonical order; all when empty.
    pub fn selected(only: &[BootConfig]) -> Vec<BootConfig> {
        Self::ALL
            .into_iter()
            .filter(|c| only.is_empty() || only.contains(c))
            .collect()
    }
}

/// A Linux VM of the benchmark: 2 vCPUs, [`GUEST_MEMORY`], [`GUEST_BOOTARGS`].
fn linux_vm(name: &str, kernel: &Path, initrd: &Path) -> VmConfig {
    VmConfig {
        name: name.into(),
        cpus: 2,
        memory: GUEST_MEMORY,
        kernel: kernel.to_path_buf(),
        initrd: Some(initrd.to_path_buf()),
        bootargs: GUEST_BOOTARGS.into(),
        pin: Vec::new(),
        on_exit: OnExit::Halt,
    }
}

/// The Bothy system of the `bothy` configuration: one VM, `linux0`. Built here rather
/// than taken from `bothy run`'s demo, which has had two Linux VMs and the self-test
/// since the demo became time-shared: timing that would time the first of two guests
/// sharing the CPUs, not one guest alone.
pub fn single_vm_system(kernel: &Path, initrd: &Path) -> SystemConfig {
    SystemConfig {
        source: PathBuf::from("<bench boot: bothy>"),
        slice_us: DEFAULT_SLICE_US,
        vms: vec![linux_vm("linux0", kernel, initrd)],
    }
}

/// The Bothy system of `bothy-shared`: two VMs ([`SHARED_VMS`]), each the same as
/// `bothy`'s one, time-shared (no `pin`) with the default slice.
pub fn shared_system(kernel: &Path, initrd: &Path) -> SystemConfig {
    SystemConfig {
        source: PathBuf::from("<bench boot: bothy-shared>"),
        slice_us: DEFAULT_SLICE_US,
        vms: SHARED_VMS
            .iter()
            .map(|n| linux_vm(n, kernel, initrd))
            .collect(),
    }
}

/// The guest machine's RAM for `system` with `payload` bytes of packed images: `memory`
/// if they fit in it ([`SystemConfig::check_fits`]), else the next multiple of
/// [`SHARED_MEMORY_STEP`] that fits. Err if `cpus` do not fit.
pub fn memory_to_fit(system: &SystemConfig, cpus: u32, memory: u64, payload: u64) -> Result<u64> {
    let vms: u64 = system.vms.iter().map(|v| v.memory).sum();
    let needed = vms + payload + HYP_RESERVE;
    let memory = if needed <= memory {
        memory
    } else {
        needed.div_ceil(SHARED_MEMORY_STEP) * SHARED_MEMORY_STEP
    };
    debug_assert_eq!(memory % MEMORY_GRANULE, 0);
    system.check_fits(Machine { cpus, memory }, payload)?;
    Ok(memory)
}

/// The `bothy-shared` image and its machine.
#[derive(Clone, Debug)]
pub struct Shared {
    pub image: PathBuf,
    /// Its VMs' names, as their console lines are tagged.
    pub vms: Vec<String>,
    /// The guest machine's RAM (`-m`): more than [`Setup::memory`] when two VMs and
    /// their images do not fit in that (see [`memory_to_fit`]).
    pub memory: u64,
}

/// The guest and the machine, shared by all configurations.
#[derive(Clone, Debug)]
pub struct Setup {
    pub cpus: u32,
    pub memory: u64,
    /// The packed Bothy image of `bothy` (hypervisor + one VM with the same kernel,
    /// initrd and bootargs); None: not measured.
    pub image: Option<PathBuf>,
    /// `bothy-shared`; None: not measured.
    pub shared: Option<Shared>,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub bootargs: String,
    /// Xen with the same kernel, initrd and bootargs as its domU; None: not measured.
    pub xen: Option<xen::Prepared>,
    /// The configurations to run, in this order.
    pub configs: Vec<BootConfig>,
}

impl Setup {
    /// The QEMU command line of one configuration, stdio not yet set.
    pub fn command(&self, config: BootConfig) -> Command {
        let (el2, memory, kernel, extra_args) = match config {
            BootConfig::Bare => {
                let mut extra = Vec::new();
                if let Some(i) = &self.initrd {
                    extra.push("-initrd".to_string());
                    extra.push(i.display().to_string());
                }
                extra.push("-append".to_string());
                extra.push(self.bootargs.clone());
                (false, self.memory, &self.kernel, extra)
            }
            BootConfig::Bothy => {
                let image = self.image.as_ref().expect("the bothy image was built");
                (true, self.memory, image, Vec::new())
            }
            BootConfig::BothyShared => {
                let s = self
                    .shared
                    .as_ref()
                    .expect("the bothy-shared image was built");
                (true, s.memory, &s.image, Vec::new())
            }
            BootConfig::Xen => {
                return self
                    .xen
                    .as_ref()
                    .expect("the xen configuration was prepared")
                    .command()
            }
        };
        qemu::Machine {
            cpus: self.cpus,
            memory,
            el2,
            machine_opts: Vec::new(),
            extra_args,
        }
        .command(kernel)
    }

    /// What a run of `config` waits for: the marker, or with two VMs each one's
    /// tagged marker.
    pub fn watch(&self, config: BootConfig) -> Watch {
        match (config, &self.shared) {
            (BootConfig::BothyShared, Some(s)) => Watch::Tagged {
                marker: READY_MARKER.into(),
                vms: s.vms.clone(),
            },
            _ => Watch::Marker(READY_MARKER.into()),
        }
    }

    /// The guest machine's RAM of `config`.
    pub fn memory_of(&self, config: BootConfig) -> u64 {
        match (config, &self.shared) {
            (BootConfig::BothyShared, Some(s)) => s.memory,
            _ => self.memory,
        }
    }

    /// Xen for `bench boot`: the same machine (plus `dtb-randomness=off`, so the DTB Xen
    /// gets is the one dumped) and the demo guest as a domU of `domu_memory`.
    pub fn prepare_xen(&mut self, xen_bin: &Path, domu_memory: u64, dir: &Path) -> Result<()> {
        let m = xen::Machine {
            xen: xen_bin.to_path_buf(),
            machine: "virt,virtualization=on,gic-version=3,dtb-randomness=off".into(),
            cpus: self.cpus,
            memory: self.memory,
            extra_args: Vec::new(),
        };
        let domu = xen::DomU {
            cpus: self.cpus,
            memory: domu_memory,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            bootargs: self.bootargs.clone(),
        };
        self.xen = Some(m.prepare(&domu, dir)?);
        Ok(())
    }
}

/// One guest's times in a configuration with several (`bothy-shared`).
#[derive(Clone, Debug, Serialize)]
pub struct GuestResult {
    /// The VM, as its console lines are tagged.
    pub vm: String,
    /// Per run: from spawning QEMU to this VM's `[vm] BOTHY-GUEST-READY`.
    pub seconds: Vec<f64>,
    pub median: f64,
}

/// One configuration's results.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigResult {
    pub name: BootConfig,
    pub command: String,
    /// The guest machine's RAM (`-m`).
    pub memory: String,
    /// Per run: from spawning QEMU to the marker; with several guests, to the last of
    /// their markers (when QEMU was stopped).
    pub seconds: Vec<f64>,
    pub median: f64,
    /// With several guests (`bothy-shared`): each one's own times; else empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guests: Vec<GuestResult>,
    /// Per run: the share of the host's CPU time that went to processes other than
    /// this run's QEMU (see [`Run::other_load`]).
    pub other_load: Vec<f64>,
}

impl ConfigResult {
    /// The rows it contributes to the table: `(label, seconds, median)`, one per
    /// guest. A guest of several is labelled `bothy-shared[linux-a]`.
    pub fn series(&self) -> Vec<(String, &[f64], f64)> {
        if self.guests.is_empty() {
            return vec![(self.name.name().to_string(), &self.seconds, self.median)];
        }
        self.guests
            .iter()
            .map(|g| {
                let label = format!("{}[{}]", self.name.name(), g.vm);
                (label, &g.seconds[..], g.median)
            })
            .collect()
    }
}

/// Where it ran.
#[derive(Clone, Debug, Serialize)]
pub struct MachineNote {
    pub qemu: String,
    pub host_cpus: usize,
    pub smp: u32,
    pub memory: String,
}

/// Above this share of the host's CPU time going elsewhere, a run is called noisy.
pub const NOISY_LOAD: f64 = 0.05;

/// The ratios of medians worth printing: each hypervisor over bare, Bothy over Xen,
/// and each guest of `bothy-shared` over `bothy` alone and over bare; only between
/// configurations that ran.
pub fn ratios(configs: &[ConfigResult]) -> Vec<(String, f64)> {
    let get = |c: BootConfig| configs.iter().find(|r| r.name == c).map(|r| r.median);
    let mut out = Vec::new();
    for (num, den) in [
        (BootConfig::Bothy, BootConfig::Bare),
        (BootConfig::Xen, BootConfig::Bare),
        (BootConfig::Bothy, BootConfig::Xen),
    ] {
        if let (Some(n), Some(d)) = (get(num), get(den)) {
            out.push((format!("{}/{}", num.name(), den.name()), n / d));
        }
    }
    for c in configs.iter().filter(|c| c.name == BootConfig::BothyShared) {
        for (label, _, m) in c.series() {
            for den in [BootConfig::Bothy, BootConfig::Bare] {
                if let Some(d) = get(den) {
                    out.push((format!("{label}/{}", den.name()), m / d));
                }
            }
        }
    }
    out
}

/// `boot to /init: bare 4.1 s, bothy 4.4 s, xen 5.0 s; bothy/bare 1.07x, ... (median of 3)`.
pub fn summary_line(configs: &[ConfigResult], runs: usize) -> String {
    let times: Vec<String> = configs
        .iter()
        .flat_map(ConfigResult::series)
        .map(|(label, _, t)| format!("{label} {t:.1} s"))
        .collect();
    let ratios: Vec<String> = ratios(configs)
        .into_iter()
        .map(|(k, r)| format!("{k} {}", format_ratio(r)))
        .collect();
    let sep = if ratios.is_empty() { "" } else { "; " };
    format!(
        "boot to /init: {}{sep}{} (median of {runs})",
        times.join(", "),
        ratios.join(", ")
    )
}

/// The whole result, as printed and as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    pub marker: &'static str,
    pub runs: usize,
    pub machine: MachineNote,
    pub configurations: Vec<ConfigResult>,
    /// `bothy/bare` = median(bothy) / median(bare), `xen/bare`, `bothy/xen`, and per
    /// guest of `bothy-shared`, e.g. `bothy-shared[linux-a]/bothy` and `.../bare`.
    pub ratios: BTreeMap<String, f64>,
    pub summary: String,
    pub note: &'static str,
}

impl Report {
    pub fn new(machine: MachineNote, configurations: Vec<ConfigResult>, runs: usize) -> Self {
        Self {
            benchmark: "boot",
            marker: READY_MARKER,
            runs,
            machine,
            ratios: ratios(&configurations).into_iter().collect(),
            summary: summary_line(&configurations, runs),
            note: EL2_NOTE,
            configurations,
        }
    }

    /// The table (a row per guest: `bothy-shared` has two; the medians over bare's
    /// and over `bothy`'s), the summary line, the machine and the notes.
    pub fn render(&self) -> String {
        let get = |c: BootConfig| {
            self.configurations
                .iter()
                .find(|r| r.name == c)
                .map(|r| r.median)
        };
        let (bare, bothy) = (get(BootConfig::Bare), get(BootConfig::Bothy));
        let rows: Vec<(BootConfig, String, &[f64], f64)> = self
            .configurations
            .iter()
            .flat_map(|c| {
                c.series()
                    .into_iter()
                    .map(move |(label, s, m)| (c.name, label, s, m))
            })
            .collect();
        let width = rows
            .iter()
            .map(|r| r.1.len())
            .chain(["configuration".len()])
            .max()
            .unwrap_or(0)
            + 2;
        let ratio = |den: Option<f64>, m: f64| den.map_or(String::new(), |d| format_ratio(m / d));
        let mut s = format!("{:<width$}", "configuration");
        for i in 1..=self.runs {
            s += &format!("{:>9}", format!("run {i}"));
        }
        s += &format!("{:>9}{:>8}{:>8}\n", "median", "/bare", "/bothy");
        for (config, label, seconds, m) in &rows {
            s += &format!("{label:<width$}");
            for t in *seconds {
                s += &format!("{:>8.2}s", t);
            }
            s += &format!("{:>8.2}s", m);
            let over_bare = match config {
                BootConfig::Bare => String::new(),
                _ => ratio(bare, *m),
            };
            let over_bothy = match config {
                BootConfig::BothyShared => ratio(bothy, *m),
                _ => String::new(),
            };
            s += format!("{over_bare:>8}{over_bothy:>8}").trim_end();
            s += "\n";
        }
        s += &format!("\n{}\n", self.summary);
        s += &format!(
            "machine: {}, {} host CPUs, guest machine -smp {} -m {}\n",
            self.machine.qemu, self.machine.host_cpus, self.machine.smp, self.machine.memory
        );
        for c in &self.configurations {
            if c.name == BootConfig::BothyShared {
                let vms: Vec<&str> = c.guests.iter().map(|g| g.vm.as_str()).collect();
                s += &format!(
                    "bothy-shared: {} VMs ({}), each as bothy's one, time-share the same {} \
                     CPUs; each row is one VM's time to its own \"[name] {}\"\n",
                    vms.len(),
                    vms.join(", "),
                    self.machine.smp,
                    self.marker
                );
            }
            if c.memory != self.machine.memory {
                s += &format!(
                    "{}: -m {} (its VMs and their images do not fit in {})\n",
                    c.name.name(),
                    c.memory,
                    self.machine.memory
                );
            }
        }
        let load = self
            .configurations
            .iter()
            .flat_map(|c| c.other_load.iter().copied())
            .fold(0.0, f64::max);
        if load > NOISY_LOAD {
            s += &format!(
                "warning: other processes used up to {:.0}% of the host's CPU time during a \
                 run; the times are noisy\n",
                load * 100.0
            );
        }
        s += &format!("note: {}\n", self.note);
        s
    }
}

/// One configuration's runs as a result.
fn config_result(setup: &Setup, config: BootConfig, runs: &[Run]) -> ConfigResult {
    let seconds: Vec<f64> = runs.iter().map(|r| r.time.as_secs_f64()).collect();
    let watch = setup.watch(config);
    let guests = match &watch {
        Watch::Marker(_) => Vec::new(),
        Watch::Tagged { vms, .. } => vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let seconds: Vec<f64> = runs.iter().map(|r| r.times[i].as_secs_f64()).collect();
                GuestResult {
                    vm: vm.clone(),
                    median: median(&seconds).expect("runs > 0"),
                    seconds,
                }
            })
            .collect(),
    };
    ConfigResult {
        name: config,
        command: command_line(&setup.command(config)),
        memory: format_size(setup.memory_of(config)),
        median: median(&seconds).expect("runs > 0"),
        seconds,
        guests,
        other_load: runs.iter().map(|r| r.other_load.unwrap_or(0.0)).collect(),
    }
}

/// `2.41 s`, or per VM: `linux-a 4.62 s, linux-b 4.80 s`.
fn run_line(watch: &Watch, run: &Run) -> String {
    match watch {
        Watch::Marker(_) => format!("{:.2} s", run.time.as_secs_f64()),
        Watch::Tagged { vms, .. } => vms
            .iter()
            .zip(&run.times)
            .map(|(vm, t)| format!("{vm} {:.2} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Runs the benchmark: `runs` boots of each configuration, alternating.
pub fn boot(setup: &Setup, runs: usize, timeout: Duration, json: Option<&Path>) -> Result<Report> {
    ensure!(runs > 0, "--runs must be at least 1");
    let machine = MachineNote {
        qemu: qemu_version()?,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        smp: setup.cpus,
        memory: format_size(setup.memory),
    };
    ensure!(!setup.configs.is_empty(), "no configuration to run");
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); setup.configs.len()];
    for run in 1..=runs {
        for (i, &config) in setup.configs.iter().enumerate() {
            eprint!("bothy: bench boot: {} run {run}/{runs} ... ", config.name());
            let watch = setup.watch(config);
            let t = time_to_markers(setup.command(config), &watch, timeout)
                .with_context(|| format!("{} run {run}", config.name()));
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("failed");
                    return Err(e);
                }
            };
            let load = t
                .other_load
                .filter(|&l| l > NOISY_LOAD)
                .map_or(String::new(), |l| {
                    format!(" (other processes: {:.0}% of the CPUs)", l * 100.0)
                });
            eprintln!("{}{load}", run_line(&watch, &t));
            results[i].push(t);
        }
    }
    let configurations = setup
        .configs
        .iter()
        .zip(&results)
        .map(|(&config, runs)| config_result(setup, config, runs))
        .collect();
    let report = Report::new(machine, configurations, runs);
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    fn setup() -> Setup {
        Setup {
            cpus: 2,
            memory: GIB,
            image: Some("/t/bothy.img".into()),
            shared: Some(Shared {
                image: "/t/bothy-shared.img".into(),
                vms: SHARED_VMS.iter().map(|s| s.to_string()).collect(),
                memory: 1280 * MIB,
            }),
            kernel: "/c/vmlinuz".into(),
            initrd: Some("/t/initramfs.cpio.gz".into()),
            bootargs: "console=ttyAMA0".into(),
            xen: Some(xen::Prepared {
                args: vec!["-kernel".into(), "/c/xen".into()],
            }),
            configs: BootConfig::ALL.to_vec(),
        }
    }

    #[test]
    fn config_names_and_selection() {
        assert_eq!(BootConfig::parse("Xen"), Ok(BootConfig::Xen));
        assert_eq!(
            BootConfig::parse(" bothy-shared"),
            Ok(BootConfig::BothyShared)
        );
        let e = BootConfig::parse("kvm").unwrap_err();
        assert!(e.contains("bare, bothy, bothy-shared, xen"), "{e}");
        assert_eq!(BootConfig::selected(&[]), BootConfig::ALL.to_vec());
        // Canonical order, whatever the order given.
        assert_eq!(
            BootConfig::selected(&[BootConfig::BothyShared, BootConfig::Bare]),
            vec![BootConfig::Bare, BootConfig::BothyShared]
        );
        assert_eq!(BootConfig::BothyShared.title(), "Bothy, 2 VMs");
        assert_eq!(
            serde_json::to_value(BootConfig::BothyShared).unwrap(),
            "bothy-shared"
        );
    }

    #[test]
    fn systems() {
        let (k, i) = (Path::new("/c/vmlinuz"), Path::new("/t/initrd"));
        let one = single_vm_system(k, i);
        let two = shared_system(k, i);
        assert_eq!(one.vms.len(), 1);
        assert_eq!(one.vms[0].name, "linux0");
        assert_eq!(two.vms.len(), 2);
        for vm in &two.vms {
            // The same VM as bothy's, but for its name.
            assert_eq!(
                VmConfig {
                    name: "linux0".into(),
                    ..vm.clone()
                },
                one.vms[0]
            );
        }
        let v = &one.vms[0];
        assert_eq!((v.cpus, v.memory), (2, 512 * MIB));
        assert_eq!(v.bootargs, "console=ttyAMA0");
        assert!(v.pin.is_empty());
        assert_eq!(v.initrd.as_deref(), Some(i));
        let names: Vec<&str> = two.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, SHARED_VMS);
    }

    #[test]
    fn memory_is_raised_only_when_needed() {
        let (k, i) = (Path::new("/c/vmlinuz"), Path::new("/t/initrd"));
        let one = single_vm_system(k, i);
        let two = shared_system(k, i);
        let images = 46 * MIB;
        assert_eq!(memory_to_fit(&one, 2, GIB, images).unwrap(), GIB);
        // 2 x 512M + 2 x 46M + 64M = 1180M: the next 256M step is 1280M.
        assert_eq!(memory_to_fit(&two, 2, GIB, 2 * images).unwrap(), 1280 * MIB);
        assert_eq!(
            memory_to_fit(&two, 2, 2 * GIB, 2 * images).unwrap(),
            2 * GIB
        );
        // Exactly full fits.
        assert_eq!(
            memory_to_fit(&two, 2, 1280 * MIB, 192 * MIB).unwrap(),
            1280 * MIB
        );
        assert_eq!(
            memory_to_fit(&two, 2, 1280 * MIB, 192 * MIB + 1).unwrap(),
            1536 * MIB
        );
    }

    #[test]
    fn command_lines_and_watches() {
        let setup = setup();
        assert_eq!(
            command_line(&setup.command(BootConfig::Xen)),
            "qemu-system-aarch64 -kernel /c/xen"
        );
        assert_eq!(
            command_line(&setup.command(BootConfig::Bare)),
            "qemu-system-aarch64 -machine virt,virtualization=off,gic-version=3 \
             -cpu max,pauth-impdef=on -smp 2 -m 1024M -nographic -nic none \
             -kernel /c/vmlinuz -initrd /t/initramfs.cpio.gz -append console=ttyAMA0"
        );
        assert_eq!(
            command_line(&setup.command(BootConfig::Bothy)),
            "qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3 \
             -cpu max,pauth-impdef=on -smp 2 -m 1024M -nographic -nic none \
             -kernel /t/bothy.img"
        );
        assert_eq!(
            command_line(&setup.command(BootConfig::BothyShared)),
            "qemu-system-aarch64 -machine virt,virtualization=on,gic-version=3 \
             -cpu max,pauth-impdef=on -smp 2 -m 1280M -nographic -nic none \
             -kernel /t/bothy-shared.img"
        );
        assert_eq!(
            setup.watch(BootConfig::Bothy),
            Watch::Marker(READY_MARKER.into())
        );
        let w = setup.watch(BootConfig::BothyShared);
        assert_eq!(w.count(), 2);
        assert_eq!(w.label(0), "[linux-a] BOTHY-GUEST-READY");
        assert_eq!(w.label(1), "[linux-b] BOTHY-GUEST-READY");
        assert_eq!(setup.memory_of(BootConfig::BothyShared), 1280 * MIB);
        assert_eq!(setup.memory_of(BootConfig::Xen), GIB);
    }

    fn machine() -> MachineNote {
        MachineNote {
            qemu: "QEMU emulator version 7.2.22".into(),
            host_cpus: 2,
            smp: 2,
            memory: "1G".into(),
        }
    }

    fn plain(name: BootConfig, seconds: [f64; 3], median: f64) -> ConfigResult {
        ConfigResult {
            name,
            command: String::new(),
            memory: "1G".into(),
            seconds: seconds.to_vec(),
            median,
            guests: Vec::new(),
            other_load: vec![0.01; 3],
        }
    }

    #[test]
    fn report_renders_table_and_ratio() {
        let configs = vec![
            plain(BootConfig::Bare, [4.0, 4.2, 4.1], 4.1),
            plain(BootConfig::Bothy, [4.4, 4.5, 4.3], 4.4),
        ];
        let r = Report::new(machine(), configs, 3);
        let text = r.render();
        assert!(text.contains("bothy/bare 1.07x (median of 3)"), "{text}");
        assert!(
            text.contains(
                "configuration      run 1    run 2    run 3   median   /bare  /bothy\n\
                 bare               4.00s    4.20s    4.10s    4.10s\n\
                 bothy              4.40s    4.50s    4.30s    4.40s   1.07x\n"
            ),
            "{text}"
        );
        assert!(text.contains("virtualization=on"), "{text}");
        assert!(!text.contains("warning"), "{text}");
        assert!(!text.contains("bothy-shared"), "{text}");
        let mut noisy = r.clone();
        noisy.configurations[0].other_load[1] = 0.42;
        let text = noisy.render();
        assert!(text.contains("other processes used up to 42%"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["configurations"][1]["name"], "bothy");
        assert!(json["configurations"][1].get("guests").is_none());
        assert!((json["ratios"]["bothy/bare"].as_f64().unwrap() - 4.4 / 4.1).abs() < 1e-9);
    }

    #[test]
    fn shared_guests_get_rows_and_ratios() {
        let setup = setup();
        let run = |a: u64, b: u64| Run {
            time: Duration::from_millis(a.max(b)),
            times: vec![Duration::from_millis(a), Duration::from_millis(b)],
            other_load: Some(0.0),
        };
        let shared = config_result(
            &setup,
            BootConfig::BothyShared,
            &[run(8000, 8600), run(9000, 8200), run(8400, 8800)],
        );
        assert_eq!(shared.seconds, [8.6, 9.0, 8.8]);
        assert_eq!(shared.median, 8.8);
        assert_eq!(shared.memory, "1280M");
        assert_eq!(shared.guests.len(), 2);
        assert_eq!(shared.guests[0].vm, "linux-a");
        assert_eq!(shared.guests[0].seconds, [8.0, 9.0, 8.4]);
        assert_eq!(shared.guests[0].median, 8.4);
        assert_eq!(shared.guests[1].median, 8.6);
        assert!(shared
            .command
            .ends_with("-m 1280M -nographic -nic none -kernel /t/bothy-shared.img"));

        let configs = vec![
            plain(BootConfig::Bare, [4.0, 4.2, 4.1], 4.0),
            plain(BootConfig::Bothy, [4.4, 4.5, 4.3], 4.2),
            shared,
            plain(BootConfig::Xen, [4.6, 4.5, 4.4], 4.5),
        ];
        let r = Report::new(machine(), configs, 3);
        let text = r.render();
        let table = "configuration              run 1    run 2    run 3   median   /bare  /bothy\n\
                     bare                       4.00s    4.20s    4.10s    4.00s\n\
                     bothy                      4.40s    4.50s    4.30s    4.20s   1.05x\n\
                     bothy-shared[linux-a]      8.00s    9.00s    8.40s    8.40s   2.10x   2.00x\n\
                     bothy-shared[linux-b]      8.60s    8.20s    8.80s    8.60s   2.15x   2.05x\n\
                     xen                        4.60s    4.50s    4.40s    4.50s   1.12x\n";
        assert!(text.starts_with(table), "{text}");
        assert!(
            text.contains(
                "boot to /init: bare 4.0 s, bothy 4.2 s, bothy-shared[linux-a] 8.4 s, \
                 bothy-shared[linux-b] 8.6 s, xen 4.5 s; bothy/bare 1.05x, xen/bare 1.12x, \
                 bothy/xen 0.93x, bothy-shared[linux-a]/bothy 2.00x, \
                 bothy-shared[linux-a]/bare 2.10x, bothy-shared[linux-b]/bothy 2.05x, \
                 bothy-shared[linux-b]/bare 2.15x (median of 3)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "bothy-shared: 2 VMs (linux-a, linux-b), each as bothy's one, time-share \
                 the same 2 CPUs"
            ),
            "{text}"
        );
        assert!(
            text.contains("bothy-shared: -m 1280M (its VMs and their images do not fit in 1G)"),
            "{text}"
        );
        // The JSON has both VMs' times per run, the raised memory and the ratios.
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        let s = &json["configurations"][2];
        assert_eq!(s["name"], "bothy-shared");
        assert_eq!(s["memory"], "1280M");
        assert_eq!(s["seconds"], serde_json::json!([8.6, 9.0, 8.8]));
        assert_eq!(s["guests"][0]["vm"], "linux-a");
        assert_eq!(
            s["guests"][0]["seconds"],
            serde_json::json!([8.0, 9.0, 8.4])
        );
        assert_eq!(s["guests"][1]["vm"], "linux-b");
        assert_eq!(
            s["guests"][1]["seconds"],
            serde_json::json!([8.6, 8.2, 8.8])
        );
        assert_eq!(s["guests"][1]["median"], 8.6);
        let ratio = |k: &str| json["ratios"][k].as_f64().unwrap();
        assert!((ratio("bothy-shared[linux-a]/bothy") - 2.0).abs() < 1e-9);
        assert!((ratio("bothy-shared[linux-b]/bare") - 2.15).abs() < 1e-9);

        // Without bothy (--only bare,bothy-shared): no /bothy column values.
        let only: Vec<ConfigResult> = r
            .configurations
            .iter()
            .filter(|c| c.name != BootConfig::Bothy)
            .cloned()
            .collect();
        let r = Report::new(machine(), only, 3);
        assert!(
            !r.ratios.keys().any(|k| k.ends_with("/bothy")),
            "{:?}",
            r.ratios
        );
        assert!(
            r.render()
                .contains("bothy-shared[linux-a]      8.00s    9.00s    8.40s    8.40s   2.10x\n"),
            "{}",
            r.render()
        );
    }
}
