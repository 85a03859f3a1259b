//! `bothy bench`: the microbenchmarks ([`micro`]: instruction counts per operation of
//! guests/bench, with [`chart`] for the PNG) and `bothy bench boot` ([`boot`]: the demo
//! Linux guest's wall time to its `/init` marker on bare QEMU, under Bothy and under
//! Xen), and what they share: running QEMU until markers appear on the guest console
//! ([`run_to_markers`], [`MarkerScanner`], [`TaggedScanner`]), medians and ratios, and
//! how busy the host was meanwhile.
//!
//! Every run is bounded by a timeout, and QEMU is killed once the markers show up (or
//! the run fails).

pub mod boot;
pub mod chart;
pub mod micro;

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::qemu::QEMU;

/// Console bytes kept for the error message of a failed run.
const TAIL_BYTES: usize = 4096;
/// Console bytes kept in full for parsing (a Linux boot prints about 30 KB).
const KEEP_BYTES: usize = 8 << 20;

/// What the microbenchmarks compare (`bench boot` has its own list:
/// [`boot::BootConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// The guest directly on QEMU at EL1.
    Bare,
    /// The guest as a VM under Bothy, QEMU entering at EL2.
    Bothy,
    /// The guest as a dom0less domU of Xen 4.17, QEMU entering at EL2.
    Xen,
}

impl Config {
    pub const ALL: [Config; 3] = [Config::Bare, Config::Bothy, Config::Xen];

    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Bothy => "bothy",
            Config::Xen => "xen",
        }
    }

    /// As in table headings.
    pub fn title(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Bothy => "Bothy",
            Config::Xen => "Xen",
        }
    }

    /// `bare`, `bothy` or `xen` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?}: not a configuration (bare, bothy, xen)"))
    }
}

/// Finds a marker in a byte stream that arrives in arbitrary chunks.
#[derive(Clone, Debug)]
pub struct MarkerScanner {
    needle: Vec<u8>,
    /// The last `needle.len() - 1` bytes seen: a match may start in them.
    carry: Vec<u8>,
    found: bool,
}

impl MarkerScanner {
    pub fn new(marker: &str) -> Self {
        assert!(!marker.is_empty(), "empty marker");
        Self {
            needle: marker.as_bytes().to_vec(),
            carry: Vec::new(),
            found: false,
        }
    }

    /// Feeds the next chunk; true once the marker has been seen (and from then on).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.found {
            return true;
        }
        let mut hay = std::mem::take(&mut self.carry);
        hay.extend_from_slice(chunk);
        self.found = hay.windows(self.needle.len()).any(|w| w == self.needle);
        let keep = (self.needle.len() - 1).min(hay.len());
        hay.drain(..hay.len() - keep);
        self.carry = hay;
        self.found
    }

    /// Whether the marker has been seen.
    pub fn found(&self) -> bool {
        self.found
    }
}

/// Finds a marker in each VM's own lines of a console that Bothy shares between
/// several VMs, tagging every guest line `[name] `: the VMs' lines interleave, and the
/// bytes arrive in arbitrary chunks. Each VM's text (its tagged lines, without the tags
/// and the line breaks) is scanned on its own, so a line that the console mux broke in
/// two (the VM went quiet mid-line while another VM had output:
/// `[a] BOTHY-GU` `[b] ...` `[a] EST-READY`) still counts, and one VM's text never
/// completes another's marker. Untagged lines (Bothy's own `bothy: ...`) belong to no
/// VM; so does a tag that is not at a line's start.
#[derive(Clone, Debug)]
pub struct TaggedScanner {
    /// `[name] ` per VM.
    tags: Vec<Vec<u8>>,
    scanners: Vec<MarkerScanner>,
    line: Line,
}

/// Where a [`TaggedScanner`] is in the current console line.
#[derive(Clone, Debug)]
enum Line {
    /// At its start: the bytes so far, while they may still become a tag.
    Start(Vec<u8>),
    /// In a line of this VM (after its tag).
    Vm(usize),
    /// In a line that belongs to no VM.
    Other,
}

