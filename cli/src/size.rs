//! Memory sizes as users write them: `512M`, `1G`, `65536K` or a plain byte count.
//!
//! One parser for the system file's `memory` key and the `--mem` flag, so both accept
//! exactly the same spellings and report the same errors.

use thiserror::Error;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error(
        "{0:?} is not a size: expected a number with an optional K, M or G suffix (e.g. 512M)"
    )]
    Malformed(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses `N`, `NK`, `NM`, `NG` (binary units; a trailing `iB`/`B` is accepted too).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let mult = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        _ => return Err(SizeError::Malformed(text.to_string())),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

/// Human form for messages: the largest binary unit that divides the value exactly.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0".to_string(),
        b if b % GIB == 0 => format!("{}G", b / GIB),
        b if b % MIB == 0 => format!("{}M", b / MIB),
        b if b % KIB == 0 => format!("{}K", b / KIB),
        b => format!("{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1g"), Ok(GIB));
        assert_eq!(parse_size("2048K"), Ok(2 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 MiB "), Ok(64 * MIB));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("M"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("12X"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("-1M"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size("99999999999999999999G"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(GIB), "1G");
        assert_eq!(format_size(512 * MIB), "512M");
        assert_eq!(format_size(3 * KIB), "3K");
        assert_eq!(format_size(1000), "1000");
    }
}
