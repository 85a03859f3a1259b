//! Host platform discovery: turns the firmware's DTB into the plain facts the boot
//! sequence needs (memory, reservations, CPUs, GICv3, timer PPIs, console UART, PSCI,
//! and the PMU's overflow PPI when there is one).
//!
//! Called once by `hyp` at boot (DESIGN.md §2 step 3), before anything else can go
//! wrong quietly, so every error names the node or property that is missing or wrong.
//! Device addresses go through the ancestors' `ranges` (Linux's rule), so boards that
//! put the GIC or UART under a `/soc` bus get CPU physical addresses.
//!
//! Interrupt specifiers are decoded in the GIC binding's format (`<type number flags>`,
//! type 0 = SPI, 1 = PPI): Bothy only runs on GICv3, and every interrupt it cares about
//! reaches it directly or through a pass-through wake-up controller using the same
//! format.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::{Fdt, FdtError, Node};
use crate::Region;

/// `compatible` of a GICv3 (GICv4 uses the same binding).
pub const GIC_V3_COMPATIBLE: &str = "arm,gic-v3";
/// GICv1/v2 compatibles (binding `arm,gic.yaml`), recognised only to say why we stop.
const GIC_V2_COMPATIBLES: &[&str] = &[
    "arm,gic-400",
    "arm,cortex-a15-gic",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
    "arm,cortex-a5-gic",
    "arm,arm11mp-gic",
    "arm,arm1176jzf-devchip-gic",
    "arm,eb11mp-gic",
    "arm,pl390",
    "arm,tc11mp-gic",
    "qcom,msm-qgic2",
];
pub const TIMER_COMPATIBLE: &str = "arm,armv8-timer";
/// The generic PMUv3 binding (`arm,pmu.yaml`); boards may name the core instead
/// (`arm,cortex-a72-pmu`, `arm,neoverse-n1-pmu`), and some list both.
pub const PMU_COMPATIBLE: &str = "arm,armv8-pmuv3";
/// Prefixes of the binding's per-core CPU PMU compatibles (each ends in `-pmu`). Other
/// `arm,*-pmu` nodes (the DSU's, interconnects') are not the CPU's PMU.
const CPU_PMU_PREFIXES: &[&str] = &["arm,cortex-a", "arm,cortex-x", "arm,neoverse-"];
pub const PL011_COMPATIBLE: &str = "arm,pl011";
/// PSCI compatibles, newest first (binding `arm,psci.yaml`).
pub const PSCI_COMPATIBLES: &[&str] = &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"];
/// GIC binding interrupt types (first cell of an interrupt specifier).
pub const GIC_SPI: u32 = 0;
pub const GIC_PPI: u32 = 1;
/// PPIs are INTIDs 16..32, numbered 0..16 in the device tree.
pub const PPI_COUNT: u32 = 16;
pub const PPI_INTID_BASE: u32 = 16;
/// Trigger type in the low bits of a GIC specifier's flags cell (bits [15:8] are a
/// GICv2 PPI CPU mask, meaningless on GICv3).
pub const IRQ_TYPE_MASK: u32 = 0xf;
pub const IRQ_TYPE_NONE: u32 = 0;
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// `#interrupt-cells` of the GIC binding when a controller does not say.
const DEFAULT_INTERRUPT_CELLS: u32 = 3;
/// A GIC specifier needs at least `<type number>`.
const MIN_GIC_INTERRUPT_CELLS: u32 = 2;
/// The timer binding lists secure phys, non-secure phys, virtual, hyp phys (and
/// optionally hyp virtual) in this order.
const TIMER_INTERRUPTS: usize = 4;
/// `#redistributor-regions` when absent: one contiguous redistributor region.
const DEFAULT_REDIST_REGIONS: u32 = 1;

