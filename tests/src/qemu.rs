//! Linux guests under QEMU 11's emulator (TCG, no KVM) with QEMU's vfio-user client: the
//! real-client tier for nicd (tests/tests/nicd_qemu.rs). Debian's 6.12 bzImage
//! (guest-images/cache/vmlinuz) boots with the guest initramfs (out/initramfs.cpio.gz,
//! which loads igbvf) on a q35 machine whose RAM is a shared memfd (so QEMU can hand it to
//! the vfio-user server in DMA_MAP), with one `vfio-user-pci` device per socket given.
//!
//! The console is QEMU's serial port on its stdio: lines are collected as they come and
//! echoed to stderr as `NAME| ...`; markers are awaited with deadlines (a hang guard, never
//! a sleep), and lines written to QEMU's stdin reach the guest's console (the `vf`
//! scenario's commands). QEMU is found as the nested-KVM tier finds it
//! ([`crate::nested::qemu_binary`]), and its failures are judged by the same policy
//! ([`Outcome::is_emulator_failure`]): only a frozen or crashed emulator may be retried,
//! once ([`retry_emulator_failure`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::nested::{Line, NestedError, Outcome, pump, qemu_binary};

/// What boots a Linux guest under QEMU: QEMU's wrapper, the bzImage and the initramfs.
#[derive(Debug, Clone)]
pub struct LinuxImage {
    /// QEMU's wrapper (guest-images/qemu.sh, or `$VMM_QEMU`).
    pub qemu: PathBuf,
    /// Debian's bzImage, guest-images/cache/vmlinuz (QEMU's `-kernel` wants a bzImage).
    pub kernel: PathBuf,
    /// out/initramfs.cpio.gz.
    pub initramfs: PathBuf,
}

impl LinuxImage {
    /// Finds QEMU and the images, or says which is missing (and how to make it).
    pub fn find() -> Result<Self, NestedError> {
        let qemu = qemu_binary();
        if !qemu.exists() {
            return Err(NestedError::QemuMissing(qemu));
        }
        let out = crate::guest_images_out();
        // The bzImage sits in cache/ beside out/ (or in $VMM_GUEST_IMAGES when set).
        let kernel = [
            out.join("vmlinuz"),
            out.parent().unwrap_or(&out).join("cache/vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| NestedError::ImageMissing(out.join("../cache/vmlinuz")))?;
        let initramfs = out.join("initramfs.cpio.gz");
        if !initramfs.exists() {
            return Err(NestedError::ImageMissing(initramfs));
        }
        let modules = std::fs::read_to_string(out.join("initramfs.modules")).unwrap_or_default();
        if !modules.lines().any(|m| m == "igbvf.ko") {
            return Err(NestedError::ImageMissing(initramfs));
        }
        Ok(Self {
            qemu,
            kernel,
            initramfs,
        })
    }
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Names the guest in echoed lines and messages.
    pub name: String,
    /// Guest RAM (the memfd's size), e.g. "1G".
    pub memory: String,
    /// `guest.scenario=`.
    pub scenario: String,
    /// More `guest.NAME=VALUE` words for the kernel command line.
    pub params: Vec<(String, String)>,
    /// A `vfio-user-pci` device per socket, in this order.
    pub vfio_user: Vec<PathBuf>,
    /// No console line for this long while a marker is awaited: the emulator froze.
    pub stall: Duration,
}

impl GuestSpec {
    /// A guest running `scenario`, 1 GiB, no devices, a 90 s stall limit.
    pub fn new(name: &str, scenario: &str) -> Self {
        Self {
            name: name.into(),
            memory: "1G".into(),
            scenario: scenario.into(),
            params: Vec::new(),
            vfio_user: Vec::new(),
            stall: Duration::from_secs(90),
        }
    }

    /// Adds `guest.NAME=VALUE` to the kernel command line.
    pub fn param(mut self, name: &str, value: impl ToString) -> Self {
        self.params.push((name.into(), value.to_string()));
        self
    }

    /// Attaches a vfio-user-pci device served on the unix socket `socket`.
    pub fn vfio_user(mut self, socket: &Path) -> Self {
        self.vfio_user.push(socket.into());
        self
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut c = format!(
            "console=ttyS0 panic=-1 loglevel=5 guest.scenario={}",
            self.scenario
        );
        for (k, v) in &self.params {
            c.push_str(&format!(" guest.{k}={v}"));
        }
        c
    }

    /// QEMU's arguments: q35 with its RAM a shared memfd, TCG, one vCPU, the serial
    /// console on stdio, no default devices, no reboot (a reset ends QEMU).
    pub fn qemu_args(&self, image: &LinuxImage) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "q35,memory-backend=mem",
            "-object",
            &format!("memory-backend-memfd,id=mem,size={},share=on", self.memory),
            "-m",
            &self.memory,
            "-cpu",
            "max",
            "-smp",
            "1",
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("-kernel".into());
        a.push(image.kernel.to_string_lossy().into());
        a.push("-initrd".into());
        a.push(image.initramfs.to_string_lossy().into());
        a.push("-append".into());
        a.push(self.cmdline());
        for socket in &self.vfio_user {
            a.push("-device".into());
            a.push(
                serde_json::json!({
                    "driver": "vfio-user-pci",
                    "socket": { "type": "unix", "path": socket.to_string_lossy() },
                })
                .to_string(),
            );
        }
        a
    }
}

/// Why a wait on the guest ended without its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The scenario printed `GUEST SCENARIO NAME FAIL: ...` (this line).
    ScenarioFailed(String),
    /// The guest or the emulator ended or hung ([`Outcome::Exited`]: the guest powered
    /// off by itself).
    Ended(Outcome),
}

