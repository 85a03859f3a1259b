//! The machine as Bothy runs it: physical CPUs, the VMs, and the scheduler.
//!
//! Built once on the boot CPU ([`build`]) and then read-only (all mutable state
//! inside is atomic or locked), so every CPU reads it without locking. Which vCPU
//! each CPU runs is the scheduler's (`bothy_core::sched`) to decide, behind one lock
//! taken only where a CPU may change vCPU; a pinned vCPU's CPU runs nothing else.

use crate::arch::aarch64::context::{Features, HwCpuIf};
use crate::arch::aarch64::lr::HwListRegs;
use crate::arch::aarch64::percpu::LoadedVcpu;
use crate::arch::aarch64::{entry, firmware, gic, mmu, percpu, sysreg};
use crate::vm::{self, BuildEnv, Vm};
use crate::{exit, fatal, println};
use alloc::vec::Vec;
use bothy_core::exit::idregs::{self, IdRegs, Traps};
use bothy_core::fdt::platform::Platform;
use bothy_core::manifest::Manifest;
use bothy_core::mem::{
    build_el2_idmap, PageOwnership, RegionAllocator, Stage2, VmidAllocator, VmidBits, PAGE_SIZE,
};
use bothy_core::sched::{Placement, Scheduler, VcpuId};
use bothy_core::Region;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

/// Physical SGI one CPU sends another: "look at your vCPU" (new interrupt, CPU_ON, VM stop).
pub const KICK_SGI: u32 = 0;
/// PPIs are INTIDs 16..32; the device tree numbers them from 0.
const PPI_BASE: u32 = 16;
const SPI_BASE: u32 = 32;
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

pub struct PhysCpu {
    /// Which stack and entry index it uses (boot CPU 0, the others in device-tree order).
    pub index: usize,
    /// Position in the device tree's /cpus: the number `pin` uses.
    pub dt_index: usize,
    pub mpidr: u64,
    pub redist: u64,
}

pub struct Machine {
    pub cpus: Vec<PhysCpu>,
    /// VTTBR_EL2 of an idle CPU: an empty stage-2 table, VMID 0 (never allocated).
    pub parked_vttbr: u64,
    /// Physical memory after boot: what is free, who owns the rest, VMIDs in use.
    pub memory: Mutex<MachineMemory>,
    pub vms: Vec<Vm>,
    /// Which vCPU runs where (slots of `cpus`); see `bothy_core::sched`.
    pub sched: Mutex<Scheduler>,
    /// The (VM, vCPU index) of each scheduler handle.
    pub vcpu_of: Vec<(usize, usize)>,
    pub gic_dist: u64,
    /// Physical INTIDs Bothy handles.
    pub vtimer_intid: u32,
    /// The EL2 physical timer: the scheduling tick of time-shared CPUs.
    pub tick_intid: u32,
    pub maintenance_intid: u32,
    pub uart_intid: Option<u32>,
    /// VMs not yet powered off; at zero Bothy powers the machine off.
    pub running_vms: AtomicUsize,
    /// VM that receives console input.
    pub focus: AtomicUsize,
    /// Trap bits every CPU sets beside its own constants, so that guests' ID
    /// registers (`bothy_core::exit::idregs`) hide what is trapped.
    pub traps: Traps,
}

/// The frame allocator, page-ownership record and VMID allocator, which live as long
/// as the machine (one lock: creating or destroying a VM changes all three).
pub struct MachineMemory {
    pub allocator: RegionAllocator,
    pub owners: PageOwnership,
    pub vmids: VmidAllocator,
}

impl Machine {
    /// The VM and vCPU behind a scheduler handle.
    pub fn vcpu(&self, id: VcpuId) -> Option<(&Vm, usize)> {
        let &(vm, vcpu) = self.vcpu_of.get(id.0)?;
        Some((self.vms.get(vm)?, vcpu))
    }
}

/// What secondaries need to turn their MMU on before they can read [`MACHINE`].
#[derive(Clone, Copy)]
struct El2Tables {
    root: u64,
    tcr: u64,
    mair: u64,
}

