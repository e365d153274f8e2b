//! A `vmm` process under test: its serial output collected line by line by reader threads,
//! markers awaited with a deadline (a hang guard, not a speed assertion).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::nested::pump;

/// A line the VM printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Serial console (vmm stdout).
    Stdout(String),
    /// VMM messages (vmm stderr).
    Stderr(String),
}

/// A running `vmm`.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    lines: Receiver<Output>,
    /// Everything read so far.
    pub stdout: Vec<String>,
    /// Everything read so far.
    pub stderr: Vec<String>,
    open_streams: usize,
    /// The API socket of a `vmm run` started with one.
    api: Option<std::path::PathBuf>,
    /// Reaped: its pid may belong to another process now.
    reaped: bool,
    /// The guest's console input (the vmm's stdin), for processes spawned with one.
    console: Option<std::process::ChildStdin>,
}

impl VmProcess {
    /// Waits for the VM to end (at most `deadline`) and checks that it ran every scenario
    /// of `scenarios` to `TESTGUEST PASS`, printed no FAIL and exited 0; panics with the
    /// transcript otherwise.
    pub fn expect_pass(&mut self, scenarios: &[&str], deadline: Duration) {
        let status = self.wait_exit(deadline);
        let t = self.transcript();
        for name in scenarios {
            let pass = format!("TESTGUEST PASS {name}");
            assert!(
                self.stdout.iter().any(|l| l.trim_end() == pass),
                "no `{pass}`\n{t}"
            );
        }
        assert!(
            !self.stdout.iter().any(|l| l.starts_with("TESTGUEST FAIL")),
            "a scenario failed\n{t}"
        );
        let status = status.unwrap_or_else(|| panic!("vmm did not exit within {deadline:?}\n{t}"));
        assert_eq!(status.code(), Some(0), "{t}");
    }

    /// Spawns `vmm` with `args`; stdin is empty.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(vmm: &Path, args: &[S]) -> Self {
        Self::spawn_inner(vmm, args, false)
    }

    /// Spawns `vmm` with `args` and a pipe to its stdin, the guest's console input
    /// ([`VmProcess::send_line`]).
    pub fn spawn_with_console<S: AsRef<std::ffi::OsStr>>(vmm: &Path, args: &[S]) -> Self {
        Self::spawn_inner(vmm, args, true)
    }

    /// Types `line` and a newline on the guest's console; panics if spawned without one.
    pub fn send_line(&mut self, line: &str) {
        let console = self
            .console
            .as_mut()
            .expect("spawned without a console (spawn_with_console)");
        std::io::Write::write_all(console, format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("console input: {e}"));
    }

    fn spawn_inner<S: AsRef<std::ffi::OsStr>>(vmm: &Path, args: &[S], console: bool) -> Self {
        let mut child = Command::new(vmm)
            .args(args)
            .stdin(if console {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", vmm.display()));
        let (tx, rx) = channel();
        pump(
            child.stdout.take().expect("stdout"),
            tx.clone(),
            Output::Stdout,
        );
        pump(child.stderr.take().expect("stderr"), tx, Output::Stderr);
        let console = child.stdin.take();
        // Only a `vmm run` answers `vcpus`; nicd's API socket is another protocol.
        let is_vm = args.first().is_some_and(|a| a.as_ref() == "run");
        let api = args
            .iter()
            .position(|a| is_vm && a.as_ref() == "--api-socket")
            .and_then(|i| args.get(i + 1))
            .map(|p| std::path::PathBuf::from(p.as_ref()));
        Self {
            child,
            lines: rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            open_streams: 2,
            api,
            reaped: false,
            console,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn record(&mut self, line: Output) -> Output {
        match &line {
            Output::Stdout(l) => self.stdout.push(l.clone()),
            Output::Stderr(l) => self.stderr.push(l.clone()),
        }
        line
    }

    /// Waits until a serial line satisfies `pred`; returns it, or None when the deadline
    /// passes or the VM's output ends first.
    pub fn wait_for_stdout(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line(false, timeout, pred)
    }

    /// Waits (at most `deadline`) for a line on stdout that contains `text`, and returns
    /// it; panics with the transcript when none comes (a test's marker).
    pub fn expect_stdout(&mut self, deadline: Duration, text: &str) -> String {
        let seen = self.wait_for_stdout(deadline, |l| l.contains(text));
        seen.unwrap_or_else(|| panic!("no `{text}`\n{}", self.transcript()))
    }

    /// Waits until a line on the process's stderr satisfies `pred` (e.g. a daemon's
    /// ready line); returns it, or None when the deadline passes or the output ends.
    pub fn wait_for_stderr(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line(true, timeout, pred)
    }

    /// How many stdout lines have been read so far: a mark for
    /// [`VmProcess::wait_for_stdout_since`].
    pub fn stdout_mark(&self) -> usize {
        self.stdout.len()
    }

    /// [`VmProcess::wait_for_stdout`] among the lines from `mark` on only: the answer to a
    /// command whose answer the guest may have printed before.
    pub fn wait_for_stdout_since(
        &mut self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line_from(false, mark, timeout, pred)
    }

    fn wait_for_line(
        &mut self,
        stderr: bool,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line_from(stderr, 0, timeout, pred)
    }

    fn wait_for_line_from(
        &mut self,
        stderr: bool,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let seen = if stderr { &self.stderr } else { &self.stdout };
        if let Some(l) = seen.iter().skip(from).find(|l| pred(l)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match self.record(line) {
                    Output::Stdout(l) if !stderr && pred(&l) => return Some(l),
                    Output::Stderr(l) if stderr && pred(&l) => return Some(l),
                    _ => {}
                },
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
            }
        }
        None
    }

    /// Waits for the process to end (draining its output); kills it at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.record(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return None;
                }
                Err(RecvTimeoutError::Disconnected) => self.open_streams = 0,
            }
        }
        // Both pipes closed: the process is exiting.
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends a signal to the VMM.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Kills the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// All output so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- serial ---\n{}\n--- vmm stderr ---\n{}{}{}",
            self.stdout.join("\n"),
            self.stderr.join("\n"),
            if self.reaped {
                String::new()
            } else {
                threads_of(self.child.id())
            },
            self.registers()
        )
    }

    /// The vCPUs' registers of a live VM with an API socket (paused for the reading, then
    /// resumed), else nothing.
    fn registers(&self) -> String {
        let Some(api) = self.api.as_ref().filter(|_| !self.reaped) else {
            return String::new();
        };
        if !Path::new(&format!("/proc/{}/task", self.child.id())).exists() || !api.exists() {
            return String::new();
        }
        let (_, paused) = crate::vmctl(api, &["pause"]);
        let (_, regs) = crate::vmctl(api, &["vcpus"]);
        if paused.ok {
            crate::vmctl(api, &["resume"]);
        }
        match (regs.ok, regs.vcpus) {
            (true, Some(vcpus)) => {
                let mut out = String::from("\n--- vCPUs (vmctl vcpus) ---");
                for v in vcpus {
                    out.push_str(&format!(
                        "\n{}",
                        serde_json::to_string(&v).unwrap_or_default()
                    ));
                }
                out
            }
            _ => format!(
                "\n--- vCPUs: unreadable: {}",
                regs.error.or(paused.error).unwrap_or_default()
            ),
        }
    }
}

