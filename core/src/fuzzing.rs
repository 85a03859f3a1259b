//! # Fuzz targets, shared by `cargo fuzz` and the corpus replay
//!
//! Every decoder of bytes Bothy did not write itself has one function here, which
//! takes the fuzzer's input and drives the decoder the way `hyp` does, checking that it
//! neither panics nor breaks an invariant that is cheap to state:
//!
//! | target | what it feeds | what it checks beyond "no panic" |
//! |---|---|---|
//! | [`fdt_platform`] | a firmware DTB: header, parser, every accessor, `Platform::discover`, then the free-memory list and frame allocator built from the platform | discovered values in range; free list sorted, disjoint, inside RAM, clear of reservations; allocations inside it and disjoint; releasing them all restores it |
//! | [`manifest`] | a boot image's payload: header, manifest FDT, every blob reference, the kernel's `Image` header and the guest layout | a decoded manifest satisfies its documented rules and re-encodes to itself; a boot plan lies inside the VM's RAM |
//! | [`exit_decode`] | a sequence of guest exits (raw syndromes, hypercalls, MMIO to the vGIC and PL011, trapped system registers, WFI/WFE) and interrupts, through the whole exit policy on `FakeArch` | the `NeedsAllRegisters` contract; wake-ups and vCPU starts name vCPUs that exist; no vINTID twice in a CPU's list registers |
//! | [`smccc_dispatch`] | SMCCC/PSCI calls with arbitrary `X0..X7` from any vCPU, power-state changes carried out as `hyp` does | the compile-time call index agrees with the declaration table; unknown IDs get NOT_SUPPORTED; a started vCPU existed and is `OnPending` |
//! | [`vgic_mmio`] | sequences of GICD/GICR reads and writes, SGIs, SPI levels, hardware injections, list-register flushes and the guest acknowledging interrupts | reads fit the access; read-after-write of CTLR, IPRIORITYR, ICFGR, IROUTER, WAKER returns what the write was allowed to set; kick masks name vCPUs that exist; LRs hold no vINTID twice |
//!
//! `fuzz/fuzz_targets/*.rs` are one-line calls of these (nightly `cargo fuzz`), and the
//! test at the bottom replays every file under `fuzz/corpus/<target>/` through the same
//! function on stable, so every input the fuzzer kept (and every crash fixed) stays a
//! regression test in `cargo test` where no fuzzing runs. See `docs/FUZZING.md`.
//!
//! ## Input shape
//! The sequence targets read their input as a little program: one byte picks an
//! operation, the next bytes its operands ([`Input`]; a short input reads as zeros, so
//! every byte string is a valid program). Operands that must name something that
//! exists (a vCPU, an access size) are reduced into range, because an out-of-range value
//! there tests the harness, not Bothy. Values the hardware or guest controls (syndromes,
//! register contents, offsets, MMIO data) are passed through whole. Where the hardware
//! constrains a value (VBAR_EL1's low bits are RES0, PCs are 4-aligned) the harness
//! applies that constraint, since Bothy may rely on it.
//!
//! Built for `cfg(test)` and with the `fuzzing` feature (which the `fuzz/` crate turns
//! on); never in `hyp`.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::abi::{self, psci, smccc, CallContext, Outcome, PowerState, CALLS};
use crate::arch::{ArchOp, El1Reg, FakeArch};
use crate::exit::handle::{self, Action, GuestFrame};
use crate::exit::{self, ec, inject, sysreg as trapped, Exit, SysRegEncoding};
use crate::fdt::manifest::{Manifest, MAX_PIN_CPU, MAX_SLICE_US, MAX_VCPUS, MEMORY_GRANULE};
use crate::fdt::platform::{Platform, PPI_COUNT};
use crate::fdt::{header_total_size, Fdt};
use crate::image::{PayloadHeader, PAYLOAD_HEADER_SIZE};
use crate::layout;
use crate::lifecycle::VmState;
use crate::linux::ImageHeader;
use crate::mem::{free_regions, RegionAllocator};
use crate::vgic::lr::FakeListRegs;
use crate::vgic::{VGic, VcpuMask};
use crate::vm::{ExitCounters, VmModel};
use crate::Region;

/// Operations one input may run: bounds the time of one run whatever its length.
const MAX_OPS: usize = 2048;

/// The fuzzer's bytes as a stream of operands; reads past the end give zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, `None` at the end: the next operation of a program, if any.
    pub fn op(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    pub fn u8(&mut self) -> u8 {
        self.op().unwrap_or(0)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// `n` bytes little-endian (n ≤ 8), zero-filled at the end of the input.
    fn le(&mut self, n: usize) -> u64 {
        (0..n).fold(0, |acc, i| acc | u64::from(self.u8()) << (8 * i))
    }

    pub fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }

    pub fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }

    pub fn u64(&mut self) -> u64 {
        self.le(8)
    }

    /// An index below `n` (n > 0).
    pub fn index(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }
}

// ---------------------------------------------------------------------------------
// fdt_platform

