//! A program of guest exits through the exit policy (syndromes, SMCCC, MMIO, WFI).
//! The body is shared with the stable corpus replay: see `core/src/fuzzing.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bothy_core::fuzzing::exit_decode(data));
