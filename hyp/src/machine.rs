//! The machine as Bothy runs it: physical CPUs, the VMs, and the scheduler.
//!
//! Built once on the boot CPU ([`build`]); everything that changes later is atomic or
//! locked, so every CPU reads it without locking. Which vCPU each CPU runs is the
//! scheduler's (`bothy_core::sched`) to decide, behind one lock taken only where a
//! CPU may change vCPU; a pinned vCPU's CPU runs nothing else.
//!
//! VMs are run-time objects: [`create_vm`] builds one from its description in the
//! system file (at boot, and from the prompt's `create`) and [`destroy_vm`] takes a
//! stopped one apart, giving back its memory, VMID and vCPUs. The VM table holds
//! them by generation-tagged handle (`bothy_core::vm::VmTable`) as `Arc`s, and so do
//! the scheduler's vCPU map and the CPUs holding one of their vCPUs' registers
//! (`percpu::LoadedVcpu`), so a VM lives until the last of those lets go.
//!
//! Lock order: the prompt's, then `vms`, then the scheduler's, then one vCPU's
//! `saved`; a VM's memory lock, then the machine's memory lock. `vms` is never taken
//! while the scheduler's lock is held.

use crate::arch::aarch64::context::{Features, HwCpuIf};
use crate::arch::aarch64::entry::Payload;
use crate::arch::aarch64::lr::HwListRegs;
use crate::arch::aarch64::mmu::El2Map;
use crate::arch::aarch64::percpu::LoadedVcpu;
use crate::arch::aarch64::traps::{self, CpuTraps};
use crate::arch::aarch64::{entry, firmware, gic, mmu, percpu, sysreg};
use crate::vm::{self, BuildEnv, Vm};
use crate::{exit, fatal, println};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bothy_core::exit::idregs::{self, IdRegs};
use bothy_core::fdt::platform::{Platform, Pmu, TimerIrqs};
use bothy_core::lifecycle::VmState;
use bothy_core::manifest::{Manifest, VmSpec};
use bothy_core::mem::{PageOwnership, RegionAllocator, VmidAllocator, VmidBits, Vttbr, PAGE_SIZE};
use bothy_core::sched::{Scheduler, VcpuId};
use bothy_core::vm::VmTable;
use bothy_core::Region;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::{Mutex, Once, RwLock};

/// Most VMs at once (the VM table's size; VM slots are 16-bit).
pub const MAX_VMS: usize = 64;

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
    /// Its trap controls: Bothy's, and the trap bits for its own features (see
    /// `bothy_core::exit::idregs::required`: some are RES0 where a feature is missing).
    pub traps: CpuTraps,
}

pub struct Machine {
    pub cpus: Vec<PhysCpu>,
    /// VTTBR_EL2 of an idle CPU: an empty stage-2 table, VMID 0 (never allocated).
    pub parked_vttbr: Vttbr,
    /// Physical memory after boot: what is free, who owns the rest, VMIDs in use.
    pub memory: Mutex<MachineMemory>,
    /// The VMs that exist now, by handle (a VM's slot is `Vm::index`).
    pub vms: RwLock<VmTable<Arc<Vm>>>,
    /// Which vCPU runs where (slots of `cpus`); see `bothy_core::sched`.
    pub sched: Mutex<Sched>,
    /// The system file's VMs: what `create` builds (a VM's `template`).
    pub templates: Vec<VmSpec>,
    /// What building a VM needs from the platform.
    pub payload: Payload,
    pub pa_bits: u32,
    pub timer: TimerIrqs,
    pub gic_dist: u64,
    /// The PMU guests get (its overflow PPI is theirs), if the host has one.
    pub pmu: Option<Pmu>,
    /// Physical INTIDs Bothy handles.
    pub vtimer_intid: u32,
    /// The PMU's overflow interrupt when guests have a PMU, else `gic::SPURIOUS`, which
    /// no acknowledged interrupt is (a plain compare on the IRQ path: see `exit.rs`).
    pub pmu_intid: u32,
    /// The PPIs injected hardware-linked (bit n = INTID n): `vtimer_intid`, `pmu_intid`.
    pub hw_ppis: u32,
    /// The EL2 physical timer: the scheduling tick of time-shared CPUs.
    pub tick_intid: u32,
    pub maintenance_intid: u32,
    pub uart_intid: Option<u32>,
    /// VMs not yet powered off; at zero Bothy powers the machine off.
    pub running_vms: AtomicUsize,
    /// Slot of the VM that receives console input.
    pub focus: AtomicUsize,
    /// The ID registers every VM reads (HCR_EL2.TID3): every online CPU's combined,
    /// sanitised (`bothy_core::exit::idregs::machine_view`).
    pub id_regs: IdRegs,
}

