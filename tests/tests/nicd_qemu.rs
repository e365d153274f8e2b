//! Tier 4, real-client tests for nicd: Linux's own igbvf drives a nicd Virtual Function
//! through QEMU 11's vfio-user client, under QEMU's emulator (TCG: no KVM needed), here
//! and in CI.
//!
//! Each test makes a network namespace, starts nicd in it (`ip netns exec`, with
//! `--uplink tap=nicd0`, VF k on `DIR/vf<k>.sock`, `nicd: ready` on
//! stderr), gives the TAP's host end 10.99.0.1/24, and boots Debian's 6.12 kernel with
//! the guest initramfs under QEMU with `vfio-user-pci` on a VF socket; the guest's `vf`
//! scenario (guest-images/linux/scenarios/vf.sh) checks igbvf, the admin MAC, the
//! carrier, pings, and takes further commands on its console. The tests run one at a time
//! (QEMU's emulator is CPU-bound). See tests/src/qemu.rs.
//!
//! Skips (`SKIP:` lines; failures under `VMM_TESTS_STRICT=1`): QEMU not installed
//! (guest-images/qemu.sh), images not built or without igbvf (guest-images/build.sh
//! linux), or no CAP_NET_ADMIN. The first test needs no nicd: it boots the scenario with no VF attached, which proves the image,
//! the harness and the markers.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tests::qemu::{GuestError, GuestSpec, LinuxImage, QemuGuest, Why, retry_emulator_failure};
use tests::{SkipKind, VmProcess, skip};

/// The host end of nicd's uplink TAP, inside the test's namespace.
const HOST_IP: &str = "10.99.0.1";
/// The uplink TAP nicd creates in the namespace.
const TAP: &str = "nicd0";
/// From QEMU's start to the VF's marker: firmware, kernel, initramfs, igbvf's probe.
const BOOT: Duration = Duration::from_secs(180);
/// One step of the scenario (carrier, a ping with ARP, a command).
const STEP: Duration = Duration::from_secs(60);

/// One QEMU at a time: the emulator is CPU-bound, and two tests' guests at once on a
/// shared 2-core machine could trip the stall limits.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn image() -> Option<LinuxImage> {
    match LinuxImage::find() {
        Ok(i) => Some(i),
        Err(e) => {
            skip(SkipKind::Missing, &e.to_string());
            None
        }
    }
}

/// QEMU, the images, CAP_NET_ADMIN and nicd, or the skip line.
fn requirements() -> Option<(LinuxImage, PathBuf)> {
    let image = image()?;
    if !tests::require_net_admin() {
        return None;
    }
    Some((image, tests::nicd_binary()))
}

/// VF k's admin MAC by nicd's default: 52:54:00:5a:00:<k+1>.
fn default_mac(vf: u8) -> String {
    format!("52:54:00:5a:00:{:02x}", vf + 1)
}

