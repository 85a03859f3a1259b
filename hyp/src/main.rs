//! # Bothy's EL2 binary
//!
//! A thin shell around bothy-core. Boot goes:
//! 1. `entry.rs`: Image header, relocation, stack → [`boot_primary`] (x0 = DTB).
//! 2. Check `CurrentEL`: only EL2 goes on; EL1/EL3 get a clear message.
//! 3. Parse the firmware's device tree (memory, CPUs, GICv3, timer, UART,
//!    PSCI); a missing or broken one is reported on the manifest's early console.
//! 4. Frame allocator over free RAM; EL2 identity map; MMU and caches on.
//! 5. Physical GIC; VMs from the manifest (stage-2, images, guest DTB, vGIC).
//! 6. Secondary physical CPUs via PSCI CPU_ON; every CPU then runs the one vCPU
//!    pinned to it (or parks), forever, in `exit.rs`.
//!
//! The code here decides *order*; bothy-core decides *what* (layouts, tables,
//! device models) and `arch` executes it.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod arch;
mod console;
mod exit;
mod machine;
mod prompt;
mod restart;
mod vm;

use arch::aarch64::entry::{DtbError, FirmwareDtb, Payload};
use arch::aarch64::{entry, firmware, heap, percpu, sysreg};
use bothy_core::fdt::platform::{Conduit as DtConduit, Platform, UartKind};
use bothy_core::fdt::Fdt;
use bothy_core::manifest::Manifest;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// How to power off when something goes wrong, once the device tree told us.
static FIRMWARE_CONDUIT: AtomicU8 = AtomicU8::new(CONDUIT_UNKNOWN);
const CONDUIT_UNKNOWN: u8 = 0;
const CONDUIT_SMC: u8 = 1;
const CONDUIT_HVC: u8 = 2;

fn firmware_conduit() -> Option<firmware::Conduit> {
    match FIRMWARE_CONDUIT.load(Ordering::Relaxed) {
        CONDUIT_SMC => Some(firmware::Conduit::Smc),
        CONDUIT_HVC => Some(firmware::Conduit::Hvc),
        _ => None,
    }
}

/// Report an unrecoverable error and stop the machine (power off if PSCI is known).
pub fn fatal(args: fmt::Arguments) -> ! {
    stop("error", args)
}

/// Like [`fatal`], for Bothy's own faults (an exception or SError at EL2, a stack
/// overflow): `bothy: fatal: ...`, so a bug reads differently from a bad setting.
pub fn fatal_bug(args: fmt::Arguments) -> ! {
    stop("fatal", args)
}

fn stop(what: &str, args: fmt::Arguments) -> ! {
    // A fault while reporting (say, an SMC with no EL3 behind it) must not recurse.
    if IN_FATAL.swap(true, Ordering::AcqRel) {
        park_forever();
    }
    console::print_fatal(format_args!("{what}: {args}"));
    halt_machine()
}

static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Power off through firmware; without a device tree, at EL2, try the SMC
/// conduit SMCCC prescribes. Returns only by parking forever.
pub fn halt_machine() -> ! {
    let conduit = firmware_conduit().or_else(|| {
        let at_el2 = (sysreg::read_current_el() >> 2) & 3 == 2;
        at_el2.then_some(firmware::Conduit::Smc)
    });
    if let Some(conduit) = conduit {
        firmware::system_off(conduit);
    }
    park_forever()
}

