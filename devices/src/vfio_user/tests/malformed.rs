//! Malformed and hostile input: each gets a clean error (or error reply), and when the
//! message was consumed whole the connection goes on.

use std::io::Write;
use std::os::fd::AsFd;

use super::client::{Client, call, connected, errno};
use super::codec::{qemu_dma_map, qemu_region_read, qemu_set_irqs_eventfd};
use crate::vfio_user::toy::{Toy, all_writers_closed, eventfd, memfd, pipe};
use crate::vfio_user::*;

fn hdr(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
    Header {
        id,
        command,
        size,
        flags,
        error: 0,
    }
    .to_bytes()
    .to_vec()
}

/// The connection still works: a DEVICE_GET_INFO gets its reply.
fn still_usable(client: &mut Client, server: &mut Server<Toy>, s: &Socket) {
    let r = call(client, server, s, &Request::DeviceGetInfo { argsz: 16 });
    assert!(matches!(r, Reply::DeviceGetInfo(_)), "{r:?}");
}

#[test]
fn short_header_then_close_is_a_truncated_message() {
    let (c, s) = Socket::pair().unwrap();
    let mut server = Server::new(Toy::new());
    c.stream().write_all(&hdr(1, 4, 32, 0)[..10]).unwrap();
    drop(c);
    let e = server.serve_one(&s).unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::Recv(SocketError::Truncated { got: 10, want: 16 })
        ),
        "{e:?}"
    );
}

#[test]
fn size_smaller_than_header_fails_the_connection() {
    let (client, mut server, s) = connected();
    client.send_raw(&hdr(1, 4, 8, 0), &[]);
    let e = server.serve_one(&s).unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::Recv(SocketError::SizeBelowHeader { size: 8 })
        ),
        "{e:?}"
    );
}

#[test]
fn huge_size_is_refused_before_allocating() {
    let (client, mut server, s) = connected();
    client.send_raw(&hdr(1, 10, u32::MAX, 0), &[]);
    let e = server.serve_one(&s).unwrap_err();
    match e {
        ServerError::Recv(ref se @ SocketError::TooLarge { size, limit }) => {
            assert_eq!(size, u32::MAX);
            assert_eq!(limit, server.limits().max_msg_size);
            assert!(se.is_fatal());
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn size_lying_about_the_payload() {
    let (mut client, mut server, s) = connected();
    // DEVICE_GET_INFO whose size covers 8 payload bytes instead of 16: EINVAL, and the
    // next message is read from the right place.
    let mut m = hdr(5, cmd::DEVICE_GET_INFO, 24, 0);
    m.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0]);
    client.send_raw(&m, &[]);
    server.serve_one(&s).unwrap();
    let (h, r) = client.recv();
    assert_eq!((h.id, errno(&r)), (5, libc::EINVAL));
    still_usable(&mut client, &mut server, &s);

    // DMA_MAP with 8 bytes too many: EINVAL (fixed structs must match exactly).
    let mut m = qemu_dma_map(6, 0, 0, 0x1000, true);
    m[4..8].copy_from_slice(&56u32.to_le_bytes());
    m.extend_from_slice(&[0; 8]);
    let mem = memfd(0x1000);
    client.send_raw(&m, &[mem.as_fd()]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::EINVAL);
    assert!(server.device().dma.is_empty());

    // REGION_WRITE whose count says 8 but carries 4 bytes.
    let mut m = hdr(7, cmd::REGION_WRITE, 16 + 16 + 4, 0);
    m.extend_from_slice(&0x10u64.to_le_bytes());
    m.extend_from_slice(&7u32.to_le_bytes());
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&[1, 2, 3, 4]);
    client.send_raw(&m, &[]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::EINVAL);
    still_usable(&mut client, &mut server, &s);

    // A size larger than what is sent, then the peer goes: truncated.
    let mut m = hdr(8, cmd::DEVICE_GET_INFO, 32, 0);
    m.extend_from_slice(&[16, 0, 0, 0]);
    client.send_raw(&m, &[]);
    drop(client);
    let e = server.serve_one(&s).unwrap_err();
    assert!(
        matches!(
            e,
            ServerError::Recv(SocketError::Truncated { got: 20, want: 32 })
        ),
        "{e:?}"
    );
}

