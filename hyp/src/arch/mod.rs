//! Everything that executes a privileged instruction or turns an integer into a
//! pointer. The rest of the hypervisor (and all of bothy-core) stays safe Rust.
pub mod aarch64;
