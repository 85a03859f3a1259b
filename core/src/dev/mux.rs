//! Every VM's console output onto one physical UART, without ever waiting for it.
//!
//! A guest's UART write lands in its VM's [`OutputBuffer`] ([`OutputMux::push`]); then
//! [`OutputMux::drain`] moves waiting bytes to the physical transmitter for as long as
//! it has room ([`TxPort::try_put`]) and stops the moment it is full, returning
//! [`Drain::Blocked`]: the caller (`hyp`) then enables the UART's transmit interrupt
//! and drains again from it. So no guest action, however much it writes, makes a CPU
//! spin on the UART, and one VM's flood costs only its own oldest bytes (dropped and
//! counted by its buffer, then reported once), never another VM's output or time.
//!
//! Every guest line is tagged `[name] `, even when only one VM exists: so no guest
//! line can start like Bothy's own (`bothy: ...`, which `bothy run` takes as the
//! hypervisor's verdict) or like another VM's. A line is kept whole while its writer
//! keeps writing: the mux stays with the VM whose line
//! is open until it ends it or has nothing more, then moves round-robin to the next
//! VM with output (ending the open line first, so two VMs never share a line). What
//! goes out besides guest bytes (tags, line breaks, drop notices) is staged and
//! drained by the same rule, so a full transmitter can cut in anywhere and the next
//! drain carries on exactly there.
//!
//! A guest must not be able to forge Bothy's lines or another VM's, nor rewrite its own
//! tag on a terminal: control characters in guest output are made visible (`^[` for
//! ESC, `^H` for backspace, `^?` for DEL, ...), except newline and tab. A carriage
//! return goes out only as part of a `\r\n` line end (it then cannot overwrite
//! anything); any other one shows as `^M`, and one that ends a guest's output so far
//! waits for the byte after it to decide. Bytes from 0x80 up pass unchanged (UTF-8).
//!
//! Bothy's own messages are written by `hyp` directly (they may wait for the UART: a
//! Bothy action, not a guest's); [`OutputMux::begin_own_line`] and
//! [`OutputMux::end_own_line`] keep the line-tagging state right around them.

use super::outbuf::OutputBuffer;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The physical transmitter.
pub trait TxPort {
    /// Sends `byte` if the transmitter has room now; `false` (nothing sent) if full.
    fn try_put(&mut self, byte: u8) -> bool;
}

/// How a [`OutputMux::drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Nothing is waiting (or output is held).
    Idle,
    /// The transmitter filled up with bytes still waiting.
    Blocked,
}

/// The per-VM buffers and the console's line state.
pub struct OutputMux {
    buffers: Vec<OutputBuffer>,
    /// Each VM's name, the tag of its lines.
    tags: Vec<String>,
    /// The VM whose line is open (its last byte was not a newline).
    open_line: Option<usize>,
    /// Round-robin position: the VM served last.
    last: usize,
    /// Bytes to send before any more guest output (tags, line breaks, notices).
    staged: VecDeque<u8>,
    /// Guest output waits (Bothy's prompt is open).
    holding: bool,
    /// Each buffer's size.
    capacity: usize,
}

impl OutputMux {
    /// One buffer of `capacity` bytes for each VM, whose lines are tagged with its
    /// name. All memory is taken here.
    pub fn new(names: &[&str], capacity: usize) -> Self {
        Self {
            buffers: names.iter().map(|_| OutputBuffer::new(capacity)).collect(),
            tags: names.iter().map(|n| String::from(*n)).collect(),
            open_line: None,
            // So that VM 0 is served first.
            last: names.len().saturating_sub(1),
            staged: VecDeque::with_capacity(256),
            holding: false,
            capacity,
        }
    }

    /// VM `vm` (a new one, or one built again) is named `name` from now on. Output its
    /// slot's previous VM left unsent is dropped rather than shown under the new name,
    /// and a line it left open is ended. Allocates when the slot is new: call it when
    /// a VM is built, not on an exit.
    pub fn attach(&mut self, vm: usize, name: &str) {
        let capacity = self.capacity;
        while self.buffers.len() <= vm {
            self.buffers.push(OutputBuffer::new(capacity));
            self.tags.push(String::new());
        }
        self.buffers[vm].clear();
        // Nor is the old VM's loss reported under the new name.
        let _ = self.buffers[vm].take_dropped();
        if self.open_line == Some(vm) {
            self.staged.extend(b"\r\n");
            self.open_line = None;
        }
        self.tags[vm] = String::from(name);
    }

