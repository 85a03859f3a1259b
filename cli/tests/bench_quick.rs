//! `bothy bench --quick`: the microbenchmark guest under bare QEMU, Bothy and Xen 4.17
//! dom0less in one invocation. Checked: every operation produced a number under every
//! configuration (but `vcpu_switch` and `sgi_send` under bare QEMU, which has no
//! hypervisor to share a CPU between vCPUs), the JSON and the PNG were written, and the
//! command succeeded, which includes
//! Bothy's instruction budgets (exact under -icount). The figures themselves are
//! reported (docs/PERFORMANCE.md), not asserted here.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{bothy, hyp_present, qemu_lock};

const CONFIGS: [&str; 3] = ["bare", "bothy", "xen"];
/// Keep in step with bothy_cli::bench::micro::OPS.
const OPS: [&str; 11] = [
    "hvc_null",
    "mmio_gicd_typer",
    "mmio_gicd_write",
    "sgi_self",
    "spi_inject",
    "vtimer_irq",
    "vtimer_wfi",
    "uart_putc",
    "ipi_roundtrip",
    "vcpu_switch",
    "sgi_send",
];
/// Measured with two vCPUs on one CPU: n/a under bare QEMU.
const SHARED_CPU_OPS: [&str; 2] = ["vcpu_switch", "sgi_send"];

#[test]
fn every_op_has_a_number_in_every_configuration() {
    if !hyp_present() {
        eprintln!("skipping: no hyp/ sources");
        return;
    }
    let _q = qemu_lock();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let png = dir.path().join("bench.png");
    let start = Instant::now();
    // Each QEMU run is bounded by --timeout; the whole is eight short runs plus builds.
    let out = Command::new(bothy())
        .args(["bench", "--quick", "--timeout", "240", "--json"])
        .arg(&json)
        .arg("--png")
        .arg(&png)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running bothy bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "bothy bench --quick took {:.1} s\n{stdout}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "bothy bench --quick failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );

    let text = std::fs::read_to_string(&json).expect("the JSON file was written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["iters"], 50, "--quick is bench.iters=50");
    for name in CONFIGS {
        let c = v["configurations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no configuration {name} in {text}"));
        for op in OPS {
            let r = &c["ops"][op];
            if name == "bare" && SHARED_CPU_OPS.contains(&op) {
                // Two vCPUs on one CPU need a hypervisor.
                assert_eq!(r["status"], "notapplicable", "{name} {op}: {r}");
                continue;
            }
            assert_eq!(r["status"], "ok", "{name} {op}: {r}");
            assert!(r["median"].is_u64(), "{name} {op}: no median: {r}");
            assert_eq!(r["iters"], 50, "{name} {op}: {r}");
        }
    }
    // The table names every op.
    for op in OPS {
        assert!(stdout.contains(op), "table without {op}:\n{stdout}");
    }

    let bytes = std::fs::read(&png).expect("the PNG was written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG (signature)"
    );
    // Decodes the whole image (every chunk's CRC and the pixel data).
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().expect("valid PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("valid PNG data");
    assert!(info.width >= 400 && info.height >= 300, "PNG of {info:?}");
    assert!(
        start.elapsed() < Duration::from_secs(900),
        "bench --quick took too long"
    );
}
