//! The nested KVM host: Debian's 6.12 kernel booted as a KVM host under QEMU's emulator
//! (TCG, `-cpu EPYC`: SVM with nested paging emulated), where `/dev/kvm` is a
//! hardware-style KVM (kvm_amd), unlike this machine's PVM. The Linux-guest tests run
//! inside it, with the vmm, vmctl, the test binaries and the guest images put in at run
//! time as a second cpio archive appended to the host's initramfs.
//!
//! The host's `/init` (guest-images/nested-host/init) runs `/payload/run`, a script this
//! module writes, prints `NESTED HEARTBEAT` lines every 10 s meanwhile, and `NESTED EXIT
//! <status>` at the end. The console is QEMU's serial port on its stdout, read here line by
//! line and streamed to stderr. A frozen emulator shows as silence: no line for the stall
//! limit ends the run as [`Outcome::Stalled`], which a caller may retry once; anything else
//! is a result.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::cpio::Archive;

/// Why the nested host cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// QEMU is not installed in its private prefix.
    #[error("QEMU 11 is not installed ({0} is missing): run guest-images/qemu.sh")]
    QemuMissing(PathBuf),
    /// An image guest-images/build.sh makes is missing.
    #[error("{0} is not built: run guest-images/build.sh linux")]
    ImageMissing(PathBuf),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The shared libraries of a binary could not be found.
    #[error("cannot list the shared libraries of {binary}: {why}")]
    Libraries {
        /// The binary.
        binary: PathBuf,
        /// Why.
        why: String,
    },
    /// Building a test binary failed.
    #[error("cannot build the test binary {name}: {why}")]
    Build {
        /// The test target.
        name: String,
        /// Why.
        why: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NestedError {
    let what = what.into();
    move |source| NestedError::Io { what, source }
}

/// QEMU's wrapper in the private prefix of guest-images/qemu.sh (or `$VMM_QEMU`).
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("VMM_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::repo_root().join("guest-images/cache/qemu/bin/qemu-system-x86_64")
        })
}

/// What boots the nested host: QEMU and the host's kernel and initramfs.
#[derive(Debug, Clone)]
pub struct NestedHost {
    /// QEMU's wrapper.
    pub qemu: PathBuf,
    /// out/nested-host.vmlinuz.
    pub kernel: PathBuf,
    /// out/nested-host.cpio.gz.
    pub initramfs: PathBuf,
    /// Guest RAM of the nested host, e.g. "3G".
    pub memory: String,
    /// vCPUs of the nested host.
    pub cpus: u32,
}

impl NestedHost {
    /// Finds QEMU and the images, or says which is missing.
    pub fn find() -> Result<Self, NestedError> {
        let qemu = qemu_binary();
        if !qemu.exists() {
            return Err(NestedError::QemuMissing(qemu));
        }
        let out = crate::guest_images_out();
        let image = |name: &str| {
            let p = out.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(NestedError::ImageMissing(p))
            }
        };
        Ok(Self {
            qemu,
            kernel: image("nested-host.vmlinuz")?,
            initramfs: image("nested-host.cpio.gz")?,
            memory: "3G".into(),
            cpus: 2,
        })
    }

    fn qemu_command(&self, initrd: &Path, append: &str) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(["-machine", "q35", "-cpu", "EPYC,check=off"])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.memory])
            .args(["-accel", "tcg,thread=multi", "-nodefaults", "-no-reboot"])
            .args(["-display", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", append]);
        // QEMU's own account of CPU resets and guest errors (a triple fault of the
        // nested host itself shows only there), for investigations.
        if let Some(log) = std::env::var_os("VMM_QEMU_LOG") {
            c.args(["-d", "cpu_reset,guest_errors", "-D"]).arg(log);
        }
        c
    }
}

/// The files put into the nested host at run time.
#[derive(Debug, Default)]
pub struct Payload {
    archive: Archive,
    libs: std::collections::BTreeSet<PathBuf>,
}

impl Payload {
    /// An empty payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the file `src` at `dest` in the nested host.
    pub fn file(&mut self, dest: &str, src: &Path, mode: u32) -> Result<(), NestedError> {
        let data = std::fs::read(src).map_err(io_err(format!("read {}", src.display())))?;
        self.archive.file(dest, mode, data);
        Ok(())
    }

    /// Adds `text` at `dest`.
    pub fn text(&mut self, dest: &str, text: &str, mode: u32) {
        self.archive.file(dest, mode, text.as_bytes().to_vec());
    }

    /// Adds the dynamically linked `src` at `dest`, and the shared libraries and loader it
    /// needs at the paths it names them by (libc, libgcc_s, ld-linux).
    pub fn binary(&mut self, dest: &str, src: &Path) -> Result<(), NestedError> {
        self.file(dest, src, 0o755)?;
        let out = Command::new("ldd")
            .arg(src)
            .output()
            .map_err(|e| NestedError::Libraries {
                binary: src.into(),
                why: format!("cannot run ldd: {e}"),
            })?;
        if !out.status.success() {
            return Err(NestedError::Libraries {
                binary: src.into(),
                why: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                self.libs.insert(PathBuf::from(p));
            }
        }
        Ok(())
    }

    /// Writes the nested host's initrd to `dest`: its initramfs, padded to 4 bytes (the
    /// kernel looks for the next archive's magic at 4-byte offsets), then this payload as
    /// an uncompressed cpio archive.
    pub fn write_initrd(&self, host: &NestedHost, dest: &Path) -> Result<u64, NestedError> {
        let mut archive = self.archive.clone();
        for lib in &self.libs {
            // Copied as the file it resolves to, under the name the binary asks for.
            let data = std::fs::read(lib).map_err(io_err(format!("read {}", lib.display())))?;
            archive.file(&lib.to_string_lossy(), 0o755, data);
        }
        let mut base = std::fs::read(&host.initramfs)
            .map_err(io_err(format!("read {}", host.initramfs.display())))?;
        base.resize(base.len().div_ceil(4) * 4, 0);
        let f =
            std::fs::File::create(dest).map_err(io_err(format!("create {}", dest.display())))?;
        let mut w = std::io::BufWriter::new(f);
        let what = format!("write {}", dest.display());
        w.write_all(&base).map_err(io_err(what.clone()))?;
        let n = archive.write_to(&mut w).map_err(io_err(what.clone()))?;
        w.flush().map_err(io_err(what))?;
        Ok(base.len() as u64 + n)
    }
}

/// How one run of the nested host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `/payload/run` finished with this exit status and the host powered off.
    Exited(i32),
    /// No console output for the stall limit: the emulator froze (the host prints a
    /// heartbeat every 10 s).
    Stalled(Duration),
    /// The run's deadline passed while the host was still producing output.
    TimedOut(Duration),
    /// The host's kernel panicked.
    Panicked,
    /// QEMU exited before the payload finished.
    EmulatorExited(Option<ExitStatus>),
}

