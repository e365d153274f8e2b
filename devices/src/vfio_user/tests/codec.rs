//! Encode/decode round trips of every message, and QEMU's own bytes decoded (built here
//! field by field from hw/vfio-user/protocol.h and proxy.c, not with our encoder).

use std::os::fd::{AsFd, OwnedFd};

use crate::vfio_user::toy::{eventfd, memfd};
use crate::vfio_user::*;

/// What the receiving side gets for `enc`: the bytes parsed back into a message, with
/// owned copies of the fds.
fn loopback(enc: &Encoded<'_>) -> Message {
    let header = Header::decode(&enc.bytes).unwrap();
    assert_eq!(
        header.size as usize,
        enc.bytes.len(),
        "size covers the message"
    );
    Message {
        header,
        payload: enc.bytes[16..].to_vec(),
        fds: enc
            .fds
            .iter()
            .map(|f| f.try_clone_to_owned().unwrap())
            .collect(),
    }
}

fn request_roundtrip(req: &Request) -> Request {
    let enc = req.encode(0x1234, false);
    let msg = loopback(&enc);
    assert!(msg.header.is_command());
    assert_eq!(msg.header.id, 0x1234);
    assert_eq!(msg.header.command, req.command());
    let back = Request::decode(msg).unwrap();
    // Re-encoding gives the same bytes and the same number of fds.
    let again = back.encode(0x1234, false);
    assert_eq!(again.bytes, enc.bytes);
    assert_eq!(again.fds.len(), enc.fds.len());
    back
}

fn reply_roundtrip(reply: &Reply, command: u16) -> Reply {
    let enc = reply.encode(7, command);
    let msg = loopback(&enc);
    assert!(msg.header.is_reply());
    assert_eq!((msg.header.id, msg.header.command), (7, command));
    let back = Reply::decode(msg).unwrap();
    let again = back.encode(7, command);
    assert_eq!(again.bytes, enc.bytes);
    assert_eq!(again.fds.len(), enc.fds.len());
    back
}

fn fd() -> OwnedFd {
    memfd(4096).into()
}

#[test]
fn every_request_round_trips() {
    let caps = Capabilities {
        max_msg_fds: Some(16),
        max_data_xfer_size: Some(1 << 20),
        max_dma_maps: Some(65535),
        pgsizes: Some(4096),
        write_multiple: Some(true),
        migration: Some(MigrationCaps {
            pgsize: Some(4096),
            max_bitmap_size: Some(1 << 28),
        }),
    };
    let v = Version {
        major: 0,
        minor: 0,
        capabilities: Some(caps),
    };
    match request_roundtrip(&Request::Version(v.clone())) {
        Request::Version(b) => assert_eq!(b, v),
        o => panic!("{o:?}"),
    }
    let bare = Version::default();
    match request_roundtrip(&Request::Version(bare.clone())) {
        Request::Version(b) => assert_eq!(b, bare),
        o => panic!("{o:?}"),
    }
    match request_roundtrip(&Request::DmaMap(DmaMap {
        flags: 3,
        offset: 0x1000,
        iova: 0x8000_0000,
        size: 0x20_0000,
        fd: Some(fd()),
    })) {
        Request::DmaMap(m) => {
            assert_eq!(
                (m.flags, m.offset, m.iova, m.size),
                (3, 0x1000, 0x8000_0000, 0x20_0000)
            );
            assert!(m.fd.is_some());
        }
        o => panic!("{o:?}"),
    }
    let u = DmaUnmap {
        argsz: 24,
        flags: VFIO_DMA_UNMAP_FLAG_ALL,
        iova: 0,
        size: 0,
    };
    assert!(matches!(request_roundtrip(&Request::DmaUnmap(u)), Request::DmaUnmap(b) if b == u));
    assert!(matches!(
        request_roundtrip(&Request::DeviceGetInfo { argsz: 16 }),
        Request::DeviceGetInfo { argsz: 16 }
    ));
    assert!(matches!(
        request_roundtrip(&Request::GetRegionInfo {
            argsz: 32,
            index: 7
        }),
        Request::GetRegionInfo {
            argsz: 32,
            index: 7
        }
    ));
    assert!(matches!(
        request_roundtrip(&Request::GetRegionIoFds {
            argsz: 16,
            index: 0
        }),
        Request::GetRegionIoFds {
            argsz: 16,
            index: 0
        }
    ));
    assert!(matches!(
        request_roundtrip(&Request::GetIrqInfo {
            argsz: 16,
            index: 2
        }),
        Request::GetIrqInfo {
            argsz: 16,
            index: 2
        }
    ));
    for (action, data) in [
        (
            IrqAction::Trigger,
            IrqData::Eventfds(vec![eventfd(), eventfd(), eventfd()]),
        ),
        (IrqAction::Trigger, IrqData::Eventfds(vec![])),
        (IrqAction::Mask, IrqData::Bool(vec![true, false, true])),
        (IrqAction::Unmask, IrqData::None),
    ] {
        let n = match &data {
            IrqData::Bool(v) => v.len(),
            IrqData::Eventfds(v) if !v.is_empty() => v.len(),
            _ => 3,
        };
        let set = IrqSet {
            index: 2,
            start: 0,
            count: n as u32,
            action,
            data,
        };
        match request_roundtrip(&Request::SetIrqs(set)) {
            Request::SetIrqs(b) => {
                assert_eq!(
                    (b.index, b.start, b.count, b.action),
                    (2, 0, n as u32, action)
                );
            }
            o => panic!("{o:?}"),
        }
    }
    let rd = RegionRead {
        offset: 0x40,
        region: 7,
        count: 4,
    };
    assert!(
        matches!(request_roundtrip(&Request::RegionRead(rd)), Request::RegionRead(b) if b == rd)
    );
    let w = RegionData {
        offset: 0x4,
        region: 7,
        data: vec![6, 0, 0x10, 0],
    };
    assert!(
        matches!(request_roundtrip(&Request::RegionWrite(w.clone())), Request::RegionWrite(b) if b == w)
    );
    assert!(matches!(
        request_roundtrip(&Request::DeviceReset),
        Request::DeviceReset
    ));
    assert!(matches!(
        request_roundtrip(&Request::Unknown { command: 99 }),
        Request::Unknown { command: 99 }
    ));
}