/// Runs `ip ARGS...` in namespace `ns` (or the host's with None); panics on failure.
fn ip(ns: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["netns", "exec", ns, "ip"]);
    }
    let out = c.args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} (netns {ns:?}) failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmm-nicd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(None, &["netns", "add", &name]);
        ip(Some(&name), &["link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// nicd running in a namespace, its uplink TAP's host end at [`HOST_IP`]/24.
struct Nicd {
    process: VmProcess,
    dir: PathBuf,
    api: PathBuf,
}

impl Nicd {
    fn start(nicd: &Path, ns: &Netns, vfs: u32) -> Self {
        let dir = tests::temp_path("nicd");
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        let api = dir.join("api.sock");
        let args: Vec<std::ffi::OsString> = vec![
            "netns".into(),
            "exec".into(),
            ns.0.clone().into(),
            nicd.into(),
            "--vfs".into(),
            vfs.to_string().into(),
            "--uplink".into(),
            format!("tap={TAP}").into(),
            "--socket-dir".into(),
            dir.clone().into(),
            "--api-socket".into(),
            api.clone().into(),
        ];
        let mut process = VmProcess::spawn(Path::new("ip"), &args);
        let ready = process.wait_for_stderr(Duration::from_secs(30), |l| l == "nicd: ready");
        assert!(
            ready.is_some(),
            "nicd did not print `nicd: ready` within 30 s\n{}",
            process.transcript()
        );
        for k in 0..vfs {
            let sock = dir.join(format!("vf{k}.sock"));
            assert!(
                sock.exists(),
                "nicd is ready but {} is missing",
                sock.display()
            );
        }
        // nicd created the TAP; the test gives its host end an address.
        ip(
            Some(&ns.0),
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP],
        );
        ip(Some(&ns.0), &["link", "set", TAP, "up"]);
        Self { process, dir, api }
    }

    fn vf_socket(&self, vf: u32) -> PathBuf {
        self.dir.join(format!("vf{vf}.sock"))
    }

    /// `vmctl --socket API nic ARGS...`; panics unless it exits 0.
    fn vmctl(&self, args: &[&str]) -> String {
        let out = Command::new(tests::vmctl_binary())
            .arg("--socket")
            .arg(&self.api)
            .arg("nic")
            .args(args)
            .output()
            .expect("run vmctl");
        assert!(
            out.status.success(),
            "vmctl nic {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into()
    }

    /// SIGTERM; nicd must exit 0 (the contract's clean shutdown).
    fn stop(mut self) {
        self.process.signal(libc::SIGTERM);
        let status = self.process.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "nicd did not exit 0 on SIGTERM ({status:?})\n{}",
            self.process.transcript()
        );
    }
}

impl Drop for Nicd {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A guest on VF `vf` with the `vf` scenario: its admin MAC checked, address
/// 10.99.0.(2+vf)/24, pinging [`HOST_IP`].
fn vf_guest(nicd: &Nicd, vf: u8) -> GuestSpec {
    GuestSpec::new(&format!("vf{vf}"), "vf")
        .vfio_user(&nicd.vf_socket(u32::from(vf)))
        .param("vf_mac", default_mac(vf))
        .param("vf_ip", format!("{}/24", guest_ip(vf)))
        .param("peer_ip", HOST_IP)
}

fn guest_ip(vf: u8) -> String {
    format!("10.99.0.{}", 2 + vf)
}

/// Waits for the scenario's bring-up markers, in order: igbvf on the VF, the netdev, the
/// admin MAC, the carrier, the ping of [`HOST_IP`].
fn expect_bring_up(g: &mut QemuGuest, vf: u8) -> Result<(), GuestError> {
    let dev = g.wait_for("GUEST VF DEVICE ", BOOT)?;
    assert!(dev.ends_with("driver=igbvf"), "{dev}\n{}", g.transcript());
    g.wait_for("GUEST VF NETDEV ", STEP)?;
    let mac = g.wait_for("GUEST VF MAC ", STEP)?;
    assert_eq!(
        mac,
        format!("GUEST VF MAC {} assign_type=0", default_mac(vf)),
        "{}",
        g.transcript()
    );
    g.wait_for("GUEST VF CARRIER UP", STEP)?;
    g.wait_for(&format!("GUEST VF PING {HOST_IP} OK"), STEP)?;
    Ok(())
}

/// Panics with the guest's transcript.
fn fail(e: GuestError) -> ! {
    panic!("{e}")
}

#[test]
fn vf_scenario_without_a_vf_reports_no_igbvf_device() {
    let Some(image) = image() else { return };
    let _one = serial();
    let spec = GuestSpec::new("novf", "vf").param("vf_wait", 2);
    let result = retry_emulator_failure(|| {
        let mut g = QemuGuest::boot(&image, &spec).unwrap_or_else(|e| panic!("{e}"));
        g.wait_for("init: insmod igbvf.ko: ok", BOOT)?;
        match g.wait_pass(STEP) {
            Err(GuestError {
                why: Why::ScenarioFailed(line),
                ..
            }) => Ok((line, g.elapsed())),
            Err(e) => Err(e),
            Ok(()) => panic!("the scenario passed without a VF\n{}", g.transcript()),
        }
    });
    let (line, took) = result.unwrap_or_else(|e| fail(e));
    assert!(
        line.starts_with("GUEST SCENARIO vf FAIL: no igbvf device"),
        "{line}"
    );
    eprintln!(
        "the vf scenario reported the missing VF {:.1} s after QEMU started",
        took.as_secs_f64()
    );
}

/// A TCP listener at `addr` (port 0: any) inside namespace `ns`; the socket stays there.
fn listen_in(ns: &Netns, addr: &str) -> TcpListener {
    let addr = addr.to_string();
    in_netns(ns, move || {
        TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr} in the namespace: {e}"))
    })
}

#[test]
fn igbvf_on_a_nicd_vf_pings_the_uplink_and_sends_tcp() {
    let Some((image, nicd_bin)) = requirements() else {
        return;
    };
    let _one = serial();
    const BYTES: usize = 4 << 20;
    retry_emulator_failure(|| {
        let ns = Netns::new();
        let nicd = Nicd::start(&nicd_bin, &ns, 2);
        let listener = listen_in(&ns, &format!("{HOST_IP}:0"));
        let port = listener.local_addr().expect("local_addr").port();
        let received = tests::net::receive_tcp(listener, BYTES);
        let spec = vf_guest(&nicd, 0)
            .param("tcp_port", port)
            .param("tcp_bytes", BYTES);
        let mut g = QemuGuest::boot(&image, &spec).unwrap_or_else(|e| panic!("{e}"));
        expect_bring_up(&mut g, 0)?;
        let sending = g.wait_for("GUEST VF TCP SENDING ", STEP)?;
        let sent = g.wait_for("GUEST VF TCP SENT ", Duration::from_secs(180))?;
        let (n, sum) = received
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the listener got no connection\n{}", g.transcript()));
        let want = sending
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sha256="))
            .unwrap_or_default()
            .to_string();
        assert_eq!(n, BYTES, "bytes received ({sent})\n{}", g.transcript());
        assert_eq!(sum, want, "SHA-256 of what arrived\n{}", g.transcript());
        g.wait_pass(STEP)?;
        drop(g);
        nicd.stop();
        Ok(())
    })
    .unwrap_or_else(|e| fail(e));
}

#[test]
fn two_guests_ping_each_other_vf_to_vf_through_the_switch() {
    let Some((image, nicd_bin)) = requirements() else {
        return;
    };
    let _one = serial();
    retry_emulator_failure(|| {
        let ns = Netns::new();
        let nicd = Nicd::start(&nicd_bin, &ns, 2);
        let mut guests = Vec::new();
        for vf in 0..2u8 {
            let spec = vf_guest(&nicd, vf).param("vf_hold", 1);
            guests.push(QemuGuest::boot(&image, &spec).unwrap_or_else(|e| panic!("{e}")));
        }
        for (vf, g) in (0u8..).zip(guests.iter_mut()) {
            expect_bring_up(g, vf)?;
            g.wait_for("GUEST VF HOLD", STEP)?;
        }
        for (vf, g) in (0u8..).zip(guests.iter_mut()) {
            let other = guest_ip(1 - vf);
            g.send(&format!("ping {other}"))?;
            g.wait_for(&format!("GUEST VF PING {other} OK"), STEP)?;
        }
        for g in &mut guests {
            g.send("done")?;
            g.wait_pass(STEP)?;
        }
        drop(guests);
        nicd.stop();
        Ok(())
    })
    .unwrap_or_else(|e| fail(e));
}

/// The frames of a classic pcap file (LINKTYPE_ETHERNET), in order.
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "a pcap header");
    assert_eq!(
        &data[..4],
        &devices::nic_switch::PCAP_MAGIC.to_le_bytes(),
        "classic pcap, little endian"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let start = at + 16;
        assert!(start + incl <= data.len(), "a whole record");
        frames.push(data[start..start + incl].to_vec());
        at = start + incl;
    }
    frames
}

