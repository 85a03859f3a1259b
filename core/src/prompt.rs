//! Bothy's own console prompt, `bothy> `, and the escape that opens it.
//!
//! All VMs share one physical UART. Its input normally goes to the VM that has
//! the console focus; [`Prompt`] sits in front of that and watches for the
//! escape: [`ESCAPE_COUNT`] Ctrl-\ bytes ([`ESCAPE`]) in a row. A single Ctrl-\
//! is a real key to a guest (SIGQUIT in a shell), so it cannot be the escape on
//! its own; three in a row are unlikely to be meant for the guest. Until a run of
//! Ctrl-\ is either complete or broken, its bytes are *held back*: if another
//! byte follows, the held bytes are released to the guest together with it, in
//! the order they were typed; if the run completes, they are dropped and the
//! prompt opens. A user who presses Ctrl-\ once and then waits would see nothing
//! happen, so the hyp may release held bytes after a quiet spell
//! ([`Prompt::take_held`]). Ctrl-] (focus switching) is the hyp's business;
//! `Prompt` forwards it like any byte, so the hyp can feed every byte here first
//! and act on Ctrl-] when it shows up among the guest bytes, which keeps held
//! bytes ahead of it.
//!
//! While the prompt is open the bytes are a command line: printable ASCII is
//! echoed, backspace (DEL or BS) and Ctrl-U erase, CR or LF ends the line (a
//! CRLF pair counts once, even when the line closed the prompt: the LF never
//! reaches the guest), other control bytes are ignored, and the line stops
//! taking characters at [`LINE_MAX`]. The finished line is parsed here
//! ([`parse`]) into a [`Command`] naming VMs by their index in the caller's
//! list of names. `console NAME` and `resume` close the prompt themselves; the
//! escape again closes it from any point of a line.
//!
//! Every call returns a [`Feed`], which is all the hyp needs to act; nothing
//! here prints, allocates or blocks, so it runs on the interrupt exit that read
//! the byte. The `list` command's output is formatted by [`format_list`] from
//! plain status structs the hyp fills in ([`VmStatus`], [`VcpuStatus`]).
//!
//! Text for the hyp to print ([`HELP`], [`format_list`], error messages) ends
//! its lines with `\n` alone, as Bothy's console writer adds the `\r`. Echo
//! bytes ([`Echo`]) are raw terminal bytes, to be written as they are.

use core::fmt::{self, Write};

/// Ctrl-\ (FS).
pub const ESCAPE: u8 = 0x1c;
/// How many [`ESCAPE`] bytes in a row open (and close) the prompt.
pub const ESCAPE_COUNT: usize = 3;
/// Printed when the prompt opens and after each line while it stays open.
pub const PROMPT: &str = "bothy> ";
/// Longest command line; characters typed beyond it are ignored.
pub const LINE_MAX: usize = 80;

/// One line per command, for `help`.
pub const HELP: &str = "\
list, ls             VMs and their vCPUs: state, CPU, pinning, CPU time, exits
stop NAME            power VM NAME off
start NAME           boot VM NAME
restart NAME         reset VM NAME and boot it again
destroy NAME         take stopped VM NAME apart (memory, VMID, vCPUs go back)
create NAME          build destroyed VM NAME again and boot it
console NAME         send console input to VM NAME and leave the prompt
help, ?              this list
resume, exit, quit   leave the prompt; input goes back to the focused VM
Ctrl-\\ 3 times       leave the prompt (from a VM's console: open it)
";

const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;
/// Ctrl-U (NAK): erase the whole line, as in a shell.
const KILL_LINE: u8 = 0x15;
const CR: u8 = b'\r';
const LF: u8 = b'\n';
/// Back over a character, blank it, and back again.
const ERASE: [u8; 3] = *b"\x08 \x08";

/// Up to [`ESCAPE_COUNT`] bytes, inline so that a [`Feed`] never allocates.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    buf: [u8; ESCAPE_COUNT],
    len: u8,
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn escapes(count: u8) -> Self {
        let mut bytes = Self::default();
        for _ in 0..count {
            bytes.push(ESCAPE);
        }
        bytes
    }

    fn from_slice(bytes: &[u8]) -> Self {
        let mut out = Self::default();
        bytes.iter().for_each(|&b| out.push(b));
        out
    }

    /// Callers never exceed the capacity (at most ESCAPE_COUNT - 1 held bytes
    /// plus one); a byte past it would be dropped rather than panic.
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = byte;
            self.len += 1;
        }
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Terminal bytes that show the effect of an edit: `bytes` written `times`
/// times (erasing a whole line is one erase per character).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    bytes: Bytes,
    times: u8,
}

impl Echo {
    fn once(bytes: &[u8]) -> Self {
        Self::repeated(bytes, 1)
    }

    fn repeated(bytes: &[u8], times: u8) -> Self {
        Self {
            bytes: Bytes::from_slice(bytes),
            times,
        }
    }

    /// Every byte to write, in order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        let one = self.bytes.as_slice();
        one.iter()
            .copied()
            .cycle()
            .take(one.len() * usize::from(self.times))
    }
}

/// What to do with one input byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed<'n> {
    /// Nothing to do: a Ctrl-\ held back, an ignored control byte, a character
    /// past [`LINE_MAX`], a backspace at an empty line, the LF of a CRLF.
    Nothing,
    /// Prompt closed: forward these bytes, in order, to the focused VM.
    Guest(Bytes),
    /// The escape opened the prompt: start a new line and print [`PROMPT`].
    /// Hold guest output (`dev::outbuf`) until it closes.
    Opened,
    /// Line editing: write these bytes to the terminal.
    Echo(Echo),
    /// A blank line ended: start a new line and print [`PROMPT`] again.
    Empty,
    /// A line ended: start a new line, carry the command out (or print the
    /// error on a line of its own), then print [`PROMPT`] if
    /// [`Prompt::is_open`] (`console` and `resume` have closed it).
    Command(Result<Command, PromptError<'n>>),
    /// The escape closed the prompt, discarding any partial line: start a new
    /// line and let guest output flow again.
    Closed,
}