fn park_forever() -> ! {
    loop {
        sysreg::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    fatal(format_args!("hypervisor panic: {info}"))
}

/// The payload (manifest + guest images) the CLI appended after the image.
fn find_payload() -> Result<Payload, alloc::string::String> {
    entry::payload().map_err(|e| {
        alloc::format!(
            "boot image at {:#x} carries no usable payload: {e} (build it with `bothy image`)",
            entry::image_bounds().0
        )
    })
}

/// The manifest in `payload`, with every blob it names checked to lie inside it: a
/// malformed image gets an error here, never a copy from wherever its offsets point.
fn manifest(payload: &Payload) -> Result<Manifest, alloc::string::String> {
    let manifest = Manifest::decode(payload.manifest_bytes()).map_err(|e| alloc::format!("{e}"))?;
    for vm in &manifest.vms {
        let refs = [("kernel", Some(vm.kernel)), ("initrd", vm.initrd)];
        for (what, blob) in refs {
            if let Some(blob) = blob {
                payload
                    .header()
                    .check_ref(blob.offset, blob.size)
                    .map_err(|e| alloc::format!("VM {}: {what}: {e}", vm.name))?;
            }
        }
    }
    Ok(manifest)
}

/// The firmware's device tree, or why it is unusable.
fn firmware_dtb(dtb: FirmwareDtb) -> Result<Fdt<'static>, alloc::string::String> {
    let at = dtb.addr();
    let bytes = dtb.bytes().map_err(|e| match e {
        DtbError::Missing => "no device tree: the loader passed x0 = 0 (boot Bothy like an arm64 Linux kernel, with a DTB in x0)".into(),
        DtbError::Misaligned => alloc::format!("device tree address {at:#x} (x0) is not 8-byte aligned"),
        DtbError::Header(e) => alloc::format!("device tree at {at:#x}: {e}"),
        DtbError::TooLarge(size) => alloc::format!(
            "device tree at {at:#x} claims {size} bytes; the limit is {} MiB",
            entry::FDT_MAX >> 20
        ),
    })?;
    Fdt::new(bytes).map_err(|e| alloc::format!("device tree at {at:#x}: {e}"))
}

/// Entered from `entry.rs` on the boot CPU, MMU off, with the loader's x0.
pub fn boot_primary(dtb: FirmwareDtb) -> ! {
    heap::init();
    let el = (sysreg::read_current_el() >> 2) & 3;
    let payload = find_payload();
    let early_console = payload
        .as_ref()
        .ok()
        .and_then(|p| manifest(p).ok())
        .and_then(|m| m.early_console);

    let platform = firmware_dtb(dtb).and_then(|fdt| {
        Platform::discover(&fdt)
            .map(|p| (fdt, p))
            .map_err(|e| alloc::format!("{e}"))
    });

    // A console first: the DTB's PL011, else the manifest's early console.
    let dt_uart = platform
        .as_ref()
        .ok()
        .and_then(|(_, p)| p.uart)
        .filter(|u| u.kind == UartKind::Pl011);
    match (&dt_uart, early_console) {
        (Some(uart), _) => console::init(uart.base),
        (None, Some(early)) => console::init(early.pl011_base),
        (None, None) => {}
    }
    if let Some(psci) = platform.as_ref().ok().and_then(|(_, p)| p.psci) {
        let conduit = match psci.conduit {
            DtConduit::Smc => CONDUIT_SMC,
            DtConduit::Hvc => CONDUIT_HVC,
        };
        FIRMWARE_CONDUIT.store(conduit, Ordering::Relaxed);
    }

    // The exception level is the root cause whenever it is wrong: report it first.
    match el {
        2 => percpu::clear(),
        1 => fatal(format_args!(
            "HYP mode not available: entered at EL1; the firmware must start Bothy at EL2 (QEMU: -machine virt,virtualization=on; U-Boot: boot with booti from EL2)"
        )),
        other => {
            // PSCI at EL3 would be a call to ourselves: just stop.
            FIRMWARE_CONDUIT.store(CONDUIT_UNKNOWN, Ordering::Relaxed);
            fatal(format_args!(
                "entered at EL{other}; Bothy must be started at non-secure EL2 (it does not drop from EL3 itself yet: use firmware such as TF-A or U-Boot that hands over at EL2)"
            ))
        }
    }
    let (fdt, platform) = platform.unwrap_or_else(|why| fatal(format_args!("{why}")));
    if dt_uart.is_none() {
        fatal(format_args!("the device tree's /chosen/stdout-path names no PL011 UART; Bothy needs one for its console"));
    }
    let payload = payload.unwrap_or_else(|why| fatal(format_args!("{why}")));
    let manifest = manifest(&payload).unwrap_or_else(|why| fatal(format_args!("{why}")));
    println!(
        "Bothy {} at EL2: image {:#x}..{:#x}, device tree {:#x}, {} CPUs, {} MiB RAM",
        env!("CARGO_PKG_VERSION"),
        entry::image_bounds().0,
        payload.end(),
        dtb.addr(),
        platform.cpus.len(),
        platform.memory.iter().map(|r| r.size).sum::<u64>() >> 20
    );
    let dtb_region = bothy_core::Region::new(dtb.addr(), fdt.total_size() as u64);
    machine::build(platform, manifest, payload, dtb_region)
}

/// Entered from `entry.rs` on a secondary CPU started by [`machine::build`].
pub extern "C" fn boot_secondary(cpu: u64) -> ! {
    machine::secondary_main(cpu as usize)
}
