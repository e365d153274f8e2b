//! The nicd benchmark: switching rate and memory of the emulated SR-IOV adapter, with
//! this process playing the guests (devices' igbvf driver over vfio-user, the guest RAM a
//! memfd), so no KVM is needed.
//!
//! - Switching: VF 0's driver queues frames of one size in batches behind a posted TDT
//!   write; they go to VF 1 (whose driver takes them by DD and gives the descriptors
//!   back in batches, as a busy igbvf does) or out of the uplink (a seqpacket socket this
//!   process reads). One bench thread plays both ends, nicd has its one thread: the two
//!   cores of a small machine. Figures: delivered frames per second, Gbit/s of frame
//!   bytes, nicd's CPU time per frame (its schedstat), frames not delivered.
//! - Memory: nicd's RSS with N VFs enabled, idle, then with a driver up on every VF.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use devices::sriov::igbvf::driver::{VfDriver, frame};
use devices::virtio::net::{seqpacket_accept, seqpacket_listen};

/// Where a switching measurement's frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchPath {
    /// VF 0 to VF 1, inside the adapter.
    VfToVf,
    /// VF 0 out of the uplink.
    VfToUplink,
}

impl std::str::FromStr for SwitchPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vf-vf" => Ok(Self::VfToVf),
            "vf-uplink" => Ok(Self::VfToUplink),
            other => Err(format!("unknown path `{other}` (vf-vf, vf-uplink)")),
        }
    }
}

impl std::fmt::Display for SwitchPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::VfToVf => "VF -> VF",
            Self::VfToUplink => "VF -> uplink",
        })
    }
}

/// The benchmark's options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Frames per measurement.
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
    /// Frame sizes in bytes (60..=1514).
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    sizes: Vec<usize>,
    /// Paths: vf-vf, vf-uplink.
    #[arg(long, value_delimiter = ',', default_value = "vf-vf,vf-uplink")]
    paths: Vec<SwitchPath>,
    /// Descriptors per ring of the playing drivers.
    #[arg(long, default_value_t = 512)]
    ring: u32,
    /// VF counts to measure nicd's RSS at.
    #[arg(long, value_delimiter = ',', default_value = "8,64,255")]
    rss_vfs: Vec<u16>,
    /// Skip the RSS measurements.
    #[arg(long)]
    no_rss: bool,
}

/// A MAC on the far side of the uplink.
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A running nicd, stopped on drop.
pub(crate) struct Nicd {
    child: Child,
    dir: PathBuf,
    uplink: Option<OwnedFd>,
}

