// Shared by the guests' build.rs files through
// `include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rt/build_link.rs"));`
// (a build script cannot depend on the no_std rt crate, and link arguments only apply to
// the package whose build script prints them).
//
// Link the guest as a position-independent executable at address 0 with rt's linker
// script. `-pie` makes lld turn every absolute address stored in data (vtables, `&str` in
// statics, function-pointer tables) into an `R_AARCH64_RELATIVE` entry in `.rela.dyn`,
// which rt's `src/entry.S` applies before any Rust code runs. Code itself is PC-relative
// (`adrp`/`add`) under the target's default small code model.

/// Print the link arguments for a guest using guests/rt.
fn link_guest() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let ld = format!("{dir}/../rt/link.ld");
    println!("cargo:rustc-link-arg=-T{ld}");
    println!("cargo:rustc-link-arg=-pie");
    println!("cargo:rustc-link-arg=--no-dynamic-linker");
    // Plain RELA only: entry.S does not decode RELR.
    println!("cargo:rustc-link-arg=-znorelro");
    println!("cargo:rustc-link-arg=--pack-dyn-relocs=none");
    // Vtables of the (static-model) core library sit in .rodata: allow patching them; the
    // MMU is off, so every byte of the image is writable anyway.
    println!("cargo:rustc-link-arg=-znotext");
    println!("cargo:rerun-if-changed={ld}");
    println!("cargo:rerun-if-changed={dir}/../rt/build_link.rs");
}
