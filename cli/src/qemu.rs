//! Running a Bothy image on QEMU's `virt` board and judging the outcome.
//!
//! The console is the user's terminal: QEMU inherits stdin (a TTY for people, a pipe
//! for tests), and its output is forwarded byte by byte to our stdout while a copy is
//! scanned for the hypervisor's verdict lines. A run succeeds only when QEMU exits 0
//! *and* the hypervisor printed [`SUCCESS_LINE`] (it does so right before PSCI
//! SYSTEM_OFF); QEMU alone exits 0 on many kinds of failure, e.g. a guest that powers
//! the whole machine off under a broken hypervisor.
//!
//! Why a guest cannot forge the verdict: only lines that *start* with `bothy: ` count,
//! and every line a guest writes starts with its VM's `[name] ` tag. Bothy's console
//! multiplexer (`core/src/dev/mux.rs`) puts the tag at the start of each guest line,
//! ends an open guest line before Bothy writes one of its own, and shows a guest's
//! control characters instead of obeying them (a carriage return only goes out as part
//! of a line end), so no byte sequence from a guest begins a console line with anything
//! but its tag. A guest cannot power the machine off either (PSCI SYSTEM_OFF is
//! trapped; only Bothy calls the firmware), so QEMU's own exit is Bothy's doing too.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wait_timeout::ChildExt;

use crate::size::MIB;

pub const QEMU: &str = "qemu-system-aarch64";
/// Printed by the hypervisor when every VM has powered off, just before it powers off.
pub const SUCCESS_LINE: &str = "bothy: all VMs powered off";
/// The other clean end: a VM with `on_exit = "poweroff"` stopped.
pub const POWEROFF_LINE: &str = "bothy: powering the machine off";
/// Prefix of the hypervisor's fatal-error lines.
pub const ERROR_PREFIX: &str = "bothy: error:";
/// Printed by the hypervisor when the loader entered it at EL1. (A guest Linux prints
/// a plain "kvm [1]: HYP mode not available" under Bothy: that must not match.)
pub const NO_HYP_MODE: &str = "HYP mode not available: entered at EL1";

/// How QEMU's `virt` machine is set up.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: u32,
    pub memory: u64,
    /// `virtualization=on`: enter at EL2. Off only to test the EL1 refusal.
    pub el2: bool,
    /// More `virt` board properties, `key=value` each, added to `-machine`
    /// (`mte=on`: a CPU with MTE and tag memory).
    pub machine_opts: Vec<String>,
    pub extra_args: Vec<String>,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            cpus: 2,
            memory: 1 << 30,
            el2: true,
            machine_opts: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

impl Machine {
    /// `qemu-system-aarch64 -machine virt,... -kernel <image>`, stdio not yet set.
    pub fn command(&self, image: &Path) -> Command {
        let mut c = Command::new(QEMU);
        let virt = if self.el2 { "on" } else { "off" };
        let mut machine = format!("virt,virtualization={virt},gic-version=3");
        for opt in &self.machine_opts {
            machine.push(',');
            machine.push_str(opt);
        }
        c.arg("-machine")
            .arg(machine)
            // pauth-impdef: same features, about twice as fast under TCG.
            .args(["-cpu", "max,pauth-impdef=on"])
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(format!("{}M", self.memory / MIB))
            // -nic none: Debian's QEMU lacks the network boot ROMs.
            .args(["-nographic", "-nic", "none"])
            .arg("-kernel")
            .arg(image)
            .args(&self.extra_args);
        c
    }
}

/// What the console showed, line by line.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub success_line: bool,
    /// The first `bothy: error:` line, without that prefix.
    pub error_line: Option<String>,
    pub no_hyp_mode: Option<String>,
    partial: Vec<u8>,
}

impl Verdict {
    /// Feeds console bytes; lines may arrive split across reads.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                self.partial.clear();
                self.line(&line);
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
    }

    fn line(&mut self, line: &str) {
        // Anchored at the line's start: a guest's lines start with its `[name] ` tag.
        if line.starts_with(SUCCESS_LINE) || line.starts_with(POWEROFF_LINE) {
            self.success_line = true;
        }
        if let Some(msg) = line.strip_prefix(ERROR_PREFIX) {
            self.error_line.get_or_insert(msg.trim().to_string());
        }
        if let Some(at) = line.find(NO_HYP_MODE) {
            self.no_hyp_mode
                .get_or_insert_with(|| line[at..].to_string());
        }
    }

    /// Turns QEMU's exit status (None: timed out) into the CLI's result.
    pub fn judge(&self, status: Option<ExitStatus>, timeout: Option<Duration>) -> Result<()> {
        if let Some(e) = &self.error_line {
            bail!("hypervisor: {e}");
        }
        if let Some(e) = &self.no_hyp_mode {
            bail!("the hypervisor could not start: {e}");
        }
        let Some(status) = status else {
            bail!(
                "timed out after {} s; QEMU was stopped",
                timeout.map_or(0, |t| t.as_secs())
            );
        };
        if !status.success() {
            bail!("QEMU failed ({status})");
        }
        if !self.success_line {
            bail!(
                "QEMU exited without the hypervisor's success line {SUCCESS_LINE:?}: \
                 the system did not shut down cleanly"
            );
        }
        Ok(())
    }
}

