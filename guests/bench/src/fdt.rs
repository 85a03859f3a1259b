//! What the bench reads from its device tree (DTSpec v0.4 ch. 5; the walk is `rt::fdt`'s):
//! the PL011 (`arm,pl011` / `arm,sbsa-uart`), the GICv3 (`arm,gic-v3`: reg[0] = GICD,
//! reg[1] = first redistributor region, optional `redistributor-stride`), the MPIDRs in
//! `/cpus`, and `bench.iters=<n>` in `/chosen/bootargs`. A token the format does not
//! define, or nodes nested too deep, end the walk with what was found until then; a tree
//! that runs out before its end gives nothing. The caller falls back to the build-time
//! layout for whatever is missing.

use rt::fdt::{be32, cells, cstr, Fdt, Token};

const MAX_DEPTH: usize = 16;

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

/// Parse the DTB at physical address `dtb`; `None` if there is no valid header, or the
/// tree runs out before its end.
pub fn parse(dtb: usize) -> Option<DtbInfo> {
    // SAFETY: x0 points at the DTB in guest RAM (boot protocol); nothing writes it.
    let fdt = unsafe { Fdt::at(dtb) }?;
    let mut tokens = fdt.tokens();
    let mut info = DtbInfo::default();
    // #address-cells / #size-cells declared by the node at each depth (for its children).
    let mut acells = [2u32; MAX_DEPTH];
    let mut scells = [1u32; MAX_DEPTH];
    let (mut depth, mut in_cpus, mut ncpus) = (0usize, false, 0usize);
    let mut node = Node::default();
    let mut name: &[u8] = b"";
    loop {
        let Some(token) = tokens.next_token().ok()? else {
            return Some(info); // FDT_END or garbage
        };
        if let Token::BeginNode(_) | Token::EndNode = token {
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
            Token::BeginNode(node_name) => {
                name = node_name;
                depth += 1;
                if depth >= MAX_DEPTH {
                    return Some(info);
                }
                (acells[depth], scells[depth]) = (2, 1);
                if depth == 2 {
                    in_cpus = name == b"cpus";
                }
            }
            Token::EndNode => {
                depth = depth.checked_sub(1)?;
                name = b"";
            }
            Token::Prop(prop, val) => match prop {
                b"#address-cells" => acells[depth] = be32(val, 0)?,
                b"#size-cells" => scells[depth] = be32(val, 0)?,
                b"reg" => node.reg = Some(val),
                b"status" => node.disabled = !val.starts_with(b"ok"),
                b"redistributor-stride" => {
                    node.stride = cells(val, 0, (val.len() / 4) as u32).map(|s| s as usize)
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
            },
        }
    }
}