/// A wait on the guest that did not see its marker, with the transcript so far.
#[derive(Debug, Clone, thiserror::Error)]
#[error("guest {guest}: {why}\n{transcript}")]
pub struct GuestError {
    /// The guest's name.
    pub guest: String,
    /// Why.
    pub why: Why,
    /// Console and QEMU stderr so far.
    pub transcript: String,
}

impl GuestError {
    /// Whether the emulator, not the code under test, ended the run (the nested tier's
    /// policy): only such runs may be retried.
    pub fn is_emulator_failure(&self) -> bool {
        matches!(&self.why, Why::Ended(o) if o.is_emulator_failure())
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::ScenarioFailed(l) => write!(f, "the scenario failed: {l}"),
            Why::Ended(Outcome::Exited(_)) => write!(f, "the guest powered off"),
            Why::Ended(o) => write!(f, "{o}"),
        }
    }
}

/// A Linux guest running under QEMU. Dropping it kills QEMU.
pub struct QemuGuest {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    /// Console lines so far.
    pub console: Vec<String>,
    /// QEMU's stderr so far.
    pub stderr: Vec<String>,
    start: Instant,
    last_output: Instant,
    stall: Duration,
    open_streams: usize,
    scenario: String,
    /// Console lines before this index are behind the last marker found.
    cursor: usize,
}

impl QemuGuest {
    /// Starts QEMU for `spec`.
    pub fn boot(image: &LinuxImage, spec: &GuestSpec) -> Result<Self, NestedError> {
        let mut child = Command::new(&image.qemu)
            .args(spec.qemu_args(image))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NestedError::Io {
                what: format!("spawn {}", image.qemu.display()),
                source,
            })?;
        let (tx, rx) = channel();
        pump(
            child.stdout.take().expect("stdout is piped"),
            tx.clone(),
            Line::Console,
        );
        pump(
            child.stderr.take().expect("stderr is piped"),
            tx,
            Line::Stderr,
        );
        let now = Instant::now();
        Ok(Self {
            name: spec.name.clone(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            console: Vec::new(),
            stderr: Vec::new(),
            start: now,
            last_output: now,
            stall: spec.stall,
            open_streams: 2,
            scenario: spec.scenario.clone(),
            cursor: 0,
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn error(&self, why: Why) -> GuestError {
        GuestError {
            guest: self.name.clone(),
            why,
            transcript: self.transcript(),
        }
    }

    /// Waits for a console line after the last marker found that starts with `marker`,
    /// and returns it (markers are consumed in order, so a step's marker seen earlier does
    /// not satisfy a later wait for it). Ends early, with the reason, when the scenario
    /// fails, the kernel panics, QEMU exits, or no console line comes for the stall limit;
    /// `timeout` bounds the whole wait.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, GuestError> {
        if let Some(i) = self.console[self.cursor..]
            .iter()
            .position(|l| l.starts_with(marker))
        {
            self.cursor += i + 1;
            return Ok(self.console[self.cursor - 1].clone());
        }
        let fail = format!("GUEST SCENARIO {} FAIL", self.scenario);
        let deadline = Instant::now() + timeout;
        loop {
            if self.open_streams == 0 {
                let status = self.child.wait().ok();
                let powered_off = self.console.iter().any(|l| l == "init: powering off");
                let outcome = match status {
                    Some(s) if powered_off && s.success() => Outcome::Exited(0),
                    _ => Outcome::EmulatorExited(status),
                };
                return Err(self.error(Why::Ended(outcome)));
            }
            // Lines already queued (read while another guest was awaited) come first.
            let wait = deadline
                .min(self.last_output + self.stall)
                .saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(Line::Console(l)) => {
                    self.last_output = Instant::now();
                    echo(&self.name, &l);
                    self.console.push(l.clone());
                    if l.starts_with(marker) {
                        self.cursor = self.console.len();
                        return Ok(l);
                    }
                    if l.starts_with(&fail) {
                        return Err(self.error(Why::ScenarioFailed(l)));
                    }
                    if l.contains("Kernel panic - not syncing") {
                        return Err(self.error(Why::Ended(Outcome::Panicked)));
                    }
                    if Instant::now() >= deadline {
                        return Err(self.error(Why::Ended(Outcome::TimedOut(timeout))));
                    }
                }
                Ok(Line::Stderr(l)) => {
                    echo(&self.name, &format!("qemu: {l}"));
                    self.stderr.push(l);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        return Err(self.error(Why::Ended(Outcome::TimedOut(timeout))));
                    }
                    if self.last_output.elapsed() >= self.stall {
                        return Err(self.error(Why::Ended(Outcome::Stalled(self.stall))));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
            }
        }
    }

    /// Writes `line` to the guest's console (the `vf` scenario reads its commands there).
    pub fn send(&mut self, line: &str) -> Result<(), GuestError> {
        echo(&self.name, &format!("<- {line}"));
        let ok = match self.stdin.as_mut() {
            Some(w) => w
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| w.flush())
                .is_ok(),
            None => false,
        };
        if ok {
            Ok(())
        } else {
            let status = self.child.try_wait().ok().flatten();
            Err(self.error(Why::Ended(Outcome::EmulatorExited(status))))
        }
    }

    /// Waits for `GUEST SCENARIO NAME PASS`.
    pub fn wait_pass(&mut self, timeout: Duration) -> Result<(), GuestError> {
        let pass = format!("GUEST SCENARIO {} PASS", self.scenario);
        self.wait_for(&pass, timeout).map(|_| ())
    }

    /// Console and QEMU stderr so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} console ---\n{}\n--- {} qemu stderr ---\n{}\n--- {:.1} s after QEMU started",
            self.name,
            self.console.join("\n"),
            self.name,
            self.stderr.join("\n"),
            self.start.elapsed().as_secs_f64()
        )
    }
}

