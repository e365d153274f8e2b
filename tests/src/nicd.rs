//! nicd for tests: the real binary with a seqpacket uplink the test holds (or hands to a
//! reflector), its VF sockets, and `vmctl nic` against its API socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::seqpacket::SeqpacketSocket;

use crate::vfio_client::wait_for;
use crate::{nicd_binary, temp_path, vmctl_binary};

const WAIT: Duration = Duration::from_secs(10);

/// nicd's synthetic socket in its socket directory.
pub const SYNTHETIC_SOCKET: &str = vmm::nicd::synthetic::SOCKET_NAME;

/// `xx:xx:xx:xx:xx:xx`.
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The admin MAC nicd gives VF `k` (52:54:00:5a:00:<k+1>).
pub fn vf_mac(k: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x5a, 0x00, k + 1]
}

#[derive(Debug)]
pub struct Nicd {
    child: Child,
    /// Where its sockets are.
    pub dir: PathBuf,
    /// Its API socket.
    pub api: PathBuf,
    uplink: Option<SeqpacketSocket>,
    /// How it was started, for [`Nicd::restart`]: VFs, uplink, extra flags.
    args: (u16, String, Vec<String>),
    /// The test's uplink listener (a seqpacket uplink), which a restarted nicd connects to.
    uplink_listener: Option<SeqpacketSocket>,
    /// The uplink a [`Reflector`] serves, which a restart replaces.
    reflected: Option<Arc<Mutex<Option<SeqpacketSocket>>>>,
    /// A TAP uplink, its host end's address and its MAC, given again after a restart (the
    /// TAP goes with the nicd that made it).
    tap: Option<(String, String, String)>,
}

/// Gives the host end of TAP `tap` the address `cidr` and brings it up.
fn tap_up(tap: &str, cidr: &str) {
    for args in [
        vec!["addr", "add", cidr, "dev", tap],
        vec!["link", "set", tap, "up"],
    ] {
        let out = Command::new("ip").args(&args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Nicd {
    /// Starts nicd with `vfs` VFs and a seqpacket uplink the test holds.
    pub fn start(vfs: u16) -> Self {
        Self::start_with(vfs, &[], None)
    }

    /// [`Nicd::start`] with more flags, and a soft open-file limit to start it under.
    pub fn start_with(vfs: u16, extra: &[&str], nofile: Option<u64>) -> Self {
        let dir = temp_path("nicd");
        std::fs::create_dir_all(&dir).unwrap();
        let up_path = dir.join("uplink.sock");
        let listener = SeqpacketSocket::listen(&up_path, 1).unwrap();
        let uplink = format!("socket={}", up_path.display());
        let (child, api) = Self::spawn(&dir, vfs, &uplink, extra, nofile);
        let up = listener.accept().unwrap();
        Self {
            child,
            dir,
            api,
            uplink: Some(up),
            args: (vfs, uplink, extra.iter().map(|s| s.to_string()).collect()),
            uplink_listener: Some(listener),
            reflected: None,
            tap: None,
        }
    }

    /// Kills nicd (SIGKILL, as a crash) and starts it again with the same flags and
    /// sockets; a seqpacket uplink is accepted afresh (and handed to the reflector, if one
    /// serves it), a TAP uplink's host end gets its address again. Returns once the new
    /// nicd is ready.
    pub fn restart(&mut self) {
        self.kill();
        if let Some((tap, ..)) = &self.tap {
            // The dead nicd's TAP is unregistered after its descriptor closed; a new one of
            // that name made meanwhile would go with it.
            let gone = Path::new("/sys/class/net").join(tap);
            assert!(
                wait_for(WAIT, || !gone.exists()),
                "the dead nicd's TAP {tap} is still there"
            );
        }
        let (vfs, uplink, extra) = self.args.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (child, api) = Self::spawn(&self.dir, vfs, &uplink, &extra, None);
        self.child = child;
        self.api = api;
        if let Some((tap, cidr, mac)) = &self.tap {
            // The new TAP gets the old one's MAC, as a host's uplink keeps its own: the
            // guests' ARP caches stay right.
            let out = Command::new("ip")
                .args(["link", "set", tap, "address", mac])
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip link set {tap} address {mac}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tap_up(tap, cidr);
        }
        if let Some(listener) = &self.uplink_listener {
            let up = listener.accept().unwrap();
            match &self.reflected {
                Some(r) => *r.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(up),
                None => self.uplink = Some(up),
            }
        }
    }

    /// Starts nicd with `vfs` VFs and a TAP uplink it creates, `tap`, whose host end gets
    /// `host_cidr` and goes up (needs CAP_NET_ADMIN).
    pub fn start_tap(vfs: u16, tap: &str, host_cidr: &str) -> Self {
        let dir = temp_path("nicd");
        std::fs::create_dir_all(&dir).unwrap();
        let (child, api) = Self::spawn(&dir, vfs, &format!("tap={tap}"), &[], None);
        tap_up(tap, host_cidr);
        let mac = std::fs::read_to_string(format!("/sys/class/net/{tap}/address"))
            .expect("the TAP's MAC")
            .trim()
            .to_string();
        Self {
            child,
            dir,
            api,
            uplink: None,
            args: (vfs, format!("tap={tap}"), Vec::new()),
            uplink_listener: None,
            reflected: None,
            tap: Some((tap.to_string(), host_cidr.to_string(), mac)),
        }
    }

    /// Spawns nicd in `dir` and waits for `nicd: ready`.
    fn spawn(
        dir: &Path,
        vfs: u16,
        uplink: &str,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> (Child, PathBuf) {
        let api = dir.join("api.sock");
        let mut cmd = Command::new(nicd_binary());
        cmd.args(["--vfs", &vfs.to_string(), "--uplink", uplink])
            .arg("--socket-dir")
            .arg(dir)
            .arg("--api-socket")
            .arg(&api)
            .args(extra)
            .stderr(Stdio::piped());
        if let Some(soft) = nofile {
            let lower = move || {
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: getrlimit writes into a valid rlimit struct.
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) };
                r.rlim_cur = soft;
                // SAFETY: setrlimit reads a valid rlimit struct.
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) };
                Ok(())
            };
            // SAFETY: the closure only calls getrlimit and setrlimit, which are
            // async-signal-safe, between fork and exec.
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, lower) };
        }
        let mut child = cmd.spawn().expect("spawn nicd");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[nicd] {line}");
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx.recv_timeout(WAIT).expect("nicd: ready");
            if line == "nicd: ready" {
                break;
            }
        }
        (child, api)
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A `--net` spec for a guest's synthetic port with `mac` on this nicd (`standby`:
    /// the failover standby).
    pub fn synthetic_net(&self, mac: [u8; 6], standby: bool) -> String {
        format!(
            "nicd={},mac={}{}",
            self.dir.join(crate::nicd::SYNTHETIC_SOCKET).display(),
            mac_text(mac),
            if standby { ",standby" } else { "" }
        )
    }

    /// VF `k`'s vfio-user socket.
    pub fn vf(&self, k: u16) -> PathBuf {
        self.dir.join(format!("vf{k}.sock"))
    }

    pub fn uplink(&self) -> &SeqpacketSocket {
        self.uplink.as_ref().unwrap()
    }

    /// The next frame nicd sent out of the uplink (waiting up to 5 s).
    pub fn uplink_recv(&self) -> Option<Vec<u8>> {
        self.uplink_recv_within(Duration::from_secs(5))
    }

    /// A frame nicd sent out of the uplink in the next 200 ms, if any.
    pub fn uplink_recv_nowait(&self) -> Option<Vec<u8>> {
        self.uplink_recv_within(Duration::from_millis(200))
    }

    fn uplink_recv_within(&self, t: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 16384];
        let mut got = None;
        wait_for(t, || match self.uplink().recv(&mut buf) {
            Ok(n) => {
                got = Some(buf[..n].to_vec());
                true
            }
            Err(_) => false,
        });
        got
    }

    /// `vmctl nic ARGS` against its API: exit code, stdout, stderr.
    pub fn vmctl(&self, args: &[&str]) -> (i32, String, String) {
        nic_vmctl(&self.api, args)
    }

    pub fn stop(mut self) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        status.code().unwrap_or(-1)
    }
}

