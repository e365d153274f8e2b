//! nicd end to end, without KVM: the real binary, a seqpacket uplink whose other end the
//! test holds, and vfio-user clients that play QEMU's bring-up and igbvf's register
//! sequences (tests/src/vfio_client.rs).

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use devices::sriov::igbvf::driver::VfDriver;
use devices::sriov::igbvf::regs::{STATUS, STATUS_LU};
use devices::vfio_user::region;
use tests::nicd::{Nicd, nic_vmctl as vmctl};
use tests::vfio_client::{IgbvfDriver, VfioClient, eventfd_take, frame, memfd, wait_for};
use tests::{nicd_binary, temp_path};

const WAIT: Duration = Duration::from_secs(10);
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn mac(k: u8) -> [u8; 6] {
    tests::nicd::vf_mac(k)
}

#[test]
fn bring_up_then_tx_to_the_uplink_and_rx_from_it() {
    let nicd = Nicd::start(2);
    let mut c = VfioClient::connect(&nicd.vf(0)).unwrap();
    let (regions, irqs) = c.bring_up();
    assert!(regions.len() >= 8, "{regions:?}");
    assert_eq!(regions[0], 0x4000, "BAR0");
    assert_eq!(regions[3], 0x4000, "BAR3: MSI-X");
    assert_eq!(regions[7], 4096, "config space");
    assert!(irqs.len() >= 3, "{irqs:?}");
    assert_eq!(irqs[2], 3, "MSI-X vectors");
    // The config space as vfio-pci presents the VF.
    assert_eq!(c.read32(region::CONFIG, 0), 0x10ca_8086);
    assert_eq!(c.read32(region::CONFIG, 8) >> 8, 0x02_0000);
    assert_eq!(
        c.read32(region::CONFIG, 0x10) & 0xf,
        0xc,
        "BAR0: 64-bit memory"
    );
    c.write32(region::CONFIG, 0x10, 0xffff_ffff);
    assert_eq!(c.read32(region::CONFIG, 0x10), 0xffff_c00c, "BAR0 sizing");
    // A VF has no Memory Space bit; vfio-pci virtualizes it, and QEMU maps the BARs only
    // when it reads back set.
    assert_eq!(c.read32(region::CONFIG, 4) & 0x6, 0);
    c.write32(region::CONFIG, 4, 0x6);
    assert_eq!(
        c.read32(region::CONFIG, 4) & 0x6,
        0x6,
        "Memory Space, Bus Master"
    );
    drop(c);

    let mut d = IgbvfDriver::attach(&nicd.vf(0));
    assert_eq!(d.up(), mac(0), "RESET reply carries the admin MAC");
    assert_ne!(d.rd(STATUS) & STATUS_LU, 0, "link up");

    let out = frame(PEER, mac(0), 60);
    d.send(&out);
    assert_eq!(
        nicd.uplink_recv().as_deref(),
        Some(&out[..]),
        "TX reaches the uplink"
    );
    assert!(
        wait_for(WAIT, || eventfd_take(&d.irqs[0]) > 0),
        "TX interrupt"
    );

    let inbound = frame(mac(0), PEER, 128);
    nicd.uplink().send(&inbound).unwrap();
    let mut got = None;
    assert!(wait_for(WAIT, || {
        got = d.poll_rx();
        got.is_some()
    }));
    assert_eq!(got.unwrap(), inbound, "RX written into the ring with DD");
    assert!(
        wait_for(WAIT, || eventfd_take(&d.irqs[1]) > 0),
        "RX interrupt"
    );
    // A frame for nobody's MAC is not delivered.
    nicd.uplink().send(&frame(PEER, PEER, 64)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(d.poll_rx().is_none());
    drop(d);
    assert_eq!(nicd.stop(), 0, "SIGTERM: clean exit");
}

#[test]
fn a_second_client_is_refused_and_a_new_one_takes_over_after_disconnect() {
    let nicd = Nicd::start(1);
    let mut first = IgbvfDriver::attach(&nicd.vf(0));
    first.up();
    let mut second = VfioClient::connect(&nicd.vf(0)).unwrap();
    match second.version() {
        Err(devices::vfio_user::ClientError::Refused { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
        }
        other => panic!("second client got {other:?}"),
    }
    // The first client is unaffected.
    assert_eq!(first.rd(STATUS) & STATUS_LU, STATUS_LU);
    drop(first);
    // After a disconnect the VF is reset and serves a new client from scratch.
    let mut third = None;
    assert!(wait_for(WAIT, || {
        let mut c = VfioClient::connect(&nicd.vf(0)).unwrap();
        let ok = c.version().is_ok();
        third = Some(c);
        ok
    }));
    drop(third);
    let mut again = IgbvfDriver::attach(&nicd.vf(0));
    assert_eq!(again.up(), mac(0));
    assert_eq!(nicd.stop(), 0);
}

#[test]
fn vf_to_vf_stays_inside_the_adapter() {
    let nicd = Nicd::start(2);
    let mut a = IgbvfDriver::attach(&nicd.vf(0));
    let mut b = IgbvfDriver::attach(&nicd.vf(1));
    a.up();
    b.up();
    let f = frame(mac(1), mac(0), 100);
    a.send(&f);
    let mut got = None;
    assert!(wait_for(WAIT, || {
        got = b.poll_rx();
        got.is_some()
    }));
    assert_eq!(got.unwrap(), f);
    // Not on the wire.
    let mut buf = [0u8; 2048];
    assert!(nicd.uplink().recv(&mut buf).is_err());
    // Spoofed source: not delivered (the count of such drops is checked by the switch's
    // unit tests and, with Linux's igbvf, by nicd_qemu.rs).
    a.send(&frame(mac(1), PEER, 100));
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.poll_rx().is_none());
    // `show --json` answers with the VF list.
    let (code, out, _) = nicd.vmctl(&["show", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["vfinfo_list"][0]["vf"], 0);
    assert_eq!(nicd.stop(), 0);
}

#[test]
fn management_reaches_the_vf_and_shows_like_ip_link() {
    let nicd = Nicd::start(2);
    let mut d = IgbvfDriver::attach(&nicd.vf(0));
    d.up();
    d.send(&frame(PEER, mac(0), 60));
    assert!(nicd.uplink_recv().is_some());
    assert_eq!(d.rd(STATUS) & STATUS_LU, STATUS_LU);
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "state", "disable"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.rd(STATUS) & STATUS_LU, 0, "STATUS.LU clear");
    assert!(
        wait_for(WAIT, || eventfd_take(&d.irqs[2]) > 0),
        "mailbox interrupt (link ping)"
    );
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "state", "auto"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.rd(STATUS) & STATUS_LU, STATUS_LU);

    let (code, out, _) = nicd.vmctl(&["show", "-s"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert_eq!(
        lines[0],
        "    vf 0     link/ether 52:54:00:5a:00:01 brd ff:ff:ff:ff:ff:ff, spoof checking on, link-state auto, trust off"
    );
    assert!(
        lines[1].trim_start().starts_with("RX: bytes  packets"),
        "{out}"
    );
    assert!(
        lines[3].trim_start().starts_with("TX: bytes  packets"),
        "{out}"
    );
    let tx: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(tx[..2], ["60", "1"], "one 60-byte frame sent: {out}");
    assert!(lines[5].contains("vf 1") && lines[5].contains("52:54:00:5a:00:02"));

    let (code, _, err) = nicd.vmctl(&["numvfs", "9"]);
    assert_eq!(code, 1);
    assert!(err.contains("Numerical result out of range"), "{err}");
    let (code, _, err) = nicd.vmctl(&["numvfs", "3"]);
    assert_eq!(code, 1);
    assert!(err.contains("Device or resource busy"), "{err}");
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "vlan", "4096"]);
    assert_eq!(code, 1);
    assert!(err.contains("Invalid argument"), "{err}");

    let (code, _, err) = nicd.vmctl(&["numvfs", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("VF 0 is in use"), "{err}");

    let (code, out, _) = nicd.vmctl(&["lspci"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("-[0000:00]-+-00.0"), "{out}");
    assert!(out.contains("10.0") && out.contains("RID 0x0080"), "{out}");
    assert!(out.contains("\\-10.2"), "{out}");

    let pcap = nicd.dir.join("vf0.pcap");
    let (code, _, err) = nicd.vmctl(&["pcap", "vf0", pcap.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    d.send(&frame(PEER, mac(0), 60));
    assert!(nicd.uplink_recv().is_some());
    let (code, out, _) = nicd.vmctl(&["pcap", "vf0", "stop"]);
    assert_eq!((code, out.trim()), (0, "1 frames captured"));
    let bytes = std::fs::read(&pcap).unwrap();
    assert_eq!(
        bytes.len(),
        24 + 16 + 60,
        "pcap header, record header, frame"
    );
    assert_eq!(nicd.stop(), 0);
}

#[test]
fn numvfs_disables_and_enables_vfs_and_their_sockets() {
    let nicd = Nicd::start(2);
    let api = nicd.api.clone();
    // Two requests in one write: the sockets of the new VFs must survive the old ones.
    let mut c = vmm::api::Client::connect(&api, WAIT).unwrap();
    let mut w = std::os::unix::net::UnixStream::connect(&api).unwrap();
    std::io::Write::write_all(
        &mut w,
        b"{\"action\":\"numvfs\",\"numvfs\":0}\n{\"action\":\"numvfs\",\"numvfs\":3}\n",
    )
    .unwrap();
    let mut r = BufReader::new(w);
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
    let answer: vmm::nicd::api::NicResponse = c.call(&vmm::nicd::api::NicRequest::Lspci).unwrap();
    assert!(answer.text.unwrap().contains("VF 2, RID 0x0084"));
    for k in 0..3 {
        assert!(nicd.vf(k).exists(), "vf{k}.sock");
    }
    let mut d = IgbvfDriver::attach(&nicd.vf(2));
    assert_eq!(d.up(), mac(2));
    assert_eq!(nicd.stop(), 0);
}

#[test]
fn bad_input_exits_2() {
    let dir = temp_path("nicd-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let api = dir.join("api.sock");
    let a = api.to_str().unwrap();
    for args in [
        vec![
            "--vfs",
            "9",
            "--uplink",
            "none",
            "--socket-dir",
            d,
            "--api-socket",
            a,
        ],
        vec![
            "--vfs",
            "1",
            "--uplink",
            "bogus",
            "--socket-dir",
            d,
            "--api-socket",
            a,
        ],
        vec![
            "--vfs",
            "1",
            "--uplink",
            "none",
            "--socket-dir",
            "/nonexistent",
            "--api-socket",
            a,
        ],
        vec![
            "--vfs",
            "1",
            "--uplink",
            "none",
            "--socket-dir",
            d,
            "--api-socket",
            a,
            "--total-vfs",
            "256",
        ],
        vec!["--vfs", "x"],
    ] {
        let out = Command::new(nicd_binary()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for args in [
        vec!["vf", "0", "set", "vlan", "abc"],
        vec!["vf", "0", "set", "spoofchk", "maybe"],
        vec!["vf", "0", "set", "colour", "red"],
        vec!["vf", "0", "set", "mac"],
        vec!["pcap", "eth0", "x.pcap"],
        vec!["frobnicate"],
    ] {
        let (code, _, err) = vmctl(&api, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// max_tx_rate holds frames in the VF's ring (nothing dropped for rate) and sends every one
/// in time, the last of the ring too: no later frame exists to retry it, only the timer.
#[test]
fn max_tx_rate_paces_a_burst_and_sends_every_frame() {
    let nicd = Nicd::start(1);
    let (code, _, err) = nicd.vmctl(&["vf", "0", "set", "max_tx_rate", "1"]);
    assert_eq!(code, 0, "{err}");
    let mut d = IgbvfDriver(VfDriver::attach(&nicd.vf(0), 64).unwrap());
    d.up();
    let frames: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut f = frame(PEER, mac(0), 1400);
            f[20] = i;
            f
        })
        .collect();
    for f in &frames {
        assert!(d.queue_tx(f).unwrap(), "room in the ring");
    }
    // One TDT write for the whole burst: 56 kB at 1 Mbit/s less the bucket's 19 kB of
    // burst is about 0.3 s.
    d.kick_tx().unwrap();
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < frames.len() {
        match nicd.uplink_recv() {
            Some(f) => got.push(f),
            None => break,
        }
    }
    let span = start.elapsed();
    let order = |fs: &[Vec<u8>]| fs.iter().map(|f| f[20]).collect::<Vec<u8>>();
    assert_eq!(
        order(&got),
        order(&frames),
        "every frame, in order, none dropped for rate"
    );
    assert!(got == frames, "the frames' bytes unchanged");
    assert!(span >= Duration::from_millis(150), "paced: {span:?}");
    let (_, out, _) = nicd.vmctl(&["show", "-s"]);
    assert!(out.contains("max_tx_rate 1Mbps"), "{out}");
    assert_eq!(nicd.stop(), 0);
}

/// A client that maps guest memory page by page (Linux behind an IOMMU maps each buffer)
/// sends the same memfd with every DMA_MAP: nicd keeps one descriptor for the file, not one
/// per mapping, and closes it when the last mapping goes.
#[test]
fn page_by_page_dma_maps_share_one_descriptor() {
    let nicd = Nicd::start(1);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", nicd.pid()))
            .unwrap()
            .count()
    };
    let mut c = VfioClient::connect(&nicd.vf(0)).unwrap();
    c.bring_up();
    let ram = memfd(4 << 20).unwrap();
    let before = fds();
    let pages = 512u64;
    for p in 0..pages {
        c.0.dma_map(&ram, p * 4096, 0x1000_0000 + p * 8192, 4096)
            .unwrap_or_else(|e| panic!("DMA_MAP {p}: {}", vmm::error_chain(&e)));
    }
    let mapped = fds();
    assert!(
        mapped <= before + 2,
        "{pages} mappings of one file took {} descriptors",
        mapped - before
    );
    for p in 0..pages {
        c.0.dma_unmap(0x1000_0000 + p * 8192, 4096).unwrap();
    }
    assert!(
        fds() <= before,
        "the file's descriptor is closed with its last mapping"
    );
    assert_eq!(nicd.stop(), 0);
}

/// An uplink peer that stops reading does not make nicd drop a VF's frames: they wait in
/// nicd's uplink backlog, then in the VF's ring (its TX walk stops, as behind a busy
/// wire), and every frame arrives, in order, once the peer reads again.
#[test]
fn a_slow_uplink_peer_holds_vf_frames_back_instead_of_dropping_them() {
    let nicd = Nicd::start(1);
    let mut d = IgbvfDriver(VfDriver::attach(&nicd.vf(0), 256).unwrap());
    d.up();
    let total: u32 = 4000;
    let make = |seq: u32| {
        let mut f = frame(PEER, mac(0), 1000);
        f[20..24].copy_from_slice(&seq.to_be_bytes());
        f
    };
    // The peer does not read: push until the VF's ring stops moving.
    let mut sent = 0u32;
    let mut stalled_rounds = 0;
    while sent < total && stalled_rounds < 20 {
        let before = sent;
        while sent < total && d.0.queue_tx(&make(sent)).unwrap() {
            sent += 1;
        }
        d.0.kick_tx().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        d.0.reclaim_tx().unwrap();
        stalled_rounds = if sent == before {
            stalled_rounds + 1
        } else {
            0
        };
    }
    assert!(
        sent < total,
        "the socket and nicd's backlog cannot have taken all {total} frames"
    );
    // Now it reads: everything comes, the rest of the burst too.
    let mut got = 0u32;
    while got < total {
        while sent < total && d.0.queue_tx(&make(sent)).unwrap() {
            sent += 1;
        }
        d.0.kick_tx().unwrap();
        let Some(f) = nicd.uplink_recv() else { break };
        let seq = u32::from_be_bytes([f[20], f[21], f[22], f[23]]);
        assert_eq!(seq, got, "in order, none missing");
        got += 1;
        d.0.reclaim_tx().unwrap();
    }
    assert_eq!(got, total, "every frame arrived");
    let (_, out, _) = nicd.vmctl(&["show", "-s", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["vfinfo_list"][0]["stats"]["tx"]["dropped"], 0, "{out}");
    assert_eq!(nicd.stop(), 0);
}

/// Every VF in use takes descriptors (socket, client, eventfds, DMA maps): nicd lifts a low
/// soft open-file limit for its TotalVFs by itself, and 32 VFs come up under a soft limit
/// of 64.
#[test]
fn nicd_lifts_a_low_open_file_limit_for_its_vfs() {
    let nicd = Nicd::start_with(32, &["--total-vfs", "32"], Some(64));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", nicd.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .expect("the soft limit");
    assert!(soft >= 320, "soft open-file limit {soft}\n{limits}");
    let mut drivers: Vec<IgbvfDriver> = (0..32).map(|k| IgbvfDriver::attach(&nicd.vf(k))).collect();
    for (k, d) in (0u8..).zip(&mut drivers) {
        assert_eq!(d.up(), mac(k));
    }
    drop(drivers);
    assert_eq!(nicd.stop(), 0);
}

/// A client that sends requests and stops reading its replies stalls its own VF only:
/// nicd keeps the replies it owes, stops serving that client until it reads, and serves
/// every other VF meanwhile; the replies then arrive whole and in order.
#[test]
fn a_client_that_stops_reading_stalls_only_its_own_vf() {
    use devices::vfio_user::{Reply, Request};
    let nicd = Nicd::start(2);
    let mut stalled = VfioClient::connect(&nicd.vf(0)).unwrap();
    stalled.version().unwrap();
    // 100 reads of BAR0's 16 KiB: 1.6 MB of replies, far beyond the socket's buffers (and
    // few enough requests that they fit in ours while nicd does not read them).
    let read = Request::RegionRead(devices::vfio_user::RegionRead {
        offset: 0,
        region: region::BAR0,
        count: 0x4000,
    });
    let ids: Vec<u16> = (0..100)
        .map(|_| stalled.0.send_request(&read).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // The other VF is served at once, end to end.
    let start = std::time::Instant::now();
    let mut d = IgbvfDriver::attach(&nicd.vf(1));
    assert_eq!(d.up(), mac(1));
    d.send(&frame(PEER, mac(1), 60));
    assert!(nicd.uplink_recv().is_some());
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "VF 1 waited {took:?} behind VF 0's client"
    );

    // The stalled client reads: every reply, whole and in order.
    for want in ids {
        let (id, reply) = stalled.0.recv_reply().unwrap();
        assert_eq!(id, want);
        assert!(
            matches!(&reply, Reply::RegionRead(r) if r.data.len() == 0x4000),
            "reply {id}"
        );
    }
    assert_eq!(nicd.stop(), 0);
}

/// min_tx_rate is a share of the uplink's wire when VFs contend for it: on a 100 Mbit/s
/// uplink, VF 1 with min_tx_rate 80 and VF 0 with 10, both sending as fast as their
/// rings allow, VF 1 gets several times VF 0's frames (8:1 by the guarantees; without
/// arbitration the lower VF number would win every time the wire frees).
#[test]
fn min_tx_rate_shares_a_contended_uplink() {
    let nicd = Nicd::start_with(2, &["--uplink-mbps", "100"], None);
    for (vf, rate) in [("0", "10"), ("1", "80")] {
        let (code, _, err) = nicd.vmctl(&["vf", vf, "set", "min_tx_rate", rate]);
        assert_eq!(code, 0, "{err}");
    }
    let mut drivers: Vec<VfDriver> = (0..2)
        .map(|k| {
            let mut d = VfDriver::attach(&nicd.vf(k), 128).unwrap();
            d.up().unwrap();
            d
        })
        .collect();
    let frames: Vec<Vec<u8>> = (0..2u8).map(|k| frame(PEER, mac(k), 1400)).collect();
    let up = nicd.uplink();
    let mut got = [0u64; 2];
    let mut buf = vec![0u8; 16384];
    let start = std::time::Instant::now();
    // 100 Mbit/s is ~8,900 frames of 1400 bytes a second: 0.6 s is ~5,000 frames.
    while start.elapsed() < Duration::from_millis(600) {
        for (d, f) in drivers.iter_mut().zip(&frames) {
            d.reclaim_tx().unwrap();
            let mut queued = false;
            while d.queue_tx(f).unwrap() {
                queued = true;
            }
            if queued {
                d.kick_tx().unwrap();
            }
        }
        while let Ok(n) = up.recv(&mut buf) {
            if n >= 12 {
                for (k, c) in got.iter_mut().enumerate() {
                    if buf[6..12] == mac(u8::try_from(k).unwrap()) {
                        *c += 1;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("frames on the uplink by VF (min_tx_rate 10, 80): {got:?}");
    let [vf0, vf1] = got;
    assert!(vf0 + vf1 > 1000, "the wire was busy: {got:?}");
    assert!(vf0 > 0, "VF 0 keeps its guarantee: {got:?}");
    assert!(vf1 > 3 * vf0, "VF 1 gets its larger share: {got:?}");
    drop(drivers);
    assert_eq!(nicd.stop(), 0);
}
