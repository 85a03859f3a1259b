//! Decoding and dispatch of a guest's SMCCC/PSCI call (HVC, or an SMC trapped by
//! `HCR_EL2.TSC`).
//!
//! `hyp` hands over the caller's `X0..X7` and vCPU index; [`dispatch`] returns an
//! [`Outcome`] and never touches a register or another vCPU itself. Every call Bothy
//! answers is declared once, in [`CALLS`] (ID, name, handler, feature flags): dispatch,
//! `PSCI_FEATURES` and `SMCCC_ARCH_FEATURES` all read that table, and `docs/ABI.md` can
//! be generated from it. Anything not in the table — yielding calls, unknown IDs, the
//! SMC64 form of an SMC32-only function, the vendor-hypervisor range (Gunyah's module
//! handles that before falling back here) — returns `NOT_SUPPORTED` (-1).
//!
//! Result registers: `X0` carries the value; `X1..X3` are written as zero (see
//! `smccc.rs` for why). Nothing here panics on guest input.

#[cfg(doc)]
use super::power::VcpuPower;
use super::power::{CpuOnError, PowerState};
use super::psci::{
    self, AFFINITY_OFF, AFFINITY_ON, ALREADY_ON, CPU_SUSPEND_FEATURES_ORIGINAL_FORMAT,
    INVALID_ADDRESS, INVALID_PARAMETERS, MIGRATE_INFO_TYPE_NOT_PRESENT, MPIDR_AFFINITY_MASK,
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};
use super::smccc::{self, ret_code, FunctionId, SMCCC_ARCH_FEATURES, SMCCC_VERSION};
use crate::vm::VmModel;

/// The caller: its VM (power states, RAM, topology) and which of its vCPUs called.
/// Two words, built on every call.
#[derive(Clone, Copy)]
pub struct CallContext<'a> {
    pub vm: &'a VmModel,
    /// Index of the calling vCPU within its VM.
    pub vcpu: usize,
}

/// What the hypervisor does after a call. Two registers wide, so that the common
/// case (a value for `X0`) comes back in registers, not through memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Write the value to `X0`, zero to `X1..X3`, and resume the caller after the
    /// HVC/SMC.
    Return(u64),
    /// `CPU_ON` accepted: `target` is now On with its start point stored in
    /// [`VcpuPower`]. Have it scheduled, then return SUCCESS (`X0..X3` = 0) to the
    /// caller.
    StartVcpu { target: usize },
    /// `CPU_OFF`: the caller stops; it never returns to the guest (a later `CPU_ON`
    /// restarts it at a new entry point). The hypervisor marks it Off
    /// ([`VcpuPower::power_off`]) once it has left its CPU.
    StopVcpu,
    /// `CPU_SUSPEND`, standby semantics (DEN0022 §5.4.2 allows a power-down request to
    /// return like standby): wait like WFI, then resume with [`RETURN_SUCCESS`].
    Suspend,
    /// `SYSTEM_OFF`: stop this VM (only this VM).
    SystemOff,
    /// `SYSTEM_RESET`: restart this VM from its pristine images.
    SystemReset,
}

/// `X0` for a plain success (`X1..X3` are zero): `Suspend` and `StartVcpu` callers get
/// this.
pub const RETURN_SUCCESS: u64 = 0;

/// Which interface a declared call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// SMCCC Arm Architecture Service (owner 0), DEN0028 §7.
    SmcccArch,
    /// PSCI, DEN0022 §5.
    Psci,
}

/// Arguments of a call: `X1..X7`, truncated to 32 bits on access for SMC32 IDs.
/// Borrowed, not copied: most calls read one argument or none. One word, passed in a
/// register (the convention is read from `X0` when an argument is).
#[derive(Clone, Copy, Debug)]
struct Args<'a> {
    regs: &'a [u64; 8],
}

impl Args<'_> {
    /// Argument `n` (1-based, as in `Xn`).
    #[inline(always)]
    fn x(&self, n: usize) -> u64 {
        let value = self.regs[n];
        if FunctionId::from_x0(self.regs[0]).is_smc64() {
            value
        } else {
            value & u64::from(u32::MAX)
        }
    }
}

/// By value: the caller's two words and the argument pointer go in registers.
type Handler = fn(CallContext, Args) -> Outcome;

