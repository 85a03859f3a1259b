//! `bothy`: build Bothy images, run them on QEMU, fetch guest artifacts.
//!
//! The subcommands are thin: each gathers its inputs and calls into the library
//! (`bothy_cli`), where the logic lives and is tested. Every error a user can cause
//! is reported with the file, key or VM it concerns, before anything boots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bothy_cli::cache::{repo_root, Cache};
use bothy_cli::config::{Machine, SystemConfig, VmConfig};
use bothy_cli::size::{format_size, parse_size, MIB};
use bothy_cli::{bench, flatten, hyp, initramfs, pack, qemu};
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
    /// Physical CPUs of the QEMU machine (-smp); vCPUs are pinned 1:1 to them.
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
    },
    /// Build an image and run it on QEMU with the console attached.
    ///
    /// Without SYSTEM.toml, runs the built-in demo: one Linux VM (2 vCPUs, 512M)
    /// with a busybox shell; type `poweroff` to end it.
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
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Boot the demo Linux guest on bare QEMU and under Bothy, alternately, and print
    /// the time to its /init marker and the ratio of the medians.
    Boot {
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
        } => {
            let sys = SystemConfig::load(&system)?;
            let early = (board == Board::QemuVirt).then_some(pack::QEMU_VIRT_PL011);
            let check = (board == Board::QemuVirt).then_some(&machine);
            let packed = build_image(&sys, &machine, check, early)?;
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
            el1,
        } => {
            let tmp = tempfile::Builder::new().prefix("bothy-run-").tempdir()?;
            let (sys, image) = qemu_image(system.as_deref(), &machine, tmp.path())?;
            let m = qemu::Machine {
                cpus: machine.smp,
                memory: machine.mem,
                el2: !el1,
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
                BenchCmd::Boot {
                    runs,
                    json,
                    timeout,
                    machine,
                },
        } => {
            let tmp = tempfile::Builder::new().prefix("bothy-bench-").tempdir()?;
            let (sys, image) = qemu_image(None, &machine, tmp.path())?;
            let vm = &sys.vms[0];
            let setup = bench::Setup {
                cpus: machine.smp,
                memory: machine.mem,
                image,
                kernel: vm.kernel.clone(),
                initrd: vm.initrd.clone(),
                bootargs: vm.bootargs.clone(),
            };
            let report = bench::boot(&setup, runs, Duration::from_secs(timeout), json.as_deref())?;
            print!("{}", report.render());
            Ok(())
        }
    }
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

/// The built-in demo: one Linux VM with the cached Debian kernel and a busybox
/// initramfs written into `dir`.
fn demo_system(dir: &Path) -> Result<SystemConfig> {
    let a = Cache::default_location().guest_artifacts()?;
    let initrd = dir.join("initramfs.cpio.gz");
    std::fs::write(&initrd, initramfs::build_demo(&a)?)?;
    Ok(SystemConfig {
        source: PathBuf::from("<built-in demo>"),
        vms: vec![VmConfig {
            name: "linux0".into(),
            cpus: 2,
            memory: 512 * MIB,
            kernel: a.kernel,
            initrd: Some(initrd),
            bootargs: "console=ttyAMA0".into(),
        }],
    })
}

/// Checks what can be checked without the hypervisor, then builds and packs it.
fn build_image(
    sys: &SystemConfig,
    args: &MachineArgs,
    check: Option<&MachineArgs>,
    early_console: Option<u64>,
) -> Result<pack::Packed> {
    let machine = check.map(|m| Machine {
        cpus: m.smp,
        memory: m.mem,
    });
    // vCPU count first: cheap, and no reason to build anything if it fails.
    if let Some(m) = machine {
        sys.check_fits(m, 0)?;
    }
    let vms = pack::load_vms(sys)?;
    let elf_path = hyp::hyp_elf(args.hyp.as_deref(), &repo_root())?;
    let elf =
        std::fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
    let flat = flatten::flatten_elf(&elf)
        .with_context(|| format!("flattening hypervisor ELF {}", elf_path.display()))?;
    let packed = pack::pack(&flat, &vms, early_console)?;
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
