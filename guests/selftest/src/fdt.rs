//! Just enough of a flattened-device-tree walk (DTSpec v0.4 ch. 5) to find the first
//! enabled node with a given `compatible` and read its first interrupt specifier. The
//! selftest assumes its devices where Bothy's layout puts them (platform.rs), but
//! whether there is a PMU, and on which PPI, is what the tree says (as for Linux).
//!
//! The MMU is off, so guest RAM is Device memory: the tree is read in aligned 32-bit
//! words (`mmio_read32`), never byte by byte. Anything malformed ends the walk with
//! `None`.

use crate::arch::mmio_read32;

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
/// Refuse absurd sizes and walks (a corrupt tree).
const MAX_TOTALSIZE: usize = 2 << 20;
const MAX_TOKENS: usize = 100_000;

/// The tree at `dtb`: its bounds, for reads that stay inside.
struct Tree {
    base: usize,
    size: usize,
}

impl Tree {
    fn word(&self, off: usize) -> Option<u32> {
        (off.is_multiple_of(4) && off + 4 <= self.size)
            .then(|| u32::from_be(mmio_read32(self.base + off)))
    }

    fn byte(&self, off: usize) -> Option<u8> {
        (off < self.size).then(|| (mmio_read32(self.base + (off & !3)) >> ((off & 3) * 8)) as u8)
    }

    /// Whether the `len` bytes at `off` hold `want` followed by a NUL.
    fn is_cstr(&self, off: usize, len: usize, want: &[u8]) -> bool {
        want.len() < len
            && want
                .iter()
                .enumerate()
                .all(|(i, &b)| self.byte(off + i) == Some(b))
            && self.byte(off + want.len()) == Some(0)
    }

    /// Whether the string list of `len` bytes at `off` contains `want`.
    fn list_has(&self, off: usize, len: usize, want: &[u8]) -> bool {
        let mut start = 0;
        while start < len {
            if self.is_cstr(off + start, len - start, want) {
                return true;
            }
            // On to the byte after this string's NUL.
            let mut end = start;
            while end < len && self.byte(off + end) != Some(0) {
                end += 1;
            }
            start = end + 1;
        }
        false
    }
}

/// The first interrupt specifier (`<type number flags>`, the GIC binding's three cells)
/// of the first enabled node compatible with `compatible` in the tree at `dtb`, or
/// `None` (no such node, no `interrupts`, or a malformed tree).
pub fn first_interrupt(dtb: usize, compatible: &[u8]) -> Option<[u32; 3]> {
    let head = Tree {
        base: dtb,
        size: 40,
    };
    let size = head.word(4)? as usize;
    if head.word(0)? != FDT_MAGIC || !(40..=MAX_TOTALSIZE).contains(&size) {
        return None;
    }
    let t = Tree { base: dtb, size };
    let (structs, strings) = (t.word(8)? as usize, t.word(12)? as usize);
    // The open node's findings: compatible matched, disabled, its first specifier.
    let (mut matched, mut disabled, mut irq) = (false, false, None);
    let mut off = structs;
    for _ in 0..MAX_TOKENS {
        let token = t.word(off)?;
        off += 4;
        match token {
            BEGIN_NODE | END_NODE => {
                // The open node's properties are complete.
                if matched && !disabled && irq.is_some() {
                    return irq;
                }
                (matched, disabled, irq) = (false, false, None);
                if token == BEGIN_NODE {
                    while t.byte(off)? != 0 {
                        off += 1;
                    }
                    off = (off + 4) & !3;
                }
            }
            PROP => {
                let (len, name) = (t.word(off)? as usize, strings + t.word(off + 4)? as usize);
                let val = off + 8;
                off = (val + len + 3) & !3;
                if t.is_cstr(name, usize::MAX, b"compatible") {
                    matched = t.list_has(val, len, compatible);
                } else if t.is_cstr(name, usize::MAX, b"status") {
                    disabled = !t.is_cstr(val, len, b"okay") && !t.is_cstr(val, len, b"ok");
                } else if t.is_cstr(name, usize::MAX, b"interrupts") && len >= 12 {
                    irq = Some([t.word(val)?, t.word(val + 4)?, t.word(val + 8)?]);
                }
            }
            NOP => {}
            _ => return None, // FDT_END or garbage
        }
    }
    None
}