/// One declared call: the single source of truth for dispatch and feature discovery.
pub struct Call {
    pub id: u32,
    pub name: &'static str,
    pub interface: Interface,
    /// What `PSCI_FEATURES`/`SMCCC_ARCH_FEATURES` return for this ID (0 or flags).
    pub feature_flags: u32,
    handler: Handler,
}

const fn call(id: u32, name: &'static str, interface: Interface, handler: Handler) -> Call {
    Call {
        id,
        name,
        interface,
        feature_flags: 0,
        handler,
    }
}

/// Every call Bothy answers for a guest. `SMCCC_ARCH_WORKAROUND_1/2/3` are absent on
/// purpose: until `hyp` passes on what the host firmware implements, guests are told
/// NOT_SUPPORTED rather than promised a mitigation that might not be there.
const CALL_TABLE: [Call; N_CALLS] = [
    call(
        SMCCC_VERSION,
        "SMCCC_VERSION",
        Interface::SmcccArch,
        smccc_version,
    ),
    call(
        SMCCC_ARCH_FEATURES,
        "SMCCC_ARCH_FEATURES",
        Interface::SmcccArch,
        smccc_arch_features,
    ),
    call(PSCI_VERSION, "PSCI_VERSION", Interface::Psci, psci_version),
    Call {
        feature_flags: CPU_SUSPEND_FEATURES_ORIGINAL_FORMAT,
        ..call(
            PSCI_CPU_SUSPEND_32,
            "CPU_SUSPEND",
            Interface::Psci,
            cpu_suspend,
        )
    },
    Call {
        feature_flags: CPU_SUSPEND_FEATURES_ORIGINAL_FORMAT,
        ..call(
            PSCI_CPU_SUSPEND_64,
            "CPU_SUSPEND64",
            Interface::Psci,
            cpu_suspend,
        )
    },
    call(PSCI_CPU_OFF, "CPU_OFF", Interface::Psci, cpu_off),
    call(PSCI_CPU_ON_32, "CPU_ON", Interface::Psci, cpu_on),
    call(PSCI_CPU_ON_64, "CPU_ON64", Interface::Psci, cpu_on),
    call(
        PSCI_AFFINITY_INFO_32,
        "AFFINITY_INFO",
        Interface::Psci,
        affinity_info,
    ),
    call(
        PSCI_AFFINITY_INFO_64,
        "AFFINITY_INFO64",
        Interface::Psci,
        affinity_info,
    ),
    call(
        PSCI_MIGRATE_INFO_TYPE,
        "MIGRATE_INFO_TYPE",
        Interface::Psci,
        migrate_info_type,
    ),
    call(PSCI_SYSTEM_OFF, "SYSTEM_OFF", Interface::Psci, system_off),
    call(
        PSCI_SYSTEM_RESET,
        "SYSTEM_RESET",
        Interface::Psci,
        system_reset,
    ),
    call(
        PSCI_FEATURES,
        "PSCI_FEATURES",
        Interface::Psci,
        psci_features,
    ),
];

const N_CALLS: usize = 14;

/// Every call Bothy answers, in declaration order (for docs and feature queries).
pub static CALLS: &[Call] = &CALL_TABLE;

/// Where a call's ID leads: a direct-mapped table of [`SLOTS`] entries indexed by a
/// hash of the ID, derived from [`CALL_TABLE`] at compile time (so the declaration
/// stays the single source of truth) and checked there to give every declared call a
/// slot of its own. The hash is `(id + (id >> shift)) % SLOTS`, two instructions; the
/// first shift that separates the declared IDs is taken. An entry holds the full ID
/// (an ID that only shares the slot is not the call), the declaration's index and its
/// handler, so a hypercall costs one load of the ID, a compare and a call.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const NO_CALL: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Slot {
    id: u32,
    /// Index into [`CALL_TABLE`]; [`NO_CALL`] for an empty slot.
    call: u8,
    /// The call's handler; `not_supported` for an empty slot (whatever ID reaches it).
    handler: Handler,
}

#[inline(always)]
const fn slot_of(id: u32, shift: u32) -> usize {
    (id.wrapping_add(id >> shift) as usize) % SLOTS
}

/// The first shift under which no two declared calls share a slot.
const HASH_SHIFT: u32 = {
    let mut shift = 1;
    loop {
        assert!(
            shift < 32,
            "no hash shift separates the declared calls: raise SLOT_BITS"
        );
        let mut used = [false; SLOTS];
        let mut i = 0;
        while i < N_CALLS {
            let slot = slot_of(CALL_TABLE[i].id, shift);
            if used[slot] {
                break;
            }
            used[slot] = true;
            i += 1;
        }
        if i == N_CALLS {
            break shift;
        }
        shift += 1;
    }
};