static MACHINE: Once<Machine> = Once::new();

/// What the exit path needs about the CPU it runs on, without touching [`Machine`].
pub struct CpuContext {
    /// The vCPU whose registers this CPU holds.
    pub loaded: LoadedVcpu,
    /// This CPU's slot in [`Machine::cpus`].
    pub slot: usize,
    /// Its virtual CPU interface's list registers.
    pub lrs: HwListRegs,
    pub features: Features,
    pub redist: u64,
    /// Why the current exit asked for the scheduler (`exit::Reason`, encoded), and the
    /// wake-up deadline that goes with a block.
    pub reason: AtomicU64,
    pub wake_at: AtomicU64,
}

impl CpuContext {
    /// This CPU's virtual CPU interface, for a context switch.
    pub fn cpuif(&self, vtimer_intid: u32) -> HwCpuIf {
        HwCpuIf {
            lr_count: bothy_core::vgic::ListRegs::count(&self.lrs),
            aprs: self.features.aprs,
            redist: self.redist,
            vtimer_intid,
        }
    }
}

/// One per CPU slot; a power of two so indexing needs no bounds check.
static CONTEXTS: [Once<CpuContext>; entry::MAX_CPUS] = [const { Once::new() }; entry::MAX_CPUS];
const _: () = assert!(entry::MAX_CPUS.is_power_of_two());

/// This CPU's context (set by [`setup_cpu`] before any guest runs).
#[inline(always)]
pub fn this_cpu() -> &'static CpuContext {
    match percpu::get() {
        Some(ctx) => ctx,
        None => fatal(format_args!("this CPU has no context")),
    }
}
static EL2_TABLES: Once<El2Tables> = Once::new();

pub fn machine() -> &'static Machine {
    // Only reachable after build() (CPUs start running guests after it).
    MACHINE
        .get()
        .unwrap_or_else(|| fatal(format_args!("machine used before it was built")))
}

/// This CPU's slot in [`Machine::cpus`] (`usize::MAX` before [`setup_cpu`]).
#[inline(always)]
pub fn current_cpu() -> usize {
    percpu::get().map_or(usize::MAX, |ctx| ctx.slot)
}