#[test]
fn every_reply_round_trips() {
    let v = Version {
        major: 0,
        minor: 0,
        capabilities: Some(Capabilities {
            max_msg_fds: Some(8),
            ..Default::default()
        }),
    };
    assert!(
        matches!(reply_roundtrip(&Reply::Version(v.clone()), cmd::VERSION), Reply::Version(b) if b == v)
    );
    assert!(matches!(
        reply_roundtrip(&Reply::DmaMap, cmd::DMA_MAP),
        Reply::DmaMap
    ));
    let u = DmaUnmap {
        argsz: 24,
        flags: 0,
        iova: 0x1000,
        size: 0x1000,
    };
    assert!(
        matches!(reply_roundtrip(&Reply::DmaUnmap(Some(u)), cmd::DMA_UNMAP), Reply::DmaUnmap(Some(b)) if b == u)
    );
    assert!(matches!(
        reply_roundtrip(&Reply::DmaUnmap(None), cmd::DMA_UNMAP),
        Reply::DmaUnmap(None)
    ));
    let di = DeviceInfo {
        argsz: 16,
        flags: 3,
        num_regions: 9,
        num_irqs: 5,
    };
    assert!(
        matches!(reply_roundtrip(&Reply::DeviceGetInfo(di), cmd::DEVICE_GET_INFO), Reply::DeviceGetInfo(b) if b == di)
    );
    let info = RegionInfo {
        index: 0,
        flags: VFIO_REGION_INFO_FLAG_READ
            | VFIO_REGION_INFO_FLAG_WRITE
            | VFIO_REGION_INFO_FLAG_MMAP
            | VFIO_REGION_INFO_FLAG_CAPS,
        size: 0x4000,
        offset: 0,
        sparse: vec![
            SparseArea {
                offset: 0x1000,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x3000,
                size: 0x1000,
            },
        ],
    };
    let ri = RegionInfoReply {
        argsz: info.full_argsz() as u32,
        info: info.clone(),
        fd: Some(fd()),
    };
    match reply_roundtrip(&Reply::GetRegionInfo(ri), cmd::GET_REGION_INFO) {
        Reply::GetRegionInfo(b) => {
            assert_eq!(b.info, info);
            assert_eq!(b.argsz, 32 + 16 + 32);
            assert!(b.fd.is_some());
        }
        o => panic!("{o:?}"),
    }
    let io = RegionIoFdsReply {
        argsz: 16 + 40,
        index: 0,
        count: 1,
        sub_regions: vec![IoFdSubRegion {
            offset: 0x818,
            size: 4,
            fd_index: 0,
            kind: IO_FD_TYPE_IOEVENTFD,
            flags: 0,
            datamatch: 0,
        }],
        fds: vec![eventfd()],
    };
    match reply_roundtrip(&Reply::GetRegionIoFds(io), cmd::GET_REGION_IO_FDS) {
        Reply::GetRegionIoFds(b) => {
            assert_eq!(
                (b.argsz, b.count, b.sub_regions.len(), b.fds.len()),
                (56, 1, 1, 1)
            );
            assert_eq!(b.sub_regions[0].offset, 0x818);
        }
        o => panic!("{o:?}"),
    }
    let ii = IrqInfo {
        argsz: 16,
        flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
        index: 2,
        count: 3,
    };
    assert!(
        matches!(reply_roundtrip(&Reply::GetIrqInfo(ii), cmd::GET_IRQ_INFO), Reply::GetIrqInfo(b) if b == ii)
    );
    assert!(matches!(
        reply_roundtrip(&Reply::SetIrqs, cmd::SET_IRQS),
        Reply::SetIrqs
    ));
    let d = RegionData {
        offset: 0,
        region: 7,
        data: vec![0x86, 0x80, 0xca, 0x10],
    };
    assert!(
        matches!(reply_roundtrip(&Reply::RegionRead(d.clone()), cmd::REGION_READ), Reply::RegionRead(b) if b == d)
    );
    let w = RegionWriteReply {
        offset: 4,
        region: 7,
        count: 2,
    };
    assert!(
        matches!(reply_roundtrip(&Reply::RegionWrite(w), cmd::REGION_WRITE), Reply::RegionWrite(b) if b == w)
    );
    assert!(matches!(
        reply_roundtrip(&Reply::DeviceReset, cmd::DEVICE_RESET),
        Reply::DeviceReset
    ));
    // An error reply is the header alone, with the errno.
    let e = Reply::Error {
        errno: libc::EEXIST as u32,
    };
    let enc = e.encode(9, cmd::DMA_MAP);
    assert_eq!(enc.bytes.len(), 16);
    assert_eq!(
        Header::decode(&enc.bytes).unwrap(),
        Header {
            id: 9,
            command: cmd::DMA_MAP,
            size: 16,
            flags: 0x21,
            error: libc::EEXIST as u32
        }
    );
    assert!(
        matches!(reply_roundtrip(&e, cmd::DMA_MAP), Reply::Error { errno } if errno == libc::EEXIST as u32)
    );
}