static DISPATCH: [Slot; SLOTS] = {
    let empty = Slot {
        id: 0,
        call: NO_CALL,
        handler: not_supported,
    };
    let mut slots = [empty; SLOTS];
    let mut i = 0;
    while i < N_CALLS {
        let c = &CALL_TABLE[i];
        slots[slot_of(c.id, HASH_SHIFT)] = Slot {
            id: c.id,
            call: i as u8,
            handler: c.handler,
        };
        i += 1;
    }
    slots
};

/// The declaration of `id`, if Bothy implements it.
#[inline]
pub fn lookup(id: u32) -> Option<&'static Call> {
    let slot = &DISPATCH[slot_of(id, HASH_SHIFT)];
    if slot.id != id {
        return None;
    }
    CALL_TABLE.get(usize::from(slot.call))
}

/// Handles one call. `regs` are the caller's `X0..X7`.
#[inline(always)]
pub fn dispatch(ctx: &CallContext, regs: &[u64; 8]) -> Outcome {
    let id = FunctionId::from_x0(regs[0]).0;
    let slot = &DISPATCH[slot_of(id, HASH_SHIFT)];
    if slot.id == id {
        (slot.handler)(*ctx, Args { regs })
    } else {
        ret(smccc::NOT_SUPPORTED)
    }
}

/// An empty slot's handler.
fn not_supported(_: CallContext, _: Args) -> Outcome {
    ret(smccc::NOT_SUPPORTED)
}

/// A single-value result in `X0`, zero in `X1..X3`.
fn ret(code: i32) -> Outcome {
    Outcome::Return(ret_code(code))
}

fn ret_value(value: u64) -> Outcome {
    Outcome::Return(value)
}

fn smccc_version(_: CallContext, _: Args) -> Outcome {
    ret_value(u64::from(smccc::VERSION_1_1))
}

/// DEN0028 §7.3: only Arm Architecture Service IDs are answered here; PSCI functions are
/// discovered through `PSCI_FEATURES`.
fn smccc_arch_features(_: CallContext, a: Args) -> Outcome {
    match lookup(a.x(1) as u32) {
        Some(c) if c.interface == Interface::SmcccArch => ret_value(u64::from(c.feature_flags)),
        _ => ret(smccc::NOT_SUPPORTED),
    }
}

fn psci_version(_: CallContext, _: Args) -> Outcome {
    ret_value(u64::from(psci::VERSION_1_1))
}

/// DEN0022 §5.1.14: PSCI functions and `SMCCC_VERSION` (the SMCCC's own discovery path
/// goes through `PSCI_FEATURES(SMCCC_VERSION)`).
fn psci_features(_: CallContext, a: Args) -> Outcome {
    match lookup(a.x(1) as u32) {
        Some(c) if c.interface == Interface::Psci || c.id == SMCCC_VERSION => {
            ret_value(u64::from(c.feature_flags))
        }
        _ => ret(psci::NOT_SUPPORTED),
    }
}

/// Any `power_state` is treated as standby: the vCPU waits for an interrupt and returns
/// SUCCESS with its context intact, which PSCI permits for every requested state.
fn cpu_suspend(_: CallContext, _: Args) -> Outcome {
    Outcome::Suspend
}

/// The vCPU stays `On` until the hypervisor has taken it off its CPU and calls
/// [`VcpuPower::power_off`]: a `CPU_ON` from another vCPU that saw it `Off` earlier
/// would race the vCPU still leaving (and have its start point erased).
fn cpu_off(_ctx: CallContext, _: Args) -> Outcome {
    Outcome::StopVcpu
}

/// Maps a `target_cpu`/`target_affinity` argument to a vCPU of this VM.
fn target_vcpu(ctx: CallContext, mpidr: u64) -> Option<usize> {
    if mpidr & !MPIDR_AFFINITY_MASK != 0 {
        return None;
    }
    ctx.vm
        .vcpu_of_mpidr(mpidr)
        .filter(|&v| v < ctx.vm.power.len())
}