pub fn build(
    platform: Platform,
    manifest: Manifest,
    payload_base: u64,
    payload_end: u64,
    dtb: Region,
) -> ! {
    // 1. Memory Bothy may hand out: RAM minus firmware reservations, this image
    //    with its payload, and the firmware DTB.
    let (image_start, _) = entry::image_bounds();
    let mut reserved = platform.reserved.clone();
    reserved.push(Region::new(image_start, payload_end - image_start));
    reserved.push(dtb);
    let mut allocator = RegionAllocator::new(&platform.memory, &reserved);

    // 2. EL2 identity map: RAM normal, the devices Bothy drives as device memory.
    let uart = platform
        .uart
        .as_ref()
        .map(|u| Region::new(u.base, u.size.max(0x1000)));
    let mut devices: Vec<Region> = uart.into_iter().collect();
    devices.push(platform.gic.dist);
    devices.extend(platform.gic.redists.iter().copied());
    let pa_bits = mmu::pa_bits();
    let idmap = build_el2_idmap(
        &mut mmu::Frames {
            allocator: &mut allocator,
            mmu_off: true,
        },
        &platform.memory,
        &devices,
        Region::new(image_start, entry::text_end() - image_start),
        pa_bits,
    )
    .unwrap_or_else(|e| fatal(format_args!("cannot build EL2 page tables: {e:?}")));
    let tables = *EL2_TABLES.call_once(|| El2Tables {
        root: idmap.root,
        tcr: idmap.tcr,
        mair: idmap.mair,
    });
    // Everything Bothy wrote so far (relocations, .bss, heap, stacks) went to RAM
    // with the MMU off; drop any stale lines the loader left for that range.
    let (start, end) = entry::image_bounds();
    sysreg::invalidate_dcache_range(start, end - start);
    mmu::enable(tables.root, tables.tcr, tables.mair);
    // Secondaries read EL2_TABLES with their MMU (and caches) still off.
    sysreg::clean_dcache_range(
        core::ptr::addr_of!(EL2_TABLES) as u64,
        core::mem::size_of::<Once<El2Tables>>() as u64,
    );

    // 3. Physical CPUs, boot CPU first. Secondaries are started now and only
    //    those that check in within a bounded time get vCPUs.
    let boot_mpidr = sysreg::read_mpidr_el1() & MPIDR_AFFINITY_MASK;
    let mut mpidrs: Vec<u64> = platform
        .cpus
        .iter()
        .map(|c| c.mpidr & MPIDR_AFFINITY_MASK)
        .collect();
    // The boot CPU takes index (and stack) 0; `dt_order` remembers where each was.
    let mut dt_order: Vec<usize> = (0..mpidrs.len()).collect();
    match mpidrs.iter().position(|&m| m == boot_mpidr) {
        Some(i) => {
            mpidrs.swap(0, i);
            dt_order.swap(0, i);
        }
        None => fatal(format_args!(
            "the boot CPU (MPIDR {boot_mpidr:#x}) is not in the device tree's /cpus"
        )),
    }
    if mpidrs.len() > entry::MAX_CPUS {
        println!(
            "warning: using {} of the {} CPUs in the device tree",
            entry::MAX_CPUS,
            mpidrs.len()
        );
        mpidrs.truncate(entry::MAX_CPUS);
    }
    let online = start_secondaries(&mpidrs);
    let mut cpus = Vec::new();
    for (index, &mpidr) in mpidrs.iter().enumerate() {
        if online & (1 << index) == 0 {
            continue;
        }
        let redist = gic::find_redistributor(&platform.gic.redists, mpidr).unwrap_or_else(|| {
            fatal(format_args!(
                "no GICv3 redistributor for CPU MPIDR {mpidr:#x}"
            ))
        });
        cpus.push(PhysCpu {
            index,
            dt_index: dt_order[index],
            mpidr,
            redist,
        });
    }

    // 4. Every vCPU gets a scheduler handle: pinned ones own their CPU, the rest
    //    share the CPUs nobody pinned.
    let freq = sysreg::read_cntfrq_el0();
    let slice = u64::from(manifest.slice_us) * freq / 1_000_000;
    let mut sched = Scheduler::new(cpus.len(), slice);
    let mut vcpu_of = Vec::new();
    let mut plans = Vec::new();
    for (vm_index, spec) in manifest.vms.iter().enumerate() {
        let mut plan = Vec::new();
        for vcpu in 0..spec.cpus as usize {
            let placement = match spec.pin.get(vcpu) {
                Some(&dt) => match cpus.iter().position(|c| c.dt_index == dt as usize) {
                    Some(slot) => Placement::Pinned(slot),
                    None => fatal(format_args!(
                        "VM {}: pin: CPU {dt} is not online (online: {})",
                        spec.name,
                        online_list(&cpus)
                    )),
                },
                None => Placement::Shared,
            };
            let id = sched
                .add_vcpu(vm_index, placement)
                .unwrap_or_else(|e| fatal(format_args!("VM {}: vCPU {vcpu}: {e}", spec.name)));
            vcpu_of.push((vm_index, vcpu));
            plan.push(id);
        }
        plans.push(plan);
    }
    if let Err(e) = sched.check() {
        fatal(format_args!(
            "{e}: pin fewer CPUs, or start QEMU with more (--smp)"
        ));
    }

    // 5. Physical GIC, then the VMs.
    gic::init_distributor(platform.gic.dist.base);
    // One width for the allocator and VTCR_EL2.VS: if they disagreed, VMIDs 256
    // apart would share TLB entries.
    let mut vmids =
        VmidAllocator::new(VmidBits::from_id_aa64mmfr1(sysreg::read_id_aa64mmfr1_el1()));
    // What an idle CPU installs: tables that translate nothing, under VMID 0.
    let parked_vttbr = Stage2::new(
        &mut mmu::Frames {
            allocator: &mut allocator,
            mmu_off: false,
        },
        vm::IPA_BITS,
    )
    .unwrap_or_else(|e| fatal(format_args!("cannot build the idle stage 2: {e}")))
    .vttbr(0);
    // Every page still free is tracked from here on; Bothy's own (image, tables,
    // stacks) is outside the record and can never be assigned to a VM.
    let mut owners = PageOwnership::new();
    for free in allocator.free() {
        // Whole pages only: the free list is byte-exact (the image ends anywhere).
        let base = free.base.next_multiple_of(PAGE_SIZE);
        let end = free.end() & !(PAGE_SIZE - 1);
        if end <= base {
            continue;
        }
        if let Err(e) = owners.add_memory(Region::new(base, end - base)) {
            fatal(format_args!("memory ownership record: {e:?}"));
        }
    }
    // The ID registers every VM reads: the boot CPU's, less what the traps hide.
    let host = IdRegs::from_fn(|r| sysreg::read_id_space(r.crm, r.op2));
    let traps = idregs::required(&host);
    let id_regs = idregs::sanitise(
        &host,
        &Traps {
            hcr: HCR_GUEST | traps.hcr,
            cptr: CPTR_EL2_RES1 | traps.cptr,
            mdcr: traps.mdcr,
        },
        vm::IPA_BITS,
    );
    let mut env = BuildEnv {
        id_regs,
        allocator: &mut allocator,
        owners: &mut owners,
        payload_base,
        pa_bits,
        timer: platform.timer,
        vmids: &mut vmids,
    };
    let mut vms = Vec::new();
    for ((index, spec), plan) in manifest.vms.iter().enumerate().zip(plans) {
        let vm =
            vm::build(index, spec, plan, &mut env).unwrap_or_else(|e| fatal(format_args!("{e}")));
        println!(
            "VM {} : {} vCPUs, {} MiB at {:#x}, kernel at IPA {:#x}{}",
            vm.name,
            vm.vcpus(),
            vm.ram.size >> 20,
            vm.ram_pa(),
            vm.boot.kernel,
            vm.boot
                .initrd
                .map_or(alloc::string::String::new(), |r| alloc::format!(
                    ", initrd {} KiB",
                    r.size >> 10
                ))
        );
        vms.push(vm);
    }
    let uart_intid = platform
        .uart
        .as_ref()
        .and_then(|u| u.spi)
        .map(|spi| spi + SPI_BASE);
    let running = vms.len();
    for vm in &vms {
        vm.vcpus[0].boot.store(true, Ordering::Relaxed);
        let _ = sched.start(vm.vcpus[0].id);
    }
    MACHINE.call_once(|| Machine {
        cpus,
        parked_vttbr,
        memory: Mutex::new(MachineMemory {
            allocator,
            owners,
            vmids,
        }),
        vms,
        sched: Mutex::new(sched),
        vcpu_of,
        gic_dist: platform.gic.dist.base,
        vtimer_intid: platform.timer.virt + PPI_BASE,
        tick_intid: platform.timer.hyp_phys + PPI_BASE,
        maintenance_intid: platform.gic.maintenance_ppi.unwrap_or(9) + PPI_BASE,
        uart_intid,
        running_vms: AtomicUsize::new(running),
        focus: AtomicUsize::new(0),
        traps,
    });
    let m = machine();
    let names: Vec<&str> = m.vms.iter().map(|vm| vm.name.as_str()).collect();
    crate::console::init_guest_output(&names);
    if let (Some(intid), Some(uart)) = (m.uart_intid, crate::console::uart()) {
        gic::enable_spi(m.gic_dist, intid, m.cpus[0].mpidr);
        uart.enable_rx_interrupt();
    }

    // 6. Release the secondaries (waiting in secondary_main), then run this CPU.
    sysreg::sev();
    setup_cpu(0);
    exit::run_cpu(0)
}