/// Little-endian fields, pushed one by one as QEMU's structs lay them out.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// VFIOUserHdr: id, command, size, flags, error_reply.
    fn hdr(id: u16, command: u16, size: u32, flags: u32) -> Self {
        Self::default()
            .u16(id)
            .u16(command)
            .u32(size)
            .u32(flags)
            .u32(0)
    }
}

/// The capabilities QEMU's caps_json() produces: a QDict printed by qobject_to_json in
/// its hash-bucket order (tdb_hash(key) % 512: pgsizes 90, max_msg_fds 101,
/// max_dma_maps 130, max_data_xfer_size 248, migration 301, write_multiple 370; inside
/// migration max_bitmap_size 365, pgsize 501), with ", " and ": " separators.
pub const QEMU_CAPS: &str = "{\"capabilities\": {\"pgsizes\": 4096, \"max_msg_fds\": 16, \
\"max_dma_maps\": 65535, \"max_data_xfer_size\": 1048576, \"migration\": \
{\"max_bitmap_size\": 268435456, \"pgsize\": 4096}, \"write_multiple\": true}}";

/// QEMU's VERSION request (vfio_user_validate_version): its first message, id 0.
pub fn qemu_version_request() -> Vec<u8> {
    let size = 16 + 4 + QEMU_CAPS.len() as u32 + 1;
    Bytes::hdr(0, 1, size, 0)
        .u16(0)
        .u16(0)
        .raw(QEMU_CAPS.as_bytes())
        .raw(&[0])
        .0
}

/// QEMU's DMA_MAP (vfio_user_dma_map): VFIOUserDMAMap, 48 bytes, argsz 32.
pub fn qemu_dma_map(id: u16, offset: u64, iova: u64, size: u64, writable: bool) -> Vec<u8> {
    let flags = VFIO_DMA_MAP_FLAG_READ | if writable { VFIO_DMA_MAP_FLAG_WRITE } else { 0 };
    Bytes::hdr(id, 2, 48, 0)
        .u32(32)
        .u32(flags)
        .u64(offset)
        .u64(iova)
        .u64(size)
        .0
}