/// `CPU_ON(target_cpu, entry_point, context_id)`. Checks run in TF-A's order: target,
/// then entry point, then the target's state. The first caller turns the target On, so
/// racing callers get exactly one SUCCESS and ALREADY_ON for the rest (never
/// ON_PENDING: see `power.rs`).
fn cpu_on(ctx: CallContext, a: Args) -> Outcome {
    let Some(target) = target_vcpu(ctx, a.x(1)) else {
        return ret(INVALID_PARAMETERS);
    };
    let (entry, context_id) = (a.x(2), a.x(3));
    if !ctx.vm.ram.contains(entry) {
        return ret(INVALID_ADDRESS);
    }
    match ctx.vm.power.request_on(target, entry, context_id) {
        Ok(()) => Outcome::StartVcpu { target },
        Err(CpuOnError::AlreadyOn) => ret(ALREADY_ON),
        Err(CpuOnError::NoSuchVcpu) => ret(INVALID_PARAMETERS),
    }
}

/// `AFFINITY_INFO(target_affinity, lowest_affinity_level)`: PSCI 1.x only requires
/// level 0 (one vCPU); Bothy has no cluster power domains to report.
fn affinity_info(ctx: CallContext, a: Args) -> Outcome {
    if a.x(2) != 0 {
        return ret(INVALID_PARAMETERS);
    }
    match target_vcpu(ctx, a.x(1)) {
        None => ret(INVALID_PARAMETERS),
        Some(v) => ret_value(match ctx.vm.power.state(v) {
            PowerState::On => AFFINITY_ON,
            PowerState::Off => AFFINITY_OFF,
        }),
    }
}

fn migrate_info_type(_: CallContext, _: Args) -> Outcome {
    ret_value(MIGRATE_INFO_TYPE_NOT_PRESENT)
}

fn system_off(_: CallContext, _: Args) -> Outcome {
    Outcome::SystemOff
}