/// The scheduler, and the VM and vCPU behind each of its handles (under its lock, so
/// a decision and the vCPUs it names are read together).
pub struct Sched {
    pub core: Scheduler,
    vcpus: Vec<Option<(Arc<Vm>, usize)>>,
}

impl core::ops::Deref for Sched {
    type Target = Scheduler;
    fn deref(&self) -> &Scheduler {
        &self.core
    }
}

impl core::ops::DerefMut for Sched {
    fn deref_mut(&mut self) -> &mut Scheduler {
        &mut self.core
    }
}

impl Sched {
    /// The VM and vCPU behind a scheduler handle.
    pub fn vcpu(&self, id: VcpuId) -> Option<(Arc<Vm>, usize)> {
        self.vcpus.get(id.0)?.clone()
    }

    fn map(&mut self, id: VcpuId, to: Option<(Arc<Vm>, usize)>) {
        if self.vcpus.len() <= id.0 {
            self.vcpus.resize(id.0 + 1, None);
        }
        self.vcpus[id.0] = to;
    }
}

/// The frame allocator, page-ownership record and VMID allocator, which live as long
/// as the machine (one lock: creating or destroying a VM changes all three).
pub struct MachineMemory {
    pub allocator: RegionAllocator,
    pub owners: PageOwnership,
    pub vmids: VmidAllocator,
}

impl Machine {
    /// The VM in slot `index`, if one exists.
    pub fn vm_at(&self, index: usize) -> Option<Arc<Vm>> {
        let vms = self.vms.read();
        let handle = vms.handle_at(u16::try_from(index).ok()?)?;
        vms.get(handle).cloned()
    }

    /// The VM built from template `template` (the system file's VM of that index).
    pub fn vm_of_template(&self, template: usize) -> Option<Arc<Vm>> {
        self.vms
            .read()
            .iter()
            .find(|(_, vm)| vm.template == template)
            .map(|(_, vm)| vm.clone())
    }

    /// Every VM, by slot.
    pub fn all_vms(&self) -> Vec<Arc<Vm>> {
        self.vms.read().iter().map(|(_, vm)| vm.clone()).collect()
    }
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
    /// `PhysCpu::traps` of this CPU, for the exit path's HCR_EL2 writes.
    pub traps: CpuTraps,
    /// Why the current exit asked for the scheduler (`exit::Reason`, encoded), and the
    /// wake-up deadline that goes with a block.
    pub reason: AtomicU64,
    pub wake_at: AtomicU64,
    /// HCR_EL2.TWE as [`trap_wfe`] last wrote it (0 or 1; 2 before the first write), so
    /// that loading a vCPU writes HCR_EL2 only when a CPU turns dedicated or shared.
    pub wfe_trapped: AtomicU8,
}