/// A parsed command line. VMs are indices into the `vm_names` given to
/// [`parse`] / [`Prompt::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `list` / `ls`: print [`format_list`].
    List,
    Stop(usize),
    Start(usize),
    Restart(usize),
    /// Take a stopped VM apart (memory, VMID, vCPUs returned to the machine).
    Destroy(usize),
    /// Build a destroyed VM again from its description in the system file.
    Create(usize),
    /// Give this VM the console input; the prompt has closed.
    Console(usize),
    /// `help` / `?`: print [`HELP`].
    Help,
    /// `resume` / `exit` / `quit`: back to the focused VM; the prompt has closed.
    Resume,
}

/// Why a line is not a command. `Display` gives the one-line message to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptError<'n> {
    /// Only whitespace ([`Prompt::feed`] reports that as [`Feed::Empty`]).
    NoCommand,
    UnknownCommand(Word),
    /// A command that acts on a VM was given none.
    MissingName {
        command: &'static str,
    },
    UnknownVm {
        name: Word,
        vms: &'n [&'n str],
    },
    /// A word after all the arguments `command` takes.
    ExtraArgument {
        command: &'static str,
        extra: Word,
        takes_name: bool,
    },
}

impl fmt::Display for PromptError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommand => write!(f, "no command; type help"),
            Self::UnknownCommand(word) => write!(f, "unknown command \"{word}\"; type help"),
            Self::MissingName { command } => write!(f, "{command} needs a VM name"),
            Self::UnknownVm { name, vms } => {
                write!(f, "no VM named \"{name}\" ")?;
                if vms.is_empty() {
                    return write!(f, "(there are no VMs)");
                }
                write!(f, "(VMs: ")?;
                for (i, vm) in vms.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{vm}")?;
                }
                write!(f, ")")
            }
            Self::ExtraArgument {
                command,
                extra,
                takes_name,
            } => {
                let takes = if *takes_name {
                    "one VM name"
                } else {
                    "no arguments"
                };
                write!(f, "unexpected \"{extra}\": {command} takes {takes}")
            }
        }
    }
}

/// A word from a command line, copied so that an error outlives the line
/// buffer without allocating. Longer words (only possible through [`parse`];
/// the prompt's lines are capped) are cut at [`LINE_MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Word {
    buf: [u8; LINE_MAX],
    len: u8,
}