#[test]
fn too_many_fds_get_einval_and_none_leaks() {
    let (mut client, mut server, s) = connected();
    let (reader, writer) = pipe();
    // 17 copies of the pipe's write end, one more than max_msg_fds.
    let copies: Vec<_> = (0..17).map(|_| writer.try_clone().unwrap()).collect();
    let fds: Vec<_> = copies.iter().map(|f| f.as_fd()).collect();
    client.send_raw(&qemu_set_irqs_eventfd(9, irq::MSIX, 0, 17), &fds);
    server.serve_one(&s).unwrap();
    let (h, r) = client.recv();
    assert_eq!((h.id, errno(&r)), (9, libc::EINVAL));
    // DMA_MAP with two fds: the codec allows one.
    client.send_raw(&qemu_dma_map(10, 0, 0, 0x1000, true), &fds[..2]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::EINVAL);
    // SET_IRQS with an fd count that is neither 0 nor count.
    client.send_raw(&qemu_set_irqs_eventfd(11, irq::MSIX, 0, 3), &fds[..2]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::EINVAL);
    // fds on a command that takes none.
    let m = super::codec::qemu_region_info(12, 7, 32);
    client.send_raw(&m, &fds[..1]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::EINVAL);
    still_usable(&mut client, &mut server, &s);
    drop(fds);
    drop((copies, writer));
    assert!(
        all_writers_closed(&reader),
        "the server kept none of the refused fds"
    );
    assert!(server.device().msix.iter().all(Option::is_none));
}

#[test]
fn socket_refuses_a_message_with_too_many_fds_and_reads_on() {
    let (a, b) = Socket::pair().unwrap();
    let limits = Limits {
        max_msg_size: 4096,
        max_fds: 2,
    };
    let (reader, writer) = pipe();
    let fds = [writer.as_fd(), writer.as_fd(), writer.as_fd()];
    let first = Request::DeviceReset.encode(1, false);
    a.send_message(&first.bytes, &fds).unwrap();
    let second = Request::DeviceReset.encode(2, false);
    a.send_message(&second.bytes, &fds[..2]).unwrap();
    match b.recv_message(&limits) {
        Err(e @ SocketError::TooManyFds { header, limit: 2 }) => {
            assert_eq!(header.id, 1);
            assert!(!e.is_fatal());
        }
        other => panic!("{other:?}"),
    }
    let m = b.recv_message(&limits).unwrap();
    assert_eq!((m.header.id, m.fds.len()), (2, 2));
    drop(m);
    drop(writer);
    assert!(all_writers_closed(&reader), "no received fd kept");
}

#[test]
fn no_reply_flag_on_a_command_that_needs_a_reply_is_dropped() {
    let (mut client, mut server, s) = connected();
    let mut m = qemu_region_read(20, 7, 0, 4);
    m[8] |= 0x10;
    client.send_raw(&m, &[]);
    server.serve_one(&s).unwrap();
    assert!(!client.has_pending(), "never a reply to a no-reply message");
    assert_eq!(server.stats().dropped, 1);
    // A failing no-reply command is dropped too (counted), not answered.
    let bad_write = Request::RegionWrite(RegionData {
        offset: 0x1000,
        region: 7,
        data: vec![0; 4],
    });
    client.send(&bad_write, true);
    server.serve_one(&s).unwrap();
    assert!(!client.has_pending());
    assert_eq!(server.stats().dropped, 2);
    still_usable(&mut client, &mut server, &s);
}

#[test]
fn unknown_command_with_payload_gets_enosys_and_the_stream_stays_in_step() {
    let (mut client, mut server, s) = connected();
    let mut m = hdr(30, 200, 16 + 100, 0);
    m.extend_from_slice(&[0x5a; 100]);
    let ev = eventfd();
    client.send_raw(&m, &[ev.as_fd()]);
    server.serve_one(&s).unwrap();
    let (h, r) = client.recv();
    assert_eq!((h.id, h.command, h.size), (30, 200, 16));
    assert_eq!(errno(&r), libc::ENOSYS);
    // REGION_WRITE_MULTI was not negotiated: ENOSYS as well.
    let mut m = hdr(31, cmd::REGION_WRITE_MULTI, 16 + 8, 0);
    m.extend_from_slice(&0u64.to_le_bytes());
    client.send_raw(&m, &[]);
    server.serve_one(&s).unwrap();
    assert_eq!(errno(&client.recv().1), libc::ENOSYS);
    still_usable(&mut client, &mut server, &s);
}

