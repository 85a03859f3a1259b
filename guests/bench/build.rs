//! Link the guest as a position-independent executable at address 0 with our linker script
//! (same flags as guests/selftest), and pick the fallback platform layout.
//!
//! `BENCH_LAYOUT=qemu` (default; QEMU `virt` and Bothy) or `BENCH_LAYOUT=xen` (Xen 4.17
//! guest layout) selects the addresses used when the DTB in x0 cannot be parsed; see
//! src/platform.rs.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg=-pie");
    println!("cargo:rustc-link-arg=--no-dynamic-linker");
    // Plain RELA only: entry.S does not decode RELR.
    println!("cargo:rustc-link-arg=-znorelro");
    println!("cargo:rustc-link-arg=--pack-dyn-relocs=none");
    // Vtables of the (static-model) core library sit in .rodata: allow patching them; the
    // MMU is off, so every byte of the image is writable anyway.
    println!("cargo:rustc-link-arg=-znotext");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=src/entry.S");
    println!("cargo:rerun-if-changed=src/vectors.S");

    println!("cargo::rustc-check-cfg=cfg(bench_layout, values(\"qemu\", \"xen\"))");
    println!("cargo:rerun-if-env-changed=BENCH_LAYOUT");
    let layout = std::env::var("BENCH_LAYOUT").unwrap_or_else(|_| "qemu".into());
    match layout.as_str() {
        "qemu" | "xen" => println!("cargo:rustc-cfg=bench_layout=\"{layout}\""),
        other => panic!("BENCH_LAYOUT={other}: expected qemu or xen"),
    }
}
