//! A small vfio-user client on devices::vfio_user's codec, playing what QEMU's
//! `vfio-user-pci` and Linux's igbvf do to a nicd VF: bring-up (VERSION, DEVICE_GET_INFO,
//! region and IRQ info, DMA_MAP of a memfd, SET_IRQS with eventfds), then the driver's
//! register accesses through REGION_READ/WRITE. The nicd tests use it; the QEMU tier and
//! the benchmarks can too.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use devices::sriov::igbvf::regs::*;
use devices::vfio_user::{
    Capabilities, DmaMap, IrqAction, IrqData, IrqSet, Limits, Reply, Request, Socket, SocketError,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, Version, irq, region,
};

/// A fresh memfd of `size` bytes (the guest's RAM).
pub fn memfd(size: u64) -> File {
    // SAFETY: a NUL-terminated name and constant flags; the result is checked.
    let raw = unsafe { libc::memfd_create(c"nicd-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(
        raw >= 0,
        "memfd_create: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    f.set_len(size).expect("size the memfd");
    f
}

/// A fresh non-blocking eventfd.
pub fn eventfd() -> File {
    // SAFETY: constant arguments; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(raw >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    File::from(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reads and resets an eventfd's counter (0 if it was not signalled).
pub fn eventfd_take(fd: &File) -> u64 {
    let mut b = [0u8; 8];
    match std::io::Read::read(&mut &*fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// A connection to one VF's socket.
#[derive(Debug)]
pub struct VfioClient {
    sock: Socket,
    next_id: u16,
    limits: Limits,
}

impl VfioClient {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            sock: Socket::new(stream),
            next_id: 0,
            limits: Limits::default(),
        })
    }

    /// Sends `req` (with the no-reply flag if `posted`); returns its id.
    pub fn send(&mut self, req: &Request, posted: bool) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let enc = req.encode(id, posted);
        self.sock
            .send_message(&enc.bytes, &enc.fds)
            .expect("send a vfio-user request");
        id
    }

    /// Sends `req` and returns its reply, or the socket error (the server closed).
    pub fn try_call(&mut self, req: &Request) -> Result<Reply, SocketError> {
        let id = self.send(req, false);
        let msg = self.sock.recv_message(&self.limits)?;
        assert!(msg.header.is_reply(), "{:?}", msg.header);
        assert_eq!(msg.header.id, id, "the reply to the request just sent");
        Ok(Reply::decode(msg).expect("a well-formed reply"))
    }

    /// Sends `req` and returns its reply.
    pub fn call(&mut self, req: &Request) -> Reply {
        self.try_call(req).expect("a reply")
    }

    /// VERSION as QEMU proposes it.
    pub fn version(&mut self) -> Reply {
        self.call(&Request::Version(Version {
            major: 0,
            minor: 0,
            capabilities: Some(Capabilities {
                max_msg_fds: Some(16),
                max_data_xfer_size: Some(1 << 20),
                pgsizes: Some(4096),
                max_dma_maps: Some(65535),
                ..Capabilities::default()
            }),
        }))
    }

    /// QEMU's bring-up up to DMA: VERSION, DEVICE_GET_INFO, every region's and IRQ
    /// index's info. Returns (regions, irqs) as DEVICE_GET_INFO told, with the sizes of
    /// the regions and the counts of the IRQ indices.
    pub fn bring_up(&mut self) -> (Vec<u64>, Vec<u32>) {
        assert!(matches!(self.version(), Reply::Version(_)));
        let Reply::DeviceGetInfo(info) = self.call(&Request::DeviceGetInfo { argsz: 16 }) else {
            panic!("DEVICE_GET_INFO failed");
        };
        let regions = (0..info.num_regions)
            .map(
                |index| match self.call(&Request::GetRegionInfo { argsz: 32, index }) {
                    Reply::GetRegionInfo(r) => r.info.size,
                    other => panic!("GET_REGION_INFO {index}: {other:?}"),
                },
            )
            .collect();
        let irqs = (0..info.num_irqs)
            .map(
                |index| match self.call(&Request::GetIrqInfo { argsz: 16, index }) {
                    Reply::GetIrqInfo(i) => i.count,
                    other => panic!("GET_IRQ_INFO {index}: {other:?}"),
                },
            )
            .collect();
        (regions, irqs)
    }

    /// Maps `size` bytes of `mem` at `iova`.
    pub fn dma_map(&mut self, mem: &File, iova: u64, size: u64) -> Reply {
        let fd = mem.as_fd().try_clone_to_owned().expect("dup the memfd");
        self.call(&Request::DmaMap(DmaMap {
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            offset: 0,
            iova,
            size,
            fd: Some(fd),
        }))
    }

    /// SET_IRQS with one eventfd per MSI-X vector; returns them.
    pub fn set_msix(&mut self) -> Vec<File> {
        let fds: Vec<File> = (0..3).map(|_| eventfd()).collect();
        let owned = fds
            .iter()
            .map(|f| f.as_fd().try_clone_to_owned().expect("dup an eventfd"))
            .collect();
        let r = self.call(&Request::SetIrqs(IrqSet {
            index: irq::MSIX,
            start: 0,
            count: 3,
            action: IrqAction::Trigger,
            data: IrqData::Eventfds(owned),
        }));
        assert!(matches!(r, Reply::SetIrqs), "{r:?}");
        fds
    }

    /// A REGION_READ of 4 bytes.
    pub fn read32(&mut self, region: u32, offset: u64) -> u32 {
        let r = self.call(&Request::RegionRead(devices::vfio_user::RegionRead {
            offset,
            region,
            count: 4,
        }));
        match r {
            Reply::RegionRead(d) => {
                u32::from_le_bytes(d.data.try_into().expect("4 bytes read back"))
            }
            other => panic!("REGION_READ {region}@{offset:#x}: {other:?}"),
        }
    }

    /// A REGION_WRITE of 4 bytes, waiting for its reply.
    pub fn write32(&mut self, region: u32, offset: u64, value: u32) {
        let r = self.call(&Request::RegionWrite(devices::vfio_user::RegionData {
            offset,
            region,
            data: value.to_le_bytes().to_vec(),
        }));
        assert!(matches!(r, Reply::RegionWrite(_)), "{r:?}");
    }
}

/// The low 32 bits of `v`.
fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// Waits until `f` holds, up to `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Where the test driver keeps its rings and buffers in the guest's RAM.
pub mod layout {
    /// TX ring (16 descriptors).
    pub const TX_RING: u64 = 0x1000;
    /// RX ring (16 descriptors).
    pub const RX_RING: u64 = 0x2000;
    /// TX buffers (2 KiB each).
    pub const TX_BUF: u64 = 0x10000;
    /// RX buffers (2 KiB each).
    pub const RX_BUF: u64 = 0x20000;
    /// Descriptors per ring.
    pub const COUNT: u32 = 16;
    /// RAM size.
    pub const RAM: u64 = 0x40000;
}

/// Linux igbvf's sequences over a [`VfioClient`]: the VF's driver in the test.
#[derive(Debug)]
pub struct IgbvfDriver {
    /// The connection.
    pub client: VfioClient,
    /// The guest's RAM, mapped at IOVA 0.
    pub ram: File,
    /// MSI-X eventfds: 0 TX, 1 RX, 2 mailbox.
    pub irqs: Vec<File>,
    v2p_soft: u32,
    tx_next: u32,
    rx_next: u32,
}

impl IgbvfDriver {
    /// QEMU's bring-up on `path`: info, DMA_MAP of the RAM, MSI-X eventfds, bus master.
    pub fn attach(path: &Path) -> Self {
        let mut client = VfioClient::connect(path).expect("connect to the VF");
        client.bring_up();
        let ram = memfd(layout::RAM);
        assert!(matches!(
            client.dma_map(&ram, 0, layout::RAM),
            Reply::DmaMap
        ));
        let irqs = client.set_msix();
        // COMMAND: memory space and bus master, as vfio-pci's enable and the driver do.
        client.write32(region::CONFIG, 4, 0x6);
        Self {
            client,
            ram,
            irqs,
            v2p_soft: 0,
            tx_next: 0,
            rx_next: 0,
        }
    }

    /// A BAR0 register read.
    pub fn rd(&mut self, off: u32) -> u32 {
        self.client.read32(region::BAR0, u64::from(off))
    }

    /// A BAR0 register write.
    pub fn wr(&mut self, off: u32, val: u32) {
        self.client.write32(region::BAR0, u64::from(off), val);
    }

    fn read_v2p(&mut self) -> u32 {
        let v = self.rd(V2PMAILBOX) | self.v2p_soft;
        self.v2p_soft |= v & V2P_R2C_BITS;
        v
    }

    fn check_bit(&mut self, mask: u32) -> bool {
        let v = self.read_v2p();
        self.v2p_soft &= !mask;
        v & mask != 0
    }

    fn obtain_lock(&mut self) {
        self.wr(V2PMAILBOX, V2P_VFU);
        assert!(
            self.read_v2p() & V2P_VFU != 0,
            "VF could not take the mailbox"
        );
    }

    /// `e1000_write_posted_mbx`.
    pub fn write_posted(&mut self, msg: &[u32]) {
        self.obtain_lock();
        self.check_bit(V2P_PFSTS);
        self.check_bit(V2P_PFACK);
        for (i, w) in (0u32..).zip(msg) {
            self.wr(VMBMEM + 4 * i, *w);
        }
        self.wr(V2PMAILBOX, V2P_REQ);
        assert!(self.check_bit(V2P_PFACK), "PF did not ack {:#x}", msg[0]);
    }

    /// `e1000_read_mbx_vf`.
    pub fn read_mbx(&mut self, n: u32) -> Vec<u32> {
        self.obtain_lock();
        let msg = (0..n).map(|i| self.rd(VMBMEM + 4 * i)).collect();
        self.wr(V2PMAILBOX, V2P_ACK);
        msg
    }

    /// A request and its reply.
    pub fn request(&mut self, msg: &[u32], reply_words: u32) -> Vec<u32> {
        self.write_posted(msg);
        assert!(self.check_bit(V2P_PFSTS), "PF did not answer {:#x}", msg[0]);
        self.read_mbx(reply_words)
    }

    /// `e1000_reset_hw_vf`: CTRL.RST, then RESET; returns the reply (3 words).
    pub fn reset_hw(&mut self) -> Vec<u32> {
        let ctrl = self.rd(CTRL);
        self.wr(CTRL, ctrl | CTRL_RST);
        let mut timeout = 200;
        while self.check_bit(V2P_RSTD | V2P_RSTI) && timeout > 0 {
            timeout -= 1;
        }
        self.request(&[MSG_RESET], 3)
    }

    /// The permanent MAC from a RESET reply.
    pub fn mac_of(reply: &[u32]) -> [u8; 6] {
        let a = reply[1].to_le_bytes();
        let b = reply[2].to_le_bytes();
        [a[0], a[1], a[2], a[3], b[0], b[1]]
    }

    /// `igbvf_configure_tx` with the test layout.
    pub fn configure_tx(&mut self) {
        self.wr(TDLEN, layout::COUNT * 16);
        self.wr(TDBAL, lo32(layout::TX_RING));
        self.wr(TDBAH, 0);
        self.wr(TDH, 0);
        self.wr(TDT, 0);
        self.wr(TXDCTL, DCTL_ENABLE);
        self.tx_next = 0;
    }

    /// `igbvf_configure_rx` (one buffer of 2 KiB per descriptor) and the buffers posted.
    pub fn configure_rx(&mut self) {
        self.wr(SRRCTL, SRRCTL_DROP_EN | 2 | SRRCTL_DESCTYPE_ADV_ONEBUF);
        self.wr(RDBAL, lo32(layout::RX_RING));
        self.wr(RDBAH, 0);
        self.wr(RDLEN, layout::COUNT * 16);
        self.wr(RDH, 0);
        self.wr(RDT, 0);
        self.wr(RXDCTL, DCTL_ENABLE | 16 | (8 << 8) | (1 << 16));
        for i in 0..layout::COUNT - 1 {
            let at = layout::RX_RING + u64::from(i) * 16;
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(layout::RX_BUF + u64::from(i) * 2048).to_le_bytes());
            self.ram
                .write_all_at(&d, at)
                .expect("write an RX descriptor");
        }
        self.wr(RDT, layout::COUNT - 1);
        self.rx_next = 0;
    }

    /// Probe and open: RESET (returns the MAC), rings, MSI-X routing, interrupts on.
    pub fn up(&mut self) -> [u8; 6] {
        self.wr(EIMC, !0);
        let reply = self.reset_hw();
        assert_eq!(reply[0], MSG_RESET | MSG_ACK, "RESET reply {reply:#x?}");
        let mac = Self::mac_of(&reply);
        self.configure_tx();
        self.configure_rx();
        self.wr(IVAR0, 0x0000_8081);
        self.wr(IVAR_MISC, 2 | IVAR_VALID);
        self.wr(EIAC, 7);
        self.wr(EIAM, 7);
        self.wr(EIMS, 7);
        mac
    }

    /// Queues `frame` in the next TX descriptor and writes TDT.
    pub fn send(&mut self, frame: &[u8]) {
        let i = self.tx_next;
        let buf = layout::TX_BUF + u64::from(i) * 2048;
        self.ram
            .write_all_at(frame, buf)
            .expect("write a TX buffer");
        let len = u32::try_from(frame.len()).expect("a small frame");
        let words = [
            lo32(buf),
            lo32(buf >> 32),
            TXD_DTYP_DATA | TXD_DEXT | TXD_IFCS | TXD_EOP | TXD_RS | len,
            len << 14,
        ];
        let mut d = [0u8; 16];
        for (k, w) in words.iter().enumerate() {
            d[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.ram
            .write_all_at(&d, layout::TX_RING + u64::from(i) * 16)
            .expect("write a TX descriptor");
        self.tx_next = (i + 1) % layout::COUNT;
        self.wr(TDT, self.tx_next);
    }

    /// The next received frame, if its descriptor has DD (the descriptor is given back).
    pub fn poll_rx(&mut self) -> Option<Vec<u8>> {
        let i = self.rx_next;
        let at = layout::RX_RING + u64::from(i) * 16;
        let mut d = [0u8; 16];
        self.ram.read_exact_at(&mut d, at).ok()?;
        let status = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        if status & RXD_STAT_DD == 0 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([d[12], d[13]]));
        let mut frame = vec![0u8; len];
        self.ram
            .read_exact_at(&mut frame, layout::RX_BUF + u64::from(i) * 2048)
            .ok()?;
        let mut fresh = [0u8; 16];
        fresh[..8].copy_from_slice(&(layout::RX_BUF + u64::from(i) * 2048).to_le_bytes());
        self.ram.write_all_at(&fresh, at).ok()?;
        self.rx_next = (i + 1) % layout::COUNT;
        Some(frame)
    }
}

/// An Ethernet frame from `src` to `dst` with an IPv4 ethertype and `len` bytes in all.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len.max(14), 0x5a);
    f
}
