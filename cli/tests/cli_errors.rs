//! System-file and option errors through the `bothy` binary: each must fail before
//! anything is built or booted, with a message naming the file, VM and key.

mod common;

use assert_cmd::Command;
use bothy_cli::testutil::fake_image;
use predicates::prelude::*;

const GOOD: &str = r#"
[[vm]]
name = "linux0"
cpus = 2
memory = "512M"
kernel = "Image"
"#;

/// Runs `bothy <args...> <dir>/system.toml` on `system` and returns the assertion.
fn bothy(system: &str, args: &[&str]) -> assert_cmd::assert::Assert {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("Image"), fake_image(8192)).unwrap();
    std::fs::write(d.path().join("notakernel"), vec![0u8; 8192]).unwrap();
    let sys = d.path().join("system.toml");
    std::fs::write(&sys, system).unwrap();
    let out = d.path().join("out.img");
    let mut cmd = Command::new(common::bothy());
    cmd.args(args).arg(&sys);
    if args.first() == Some(&"image") {
        cmd.arg("-o").arg(&out);
    }
    // A hypervisor that does not exist: every error here must come before it is needed.
    cmd.args(["--hyp", "/nonexistent/bothy-hyp"]);
    let a = cmd.timeout(std::time::Duration::from_secs(60)).assert();
    assert!(!out.exists(), "no image may be written on error");
    a
}

fn fails_with(system: &str, args: &[&str], needles: &[&str]) {
    let mut p = predicate::str::contains("bothy: error:").boxed();
    for n in needles {
        p = p.and(predicate::str::contains(*n)).boxed();
    }
    bothy(system, args).failure().stderr(p);
}

#[test]
fn unknown_key() {
    let s = GOOD.replace("cpus = 2", "cpus = 2\nvcpus = 2");
    fails_with(&s, &["image"], &["system.toml", "unknown field", "vcpus"]);
}

#[test]
fn missing_kernel_file() {
    let s = GOOD.replace("\"Image\"", "\"missing/Image\"");
    fails_with(
        &s,
        &["image"],
        &["\"linux0\"", "`kernel`", "missing/Image", "not found"],
    );
}

#[test]
fn not_a_kernel() {
    let s = GOOD.replace("\"Image\"", "\"notakernel\"");
    fails_with(&s, &["image"], &["\"linux0\"", "notakernel", "arm64"]);
}

#[test]
fn zero_cpus() {
    let s = GOOD.replace("cpus = 2", "cpus = 0");
    fails_with(&s, &["image"], &["\"linux0\"", "`cpus`"]);
}

#[test]
fn duplicate_names() {
    let s = format!("{GOOD}{}", GOOD.replace("cpus = 2", "cpus = 1"));
    fails_with(&s, &["image", "--smp", "4"], &["linux0", "more than once"]);
}

#[test]
fn memory_not_multiple_of_2m() {
    let s = GOOD.replace("512M", "511M");
    fails_with(
        &s,
        &["image"],
        &["\"linux0\"", "`memory`", "multiple of 2M"],
    );
}

#[test]
fn more_vcpus_than_cpus_are_time_shared() {
    // Not an error: the check passes and the build goes on to the (missing) hypervisor.
    fails_with(
        GOOD,
        &["image", "--smp", "1"],
        &["--hyp", "/nonexistent/bothy-hyp"],
    );
}

#[test]
fn pinned_cpu_does_not_exist() {
    let s = format!("{GOOD}pin = [0, 3]\n");
    let needles = [
        "system.toml",
        "\"linux0\"",
        "`pin`",
        "CPU 3 does not exist",
        "2 CPUs (0-1)",
        "--smp",
    ];
    fails_with(&s, &["image", "--smp", "2"], &needles);
    fails_with(&s, &["run", "--smp", "2"], &needles);
}

#[test]
fn cpu_pinned_twice() {
    let s = format!(
        "{GOOD}pin = [0, 1]\n{}pin = [2, 1]\n",
        GOOD.replace("linux0", "linux1")
    );
    fails_with(
        &s,
        &["image", "--smp", "4"],
        &["`pin`", "CPU 1", "\"linux0\"", "\"linux1\""],
    );
}

#[test]
fn no_cpu_left_for_time_shared_vm() {
    let s = format!("{GOOD}pin = [0, 1]\n{}", GOOD.replace("linux0", "linux1"));
    fails_with(
        &s,
        &["image", "--smp", "2", "--mem", "2G"],
        &["\"linux1\"", "time-shared", "no CPU is left", "--smp"],
    );
}

#[test]
fn pin_length_must_match_cpus() {
    let s = format!("{GOOD}pin = [1]\n");
    fails_with(&s, &["image"], &["\"linux0\"", "`pin`", "`cpus` = 2"]);
}

#[test]
fn bad_slice() {
    let s = format!("slice = \"2s\"\n{GOOD}");
    fails_with(&s, &["image"], &["system.toml", "`slice`", "\"2s\"", "1s"]);
    let s = format!("slice = \"0ms\"\n{GOOD}");
    fails_with(&s, &["image"], &["`slice`", "more than zero"]);
}

#[test]
fn bad_on_exit() {
    let s = format!("{GOOD}on_exit = \"reboot\"\n");
    fails_with(
        &s,
        &["image"],
        &["\"linux0\"", "`on_exit`", "\"reboot\"", "\"restart\""],
    );
}

#[test]
fn memory_does_not_fit() {
    fails_with(
        GOOD,
        &["image", "--mem", "512M"],
        &["does not fit", "512M", "--mem"],
    );
    let s = format!(
        "{GOOD}{}",
        GOOD.replace("linux0", "linux1")
            .replace("cpus = 2", "cpus = 1")
    );
    fails_with(
        &s,
        &["run", "--smp", "3"],
        &["does not fit", "linux1: 512M", "1G"],
    );
}

#[test]
fn vm_memory_too_small_for_its_kernel() {
    // The fake kernel asks for 2 MiB + text offset; with the 2 MiB DTB it needs > 2M.
    let s = GOOD.replace("512M", "2M");
    fails_with(&s, &["image"], &["\"linux0\"", "`memory`", "too small"]);
}

#[test]
fn bad_mem_option() {
    // Rejected by the argument parser, which has its own message format.
    bothy(GOOD, &["image", "--mem", "1000K"])
        .failure()
        .stderr(predicate::str::contains("--mem").and(predicate::str::contains("multiple of 2M")));
}

#[test]
fn bad_machine_opt() {
    for bad in ["mte", "=on", "mte=on,secure=on"] {
        bothy(GOOD, &["run", "--machine-opt", bad])
            .failure()
            .stderr(
                predicate::str::contains("--machine-opt")
                    .and(predicate::str::contains("KEY=VALUE")),
            );
    }
}

#[test]
fn missing_hypervisor_is_explained() {
    fails_with(GOOD, &["image"], &["--hyp", "/nonexistent/bothy-hyp"]);
}

#[test]
fn missing_system_file() {
    Command::new(common::bothy())
        .args(["image", "/nonexistent/system.toml", "-o", "/tmp/x.img"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("/nonexistent/system.toml"));
}

#[test]
fn bench_boot_names_its_configurations() {
    // Rejected while parsing the options, before anything is built or booted.
    Command::new(common::bothy())
        .args(["bench", "boot", "--only", "bothy,kvm"])
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("\"kvm\": not a configuration")
                .and(predicate::str::contains("bare, bothy, bothy-shared, xen")),
        );
}