/// QEMU's DMA_UNMAP (vfio_user_dma_unmap): VFIOUserDMAUnmap, 40 bytes, argsz 24.
pub fn qemu_dma_unmap(id: u16, iova: u64, size: u64, all: bool) -> Vec<u8> {
    Bytes::hdr(id, 3, 40, 0)
        .u32(24)
        .u32(if all { 2 } else { 0 })
        .u64(iova)
        .u64(size)
        .0
}

/// QEMU's SET_IRQS chunk with eventfds (vfio_user_device_io_set_irqs): 36 bytes,
/// argsz 20, the fds in SCM_RIGHTS.
pub fn qemu_set_irqs_eventfd(id: u16, index: u32, start: u32, count: u32) -> Vec<u8> {
    Bytes::hdr(id, 8, 36, 0)
        .u32(20)
        .u32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
        .u32(index)
        .u32(start)
        .u32(count)
        .0
}

/// QEMU's GET_REGION_INFO (vfio_user_get_region_info): 48 bytes, its argsz.
pub fn qemu_region_info(id: u16, index: u32, argsz: u32) -> Vec<u8> {
    Bytes::hdr(id, 5, 48, 0)
        .u32(argsz)
        .u32(0)
        .u32(index)
        .u32(0)
        .u64(0)
        .u64(0)
        .0
}

/// QEMU's REGION_READ (32 bytes) and REGION_WRITE (32 + count; posted: no-reply flag).
pub fn qemu_region_read(id: u16, region: u32, offset: u64, count: u32) -> Vec<u8> {
    Bytes::hdr(id, 9, 32, 0)
        .u64(offset)
        .u32(region)
        .u32(count)
        .0
}

pub fn qemu_region_write(id: u16, region: u32, offset: u64, data: &[u8], posted: bool) -> Vec<u8> {
    let flags = if posted { 0x10 } else { 0 };
    Bytes::hdr(id, 10, 32 + data.len() as u32, flags)
        .u64(offset)
        .u32(region)
        .u32(data.len() as u32)
        .raw(data)
        .0
}

fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Message {
    let header = Header::decode(bytes).unwrap();
    Message {
        header,
        payload: bytes[16..].to_vec(),
        fds,
    }
}

