//! The bare-metal selftest guest (guests/selftest) checks Bothy from inside a VM:
//! PSCI and its error codes, secondary vCPU bring-up, IPIs between vCPUs, the
//! virtual timer, WFI, aborts on out-of-range accesses, NOT_SUPPORTED for
//! unknown hypercalls, x19–x29 surviving exits that do and do not name them, and the ID
//! registers hiding what Bothy traps. Every check must report `ok` under Bothy.

mod common;

use std::time::Duration;

use common::{bothy, qemu_lock, Console};

/// Checks the guest must pass under Bothy; the issue names each of them.
const REQUIRED: &[&str] = &[
    "boot_protocol",
    "psci_version",
    "smccc_version",
    "psci_features",
    "unknown_hvc",
    "id_registers_hide_what_is_trapped",
    "cpu_on_errors",
    "affinity_info",
    "secondary_boot",
    "gic_init",
    "sgi_self",
    "exits_keep_registers",
    "ipi_between_vcpus",
    "vtimer",
    "wfi_returns",
    "bad_access",
    "cpu_off",
    "cpu_on_again",
    "cpu_on_bad_entry",
    "pmu_does_not_see_el2",
];

#[test]
fn every_selftest_check_passes_under_bothy() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let system = common::selftest_system(dir.path(), 2);
    let mut cmd = std::process::Command::new(bothy());
    cmd.arg("run").arg(&system).args(["--timeout", "120"]);
    let mut c = Console::spawn(cmd, "selftest under bothy");
    let out = c.expect("TEST summary:", Duration::from_secs(180));
    let summary = c.expect("\n", Duration::from_secs(10));
    let failures: Vec<&str> = out.lines().filter(|l| l.contains(" fail")).collect();
    assert!(
        failures.is_empty(),
        "selftest failures under Bothy:\n{}",
        failures.join("\n")
    );
    for name in REQUIRED {
        assert!(
            out.contains(&format!("TEST {name} ok")),
            "check {name} did not report ok:\n{out}"
        );
    }
    assert!(summary.contains(" 0 failed"), "summary: {summary}");
    c.expect("bothy: all VMs powered off", Duration::from_secs(30));
    assert!(
        c.wait(Duration::from_secs(60)).success(),
        "bothy run failed"
    );
}

/// Under `-icount` QEMU's PMU counts instructions, so the selftest's
/// `pmu_does_not_see_el2` measures for real: a guest counter that asks to count at EL2
/// sees only the guest's own instructions across 16 hypercalls (about 180; with EL2
/// counted it read about 2000).
#[test]
fn the_guests_pmu_does_not_count_el2() {
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let img = common::selftest_image(dir.path());
    let mut cmd = common::qemu("virt,virtualization=on,gic-version=3");
    cmd.arg("-kernel")
        .arg(&img)
        .args(["-icount", "shift=4,align=off,sleep=off"]);
    let mut c = Console::spawn(cmd, "selftest under bothy with -icount");
    let out = c.expect("TEST summary:", Duration::from_secs(180));
    let line = out
        .lines()
        .find_map(|l| Some(&l[l.find("# pmu_does_not_see_el2:")?..]))
        .unwrap_or_else(|| panic!("no PMU measurement:\n{out}"));
    let counted: u64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the PMU counted nothing under -icount: {line}"));
    assert!(
        (16..800).contains(&counted),
        "guest instructions across 16 hypercalls: {counted}"
    );
    assert!(out.contains("TEST pmu_does_not_see_el2 ok"), "{out}");
}