impl CpuContext {
    /// This CPU's virtual CPU interface, for a context switch; `hw_ppis` are the PPIs
    /// injected hardware-linked ([`Machine::hw_ppis`]).
    pub fn cpuif(&self, hw_ppis: u32) -> HwCpuIf {
        HwCpuIf {
            lr_count: bothy_core::vgic::ListRegs::count(&self.lrs),
            aprs: self.features.aprs,
            redist: self.redist,
            hw_ppis,
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
/// What secondaries need to turn their MMU on before they can read [`MACHINE`].
static EL2_TABLES: Once<El2Map> = Once::new();

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

pub fn build(platform: Platform, manifest: Manifest, payload: Payload, dtb: Region) -> ! {
    // 1. Memory Bothy may hand out: RAM minus firmware reservations, this image
    //    with its payload, and the firmware DTB.
    let (image_start, _) = entry::image_bounds();
    let mut reserved = platform.reserved.clone();
    reserved.push(Region::new(image_start, payload.end() - image_start));
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
    let idmap = mmu::build_el2_map(&mut allocator, &platform.memory, &devices)
        .unwrap_or_else(|e| fatal(format_args!("cannot build EL2 page tables: {e:?}")));
    let tables = EL2_TABLES.call_once(|| idmap);
    // Everything Bothy wrote so far (relocations, .bss, heap, stacks) went to RAM
    // with the MMU off; drop any stale lines the loader left for that range.
    entry::invalidate_image_dcache();
    mmu::enable(tables);
    // Secondaries read EL2_TABLES with their MMU (and caches) still off.
    sysreg::clean_dcache_range(
        core::ptr::addr_of!(EL2_TABLES) as u64,
        core::mem::size_of::<Once<El2Map>>() as u64,
    );
    if manifest.debug_overflow_stack {
        println!("fault injection: overflowing the EL2 stack");
        overflow_stack(0, &[]);
    }

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
    // Each CPU reads its own ID registers as it checks in (vCPUs move between CPUs, so
    // what VMs are shown must hold on all of them); this one first.
    record_id_regs(0);
    let online = start_secondaries(&mpidrs);
    let mut cpus = Vec::new();
    let mut cpu_id_regs = Vec::new();
    for (index, &mpidr) in mpidrs.iter().enumerate() {
        if online & (1 << index) == 0 {
            continue;
        }
        // Recorded before the CPU checked in (`secondary_main`).
        let Some(own) = CPU_ID_REGS.get(index).and_then(Once::get).copied() else {
            println!("warning: CPU {mpidr:#x} came up without its ID registers; not using it");
            continue;
        };
        let redist = gic::find_redistributor(&platform.gic.redists, mpidr).unwrap_or_else(|| {
            fatal(format_args!(
                "no GICv3 redistributor for CPU MPIDR {mpidr:#x}"
            ))
        });
        let traps = CpuTraps::new(&idregs::required(&own)).unwrap_or_else(|unknown| {
            fatal(format_args!(
                "CPU {mpidr:#x} needs trap bits Bothy does not know to be traps: {unknown:x?}"
            ))
        });
        cpus.push(PhysCpu {
            index,
            dt_index: dt_order[index],
            mpidr,
            redist,
            traps,
        });
        cpu_id_regs.push(own);
    }
    if cpu_id_regs.iter().any(|r| Some(r) != cpu_id_regs.first()) {
        println!("CPUs differ in their ID registers: VMs are shown what every CPU has");
    }

    // 4. The scheduler: pinned vCPUs own their CPU, the rest share the CPUs nobody
    //    pinned.
    let freq = sysreg::read_cntfrq_el0();
    let slice = u64::from(manifest.slice_us) * freq / 1_000_000;
    let sched = Scheduler::new(cpus.len(), slice);

    // 5. Physical GIC, memory bookkeeping, then the VMs.
    gic::init_distributor(platform.gic.dist.base);
    // One width for the allocator and VTCR_EL2.VS: if they disagreed, VMIDs 256
    // apart would share TLB entries.
    let vmids =
        VmidAllocator::new(VmidBits::from_id_aa64mmfr1(sysreg::read_id_aa64mmfr1_el1()));
    // What an idle CPU installs: tables that translate nothing, under VMID 0.
    let parked_vttbr = mmu::idle_stage2(&mut allocator, vm::IPA_BITS)
        .unwrap_or_else(|e| fatal(format_args!("cannot build the idle stage 2: {e}")));
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
    // The ID registers every VM reads: every online CPU's combined, less what any
    // CPU's traps hide.
    let own_traps = traps::own();
    let id_regs = idregs::machine_view(&cpu_id_regs, &own_traps, vm::IPA_BITS);
    let hidden = idregs::machine_hidden(&cpu_id_regs, &own_traps);
    if !hidden.is_empty() {
        println!("CPU features VMs do not see (trapped): {}", hidden.join(", "));
    }
    // Guests get the PMU if the host's device tree and the boot CPU both have one.
    let pmu = bothy_core::dev::pmu::offered(platform.pmu, sysreg::read_id_aa64dfr0_el1());
    let vtimer_intid = platform.timer.virt + PPI_BASE;
    let pmu_intid = pmu.map_or(gic::SPURIOUS, Pmu::intid);
    let hw_ppis = 1 << vtimer_intid | pmu.map_or(0, |p| 1 << p.intid());
    let uart_intid = platform
        .uart
        .as_ref()
        .and_then(|u| u.spi)
        .map(|spi| spi + SPI_BASE);
    MACHINE.call_once(|| Machine {
        cpus,
        parked_vttbr,
        memory: Mutex::new(MachineMemory {
            allocator,
            owners,
            vmids,
        }),
        vms: RwLock::new(VmTable::new(MAX_VMS)),
        sched: Mutex::new(Sched {
            core: sched,
            vcpus: Vec::new(),
        }),
        templates: manifest.vms,
        payload,
        pa_bits,
        timer: platform.timer,
        gic_dist: platform.gic.dist.base,
        pmu,
        vtimer_intid,
        pmu_intid,
        hw_ppis,
        tick_intid: platform.timer.hyp_phys + PPI_BASE,
        maintenance_intid: platform.gic.maintenance_ppi.unwrap_or(9) + PPI_BASE,
        uart_intid,
        running_vms: AtomicUsize::new(0),
        focus: AtomicUsize::new(0),
        id_regs,
    });
    let m = machine();
    crate::console::init_guest_output(&[]);
    for template in 0..m.templates.len() {
        create_vm(m, template).unwrap_or_else(|e| fatal(format_args!("{e}")));
    }
    VMS_BUILT.store(true, Ordering::Release);
    if let (Some(intid), Some(uart)) = (m.uart_intid, crate::console::uart()) {
        gic::enable_spi(m.gic_dist, intid, m.cpus[0].mpidr);
        uart.enable_rx_interrupt();
    }

    // 6. Release the secondaries (waiting in secondary_main), then run this CPU.
    sysreg::sev();
    setup_cpu(0);
    exit::run_cpu(0)
}

/// Fault injection (`bothy image --debug-overflow-stack`, tests only): recurse until the
/// stack runs into its guard page. Each frame's array is passed down so the compiler
/// can neither drop it nor turn the recursion into a loop.
#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: it ends in the guard page
fn overflow_stack(depth: u64, caller: &[u64]) -> u64 {
    let frame = [depth; 32];
    core::hint::black_box(&frame);
    let below = core::hint::black_box(overflow_stack(depth + 1, &frame));
    below ^ caller.first().copied().unwrap_or(0)
}

/// "0-1, 3" style list of the online CPUs' device-tree numbers.
fn online_list(cpus: &[PhysCpu]) -> alloc::string::String {
    let mut numbers: Vec<usize> = cpus.iter().map(|c| c.dt_index).collect();
    numbers.sort_unstable();
    let words: Vec<alloc::string::String> = numbers.iter().map(|n| alloc::format!("{n}")).collect();
    words.join(", ")
}

/// The boot VMs are built: secondaries may set up and look for work (their WFE
/// trapping follows from which CPUs those VMs pin).
static VMS_BUILT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Bit per CPU index that has checked in from `secondary_main`.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Each CPU's own ID registers, by CPU index, recorded before it checks in.
static CPU_ID_REGS: [Once<IdRegs>; entry::MAX_CPUS] = [const { Once::new() }; entry::MAX_CPUS];

/// Read this CPU's ID registers (at EL2 they do not trap) into [`CPU_ID_REGS`].
fn record_id_regs(index: usize) {
    if let Some(slot) = CPU_ID_REGS.get(index) {
        slot.call_once(|| IdRegs::from_fn(|r| sysreg::read_id_space(r.crm, r.op2)));
    }
}

/// PSCI CPU_ON every secondary and wait (bounded) for each to check in.
fn start_secondaries(mpidrs: &[u64]) -> usize {
    let conduit = crate::firmware_conduit().unwrap_or(firmware::Conduit::Smc);
    let mut expected = 1;
    for (index, &mpidr) in mpidrs.iter().enumerate().skip(1) {
        let status = firmware::cpu_on(conduit, mpidr, index);
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
    let Some(tables) = EL2_TABLES.get() else {
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
    mmu::enable(tables);
    record_id_regs(index);
    ONLINE.fetch_or(1 << index, Ordering::AcqRel);
    let m = loop {
        match MACHINE.get() {
            Some(m) if VMS_BUILT.load(Ordering::Acquire) => break m,
            _ => sysreg::wfe(),
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

fn setup_cpu(cpu: usize) {
    let m = machine();
    let dedicated = m.sched.lock().dedicated(cpu).is_some();
    let ctx = CONTEXTS[cpu].call_once(|| CpuContext {
        loaded: LoadedVcpu::empty(),
        slot: cpu,
        lrs: HwListRegs::probe(),
        features: Features::probe(),
        redist: m.cpus[cpu].redist,
        traps: m.cpus[cpu].traps,
        reason: AtomicU64::new(0),
        wake_at: AtomicU64::new(0),
        wfe_trapped: AtomicU8::new(2),
    });
    percpu::install(ctx);
    crate::arch::aarch64::vectors::install();
    // With RAS, guests' SErrors are told apart at every exit (vectors.rs): from now on
    // an SError taken at EL2 is Bothy's own. Without, one pending from a guest would be
    // taken here and blamed on Bothy, so they stay masked.
    if sysreg::has_ras() {
        sysreg::unmask_serror();
    }
    traps::init_cpu(&ctx.traps, ctx.features.sve);
    sysreg::write_cnthp_ctl_el2(0);
    trap_wfe(!dedicated);
    let mut private = 1 << KICK_SGI;
    private |= 1 << m.maintenance_intid;
    private |= m.hw_ppis;
    private |= 1 << m.tick_intid;
    gic::init_cpu(m.cpus[cpu].redist, private);
}

/// Build VM `template` of the system file and start its vCPU 0 (at boot, and from
/// the prompt's `create`). A mistake in the description (a pin to a CPU that is not
/// online or is taken) or a machine out of memory or VMIDs is an error, and leaves
/// nothing behind.
pub fn create_vm(m: &'static Machine, template: usize) -> Result<Arc<Vm>, String> {
    let Some(spec) = m.templates.get(template) else {
        return Err(format!("no VM description {template}"));
    };
    let name = &spec.name;
    let online: Vec<usize> = m.cpus.iter().map(|c| c.dt_index).collect();
    let placements = bothy_core::sched::placements(spec.cpus as usize, &spec.pin, &online)
        .map_err(|dt| {
            format!(
                "VM {name}: pin: CPU {dt} is not online (online: {})",
                online_list(&m.cpus)
            )
        })?;
    // Held while the VM is built, so its slot stays the one `vacant` names.
    let mut vms = m.vms.write();
    if vms.iter().any(|(_, vm)| vm.template == template) {
        return Err(format!("VM {name} exists already"));
    }
    let Some(handle) = vms.vacant() else {
        return Err(format!("VM {name}: no room for another VM ({MAX_VMS} at most)"));
    };
    let index = usize::from(handle.index());
    let ids = {
        let mut s = m.sched.lock();
        let mut ids = Vec::new();
        let mut added = placements
            .iter()
            .enumerate()
            .try_for_each(|(vcpu, &placement)| {
                let id = s
                    .add_vcpu(index, placement)
                    .map_err(|e| format!("VM {name}: vCPU {vcpu}: {e}"))?;
                ids.push(id);
                Ok::<(), String>(())
            });
        if added.is_ok() {
            added = s
                .check()
                .map_err(|e| format!("VM {name}: {e}: pin fewer CPUs, or start QEMU with more (--smp)"));
        }
        if let Err(e) = added {
            let _ = s.remove_vm(index);
            return Err(e);
        }
        ids
    };
    let built = {
        let mut memory = m.memory.lock();
        let mm = &mut *memory;
        let mut env = BuildEnv {
            id_regs: m.id_regs,
            allocator: &mut mm.allocator,
            owners: &mut mm.owners,
            payload: m.payload,
            pa_bits: m.pa_bits,
            timer: m.timer,
            pmu: m.pmu,
            vmids: &mut mm.vmids,
        };
        vm::build(handle, template, spec, ids.clone(), &mut env)
    };
    let vm = match built {
        Ok(vm) => Arc::new(vm),
        Err(e) => {
            let _ = m.sched.lock().remove_vm(index);
            return Err(e);
        }
    };
    if vms.insert(vm.clone()).is_err() {
        // `vacant` said there was room and the lock is held: cannot happen, but
        // give everything back rather than leak it.
        let _ = m.sched.lock().remove_vm(index);
        give_back_memory(m, &vm);
        return Err(format!("VM {name}: no room in the VM table"));
    }
    drop(vms);
    crate::console::attach_guest_output(index, name);
    println!(
        "VM {} : {} vCPUs, {} MiB at {:#x}, kernel at IPA {:#x}{}",
        vm.name,
        vm.vcpus(),
        vm.ram.size >> 20,
        vm.ram_pa(),
        vm.boot.kernel,
        vm.boot
            .initrd
            .map_or(String::new(), |r| format!(", initrd {} KiB", r.size >> 10))
    );
    m.running_vms.fetch_add(1, Ordering::AcqRel);
    vm.vcpus[0].boot.store(true, Ordering::Relaxed);
    let (start_kick, pinned_cpus) = {
        let mut s = m.sched.lock();
        for (v, &id) in ids.iter().enumerate() {
            s.map(id, Some((vm.clone(), v)));
        }
        let pinned: Vec<usize> = (0..m.cpus.len())
            .filter(|&cpu| s.dedicated(cpu).is_some_and(|d| ids.contains(&d)))
            .collect();
        (s.start(vm.vcpus[0].id), pinned)
    };
    // A CPU pinned now may be running a shared vCPU it must give back.
    for cpu in pinned_cpus.into_iter().chain(start_kick) {
        kick(cpu);
    }
    Ok(vm)
}

/// Take a stopped VM apart: out of the VM table and the scheduler, its memory (RAM,
/// stage-2 tables, VMID) given back. CPUs that idle with one of its vCPUs loaded let
/// go of it when they next load another (the `Arc`s they hold keep it alive till
/// then; none of them can run it: its vCPUs are gone from the scheduler).
pub fn destroy_vm(m: &'static Machine, vm: &Arc<Vm>) -> Result<(), String> {
    // Not while a CPU finishes its stop (it may be about to reload its memory).
    let _lifecycle = vm.lifecycle.lock();
    let mut vms = m.vms.write();
    if vms.get(vm.handle).is_none() {
        return Err(format!("VM {} does not exist any more", vm.name));
    }
    if matches!(vm.state(), VmState::Running | VmState::Resetting) {
        return Err(format!(
            "VM {} is {}; stop it first",
            vm.name,
            vm.state().as_str()
        ));
    }
    let kicks = {
        let mut s = m.sched.lock();
        let kicks = s
            .remove_vm(vm.index())
            .map_err(|_| format!("VM {} is still stopping; try again", vm.name))?;
        for v in vm.vcpus.iter() {
            s.map(v.id, None);
        }
        kicks
    };
    let _ = vms.remove(vm.handle);
    drop(vms);
    give_back_memory(m, vm);
    if m.focus.load(Ordering::Relaxed) == vm.index() {
        switch_focus(m);
    }
    for cpu in 0..m.cpus.len() {
        if kicks & (1 << cpu) != 0 {
            kick(cpu);
        }
    }
    Ok(())
}

/// A VM's memory back to the machine (its vCPUs run nowhere).
fn give_back_memory(m: &Machine, vm: &Vm) {
    if mmu::stage2_is(vm.vttbr.load(Ordering::Acquire)) {
        mmu::use_stage2(m.parked_vttbr);
    }
    // Lock order: the VM's memory, then the machine's.
    let Some(memory) = vm.memory.lock().take() else {
        return;
    };
    let mut machine_memory = m.memory.lock();
    let mm = &mut *machine_memory;
    if let Err(e) = mmu::destroy_vm_memory(
        memory,
        &mut mm.allocator,
        &mut mm.owners,
        &mut mm.vmids,
        &mut exit::ExitHw,
    ) {
        println!(
            "VM {}: part of its memory is still lent out and stays reserved: {e:?}",
            vm.name
        );
    }
}

/// WFE yields on a shared CPU; on a dedicated one there is nobody to yield to, so it
/// is not trapped at all. Set up with the CPU, and again when a vCPU is loaded (a CPU
/// becomes dedicated or shared as pinned VMs are created and destroyed).
pub fn trap_wfe(trap: bool) {
    let ctx = this_cpu();
    // Only this CPU writes its HCR_EL2.TWE (here): the last value written is the value.
    if ctx.wfe_trapped.load(Ordering::Relaxed) != u8::from(trap) {
        traps::set_hcr(&ctx.traps, trap);
        ctx.wfe_trapped.store(u8::from(trap), Ordering::Relaxed);
    }
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
    if m.focus.load(Ordering::Relaxed) == vm.index() {
        switch_focus(m);
    }
}

/// A stopped VM starts again (from the prompt): it counts as running.
/// Whether `vm` is still in the VM table (not destroyed).
pub fn exists(vm: &Vm) -> bool {
    machine()
        .vm_at(vm.index())
        .is_some_and(|v| core::ptr::eq(Arc::as_ptr(&v), vm))
}

pub fn vm_started(vm: &Vm) {
    if !vm.counted.swap(true, Ordering::AcqRel) {
        machine().running_vms.fetch_add(1, Ordering::AcqRel);
    }
}

/// Give console input to the next running VM after the focused one.
pub fn switch_focus(m: &Machine) {
    let from = m.focus.load(Ordering::Relaxed);
    let vms = m.all_vms();
    let next = vms
        .iter()
        .filter(|vm| vm.state() == VmState::Running)
        .min_by_key(|vm| (vm.index() <= from, vm.index()));
    if let Some(next) = next {
        m.focus.store(next.index(), Ordering::Relaxed);
        if vms.len() > 1 {
            println!(
                "console input goes to VM {} (Ctrl-] switches)",
                next.name
            );
        }
    }
}