    /// A byte VM `vm` wrote. Never blocks; call [`OutputMux::drain`] after.
    pub fn push(&mut self, vm: usize, byte: u8) {
        if let Some(buffer) = self.buffers.get_mut(vm) {
            buffer.push(byte);
        }
    }

    /// [`OutputMux::push`] then [`OutputMux::drain`], with a shortcut for the common
    /// case (nothing waiting, a printable byte continuing the line already open):
    /// straight to the transmitter.
    #[inline]
    pub fn write(&mut self, vm: usize, byte: u8, port: &mut impl TxPort) -> Drain {
        let continues = matches!(visible(byte), Visible::As(_)) && self.open_line == Some(vm);
        if continues
            && !self.holding
            && self.staged.is_empty()
            && self.buffers.get(vm).is_some_and(|b| b.is_empty())
            && port.try_put(byte)
        {
            self.last = vm;
            self.open_line = (byte != b'\n').then_some(vm);
            return Drain::Idle;
        }
        self.push(vm, byte);
        self.drain(port)
    }

    /// Hold guest output (Bothy's prompt is open) or let it go again.
    pub fn hold(&mut self, hold: bool) {
        self.holding = hold;
    }

    pub fn holding(&self) -> bool {
        self.holding
    }

    /// Whether anything waits to go out.
    pub fn pending(&self) -> bool {
        !self.staged.is_empty() || self.buffers.iter().any(|b| !b.is_empty())
    }

    /// Sends waiting output until the transmitter is full or nothing (allowed) waits.
    pub fn drain(&mut self, port: &mut impl TxPort) -> Drain {
        loop {
            while let Some(&byte) = self.staged.front() {
                if !port.try_put(byte) {
                    return Drain::Blocked;
                }
                self.staged.pop_front();
            }
            if self.holding {
                return Drain::Idle;
            }
            // A VM with a buffer (one that is `ready`): the lookups below cannot miss.
            let Some(vm) = self.next_vm() else {
                return Drain::Idle;
            };
            if self.open_line.is_some_and(|open| open != vm) {
                // Another VM's line is open and that VM is quiet: end it here.
                self.staged.extend(b"\r\n");
                self.open_line = None;
                continue;
            }
            if self.open_line.is_none() {
                self.staged.push_back(b'[');
                self.staged
                    .extend(self.tags.get(vm).map_or(&b""[..], |t| t.as_bytes()));
                self.staged.extend(b"] ");
                self.open_line = Some(vm);
                continue;
            }
            let Some(byte) = self.peek(vm, 0) else {
                continue;
            };
            match visible(byte) {
                Visible::As(byte) => {
                    if !port.try_put(byte) {
                        return Drain::Blocked;
                    }
                    self.pop(vm);
                    self.open_line = (byte != b'\n').then_some(vm);
                }
                Visible::Caret(c) => {
                    self.pop(vm);
                    self.staged.extend([b'^', c]);
                    self.open_line = Some(vm);
                }
                Visible::CarriageReturn => match self.peek(vm, 1) {
                    Some(b'\n') => {
                        self.pop(vm);
                        self.pop(vm);
                        self.staged.extend(b"\r\n");
                        self.open_line = None;
                    }
                    Some(_) => {
                        self.pop(vm);
                        self.staged.extend(b"^M");
                        self.open_line = Some(vm);
                    }
                    // Nothing after it yet: decided when the guest writes more
                    // (`ready` keeps such a VM from being picked, so not reached).
                    None => return Drain::Idle,
                },
            }
            self.last = vm;
            if self.buffers.get(vm).is_some_and(OutputBuffer::is_empty) {
                self.report_drops(vm);
            }
        }
    }

    /// Before Bothy writes a line of its own: whether a line break must come first
    /// (a guest's line is open). The open line counts as ended.
    pub fn begin_own_line(&mut self) -> bool {
        self.open_line.take().is_some()
    }

