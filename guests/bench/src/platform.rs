//! Where the devices are. The DTB in x0 is authoritative (see `fdt.rs`); the build-time
//! layout below is the fallback when it cannot be parsed or lacks a node. Pick it with
//! `BENCH_LAYOUT=qemu|xen` at build time (build.rs turns it into `cfg(bench_layout)`).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use crate::fdt::DtbInfo;

/// QEMU `virt` layout, which Bothy's guests also get.
#[cfg(bench_layout = "qemu")]
mod layout {
    pub const NAME: &str = "qemu";
    pub const UART_BASE: usize = 0x0900_0000;
    pub const GICD_BASE: usize = 0x0800_0000;
    pub const GICR_BASE: usize = 0x080A_0000;
    #[allow(dead_code)] // documentation: the image is position independent
    pub const RAM_BASE: usize = 0x4000_0000;
}

/// Xen 4.17 arm64 guest layout (xen/include/public/arch-arm.h): GUEST_PL011_BASE (vpl011),
/// GUEST_GICV3_GICD_BASE, GUEST_GICV3_GICR0_BASE, GUEST_RAM0_BASE.
#[cfg(bench_layout = "xen")]
mod layout {
    pub const NAME: &str = "xen";
    pub const UART_BASE: usize = 0x2200_0000;
    pub const GICD_BASE: usize = 0x0300_1000;
    pub const GICR_BASE: usize = 0x0302_0000;
    #[allow(dead_code)] // documentation: the image is position independent
    pub const RAM_BASE: usize = 0x4000_0000;
}

pub use layout::NAME as LAYOUT_NAME;

/// Redistributor stride without VLPI frames (RD_base + SGI_base), both layouts.
pub use rt::gic::GICR_STRIDE;
/// Virtual timer PPI (INTID), the same on QEMU, Bothy and Xen.
pub use rt::gic::VTIMER_INTID;
/// MPIDR of the second vCPU when the DTB does not list it.
pub const SECOND_MPIDR_DEFAULT: u64 = 1;

static UART: AtomicUsize = AtomicUsize::new(layout::UART_BASE);
static GICD: AtomicUsize = AtomicUsize::new(layout::GICD_BASE);
static GICR: AtomicUsize = AtomicUsize::new(layout::GICR_BASE);
static STRIDE: AtomicUsize = AtomicUsize::new(GICR_STRIDE);
static UART_FROM_DTB: AtomicBool = AtomicBool::new(false);
static GIC_FROM_DTB: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
pub struct Platform {
    pub uart: usize,
    pub gicd: usize,
    pub gicr: usize,
    pub gicr_stride: usize,
    pub uart_from_dtb: bool,
    pub gic_from_dtb: bool,
}

pub fn get() -> Platform {
    Platform {
        uart: UART.load(Relaxed),
        gicd: GICD.load(Relaxed),
        gicr: GICR.load(Relaxed),
        gicr_stride: STRIDE.load(Relaxed),
        uart_from_dtb: UART_FROM_DTB.load(Relaxed),
        gic_from_dtb: GIC_FROM_DTB.load(Relaxed),
    }
}

/// Take what the DTB provides; keep the build-time layout for the rest. Called once by
/// the primary before the second vCPU exists.
pub fn apply(info: &DtbInfo) {
    if let Some(uart) = info.uart {
        UART.store(uart, Relaxed);
        UART_FROM_DTB.store(true, Relaxed);
    }
    if let (Some(gicd), Some(gicr)) = (info.gicd, info.gicr) {
        GICD.store(gicd, Relaxed);
        GICR.store(gicr, Relaxed);
        STRIDE.store(info.gicr_stride.unwrap_or(GICR_STRIDE), Relaxed);
        GIC_FROM_DTB.store(true, Relaxed);
    }
}

/// Bound on waiting for UART FIFO space per byte (polls), so a stuck TXFF cannot hang the
/// run.
const TXFF_POLLS: u32 = 1_000_000;

/// The console for `print!`/`println!` (rt's hook): the PL011 at the current UART address
/// (from the DTB once `apply` ran), with a bounded wait for FIFO space.
#[no_mangle]
fn rt_console() -> rt::uart::Pl011 {
    rt::uart::Pl011 {
        base: get().uart,
        txff_polls: Some(TXFF_POLLS),
    }
}
