//! A firmware DTB: the FDT parser and platform discovery.
//! The body is shared with the stable corpus replay: see `core/src/fuzzing.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bothy_core::fuzzing::fdt_platform(data));