impl std::fmt::Debug for QemuGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuGuest")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("console_lines", &self.console.len())
            .finish_non_exhaustive()
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes a console line to this process's stderr (past libtest's capture), prefixed with
/// the guest's name.
fn echo(name: &str, line: &str) {
    let _ = writeln!(std::io::stderr(), "{name}| {line}");
}

/// Runs `attempt` and, if the emulator (not the code under test) ended it, runs it once
/// more, saying so on stderr. Any other error is returned at once: a failing test is never
/// retried.
pub fn retry_emulator_failure<T>(
    mut attempt: impl FnMut() -> Result<T, GuestError>,
) -> Result<T, GuestError> {
    match attempt() {
        Err(e) if e.is_emulator_failure() => {
            let _ = writeln!(
                std::io::stderr(),
                "qemu: guest {}: {}; that is the emulator, not the code under test: retrying once",
                e.guest,
                e.why
            );
            attempt()
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> LinuxImage {
        LinuxImage {
            qemu: "/q".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
        }
    }

    #[test]
    fn qemu_args_share_the_memfd_and_attach_each_socket() {
        let spec = GuestSpec::new("g", "vf")
            .param("vf_mac", "52:54:00:5a:00:01")
            .vfio_user(Path::new("/tmp/d/vf0.sock"))
            .vfio_user(Path::new("/tmp/d/vf1.sock"));
        let a = spec.qemu_args(&image());
        let joined = a.join(" ");
        assert!(joined.contains("-machine q35,memory-backend=mem"));
        assert!(joined.contains("memory-backend-memfd,id=mem,size=1G,share=on -m 1G"));
        let devices: Vec<serde_json::Value> = a
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| serde_json::from_str(&w[1]).expect("JSON device"))
            .collect();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0]["driver"], "vfio-user-pci");
        assert_eq!(devices[0]["socket"]["type"], "unix");
        assert_eq!(devices[1]["socket"]["path"], "/tmp/d/vf1.sock");
        let append = &a[a.iter().position(|x| x == "-append").expect("-append") + 1];
        assert_eq!(
            append,
            "console=ttyS0 panic=-1 loglevel=5 guest.scenario=vf guest.vf_mac=52:54:00:5a:00:01"
        );
    }

    #[test]
    fn only_emulator_failures_are_retried() {
        let err = |why| GuestError {
            guest: "g".into(),
            why,
            transcript: String::new(),
        };
        let mut calls = 0;
        let r: Result<(), _> = retry_emulator_failure(|| {
            calls += 1;
            Err(err(Why::Ended(Outcome::Stalled(Duration::from_secs(1)))))
        });
        assert!(r.is_err());
        assert_eq!(calls, 2, "a frozen emulator is retried once");
        calls = 0;
        let r: Result<(), _> = retry_emulator_failure(|| {
            calls += 1;
            Err(err(Why::ScenarioFailed("GUEST SCENARIO vf FAIL: x".into())))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "a failing scenario is not retried");
        calls = 0;
        let r: Result<(), _> = retry_emulator_failure(|| {
            calls += 1;
            Err(err(Why::Ended(Outcome::Exited(0))))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "a guest that powered off is not retried");
    }
}
