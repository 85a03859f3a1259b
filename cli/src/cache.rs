//! Guest artifacts from Debian's arm64 archive: where they are cached and how
//! `bothy fetch` gets them.
//!
//! The layout is shared with scripts/setup.sh (which does the same in shell so a fresh
//! machine can be set up before anything is built):
//!
//! ```text
//! $BOTHY_CACHE or <repo>/cache
//!   debs/       .deb files as downloaded by `apt-get download`
//!   linux/      linux-image-<version>-arm64 extracted: boot/vmlinuz-*, lib/modules/*
//!   busybox/    busybox-static extracted: bin/busybox
//! ```
//!
//! Each extracted directory holds a `.extracted-<deb file name>` stamp, so a new point
//! release of the kernel is re-extracted and a finished one never is.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Debian's metapackage for the kernel series Bothy tests with; it depends on the
/// current point release, which is resolved at fetch time (it moves).
pub const KERNEL_METAPACKAGE: &str = "linux-image-6.12-arm64:arm64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The repository root (for the cache default and the hypervisor sources).
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("BOTHY_REPO") {
        return PathBuf::from(p);
    }
    // cli/ is one level below the root; fixed at build time.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli has a parent directory")
        .to_path_buf()
}

/// The cache root: `$BOTHY_CACHE`, else `<repo>/cache`.
pub fn cache_root() -> PathBuf {
    match std::env::var_os("BOTHY_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("cache"),
    }
}

/// Paths of the cached guest artifacts.
#[derive(Clone, Debug)]
pub struct Cache {
    pub root: PathBuf,
}

/// What the demo needs, found in the cache.
#[derive(Clone, Debug)]
pub struct GuestArtifacts {
    pub kernel: PathBuf,
    /// e.g. `6.12.117+deb12-arm64`: the directory name under lib/modules.
    pub kernel_release: String,
    pub modules_dir: PathBuf,
    pub busybox: PathBuf,
    /// busybox for armhf (32-bit), if fetched: the Linux tests run it under the 64-bit
    /// kernel to exercise 32-bit user space.
    pub busybox32: Option<PathBuf>,
}

impl Cache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn default_location() -> Self {
        Self::new(cache_root())
    }

    pub fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }

    pub fn linux_dir(&self) -> PathBuf {
        self.root.join("linux")
    }

    pub fn busybox_dir(&self) -> PathBuf {
        self.root.join("busybox")
    }

    /// Finds the cached kernel, its modules and busybox, or says how to get them.
    pub fn guest_artifacts(&self) -> Result<GuestArtifacts> {
        let hint = "run ./scripts/setup.sh or `bothy fetch` first";
        let boot = self.linux_dir().join("boot");
        let kernel = newest(&boot, "vmlinuz-").with_context(|| {
            format!(
                "no Debian arm64 kernel in the cache ({}/vmlinuz-*): {hint}",
                boot.display()
            )
        })?;
        let kernel_release = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("kernel file name")?
            .to_string();
        let modules_dir = self.linux_dir().join("lib/modules").join(&kernel_release);
        let busybox = self.busybox_dir().join("bin/busybox");
        ensure!(
            busybox.is_file(),
            "busybox is not in the cache ({}): {hint}",
            busybox.display()
        );
        let busybox32 = Some(self.root.join("busybox32/bin/busybox")).filter(|p| p.is_file());
        Ok(GuestArtifacts {
            kernel,
            kernel_release,
            modules_dir,
            busybox,
            busybox32,
        })
    }

    /// Downloads (if needed) and extracts the kernel and busybox packages with apt.
    pub fn fetch(&self) -> Result<GuestArtifacts> {
        ensure_arm64_architecture()?;
        std::fs::create_dir_all(self.debs())
            .with_context(|| format!("creating {}", self.debs().display()))?;
        let kernel_pkg = resolve_kernel_package()?;
        self.fetch_package(&kernel_pkg, &self.linux_dir())?;
        self.fetch_package(BUSYBOX_PACKAGE, &self.busybox_dir())?;
        self.guest_artifacts()
    }

    fn fetch_package(&self, pkg: &str, dest: &Path) -> Result<()> {
        let prefix = format!("{pkg}_");
        let deb = match newest_deb(&self.debs(), &prefix)? {
            Some(deb) => {
                eprintln!("bothy: cached {}", deb.display());
                deb
            }
            None => {
                eprintln!(
                    "bothy: apt-get download {pkg}:arm64 -> {}",
                    self.debs().display()
                );
                run(Command::new("apt-get")
                    .args(["download", "-q"])
                    .arg(format!("{pkg}:arm64"))
                    .current_dir(self.debs()))
                .with_context(|| format!("downloading {pkg}:arm64 (try `apt-get update` first)"))?;
                newest_deb(&self.debs(), &prefix)?
                    .with_context(|| format!("apt-get download left no {prefix}*.deb"))?
            }
        };
        let stamp = dest.join(format!(
            ".extracted-{}",
            deb.file_name().unwrap_or_default().to_string_lossy()
        ));
        if stamp.exists() {
            return Ok(());
        }
        eprintln!("bothy: extracting {} -> {}", deb.display(), dest.display());
        if dest.exists() {
            std::fs::remove_dir_all(dest)
                .with_context(|| format!("removing {}", dest.display()))?;
        }
        std::fs::create_dir_all(dest)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
        std::fs::write(&stamp, b"")?;
        Ok(())
    }
}