fn system_reset(_: CallContext, _: Args) -> Outcome {
    Outcome::SystemReset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::psci::*;
    use crate::abi::smccc::{
        SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2, SMCCC_ARCH_WORKAROUND_3,
    };
    use crate::Region;
    use proptest::prelude::*;

    const RAM: Region = Region::new(0x4000_0000, 0x1000_0000);
    const ENTRY: u64 = 0x4008_0000;
    const NR: usize = 4;
    const MINUS_ONE: u64 = u64::MAX;

    /// MPIDR of vCPU n (affinity fields): Aff0 = n.
    fn mpidr(v: usize) -> u64 {
        v as u64
    }

    fn model() -> VmModel {
        VmModel::new(NR, RAM).unwrap()
    }

    fn call(vm: &VmModel, vcpu: usize, x: &[u64]) -> Outcome {
        let mut regs = [0u64; 8];
        regs[..x.len()].copy_from_slice(x);
        dispatch(&CallContext { vm, vcpu }, &regs)
    }

    fn x0(o: Outcome) -> u64 {
        match o {
            Outcome::Return(x0) => x0,
            other => panic!("expected Return, got {other:?}"),
        }
    }

    fn err(code: i32) -> u64 {
        code as i64 as u64
    }

    fn affinity(p: &VmModel, of: usize) -> u64 {
        x0(call(p, 0, &[PSCI_AFFINITY_INFO_64.into(), mpidr(of), 0]))
    }

    #[test]
    fn versions() {
        let p = model();
        assert_eq!(x0(call(&p, 0, &[SMCCC_VERSION.into()])), 0x1_0001);
        assert_eq!(x0(call(&p, 0, &[PSCI_VERSION.into()])), 0x1_0001);
        // W0 only: garbage in X0's upper half is ignored.
        assert_eq!(
            x0(call(
                &p,
                0,
                &[0xdead_beef_0000_0000 | u64::from(PSCI_VERSION)]
            )),
            0x1_0001
        );
    }

    #[test]
    fn arch_features() {
        let p = model();
        let q = |id: u32| x0(call(&p, 0, &[SMCCC_ARCH_FEATURES.into(), id.into()]));
        assert_eq!(q(SMCCC_VERSION), 0);
        assert_eq!(q(SMCCC_ARCH_FEATURES), 0);
        for w in [
            SMCCC_ARCH_WORKAROUND_1,
            SMCCC_ARCH_WORKAROUND_2,
            SMCCC_ARCH_WORKAROUND_3,
        ] {
            assert_eq!(q(w), MINUS_ONE);
            // Calling the workaround itself is an unknown call too.
            assert_eq!(x0(call(&p, 0, &[w.into()])), MINUS_ONE);
        }
        // PSCI functions are discovered via PSCI_FEATURES, not here.
        assert_eq!(q(PSCI_CPU_ON_64), MINUS_ONE);
        assert_eq!(q(0x8000_0002), MINUS_ONE);
    }

    #[test]
    fn psci_features() {
        let p = model();
        let q = |id: u32| x0(call(&p, 0, &[PSCI_FEATURES.into(), id.into()]));
        for id in [
            PSCI_VERSION,
            PSCI_CPU_OFF,
            PSCI_CPU_ON_32,
            PSCI_CPU_ON_64,
            PSCI_AFFINITY_INFO_32,
            PSCI_AFFINITY_INFO_64,
            PSCI_MIGRATE_INFO_TYPE,
            PSCI_SYSTEM_OFF,
            PSCI_SYSTEM_RESET,
            PSCI_FEATURES,
            SMCCC_VERSION,
        ] {
            assert_eq!(q(id), 0, "{id:#x}");
        }
        assert_eq!(q(PSCI_CPU_SUSPEND_32), 0, "original power_state format");
        assert_eq!(q(PSCI_CPU_SUSPEND_64), 0);
        for id in [
            PSCI_MIGRATE_32,
            PSCI_MIGRATE_64,
            PSCI_SYSTEM_SUSPEND_64,
            PSCI_SYSTEM_RESET2_64,
            PSCI_CPU_FREEZE,
            PSCI_MEM_PROTECT,
            SMCCC_ARCH_FEATURES,
            0xc400_0000,
            0,
        ] {
            assert_eq!(q(id), MINUS_ONE, "{id:#x}");
        }
        // The SMC32 argument is W1: upper bits do not matter.
        let hi = (1u64 << 40) | u64::from(PSCI_CPU_OFF);
        assert_eq!(x0(call(&p, 0, &[PSCI_FEATURES.into(), hi])), 0);
    }

    #[test]
    fn every_declared_call_is_discoverable() {
        let p = model();
        for c in CALLS {
            let via = match c.interface {
                Interface::Psci => PSCI_FEATURES,
                Interface::SmcccArch => SMCCC_ARCH_FEATURES,
            };
            assert_eq!(
                x0(call(&p, 0, &[via.into(), c.id.into()])),
                u64::from(c.feature_flags),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn simple_psci_calls() {
        let p = model();
        assert_eq!(x0(call(&p, 0, &[PSCI_MIGRATE_INFO_TYPE.into()])), 2);
        assert_eq!(call(&p, 0, &[PSCI_SYSTEM_OFF.into()]), Outcome::SystemOff);
        assert_eq!(
            call(&p, 0, &[PSCI_SYSTEM_RESET.into()]),
            Outcome::SystemReset
        );
        assert_eq!(
            call(&p, 0, &[PSCI_CPU_SUSPEND_32.into(), 0]),
            Outcome::Suspend
        );
        assert_eq!(
            call(&p, 0, &[PSCI_CPU_SUSPEND_64.into(), 1 << 16, ENTRY, 5]),
            Outcome::Suspend
        );
        assert_eq!(
            p.power.state(0),
            PowerState::On,
            "suspend leaves the power state alone"
        );
    }

    #[test]
    fn cpu_on_then_again() {
        let p = model();
        let on = [PSCI_CPU_ON_64.into(), mpidr(2), ENTRY, 0x1234];
        assert_eq!(call(&p, 0, &on), Outcome::StartVcpu { target: 2 });
        assert_eq!(p.power.state(2), PowerState::On, "on at once");
        assert_eq!(affinity(&p, 2), AFFINITY_ON, "before it has run");
        assert_eq!(x0(call(&p, 0, &on)), err(ALREADY_ON));
        assert_eq!(
            x0(call(
                &p,
                1,
                &[PSCI_CPU_ON_64.into(), mpidr(2), ENTRY + 4, 9]
            )),
            err(ALREADY_ON),
            "from another caller too, with another start point"
        );
        assert_eq!(
            p.power.take_pending_start(2),
            Some((ENTRY, 0x1234)),
            "the first caller's start point"
        );
        assert_eq!(x0(call(&p, 0, &on)), err(ALREADY_ON));
        // The caller itself is on.
        assert_eq!(
            x0(call(&p, 0, &[PSCI_CPU_ON_64.into(), mpidr(0), ENTRY, 0])),
            err(ALREADY_ON)
        );
    }

    #[test]
    fn cpu_on_bad_arguments() {
        let p = model();
        let on = |m: u64, e: u64| x0(call(&p, 0, &[PSCI_CPU_ON_64.into(), m, e, 0]));
        assert_eq!(on(0x0203, ENTRY), err(INVALID_PARAMETERS), "unknown MPIDR");
        assert_eq!(
            on(mpidr(1) | (1 << 24), ENTRY),
            err(INVALID_PARAMETERS),
            "non-affinity bits"
        );
        assert_eq!(on(mpidr(1) | (1 << 63), ENTRY), err(INVALID_PARAMETERS));
        assert_eq!(on(mpidr(1), RAM.base - 4), err(INVALID_ADDRESS));
        assert_eq!(on(mpidr(1), RAM.end()), err(INVALID_ADDRESS));
        assert_eq!(on(mpidr(1), 0), err(INVALID_ADDRESS));
        // Bad MPIDR wins over bad address (TF-A order).
        assert_eq!(on(0xff, 0), err(INVALID_PARAMETERS));
        assert_eq!(
            p.power.state(1),
            PowerState::Off,
            "refused calls change nothing"
        );
        // An Aff0 beyond the VM's vCPUs, or any higher affinity field, names nobody.
        assert_eq!(on(NR as u64, ENTRY), err(INVALID_PARAMETERS));
        assert_eq!(on(1 << 8, ENTRY), err(INVALID_PARAMETERS));
    }

    #[test]
    fn cpu_on_32_truncates_arguments() {
        let p = model();
        let hi = 0xffff_ffff_0000_0000;
        let o = call(
            &p,
            0,
            &[PSCI_CPU_ON_32.into(), hi | mpidr(3), hi | ENTRY, hi | 9],
        );
        assert_eq!(o, Outcome::StartVcpu { target: 3 });
        assert_eq!(p.power.take_pending_start(3), Some((ENTRY, 9)));
        // The same registers through the SMC64 ID are refused (non-affinity bits set).
        assert_eq!(
            x0(call(
                &p,
                0,
                &[PSCI_CPU_ON_64.into(), hi | mpidr(1), ENTRY, 0]
            )),
            err(INVALID_PARAMETERS)
        );
    }

    #[test]
    fn affinity_info_follows_state_machine() {
        let p = model();
        assert_eq!(affinity(&p, 0), AFFINITY_ON);
        assert_eq!(affinity(&p, 1), AFFINITY_OFF);
        assert!(matches!(
            call(&p, 0, &[PSCI_CPU_ON_64.into(), mpidr(1), ENTRY, 0]),
            Outcome::StartVcpu { target: 1 }
        ));
        assert_eq!(affinity(&p, 1), AFFINITY_ON, "on before it has run");
        p.power.take_pending_start(1);
        assert_eq!(affinity(&p, 1), AFFINITY_ON);
        assert_eq!(call(&p, 1, &[PSCI_CPU_OFF.into()]), Outcome::StopVcpu);
        assert_eq!(affinity(&p, 1), AFFINITY_ON, "still leaving its CPU");
        p.power.power_off(1);
        assert_eq!(affinity(&p, 1), AFFINITY_OFF);
        // 32-bit form, level != 0, unknown target.
        assert_eq!(
            x0(call(&p, 0, &[PSCI_AFFINITY_INFO_32.into(), mpidr(0), 0])),
            AFFINITY_ON
        );
        assert_eq!(
            x0(call(&p, 0, &[PSCI_AFFINITY_INFO_64.into(), mpidr(0), 1])),
            err(INVALID_PARAMETERS)
        );
        assert_eq!(
            x0(call(&p, 0, &[PSCI_AFFINITY_INFO_64.into(), 0x0300, 0])),
            err(INVALID_PARAMETERS)
        );
    }

    #[test]
    fn cpu_off_and_restart() {
        let p = model();
        assert_eq!(call(&p, 0, &[PSCI_CPU_OFF.into()]), Outcome::StopVcpu);
        assert_eq!(
            p.power.state(0),
            PowerState::On,
            "on until the hypervisor says otherwise"
        );
        p.power.power_off(0);
        assert_eq!(p.power.state(0), PowerState::Off);
        // vCPU 0 can be brought back by anyone still running... here vCPU 3, after it
        // was itself started by the hypervisor.
        p.power.request_on(3, ENTRY, 0).unwrap();
        p.power.take_pending_start(3);
        assert!(matches!(
            call(&p, 3, &[PSCI_CPU_ON_64.into(), mpidr(0), ENTRY + 8, 1]),
            Outcome::StartVcpu { target: 0 }
        ));
        assert_eq!(p.power.take_pending_start(0), Some((ENTRY + 8, 1)));
        p.power.reset();
        assert_eq!(
            (p.power.state(0), p.power.state(3)),
            (PowerState::On, PowerState::Off)
        );
    }

    #[test]
    fn interleaved_callers() {
        // vCPU 0 starts 1; before 1 runs, 0 asks about it and tries again; then 1 starts
        // 2 and 3, 3 powers off while 2 has not run yet, and 2 restarts 3.
        let p = model();
        let on = |caller, t: usize| {
            call(
                &p,
                caller,
                &[PSCI_CPU_ON_64.into(), mpidr(t), ENTRY, t as u64],
            )
        };
        assert!(matches!(on(0, 1), Outcome::StartVcpu { target: 1 }));
        assert_eq!(affinity(&p, 1), AFFINITY_ON);
        assert_eq!(x0(on(0, 1)), err(ALREADY_ON));
        assert_eq!(p.power.take_pending_start(1), Some((ENTRY, 1)));
        assert!(matches!(on(1, 2), Outcome::StartVcpu { target: 2, .. }));
        assert!(matches!(on(1, 3), Outcome::StartVcpu { target: 3, .. }));
        assert_eq!(p.power.take_pending_start(3), Some((ENTRY, 3)));
        assert_eq!(call(&p, 3, &[PSCI_CPU_OFF.into()]), Outcome::StopVcpu);
        assert_eq!(x0(on(0, 3)), err(ALREADY_ON), "3 has not left its CPU yet");
        p.power.power_off(3);
        assert_eq!(affinity(&p, 2), AFFINITY_ON);
        assert_eq!(affinity(&p, 3), AFFINITY_OFF);
        assert_eq!(x0(on(0, 2)), err(ALREADY_ON), "2 has not run yet");
        assert!(
            matches!(on(2, 3), Outcome::StartVcpu { .. }),
            "a vCPU not yet loaded may start others"
        );
        assert_eq!(p.power.take_pending_start(2), Some((ENTRY, 2)));
        assert_eq!(p.power.take_pending_start(3), Some((ENTRY, 3)));
    }

    #[test]
    fn concurrent_cpu_on_from_threads() {
        // Every caller races for every other vCPU: per target, exactly one SUCCESS and
        // ALREADY_ON for everyone else; AFFINITY_INFO never says anything but ON once
        // a caller has seen either.
        let p = model();
        let starts: [std::sync::atomic::AtomicUsize; NR] = Default::default();
        let already_on = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for caller in 0..NR {
                let (p, starts, already_on) = (&p, &starts, &already_on);
                s.spawn(move || {
                    for t in 1..NR {
                        match call(p, caller, &[PSCI_CPU_ON_64.into(), mpidr(t), ENTRY, 0]) {
                            Outcome::StartVcpu { target } => {
                                starts[target].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            o => {
                                assert_eq!(x0(o), err(ALREADY_ON));
                                already_on.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        assert_eq!(affinity(p, t), AFFINITY_ON);
                    }
                });
            }
        });
        for (t, n) in starts.iter().enumerate().skip(1) {
            assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 1, "vCPU {t}");
        }
        assert_eq!(already_on.into_inner(), NR * (NR - 1) - (NR - 1));
    }

    /// One step of a PSCI history, for the property below.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// `CPU_ON(target)` from `caller`, with `tag` as the context ID.
        On {
            caller: usize,
            target: usize,
            tag: u64,
        },
        /// The hypervisor loads `target` (takes its start point if it has one).
        Load(usize),
        /// `target` calls `CPU_OFF` and the hypervisor has it leave its CPU.
        Off(usize),
        /// `AFFINITY_INFO(target)`.
        Affinity(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..NR, 0..NR, any::<u64>()).prop_map(|(caller, target, tag)| Step::On {
                caller,
                target,
                tag
            }),
            (0..NR).prop_map(Step::Load),
            (0..NR).prop_map(Step::Off),
            (0..NR).prop_map(Step::Affinity),
        ]
    }

    proptest! {
        /// Against a model of what KVM answers: a vCPU is on from the CPU_ON that
        /// succeeded until its CPU_OFF; between the two every CPU_ON gets ALREADY_ON,
        /// and the first load after it starts at that CPU_ON's entry, once.
        #[test]
        fn cpu_on_histories_match_the_model(steps in proptest::collection::vec(step(), 0..64)) {
            let p = model();
            // (on, start point not yet taken) per vCPU.
            let mut want: [(bool, Option<u64>); NR] = [(false, None); NR];
            want[0].0 = true;
            for s in steps {
                match s {
                    Step::On { caller, target, tag } => {
                        // Only a vCPU that runs can call.
                        if !want[caller].0 || want[caller].1.is_some() {
                            continue;
                        }
                        let got = call(&p, caller, &[PSCI_CPU_ON_64.into(), mpidr(target), ENTRY, tag]);
                        if want[target].0 {
                            prop_assert_eq!(got, Outcome::Return(err(ALREADY_ON)));
                        } else {
                            prop_assert_eq!(got, Outcome::StartVcpu { target });
                            want[target] = (true, Some(tag));
                        }
                    }
                    Step::Load(t) => {
                        let start = p.power.take_pending_start(t);
                        prop_assert_eq!(start, want[t].1.take().map(|tag| (ENTRY, tag)));
                    }
                    Step::Off(t) => {
                        if !want[t].0 || want[t].1.is_some() {
                            continue;
                        }
                        prop_assert_eq!(call(&p, t, &[PSCI_CPU_OFF.into()]), Outcome::StopVcpu);
                        prop_assert_eq!(affinity(&p, t), AFFINITY_ON);
                        p.power.power_off(t);
                        want[t] = (false, None);
                    }
                    Step::Affinity(t) => {
                        let on = if want[t].0 { AFFINITY_ON } else { AFFINITY_OFF };
                        prop_assert_eq!(affinity(&p, t), on);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_and_out_of_range_ids() {
        let p = model();
        for id in [
            0x8400_0005u64, // MIGRATE: optional with MIGRATE_INFO_TYPE = 2
            0xc400_0000,    // no SMC64 PSCI_VERSION
            0xc400_0002,
            0x8600_0000, // vendor hyp range
            0xc600_ff01,
            0x8600_ff01,
            0x0400_0000, // yielding calls
            0x8401_0000, // bits [23:16] set
            0xc000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(x0(call(&p, 0, &[id, 1, 2, 3])), MINUS_ONE, "{id:#x}");
        }
    }

    fn known(id: u32) -> bool {
        lookup(id).is_some()
    }

    proptest! {
        #[test]
        fn dispatch_never_panics(regs in any::<[u64; 8]>(), vcpu in 0usize..NR + 2) {
            let p = model();
            let ctx = CallContext { vm: &p, vcpu };
            let _ = dispatch(&ctx, &regs);
        }

        #[test]
        fn unknown_ids_return_minus_one(id in any::<u64>().prop_filter("unknown", |x| !known(*x as u32)), args in any::<[u64; 7]>()) {
            let p = model();
            let mut regs = [0; 8];
            regs[0] = id;
            regs[1..].copy_from_slice(&args);
            let ctx = CallContext { vm: &p, vcpu: 0 };
            prop_assert_eq!(dispatch(&ctx, &regs), Outcome::Return(MINUS_ONE));
        }

        #[test]
        fn known_ids_with_junk_upper_half(hi in any::<u32>(), idx in 0..CALLS.len(), args in any::<[u64; 7]>()) {
            // Whatever X0's upper half holds, the call is the one W0 names.
            let p1 = model();
            let p2 = model();
            let mut a = [0; 8];
            a[0] = u64::from(CALLS[idx].id);
            a[1..].copy_from_slice(&args);
            let mut b = a;
            b[0] |= u64::from(hi) << 32;
            let c1 = CallContext { vm: &p1, vcpu: 0 };
            let c2 = CallContext { vm: &p2, vcpu: 0 };
            prop_assert_eq!(dispatch(&c1, &a), dispatch(&c2, &b));
        }
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn every_declared_call_is_found_by_its_exact_id_only() {
        for call in CALLS {
            assert_eq!(lookup(call.id).map(|c| c.name), Some(call.name));
            // Reserved bits [23:16] set: a different (unknown) ID.
            assert!(lookup(call.id | 1 << 16).is_none(), "{}", call.name);
            // The yielding-call twin of a fast call is not declared.
            assert!(
                lookup(call.id & !smccc::FN_FAST_CALL).is_none(),
                "{}",
                call.name
            );
        }
        assert!(lookup(0xC600_1234).is_none());
        assert!(lookup(0x8400_001F).is_none());
    }
}
