//! Minimal flattened-device-tree walk (DTSpec v0.4 ch. 5): just enough to find the PL011
//! (`arm,pl011` / `arm,sbsa-uart`), the GICv3 (`arm,gic-v3`: reg[0] = GICD, reg[1] = first
//! redistributor region, optional `redistributor-stride`), the MPIDRs in `/cpus`, and
//! `bench.iters=<n>` in `/chosen/bootargs`. Anything malformed ends the walk; whatever
//! was found until then is kept and the caller falls back to the build-time layout.

const FDT_MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const MAX_DEPTH: usize = 16;
/// Refuse absurd sizes (a wild x0).
const MAX_TOTALSIZE: usize = 2 << 20;

#[derive(Default)]
pub struct DtbInfo {
    pub uart: Option<usize>,
    pub gicd: Option<usize>,
    pub gicr: Option<usize>,
    pub gicr_stride: Option<usize>,
    /// `reg` (MPIDR affinity) of the first two `/cpus/cpu@*` nodes.
    pub cpus: [Option<u64>; 2],
    pub iters: Option<u32>,
}

fn be32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

/// Big-endian number of `cells` 32-bit cells (1 or 2) at `off`.
fn cells(d: &[u8], off: usize, cells: u32) -> Option<u64> {
    match cells {
        1 => be32(d, off).map(u64::from),
        2 => Some((u64::from(be32(d, off)?) << 32) | u64::from(be32(d, off + 4)?)),
        _ => None,
    }
}

fn cstr(d: &[u8], off: usize) -> Option<&[u8]> {
    let s = d.get(off..)?;
    Some(&s[..s.iter().position(|&b| b == 0)?])
}

/// `bench.iters=<n>` among the space-separated words of bootargs.
fn iters_from_bootargs(args: &[u8]) -> Option<u32> {
    let word = args
        .split(|&b| b == b' ')
        .find_map(|w| w.strip_prefix(b"bench.iters="))?;
    core::str::from_utf8(word).ok()?.parse().ok()
}

/// Node currently open whose properties are still being read.
#[derive(Default, Clone, Copy)]
struct Node<'a> {
    kind: u8, // 0 other, 1 uart, 2 gic
    disabled: bool,
    reg: Option<&'a [u8]>,
    stride: Option<usize>,
}

/// Parse the DTB at physical address `dtb`; `None` if there is no valid header.
pub fn parse(dtb: usize) -> Option<DtbInfo> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return None;
    }
    // SAFETY: x0 points at the DTB in guest RAM (boot protocol); only the 40-byte header
    // is read before totalsize is checked.
    let hdr = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) };
    let total = be32(hdr, 4)? as usize;
    if be32(hdr, 0)? != FDT_MAGIC || !(40..=MAX_TOTALSIZE).contains(&total) {
        return None;
    }
    // SAFETY: as above; the header claims `total` bytes, bounded by MAX_TOTALSIZE.
    let d = unsafe { core::slice::from_raw_parts(dtb as *const u8, total) };
    let (structs, strings) = (be32(d, 8)? as usize, be32(d, 12)? as usize);
    let mut info = DtbInfo::default();
    // #address-cells / #size-cells declared by the node at each depth (for its children).
    let mut acells = [2u32; MAX_DEPTH];
    let mut scells = [1u32; MAX_DEPTH];
    let (mut depth, mut in_cpus, mut ncpus) = (0usize, false, 0usize);
    let mut node = Node::default();
    let mut name: &[u8] = b"";
    let mut off = structs;
    loop {
        let token = be32(d, off)?;
        off += 4;
        if token == BEGIN_NODE || token == END_NODE {
            // The open node's properties are complete: record it.
            let (ac, sc) = (
                acells[depth.saturating_sub(1)],
                scells[depth.saturating_sub(1)],
            );
            let entry = ac.saturating_add(sc) as usize * 4;
            if let (false, Some(reg)) = (node.disabled, node.reg) {
                let addr = |i: usize| cells(reg, i * entry, ac).map(|a| a as usize);
                match node.kind {
                    1 if info.uart.is_none() => info.uart = addr(0),
                    2 if info.gicd.is_none() => {
                        (info.gicd, info.gicr) = (addr(0), addr(1));
                        info.gicr_stride = node.stride;
                    }
                    _ if in_cpus && depth == 3 && name.starts_with(b"cpu@") && ncpus < 2 => {
                        info.cpus[ncpus] = cells(reg, 0, ac);
                        ncpus += 1;
                    }
                    _ => {}
                }
            }
            node = Node::default();
        }
        match token {
            BEGIN_NODE => {
                name = cstr(d, off)?;
                off = (off + name.len() + 4) & !3;
                depth += 1;
                if depth >= MAX_DEPTH {
                    return Some(info);
                }
                (acells[depth], scells[depth]) = (2, 1);
                if depth == 2 {
                    in_cpus = name == b"cpus";
                }
            }
            END_NODE => {
                depth = depth.checked_sub(1)?;
                name = b"";
            }
            PROP => {
                let (len, nameoff) = (be32(d, off)? as usize, be32(d, off + 4)? as usize);
                let val = d.get(off + 8..off + 8 + len)?;
                off = (off + 8 + len + 3) & !3;
                let prop = cstr(d, strings + nameoff)?;
                match prop {
                    b"#address-cells" => acells[depth] = be32(val, 0)?,
                    b"#size-cells" => scells[depth] = be32(val, 0)?,
                    b"reg" => node.reg = Some(val),
                    b"status" => node.disabled = !val.starts_with(b"ok"),
                    b"redistributor-stride" => {
                        node.stride = cells(val, 0, (len / 4) as u32).map(|s| s as usize)
                    }
                    b"bootargs" if depth == 2 && name == b"chosen" => {
                        info.iters = iters_from_bootargs(cstr(val, 0).unwrap_or(val));
                    }
                    b"compatible" => {
                        for c in val.split(|&b| b == 0) {
                            match c {
                                b"arm,pl011" | b"arm,sbsa-uart" => node.kind = 1,
                                b"arm,gic-v3" => node.kind = 2,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            NOP => {}
            _ => return Some(info), // FDT_END or garbage
        }
    }
}