impl Drop for Nicd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nic_vmctl(api: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vmctl_binary())
        .arg("--socket")
        .arg(api)
        .arg("nic")
        .args(args)
        .output()
        .expect("run vmctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Frames counted by (source MAC, VLAN ID).
type SeenFrames = HashMap<([u8; 6], u16), u64>;

/// A reflector on nicd's uplink: every frame that comes out is sent back with its source
/// and destination MACs swapped (the peer of the test guest's `vf-net` scenario).
#[derive(Debug)]
pub struct Reflector {
    stop: Arc<AtomicBool>,
    /// Frames reflected.
    pub frames: Arc<AtomicU64>,
    /// What came out of the uplink, by source MAC and 802.1Q VLAN ID (0: untagged).
    seen: Arc<Mutex<SeenFrames>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reflector {
    /// Takes `nicd`'s uplink and reflects what comes out of it (and out of the uplink of
    /// a restarted nicd).
    pub fn start(nicd: &mut Nicd) -> Self {
        let up = nicd.uplink.take().expect("the uplink is still the test's");
        let feed = Arc::new(Mutex::new(Some(up)));
        nicd.reflected = Some(feed.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (s, f, log) = (stop.clone(), frames.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                let guard = feed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(up) = guard.as_ref() else {
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let Ok(n) = up.recv(&mut buf) else {
                    drop(guard);
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                if n < 14 {
                    if n == 0 {
                        // A nicd gone: its uplink at its end until a restart replaces it.
                        drop(guard);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    continue;
                }
                let frame = &mut buf[..n];
                let mut src_mac = [0u8; 6];
                src_mac.copy_from_slice(&frame[6..12]);
                let vid = if frame[12..14] == [0x81, 0x00] && n >= 18 {
                    u16::from_be_bytes([frame[14], frame[15]]) & 0xfff
                } else {
                    0
                };
                *log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry((src_mac, vid))
                    .or_insert(0) += 1;
                let (dst, src) = frame.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
                if up.send(frame).is_ok() {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self {
            stop,
            frames,
            seen,
            thread: Some(thread),
        }
    }

    /// Frames seen from `src` with VLAN ID `vid` (0: untagged).
    pub fn seen(&self, src: [u8; 6], vid: u16) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(src, vid))
            .copied()
            .unwrap_or(0)
    }

    /// Frames seen from `src`, tagged or not.
    pub fn seen_from(&self, src: [u8; 6]) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((s, _), _)| *s == src)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
