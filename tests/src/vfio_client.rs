//! The nicd tests' vfio-user client and VF driver: devices' [`Client`] and [`VfDriver`]
//! (what the benchmarks use too), with a failure a panic that says what failed, as tests
//! want it.

use std::path::Path;
use std::time::{Duration, Instant};

use devices::sriov::igbvf::driver::{DriverError, VfDriver};
pub use devices::sriov::igbvf::driver::{eventfd, eventfd_take, frame, memfd};
use devices::vfio_user::client::default_capabilities;
use devices::vfio_user::{Client, ClientError, Version};

/// Rings of the test driver (descriptors).
pub const RING: u32 = 16;

/// A connection to one VF's socket.
#[derive(Debug)]
pub struct VfioClient(pub Client);

impl VfioClient {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Client::connect(path).map(Self)
    }

    /// VERSION as QEMU proposes it; the server's refusal as the error.
    pub fn version(&mut self) -> Result<Version, ClientError> {
        self.0.negotiate(default_capabilities())
    }

    /// QEMU's bring-up up to DMA: VERSION, DEVICE_GET_INFO, every region's and IRQ
    /// index's info. Returns the sizes of the regions and the counts of the IRQ indices.
    pub fn bring_up(&mut self) -> (Vec<u64>, Vec<u32>) {
        self.version().expect("VERSION");
        let info = self.0.device_info().expect("DEVICE_GET_INFO");
        let regions = (0..info.num_regions)
            .map(|i| self.0.region_info(i).expect("GET_REGION_INFO").info.size)
            .collect();
        let irqs = (0..info.num_irqs)
            .map(|i| self.0.irq_info(i).expect("GET_IRQ_INFO").count)
            .collect();
        (regions, irqs)
    }

    /// A 32-bit REGION_READ.
    pub fn read32(&mut self, region: u32, offset: u64) -> u32 {
        self.0.read32(region, offset).unwrap_or_else(|e| {
            panic!("REGION_READ {region}@{offset:#x}: {}", vmm::error_chain(&e))
        })
    }

    /// A 32-bit REGION_WRITE, waiting for its reply.
    pub fn write32(&mut self, region: u32, offset: u64, value: u32) {
        self.0.write32(region, offset, value).unwrap_or_else(|e| {
            panic!(
                "REGION_WRITE {region}@{offset:#x}: {}",
                vmm::error_chain(&e)
            )
        });
    }
}

fn ok<T>(what: &str, r: Result<T, DriverError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", vmm::error_chain(&e)))
}

/// Linux igbvf's sequences over vfio-user: the VF's driver in the test.
#[derive(Debug)]
pub struct IgbvfDriver(pub VfDriver);

impl std::ops::Deref for IgbvfDriver {
    type Target = VfDriver;
    fn deref(&self) -> &VfDriver {
        &self.0
    }
}

impl std::ops::DerefMut for IgbvfDriver {
    fn deref_mut(&mut self) -> &mut VfDriver {
        &mut self.0
    }
}

impl IgbvfDriver {
    /// QEMU's bring-up on `path`: info, DMA_MAP of the RAM, MSI-X eventfds, bus master.
    pub fn attach(path: &Path) -> Self {
        Self(ok("attach", VfDriver::attach(path, RING)))
    }

    /// Probe and open; returns the MAC of the RESET reply.
    pub fn up(&mut self) -> [u8; 6] {
        ok("up", self.0.up())
    }

    /// A BAR0 register read.
    pub fn rd(&mut self, off: u32) -> u32 {
        ok("register read", self.0.rd(off))
    }

    /// A BAR0 register write.
    pub fn wr(&mut self, off: u32, val: u32) {
        ok("register write", self.0.wr(off, val));
    }

    /// Queues `frame` and writes TDT.
    pub fn send(&mut self, frame: &[u8]) {
        ok("send", self.0.send(frame));
    }

    /// The next received frame, if any.
    pub fn poll_rx(&mut self) -> Option<Vec<u8>> {
        ok("poll RX", self.0.poll_rx())
    }
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
