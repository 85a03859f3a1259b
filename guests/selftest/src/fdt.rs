//! The one question the selftest asks its device tree: the first interrupt specifier of
//! the first enabled node with a given `compatible`. The selftest assumes its devices
//! where Bothy's layout puts them (platform.rs), but whether there is a PMU, and on which
//! PPI, is what the tree says (as for Linux). The walk itself is `rt::fdt`'s; anything
//! malformed ends it with `None`.

use rt::fdt::{be32, has_string, is_string, Fdt, Token};

/// The first interrupt specifier (`<type number flags>`, the GIC binding's three cells)
/// of the first enabled node compatible with `compatible` in the tree at `dtb`, or
/// `None` (no such node, no `interrupts`, or a malformed tree).
pub fn first_interrupt(dtb: usize, compatible: &[u8]) -> Option<[u32; 3]> {
    // SAFETY: the caller passes `BootInfo::dtb`, x0 at entry: where the hypervisor put
    // the tree, which nothing writes.
    let fdt = unsafe { Fdt::at(dtb) }?;
    let mut tokens = fdt.tokens();
    // The open node's findings: compatible matched, disabled, its first specifier.
    let (mut matched, mut disabled, mut irq) = (false, false, None);
    while let Some(token) = tokens.next_token().ok()? {
        match token {
            Token::BeginNode(_) | Token::EndNode => {
                // The open node's properties are complete.
                if matched && !disabled && irq.is_some() {
                    return irq;
                }
                (matched, disabled, irq) = (false, false, None);
            }
            Token::Prop(b"compatible", value) => matched = has_string(value, compatible),
            Token::Prop(b"status", value) => {
                disabled = !is_string(value, b"okay") && !is_string(value, b"ok");
            }
            Token::Prop(b"interrupts", value) if value.len() >= 12 => {
                irq = Some([be32(value, 0)?, be32(value, 4)?, be32(value, 8)?]);
            }
            Token::Prop(..) => {}
        }
    }
    None
}