/// Runs QEMU with the console attached until it exits or `timeout` passes.
pub fn run_attached(mut cmd: Command, timeout: Option<Duration>) -> Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("bothy: console attached; type Ctrl-A x to quit QEMU");
    }
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {QEMU} (run ./scripts/setup.sh to install it)"))?;
    let verdict = Arc::new(Mutex::new(Verdict::default()));
    let mut out = child.stdout.take().expect("piped");
    let v = Arc::clone(&verdict);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            // The console must feel live: forward every chunk at once.
            let _ = stdout.write_all(&buf[..n]);
            let _ = stdout.flush();
            v.lock().expect("verdict lock").feed(&buf[..n]);
        }
    });
    let status = wait(&mut child, timeout)?;
    let _ = reader.join();
    let verdict = verdict.lock().expect("verdict lock").clone();
    verdict.judge(status, timeout)
}

/// Waits for `child`; on timeout stops it (SIGTERM first so QEMU restores the
/// terminal, then SIGKILL) and returns None.
pub fn wait(child: &mut Child, timeout: Option<Duration>) -> Result<Option<ExitStatus>> {
    let Some(t) = timeout else {
        return Ok(Some(child.wait()?));
    };
    if let Some(s) = child.wait_timeout(t)? {
        return Ok(Some(s));
    }
    terminate(child);
    Ok(None)
}

/// SIGTERM, a grace period, then SIGKILL.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if let Ok(Some(_)) = child.wait_timeout(Duration::from_secs(3)) {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn command_line() {
        let m = Machine {
            extra_args: vec!["-s".into()],
            ..Machine::default()
        };
        let c = m.command(Path::new("/tmp/b.img"));
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-machine virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on -smp 2 \
             -m 1024M -nographic -nic none -kernel /tmp/b.img -s"
        );
        let mte = Machine {
            machine_opts: vec!["mte=on".into()],
            ..Machine::default()
        };
        let c = mte.command(Path::new("/tmp/b.img"));
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args[1], "virt,virtualization=on,gic-version=3,mte=on");
    }

    #[test]
    fn verdicts() {
        let mut v = Verdict::default();
        v.feed(b"boot\r\nbothy: all VMs pow");
        assert!(!v.success_line);
        v.feed(b"ered off\r\n");
        let mut p = Verdict::default();
        p.feed(b"bothy: powering the machine off (VM rt has on_exit = \"poweroff\")\n");
        assert!(p.success_line);
        assert!(v.success_line);
        v.judge(Some(exit(0)), None).unwrap();
        let e = v.judge(Some(exit(1)), None).unwrap_err().to_string();
        assert!(e.contains("QEMU failed"), "{e}");
        let e = v
            .judge(None, Some(Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out after 5 s"), "{e}");

        let v = Verdict::default();
        let e = v.judge(Some(exit(0)), None).unwrap_err().to_string();
        assert!(e.contains("success line"), "{e}");

        let mut v = Verdict::default();
        v.feed(b"bothy: error: no GIC in the DTB\n");
        let e = v.judge(Some(exit(0)), None).unwrap_err().to_string();
        assert_eq!(e, "hypervisor: no GIC in the DTB");

        // A guest's lines start with its tag: what it prints is never a verdict.
        let mut v = Verdict::default();
        v.feed(b"[evil] bothy: all VMs powered off\r\n[evil] bothy: error: fake\r\n");
        v.feed(b"[evil] x^Mbothy: powering the machine off\r\n");
        assert!(!v.success_line);
        assert_eq!(v.error_line, None);

        let mut v = Verdict::default();
        v.feed(b"[    0.853443] kvm [1]: HYP mode not available\n");
        assert_eq!(v.no_hyp_mode, None);
        v.feed(b"HYP mode not available: entered at EL1; the firmware must start Bothy at EL2\n");
        let e = v.judge(None, None).unwrap_err().to_string();
        assert!(e.contains("entered at EL1"), "{e}");
    }
}