impl Outcome {
    /// Whether the emulator, not the code under test, ended the run: a frozen or crashed
    /// QEMU, or a nested host that reset without a word. Only such runs may be retried.
    ///
    /// The reset: QEMU runs with `-no-reboot`, so a reset of the nested host makes it exit
    /// with status 0 before the payload's end line. Nothing in the nested host resets it on
    /// purpose (its init powers off; the vmm only makes KVM ioctls, and a guest's triple
    /// fault is a VM exit to the host's KVM, not a host reset), and no panic or oops is
    /// printed first; seen once in about 60 two-vCPU boots, and put down to the emulator's
    /// SVM emulation.
    pub fn is_emulator_failure(&self) -> bool {
        match self {
            Outcome::Stalled(_) => true,
            // Killed by a signal we did not send (QEMU crashed), or the host reset.
            Outcome::EmulatorExited(Some(s)) => s.code().is_none_or(|c| c == 0),
            _ => false,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(s) => write!(f, "the payload exited with status {s}"),
            Outcome::Stalled(d) => write!(
                f,
                "no console output for {} s: the emulator froze",
                d.as_secs()
            ),
            Outcome::TimedOut(d) => write!(f, "the run did not finish within {} s", d.as_secs()),
            Outcome::Panicked => write!(f, "the nested host's kernel panicked"),
            Outcome::EmulatorExited(Some(s)) if s.code() == Some(0) => {
                write!(
                    f,
                    "QEMU exited before the payload finished: the nested host reset"
                )
            }
            Outcome::EmulatorExited(s) => write!(f, "QEMU exited early ({s:?})"),
        }
    }
}

/// A finished run: the console transcript (heartbeats left out) and how it ended.
#[derive(Debug, Clone)]
pub struct Run {
    /// Console lines.
    pub lines: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time from QEMU's start.
    pub elapsed: Duration,
    /// Wall time from QEMU's start to the host's `/init`.
    pub to_init: Option<Duration>,
}

impl Run {
    /// The transcript, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- nested host console ---\n{}\n--- qemu stderr ---\n{}\n--- {} after {:.1} s",
            self.lines.join("\n"),
            self.qemu_stderr.join("\n"),
            self.outcome,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No console line for this long: the emulator froze.
    pub stall: Duration,
    /// The whole run.
    pub deadline: Duration,
}

/// A line QEMU wrote: its console (stdout) or its own messages (stderr).
pub(crate) enum Line {
    Console(String),
    Stderr(String),
}

/// Sends the lines of `r` to `tx`, each wrapped by `wrap`, from a thread of its own.
pub(crate) fn pump<R: Read + Send + 'static, T: Send + 'static>(
    r: R,
    tx: std::sync::mpsc::Sender<T>,
    wrap: fn(String) -> T,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send(wrap(line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A scratch directory for the initrd, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, NestedError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmm-nested-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the nested host with `payload`, streams its console to `echo` (heartbeats left
/// out), and returns when `/payload/run` is done, the host dies, or a limit passes.
pub fn run(
    host: &NestedHost,
    payload: &Payload,
    limits: Limits,
    mut echo: impl FnMut(&str),
) -> Result<Run, NestedError> {
    let scratch = Scratch::new()?;
    let initrd = scratch.0.join("initrd");
    payload.write_initrd(host, &initrd)?;
    let mut cmd = host.qemu_command(&initrd, "console=ttyS0 panic=-1 loglevel=4");
    cmd.args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("spawn {}", host.qemu.display())))?;
    let (tx, rx) = channel();
    pump(
        child.stdout.take().expect("stdout"),
        tx.clone(),
        Line::Console,
    );
    pump(child.stderr.take().expect("stderr"), tx, Line::Stderr);
    let mut qemu = Qemu(child);
    let (outcome, lines, qemu_stderr, to_init) = watch(&rx, start, limits, &mut echo);
    let outcome = match outcome {
        Some(o) => o,
        None => {
            // The console closed: QEMU is exiting.
            let status = qemu.0.wait().ok();
            Outcome::EmulatorExited(status)
        }
    };
    if matches!(outcome, Outcome::Exited(_)) {
        // The host powers off after NESTED EXIT; give QEMU a moment to exit by itself.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = qemu.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(qemu);
    Ok(Run {
        lines,
        qemu_stderr,
        outcome,
        elapsed: start.elapsed(),
        to_init,
    })
}

/// `line` without the heartbeats in it (one may land in the middle of a line).
fn without_heartbeats(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("NESTED HEARTBEAT ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "NESTED HEARTBEAT ".len()..];
        let number_end = after
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after.len());
        rest = &after[number_end..];
    }
    out.push_str(rest);
    if out.trim().is_empty() {
        String::new()
    } else {
        out
    }
}

type Watched = (Option<Outcome>, Vec<String>, Vec<String>, Option<Duration>);

fn watch(
    rx: &Receiver<Line>,
    start: Instant,
    limits: Limits,
    echo: &mut impl FnMut(&str),
) -> Watched {
    let mut lines = Vec::new();
    let mut stderr = Vec::new();
    let mut to_init = None;
    let mut last = Instant::now();
    let mut open = 2;
    while open > 0 {
        let now = Instant::now();
        if now.duration_since(start) >= limits.deadline {
            return (
                Some(Outcome::TimedOut(limits.deadline)),
                lines,
                stderr,
                to_init,
            );
        }
        let wait = (last + limits.stall)
            .min(start + limits.deadline)
            .saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(Line::Console(l)) => {
                last = Instant::now();
                let l = without_heartbeats(&l);
                if l.is_empty() {
                    continue;
                }
                echo(&l);
                if l.starts_with("NESTED HOST INIT") {
                    to_init = Some(start.elapsed());
                }
                let exit = l
                    .strip_prefix("NESTED EXIT ")
                    .and_then(|s| s.trim().parse::<i32>().ok());
                let panicked = l.contains("Kernel panic - not syncing");
                lines.push(l);
                if let Some(status) = exit {
                    return (Some(Outcome::Exited(status)), lines, stderr, to_init);
                }
                if panicked {
                    return (Some(Outcome::Panicked), lines, stderr, to_init);
                }
            }
            Ok(Line::Stderr(l)) => {
                echo(&format!("qemu: {l}"));
                stderr.push(l);
            }
            Err(RecvTimeoutError::Timeout) => {
                if last.elapsed() >= limits.stall {
                    return (Some(Outcome::Stalled(limits.stall)), lines, stderr, to_init);
                }
            }
            Err(RecvTimeoutError::Disconnected) => open = 0,
        }
    }
    (None, lines, stderr, to_init)
}

/// [`run`], once more if the emulator (not our code) ended the first run: a frozen or
/// crashed QEMU. Says so on stderr. Returns the run that counts.
pub fn run_retrying_emulator_failure(
    host: &NestedHost,
    payload: &Payload,
    limits: Limits,
    mut echo: impl FnMut(&str),
) -> Result<Run, NestedError> {
    let first = run(host, payload, limits, &mut echo)?;
    if !first.outcome.is_emulator_failure() {
        return Ok(first);
    }
    let _ = writeln!(
        std::io::stderr(),
        "nested: {} after {:.0} s; that is the emulator, not the code under test: \
         retrying once",
        first.outcome,
        first.elapsed.as_secs_f64()
    );
    run(host, payload, limits, echo)
}

/// Writes a console line to this process's stderr (past libtest's capture), prefixed.
pub fn echo_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "nested| {line}");
}

