//! The part of a VM that its exits act on: run state, guest RAM, vGIC, PSCI power
//! states, devices and the MMIO bus that routes to them.
//!
//! `hyp`'s `Vm` embeds one [`VmModel`] (and derefs to it) beside what only the
//! hypervisor binary can hold: stage-2 tables, images, each vCPU's saved hardware
//! context. The exit policy ([`crate::exit::handle`]) takes a `&VmModel`, so every
//! decision an exit makes is made here and host-tested against a model built exactly
//! as `hyp` builds it ([`VmModel::new`]).
//!
//! Everything here is shared by the CPUs running the VM's vCPUs, so each piece is
//! behind an atomic or its own lock (vGIC, console); none is held across another.

pub mod table;

pub use table::{VmHandle, VmTable};

use crate::abi::VcpuPower;
use crate::dev::console::Console;
use crate::dev::ptimer::{PhysTimer, TimerReg};
use crate::dev::{BusError, Device, MmioBus};
use crate::exit::idregs::IdRegs;
use crate::layout;
use crate::lifecycle::VmState;
use crate::prompt::ExitCounts;
use crate::vgic::{IrqLine, VGic, VcpuMask, MAX_VCPUS};
use crate::Region;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use spin::Mutex;

/// A VM as its exits see it.
pub struct VmModel {
    /// Guest RAM in IPA space.
    pub ram: Region,
    pub vgic: VGic,
    pub power: VcpuPower,
    /// The PL011 and the console input waiting for it.
    pub uart: Mutex<Console>,
    /// The PL011's interrupt line.
    pub uart_line: IrqLine,
    /// Device windows → device models.
    pub bus: MmioBus,
    /// Exceptions Bothy injected because of what the VM did (see
    /// [`crate::arch::GuestFault`]), for rate-limited reports.
    pub faults: AtomicU64,
    /// SErrors the VM caused, for rate-limited reports.
    pub serrors: AtomicU64,
    /// The ID registers as this VM reads them (HCR_EL2.TID3): `hyp` sets them from
    /// [`crate::exit::idregs::sanitise`] when it builds the VM; all zero until then.
    pub id_regs: IdRegs,
    /// Each vCPU's emulated EL1 physical timer (`dev/ptimer.rs`).
    ptimers: alloc::vec::Vec<Mutex<PtimerSlot>>,
    /// Per vCPU: its physical timer is enabled or its line is high, so time passing can
    /// change something. Written under the timer's lock; read without it by
    /// [`Self::ptimer_update`] and [`Self::ptimer_deadline`], which every vCPU switch
    /// and idle look call, while most guests never enable this timer.
    ptimers_live: alloc::vec::Vec<AtomicBool>,
    /// The INTID of its interrupt (the physical-timer PPI of the guest's device tree):
    /// `hyp` sets it from the platform's when it builds the VM.
    pub ptimer_intid: u32,
    state: AtomicU8,
}

/// The physical-timer PPI's INTID on QEMU's `virt` board (PPI 14), until `hyp` sets
/// the platform's.
pub const PTIMER_INTID_DEFAULT: u32 = 30;

/// A vCPU's physical timer and the level its line was last handed to the vGIC at.
#[derive(Default)]
struct PtimerSlot {
    timer: PhysTimer,
    line: bool,
}

/// Why a [`VmModel`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// Not 1..=[`MAX_VCPUS`] vCPUs.
    Vcpus(usize),
    /// A device window collides with another or with RAM.
    Bus(Device, BusError),
    /// The UART's SPI is beyond the vGIC's.
    NoUartLine,
}

