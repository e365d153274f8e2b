//! A VF's DMA view against the toy vfio-user device over a real socket: identity maps
//! without an IOMMU; behind one, the maps follow the VF's requester ID through attach,
//! MAP, UNMAP, detach and bypass, each acknowledged before delivery returns.

use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use devices::interrupt::msi_test_utils::FakeRouteFactory;
use devices::vfio_user::toy::Toy;
use devices::vfio_user::{Server, Socket};
use devices::virtio::dma::FaultSink;
use iommu::virtio::Engine;
use iommu::{Fault, IommuTable, Perm};

use super::*;
use crate::memory::GuestRam;

const GIB: u64 = 1 << 30;

struct NoFaults;
impl FaultSink for NoFaults {
    fn fault(&self, _fault: Fault) {}
}

fn card() -> (Arc<Mutex<VfioUserCard>>, JoinHandle<Server<Toy>>) {
    let (c, s) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let sock = Socket::new(s);
        let mut server = Server::new(Toy::new());
        while server.serve_one(&sock).is_ok() {}
        server
    });
    let card = VfioUserCard::new(
        "vf0",
        Client::from_stream(c).unwrap(),
        &FakeRouteFactory::default(),
    )
    .unwrap();
    (Arc::new(Mutex::new(card)), server)
}

/// The toy's DMA log once the card is gone.
fn dma_log(card: Arc<Mutex<VfioUserCard>>, server: JoinHandle<Server<Toy>>) -> Vec<String> {
    drop(card);
    server.join().unwrap().device().dma_log.clone()
}

fn rid() -> RequesterId {
    RequesterId::new(0, 1, 0, 0).unwrap()
}

#[test]
fn without_an_iommu_all_ram_is_mapped_at_its_guest_physical_address() {
    // 4 GiB: 3 GiB below the MMIO hole, 1 GiB above 4 GiB, one memfd behind both.
    let ram = GuestRam::new(4 * GIB).unwrap();
    let (card, server) = card();
    let dma = VfDma::new(Arc::downgrade(&card), rid(), ram.memory()).unwrap();
    dma.map_identity().unwrap();
    assert_eq!(
        dma_log(card, server),
        [
            "map 0x0+0xc0000000 @0x0",
            "map 0x100000000+0x40000000 @0xc0000000"
        ]
    );
}

#[test]
fn behind_the_iommu_maps_follow_the_vf() {
    let ram = GuestRam::new(4 * GIB).unwrap();
    let (card, server) = card();
    let engine = Arc::new(Mutex::new(Engine::new(
        IommuTable::default(),
        vec![0x100..=0x1ff],
        (0, u64::MAX),
    )));
    let ctx = IommuContext {
        engine: engine.clone(),
        faults: Arc::new(NoFaults),
    };
    let table = lock(&engine).table().clone();
    // A domain with a mapping before the VF is there (another endpoint in it).
    let other = RequesterId::new(0, 2, 0, 0).unwrap();
    table.write().attach(other, 5, false).unwrap();
    table
        .write()
        .map(5, 0x8000_0000, 0x8000_0fff, 0x1000, Perm::RW)
        .unwrap();
    table.changes().deliver();

    let dma = Arc::new(VfDma::new(Arc::downgrade(&card), rid(), ram.memory()).unwrap());
    dma.follow(&ctx).unwrap();
    let change = |f: &dyn Fn(&mut IommuTable)| {
        f(&mut table.write());
        table.changes().deliver();
    };
    // Detached and blocked: nothing. Attach: the domain's mapping.
    change(&|t| t.attach(rid(), 5, false).unwrap());
    // A mapping across the top of low RAM into the MMIO hole: only the RAM part.
    change(&|t| {
        t.map(
            5,
            0x10_0000,
            0x10_0000 + 2 * 4096 - 1,
            3 * GIB - 4096,
            Perm::RW,
        )
        .unwrap();
    });
    // Not RAM at all: skipped.
    change(&|t| {
        t.map(5, 0x20_0000, 0x20_0fff, 3 * GIB + 0x1000, Perm::R)
            .unwrap()
    });
    // A mapping of the other endpoint's domain only: not ours.
    change(&|t| {
        t.attach(other, 6, false).unwrap();
        t.map(6, 0x9000, 0x9fff, 0x9000, Perm::R).unwrap();
    });
    change(&|t| t.unmap(5, 0x10_0000, 0x10_1fff).unwrap());
    // Detach: everything goes; then bypass for detached endpoints: all of RAM.
    change(&|t| t.detach(rid(), 5).unwrap());
    change(&|t| t.set_bypass(true));
    change(&|t| t.attach(rid(), 7, false).unwrap());
    assert_eq!(
        dma_log(card, server),
        [
            "map 0x80000000+0x1000 @0x1000",
            "map 0x100000+0x1000 @0xbffff000",
            "unmap 0x100000+0x1000",
            "unmap 0x80000000+0x1000",
            "map 0x0+0xc0000000 @0x0",
            "map 0x100000000+0x40000000 @0xc0000000",
            "unmap 0x0+0xc0000000",
            "unmap 0x100000000+0x40000000",
        ]
    );
}