/// Boots the nested host with `payload` and a shell on this terminal (`nested.shell=1`):
/// QEMU's serial console and monitor multiplexed on stdio (Ctrl-A X quits, Ctrl-A C is the
/// monitor).
pub fn shell(host: &NestedHost, payload: &Payload) -> Result<ExitStatus, NestedError> {
    let scratch = Scratch::new()?;
    let initrd = scratch.0.join("initrd");
    payload.write_initrd(host, &initrd)?;
    let mut cmd = host.qemu_command(&initrd, "console=ttyS0 panic=-1 loglevel=4 nested.shell=1");
    cmd.args(["-serial", "mon:stdio"]);
    let status = cmd
        .status()
        .map_err(io_err(format!("run {}", host.qemu.display())))?;
    Ok(status)
}

/// Builds the workspace's integration tests (with this build's profile) and returns the
/// executable of the one named `name`.
pub fn test_binary(name: &str) -> Result<PathBuf, NestedError> {
    let err = |why: String| NestedError::Build {
        name: name.into(),
        why,
    };
    let dir = crate::bin_dir();
    let target_dir = dir.parent().unwrap_or(&dir).to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::repo_root())
        // `--workspace`, as `cargo test --workspace` builds it: the same feature set, so
        // nothing builds a second time.
        .args(["test", "--quiet", "--no-run", "--message-format=json"])
        .arg("--workspace")
        // `cargo test`'s own default for "dev" (its test profile), so the units are the
        // ones `cargo test --workspace` built.
        .args(match crate::profile().as_str() {
            "dev" => vec![],
            p => vec!["--profile".to_string(), p.to_string()],
        })
        .arg("--target-dir")
        .arg(&target_dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| err(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(err(format!("cargo test --no-run failed: {}", out.status)));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == name
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    Err(err("cargo named no executable".into()))
}

/// Where the payload puts things in the nested host.
pub mod paths {
    /// The vmm.
    pub const VMM: &str = "/payload/bin/vmm";
    /// vmctl.
    pub const VMCTL: &str = "/payload/bin/vmctl";
    /// nicd.
    pub const NICD: &str = "/payload/bin/nicd";
    /// The guest images (vmlinux, initramfs.cpio.gz, testguest.elf).
    pub const IMAGES: &str = "/payload/images";
    /// The test binaries.
    pub const TESTS: &str = "/payload/tests";
}

/// A payload with the vmm, vmctl and nicd of this build and the guest images (vmlinux,
/// initramfs.cpio.gz and testguest.elf), plus `run` as `/payload/run`.
pub fn base_payload(run: &str) -> Result<Payload, NestedError> {
    let mut p = Payload::new();
    p.binary(paths::VMM, &crate::vmm_binary())?;
    p.binary(paths::VMCTL, &crate::vmctl_binary())?;
    p.binary(paths::NICD, &crate::nicd_binary())?;
    let out = crate::guest_images_out();
    for name in ["vmlinux", "initramfs.cpio.gz"] {
        let src = out.join(name);
        if !src.exists() {
            return Err(NestedError::ImageMissing(src));
        }
        p.file(&format!("{}/{name}", paths::IMAGES), &src, 0o644)?;
    }
    p.file(
        &format!("{}/testguest.elf", paths::IMAGES),
        &crate::testguest_elf(),
        0o644,
    )?;
    p.text("/payload/run", run, 0o755);
    Ok(p)
}

/// The environment the tests get inside the nested host: the prebuilt binaries and
/// images, and strict skips (a Linux-guest test must run there, not skip).
pub const TEST_ENV: &str = "export VMM_BIN=/payload/bin/vmm VMCTL_BIN=/payload/bin/vmctl \
NICD_BIN=/payload/bin/nicd \
VMM_TESTGUEST=/payload/images/testguest.elf VMM_GUEST_IMAGES=/payload/images \
VMM_TESTS_STRICT=1 RUST_BACKTRACE=1 TMPDIR=/tmp";

/// [`TEST_ENV`], and what this process has of `RUST_TEST_NOCAPTURE` (the inner tests'
/// own output, figures they print, then shows even when they pass) and
/// `VMM_LINUX_FAILOVER_CYCLES`.
fn test_env() -> String {
    let mut env = TEST_ENV.to_string();
    if std::env::var_os("RUST_TEST_NOCAPTURE").is_some_and(|v| v != "0") {
        env.push_str(" RUST_TEST_NOCAPTURE=1");
    }
    // How many attach/detach cycles the Linux failover test runs.
    if let Some(n) = std::env::var("VMM_LINUX_FAILOVER_CYCLES")
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    {
        env.push_str(&format!(" VMM_LINUX_FAILOVER_CYCLES={n}"));
    }
    env
}

/// Shell lines that record KVM's tracepoints in the nested host into the ring buffer of
/// tracefs at `$T` (kvm_exit but for port I/O, kvm_userspace_exit, kvm_inj_exception,
/// kvm_inj_virq, kvm_apic_ipi, kvm_apic_accept_irq, kvm_msi_set_irq, kvm_eoi, kvm_cr): the
/// exits and injected exceptions before a triple fault, which KVM's state after the
/// shutdown no longer shows (on SVM it resets the vCPU), or the interrupts before a stall.
const TRACE_SETUP: &str = r#"T=/sys/kernel/tracing
mount -t tracefs nodev $T || exit 90
echo 8192 >$T/buffer_size_kb
for e in kvm_exit kvm_userspace_exit kvm_inj_exception kvm_inj_virq kvm_apic_ipi \
    kvm_apic_accept_irq kvm_msi_set_irq kvm_eoi kvm_cr; do
  echo 1 >$T/events/kvm/$e/enable || echo "NESTED TRACE: no event $e"
done
# Not the port I/O exits (the serial console's bytes): by far the most, and not the point.
echo 'exit_reason != 123' >$T/events/kvm/kvm_exit/filter || echo "NESTED TRACE: no filter"
echo 1 >$T/tracing_on"#;

/// Shell function `emulator_crash FILE`: succeeds, printing why, when a failed test's
/// output (FILE) shows a guest crash of the kind the emulated nested paging causes (see
/// docs/testing.md, "Guest crashes of the nested host"): a vCPU whose page-table root lies
/// beyond 4 GiB (the guests have 512 MiB) looping on a #PF it cannot deliver, or a triple
/// fault. Nothing else counts.
const EMULATOR_CRASH: &str = r#"emulator_crash() {
  if grep -q '"exception":"14/' "$1" && grep -qE '"cr3":"0x[0-9a-f]{9,}"' "$1"; then
    echo "a vCPU's page-table root lies beyond guest memory ($(grep -oE '"cr3":"0x[0-9a-f]{9,}"' "$1" | head -n 1)) and it loops on a #PF"
    return 0
  fi
  if grep -q 'triple fault (KVM_EXIT_SHUTDOWN)' "$1"; then
    echo "the guest triple-faulted"
    return 0
  fi
  return 1
}"#;

