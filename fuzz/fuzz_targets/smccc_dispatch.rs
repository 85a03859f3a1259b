//! SMCCC/PSCI calls with arbitrary X0..X7.
//! The body is shared with the stable corpus replay: see `core/src/fuzzing.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bothy_core::fuzzing::smccc_dispatch(data));
