//! The host side of the serial console: guest output to stdout (unbuffered), host stdin to
//! the guest, and the terminal mode while the VM runs.

use devices::sync::lock;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::SerialDevice;
use devices::warn_ratelimited;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

/// Guest output to the VMM's stdout, unbuffered so partial lines (prompts) show at once.
/// A closed stdout is ignored: the guest must not stop because nobody reads it.
#[derive(Debug)]
pub struct Stdout(Option<File>);

impl Stdout {
    /// A writer on a duplicate of fd 1.
    pub fn new() -> Self {
        Self(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(File::from),
        )
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &mut self.0
            && f.write_all(buf).is_err()
        {
            self.0 = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Puts the terminal on stdin in non-canonical, no-echo mode while it lives, so keystrokes
/// reach the guest one by one. ISIG stays on: Ctrl-C stops the VM.
#[derive(Debug)]
pub struct TerminalMode {
    saved: Option<libc::termios>,
}

impl TerminalMode {
    /// Switches the mode if stdin is a terminal.
    pub fn enter() -> Self {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it and reports failure by return.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        // SAFETY: `t` is a valid termios derived from the current one.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        SAVED_TERMIOS.with_saved(Some(saved));
        Self { saved: Some(saved) }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            restore(&t);
            SAVED_TERMIOS.with_saved(None);
        }
    }
}

fn restore(t: &libc::termios) {
    // SAFETY: `t` is the termios read from this descriptor earlier.
    unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, t) };
}

/// The saved mode, for the panic hook (a panic aborts without running destructors).
struct SavedTermios(Mutex<Option<libc::termios>>);

impl SavedTermios {
    fn with_saved(&self, t: Option<libc::termios>) {
        *lock(&self.0) = t;
    }
}

static SAVED_TERMIOS: SavedTermios = SavedTermios(Mutex::new(None));

/// Restores the terminal before a panic aborts the process.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(Some(t)) = SAVED_TERMIOS.0.try_lock().map(|g| *g) {
            restore(&t);
        }
        default(info);
    }));
}

/// Bytes of host input held while the guest's receive FIFO is full.
const PENDING_MAX: usize = 4096;
/// How often held input is offered to the FIFO again.
const RETRY: Duration = Duration::from_millis(5);

/// Forwards host stdin to the serial console. Input the FIFO cannot take yet is held (up to
/// [`PENDING_MAX`] bytes, then stdin is not read until there is room) and offered again on
/// a timer, so a paste longer than the 64-byte FIFO is neither lost nor busy-looped over.
pub struct StdinForwarder {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: std::io::Stdin,
    pending: VecDeque<u8>,
    timer: TimerFd,
    reading: bool,
    eof: bool,
}

impl std::fmt::Debug for StdinForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinForwarder")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl StdinForwarder {
    /// A forwarder into `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> std::io::Result<Self> {
        Ok(Self {
            serial,
            stdin: std::io::stdin(),
            pending: VecDeque::new(),
            timer: TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?,
            reading: false,
            eof: false,
        })
    }

    /// Moves held input into the FIFO as far as it has room.
    fn flush_pending(&mut self) {
        let mut serial = lock(&self.serial);
        while !self.pending.is_empty() {
            let (head, _) = self.pending.as_slices();
            let taken = serial.enqueue_input(head);
            if taken == 0 {
                break;
            }
            self.pending.drain(..taken);
        }
    }

    fn read_stdin(&mut self) {
        let room = PENDING_MAX - self.pending.len();
        let mut buf = [0u8; 1024];
        let want = room.min(buf.len());
        if want == 0 {
            return;
        }
        match self.stdin.lock().read(&mut buf[..want]) {
            Ok(0) => self.eof = true,
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(_) => self.eof = true,
        }
    }

    /// Watches stdin only while there is room to hold what it brings; keeps the retry
    /// timer armed only while input is held.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want_read = !self.eof && self.pending.len() < PENDING_MAX;
        if want_read != self.reading {
            let ev = Events::new(&self.stdin, EventSet::IN);
            let r = if want_read {
                ops.add(ev)
            } else {
                ops.remove(ev)
            };
            // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
            self.reading = want_read && r.is_ok();
        }
        let armed = if self.pending.is_empty() {
            self.timer.clear()
        } else {
            self.timer.reset(RETRY, None)
        };
        if let Err(e) = armed {
            warn_ratelimited!("console: retry timer: {e}");
        }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            warn_ratelimited!("console: cannot watch the retry timer: {e:?}");
        }
        self.update_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
        } else {
            self.read_stdin();
            if events.event_set().contains(EventSet::HANG_UP) && self.pending.len() < PENDING_MAX {
                self.eof = true;
            }
        }
        self.flush_pending();
        self.update_interest(ops);
    }
}
