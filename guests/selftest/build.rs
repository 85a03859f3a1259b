//! Link the guest as a position-independent executable at address 0 with guests/rt's
//! linker script and flags (see ../rt/build_link.rs).

include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rt/build_link.rs"));

fn main() {
    link_guest();
    println!("cargo:rerun-if-changed=src/regs.S");
}
