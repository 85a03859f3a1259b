//! Building a VM from its manifest entry: memory, stage-2, images, guest DTB, vCPUs.
//!
//! A VM is a plain struct shared (as an `Arc`, see `machine.rs`) by the VM table, the
//! scheduler's map and the CPUs that run its vCPUs: what its exits act on
//! is a `bothy_core::vm::VmModel` it derefs to (run state, vGIC, PSCI power states,
//! PL011, MMIO bus); everything that changes after boot is behind atomics or a lock.
//! Guest RAM is one contiguous, 2 MiB-aligned block of physical memory mapped at
//! IPA 0x4000_0000 in 4 KiB pages (a `VmMemory`, rebuilt afresh when the VM restarts);
//! device windows (GIC, UART) are left unmapped so every access traps.
//!
//! A [`Vcpu`] holds what its vCPU leaves behind when it is not on a CPU: its
//! general-purpose frame and its EL1/FP/vGIC/timer context. The CPU that gives a
//! vCPU up writes them under the vCPU's `saved` lock, which it takes while the
//! scheduler's lock is still held, so a CPU picking the vCPU up next waits on that
//! lock until they are complete (lock order: scheduler, then one `saved`).

use crate::arch::aarch64::context::VcpuContext;
use crate::arch::aarch64::entry::Payload;
use crate::arch::aarch64::vectors::GuestFrame;
use crate::arch::aarch64::{mmio, mmu, sysreg};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bothy_core::exit::idregs::IdRegs;
use bothy_core::fdt::guest::{build_guest_dtb, GuestDtbConfig};
use bothy_core::fdt::platform::{Pmu, TimerIrqs};
use bothy_core::layout::{self, BootPlan};
use bothy_core::linux::ImageHeader;
use bothy_core::manifest::{OnExit, VmSpec};
use bothy_core::mem::{
    AtomicVttbr, NotGuestRam, Owner, PageOwnership, RegionAllocator, VmMemory, VmMemorySpec,
    VmidAllocator, Vtcr,
};
use bothy_core::sched::VcpuId;
use bothy_core::vm::{ExitCounters, VmHandle, VmModel};
use bothy_core::Region;
use core::sync::atomic::{AtomicBool, AtomicU64};
use spin::Mutex;

/// Guest IPA space: 39 bits lets stage-2 start at level 1 without concatenated tables.
pub const IPA_BITS: u32 = 39;
const RAM_ALIGN: u64 = 2 << 20;

pub struct Vm {
    /// Its handle in the machine's VM table; `index()` is its slot.
    pub handle: VmHandle,
    /// Which of the system file's VMs it was built from.
    pub template: usize,
    pub name: String,
    /// VTTBR_EL2 (tables and VMID); replaced when the VM restarts with fresh memory.
    pub vttbr: AtomicVttbr,
    pub vtcr: Vtcr,
    /// CNTVOFF_EL2: the VM's virtual counter starts near zero when it is built.
    pub cntvoff: u64,
    /// What its exits act on: run state, guest RAM (IPA), vGIC, PSCI power states,
    /// devices and their bus. `Vm` derefs to it.
    pub model: VmModel,
    /// Its RAM block, stage-2 tables and VMID (what destroying it gives back); rebuilt
    /// afresh when the VM restarts. `None` only if a rebuild failed (the VM crashed).
    pub memory: Mutex<Option<VmMemory>>,
    pub vcpus: Vec<Vcpu>,
    pub boot: BootPlan,
    pub on_exit: OnExit,
    /// Counted in `Machine::running_vms` (true from boot until it stops for good), so
    /// a stop reported twice is counted once.
    pub counted: AtomicBool,
    /// Held by whoever finishes a stop (`exit::vcpus_stopped`), starts the stopped VM
    /// again or destroys it (the prompt), so that two of those never interleave: the
    /// CPU that finishes a stop does so after the scheduler's lock is released, and the
    /// prompt must not reload or give back memory under it.
    pub lifecycle: Mutex<()>,
    /// Numbers its restarts, so that a piece of a cancelled restart's RAM scrub does
    /// nothing (`restart.rs`).
    pub scrub_gen: AtomicU64,
    /// What a reset reloads: the manifest's images (in the payload) and the generated DTB.
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    dtb: Vec<u8>,
}

impl core::ops::Deref for Vm {
    type Target = VmModel;

    fn deref(&self) -> &VmModel {
        &self.model
    }
}

impl Vm {
    /// Its slot in the VM table: unique among the VMs that exist, reused after it is
    /// destroyed (the scheduler and the page-ownership record know VMs by it).
    pub fn index(&self) -> usize {
        usize::from(self.handle.index())
    }

    /// Where guest RAM starts physically.
    pub fn ram_pa(&self) -> u64 {
        self.memory.lock().as_ref().map_or(0, |m| m.ram_pa())
    }

    pub fn vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Copy the kernel, initrd and DTB into guest RAM (boot and SYSTEM_RESET), each
    /// through a range checked to lie in the VM's RAM.
    pub fn load_images(&self) -> Result<(), NotGuestRam> {
        let Some(ram) = self.memory.lock().as_ref().map(|m| m.guest_ram()) else {
            return Err(NotGuestRam { ipa: 0, len: 0 });
        };
        let initrd = match (self.initrd, self.boot.initrd) {
            (Some(initrd), Some(place)) => Some((place.base, initrd)),
            _ => None,
        };
        let images = [
            Some((self.boot.kernel, self.kernel)),
            initrd,
            Some((self.boot.dtb, self.dtb.as_slice())),
        ];
        // Every range first: nothing is written unless all fit.
        for (ipa, bytes) in images.iter().flatten() {
            ram.range(*ipa, bytes.len() as u64)?;
        }
        for (ipa, bytes) in images.into_iter().flatten() {
            mmio::copy_to_guest(&ram, ipa, bytes)?;
        }
        sysreg::invalidate_icache_all();
        Ok(())
    }
}