/// "0-1, 3" style list of the online CPUs' device-tree numbers.
fn online_list(cpus: &[PhysCpu]) -> alloc::string::String {
    let mut numbers: Vec<usize> = cpus.iter().map(|c| c.dt_index).collect();
    numbers.sort_unstable();
    let words: Vec<alloc::string::String> = numbers.iter().map(|n| alloc::format!("{n}")).collect();
    words.join(", ")
}

/// Bit per CPU index that has checked in from `secondary_main`.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// PSCI CPU_ON every secondary and wait (bounded) for each to check in.
fn start_secondaries(mpidrs: &[u64]) -> usize {
    let conduit = crate::firmware_conduit().unwrap_or(firmware::Conduit::Smc);
    let mut expected = 1;
    for (index, &mpidr) in mpidrs.iter().enumerate().skip(1) {
        let status = firmware::cpu_on(
            conduit,
            mpidr,
            entry::secondary_entry_address(),
            index as u64,
        );
        if status == 0 {
            expected |= 1 << index;
        } else {
            println!("warning: CPU {mpidr:#x} not started: firmware PSCI CPU_ON returned {status}");
        }
    }
    // Half a second of counter time is ages for a CPU to reach Rust.
    let deadline = sysreg::read_cntpct_el0() + sysreg::read_cntfrq_el0() / 2;
    while ONLINE.load(Ordering::Acquire) != expected && sysreg::read_cntpct_el0() < deadline {
        core::hint::spin_loop();
    }
    let online = ONLINE.load(Ordering::Acquire);
    for (index, &mpidr) in mpidrs.iter().enumerate() {
        if expected & !online & (1 << index) != 0 {
            println!("warning: CPU {mpidr:#x} accepted PSCI CPU_ON but never came up at EL2; not using it");
        }
    }
    online
}