#[test]
fn version_rules() {
    let (c, s) = Socket::pair().unwrap();
    let mut client = Client::new(c);
    let mut server = Server::new(Toy::new());
    // Anything before VERSION.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::GetIrqInfo {
            argsz: 16,
            index: 2,
        },
    );
    assert_eq!(errno(&r), libc::EINVAL);
    // Major 1: not spoken.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version {
            major: 1,
            minor: 0,
            capabilities: None,
        }),
    );
    assert_eq!(errno(&r), libc::ENOTSUP);
    // Malformed JSON, and a wrongly typed member.
    for json in [
        &b"{not json\0"[..],
        b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0",
        b"[1]\0",
        b"{}\0{}\0",
    ] {
        let mut m = hdr(40, cmd::VERSION, (16 + 4 + json.len()) as u32, 0);
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(json);
        client.send_raw(&m, &[]);
        server.serve_one(&s).unwrap();
        assert_eq!(
            errno(&client.recv().1),
            libc::EINVAL,
            "{}",
            String::from_utf8_lossy(json)
        );
    }
    assert!(server.negotiated().is_none());
    // A proper one, then a second: EINVAL.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version::default()),
    );
    assert!(matches!(r, Reply::Version(_)));
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version::default()),
    );
    assert_eq!(errno(&r), libc::EINVAL);
}

#[test]
fn dma_map_and_unmap_checks() {
    let (mut client, mut server, s) = connected();
    let mem = memfd(0x10000);
    let map = |iova: u64, size: u64, offset: u64, flags: u32, fd: bool| {
        Request::DmaMap(DmaMap {
            flags,
            offset,
            iova,
            size,
            fd: fd.then(|| mem.as_fd().try_clone_to_owned().unwrap()),
        })
    };
    let mut go = |req: &Request| call(&mut client, &mut server, &s, req);
    assert!(matches!(
        go(&map(0x10000, 0x4000, 0, 3, true)),
        Reply::DmaMap
    ));
    // Overlaps at either end and inside.
    for (iova, size) in [
        (0xf000, 0x2000),
        (0x13000, 0x1000),
        (0x11000, 0x1000),
        (0x8000, 0x10000),
    ] {
        assert_eq!(
            errno(&go(&map(iova, size, 0, 3, true))),
            libc::EEXIST,
            "{iova:#x}+{size:#x}"
        );
    }
    // Adjacent is fine.
    assert!(matches!(
        go(&map(0x14000, 0x1000, 0, 1, true)),
        Reply::DmaMap
    ));
    // Unaligned, empty, wrapping, unknown flags.
    assert_eq!(errno(&go(&map(0x20800, 0x1000, 0, 3, true))), libc::EINVAL);
    assert_eq!(errno(&go(&map(0x30000, 0, 0, 3, true))), libc::EINVAL);
    assert_eq!(
        errno(&go(&map(u64::MAX - 0xfff, 0x2000, 0, 3, true))),
        libc::EINVAL
    );
    assert_eq!(errno(&go(&map(0x40000, 0x1000, 0, 4, true))), libc::EINVAL);
    // No fd (QEMU's ROMs): accepted and recorded so its unmap matches, but never handed
    // to the device, which cannot reach it; an overlap with it is refused like any other.
    assert!(matches!(
        go(&map(0x50000, 0x1000, 0, 3, false)),
        Reply::DmaMap
    ));
    assert_eq!(errno(&go(&map(0x50000, 0x1000, 0, 3, true))), libc::EEXIST);
    // Unmap must match exactly; the dirty-bitmap bit is not supported; unmap-all takes
    // no range.
    let unmap = |iova, size, flags| {
        Request::DmaUnmap(DmaUnmap {
            argsz: 24,
            flags,
            iova,
            size,
        })
    };
    assert_eq!(errno(&go(&unmap(0x10000, 0x1000, 0))), libc::ENOENT);
    assert_eq!(errno(&go(&unmap(0x10000, 0x4000, 1))), libc::ENOTSUP);
    assert_eq!(errno(&go(&unmap(0x10000, 0x4000, 2))), libc::EINVAL);
    assert!(matches!(
        go(&unmap(0x10000, 0x4000, 0)),
        Reply::DmaUnmap(Some(_))
    ));
    assert!(matches!(
        go(&unmap(0x50000, 0x1000, 0)),
        Reply::DmaUnmap(Some(_))
    ));
    assert_eq!(
        server.dma_mappings().collect::<Vec<_>>(),
        [(0x14000, 0x1000)]
    );
}

#[test]
fn dma_map_table_is_bounded_by_max_dma_maps() {
    let (c, s) = Socket::pair().unwrap();
    let mut client = Client::new(c);
    let config = ServerConfig {
        max_dma_maps: 2,
        ..Default::default()
    };
    let mut server = Server::with_config(Toy::new(), config);
    call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version::default()),
    );
    let mem = memfd(0x1000);
    for (i, want) in [(0u64, None), (1, None), (2, Some(libc::ENOSPC))] {
        let req = Request::DmaMap(DmaMap {
            flags: 3,
            offset: 0,
            iova: i * 0x1000,
            size: 0x1000,
            fd: Some(mem.as_fd().try_clone_to_owned().unwrap()),
        });
        let r = call(&mut client, &mut server, &s, &req);
        match want {
            None => assert!(matches!(r, Reply::DmaMap)),
            Some(e) => assert_eq!(errno(&r), e),
        }
    }
}

