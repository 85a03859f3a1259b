//! SErrors (asynchronous external aborts): whose they are and what Bothy does.
//!
//! `hyp` synchronises errors at every guest exit (an `esb` with SErrors masked, which
//! defers a pending one into DISR_EL1) so one the guest caused is found while the exit
//! still belongs to that guest; it then unmasks SErrors at EL2, and synchronises again
//! before it returns to the guest, so one Bothy caused is taken at EL2 as Bothy's own
//! (and is fatal). A guest's SError arrives either so (the DISR_EL1 syndrome) or as an
//! SError exit (ESR_EL2); both share the layout [`classify`] reads (Arm ARM D17.2.37,
//! ISS for an SError interrupt; DISR_EL1 adds a valid bit, A, at 31).

/// What to do about a guest's SError.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Corrected by the hardware (AET = CE): report, the guest carries on.
    Corrected,
    /// The guest's state is lost (or the error is not classified): that VM stops.
    StopVm,
    /// Uncontainable (AET = UC): nothing is known to be unaffected; the machine stops
    /// (as Linux does for such an error).
    Uncontainable,
}

const IDS: u64 = 1 << 24;
const AET_SHIFT: u32 = 10;
const AET_MASK: u64 = 0b111;
const DFSC_MASK: u64 = 0x3f;
/// DFSC of an asynchronous SError interrupt: AET is valid only then.
const DFSC_ASYNC_SERROR: u64 = 0b01_0001;
const AET_UC: u64 = 0b000;
const AET_CE: u64 = 0b110;

/// The verdict for an SError whose syndrome (ESR_EL2's ISS or DISR_EL1) is `syndrome`.
pub fn classify(syndrome: u64) -> Verdict {
    if syndrome & IDS != 0 || syndrome & DFSC_MASK != DFSC_ASYNC_SERROR {
        // An implementation-defined or uncategorised error: assume the worst for the
        // VM, not for the machine.
        return Verdict::StopVm;
    }
    match (syndrome >> AET_SHIFT) & AET_MASK {
        AET_UC => Verdict::Uncontainable,
        AET_CE => Verdict::Corrected,
        // Unrecoverable, restartable and recoverable alike: Bothy cannot repair a
        // guest's state, so none of them is resumed.
        _ => Verdict::StopVm,
    }
}

/// A short name for reports.
pub fn describe(syndrome: u64) -> &'static str {
    if syndrome & IDS != 0 {
        return "implementation-defined";
    }
    if syndrome & DFSC_MASK != DFSC_ASYNC_SERROR {
        return "uncategorised";
    }
    match (syndrome >> AET_SHIFT) & AET_MASK {
        AET_UC => "uncontainable",
        0b001 => "unrecoverable",
        0b010 => "restartable",
        0b011 => "recoverable",
        AET_CE => "corrected",
        _ => "reserved AET",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn async_serror(aet: u64) -> u64 {
        (aet << AET_SHIFT) | DFSC_ASYNC_SERROR
    }

    #[test]
    fn severities() {
        assert_eq!(classify(async_serror(AET_UC)), Verdict::Uncontainable);
        assert_eq!(classify(async_serror(AET_CE)), Verdict::Corrected);
        for aet in [0b001, 0b010, 0b011, 0b100, 0b101, 0b111] {
            assert_eq!(classify(async_serror(aet)), Verdict::StopVm, "AET {aet:#b}");
        }
        // DISR_EL1's valid bit does not change the verdict.
        assert_eq!(classify(1 << 31 | async_serror(AET_CE)), Verdict::Corrected);
        assert_eq!(describe(async_serror(0b011)), "recoverable");
    }

    #[test]
    fn unclassified_errors_stop_the_vm_not_the_machine() {
        // DFSC = 0 (uncategorised): AET means nothing, even if it reads UC.
        assert_eq!(classify(0), Verdict::StopVm);
        assert_eq!(classify(IDS | async_serror(AET_UC)), Verdict::StopVm);
        assert_eq!(classify(IDS | async_serror(AET_CE)), Verdict::StopVm);
        assert_eq!(describe(IDS), "implementation-defined");
        assert_eq!(describe(0), "uncategorised");
    }
}