impl TaggedScanner {
    pub fn new<S: AsRef<str>>(marker: &str, vms: &[S]) -> Self {
        Self {
            tags: vms
                .iter()
                .map(|v| format!("[{}] ", v.as_ref()).into_bytes())
                .collect(),
            scanners: vms.iter().map(|_| MarkerScanner::new(marker)).collect(),
            line: Line::Start(Vec::new()),
        }
    }

    /// Feeds the next chunk; returns the VMs (indices, in the order given to `new`)
    /// whose marker was completed by this chunk. Each VM is returned once.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<usize> {
        let mut text: Vec<Vec<u8>> = vec![Vec::new(); self.tags.len()];
        for &b in chunk {
            match b {
                b'\r' => continue,
                b'\n' => {
                    self.line = Line::Start(Vec::new());
                    continue;
                }
                _ => {}
            }
            match &mut self.line {
                Line::Vm(vm) => text[*vm].push(b),
                Line::Other => {}
                Line::Start(prefix) => {
                    prefix.push(b);
                    if let Some(vm) = self.tags.iter().position(|t| t == prefix) {
                        self.line = Line::Vm(vm);
                    } else if !self.tags.iter().any(|t| t.starts_with(prefix)) {
                        self.line = Line::Other;
                    }
                }
            }
        }
        let mut done = Vec::new();
        for (vm, (s, t)) in self.scanners.iter_mut().zip(&text).enumerate() {
            if !t.is_empty() && !s.found() && s.feed(t) {
                done.push(vm);
            }
        }
        done
    }

    /// Whether VM `vm`'s marker has been seen.
    pub fn found(&self, vm: usize) -> bool {
        self.scanners.get(vm).is_some_and(MarkerScanner::found)
    }
}

/// What a run waits for on QEMU's stdout (the guest console).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// The marker anywhere in the output.
    Marker(String),
    /// The marker on each of these VMs' tagged lines ([`TaggedScanner`]); the run
    /// ends when all have printed it.
    Tagged { marker: String, vms: Vec<String> },
}

impl Watch {
    /// How many markers the run waits for.
    pub fn count(&self) -> usize {
        match self {
            Watch::Marker(_) => 1,
            Watch::Tagged { vms, .. } => vms.len(),
        }
    }

    /// Marker `i` as it shows on the console: `BOTHY-GUEST-READY`,
    /// `[linux-a] BOTHY-GUEST-READY`.
    pub fn label(&self, i: usize) -> String {
        match self {
            Watch::Marker(m) => m.clone(),
            Watch::Tagged { marker, vms } => format!("[{}] {marker}", vms[i]),
        }
    }

    fn scanner(&self) -> Scanner {
        match self {
            Watch::Marker(m) => Scanner::One(MarkerScanner::new(m)),
            Watch::Tagged { marker, vms } => Scanner::Tagged(TaggedScanner::new(marker, vms)),
        }
    }
}

enum Scanner {
    One(MarkerScanner),
    Tagged(TaggedScanner),
}

impl Scanner {
    /// The markers (indices) completed by this chunk, each once.
    fn feed(&mut self, chunk: &[u8]) -> Vec<usize> {
        match self {
            Scanner::One(s) => {
                if !s.found() && s.feed(chunk) {
                    vec![0]
                } else {
                    Vec::new()
                }
            }
            Scanner::Tagged(s) => s.feed(chunk),
        }
    }
}

/// Median; the mean of the middle two for an even count. None when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `1.07x`.
pub fn format_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

/// `qemu-system-aarch64 --version`, first line.
pub fn qemu_version() -> Result<String> {
    let out = Command::new(QEMU)
        .arg("--version")
        .output()
        .with_context(|| format!("running {QEMU} --version (run ./scripts/setup.sh)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").trim().to_string())
}

/// `(busy, total)` CPU time of the whole host from the first line of /proc/stat, in
/// clock ticks (busy: everything but idle and iowait).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let total: u64 = v.iter().sum();
    Some((total - idle, total))
}

/// utime + stime of a process (all its threads) from /proc/PID/stat, in clock ticks.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    // The command name may contain anything, even ')': fields start after the last.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn host_cpu() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn process_cpu(pid: u32) -> Option<u64> {
    parse_pid_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The share of the host's CPU time between two /proc/stat samples that went to
