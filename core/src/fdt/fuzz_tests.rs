//! Robustness: every parser entry point must return (Ok or Err) on any input, without
//! panicking, looping forever or overflowing. Inputs are random bytes and mutations of
//! valid blobs (QEMU's DTB, a guest DTB, a manifest, a tree with every feature), which
//! reach much deeper into the parser than noise does.

use alloc::string::ToString;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::guest::{build_guest_dtb, GuestDtbConfig};
use super::manifest::{EarlyConsole, Manifest, PayloadRef, VmSpec, MAX_VCPUS, MEMORY_GRANULE};
use super::platform::{Platform, Pmu, TimerIrqs};
use super::test_trees::{full_platform, QEMU_VIRT_GICV3_SMP2};
use super::{header_total_size, Fdt};
use crate::Region;

/// Calls every read-side API on `bytes`. Results are formatted so Display runs too.
fn exercise(bytes: &[u8]) {
    let _ = header_total_size(bytes).map_err(|e| e.to_string());
    let _ = Manifest::decode(bytes).map_err(|e| e.to_string());
    let fdt = match Fdt::new(bytes) {
        Ok(fdt) => fdt,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = Platform::discover(&fdt).map_err(|e| e.to_string());
    let _ = fdt.memory_reservations().count();
    let _ = (fdt.stdout_path(), fdt.stdout_node(), fdt.alias("serial0"));
    for path in [
        "/",
        "/chosen",
        "/cpus/cpu@1",
        "/cpus/cpu",
        "serial0/x",
        "//a//b/",
        "a",
    ] {
        let _ = fdt.find_node(path);
    }
    let mut phandles = Vec::new();
    for node in fdt.nodes() {
        let _ = (
            node.name(),
            node.base_name(),
            node.unit_address(),
            node.parent_cells(),
        );
        let _ = (
            node.address_cells(),
            node.size_cells(),
            node.is_enabled(),
            node.device_type(),
        );
        let _ = node.is_compatible("arm,gic-v3");
        let _ = node
            .reg()
            .map(|r| r.map(|r| r.count()))
            .map_err(|e| e.to_string());
        let _ = node.reg_translated().map_err(|e| e.to_string());
        let _ = node.ancestors().map(|a| a.len());
        let _ = node.child("cpu");
        let _ = node.children().count();
        phandles.extend(node.phandle());
        for p in node.properties() {
            let _ = (
                p.as_u32(),
                p.as_u64(),
                p.as_uint(),
                p.as_str(),
                p.is_empty(),
            );
            let _ = p.as_stringlist().count();
            let _ = p.as_u32_iter().map(|i| i.count());
        }
    }
    for ph in phandles.into_iter().take(8) {
        let _ = fdt.node_by_phandle(ph);
    }
}

fn guest_blob() -> Vec<u8> {
    build_guest_dtb(&GuestDtbConfig {
        vcpus: 2,
        ram: Region::new(0x4000_0000, 0x1000_0000),
        gic_dist: Region::new(0x800_0000, 0x1_0000),
        gic_redist: Region::new(0x80a_0000, 0xf6_0000),
        uart: Region::new(0x900_0000, 0x1000),
        uart_spi: 1,
        timer: TimerIrqs {
            secure_phys: 13,
            phys: 14,
            virt: 11,
            hyp_phys: 10,
        },
        pmu: Some(Pmu { ppi: 7 }),
        bootargs: "console=ttyAMA0",
        initrd: Some(Region::new(0x4800_0000, 0x1000)),
    })
}

fn manifest_blob() -> Vec<u8> {
    Manifest {
        vms: alloc::vec![VmSpec {
            name: "vm".into(),
            cpus: 1,
            memory: MEMORY_GRANULE,
            kernel: PayloadRef { offset: 0, size: 1 },
            initrd: Some(PayloadRef { offset: 1, size: 1 }),
            bootargs: "x".into(),
            pin: Vec::new(),
            on_exit: Default::default(),
        }],
        early_console: Some(EarlyConsole {
            pl011_base: 0x900_0000,
        }),
        slice_us: super::manifest::DEFAULT_SLICE_US,
        debug_overflow_stack: false,
    }
    .encode()
}

/// QEMU's DTB without its 1 MiB of free space (so each case copies kilobytes).
fn qemu_blob() -> Vec<u8> {
    let fdt = Fdt::new(QEMU_VIRT_GICV3_SMP2).unwrap();
    let strings_end = (0..fdt.total_size())
        .rev()
        .find(|&i| QEMU_VIRT_GICV3_SMP2[i] != 0)
        .map_or(0, |i| i + 2);
    let mut blob = QEMU_VIRT_GICV3_SMP2[..strings_end].to_vec();
    blob[4..8].copy_from_slice(&(strings_end as u32).to_be_bytes());
    assert!(Fdt::new(&blob).is_ok());
    blob
}

/// Built once: the QEMU blob alone is 1 MiB to trim.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        alloc::vec![
            qemu_blob(),
            guest_blob(),
            manifest_blob(),
            full_platform(|_| {})
        ]
    })
}