/// Sends `frame` out of `ifname` in `ns` through a raw packet socket (what a peer on the
/// wire sends; the host kernel here has no VLAN interfaces or bridges).
fn send_raw(ns: &Netns, ifname: &'static str, frame: Vec<u8>) {
    in_netns(ns, move || {
        let name = std::ffi::CString::new(ifname).expect("a name");
        // SAFETY: a NUL-terminated name; the result is checked.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        // SAFETY: constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
        addr.sll_ifindex = i32::try_from(ifindex).expect("an ifindex");
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the call's lengths; `fd` is ours.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
                    .expect("a small struct"),
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the socket this closure opened.
        unsafe { libc::close(fd) };
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    });
}

/// An ARP request for `target` from `sender` (10.99.0.1 at `mac`), tagged with `vid`.
fn tagged_arp_request(mac: [u8; 6], vid: u16, target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[10, 99, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(64, 0);
    f
}

/// A port VLAN as the guest and the wire see it: with `vf 0 set vlan 100 qos 3`, an ARP
/// request for the guest tagged with VLAN 100 reaches it (the switch strips the tag on
/// the way in) and its answer leaves on the uplink tagged with VID 100 and PCP 3 (in a
/// capture of the uplink), while an untagged request gets no answer.
fn port_vlan_tags_the_guest_on_the_uplink(ns: &Netns, nicd: &Nicd) {
    nicd.vmctl(&["vf", "0", "set", "vlan", "100", "qos", "3"]);
    let pcap = nicd.dir.join("uplink.pcap");
    nicd.vmctl(&["pcap", "uplink", &pcap.display().to_string()]);
    let peer = [0x02, 0x00, 0x00, 0x00, 0x99, 0x01];
    let guest: Vec<u8> = default_mac(0)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let target = [10, 99, 0, 2];
    let answers = |frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
        frames
            .iter()
            .filter(|f| f.len() >= 42 && f[6..12] == guest[..] && f[..6] == peer)
            .cloned()
            .collect()
    };
    // Untagged: the guest is in VLAN 100 only; no answer.
    let mut untagged = tagged_arp_request(peer, 100, target);
    untagged.drain(12..16);
    send_raw(ns, TAP, untagged);
    std::thread::sleep(Duration::from_secs(2));
    send_raw(ns, TAP, tagged_arp_request(peer, 100, target));
    // The guest answers within milliseconds; the emulator is slow: give it seconds.
    std::thread::sleep(Duration::from_secs(5));
    nicd.vmctl(&["pcap", "uplink", "stop"]);
    let all = pcap_frames(&pcap);
    let got = answers(&all);
    assert_eq!(
        got.len(),
        1,
        "one answer, to the tagged request only: {} frames captured",
        all.len()
    );
    let f = &got[0];
    assert_eq!(
        f[12..14],
        [0x81, 0x00],
        "tagged on the wire: {:02x?}",
        &f[..18]
    );
    let tci = u16::from_be_bytes([f[14], f[15]]);
    assert_eq!(tci & 0x0fff, 100, "VID 100");
    assert_eq!(tci >> 13, 3, "PCP 3 (qos)");
    assert_eq!(f[16..18], [0x08, 0x06], "an ARP reply inside");
    assert_eq!(f[24..26], [0, 2], "op: reply");
    nicd.vmctl(&["vf", "0", "set", "vlan", "0"]);
}