/// anything but `own` ticks.
pub fn other_load(before: (u64, u64), after: (u64, u64), own: u64) -> Option<f64> {
    let busy = after.0.checked_sub(before.0)?;
    let total = after.1.checked_sub(before.1)?;
    (total > 0).then(|| busy.saturating_sub(own) as f64 / total as f64)
}

/// The command as one could type it (arguments with spaces quoted).
fn command_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One boot.
#[derive(Clone, Debug)]
pub struct Run {
    /// From spawning QEMU to the (last) marker.
    pub time: Duration,
    /// From spawning QEMU to each marker of the [`Watch`], in its order.
    pub times: Vec<Duration>,
    /// The share of the host's CPU time during the run that other processes used
    /// (compilers, other QEMUs, ...): they compete with QEMU's vCPU threads. None
    /// where /proc is not available.
    pub other_load: Option<f64>,
}

enum Event {
    /// Marker `.0` of the [`Watch`] was completed by bytes read at `.1`.
    Marker(usize, Instant),
    /// QEMU closed its console (it exited).
    Closed,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The marker (with several: the last of them) appeared this long after QEMU was
    /// spawned; QEMU was then stopped.
    Marker(Duration),
    /// QEMU exited before the marker (or before all of them; its status, when known).
    Exited(Option<ExitStatus>),
    /// Neither within the timeout; QEMU was stopped.
    TimedOut(Duration),
}

/// One QEMU run up to a marker (or several).
#[derive(Clone, Debug)]
pub struct Console {
    pub outcome: Outcome,
    /// Per marker of the [`Watch`], in its order: when it appeared, if it did.
    pub markers: Vec<Option<Duration>>,
    /// Everything QEMU wrote to stdout (the guest console), up to 8 MiB.
    pub stdout: Vec<u8>,
    /// The last 4 KiB of stdout and stderr, interleaved as they arrived.
    pub tail: Vec<u8>,
    /// See [`Run::other_load`]; only when the marker was seen.
    pub other_load: Option<f64>,
}

impl Console {
    /// The error for a run that did not reach `marker`, with the console tail.
    pub fn failure(&self, marker: &str) -> Option<anyhow::Error> {
        self.failure_for(&Watch::Marker(marker.to_string()))
    }

    /// The error for a run that did not reach every marker of `watch`, naming those
    /// missing (and when the others appeared), with the console tail.
    pub fn failure_for(&self, watch: &Watch) -> Option<anyhow::Error> {
        let label = |i: usize| format!("{:?}", watch.label(i));
        let missing: Vec<String> = (0..watch.count())
            .filter(|&i| self.markers.get(i).copied().flatten().is_none())
            .map(label)
            .collect();
        let seen: Vec<String> = (0..watch.count())
            .filter_map(|i| {
                let t = self.markers.get(i).copied().flatten()?;
                Some(format!("{} after {:.2} s", label(i), t.as_secs_f64()))
            })
            .collect();
        let missing = missing.join(" and ");
        let seen = if seen.is_empty() {
            String::new()
        } else {
            format!(" (seen: {})", seen.join(", "))
        };
        let what = match &self.outcome {
            Outcome::Marker(_) => return None,
            Outcome::Exited(status) => format!(
                "QEMU exited before the guest printed {missing}{seen} ({})",
                status.map_or("status unknown".into(), |s| s.to_string())
            ),
            Outcome::TimedOut(t) => format!(
                "timed out after {} s without {missing}{seen}; QEMU was stopped",
                t.as_secs()
            ),
        };
        let text = String::from_utf8_lossy(&self.tail).replace('\r', "");
        let text = match text.trim_end() {
            "" => "(no output)",
            t => t,
        };
        Some(anyhow::anyhow!("{what}\n--- console tail ---\n{text}"))
    }
}

/// Spawns `cmd` and returns the time until every marker of `watch` has appeared on
/// its stdout. QEMU is killed in every case before this returns.
pub fn time_to_markers(cmd: Command, watch: &Watch, timeout: Duration) -> Result<Run> {
    let c = run_to_markers(cmd, watch, timeout)?;
    match c.outcome {
        Outcome::Marker(time) => Ok(Run {
            time,
            times: c.markers.iter().map(|t| t.expect("all seen")).collect(),
            other_load: c.other_load,
        }),
        _ => Err(c.failure_for(watch).expect("not every marker")),
    }
}