    /// After Bothy wrote its own text: `at_line_start` says whether it ended a line.
    /// If not, the next guest byte starts a new line first.
    pub fn end_own_line(&mut self, at_line_start: bool) {
        if !at_line_start {
            self.staged.extend(b"\r\n");
        }
    }

    /// Bytes staged but not yet sent (tags, notices): Bothy's own message waits for
    /// these first so it never lands inside one.
    pub fn take_staged(&mut self) -> impl Iterator<Item = u8> + '_ {
        self.staged.drain(..)
    }

    /// The VM to serve next: the one whose line is open if it has more, else the next
    /// one round-robin with output waiting.
    fn next_vm(&self) -> Option<usize> {
        if let Some(open) = self.open_line {
            if self.ready(open) {
                return Some(open);
            }
        }
        let n = self.buffers.len();
        (1..=n)
            .map(|i| (self.last + i) % n)
            .find(|&vm| self.ready(vm))
    }

    /// Whether `vm` has output that can go now: anything but a lone carriage return,
    /// which waits to see whether a newline follows.
    fn ready(&self, vm: usize) -> bool {
        match self.buffers.get(vm).map_or(0, OutputBuffer::len) {
            0 => false,
            1 => self.peek(vm, 0) != Some(b'\r'),
            _ => true,
        }
    }

    /// The `n`th waiting byte of `vm` (0: the oldest).
    fn peek(&self, vm: usize, n: usize) -> Option<u8> {
        let (first, second) = self.buffers.get(vm)?.as_slices();
        first.iter().chain(second).nth(n).copied()
    }

    /// Drop `vm`'s oldest waiting byte (sent, or shown otherwise).
    fn pop(&mut self, vm: usize) {
        if let Some(buffer) = self.buffers.get_mut(vm) {
            let _ = buffer.pop();
        }
    }

    /// Say once how much of `vm`'s output its full buffer lost.
    fn report_drops(&mut self, vm: usize) {
        let Some(dropped) = self.buffers.get_mut(vm).map(OutputBuffer::take_dropped) else {
            return;
        };
        if dropped == 0 {
            return;
        }
        let mut notice = String::new();
        if self.open_line.take().is_some() {
            notice.push_str("\r\n");
        }
        let name = self.tags.get(vm).map_or("", String::as_str);
        let _ = write!(
            notice,
            "bothy: {dropped} bytes of {name}'s output were dropped (console busy or prompt open)\r\n"
        );
        self.staged.extend(notice.bytes());
    }
}

/// How a guest byte is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Visible {
    /// As it is: printable, newline, tab, or from 0x80 up.
    As(u8),
    /// As `^` and this character (`^[` for ESC).
    Caret(u8),
    /// `\r`: part of a line end if a newline follows, else `^M`.
    CarriageReturn,
}