/// Spoof checking as the wire sees it: frames the guest sends from a MAC that is not its
/// VF's (raw frames, as a bridge or macvlan in the guest would send) are dropped and
/// counted on the VF's TX while spoofchk is on, and reach the uplink once it is off.
fn spoof_check_drops_and_counts(nicd: &Nicd, g: &mut QemuGuest) -> Result<(), GuestError> {
    let tx_dropped = || -> u64 {
        let out = nicd.vmctl(&["show", "-s", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("show's JSON");
        v["vfinfo_list"][0]["stats"]["tx"]["dropped"]
            .as_u64()
            .expect("tx dropped")
    };
    let before = tx_dropped();
    let pcap = nicd.dir.join("spoof.pcap");
    nicd.vmctl(&["pcap", "uplink", &pcap.display().to_string()]);
    let (spoofed, allowed) = ([0x02, 0, 0, 0, 0x66, 0x01], [0x02, 0, 0, 0, 0x66, 0x02]);
    let text = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    g.send(&format!("spoof {}", text(spoofed)))?;
    g.wait_for("GUEST VF SPOOF SENT", STEP)?;
    std::thread::sleep(Duration::from_secs(2));
    nicd.vmctl(&["vf", "0", "set", "spoofchk", "off"]);
    g.send(&format!("spoof {}", text(allowed)))?;
    g.wait_for("GUEST VF SPOOF SENT", STEP)?;
    std::thread::sleep(Duration::from_secs(3));
    nicd.vmctl(&["pcap", "uplink", "stop"]);
    nicd.vmctl(&["vf", "0", "set", "spoofchk", "on"]);
    let frames = pcap_frames(&pcap);
    let from = |m: [u8; 6]| {
        frames
            .iter()
            .filter(|f| f.len() >= 12 && f[6..12] == m)
            .count()
    };
    assert_eq!(from(spoofed), 0, "spoofed frames reached the uplink");
    assert_eq!(from(allowed), 3, "with spoofchk off the same frames pass");
    let dropped = tx_dropped() - before;
    assert!(
        dropped >= 3,
        "the spoofed frames count as TX drops ({dropped})"
    );
    Ok(())
}

#[test]
fn vf_state_port_vlan_and_spoof_check_as_the_guest_and_the_wire_see_them() {
    let Some((image, nicd_bin)) = requirements() else {
        return;
    };
    let _one = serial();
    retry_emulator_failure(|| {
        let ns = Netns::new();
        let nicd = Nicd::start(&nicd_bin, &ns, 1);
        let spec = vf_guest(&nicd, 0).param("vf_hold", 1);
        let mut g = QemuGuest::boot(&image, &spec).unwrap_or_else(|e| panic!("{e}"));
        expect_bring_up(&mut g, 0)?;
        g.wait_for("GUEST VF HOLD", STEP)?;
        nicd.vmctl(&["vf", "0", "set", "state", "disable"]);
        g.send("carrier down")?;
        g.wait_for("GUEST VF CARRIER DOWN", STEP)?;
        nicd.vmctl(&["vf", "0", "set", "state", "enable"]);
        g.send("carrier up")?;
        g.wait_for("GUEST VF CARRIER UP", STEP)?;
        g.send(&format!("ping {HOST_IP}"))?;
        g.wait_for(&format!("GUEST VF PING {HOST_IP} OK"), STEP)?;
        port_vlan_tags_the_guest_on_the_uplink(&ns, &nicd);
        spoof_check_drops_and_counts(&nicd, &mut g)?;
        g.send("done")?;
        g.wait_pass(STEP)?;
        drop(g);
        nicd.stop();
        Ok(())
    })
    .unwrap_or_else(|e| fail(e));
}

/// Runs `f` on a thread inside namespace `ns` (setns affects only the calling thread).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace fd held open for the call; it changes only this
        // thread's network namespace, and the thread ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread")
}

/// The test's own plumbing, without QEMU or nicd: the listener lives in the namespace
/// (unreachable from the host's), and receives and hashes what a client there sends.
#[test]
fn namespace_listener_receives_and_hashes() {
    if !tests::require_net_admin() {
        return;
    }
    let ns = Netns::new();
    let listener = listen_in(&ns, "127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is reachable from the host's namespace"
    );
    let received = tests::net::receive_tcp(listener, 3);
    in_netns(&ns, move || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"abcdef").expect("send");
    });
    let (n, sum) = received
        .recv_timeout(Duration::from_secs(20))
        .expect("a result");
    assert_eq!(n, 3, "only the bytes asked for");
    // sha256("abc")
    assert_eq!(
        sum,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
