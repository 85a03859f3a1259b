//! `Msg`: the one-line verdict of a test guest's check (or case), and the `msg!`,
//! `bail!`, `ensure!` and `skip!` macros that build and return one.
//!
//! Why it exists: the guests run with no allocator, yet every failed check must say why
//! in one line (`TEST <name> fail <why>` in the selftest, `TEST <case> FAILED: <why>` in
//! the attacker) that a host-side test can read. A `Msg` is a fixed 240-byte buffer that
//! `format_args!` writes into; what does not fit is cut off, and line ends become spaces
//! so a message can never break its `TEST` line in two (a host parser reads line by line).
//!
//! What the guests rely on:
//! * `CheckResult` = `Result<(), Msg>`: `Ok(())` passes; `Err(msg)` fails with `msg`, or
//!   is reported as skipped when `msg.skipped` is set (`skip!`; only the selftest uses it,
//!   for a check this VM lacks the hardware for).
//! * `Display` prints the text as written, nothing added.
//! * The macros name their items through `$crate`, so a guest only imports the macros:
//!   `use rt::msg::{bail, ensure, CheckResult};` (the guests alias `rt::msg` as
//!   `crate::msg`).
//!
//! A `Msg` is 256 bytes, large for a `Result` error (hence the guests'
//! `allow(clippy::result_large_err)`), but failures are rare and nothing is copied on the
//! `Ok` path.

use core::fmt;

/// Capacity in bytes; longer messages are truncated.
const CAPACITY: usize = 240;

pub struct Msg {
    buf: [u8; CAPACITY],
    len: usize,
    /// Not a failure: the check needs something this VM does not have.
    pub skipped: bool,
}

impl Msg {
    pub fn new(args: fmt::Arguments) -> Msg {
        let mut m = Msg {
            buf: [0; CAPACITY],
            len: 0,
            skipped: false,
        };
        let _ = fmt::Write::write_fmt(&mut m, args);
        m
    }

    /// Why a check did not run.
    pub fn skip(args: fmt::Arguments) -> Msg {
        Msg {
            skipped: true,
            ..Msg::new(args)
        }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<bad utf8>")
    }
}

impl fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            // Keep one check on one line.
            let b = if b == b'\n' || b == b'\r' { b' ' } else { b };
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a check returns.
pub type CheckResult = Result<(), Msg>;

/// `msg!("fmt", args..)`: a [`Msg`].
#[macro_export]
macro_rules! msg {
    ($($arg:tt)*) => { $crate::msg::Msg::new(format_args!($($arg)*)) };
}

/// `bail!("fmt", args..)`: return `Err(msg!(..))` from the check.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::msg::Msg::new(format_args!($($arg)*))) };
}

/// `skip!("fmt", args..)`: return a [`Msg`] marked skipped from the check.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err($crate::msg::Msg::skip(format_args!($($arg)*)))
    };
}

/// `ensure!(cond, "fmt", args..)`: `bail!` unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

pub use crate::{bail, ensure, msg, skip};