#[test]
fn qemu_version_request_decodes_exactly() {
    let bytes = qemu_version_request();
    assert_eq!(bytes.len(), 16 + 4 + 193 + 1, "QEMU's message is 214 bytes");
    match Request::decode(parse(&bytes, vec![])).unwrap() {
        Request::Version(v) => {
            assert_eq!((v.major, v.minor), (0, 0));
            let c = v.capabilities.unwrap();
            assert_eq!(c.max_msg_fds, Some(16));
            assert_eq!(c.max_data_xfer_size, Some(1 << 20));
            assert_eq!(c.max_dma_maps, Some(65535));
            assert_eq!(c.pgsizes, Some(4096));
            assert_eq!(c.write_multiple, Some(true));
            assert_eq!(
                c.migration,
                Some(MigrationCaps {
                    pgsize: Some(4096),
                    max_bitmap_size: Some(256 << 20)
                })
            );
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn qemu_dma_map_and_unmap_decode_and_encode_byte_exact() {
    let mem = memfd(0x10000);
    let bytes = qemu_dma_map(3, 0x2000, 0xc000_0000, 0x8000, true);
    let m = match Request::decode(parse(
        &bytes,
        vec![mem.as_fd().try_clone_to_owned().unwrap()],
    ))
    .unwrap()
    {
        Request::DmaMap(m) => m,
        o => panic!("{o:?}"),
    };
    assert_eq!(
        (m.flags, m.offset, m.iova, m.size),
        (3, 0x2000, 0xc000_0000, 0x8000)
    );
    assert!(m.fd.is_some());
    // Our encoder, as the vmm's client will use it, produces QEMU's bytes.
    let req = Request::DmaMap(m);
    let enc = req.encode(3, false);
    assert_eq!(enc.bytes, bytes);
    assert_eq!(enc.fds.len(), 1);

    for all in [false, true] {
        let (iova, size) = if all { (0, 0) } else { (0xc000_0000, 0x8000) };
        let bytes = qemu_dma_unmap(4, iova, size, all);
        let u = match Request::decode(parse(&bytes, vec![])).unwrap() {
            Request::DmaUnmap(u) => u,
            o => panic!("{o:?}"),
        };
        assert_eq!(
            u.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0,
            all,
            "bit 1 is unmap-all"
        );
        assert_eq!(Request::DmaUnmap(u).encode(4, false).bytes, bytes);
    }
}

#[test]
fn qemu_set_irqs_region_info_and_region_io_encode_byte_exact() {
    let set = Request::SetIrqs(IrqSet {
        index: irq::MSIX,
        start: 0,
        count: 2,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(vec![eventfd(), eventfd()]),
    });
    assert_eq!(
        set.encode(5, false).bytes,
        qemu_set_irqs_eventfd(5, 2, 0, 2)
    );
    assert_eq!(
        Request::GetRegionInfo {
            argsz: 32,
            index: 7
        }
        .encode(6, false)
        .bytes,
        qemu_region_info(6, 7, 32)
    );
    assert_eq!(
        Request::RegionRead(RegionRead {
            offset: 0x10,
            region: 7,
            count: 4
        })
        .encode(7, false)
        .bytes,
        qemu_region_read(7, 7, 0x10, 4)
    );
    let w = Request::RegionWrite(RegionData {
        offset: 0x818,
        region: 0,
        data: vec![1, 0, 0, 0],
    });
    assert_eq!(
        w.encode(8, true).bytes,
        qemu_region_write(8, 0, 0x818, &[1, 0, 0, 0], true)
    );
    // DEVICE_GET_INFO and GET_IRQ_INFO: the fixed structs with argsz only.
    assert_eq!(
        Request::DeviceGetInfo { argsz: 16 }.encode(1, false).bytes,
        Bytes::hdr(1, 4, 32, 0).u32(16).u32(0).u32(0).u32(0).0
    );
    assert_eq!(
        Request::GetIrqInfo {
            argsz: 16,
            index: 2
        }
        .encode(2, false)
        .bytes,
        Bytes::hdr(2, 7, 32, 0).u32(16).u32(0).u32(2).u32(0).0
    );
    assert_eq!(
        Request::DeviceReset.encode(3, false).bytes,
        Bytes::hdr(3, 13, 16, 0).0
    );
}

#[test]
fn capabilities_json_is_compact_and_ordered() {
    let c = Capabilities {
        max_msg_fds: Some(16),
        max_data_xfer_size: Some(1048576),
        max_dma_maps: Some(65535),
        pgsizes: Some(4096),
        ..Default::default()
    };
    assert_eq!(
        codec::capabilities_json(&c),
        "{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"max_dma_maps\":65535,\"pgsizes\":4096}}"
    );
}

#[test]
fn truncated_region_info_reply_carries_no_caps_and_says_the_size() {
    // What a server sends when the client's argsz (32) is too small for the caps: the
    // kernel's convention, CAPS flag set, cap_offset 0, argsz the full size.
    let bytes = Bytes::hdr(1, 5, 48, 1)
        .u32(80)
        .u32(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_CAPS)
        .u32(0)
        .u32(0)
        .u64(0x4000)
        .u64(0)
        .0;
    match Reply::decode(parse(&bytes, vec![])).unwrap() {
        Reply::GetRegionInfo(r) => {
            assert_eq!(r.argsz, 80);
            assert!(r.info.sparse.is_empty());
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn broken_capability_chains_are_refused() {
    let base = |cap_offset: u32, next: u32, nr: u32| {
        Bytes::hdr(1, 5, 16 + 32 + 16, 1)
            .u32(64)
            .u32(VFIO_REGION_INFO_FLAG_CAPS)
            .u32(0)
            .u32(cap_offset)
            .u64(0x4000)
            .u64(0)
            .u16(1)
            .u16(1)
            .u32(next)
            .u32(nr)
            .u32(0)
            .0
    };
    // A loop (next points back at itself).
    assert!(Reply::decode(parse(&base(32, 32, 0), vec![])).is_err());
    // Points inside the fixed struct, or past the end.
    assert!(Reply::decode(parse(&base(8, 0, 0), vec![])).is_err());
    assert!(Reply::decode(parse(&base(400, 0, 0), vec![])).is_err());
    // nr_areas larger than the bytes that follow: refused before any allocation.
    assert!(matches!(
        Reply::decode(parse(&base(32, 0, u32::MAX), vec![])),
        Err(DecodeError::Count { .. })
    ));
    // A well-formed empty sparse cap decodes.
    assert!(Reply::decode(parse(&base(32, 0, 0), vec![])).is_ok());
}
