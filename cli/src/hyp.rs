//! Getting the hypervisor ELF: either the user names one (`--hyp PATH`) or the CLI
//! builds `hyp/` with cargo.
//!
//! `hyp/` is its own workspace with its target (aarch64-unknown-none-softfloat) set in
//! `hyp/.cargo/config.toml`, so a plain `cargo build --release` there is the whole
//! recipe. The ELF's path is taken from cargo's JSON messages rather than assumed, so
//! a `CARGO_TARGET_DIR` in the environment does not break it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

/// The hypervisor binary's name (hyp/Cargo.toml `[[bin]]`/package name).
pub const HYP_BIN: &str = "bothy-hyp";

/// `--hyp PATH` if given, else builds the hypervisor in `<repo>/hyp`.
pub fn hyp_elf(explicit: Option<&Path>, repo: &Path) -> Result<PathBuf> {
    match explicit {
        Some(p) => {
            ensure!(p.is_file(), "--hyp {}: no such file", p.display());
            Ok(p.to_path_buf())
        }
        None => build(&repo.join("hyp")),
    }
}

/// Runs `cargo build --release` in `dir` and returns the ELF it produced.
pub fn build(dir: &Path) -> Result<PathBuf> {
    ensure!(
        dir.join("Cargo.toml").is_file(),
        "hypervisor sources not found at {} (no Cargo.toml); pass --hyp PATH to a built \
         bothy-hyp ELF",
        dir.display()
    );
    build_executable(dir, HYP_BIN, &[], "the hypervisor")
}

/// `cargo build --release [extra]` in `dir` (a standalone bare-metal project) and the
/// path of the `bin` executable cargo reports. Shared by the hypervisor and the guests.
pub fn build_executable(dir: &Path, bin: &str, extra: &[&str], what: &str) -> Result<PathBuf> {
    eprintln!(
        "bothy: building {what} (cargo build --release in {})",
        dir.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(extra)
        .current_dir(dir)
        // Set when we run under `cargo test`/`cargo run`; these would point the
        // nested build at the host workspace's settings.
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running cargo to build {what}"))?;
    let mut elf = None;
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines() {
        if let Some(path) = executable_from_message(&line?, bin) {
            elf = Some(path);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building {what} failed ({status}); see cargo's output above");
    }
    elf.with_context(|| format!("cargo built no {bin} executable in {}", dir.display()))
}

/// The `executable` of a `compiler-artifact` message for target `bin`.
fn executable_from_message(line: &str, bin: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("reason")?.as_str()? != "compiler-artifact"
        || v.get("target")?.get("name")?.as_str()? != bin
    {
        return None;
    }
    Some(PathBuf::from(v.get("executable")?.as_str()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executable_in_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"bothy-hyp"},"executable":"/x/bothy-hyp"}"#;
        assert_eq!(
            executable_from_message(line, HYP_BIN),
            Some("/x/bothy-hyp".into())
        );
        assert_eq!(executable_from_message(line, "bench"), None);
        let other = r#"{"reason":"compiler-artifact","target":{"name":"spin"},"executable":null}"#;
        assert_eq!(executable_from_message(other, HYP_BIN), None);
        assert_eq!(executable_from_message("not json", HYP_BIN), None);
    }

    #[test]
    fn explains_missing_sources() {
        let d = tempfile::tempdir().unwrap();
        let e = build(d.path()).unwrap_err().to_string();
        assert!(e.contains("--hyp"), "{e}");
        let e = hyp_elf(Some(&d.path().join("nope")), d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
