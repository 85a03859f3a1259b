//! A boot image's payload: its header, the manifest FDT and each VM's kernel header.
//! The body is shared with the stable corpus replay: see `core/src/fuzzing.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bothy_core::fuzzing::manifest(data));