/// What Bothy needs to know about the machine it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Every `reg` entry of every `/memory` node (`device_type = "memory"`), sizes > 0.
    pub memory: Vec<Region>,
    /// `/memreserve/` entries, then the `reg` of each enabled `/reserved-memory` child.
    /// (Reservations that only give a size for the OS to allocate are not included.)
    pub reserved: Vec<Region>,
    /// `/cpus/cpu@*` nodes with `device_type = "cpu"`, in tree order.
    pub cpus: Vec<Cpu>,
    pub gic: GicV3,
    pub timer: TimerIrqs,
    /// The console from `/chosen/stdout-path`; `None` when there is none.
    pub uart: Option<Uart>,
    pub psci: Option<Psci>,
    /// The PMU's overflow interrupt, if the tree describes a PMU whose interrupt Bothy
    /// can hand to guests (see [`Pmu`]).
    pub pmu: Option<Pmu>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// The affinity fields of `MPIDR_EL1`, from `reg` (1 or 2 cells).
    pub mpidr: u64,
    pub enable_method: EnableMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    Psci,
    SpinTable {
        release_addr: u64,
    },
    /// Missing or unknown `enable-method` (the boot CPU often has none).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GicV3 {
    pub dist: Region,
    pub redists: Vec<Region>,
    pub redist_stride: Option<u64>,
    /// The virtual-CPU-interface maintenance interrupt, a PPI number (0..16).
    pub maintenance_ppi: Option<u32>,
}

/// Architected-timer PPI numbers (0..16; INTID = 16 + n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerIrqs {
    pub secure_phys: u32,
    pub phys: u32,
    pub virt: u32,
    pub hyp_phys: u32,
}

/// A PMU's overflow interrupt: one PPI (0..16; INTID = 16 + n), level-high. Only a
/// PPI can follow a vCPU from CPU to CPU (each CPU's PMU raises the same INTID on its
/// own redistributor), and Bothy delivers it as a level-sensitive hardware-linked
/// interrupt, so a PMU wired to per-CPU SPIs (`interrupt-affinity`), or declared
/// edge-triggered, is not offered to guests (`pmu` is `None` for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pmu {
    pub ppi: u32,
}

impl Pmu {
    /// Its INTID.
    pub fn intid(self) -> u32 {
        self.ppi + PPI_INTID_BASE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    pub base: u64,
    pub size: u64,
    /// SPI number (INTID = 32 + n) from `<0 n flags>`, if the UART has one.
    pub spi: Option<u32>,
    pub kind: UartKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    Pl011,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Psci {
    pub conduit: Conduit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    Smc,
    Hvc,
}

/// Why the firmware's DTB cannot run Bothy; each message names the node or property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    Fdt(FdtError),
    NoMemory,
    MemoryWithoutReg {
        node: String,
    },
    NoCpus,
    CpuWithoutReg {
        node: String,
    },
    SpinTableWithoutReleaseAddr {
        node: String,
    },
    /// No enabled `arm,gic-v3`; `found` names a GICv2 node if there is one.
    NoGicV3 {
        found: Option<(String, String)>,
    },
    GicBadReg {
        node: String,
        needed: usize,
        found: usize,
    },
    NoTimer,
    BadInterrupts {
        node: String,
        why: &'static str,
    },
    StdoutNotFound {
        path: String,
    },
    StdoutWithoutReg {
        node: String,
    },
    /// `reg` cannot be translated to a CPU address (an ancestor lacks `ranges`).
    NotReachable {
        node: String,
    },
    BadPsciMethod {
        node: String,
        method: Option<String>,
    },
}

impl From<FdtError> for PlatformError {
    fn from(e: FdtError) -> Self {
        Self::Fdt(e)
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fdt(e) => write!(f, "{e}"),
            Self::NoMemory => write!(f, "device tree has no /memory node"),
            Self::MemoryWithoutReg { node } => {
                write!(f, "memory node {node} has no reg with a non-zero size")
            }
            Self::NoCpus => write!(f, "device tree has no /cpus node with cpu children"),
            Self::CpuWithoutReg { node } => write!(f, "cpu node {node} has no reg"),
            Self::SpinTableWithoutReleaseAddr { node } => write!(
                f,
                "cpu node {node} has enable-method \"spin-table\" but no cpu-release-addr"
            ),
            Self::NoGicV3 { found } => {
                write!(
                    f,
                    "device tree has no GICv3 (compatible \"{GIC_V3_COMPATIBLE}\") interrupt \
                     controller; Bothy needs GICv3"
                )?;
                if let Some((node, compatible)) = found {
                    write!(f, " (found {node}, compatible \"{compatible}\": a GICv2)")?;
                }
                Ok(())
            }
            Self::GicBadReg {
                node,
                needed,
                found,
            } => write!(
                f,
                "GICv3 node {node}: reg has {found} region(s) but the distributor and \
                 #redistributor-regions need {needed}"
            ),
            Self::NoTimer => {
                write!(
                    f,
                    "device tree has no \"{TIMER_COMPATIBLE}\" architected timer node"
                )
            }
            Self::BadInterrupts { node, why } => write!(f, "node {node}: interrupts {why}"),
            Self::StdoutNotFound { path } => {
                write!(
                    f,
                    "/chosen/stdout-path \"{path}\" does not name a node or alias"
                )
            }
            Self::StdoutWithoutReg { node } => {
                write!(
                    f,
                    "console node {node} (from /chosen/stdout-path) has no reg"
                )
            }
            Self::NotReachable { node } => write!(
                f,
                "node {node}: reg is not reachable from the CPU (a parent bus has no \
                 matching ranges)"
            ),
            Self::BadPsciMethod { node, method } => match method {
                Some(m) => {
                    write!(
                        f,
                        "PSCI node {node}: method \"{m}\" is neither \"smc\" nor \"hvc\""
                    )
                }
                None => write!(f, "PSCI node {node} has no method property"),
            },
        }
    }
}