/// The state of each thread of a live process `pid` (name, scheduler state, where it
/// sleeps in the kernel, and its kernel stack where readable), for a transcript of a VM
/// that stopped making progress; empty once the process is gone.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let mut out = String::from("\n--- vmm threads ---");
    let mut tasks: Vec<_> = tasks.flatten().map(|t| t.path()).collect();
    tasks.sort();
    for t in tasks {
        let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The state follows the parenthesised name, which may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        out.push_str(&format!(
            "\n{} state={state} wchan={}",
            read("comm").trim(),
            read("wchan").trim()
        ));
        for line in read("stack").lines() {
            out.push_str(&format!("\n    {line}"));
        }
    }
    out
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The flags of one `vmm run`, for tests.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// `--kernel`.
    pub kernel: std::path::PathBuf,
    /// `--initrd`.
    pub initrd: Option<std::path::PathBuf>,
    /// `--cmdline`.
    pub cmdline: String,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--memory`.
    pub memory: String,
    /// More flags.
    pub extra: Vec<std::ffi::OsString>,
}

impl RunArgs {
    /// The test guest with `scenarios` (and `testguest.mem` matching `memory`).
    pub fn testguest(scenarios: &str, vcpus: u32, memory: &str) -> Self {
        Self {
            kernel: crate::testguest_elf(),
            initrd: None,
            cmdline: format!("testguest.scenario={scenarios} testguest.mem={memory}"),
            vcpus,
            memory: memory.to_string(),
            extra: Vec::new(),
        }
    }

    /// Adds flags.
    pub fn with(mut self, flags: &[&std::ffi::OsStr]) -> Self {
        self.extra.extend(flags.iter().map(|f| f.to_os_string()));
        self
    }

    /// Spawns the `vmm` built with these tests.
    pub fn spawn(&self) -> VmProcess {
        VmProcess::spawn(&crate::vmm_binary(), &self.args())
    }

    /// [`RunArgs::spawn`] with a pipe to the guest's console.
    pub fn spawn_with_console(&self) -> VmProcess {
        VmProcess::spawn_with_console(&crate::vmm_binary(), &self.args())
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--kernel".into()];
        args.push(self.kernel.clone().into());
        if let Some(initrd) = &self.initrd {
            args.push("--initrd".into());
            args.push(initrd.clone().into());
        }
        for (flag, value) in [
            ("--cmdline", &self.cmdline),
            ("--vcpus", &self.vcpus.to_string()),
            ("--memory", &self.memory),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}
