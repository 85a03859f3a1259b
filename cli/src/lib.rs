//! # bothy-cli
//!
//! The host side of Bothy: the `bothy` tool turns a system file (TOML) into a manifest
//! and packs it with the hypervisor and the guest images into one bootable file, runs
//! that file on QEMU, and fetches the guest kernel and busybox that the built-in demo
//! uses. It is a library as well as a binary so the integration tests in `tests/`
//! reuse the same cache lookup and initramfs builder as `bothy run`.
//!
//! Module map: [`config`] (system file), [`size`] (memory sizes), [`kimage`] (arm64
//! Image header, kernel unpacking), [`flatten`] (ELF → flat binary), [`pack`] and
//! [`manifest`] (the image layout), [`cpio`] and [`initramfs`] (demo guest userspace),
//! [`cache`] (guest artifacts), [`hyp`] (building the hypervisor), [`qemu`] (running),
//! [`bench`] (microbenchmarks and boot time: bare QEMU vs Bothy vs Xen), [`xen`] (Xen
//! 4.17 dom0less on QEMU).

pub mod bench;
pub mod cache;
pub mod config;
pub mod cpio;
pub mod flatten;
pub mod hyp;
pub mod initramfs;
pub mod kimage;
pub mod manifest;
pub mod pack;
pub mod qemu;
pub mod size;
#[doc(hidden)]
pub mod testutil;
pub mod xen;