pub fn secondary_main(index: usize) -> ! {
    let Some(tables) = EL2_TABLES.get().copied() else {
        crate::halt_machine()
    };
    let el = (sysreg::read_current_el() >> 2) & 3;
    if el != 2 {
        // Firmware started this CPU somewhere else: leave it out rather than run EL2 code at EL{el}.
        loop {
            sysreg::wfe();
        }
    }
    percpu::clear();
    mmu::enable(tables.root, tables.tcr, tables.mair);
    ONLINE.fetch_or(1 << index, Ordering::AcqRel);
    let m = loop {
        match MACHINE.get() {
            Some(m) => break m,
            None => sysreg::wfe(),
        }
    };
    // A CPU that came up too late was not given an entry in the machine: park it.
    let Some(slot) = m.cpus.iter().position(|c| c.index == index) else {
        loop {
            sysreg::wfi();
        }
    };
    setup_cpu(slot);
    exit::run_cpu(slot)
}

// HCR_EL2 (Arm ARM D17.2.48): stage 2 on, physical IRQ/FIQ/SError to EL2,
// trap WFI/WFE and SMC, broadcast maintenance inner shareable, AArch64 EL1,
// and let the guest use pointer authentication without trapping. TID3 and the
// traps that hide features come from `Machine::traps`.
const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_INNER: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
pub const HCR_TWE: u64 = 1 << 14;
const HCR_TSC: u64 = 1 << 19;
const HCR_RW: u64 = 1 << 31;
const HCR_APK: u64 = 1 << 40;
const HCR_API: u64 = 1 << 41;
pub const HCR_GUEST: u64 = HCR_VM
    | HCR_SWIO
    | HCR_FMO
    | HCR_IMO
    | HCR_AMO
    | HCR_FB
    | HCR_BSU_INNER
    | HCR_TWI
    | HCR_TWE
    | HCR_TSC
    | HCR_RW
    | HCR_APK
    | HCR_API;
/// CPTR_EL2 (nVHE): RES1 bits only, so FP/SIMD and SVE are not trapped; SME (TSM)
/// and AMU (TAM) traps come from `Machine::traps`.
const CPTR_EL2_RES1: u64 = (1 << 13) | (1 << 9) | 0xff;
/// CNTHCTL_EL2: EL1 may read the physical counter; the EL1 physical timer traps.
const CNTHCTL_EL1PCTEN: u64 = 1 << 0;