/// A firmware DTB, as `hyp`'s boot reads it: `totalsize` from the header, the parser
/// over that many bytes, platform discovery, then the free-memory list and allocator.
pub fn fdt_platform(data: &[u8]) {
    let blob = match header_total_size(data) {
        // `hyp` maps exactly `totalsize` bytes; a shorter input is parsed as it is, so
        // truncation is fuzzed too.
        Ok(size) => data.get(..size).unwrap_or(data),
        Err(e) => {
            let _ = e.to_string();
            data
        }
    };
    let fdt = match Fdt::new(blob) {
        Ok(fdt) => fdt,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    walk_tree(&fdt);
    match Platform::discover(&fdt) {
        Ok(platform) => check_platform(&platform),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Every read-side accessor of a parsed tree, as the platform code and the prompt use
/// them.
fn walk_tree(fdt: &Fdt) {
    let _ = fdt.memory_reservations().count();
    let _ = (fdt.stdout_path(), fdt.stdout_node(), fdt.alias("serial0"));
    for path in [
        "/",
        "/chosen",
        "/cpus/cpu@0",
        "/cpus/cpu",
        "serial0/x",
        "//a//b/",
    ] {
        let _ = fdt.find_node(path);
    }
    let mut phandles = Vec::new();
    for node in fdt.nodes() {
        let _ = (node.name(), node.base_name(), node.unit_address());
        let _ = (node.address_cells(), node.size_cells(), node.parent_cells());
        let _ = (node.is_enabled(), node.device_type());
        let _ = node.is_compatible("arm,gic-v3");
        let _ = node.reg().map(|r| r.map(|r| r.count()));
        let _ = node.reg_translated().map_err(|e| e.to_string());
        let _ = node.ancestors().map(|a| a.len());
        let _ = (node.child("cpu"), node.children().count());
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

/// What `Platform::discover` promises, and what boot builds from it next.
fn check_platform(p: &Platform) {
    assert!(!p.memory.is_empty() && p.memory.iter().all(|r| r.size != 0));
    assert!(!p.cpus.is_empty());
    assert!(!p.gic.redists.is_empty());
    let t = p.timer;
    assert!([t.secure_phys, t.phys, t.virt, t.hyp_phys]
        .iter()
        .all(|&n| n < PPI_COUNT));
    assert!(p.gic.maintenance_ppi.is_none_or(|n| n < PPI_COUNT));

    // Boot: RAM minus the reservations (and Bothy's image, the DTB) is what it may
    // hand out.
    let free = free_regions(&p.memory, &p.reserved);
    check_free_list(&free);
    let lowest = p.memory.iter().map(|r| r.base).min().unwrap_or(0);
    let highest = p.memory.iter().map(Region::end).max().unwrap_or(0);
    for f in &free {
        assert!(f.base >= lowest && f.end() <= highest, "{f:x?} outside RAM");
        assert!(
            !p.reserved.iter().any(|r| r.size != 0 && r.overlaps(f)),
            "{f:x?} overlaps a reservation"
        );
    }

    let mut allocator = RegionAllocator::new(&p.memory, &p.reserved);
    assert_eq!(allocator.free(), &free[..]);
    let _ = allocator.free_bytes();
    let mut taken: Vec<Region> = Vec::new();
    for (size, align) in [(0x1000, 0x1000), (0x20_0000, 0x20_0000), (0x3000, 0x1000)] {
        for _ in 0..4 {
            let Some(base) = allocator.alloc(size, align) else {
                break;
            };
            let r = Region::new(base, size);
            assert!(base.is_multiple_of(align));
            assert!(free.iter().any(|f| f.contains_range(base, size)));
            assert!(!taken.iter().any(|t| t.overlaps(&r)));
            taken.push(r);
        }
    }
    check_free_list(allocator.free());
    for r in taken.into_iter().rev() {
        allocator.release(r).expect("a range just allocated");
    }
    assert_eq!(
        allocator.free(),
        &free[..],
        "alloc + release changed the free list"
    );
}

/// The frame allocator's invariant: sorted, disjoint, not adjacent, none empty.
fn check_free_list(free: &[Region]) {
    for f in free {
        assert!(f.size != 0);
        assert!(f.base.checked_add(f.size).is_some(), "{f:x?} wraps");
    }
    for w in free.windows(2) {
        assert!(w[0].end() < w[1].base, "{:x?} not sorted and apart", w);
    }
}

// ---------------------------------------------------------------------------------
// manifest

/// A boot image's payload, as `hyp` reads it: the header, the manifest at the offset
/// it gives, every blob the manifest names, and each VM's kernel header and layout.
/// The input is also decoded as a bare manifest, so the fuzzer reaches the manifest
/// decoder without having to build a header around it.
pub fn manifest(data: &[u8]) {
    match PayloadHeader::decode(data) {
        Ok(header) => {
            let end = header.manifest_offset + header.manifest_size;
            assert!(header.manifest_size != 0);
            assert!(header.manifest_offset >= PAYLOAD_HEADER_SIZE as u64);
            assert!(end <= header.total_size);
            assert_eq!(PayloadHeader::decode(&header.encode()), Ok(header));
            if let Some(bytes) = slice(data, header.manifest_offset, header.manifest_size) {
                decode_manifest(bytes, Some((&header, data)));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    decode_manifest(data, None);
}

fn slice(data: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    data.get(start..end)
}

fn decode_manifest(bytes: &[u8], payload: Option<(&PayloadHeader, &[u8])>) {
    let m = match Manifest::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.to_string().starts_with("manifest: "));
            return;
        }
    };
    // What `decode` documents it checked.
    assert!(!m.vms.is_empty());
    assert!((1..=MAX_SLICE_US).contains(&m.slice_us));
    for (i, vm) in m.vms.iter().enumerate() {
        assert!(!vm.name.trim().is_empty());
        assert!(m.vms[..i].iter().all(|o| o.name != vm.name));
        assert!((1..=MAX_VCPUS).contains(&vm.cpus));
        assert!(vm.memory != 0 && vm.memory.is_multiple_of(MEMORY_GRANULE));
        for blob in [Some(vm.kernel), vm.initrd].into_iter().flatten() {
            assert!(blob.size != 0 && blob.offset.checked_add(blob.size).is_some());
        }
        assert!(vm.pin.is_empty() || vm.pin.len() == vm.cpus as usize);
        assert!(vm.pin.iter().all(|&c| c < MAX_PIN_CPU));
        let others = m.vms[..i].iter().flat_map(|o| &o.pin);
        assert!(others.clone().all(|c| !vm.pin.contains(c)));
    }
    // The CLI writes with `encode` what `hyp` reads with `decode`.
    assert_eq!(Manifest::decode(&m.encode()).as_ref(), Ok(&m));

    let Some((header, data)) = payload else {
        return;
    };
    for vm in &m.vms {
        let refs_ok = [Some(vm.kernel), vm.initrd]
            .into_iter()
            .flatten()
            .all(|blob| match header.check_ref(blob.offset, blob.size) {
                Ok(()) => true,
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            });
        // `hyp` builds a VM only from a manifest whose blobs all lie in the payload.
        if !refs_ok {
            return;
        }
        let Some(kernel) = slice(data, vm.kernel.offset, vm.kernel.size) else {
            continue;
        };
        let image = match ImageHeader::parse(kernel) {
            Ok(image) => image,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let ram = Region::new(layout::RAM_BASE, vm.memory);
        match layout::plan_boot(ram, &image, vm.initrd.map(|r| r.size)) {
            Ok(plan) => {
                assert!(plan.kernel >= ram.base && plan.kernel < ram.end());
                assert!(ram.contains_range(plan.dtb, layout::DTB_MAX));
                if let Some(initrd) = plan.initrd {
                    assert!(ram.contains_range(initrd.base, initrd.size));
                    assert!(initrd.end() <= plan.dtb);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// exit_decode

/// ESR_EL2 fields the harness builds syndromes from (Arm ARM D17.2.37).
const ESR_EC_SHIFT: u32 = 26;
const ESR_IL: u64 = 1 << 25;
const DABT_ISV: u64 = 1 << 24;
const DABT_SAS_SHIFT: u32 = 22;
const DABT_SSE: u64 = 1 << 21;
const DABT_SRT_SHIFT: u32 = 16;
const DABT_SF: u64 = 1 << 15;
const DABT_WNR: u64 = 1 << 6;
/// VBAR_EL1 bits [10:0] are RES0.
const VBAR_RES0: u64 = 0x7ff;
/// The virtual timer's PPI, as `hyp` injects it on QEMU's `virt`.
const VTIMER_INTID: u32 = 27;

fn esr(class: u32, iss: u64) -> u64 {
    (u64::from(class) << ESR_EC_SHIFT) | ESR_IL | iss
}

/// One vCPU on its own physical CPU: the registers an exit leaves and the CPU's
/// hardware as `FakeArch`.
struct Cpu {
    frame: GuestFrame,
    hw: FakeArch,
    exits: ExitCounters,
}

impl Cpu {
    fn new(lrs: usize) -> Self {
        let mut hw = FakeArch::new();
        hw.lrs = FakeListRegs::new(lrs);
        Cpu {
            frame: GuestFrame {
                elr: layout::RAM_BASE,
                spsr: inject::SPSR_EL1H_MASKED,
                ..GuestFrame::default()
            },
            hw,
            exits: ExitCounters::default(),
        }
    }

    /// What `hyp`'s `reset_vcpu_state` does when a vCPU (re)starts: fresh registers,
    /// empty list registers.
    fn reset(&mut self, entry: u64, x0: u64) {
        let lrs = self.hw.lrs.lr.len();
        *self = Cpu::new(lrs);
        self.frame.x[0] = x0;
        self.frame.elr = entry & !3;
    }
}

/// A VM of 1–4 vCPUs on Bothy's standard board, driven by a program of guest exits
/// and interrupts through `exit::handle` exactly as `hyp`'s exit paths call it.
pub fn exit_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let vcpus = 1 + input.index(4);
    let lrs = 1 + input.index(16);
    let vm =
        VmModel::new(vcpus, Region::new(layout::RAM_BASE, 64 << 20)).expect("the standard board");
    let mut cpus: Vec<Cpu> = (0..vcpus).map(|_| Cpu::new(lrs)).collect();
    for _ in 0..MAX_OPS {
        let Some(op) = input.op() else { break };
        let v = input.index(vcpus);
        let cpu = &mut cpus[v];
        match op % 13 {
            // A raw syndrome: whatever the hardware may report.
            0 => {
                let esr = input.u64();
                cpu.hw.far_el2 = input.u64();
                cpu.hw.hpfar_el2 = input.u64();
                guest_exit(&vm, v, cpu, esr);
            }
            // HVC #0 with X0..X3: an SMCCC call (X0 often a declared ID).
            1 => {
                cpu.frame.x[0] = function_id(&mut input);
                for x in 1..4 {
                    cpu.frame.x[x] = input.u64();
                }
                guest_exit(&vm, v, cpu, esr(ec::HVC64, 0));
            }
            // A load or store with a valid syndrome into a device window (or near one).
            2 => {
                let ipa = mmio_target(&mut input, vcpus);
                let (size_log2, reg) = (input.u8() & 3, input.u8() & 0x1f);
                let flags = input.u8();
                let write = flags & 1 != 0;
                let mut iss = DABT_ISV
                    | u64::from(size_log2) << DABT_SAS_SHIFT
                    | u64::from(reg) << DABT_SRT_SHIFT;
                iss |= if write { DABT_WNR } else { 0 };
                iss |= if flags & 2 != 0 { DABT_SSE } else { 0 };
                iss |= if flags & 4 != 0 { DABT_SF } else { 0 };
                if write && reg != 31 {
                    cpu.frame.x[usize::from(reg)] = input.u64();
                }
                cpu.hw.far_el2 = input.u64() & !0xfff | ipa & 0xfff;
                cpu.hw.hpfar_el2 = (ipa >> 12) << 4;
                guest_exit(&vm, v, cpu, esr(ec::DABT_LOWER, iss));
            }
            // MSR/MRS of a trapped (or any) system register.
            3 => {
                let enc: SysRegEncoding = match input.u8() % 7 {
                    0 => trapped::ICC_SGI1R_EL1,
                    1 => trapped::ICC_ASGI1R_EL1,
                    2 => trapped::ICC_SGI0R_EL1,
                    3 => trapped::CNTP_TVAL_EL0,
                    4 => trapped::CNTP_CTL_EL0,
                    5 => trapped::CNTP_CVAL_EL0,
                    _ => (
                        input.u8() & 3,
                        input.u8() & 7,
                        input.u8() & 15,
                        input.u8() & 15,
                        input.u8() & 7,
                    ),
                };
                let (reg, read) = (input.u8() & 0x1f, input.bool());
                if reg != 31 {
                    cpu.frame.x[usize::from(reg)] = input.u64();
                }
                let (op0, op1, crn, crm, op2) = enc;
                let iss = u64::from(op0) << 20
                    | u64::from(op2) << 17
                    | u64::from(op1) << 14
                    | u64::from(crn) << 10
                    | u64::from(reg) << 5
                    | u64::from(crm) << 1
                    | u64::from(read);
                guest_exit(&vm, v, cpu, esr(ec::SYSREG, iss));
            }
            // WFI / WFE, with or without a virtual timer deadline.
            4 => {
                let wfe = input.bool();
                cpu.hw.vtimer_deadline = input.bool().then(|| input.u64());
                guest_exit(&vm, v, cpu, esr(ec::WFX, u64::from(wfe)));
            }
            5 => {
                let r = input.index(31);
                cpu.frame.x[r] = input.u64();
            }
            6 => {
                cpu.frame.elr = input.u64() & !3;
                cpu.frame.spsr = input.u64();
            }
            7 => {
                let reg = [
                    El1Reg::Esr,
                    El1Reg::Far,
                    El1Reg::Elr,
                    El1Reg::Spsr,
                    El1Reg::Sctlr,
                    El1Reg::Vbar,
                ][input.index(6)];
                let mut value = input.u64();
                if reg == El1Reg::Vbar {
                    value &= !VBAR_RES0;
                }
                cpu.hw.el1[reg as usize] = value;
            }
            // The guest takes and completes interrupts from its list registers (no exit).
            8 => guest_handles_interrupts(&mut cpu.hw.lrs, input.u8()),
            // The virtual timer fires while the vCPU runs: `hyp`'s IRQ exit.
            9 => {
                if running(&vm, v) {
                    let done =
                        vm.vgic
                            .inject_hw_local(v, VTIMER_INTID, VTIMER_INTID, &mut cpu.hw.lrs);
                    check_kicks(done.kicks, vcpus);
                    let action = handle::finish(&vm, v, done.flushed, &mut cpu.hw);
                    after_exit(&vm, v, cpu, action);
                }
            }
            // Console input: the PL011's line may rise.
            10 => check_kicks(vm.console_input(input.u8()), vcpus),
            // A kick (another CPU raised work for this vCPU): an IRQ exit.
            11 => {
                if running(&vm, v) {
                    let action = handle::finish(&vm, v, false, &mut cpu.hw);
                    after_exit(&vm, v, cpu, action);
                }
            }
            // The scheduler: start vCPUs CPU_ON asked for, and restart a stopped VM.
            _ => schedule(&vm, &mut cpus),
        }
    }
}

/// A function ID for X0: mostly one Bothy declares (SMC32 and SMC64 forms), else any.
fn function_id(input: &mut Input) -> u64 {
    let pick = input.u8();
    match CALLS.get(usize::from(pick) % (CALLS.len() + 4)) {
        Some(call) if pick & 0x80 == 0 => u64::from(call.id),
        // The upper half of X0 is ignored by SMCCC; keep it in play.
        Some(call) => u64::from(call.id) | input.u64() << 32,
        None => input.u64(),
    }
}

/// An IPA in or around one of the board's device windows.
fn mmio_target(input: &mut Input, vcpus: usize) -> u64 {
    let windows = [
        layout::GIC_DIST,
        layout::gic_redist(vcpus),
        layout::UART,
        Region::new(layout::RAM_BASE, 0x1000),
    ];
    let window = windows[input.index(windows.len())];
    match input.u8() % 4 {
        // Just outside either end: straddling accesses must abort.
        0 => window.end().wrapping_sub(u64::from(input.u8())),
        1 => window.base.wrapping_sub(u64::from(input.u8())),
        _ => window.base + u64::from(input.u32()) % window.size,
    }
}

/// A vCPU is running (so it can exit) if its VM runs and PSCI has it On.
fn running(vm: &VmModel, vcpu: usize) -> bool {
    vm.state() == VmState::Running && vm.power.state(vcpu) == PowerState::On
}

/// A synchronous exit of vCPU `v` with syndrome `esr`, as `hyp` handles it: the fast
/// path first, then again with every register saved if it asks for that.
fn guest_exit(vm: &VmModel, v: usize, cpu: &mut Cpu, esr: u64) {
    if !running(vm, v) {
        return;
    }
    if let Exit::Mmio(access) = exit::decode(esr, cpu.hw.far_el2, cpu.hw.hpfar_el2) {
        assert!(matches!(access.size, 1 | 2 | 4 | 8) && access.reg <= 31);
    }
    let before = (cpu.frame, cpu.exits.snapshot(), cpu.hw.clone());
    // As the vector picks: by the state the guest trapped from.
    let a32 = exit::aarch32::is_aarch32(cpu.frame.spsr);
    let exit = |all_saved: bool, cpu: &mut Cpu| match (all_saved, a32) {
        (false, false) => {
            handle::sync_exit::<false, false>(vm, v, &cpu.exits, &mut cpu.frame, esr, &mut cpu.hw)
        }
        (false, true) => {
            handle::sync_exit::<false, true>(vm, v, &cpu.exits, &mut cpu.frame, esr, &mut cpu.hw)
        }
        (true, false) => {
            handle::sync_exit::<true, false>(vm, v, &cpu.exits, &mut cpu.frame, esr, &mut cpu.hw)
        }
        (true, true) => {
            handle::sync_exit::<true, true>(vm, v, &cpu.exits, &mut cpu.frame, esr, &mut cpu.hw)
        }
    };
    let mut action = exit(false, cpu);
    if action == Action::NeedsAllRegisters {
        // "Nothing was done or counted."
        assert_eq!(
            (cpu.frame, cpu.exits.snapshot(), &cpu.hw),
            (before.0, before.1, &before.2)
        );
        action = exit(true, cpu);
        assert_ne!(action, Action::NeedsAllRegisters);
    }
    after_exit(vm, v, cpu, action);
}

/// Checks what an exit asked for and carries out the part `hyp` does at once.
fn after_exit(vm: &VmModel, v: usize, cpu: &mut Cpu, action: Action) {
    let vcpus = vm.nr_vcpus();
    for op in core::mem::take(&mut cpu.hw.log) {
        match op {
            ArchOp::Wake(mask) => check_kicks(mask, vcpus),
            ArchOp::Fault(fault) => {
                let _ = fault.kind();
            }
            ArchOp::TlbiVmid(_)
            | ArchOp::TlbiIpa(..)
            | ArchOp::HwLine { .. }
            | ArchOp::LookAt(_)
            | ArchOp::ClaimDebug
            | ArchOp::ClaimPmu
            | ArchOp::ClaimPauth
            | ArchOp::ClaimSve => {}
        }
    }
    cpu.hw.console.clear();
    check_lrs(&cpu.hw.lrs);
    match action {
        Action::StartVcpu(target) => {
            assert!(target < vcpus);
            // On from the moment CPU_ON succeeded (one SUCCESS, then ALREADY_ON).
            assert_eq!(vm.power.state(target), PowerState::On);
            // `hyp` has the scheduler start it, then finishes this exit.
            let _ = handle::finish(vm, v, false, &mut cpu.hw);
        }
        // Once off its CPU.
        Action::PowerOff => vm.power.power_off(v),
        Action::VmLeft(state) => assert_eq!(vm.state(), state),
        Action::NeedsAllRegisters => unreachable!("handled by guest_exit"),
        Action::Resume | Action::Block(_) | Action::Yield | Action::Stop => {}
    }
}

/// What the scheduler and `finish_reset` do: a vCPU with a pending CPU_ON starts at its
/// entry point; a VM that left `Running` is reset with vCPU 0 at the kernel entry.
fn schedule(vm: &VmModel, cpus: &mut [Cpu]) {
    if vm.state() != VmState::Running {
        vm.power.reset();
        vm.vgic.reset();
        cpus[0].reset(layout::RAM_BASE, 0);
        vm.vgic.reset_vcpu(0);
        vm.set_state(VmState::Running);
        return;
    }
    for (v, cpu) in cpus.iter_mut().enumerate() {
        if let Some((entry, context)) = vm.power.take_pending_start(v) {
            cpu.reset(entry, context);
            vm.vgic.reset_vcpu(v);
        }
    }
}

fn check_kicks(mask: VcpuMask, vcpus: usize) {
    assert_eq!(
        mask.0 & !VcpuMask::first(vcpus).0,
        0,
        "kicks {mask:?} of {vcpus} vCPUs"
    );
}

/// The GIC architecture leaves two LRs with one vINTID UNPREDICTABLE.
fn check_lrs(lrs: &FakeListRegs) {
    let mut seen = lrs.valid();
    seen.sort_unstable();
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "vINTID twice in {lrs:x?}"
    );
}

/// The guest acknowledges, completes, or both, per bits of `how`.
fn guest_handles_interrupts(lrs: &mut FakeListRegs, how: u8) {
    match how % 4 {
        0 => {
            let _ = lrs.ack_eoi();
        }
        1 => {
            let _ = lrs.ack();
        }
        2 => {
            let active: Vec<u32> = lrs.valid();
            if let Some(&intid) = active.get(usize::from(how >> 2) % active.len().max(1)) {
                lrs.eoi(intid);
            }
        }
        _ => while lrs.ack_eoi().is_some() {},
    }
}

// ---------------------------------------------------------------------------------
// smccc_dispatch

/// SMCCC/PSCI calls with arbitrary `X0..X7` from any vCPU of a VM of 1–8 vCPUs, the
/// outcomes carried out on the power states as `hyp` does.
pub fn smccc_dispatch(data: &[u8]) {
    let mut input = Input::new(data);
    let vcpus = 1 + input.index(8);
    let vm =
        VmModel::new(vcpus, Region::new(layout::RAM_BASE, 64 << 20)).expect("the standard board");
    for _ in 0..MAX_OPS {
        let Some(op) = input.op() else { break };
        let vcpu = input.index(vcpus);
        if op & 0xc0 == 0xc0 {
            // The scheduler starts whatever CPU_ON asked for.
            for v in 0..vcpus {
                let _ = vm.power.take_pending_start(v);
            }
            continue;
        }
        let mut regs = [0u64; 8];
        regs[0] = function_id(&mut input);
        for r in &mut regs[1..] {
            // Mostly small values (vCPU indexes, MPIDRs, IDs), sometimes anything.
            *r = match input.u8() {
                b @ 0..=0x7f => u64::from(b & 0xf),
                0x80..=0xbf => function_id(&mut input),
                _ => input.u64(),
            };
        }
        let id = smccc::FunctionId::from_x0(regs[0]).0;
        // The compile-time index finds exactly what the declaration table says.
        let declared = CALLS.iter().find(|c| c.id == id);
        assert_eq!(abi::lookup(id).map(|c| c.id), declared.map(|c| c.id));

        let outcome = abi::dispatch(&CallContext { vm: &vm, vcpu }, &regs);
        match outcome {
            Outcome::Return(x0) if declared.is_none() => {
                assert_eq!(x0, smccc::ret_code(smccc::NOT_SUPPORTED));
            }
            Outcome::Return(x0) if id == psci::PSCI_VERSION => {
                assert_eq!(x0, u64::from(psci::VERSION_1_1));
            }
            Outcome::Return(_) => {}
            Outcome::StartVcpu { target } => {
                assert!(target < vcpus);
                // On from the moment CPU_ON succeeded (one SUCCESS, then ALREADY_ON).
                assert_eq!(vm.power.state(target), PowerState::On);
            }
            Outcome::StopVcpu => vm.power.power_off(vcpu),
            Outcome::Suspend => {}
            Outcome::SystemOff | Outcome::SystemReset => vm.power.reset(),
        }
    }
}

// ---------------------------------------------------------------------------------
// vgic_mmio

/// Register offsets the read-after-write checks know (GICv3 §12.9–12.11).
const GICD_CTLR: u64 = 0x0;
const IPRIORITYR: u64 = 0x400;
const ICFGR: u64 = 0xc00;
const GICD_IROUTER: u64 = 0x6000;
const GICR_WAKER: u64 = 0x14;
const SGI_FRAME: u64 = 0x1_0000;

/// One vGIC of 1–8 vCPUs and 0–988 SPIs, each vCPU on its own CPU with 1–16 list
/// registers, driven through its public calls in any order `hyp` may make them.
pub fn vgic_mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let vcpus = 1 + input.index(8);
    let nr_spis = u32::from(input.u16() % 1024);
    let nr_lrs = 1 + input.index(16);
    let gic = VGic::new(vcpus, nr_spis);
    let spis = gic.nr_spis();
    let mut lrs: Vec<FakeListRegs> = (0..vcpus).map(|_| FakeListRegs::new(nr_lrs)).collect();
    let kicks = |mask: VcpuMask| check_kicks(mask, vcpus);
    for _ in 0..MAX_OPS {
        let Some(op) = input.op() else { break };
        let v = input.index(vcpus);
        match op % 12 {
            0 => {
                let (offset, size) = (dist_offset(&mut input), access_size(&mut input));
                check_read(
                    gic.dist_read(v, offset, size),
                    offset,
                    size,
                    VGic::DIST_SIZE,
                );
            }
            1 => {
                let (offset, size, value) = (
                    dist_offset(&mut input),
                    access_size(&mut input),
                    input.u64(),
                );
                kicks(gic.dist_write(v, offset, size, value));
                check_dist_write(&gic, v, offset, size, value, spis);
            }
            2 => {
                let (offset, size) = (redist_offset(&mut input, vcpus), access_size(&mut input));
                check_read(
                    gic.redist_read(v, offset, size),
                    offset,
                    size,
                    gic.redist_size(),
                );
            }
            3 => {
                let (offset, size, value) = (
                    redist_offset(&mut input, vcpus),
                    access_size(&mut input),
                    input.u64(),
                );
                kicks(gic.redist_write(v, offset, size, value));
                check_redist_write(&gic, v, offset, size, value);
            }
            // ICC_SGI1R_EL1 written by vCPU v (the general path, or the exit path's).
            4 => {
                let value = input.u64();
                if input.bool() {
                    kicks(gic.send_sgi(v, value));
                } else {
                    kicks(gic.send_sgi_local(v, value, &mut lrs[v]).kicks);
                }
            }
            5 => {
                let intid = u32::from(input.u16() % 1100);
                kicks(gic.set_spi_level(intid, input.bool()));
            }
            6 => {
                let (intid, phys) = (u32::from(input.u16() % 1100), u32::from(input.u16()));
                if input.bool() {
                    kicks(gic.inject_hw(v, intid, phys));
                } else {
                    kicks(gic.inject_hw_local(v, intid, phys, &mut lrs[v]).kicks);
                }
            }
            7 => gic.flush(v, &mut lrs[v]),
            8 => {
                gic.sync(v, &mut lrs[v]);
                let _ = (gic.has_pending(v), gic.needs_flush(v));
            }
            9 => guest_handles_interrupts(&mut lrs[v], input.u8()),
            // A vCPU (re)started: `hyp` zeroes its LRs and resets its redistributor.
            10 => {
                lrs[v] = FakeListRegs::new(nr_lrs);
                gic.reset_vcpu(v);
            }
            // VM reset: every vCPU starts again with empty LRs.
            _ => {
                lrs.iter_mut().for_each(|l| *l = FakeListRegs::new(nr_lrs));
                gic.reset();
            }
        }
        check_lrs(&lrs[v]);
    }
}

/// 1, 2, 4 or 8 bytes mostly; sometimes a size no instruction makes.
fn access_size(input: &mut Input) -> u8 {
    match input.u8() {
        b @ 0..=0xef => 1 << (b & 3),
        b => b & 0xf,
    }
}

/// Mostly inside the 64 KiB GICD window, sometimes beyond.
fn dist_offset(input: &mut Input) -> u64 {
    let offset = u64::from(input.u16());
    if input.u8() == 0xff {
        offset | input.u64() << 16
    } else {
        offset
    }
}

/// Mostly inside the vCPUs' redistributors, sometimes beyond.
fn redist_offset(input: &mut Input, vcpus: usize) -> u64 {
    let frame = input.index(vcpus + 1) as u64 * VGic::REDIST_STRIDE;
    let offset = u64::from(input.u16()) | u64::from(input.bool()) << 16;
    if input.u8() == 0xff {
        input.u64()
    } else {
        frame + offset
    }
}

/// A read returns only bits of the access, and nothing for an access the GIC does not
/// define (misaligned, odd size, outside the window).
fn check_read(value: u64, offset: u64, size: u8, window: u64) {
    let valid = matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size));
    if !valid || offset >= window {
        assert_eq!(value, 0, "read of {size} bytes at {offset:#x}");
    } else if size < 8 {
        assert_eq!(
            value >> (8 * u32::from(size)),
            0,
            "read of {size} bytes at {offset:#x}"
        );
    }
}

/// After a GICD write the registers that simply store a value read it back, as far as
/// the write was allowed to set it.
fn check_dist_write(gic: &VGic, v: usize, offset: u64, size: u8, value: u64, spis: u32) {
    let last_spi = 32 + spis;
    match (offset, size) {
        (GICD_CTLR, 4) => {
            // EnableGrp0 and EnableGrp1; ARE and DS read as one whatever was written.
            assert_eq!(gic.dist_read(v, offset, 4) & 0b11, value & 0b11);
        }
        (IPRIORITYR..ICFGR, 1 | 2 | 4 | 8) if offset.is_multiple_of(u64::from(size)) => {
            let read = gic.dist_read(v, offset, size);
            for byte in 0..u64::from(size) {
                let intid = offset - IPRIORITYR + byte;
                let shift = 8 * byte;
                if (32..u64::from(last_spi)).contains(&intid) {
                    assert_eq!(
                        read >> shift & 0xff,
                        value >> shift & 0xff,
                        "IPRIORITYR{intid}"
                    );
                }
            }
        }
        (ICFGR..0xd00, 4) if offset.is_multiple_of(4) => {
            let first = (offset - ICFGR) / 4 * 16;
            // Only whole words of SPIs that exist: bit 2n+1 is the trigger, 2n RES0.
            if first >= 32 && first + 16 <= u64::from(last_spi) {
                let read = gic.dist_read(v, offset, 4);
                assert_eq!(read, value & 0xaaaa_aaaa, "ICFGR at {offset:#x}");
            }
        }
        (GICD_IROUTER..0x7fe0, 8) if offset.is_multiple_of(8) => {
            let intid = (offset - GICD_IROUTER) / 8;
            if (32..u64::from(last_spi)).contains(&intid) {
                let read = gic.dist_read(v, offset, 8);
                assert_eq!(read & !value, 0, "IROUTER{intid} set bits not written");
                // What it kept, it keeps when written again.
                gic.dist_write(v, offset, 8, read);
                assert_eq!(gic.dist_read(v, offset, 8), read);
            }
        }
        _ => {}
    }
}

/// GICR: WAKER.ProcessorSleep, and the SGI frame's IPRIORITYR and ICFGR1.
fn check_redist_write(gic: &VGic, v: usize, offset: u64, size: u8, value: u64) {
    if offset >= gic.redist_size() {
        return;
    }
    let frame_offset = offset % VGic::REDIST_STRIDE;
    match (frame_offset, size) {
        (GICR_WAKER, 4) => {
            const PROCESSOR_SLEEP: u64 = 1 << 1;
            let read = gic.redist_read(v, offset, 4);
            assert_eq!(read & PROCESSOR_SLEEP, value & PROCESSOR_SLEEP);
        }
        (o, 1 | 2 | 4 | 8)
            if (SGI_FRAME + IPRIORITYR..SGI_FRAME + IPRIORITYR + 32).contains(&o)
                && o.is_multiple_of(u64::from(size)) =>
        {
            let read = gic.redist_read(v, offset, size);
            let mask = if size == 8 {
                u64::MAX
            } else {
                (1 << (8 * size)) - 1
            };
            assert_eq!(read, value & mask, "GICR IPRIORITYR at {offset:#x}");
        }
        (o, 4) if o == SGI_FRAME + ICFGR + 4 => {
            // ICFGR1: the PPIs' triggers.
            let read = gic.redist_read(v, offset, 4);
            assert_eq!(read, value & 0xaaaa_aaaa, "GICR_ICFGR1");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------

/// A target's body: panics on a bug, returns otherwise.
pub type Target = fn(&[u8]);

/// Every target by its directory name under `fuzz/corpus/`.
pub const TARGETS: [(&str, Target); 5] = [
    ("fdt_platform", fdt_platform),
    ("manifest", manifest),
    ("exit_decode", exit_decode),
    ("smccc_dispatch", smccc_dispatch),
    ("vgic_mmio", vgic_mmio),
];

/// The corpus replay: every input the fuzzer kept, and every crash found, run through
/// the same function on stable. Crash inputs live in `fuzz/regressions/<target>/`,
/// apart from the corpus, so `cargo fuzz cmin` can never drop one.
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        files
    }

    fn replay(target: Target, path: &Path) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let run = std::panic::catch_unwind(|| target(&data));
        assert!(
            run.is_ok(),
            "{} fails (see the panic above)",
            path.display()
        );
    }

    #[test]
    fn every_corpus_input_passes() {
        for (name, target) in TARGETS {
            let dir = fuzz_dir().join("corpus").join(name);
            let inputs = files(&dir);
            assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
            for path in &inputs {
                replay(target, path);
            }
        }
    }

    #[test]
    fn every_past_crash_passes() {
        for (name, target) in TARGETS {
            let dir = fuzz_dir().join("regressions").join(name);
            if dir.exists() {
                for path in &files(&dir) {
                    replay(target, path);
                }
            }
        }
    }

    #[test]
    fn every_target_has_a_fuzz_target_file() {
        for (name, _) in TARGETS {
            let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            let source = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                source.contains(&format!("fuzzing::{name}(")),
                "{} does not call fuzzing::{name}",
                path.display()
            );
        }
    }

    #[test]
    fn input_reads_zeros_past_the_end() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0201);
        assert_eq!(input.u32(), 3);
        assert_eq!(input.op(), None);
        assert_eq!(input.u64(), 0);
    }

    #[test]
    fn empty_and_tiny_inputs_pass_every_target() {
        for (_, target) in TARGETS {
            for data in [&[][..], &[0], &[0xff; 7], &[0x5a; 64]] {
                target(data);
            }
        }
    }

    // Seeds: what `write_seeds` puts in the corpus, kept as code so they can be made
    // again (and so a change to an input format shows here first).

    mod seeds {
        use super::super::*;
        use crate::fdt::guest::{build_guest_dtb, GuestDtbConfig};
        use crate::fdt::manifest::{EarlyConsole, OnExit, PayloadRef, VmSpec};
        use crate::fdt::platform::{Pmu, TimerIrqs};
        use crate::fdt::test_trees::{self, full_platform, QEMU_VIRT_GICV3_SMP2};
        use crate::image::PAYLOAD_ALIGN;

        /// QEMU's DTB without its free space.
        fn qemu_blob() -> Vec<u8> {
            let fdt = Fdt::new(QEMU_VIRT_GICV3_SMP2).unwrap();
            let used = (0..fdt.total_size())
                .rev()
                .find(|&i| QEMU_VIRT_GICV3_SMP2.get(i).is_some_and(|&b| b != 0))
                .map_or(0, |i| i + 2);
            let mut blob = QEMU_VIRT_GICV3_SMP2[..used].to_vec();
            blob[4..8].copy_from_slice(&(used as u32).to_be_bytes());
            assert!(Fdt::new(&blob).is_ok());
            blob
        }

        pub fn fdt_platform() -> super::Seeds {
            let guest = build_guest_dtb(&GuestDtbConfig {
                vcpus: 2,
                ram: Region::new(0x4000_0000, 0x1000_0000),
                gic_dist: layout::GIC_DIST,
                gic_redist: layout::gic_redist(2),
                uart: layout::UART,
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
            });
            let reserved = full_platform(|w| {
                w.begin_node("reserved-memory");
                w.property_u32("#address-cells", 2);
                w.property_u32("#size-cells", 2);
                w.property_empty("ranges");
                w.begin_node("tfa@40000000");
                w.property_reg64(&[Region::new(0x4000_0000, 0x20_0000)]);
                w.end_node();
                w.end_node();
                test_trees::memory(w, 0x1_0000_0000, 0x4000_0000);
            });
            let gic_v2 = test_trees::tree(|w| {
                test_trees::memory(w, 0x4000_0000, 0x4000_0000);
                test_trees::gic_v2(w);
                test_trees::timer(w);
                test_trees::cpus(w, 1);
                test_trees::psci(w, "hvc");
            });
            alloc::vec![
                ("qemu-virt-gicv3-smp2", qemu_blob()),
                ("full-platform", full_platform(|_| {})),
                ("reserved-and-two-banks", reserved),
                ("gic-v2", gic_v2),
                ("guest-dtb", guest),
            ]
        }

        fn vm(name: &str, kernel: u64, initrd: Option<u64>) -> VmSpec {
            VmSpec {
                name: name.into(),
                cpus: 2,
                memory: 64 << 20,
                kernel: PayloadRef {
                    offset: kernel,
                    size: 64,
                },
                initrd: initrd.map(|offset| PayloadRef { offset, size: 16 }),
                bootargs: "console=ttyAMA0".into(),
                pin: Vec::new(),
                on_exit: OnExit::Restart,
            }
        }

        pub fn manifest() -> super::Seeds {
            // Header, manifest, then one page per blob, as `bothy image` lays it out.
            let mut pinned = vm("b", 2 * PAYLOAD_ALIGN, None);
            pinned.pin = alloc::vec![2, 3];
            pinned.on_exit = OnExit::Poweroff;
            let m = Manifest {
                vms: alloc::vec![vm("a", PAYLOAD_ALIGN, Some(3 * PAYLOAD_ALIGN)), pinned],
                early_console: Some(EarlyConsole {
                    pl011_base: layout::UART.base,
                }),
                slice_us: 5000,
                debug_overflow_stack: false,
            };
            let encoded = m.encode();
            let kernel = crate::linux::test_image(0x8_0000, 32 << 20, 64);
            let total = 3 * PAYLOAD_ALIGN + 16;
            let mut payload = alloc::vec![0u8; total as usize];
            let header = PayloadHeader::new(64, encoded.len() as u64, total);
            payload[..PAYLOAD_HEADER_SIZE].copy_from_slice(&header.encode());
            payload[64..64 + encoded.len()].copy_from_slice(&encoded);
            for at in [PAYLOAD_ALIGN, 2 * PAYLOAD_ALIGN] {
                let at = at as usize;
                payload[at..at + kernel.len()].copy_from_slice(&kernel);
            }
            let bare = Manifest {
                vms: alloc::vec![vm("solo", PAYLOAD_ALIGN, None)],
                ..Manifest::default()
            }
            .encode();
            alloc::vec![("payload-two-vms", payload), ("bare-manifest", bare)]
        }

        /// Programs in the op encoding of `exit_decode`.
        pub fn exit_decode() -> super::Seeds {
            let mut p = Program::new(&[1, 3]); // two vCPUs, four LRs
                                               // HVC PSCI_VERSION, then CPU_ON(vCPU 1) and the scheduler starting it.
            p.op(1, 0).bytes(&[2]).u64(0).u64(0).u64(0);
            p.op(1, 0).bytes(&[7]).u64(1).u64(layout::RAM_BASE).u64(0);
            p.op(12, 0);
            // GICD_CTLR = ARE | EnableGrp1 through x1 (a 4-byte store).
            p.op(2, 0)
                .bytes(&[0, 2])
                .u32(0)
                .bytes(&[2, 1, 1])
                .u64(0x12)
                .u64(0);
            // vCPU 1's redistributor: ISENABLER0 = 0xffff (SGIs on), from vCPU 1.
            p.op(2, 1)
                .bytes(&[1, 2])
                .u32(0x2_0000 + 0x1_0100)
                .bytes(&[2, 2, 1]);
            p.u64(0xffff).u64(0);
            // MSR ICC_SGI1R_EL1 from vCPU 0: SGI 3 to vCPU 1; then vCPU 1 WFIs.
            p.op(3, 0).bytes(&[0, 5, 0]).u64(3 << 24 | 0b10);
            p.op(4, 1).bytes(&[0, 0]);
            p.op(8, 1).bytes(&[3]);
            // vCPU 0: WFI with a timer deadline, the timer fires, the guest EOIs.
            p.op(4, 0).bytes(&[0, 1]).u64(1000);
            p.op(9, 0);
            p.op(8, 0).bytes(&[0]);
            // A UART store and load, an undefined instruction, SYSTEM_RESET, restart.
            p.op(2, 0)
                .bytes(&[2, 2, 0, 0, 0, 0, 2, 3, 1])
                .u64(u64::from(b'x'))
                .u64(0);
            p.op(2, 0).bytes(&[2, 2, 0x18, 0, 0, 0, 2, 4, 0]).u64(0);
            p.op(0, 0).u64(0x0200_0000).u64(0).u64(0);
            p.op(1, 0).bytes(&[12]).u64(0).u64(0).u64(0);
            p.op(12, 0);
            // Outside every device: an external abort to the guest's vector.
            p.op(7, 0).bytes(&[5]).u64(0x4010_0000);
            p.op(2, 0).bytes(&[3, 2, 0, 0x10, 0, 0, 2, 0, 0]).u64(0);
            alloc::vec![("linux-like", p.0)]
        }

        pub fn smccc_dispatch() -> super::Seeds {
            // Four vCPUs; every declared call once from vCPU 0 with small arguments,
            // then CPU_ON for each other vCPU, the scheduler, AFFINITY_INFO, CPU_OFF.
            let mut p = Program::new(&[3]);
            for i in 0..CALLS.len() as u8 {
                p.bytes(&[0, 0, i, 0, 0, 0, 0, 0, 0, 0]);
            }
            for v in 1..4u8 {
                // x2, the entry point, in RAM (0xc0: the next eight bytes are the value).
                p.bytes(&[0, 0, 7, v, 0xc0]).u64(layout::RAM_BASE);
                p.bytes(&[0, 0, 0, 0, 0]);
            }
            p.bytes(&[0xc0, 0]);
            p.bytes(&[0, 2, 9, 1, 0, 0, 0, 0, 0, 0]);
            p.bytes(&[0, 3, 5, 0, 0, 0, 0, 0, 0, 0]);
            alloc::vec![("every-call", p.0)]
        }

        pub fn vgic_mmio() -> super::Seeds {
            // Two vCPUs, 64 SPIs, four LRs: what Linux's driver does, then interrupts.
            let mut p = Program::new(&[1, 64, 0, 3]);
            let dist = |p: &mut Program, v: u8, offset: u16, value: u64| {
                p.op(1, v).u16(offset).bytes(&[0, 2]).u64(value);
            };
            // `sgi`: in the SGI_base frame (64 KiB into the redistributor).
            let redist = |p: &mut Program, frame: u8, sgi: u8, offset: u16, value: u64| {
                p.op(3, frame)
                    .bytes(&[frame])
                    .u16(offset)
                    .bytes(&[sgi, 0, 2])
                    .u64(value);
            };
            dist(&mut p, 0, 0x0, 0x12); // CTLR: ARE, EnableGrp1
            dist(&mut p, 0, 0x84, 0xffff_ffff); // IGROUPR1
            dist(&mut p, 0, 0x104, 0xffff_ffff); // ISENABLER1
            dist(&mut p, 0, 0x420, 0xa0a0_a0a0); // IPRIORITYR8
            dist(&mut p, 0, 0xc08, 0xaaaa_aaaa); // ICFGR2: SPIs 32-47 edge
            p.op(1, 0).u16(0x6108).bytes(&[0, 3]).u64(1); // IROUTER33 → vCPU 1
            for frame in 0..2 {
                redist(&mut p, frame, 0, 0x14, 0); // WAKER: awake
                redist(&mut p, frame, 1, 0x80, 0xffff_ffff); // IGROUPR0
                redist(&mut p, frame, 1, 0x100, 0xffff_ffff); // ISENABLER0
            }
            p.op(4, 0).u64(1 << 40 | 5 << 24 | 0b11).bytes(&[1]); // SGI 5 to all
            p.op(5, 0).u16(33).bytes(&[1]); // SPI 33 high
            p.op(6, 1).u16(27).u16(27).bytes(&[0]); // timer, hardware-linked
            for v in 0..2 {
                p.op(7, v);
                p.op(9, v).bytes(&[1]);
                p.op(8, v);
                p.op(9, v).bytes(&[3]);
                p.op(7, v);
            }
            p.op(0, 0).u16(0x4).bytes(&[0, 2]); // TYPER
            p.op(2, 1).bytes(&[1]).u16(0x8).bytes(&[0, 0, 3]); // GICR_TYPER
            p.op(10, 1);
            p.op(11, 0);
            alloc::vec![("linux-like", p.0)]
        }

        /// Builds an op program byte by byte.
        struct Program(Vec<u8>);

        impl Program {
            fn new(prefix: &[u8]) -> Self {
                Program(prefix.to_vec())
            }
            fn op(&mut self, op: u8, vcpu: u8) -> &mut Self {
                self.bytes(&[op, vcpu])
            }
            fn bytes(&mut self, b: &[u8]) -> &mut Self {
                self.0.extend_from_slice(b);
                self
            }
            fn u16(&mut self, v: u16) -> &mut Self {
                self.bytes(&v.to_le_bytes())
            }
            fn u32(&mut self, v: u32) -> &mut Self {
                self.bytes(&v.to_le_bytes())
            }
            fn u64(&mut self, v: u64) -> &mut Self {
                self.bytes(&v.to_le_bytes())
            }
        }
    }

    /// Named inputs of one target.
    type Seeds = Vec<(&'static str, Vec<u8>)>;

    fn all_seeds() -> Vec<(&'static str, Seeds)> {
        alloc::vec![
            ("fdt_platform", seeds::fdt_platform()),
            ("manifest", seeds::manifest()),
            ("exit_decode", seeds::exit_decode()),
            ("smccc_dispatch", seeds::smccc_dispatch()),
            ("vgic_mmio", seeds::vgic_mmio()),
        ]
    }

    #[test]
    fn seeds_pass() {
        for ((name, target), (seed_name, seeds)) in TARGETS.iter().zip(all_seeds()) {
            assert_eq!(*name, seed_name);
            for (_, data) in seeds {
                target(&data);
            }
        }
    }

    /// Writes the seeds into `fuzz/corpus/<target>/seed-<name>`:
    /// `cargo test -p bothy-core write_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_seeds() {
        for (target, seeds) in all_seeds() {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in seeds {
                std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
            }
        }
    }
}