impl Word {
    fn new(word: &str) -> Self {
        let mut end = word.len().min(LINE_MAX);
        while !word.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0; LINE_MAX];
        buf[..end].copy_from_slice(&word.as_bytes()[..end]);
        Self {
            buf,
            len: end as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Cut at a character boundary of a `str`, so always valid.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a command word takes after it.
#[derive(Clone, Copy)]
enum Takes {
    Nothing(Command),
    /// One VM name; the command is built from its index.
    Vm(fn(usize) -> Command),
}

/// Every spelling the prompt accepts, aliases included.
const VERBS: &[(&str, Takes)] = &[
    ("list", Takes::Nothing(Command::List)),
    ("ls", Takes::Nothing(Command::List)),
    ("stop", Takes::Vm(Command::Stop)),
    ("start", Takes::Vm(Command::Start)),
    ("restart", Takes::Vm(Command::Restart)),
    ("destroy", Takes::Vm(Command::Destroy)),
    ("create", Takes::Vm(Command::Create)),
    ("console", Takes::Vm(Command::Console)),
    ("help", Takes::Nothing(Command::Help)),
    ("?", Takes::Nothing(Command::Help)),
    ("resume", Takes::Nothing(Command::Resume)),
    ("exit", Takes::Nothing(Command::Resume)),
    ("quit", Takes::Nothing(Command::Resume)),
];

/// Parse one command line. Words are separated by any ASCII whitespace;
/// command words and VM names match exactly (case included).
pub fn parse<'n>(line: &str, vm_names: &'n [&'n str]) -> Result<Command, PromptError<'n>> {
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Err(PromptError::NoCommand);
    };
    let Some(&(command, takes)) = VERBS.iter().find(|(spelling, _)| *spelling == first) else {
        return Err(PromptError::UnknownCommand(Word::new(first)));
    };
    let build = match takes {
        Takes::Nothing(cmd) => {
            return match words.next() {
                None => Ok(cmd),
                Some(extra) => Err(PromptError::ExtraArgument {
                    command,
                    extra: Word::new(extra),
                    takes_name: false,
                }),
            }
        }
        Takes::Vm(build) => build,
    };
    let Some(name) = words.next() else {
        return Err(PromptError::MissingName { command });
    };
    if let Some(extra) = words.next() {
        return Err(PromptError::ExtraArgument {
            command,
            extra: Word::new(extra),
            takes_name: true,
        });
    }
    match vm_names.iter().position(|n| *n == name) {
        Some(vm) => Ok(build(vm)),
        None => Err(PromptError::UnknownVm {
            name: Word::new(name),
            vms: vm_names,
        }),
    }
}

/// The escape detector and line editor; one for the machine's console.
pub struct Prompt {
    open: bool,
    /// [`ESCAPE`] bytes in a row so far; while closed, they are held back.
    escapes: u8,
    line: [u8; LINE_MAX],
    /// Printable ASCII only, so `line[..len]` is always a `str`.
    len: u8,
    /// The last byte was a CR that ended a line, so an LF now is its pair.
    after_cr: bool,
}

impl Default for Prompt {
    fn default() -> Self {
        Self::new()
    }
}

impl Prompt {
    /// Closed: input goes to the guests.
    pub const fn new() -> Self {
        Self {
            open: false,
            escapes: 0,
            line: [0; LINE_MAX],
            len: 0,
            after_cr: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Open without the escape (say, when no VM is left running). Any held
    /// Ctrl-\ is dropped, as if it had been the start of the escape.
    pub fn open(&mut self) {
        self.open = true;
        self.escapes = 0;
        self.len = 0;
    }

    /// Close, discarding a partial line.
    pub fn close(&mut self) {
        self.open = false;
        self.escapes = 0;
        self.len = 0;
    }

    /// The line typed so far, to redraw it after [`PROMPT`] when a hypervisor
    /// message has interrupted it.
    pub fn line(&self) -> &str {
        core::str::from_utf8(&self.line[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Release the Ctrl-\ bytes held back while closed, for the guest. For a
    /// hyp that stops waiting for the rest of an escape after a quiet spell.
    /// While open there is nothing to release (empty).
    pub fn take_held(&mut self) -> Bytes {
        if self.open {
            return Bytes::default();
        }
        Bytes::escapes(core::mem::take(&mut self.escapes))
    }

    /// Take one input byte. `vm_names` (indexed as [`Command`] reports VMs) is
    /// only consulted when the byte ends a command line.
    pub fn feed<'n>(&mut self, byte: u8, vm_names: &'n [&'n str]) -> Feed<'n> {
        let after_cr = core::mem::take(&mut self.after_cr);
        if byte == ESCAPE {
            self.escapes += 1;
            if usize::from(self.escapes) < ESCAPE_COUNT {
                return Feed::Nothing;
            }
            return if self.open {
                self.close();
                Feed::Closed
            } else {
                self.open();
                Feed::Opened
            };
        }
        let held = core::mem::take(&mut self.escapes);
        if byte == LF && after_cr {
            return Feed::Nothing;
        }
        if !self.open {
            let mut bytes = Bytes::escapes(held);
            bytes.push(byte);
            return Feed::Guest(bytes);
        }
        // Open: held Ctrl-\ bytes were control bytes on a command line, ignored.
        match byte {
            CR | LF => {
                self.after_cr = byte == CR;
                self.end_line(vm_names)
            }
            BACKSPACE | DELETE if self.len > 0 => {
                self.len -= 1;
                Feed::Echo(Echo::once(&ERASE))
            }
            KILL_LINE if self.len > 0 => {
                let erased = core::mem::take(&mut self.len);
                Feed::Echo(Echo::repeated(&ERASE, erased))
            }
            b' '..=b'~' if usize::from(self.len) < LINE_MAX => {
                self.line[usize::from(self.len)] = byte;
                self.len += 1;
                Feed::Echo(Echo::once(&[byte]))
            }
            _ => Feed::Nothing,
        }
    }

    fn end_line<'n>(&mut self, vm_names: &'n [&'n str]) -> Feed<'n> {
        let line = self.line();
        if line.trim_ascii().is_empty() {
            self.len = 0;
            return Feed::Empty;
        }
        let result = parse(line, vm_names);
        self.len = 0;
        if matches!(result, Ok(Command::Console(_) | Command::Resume)) {
            self.close();
        }
        Feed::Command(result)
    }
}

/// Where a vCPU stands with the scheduler, for `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRunState {
    Running,
    /// Ready, waiting for a physical CPU.
    Runnable,
    /// In WFI or waiting for an event.
    Blocked,
    Off,
}

impl VcpuRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Runnable => "runnable",
            Self::Blocked => "blocked",
            Self::Off => "off",
        }
    }
}

/// How often a vCPU left the guest, by cause, since the VM was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    pub hypercall: u64,
    pub mmio: u64,
    pub sysreg: u64,
    pub wfx: u64,
    pub irq: u64,
    pub other: u64,
}

impl ExitCounts {
    pub fn total(&self) -> u64 {
        self.hypercall + self.mmio + self.sysreg + self.wfx + self.irq + self.other
    }
}

/// One vCPU as `list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStatus {
    pub state: VcpuRunState,
    /// The physical CPU it runs on now, or ran on last; `None` if never run.
    pub cpu: Option<usize>,
    /// Whether it is in the guest on `cpu` at this moment.
    pub running_now: bool,
    /// The physical CPU it is pinned to, if any.
    pub pinned: Option<usize>,
    /// Every physical CPU it has run on, bit per CPU (shown for shared vCPUs).
    pub ran_on: u64,
    pub exits: ExitCounts,
    /// Generic-counter ticks spent in the guest.
    pub cpu_ticks: u64,
}

/// One VM as `list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmStatus<'a> {
    pub name: &'a str,
    /// As the user should read it: "running", "off", "halted", "crashed", ...
    pub state: &'a str,
    pub vcpus: &'a [VcpuStatus],
}

/// Column starts of the `list` table. A value wider than its column pushes the
/// rest of its line right by the overflow, one space kept.
const COL_STATE: usize = 10;
const COL_CPU: usize = 20;
const COL_PINNING: usize = 32;
const COL_TIME: usize = 45;
const COL_EXITS: usize = 56;

/// The `list` output: a header, then each VM and, indented under it, each of
/// its vCPUs. CPU time is in milliseconds, truncated to a tenth, from
/// `cpu_ticks / counter_hz` (`?` if the frequency is unknown, 0). Exits are the
/// total, then the nonzero kinds.
pub fn format_list(
    out: &mut impl fmt::Write,
    vms: &[VmStatus<'_>],
    counter_hz: u64,
) -> fmt::Result {
    let mut out = Columns { out, col: 0 };
    out.write_str("VM")?;
    out.tab(COL_STATE)?;
    out.write_str("STATE")?;
    out.tab(COL_CPU)?;
    out.write_str("CPU")?;
    out.tab(COL_PINNING)?;
    out.write_str("PINNING")?;
    out.tab(COL_TIME)?;
    out.write_str("CPU TIME")?;
    out.tab(COL_EXITS)?;
    out.write_str("EXITS\n")?;
    for vm in vms {
        out.write_str(vm.name)?;
        out.tab(COL_STATE)?;
        out.write_str(vm.state)?;
        out.tab(COL_CPU)?;
        let plural = if vm.vcpus.len() == 1 { "" } else { "s" };
        writeln!(out, "{} vCPU{plural}", vm.vcpus.len())?;
        for (i, vcpu) in vm.vcpus.iter().enumerate() {
            write!(out, "  vcpu {i}")?;
            out.tab(COL_STATE)?;
            out.write_str(vcpu.state.as_str())?;
            out.tab(COL_CPU)?;
            match (vcpu.cpu, vcpu.running_now) {
                (Some(cpu), true) => write!(out, "cpu {cpu}")?,
                (Some(cpu), false) => write!(out, "last cpu {cpu}")?,
                (None, _) => out.write_str("-")?,
            }
            out.tab(COL_PINNING)?;
            match vcpu.pinned {
                Some(cpu) => write!(out, "pinned to {cpu}")?,
                None => {
                    out.write_str("shared")?;
                    write_cpu_set(&mut out, vcpu.ran_on)?;
                }
            }
            out.tab(COL_TIME)?;
            write_ms(&mut out, vcpu.cpu_ticks, counter_hz)?;
            out.tab(COL_EXITS)?;
            write_exits(&mut out, &vcpu.exits)?;
            out.write_str("\n")?;
        }
    }
    Ok(())
}

/// " on 0,1" for the CPUs in `mask`, nothing for none.
fn write_cpu_set(out: &mut impl fmt::Write, mask: u64) -> fmt::Result {
    let mut sep = " on ";
    for cpu in (0..64).filter(|c| mask & (1 << c) != 0) {
        write!(out, "{sep}{cpu}")?;
        sep = ",";
    }
    Ok(())
}

fn write_ms(out: &mut impl fmt::Write, ticks: u64, counter_hz: u64) -> fmt::Result {
    if counter_hz == 0 {
        return out.write_str("? ms");
    }
    // u128: ticks * 10_000 overflows u64 after about 21 days at 1 GHz.
    let tenths = u128::from(ticks) * 10_000 / u128::from(counter_hz);
    write!(out, "{}.{} ms", tenths / 10, tenths % 10)
}

fn write_exits(out: &mut impl fmt::Write, exits: &ExitCounts) -> fmt::Result {
    write!(out, "{}", exits.total())?;
    let kinds = [
        ("hvc", exits.hypercall),
        ("mmio", exits.mmio),
        ("sys", exits.sysreg),
        ("wfx", exits.wfx),
        ("irq", exits.irq),
        ("other", exits.other),
    ];
    let mut open = false;
    for (label, count) in kinds {
        if count == 0 {
            continue;
        }
        out.write_str(if open { " " } else { " (" })?;
        write!(out, "{label} {count}")?;
        open = true;
    }
    if open {
        out.write_str(")")?;
    }
    Ok(())
}

/// A writer that knows its column, so `format_list` can align without
/// formatting into a temporary buffer.
struct Columns<'w, W: fmt::Write> {
    out: &'w mut W,
    col: usize,
}

impl<W: fmt::Write> Columns<'_, W> {
    /// Pad to `col`, or by one space if the line is already past it.
    fn tab(&mut self, col: usize) -> fmt::Result {
        for _ in 0..col.saturating_sub(self.col).max(1) {
            self.write_str(" ")?;
        }
        Ok(())
    }
}

impl<W: fmt::Write> fmt::Write for Columns<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.col = match s.rfind('\n') {
            Some(i) => s[i + 1..].chars().count(),
            None => self.col + s.chars().count(),
        };
        self.out.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    const VMS: &[&str] = &["linux", "rtos"];