#[test]
fn region_access_bounds() {
    let (mut client, mut server, s) = connected();
    // count above max_data_xfer_size: EINVAL without allocating it.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::RegionRead(RegionRead {
            offset: 0,
            region: 7,
            count: u32::MAX,
        }),
    );
    assert_eq!(errno(&r), libc::EINVAL);
    // Past the region, and a region that does not exist.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::RegionRead(RegionRead {
            offset: 254,
            region: 7,
            count: 4,
        }),
    );
    assert_eq!(errno(&r), libc::EINVAL);
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::RegionRead(RegionRead {
            offset: 0,
            region: 9,
            count: 4,
        }),
    );
    assert_eq!(errno(&r), libc::EINVAL);
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::GetRegionInfo {
            argsz: 32,
            index: 99,
        },
    );
    assert_eq!(errno(&r), libc::EINVAL);
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::GetRegionInfo { argsz: 8, index: 7 },
    );
    assert_eq!(errno(&r), libc::EINVAL);
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::GetIrqInfo {
            argsz: 16,
            index: 5,
        },
    );
    assert_eq!(errno(&r), libc::EINVAL);
    // A device-level refusal carries the device's errno.
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::GetRegionIoFds {
            argsz: 16,
            index: 0,
        },
    );
    assert_eq!(errno(&r), libc::ENOTSUP);
    let mask = Request::SetIrqs(IrqSet {
        index: irq::MSIX,
        start: 0,
        count: 1,
        action: IrqAction::Mask,
        data: IrqData::None,
    });
    assert_eq!(
        errno(&call(&mut client, &mut server, &s, &mask)),
        libc::ENOTSUP
    );
}

#[test]
fn set_irqs_flag_combinations_are_checked() {
    let (mut client, mut server, s) = connected();
    for flags in [0u32, 0x3 | 0x20, 0x1 | 0x18, 0x1, 0x20, 0x40 | 0x21] {
        let mut m = hdr(50, cmd::SET_IRQS, 36, 0);
        for v in [20u32, flags, irq::MSIX, 0, 1] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        client.send_raw(&m, &[]);
        server.serve_one(&s).unwrap();
        assert_eq!(errno(&client.recv().1), libc::EINVAL, "flags {flags:#x}");
    }
    still_usable(&mut client, &mut server, &s);
}

#[test]
fn stray_replies_are_dropped_and_a_busy_vf_answers_ebusy() {
    let (mut client, mut server, s) = connected();
    let m = Reply::DmaMap.encode(60, cmd::DMA_MAP);
    client.send_raw(&m.bytes, &[]);
    server.serve_one(&s).unwrap();
    assert!(!client.has_pending());
    still_usable(&mut client, &mut server, &s);

    // The glue's answer to a second client.
    let h = Header::command(0, cmd::VERSION, 20, false);
    let r = busy_reply(&h).unwrap();
    assert_eq!(r.errno(), Some(libc::EBUSY as u32));
    assert_eq!(r.encode().bytes.len(), 16);
    assert!(busy_reply(&Header::command(0, cmd::VERSION, 20, true)).is_none());
}

#[test]
fn nonblocking_reader_keeps_a_partial_message() {
    let (a, b) = Socket::pair().unwrap();
    b.stream().set_nonblocking(true).unwrap();
    let mut reader = MessageReader::new();
    let limits = Limits::default();
    assert!(reader.poll(&b, &limits).unwrap().is_none());
    let ev = eventfd();
    let req = Request::SetIrqs(IrqSet {
        index: 2,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(vec![ev]),
    });
    let enc = req.encode(70, false);
    // The fd comes with the first bytes; the rest trickles in.
    a.send_message(&enc.bytes[..5], &enc.fds).unwrap();
    assert!(reader.poll(&b, &limits).unwrap().is_none());
    assert!(!reader.is_idle());
    a.send_message(&enc.bytes[5..30], &[]).unwrap();
    assert!(reader.poll(&b, &limits).unwrap().is_none());
    a.send_message(&enc.bytes[30..], &[]).unwrap();
    let msg = reader.poll(&b, &limits).unwrap().unwrap();
    assert_eq!(msg.header.id, 70);
    assert_eq!(msg.fds.len(), 1);
    assert!(reader.is_idle());
    assert!(
        matches!(Request::decode(msg).unwrap(), Request::SetIrqs(IrqSet { data: IrqData::Eventfds(v), .. }) if v.len() == 1)
    );
}
