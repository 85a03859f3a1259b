//! `bothy`: build Bothy images, run them on QEMU, fetch guest artifacts.
//!
//! The subcommands are thin: each gathers its inputs and calls into the library
//! (`bothy_cli`), where the logic lives and is tested. Every error a user can cause
//! is reported with the file, key or VM it concerns, before anything boots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bothy_cli::bench::boot::{self, BootConfig};
use bothy_cli::bench::{self, chart, micro, Config};
use bothy_cli::cache::{repo_root, Cache};
use bothy_cli::config::{Machine, OnExit, SystemConfig, VmConfig, DEFAULT_SLICE_US};
use bothy_cli::size::{format_size, parse_size, MIB};
use bothy_cli::{flatten, hyp, initramfs, pack, qemu, xen};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "bothy",
    version,
    about = "Bothy: a Type-1 hypervisor for AArch64"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct MachineArgs {
    /// Physical CPUs of the QEMU machine (-smp); vCPUs time-share them unless pinned.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// RAM of the QEMU machine (-m), e.g. 1G or 2048M.
    #[arg(long, default_value = "1G", value_parser = parse_mem)]
    mem: u64,
    /// Hypervisor ELF to use instead of building hyp/ with cargo.
    #[arg(long, value_name = "PATH")]
    hyp: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Board {
    /// QEMU virt: early console on its PL011 at 0x0900_0000.
    QemuVirt,
    /// Anything else: no early console; only the firmware's DTB is used.
    Generic,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pack the hypervisor and the VMs of SYSTEM.toml into one bootable image.
    Image {
        /// System file (see docs/CONFIG.md).
        system: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        machine: MachineArgs,
        /// Board the image is for.
        #[arg(long, value_enum, default_value = "qemu-virt")]
        board: Board,
        /// Fault injection for Bothy's own tests: the hypervisor overflows its EL2 stack
        /// on purpose at boot, to show the guard pages catch it. Never for real use.
        #[arg(long, hide = true)]
        debug_overflow_stack: bool,
    },
    /// Build an image and run it on QEMU with the console attached.
    ///
    /// Without SYSTEM.toml, runs the built-in demo: two Linux VMs (2 vCPUs each, a
    /// busybox shell) and the self-test VM, time-shared; type `poweroff` in each Linux
    /// guest to end it.
    Run {
        /// System file (see docs/CONFIG.md); the built-in demo when omitted.
        system: Option<PathBuf>,
        /// Stop QEMU and fail after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        #[command(flatten)]
        machine: MachineArgs,
        /// Extra argument for QEMU (repeatable), e.g. --qemu-arg=-s.
        #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
        qemu_args: Vec<String>,
        /// Extra property of QEMU's virt board (repeatable), added to its -machine
        /// option, e.g. --machine-opt mte=on for a CPU with MTE and tag memory.
        #[arg(long = "machine-opt", value_name = "KEY=VALUE", value_parser = parse_machine_opt)]
        machine_opts: Vec<String>,
        /// Enter at EL1 (virtualization=off): only to check that Bothy refuses.
        #[arg(long, hide = true)]
        el1: bool,
    },
    /// Download and unpack the demo's guest kernel and busybox into the cache.
    Fetch,
    /// Write the demo initramfs (busybox shell, gzip newc cpio) to a file.
    Initramfs {
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Benchmarks (see docs/PERFORMANCE.md).
    ///
    /// Without a subcommand: the microbenchmarks of guests/bench (hypercall, trapped
    /// MMIO, SGI, virtual timer, UART, IPI) under bare QEMU, Bothy and Xen 4.17
    /// dom0less, counted in instructions with QEMU -icount, as a table on stdout, a
    /// JSON file and a PNG chart. Fails if any operation has no number.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCmd>,
        #[command(flatten)]
        micro: MicroArgs,
    },
}

#[derive(clap::Args, Clone)]
struct MicroArgs {
    /// Fewer samples per operation (bench.iters=50 instead of 1000).
    #[arg(long)]
    quick: bool,
    /// Samples per operation (1..10000); overrides --quick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    iters: Option<u32>,
    /// Write the results as JSON here [default: target/bench/bench.json].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the bar chart here [default: target/bench/bench.png].
    #[arg(long, value_name = "PATH")]
    png: Option<PathBuf>,
    /// Only these configurations, comma-separated: bare,bothy,xen.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = Config::parse)]
    only: Vec<Config>,
    /// Stop a QEMU run that has not finished after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
    /// Hypervisor ELF to use instead of building hyp/ with cargo.
    #[arg(long, value_name = "PATH")]
    hyp: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Boot the demo Linux guest on bare QEMU, under Bothy (alone, and as one of two
    /// VMs sharing the CPUs) and as a Xen dom0less domU, alternately, and print the
    /// time to its /init marker and the ratios of the medians.
    Boot {
        /// Only these configurations, comma-separated: bare,bothy,bothy-shared,xen.
        #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = BootConfig::parse)]
        only: Vec<BootConfig>,
        /// Boots per configuration.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also write the results as JSON to PATH.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Fail a run that has not reached /init after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        machine: MachineArgs,
    },
}

fn parse_mem(s: &str) -> Result<u64, String> {
    let v = parse_size(s).map_err(|e| e.to_string())?;
    if v == 0 || v % (2 * MIB) != 0 {
        return Err(format!("{s}: must be a non-zero multiple of 2M"));
    }
    Ok(v)
}

/// One `key=value` property for QEMU's `-machine virt,...` (a comma would start another).
fn parse_machine_opt(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((key, _)) if !key.is_empty() && !s.contains(',') => Ok(s.to_string()),
        _ => Err(format!(
            "{s}: want one KEY=VALUE property of QEMU's virt machine, e.g. mte=on"
        )),
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bothy: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Image {
            system,
            output,
            machine,
            board,
            debug_overflow_stack,
        } => {
            let sys = SystemConfig::load(&system)?;
            let early = (board == Board::QemuVirt).then_some(pack::QEMU_VIRT_PL011);
            let check = (board == Board::QemuVirt).then_some(&machine);
            let packed = build_image_with(&sys, &machine, check, early, debug_overflow_stack)?;
            std::fs::write(&output, &packed.bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            report(&output, &sys, &packed);
            Ok(())
        }
        Cmd::Run {
            system,
            timeout,
            machine,
            qemu_args,
            machine_opts,
            el1,
        } => {
            let tmp = tempfile::Builder::new().prefix("bothy-run-").tempdir()?;
            let (sys, image) = qemu_image(system.as_deref(), &machine, tmp.path())?;
            let m = qemu::Machine {
                cpus: machine.smp,
                memory: machine.mem,
                el2: !el1,
                machine_opts,
                extra_args: qemu_args,
            };
            eprintln!(
                "bothy: running {} VM(s) on QEMU virt ({} CPUs, {})",
                sys.vms.len(),
                m.cpus,
                format_size(m.memory)
            );
            qemu::run_attached(m.command(&image), timeout.map(Duration::from_secs))?;
            eprintln!("bothy: done: QEMU exited cleanly");
            Ok(())
        }
        Cmd::Fetch => {
            let a = Cache::default_location().fetch()?;
            eprintln!("bothy: kernel  {}", a.kernel.display());
            eprintln!("bothy: busybox {}", a.busybox.display());
            Ok(())
        }
        Cmd::Initramfs { output } => {
            let a = Cache::default_location().guest_artifacts()?;
            let data = initramfs::build_demo(&a)?;
            std::fs::write(&output, data).with_context(|| format!("writing {}", output.display()))
        }
        Cmd::Bench {
            what:
                Some(BenchCmd::Boot {
                    only,
                    runs,
                    json,
                    timeout,
                    machine,
                }),
            ..
        } => {
            let tmp = tempfile::Builder::new().prefix("bothy-bench-").tempdir()?;
            let configs = BootConfig::selected(&only);
            let a = Cache::default_location().guest_artifacts()?;
            let initrd = tmp.path().join("initramfs.cpio.gz");
            std::fs::write(&initrd, initramfs::build_demo(&a)?)?;
            let mut setup = boot::Setup {
                cpus: machine.smp,
                memory: machine.mem,
                image: None,
                shared: None,
                kernel: a.kernel.clone(),
                initrd: Some(initrd.clone()),
                bootargs: boot::GUEST_BOOTARGS.into(),
                xen: None,
                configs: configs.clone(),
            };
            let write = |name: &str, packed: &pack::Packed| -> Result<PathBuf> {
                let path = tmp.path().join(name);
                std::fs::write(&path, &packed.bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(path)
            };
            if configs.contains(&BootConfig::Bothy) {
                let sys = boot::single_vm_system(&a.kernel, &initrd);
                let packed =
                    build_image(&sys, &machine, Some(&machine), Some(pack::QEMU_VIRT_PL011))?;
                setup.image = Some(write("bothy.img", &packed)?);
            }
            if configs.contains(&BootConfig::BothyShared) {
                let sys = boot::shared_system(&a.kernel, &initrd);
                // Checked against the machine below: its RAM may have to grow.
                let packed = build_image(&sys, &machine, None, Some(pack::QEMU_VIRT_PL011))?;
                let memory =
                    boot::memory_to_fit(&sys, machine.smp, machine.mem, packed.payload_size())?;
                if memory != machine.mem {
                    eprintln!(
                        "bothy: bench boot: bothy-shared runs with -m {}: two {} VMs and \
                         their images do not fit in {}",
                        format_size(memory),
                        format_size(boot::GUEST_MEMORY),
                        format_size(machine.mem)
                    );
                }
                setup.shared = Some(boot::Shared {
                    image: write("bothy-shared.img", &packed)?,
                    vms: sys.vms.iter().map(|v| v.name.clone()).collect(),
                    memory,
                });
            }
            if configs.contains(&BootConfig::Xen) {
                let bin = xen::fetch(&Cache::default_location())?;
                setup.prepare_xen(&bin, boot::GUEST_MEMORY, tmp.path())?;
            }
            let report = boot::boot(&setup, runs, Duration::from_secs(timeout), json.as_deref())?;
            print!("{}", report.render());
            Ok(())
        }
        Cmd::Bench { what: None, micro } => bench_micro(micro),
    }
}

/// `--only` in the canonical order (bare, bothy, xen); all when empty.
fn selected(only: &[Config]) -> Vec<Config> {
    Config::ALL
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(c))
        .collect()
}

/// `bothy bench`: the microbenchmarks.
fn bench_micro(args: MicroArgs) -> Result<()> {
    let configs = selected(&args.only);
    let iters = args.iters.unwrap_or(if args.quick {
        micro::QUICK_ITERS
    } else {
        micro::DEFAULT_ITERS
    });
    let out_dir = repo_root().join("target/bench");
    let json = args.json.unwrap_or_else(|| out_dir.join("bench.json"));
    let png = args.png.unwrap_or_else(|| out_dir.join("bench.png"));
    let qemu_version = bench::qemu_version()?;
    let tmp = tempfile::Builder::new().prefix("bothy-bench-").tempdir()?;

    let elf = micro::build_guest(&repo_root())?;
    let bytes = std::fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
    let flat = flatten::flatten_elf(&bytes)
        .with_context(|| format!("flattening the benchmark guest {}", elf.display()))?;
    let guest_image = tmp.path().join("bench.bin");
    std::fs::write(&guest_image, &flat.bytes)?;

    let mut unavailable = BTreeMap::new();
    let mut bothy_images = BTreeMap::new();
    if configs.contains(&Config::Bothy) {
        match bench_bothy_images(&elf, iters, args.hyp.as_deref(), tmp.path()) {
            Ok(m) => bothy_images = m,
            Err(e) => {
                eprintln!("bothy: bench: cannot build the Bothy images: {e:#}");
                unavailable.insert(Config::Bothy, format!("building the Bothy image: {e:#}"));
            }
        }
    }
    let mut xen_bin = None;
    if configs.contains(&Config::Xen) {
        match xen::fetch(&Cache::default_location()) {
            Ok(b) => xen_bin = Some(b),
            Err(e) => {
                eprintln!("bothy: bench: Xen is not available: {e:#}");
                unavailable.insert(Config::Xen, format!("Xen is not available: {e:#}"));
            }
        }
    }
    let setup = micro::Setup {
        guest_image,
        bothy_images,
        xen: xen_bin,
        iters,
        dir: tmp.path().to_path_buf(),
        configs,
        unavailable,
        timeout: Duration::from_secs(args.timeout),
    };
    let report = micro::run(&setup, qemu_version);
    print!("{}", report.render());

    for p in [&json, &png] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    chart::write_png(&report, &png)?;
    eprintln!(
        "bothy: bench: wrote {} and {}",
        json.display(),
        png.display()
    );
    let missing = report.missing().len();
    if missing > 0 {
        bail!("{missing} operation(s) produced no number (see the list above)");
    }
    let over = report.over_budget();
    if !over.is_empty() {
        let list: Vec<String> = over
            .iter()
            .map(|(op, m, b)| format!("{op} {m} > {b}"))
            .collect();
        bail!(
            "Bothy is over its instruction budget: {} (micro::BOTHY_BUDGETS)",
            list.join(", ")
        );
    }
    Ok(())
}

/// The Bothy images of the microbenchmark: one VM with the guest, 1 and 2 vCPUs.
fn bench_bothy_images(
    guest_elf: &Path,
    iters: u32,
    hyp_elf: Option<&Path>,
    dir: &Path,
) -> Result<BTreeMap<u32, PathBuf>> {
    // Built (or checked) once, then reused for both images.
    let hyp_elf = hyp::hyp_elf(hyp_elf, &repo_root())?;
    let mut out = BTreeMap::new();
    for cpus in [1, 2] {
        let args = MachineArgs {
            smp: cpus,
            mem: micro::MACHINE_MEMORY,
            hyp: Some(hyp_elf.clone()),
        };
        let sys = micro::bothy_system(guest_elf, cpus, iters);
        let packed = build_image(&sys, &args, Some(&args), Some(pack::QEMU_VIRT_PL011))?;
        let path = dir.join(format!("bothy-smp{cpus}.img"));
        std::fs::write(&path, &packed.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        out.insert(cpus, path);
    }
    Ok(out)
}

/// What `bothy run` boots: SYSTEM.toml (the built-in demo when None) packed for QEMU
/// virt into `dir`/bothy.img.
fn qemu_image(
    system: Option<&Path>,
    machine: &MachineArgs,
    dir: &Path,
) -> Result<(SystemConfig, PathBuf)> {
    let sys = match system {
        Some(p) => SystemConfig::load(p)?,
        None => demo_system(dir)?,
    };
    let packed = build_image(&sys, machine, Some(machine), Some(pack::QEMU_VIRT_PL011))?;
    let image = dir.join("bothy.img");
    std::fs::write(&image, &packed.bytes)
        .with_context(|| format!("writing {}", image.display()))?;
    Ok((sys, image))
}

/// The built-in demo: two Linux VMs (2 vCPUs each, the cached Debian kernel and a
/// busybox initramfs written into `dir`) and the bare-metal self-test VM, all
/// time-shared on the machine's CPUs.
fn demo_system(dir: &Path) -> Result<SystemConfig> {
    let a = Cache::default_location().guest_artifacts()?;
    let initrd = dir.join("initramfs.cpio.gz");
    std::fs::write(&initrd, initramfs::build_demo(&a)?)?;
    let selftest = hyp::build_executable(
        &repo_root().join("guests/selftest"),
        "selftest",
        &["--target", "aarch64-unknown-none"],
        "the self-test guest",
    )?;
    let linux = |name: &str| VmConfig {
        name: name.into(),
        cpus: 2,
        memory: 256 * MIB,
        kernel: a.kernel.clone(),
        initrd: Some(initrd.clone()),
        bootargs: "console=ttyAMA0 quiet".into(),
        pin: Vec::new(),
        on_exit: OnExit::Halt,
    };
    Ok(SystemConfig {
        source: PathBuf::from("<built-in demo>"),
        slice_us: DEFAULT_SLICE_US,
        vms: vec![
            linux("linux-a"),
            linux("linux-b"),
            VmConfig {
                name: "selftest".into(),
                cpus: 2,
                memory: 64 * MIB,
                kernel: selftest,
                initrd: None,
                bootargs: String::new(),
                pin: Vec::new(),
                on_exit: OnExit::Halt,
            },
        ],
    })
}

/// Checks what can be checked without the hypervisor, then builds and packs it.
fn build_image(
    sys: &SystemConfig,
    args: &MachineArgs,
    check: Option<&MachineArgs>,
    early_console: Option<u64>,
) -> Result<pack::Packed> {
    build_image_with(sys, args, check, early_console, false)
}

/// [`build_image`], with the `--debug-overflow-stack` fault injection or not.
fn build_image_with(
    sys: &SystemConfig,
    args: &MachineArgs,
    check: Option<&MachineArgs>,
    early_console: Option<u64>,
    overflow_stack: bool,
) -> Result<pack::Packed> {
    let machine = check.map(|m| Machine {
        cpus: m.smp,
        memory: m.mem,
    });
    // CPUs first: cheap, and no reason to build anything if they do not fit.
    if let Some(m) = machine {
        sys.check_fits(m, 0)?;
    }
    let vms = pack::load_vms(sys)?;
    let elf_path = hyp::hyp_elf(args.hyp.as_deref(), &repo_root())?;
    let elf =
        std::fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
    let flat = flatten::flatten_elf(&elf)
        .with_context(|| format!("flattening hypervisor ELF {}", elf_path.display()))?;
    let packed = pack::pack(&flat, &vms, sys.slice_us, early_console, overflow_stack)?;
    if let Some(m) = machine {
        sys.check_fits(m, packed.payload_size())?;
    }
    Ok(packed)
}

fn report(out: &Path, sys: &SystemConfig, p: &pack::Packed) {
    eprintln!(
        "bothy: wrote {} ({} bytes): hypervisor {} bytes, payload at {:#x}, manifest {} bytes",
        out.display(),
        p.bytes.len(),
        p.hyp_size,
        p.payload_offset,
        p.header.manifest_size
    );
    for (vm, (k, i)) in sys.vms.iter().zip(&p.refs) {
        let initrd = i.map_or("none".to_string(), |i| {
            format!("{} bytes at payload+{:#x}", i.size, i.offset)
        });
        eprintln!(
            "bothy:   {}: {} vCPUs, {}, kernel {} bytes at payload+{:#x}, initrd {initrd}",
            vm.name,
            vm.cpus,
            format_size(vm.memory),
            k.size,
            k.offset
        );
    }
}