    fn feed_all<'n>(p: &mut Prompt, input: &[u8], names: &'n [&'n str]) -> Vec<Feed<'n>> {
        input.iter().map(|&b| p.feed(b, names)).collect()
    }

    /// The bytes a closed prompt forwards for `input`.
    fn guest_bytes(p: &mut Prompt, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for feed in feed_all(p, input, VMS) {
            if let Feed::Guest(bytes) = feed {
                out.extend_from_slice(bytes.as_slice());
            }
        }
        out
    }

    /// The terminal bytes an open prompt echoes for `input`.
    fn echoed(p: &mut Prompt, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for feed in feed_all(p, input, VMS) {
            if let Feed::Echo(echo) = feed {
                out.extend(echo.iter());
            }
        }
        out
    }

    fn opened() -> Prompt {
        let mut p = Prompt::new();
        p.open();
        p
    }

    /// The result of typing `line` and CR at an open prompt.
    fn run(line: &str) -> Result<Command, String> {
        let mut p = opened();
        let mut feeds = feed_all(&mut p, line.as_bytes(), VMS);
        feeds.push(p.feed(CR, VMS));
        match feeds.pop() {
            Some(Feed::Command(result)) => result.map_err(|e| e.to_string()),
            other => panic!("{line:?} ended with {other:?}"),
        }
    }

    fn guest(bytes: &[u8]) -> Feed<'static> {
        Feed::Guest(Bytes::from_slice(bytes))
    }

