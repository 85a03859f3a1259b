//! Reading the flattened device tree a guest was booted with (DTSpec v0.4 ch. 5): its
//! header, its structure block as a stream of tokens, and a crude search for a switch in
//! the bootargs.
//!
//! Why it exists: x0 at entry names the device tree the hypervisor (or QEMU) wrote for
//! the VM, and each test guest needs a little of it. The bench finds its UART, GIC and
//! vCPUs there (it runs under Bothy, bare QEMU and Xen, whose layouts differ) and reads
//! `bench.iters=` from the bootargs; the selftest finds the PMU's interrupt (whether
//! there is one, and on which PPI, is the tree's to say); the selftest and the attacker
//! look for their switches (`selftest.end=cpu_off`, `attacker.role=victim`). The format
//! is the same for all of them, so the walking is here and each guest keeps its own
//! question: a loop over [`Tokens`] that looks at the nodes and properties it cares
//! about.
//!
//! What the guests rely on:
//! * [`Fdt::at`] refuses an address of 0 or one not 8-byte aligned, a wrong magic, and a
//!   `totalsize` below the header's 40 bytes or above 2 MiB (a wild x0); every read
//!   after that stays inside `totalsize`.
//! * [`Tokens::next_token`] skips NOPs and says apart the two ways a walk ends:
//!   `Ok(None)` at FDT_END or a token the format does not define, `Err(Malformed)` when a
//!   token, node name, property or property name runs past the tree. Every token moves
//!   the walk forward, so it ends within `totalsize`.
//! * Names and values are borrowed from the tree: a node name without its NUL (unit
//!   address included, empty for the root), a property name without its NUL, a value as
//!   the property's bytes.
//! * Nothing is cached: the tree is read again on every walk, so a guest may call these
//!   at any time (the MMU is off, so the tree is read from Device memory: byte by byte
//!   and in words at aligned offsets, never an unaligned word).

/// FDT header magic and structure-block tokens (DTSpec 5.2, 5.4.1).
const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
/// The header's size (version 17).
const HEADER_SIZE: usize = 40;
/// Refuse absurd sizes (a wild x0, a corrupt header).
const MAX_TOTALSIZE: usize = 2 << 20;

/// A device tree in memory, its header checked.
pub struct Fdt {
    bytes: &'static [u8],
    structs: usize,
    strings: usize,
}

/// The tree ran out before the walk ended.
#[derive(Debug)]
pub struct Malformed;

/// One token of the structure block.
pub enum Token<'a> {
    /// A node starts; its name.
    BeginNode(&'a [u8]),
    /// The node last begun and not yet ended ends.
    EndNode,
    /// A property of the open node: its name and value.
    Prop(&'a [u8], &'a [u8]),
}

impl Fdt {
    /// The tree at `dtb`, if its header looks like one (see the module doc).
    ///
    /// # Safety
    ///
    /// `dtb` is what x0 held at entry (the boot protocol's promise of a device tree
    /// there), or another address whose first 40 bytes, and then `totalsize` bytes, may
    /// be read and are not written for as long as the guest reads the tree.
    pub unsafe fn at(dtb: usize) -> Option<Fdt> {
        if dtb == 0 || !dtb.is_multiple_of(8) {
            return None;
        }
        // SAFETY: the caller's contract; only the header is read before totalsize is
        // checked.
        let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, HEADER_SIZE) };
        let total = be32(header, 4)? as usize;
        if be32(header, 0)? != FDT_MAGIC || !(HEADER_SIZE..=MAX_TOTALSIZE).contains(&total) {
            return None;
        }
        // SAFETY: as above; the header claims `total` bytes, at most MAX_TOTALSIZE.
        let bytes = unsafe { core::slice::from_raw_parts(dtb as *const u8, total) };
        Some(Fdt {
            bytes,
            structs: be32(bytes, 8)? as usize,
            strings: be32(bytes, 12)? as usize,
        })
    }

    /// The whole tree, `totalsize` bytes.
    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    /// Whether the tree holds `needle` anywhere: a crude look for a switch in
    /// `/chosen/bootargs`, the only string in a test guest's tree its system file sets.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// The structure block from its first token.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens {
            fdt: self,
            off: self.structs,
        }
    }
}

/// A walk over the structure block ([`Fdt::tokens`]).
pub struct Tokens<'a> {
    fdt: &'a Fdt,
    off: usize,
}

impl<'a> Tokens<'a> {
    /// The next token other than NOP; `Ok(None)` once the walk is over (see the module
    /// doc).
    pub fn next_token(&mut self) -> Result<Option<Token<'a>>, Malformed> {
        let d = self.fdt.bytes;
        loop {
            let token = be32(d, self.off).ok_or(Malformed)?;
            self.off += 4;
            match token {
                BEGIN_NODE => {
                    let name = cstr(d, self.off).ok_or(Malformed)?;
                    // The name, its NUL, padding to the next 4-byte boundary.
                    self.off = (self.off + name.len() + 4) & !3;
                    return Ok(Some(Token::BeginNode(name)));
                }
                END_NODE => return Ok(Some(Token::EndNode)),
                PROP => {
                    let len = be32(d, self.off).ok_or(Malformed)? as usize;
                    let name_off = be32(d, self.off + 4).ok_or(Malformed)? as usize;
                    let value_at = self.off + 8;
                    let value = d.get(value_at..value_at + len).ok_or(Malformed)?;
                    self.off = (value_at + len + 3) & !3;
                    let name = cstr(d, self.fdt.strings + name_off).ok_or(Malformed)?;
                    return Ok(Some(Token::Prop(name, value)));
                }
                NOP => {}
                _ => return Ok(None), // FDT_END, or garbage
            }
        }
    }
}

/// The big-endian 32-bit word at byte `off` of `bytes` (a cell of a property value).
pub fn be32(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

/// The big-endian number `cells` 32-bit cells long (1 or 2) at byte `off` of `bytes`,
/// as `#address-cells` and `#size-cells` give them.
pub fn cells(bytes: &[u8], off: usize, cells: u32) -> Option<u64> {
    match cells {
        1 => be32(bytes, off).map(u64::from),
        2 => Some((u64::from(be32(bytes, off)?) << 32) | u64::from(be32(bytes, off + 4)?)),
        _ => None,
    }
}

/// The NUL-terminated string at byte `off` of `bytes`, without its NUL.
pub fn cstr(bytes: &[u8], off: usize) -> Option<&[u8]> {
    let s = bytes.get(off..)?;
    Some(&s[..s.iter().position(|&b| b == 0)?])
}

/// Whether the string list `value` (NUL-terminated strings, as in `compatible`) holds
/// `want`.
pub fn has_string(value: &[u8], want: &[u8]) -> bool {
    let mut rest = value;
    while let Some(s) = cstr(rest, 0) {
        if s == want {
            return true;
        }
        rest = &rest[s.len() + 1..];
    }
    false
}

/// Whether the string property `value` is `want`: its first NUL-terminated string (as
/// `status = "okay"`).
pub fn is_string(value: &[u8], want: &[u8]) -> bool {
    cstr(value, 0) == Some(want)
}