impl Nicd {
    /// Starts nicd with `vfs` enabled of `total` and a seqpacket uplink this process
    /// holds; returns once it is ready.
    pub(crate) fn start(vfs: u16, total: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("vmm-bench-nicd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let up_path = dir.join("uplink.sock");
        let listener =
            seqpacket_listen(&up_path, 1).map_err(|e| format!("uplink listener: {e}"))?;
        let mut child = Command::new(super::sibling("nicd"))
            .args(["--vfs", &vfs.to_string(), "--total-vfs", &total.to_string()])
            .arg("--uplink")
            .arg(format!("socket={}", up_path.display()))
            .arg("--socket-dir")
            .arg(&dir)
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start nicd: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Until ready the lines go to the starter; then nicd's own warnings show here.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Err(e) = tx.send(line) {
                    eprintln!("{}", e.0);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("nicd: ready") => {
                    drop(rx);
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    return Err("nicd did not get ready".into());
                }
            }
        }
        let uplink = seqpacket_accept(&listener).map_err(|e| format!("uplink accept: {e}"))?;
        Ok(Self {
            child,
            dir,
            uplink: Some(uplink),
        })
    }

    /// Takes the uplink's fd (to sink it elsewhere).
    pub(crate) fn take_uplink(&mut self) -> Option<OwnedFd> {
        self.uplink.take()
    }

    /// Its synthetic socket.
    pub(crate) fn synthetic(&self) -> PathBuf {
        self.dir.join(vmm::nicd::synthetic::SOCKET_NAME)
    }

    pub(crate) fn vf(&self, k: u16) -> PathBuf {
        self.dir.join(format!("vf{k}.sock"))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Nanoseconds nicd's thread has run (its schedstat).
    pub(crate) fn cpu_ns(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid()))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// What nicd counted for VF 0, VF 1 and the uplink's drops (`nic show -s --json`),
    /// compacted: where frames that did not arrive went.
    pub(crate) fn drop_counts(&self) -> String {
        let Ok(mut c) =
            vmm::api::Client::connect(&self.dir.join("api.sock"), Duration::from_secs(5))
        else {
            return "nicd's API did not answer".into();
        };
        let r: Result<vmm::nicd::api::NicResponse, _> =
            c.call(&vmm::nicd::api::NicRequest::Show { stats: true });
        match r.ok().and_then(|r| r.json) {
            Some(j) => {
                let mut out = Vec::new();
                for vf in j["vfinfo_list"].as_array().into_iter().flatten().take(2) {
                    out.push(format!("vf {}: {}", vf["vf"], vf["stats"]));
                }
                out.join("; ")
            }
            None => "no statistics".into(),
        }
    }

    /// VmRSS in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Nicd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child's pid; no memory is involved.
        unsafe {
            libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM);
        }
        let _ = self.child.wait();
        self.uplink = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Frames waiting on the uplink socket, taken without blocking.
pub(crate) fn drain_uplink(fd: &OwnedFd, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    loop {
        // SAFETY: `buf` is valid for writes of its length; MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            return n;
        }
        n += 1;
    }
}

/// One switching measurement's figures.
struct Switched {
    seconds: f64,
    sent: u64,
    /// nicd's counters, when frames went missing.
    counts: Option<String>,
    delivered: u64,
    nicd_cpu_ns: u64,
}

fn driver(path: &Path, ring: u32) -> Result<VfDriver, String> {
    let mut d = VfDriver::attach(path, ring).map_err(|e| vmm::error_chain(&e))?;
    d.up().map_err(|e| vmm::error_chain(&e))?;
    Ok(d)
}

fn switch(path: SwitchPath, size: usize, frames: u64, ring: u32) -> Result<Switched, String> {
    let nicd = Nicd::start(2, 8)?;
    let mut a = driver(&nicd.vf(0), ring)?;
    let mut b = match path {
        SwitchPath::VfToVf => Some(driver(&nicd.vf(1), ring)?),
        SwitchPath::VfToUplink => None,
    };
    let dst = if b.is_some() {
        vmm::nicd::adapter::default_mac(1).0
    } else {
        PEER
    };
    // The frame as the driver hands it over (no FCS), as `vmm-bench net` counts them.
    let f = frame(dst, vmm::nicd::adapter::default_mac(0).0, size);
    let uplink = nicd.uplink.as_ref().ok_or("no uplink")?;
    let mut buf = vec![0u8; 65_536];
    // TX: a sixteenth of the ring per TDT write (and not fewer while more are to come,
    // as a busy driver's xmit_more batches); RX: descriptors back every sixteenth.
    let batch = (ring / 16).max(1);
    let rx_batch = (ring / 16).max(1);
    let e = |e: devices::sriov::igbvf::driver::DriverError| vmm::error_chain(&e);

    // At most a quarter ring in flight end to end. The receiver's RDT writes can wait in
    // its socket behind the sender's TDT writes (nicd serves each client in turn), so its
    // ring must hold the window, the descriptors not yet given back and a few RDT writes'
    // worth of lag: then what is measured is the switch, not a receiver's overflow (and
    // a frame lost anyway is counted, by nicd too).
    let window = u64::from(ring / 4);
    let cpu0 = nicd.cpu_ns();
    let start = Instant::now();
    let (mut sent, mut got) = (0u64, 0u64);
    let mut last_delivery = start;
    while got < frames && last_delivery.elapsed() < Duration::from_secs(1) {
        a.reclaim_tx().map_err(e)?;
        let mut queued = 0;
        while sent < frames && sent - got < window && queued < batch && a.queue_tx(&f).map_err(e)? {
            sent += 1;
            queued += 1;
        }
        if queued > 0 {
            a.kick_tx().map_err(e)?;
        }
        let n = match &mut b {
            Some(b) => u64::from(b.poll_rx_with(rx_batch, |_| {}).map_err(e)?),
            None => drain_uplink(uplink, &mut buf),
        };
        if n > 0 {
            got += n;
            last_delivery = Instant::now();
        } else if queued == 0 {
            std::thread::yield_now();
        }
    }
    let seconds = last_delivery.duration_since(start).as_secs_f64();

    let cpu_ns = nicd.cpu_ns().saturating_sub(cpu0);
    Ok(Switched {
        seconds,
        sent,
        counts: (got < sent).then(|| nicd.drop_counts()),
        delivered: got,
        nicd_cpu_ns: cpu_ns,
    })
}