/// The `/payload/run` that runs every test of every binary in /payload/tests whose name
/// contains one of `filters` (is one of them, with `exact`; all with none), one test per
/// process, between
/// `NESTED TEST BEGIN <bin>::<test>` and `NESTED TEST END <bin>::<test> status=N
/// seconds=S` lines; it exits with the number of failed tests. KVM's tracepoints record
/// each test ([`TRACE_SETUP`]); a failed test is followed by the last 3000 events. A test
/// that failed by a guest crash of the emulator's kind ([`EMULATOR_CRASH`]) runs once more
/// after a `NESTED TEST RETRY <bin>::<test>: <why>` line; the second result stands.
pub fn tests_script(filters: &[String], exact: bool) -> String {
    let mut filter_args: String = filters.iter().map(|f| format!(" '{f}'")).collect();
    if exact {
        filter_args.push_str(" --exact");
    }
    format!(
        r#"#!/bin/sh
# Written by tests/src/nested.rs: the test binaries in {tests}, one test per process.
{env}
cd /tmp
{trace_setup}
{emulator_crash}
failed=0
for bin in {tests}/*; do
  name=${{bin##*/}}
  list=$("$bin" --list --format terse{filter_args}) || {{ echo "NESTED TEST LIST $name FAILED"; failed=$((failed + 1)); continue; }}
  for t in $(echo "$list" | sed -n 's/: test$//p'); do
    attempt=1
    while :; do
      echo "NESTED TEST BEGIN $name::$t"
      echo >$T/trace
      # A copy of the buffer at KVM's first injected #PF of this test (rare with nested
      # paging; a guest whose page tables went bad injects them forever).
      echo 0 >$T/snapshot 2>/dev/null
      echo '!snapshot:1' >$T/events/kvm/kvm_inj_exception/trigger 2>/dev/null
      echo 'snapshot:1 if exception == 14' >$T/events/kvm/kvm_inj_exception/trigger 2>/dev/null
      t0=$(cut -d' ' -f1 /proc/uptime)
      "$bin" --exact "$t" --test-threads=1 >/tmp/test.out 2>&1
      rc=$?
      cat /tmp/test.out
      t1=$(cut -d' ' -f1 /proc/uptime)
      echo "NESTED TEST END $name::$t status=$rc seconds=$(awk "BEGIN {{ print $t1 - $t0 }}")"
      [ "$rc" -eq 0 ] && break
      echo "--- the last 3000 KVM trace events of $name::$t"
      grep -v '^#' $T/trace | tail -n 3000
      if grep -q -v '^#' $T/snapshot 2>/dev/null; then
        echo "--- the last 600 KVM trace events up to KVM's first injected #PF"
        grep -v '^#' $T/snapshot | tail -n 600
      fi
      echo "--- end of trace"
      if [ "$attempt" -eq 1 ] && why=$(emulator_crash /tmp/test.out); then
        echo "NESTED TEST RETRY $name::$t: $why"
        attempt=2
        continue
      fi
      failed=$((failed + 1))
      break
    done
  done
done
exit "$failed"
"#,
        tests = paths::TESTS,
        env = test_env(),
        trace_setup = TRACE_SETUP,
        emulator_crash = EMULATOR_CRASH,
    )
}

/// The inner test targets this tier runs: the Linux-guest tests (tests/tests/*.rs).
pub const LINUX_TEST_TARGETS: &[&str] = &["linux_guest"];