/// Spawns `cmd`, waits until `marker` appears on its stdout, QEMU exits or `timeout`
/// passes, and returns what it printed. QEMU is killed in every case before this
/// returns. Err only if QEMU could not be started.
pub fn run_to_marker(cmd: Command, marker: &str, timeout: Duration) -> Result<Console> {
    run_to_markers(cmd, &Watch::Marker(marker.to_string()), timeout)
}

/// [`run_to_marker`] for every marker of `watch`: QEMU is stopped once all have
/// appeared, each one's time recorded as it shows up.
pub fn run_to_markers(mut cmd: Command, watch: &Watch, timeout: Duration) -> Result<Console> {
    // QEMU stays in bothy's process group, so Ctrl-C at the terminal stops it too;
    // it starts no children, so killing it by PID below leaves nothing behind.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let tail = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let cpu_before = host_cpu();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {QEMU} (run ./scripts/setup.sh to install it)"))?;
    // Held open so that QEMU's console never sees end of input.
    let stdin = child.stdin.take();
    let mut readers = Vec::new();
    let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped"));
    let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped"));
    for (stream, is_stdout) in [(stdout, true), (stderr, false)] {
        let tail = Arc::clone(&tail);
        let kept = is_stdout.then(|| Arc::clone(&kept));
        let tx = tx.clone();
        let scanner = is_stdout.then(|| watch.scanner());
        readers.push(std::thread::spawn(move || {
            read_console(stream, scanner, &tail, kept.as_deref(), &tx)
        }));
    }
    drop(tx);
    let deadline = start + timeout;
    let mut markers: Vec<Option<Duration>> = vec![None; watch.count()];
    let (outcome, load) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Marker(i, at)) => {
                markers[i] = Some(at - start);
                if markers.iter().all(Option::is_some) {
                    let (host, own) = (host_cpu(), process_cpu(child.id()));
                    let load = cpu_before
                        .zip(host)
                        .zip(own)
                        .and_then(|((b, a), own)| other_load(b, a, own));
                    break (Outcome::Marker(at - start), load);
                }
            }
            Ok(Event::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break (Outcome::Exited(child.wait().ok()), None)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break (Outcome::TimedOut(timeout), None),
        }
    };
    stop(&mut child);
    drop(stdin);
    for r in readers {
        let _ = r.join();
    }
    let take = |m: Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *m.lock().expect("console lock"));
    Ok(Console {
        outcome,
        markers,
        stdout: take(kept),
        tail: take(tail),
        other_load: load,
    })
}

/// Reads a console stream to its end, keeping the tail (and everything, into `kept`)
/// and reporting each marker once, with the time its last bytes were read.
fn read_console(
    mut stream: Box<dyn Read + Send>,
    mut scanner: Option<Scanner>,
    tail: &Mutex<Vec<u8>>,
    kept: Option<&Mutex<Vec<u8>>>,
    tx: &mpsc::Sender<Event>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            if scanner.is_some() {
                let _ = tx.send(Event::Closed);
            }
            return;
        }
        let now = Instant::now();
        // Kept before a marker is reported, so that what led up to it is complete.
        if let Some(k) = kept {
            let mut k = k.lock().expect("console lock");
            let room = KEEP_BYTES.saturating_sub(k.len()).min(n);
            k.extend_from_slice(&buf[..room]);
        }
        {
            let mut t = tail.lock().expect("tail lock");
            t.extend_from_slice(&buf[..n]);
            let excess = t.len().saturating_sub(TAIL_BYTES);
            t.drain(..excess);
        }
        if let Some(s) = scanner.as_mut() {
            for i in s.feed(&buf[..n]) {
                let _ = tx.send(Event::Marker(i, now));
            }
        }
    }
}