/// The lexically greatest `prefix*` file in `dir` (the newest point release).
fn newest(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The newest `PREFIX*_arm64.deb` in `dir` (versions sort lexically within one release).
pub(crate) fn newest_deb(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with("_arm64.deb"))
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

/// Runs a tool (apt, dpkg, dtc, ...) without a terminal; its stdout, or an error
/// naming the command and quoting its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_arm64_architecture() -> Result<()> {
    let archs = run(Command::new("dpkg").arg("--print-foreign-architectures"))
        .context("dpkg not found: fetching guest artifacts needs a Debian-based host")?;
    if archs.lines().any(|l| l.trim() == "arm64") {
        return Ok(());
    }
    eprintln!("bothy: dpkg --add-architecture arm64; apt-get update");
    run(Command::new("dpkg").args(["--add-architecture", "arm64"]))
        .context("enabling the arm64 architecture needs root: run ./scripts/setup.sh as root")?;
    run(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// `apt-cache depends linux-image-6.12-arm64:arm64` → `linux-image-6.12.117+deb12-arm64`.
fn resolve_kernel_package() -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    parse_depends(&out).with_context(|| {
        format!("cannot resolve {KERNEL_METAPACKAGE}: run `apt-get update` (as root) and retry")
    })
}

fn parse_depends(apt_cache_output: &str) -> Option<String> {
    apt_cache_output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let name = dep.split(':').next()?.trim();
        name.starts_with("linux-image-").then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out =
            "linux-image-6.12-arm64:arm64\n  Depends: linux-image-6.12.117+deb12-arm64:arm64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.12.117+deb12-arm64")
        );
        assert_eq!(parse_depends("linux-image-6.12-arm64:arm64\n"), None);
    }

    #[test]
    fn finds_artifacts_or_explains() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().to_path_buf());
        let e = format!("{:#}", c.guest_artifacts().unwrap_err());
        assert!(e.contains("setup.sh"), "{e}");
        std::fs::create_dir_all(c.linux_dir().join("boot")).unwrap();
        std::fs::create_dir_all(c.busybox_dir().join("bin")).unwrap();
        for v in ["6.12.1+deb12-arm64", "6.12.9+deb12-arm64"] {
            std::fs::write(c.linux_dir().join(format!("boot/vmlinuz-{v}")), b"k").unwrap();
        }
        std::fs::write(c.busybox_dir().join("bin/busybox"), b"bb").unwrap();
        let a = c.guest_artifacts().unwrap();
        assert_eq!(a.kernel_release, "6.12.9+deb12-arm64");
        assert!(a.modules_dir.ends_with("lib/modules/6.12.9+deb12-arm64"));
    }
}