impl VmModel {
    /// The board every Bothy VM gets (Bothy's `layout`): GICv3 distributor and
    /// redistributors, a PL011 on SPI [`layout::UART_SPI`], `ram` for memory. Running.
    pub fn new(vcpus: usize, ram: Region) -> Result<Self, ModelError> {
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(ModelError::Vcpus(vcpus));
        }
        let vgic = VGic::new(vcpus, layout::NR_SPIS);
        let uart_line = vgic
            .spi_line(layout::UART_SPI)
            .ok_or(ModelError::NoUartLine)?;
        let mut bus = MmioBus::new();
        // The distributor first: it is the busiest window (see `MmioBus`).
        for (region, device) in [
            (layout::GIC_DIST, Device::GicDist),
            (layout::gic_redist(vcpus), Device::GicRedist),
            (layout::UART, Device::Uart),
        ] {
            if region.base < ram.end() && ram.base < region.end() {
                return Err(ModelError::Bus(device, BusError::Empty));
            }
            bus.add(region, device)
                .map_err(|e| ModelError::Bus(device, e))?;
        }
        Ok(Self {
            ram,
            vgic,
            power: VcpuPower::new(vcpus),
            uart: Mutex::new(Console::new()),
            uart_line,
            bus,
            faults: AtomicU64::new(0),
            serrors: AtomicU64::new(0),
            id_regs: IdRegs::ZERO,
            ptimers: (0..vcpus)
                .map(|_| Mutex::new(PtimerSlot::default()))
                .collect(),
            ptimers_live: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            ptimer_intid: PTIMER_INTID_DEFAULT,
            state: AtomicU8::new(VmState::Running as u8),
        })
    }

    pub fn nr_vcpus(&self) -> usize {
        self.vgic.nr_vcpus()
    }

    /// The vCPU whose MPIDR (affinity fields only) is `mpidr`: vCPU `n` has Aff0 = `n`
    /// and the other affinity fields zero (`hyp` sets VMPIDR_EL2 so, and the guest's
    /// device tree says so).
    pub fn vcpu_of_mpidr(&self, mpidr: u64) -> Option<usize> {
        const AFF3_AFF2_AFF1: u64 = 0xff_00ff_ff00;
        if mpidr & AFF3_AFF2_AFF1 != 0 {
            return None;
        }
        let vcpu = (mpidr & 0xff) as usize;
        (vcpu < self.nr_vcpus()).then_some(vcpu)
    }

    pub fn state(&self) -> VmState {
        VmState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether the VM is `Running`, read without ordering: for the exit path, which
    /// issues an acquire fence before it acts on a VM that is not (the same ordering as
    /// [`VmModel::state`], and an `ldrb` with an offset where an `ldarb` takes none).
    #[inline(always)]
    pub fn is_running_relaxed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == VmState::Running as u8
    }

    /// Move from Running to `to`; false if someone else changed the state first (so
    /// exactly one of several racing stops reports and finishes it).
    pub fn leave_running(&self, to: VmState) -> bool {
        self.state
            .compare_exchange(
                VmState::Running as u8,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub fn set_state(&self, to: VmState) {
        self.state.store(to as u8, Ordering::Release);
    }

    /// Counts one injected fault; true if it should be reported: the first few, then
    /// the 2^n-th, so a flood costs the console a line per doubling.
    pub fn note_fault(&self) -> (u64, bool) {
        rate_limited(&self.faults)
    }

    /// Counts one SError the VM caused; true if it should be reported (as
    /// [`Self::note_fault`]).
    pub fn note_serror(&self) -> (u64, bool) {
        rate_limited(&self.serrors)
    }

    /// A trapped access to `vcpu`'s physical timer at counter value `now`: the value a
    /// read returns (0 for a write), and the vCPUs to wake if its line rose.
    pub fn ptimer_access(
        &self,
        vcpu: usize,
        reg: TimerReg,
        write: Option<u64>,
        now: u64,
    ) -> (u64, VcpuMask) {
        let Some(slot) = self.ptimers.get(vcpu) else {
            return (0, VcpuMask::EMPTY);
        };
        let mut timer = slot.lock();
        let value = match write {
            Some(v) => {
                timer.timer.write(reg, v, now);
                0
            }
            None => timer.timer.read(reg, now),
        };
        let kicks = self.drive_ptimer_line(vcpu, &mut timer, now);
        self.note_ptimer_live(vcpu, &timer);
        (value, kicks)
    }

    /// Under the timer's lock: whether time passing can change anything for it.
    fn note_ptimer_live(&self, vcpu: usize, timer: &PtimerSlot) {
        if let Some(live) = self.ptimers_live.get(vcpu) {
            live.store(timer.timer.enabled() || timer.line, Ordering::Release);
        }
    }

    /// Whether `vcpu`'s physical timer is off with its line low (nothing to update).
    #[inline(always)]
    fn ptimer_idle(&self, vcpu: usize) -> bool {
        self.ptimers_live
            .get(vcpu)
            .is_none_or(|live| !live.load(Ordering::Acquire))
    }

    /// Bring `vcpu`'s physical-timer line up to date at `now` (time passes without a
    /// trap): the vCPUs to wake if it rose, and when it will rise next, if it will. One
    /// uncontended lock when nothing changed (the vGIC is told only of changes).
    #[inline(always)]
    pub fn ptimer_update(&self, vcpu: usize, now: u64) -> (VcpuMask, Option<u64>) {
        if self.ptimer_idle(vcpu) {
            return (VcpuMask::EMPTY, None);
        }
        self.ptimer_update_live(vcpu, now)
    }

    #[inline(never)]
    fn ptimer_update_live(&self, vcpu: usize, now: u64) -> (VcpuMask, Option<u64>) {
        let Some(slot) = self.ptimers.get(vcpu) else {
            return (VcpuMask::EMPTY, None);
        };
        let mut timer = slot.lock();
        let kicks = self.drive_ptimer_line(vcpu, &mut timer, now);
        self.note_ptimer_live(vcpu, &timer);
        (kicks, timer.timer.deadline(now))
    }

    /// Under the timer's lock (so racing updates apply their levels in order): hand the
    /// vGIC the line's level if it changed.
    fn drive_ptimer_line(&self, vcpu: usize, timer: &mut PtimerSlot, now: u64) -> VcpuMask {
        let level = timer.timer.level(now);
        if level == timer.line {
            return VcpuMask::EMPTY;
        }
        timer.line = level;
        self.vgic.set_private_level(vcpu, self.ptimer_intid, level)
    }

    /// When `vcpu`'s physical timer next raises its line, if it will.
    #[inline(always)]
    pub fn ptimer_deadline(&self, vcpu: usize, now: u64) -> Option<u64> {
        if self.ptimer_idle(vcpu) {
            return None;
        }
        self.ptimer_deadline_live(vcpu, now)
    }

    #[inline(never)]
    fn ptimer_deadline_live(&self, vcpu: usize, now: u64) -> Option<u64> {
        self.ptimers.get(vcpu)?.lock().timer.deadline(now)
    }

    /// `vcpu` starts afresh (reset, CPU_ON): its physical timer is off.
    pub fn ptimer_reset(&self, vcpu: usize) {
        if let Some(slot) = self.ptimers.get(vcpu) {
            let mut timer = slot.lock();
            *timer = PtimerSlot::default();
            self.note_ptimer_live(vcpu, &timer);
            let _ = self.vgic.set_private_level(vcpu, self.ptimer_intid, false);
        }
    }

    /// One byte of console input; returns the vCPUs to wake for the UART's interrupt.
    pub fn console_input(&self, byte: u8) -> VcpuMask {
        let mut console = self.uart.lock();
        console.input(byte);
        // Under the UART lock, so concurrent accesses apply their levels in order.
        self.vgic
            .set_line_level(self.uart_line, console.irq_level())
    }
}

/// Counts one event; true for the first few, then the 2^n-th.
fn rate_limited(counter: &AtomicU64) -> (u64, bool) {
    const ALWAYS: u64 = 8;
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    (n, n <= ALWAYS || n.is_power_of_two())
}

/// Kinds of exit counted per vCPU (indexes of [`ExitCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    Hypercall = 0,
    Mmio = 1,
    Sysreg = 2,
    Wfx = 3,
    Irq = 4,
    Other = 5,
}

