//! The guest's view of the machine, and where its boot images go.
//!
//! Every VM sees the same intermediate-physical layout, copied from QEMU's
//! `virt` board so that stock kernels need nothing special: GICv3 distributor
//! at 0x0800_0000, redistributors from 0x080A_0000 (one 128 KiB frame pair per
//! vCPU), a PL011 at 0x0900_0000 and RAM from 0x4000_0000. [`plan_boot`] then
//! places the kernel, initrd and device tree inside the VM's RAM following the
//! arm64 boot protocol (kernel at a 2 MiB-aligned base + `text_offset`, DTB
//! 8-byte aligned and at most 2 MiB, initrd anywhere in RAM not overlapping).

use crate::linux::ImageHeader;
use crate::Region;
use core::fmt;

pub const GIC_DIST: Region = Region::new(0x0800_0000, 0x1_0000);
pub const GIC_REDIST_BASE: u64 = 0x080A_0000;
pub const GIC_REDIST_STRIDE: u64 = 0x2_0000;
pub const UART: Region = Region::new(0x0900_0000, 0x1000);
/// The PL011's interrupt: SPI 1 (INTID 33), as on QEMU virt.
pub const UART_SPI: u32 = 1;
pub const RAM_BASE: u64 = 0x4000_0000;
/// Redistributor frames fit below the UART for this many vCPUs; far beyond
/// anything the pinned scheduler can host today.
pub const MAX_VCPUS: usize = ((0x0900_0000 - GIC_REDIST_BASE) / GIC_REDIST_STRIDE) as usize;
/// SPIs the virtual distributor implements (INTIDs 32..32+N).
pub const NR_SPIS: u32 = 64;

/// Where the redistributor frames of a VM with `vcpus` vCPUs live.
pub const fn gic_redist(vcpus: usize) -> Region {
    Region::new(GIC_REDIST_BASE, GIC_REDIST_STRIDE * vcpus as u64)
}

/// The DTB gets the top 2 MiB of guest RAM (booting.rst caps it at 2 MiB).
pub const DTB_MAX: u64 = 2 << 20;
const KERNEL_ALIGN: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// Where each boot image lives in guest IPA space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// IPA the kernel file is copied to; also its entry point.
    pub kernel: u64,
    pub dtb: u64,
    pub initrd: Option<Region>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The kernel's memory footprint plus DTB and initrd exceed the VM's RAM.
    DoesNotFit {
        needed: u64,
        ram: u64,
    },
    RamUnaligned(Region),
    /// The RAM runs past the end of the address space (a manifest's `memory` near
    /// 2^64): nothing in it can be placed by address arithmetic.
    RamWraps(Region),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::DoesNotFit { needed, ram } => write!(
                f,
                "kernel, initrd and device tree need {} MiB but the VM has {} MiB of memory",
                needed.div_ceil(1 << 20),
                ram >> 20
            ),
            PlanError::RamUnaligned(r) => write!(
                f,
                "guest RAM {:#x}+{:#x} is not 2 MiB aligned",
                r.base, r.size
            ),
            PlanError::RamWraps(r) => write!(
                f,
                "guest RAM {:#x}+{:#x} runs past the end of the address space",
                r.base, r.size
            ),
        }
    }
}

const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// Place kernel, initrd and DTB in `ram` (guest IPAs).
pub fn plan_boot(
    ram: Region,
    kernel: &ImageHeader,
    initrd_size: Option<u64>,
) -> Result<BootPlan, PlanError> {
    if !ram.base.is_multiple_of(KERNEL_ALIGN) || !ram.size.is_multiple_of(KERNEL_ALIGN) {
        return Err(PlanError::RamUnaligned(ram));
    }
    // Found writing the `manifest` fuzz target: with `Region::end` saturating, such RAM let the
    // kernel's address overflow and the initrd land below the kernel's end.
    if ram.base.checked_add(ram.size).is_none() {
        return Err(PlanError::RamWraps(ram));
    }
    let initrd_size = initrd_size.unwrap_or(0);
    let kernel_end = ram
        .base
        .saturating_add(kernel.text_offset)
        .saturating_add(kernel.image_size);
    let needed = kernel
        .text_offset
        .saturating_add(kernel.image_size)
        .saturating_add(DTB_MAX)
        .saturating_add(initrd_size.next_multiple_of(PAGE));
    if needed > ram.size {
        return Err(PlanError::DoesNotFit {
            needed,
            ram: ram.size,
        });
    }
    let dtb = ram.end() - DTB_MAX;
    let initrd =
        (initrd_size > 0).then(|| Region::new(align_down(dtb - initrd_size, PAGE), initrd_size));
    debug_assert!(initrd.is_none_or(|r| r.base >= kernel_end));
    Ok(BootPlan {
        kernel: ram.base + kernel.text_offset,
        dtb,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn header(text_offset: u64, image_size: u64) -> ImageHeader {
        ImageHeader {
            text_offset,
            image_size,
            flags: 0xa,
        }
    }

    #[test]
    fn debian_sized_kernel_in_512m() {
        let ram = Region::new(RAM_BASE, 512 * MIB);
        let plan = plan_boot(ram, &header(0, 46 * MIB), Some(3 * MIB + 5)).unwrap();
        assert_eq!(plan.kernel, RAM_BASE);
        assert_eq!(plan.dtb, RAM_BASE + 510 * MIB);
        let initrd = plan.initrd.unwrap();
        assert_eq!(initrd.base % PAGE, 0);
        assert!(initrd.end() <= plan.dtb && initrd.base >= RAM_BASE + 46 * MIB);
    }

    #[test]
    fn text_offset_is_honoured_and_no_initrd_is_fine() {
        let plan = plan_boot(
            Region::new(RAM_BASE, 64 * MIB),
            &header(0x8_0000, MIB),
            None,
        )
        .unwrap();
        assert_eq!(plan.kernel, RAM_BASE + 0x8_0000);
        assert_eq!(plan.initrd, None);
    }

    #[test]
    fn too_small_is_an_error_not_an_overlap() {
        let err = plan_boot(
            Region::new(RAM_BASE, 32 * MIB),
            &header(0, 30 * MIB),
            Some(MIB),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::DoesNotFit { .. }));
        assert!(err.to_string().contains("32 MiB"));
    }

    #[test]
    fn ram_past_the_end_of_the_address_space_is_an_error() {
        let ram = Region::new(RAM_BASE, 0xffff_ffff_ffe0_0000);
        let err = plan_boot(ram, &header(0xffff_ffff_f000_0000, 0x1000), Some(0x1000));
        assert_eq!(err, Err(PlanError::RamWraps(ram)));
        assert!(err.unwrap_err().to_string().contains("past the end"));
    }

    #[test]
    fn redistributor_window_below_uart() {
        assert!(gic_redist(MAX_VCPUS).end() <= UART.base);
        assert!(!gic_redist(8).overlaps(&GIC_DIST));
    }
}