impl core::error::Error for PlatformError {}

impl Platform {
    /// Reads everything Bothy needs from the firmware's device tree.
    pub fn discover(fdt: &Fdt) -> Result<Platform, PlatformError> {
        let gic_node = find_gic(fdt)?;
        Ok(Platform {
            memory: memory(fdt)?,
            reserved: reserved(fdt)?,
            cpus: cpus(fdt)?,
            gic: gic(fdt, &gic_node)?,
            timer: timer(fdt)?,
            uart: uart(fdt)?,
            psci: psci(fdt)?,
            pmu: pmu(fdt),
        })
    }
}

fn memory(fdt: &Fdt) -> Result<Vec<Region>, PlatformError> {
    let mut memory = Vec::new();
    let mut any_node = false;
    for node in fdt.root().children() {
        if node.device_type() != Some("memory") || !node.is_enabled() {
            continue;
        }
        any_node = true;
        let regions: Vec<Region> = translated_reg(&node)?
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.size != 0)
            .collect();
        if regions.is_empty() {
            return Err(PlatformError::MemoryWithoutReg {
                node: format!("/{}", node.name()),
            });
        }
        memory.extend(regions);
    }
    if !any_node {
        return Err(PlatformError::NoMemory);
    }
    Ok(memory)
}

fn reserved(fdt: &Fdt) -> Result<Vec<Region>, PlatformError> {
    let mut reserved: Vec<Region> = fdt.memory_reservations().collect();
    if let Some(rm) = fdt.root().child("reserved-memory") {
        for child in rm.children().filter(|c| c.is_enabled()) {
            // Nodes with only `size`/`alloc-ranges` are placed by the OS: none to honour.
            if let Some(reg) = child.reg()? {
                reserved.extend(reg.filter(|r| r.size != 0));
            }
        }
    }
    Ok(reserved)
}

fn cpus(fdt: &Fdt) -> Result<Vec<Cpu>, PlatformError> {
    let cpus_node = fdt.root().child("cpus").ok_or(PlatformError::NoCpus)?;
    let mut cpus = Vec::new();
    for node in cpus_node.children() {
        let failed = node
            .property_str("status")
            .is_some_and(|s| s.starts_with("fail"));
        if node.device_type() != Some("cpu") || failed {
            continue; // cpu-map, l2-cache, idle-states ...
        }
        let path = format!("/cpus/{}", node.name());
        let mpidr = node
            .reg()?
            .and_then(|mut r| r.next())
            .map(|r| r.base)
            .ok_or_else(|| PlatformError::CpuWithoutReg { node: path.clone() })?;
        let enable_method = match node.property_str("enable-method") {
            Some("psci") => EnableMethod::Psci,
            Some("spin-table") => EnableMethod::SpinTable {
                release_addr: node
                    .property("cpu-release-addr")
                    .and_then(|p| p.as_uint())
                    .ok_or(PlatformError::SpinTableWithoutReleaseAddr { node: path })?,
            },
            _ => EnableMethod::Other,
        };
        cpus.push(Cpu {
            mpidr,
            enable_method,
        });
    }
    if cpus.is_empty() {
        return Err(PlatformError::NoCpus);
    }
    Ok(cpus)
}