/// nicd's RSS with `vfs` VFs: idle, and with a driver up on each.
fn rss(vfs: u16) -> Result<(u64, u64), String> {
    let nicd = Nicd::start(vfs, vfs.max(1))?;
    std::thread::sleep(Duration::from_millis(200));
    let idle = nicd.rss_kib();
    let drivers = (0..vfs)
        .map(|k| driver(&nicd.vf(k), 64))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(Duration::from_millis(200));
    let attached = nicd.rss_kib();
    drop(drivers);
    Ok((idle, attached))
}

pub fn run(o: &Options) -> ExitCode {
    // The bench holds the other end of every VF's descriptors.
    vmm::nicd::raise_fd_limit(vmm::nicd::fds_needed(vmm::nicd::MAX_TOTAL_VFS));
    let mut failed = false;
    println!(
        "nicd switching: {} frames per run, rings of {} descriptors, one bench thread \
         playing both drivers",
        o.frames, o.ring
    );
    for &path in &o.paths {
        for &size in &o.sizes {
            if !(60..=1514).contains(&size) {
                eprintln!("vmm-bench: frame size {size} is out of 60..=1514");
                failed = true;
                continue;
            }
            match switch(path, size, o.frames, o.ring) {
                Ok(s) => {
                    let rate = s.delivered as f64 / s.seconds;
                    let gbit = rate * size as f64 * 8.0 / 1e9;
                    let per_frame = s.nicd_cpu_ns as f64 / s.delivered.max(1) as f64;
                    println!(
                        "  {path:>12} {size:>5} B: {:>10.0} frames/s  {gbit:>6.2} Gbit/s  \
                         nicd {per_frame:>6.0} ns CPU/frame  ({} delivered, {} sent, of {} \
                         in {:.2} s)",
                        rate, s.delivered, s.sent, o.frames, s.seconds
                    );
                    if let Some(c) = s.counts {
                        println!("      not all delivered; nicd counted {c}");
                    }
                }
                Err(e) => {
                    eprintln!("vmm-bench: {path} {size} B: {e}");
                    failed = true;
                }
            }
        }
    }
    let rss_vfs: &[u16] = if o.no_rss { &[] } else { &o.rss_vfs };
    if !rss_vfs.is_empty() {
        println!("nicd RSS (VmRSS):");
    }
    for &vfs in rss_vfs {
        match rss(vfs) {
            Ok((idle, up)) => println!(
                "  {vfs:>3} VFs: {:>6.1} MiB idle, {:>6.1} MiB with a driver up on every VF",
                idle as f64 / 1024.0,
                up as f64 / 1024.0
            ),
            Err(e) => {
                eprintln!("vmm-bench: RSS with {vfs} VFs: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
