//! Xen 4.17 dom0less on QEMU's `virt` board: the third configuration of `bothy bench`.
//!
//! Xen is Debian's `xen-hypervisor-4.17-arm64` package, downloaded with apt at run time
//! into the cache like the guest kernel (never committed):
//!
//! ```text
//! <cache>/debs/xen-hypervisor-4.17-arm64_<version>_arm64.deb
//! <cache>/xen/boot/xen-4.17-arm64          the hypervisor, booted with QEMU -kernel
//! ```
//!
//! There is no dom0. QEMU's own DTB (`-machine dumpdtb=`, with exactly the machine
//! options of the run) gets a `/chosen` fragment, compiled with `dtc`: Xen's command
//! line and one `xen,domain` node with a `vpl011` console, whose kernel (and initrd)
//! are boot modules that QEMU's `-device loader` puts at fixed addresses. The guest's
//! console then arrives on QEMU's serial port through Xen, each line prefixed with
//! `(XEN) DOM1: `. A domU's PSCI `SYSTEM_OFF` stops the domain, not the machine, so a
//! runner stops QEMU itself once it has seen what it waits for.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use crate::cache::Cache;
use crate::qemu::QEMU;
use crate::size::MIB;

/// Debian's binary package (architecture arm64) with the hypervisor.
pub const XEN_PACKAGE: &str = "xen-hypervisor-4.17-arm64";
/// Where `-device loader` puts the domU's kernel (QEMU places its DTB for Xen at
/// RAM + 128M, below this); the initrd follows at the next 2 MiB boundary.
pub const DOMU_KERNEL_ADDR: u64 = 0x5000_0000;
/// Machine RAM starts here on `virt`.
const RAM_BASE: u64 = 0x4000_0000;

/// `<cache>/xen`: the extracted package.
pub fn xen_dir(cache: &Cache) -> PathBuf {
    cache.root.join("xen")
}

/// The Xen binary, downloaded and extracted into the cache if it is not there yet.
pub fn fetch(cache: &Cache) -> Result<PathBuf> {
    let debs = cache.debs();
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let prefix = format!("{XEN_PACKAGE}_");
    let deb = match crate::cache::newest_deb(&debs, &prefix)? {
        Some(deb) => deb,
        None => {
            let version = resolve_version().with_context(|| {
                format!(
                    "cannot resolve {XEN_PACKAGE}:arm64 with apt-cache: run ./scripts/setup.sh \
                     (it enables the arm64 architecture and runs apt-get update)"
                )
            })?;
            eprintln!(
                "bothy: apt-get download {XEN_PACKAGE}:arm64={version} -> {}",
                debs.display()
            );
            crate::cache::run(
                Command::new("apt-get")
                    .args(["download", "-q"])
                    .arg(format!("{XEN_PACKAGE}:arm64={version}"))
                    .current_dir(&debs),
            )
            .with_context(|| format!("downloading {XEN_PACKAGE}:arm64"))?;
            crate::cache::newest_deb(&debs, &prefix)?
                .with_context(|| format!("apt-get download left no {prefix}*_arm64.deb"))?
        }
    };
    let dest = xen_dir(cache);
    let stamp = dest.join(format!(
        ".extracted-{}",
        deb.file_name().unwrap_or_default().to_string_lossy()
    ));
    if !stamp.exists() {
        eprintln!("bothy: extracting {} -> {}", deb.display(), dest.display());
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("removing {}", dest.display()))?;
        }
        std::fs::create_dir_all(&dest)?;
        crate::cache::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))?;
        std::fs::write(&stamp, b"")?;
    }
    find_binary(&dest.join("boot"))
}

/// `boot/xen-4.17-arm64` (not the `.efi` or `.config` next to it).
fn find_binary(boot: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_xen_binary_name)
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no xen-*-arm64 in {}", boot.display()))
}

fn is_xen_binary_name(n: &str) -> bool {
    n.starts_with("xen-") && n.ends_with("-arm64")
}

/// The candidate version of the package from `apt-cache policy`.
fn resolve_version() -> Result<String> {
    let out = crate::cache::run(
        Command::new("apt-cache")
            .arg("policy")
            .arg(format!("{XEN_PACKAGE}:arm64")),
    )?;
    parse_candidate(&out).context("no candidate version")
}

/// `  Candidate: 4.17.7+13-g2445b30a44-0+deb12u1` → the version (None for `(none)`).
pub fn parse_candidate(apt_cache_policy: &str) -> Option<String> {
    apt_cache_policy.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Candidate:")?.trim();
        (!v.is_empty() && v != "(none)").then(|| v.to_string())
    })
}

/// The one dom0less guest.
#[derive(Clone, Debug)]
pub struct DomU {
    pub cpus: u32,
    pub memory: u64,
    /// An arm64 Image (or a gzip'ed one, as Debian's vmlinuz).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub bootargs: String,
}

