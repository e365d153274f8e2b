//! A guest-side driver for an 82576 VF served over vfio-user: Linux igbvf's sequences
//! (vf.c `e1000_reset_hw_vf`, mbx.c's posted mailbox, netdev.c's ring set-up) as a small
//! program plays them, with the guest's RAM a memfd mapped at IOVA 0. The nicd tests use it
//! as the VF's driver and `vmm-bench nicd` as the load: TX descriptors are queued in
//! batches behind one posted TDT write, RX descriptors are taken by their DD bit and given
//! back in batches behind one posted RDT write, as a busy igbvf does.
//!
//! It is a client of an untrusted-enough peer only in the sense that every failure is an
//! error value: nothing here panics on what the server does.

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

use super::regs::*;
use crate::vfio_user::client::{Client, ClientError, default_capabilities};
use crate::vfio_user::{irq, region};

/// Why the driver failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The vfio-user exchange failed.
    #[error("vfio-user")]
    Client(#[from] ClientError),
    /// Creating or mapping the guest's RAM failed.
    #[error("guest RAM: {0}")]
    Ram(String),
    /// An access to the driver's own RAM failed (a bug in its layout).
    #[error("guest RAM access at {0:#x}")]
    RamAccess(u64),
    /// The device did not follow the mailbox protocol.
    #[error("mailbox: {0}")]
    Mailbox(String),
    /// A ring size igbvf would not use: 8..=4096 descriptors, a multiple of 8.
    #[error("ring of {0} descriptors: a multiple of 8 from 8 to 4096 is needed")]
    RingSize(u32),
    /// A frame that does not fit a 2 KiB buffer.
    #[error("frame of {0} bytes does not fit a 2 KiB buffer")]
    FrameSize(usize),
}

/// Bytes per buffer (igbvf's default 2 KiB).
pub const BUF_SIZE: u64 = BUF_LEN as u64;
/// [`BUF_SIZE`] as a length.
const BUF_LEN: usize = 2048;

/// Where the driver keeps its rings and buffers in the guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Descriptors per ring.
    pub count: u32,
}

impl Layout {
    /// TX ring.
    pub const TX_RING: u64 = 0x1000;
    /// RX ring (after a TX ring of at most 4096 descriptors).
    pub const RX_RING: u64 = 0x1_1000;
    /// First TX buffer.
    pub const TX_BUF: u64 = 0x10_0000;

    /// First RX buffer.
    pub fn rx_buf(&self) -> u64 {
        Self::TX_BUF + u64::from(self.count) * BUF_SIZE
    }

    /// RAM the layout needs.
    pub fn ram_size(&self) -> u64 {
        self.rx_buf() + u64::from(self.count) * BUF_SIZE
    }
}

fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// A fresh memfd of `size` bytes, sealed against shrinking and growing (as QEMU's memfd
/// backend is), so a server that maps it cannot be faulted by a truncation.
pub fn memfd(size: u64) -> Result<File, DriverError> {
    // SAFETY: a NUL-terminated name and constant flags; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"vf-driver-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(DriverError::Ram(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    f.set_len(size)
        .map_err(|e| DriverError::Ram(format!("sizing the memfd: {e}")))?;
    // SAFETY: fcntl on a descriptor we own, with constant arguments.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if rc < 0 {
        return Err(DriverError::Ram(format!(
            "sealing the memfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(f)
}

/// A fresh non-blocking eventfd.
pub fn eventfd() -> Result<File, DriverError> {
    // SAFETY: constant arguments; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(DriverError::Ram(format!(
            "eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Reads and resets an eventfd's counter (0 if it was not signalled).
pub fn eventfd_take(fd: &File) -> u64 {
    let mut b = [0u8; 8];
    match std::io::Read::read(&mut &*fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// igbvf on one VF.
#[derive(Debug)]
pub struct VfDriver {
    /// The connection.
    pub client: Client,
    /// The guest's RAM (a memfd), DMA-mapped at IOVA 0.
    pub ram: File,
    mem: GuestMemoryMmap<()>,
    /// MSI-X eventfds: 0 TX, 1 RX, 2 mailbox.
    pub irqs: Vec<File>,
    layout: Layout,
    v2p_soft: u32,
    /// Next TX descriptor to fill.
    tx_tail: u32,
    /// Oldest TX descriptor not yet seen done.
    tx_clean: u32,
    /// Next RX descriptor to look at.
    rx_next: u32,
    /// RX descriptors taken since RDT was last written.
    rx_unposted: u32,
}

impl VfDriver {
    /// QEMU's bring-up on the VF at `path` with rings of `count` descriptors: VERSION,
    /// info, DMA_MAP of the RAM, MSI-X eventfds, Memory Space and Bus Master.
    pub fn attach(path: &Path, count: u32) -> Result<Self, DriverError> {
        if !(8..=4096).contains(&count) || !count.is_multiple_of(8) {
            return Err(DriverError::RingSize(count));
        }
        let layout = Layout { count };
        let mut client = Client::connect(path)?;
        client.negotiate(default_capabilities())?;
        client.device_info()?;
        let ram = memfd(layout.ram_size())?;
        let size =
            usize::try_from(layout.ram_size()).map_err(|e| DriverError::Ram(e.to_string()))?;
        let mapped = ram
            .try_clone()
            .map_err(|e| DriverError::Ram(format!("dup of the memfd: {e}")))?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(mapped, 0)),
        )])
        .map_err(|e| DriverError::Ram(format!("mapping the memfd: {e}")))?;
        client.dma_map(&ram, 0, 0, layout.ram_size())?;
        let irqs = (0..NUM_VECTORS)
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        client.set_irq_eventfds(
            irq::MSIX,
            0,
            &irqs.iter().map(AsFd::as_fd).collect::<Vec<_>>(),
        )?;
        // COMMAND: memory space and bus master, as vfio-pci's enable and the driver do.
        client.write32(region::CONFIG, 4, 0x6)?;
        Ok(Self {
            client,
            ram,
            mem,
            irqs,
            layout,
            v2p_soft: 0,
            tx_tail: 0,
            tx_clean: 0,
            rx_next: 0,
            rx_unposted: 0,
        })
    }

    /// The ring layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// A BAR0 register read.
    pub fn rd(&mut self, off: u32) -> Result<u32, DriverError> {
        Ok(self.client.read32(region::BAR0, u64::from(off))?)
    }

    /// A BAR0 register write, waiting for its reply.
    pub fn wr(&mut self, off: u32, val: u32) -> Result<(), DriverError> {
        Ok(self.client.write32(region::BAR0, u64::from(off), val)?)
    }

    /// A posted BAR0 register write (as QEMU sends memory-BAR writes).
    pub fn wr_posted(&mut self, off: u32, val: u32) -> Result<(), DriverError> {
        Ok(self
            .client
            .post_write32(region::BAR0, u64::from(off), val)?)
    }

    fn read_v2p(&mut self) -> Result<u32, DriverError> {
        let v = self.rd(V2PMAILBOX)? | self.v2p_soft;
        self.v2p_soft |= v & V2P_R2C_BITS;
        Ok(v)
    }

    fn check_bit(&mut self, mask: u32) -> Result<bool, DriverError> {
        let v = self.read_v2p()?;
        self.v2p_soft &= !mask;
        Ok(v & mask != 0)
    }

    fn obtain_lock(&mut self) -> Result<(), DriverError> {
        self.wr(V2PMAILBOX, V2P_VFU)?;
        if self.read_v2p()? & V2P_VFU == 0 {
            return Err(DriverError::Mailbox(
                "the VF could not take the mailbox".into(),
            ));
        }
        Ok(())
    }

    /// `e1000_write_posted_mbx`.
    pub fn write_posted(&mut self, msg: &[u32]) -> Result<(), DriverError> {
        self.obtain_lock()?;
        self.check_bit(V2P_PFSTS)?;
        self.check_bit(V2P_PFACK)?;
        for (i, w) in (0u32..).zip(msg) {
            self.wr(VMBMEM + 4 * i, *w)?;
        }
        self.wr(V2PMAILBOX, V2P_REQ)?;
        if !self.check_bit(V2P_PFACK)? {
            return Err(DriverError::Mailbox(format!(
                "the PF did not ack {:#x}",
                msg.first().copied().unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// `e1000_read_mbx_vf`.
    pub fn read_mbx(&mut self, n: u32) -> Result<Vec<u32>, DriverError> {
        self.obtain_lock()?;
        let msg = (0..n)
            .map(|i| self.rd(VMBMEM + 4 * i))
            .collect::<Result<Vec<_>, _>>()?;
        self.wr(V2PMAILBOX, V2P_ACK)?;
        Ok(msg)
    }

    /// A request and its reply of `reply_words` words.
    pub fn request(&mut self, msg: &[u32], reply_words: u32) -> Result<Vec<u32>, DriverError> {
        self.write_posted(msg)?;
        if !self.check_bit(V2P_PFSTS)? {
            return Err(DriverError::Mailbox(format!(
                "the PF did not answer {:#x}",
                msg.first().copied().unwrap_or(0)
            )));
        }
        self.read_mbx(reply_words)
    }

    /// `e1000_reset_hw_vf`: CTRL.RST, then RESET; returns the reply (3 words).
    pub fn reset_hw(&mut self) -> Result<Vec<u32>, DriverError> {
        let ctrl = self.rd(CTRL)?;
        self.wr(CTRL, ctrl | CTRL_RST)?;
        let mut timeout = 200;
        while self.check_bit(V2P_RSTD | V2P_RSTI)? && timeout > 0 {
            timeout -= 1;
        }
        self.request(&[MSG_RESET], 3)
    }

    /// The permanent MAC of a RESET reply.
    pub fn mac_of(reply: &[u32]) -> [u8; 6] {
        let w = |i: usize| reply.get(i).copied().unwrap_or(0).to_le_bytes();
        let (a, b) = (w(1), w(2));
        [a[0], a[1], a[2], a[3], b[0], b[1]]
    }

    fn put(&self, at: u64, bytes: &[u8]) -> Result<(), DriverError> {
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .map_err(|_| DriverError::RamAccess(at))
    }

    fn get(&self, at: u64, bytes: &mut [u8]) -> Result<(), DriverError> {
        self.mem
            .read_slice(bytes, GuestAddress(at))
            .map_err(|_| DriverError::RamAccess(at))
    }

    /// `igbvf_configure_tx`.
    pub fn configure_tx(&mut self) -> Result<(), DriverError> {
        self.wr(TDLEN, self.layout.count * 16)?;
        self.wr(TDBAL, lo32(Layout::TX_RING))?;
        self.wr(TDBAH, 0)?;
        self.wr(TDH, 0)?;
        self.wr(TDT, 0)?;
        self.wr(TXDCTL, DCTL_ENABLE)?;
        self.tx_tail = 0;
        self.tx_clean = 0;
        Ok(())
    }

    fn rx_desc(&self, i: u32) -> [u8; 16] {
        let mut d = [0u8; 16];
        let buf = self.layout.rx_buf() + u64::from(i) * BUF_SIZE;
        d[..8].copy_from_slice(&buf.to_le_bytes());
        d
    }

    /// `igbvf_configure_rx` (one 2 KiB buffer per descriptor): every descriptor holds its
    /// buffer; RDT one behind the next to look at gives the device all but one.
    pub fn configure_rx(&mut self) -> Result<(), DriverError> {
        let count = self.layout.count;
        self.wr(SRRCTL, SRRCTL_DROP_EN | 2 | SRRCTL_DESCTYPE_ADV_ONEBUF)?;
        self.wr(RDBAL, lo32(Layout::RX_RING))?;
        self.wr(RDBAH, 0)?;
        self.wr(RDLEN, count * 16)?;
        self.wr(RDH, 0)?;
        self.wr(RDT, 0)?;
        self.wr(RXDCTL, DCTL_ENABLE | 16 | (8 << 8) | (1 << 16))?;
        for i in 0..count {
            self.put(Layout::RX_RING + u64::from(i) * 16, &self.rx_desc(i))?;
        }
        self.wr(RDT, count - 1)?;
        self.rx_next = 0;
        self.rx_unposted = 0;
        Ok(())
    }

    /// Probe and open: RESET (returns the MAC), rings, MSI-X routing, interrupts on.
    pub fn up(&mut self) -> Result<[u8; 6], DriverError> {
        self.wr(EIMC, !0)?;
        let reply = self.reset_hw()?;
        if reply.first() != Some(&(MSG_RESET | MSG_ACK)) {
            return Err(DriverError::Mailbox(format!("RESET reply {reply:#x?}")));
        }
        let mac = Self::mac_of(&reply);
        self.configure_tx()?;
        self.configure_rx()?;
        self.wr(IVAR0, 0x0000_8081)?;
        self.wr(IVAR_MISC, 2 | IVAR_VALID)?;
        self.wr(EIAC, 7)?;
        self.wr(EIAM, 7)?;
        self.wr(EIMS, 7)?;
        Ok(mac)
    }

    /// TX descriptors queued and not yet seen done.
    pub fn tx_in_flight(&self) -> u32 {
        (self.tx_tail + self.layout.count - self.tx_clean) % self.layout.count
    }

    /// Puts `frame` in the next TX descriptor without writing TDT; false if the ring is
    /// full (one descriptor stays free, as in igbvf).
    pub fn queue_tx(&mut self, frame: &[u8]) -> Result<bool, DriverError> {
        let Some(len) = u32::try_from(frame.len())
            .ok()
            .filter(|&l| u64::from(l) <= BUF_SIZE)
        else {
            return Err(DriverError::FrameSize(frame.len()));
        };
        if self.tx_in_flight() + 1 >= self.layout.count {
            return Ok(false);
        }
        let i = self.tx_tail;
        let buf = Layout::TX_BUF + u64::from(i) * BUF_SIZE;
        self.put(buf, frame)?;
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
        self.put(Layout::TX_RING + u64::from(i) * 16, &d)?;
        self.tx_tail = (i + 1) % self.layout.count;
        Ok(true)
    }

    /// Writes TDT (posted): the device sends what was queued.
    pub fn kick_tx(&mut self) -> Result<(), DriverError> {
        self.wr_posted(TDT, self.tx_tail)
    }

    /// Counts the queued TX descriptors the device has written back (DD), oldest first;
    /// returns how many were reclaimed.
    pub fn reclaim_tx(&mut self) -> Result<u32, DriverError> {
        let mut n = 0;
        while self.tx_clean != self.tx_tail {
            let mut status = [0u8; 4];
            self.get(
                Layout::TX_RING + u64::from(self.tx_clean) * 16 + 12,
                &mut status,
            )?;
            if u32::from_le_bytes(status) & TXD_STAT_DD == 0 {
                break;
            }
            self.tx_clean = (self.tx_clean + 1) % self.layout.count;
            n += 1;
        }
        Ok(n)
    }

    /// Queues `frame` and writes TDT, waiting for the write's reply (so that the frame
    /// has been through the device when this returns).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        self.reclaim_tx()?;
        if !self.queue_tx(frame)? {
            return Err(DriverError::Mailbox("TX ring full".into()));
        }
        self.wr(TDT, self.tx_tail)
    }

    /// Takes every received frame (DD set) in order, handing each to `f`, gives the
    /// descriptors back and writes RDT (posted) once at least `batch` were taken.
    /// Returns the number of frames.
    pub fn poll_rx_with(
        &mut self,
        batch: u32,
        mut f: impl FnMut(&[u8]),
    ) -> Result<u32, DriverError> {
        let mut n = 0;
        let mut buf = [0u8; BUF_LEN];
        loop {
            let i = self.rx_next;
            let at = Layout::RX_RING + u64::from(i) * 16;
            let mut d = [0u8; 16];
            self.get(at, &mut d)?;
            let status = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            if status & RXD_STAT_DD == 0 {
                break;
            }
            let len = usize::from(u16::from_le_bytes([d[12], d[13]])).min(buf.len());
            self.get(
                self.layout.rx_buf() + u64::from(i) * BUF_SIZE,
                &mut buf[..len],
            )?;
            f(&buf[..len]);
            self.put(at, &self.rx_desc(i))?;
            self.rx_next = (i + 1) % self.layout.count;
            self.rx_unposted += 1;
            n += 1;
        }
        if self.rx_unposted >= batch.max(1) {
            // RDT points one behind the next descriptor to look at: the ring never fills.
            let rdt = (self.rx_next + self.layout.count - 1) % self.layout.count;
            self.wr_posted(RDT, rdt)?;
            self.rx_unposted = 0;
        }
        Ok(n)
    }

    /// The next received frame, if any (its descriptor given back at once).
    pub fn poll_rx(&mut self) -> Result<Option<Vec<u8>>, DriverError> {
        let i = self.rx_next;
        let at = Layout::RX_RING + u64::from(i) * 16;
        let mut d = [0u8; 16];
        self.get(at, &mut d)?;
        if u32::from_le_bytes([d[8], d[9], d[10], d[11]]) & RXD_STAT_DD == 0 {
            return Ok(None);
        }
        let len = usize::from(u16::from_le_bytes([d[12], d[13]])).min(BUF_LEN);
        let mut frame = vec![0u8; len];
        self.get(self.layout.rx_buf() + u64::from(i) * BUF_SIZE, &mut frame)?;
        self.put(at, &self.rx_desc(i))?;
        self.rx_next = (i + 1) % self.layout.count;
        let rdt = (self.rx_next + self.layout.count - 1) % self.layout.count;
        self.wr(RDT, rdt)?;
        Ok(Some(frame))
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
