//! GICD/GICR accesses, SGIs and interrupts on the vGIC model.
//! The body is shared with the stable corpus replay: see `core/src/fuzzing.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bothy_core::fuzzing::vgic_mmio(data));