fn setup_cpu(cpu: usize) {
    let m = machine();
    let dedicated = m.sched.lock().dedicated(cpu).is_some();
    let ctx = CONTEXTS[cpu].call_once(|| CpuContext {
        loaded: LoadedVcpu::empty(),
        slot: cpu,
        lrs: HwListRegs::probe(),
        features: Features::probe(),
        redist: m.cpus[cpu].redist,
        reason: AtomicU64::new(0),
        wake_at: AtomicU64::new(0),
    });
    percpu::install(ctx);
    sysreg::write_vbar_el2(crate::arch::aarch64::vectors::vector_table());
    // With E2H = 0, CPTR_EL2.TSM traps EL2's own SME accesses too: SMCR_EL2 is left
    // alone, as SME is not offered to guests (ZA and streaming mode are not switched).
    sysreg::write_cptr_el2(CPTR_EL2_RES1 | m.traps.cptr);
    // Guests get 128-bit SVE vectors: then a vCPU switch saves the Z registers with
    // the V registers (arch/aarch64/context.rs).
    if ctx.features.sve {
        sysreg::write_zcr_el2(0);
    }
    // All PMU counters belong to the guest (HPMN = PMCR_EL0.N), the PMU does not
    // trap, and none counts events at EL2 (HPMD, and HCCD for the cycle counter from PMUv3p5):
    // a guest must not time or profile Bothy.
    const MDCR_EL2_HPMD: u64 = 1 << 17;
    sysreg::write_mdcr_el2(((sysreg::read_pmcr_el0() >> 11) & 0x1f) | MDCR_EL2_HPMD | m.traps.mdcr);
    sysreg::write_cnthctl_el2(CNTHCTL_EL1PCTEN);
    sysreg::write_cnthp_ctl_el2(0);
    // WFE yields on a shared CPU; on a dedicated one there is nobody to yield to, so
    // it is not trapped at all.
    let hcr = if dedicated {
        HCR_GUEST & !HCR_TWE
    } else {
        HCR_GUEST
    } | m.traps.hcr;
    sysreg::write_hcr_el2(hcr);
    sysreg::isb();
    let mut private = 1 << KICK_SGI;
    private |= 1 << m.maintenance_intid;
    private |= 1 << m.vtimer_intid;
    private |= 1 << m.tick_intid;
    gic::init_cpu(m.cpus[cpu].redist, private);
}

/// Ask physical CPU `cpu` to look at its vCPU.
pub fn kick(cpu: usize) {
    if cpu != current_cpu() {
        if let Some(c) = machine().cpus.get(cpu) {
            gic::send_sgi(c.mpidr, KICK_SGI);
        }
    }
}

/// Called when a VM has stopped for good; powers off after the last one.
pub fn vm_stopped(vm: &Vm) {
    let m = machine();
    // Counted once however the stop is reported (see `Vm::counted`).
    if !vm.counted.swap(false, Ordering::AcqRel) {
        return;
    }
    if m.running_vms.fetch_sub(1, Ordering::AcqRel) == 1 {
        if crate::prompt::is_open() {
            println!("no VM is running; Bothy powers off when the prompt closes");
            return;
        }
        println!("all VMs powered off");
        crate::halt_machine();
    }
    // Keep the console useful: input should not go to a VM that can no longer read it.
    if m.focus.load(Ordering::Relaxed) == vm.index {
        switch_focus(m);
    }
}

/// A stopped VM starts again (from the prompt): it counts as running.
pub fn vm_started(vm: &Vm) {
    if !vm.counted.swap(true, Ordering::AcqRel) {
        machine().running_vms.fetch_add(1, Ordering::AcqRel);
    }
}

/// Give console input to the next running VM after the focused one.
pub fn switch_focus(m: &Machine) {
    let from = m.focus.load(Ordering::Relaxed);
    let next = (1..=m.vms.len())
        .map(|step| (from + step) % m.vms.len())
        .find(|&i| m.vms[i].state() == bothy_core::lifecycle::VmState::Running);
    if let Some(next) = next {
        m.focus.store(next, Ordering::Relaxed);
        if m.vms.len() > 1 {
            println!(
                "console input goes to VM {} (Ctrl-] switches)",
                m.vms[next].name
            );
        }
    }
}
