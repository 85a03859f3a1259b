//! Test support: a console driver for QEMU and the shared fixtures of the QEMU tests.
//!
//! [`Console`] spawns a process with piped stdio, collects everything it prints on a
//! reader thread, and lets a test `expect` text (with a deadline) and `send` lines,
//! like a person at the terminal. Every run is bounded: `expect` and `wait` take
//! timeouts, and dropping a `Console` kills the process, so a failing test never
//! leaves QEMU behind. On failure the transcript tail is in the panic message.
//!
//! QEMU tests take [`qemu_lock`] so that only one QEMU runs at a time: the CI machine
//! has two cores and a Linux boot under TCG wants both.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// Serializes QEMU runs within a test binary (cargo runs binaries one at a time).
pub fn qemu_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

struct Output {
    bytes: Vec<u8>,
    /// Streams (stdout, stderr) not yet at end of file.
    open: usize,
}

pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<(Mutex<Output>, Condvar)>,
    /// Everything before this byte offset has been matched already.
    cursor: usize,
    name: String,
}

impl Console {
    /// Spawns `cmd` with stdin/stdout piped (stderr merged into the transcript too), in
    /// a process group of its own so that killing it also kills what it started
    /// (`bothy run` starts QEMU).
    pub fn spawn(mut cmd: Command, name: &str) -> Self {
        // One pipe for both streams, as a shell's `2>&1`: the transcript then has the
        // hypervisor's lines (QEMU's stdout, passed on by `bothy run`) and `bothy`'s own
        // (stderr) in the order they were written. Two pipes read by two threads could
        // splice one into the middle of the other.
        let (reader, writer) = std::io::pipe().expect("pipe");
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(writer.try_clone().expect("pipe"))
            .stderr(writer);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {cmd:?}: {e}"));
        // The parent's copies of the writing end must go, or the reader never sees the
        // end of the output.
        drop(cmd);
        let out = Arc::new((
            Mutex::new(Output {
                bytes: Vec::new(),
                open: 1,
            }),
            Condvar::new(),
        ));
        {
            let mut s = reader;
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    let (lock, cv) = &*out;
                    let mut o = lock.lock().unwrap();
                    if n == 0 {
                        o.open -= 1;
                        cv.notify_all();
                        return;
                    }
                    o.bytes.extend_from_slice(&buf[..n]);
                    cv.notify_all();
                }
            });
        }
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            out,
            cursor: 0,
            name: name.to_string(),
        }
    }

    /// Everything printed so far, lossily decoded.
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.out.0.lock().unwrap().bytes).into_owned()
    }

    /// The whole transcript written to a file for a failed test (its tail alone may
    /// be all one busy VM's lines); returns where, to be said in the failure.
    fn keep_transcript(&self) -> String {
        dump_cpus_if_debugging(&self.name);
        let safe: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path =
            std::env::temp_dir().join(format!("bothy-failed-{safe}-{}.txt", std::process::id()));
        match std::fs::write(&path, self.out.0.lock().unwrap().bytes.as_slice()) {
            Ok(()) => format!("--- whole transcript in {} ---", path.display()),
            Err(e) => format!("--- whole transcript not kept: {e} ---"),
        }
    }

    fn tail(&self) -> String {
        let t = self.transcript();
        let start = t.len().saturating_sub(6000);
        let start = (start..t.len())
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        t[start..].to_string()
    }

    /// Waits until `pattern` appears after the previous match; returns the text from
    /// the previous match to the end of this one. Panics with the transcript tail on
    /// timeout or if the process closes its output first.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> String {
        match self.try_expect(&[pattern], timeout) {
            Some((_, text)) => text,
            None => panic!(
                "{}: did not see {pattern:?} within {timeout:?}\n--- console tail ---\n{}\n{}",
                self.name,
                self.tail(),
                self.keep_transcript()
            ),
        }
    }

    /// Waits until VM `vm`'s own output (its `[vm] `-tagged lines, joined without the
    /// line breaks) contains `pattern`. Bothy breaks a guest's line where another VM's
    /// output cuts in, so a pattern printed while several VMs talk at once may not be
    /// contiguous in the transcript. Does not move the `expect` cursor.
    pub fn expect_vm(&mut self, vm: &str, pattern: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let stream = self.vm_stream(vm);
            if stream.contains(pattern) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: VM {vm} did not print {pattern:?} within {timeout:?}\n--- console tail ---\n{}\n{}",
                    self.name,
                    self.tail(),
                    self.keep_transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// VM `vm`'s own output: its `[vm] `-tagged lines with the tags taken off, joined
    /// without the line breaks (see `expect_vm`).
    fn vm_stream(&self, vm: &str) -> String {
        let tag = format!("[{vm}] ");
        self.transcript()
            .lines()
            .filter_map(|l| l.strip_prefix(&tag))
            .collect()
    }

    /// The `n`-th (from 1) self-test summary VM `vm` printed — e.g. `24 passed, 0
    /// failed, 1 skipped` — from its own output, so a summary line that another VM's
    /// output or Bothy's cut in two still reads whole. Waits for it; does not move the
    /// `expect` cursor.
    pub fn expect_vm_summary(&mut self, vm: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stream = self.vm_stream(vm);
            let summary = stream
                .split("TEST summary: ")
                .nth(n)
                .and_then(|rest| rest.find(" skipped").map(|end| rest[..end + 8].to_string()));
            if let Some(summary) = summary {
                return summary;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: VM {vm} did not print its summary {n} times within {timeout:?}\n--- console tail ---\n{}\n{}",
                    self.name,
                    self.tail(),
                    self.keep_transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many self-test summaries VM `vm` has printed so far.
    pub fn vm_summaries(&self, vm: &str) -> usize {
        self.vm_stream(vm).matches("TEST summary: ").count()
    }

    /// Waits until `pattern` occurs `n` times in the whole transcript (for lines whose
    /// order against held guest output is not fixed); does not move the cursor.
    pub fn expect_count(&mut self, pattern: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.transcript().matches(pattern).count() < n {
            if Instant::now() >= deadline {
                panic!(
                    "{}: {pattern:?} not seen {n} times within {timeout:?}\n--- console tail ---\n{}\n{}",
                    self.name,
                    self.tail(),
                    self.keep_transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves the `expect` cursor to the end of what has been printed so far.
    pub fn skip_to_end(&mut self) {
        self.cursor = self.out.0.lock().unwrap().bytes.len();
    }

    /// Waits for the first of `patterns`; returns its index and the text up to it,
    /// or None on timeout / end of output.
    pub fn try_expect(&mut self, patterns: &[&str], timeout: Duration) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut o = lock.lock().unwrap();
        loop {
            let hay = &o.bytes[self.cursor.min(o.bytes.len())..];
            let found = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| find(hay, p.as_bytes()).map(|at| (at, i, p.len())))
                .min();
            if let Some((at, i, len)) = found {
                let end = self.cursor + at + len;
                let text = String::from_utf8_lossy(&o.bytes[self.cursor..end]).into_owned();
                self.cursor = end;
                return Some((i, text));
            }
            let now = Instant::now();
            if o.open == 0 || now >= deadline {
                return None;
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }

    /// Types `line` and Enter in one burst, like a paste: Bothy must buffer console
    /// input beyond the PL011's 32-byte FIFO rather than drop it.
    /// Sends bytes as they are (no newline): control keys like Ctrl-] or Ctrl-\\.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(bytes)
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: writing to the console: {e}"));
    }

    pub fn send(&mut self, line: &str) {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: writing to the console: {e}"));
    }

    /// Runs a shell command and returns its output: the command's output is bracketed
    /// by markers that the echo of the typed line cannot contain (`$((..))` is only
    /// expanded by the shell), so the result never picks up the echoed command.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> String {
        self.send(&format!(
            "echo @@BEGIN$((6*7))@@; {cmd}; echo @@END$((6*7))@@"
        ));
        self.expect("@@BEGIN42@@", timeout);
        let out = self.expect("@@END42@@", timeout);
        let out = out.trim_end_matches("@@END42@@").replace('\r', "");
        // Bothy tags each guest line `[name] `: the command's output without the tags.
        out.lines()
            .map(untag)
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.stdin.take();
        match self.child.wait_timeout(timeout).expect("wait") {
            Some(s) => s,
            None => {
                self.kill();
                panic!(
                    "{}: still running after {timeout:?}; killed\n--- console tail ---\n{}\n{}",
                    self.name,
                    self.tail(),
                    self.keep_transcript()
                )
            }
        }
    }
}

impl Console {
    /// SIGKILL to the whole process group, then reap the child.
    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Also when the child has exited: a grandchild may still hold the group.
        self.kill();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `bothy` binary under test.
/// With `BOTHY_TEST_GDB=PORT` set, extra `bothy run` arguments that open QEMU's gdb
/// stub on that port, so that a test that times out can dump what each CPU was doing
/// (`dump_cpus_if_debugging`); nothing otherwise.
pub fn debug_args() -> Vec<String> {
    match std::env::var("BOTHY_TEST_GDB") {
        Ok(port) => vec!["--qemu-arg=-gdb".into(), format!("--qemu-arg=tcp::{port}")],
        Err(_) => Vec::new(),
    }
}

/// For `BOTHY_TEST_GDB`: each CPU's registers and backtrace (EL2 symbols from the
/// hypervisor's ELF at QEMU's `-kernel` load address) into a file beside the transcript.
fn dump_cpus_if_debugging(name: &str) {
    let Ok(port) = std::env::var("BOTHY_TEST_GDB") else {
        return;
    };
    let elf = repo().join("hyp/target/aarch64-unknown-none-softfloat/release/bothy-hyp");
    let out = Command::new("gdb-multiarch")
        .args(["-batch", "-ex", "set pagination off"])
        .args(["-ex", &format!("target remote :{port}")])
        .args([
            "-ex",
            &format!("add-symbol-file {} -o 0x40200000", elf.display()),
        ])
        .args(["-ex", "info threads", "-ex", "thread apply all bt 20"])
        .args([
            "-ex",
            "thread apply all info registers pc sp elr_el2 esr_el2 spsr_el2 x0 x1 x2 x30",
        ])
        .output();
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = std::env::temp_dir().join(format!("bothy-gdb-{safe}-{}.txt", std::process::id()));
    if let Ok(o) = out {
        let _ = std::fs::write(&path, [o.stdout, o.stderr].concat());
    }
}

pub fn bothy() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bothy"))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// True when the hypervisor sources exist (the lead may still be writing them).
pub fn hyp_present() -> bool {
    repo().join("hyp/Cargo.toml").is_file()
}

/// Builds the bare-metal selftest guest (guests/selftest) and returns its ELF;
/// `bothy image` flattens ELFs itself.
pub fn build_selftest_guest() -> PathBuf {
    let dir = repo().join("guests/selftest");
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "aarch64-unknown-none"])
        .current_dir(&dir)
        .status()
        .expect("cargo build of guests/selftest");
    assert!(status.success(), "building guests/selftest failed");
    dir.join("target/aarch64-unknown-none/release/selftest")
}

/// Builds the bare-metal attacker guest (guests/attacker: attacker or victim by its
/// bootargs) and returns its ELF.
pub fn build_attacker_guest() -> PathBuf {
    let dir = repo().join("guests/attacker");
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "aarch64-unknown-none"])
        .current_dir(&dir)
        .status()
        .expect("cargo build of guests/attacker");
    assert!(status.success(), "building guests/attacker failed");
    dir.join("target/aarch64-unknown-none/release/attacker")
}

/// A system file with one selftest VM of `cpus` vCPUs, written into `dir`.
pub fn selftest_system(dir: &Path, cpus: u32) -> PathBuf {
    let guest = build_selftest_guest();
    let system = format!(
        "[[vm]]\nname = \"selftest\"\ncpus = {cpus}\nmemory = \"64M\"\nkernel = {:?}\n",
        guest.display().to_string()
    );
    let path = dir.join("selftest.toml");
    std::fs::write(&path, system).unwrap();
    path
}

/// `bothy image` of the selftest system: a small Bothy image that boots in seconds.
pub fn selftest_image(dir: &Path) -> PathBuf {
    let system = selftest_system(dir, 2);
    let img = dir.join("bothy-selftest.img");
    let status = Command::new(bothy())
        .arg("image")
        .arg(&system)
        .arg("-o")
        .arg(&img)
        .status()
        .expect("bothy image");
    assert!(
        status.success(),
        "bothy image of the selftest system failed"
    );
    img
}

/// QEMU virt with 2 CPUs and 1 GiB; `machine` extends `virt,gic-version=...` options.
pub fn qemu(machine: &str) -> Command {
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(["-machine", machine])
        .args(["-cpu", "max,pauth-impdef=on", "-smp", "2", "-m", "1G"])
        .args(["-nographic", "-nic", "none"]);
    cmd
}

/// A system file of Linux VMs (Debian's cached kernel, the demo busybox initramfs),
/// each `(name, vCPUs, memory, extra TOML lines)`, followed by `tail` (more VMs or
/// top-level keys), written into `dir`.
pub fn linux_system(dir: &Path, vms: &[(&str, u32, &str, &str)], tail: &str) -> PathBuf {
    let a = bothy_cli::cache::Cache::default_location()
        .guest_artifacts()
        .expect("guest artifacts (run ./scripts/setup.sh)");
    let initrd = dir.join("initrd.gz");
    std::fs::write(&initrd, bothy_cli::initramfs::build_demo(&a).unwrap()).unwrap();
    let mut text = String::new();
    for (name, cpus, memory, extra) in vms {
        text += &format!(
            "[[vm]]\nname = \"{name}\"\ncpus = {cpus}\nmemory = \"{memory}\"\nkernel = {:?}\n\
             initrd = {:?}\nbootargs = \"console=ttyAMA0 quiet\"\n{extra}\n",
            a.kernel.display().to_string(),
            initrd.display().to_string()
        );
    }
    text += tail;
    let path = dir.join("linux.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A console line without the `[name] ` tag Bothy puts before each guest line (a line
/// that is only a tag comes back empty).
pub fn untag(line: &str) -> &str {
    let t = line.trim_start();
    match t
        .strip_prefix('[')
        .and_then(|r| r.find(']').map(|e| &r[e + 1..]))
    {
        Some(rest) if !t.starts_with("[ ") => rest.strip_prefix(' ').unwrap_or(rest),
        _ => line,
    }
}