/// One vCPU of a VM: its scheduler handle and what it left behind when it last
/// left a CPU.
pub struct Vcpu {
    pub id: VcpuId,
    pub saved: Mutex<Saved>,
    /// Start at the kernel entry the next time it is loaded (vCPU 0 at boot and after
    /// a reset).
    pub boot: AtomicBool,
    /// PSCI CPU_ON gave it a start point (in `Vm::power`) to take when it is loaded.
    pub psci_start: AtomicBool,
    pub exits: ExitCounters,
}

/// A vCPU's registers while no CPU holds them (the frame also while it is blocked on
/// a CPU that idles).
#[derive(Default)]
pub struct Saved {
    pub frame: GuestFrame,
    pub arch: VcpuContext,
}

/// Everything a VM needs from the machine it is built on.
pub struct BuildEnv<'a> {
    pub allocator: &'a mut RegionAllocator,
    /// The machine's page-ownership record: a VM's RAM becomes its own.
    pub owners: &'a mut PageOwnership,
    pub payload: Payload,
    pub pa_bits: u32,
    pub timer: TimerIrqs,
    /// The PMU its guests get (described in their device tree), if any.
    pub pmu: Option<Pmu>,
    /// VMIDs for the VMs built (8 or 16 bits, as the CPU supports).
    pub vmids: &'a mut VmidAllocator,
    /// The ID registers its guests read (HCR_EL2.TID3).
    pub id_regs: IdRegs,
}

/// Build the VM `handle` will name, from template `template` (`spec`); `vcpus` are
/// its vCPUs' scheduler handles.
pub fn build(
    handle: VmHandle,
    template: usize,
    spec: &VmSpec,
    vcpus: Vec<VcpuId>,
    env: &mut BuildEnv,
) -> Result<Vm, String> {
    let name = &spec.name;
    let kernel = env
        .payload
        .bytes(spec.kernel.offset, spec.kernel.size)
        .map_err(|e| format!("VM {name}: kernel: {e}"))?;
    let initrd = match spec.initrd {
        Some(r) => Some(
            env.payload
                .bytes(r.offset, r.size)
                .map_err(|e| format!("VM {name}: initrd: {e}"))?,
        ),
        None => None,
    };
    let header = ImageHeader::parse(kernel).map_err(|e| format!("VM {name}: kernel: {e}"))?;
    let ram = Region::new(layout::RAM_BASE, spec.memory);
    let boot = layout::plan_boot(ram, &header, spec.initrd.map(|r| r.size))
        .map_err(|e| format!("VM {name}: {e}"))?;

    let spec_memory = VmMemorySpec {
        ram,
        ram_align: RAM_ALIGN,
        ipa_bits: IPA_BITS,
    };
    let owner = Owner::Vm(handle.index());
    let memory = mmu::create_vm_memory(
        owner,
        spec_memory,
        env.allocator,
        env.owners,
        env.vmids,
        &mut crate::exit::ExitHw,
    )
    .map_err(|e| format!("VM {name}: {e}"))?;

    let vcpu_list: Vec<Vcpu> = vcpus
        .into_iter()
        .map(|id| Vcpu {
            id,
            saved: Mutex::new(Saved::default()),
            boot: AtomicBool::new(false),
            psci_start: AtomicBool::new(false),
            exits: ExitCounters::default(),
        })
        .collect();
    let vcpus = vcpu_list.len();
    let dtb = build_guest_dtb(&GuestDtbConfig {
        vcpus: vcpus as u32,
        ram,
        gic_dist: layout::GIC_DIST,
        gic_redist: layout::gic_redist(vcpus),
        uart: layout::UART,
        uart_spi: layout::UART_SPI,
        timer: env.timer,
        pmu: env.pmu,
        bootargs: &spec.bootargs,
        initrd: boot.initrd,
    });
    if dtb.len() as u64 > layout::DTB_MAX {
        return Err(format!(
            "VM {name}: generated device tree is {} bytes, over 2 MiB",
            dtb.len()
        ));
    }

    let mut model = VmModel::new(vcpus, ram).map_err(|e| format!("VM {name}: {e:?}"))?;
    model.id_regs = env.id_regs;
    // The physical-timer PPI the guest's device tree names (from the platform's).
    model.ptimer_intid = env.timer.phys + 16;
    let vm = Vm {
        handle,
        template,
        name: name.clone(),
        vttbr: AtomicVttbr::new(memory.vttbr()),
        vtcr: memory.stage2().vtcr(env.pa_bits, env.vmids.bits()),
        cntvoff: sysreg::read_cntpct_el0(),
        model,
        memory: Mutex::new(Some(memory)),
        vcpus: vcpu_list,
        boot,
        on_exit: spec.on_exit,
        counted: AtomicBool::new(true),
        lifecycle: Mutex::new(()),
        scrub_gen: AtomicU64::new(0),
        kernel,
        initrd,
        dtb,
    };
    vm.load_images()
        .map_err(|e| format!("VM {name}: its images do not fit: {e}"))?;
    Ok(vm)
}