/// A finished tier run: which tests were expected, what ran, and the run itself.
#[derive(Debug, Clone)]
pub struct TierReport {
    /// `<binary>::<test>` of every test that should have run.
    pub expected: Vec<String>,
    /// What ran: of a run cut short by the host ([`host_failure`]), the tests it finished
    /// and then those of the second run.
    pub results: Vec<TestResult>,
    /// The nested host's run (the second one, if the first was cut short).
    pub run: Run,
    /// A first run the emulator or the host's kernel cut short, after which the tests it
    /// had not finished ran in a new host.
    pub interrupted: Option<Run>,
}

impl TierReport {
    /// One line per test and the run's outcome.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for name in &self.expected {
            let line = match self.results.iter().find(|r| &r.name == name) {
                None => "did not run".to_string(),
                Some(r) if r.passed() => match &r.retried {
                    None => format!("ok ({:.1} s)", r.seconds.unwrap_or(0.0)),
                    Some(why) => format!(
                        "ok ({:.1} s) on a second attempt; the first crashed the guest the \
                         emulator's way: {why}",
                        r.seconds.unwrap_or(0.0)
                    ),
                },
                Some(r) if !r.skips.is_empty() => format!("SKIPPED: {}", r.skips.join("; ")),
                Some(r) => match r.status {
                    Some(st) => format!("FAILED (status {st})"),
                    None => "did not finish".into(),
                },
            };
            s.push_str(&format!("nested: {name}: {line}\n"));
        }
        let init = self
            .run
            .to_init
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never".into());
        if let Some(first) = &self.interrupted {
            let during = test_results(&first.lines)
                .into_iter()
                .find(|r| r.status.is_none())
                .map(|r| format!(" during {}", r.name))
                .unwrap_or_default();
            s.push_str(&format!(
                "nested: the first host's run was cut short{during} after {:.1} s: {}; the \
                 tests it had not finished ran again in a new host\n",
                first.elapsed.as_secs_f64(),
                first.outcome
            ));
        }
        s.push_str(&format!(
            "nested: {}; {:.1} s in all, QEMU start to the host's /init {init}",
            self.run.outcome,
            self.run.elapsed.as_secs_f64()
        ));
        s
    }

    /// The last lines of output of each test that failed or did not finish (the KVM
    /// trace after a failure left out), for the end of a failure message, where a log
    /// cut to its tail still shows them.
    pub fn failures(&self) -> String {
        const TAIL: usize = 60;
        let mut s = String::new();
        for r in self.results.iter().filter(|r| !r.passed()) {
            // Where it panicked (and the message's first lines), however long the rest.
            for (i, _) in r
                .output
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked at"))
            {
                let end = (i + 4).min(r.output.len());
                s.push_str(&format!(
                    "=== {}: {}\n",
                    r.name,
                    r.output[i..end].join("\n")
                ));
            }
            let from = r.output.len().saturating_sub(TAIL);
            s.push_str(&format!(
                "=== {}: the last {} lines of its output\n{}\n",
                r.name,
                r.output.len() - from,
                r.output[from..].join("\n")
            ));
        }
        s
    }

    /// The console transcripts, for failure messages: the interrupted first run's, if
    /// any, then the one that counts.
    pub fn transcript(&self) -> String {
        match &self.interrupted {
            None => self.run.transcript(),
            Some(first) => format!(
                "=== the first, interrupted run\n{}\n=== the second run\n{}",
                first.transcript(),
                self.run.transcript()
            ),
        }
    }

    /// Whether every expected test ran and passed, and the host powered off cleanly.
    pub fn passed(&self) -> bool {
        self.run.outcome == Outcome::Exited(0)
            && !self.expected.is_empty()
            && self
                .expected
                .iter()
                .all(|name| self.results.iter().any(|r| &r.name == name && r.passed()))
    }
}