fn visible(byte: u8) -> Visible {
    match byte {
        b'\n' | b'\t' => Visible::As(byte),
        b'\r' => Visible::CarriageReturn,
        0x00..=0x1f => Visible::Caret(byte + 0x40),
        0x7f => Visible::Caret(b'?'),
        _ => Visible::As(byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::any;

    /// A transmitter with room for `room` more bytes.
    struct Port {
        out: Vec<u8>,
        room: usize,
    }

    impl TxPort for Port {
        fn try_put(&mut self, byte: u8) -> bool {
            if self.room == 0 {
                return false;
            }
            self.room -= 1;
            self.out.push(byte);
            true
        }
    }

    fn port(room: usize) -> Port {
        Port {
            out: Vec::new(),
            room,
        }
    }

    fn text(p: &Port) -> String {
        String::from_utf8(p.out.clone()).unwrap()
    }

    fn push(m: &mut OutputMux, vm: usize, s: &str) {
        s.bytes().for_each(|b| m.push(vm, b));
    }

    #[test]
    fn a_lone_vm_is_tagged_too() {
        let mut m = OutputMux::new(&["a"], 64);
        push(&mut m, 0, "bothy: all VMs powered off\r\n");
        let mut p = port(100);
        assert_eq!(m.drain(&mut p), Drain::Idle);
        assert_eq!(text(&p), "[a] bothy: all VMs powered off\r\n");
        for b in b"more" {
            assert_eq!(m.write(0, *b, &mut p), Drain::Idle);
        }
        assert_eq!(text(&p), "[a] bothy: all VMs powered off\r\n[a] more");
        // A full transmitter: the byte waits, nothing is lost.
        p.room = 0;
        assert_eq!(m.write(0, b'!', &mut p), Drain::Blocked);
        p.room = 1;
        assert_eq!(m.drain(&mut p), Drain::Idle);
        assert_eq!(text(&p), "[a] bothy: all VMs powered off\r\n[a] more!");
    }

    #[test]
    fn a_slot_given_to_another_vm_takes_its_name_and_none_of_the_old_output() {
        let mut m = OutputMux::new(&["a"], 64);
        let mut p = port(8);
        for b in b"old line, never ended" {
            m.write(0, *b, &mut p);
        }
        // "[a] old " went out; the rest waits, and its line is open.
        m.attach(0, "b");
        m.attach(2, "c");
        push(&mut m, 0, "new\n");
        push(&mut m, 2, "third\n");
        p.room = 100;
        assert_eq!(m.drain(&mut p), Drain::Idle);
        // Round robin from the VM served last (0): 2, then 0.
        assert_eq!(text(&p), "[a] old \r\n[c] third\n[b] new\n");
        assert!(!m.pending());
    }

    #[test]
    fn lines_are_tagged_and_kept_whole() {
        let mut m = OutputMux::new(&["a", "b"], 64);
        push(&mut m, 0, "one\n");
        push(&mut m, 1, "two\n");
        push(&mut m, 0, "three");
        let mut p = port(1000);
        assert_eq!(m.drain(&mut p), Drain::Idle);
        // a's first line, then b's (round robin), then a's open line.
        assert_eq!(text(&p), "[a] one\n[b] two\n[a] three");
        // b writes while a's line is still open: a's line is ended first.
        push(&mut m, 1, "x\n");
        m.drain(&mut p);
        assert_eq!(text(&p), "[a] one\n[b] two\n[a] three\r\n[b] x\n");
    }

    #[test]
    fn a_full_transmitter_never_blocks_and_resumes_exactly() {
        let mut m = OutputMux::new(&["a", "b"], 64);
        push(&mut m, 0, "abc\n");
        push(&mut m, 1, "xyz\n");
        let want = "[a] abc\n[b] xyz\n";
        let mut p = port(0);
        let mut rounds = 0;
        // One byte of room per drain: every cut point is exercised.
        while m.drain(&mut p) == Drain::Blocked {
            p.room = 1;
            rounds += 1;
            assert!(rounds < 100);
        }
        assert_eq!(text(&p), want);
        assert!(!m.pending());
    }

    #[test]
    fn a_flood_costs_only_the_flooders_oldest_bytes() {
        let mut m = OutputMux::new(&["flood", "quiet"], 8);
        push(&mut m, 0, "0123456789abcdef\n");
        push(&mut m, 1, "ok\n");
        let mut p = port(1000);
        m.drain(&mut p);
        let t = text(&p);
        assert!(t.contains("[quiet] ok\n"), "{t}");
        // The flooder kept its last 8 bytes and the loss is reported once.
        assert!(t.contains("[flood] 9abcdef\n"), "{t}");
        assert_eq!(
            t.matches("bothy: 9 bytes of flood's output were dropped")
                .count(),
            1,
            "{t}"
        );
    }

    #[test]
    fn held_output_waits_for_the_prompt_to_close() {
        let mut m = OutputMux::new(&["a"], 64);
        m.hold(true);
        push(&mut m, 0, "later\n");
        let mut p = port(100);
        assert_eq!(m.drain(&mut p), Drain::Idle);
        assert!(p.out.is_empty());
        m.hold(false);
        m.drain(&mut p);
        assert_eq!(text(&p), "[a] later\n");
    }

    #[test]
    fn bothys_own_lines_end_an_open_guest_line_and_the_guest_resumes_on_a_new_one() {
        let mut m = OutputMux::new(&["a", "b"], 64);
        push(&mut m, 0, "partial");
        let mut p = port(100);
        m.drain(&mut p);
        assert!(m.begin_own_line(), "a's line is open");
        p.out.extend(b"\r\nbothy: hello\r\n");
        m.end_own_line(true);
        push(&mut m, 0, " rest\n");
        m.drain(&mut p);
        assert_eq!(text(&p), "[a] partial\r\nbothy: hello\r\n[a]  rest\n");
        assert!(!m.begin_own_line());
        assert_eq!(m.take_staged().count(), 0);
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let mut m = OutputMux::new(&["a", "b"], 256);
        // An attempt to erase the tag and print a line as Bothy, then as b.
        push(&mut m, 0, "x\r\x1b[2Kbothy: all VMs powered off\n");
        push(&mut m, 0, "\x08\x08[b] forged\x7f\ttab\r\n");
        let mut p = port(1000);
        m.drain(&mut p);
        assert_eq!(
            text(&p),
            "[a] x^M^[[2Kbothy: all VMs powered off\n[a] ^H^H[b] forged^?\ttab\r\n"
        );
    }

    #[test]
    fn a_carriage_return_waits_for_what_follows() {
        let mut m = OutputMux::new(&["a"], 64);
        let mut p = port(100);
        for b in b"50%\r" {
            m.write(0, *b, &mut p);
        }
        assert_eq!(text(&p), "[a] 50%", "the CR waits");
        assert!(m.pending());
        m.write(0, b'6', &mut p);
        assert_eq!(text(&p), "[a] 50%^M6");
        for b in b"\r\n" {
            m.write(0, *b, &mut p);
        }
        assert_eq!(text(&p), "[a] 50%^M6\r\n");
    }

    proptest::proptest! {
        /// Whatever the interleaving of writes and however little room the transmitter
        /// has, each VM's lines come out tagged and, untagged, are exactly what it wrote.
        #[test]
        fn every_vms_output_arrives_whole_and_in_order(
            writes in proptest::collection::vec((0usize..3, "[a-c\n]{1,12}"), 1..30),
            rooms in proptest::collection::vec(0usize..6, 1..200),
        ) {
            let names = ["a", "b", "c"];
            let mut m = OutputMux::new(&names, 4096);
            let mut p = port(0);
            let mut want = [String::new(), String::new(), String::new()];
            let mut rooms = rooms.into_iter().cycle();
            for (i, (vm, text)) in writes.iter().enumerate() {
                want[*vm].push_str(text);
                p.room = rooms.next().unwrap();
                if i % 2 == 0 {
                    push(&mut m, *vm, text);
                    let _ = m.drain(&mut p);
                } else {
                    for b in text.bytes() {
                        let _ = m.write(*vm, b, &mut p);
                    }
                }
            }
            p.room = usize::MAX;
            proptest::prop_assert_eq!(m.drain(&mut p), Drain::Idle);
            let mut got = [String::new(), String::new(), String::new()];
            for line in text(&p).split_inclusive('\n') {
                let (vm, rest) = names
                    .iter()
                    .enumerate()
                    .find_map(|(i, n)| line.strip_prefix(&alloc::format!("[{n}] ")).map(|r| (i, r)))
                    .expect("every line is tagged");
                // A line the mux ended itself ends in "\r\n"; the guest's own in "\n".
                got[vm].push_str(rest.strip_suffix("\r\n").unwrap_or(rest));
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        /// Whatever bytes a guest writes, nothing but newline, tab and a carriage return
        /// directly before a newline reaches the terminal below 0x20, nor DEL, and every
        /// line still starts with the writer's tag.
        #[test]
        fn no_control_byte_gets_through(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut m = OutputMux::new(&["a", "b"], 4096);
            let mut p = port(usize::MAX);
            for (i, &b) in bytes.iter().enumerate() {
                let _ = m.write(i % 2, b, &mut p);
            }
            let out = &p.out;
            for (i, &b) in out.iter().enumerate() {
                let ok = b == b'\n' || b == b'\t' || (b >= 0x20 && b != 0x7f)
                    || (b == b'\r' && out.get(i + 1) == Some(&b'\n'));
                proptest::prop_assert!(ok, "byte {b:#x} at {i} in {out:?}");
            }
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                proptest::prop_assert!(line.starts_with(b"[a] ") || line.starts_with(b"[b] "), "{line:?}");
            }
        }
    }
}
