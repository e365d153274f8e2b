//! Packet capture: the pcap bytes, what each port's capture sees, and tcpdump reading
//! a capture back.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;

/// A `Write` whose bytes the test can read after the switch let go of it.
#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::sync::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn bytes(&self) -> Vec<u8> {
        crate::sync::lock(&self.0).clone()
    }
}

/// The records of a pcap stream: (ts_sec, ts_usec, incl_len, orig_len, data).
fn records(pcap: &[u8]) -> Vec<(u32, u32, u32, u32, Vec<u8>)> {
    let u32_at = |i: usize| u32::from_ne_bytes(pcap[i..i + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 24;
    while at < pcap.len() {
        let incl = u32_at(at + 8);
        let data = pcap[at + 16..at + 16 + incl as usize].to_vec();
        out.push((u32_at(at), u32_at(at + 4), incl, u32_at(at + 12), data));
        at += 16 + incl as usize;
    }
    out
}

#[test]
fn the_global_header_is_classic_pcap() {
    let w = PcapWriter::new(Vec::new()).unwrap();
    let b = w.finish().unwrap();
    assert_eq!(b.len(), 24);
    let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_ne_bytes(b[i..i + 2].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4);
    assert_eq!((u16_at(4), u16_at(6)), (2, 4));
    assert_eq!((u32_at(8), u32_at(12)), (0, 0));
    assert_eq!(u32_at(16), 65535);
    assert_eq!(u32_at(20), 1);
}

#[test]
fn records_carry_the_given_time_and_lengths() {
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    w.write_frame(Duration::new(1_700_000_000, 123_456_789), &[1, 2, 3])
        .unwrap();
    let big = vec![0xaa; 70_000];
    w.write_frame(Duration::from_secs(5), &big).unwrap();
    let b = w.finish().unwrap();
    let recs = records(&b);
    assert_eq!(recs[0], (1_700_000_000, 123_456, 3, 3, vec![1, 2, 3]));
    // Longer than the snaplen: cut, the original length kept.
    assert_eq!((recs[1].2, recs[1].3), (65535, 70_000));
}

#[test]
fn each_port_captures_what_it_sees() {
    let mut sw = switch(2);
    sw.set_vf_vlan(0, 100, 2, VlanProto::Dot1Q).unwrap();
    let (vf0, up, def) = (Shared::default(), Shared::default(), Shared::default());
    let epoch = Duration::from_secs(1_000_000);
    sw.start_capture(PortId::Vf(0), Box::new(vf0.clone()), epoch)
        .unwrap();
    sw.start_capture(PortId::Uplink, Box::new(up.clone()), epoch)
        .unwrap();
    sw.start_capture(PortId::Default, Box::new(def.clone()), epoch)
        .unwrap();
    assert_eq!(
        sw.start_capture(PortId::Uplink, Box::new(Vec::new()), epoch)
            .unwrap_err()
            .errno(),
        libc::EBUSY
    );
    let mut sink = Sink::default();
    let out = eth(HOST, vf_mac(0), None, 64, 1);
    sw.vf_send(at_us(10), 0, &out, &mut sink);
    sw.from_uplink(
        at_us(20),
        &eth(vf_mac(0), HOST, Some((100, 0)), 68, 2),
        &mut sink,
    );
    // Dropped frames are not captured.
    sw.vf_send(at_us(30), 0, &eth(HOST, mac(0x66), None, 64, 3), &mut sink);
    // Neither are frames of other ports.
    sw.vf_send(
        at_us(40),
        1,
        &eth(vf_mac(0), vf_mac(1), None, 64, 4),
        &mut sink,
    );

    let (_, n) = sw.stop_capture(PortId::Vf(0)).unwrap();
    assert_eq!(n, 2);
    let recs = records(&vf0.bytes());
    // The VF's side: untagged both ways.
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].0, recs[0].1), (1_000_000, 10));
    assert_eq!(recs[0].4, out);
    assert_eq!((tag_of(&recs[1].4), seq_of(&recs[1].4)), (None, 2));
    // The wire's side: tagged both ways.
    let recs = records(&up.bytes());
    assert_eq!(recs.len(), 3, "VF 0 out, VF 0 in, VF 1 out");
    assert_eq!(tag_of(&recs[0].4), Some((100, 2)));
    assert_eq!(tag_of(&recs[1].4), Some((100, 0)));
    assert_eq!(
        sw.stop_capture(PortId::Vf(0)).err().unwrap().errno(),
        libc::ENOENT
    );
    let (_, n) = sw.stop_capture(PortId::Default).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_failing_writer_stops_only_the_capture() {
    #[derive(Debug)]
    struct Full(usize);
    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sw = switch(2);
    sw.start_capture(PortId::Vf(1), Box::new(Full(24 + 16 + 64)), Duration::ZERO)
        .unwrap();
    let mut sink = Sink::default();
    for i in 0..3 {
        vf_tx(
            &mut sw,
            &mut sink,
            0,
            &eth(vf_mac(1), vf_mac(0), None, 64, i),
        );
    }
    assert_eq!(sink.frames.len(), 3);
    let e = sw.stop_capture(PortId::Vf(1)).err().unwrap();
    assert!(matches!(
        e,
        NicSwitchError::Capture {
            port: PortId::Vf(1),
            ..
        }
    ));
    assert_eq!(e.errno(), libc::EIO);
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn tcpdump_reads_a_capture() {
    let dir = std::env::temp_dir().join(format!("nic-switch-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("uplink.pcap");
    let mut sw = switch(2);
    sw.set_vf_vlan(1, 42, 5, VlanProto::Dot1Q).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    sw.start_capture(
        PortId::Uplink,
        Box::new(std::io::BufWriter::new(file)),
        Duration::from_secs(1_700_000_000),
    )
    .unwrap();
    let mut sink = Sink::default();
    for i in 0..7u32 {
        let vf = (i % 2) as u16;
        vf_tx(
            &mut sw,
            &mut sink,
            vf,
            &eth(HOST, vf_mac(vf), None, 60 + i as usize, i),
        );
    }
    sw.from_uplink(
        at_us(5),
        &eth(MacAddr::BROADCAST, HOST, None, 60, 9),
        &mut sink,
    );
    let (_, frames) = sw.stop_capture(PortId::Uplink).unwrap();
    assert_eq!(frames, 8);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, 24 + 8 * 16 + (60..67).sum::<u64>() + 3 * 4 + 60);

    let out = match std::process::Command::new("tcpdump")
        .args(["-r"])
        .arg(&path)
        .args(["-n", "-e"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIP: tcpdump not installed");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        Err(e) => panic!("tcpdump: {e}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tcpdump failed: {stderr}");
    assert!(stderr.contains("link-type EN10MB (Ethernet)"), "{stderr}");
    assert_eq!(stdout.lines().count(), 8, "{stdout}");
    // VF 1's frames carry its port VLAN as tcpdump decodes it.
    assert_eq!(stdout.matches("vlan 42, p 5").count(), 3, "{stdout}");
}