/// SIGKILL to the child's process group, then reap the child.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::READY_MARKER;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[4.0]), Some(4.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn marker_in_chunks() {
        let stream = b"[    1.0] Run /init as init process\r\nBOTHY-GUEST-READY 6.12 cpus=2\r\n";
        // Index of the marker's last byte.
        let last = stream
            .windows(READY_MARKER.len())
            .position(|w| w == READY_MARKER.as_bytes())
            .unwrap()
            + READY_MARKER.len()
            - 1;
        // Every split point into two chunks.
        for cut in 0..=stream.len() {
            let mut s = MarkerScanner::new(READY_MARKER);
            assert_eq!(s.feed(&stream[..cut]), cut > last, "cut at {cut}");
            assert!(s.feed(&stream[cut..]), "cut at {cut}");
        }
        // One byte at a time: found exactly when its last byte arrives.
        let mut s = MarkerScanner::new(READY_MARKER);
        let hits: Vec<bool> = stream.iter().map(|b| s.feed(&[*b])).collect();
        assert_eq!(hits.iter().position(|&h| h), Some(last));
        assert!(s.feed(b"more"), "stays found");

        let mut s = MarkerScanner::new(READY_MARKER);
        assert!(!s.feed(b"BOTHY-GUEST-"));
        assert!(!s.feed(b"READ"));
        assert!(!s.feed(b"\r\nY"));
        assert!(!s.feed(b""));
    }

    /// Two VMs' boot logs interleaved line by line, as Bothy's console mux sends them,
    /// with one of Bothy's own lines and a guest line that merely contains a tag.
    const SHARED: &[u8] = b"bothy: 2 VMs, 4 vCPUs on 2 CPUs\r\n\
        [linux-a] [    0.000000] Booting Linux on physical CPU 0x0\r\n\
        [linux-b] [    0.000000] Booting Linux on physical CPU 0x0\r\n\
        [linux-a] echo [linux-b] BOTHY-GUEST\r\n\
        [linux-b] BOTHY-GUEST-READY 6.12 cpus=2\r\n\
        [linux-a] [    1.2] Run /init as init process\r\n\
        [linux-a] BOTHY-GUEST-READY 6.12 cpus=2\r\n\
        [linux-b] bothy-guest# ";

    /// Index of the last byte of the first `needle` in `hay` at or after `from`.
    fn end_of(hay: &[u8], needle: &str, from: usize) -> usize {
        from + hay[from..]
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap()
            + needle.len()
            - 1
    }

    fn tagged() -> TaggedScanner {
        TaggedScanner::new(READY_MARKER, &["linux-a", "linux-b"])
    }

    #[test]
    fn tagged_markers_interleaved_and_in_chunks() {
        let b_at = end_of(SHARED, "[linux-b] BOTHY-GUEST-READY", 0);
        let a_at = end_of(SHARED, "[linux-a] BOTHY-GUEST-READY", 0);
        assert!(b_at < a_at);
        // Every split point into two chunks: each VM is reported exactly once, in the
        // chunk holding its marker's last byte.
        for cut in 0..=SHARED.len() {
            let mut s = tagged();
            let first = s.feed(&SHARED[..cut]);
            let second = s.feed(&SHARED[cut..]);
            let want = |vm: usize, at: usize| {
                if at < cut {
                    (vec![vm], vec![])
                } else {
                    (vec![], vec![vm])
                }
            };
            let (b1, b2) = want(1, b_at);
            let (a1, a2) = want(0, a_at);
            let sorted = |mut v: Vec<usize>| {
                v.sort();
                v
            };
            assert_eq!(sorted(first), sorted([b1, a1].concat()), "cut at {cut}");
            assert_eq!(sorted(second), sorted([b2, a2].concat()), "cut at {cut}");
            assert!(s.found(0) && s.found(1), "cut at {cut}");
            assert!(s.feed(SHARED).is_empty(), "reported twice, cut at {cut}");
        }
        // One byte at a time: each found exactly when its last byte arrives.
        let mut s = tagged();
        let hits: Vec<(usize, Vec<usize>)> = SHARED
            .iter()
            .enumerate()
            .map(|(i, b)| (i, s.feed(&[*b])))
            .filter(|(_, h)| !h.is_empty())
            .collect();
        assert_eq!(hits, vec![(b_at, vec![1]), (a_at, vec![0])]);
    }

    #[test]
    fn tagged_marker_only_on_its_own_lines() {
        let feed = |text: &[u8]| {
            let mut s = tagged();
            let mut hits = s.feed(text);
            hits.sort();
            hits
        };
        // Untagged: Bothy's own line, a single VM's console, an unknown VM, a tag
        // that is not at the line's start, a tag without its space.
        for text in [
            &b"bothy: BOTHY-GUEST-READY\r\n"[..],
            b"BOTHY-GUEST-READY 6.12 cpus=2\r\n",
            b"[linux-c] BOTHY-GUEST-READY\r\n",
            b"[linux-a]BOTHY-GUEST-READY\r\n",
            b"x[linux-a] BOTHY-GUEST-READY\r\n",
            b"[linux-b\r\n[linux-a BOTHY-GUEST-READY\r\n",
        ] {
            assert_eq!(
                feed(text),
                Vec::<usize>::new(),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        // Half a marker from each VM makes none.
        assert!(feed(b"[linux-a] BOTHY-GUEST-\r\n[linux-b] READY\r\n").is_empty());
        // A line the mux broke in two (linux-a went quiet mid-line) still counts.
        assert_eq!(
            feed(b"[linux-a] BOTHY-GU\r\n[linux-b] login\r\n[linux-a] EST-READY 6.12\r\n"),
            vec![0]
        );
        // Bare \n line ends, and a line tagged for each.
        assert_eq!(
            feed(b"[linux-b] BOTHY-GUEST-READY\n[linux-a] BOTHY-GUEST-READY"),
            vec![0, 1]
        );
    }

    #[test]
    fn watch_labels_and_failures() {
        let w = Watch::Tagged {
            marker: READY_MARKER.into(),
            vms: vec!["linux-a".into(), "linux-b".into()],
        };
        assert_eq!(w.count(), 2);
        assert_eq!(w.label(1), "[linux-b] BOTHY-GUEST-READY");
        let one = Watch::Marker(READY_MARKER.into());
        assert_eq!((one.count(), one.label(0)), (1, READY_MARKER.to_string()));
        let c = Console {
            outcome: Outcome::TimedOut(Duration::from_secs(120)),
            markers: vec![Some(Duration::from_millis(5250)), None],
            stdout: Vec::new(),
            tail: b"[linux-a] BOTHY-GUEST-READY\r\n[linux-b] Kernel panic\r\n".to_vec(),
            other_load: None,
        };
        let e = c.failure_for(&w).unwrap().to_string();
        assert!(
            e.starts_with(
                "timed out after 120 s without \"[linux-b] BOTHY-GUEST-READY\" (seen: \
                 \"[linux-a] BOTHY-GUEST-READY\" after 5.25 s); QEMU was stopped\n\
                 --- console tail ---\n[linux-a] BOTHY-GUEST-READY\n[linux-b] Kernel panic"
            ),
            "{e}"
        );
        let c = Console {
            outcome: Outcome::Exited(None),
            markers: vec![None],
            ..c
        };
        let e = c.failure(READY_MARKER).unwrap().to_string();
        assert!(
            e.starts_with(
                "QEMU exited before the guest printed \"BOTHY-GUEST-READY\" (status unknown)"
            ),
            "{e}"
        );
    }

    #[test]
    fn cpu_accounting() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((160, 1180)));
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat(""), None);
        let pid = "4242 (qemu-system-aar) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                   730 41 0 0 20 0 7 0 1234 0 0";
        assert_eq!(parse_pid_stat(pid), Some(771));
        assert_eq!(
            parse_pid_stat("1 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            Some(23)
        );
        assert_eq!(parse_pid_stat("garbage"), None);
        // 2 CPUs for 1 s at 100 ticks/s: 200 ticks, 150 busy, 120 of them QEMU's.
        assert_eq!(other_load((0, 0), (150, 200), 120), Some(0.15));
        assert_eq!(other_load((10, 10), (5, 5), 0), None);
    }

    #[test]
    fn ratio_and_config_names() {
        assert_eq!(format_ratio(1.0678), "1.07x");
        assert_eq!(format_ratio(2.0), "2.00x");
        assert_eq!(Config::parse("Xen"), Ok(Config::Xen));
        assert!(Config::parse("kvm").is_err());
    }
}
