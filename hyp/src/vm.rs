//! Building a VM from its manifest entry: memory, stage-2, images, guest DTB.
//!
//! A VM is a plain struct shared by the CPUs that run its vCPUs. Everything
//! that changes after boot is behind atomics or a lock: the vGIC, PSCI power
//! states, the PL011 model and the VM's run state. Guest RAM is one contiguous,
//! 2 MiB-aligned block of physical memory mapped at IPA 0x4000_0000 with block
//! mappings; device windows (GIC, UART) are left unmapped so every access traps.

use crate::arch::aarch64::{mmio, mmu::Frames, sysreg};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bothy_core::abi::VcpuPower;
use bothy_core::dev::console::Console;
use bothy_core::fdt::guest::{build_guest_dtb, GuestDtbConfig};
use bothy_core::fdt::platform::TimerIrqs;
use bothy_core::layout::{self, BootPlan};
use bothy_core::linux::ImageHeader;
use bothy_core::manifest::{PayloadRef, VmSpec};
use bothy_core::mem::{RegionAllocator, S2Attr, Stage2};
use bothy_core::vgic::VGic;
use bothy_core::Region;
use core::sync::atomic::{AtomicU8, Ordering};
use spin::Mutex;

/// Guest IPA space: 39 bits lets stage-2 start at level 1 without concatenated tables.
const IPA_BITS: u32 = 39;
const RAM_ALIGN: u64 = 2 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    Running = 0,
    Off = 1,
    /// SYSTEM_RESET requested: vCPUs stop, images are reloaded, vCPU 0 restarts.
    Resetting = 2,
    /// Bothy stopped the VM because of something it did (reason printed).
    Crashed = 3,
}

pub struct Vm {
    pub index: usize,
    pub name: String,
    pub vttbr: u64,
    pub vtcr: u64,
    /// CNTVOFF_EL2: the VM's virtual counter starts near zero when it is built.
    pub cntvoff: u64,
    /// Guest RAM in IPA space and where it lives physically.
    pub ram: Region,
    pub ram_pa: u64,
    pub vgic: VGic,
    pub power: VcpuPower,
    /// The VM's PL011 and the console input waiting for it.
    pub uart: Mutex<Console>,
    /// Slot in `Machine::cpus` of the physical CPU running each vCPU (pinned 1:1).
    pub vcpu_pcpu: Vec<usize>,
    pub boot: BootPlan,
    state: AtomicU8,
    /// What a reset reloads: the manifest's images and the generated DTB.
    kernel: PayloadRef,
    initrd: Option<PayloadRef>,
    dtb: Vec<u8>,
    payload_base: u64,
}

impl Vm {
    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            0 => RunState::Running,
            1 => RunState::Off,
            2 => RunState::Resetting,
            _ => RunState::Crashed,
        }
    }

    /// Move from Running to `to`; false if someone else changed the state first.
    pub fn leave_running(&self, to: RunState) -> bool {
        self.state
            .compare_exchange(
                RunState::Running as u8,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub fn set_state(&self, to: RunState) {
        self.state.store(to as u8, Ordering::Release);
    }

    pub fn vcpus(&self) -> usize {
        self.vcpu_pcpu.len()
    }

    /// Copy the kernel, initrd and DTB into guest RAM (boot and SYSTEM_RESET).
    pub fn load_images(&self) {
        let to_pa = |ipa: u64| self.ram_pa + (ipa - self.ram.base);
        let kernel = payload_bytes(self.payload_base, self.kernel);
        mmio::copy_to_phys(to_pa(self.boot.kernel), kernel);
        sysreg::clean_dcache_range(to_pa(self.boot.kernel), kernel.len() as u64);
        if let (Some(initrd), Some(place)) = (self.initrd, self.boot.initrd) {
            let bytes = payload_bytes(self.payload_base, initrd);
            mmio::copy_to_phys(to_pa(place.base), bytes);
            sysreg::clean_dcache_range(to_pa(place.base), bytes.len() as u64);
        }
        mmio::copy_to_phys(to_pa(self.boot.dtb), &self.dtb);
        sysreg::clean_dcache_range(to_pa(self.boot.dtb), self.dtb.len() as u64);
        sysreg::invalidate_icache_all();
    }
}

fn payload_bytes(payload_base: u64, blob: PayloadRef) -> &'static [u8] {
    mmio::phys_bytes(payload_base + blob.offset, blob.size as usize)
}

/// Everything a VM needs from the machine it is built on.
pub struct BuildEnv<'a> {
    pub allocator: &'a mut RegionAllocator,
    pub payload_base: u64,
    pub pa_bits: u32,
    pub timer: TimerIrqs,
}

pub fn build(
    index: usize,
    spec: &VmSpec,
    vcpu_pcpu: Vec<usize>,
    env: &mut BuildEnv,
) -> Result<Vm, String> {
    let name = &spec.name;
    let kernel_bytes = payload_bytes(env.payload_base, spec.kernel);
    let header = ImageHeader::parse(kernel_bytes).map_err(|e| format!("VM {name}: kernel: {e}"))?;
    let ram = Region::new(layout::RAM_BASE, spec.memory);
    let boot = layout::plan_boot(ram, &header, spec.initrd.map(|r| r.size))
        .map_err(|e| format!("VM {name}: {e}"))?;

    let ram_pa = env.allocator.alloc(spec.memory, RAM_ALIGN).ok_or_else(|| {
        format!(
            "VM {name}: no {} MiB block of free memory left for its RAM",
            spec.memory >> 20
        )
    })?;
    let mut frames = Frames {
        allocator: env.allocator,
        mmu_off: false,
    };
    let mut stage2 =
        Stage2::new(&mut frames, IPA_BITS).map_err(|e| format!("VM {name}: stage-2: {e:?}"))?;
    // Pages, not blocks: see Stage2::map_pages.
    stage2
        .map_pages(
            &mut frames,
            ram.base,
            ram_pa,
            ram.size,
            S2Attr::Normal {
                read: true,
                write: true,
                exec: true,
            },
        )
        .map_err(|e| format!("VM {name}: stage-2 map of RAM: {e:?}"))?;
    let vmid = (index + 1) as u16;

    let vcpus = vcpu_pcpu.len();
    let dtb = build_guest_dtb(&GuestDtbConfig {
        vcpus: vcpus as u32,
        ram,
        gic_dist: layout::GIC_DIST,
        gic_redist: layout::gic_redist(vcpus),
        uart: layout::UART,
        uart_spi: layout::UART_SPI,
        timer: env.timer,
        bootargs: &spec.bootargs,
        initrd: boot.initrd,
    });
    if dtb.len() as u64 > layout::DTB_MAX {
        return Err(format!(
            "VM {name}: generated device tree is {} bytes, over 2 MiB",
            dtb.len()
        ));
    }

    let vm = Vm {
        index,
        name: name.clone(),
        vttbr: stage2.vttbr(vmid),
        vtcr: stage2.vtcr(env.pa_bits),
        cntvoff: sysreg::read_cntpct_el0(),
        ram,
        ram_pa,
        vgic: VGic::new(vcpus, layout::NR_SPIS),
        power: VcpuPower::new(vcpus),
        uart: Mutex::new(Console::new()),
        vcpu_pcpu,
        boot,
        state: AtomicU8::new(RunState::Running as u8),
        kernel: spec.kernel,
        initrd: spec.initrd,
        dtb,
        payload_base: env.payload_base,
    };
    vm.load_images();
    Ok(vm)
}