fn find_gic<'a>(fdt: &Fdt<'a>) -> Result<Node<'a>, PlatformError> {
    if let Some(gic) = fdt
        .compatible_nodes(GIC_V3_COMPATIBLE)
        .find(|n| n.is_enabled())
    {
        return Ok(gic);
    }
    let found = fdt.nodes().filter(|n| n.is_enabled()).find_map(|n| {
        let c = n.compatible().find(|c| GIC_V2_COMPATIBLES.contains(c))?;
        Some((n.name().to_string(), c.to_string()))
    });
    Err(PlatformError::NoGicV3 { found })
}

fn gic(fdt: &Fdt, node: &Node) -> Result<GicV3, PlatformError> {
    let name = node.name().to_string();
    let regs = translated_reg(node)?.unwrap_or_default();
    let redist_regions = node
        .property_u32("#redistributor-regions")
        .unwrap_or(DEFAULT_REDIST_REGIONS);
    // Bounded by the number of regions actually present, so a huge count cannot
    // make us allocate or loop.
    let needed = usize::try_from(redist_regions)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    if redist_regions == 0 || regs.len() < needed {
        return Err(PlatformError::GicBadReg {
            node: name,
            needed,
            found: regs.len(),
        });
    }
    let maintenance_ppi = match interrupts(fdt, node)?.first() {
        Some(&(GIC_PPI, n)) if n < PPI_COUNT => Some(n),
        Some(_) => {
            return Err(PlatformError::BadInterrupts {
                node: name,
                why: "(maintenance interrupt) must be a PPI below 16",
            })
        }
        None => None,
    };
    Ok(GicV3 {
        dist: regs[0],
        redists: regs[1..needed].to_vec(),
        redist_stride: node
            .property("redistributor-stride")
            .and_then(|p| p.as_uint()),
        maintenance_ppi,
    })
}

fn timer(fdt: &Fdt) -> Result<TimerIrqs, PlatformError> {
    let node = fdt
        .compatible_nodes(TIMER_COMPATIBLE)
        .find(|n| n.is_enabled())
        .ok_or(PlatformError::NoTimer)?;
    let irqs = interrupts(fdt, &node)?;
    let bad = |why| PlatformError::BadInterrupts {
        node: node.name().to_string(),
        why,
    };
    if irqs.len() < TIMER_INTERRUPTS {
        return Err(bad(
            "must list 4 timer PPIs (secure, non-secure, virtual, hyp)",
        ));
    }
    let mut ppi = [0u32; TIMER_INTERRUPTS];
    for (slot, &(kind, n)) in ppi.iter_mut().zip(&irqs) {
        if kind != GIC_PPI || n >= PPI_COUNT {
            return Err(bad("of the timer must all be PPIs below 16"));
        }
        *slot = n;
    }
    let [secure_phys, phys, virt, hyp_phys] = ppi;
    Ok(TimerIrqs {
        secure_phys,
        phys,
        virt,
        hyp_phys,
    })
}

/// The first enabled PMUv3 node's overflow interrupt, when it is one level-high PPI
/// (a flags cell of 0, or none, is taken as level-high: the binding's only choice for a
/// PMU PPI). Bothy runs without a PMU for guests otherwise, so a PMU node it cannot use,
/// malformed ones included, is no error.
fn pmu(fdt: &Fdt) -> Option<Pmu> {
    let cpu_pmu = |c: &str| {
        c == PMU_COMPATIBLE
            || (c.ends_with("-pmu") && CPU_PMU_PREFIXES.iter().any(|p| c.starts_with(p)))
    };
    let node = fdt
        .nodes()
        .find(|n| n.is_enabled() && n.compatible().any(cpu_pmu))?;
    let specs = interrupt_specs(fdt, &node).ok()?;
    let &(kind, ppi, flags) = specs.first()?;
    let level_high = matches!(
        flags.map(|f| f & IRQ_TYPE_MASK),
        None | Some(IRQ_TYPE_NONE) | Some(IRQ_TYPE_LEVEL_HIGH)
    );
    (kind == GIC_PPI && ppi < PPI_COUNT && level_high).then_some(Pmu { ppi })
}

