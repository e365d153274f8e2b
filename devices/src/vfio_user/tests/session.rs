//! QEMU's bring-up of a vfio-user-pci device, message by message, over a real socketpair
//! against the toy device: the bytes QEMU sends (built by hand in `codec.rs`) and what it
//! checks in each reply.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::client::{Client, call, errno};
use super::codec::{
    qemu_dma_map, qemu_dma_unmap, qemu_region_info, qemu_region_read, qemu_region_write,
    qemu_set_irqs_eventfd, qemu_version_request,
};
use crate::vfio_user::toy::{BAR0_SIZE, Toy, eventfd, eventfd_count, memfd};
use crate::vfio_user::*;

/// Sends QEMU's raw bytes (and fds), lets the server handle them, returns the reply.
fn exchange(
    client: &Client,
    server: &mut Server<Toy>,
    s: &Socket,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> (Header, Reply) {
    client.send_raw(bytes, fds);
    server.serve_one(s).unwrap();
    client.recv()
}

#[test]
fn qemu_bring_up_session() {
    let (c, s) = Socket::pair().unwrap();
    let mut client = Client::new(c);
    client.next_id = 100;
    let mut server = Server::new(Toy::new());

    // VERSION: QEMU's exact request. It checks: no error, major 0, minor <= 0, the JSON
    // NUL-terminated, the reply no larger than its request (its receive buffer), and the
    // capabilities within its bounds.
    let req = qemu_version_request();
    client.send_raw(&req, &[]);
    server.serve_one(&s).unwrap();
    let raw = client.sock.recv_message(&Limits::default()).unwrap();
    assert_eq!(
        (raw.header.id, raw.header.command, raw.header.flags),
        (0, cmd::VERSION, 1)
    );
    assert!(raw.header.size as usize <= req.len(), "fits QEMU's buffer");
    assert_eq!(&raw.payload[..4], &[0, 0, 0, 0], "version 0.0");
    assert_eq!(
        &raw.payload[4..],
        b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"max_dma_maps\":65535,\"pgsizes\":4096}}\0"
    );
    let Reply::Version(v) = Reply::decode(raw).unwrap() else {
        panic!("not a version reply")
    };
    let caps = v.capabilities.unwrap();
    assert!(caps.max_msg_fds.unwrap() <= 16);
    assert!(caps.max_data_xfer_size.unwrap() <= 64 << 20);
    assert!(caps.max_dma_maps.unwrap() <= 65535);
    assert_eq!(caps.pgsizes.unwrap() % 4096, 0);
    assert_eq!(caps.write_multiple, None, "REGION_WRITE_MULTI not offered");
    assert_eq!(server.negotiated().unwrap().client_max_msg_fds, 16);

    // DEVICE_GET_INFO: 8+ regions, 3+ irq types, resettable PCI.
    let Reply::DeviceGetInfo(di) = call(
        &mut client,
        &mut server,
        &s,
        &Request::DeviceGetInfo { argsz: 16 },
    ) else {
        panic!()
    };
    assert_eq!(di.argsz, 16);
    assert_eq!(di.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert!(di.num_regions >= 8 && di.num_irqs >= 3);

    // GET_REGION_INFO for every region, with QEMU's first argsz (32).
    for index in 0..di.num_regions {
        let (h, r) = exchange(
            &client,
            &mut server,
            &s,
            &qemu_region_info(200 + index as u16, index, 32),
            &[],
        );
        assert_eq!(h.id, 200 + index as u16);
        let Reply::GetRegionInfo(ri) = r else {
            panic!("{r:?}")
        };
        assert_eq!(ri.info.index, index);
        assert!(h.size <= 16 + 32, "fits argsz");
        match index {
            region::BAR0 => {
                // Caps do not fit: the needed size, the CAPS flag, no caps, no fd yet.
                assert_eq!(ri.argsz, 32 + 16 + 16);
                assert_ne!(ri.info.flags & VFIO_REGION_INFO_FLAG_CAPS, 0);
                assert!(ri.info.sparse.is_empty() && ri.fd.is_none());
            }
            region::CONFIG => {
                assert_eq!(ri.info.size, 256);
                assert_eq!(
                    ri.info.flags,
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                );
                assert!(ri.fd.is_none());
            }
            _ => assert_eq!((ri.info.size, ri.argsz), (0, 32)),
        }
    }
    // QEMU asks again for BAR0 with the argsz it was told.
    let (h, r) = exchange(&client, &mut server, &s, &qemu_region_info(220, 0, 64), &[]);
    assert_eq!(h.size, 16 + 64);
    let Reply::GetRegionInfo(bar0) = r else {
        panic!()
    };
    assert_eq!(
        bar0.info.sparse,
        vec![SparseArea {
            offset: 0x1000,
            size: 0x3000
        }]
    );
    assert_eq!(bar0.info.size, BAR0_SIZE);
    // The fd is the BAR's memory: what the client writes through it, the device reads.
    let bar_fd = File::from(bar0.fd.expect("BAR0's fd with the full reply"));
    bar_fd.write_all_at(&[0xaa, 0xbb], 0x2000).unwrap();
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_region_read(221, 0, 0x2000, 2),
        &[],
    );
    assert!(matches!(r, Reply::RegionRead(d) if d.data == [0xaa, 0xbb]));

    // GET_IRQ_INFO for INTx, MSI, MSI-X, ERR, REQ.
    for index in 0..di.num_irqs {
        let Reply::GetIrqInfo(ii) = call(
            &mut client,
            &mut server,
            &s,
            &Request::GetIrqInfo { argsz: 16, index },
        ) else {
            panic!()
        };
        assert_eq!((ii.argsz, ii.index), (16, index));
        if index == irq::MSIX {
            assert_eq!(ii.count, 3);
            assert_ne!(ii.flags & VFIO_IRQ_INFO_EVENTFD, 0);
        }
    }

    // DMA_MAP of guest RAM from a memfd, as QEMU's listener sends it.
    let ram = memfd(0x20_0000);
    ram.write_all_at(b"guest frame", 0x1_0010).unwrap();
    let (h, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_map(300, 0, 0x1_0000_0000, 0x20_0000, true),
        &[ram.as_fd()],
    );
    assert!(matches!(r, Reply::DmaMap), "{r:?}");
    assert!(!h.is_error());
    assert_eq!(
        server.device().dma_read(0x1_0001_0010, 11).unwrap(),
        b"guest frame"
    );
    // Mapping over it again: EEXIST, as the spec demands.
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_map(301, 0x1000, 0x1_0010_0000, 0x1000, true),
        &[ram.as_fd()],
    );
    assert_eq!(errno(&r), libc::EEXIST);

    // Config space: vendor/device, then a command-register write and read-back.
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_region_read(302, 7, 0, 4),
        &[],
    );
    assert!(
        matches!(r, Reply::RegionRead(d) if d.data == [0x86, 0x80, 0xca, 0x10] && d.region == 7)
    );
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_region_write(303, 7, 4, &[0x06, 0x00], false),
        &[],
    );
    assert!(matches!(r, Reply::RegionWrite(w) if w.count == 2 && w.offset == 4 && w.region == 7));
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_region_read(304, 7, 4, 2),
        &[],
    );
    assert!(matches!(r, Reply::RegionRead(d) if d.data == [0x06, 0x00]));

    // SET_IRQS for MSI-X: eventfds in chunks (here 2 + 1), then the device signals them.
    let vectors = [eventfd(), eventfd(), eventfd()];
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_set_irqs_eventfd(305, 2, 0, 2),
        &[vectors[0].as_fd(), vectors[1].as_fd()],
    );
    assert!(matches!(r, Reply::SetIrqs), "{r:?}");
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_set_irqs_eventfd(306, 2, 2, 1),
        &[vectors[2].as_fd()],
    );
    assert!(matches!(r, Reply::SetIrqs), "{r:?}");
    assert!(server.device().msix.iter().all(Option::is_some));
    let trigger = Request::SetIrqs(IrqSet {
        index: irq::MSIX,
        start: 0,
        count: 3,
        action: IrqAction::Trigger,
        data: IrqData::None,
    });
    assert!(matches!(
        call(&mut client, &mut server, &s, &trigger),
        Reply::SetIrqs
    ));
    assert_eq!(
        vectors.iter().map(eventfd_count).collect::<Vec<_>>(),
        [1, 1, 1],
        "the server holds the client's eventfds"
    );
    // De-assign vector 1 (an eventfd chunk without fds).
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_set_irqs_eventfd(307, 2, 1, 1),
        &[],
    );
    assert!(matches!(r, Reply::SetIrqs));
    assert!(server.device().msix[1].is_none() && server.device().msix[0].is_some());
    // Vectors beyond the index: EINVAL.
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_set_irqs_eventfd(308, 2, 3, 1),
        &[vectors[0].as_fd()],
    );
    assert_eq!(errno(&r), libc::EINVAL);

    // A posted BAR write (no reply), then a read: the read's reply is the next message and
    // sees the write.
    client.send_raw(&qemu_region_write(309, 0, 0x2004, &[1, 2, 3, 4], true), &[]);
    server.serve_one(&s).unwrap();
    assert!(!client.has_pending(), "no reply to a posted write");
    let (h, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_region_read(310, 0, 0x2004, 4),
        &[],
    );
    assert_eq!(h.id, 310);
    assert!(matches!(r, Reply::RegionRead(d) if d.data == [1, 2, 3, 4]));

    // DMA_UNMAP: the entry echoed, the device's mapping gone; again: ENOENT.
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_unmap(311, 0x1_0000_0000, 0x20_0000, false),
        &[],
    );
    assert!(
        matches!(r, Reply::DmaUnmap(Some(u)) if u.iova == 0x1_0000_0000 && u.size == 0x20_0000)
    );
    assert!(server.device().dma.is_empty());
    assert_eq!(server.dma_mappings().count(), 0);
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_unmap(312, 0x1_0000_0000, 0x20_0000, false),
        &[],
    );
    assert_eq!(errno(&r), libc::ENOENT);

    // DEVICE_RESET.
    assert!(matches!(
        call(&mut client, &mut server, &s, &Request::DeviceReset),
        Reply::DeviceReset
    ));
    assert_eq!(server.device().resets, 1);

    // Unmap-all (bit 1) clears every mapping.
    for (i, iova) in [0x0u64, 0x10_0000].into_iter().enumerate() {
        let (_, r) = exchange(
            &client,
            &mut server,
            &s,
            &qemu_dma_map(320 + i as u16, iova, iova, 0x1000, false),
            &[ram.as_fd()],
        );
        assert!(matches!(r, Reply::DmaMap));
    }
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_unmap(330, 0, 0, true),
        &[],
    );
    assert!(matches!(r, Reply::DmaUnmap(Some(_))));
    assert!(server.device().dma.is_empty());

    // Disconnect: DMA unmapped, eventfds dropped, device state kept.
    let (_, r) = exchange(
        &client,
        &mut server,
        &s,
        &qemu_dma_map(331, 0, 0, 0x1000, true),
        &[ram.as_fd()],
    );
    assert!(matches!(r, Reply::DmaMap));
    drop(client);
    assert!(matches!(
        server.serve_one(&s),
        Err(ServerError::Recv(SocketError::Closed))
    ));
    server.disconnect();
    assert!(server.device().dma.is_empty());
    assert!(server.device().msix.iter().all(Option::is_none));
    assert_eq!(
        server.device().config[4],
        0,
        "reset cleared the command register"
    );
    assert!(
        server.negotiated().is_none(),
        "the next client starts with VERSION"
    );
    assert_eq!(server.stats().error_replies, 3, "EEXIST, EINVAL, ENOENT");
}

#[test]
fn a_new_client_after_disconnect_negotiates_again() {
    let (mut client, mut server, s) = super::client::connected();
    server.disconnect();
    drop((client, s));
    let (c, s) = Socket::pair().unwrap();
    client = Client::new(c);
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::DeviceGetInfo { argsz: 16 },
    );
    assert_eq!(errno(&r), libc::EINVAL, "VERSION first");
    let r = call(
        &mut client,
        &mut server,
        &s,
        &Request::Version(Version::default()),
    );
    assert!(matches!(
        r,
        Reply::Version(Version {
            capabilities: None,
            ..
        })
    ));
    assert!(matches!(
        call(
            &mut client,
            &mut server,
            &s,
            &Request::DeviceGetInfo { argsz: 16 }
        ),
        Reply::DeviceGetInfo(_)
    ));
}