/// The tests of the test binary `bin` (by `--list`) whose names contain one of `filters`.
fn list_tests(bin: &Path, filters: &[String]) -> Result<Vec<String>, NestedError> {
    let out = Command::new(bin)
        .args(["--list", "--format", "terse"])
        .args(filters)
        .output()
        .map_err(io_err(format!("run {} --list", bin.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect())
}

/// The test names (without their binary's) of `expected` that have no finished result.
fn unfinished(expected: &[String], results: &[TestResult]) -> Vec<String> {
    expected
        .iter()
        .filter(|name| {
            !results
                .iter()
                .any(|r| &r.name == *name && r.status.is_some())
        })
        .filter_map(|name| name.split_once("::").map(|(_, t)| t.to_string()))
        .collect()
}

/// Whether something other than the code under test cut the run short, so that the
/// tests it had not finished may run again in a new host: the emulator froze or crashed
/// ([`Outcome::is_emulator_failure`]), or the nested host's kernel panicked. The panic
/// seen: "corrupted stack end detected inside scheduler" in Debian's 6.12 kernel under
/// the emulator while the test in progress waited on its guest; no user-space program can
/// corrupt a kernel stack, and the vmm's ioctls are those the other tests make.
pub fn host_failure(outcome: &Outcome) -> bool {
    outcome.is_emulator_failure() || *outcome == Outcome::Panicked
}

/// Runs the Linux-guest test targets inside the nested host (the tests whose names
/// contain one of `filters`; all with none). If the host fails ([`host_failure`]), the
/// tests that had not finished run once more in a new host; a test that failed is never
/// run again.
pub fn run_linux_tier(filters: &[String], limits: Limits) -> Result<TierReport, NestedError> {
    let host = NestedHost::find()?;
    let mut bins = Vec::new();
    let mut expected = Vec::new();
    for target in LINUX_TEST_TARGETS {
        let bin = test_binary(target)?;
        expected.extend(
            list_tests(&bin, filters)?
                .into_iter()
                .map(|t| format!("{target}::{t}")),
        );
        bins.push((target, bin));
    }
    let payload = |filters: &[String], exact: bool| -> Result<Payload, NestedError> {
        let mut p = base_payload(&tests_script(filters, exact))?;
        for (target, bin) in &bins {
            p.binary(&format!("{}/{target}", paths::TESTS), bin)?;
        }
        Ok(p)
    };
    let first = run(&host, &payload(filters, false)?, limits, echo_line)?;
    let mut results = test_results(&first.lines);
    results.retain(|r| r.status.is_some());
    let rest = unfinished(&expected, &results);
    if !host_failure(&first.outcome) || rest.is_empty() {
        return Ok(TierReport {
            expected,
            results: test_results(&first.lines),
            run: first,
            interrupted: None,
        });
    }
    let _ = writeln!(
        std::io::stderr(),
        "nested: {} after {:.0} s; that is the emulator or the host's kernel, not the code \
         under test: running the {} tests not finished in a new host",
        first.outcome,
        first.elapsed.as_secs_f64(),
        rest.len()
    );
    let second = run(&host, &payload(&rest, true)?, limits, echo_line)?;
    results.extend(test_results(&second.lines));
    Ok(TierReport {
        expected,
        results,
        run: second,
        interrupted: Some(first),
    })
}

/// One inner test's result, from the BEGIN/END lines of [`tests_script`].
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// `<binary>::<test>`.
    pub name: String,
    /// Its exit status (None: the run ended before its END line).
    pub status: Option<i32>,
    /// Seconds inside the nested host.
    pub seconds: Option<f64>,
    /// The `SKIP:` lines it printed.
    pub skips: Vec<String>,
    /// Its output lines.
    pub output: Vec<String>,
    /// Why it ran a second time (an earlier attempt crashed the emulator's way); this is
    /// the second attempt's result.
    pub retried: Option<String>,
}

impl TestResult {
    /// Passed: exit status 0 and no skip.
    pub fn passed(&self) -> bool {
        self.status == Some(0) && self.skips.is_empty()
    }
}

/// The inner tests' results, in the order they ran; of a retried test, the second attempt
/// (with the reason of the retry).
pub fn test_results(lines: &[String]) -> Vec<TestResult> {
    let mut out: Vec<TestResult> = Vec::new();
    let mut current: Option<TestResult> = None;
    let mut retry: Option<(String, String)> = None;
    for l in lines {
        if let Some(rest) = l.strip_prefix("NESTED TEST RETRY ") {
            if let Some((name, why)) = rest.split_once(": ") {
                retry = Some((name.trim().to_string(), why.trim().to_string()));
            }
        } else if let Some(name) = l.strip_prefix("NESTED TEST BEGIN ") {
            out.extend(current.take());
            let name = name.trim().to_string();
            let retried = match retry.take() {
                Some((n, why)) if n == name => {
                    out.retain(|r| r.name != name);
                    Some(why)
                }
                _ => None,
            };
            current = Some(TestResult {
                name,
                status: None,
                seconds: None,
                skips: Vec::new(),
                output: Vec::new(),
                retried,
            });
        } else if let Some(rest) = l.strip_prefix("NESTED TEST END ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default();
            if let Some(mut t) = current.take() {
                if t.name == name {
                    for w in words {
                        if let Some(s) = w.strip_prefix("status=") {
                            t.status = s.parse().ok();
                        } else if let Some(s) = w.strip_prefix("seconds=") {
                            t.seconds = s.parse().ok();
                        }
                    }
                }
                out.push(t);
            }
        } else if let Some(t) = current.as_mut() {
            if let Some(i) = l.find("SKIP: ") {
                t.skips.push(l[i..].to_string());
            }
            t.output.push(l.clone());
        }
    }
    out.extend(current);
    out
}

/// What [`boot_loop_script`] boots, and how often.
#[derive(Debug, Clone)]
pub struct BootLoop {
    /// Boots.
    pub runs: u32,
    /// vCPUs of the Linux guest.
    pub vcpus: u32,
    /// The initramfs scenario (`guest.scenario=`): smoke, pcie, iommu.
    pub scenario: String,
    /// More kernel command-line words.
    pub extra_cmdline: String,
    /// More vmm flags, as shell words (e.g. `--pcie-root-ports 2 --net tap=t0`).
    pub vmm_args: String,
    /// A TAP the vmm creates whose host side gets 10.0.2.2/24 once it exists (the
    /// address the pcie scenario pings).
    pub tap: Option<String>,
    /// Seconds after which a boot counts as hung.
    pub timeout_s: u32,
    /// Record KVM's tracepoints.
    pub trace: bool,
}

impl Default for BootLoop {
    fn default() -> Self {
        BootLoop {
            runs: 5,
            vcpus: 2,
            scenario: "smoke".into(),
            extra_cmdline: String::new(),
            vmm_args: String::new(),
            tap: None,
            timeout_s: 180,
            trace: false,
        }
    }
}

/// The `/payload/run` that boots the Linux guest `runs` times with its scenario and
/// `vcpus` vCPUs: one `NESTED BOOT <i> status=N pass=yes|no vmm-exit-stats: {...}` line
/// per boot, and for a boot that failed (or took longer than `timeout_s`, after which it is
/// killed) its whole transcript between `NESTED BOOT <i> TRANSCRIPT BEGIN` and `... END`,
/// with the state of the vmm's threads when it hung.
///
/// With `trace`, KVM's tracepoints in the nested host (kvm_exit but for port I/O,
/// kvm_userspace_exit, kvm_inj_exception, kvm_inj_virq, kvm_apic_ipi,
/// kvm_apic_accept_irq, kvm_msi_set_irq, kvm_eoi, kvm_cr) record each boot, and a failed
/// boot's transcript ends with the last 2000 events: the exits and injected exceptions
/// before a triple fault, which KVM's state after the shutdown no longer shows (on SVM it
/// resets the vCPU), or the interrupts before a stall.
pub fn boot_loop_script(b: &BootLoop) -> String {
    let trace_setup = if b.trace { TRACE_SETUP } else { "T=" };
    let tap_setup = match &b.tap {
        Some(tap) => format!(
            r#"(w=0; while [ ! -e /sys/class/net/{tap} ] && [ "$w" -lt 600 ]; do sleep 0.1; w=$((w + 1)); done
   ip addr add 10.0.2.2/24 dev {tap} && ip link set {tap} up) &"#
        ),
        None => String::new(),
    };
    format!(
        r#"#!/bin/sh
# Written by tests/src/nested.rs: repeated boots of the Linux guest's {scenario} scenario.
cd /tmp
{trace_setup}
i=1
while [ "$i" -le {runs} ]; do
  [ -z "$T" ] || echo >$T/trace
  {vmm} run --kernel {images}/vmlinux --initrd {images}/initramfs.cpio.gz \
    --vcpus {vcpus} --memory 512M --exit-stats {vmm_args} \
    --cmdline "console=ttyS0 panic=-1 {extra_cmdline} guest.scenario={scenario}" >/tmp/boot.log 2>&1 &
  pid=$!
  {tap_setup}
  waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt {timeout_s} ]; do
    sleep 1
    waited=$((waited + 1))
  done
  hung=no
  if kill -0 "$pid" 2>/dev/null; then
    hung=yes
    echo "NESTED BOOT $i HUNG after {timeout_s} s: vmm threads:"
    for t in /proc/$pid/task/*; do
      echo "  $(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
      sed 's/^/    /' $t/stack 2>/dev/null
    done
    [ -z "$T" ] || echo 0 >$T/tracing_on
    kill -9 "$pid"
  fi
  wait "$pid"
  rc=$?
  pass=no
  grep -q "GUEST SCENARIO {scenario} PASS" /tmp/boot.log && pass=yes
  echo "NESTED BOOT $i status=$rc pass=$pass hung=$hung $(grep -o 'vmm-exit-stats: .*' /tmp/boot.log)"
  [ "$i" -gt 1 ] || grep -m 2 -E 'model name|smp: Brought up' /tmp/boot.log
  if [ "$rc" -ne 0 ] || [ "$pass" = no ]; then
    echo "NESTED BOOT $i TRANSCRIPT BEGIN"
    cat /tmp/boot.log
    if [ -n "$T" ]; then
      echo "--- the last 2000 KVM trace events"
      grep -v '^#' $T/trace | tail -n 2000
      echo 1 >$T/tracing_on
    fi
    echo "NESTED BOOT $i TRANSCRIPT END"
  fi
  i=$((i + 1))
done
"#,
        vmm = paths::VMM,
        images = paths::IMAGES,
        runs = b.runs,
        vcpus = b.vcpus,
        vmm_args = b.vmm_args,
        extra_cmdline = b.extra_cmdline,
        scenario = b.scenario,
        timeout_s = b.timeout_s,
    )
}

/// One boot of [`boot_loop_script`].
#[derive(Debug, Clone, PartialEq)]
pub struct BootResult {
    /// 1-based.
    pub index: u32,
    /// The vmm's exit status.
    pub status: i32,
    /// The scenario passed.
    pub passed: bool,
    /// Killed after the per-boot timeout.
    pub hung: bool,
    /// `wall_us` of `--exit-stats`: vmm start to exit.
    pub wall: Option<Duration>,
}

/// The boots' results.
pub fn boot_results(lines: &[String]) -> Vec<BootResult> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("NESTED BOOT ")?;
            let mut words = rest.split_whitespace();
            let index = words.next()?.parse().ok()?;
            let status = words.next()?.strip_prefix("status=")?.parse().ok()?;
            let passed = words.next()? == "pass=yes";
            let hung = words.next()? == "hung=yes";
            let wall = rest
                .split_once("\"wall_us\":")
                .and_then(|(_, r)| r.split([',', '}']).next())
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map(Duration::from_micros);
            Some(BootResult {
                index,
                status,
                passed,
                hung,
                wall,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn test_results_from_markers() {
        let l = lines(
            "noise\n\
             NESTED TEST BEGIN linux_guest::a\n\
             running 1 test\n\
             test a ... ok\n\
             NESTED TEST END linux_guest::a status=0 seconds=12.5\n\
             NESTED TEST BEGIN linux_guest::b\n\
             [  3.1] SKIP: no KVM\n\
             NESTED TEST END linux_guest::b status=0 seconds=0.1\n\
             NESTED TEST BEGIN linux_guest::c\n\
             thread panicked",
        );
        let r = test_results(&l);
        assert_eq!(r.len(), 3);
        assert!(r[0].passed());
        assert_eq!(r[0].seconds, Some(12.5));
        assert_eq!(r[0].output.len(), 2);
        assert!(!r[1].passed(), "a skip inside the nested host is a failure");
        assert_eq!(r[1].skips, ["SKIP: no KVM"]);
        assert_eq!(r[2].status, None);
        assert!(!r[2].passed());
    }

    #[test]
    fn a_failure_message_ends_with_what_failed() {
        let mut text =
            String::from("NESTED TEST BEGIN b::ok\nNESTED TEST END b::ok status=0 seconds=1\n");
        text.push_str(
            "NESTED TEST BEGIN b::bad\nthread 'bad' panicked at tests/x.rs:9:5:\nno answer\n",
        );
        for i in 0..100 {
            text.push_str(&format!("guest line {i}\n"));
        }
        text.push_str("NESTED TEST END b::bad status=101 seconds=3\n--- the last 3000 KVM trace events\nvcpu0 kvm_exit\n");
        let run = Run {
            lines: lines(&text),
            qemu_stderr: Vec::new(),
            outcome: Outcome::Exited(1),
            elapsed: Duration::from_secs(5),
            to_init: None,
        };
        let report = TierReport {
            expected: vec!["b::ok".into(), "b::bad".into()],
            results: test_results(&run.lines),
            run,
            interrupted: None,
        };
        assert!(!report.passed());
        let f = report.failures();
        assert!(!f.contains("b::ok"), "{f}");
        assert!(
            f.contains("=== b::bad: thread 'bad' panicked at tests/x.rs:9:5:\nno answer"),
            "{f}"
        );
        assert!(
            f.contains("guest line 99") && !f.contains("guest line 39\n"),
            "{f}"
        );
        assert!(!f.contains("kvm_exit"), "{f}");
        assert!(report.summary().contains("b::bad: FAILED (status 101)"));
    }

    #[test]
    fn a_host_failure_leaves_the_unfinished_tests() {
        let results = test_results(&lines(
            "NESTED TEST BEGIN b::one\nNESTED TEST END b::one status=1 seconds=2\n\
             NESTED TEST BEGIN b::two\n[ 9.0] Kernel panic - not syncing: corrupted stack end",
        ));
        let expected: Vec<String> = ["b::one", "b::two", "b::three"].map(String::from).into();
        // A failed test is finished: it does not run again.
        assert_eq!(unfinished(&expected, &results), ["two", "three"]);
        assert!(host_failure(&Outcome::Panicked));
        assert!(host_failure(&Outcome::Stalled(Duration::from_secs(1))));
        assert!(!host_failure(&Outcome::Exited(1)));
        assert!(!host_failure(&Outcome::TimedOut(Duration::from_secs(1))));
        let s = tests_script(&["two".into(), "three".into()], true);
        assert!(
            s.contains("--list --format terse 'two' 'three' --exact"),
            "{s}"
        );
    }

    #[test]
    fn a_retried_test_counts_by_its_second_attempt() {
        let l = lines(
            "NESTED TEST BEGIN linux_guest::a\n\
             boom\n\
             NESTED TEST END linux_guest::a status=101 seconds=30\n\
             NESTED TEST RETRY linux_guest::a: the guest triple-faulted\n\
             NESTED TEST BEGIN linux_guest::a\n\
             NESTED TEST END linux_guest::a status=0 seconds=20\n\
             NESTED TEST BEGIN linux_guest::b\n\
             NESTED TEST END linux_guest::b status=101 seconds=3",
        );
        let r = test_results(&l);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].passed());
        assert_eq!(r[0].retried.as_deref(), Some("the guest triple-faulted"));
        assert!(!r[1].passed() && r[1].retried.is_none());
    }

    /// The crash signatures, through `sh` and `grep` as the nested host runs them.
    #[test]
    fn emulator_crash_signatures() {
        let dir = std::env::temp_dir().join(format!("nested-sig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let verdict = |output: &str| -> Option<String> {
            let f = dir.join("out");
            std::fs::write(&f, output).unwrap();
            let script = format!("{EMULATOR_CRASH}\nemulator_crash '{}'", f.display());
            let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let bad = r#"{"index":1,"mp_state":"runnable","rip":"0xffffffffc07260b0","cr3":"0x100aaa000","exception":"14/0x10"}"#;
        let why = verdict(bad).expect("a root beyond 4 GiB, looping on #PF");
        assert!(why.contains("0x100aaa000"), "{why}");
        let healthy = r#"{"index":0,"mp_state":"halted","cr3":"0x2c22000"}"#;
        assert_eq!(verdict(healthy), None);
        let pf_low = r#"{"index":0,"cr3":"0x2c22000","exception":"14/0x2"}"#;
        assert_eq!(
            verdict(pf_low),
            None,
            "a #PF with a sane root is not the emulator's"
        );
        assert!(verdict("vmm: vCPU 0: triple fault (KVM_EXIT_SHUTDOWN): rip=0xfff0").is_some());
        assert_eq!(verdict("no `GUEST READY`"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boot_results_parse_exit_stats() {
        let l = lines(
            "NESTED BOOT 1 status=0 pass=yes hung=no vmm-exit-stats: {\"wall_us\":14965316,\"peak_rss_kib\":1}\n\
             NESTED BOOT 2 status=1 pass=no hung=no\n\
             NESTED BOOT 3 TRANSCRIPT BEGIN",
        );
        let r = boot_results(&l);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].wall, Some(Duration::from_micros(14_965_316)));
        assert!(r[0].passed && !r[0].hung);
        assert_eq!((r[1].status, r[1].passed, r[1].wall), (1, false, None));
    }

    #[test]
    fn heartbeats_are_dropped_even_mid_line() {
        assert_eq!(without_heartbeats("NESTED HEARTBEAT 12.34"), "");
        assert_eq!(
            without_heartbeats("test a ... NESTED HEARTBEAT 35.62"),
            "test a ... "
        );
        assert_eq!(
            without_heartbeats("x NESTED HEARTBEAT 1.0NESTED HEARTBEAT 2.5 y"),
            "x  y"
        );
        assert_eq!(without_heartbeats("plain"), "plain");
    }

    #[test]
    fn emulator_failures_are_only_stalls_and_crashes() {
        assert!(Outcome::Stalled(Duration::from_secs(1)).is_emulator_failure());
        assert!(!Outcome::Exited(1).is_emulator_failure());
        assert!(!Outcome::Panicked.is_emulator_failure());
        assert!(!Outcome::TimedOut(Duration::from_secs(1)).is_emulator_failure());
        use std::os::unix::process::ExitStatusExt;
        let reset = Outcome::EmulatorExited(Some(ExitStatus::from_raw(0)));
        assert!(reset.is_emulator_failure(), "a silent host reset");
        let error = Outcome::EmulatorExited(Some(ExitStatus::from_raw(1 << 8)));
        assert!(
            !error.is_emulator_failure(),
            "QEMU refusing its arguments is ours"
        );
        let killed = Outcome::EmulatorExited(Some(ExitStatus::from_raw(libc::SIGSEGV)));
        assert!(killed.is_emulator_failure());
        assert!(!Outcome::EmulatorExited(None).is_emulator_failure());
    }

    #[test]
    fn scripts_name_the_payload_paths() {
        let s = tests_script(&["linux".into()], false);
        assert!(s.contains("--list --format terse 'linux'"));
        assert!(s.contains("VMM_BIN=/payload/bin/vmm"));
        let mut boots = BootLoop {
            runs: 3,
            extra_cmdline: "quiet".into(),
            ..BootLoop::default()
        };
        let b = boot_loop_script(&boots);
        assert!(b.contains("--vcpus 2") && b.contains("-le 3") && b.contains("quiet"));
        assert!(b.contains("guest.scenario=smoke") && !b.contains("tracefs"));
        assert!(!b.contains("10.0.2.2"));
        boots.trace = true;
        boots.scenario = "pcie".into();
        boots.tap = Some("t0".into());
        boots.vmm_args = "--net tap=t0".into();
        let b = boot_loop_script(&boots);
        assert!(b.contains("kvm_inj_exception") && b.contains("GUEST SCENARIO pcie PASS"));
        assert!(b.contains("--net tap=t0") && b.contains("dev t0"));
    }
}
