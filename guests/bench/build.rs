//! Link the guest as a position-independent executable at address 0 with guests/rt's
//! linker script and flags (see ../rt/build_link.rs), and pick the fallback platform
//! layout.
//!
//! `BENCH_LAYOUT=qemu` (default; QEMU `virt` and Bothy) or `BENCH_LAYOUT=xen` (Xen 4.17
//! guest layout) selects the addresses used when the DTB in x0 cannot be parsed; see
//! src/platform.rs.

include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rt/build_link.rs"));

fn main() {
    link_guest();

    println!("cargo::rustc-check-cfg=cfg(bench_layout, values(\"qemu\", \"xen\"))");
    println!("cargo:rerun-if-env-changed=BENCH_LAYOUT");
    let layout = std::env::var("BENCH_LAYOUT").unwrap_or_else(|_| "qemu".into());
    match layout.as_str() {
        "qemu" | "xen" => println!("cargo:rustc-cfg=bench_layout=\"{layout}\""),
        other => panic!("BENCH_LAYOUT={other}: expected qemu or xen"),
    }
}
