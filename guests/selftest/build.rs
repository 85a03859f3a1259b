//! Link the guest as a position-independent executable at address 0 with our linker script.
//!
//! `-pie` makes lld turn every absolute address stored in data (vtables, `&str` in
//! statics, function-pointer tables) into an `R_AARCH64_RELATIVE` entry in `.rela.dyn`,
//! which `src/entry.S` applies before any Rust code runs. Code itself is PC-relative
//! (`adrp`/`add`) under the target's default small code model.

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
}
