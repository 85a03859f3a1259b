//! Which [`CpuContext`] belongs to the CPU running this code: a pointer kept in
//! TPIDR_EL2, EL2's own software thread register (guests cannot touch it).
//!
//! Every exit starts by asking; an `mrs` and a null check is all it costs.

use super::sysreg::{read_tpidr_el2, write_tpidr_el2};
use crate::machine::CpuContext;

/// Forget any value firmware left: TPIDR_EL2 resets to an UNKNOWN value. Call at
/// EL2, before anything asks [`get`].
pub fn clear() {
    write_tpidr_el2(0);
}

/// From now on, [`get`] on this CPU returns `ctx`.
pub fn install(ctx: &'static CpuContext) {
    write_tpidr_el2(ctx as *const CpuContext as u64);
}

/// This CPU's context, if [`install`] has run on it.
#[inline(always)]
pub fn get() -> Option<&'static CpuContext> {
    let ptr = read_tpidr_el2() as *const CpuContext;
    // SAFETY: TPIDR_EL2 is written only by `clear` (null, which `as_ref` maps to None)
    // and `install` (a `&'static CpuContext`, valid and never mutated for the rest of
    // the run). Both run on this CPU before any `get`.
    unsafe { ptr.as_ref() }
}