fn uart(fdt: &Fdt) -> Result<Option<Uart>, PlatformError> {
    let Some((path, _options)) = fdt.stdout_path() else {
        return Ok(None);
    };
    let node = fdt
        .find_node(path)
        .ok_or_else(|| PlatformError::StdoutNotFound {
            path: path.to_string(),
        })?;
    let region = translated_reg(&node)?
        .and_then(|r| r.first().copied())
        .ok_or_else(|| PlatformError::StdoutWithoutReg {
            node: path.to_string(),
        })?;
    let spi = match interrupts(fdt, &node)?.first() {
        Some(&(GIC_SPI, n)) => Some(n),
        _ => None,
    };
    let kind = if node.is_compatible(PL011_COMPATIBLE) {
        UartKind::Pl011
    } else {
        UartKind::Unknown
    };
    Ok(Some(Uart {
        base: region.base,
        size: region.size,
        spi,
        kind,
    }))
}

fn psci(fdt: &Fdt) -> Result<Option<Psci>, PlatformError> {
    let Some(node) = fdt
        .nodes()
        .find(|n| n.is_enabled() && PSCI_COMPATIBLES.iter().any(|c| n.is_compatible(c)))
    else {
        return Ok(None);
    };
    let conduit = match node.property_str("method") {
        Some("smc") => Conduit::Smc,
        Some("hvc") => Conduit::Hvc,
        other => {
            return Err(PlatformError::BadPsciMethod {
                node: node.name().to_string(),
                method: other.map(str::to_string),
            })
        }
    };
    Ok(Some(Psci { conduit }))
}

/// `reg` in CPU physical addresses; an error if present but unreachable.
fn translated_reg(node: &Node) -> Result<Option<Vec<Region>>, PlatformError> {
    match (node.reg()?.is_some(), node.reg_translated()?) {
        (false, _) => Ok(None),
        (true, Some(regs)) => Ok(Some(regs)),
        (true, None) => Err(PlatformError::NotReachable {
            node: node.name().to_string(),
        }),
    }
}

/// The `(type, number)` pairs of `node`'s `interrupts`, using the `#interrupt-cells` of
/// its interrupt parent (inherited from ancestors; the GIC binding's 3 if unresolvable).
fn interrupts(fdt: &Fdt, node: &Node) -> Result<Vec<(u32, u32)>, PlatformError> {
    Ok(interrupt_specs(fdt, node)?
        .into_iter()
        .map(|(kind, n, _)| (kind, n))
        .collect())
}

/// `interrupts` as `(type, number, flags)`; flags is `None` with 2-cell specifiers.
fn interrupt_specs(fdt: &Fdt, node: &Node) -> Result<Vec<(u32, u32, Option<u32>)>, PlatformError> {
    let Some(prop) = node.property("interrupts") else {
        return Ok(Vec::new());
    };
    let bad = |why| PlatformError::BadInterrupts {
        node: node.name().to_string(),
        why,
    };
    let cells = interrupt_parent(fdt, node)
        .and_then(|p| p.property_u32("#interrupt-cells"))
        .unwrap_or(DEFAULT_INTERRUPT_CELLS);
    if cells < MIN_GIC_INTERRUPT_CELLS {
        return Err(bad("use fewer than 2 cells, which is not the GIC format"));
    }
    let values: Vec<u32> = prop
        .as_u32_iter()
        .ok_or(bad("is not a whole number of cells"))?
        .collect();
    let chunk = usize::try_from(cells).unwrap_or(usize::MAX);
    if !values.len().is_multiple_of(chunk) {
        return Err(bad("is not a whole number of interrupt specifiers"));
    }
    Ok(values
        .chunks_exact(chunk)
        .map(|s| (s[0], s[1], s.get(2).copied()))
        .collect())
}

/// The node's interrupt parent: its own or the nearest ancestor's `interrupt-parent`
/// phandle. An interrupt controller with no `interrupt-parent` is its own parent.
fn interrupt_parent<'a>(fdt: &Fdt<'a>, node: &Node<'a>) -> Option<Node<'a>> {
    if let Some(ph) = node.property_u32("interrupt-parent") {
        return fdt.node_by_phandle(ph);
    }
    if node.has_property("interrupt-controller") {
        return Some(*node);
    }
    let ancestors = node.ancestors()?;
    let ph = ancestors
        .iter()
        .rev()
        .find_map(|a| a.property_u32("interrupt-parent"))?;
    fdt.node_by_phandle(ph)
}

#[cfg(test)]
mod tests;