/// One edit to a valid blob.
#[derive(Clone, Debug)]
enum Mutation {
    Byte {
        at: usize,
        value: u8,
    },
    /// A 32-bit word at a 4-aligned offset; values favour tokens, lengths, offsets.
    Word {
        at: usize,
        value: u32,
    },
    Truncate {
        len: usize,
    },
    /// Duplicate a span (repeated tokens, nesting).
    Splice {
        from: usize,
        len: usize,
        to: usize,
    },
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(alloc::vec![
            0,
            1,
            2,
            3,
            4,
            9,
            0x10,
            0x28,
            0x38,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fff0,
            0xffff_fffc,
            0xffff_ffff,
            0xd00d_feed,
        ]),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        (any::<usize>(), interesting_u32()).prop_map(|(at, value)| Mutation::Word { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), 0usize..64, any::<usize>()).prop_map(|(from, len, to)| Mutation::Splice {
            from,
            len,
            to
        }),
    ]
}

fn apply(blob: &mut Vec<u8>, m: &Mutation) {
    let n = blob.len().max(1);
    match *m {
        Mutation::Byte { at, value } => {
            if let Some(b) = blob.get_mut(at % n) {
                *b = value;
            }
        }
        Mutation::Word { at, value } => {
            let at = (at % n) & !3;
            if let Some(w) = blob.get_mut(at..at + 4) {
                w.copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::Truncate { len } => blob.truncate(len % n),
        Mutation::Splice { from, len, to } => {
            let from = from % n;
            let span: Vec<u8> = blob.iter().skip(from).take(len).copied().collect();
            let to = (to % n).min(blob.len());
            blob.splice(to..to, span);
        }
    }
}

proptest! {
    // 512 cases by default; set PROPTEST_CASES for a longer campaign.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..1024),
        header in prop::collection::vec(interesting_u32(), 10),
    ) {
        let mut bytes: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
        bytes[0..4].copy_from_slice(&0xd00d_feedu32.to_be_bytes());
        bytes.extend_from_slice(&body);
        exercise(&bytes);
    }

    #[test]
    fn mutated_valid_blobs_never_panic(
        seed in 0usize..4,
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut blob = seeds()[seed].clone();
        for m in &edits {
            apply(&mut blob, m);
        }
        exercise(&blob);
    }

    #[test]
    fn manifest_round_trips_or_explains(
        vms in prop::collection::vec(
            ("[a-z0-9 ]{0,6}", 0u32..12, 0u64..8, any::<bool>(), 0u64..3, "[ -~]{0,20}"),
            0..4,
        ),
        console in prop::option::of(any::<u64>()),
    ) {
        let m = Manifest {
            vms: vms
                .into_iter()
                .map(|(name, cpus, mem_units, odd, ksize, bootargs)| VmSpec {
                    name,
                    cpus,
                    memory: mem_units * MEMORY_GRANULE + u64::from(odd) * 4096,
                    kernel: PayloadRef { offset: 0x1000, size: ksize },
                    initrd: None,
                    bootargs,
                    pin: Vec::new(),
                    on_exit: Default::default(),
                })
                .collect(),
            early_console: console.map(|pl011_base| EarlyConsole { pl011_base }),
            slice_us: super::manifest::DEFAULT_SLICE_US,
        debug_overflow_stack: false,
        };
        let valid = !m.vms.is_empty()
            && m.vms.iter().all(|v| {
                !v.name.trim().is_empty()
                    && (1..=MAX_VCPUS).contains(&v.cpus)
                    && v.memory != 0
                    && v.memory % MEMORY_GRANULE == 0
                    && v.kernel.size != 0
            })
            && m.vms.iter().map(|v| &v.name).collect::<alloc::collections::BTreeSet<_>>().len()
                == m.vms.len();
        match Manifest::decode(&m.encode()) {
            Ok(decoded) => {
                prop_assert!(valid);
                prop_assert_eq!(decoded, m);
            }
            Err(e) => {
                prop_assert!(!valid, "valid manifest rejected: {}", e);
                prop_assert!(e.to_string().starts_with("manifest: "));
            }
        }
    }
}

#[test]
fn seeds_are_valid() {
    for seed in seeds() {
        exercise(seed);
        assert!(Fdt::new(seed).is_ok());
    }
}