/// Exits of one vCPU by kind, for the console prompt's `list`.
#[derive(Default, Debug)]
pub struct ExitCounters([AtomicU64; 6]);

impl ExitCounters {
    pub const fn new() -> Self {
        ExitCounters([const { AtomicU64::new(0) }; 6])
    }

    #[inline(always)]
    pub fn count(&self, kind: ExitKind) {
        let counter = &self.0[kind as usize];
        // Only the CPU running the vCPU counts its exits: no read-modify-write race.
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: ExitKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    /// The counts as the prompt's `list` shows them.
    pub fn snapshot(&self) -> ExitCounts {
        ExitCounts {
            hypercall: self.get(ExitKind::Hypercall),
            mmio: self.get(ExitKind::Mmio),
            sysreg: self.get(ExitKind::Sysreg),
            wfx: self.get(ExitKind::Wfx),
            irq: self.get(ExitKind::Irq),
            other: self.get(ExitKind::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_board_routes_gic_and_uart() {
        let vm = VmModel::new(2, Region::new(layout::RAM_BASE, 64 << 20)).unwrap();
        assert_eq!(
            vm.bus.find(layout::GIC_DIST.base + 4),
            Some((Device::GicDist, 4))
        );
        let redist = layout::gic_redist(2);
        assert_eq!(
            vm.bus.find(redist.base + redist.size - 1),
            Some((Device::GicRedist, redist.size - 1))
        );
        assert_eq!(vm.bus.find(redist.base + redist.size), None);
        assert_eq!(vm.bus.find(layout::UART.base), Some((Device::Uart, 0)));
        assert_eq!(vm.bus.find(layout::RAM_BASE), None);
        assert_eq!(vm.uart_line.intid(), layout::UART_SPI + 32);
        assert_eq!(vm.state(), VmState::Running);
    }

    #[test]
    fn refuses_bad_shapes() {
        let ram = Region::new(layout::RAM_BASE, 64 << 20);
        assert!(matches!(VmModel::new(0, ram), Err(ModelError::Vcpus(0))));
        assert!(matches!(
            VmModel::new(MAX_VCPUS + 1, ram),
            Err(ModelError::Vcpus(_))
        ));
        // RAM over the UART.
        assert!(matches!(
            VmModel::new(1, Region::new(layout::UART.base, 1 << 20)),
            Err(ModelError::Bus(Device::Uart, _))
        ));
    }

    #[test]
    fn only_one_stop_wins() {
        let vm = VmModel::new(1, Region::new(layout::RAM_BASE, 64 << 20)).unwrap();
        assert!(vm.leave_running(VmState::Off));
        assert!(!vm.leave_running(VmState::Crashed));
        assert_eq!(vm.state(), VmState::Off);
    }

    #[test]
    fn fault_reports_thin_out() {
        let vm = VmModel::new(1, Region::new(layout::RAM_BASE, 64 << 20)).unwrap();
        let reported: alloc::vec::Vec<u64> = (0..2000)
            .filter_map(|_| match vm.note_fault() {
                (n, true) => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(
            reported,
            [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256, 512, 1024]
        );
    }

    /// The skip taken by every switch and idle look while a vCPU's physical timer is off
    /// gives what the locked path would at every step: the line rising and falling, the
    /// deadline, and a reset.
    #[test]
    fn an_idle_physical_timer_is_skipped_without_changing_any_answer() {
        use crate::dev::ptimer::TimerReg;
        let vm = VmModel::new(2, Region::new(layout::RAM_BASE, 64 << 20)).unwrap();
        let level = |vm: &VmModel| vm.ptimers[0].lock().line;
        assert!(vm.ptimer_idle(0));
        assert_eq!(vm.ptimer_update(0, 100), (VcpuMask::EMPTY, None));
        // Enabled, due at 500: live, with a deadline, and the line rises when due.
        vm.ptimer_access(0, TimerReg::Cval, Some(500), 100);
        assert!(vm.ptimer_idle(0), "CVAL alone enables nothing");
        vm.ptimer_access(0, TimerReg::Ctl, Some(1), 100);
        assert!(!vm.ptimer_idle(0));
        assert_eq!(vm.ptimer_deadline(0, 100), Some(500));
        assert_eq!(vm.ptimer_update(0, 200).1, Some(500));
        assert!(!level(&vm));
        vm.ptimer_update(0, 600);
        assert!(level(&vm), "due: the line rose");
        // Disabled while high: the access lowers the line, and only then is it idle.
        vm.ptimer_access(0, TimerReg::Ctl, Some(0), 700);
        assert!(!level(&vm));
        assert!(vm.ptimer_idle(0));
        assert_eq!(vm.ptimer_update(0, 800), (VcpuMask::EMPTY, None));
        // Another vCPU's timer is its own; a reset leaves it idle.
        vm.ptimer_access(1, TimerReg::Ctl, Some(1), 0);
        assert!(!vm.ptimer_idle(1) && vm.ptimer_idle(0));
        vm.ptimer_reset(1);
        assert!(vm.ptimer_idle(1));
    }

    #[test]
    fn counters_count_by_kind() {
        let c = ExitCounters::default();
        c.count(ExitKind::Mmio);
        c.count(ExitKind::Mmio);
        c.count(ExitKind::Wfx);
        let s = c.snapshot();
        assert_eq!((s.mmio, s.wfx, s.total()), (2, 1, 3));
    }
}
