//! Guest physical (IPA) layout the selftest assumes: Bothy's guest layout, which mimics
//! QEMU `virt`, so the same binary runs on bare QEMU (`-machine virt,gic-version=3 -smp 2`).
//! The selftest deliberately does not read these from the DTB: a hypervisor that put a
//! device elsewhere should fail loudly here.

/// PL011 UART registers.
pub const UART_BASE: usize = 0x0900_0000;
/// GICv3 distributor (GICD_*).
pub const GICD_BASE: usize = 0x0800_0000;
/// First GICv3 redistributor; vCPU n's RD_base is `GICR_BASE + n * GICR_STRIDE`.
pub const GICR_BASE: usize = 0x080A_0000;
/// Size of one redistributor (RD_base + SGI_base frames, no VLPI frames).
pub use rt::gic::GICR_STRIDE;
/// Start of guest RAM.
pub const RAM_BASE: usize = 0x4000_0000;
/// vCPUs that run Rust and take exceptions (MPIDR Aff0 = 0 and 1). `cpu_on_race`
/// briefly runs vCPUs 2 and 3 too, in assembly with interrupts masked.
pub const NR_VCPUS: usize = 2;
/// Virtual timer PPI (INTID).
pub use rt::gic::VTIMER_INTID;
/// The EL1 physical timer's PPI (14) as an INTID, as QEMU's board and Bothy's guest
/// device tree have it.
pub const PTIMER_INTID: u32 = 30;
/// UART SPI (INTID), documented only: the selftest does not use UART interrupts.
#[allow(dead_code)]
pub const UART_INTID: u32 = 33;

/// An IPA with nothing mapped (inside the 4 GiB below RAM, between devices and RAM).
pub const UNMAPPED_IPA: usize = 0x3000_0000;
/// An address beyond any sane IPA size (47 bits).
pub const BEYOND_IPA: usize = 0x7000_0000_0000;
/// A CPU_ON entry point outside RAM.
pub const BAD_ENTRY: u64 = 0x1000;
/// MPIDR of a vCPU that does not exist.
pub const BAD_MPIDR: u64 = 0x55;

/// The console for `print!`/`println!` (rt's hook): the PL011 at [`UART_BASE`], waiting
/// for FIFO space for as long as it takes.
#[no_mangle]
fn rt_console() -> rt::uart::Pl011 {
    rt::uart::Pl011 {
        base: UART_BASE,
        txff_polls: None,
    }
}