    #[test]
    fn ordinary_bytes_go_straight_to_the_guest() {
        let mut p = Prompt::new();
        assert!(!p.is_open());
        assert_eq!(p.feed(b'a', VMS), guest(b"a"));
        assert_eq!(p.feed(0x1d, VMS), guest(&[0x1d]), "Ctrl-] is the hyp's");
        assert_eq!(p.feed(CR, VMS), guest(b"\r"));
        assert_eq!(
            p.feed(LF, VMS),
            guest(b"\n"),
            "no CRLF pairing for guest lines"
        );
        assert_eq!(guest_bytes(&mut p, b"ls -l\r"), b"ls -l\r");
    }

    #[test]
    fn three_escapes_open_the_prompt_and_are_not_forwarded() {
        let mut p = Prompt::new();
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Opened);
        assert!(p.is_open());
        assert_eq!(p.line(), "");
    }

    #[test]
    fn a_lone_escape_reaches_the_guest_with_the_next_byte() {
        let mut p = Prompt::new();
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(b'x', VMS), guest(&[ESCAPE, b'x']));
        assert!(!p.is_open());
    }

    #[test]
    fn a_double_escape_reaches_the_guest_in_order() {
        let mut p = Prompt::new();
        assert_eq!(
            guest_bytes(&mut p, &[b'a', ESCAPE, ESCAPE, b'b', b'c']),
            [b'a', ESCAPE, ESCAPE, b'b', b'c']
        );
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(b'q', VMS), guest(&[ESCAPE, ESCAPE, b'q']));
    }

    #[test]
    fn escapes_split_by_other_bytes_do_not_add_up() {
        let mut p = Prompt::new();
        let input = [ESCAPE, ESCAPE, b'a', ESCAPE, b'b', ESCAPE, ESCAPE, b'c'];
        assert_eq!(guest_bytes(&mut p, &input), input);
        assert!(!p.is_open());
        // A fourth escape is not a break either: it starts the next run.
        let mut p = Prompt::new();
        let feeds = feed_all(&mut p, &[ESCAPE, ESCAPE, ESCAPE, ESCAPE], VMS);
        assert_eq!(feeds[2], Feed::Opened);
        assert_eq!(feeds[3], Feed::Nothing, "the fourth starts a closing run");
    }

    #[test]
    fn take_held_releases_a_pending_escape() {
        let mut p = Prompt::new();
        assert!(p.take_held().is_empty());
        p.feed(ESCAPE, VMS);
        p.feed(ESCAPE, VMS);
        assert_eq!(p.take_held().as_slice(), [ESCAPE, ESCAPE]);
        assert!(p.take_held().is_empty());
        // The run starts over: two more do not open.
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(b'z', VMS), guest(&[ESCAPE, ESCAPE, b'z']));
        let mut p = opened();
        p.feed(ESCAPE, VMS);
        assert!(
            p.take_held().is_empty(),
            "nothing is the guest's while open"
        );
    }

    #[test]
    fn three_escapes_close_an_open_prompt_and_drop_the_line() {
        let mut p = opened();
        echoed(&mut p, b"sto");
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Closed);
        assert!(!p.is_open());
        assert_eq!(p.line(), "");
        assert_eq!(p.feed(b'a', VMS), guest(b"a"));
    }

    #[test]
    fn escapes_split_while_open_are_ignored_and_do_not_close() {
        let mut p = opened();
        assert_eq!(echoed(&mut p, &[ESCAPE, ESCAPE, b'l', ESCAPE, b's']), b"ls");
        assert!(p.is_open());
        assert_eq!(p.line(), "ls");
    }

    #[test]
    fn printable_characters_are_echoed_and_collected() {
        let mut p = opened();
        assert_eq!(p.feed(b'l', VMS), Feed::Echo(Echo::once(b"l")));
        assert_eq!(echoed(&mut p, b"ist ~ all"), b"ist ~ all");
        assert_eq!(p.line(), "list ~ all");
    }

    #[test]
    fn backspace_and_delete_erase_one_character() {
        let mut p = opened();
        echoed(&mut p, b"lsx");
        assert_eq!(p.feed(DELETE, VMS), Feed::Echo(Echo::once(b"\x08 \x08")));
        assert_eq!(p.line(), "ls");
        assert_eq!(echoed(&mut p, &[BACKSPACE]), b"\x08 \x08");
        assert_eq!(p.line(), "l");
    }

    #[test]
    fn backspace_at_an_empty_line_does_nothing() {
        let mut p = opened();
        assert_eq!(p.feed(DELETE, VMS), Feed::Nothing);
        assert_eq!(p.feed(BACKSPACE, VMS), Feed::Nothing);
        echoed(&mut p, b"a");
        echoed(&mut p, &[DELETE]);
        assert_eq!(p.feed(DELETE, VMS), Feed::Nothing, "nothing left to erase");
        assert_eq!(echoed(&mut p, b"ls"), b"ls");
        assert_eq!(p.line(), "ls");
    }

    #[test]
    fn ctrl_u_erases_the_whole_line() {
        let mut p = opened();
        echoed(&mut p, b"stop li");
        let erase: Vec<u8> = b"\x08 \x08".repeat(7);
        assert_eq!(echoed(&mut p, &[KILL_LINE]), erase);
        assert_eq!(p.line(), "");
        assert_eq!(p.feed(KILL_LINE, VMS), Feed::Nothing, "already empty");
        echoed(&mut p, b"ls");
        assert_eq!(p.feed(CR, VMS), Feed::Command(Ok(Command::List)));
    }

    #[test]
    fn the_line_stops_at_80_characters() {
        let mut p = opened();
        let long = [b'x'; LINE_MAX + 5];
        assert_eq!(echoed(&mut p, &long), [b'x'; LINE_MAX]);
        assert_eq!(p.line().len(), LINE_MAX);
        assert_eq!(p.feed(b'y', VMS), Feed::Nothing);
        // Erasing makes room again.
        echoed(&mut p, &[DELETE]);
        assert_eq!(p.feed(b'y', VMS), Feed::Echo(Echo::once(b"y")));
        assert_eq!(p.line().len(), LINE_MAX);
        assert!(p.line().ends_with("xy"));
    }

    #[test]
    fn other_control_bytes_and_non_ascii_are_ignored() {
        let mut p = opened();
        for byte in [0x00, 0x03, b'\t', 0x1b, 0x1d, 0x80, 0xc3, 0xff] {
            assert_eq!(p.feed(byte, VMS), Feed::Nothing, "{byte:#x}");
        }
        assert_eq!(p.line(), "");
        assert!(p.is_open());
    }

    #[test]
    fn cr_lf_and_crlf_each_end_one_line() {
        for ending in [&b"\r"[..], b"\n", b"\r\n"] {
            let mut p = opened();
            let mut input = b"ls".to_vec();
            input.extend_from_slice(ending);
            input.extend_from_slice(b"?");
            input.extend_from_slice(ending);
            let commands: Vec<_> = feed_all(&mut p, &input, VMS)
                .into_iter()
                .filter(|f| !matches!(f, Feed::Echo(_) | Feed::Nothing))
                .collect();
            assert_eq!(
                commands,
                [
                    Feed::Command(Ok(Command::List)),
                    Feed::Command(Ok(Command::Help))
                ],
                "{ending:?}"
            );
        }
        // LF CR is two ends (a blank second line), not one.
        let mut p = opened();
        echoed(&mut p, b"ls");
        assert_eq!(p.feed(LF, VMS), Feed::Command(Ok(Command::List)));
        assert_eq!(p.feed(CR, VMS), Feed::Empty);
    }

    #[test]
    fn the_lf_of_a_crlf_that_closed_the_prompt_is_not_forwarded() {
        let mut p = opened();
        echoed(&mut p, b"resume");
        assert_eq!(p.feed(CR, VMS), Feed::Command(Ok(Command::Resume)));
        assert!(!p.is_open());
        assert_eq!(p.feed(LF, VMS), Feed::Nothing);
        assert_eq!(p.feed(LF, VMS), guest(b"\n"), "only the one right after");
    }

    #[test]
    fn a_blank_line_is_empty_not_an_error() {
        let mut p = opened();
        assert_eq!(p.feed(CR, VMS), Feed::Empty);
        echoed(&mut p, b"   ");
        assert_eq!(p.feed(LF, VMS), Feed::Empty);
        assert_eq!(p.line(), "");
        assert!(p.is_open());
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(run("list"), Ok(Command::List));
        assert_eq!(run("ls"), Ok(Command::List));
        assert_eq!(run("stop linux"), Ok(Command::Stop(0)));
        assert_eq!(run("start rtos"), Ok(Command::Start(1)));
        assert_eq!(run("restart linux"), Ok(Command::Restart(0)));
        assert_eq!(run("console rtos"), Ok(Command::Console(1)));
        assert_eq!(run("destroy rtos"), Ok(Command::Destroy(1)));
        assert_eq!(run("create linux"), Ok(Command::Create(0)));
        assert_eq!(run("help"), Ok(Command::Help));
        assert_eq!(run("?"), Ok(Command::Help));
        assert_eq!(run("resume"), Ok(Command::Resume));
        assert_eq!(run("exit"), Ok(Command::Resume));
        assert_eq!(run("quit"), Ok(Command::Resume));
    }

    #[test]
    fn whitespace_around_and_between_words_is_tolerated() {
        assert_eq!(run("   stop    rtos   "), Ok(Command::Stop(1)));
        assert_eq!(run(" ls "), Ok(Command::List));
        assert_eq!(
            parse("\tconsole\t linux \x0c", VMS),
            Ok(Command::Console(0))
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            run("frob"),
            Err("unknown command \"frob\"; type help".into())
        );
        assert_eq!(
            run("LIST"),
            Err("unknown command \"LIST\"; type help".into())
        );
        assert_eq!(run("stop"), Err("stop needs a VM name".into()));
        assert_eq!(run("start  "), Err("start needs a VM name".into()));
        assert_eq!(run("restart"), Err("restart needs a VM name".into()));
        assert_eq!(run("console"), Err("console needs a VM name".into()));
        assert_eq!(run("destroy"), Err("destroy needs a VM name".into()));
        assert_eq!(
            run("create rtos now"),
            Err("unexpected \"now\": create takes one VM name".into())
        );
        assert_eq!(
            run("stop x"),
            Err("no VM named \"x\" (VMs: linux, rtos)".into())
        );
        assert_eq!(
            run("console Linux"),
            Err("no VM named \"Linux\" (VMs: linux, rtos)".into())
        );
        assert_eq!(
            run("stop linux rtos"),
            Err("unexpected \"rtos\": stop takes one VM name".into())
        );
        assert_eq!(
            run("list all"),
            Err("unexpected \"all\": list takes no arguments".into())
        );
        assert_eq!(
            run("quit now"),
            Err("unexpected \"now\": quit takes no arguments".into())
        );
        assert_eq!(
            run("? me"),
            Err("unexpected \"me\": ? takes no arguments".into())
        );
        assert_eq!(
            parse("stop x", &[]).map_err(|e| e.to_string()),
            Err("no VM named \"x\" (there are no VMs)".into())
        );
        assert_eq!(
            parse("  ", VMS).map_err(|e| e.to_string()),
            Err("no command; type help".into())
        );
    }

    #[test]
    fn errors_carry_their_words() {
        assert_eq!(
            parse("stop nope", VMS),
            Err(PromptError::UnknownVm {
                name: Word::new("nope"),
                vms: VMS
            })
        );
        assert_eq!(
            parse("stop", VMS),
            Err(PromptError::MissingName { command: "stop" })
        );
        // A word longer than any line the prompt takes is cut, at a char boundary.
        let long = "é".repeat(LINE_MAX);
        match parse(&long, VMS) {
            Err(PromptError::UnknownCommand(word)) => {
                assert_eq!(word.as_str(), "é".repeat(LINE_MAX / 2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_error_keeps_the_prompt_open_and_the_next_line_fresh() {
        let mut p = opened();
        echoed(&mut p, b"stop");
        assert!(matches!(
            p.feed(CR, VMS),
            Feed::Command(Err(PromptError::MissingName { .. }))
        ));
        assert!(p.is_open());
        assert_eq!(p.line(), "");
        echoed(&mut p, b"ls");
        assert_eq!(p.feed(CR, VMS), Feed::Command(Ok(Command::List)));
    }

    #[test]
    fn console_and_resume_close_the_prompt_others_do_not() {
        for (line, closes) in [
            ("console linux", true),
            ("resume", true),
            ("exit", true),
            ("quit", true),
            ("list", false),
            ("help", false),
            ("stop rtos", false),
            ("start rtos", false),
            ("restart rtos", false),
            ("destroy rtos", false),
            ("create rtos", false),
        ] {
            let mut p = opened();
            echoed(&mut p, line.as_bytes());
            assert!(matches!(p.feed(CR, VMS), Feed::Command(Ok(_))), "{line}");
            assert_eq!(p.is_open(), !closes, "{line}");
        }
        // Closed by a command, the next byte is the guest's again.
        let mut p = opened();
        echoed(&mut p, b"console rtos");
        p.feed(CR, VMS);
        assert_eq!(p.feed(b'x', VMS), guest(b"x"));
    }

    #[test]
    fn a_session_from_guest_to_prompt_and_back() {
        let mut p = Prompt::new();
        let mut input = b"echo hi\r".to_vec();
        input.extend_from_slice(&[ESCAPE; 3]);
        input.extend_from_slice(b"stop rtos\rconsole linux\r");
        input.extend_from_slice(b"uptime\r");
        let feeds = feed_all(&mut p, &input, VMS);
        let events: Vec<_> = feeds
            .into_iter()
            .filter(|f| !matches!(f, Feed::Echo(_) | Feed::Nothing | Feed::Guest(_)))
            .collect();
        assert_eq!(
            events,
            [
                Feed::Opened,
                Feed::Command(Ok(Command::Stop(1))),
                Feed::Command(Ok(Command::Console(0))),
            ]
        );
        let mut p = Prompt::new();
        let mut expected = b"echo hi\r".to_vec();
        expected.extend_from_slice(b"uptime\r");
        assert_eq!(guest_bytes(&mut p, &input), expected);
    }

    #[test]
    fn open_and_close_reset_the_line_and_the_escape_run() {
        let mut p = Prompt::new();
        p.feed(ESCAPE, VMS);
        p.open();
        assert!(p.is_open());
        echoed(&mut p, b"sta");
        p.feed(ESCAPE, VMS);
        p.close();
        assert!(!p.is_open());
        assert_eq!(p.line(), "");
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(ESCAPE, VMS), Feed::Nothing);
        assert_eq!(p.feed(b'k', VMS), guest(&[ESCAPE, ESCAPE, b'k']));
    }

    #[test]
    fn help_has_one_line_per_command_and_fits_a_terminal() {
        for (spelling, _) in VERBS {
            assert!(
                HELP.lines()
                    .any(|l| l.split([',', ' ']).any(|w| w == *spelling)),
                "{spelling} missing from HELP"
            );
        }
        assert!(HELP.lines().all(|l| l.len() < 80));
        assert!(HELP.ends_with('\n'));
    }

    #[test]
    fn exit_counts_total_every_kind() {
        let exits = ExitCounts {
            hypercall: 1,
            mmio: 2,
            sysreg: 4,
            wfx: 8,
            irq: 16,
            other: 32,
        };
        assert_eq!(exits.total(), 63);
        assert_eq!(ExitCounts::default().total(), 0);
    }

    fn list(vms: &[VmStatus<'_>], hz: u64) -> String {
        let mut out = String::new();
        format_list(&mut out, vms, hz).unwrap();
        out
    }

    #[test]
    fn list_of_two_vms() {
        let linux = [
            VcpuStatus {
                state: VcpuRunState::Running,
                cpu: Some(1),
                running_now: true,
                pinned: Some(1),
                ran_on: 1 << 1,
                exits: ExitCounts {
                    hypercall: 10,
                    mmio: 800,
                    sysreg: 20,
                    wfx: 300,
                    irq: 100,
                    other: 4,
                },
                cpu_ticks: 62_500_000 * 12 + 62_500 * 34 / 10,
            },
            VcpuStatus {
                state: VcpuRunState::Blocked,
                cpu: Some(2),
                running_now: false,
                pinned: None,
                ran_on: (1 << 0) | (1 << 2),
                exits: ExitCounts {
                    wfx: 7,
                    irq: 5,
                    ..ExitCounts::default()
                },
                cpu_ticks: 6_250,
            },
        ];
        let rtos = [VcpuStatus {
            state: VcpuRunState::Off,
            cpu: None,
            running_now: false,
            pinned: Some(3),
            ran_on: 0,
            exits: ExitCounts::default(),
            cpu_ticks: 0,
        }];
        let vms = [
            VmStatus {
                name: "linux",
                state: "running",
                vcpus: &linux,
            },
            VmStatus {
                name: "rtos",
                state: "off",
                vcpus: &rtos,
            },
        ];
        let expected = "\
VM        STATE     CPU         PINNING      CPU TIME   EXITS
linux     running   2 vCPUs
  vcpu 0  running   cpu 1       pinned to 1  12003.4 ms 1234 (hvc 10 mmio 800 sys 20 wfx 300 irq 100 other 4)
  vcpu 1  blocked   last cpu 2  shared on 0,2 0.1 ms    12 (wfx 7 irq 5)
rtos      off       1 vCPU
  vcpu 0  off       -           pinned to 3  0.0 ms     0
";
        let got = list(&vms, 62_500_000);
        assert_eq!(got, expected, "\n{got}");
        assert!(got.lines().all(|l| l.len() <= 110), "\n{got}");
    }

    #[test]
    fn list_survives_odd_inputs() {
        let vcpu = VcpuStatus {
            state: VcpuRunState::Runnable,
            cpu: Some(12),
            running_now: false,
            pinned: Some(12),
            ran_on: u64::MAX,
            exits: ExitCounts::default(),
            cpu_ticks: u64::MAX,
        };
        let vms = [
            VmStatus {
                name: "a-rather-long-vm-name",
                state: "resetting",
                vcpus: &[vcpu],
            },
            VmStatus {
                name: "empty",
                state: "halted",
                vcpus: &[],
            },
        ];
        let got = list(&vms, 0);
        assert_eq!(
            got.lines().nth(1),
            Some("a-rather-long-vm-name resetting 1 vCPU"),
            "overflow keeps one space"
        );
        assert_eq!(
            got.lines().nth(2),
            Some("  vcpu 0  runnable  last cpu 12 pinned to 12 ? ms       0")
        );
        assert_eq!(got.lines().nth(3), Some("empty     halted    0 vCPUs"));
        let got = list(&vms, 1);
        assert!(got.contains("18446744073709551615000.0 ms"), "\n{got}");
        assert_eq!(list(&[], 1), list(&vms[..0], 1));
        assert_eq!(list(&[], 1).lines().count(), 1);
    }

    proptest::proptest! {
        /// Bytes chosen to reach every state: escapes, line ends, editing keys,
        /// whole commands (so `console` and `resume` close the prompt), noise.
        #[test]
        fn any_input_is_safe_and_closed_bytes_reach_the_guest_once_in_order(
            chunks in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(alloc::vec![ESCAPE]),
                    proptest::strategy::Just(alloc::vec![ESCAPE; 3]),
                    proptest::strategy::Just(alloc::vec![CR]),
                    proptest::strategy::Just(alloc::vec![LF]),
                    proptest::strategy::Just(alloc::vec![DELETE]),
                    proptest::strategy::Just(alloc::vec![KILL_LINE]),
                    proptest::strategy::Just(b"console rtos\r".to_vec()),
                    proptest::strategy::Just(b"resume\r\n".to_vec()),
                    proptest::strategy::Just(b"stop linux".to_vec()),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 1..100),
                ],
                0..60,
            )
        ) {
            let input: Vec<u8> = chunks.concat();
            let mut p = Prompt::new();
            let mut expected = Vec::new();
            let mut forwarded = Vec::new();
            let mut prev_cr_while_open = false;
            for &byte in &input {
                let was_open = p.is_open();
                let feed = p.feed(byte, VMS);
                proptest::prop_assert!(p.line().len() <= LINE_MAX);
                proptest::prop_assert!(p.line().bytes().all(|b| (b' '..=b'~').contains(&b)));
                match &feed {
                    Feed::Guest(bytes) => {
                        proptest::prop_assert!(!was_open);
                        proptest::prop_assert_eq!(bytes.as_slice().last(), Some(&byte));
                        forwarded.extend(bytes.as_slice().iter().copied().filter(|&b| b != ESCAPE));
                    }
                    Feed::Opened => proptest::prop_assert!(!was_open && p.is_open()),
                    Feed::Echo(_) | Feed::Empty => proptest::prop_assert!(was_open && p.is_open()),
                    Feed::Command(_) | Feed::Closed => proptest::prop_assert!(was_open),
                    Feed::Nothing => {}
                }
                let pair_of_cr = byte == LF && prev_cr_while_open;
                if !was_open && byte != ESCAPE && !pair_of_cr {
                    expected.push(byte);
                }
                prev_cr_while_open = was_open && byte == CR;
            }
            proptest::prop_assert_eq!(forwarded, expected);
        }

        /// With no run of three Ctrl-\, the prompt is invisible: the guest gets
        /// exactly the input, held bytes included once released.
        #[test]
        fn without_the_escape_the_guest_gets_exactly_the_input(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(ESCAPE),
                    proptest::prelude::any::<u8>(),
                ],
                0..300,
            )
        ) {
            let input: Vec<u8> = input
                .iter()
                .enumerate()
                .filter(|&(i, &b)| !(b == ESCAPE && i >= 2 && input[i - 1] == ESCAPE && input[i - 2] == ESCAPE))
                .map(|(_, &b)| b)
                .collect();
            // Only escapes inside a run were removed, so no new run formed.
            proptest::prop_assert!(!input.windows(ESCAPE_COUNT).any(|w| w.iter().all(|&b| b == ESCAPE)));
            let mut p = Prompt::new();
            let mut got = Vec::new();
            for &byte in &input {
                match p.feed(byte, VMS) {
                    Feed::Guest(bytes) => got.extend_from_slice(bytes.as_slice()),
                    Feed::Nothing => {}
                    other => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
            got.extend_from_slice(p.take_held().as_slice());
            proptest::prop_assert!(!p.is_open());
            proptest::prop_assert_eq!(got, input);
        }
    }
}