/// QEMU with Xen: everything but the DTB, which [`Machine::prepare`] makes.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The Xen binary ([`fetch`]).
    pub xen: PathBuf,
    /// `-machine` options, e.g. `virt,virtualization=on,gic-version=3,dtb-randomness=off`.
    pub machine: String,
    pub cpus: u32,
    pub memory: u64,
    /// Arguments that do not change the DTB, e.g. `-icount ...`; they go last.
    pub extra_args: Vec<String>,
}

/// A ready-to-run configuration.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub args: Vec<String>,
}

impl Prepared {
    pub fn command(&self) -> Command {
        let mut c = Command::new(QEMU);
        c.args(&self.args);
        c
    }
}

impl Machine {
    fn base_args(&self) -> Vec<String> {
        vec![
            "-machine".into(),
            self.machine.clone(),
            "-cpu".into(),
            "max,pauth-impdef=on".into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory / MIB),
            "-nographic".into(),
            "-nic".into(),
            "none".into(),
        ]
    }

    /// Dumps QEMU's DTB, adds the dom0less configuration, writes `dir`/xen.dtb and
    /// returns the command line that boots it.
    pub fn prepare(&self, domu: &DomU, dir: &Path) -> Result<Prepared> {
        let ram_end = RAM_BASE + self.memory;
        let ksize = file_size(&domu.kernel)?;
        let initrd = domu
            .initrd
            .as_ref()
            .map(|p| {
                let at = align_2m(DOMU_KERNEL_ADDR + ksize);
                Ok::<_, anyhow::Error>((p.clone(), at, file_size(p)?))
            })
            .transpose()?;
        let end = initrd
            .as_ref()
            .map_or(DOMU_KERNEL_ADDR + ksize, |(_, at, size)| at + size);
        ensure!(
            end <= ram_end,
            "the domU's boot modules end at {end:#x}, beyond the machine's RAM ({ram_end:#x}): \
             give QEMU more memory"
        );

        let virt_dtb = dir.join("virt.dtb");
        let out = Command::new(QEMU)
            .args(self.base_args())
            .arg("-machine")
            .arg(format!("dumpdtb={}", virt_dtb.display()))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {QEMU} (run ./scripts/setup.sh to install it)"))?;
        ensure!(
            out.status.success() && virt_dtb.is_file(),
            "{QEMU} -machine dumpdtb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let dts = crate::cache::run(
            Command::new("dtc")
                .args(["-q", "-I", "dtb", "-O", "dts"])
                .arg(&virt_dtb),
        )
        .context("dtc (package device-tree-compiler; run ./scripts/setup.sh)")?;
        let uart = stdout_path(&dts).context("QEMU's DTB has no /chosen/stdout-path")?;
        let xen_args = xen_cmdline(
            &uart,
            self.cpus,
            self.extra_args.iter().any(|a| a == "-icount"),
        );
        let modules = Modules {
            kernel: (DOMU_KERNEL_ADDR, ksize),
            initrd: initrd.as_ref().map(|(_, at, size)| (*at, *size)),
        };
        let xen_dts = dir.join("xen.dts");
        std::fs::write(&xen_dts, dts + &fragment(&xen_args, domu, &modules))
            .with_context(|| format!("writing {}", xen_dts.display()))?;
        let xen_dtb = dir.join("xen.dtb");
        crate::cache::run(
            Command::new("dtc")
                .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
                .arg(&xen_dtb)
                .arg(&xen_dts),
        )
        .context("compiling the dom0less DTB with dtc")?;

        let mut args = self.base_args();
        args.push("-kernel".into());
        args.push(self.xen.display().to_string());
        args.push("-dtb".into());
        args.push(xen_dtb.display().to_string());
        args.push("-device".into());
        args.push(loader(&domu.kernel, DOMU_KERNEL_ADDR));
        if let Some((p, at, _)) = &initrd {
            args.push("-device".into());
            args.push(loader(p, *at));
        }
        args.extend(self.extra_args.iter().cloned());
        Ok(Prepared { args })
    }
}

/// Xen's command line. `bootscrub=0` skips scrubbing free RAM at boot (about a second
/// under TCG), except with several CPUs under `-icount`, where Xen was seen to hang
/// at boot with it.
pub fn xen_cmdline(uart: &str, cpus: u32, icount: bool) -> String {
    let mut s = format!("console=dtuart dtuart={uart} loglvl=all guest_loglvl=all");
    if cpus == 1 || !icount {
        s += " bootscrub=0";
    }
    s
}

/// The domU's boot modules: (address, size).
#[derive(Clone, Copy, Debug)]
pub struct Modules {
    pub kernel: (u64, u64),
    pub initrd: Option<(u64, u64)>,
}

