//! `Msg`: a fixed-size, allocation-free failure message, and the `bail!`/`ensure!` macros
//! the checks use to return one. Longer messages are truncated.

use core::fmt;

pub struct Msg {
    buf: [u8; 240],
    len: usize,
}

impl Msg {
    pub fn new(args: fmt::Arguments) -> Msg {
        let mut m = Msg {
            buf: [0; 240],
            len: 0,
        };
        let _ = fmt::Write::write_fmt(&mut m, args);
        m
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

pub type CheckResult = Result<(), Msg>;

macro_rules! msg {
    ($($arg:tt)*) => { $crate::msg::Msg::new(format_args!($($arg)*)) };
}

macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::msg::msg!($($arg)*)) };
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::msg::bail!($($arg)*);
        }
    };
}

pub(crate) use bail;
pub(crate) use ensure;
pub(crate) use msg;