/// The dts text appended to QEMU's: Xen's bootargs and the domU in `/chosen`.
pub fn fragment(xen_bootargs: &str, domu: &DomU, m: &Modules) -> String {
    let (kat, ksize) = m.kernel;
    let mut s = format!(
        "\n/* added by bothy: Xen dom0less */\n/ {{\n\tchosen {{\n\
         \t\t#address-cells = <0x02>;\n\t\t#size-cells = <0x02>;\n\
         \t\txen,xen-bootargs = \"{}\";\n\n\
         \t\tdomU1 {{\n\t\t\tcompatible = \"xen,domain\";\n\
         \t\t\t#address-cells = <0x02>;\n\t\t\t#size-cells = <0x02>;\n\
         \t\t\tmemory = <0x00 {:#x}>;\t/* KiB */\n\
         \t\t\tcpus = <{}>;\n\t\t\tvpl011;\n\n\
         \t\t\tmodule@{kat:x} {{\n\
         \t\t\t\tcompatible = \"multiboot,kernel\", \"multiboot,module\";\n\
         \t\t\t\treg = <{}>;\n\
         \t\t\t\tbootargs = \"{}\";\n\t\t\t}};\n",
        dts_string(xen_bootargs),
        domu.memory / 1024,
        domu.cpus,
        reg(kat, ksize),
        dts_string(&domu.bootargs),
    );
    if let Some((at, size)) = m.initrd {
        s += &format!(
            "\n\t\t\tmodule@{at:x} {{\n\
             \t\t\t\tcompatible = \"multiboot,ramdisk\", \"multiboot,module\";\n\
             \t\t\t\treg = <{}>;\n\t\t\t}};\n",
            reg(at, size)
        );
    }
    s += "\t\t};\n\t};\n};\n";
    s
}

fn reg(addr: u64, size: u64) -> String {
    format!(
        "{:#x} {:#x} {:#x} {:#x}",
        addr >> 32,
        addr & 0xffff_ffff,
        size >> 32,
        size & 0xffff_ffff
    )
}

fn dts_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `/chosen/stdout-path` of a dts (QEMU: `/pl011@9000000`).
pub fn stdout_path(dts: &str) -> Option<String> {
    dts.lines().find_map(|l| {
        let v = l.trim().strip_prefix("stdout-path")?.trim_start();
        let v = v.strip_prefix('=')?.trim();
        let v = v.strip_prefix('"')?;
        Some(v[..v.find('"')?].to_string())
    })
}

/// `-device loader,...`; commas in the path are doubled as QEMU's option syntax wants.
fn loader(file: &Path, addr: u64) -> String {
    format!(
        "loader,file={},addr={addr:#x},force-raw=on",
        file.display().to_string().replace(',', ",,")
    )
}

fn align_2m(x: u64) -> u64 {
    (x + 2 * MIB - 1) & !(2 * MIB - 1)
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_policy() {
        let out = "xen-hypervisor-4.17-arm64:arm64:\n  Installed: (none)\n  \
                   Candidate: 4.17.7+13-g2445b30a44-0+deb12u1\n  Version table:\n";
        assert_eq!(
            parse_candidate(out).as_deref(),
            Some("4.17.7+13-g2445b30a44-0+deb12u1")
        );
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn binary_names() {
        assert!(is_xen_binary_name("xen-4.17-arm64"));
        assert!(!is_xen_binary_name("xen-4.17-arm64.efi"));
        assert!(!is_xen_binary_name("xen-4.17-arm64.config"));
    }

    #[test]
    fn chosen_stdout_path() {
        let dts = "/ {\n\tchosen {\n\t\tstdout-path = \"/pl011@9000000\";\n\t};\n};\n";
        assert_eq!(stdout_path(dts).as_deref(), Some("/pl011@9000000"));
        assert_eq!(stdout_path("/ { };"), None);
    }

    #[test]
    fn command_line_and_fragment() {
        assert_eq!(
            xen_cmdline("/pl011@9000000", 1, true),
            "console=dtuart dtuart=/pl011@9000000 loglvl=all guest_loglvl=all bootscrub=0"
        );
        assert!(!xen_cmdline("/u", 2, true).contains("bootscrub"));
        assert!(xen_cmdline("/u", 2, false).contains("bootscrub=0"));
        let domu = DomU {
            cpus: 2,
            memory: 64 * MIB,
            kernel: "/k".into(),
            initrd: None,
            bootargs: "bench.iters=50".into(),
        };
        let m = Modules {
            kernel: (0x5000_0000, 0x1234),
            initrd: Some((0x5020_0000, 0x10)),
        };
        let f = fragment("console=dtuart", &domu, &m);
        assert!(f.contains("memory = <0x00 0x10000>;"), "{f}");
        assert!(f.contains("cpus = <2>;"), "{f}");
        assert!(f.contains("module@50000000 {"), "{f}");
        assert!(f.contains("reg = <0x0 0x50000000 0x0 0x1234>;"), "{f}");
        assert!(f.contains("bootargs = \"bench.iters=50\";"), "{f}");
        assert!(f.contains("\"multiboot,ramdisk\""), "{f}");
        assert!(f.contains("reg = <0x0 0x50200000 0x0 0x10>;"), "{f}");
        assert_eq!(
            loader(Path::new("/a,b/k"), 0x5000_0000),
            "loader,file=/a,,b/k,addr=0x50000000,force-raw=on"
        );
    }
}
